//! The layer-unpacker's own section of `config/layer-unpacker.toml`.

use serde::Deserialize;

/// Settings of the layer-unpacker beyond the common ones.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Config {
    /// Layers unpacked at once (default: number of cores).
    #[serde(default)]
    pub parallelism: Option<usize>,
    /// `overlay` (default) or `native` (copy-based, for hosts without overlayfs).
    #[serde(default)]
    pub snapshotter: Option<String>,
}
