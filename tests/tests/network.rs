//! Container networking end to end, as root, with real kernel networking: the default
//! bridge, outbound NAT, published ports (from the host and from another namespace),
//! user networks with names and isolation, and exact cleanup after many cycles and an
//! executor SIGKILL. Every stack has its own bridge, subnets and nftables table
//! (`NetSlot`); traffic only goes to namespaces these tests create.

use berth_tests::cli::CliEnv;
use berth_tests::fixtures::{busybox_rootfs_tar, need_containers, ok};
use berth_tests::{NetSlot, Stack};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

const IMAGE: &str = "busybox:net";
const SERVICES: [&str; 4] = [
    "berth-image-store",
    "berth-layer-unpacker",
    "berth-scheduler",
    "berth-executor",
];

/// A stack with the `-P`-able test image imported; every container goes when it drops.
type Env = CliEnv;

async fn start(node: &str) -> anyhow::Result<Env> {
    let stack = Stack::start(&SERVICES, node).await?;
    CliEnv::import(stack, IMAGE, &["-c", "EXPOSE 80/tcp"], |dir| {
        busybox_rootfs_tar(dir, "net", &[("www/index.html", "hello from berth\n")])
    })
}

fn ip_of(env: &Env, id: &str) -> anyhow::Result<String> {
    let inspect = env.inspect(id)?;
    inspect["network"]["endpoints"][0]["ip_address"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("container {id} has no address: {inspect}"))
}

/// A namespace of the test's own, linked to the host by a veth pair: "another host".
/// Host side `10.230.<slot>.1/30`, inside `10.230.<slot>.2/30`.
struct Outside {
    name: String,
    host_ip: String,
    inside_ip: String,
}

impl Outside {
    fn create(slot: &NetSlot) -> anyhow::Result<Outside> {
        let i = slot.index;
        let name = format!("berth-out-{i}");
        let host_if = format!("bo{i}h");
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        let host_ip = format!("10.230.{i}.1");
        let inside_ip = format!("10.230.{i}.2");
        ok(Command::new("ip").args(["netns", "add", &name]))?;
        let outside = Outside {
            name: name.clone(),
            host_ip: host_ip.clone(),
            inside_ip: inside_ip.clone(),
        };
        ok(Command::new("ip").args([
            "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &name,
        ]))?;
        ok(Command::new("ip").args(["addr", "add", &format!("{host_ip}/30"), "dev", &host_if]))?;
        ok(Command::new("ip").args(["link", "set", &host_if, "up"]))?;
        // Forwarding on our own veth only (the host's global switch stays as it is).
        std::fs::write(format!("/proc/sys/net/ipv4/conf/{host_if}/forwarding"), "1")?;
        outside.ip(&["addr", "add", &format!("{inside_ip}/30"), "dev", "eth0"])?;
        outside.ip(&["link", "set", "eth0", "up"])?;
        outside.ip(&["link", "set", "lo", "up"])?;
        // Only a route to the host's end: answers to a container's own address could
        // not get back, so a working connection proves the masquerade.
        Ok(outside)
    }

    fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ok(Command::new("ip").args(all))
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).args(args);
        command
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// One HTTP/1.0 GET; the body.
fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr.parse()?, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    anyhow::ensure!(
        reply.starts_with("HTTP/1.") && reply.contains(" 200 "),
        "reply: {reply}"
    );
    Ok(reply.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}

/// Polls `probe` until it succeeds or `within` passes; the last error otherwise.
fn eventually<T>(
    within: Duration,
    mut probe: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + within;
    loop {
        match probe() {
            Ok(value) => return Ok(value),
            Err(err) if Instant::now() >= deadline => return Err(err),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// What a node's networking holds on the host, limited to its own slot.
#[derive(Debug, PartialEq, Eq)]
struct Footprint {
    links: BTreeSet<String>,
    rules: String,
    addresses: String,
    netns: BTreeSet<String>,
    leases: String,
}

fn footprint(env: &Env) -> anyhow::Result<Footprint> {
    let slot = &env.stack.net;
    let links = slot.links().into_iter().map(|(name, _)| name).collect();
    let rules = ok(Command::new("nft").args(["list", "table", "ip", &slot.nft_table()]))?;
    let addresses =
        ok(Command::new("ip").args(["-o", "-4", "addr", "show", "dev", &slot.bridge()]))?
            .split_whitespace()
            .filter(|w| w.contains('/'))
            .collect::<Vec<_>>()
            .join(" ");
    let netns_dir = env.stack.data_dir().join("netns");
    let netns = std::fs::read_dir(&netns_dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let leases = std::fs::read_to_string(env.stack.data_dir().join("network/leases.json"))
        .unwrap_or_default();
    let leases: serde_json::Value = serde_json::from_str(&leases).unwrap_or(serde_json::json!({}));
    let leases = leases
        .as_object()
        .map(|m| m.keys().cloned().collect::<Vec<_>>().join(","))
        .unwrap_or_default();
    Ok(Footprint {
        links,
        rules,
        addresses,
        netns,
        leases,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_nat_and_published_ports() -> anyhow::Result<()> {
    need_containers(&["nft", "ip"])?;
    let env = start("node-net-a").await?;
    let slot = &env.stack.net;
    let outside = Outside::create(slot)?;

    // Two containers on the default bridge reach each other by address.
    let a = env.run_d(&["--name", "alpha"], &["sleep", "600"])?;
    let b = env.run_d(&["--name", "beta", "--hostname", "bee"], &["sleep", "600"])?;
    let inspect_b = env.inspect(&b)?;
    let endpoint = &inspect_b["network"]["endpoints"][0];
    assert_eq!(inspect_b["network"]["mode"], "bridge", "{inspect_b}");
    let ip_b = endpoint["ip_address"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let gateway = slot.subnet().replace(".0/24", ".1");
    assert_eq!(endpoint["gateway"], gateway.as_str(), "{endpoint}");
    assert!(
        ip_b.starts_with(&slot.subnet().replace(".0/24", ".")),
        "{ip_b}"
    );
    let mac = endpoint["mac_address"].as_str().unwrap_or_default();
    assert!(mac.starts_with("02:42:"), "{mac}");
    assert_eq!(endpoint["interface"], "eth0");
    let (code, out) = env.exec(&a, &["ping", "-c", "1", "-W", "2", &ip_b])?;
    assert_eq!(code, 0, "alpha cannot reach beta at {ip_b}: {out}");
    let (_, out) = env.exec(&b, &["ip", "-o", "-4", "addr", "show", "eth0"])?;
    assert!(out.contains(&format!("{ip_b}/24")), "{out}");
    let (_, out) = env.exec(&b, &["ip", "route"])?;
    assert!(out.contains(&format!("default via {gateway}")), "{out}");
    let (_, link) = env.exec(&b, &["cat", "/sys/class/net/eth0/address"])?;
    assert_eq!(link.trim(), mac);

    // /etc/hosts, /etc/resolv.conf, hostname inside.
    let (_, hosts) = env.exec(&b, &["cat", "/etc/hosts"])?;
    assert!(hosts.contains("127.0.0.1\tlocalhost"), "{hosts}");
    assert!(hosts.contains(&format!("{ip_b}\tbee beta")), "{hosts}");
    let (_, hostname) = env.exec(&b, &["hostname"])?;
    assert_eq!(hostname.trim(), "bee");
    let (code, out) = env.exec(&b, &["ping", "-c", "1", "-W", "2", "bee"])?;
    assert_eq!(code, 0, "own name does not resolve: {out}");
    let (_, resolv) = env.exec(&b, &["cat", "/etc/resolv.conf"])?;
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf")?;
    for line in host_resolv
        .lines()
        .filter(|l| l.starts_with("nameserver") && !l.contains("127."))
    {
        assert!(resolv.contains(line), "{resolv} lacks {line}");
    }

    // Outbound NAT: the outside namespace only routes back to the host, so an answer
    // proves the connection left as the host.
    let www = tempfile::tempdir()?;
    std::fs::write(www.path().join("index.html"), "outside\n")?;
    let mut server = outside
        .command(&["busybox", "httpd", "-f", "-p", "7000", "-h"])
        .arg(www.path())
        .spawn()?;
    let url = format!("http://{}:7000/index.html", outside.inside_ip);
    let fetched = eventually(Duration::from_secs(5), || {
        let (code, out) = env.exec(&a, &["timeout", "5", "wget", "-q", "-O", "-", &url])?;
        anyhow::ensure!(code == 0, "wget {url} from alpha: exit {code}: {out}");
        Ok(out)
    });
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(fetched?.trim(), "outside");

    // Published ports: a fixed one and a random one, from the host (loopback and its
    // own address on the outside link) and from the outside namespace.
    let host_port = berth_tests::free_port()?;
    let web = env.run_d(
        &[
            "--name",
            "web",
            "-p",
            &format!("{host_port}:80"),
            "-p",
            "80",
        ],
        &["httpd", "-f", "-p", "80", "-h", "/www"],
    )?;
    let ports = env.inspect(&web)?["network"]["ports"].clone();
    let random = ports
        .as_array()
        .and_then(|p| p.iter().find(|b| b["host_port"] != host_port))
        .and_then(|b| b["host_port"].as_u64())
        .ok_or_else(|| anyhow::anyhow!("no random port in {ports}"))?;
    let ps = env.ok(&["ps"])?;
    assert!(ps.contains(&format!("0.0.0.0:{host_port}->80/tcp")), "{ps}");
    assert!(ps.contains(&format!("0.0.0.0:{random}->80/tcp")), "{ps}");
    for port in [u64::from(host_port), random] {
        let body = eventually(Duration::from_secs(5), || {
            http_get(&format!("127.0.0.1:{port}"), "/index.html")
        })?;
        assert_eq!(body, "hello from berth\n");
        let body = http_get(&format!("{}:{port}", outside.host_ip), "/index.html")?;
        assert_eq!(body, "hello from berth\n");
    }
    let url = format!("http://{}:{host_port}/index.html", outside.host_ip);
    let from_outside = outside
        .command(&[
            "busybox", "timeout", "5", "busybox", "wget", "-q", "-O", "-", &url,
        ])
        .output()?;
    assert!(
        from_outside.status.success(),
        "from another namespace: {}",
        String::from_utf8_lossy(&from_outside.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&from_outside.stdout),
        "hello from berth\n"
    );
    // A container reaching a published port through the host (hairpin).
    let (code, out) = env.exec(
        &a,
        &[
            "timeout",
            "5",
            "wget",
            "-q",
            "-O",
            "-",
            &format!("http://{gateway}:{host_port}/index.html"),
        ],
    )?;
    assert_eq!((code, out.as_str()), (0, "hello from berth\n"));

    // The node record reports the ports in use.
    let client = env.stack.nats.client().await?;
    let kv = async_nats::jetstream::new(client)
        .get_key_value(berth_proto::subjects::jetstream::NODES_BUCKET)
        .await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let record = loop {
        let got = kv.get("node-net-a").await?.unwrap_or_default();
        let record: serde_json::Value = serde_json::from_slice(&got).unwrap_or_default();
        if record["ports"].as_array().is_some_and(|p| p.len() == 2) || Instant::now() > deadline {
            break record;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        record["ports"]
            .to_string()
            .contains(&format!("\"host_port\":{host_port}")),
        "{record}"
    );

    // Port conflicts: with another container, and with a process of the host. The
    // container is not started and holds nothing.
    let before = footprint(&env)?;
    let clash = env.berth(&[
        "run",
        "-d",
        "--name",
        "clash",
        "-p",
        &format!("{host_port}:80"),
        IMAGE,
        "sleep",
        "600",
    ])?;
    let stderr = String::from_utf8_lossy(&clash.stderr);
    assert_eq!(clash.status.code(), Some(125), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "host port {host_port}/tcp is already published by container web"
        )),
        "{stderr}"
    );
    let holder = std::net::TcpListener::bind("0.0.0.0:0")?;
    let held = holder.local_addr()?.port();
    let clash2 = env.berth(&[
        "run",
        "-d",
        "--name",
        "clash2",
        "-p",
        &format!("{held}:80"),
        IMAGE,
        "sleep",
        "600",
    ])?;
    let stderr = String::from_utf8_lossy(&clash2.stderr);
    assert_eq!(clash2.status.code(), Some(125), "{stderr}");
    assert!(
        stderr.contains("already in use") && stderr.contains("another process"),
        "{stderr}"
    );
    drop(holder);
    let inspect = env.inspect("clash")?;
    assert_eq!(inspect["status"], "created", "{inspect}");
    assert_eq!(
        footprint(&env)?,
        before,
        "a refused start leaves nothing behind"
    );

    // -P publishes the image's ExposedPorts (80/tcp) on a random host port; a UDP
    // port carries datagrams from the host to the container.
    let exposed = env.run_d(
        &["--name", "exposed", "-P"],
        &["httpd", "-f", "-p", "80", "-h", "/www"],
    )?;
    let ports = env.inspect(&exposed)?["network"]["ports"].clone();
    let bindings = ports.as_array().cloned().unwrap_or_default();
    assert_eq!(bindings.len(), 1, "-P of EXPOSE 80/tcp: {ports}");
    assert_eq!(bindings[0]["container_port"], 80, "{ports}");
    let exposed_port = bindings[0]["host_port"].as_u64().unwrap_or_default();
    assert!(exposed_port > 0, "{ports}");
    let body = eventually(Duration::from_secs(5), || {
        http_get(&format!("127.0.0.1:{exposed_port}"), "/index.html")
    })?;
    assert_eq!(body, "hello from berth\n");
    assert!(
        env.ok(&["ps"])?
            .contains(&format!("0.0.0.0:{exposed_port}->80/tcp")),
        "ps lacks the -P port"
    );
    // A UDP port (busybox-static has no UDP server to answer, so the proof is the
    // reservation and the rule): berth holds the host port and DNATs udp to it.
    let udp_port = berth_tests::free_port()?;
    let udp = env.run_d(
        &["--name", "udp", "-p", &format!("{udp_port}:5353/udp")],
        &["sleep", "600"],
    )?;
    assert!(
        env.ok(&["ps"])?
            .contains(&format!("0.0.0.0:{udp_port}->5353/udp")),
        "ps lacks the udp port"
    );
    let taken = std::net::UdpSocket::bind(("0.0.0.0", udp_port));
    assert!(taken.is_err(), "berth does not hold udp port {udp_port}");
    let rules = footprint(&env)?.rules;
    assert!(
        rules.contains(&format!("udp dport {udp_port}")) && rules.contains(":5353"),
        "{rules}"
    );
    env.remove(&[&exposed, &udp]);
    eventually(Duration::from_secs(5), || {
        Ok(std::net::UdpSocket::bind(("0.0.0.0", udp_port))?)
    })
    .map_err(|err| anyhow::anyhow!("rm did not give the udp port back: {err}"))?;

    // --network none and host still work.
    let (_, out) = {
        let output = env.berth(&[
            "run",
            "--rm",
            "--network",
            "none",
            IMAGE,
            "ip",
            "-o",
            "link",
        ])?;
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    assert!(out.contains("lo:") && !out.contains("eth0"), "{out}");
    let bad = env.berth(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-p",
        "80",
        IMAGE,
        "true",
    ])?;
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--network none"),
        "{bad:?}"
    );

    env.remove(&[&a, &b, &web, "clash", "clash2"]);
    let after = footprint(&env)?;
    assert_eq!(after.links, BTreeSet::from([slot.bridge()]), "{after:?}");
    assert!(
        after.netns.is_empty() && after.leases.is_empty(),
        "{after:?}"
    );
    assert!(!after.rules.contains("dnat to"), "{}", after.rules);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_networks_resolve_names_and_stay_apart() -> anyhow::Result<()> {
    need_containers(&["nft", "ip"])?;
    let env = start("node-net-b").await?;
    let slot = &env.stack.net;
    let front = env.ok(&["network", "create", "front"])?;
    // The last /24 of the slot's pool, given explicitly.
    let last = format!(
        "10.{}.{}.0/24",
        210 + slot.index / 16,
        (slot.index % 16) * 16 + 15
    );
    let back = env.ok(&["network", "create", "back", "--subnet", &last])?;
    anyhow::ensure!(front.len() == 64 && back.len() == 64, "ids: {front} {back}");
    let ls = env.ok(&["network", "ls"])?;
    for name in ["bridge", "front", "back", "host", "none"] {
        assert!(ls.contains(name), "{ls}");
    }
    let dup = env.berth(&["network", "create", "front"])?;
    assert!(
        String::from_utf8_lossy(&dup.stderr).contains("already exists"),
        "{dup:?}"
    );
    let overlap = env.berth(&["network", "create", "x", "--subnet", &slot.subnet()])?;
    assert!(
        String::from_utf8_lossy(&overlap.stderr).contains("overlaps"),
        "{overlap:?}"
    );
    let bad = env.berth(&["network", "create", "y", "--subnet", "10.0.0.1/24"])?;
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("host bits"),
        "{bad:?}"
    );

    let web = env.run_d(&["--name", "web", "--network", "front"], &["sleep", "600"])?;
    let db = env.run_d(
        &[
            "--name",
            "db",
            "--network",
            "front",
            "--network-alias",
            "database",
        ],
        &["sleep", "600"],
    )?;
    let other = env.run_d(&["--name", "other", "--network", "back"], &["sleep", "600"])?;
    let ip_db = ip_of(&env, &db)?;
    for name in ["db", "database"] {
        let (code, out) = env.exec(&web, &["ping", "-c", "1", "-W", "2", name])?;
        assert_eq!(code, 0, "web cannot reach {name}: {out}");
        assert!(out.contains(&ip_db), "{out}");
    }
    let (code, out) = env.exec(&db, &["ping", "-c", "1", "-W", "2", "web"])?;
    assert_eq!(code, 0, "db cannot reach web: {out}");
    // Across networks: no name, and no route through the host (a ping that would be
    // harmless even if it got through).
    let (code, _) = env.exec(&other, &["ping", "-c", "1", "-W", "1", "db"])?;
    assert_ne!(code, 0, "other resolved db across networks");
    let (code, out) = env.exec(&other, &["ping", "-c", "1", "-W", "1", &ip_db])?;
    assert_ne!(code, 0, "other reached db across networks: {out}");
    let inspect: Vec<serde_json::Value> =
        serde_json::from_str(&env.ok(&["network", "inspect", "front"])?)?;
    let members = inspect[0]["containers"].to_string();
    assert!(
        members.contains("\"web\"") && members.contains(&ip_db),
        "{members}"
    );
    let bridge = inspect[0]["bridge"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        slot.links().iter().any(|(n, _)| *n == bridge),
        "bridge {bridge} is tagged as the slot's"
    );

    // Connect a running container: it gets eth1 and the names; disconnect takes both.
    env.ok(&["network", "connect", "front", "other"])?;
    let (code, out) = env.exec(&other, &["ping", "-c", "1", "-W", "2", "db"])?;
    assert_eq!(code, 0, "connected, other still cannot reach db: {out}");
    let (_, out) = env.exec(&other, &["ip", "-o", "link"])?;
    assert!(out.contains("eth1"), "{out}");
    let (_, hosts) = env.exec(&web, &["cat", "/etc/hosts"])?;
    assert!(
        hosts.contains("other"),
        "web does not know other yet: {hosts}"
    );
    let twice = env.berth(&["network", "connect", "front", "other"])?;
    assert!(
        String::from_utf8_lossy(&twice.stderr).contains("already connected"),
        "{twice:?}"
    );
    env.ok(&["network", "disconnect", "front", "other"])?;
    let (code, _) = env.exec(&other, &["ping", "-c", "1", "-W", "1", &ip_db])?;
    assert_ne!(code, 0, "disconnected, other still reaches db");
    let (_, hosts) = env.exec(&web, &["cat", "/etc/hosts"])?;
    assert!(!hosts.contains("other"), "{hosts}");

    // A network in use stays; a free one goes with its bridge.
    let busy = env.berth(&["network", "rm", "front"])?;
    let stderr = String::from_utf8_lossy(&busy.stderr);
    assert!(
        stderr.contains("in use") && stderr.contains("web"),
        "{stderr}"
    );
    let builtin = env.berth(&["network", "rm", "bridge"])?;
    assert!(!builtin.status.success());
    env.remove(&[&web, &db, &other]);
    env.ok(&["network", "rm", "front", "back"])?;
    let links: Vec<String> = slot.links().into_iter().map(|(n, _)| n).collect();
    assert_eq!(links, [slot.bridge()], "only the default bridge is left");
    let rules = ok(Command::new("nft").args(["list", "table", "ip", &slot.nft_table()]))?;
    assert!(!rules.contains(&bridge), "{rules}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cycles_and_an_executor_sigkill_leave_nothing_behind() -> anyhow::Result<()> {
    need_containers(&["nft", "ip"])?;
    let mut env = start("node-net-c").await?;
    // One container keeps running across everything: its share must stay.
    let keeper = env.run_d(
        &["--name", "keeper", "-p", "80"],
        &["httpd", "-f", "-p", "80", "-h", "/www"],
    )?;
    let baseline = footprint(&env)?;
    assert_eq!(baseline.netns.len(), 1, "{baseline:?}");

    // 200 create/start/remove cycles, every fourth publishing a port.
    for i in 0..200 {
        let mut args = vec!["run", "-d"];
        if i % 4 == 0 {
            args.extend(["-p", "80"]);
        }
        args.extend([IMAGE, "sleep", "600"]);
        let id = env.ok(&args)?;
        env.ok(&["rm", "-f", &id])?;
    }
    assert_eq!(footprint(&env)?, baseline, "200 cycles leaked something");

    // SIGKILL the executor: one container exits and one is removed behind its back
    // meanwhile; the restarted executor releases both and keeps the keeper's.
    let dies = env.run_d(&["--name", "dies", "-p", "80"], &["sleep", "600"])?;
    let vanishes = env.run_d(&["--name", "vanishes"], &["sleep", "600"])?;
    let pid_of = |id: &str| -> anyhow::Result<i32> {
        Ok(env.inspect(id)?["pid"].as_i64().unwrap_or(0) as i32)
    };
    let (dies_pid, vanishes_pid) = (pid_of(&dies)?, pid_of(&vanishes)?);
    env.stack.kill_service("berth-executor").await?;
    for pid in [dies_pid, vanishes_pid] {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    let vanishes_dir = env.stack.data_dir().join("containers").join(&vanishes);
    let _ = nix::mount::umount2(
        &vanishes_dir.join("rootfs"),
        nix::mount::MntFlags::MNT_DETACH,
    );
    std::fs::remove_dir_all(&vanishes_dir)?;
    env.stack.start_service("berth-executor").await?;
    let settled = eventually(Duration::from_secs(10), || {
        let now = footprint(&env)?;
        anyhow::ensure!(
            now == baseline,
            "after restart: {now:?}\nwanted {baseline:?}"
        );
        Ok(now)
    });
    settled?;
    let inspect = env.inspect(&dies)?;
    assert_ne!(inspect["status"], "running", "{inspect}");
    // The keeper still serves on its port after all of it.
    let port = env.inspect(&keeper)?["network"]["ports"][0]["host_port"]
        .as_u64()
        .unwrap_or(0);
    assert_eq!(
        http_get(&format!("127.0.0.1:{port}"), "/index.html")?,
        "hello from berth\n"
    );
    env.remove(&[&keeper, &dies]);
    let end = footprint(&env)?;
    assert_eq!(
        end.links,
        BTreeSet::from([env.stack.net.bridge()]),
        "{end:?}"
    );
    assert!(end.netns.is_empty() && end.leases.is_empty(), "{end:?}");
    Ok(())
}
