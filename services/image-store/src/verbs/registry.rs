//! What `pull` and `push` share: the registry client next to the store's verbs, the
//! per-blob progress they publish, registry errors as envelopes, and the record of
//! which repositories an image came from or went to (for cross-repo blob mounts).

use super::Verbs;
use crate::formats::{Digest, Reference};
use crate::registry::{Progress, RegistryClient, RegistryConfig, RegistryError};
use crate::store::backend::{Backend, BackendError};
use berth_bus::ServiceHandle;
use berth_proto::messages::image::{
    BlobProgress, ImagePullRequest, ImagePushRequest, ImageTransferProgress,
};
use berth_proto::subjects::{self, ImageVerb};
use berth_proto::ErrorEnvelope;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often progress (and so a heartbeat) is published during a pull or push.
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// Key prefix of origin records in `berth-images` (`origin.sha256.<hex>`).
const ORIGIN_PREFIX: &str = "origin.";
/// Repositories remembered per image; older ones drop out.
const MAX_ORIGINS: usize = 16;

/// The store's verbs plus a registry client; cheap to clone.
#[derive(Clone)]
pub struct RegistryVerbs {
    pub verbs: Verbs,
    pub registry: RegistryClient,
}

impl RegistryVerbs {
    /// A registry client with the service's settings (insecure registries; credentials
    /// from its config's `[credentials]`, then `$DOCKER_CONFIG/config.json` or
    /// `~/.docker/config.json`).
    pub fn new(verbs: Verbs, config: &crate::Config) -> anyhow::Result<Self> {
        let defaults = RegistryConfig::default();
        let registry = RegistryClient::new(RegistryConfig {
            insecure_registries: config.insecure_registries.clone(),
            monolithic_limit: config
                .push_monolithic_limit
                .unwrap_or(defaults.monolithic_limit),
            chunk_size: config.push_chunk_size.unwrap_or(defaults.chunk_size).max(1),
            credentials: config
                .credentials
                .iter()
                .map(|(host, login)| {
                    (
                        host.clone(),
                        crate::formats::auth::Credentials::Basic {
                            username: login.username.clone(),
                            password: login.password.clone(),
                        },
                    )
                })
                .collect(),
            ..defaults
        })?;
        Ok(RegistryVerbs { verbs, registry })
    }

    /// Registers the `pull` and `push` endpoints.
    pub async fn serve(&self, service: &mut ServiceHandle) -> anyhow::Result<()> {
        let me = self.clone();
        service
            .endpoint(
                ImageVerb::Pull.as_str(),
                subjects::image(ImageVerb::Pull),
                move |request: ImagePullRequest, context| {
                    let me = me.clone();
                    async move { me.pull(request, context).await }
                },
            )
            .await?;
        let me = self.clone();
        service
            .endpoint(
                ImageVerb::Push.as_str(),
                subjects::image(ImageVerb::Push),
                move |request: ImagePushRequest, context| {
                    let me = me.clone();
                    async move { me.push(request, context).await }
                },
            )
            .await
    }

    /// Remembers that `reference`'s repository holds the image `digest` (best effort:
    /// it only enables a mount later).
    pub async fn record_origin(&self, digest: &Digest, reference: &Reference) {
        let repository = format!("{}/{}", reference.domain(), reference.path());
        let key = origin_key(digest);
        let backend = self.verbs.store.backend();
        for _ in 0..5 {
            let entry = match backend.kv_get(&key).await {
                Ok(entry) => entry,
                Err(err) => {
                    tracing::debug!(key, error = %err, "cannot read origin record");
                    return;
                }
            };
            let mut record: OriginRecord = entry
                .as_ref()
                .and_then(|e| serde_json::from_slice(&e.value).ok())
                .unwrap_or_default();
            if record.repositories.contains(&repository) {
                return;
            }
            record.repositories.push(repository.clone());
            if record.repositories.len() > MAX_ORIGINS {
                record.repositories.remove(0);
            }
            let Ok(value) = serde_json::to_vec(&record) else {
                return;
            };
            let written = match &entry {
                None => backend.kv_create(&key, value).await,
                Some(e) => backend.kv_update(&key, value, e.revision).await,
            };
            match written {
                Ok(_) => return,
                Err(BackendError::Conflict) => continue,
                Err(err) => {
                    tracing::debug!(key, error = %err, "cannot write origin record");
                    return;
                }
            }
        }
    }

    /// Repositories (`domain/path`) known to hold the image `digest`.
    pub async fn origins(&self, digest: &Digest) -> Vec<String> {
        match self.verbs.store.backend().kv_get(&origin_key(digest)).await {
            Ok(Some(entry)) => serde_json::from_slice::<OriginRecord>(&entry.value)
                .map(|r| r.repositories)
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }
}

fn origin_key(digest: &Digest) -> String {
    format!(
        "{ORIGIN_PREFIX}{}.{}",
        digest.algorithm().name(),
        digest.hex()
    )
}

/// Repositories an image was pulled from or pushed to.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct OriginRecord {
    repositories: Vec<String>,
}

/// A registry error as the envelope the caller gets. A 401 also says where the
/// store looks for credentials, since that is what the operator has to fix.
pub fn registry_envelope(registry: &RegistryClient, err: RegistryError) -> ErrorEnvelope {
    let kind = err.kind();
    let message = match &err {
        RegistryError::Unauthorized { registry: host, .. } => format!(
            "{err} (no valid credentials for {host}: the image-store reads them from {})",
            registry
                .config()
                .docker_config
                .as_ref()
                .map_or("no Docker config file".to_string(), |p| p
                    .display()
                    .to_string())
        ),
        _ => err.to_string(),
    };
    ErrorEnvelope::new(kind, message)
}

/// Per-blob progress of one pull or push, shared with the registry client's callbacks.
#[derive(Clone)]
pub struct Tracker {
    image: String,
    blobs: Arc<Mutex<Vec<BlobProgress>>>,
}

impl Tracker {
    /// Progress of `image` (as the caller named it), no blobs yet.
    pub fn new(image: String) -> Self {
        Tracker {
            image,
            blobs: Arc::default(),
        }
    }

    /// The blobs to report on, all in state `status`.
    pub fn set(&self, blobs: Vec<(Digest, u64)>, status: &str) {
        if let Ok(mut all) = self.blobs.lock() {
            *all = blobs
                .into_iter()
                .map(|(digest, total)| BlobProgress {
                    digest: digest.to_string(),
                    done: 0,
                    total,
                    status: status.to_string(),
                })
                .collect();
        }
    }

    fn update(&self, digest: &Digest, done: Option<u64>, status: &str) {
        let wanted = digest.to_string();
        if let Ok(mut all) = self.blobs.lock() {
            if let Some(blob) = all.iter_mut().find(|b| b.digest == wanted) {
                blob.done = done.unwrap_or(blob.total);
                blob.status = status.to_string();
            }
        }
    }

    /// Marks a blob finished (`done`, `present`, `exists`, `mounted`).
    pub fn finish(&self, digest: &Digest, status: &str) {
        self.update(digest, None, status);
    }

    /// A registry-client callback that records bytes done under `status`.
    pub fn callback(&self, status: &'static str) -> Progress {
        let me = self.clone();
        Arc::new(move |digest: &Digest, done: u64, _total: u64| {
            me.update(digest, Some(done), status);
        })
    }

    /// What to publish now.
    pub fn snapshot(&self) -> ImageTransferProgress {
        ImageTransferProgress {
            image: self.image.clone(),
            blobs: self.blobs.lock().map(|b| b.clone()).unwrap_or_default(),
        }
    }
}
