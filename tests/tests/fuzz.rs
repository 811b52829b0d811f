//! Malformed messages to every endpoint of a real stack (issue 20): random bytes,
//! truncated bincode, wrong-type JSON, huge strings, `[]` and deeply nested JSON, in both
//! encodings. No service may crash, every reply must be an error envelope (or a valid
//! reply where the body happened to be a valid request), no reply may exceed the
//! server's max_payload, and no service's RSS may grow by more than 10 MB.
//!
//! Deterministic (seeded), bounded in count, loopback only: bodies that would be a valid
//! request to a verb that acts without a target (`prune`) or reaches outside (`pull`,
//! `push`) are never sent.

use berth_bus::request::raw_request;
use berth_bus::BusError;
use berth_proto::codec::SERVICE_ERROR_CODE_HEADER;
use berth_proto::messages::exec::{ContainerCreateRequest, ContainerRef, ContainerRemoveRequest};
use berth_proto::messages::image::{
    ImageListRequest, ImagePruneRequest, ImagePullRequest, ImagePushRequest, ImageTagRequest,
};
use berth_proto::messages::sched::{SchedRef, SchedRunRequest};
use berth_proto::messages::unpack::{SnapshotPruneRequest, SnapshotReleaseRequest};
use berth_proto::subjects::{micro, ROOT};
use berth_proto::{Encoding, ErrorEnvelope};
use berth_tests::{ping_count, Stack, ALL_SERVICES};
use futures::StreamExt;
use std::collections::BTreeMap;
use std::time::Duration;

const NODE: &str = "node-fuzz";
const SEED: u64 = 0x6265_7274_6866_757a;
/// Rounds sent before the RSS baseline is taken.
const WARM_UP_ROUNDS: usize = 6;
const AT_LEAST: usize = 1_500;
/// One reply: a service that answers at all answers in milliseconds; this is room for
/// a loaded CI machine.
const REPLY_DEADLINE: Duration = Duration::from_secs(10);
/// The whole run: a guard against hanging, not a speed test.
const RUN_DEADLINE: Duration = Duration::from_secs(120);
const IN_FLIGHT: usize = 16;
const RSS_GROWTH_LIMIT_KB: u64 = 10_000;
/// Repeated to make huge strings, as large as a request may be: an error that quotes
/// one whole (escaped, ESC becomes `\u{1b}`) cannot fit in a reply. Spaces, `!`,
/// capitals and an ESC so that it is never a valid name, reference or id.
const HUGE_UNIT: &str = "ZZ! \u{1b}";
/// Room left in a request for everything but the huge string.
const HUGE_SLACK: usize = 1024;

/// Field names the request types use, by their type: a fuzz value is always of the
/// other type, except for the huge strings.
const STRING_FIELDS: [&str; 10] = [
    "id",
    "reference",
    "image",
    "name",
    "node_id",
    "chain_id",
    "user",
    "source",
    "target",
    "repository_prefix",
];
const BOOL_FIELDS: [&str; 4] = ["all", "force", "volumes", "no_start"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    RandomBincode,
    RandomJson,
    LongRandomBincode,
    TruncatedBincode,
    HugeStringBincode,
    WrongTypeJson,
    HugeStringJson,
    EmptyArrayJson,
    DeepArrayJson,
    DeepObjectJson,
    ScalarJson,
}

const KINDS: [Kind; 11] = [
    Kind::RandomBincode,
    Kind::RandomJson,
    Kind::LongRandomBincode,
    Kind::TruncatedBincode,
    Kind::HugeStringBincode,
    Kind::WrongTypeJson,
    Kind::HugeStringJson,
    Kind::EmptyArrayJson,
    Kind::DeepArrayJson,
    Kind::DeepObjectJson,
    Kind::ScalarJson,
];

fn random_bytes(rng: &mut fastrand::Rng, len: std::ops::Range<usize>) -> Vec<u8> {
    let n = rng.usize(len);
    std::iter::repeat_with(|| rng.u8(..)).take(n).collect()
}

fn bin<T: serde::Serialize>(value: &T) -> Vec<u8> {
    Encoding::Bincode.encode(value).unwrap_or_default()
}

/// Valid bincode of request types seen on the bus, to be cut short.
fn bincode_samples() -> Vec<Vec<u8>> {
    vec![
        bin(&ContainerRef {
            id: "0123456789ab".into(),
        }),
        bin(&SchedRef {
            reference: "fuzz-name".into(),
        }),
        bin(&ContainerRemoveRequest {
            id: "fuzz".into(),
            force: true,
            volumes: true,
        }),
        bin(&ImageListRequest::default()),
        bin(&ImageTagRequest {
            source: "busybox:latest".into(),
            target: "busybox:fuzz".into(),
        }),
        bin(&SchedRunRequest {
            id: Some("f".repeat(64)),
            create: ContainerCreateRequest {
                image: "busybox:latest".into(),
                cmd: vec!["true".into()],
                ..Default::default()
            },
            ..Default::default()
        }),
    ]
}

/// A huge string whose encoding (bincode: raw; JSON: ESC escaped as six bytes) still
/// fits in one request under `max_payload`.
fn huge_string(encoding: Encoding, max_payload: usize) -> String {
    let unit = match encoding {
        Encoding::Bincode => HUGE_UNIT.len(),
        Encoding::Json => serde_json::to_string(HUGE_UNIT).map_or(64, |s| s.len() - 2),
    };
    HUGE_UNIT.repeat(max_payload.saturating_sub(HUGE_SLACK) / unit)
}

fn body(
    kind: Kind,
    rng: &mut fastrand::Rng,
    samples: &[Vec<u8>],
    max_payload: usize,
) -> (Encoding, Vec<u8>) {
    match kind {
        Kind::RandomBincode => (Encoding::Bincode, random_bytes(rng, 1..64)),
        Kind::RandomJson => (Encoding::Json, random_bytes(rng, 1..64)),
        Kind::LongRandomBincode => (Encoding::Bincode, random_bytes(rng, 64..8192)),
        Kind::TruncatedBincode => {
            let sample = &samples[rng.usize(..samples.len())];
            let cut = rng.usize(1..sample.len().max(2));
            (Encoding::Bincode, sample[..cut.min(sample.len())].to_vec())
        }
        // A valid encoding of a one-string request (`ContainerRef`, `SchedRef`, …):
        // what the service says about it must still fit in a reply.
        Kind::HugeStringBincode => (
            Encoding::Bincode,
            bin(&huge_string(Encoding::Bincode, max_payload)),
        ),
        Kind::WrongTypeJson => {
            let value = if rng.bool() {
                let field = STRING_FIELDS[rng.usize(..STRING_FIELDS.len())];
                let wrong = match rng.u8(..4) {
                    0 => serde_json::json!(rng.i64(..)),
                    1 => serde_json::json!(true),
                    2 => serde_json::json!([1, "two", 3.5]),
                    _ => serde_json::json!({ "nested": { "x": 1 } }),
                };
                serde_json::json!({ field: wrong })
            } else {
                let field = BOOL_FIELDS[rng.usize(..BOOL_FIELDS.len())];
                let wrong = match rng.u8(..3) {
                    0 => serde_json::json!("yes"),
                    1 => serde_json::json!(2),
                    _ => serde_json::json!([]),
                };
                serde_json::json!({ field: wrong })
            };
            (Encoding::Json, value.to_string().into_bytes())
        }
        Kind::HugeStringJson => {
            let field = STRING_FIELDS[rng.usize(..STRING_FIELDS.len())];
            let value = serde_json::json!({ field: huge_string(Encoding::Json, max_payload) });
            (Encoding::Json, value.to_string().into_bytes())
        }
        Kind::EmptyArrayJson => (Encoding::Json, b"[]".to_vec()),
        Kind::DeepArrayJson => {
            let depth = rng.usize(1_000..100_000);
            let mut text = "[".repeat(depth);
            text.push_str(&"]".repeat(depth));
            (Encoding::Json, text.into_bytes())
        }
        Kind::DeepObjectJson => {
            let depth = rng.usize(1_000..50_000);
            let mut text = r#"{"a":"#.repeat(depth);
            text.push('1');
            text.push_str(&"}".repeat(depth));
            (Encoding::Json, text.into_bytes())
        }
        Kind::ScalarJson => {
            let text = match rng.u8(..5) {
                0 => "42",
                1 => "\"a string\"",
                2 => "true",
                3 => "-1e999",
                _ => "[[], {}]",
            };
            (Encoding::Json, text.as_bytes().to_vec())
        }
    }
}

/// True when `body` would be a valid request to a verb that must not run on its own
/// here: `prune` acts without a target, `pull` and `push` reach a registry.
fn must_not_send(subject: &str, encoding: Encoding, body: &[u8]) -> bool {
    let verb = subject.rsplit('.').next().unwrap_or_default();
    let service = subject.split('.').nth(2).unwrap_or_default();
    match (service, verb) {
        ("image", "prune") => encoding.decode::<ImagePruneRequest>(body).is_ok(),
        ("unpack", "prune") => encoding.decode::<SnapshotPruneRequest>(body).is_ok(),
        ("unpack", "release") => encoding.decode::<SnapshotReleaseRequest>(body).is_ok(),
        ("image", "pull") => encoding.decode::<ImagePullRequest>(body).is_ok(),
        ("image", "push") => encoding.decode::<ImagePushRequest>(body).is_ok(),
        // Whitespace-only JSON means `{}`: a valid request to every all-optional verb.
        _ => encoding == Encoding::Json && body.iter().all(u8::is_ascii_whitespace),
    }
}

/// Every endpoint subject of every berth service, from `$SRV.INFO`.
async fn endpoints(client: &async_nats::Client) -> anyhow::Result<BTreeMap<String, String>> {
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await?;
    client
        .publish_with_reply(micro::INFO_ALL, inbox, bytes::Bytes::new())
        .await?;
    let mut found = BTreeMap::new();
    let mut services = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while services.len() < ALL_SERVICES.len() {
        let Ok(Some(message)) = tokio::time::timeout_at(deadline, replies.next()).await else {
            break;
        };
        let info: serde_json::Value = serde_json::from_slice(&message.payload)?;
        let name = info["name"].as_str().unwrap_or_default().to_string();
        for endpoint in info["endpoints"].as_array().into_iter().flatten() {
            if let Some(subject) = endpoint["subject"].as_str() {
                found.insert(subject.to_string(), name.clone());
            }
        }
        services.insert(name);
    }
    for service in ALL_SERVICES {
        anyhow::ensure!(
            services.contains(service),
            "{service} did not answer $SRV.INFO"
        );
    }
    Ok(found)
}

/// VmRSS of a process in kB.
fn rss_kb(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|err| anyhow::anyhow!("pid {pid} is gone: {err}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/{pid}/status"))
}

fn rss_of(stack: &Stack) -> anyhow::Result<BTreeMap<String, u64>> {
    stack
        .services
        .iter()
        .map(|service| {
            let pid = service
                .pid()
                .ok_or_else(|| anyhow::anyhow!("{} has exited", service.name))?;
            Ok((service.name.clone(), rss_kb(pid)?))
        })
        .collect()
}

/// What came back for one fuzz message.
#[derive(Debug)]
enum Outcome {
    Error,
    Valid,
    Bad(String),
}

fn judge(
    subject: &str,
    encoding: Encoding,
    reply: Result<async_nats::Message, BusError>,
    max_payload: usize,
) -> Outcome {
    let message = match reply {
        Ok(message) => message,
        Err(err) => return Outcome::Bad(format!("no reply: {err}")),
    };
    if message.payload.len() > max_payload {
        return Outcome::Bad(format!(
            "reply of {} bytes over max_payload {max_payload}",
            message.payload.len()
        ));
    }
    let is_error = message
        .headers
        .as_ref()
        .is_some_and(|h| h.get(SERVICE_ERROR_CODE_HEADER).is_some());
    if is_error {
        return match encoding.decode::<ErrorEnvelope>(&message.payload) {
            Ok(_) => Outcome::Error,
            Err(err) => Outcome::Bad(format!("error reply that is not an envelope: {err}")),
        };
    }
    // A valid reply: a JSON request gets a JSON object; a bincode one a non-empty body
    // that is not an envelope in disguise.
    let valid = match encoding {
        Encoding::Json => serde_json::from_slice::<serde_json::Value>(&message.payload)
            .is_ok_and(|v| v.is_object()),
        Encoding::Bincode => !message.payload.is_empty(),
    };
    if valid {
        Outcome::Valid
    } else {
        Outcome::Bad(format!(
            "{subject}: reply is neither an error envelope nor a {encoding:?} value: {:?}",
            String::from_utf8_lossy(&message.payload[..message.payload.len().min(200)])
        ))
    }
}

type Message = (String, Kind, Encoding, Vec<u8>);

/// Sends `messages`, `IN_FLIGHT` at a time; returns what came back for each.
async fn fire<'a>(
    client: &async_nats::Client,
    messages: &'a [Message],
    max_payload: usize,
) -> Vec<(&'a str, Kind, usize, Outcome)> {
    futures::stream::iter(messages.iter())
        .map(|(subject, kind, encoding, body)| async move {
            let reply = raw_request(
                client,
                subject,
                body.clone().into(),
                *encoding,
                REPLY_DEADLINE,
            )
            .await;
            (
                subject.as_str(),
                *kind,
                body.len(),
                judge(subject, *encoding, reply, max_payload),
            )
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await
}

#[tokio::test]
async fn a_thousand_malformed_messages_to_every_endpoint_crash_nothing() -> anyhow::Result<()> {
    // Loopback only: a registry client that honours the proxy variables reaches nothing
    // even if a body were to slip through as a valid pull.
    let dead_proxy = format!("http://127.0.0.1:{}", berth_tests::free_port()?);
    let stack = Stack::start_with_env(
        &ALL_SERVICES,
        NODE,
        &[
            ("HTTPS_PROXY", &dead_proxy),
            ("HTTP_PROXY", &dead_proxy),
            ("ALL_PROXY", &dead_proxy),
        ],
    )
    .await?;
    let client = stack.nats.client().await?;
    let max_payload = client.server_info().max_payload;
    anyhow::ensure!(max_payload > 0, "the server announced no max_payload");
    let endpoints = endpoints(&client).await?;
    for subject in endpoints.keys() {
        anyhow::ensure!(subject.starts_with(ROOT), "{subject} is outside {ROOT}");
    }
    anyhow::ensure!(
        endpoints.len() >= 40,
        "only {} endpoints in $SRV.INFO: {:?}",
        endpoints.len(),
        endpoints.keys()
    );

    // Every message, fixed before anything is sent.
    let mut rng = fastrand::Rng::with_seed(SEED);
    let samples = bincode_samples();
    let mut messages: Vec<Message> = Vec::new();
    let mut withheld = std::collections::BTreeSet::new();
    let mut round_ends: Vec<usize> = Vec::new();
    let mut rounds = 0;
    while round_ends.len() < WARM_UP_ROUNDS
        || messages.len() < round_ends[WARM_UP_ROUNDS - 1] + AT_LEAST
    {
        rounds += 1;
        for subject in endpoints.keys() {
            for kind in KINDS {
                // A kind whose bodies all decode for this verb (`[]` to an empty
                // request type) is withheld there, not retried for ever.
                let sendable = (0..20)
                    .map(|_| body(kind, &mut rng, &samples, max_payload))
                    .find(|(encoding, body)| !must_not_send(subject, *encoding, body));
                match sendable {
                    Some((encoding, body)) => {
                        messages.push((subject.clone(), kind, encoding, body))
                    }
                    None => {
                        withheld.insert(format!("{subject} {kind:?}"));
                    }
                }
            }
        }
        round_ends.push(messages.len());
    }
    let first_round = round_ends[WARM_UP_ROUNDS - 1];
    eprintln!("fuzz: withheld as valid requests to a verb that must not run: {withheld:?}");

    // The first rounds warm up: every kind of body to every endpoint, round after round,
    // as many in flight as later, so that what the allocator keeps after the largest
    // bodies (its high-water mark across per-thread arenas, not a leak) is reached before
    // measuring. The baseline is the highest RSS seen after any warm-up round: a service's
    // RSS wanders by several MB between rounds (image-store 25-31 MB after six), and a
    // leak keeps growing past its highest point. Their replies are judged too.
    let at_start = rss_of(&stack)?;
    let mut warm_up = Vec::new();
    let mut before: BTreeMap<String, u64> = BTreeMap::new();
    let mut round_start = 0;
    for &round_end in &round_ends[..WARM_UP_ROUNDS] {
        let replies = tokio::time::timeout(
            RUN_DEADLINE,
            fire(&client, &messages[round_start..round_end], max_payload),
        )
        .await
        .map_err(|_| anyhow::anyhow!("a warm-up round was not answered within {RUN_DEADLINE:?}"))?;
        warm_up.extend(replies);
        for (name, kb) in rss_of(&stack)? {
            let highest = before.entry(name).or_default();
            *highest = (*highest).max(kb);
        }
        round_start = round_end;
    }
    let started = tokio::time::Instant::now();
    let measured = &messages[first_round..];
    assert!(measured.len() >= AT_LEAST, "{}", measured.len());
    let mut outcomes = tokio::time::timeout(RUN_DEADLINE, fire(&client, measured, max_payload))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "{} messages not answered within {RUN_DEADLINE:?}",
                measured.len()
            )
        })?;
    let took = started.elapsed();
    outcomes.extend(warm_up);

    let mut errors = 0;
    let mut valid = Vec::new();
    let mut bad = Vec::new();
    for (subject, kind, len, outcome) in &outcomes {
        match outcome {
            Outcome::Error => errors += 1,
            Outcome::Valid => valid.push(format!("{subject} {kind:?}")),
            Outcome::Bad(why) => bad.push(format!("{subject} {kind:?} ({len} bytes): {why}")),
        }
    }
    eprintln!(
        "fuzz: {} messages in {rounds} rounds to {} endpoints ({} after the warm-up rounds, in {took:?}): {errors} error envelopes, {} valid replies {valid:?}",
        outcomes.len(),
        endpoints.len(),
        outcomes.len() - first_round,
        valid.len()
    );

    // Nothing crashed: every process is there and every service still answers.
    for service in &stack.services {
        let pid = service.pid().ok_or_else(|| {
            anyhow::anyhow!("{} exited; see {}", service.name, service.log.display())
        })?;
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            !state.is_empty() && !state.contains(") Z "),
            "{} (pid {pid}) died; see {}",
            service.name,
            service.log.display()
        );
    }
    for service in ALL_SERVICES {
        assert!(
            ping_count(&client, service, Duration::from_millis(500)).await? >= 1,
            "{service} no longer answers $SRV.PING; see {}",
            stack.log_of(service)
        );
    }
    let after = rss_of(&stack)?;
    let mut grown = Vec::new();
    for (name, kb) in &after {
        let was = before.get(name).copied().unwrap_or_default();
        let first = at_start.get(name).copied().unwrap_or_default();
        eprintln!("fuzz: {name} VmRSS {first} kB at start, at most {was} kB after a warm-up round, {kb} kB at the end");
        if kb.saturating_sub(was) > RSS_GROWTH_LIMIT_KB {
            grown.push(format!("{name}: {was} kB -> {kb} kB"));
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} replies were wrong:\n{}",
        bad.len(),
        outcomes.len(),
        bad.join("\n")
    );
    assert!(grown.is_empty(), "RSS grew by more than 10 MB: {grown:?}");
    Ok(())
}
