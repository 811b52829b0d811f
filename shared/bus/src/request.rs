//! Typed requests with a deadline and a typed error.

use async_nats::{Client, HeaderMap, Message, RequestErrorKind};
use berth_proto::codec::{
    CodecError, BERTH_ERROR_HEADER, CONTENT_TYPE_HEADER, SERVICE_ERROR_CODE_HEADER,
    SERVICE_ERROR_HEADER,
};
use berth_proto::{Encoding, ErrorEnvelope, ErrorKind};
use serde::{de::DeserializeOwned, Serialize};
use std::time::Duration;

/// Why a request did not produce a reply value.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("{subject}: no reply within {deadline:?}")]
    TimedOut { subject: String, deadline: Duration },
    #[error("{subject}: neither progress nor a reply for {idle:?} (did the service stop?)")]
    Stalled { subject: String, idle: Duration },
    #[error("{subject}: no service is listening (is it running?)")]
    NoResponders { subject: String },
    /// The service answered with an error envelope.
    #[error("{0}")]
    Service(ErrorEnvelope),
    #[error("{subject}: {source}")]
    Codec { subject: String, source: CodecError },
    #[error("{subject}: {reason}")]
    Transport { subject: String, reason: String },
}

impl BusError {
    /// The error kind a service sent, if this is a service error.
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            BusError::Service(envelope) => Some(envelope.code),
            _ => None,
        }
    }
}

/// Sends `body` to `subject` and waits at most `deadline` for the typed reply.
pub async fn request<Req, Resp>(
    client: &Client,
    subject: &str,
    body: &Req,
    encoding: Encoding,
    deadline: Duration,
) -> Result<Resp, BusError>
where
    Req: Serialize,
    Resp: DeserializeOwned,
{
    let payload = encoding.encode(body).map_err(|source| BusError::Codec {
        subject: subject.to_string(),
        source,
    })?;
    let message = raw_request(client, subject, payload.into(), encoding, deadline).await?;
    decode_reply(subject, encoding, &message)
}

/// Sends an already-encoded body; the reply message is returned undecoded. Used by
/// tests that send malformed bodies on purpose and by the benchmark.
pub async fn raw_request(
    client: &Client,
    subject: &str,
    payload: bytes::Bytes,
    encoding: Encoding,
    deadline: Duration,
) -> Result<Message, BusError> {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE_HEADER, encoding.content_type());
    let request = async_nats::Request::new()
        .payload(payload)
        .headers(headers)
        .timeout(Some(deadline));
    client
        .send_request(subject.to_string(), request)
        .await
        .map_err(|err| match err.kind() {
            RequestErrorKind::TimedOut => BusError::TimedOut {
                subject: subject.to_string(),
                deadline,
            },
            RequestErrorKind::NoResponders => BusError::NoResponders {
                subject: subject.to_string(),
            },
            _ => BusError::Transport {
                subject: subject.to_string(),
                reason: err.to_string(),
            },
        })
}

/// Turns a reply message into the typed value or the service's error envelope.
pub fn decode_reply<Resp: DeserializeOwned>(
    subject: &str,
    encoding: Encoding,
    message: &Message,
) -> Result<Resp, BusError> {
    if let Some(envelope) = error_of_reply(encoding, message) {
        return Err(BusError::Service(envelope));
    }
    encoding
        .decode(&message.payload)
        .map_err(|source| BusError::Codec {
            subject: subject.to_string(),
            source,
        })
}

/// The error envelope of an error reply, `None` for a success reply. A reply that sets the
/// micro error headers but whose body is not an envelope (a non-berth micro service) is
/// mapped from `Berth-Error`, else from the numeric status. The message is escaped and
/// bounded whoever sent it, since callers print it.
pub fn error_of_reply(encoding: Encoding, message: &Message) -> Option<ErrorEnvelope> {
    let headers = message.headers.as_ref()?;
    let status = headers.get(SERVICE_ERROR_CODE_HEADER)?;
    if let Ok(envelope) = encoding.decode::<ErrorEnvelope>(&message.payload) {
        return Some(envelope.sanitized());
    }
    let text = headers
        .get(SERVICE_ERROR_HEADER)
        .map(|value| value.as_str().to_string())
        .unwrap_or_else(|| "service error without a message".to_string());
    let named = headers
        .get(BERTH_ERROR_HEADER)
        .and_then(|value| ErrorKind::parse(value.as_str().trim()));
    let kind = named.unwrap_or(match status.as_str().trim() {
        "400" => ErrorKind::Invalid,
        "404" => ErrorKind::NotFound,
        "409" => ErrorKind::Conflict,
        "503" => ErrorKind::Unavailable,
        _ => ErrorKind::Internal,
    });
    Some(ErrorEnvelope::new(kind, text))
}

/// Sends a long-running request whose server publishes progress on a subject chosen
/// here: `make_body` receives that subject and builds the request. The call fails with
/// `TimedOut` only when neither progress nor the reply arrives for `idle` — so a large
/// unpack may take an hour while a dead server is noticed in seconds. Each progress
/// message that decodes as `P` is handed to `on_progress`.
pub async fn request_with_progress<Req, Resp, P>(
    client: &Client,
    subject: &str,
    make_body: impl FnOnce(String) -> Req,
    encoding: Encoding,
    idle: Duration,
    mut on_progress: impl FnMut(P),
) -> Result<Resp, BusError>
where
    Req: Serialize,
    Resp: DeserializeOwned,
    P: DeserializeOwned,
{
    use futures::StreamExt;
    let progress_subject = berth_proto::subjects::progress(&client.new_inbox(), "1");
    let transport = |reason: String| BusError::Transport {
        subject: subject.to_string(),
        reason,
    };
    let mut progress = client
        .subscribe(progress_subject.clone())
        .await
        .map_err(|err| transport(format!("cannot subscribe for progress: {err}")))?;
    let body = make_body(progress_subject);
    let payload = encoding.encode(&body).map_err(|source| BusError::Codec {
        subject: subject.to_string(),
        source,
    })?;
    // The overall deadline is only a backstop; liveness comes from progress messages.
    let reply = raw_request(
        client,
        subject,
        payload.into(),
        encoding,
        Duration::from_secs(24 * 3600),
    );
    tokio::pin!(reply);
    loop {
        tokio::select! {
            message = &mut reply => return decode_reply(subject, encoding, &message?),
            update = progress.next() => {
                if let Some(update) = update {
                    if let Ok(value) = encoding.decode::<P>(&update.payload) {
                        on_progress(value);
                    }
                }
            }
            () = tokio::time::sleep(idle) => {
                return Err(BusError::Stalled { subject: subject.to_string(), idle });
            }
        }
    }
}

/// Publishes a long request's progress on the subject its caller chose (if any).
#[derive(Clone)]
pub struct ProgressSink {
    client: Client,
    subject: Option<String>,
    encoding: Encoding,
}

impl ProgressSink {
    /// Progress for one request; `subject` is the request's `progress` field.
    pub fn new(client: Client, subject: Option<String>, encoding: Encoding) -> Self {
        ProgressSink {
            client,
            subject,
            encoding,
        }
    }

    /// Publishes one update; progress is advisory, so failures are only logged.
    pub async fn publish<P: Serialize>(&self, update: &P) {
        let Some(subject) = &self.subject else { return };
        match self.encoding.encode(update) {
            Ok(payload) => {
                if let Err(err) = self.client.publish(subject.clone(), payload.into()).await {
                    tracing::debug!(subject, error = %err, "cannot publish progress");
                }
            }
            Err(err) => tracing::debug!(subject, error = %err, "cannot encode progress"),
        }
    }

    /// Runs `work`, publishing `heartbeat()` every `interval` until it finishes, so the
    /// caller knows the server is alive during a step that reports nothing by itself.
    pub async fn heartbeat_while<T, P: Serialize>(
        &self,
        interval: Duration,
        mut heartbeat: impl FnMut() -> P,
        work: impl std::future::Future<Output = T>,
    ) -> T {
        if self.subject.is_none() {
            return work.await;
        }
        tokio::pin!(work);
        let mut ticker = tokio::time::interval(interval);
        loop {
            tokio::select! {
                done = &mut work => return done,
                _ = ticker.tick() => self.publish(&heartbeat()).await,
            }
        }
    }
}
