use berth_bus::settings::CommonArgs;
use clap::Parser;
use std::process::ExitCode;

/// berth layer-unpacker: unpacks image layers once per node as overlay snapshots.
#[derive(Parser)]
#[command(name = "berth-layer-unpacker", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    berth_bus::bootstrap::run_service(
        berth_proto::subjects::service_names::LAYER_UNPACKER,
        "layer-unpacker",
        args.common,
        berth_layer_unpacker::run,
    )
}
