//! `berth events`: follows the `BERTH_EVENTS` stream (an ordered consumer, from now or
//! from `--since`), filtered like Docker's `--filter type=… event=… container=…`.

use crate::containers::parse_time;
use crate::exit::Failure;
use async_nats::jetstream::{self, consumer::pull::OrderedConfig, consumer::DeliverPolicy};
use berth_bus::{connect_once, NatsSettings};
use berth_proto::subjects::{self, jetstream as names, EventKind};
use futures::StreamExt;
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct EventsArgs {
    /// Events since a time: RFC 3339, Unix seconds, or a duration ago (10m).
    #[arg(long)]
    since: Option<String>,
    /// Stop at this time (same forms); without it, follow until interrupted.
    #[arg(long)]
    until: Option<String>,
    /// type=container|image|node|snapshot, event=ACTION, container=ID|NAME, image=NAME,
    /// node=ID (repeatable: the same key ORs, different keys AND).
    #[arg(short = 'f', long = "filter")]
    filters: Vec<String>,
    /// One JSON object per line: subject, type, action, and the event's own fields.
    #[arg(long)]
    json: bool,
}

/// Parsed `--filter`s.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct EventFilter {
    by_key: BTreeMap<String, Vec<String>>,
}

impl EventFilter {
    pub fn parse(filters: &[String]) -> Result<EventFilter, String> {
        let mut out = EventFilter::default();
        for filter in filters {
            let (key, value) = filter
                .split_once('=')
                .ok_or_else(|| format!("invalid filter {filter:?}: use key=value"))?;
            let key = match key {
                "action" => "event",
                k => k,
            };
            match key {
                "type" => {
                    if !EventKind::ALL.iter().any(|k| k.as_str() == value) {
                        return Err(format!(
                            "invalid filter {filter:?}: type is one of container, image, node, snapshot"
                        ));
                    }
                }
                "event" | "container" | "image" | "node" => {}
                other => {
                    return Err(format!(
                        "invalid filter {other:?}: berth knows type, event, container, image, node"
                    ))
                }
            }
            out.by_key
                .entry(key.to_string())
                .or_default()
                .push(value.to_string());
        }
        Ok(out)
    }

    /// Stream subjects to consume: one per wanted type, or every event.
    pub fn subjects(&self) -> Vec<String> {
        match self.by_key.get("type") {
            Some(kinds) => EventKind::ALL
                .iter()
                .filter(|k| kinds.iter().any(|w| w == k.as_str()))
                .map(|k| subjects::events_of_kind(*k))
                .collect(),
            None => vec![subjects::all_events()],
        }
    }

    /// Whether one event (its subject and JSON body) passes every filter.
    pub fn matches(&self, event: &Event) -> bool {
        self.by_key.iter().all(|(key, values)| {
            values.iter().any(|want| match key.as_str() {
                "type" => event.kind == *want,
                "event" => event.action == *want,
                "container" => {
                    event.kind == "container"
                        && (event.id.starts_with(want.as_str())
                            || event.body["name"].as_str() == Some(want.as_str()))
                }
                "image" => {
                    event.body["image"].as_str() == Some(want.as_str())
                        || (event.kind == "image" && event.id.starts_with(want.as_str()))
                }
                "node" => event.body["node_id"].as_str() == Some(want.as_str()),
                _ => false,
            })
        })
    }
}

/// One event as read from the stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub subject: String,
    pub kind: String,
    pub id: String,
    pub action: String,
    pub body: serde_json::Value,
}

impl Event {
    /// `berth.v1.events.<kind>.<id>.<action>` and its JSON body.
    pub fn parse(subject: &str, payload: &[u8]) -> Option<Event> {
        let prefix = subjects::all_events();
        let rest = subject.strip_prefix(prefix.strip_suffix('>')?)?;
        let mut tokens = rest.splitn(3, '.');
        let kind = tokens.next()?.to_string();
        let id = tokens.next()?.to_string();
        let action = tokens.next()?.to_string();
        let body = serde_json::from_slice(payload).unwrap_or(serde_json::Value::Null);
        Some(Event {
            subject: subject.to_string(),
            kind,
            id,
            action,
            body,
        })
    }

    /// Docker's line: `<time> <type> <action> <id> (key=value, …)`.
    pub fn line(&self, fallback_time: &str) -> String {
        let time = self.body["time"].as_str().unwrap_or(fallback_time);
        let mut attributes: Vec<String> = self
            .body
            .as_object()
            .map(|o| {
                o.iter()
                    .filter(|(k, _)| !matches!(k.as_str(), "id" | "action" | "time"))
                    .filter_map(|(k, v)| match v {
                        serde_json::Value::Null => None,
                        serde_json::Value::Bool(false) if k == "oom_killed" => None,
                        serde_json::Value::String(s) => Some(format!("{k}={s}")),
                        serde_json::Value::Number(_) | serde_json::Value::Bool(_) => {
                            Some(format!("{k}={v}"))
                        }
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        attributes.sort();
        if attributes.is_empty() {
            format!("{time} {} {} {}", self.kind, self.action, self.id)
        } else {
            format!(
                "{time} {} {} {} ({})",
                self.kind,
                self.action,
                self.id,
                attributes.join(", ")
            )
        }
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

pub async fn run(
    args: EventsArgs,
    nats: &NatsSettings,
    timeout: Duration,
) -> Result<ExitCode, Failure> {
    let filter = EventFilter::parse(&args.filters).map_err(Failure::berth)?;
    let now = now_ns();
    let since = args
        .since
        .as_deref()
        .map(|t| parse_time(t, now))
        .transpose()
        .map_err(|err| Failure::berth(format!("--since: {err}")))?;
    let until = args
        .until
        .as_deref()
        .map(|t| parse_time(t, now))
        .transpose()
        .map_err(|err| Failure::berth(format!("--until: {err}")))?;
    let client = connect_once(nats, "berth-cli", timeout.min(Duration::from_secs(5)))
        .await
        .map_err(|err| Failure::berth(err.to_string()))?;
    let js = jetstream::new(client);
    let stream = js
        .get_stream(names::EVENTS_STREAM)
        .await
        .map_err(|err| Failure::berth(format!("stream {}: {err}", names::EVENTS_STREAM)))?;
    let deliver_policy = match since {
        Some(ns) => DeliverPolicy::ByStartTime {
            start_time: time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns))
                .map_err(|err| Failure::berth(format!("--since: {err}")))?,
        },
        None => DeliverPolicy::New,
    };
    let mut subjects = filter.subjects();
    let (filter_subject, filter_subjects) = if subjects.len() == 1 {
        (subjects.remove(0), Vec::new())
    } else {
        (String::new(), subjects)
    };
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject,
            filter_subjects,
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|err| Failure::berth(format!("cannot follow {}: {err}", names::EVENTS_STREAM)))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|err| Failure::berth(format!("cannot follow {}: {err}", names::EVENTS_STREAM)))?;
    let stop_at = until.map(|u| {
        let wait = Duration::from_nanos(u.saturating_sub(now_ns()).max(0) as u64);
        // Past events still come in after the deadline: give the backlog a moment.
        tokio::time::Instant::now() + wait + Duration::from_millis(500)
    });
    loop {
        let next = match stop_at {
            Some(at) => match tokio::time::timeout_at(at, messages.next()).await {
                Ok(next) => next,
                Err(_) => return Ok(ExitCode::SUCCESS),
            },
            None => messages.next().await,
        };
        let Some(message) = next else {
            return Ok(ExitCode::SUCCESS);
        };
        let message = message.map_err(|err| Failure::berth(format!("reading events: {err}")))?;
        let stamp = message
            .info()
            .ok()
            .map(|i| i.published)
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
        let Some(event) = Event::parse(message.subject.as_str(), &message.payload) else {
            continue;
        };
        if let (Some(until), Some(at)) = (until, message.info().ok().map(|i| i.published)) {
            if at.unix_timestamp_nanos() > i128::from(until) {
                return Ok(ExitCode::SUCCESS);
            }
        }
        if !filter.matches(&event) {
            continue;
        }
        if args.json {
            let mut out = serde_json::json!({
                "subject": event.subject, "type": event.kind, "action": event.action,
            });
            if let (Some(target), Some(fields)) = (out.as_object_mut(), event.body.as_object()) {
                for (k, v) in fields {
                    target.entry(k.clone()).or_insert(v.clone());
                }
            }
            outln!("{out}");
        } else {
            outln!("{}", event.line(&stamp));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(subject: &str, body: &str) -> Event {
        Event::parse(subject, body.as_bytes()).expect("parses")
    }

    #[test]
    fn filters_select_by_type_action_container_and_image() {
        let die = event(
            "berth.v1.events.container.abc123.die",
            r#"{"action":"die","id":"abc123","name":"web","image":"busybox","node_id":"n1","exit_code":3,"oom_killed":false,"time":"T"}"#,
        );
        assert_eq!(
            (die.kind.as_str(), die.action.as_str()),
            ("container", "die")
        );
        let f = |list: &[&str]| {
            EventFilter::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("parses")
        };
        assert!(f(&["type=container", "event=die", "container=web"]).matches(&die));
        assert!(f(&["container=abc", "event=start", "event=die"]).matches(&die));
        assert!(!f(&["event=start"]).matches(&die));
        assert!(!f(&["type=image"]).matches(&die));
        assert!(f(&["image=busybox", "node=n1"]).matches(&die));
        assert_eq!(
            die.line("X"),
            "T container die abc123 (exit_code=3, image=busybox, name=web, node_id=n1)"
        );
        assert_eq!(
            f(&["type=image", "type=container"]).subjects(),
            vec![
                "berth.v1.events.container.>".to_string(),
                "berth.v1.events.image.>".to_string()
            ]
        );
        assert_eq!(f(&[]).subjects(), vec!["berth.v1.events.>".to_string()]);
        assert!(EventFilter::parse(&["type=volume".into()]).is_err());
        assert!(EventFilter::parse(&["colour=red".into()]).is_err());
        assert!(Event::parse("other.subject", b"{}").is_none());
    }
}
