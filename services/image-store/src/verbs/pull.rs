//! `pull`: an image from a registry into the store (`docker pull`).
//!
//! Same write order as import and load (pin, blobs, commit with references last), but
//! the layers are fetched concurrently and streamed straight into the Object Store,
//! verified while written. A blob already stored is not fetched; a blob another pull
//! (on this or another instance) is writing is waited for, not fetched twice — the
//! store's one-writer-per-blob claim does that, and our fetch only opens its HTTP
//! request once the store decides we are the writer ([`LazyBlob`]).

use super::registry::{registry_envelope, RegistryVerbs, Tracker, PROGRESS_INTERVAL};
use super::{actions, invalid};
use crate::formats::digest::digest_error_of;
use crate::formats::{Digest, ImageToStore, PlatformSpec, Reference};
use crate::registry::{BlobReader, RegistryClient, RegistryError};
use berth_bus::{ProgressSink, RequestContext};
use berth_proto::messages::image::{ImagePullReply, ImagePullRequest, StoredImage};
use berth_proto::{ErrorEnvelope, ErrorKind};
use futures::{StreamExt, TryStreamExt};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};
use tracing::Instrument;

impl RegistryVerbs {
    /// Handles `pull`.
    pub async fn pull(
        &self,
        request: ImagePullRequest,
        context: RequestContext,
    ) -> Result<ImagePullReply, ErrorEnvelope> {
        let reference = Reference::parse(&request.reference).map_err(invalid)?;
        let platform = super::requested_platform(request.platform.as_deref())?;
        let sink = ProgressSink::new(context.client, request.progress.clone(), context.encoding);
        let tracker = Tracker::new(reference.familiar());
        let span = tracing::info_span!("pull", image = %reference.familiar());
        let outcome = sink
            .heartbeat_while(
                PROGRESS_INTERVAL,
                || tracker.snapshot(),
                self.pull_into_store(&reference, &platform, &tracker),
            )
            .instrument(span)
            .await;
        sink.publish(&tracker.snapshot()).await;
        if let Err(err) = &outcome {
            tracing::warn!(image = %reference.familiar(), code = ?err.code, error = %err.message, "pull failed");
        }
        outcome
    }

    async fn pull_into_store(
        &self,
        reference: &Reference,
        platform: &PlatformSpec,
        tracker: &Tracker,
    ) -> Result<ImagePullReply, ErrorEnvelope> {
        let resolved = self
            .registry
            .resolve_image(reference, platform)
            .await
            .map_err(|err| registry_envelope(&self.registry, err))?;
        let registry_digest = resolved.resolved.top_digest().to_string();
        let image = resolved.image;
        let store = &self.verbs.store;
        let record = crate::store::image_record(&image)?;
        // Pinned before any byte is written, so a concurrent prune or rmi of another
        // image sharing these blobs cannot collect them under us.
        store.pin(&image.manifest_digest, &record.blobs()).await?;
        let stored = self.fetch_and_commit(reference, &image, tracker).await;
        if stored.is_err() {
            // A refused pull (digest mismatch, broken layer) leaves no blob behind.
            self.verbs.abandon(&image, &record.blobs()).await;
        }
        let (committed, written, present) = stored?;
        let name = reference.familiar();
        let digest = image.manifest_digest.to_string();
        tracing::info!(image = %name, digest, registry_digest, blobs_written = written, layers_present = present, "pulled image");
        self.record_origin(&image.manifest_digest, reference).await;
        self.verbs
            .event(
                actions::PULL,
                &digest,
                committed.references.first().map(String::as_str),
            )
            .await;
        for r in &committed.references {
            self.verbs.event(actions::TAG, &digest, Some(r)).await;
        }
        Ok(ImagePullReply {
            image: StoredImage {
                digest,
                config_digest: image.config_digest.to_string(),
                references: committed.references,
                blobs_written: written,
            },
            registry_digest,
            layers_present: present,
        })
    }

    /// Writes the config and the layers the store lacks, then the image record.
    /// Returns the commit, the blobs written and the layers that were already there.
    async fn fetch_and_commit(
        &self,
        reference: &Reference,
        image: &ImageToStore,
        tracker: &Tracker,
    ) -> Result<(crate::store::Committed, u32, u32), ErrorEnvelope> {
        let store = &self.verbs.store;
        let mut written = 0u32;
        if store.put_config(image).await? {
            written += 1;
        }
        // A manifest may list the same layer twice (an empty layer in two steps).
        let mut layers: Vec<(usize, Digest, u64)> = Vec::new();
        for (i, layer) in image.layers.iter().enumerate() {
            if !layers.iter().any(|(_, d, _)| *d == layer.digest) {
                layers.push((i + 1, layer.digest.clone(), layer.size));
            }
        }
        tracker.set(
            layers
                .iter()
                .map(|(_, digest, size)| (digest.clone(), *size))
                .collect(),
            "waiting",
        );
        let mut missing = Vec::new();
        let mut present = 0u32;
        for (n, digest, size) in layers {
            if store.has_blob(&digest).await? {
                tracker.finish(&digest, "present");
                present += 1;
            } else {
                missing.push((n, digest, size));
            }
        }
        let concurrency = self.registry.config().concurrency.max(1);
        let fetched: u32 = futures::stream::iter(
            missing
                .into_iter()
                .map(|(n, digest, size)| self.fetch_layer(reference, n, digest, size, tracker)),
        )
        .buffer_unordered(concurrency)
        .try_fold(0u32, |sum, wrote| async move { Ok(sum + u32::from(wrote)) })
        .await?;
        written += fetched;
        let committed = store.commit(image).await?;
        Ok((committed, written, present))
    }

    /// Streams one layer into the store; `Ok(true)` when we wrote it, `Ok(false)` when
    /// it turned out to be there (written meanwhile by another pull).
    async fn fetch_layer(
        &self,
        reference: &Reference,
        n: usize,
        digest: Digest,
        size: u64,
        tracker: &Tracker,
    ) -> Result<bool, ErrorEnvelope> {
        let name = reference.familiar();
        let failure = Arc::new(Mutex::new(None));
        let reader = LazyBlob::new(
            self.registry.clone(),
            reference.clone(),
            digest.clone(),
            size,
            tracker.clone(),
            Arc::clone(&failure),
        );
        let subject = format!("layer {n} ({digest}) of {name}");
        match self
            .verbs
            .store
            .put_blob(&digest, size, Coalesce::new(reader), &subject)
            .await
        {
            Ok(wrote) => {
                tracker.finish(&digest, if wrote { "done" } else { "present" });
                Ok(wrote)
            }
            Err(err) => {
                // The store only sees "the input failed"; what the registry said (and
                // so whether retrying can help) is kept by the reader.
                let seen = failure.lock().ok().and_then(|mut f| f.take());
                Err(match seen {
                    Some((kind, message)) => ErrorEnvelope::new(kind, message),
                    None => err.into(),
                })
            }
        }
    }
}

/// Bytes gathered per read handed to the store: the Object Store's chunk size.
const COALESCE: usize = 128 * 1024;

/// Answers a read only when the caller's buffer can be filled (or the body ended).
/// The Object Store publishes one chunk, and waits for its ack, per read of its input;
/// straight from a socket that is one small chunk per network read, and the acks then
/// cost more than the download.
struct Coalesce<R> {
    inner: R,
    buf: Vec<u8>,
    filled: usize,
    eof: bool,
}

impl<R> Coalesce<R> {
    fn new(inner: R) -> Self {
        Coalesce {
            inner,
            buf: vec![0; COALESCE],
            filled: 0,
            eof: false,
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Coalesce<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let want = out.remaining().min(this.buf.len());
        while this.filled < want && !this.eof {
            let mut part = ReadBuf::new(&mut this.buf[this.filled..]);
            match Pin::new(&mut this.inner).poll_read(cx, &mut part) {
                // The inner reader registered the waker; what we gathered waits.
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Ready(Ok(())) => match part.filled().len() {
                    0 => this.eof = true,
                    n => this.filled += n,
                },
            }
        }
        let n = this.filled.min(out.remaining());
        out.put_slice(&this.buf[..n]);
        this.buf.copy_within(n..this.filled, 0);
        this.filled -= n;
        Poll::Ready(Ok(()))
    }
}

type Opening = Pin<Box<dyn Future<Output = Result<BlobReader, RegistryError>> + Send>>;

/// A registry blob that is requested only when first read: the store reads its input
/// only once it holds the blob's writer claim, so a pull that waits for another
/// writer never keeps an idle download open. Remembers the first failure with its
/// error kind.
struct LazyBlob {
    opening: Option<Opening>,
    reader: Option<BlobReader>,
    image: String,
    digest: Digest,
    failure: Arc<Mutex<Option<(ErrorKind, String)>>>,
}

impl LazyBlob {
    fn new(
        registry: RegistryClient,
        reference: Reference,
        digest: Digest,
        size: u64,
        tracker: Tracker,
        failure: Arc<Mutex<Option<(ErrorKind, String)>>>,
    ) -> Self {
        let progress = tracker.callback("downloading");
        let wanted = digest.clone();
        let image = reference.familiar();
        let opening: Opening = Box::pin(async move {
            registry
                .fetch_blob_with_progress(&reference, &wanted, size, Some(progress))
                .await
        });
        LazyBlob {
            opening: Some(opening),
            reader: None,
            image,
            digest,
            failure,
        }
    }

    fn remember(&self, kind: ErrorKind, message: String) {
        if let Ok(mut slot) = self.failure.lock() {
            slot.get_or_insert((kind, message));
        }
    }

    /// The error kind of a failed read: digest/size mismatches are bad content, a
    /// registry error keeps its own kind, anything else is the connection's fault.
    fn classify(&self, err: &io::Error) -> (ErrorKind, String) {
        if let Some(d) = digest_error_of(err) {
            return (ErrorKind::Invalid, d.to_string());
        }
        if let Some(r) = err
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<RegistryError>())
        {
            return (r.kind(), r.to_string());
        }
        (
            ErrorKind::Unavailable,
            format!("{}: blob {}: {err}", self.image, self.digest),
        )
    }
}

impl AsyncRead for LazyBlob {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(opening) = this.opening.as_mut() {
            match opening.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(reader)) => {
                    this.opening = None;
                    this.reader = Some(reader);
                }
                Poll::Ready(Err(err)) => {
                    this.opening = None;
                    this.remember(err.kind(), err.to_string());
                    return Poll::Ready(Err(io::Error::other(err)));
                }
            }
        }
        let Some(reader) = this.reader.as_mut() else {
            return Poll::Ready(Err(io::Error::other(format!(
                "blob {}: read after its fetch failed",
                this.digest
            ))));
        };
        let polled = Pin::new(reader).poll_read(cx, buf);
        if let Poll::Ready(Err(err)) = &polled {
            let (kind, message) = this.classify(err);
            this.remember(kind, message);
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// Hands out at most 1000 bytes per read, like a socket.
    struct Trickle(std::io::Cursor<Vec<u8>>);

    impl AsyncRead for Trickle {
        fn poll_read(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            let mut small = vec![0u8; buf.remaining().min(1000)];
            let n = std::io::Read::read(&mut this.0, &mut small)?;
            buf.put_slice(&small[..n]);
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn coalesced_reads_fill_whole_chunks_and_keep_every_byte() {
        let data: Vec<u8> = (0..(2 * COALESCE + 777)).map(|i| (i % 251) as u8).collect();
        let mut reader = Coalesce::new(Trickle(std::io::Cursor::new(data.clone())));
        let mut out = Vec::new();
        let mut sizes = Vec::new();
        loop {
            let mut chunk = vec![0u8; COALESCE];
            let n = reader.read(&mut chunk).await.expect("read");
            if n == 0 {
                break;
            }
            sizes.push(n);
            out.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(out, data);
        assert_eq!(sizes, vec![COALESCE, COALESCE, 777]);
    }
}
