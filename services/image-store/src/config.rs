//! The image-store's own section of `config/image-store.toml`.

use serde::Deserialize;

/// Settings of the image-store beyond the common ones.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Config {
    /// Plain-HTTP registries other than loopback ones (which are always allowed).
    #[serde(default)]
    pub insecure_registries: Vec<String>,
    /// Seconds after which a blob pin of an import that never committed (its
    /// image-store died) is dropped by `prune` (default 3600). Long enough that a slow
    /// import in flight is never mistaken for a dead one.
    #[serde(default)]
    pub pin_grace_seconds: Option<u64>,
    /// Seconds after which a blob writer that stopped renewing its claim (its
    /// image-store died mid-write) is presumed dead, so another may write the blob
    /// (default 30; claims are renewed every third of it).
    #[serde(default)]
    pub writer_grace_seconds: Option<u64>,
    /// Blobs bigger than this many bytes are pushed in chunks (default 64 MiB).
    #[serde(default)]
    pub push_monolithic_limit: Option<u64>,
    /// Bytes per PATCH of a chunked push (default 16 MiB; each is held in memory).
    #[serde(default)]
    pub push_chunk_size: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_config_file_parses() {
        let text = include_str!("../../../config/image-store.toml");
        let path = std::path::Path::new("config/image-store.toml");
        let config: Config =
            berth_bus::settings::parse_config(text, path).expect("shipped config parses");
        assert!(config.insecure_registries.is_empty());
    }
}
