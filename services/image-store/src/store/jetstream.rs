//! The JetStream backend: KV `berth-images` and Object Store `berth-blobs`.

use super::backend::{Backend, BackendError, BlobInfo, BlobReader, KvEntry};
use async_nats::jetstream::{kv, object_store, stream};
use futures::TryStreamExt;
use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};

/// KV bucket plus Object Store; cheap to clone.
#[derive(Clone)]
pub struct JetStreamBackend {
    kv: kv::Store,
    blobs: object_store::ObjectStore,
    /// The stream under the Object Store, to find chunks no object refers to.
    chunks: stream::Stream,
    bucket: String,
}

impl JetStreamBackend {
    /// Wraps the two buckets; `chunks` is the Object Store's stream (`OBJ_<bucket>`).
    pub fn new(
        kv: kv::Store,
        blobs: object_store::ObjectStore,
        chunks: stream::Stream,
        bucket: &str,
    ) -> Self {
        JetStreamBackend {
            kv,
            blobs,
            chunks,
            bucket: bucket.to_string(),
        }
    }
}

fn unavailable(what: &str, err: impl std::fmt::Display) -> BackendError {
    BackendError::Unavailable(format!("{what}: {err}"))
}

impl Backend for JetStreamBackend {
    async fn kv_get(&self, key: &str) -> Result<Option<KvEntry>, BackendError> {
        let entry = self
            .kv
            .entry(key)
            .await
            .map_err(|err| unavailable(&format!("read {key}"), err))?;
        Ok(entry
            .filter(|e| e.operation == kv::Operation::Put)
            .map(|e| KvEntry {
                value: e.value.to_vec(),
                revision: e.revision,
            }))
    }

    async fn kv_create(&self, key: &str, value: Vec<u8>) -> Result<u64, BackendError> {
        self.kv
            .create(key, value.into())
            .await
            .map_err(|err| match err.kind() {
                kv::CreateErrorKind::AlreadyExists => BackendError::Conflict,
                _ => unavailable(&format!("create {key}"), err),
            })
    }

    async fn kv_update(
        &self,
        key: &str,
        value: Vec<u8>,
        revision: u64,
    ) -> Result<u64, BackendError> {
        self.kv
            .update(key, value.into(), revision)
            .await
            .map_err(|err| match err.kind() {
                kv::UpdateErrorKind::WrongLastRevision => BackendError::Conflict,
                _ if is_wrong_sequence(&err) => BackendError::Conflict,
                _ => unavailable(&format!("update {key}"), err),
            })
    }

    async fn kv_delete(&self, key: &str, revision: u64) -> Result<(), BackendError> {
        self.kv
            .delete_expect_revision(key, Some(revision))
            .await
            .map_err(|err| match err.kind() {
                kv::UpdateErrorKind::WrongLastRevision => BackendError::Conflict,
                _ if is_wrong_sequence(&err) => BackendError::Conflict,
                _ => unavailable(&format!("delete {key}"), err),
            })
    }

    async fn kv_keys(&self, prefix: &str) -> Result<Vec<String>, BackendError> {
        let keys = self
            .kv
            .keys()
            .await
            .map_err(|err| unavailable("list keys", err))?;
        let keys: Vec<String> = keys
            .try_collect()
            .await
            .map_err(|err| unavailable("list keys", err))?;
        Ok(keys.into_iter().filter(|k| k.starts_with(prefix)).collect())
    }

    async fn blob_size(&self, name: &str) -> Result<Option<u64>, BackendError> {
        match self.blobs.info(name).await {
            Ok(info) if !info.deleted => Ok(Some(info.size as u64)),
            Ok(_) => Ok(None),
            Err(err) if err.kind() == object_store::InfoErrorKind::NotFound => Ok(None),
            Err(err) => Err(unavailable(&format!("blob {name}"), err)),
        }
    }

    async fn blob_put<'a>(
        &'a self,
        name: &'a str,
        data: &'a mut (dyn AsyncRead + Unpin + Send),
    ) -> Result<u64, BackendError> {
        // Object Store publishes the object's metadata only after the last chunk, so a
        // reader that fails (digest or size mismatch) leaves no visible object.
        let mut data = data;
        match self.blobs.put(name, &mut data).await {
            Ok(info) => Ok(info.size as u64),
            Err(err) if err.kind() == object_store::PutErrorKind::ReadChunks => {
                Err(BackendError::Input(err.to_string()))
            }
            Err(err) => Err(unavailable(&format!("write blob {name}"), err)),
        }
    }

    async fn blob_get(&self, name: &str) -> Result<BlobReader, BackendError> {
        let info = match self.blobs.info(name).await {
            Ok(info) if !info.deleted => info,
            Ok(_) => return Err(BackendError::NotFound),
            Err(err) if err.kind() == object_store::InfoErrorKind::NotFound => {
                return Err(BackendError::NotFound)
            }
            Err(err) => return Err(unavailable(&format!("read blob {name}"), err)),
        };
        Ok(Box::new(ChunkReader {
            stream: self.chunks.clone(),
            subject: format!("$O.{}.C.{}", self.bucket, info.nuid),
            name: name.to_string(),
            next_sequence: 1,
            chunks_left: info.chunks,
            bytes_left: info.size as u64,
            expected_digest: info.digest.clone(),
            hasher: sha2::Sha256::default(),
            buffer: bytes::Bytes::new(),
            fetch: None,
        }))
    }

    async fn blob_delete(&self, name: &str) -> Result<(), BackendError> {
        match self.blobs.delete(name).await {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == object_store::DeleteErrorKind::NotFound => Ok(()),
            Err(err) => Err(unavailable(&format!("delete blob {name}"), err)),
        }
    }

    async fn purge_unfinished(&self, older_than: u64) -> Result<usize, BackendError> {
        self.purge_unfinished_chunks(older_than).await
    }

    async fn blob_list(&self) -> Result<Vec<BlobInfo>, BackendError> {
        let list = self
            .blobs
            .list()
            .await
            .map_err(|err| unavailable("list blobs", err))?;
        let infos: Vec<object_store::ObjectInfo> = list
            .try_collect()
            .await
            .map_err(|err| unavailable("list blobs", err))?;
        Ok(infos
            .into_iter()
            .filter(|i| !i.deleted)
            .map(|i| BlobInfo {
                name: i.name,
                size: i.size as u64,
                modified: i
                    .modified
                    .map(|m| u64::try_from(m.unix_timestamp()).unwrap_or(0)),
            })
            .collect())
    }
}

impl JetStreamBackend {
    async fn purge_unfinished_chunks(&self, older_than: u64) -> Result<usize, BackendError> {
        // An Object Store write publishes chunks under `$O.<bucket>.C.<nuid>` and the
        // object's metadata last; chunks of a write that failed or died stay behind
        // with no metadata naming their nuid.
        let live: BTreeSet<String> = {
            let list = self
                .blobs
                .list()
                .await
                .map_err(|err| unavailable("list blobs", err))?;
            let infos: Vec<object_store::ObjectInfo> = list
                .try_collect()
                .await
                .map_err(|err| unavailable("list blobs", err))?;
            infos.into_iter().map(|i| i.nuid).collect()
        };
        let prefix = format!("$O.{}.C.", self.bucket);
        let subjects: Vec<(String, usize)> = self
            .chunks
            .info_with_subjects(format!("{prefix}>"))
            .await
            .map_err(|err| unavailable("list chunk subjects", err))?
            .try_collect()
            .await
            .map_err(|err| unavailable("list chunk subjects", err))?;
        let now = time::OffsetDateTime::now_utc();
        let mut purged = 0;
        for (subject, _) in subjects {
            let Some(nuid) = subject.strip_prefix(&prefix) else {
                continue;
            };
            if live.contains(nuid) {
                continue;
            }
            // A write in flight has no metadata yet either: only old chunks are debris.
            let Ok(last) = self.chunks.get_last_raw_message_by_subject(&subject).await else {
                continue;
            };
            if (now - last.time).whole_seconds() < i64::try_from(older_than).unwrap_or(i64::MAX) {
                continue;
            }
            self.chunks
                .purge()
                .filter(&subject)
                .await
                .map_err(|err| unavailable(&format!("purge {subject}"), err))?;
            purged += 1;
        }
        Ok(purged)
    }
}

type Fetch = Pin<
    Box<dyn Future<Output = Result<async_nats::jetstream::message::StreamMessage, String>> + Send>,
>;

/// Reads an object's chunks one request at a time (next message on the object's chunk
/// subject after the last one read) and checks its size and SHA-256 at the end.
///
/// Why not `ObjectStore::get`: its push consumer was seen to stall for good partway
/// through a 100 MB object on a loaded host; a pull-style read cannot stall that way,
/// and a slow reader just reads slowly.
struct ChunkReader {
    stream: stream::Stream,
    subject: String,
    name: String,
    next_sequence: u64,
    chunks_left: usize,
    bytes_left: u64,
    expected_digest: Option<String>,
    hasher: sha2::Sha256,
    buffer: bytes::Bytes,
    fetch: Option<Fetch>,
}

impl ChunkReader {
    fn finish(&mut self) -> std::io::Result<()> {
        use base64::Engine as _;
        use sha2::Digest as _;
        if self.bytes_left != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("object {} ended {} bytes short", self.name, self.bytes_left),
            ));
        }
        if let Some(expected) = &self.expected_digest {
            let actual = format!(
                "SHA-256={}",
                base64::engine::general_purpose::URL_SAFE
                    .encode(std::mem::take(&mut self.hasher).finalize())
            );
            if &actual != expected {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "object {} is corrupt: digest {actual}, expected {expected}",
                        self.name
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl AsyncRead for ChunkReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        use sha2::Digest as _;
        let this = &mut *self;
        loop {
            if !this.buffer.is_empty() {
                let n = buf.remaining().min(this.buffer.len());
                buf.put_slice(&this.buffer.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.chunks_left == 0 {
                if this.expected_digest.is_some() || this.bytes_left != 0 {
                    let result = this.finish();
                    this.expected_digest = None;
                    this.bytes_left = 0;
                    result?;
                }
                return Poll::Ready(Ok(()));
            }
            let fetch = this.fetch.get_or_insert_with(|| {
                let stream = this.stream.clone();
                let subject = this.subject.clone();
                let sequence = this.next_sequence;
                Box::pin(async move {
                    stream
                        .raw_message_builder()
                        .next_by_subject(subject)
                        .sequence(sequence)
                        .send()
                        .await
                        .map_err(|err| err.to_string())
                })
            });
            let message = match fetch.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(result) => {
                    this.fetch = None;
                    result.map_err(|err| {
                        std::io::Error::other(format!("cannot read object {}: {err}", this.name))
                    })?
                }
            };
            if message.subject.as_str() != this.subject {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("object {} is missing chunks", this.name),
                )));
            }
            this.next_sequence = message.sequence + 1;
            this.chunks_left -= 1;
            this.bytes_left = this.bytes_left.saturating_sub(message.payload.len() as u64);
            this.hasher.update(&message.payload);
            this.buffer = message.payload;
        }
    }
}

/// JetStream reports a failed expected-revision check as "wrong last sequence".
fn is_wrong_sequence(err: &impl std::fmt::Display) -> bool {
    err.to_string().contains("wrong last sequence")
}
