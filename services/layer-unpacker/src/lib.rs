//! berth-layer-unpacker: owns the snapshots on one node's disk — each layer unpacked once
//! per chainID, in overlay form. Serves `berth.v1.unpack.<node>.*`.

pub mod config;
pub mod endpoints;
pub mod image_pins;
pub mod native;
pub mod prepare;
pub mod snapshot;

use berth_bus::bootstrap::Shutdown;
use berth_bus::jetstream::{ensure_object_store, with_retry};
use berth_bus::objects::ObjectReader;
use berth_bus::settings::Settings;
use berth_bus::{ServiceHandle, ServiceIdentity};
use berth_proto::messages::unpack::{
    PrepareRequest, SnapshotListRequest, SnapshotPruneRequest, SnapshotReleaseRequest,
    SnapshotRemoveRequest,
};
use berth_proto::subjects::{self, jetstream as names, queue_groups, service_names, UnpackVerb};
use std::sync::Arc;

pub use config::Config;

/// Runs the layer-unpacker until `shutdown` resolves.
pub async fn run(
    client: async_nats::Client,
    settings: Settings<Config>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let snapshots_dir = settings.data_dir.join("snapshots");
    let limits = settings.service.limits();
    let open_dir = snapshots_dir.clone();
    let store =
        tokio::task::spawn_blocking(move || snapshot::SnapshotStore::open(&open_dir, limits))
            .await?
            .map_err(|err| {
                anyhow::anyhow!(
                    "cannot open the snapshot store {}: {err}",
                    snapshots_dir.display()
                )
            })?;
    let native = match settings.service.snapshotter().map_err(anyhow::Error::msg)? {
        config::Snapshotter::Overlay => None,
        config::Snapshotter::Native => {
            let dir = settings.data_dir.join("native");
            let limits = settings.service.limits();
            let trees =
                tokio::task::spawn_blocking(move || native::NativeTrees::open(&dir, limits))
                    .await?
                    .map_err(|err| anyhow::anyhow!("cannot open the native trees: {err}"))?;
            Some(Arc::new(trees))
        }
    };
    let unpacker = endpoints::Unpacker {
        native,
        node_id: Arc::from(settings.node_id.as_str()),
        store: Arc::new(store),
        client: client.clone(),
    };
    let js = async_nats::jetstream::new(client.clone());
    // The image-store owns the bucket; creating it here too (idempotent) lets the
    // unpacker start first.
    let Some(blobs) = with_retry(names::BLOBS_BUCKET, &shutdown, || async {
        ensure_object_store(
            &js,
            names::BLOBS_BUCKET,
            "berth layer and config blobs by digest",
        )
        .await
        .map_err(|err| err.to_string())?;
        ObjectReader::new(&js, names::BLOBS_BUCKET)
            .await
            .map_err(|err| err.to_string())
    })
    .await
    else {
        return Ok(());
    };
    let preparer = prepare::Preparer {
        unpacker: unpacker.clone(),
        client: client.clone(),
        blobs,
        parallelism: settings.service.parallelism(),
    };

    let mut service = ServiceHandle::start(
        &client,
        ServiceIdentity {
            name: service_names::LAYER_UNPACKER.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            node_id: settings.node_id.clone(),
            description: "berth layer snapshots of one node".to_string(),
            queue_group: queue_groups::LAYER_UNPACKER.to_string(),
        },
    )
    .await?;
    let node = settings.node_id.as_str();
    service
        .endpoint(
            UnpackVerb::Prepare.as_str(),
            subjects::unpack(node, UnpackVerb::Prepare),
            move |request: PrepareRequest, context| {
                let preparer = preparer.clone();
                async move { preparer.prepare(request, context).await }
            },
        )
        .await?;
    let this = unpacker.clone();
    service
        .endpoint(
            UnpackVerb::List.as_str(),
            subjects::unpack(node, UnpackVerb::List),
            move |request: SnapshotListRequest, _context| {
                let this = this.clone();
                async move { this.list(request).await }
            },
        )
        .await?;
    let this = unpacker.clone();
    service
        .endpoint(
            UnpackVerb::Remove.as_str(),
            subjects::unpack(node, UnpackVerb::Remove),
            move |request: SnapshotRemoveRequest, _context| {
                let this = this.clone();
                async move { this.remove(request).await }
            },
        )
        .await?;
    let this = unpacker.clone();
    service
        .endpoint(
            UnpackVerb::Release.as_str(),
            subjects::unpack(node, UnpackVerb::Release),
            move |request: SnapshotReleaseRequest, _context| {
                let this = this.clone();
                async move { this.release(request).await }
            },
        )
        .await?;
    let this = unpacker.clone();
    service
        .endpoint(
            UnpackVerb::Prune.as_str(),
            subjects::unpack(node, UnpackVerb::Prune),
            move |request: SnapshotPruneRequest, _context| {
                let this = this.clone();
                async move { this.prune(request).await }
            },
        )
        .await?;
    tokio::spawn(image_pins::follow_image_deletions(
        unpacker.clone(),
        shutdown.clone(),
    ));
    tracing::info!(node_id = %settings.node_id, snapshots = %snapshots_dir.display(), "layer-unpacker serving");
    service.serve_until(shutdown.wait()).await
}
