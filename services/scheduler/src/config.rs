//! The scheduler's own section of `config/scheduler.toml`.

use crate::placement::Strategy;
use serde::Deserialize;
use std::time::Duration;

/// Settings of the scheduler beyond the common ones.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Config {
    /// Milliseconds without a heartbeat after which a node counts as lost (default 10000).
    #[serde(default)]
    pub node_lost_after_ms: Option<u64>,
    /// `spread` (default) or `binpack`: how nodes with the same image locality are ranked.
    #[serde(default)]
    pub strategy: Strategy,
    /// How long a `run` that fits no node waits, pending, unless it says (default 300000).
    #[serde(default)]
    pub pending_timeout_ms: Option<u64>,
    /// Milliseconds between reconcile passes (default 1000).
    #[serde(default)]
    pub reconcile_interval_ms: Option<u64>,
    /// A container left `scheduled` (or `created` but meant to run) this long in
    /// milliseconds — its dispatcher died — is dispatched again (default 30000).
    #[serde(default)]
    pub redispatch_after_ms: Option<u64>,
}

impl Config {
    /// How long a node may stay silent before it is lost.
    pub fn node_lost_after(&self) -> Duration {
        Duration::from_millis(self.node_lost_after_ms.unwrap_or(10_000))
    }

    /// Default bound on waiting for room.
    pub fn pending_timeout(&self) -> Duration {
        Duration::from_millis(self.pending_timeout_ms.unwrap_or(300_000))
    }

    /// When a stuck dispatch is sent again.
    pub fn redispatch_after(&self) -> Duration {
        Duration::from_millis(self.redispatch_after_ms.unwrap_or(30_000))
    }

    /// Period of the reconcile loop, never below 100 ms.
    pub fn reconcile_interval(&self) -> Duration {
        Duration::from_millis(self.reconcile_interval_ms.unwrap_or(1_000).max(100))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_config_file_parses() {
        let text = include_str!("../../../config/scheduler.toml");
        let path = std::path::Path::new("config/scheduler.toml");
        let config: Config =
            berth_bus::settings::parse_config(text, path).expect("shipped config parses");
        assert_eq!(config.node_lost_after(), Duration::from_secs(10));
        assert_eq!(config.strategy, Strategy::Spread);
        assert_eq!(config.pending_timeout(), Duration::from_secs(300));
    }

    #[test]
    fn binpack_is_spelled_in_lowercase() {
        let config: Config = berth_bus::settings::parse_config(
            "strategy = \"binpack\"\n",
            std::path::Path::new("x.toml"),
        )
        .expect("parses");
        assert_eq!(config.strategy, Strategy::Binpack);
    }
}
