//! Container verbs, Docker's habits: `run`, `create`, `start`, `ps`, `logs`, `stop`,
//! `kill`, `rm`, `inspect`, `wait`. Until `run` goes through the scheduler, each verb
//! addresses one node's executor (`--node`, default: the only executor on the bus).

use crate::discovery::pick_node;
use crate::exit::Failure;
use berth_bus::{connect_once, BusError, NatsSettings};
use berth_proto::messages::exec::{
    BindMount, ContainerCreateRequest, ContainerCreated, ContainerDone, ContainerExit,
    ContainerInspect, ContainerKillRequest, ContainerList, ContainerListRequest, ContainerRef,
    ContainerRemoveRequest, ContainerStarted, ContainerStats, ContainerStopRequest, ExecExit,
    ExecOutput, ExecRequest, LogChunk, LogsPage, LogsRequest, NetworkMode, RestartPolicy, Ulimit,
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
    node: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    #[command(flatten)]
    node: NodeArg,
    /// Container name.
    #[arg(long)]
    name: Option<String>,
    /// Environment variable KEY=value (repeatable).
    #[arg(short = 'e', long = "env")]
    env: Vec<String>,
    /// Overrides the image's entrypoint ("" clears it).
    #[arg(long)]
    entrypoint: Option<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long)]
    workdir: Option<String>,
    /// user[:group], by name or number.
    #[arg(short = 'u', long)]
    user: Option<String>,
    #[arg(long)]
    hostname: Option<String>,
    /// Memory limit (bytes, or with k, m, g suffix).
    #[arg(short = 'm', long, value_parser = parse_size)]
    memory: Option<i64>,
    /// CPU limit (0.5 = half a CPU).
    #[arg(long)]
    cpus: Option<f64>,
    #[arg(long)]
    pids_limit: Option<i64>,
    /// Mount the root filesystem read-only.
    #[arg(long)]
    read_only: bool,
    /// none or host.
    #[arg(long, default_value = "none", value_parser = parse_network)]
    network: NetworkMode,
    /// Bind mount /host:/container[:ro|rw] (repeatable).
    #[arg(short = 'v', long = "volume", value_parser = parse_bind)]
    volumes: Vec<BindMount>,
    /// Label key=value (repeatable).
    #[arg(short = 'l', long = "label")]
    labels: Vec<String>,
    /// no, on-failure[:N], always or unless-stopped.
    #[arg(long, default_value = "no", value_parser = parse_restart)]
    restart: RestartPolicy,
    #[arg(long)]
    stop_signal: Option<String>,
    /// Seconds `stop` waits before SIGKILL.
    #[arg(long)]
    stop_timeout: Option<u32>,
    /// Read KEY=value lines from a file (repeatable; -e wins).
    #[arg(long)]
    env_file: Vec<std::path::PathBuf>,
    /// Memory + swap limit (-1: unlimited swap).
    #[arg(long, value_parser = parse_swap, allow_hyphen_values = true)]
    memory_swap: Option<i64>,
    /// CPUs to run on (0-1, 0,2).
    #[arg(long)]
    cpuset_cpus: Option<String>,
    /// Mount a tmpfs: /path[:options] (repeatable).
    #[arg(long)]
    tmpfs: Vec<String>,
    /// Add a capability (repeatable; ALL for every one).
    #[arg(long)]
    cap_add: Vec<String>,
    /// Drop a capability (repeatable; ALL for every one).
    #[arg(long)]
    cap_drop: Vec<String>,
    /// no-new-privileges[=false] or seccomp=unconfined (repeatable).
    #[arg(long)]
    security_opt: Vec<String>,
    /// name=soft[:hard], e.g. nofile=1024:2048 (repeatable).
    #[arg(long, value_parser = parse_ulimit)]
    ulimit: Vec<Ulimit>,
    /// Image to run.
    image: String,
    /// Command and arguments (replace the image's Cmd).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Run in the background and print the container id.
    #[arg(short = 'd', long)]
    detach: bool,
    /// Remove the container when it exits.
    #[arg(long)]
    rm: bool,
    #[command(flatten)]
    create: CreateArgs,
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
pub struct PsArgs {
    #[command(flatten)]
    node: NodeArg,
    /// Show all containers, not only running ones.
    #[arg(short = 'a', long)]
    all: bool,
    /// Only ids.
    #[arg(short = 'q', long)]
    quiet: bool,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    #[command(flatten)]
    node: NodeArg,
    /// Keep following new output.
    #[arg(short = 'f', long)]
    follow: bool,
    /// Only the last N lines ("all" for everything).
    #[arg(short = 'n', long, default_value = "all")]
    tail: String,
    container: String,
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
}

#[derive(clap::Args, Debug)]
pub struct ExecArgs {
    #[command(flatten)]
    node: NodeArg,
    /// Environment variable KEY=value (repeatable).
    #[arg(short = 'e', long = "env")]
    env: Vec<String>,
    /// user[:group], by name or number.
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long)]
    workdir: Option<String>,
    container: String,
    /// Command and arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct StatsArgs {
    #[command(flatten)]
    node: NodeArg,
    /// Print one sample and exit.
    #[arg(long)]
    no_stream: bool,
    /// Containers (default: every running one).
    containers: Vec<String>,
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
}

/// `64m` → 67108864.
pub fn parse_size(text: &str) -> Result<i64, String> {
    let lower = text.trim().to_ascii_lowercase();
    let lower = lower.strip_suffix('b').unwrap_or(&lower);
    let (digits, unit) = match lower.chars().last() {
        Some('k') => (&lower[..lower.len() - 1], 1i64 << 10),
        Some('m') => (&lower[..lower.len() - 1], 1 << 20),
        Some('g') => (&lower[..lower.len() - 1], 1 << 30),
        _ => (lower, 1),
    };
    let value: f64 = digits
        .parse()
        .map_err(|_| format!("invalid size {text:?}: use bytes or a k, m, g suffix"))?;
    if value <= 0.0 {
        return Err(format!("invalid size {text:?}: must be positive"));
    }
    Ok((value * unit as f64) as i64)
}

fn parse_network(text: &str) -> Result<NetworkMode, String> {
    match text {
        "none" => Ok(NetworkMode::None),
        "host" => Ok(NetworkMode::Host),
        other => Err(format!(
            "network {other:?} is not supported yet: use none or host"
        )),
    }
}

/// `/host:/ctr[:ro|rw]`
pub fn parse_bind(text: &str) -> Result<BindMount, String> {
    let parts: Vec<&str> = text.split(':').collect();
    let (source, destination, read_only) = match parts.as_slice() {
        [s, d] => (*s, *d, false),
        [s, d, "ro"] => (*s, *d, true),
        [s, d, "rw"] => (*s, *d, false),
        _ => {
            return Err(format!(
                "invalid volume {text:?}: use /host:/container[:ro]"
            ))
        }
    };
    if !source.starts_with('/') || !destination.starts_with('/') {
        return Err(format!(
            "invalid volume {text:?}: both paths must be absolute (named volumes are not supported yet)"
        ));
    }
    Ok(BindMount {
        source: source.into(),
        destination: destination.into(),
        read_only,
    })
}

/// `no`, `on-failure[:N]`, `always`, `unless-stopped`.
pub fn parse_restart(text: &str) -> Result<RestartPolicy, String> {
    match text.split_once(':') {
        None => match text {
            "no" => Ok(RestartPolicy::No),
            "always" => Ok(RestartPolicy::Always),
            "unless-stopped" => Ok(RestartPolicy::UnlessStopped),
            "on-failure" => Ok(RestartPolicy::OnFailure { max_retries: 0 }),
            _ => Err(format!("invalid restart policy {text:?}")),
        },
        Some(("on-failure", n)) => n
            .parse()
            .map(|max_retries| RestartPolicy::OnFailure { max_retries })
            .map_err(|_| format!("invalid restart count in {text:?}")),
        Some(_) => Err(format!("invalid restart policy {text:?}")),
    }
}

/// `--memory-swap`: a size, or -1 for unlimited.
fn parse_swap(text: &str) -> Result<i64, String> {
    if text.trim() == "-1" {
        Ok(-1)
    } else {
        parse_size(text)
    }
}

/// `nofile=1024[:2048]`
pub fn parse_ulimit(text: &str) -> Result<Ulimit, String> {
    let (name, values) = text
        .split_once('=')
        .ok_or_else(|| format!("invalid ulimit {text:?}: use name=soft[:hard]"))?;
    let number = |v: &str| {
        v.parse::<u64>()
            .map_err(|_| format!("invalid ulimit {text:?}: {v:?} is not a number"))
    };
    let (soft, hard) = match values.split_once(':') {
        Some((soft, hard)) => (number(soft)?, number(hard)?),
        None => (number(values)?, number(values)?),
    };
    Ok(Ulimit {
        name: name.to_string(),
        soft,
        hard,
    })
}

/// KEY=value lines of an env file; blank lines and `#` comments skipped, a bare KEY
/// takes the value from this environment (Docker's rule).
pub fn parse_env_file(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            if l.contains('=') {
                Some(l.to_string())
            } else {
                std::env::var(l).ok().map(|v| format!("{l}={v}"))
            }
        })
        .collect()
}

impl CreateArgs {
    fn request(&self, auto_remove: bool) -> Result<ContainerCreateRequest, Failure> {
        let mut env = Vec::new();
        for path in &self.env_file {
            let text = std::fs::read_to_string(path).map_err(|err| {
                Failure::berth(format!("cannot read env file {}: {err}", path.display()))
            })?;
            env.extend(parse_env_file(&text));
        }
        env.extend(self.env.iter().cloned());
        let mut labels = std::collections::BTreeMap::new();
        for label in &self.labels {
            let (k, v) = label.split_once('=').unwrap_or((label.as_str(), ""));
            labels.insert(k.to_string(), v.to_string());
        }
        let nano_cpus = match self.cpus {
            Some(c) if !(c > 0.0 && c.is_finite()) => {
                return Err(Failure::berth(format!(
                    "invalid --cpus {c}: must be positive"
                )))
            }
            Some(c) => Some((c * 1e9) as u64),
            None => None,
        };
        Ok(ContainerCreateRequest {
            image: self.image.clone(),
            name: self.name.clone(),
            entrypoint: self.entrypoint.as_ref().map(|e| {
                if e.is_empty() {
                    Vec::new()
                } else {
                    vec![e.clone()]
                }
            }),
            cmd: self.command.clone(),
            env,
            workdir: self.workdir.clone(),
            user: self.user.clone(),
            hostname: self.hostname.clone(),
            memory_bytes: self.memory,
            nano_cpus,
            pids_limit: self.pids_limit,
            read_only: self.read_only,
            network: self.network,
            binds: self.volumes.clone(),
            labels,
            restart: self.restart,
            stop_signal: self.stop_signal.clone(),
            stop_timeout: self.stop_timeout,
            auto_remove,
            memory_swap_bytes: self.memory_swap,
            cpuset_cpus: self.cpuset_cpus.clone(),
            tmpfs: self.tmpfs.clone(),
            cap_add: self.cap_add.clone(),
            cap_drop: self.cap_drop.clone(),
            security_opt: self.security_opt.clone(),
            ulimits: self.ulimit.clone(),
        })
    }
}

/// A connected client and the executor node it addresses.
struct Target {
    client: async_nats::Client,
    node: String,
    timeout: Duration,
}

impl Target {
    async fn connect(
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

    async fn call<Req: Serialize, Resp: DeserializeOwned>(
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

fn failure(err: BusError) -> Failure {
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
        ContainersCommand::Run(args) => run_container(*args, nats, timeout).await,
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
        ContainersCommand::Ps(args) => ps(args, nats, timeout).await,
        ContainersCommand::Exec(args) => exec(args, nats, timeout).await,
        ContainersCommand::Stats(args) => stats(args, nats, timeout).await,
        ContainersCommand::Logs(args) => logs(args, nats, timeout).await,
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
            let force = args.force;
            each(nats, timeout, args.refs, move |target, id| async move {
                let _: ContainerDone = target
                    .call(
                        ExecVerb::Remove,
                        &ContainerRemoveRequest { id, force },
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

/// Prints CRI records: text to stdout or stderr, a newline unless the record is partial.
pub fn print_records(data: &[u8]) {
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let mut out = stdout.lock();
    let mut err = stderr.lock();
    for line in data.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let Some((is_stderr, partial, text)) = parse_record(line) else {
            continue;
        };
        let sink: &mut dyn Write = if is_stderr { &mut err } else { &mut out };
        let _ = sink.write_all(text);
        if !partial {
            let _ = sink.write_all(b"\n");
        }
    }
    let _ = out.flush();
    let _ = err.flush();
}

/// `<ts> <stream> <F|P> <text>` → (stderr?, partial?, text).
pub fn parse_record(line: &[u8]) -> Option<(bool, bool, &[u8])> {
    let mut fields = line.splitn(4, |b| *b == b' ');
    let _ts = fields.next()?;
    let stream = fields.next()?;
    let tag = fields.next()?;
    let text = fields.next().unwrap_or(&[]);
    Some((stream == b"stderr", tag == b"P", text))
}

/// Follows a container's log from `next`: prints live chunks, fills gaps from history.
struct Follower<'a> {
    target: &'a Target,
    id: String,
    next: u64,
}

impl Follower<'_> {
    /// Prints pages from `next` until caught up (or up to `until`).
    async fn catch_up(&mut self, until: Option<u64>) -> Result<bool, Failure> {
        loop {
            if until.is_some_and(|u| self.next >= u) {
                return Ok(true);
            }
            let page: LogsPage = self
                .target
                .call(
                    ExecVerb::Logs,
                    &LogsRequest {
                        id: self.id.clone(),
                        from_offset: Some(self.next),
                        tail: None,
                    },
                    None,
                )
                .await
                .map_err(failure)?;
            print_records(&page.data);
            self.next = page.end;
            if !page.more || page.data.is_empty() {
                return Ok(page.running);
            }
        }
    }

    /// Handles one live chunk; `true` at end of output.
    async fn chunk(&mut self, chunk: LogChunk) -> Result<bool, Failure> {
        if chunk.offset > self.next {
            self.catch_up(Some(chunk.offset)).await?;
        }
        let end = chunk.offset + chunk.data.len() as u64;
        if end > self.next && chunk.offset <= self.next {
            let skip = (self.next - chunk.offset) as usize;
            print_records(&chunk.data[skip..]);
            self.next = end;
        }
        Ok(chunk.eof)
    }
}

async fn run_container(
    args: RunArgs,
    nats: &NatsSettings,
    timeout: Duration,
) -> Result<ExitCode, Failure> {
    if args.rm && args.create.restart != RestartPolicy::No {
        return Err(Failure::berth(
            "conflicting options: --rm and --restart cannot be combined",
        ));
    }
    let target = Target::connect(nats, &args.create.node, timeout).await?;
    // Attached, the CLI removes the container itself after reading its exit code.
    let request = args.create.request(args.rm && args.detach)?;
    let created: ContainerCreated = target
        .call(ExecVerb::Create, &request, Some(CREATE_DEADLINE))
        .await
        .map_err(failure)?;
    let id = created.id;
    let mut live = if args.detach {
        None
    } else {
        Some(
            target
                .client
                .subscribe(subjects::logs(&id))
                .await
                .map_err(|err| Failure::berth(format!("cannot follow the logs of {id}: {err}")))?,
        )
    };
    let started: Result<ContainerStarted, BusError> = target
        .call(
            ExecVerb::Start,
            &ContainerRef { id: id.clone() },
            Some(Duration::from_secs(150)),
        )
        .await;
    if let Err(err) = started {
        // Exit 126/127 like Docker when the command could not be run.
        let code = match target
            .call::<_, ContainerInspect>(ExecVerb::Inspect, &ContainerRef { id: id.clone() }, None)
            .await
        {
            Ok(inspect) => inspect.exit_code.filter(|c| *c == 126 || *c == 127),
            Err(_) => None,
        };
        if args.rm {
            let _: Result<ContainerDone, _> = target
                .call(
                    ExecVerb::Remove,
                    &ContainerRemoveRequest {
                        id: id.clone(),
                        force: true,
                    },
                    None,
                )
                .await;
        }
        let failure = failure(err);
        return Err(Failure {
            code: code.map_or(failure.code, |c| c as u8),
            message: failure.message,
        });
    }
    let Some(live) = live.as_mut() else {
        println!("{id}");
        return Ok(ExitCode::SUCCESS);
    };
    let mut follower = Follower {
        target: &target,
        id: id.clone(),
        next: 0,
    };
    let wait_ref = ContainerRef { id: id.clone() };
    let wait = target.call::<_, ContainerExit>(ExecVerb::Wait, &wait_ref, Some(WAIT_DEADLINE));
    tokio::pin!(wait);
    let exit = loop {
        tokio::select! {
            exit = &mut wait => break exit.map_err(failure)?,
            message = live.next() => {
                let Some(message) = message else { continue };
                if let Ok(chunk) = Encoding::Bincode.decode::<LogChunk>(&message.payload) {
                    follower.chunk(chunk).await?;
                }
            }
        }
    };
    // The monitor wrote every line before it recorded the exit: read what is left.
    follower.catch_up(None).await?;
    if args.rm {
        let removed: Result<ContainerDone, BusError> = target
            .call(
                ExecVerb::Remove,
                &ContainerRemoveRequest {
                    id: id.clone(),
                    force: true,
                },
                Some(Duration::from_secs(60)),
            )
            .await;
        if let Err(err) = removed {
            eprintln!("berth: removing {id}: {}", failure(err).message);
        }
    }
    Ok(ExitCode::from(exit.exit_code.clamp(0, 255) as u8))
}

async fn logs(args: LogsArgs, nats: &NatsSettings, timeout: Duration) -> Result<ExitCode, Failure> {
    let target = Target::connect(nats, &args.node, timeout).await?;
    let tail = match args.tail.as_str() {
        "all" | "-1" => None,
        n => Some(
            n.parse::<u64>()
                .map_err(|_| Failure::berth(format!("invalid --tail {n:?}")))?,
        ),
    };
    // Full id first, so the live subject is right even when given a name.
    let inspect: ContainerInspect = target
        .call(
            ExecVerb::Inspect,
            &ContainerRef {
                id: args.container.clone(),
            },
            None,
        )
        .await
        .map_err(failure)?;
    let id = inspect.id;
    let mut live = if args.follow {
        Some(
            target
                .client
                .subscribe(subjects::logs(&id))
                .await
                .map_err(|err| Failure::berth(format!("cannot follow the logs of {id}: {err}")))?,
        )
    } else {
        None
    };
    let first: LogsPage = target
        .call(
            ExecVerb::Logs,
            &LogsRequest {
                id: id.clone(),
                from_offset: None,
                tail,
            },
            None,
        )
        .await
        .map_err(failure)?;
    print_records(&first.data);
    let mut follower = Follower {
        target: &target,
        id: id.clone(),
        next: first.end,
    };
    let running = if first.more {
        follower.catch_up(None).await?
    } else {
        first.running
    };
    let Some(live) = live.as_mut() else {
        return Ok(ExitCode::SUCCESS);
    };
    if !running {
        return Ok(ExitCode::SUCCESS);
    }
    loop {
        match tokio::time::timeout(Duration::from_secs(2), live.next()).await {
            Ok(Some(message)) => {
                if let Ok(chunk) = Encoding::Bincode.decode::<LogChunk>(&message.payload) {
                    if follower.chunk(chunk).await? {
                        return Ok(ExitCode::SUCCESS);
                    }
                }
            }
            Ok(None) => return Ok(ExitCode::SUCCESS),
            // Quiet: an exit while the executor was restarting sends no end chunk.
            Err(_) => {
                if !follower.catch_up(None).await? {
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
    }
}

async fn exec(args: ExecArgs, nats: &NatsSettings, timeout: Duration) -> Result<ExitCode, Failure> {
    let target = Target::connect(nats, &args.node, timeout).await?;
    let output = format!("{}.exec", target.client.new_inbox());
    let mut pieces = target
        .client
        .subscribe(output.clone())
        .await
        .map_err(|err| Failure::berth(format!("cannot subscribe for exec output: {err}")))?;
    let request = ExecRequest {
        id: args.container.clone(),
        cmd: args.command.clone(),
        env: args.env.clone(),
        user: args.user.clone(),
        workdir: args.workdir.clone(),
        output,
    };
    let reply = target.call::<_, ExecExit>(ExecVerb::Exec, &request, Some(WAIT_DEADLINE));
    tokio::pin!(reply);
    let mut eof = false;
    let exit = loop {
        tokio::select! {
            exit = &mut reply => break exit.map_err(failure)?,
            message = pieces.next(), if !eof => {
                let Some(message) = message else { eof = true; continue };
                if let Ok(piece) = Encoding::Bincode.decode::<ExecOutput>(&message.payload) {
                    write_piece(&piece);
                    eof = piece.eof;
                }
            }
        }
    };
    // Output is published before the reply; take what is still queued.
    while !eof {
        match tokio::time::timeout(Duration::from_secs(2), pieces.next()).await {
            Ok(Some(message)) => {
                if let Ok(piece) = Encoding::Bincode.decode::<ExecOutput>(&message.payload) {
                    write_piece(&piece);
                    eof = piece.eof;
                }
            }
            _ => break,
        }
    }
    if let Some(error) = &exit.error {
        eprintln!("berth: {error}");
    }
    Ok(ExitCode::from(exit.exit_code.clamp(0, 255) as u8))
}

fn write_piece(piece: &ExecOutput) {
    if piece.stderr {
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(&piece.data);
        let _ = err.flush();
    } else {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(&piece.data);
        let _ = out.flush();
    }
}

/// Docker's CPU %: container CPU time over wall time between two samples, times 100.
pub fn cpu_percent(before: &ContainerStats, after: &ContainerStats) -> f64 {
    let cpu = after.cpu_usage_ns.saturating_sub(before.cpu_usage_ns) as f64;
    let wall = after.read_ns.saturating_sub(before.read_ns) as f64;
    if wall <= 0.0 {
        return 0.0;
    }
    cpu / wall * 100.0
}

fn mib(bytes: u64) -> String {
    format!("{:.1}MiB", bytes as f64 / (1 << 20) as f64)
}

async fn stats(
    args: StatsArgs,
    nats: &NatsSettings,
    timeout: Duration,
) -> Result<ExitCode, Failure> {
    let target = Target::connect(nats, &args.node, timeout).await?;
    let ids = if args.containers.is_empty() {
        let list: ContainerList = target
            .call(ExecVerb::List, &ContainerListRequest { all: false }, None)
            .await
            .map_err(failure)?;
        list.containers.into_iter().map(|c| c.id).collect()
    } else {
        args.containers.clone()
    };
    let sample = |ids: Vec<String>| {
        let target = &target;
        async move {
            let mut out = Vec::new();
            for id in ids {
                let stats: ContainerStats = target
                    .call(ExecVerb::Stats, &ContainerRef { id }, None)
                    .await
                    .map_err(failure)?;
                out.push(stats);
            }
            Ok::<_, Failure>(out)
        }
    };
    let mut before = sample(ids.clone()).await?;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = sample(ids.clone()).await?;
        println!(
            "{:<12}  {:<20}  {:>7}  {:>22}  {:>5}",
            "CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "PIDS"
        );
        for (b, a) in before.iter().zip(&after) {
            let limit = a.memory_limit.map_or_else(|| "-".to_string(), mib);
            println!(
                "{:<12}  {:<20}  {:>6.2}%  {:>22}  {:>5}",
                &a.id[..a.id.len().min(12)],
                a.name,
                cpu_percent(b, a),
                format!("{} / {limit}", mib(a.memory_usage)),
                a.pids
            );
        }
        if args.no_stream {
            return Ok(ExitCode::SUCCESS);
        }
        before = after;
    }
}

fn status_text(
    status: berth_proto::messages::exec::ContainerStatus,
    exit_code: Option<i32>,
) -> String {
    use berth_proto::messages::exec::ContainerStatus as S;
    match (status, exit_code) {
        (S::Running, _) => "Up".to_string(),
        (S::Exited, Some(code)) => format!("Exited ({code})"),
        (other, _) => {
            let text = other.as_str();
            let mut chars = text.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        }
    }
}

async fn ps(args: PsArgs, nats: &NatsSettings, timeout: Duration) -> Result<ExitCode, Failure> {
    let target = Target::connect(nats, &args.node, timeout).await?;
    let list: ContainerList = target
        .call(
            ExecVerb::List,
            &ContainerListRequest { all: args.all },
            None,
        )
        .await
        .map_err(|err| match err.kind() {
            Some(ErrorKind::NotFound) => Failure::berth("no containers"),
            _ => failure(err),
        })?;
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
    println!(
        "{:<12}  {:<20}  {:<22}  {:<30}  {:<12}  NAMES",
        "CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS"
    );
    for c in &list.containers {
        let mut command = c.command.join(" ");
        if command.chars().count() > 20 {
            command = command.chars().take(19).collect::<String>() + "…";
        }
        println!(
            "{:<12}  {:<20}  {:<22}  {:<30}  {:<12}  {}",
            &c.id[..c.id.len().min(12)],
            c.image,
            format!("\"{command}\""),
            c.created,
            status_text(c.status, c.exit_code),
            c.name
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_binds_and_restart_policies_parse() {
        assert_eq!(parse_size("64m"), Ok(64 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("2kb"), Ok(2048));
        assert!(parse_size("lots").is_err());
        assert_eq!(
            parse_bind("/a:/b:ro"),
            Ok(BindMount {
                source: "/a".into(),
                destination: "/b".into(),
                read_only: true
            })
        );
        assert!(parse_bind("vol:/b").is_err());
        assert_eq!(
            parse_restart("on-failure:2"),
            Ok(RestartPolicy::OnFailure { max_retries: 2 })
        );
        assert_eq!(parse_restart("always"), Ok(RestartPolicy::Always));
        assert!(parse_restart("sometimes").is_err());
        assert_eq!(
            parse_ulimit("nofile=10:20"),
            Ok(Ulimit {
                name: "nofile".into(),
                soft: 10,
                hard: 20
            })
        );
        assert_eq!(parse_ulimit("core=0").map(|u| (u.soft, u.hard)), Ok((0, 0)));
        assert!(parse_ulimit("nofile").is_err());
        assert_eq!(parse_swap("-1"), Ok(-1));
        assert_eq!(
            parse_env_file("# c\nA=1\n\n B=two words \n"),
            vec!["A=1".to_string(), "B=two words".to_string()]
        );
    }

    #[test]
    fn cpu_percent_is_cpu_time_over_wall_time() {
        let at = |read_ns, cpu_usage_ns| ContainerStats {
            id: "x".into(),
            name: "x".into(),
            read_ns,
            cpu_usage_ns,
            online_cpus: 2,
            memory_usage: 0,
            memory_limit: None,
            pids: 1,
        };
        let pct = cpu_percent(&at(0, 0), &at(1_000_000_000, 500_000_000));
        assert!((pct - 50.0).abs() < 1e-9, "{pct}");
        assert_eq!(cpu_percent(&at(5, 0), &at(5, 10)), 0.0);
    }

    #[test]
    fn cri_records_parse() {
        assert_eq!(
            parse_record(b"2026-01-01T00:00:00Z stderr P a b"),
            Some((true, true, &b"a b"[..]))
        );
        assert_eq!(
            parse_record(b"2026-01-01T00:00:00Z stdout F "),
            Some((false, false, &b""[..]))
        );
        assert_eq!(parse_record(b"garbage"), None);
    }
}
