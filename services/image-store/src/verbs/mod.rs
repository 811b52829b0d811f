//! The `berth.v1.image.*` verbs over the store: one file per verb. Each handler maps
//! errors to the wire envelope once and publishes events for what changed.

pub mod history;
pub mod import;
pub mod inspect;
pub mod list;
pub mod load;
pub mod pull;
pub mod push;
pub mod registry;
pub mod remove;
pub mod save;
pub mod tag;

use crate::formats::{Digest, ImageToStore};
use crate::store::backend::Backend;
use crate::store::jetstream::JetStreamBackend;
use crate::store::Store;
use berth_proto::messages::image::{ImageEvent, StoredImage};
use berth_proto::subjects::{transfer, EventKind};
use berth_proto::ErrorEnvelope;
use std::path::PathBuf;

/// Everything a verb needs; cheap to clone.
#[derive(Clone)]
pub struct Verbs {
    pub store: Store<JetStreamBackend>,
    pub client: async_nats::Client,
    /// Scratch space for spooled archives (under the data dir).
    pub spool: PathBuf,
}

/// Event actions (`berth.v1.events.image.<hex>.<action>`).
pub mod actions {
    pub const PULL: &str = "pull";
    pub const IMPORT: &str = "import";
    pub const LOAD: &str = "load";
    pub const TAG: &str = "tag";
    pub const UNTAG: &str = "untag";
    pub const DELETE: &str = "delete";
}

impl Verbs {
    /// Publishes an image event (JSON body). Events are best effort: a lost event
    /// must not fail a store operation that already happened.
    pub async fn event(&self, action: &str, digest: &str, reference: Option<&str>) {
        let body = ImageEvent {
            action: action.to_string(),
            digest: digest.to_string(),
            reference: reference.map(str::to_string),
            time: time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
        };
        berth_bus::events::publish(&self.client, EventKind::Image, digest, action, &body).await;
    }

    /// The blobs an image still lacks, then its record: what [`Self::store_image`] undoes
    /// with [`Self::abandon`] when it fails. Returns the commit and the blobs written.
    async fn write_and_commit<F>(
        &self,
        image: &ImageToStore,
        open: &mut F,
    ) -> Result<(crate::store::Committed, u32), ErrorEnvelope>
    where
        F: FnMut(&Digest) -> crate::bridge::PumpedReader,
    {
        let name = image.name();
        let mut written = 0u32;
        if self.store.put_config(image).await? {
            written += 1;
        }
        for (i, layer) in image.layers.iter().enumerate() {
            if self.store.has_blob(&layer.digest).await? {
                continue;
            }
            let subject = format!("layer {} ({}) of {name}", i + 1, layer.digest);
            if self
                .store
                .put_blob(&layer.digest, layer.size, open(&layer.digest), &subject)
                .await?
            {
                written += 1;
            }
        }
        let committed = self.store.commit(image).await?;
        Ok((committed, written))
    }

    /// Takes back the pins of an image that failed to store, deleting the blobs this
    /// attempt left that no image uses (a refused pull or load leaves nothing behind).
    pub async fn abandon(&self, image: &ImageToStore, blobs: &[Digest]) {
        match self.store.abandon(&image.manifest_digest, blobs).await {
            Ok(freed) => tracing::debug!(image = %image.name(), freed, "failed store cleaned up"),
            Err(err) => {
                tracing::warn!(image = %image.name(), error = %err, "cannot clean up a failed store; the pin grace will")
            }
        }
    }

    /// Copies an uploaded tarball (`transfer.upload.*`) into a fresh scratch dir; the
    /// dir (returned, removed on drop) holds the copy at the returned path.
    pub async fn fetch_upload(
        &self,
        upload: &str,
    ) -> Result<(tempfile::TempDir, PathBuf), ErrorEnvelope> {
        let work = self.work_dir()?;
        let path = work.path().join("upload");
        if !crate::bridge::fetch_to_file(self.store.backend(), upload, &path)
            .await
            .map_err(ErrorEnvelope::unavailable)?
        {
            return Err(ErrorEnvelope::not_found(format!(
                "upload {upload} not found (was it uploaded to the blob store?)"
            )));
        }
        Ok((work, path))
    }

    /// A scratch dir for one request, removed on drop.
    pub fn work_dir(&self) -> Result<tempfile::TempDir, ErrorEnvelope> {
        tempfile::Builder::new()
            .prefix("berth-req-")
            .tempdir_in(&self.spool)
            .map_err(|err| {
                ErrorEnvelope::internal(format!(
                    "cannot create a scratch dir in {}: {err}",
                    self.spool.display()
                ))
            })
    }

    /// Deletes a transfer object; failures are logged (prune removes leftovers).
    pub async fn delete_transfer(&self, name: &str) {
        if let Err(err) = self.store.backend().blob_delete(name).await {
            tracing::warn!(object = name, error = %err, "cannot delete transfer object");
        }
    }

    /// Stores an image whose blobs `open` can stream: pin, write missing blobs, commit,
    /// then announce it.
    pub async fn store_image<F>(
        &self,
        image: &ImageToStore,
        action: &str,
        mut open: F,
    ) -> Result<StoredImage, ErrorEnvelope>
    where
        F: FnMut(&Digest) -> crate::bridge::PumpedReader,
    {
        let record = crate::store::image_record(image)?;
        self.store
            .pin(&image.manifest_digest, &record.blobs())
            .await?;
        let stored = self.write_and_commit(image, &mut open).await;
        if stored.is_err() {
            self.abandon(image, &record.blobs()).await;
        }
        let (committed, written) = stored?;
        let name = image.name();
        let digest = image.manifest_digest.to_string();
        tracing::info!(image = %name, digest, blobs_written = written, "stored image");
        self.event(
            action,
            &digest,
            committed.references.first().map(String::as_str),
        )
        .await;
        for reference in &committed.references {
            self.event(actions::TAG, &digest, Some(reference)).await;
        }
        Ok(StoredImage {
            digest,
            config_digest: image.config_digest.to_string(),
            references: committed.references,
            blobs_written: written,
        })
    }
}

/// Refuses transfer names that are not transfer objects: a request must never make
/// the store read or delete a content blob as if it were an upload.
pub fn check_transfer_name(name: &str) -> Result<(), ErrorEnvelope> {
    if name.starts_with(transfer::PREFIX) && name.len() > transfer::PREFIX.len() {
        Ok(())
    } else {
        Err(ErrorEnvelope::invalid(format!(
            "transfer object {name:?} must start with {:?}",
            transfer::PREFIX
        )))
    }
}

/// A format error (bad input) as an `invalid` envelope; its text names image and blob.
pub fn invalid(err: impl std::fmt::Display) -> ErrorEnvelope {
    ErrorEnvelope::invalid(err.to_string())
}

/// Runs blocking format work off the async threads.
pub async fn blocking<T, F>(work: F) -> Result<T, ErrorEnvelope>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, ErrorEnvelope> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| ErrorEnvelope::internal(format!("worker failed: {err}")))?
}

/// The platform a request asks for (`os/arch[/variant]`), or this host's.
pub fn requested_platform(
    platform: Option<&str>,
) -> Result<crate::formats::PlatformSpec, ErrorEnvelope> {
    match platform {
        Some(p) => crate::formats::PlatformSpec::parse(p).map_err(invalid),
        None => Ok(crate::formats::PlatformSpec::host()),
    }
}
