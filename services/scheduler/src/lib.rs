//! berth-scheduler: desired state of every container (`berth-containers` KV), the node
//! registry (`berth-nodes` KV), placement and rescheduling. Serves `berth.v1.sched.*` in
//! the queue group `scheduler`, so any number of instances can run at once.

pub mod config;
pub mod nodes;

use async_nats::jetstream;
use berth_bus::bootstrap::Shutdown;
use berth_bus::jetstream::{ensure_events_stream, ensure_kv, with_retry};
use berth_bus::settings::Settings;
use berth_bus::{ServiceHandle, ServiceIdentity};
use berth_proto::messages::node::NodeListRequest;
use berth_proto::subjects::{self, jetstream as names, queue_groups, service_names, SchedVerb};

pub use config::Config;

/// Runs the scheduler until `shutdown` resolves.
pub async fn run(
    client: async_nats::Client,
    settings: Settings<Config>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let js = jetstream::new(client.clone());
    let Some(node_kv) = with_retry(names::NODES_BUCKET, &shutdown, || {
        ensure_kv(&js, names::NODES_BUCKET, "berth node records", 1)
    })
    .await
    else {
        return Ok(());
    };
    let Some(_containers) = with_retry(names::CONTAINERS_BUCKET, &shutdown, || {
        ensure_kv(
            &js,
            names::CONTAINERS_BUCKET,
            "berth desired and observed container state",
            5,
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
            name: service_names::SCHEDULER.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            node_id: settings.node_id.clone(),
            description: "berth desired state, node registry, placement".to_string(),
            queue_group: queue_groups::SCHEDULER.to_string(),
        },
    )
    .await?;

    let registry = nodes::NodeRegistry::new(node_kv, settings.service.node_lost_after());
    service
        .endpoint(
            SchedVerb::Nodes.as_str(),
            subjects::sched(SchedVerb::Nodes),
            move |request: NodeListRequest, _context| {
                let registry = registry.clone();
                async move { registry.list(&request).await }
            },
        )
        .await?;
    tracing::info!("scheduler serving");
    service.serve_until(shutdown.wait()).await
}
