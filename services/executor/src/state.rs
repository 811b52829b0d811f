//! A container's files on the node's disk: `container.json` (what was decided at create,
//! written once by the executor) and `state.json` (how it is doing, written by the
//! executor while created and by the monitor from start to exit). Both are written
//! atomically: temp file, fsync, rename, fsync of the directory.

use berth_proto::messages::exec::{ContainerCreateRequest, ContainerStatus, VolumeMount};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// `containers/<id>/container.json`: fixed at create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub name: String,
    /// The image as the user named it.
    pub image: String,
    pub image_digest: String,
    pub node_id: String,
    /// RFC 3339.
    pub created: String,
    pub config: ContainerCreateRequest,
    /// The process as it will run (entrypoint + cmd).
    pub command: Vec<String>,
    pub env: Vec<String>,
    pub workdir: String,
    pub uid: u32,
    pub gid: u32,
    pub hostname: String,
    /// Resolved: the request's, else the image's, else SIGTERM.
    pub stop_signal: String,
    pub stop_timeout: u32,
    /// Volumes as mounted: anonymous ones with the name they were given.
    #[serde(default)]
    pub volumes: Vec<VolumeMount>,
}

/// `containers/<id>/state.json`: the mutable part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerState {
    pub status: ContainerStatus,
    /// Host pid of the container process and its start time (clock ticks since boot),
    /// which together survive pid reuse.
    pub pid: i32,
    pub pid_start: u64,
    /// The monitor owning the container's stdio and exit status.
    pub monitor_pid: i32,
    pub monitor_start: u64,
    pub exit_code: Option<i32>,
    pub oom_killed: bool,
    pub error: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub restart_count: u32,
}

impl ContainerState {
    /// The state right after `create`.
    pub fn created() -> Self {
        ContainerState {
            status: ContainerStatus::Created,
            pid: 0,
            pid_start: 0,
            monitor_pid: 0,
            monitor_start: 0,
            exit_code: None,
            oom_killed: false,
            error: None,
            started_at: None,
            finished_at: None,
            restart_count: 0,
        }
    }
}

/// File names inside a container's directory.
pub mod files {
    pub const RECORD: &str = "container.json";
    pub const STATE: &str = "state.json";
    pub const SPEC: &str = "config.json";
    pub const LOG: &str = "log";
    pub const ROOTFS: &str = "rootfs";
    pub const UPPER: &str = "upper";
    pub const WORK: &str = "work";
    pub const MONITOR_LOG: &str = "monitor.log";
    /// Present while the container is stopped on purpose (`stop`, `rm`).
    pub const STOPPED: &str = "stopped";
    /// `finished_at` of the last exit the executor handled (events, restart policy).
    pub const EXIT_SEEN: &str = "exit-seen";
    /// Why the log cannot be written (a full disk), while that lasts.
    pub const LOG_ERROR: &str = "log-error";
    /// FIFO of a `-i`/`-t` container's input, read by its monitor while it runs.
    pub const STDIN: &str = "stdin";
}

/// Errors reading or writing a container's files; each names the path.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
}

impl StateError {
    /// The file does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, StateError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// Writes `bytes` to `path` so that a reader sees the old or the new content, never a
/// torn one, even across a crash.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let io = |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Per-process temp name: the executor and a monitor never clobber each other's temp.
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut file = std::fs::File::create(&tmp).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), StateError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|source| StateError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    write_atomic(path, &bytes)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, StateError> {
    let bytes = std::fs::read(path).map_err(|source| StateError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| StateError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads `container.json` of the container in `dir`.
pub fn read_record(dir: &Path) -> Result<ContainerRecord, StateError> {
    read_json(&dir.join(files::RECORD))
}

/// Writes `container.json`.
pub fn write_record(dir: &Path, record: &ContainerRecord) -> Result<(), StateError> {
    write_json(&dir.join(files::RECORD), record)
}

/// Reads `state.json`.
pub fn read_state(dir: &Path) -> Result<ContainerState, StateError> {
    read_json(&dir.join(files::STATE))
}

/// Writes `state.json` atomically.
pub fn write_state(dir: &Path, state: &ContainerState) -> Result<(), StateError> {
    write_json(&dir.join(files::STATE), state)
}

/// Start time of a process (field 22 of `/proc/<pid>/stat`, clock ticks since boot);
/// `None` if it does not exist or is a zombie.
pub fn proc_start_time(pid: i32) -> Option<u64> {
    if pid <= 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

/// Field 22 of a `/proc/<pid>/stat` line; `None` for a zombie or dead process.
pub fn parse_start_time(stat: &str) -> Option<u64> {
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split(' ').collect();
    if matches!(fields.first(), Some(&"Z") | Some(&"X")) {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// The process `pid` still is the one that started at `start`.
pub fn same_process(pid: i32, start: u64) -> bool {
    proc_start_time(pid) == Some(start)
}

/// Now, RFC 3339 with nanoseconds, UTC.
pub fn now_rfc3339() -> String {
    crate::crilog::timestamp(std::time::SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_through_an_atomic_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut state = ContainerState::created();
        state.status = ContainerStatus::Exited;
        state.exit_code = Some(3);
        state.oom_killed = true;
        state.finished_at = Some("2026-11-29T00:00:00.5Z".into());
        write_state(dir.path(), &state).expect("writes");
        assert_eq!(read_state(dir.path()).expect("reads"), state);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .expect("lists")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("state.json")]);
        let err = read_state(&dir.path().join("nope")).expect_err("missing");
        assert!(err.is_not_found());
    }

    #[test]
    fn start_time_is_field_22_even_with_odd_command_names() {
        let stat = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_time(stat), Some(987_654));
        let zombie = "42 (x) Z 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_time(zombie), None);
        let me = std::process::id() as i32;
        let start = proc_start_time(me).expect("own start time");
        assert!(same_process(me, start));
        assert!(!same_process(me, start + 1));
    }
}
