//! The node record: what this node offers (capacity) and how busy it is, refreshed every
//! heartbeat in the `berth-nodes` KV bucket under the node id.

use async_nats::jetstream::kv;
use berth_proto::messages::image::ImagePlatform;
use berth_proto::messages::node::{NodeRecord, NodeState, Resources};
use berth_proto::messages::unpack::{SnapshotList, SnapshotListRequest};
use berth_proto::subjects::{self, UnpackVerb};
use berth_proto::Encoding;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The fixed part of the record.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    pub node_id: String,
    pub labels: BTreeMap<String, String>,
    pub version: String,
    pub platform: ImagePlatform,
}

/// OCI's name (the one image configs use) for a Rust `target_arch`.
pub fn oci_arch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        "mips64" => "mips64le",
        other => other,
    }
}

/// This host's platform, or `arch` instead of the host's architecture when given.
pub fn host_platform(arch: Option<&str>) -> ImagePlatform {
    let arch = arch
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| oci_arch(std::env::consts::ARCH));
    ImagePlatform {
        os: std::env::consts::OS.to_string(),
        architecture: arch.to_string(),
        // arm64 is v8 unless said otherwise; 32-bit arm variants are not probed.
        variant: None,
    }
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
pub fn parse_mem_total(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let rest = line.strip_prefix("MemTotal:")?;
        let mut fields = rest.split_whitespace();
        let value: u64 = fields.next()?.parse().ok()?;
        match fields.next() {
            Some("kB") | None => value.checked_mul(1024),
            Some(_) => None,
        }
    })
}

/// What the host offers: all CPUs, all memory, the kernel's pid limit.
pub fn host_capacity() -> Resources {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(1);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| parse_mem_total(&text))
        .unwrap_or(0);
    let pids = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(32_768);
    Resources {
        cpu_millis: cpus * 1000,
        memory_bytes: memory,
        pids,
    }
}

fn unix_millis(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What the node's running containers use: their count and the limits they reserve.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub containers: u32,
    pub allocated: Resources,
    /// Host ports published by running containers.
    pub ports: Vec<berth_proto::messages::network::PortBinding>,
    /// Named (not anonymous) volumes.
    pub volumes: Vec<String>,
    /// User networks (not the built-in bridge, host or none).
    pub networks: Vec<berth_proto::messages::node::NodeNetwork>,
}

/// Reports the node's current usage at each heartbeat.
pub type UsageProbe = std::sync::Arc<dyn Fn() -> Usage + Send + Sync>;

/// The host's capacity with the configured overrides (a node may offer less than the
/// host, or several test nodes share one host).
pub fn capacity_with(overrides: &crate::config::CapacityOverride) -> Resources {
    let host = host_capacity();
    Resources {
        cpu_millis: overrides
            .cpus
            .filter(|cpus| cpus.is_finite() && *cpus > 0.0)
            .map_or(host.cpu_millis, |cpus| (cpus * 1000.0).round() as u64),
        memory_bytes: overrides.memory_bytes.unwrap_or(host.memory_bytes),
        pids: overrides.pids.unwrap_or(host.pids),
    }
}

/// The record for one heartbeat.
pub fn record(
    identity: &NodeIdentity,
    capacity: Resources,
    usage: Usage,
    now: SystemTime,
) -> NodeRecord {
    NodeRecord {
        node_id: identity.node_id.clone(),
        state: NodeState::Ready,
        capacity,
        allocated: usage.allocated,
        labels: identity.labels.clone(),
        chain_ids: Vec::new(),
        containers: usage.containers,
        last_heartbeat_ms: unix_millis(now),
        executor_version: identity.version.clone(),
        ports: usage.ports,
        platform: Some(identity.platform.clone()),
        volumes: usage.volumes,
        networks: usage.networks,
    }
}

/// The chainIDs unpacked on this node, from its layer-unpacker; `None` when it does not
/// answer (the last known list is kept then).
async fn unpacked_chain_ids(client: &async_nats::Client, node_id: &str) -> Option<Vec<String>> {
    let list: SnapshotList = berth_bus::request(
        client,
        &subjects::unpack(node_id, UnpackVerb::List),
        &SnapshotListRequest::default(),
        Encoding::Bincode,
        Duration::from_secs(2),
    )
    .await
    .ok()?;
    let mut ids: Vec<String> = list.snapshots.into_iter().map(|s| s.chain_id).collect();
    ids.sort();
    ids.dedup();
    Some(ids)
}

/// Lets a verb that changed what the record says (a volume or network made or removed)
/// have it published now instead of at the next beat: a `run` right after `volume
/// create` must find the volume on this node, or placement could put the container on
/// another node with a new, empty volume of that name.
#[derive(Debug, Default)]
pub struct RecordRefresh {
    nudge: tokio::sync::Notify,
    /// Beats that have read the node's usage (the snapshot generation).
    snapshots: std::sync::atomic::AtomicU64,
    /// The newest snapshot generation written to KV.
    published: tokio::sync::watch::Sender<u64>,
}

impl RecordRefresh {
    /// Returns once a record that reflects every change made before the call is in KV,
    /// or after `within` (the next beat then carries it).
    pub async fn publish_now(&self, within: Duration) {
        use std::sync::atomic::Ordering;
        // A beat whose snapshot generation is above this one read the usage after our
        // change was made.
        let wanted = self.snapshots.load(Ordering::SeqCst) + 1;
        let mut published = self.published.subscribe();
        self.nudge.notify_one();
        let _ = tokio::time::timeout(within, published.wait_for(|g| *g >= wanted)).await;
    }

    fn snapshot(&self) -> u64 {
        self.snapshots
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1
    }

    fn written(&self, generation: u64) {
        self.published.send_if_modified(|g| {
            let newer = generation > *g;
            if newer {
                *g = generation;
            }
            newer
        });
    }
}

/// Writes the node record every `interval` until aborted. Failures (NATS down) are logged
/// once per outage and retried on the next beat. Only the heartbeat key `<node>` is
/// written here: the schedulers own `<node>.alloc` and `<node>.admin`.
pub async fn heartbeat_loop(
    client: async_nats::Client,
    nodes: kv::Store,
    identity: NodeIdentity,
    capacity: Resources,
    interval: Duration,
    usage: UsageProbe,
    refresh: std::sync::Arc<RecordRefresh>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    let mut chain_ids = Vec::new();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = refresh.nudge.notified() => {}
        }
        if let Some(ids) = unpacked_chain_ids(&client, &identity.node_id).await {
            chain_ids = ids;
        }
        let generation = refresh.snapshot();
        let mut record = record(&identity, capacity, usage(), SystemTime::now());
        record.chain_ids = chain_ids.clone();
        let body = match serde_json::to_vec(&record) {
            Ok(body) => body,
            Err(err) => {
                tracing::error!(error = %err, "cannot encode node record");
                continue;
            }
        };
        let put = nodes.put(identity.node_id.as_str(), body.into()).await;
        if put.is_ok() {
            refresh.written(generation);
        }
        match put {
            Ok(_) if failing => {
                failing = false;
                tracing::info!(node_id = %identity.node_id, "node heartbeat resumed");
            }
            Ok(_) => {}
            Err(err) if !failing => {
                failing = true;
                tracing::warn!(node_id = %identity.node_id, error = %err, "node heartbeat failed");
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A beat loop that only wakes when nudged: `publish_now` must return because its
    /// own change was published, not because its wait ran out.
    #[tokio::test]
    async fn publish_now_waits_for_a_beat_that_read_the_change() {
        let refresh = std::sync::Arc::new(RecordRefresh::default());
        let changes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let beat = {
            let refresh = std::sync::Arc::clone(&refresh);
            let changes = std::sync::Arc::clone(&changes);
            tokio::spawn(async move {
                let mut seen = Vec::new();
                loop {
                    refresh.nudge.notified().await;
                    let generation = refresh.snapshot();
                    seen.push(changes.load(std::sync::atomic::Ordering::SeqCst));
                    tokio::task::yield_now().await;
                    refresh.written(generation);
                    if seen.len() == 2 {
                        return seen;
                    }
                }
            })
        };
        for change in 1..=2 {
            changes.store(change, std::sync::atomic::Ordering::SeqCst);
            refresh.publish_now(Duration::from_secs(60)).await;
            assert!(*refresh.published.borrow() >= change);
        }
        let seen = beat.await.expect("beat loop");
        assert_eq!(seen, [1, 2]);
    }

    #[test]
    fn mem_total_is_read_in_bytes() {
        let text = "MemTotal:       24606620 kB\nMemFree:        23000000 kB\n";
        assert_eq!(parse_mem_total(text), Some(24_606_620 * 1024));
        assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(parse_mem_total("MemTotal: lots kB\n"), None);
    }

    #[test]
    fn the_host_architecture_gets_its_oci_name_unless_overridden() {
        assert_eq!(oci_arch("x86_64"), "amd64");
        assert_eq!(oci_arch("aarch64"), "arm64");
        let host = host_platform(None);
        assert_eq!(host.os, "linux");
        assert_eq!(host.architecture, oci_arch(std::env::consts::ARCH));
        assert_eq!(host_platform(Some("arm64")).architecture, "arm64");
        assert_eq!(host_platform(Some(" ")).architecture, host.architecture);
    }

    #[test]
    fn record_carries_identity_and_time() {
        let identity = NodeIdentity {
            node_id: "n1".into(),
            labels: BTreeMap::from([("zone".into(), "a".into())]),
            version: "0.1.0".into(),
            platform: host_platform(Some("arm64")),
        };
        let now = UNIX_EPOCH + Duration::from_millis(1_234);
        let usage = Usage {
            containers: 2,
            allocated: Resources {
                cpu_millis: 500,
                memory_bytes: 64 << 20,
                pids: 0,
            },
            ports: Vec::new(),
            volumes: vec!["data".into()],
            networks: vec![berth_proto::messages::node::NodeNetwork {
                id: "f00d".repeat(16),
                name: "backend".into(),
            }],
        };
        let record = record(&identity, host_capacity(), usage.clone(), now);
        assert_eq!(record.volumes, ["data"]);
        assert_eq!(record.networks, usage.networks);
        assert_eq!(record.last_heartbeat_ms, 1_234);
        assert_eq!(record.containers, 2);
        assert_eq!(record.allocated, usage.allocated);
        assert_eq!(record.state, NodeState::Ready);
        assert_eq!(record.labels.get("zone").map(String::as_str), Some("a"));
        assert_eq!(
            record.platform.map(|p| p.architecture).as_deref(),
            Some("arm64")
        );
        assert!(record.capacity.cpu_millis >= 1000);
    }
}
