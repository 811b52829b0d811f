//! `start` and supervision: the monitor process, live log chunks, exits, restart
//! policies, and re-adoption of running monitors after an executor restart.

use super::*;

/// How often a running container's log is checked for new lines.
const LOG_POLL: Duration = Duration::from_millis(50);
/// How long a monitor may take to create and start a container.
const START_DEADLINE: Duration = Duration::from_secs(120);

/// Docker's restart decision after an exit.
pub fn should_restart(
    policy: RestartPolicy,
    exit_code: i32,
    restarts_so_far: u32,
    stopped_on_purpose: bool,
) -> bool {
    match policy {
        RestartPolicy::No => false,
        RestartPolicy::Always => !stopped_on_purpose,
        RestartPolicy::UnlessStopped => !stopped_on_purpose,
        RestartPolicy::OnFailure { max_retries } => {
            !stopped_on_purpose
                && exit_code != 0
                && (max_retries == 0 || restarts_so_far < max_retries)
        }
    }
}

/// Docker's backoff: 100 ms doubling per restart, at most a minute.
pub fn restart_delay(restarts_so_far: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << restarts_so_far.min(10)))
        .min(Duration::from_secs(60))
}

/// A future that resolves when process `pid` (started at `start`) has exited. Uses a
/// pidfd, which works for processes that are not our children (adopted monitors).
async fn process_exit(pid: i32, start: u64) {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if raw < 0 {
        if std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
            return;
        }
        // No pidfd support: poll.
        while state::same_process(pid, start) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        return;
    }
    // SAFETY: `raw` is a fresh fd that nothing else owns.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw as i32) };
    // Opened by pid: make sure it is still the process we mean.
    if !state::same_process(pid, start) {
        return;
    }
    // SAFETY: the AsyncFd owns the OwnedFd, so the fd stays open until it is deregistered.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
    };
    match registered {
        Ok(async_fd) => {
            let _ = async_fd.readable().await;
        }
        Err(_) => {
            while state::same_process(pid, start) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

impl Executor {
    /// `start`
    pub async fn start(self: &Arc<Self>, request: ContainerRef) -> Handled<ContainerStarted> {
        let id = self.resolve(&request.id).await?;
        let span = tracing::info_span!("start", container_id = %id);
        let lock = self.op_lock(&id);
        let _guard = lock.lock().await;
        self.start_locked(&id).instrument(span).await
    }

    pub(super) async fn start_locked(self: &Arc<Self>, id: &str) -> Handled<ContainerStarted> {
        let dir = self.dir(id);
        let record = state::read_record(&dir).map_err(|err| state_error(id, err))?;
        let st = state::read_state(&dir).map_err(|err| state_error(id, err))?;
        if st.status == ContainerStatus::Running
            && state::same_process(st.monitor_pid, st.monitor_start)
        {
            return Ok(ContainerStarted {
                id: id.to_string(),
                pid: st.pid,
            });
        }
        self.set_stopped(id, false);
        let net = Arc::clone(&self.net);
        let (attach_id, attach_dir) = (id.to_string(), dir.clone());
        blocking(move || {
            net.attach(&attach_id, &attach_dir)
                .map_err(ErrorEnvelope::from)
        })
        .await?;
        let started = self.spawn_monitor(id, &dir, &record).await;
        if started.is_err() {
            self.release_network(id).await;
        }
        started
    }

    /// Releases the container's network (interfaces, namespace, address, ports).
    pub(crate) async fn release_network(&self, id: &str) {
        let net = Arc::clone(&self.net);
        let id = id.to_string();
        let _ = tokio::task::spawn_blocking(move || net.release(&id)).await;
    }

    /// Runs the container's monitor and waits for its report.
    async fn spawn_monitor(
        self: &Arc<Self>,
        id: &str,
        dir: &Path,
        record: &ContainerRecord,
    ) -> Handled<ContainerStarted> {
        let dir = dir.to_path_buf();
        let offset = log_len(&self.log_dir(id));
        let monitor_log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(files::MONITOR_LOG))
            .map_err(|err| internal(format!("container {id}: monitor log: {err}")))?;
        let mut child = tokio::process::Command::new(&self.paths.monitor_bin)
            .arg("run")
            .arg(&dir)
            .arg(&self.paths.runtime_root)
            .arg(id)
            .arg(self.log_dir(id))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(monitor_log)
            // Its own process group: a signal to the executor's group does not reach it.
            .process_group(0)
            .kill_on_drop(false)
            .spawn()
            .map_err(|err| {
                internal(format!(
                    "container {id}: cannot run {}: {err}",
                    self.paths.monitor_bin.display()
                ))
            })?;
        let stdout = child.stdout.take();
        // Reap the monitor whenever it exits, so it never lingers as a zombie.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        let Some(stdout) = stdout else {
            return Err(internal(format!("container {id}: monitor has no stdout")));
        };
        let mut line = String::new();
        let mut reader = tokio::io::BufReader::new(stdout);
        match tokio::time::timeout(START_DEADLINE, reader.read_line(&mut line)).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => {
                return Err(internal(format!(
                    "container {id}: reading the monitor's report: {err}"
                )))
            }
            Err(_) => {
                return Err(ErrorEnvelope::unavailable(format!(
                    "container {id}: the monitor did not start it within {START_DEADLINE:?}"
                )))
            }
        }
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("err ") {
            let (code, message) = rest.split_once(' ').unwrap_or((rest, ""));
            let code: i32 = code.parse().unwrap_or(monitor::START_FAILED);
            let st = state::read_state(&dir).ok();
            self.publish_event(record, "die", st.as_ref(), None).await;
            // The runtime's message names the container already.
            let message = message.to_string();
            return Err(
                if code == monitor::NOT_FOUND || code == monitor::CANNOT_INVOKE {
                    ErrorEnvelope::invalid(message)
                } else {
                    ErrorEnvelope::internal(message)
                },
            );
        }
        if !line.starts_with("ok ") {
            let detail = std::fs::read_to_string(dir.join(files::MONITOR_LOG)).unwrap_or_default();
            return Err(internal(format!(
                "container {id}: the monitor exited without starting it: {}",
                detail.lines().last().unwrap_or("(no output)")
            )));
        }
        let st = state::read_state(&dir).map_err(|err| state_error(id, err))?;
        self.supervise(id.to_string(), st.monitor_pid, st.monitor_start, offset);
        tracing::info!(pid = st.pid, "container started");
        self.publish_event(record, "start", Some(&st), None).await;
        Ok(ContainerStarted {
            id: id.to_string(),
            pid: st.pid,
        })
    }

    /// Watches one running container: publishes its new log lines, and when its monitor
    /// exits records the exit, publishes events and applies the restart policy.
    pub(super) fn supervise(
        self: &Arc<Self>,
        id: String,
        monitor_pid: i32,
        monitor_start: u64,
        offset: u64,
    ) {
        let (sender, _) = watch::channel(true);
        self.tracked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), Arc::new(sender));
        let cursor = Arc::new(tokio::sync::Mutex::new(LogCursor { offset, seen: None }));
        self.log_cursors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), Arc::clone(&cursor));
        self.ensure_log_pump();
        let this = Arc::clone(self);
        let span = tracing::info_span!("supervise", container_id = %id);
        tokio::spawn(
            async move {
                process_exit(monitor_pid, monitor_start).await;
                // The pump lets go of this container; the last lines and the end mark go
                // out from here, after everything the pump sent.
                this.log_cursors
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
                let mut cursor = cursor.lock().await;
                cursor.offset = this.publish_logs(&id, cursor.offset, true).await;
                drop(cursor);
                this.after_exit(&id).await;
            }
            .instrument(span),
        );
    }

    /// Starts (once) the one task that checks every running container's log for new
    /// lines: a `stat` per container per tick, and a read only when the file changed,
    /// so hundreds of idle containers cost next to nothing.
    fn ensure_log_pump(self: &Arc<Self>) {
        if self
            .log_pump_started
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(LOG_POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let cursors: Vec<(String, Arc<tokio::sync::Mutex<LogCursor>>)> = this
                    .log_cursors
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .map(|(id, c)| (id.clone(), Arc::clone(c)))
                    .collect();
                let dirs: Vec<PathBuf> = cursors.iter().map(|(id, _)| this.log_dir(id)).collect();
                let seen = tokio::task::spawn_blocking(move || {
                    dirs.iter()
                        .map(|d| {
                            std::fs::metadata(d.join(crate::logfiles::CURRENT))
                                .ok()
                                .map(|m| {
                                    use std::os::unix::fs::MetadataExt;
                                    (m.ino(), m.len())
                                })
                        })
                        .collect::<Vec<_>>()
                })
                .await
                .unwrap_or_default();
                for ((id, cursor), now) in cursors.iter().zip(seen) {
                    let Ok(mut cursor) = cursor.try_lock() else {
                        continue;
                    };
                    if now.is_none() || cursor.seen == now {
                        continue;
                    }
                    cursor.seen = now;
                    cursor.offset = this.publish_logs(id, cursor.offset, false).await;
                }
            }
        });
    }

    /// Publishes the whole new lines after `offset`; returns the new offset.
    pub(super) async fn publish_logs(&self, id: &str, offset: u64, final_chunk: bool) -> u64 {
        let log_dir = self.log_dir(id);
        let mut offset = offset;
        loop {
            let dir = log_dir.clone();
            let read = tokio::task::spawn_blocking(move || {
                let set = crate::logfiles::LogSet::open(&dir)?;
                let (from, data) = set.read(offset, MAX_LOG_PAYLOAD)?;
                Ok::<_, std::io::Error>((from, data, set.end()))
            })
            .await;
            let (from, data, end) = match read {
                Ok(Ok(read)) => read,
                _ => (offset, Vec::new(), offset),
            };
            // Lines rotated away before they were sent are skipped, not waited for.
            let offset_now = from;
            offset = offset_now;
            let done = data.is_empty() || from + data.len() as u64 >= end;
            if !data.is_empty() || final_chunk && done {
                let chunk = LogChunk {
                    id: id.to_string(),
                    offset,
                    eof: final_chunk && done,
                    data,
                };
                offset += chunk.data.len() as u64;
                // Both forms, always: a publisher cannot see who listens, and a chunk
                // nobody subscribed to is dropped by the server at once.
                for (encoding, subject) in [
                    (Encoding::Bincode, subjects::logs(id)),
                    (Encoding::Json, subjects::logs_json(id)),
                ] {
                    match encoding.encode(&chunk) {
                        Ok(body) => {
                            if let Err(err) = self.client.publish(subject, body.into()).await {
                                tracing::warn!(error = %err, ?encoding, "cannot publish log chunk");
                            }
                        }
                        Err(err) => {
                            tracing::warn!(error = %err, ?encoding, "cannot encode log chunk")
                        }
                    }
                }
            }
            if done {
                return offset;
            }
        }
    }

    pub(super) async fn after_exit(self: &Arc<Self>, id: &str) {
        let dir = self.dir(id);
        let record = match state::read_record(&dir) {
            Ok(r) => r,
            Err(err) => {
                // Removed while running (rm -f): nothing to record.
                tracing::debug!(error = %err, "container gone after exit");
                self.release_network(id).await;
                self.untrack(id);
                return;
            }
        };
        let mut st = match state::read_state(&dir) {
            Ok(st) => st,
            Err(err) => {
                tracing::error!(error = %err, "cannot read state after exit");
                self.release_network(id).await;
                self.untrack(id);
                return;
            }
        };
        if st.status == ContainerStatus::Running {
            // The monitor died without recording the exit (killed): the exit code is lost.
            if state::same_process(st.pid, st.pid_start) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(st.pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            st.status = ContainerStatus::Dead;
            st.error = Some("the container's monitor exited without recording its exit".into());
            st.finished_at = Some(state::now_rfc3339());
            if let Err(err) = state::write_state(&dir, &st) {
                tracing::error!(error = %err, "cannot record a lost monitor");
            }
        }
        tracing::info!(exit_code = ?st.exit_code, oom_killed = st.oom_killed, "container exited");
        // This exit is handled: a restarted executor must not handle it again.
        if let Some(finished) = &st.finished_at {
            if let Err(err) = state::write_atomic(&dir.join(files::EXIT_SEEN), finished.as_bytes())
            {
                tracing::warn!(error = %err, "cannot record that the exit was handled");
            }
        }
        let stopped = self.is_stopped(id);
        let code = st.exit_code.unwrap_or(monitor::START_FAILED);
        let restart = should_restart(record.config.restart, code, st.restart_count, stopped);
        if record.config.auto_remove && !restart {
            // Kept before anyone can see the exit: a `wait` woken by it may find the
            // container removed already.
            self.keep_removed_exit(ContainerExit {
                id: id.to_string(),
                exit_code: st.exit_code.unwrap_or(-1),
                oom_killed: st.oom_killed,
                error: st.error.clone(),
            });
        }
        if st.oom_killed {
            self.publish_event(&record, "oom", Some(&st), None).await;
        }
        self.publish_event(&record, "die", Some(&st), None).await;
        self.release_network(id).await;
        self.untrack(id);

        if restart {
            let delay = restart_delay(st.restart_count);
            st.restart_count += 1;
            if let Err(err) = state::write_state(&dir, &st) {
                tracing::error!(error = %err, "cannot record the restart count");
                return;
            }
            let this = Arc::clone(self);
            let id = id.to_string();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                if this.is_stopped(&id) {
                    return;
                }
                if let Err(err) = this.start(ContainerRef { id: id.clone() }).await {
                    tracing::warn!(container_id = %id, error = %err, "restart failed");
                }
            });
        } else if record.config.auto_remove {
            if let Err(err) = self
                .remove(ContainerRemoveRequest {
                    id: id.to_string(),
                    force: true,
                    // Docker's --rm takes the container's anonymous volumes with it.
                    volumes: true,
                })
                .await
            {
                // `berth run --rm` also removes it once it has the exit code, so the
                // other removal winning is the normal path, not a failure.
                if err.code == berth_proto::ErrorKind::NotFound {
                    tracing::debug!("auto-remove: already removed");
                } else {
                    tracing::warn!(error = %err, "auto-remove failed");
                }
            }
        }
    }

    pub(super) fn untrack(&self, id: &str) {
        if let Some(sender) = self
            .tracked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
        {
            sender.send_replace(false);
        }
    }

    pub(super) fn is_tracked(&self, id: &str) -> bool {
        self.tracked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(id)
    }

    /// Waits until the container is no longer running and no longer supervised;
    /// `false` if `within` passed first.
    pub(super) async fn wait_exit(&self, id: &str, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        let dir = self.dir(id);
        loop {
            let receiver = self
                .tracked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(id)
                .map(|s| s.subscribe());
            let running = state::read_state(&dir)
                .map(|s| s.status == ContainerStatus::Running)
                .unwrap_or(false);
            if !running && receiver.is_none() {
                return true;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return false;
            }
            let step = (deadline - now).min(Duration::from_millis(500));
            match receiver {
                Some(mut receiver) => {
                    let _ =
                        tokio::time::timeout(step, receiver.wait_for(|running| !*running)).await;
                }
                None => tokio::time::sleep(step.min(Duration::from_millis(50))).await,
            }
        }
    }

    /// Re-adopts the monitors of containers that were running when the executor stopped.
    pub async fn adopt(self: &Arc<Self>) {
        let dir = self.paths.containers_dir.clone();
        let records = tokio::task::spawn_blocking(move || Executor::records_in(&dir))
            .await
            .unwrap_or_default();
        let mut running = HashSet::new();
        // Handled after the network is reconciled, so that a restart they trigger
        // attaches to a clean state rather than racing the cleanup.
        let mut stopped = Vec::new();
        for (record, mut st) in records {
            let id = record.id.clone();
            if st.status != ContainerStatus::Running {
                stopped.push((record, st));
                continue;
            }
            if state::same_process(st.monitor_pid, st.monitor_start) {
                running.insert(id.clone());
                tracing::info!(container_id = %id, monitor_pid = st.monitor_pid, "re-adopted running container");
                self.supervise(
                    id.clone(),
                    st.monitor_pid,
                    st.monitor_start,
                    log_len(&self.log_dir(&id)),
                );
                continue;
            }
            // The monitor wrote nothing before it went: the exit code is unknown.
            let dir = self.dir(&id);
            match state::read_state(&dir) {
                Ok(fresh) if fresh.status != ContainerStatus::Running => {
                    stopped.push((record, fresh));
                    continue;
                }
                _ => {}
            }
            st.status = ContainerStatus::Dead;
            st.error = Some("the container's monitor is gone".into());
            st.finished_at = Some(state::now_rfc3339());
            if let Err(err) = state::write_state(&dir, &st) {
                tracing::error!(container_id = %id, error = %err, "cannot record a lost container");
            }
            tracing::warn!(container_id = %id, "monitor lost while the executor was down");
            stopped.push((record, st));
        }
        // Whatever no running container holds goes: leases, interfaces, namespaces, rules.
        let net = Arc::clone(&self.net);
        let _ = tokio::task::spawn_blocking(move || net.reconcile(&running)).await;
        for (record, st) in stopped {
            self.adopt_stopped(&record, &st);
        }
    }

    /// A container found not running at start: an exit nobody handled yet (it happened
    /// while the executor was down) gets its events, restart policy and auto-remove now;
    /// `always` containers start again, and `unless-stopped` ones unless they were
    /// stopped on purpose (Docker's behaviour when its daemon starts).
    fn adopt_stopped(self: &Arc<Self>, record: &ContainerRecord, st: &ContainerState) {
        if st.status == ContainerStatus::Created {
            return;
        }
        let id = record.id.clone();
        let seen = std::fs::read_to_string(self.dir(&id).join(files::EXIT_SEEN)).ok();
        let this = Arc::clone(self);
        if st.finished_at.is_some() && seen.as_deref() != st.finished_at.as_deref() {
            tracing::info!(container_id = %id, exit_code = ?st.exit_code, "exited while the executor was down");
            tokio::spawn(async move { this.after_exit(&id).await });
            return;
        }
        let start = match record.config.restart {
            RestartPolicy::Always => true,
            RestartPolicy::UnlessStopped => !self.is_stopped(&id),
            _ => false,
        };
        if start {
            tokio::spawn(async move {
                if let Err(err) = this.start(ContainerRef { id: id.clone() }).await {
                    tracing::warn!(container_id = %id, error = %err, "restart at executor start failed");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_policies_follow_docker() {
        assert!(!should_restart(RestartPolicy::No, 1, 0, false));
        let on_failure = RestartPolicy::OnFailure { max_retries: 2 };
        assert!(should_restart(on_failure, 1, 0, false));
        assert!(should_restart(on_failure, 1, 1, false));
        assert!(!should_restart(on_failure, 1, 2, false));
        assert!(!should_restart(on_failure, 0, 0, false));
        assert!(should_restart(RestartPolicy::Always, 0, 50, false));
        assert!(!should_restart(RestartPolicy::Always, 0, 0, true));
        assert!(!should_restart(RestartPolicy::UnlessStopped, 0, 0, true));
        assert_eq!(restart_delay(0), Duration::from_millis(100));
        assert_eq!(restart_delay(3), Duration::from_millis(800));
        assert_eq!(restart_delay(40), Duration::from_secs(60));
    }
}
