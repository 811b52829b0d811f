use berth_bus::settings::CommonArgs;
use clap::Parser;
use std::process::ExitCode;

/// berth executor: runs the containers of one node.
#[derive(Parser)]
#[command(name = "berth-executor", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
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
        berth_executor::run,
    )
}
