//! `prepare`: resolve an image with the image-store, then make sure every layer is
//! unpacked on this node, reading missing layers' blobs straight from the Object Store.

use crate::endpoints::{snapshot_info, store_error, tree_info, Unpacker};
use crate::native::Tree;
use crate::snapshot::Prepared;
use crate::snapshot::{LayerOutcome, LayerSpec, PrepareOptions};
use berth_bus::objects::ObjectReader;
use berth_bus::{request, BusError, ProgressSink, RequestContext};
use berth_proto::messages::image::{ImageInspect, ImageInspectRequest};
use berth_proto::messages::unpack::{PrepareProgress, PrepareReply, PrepareRequest};
use berth_proto::subjects::{self, ImageVerb};
use berth_proto::{Encoding, ErrorEnvelope};
use std::io::{self, Read};
use std::time::Duration;

/// How long the image-store may take to describe an image.
const INSPECT_DEADLINE: Duration = Duration::from_secs(30);

/// What `prepare` needs besides the store.
#[derive(Clone)]
pub struct Preparer {
    pub unpacker: Unpacker,
    pub client: async_nats::Client,
    pub blobs: ObjectReader,
    pub parallelism: usize,
}

/// A failed call to another service, as the envelope to pass back to our caller.
pub fn upstream_error(what: &str, err: BusError) -> ErrorEnvelope {
    match err {
        BusError::Service(envelope) => ErrorEnvelope::new(envelope.code, envelope.message),
        BusError::NoResponders { .. } => {
            ErrorEnvelope::unavailable(format!("{what}: no image-store is running"))
        }
        BusError::TimedOut { .. } => {
            ErrorEnvelope::unavailable(format!("{what}: the image-store did not answer in time"))
        }
        other => ErrorEnvelope::internal(format!("{what}: {other}")),
    }
}

/// What the node's snapshotter made of an image.
enum Outcome {
    /// Overlay form: one snapshot per layer.
    Layers(Prepared),
    /// Native: one applied tree.
    Tree(Tree),
}

/// The unpacker's view of an image's layers, in manifest order (base first).
pub fn layer_specs(image: &ImageInspect) -> Vec<LayerSpec> {
    image
        .layers
        .iter()
        .map(|layer| LayerSpec {
            digest: layer.digest.clone(),
            media_type: layer.media_type.clone(),
            diff_id: layer.diff_id.clone(),
        })
        .collect()
}

impl Preparer {
    /// `prepare`
    pub async fn prepare(
        &self,
        request: PrepareRequest,
        context: RequestContext,
    ) -> Result<PrepareReply, ErrorEnvelope> {
        let progress =
            ProgressSink::new(context.client, request.progress.clone(), context.encoding);
        let image: ImageInspect = request_inspect(&self.client, &request.image).await?;
        let span = tracing::info_span!("prepare", image = %request.image, digest = %image.digest);
        let _entered = span.enter();
        let layers = layer_specs(&image);
        let store = self.unpacker.store.clone();
        let native = self.unpacker.native.clone();
        let blobs = self.blobs.clone();
        let runtime = tokio::runtime::Handle::current();
        let options = PrepareOptions {
            parallelism: self.parallelism,
            user: request.user.clone(),
        };
        let started = std::time::Instant::now();
        let layer_count = layers.len() as u32;
        let progress_image = request.image.clone();
        let work = tokio::task::spawn_blocking(move || {
            let open_blob = |layer: &LayerSpec| -> io::Result<Box<dyn Read + Send>> {
                let object = runtime.block_on(blobs.open(&layer.digest)).map_err(|err| {
                    io::Error::other(format!(
                        "blob {} from the object store: {err}",
                        layer.digest
                    ))
                })?;
                Ok(Box::new(tokio_util::io::SyncIoBridge::new_with_handle(
                    object,
                    runtime.clone(),
                )))
            };
            match native {
                Some(native) => native
                    .prepare(&layers, &open_blob, options.user.as_deref())
                    .map(Outcome::Tree),
                None => store
                    .prepare(&layers, &open_blob, &options)
                    .map(Outcome::Layers),
            }
        });
        let prepared = progress
            .heartbeat_while(
                Duration::from_secs(1),
                || PrepareProgress {
                    image: progress_image.clone(),
                    layers: layer_count,
                    elapsed_ms: started.elapsed().as_millis() as u64,
                },
                work,
            )
            .await
            .map_err(|err| ErrorEnvelope::internal(format!("prepare task failed: {err}")))?
            .map_err(|err| {
                let mut envelope = store_error(err);
                envelope.message = format!(
                    "image {} ({}): {}",
                    request.image, image.digest, envelope.message
                );
                envelope
            })?;
        let prepared = match prepared {
            Outcome::Layers(prepared) => prepared,
            Outcome::Tree(tree) => {
                let layers = tree.meta.layers;
                tracing::info!(built = tree.built, layers, "native tree prepared");
                return Ok(PrepareReply {
                    node_id: self.unpacker.node_id.to_string(),
                    image_digest: image.digest.clone(),
                    lowerdirs: vec![tree.fs.display().to_string()],
                    snapshots: vec![tree_info(&tree.meta)],
                    unpacked: if tree.built { layers } else { 0 },
                    reused: if tree.built { 0 } else { layers },
                });
            }
        };
        for layer in &prepared.layers {
            if matches!(layer.outcome, LayerOutcome::Unpacked(_)) {
                self.unpacker
                    .snapshot_event("unpack", &layer.meta, Some(&request.image))
                    .await;
            }
        }
        let unpacked = prepared.unpacked() as u32;
        tracing::info!(unpacked, layers = prepared.layers.len(), "image prepared");
        Ok(PrepareReply {
            node_id: self.unpacker.node_id.to_string(),
            image_digest: image.digest.clone(),
            lowerdirs: prepared
                .lowerdirs()
                .iter()
                .map(|dir| dir.display().to_string())
                .collect(),
            snapshots: prepared
                .layers
                .iter()
                .map(|l| snapshot_info(&l.meta))
                .collect(),
            unpacked,
            reused: prepared.layers.len() as u32 - unpacked,
        })
    }
}

async fn request_inspect(
    client: &async_nats::Client,
    name: &str,
) -> Result<ImageInspect, ErrorEnvelope> {
    request(
        client,
        &subjects::image(ImageVerb::Inspect),
        &ImageInspectRequest {
            name: name.to_string(),
        },
        Encoding::Bincode,
        INSPECT_DEADLINE,
    )
    .await
    .map_err(|err| upstream_error(&format!("image {name}"), err))
}
