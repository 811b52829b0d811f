//! The files berth bind-mounts at /etc/hosts, /etc/resolv.conf and /etc/hostname.
//!
//! Names on user networks are resolved through /etc/hosts, which berth keeps current in
//! every member container (not an embedded DNS server): static binaries such as
//! busybox resolve from it without NSS modules, nothing has to run for names to work
//! (they survive an executor restart), and lookups cost no traffic.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;

/// One line: an address and its names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEntry {
    pub ip: Ipv4Addr,
    pub names: Vec<String>,
}

/// `/etc/hosts` of a container: localhost, its own addresses with its names, then its
/// peers on user networks. Without an address (`none`, not running) the hostname goes
/// on the loopback line so that it still resolves.
pub fn render_hosts(hostname: &str, own: &[HostEntry], peers: &[HostEntry]) -> String {
    let mut text = String::from("# written by berth; names of the container's networks\n");
    if own.is_empty() {
        text.push_str(&format!("127.0.0.1\tlocalhost {hostname}\n"));
    } else {
        text.push_str("127.0.0.1\tlocalhost\n");
    }
    text.push_str("::1\tlocalhost ip6-localhost ip6-loopback\n");
    for entry in own.iter().chain(peers) {
        let mut names: Vec<&str> = Vec::new();
        for name in &entry.names {
            if !name.is_empty() && !names.contains(&name.as_str()) {
                names.push(name);
            }
        }
        if !names.is_empty() {
            text.push_str(&format!("{}\t{}\n", entry.ip, names.join(" ")));
        }
    }
    text
}

/// The host's resolv.conf made usable from a container network namespace: nameservers
/// on loopback (a local stub resolver) cannot be reached from there and are left out.
pub fn render_resolv(host: &str) -> String {
    let mut out = String::new();
    let mut dropped = Vec::new();
    let mut servers = 0;
    for line in host.lines() {
        let mut words = line.split_whitespace();
        if words.next() == Some("nameserver") {
            let server = words.next().unwrap_or("");
            let loopback = server
                .parse::<std::net::IpAddr>()
                .map(|ip| ip.is_loopback())
                .unwrap_or(false);
            if loopback {
                dropped.push(server.to_string());
                continue;
            }
            servers += 1;
        }
        out.push_str(line);
        out.push('\n');
    }
    if !dropped.is_empty() {
        out.push_str(&format!(
            "# berth left out loopback nameservers of the host: {}\n",
            dropped.join(" ")
        ));
        if servers == 0 {
            out.push_str(
                "# the host has no other nameserver: names resolve from /etc/hosts only\n",
            );
        }
    }
    out
}

/// Replaces the content of a file that is bind-mounted into a running container. The
/// mount pins the inode, so a rename would go unseen: the new text is written over the
/// old and the file cut to its length (a reader sees old or new lines, never nothing).
pub fn rewrite_in_place(path: &Path, text: &str) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    file.set_len(text.len() as u64)?;
    file.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_list_own_names_then_peers() {
        let own = [HostEntry {
            ip: Ipv4Addr::new(10, 86, 0, 2),
            names: vec!["abc123".into(), "web".into(), "web".into()],
        }];
        let peers = [HostEntry {
            ip: Ipv4Addr::new(10, 86, 0, 3),
            names: vec!["db".into(), "database".into()],
        }];
        let text = render_hosts("abc123", &own, &peers);
        assert!(text.contains("127.0.0.1\tlocalhost\n"), "{text}");
        assert!(text.contains("10.86.0.2\tabc123 web\n"), "{text}");
        assert!(text.contains("10.86.0.3\tdb database\n"), "{text}");
        let alone = render_hosts("box", &[], &[]);
        assert!(alone.contains("127.0.0.1\tlocalhost box\n"), "{alone}");
    }

    #[test]
    fn loopback_nameservers_are_left_out() {
        let host =
            "search example.org\nnameserver 127.0.0.53\nnameserver 10.255.255.53\noptions edns0\n";
        let text = render_resolv(host);
        assert!(text.contains("nameserver 10.255.255.53\n"));
        assert!(!text.contains("nameserver 127.0.0.53"));
        assert!(text.contains("search example.org\n") && text.contains("options edns0\n"));
        assert!(text.contains("left out loopback nameservers of the host: 127.0.0.53"));
        let only_local = render_resolv("nameserver ::1\n");
        assert!(only_local.contains("/etc/hosts only"), "{only_local}");
        assert_eq!(
            render_resolv("nameserver 1.2.3.4\n"),
            "nameserver 1.2.3.4\n"
        );
    }

    #[test]
    fn rewriting_in_place_keeps_the_inode() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("hosts");
        rewrite_in_place(&path, "a long first version of the file\n").expect("write");
        let inode = std::fs::metadata(&path).expect("stat").ino();
        rewrite_in_place(&path, "short\n").expect("rewrite");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "short\n");
        assert_eq!(std::fs::metadata(&path).expect("stat").ino(), inode);
    }
}
