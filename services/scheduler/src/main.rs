use berth_bus::settings::CommonArgs;
use clap::Parser;
use std::process::ExitCode;

/// berth scheduler: desired state, node registry and placement.
#[derive(Parser)]
#[command(name = "berth-scheduler", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    berth_bus::bootstrap::run_service(
        berth_proto::subjects::service_names::SCHEDULER,
        "scheduler",
        args.common,
        berth_scheduler::run,
    )
}
