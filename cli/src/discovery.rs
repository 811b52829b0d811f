//! Discovering services on the bus with the NATS micro `$SRV` protocol: one request,
//! every instance answers, replies are gathered until the bus goes quiet.

use async_nats::Client;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// Gathers every reply to `subject` (a `$SRV` verb): stops `quiet` after the last reply,
/// and in any case at `deadline`. Replies that do not parse as `T` are skipped: other
/// micro services may share the bus.
pub async fn gather<T: DeserializeOwned>(
    client: &Client,
    subject: &str,
    quiet: Duration,
    deadline: Duration,
) -> Result<Vec<T>, String> {
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(inbox.clone())
        .await
        .map_err(|err| format!("cannot subscribe for {subject} replies: {err}"))?;
    client
        .publish_with_reply(subject.to_string(), inbox, bytes::Bytes::new())
        .await
        .map_err(|err| format!("cannot send {subject}: {err}"))?;
    client
        .flush()
        .await
        .map_err(|err| format!("cannot send {subject}: {err}"))?;
    let mut gathered = Vec::new();
    let stop_at = tokio::time::Instant::now() + deadline;
    // Before the first reply, wait up to the deadline; after it, only `quiet` more.
    let mut wait = deadline;
    loop {
        let remaining = stop_at.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(wait.min(remaining), replies.next()).await {
            Ok(Some(message)) => {
                if let Ok(value) = serde_json::from_slice::<T>(&message.payload) {
                    gathered.push(value);
                }
                wait = quiet;
            }
            Ok(None) | Err(_) => break,
        }
    }
    Ok(gathered)
}

#[derive(serde::Deserialize)]
struct InfoWithMetadata {
    name: String,
    #[serde(default)]
    metadata: Option<std::collections::HashMap<String, String>>,
}

/// Node ids of every running instance of a node service (`berth-layer-unpacker`,
/// `berth-executor`), sorted and deduplicated.
pub async fn service_nodes(
    client: &Client,
    service: &str,
    deadline: Duration,
) -> Result<Vec<String>, String> {
    let infos: Vec<InfoWithMetadata> = gather(
        client,
        &berth_proto::subjects::micro::info(service),
        Duration::from_millis(200),
        deadline,
    )
    .await?;
    let mut nodes: Vec<String> = infos
        .into_iter()
        .filter(|info| info.name == service)
        .filter_map(|info| {
            info.metadata?
                .remove(berth_proto::subjects::metadata_keys::NODE_ID)
        })
        .collect();
    nodes.sort();
    nodes.dedup();
    Ok(nodes)
}

/// The node to address: the one given, or the only node running `service`.
pub async fn pick_node(
    client: &Client,
    service: &str,
    given: Option<String>,
    deadline: Duration,
) -> Result<String, String> {
    if let Some(node) = given {
        return Ok(node);
    }
    // 5 s for the first answer: a service busy starting up (an executor re-adopting
    // its containers on a loaded host) was seen to need more than 2.
    let nodes = service_nodes(client, service, deadline.min(Duration::from_secs(5))).await?;
    match nodes.as_slice() {
        [only] => Ok(only.clone()),
        [] => Err(format!("no {service} is running on the bus")),
        many => Err(format!(
            "{} nodes run {service} ({}): choose one with --node",
            many.len(),
            many.join(", ")
        )),
    }
}
