//! Container verbs, Docker's habits, one file per verb or group: `run`, `create`,
//! `start`, `ps`, `logs`, `stop`, `kill`, `rm`, `inspect`, `wait`, `exec`, `stats`.
//! Until `run` goes through the scheduler, each verb addresses one node's executor
//! (`--node`, default: the only executor on the bus).

mod attach;
mod create;
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
    BindMount, ContainerCreateRequest, ContainerCreated, ContainerDone, ContainerExit,
    ContainerInspect, ContainerKillRequest, ContainerList, ContainerListRequest, ContainerRef,
    ContainerRemoveRequest, ContainerStarted, ContainerStats, ContainerStopRequest, ExecExit,
    ExecOutput, ExecRequest, LogChunk, LogsPage, LogsRequest, NetworkMode, RestartPolicy, Ulimit,
    VolumeMount,
};
use berth_proto::subjects::{self, service_names, ExecVerb};
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
    /// Node whose executor to address (default: the only one on the bus).
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
            let target = Target::connect(nats, &args.node, timeout).await?;
            let created: ContainerCreated = target
                .call(
                    ExecVerb::Create,
                    &args.request(false)?,
                    Some(CREATE_DEADLINE),
                )
                .await
                .map_err(failure)?;
            println!("{}", created.id);
            Ok(ExitCode::SUCCESS)
        }
        ContainersCommand::Start(args) => {
            each(nats, timeout, args, |target, id| async move {
                let _: ContainerStarted = target
                    .call(
                        ExecVerb::Start,
                        &ContainerRef { id },
                        Some(Duration::from_secs(150)),
                    )
                    .await?;
                Ok(())
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
            each(nats, timeout, args.refs, move |target, id| async move {
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
            })
            .await
        }
        ContainersCommand::Kill(args) => {
            let signal = args.signal.clone();
            each(nats, timeout, args.refs, move |target, id| {
                let signal = signal.clone();
                async move {
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
                }
            })
            .await
        }
        ContainersCommand::Rm(args) => {
            let (force, volumes) = (args.force, args.volumes);
            each(nats, timeout, args.refs, move |target, id| async move {
                let _: ContainerDone = target
                    .call(
                        ExecVerb::Remove,
                        &ContainerRemoveRequest { id, force, volumes },
                        Some(Duration::from_secs(60)),
                    )
                    .await?;
                Ok(())
            })
            .await
        }
        ContainersCommand::Inspect(args) => {
            let target = Target::connect(nats, &args.node, timeout).await?;
            let mut found = Vec::new();
            let mut failed = false;
            for id in &args.containers {
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
            println!("{text}");
            Ok(if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        ContainersCommand::Wait(args) => {
            let target = Target::connect(nats, &args.node, timeout).await?;
            let mut failed = false;
            for id in &args.containers {
                match target
                    .call::<_, ContainerExit>(
                        ExecVerb::Wait,
                        &ContainerRef { id: id.clone() },
                        Some(WAIT_DEADLINE),
                    )
                    .await
                {
                    Ok(exit) => println!("{}", exit.exit_code),
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
    F: Fn(std::sync::Arc<Target>, String) -> Fut,
    Fut: std::future::Future<Output = Result<(), BusError>>,
{
    let target = std::sync::Arc::new(Target::connect(nats, &args.node, timeout).await?);
    let mut failed = false;
    for id in args.containers {
        match verb(std::sync::Arc::clone(&target), id.clone()).await {
            Ok(()) => println!("{id}"),
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
