//! OCI distribution (v2) registry client: resolve a reference to a platform manifest,
//! stream blobs out (verified) and push blobs and manifests in.
//!
//! Written on `reqwest` rather than `oci-client` because the protocol is small and the
//! parts that matter here are berth's own: the `formats` module already has Docker's
//! reference rules, platform selection, manifest validation, challenge parsing and
//! `config.json` lookup, and oci-client brings its own copies of each (its own
//! reference type, its own platform resolver, its own 4 MiB rule or none). Writing the
//! HTTP part ourselves also keeps control of what the store needs most: errors that
//! name the image and blob and map onto `not_found`/`invalid`/`unavailable`, manifests
//! counted while streamed (never trusting Content-Length), blob bodies handed out as an
//! `AsyncRead` that verifies digest and size, retries only where they are safe, and the
//! push paths (monolithic, chunked with a chosen chunk size, cross-repo mount).
//!
//! Layout: `client` holds the transport (scheme choice, auth, retries, status →
//! error); `auth` the credential lookup and bearer-token cache; `pull` resolve and
//! blob fetches (resumed with Range when a body breaks off); `push` uploads; `image`
//! the whole-image calls the store's verbs use: [`RegistryClient::resolve_image`] and
//! [`RegistryClient::push_image`].

mod auth;
mod client;
mod error;
mod image;
mod pull;
mod push;

pub use client::RegistryClient;
pub use error::RegistryError;
pub use image::{PushedImage, ResolvedImage};
pub use pull::{BlobReader, RawManifest, ResolvedManifest};
pub use push::{BlobPushOutcome, PushBlobOptions};

use crate::formats::auth::Credentials;
use crate::formats::Digest;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Per-blob progress: `(blob digest, bytes done, bytes total)`. Called on every read of
/// the body, so the callee should throttle what it publishes.
pub type Progress = Arc<dyn Fn(&Digest, u64, u64) + Send + Sync>;

/// Settings of a [`RegistryClient`].
#[derive(Clone)]
pub struct RegistryConfig {
    /// Registries (`host[:port]`, or a bare host for every port) that may be spoken to
    /// over plain HTTP. Loopback registries always may.
    pub insecure_registries: Vec<String>,
    /// Docker `config.json` to read `auths` from; `None` reads no file.
    pub docker_config: Option<PathBuf>,
    /// Credentials per registry domain as written in references (`docker.io`,
    /// `127.0.0.1:5000`); these win over `docker_config`.
    pub credentials: BTreeMap<String, Credentials>,
    /// TCP + TLS connect timeout.
    pub connect_timeout: Duration,
    /// Total time for a small request (manifest, HEAD, upload start, token).
    pub request_timeout: Duration,
    /// Longest silence while streaming a blob before giving up.
    pub read_timeout: Duration,
    /// Extra attempts for idempotent requests (GET/HEAD) after connection errors, 5xx or 429.
    pub retries: u32,
    /// First backoff delay; doubles per attempt.
    pub retry_delay: Duration,
    /// Longest single wait, also the most of a `Retry-After` that is honoured.
    pub max_retry_delay: Duration,
    /// Blobs bigger than this are uploaded in chunks (PATCH with Content-Range).
    pub monolithic_limit: u64,
    /// Chunk size of a chunked upload (each chunk is buffered in memory).
    pub chunk_size: usize,
    /// How many blobs [`RegistryClient::fetch_blobs`] fetches at once.
    pub concurrency: usize,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            insecure_registries: Vec::new(),
            docker_config: default_docker_config(),
            credentials: BTreeMap::new(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            read_timeout: Duration::from_secs(60),
            retries: 3,
            retry_delay: Duration::from_millis(500),
            max_retry_delay: Duration::from_secs(10),
            monolithic_limit: 64 * 1024 * 1024,
            chunk_size: 16 * 1024 * 1024,
            concurrency: 4,
        }
    }
}

impl std::fmt::Debug for RegistryConfig {
    // Hand-written so that credentials stay out of logs (their Debug hides secrets, but
    // listing which registries have them is enough).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryConfig")
            .field("insecure_registries", &self.insecure_registries)
            .field("docker_config", &self.docker_config)
            .field(
                "credentials_for",
                &self.credentials.keys().collect::<Vec<_>>(),
            )
            .field("retries", &self.retries)
            .field("monolithic_limit", &self.monolithic_limit)
            .field("chunk_size", &self.chunk_size)
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

/// Docker's own lookup: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub fn default_docker_config() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker").join("config.json"))
}
