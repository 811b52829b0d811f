//! Placement as pure functions over a snapshot of the nodes: filter (state, platform,
//! the node-local things a container uses — its user network, named volumes that hold
//! data, fixed host ports — constraints, pin, free resources), then score (image locality first, then spread or
//! binpack). No NATS here, so every rule is unit-tested.

use berth_proto::messages::image::ImagePlatform;
use berth_proto::messages::network::{PortBinding, PortSpec};
use berth_proto::messages::node::{NodeNetwork, NodeState, Resources};
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};

/// How ties in locality are broken.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// The least busy node (containers evenly over the fleet).
    #[default]
    Spread,
    /// The busiest node that fits (keeps whole nodes free).
    Binpack,
}

/// `node.labels.KEY==VALUE` / `node.labels.KEY!=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    pub key: String,
    pub value: String,
    pub equal: bool,
}

impl Constraint {
    /// Parses one `--constraint`.
    pub fn parse(text: &str) -> Result<Constraint, String> {
        let (left, value, equal) = if let Some((l, r)) = text.split_once("!=") {
            (l, r, false)
        } else if let Some((l, r)) = text.split_once("==") {
            (l, r, true)
        } else {
            return Err(format!(
                "invalid constraint {text:?}: use node.labels.KEY==VALUE or node.labels.KEY!=VALUE"
            ));
        };
        let key = left
            .trim()
            .strip_prefix("node.labels.")
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                format!("invalid constraint {text:?}: only node.labels.KEY is supported")
            })?;
        Ok(Constraint {
            key: key.to_string(),
            value: value.trim().to_string(),
            equal,
        })
    }

    /// Whether a node with `labels` satisfies it (a missing label is "not equal").
    pub fn holds(&self, labels: &BTreeMap<String, String>) -> bool {
        let same = labels.get(&self.key).is_some_and(|v| *v == self.value);
        same == self.equal
    }
}

/// What placement knows about one node.
#[derive(Debug, Clone)]
pub struct Candidate<'a> {
    pub node_id: &'a str,
    /// Effective state (liveness and admin applied).
    pub state: NodeState,
    pub capacity: Resources,
    pub allocated: Resources,
    /// Containers reserved on it.
    pub containers: usize,
    pub labels: &'a BTreeMap<String, String>,
    pub chain_ids: &'a HashSet<String>,
    /// `None`: the node does not say (an older executor).
    pub platform: Option<&'a ImagePlatform>,
    /// Named volumes on the node.
    pub volumes: &'a [String],
    /// User networks on the node.
    pub networks: &'a [NodeNetwork],
    /// Host ports its running containers publish.
    pub ports: &'a [PortBinding],
}

/// What one container asks for.
#[derive(Debug, Clone, Default)]
pub struct Ask<'a> {
    pub resources: Resources,
    pub constraints: &'a [Constraint],
    pub pin: Option<&'a str>,
    /// The image's layers: (chainID, bytes).
    pub layers: &'a [(String, u64)],
    /// The image's platform; `None` when its config names none.
    pub platform: Option<&'a ImagePlatform>,
    /// `--network NAME`: a user network (not bridge, host or none).
    pub network: Option<&'a str>,
    /// Named volumes it mounts.
    pub volumes: &'a [String],
    /// `-p`: the ports it publishes (only those with a fixed host port matter).
    pub ports: &'a [PortSpec],
}

/// OCI's spelling of architectures some image builders write otherwise.
fn normal_arch(arch: &str) -> &str {
    match arch {
        "x86_64" | "x86-64" => "amd64",
        "aarch64" => "arm64",
        "i386" | "i686" => "386",
        other => other,
    }
}

/// Whether a node of platform `node` runs an image built for `image`. What either side
/// leaves unsaid matches (an image config without os or architecture, a node that does
/// not report); a variant must agree only when both name one (arm64 means v8).
pub fn platform_matches(node: Option<&ImagePlatform>, image: Option<&ImagePlatform>) -> bool {
    let (Some(node), Some(image)) = (node, image) else {
        return true;
    };
    let same = |a: &str, b: &str| a.is_empty() || b.is_empty() || a == b;
    same(&node.os, &image.os)
        && same(
            normal_arch(&node.architecture),
            normal_arch(&image.architecture),
        )
        && match (node.variant.as_deref(), image.variant.as_deref()) {
            (Some(a), Some(b)) => same(a, b),
            _ => true,
        }
}

/// `os/arch[/variant]`, as Docker prints a platform.
pub fn show_platform(platform: Option<&ImagePlatform>) -> String {
    match platform {
        None => "unknown".to_string(),
        Some(p) => {
            let mut text = format!("{}/{}", p.os, p.architecture);
            if let Some(variant) = p.variant.as_deref().filter(|v| !v.is_empty()) {
                text.push('/');
                text.push_str(variant);
            }
            text
        }
    }
}

/// `allocated + ask` stays within `capacity` on every axis (a 0 capacity means "not
/// reported": pids on some hosts).
pub fn fits(capacity: Resources, allocated: Resources, ask: Resources) -> bool {
    let within = |cap: u64, used: u64, want: u64| {
        want == 0 || used.checked_add(want).is_some_and(|total| total <= cap)
    };
    within(capacity.cpu_millis, allocated.cpu_millis, ask.cpu_millis)
        && within(
            capacity.memory_bytes,
            allocated.memory_bytes,
            ask.memory_bytes,
        )
        && within(capacity.pids, allocated.pids, ask.pids)
}

/// Whether the node has the user network `reference`.
fn has_network(node: &Candidate<'_>, reference: &str) -> bool {
    node.networks.iter().any(|n| n.answers_to(reference))
}

/// Whether the two host addresses overlap (`0.0.0.0` or unsaid is every address).
fn same_address(a: &str, b: &str) -> bool {
    let every = |ip: &str| ip.is_empty() || ip == "0.0.0.0";
    every(a) || every(b) || a == b
}

/// A fixed host port of `ask` that a running container of the node publishes already.
fn taken_port<'a>(node: &Candidate<'_>, ask: &Ask<'a>) -> Option<&'a PortSpec> {
    ask.ports.iter().find(|spec| {
        spec.host_port.is_some_and(|port| {
            node.ports.iter().any(|used| {
                used.host_port == port
                    && used.protocol == spec.protocol
                    && same_address(&used.host_ip, spec.host_ip.as_deref().unwrap_or(""))
            })
        })
    })
}

/// The asked volumes that exist on some node: their data is there, so only a node that
/// has every one of them may take the container. A volume that exists nowhere yet is
/// made wherever the container goes, as Docker makes it on first use.
pub fn bound_volumes<'a>(nodes: &[Candidate<'_>], ask: &Ask<'a>) -> Vec<&'a str> {
    ask.volumes
        .iter()
        .filter(|v| nodes.iter().any(|n| n.volumes.contains(v)))
        .map(String::as_str)
        .collect()
}

/// What `eligible` checks besides the pin, in the order [`explain`] reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Filter {
    Ready,
    Platform,
    Network,
    Volumes,
    Ports,
    Constraints,
    Room,
}

const FILTERS: [Filter; 7] = [
    Filter::Ready,
    Filter::Platform,
    Filter::Network,
    Filter::Volumes,
    Filter::Ports,
    Filter::Constraints,
    Filter::Room,
];

fn passes(filter: Filter, node: &Candidate<'_>, ask: &Ask<'_>, bound: &[&str]) -> bool {
    match filter {
        Filter::Ready => node.state == NodeState::Ready,
        Filter::Platform => platform_matches(node.platform, ask.platform),
        Filter::Network => ask.network.is_none_or(|r| has_network(node, r)),
        Filter::Volumes => bound.iter().all(|v| node.volumes.iter().any(|n| n == v)),
        Filter::Ports => taken_port(node, ask).is_none(),
        Filter::Constraints => ask.constraints.iter().all(|c| c.holds(node.labels)),
        Filter::Room => fits(node.capacity, node.allocated, ask.resources),
    }
}

/// Whether `node` may take `ask` at all (`bound`: [`bound_volumes`] of the snapshot).
pub fn eligible(node: &Candidate<'_>, ask: &Ask<'_>, bound: &[&str]) -> bool {
    ask.pin.is_none_or(|pin| pin == node.node_id)
        && FILTERS.iter().all(|f| passes(*f, node, ask, bound))
}

/// Share (0..=1000 per mille) of the image's bytes the node holds already.
pub fn locality(node: &Candidate<'_>, layers: &[(String, u64)]) -> u64 {
    let total: u64 = layers.iter().map(|(_, size)| (*size).max(1)).sum();
    if total == 0 {
        return 0;
    }
    let held: u64 = layers
        .iter()
        .filter(|(chain_id, _)| node.chain_ids.contains(chain_id))
        .map(|(_, size)| (*size).max(1))
        .sum();
    held.saturating_mul(1000) / total
}

/// How full the node would be (per mille of its most used axis) after taking `ask`.
fn fullness(node: &Candidate<'_>, ask: Resources) -> u64 {
    let share = |cap: u64, used: u64, want: u64| {
        used.saturating_add(want)
            .saturating_mul(1000)
            .checked_div(cap)
            .unwrap_or(0)
    };
    share(
        node.capacity.cpu_millis,
        node.allocated.cpu_millis,
        ask.cpu_millis,
    )
    .max(share(
        node.capacity.memory_bytes,
        node.allocated.memory_bytes,
        ask.memory_bytes,
    ))
}

/// The sort key of an eligible node: smaller is better.
fn rank<'a>(node: &Candidate<'a>, ask: &Ask<'_>, strategy: Strategy) -> (u64, i64, i64, &'a str) {
    let locality = locality(node, ask.layers);
    let full = fullness(node, ask.resources) as i64;
    let count = node.containers as i64;
    let (first, second) = match strategy {
        Strategy::Spread => (count, full),
        Strategy::Binpack => (-full, -count),
    };
    (1000 - locality, first, second, node.node_id)
}

/// The best node for `ask`, or `None` when none is eligible.
pub fn choose<'a>(nodes: &[Candidate<'a>], ask: &Ask<'_>, strategy: Strategy) -> Option<&'a str> {
    let bound = bound_volumes(nodes, ask);
    nodes
        .iter()
        .filter(|node| eligible(node, ask, &bound))
        .min_by_key(|node| rank(node, ask, strategy))
        .map(|node| node.node_id)
}

/// Names of `nodes`, sorted, for messages.
fn listed(nodes: &[&Candidate<'_>]) -> String {
    let mut ids: Vec<&str> = nodes.iter().map(|n| n.node_id).collect();
    ids.sort_unstable();
    ids.join(", ")
}

/// Why the filter `failed` left none of `left` (what passed the filters before it).
fn why(
    failed: Filter,
    all: &[Candidate<'_>],
    left: &[&Candidate<'_>],
    ask: &Ask<'_>,
    bound: &[&str],
) -> String {
    let ready: Vec<&Candidate<'_>> = all.iter().filter(|n| n.state == NodeState::Ready).collect();
    match failed {
        Filter::Ready => match ask.pin {
            Some(pin) => format!("node {pin} is not ready"),
            None => format!("none of {} nodes is ready", all.len()),
        },
        Filter::Platform if ask.pin.is_some() => format!(
            "no suitable node (platform): node {} is {}, the image is {}",
            left.first().map_or("", |n| n.node_id),
            left.first()
                .map_or("unknown".to_string(), |n| show_platform(n.platform)),
            show_platform(ask.platform)
        ),
        Filter::Platform => {
            let mut seen: Vec<String> = ready.iter().map(|n| show_platform(n.platform)).collect();
            seen.sort();
            seen.dedup();
            format!(
                "no suitable node (platform): no ready node runs {} images (ready nodes are {})",
                show_platform(ask.platform),
                seen.join(", ")
            )
        }
        Filter::Network => {
            let network = ask.network.unwrap_or_default();
            let homes: Vec<&Candidate<'_>> =
                all.iter().filter(|n| has_network(n, network)).collect();
            if homes.is_empty() {
                format!("no suitable node (network): network {network} exists on no node")
            } else {
                format!(
                    "no suitable node (network): network {network} exists only on {}, which cannot take it",
                    listed(&homes)
                )
            }
        }
        Filter::Volumes => {
            let homes = |v: &str| -> Vec<&Candidate<'_>> {
                all.iter()
                    .filter(|n| n.volumes.iter().any(|x| x == v))
                    .collect()
            };
            let mut parts: Vec<String> = bound
                .iter()
                .map(|v| format!("{v} is on {}", listed(&homes(v))))
                .collect();
            parts.dedup();
            format!(
                "no suitable node (volume): named volumes hold their data on one node and no node able to take it has them all ({})",
                parts.join("; ")
            )
        }
        Filter::Ports => {
            let taken: Vec<String> = left
                .iter()
                .filter_map(|n| taken_port(n, ask))
                .filter_map(|spec| {
                    spec.host_port
                        .map(|port| format!("{port}/{}", spec.protocol.as_str()))
                })
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            format!(
                "no suitable node (port): host port {} is taken on every node that could take it",
                taken.join(", ")
            )
        }
        Filter::Constraints => match ask.pin {
            Some(pin) => format!("node {pin} does not meet the constraints"),
            None => format!(
                "no ready node meets the constraints ({} ready)",
                ready.len()
            ),
        },
        Filter::Room => {
            let what = format!(
                "{} millicpu, {} bytes of memory, {} pids",
                ask.resources.cpu_millis, ask.resources.memory_bytes, ask.resources.pids
            );
            match ask.pin {
                Some(pin) => format!("node {pin} has no room for {what}"),
                None => format!("no node has room for {what} ({} nodes match)", left.len()),
            }
        }
    }
}

/// The first filter (in order) that leaves no node, with the nodes that passed the ones
/// before it; `Ok` when some node passes them all. `Err(None)`: the pin names no node.
fn first_failing<'n, 'a>(
    nodes: &'n [Candidate<'a>],
    ask: &Ask<'_>,
    bound: &[&str],
) -> Result<(), Option<(Filter, Vec<&'n Candidate<'a>>)>> {
    let mut left: Vec<&Candidate<'_>> = match ask.pin {
        None => nodes.iter().collect(),
        Some(pin) => match nodes.iter().find(|n| n.node_id == pin) {
            None => return Err(None),
            Some(node) => vec![node],
        },
    };
    for filter in FILTERS {
        let passed: Vec<&Candidate<'_>> = left
            .iter()
            .copied()
            .filter(|n| passes(filter, n, ask, bound))
            .collect();
        if passed.is_empty() {
            return Err(Some((filter, left)));
        }
        left = passed;
    }
    Ok(())
}

/// Why no node fits, for the pending record and the error reply: the first filter that
/// leaves no node, applied in order.
pub fn explain(nodes: &[Candidate<'_>], ask: &Ask<'_>) -> String {
    if nodes.is_empty() {
        return "no nodes are registered".to_string();
    }
    let bound = bound_volumes(nodes, ask);
    match first_failing(nodes, ask, &bound) {
        Ok(()) => "every node changed while placing; try again".to_string(),
        Err(None) => format!("node {} is not registered", ask.pin.unwrap_or_default()),
        Err(Some((filter, left))) => why(filter, nodes, &left, ask, &bound),
    }
}

/// Whether the one thing in the way is a fixed host port that a running container of
/// every remaining node publishes. A new `run` is then placed as if it asked for no port
/// and its start fails there as Docker's does (created, not started, exit 125 with the
/// holder named) rather than waiting for the other container to go.
pub fn only_ports_in_the_way(nodes: &[Candidate<'_>], ask: &Ask<'_>) -> bool {
    let bound = bound_volumes(nodes, ask);
    matches!(
        first_failing(nodes, ask, &bound),
        Err(Some((Filter::Ports, _)))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        labels: Vec<BTreeMap<String, String>>,
        chains: Vec<HashSet<String>>,
        platforms: Vec<Option<ImagePlatform>>,
        volumes: Vec<Vec<String>>,
        networks: Vec<Vec<NodeNetwork>>,
        ports: Vec<Vec<PortBinding>>,
    }

    fn platform(os: &str, arch: &str, variant: Option<&str>) -> ImagePlatform {
        ImagePlatform {
            os: os.into(),
            architecture: arch.into(),
            variant: variant.map(str::to_string),
        }
    }

    fn res(cpu: u64, mem: u64) -> Resources {
        Resources {
            cpu_millis: cpu,
            memory_bytes: mem,
            pids: 0,
        }
    }

    impl Fixture {
        fn new() -> Fixture {
            let zone = |z: &str| BTreeMap::from([("zone".to_string(), z.to_string())]);
            Fixture {
                labels: vec![zone("a"), zone("b"), zone("b")],
                chains: vec![HashSet::new(), HashSet::new(), HashSet::new()],
                platforms: vec![Some(platform("linux", "amd64", None)); 3],
                volumes: vec![Vec::new(); 3],
                networks: vec![Vec::new(); 3],
                ports: vec![Vec::new(); 3],
            }
        }

        fn nodes(&self, allocated: [u64; 3], counts: [usize; 3]) -> Vec<Candidate<'_>> {
            ["n1", "n2", "n3"]
                .iter()
                .enumerate()
                .map(|(i, id)| Candidate {
                    node_id: id,
                    state: NodeState::Ready,
                    capacity: res(2000, 1 << 30),
                    allocated: res(allocated[i], 0),
                    containers: counts[i],
                    labels: &self.labels[i],
                    chain_ids: &self.chains[i],
                    platform: self.platforms[i].as_ref(),
                    volumes: &self.volumes[i],
                    networks: &self.networks[i],
                    ports: &self.ports[i],
                })
                .collect()
        }
    }

    #[test]
    fn constraints_parse_and_hold() {
        let eq = Constraint::parse("node.labels.zone==a").expect("parses");
        let ne = Constraint::parse("node.labels.zone != a").expect("parses");
        let a = BTreeMap::from([("zone".to_string(), "a".to_string())]);
        let none = BTreeMap::new();
        assert!(eq.holds(&a) && !eq.holds(&none));
        assert!(!ne.holds(&a) && ne.holds(&none));
        for bad in ["zone=a", "node.zone==a", "node.labels.==a", ""] {
            assert!(Constraint::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn resources_never_go_beyond_capacity() {
        assert!(fits(res(1000, 100), res(500, 50), res(500, 50)));
        assert!(!fits(res(1000, 100), res(501, 0), res(500, 0)));
        assert!(!fits(res(1000, 100), res(0, 60), res(0, 50)));
        assert!(fits(res(1000, 100), res(1000, 100), res(0, 0)));
        assert!(!fits(res(1000, 100), res(u64::MAX, 0), res(1, 0)));
    }

    #[test]
    fn spread_takes_the_least_busy_node_and_binpack_the_busiest() {
        let f = Fixture::new();
        let nodes = f.nodes([500, 0, 1000], [1, 0, 2]);
        let ask = Ask {
            resources: res(500, 0),
            ..Default::default()
        };
        assert_eq!(choose(&nodes, &ask, Strategy::Spread), Some("n2"));
        assert_eq!(choose(&nodes, &ask, Strategy::Binpack), Some("n3"));
        // n3 full: binpack falls back to the next busiest.
        let nodes = f.nodes([500, 0, 2000], [1, 0, 4]);
        assert_eq!(choose(&nodes, &ask, Strategy::Binpack), Some("n1"));
    }

    #[test]
    fn constraints_and_pins_filter_before_scoring() {
        let f = Fixture::new();
        let nodes = f.nodes([1000, 0, 0], [5, 0, 0]);
        let zone_a = [Constraint::parse("node.labels.zone==a").expect("parses")];
        let ask = Ask {
            resources: res(100, 0),
            constraints: &zone_a,
            ..Default::default()
        };
        assert_eq!(choose(&nodes, &ask, Strategy::Spread), Some("n1"));
        let not_a = [Constraint::parse("node.labels.zone!=a").expect("parses")];
        let ask = Ask {
            constraints: &not_a,
            pin: Some("n3"),
            ..Default::default()
        };
        assert_eq!(choose(&nodes, &ask, Strategy::Spread), Some("n3"));
        let ask = Ask {
            constraints: &not_a,
            pin: Some("n1"),
            ..Default::default()
        };
        assert_eq!(choose(&nodes, &ask, Strategy::Spread), None);
        assert!(explain(&nodes, &ask).contains("n1"));
    }

    #[test]
    fn a_request_larger_than_every_node_fits_nowhere() {
        let f = Fixture::new();
        let nodes = f.nodes([0, 0, 0], [0, 0, 0]);
        let ask = Ask {
            resources: res(4000, 0),
            ..Default::default()
        };
        assert_eq!(choose(&nodes, &ask, Strategy::Spread), None);
        assert!(explain(&nodes, &ask).contains("no node has room"));
    }

    #[test]
    fn image_locality_comes_before_spread() {
        let mut f = Fixture::new();
        f.chains[2] = HashSet::from(["sha256:base".to_string(), "sha256:top".to_string()]);
        f.chains[0] = HashSet::from(["sha256:base".to_string()]);
        let layers = vec![
            ("sha256:base".to_string(), 100),
            ("sha256:top".to_string(), 900),
        ];
        let nodes = f.nodes([0, 0, 1500], [0, 0, 3]);
        let ask = Ask {
            resources: res(500, 0),
            layers: &layers,
            ..Default::default()
        };
        assert_eq!(locality(&nodes[2], &layers), 1000);
        assert_eq!(locality(&nodes[0], &layers), 100);
        assert_eq!(choose(&nodes, &ask, Strategy::Spread), Some("n3"));
        // No room on the node with the image: the next best locality wins.
        let nodes = f.nodes([0, 0, 1600], [0, 0, 3]);
        assert_eq!(choose(&nodes, &ask, Strategy::Spread), Some("n1"));
    }

    #[test]
    fn only_ready_nodes_take_work() {
        let f = Fixture::new();
        let mut nodes = f.nodes([0, 0, 0], [0, 0, 0]);
        nodes[0].state = NodeState::Draining;
        nodes[1].state = NodeState::Lost;
        let ask = Ask::default();
        assert_eq!(choose(&nodes, &ask, Strategy::Spread), Some("n3"));
        nodes[2].state = NodeState::Lost;
        assert_eq!(choose(&nodes, &ask, Strategy::Spread), None);
        assert!(explain(&nodes, &ask).contains("ready"));
    }

    #[test]
    fn only_nodes_of_the_image_platform_take_it() {
        let mut f = Fixture::new();
        f.platforms[0] = Some(platform("linux", "arm64", None));
        f.platforms[1] = None;
        // n1 (arm64) is the least busy, yet an amd64 image never goes there.
        let nodes = f.nodes([0, 1500, 1000], [0, 3, 2]);
        let amd64 = platform("linux", "amd64", None);
        let ask = Ask {
            resources: res(500, 0),
            platform: Some(&amd64),
            ..Default::default()
        };
        assert_eq!(choose(&nodes, &ask, Strategy::Spread), Some("n3"));
        // A node that does not report its platform is not refused for it.
        let unknown = Ask {
            pin: Some("n2"),
            platform: Some(&amd64),
            ..Default::default()
        };
        assert_eq!(choose(&nodes, &unknown, Strategy::Spread), Some("n2"));
        let arm = platform("linux", "aarch64", Some("v8"));
        let ask = Ask {
            platform: Some(&arm),
            ..Default::default()
        };
        assert_eq!(choose(&nodes, &ask, Strategy::Binpack), Some("n2"));
        let pinned = Ask {
            pin: Some("n1"),
            platform: Some(&amd64),
            ..Default::default()
        };
        assert_eq!(choose(&nodes, &pinned, Strategy::Spread), None);
        assert!(
            explain(&nodes, &pinned).contains("platform"),
            "{}",
            explain(&nodes, &pinned)
        );
    }

    #[test]
    fn an_image_no_node_can_run_explains_the_platforms() {
        let mut f = Fixture::new();
        f.platforms = vec![Some(platform("linux", "arm64", None)); 3];
        let nodes = f.nodes([0, 0, 0], [0, 0, 0]);
        let amd64 = platform("linux", "amd64", None);
        let ask = Ask {
            platform: Some(&amd64),
            ..Default::default()
        };
        assert_eq!(choose(&nodes, &ask, Strategy::Spread), None);
        let why = explain(&nodes, &ask);
        assert!(why.contains("no suitable node (platform)"), "{why}");
        assert!(
            why.contains("linux/amd64") && why.contains("linux/arm64"),
            "{why}"
        );
    }

    #[test]
    fn platforms_match_on_os_architecture_and_a_named_variant() {
        let node = platform("linux", "arm", Some("v7"));
        assert!(platform_matches(
            Some(&node),
            Some(&platform("linux", "arm", None))
        ));
        assert!(!platform_matches(
            Some(&node),
            Some(&platform("linux", "arm", Some("v6")))
        ));
        assert!(!platform_matches(
            Some(&node),
            Some(&platform("windows", "arm", None))
        ));
        assert!(platform_matches(
            Some(&platform("linux", "amd64", None)),
            Some(&platform("linux", "x86_64", None))
        ));
        assert!(platform_matches(Some(&node), Some(&platform("", "", None))));
        assert!(platform_matches(None, Some(&node)));
        assert_eq!(show_platform(Some(&node)), "linux/arm/v7");
    }

    fn network(name: &str) -> NodeNetwork {
        NodeNetwork {
            id: format!("{:0<64}", name.len()),
            name: name.into(),
        }
    }

    fn binding(port: u16, host_ip: &str) -> PortBinding {
        PortBinding {
            protocol: Default::default(),
            host_ip: host_ip.into(),
            host_port: port,
            container_port: 80,
            container_ip: "10.88.0.2".into(),
            container_id: "c".into(),
        }
    }

    fn publish(port: u16, host_ip: Option<&str>) -> PortSpec {
        PortSpec {
            host_ip: host_ip.map(str::to_string),
            host_port: Some(port),
            container_port: 80,
            protocol: Default::default(),
        }
    }

    #[test]
    fn a_container_on_a_user_network_goes_where_the_network_is() {
        let mut f = Fixture::new();
        f.networks[1] = vec![network("backend")];
        let nodes = f.nodes([0, 0, 0], [0, 5, 0]);
        let ask = Ask {
            network: Some("backend"),
            ..Default::default()
        };
        // n2 is the busiest, and the only one with the network.
        assert_eq!(choose(&nodes, &ask, Strategy::Spread), Some("n2"));
        // Its id, or a prefix of it, names it too.
        let by_id = Ask {
            network: Some(&f.networks[1][0].id[..6]),
            ..Default::default()
        };
        assert_eq!(choose(&nodes, &by_id, Strategy::Spread), Some("n2"));
        let nowhere = Ask {
            network: Some("frontend"),
            ..Default::default()
        };
        assert_eq!(choose(&nodes, &nowhere, Strategy::Spread), None);
        let why = explain(&nodes, &nowhere);
        assert!(why.contains("network frontend exists on no node"), "{why}");
        let mut lost = f.nodes([0, 0, 0], [0, 0, 0]);
        lost[1].state = NodeState::Lost;
        assert_eq!(choose(&lost, &ask, Strategy::Spread), None);
        let why = explain(&lost, &ask);
        assert!(why.contains("exists only on n2"), "{why}");
    }

    #[test]
    fn a_named_volume_that_exists_keeps_its_container_on_its_node() {
        let mut f = Fixture::new();
        f.volumes[2] = vec!["data".into()];
        f.volumes[0] = vec!["cache".into()];
        let nodes = f.nodes([0, 0, 0], [0, 0, 9]);
        let data = vec!["data".to_string()];
        let ask = Ask {
            volumes: &data,
            ..Default::default()
        };
        assert_eq!(choose(&nodes, &ask, Strategy::Spread), Some("n3"));
        // A volume no node has yet is made wherever the container goes.
        let fresh = vec!["fresh".to_string()];
        let anywhere = Ask {
            volumes: &fresh,
            ..Default::default()
        };
        assert_eq!(choose(&nodes, &anywhere, Strategy::Spread), Some("n1"));
        let mixed = vec!["data".to_string(), "fresh".to_string()];
        let ask = Ask {
            volumes: &mixed,
            ..Default::default()
        };
        assert_eq!(choose(&nodes, &ask, Strategy::Spread), Some("n3"));
        // Two volumes on two different nodes: no node has both.
        let split = vec!["data".to_string(), "cache".to_string()];
        let ask = Ask {
            volumes: &split,
            ..Default::default()
        };
        assert_eq!(choose(&nodes, &ask, Strategy::Spread), None);
        let why = explain(&nodes, &ask);
        assert!(why.contains("no suitable node (volume)"), "{why}");
        assert!(
            why.contains("data is on n3") && why.contains("cache is on n1"),
            "{why}"
        );
        // Its node full: the container waits rather than starting with an empty copy.
        let full = f.nodes([2000, 0, 2000], [0, 0, 9]);
        let ask = Ask {
            volumes: &data,
            resources: res(500, 0),
            ..Default::default()
        };
        assert_eq!(choose(&full, &ask, Strategy::Spread), None);
        assert!(explain(&full, &ask).contains("no node has room"));
    }

    #[test]
    fn a_fixed_host_port_goes_to_a_node_where_it_is_free() {
        let mut f = Fixture::new();
        f.ports[0] = vec![binding(8080, "0.0.0.0")];
        f.ports[1] = vec![binding(8080, "127.0.0.1")];
        let nodes = f.nodes([0, 0, 0], [0, 0, 9]);
        let ports = vec![publish(8080, None)];
        let ask = Ask {
            ports: &ports,
            ..Default::default()
        };
        assert_eq!(choose(&nodes, &ask, Strategy::Spread), Some("n3"));
        // Another address of n2 is free; every address of n1 is taken.
        let other_ip = vec![publish(8080, Some("127.0.0.2"))];
        let ask = Ask {
            ports: &other_ip,
            ..Default::default()
        };
        assert_eq!(choose(&nodes, &ask, Strategy::Spread), Some("n2"));
        // udp 8080 is another port.
        let udp = vec![PortSpec {
            protocol: berth_proto::messages::network::PortProtocol::Udp,
            ..publish(8080, None)
        }];
        let ask = Ask {
            ports: &udp,
            ..Default::default()
        };
        assert_eq!(choose(&nodes, &ask, Strategy::Spread), Some("n1"));
        // A port chosen at start never conflicts.
        let any = vec![PortSpec {
            host_port: None,
            ..publish(0, None)
        }];
        let ask = Ask {
            ports: &any,
            ..Default::default()
        };
        assert_eq!(choose(&nodes, &ask, Strategy::Spread), Some("n1"));
        f.ports[2] = vec![binding(8080, "")];
        let nodes = f.nodes([0, 0, 0], [0, 0, 9]);
        let ask = Ask {
            ports: &ports,
            ..Default::default()
        };
        assert_eq!(choose(&nodes, &ask, Strategy::Spread), None);
        let why = explain(&nodes, &ask);
        assert!(why.contains("host port 8080/tcp is taken"), "{why}");
        assert!(only_ports_in_the_way(&nodes, &ask));
        // Only when the port is the reason: a lack of room makes it wait instead.
        f.ports[2].clear();
        let busy = f.nodes([2000, 2000, 2000], [0, 0, 9]);
        let big = Ask {
            ports: &ports,
            resources: res(500, 0),
            ..Default::default()
        };
        assert!(!only_ports_in_the_way(&busy, &big));
        let free = vec![publish(9090, None)];
        let ask = Ask {
            ports: &free,
            ..Default::default()
        };
        assert!(!only_ports_in_the_way(&busy, &ask));
    }
}
