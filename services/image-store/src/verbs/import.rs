//! `import`: a one-layer image from a root filesystem tarball (`docker import`).

use super::{actions, blocking, check_transfer_name, invalid, requested_platform, Verbs};
use crate::bridge::pump;
use crate::formats::{import_rootfs, ImportOptions, Reference};
use berth_proto::messages::image::{ImageImportReply, ImageImportRequest};
use berth_proto::ErrorEnvelope;
use std::sync::Arc;

impl Verbs {
    /// Handles `import`; the upload is deleted whatever the outcome.
    pub async fn import(
        &self,
        request: ImageImportRequest,
    ) -> Result<ImageImportReply, ErrorEnvelope> {
        check_transfer_name(&request.upload)?;
        let outcome = self.import_upload(&request).await;
        self.delete_transfer(&request.upload).await;
        outcome
    }

    async fn import_upload(
        &self,
        request: &ImageImportRequest,
    ) -> Result<ImageImportReply, ErrorEnvelope> {
        let reference = request
            .reference
            .as_deref()
            .map(Reference::parse)
            .transpose()
            .map_err(invalid)?;
        if reference.as_ref().is_some_and(|r| r.digest().is_some()) {
            return Err(ErrorEnvelope::invalid(
                "an imported image cannot be named by digest",
            ));
        }
        let platform = requested_platform(request.platform.as_deref())?;
        let (work, upload) = self.fetch_upload(&request.upload).await?;
        let options = ImportOptions {
            changes: request.changes.clone(),
            platform,
            created: None,
            message: request.message.clone(),
            source_name: request
                .source_name
                .clone()
                .unwrap_or_else(|| "-".to_string()),
        };
        let spool = work.path().to_path_buf();
        let imported = blocking(move || {
            let file = std::fs::File::open(&upload)
                .map_err(|err| ErrorEnvelope::internal(format!("cannot reopen upload: {err}")))?;
            import_rootfs(file, reference, &options, &spool).map_err(invalid)
        })
        .await?;
        let imported = Arc::new(imported);
        let image = imported.image.clone();
        let stored = self
            .store_image(&image, actions::IMPORT, |_| {
                let imported = Arc::clone(&imported);
                pump(move || imported.open_layer())
            })
            .await?;
        Ok(ImageImportReply { image: stored })
    }
}
