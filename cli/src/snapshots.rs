//! `berth image unpack`: pre-warm a node by unpacking an image's layers there.

use crate::discovery::pick_node;
use crate::exit::Failure;
use berth_bus::{connect_once, request, request_with_progress, BusError, NatsSettings};
use berth_proto::messages::image::{ImageInspect, ImageInspectRequest};
use berth_proto::messages::unpack::{
    image_pin, PrepareProgress, PrepareReply, PrepareRequest, SnapshotReleaseRequest,
    SnapshotsReleased,
};
use berth_proto::subjects::{self, service_names, ImageVerb, UnpackVerb};
use berth_proto::Encoding;
use berth_proto::ErrorKind;
use std::process::ExitCode;
use std::time::Duration;

/// A bus error as the CLI reports it.
pub fn bus_failure(err: BusError) -> Failure {
    match err {
        BusError::Service(envelope) => Failure::berth(envelope.message),
        other => Failure::berth(other.to_string()),
    }
}

/// `berth image unpack IMAGE [--node N] [--json] [--release]`
pub async fn image_unpack(
    nats: &NatsSettings,
    timeout: Duration,
    image: String,
    node: Option<String>,
    json: bool,
    release: bool,
) -> Result<ExitCode, Failure> {
    let client = connect_once(nats, "berth-cli", timeout.min(Duration::from_secs(5)))
        .await
        .map_err(|err| Failure::berth(err.to_string()))?;
    let node = pick_node(&client, service_names::LAYER_UNPACKER, node, timeout)
        .await
        .map_err(Failure::berth)?;
    // The pin names the manifest digest, so that it goes with the image (`rmi`).
    let digest = match request::<_, ImageInspect>(
        &client,
        &subjects::image(ImageVerb::Inspect),
        &ImageInspectRequest {
            name: image.clone(),
        },
        Encoding::Bincode,
        timeout,
    )
    .await
    {
        Ok(found) => found.digest,
        // Releasing the pin of an image already deleted: its digest is all there is.
        Err(err) if release && err.kind() == Some(ErrorKind::NotFound) && image.contains(':') => {
            image.clone()
        }
        Err(err) => return Err(bus_failure(err)),
    };
    if release {
        let released: SnapshotsReleased = request(
            &client,
            &subjects::unpack(&node, UnpackVerb::Release),
            &SnapshotReleaseRequest {
                user: image_pin(&digest),
            },
            Encoding::Bincode,
            timeout,
        )
        .await
        .map_err(bus_failure)?;
        eprintln!(
            "{image} ({digest}) on node {}: {} snapshots released",
            released.node_id, released.released
        );
        return Ok(ExitCode::SUCCESS);
    }
    // Unpacking a large image takes as long as it takes; the unpacker's progress
    // heartbeats show it is alive, and their absence for --timeout means it is not.
    let reply: PrepareReply = request_with_progress(
        &client,
        &subjects::unpack(&node, UnpackVerb::Prepare),
        |progress| PrepareRequest {
            image: digest.clone(),
            user: Some(image_pin(&digest)),
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
