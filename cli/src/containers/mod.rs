//! Container verbs, Docker's habits, one file per verb or group: `run`, `create`,
//! `start`, `ps`, `logs`, `stop`, `kill`, `rm`, `inspect`, `wait`, `exec`, `stats`.
//! `run` and `create` go through the scheduler (`--node` pins the node), and so do
//! `start`, `stop`, `kill` and `rm` when it holds the container's record (it remembers
//! the user's wish); the other verbs that name a container find its node from the
//! scheduler's records, else by asking the executors, and talk to that node's executor.

mod attach;
mod create;
mod detach;
mod exec;
mod human;
mod interactive;
mod logs;
mod ps;
mod run;
mod stats;

pub use create::{CreateArgs, RunArgs};
pub use exec::ExecArgs;
pub use logs::{parse_time, LogsArgs};
pub use ps::PsArgs;
pub use stats::StatsArgs;

use crate::discovery::pick_node;
use crate::exit::Failure;
use berth_bus::{connect_once, BusError, NatsSettings};
use berth_proto::messages::exec::{
    BindMount, ContainerCreateRequest, ContainerDone, ContainerExit, ContainerInspect,
    ContainerKillRequest, ContainerList, ContainerListRequest, ContainerRef,
    ContainerRemoveRequest, ContainerStarted, ContainerStats, ContainerStopRequest,
    ContainerWaitRequest, ExecExit, ExecOutput, ExecRequest, LogChunk, LogsPage, LogsRequest,
    NetworkMode, RestartPolicy, Ulimit, VolumeMount,
};
use berth_proto::messages::sched::{
    ContainerRecord, SchedDone, SchedKillRequest, SchedRef, SchedRemoveRequest, SchedRunReply,
    SchedRunRequest, SchedStopRequest,
};
use berth_proto::subjects::{self, service_names, ExecVerb, SchedVerb};
use berth_proto::{Encoding, ErrorKind};
use futures::StreamExt;
use serde::{de::DeserializeOwned, Serialize};
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

/// Unpacking a large image can take minutes.
const CREATE_DEADLINE: Duration = Duration::from_secs(900);
/// `wait` and attached `run` last as long as the container.
const WAIT_DEADLINE: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(clap::Args, Debug)]
pub struct NodeArg {
    /// Node whose executor to address (default: the container's node, or the only one).
    #[arg(long, env = "BERTH_NODE")]
    pub(crate) node: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct RefsArgs {
    #[command(flatten)]
    node: NodeArg,
    /// Container ids or names.
    #[arg(required = true)]
    containers: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct StopArgs {
    #[command(flatten)]
    refs: RefsArgs,
    /// Seconds to wait before SIGKILL (default: the container's stop timeout).
    #[arg(short = 't', long = "time")]
    time: Option<u32>,
}

#[derive(clap::Args, Debug)]
pub struct KillArgs {
    #[command(flatten)]
    refs: RefsArgs,
    /// Signal to send (name or number).
    #[arg(short = 's', long, default_value = "KILL")]
    signal: String,
}

#[derive(clap::Args, Debug)]
pub struct RmArgs {
    #[command(flatten)]
    refs: RefsArgs,
    /// Kill a running container first.
    #[arg(short = 'f', long)]
    force: bool,
    /// Also remove the container's anonymous volumes.
    #[arg(short = 'v', long)]
    volumes: bool,
}

/// Container verbs, flattened into the CLI's top level.
#[derive(clap::Subcommand, Debug)]
pub enum ContainersCommand {
    /// Create and start a container; attached, exits with its exit code.
    Run(Box<RunArgs>),
    /// Create a container without starting it; prints its id.
    Create(Box<CreateArgs>),
    /// Start created or exited containers.
    Start(RefsArgs),
    /// List containers.
    Ps(PsArgs),
    /// A container's output.
    Logs(LogsArgs),
    /// Stop running containers: stop signal, grace period, SIGKILL.
    Stop(StopArgs),
    /// Send a signal to running containers.
    Kill(KillArgs),
    /// Remove containers.
    Rm(RmArgs),
    /// Details of containers as JSON.
    Inspect(RefsArgs),
    /// Wait for containers to exit; prints their exit codes.
    Wait(RefsArgs),
    /// Run a command in a running container; exits with its exit code.
    Exec(ExecArgs),
    /// CPU, memory and pids of running containers.
    Stats(StatsArgs),
    /// Attach to a running container: its output, its stdin if created with -i.
    Attach(attach::AttachArgs),
}

/// A connected client and the executor node it addresses.
pub(crate) struct Target {
    pub(crate) client: async_nats::Client,
    pub(crate) node: String,
    timeout: Duration,
}

impl Target {
    pub(crate) async fn connect(
        nats: &NatsSettings,
        node: &NodeArg,
        timeout: Duration,
    ) -> Result<Self, Failure> {
        let client = connect_once(nats, "berth-cli", timeout.min(Duration::from_secs(5)))
            .await
            .map_err(|err| Failure::berth(err.to_string()))?;
        let node = pick_node(&client, service_names::EXECUTOR, node.node.clone(), timeout)
            .await
            .map_err(Failure::berth)?;
        Ok(Target {
            client,
            node,
            timeout,
        })
    }

    /// Connected, without choosing a node yet.
    pub(crate) async fn client(
        nats: &NatsSettings,
        timeout: Duration,
    ) -> Result<async_nats::Client, Failure> {
        connect_once(nats, "berth-cli", timeout.min(Duration::from_secs(5)))
            .await
            .map_err(|err| Failure::berth(err.to_string()))
    }

    /// The executor of the node that holds `reference` (id, id prefix or name), and the
    /// container's full id when the scheduler knows it (else `reference` as given).
    pub(crate) async fn for_container(
        nats: &NatsSettings,
        node: &NodeArg,
        reference: &str,
        timeout: Duration,
    ) -> Result<(Self, String), Failure> {
        let client = Self::client(nats, timeout).await?;
        Self::locate(client, node, reference, timeout).await
    }

    pub(crate) async fn locate(
        client: async_nats::Client,
        node: &NodeArg,
        reference: &str,
        timeout: Duration,
    ) -> Result<(Self, String), Failure> {
        let target = |node: String| Target {
            client: client.clone(),
            node,
            timeout,
        };
        if let Some(node) = &node.node {
            return Ok((target(node.clone()), reference.to_string()));
        }
        let found: Result<ContainerRecord, BusError> = sched_call(
            &client,
            SchedVerb::Inspect,
            &SchedRef {
                reference: reference.to_string(),
            },
            timeout,
        )
        .await;
        match found {
            Ok(record) => {
                return match record.observed.node_id {
                    Some(node) => Ok((target(node), record.id)),
                    None => Err(Failure::berth(format!(
                        "container {reference} is {} and runs on no node",
                        record.observed.phase.as_str()
                    ))),
                };
            }
            Err(err) if err.kind() == Some(ErrorKind::Invalid) => return Err(failure(err)),
            // Not a scheduled container (or no scheduler): ask the executors.
            Err(_) => {}
        }
        let nodes = crate::discovery::service_nodes(
            &client,
            service_names::EXECUTOR,
            timeout.min(Duration::from_secs(5)),
        )
        .await
        .map_err(Failure::berth)?;
        match nodes.as_slice() {
            [] => Err(Failure::berth(format!(
                "no {} is running on the bus",
                service_names::EXECUTOR
            ))),
            [only] => Ok((target(only.clone()), reference.to_string())),
            many => {
                for node in many {
                    let candidate = target(node.clone());
                    let inspect: Result<ContainerInspect, BusError> = candidate
                        .call(
                            ExecVerb::Inspect,
                            &ContainerRef {
                                id: reference.to_string(),
                            },
                            None,
                        )
                        .await;
                    if let Ok(inspect) = inspect {
                        return Ok((candidate, inspect.id));
                    }
                }
                Err(Failure::berth(format!("no such container: {reference}")))
            }
        }
    }

    pub(crate) async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        verb: ExecVerb,
        body: &Req,
        deadline: Option<Duration>,
    ) -> Result<Resp, BusError> {
        berth_bus::request(
            &self.client,
            &subjects::exec(&self.node, verb),
            body,
            Encoding::Bincode,
            deadline.unwrap_or(self.timeout),
        )
        .await
    }
}

/// A request to the scheduler (any instance).
pub(crate) async fn sched_call<Req: Serialize, Resp: DeserializeOwned>(
    client: &async_nats::Client,
    verb: SchedVerb,
    body: &Req,
    deadline: Duration,
) -> Result<Resp, BusError> {
    berth_bus::request(
        client,
        &subjects::sched(verb),
        body,
        Encoding::Bincode,
        deadline,
    )
    .await
}

pub(crate) fn failure(err: BusError) -> Failure {
    match err {
        BusError::Service(envelope) => Failure::berth(envelope.message),
        other => Failure::berth(other.to_string()),
    }
}

pub async fn run(
    command: ContainersCommand,
    nats: &NatsSettings,
    timeout: Duration,
) -> Result<ExitCode, Failure> {
    match command {
        ContainersCommand::Run(args) => run::run_container(*args, nats, timeout).await,
        ContainersCommand::Create(args) => {
            let client = Target::client(nats, timeout).await?;
            let mut request = args.sched_request(false)?;
            request.no_start = true;
            let deadline = args.reply_deadline();
            let created: SchedRunReply = sched_call(&client, SchedVerb::Run, &request, deadline)
                .await
                .map_err(failure)?;
            outln!("{}", created.id);
            Ok(ExitCode::SUCCESS)
        }
        ContainersCommand::Start(args) => {
            each(nats, timeout, args, |client, node, reference| async move {
                let sched = SchedRef {
                    reference: reference.clone(),
                };
                let via = Via(SchedVerb::Start, &sched, Duration::from_secs(180));
                verb_one(
                    &client,
                    &node,
                    &reference,
                    via,
                    timeout,
                    |target, id| async move {
                        let _: ContainerStarted = target
                            .call(
                                ExecVerb::Start,
                                &ContainerRef { id },
                                Some(Duration::from_secs(150)),
                            )
                            .await?;
                        Ok(())
                    },
                )
                .await
            })
            .await
        }
        ContainersCommand::Ps(args) => ps::ps(args, nats, timeout).await,
        ContainersCommand::Exec(args) => exec::exec(args, nats, timeout).await,
        ContainersCommand::Stats(args) => stats::stats(args, nats, timeout).await,
        ContainersCommand::Attach(args) => attach::attach(args, nats, timeout).await,
        ContainersCommand::Logs(args) => logs::logs(args, nats, timeout).await,
        ContainersCommand::Stop(args) => {
            let grace = args.time;
            // The reply comes after the grace period and the SIGKILL.
            let deadline = Duration::from_secs(u64::from(grace.unwrap_or(300)) + 60);
            each(
                nats,
                timeout,
                args.refs,
                move |client, node, reference| async move {
                    let sched = SchedStopRequest {
                        reference: reference.clone(),
                        timeout_seconds: grace,
                    };
                    // The scheduler's own call to the node has `deadline`.
                    let via = Via(SchedVerb::Stop, &sched, deadline + Duration::from_secs(30));
                    verb_one(
                        &client,
                        &node,
                        &reference,
                        via,
                        timeout,
                        |target, id| async move {
                            let _: ContainerDone = target
                                .call(
                                    ExecVerb::Stop,
                                    &ContainerStopRequest {
                                        id,
                                        timeout_seconds: grace,
                                    },
                                    Some(deadline),
                                )
                                .await?;
                            Ok(())
                        },
                    )
                    .await
                },
            )
            .await
        }
        ContainersCommand::Kill(args) => {
            let signal = args.signal.clone();
            each(nats, timeout, args.refs, move |client, node, reference| {
                let signal = signal.clone();
                async move {
                    let sched = SchedKillRequest {
                        reference: reference.clone(),
                        signal: Some(signal.clone()),
                    };
                    let via = Via(SchedVerb::Kill, &sched, Duration::from_secs(60));
                    verb_one(
                        &client,
                        &node,
                        &reference,
                        via,
                        timeout,
                        |target, id| async move {
                            let _: ContainerDone = target
                                .call(
                                    ExecVerb::Kill,
                                    &ContainerKillRequest {
                                        id,
                                        signal: Some(signal),
                                    },
                                    None,
                                )
                                .await?;
                            Ok(())
                        },
                    )
                    .await
                }
            })
            .await
        }
        ContainersCommand::Rm(args) => {
            let (force, volumes) = (args.force, args.volumes);
            let client = Target::client(nats, timeout).await?;
            let mut failed = false;
            for reference in &args.refs.containers {
                match remove_one(&client, &args.refs.node, reference, force, volumes, timeout).await
                {
                    Ok(()) => outln!("{reference}"),
                    Err(err) => {
                        eprintln!("berth: {}", err.message);
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
        ContainersCommand::Inspect(args) => {
            let client = Target::client(nats, timeout).await?;
            let mut found = Vec::new();
            let mut failed = false;
            for reference in &args.containers {
                let (target, id) =
                    match Target::locate(client.clone(), &args.node, reference, timeout).await {
                        Ok(located) => located,
                        Err(err) => {
                            eprintln!("berth: {}", err.message);
                            failed = true;
                            continue;
                        }
                    };
                match target
                    .call::<_, ContainerInspect>(
                        ExecVerb::Inspect,
                        &ContainerRef { id: id.clone() },
                        None,
                    )
                    .await
                {
                    Ok(inspect) => found.push(inspect),
                    Err(err) => {
                        eprintln!("berth: {}", failure(err).message);
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
        ContainersCommand::Wait(args) => {
            let client = Target::client(nats, timeout).await?;
            let mut failed = false;
            for reference in &args.containers {
                let (target, id) =
                    match Target::locate(client.clone(), &args.node, reference, timeout).await {
                        Ok(located) => located,
                        Err(err) => {
                            eprintln!("berth: {}", err.message);
                            failed = true;
                            continue;
                        }
                    };
                match target
                    .call::<_, ContainerExit>(
                        ExecVerb::Wait,
                        &ContainerWaitRequest {
                            id: id.clone(),
                            timeout_ms: None,
                        },
                        Some(WAIT_DEADLINE),
                    )
                    .await
                {
                    Ok(exit) => outln!("{}", exit.exit_code),
                    Err(err) => {
                        eprintln!("berth: {}", failure(err).message);
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

/// Applies one verb to each container, printing each reference done (Docker's output)
/// and an error line for each failure; exit 1 if any failed.
async fn each<F, Fut>(
    nats: &NatsSettings,
    timeout: Duration,
    args: RefsArgs,
    verb: F,
) -> Result<ExitCode, Failure>
where
    F: Fn(async_nats::Client, std::sync::Arc<NodeArg>, String) -> Fut,
    Fut: std::future::Future<Output = Result<(), Failure>>,
{
    let client = Target::client(nats, timeout).await?;
    let node = std::sync::Arc::new(args.node);
    let mut failed = false;
    for reference in args.containers {
        match verb(
            client.clone(),
            std::sync::Arc::clone(&node),
            reference.clone(),
        )
        .await
        {
            Ok(()) => outln!("{reference}"),
            Err(err) => {
                eprintln!("berth: {}", err.message);
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

/// The scheduler's verb for a container verb (it records the wish in the container's
/// record), with its request and deadline.
struct Via<'a, Req>(SchedVerb, &'a Req, Duration);

/// One verb on one container: through the scheduler when it holds the record (so that
/// the record remembers a stop or a start), else straight to the executor that has the
/// container (no scheduler, a container it does not know, or `--node` given).
async fn verb_one<Req, F, Fut>(
    client: &async_nats::Client,
    node: &NodeArg,
    reference: &str,
    via: Via<'_, Req>,
    timeout: Duration,
    direct: F,
) -> Result<(), Failure>
where
    Req: Serialize,
    F: FnOnce(Target, String) -> Fut,
    Fut: std::future::Future<Output = Result<(), BusError>>,
{
    if node.node.is_none() {
        let Via(verb, request, deadline) = via;
        let done: Result<SchedDone, BusError> =
            sched_call(client, verb, request, deadline.max(timeout)).await;
        match done {
            Ok(_) => return Ok(()),
            Err(BusError::NoResponders { .. }) => {}
            Err(err) if err.kind() == Some(ErrorKind::NotFound) => {}
            Err(err) => return Err(failure(err)),
        }
    }
    let (target, id) = Target::locate(client.clone(), node, reference, timeout).await?;
    direct(target, id).await.map_err(failure)
}

/// `rm` of one container: through the scheduler when it holds the record (the record and
/// the reservation go too), else straight to the executor that has it.
pub(crate) async fn remove_one(
    client: &async_nats::Client,
    node: &NodeArg,
    reference: &str,
    force: bool,
    volumes: bool,
    timeout: Duration,
) -> Result<(), Failure> {
    if node.node.is_none() {
        let removed: Result<SchedDone, BusError> = sched_call(
            client,
            SchedVerb::Remove,
            &SchedRemoveRequest {
                reference: reference.to_string(),
                force,
                volumes,
            },
            Duration::from_secs(60).max(timeout),
        )
        .await;
        match removed {
            Ok(_) => return Ok(()),
            Err(BusError::NoResponders { .. }) => {}
            Err(err) if err.kind() == Some(ErrorKind::NotFound) => {}
            Err(err) => return Err(failure(err)),
        }
    }
    let (target, id) = Target::locate(client.clone(), node, reference, timeout).await?;
    let _: ContainerDone = target
        .call(
            ExecVerb::Remove,
            &ContainerRemoveRequest { id, force, volumes },
            Some(Duration::from_secs(60)),
        )
        .await
        .map_err(failure)?;
    Ok(())
}
