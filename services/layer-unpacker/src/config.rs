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
    /// Largest uncompressed layer accepted, in bytes (decompression bombs stop here).
    #[serde(default)]
    pub max_layer_bytes: Option<u64>,
    /// Most tar entries accepted in one layer.
    #[serde(default)]
    pub max_layer_entries: Option<u64>,
}

/// How layers are kept on the node's disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Snapshotter {
    /// Each layer its own snapshot, stacked by overlayfs (the default).
    Overlay,
    /// Layers applied into one tree per image, for hosts without overlayfs.
    Native,
}

impl Config {
    /// The configured snapshotter; an unknown name is an error, not a silent default.
    pub fn snapshotter(&self) -> Result<Snapshotter, String> {
        match self.snapshotter.as_deref() {
            None | Some("overlay") => Ok(Snapshotter::Overlay),
            Some("native") => Ok(Snapshotter::Native),
            Some(other) => Err(format!(
                "unknown snapshotter {other:?} in the layer-unpacker config (expected \"overlay\" or \"native\")"
            )),
        }
    }

    /// Layers unpacked at once: the configured number, else one per core.
    pub fn parallelism(&self) -> usize {
        self.parallelism
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1)
    }

    /// Unpack limits: the library's defaults, overridden by the config file.
    pub fn limits(&self) -> crate::snapshot::Limits {
        let mut limits = crate::snapshot::Limits::default();
        if let Some(bytes) = self.max_layer_bytes {
            limits.max_uncompressed_bytes = bytes;
        }
        if let Some(entries) = self.max_layer_entries {
            limits.max_entries = entries;
        }
        limits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_config_file_parses() {
        let text = include_str!("../../../config/layer-unpacker.toml");
        let path = std::path::Path::new("config/layer-unpacker.toml");
        let config: Config =
            berth_bus::settings::parse_config(text, path).expect("shipped config parses");
        assert_eq!(config.parallelism, None);
    }
}
