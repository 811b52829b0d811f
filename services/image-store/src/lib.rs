//! berth-image-store: owns images. Blobs live in the JetStream Object Store `berth-blobs`,
//! manifests and references in the KV bucket `berth-images`. Serves `berth.v1.image.*` in
//! the queue group `image-store`, so any number of instances can run at once.

pub mod catalog;
pub mod config;
pub mod formats;

use async_nats::jetstream;
use berth_bus::bootstrap::Shutdown;
use berth_bus::jetstream::{ensure_events_stream, ensure_kv, ensure_object_store, with_retry};
use berth_bus::settings::Settings;
use berth_bus::{ServiceHandle, ServiceIdentity};
use berth_proto::messages::image::ImageListRequest;
use berth_proto::subjects::{self, jetstream as names, queue_groups, service_names, ImageVerb};

pub use config::Config;

/// Revisions kept per key in `berth-images` (tags move; a few old values help debugging).
const IMAGES_HISTORY: i64 = 5;

/// Runs the image-store until `shutdown` resolves.
pub async fn run(
    client: async_nats::Client,
    settings: Settings<Config>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let js = jetstream::new(client.clone());
    let Some(_blobs) = with_retry(names::BLOBS_BUCKET, &shutdown, || {
        ensure_object_store(
            &js,
            names::BLOBS_BUCKET,
            "berth layer and config blobs by digest",
        )
    })
    .await
    else {
        return Ok(());
    };
    let Some(images) = with_retry(names::IMAGES_BUCKET, &shutdown, || {
        ensure_kv(
            &js,
            names::IMAGES_BUCKET,
            "berth manifests and references",
            IMAGES_HISTORY,
        )
    })
    .await
    else {
        return Ok(());
    };
    if with_retry(names::EVENTS_STREAM, &shutdown, || {
        ensure_events_stream(&js)
    })
    .await
    .is_none()
    {
        return Ok(());
    }

    let mut service = ServiceHandle::start(
        &client,
        ServiceIdentity {
            name: service_names::IMAGE_STORE.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            node_id: settings.node_id.clone(),
            description: "berth images: pull, import, store, tag, delete".to_string(),
            queue_group: queue_groups::IMAGE_STORE.to_string(),
        },
    )
    .await?;

    let catalog = catalog::Catalog::new(images);
    service
        .endpoint(
            ImageVerb::List.as_str(),
            subjects::image(ImageVerb::List),
            move |request: ImageListRequest, _context| {
                let catalog = catalog.clone();
                async move { catalog.list(&request).await }
            },
        )
        .await?;
    tracing::info!(node_id = %settings.node_id, "image-store serving");
    service.serve_until(shutdown.wait()).await
}
