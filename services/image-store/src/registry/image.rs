//! Whole-image helpers over the single verbs: what the store's pull and push verbs
//! need in one call each (manifest + config resolved and validated; all blobs and
//! the manifest pushed).

use super::error::RegistryError;
use super::pull::ResolvedManifest;
use super::push::{BlobPushOutcome, PushBlobOptions};
use super::RegistryClient;
use crate::formats::manifest::{parse_image_manifest, Descriptor, MAX_CONFIG_SIZE};
use crate::formats::{Digest, ImageToStore, PlatformSpec, Reference};
use futures::{StreamExt, TryStreamExt};
use std::future::Future;
use tokio::io::AsyncRead;

/// A reference resolved down to a validated image, layers not yet fetched.
#[derive(Clone, Debug)]
pub struct ResolvedImage {
    /// The manifest (and the index it came through, if any).
    pub resolved: ResolvedManifest,
    /// Manifest + config checked against each other (diff_ids, platform, sizes); its
    /// `references` hold the reference's tag (without digest) if it had one.
    pub image: ImageToStore,
}

impl ResolvedImage {
    /// The layer descriptors to fetch, base first.
    pub fn layers(&self) -> &[Descriptor] {
        &self.resolved.parsed.layers
    }
}

/// What [`RegistryClient::push_image`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushedImage {
    /// Digest of the pushed manifest.
    pub digest: Digest,
    /// Per blob (config first, then layers): skipped, mounted or uploaded.
    pub blobs: Vec<(Digest, BlobPushOutcome)>,
}

impl RegistryClient {
    /// [`Self::resolve`], then the config fetched (verified, at most 8 MiB) and
    /// validated with the manifest into an [`ImageToStore`]. The pull verb then
    /// streams `layers()` with [`Self::fetch_blobs`], skipping blobs it already has.
    pub async fn resolve_image(
        &self,
        reference: &Reference,
        platform: &PlatformSpec,
    ) -> Result<ResolvedImage, RegistryError> {
        let resolved = self.resolve(reference, platform).await?;
        let cfg = &resolved.parsed.config;
        let config = self
            .fetch_blob_bytes(reference, &cfg.digest, cfg.size, MAX_CONFIG_SIZE as u64)
            .await?;
        let references = match reference.tag() {
            Some(_) => vec![reference.without_digest()],
            None => Vec::new(),
        };
        let image = ImageToStore::from_manifest_and_config(
            resolved.manifest.bytes.clone(),
            Some(&resolved.manifest.media_type),
            config,
            references,
            &reference.familiar(),
        )?;
        Ok(ResolvedImage { resolved, image })
    }

    /// Pushes one image manifest with everything it refers to: its config and layers
    /// (at most `config.concurrency` at once; each skipped if present, mounted from
    /// `opts.mount_from` when possible, else opened with `open` and uploaded), then the
    /// manifest under `dest`'s tag (or digest). For a multi-platform image push each
    /// platform's manifest to `dest` pinned by its digest, then the index with
    /// [`Self::push_manifest`].
    pub async fn push_image<R, F, Fut>(
        &self,
        dest: &Reference,
        manifest: &[u8],
        media_type: &str,
        opts: &PushBlobOptions,
        open: F,
    ) -> Result<PushedImage, RegistryError>
    where
        R: AsyncRead + Send + Unpin + 'static,
        F: Fn(&Descriptor) -> Fut,
        Fut: Future<Output = Result<R, RegistryError>>,
    {
        let parsed = parse_image_manifest(manifest, Some(media_type), &dest.familiar())?;
        let mut blobs = vec![parsed.config.clone()];
        blobs.extend(parsed.layers.iter().cloned());
        let open = &open;
        let jobs = blobs.into_iter().map(|d| async move {
            let outcome = self
                .push_blob_from(dest, &d.digest, d.size, opts, || open(&d))
                .await?;
            Ok::<_, RegistryError>((d.digest.clone(), outcome))
        });
        let blobs: Vec<(Digest, BlobPushOutcome)> = futures::stream::iter(jobs)
            .buffered(self.inner.config.concurrency.max(1))
            .try_collect()
            .await?;
        let digest = self
            .push_manifest(dest, manifest.to_vec(), media_type)
            .await?;
        Ok(PushedImage { digest, blobs })
    }
}
