//! The node registry: records written by executors into `berth-nodes`, read here with the
//! liveness rule applied (a node silent for longer than `lost_after` is lost).

use async_nats::jetstream::kv;
use berth_proto::messages::node::{NodeList, NodeListRequest, NodeRecord, NodeState};
use berth_proto::ErrorEnvelope;
use futures::TryStreamExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The state a record shows at `now_ms`: its own, unless its heartbeat is too old.
pub fn effective_state(record: &NodeRecord, now_ms: u64, lost_after: Duration) -> NodeState {
    let silent_for = now_ms.saturating_sub(record.last_heartbeat_ms);
    if u128::from(silent_for) > lost_after.as_millis() {
        NodeState::Lost
    } else {
        record.state
    }
}

/// Reads node records; cheap to clone.
#[derive(Clone)]
pub struct NodeRegistry {
    kv: kv::Store,
    lost_after: Duration,
}

impl NodeRegistry {
    /// Wraps the `berth-nodes` bucket.
    pub fn new(kv: kv::Store, lost_after: Duration) -> Self {
        NodeRegistry { kv, lost_after }
    }

    /// Every node, sorted by id, with the liveness rule applied.
    pub async fn list(&self, request: &NodeListRequest) -> Result<NodeList, ErrorEnvelope> {
        let unavailable = |err: &dyn std::fmt::Display| {
            ErrorEnvelope::unavailable(format!("cannot read the node registry: {err}"))
        };
        let keys: Vec<String> = match self.kv.keys().await {
            Ok(keys) => keys.try_collect().await.map_err(|err| unavailable(&err))?,
            Err(err) => return Err(unavailable(&err)),
        };
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut nodes = Vec::new();
        for key in keys {
            let Some(value) = self.kv.get(&key).await.map_err(|err| unavailable(&err))? else {
                continue;
            };
            let mut record: NodeRecord = match serde_json::from_slice(&value) {
                Ok(record) => record,
                Err(err) => {
                    tracing::warn!(node = %key, error = %err, "unreadable node record skipped");
                    continue;
                }
            };
            record.state = effective_state(&record, now_ms, self.lost_after);
            if request.state.is_none_or(|wanted| wanted == record.state) {
                nodes.push(record);
            }
        }
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(NodeList { nodes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::messages::node::Resources;

    fn record(last_heartbeat_ms: u64, state: NodeState) -> NodeRecord {
        NodeRecord {
            node_id: "n1".into(),
            state,
            capacity: Resources::default(),
            allocated: Resources::default(),
            labels: Default::default(),
            chain_ids: vec![],
            containers: 0,
            last_heartbeat_ms,
            executor_version: "0.1.0".into(),
            ports: Vec::new(),
        }
    }

    #[test]
    fn a_silent_node_is_lost_and_a_fresh_one_keeps_its_state() {
        let lost_after = Duration::from_secs(10);
        assert_eq!(
            effective_state(&record(1_000, NodeState::Ready), 10_999, lost_after),
            NodeState::Ready
        );
        assert_eq!(
            effective_state(&record(1_000, NodeState::Ready), 11_001, lost_after),
            NodeState::Lost
        );
        assert_eq!(
            effective_state(&record(5_000, NodeState::Draining), 6_000, lost_after),
            NodeState::Draining
        );
        // A clock behind the record's (another host's clock) is not "silence".
        assert_eq!(
            effective_state(&record(9_000, NodeState::Ready), 1_000, lost_after),
            NodeState::Ready
        );
    }
}
