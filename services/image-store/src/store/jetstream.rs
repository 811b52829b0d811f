//! The JetStream backend: KV `berth-images` and Object Store `berth-blobs`.

use super::backend::{Backend, BackendError, BlobInfo, BlobReader, KvEntry};
use async_nats::jetstream::{kv, object_store, stream};
use futures::TryStreamExt;
use std::collections::BTreeSet;
use tokio::io::AsyncRead;

/// Bytes per Object Store chunk: under the 1 MiB default `max_payload`, with room for
/// headers.
const BLOB_CHUNK_BYTES: usize = 960 * 1024;
/// Chunk acks a blob write may have outstanding (8 MiB in flight per blob).
const BLOB_ACK_WINDOW: usize = 8;

/// KV bucket plus Object Store; cheap to clone.
#[derive(Clone)]
pub struct JetStreamBackend {
    kv: kv::Store,
    blobs: object_store::ObjectStore,
    /// The stream under the Object Store, to find chunks no object refers to.
    chunks: stream::Stream,
    bucket: String,
    writer: berth_bus::objects::ObjectWriter,
}

impl JetStreamBackend {
    /// Wraps the two buckets; `chunks` is the Object Store's stream (`OBJ_<bucket>`).
    pub fn new(
        js: async_nats::jetstream::Context,
        kv: kv::Store,
        blobs: object_store::ObjectStore,
        chunks: stream::Stream,
        bucket: &str,
    ) -> Self {
        let writer = berth_bus::objects::ObjectWriter::from_parts(
            bucket,
            js,
            blobs.clone(),
            chunks.clone(),
            BLOB_CHUNK_BYTES,
            BLOB_ACK_WINDOW,
        );
        JetStreamBackend {
            kv,
            blobs,
            chunks,
            bucket: bucket.to_string(),
            writer,
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
        // Stream info with a subject filter is one request. async-nats' `keys()` makes an
        // ephemeral consumer per call instead, and hundreds of concurrent `run`s each
        // inspecting an image (which lists references) hit the server's consumer limit.
        let stream_prefix = format!("$KV.{}.", self.kv.name);
        // A subject filter can only end in a whole token; other prefixes are matched below.
        let token_prefix = match prefix.rfind('.') {
            Some(dot) => &prefix[..=dot],
            None => "",
        };
        let mut subjects = self
            .kv
            .stream
            .info_with_subjects(format!("{stream_prefix}{token_prefix}>"))
            .await
            .map_err(|err| unavailable("list keys", err))?;
        let mut keys = Vec::new();
        while let Some((subject, _count)) = subjects
            .try_next()
            .await
            .map_err(|err| unavailable("list keys", err))?
        {
            let Some(key) = subject.strip_prefix(&stream_prefix) else {
                continue;
            };
            if key.starts_with(prefix) {
                // A deleted key keeps its delete marker in the stream: only live ones count.
                if self.kv_get(key).await?.is_some() {
                    keys.push(key.to_string());
                }
            }
        }
        Ok(keys)
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
        // The metadata is published only after the last chunk is acked, so a reader
        // that fails (digest or size mismatch) leaves no visible object.
        match self.writer.put(name, data).await {
            Ok(size) => Ok(size),
            Err(err @ berth_bus::objects::PutError::Read { .. }) => {
                Err(BackendError::Input(err.to_string()))
            }
            Err(err) => Err(unavailable(&format!("write blob {name}"), err)),
        }
    }

    async fn blob_get(&self, name: &str) -> Result<BlobReader, BackendError> {
        let objects = berth_bus::objects::ObjectReader::from_parts(
            &self.bucket,
            self.blobs.clone(),
            self.chunks.clone(),
        );
        match objects.open(name).await {
            Ok(reader) => Ok(Box::new(reader)),
            Err(berth_bus::objects::OpenError::NotFound(_)) => Err(BackendError::NotFound),
            Err(err) => Err(unavailable(&format!("read blob {name}"), err)),
        }
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

/// JetStream reports a failed expected-revision check as "wrong last sequence".
fn is_wrong_sequence(err: &impl std::fmt::Display) -> bool {
    err.to_string().contains("wrong last sequence")
}
