//! Placement as pure functions over a snapshot of the nodes: filter (state, platform,
//! free resources, constraints, pin), then score (image locality first, then spread or
//! binpack). No NATS here, so every rule is unit-tested.

use berth_proto::messages::image::ImagePlatform;
use berth_proto::messages::node::{NodeState, Resources};
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

/// Whether `node` may take `ask` at all.
pub fn eligible(node: &Candidate<'_>, ask: &Ask<'_>) -> bool {
    node.state == NodeState::Ready
        && ask.pin.is_none_or(|pin| pin == node.node_id)
        && platform_matches(node.platform, ask.platform)
        && ask.constraints.iter().all(|c| c.holds(node.labels))
        && fits(node.capacity, node.allocated, ask.resources)
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
    nodes
        .iter()
        .filter(|node| eligible(node, ask))
        .min_by_key(|node| rank(node, ask, strategy))
        .map(|node| node.node_id)
}

/// Why no node fits, for the pending record and the error reply.
pub fn explain(nodes: &[Candidate<'_>], ask: &Ask<'_>) -> String {
    if nodes.is_empty() {
        return "no nodes are registered".to_string();
    }
    let ready = nodes.iter().filter(|n| n.state == NodeState::Ready).count();
    if ready == 0 {
        return format!("none of {} nodes is ready", nodes.len());
    }
    if let Some(pin) = ask.pin {
        return match nodes.iter().find(|n| n.node_id == pin) {
            None => format!("node {pin} is not registered"),
            Some(n) if n.state != NodeState::Ready => format!("node {pin} is not ready"),
            Some(n) if !platform_matches(n.platform, ask.platform) => format!(
                "no suitable node (platform): node {pin} is {}, the image is {}",
                show_platform(n.platform),
                show_platform(ask.platform)
            ),
            Some(_) if !ask.constraints.is_empty() => {
                format!("node {pin} lacks room or does not meet the constraints")
            }
            Some(_) => format!("node {pin} has no room for the request"),
        };
    }
    let runnable: Vec<&Candidate<'_>> = nodes
        .iter()
        .filter(|n| n.state == NodeState::Ready && platform_matches(n.platform, ask.platform))
        .collect();
    if runnable.is_empty() {
        let mut seen: Vec<String> = nodes
            .iter()
            .filter(|n| n.state == NodeState::Ready)
            .map(|n| show_platform(n.platform))
            .collect();
        seen.sort();
        seen.dedup();
        return format!(
            "no suitable node (platform): no ready node runs {} images (ready nodes are {})",
            show_platform(ask.platform),
            seen.join(", ")
        );
    }
    let matching = runnable
        .iter()
        .filter(|n| ask.constraints.iter().all(|c| c.holds(n.labels)))
        .count();
    if matching == 0 {
        return format!("no ready node meets the constraints ({ready} ready)");
    }
    format!(
        "no node has room for {} millicpu, {} bytes of memory, {} pids ({matching} nodes match)",
        ask.resources.cpu_millis, ask.resources.memory_bytes, ask.resources.pids
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        labels: Vec<BTreeMap<String, String>>,
        chains: Vec<HashSet<String>>,
        platforms: Vec<Option<ImagePlatform>>,
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
}
