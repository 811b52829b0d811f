//! The scheduler end to end: one nats-server, an image-store, one or two schedulers and
//! several nodes on one machine — real executor + layer-unpacker pairs with their own
//! node ids, data dirs and network slots (as root), or fake nodes (a heartbeat record and
//! an in-test executor that acknowledges create/start) where a test is about placement
//! races rather than containers. The CLI drives the real nodes.

use berth_proto::messages::exec::{ContainerCreateRequest, ContainerCreated, ContainerStarted};
use berth_proto::messages::node::{NodeRecord, NodeState, Resources};
use berth_proto::messages::sched::{
    alloc_key, ContainerRecord, NodeAlloc, SchedRef, SchedRunReply, SchedRunRequest,
};
use berth_proto::subjects::{self, jetstream as names, SchedVerb};
use berth_proto::{Encoding, ErrorKind};
use berth_tests::fixtures::need_containers;
use berth_tests::{fixtures, Stack};
use futures::StreamExt;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const IMAGE: &str = "busybox:sched";
/// Nodes count as lost after 3 s of silence here (10 s by default), so a test does not
/// spend most of its time waiting.
const TEST_ENV: [(&str, &str); 2] = [
    ("BERTH_NODE_LOST_AFTER_MS", "3000"),
    ("BERTH_REDISPATCH_AFTER_MS", "3000"),
];

struct Env {
    stack: Stack,
    _scratch: tempfile::TempDir,
}

impl Env {
    async fn start(schedulers: usize) -> anyhow::Result<Env> {
        let mut services = vec!["berth-image-store"];
        services.extend(std::iter::repeat_n("berth-scheduler", schedulers));
        let stack = Stack::start_with_env(&services, "sched-host", &TEST_ENV).await?;
        let scratch = tempfile::tempdir()?;
        let tar = fixtures::busybox_rootfs_tar(scratch.path(), "sched", &[])?;
        let env = Env {
            stack,
            _scratch: scratch,
        };
        env.ok(&["import", &tar.display().to_string(), IMAGE])?;
        Ok(env)
    }

    /// A real node with labels (`zone=a`) and a CPU capacity, ready in the scheduler.
    async fn add_node(&mut self, id: &str, labels: &str, cpus: &str) -> anyhow::Result<()> {
        self.stack
            .add_node(
                id,
                &[("BERTH_NODE_LABELS", labels), ("BERTH_CAPACITY_CPUS", cpus)],
            )
            .await?;
        anyhow::ensure!(
            eventually(Duration::from_secs(20), || self.node_state(id).as_deref()
                == Some("ready")),
            "node {id} never became ready in the scheduler: {:?}",
            self.nodes()
        );
        Ok(())
    }

    fn berth(&self, args: &[&str]) -> anyhow::Result<Output> {
        Ok(self.stack.berth()?.args(args).output()?)
    }

    fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = self.berth(args)?;
        anyhow::ensure!(
            output.status.success(),
            "berth {args:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    /// `berth run -d [options] IMAGE cmd…` → id.
    fn run_d(&self, options: &[&str], command: &[&str]) -> anyhow::Result<String> {
        let mut args = vec!["run", "-d"];
        args.extend_from_slice(options);
        args.push(IMAGE);
        args.extend_from_slice(command);
        self.ok(&args)
    }

    fn ps(&self) -> Vec<serde_json::Value> {
        self.ok(&["ps", "-a", "--json"])
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default()
    }

    fn nodes(&self) -> Vec<serde_json::Value> {
        self.ok(&["node", "ls", "--json"])
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default()
    }

    fn node_state(&self, id: &str) -> Option<String> {
        self.nodes()
            .into_iter()
            .find(|n| n["node_id"] == id)
            .and_then(|n| n["state"].as_str().map(str::to_string))
    }

    /// The rows `ps -a` shows for one container (more than one would be a duplicate).
    fn rows_of(ps: &[serde_json::Value], id: &str) -> Vec<serde_json::Value> {
        ps.iter().filter(|r| r["id"] == id).cloned().collect()
    }

    fn node_of(&self, id: &str) -> Option<String> {
        let rows = Self::rows_of(&self.ps(), id);
        match rows.as_slice() {
            [one] => one["node_id"].as_str().map(str::to_string),
            _ => None,
        }
    }

    /// Waits until the node's heartbeat lists unpacked layers (image locality is known).
    fn wait_for_layers(&self, id: &str) -> anyhow::Result<()> {
        anyhow::ensure!(
            eventually(Duration::from_secs(20), || self
                .nodes()
                .iter()
                .any(|n| n["node_id"] == id
                    && n["chain_ids"].as_array().is_some_and(|c| !c.is_empty()))),
            "node {id} never reported its layers"
        );
        Ok(())
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Remove every container (and with it its mounts) while the nodes still run.
        for row in self.ps() {
            if let Some(id) = row["id"].as_str() {
                let _ = self.berth(&["rm", "-f", id]);
            }
        }
    }
}

fn eventually(within: Duration, mut probe: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if probe() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    probe()
}

fn count_by_node(env: &Env, ids: &[String]) -> BTreeMap<String, usize> {
    let ps = env.ps();
    let mut counts = BTreeMap::new();
    for id in ids {
        for row in Env::rows_of(&ps, id) {
            let node = row["node_id"].as_str().unwrap_or_default().to_string();
            *counts.entry(node).or_insert(0) += 1;
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_spread_honour_constraints_and_pins_and_a_big_request_waits_for_room(
) -> anyhow::Result<()> {
    need_containers(&[])?;
    let mut env = Env::start(1).await?;
    env.add_node("n1", "zone=a", "2").await?;
    env.add_node("n2", "zone=b", "2").await?;
    env.add_node("n3", "zone=b", "2").await?;
    // The image on every node first, so locality ties and the policy decides.
    for node in ["n1", "n2", "n3"] {
        env.ok(&["run", "--rm", "--node", node, IMAGE, "true"])?;
    }
    for node in ["n1", "n2", "n3"] {
        env.wait_for_layers(node)?;
    }

    let mut spread = Vec::new();
    for _ in 0..30 {
        spread.push(env.run_d(&["--cpus", "0.1"], &["sleep", "600"])?);
    }
    let counts = count_by_node(&env, &spread);
    assert_eq!(counts.values().sum::<usize>(), 30, "{counts:?}");
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(
        counts.values().all(|c| *c == 10),
        "spread must even out identical nodes: {counts:?}"
    );

    // Constraints and pins.
    for _ in 0..2 {
        let id = env.run_d(&["--constraint", "node.labels.zone==a"], &["sleep", "600"])?;
        assert_eq!(env.node_of(&id).as_deref(), Some("n1"));
        let id = env.run_d(&["--constraint", "node.labels.zone!=a"], &["sleep", "600"])?;
        assert!(matches!(env.node_of(&id).as_deref(), Some("n2" | "n3")));
    }
    let pinned = env.run_d(&["--node", "n3", "--name", "pinned"], &["sleep", "600"])?;
    assert_eq!(env.node_of(&pinned).as_deref(), Some("n3"));
    // Names are unique across the fleet, not per node.
    let dup = env.berth(&[
        "run", "-d", "--node", "n1", "--name", "pinned", IMAGE, "true",
    ])?;
    assert_eq!(dup.status.code(), Some(125), "{dup:?}");

    // Bad input: a clear error, nothing placed.
    let before = env.ps().len();
    let bad = env.berth(&["run", "-d", "--constraint", "zone=a", IMAGE, "true"])?;
    assert_eq!(bad.status.code(), Some(125));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("constraint"),
        "{bad:?}"
    );
    let unknown = env.berth(&["node", "drain", "nosuch"])?;
    assert_eq!(unknown.status.code(), Some(125));
    assert_eq!(env.ps().len(), before);

    // Larger than any node: refused once its wait runs out, and no record stays behind.
    let refused = env.berth(&[
        "run",
        "-d",
        "--cpus",
        "4",
        "--wait-timeout",
        "1s",
        IMAGE,
        "true",
    ])?;
    assert_eq!(refused.status.code(), Some(125), "{refused:?}");
    assert_eq!(env.ps().len(), before);

    // … or pending, visible in ps, until a node with room joins.
    let waiting = env
        .stack
        .berth()?
        .args([
            "run",
            "-d",
            "--cpus",
            "4",
            "--wait-timeout",
            "120s",
            "--name",
            "big",
            IMAGE,
        ])
        .args(["sleep", "600"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    assert!(
        eventually(Duration::from_secs(20), || env
            .ps()
            .iter()
            .any(|r| r["name"] == "big" && r["phase"] == "pending")),
        "the big request is not shown pending: {:?}",
        env.ps()
    );
    env.add_node("n4", "zone=c", "8").await?;
    let placed = waiting.wait_with_output()?;
    assert!(placed.status.success(), "{placed:?}");
    let big = String::from_utf8_lossy(&placed.stdout).trim().to_string();
    assert_eq!(env.node_of(&big).as_deref(), Some("n4"));
    let n4 = env
        .nodes()
        .into_iter()
        .find(|n| n["node_id"] == "n4")
        .ok_or_else(|| anyhow::anyhow!("n4 not listed"))?;
    assert_eq!(n4["allocated"]["cpu_millis"], 4000, "{n4}");
    assert!(env.ok(&["node", "ls"])?.contains("zone=c"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_placement_of_an_image_prefers_the_node_that_has_it() -> anyhow::Result<()> {
    need_containers(&[])?;
    let mut env = Env::start(1).await?;
    env.add_node("n1", "zone=a", "2").await?;
    // Room for two 0.1-CPU containers only.
    env.add_node("n2", "zone=a", "0.25").await?;
    env.add_node("n3", "zone=a", "2").await?;
    env.ok(&["run", "--rm", "--node", "n2", IMAGE, "true"])?;
    env.wait_for_layers("n2")?;
    let first = env.run_d(&["--cpus", "0.1"], &["sleep", "600"])?;
    let second = env.run_d(&["--cpus", "0.1"], &["sleep", "600"])?;
    assert_eq!(env.node_of(&first).as_deref(), Some("n2"));
    assert_eq!(env.node_of(&second).as_deref(), Some("n2"));
    // No room left there: the next goes elsewhere.
    let third = env.run_d(&["--cpus", "0.1"], &["sleep", "600"])?;
    assert!(matches!(env.node_of(&third).as_deref(), Some("n1" | "n3")));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_goes_only_to_nodes_of_its_platform() -> anyhow::Result<()> {
    need_containers(&[])?;
    let mut env = Env::start(1).await?;
    // n1 says it is an arm64 machine; the test image is built for this host.
    env.stack
        .add_node(
            "n1",
            &[("BERTH_NODE_ARCH", "arm64"), ("BERTH_CAPACITY_CPUS", "2")],
        )
        .await?;
    anyhow::ensure!(
        eventually(Duration::from_secs(20), || env.node_state("n1").as_deref()
            == Some("ready")),
        "n1 never became ready: {:?}",
        env.nodes()
    );
    let refused = env.berth(&["run", "-d", "--wait-timeout", "1s", IMAGE, "true"])?;
    assert_eq!(refused.status.code(), Some(125), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("no suitable node (platform)") && stderr.contains("linux/arm64"),
        "{stderr}"
    );
    assert!(env.ps().is_empty(), "{:?}", env.ps());
    env.add_node("n2", "zone=a", "2").await?;
    for _ in 0..3 {
        let id = env.run_d(&[], &["sleep", "600"])?;
        assert_eq!(env.node_of(&id).as_deref(), Some("n2"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_goes_where_its_user_network_and_named_volume_are() -> anyhow::Result<()> {
    need_containers(&[])?;
    let mut env = Env::start(1).await?;
    env.add_node("n1", "zone=a", "4").await?;
    env.add_node("n2", "zone=a", "4").await?;
    // Made right before the runs: the node record must carry them at once.
    env.ok(&["network", "create", "--node", "n2", "backend"])?;
    env.ok(&["volume", "create", "--node", "n1", "data"])?;
    for _ in 0..3 {
        let on_network = env.run_d(&["--network", "backend"], &["sleep", "600"])?;
        assert_eq!(env.node_of(&on_network).as_deref(), Some("n2"));
        let with_volume = env.run_d(&["-v", "data:/data"], &["sleep", "600"])?;
        assert_eq!(env.node_of(&with_volume).as_deref(), Some("n1"));
    }
    // What one container writes to the volume the next one reads: same node, same data.
    let writer = env.berth(&[
        "run",
        "--rm",
        "-v",
        "data:/data",
        IMAGE,
        "sh",
        "-c",
        "echo kept > /data/f",
    ])?;
    assert_eq!(writer.status.code(), Some(0), "{writer:?}");
    let reader = env.berth(&["run", "--rm", "-v", "data:/data", IMAGE, "cat", "/data/f"])?;
    assert_eq!(
        String::from_utf8_lossy(&reader.stdout).trim(),
        "kept",
        "{reader:?}"
    );
    // On a network and a volume that live on different nodes: no node can take it.
    let split = env.berth(&[
        "run",
        "-d",
        "--wait-timeout",
        "1s",
        "--network",
        "backend",
        "-v",
        "data:/data",
        IMAGE,
        "true",
    ])?;
    assert_eq!(split.status.code(), Some(125), "{split:?}");
    let stderr = String::from_utf8_lossy(&split.stderr);
    assert!(stderr.contains("no suitable node (volume)"), "{stderr}");
    // A network no node has is refused at once, as Docker does, and nothing is made.
    let before = env.ps().len();
    let missing = env.berth(&["run", "-d", "--network", "nowhere", IMAGE, "true"])?;
    assert_eq!(missing.status.code(), Some(125), "{missing:?}");
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("network nowhere not found"), "{stderr}");
    assert_eq!(env.ps().len(), before);
    Ok(())
}

/// SIGKILLs the processes of every container on a node (monitor and payload).
fn kill_containers(data_dir: &Path) -> anyhow::Result<usize> {
    let mut killed = 0;
    for entry in std::fs::read_dir(data_dir.join("containers"))?.flatten() {
        let Ok(text) = std::fs::read(entry.path().join("state.json")) else {
            continue;
        };
        let state: serde_json::Value = serde_json::from_slice(&text)?;
        for key in ["monitor_pid", "pid"] {
            let pid = state[key].as_i64().unwrap_or_default();
            if pid > 1 {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                killed += 1;
            }
        }
    }
    Ok(killed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_node_moves_restartable_containers_loses_the_rest_and_heals_without_duplicates(
) -> anyhow::Result<()> {
    need_containers(&[])?;
    let mut env = Env::start(1).await?;
    env.add_node("n2", "zone=b", "2").await?;
    let mut always = Vec::new();
    for _ in 0..3 {
        always.push(env.run_d(&["--restart", "always", "--cpus", "0.1"], &["sleep", "600"])?);
    }
    let mut once = Vec::new();
    for _ in 0..2 {
        once.push(env.run_d(&["--cpus", "0.1"], &["sleep", "600"])?);
    }
    env.add_node("n1", "zone=a", "2").await?;
    env.add_node("n3", "zone=b", "2").await?;

    let n2_data = env
        .stack
        .node("n2")
        .map(|n| n.data_dir())
        .ok_or_else(|| anyhow::anyhow!("no n2"))?;
    env.stack.kill_node("n2").await?;
    assert!(kill_containers(&n2_data)? >= 5);

    let moved = |env: &Env| {
        let ps = env.ps();
        always.iter().all(|id| {
            let rows = Env::rows_of(&ps, id);
            rows.len() == 1
                && rows[0]["status"] == "running"
                && matches!(rows[0]["node_id"].as_str(), Some("n1" | "n3"))
        }) && once.iter().all(|id| {
            let rows = Env::rows_of(&ps, id);
            rows.len() == 1 && rows[0]["phase"] == "lost"
        })
    };
    assert!(
        eventually(Duration::from_secs(60), || moved(&env)),
        "after losing n2: {:#?}",
        env.ps()
    );
    assert_eq!(env.node_state("n2").as_deref(), Some("lost"));

    // Drain: restartable containers leave n1, no new placement lands there.
    env.ok(&["node", "drain", "n1"])?;
    assert!(
        eventually(Duration::from_secs(60), || {
            let ps = env.ps();
            always.iter().all(|id| {
                let rows = Env::rows_of(&ps, id);
                rows.len() == 1 && rows[0]["node_id"] == "n3" && rows[0]["status"] == "running"
            })
        }),
        "after draining n1: {:#?}",
        env.ps()
    );
    let fresh = env.run_d(&[], &["sleep", "600"])?;
    assert_eq!(env.node_of(&fresh).as_deref(), Some("n3"));
    env.ok(&["node", "activate", "n1"])?;
    assert_eq!(env.node_state("n1").as_deref(), Some("ready"));

    // n2 comes back: its stale copies of the moved containers go, the lost ones are
    // its own again (exited, since their processes were killed).
    env.stack.start_node("n2").await?;
    let healed = |env: &Env| {
        let ps = env.ps();
        let ids: Vec<&str> = ps.iter().filter_map(|r| r["id"].as_str()).collect();
        let unique: HashSet<&str> = ids.iter().copied().collect();
        unique.len() == ids.len()
            && always.iter().all(|id| {
                let rows = Env::rows_of(&ps, id);
                rows.len() == 1 && rows[0]["node_id"] == "n3"
            })
            && once.iter().all(|id| {
                let rows = Env::rows_of(&ps, id);
                // Killed with its monitor while the executor was gone: dead or exited.
                rows.len() == 1
                    && rows[0]["node_id"] == "n2"
                    && matches!(rows[0]["status"].as_str(), Some("exited" | "dead"))
            })
    };
    assert!(
        eventually(Duration::from_secs(60), || healed(&env)),
        "after n2 returned: {:?} {}",
        env.berth(&["ps", "-a", "--json"]),
        env.stack.node("n2").map(|n| n.logs()).unwrap_or_default()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_stopped_by_hand_is_not_re_placed_when_its_node_is_lost() -> anyhow::Result<()>
{
    need_containers(&[])?;
    let mut env = Env::start(1).await?;
    env.add_node("n1", "zone=a", "2").await?;
    let client = env.stack.nats.client().await?;
    let stopped = env.run_d(&["--restart", "always"], &["sleep", "600"])?;
    let control = env.run_d(&["--restart", "always"], &["sleep", "600"])?;
    env.add_node("n2", "zone=a", "2").await?;

    // `stop` goes through the scheduler, which remembers it in the record.
    env.ok(&["stop", "-t", "1", &stopped])?;
    let record = record_of(&client, &stopped).await?;
    assert!(record.desired.stopped, "{record:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while record_of(&client, &stopped).await?.observed.phase.as_str() != "exited" {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the stop never reached the record"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // `start` and `stop` again: the start forgets the stop, the stop is remembered.
    env.ok(&["start", &stopped])?;
    assert!(!record_of(&client, &stopped).await?.desired.stopped);
    env.ok(&["stop", "-t", "1", &stopped])?;
    assert!(record_of(&client, &stopped).await?.desired.stopped);

    let n1_data = env
        .stack
        .node("n1")
        .map(|n| n.data_dir())
        .ok_or_else(|| anyhow::anyhow!("no n1"))?;
    env.stack.kill_node("n1").await?;
    kill_containers(&n1_data)?;

    // The control one moves to n2 …
    assert!(
        eventually(Duration::from_secs(60), || {
            let rows = Env::rows_of(&env.ps(), &control);
            rows.len() == 1 && rows[0]["node_id"] == "n2" && rows[0]["status"] == "running"
        }),
        "the running --restart always container was not re-placed: {:#?}",
        env.ps()
    );
    // … the stopped one stays where it was, stopped, placed once.
    let record = record_of(&client, &stopped).await?;
    assert_eq!(record.observed.node_id.as_deref(), Some("n1"), "{record:?}");
    assert_eq!(record.observed.placements, 1, "{record:?}");
    assert!(
        matches!(record.observed.phase.as_str(), "exited" | "lost"),
        "{record:?}"
    );
    assert!(
        Env::rows_of(&env.ps(), &stopped).is_empty(),
        "the stopped container runs somewhere: {:#?}",
        env.ps()
    );
    Ok(())
}

/// The ids `ps -a --node NODE` shows: that node's executor's own listing.
fn listed_on(env: &Env, node: &str) -> Option<Vec<String>> {
    let text = env.ok(&["ps", "-a", "--node", node, "--json"]).ok()?;
    let rows: Vec<serde_json::Value> = serde_json::from_str(&text).ok()?;
    Some(
        rows.iter()
            .filter_map(|r| r["id"].as_str().map(str::to_string))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rm_of_a_container_on_a_lost_node_removes_it_there_once_the_node_is_back(
) -> anyhow::Result<()> {
    need_containers(&[])?;
    let mut env = Env::start(1).await?;
    env.add_node("n1", "zone=a", "2").await?;
    env.add_node("n2", "zone=a", "2").await?;
    let client = env.stack.nats.client().await?;
    let doomed = env.run_d(&["--node", "n1", "--name", "doomed"], &["sleep", "600"])?;
    let kept = env.run_d(&["--node", "n1", "--name", "kept"], &["sleep", "600"])?;
    assert_eq!(env.node_of(&doomed).as_deref(), Some("n1"));

    // n1's executor and unpacker die; its containers keep running.
    env.stack.kill_node("n1").await?;
    assert!(
        eventually(Duration::from_secs(30), || env.node_state("n1").as_deref()
            == Some("lost")),
        "n1 never became lost: {:?}",
        env.nodes()
    );
    env.ok(&["rm", "-f", "doomed"])?;
    assert!(
        Env::rows_of(&env.ps(), &doomed).is_empty(),
        "{:#?}",
        env.ps()
    );
    // The name is free again at once.
    let again = env.run_d(&["--node", "n2", "--name", "doomed"], &["true"])?;
    env.ok(&["rm", "-f", &again])?;

    // n1 comes back with the container still there: the scheduler removes it, and
    // ps never shows it meanwhile.
    env.stack.start_node("n1").await?;
    let mut shown = false;
    assert!(
        eventually(Duration::from_secs(60), || {
            shown |= !Env::rows_of(&env.ps(), &doomed).is_empty();
            listed_on(&env, "n1").is_some_and(|ids| !ids.contains(&doomed))
        }),
        "the container removed while n1 was lost is still there: {:?} {}",
        listed_on(&env, "n1"),
        env.stack.node("n1").map(|n| n.logs()).unwrap_or_default()
    );
    assert!(
        !shown,
        "ps showed the removed container while n1 still had it"
    );
    assert!(Env::rows_of(&env.ps(), &doomed).is_empty());
    // … and only that one: the other container of n1 is n1's again.
    assert!(listed_on(&env, "n1").is_some_and(|ids| ids.contains(&kept)));
    // The tombstone goes once its work is done.
    let js = async_nats::jetstream::new(client.clone());
    let kv = js.get_key_value(names::CONTAINERS_BUCKET).await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while kv.get(format!("gone.{doomed}")).await?.is_some() {
        anyhow::ensure!(Instant::now() < deadline, "the tombstone stays");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// The scheduler's record of a container (what `inspect` through the scheduler answers).
async fn record_of(client: &async_nats::Client, id: &str) -> anyhow::Result<ContainerRecord> {
    Ok(berth_bus::request(
        client,
        &subjects::sched(SchedVerb::Inspect),
        &SchedRef {
            reference: id.to_string(),
        },
        Encoding::Bincode,
        Duration::from_secs(5),
    )
    .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exit_while_no_scheduler_runs_reaches_the_record_once_one_starts() -> anyhow::Result<()>
{
    need_containers(&[])?;
    let mut env = Env::start(1).await?;
    env.add_node("n1", "zone=a", "2").await?;
    let client = env.stack.nats.client().await?;
    // Exits with 3 once told to, so the exit surely happens while no scheduler runs.
    let id = env.run_d(
        &[],
        &["sh", "-c", "while [ ! -e /go ]; do sleep 0.1; done; exit 3"],
    )?;
    let running = record_of(&client, &id).await?;
    assert_eq!(running.observed.phase.as_str(), "running", "{running:?}");

    env.stack.kill_service("berth-scheduler").await?;
    env.ok(&["exec", "--node", "n1", &id, "touch", "/go"])?;
    let exited_on_node = || {
        env.ok(&["ps", "-a", "--node", "n1", "--json"])
            .ok()
            .and_then(|text| serde_json::from_str::<Vec<serde_json::Value>>(&text).ok())
            .is_some_and(|rows| {
                rows.iter().any(|r| {
                    r["id"] == id.as_str() && r["status"] == "exited" && r["exit_code"] == 3
                })
            })
    };
    assert!(
        eventually(Duration::from_secs(20), exited_on_node),
        "the container never exited on n1"
    );

    // The die event waited in BERTH_EVENTS for the durable consumer; nothing else (no
    // reconcile pass) turns a running record into an exited one with its code.
    env.stack.start_service("berth-scheduler").await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let record = record_of(&client, &id).await?;
        if record.observed.phase.as_str() == "exited" {
            assert_eq!(record.observed.exit_code, Some(3), "{record:?}");
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the record never saw the exit: {record:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

// ---- fake nodes: placement races without containers ----

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Creates seen by the fake executors: container id → nodes it was created on.
type Creates = Arc<Mutex<HashMap<String, Vec<String>>>>;

/// Heartbeats for `nodes` (capacity `cpu_millis` each) and an executor for them that
/// acknowledges create and start, after `delay`.
async fn fake_nodes(
    client: &async_nats::Client,
    nodes: &[&str],
    cpu_millis: u64,
    delay: Duration,
) -> anyhow::Result<(Creates, Vec<tokio::task::JoinHandle<()>>)> {
    let js = async_nats::jetstream::new(client.clone());
    let kv =
        berth_bus::jetstream::ensure_kv(&js, names::NODES_BUCKET, "berth node records", 1).await?;
    let ids: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
    let heartbeat = tokio::spawn(async move {
        loop {
            for id in &ids {
                let record = NodeRecord {
                    node_id: id.clone(),
                    state: NodeState::Ready,
                    capacity: Resources {
                        cpu_millis,
                        memory_bytes: 1 << 34,
                        pids: 0,
                    },
                    allocated: Resources::default(),
                    labels: Default::default(),
                    chain_ids: Vec::new(),
                    containers: 0,
                    last_heartbeat_ms: now_ms(),
                    executor_version: "fake".into(),
                    ports: Vec::new(),
                    platform: None,
                    volumes: Vec::new(),
                    networks: Vec::new(),
                };
                if let Ok(body) = serde_json::to_vec(&record) {
                    let _ = kv.put(id.as_str(), body.into()).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let creates: Creates = Arc::default();
    let mut subscription = client.subscribe("berth.v1.exec.*.*").await?;
    let served = Arc::clone(&creates);
    let replier = client.clone();
    let fakes: HashSet<String> = nodes.iter().map(|n| n.to_string()).collect();
    let executor = tokio::spawn(async move {
        while let Some(message) = subscription.next().await {
            let mut parts = message.subject.split('.').skip(3);
            let (Some(node), Some(verb)) = (parts.next(), parts.next()) else {
                continue;
            };
            let (node, verb) = (node.to_string(), verb.to_string());
            let Some(reply) = message.reply.clone() else {
                continue;
            };
            if !fakes.contains(&node) {
                continue;
            }
            let served = Arc::clone(&served);
            let replier = replier.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let body = match verb.as_str() {
                    "create" => {
                        let Ok(request) =
                            Encoding::Bincode.decode::<ContainerCreateRequest>(&message.payload)
                        else {
                            return;
                        };
                        let id = request.id.clone().unwrap_or_default();
                        served
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .entry(id.clone())
                            .or_default()
                            .push(node.clone());
                        Encoding::Bincode.encode(&ContainerCreated {
                            id,
                            name: request.name.unwrap_or_default(),
                            image_digest: "sha256:fake".into(),
                        })
                    }
                    "start" => {
                        let Ok(request) = Encoding::Bincode
                            .decode::<berth_proto::messages::exec::ContainerRef>(
                            &message.payload,
                        ) else {
                            return;
                        };
                        Encoding::Bincode.encode(&ContainerStarted {
                            id: request.id,
                            pid: 1,
                        })
                    }
                    _ => return,
                };
                if let Ok(body) = body {
                    let _ = replier.publish(reply, body.into()).await;
                }
            });
        }
    });
    Ok((creates, vec![heartbeat, executor]))
}

fn hex_id(i: usize) -> String {
    // The first 12 digits differ: they make the default name.
    format!("{:012x}{}", 0xbe27_0000_0000u64 + i as u64, "0".repeat(52))
}

fn run_request(i: usize, cpu_millis: u64, wait_ms: u64) -> SchedRunRequest {
    SchedRunRequest {
        id: Some(hex_id(i)),
        create: ContainerCreateRequest {
            image: IMAGE.into(),
            nano_cpus: Some(cpu_millis * 1_000_000),
            cmd: vec!["sleep".into(), "600".into()],
            ..Default::default()
        },
        wait_timeout_ms: Some(wait_ms),
        ..Default::default()
    }
}

async fn allocations(
    client: &async_nats::Client,
    nodes: &[&str],
) -> anyhow::Result<HashMap<String, NodeAlloc>> {
    let js = async_nats::jetstream::new(client.clone());
    let kv = js.get_key_value(names::NODES_BUCKET).await?;
    let mut out = HashMap::new();
    for node in nodes {
        let alloc = match kv.get(alloc_key(node)).await? {
            Some(value) => serde_json::from_slice(&value)?,
            None => NodeAlloc::default(),
        };
        out.insert(node.to_string(), alloc);
    }
    Ok(out)
}

async fn record_ids(client: &async_nats::Client) -> anyhow::Result<HashSet<String>> {
    let js = async_nats::jetstream::new(client.clone());
    let kv = js.get_key_value(names::CONTAINERS_BUCKET).await?;
    let keys: Vec<String> = kv
        .keys()
        .await?
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .flatten()
        .collect();
    Ok(keys
        .into_iter()
        .filter(|k| !k.starts_with("name.") && !k.starts_with("gone."))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_schedulers_answer_200_concurrent_runs_without_over_allocating() -> anyhow::Result<()> {
    fixtures::need("busybox")?;
    let env = Env::start(2).await?;
    let client = env.stack.nats.client().await?;
    let nodes = ["fake-1", "fake-2", "fake-3"];
    let (creates, tasks) = fake_nodes(&client, &nodes, 2000, Duration::ZERO).await?;
    // Room for 20 containers of 0.1 CPU per node: 60 of the 200 fit.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let answers = futures::future::join_all((0..200).map(|i| {
        let client = client.clone();
        async move {
            let reply: Result<SchedRunReply, berth_bus::BusError> = berth_bus::request(
                &client,
                &subjects::sched(SchedVerb::Run),
                &run_request(i, 100, 3000),
                Encoding::Bincode,
                Duration::from_secs(90),
            )
            .await;
            (hex_id(i), reply)
        }
    }))
    .await;
    let mut placed = HashSet::new();
    for (id, answer) in &answers {
        match answer {
            Ok(reply) => {
                assert_eq!(&reply.id, id);
                assert!(nodes.contains(&reply.node_id.as_str()), "{reply:?}");
                placed.insert(id.clone());
            }
            Err(err) => assert_eq!(
                err.kind(),
                Some(ErrorKind::Unavailable),
                "every request gets an answer: {err}"
            ),
        }
    }
    assert_eq!(placed.len(), 60, "exactly the capacity is placed");
    let allocs = allocations(&client, &nodes).await?;
    let mut reserved = HashSet::new();
    for (node, alloc) in &allocs {
        assert!(
            alloc.allocated.cpu_millis <= 2000,
            "{node} over-allocated: {alloc:?}"
        );
        assert_eq!(
            alloc.allocated.cpu_millis,
            100 * alloc.containers.len() as u64
        );
        for id in alloc.containers.keys() {
            assert!(reserved.insert(id.clone()), "{id} reserved on two nodes");
        }
    }
    assert_eq!(reserved, placed);
    let created = creates.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert_eq!(created.keys().cloned().collect::<HashSet<_>>(), placed);
    for (id, on) in &created {
        let distinct: HashSet<&String> = on.iter().collect();
        assert_eq!(distinct.len(), 1, "{id} created on {on:?}");
    }
    assert_eq!(record_ids(&client).await?, placed);
    for task in tasks {
        task.abort();
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_restarted_mid_stream_loses_no_container_record() -> anyhow::Result<()> {
    fixtures::need("busybox")?;
    let mut env = Env::start(1).await?;
    let client = env.stack.nats.client().await?;
    let nodes = ["fake-a", "fake-b", "fake-c"];
    // Slow creates, so that the restart lands while many runs are in flight.
    let (creates, tasks) =
        fake_nodes(&client, &nodes, 1_000_000, Duration::from_millis(300)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let total = 100;
    let runs = futures::future::join_all((0..total).map(|i| {
        let client = client.clone();
        async move {
            // A client retries with the same id until it gets an answer.
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let reply: Result<SchedRunReply, berth_bus::BusError> = berth_bus::request(
                    &client,
                    &subjects::sched(SchedVerb::Run),
                    &run_request(i, 10, 60_000),
                    Encoding::Bincode,
                    Duration::from_secs(8),
                )
                .await;
                match reply {
                    Ok(reply) => return Ok(reply),
                    Err(err) if Instant::now() > deadline => return Err(err),
                    Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
                }
            }
        }
    }));
    let restart = async {
        let started = Instant::now();
        while creates.lock().unwrap_or_else(|p| p.into_inner()).len() < 20 {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(60),
                "no creates reached the fake nodes"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        env.stack.kill_service("berth-scheduler").await?;
        env.stack.start_service("berth-scheduler").await?;
        anyhow::Ok(())
    };
    let (answers, restarted) = tokio::join!(runs, restart);
    restarted?;
    let mut answered = HashSet::new();
    for answer in answers {
        let reply = answer.map_err(|err| anyhow::anyhow!("a run was never answered: {err}"))?;
        answered.insert(reply.id);
    }
    assert_eq!(answered.len(), total);
    assert_eq!(record_ids(&client).await?, answered, "every record is kept");
    let created = creates.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert_eq!(created.keys().cloned().collect::<HashSet<_>>(), answered);
    for (id, on) in &created {
        let distinct: HashSet<&String> = on.iter().collect();
        assert_eq!(distinct.len(), 1, "{id} created on {on:?}");
    }
    let mut reserved = HashSet::new();
    for alloc in allocations(&client, &nodes).await?.values() {
        for id in alloc.containers.keys() {
            assert!(reserved.insert(id.clone()), "{id} reserved twice");
        }
    }
    assert_eq!(reserved, answered);
    for task in tasks {
        task.abort();
    }
    Ok(())
}
