//! The few lines every service `main` shares: settings, tracing, NATS, signal, run.

use crate::settings::{resolve, CommonArgs, Settings};
use crate::{connect_service, shutdown};
use async_nats::Client;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::process::ExitCode;

pub use crate::shutdown::Shutdown;

/// Resolves settings for `service_dir` (`config/<service_dir>.toml`), sets up logging,
/// connects to NATS (retrying until it is there) and runs `run` until SIGTERM/SIGINT.
pub fn run_service<T, F, Fut>(
    service_name: &str,
    service_dir: &str,
    args: CommonArgs,
    run: F,
) -> ExitCode
where
    T: DeserializeOwned + Default,
    F: FnOnce(Client, Settings<T>, Shutdown) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let settings = match resolve::<T>(args, service_dir) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("{service_name}: {err:#}");
            return ExitCode::from(2);
        }
    };
    crate::telemetry::init(settings.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!(error = %err, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async move {
        tracing::info!(
            service = service_name,
            node_id = %settings.node_id,
            nats = %settings.nats.url,
            config = ?settings.config_path,
            "starting"
        );
        let client = connect_service(&settings.nats, service_name).await?;
        run(client, settings, shutdown::Shutdown::on_signal()).await
    });
    match outcome {
        Ok(()) => {
            tracing::info!(service = service_name, "stopped");
            ExitCode::SUCCESS
        }
        Err(err) => {
            tracing::error!(service = service_name, error = format!("{err:#}"), "failed");
            ExitCode::FAILURE
        }
    }
}
