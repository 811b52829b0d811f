//! `berth.v1.sched.*`, and the records the scheduler keeps: container records in
//! `berth-containers` (key = container id) and the scheduler-owned keys of `berth-nodes`
//! (`<node>.admin`, `<node>.alloc`). Every key has one kind of writer, so a heartbeat
//! never overwrites an allocation and two schedulers settle on a key by its revision.

use crate::messages::exec::{ContainerCreateRequest, RestartPolicy};
use crate::messages::network::PortBinding;
use crate::messages::node::{NodeRecord, NodeState, Resources};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Suffix of the `berth-nodes` key an operator's drain/activate writes (via a scheduler).
pub const ADMIN_KEY_SUFFIX: &str = ".admin";
/// Suffix of the `berth-nodes` key schedulers reserve resources in (compare-and-set).
pub const ALLOC_KEY_SUFFIX: &str = ".alloc";
/// Prefix of the `berth-containers` keys that reserve a container name fleet-wide.
pub const NAME_KEY_PREFIX: &str = "name.";

/// `<node>.admin`
pub fn admin_key(node: &str) -> String {
    format!("{node}{ADMIN_KEY_SUFFIX}")
}

/// `<node>.alloc`
pub fn alloc_key(node: &str) -> String {
    format!("{node}{ALLOC_KEY_SUFFIX}")
}

/// `name.<name>`
pub fn name_key(name: &str) -> String {
    format!("{NAME_KEY_PREFIX}{name}")
}

/// Prefix of the `berth-containers` keys that remember a container removed while its
/// node was lost (a tombstone): when the node is back, the container goes there too.
pub const GONE_KEY_PREFIX: &str = "gone.";

/// `gone.<id>`
pub fn gone_key(id: &str) -> String {
    format!("{GONE_KEY_PREFIX}{id}")
}

/// `gone.<id>`: a container `rm`ed while its node was lost. Its record is dropped at
/// once; the container is removed from `node_id` (force) once that node is back, and
/// then the tombstone goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Tombstone {
    pub node_id: String,
    /// `rm -v`: its anonymous volumes too.
    #[serde(default)]
    pub volumes: bool,
    /// Unix ms of the `rm`.
    pub removed_ms: u64,
}

/// `run`: place a container, create it on the chosen node and (unless `no_start`) start it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SchedRunRequest {
    /// Client-chosen id (64 lowercase hex digits): the same id twice is the same
    /// container, so a retried request never places twice. Made up when empty.
    #[serde(default)]
    pub id: Option<String>,
    pub create: ContainerCreateRequest,
    /// Create only (`berth create`).
    #[serde(default)]
    pub no_start: bool,
    /// `node.labels.KEY==VALUE` or `node.labels.KEY!=VALUE`, all must hold.
    #[serde(default)]
    pub constraints: Vec<String>,
    /// `--node`: only this node.
    #[serde(default)]
    pub node: Option<String>,
    /// How long the request may wait, pending, for a node with room (milliseconds);
    /// default the scheduler's `pending_timeout_ms`. When it passes the record is dropped.
    #[serde(default)]
    pub wait_timeout_ms: Option<u64>,
}

/// Reply to `run`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SchedRunReply {
    pub id: String,
    pub name: String,
    pub node_id: String,
    pub image_digest: String,
    /// Host pid of the process, 0 when not started.
    pub pid: i32,
    /// Ports published on the node.
    pub ports: Vec<PortBinding>,
}

/// Where a container is in its life, as the scheduler sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ContainerPhase {
    /// No node has room (yet).
    Pending,
    /// Reserved on a node; create/start sent.
    Scheduled,
    Created,
    Running,
    Exited,
    /// Its node was lost and it has no restart policy (not re-placed).
    Lost,
}

impl ContainerPhase {
    /// Lowercase name, as `ps` shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerPhase::Pending => "pending",
            ContainerPhase::Scheduled => "scheduled",
            ContainerPhase::Created => "created",
            ContainerPhase::Running => "running",
            ContainerPhase::Exited => "exited",
            ContainerPhase::Lost => "lost",
        }
    }
}

/// What was asked: kept as long as the container exists, re-used to re-place it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DesiredContainer {
    pub create: ContainerCreateRequest,
    /// Start it once created.
    pub start: bool,
    pub constraints: Vec<String>,
    pub pin: Option<String>,
    /// What placement reserves (from `--cpus`, `--memory`, `--pids-limit`).
    pub resources: Resources,
    /// Manifest digest the image resolved to at `run`.
    pub image_digest: String,
    /// The image's layers (chainID, bytes) for locality when it is re-placed.
    pub layers: Vec<(String, u64)>,
    /// The image config's os/architecture[/variant]: only nodes of that platform take it.
    #[serde(default)]
    pub platform: Option<crate::messages::image::ImagePlatform>,
    /// Unix ms after which a pending record is given up.
    pub pending_deadline_ms: u64,
    /// Stopped (or killed) by the user through the scheduler, not started since: as
    /// Docker remembers an explicit stop, such a container is not re-placed when its
    /// node is lost or drained, whatever its restart policy.
    #[serde(default)]
    pub stopped: bool,
}

/// What was last seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ObservedContainer {
    pub phase: ContainerPhase,
    pub node_id: Option<String>,
    pub exit_code: Option<i32>,
    pub ports: Vec<PortBinding>,
    /// Why the last placement or dispatch failed.
    pub error: Option<String>,
    /// How many times it was placed (1 for the first node).
    pub placements: u32,
    /// Unix ms of the last change.
    pub updated_ms: u64,
    /// `BERTH_EVENTS` sequence of the last container event applied: an event at or below
    /// it arrived late (redelivered, or handled by another instance) and is ignored.
    #[serde(default)]
    pub event_seq: u64,
}

/// One container's record in `berth-containers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ContainerRecord {
    pub id: String,
    pub name: String,
    /// Unix ms of the `run`.
    pub created_ms: u64,
    pub desired: DesiredContainer,
    pub observed: ObservedContainer,
}

impl ContainerRecord {
    /// The restart policy asked at `run`.
    pub fn restart(&self) -> RestartPolicy {
        self.desired.create.restart
    }
}

/// `<node>.alloc`: what schedulers reserved on a node, per container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NodeAlloc {
    pub allocated: Resources,
    /// Container id → (its reservation, unix ms it was made).
    pub containers: BTreeMap<String, (Resources, u64)>,
}

/// `<node>.admin`: the operator's wish for a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NodeAdmin {
    /// `ready` or `draining`.
    pub state: NodeState,
    pub updated_ms: u64,
}

/// `list`: every container record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SchedListRequest {
    /// Only those on this node.
    #[serde(default)]
    pub node: Option<String>,
}

/// Reply to `list`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SchedList {
    pub containers: Vec<ContainerRecord>,
    /// Ids removed while their node was lost, still to be removed there: a listing of
    /// that node may show them until then, `ps` must not.
    #[serde(default)]
    pub removed: Vec<String>,
}

/// A container by full id, unique id prefix or name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SchedRef {
    pub reference: String,
}

/// `stop` through the scheduler.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SchedStopRequest {
    pub reference: String,
    #[serde(default)]
    pub timeout_seconds: Option<u32>,
}

/// `kill` through the scheduler.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SchedKillRequest {
    pub reference: String,
    #[serde(default)]
    pub signal: Option<String>,
}

/// `remove`: the container on its node (if the node is there) and its record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SchedRemoveRequest {
    pub reference: String,
    #[serde(default)]
    pub force: bool,
    #[serde(default)]
    pub volumes: bool,
}

/// Reply to `stop`, `kill`, `remove`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SchedDone {
    pub id: String,
    pub node_id: Option<String>,
}

/// `node_inspect`, `drain`, `activate`: one node by id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeRef {
    pub node_id: String,
}

/// Reply to `node_inspect`, `drain` and `activate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NodeDetail {
    /// Heartbeat record with the effective state and the schedulers' allocation.
    pub node: NodeRecord,
    /// Containers reserved on it.
    pub containers: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Encoding;

    #[test]
    fn run_request_takes_json_with_only_the_image() {
        let request: SchedRunRequest = Encoding::Json
            .decode(br#"{"create":{"image":"busybox"}}"#)
            .expect("decodes");
        assert_eq!(request.create.image, "busybox");
        assert!(!request.no_start);
        assert!(request.constraints.is_empty());
    }

    #[test]
    fn keys_have_their_suffixes() {
        assert_eq!(admin_key("n1"), "n1.admin");
        assert_eq!(alloc_key("n1"), "n1.alloc");
        assert_eq!(name_key("web"), "name.web");
        assert_eq!(gone_key("abc"), "gone.abc");
    }
}
