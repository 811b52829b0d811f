use berth_bus::settings::CommonArgs;
use clap::Parser;
use std::process::ExitCode;

/// berth image-store: pull, import, store, tag and delete images (blobs in JetStream).
#[derive(Parser)]
#[command(name = "berth-image-store", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    berth_bus::bootstrap::run_service(
        berth_proto::subjects::service_names::IMAGE_STORE,
        "image-store",
        args.common,
        berth_image_store::run,
    )
}
