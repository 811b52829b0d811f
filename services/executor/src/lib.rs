//! berth-executor: owns the containers of one node. Serves `berth.v1.exec.<node>.*`,
//! publishes container events and live logs, and keeps the node's record in the
//! `berth-nodes` KV bucket current with a heartbeat. Each container runs under its own
//! `berth-monitor` process, so the executor can restart without disturbing them.

mod attach;
pub mod config;
pub mod crilog;
pub mod exec;
pub mod lifecycle;
pub mod logfiles;
pub mod monitor;
pub mod network;
pub mod node;
pub mod overlay;
pub mod runspec;
pub mod state;
pub mod stdio;
pub mod users;
pub mod volumes;
mod volumes_verbs;

use async_nats::jetstream;
use berth_bus::bootstrap::Shutdown;
use berth_bus::jetstream::{ensure_events_stream, ensure_kv, with_retry};
use berth_bus::settings::Settings;
use berth_bus::{ServiceHandle, ServiceIdentity};
use berth_proto::messages::exec::{
    ContainerCreateRequest, ContainerKillRequest, ContainerListRequest, ContainerRef,
    ContainerRemoveRequest, ContainerStopRequest, ContainerWaitRequest, ExecRequest, LogsRequest,
    StdinRequest, VolumeCreateRequest, VolumeListRequest, VolumeRef, VolumeRemoveRequest,
};
use berth_proto::messages::network::{
    NetworkConnectRequest, NetworkCreateRequest, NetworkDisconnectRequest, NetworkListRequest,
    NetworkRef,
};
use berth_proto::subjects::{
    self, jetstream as names, queue_groups, service_names, ExecVerb, NetVerb,
};
use std::path::PathBuf;
use std::sync::Arc;

pub use config::Config;

/// `<data_dir>/containers`
pub fn containers_dir(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("containers")
}

/// The monitor binary: configured, else `berth-monitor` beside the running executable.
fn monitor_binary(config: &Config) -> anyhow::Result<PathBuf> {
    if let Some(path) = &config.monitor_binary {
        return Ok(path.clone());
    }
    let exe = std::env::current_exe()
        .map_err(|err| anyhow::anyhow!("cannot find the executor's own binary: {err}"))?;
    let path = exe
        .parent()
        .map(|dir| dir.join("berth-monitor"))
        .ok_or_else(|| anyhow::anyhow!("{} has no parent directory", exe.display()))?;
    if !path.is_file() {
        anyhow::bail!(
            "monitor binary {} not found: build it (cargo build -p berth-executor) or set monitor_binary in the executor config",
            path.display()
        );
    }
    Ok(path)
}

/// Runs the executor until `shutdown` resolves.
pub async fn run(
    client: async_nats::Client,
    settings: Settings<Config>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let node_id = settings.node_id.clone();
    let data_dir = settings.data_dir.clone();
    let paths = lifecycle::Paths {
        containers_dir: containers_dir(&data_dir),
        runtime_root: data_dir.join("runtime"),
        monitor_bin: monitor_binary(&settings.service)?,
        volumes_dir: data_dir.join("volumes"),
        log_dir: settings.service.log_dir.clone(),
    };
    if let Err(err) = monitor::settle_binary_pages(&paths.monitor_bin) {
        tracing::debug!(binary = %paths.monitor_bin.display(), error = %err, "monitor pages not settled");
    }

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

    let network_config = settings
        .service
        .network
        .check()
        .map_err(|err| anyhow::anyhow!("executor config: {err}"))?;
    let networks = Arc::new(
        network::Networks::new(
            network_config,
            node_id.clone(),
            &data_dir,
            paths.containers_dir.clone(),
            Box::new(network::netlink::Linux),
        )
        .map_err(|err| anyhow::anyhow!("networks of node {node_id}: {err}"))?,
    );
    let executor = Arc::new(lifecycle::Executor::new(
        node_id.clone(),
        paths,
        client.clone(),
        networks,
    )?);
    executor.adopt().await;

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

    macro_rules! serve {
        ($verb:expr, $request:ty, |$exec:ident, $req:ident| $body:expr) => {{
            let executor = Arc::clone(&executor);
            service
                .endpoint(
                    $verb.as_str(),
                    subjects::exec(&node_id, $verb),
                    move |$req: $request, _context| {
                        let $exec = Arc::clone(&executor);
                        async move { $body.await }
                    },
                )
                .await?;
        }};
    }
    serve!(ExecVerb::Create, ContainerCreateRequest, |e, r| e.create(r));
    serve!(ExecVerb::Start, ContainerRef, |e, r| e.start(r));
    serve!(ExecVerb::Kill, ContainerKillRequest, |e, r| e.kill(r));
    serve!(ExecVerb::Stop, ContainerStopRequest, |e, r| e.stop(r));
    serve!(ExecVerb::Remove, ContainerRemoveRequest, |e, r| e.remove(r));
    serve!(ExecVerb::Wait, ContainerWaitRequest, |e, r| e.wait(r));
    serve!(ExecVerb::Inspect, ContainerRef, |e, r| e.inspect(r));
    serve!(ExecVerb::List, ContainerListRequest, |e, r| e.list(r.all));
    serve!(ExecVerb::Logs, LogsRequest, |e, r| e.logs(r));
    {
        let executor = Arc::clone(&executor);
        service
            .endpoint(
                ExecVerb::Exec.as_str(),
                subjects::exec(&node_id, ExecVerb::Exec),
                move |request: ExecRequest, context| {
                    let executor = Arc::clone(&executor);
                    async move { executor.exec(request, context.encoding).await }
                },
            )
            .await?;
    }
    serve!(ExecVerb::Stats, ContainerRef, |e, r| e.stats(r));
    serve!(ExecVerb::Stdin, StdinRequest, |e, r| e.stdin(r));
    serve!(ExecVerb::VolumeCreate, VolumeCreateRequest, |e, r| e
        .volume_create(r));
    serve!(ExecVerb::VolumeList, VolumeListRequest, |e, r| e
        .volume_list(r));
    serve!(ExecVerb::VolumeInspect, VolumeRef, |e, r| e
        .volume_inspect(r));
    serve!(ExecVerb::VolumeRemove, VolumeRemoveRequest, |e, r| e
        .volume_remove(r));

    macro_rules! serve_net {
        ($verb:expr, $request:ty, |$exec:ident, $req:ident| $body:expr) => {{
            let executor = Arc::clone(&executor);
            service
                .endpoint(
                    &format!("network_{}", $verb.as_str()),
                    subjects::net(&node_id, $verb),
                    move |$req: $request, _context| {
                        let $exec = Arc::clone(&executor);
                        async move { $body.await }
                    },
                )
                .await?;
        }};
    }
    serve_net!(NetVerb::Create, NetworkCreateRequest, |e, r| e
        .network_create(r));
    serve_net!(NetVerb::List, NetworkListRequest, |e, _r| e.network_list());
    serve_net!(NetVerb::Inspect, NetworkRef, |e, r| e.network_inspect(r));
    serve_net!(NetVerb::Remove, NetworkRef, |e, r| e.network_remove(r));
    serve_net!(NetVerb::Connect, NetworkConnectRequest, |e, r| e
        .network_connect(r));
    serve_net!(NetVerb::Disconnect, NetworkDisconnectRequest, |e, r| e
        .network_disconnect(r));

    let heartbeat = tokio::spawn(node::heartbeat_loop(
        client.clone(),
        nodes,
        node::NodeIdentity {
            node_id: node_id.clone(),
            labels: settings.service.labels.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            platform: node::host_platform(settings.service.arch.as_deref()),
        },
        node::capacity_with(&settings.service.capacity),
        settings.service.heartbeat_interval(),
        {
            let executor = Arc::clone(&executor);
            Arc::new(move || executor.usage())
        },
        Arc::clone(&executor.record_refresh),
    ));
    tracing::info!(node_id = %node_id, data_dir = %data_dir.display(), "executor serving");
    let served = service.serve_until(shutdown.wait()).await;
    heartbeat.abort();
    let net = Arc::clone(&executor.net);
    match tokio::task::spawn_blocking(move || net.teardown_unused()).await {
        Ok(removed) if !removed.is_empty() => {
            tracing::info!(removed = ?removed, "networking nothing running uses is taken down")
        }
        Ok(_) => {}
        Err(err) => tracing::warn!(error = %err, "network teardown failed"),
    }
    served
}
