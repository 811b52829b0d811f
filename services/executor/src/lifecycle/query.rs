//! `wait`, `inspect`, `list` and `logs`.

use super::*;

/// Largest log payload in one reply or chunk: well below NATS' 1 MiB default, even as
/// base64 in a JSON chunk (4/3 of it, 683 KiB).
pub const MAX_LOG_PAYLOAD: usize = 512 * 1024;

impl Executor {
    /// `wait`: blocks until the container is not running, then its exit; with
    /// `timeout_ms`, at most that long, then `unavailable`.
    pub async fn wait(self: &Arc<Self>, request: ContainerWaitRequest) -> Handled<ContainerExit> {
        let Some(timeout_ms) = request.timeout_ms else {
            return self.wait_for_exit(&request.id).await;
        };
        tokio::time::timeout(
            Duration::from_millis(timeout_ms),
            self.wait_for_exit(&request.id),
        )
        .await
        .unwrap_or_else(|_| {
            Err(ErrorEnvelope::unavailable(format!(
                "container {} still running after timeout_ms={timeout_ms}",
                request.id
            )))
        })
    }

    async fn wait_for_exit(self: &Arc<Self>, reference: &str) -> Handled<ContainerExit> {
        let request = ContainerRef {
            id: reference.to_string(),
        };
        // Auto-removed already (`run --rm`): its exit was kept for this.
        if let Some(exit) = self.removed_exit(&request.id) {
            return Ok(exit);
        }
        let id = self.resolve(&request.id).await?;
        // A created container that was never started: wait for it to start and exit.
        loop {
            let st = state::read_state(&self.dir(&id)).map_err(|err| state_error(&id, err))?;
            if st.status != ContainerStatus::Created {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        while !self.wait_exit(&id, Duration::from_secs(3600)).await {}
        let st = match state::read_state(&self.dir(&id)) {
            Ok(st) => st,
            // Removed right after its exit (auto-remove): the kept exit answers.
            Err(err) => return self.removed_exit(&id).ok_or_else(|| state_error(&id, err)),
        };
        Ok(ContainerExit {
            id,
            exit_code: st.exit_code.unwrap_or(-1),
            oom_killed: st.oom_killed,
            error: st.error,
        })
    }

    /// `inspect`
    pub async fn inspect(self: &Arc<Self>, request: ContainerRef) -> Handled<ContainerInspect> {
        let id = self.resolve(&request.id).await?;
        let dir = self.dir(&id);
        let record = state::read_record(&dir).map_err(|err| state_error(&id, err))?;
        let st = state::read_state(&dir).map_err(|err| state_error(&id, err))?;
        Ok(ContainerInspect {
            id: record.id,
            name: record.name,
            image: record.image,
            image_digest: record.image_digest,
            node_id: record.node_id,
            status: st.status,
            pid: if st.status == ContainerStatus::Running {
                st.pid
            } else {
                0
            },
            exit_code: st.exit_code,
            oom_killed: st.oom_killed,
            error: st.error,
            created: record.created,
            started_at: st.started_at,
            finished_at: st.finished_at,
            command: record.command,
            env: record.env,
            workdir: record.workdir,
            uid: record.uid,
            gid: record.gid,
            hostname: record.hostname,
            config: record.config,
            rootfs: dir.join(files::ROOTFS).display().to_string(),
            log_path: self
                .log_dir(&id)
                .join(crate::logfiles::CURRENT)
                .display()
                .to_string(),
            restart_count: st.restart_count,
            log_error: std::fs::read_to_string(dir.join(files::LOG_ERROR)).ok(),
            network: self.net.describe(&id, &dir),
        })
    }

    /// `list`
    pub async fn list(self: &Arc<Self>, all: bool) -> Handled<ContainerList> {
        let dir = self.paths.containers_dir.clone();
        let node_id = self.node_id.clone();
        let net = Arc::clone(&self.net);
        blocking(move || {
            let mut containers: Vec<ContainerSummary> = Executor::records_in(&dir)
                .iter()
                .filter(|(_, st)| all || st.status == ContainerStatus::Running)
                .map(|(record, st)| {
                    let mut row = summary(record, st);
                    row.ports = net.ports_of(&record.id);
                    row
                })
                .collect();
            containers.sort_by(|a, b| b.created.cmp(&a.created).then(a.id.cmp(&b.id)));
            Ok(ContainerList {
                node_id,
                containers,
            })
        })
        .await
    }

    /// `logs`: one page of history.
    pub async fn logs(self: &Arc<Self>, request: LogsRequest) -> Handled<LogsPage> {
        let id = self.resolve(&request.id).await?;
        let dir = self.dir(&id);
        let running = state::read_state(&dir)
            .map(|s| s.status == ContainerStatus::Running)
            .unwrap_or(false);
        let log_dir = self.log_dir(&id);
        let page_id = id.clone();
        blocking(move || {
            let io = |err: std::io::Error| internal(format!("{}: {err}", log_dir.display()));
            let set = crate::logfiles::LogSet::open(&log_dir).map_err(io)?;
            let start = match (request.from_offset, request.since_ns, request.tail) {
                (Some(offset), _, _) => offset,
                (None, Some(since), tail) => {
                    let since = set.since_offset(since).map_err(io)?;
                    match tail {
                        Some(n) => since.max(set.tail_offset(n).map_err(io)?),
                        None => since,
                    }
                }
                (None, None, Some(n)) => set.tail_offset(n).map_err(io)?,
                (None, None, None) => set.first(),
            };
            let (start, data) = set.read(start, MAX_LOG_PAYLOAD).map_err(io)?;
            let end = start + data.len() as u64;
            Ok(LogsPage {
                id: page_id,
                start,
                end,
                more: end < set.end() && !data.is_empty(),
                data,
                running,
            })
        })
        .await
    }
}
