//! `kill`, `stop` and `remove`.

use super::*;

impl Executor {
    pub(super) fn signal_running(
        &self,
        id: &str,
        st: &ContainerState,
        signal: nix::sys::signal::Signal,
    ) -> Handled<()> {
        if st.status != ContainerStatus::Running || !state::same_process(st.pid, st.pid_start) {
            return Err(ErrorEnvelope::conflict(format!(
                "container {id} is not running"
            )));
        }
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(st.pid), signal)
            .map_err(|err| internal(format!("container {id}: kill with {signal}: {err}")))
    }

    /// Kills every process of the container (its cgroup), for stop's last resort.
    pub(super) fn kill_all(&self, id: &str, st: &ContainerState) {
        if let Ok(container) = berth_runtime::Container::load(&self.paths.runtime_root, id) {
            let _ = container.kill(nix::sys::signal::Signal::SIGKILL, true);
        }
        if state::same_process(st.pid, st.pid_start) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(st.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    /// `kill`
    pub async fn kill(self: &Arc<Self>, request: ContainerKillRequest) -> Handled<ContainerDone> {
        let id = self.resolve(&request.id).await?;
        let dir = self.dir(&id);
        let record = state::read_record(&dir).map_err(|err| state_error(&id, err))?;
        let st = state::read_state(&dir).map_err(|err| state_error(&id, err))?;
        let name = request.signal.clone().unwrap_or_else(|| "SIGKILL".into());
        let signal = runspec::parse_signal(&name).map_err(ErrorEnvelope::invalid)?;
        self.signal_running(&id, &st, signal)?;
        tracing::info!(container_id = %id, %signal, "container signalled");
        self.publish_event(
            &record,
            "kill",
            Some(&st),
            Some(signal.as_str().to_string()),
        )
        .await;
        Ok(ContainerDone { id })
    }

    /// `stop`: the stop signal, the grace period, then SIGKILL to the whole cgroup.
    pub async fn stop(self: &Arc<Self>, request: ContainerStopRequest) -> Handled<ContainerDone> {
        let id = self.resolve(&request.id).await?;
        let span = tracing::info_span!("stop", container_id = %id);
        async {
            let dir = self.dir(&id);
            let record = state::read_record(&dir).map_err(|err| state_error(&id, err))?;
            let st = state::read_state(&dir).map_err(|err| state_error(&id, err))?;
            self.set_stopped(&id, true);
            if st.status != ContainerStatus::Running {
                return Ok(ContainerDone { id: id.clone() });
            }
            let signal = runspec::parse_signal(&record.stop_signal)
                .unwrap_or(nix::sys::signal::Signal::SIGTERM);
            let grace = Duration::from_secs(
                request
                    .timeout_seconds
                    .unwrap_or(record.stop_timeout)
                    .into(),
            );
            if self.signal_running(&id, &st, signal).is_ok() && self.wait_exit(&id, grace).await {
                self.publish_event(&record, "stop", None, None).await;
                return Ok(ContainerDone { id: id.clone() });
            }
            tracing::info!(?grace, "grace period over: SIGKILL");
            self.kill_all(&id, &st);
            if !self.wait_exit(&id, Duration::from_secs(30)).await {
                return Err(internal(format!(
                    "container {id} did not exit after SIGKILL"
                )));
            }
            self.publish_event(&record, "stop", None, None).await;
            Ok(ContainerDone { id: id.clone() })
        }
        .instrument(span)
        .await
    }

    /// `remove`
    pub async fn remove(
        self: &Arc<Self>,
        request: ContainerRemoveRequest,
    ) -> Handled<ContainerDone> {
        let id = self.resolve(&request.id).await?;
        let span = tracing::info_span!("remove", container_id = %id);
        let lock = self.op_lock(&id);
        let _guard = lock.lock().await;
        async {
            let dir = self.dir(&id);
            let record = state::read_record(&dir).map_err(|err| state_error(&id, err))?;
            let st = state::read_state(&dir).map_err(|err| state_error(&id, err))?;
            self.set_stopped(&id, true);
            if st.status == ContainerStatus::Running {
                if !request.force {
                    return Err(ErrorEnvelope::conflict(format!(
                        "container {id} is running: stop it first or remove with force"
                    )));
                }
                self.kill_all(&id, &st);
                if !self.wait_exit(&id, Duration::from_secs(30)).await {
                    return Err(internal(format!(
                        "container {id} did not exit after SIGKILL"
                    )));
                }
            } else if self.is_tracked(&id) {
                self.wait_exit(&id, Duration::from_secs(10)).await;
            }
            self.release_network(&id).await;
            let runtime_root = self.paths.runtime_root.clone();
            let remove_id = id.clone();
            let log_dir = self.log_dir(&id);
            blocking(move || {
                if log_dir != dir {
                    let _ = berth_fstree::remove_tree(&log_dir);
                }
                overlay::unmount(&dir.join(files::ROOTFS)).map_err(internal)?;
                if let Ok(container) = berth_runtime::Container::load(&runtime_root, &remove_id) {
                    let _ = container.delete(true);
                }
                // The record goes first: a directory without one is no container,
                // so what is left is debris for `remove_trash` at the next
                // start. Then the slow part (a container's tree can be 25,000
                // levels of directories) runs after the reply.
                let record_file = dir.join(files::RECORD);
                match std::fs::remove_file(&record_file) {
                    Ok(()) => {}
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                    Err(err) => {
                        return Err(internal(format!("remove {}: {err}", record_file.display())))
                    }
                }
                let trash = super::trash_path(&dir);
                std::fs::rename(&dir, &trash)
                    .map_err(|err| internal(format!("rename {}: {err}", dir.display())))?;
                let message = format!("remove {}", trash.display());
                std::thread::Builder::new()
                    .name("remove-tree".into())
                    .spawn(move || {
                        if let Err(err) = berth_fstree::remove_tree(&trash) {
                            tracing::warn!(path = %trash.display(), %err, "cannot remove a removed container's files");
                        }
                    })
                    .map_err(|err| internal(format!("{message}: {err}")))?;
                Ok(())
            })
            .await?;
            self.op_locks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            self.stopped
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            tracing::info!("container removed");
            if request.volumes {
                self.remove_anonymous_volumes(&record).await;
            }
            self.release_snapshots(&id).await;
            self.publish_event(&record, "destroy", None, None).await;
            Ok(ContainerDone { id: id.clone() })
        }
        .instrument(span)
        .await
    }

    /// `rm -v` / `--rm`: the container's anonymous volumes, unless another container
    /// mounts one too. Named volumes stay, as in Docker.
    async fn remove_anonymous_volumes(self: &Arc<Self>, record: &ContainerRecord) {
        let this = Arc::clone(self);
        let names: Vec<String> = record.volumes.iter().map(|v| v.name.clone()).collect();
        let _ = blocking(move || {
            for name in names {
                if this.volumes.get(&name).is_ok_and(|v| v.anonymous) {
                    if let Err(err) = this
                        .volumes
                        .remove(&name, || this.volume_users(&name), false)
                    {
                        tracing::warn!(volume = %name, error = %err, "anonymous volume kept");
                    }
                }
            }
            Ok(())
        })
        .await;
    }

    /// Drops the container's pin on its image's snapshots so `prune` can reclaim them.
    /// Best effort: the container is gone either way, and a pin left behind only keeps
    /// disk space until the snapshot is removed with force.
    pub(super) async fn release_snapshots(&self, id: &str) {
        let released: Result<SnapshotsReleased, _> = berth_bus::request(
            &self.client,
            &subjects::unpack(&self.node_id, UnpackVerb::Release),
            &SnapshotReleaseRequest {
                user: id.to_string(),
            },
            Encoding::Bincode,
            Duration::from_secs(30),
        )
        .await;
        match released {
            Ok(reply) => tracing::debug!(released = reply.released, "snapshot pins released"),
            Err(err) => {
                tracing::warn!(error = %err, "cannot release the container's snapshot pins")
            }
        }
    }
}
