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
            berth_executor::run(client, settings, shutdown)
        },
    )
}
