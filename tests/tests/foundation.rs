//! The foundation end to end: real nats-server, real service binaries, real CLI.

use berth_bus::request::{decode_reply, raw_request};
use berth_bus::{request, BusError};
use berth_proto::messages::exec::{ContainerList, ContainerListRequest};
use berth_proto::messages::image::{ImageList, ImageListRequest};
use berth_proto::messages::node::{NodeList, NodeListRequest, NodeState};
use berth_proto::messages::unpack::{SnapshotList, SnapshotListRequest, SnapshotRemoveRequest};
use berth_proto::subjects::{self, ExecVerb, ImageVerb, SchedVerb, UnpackVerb};
use berth_proto::{Encoding, ErrorEnvelope, ErrorKind};
use berth_tests::{ping_count, Stack, ALL_SERVICES};
use std::time::Duration;

const NODE: &str = "node-a";
const DEADLINE: Duration = Duration::from_secs(5);

#[tokio::test]
async fn all_four_services_appear_in_system_info_json() -> anyhow::Result<()> {
    let stack = Stack::start(&ALL_SERVICES, NODE).await?;
    let output = stack.berth()?.args(["system", "info", "--json"]).output()?;
    assert!(
        output.status.success(),
        "berth system info failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout)?;
    let mut names: Vec<&str> = rows.iter().filter_map(|r| r["name"].as_str()).collect();
    names.sort_unstable();
    let mut expected = ALL_SERVICES.to_vec();
    expected.sort_unstable();
    assert_eq!(names, expected);
    for row in &rows {
        assert_eq!(row["node_id"], NODE, "{row}");
        assert_eq!(row["version"], env!("CARGO_PKG_VERSION"), "{row}");
        assert!(row["id"].as_str().is_some_and(|id| !id.is_empty()), "{row}");
        assert!(row["uptime_seconds"].as_u64().is_some(), "{row}");
    }
    let executor = rows
        .iter()
        .find(|r| r["name"] == "berth-executor")
        .ok_or_else(|| anyhow::anyhow!("no executor row"))?;
    let subjects_served: Vec<&str> = executor["endpoints"]
        .as_array()
        .map(|eps| eps.iter().filter_map(|e| e["subject"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        subjects_served.contains(&subjects::exec(NODE, ExecVerb::List).as_str()),
        "{subjects_served:?}"
    );

    // The table form names every service too.
    let table = stack.berth()?.args(["system", "info"]).output()?;
    let text = String::from_utf8_lossy(&table.stdout);
    for name in ALL_SERVICES {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    Ok(())
}

/// Sends `body` raw and expects an `invalid` envelope, in the request's encoding, with the
/// NATS micro error headers set.
async fn expect_invalid(
    client: &async_nats::Client,
    subject: &str,
    body: &'static [u8],
    encoding: Encoding,
) -> anyhow::Result<()> {
    let reply = raw_request(client, subject, body.into(), encoding, DEADLINE).await?;
    let headers = reply
        .headers
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("error reply without headers"))?;
    assert_eq!(
        headers
            .get(berth_proto::codec::SERVICE_ERROR_CODE_HEADER)
            .map(|v| v.as_str()),
        Some("400")
    );
    let envelope: ErrorEnvelope = encoding.decode(&reply.payload)?;
    assert_eq!(envelope.code, ErrorKind::Invalid, "{envelope:?}");
    assert!(envelope.message.contains("malformed"), "{envelope:?}");
    match decode_reply::<serde_json::Value>(subject, encoding, &reply) {
        Err(BusError::Service(e)) => assert_eq!(e.code, ErrorKind::Invalid),
        other => panic!("expected a typed invalid error, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn malformed_bodies_get_invalid_and_the_service_keeps_serving() -> anyhow::Result<()> {
    let stack = Stack::start(&ALL_SERVICES, NODE).await?;
    let client = stack.nats.client().await?;

    let exec_list = subjects::exec(NODE, ExecVerb::List);
    // A bool must be 0 or 1 in bincode.
    expect_invalid(&client, &exec_list, &[0x07], Encoding::Bincode).await?;
    expect_invalid(&client, &exec_list, b"{\"all\": tru", Encoding::Json).await?;
    expect_invalid(&client, &exec_list, b"[1,2,3]", Encoding::Json).await?;

    let image_list = subjects::image(ImageVerb::List);
    expect_invalid(&client, &image_list, &[0x05, 0xff, 0xff], Encoding::Bincode).await?;
    expect_invalid(&client, &image_list, b"not json at all", Encoding::Json).await?;

    let nodes = subjects::sched(SchedVerb::Nodes);
    expect_invalid(&client, &nodes, &[0x01, 0x09], Encoding::Bincode).await?;
    expect_invalid(&client, &nodes, b"{\"state\": \"sleepy\"}", Encoding::Json).await?;

    let unpack_remove = subjects::unpack(NODE, UnpackVerb::Remove);
    expect_invalid(&client, &unpack_remove, &[0xff], Encoding::Bincode).await?;
    expect_invalid(&client, &unpack_remove, b"{\"force\": 3}", Encoding::Json).await?;

    // Every service still answers well-formed requests, in both encodings.
    for encoding in [Encoding::Bincode, Encoding::Json] {
        let containers: ContainerList = request(
            &client,
            &exec_list,
            &ContainerListRequest { all: true },
            encoding,
            DEADLINE,
        )
        .await?;
        assert_eq!(containers.node_id, NODE);
        let images: ImageList = request(
            &client,
            &image_list,
            &ImageListRequest::default(),
            encoding,
            DEADLINE,
        )
        .await?;
        assert!(images.images.is_empty());
        let _: NodeList = request(
            &client,
            &nodes,
            &NodeListRequest::default(),
            encoding,
            DEADLINE,
        )
        .await?;
        let snapshots: SnapshotList = request(
            &client,
            &subjects::unpack(NODE, UnpackVerb::List),
            &SnapshotListRequest::default(),
            encoding,
            DEADLINE,
        )
        .await?;
        assert_eq!(snapshots.node_id, NODE);
        assert!(snapshots.snapshots.is_empty());
        // A well-formed request for something absent is `not_found`, not `invalid`.
        let missing: Result<serde_json::Value, _> = request(
            &client,
            &unpack_remove,
            &SnapshotRemoveRequest {
                chain_id: format!("sha256:{}", "0".repeat(64)),
                force: false,
            },
            encoding,
            DEADLINE,
        )
        .await;
        assert_eq!(
            missing.err().and_then(|e| e.kind()),
            Some(ErrorKind::NotFound)
        );
    }

    // A JSON caller with any NATS client gets a JSON reply.
    let reply = raw_request(&client, &exec_list, "{}".into(), Encoding::Json, DEADLINE).await?;
    let value: serde_json::Value = serde_json::from_slice(&reply.payload)?;
    assert_eq!(value["node_id"], NODE);
    Ok(())
}

#[tokio::test]
async fn the_executor_heartbeat_shows_up_in_the_scheduler_node_list() -> anyhow::Result<()> {
    let stack = Stack::start(&["berth-executor", "berth-scheduler"], NODE).await?;
    let client = stack.nats.client().await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let nodes: NodeList = request(
            &client,
            &subjects::sched(SchedVerb::Nodes),
            &NodeListRequest::default(),
            Encoding::Bincode,
            DEADLINE,
        )
        .await?;
        if let Some(node) = nodes.nodes.iter().find(|n| n.node_id == NODE) {
            assert_eq!(node.state, NodeState::Ready);
            assert!(node.capacity.cpu_millis >= 1000, "{node:?}");
            assert!(node.capacity.memory_bytes > 0, "{node:?}");
            return Ok(());
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {NODE} never appeared; executor log: {}",
            stack.log_of("berth-executor")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn services_answer_again_after_nats_server_restarts() -> anyhow::Result<()> {
    let mut stack = Stack::start(&ALL_SERVICES, NODE).await?;
    stack.nats.restart().await?;
    let restarted_at = tokio::time::Instant::now();
    let client = stack.nats.client().await?;
    let exec_list = subjects::exec(NODE, ExecVerb::List);
    let image_list = subjects::image(ImageVerb::List);
    let mut pending: Vec<&str> = ALL_SERVICES.to_vec();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for name in pending {
            if ping_count(&client, name, Duration::from_millis(200)).await? == 0 {
                still.push(name);
            }
        }
        pending = still;
        assert!(
            restarted_at.elapsed() < Duration::from_secs(10),
            "not back within 10 s: {pending:?}"
        );
    }
    // And their endpoints work, not just $SRV.
    let _: ContainerList = request(
        &client,
        &exec_list,
        &ContainerListRequest::default(),
        Encoding::Bincode,
        DEADLINE,
    )
    .await?;
    let _: ImageList = request(
        &client,
        &image_list,
        &ImageListRequest::default(),
        Encoding::Bincode,
        DEADLINE,
    )
    .await?;
    assert!(restarted_at.elapsed() < Duration::from_secs(10));
    Ok(())
}

#[tokio::test]
async fn services_exit_cleanly_on_sigterm() -> anyhow::Result<()> {
    let mut stack = Stack::start(&ALL_SERVICES, NODE).await?;
    for service in stack.services.iter_mut() {
        let status = service.terminate(Duration::from_secs(10)).await?;
        assert!(status.success(), "{} exited with {status}", service.name);
    }
    Ok(())
}

/// A service whose NATS server has gone for good still stops on SIGTERM (its micro
/// service stop and connection drain are bounded instead of waiting for the server).
#[tokio::test]
async fn services_exit_on_sigterm_after_their_nats_server_is_gone() -> anyhow::Result<()> {
    let mut stack = Stack::start(&ALL_SERVICES, NODE).await?;
    stack.nats.kill().await?;
    // Let every client notice the disconnect before the signal.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let exits = futures::future::join_all(stack.services.iter_mut().map(|service| async move {
        let status = service.terminate(Duration::from_secs(30)).await;
        (service.name.clone(), status)
    }))
    .await;
    for (name, status) in exits {
        let status = status?;
        assert!(status.success(), "{name} exited with {status}");
    }
    Ok(())
}

#[tokio::test]
async fn a_request_nobody_serves_is_a_typed_no_responders_error() -> anyhow::Result<()> {
    let stack = Stack::start(&[], NODE).await?;
    let client = stack.nats.client().await?;
    let result: Result<ContainerList, _> = request(
        &client,
        &subjects::exec("no-such-node", ExecVerb::List),
        &ContainerListRequest::default(),
        Encoding::Bincode,
        DEADLINE,
    )
    .await;
    assert!(
        matches!(result, Err(BusError::NoResponders { .. })),
        "{result:?}"
    );
    Ok(())
}

#[test]
fn system_info_without_a_server_exits_125_with_one_line() -> anyhow::Result<()> {
    let port = berth_tests::free_port()?;
    let url = format!("nats://127.0.0.1:{port}");
    let output = std::process::Command::new(berth_tests::bin_path("berth")?)
        .args(["system", "info"])
        .env("BERTH_NATS_URL", &url)
        .output()?;
    assert_eq!(output.status.code(), Some(125));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&url), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(output.stdout.is_empty());
    Ok(())
}
