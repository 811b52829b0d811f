//! `berth.v1.unpack.<node>.*`

use serde::{Deserialize, Serialize};

/// `list`: snapshots on this node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotListRequest {
    /// Only the snapshot with this chainID.
    #[serde(default)]
    pub chain_id: Option<String>,
}

/// One unpacked layer on a node's disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// Short directory name under `snapshots/`.
    pub id: String,
    pub chain_id: String,
    pub diff_id: String,
    /// chainID of the layer below, `None` for a base layer.
    pub parent: Option<String>,
    /// Bytes on disk.
    pub size: u64,
    /// Containers and image pins using it.
    pub users: u32,
}

/// Reply to `list`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotList {
    pub node_id: String,
    pub snapshots: Vec<SnapshotInfo>,
}
