//! `berth.v1.exec.<node>.*`

use serde::{Deserialize, Serialize};

/// `list`: containers on this node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerListRequest {
    /// Include containers that are not running (`ps -a`).
    #[serde(default)]
    pub all: bool,
}

/// Lifecycle state of a container, as Docker names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerStatus {
    Created,
    Running,
    Paused,
    Restarting,
    Exited,
    Dead,
}

/// One row of `berth ps`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSummary {
    pub id: String,
    pub name: String,
    pub image: String,
    pub node_id: String,
    pub status: ContainerStatus,
    pub exit_code: Option<i32>,
    /// RFC 3339.
    pub created: String,
}

/// Reply to `list`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerList {
    pub node_id: String,
    pub containers: Vec<ContainerSummary>,
}
