//! The content-addressed, reference-counted image store over a [`Backend`].
//!
//! Write order for a new image (import, load, pull): [`Store::pin`] the blobs for the
//! manifest digest (adds it as a user of every blob, before any byte is written), then
//! [`Store::put_blob`] each missing blob (verified while written, visible only when
//! complete), then [`Store::commit`] (image record, then references, last). A crash
//! at any step leaves nothing visible that points at missing content; pins of a dead
//! import expire and are swept by [`Store::prune`].

pub mod backend;
pub mod conformance;
pub mod jetstream;

use crate::catalog::{
    blob_key, digest_of_key, image_key, reference_key, BlobRecord, ImageRecord, PinDecision,
    ReferenceRecord, WriteDecision, BLOB_PREFIX, IMAGE_PREFIX, REFERENCE_PREFIX,
};
use crate::formats::digest::{digest_error_of, AsyncVerifyingReader};
use crate::formats::{Digest, ImageToStore, Reference};
use backend::{Backend, BackendError, BlobReader};
use berth_proto::messages::image::{ImageList, ImageRemoveReply, ImageSummary};
use berth_proto::ErrorEnvelope;
use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, ReadBuf};

/// Errors of the store; each names the image, reference or blob concerned.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for ErrorEnvelope {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound(m) => ErrorEnvelope::not_found(m),
            StoreError::Invalid(m) => ErrorEnvelope::invalid(m),
            StoreError::Conflict(m) => ErrorEnvelope::conflict(m),
            StoreError::Unavailable(m) => ErrorEnvelope::unavailable(m),
            StoreError::Internal(m) => ErrorEnvelope::internal(m),
        }
    }
}

fn backend_err(what: &str) -> impl FnOnce(BackendError) -> StoreError + '_ {
    move |err| StoreError::Unavailable(format!("{what}: {err}"))
}

/// Timing knobs of garbage collection.
#[derive(Debug, Clone, Copy)]
pub struct GcSettings {
    /// A pin whose image never got committed is dropped after this many seconds.
    pub pin_grace: u64,
    /// A deletion that has not finished after this many seconds is taken over.
    pub deleting_grace: u64,
    /// How long a pin waits for a deletion in progress before giving up.
    pub wait_for_deletion: Duration,
    /// A blob writer that has not renewed its claim for this many seconds is presumed
    /// dead and another may write the blob; claims are renewed every third of it.
    pub writer_grace: u64,
    /// How long a writer waits for another instance writing the same blob.
    pub wait_for_writer: Duration,
}

impl Default for GcSettings {
    fn default() -> Self {
        GcSettings {
            pin_grace: 3600,
            deleting_grace: 120,
            wait_for_deletion: Duration::from_secs(60),
            writer_grace: 30,
            wait_for_writer: Duration::from_secs(3600),
        }
    }
}

/// How a name resolved to an image.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub record: ImageRecord,
    /// The reference used (familiar form), when the name was one.
    pub reference: Option<String>,
}

/// Result of [`Store::commit`]: references now pointing at the image, and images a
/// moved reference left behind.
#[derive(Debug, Clone, Default)]
pub struct Committed {
    pub references: Vec<String>,
    pub new_image: bool,
}

/// The store; cheap to clone.
#[derive(Clone)]
pub struct Store<B> {
    backend: B,
    gc: GcSettings,
}

/// A writer id unique across instances and calls.
fn writer_id() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{}-{nanos}-{n}", std::process::id())
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|err| StoreError::Internal(format!("encode record: {err}")))
}

fn parse<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|err| StoreError::Internal(format!("corrupt catalogue record {key}: {err}")))
}

/// Builds the record persisted for an image.
pub fn image_record(image: &ImageToStore) -> Result<ImageRecord, StoreError> {
    let invalid =
        |what: &str| StoreError::Invalid(format!("{what} of {} is not UTF-8 JSON", image.name()));
    let manifest =
        String::from_utf8(image.manifest_bytes.clone()).map_err(|_| invalid("manifest"))?;
    let config = String::from_utf8(image.config_bytes.clone()).map_err(|_| invalid("config"))?;
    let created = image.config().ok().and_then(|c| c.created().clone());
    Ok(ImageRecord {
        digest: image.manifest_digest.clone(),
        manifest_media_type: image.manifest_media_type.clone(),
        manifest,
        config_digest: image.config_digest.clone(),
        config,
        layers: image.layers.clone(),
        platform: image.platform.clone(),
        created,
        size: image.config_bytes.len() as u64 + image.layers_size(),
    })
}

/// The image a record describes, with the given references (for save and history).
pub fn image_of_record(record: &ImageRecord, references: Vec<Reference>) -> ImageToStore {
    ImageToStore {
        references,
        manifest_media_type: record.manifest_media_type.clone(),
        manifest_digest: record.digest.clone(),
        manifest_bytes: record.manifest.clone().into_bytes(),
        config_digest: record.config_digest.clone(),
        config_bytes: record.config.clone().into_bytes(),
        layers: record.layers.clone(),
        platform: record.platform.clone(),
    }
}

impl<B: Backend> Store<B> {
    /// A store over `backend`.
    pub fn new(backend: B, gc: GcSettings) -> Self {
        Store { backend, gc }
    }

    /// The backend (for tests and transfer objects).
    pub fn backend(&self) -> &B {
        &self.backend
    }

    // ---- blobs ----------------------------------------------------------------------

    /// Whether a complete blob is stored.
    pub async fn has_blob(&self, digest: &Digest) -> Result<bool, StoreError> {
        Ok(self
            .backend
            .blob_size(&digest.to_string())
            .await
            .map_err(backend_err(&format!("blob {digest}")))?
            .is_some())
    }

    /// Streams a blob into the store, verifying digest and size while writing; a
    /// mismatch (or a truncated stream) leaves nothing visible. A no-op returning
    /// `false` when the blob is already stored (then `data` is not read). `subject`
    /// names the blob in errors ("layer sha256:… of busybox:latest").
    ///
    /// The blob must be pinned first ([`Store::pin`]). When another instance is writing
    /// the same blob, this waits for it to finish instead of writing it twice.
    pub async fn put_blob(
        &self,
        digest: &Digest,
        size: u64,
        data: impl AsyncRead + Unpin + Send,
        subject: &str,
    ) -> Result<bool, StoreError> {
        let name = digest.to_string();
        let key = blob_key(digest);
        let id = writer_id();
        let give_up = tokio::time::Instant::now() + self.gc.wait_for_writer;
        loop {
            if let Some(stored) = self
                .backend
                .blob_size(&name)
                .await
                .map_err(backend_err(subject))?
            {
                if stored == size {
                    return Ok(false);
                }
                tracing::warn!(blob = %name, stored, size, "stored blob has the wrong size; rewriting");
            }
            let Some(entry) = self.backend.kv_get(&key).await.map_err(backend_err(&key))? else {
                return Err(StoreError::Internal(format!(
                    "{subject}: written without a pin (call pin first)"
                )));
            };
            let mut record: BlobRecord = parse(&key, &entry.value)?;
            if record.deleting_since.is_some() {
                return Err(StoreError::Internal(format!(
                    "{subject}: written without a pin (it is being deleted)"
                )));
            }
            match record.claim_write(&id, now(), self.gc.writer_grace) {
                WriteDecision::WaitForWriter => {
                    if tokio::time::Instant::now() > give_up {
                        return Err(StoreError::Unavailable(format!(
                            "{subject}: another instance has been writing it for too long"
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                WriteDecision::Write => {
                    match self
                        .backend
                        .kv_update(&key, json(&record)?, entry.revision)
                        .await
                    {
                        Ok(_) => break,
                        Err(BackendError::Conflict) => {}
                        Err(err) => return Err(StoreError::Unavailable(format!("{key}: {err}"))),
                    }
                }
            }
        }
        let heartbeat = {
            let store = self.clone();
            let (key, id) = (key.clone(), id.clone());
            let every = Duration::from_secs((self.gc.writer_grace / 3).max(1));
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    if !store.renew_writer(&key, &id, true).await {
                        return;
                    }
                }
            })
        };
        let written = self.write_blob(&name, digest, size, data, subject).await;
        heartbeat.abort();
        self.renew_writer(&key, &id, false).await;
        written.map(|()| true)
    }

    async fn write_blob(
        &self,
        name: &str,
        digest: &Digest,
        size: u64,
        data: impl AsyncRead + Unpin + Send,
        subject: &str,
    ) -> Result<(), StoreError> {
        let mut reader = Capture {
            inner: AsyncVerifyingReader::new(data, digest.clone(), Some(size), subject.to_string()),
            error: None,
        };
        match self.backend.blob_put(name, &mut reader).await {
            Ok(_) => Ok(()),
            Err(err) => Err(match reader.error.take() {
                Some(message) => StoreError::Invalid(message),
                None => match err {
                    BackendError::Input(message) => {
                        StoreError::Invalid(format!("{subject}: {message}"))
                    }
                    other => StoreError::Unavailable(format!("{subject}: {other}")),
                },
            }),
        }
    }

    /// Renews (`keep`) or drops our writer claim; false once the claim is not ours.
    async fn renew_writer(&self, key: &str, id: &str, keep: bool) -> bool {
        loop {
            let Ok(Some(entry)) = self.backend.kv_get(key).await else {
                return false;
            };
            let Ok(mut record) = parse::<BlobRecord>(key, &entry.value) else {
                return false;
            };
            if keep {
                if record.writer.as_ref().is_none_or(|w| w.id != id) {
                    return false;
                }
                record.claim_write(id, now(), self.gc.writer_grace);
            } else if !record.release_write(id) {
                return false;
            }
            let Ok(value) = json(&record) else {
                return false;
            };
            match self.backend.kv_update(key, value, entry.revision).await {
                Ok(_) => return true,
                Err(BackendError::Conflict) => continue,
                Err(err) => {
                    tracing::warn!(key, error = %err, "cannot update the blob writer claim");
                    return false;
                }
            }
        }
    }

    /// Opens a stored blob.
    pub async fn open_blob(&self, digest: &Digest) -> Result<BlobReader, StoreError> {
        self.backend
            .blob_get(&digest.to_string())
            .await
            .map_err(|err| match err {
                BackendError::NotFound => {
                    StoreError::NotFound(format!("blob {digest} is not stored"))
                }
                other => StoreError::Unavailable(format!("blob {digest}: {other}")),
            })
    }

    /// Marks `user` (a manifest digest) as using each blob, before the blobs are written,
    /// so that no concurrent deletion collects them.
    pub async fn pin(&self, user: &Digest, blobs: &[Digest]) -> Result<(), StoreError> {
        for blob in blobs {
            self.pin_one(&user.to_string(), blob).await?;
        }
        Ok(())
    }

    async fn pin_one(&self, user: &str, blob: &Digest) -> Result<(), StoreError> {
        let key = blob_key(blob);
        let give_up = tokio::time::Instant::now() + self.gc.wait_for_deletion;
        loop {
            let entry = self.backend.kv_get(&key).await.map_err(backend_err(&key))?;
            let outcome = match entry {
                None => {
                    let mut record = BlobRecord::default();
                    record.pin(user, now(), self.gc.deleting_grace);
                    self.backend.kv_create(&key, json(&record)?).await
                }
                Some(entry) => {
                    let mut record: BlobRecord = parse(&key, &entry.value)?;
                    match record.pin(user, now(), self.gc.deleting_grace) {
                        PinDecision::Pinned => {
                            self.backend
                                .kv_update(&key, json(&record)?, entry.revision)
                                .await
                        }
                        PinDecision::WaitForDeletion => {
                            if tokio::time::Instant::now() > give_up {
                                return Err(StoreError::Unavailable(format!(
                                    "blob {blob} is being deleted and the deletion does not finish"
                                )));
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                        PinDecision::FinishStaleDeletion => {
                            tracing::warn!(blob = %blob, "finishing a deletion whose deleter stopped");
                            self.collect(blob, entry.revision).await?;
                            continue;
                        }
                    }
                }
            };
            match outcome {
                Ok(_) => return Ok(()),
                Err(BackendError::Conflict) => continue,
                Err(err) => return Err(StoreError::Unavailable(format!("{key}: {err}"))),
            }
        }
    }

    /// Stores an image's config (held in memory); `Ok(true)` when this call wrote it.
    pub async fn put_config(&self, image: &ImageToStore) -> Result<bool, StoreError> {
        let subject = format!("config {} of {}", image.config_digest, image.name());
        self.put_blob(
            &image.config_digest,
            image.config_bytes.len() as u64,
            &image.config_bytes[..],
            &subject,
        )
        .await
    }

    /// Undoes [`Self::pin`] for an image whose store failed (a digest mismatch, a
    /// broken layer, a lost registry): blobs no other image uses are deleted at once
    /// instead of waiting out the pin grace. Nothing happens when the image is already
    /// stored (a failed re-pull of an image we have keeps it whole).
    pub async fn abandon(&self, user: &Digest, blobs: &[Digest]) -> Result<u64, StoreError> {
        let key = image_key(user);
        if self
            .backend
            .kv_get(&key)
            .await
            .map_err(backend_err(&key))?
            .is_some()
        {
            return Ok(0);
        }
        let mut freed = 0;
        for blob in blobs {
            freed += self.unpin(&user.to_string(), blob).await?.unwrap_or(0);
        }
        Ok(freed)
    }

    /// Removes `user` from a blob's users and deletes the blob when it was the last.
    /// Returns the bytes freed.
    async fn unpin(&self, user: &str, blob: &Digest) -> Result<Option<u64>, StoreError> {
        let key = blob_key(blob);
        loop {
            let Some(entry) = self.backend.kv_get(&key).await.map_err(backend_err(&key))? else {
                return Ok(None);
            };
            let mut record: BlobRecord = parse(&key, &entry.value)?;
            let was_user = record.users.contains_key(user);
            let collectable = record.unpin(user);
            if !collectable {
                if !was_user {
                    return Ok(None);
                }
                match self
                    .backend
                    .kv_update(&key, json(&record)?, entry.revision)
                    .await
                {
                    Ok(_) => return Ok(None),
                    Err(BackendError::Conflict) => continue,
                    Err(err) => return Err(StoreError::Unavailable(format!("{key}: {err}"))),
                }
            }
            // Mark first: a pin that lands before this mark makes it fail (revision
            // changed) and we look again; a pin after it waits for us to finish.
            record.deleting_since = Some(now());
            match self
                .backend
                .kv_update(&key, json(&record)?, entry.revision)
                .await
            {
                Ok(revision) => return self.collect(blob, revision).await.map(Some),
                Err(BackendError::Conflict) => continue,
                Err(err) => return Err(StoreError::Unavailable(format!("{key}: {err}"))),
            }
        }
    }

    /// Deletes a blob whose record is marked deleting at `revision`, then the record.
    async fn collect(&self, blob: &Digest, revision: u64) -> Result<u64, StoreError> {
        let name = blob.to_string();
        let size = self
            .backend
            .blob_size(&name)
            .await
            .map_err(backend_err(&name))?
            .unwrap_or(0);
        self.backend
            .blob_delete(&name)
            .await
            .map_err(backend_err(&name))?;
        match self.backend.kv_delete(&blob_key(blob), revision).await {
            // Someone else finished (or took over) the deletion: nothing left to do.
            Ok(()) | Err(BackendError::Conflict) => Ok(size),
            Err(err) => Err(StoreError::Unavailable(format!(
                "{}: {err}",
                blob_key(blob)
            ))),
        }
    }

    /// Fills in the uncompressed size of layers stored compressed without one (a
    /// pulled gzip layer), so that `history` shows what Docker and podman show: the
    /// size of the layer's tar. Each blob is decompressed once; the sizes are saved in
    /// the image record so the next `history` costs nothing. Saving is best effort: a
    /// concurrent change of the record wins, and the sizes are measured again later.
    pub async fn measure_uncompressed(&self, record: &mut ImageRecord) -> Result<(), StoreError> {
        let mut measured = false;
        for layer in record.layers.iter_mut() {
            if layer.uncompressed_size.is_some() {
                continue;
            }
            let reader = self.open_blob(&layer.digest).await?;
            let handle = tokio::runtime::Handle::current();
            let digest = layer.digest.clone();
            let size = tokio::task::spawn_blocking(move || {
                let blob = tokio_util::io::SyncIoBridge::new_with_handle(reader, handle);
                crate::formats::archive::uncompressed_length(blob)
            })
            .await
            .map_err(|err| StoreError::Internal(format!("measuring layer {digest}: {err}")))?
            .map_err(|err| {
                StoreError::Invalid(format!("layer {} does not decompress: {err}", layer.digest))
            })?;
            layer.uncompressed_size = Some(size);
            measured = true;
        }
        if measured {
            let key = image_key(&record.digest);
            if let Some(entry) = self.backend.kv_get(&key).await.map_err(backend_err(&key))? {
                let mut stored: ImageRecord = parse(&key, &entry.value)?;
                if stored.layers.len() == record.layers.len() {
                    stored.layers.clone_from(&record.layers);
                    if let Err(err) = self
                        .backend
                        .kv_update(&key, json(&stored)?, entry.revision)
                        .await
                    {
                        tracing::debug!(key, error = %err, "layer sizes not saved");
                    }
                }
            }
        }
        Ok(())
    }

    // ---- images and references ------------------------------------------------------

    /// Persists an image whose blobs are pinned and stored: the image record, then its
    /// references. Returns the references now pointing at it.
    pub async fn commit(&self, image: &ImageToStore) -> Result<Committed, StoreError> {
        let record = image_record(image)?;
        for blob in record.blobs() {
            if !self.has_blob(&blob).await? {
                return Err(StoreError::Internal(format!(
                    "blob {blob} of {} was not stored before commit",
                    image.name()
                )));
            }
        }
        let key = image_key(&record.digest);
        let mut new_image = false;
        loop {
            match self.backend.kv_get(&key).await.map_err(backend_err(&key))? {
                Some(_) => break,
                None => match self.backend.kv_create(&key, json(&record)?).await {
                    Ok(_) => {
                        new_image = true;
                        break;
                    }
                    Err(BackendError::Conflict) => continue,
                    Err(err) => return Err(StoreError::Unavailable(format!("{key}: {err}"))),
                },
            }
        }
        let mut references = Vec::new();
        for reference in &image.references {
            let reference = reference.without_digest();
            self.set_reference(&reference, &record).await?;
            references.push(reference.familiar());
        }
        Ok(Committed {
            references,
            new_image,
        })
    }

    /// Points `reference` at `record`'s image. Returns the digest it pointed at before,
    /// if it moved.
    pub async fn set_reference(
        &self,
        reference: &Reference,
        record: &ImageRecord,
    ) -> Result<Option<String>, StoreError> {
        let familiar = reference.familiar();
        let key = reference_key(&familiar);
        let value = ReferenceRecord {
            reference: familiar.clone(),
            digest: record.digest.to_string(),
            created: record.created.clone(),
            size: record.size,
        };
        let (previous, revision) = loop {
            let entry = self.backend.kv_get(&key).await.map_err(backend_err(&key))?;
            let (previous, outcome) = match entry {
                None => (None, self.backend.kv_create(&key, json(&value)?).await),
                Some(entry) => {
                    let old: ReferenceRecord = parse(&key, &entry.value)?;
                    if old.digest == value.digest {
                        break (None, entry.revision);
                    }
                    (
                        Some(old.digest),
                        self.backend
                            .kv_update(&key, json(&value)?, entry.revision)
                            .await,
                    )
                }
            };
            match outcome {
                Ok(revision) => break (previous, revision),
                Err(BackendError::Conflict) => continue,
                Err(err) => return Err(StoreError::Unavailable(format!("{key}: {err}"))),
            }
        };
        // Touch the image record after writing the reference: a deletion that read the
        // record before our reference existed then fails its compare-and-set and looks
        // again; if the image is already gone, take the reference back.
        let image = image_key(&record.digest);
        loop {
            match self
                .backend
                .kv_get(&image)
                .await
                .map_err(backend_err(&image))?
            {
                None => {
                    let _ = self.backend.kv_delete(&key, revision).await;
                    return Err(StoreError::NotFound(format!(
                        "image {} was deleted while {familiar} was being tagged",
                        record.digest
                    )));
                }
                Some(entry) => match self
                    .backend
                    .kv_update(&image, entry.value, entry.revision)
                    .await
                {
                    Ok(_) => return Ok(previous),
                    Err(BackendError::Conflict) => continue,
                    Err(err) => return Err(StoreError::Unavailable(format!("{image}: {err}"))),
                },
            }
        }
    }

    async fn image_entry(&self, digest: &Digest) -> Result<Option<(ImageRecord, u64)>, StoreError> {
        let key = image_key(digest);
        match self.backend.kv_get(&key).await.map_err(backend_err(&key))? {
            Some(entry) => Ok(Some((parse(&key, &entry.value)?, entry.revision))),
            None => Ok(None),
        }
    }

    /// Every reference record with its key and revision.
    async fn references(&self) -> Result<Vec<(String, ReferenceRecord, u64)>, StoreError> {
        let keys = self
            .backend
            .kv_keys(REFERENCE_PREFIX)
            .await
            .map_err(backend_err("list references"))?;
        let mut out = Vec::new();
        for key in keys {
            if let Some(entry) = self.backend.kv_get(&key).await.map_err(backend_err(&key))? {
                out.push((key.clone(), parse(&key, &entry.value)?, entry.revision));
            }
        }
        Ok(out)
    }

    /// References pointing at `digest`, sorted.
    pub async fn references_to(&self, digest: &Digest) -> Result<Vec<String>, StoreError> {
        let wanted = digest.to_string();
        let mut refs: Vec<String> = self
            .references()
            .await?
            .into_iter()
            .filter(|(_, r, _)| r.digest == wanted)
            .map(|(_, r, _)| r.reference)
            .collect();
        refs.sort();
        Ok(refs)
    }

    async fn image_digests(&self) -> Result<Vec<Digest>, StoreError> {
        Ok(self
            .backend
            .kv_keys(IMAGE_PREFIX)
            .await
            .map_err(backend_err("list images"))?
            .iter()
            .filter_map(|k| digest_of_key(k))
            .collect())
    }

    /// Finds an image by reference (`busybox`, `busybox:1`, `x@sha256:…`), manifest
    /// digest (`sha256:…`), or a unique hex prefix of its manifest or config digest.
    pub async fn resolve(&self, name: &str) -> Result<Resolved, StoreError> {
        let no_such = || StoreError::NotFound(format!("No such image: {name}"));
        if let Ok(digest) = name.parse::<Digest>() {
            return match self.image_entry(&digest).await? {
                Some((record, _)) => Ok(Resolved {
                    record,
                    reference: None,
                }),
                None => Err(no_such()),
            };
        }
        let parsed = Reference::parse(name);
        if let Ok(reference) = &parsed {
            if let Some(digest) = reference.digest() {
                return match self.image_entry(digest).await? {
                    Some((record, _)) => Ok(Resolved {
                        record,
                        reference: None,
                    }),
                    None => Err(no_such()),
                };
            }
            let familiar = reference.familiar();
            let key = reference_key(&familiar);
            if let Some(entry) = self.backend.kv_get(&key).await.map_err(backend_err(&key))? {
                let r: ReferenceRecord = parse(&key, &entry.value)?;
                let digest: Digest = r
                    .digest
                    .parse()
                    .map_err(|err| StoreError::Internal(format!("{key}: {err}")))?;
                if let Some((record, _)) = self.image_entry(&digest).await? {
                    return Ok(Resolved {
                        record,
                        reference: Some(familiar),
                    });
                }
            }
        }
        let hex = name.strip_prefix("sha256:").unwrap_or(name);
        let is_id_prefix = hex.len() >= 4
            && hex.len() <= 64
            && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if is_id_prefix {
            let mut found = Vec::new();
            for digest in self.image_digests().await? {
                if let Some((record, _)) = self.image_entry(&digest).await? {
                    if digest.hex().starts_with(hex) || record.config_digest.hex().starts_with(hex)
                    {
                        found.push(record);
                    }
                }
            }
            match found.len() {
                0 => {}
                1 => {
                    return Ok(Resolved {
                        record: found.remove(0),
                        reference: None,
                    })
                }
                n => {
                    return Err(StoreError::Invalid(format!(
                        "{name} is ambiguous: it matches {n} images"
                    )))
                }
            }
        }
        match parsed {
            Err(err) if !is_id_prefix => Err(StoreError::Invalid(err.to_string())),
            _ => Err(no_such()),
        }
    }

    /// `berth images`: every reference, plus one row per untagged image.
    pub async fn list(&self, prefix: Option<&str>) -> Result<ImageList, StoreError> {
        let references = self.references().await?;
        let referenced: BTreeSet<String> = references
            .iter()
            .map(|(_, r, _)| r.digest.clone())
            .collect();
        let mut images: Vec<ImageSummary> = references
            .into_iter()
            .filter(|(_, r, _)| prefix.is_none_or(|p| r.reference.starts_with(p)))
            .map(|(_, r, _)| ImageSummary {
                reference: Some(r.reference),
                digest: r.digest,
                created: r.created,
                size: r.size,
            })
            .collect();
        if prefix.is_none() {
            for digest in self.image_digests().await? {
                if referenced.contains(&digest.to_string()) {
                    continue;
                }
                if let Some((record, _)) = self.image_entry(&digest).await? {
                    images.push(ImageSummary {
                        reference: None,
                        digest: record.digest.to_string(),
                        created: record.created,
                        size: record.size,
                    });
                }
            }
        }
        images.sort_by(|a, b| {
            (a.reference.is_none(), &a.reference, &a.digest).cmp(&(
                b.reference.is_none(),
                &b.reference,
                &b.digest,
            ))
        });
        Ok(ImageList { images })
    }

    /// `berth tag SOURCE TARGET`.
    pub async fn tag(&self, source: &str, target: &str) -> Result<(Resolved, String), StoreError> {
        let resolved = self.resolve(source).await?;
        let reference =
            Reference::parse(target).map_err(|err| StoreError::Invalid(err.to_string()))?;
        if reference.digest().is_some() {
            return Err(StoreError::Invalid(format!(
                "cannot tag with a digest reference: {target}"
            )));
        }
        self.set_reference(&reference, &resolved.record).await?;
        Ok((resolved, reference.familiar()))
    }

    /// `berth rmi [-f] NAME`: a reference is untagged (and its image deleted when it was
    /// the last); a digest or ID deletes the image, which needs `force` when several
    /// references point at it.
    pub async fn remove(
        &self,
        name: &str,
        force: bool,
    ) -> Result<(Digest, ImageRemoveReply), StoreError> {
        let resolved = self.resolve(name).await?;
        let digest = resolved.record.digest.clone();
        let mut reply = ImageRemoveReply::default();
        let to_untag = match &resolved.reference {
            Some(reference) => vec![reference.clone()],
            None => {
                let refs = self.references_to(&digest).await?;
                if refs.len() > 1 && !force {
                    return Err(StoreError::Conflict(format!(
                        "unable to delete {name} (must be forced) - image is referenced in multiple repositories: {}",
                        refs.join(", ")
                    )));
                }
                refs
            }
        };
        for reference in to_untag {
            if self.remove_reference(&reference, &digest).await? {
                reply.untagged.push(reference);
            }
        }
        self.delete_if_unreferenced(&digest, &mut reply).await?;
        if resolved.reference.is_none() && !reply.deleted.contains(&digest.to_string()) {
            return Err(StoreError::Conflict(format!(
                "image {digest} was tagged again while being removed"
            )));
        }
        Ok((digest, reply))
    }

    /// Deletes a reference if it still points at `digest`.
    async fn remove_reference(&self, familiar: &str, digest: &Digest) -> Result<bool, StoreError> {
        let key = reference_key(familiar);
        loop {
            let Some(entry) = self.backend.kv_get(&key).await.map_err(backend_err(&key))? else {
                return Ok(false);
            };
            let record: ReferenceRecord = parse(&key, &entry.value)?;
            if record.digest != digest.to_string() {
                return Ok(false);
            }
            match self.backend.kv_delete(&key, entry.revision).await {
                Ok(()) => return Ok(true),
                Err(BackendError::Conflict) => continue,
                Err(err) => return Err(StoreError::Unavailable(format!("{key}: {err}"))),
            }
        }
    }

    /// Deletes an image that no reference points at, then releases its blobs.
    async fn delete_if_unreferenced(
        &self,
        digest: &Digest,
        reply: &mut ImageRemoveReply,
    ) -> Result<(), StoreError> {
        let key = image_key(digest);
        let record = loop {
            let Some((record, revision)) = self.image_entry(digest).await? else {
                return Ok(());
            };
            if !self.references_to(digest).await?.is_empty() {
                return Ok(());
            }
            match self.backend.kv_delete(&key, revision).await {
                Ok(()) => break record,
                // Tagged (touched) meanwhile: look at the references again.
                Err(BackendError::Conflict) => continue,
                Err(err) => return Err(StoreError::Unavailable(format!("{key}: {err}"))),
            }
        };
        reply.deleted.push(digest.to_string());
        let user = digest.to_string();
        for blob in record.blobs() {
            if let Some(freed) = self.unpin(&user, &blob).await? {
                reply.blobs_deleted.push(blob.to_string());
                reply.space_reclaimed += freed;
            }
        }
        Ok(())
    }

    /// `berth image prune`: deletes untagged images, drops pins of imports that died
    /// (older than the grace period) and blobs nobody uses any more.
    pub async fn prune(&self) -> Result<ImageRemoveReply, StoreError> {
        let mut reply = ImageRemoveReply::default();
        let referenced: BTreeSet<String> = self
            .references()
            .await?
            .into_iter()
            .map(|(_, r, _)| r.digest)
            .collect();
        for digest in self.image_digests().await? {
            if !referenced.contains(&digest.to_string()) {
                self.delete_if_unreferenced(&digest, &mut reply).await?;
            }
        }
        let images: BTreeSet<String> = self
            .image_digests()
            .await?
            .iter()
            .map(Digest::to_string)
            .collect();
        let blob_keys = self
            .backend
            .kv_keys(BLOB_PREFIX)
            .await
            .map_err(backend_err("list blob records"))?;
        let now = now();
        for key in blob_keys {
            let Some(blob) = digest_of_key(&key) else {
                continue;
            };
            let Some(entry) = self.backend.kv_get(&key).await.map_err(backend_err(&key))? else {
                continue;
            };
            let record: BlobRecord = parse(&key, &entry.value)?;
            if record
                .deleting_since
                .is_some_and(|since| now.saturating_sub(since) > self.gc.deleting_grace)
            {
                let freed = self.collect(&blob, entry.revision).await?;
                reply.blobs_deleted.push(blob.to_string());
                reply.space_reclaimed += freed;
                continue;
            }
            for user in record.stale_users(now, self.gc.pin_grace, |u| images.contains(u)) {
                if let Some(freed) = self.unpin(&user, &blob).await? {
                    reply.blobs_deleted.push(blob.to_string());
                    reply.space_reclaimed += freed;
                }
            }
        }
        // Same grace as pins: a write younger than that may still be in flight.
        match self.backend.purge_unfinished(self.gc.pin_grace).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(writes = n, "removed the parts of unfinished blob writes"),
            Err(err) => tracing::warn!(error = %err, "cannot look for unfinished blob writes"),
        }
        Ok(reply)
    }

    /// Blobs of every image, for consistency checks: digest → images using it.
    pub async fn blob_users(&self) -> Result<BTreeMap<Digest, Vec<Digest>>, StoreError> {
        let mut out: BTreeMap<Digest, Vec<Digest>> = BTreeMap::new();
        for digest in self.image_digests().await? {
            if let Some((record, _)) = self.image_entry(&digest).await? {
                for blob in record.blobs() {
                    out.entry(blob).or_default().push(digest.clone());
                }
            }
        }
        Ok(out)
    }
}

/// Keeps the message of the first digest/size error the verifying reader reports, so
/// that it can be told apart from a store failure after the backend wraps it.
struct Capture<R> {
    inner: R,
    error: Option<String>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Capture<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Err(err)) = &poll {
            if this.error.is_none() {
                this.error = Some(match digest_error_of(err) {
                    Some(de) => de.to_string(),
                    None => err.to_string(),
                });
            }
        }
        poll
    }
}

#[cfg(test)]
mod tests;
