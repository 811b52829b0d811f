//! The pull side: resolve a reference to one platform's manifest, and stream blobs
//! out of the registry verified against digest and size.

use super::client::{read_limited, LimitedReadError, RegistryClient, Req, Target};
use super::error::RegistryError;
use super::Progress;
use crate::formats::digest::{AsyncVerifyingReader, DigestError};
use crate::formats::manifest::{
    media, parse_manifest, select_platform, Descriptor, Manifest, ManifestError, ParsedManifest,
    MANIFEST_ACCEPT, MAX_MANIFEST_SIZE,
};
use crate::formats::{Digest, PlatformSpec, Reference};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};

/// Nested indexes followed at most this deep (an index of indexes is legal but rare).
const MAX_INDEX_DEPTH: usize = 3;

/// A manifest or index document exactly as the registry served it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawManifest {
    /// The bytes (the digest is over these, so they are stored unchanged).
    pub bytes: Vec<u8>,
    /// Media type: the body's `mediaType`, else the served Content-Type, else by shape.
    pub media_type: String,
    /// sha256 of `bytes` (or the reference's algorithm when pinned by digest).
    pub digest: Digest,
}

/// The single-platform manifest a reference resolves to.
#[derive(Clone, Debug)]
pub struct ResolvedManifest {
    /// The image manifest (bytes, media type, digest).
    pub manifest: RawManifest,
    /// It, parsed and validated (config + layer descriptors).
    pub parsed: Manifest,
    /// The index (manifest list) it was selected from, if the reference named one.
    pub index: Option<RawManifest>,
}

impl ResolvedManifest {
    /// The digest the reference itself points at: the index's when there was one.
    pub fn top_digest(&self) -> &Digest {
        self.index
            .as_ref()
            .map_or(&self.manifest.digest, |i| &i.digest)
    }
}

impl RegistryClient {
    /// Resolves `reference` (tag or digest) to the image manifest for `platform`:
    /// GET with every supported Accept type, body capped at 4 MiB while streamed, digest
    /// verified when the reference pins one, an index narrowed to `platform` and the
    /// chosen manifest fetched by digest (verified against the index's descriptor).
    /// Only manifests are fetched; no blob of another platform is touched.
    pub async fn resolve(
        &self,
        reference: &Reference,
        platform: &PlatformSpec,
    ) -> Result<ResolvedManifest, RegistryError> {
        let t = self.target(reference, "pull", &[]).await?;
        let top = self
            .get_manifest(&t, &manifest_ref(reference), reference.digest(), None)
            .await?;
        let mut index = None;
        let mut current = top;
        for _ in 0..=MAX_INDEX_DEPTH {
            match parse_manifest(&current.bytes, Some(&current.media_type), &t.image)? {
                ParsedManifest::Image(m) => {
                    return Ok(ResolvedManifest {
                        manifest: current,
                        parsed: *m,
                        index,
                    })
                }
                ParsedManifest::Index(i) => {
                    let chosen = select_platform(&i, platform, &t.image)?.clone();
                    let next = self
                        .get_manifest(
                            &t,
                            &chosen.digest.to_string(),
                            Some(&chosen.digest),
                            Some(&chosen),
                        )
                        .await?;
                    // The reference's own index is the one worth keeping; a nested one is
                    // just a step on the way.
                    if index.is_none() {
                        index = Some(current);
                    }
                    current = next;
                }
            }
        }
        Err(ManifestError::Inconsistent {
            image: t.image.clone(),
            reason: format!("indexes nested deeper than {MAX_INDEX_DEPTH}"),
        }
        .into())
    }

    /// Fetches the manifest or index `reference` names, unparsed (digest verified if
    /// the reference has one). For `inspect --raw`-like uses and pushing indexes on.
    pub async fn fetch_manifest(
        &self,
        reference: &Reference,
    ) -> Result<RawManifest, RegistryError> {
        let t = self.target(reference, "pull", &[]).await?;
        self.get_manifest(&t, &manifest_ref(reference), reference.digest(), None)
            .await
    }

    async fn get_manifest(
        &self,
        t: &Target,
        tag_or_digest: &str,
        expected: Option<&Digest>,
        descriptor: Option<&Descriptor>,
    ) -> Result<RawManifest, RegistryError> {
        let what = format!("manifest {tag_or_digest}");
        let mut req = Req::new(
            Method::GET,
            t.url(&format!("manifests/{tag_or_digest}"))?,
            &what,
        )
        .header(ACCEPT, MANIFEST_ACCEPT);
        req.timeout = Some(self.inner.config.request_timeout);
        let resp = self.send(t, req).await?;
        if resp.status() != StatusCode::OK {
            return Err(self.status_error(t, &what, resp).await);
        }
        let served = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            // `application/vnd…+json; charset=utf-8` happens; the parameter is noise.
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_string());
        let header_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Digest>().ok());
        let bytes = read_limited(resp, MAX_MANIFEST_SIZE)
            .await
            .map_err(|e| match e {
                LimitedReadError::TooLarge => RegistryError::Manifest(ManifestError::TooLarge {
                    image: t.image.clone(),
                    what: "manifest",
                    // The exact size is unknown: reading stopped at the limit.
                    size: MAX_MANIFEST_SIZE + 1,
                    limit: MAX_MANIFEST_SIZE,
                }),
                LimitedReadError::Transport(e) => self.unavailable(t, &what, &e),
            })?;
        let digest_err = |source| RegistryError::Digest {
            image: t.image.clone(),
            source,
        };
        if let Some(d) = descriptor {
            if d.size != bytes.len() as u64 {
                return Err(digest_err(DigestError::SizeMismatch {
                    subject: what.clone(),
                    expected: d.size,
                    actual: bytes.len() as u64,
                }));
            }
        }
        let digest = match expected {
            Some(e) => {
                e.verify_bytes(&bytes, &what).map_err(digest_err)?;
                e.clone()
            }
            None => {
                let d = Digest::sha256_of(&bytes);
                // By tag nothing is promised, but a registry that states a digest for
                // other bytes is serving something else than it claims.
                if let Some(h) = header_digest.filter(|h| h.algorithm() == d.algorithm()) {
                    if h != d {
                        return Err(digest_err(DigestError::Mismatch {
                            subject: what.clone(),
                            expected: h,
                            actual: d,
                        }));
                    }
                }
                d
            }
        };
        let media_type = media_type_of(&bytes, served.as_deref(), descriptor);
        Ok(RawManifest {
            bytes,
            media_type,
            digest,
        })
    }

    /// Whether the repository has the blob: `Some(size)` if so (HEAD, retried like GET).
    pub async fn blob_exists(
        &self,
        reference: &Reference,
        digest: &Digest,
    ) -> Result<Option<u64>, RegistryError> {
        let t = self.target(reference, "pull", &[]).await?;
        self.head_blob(&t, digest).await
    }

    pub(super) async fn head_blob(
        &self,
        t: &Target,
        digest: &Digest,
    ) -> Result<Option<u64>, RegistryError> {
        let what = format!("blob {digest}");
        let mut req = Req::new(Method::HEAD, t.url(&format!("blobs/{digest}"))?, &what);
        req.timeout = Some(self.inner.config.request_timeout);
        let resp = self.send(t, req).await?;
        match resp.status() {
            // reqwest reports a HEAD body as empty; the header has the blob's size.
            s if s.is_success() => Ok(Some(
                resp.headers()
                    .get(CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0),
            )),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.status_error(t, &what, resp).await),
        }
    }

    /// Streams a blob: the reader yields its bytes and fails (an `io::Error` that
    /// [`RegistryError::from_read_error`] classifies) on a digest or size mismatch, a
    /// truncated body or a dropped connection. A Content-Length other than `size` is
    /// refused before any byte is read. Redirects to blob storage are followed.
    pub async fn fetch_blob(
        &self,
        reference: &Reference,
        digest: &Digest,
        size: u64,
    ) -> Result<BlobReader, RegistryError> {
        self.fetch_blob_with_progress(reference, digest, size, None)
            .await
    }

    /// [`Self::fetch_blob`] calling `progress` as bytes arrive.
    pub async fn fetch_blob_with_progress(
        &self,
        reference: &Reference,
        digest: &Digest,
        size: u64,
        progress: Option<Progress>,
    ) -> Result<BlobReader, RegistryError> {
        let t = self.target(reference, "pull", &[]).await?;
        let what = format!("blob {digest}");
        let req = Req::new(Method::GET, t.url(&format!("blobs/{digest}"))?, &what);
        let resp = self.send(&t, req).await?;
        if resp.status() != StatusCode::OK {
            return Err(self.status_error(&t, &what, resp).await);
        }
        if let Some(len) = resp.content_length() {
            if len != size {
                return Err(RegistryError::Digest {
                    image: t.image.clone(),
                    source: DigestError::SizeMismatch {
                        subject: what,
                        expected: size,
                        actual: len,
                    },
                });
            }
        }
        let url = t.url(&format!("blobs/{digest}"))?;
        let stream = resumable_body(BodyState {
            client: self.clone(),
            target: t.clone(),
            url,
            what: what.clone(),
            resp: Some(resp),
            offset: 0,
            skip: 0,
            size,
            resumes_left: self.inner.config.retries,
            resumed: 0,
        });
        let reader = tokio_util::io::StreamReader::new(stream);
        let subject = format!("{what} of {}", t.image);
        Ok(BlobReader {
            inner: AsyncVerifyingReader::new(reader, digest.clone(), Some(size), subject),
            digest: digest.clone(),
            size,
            done: 0,
            progress,
        })
    }

    /// Fetches a small blob (an image config) into memory, verified. `limit` caps it.
    pub async fn fetch_blob_bytes(
        &self,
        reference: &Reference,
        digest: &Digest,
        size: u64,
        limit: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        let image = reference.familiar();
        let what = format!("blob {digest}");
        if size > limit {
            return Err(RegistryError::Invalid {
                image,
                reason: format!("{what} is {size} bytes, over the {limit}-byte limit"),
            });
        }
        let mut r = self.fetch_blob(reference, digest, size).await?;
        let mut out = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        tokio::io::AsyncReadExt::read_to_end(&mut r, &mut out)
            .await
            .map_err(|e| RegistryError::from_read_error(&image, &what, e))?;
        Ok(out)
    }

    /// Fetches `blobs` with at most `config.concurrency` at once, handing each verified
    /// stream to `sink` (e.g. a copy into the object store), and returns the sinks'
    /// results in the order of `blobs`. The first error stops the rest. The caller
    /// filters out blobs it already has.
    pub async fn fetch_blobs<T, E, F, Fut>(
        &self,
        reference: &Reference,
        blobs: &[Descriptor],
        progress: Option<Progress>,
        sink: F,
    ) -> Result<Vec<T>, E>
    where
        F: Fn(Descriptor, BlobReader) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: From<RegistryError>,
    {
        let sink = &sink;
        let jobs = blobs.iter().cloned().map(|d| {
            let progress = progress.clone();
            async move {
                let reader = self
                    .fetch_blob_with_progress(reference, &d.digest, d.size, progress)
                    .await?;
                sink(d, reader).await
            }
        });
        futures::stream::iter(jobs)
            .buffered(self.inner.config.concurrency.max(1))
            .try_collect()
            .await
    }
}

type BodyStream = Pin<Box<dyn futures::Stream<Item = io::Result<Bytes>> + Send>>;

/// Where a blob download stands, so that a body that breaks off can be picked up again.
struct BodyState {
    client: RegistryClient,
    target: Target,
    /// The registry's blob URL (not a storage redirect's, which may have expired).
    url: reqwest::Url,
    what: String,
    resp: Option<reqwest::Response>,
    /// Bytes handed out so far.
    offset: u64,
    /// Bytes still to drop from a response that ignored our Range and started at 0.
    skip: u64,
    size: u64,
    resumes_left: u32,
    resumed: u32,
}

impl BodyState {
    fn broke_off(&self, reason: String) -> io::Error {
        io::Error::other(RegistryError::Unavailable {
            image: self.target.image.clone(),
            what: self.what.clone(),
            registry: self.target.host.clone(),
            reason: format!(
                "blob body broke off after {} of {} bytes ({} resumes): {reason}",
                self.offset, self.size, self.resumed
            ),
        })
    }

    /// GET with `Range: bytes=<offset>-`. A 206 continues where we stopped; a 200
    /// (registries may ignore Range) is read from the start with the known part dropped.
    async fn resume(&mut self) -> io::Result<()> {
        let range = format!("bytes={}-", self.offset);
        let req = Req::new(Method::GET, self.url.clone(), &self.what)
            .header(reqwest::header::RANGE, &range);
        let resp = self
            .client
            .send(&self.target, req)
            .await
            .map_err(io::Error::other)?;
        match resp.status() {
            StatusCode::PARTIAL_CONTENT => {
                let start = resp
                    .headers()
                    .get(reqwest::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.parse::<u64>().ok());
                if start != Some(self.offset) {
                    return Err(io::Error::other(self.client.protocol(
                        &self.target,
                        &self.what,
                        format!("asked for {range}, got Content-Range {start:?}"),
                    )));
                }
                self.skip = 0;
            }
            StatusCode::OK => self.skip = self.offset,
            _ => {
                return Err(io::Error::other(
                    self.client
                        .status_error(&self.target, &self.what, resp)
                        .await,
                ))
            }
        }
        self.resp = Some(resp);
        Ok(())
    }
}

/// The blob body as a byte stream that resumes (bounded by `retries`) when the
/// connection breaks mid-way, so a reset near the end of a big layer does not
/// restart the whole download. Verification happens above, over the joined bytes.
fn resumable_body(state: BodyState) -> BodyStream {
    Box::pin(futures::stream::try_unfold(state, |mut st| async move {
        loop {
            let Some(resp) = st.resp.as_mut() else {
                st.resume().await?;
                continue;
            };
            match resp.chunk().await {
                Ok(Some(mut b)) => {
                    if st.skip > 0 {
                        let drop = usize::try_from(st.skip).unwrap_or(usize::MAX).min(b.len());
                        st.skip -= drop as u64;
                        b = b.slice(drop..);
                        if b.is_empty() {
                            continue;
                        }
                    }
                    st.offset += b.len() as u64;
                    return Ok(Some((b, st)));
                }
                Ok(None) => return Ok(None),
                Err(e) => {
                    let reason = super::client::error_chain(&e);
                    if st.resumes_left == 0 || st.offset >= st.size {
                        return Err(st.broke_off(reason));
                    }
                    tracing::debug!(image = %st.target.image, what = %st.what, offset = st.offset, %reason, "resuming blob");
                    st.resumes_left -= 1;
                    st.resumed += 1;
                    st.resp = None;
                    tokio::time::sleep(st.client.inner.config.retry_delay).await;
                }
            }
        }
    }))
}

/// A blob's body being streamed: verified against digest and size, reporting progress.
pub struct BlobReader {
    inner: AsyncVerifyingReader<tokio_util::io::StreamReader<BodyStream, Bytes>>,
    digest: Digest,
    size: u64,
    done: u64,
    progress: Option<Progress>,
}

impl BlobReader {
    /// The blob being read.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Its expected size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.done
    }

    /// Whether it was read to the end and matched digest and size.
    pub fn is_verified(&self) -> bool {
        self.inner.is_verified()
    }
}

impl std::fmt::Debug for BlobReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "BlobReader({}, {}/{})",
            self.digest, self.done, self.size
        )
    }
}

impl AsyncRead for BlobReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
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

/// The path segment for a reference's manifest: its digest if pinned, else its tag.
fn manifest_ref(reference: &Reference) -> String {
    match (reference.digest(), reference.tag()) {
        (Some(d), _) => d.to_string(),
        (None, Some(t)) => t.to_string(),
        (None, None) => crate::formats::reference::DEFAULT_TAG.to_string(),
    }
}

/// Body `mediaType` first (it is what the digest covers), then what the registry or
/// descriptor said, then the shape (OCI allows omitting it).
fn media_type_of(bytes: &[u8], served: Option<&str>, descriptor: Option<&Descriptor>) -> String {
    #[derive(serde::Deserialize)]
    struct Peek {
        #[serde(rename = "mediaType", default)]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
    }
    let peek: Option<Peek> = serde_json::from_slice(bytes).ok();
    if let Some(m) = peek.as_ref().and_then(|p| p.media_type.clone()) {
        return m;
    }
    let generic = |s: &&str| !s.is_empty() && *s != "application/json" && *s != "text/plain";
    if let Some(s) = served.filter(generic) {
        return s.to_string();
    }
    if let Some(d) = descriptor {
        return d.media_type.clone();
    }
    if peek.is_some_and(|p| p.manifests.is_some()) {
        media::OCI_INDEX.to_string()
    } else {
        media::OCI_MANIFEST.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_type_preference() {
        let body =
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;
        assert_eq!(
            media_type_of(body, Some("application/json"), None),
            media::OCI_MANIFEST
        );
        let bare = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert_eq!(
            media_type_of(bare, Some("application/json"), None),
            media::OCI_INDEX
        );
        assert_eq!(
            media_type_of(bare, Some(media::DOCKER_MANIFEST_LIST), None),
            media::DOCKER_MANIFEST_LIST
        );
        let bare = br#"{"schemaVersion":2,"config":{}}"#;
        assert_eq!(media_type_of(bare, None, None), media::OCI_MANIFEST);
    }

    #[test]
    fn manifest_path_segment() {
        let d = Digest::sha256_of(b"x");
        let r = Reference::parse("a/b:t").expect("ref");
        assert_eq!(manifest_ref(&r), "t");
        assert_eq!(manifest_ref(&r.with_digest(d.clone())), d.to_string());
    }
}
