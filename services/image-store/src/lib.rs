//! berth-image-store: owns images. Blobs live in the JetStream Object Store `berth-blobs`,
//! manifests and references in the KV bucket `berth-images`. Serves `berth.v1.image.*` in
//! the queue group `image-store`, so any number of instances can run at once.

pub mod bridge;
pub mod catalog;
pub mod config;
pub mod formats;
pub mod store;
pub mod verbs;

use async_nats::jetstream;
use berth_bus::bootstrap::Shutdown;
use berth_bus::jetstream::{ensure_events_stream, ensure_kv, ensure_object_store, with_retry};
use berth_bus::settings::Settings;
use berth_bus::{ServiceHandle, ServiceIdentity};
use berth_proto::messages::image::{
    ImageImportRequest, ImageInspectRequest, ImageListRequest, ImageLoadRequest, ImagePruneRequest,
    ImageRemoveRequest, ImageSaveRequest, ImageTagRequest,
};
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
    let Some(blobs) = with_retry(names::BLOBS_BUCKET, &shutdown, || {
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
    let chunk_stream = format!("OBJ_{}", names::BLOBS_BUCKET);
    let Some(chunks) = with_retry(&chunk_stream, &shutdown, || js.get_stream(&chunk_stream)).await
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

    let spool = settings.data_dir.join("image-store").join("tmp");
    prepare_spool(&spool)?;
    let verbs = verbs::Verbs {
        store: store::Store::new(
            store::jetstream::JetStreamBackend::new(
                js.clone(),
                images,
                blobs,
                chunks,
                names::BLOBS_BUCKET,
            ),
            store::GcSettings {
                pin_grace: settings
                    .service
                    .pin_grace_seconds
                    .unwrap_or(store::GcSettings::default().pin_grace),
                writer_grace: settings
                    .service
                    .writer_grace_seconds
                    .unwrap_or(store::GcSettings::default().writer_grace),
                ..store::GcSettings::default()
            },
        ),
        client: client.clone(),
        spool,
    };
    macro_rules! serve {
        ($verb:expr, $request:ty, $method:ident) => {{
            let verbs = verbs.clone();
            service
                .endpoint(
                    $verb.as_str(),
                    subjects::image($verb),
                    move |request: $request, _context| {
                        let verbs = verbs.clone();
                        async move { verbs.$method(request).await }
                    },
                )
                .await?;
        }};
    }
    serve!(ImageVerb::List, ImageListRequest, list);
    serve!(ImageVerb::Import, ImageImportRequest, import);
    serve!(ImageVerb::Load, ImageLoadRequest, load);
    serve!(ImageVerb::Save, ImageSaveRequest, save);
    serve!(ImageVerb::Inspect, ImageInspectRequest, inspect);
    serve!(ImageVerb::History, ImageInspectRequest, history);
    serve!(ImageVerb::Tag, ImageTagRequest, tag);
    serve!(ImageVerb::Remove, ImageRemoveRequest, remove);
    serve!(ImageVerb::Prune, ImagePruneRequest, prune);
    verbs::registry::RegistryVerbs::new(verbs.clone(), &settings.service)?
        .serve(&mut service)
        .await?;
    tracing::info!(node_id = %settings.node_id, "image-store serving");
    service.serve_until(shutdown.wait()).await
}

/// Creates the scratch dir and removes what an instance killed earlier left there
/// (entries older than an hour: another instance sharing the dir may be using newer ones).
fn prepare_spool(spool: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(spool)
        .map_err(|err| anyhow::anyhow!("cannot create {}: {err}", spool.display()))?;
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    if let Ok(entries) = std::fs::read_dir(spool) {
        for entry in entries.flatten() {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|modified| modified < hour_ago);
            if old {
                let _ = berth_fstree::remove_tree(&entry.path());
            }
        }
    }
    Ok(())
}
pub mod registry;
