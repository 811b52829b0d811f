//! The settings every berth binary shares: flags beat environment, environment beats the
//! config file, the config file beats built-in defaults (DESIGN.md, "Conventions").

use crate::connect::{NatsSettings, DEFAULT_NATS_URL};
use crate::telemetry::LogFormat;
use anyhow::Context;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Default data dir of node services.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/berth";

/// Flags (with their environment variables) common to every service.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CommonArgs {
    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "BERTH_NATS_URL")]
    pub nats_url: Option<String>,
    /// NATS credentials file.
    #[arg(long, env = "BERTH_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// NATS user (with --nats-password).
    #[arg(long, env = "BERTH_NATS_USER")]
    pub nats_user: Option<String>,
    /// NATS password (with --nats-user).
    #[arg(long, env = "BERTH_NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,
    /// Config file (default: config/<service>.toml if present).
    #[arg(long, env = "BERTH_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory of node services.
    #[arg(long, env = "BERTH_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Node id (default: hostname).
    #[arg(long, env = "BERTH_NODE_ID")]
    pub node_id: Option<String>,
    /// Log format: text or json.
    #[arg(long, env = "BERTH_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
}

#[derive(Debug, Default, Deserialize)]
struct NatsFile {
    url: Option<String>,
    creds: Option<PathBuf>,
    user: Option<String>,
    password: Option<String>,
}

#[derive(Debug, Deserialize)]
struct FileConfig<T> {
    #[serde(default)]
    nats: NatsFile,
    data_dir: Option<PathBuf>,
    node_id: Option<String>,
    log_format: Option<LogFormat>,
    #[serde(flatten)]
    service: T,
}

/// Settings after merging flags, environment, file and defaults.
#[derive(Debug, Clone)]
pub struct Settings<T> {
    pub nats: NatsSettings,
    pub data_dir: PathBuf,
    pub node_id: String,
    pub log_format: LogFormat,
    /// The service's own section of the config file (defaults when there is no file).
    pub service: T,
    /// The config file that was read, if any.
    pub config_path: Option<PathBuf>,
}

/// Reads the config file (explicit, or `config/<service_dir>.toml` when present) and merges.
pub fn resolve<T>(args: CommonArgs, service_dir: &str) -> anyhow::Result<Settings<T>>
where
    T: DeserializeOwned + Default,
{
    let (file, config_path) = match &args.config {
        Some(path) => (Some(read_file::<T>(path)?), Some(path.clone())),
        None => {
            let default_path = PathBuf::from(format!("config/{service_dir}.toml"));
            if default_path.is_file() {
                (Some(read_file::<T>(&default_path)?), Some(default_path))
            } else {
                (None, None)
            }
        }
    };
    merge(args, file, config_path)
}

/// Parses a config file's text; exposed for tests of the shipped config files.
pub fn parse_config<T: DeserializeOwned>(text: &str, path: &Path) -> anyhow::Result<T> {
    let file: FileConfig<T> =
        toml::from_str(text).with_context(|| format!("invalid config file {}", path.display()))?;
    Ok(file.service)
}

fn read_file<T: DeserializeOwned>(path: &Path) -> anyhow::Result<FileConfig<T>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}

fn merge<T: Default>(
    args: CommonArgs,
    file: Option<FileConfig<T>>,
    config_path: Option<PathBuf>,
) -> anyhow::Result<Settings<T>> {
    let (nats_file, file_data_dir, file_node_id, file_log_format, service) = match file {
        Some(f) => (f.nats, f.data_dir, f.node_id, f.log_format, f.service),
        None => (NatsFile::default(), None, None, None, T::default()),
    };
    let node_id = match args.node_id.or(file_node_id) {
        Some(id) => id,
        None => hostname::get()
            .context("cannot read the hostname for the default node id")?
            .to_string_lossy()
            .into_owned(),
    };
    berth_proto::subjects::check_token("node id", &node_id).map_err(anyhow::Error::msg)?;
    Ok(Settings {
        nats: NatsSettings {
            url: args
                .nats_url
                .or(nats_file.url)
                .unwrap_or_else(|| DEFAULT_NATS_URL.to_string()),
            creds: args.nats_creds.or(nats_file.creds),
            user: args.nats_user.or(nats_file.user),
            password: args.nats_password.or(nats_file.password),
        },
        data_dir: args
            .data_dir
            .or(file_data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
        node_id,
        log_format: args.log_format.or(file_log_format).unwrap_or_default(),
        service,
        config_path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    struct Own {
        #[serde(default)]
        parallelism: Option<u32>,
    }

    fn file(text: &str) -> FileConfig<Own> {
        toml::from_str(text).expect("test config parses")
    }

    #[test]
    fn flags_beat_file_and_file_beats_defaults() {
        let args = CommonArgs {
            nats_url: Some("nats://flag:1".into()),
            node_id: Some("n-flag".into()),
            ..Default::default()
        };
        let config = file(
            "data_dir = '/srv/berth'\nnode_id = 'n-file'\nparallelism = 3\n[nats]\nurl = 'nats://file:2'\nuser = 'u'\n",
        );
        let settings = merge(args, Some(config), None).expect("merges");
        assert_eq!(settings.nats.url, "nats://flag:1");
        assert_eq!(settings.nats.user.as_deref(), Some("u"));
        assert_eq!(settings.node_id, "n-flag");
        assert_eq!(settings.data_dir, PathBuf::from("/srv/berth"));
        assert_eq!(settings.service.parallelism, Some(3));
    }

    #[test]
    fn defaults_apply_without_file() {
        let args = CommonArgs {
            node_id: Some("n1".into()),
            ..Default::default()
        };
        let settings = merge::<Own>(args, None, None).expect("merges");
        assert_eq!(settings.nats.url, DEFAULT_NATS_URL);
        assert_eq!(settings.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(settings.log_format, LogFormat::Text);
    }

    #[test]
    fn a_node_id_that_cannot_be_a_subject_token_is_refused() {
        let args = CommonArgs {
            node_id: Some("bad.node".into()),
            ..Default::default()
        };
        let err = merge::<Own>(args, None, None).expect_err("dot in node id");
        assert!(err.to_string().contains("bad.node"), "{err}");
    }

    #[test]
    fn a_missing_explicit_config_file_is_an_error() {
        let args = CommonArgs {
            config: Some(PathBuf::from("/nonexistent/berth.toml")),
            ..Default::default()
        };
        let err = resolve::<Own>(args, "executor").expect_err("missing file");
        assert!(format!("{err:#}").contains("/nonexistent/berth.toml"));
    }
}
