//! berth-executor: owns the containers of one node. Serves `berth.v1.exec.<node>.*` and
//! keeps the node's record in the `berth-nodes` KV bucket current with a heartbeat.

pub mod config;
pub mod containers;
pub mod node;

use async_nats::jetstream;
use berth_bus::bootstrap::Shutdown;
use berth_bus::jetstream::{ensure_events_stream, ensure_kv, with_retry};
use berth_bus::settings::Settings;
use berth_bus::{ServiceHandle, ServiceIdentity};
use berth_proto::messages::exec::ContainerListRequest;
use berth_proto::subjects::{self, jetstream as names, queue_groups, service_names, ExecVerb};
use std::sync::Arc;

pub use config::Config;

/// Runs the executor until `shutdown` resolves.
pub async fn run(
    client: async_nats::Client,
    settings: Settings<Config>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let node_id = settings.node_id.clone();
    let data_dir = settings.data_dir.clone();
    let containers_dir = containers::containers_dir(&data_dir);
    std::fs::create_dir_all(&containers_dir).map_err(|err| {
        anyhow::anyhow!(
            "cannot create containers dir {}: {err}",
            containers_dir.display()
        )
    })?;

    let js = jetstream::new(client.clone());
    let Some(nodes) = with_retry(names::NODES_BUCKET, &shutdown, || {
        ensure_kv(&js, names::NODES_BUCKET, "berth node records", 1)
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
            name: service_names::EXECUTOR.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            node_id: node_id.clone(),
            description: "berth containers of one node: isolation, lifecycle, logs, exec, stats"
                .to_string(),
            queue_group: queue_groups::EXECUTOR.to_string(),
        },
    )
    .await?;

    let list_node = Arc::new(node_id.clone());
    let list_dir = Arc::new(containers_dir);
    service
        .endpoint(
            ExecVerb::List.as_str(),
            subjects::exec(&node_id, ExecVerb::List),
            move |request: ContainerListRequest, _context| {
                let node_id = Arc::clone(&list_node);
                let dir = Arc::clone(&list_dir);
                async move {
                    tokio::task::spawn_blocking(move || {
                        containers::list(&dir, &node_id, request.all)
                    })
                    .await
                    .map_err(|err| berth_proto::ErrorEnvelope::internal(err.to_string()))?
                }
            },
        )
        .await?;

    let heartbeat = tokio::spawn(node::heartbeat_loop(
        nodes,
        node::NodeIdentity {
            node_id: node_id.clone(),
            labels: settings.service.labels.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        },
        settings.service.heartbeat_interval(),
    ));
    tracing::info!(node_id = %node_id, data_dir = %data_dir.display(), "executor serving");
    let served = service.serve_until(shutdown.wait()).await;
    heartbeat.abort();
    served
}
