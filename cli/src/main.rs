//! `berth`: the operator CLI. It owns nothing; every verb is a request on the bus.

// First, so that its `outln!`/`out!` macros are in scope in every module below.
#[macro_use]
mod output;

mod containers;
mod df;
mod discovery;
mod events;
mod exit;
mod images;
mod network;
mod nodes;
mod pull;
mod snapshots;
mod system;
mod volumes;

use berth_bus::NatsSettings;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// berth: run containers on one host or a fleet, over NATS.
#[derive(Parser)]
#[command(name = "berth", version, propagate_version = true)]
struct Cli {
    /// NATS server URL(s), comma-separated.
    #[arg(long, global = true, env = "BERTH_NATS_URL", default_value = berth_bus::connect::DEFAULT_NATS_URL)]
    nats_url: String,
    /// NATS credentials file.
    #[arg(long, global = true, env = "BERTH_NATS_CREDS")]
    nats_creds: Option<PathBuf>,
    /// NATS user (with --nats-password).
    #[arg(long, global = true, env = "BERTH_NATS_USER")]
    nats_user: Option<String>,
    /// NATS password (with --nats-user).
    #[arg(
        long,
        global = true,
        env = "BERTH_NATS_PASSWORD",
        hide_env_values = true
    )]
    nats_password: Option<String>,
    /// Seconds to wait for a reply before giving up.
    #[arg(long, global = true, env = "BERTH_TIMEOUT", default_value_t = 10.0)]
    timeout: f64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Information about the berth installation.
    System {
        #[command(subcommand)]
        command: system::SystemCommand,
    },
    /// User networks of a node: create, ls, inspect, rm, connect, disconnect.
    Network {
        #[command(subcommand)]
        command: network::NetworkCommand,
    },
    /// Nodes of the fleet: ls, inspect, drain, activate.
    Node {
        #[command(subcommand)]
        command: nodes::NodeCommand,
    },
    #[command(flatten)]
    Images(images::ImagesCommand),
    #[command(flatten)]
    Containers(containers::ContainersCommand),
    #[command(flatten)]
    Transfer(pull::TransferCommand),
    /// Named volumes of a node.
    Volume {
        #[command(subcommand)]
        command: volumes::VolumeCommand,
    },
    /// Follow events (containers, images, nodes, snapshots) from the BERTH_EVENTS stream.
    Events(events::EventsArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return usage_exit(&err),
    };
    let nats = NatsSettings {
        url: cli.nats_url.clone(),
        creds: cli.nats_creds.clone(),
        user: cli.nats_user.clone(),
        password: cli.nats_password.clone(),
    };
    let timeout = std::time::Duration::from_secs_f64(cli.timeout.clamp(0.1, 3600.0));
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return exit::fail(exit::BERTH_ERROR, &format!("cannot start: {err}")),
    };
    let outcome = runtime.block_on(async move {
        match cli.command {
            Command::System { command } => system::run(command, &nats, timeout).await,
            Command::Network { command } => network::run(command, &nats, timeout).await,
            Command::Node { command } => nodes::run(command, &nats, timeout).await,
            Command::Images(command) => images::run(command, &nats, timeout).await,
            Command::Containers(command) => containers::run(command, &nats, timeout).await,
            Command::Transfer(command) => pull::run(command, &nats, timeout).await,
            Command::Volume { command } => volumes::run(command, &nats, timeout).await,
            Command::Events(args) => events::run(args, &nats, timeout).await,
        }
    });
    match outcome {
        Ok(code) => code,
        Err(failure) => exit::fail(failure.code, &failure.message),
    }
}

/// What clap could not parse, with Docker's exit codes: `--help` and `--version` print
/// and exit 0; a usage error prints clap's message on stderr and exits 125 (clap's own
/// default is 2, which a script would take for the container's exit code).
fn usage_exit(err: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    // clap prints help and version on stdout and errors on stderr; a closed stdout
    // (`berth --help | head -0`) is no failure worth reporting.
    let _ = err.print();
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => ExitCode::SUCCESS,
        _ => ExitCode::from(exit::BERTH_ERROR),
    }
}
