//! berth's nftables table, rendered whole from the node's networks and published ports.
//! The text replaces the table in one `nft -f` transaction (create-if-missing, delete,
//! create), so the kernel never holds a half-applied set and a restart that re-renders
//! drops whatever a crash left behind. Nothing outside the table is ever named.

use super::subnet::Subnet;
use berth_proto::messages::network::PortProtocol;
use std::fmt::Write;
use std::net::Ipv4Addr;

/// A bridge network as the rules see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleNetwork {
    pub bridge: String,
    pub subnet: Subnet,
}

/// One published port: traffic to `host_ip:host_port` goes to `dest_ip:dest_port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulePort {
    pub protocol: PortProtocol,
    /// `None`: every local address.
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub dest_ip: Ipv4Addr,
    pub dest_port: u16,
    /// Container id, as a comment (`nft list table` then says whose rule it is).
    pub owner: String,
}

/// The full transaction text for table `table`.
pub fn render(table: &str, networks: &[RuleNetwork], ports: &[RulePort]) -> String {
    let mut t = String::new();
    // `table … {}` first so that `delete` cannot fail on a missing table.
    let _ = writeln!(t, "table ip {table} {{}}");
    let _ = writeln!(t, "delete table ip {table}");
    let _ = writeln!(t, "table ip {table} {{");

    // DNAT of published ports: from other hosts and namespaces (prerouting) and from
    // the host itself (output), for any local destination address, loopback included.
    let _ = writeln!(t, "  chain prerouting {{");
    let _ = writeln!(
        t,
        "    type nat hook prerouting priority dstnat; policy accept;"
    );
    let _ = writeln!(t, "    fib daddr type local jump published");
    let _ = writeln!(t, "  }}");
    let _ = writeln!(t, "  chain output {{");
    let _ = writeln!(t, "    type nat hook output priority -100; policy accept;");
    let _ = writeln!(t, "    fib daddr type local jump published");
    let _ = writeln!(t, "  }}");
    let _ = writeln!(t, "  chain published {{");
    for port in ports {
        let proto = port.protocol.as_str();
        let daddr = port
            .host_ip
            .map(|ip| format!("ip daddr {ip} "))
            .unwrap_or_default();
        let _ = writeln!(
            t,
            "    {daddr}{proto} dport {} dnat to {}:{} comment \"{}\"",
            port.host_port,
            port.dest_ip,
            port.dest_port,
            comment(&port.owner)
        );
    }
    let _ = writeln!(t, "  }}");

    let _ = writeln!(t, "  chain postrouting {{");
    let _ = writeln!(
        t,
        "    type nat hook postrouting priority srcnat; policy accept;"
    );
    for net in networks {
        let bridge = &net.bridge;
        // Outbound NAT: containers reach what the host reaches, as the host.
        let _ = writeln!(
            t,
            "    ip saddr {} oifname != \"{bridge}\" masquerade",
            net.subnet
        );
        // Host loopback → published port: the source must not stay 127.0.0.1 on the
        // bridge (route_localnet lets it leave; this gives it an answerable address).
        let _ = writeln!(
            t,
            "    ip saddr 127.0.0.0/8 oifname \"{bridge}\" masquerade"
        );
        // Hairpin: a container reaching a published port of its own network.
        let _ = writeln!(
            t,
            "    ct status dnat iifname \"{bridge}\" oifname \"{bridge}\" masquerade"
        );
    }
    let _ = writeln!(t, "  }}");

    // Isolation: no forwarding between two of berth's networks.
    let _ = writeln!(t, "  chain forward {{");
    let _ = writeln!(
        t,
        "    type filter hook forward priority filter; policy accept;"
    );
    if networks.len() > 1 {
        for net in networks {
            let others: Vec<String> = networks
                .iter()
                .filter(|o| o.bridge != net.bridge)
                .map(|o| format!("\"{}\"", o.bridge))
                .collect();
            let _ = writeln!(
                t,
                "    iifname \"{}\" oifname {{ {} }} drop",
                net.bridge,
                others.join(", ")
            );
        }
    }
    let _ = writeln!(t, "  }}");
    let _ = writeln!(t, "}}");
    t
}

/// Text that cannot close the quoted comment.
fn comment(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_ascii_alphanumeric() || "_-.:".contains(*c))
        .take(64)
        .collect()
}

/// The transaction that removes the table (and nothing else).
pub fn render_delete(table: &str) -> String {
    format!("table ip {table} {{}}\ndelete table ip {table}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets() -> Vec<RuleNetwork> {
        vec![
            RuleNetwork {
                bridge: "berth0".into(),
                subnet: "10.87.0.0/16".parse().expect("subnet"),
            },
            RuleNetwork {
                bridge: "br-0123456789ab".into(),
                subnet: "10.86.0.0/24".parse().expect("subnet"),
            },
        ]
    }

    #[test]
    fn the_table_is_replaced_whole_and_names_only_itself() {
        let ports = vec![
            RulePort {
                protocol: PortProtocol::Tcp,
                host_ip: None,
                host_port: 8080,
                dest_ip: Ipv4Addr::new(10, 87, 0, 2),
                dest_port: 80,
                owner: "abc\"; flush ruleset".into(),
            },
            RulePort {
                protocol: PortProtocol::Udp,
                host_ip: Some(Ipv4Addr::LOCALHOST),
                host_port: 5353,
                dest_ip: Ipv4Addr::new(10, 86, 0, 3),
                dest_port: 53,
                owner: "def".into(),
            },
        ];
        let text = render("berth_t1", &nets(), &ports);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "table ip berth_t1 {}");
        assert_eq!(lines[1], "delete table ip berth_t1");
        assert!(
            text.contains("tcp dport 8080 dnat to 10.87.0.2:80 comment \"abcflushruleset\""),
            "{text}"
        );
        assert!(
            text.contains("ip daddr 127.0.0.1 udp dport 5353 dnat to 10.86.0.3:53"),
            "{text}"
        );
        assert!(text.contains("ip saddr 10.87.0.0/16 oifname != \"berth0\" masquerade"));
        assert!(text.contains("ip saddr 127.0.0.0/8 oifname \"berth0\" masquerade"));
        assert!(text.contains("iifname \"berth0\" oifname { \"br-0123456789ab\" } drop"));
        assert!(text.contains("iifname \"br-0123456789ab\" oifname { \"berth0\" } drop"));
        // Every table the text names is ours.
        for line in &lines {
            if line.contains("table ") {
                assert!(line.contains("table ip berth_t1"), "{line}");
            }
        }
        assert!(!text.contains("flush ruleset"));
    }

    #[test]
    fn one_network_needs_no_isolation_rule() {
        let text = render("berth", &nets()[..1], &[]);
        assert!(!text.contains(" drop"), "{text}");
        assert!(text.contains("chain published {\n  }"), "{text}");
        assert_eq!(
            render_delete("berth"),
            "table ip berth {}\ndelete table ip berth\n"
        );
    }
}
