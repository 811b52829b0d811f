//! The scheduler's own section of `config/scheduler.toml`.

use serde::Deserialize;
use std::time::Duration;

/// Settings of the scheduler beyond the common ones.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Config {
    /// Milliseconds without a heartbeat after which a node counts as lost (default 10000).
    #[serde(default)]
    pub node_lost_after_ms: Option<u64>,
}

impl Config {
    /// How long a node may stay silent before it is lost.
    pub fn node_lost_after(&self) -> Duration {
        Duration::from_millis(self.node_lost_after_ms.unwrap_or(10_000))
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
    }
}
