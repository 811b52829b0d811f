//! Node records (`berth-nodes` KV, key = node id) and `berth.v1.sched.nodes`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Whether a node takes new placements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    Ready,
    Draining,
    Lost,
}

/// Quantities the scheduler places against.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Resources {
    /// CPU in millicores (1000 = one core).
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub pids: u64,
}

/// What an executor publishes about its node, once a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NodeRecord {
    pub node_id: String,
    pub state: NodeState,
    pub capacity: Resources,
    pub allocated: Resources,
    pub labels: BTreeMap<String, String>,
    /// chainIDs unpacked on the node (image locality for placement).
    pub chain_ids: Vec<String>,
    /// Containers the executor runs now.
    pub containers: u32,
    /// Unix milliseconds of the last heartbeat.
    pub last_heartbeat_ms: u64,
    /// Version of the executor that wrote the record.
    pub executor_version: String,
    /// Host ports its running containers publish.
    #[serde(default)]
    pub ports: Vec<crate::messages::network::PortBinding>,
    /// os/architecture[/variant] in OCI's names; `None` from an executor that predates it.
    #[serde(default)]
    pub platform: Option<crate::messages::image::ImagePlatform>,
    /// Named volumes on the node: they hold data only there, so placement keeps a
    /// container that mounts one on the node that has it.
    #[serde(default)]
    pub volumes: Vec<String>,
    /// User networks on the node (names and ids): a container on one is placed only
    /// where it exists.
    #[serde(default)]
    pub networks: Vec<NodeNetwork>,
}

/// A user network as a node record names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NodeNetwork {
    pub id: String,
    pub name: String,
}

impl NodeNetwork {
    /// Whether `--network reference` means this network: its name, its id, or a prefix
    /// of at least 4 characters of its id (as the executor resolves it).
    pub fn answers_to(&self, reference: &str) -> bool {
        self.name == reference
            || self.id == reference
            || (reference.len() >= 4 && self.id.starts_with(reference))
    }
}

/// `nodes`: every node record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeListRequest {
    /// Only nodes in this state.
    #[serde(default)]
    pub state: Option<NodeState>,
}

/// Reply to `nodes`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NodeList {
    pub nodes: Vec<NodeRecord>,
}
