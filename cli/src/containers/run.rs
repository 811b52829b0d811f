//! `run`: place through the scheduler (create + start on the chosen node), stream the
//! output, exit with the container's code.
//!
//! The CLI picks the container id itself, so it can follow `berth.v1.logs.<id>` before
//! the container starts (no output lost) and a retried request cannot place twice.

use super::logs::Follower;
use super::*;
use berth_proto::subjects::EventKind;
use std::io::Read;

/// 64 random hex digits, as Docker ids.
fn new_id() -> Result<String, Failure> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|err| Failure::berth(format!("cannot read /dev/urandom: {err}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

pub(super) async fn run_container(
    args: RunArgs,
    nats: &NatsSettings,
    timeout: Duration,
) -> Result<ExitCode, Failure> {
    if args.rm && args.create.restart != RestartPolicy::No {
        return Err(Failure::berth(
            "conflicting options: --rm and --restart cannot be combined",
        ));
    }
    // Bad input is refused before anything exists.
    let detach_keys = args.attached.keys()?;
    if !args.detach {
        super::interactive::check_tty(args.create.interactive, args.create.tty)?;
    }
    let client = Target::client(nats, timeout).await?;
    let id = new_id()?;
    // The executor removes a --rm container when it exits, attached or not: a user who
    // detaches leaves nothing behind once it ends, as with Docker.
    let mut request = args.create.sched_request(args.rm)?;
    request.id = Some(id.clone());
    let mut live = if args.detach {
        None
    } else {
        Some(
            client
                .subscribe(subjects::logs(&id))
                .await
                .map_err(|err| Failure::berth(format!("cannot follow the logs of {id}: {err}")))?,
        )
    };
    // Its exit code, should the auto-removal beat the `wait` for it.
    let mut die = if args.detach || !args.rm {
        None
    } else {
        Some(
            client
                .subscribe(subjects::event(EventKind::Container, &id, "die"))
                .await
                .map_err(|err| {
                    Failure::berth(format!("cannot follow the events of {id}: {err}"))
                })?,
        )
    };
    let placed: Result<SchedRunReply, BusError> = sched_call(
        &client,
        SchedVerb::Run,
        &request,
        args.create.reply_deadline(),
    )
    .await;
    let placed = match placed {
        Ok(placed) => placed,
        Err(err) => {
            // Exit 126/127 like Docker when the command could not be run.
            let record: Result<ContainerRecord, BusError> = sched_call(
                &client,
                SchedVerb::Inspect,
                &SchedRef {
                    reference: id.clone(),
                },
                timeout,
            )
            .await;
            let code = record
                .ok()
                .and_then(|r| r.observed.exit_code)
                .filter(|c| *c == 126 || *c == 127);
            if args.rm {
                let _ = remove_one(&client, &args.create.node, &id, true, true, timeout).await;
            }
            let failure = failure(err);
            return Err(Failure {
                code: code.map_or(failure.code, |c| c as u8),
                message: failure.message,
            });
        }
    };
    let Some(live) = live.as_mut() else {
        outln!("{id}");
        return Ok(ExitCode::SUCCESS);
    };
    let target = Target {
        client: client.clone(),
        node: placed.node_id.clone(),
        timeout,
    };
    let session = super::interactive::Session::start(
        &target,
        &id,
        None,
        super::interactive::SessionOptions {
            stdin: args.create.interactive,
            tty: args.create.tty,
            resize_now: false,
            detach_keys,
        },
    )?;
    let _proxy = (args.attached.sig_proxy && !args.create.tty)
        .then(|| super::interactive::SignalProxy::start(&target, &id))
        .transpose()?;
    let follower = Follower {
        target: &target,
        id: id.clone(),
        next: 0,
        print: Default::default(),
        gone: false,
    };
    // Detached by the keys: the container runs on, as after `run -d`.
    let Some(exit) =
        super::attach::follow_to_exit(follower, live, die.as_mut(), true, session).await?
    else {
        return Ok(ExitCode::SUCCESS);
    };
    if args.rm {
        // The executor is removing it; removing here too returns once it is gone (the
        // scheduler's record included), as Docker's `run --rm` does.
        let removed: Result<SchedDone, BusError> = sched_call(
            &client,
            SchedVerb::Remove,
            &SchedRemoveRequest {
                reference: id.clone(),
                force: true,
                volumes: true,
            },
            Duration::from_secs(60).max(timeout),
        )
        .await;
        match removed {
            Ok(_) => {}
            // The executor's removal came first and its destroy event took the record.
            Err(err) if err.kind() == Some(ErrorKind::NotFound) => {}
            // Not removed (the executor died, say): a zero exit would tell a
            // script that all went well and hide the container left behind.
            Err(err) => {
                let failure = failure(err);
                return Err(Failure {
                    code: failure.code,
                    message: format!("removing {id}: {}", failure.message),
                });
            }
        }
    }
    Ok(ExitCode::from(exit.exit_code.clamp(0, 255) as u8))
}
