//! `berth.v1.net.<node>.*`: the networks of one node (each executor owns its bridges),
//! and the network parts of containers (published ports, endpoints).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Transport protocol of a published port.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum PortProtocol {
    #[default]
    Tcp,
    Udp,
}

impl PortProtocol {
    /// `tcp` or `udp`.
    pub fn as_str(self) -> &'static str {
        match self {
            PortProtocol::Tcp => "tcp",
            PortProtocol::Udp => "udp",
        }
    }
}

/// One `-p [hostIP:][hostPort:]containerPort[/proto]` as asked at create.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    /// IPv4 address of the host to listen on; default every address.
    #[serde(default)]
    pub host_ip: Option<String>,
    /// `None`: a free port chosen at start (shown in `ps` and `inspect`).
    #[serde(default)]
    pub host_port: Option<u16>,
    pub container_port: u16,
    #[serde(default)]
    pub protocol: PortProtocol,
}

/// A port published while the container runs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
pub struct PortBinding {
    pub protocol: PortProtocol,
    /// `0.0.0.0` for every host address.
    pub host_ip: String,
    pub host_port: u16,
    pub container_port: u16,
    /// Where the traffic goes (the container's address on its first network).
    pub container_ip: String,
    pub container_id: String,
}

/// One network interface of a running container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EndpointInfo {
    pub network: String,
    pub network_id: String,
    /// Name inside the container (`eth0`).
    pub interface: String,
    /// Host end of the veth pair.
    pub host_interface: String,
    pub ip_address: String,
    pub prefix_len: u8,
    pub gateway: String,
    pub mac_address: String,
    /// Names other containers of the network reach it by (besides its name).
    pub aliases: Vec<String>,
}

/// The network part of `inspect`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ContainerNetwork {
    /// `bridge`, `none`, `host`, or the user network asked at create.
    pub mode: String,
    /// Networks it is attached to (by name), running or not.
    pub networks: Vec<String>,
    /// Interfaces while it runs.
    pub endpoints: Vec<EndpointInfo>,
    /// Published ports while it runs.
    pub ports: Vec<PortBinding>,
    /// What was asked (`-p`, `-P` expanded).
    pub requested_ports: Vec<PortSpec>,
}

/// `create`: a user network (a bridge of its own) on this node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkCreateRequest {
    pub name: String,
    /// IPv4 CIDR; default a free /24 of the node's pool.
    #[serde(default)]
    pub subnet: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A container attached to a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NetworkMember {
    pub id: String,
    pub name: String,
    /// Empty while the container does not run.
    pub ip_address: String,
    pub mac_address: String,
}

/// A network (reply to `create` and `inspect`, rows of `list`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NetworkInfo {
    pub id: String,
    pub name: String,
    /// `bridge`, or `host`/`null` for the two pseudo networks.
    pub driver: String,
    /// The Linux bridge (empty for host/none).
    pub bridge: String,
    pub subnet: String,
    pub gateway: String,
    /// RFC 3339.
    pub created: String,
    /// `bridge`, `host` and `none` come with every node and cannot be removed.
    pub builtin: bool,
    pub labels: BTreeMap<String, String>,
    pub node_id: String,
    pub containers: Vec<NetworkMember>,
}

/// `list`
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkListRequest {}

/// Reply to `list`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NetworkList {
    pub node_id: String,
    pub networks: Vec<NetworkInfo>,
}

/// `inspect` and `remove`: a network by name, id or unique id prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkRef {
    pub network: String,
}

/// `connect`: attach a container (running or not) to a user network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkConnectRequest {
    pub network: String,
    pub container: String,
    /// Extra names on this network.
    #[serde(default)]
    pub aliases: Vec<String>,
}

/// `disconnect`: detach a container from a network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkDisconnectRequest {
    pub network: String,
    pub container: String,
}

/// Reply to `remove`, `connect`, `disconnect`: the network's full id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NetworkDone {
    pub id: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Encoding;

    #[test]
    fn port_specs_take_json_with_only_the_container_port() {
        let spec: PortSpec = Encoding::Json
            .decode(br#"{"container_port":80}"#)
            .expect("decodes");
        assert_eq!(spec.protocol, PortProtocol::Tcp);
        assert_eq!(spec.host_port, None);
        let bytes = Encoding::Bincode.encode(&spec).expect("encodes");
        let back: PortSpec = Encoding::Bincode.decode(&bytes).expect("decodes");
        assert_eq!(back, spec);
    }
}
