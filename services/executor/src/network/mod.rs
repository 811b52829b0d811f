//! Container networking of one node: the default `bridge` network and user networks
//! (a Linux bridge each), a veth pair per container and network, addresses from a
//! persisted IPAM, a default route, outbound masquerade, published ports (DNAT in
//! berth's own nftables table), isolation between networks, and names through
//! /etc/hosts. Networks are per node: each executor owns its bridges.
//!
//! Ownership is explicit so that cleanup is exact: every interface berth creates carries
//! an alias `berth:<table>:…` naming this executor's nftables table, every namespace is
//! pinned under `<data>/netns`, and the table is rendered whole from the leases. At
//! start the executor drops whatever no running container holds.
//!
//! All calls block (netlink, files, `nft`): the executor runs them on blocking threads.

pub mod config;
pub mod hosts;
pub mod kernel;
pub mod netlink;
pub mod nft;
pub mod ports;
pub mod store;
pub mod subnet;
pub mod verbs;

use berth_proto::messages::exec::{ContainerCreateRequest, NetworkMode};
use berth_proto::messages::network::{
    ContainerNetwork, EndpointInfo, NetworkInfo, NetworkMember, PortBinding,
};
use berth_proto::ErrorEnvelope;
use config::Checked;
use kernel::{BridgeSpec, EndpointSpec, Kernel, KernelError};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use store::{Attachment, Binding, ContainerNet, Endpoint, Lease, Mode, NetworkDef};
use subnet::Subnet;

/// Name of the default network.
pub const DEFAULT_NETWORK: &str = "bridge";
/// Files bind-mounted into containers, inside the container's directory.
pub const HOSTS_FILE: &str = "hosts";
pub const RESOLV_FILE: &str = "resolv.conf";
pub const HOSTNAME_FILE: &str = "hostname";

/// A failed network operation, by kind (they map onto the wire's error codes).
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl From<NetError> for ErrorEnvelope {
    fn from(err: NetError) -> Self {
        match err {
            NetError::Invalid(m) => ErrorEnvelope::invalid(m),
            NetError::NotFound(m) => ErrorEnvelope::not_found(m),
            NetError::Conflict(m) => ErrorEnvelope::conflict(m),
            NetError::Unavailable(m) => ErrorEnvelope::unavailable(m),
            NetError::Internal(m) => ErrorEnvelope::internal(m),
        }
    }
}

/// The error as an envelope whose message starts with `context`.
pub fn in_context(err: NetError, context: &str) -> ErrorEnvelope {
    let envelope = ErrorEnvelope::from(err);
    ErrorEnvelope::new(envelope.code, format!("{context}: {}", envelope.message))
}

fn kernel_err(context: &str, err: KernelError) -> NetError {
    NetError::Internal(format!("{context}: {err}"))
}

/// Networks and leases, kept in memory and on disk together.
struct State {
    networks: Vec<NetworkDef>,
    leases: BTreeMap<String, Lease>,
}

/// The node's networking.
pub struct Networks {
    config: Checked,
    node_id: String,
    /// `<data>/network`
    dir: PathBuf,
    /// `<data>/netns`: one pinned namespace per running container.
    netns_dir: PathBuf,
    containers_dir: PathBuf,
    kernel: Box<dyn Kernel>,
    state: Mutex<State>,
    /// Sockets that hold published host ports while their container runs.
    reservations: Mutex<HashMap<String, Vec<OwnedFd>>>,
    /// Serialises `nft` transactions (each renders the then-current leases).
    rules: Mutex<()>,
    /// Networks whose bridge could not be set up, and why.
    broken: Mutex<HashMap<String, String>>,
    /// Serialises hosts-file rewrites.
    hosts_lock: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// 64 random hex digits.
fn random_id() -> Result<String, NetError> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|err| NetError::Internal(format!("cannot read /dev/urandom: {err}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Host end of a container's veth: `vb` + 12 id digits + the interface index (15 bytes).
pub fn veth_name(container_id: &str, index: u8) -> String {
    let short: String = container_id.chars().take(12).collect();
    format!("vb{short}{:x}", index & 0xf)
}

/// Docker's rule for network names (and aliases): `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
pub fn check_network_name(what: &str, name: &str) -> Result<(), NetError> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !ok {
        return Err(NetError::Invalid(format!(
            "invalid {what} {name:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed (64 at most)"
        )));
    }
    Ok(())
}

impl Networks {
    /// Loads the node's networks and leases; the default network takes the configured
    /// bridge and subnet.
    pub fn new(
        config: Checked,
        node_id: String,
        data_dir: &Path,
        containers_dir: PathBuf,
        kernel: Box<dyn Kernel>,
    ) -> Result<Networks, String> {
        let dir = data_dir.join("network");
        std::fs::create_dir_all(&dir)
            .map_err(|err| format!("cannot create {}: {err}", dir.display()))?;
        let mut networks = store::read_networks(&dir)?;
        let leases = store::read_leases(&dir)?;
        match networks.iter_mut().find(|n| n.builtin) {
            Some(default) => {
                default.bridge = config.bridge.clone();
                default.subnet = config.subnet;
            }
            None => networks.insert(
                0,
                NetworkDef {
                    id: random_id().map_err(|e| e.to_string())?,
                    name: DEFAULT_NETWORK.into(),
                    bridge: config.bridge.clone(),
                    subnet: config.subnet,
                    created: crate::state::now_rfc3339(),
                    builtin: true,
                    labels: BTreeMap::new(),
                },
            ),
        }
        store::write_networks(&dir, &networks)?;
        Ok(Networks {
            netns_dir: data_dir.join("netns"),
            dir,
            containers_dir,
            node_id,
            kernel,
            state: Mutex::new(State { networks, leases }),
            reservations: Mutex::new(HashMap::new()),
            rules: Mutex::new(()),
            broken: Mutex::new(HashMap::new()),
            hosts_lock: Mutex::new(()),
            config,
        })
    }

    /// Where a container's namespace is pinned.
    pub fn netns_path(&self, container_id: &str) -> PathBuf {
        self.netns_dir.join(container_id)
    }

    fn tag(&self) -> String {
        format!("berth:{}:", self.config.nft_table)
    }

    fn bridge_alias(&self, network_id: &str) -> String {
        format!("{}net:{network_id}", self.tag())
    }

    fn endpoint_alias(&self, container_id: &str) -> String {
        format!("{}ep:{container_id}", self.tag())
    }

    fn bridge_spec(&self, net: &NetworkDef) -> Result<BridgeSpec, NetError> {
        let gateway = net
            .subnet
            .gateway()
            .map_err(|err| NetError::Invalid(format!("network {}: {err}", net.name)))?;
        Ok(BridgeSpec {
            name: net.bridge.clone(),
            gateway,
            subnet: net.subnet,
            mac: subnet::mac_for(gateway),
            alias: self.bridge_alias(&net.id),
        })
    }

    /// Host subnets that are not berth's own bridges (for overlap checks).
    fn foreign_subnets(&self, own_bridges: &[String]) -> Vec<(String, Subnet)> {
        match self.kernel.host_subnets() {
            Ok(list) => list
                .into_iter()
                .filter(|(label, _)| !own_bridges.contains(label))
                .collect(),
            Err(err) => {
                tracing::warn!(error = %err, "cannot list the host's addresses");
                Vec::new()
            }
        }
    }

    /// Sets up one network's bridge, refusing a subnet the host already routes.
    fn bring_up(&self, net: &NetworkDef, own_bridges: &[String]) -> Result<(), NetError> {
        if let Some((label, other)) = self
            .foreign_subnets(own_bridges)
            .into_iter()
            .find(|(_, s)| s.overlaps(&net.subnet))
        {
            return Err(NetError::Conflict(format!(
                "network {} ({}) overlaps {other} of interface {label} on node {}: choose another subnet",
                net.name, net.subnet, self.node_id
            )));
        }
        let spec = self.bridge_spec(net)?;
        self.kernel
            .ensure_bridge(&spec)
            .map_err(|err| kernel_err(&format!("network {}", net.name), err))?;
        if self.config.ip_forward {
            match self.kernel.enable_ip_forward() {
                Ok(true) => tracing::info!("net.ipv4.ip_forward turned on for outbound NAT"),
                Ok(false) => {}
                Err(err) => tracing::warn!(error = %err, "cannot turn on net.ipv4.ip_forward"),
            }
        }
        Ok(())
    }

    /// Brings the node's networking to what `running` containers hold: bridges up,
    /// leases of containers that no longer run released with their interfaces and
    /// namespaces, interfaces and namespaces nothing holds deleted, rules re-rendered,
    /// published ports reserved again.
    pub fn reconcile(&self, running: &HashSet<String>) {
        let (networks, stale): (Vec<NetworkDef>, Vec<Lease>) = {
            let state = lock(&self.state);
            let stale = state
                .leases
                .values()
                .filter(|l| !running.contains(&l.container_id))
                .cloned()
                .collect();
            (state.networks.clone(), stale)
        };
        let own_bridges: Vec<String> = networks.iter().map(|n| n.bridge.clone()).collect();
        for net in &networks {
            match self.bring_up(net, &own_bridges) {
                Ok(()) => {
                    lock(&self.broken).remove(&net.id);
                }
                Err(err) => {
                    tracing::error!(network = %net.name, error = %err, "network unavailable");
                    lock(&self.broken).insert(net.id.clone(), err.to_string());
                }
            }
        }
        for lease in stale {
            tracing::info!(container_id = %lease.container_id, "releasing the network of a container that no longer runs");
            self.release(&lease.container_id);
        }
        // Interfaces tagged as ours that nothing holds.
        let (held_veths, network_ids): (HashSet<String>, HashSet<String>) = {
            let state = lock(&self.state);
            (
                state
                    .leases
                    .values()
                    .flat_map(|l| l.endpoints.iter().map(|e| e.veth.clone()))
                    .collect(),
                state.networks.iter().map(|n| n.id.clone()).collect(),
            )
        };
        let tag = self.tag();
        match self.kernel.links() {
            Ok(links) => {
                for link in links {
                    let Some(rest) = link.alias.as_deref().and_then(|a| a.strip_prefix(&tag))
                    else {
                        continue;
                    };
                    let orphan = match rest.split_once(':') {
                        Some(("net", id)) => !network_ids.contains(id),
                        Some(("ep", _)) => !held_veths.contains(&link.name),
                        _ => false,
                    };
                    if orphan {
                        tracing::info!(interface = %link.name, "deleting an interface nothing holds");
                        if let Err(err) = self.kernel.delete_link(&link.name) {
                            tracing::warn!(error = %err, "cannot delete a leftover interface");
                        }
                    }
                }
            }
            Err(err) => tracing::warn!(error = %err, "cannot list interfaces"),
        }
        let leased: HashSet<String> = lock(&self.state).leases.keys().cloned().collect();
        for path in self.kernel.pinned_netns(&self.netns_dir) {
            let owner = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if !leased.contains(&owner) {
                if let Err(err) = self.kernel.remove_netns(&path) {
                    tracing::warn!(error = %err, "cannot remove a leftover namespace");
                }
            }
        }
        // Running containers keep their host ports.
        let bindings: Vec<(String, Vec<Binding>)> = lock(&self.state)
            .leases
            .values()
            .map(|l| (l.container_id.clone(), l.ports.clone()))
            .collect();
        for (id, ports) in bindings {
            let mut held = Vec::new();
            for b in ports {
                match self.kernel.reserve_port(
                    b.protocol,
                    b.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
                    b.host_port,
                ) {
                    Ok((_, Some(fd))) => held.push(fd),
                    Ok((_, None)) => {}
                    Err(err) => {
                        tracing::warn!(container_id = %id, error = %err, "a published port is held by another process")
                    }
                }
            }
            lock(&self.reservations).insert(id, held);
        }
        if let Err(err) = self.apply_rules() {
            tracing::error!(error = %err, "cannot apply berth's nftables table");
        }
    }

    /// When the executor stops (`down.sh`), the node's networking is taken down as far
    /// as nothing running still needs it: the bridge of every network no running
    /// container is attached to, and berth's nftables table once no container holds a
    /// lease (its NAT and port rules serve the running ones). The next start brings
    /// them back (`reconcile`). Returns what was removed, for the log.
    pub fn teardown_unused(&self) -> Vec<String> {
        let _serial = lock(&self.rules);
        let (networks, used, any_lease) = {
            let state = lock(&self.state);
            let used: HashSet<String> = state
                .leases
                .values()
                .flat_map(|l| l.endpoints.iter().map(|e| e.network_id.clone()))
                .collect();
            (state.networks.clone(), used, !state.leases.is_empty())
        };
        let mut removed = Vec::new();
        let present: HashSet<String> = match self.kernel.links() {
            Ok(links) => links.into_iter().map(|l| l.name).collect(),
            Err(err) => {
                tracing::warn!(error = %err, "cannot list interfaces; bridges kept");
                return removed;
            }
        };
        for net in networks.iter().filter(|n| !used.contains(&n.id)) {
            if !present.contains(&net.bridge) {
                continue;
            }
            match self.kernel.delete_link(&net.bridge) {
                Ok(()) => removed.push(format!("bridge {}", net.bridge)),
                Err(err) => {
                    tracing::warn!(bridge = %net.bridge, error = %err, "cannot remove an unused bridge")
                }
            }
        }
        if !any_lease {
            let table = &self.config.nft_table;
            // Create-then-delete in one transaction: no error when it is already gone.
            match self
                .kernel
                .apply_rules(&format!("table ip {table} {{}}\ndelete table ip {table}\n"))
            {
                Ok(()) => removed.push(format!("nftables table {table}")),
                Err(err) => tracing::warn!(table, error = %err, "cannot remove the nftables table"),
            }
        }
        removed
    }

    fn apply_rules(&self) -> Result<(), NetError> {
        let _serial = lock(&self.rules);
        let (networks, rule_ports) = {
            let state = lock(&self.state);
            let networks: Vec<nft::RuleNetwork> = state
                .networks
                .iter()
                .map(|n| nft::RuleNetwork {
                    bridge: n.bridge.clone(),
                    subnet: n.subnet,
                })
                .collect();
            let mut rule_ports = Vec::new();
            for lease in state.leases.values() {
                let Some(first) = lease.endpoints.first() else {
                    continue;
                };
                for b in &lease.ports {
                    rule_ports.push(nft::RulePort {
                        protocol: b.protocol,
                        host_ip: b.host_ip,
                        host_port: b.host_port,
                        dest_ip: first.ip,
                        dest_port: b.container_port,
                        owner: lease.container_id.clone(),
                    });
                }
            }
            (networks, rule_ports)
        };
        let text = nft::render(&self.config.nft_table, &networks, &rule_ports);
        self.kernel
            .apply_rules(&text)
            .map_err(|err| kernel_err(&format!("nftables table {}", self.config.nft_table), err))
    }

    fn find_network<'a>(
        networks: &'a [NetworkDef],
        reference: &str,
    ) -> Result<&'a NetworkDef, NetError> {
        if reference.is_empty() {
            return Err(NetError::Invalid("a network name or id is required".into()));
        }
        if let Some(n) = networks
            .iter()
            .find(|n| n.name == reference || n.id == reference)
        {
            return Ok(n);
        }
        let matches: Vec<&NetworkDef> = networks
            .iter()
            .filter(|n| reference.len() >= 4 && n.id.starts_with(reference))
            .collect();
        match matches.as_slice() {
            [one] => Ok(one),
            [] => Err(NetError::NotFound(format!("no such network: {reference}"))),
            _ => Err(NetError::Invalid(format!(
                "{reference} matches {} networks: use more of the id",
                matches.len()
            ))),
        }
    }

    /// Decides a new container's networking from its create request.
    pub fn plan(
        &self,
        request: &ContainerCreateRequest,
        exposed: &[String],
        name: &str,
        hostname: &str,
    ) -> Result<ContainerNet, NetError> {
        let networks = lock(&self.state).networks.clone();
        let (mode, attachments) = match &request.network {
            NetworkMode::None => (Mode::None, Vec::new()),
            NetworkMode::Host => (Mode::Host, Vec::new()),
            NetworkMode::Bridge => {
                let default = Self::find_network(&networks, DEFAULT_NETWORK)?;
                (
                    Mode::Namespaced,
                    vec![Attachment {
                        network_id: default.id.clone(),
                        aliases: Vec::new(),
                    }],
                )
            }
            NetworkMode::Named(reference) => {
                let net = Self::find_network(&networks, reference)?;
                (
                    Mode::Namespaced,
                    vec![Attachment {
                        network_id: net.id.clone(),
                        aliases: Vec::new(),
                    }],
                )
            }
        };
        if !request.network_aliases.is_empty() {
            let user = attachments
                .first()
                .and_then(|a| networks.iter().find(|n| n.id == a.network_id))
                .is_some_and(|n| !n.builtin);
            if !user {
                return Err(NetError::Invalid(
                    "--network-alias needs a user network (berth network create)".into(),
                ));
            }
            for alias in &request.network_aliases {
                check_network_name("network alias", alias)?;
            }
        }
        let attachments = attachments
            .into_iter()
            .map(|mut a| {
                a.aliases = request.network_aliases.clone();
                a
            })
            .collect();
        let ports = if request.publish_all {
            ports::expose_all(&request.ports, exposed).map_err(NetError::Invalid)?
        } else {
            request.ports.clone()
        };
        if !ports.is_empty() && mode != Mode::Namespaced {
            return Err(NetError::Invalid(format!(
                "published ports need a network namespace of berth's: --network {} has none to publish from",
                request.network.name()
            )));
        }
        ports::check(&ports).map_err(NetError::Invalid)?;
        Ok(ContainerNet {
            mode,
            mode_name: request.network.name().to_string(),
            attachments,
            ports,
            name: name.to_string(),
            hostname: hostname.to_string(),
        })
    }

    /// Writes network.json, hosts, resolv.conf and hostname into a new container's dir.
    pub fn write_container_files(&self, dir: &Path, net: &ContainerNet) -> Result<(), NetError> {
        let io = |what: &Path, err: std::io::Error| {
            NetError::Internal(format!("{}: {err}", what.display()))
        };
        store::write_container(dir, net).map_err(NetError::Internal)?;
        let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let (hosts_text, resolv) = match net.mode {
            Mode::Host => (
                std::fs::read_to_string("/etc/hosts")
                    .unwrap_or_else(|_| "127.0.0.1\tlocalhost\n".into()),
                host_resolv,
            ),
            _ => (
                hosts::render_hosts(&net.hostname, &[], &[]),
                hosts::render_resolv(&host_resolv),
            ),
        };
        for (file, text) in [
            (HOSTS_FILE, hosts_text),
            (RESOLV_FILE, resolv),
            (HOSTNAME_FILE, format!("{}\n", net.hostname)),
        ] {
            let path = dir.join(file);
            std::fs::write(&path, text).map_err(|err| io(&path, err))?;
        }
        Ok(())
    }

    /// The spec edits for a container: the pinned namespace to join, the three files.
    pub fn edit_spec(
        &self,
        spec: oci_spec::runtime::Spec,
        container_id: &str,
        dir: &Path,
        net: &ContainerNet,
        read_only: bool,
    ) -> Result<oci_spec::runtime::Spec, String> {
        let mut value = serde_json::to_value(&spec).map_err(|err| err.to_string())?;
        if net.mode == Mode::Namespaced {
            let path = self.netns_path(container_id);
            let namespaces = value["linux"]["namespaces"]
                .as_array_mut()
                .ok_or("the spec has no namespace list")?;
            for ns in namespaces.iter_mut() {
                if ns["type"] == "network" {
                    ns["path"] = serde_json::json!(path);
                }
            }
        }
        let mounts = value["mounts"]
            .as_array_mut()
            .ok_or("the spec has no mount list")?;
        for (file, destination) in [
            (HOSTS_FILE, "/etc/hosts"),
            (RESOLV_FILE, "/etc/resolv.conf"),
            (HOSTNAME_FILE, "/etc/hostname"),
        ] {
            mounts.push(serde_json::json!({
                "destination": destination,
                "type": "bind",
                "source": dir.join(file),
                "options": ["rbind", "rprivate", if read_only { "ro" } else { "rw" }],
            }));
        }
        serde_json::from_value(value).map_err(|err| err.to_string())
    }

    fn persist_leases(&self, state: &State) -> Result<(), NetError> {
        store::write_leases(&self.dir, &state.leases).map_err(NetError::Internal)
    }

    /// Containers whose hosts files list `id` or that `id`'s lists (shared user networks).
    fn peers_of(state: &State, id: &str) -> Vec<String> {
        let Some(lease) = state.leases.get(id) else {
            return Vec::new();
        };
        let user: HashSet<&String> = lease
            .endpoints
            .iter()
            .filter(|e| {
                state
                    .networks
                    .iter()
                    .any(|n| n.id == e.network_id && !n.builtin)
            })
            .map(|e| &e.network_id)
            .collect();
        state
            .leases
            .values()
            .filter(|l| {
                l.container_id != id && l.endpoints.iter().any(|e| user.contains(&e.network_id))
            })
            .map(|l| l.container_id.clone())
            .collect()
    }

    /// Network setup when a container starts: addresses, ports, the namespace with its
    /// interfaces, rules, hosts files. On any failure nothing is left behind.
    pub fn attach(&self, id: &str, dir: &Path) -> Result<(), NetError> {
        let Some(net) = store::read_container(dir).map_err(NetError::Internal)? else {
            return Ok(()); // Created before berth had networking: loopback only.
        };
        if net.mode != Mode::Namespaced {
            return Ok(());
        }
        if lock(&self.state).leases.contains_key(id) {
            self.release(id);
        }
        let (lease, specs) = self.allocate(id, &net)?;
        let setup = || -> Result<(), NetError> {
            let netns = self.netns_path(id);
            self.kernel
                .create_netns(&netns)
                .map_err(|err| kernel_err(&format!("container {id}"), err))?;
            for spec in &specs {
                self.kernel
                    .add_endpoint(&netns, spec)
                    .map_err(|err| kernel_err(&format!("container {id}"), err))?;
            }
            if !lease.ports.is_empty() {
                self.apply_rules()?;
            }
            Ok(())
        };
        if let Err(err) = setup() {
            self.release(id);
            return Err(err);
        }
        let mut affected = lock(&self.state)
            .leases
            .get(id)
            .map(|_| vec![id.to_string()])
            .unwrap_or_default();
        affected.extend(Self::peers_of(&lock(&self.state), id));
        self.refresh_hosts(&affected);
        Ok(())
    }

    /// Picks addresses and host ports and records the lease (before any kernel change,
    /// so that a crash mid-setup leaves a lease the next start releases).
    fn allocate(
        &self,
        id: &str,
        net: &ContainerNet,
    ) -> Result<(Lease, Vec<EndpointSpec>), NetError> {
        let mut state = lock(&self.state);
        let mut endpoints = Vec::new();
        let mut specs = Vec::new();
        for (i, attachment) in net.attachments.iter().enumerate() {
            let index = i as u8;
            let (endpoint, spec) = self.new_endpoint(&state, id, attachment, index, i == 0)?;
            endpoints.push(endpoint);
            specs.push(spec);
        }
        let wanted = ports::check(&net.ports).map_err(NetError::Invalid)?;
        let mut bindings = Vec::new();
        let mut held = Vec::new();
        if !endpoints.is_empty() {
            for w in wanted {
                if let Some(port) = w.host_port {
                    if let Some(other) = state.leases.values().find(|l| {
                        l.ports.iter().any(|b| {
                            b.protocol == w.protocol
                                && b.host_port == port
                                && ports::addresses_overlap(b.host_ip, w.host_ip)
                        })
                    }) {
                        return Err(NetError::Conflict(format!(
                            "cannot start container {id}: host port {port}/{} is already published by container {} ({}) on node {}",
                            w.protocol.as_str(),
                            other.name,
                            other.container_id,
                            self.node_id
                        )));
                    }
                }
                let ip = w.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
                let (host_port, fd) = self
                    .kernel
                    .reserve_port(w.protocol, ip, w.host_port.unwrap_or(0))
                    .map_err(|err| match err.errno {
                        Some(libc::EADDRINUSE) => NetError::Conflict(format!(
                            "cannot start container {id}: host port {ip}:{}/{} is already in use on node {} by another process",
                            w.host_port.unwrap_or(0),
                            w.protocol.as_str(),
                            self.node_id
                        )),
                        Some(libc::EADDRNOTAVAIL) => NetError::Invalid(format!(
                            "cannot start container {id}: {ip} is not an address of node {}",
                            self.node_id
                        )),
                        _ => kernel_err(&format!("container {id}"), err),
                    })?;
                held.extend(fd);
                bindings.push(Binding {
                    protocol: w.protocol,
                    host_ip: w.host_ip,
                    host_port,
                    container_port: w.container_port,
                });
            }
        }
        let lease = Lease {
            container_id: id.to_string(),
            name: net.name.clone(),
            hostname: net.hostname.clone(),
            endpoints,
            ports: bindings,
        };
        state.leases.insert(id.to_string(), lease.clone());
        if let Err(err) = self.persist_leases(&state) {
            state.leases.remove(id);
            return Err(err);
        }
        drop(state);
        lock(&self.reservations).insert(id.to_string(), held);
        Ok((lease, specs))
    }

    fn new_endpoint(
        &self,
        state: &State,
        id: &str,
        attachment: &Attachment,
        index: u8,
        primary: bool,
    ) -> Result<(Endpoint, EndpointSpec), NetError> {
        let net = state
            .networks
            .iter()
            .find(|n| n.id == attachment.network_id)
            .ok_or_else(|| {
                NetError::Invalid(format!(
                    "container {id}: network {} no longer exists",
                    attachment.network_id
                ))
            })?;
        if let Some(why) = lock(&self.broken).get(&net.id) {
            return Err(NetError::Unavailable(format!(
                "container {id}: network {} is unavailable: {why}",
                net.name
            )));
        }
        let mut used: BTreeSet<Ipv4Addr> = BTreeSet::new();
        for lease in state.leases.values() {
            for e in &lease.endpoints {
                if e.network_id == net.id {
                    used.insert(e.ip);
                }
            }
        }
        let ip = subnet::next_free_address(&net.subnet, &used).ok_or_else(|| {
            NetError::Conflict(format!(
                "network {} ({}) has no free address left",
                net.name, net.subnet
            ))
        })?;
        let gateway = net
            .subnet
            .gateway()
            .map_err(|err| NetError::Invalid(format!("network {}: {err}", net.name)))?;
        let veth = veth_name(id, index);
        let spec = EndpointSpec {
            host_name: veth.clone(),
            bridge: net.bridge.clone(),
            peer_name: format!("eth{index}"),
            mac: subnet::mac_for(ip),
            ip,
            prefix: net.subnet.prefix(),
            default_gateway: primary.then_some(gateway),
            alias: self.endpoint_alias(id),
        };
        Ok((
            Endpoint {
                network_id: net.id.clone(),
                index,
                ip,
                veth,
                aliases: attachment.aliases.clone(),
            },
            spec,
        ))
    }

    /// Everything a container held: interfaces, namespace, ports, lease, its lines in
    /// its peers' hosts files. Idempotent; used on exit, remove and at start-up.
    pub fn release(&self, id: &str) {
        let (lease, peers) = {
            let state = lock(&self.state);
            (state.leases.get(id).cloned(), Self::peers_of(&state, id))
        };
        if let Some(lease) = &lease {
            for e in &lease.endpoints {
                if let Err(err) = self.kernel.delete_link(&e.veth) {
                    tracing::warn!(container_id = %id, error = %err, "cannot delete an interface");
                }
            }
        }
        if let Err(err) = self.kernel.remove_netns(&self.netns_path(id)) {
            tracing::warn!(container_id = %id, error = %err, "cannot remove the namespace");
        }
        lock(&self.reservations).remove(id);
        let Some(lease) = lease else {
            return;
        };
        {
            let mut state = lock(&self.state);
            state.leases.remove(id);
            if let Err(err) = self.persist_leases(&state) {
                tracing::error!(container_id = %id, error = %err, "cannot record a released lease");
            }
        }
        if !lease.ports.is_empty() {
            if let Err(err) = self.apply_rules() {
                tracing::error!(container_id = %id, error = %err, "cannot drop published ports");
            }
        }
        let mut affected = peers;
        affected.push(id.to_string());
        self.refresh_hosts(&affected);
    }

    /// Rewrites the hosts files of `ids` from the leases.
    fn refresh_hosts(&self, ids: &[String]) {
        let _serial = lock(&self.hosts_lock);
        let state = lock(&self.state);
        for id in ids {
            let dir = self.containers_dir.join(id);
            let text = match state.leases.get(id) {
                Some(lease) => {
                    let own: Vec<hosts::HostEntry> = lease
                        .endpoints
                        .iter()
                        .map(|e| hosts::HostEntry {
                            ip: e.ip,
                            names: names_of(lease, e),
                        })
                        .collect();
                    let mut peers = Vec::new();
                    for peer_id in Self::peers_of(&state, id) {
                        let Some(peer) = state.leases.get(&peer_id) else {
                            continue;
                        };
                        for e in &peer.endpoints {
                            let shared = lease
                                .endpoints
                                .iter()
                                .any(|mine| mine.network_id == e.network_id);
                            if shared {
                                peers.push(hosts::HostEntry {
                                    ip: e.ip,
                                    names: names_of(peer, e),
                                });
                            }
                        }
                    }
                    hosts::render_hosts(&lease.hostname, &own, &peers)
                }
                None => match store::read_container(&dir) {
                    Ok(Some(net)) if net.mode != Mode::Host => {
                        hosts::render_hosts(&net.hostname, &[], &[])
                    }
                    _ => continue,
                },
            };
            let path = dir.join(HOSTS_FILE);
            if !dir.is_dir() {
                continue;
            }
            if let Err(err) = hosts::rewrite_in_place(&path, &text) {
                tracing::warn!(container_id = %id, error = %err, "cannot update /etc/hosts");
            }
        }
    }

    /// Published ports of every running container (for the node record).
    pub fn used_ports(&self) -> Vec<PortBinding> {
        let state = lock(&self.state);
        state
            .leases
            .keys()
            .flat_map(|id| bindings_of(&state, id))
            .collect()
    }

    /// Published ports of one container while it runs.
    pub fn ports_of(&self, id: &str) -> Vec<PortBinding> {
        bindings_of(&lock(&self.state), id)
    }

    /// The network part of `inspect`.
    pub fn describe(&self, id: &str, dir: &Path) -> ContainerNetwork {
        let Ok(Some(net)) = store::read_container(dir) else {
            return ContainerNetwork {
                mode: "none".into(),
                ..Default::default()
            };
        };
        let state = lock(&self.state);
        let name_of = |network_id: &str| {
            state
                .networks
                .iter()
                .find(|n| n.id == network_id)
                .map(|n| n.name.clone())
                .unwrap_or_else(|| network_id.to_string())
        };
        let endpoints = state
            .leases
            .get(id)
            .map(|lease| {
                lease
                    .endpoints
                    .iter()
                    .filter_map(|e| {
                        let def = state.networks.iter().find(|n| n.id == e.network_id)?;
                        Some(EndpointInfo {
                            network: def.name.clone(),
                            network_id: def.id.clone(),
                            interface: format!("eth{}", e.index),
                            host_interface: e.veth.clone(),
                            ip_address: e.ip.to_string(),
                            prefix_len: def.subnet.prefix(),
                            gateway: def
                                .subnet
                                .gateway()
                                .map(|g| g.to_string())
                                .unwrap_or_default(),
                            mac_address: subnet::mac_text(&subnet::mac_for(e.ip)),
                            aliases: e.aliases.clone(),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        ContainerNetwork {
            mode: net.mode_name.clone(),
            networks: net
                .attachments
                .iter()
                .map(|a| name_of(&a.network_id))
                .collect(),
            endpoints,
            ports: bindings_of(&state, id),
            requested_ports: net.ports.clone(),
        }
    }

    // ---- user networks -------------------------------------------------------------

    fn info(&self, state: &State, def: &NetworkDef) -> NetworkInfo {
        let mut containers = Vec::new();
        for (id, net) in self.container_nets() {
            if !net.attachments.iter().any(|a| a.network_id == def.id) {
                continue;
            }
            let ip = state
                .leases
                .get(&id)
                .and_then(|l| l.endpoints.iter().find(|e| e.network_id == def.id))
                .map(|e| e.ip);
            containers.push(NetworkMember {
                id,
                name: net.name.clone(),
                ip_address: ip.map(|ip| ip.to_string()).unwrap_or_default(),
                mac_address: ip
                    .map(|ip| subnet::mac_text(&subnet::mac_for(ip)))
                    .unwrap_or_default(),
            });
        }
        containers.sort_by(|a, b| a.name.cmp(&b.name));
        NetworkInfo {
            id: def.id.clone(),
            name: def.name.clone(),
            driver: "bridge".into(),
            bridge: def.bridge.clone(),
            subnet: def.subnet.to_string(),
            gateway: def
                .subnet
                .gateway()
                .map(|g| g.to_string())
                .unwrap_or_default(),
            created: def.created.clone(),
            builtin: def.builtin,
            labels: def.labels.clone(),
            node_id: self.node_id.clone(),
            containers,
        }
    }

    fn pseudo(&self, name: &str, driver: &str) -> NetworkInfo {
        NetworkInfo {
            id: name.to_string(),
            name: name.to_string(),
            driver: driver.to_string(),
            bridge: String::new(),
            subnet: String::new(),
            gateway: String::new(),
            created: String::new(),
            builtin: true,
            labels: BTreeMap::new(),
            node_id: self.node_id.clone(),
            containers: Vec::new(),
        }
    }

    /// Every container's network.json.
    fn container_nets(&self) -> Vec<(String, ContainerNet)> {
        let Ok(entries) = std::fs::read_dir(&self.containers_dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|entry| {
                let id = entry.file_name().to_string_lossy().into_owned();
                let net = store::read_container(&entry.path()).ok()??;
                Some((id, net))
            })
            .collect()
    }

    /// The networks users made (for the node record; placement needs them).
    pub fn user_networks(&self) -> Vec<berth_proto::messages::node::NodeNetwork> {
        lock(&self.state)
            .networks
            .iter()
            .filter(|n| !n.builtin)
            .map(|n| berth_proto::messages::node::NodeNetwork {
                id: n.id.clone(),
                name: n.name.clone(),
            })
            .collect()
    }

    /// `network ls`: the bridge networks, then `host` and `none`.
    pub fn list(&self) -> Vec<NetworkInfo> {
        let state = lock(&self.state);
        let mut out: Vec<NetworkInfo> = state
            .networks
            .iter()
            .map(|n| self.info(&state, n))
            .collect();
        out.push(self.pseudo("host", "host"));
        out.push(self.pseudo("none", "null"));
        out
    }

    /// `network inspect`
    pub fn inspect(&self, reference: &str) -> Result<NetworkInfo, NetError> {
        if reference == "host" || reference == "none" {
            return Ok(self.pseudo(reference, if reference == "host" { "host" } else { "null" }));
        }
        let state = lock(&self.state);
        let def = Self::find_network(&state.networks, reference)?;
        Ok(self.info(&state, def))
    }

    /// `network create`: a new bridge with a subnet that overlaps nothing on the host.
    pub fn create(
        &self,
        name: &str,
        subnet_text: Option<&str>,
        labels: BTreeMap<String, String>,
    ) -> Result<NetworkInfo, NetError> {
        check_network_name("network name", name)?;
        if [DEFAULT_NETWORK, "host", "none"].contains(&name) {
            return Err(NetError::Invalid(format!(
                "network name {name} is reserved for a built-in network"
            )));
        }
        let id = random_id()?;
        let mut state = lock(&self.state);
        if state.networks.iter().any(|n| n.name == name) {
            return Err(NetError::Conflict(format!(
                "network {name} already exists on node {}",
                self.node_id
            )));
        }
        let own_bridges: Vec<String> = state.networks.iter().map(|n| n.bridge.clone()).collect();
        let foreign = self.foreign_subnets(&own_bridges);
        let taken: Vec<(String, Subnet)> = state
            .networks
            .iter()
            .map(|n| (format!("network {}", n.name), n.subnet))
            .chain(
                foreign
                    .into_iter()
                    .map(|(label, s)| (format!("interface {label}"), s)),
            )
            .collect();
        let subnet = match subnet_text {
            Some(text) => {
                let subnet: Subnet = text.parse().map_err(NetError::Invalid)?;
                subnet.gateway().map_err(NetError::Invalid)?;
                if let Some((owner, other)) = taken.iter().find(|(_, s)| s.overlaps(&subnet)) {
                    return Err(NetError::Conflict(format!(
                        "subnet {subnet} overlaps {other} of {owner} on node {}",
                        self.node_id
                    )));
                }
                subnet
            }
            None => {
                let subnets: Vec<Subnet> = taken.iter().map(|(_, s)| *s).collect();
                subnet::next_free_subnet(&self.config.pool, self.config.pool_prefix, &subnets)
                    .ok_or_else(|| {
                        NetError::Conflict(format!(
                            "no free /{} left in the pool {} of node {}: give --subnet",
                            self.config.pool_prefix, self.config.pool, self.node_id
                        ))
                    })?
            }
        };
        let def = NetworkDef {
            bridge: format!("br-{}", &id[..12]),
            id,
            name: name.to_string(),
            subnet,
            created: crate::state::now_rfc3339(),
            builtin: false,
            labels,
        };
        let spec = self.bridge_spec(&def)?;
        if let Err(err) = self.kernel.ensure_bridge(&spec) {
            let _ = self.kernel.delete_link(&def.bridge);
            return Err(kernel_err(&format!("network {name}"), err));
        }
        state.networks.push(def.clone());
        if let Err(err) = store::write_networks(&self.dir, &state.networks) {
            state.networks.retain(|n| n.id != def.id);
            let _ = self.kernel.delete_link(&def.bridge);
            return Err(NetError::Internal(err));
        }
        let info = self.info(&state, &def);
        drop(state);
        self.apply_rules()?;
        Ok(info)
    }

    /// `network rm`: only a user network no container is attached to.
    pub fn remove(&self, reference: &str) -> Result<String, NetError> {
        let mut state = lock(&self.state);
        let def = Self::find_network(&state.networks, reference)?.clone();
        if def.builtin {
            return Err(NetError::Invalid(format!(
                "network {} is built in and cannot be removed",
                def.name
            )));
        }
        let users: Vec<String> = self
            .container_nets()
            .into_iter()
            .filter(|(_, n)| n.attachments.iter().any(|a| a.network_id == def.id))
            .map(|(_, n)| n.name)
            .collect();
        if !users.is_empty() {
            return Err(NetError::Conflict(format!(
                "network {} is in use by container(s) {}: disconnect or remove them first",
                def.name,
                users.join(", ")
            )));
        }
        self.kernel
            .delete_link(&def.bridge)
            .map_err(|err| kernel_err(&format!("network {}", def.name), err))?;
        state.networks.retain(|n| n.id != def.id);
        store::write_networks(&self.dir, &state.networks).map_err(NetError::Internal)?;
        drop(state);
        lock(&self.broken).remove(&def.id);
        self.apply_rules()?;
        Ok(def.id)
    }

    /// `network connect` of a container; `running` says whether to add the interface now.
    pub fn connect(
        &self,
        id: &str,
        dir: &Path,
        reference: &str,
        aliases: &[String],
        running: bool,
    ) -> Result<String, NetError> {
        for alias in aliases {
            check_network_name("network alias", alias)?;
        }
        let mut net = store::read_container(dir)
            .map_err(NetError::Internal)?
            .filter(|n| n.mode == Mode::Namespaced)
            .ok_or_else(|| {
                NetError::Invalid(format!(
                    "container {id} does not use a network namespace of berth's (--network none or host): it cannot be connected"
                ))
            })?;
        let def = {
            let state = lock(&self.state);
            Self::find_network(&state.networks, reference)?.clone()
        };
        if net.attachments.iter().any(|a| a.network_id == def.id) {
            return Err(NetError::Conflict(format!(
                "container {} is already connected to network {}",
                net.name, def.name
            )));
        }
        let attachment = Attachment {
            network_id: def.id.clone(),
            aliases: aliases.to_vec(),
        };
        net.attachments.push(attachment.clone());
        store::write_container(dir, &net).map_err(NetError::Internal)?;
        if !running {
            return Ok(def.id);
        }
        let added = (|| {
            let (spec, had_no_endpoint) = {
                let mut state = lock(&self.state);
                let lease = state.leases.get(id).cloned().ok_or_else(|| {
                    NetError::Conflict(format!("container {id} has no network while it runs"))
                })?;
                let index = (0u8..16)
                    .find(|i| !lease.endpoints.iter().any(|e| e.index == *i))
                    .ok_or_else(|| {
                        NetError::Conflict(format!("container {id} has 16 interfaces already"))
                    })?;
                let primary = lease.endpoints.is_empty();
                let (endpoint, spec) =
                    self.new_endpoint(&state, id, &attachment, index, primary)?;
                if let Some(l) = state.leases.get_mut(id) {
                    l.endpoints.push(endpoint);
                }
                self.persist_leases(&state)?;
                (spec, primary)
            };
            if let Err(err) = self.kernel.add_endpoint(&self.netns_path(id), &spec) {
                let mut state = lock(&self.state);
                if let Some(l) = state.leases.get_mut(id) {
                    l.endpoints.retain(|e| e.veth != spec.host_name);
                }
                let _ = self.persist_leases(&state);
                return Err(kernel_err(&format!("container {id}"), err));
            }
            if had_no_endpoint
                && lock(&self.state)
                    .leases
                    .get(id)
                    .is_some_and(|l| !l.ports.is_empty())
            {
                self.apply_rules()?;
            }
            Ok(())
        })();
        if let Err(err) = added {
            net.attachments.retain(|a| a.network_id != def.id);
            let _ = store::write_container(dir, &net);
            return Err(err);
        }
        let mut affected = vec![id.to_string()];
        affected.extend(Self::peers_of(&lock(&self.state), id));
        self.refresh_hosts(&affected);
        Ok(def.id)
    }

    /// `network disconnect`
    pub fn disconnect(&self, id: &str, dir: &Path, reference: &str) -> Result<String, NetError> {
        let def = {
            let state = lock(&self.state);
            Self::find_network(&state.networks, reference)?.clone()
        };
        let mut net = store::read_container(dir)
            .map_err(NetError::Internal)?
            .filter(|n| n.attachments.iter().any(|a| a.network_id == def.id))
            .ok_or_else(|| {
                NetError::NotFound(format!(
                    "container {id} is not connected to network {}",
                    def.name
                ))
            })?;
        // Peers before, so they lose the container's lines.
        let mut affected = vec![id.to_string()];
        affected.extend(Self::peers_of(&lock(&self.state), id));
        let removed = {
            let mut state = lock(&self.state);
            let removed = state.leases.get_mut(id).and_then(|l| {
                let pos = l.endpoints.iter().position(|e| e.network_id == def.id)?;
                Some((l.endpoints.remove(pos), l.ports.is_empty()))
            });
            if removed.is_some() {
                self.persist_leases(&state)?;
            }
            removed
        };
        if let Some((endpoint, no_ports)) = removed {
            self.kernel
                .delete_link(&endpoint.veth)
                .map_err(|err| kernel_err(&format!("container {id}"), err))?;
            if !no_ports {
                self.apply_rules()?;
            }
        }
        net.attachments.retain(|a| a.network_id != def.id);
        store::write_container(dir, &net).map_err(NetError::Internal)?;
        self.refresh_hosts(&affected);
        Ok(def.id)
    }
}

fn names_of(lease: &Lease, endpoint: &Endpoint) -> Vec<String> {
    let mut names = vec![lease.hostname.clone(), lease.name.clone()];
    names.push(lease.container_id.chars().take(12).collect());
    names.extend(endpoint.aliases.iter().cloned());
    names
}

fn bindings_of(state: &State, id: &str) -> Vec<PortBinding> {
    let Some(lease) = state.leases.get(id) else {
        return Vec::new();
    };
    let ip = lease
        .endpoints
        .first()
        .map(|e| e.ip.to_string())
        .unwrap_or_default();
    lease
        .ports
        .iter()
        .map(|b| PortBinding {
            protocol: b.protocol,
            host_ip: b.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED).to_string(),
            host_port: b.host_port,
            container_port: b.container_port,
            container_ip: ip.clone(),
            container_id: lease.container_id.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests;
