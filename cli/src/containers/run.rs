//! `run`: create, start, stream the output, exit with the container's code.

use super::logs::Follower;
use super::*;

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
                        volumes: true,
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
    let _session = super::interactive::Session::start(
        &target,
        &id,
        None,
        super::interactive::SessionOptions {
            stdin: args.create.interactive,
            tty: args.create.tty,
            resize_now: false,
        },
    )?;
    let mut follower = Follower {
        target: &target,
        id: id.clone(),
        next: 0,
        print: Default::default(),
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
                    volumes: true,
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
