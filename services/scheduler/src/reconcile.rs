//! Desired vs observed, in every instance (each step is a compare-and-set, so instances
//! running it at once agree; container events are applied in `events.rs`): a pass every
//! interval places pending records, re-places containers of lost or draining nodes,
//! marks the ones without a restart policy lost, cleans a returning node of containers
//! that now run elsewhere, and frees reservations nothing holds any more.

use berth_bus::BusError;
use berth_proto::messages::exec::{
    ContainerDone, ContainerList, ContainerListRequest, ContainerRemoveRequest, ContainerStatus,
    RestartPolicy,
};
use berth_proto::messages::node::NodeState;
use berth_proto::messages::sched::{ContainerPhase, ContainerRecord, Tombstone};
use berth_proto::subjects::ExecVerb;
use berth_proto::ErrorKind;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use crate::sched::{Placement, Scheduler};
use crate::store;
use crate::view::now_ms;

/// A reservation no record explains is freed after this long (a placement reserves
/// first and claims the record right after).
const ORPHAN_GRACE_MS: u64 = 30_000;
/// A pending record is left to the `run` that made it for this long.
const PENDING_HANDOFF_MS: u64 = 2_000;

/// What the reconcile pass does with one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Nothing,
    /// Pending past its deadline: drop it.
    Expire,
    /// Pending: try to place it.
    Place,
    /// Its node is gone or draining: put it elsewhere.
    Replace {
        from: String,
        drain: bool,
    },
    /// Its node is lost and it has no restart policy.
    MarkLost,
    /// Stuck in `scheduled` (or `created` but meant to run): send create/start again.
    Redispatch,
}

/// The decision for one record given its node's state (pure, unit-tested).
pub fn step_for(
    record: &ContainerRecord,
    node_state: Option<NodeState>,
    now_ms: u64,
    redispatch_after_ms: u64,
) -> Step {
    let observed = &record.observed;
    // An explicit stop is remembered (Docker's rule): a stopped container stays where
    // it is, whatever its restart policy.
    let restarts = record.restart() != RestartPolicy::No && !record.desired.stopped;
    match observed.phase {
        ContainerPhase::Pending => {
            if now_ms > record.desired.pending_deadline_ms {
                Step::Expire
            } else if now_ms.saturating_sub(observed.updated_ms.min(record.created_ms))
                >= PENDING_HANDOFF_MS
                || observed.placements > 0
            {
                Step::Place
            } else {
                Step::Nothing
            }
        }
        ContainerPhase::Scheduled | ContainerPhase::Created | ContainerPhase::Running => {
            let Some(node) = observed.node_id.clone() else {
                return Step::Nothing;
            };
            match node_state.unwrap_or(NodeState::Lost) {
                NodeState::Lost if restarts => Step::Replace {
                    from: node,
                    drain: false,
                },
                NodeState::Lost => Step::MarkLost,
                NodeState::Draining if restarts => Step::Replace {
                    from: node,
                    drain: true,
                },
                NodeState::Ready | NodeState::Draining => {
                    let stuck = observed.phase == ContainerPhase::Scheduled
                        || (observed.phase == ContainerPhase::Created
                            && record.desired.start
                            && !record.desired.stopped);
                    if stuck && now_ms.saturating_sub(observed.updated_ms) > redispatch_after_ms {
                        Step::Redispatch
                    } else {
                        Step::Nothing
                    }
                }
            }
        }
        ContainerPhase::Exited | ContainerPhase::Lost => Step::Nothing,
    }
}

impl Scheduler {
    /// Runs reconcile passes every interval until aborted.
    pub async fn reconcile_loop(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(self.config.reconcile_interval());
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut previous: Option<HashMap<String, NodeState>> = None;
        loop {
            ticker.tick().await;
            let states: HashMap<String, NodeState> = self.view.node_states().into_iter().collect();
            for (node, state) in &states {
                let was = previous.as_ref().map(|p| p.get(node).copied());
                // At start (was = None) every live node is checked once; later, a node
                // that comes back from lost is.
                let returned = match was {
                    None => true,
                    Some(None) => false,
                    Some(Some(before)) => before == NodeState::Lost,
                };
                if returned && *state != NodeState::Lost {
                    let this = Arc::clone(&self);
                    let node = node.clone();
                    tokio::spawn(async move { this.node_returned(&node).await });
                }
            }
            previous = Some(states.clone());
            self.pass(&states).await;
        }
    }

    async fn pass(self: &Arc<Self>, states: &HashMap<String, NodeState>) {
        let now = now_ms();
        for record in self.view.containers() {
            if self.is_active(&record.id) {
                continue;
            }
            let node_state = record
                .observed
                .node_id
                .as_ref()
                .and_then(|n| states.get(n).copied());
            let redispatch_after = self.config.redispatch_after().as_millis() as u64;
            let step = step_for(&record, node_state, now, redispatch_after);
            if step == Step::Nothing {
                continue;
            }
            let this = Arc::clone(self);
            tokio::spawn(async move {
                let id = record.id.clone();
                let Some(_active) = this.activate(&id) else {
                    return;
                };
                let span = tracing::info_span!("reconcile", container_id = %id, step = ?step);
                this.apply(record, step).instrument(span).await;
            });
        }
        // Containers removed while their node was lost: removed there once it is back.
        for (id, tombstone) in self.view.tombstones() {
            let back = states
                .get(&tombstone.node_id)
                .is_some_and(|s| *s != NodeState::Lost);
            let key = berth_proto::messages::sched::gone_key(&id);
            if !back || self.is_active(&key) {
                continue;
            }
            let this = Arc::clone(self);
            tokio::spawn(async move {
                let Some(_active) = this.activate(&key) else {
                    return;
                };
                let span =
                    tracing::info_span!("tombstone", container_id = %id, node = %tombstone.node_id);
                this.bury(&id, &tombstone).instrument(span).await;
            });
        }
        // Reservations no record explains (a scheduler died between reserving and
        // claiming, or a record was removed behind our back).
        for node in states.keys() {
            let Some(entry) = self.view.node(node) else {
                continue;
            };
            for (id, (_, at)) in &entry.alloc.containers {
                if now.saturating_sub(*at) < ORPHAN_GRACE_MS {
                    continue;
                }
                let explained = self
                    .view
                    .container(id)
                    .is_some_and(|(r, _)| r.observed.node_id.as_deref() == Some(node.as_str()));
                if !explained && !self.is_active(id) {
                    tracing::info!(container_id = %id, node = %node, "freeing an orphaned reservation");
                    if let Err(err) = store::release(&self.nodes_kv, &self.view, node, id).await {
                        tracing::warn!(container_id = %id, error = %err.message, "cannot free reservation");
                    }
                }
            }
        }
    }

    async fn apply(self: &Arc<Self>, record: ContainerRecord, step: Step) {
        let id = record.id.clone();
        let result = match step {
            Step::Nothing => Ok(()),
            Step::Expire => store::delete_record(&self.containers_kv, &self.view, &id, |r| {
                r.observed.phase == ContainerPhase::Pending
            })
            .await
            .map(|dropped| {
                if dropped.is_some() {
                    tracing::info!("pending container given up: its wait timed out");
                }
            }),
            Step::Place => {
                let placements = record.observed.placements;
                match self
                    .place(&record, None, |r| {
                        r.observed.phase == ContainerPhase::Pending
                            && r.observed.placements == placements
                    })
                    .await
                {
                    Ok(Placement::Placed(placed)) => {
                        let first = placed.observed.placements == 1;
                        self.dispatch(*placed, first).await.map(|_| ())
                    }
                    Ok(_) => Ok(()),
                    Err(err) => Err(err),
                }
            }
            Step::MarkLost => {
                let node = record.observed.node_id.clone();
                store::update_record(&self.containers_kv, &self.view, &id, |r| {
                    if r.observed.node_id != node
                        || !matches!(
                            r.observed.phase,
                            ContainerPhase::Scheduled | ContainerPhase::Created | ContainerPhase::Running
                        )
                    {
                        return false;
                    }
                    r.observed.phase = ContainerPhase::Lost;
                    true
                })
                .await
                .map(|marked| {
                    if marked.is_some() {
                        tracing::info!(node = ?node, "container lost with its node (no restart policy)");
                    }
                })
            }
            Step::Replace { from, drain } => self.replace(record, &from, drain).await,
            Step::Redispatch => {
                let first = record.observed.placements == 1;
                self.dispatch(record, first).await.map(|_| ())
            }
        };
        if let Err(err) = result {
            tracing::warn!(container_id = %id, error = %err.message, "reconcile step failed");
        }
    }

    /// Moves a container off `from` (lost or draining) onto another node.
    async fn replace(
        self: &Arc<Self>,
        record: ContainerRecord,
        from: &str,
        drain: bool,
    ) -> berth_bus::Handled<()> {
        let placements = record.observed.placements;
        let placed = self
            .place(&record, Some(from), |r| {
                r.observed.node_id.as_deref() == Some(from)
                    && r.observed.placements == placements
                    && matches!(
                        r.observed.phase,
                        ContainerPhase::Scheduled
                            | ContainerPhase::Created
                            | ContainerPhase::Running
                    )
            })
            .await?;
        let Placement::Placed(placed) = placed else {
            return Ok(());
        };
        tracing::info!(from, to = ?placed.observed.node_id, drain, "re-placing container");
        store::release(&self.nodes_kv, &self.view, from, &record.id).await?;
        if drain {
            // The old copy goes once the record points elsewhere (its events are ignored).
            let _: Result<berth_proto::messages::exec::ContainerDone, _> = self
                .exec(
                    from,
                    ExecVerb::Remove,
                    &ContainerRemoveRequest {
                        id: record.id.clone(),
                        force: true,
                        volumes: false,
                    },
                    Duration::from_secs(60),
                )
                .await;
        }
        self.dispatch(*placed, false).await.map(|_| ())
    }

    /// Removes a container `rm`ed while its node was lost from that node (now back),
    /// then its tombstone; a failure leaves the tombstone for the next pass.
    async fn bury(&self, id: &str, tombstone: &Tombstone) {
        let removed: Result<ContainerDone, BusError> = self
            .exec(
                &tombstone.node_id,
                ExecVerb::Remove,
                &ContainerRemoveRequest {
                    id: id.to_string(),
                    force: true,
                    volumes: tombstone.volumes,
                },
                Duration::from_secs(60),
            )
            .await;
        match removed {
            Ok(_) => tracing::info!("removed from its node, which is back"),
            Err(err) if err.kind() == Some(ErrorKind::NotFound) => {}
            Err(err) => {
                tracing::debug!(error = %err, "cannot remove it from its node yet");
                return;
            }
        }
        if let Err(err) = store::delete_tombstone(&self.containers_kv, &self.view, id).await {
            tracing::warn!(error = %err.message, "cannot drop the tombstone");
        }
    }

    /// A node is (back) up: containers it holds that now belong to another node are
    /// removed from it, and lost records it still runs are theirs again.
    pub async fn node_returned(&self, node: &str) {
        let span = tracing::info_span!("node_returned", node);
        async {
            let list: ContainerList = match self
                .exec(node, ExecVerb::List, &ContainerListRequest { all: true }, Duration::from_secs(10))
                .await
            {
                Ok(list) => list,
                Err(err) => {
                    tracing::debug!(error = %err, "cannot list the node's containers");
                    return;
                }
            };
            for container in list.containers {
                let Some((record, _)) = self.view.container(&container.id) else {
                    continue;
                };
                match record.observed.node_id.as_deref() {
                    Some(owner) if owner != node => {
                        tracing::info!(container_id = %container.id, owner, "removing a copy that now runs elsewhere");
                        let removed: Result<berth_proto::messages::exec::ContainerDone, _> = self
                            .exec(
                                node,
                                ExecVerb::Remove,
                                &ContainerRemoveRequest {
                                    id: container.id.clone(),
                                    force: true,
                                    volumes: false,
                                },
                                Duration::from_secs(60),
                            )
                            .await;
                        if let Err(err) = removed {
                            tracing::warn!(container_id = %container.id, error = %err, "cannot remove the stale copy");
                        }
                    }
                    Some(_) if record.observed.phase == ContainerPhase::Lost => {
                        let phase = match container.status {
                            ContainerStatus::Running | ContainerStatus::Restarting | ContainerStatus::Paused => {
                                ContainerPhase::Running
                            }
                            ContainerStatus::Created => ContainerPhase::Created,
                            ContainerStatus::Exited | ContainerStatus::Dead => ContainerPhase::Exited,
                        };
                        let node = node.to_string();
                        let exit_code = container.exit_code;
                        let _ = store::update_record(&self.containers_kv, &self.view, &container.id, |r| {
                            if r.observed.node_id.as_deref() != Some(node.as_str())
                                || r.observed.phase != ContainerPhase::Lost
                            {
                                return false;
                            }
                            r.observed.phase = phase;
                            r.observed.exit_code = exit_code;
                            true
                        })
                        .await;
                    }
                    _ => {}
                }
            }
        }
        .instrument(span)
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::messages::sched::{DesiredContainer, ObservedContainer};

    fn record(phase: ContainerPhase, restart: RestartPolicy) -> ContainerRecord {
        let mut desired = DesiredContainer {
            pending_deadline_ms: 100_000,
            ..Default::default()
        };
        desired.create.restart = restart;
        ContainerRecord {
            id: "c".into(),
            name: "c".into(),
            created_ms: 1_000,
            desired,
            observed: ObservedContainer {
                phase,
                node_id: Some("n1".into()),
                exit_code: None,
                ports: vec![],
                error: None,
                placements: 1,
                updated_ms: 1_000,
                event_seq: 0,
            },
        }
    }

    #[test]
    fn a_lost_node_moves_restartable_containers_and_loses_the_rest() {
        let always = record(ContainerPhase::Running, RestartPolicy::Always);
        assert_eq!(
            step_for(&always, Some(NodeState::Lost), 5_000, 30_000),
            Step::Replace {
                from: "n1".into(),
                drain: false
            }
        );
        let no = record(ContainerPhase::Running, RestartPolicy::No);
        assert_eq!(
            step_for(&no, Some(NodeState::Lost), 5_000, 30_000),
            Step::MarkLost
        );
        assert_eq!(step_for(&no, None, 5_000, 30_000), Step::MarkLost);
        assert_eq!(
            step_for(&no, Some(NodeState::Ready), 5_000, 30_000),
            Step::Nothing
        );
        let exited = record(ContainerPhase::Exited, RestartPolicy::Always);
        assert_eq!(
            step_for(&exited, Some(NodeState::Lost), 5_000, 30_000),
            Step::Nothing
        );
    }

    #[test]
    fn a_stopped_container_is_not_re_placed_whatever_its_restart_policy() {
        for policy in [RestartPolicy::Always, RestartPolicy::UnlessStopped] {
            // Stopped, and the die already seen: nothing, lost node or not.
            let mut stopped = record(ContainerPhase::Exited, policy);
            stopped.desired.stopped = true;
            assert_eq!(
                step_for(&stopped, Some(NodeState::Lost), 5_000, 30_000),
                Step::Nothing
            );
            // Stopped, the node lost before the die arrived: lost, not moved.
            stopped.observed.phase = ContainerPhase::Running;
            assert_eq!(
                step_for(&stopped, Some(NodeState::Lost), 5_000, 30_000),
                Step::MarkLost
            );
            assert_eq!(step_for(&stopped, None, 5_000, 30_000), Step::MarkLost);
            assert_eq!(
                step_for(&stopped, Some(NodeState::Draining), 5_000, 30_000),
                Step::Nothing
            );
            // Started again: moved as before.
            stopped.desired.stopped = false;
            assert_eq!(
                step_for(&stopped, Some(NodeState::Lost), 5_000, 30_000),
                Step::Replace {
                    from: "n1".into(),
                    drain: false
                }
            );
        }
        // A created container stopped by hand is not started behind the user's back.
        let mut created = record(ContainerPhase::Created, RestartPolicy::Always);
        created.desired.start = true;
        created.desired.stopped = true;
        assert_eq!(
            step_for(&created, Some(NodeState::Ready), 60_000, 30_000),
            Step::Nothing
        );
    }

    #[test]
    fn draining_moves_only_restartable_containers() {
        let always = record(ContainerPhase::Running, RestartPolicy::UnlessStopped);
        assert_eq!(
            step_for(&always, Some(NodeState::Draining), 5_000, 30_000),
            Step::Replace {
                from: "n1".into(),
                drain: true
            }
        );
        let no = record(ContainerPhase::Running, RestartPolicy::No);
        assert_eq!(
            step_for(&no, Some(NodeState::Draining), 5_000, 30_000),
            Step::Nothing
        );
    }

    #[test]
    fn pending_records_are_placed_after_the_handoff_and_expire_at_their_deadline() {
        let mut pending = record(ContainerPhase::Pending, RestartPolicy::No);
        pending.observed.placements = 0;
        pending.observed.node_id = None;
        assert_eq!(step_for(&pending, None, 1_500, 30_000), Step::Nothing);
        assert_eq!(step_for(&pending, None, 5_000, 30_000), Step::Place);
        assert_eq!(step_for(&pending, None, 200_000, 30_000), Step::Expire);
    }

    #[test]
    fn a_stuck_dispatch_is_retried() {
        let scheduled = record(ContainerPhase::Scheduled, RestartPolicy::No);
        assert_eq!(
            step_for(&scheduled, Some(NodeState::Ready), 2_000, 30_000),
            Step::Nothing
        );
        assert_eq!(
            step_for(&scheduled, Some(NodeState::Ready), 31_001, 30_000),
            Step::Redispatch
        );
    }
}
