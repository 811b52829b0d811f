//! berth-layer-unpacker: owns the snapshots on one node's disk — each layer unpacked once
//! per chainID, in overlay form. Serves `berth.v1.unpack.<node>.*`.

pub mod config;

use berth_bus::bootstrap::Shutdown;
use berth_bus::settings::Settings;
use berth_bus::{ServiceHandle, ServiceIdentity};
use berth_proto::subjects::{queue_groups, service_names};

pub use config::Config;

/// Runs the layer-unpacker until `shutdown` resolves.
pub async fn run(
    client: async_nats::Client,
    settings: Settings<Config>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let snapshots_dir = settings.data_dir.join("snapshots");
    std::fs::create_dir_all(&snapshots_dir).map_err(|err| {
        anyhow::anyhow!(
            "cannot create snapshots dir {}: {err}",
            snapshots_dir.display()
        )
    })?;
    let service = ServiceHandle::start(
        &client,
        ServiceIdentity {
            name: service_names::LAYER_UNPACKER.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            node_id: settings.node_id.clone(),
            description: "berth layer snapshots of one node".to_string(),
            queue_group: queue_groups::LAYER_UNPACKER.to_string(),
        },
    )
    .await?;
    tracing::info!(node_id = %settings.node_id, snapshots = %snapshots_dir.display(), "layer-unpacker serving");
    service.serve_until(shutdown.wait()).await
}
pub mod snapshot;
