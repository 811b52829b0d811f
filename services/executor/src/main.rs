use berth_bus::settings::CommonArgs;
use clap::Parser;
use std::process::ExitCode;

/// berth executor: runs the containers of one node.
#[derive(Parser)]
#[command(name = "berth-executor", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    network: berth_executor::network::config::NetworkArgs,
    /// Node label KEY=VALUE for placement constraints (repeatable; adds to the config's).
    #[arg(long = "label", env = "BERTH_NODE_LABELS", value_delimiter = ',')]
    labels: Vec<String>,
    /// CPUs the node offers the scheduler (default: the config's, else every host CPU).
    #[arg(long, env = "BERTH_CAPACITY_CPUS")]
    capacity_cpus: Option<f64>,
    /// Memory in bytes the node offers the scheduler (default: the config's, else all).
    #[arg(long, env = "BERTH_CAPACITY_MEMORY")]
    capacity_memory: Option<u64>,
    /// Architecture the node reports to the scheduler (default: the config's, else the host's).
    #[arg(long, env = "BERTH_NODE_ARCH")]
    arch: Option<String>,
}

fn main() -> ExitCode {
    // Containers are created by berth-monitor; this guard only matters if a future
    // change lets the runtime re-execute this binary as an init.
    berth_runtime::init_if_requested();
    let args = Args::parse();
    berth_bus::bootstrap::run_service(
        berth_proto::subjects::service_names::EXECUTOR,
        "executor",
        args.common,
        move |client,
              mut settings: berth_bus::settings::Settings<berth_executor::Config>,
              shutdown| {
            settings.service.network.apply(&args.network);
            if args.capacity_cpus.is_some() {
                settings.service.capacity.cpus = args.capacity_cpus;
            }
            if args.arch.is_some() {
                settings.service.arch = args.arch.clone();
            }
            if args.capacity_memory.is_some() {
                settings.service.capacity.memory_bytes = args.capacity_memory;
            }
            for label in &args.labels {
                let (key, value) = label.split_once('=').unwrap_or((label.as_str(), ""));
                settings
                    .service
                    .labels
                    .insert(key.trim().to_string(), value.trim().to_string());
            }
            berth_executor::run(client, settings, shutdown)
        },
    )
}
