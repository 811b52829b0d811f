//! JetStream resources of DESIGN.md, created idempotently by the service that owns them.
//!
//! "Get, else create, else get again" tolerates several instances starting at once: the
//! loser of a creation race finds the winner's bucket on the second look.

use async_nats::jetstream::{self, kv, object_store, stream};
use berth_proto::subjects::{self, jetstream as names};
use std::time::Duration;

use crate::shutdown::Shutdown;

/// How long events stay in `BERTH_EVENTS`.
pub const EVENTS_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Cap on `BERTH_EVENTS` so a chatty fleet cannot fill the JetStream disk.
pub const EVENTS_MAX_BYTES: i64 = 256 * 1024 * 1024;

/// A JetStream resource could not be opened or created.
#[derive(Debug, thiserror::Error)]
#[error("JetStream {kind} {name}: {reason}")]
pub struct JetStreamSetupError {
    pub kind: &'static str,
    pub name: String,
    pub reason: String,
}

fn setup_error(kind: &'static str, name: &str, reason: impl ToString) -> JetStreamSetupError {
    JetStreamSetupError {
        kind,
        name: name.to_string(),
        reason: reason.to_string(),
    }
}

/// Opens or creates a KV bucket keeping `history` revisions per key.
pub async fn ensure_kv(
    js: &jetstream::Context,
    bucket: &str,
    description: &str,
    history: i64,
) -> Result<kv::Store, JetStreamSetupError> {
    if let Ok(store) = js.get_key_value(bucket).await {
        return Ok(store);
    }
    let created = js
        .create_key_value(kv::Config {
            bucket: bucket.to_string(),
            description: description.to_string(),
            history,
            ..Default::default()
        })
        .await;
    match created {
        Ok(store) => Ok(store),
        Err(create_err) => js
            .get_key_value(bucket)
            .await
            .map_err(|_| setup_error("KV bucket", bucket, create_err)),
    }
}

/// Opens or creates an Object Store bucket.
pub async fn ensure_object_store(
    js: &jetstream::Context,
    bucket: &str,
    description: &str,
) -> Result<object_store::ObjectStore, JetStreamSetupError> {
    if let Ok(store) = js.get_object_store(bucket).await {
        return Ok(store);
    }
    let created = js
        .create_object_store(object_store::Config {
            bucket: bucket.to_string(),
            description: Some(description.to_string()),
            ..Default::default()
        })
        .await;
    match created {
        Ok(store) => Ok(store),
        Err(create_err) => js
            .get_object_store(bucket)
            .await
            .map_err(|_| setup_error("object store", bucket, create_err)),
    }
}

/// Opens or creates the `BERTH_EVENTS` stream over `berth.v1.events.>`.
pub async fn ensure_events_stream(
    js: &jetstream::Context,
) -> Result<stream::Stream, JetStreamSetupError> {
    js.get_or_create_stream(stream::Config {
        name: names::EVENTS_STREAM.to_string(),
        subjects: vec![subjects::all_events()],
        max_age: EVENTS_MAX_AGE,
        max_bytes: EVENTS_MAX_BYTES,
        discard: stream::DiscardPolicy::Old,
        ..Default::default()
    })
    .await
    .map_err(|err| setup_error("stream", names::EVENTS_STREAM, err))
}

/// Retries `setup` until it succeeds (`Some`) or `shutdown` fires (`None`): at start NATS
/// may still be coming up, and a service must not exit just because JetStream answered
/// late — nor ignore a SIGTERM while it waits.
pub async fn with_retry<T, E, F, Fut>(what: &str, shutdown: &Shutdown, setup: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    tokio::select! {
        value = retry_forever(what, setup) => Some(value),
        () = shutdown.wait() => None,
    }
}

async fn retry_forever<T, E, F, Fut>(what: &str, mut setup: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let mut attempt = 0u32;
    loop {
        match setup().await {
            Ok(value) => return value,
            Err(err) => {
                attempt += 1;
                let delay = Duration::from_millis(200 * u64::from(attempt.min(10)));
                tracing::warn!(resource = what, error = %err, attempt, "JetStream setup failed; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}
