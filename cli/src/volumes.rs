//! `berth volume create/ls/inspect/rm`: named volumes on a node's executor.

use crate::containers::{failure, NodeArg, Target};
use crate::exit::Failure;
use berth_bus::NatsSettings;
use berth_proto::messages::exec::{
    VolumeCreateRequest, VolumeInfo, VolumeList, VolumeListRequest, VolumeRef, VolumeRemoveRequest,
};
use berth_proto::subjects::ExecVerb;
use berth_proto::ErrorKind;
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Subcommand, Debug)]
pub enum VolumeCommand {
    /// Create a volume (a name is generated when none is given); prints its name.
    Create {
        #[command(flatten)]
        node: NodeArg,
        /// Label key=value (repeatable).
        #[arg(short = 'l', long = "label")]
        labels: Vec<String>,
        name: Option<String>,
    },
    /// List volumes.
    #[command(alias = "list")]
    Ls {
        #[command(flatten)]
        node: NodeArg,
        /// Only names.
        #[arg(short = 'q', long)]
        quiet: bool,
        /// label=KEY[=VALUE] (repeatable).
        #[arg(short = 'f', long = "filter")]
        filters: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Details of volumes as JSON.
    Inspect {
        #[command(flatten)]
        node: NodeArg,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove volumes; refused while a container (running or not) uses one.
    #[command(alias = "remove")]
    Rm {
        #[command(flatten)]
        node: NodeArg,
        /// A volume that does not exist is not an error.
        #[arg(short = 'f', long)]
        force: bool,
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// `key=value` labels as a map; a bare key has an empty value.
fn labels(list: &[String]) -> std::collections::BTreeMap<String, String> {
    list.iter()
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// `--filter label=…` → the label list the executor matches.
fn label_filters(filters: &[String]) -> Result<Vec<String>, Failure> {
    filters
        .iter()
        .map(|f| match f.split_once('=') {
            Some(("label", value)) if !value.is_empty() => Ok(value.to_string()),
            _ => Err(Failure::berth(format!(
                "invalid filter {f:?}: volumes filter by label=KEY[=VALUE]"
            ))),
        })
        .collect()
}

/// Exit 1 for a missing volume (as Docker), 125 for other errors.
fn volume_failure(err: berth_bus::BusError) -> Failure {
    let not_found = err.kind() == Some(ErrorKind::NotFound);
    let mut out = failure(err);
    if not_found {
        out.code = 1;
    }
    out
}

pub async fn run(
    command: VolumeCommand,
    nats: &NatsSettings,
    timeout: Duration,
) -> Result<ExitCode, Failure> {
    match command {
        VolumeCommand::Create {
            node,
            labels: list,
            name,
        } => {
            let target = Target::connect(nats, &node, timeout).await?;
            let created: VolumeInfo = target
                .call(
                    ExecVerb::VolumeCreate,
                    &VolumeCreateRequest {
                        name: name.unwrap_or_default(),
                        labels: labels(&list),
                    },
                    None,
                )
                .await
                .map_err(failure)?;
            outln!("{}", created.name);
            Ok(ExitCode::SUCCESS)
        }
        VolumeCommand::Ls {
            node,
            quiet,
            filters,
            json,
        } => {
            let labels = label_filters(&filters)?;
            let target = Target::connect(nats, &node, timeout).await?;
            let list: VolumeList = target
                .call(ExecVerb::VolumeList, &VolumeListRequest { labels }, None)
                .await
                .map_err(failure)?;
            if json {
                let text = serde_json::to_string_pretty(&list.volumes)
                    .map_err(|err| Failure::berth(format!("cannot encode: {err}")))?;
                outln!("{text}");
            } else if quiet {
                for v in &list.volumes {
                    outln!("{}", v.name);
                }
            } else {
                outln!(
                    "{:<8}  {:<64}  {:<10}  CONTAINERS",
                    "DRIVER",
                    "VOLUME NAME",
                    "NODE"
                );
                for v in &list.volumes {
                    outln!(
                        "{:<8}  {:<64}  {:<10}  {}",
                        v.driver,
                        v.name,
                        v.node_id,
                        v.containers.len()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        VolumeCommand::Inspect { node, names } => {
            let target = Target::connect(nats, &node, timeout).await?;
            let mut found = Vec::new();
            let mut failed = false;
            for name in names {
                match target
                    .call::<_, VolumeInfo>(ExecVerb::VolumeInspect, &VolumeRef { name }, None)
                    .await
                {
                    Ok(info) => found.push(info),
                    Err(err) => {
                        eprintln!("berth: {}", volume_failure(err).message);
                        failed = true;
                    }
                }
            }
            let text = serde_json::to_string_pretty(&found)
                .map_err(|err| Failure::berth(format!("cannot encode: {err}")))?;
            outln!("{text}");
            Ok(if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        VolumeCommand::Rm { node, force, names } => {
            let target = Target::connect(nats, &node, timeout).await?;
            let mut failed = false;
            for name in names {
                match target
                    .call::<_, VolumeRef>(
                        ExecVerb::VolumeRemove,
                        &VolumeRemoveRequest {
                            name: name.clone(),
                            force,
                        },
                        Some(Duration::from_secs(120)),
                    )
                    .await
                {
                    Ok(_) => outln!("{name}"),
                    Err(err) => {
                        eprintln!("berth: {}", volume_failure(err).message);
                        failed = true;
                    }
                }
            }
            Ok(if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_filters_parse() {
        assert_eq!(
            labels(&["a=b".into(), "c".into()]),
            [
                ("a".to_string(), "b".to_string()),
                ("c".to_string(), String::new())
            ]
            .into()
        );
        assert_eq!(
            label_filters(&["label=a=b".into()])
                .map_err(|f| f.message)
                .as_deref(),
            Ok(&["a=b".to_string()][..])
        );
        assert!(label_filters(&["dangling=true".into()]).is_err());
    }
}
