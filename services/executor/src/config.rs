//! The executor's own section of `config/executor.toml`.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Settings of the executor beyond the common ones.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Config {
    /// Node labels used by placement constraints (`zone = "a"`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Milliseconds between node record updates (default 1000).
    #[serde(default)]
    pub heartbeat_ms: Option<u64>,
    /// The `berth-monitor` binary (default: beside the executor's own binary).
    #[serde(default)]
    pub monitor_binary: Option<std::path::PathBuf>,
    /// Container logs go to `<log_dir>/<id>/` instead of the container's directory
    /// (a disk of their own, so a flood of output cannot fill the node's data disk).
    #[serde(default)]
    pub log_dir: Option<std::path::PathBuf>,
    /// Architecture the node reports (OCI name: amd64, arm64…) instead of the host's,
    /// for test fleets that pretend to be other machines on one host.
    #[serde(default)]
    pub arch: Option<String>,
    /// What the node offers the scheduler instead of the whole host (`[capacity]`).
    #[serde(default)]
    pub capacity: CapacityOverride,
    /// Bridge, subnets, nftables table (`[network]`).
    #[serde(default)]
    pub network: crate::network::config::NetworkConfig,
}

/// `[capacity]`: cpus, memory_bytes, pids; each defaults to the host's.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CapacityOverride {
    #[serde(default)]
    pub cpus: Option<f64>,
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    #[serde(default)]
    pub pids: Option<u64>,
}

impl Config {
    /// Heartbeat period, never below 100 ms so a typo cannot flood the bus.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms.unwrap_or(1_000).max(100))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_config_file_parses() {
        let text = include_str!("../../../config/executor.toml");
        let path = std::path::Path::new("config/executor.toml");
        let config: Config =
            berth_bus::settings::parse_config(text, path).expect("shipped config parses");
        assert_eq!(config.heartbeat_interval(), Duration::from_secs(1));
    }
}
