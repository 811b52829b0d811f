//! `tag`: point a reference at an image.

use super::{actions, Verbs};
use berth_proto::messages::image::{ImageTagReply, ImageTagRequest};
use berth_proto::ErrorEnvelope;

impl Verbs {
    /// Handles `tag`.
    pub async fn tag(&self, request: ImageTagRequest) -> Result<ImageTagReply, ErrorEnvelope> {
        let (resolved, reference) = self.store.tag(&request.source, &request.target).await?;
        let digest = resolved.record.digest.to_string();
        self.event(actions::TAG, &digest, Some(&reference)).await;
        Ok(ImageTagReply { reference, digest })
    }
}
