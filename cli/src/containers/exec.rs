//! `exec`: a command in a running container, its output streamed back.

use super::interactive;
use super::*;

#[derive(clap::Args, Debug)]
pub struct ExecArgs {
    #[command(flatten)]
    pub(super) node: NodeArg,
    /// Environment variable KEY=value (repeatable).
    #[arg(short = 'e', long = "env")]
    pub(super) env: Vec<String>,
    /// user[:group], by name or number.
    #[arg(short = 'u', long)]
    pub(super) user: Option<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long)]
    pub(super) workdir: Option<String>,
    /// Send the CLI's stdin to the command.
    #[arg(short = 'i', long)]
    pub(super) interactive: bool,
    /// Give the command a pseudo-terminal.
    #[arg(short = 't', long)]
    pub(super) tty: bool,
    /// Keys that detach from the terminal and leave the command running (see `run`).
    #[arg(long, env = "BERTH_DETACH_KEYS", default_value = super::detach::DEFAULT)]
    pub(super) detach_keys: String,
    pub(super) container: String,
    /// Command and arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub(super) command: Vec<String>,
}

pub(super) async fn exec(
    args: ExecArgs,
    nats: &NatsSettings,
    timeout: Duration,
) -> Result<ExitCode, Failure> {
    let detach_keys = super::detach::parse(&args.detach_keys).map_err(Failure::berth)?;
    interactive::check_tty(args.interactive, args.tty)?;
    let (target, _) = Target::for_container(nats, &args.node, &args.container, timeout).await?;
    let output = format!("{}.exec", target.client.new_inbox());
    let mut pieces = target
        .client
        .subscribe(output.clone())
        .await
        .map_err(|err| Failure::berth(format!("cannot subscribe for exec output: {err}")))?;
    let exec_id =
        (args.interactive || args.tty).then(|| format!("{:016x}", interactive::random_u64()));
    let request = ExecRequest {
        id: args.container.clone(),
        cmd: args.command.clone(),
        env: args.env.clone(),
        user: args.user.clone(),
        workdir: args.workdir.clone(),
        output,
        open_stdin: args.interactive,
        tty: args.tty,
        console_size: args.tty.then(interactive::console_size).flatten(),
        exec_id: exec_id.clone(),
        timeout_ms: None,
    };
    let mut session = interactive::Session::start(
        &target,
        &args.container,
        exec_id,
        interactive::SessionOptions {
            stdin: args.interactive,
            tty: args.tty,
            resize_now: false,
            detach_keys,
        },
    )?;
    let reply = target.call::<_, ExecExit>(ExecVerb::Exec, &request, Some(WAIT_DEADLINE));
    tokio::pin!(reply);
    let mut eof = false;
    let exit = loop {
        tokio::select! {
            exit = &mut reply => break exit.map_err(failure)?,
            // The command runs on; its output goes nowhere until it ends.
            () = session.detached() => return Ok(ExitCode::SUCCESS),
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
        crate::output::write_bytes(&piece.data);
    }
}
