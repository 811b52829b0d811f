//! `ps`: the containers of every live node, plus pending and lost ones from the scheduler.

use super::*;
use berth_proto::messages::exec::ContainerSummary;

#[derive(clap::Args, Debug)]
pub struct PsArgs {
    #[command(flatten)]
    pub(super) node: NodeArg,
    /// Show all containers, not only running ones.
    #[arg(short = 'a', long)]
    pub(super) all: bool,
    /// Only ids.
    #[arg(short = 'q', long)]
    pub(super) quiet: bool,
    #[arg(long)]
    pub(super) json: bool,
    /// label=KEY[=VALUE], status=STATUS, name=NAME, id=ID, exited=CODE, ancestor=IMAGE
    /// (repeatable: the same key ORs, different keys AND, as Docker).
    #[arg(short = 'f', long = "filter")]
    pub(super) filters: Vec<String>,
}

/// Parsed `--filter`s: key → accepted values.
#[derive(Debug, Default)]
pub struct PsFilter {
    by_key: std::collections::BTreeMap<String, Vec<String>>,
}

impl PsFilter {
    /// Parses `key=value` filters; an unknown key or status is an error.
    pub fn parse(filters: &[String]) -> Result<PsFilter, String> {
        let mut out = PsFilter::default();
        for filter in filters {
            let (key, value) = filter
                .split_once('=')
                .ok_or_else(|| format!("invalid filter {filter:?}: use key=value"))?;
            match key {
                "label" | "name" | "id" | "ancestor" => {}
                "status" => {
                    const KNOWN: [&str; 6] =
                        ["created", "running", "paused", "restarting", "exited", "dead"];
                    if !KNOWN.contains(&value) {
                        return Err(format!(
                            "invalid filter {filter:?}: status is one of {}",
                            KNOWN.join(", ")
                        ));
                    }
                }
                "exited" => {
                    value
                        .parse::<i32>()
                        .map_err(|_| format!("invalid filter {filter:?}: not an exit code"))?;
                }
                other => return Err(format!("invalid filter {other:?}: berth knows label, status, name, id, exited, ancestor")),
            }
            out.by_key
                .entry(key.to_string())
                .or_default()
                .push(value.to_string());
        }
        Ok(out)
    }

    /// A status filter shows stopped containers without `-a` (Docker's behaviour).
    pub fn wants_all(&self) -> bool {
        self.by_key.contains_key("status") || self.by_key.contains_key("exited")
    }

    /// The container passes every key (and one value of each).
    pub fn matches(&self, c: &ContainerSummary) -> bool {
        self.by_key.iter().all(|(key, values)| {
            values.iter().any(|v| match key.as_str() {
                "label" => match v.split_once('=') {
                    Some((k, want)) => c.labels.get(k).is_some_and(|have| have == want),
                    None => c.labels.contains_key(v.as_str()),
                },
                "status" => c.status.as_str() == v,
                "name" => c.name.contains(v.as_str()),
                "id" => c.id.starts_with(v.as_str()),
                "ancestor" => c.image == *v || c.image.split(':').next() == Some(v.as_str()),
                "exited" => {
                    c.status == berth_proto::messages::exec::ContainerStatus::Exited
                        && c.exit_code.map(|code| code.to_string()).as_deref() == Some(v.as_str())
                }
                _ => false,
            })
        })
    }
}

/// One `ps` row: a container as its node lists it, or a scheduler record that runs on no
/// node now (`pending`, `lost`).
#[derive(Debug, Clone, serde::Serialize)]
struct Row {
    #[serde(flatten)]
    summary: ContainerSummary,
    /// The scheduler's phase when the row comes from its record alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    phase: Option<String>,
}

/// The nodes to list: the scheduler's live nodes, else every executor that answers.
async fn live_nodes(
    client: &async_nats::Client,
    timeout: Duration,
) -> Result<Vec<String>, Failure> {
    use berth_proto::messages::node::{NodeList, NodeListRequest, NodeState};
    let listed: Result<NodeList, BusError> = sched_call(
        client,
        SchedVerb::Nodes,
        &NodeListRequest::default(),
        timeout,
    )
    .await;
    match listed {
        Ok(list) if !list.nodes.is_empty() => Ok(list
            .nodes
            .into_iter()
            .filter(|n| n.state != NodeState::Lost)
            .map(|n| n.node_id)
            .collect()),
        _ => crate::discovery::service_nodes(
            client,
            service_names::EXECUTOR,
            timeout.min(Duration::from_secs(5)),
        )
        .await
        .map_err(Failure::berth),
    }
}

pub(super) async fn ps(
    args: PsArgs,
    nats: &NatsSettings,
    timeout: Duration,
) -> Result<ExitCode, Failure> {
    use berth_proto::messages::sched::{ContainerPhase, SchedList, SchedListRequest};
    let filter = PsFilter::parse(&args.filters).map_err(Failure::berth)?;
    let client = Target::client(nats, timeout).await?;
    let nodes = match &args.node.node {
        Some(node) => vec![node.clone()],
        None => live_nodes(&client, timeout).await?,
    };
    let all = args.all || filter.wants_all();
    // The scheduler's records first: a container removed while its node was lost is
    // listed as removed until it is gone from that node too, so asking the nodes after
    // never shows it.
    let records: Option<SchedList> = match args.node.node {
        Some(_) => None,
        None => sched_call(
            &client,
            SchedVerb::List,
            &SchedListRequest::default(),
            timeout,
        )
        .await
        .ok(),
    };
    let lists = futures::future::join_all(nodes.iter().map(|node| {
        let target = Target {
            client: client.clone(),
            node: node.clone(),
            timeout,
        };
        async move {
            let list: Result<ContainerList, BusError> = target
                .call(ExecVerb::List, &ContainerListRequest { all }, None)
                .await;
            (target.node, list)
        }
    }))
    .await;
    let mut rows: Vec<Row> = Vec::new();
    for (node, list) in lists {
        match list {
            Ok(list) => rows.extend(list.containers.into_iter().map(|summary| Row {
                summary,
                phase: None,
            })),
            Err(err) if err.kind() == Some(ErrorKind::NotFound) => {}
            Err(err) => eprintln!("berth: node {node}: {}", failure(err).message),
        }
    }
    rows.retain(|r| filter.matches(&r.summary));
    // Records that run nowhere now: waiting for room, or lost with their node.
    if let Some(records) = records {
        rows.retain(|r| !records.removed.contains(&r.summary.id));
        for record in records.containers {
            let shown = matches!(
                record.observed.phase,
                ContainerPhase::Pending | ContainerPhase::Lost
            );
            if !shown || !args.filters.is_empty() || rows.iter().any(|r| r.summary.id == record.id)
            {
                continue;
            }
            let created = time::OffsetDateTime::from_unix_timestamp_nanos(
                i128::from(record.created_ms) * 1_000_000,
            )
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
            let create = &record.desired.create;
            let mut command = create.entrypoint.clone().unwrap_or_default();
            command.extend(create.cmd.iter().cloned());
            rows.push(Row {
                summary: ContainerSummary {
                    id: record.id.clone(),
                    name: record.name.clone(),
                    image: create.image.clone(),
                    node_id: record.observed.node_id.clone().unwrap_or_default(),
                    status: berth_proto::messages::exec::ContainerStatus::Created,
                    exit_code: None,
                    created,
                    command,
                    labels: create.labels.clone(),
                    ports: Vec::new(),
                    started_at: None,
                    finished_at: None,
                },
                phase: Some(record.observed.phase.as_str().to_string()),
            });
        }
    }
    if args.json {
        let text = serde_json::to_string_pretty(&rows)
            .map_err(|err| Failure::berth(format!("cannot encode: {err}")))?;
        outln!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    if args.quiet {
        for r in &rows {
            outln!("{}", &r.summary.id[..r.summary.id.len().min(12)]);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let now = super::human::now();
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let c = &r.summary;
            let mut command = c.command.join(" ");
            if command.chars().count() > 20 {
                command = command.chars().take(19).collect::<String>() + "…";
            }
            let status = match &r.phase {
                Some(phase) => {
                    let mut chars = phase.chars();
                    chars
                        .next()
                        .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                        .unwrap_or_default()
                }
                None => super::human::status(c, now),
            };
            vec![
                c.id[..c.id.len().min(12)].to_string(),
                c.image.clone(),
                format!("\"{command}\""),
                super::human::created(&c.created, now),
                status,
                crate::network::show_ports(&c.ports),
                c.node_id.clone(),
                c.name.clone(),
            ]
        })
        .collect();
    let header = [
        "CONTAINER ID",
        "IMAGE",
        "COMMAND",
        "CREATED",
        "STATUS",
        "PORTS",
        "NODE",
        "NAMES",
    ];
    out!("{}", super::human::table(&header, &table));
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::messages::exec::ContainerStatus;

    #[test]
    fn filters_and_within_a_key_or_across_keys() {
        let c = ContainerSummary {
            id: "abcdef".into(),
            name: "web-1".into(),
            image: "busybox:test".into(),
            node_id: "n".into(),
            status: ContainerStatus::Exited,
            exit_code: Some(3),
            created: String::new(),
            command: vec![],
            labels: [("tier".to_string(), "front".to_string())].into(),
            ports: vec![],
            started_at: None,
            finished_at: None,
        };
        let f = |list: &[&str]| {
            PsFilter::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("parses")
                .matches(&c)
        };
        assert!(f(&["label=tier"]));
        assert!(f(&["label=tier=front", "status=exited"]));
        assert!(!f(&["label=tier=back"]));
        assert!(f(&["status=running", "status=exited"]));
        assert!(!f(&["status=running"]));
        assert!(f(&["name=web", "id=abc", "exited=3", "ancestor=busybox"]));
        assert!(!f(&["exited=0"]));
        assert!(PsFilter::parse(&["status=sleeping".into()]).is_err());
        assert!(PsFilter::parse(&["color=red".into()]).is_err());
        assert!(PsFilter::parse(&["label".into()]).is_err());
        assert!(PsFilter::parse(&["status=exited".into()])
            .expect("parses")
            .wants_all());
    }
}
