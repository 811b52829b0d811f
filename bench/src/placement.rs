//! Placement throughput and latency of the real `berth-scheduler` against 1,000 simulated
//! nodes: node records written into `berth-nodes` (and refreshed like heartbeats), and
//! one lightweight fake executor that answers `create`/`start`/`inspect` for every node
//! (`berth.v1.exec.*.<verb>`). 10,000 `berth.v1.sched.run` requests, a fixed number in
//! flight, with one and then two scheduler instances (each run on a fresh nats-server).
//! The image-store is real (the scheduler resolves the image through it; cached).
//!
//! `cargo run --release -p berth-bench --bin placement -- [placements] [nodes] [in_flight]`

use berth_bus::{ServiceHandle, ServiceIdentity};
use berth_proto::messages::exec::{
    ContainerCreateRequest, ContainerCreated, ContainerInspect, ContainerList,
    ContainerListRequest, ContainerRef, ContainerStarted,
};
use berth_proto::messages::node::{NodeRecord, NodeState, Resources};
use berth_proto::messages::sched::{SchedRunReply, SchedRunRequest};
use berth_proto::subjects::{self, jetstream as names, ExecVerb, SchedVerb};
use berth_proto::Encoding;
use berth_tests::fixtures::{busybox_rootfs_tar, ok};
use berth_tests::Stack;
use futures::StreamExt;
use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const IMAGE: &str = "busybox:placement";
const SCHEDULER: &str = "berth-scheduler";

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn node_record(index: usize) -> NodeRecord {
    NodeRecord {
        node_id: format!("sim-{index:04}"),
        state: NodeState::Ready,
        // Room for every placement several times over: the bench measures the
        // scheduler's path, not running out of capacity.
        capacity: Resources {
            cpu_millis: 64_000,
            memory_bytes: 256 << 30,
            pids: 1_000_000,
        },
        allocated: Resources::default(),
        labels: BTreeMap::from([("zone".to_string(), format!("z{}", index % 3))]),
        chain_ids: Vec::new(),
        containers: 0,
        last_heartbeat_ms: unix_ms(),
        executor_version: "fake".into(),
        ports: Vec::new(),
        platform: None,
        volumes: Vec::new(),
        networks: Vec::new(),
    }
}

/// Writes every simulated node's record now and then every `period` until aborted.
async fn heartbeats(kv: async_nats::jetstream::kv::Store, nodes: usize, period: Duration) {
    loop {
        for index in 0..nodes {
            let record = node_record(index);
            if let Ok(bytes) = serde_json::to_vec(&record) {
                let _ = kv.put(record.node_id.as_str(), bytes.into()).await;
            }
        }
        tokio::time::sleep(period).await;
    }
}

/// One process standing in for every node's executor: it acknowledges at once.
async fn fake_executor(client: &async_nats::Client) -> anyhow::Result<ServiceHandle> {
    let mut service = ServiceHandle::start(
        client,
        ServiceIdentity {
            name: "berth-bench-fake-executor".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            node_id: "fake".into(),
            description: "acknowledges create/start for simulated nodes".into(),
            queue_group: "fake-executor".into(),
        },
    )
    .await?;
    service
        .endpoint(
            "create",
            subjects::exec("*", ExecVerb::Create),
            |request: ContainerCreateRequest, _| async move {
                let id = request.id.unwrap_or_default();
                Ok(ContainerCreated {
                    name: request
                        .name
                        .unwrap_or_else(|| format!("c-{}", &id[..12.min(id.len())])),
                    id,
                    image_digest: request.image,
                })
            },
        )
        .await?;
    service
        .endpoint(
            "start",
            subjects::exec("*", ExecVerb::Start),
            |request: ContainerRef, _| async move {
                Ok(ContainerStarted {
                    id: request.id,
                    pid: 1,
                })
            },
        )
        .await?;
    service
        .endpoint(
            "list",
            subjects::exec("*", ExecVerb::List),
            |_: ContainerListRequest, context| async move {
                // berth.v1.exec.<node>.list
                let node_id = context
                    .subject
                    .split('.')
                    .nth(3)
                    .unwrap_or_default()
                    .to_string();
                Ok(ContainerList {
                    node_id,
                    containers: Vec::new(),
                })
            },
        )
        .await?;
    service
        .endpoint(
            "inspect",
            subjects::exec("*", ExecVerb::Inspect),
            |request: ContainerRef, _| async move {
                Err::<ContainerInspect, _>(berth_proto::ErrorEnvelope::not_found(format!(
                    "simulated node keeps no state for {}",
                    request.id
                )))
            },
        )
        .await?;
    Ok(service)
}

struct Figures {
    per_second: f64,
    p50: Duration,
    p99: Duration,
    failed: usize,
}

async fn one_run(
    schedulers: usize,
    placements: usize,
    nodes: usize,
    in_flight: usize,
) -> anyhow::Result<Figures> {
    let scratch = tempfile::tempdir()?;
    let stack = Stack::start_with_env(
        &["berth-image-store"],
        "bench-placement",
        &[("RUST_LOG", "warn")],
    )
    .await?;
    let tar = busybox_rootfs_tar(scratch.path(), "placement", &[])?;
    ok(stack
        .berth()?
        .args(["import", &tar.display().to_string(), IMAGE]))?;

    let client = stack.nats.client().await?;
    let js = async_nats::jetstream::new(client.clone());
    let kv =
        berth_bus::jetstream::ensure_kv(&js, names::NODES_BUCKET, "berth node records", 1).await?;
    // Heartbeats every 2 s: the scheduler's default 10 s loss rule never fires, and the
    // refresh costs what a fleet's heartbeats cost (here 500 KV writes/s).
    let beats = tokio::spawn(heartbeats(kv, nodes, Duration::from_secs(2)));
    let executor = fake_executor(&client).await?;

    let mut stack = stack;
    for _ in 0..schedulers {
        stack.start_service(SCHEDULER).await?;
    }
    // Let the schedulers' watch of `berth-nodes` see every node.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let started = Instant::now();
    let mut latencies = Vec::with_capacity(placements);
    let mut failed = 0usize;
    let mut first_error = None;
    let requests = futures::stream::iter(0..placements)
        .map(|i| {
            let client = client.clone();
            async move {
                let request = SchedRunRequest {
                    create: ContainerCreateRequest {
                        image: IMAGE.to_string(),
                        name: Some(format!("p{i:05}")),
                        cmd: vec!["true".into()],
                        ..Default::default()
                    },
                    ..Default::default()
                };
                let at = Instant::now();
                let reply: Result<SchedRunReply, _> = berth_bus::request(
                    &client,
                    &subjects::sched(SchedVerb::Run),
                    &request,
                    Encoding::Bincode,
                    Duration::from_secs(60),
                )
                .await;
                (at.elapsed(), reply)
            }
        })
        .buffer_unordered(in_flight);
    futures::pin_mut!(requests);
    while let Some((latency, reply)) = requests.next().await {
        match reply {
            Ok(_) => latencies.push(latency),
            Err(err) => {
                failed += 1;
                first_error.get_or_insert_with(|| err.to_string());
            }
        }
    }
    let elapsed = started.elapsed();
    beats.abort();
    drop(executor);
    if let Some(err) = first_error {
        eprintln!("first failure of {failed}: {err}");
    }
    latencies.sort_unstable();
    let at = |q: f64| {
        latencies
            .get(((latencies.len().max(1) - 1) as f64 * q).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    Ok(Figures {
        per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
        failed,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut number = |default: usize| -> anyhow::Result<usize> {
        Ok(args
            .next()
            .map(|n| n.parse())
            .transpose()?
            .unwrap_or(default))
    };
    let placements = number(10_000)?.max(100);
    let nodes = number(1_000)?.max(1);
    let in_flight = number(256)?.max(1);
    println!("{placements} placements on {nodes} simulated nodes, {in_flight} requests in flight");
    for schedulers in [1, 2] {
        let figures = one_run(schedulers, placements, nodes, in_flight).await?;
        println!(
            "schedulers={schedulers}: {:.0} placements/s, p50 {:.1} ms, p99 {:.1} ms, failed {}",
            figures.per_second,
            figures.p50.as_secs_f64() * 1e3,
            figures.p99.as_secs_f64() * 1e3,
            figures.failed
        );
    }
    println!("anchors: kube-scheduler ~100 pods/s (scheduler_perf), Nomad C1M 3,750/s on 5 servers; aim >= 5,000/s");
    Ok(())
}
