//! `berth network create|ls|inspect|rm|connect|disconnect` (networks are per node: the
//! verbs address one node's executor) and the `-p` parser of `run`/`create`.

use crate::discovery::pick_node;
use crate::exit::Failure;
use berth_bus::{connect_once, BusError, NatsSettings};
use berth_proto::messages::network::{
    NetworkConnectRequest, NetworkCreateRequest, NetworkDisconnectRequest, NetworkDone,
    NetworkInfo, NetworkList, NetworkListRequest, NetworkRef, PortBinding, PortProtocol, PortSpec,
};
use berth_proto::subjects::{self, service_names, NetVerb};
use berth_proto::Encoding;
use serde::{de::DeserializeOwned, Serialize};
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct NodeArg {
    /// Node whose networks to address (default: the only executor on the bus).
    #[arg(long, env = "BERTH_NODE")]
    node: Option<String>,
}

/// `berth network …`
#[derive(clap::Subcommand, Debug)]
pub enum NetworkCommand {
    /// Create a user network (its own bridge) on a node.
    Create {
        #[command(flatten)]
        node: NodeArg,
        /// IPv4 subnet in CIDR form (default: a free /24 of the node's pool).
        #[arg(long)]
        subnet: Option<String>,
        /// Label key=value (repeatable).
        #[arg(short = 'l', long = "label")]
        labels: Vec<String>,
        name: String,
    },
    /// List the node's networks.
    #[command(alias = "list")]
    Ls {
        #[command(flatten)]
        node: NodeArg,
        /// Only names.
        #[arg(short = 'q', long)]
        quiet: bool,
        #[arg(long)]
        json: bool,
    },
    /// Details of networks as JSON: subnet, gateway, bridge, containers.
    Inspect {
        #[command(flatten)]
        node: NodeArg,
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Remove user networks no container is attached to.
    #[command(alias = "remove")]
    Rm {
        #[command(flatten)]
        node: NodeArg,
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Attach a container to a network (at once if it runs).
    Connect {
        #[command(flatten)]
        node: NodeArg,
        /// Another name of the container on this network (repeatable).
        #[arg(long = "alias")]
        aliases: Vec<String>,
        network: String,
        container: String,
    },
    /// Detach a container from a network.
    Disconnect {
        #[command(flatten)]
        node: NodeArg,
        network: String,
        container: String,
    },
}

/// `-p [hostIP:][hostPort:]containerPort[/tcp|udp]`; ports may be equal-length ranges
/// (`8000-8002:80-82`). One spec per port.
pub fn parse_publish(text: &str) -> Result<Vec<PortSpec>, String> {
    let bad = |why: &str| format!("invalid -p {text:?}: {why}");
    let (body, protocol) = match text.rsplit_once('/') {
        Some((body, "tcp")) => (body, PortProtocol::Tcp),
        Some((body, "udp")) => (body, PortProtocol::Udp),
        Some((_, other)) => return Err(bad(&format!("protocol {other:?} is not tcp or udp"))),
        None => (text, PortProtocol::Tcp),
    };
    let parts: Vec<&str> = body.split(':').collect();
    let (host_ip, host, container) = match parts.as_slice() {
        [c] => (None, None, *c),
        [h, c] => (None, Some(*h), *c),
        [ip, h, c] => (Some(*ip), if h.is_empty() { None } else { Some(*h) }, *c),
        _ => return Err(bad("use [hostIP:][hostPort:]containerPort[/tcp|udp]")),
    };
    if let Some(ip) = host_ip {
        ip.parse::<std::net::Ipv4Addr>()
            .map_err(|_| bad(&format!("{ip:?} is not an IPv4 address")))?;
    }
    let range = |s: &str| -> Result<(u16, u16), String> {
        let one = |p: &str| {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| bad(&format!("{p:?} is not a port (1-65535)")))
        };
        match s.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (one(a)?, one(b)?);
                if a > b {
                    return Err(bad(&format!("range {s} runs backwards")));
                }
                Ok((a, b))
            }
            None => one(s).map(|p| (p, p)),
        }
    };
    let (c_from, c_to) = range(container)?;
    let hosts = host.map(range).transpose()?;
    if let Some((h_from, h_to)) = hosts {
        if h_to - h_from != c_to - c_from {
            return Err(bad("the host and container ranges differ in length"));
        }
    }
    Ok((c_from..=c_to)
        .enumerate()
        .map(|(i, container_port)| PortSpec {
            host_ip: host_ip.map(str::to_string),
            host_port: hosts.map(|(from, _)| from + i as u16),
            container_port,
            protocol,
        })
        .collect())
}

/// `0.0.0.0:8080->80/tcp, …` for `ps`.
pub fn show_ports(ports: &[PortBinding]) -> String {
    ports
        .iter()
        .map(|p| {
            format!(
                "{}:{}->{}/{}",
                p.host_ip,
                p.host_port,
                p.container_port,
                p.protocol.as_str()
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

struct Target {
    client: async_nats::Client,
    node: String,
    timeout: Duration,
}

impl Target {
    async fn connect(
        nats: &NatsSettings,
        node: &NodeArg,
        timeout: Duration,
    ) -> Result<Self, Failure> {
        let client = connect_once(nats, "berth-cli", timeout.min(Duration::from_secs(5)))
            .await
            .map_err(|err| Failure::berth(err.to_string()))?;
        let node = pick_node(&client, service_names::EXECUTOR, node.node.clone(), timeout)
            .await
            .map_err(Failure::berth)?;
        Ok(Target {
            client,
            node,
            timeout,
        })
    }

    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        verb: NetVerb,
        body: &Req,
    ) -> Result<Resp, BusError> {
        berth_bus::request(
            &self.client,
            &subjects::net(&self.node, verb),
            body,
            Encoding::Bincode,
            self.timeout.max(Duration::from_secs(30)),
        )
        .await
    }
}

fn failure(err: BusError) -> Failure {
    match err {
        BusError::Service(envelope) => Failure::berth(envelope.message),
        other => Failure::berth(other.to_string()),
    }
}

fn json<T: Serialize>(value: &T) -> Result<String, Failure> {
    serde_json::to_string_pretty(value)
        .map_err(|err| Failure::berth(format!("cannot encode: {err}")))
}

/// Runs one `berth network` verb.
pub async fn run(
    command: NetworkCommand,
    nats: &NatsSettings,
    timeout: Duration,
) -> Result<ExitCode, Failure> {
    match command {
        NetworkCommand::Create {
            node,
            subnet,
            labels,
            name,
        } => {
            let target = Target::connect(nats, &node, timeout).await?;
            let labels = labels
                .iter()
                .map(|l| {
                    let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
                    (k.to_string(), v.to_string())
                })
                .collect();
            let info: NetworkInfo = target
                .call(
                    NetVerb::Create,
                    &NetworkCreateRequest {
                        name,
                        subnet,
                        labels,
                    },
                )
                .await
                .map_err(failure)?;
            outln!("{}", info.id);
            Ok(ExitCode::SUCCESS)
        }
        NetworkCommand::Ls {
            node,
            quiet,
            json: as_json,
        } => {
            let target = Target::connect(nats, &node, timeout).await?;
            let list: NetworkList = target
                .call(NetVerb::List, &NetworkListRequest {})
                .await
                .map_err(failure)?;
            if as_json {
                outln!("{}", json(&list.networks)?);
            } else if quiet {
                for n in &list.networks {
                    outln!("{}", n.name);
                }
            } else {
                outln!(
                    "{:<12}  {:<20}  {:<8}  {:<16}  {:<18}  CONTAINERS",
                    "NETWORK ID",
                    "NAME",
                    "DRIVER",
                    "BRIDGE",
                    "SUBNET"
                );
                for n in &list.networks {
                    outln!(
                        "{:<12}  {:<20}  {:<8}  {:<16}  {:<18}  {}",
                        &n.id[..n.id.len().min(12)],
                        n.name,
                        n.driver,
                        n.bridge,
                        n.subnet,
                        n.containers.len()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        NetworkCommand::Inspect { node, networks } => {
            let target = Target::connect(nats, &node, timeout).await?;
            let mut found = Vec::new();
            let mut failed = false;
            for network in networks {
                match target
                    .call::<_, NetworkInfo>(NetVerb::Inspect, &NetworkRef { network })
                    .await
                {
                    Ok(info) => found.push(info),
                    Err(err) => {
                        eprintln!("berth: {}", failure(err).message);
                        failed = true;
                    }
                }
            }
            outln!("{}", json(&found)?);
            Ok(if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        NetworkCommand::Rm { node, networks } => {
            let target = Target::connect(nats, &node, timeout).await?;
            let mut failed = false;
            for network in networks {
                match target
                    .call::<_, NetworkDone>(
                        NetVerb::Remove,
                        &NetworkRef {
                            network: network.clone(),
                        },
                    )
                    .await
                {
                    Ok(_) => outln!("{network}"),
                    Err(err) => {
                        eprintln!("berth: {}", failure(err).message);
                        failed = true;
                    }
                }
            }
            Ok(if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        NetworkCommand::Connect {
            node,
            aliases,
            network,
            container,
        } => {
            let target = Target::connect(nats, &node, timeout).await?;
            let _: NetworkDone = target
                .call(
                    NetVerb::Connect,
                    &NetworkConnectRequest {
                        network,
                        container,
                        aliases,
                    },
                )
                .await
                .map_err(failure)?;
            Ok(ExitCode::SUCCESS)
        }
        NetworkCommand::Disconnect {
            node,
            network,
            container,
        } => {
            let target = Target::connect(nats, &node, timeout).await?;
            let _: NetworkDone = target
                .call(
                    NetVerb::Disconnect,
                    &NetworkDisconnectRequest { network, container },
                )
                .await
                .map_err(failure)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> PortSpec {
        let mut specs = parse_publish(text).expect("parses");
        assert_eq!(specs.len(), 1, "{text}");
        specs.remove(0)
    }

    #[test]
    fn publish_specs_follow_docker() {
        assert_eq!(
            one("80"),
            PortSpec {
                host_ip: None,
                host_port: None,
                container_port: 80,
                protocol: PortProtocol::Tcp
            }
        );
        assert_eq!(one("8080:80").host_port, Some(8080));
        let udp = one("127.0.0.1:5353:53/udp");
        assert_eq!(udp.host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(udp.protocol, PortProtocol::Udp);
        let random_on_ip = one("127.0.0.1::80");
        assert_eq!(random_on_ip.host_port, None);
        let range = parse_publish("8000-8002:80-82").expect("range");
        assert_eq!(range.len(), 3);
        assert_eq!(
            (range[2].host_port, range[2].container_port),
            (Some(8002), 82)
        );
        for bad in [
            "",
            "x",
            "0",
            "70000",
            "80/sctp",
            "a.b:1:2",
            "1:2:3:4",
            "8000-8001:80",
            "90-80",
        ] {
            assert!(parse_publish(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ports_show_as_docker_ps_does() {
        let ports = [PortBinding {
            protocol: PortProtocol::Tcp,
            host_ip: "0.0.0.0".into(),
            host_port: 8080,
            container_port: 80,
            container_ip: "10.87.0.2".into(),
            container_id: "x".into(),
        }];
        assert_eq!(show_ports(&ports), "0.0.0.0:8080->80/tcp");
    }
}
