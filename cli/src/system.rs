//! `berth system …`

use crate::discovery::gather;
use crate::exit::Failure;
use berth_bus::{connect_once, NatsSettings};
use berth_proto::subjects::{metadata_keys, micro, service_names};
use clap::Subcommand;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

#[derive(Subcommand)]
pub enum SystemCommand {
    /// List every berth service instance on the bus.
    Info {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Disk usage: images in the store, snapshots per node, containers, reclaimable space.
    Df {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Deserialize)]
struct MicroEndpoint {
    name: String,
    subject: String,
    #[serde(default)]
    queue_group: Option<String>,
}

#[derive(Deserialize)]
struct MicroInfo {
    name: String,
    id: String,
    version: String,
    #[serde(default)]
    metadata: Option<HashMap<String, String>>,
    #[serde(default)]
    endpoints: Option<Vec<MicroEndpoint>>,
}

#[derive(Deserialize)]
struct MicroStats {
    id: String,
    started: String,
}

/// One row of `berth system info`.
#[derive(Debug, Serialize)]
pub struct ServiceInstance {
    pub name: String,
    pub id: String,
    pub version: String,
    pub node_id: Option<String>,
    pub started: Option<String>,
    pub uptime_seconds: Option<u64>,
    pub endpoints: Vec<EndpointRow>,
}

/// An endpoint of a service instance.
#[derive(Debug, Serialize)]
pub struct EndpointRow {
    pub name: String,
    pub subject: String,
    pub queue_group: Option<String>,
}

pub async fn run(
    command: SystemCommand,
    nats: &NatsSettings,
    timeout: Duration,
) -> Result<ExitCode, Failure> {
    match command {
        SystemCommand::Info { json } => info(nats, timeout, json).await,
        SystemCommand::Df { json } => crate::df::run(nats, timeout, json).await,
    }
}

async fn info(nats: &NatsSettings, timeout: Duration, json: bool) -> Result<ExitCode, Failure> {
    let connect_timeout = timeout.min(Duration::from_secs(5));
    let client = connect_once(nats, "berth-cli", connect_timeout)
        .await
        .map_err(|err| Failure::berth(err.to_string()))?;
    let quiet = Duration::from_millis(300);
    let deadline = timeout.min(Duration::from_secs(3));
    let (infos, stats) = tokio::join!(
        gather::<MicroInfo>(&client, micro::INFO_ALL, quiet, deadline),
        gather::<MicroStats>(&client, micro::STATS_ALL, quiet, deadline),
    );
    let infos = infos.map_err(Failure::berth)?;
    let started_by_id: HashMap<String, String> = stats
        .map_err(Failure::berth)?
        .into_iter()
        .map(|s| (s.id, s.started))
        .collect();
    let now = OffsetDateTime::now_utc();
    let mut instances: Vec<ServiceInstance> = infos
        .into_iter()
        .filter(|info| info.name.starts_with(service_names::PREFIX))
        .map(|info| {
            let metadata = info.metadata.unwrap_or_default();
            let started = started_by_id
                .get(&info.id)
                .cloned()
                .or_else(|| metadata.get(metadata_keys::STARTED).cloned());
            let uptime_seconds = started
                .as_deref()
                .and_then(|text| OffsetDateTime::parse(text, &Rfc3339).ok())
                .map(|at| (now - at).whole_seconds().max(0) as u64);
            ServiceInstance {
                node_id: metadata.get(metadata_keys::NODE_ID).cloned(),
                name: info.name,
                id: info.id,
                version: info.version,
                started,
                uptime_seconds,
                endpoints: info
                    .endpoints
                    .unwrap_or_default()
                    .into_iter()
                    .map(|e| EndpointRow {
                        name: e.name,
                        subject: e.subject,
                        queue_group: e.queue_group,
                    })
                    .collect(),
            }
        })
        .collect();
    instances.sort_by(|a, b| {
        service_rank(&a.name)
            .cmp(&service_rank(&b.name))
            .then_with(|| a.node_id.cmp(&b.node_id))
            .then_with(|| a.id.cmp(&b.id))
    });
    if json {
        let text = serde_json::to_string_pretty(&instances)
            .map_err(|err| Failure::berth(format!("cannot encode JSON: {err}")))?;
        outln!("{text}");
    } else {
        out!("{}", render_table(&instances));
    }
    Ok(ExitCode::SUCCESS)
}

fn service_rank(name: &str) -> usize {
    service_names::ALL
        .iter()
        .position(|known| *known == name)
        .unwrap_or(service_names::ALL.len())
}

/// `1d2h`, `3h4m`, `5m6s`, `7s`: Docker-like, two units at most.
pub fn human_duration(seconds: u64) -> String {
    let (days, hours, minutes, secs) = (
        seconds / 86_400,
        seconds % 86_400 / 3_600,
        seconds % 3_600 / 60,
        seconds % 60,
    );
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{secs}s"),
        (0, 0, _) => format!("{minutes}m{secs}s"),
        (0, _, _) => format!("{hours}h{minutes}m"),
        _ => format!("{days}d{hours}h"),
    }
}

fn render_table(instances: &[ServiceInstance]) -> String {
    let mut rows = vec![[
        "NAME".to_string(),
        "INSTANCE".to_string(),
        "VERSION".to_string(),
        "NODE".to_string(),
        "UPTIME".to_string(),
        "ENDPOINTS".to_string(),
    ]];
    for instance in instances {
        let endpoints = instance
            .endpoints
            .iter()
            .map(|e| e.name.as_str())
            .collect::<Vec<_>>()
            .join(",");
        rows.push([
            instance.name.clone(),
            instance.id.clone(),
            instance.version.clone(),
            instance.node_id.clone().unwrap_or_else(|| "-".into()),
            instance
                .uptime_seconds
                .map(human_duration)
                .unwrap_or_else(|| "-".into()),
            if endpoints.is_empty() {
                "-".into()
            } else {
                endpoints
            },
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|col| rows.iter().map(|row| row[col].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_docker() {
        assert_eq!(human_duration(7), "7s");
        assert_eq!(human_duration(65), "1m5s");
        assert_eq!(human_duration(3_660), "1h1m");
        assert_eq!(human_duration(90_000), "1d1h");
    }

    #[test]
    fn table_has_a_header_and_a_row_per_instance() {
        let table = render_table(&[ServiceInstance {
            name: "berth-executor".into(),
            id: "abc".into(),
            version: "0.1.0".into(),
            node_id: Some("n1".into()),
            started: None,
            uptime_seconds: Some(5),
            endpoints: vec![EndpointRow {
                name: "list".into(),
                subject: "berth.v1.exec.n1.list".into(),
                queue_group: None,
            }],
        }]);
        let lines: Vec<_> = table.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("NAME"));
        assert!(
            lines[1].contains("berth-executor")
                && lines[1].contains("n1")
                && lines[1].contains("list")
        );
    }
}
