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
