//! `[network]` of `config/executor.toml`, overridden by `BERTH_*` environment variables
//! and the executor's flags. Several executors on one host need distinct values.

use super::subnet::Subnet;
use serde::Deserialize;

/// Longest Linux interface name (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;

/// Networking settings of one executor.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// Linux bridge of the default `bridge` network.
    pub bridge: String,
    /// Subnet of the default network; the bridge gets its first address.
    pub subnet: String,
    /// User networks created without `--subnet` get a free `/pool_prefix` from here.
    pub pool: String,
    pub pool_prefix: u8,
    /// berth's own nftables table (family `ip`); nothing else is ever touched. Its name
    /// also tags berth's interfaces (as their alias), so cleanup finds exactly its own.
    pub nft_table: String,
    /// Turn on `net.ipv4.ip_forward` when the first bridge comes up (outbound NAT needs
    /// forwarding on the uplink too). `false`: only berth's own bridges get
    /// `forwarding=1`; the host's other interfaces are left as they are.
    pub ip_forward: bool,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            bridge: "berth0".into(),
            subnet: "10.87.0.0/16".into(),
            pool: "10.86.0.0/16".into(),
            pool_prefix: 24,
            nft_table: "berth".into(),
            ip_forward: true,
        }
    }
}

/// Flags (and their environment variables) that override the file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct NetworkArgs {
    /// Bridge of the default network.
    #[arg(long, env = "BERTH_BRIDGE")]
    pub bridge: Option<String>,
    /// Subnet of the default network (CIDR).
    #[arg(long, env = "BERTH_BRIDGE_SUBNET")]
    pub bridge_subnet: Option<String>,
    /// Pool of user network subnets (CIDR).
    #[arg(long, env = "BERTH_NETWORK_POOL")]
    pub network_pool: Option<String>,
    /// berth's nftables table.
    #[arg(long, env = "BERTH_NFT_TABLE")]
    pub nft_table: Option<String>,
    /// Enable net.ipv4.ip_forward when a bridge comes up (true/false).
    #[arg(long, env = "BERTH_IP_FORWARD")]
    pub ip_forward: Option<bool>,
}

/// The checked form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub bridge: String,
    pub subnet: Subnet,
    pub pool: Subnet,
    pub pool_prefix: u8,
    pub nft_table: String,
    pub ip_forward: bool,
}

impl NetworkConfig {
    /// Flags and environment on top of the file.
    pub fn apply(&mut self, args: &NetworkArgs) {
        if let Some(v) = &args.bridge {
            self.bridge = v.clone();
        }
        if let Some(v) = &args.bridge_subnet {
            self.subnet = v.clone();
        }
        if let Some(v) = &args.network_pool {
            self.pool = v.clone();
        }
        if let Some(v) = &args.nft_table {
            self.nft_table = v.clone();
        }
        if let Some(v) = args.ip_forward {
            self.ip_forward = v;
        }
    }

    /// Every value checked, errors naming the setting.
    pub fn check(&self) -> Result<Checked, String> {
        check_ifname("network.bridge", &self.bridge)?;
        let subnet: Subnet = self
            .subnet
            .parse()
            .map_err(|err| format!("network.subnet: {err}"))?;
        subnet
            .gateway()
            .map_err(|err| format!("network.subnet: {err}"))?;
        let pool: Subnet = self
            .pool
            .parse()
            .map_err(|err| format!("network.pool: {err}"))?;
        if self.pool_prefix < pool.prefix() || self.pool_prefix > 30 {
            return Err(format!(
                "network.pool_prefix /{} must lie between the pool's /{} and /30",
                self.pool_prefix,
                pool.prefix()
            ));
        }
        let table_ok = !self.nft_table.is_empty()
            && self.nft_table.len() <= 64
            && self
                .nft_table
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
            && self
                .nft_table
                .starts_with(|c: char| c.is_ascii_alphabetic());
        if !table_ok {
            return Err(format!(
                "network.nft_table {:?}: use letters, digits and _ (a letter first)",
                self.nft_table
            ));
        }
        Ok(Checked {
            bridge: self.bridge.clone(),
            subnet,
            pool,
            pool_prefix: self.pool_prefix,
            nft_table: self.nft_table.clone(),
            ip_forward: self.ip_forward,
        })
    }
}

/// A Linux interface name: 1 to 15 bytes, no `/`, whitespace or `:`.
pub fn check_ifname(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > MAX_IFNAME
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || !c.is_ascii_graphic())
    {
        return Err(format!(
            "{what} {name:?} is not a valid interface name (1 to {MAX_IFNAME} characters, no '/', ':' or spaces)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_check_and_overrides_apply() {
        let mut config = NetworkConfig::default();
        let checked = config.check().expect("defaults are valid");
        assert_eq!(checked.subnet.to_string(), "10.87.0.0/16");
        config.apply(&NetworkArgs {
            bridge: Some("bt7".into()),
            bridge_subnet: Some("10.201.7.0/24".into()),
            nft_table: Some("berth_t7".into()),
            ip_forward: Some(false),
            ..Default::default()
        });
        let checked = config.check().expect("valid");
        assert_eq!(checked.bridge, "bt7");
        assert_eq!(checked.nft_table, "berth_t7");
        assert!(!checked.ip_forward);
    }

    #[test]
    fn bad_values_name_the_setting() {
        let bad = |f: &dyn Fn(&mut NetworkConfig)| {
            let mut c = NetworkConfig::default();
            f(&mut c);
            c.check().expect_err("invalid")
        };
        assert!(bad(&|c| c.bridge = "a-very-long-bridge-name".into()).contains("network.bridge"));
        assert!(bad(&|c| c.bridge = "a/b".into()).contains("network.bridge"));
        assert!(bad(&|c| c.subnet = "10.0.0.1/24".into()).contains("network.subnet"));
        assert!(bad(&|c| c.subnet = "10.0.0.0/31".into()).contains("network.subnet"));
        assert!(bad(&|c| c.pool_prefix = 8).contains("pool_prefix"));
        assert!(bad(&|c| c.nft_table = "x; flush ruleset".into()).contains("nft_table"));
    }
}
