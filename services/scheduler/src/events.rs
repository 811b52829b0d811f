//! Container events into observed state. They come from the `BERTH_EVENTS` stream through
//! one durable pull consumer shared by every scheduler instance: each event is handled by
//! one instance and acknowledged only once its record is written, so an event published
//! while no scheduler runs (or one whose handler died) is delivered again later.

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::{self, stream, AckKind};
use berth_bus::Handled;
use berth_proto::messages::exec::ContainerEvent;
use berth_proto::messages::sched::{ContainerPhase, ContainerRecord};
use berth_proto::subjects::{self, jetstream as names, EventKind};
use futures::StreamExt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::sched::Scheduler;
use crate::store;

/// Events of one container go to one worker, in stream order; different containers are
/// handled side by side.
const WORKERS: usize = 16;
/// An event whose record cannot be written is offered again after this long.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// A delivery that fails this often (KV down for a long time) is dropped: the reconcile
/// pass and the node's own listing still correct the record.
const MAX_DELIVER: i64 = 50;

/// What an event means for a record on `node`, or `None` to leave it.
pub fn phase_after(action: &str, current: ContainerPhase) -> Option<ContainerPhase> {
    match action {
        "create" if current == ContainerPhase::Scheduled => Some(ContainerPhase::Created),
        "start" | "restart" | "unpause" => Some(ContainerPhase::Running),
        "die" => Some(ContainerPhase::Exited),
        _ => None,
    }
}

/// Whether the event at stream sequence `seq` concerns `record` as it is now: it comes
/// from the record's node and is newer than the last one applied (0: sequence unknown).
pub fn concerns(record: &ContainerRecord, event: &ContainerEvent, seq: u64) -> bool {
    record.observed.node_id.as_deref() == Some(event.node_id.as_str())
        && (seq == 0 || seq > record.observed.event_seq)
}

/// Applies a non-`destroy` event to `record`; false when it changes nothing.
pub fn apply_event(record: &mut ContainerRecord, event: &ContainerEvent, seq: u64) -> bool {
    if !concerns(record, event, seq) {
        return false;
    }
    let Some(next) = phase_after(&event.action, record.observed.phase) else {
        return false;
    };
    record.observed.phase = next;
    if matches!(event.action.as_str(), "start" | "restart") {
        // It runs again (started on its node, or restarted there by its policy): an
        // earlier stop or kill no longer describes it.
        record.desired.stopped = false;
    }
    record.observed.exit_code = if next == ContainerPhase::Exited {
        event.exit_code
    } else {
        None
    };
    record.observed.event_seq = record.observed.event_seq.max(seq);
    true
}

/// The durable consumer of container events (created on first use).
async fn consumer(stream: &stream::Stream) -> Result<pull::Stream, String> {
    let consumer: jetstream::consumer::PullConsumer = stream
        .get_or_create_consumer(
            names::SCHEDULER_EVENTS_CONSUMER,
            pull::Config {
                durable_name: Some(names::SCHEDULER_EVENTS_CONSUMER.to_string()),
                description: Some("container events for the berth schedulers".to_string()),
                filter_subject: subjects::events_of_kind(EventKind::Container),
                ack_policy: AckPolicy::Explicit,
                // Events from before the first scheduler ever ran concern no record.
                deliver_policy: DeliverPolicy::New,
                ack_wait: Duration::from_secs(30),
                max_deliver: MAX_DELIVER,
                max_ack_pending: 4096,
                ..Default::default()
            },
        )
        .await
        .map_err(|err| format!("consumer {}: {err}", names::SCHEDULER_EVENTS_CONSUMER))?;
    consumer
        .stream()
        .max_messages_per_batch(256)
        .messages()
        .await
        .map_err(|err| format!("pulling from {}: {err}", names::SCHEDULER_EVENTS_CONSUMER))
}

/// Follows container events until aborted; a broken consumer is opened again.
pub async fn follow_events(scheduler: Arc<Scheduler>, stream: stream::Stream) {
    loop {
        if let Err(err) = consume(&scheduler, &stream).await {
            tracing::warn!(error = %err, "container events interrupted; resuming");
        }
        tokio::time::sleep(RETRY_AFTER).await;
    }
}

async fn consume(scheduler: &Arc<Scheduler>, stream: &stream::Stream) -> Result<(), String> {
    let mut messages = consumer(stream).await?;
    // The workers end with this call (the set aborts them when dropped).
    let mut workers = tokio::task::JoinSet::new();
    let queues: Vec<mpsc::Sender<(ContainerEvent, jetstream::Message)>> = (0..WORKERS)
        .map(|_| {
            let (sender, mut receiver) = mpsc::channel::<(ContainerEvent, jetstream::Message)>(64);
            let scheduler = Arc::clone(scheduler);
            workers.spawn(async move {
                while let Some((event, message)) = receiver.recv().await {
                    let seq = message.info().map(|i| i.stream_sequence).unwrap_or(0);
                    let ack = match scheduler.observe(event, seq).await {
                        Ok(()) => AckKind::Ack,
                        Err(err) => {
                            tracing::warn!(error = %err.message, "cannot record container event; it comes again");
                            AckKind::Nak(Some(RETRY_AFTER))
                        }
                    };
                    if let Err(err) = message.ack_with(ack).await {
                        tracing::debug!(error = %err, "cannot acknowledge a container event");
                    }
                }
            });
            sender
        })
        .collect();
    while let Some(message) = messages.next().await {
        let message = message.map_err(|err| format!("receiving events: {err}"))?;
        let event: ContainerEvent = match serde_json::from_slice(&message.payload) {
            Ok(event) => event,
            Err(err) => {
                tracing::debug!(subject = %message.subject, error = %err, "unreadable container event dropped");
                let _ = message.ack_with(AckKind::Term).await;
                continue;
            }
        };
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        event.id.hash(&mut hasher);
        let worker = (hasher.finish() % WORKERS as u64) as usize;
        if queues[worker].send((event, message)).await.is_err() {
            return Err("an event worker ended".to_string());
        }
    }
    Err("the consumer's message stream ended".to_string())
}

impl Scheduler {
    /// Applies one container event to its record, read from KV (the view may not hold it
    /// yet right after a start). Events from a node the record does not name (a stale
    /// copy on a returning node) or older than the last applied are ignored.
    pub async fn observe(&self, event: ContainerEvent, seq: u64) -> Handled<()> {
        let span = tracing::debug_span!("event", container_id = %event.id, action = %event.action, node = %event.node_id, seq);
        async {
            if event.action == "destroy" {
                let deleted =
                    store::delete_record(&self.containers_kv, &self.view, &event.id, |r| {
                        concerns(r, &event, seq)
                    })
                    .await?;
                if deleted.is_some() {
                    store::release(&self.nodes_kv, &self.view, &event.node_id, &event.id).await?;
                }
                return Ok(());
            }
            if phase_after(&event.action, ContainerPhase::Scheduled).is_none()
                && phase_after(&event.action, ContainerPhase::Running).is_none()
            {
                return Ok(());
            }
            store::update_record(&self.containers_kv, &self.view, &event.id, |r| {
                apply_event(r, &event, seq)
            })
            .await?;
            Ok(())
        }
        .instrument(span)
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::messages::sched::{DesiredContainer, ObservedContainer};

    fn record(phase: ContainerPhase) -> ContainerRecord {
        ContainerRecord {
            id: "c".into(),
            name: "c".into(),
            created_ms: 1_000,
            desired: DesiredContainer::default(),
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

    fn event(action: &str, node: &str, exit_code: Option<i32>) -> ContainerEvent {
        ContainerEvent {
            action: action.into(),
            id: "c".into(),
            name: "c".into(),
            image: "busybox".into(),
            node_id: node.into(),
            exit_code,
            signal: None,
            oom_killed: false,
            exec_id: None,
            command: None,
            time: String::new(),
        }
    }

    #[test]
    fn events_advance_the_phase() {
        assert_eq!(
            phase_after("create", ContainerPhase::Scheduled),
            Some(ContainerPhase::Created)
        );
        assert_eq!(phase_after("create", ContainerPhase::Running), None);
        assert_eq!(
            phase_after("start", ContainerPhase::Exited),
            Some(ContainerPhase::Running)
        );
        assert_eq!(
            phase_after("die", ContainerPhase::Running),
            Some(ContainerPhase::Exited)
        );
        assert_eq!(phase_after("exec_start", ContainerPhase::Running), None);
    }

    #[test]
    fn a_die_event_records_the_exit_code_and_its_sequence() {
        let mut r = record(ContainerPhase::Running);
        assert!(apply_event(&mut r, &event("die", "n1", Some(3)), 7));
        assert_eq!(r.observed.phase, ContainerPhase::Exited);
        assert_eq!(r.observed.exit_code, Some(3));
        assert_eq!(r.observed.event_seq, 7);
    }

    #[test]
    fn a_late_start_after_the_die_is_ignored() {
        // Handled out of order (redelivery, or two instances): the die at 8 stands.
        let mut r = record(ContainerPhase::Running);
        assert!(apply_event(&mut r, &event("die", "n1", Some(0)), 8));
        assert!(!apply_event(&mut r, &event("start", "n1", None), 6));
        assert!(!apply_event(&mut r, &event("die", "n1", Some(0)), 8));
        assert_eq!(r.observed.phase, ContainerPhase::Exited);
        assert!(apply_event(&mut r, &event("start", "n1", None), 9));
        assert_eq!(r.observed.phase, ContainerPhase::Running);
        assert_eq!(r.observed.exit_code, None);
    }

    #[test]
    fn a_start_after_a_stop_forgets_the_stop() {
        let mut r = record(ContainerPhase::Running);
        r.desired.stopped = true;
        assert!(apply_event(&mut r, &event("die", "n1", Some(137)), 4));
        assert!(r.desired.stopped, "the die of a stop keeps it stopped");
        assert!(apply_event(&mut r, &event("start", "n1", None), 5));
        assert!(!r.desired.stopped);
    }

    #[test]
    fn events_from_another_node_are_ignored() {
        let mut r = record(ContainerPhase::Running);
        assert!(!apply_event(&mut r, &event("die", "n2", Some(1)), 5));
        assert!(!concerns(&r, &event("destroy", "n2", None), 5));
        assert!(concerns(&r, &event("destroy", "n1", None), 5));
        assert_eq!(r.observed.phase, ContainerPhase::Running);
    }
}
