//! berth-scheduler: desired state of every container (`berth-containers` KV), the node
//! registry (`berth-nodes` KV), placement and rescheduling. Serves `berth.v1.sched.*` in
//! the queue group `scheduler`, so any number of instances can run at once: they share
//! nothing but KV, where every write is a compare-and-set.

pub mod config;
pub mod events;
pub mod placement;
pub mod reconcile;
pub mod sched;
pub mod store;
mod verbs;
pub mod view;

use async_nats::jetstream;
use berth_bus::bootstrap::Shutdown;
use berth_bus::jetstream::{ensure_events_stream, ensure_kv, with_retry};
use berth_bus::settings::Settings;
use berth_bus::{ServiceHandle, ServiceIdentity};
use berth_proto::messages::node::{NodeListRequest, NodeState};
use berth_proto::messages::sched::{
    NodeRef, SchedKillRequest, SchedListRequest, SchedRef, SchedRemoveRequest, SchedRunRequest,
    SchedStopRequest,
};
use berth_proto::subjects::{self, jetstream as names, queue_groups, service_names, SchedVerb};
use std::sync::Arc;

pub use config::Config;
pub use sched::Scheduler;

/// Runs the scheduler until `shutdown` resolves.
pub async fn run(
    client: async_nats::Client,
    settings: Settings<Config>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let js = jetstream::new(client.clone());
    let Some(nodes_kv) = with_retry(names::NODES_BUCKET, &shutdown, || {
        ensure_kv(&js, names::NODES_BUCKET, "berth node records", 1)
    })
    .await
    else {
        return Ok(());
    };
    let Some(containers_kv) = with_retry(names::CONTAINERS_BUCKET, &shutdown, || {
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
    let Some(events_stream) = with_retry(names::EVENTS_STREAM, &shutdown, || {
        ensure_events_stream(&js)
    })
    .await
    else {
        return Ok(());
    };

    let view = view::View::new(settings.service.node_lost_after());
    let mut background = tokio::task::JoinSet::new();
    background.spawn(view::follow(nodes_kv.clone(), view.clone(), true));
    background.spawn(view::follow(containers_kv.clone(), view.clone(), false));
    let scheduler = Arc::new(Scheduler::new(
        client.clone(),
        nodes_kv,
        containers_kv,
        view,
        settings.service.clone(),
    ));
    background.spawn(events::follow_events(Arc::clone(&scheduler), events_stream));
    background.spawn(Arc::clone(&scheduler).reconcile_loop());

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

    macro_rules! serve {
        ($verb:expr, $request:ty, |$s:ident, $req:ident| $body:expr) => {{
            let scheduler = Arc::clone(&scheduler);
            service
                .endpoint(
                    $verb.as_str(),
                    subjects::sched($verb),
                    move |$req: $request, _context| {
                        let $s = Arc::clone(&scheduler);
                        async move { $body.await }
                    },
                )
                .await?;
        }};
    }
    serve!(SchedVerb::Run, SchedRunRequest, |s, r| s.run(r));
    serve!(SchedVerb::List, SchedListRequest, |s, r| s.list(r));
    serve!(SchedVerb::Inspect, SchedRef, |s, r| s.inspect(r));
    serve!(SchedVerb::Start, SchedRef, |s, r| s.start(r));
    serve!(SchedVerb::Stop, SchedStopRequest, |s, r| s.stop(r));
    serve!(SchedVerb::Kill, SchedKillRequest, |s, r| s.kill(r));
    serve!(SchedVerb::Remove, SchedRemoveRequest, |s, r| s.remove(r));
    serve!(SchedVerb::Nodes, NodeListRequest, |s, r| s.nodes(r));
    serve!(SchedVerb::NodeInspect, NodeRef, |s, r| s.node_inspect(r));
    serve!(SchedVerb::Drain, NodeRef, |s, r| s
        .set_admin(r, NodeState::Draining));
    serve!(SchedVerb::Activate, NodeRef, |s, r| s
        .set_admin(r, NodeState::Ready));
    tracing::info!(strategy = ?settings.service.strategy, "scheduler serving");
    let served = service.serve_until(shutdown.wait()).await;
    background.abort_all();
    served
}
