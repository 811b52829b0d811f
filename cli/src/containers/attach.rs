//! `attach`: a running container's live output, its stdin when it was created with `-i`,
//! and its exit code. Output comes from the container's log (live chunks, gaps filled
//! from history), so an executor restart while attached loses nothing.

use super::interactive;
use super::interactive::{Session, SessionOptions, SignalProxy};
use super::logs::{follow_live, transient, Follower, OUTAGE_PATIENCE};
use super::*;
use berth_proto::messages::exec::ContainerEvent;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct AttachArgs {
    #[command(flatten)]
    pub(super) node: NodeArg,
    /// Do not send stdin, even to a container created with -i.
    #[arg(long)]
    pub(super) no_stdin: bool,
    #[command(flatten)]
    pub(super) attached: super::create::AttachedArgs,
    pub(super) container: String,
}

pub(super) async fn attach(
    args: AttachArgs,
    nats: &NatsSettings,
    timeout: Duration,
) -> Result<ExitCode, Failure> {
    let detach_keys = args.attached.keys()?;
    let target = Target::connect(nats, &args.node, timeout).await?;
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
    let id = inspect.id.clone();
    interactive::check_tty(
        inspect.config.open_stdin && !args.no_stdin,
        inspect.config.tty,
    )?;
    if inspect.status != berth_proto::messages::exec::ContainerStatus::Running {
        return Err(Failure::berth(format!(
            "cannot attach to container {id}: it is not running (start it first)"
        )));
    }
    let mut live = target
        .client
        .subscribe(subjects::logs(&id))
        .await
        .map_err(|err| Failure::berth(format!("cannot follow the output of {id}: {err}")))?;
    // From the end: attach shows what comes, not what was (that is `logs`).
    let now: LogsPage = target
        .call(
            ExecVerb::Logs,
            &LogsRequest {
                id: id.clone(),
                from_offset: None,
                tail: Some(0),
                since_ns: None,
            },
            None,
        )
        .await
        .map_err(failure)?;
    let stdin = inspect.config.open_stdin && !args.no_stdin;
    let session = Session::start(
        &target,
        &id,
        None,
        SessionOptions {
            stdin,
            tty: inspect.config.tty,
            resize_now: inspect.config.tty,
            detach_keys,
        },
    )?;
    let _proxy = (args.attached.sig_proxy && !inspect.config.tty)
        .then(|| SignalProxy::start(&target, &id))
        .transpose()?;
    let follower = Follower {
        target: &target,
        id: id.clone(),
        next: now.end,
        print: Default::default(),
        gone: false,
    };
    match follow_to_exit(follower, &mut live, None, now.running, session).await? {
        Some(exit) => Ok(ExitCode::from(exit.exit_code.clamp(0, 255) as u8)),
        None => Ok(ExitCode::SUCCESS),
    }
}

/// Prints a container's output until it exits and returns its exit, riding out an
/// executor that is away (its monitor keeps the log and the exit status meanwhile);
/// `None` if the user detached first. `die`, a subscription to the container's `die`
/// events made before it started, answers when an auto-removal (`--rm`) took the
/// container and its exit before the executor was asked.
pub(super) async fn follow_to_exit(
    mut follower: Follower<'_>,
    live: &mut async_nats::Subscriber,
    mut die: Option<&mut async_nats::Subscriber>,
    running: bool,
    mut session: Session,
) -> Result<Option<ContainerExit>, Failure> {
    let target = follower.target;
    let id = follower.id.clone();
    if !follow_live(&mut follower, live, running, Some(&mut session)).await? {
        return Ok(None);
    }
    drop(session);
    let started = Instant::now();
    let exit = loop {
        match target
            .call::<_, ContainerExit>(
                ExecVerb::Wait,
                &ContainerWaitRequest {
                    id: id.clone(),
                    timeout_ms: None,
                },
                Some(Duration::from_secs(60)),
            )
            .await
        {
            Ok(exit) => break exit,
            Err(err) if transient(&err) && started.elapsed() < OUTAGE_PATIENCE => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(err) if err.kind() == Some(ErrorKind::NotFound) => {
                match died(die.as_deref_mut(), &id).await {
                    Some(exit) => break exit,
                    None => return Err(failure(err)),
                }
            }
            Err(err) => return Err(failure(err)),
        }
    };
    // Lines written between the last page and the exit record.
    let _ = follower.catch_up(None).await;
    Ok(Some(exit))
}

/// The exit a `die` event reported (published before any auto-removal, so it is
/// already buffered when the removal is seen); the last one if there were several.
async fn died(die: Option<&mut async_nats::Subscriber>, id: &str) -> Option<ContainerExit> {
    let die = die?;
    let mut exit = None;
    loop {
        let wait = if exit.is_some() {
            Duration::ZERO
        } else {
            Duration::from_secs(5)
        };
        let Ok(Some(message)) = tokio::time::timeout(wait, die.next()).await else {
            return exit;
        };
        let Ok(event) = serde_json::from_slice::<ContainerEvent>(&message.payload) else {
            continue;
        };
        exit = Some(ContainerExit {
            id: id.to_string(),
            exit_code: event.exit_code.unwrap_or(-1),
            oom_killed: event.oom_killed,
            error: None,
        });
    }
}
