//! `berth image unpack`: pre-warm a node by unpacking an image's layers there.

use crate::discovery::pick_node;
use crate::exit::Failure;
use berth_bus::{connect_once, request_with_progress, BusError, NatsSettings};
use berth_proto::messages::unpack::{PrepareProgress, PrepareReply, PrepareRequest};
use berth_proto::subjects::{self, service_names, UnpackVerb};
use berth_proto::Encoding;
use std::process::ExitCode;
use std::time::Duration;

/// A bus error as the CLI reports it.
pub fn bus_failure(err: BusError) -> Failure {
    match err {
        BusError::Service(envelope) => Failure::berth(envelope.message),
        other => Failure::berth(other.to_string()),
    }
}

/// `berth image unpack IMAGE [--node N] [--json]`
pub async fn image_unpack(
    nats: &NatsSettings,
    timeout: Duration,
    image: String,
    node: Option<String>,
    json: bool,
) -> Result<ExitCode, Failure> {
    let client = connect_once(nats, "berth-cli", timeout.min(Duration::from_secs(5)))
        .await
        .map_err(|err| Failure::berth(err.to_string()))?;
    let node = pick_node(&client, service_names::LAYER_UNPACKER, node, timeout)
        .await
        .map_err(Failure::berth)?;
    // Unpacking a large image takes as long as it takes; the unpacker's progress
    // heartbeats show it is alive, and their absence for --timeout means it is not.
    let reply: PrepareReply = request_with_progress(
        &client,
        &subjects::unpack(&node, UnpackVerb::Prepare),
        |progress| PrepareRequest {
            image: image.clone(),
            user: Some(format!("image:{image}")),
            progress: Some(progress),
        },
        Encoding::Bincode,
        timeout,
        |_: PrepareProgress| {},
    )
    .await
    .map_err(bus_failure)?;
    if json {
        let value = serde_json::json!({
            "node_id": reply.node_id,
            "image_digest": reply.image_digest,
            "lowerdirs": reply.lowerdirs,
            "unpacked": reply.unpacked,
            "reused": reply.reused,
            "snapshots": reply.snapshots.iter().map(|s| serde_json::json!({
                "id": s.id, "chain_id": s.chain_id, "diff_id": s.diff_id,
                "digest": s.digest, "size": s.size, "users": s.users,
            })).collect::<Vec<_>>(),
        });
        outln!("{value:#}");
    } else {
        eprintln!(
            "{image} ({}) on node {}: {} layers unpacked, {} already there",
            reply.image_digest, reply.node_id, reply.unpacked, reply.reused
        );
        for dir in &reply.lowerdirs {
            outln!("{dir}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
