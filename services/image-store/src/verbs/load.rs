//! `load`: every image of a docker-archive or OCI layout tar (`docker load`).

use super::{actions, blocking, check_transfer_name, invalid, requested_platform, Verbs};
use crate::bridge::pump;
use crate::formats::{load_archive, OciLoadOptions};
use berth_proto::messages::image::{ImageLoadReply, ImageLoadRequest};
use berth_proto::ErrorEnvelope;
use std::io;
use std::sync::Arc;

impl Verbs {
    /// Handles `load`; the upload is deleted whatever the outcome.
    pub async fn load(&self, request: ImageLoadRequest) -> Result<ImageLoadReply, ErrorEnvelope> {
        check_transfer_name(&request.upload)?;
        let outcome = self.load_upload(&request).await;
        self.delete_transfer(&request.upload).await;
        outcome
    }

    async fn load_upload(
        &self,
        request: &ImageLoadRequest,
    ) -> Result<ImageLoadReply, ErrorEnvelope> {
        let platform = requested_platform(request.platform.as_deref())?;
        let (work, upload) = self.fetch_upload(&request.upload).await?;
        let source = request
            .source_name
            .clone()
            .unwrap_or_else(|| "-".to_string());
        let spool = work.path().to_path_buf();
        let options = OciLoadOptions {
            platform,
            name: None,
        };
        // Everything is read and verified before anything is stored, so a broken
        // archive changes nothing.
        let archive = blocking(move || {
            let file = std::fs::File::open(&upload)
                .map_err(|err| ErrorEnvelope::internal(format!("cannot reopen upload: {err}")))?;
            load_archive(io::BufReader::new(file), &spool, &source, &options).map_err(invalid)
        })
        .await?;
        let archive = Arc::new(archive);
        let images: Vec<_> = archive.images().into_iter().cloned().collect();
        if images.is_empty() {
            return Err(ErrorEnvelope::invalid(format!(
                "{}: the archive holds no image for this platform",
                request.source_name.as_deref().unwrap_or("-")
            )));
        }
        let mut reply = ImageLoadReply::default();
        for image in &images {
            let stored = self
                .store_image(image, actions::LOAD, |digest| {
                    let archive = Arc::clone(&archive);
                    let digest = digest.clone();
                    pump(move || archive.open_blob(&digest).map_err(io::Error::other))
                })
                .await?;
            reply.images.push(stored);
        }
        Ok(reply)
    }
}
