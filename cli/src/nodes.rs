//! `berth node ls|inspect|drain|activate`: the node registry, through the scheduler.

use crate::containers::{failure, sched_call, Target};
use crate::exit::Failure;
use berth_bus::NatsSettings;
use berth_proto::messages::node::{NodeList, NodeListRequest, NodeRecord};
use berth_proto::messages::sched::{NodeDetail, NodeRef};
use berth_proto::subjects::SchedVerb;
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Subcommand, Debug)]
pub enum NodeCommand {
    /// Every node: state, containers, CPU and memory allocated/capacity, labels, last seen.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// One node's record and the containers reserved on it, as JSON.
    Inspect { node: String },
    /// Take no new placements; containers with a restart policy move to other nodes.
    Drain { node: String },
    /// Take placements again.
    Activate { node: String },
}

fn cores(millis: u64) -> String {
    format!("{:.1}", millis as f64 / 1000.0)
}

fn gib(bytes: u64) -> String {
    format!("{:.1}G", bytes as f64 / (1u64 << 30) as f64)
}

/// `3s ago` from a heartbeat time.
fn seen(last_ms: u64, now_ms: u64) -> String {
    if last_ms == 0 {
        return "never".to_string();
    }
    let secs = now_ms.saturating_sub(last_ms) / 1000;
    match secs {
        0..=119 => format!("{secs}s ago"),
        120..=7199 => format!("{}m ago", secs / 60),
        _ => format!("{}h ago", secs / 3600),
    }
}

fn row(node: &NodeRecord, now_ms: u64) -> String {
    let labels: Vec<String> = node
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    format!(
        "{:<20}  {:<9}  {:<10}  {:<11}  {:<13}  {:<24}  {}",
        node.node_id,
        format!("{:?}", node.state).to_lowercase(),
        node.containers,
        format!(
            "{}/{}",
            cores(node.allocated.cpu_millis),
            cores(node.capacity.cpu_millis)
        ),
        format!(
            "{}/{}",
            gib(node.allocated.memory_bytes),
            gib(node.capacity.memory_bytes)
        ),
        if labels.is_empty() {
            "-".to_string()
        } else {
            labels.join(",")
        },
        seen(node.last_heartbeat_ms, now_ms)
    )
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<ExitCode, Failure> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|err| Failure::berth(format!("cannot encode: {err}")))?;
    outln!("{text}");
    Ok(ExitCode::SUCCESS)
}

pub async fn run(
    command: NodeCommand,
    nats: &NatsSettings,
    timeout: Duration,
) -> Result<ExitCode, Failure> {
    let client = Target::client(nats, timeout).await?;
    let one = |verb: SchedVerb, node: String| {
        let client = client.clone();
        async move {
            sched_call::<_, NodeDetail>(&client, verb, &NodeRef { node_id: node }, timeout)
                .await
                .map_err(failure)
        }
    };
    match command {
        NodeCommand::Ls { json } => {
            let list: NodeList = sched_call(
                &client,
                SchedVerb::Nodes,
                &NodeListRequest::default(),
                timeout,
            )
            .await
            .map_err(failure)?;
            if json {
                return print_json(&list.nodes);
            }
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            outln!(
                "{:<20}  {:<9}  {:<10}  {:<11}  {:<13}  {:<24}  LAST SEEN",
                "ID",
                "STATE",
                "CONTAINERS",
                "CPU",
                "MEMORY",
                "LABELS"
            );
            for node in &list.nodes {
                outln!("{}", row(node, now_ms));
            }
            Ok(ExitCode::SUCCESS)
        }
        NodeCommand::Inspect { node } => print_json(&one(SchedVerb::NodeInspect, node).await?),
        NodeCommand::Drain { node } => {
            one(SchedVerb::Drain, node.clone()).await?;
            outln!("{node}");
            Ok(ExitCode::SUCCESS)
        }
        NodeCommand::Activate { node } => {
            one(SchedVerb::Activate, node.clone()).await?;
            outln!("{node}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_seen_reads_naturally() {
        assert_eq!(seen(0, 5_000), "never");
        assert_eq!(seen(1_000, 4_500), "3s ago");
        assert_eq!(seen(1, 600_001), "10m ago");
    }
}
