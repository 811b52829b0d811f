//! The manager's decisions against the recording kernel: no root, no NATS.

use super::kernel::{Call, LinkInfo, Recorder};
use super::*;
use berth_proto::messages::network::{PortProtocol, PortSpec};
use std::sync::Arc;

struct Fixture {
    _dir: tempfile::TempDir,
    data: PathBuf,
    kernel: Arc<Recorder>,
    net: Networks,
}

/// Lets the test keep a handle on the recorder the manager owns.
struct Shared(Arc<Recorder>);

impl Kernel for Shared {
    fn ensure_bridge(&self, b: &BridgeSpec) -> Result<(), KernelError> {
        self.0.ensure_bridge(b)
    }
    fn delete_link(&self, n: &str) -> Result<(), KernelError> {
        self.0.delete_link(n)
    }
    fn links(&self) -> Result<Vec<LinkInfo>, KernelError> {
        self.0.links()
    }
    fn host_subnets(&self) -> Result<Vec<(String, Subnet)>, KernelError> {
        self.0.host_subnets()
    }
    fn create_netns(&self, p: &Path) -> Result<(), KernelError> {
        self.0.create_netns(p)
    }
    fn remove_netns(&self, p: &Path) -> Result<(), KernelError> {
        self.0.remove_netns(p)
    }
    fn pinned_netns(&self, d: &Path) -> Vec<PathBuf> {
        self.0.pinned_netns(d)
    }
    fn add_endpoint(&self, n: &Path, e: &EndpointSpec) -> Result<(), KernelError> {
        self.0.add_endpoint(n, e)
    }
    fn apply_rules(&self, t: &str) -> Result<(), KernelError> {
        self.0.apply_rules(t)
    }
    fn enable_ip_forward(&self) -> Result<bool, KernelError> {
        self.0.enable_ip_forward()
    }
    fn reserve_port(
        &self,
        p: PortProtocol,
        ip: Ipv4Addr,
        port: u16,
    ) -> Result<(u16, Option<OwnedFd>), KernelError> {
        self.0.reserve_port(p, ip, port)
    }
}

fn config() -> Checked {
    let c = config::NetworkConfig {
        bridge: "bt0".into(),
        subnet: "10.201.0.0/24".into(),
        pool: "10.202.0.0/16".into(),
        nft_table: "berth_test".into(),
        ip_forward: false,
        ..Default::default()
    };
    c.check().expect("valid")
}

fn fixture_with(recorder: Recorder) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_path_buf();
    let kernel = Arc::new(recorder);
    let net = Networks::new(
        config(),
        "n1".into(),
        &data,
        data.join("containers"),
        Box::new(Shared(Arc::clone(&kernel))),
    )
    .expect("networks");
    std::fs::create_dir_all(data.join("containers")).expect("containers dir");
    Fixture {
        _dir: dir,
        data,
        kernel,
        net,
    }
}

fn fixture() -> Fixture {
    fixture_with(Recorder::default())
}

impl Fixture {
    /// Plans and writes a container's files as create does; its directory.
    fn container(
        &self,
        id: &str,
        name: &str,
        request: ContainerCreateRequest,
    ) -> Result<PathBuf, NetError> {
        let plan = self
            .net
            .plan(&request, &["80/tcp".into()], name, &id[..12])?;
        let dir = self.data.join("containers").join(id);
        std::fs::create_dir_all(&dir).expect("dir");
        self.net.write_container_files(&dir, &plan)?;
        Ok(dir)
    }
}

const A: &str = "aaaaaaaaaaaa00000000000000000000";
const B: &str = "bbbbbbbbbbbb00000000000000000000";
const C: &str = "cccccccccccc00000000000000000000";

fn port(host_port: Option<u16>, container_port: u16) -> PortSpec {
    PortSpec {
        host_ip: None,
        host_port,
        container_port,
        protocol: PortProtocol::Tcp,
    }
}

#[test]
fn bridge_containers_get_addresses_interfaces_and_give_everything_back() {
    let f = fixture();
    f.net.reconcile(&HashSet::new());
    assert!(f.kernel.link_names().contains(&"bt0".to_string()));
    let a = f
        .container(A, "a", ContainerCreateRequest::default())
        .expect("plan");
    let b = f
        .container(B, "b", ContainerCreateRequest::default())
        .expect("plan");
    f.kernel.take();
    f.net.attach(A, &a).expect("attach a");
    f.net.attach(B, &b).expect("attach b");
    let calls = f.kernel.take();
    assert!(calls.contains(&Call::AddEndpoint(
        veth_name(A, 0),
        Ipv4Addr::new(10, 201, 0, 2)
    )));
    assert!(calls.contains(&Call::AddEndpoint(
        veth_name(B, 0),
        Ipv4Addr::new(10, 201, 0, 3)
    )));
    assert!(
        !calls.iter().any(|c| matches!(c, Call::ApplyRules(_))),
        "no published ports: no nft run on start"
    );
    let described = f.net.describe(A, &a);
    assert_eq!(described.mode, "bridge");
    assert_eq!(described.endpoints[0].gateway, "10.201.0.1");
    assert_eq!(described.endpoints[0].mac_address, "02:42:0a:c9:00:02");
    // The lease is on disk before anything else happens.
    let leases = store::read_leases(&f.data.join("network")).expect("leases");
    assert_eq!(leases.len(), 2);

    f.net.release(A);
    f.net.release(B);
    assert_eq!(f.kernel.link_names(), ["bt0"], "only the bridge is left");
    assert!(f.kernel.pinned_netns(&f.data).is_empty());
    assert!(store::read_leases(&f.data.join("network"))
        .expect("leases")
        .is_empty());
    // A released address is handed out again.
    f.net.attach(B, &b).expect("attach b again");
    assert_eq!(f.net.describe(B, &b).endpoints[0].ip_address, "10.201.0.2");
}

#[test]
fn published_ports_are_reserved_rendered_and_conflicts_refused() {
    let f = fixture();
    f.net.reconcile(&HashSet::new());
    let a = f
        .container(
            A,
            "web",
            ContainerCreateRequest {
                ports: vec![port(Some(8080), 80), port(None, 81)],
                ..Default::default()
            },
        )
        .expect("plan");
    f.net.attach(A, &a).expect("attach");
    let rules = f.kernel.last_rules().expect("rules applied");
    assert!(
        rules.contains("tcp dport 8080 dnat to 10.201.0.2:80"),
        "{rules}"
    );
    let ports = f.net.ports_of(A);
    assert_eq!(ports.len(), 2);
    assert!(
        ports[1].host_port > 40000,
        "a free port was picked: {ports:?}"
    );
    assert_eq!(f.net.used_ports().len(), 2);

    let b = f
        .container(
            B,
            "other",
            ContainerCreateRequest {
                ports: vec![port(Some(8080), 80)],
                ..Default::default()
            },
        )
        .expect("plan");
    let err = f.net.attach(B, &b).expect_err("port taken by a");
    assert!(matches!(err, NetError::Conflict(_)), "{err}");
    assert!(
        err.to_string().contains("8080/tcp") && err.to_string().contains("web"),
        "{err}"
    );
    assert_eq!(
        f.net.describe(B, &b).endpoints.len(),
        0,
        "nothing left for b"
    );

    f.kernel.taken_ports.lock().expect("lock").push(9090);
    let c = f
        .container(
            C,
            "c",
            ContainerCreateRequest {
                ports: vec![port(Some(9090), 80)],
                ..Default::default()
            },
        )
        .expect("plan");
    let err = f
        .net
        .attach(C, &c)
        .expect_err("port taken by another process");
    assert!(err.to_string().contains("another process"), "{err}");
    assert!(!f.kernel.link_names().contains(&veth_name(C, 0)));

    f.net.release(A);
    let rules = f.kernel.last_rules().expect("rules");
    assert!(
        !rules.contains("dport 8080"),
        "released ports leave the table: {rules}"
    );
}

#[test]
fn plans_refuse_bad_requests() {
    let f = fixture();
    let err = f
        .net
        .plan(
            &ContainerCreateRequest {
                network: NetworkMode::None,
                ports: vec![port(Some(1), 80)],
                ..Default::default()
            },
            &[],
            "x",
            "x",
        )
        .expect_err("ports without a namespace");
    assert!(err.to_string().contains("--network none"), "{err}");
    let err = f
        .net
        .plan(
            &ContainerCreateRequest {
                network: NetworkMode::Named("nosuch".into()),
                ..Default::default()
            },
            &[],
            "x",
            "x",
        )
        .expect_err("unknown network");
    assert!(matches!(err, NetError::NotFound(_)));
    let plan = f
        .net
        .plan(
            &ContainerCreateRequest {
                publish_all: true,
                ..Default::default()
            },
            &["80/tcp".into()],
            "x",
            "x",
        )
        .expect("-P");
    assert_eq!(plan.ports, vec![port(None, 80)]);
    assert!(f
        .net
        .plan(
            &ContainerCreateRequest {
                network_aliases: vec!["db".into()],
                ..Default::default()
            },
            &[],
            "x",
            "x"
        )
        .is_err());
}

#[test]
fn user_networks_list_peers_in_hosts_and_isolate() {
    let f = fixture();
    f.net.reconcile(&HashSet::new());
    let info = f
        .net
        .create("front", None, BTreeMap::new())
        .expect("create");
    assert_eq!(info.subnet, "10.202.0.0/24");
    assert!(info.bridge.starts_with("br-") && info.bridge.len() <= 15);
    let err = f
        .net
        .create("front", None, BTreeMap::new())
        .expect_err("twice");
    assert!(matches!(err, NetError::Conflict(_)));
    let err = f
        .net
        .create("x", Some("10.201.0.0/25"), BTreeMap::new())
        .expect_err("overlaps the default network");
    assert!(err.to_string().contains("overlaps"), "{err}");
    assert!(f.net.create("bridge", None, BTreeMap::new()).is_err());
    let rules = f.kernel.last_rules().expect("rules");
    assert!(
        rules.contains(&format!(
            "iifname \"{}\" oifname {{ \"bt0\" }} drop",
            info.bridge
        )),
        "{rules}"
    );

    let on_front = || ContainerCreateRequest {
        network: NetworkMode::Named("front".into()),
        ..Default::default()
    };
    let a = f.container(A, "web", on_front()).expect("plan");
    let b = f
        .container(
            B,
            "db",
            ContainerCreateRequest {
                network_aliases: vec!["database".into()],
                ..on_front()
            },
        )
        .expect("plan");
    let c = f
        .container(C, "lonely", ContainerCreateRequest::default())
        .expect("plan");
    for (id, dir) in [(A, &a), (B, &b), (C, &c)] {
        f.net.attach(id, dir).expect("attach");
    }
    let hosts_a = std::fs::read_to_string(a.join(HOSTS_FILE)).expect("hosts");
    assert!(
        hosts_a.contains("10.202.0.3\tbbbbbbbbbbbb db database"),
        "{hosts_a}"
    );
    let hosts_c = std::fs::read_to_string(c.join(HOSTS_FILE)).expect("hosts");
    assert!(
        !hosts_c.contains("web") && !hosts_c.contains(" db"),
        "{hosts_c}"
    );

    let err = f.net.remove("front").expect_err("in use");
    assert!(err.to_string().contains("web"), "{err}");
    // Connect the lonely one while it runs: it gets eth1 and the names.
    f.net.connect(C, &c, "front", &[], true).expect("connect");
    let hosts_c = std::fs::read_to_string(c.join(HOSTS_FILE)).expect("hosts");
    assert!(hosts_c.contains("\tbbbbbbbbbbbb db database"), "{hosts_c}");
    assert!(f.kernel.link_names().contains(&veth_name(C, 1)));
    let err = f.net.connect(C, &c, "front", &[], true).expect_err("twice");
    assert!(matches!(err, NetError::Conflict(_)));
    f.net.disconnect(C, &c, "front").expect("disconnect");
    assert!(!f.kernel.link_names().contains(&veth_name(C, 1)));

    // The db leaves: the web's hosts file forgets it.
    f.net.release(B);
    let hosts_a = std::fs::read_to_string(a.join(HOSTS_FILE)).expect("hosts");
    assert!(!hosts_a.contains("db"), "{hosts_a}");
    for (id, dir) in [(A, &a), (B, &b)] {
        f.net.disconnect(id, dir, "front").expect("disconnect");
    }
    f.net.release(A);
    f.net.release(C);
    f.net.remove("front").expect("remove");
    assert_eq!(f.kernel.link_names(), ["bt0"]);
}

#[test]
fn reconcile_drops_what_no_running_container_holds() {
    let f = fixture();
    f.net.reconcile(&HashSet::new());
    let a = f
        .container(A, "a", ContainerCreateRequest::default())
        .expect("plan");
    let b = f
        .container(B, "b", ContainerCreateRequest::default())
        .expect("plan");
    f.net.attach(A, &a).expect("attach");
    f.net.attach(B, &b).expect("attach");
    // Leftovers of a crash: a tagged veth and a pinned namespace nothing holds, and a
    // foreign interface that must stay.
    f.kernel.links.lock().expect("lock").extend([
        LinkInfo {
            name: "vbdeadbeef00000".into(),
            alias: Some("berth:berth_test:ep:deadbeef".into()),
        },
        LinkInfo {
            name: "br-gone".into(),
            alias: Some("berth:berth_test:net:gone".into()),
        },
        LinkInfo {
            name: "vbothers".into(),
            alias: Some("berth:other_table:ep:x".into()),
        },
        LinkInfo {
            name: "eth0".into(),
            alias: None,
        },
    ]);
    f.kernel
        .netns
        .lock()
        .expect("lock")
        .push(f.net.netns_path("deadbeef"));
    // A restart with only `a` still running.
    let net = Networks::new(
        config(),
        "n1".into(),
        &f.data,
        f.data.join("containers"),
        Box::new(Shared(Arc::clone(&f.kernel))),
    )
    .expect("reload");
    net.reconcile(&HashSet::from([A.to_string()]));
    let mut names = f.kernel.link_names();
    names.sort();
    assert_eq!(names, ["bt0", "eth0", veth_name(A, 0).as_str(), "vbothers"]);
    assert_eq!(f.kernel.pinned_netns(&f.data), [net.netns_path(A)]);
    let leases = store::read_leases(&f.data.join("network")).expect("leases");
    assert_eq!(leases.keys().collect::<Vec<_>>(), [A]);
}

#[test]
fn stopping_takes_down_what_nothing_running_uses() {
    let f = fixture();
    f.net.reconcile(&HashSet::new());
    let a = f
        .container(A, "a", ContainerCreateRequest::default())
        .expect("plan");
    f.net.attach(A, &a).expect("attach a");
    f.kernel.take();
    // A running container keeps its bridge and the table with its NAT rules.
    assert!(f.net.teardown_unused().is_empty());
    assert!(f.kernel.link_names().contains(&"bt0".to_string()));
    assert!(!f
        .kernel
        .take()
        .iter()
        .any(|c| matches!(c, Call::DeleteLink(_) | Call::ApplyRules(_))));

    f.net.release(A);
    let removed = f.net.teardown_unused();
    assert_eq!(removed, ["bridge bt0", "nftables table berth_test"]);
    assert!(
        f.kernel.link_names().is_empty(),
        "{:?}",
        f.kernel.link_names()
    );
    let calls = f.kernel.take();
    assert!(calls.iter().any(|c| matches!(
        c,
        Call::ApplyRules(text) if text.contains("delete table ip berth_test")
    )));
    // The next start brings the bridge back.
    f.net.reconcile(&HashSet::new());
    assert!(f.kernel.link_names().contains(&"bt0".to_string()));
}
