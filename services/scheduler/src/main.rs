use berth_bus::settings::CommonArgs;
use clap::Parser;
use std::process::ExitCode;

/// berth scheduler: desired state, node registry and placement.
#[derive(Parser)]
#[command(name = "berth-scheduler", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Milliseconds of silence after which a node is lost (default: the config's, 10000).
    #[arg(long, env = "BERTH_NODE_LOST_AFTER_MS")]
    node_lost_after_ms: Option<u64>,
    /// Milliseconds after which a stuck dispatch is sent again (default: the config's, 30000).
    #[arg(long, env = "BERTH_REDISPATCH_AFTER_MS")]
    redispatch_after_ms: Option<u64>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    berth_bus::bootstrap::run_service(
        berth_proto::subjects::service_names::SCHEDULER,
        "scheduler",
        args.common,
        move |client,
              mut settings: berth_bus::settings::Settings<berth_scheduler::Config>,
              shutdown| {
            if args.node_lost_after_ms.is_some() {
                settings.service.node_lost_after_ms = args.node_lost_after_ms;
            }
            if args.redispatch_after_ms.is_some() {
                settings.service.redispatch_after_ms = args.redispatch_after_ms;
            }
            berth_scheduler::run(client, settings, shutdown)
        },
    )
}
