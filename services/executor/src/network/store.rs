//! What berth keeps on the node's disk about networks, each file written atomically:
//! `<data>/network/networks.json` (the node's networks), `<data>/network/leases.json`
//! (addresses, interfaces and host ports held by running containers: the IPAM) and
//! `containers/<id>/network.json` (what a container asked for, running or not).

use super::subnet::Subnet;
use berth_proto::messages::network::{PortProtocol, PortSpec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

/// A network of the node: the default `bridge` one or a user network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkDef {
    pub id: String,
    pub name: String,
    pub bridge: String,
    pub subnet: Subnet,
    pub created: String,
    pub builtin: bool,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// One interface of a running container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub network_id: String,
    /// `eth<index>` inside; the host end's name ends with it too.
    pub index: u8,
    pub ip: Ipv4Addr,
    pub veth: String,
    #[serde(default)]
    pub aliases: Vec<String>,
}

/// A host port a running container publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    pub protocol: PortProtocol,
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub container_port: u16,
}

/// What a running container holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub container_id: String,
    pub name: String,
    pub hostname: String,
    pub endpoints: Vec<Endpoint>,
    pub ports: Vec<Binding>,
}

/// How a container is networked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// A namespace of berth's with an interface per attached network.
    Namespaced,
    /// A namespace with loopback only.
    None,
    /// The host's namespace.
    Host,
}

/// A network a container is attached to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub network_id: String,
    #[serde(default)]
    pub aliases: Vec<String>,
}

/// `containers/<id>/network.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerNet {
    pub mode: Mode,
    /// As `--network` named it.
    pub mode_name: String,
    pub attachments: Vec<Attachment>,
    /// `-p` and `-P` expanded.
    pub ports: Vec<PortSpec>,
    pub name: String,
    pub hostname: String,
}

/// File name inside a container's directory.
pub const CONTAINER_FILE: &str = "network.json";

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|err| format!("{} is damaged: {err}", path.display())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(format!("cannot read {}: {err}", path.display())),
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), String> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|err| format!("encode: {err}"))?;
    crate::state::write_atomic(path, &bytes).map_err(|err| err.to_string())
}

pub fn read_networks(dir: &Path) -> Result<Vec<NetworkDef>, String> {
    Ok(read_json(&dir.join("networks.json"))?.unwrap_or_default())
}

pub fn write_networks(dir: &Path, networks: &[NetworkDef]) -> Result<(), String> {
    write_json(&dir.join("networks.json"), &networks)
}

pub fn read_leases(dir: &Path) -> Result<BTreeMap<String, Lease>, String> {
    Ok(read_json(&dir.join("leases.json"))?.unwrap_or_default())
}

pub fn write_leases(dir: &Path, leases: &BTreeMap<String, Lease>) -> Result<(), String> {
    write_json(&dir.join("leases.json"), leases)
}

pub fn read_container(dir: &Path) -> Result<Option<ContainerNet>, String> {
    read_json(&dir.join(CONTAINER_FILE))
}

pub fn write_container(dir: &Path, net: &ContainerNet) -> Result<(), String> {
    write_json(&dir.join(CONTAINER_FILE), net)
}
