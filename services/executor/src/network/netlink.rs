//! The real [`Kernel`]: rtnetlink requests built with the rust-netlink crates
//! (netlink-packet-route) over a plain blocking netlink socket (netlink-sys), network
//! namespaces pinned by bind mount, sysctls under /proc/sys, rules through `nft -f -`.
//!
//! Netlink rather than `ip`: a container start costs a handful of requests (tens of
//! microseconds each) instead of five or six process spawns. Synchronous rather than
//! rtnetlink's async layer: the work runs on a blocking thread anyway, and a socket
//! inside a container's namespace is opened by a short-lived thread that entered it,
//! which is simplest with plain calls.

use super::kernel::{BridgeSpec, EndpointSpec, Kernel, KernelError, LinkInfo};
use super::subnet::Subnet;
use berth_proto::messages::network::PortProtocol;
use netlink_packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// The host's kernel.
#[derive(Debug, Default)]
pub struct Linux;

/// One rtnetlink socket, in the namespace of the thread that opened it.
struct Rtnl {
    socket: Socket,
    seq: u32,
}

type Nl<T> = Result<T, KernelError>;

impl Rtnl {
    fn open(what: &str) -> Nl<Rtnl> {
        let mut socket = Socket::new(NETLINK_ROUTE)
            .map_err(|err| KernelError::new(what, format!("netlink socket: {err}")))?;
        socket
            .bind_auto()
            .map_err(|err| KernelError::new(what, format!("netlink bind: {err}")))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|err| KernelError::new(what, format!("netlink connect: {err}")))?;
        Ok(Rtnl { socket, seq: 0 })
    }

    /// Sends one request and gathers the replies until the ACK (or DONE for a dump).
    fn request(
        &mut self,
        what: &str,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Nl<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut request = NetlinkMessage::from(message);
        request.header.flags = flags;
        request.header.sequence_number = self.seq;
        request.finalize();
        let mut buf = vec![0u8; request.buffer_len()];
        request.serialize(&mut buf);
        self.socket
            .send(&buf, 0)
            .map_err(|err| KernelError::new(what, format!("netlink send: {err}")))?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut replies = Vec::new();
        loop {
            let (data, _) = self
                .socket
                .recv_from_full()
                .map_err(|err| KernelError::new(what, format!("netlink receive: {err}")))?;
            let mut offset = 0;
            while offset < data.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                    .map_err(|err| KernelError::new(what, format!("netlink reply: {err}")))?;
                let len = reply.header.length as usize;
                if len == 0 {
                    break;
                }
                offset += (len + 3) & !3;
                if reply.header.sequence_number != self.seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Error(err) => match err.code {
                        None => return Ok(replies),
                        Some(code) => return Err(KernelError::errno(what, -code.get())),
                    },
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::InnerMessage(inner) => {
                        replies.push(inner);
                        if !dump && flags & NLM_F_ACK == 0 {
                            return Ok(replies);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn ack(&mut self, what: &str, message: RouteNetlinkMessage, extra: u16) -> Nl<()> {
        self.request(what, message, NLM_F_REQUEST | NLM_F_ACK | extra)
            .map(drop)
    }

    /// Index of the interface `name` in this socket's namespace.
    fn index(&mut self, name: &str) -> Nl<u32> {
        let mut message = LinkMessage::default();
        message
            .attributes
            .push(LinkAttribute::IfName(name.to_string()));
        let what = format!("look up interface {name}");
        let replies = self.request(&what, RouteNetlinkMessage::GetLink(message), NLM_F_REQUEST)?;
        replies
            .into_iter()
            .find_map(|r| match r {
                RouteNetlinkMessage::NewLink(link) => Some(link.header.index),
                _ => None,
            })
            .ok_or_else(|| KernelError::errno(what, libc::ENODEV))
    }

    fn set_up(&mut self, index: u32, alias: Option<&str>, what: &str) -> Nl<()> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        message.header.flags = LinkFlags::Up;
        message.header.change_mask = LinkFlags::Up;
        if let Some(alias) = alias {
            message
                .attributes
                .push(LinkAttribute::IfAlias(alias.to_string()));
        }
        self.ack(what, RouteNetlinkMessage::SetLink(message), 0)
    }

    fn add_address(&mut self, index: u32, ip: Ipv4Addr, prefix: u8, what: &str) -> Nl<()> {
        let mut message = AddressMessage::default();
        message.header.family = AddressFamily::Inet;
        message.header.prefix_len = prefix;
        message.header.index = index;
        message
            .attributes
            .push(AddressAttribute::Local(IpAddr::V4(ip)));
        message
            .attributes
            .push(AddressAttribute::Address(IpAddr::V4(ip)));
        if prefix < 31 {
            let broadcast = Subnet::containing(ip, prefix).broadcast();
            message
                .attributes
                .push(AddressAttribute::Broadcast(broadcast));
        }
        self.ack(
            what,
            RouteNetlinkMessage::NewAddress(message),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    fn add_default_route(&mut self, index: u32, gateway: Ipv4Addr, what: &str) -> Nl<()> {
        let mut message = RouteMessage::default();
        message.header.address_family = AddressFamily::Inet;
        message.header.table = RouteHeader::RT_TABLE_MAIN;
        message.header.protocol = RouteProtocol::Boot;
        message.header.scope = RouteScope::Universe;
        message.header.kind = RouteType::Unicast;
        message
            .attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
        message.attributes.push(RouteAttribute::Oif(index));
        self.ack(
            what,
            RouteNetlinkMessage::NewRoute(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    fn delete(&mut self, name: &str) -> Nl<()> {
        let mut message = LinkMessage::default();
        message
            .attributes
            .push(LinkAttribute::IfName(name.to_string()));
        match self.ack(
            &format!("delete interface {name}"),
            RouteNetlinkMessage::DelLink(message),
            0,
        ) {
            Err(err) if err.errno == Some(libc::ENODEV) => Ok(()),
            other => other,
        }
    }
}

fn write_sysctl(path: &str, value: &str) -> Nl<()> {
    std::fs::write(path, value).map_err(|err| KernelError::new(format!("write {path}"), err))
}

/// Runs `f` on a fresh thread (so that entering a namespace never leaks into a pooled
/// thread) and returns its result.
fn on_own_thread<T: Send + 'static>(f: impl FnOnce() -> Nl<T> + Send + 'static) -> Nl<T> {
    std::thread::Builder::new()
        .name("berth-netns".into())
        .spawn(f)
        .map_err(|err| KernelError::new("spawn a namespace thread", err))?
        .join()
        .map_err(|_| KernelError::new("namespace thread", "panicked"))?
}

impl Kernel for Linux {
    fn ensure_bridge(&self, bridge: &BridgeSpec) -> Nl<()> {
        let mut rtnl = Rtnl::open("bridge")?;
        let index = match rtnl.index(&bridge.name) {
            Ok(index) => index,
            Err(err) if err.errno == Some(libc::ENODEV) => {
                let mut message = LinkMessage::default();
                message
                    .attributes
                    .push(LinkAttribute::IfName(bridge.name.clone()));
                message
                    .attributes
                    .push(LinkAttribute::Address(bridge.mac.to_vec()));
                message
                    .attributes
                    .push(LinkAttribute::LinkInfo(vec![NlLinkInfo::Kind(
                        InfoKind::Bridge,
                    )]));
                match rtnl.ack(
                    &format!("create bridge {}", bridge.name),
                    RouteNetlinkMessage::NewLink(message),
                    NLM_F_CREATE | NLM_F_EXCL,
                ) {
                    Err(err) if err.errno != Some(libc::EEXIST) => return Err(err),
                    _ => {}
                }
                rtnl.index(&bridge.name)?
            }
            Err(err) => return Err(err),
        };
        rtnl.set_up(
            index,
            Some(&bridge.alias),
            &format!("bring bridge {} up", bridge.name),
        )?;
        rtnl.add_address(
            index,
            bridge.gateway,
            bridge.subnet.prefix(),
            &format!("address {} on bridge {}", bridge.gateway, bridge.name),
        )?;
        // Per-bridge switches only: forwarding for what enters from the containers,
        // route_localnet so that host loopback can reach published ports.
        write_sysctl(
            &format!("/proc/sys/net/ipv4/conf/{}/forwarding", bridge.name),
            "1",
        )?;
        write_sysctl(
            &format!("/proc/sys/net/ipv4/conf/{}/route_localnet", bridge.name),
            "1",
        )?;
        Ok(())
    }

    fn delete_link(&self, name: &str) -> Nl<()> {
        Rtnl::open("delete interface")?.delete(name)
    }

    fn links(&self) -> Nl<Vec<LinkInfo>> {
        let mut rtnl = Rtnl::open("list interfaces")?;
        let replies = rtnl.request(
            "list interfaces",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_REQUEST | NLM_F_DUMP,
        )?;
        Ok(replies
            .into_iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewLink(link) => {
                    let mut name = None;
                    let mut alias = None;
                    for attr in link.attributes {
                        match attr {
                            LinkAttribute::IfName(n) => name = Some(n),
                            LinkAttribute::IfAlias(a) => alias = Some(a),
                            _ => {}
                        }
                    }
                    Some(LinkInfo { name: name?, alias })
                }
                _ => None,
            })
            .collect())
    }

    fn host_subnets(&self) -> Nl<Vec<(String, Subnet)>> {
        let mut rtnl = Rtnl::open("list addresses")?;
        let mut query = AddressMessage::default();
        query.header.family = AddressFamily::Inet;
        let replies = rtnl.request(
            "list addresses",
            RouteNetlinkMessage::GetAddress(query),
            NLM_F_REQUEST | NLM_F_DUMP,
        )?;
        Ok(replies
            .into_iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewAddress(addr) => {
                    let prefix = addr.header.prefix_len;
                    let mut ip = None;
                    let mut label = String::new();
                    for attr in addr.attributes {
                        match attr {
                            AddressAttribute::Local(IpAddr::V4(a)) => ip = Some(a),
                            AddressAttribute::Address(IpAddr::V4(a)) if ip.is_none() => {
                                ip = Some(a)
                            }
                            AddressAttribute::Label(l) => label = l,
                            _ => {}
                        }
                    }
                    Some((label, Subnet::containing(ip?, prefix)))
                }
                _ => None,
            })
            .collect())
    }

    fn create_netns(&self, path: &Path) -> Nl<()> {
        let what = format!("network namespace {}", path.display());
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|err| KernelError::new(format!("create {}", dir.display()), err))?;
        }
        // A leftover from a crash: unpin it first (the file is only ours).
        if path.exists() {
            self.remove_netns(path)?;
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|err| KernelError::new(what.clone(), format!("create the pin file: {err}")))?;
        let pin = path.to_path_buf();
        let made = on_own_thread(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| KernelError::errno("unshare a network namespace", e as i32))?;
            nix::mount::mount(
                Some("/proc/thread-self/ns/net"),
                &pin,
                None::<&str>,
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| {
                KernelError::errno(format!("pin the namespace at {}", pin.display()), e as i32)
            })?;
            let mut inner = Rtnl::open("namespace loopback")?;
            // Loopback is always index 1 in a new namespace.
            inner.set_up(1, None, "bring loopback up")
        });
        if let Err(err) = made {
            let _ = self.remove_netns(path);
            return Err(err);
        }
        Ok(())
    }

    fn remove_netns(&self, path: &Path) -> Nl<()> {
        match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => {
                return Err(KernelError::errno(
                    format!("unpin the namespace at {}", path.display()),
                    e as i32,
                ))
            }
        }
        match std::fs::remove_file(path) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                Err(KernelError::new(format!("remove {}", path.display()), err))
            }
            _ => Ok(()),
        }
    }

    fn pinned_netns(&self, dir: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .map(|entries| entries.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    fn add_endpoint(&self, netns: &Path, endpoint: &EndpointSpec) -> Nl<()> {
        let what = format!(
            "interface {} of namespace {}",
            endpoint.host_name,
            netns.display()
        );
        let ns_file = std::fs::File::open(netns)
            .map_err(|err| KernelError::new(what.clone(), format!("open the namespace: {err}")))?;
        let ns: OwnedFd = ns_file.into();
        let mut host = Rtnl::open(&what)?;
        let bridge = host.index(&endpoint.bridge)?;
        let make = |host: &mut Rtnl| {
            let mut peer = LinkMessage::default();
            peer.attributes
                .push(LinkAttribute::IfName(endpoint.peer_name.clone()));
            peer.attributes
                .push(LinkAttribute::Address(endpoint.mac.to_vec()));
            peer.attributes.push(LinkAttribute::NetNsFd(ns.as_raw_fd()));
            let mut message = LinkMessage::default();
            message.header.flags = LinkFlags::Up;
            message.header.change_mask = LinkFlags::Up;
            message
                .attributes
                .push(LinkAttribute::IfName(endpoint.host_name.clone()));
            message.attributes.push(LinkAttribute::Controller(bridge));
            message.attributes.push(LinkAttribute::LinkInfo(vec![
                NlLinkInfo::Kind(InfoKind::Veth),
                NlLinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
            ]));
            host.ack(
                &format!("create veth {}", endpoint.host_name),
                RouteNetlinkMessage::NewLink(message),
                NLM_F_CREATE | NLM_F_EXCL,
            )
        };
        match make(&mut host) {
            // A leftover of a crash under the same name: it is ours (names embed the id).
            Err(err) if err.errno == Some(libc::EEXIST) => {
                host.delete(&endpoint.host_name)?;
                make(&mut host)?;
            }
            other => other?,
        }
        let configured = (|| {
            let index = host.index(&endpoint.host_name)?;
            host.set_up(
                index,
                Some(&endpoint.alias),
                &format!("tag veth {}", endpoint.host_name),
            )?;
            let inside = endpoint.clone();
            on_own_thread(move || {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| KernelError::errno("enter the container's namespace", e as i32))?;
                let mut rtnl = Rtnl::open("container namespace")?;
                let index = rtnl.index(&inside.peer_name)?;
                rtnl.add_address(
                    index,
                    inside.ip,
                    inside.prefix,
                    &format!("address {} on {}", inside.ip, inside.peer_name),
                )?;
                rtnl.set_up(index, None, &format!("bring {} up", inside.peer_name))?;
                if let Some(gateway) = inside.default_gateway {
                    rtnl.add_default_route(
                        index,
                        gateway,
                        &format!("default route via {gateway}"),
                    )?;
                }
                Ok(())
            })
        })();
        if configured.is_err() {
            let _ = host.delete(&endpoint.host_name);
        }
        configured
    }

    fn apply_rules(&self, text: &str) -> Nl<()> {
        let mut child = std::process::Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|err| {
                KernelError::new(
                    "run nft",
                    format!("{err} (berth needs nftables' nft on PATH)"),
                )
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(text.as_bytes())
                .map_err(|err| KernelError::new("write rules to nft", err))?;
        }
        let output = child
            .wait_with_output()
            .map_err(|err| KernelError::new("wait for nft", err))?;
        if !output.status.success() {
            return Err(KernelError::new(
                "nft -f",
                String::from_utf8_lossy(&output.stderr).trim(),
            ));
        }
        Ok(())
    }

    fn enable_ip_forward(&self) -> Nl<bool> {
        const PATH: &str = "/proc/sys/net/ipv4/ip_forward";
        let now = std::fs::read_to_string(PATH)
            .map_err(|err| KernelError::new(format!("read {PATH}"), err))?;
        if now.trim() == "1" {
            return Ok(false);
        }
        write_sysctl(PATH, "1")?;
        Ok(true)
    }

    fn reserve_port(
        &self,
        protocol: PortProtocol,
        ip: Ipv4Addr,
        port: u16,
    ) -> Nl<(u16, Option<OwnedFd>)> {
        use nix::sys::socket::{
            bind, getsockname, socket, AddressFamily as Af, SockFlag, SockType, SockaddrIn,
        };
        let kind = match protocol {
            PortProtocol::Tcp => SockType::Stream,
            PortProtocol::Udp => SockType::Datagram,
        };
        let what = format!("reserve {ip}:{port}/{}", protocol.as_str());
        let fd = socket(Af::Inet, kind, SockFlag::SOCK_CLOEXEC, None)
            .map_err(|e| KernelError::errno(what.clone(), e as i32))?;
        // No SO_REUSEADDR: a bound socket without it keeps every other bind off the port.
        bind(
            fd.as_raw_fd(),
            &SockaddrIn::from(std::net::SocketAddrV4::new(ip, port)),
        )
        .map_err(|e| KernelError::errno(what.clone(), e as i32))?;
        let bound: SockaddrIn =
            getsockname(fd.as_raw_fd()).map_err(|e| KernelError::errno(what, e as i32))?;
        Ok((bound.port(), Some(fd)))
    }
}
