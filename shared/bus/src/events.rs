//! Publishing events on `berth.v1.events.<kind>.<id>.<action>` (captured by the
//! `BERTH_EVENTS` stream). Bodies are JSON so that any tool following the stream can read
//! them; events are best effort: a lost event never fails the operation it reports.

use async_nats::{Client, HeaderMap};
use berth_proto::codec::{CONTENT_TYPE_HEADER, JSON_CONTENT_TYPE};
use berth_proto::subjects::{self, EventKind};
use serde::Serialize;

/// The subject token for an object id: digests lose their `sha256:` prefix so that the
/// token stays short and a subscriber can filter on the hex.
pub fn event_id(id: &str) -> &str {
    id.split_once(':').map_or(id, |(_, hex)| hex)
}

/// Publishes one event; failures are logged, never returned.
pub async fn publish<T: Serialize>(
    client: &Client,
    kind: EventKind,
    id: &str,
    action: &str,
    body: &T,
) {
    let subject = subjects::event(kind, event_id(id), action);
    let payload = match serde_json::to_vec(body) {
        Ok(payload) => payload,
        Err(err) => {
            tracing::warn!(subject, error = %err, "cannot encode event");
            return;
        }
    };
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE_HEADER, JSON_CONTENT_TYPE);
    if let Err(err) = client
        .publish_with_headers(subject.clone(), headers, payload.into())
        .await
    {
        tracing::warn!(subject, error = %err, "cannot publish event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_become_their_hex() {
        assert_eq!(event_id("sha256:abcd"), "abcd");
        assert_eq!(event_id("c0ffee"), "c0ffee");
    }
}
