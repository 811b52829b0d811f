//! Reading Object Store objects chunk by chunk, with size and SHA-256 checked.
//!
//! Why not `ObjectStore::get`: its push consumer was seen to stall for good partway
//! through a 100 MB object on a loaded host. Asking for "the next message on the
//! object's chunk subject after the last one read" cannot stall that way, and a slow
//! reader just reads slowly (back-pressure for free).

use async_nats::jetstream::{self, object_store, stream};
use berth_proto::subjects::object_store as names;
use sha2::Digest as _;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};

/// Why an object could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("object {0} not found")]
    NotFound(String),
    #[error("object {name}: {reason}")]
    Unavailable { name: String, reason: String },
}

type Fetch =
    Pin<Box<dyn Future<Output = Result<jetstream::message::StreamMessage, String>> + Send>>;

/// Opens objects of one bucket for chunk-wise reading; cheap to clone.
#[derive(Clone)]
pub struct ObjectReader {
    bucket: String,
    store: object_store::ObjectStore,
    chunks: stream::Stream,
}

impl ObjectReader {
    /// Wraps a bucket (which must exist).
    pub async fn new(js: &jetstream::Context, bucket: &str) -> Result<Self, OpenError> {
        let unavailable = |reason: String| OpenError::Unavailable {
            name: bucket.to_string(),
            reason,
        };
        let store = js
            .get_object_store(bucket)
            .await
            .map_err(|err| unavailable(err.to_string()))?;
        let chunks = js
            .get_stream(names::stream(bucket))
            .await
            .map_err(|err| unavailable(err.to_string()))?;
        Ok(ObjectReader {
            bucket: bucket.to_string(),
            store,
            chunks,
        })
    }

    /// Wraps handles the caller already has: the bucket's store and its `OBJ_<bucket>`
    /// stream.
    pub fn from_parts(
        bucket: &str,
        store: object_store::ObjectStore,
        chunks: stream::Stream,
    ) -> Self {
        ObjectReader {
            bucket: bucket.to_string(),
            store,
            chunks,
        }
    }

    /// A reader over one object; it fails at the end if the size or digest is wrong.
    pub async fn open(&self, name: &str) -> Result<ChunkReader, OpenError> {
        let info = match self.store.info(name).await {
            Ok(info) if !info.deleted => info,
            Ok(_) => return Err(OpenError::NotFound(name.to_string())),
            Err(err) if err.kind() == object_store::InfoErrorKind::NotFound => {
                return Err(OpenError::NotFound(name.to_string()))
            }
            Err(err) => {
                return Err(OpenError::Unavailable {
                    name: name.to_string(),
                    reason: err.to_string(),
                })
            }
        };
        Ok(ChunkReader {
            stream: self.chunks.clone(),
            subject: names::chunks(&self.bucket, &info.nuid),
            name: name.to_string(),
            next_sequence: 1,
            chunks_left: info.chunks,
            bytes_left: info.size as u64,
            expected_digest: info.digest.clone(),
            hasher: sha2::Sha256::default(),
            buffer: bytes::Bytes::new(),
            fetch: None,
        })
    }
}

/// One object being read; see the module doc.
pub struct ChunkReader {
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

/// The Object Store's digest format: `SHA-256=<base64url>`.
pub fn object_digest(sha256: &[u8]) -> String {
    use base64::Engine as _;
    format!(
        "SHA-256={}",
        base64::engine::general_purpose::URL_SAFE.encode(sha256)
    )
}

impl ChunkReader {
    fn finish(&mut self) -> std::io::Result<()> {
        if self.bytes_left != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("object {} ended {} bytes short", self.name, self.bytes_left),
            ));
        }
        if let Some(expected) = &self.expected_digest {
            let actual = object_digest(&std::mem::take(&mut self.hasher).finalize());
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

/// Why an object could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    /// The data source failed (a digest or size check of the caller, a broken stream).
    #[error("reading the data of object {name}: {source}")]
    Read {
        name: String,
        source: std::io::Error,
    },
    #[error("object {name}: {reason}")]
    Unavailable { name: String, reason: String },
}

/// Writes objects the way `ObjectStore::put` lays them out (chunks under
/// `$O.<bucket>.C.<nuid>`, then the metadata, which makes the object visible), but with
/// full-size chunks and up to `window` chunk acks outstanding. async-nats sends one
/// chunk per read of the source (a few KiB from an HTTP body) and waits for each ack
/// before the next: a round trip per read. Cheap to clone.
#[derive(Clone)]
pub struct ObjectWriter {
    bucket: String,
    js: jetstream::Context,
    store: object_store::ObjectStore,
    chunks: stream::Stream,
    chunk_size: usize,
    window: usize,
}

impl ObjectWriter {
    /// Wraps a bucket's handles; `chunk_size` must stay below the server's `max_payload`.
    pub fn from_parts(
        bucket: &str,
        js: jetstream::Context,
        store: object_store::ObjectStore,
        chunks: stream::Stream,
        chunk_size: usize,
        window: usize,
    ) -> Self {
        ObjectWriter {
            bucket: bucket.to_string(),
            js,
            store,
            chunks,
            chunk_size: chunk_size.max(1),
            window: window.max(1),
        }
    }

    /// Streams `data` into object `name`; returns its size. On any error the chunks
    /// written so far are purged and no metadata is published, so nothing is visible.
    pub async fn put(
        &self,
        name: &str,
        data: &mut (dyn AsyncRead + Unpin + Send),
    ) -> Result<u64, PutError> {
        use tokio::io::AsyncReadExt as _;
        let unavailable = |reason: String| PutError::Unavailable {
            name: name.to_string(),
            reason,
        };
        let previous = self.store.info(name).await.ok().filter(|i| !i.deleted);
        let nuid = nuid::next().to_string();
        let subject = names::chunks(&self.bucket, &nuid);
        let mut acks = std::collections::VecDeque::new();
        let mut hasher = sha2::Sha256::default();
        let (mut size, mut count) = (0usize, 0usize);
        let outcome: Result<(), PutError> = async {
            loop {
                let mut chunk = bytes::BytesMut::with_capacity(self.chunk_size);
                while chunk.len() < self.chunk_size {
                    let n = data
                        .read_buf(&mut chunk)
                        .await
                        .map_err(|source| PutError::Read {
                            name: name.to_string(),
                            source,
                        })?;
                    if n == 0 {
                        break;
                    }
                }
                if chunk.is_empty() {
                    break;
                }
                let last = chunk.len() < self.chunk_size;
                hasher.update(&chunk);
                size += chunk.len();
                count += 1;
                let ack = self
                    .js
                    .publish(subject.clone(), chunk.freeze())
                    .await
                    .map_err(|err| unavailable(format!("publishing chunk {count}: {err}")))?;
                acks.push_back(ack);
                if acks.len() >= self.window {
                    if let Some(ack) = acks.pop_front() {
                        ack.await
                            .map_err(|err| unavailable(format!("chunk ack: {err}")))?;
                    }
                }
                if last {
                    break;
                }
            }
            while let Some(ack) = acks.pop_front() {
                ack.await
                    .map_err(|err| unavailable(format!("chunk ack: {err}")))?;
            }
            Ok(())
        }
        .await;
        if let Err(err) = outcome {
            let _ = self.chunks.purge().filter(&subject).await;
            return Err(err);
        }
        use base64::Engine as _;
        let encoded = base64::engine::general_purpose::URL_SAFE.encode(name);
        let info = object_store::ObjectInfo {
            name: name.to_string(),
            description: None,
            metadata: Default::default(),
            headers: None,
            options: Some(object_store::ObjectOptions {
                max_chunk_size: Some(self.chunk_size),
                link: None,
            }),
            bucket: self.bucket.clone(),
            nuid: nuid.clone(),
            size,
            chunks: count,
            modified: Some(time::OffsetDateTime::now_utc()),
            digest: Some(object_digest(&hasher.finalize())),
            deleted: false,
        };
        let body = serde_json::to_vec(&info)
            .map_err(|err| unavailable(format!("encoding the metadata: {err}")))?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Rollup", "sub");
        let published = async {
            self.js
                .publish_with_headers(names::meta(&self.bucket, &encoded), headers, body.into())
                .await
                .map_err(|err| err.to_string())?
                .await
                .map_err(|err| err.to_string())
        }
        .await;
        if let Err(err) = published {
            let _ = self.chunks.purge().filter(&subject).await;
            return Err(unavailable(format!("publishing the metadata: {err}")));
        }
        if let Some(previous) = previous {
            let old = names::chunks(&self.bucket, &previous.nuid);
            if let Err(err) = self.chunks.purge().filter(&old).await {
                tracing::warn!(object = %name, error = %err, "old chunks of a replaced object stay");
            }
        }
        Ok(size as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_digest_is_nats_format() {
        // sha256("") in the Object Store's base64url form.
        let empty = sha2::Sha256::digest(b"");
        assert_eq!(
            object_digest(&empty),
            "SHA-256=47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU="
        );
    }
}
