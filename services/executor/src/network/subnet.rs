//! IPv4 subnets and address management (IPAM) as pure functions: parsing, overlap,
//! the next free address of a network, the next free subnet of a pool.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 network in CIDR form, stored normalised (host bits cleared).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Subnet {
    base: u32,
    prefix: u8,
}

impl Subnet {
    /// `addr/prefix`, refusing host bits set (`10.0.0.1/24`), as Docker does.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Subnet, String> {
        if prefix > 32 {
            return Err(format!("prefix length /{prefix} is above 32"));
        }
        let base = u32::from(addr);
        if base & !mask(prefix) != 0 {
            return Err(format!(
                "{addr}/{prefix} has host bits set: did you mean {}/{prefix}?",
                Ipv4Addr::from(base & mask(prefix))
            ));
        }
        Ok(Subnet { base, prefix })
    }

    /// The subnet `addr` belongs to with this prefix.
    pub fn containing(addr: Ipv4Addr, prefix: u8) -> Subnet {
        let prefix = prefix.min(32);
        Subnet {
            base: u32::from(addr) & mask(prefix),
            prefix,
        }
    }

    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base)
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn last(&self) -> u32 {
        self.base | !mask(self.prefix)
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.last())
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & mask(self.prefix) == self.base
    }

    pub fn overlaps(&self, other: &Subnet) -> bool {
        self.base <= other.last() && other.base <= self.last()
    }

    /// The gateway berth puts on the bridge: the first host address.
    pub fn gateway(&self) -> Result<Ipv4Addr, String> {
        if self.prefix > 30 {
            return Err(format!(
                "{self} is too small for a network: use /30 or larger"
            ));
        }
        Ok(Ipv4Addr::from(self.base + 1))
    }

    /// Host addresses (network, gateway and broadcast excluded), in order.
    pub fn hosts(&self) -> impl Iterator<Item = Ipv4Addr> {
        let first = self.base.saturating_add(2);
        let last = self.last().saturating_sub(1);
        (first..=last).map(Ipv4Addr::from)
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix)
    }
}

impl FromStr for Subnet {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (addr, prefix) = text
            .split_once('/')
            .ok_or_else(|| format!("invalid subnet {text:?}: use CIDR form such as 10.1.2.0/24"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("invalid subnet {text:?}: {addr:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| format!("invalid subnet {text:?}: {prefix:?} is not a prefix length"))?;
        Subnet::new(addr, prefix).map_err(|err| format!("invalid subnet {text:?}: {err}"))
    }
}

impl Serialize for Subnet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Subnet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The lowest host address of `subnet` not in `used`. The lowest rather than a cursor:
/// MACs derive from addresses, so a reused address comes back with the same MAC and the
/// neighbours' ARP caches stay right.
pub fn next_free_address(subnet: &Subnet, used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    subnet.hosts().find(|ip| !used.contains(ip))
}

/// The first `/prefix` of `pool` that overlaps none of `taken`.
pub fn next_free_subnet(pool: &Subnet, prefix: u8, taken: &[Subnet]) -> Option<Subnet> {
    if prefix < pool.prefix() || prefix > 30 {
        return None;
    }
    let step = 1u64 << (32 - u32::from(prefix));
    let mut base = u64::from(u32::from(pool.network()));
    let end = u64::from(pool.last());
    while base <= end {
        let candidate = Subnet::containing(Ipv4Addr::from(base as u32), prefix);
        if !taken.iter().any(|t| t.overlaps(&candidate)) {
            return Some(candidate);
        }
        base += step;
    }
    None
}

/// Docker's MAC scheme: `02:42` and the four bytes of the address (locally administered).
pub fn mac_for(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

/// `02:42:0a:57:00:02`
pub fn mac_text(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> Subnet {
        text.parse().expect("subnet")
    }

    #[test]
    fn subnets_parse_and_refuse_host_bits() {
        let s = net("10.87.0.0/16");
        assert_eq!(s.to_string(), "10.87.0.0/16");
        assert_eq!(s.gateway(), Ok(Ipv4Addr::new(10, 87, 0, 1)));
        assert_eq!(s.broadcast(), Ipv4Addr::new(10, 87, 255, 255));
        assert!(s.contains(Ipv4Addr::new(10, 87, 3, 4)));
        assert!(!s.contains(Ipv4Addr::new(10, 88, 0, 1)));
        let err = "10.0.0.1/24".parse::<Subnet>().expect_err("host bits");
        assert!(err.contains("did you mean 10.0.0.0/24"), "{err}");
        for bad in ["10.0.0.0", "10.0.0.0/33", "x/24", "10.0.0/24", "10.0.0.0/x"] {
            assert!(bad.parse::<Subnet>().is_err(), "{bad}");
        }
        assert!(net("10.0.0.0/31").gateway().is_err());
        let json = serde_json::to_string(&s).expect("json");
        assert_eq!(json, "\"10.87.0.0/16\"");
        assert_eq!(serde_json::from_str::<Subnet>(&json).expect("back"), s);
    }

    #[test]
    fn overlap_is_symmetric_and_exact() {
        assert!(net("10.0.0.0/16").overlaps(&net("10.0.5.0/24")));
        assert!(net("10.0.5.0/24").overlaps(&net("10.0.0.0/16")));
        assert!(!net("10.0.0.0/24").overlaps(&net("10.0.1.0/24")));
        assert!(net("0.0.0.0/0").overlaps(&net("192.0.2.0/24")));
    }

    #[test]
    fn addresses_are_allocated_lowest_first_skipping_gateway() {
        let s = net("10.1.2.0/29");
        let mut used = BTreeSet::new();
        let hosts: Vec<_> = s.hosts().collect();
        assert_eq!(hosts.first(), Some(&Ipv4Addr::new(10, 1, 2, 2)));
        assert_eq!(hosts.last(), Some(&Ipv4Addr::new(10, 1, 2, 6)));
        for expected in 2..=6 {
            let ip = next_free_address(&s, &used).expect("free");
            assert_eq!(ip, Ipv4Addr::new(10, 1, 2, expected));
            used.insert(ip);
        }
        assert_eq!(next_free_address(&s, &used), None, "the /29 is full");
        used.remove(&Ipv4Addr::new(10, 1, 2, 4));
        assert_eq!(
            next_free_address(&s, &used),
            Some(Ipv4Addr::new(10, 1, 2, 4)),
            "a released address is reused"
        );
    }

    #[test]
    fn pools_hand_out_subnets_that_overlap_nothing() {
        let pool = net("10.86.0.0/16");
        let first = next_free_subnet(&pool, 24, &[]).expect("free");
        assert_eq!(first, net("10.86.0.0/24"));
        let taken = [
            net("10.86.0.0/24"),
            net("10.86.1.128/25"),
            net("10.0.0.0/8"),
        ];
        assert_eq!(next_free_subnet(&pool, 24, &taken), None, "10/8 covers it");
        let taken = [net("10.86.0.0/24"), net("10.86.1.128/25")];
        assert_eq!(
            next_free_subnet(&pool, 24, &taken),
            Some(net("10.86.2.0/24"))
        );
        assert_eq!(next_free_subnet(&net("10.86.0.0/24"), 16, &[]), None);
    }

    #[test]
    fn macs_follow_the_address() {
        let mac = mac_for(Ipv4Addr::new(10, 87, 0, 2));
        assert_eq!(mac_text(&mac), "02:42:0a:57:00:02");
    }
}
