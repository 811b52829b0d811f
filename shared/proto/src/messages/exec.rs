//! `berth.v1.exec.<node>.*`, `berth.v1.logs.<id>` and `berth.v1.events.container.*`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `list`: containers on this node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContainerListRequest {
    /// Include containers that are not running (`ps -a`).
    #[serde(default)]
    pub all: bool,
}

/// Lifecycle state of a container, as Docker names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ContainerStatus {
    Created,
    Running,
    Paused,
    Restarting,
    Exited,
    Dead,
}

impl ContainerStatus {
    /// Docker's spelling (`created`, `running`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerStatus::Created => "created",
            ContainerStatus::Running => "running",
            ContainerStatus::Paused => "paused",
            ContainerStatus::Restarting => "restarting",
            ContainerStatus::Exited => "exited",
            ContainerStatus::Dead => "dead",
        }
    }
}

/// One row of `berth ps`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ContainerSummary {
    pub id: String,
    pub name: String,
    pub image: String,
    pub node_id: String,
    pub status: ContainerStatus,
    pub exit_code: Option<i32>,
    /// RFC 3339.
    pub created: String,
    /// The process as run (entrypoint + cmd).
    #[serde(default)]
    pub command: Vec<String>,
    /// `--label`s given at create (`ps --filter label=…`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Ports published while it runs.
    #[serde(default)]
    pub ports: Vec<crate::messages::network::PortBinding>,
    /// RFC 3339: when it last started and last exited (`ps` STATUS: "Up 3 seconds").
    #[serde(default)]
    pub started_at: Option<String>,
    #[serde(default)]
    pub finished_at: Option<String>,
}

/// Reply to `list`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ContainerList {
    pub node_id: String,
    pub containers: Vec<ContainerSummary>,
}

/// `-v /host:/ctr[:ro]`: a host path bind-mounted into the container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BindMount {
    /// Absolute host path.
    pub source: String,
    /// Absolute path in the container.
    pub destination: String,
    #[serde(default)]
    pub read_only: bool,
}

/// `-v NAME:/ctr[:ro]` (a named volume, created on first use) or `-v /ctr` (an
/// anonymous volume: `name` empty, a fresh one per container).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeMount {
    /// Volume name; empty for a new anonymous volume.
    #[serde(default)]
    pub name: String,
    /// Absolute path in the container.
    pub destination: String,
    #[serde(default)]
    pub read_only: bool,
}

/// `--network`: which network namespace the container gets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// Its own network namespace on the node's default bridge network (Docker's default).
    #[default]
    Bridge,
    /// Its own network namespace with only loopback.
    None,
    /// The host's network namespace.
    Host,
    /// Its own network namespace on a user network of the node (by name or id).
    Named(String),
}

impl NetworkMode {
    /// As `--network` spells it: `bridge`, `none`, `host` or the network's name.
    pub fn name(&self) -> &str {
        match self {
            NetworkMode::Bridge => "bridge",
            NetworkMode::None => "none",
            NetworkMode::Host => "host",
            NetworkMode::Named(name) => name,
        }
    }
}

/// `--restart`: what the node does when the container exits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RestartPolicy {
    #[default]
    No,
    /// Restart on a non-zero exit, at most `max_retries` times (0 = unlimited).
    OnFailure {
        max_retries: u32,
    },
    Always,
    UnlessStopped,
}

/// `create`: everything `berth run`/`create` decides about a container. Fields left
/// empty take the image's value (entrypoint, cmd, env, workdir, user, stop signal).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContainerCreateRequest {
    /// Image reference or manifest digest.
    pub image: String,
    /// Unique name on the node; generated when empty.
    #[serde(default)]
    pub name: Option<String>,
    /// Replaces the image's entrypoint; `Some(vec![])` clears it (`--entrypoint ""`).
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image's cmd when non-empty.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// `KEY=value`, added to (and overriding) the image's env.
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub workdir: Option<String>,
    /// `user[:group]` by name or number, resolved in the image's /etc/passwd and /etc/group.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub hostname: Option<String>,
    /// Memory limit in bytes.
    #[serde(default)]
    pub memory_bytes: Option<i64>,
    /// CPU limit in billionths of a CPU (`--cpus 0.5` = 500_000_000), as Docker's NanoCpus.
    #[serde(default)]
    pub nano_cpus: Option<u64>,
    #[serde(default)]
    pub pids_limit: Option<i64>,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default)]
    pub network: NetworkMode,
    #[serde(default)]
    pub binds: Vec<BindMount>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Signal name or number `stop` sends first; default the image's, else SIGTERM.
    #[serde(default)]
    pub stop_signal: Option<String>,
    /// Seconds `stop` waits before SIGKILL; default 10.
    #[serde(default)]
    pub stop_timeout: Option<u32>,
    /// Remove the container once it exits (`--rm`).
    #[serde(default)]
    pub auto_remove: bool,
    /// Memory + swap in bytes (`--memory-swap`; -1 unlimited swap).
    #[serde(default)]
    pub memory_swap_bytes: Option<i64>,
    /// CPUs the container may run on (`--cpuset-cpus 0-1`).
    #[serde(default)]
    pub cpuset_cpus: Option<String>,
    /// `--tmpfs /path[:options]`.
    #[serde(default)]
    pub tmpfs: Vec<String>,
    /// Capabilities added to / dropped from Docker's default set (`ALL` allowed).
    #[serde(default)]
    pub cap_add: Vec<String>,
    #[serde(default)]
    pub cap_drop: Vec<String>,
    /// `--security-opt`: `no-new-privileges[=true|false]`, `seccomp=unconfined`.
    #[serde(default)]
    pub security_opt: Vec<String>,
    /// `--ulimit name=soft[:hard]`.
    #[serde(default)]
    pub ulimits: Vec<Ulimit>,
    /// Named and anonymous volumes (`-v NAME:/ctr`, `-v /ctr`).
    #[serde(default)]
    pub volumes: Vec<VolumeMount>,
    /// `--privileged`: every capability, no seccomp, no masked or read-only paths,
    /// writable /sys, the host's devices.
    #[serde(default)]
    pub privileged: bool,
    /// `--log-opt key=value`: `max-size` (bytes, k/m/g suffix) and `max-file`.
    #[serde(default)]
    pub log_opts: BTreeMap<String, String>,
    /// `-i`: keep the container's stdin open for `attach`.
    #[serde(default)]
    pub open_stdin: bool,
    /// `-t`: the process gets a pseudo-terminal (stdout and stderr are one stream).
    #[serde(default)]
    pub tty: bool,
    /// With `tty`: the terminal's size at start (later changes: [`StdinPayload::Resize`]).
    #[serde(default)]
    pub console_size: Option<ConsoleSize>,
    /// `-p`: ports published on the node while the container runs.
    #[serde(default)]
    pub ports: Vec<crate::messages::network::PortSpec>,
    /// `-P`: publish every port the image exposes on a free host port.
    #[serde(default)]
    pub publish_all: bool,
    /// `--network-alias`: more names on its user network.
    #[serde(default)]
    pub network_aliases: Vec<String>,
    /// Caller-chosen id (64 lowercase hex digits; the scheduler's): a create with an
    /// id that exists already answers with that container instead of making another.
    #[serde(default)]
    pub id: Option<String>,
}

/// One `--ulimit`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Ulimit {
    /// `nofile`, `nproc`, `core`, … (without the `RLIMIT_` prefix).
    pub name: String,
    pub soft: u64,
    pub hard: u64,
}

/// Reply to `create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ContainerCreated {
    pub id: String,
    pub name: String,
    pub image_digest: String,
}

/// A request naming one container (by full id, unique id prefix, or name).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContainerRef {
    pub id: String,
}

/// `wait`: blocks until the container is not running, then answers its
/// [`ContainerExit`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContainerWaitRequest {
    /// Full id, unique id prefix, or name.
    pub id: String,
    /// Give up after this many milliseconds with `unavailable` (the container keeps
    /// running); absent, wait as long as the container runs.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// Reply to `start`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ContainerStarted {
    pub id: String,
    /// Host pid of the container's process.
    pub pid: i32,
}

/// `kill`: send a signal to the container's process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContainerKillRequest {
    pub id: String,
    /// Name (`TERM`, `SIGTERM`) or number; default SIGKILL.
    #[serde(default)]
    pub signal: Option<String>,
}

/// `stop`: the stop signal, up to `timeout_seconds` of grace, then SIGKILL.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContainerStopRequest {
    pub id: String,
    /// Default: the container's stop timeout (10 s unless set at create).
    #[serde(default)]
    pub timeout_seconds: Option<u32>,
}

/// `remove`: delete a container, its writable layer and its log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContainerRemoveRequest {
    pub id: String,
    /// Kill it first if it runs.
    #[serde(default)]
    pub force: bool,
    /// Also remove its anonymous volumes (`rm -v`).
    #[serde(default)]
    pub volumes: bool,
}

/// Reply to `kill`, `stop` and `remove`: the full id acted on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ContainerDone {
    pub id: String,
}

/// How a container's process ended (reply to `wait`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ContainerExit {
    pub id: String,
    /// 128+signal when killed by a signal; 126/127 when the command could not be run.
    pub exit_code: i32,
    pub oom_killed: bool,
    /// Why it did not run, when it did not.
    pub error: Option<String>,
}

/// Reply to `inspect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ContainerInspect {
    pub id: String,
    pub name: String,
    pub image: String,
    pub image_digest: String,
    pub node_id: String,
    pub status: ContainerStatus,
    /// Host pid while running, else 0.
    pub pid: i32,
    pub exit_code: Option<i32>,
    pub oom_killed: bool,
    pub error: Option<String>,
    /// RFC 3339 times.
    pub created: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// The process as run.
    pub command: Vec<String>,
    pub env: Vec<String>,
    pub workdir: String,
    pub uid: u32,
    pub gid: u32,
    pub hostname: String,
    /// What was asked at create.
    pub config: ContainerCreateRequest,
    /// Node paths: the merged root, the CRI log.
    pub rootfs: String,
    pub log_path: String,
    /// Times the node restarted it under its restart policy.
    pub restart_count: u32,
    /// Why the log is not being written (a full disk), while that lasts.
    #[serde(default)]
    pub log_error: Option<String>,
    /// Networks, addresses, gateway, MAC and published ports.
    #[serde(default)]
    pub network: crate::messages::network::ContainerNetwork,
}

/// `logs`: a page of the container's CRI log (`<RFC3339Nano> stdout|stderr F|P <text>`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogsRequest {
    pub id: String,
    /// Start at this byte offset of the log (for paging); overrides `tail`.
    #[serde(default)]
    pub from_offset: Option<u64>,
    /// Only the last N lines.
    #[serde(default)]
    pub tail: Option<u64>,
    /// Only records at or after this time (Unix nanoseconds), `--since`.
    #[serde(default)]
    pub since_ns: Option<i64>,
}

/// Reply to `logs`: whole CRI lines from `start` to `end` (byte offsets in the log).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LogsPage {
    pub id: String,
    pub start: u64,
    pub end: u64,
    #[serde(with = "crate::b64")]
    #[schemars(with = "String")]
    pub data: Vec<u8>,
    /// More complete lines follow `end` already: ask again from `end`.
    pub more: bool,
    /// The container still runs: live lines will follow on `berth.v1.logs.<id>`.
    pub running: bool,
}

/// One message on `berth.v1.logs.<id>` (bincode), and the same on
/// `berth.v1.logs_json.<id>` (JSON, `data` a base64 string): whole CRI lines
/// (`<RFC 3339 time> stdout|stderr F|P <text>\n`) starting at byte `offset` of the
/// container's log. The last one of a run has `eof` set (and may carry no data).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LogChunk {
    pub id: String,
    pub offset: u64,
    #[serde(with = "crate::b64")]
    #[schemars(with = "String")]
    pub data: Vec<u8>,
    pub eof: bool,
}

/// Body of `berth.v1.events.container.<id>.<action>` (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ContainerEvent {
    /// `create`, `start`, `die`, `stop`, `kill`, `destroy`, `oom`, `exec_start`,
    /// `exec_die`, `attach`.
    pub action: String,
    pub id: String,
    pub name: String,
    pub image: String,
    pub node_id: String,
    /// `die`: the exit code.
    pub exit_code: Option<i32>,
    /// `kill`: the signal sent.
    pub signal: Option<String>,
    pub oom_killed: bool,
    /// `exec_start`/`exec_die`: the exec session and its command.
    #[serde(default)]
    pub exec_id: Option<String>,
    #[serde(default)]
    pub command: Option<String>,
    /// RFC 3339.
    pub time: String,
}

/// `exec`: run another process in a running container's namespaces and cgroup. Its
/// output is published on `output` (a subject the caller subscribed to, under its inbox)
/// as [`ExecOutput`] messages, the last with `eof`; the reply comes after that.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    pub id: String,
    pub cmd: Vec<String>,
    /// `KEY=value` on top of the container's env.
    #[serde(default)]
    pub env: Vec<String>,
    /// `user[:group]`; default the container's user.
    #[serde(default)]
    pub user: Option<String>,
    /// Default the container's working directory.
    #[serde(default)]
    pub workdir: Option<String>,
    /// Where the output goes.
    pub output: String,
    /// `-i`: the process reads [`StdinRequest`]s sent for `exec_id` (else /dev/null).
    #[serde(default)]
    pub open_stdin: bool,
    /// `-t`: the process gets a pseudo-terminal (its output comes as stdout).
    #[serde(default)]
    pub tty: bool,
    #[serde(default)]
    pub console_size: Option<ConsoleSize>,
    /// Client-chosen session id (a subject token) that stdin requests name; required with
    /// `open_stdin` or `tty`.
    #[serde(default)]
    pub exec_id: Option<String>,
    /// Wait at most this long for the process to end, then reply `unavailable`. The
    /// process keeps running: its output still goes to `output` (ending with `eof`) and
    /// its exit code comes as the `exec_die` event. Default: wait until it ends.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSize {
    pub rows: u16,
    pub cols: u16,
}

/// Largest `StdinPayload::Data` the executor takes: one atomic pipe write on the node
/// (PIPE_BUF less a frame header), far below the NATS payload limit.
pub const MAX_STDIN_CHUNK: usize = 4000;

/// What one `stdin` request carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StdinPayload {
    /// Bytes for the process's stdin (at most [`MAX_STDIN_CHUNK`]).
    Data(
        #[serde(with = "crate::b64")]
        #[schemars(with = "String")]
        Vec<u8>,
    ),
    /// End of input: the process's stdin is closed (on a terminal: the EOF character).
    Eof,
    /// The client's terminal changed size.
    Resize(ConsoleSize),
}

/// `stdin`: input for a container created with `-i`/`-t` (`exec_id` empty) or for an
/// exec session. A client sends them one at a time, each after the previous reply, so
/// they arrive in order; `seq` (counting from 1 per `client`) lets the node drop a
/// repeat of one whose reply was lost. The container's monitor owns its stdin, so input
/// keeps flowing when the executor restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StdinRequest {
    /// Container id or name.
    pub id: String,
    /// The exec session, for an exec's stdin.
    #[serde(default)]
    pub exec_id: Option<String>,
    /// Random per attached client, so two clients' sequence numbers do not collide.
    pub client: u64,
    pub seq: u64,
    pub payload: StdinPayload,
}

/// Reply to `stdin`: the request with this `seq` was delivered (or was a repeat).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StdinAck {
    pub seq: u64,
}

/// `volume_create`: a named volume on this node (idempotent: an existing one is returned).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeCreateRequest {
    /// Generated (64 hex digits) when empty.
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A volume (reply to `volume_create` and `volume_inspect`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VolumeInfo {
    pub name: String,
    pub node_id: String,
    /// `local`: a directory under the node's data dir.
    pub driver: String,
    /// Host path of the volume's data.
    pub mountpoint: String,
    /// RFC 3339.
    pub created: String,
    pub labels: BTreeMap<String, String>,
    /// Made for one container (`-v /ctr`, an image VOLUME): removed with it by `rm -v`/`--rm`.
    pub anonymous: bool,
    /// Ids of the containers that use it.
    pub containers: Vec<String>,
}

/// `volume_list`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeListRequest {
    /// Only volumes with every one of these labels (`key` or `key=value`).
    #[serde(default)]
    pub labels: Vec<String>,
}

/// `volume_inspect`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeRef {
    pub name: String,
}

/// `volume_remove`: refused while a container uses the volume.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeRemoveRequest {
    pub name: String,
    /// A missing volume is not an error.
    #[serde(default)]
    pub force: bool,
}

/// Reply to `volume_list`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VolumeList {
    pub node_id: String,
    pub volumes: Vec<VolumeInfo>,
}

/// One piece of an exec'd process's output, in the `exec` request's encoding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ExecOutput {
    pub stderr: bool,
    #[serde(with = "crate::b64")]
    #[schemars(with = "String")]
    pub data: Vec<u8>,
    pub eof: bool,
}

/// Reply to `exec`: how the process ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ExecExit {
    /// 128+signal when killed; 126/127 when it could not be run.
    pub exit_code: i32,
    pub error: Option<String>,
}

/// Reply to `stats`: the container's cgroup counters at one instant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ContainerStats {
    pub id: String,
    pub name: String,
    /// Sample time, Unix nanoseconds (for rates between two samples).
    pub read_ns: u64,
    pub cpu_usage_ns: u64,
    pub online_cpus: u32,
    pub memory_usage: u64,
    pub memory_limit: Option<u64>,
    pub pids: u64,
}

/// A caller-chosen container id: 64 lowercase hexadecimal digits.
pub fn check_container_id(id: &str) -> Result<(), String> {
    if id.len() == 64
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(format!(
            "container id {id:?} must be 64 lowercase hexadecimal digits"
        ))
    }
}

/// Docker's rule for container names: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most 128.
pub fn check_container_name(name: &str) -> Result<(), String> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Encoding;

    #[test]
    fn create_request_takes_json_with_only_the_image() {
        let request: ContainerCreateRequest = Encoding::Json
            .decode(br#"{"image":"busybox"}"#)
            .expect("decodes");
        assert_eq!(request.image, "busybox");
        assert_eq!(request.network, NetworkMode::Bridge);
        assert_eq!(request.restart, RestartPolicy::No);
    }

    #[test]
    fn create_request_round_trips_in_bincode() {
        let request = ContainerCreateRequest {
            image: "busybox".into(),
            entrypoint: Some(vec![]),
            binds: vec![BindMount {
                source: "/a".into(),
                destination: "/b".into(),
                read_only: true,
            }],
            restart: RestartPolicy::OnFailure { max_retries: 2 },
            ..Default::default()
        };
        let bytes = Encoding::Bincode.encode(&request).expect("encodes");
        let back: ContainerCreateRequest = Encoding::Bincode.decode(&bytes).expect("decodes");
        assert_eq!(back, request);
    }

    #[test]
    fn stdin_requests_round_trip_in_both_encodings() {
        for payload in [
            StdinPayload::Data(b"hi\n".to_vec()),
            StdinPayload::Eof,
            StdinPayload::Resize(ConsoleSize { rows: 24, cols: 80 }),
        ] {
            let request = StdinRequest {
                id: "abc".into(),
                exec_id: Some("e1".into()),
                client: 7,
                seq: 1,
                payload,
            };
            for encoding in [Encoding::Bincode, Encoding::Json] {
                let bytes = encoding.encode(&request).expect("encodes");
                let back: StdinRequest = encoding.decode(&bytes).expect("decodes");
                assert_eq!(back, request);
            }
        }
        let json: StdinRequest = Encoding::Json
            .decode(br#"{"id":"abc","client":1,"seq":2,"payload":"eof"}"#)
            .expect("decodes");
        assert_eq!((json.exec_id, json.payload), (None, StdinPayload::Eof));
    }
}
