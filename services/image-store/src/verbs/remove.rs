//! `remove` (`berth rmi`) and `prune`.

use super::{actions, Verbs};
use crate::store::backend::Backend;
use berth_proto::messages::image::{ImagePruneRequest, ImageRemoveReply, ImageRemoveRequest};
use berth_proto::subjects::transfer;
use berth_proto::ErrorEnvelope;

/// Transfer objects older than this are leftovers of clients that died mid-transfer.
const TRANSFER_MAX_AGE_SECS: u64 = 24 * 3600;

impl Verbs {
    /// Handles `remove`.
    pub async fn remove(
        &self,
        request: ImageRemoveRequest,
    ) -> Result<ImageRemoveReply, ErrorEnvelope> {
        let (digest, reply) = self.store.remove(&request.name, request.force).await?;
        self.announce(&reply, Some(&digest.to_string())).await;
        Ok(reply)
    }

    /// Handles `prune`.
    pub async fn prune(
        &self,
        request: ImagePruneRequest,
    ) -> Result<ImageRemoveReply, ErrorEnvelope> {
        if request.all {
            return Err(ErrorEnvelope::invalid(
                "prune --all is not supported yet (no container tracking)",
            ));
        }
        let mut reply = self.store.prune().await?;
        self.prune_transfers(&mut reply).await;
        self.announce(&reply, None).await;
        Ok(reply)
    }

    async fn announce(&self, reply: &ImageRemoveReply, digest: Option<&str>) {
        if let Some(digest) = digest {
            for reference in &reply.untagged {
                self.event(actions::UNTAG, digest, Some(reference)).await;
            }
        }
        for digest in &reply.deleted {
            self.event(actions::DELETE, digest, None).await;
        }
    }

    async fn prune_transfers(&self, reply: &mut ImageRemoveReply) {
        let Ok(blobs) = self.store.backend().blob_list().await else {
            return;
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        for blob in blobs {
            let old = blob
                .modified
                .is_some_and(|m| now.saturating_sub(m) > TRANSFER_MAX_AGE_SECS);
            if blob.name.starts_with(transfer::PREFIX) && old {
                self.delete_transfer(&blob.name).await;
                reply.space_reclaimed += blob.size;
            }
        }
    }
}
