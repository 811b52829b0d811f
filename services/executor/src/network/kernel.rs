//! The narrow seam between network decisions and the kernel: every side effect (links,
//! addresses, routes, namespaces, sysctls, nftables, port reservations) goes through
//! [`Kernel`]. [`Linux`](super::netlink::Linux) is the real one; [`Recorder`] records
//! calls and keeps a model of the links so the manager is unit-tested without root.

use super::subnet::Subnet;
use berth_proto::messages::network::PortProtocol;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A kernel operation that failed, with what it was doing.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {detail}")]
pub struct KernelError {
    pub what: String,
    pub detail: String,
    /// The errno, when there was one (EADDRINUSE tells a port conflict).
    pub errno: Option<i32>,
}

impl KernelError {
    pub fn new(what: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        KernelError {
            what: what.into(),
            detail: detail.to_string(),
            errno: None,
        }
    }

    pub fn errno(what: impl Into<String>, errno: i32) -> Self {
        KernelError {
            what: what.into(),
            detail: std::io::Error::from_raw_os_error(errno).to_string(),
            errno: Some(errno),
        }
    }
}

/// A bridge as berth sets it up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeSpec {
    pub name: String,
    pub gateway: Ipv4Addr,
    pub subnet: Subnet,
    pub mac: [u8; 6],
    /// Ownership tag, stored as the interface's alias.
    pub alias: String,
}

/// One veth pair: `host_name` on `bridge`, `peer_name` inside the namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    pub host_name: String,
    pub bridge: String,
    pub peer_name: String,
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
    pub prefix: u8,
    /// Default route via this address (the container's first network only).
    pub default_gateway: Option<Ipv4Addr>,
    pub alias: String,
}

/// An interface of the host namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub name: String,
    pub alias: Option<String>,
}

/// Everything berth asks of the kernel.
pub trait Kernel: Send + Sync {
    /// Creates the bridge if missing; sets its MAC, address, `up`, and its
    /// `forwarding` and `route_localnet` sysctls (loopback → published port).
    fn ensure_bridge(&self, bridge: &BridgeSpec) -> Result<(), KernelError>;
    /// Deletes an interface of the host namespace; a missing one is not an error.
    fn delete_link(&self, name: &str) -> Result<(), KernelError>;
    /// Interfaces of the host namespace.
    fn links(&self) -> Result<Vec<LinkInfo>, KernelError>;
    /// IPv4 networks of the host's interface addresses (name, subnet).
    fn host_subnets(&self) -> Result<Vec<(String, Subnet)>, KernelError>;
    /// A new network namespace pinned at `path` (a bind mount), loopback up.
    fn create_netns(&self, path: &Path) -> Result<(), KernelError>;
    /// Unpins the namespace at `path`; a missing one is not an error.
    fn remove_netns(&self, path: &Path) -> Result<(), KernelError>;
    /// Paths pinned under `dir`.
    fn pinned_netns(&self, dir: &Path) -> Vec<PathBuf>;
    /// A veth pair between the bridge and the namespace at `netns`, addressed and up.
    fn add_endpoint(&self, netns: &Path, endpoint: &EndpointSpec) -> Result<(), KernelError>;
    /// Runs an nftables transaction (text of [`super::nft`]).
    fn apply_rules(&self, text: &str) -> Result<(), KernelError>;
    /// Sets `net.ipv4.ip_forward` to 1; `true` when it was 0.
    fn enable_ip_forward(&self) -> Result<bool, KernelError>;
    /// Binds (without listening) `ip:port` so no other process can take it while the
    /// container runs; port 0 picks a free one. Returns the port and the socket.
    fn reserve_port(
        &self,
        protocol: PortProtocol,
        ip: Ipv4Addr,
        port: u16,
    ) -> Result<(u16, Option<OwnedFd>), KernelError>;
}

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    EnsureBridge(String),
    DeleteLink(String),
    CreateNetns(PathBuf),
    RemoveNetns(PathBuf),
    AddEndpoint(String, Ipv4Addr),
    ApplyRules(String),
    EnableIpForward,
    ReservePort(PortProtocol, u16),
}

/// A fake kernel: records calls, models links and pinned namespaces, can be told to
/// fail an endpoint or to find a port taken.
#[derive(Default)]
pub struct Recorder {
    pub calls: Mutex<Vec<Call>>,
    pub links: Mutex<Vec<LinkInfo>>,
    pub netns: Mutex<Vec<PathBuf>>,
    pub host_subnets: Vec<(String, Subnet)>,
    pub taken_ports: Mutex<Vec<u16>>,
    pub fail_endpoints: Mutex<bool>,
    next_port: Mutex<u16>,
}

impl Recorder {
    fn record(&self, call: Call) {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(call);
    }

    /// Calls so far, and forget them.
    pub fn take(&self) -> Vec<Call> {
        std::mem::take(&mut *self.calls.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn link_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|l| l.name.clone())
            .collect();
        names.sort();
        names
    }

    /// The last nftables text applied.
    pub fn last_rules(&self) -> Option<String> {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .rev()
            .find_map(|c| match c {
                Call::ApplyRules(text) => Some(text.clone()),
                _ => None,
            })
    }

    fn add_link(&self, name: &str, alias: &str) {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        if !links.iter().any(|l| l.name == name) {
            links.push(LinkInfo {
                name: name.to_string(),
                alias: Some(alias.to_string()),
            });
        }
    }
}

impl Kernel for Recorder {
    fn ensure_bridge(&self, bridge: &BridgeSpec) -> Result<(), KernelError> {
        self.record(Call::EnsureBridge(bridge.name.clone()));
        self.add_link(&bridge.name, &bridge.alias);
        Ok(())
    }

    fn delete_link(&self, name: &str) -> Result<(), KernelError> {
        self.record(Call::DeleteLink(name.to_string()));
        self.links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|l| l.name != name);
        Ok(())
    }

    fn links(&self) -> Result<Vec<LinkInfo>, KernelError> {
        Ok(self.links.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    fn host_subnets(&self) -> Result<Vec<(String, Subnet)>, KernelError> {
        Ok(self.host_subnets.clone())
    }

    fn create_netns(&self, path: &Path) -> Result<(), KernelError> {
        self.record(Call::CreateNetns(path.to_path_buf()));
        self.netns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(path.to_path_buf());
        Ok(())
    }

    fn remove_netns(&self, path: &Path) -> Result<(), KernelError> {
        self.record(Call::RemoveNetns(path.to_path_buf()));
        self.netns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|p| p != path);
        Ok(())
    }

    fn pinned_netns(&self, dir: &Path) -> Vec<PathBuf> {
        self.netns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|p| p.starts_with(dir))
            .cloned()
            .collect()
    }

    fn add_endpoint(&self, _netns: &Path, endpoint: &EndpointSpec) -> Result<(), KernelError> {
        self.record(Call::AddEndpoint(endpoint.host_name.clone(), endpoint.ip));
        if *self
            .fail_endpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
        {
            return Err(KernelError::new("add endpoint", "told to fail"));
        }
        self.add_link(&endpoint.host_name, &endpoint.alias);
        Ok(())
    }

    fn apply_rules(&self, text: &str) -> Result<(), KernelError> {
        self.record(Call::ApplyRules(text.to_string()));
        Ok(())
    }

    fn enable_ip_forward(&self) -> Result<bool, KernelError> {
        self.record(Call::EnableIpForward);
        Ok(false)
    }

    fn reserve_port(
        &self,
        protocol: PortProtocol,
        _ip: Ipv4Addr,
        port: u16,
    ) -> Result<(u16, Option<OwnedFd>), KernelError> {
        let port = if port == 0 {
            let mut next = self.next_port.lock().unwrap_or_else(|p| p.into_inner());
            *next = next.max(40000) + 1;
            *next
        } else {
            port
        };
        self.record(Call::ReservePort(protocol, port));
        if self
            .taken_ports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&port)
        {
            return Err(KernelError::errno(
                format!("bind port {port}"),
                libc::EADDRINUSE,
            ));
        }
        Ok((port, None))
    }
}
