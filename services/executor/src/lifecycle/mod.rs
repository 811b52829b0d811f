//! The container lifecycle on this node, one file per group of verbs: `create`,
//! `start` (with the supervisor task per running container: exit watch via a pidfd on
//! its monitor, live log chunks, events, restart policy, and re-adoption of running
//! monitors when the executor starts), `stop` (kill, stop, remove) and `query` (wait,
//! inspect, list, logs). This file holds the executor's shared state and helpers.

mod create;
mod query;
mod start;
mod stop;

pub use query::MAX_LOG_PAYLOAD;
pub use start::{restart_delay, should_restart};

use crate::monitor;
use crate::overlay;
use crate::runspec::{self, ImageRunConfig, SpecInputs};
use crate::state::{self, files, ContainerRecord, ContainerState, StateError};
use crate::users;
use berth_bus::BusError;
use berth_proto::messages::exec::{
    BindMount, ContainerCreateRequest, ContainerCreated, ContainerDone, ContainerEvent,
    ContainerExit, ContainerInspect, ContainerKillRequest, ContainerList, ContainerRef,
    ContainerRemoveRequest, ContainerStarted, ContainerStatus, ContainerStopRequest,
    ContainerSummary, ContainerWaitRequest, LogChunk, LogsPage, LogsRequest, RestartPolicy,
    VolumeMount,
};
use berth_proto::messages::image::{ImageInspect, ImageInspectRequest};
use berth_proto::messages::unpack::{
    PrepareReply, PrepareRequest, SnapshotReleaseRequest, SnapshotsReleased,
};
use berth_proto::subjects::{self, EventKind, ImageVerb, UnpackVerb};
use berth_proto::{Encoding, ErrorEnvelope};
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncBufReadExt;
use tokio::sync::watch;
use tracing::Instrument;

type Handled<T> = Result<T, ErrorEnvelope>;

/// Where things live and who we are.
#[derive(Debug, Clone)]
pub struct Paths {
    pub containers_dir: PathBuf,
    /// berth-runtime's state root (`<data>/runtime`).
    pub runtime_root: PathBuf,
    /// The `berth-monitor` binary.
    pub monitor_bin: PathBuf,
    /// `<data>/volumes`
    pub volumes_dir: PathBuf,
    /// Where container logs go (`<log_dir>/<id>/log`); default the container's directory.
    pub log_dir: Option<PathBuf>,
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
    /// The node's named and anonymous volumes.
    pub(crate) volumes: crate::volumes::Volumes,
    /// Where each running container's live log stands (shared by the one log pump).
    log_cursors: Mutex<HashMap<String, Arc<tokio::sync::Mutex<LogCursor>>>>,
    log_pump_started: std::sync::atomic::AtomicBool,
    /// The node's networks (bridges, addresses, ports) that containers attach to.
    pub(crate) net: Arc<crate::network::Networks>,
    /// Input ends of the exec sessions that take stdin.
    pub(crate) exec_inputs: crate::attach::ExecInputs,
    /// Exits of auto-removed (`--rm`) containers, kept a while after their removal so
    /// that a `wait` racing the removal (an attached `run --rm`) still gets the code.
    removed_exits: Mutex<HashMap<String, (ContainerExit, std::time::Instant)>>,
    /// Publishes the node record out of turn when its volumes or networks change.
    pub(crate) record_refresh: Arc<crate::node::RecordRefresh>,
}

/// How long the exit of an auto-removed container stays answerable by `wait`.
const REMOVED_EXIT_KEPT: Duration = Duration::from_secs(600);

/// How far a container's log was published, and the current file as last seen.
pub(crate) struct LogCursor {
    offset: u64,
    /// (inode, size) of the current log file at the last read.
    seen: Option<(u64, u64)>,
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
pub(crate) fn new_id() -> Handled<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|err| internal(format!("cannot read /dev/urandom: {err}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// One rule for the executor and the scheduler, kept in shared/proto.
pub use berth_proto::messages::exec::check_container_name as check_name;

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
        labels: record.config.labels.clone(),
        ports: Vec::new(),
        started_at: st.started_at.clone(),
        finished_at: st.finished_at.clone(),
    }
}

/// Logical end of a container's log (see `logfiles`).
fn log_len(log_dir: &Path) -> u64 {
    crate::logfiles::LogSet::open(log_dir).map_or(0, |set| set.end())
}

impl Executor {
    /// An executor over `paths` (created if missing).
    pub fn new(
        node_id: String,
        paths: Paths,
        client: async_nats::Client,
        net: Arc<crate::network::Networks>,
    ) -> anyhow::Result<Self> {
        for dir in [&paths.containers_dir, &paths.runtime_root] {
            std::fs::create_dir_all(dir)
                .map_err(|err| anyhow::anyhow!("cannot create {}: {err}", dir.display()))?;
        }
        remove_trash(&paths.containers_dir);
        Ok(Executor {
            node_id,
            client,
            tracked: Mutex::new(HashMap::new()),
            reserved_names: Mutex::new(HashSet::new()),
            op_locks: Mutex::new(HashMap::new()),
            stopped: Mutex::new(HashSet::new()),
            log_cursors: Mutex::new(HashMap::new()),
            log_pump_started: std::sync::atomic::AtomicBool::new(false),
            volumes: {
                let volumes =
                    crate::volumes::Volumes::new(paths.volumes_dir.clone()).map_err(|err| {
                        anyhow::anyhow!("cannot create {}: {err}", paths.volumes_dir.display())
                    })?;
                volumes.clean_leftovers();
                volumes
            },
            paths,
            net,
            exec_inputs: Default::default(),
            removed_exits: Mutex::new(HashMap::new()),
            record_refresh: Default::default(),
        })
    }

    /// Keeps the exit of a container about to be auto-removed (see `removed_exits`).
    pub(crate) fn keep_removed_exit(&self, exit: ContainerExit) {
        let mut kept = self.removed_exits.lock().unwrap_or_else(|p| p.into_inner());
        kept.retain(|_, (_, at)| at.elapsed() < REMOVED_EXIT_KEPT);
        kept.insert(exit.id.clone(), (exit, std::time::Instant::now()));
    }

    /// The kept exit of an auto-removed container, by its full id.
    pub(crate) fn removed_exit(&self, id: &str) -> Option<ContainerExit> {
        self.removed_exits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .filter(|(_, at)| at.elapsed() < REMOVED_EXIT_KEPT)
            .map(|(exit, _)| exit.clone())
    }

    /// Remembers (on disk too, for `unless-stopped` across executor restarts) that the
    /// container was stopped on purpose, or forgets it when it is started again.
    pub(crate) fn set_stopped(&self, id: &str, stopped: bool) {
        let marker = self.dir(id).join(files::STOPPED);
        let mut set = self.stopped.lock().unwrap_or_else(|p| p.into_inner());
        if stopped {
            set.insert(id.to_string());
            if let Err(err) = std::fs::write(&marker, b"") {
                tracing::warn!(container_id = %id, error = %err, "cannot record the stop");
            }
        } else {
            set.remove(id);
            let _ = std::fs::remove_file(&marker);
        }
    }

    /// The container was stopped on purpose (this run of the executor or an earlier one).
    pub(crate) fn is_stopped(&self, id: &str) -> bool {
        self.stopped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
            || self.dir(id).join(files::STOPPED).is_file()
    }

    /// The directory of a container's log files.
    pub(crate) fn log_dir(&self, id: &str) -> PathBuf {
        match &self.paths.log_dir {
            Some(dir) => dir.join(id),
            None => self.dir(id),
        }
    }

    pub(crate) fn dir(&self, id: &str) -> PathBuf {
        self.paths.containers_dir.join(id)
    }

    pub(crate) fn op_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
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

    pub(super) fn records_in(dir: &Path) -> Vec<(ContainerRecord, ContainerState)> {
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

    pub(super) async fn publish_event(
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
            exec_id: None,
            command: None,
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
            ports: self.net.used_ports(),
            volumes: self
                .volumes
                .list()
                .into_iter()
                .filter(|v| !v.anonymous)
                .map(|v| v.name)
                .collect(),
            networks: self.net.user_networks(),
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

/// Where `remove` moves a container's directory before deleting it.
pub(crate) fn trash_path(dir: &Path) -> PathBuf {
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    dir.with_file_name(format!(".trash-{name}"))
}

/// Deletes, in the background, what removals a restart interrupted left
/// (`.trash-*`). Never fails or delays the start: a deep tree takes minutes,
/// and what cannot go now is tried again at the next start.
fn remove_trash(containers_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(containers_dir) else {
        return;
    };
    let trash: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".trash-"))
        .map(|e| e.path())
        .collect();
    if trash.is_empty() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("remove-trash".into())
        .spawn(move || {
            for path in trash {
                if let Err(err) = berth_fstree::remove_tree(&path) {
                    tracing::warn!(path = %path.display(), %err, "cannot remove a removed container's files");
                }
            }
        });
    if let Err(err) = spawned {
        tracing::warn!(%err, "cannot start removing old container files");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_docker_rules() {
        assert!(check_name("web-1.a_b").is_ok());
        assert!(check_name("_x").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name("").is_err());
    }
}
