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
