//! The container lifecycle on this node: create, start, kill, stop, remove, wait,
//! inspect, list, logs; the supervisor task per running container (exit watch via a
//! pidfd on its monitor, live log chunks, events, restart policy); re-adoption of
//! running monitors when the executor starts.

use crate::crilog;
use crate::monitor;
use crate::overlay;
use crate::runspec::{self, ImageRunConfig, SpecInputs};
use crate::state::{self, files, ContainerRecord, ContainerState, StateError};
use crate::users;
use berth_bus::BusError;
use berth_proto::messages::exec::{
    ContainerCreateRequest, ContainerCreated, ContainerDone, ContainerEvent, ContainerExit,
    ContainerInspect, ContainerKillRequest, ContainerList, ContainerRef, ContainerRemoveRequest,
    ContainerStarted, ContainerStatus, ContainerStopRequest, ContainerSummary, LogChunk, LogsPage,
    LogsRequest, RestartPolicy,
};
use berth_proto::messages::image::{ImageInspect, ImageInspectRequest};
use berth_proto::messages::unpack::{
    PrepareReply, PrepareRequest, SnapshotReleaseRequest, SnapshotsReleased,
};
use berth_proto::subjects::{self, EventKind, ImageVerb, UnpackVerb};
use berth_proto::{Encoding, ErrorEnvelope};
use std::collections::{HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncBufReadExt;
use tokio::sync::watch;
use tracing::Instrument;

/// Largest log payload in one reply or chunk: well below NATS' 1 MiB default.
pub const MAX_LOG_PAYLOAD: usize = 512 * 1024;
/// How often a running container's log is checked for new lines.
const LOG_POLL: Duration = Duration::from_millis(50);
const PREPARE_DEADLINE: Duration = Duration::from_secs(600);
const INSPECT_DEADLINE: Duration = Duration::from_secs(30);
/// How long a monitor may take to create and start a container.
const START_DEADLINE: Duration = Duration::from_secs(120);
const DEFAULT_STOP_TIMEOUT: u32 = 10;

type Handled<T> = Result<T, ErrorEnvelope>;

/// Where things live and who we are.
#[derive(Debug, Clone)]
pub struct Paths {
    pub containers_dir: PathBuf,
    /// berth-runtime's state root (`<data>/runtime`).
    pub runtime_root: PathBuf,
    /// The `berth-monitor` binary.
    pub monitor_bin: PathBuf,
}

/// The executor's containers.
pub struct Executor {
    pub(crate) node_id: String,
    pub(crate) paths: Paths,
    pub(crate) client: async_nats::Client,
    /// Running containers under supervision: `true` while running.
    tracked: Mutex<HashMap<String, Arc<watch::Sender<bool>>>>,
    /// Names of creates in flight, so two creates cannot take one name.
    reserved_names: Mutex<HashSet<String>>,
    /// One lifecycle operation at a time per container.
    op_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Containers stopped on purpose: restart policies other than `always` leave them.
    stopped: Mutex<HashSet<String>>,
}

fn internal(err: impl std::fmt::Display) -> ErrorEnvelope {
    ErrorEnvelope::internal(err.to_string())
}

pub(crate) fn state_error(id: &str, err: StateError) -> ErrorEnvelope {
    if err.is_not_found() {
        ErrorEnvelope::not_found(format!("no such container: {id}"))
    } else {
        ErrorEnvelope::internal(format!("container {id}: {err}"))
    }
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Handled<T> + Send + 'static,
) -> Handled<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|err| ErrorEnvelope::internal(format!("blocking task failed: {err}")))?
}

/// A failed call to another service, as our caller's envelope.
fn upstream(what: &str, err: BusError) -> ErrorEnvelope {
    match err {
        BusError::Service(envelope) => {
            ErrorEnvelope::new(envelope.code, format!("{what}: {}", envelope.message))
        }
        BusError::NoResponders { .. } | BusError::TimedOut { .. } => {
            ErrorEnvelope::unavailable(format!("{what}: {err}"))
        }
        other => ErrorEnvelope::internal(format!("{what}: {other}")),
    }
}

/// 64 random hex digits, as Docker ids.
fn new_id() -> Handled<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|err| internal(format!("cannot read /dev/urandom: {err}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Docker's rule for names: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
pub fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok
        || name.len() > 128
        || !chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    {
        return Err(format!(
            "invalid container name {name:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
        ));
    }
    Ok(())
}

/// Reads a file of the image at `relative` inside `rootfs`, refusing symlinks that lead
/// outside it (the executor runs as root on the host's filesystem).
pub(crate) fn read_in_root(rootfs: &Path, relative: &str) -> Option<String> {
    let root = std::fs::canonicalize(rootfs).ok()?;
    let path = std::fs::canonicalize(root.join(relative)).ok()?;
    if !path.starts_with(&root) {
        return None;
    }
    std::fs::read_to_string(path).ok()
}

fn summary(record: &ContainerRecord, st: &ContainerState) -> ContainerSummary {
    ContainerSummary {
        id: record.id.clone(),
        name: record.name.clone(),
        image: record.image.clone(),
        node_id: record.node_id.clone(),
        status: st.status,
        exit_code: st.exit_code,
        created: record.created.clone(),
        command: record.command.clone(),
    }
}

fn log_len(dir: &Path) -> u64 {
    std::fs::metadata(dir.join(files::LOG))
        .map(|m| m.len())
        .unwrap_or(0)
}

/// Reads whole CRI lines of the log from `start`, at most `max` bytes.
fn read_log(path: &Path, start: u64, max: usize) -> std::io::Result<(Vec<u8>, u64)> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(err) => return Err(err),
    };
    let len = file.metadata()?.len();
    if start >= len {
        return Ok((Vec::new(), len));
    }
    file.seek(SeekFrom::Start(start))?;
    let mut data = Vec::new();
    file.take(max as u64).read_to_end(&mut data)?;
    data.truncate(crilog::whole_lines(&data));
    Ok((data, len))
}

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
    /// An executor over `paths` (created if missing).
    pub fn new(node_id: String, paths: Paths, client: async_nats::Client) -> anyhow::Result<Self> {
        for dir in [&paths.containers_dir, &paths.runtime_root] {
            std::fs::create_dir_all(dir)
                .map_err(|err| anyhow::anyhow!("cannot create {}: {err}", dir.display()))?;
        }
        Ok(Executor {
            node_id,
            paths,
            client,
            tracked: Mutex::new(HashMap::new()),
            reserved_names: Mutex::new(HashSet::new()),
            op_locks: Mutex::new(HashMap::new()),
            stopped: Mutex::new(HashSet::new()),
        })
    }

    pub(crate) fn dir(&self, id: &str) -> PathBuf {
        self.paths.containers_dir.join(id)
    }

    fn op_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.op_locks.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(locks.entry(id.to_string()).or_default())
    }

    /// The full id of a container named by id, unique id prefix, or name.
    pub(crate) async fn resolve(&self, reference: &str) -> Handled<String> {
        if reference.is_empty() {
            return Err(ErrorEnvelope::invalid("a container id or name is required"));
        }
        if subjects::check_token("container id", reference).is_err() || reference.contains('/') {
            return Err(ErrorEnvelope::invalid(format!(
                "invalid container reference {reference:?}"
            )));
        }
        if self.dir(reference).join(files::RECORD).is_file() {
            return Ok(reference.to_string());
        }
        let containers_dir = self.paths.containers_dir.clone();
        let records = blocking(move || Ok(Executor::records_in(&containers_dir))).await?;
        if let Some((record, _)) = records.iter().find(|(r, _)| r.name == reference) {
            return Ok(record.id.clone());
        }
        let matches: Vec<&String> = records
            .iter()
            .map(|(r, _)| &r.id)
            .filter(|id| id.starts_with(reference))
            .collect();
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(ErrorEnvelope::not_found(format!(
                "no such container: {reference}"
            ))),
            _ => Err(ErrorEnvelope::invalid(format!(
                "{reference} matches {} containers: use more of the id",
                matches.len()
            ))),
        }
    }

    fn records_in(dir: &Path) -> Vec<(ContainerRecord, ContainerState)> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|entry| {
                let dir = entry.path();
                Some((
                    state::read_record(&dir).ok()?,
                    state::read_state(&dir).ok()?,
                ))
            })
            .collect()
    }

    async fn publish_event(
        &self,
        record: &ContainerRecord,
        action: &str,
        st: Option<&ContainerState>,
        signal: Option<String>,
    ) {
        let event = ContainerEvent {
            action: action.to_string(),
            id: record.id.clone(),
            name: record.name.clone(),
            image: record.image.clone(),
            node_id: self.node_id.clone(),
            exit_code: st.and_then(|s| s.exit_code),
            signal,
            oom_killed: st.is_some_and(|s| s.oom_killed),
            time: state::now_rfc3339(),
        };
        berth_bus::events::publish(
            &self.client,
            EventKind::Container,
            &record.id,
            action,
            &event,
        )
        .await;
    }

    /// `create`
    pub async fn create(
        self: &Arc<Self>,
        request: ContainerCreateRequest,
    ) -> Handled<ContainerCreated> {
        let id = new_id()?;
        let span = tracing::info_span!("create", container_id = %id, image = %request.image, image_digest = tracing::field::Empty);
        self.create_inner(id, request).instrument(span).await
    }

    async fn create_inner(
        self: &Arc<Self>,
        id: String,
        request: ContainerCreateRequest,
    ) -> Handled<ContainerCreated> {
        if request.image.trim().is_empty() {
            return Err(ErrorEnvelope::invalid("an image is required"));
        }
        if request.auto_remove && request.restart != RestartPolicy::No {
            // Docker's rule: a container that removes itself cannot also be restarted.
            return Err(ErrorEnvelope::invalid(
                "auto-remove (--rm) and a restart policy cannot be combined",
            ));
        }
        for bind in &request.binds {
            if !bind.source.starts_with('/') || !bind.destination.starts_with('/') {
                return Err(ErrorEnvelope::invalid(format!(
                    "bind mount {}:{}: both paths must be absolute",
                    bind.source, bind.destination
                )));
            }
        }
        let name = match &request.name {
            Some(name) if !name.is_empty() => {
                let name = name.strip_prefix('/').unwrap_or(name).to_string();
                check_name(&name).map_err(ErrorEnvelope::invalid)?;
                name
            }
            _ => format!("berth_{}", &id[..12]),
        };
        // Reserve the name for the duration of the create.
        {
            let mut reserved = self
                .reserved_names
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if reserved.contains(&name) {
                return Err(ErrorEnvelope::conflict(format!(
                    "the container name {name} is already in use"
                )));
            }
            reserved.insert(name.clone());
        }
        let outcome = self.create_reserved(&id, &name, request).await;
        self.reserved_names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&name);
        outcome
    }

    async fn create_reserved(
        self: &Arc<Self>,
        id: &str,
        name: &str,
        request: ContainerCreateRequest,
    ) -> Handled<ContainerCreated> {
        let containers_dir = self.paths.containers_dir.clone();
        let taken_by = {
            let name = name.to_string();
            blocking(move || {
                Ok(Executor::records_in(&containers_dir)
                    .into_iter()
                    .find(|(r, _)| r.name == name)
                    .map(|(r, _)| r.id))
            })
            .await?
        };
        if let Some(other) = taken_by {
            return Err(ErrorEnvelope::conflict(format!(
                "the container name {name} is already in use by container {other}"
            )));
        }
        let prepared: PrepareReply = berth_bus::request(
            &self.client,
            &subjects::unpack(&self.node_id, UnpackVerb::Prepare),
            &PrepareRequest {
                image: request.image.clone(),
                user: Some(id.to_string()),
                progress: None,
            },
            Encoding::Bincode,
            PREPARE_DEADLINE,
        )
        .await
        .map_err(|err| {
            upstream(
                &format!("preparing image {} on node {}", request.image, self.node_id),
                err,
            )
        })?;
        tracing::Span::current().record("image_digest", prepared.image_digest.as_str());
        let image: ImageInspect = request_inspect(&self.client, &prepared.image_digest).await?;
        let image_config = runspec::parse_image_config(&image.config).map_err(|err| {
            ErrorEnvelope::invalid(format!("image {} ({}): {err}", request.image, image.digest))
        })?;
        let record_base = (
            id.to_string(),
            name.to_string(),
            self.node_id.clone(),
            prepared.image_digest.clone(),
        );
        let dir = self.dir(id);
        let monitor_bin = self.paths.monitor_bin.clone();
        let lowerdirs = prepared.lowerdirs.clone();
        let req = request.clone();
        let record = blocking(move || {
            let result = build_container(
                &dir,
                &monitor_bin,
                &lowerdirs,
                &req,
                &image_config,
                record_base,
            );
            if result.is_err() {
                let _ = overlay::unmount(&dir.join(files::ROOTFS));
                let _ = std::fs::remove_dir_all(&dir);
            }
            result
        })
        .await?;
        tracing::info!(name = %record.name, "container created");
        self.publish_event(&record, "create", None, None).await;
        Ok(ContainerCreated {
            id: record.id,
            name: record.name,
            image_digest: record.image_digest,
        })
    }

    /// `start`
    pub async fn start(self: &Arc<Self>, request: ContainerRef) -> Handled<ContainerStarted> {
        let id = self.resolve(&request.id).await?;
        let span = tracing::info_span!("start", container_id = %id);
        let lock = self.op_lock(&id);
        let _guard = lock.lock().await;
        self.start_locked(&id).instrument(span).await
    }

    async fn start_locked(self: &Arc<Self>, id: &str) -> Handled<ContainerStarted> {
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
        self.stopped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        let offset = log_len(&dir);
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
            self.publish_event(&record, "die", st.as_ref(), None).await;
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
        self.publish_event(&record, "start", Some(&st), None).await;
        Ok(ContainerStarted {
            id: id.to_string(),
            pid: st.pid,
        })
    }

    /// Watches one running container: publishes its new log lines, and when its monitor
    /// exits records the exit, publishes events and applies the restart policy.
    fn supervise(self: &Arc<Self>, id: String, monitor_pid: i32, monitor_start: u64, offset: u64) {
        let (sender, _) = watch::channel(true);
        self.tracked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), Arc::new(sender));
        let this = Arc::clone(self);
        let span = tracing::info_span!("supervise", container_id = %id);
        tokio::spawn(
            async move {
                let exited = process_exit(monitor_pid, monitor_start);
                tokio::pin!(exited);
                let mut offset = offset;
                let mut tick = tokio::time::interval(LOG_POLL);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        () = &mut exited => break,
                        _ = tick.tick() => offset = this.publish_logs(&id, offset, false).await,
                    }
                }
                this.publish_logs(&id, offset, true).await;
                this.after_exit(&id).await;
            }
            .instrument(span),
        );
    }

    /// Publishes the whole new lines after `offset`; returns the new offset.
    async fn publish_logs(&self, id: &str, offset: u64, final_chunk: bool) -> u64 {
        let path = self.dir(id).join(files::LOG);
        let mut offset = offset;
        loop {
            let read_path = path.clone();
            let read =
                tokio::task::spawn_blocking(move || read_log(&read_path, offset, MAX_LOG_PAYLOAD))
                    .await;
            let data = match read {
                Ok(Ok((data, _))) => data,
                _ => Vec::new(),
            };
            let done = data.len() < MAX_LOG_PAYLOAD / 2;
            if !data.is_empty() || final_chunk && done {
                let chunk = LogChunk {
                    id: id.to_string(),
                    offset,
                    eof: final_chunk && done,
                    data,
                };
                offset += chunk.data.len() as u64;
                match Encoding::Bincode.encode(&chunk) {
                    Ok(body) => {
                        if let Err(err) = self.client.publish(subjects::logs(id), body.into()).await
                        {
                            tracing::warn!(error = %err, "cannot publish log chunk");
                        }
                    }
                    Err(err) => tracing::warn!(error = %err, "cannot encode log chunk"),
                }
            }
            if done {
                return offset;
            }
        }
    }

    async fn after_exit(self: &Arc<Self>, id: &str) {
        let dir = self.dir(id);
        let record = match state::read_record(&dir) {
            Ok(r) => r,
            Err(err) => {
                // Removed while running (rm -f): nothing to record.
                tracing::debug!(error = %err, "container gone after exit");
                self.untrack(id);
                return;
            }
        };
        let mut st = match state::read_state(&dir) {
            Ok(st) => st,
            Err(err) => {
                tracing::error!(error = %err, "cannot read state after exit");
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
        if st.oom_killed {
            self.publish_event(&record, "oom", Some(&st), None).await;
        }
        self.publish_event(&record, "die", Some(&st), None).await;
        self.untrack(id);

        let stopped = self
            .stopped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id);
        let code = st.exit_code.unwrap_or(monitor::START_FAILED);
        if should_restart(record.config.restart, code, st.restart_count, stopped) {
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
                if this
                    .stopped
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains(&id)
                {
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
                })
                .await
            {
                tracing::warn!(error = %err, "auto-remove failed");
            }
        }
    }

    fn untrack(&self, id: &str) {
        if let Some(sender) = self
            .tracked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
        {
            sender.send_replace(false);
        }
    }

    fn is_tracked(&self, id: &str) -> bool {
        self.tracked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(id)
    }

    /// Waits until the container is no longer running and no longer supervised;
    /// `false` if `within` passed first.
    async fn wait_exit(&self, id: &str, within: Duration) -> bool {
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

    fn signal_running(
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
    fn kill_all(&self, id: &str, st: &ContainerState) {
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
            self.stopped
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id.clone());
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
            self.stopped
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id.clone());
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
            let runtime_root = self.paths.runtime_root.clone();
            let remove_id = id.clone();
            blocking(move || {
                overlay::unmount(&dir.join(files::ROOTFS)).map_err(internal)?;
                if let Ok(container) = berth_runtime::Container::load(&runtime_root, &remove_id) {
                    let _ = container.delete(true);
                }
                std::fs::remove_dir_all(&dir)
                    .map_err(|err| internal(format!("remove {}: {err}", dir.display())))
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
            self.release_snapshots(&id).await;
            self.publish_event(&record, "destroy", None, None).await;
            Ok(ContainerDone { id: id.clone() })
        }
        .instrument(span)
        .await
    }

    /// Drops the container's pin on its image's snapshots so `prune` can reclaim them.
    /// Best effort: the container is gone either way, and a pin left behind only keeps
    /// disk space until the snapshot is removed with force.
    async fn release_snapshots(&self, id: &str) {
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

    /// `wait`: blocks until the container is not running, then its exit.
    pub async fn wait(self: &Arc<Self>, request: ContainerRef) -> Handled<ContainerExit> {
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
        let st = state::read_state(&self.dir(&id)).map_err(|err| state_error(&id, err))?;
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
            log_path: dir.join(files::LOG).display().to_string(),
            restart_count: st.restart_count,
        })
    }

    /// `list`
    pub async fn list(self: &Arc<Self>, all: bool) -> Handled<ContainerList> {
        let dir = self.paths.containers_dir.clone();
        let node_id = self.node_id.clone();
        blocking(move || {
            let mut containers: Vec<ContainerSummary> = Executor::records_in(&dir)
                .iter()
                .filter(|(_, st)| all || st.status == ContainerStatus::Running)
                .map(|(record, st)| summary(record, st))
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
        let page_id = id.clone();
        blocking(move || {
            let path = dir.join(files::LOG);
            let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            let start = match (request.from_offset, request.tail) {
                (Some(offset), _) => offset.min(len),
                (None, Some(n)) => tail_offset(&path, len, n)
                    .map_err(|err| internal(format!("{}: {err}", path.display())))?,
                (None, None) => 0,
            };
            let (data, len) = read_log(&path, start, MAX_LOG_PAYLOAD)
                .map_err(|err| internal(format!("{}: {err}", path.display())))?;
            let end = start + data.len() as u64;
            Ok(LogsPage {
                id: page_id,
                start,
                end,
                more: end < len && !data.is_empty(),
                data,
                running,
            })
        })
        .await
    }

    /// Re-adopts the monitors of containers that were running when the executor stopped.
    pub async fn adopt(self: &Arc<Self>) {
        let dir = self.paths.containers_dir.clone();
        let records = tokio::task::spawn_blocking(move || Executor::records_in(&dir))
            .await
            .unwrap_or_default();
        for (record, mut st) in records {
            if st.status != ContainerStatus::Running {
                continue;
            }
            let id = record.id.clone();
            if state::same_process(st.monitor_pid, st.monitor_start) {
                tracing::info!(container_id = %id, monitor_pid = st.monitor_pid, "re-adopted running container");
                self.supervise(
                    id.clone(),
                    st.monitor_pid,
                    st.monitor_start,
                    log_len(&self.dir(&id)),
                );
                continue;
            }
            // The monitor wrote nothing before it went: the exit code is unknown.
            let dir = self.dir(&id);
            match state::read_state(&dir) {
                Ok(fresh) if fresh.status != ContainerStatus::Running => continue,
                _ => {}
            }
            st.status = ContainerStatus::Dead;
            st.error = Some("the container's monitor is gone".into());
            st.finished_at = Some(state::now_rfc3339());
            if let Err(err) = state::write_state(&dir, &st) {
                tracing::error!(container_id = %id, error = %err, "cannot record a lost container");
            }
            tracing::warn!(container_id = %id, "monitor lost while the executor was down");
        }
    }

    /// Running containers and the limits they reserve (for the node record).
    pub fn usage(&self) -> crate::node::Usage {
        let ids: Vec<String> = self
            .tracked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        let mut usage = crate::node::Usage {
            containers: ids.len() as u32,
            ..Default::default()
        };
        for id in ids {
            if let Ok(record) = state::read_record(&self.dir(&id)) {
                let config = &record.config;
                usage.allocated.memory_bytes += config.memory_bytes.unwrap_or(0).max(0) as u64;
                usage.allocated.cpu_millis += config.nano_cpus.unwrap_or(0) / 1_000_000;
                usage.allocated.pids += config.pids_limit.unwrap_or(0).max(0) as u64;
            }
        }
        usage
    }
}

/// Start offset of the last `n` records of the log at `path` (of length `len`).
fn tail_offset(path: &Path, len: u64, n: u64) -> std::io::Result<u64> {
    // Records are at most ~16 KiB: the last n fit in n * 17 KiB, capped at 64 MiB.
    let window = n.saturating_mul(17 * 1024).min(64 << 20).min(len);
    let from = len - window;
    let (data, _) = {
        let mut file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(err) => return Err(err),
        };
        file.seek(SeekFrom::Start(from))?;
        let mut data = Vec::new();
        file.take(window).read_to_end(&mut data)?;
        (data, ())
    };
    let data = &data[..crilog::whole_lines(&data)];
    // When the window starts mid-record, the first (partial) line is not one of the n.
    let skip = if from == 0 {
        0
    } else {
        data.iter()
            .position(|b| *b == b'\n')
            .map_or(data.len(), |i| i + 1)
    };
    Ok(from + (skip + crilog::tail_start(&data[skip..], n)) as u64)
}

async fn request_inspect(client: &async_nats::Client, name: &str) -> Handled<ImageInspect> {
    berth_bus::request(
        client,
        &subjects::image(ImageVerb::Inspect),
        &ImageInspectRequest {
            name: name.to_string(),
        },
        Encoding::Bincode,
        INSPECT_DEADLINE,
    )
    .await
    .map_err(|err| upstream(&format!("inspecting image {name}"), err))
}

/// The blocking part of create: directories, overlay mount, user, spec, records.
fn build_container(
    dir: &Path,
    monitor_bin: &Path,
    lowerdirs: &[String],
    request: &ContainerCreateRequest,
    image: &ImageRunConfig,
    (id, name, node_id, image_digest): (String, String, String, String),
) -> Handled<ContainerRecord> {
    let io = |what: &Path, err: std::io::Error| {
        internal(format!("container {id}: {}: {err}", what.display()))
    };
    std::fs::create_dir(dir).map_err(|err| io(dir, err))?;
    for sub in [files::UPPER, files::WORK, files::ROOTFS] {
        let path = dir.join(sub);
        std::fs::create_dir(&path).map_err(|err| io(&path, err))?;
    }
    let rootfs = dir.join(files::ROOTFS);
    let plan = overlay::plan(lowerdirs, &dir.join(files::UPPER), &dir.join(files::WORK))
        .map_err(|err| ErrorEnvelope::invalid(format!("container {id}: {err}")))?;
    overlay::mount(&plan, &rootfs, monitor_bin)
        .map_err(|err| internal(format!("container {id}: {err}")))?;
    let passwd = read_in_root(&rootfs, "etc/passwd");
    let group = read_in_root(&rootfs, "etc/group");
    let user_spec = runspec::user_spec(image, request);
    let user = users::resolve(&user_spec, passwd.as_deref(), group.as_deref())
        .map_err(|err| ErrorEnvelope::invalid(format!("container {id}: {err}")))?;
    let inputs = SpecInputs {
        id: &id,
        rootfs: &rootfs,
        user: &user,
    };
    let (plan, spec) = runspec::build(request, image, &inputs)
        .map_err(|err| ErrorEnvelope::invalid(format!("container {id}: {err}")))?;
    let spec_path = dir.join(files::SPEC);
    spec.save(&spec_path)
        .map_err(|err| internal(format!("container {id}: {}: {err}", spec_path.display())))?;
    let record = ContainerRecord {
        id: id.clone(),
        name,
        image: request.image.clone(),
        image_digest,
        node_id,
        created: state::now_rfc3339(),
        config: request.clone(),
        command: plan.args,
        env: plan.env,
        workdir: plan.cwd,
        uid: user.uid,
        gid: user.gid,
        hostname: plan.hostname,
        stop_signal: plan.stop_signal,
        stop_timeout: request.stop_timeout.unwrap_or(DEFAULT_STOP_TIMEOUT),
    };
    state::write_state(dir, &ContainerState::created())
        .map_err(|err| internal(format!("container {id}: {err}")))?;
    // The record last: a directory with a record is a complete container.
    state::write_record(dir, &record).map_err(|err| internal(format!("container {id}: {err}")))?;
    Ok(record)
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

    #[test]
    fn names_follow_docker_rules() {
        assert!(check_name("web-1.a_b").is_ok());
        assert!(check_name("_x").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name("").is_err());
    }

    #[test]
    fn log_pages_and_tails_are_whole_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        std::fs::write(
            &path,
            b"t stdout F a\nt stdout F b\nt stderr F c\nt stdout P d",
        )
        .expect("write");
        let (data, len) = read_log(&path, 0, 20).expect("reads");
        assert_eq!(data, b"t stdout F a\n".to_vec());
        assert_eq!(len, 51);
        let (data, _) = read_log(&path, 13, 1000).expect("reads");
        assert_eq!(data, b"t stdout F b\nt stderr F c\n".to_vec());
        assert_eq!(tail_offset(&path, len, 1).expect("tail"), 26);
        assert_eq!(tail_offset(&path, len, 5).expect("tail"), 0);
        let (data, len) = read_log(&dir.path().join("missing"), 0, 10).expect("missing is empty");
        assert!(data.is_empty() && len == 0);
    }
}
