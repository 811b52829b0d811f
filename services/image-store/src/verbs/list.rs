//! `list`: every reference, plus untagged images.

use super::Verbs;
use berth_proto::messages::image::{ImageList, ImageListRequest};
use berth_proto::ErrorEnvelope;

impl Verbs {
    /// Handles `list`.
    pub async fn list(&self, request: ImageListRequest) -> Result<ImageList, ErrorEnvelope> {
        Ok(self
            .store
            .list(request.repository_prefix.as_deref())
            .await?)
    }
}
