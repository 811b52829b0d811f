//! `berth.v1.unpack.<node>.*`

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `prepare`: make every layer of an image available on this node as overlay lowerdirs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PrepareRequest {
    /// Image reference or manifest digest, resolved by the image-store.
    pub image: String,
    /// Pin the snapshots for this user (a container id, or `image:<digest>` for a
    /// pre-warm pin) in the same step that finds them, so a concurrent prune cannot win.
    #[serde(default)]
    pub user: Option<String>,
    /// Subject to publish [`PrepareProgress`] on while the work goes on.
    #[serde(default)]
    pub progress: Option<String>,
}

/// Published on a prepare's progress subject about once a second while it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PrepareProgress {
    pub image: String,
    pub layers: u32,
    pub elapsed_ms: u64,
}

/// Reply to `prepare`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PrepareReply {
    pub node_id: String,
    /// Manifest digest the reference resolved to.
    pub image_digest: String,
    /// Absolute snapshot `fs` directories, top layer first (overlay `lowerdir` order).
    pub lowerdirs: Vec<String>,
    /// The image's snapshots, base layer first.
    pub snapshots: Vec<SnapshotInfo>,
    /// Layers unpacked by this request; the rest were already on the node.
    pub unpacked: u32,
    pub reused: u32,
}

/// `list`: snapshots on this node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotListRequest {
    /// Only the snapshot with this chainID.
    #[serde(default)]
    pub chain_id: Option<String>,
}

/// One unpacked layer on a node's disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SnapshotInfo {
    /// Short directory name under `snapshots/`.
    pub id: String,
    pub chain_id: String,
    pub diff_id: String,
    /// Blob digest the layer was unpacked from.
    pub digest: String,
    /// chainID of the layer below, `None` for a base layer.
    pub parent: Option<String>,
    /// Bytes of regular files.
    pub size: u64,
    /// Containers and image pins using it; `prune` keeps it while any remain.
    pub users: Vec<String>,
    /// Unix seconds.
    pub created: i64,
}

/// Reply to `list`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SnapshotList {
    pub node_id: String,
    pub snapshots: Vec<SnapshotInfo>,
}

/// `remove`: delete one snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRemoveRequest {
    pub chain_id: String,
    /// Remove even when users remain.
    #[serde(default)]
    pub force: bool,
}

/// `remove` and `prune` reply: what was deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SnapshotsRemoved {
    pub node_id: String,
    pub removed: Vec<SnapshotInfo>,
    pub reclaimed_bytes: u64,
}

/// `prune`: delete every snapshot that no container and no image pin uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotPruneRequest {}

/// Body of `berth.v1.events.snapshot.<chainID hex>.<action>` (JSON): `unpack` when a
/// layer was unpacked on a node, `remove` when a snapshot was deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SnapshotEvent {
    pub action: String,
    pub node_id: String,
    pub chain_id: String,
    pub diff_id: String,
    pub digest: String,
    /// The image whose prepare unpacked it, for `unpack`.
    pub image: Option<String>,
    pub size: u64,
    /// RFC 3339.
    pub time: String,
}

/// The snapshot user that `berth image unpack` pins an image's layers with. It names
/// the manifest digest, so that the pin goes when that image is deleted.
pub fn image_pin(manifest_digest: &str) -> String {
    format!("{IMAGE_PIN_PREFIX}{manifest_digest}")
}

/// Prefix of the users [`image_pin`] makes.
pub const IMAGE_PIN_PREFIX: &str = "image:";

/// `release`: drop one user's pin (a removed container, an unpinned image) from every
/// snapshot it holds, so that `prune` can reclaim them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotReleaseRequest {
    pub user: String,
}

/// Reply to `release`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SnapshotsReleased {
    pub node_id: String,
    /// Snapshots (and native trees) the user was removed from.
    pub released: u32,
}
