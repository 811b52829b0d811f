//! The push side: blobs (skip if present, cross-repo mount, monolithic or chunked
//! upload) and manifests.

use super::client::{error_chain, RegistryClient, Req, ReqBody, Target};
use super::error::RegistryError;
use super::Progress;
use crate::formats::digest::{digest_error_of, AsyncVerifyingReader, DigestError};
use crate::formats::{Digest, Reference};
use bytes::Bytes;
use futures::TryStreamExt;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use reqwest::{Method, Response, StatusCode, Url};
use std::io;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt};

const OCTET_STREAM: &str = "application/octet-stream";

/// Options of [`RegistryClient::push_blob`].
#[derive(Clone, Default)]
pub struct PushBlobOptions {
    /// A repository on the same registry known to hold the blob: it is mounted from
    /// there instead of uploaded, when the registry allows.
    pub mount_from: Option<Reference>,
    /// Called as bytes are uploaded.
    pub progress: Option<Progress>,
}

/// What [`RegistryClient::push_blob`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobPushOutcome {
    /// HEAD found it in the repository: nothing sent.
    AlreadyExists,
    /// Mounted from `mount_from`: nothing sent.
    Mounted,
    /// Uploaded, in one PUT (`chunks == 0`) or in that many PATCH chunks.
    Uploaded {
        /// PATCH requests used; 0 for a monolithic upload.
        chunks: u32,
    },
}

impl RegistryClient {
    /// Pushes one blob to `reference`'s repository: skipped when HEAD says it is there,
    /// mounted when `opts.mount_from` names a repository on the same registry and the
    /// registry agrees, else uploaded from `reader` — one streamed PUT up to
    /// `monolithic_limit`, PATCH chunks of `chunk_size` above. `reader` is verified
    /// against `digest` and `size` while sent; the registry verifies again.
    pub async fn push_blob<R>(
        &self,
        reference: &Reference,
        digest: &Digest,
        size: u64,
        reader: R,
        opts: &PushBlobOptions,
    ) -> Result<BlobPushOutcome, RegistryError>
    where
        R: AsyncRead + Send + Unpin + 'static,
    {
        self.push_blob_from(reference, digest, size, opts, || async { Ok(reader) })
            .await
    }

    /// [`Self::push_blob`] that opens its source only when an upload is needed (not
    /// when the blob exists or is mounted), e.g. an object-store reader.
    pub async fn push_blob_from<R, F, Fut>(
        &self,
        reference: &Reference,
        digest: &Digest,
        size: u64,
        opts: &PushBlobOptions,
        open: F,
    ) -> Result<BlobPushOutcome, RegistryError>
    where
        R: AsyncRead + Send + Unpin + 'static,
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<R, RegistryError>>,
    {
        let from = opts.mount_from.as_ref().filter(|f| {
            f.registry_host() == reference.registry_host() && f.path() != reference.path()
        });
        let extra: Vec<String> = from
            .map(|f| format!("repository:{}:pull", f.path()))
            .into_iter()
            .collect();
        let t = self.target(reference, "pull,push", &extra).await?;
        let what = format!("blob {digest}");
        // The HEAD also answers the auth challenge for the push scope, so the upload
        // requests below (one of which streams and cannot be resent) go out authorized.
        if self.head_blob(&t, digest).await?.is_some() {
            return Ok(BlobPushOutcome::AlreadyExists);
        }
        let mut start_url = t.url("blobs/uploads/")?;
        if let Some(f) = from {
            start_url
                .query_pairs_mut()
                .append_pair("mount", &digest.to_string())
                .append_pair("from", f.path());
        }
        let mut req = Req::new(Method::POST, start_url, &what).header(CONTENT_LENGTH, "0");
        req.timeout = Some(self.inner.config.request_timeout);
        let resp = self.send(&t, req).await?;
        match resp.status() {
            StatusCode::CREATED if from.is_some() => return Ok(BlobPushOutcome::Mounted),
            StatusCode::ACCEPTED => {}
            _ => return Err(self.status_error(&t, &what, resp).await),
        }
        let mut location = self.location(&t, &what, &resp)?;
        let reader = match open().await {
            Ok(r) => Verified::new(r, digest, size, &t, opts.progress.clone()),
            Err(e) => {
                self.cancel_upload(&t, &what, location).await;
                return Err(e);
            }
        };
        let result = if size <= self.inner.config.monolithic_limit {
            self.put_monolithic(&t, &what, location.clone(), digest, size, reader)
                .await
                .map(|()| BlobPushOutcome::Uploaded { chunks: 0 })
        } else {
            self.put_chunked(&t, &what, &mut location, digest, size, reader)
                .await
                .map(|chunks| BlobPushOutcome::Uploaded { chunks })
        };
        if result.is_err() {
            self.cancel_upload(&t, &what, location).await;
        }
        result
    }

    /// Best effort: tells the registry to drop a failed upload session now rather than
    /// keep its partial data until its own purge (a week by default in distribution).
    async fn cancel_upload(&self, t: &Target, what: &str, location: Url) {
        let mut req = Req::new(Method::DELETE, location, what);
        req.timeout = Some(self.inner.config.request_timeout);
        match self.send(t, req).await {
            Ok(resp) => {
                tracing::debug!(image = %t.image, what, status = %resp.status(), "upload cancelled")
            }
            Err(e) => tracing::debug!(image = %t.image, what, error = %e, "upload cancel failed"),
        }
    }

    /// [`Self::push_blob`] for bytes in memory (configs, small test blobs).
    pub async fn push_blob_bytes(
        &self,
        reference: &Reference,
        bytes: Vec<u8>,
        opts: &PushBlobOptions,
    ) -> Result<(Digest, BlobPushOutcome), RegistryError> {
        let digest = Digest::sha256_of(&bytes);
        let size = bytes.len() as u64;
        let outcome = self
            .push_blob(reference, &digest, size, io::Cursor::new(bytes), opts)
            .await?;
        Ok((digest, outcome))
    }

    async fn put_monolithic<R: AsyncRead + Send + Unpin + 'static>(
        &self,
        t: &Target,
        what: &str,
        mut location: Url,
        digest: &Digest,
        size: u64,
        reader: Verified<R>,
    ) -> Result<(), RegistryError> {
        location
            .query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        // If the local source fails (or does not match its digest) the body stream
        // errors and the request dies; keep that error to report it instead of the
        // transport's "body error".
        let local_error: Arc<Mutex<Option<io::Error>>> = Arc::default();
        let slot = local_error.clone();
        let stream = tokio_util::io::ReaderStream::new(reader).inspect_err(move |e| {
            if let Ok(mut s) = slot.lock() {
                *s = Some(io::Error::new(e.kind(), e.to_string()));
                if let Some(d) = digest_error_of(e) {
                    *s = Some(io::Error::new(io::ErrorKind::InvalidData, d.clone()));
                }
            }
        });
        let mut req = Req::new(Method::PUT, location, what)
            .header(CONTENT_TYPE, OCTET_STREAM)
            .header(CONTENT_LENGTH, &size.to_string());
        req.body = ReqBody::Stream(Some(reqwest::Body::wrap_stream(stream)));
        let sent = self.send(t, req).await;
        let local = local_error.lock().ok().and_then(|mut s| s.take());
        if let Some(e) = local {
            return Err(local_read_error(t, what, e));
        }
        let resp = sent?;
        self.finish_upload(t, what, digest, resp).await
    }

    async fn put_chunked<R: AsyncRead + Send + Unpin + 'static>(
        &self,
        t: &Target,
        what: &str,
        location: &mut Url,
        digest: &Digest,
        size: u64,
        mut reader: Verified<R>,
    ) -> Result<u32, RegistryError> {
        let chunk_size = self.inner.config.chunk_size.max(1);
        let mut offset = 0u64;
        let mut chunks = 0u32;
        loop {
            let chunk = read_chunk(&mut reader, chunk_size)
                .await
                .map_err(|e| local_read_error(t, what, e))?;
            if chunk.is_empty() {
                break;
            }
            let end = offset + chunk.len() as u64 - 1;
            let mut req = Req::new(Method::PATCH, location.clone(), what)
                .header(CONTENT_TYPE, OCTET_STREAM)
                .header(CONTENT_LENGTH, &chunk.len().to_string())
                .header(reqwest::header::CONTENT_RANGE, &format!("{offset}-{end}"));
            req.body = ReqBody::Bytes(Bytes::from(chunk));
            let resp = self.send(t, req).await?;
            if resp.status() != StatusCode::ACCEPTED {
                return Err(self.status_error(t, what, resp).await);
            }
            // Each answer carries the URL for the next request (its state token moves on).
            *location = self.location(t, what, &resp)?;
            offset = end + 1;
            chunks += 1;
        }
        if offset != size {
            // Verified already checks this; kept so a bug there cannot commit a short blob.
            return Err(local_read_error(
                t,
                what,
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    DigestError::SizeMismatch {
                        subject: what.to_string(),
                        expected: size,
                        actual: offset,
                    },
                ),
            ));
        }
        let mut done = location.clone();
        done.query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        let mut req = Req::new(Method::PUT, done, what).header(CONTENT_LENGTH, "0");
        req.timeout = Some(self.inner.config.request_timeout);
        let resp = self.send(t, req).await?;
        self.finish_upload(t, what, digest, resp).await?;
        Ok(chunks)
    }

    async fn finish_upload(
        &self,
        t: &Target,
        what: &str,
        digest: &Digest,
        resp: Response,
    ) -> Result<(), RegistryError> {
        if resp.status() != StatusCode::CREATED {
            return Err(self.status_error(t, what, resp).await);
        }
        check_digest_header(self, t, what, digest, &resp)
    }

    /// Pushes a manifest or index under the reference's tag (or its digest when it has
    /// no tag) and returns its digest. A reference with a digest must match the bytes.
    /// Everything it refers to must already be in the repository.
    pub async fn push_manifest(
        &self,
        reference: &Reference,
        bytes: Vec<u8>,
        media_type: &str,
    ) -> Result<Digest, RegistryError> {
        let t = self.target(reference, "pull,push", &[]).await?;
        let digest = match reference.digest() {
            Some(d) => {
                d.verify_bytes(&bytes, "manifest")
                    .map_err(|source| RegistryError::Digest {
                        image: t.image.clone(),
                        source,
                    })?;
                d.clone()
            }
            None => Digest::sha256_of(&bytes),
        };
        let tag_or_digest = match reference.tag() {
            Some(tag) => tag.to_string(),
            None => digest.to_string(),
        };
        let what = format!("manifest {tag_or_digest}");
        let len = bytes.len().to_string();
        let mut req = Req::new(
            Method::PUT,
            t.url(&format!("manifests/{tag_or_digest}"))?,
            &what,
        )
        .header(CONTENT_TYPE, media_type)
        .header(CONTENT_LENGTH, &len);
        req.body = ReqBody::Bytes(Bytes::from(bytes));
        req.timeout = Some(self.inner.config.request_timeout);
        let resp = self.send(&t, req).await?;
        if resp.status() != StatusCode::CREATED {
            return Err(self.status_error(&t, &what, resp).await);
        }
        check_digest_header(self, &t, &what, &digest, &resp)?;
        Ok(digest)
    }

    /// The upload URL from a Location header, relative ones resolved against the registry.
    fn location(&self, t: &Target, what: &str, resp: &Response) -> Result<Url, RegistryError> {
        let loc = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| self.protocol(t, what, "upload answer without a Location header"))?;
        resp.url()
            .join(loc)
            .map_err(|e| self.protocol(t, what, format!("bad Location {loc:?}: {e}")))
    }
}

/// A registry that confirms a different digest than was pushed stored something else.
fn check_digest_header(
    c: &RegistryClient,
    t: &Target,
    what: &str,
    digest: &Digest,
    resp: &Response,
) -> Result<(), RegistryError> {
    let header = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok());
    match header {
        Some(h) if h != digest.to_string() => Err(c.protocol(
            t,
            what,
            format!("registry confirmed digest {h}, expected {digest}"),
        )),
        _ => Ok(()),
    }
}

fn local_read_error(t: &Target, what: &str, e: io::Error) -> RegistryError {
    if let Some(d) = digest_error_of(&e) {
        return RegistryError::Digest {
            image: t.image.clone(),
            source: d.clone(),
        };
    }
    RegistryError::Io {
        image: t.image.clone(),
        what: format!("reading the local {what}: {}", error_chain(&e)),
        source: e,
    }
}

/// Fills up to `n` bytes (fewer only at end of stream).
async fn read_chunk<R: AsyncRead + Unpin>(r: &mut R, n: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    let mut filled = 0;
    while filled < n {
        let k = r.read(&mut buf[filled..]).await?;
        if k == 0 {
            break;
        }
        filled += k;
    }
    buf.truncate(filled);
    Ok(buf)
}

/// The local source of a push: verified and reporting progress.
struct Verified<R> {
    inner: AsyncVerifyingReader<R>,
    digest: Digest,
    size: u64,
    done: u64,
    progress: Option<Progress>,
}

impl<R> Verified<R> {
    fn new(r: R, digest: &Digest, size: u64, t: &Target, progress: Option<Progress>) -> Self {
        Verified {
            inner: AsyncVerifyingReader::new(
                r,
                digest.clone(),
                Some(size),
                format!("blob {digest} of {} (local source)", t.image),
            ),
            digest: digest.clone(),
            size,
            done: 0,
            progress,
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Verified<R> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut this.inner).poll_read(cx, buf);
        if let std::task::Poll::Ready(Ok(())) = r {
            let n = (buf.filled().len() - before) as u64;
            if n > 0 {
                this.done += n;
                if let Some(p) = &this.progress {
                    p(&this.digest, this.done, this.size);
                }
            }
        }
        r
    }
}
