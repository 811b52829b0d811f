//! Connecting to NATS: services retry forever and reconnect by themselves; the CLI fails
//! fast with a message that names the URL.

use async_nats::{Client, ConnectOptions, Event};
use std::path::PathBuf;
use std::time::Duration;

/// Where and how to reach NATS (`--nats-url`, `--nats-creds`, `--nats-user`/`--nats-password`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsSettings {
    /// One URL or a comma-separated list of cluster seeds.
    pub url: String,
    pub creds: Option<PathBuf>,
    pub user: Option<String>,
    pub password: Option<String>,
}

/// Default NATS URL of DESIGN.md.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

impl Default for NatsSettings {
    fn default() -> Self {
        NatsSettings {
            url: DEFAULT_NATS_URL.to_string(),
            creds: None,
            user: None,
            password: None,
        }
    }
}

/// NATS could not be reached or refused us; the text names the URL.
#[derive(Debug, thiserror::Error)]
pub enum ConnectFailure {
    #[error("cannot read NATS credentials file {path}: {source}")]
    Credentials {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot connect to NATS at {url}: {reason}")]
    Unreachable { url: String, reason: String },
}

/// Delay before connect attempt `attempt` (async-nats counts from 1, and asks before
/// the very first attempt too — so attempt 1 must be immediate, or every CLI call and
/// service start pays the delay). Then quick, so that a restarted nats-server is found
/// again within a second or two, and capped so a long outage is not a busy loop.
pub fn reconnect_delay(attempt: usize) -> Duration {
    if attempt <= 1 {
        return Duration::ZERO;
    }
    let millis = 50u64.saturating_mul(1u64 << (attempt - 2).min(5));
    Duration::from_millis(millis.min(1_000))
}

async fn base_options(
    settings: &NatsSettings,
    name: &str,
) -> Result<ConnectOptions, ConnectFailure> {
    let mut options = ConnectOptions::new()
        .name(name)
        .reconnect_delay_callback(reconnect_delay);
    if let Some(path) = &settings.creds {
        options =
            options
                .credentials_file(path)
                .await
                .map_err(|source| ConnectFailure::Credentials {
                    path: path.clone(),
                    source,
                })?;
    }
    if let (Some(user), Some(password)) = (&settings.user, &settings.password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    Ok(options)
}

fn server_list(url: &str) -> Vec<String> {
    url.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Connects a long-running service: the first connect is retried until it works, every
/// later disconnect is followed by reconnects forever, and connection changes are logged.
pub async fn connect_service(
    settings: &NatsSettings,
    name: &str,
) -> Result<Client, ConnectFailure> {
    let url = settings.url.clone();
    let options = base_options(settings, name)
        .await?
        .retry_on_initial_connect()
        .max_reconnects(None)
        .event_callback(move |event| {
            let url = url.clone();
            async move {
                match event {
                    Event::Connected => tracing::info!(nats = %url, "connected to NATS"),
                    Event::Disconnected => {
                        tracing::warn!(nats = %url, "disconnected from NATS; reconnecting")
                    }
                    other => tracing::debug!(nats = %url, event = %other, "NATS connection event"),
                }
            }
        });
    let servers = server_list(&settings.url);
    options
        .connect(servers.as_slice())
        .await
        .map_err(|err| ConnectFailure::Unreachable {
            url: settings.url.clone(),
            reason: err.to_string(),
        })
}

/// Connects once for a short-lived client (the CLI): no retries, bounded by `timeout`.
pub async fn connect_once(
    settings: &NatsSettings,
    name: &str,
    timeout: Duration,
) -> Result<Client, ConnectFailure> {
    let options = base_options(settings, name)
        .await?
        .connection_timeout(timeout)
        .max_reconnects(Some(3));
    let servers = server_list(&settings.url);
    let unreachable = |reason: String| ConnectFailure::Unreachable {
        url: settings.url.clone(),
        reason,
    };
    match tokio::time::timeout(timeout, options.connect(servers.as_slice())).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(err)) => Err(unreachable(err.to_string())),
        Err(_) => Err(unreachable(format!("no answer within {timeout:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delay_starts_small_and_is_capped() {
        assert_eq!(reconnect_delay(0), Duration::ZERO);
        assert_eq!(
            reconnect_delay(1),
            Duration::ZERO,
            "the first connect is immediate"
        );
        assert_eq!(reconnect_delay(2), Duration::from_millis(50));
        assert!(reconnect_delay(4) <= Duration::from_millis(400));
        assert_eq!(reconnect_delay(1_000), Duration::from_secs(1));
    }

    #[test]
    fn server_list_splits_cluster_seeds() {
        assert_eq!(
            server_list("nats://a:4222, nats://b:4222,"),
            vec!["nats://a:4222".to_string(), "nats://b:4222".to_string()]
        );
    }
}
