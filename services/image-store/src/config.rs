//! The image-store's own section of `config/image-store.toml`.

use serde::Deserialize;

/// Settings of the image-store beyond the common ones.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Config {
    /// Plain-HTTP registries other than loopback ones (which are always allowed).
    #[serde(default)]
    pub insecure_registries: Vec<String>,
}
