//! `ps`: the containers of a node.

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

pub(super) async fn ps(
    args: PsArgs,
    nats: &NatsSettings,
    timeout: Duration,
) -> Result<ExitCode, Failure> {
    let filter = PsFilter::parse(&args.filters).map_err(Failure::berth)?;
    let target = Target::connect(nats, &args.node, timeout).await?;
    let mut list: ContainerList = target
        .call(
            ExecVerb::List,
            &ContainerListRequest {
                all: args.all || filter.wants_all(),
            },
            None,
        )
        .await
        .map_err(|err| match err.kind() {
            Some(ErrorKind::NotFound) => Failure::berth("no containers"),
            _ => failure(err),
        })?;
    list.containers.retain(|c| filter.matches(c));
    if args.json {
        let text = serde_json::to_string_pretty(&list.containers)
            .map_err(|err| Failure::berth(format!("cannot encode: {err}")))?;
        println!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    if args.quiet {
        for c in &list.containers {
            println!("{}", &c.id[..c.id.len().min(12)]);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let now = super::human::now();
    let rows: Vec<Vec<String>> = list
        .containers
        .iter()
        .map(|c| {
            let mut command = c.command.join(" ");
            if command.chars().count() > 20 {
                command = command.chars().take(19).collect::<String>() + "…";
            }
            vec![
                c.id[..c.id.len().min(12)].to_string(),
                c.image.clone(),
                format!("\"{command}\""),
                super::human::created(&c.created, now),
                super::human::status(c, now),
                crate::network::show_ports(&c.ports),
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
        "NAMES",
    ];
    print!("{}", super::human::table(&header, &rows));
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
