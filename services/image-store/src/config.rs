//! The image-store's own section of `config/image-store.toml`.

use serde::Deserialize;
use std::collections::BTreeMap;

/// A login for one registry in berth's own config (`[credentials."HOST[:PORT]"]`).
#[derive(Clone, Default, Deserialize)]
pub struct RegistryLogin {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RegistryLogin {
    // Never print secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RegistryLogin({}, ***)", self.username)
    }
}

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
    /// Registry logins by host (`registry.example.com`, `127.0.0.1:5000`); they win
    /// over `~/.docker/config.json` for the same host.
    #[serde(default)]
    pub credentials: BTreeMap<String, RegistryLogin>,
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
        assert!(config.credentials.is_empty());
    }

    #[test]
    fn credentials_by_host_parse_and_never_print_the_password() {
        let config: Config = berth_bus::settings::parse_config(
            "[credentials.\"127.0.0.1:5000\"]\nusername = \"berth\"\npassword = \"s3cret\"\n",
            std::path::Path::new("x.toml"),
        )
        .expect("parses");
        let login = &config.credentials["127.0.0.1:5000"];
        assert_eq!(
            (login.username.as_str(), login.password.as_str()),
            ("berth", "s3cret")
        );
        assert!(!format!("{config:?}").contains("s3cret"));
    }
}
