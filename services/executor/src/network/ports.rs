//! Published ports as pure functions: checking what `create` asked, expanding `-P` from
//! the image's ExposedPorts, and telling when two host bindings collide.

use berth_proto::messages::network::{PortProtocol, PortSpec};
use std::net::Ipv4Addr;

/// A checked `-p`: the host address parsed (`None` = every address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: Option<u16>,
    pub container_port: u16,
    pub protocol: PortProtocol,
}

/// Checks each spec; the error names the offending one.
pub fn check(specs: &[PortSpec]) -> Result<Vec<Wanted>, String> {
    let mut out: Vec<Wanted> = Vec::new();
    for spec in specs {
        let shown = show_spec(spec);
        if spec.container_port == 0 {
            return Err(format!(
                "published port {shown}: the container port must be 1-65535"
            ));
        }
        if spec.host_port == Some(0) {
            return Err(format!(
                "published port {shown}: the host port must be 1-65535 (leave it out for a free one)"
            ));
        }
        let host_ip =
            match spec.host_ip.as_deref().map(str::trim) {
                None | Some("") | Some("0.0.0.0") => None,
                Some(text) => Some(text.parse::<Ipv4Addr>().map_err(|_| {
                    format!("published port {shown}: {text:?} is not an IPv4 address")
                })?),
            };
        let wanted = Wanted {
            host_ip,
            host_port: spec.host_port,
            container_port: spec.container_port,
            protocol: spec.protocol,
        };
        if out.contains(&wanted) {
            continue;
        }
        if let Some(host_port) = wanted.host_port {
            if let Some(other) = out.iter().find(|o| {
                o.host_port == Some(host_port)
                    && o.protocol == wanted.protocol
                    && addresses_overlap(o.host_ip, wanted.host_ip)
            }) {
                return Err(format!(
                    "published port {shown}: host port {host_port}/{} is also asked for container port {}",
                    wanted.protocol.as_str(),
                    other.container_port
                ));
            }
        }
        out.push(wanted);
    }
    Ok(out)
}

fn show_spec(spec: &PortSpec) -> String {
    let mut text = String::new();
    if let Some(ip) = &spec.host_ip {
        text.push_str(ip);
        text.push(':');
    }
    if let Some(port) = spec.host_port {
        text.push_str(&format!("{port}:"));
    }
    format!("{text}{}/{}", spec.container_port, spec.protocol.as_str())
}

/// `-P`: every `port/proto` key of the image's ExposedPorts on a free host port, after
/// the explicit `-p` ones (a port `-p` already publishes is left alone).
pub fn expose_all<'a>(
    explicit: &[PortSpec],
    exposed: impl IntoIterator<Item = &'a String>,
) -> Result<Vec<PortSpec>, String> {
    let mut out = explicit.to_vec();
    for key in exposed {
        let (port, proto) = key.split_once('/').unwrap_or((key.as_str(), "tcp"));
        let container_port: u16 = port
            .trim()
            .parse()
            .map_err(|_| format!("the image exposes {key:?}, which is not a port"))?;
        let protocol = match proto.trim() {
            "tcp" => PortProtocol::Tcp,
            "udp" => PortProtocol::Udp,
            // Docker accepts sctp; berth publishes tcp and udp only.
            _ => continue,
        };
        if container_port == 0
            || out
                .iter()
                .any(|s| s.container_port == container_port && s.protocol == protocol)
        {
            continue;
        }
        out.push(PortSpec {
            host_ip: None,
            host_port: None,
            container_port,
            protocol,
        });
    }
    Ok(out)
}

/// Two listen addresses collide when either is "every address" or they are equal.
pub fn addresses_overlap(a: Option<Ipv4Addr>, b: Option<Ipv4Addr>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

/// `0.0.0.0:8080->80/tcp`, as `docker ps` shows a binding.
pub fn show_binding(
    host_ip: &str,
    host_port: u16,
    container_port: u16,
    proto: PortProtocol,
) -> String {
    format!("{host_ip}:{host_port}->{container_port}/{}", proto.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(host_ip: Option<&str>, host_port: Option<u16>, container_port: u16) -> PortSpec {
        PortSpec {
            host_ip: host_ip.map(str::to_string),
            host_port,
            container_port,
            protocol: PortProtocol::Tcp,
        }
    }

    #[test]
    fn specs_are_checked_and_deduplicated() {
        let wanted = check(&[
            spec(None, Some(8080), 80),
            spec(Some("127.0.0.1"), Some(8081), 80),
            spec(None, Some(8080), 80),
            spec(Some("0.0.0.0"), None, 443),
        ])
        .expect("valid");
        assert_eq!(wanted.len(), 3);
        assert_eq!(wanted[1].host_ip, Some(Ipv4Addr::LOCALHOST));
        assert_eq!(wanted[2].host_ip, None);
        assert!(check(&[spec(None, None, 0)])
            .expect_err("port 0")
            .contains("container port"));
        assert!(check(&[spec(None, Some(0), 80)]).is_err());
        let err = check(&[spec(Some("nope"), Some(1), 80)]).expect_err("bad ip");
        assert!(err.contains("nope:1:80/tcp"), "{err}");
        let err = check(&[
            spec(None, Some(9000), 80),
            spec(Some("127.0.0.1"), Some(9000), 81),
        ])
        .expect_err("same host port twice");
        assert!(err.contains("9000/tcp"), "{err}");
        let udp = PortSpec {
            protocol: PortProtocol::Udp,
            ..spec(None, Some(9000), 81)
        };
        assert!(
            check(&[spec(None, Some(9000), 80), udp]).is_ok(),
            "tcp and udp differ"
        );
    }

    #[test]
    fn publish_all_adds_the_exposed_ports_not_yet_published() {
        let exposed = [
            "80/tcp".to_string(),
            "53/udp".into(),
            "9/sctp".into(),
            "8080".into(),
        ];
        let all = expose_all(&[spec(None, Some(1080), 80)], exposed.iter()).expect("valid");
        let shown: Vec<String> = all.iter().map(show_spec).collect();
        assert_eq!(shown, ["1080:80/tcp", "53/udp", "8080/tcp"]);
        assert!(expose_all(&[], ["x/tcp".to_string()].iter()).is_err());
    }

    #[test]
    fn overlap_and_display() {
        assert!(addresses_overlap(None, Some(Ipv4Addr::LOCALHOST)));
        assert!(!addresses_overlap(
            Some(Ipv4Addr::LOCALHOST),
            Some(Ipv4Addr::new(10, 0, 0, 1))
        ));
        assert_eq!(
            show_binding("0.0.0.0", 8080, 80, PortProtocol::Tcp),
            "0.0.0.0:8080->80/tcp"
        );
    }
}
