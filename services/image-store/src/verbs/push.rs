//! `push`: a stored image to a registry (`docker push NAME [DEST]`).
//!
//! The registry client does the protocol: per blob a HEAD (skip if present), a
//! cross-repo mount when we know another repository of the same registry holds the
//! image, else an upload (one PUT up to its monolithic limit, PATCH chunks above),
//! then the manifest. Blobs are opened from the Object Store only when uploaded.

use super::invalid;
use super::registry::{registry_envelope, RegistryVerbs, Tracker, PROGRESS_INTERVAL};
use crate::formats::manifest::Descriptor;
use crate::formats::Reference;
use crate::registry::{BlobPushOutcome, PushBlobOptions, RegistryError};
use berth_bus::{ProgressSink, RequestContext};
use berth_proto::messages::image::{ImagePushReply, ImagePushRequest, PushedBlob};
use berth_proto::ErrorEnvelope;
use std::io;
use tracing::Instrument;

impl RegistryVerbs {
    /// Handles `push`.
    pub async fn push(
        &self,
        request: ImagePushRequest,
        context: RequestContext,
    ) -> Result<ImagePushReply, ErrorEnvelope> {
        let sink = ProgressSink::new(context.client, request.progress.clone(), context.encoding);
        let tracker = Tracker::new(request.name.clone());
        let span = tracing::info_span!("push", image = %request.name);
        let outcome = sink
            .heartbeat_while(
                PROGRESS_INTERVAL,
                || tracker.snapshot(),
                self.push_from_store(&request, &tracker),
            )
            .instrument(span)
            .await;
        sink.publish(&tracker.snapshot()).await;
        if let Err(err) = &outcome {
            tracing::warn!(image = %request.name, code = ?err.code, error = %err.message, "push failed");
        }
        outcome
    }

    async fn push_from_store(
        &self,
        request: &ImagePushRequest,
        tracker: &Tracker,
    ) -> Result<ImagePushReply, ErrorEnvelope> {
        let resolved = self.verbs.store.resolve(&request.name).await?;
        // Docker semantics: `push NAME` pushes to the registry in NAME; DEST names
        // another place (as `docker tag NAME DEST && docker push DEST` would).
        let destination = match (&request.destination, &resolved.reference) {
            (Some(dest), _) => dest.clone(),
            (None, Some(reference)) => reference.clone(),
            (None, None) => {
                return Err(ErrorEnvelope::invalid(format!(
                    "{} names an image by digest or ID: give a destination (berth push {} REGISTRY/REPO:TAG)",
                    request.name, request.name
                )))
            }
        };
        let dest = Reference::parse(&destination).map_err(invalid)?;
        let record = resolved.record;
        let mount_from = self
            .origins(&record.digest)
            .await
            .iter()
            .filter_map(|o| Reference::parse(o).ok())
            .find(|o| o.registry_host() == dest.registry_host() && o.path() != dest.path());
        let mut blobs = vec![(record.config_digest.clone(), record.config.len() as u64)];
        for layer in &record.layers {
            if !blobs.iter().any(|(d, _)| *d == layer.digest) {
                blobs.push((layer.digest.clone(), layer.size));
            }
        }
        tracker.set(blobs, "waiting");
        let opts = PushBlobOptions {
            mount_from,
            progress: Some(tracker.callback("uploading")),
        };
        let store = self.verbs.store.clone();
        let image = dest.familiar();
        let pushed = self
            .registry
            .push_image(
                &dest,
                record.manifest.as_bytes(),
                &record.manifest_media_type,
                &opts,
                |d: &Descriptor| {
                    let store = store.clone();
                    let digest = d.digest.clone();
                    let image = image.clone();
                    async move {
                        store
                            .open_blob(&digest)
                            .await
                            .map_err(|err| RegistryError::Io {
                                image,
                                what: format!("blob {digest} from the store"),
                                source: io::Error::other(err.to_string()),
                            })
                    }
                },
            )
            .await
            .map_err(|err| registry_envelope(&self.registry, err))?;
        let mut reply_blobs = Vec::new();
        for (digest, outcome) in &pushed.blobs {
            let (name, chunks) = match outcome {
                BlobPushOutcome::AlreadyExists => ("exists", 0),
                BlobPushOutcome::Mounted => ("mounted", 0),
                BlobPushOutcome::Uploaded { chunks } => ("uploaded", *chunks),
            };
            tracker.finish(digest, name);
            reply_blobs.push(PushedBlob {
                digest: digest.to_string(),
                outcome: name.to_string(),
                chunks,
            });
        }
        self.record_origin(&record.digest, &dest).await;
        tracing::info!(image = %request.name, destination = %dest, digest = %pushed.digest, "pushed image");
        Ok(ImagePushReply {
            destination: dest.to_string(),
            digest: pushed.digest.to_string(),
            blobs: reply_blobs,
        })
    }
}
