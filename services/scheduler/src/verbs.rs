//! The request verbs besides `run`: container records (`list`, `inspect`), verbs that go
//! on to the container's node (`stop`, `kill`, `remove`), and the node registry
//! (`nodes`, `node_inspect`, `drain`, `activate`).

use berth_bus::Handled;
use berth_proto::messages::exec::{
    ContainerDone, ContainerKillRequest, ContainerRef, ContainerRemoveRequest, ContainerStarted,
    ContainerStopRequest,
};
use berth_proto::messages::node::{NodeList, NodeListRequest, NodeState};
use berth_proto::messages::sched::{
    admin_key, ContainerRecord, NodeAdmin, NodeDetail, NodeRef, SchedDone, SchedKillRequest,
    SchedList, SchedListRequest, SchedRef, SchedRemoveRequest, SchedStopRequest, Tombstone,
};
use berth_proto::subjects::{self, ExecVerb};
use berth_proto::{ErrorEnvelope, ErrorKind};
use std::time::Duration;
use tracing::Instrument;

use crate::sched::{upstream, Scheduler};
use crate::store;
use crate::view::{now_ms, ResolveError};

/// Whether `kill -s SIGNAL` is meant to end the container (SIGKILL, the default, and
/// the usual stop signals) rather than to tell it something (SIGHUP, SIGUSR1…).
pub fn kill_stops(signal: Option<&str>) -> bool {
    let Some(signal) = signal else {
        return true;
    };
    let name = signal.trim().to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    matches!(
        name,
        "KILL" | "9" | "TERM" | "15" | "INT" | "2" | "QUIT" | "3"
    )
}

impl Scheduler {
    fn resolve(&self, reference: &str) -> Handled<ContainerRecord> {
        if reference.is_empty() {
            return Err(ErrorEnvelope::invalid("a container id or name is required"));
        }
        self.view.resolve(reference).map_err(|err| match err {
            ResolveError::NotFound => {
                ErrorEnvelope::not_found(format!("no such container: {reference}"))
            }
            ResolveError::Ambiguous => ErrorEnvelope::invalid(format!(
                "{reference} matches several containers: use more of the id"
            )),
        })
    }

    /// The node a record runs on, if that node is reachable in principle.
    fn live_node(&self, record: &ContainerRecord) -> Option<String> {
        let node = record.observed.node_id.clone()?;
        let state = self
            .view
            .node(&node)
            .map(|n| n.state(now_ms(), self.view.lost_after()))
            .unwrap_or(NodeState::Lost);
        (state != NodeState::Lost).then_some(node)
    }

    /// `list`
    pub async fn list(&self, request: SchedListRequest) -> Handled<SchedList> {
        let mut containers: Vec<ContainerRecord> = self
            .view
            .containers()
            .into_iter()
            .filter(|r| {
                request
                    .node
                    .as_deref()
                    .is_none_or(|n| r.observed.node_id.as_deref() == Some(n))
            })
            .collect();
        containers.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(a.id.cmp(&b.id)));
        let mut removed: Vec<String> = self
            .view
            .tombstones()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        removed.sort();
        Ok(SchedList {
            containers,
            removed,
        })
    }

    /// `inspect`
    pub async fn inspect(&self, request: SchedRef) -> Handled<ContainerRecord> {
        self.resolve(&request.reference)
    }

    /// Records the user's wish to have the container stopped (or running again) before
    /// the verb goes to the node, so that a node lost meanwhile does not re-place a
    /// container the user stopped.
    async fn remember_stopped(&self, id: &str, stopped: bool) -> Handled<()> {
        store::update_record(&self.containers_kv, &self.view, id, |r| {
            if r.desired.stopped == stopped && (stopped || r.desired.start) {
                return false;
            }
            r.desired.stopped = stopped;
            if !stopped {
                // Started by hand: a re-placement starts it too.
                r.desired.start = true;
            }
            true
        })
        .await?;
        Ok(())
    }

    /// `start`: the container on its node; the record says it is meant to run again.
    pub async fn start(&self, request: SchedRef) -> Handled<SchedDone> {
        let record = self.resolve(&request.reference)?;
        let node = self.node_for_verb(&record, "start")?;
        self.remember_stopped(&record.id, false).await?;
        let _: ContainerStarted = self
            .exec(
                &node,
                ExecVerb::Start,
                &ContainerRef {
                    id: record.id.clone(),
                },
                Duration::from_secs(150),
            )
            .await
            .map_err(|err| upstream(&format!("starting {} on node {node}", record.id), err))?;
        Ok(SchedDone {
            id: record.id,
            node_id: Some(node),
        })
    }

    /// `stop`: remembered in the record (`desired.stopped`), then sent to the node.
    pub async fn stop(&self, request: SchedStopRequest) -> Handled<SchedDone> {
        let record = self.resolve(&request.reference)?;
        let node = self.node_for_verb(&record, "stop")?;
        self.remember_stopped(&record.id, true).await?;
        let grace = u64::from(request.timeout_seconds.unwrap_or(300));
        let _: ContainerDone = self
            .exec(
                &node,
                ExecVerb::Stop,
                &ContainerStopRequest {
                    id: record.id.clone(),
                    timeout_seconds: request.timeout_seconds,
                },
                Duration::from_secs(grace + 60),
            )
            .await
            .map_err(|err| upstream(&format!("stopping {} on node {node}", record.id), err))?;
        Ok(SchedDone {
            id: record.id,
            node_id: Some(node),
        })
    }

    /// `kill`: a signal that ends the container is remembered as a stop.
    pub async fn kill(&self, request: SchedKillRequest) -> Handled<SchedDone> {
        let record = self.resolve(&request.reference)?;
        let node = self.node_for_verb(&record, "kill")?;
        if kill_stops(request.signal.as_deref()) {
            self.remember_stopped(&record.id, true).await?;
        }
        let _: ContainerDone = self
            .exec(
                &node,
                ExecVerb::Kill,
                &ContainerKillRequest {
                    id: record.id.clone(),
                    signal: request.signal,
                },
                Duration::from_secs(30),
            )
            .await
            .map_err(|err| upstream(&format!("killing {} on node {node}", record.id), err))?;
        Ok(SchedDone {
            id: record.id,
            node_id: Some(node),
        })
    }

    fn node_for_verb(&self, record: &ContainerRecord, verb: &str) -> Handled<String> {
        match (&record.observed.node_id, self.live_node(record)) {
            (_, Some(node)) => Ok(node),
            (Some(node), None) => Err(ErrorEnvelope::unavailable(format!(
                "cannot {verb} {}: its node {node} is lost",
                record.id
            ))),
            (None, None) => Err(ErrorEnvelope::conflict(format!(
                "cannot {verb} {}: it is {} (remove it with rm)",
                record.id,
                record.observed.phase.as_str()
            ))),
        }
    }

    /// `remove`: the container on its node (when the node is there), then its record and
    /// its reservation. A container on a lost node leaves a tombstone (`gone.<id>`) in
    /// place of its record: once the node is back, the reconcile loop removes the
    /// container there and then the tombstone.
    pub async fn remove(&self, request: SchedRemoveRequest) -> Handled<SchedDone> {
        let record = self.resolve(&request.reference)?;
        let span = tracing::info_span!("remove", container_id = %record.id);
        self.remove_record(record, request).instrument(span).await
    }

    async fn remove_record(
        &self,
        record: ContainerRecord,
        request: SchedRemoveRequest,
    ) -> Handled<SchedDone> {
        let id = record.id.clone();
        if let Some(node) = self.live_node(&record) {
            let removed: Result<ContainerDone, _> = self
                .exec(
                    &node,
                    ExecVerb::Remove,
                    &ContainerRemoveRequest {
                        id: id.clone(),
                        force: request.force,
                        volumes: request.volumes,
                    },
                    Duration::from_secs(60),
                )
                .await;
            match removed {
                Ok(_) => {}
                Err(err) if err.kind() == Some(ErrorKind::NotFound) => {}
                Err(err) => return Err(upstream(&format!("removing {id} on node {node}"), err)),
            }
        } else if let Some(node) = &record.observed.node_id {
            // Written before the record goes: a scheduler dying in between leaves a
            // tombstone and a record, and the next `rm` finishes the job.
            store::put_tombstone(
                &self.containers_kv,
                &self.view,
                &id,
                &Tombstone {
                    node_id: node.clone(),
                    volumes: request.volumes,
                    removed_ms: now_ms(),
                },
            )
            .await?;
            tracing::info!(node = %node, "its node is lost: removed there once it is back");
        }
        store::delete_record(&self.containers_kv, &self.view, &id, |_| true).await?;
        if let Some(node) = &record.observed.node_id {
            store::release(&self.nodes_kv, &self.view, node, &id).await?;
        }
        Ok(SchedDone {
            id,
            node_id: record.observed.node_id,
        })
    }

    /// `nodes`
    pub async fn nodes(&self, request: NodeListRequest) -> Handled<NodeList> {
        let nodes = self
            .view
            .node_records()
            .into_iter()
            .filter(|n| request.state.is_none_or(|s| s == n.state))
            .collect();
        Ok(NodeList { nodes })
    }

    /// `node_inspect`
    pub async fn node_inspect(&self, request: NodeRef) -> Handled<NodeDetail> {
        subjects::check_token("node id", &request.node_id).map_err(ErrorEnvelope::invalid)?;
        let entry = self
            .view
            .node(&request.node_id)
            .filter(|e| e.heartbeat.is_some())
            .ok_or_else(|| {
                ErrorEnvelope::not_found(format!("no such node: {}", request.node_id))
            })?;
        Ok(NodeDetail {
            node: entry.shown(&request.node_id, now_ms(), self.view.lost_after()),
            containers: entry.alloc.containers.keys().cloned().collect(),
        })
    }

    /// `drain` / `activate`: writes `<node>.admin`; the reconcile loop moves containers.
    pub async fn set_admin(&self, request: NodeRef, state: NodeState) -> Handled<NodeDetail> {
        // Refuse before writing anything: an unknown node gets no admin key.
        self.node_inspect(request.clone()).await?;
        let admin = NodeAdmin {
            state,
            updated_ms: now_ms(),
        };
        let body = serde_json::to_vec(&admin)
            .map_err(|err| ErrorEnvelope::internal(format!("cannot encode: {err}")))?;
        let key = admin_key(&request.node_id);
        let revision = self
            .nodes_kv
            .put(key.as_str(), body.clone().into())
            .await
            .map_err(|err| ErrorEnvelope::unavailable(format!("writing {key}: {err}")))?;
        self.view.apply_node(&key, Some(&body), revision);
        tracing::info!(node = %request.node_id, state = ?state, "node state set");
        self.node_inspect(request).await
    }
}

#[cfg(test)]
mod tests {
    use super::kill_stops;

    #[test]
    fn only_signals_that_end_the_container_count_as_a_stop() {
        for signal in [
            None,
            Some("KILL"),
            Some("sigkill"),
            Some("9"),
            Some("SIGTERM"),
        ] {
            assert!(kill_stops(signal), "{signal:?}");
        }
        for signal in ["HUP", "SIGUSR1", "1", "WINCH"] {
            assert!(!kill_stops(Some(signal)), "{signal}");
        }
    }
}
