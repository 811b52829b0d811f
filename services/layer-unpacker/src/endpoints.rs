//! The unpacker's bus verbs over the node's [`SnapshotStore`]. The store blocks (disk
//! work), so every call runs on the blocking pool.

use crate::native::{tree_key, NativeTrees, TreeMeta};
use crate::snapshot::{SnapshotMeta, SnapshotStore, StoreError};
use berth_proto::messages::unpack::{
    SnapshotEvent, SnapshotInfo, SnapshotList, SnapshotListRequest, SnapshotPruneRequest,
    SnapshotReleaseRequest, SnapshotRemoveRequest, SnapshotsReleased, SnapshotsRemoved,
};
use berth_proto::subjects::EventKind;
use berth_proto::ErrorEnvelope;
use std::sync::Arc;

/// What every verb needs; cheap to clone.
#[derive(Clone)]
pub struct Unpacker {
    pub node_id: Arc<str>,
    pub store: Arc<SnapshotStore>,
    /// Set when the node uses the copy-based snapshotter (no overlayfs).
    pub native: Option<Arc<NativeTrees>>,
    /// For events.
    pub client: async_nats::Client,
}

/// The wire form of a snapshot's metadata.
pub fn snapshot_info(meta: &SnapshotMeta) -> SnapshotInfo {
    SnapshotInfo {
        id: meta.id.to_string(),
        chain_id: meta.chain_id.clone(),
        diff_id: meta.diff_id.clone(),
        digest: meta.digest.clone(),
        parent: meta.parent.clone(),
        size: meta.size,
        users: meta.users.iter().cloned().collect(),
        created: meta.created,
    }
}

/// The wire form of a native tree: one "snapshot" holding the whole image.
pub fn tree_info(meta: &TreeMeta) -> SnapshotInfo {
    let key = tree_key(&meta.chain_id);
    SnapshotInfo {
        id: format!("native-{}", &key[..key.len().min(12)]),
        chain_id: meta.chain_id.clone(),
        diff_id: meta.diff_id.clone(),
        digest: meta.digest.clone(),
        parent: None,
        size: meta.size,
        users: meta.users.iter().cloned().collect(),
        created: meta.created,
    }
}

/// Maps a store failure to the envelope kind a caller can act on.
pub fn store_error(err: StoreError) -> ErrorEnvelope {
    match &err {
        StoreError::NotFound(_) => ErrorEnvelope::not_found(err.to_string()),
        StoreError::InUse { .. } => ErrorEnvelope::conflict(err.to_string()),
        StoreError::Digest(_) | StoreError::Layer(_) | StoreError::OptionsTooLong { .. } => {
            ErrorEnvelope::invalid(err.to_string())
        }
        StoreError::Blob { .. } => ErrorEnvelope::unavailable(err.to_string()),
        _ => ErrorEnvelope::internal(err.to_string()),
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ErrorEnvelope> + Send + 'static,
) -> Result<T, ErrorEnvelope> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| ErrorEnvelope::internal(format!("unpacker task failed: {err}")))?
}

fn removed(node_id: &str, metas: Vec<SnapshotMeta>) -> SnapshotsRemoved {
    let removed: Vec<SnapshotInfo> = metas.iter().map(snapshot_info).collect();
    SnapshotsRemoved {
        node_id: node_id.to_string(),
        reclaimed_bytes: removed.iter().map(|s| s.size).sum(),
        removed,
    }
}

impl Unpacker {
    /// Publishes `berth.v1.events.snapshot.<chainID>.<action>`.
    pub async fn snapshot_event(&self, action: &str, meta: &SnapshotMeta, image: Option<&str>) {
        let body = SnapshotEvent {
            action: action.to_string(),
            node_id: self.node_id.to_string(),
            chain_id: meta.chain_id.clone(),
            diff_id: meta.diff_id.clone(),
            digest: meta.digest.clone(),
            image: image.map(str::to_string),
            size: meta.size,
            time: time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
        };
        berth_bus::events::publish(
            &self.client,
            EventKind::Snapshot,
            &meta.chain_id,
            action,
            &body,
        )
        .await;
    }

    /// `list`
    pub async fn list(&self, request: SnapshotListRequest) -> Result<SnapshotList, ErrorEnvelope> {
        let this = self.clone();
        blocking(move || {
            let snapshots: Vec<SnapshotMeta> = match &request.chain_id {
                Some(chain_id) => this.store.get(chain_id).into_iter().collect(),
                None => this.store.list(),
            };
            let trees: Vec<TreeMeta> = match (&this.native, &request.chain_id) {
                (None, _) => Vec::new(),
                (Some(native), Some(chain_id)) => native.get(chain_id).into_iter().collect(),
                (Some(native), None) => native.list(),
            };
            Ok(SnapshotList {
                node_id: this.node_id.to_string(),
                snapshots: snapshots
                    .iter()
                    .map(snapshot_info)
                    .chain(trees.iter().map(tree_info))
                    .collect(),
            })
        })
        .await
    }

    /// `remove`
    pub async fn remove(
        &self,
        request: SnapshotRemoveRequest,
    ) -> Result<SnapshotsRemoved, ErrorEnvelope> {
        let this = self.clone();
        let (layer, tree) =
            blocking(
                move || match this.store.remove(&request.chain_id, request.force) {
                    Ok(meta) => Ok((Some(meta), None)),
                    Err(StoreError::NotFound(_)) if this.native.is_some() => {
                        let native = this.native.as_ref().map(Arc::clone);
                        let tree = native
                            .map(|n| n.remove(&request.chain_id, request.force))
                            .transpose()
                            .map_err(store_error)?;
                        Ok((None, tree))
                    }
                    Err(err) => Err(store_error(err)),
                },
            )
            .await?;
        if let Some(meta) = &layer {
            self.snapshot_event("remove", meta, None).await;
        }
        let mut reply = removed(&self.node_id, layer.into_iter().collect());
        if let Some(tree) = tree {
            reply.reclaimed_bytes += tree.size;
            reply.removed.push(tree_info(&tree));
        }
        Ok(reply)
    }

    /// Every user pinning a snapshot or native tree of this node.
    pub fn users(&self) -> std::collections::BTreeSet<String> {
        let mut users: std::collections::BTreeSet<String> = self
            .store
            .list()
            .into_iter()
            .flat_map(|meta| meta.users)
            .collect();
        if let Some(native) = &self.native {
            users.extend(native.list().into_iter().flat_map(|tree| tree.users));
        }
        users
    }

    /// `release`
    pub async fn release(
        &self,
        request: SnapshotReleaseRequest,
    ) -> Result<SnapshotsReleased, ErrorEnvelope> {
        if request.user.is_empty() {
            return Err(ErrorEnvelope::invalid("release needs a user"));
        }
        let this = self.clone();
        blocking(move || {
            let mut released = 0u32;
            for meta in this.store.list() {
                if meta.users.contains(&request.user) {
                    this.store
                        .remove_user(&meta.chain_id, &request.user)
                        .map_err(store_error)?;
                    released += 1;
                }
            }
            if let Some(native) = &this.native {
                for tree in native.list() {
                    if native
                        .remove_user(&tree.chain_id, &request.user)
                        .map_err(store_error)?
                    {
                        released += 1;
                    }
                }
            }
            Ok(SnapshotsReleased {
                node_id: this.node_id.to_string(),
                released,
            })
        })
        .await
    }

    /// `prune`
    pub async fn prune(
        &self,
        _request: SnapshotPruneRequest,
    ) -> Result<SnapshotsRemoved, ErrorEnvelope> {
        let this = self.clone();
        let (metas, trees) = blocking(move || {
            let metas = this.store.prune().map_err(store_error)?;
            let trees = match &this.native {
                Some(native) => native.prune().map_err(store_error)?,
                None => Vec::new(),
            };
            Ok((metas, trees))
        })
        .await?;
        for meta in &metas {
            self.snapshot_event("remove", meta, None).await;
        }
        let mut reply = removed(&self.node_id, metas);
        reply.reclaimed_bytes += trees.iter().map(|t| t.size).sum::<u64>();
        reply.removed.extend(trees.iter().map(tree_info));
        Ok(reply)
    }
}
