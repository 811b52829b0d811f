//! Serving typed endpoints as a NATS micro service (`$SRV.PING`, `$SRV.INFO`, `$SRV.STATS`).
//!
//! A handler is a plain async function from a decoded request to `Result<Reply,
//! ErrorEnvelope>`; decoding, encoding, the error envelope and its micro headers, and the
//! tracing span per message all happen here, once, for every endpoint.

use async_nats::service::{Service, ServiceExt};
use async_nats::{Client, HeaderMap};
use berth_proto::codec::{
    CodecError, BERTH_ERROR_HEADER, CONTENT_TYPE_HEADER, SERVICE_ERROR_CODE_HEADER,
    SERVICE_ERROR_HEADER,
};
use berth_proto::json_shape;
use berth_proto::subjects::{self, metadata_keys};
use berth_proto::{Encoding, ErrorEnvelope};
use futures::StreamExt;
use schemars::JsonSchema;
use serde::{de::DeserializeOwned, Serialize};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio::task::JoinSet;
use tracing::Instrument;

/// How long shutdown waits for queued messages to reach NATS.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// What a handler returns: the reply, or the error envelope to send instead.
pub type Handled<T> = Result<T, ErrorEnvelope>;

/// Who this service is on the bus.
#[derive(Debug, Clone)]
pub struct ServiceIdentity {
    /// Micro service name (`berth-executor`, …), from `berth_proto::subjects::service_names`.
    pub name: String,
    /// SemVer of the binary.
    pub version: String,
    /// Node the instance runs on (node services) or the host it runs on (others).
    pub node_id: String,
    pub description: String,
    /// Queue group shared by every instance of the service.
    pub queue_group: String,
}

/// What a handler may need besides the body.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub subject: String,
    pub headers: Option<HeaderMap>,
    pub encoding: Encoding,
    /// The service's own client, for handlers that publish progress or call other services.
    pub client: Client,
}

/// A running micro service and the tasks serving its endpoints.
pub struct ServiceHandle {
    client: Client,
    identity: ServiceIdentity,
    service: Service,
    endpoint_loops: JoinSet<()>,
    /// Request and reply schema of every endpoint served so far, for `berth.v1.schema`.
    schemas: Arc<Mutex<Vec<serde_json::Value>>>,
}

/// The JSON Schema of a wire type, as a JSON value.
fn schema_of<T: JsonSchema>() -> serde_json::Value {
    schemars::schema_for!(T).to_value()
}

/// Answers `berth.v1.schema` with this instance's endpoints. Every instance answers (no
/// queue group), like `$SRV.INFO`: each service knows only its own endpoints, and the
/// schemas come from the very types its handlers decode and encode, so they cannot drift.
///
/// It is subscribed after every endpoint, on the same connection, and the server takes a
/// connection's subscriptions in order: an instance that answers here serves all its
/// endpoints (`$SRV.PING` answers from the moment the service exists, before them).
async fn serve_schemas(
    client: Client,
    identity: ServiceIdentity,
    schemas: Arc<Mutex<Vec<serde_json::Value>>>,
    mut requests: async_nats::Subscriber,
) {
    while let Some(request) = requests.next().await {
        let Some(reply) = request.reply else { continue };
        let endpoints = schemas
            .lock()
            .map(|schemas| schemas.clone())
            .unwrap_or_default();
        let body = serde_json::json!({
            "service": identity.name,
            "node_id": identity.node_id,
            "version": identity.version,
            "error": schema_of::<ErrorEnvelope>(),
            "endpoints": endpoints,
        });
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE_HEADER, Encoding::Json.content_type());
        let payload = serde_json::to_vec(&body).unwrap_or_default();
        if let Err(err) = client
            .publish_with_headers(reply, headers, payload.into())
            .await
        {
            tracing::warn!(error = %err, "cannot answer berth.v1.schema");
        }
    }
}

impl ServiceHandle {
    /// Registers the micro service; endpoints are added with [`ServiceHandle::endpoint`].
    pub async fn start(client: &Client, identity: ServiceIdentity) -> anyhow::Result<Self> {
        let started = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let metadata = HashMap::from([
            (metadata_keys::NODE_ID.to_string(), identity.node_id.clone()),
            (metadata_keys::VERSION.to_string(), identity.version.clone()),
            (metadata_keys::STARTED.to_string(), started),
        ]);
        let service = client
            .service_builder()
            .description(identity.description.clone())
            .metadata(metadata)
            .queue_group(identity.queue_group.clone())
            .start(identity.name.clone(), identity.version.clone())
            .await
            .map_err(|err| {
                anyhow::anyhow!("cannot register micro service {}: {err}", identity.name)
            })?;
        Ok(ServiceHandle {
            client: client.clone(),
            identity,
            service,
            endpoint_loops: JoinSet::new(),
            schemas: Arc::new(Mutex::new(Vec::new())),
        })
    }

    /// The identity the service registered with.
    pub fn identity(&self) -> &ServiceIdentity {
        &self.identity
    }

    /// Serves `subject` under the micro endpoint name `name` with a typed handler. Each
    /// request runs in its own task so a slow one does not hold up the next. The request
    /// and reply types' JSON Schemas go in the endpoint's `$SRV.INFO` metadata
    /// (`request_schema`, `response_schema`, compact JSON) and in `berth.v1.schema`.
    pub async fn endpoint<Req, Resp, F, Fut>(
        &mut self,
        name: &str,
        subject: String,
        handler: F,
    ) -> anyhow::Result<()>
    where
        Req: DeserializeOwned + JsonSchema + Send + 'static,
        Resp: Serialize + JsonSchema + Send + 'static,
        F: Fn(Req, RequestContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Handled<Resp>> + Send + 'static,
    {
        let (request_schema, response_schema) = (schema_of::<Req>(), schema_of::<Resp>());
        let metadata = HashMap::from([
            (
                metadata_keys::REQUEST_SCHEMA.to_string(),
                request_schema.to_string(),
            ),
            (
                metadata_keys::RESPONSE_SCHEMA.to_string(),
                response_schema.to_string(),
            ),
        ]);
        if let Ok(mut schemas) = self.schemas.lock() {
            schemas.push(serde_json::json!({
                "name": name,
                "subject": subject,
                "request": request_schema,
                "response": response_schema,
            }));
        }
        let mut endpoint = self
            .service
            .endpoint_builder()
            .name(name)
            .metadata(metadata)
            .add(subject.clone())
            .await
            .map_err(|err| anyhow::anyhow!("cannot serve endpoint {name} on {subject}: {err}"))?;
        let handler = Arc::new(handler);
        let client = self.client.clone();
        let request_schema = Arc::new(request_schema);
        self.endpoint_loops.spawn(async move {
            let mut in_flight = JoinSet::new();
            loop {
                tokio::select! {
                    next = endpoint.next() => {
                        let Some(request) = next else { break };
                        let handler = Arc::clone(&handler);
                        let client = client.clone();
                        let schema = Arc::clone(&request_schema);
                        in_flight.spawn(handle_one(request, handler, client, schema));
                    }
                    // Reap finished handlers so the set does not grow without bound.
                    Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                }
            }
            // The endpoint was stopped: let requests already taken finish their replies.
            while in_flight.join_next().await.is_some() {}
        });
        Ok(())
    }

    /// Serves until `shutdown` resolves, then stops taking requests, lets the ones in
    /// flight answer, and drains the connection so nothing queued is lost.
    pub async fn serve_until(mut self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let requests = self
            .client
            .subscribe(subjects::schema())
            .await
            .map_err(|err| anyhow::anyhow!("cannot serve {}: {err}", subjects::schema()))?;
        let schema_loop = tokio::spawn(serve_schemas(
            self.client.clone(),
            self.identity.clone(),
            Arc::clone(&self.schemas),
            requests,
        ));
        tokio::select! {
            () = shutdown => {
                tracing::info!(service = %self.identity.name, "shutting down");
            }
            Some(result) = self.endpoint_loops.join_next() => {
                // An endpoint loop only ends on its own if its subscription died.
                if let Err(err) = result {
                    tracing::error!(service = %self.identity.name, error = %err, "endpoint task failed");
                }
            }
        }
        schema_loop.abort();
        // Stopping the micro service unsubscribes through the connection, which waits for
        // a server that may be gone for good: bound it like the drain below, then drop the
        // endpoint loops (their replies could not be sent anyway).
        let stopped = tokio::time::timeout(DRAIN_TIMEOUT, async {
            let result = self.service.stop().await;
            while self.endpoint_loops.join_next().await.is_some() {}
            result
        })
        .await;
        match stopped {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(error = %err, "stopping the micro service failed"),
            Err(_) => {
                tracing::warn!(
                    "micro service not stopped within {DRAIN_TIMEOUT:?}; exiting anyway"
                );
                self.endpoint_loops.abort_all();
            }
        }
        // With NATS gone a drain would wait for a server that may never return; replies
        // still queued then are lost either way, so give up after a bounded wait.
        match tokio::time::timeout(DRAIN_TIMEOUT, self.client.drain()).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(error = %err, "draining the NATS connection failed"),
            Err(_) => tracing::warn!(
                "NATS connection not drained within {DRAIN_TIMEOUT:?}; exiting anyway"
            ),
        }
        Ok(())
    }
}

/// Decodes a request; a JSON body must also have objects wherever its schema says so
/// (serde alone would take an array for a struct, by position, at any depth).
fn decode_request<Req: DeserializeOwned>(
    encoding: Encoding,
    payload: &[u8],
    request_schema: &serde_json::Value,
) -> Result<Req, String> {
    if encoding == Encoding::Json && !payload.iter().all(u8::is_ascii_whitespace) {
        let value: serde_json::Value = serde_json::from_slice(payload)
            .map_err(|err| CodecError::JsonDecode(err.to_string()).to_string())?;
        json_shape::refuse_positional_objects(request_schema, &value)
            .map_err(|err| CodecError::JsonDecode(err).to_string())?;
    }
    encoding
        .decode_request::<Req>(payload)
        .map_err(|err| err.to_string())
}

async fn handle_one<Req, Resp, F, Fut>(
    mut request: async_nats::service::Request,
    handler: Arc<F>,
    client: Client,
    request_schema: Arc<serde_json::Value>,
) where
    Req: DeserializeOwned,
    Resp: Serialize,
    F: Fn(Req, RequestContext) -> Fut,
    Fut: Future<Output = Handled<Resp>>,
{
    let subject = request.message.subject.to_string();
    let payload = request.message.payload.clone();
    let request_headers = request.message.headers.clone();
    let encoding = Encoding::from_content_type(
        request_headers
            .as_ref()
            .and_then(|headers| headers.get(CONTENT_TYPE_HEADER))
            .map(|value| value.as_str()),
    );
    let span = tracing::info_span!("request", subject = %subject, encoding = ?encoding);
    async {
        let max_payload = client.max_payload();
        let outcome = match decode_request::<Req>(encoding, &payload, &request_schema) {
            Ok(body) => {
                let context = RequestContext {
                    subject: subject.clone(),
                    headers: request_headers.clone(),
                    encoding,
                    client: client.clone(),
                };
                handler(body, context).await
            }
            Err(err) => Err(ErrorEnvelope::invalid(err)),
        };
        let reply = outcome.and_then(|reply| {
            let payload = encoding
                .encode(&reply)
                .map_err(|err| ErrorEnvelope::internal(err.to_string()))?;
            let headers = reply_headers(encoding);
            check_fits(payload.len() + header_wire_len(&headers), max_payload)?;
            Ok((payload, headers))
        });
        let sent = match reply {
            Ok((payload, headers)) => request.respond_with_headers(Ok(payload.into()), headers).await,
            Err(envelope) => {
                let envelope = envelope.sanitized();
                tracing::info!(code = %envelope.code, message = %envelope.message, "request failed");
                respond_error(&mut request, &client, encoding, &envelope).await
            }
        };
        if let Err(err) = sent {
            tracing::warn!(error = %err, "cannot send reply");
        }
    }
    .instrument(span)
    .await
}

/// Refuses a reply that NATS would refuse to carry: the caller gets this error at once
/// instead of waiting out its deadline for a reply the server dropped.
fn check_fits(size: usize, max_payload: usize) -> Result<(), ErrorEnvelope> {
    if size <= max_payload {
        return Ok(());
    }
    Err(ErrorEnvelope::internal(format!(
        "the reply is {size} bytes, over the NATS server's max_payload of {max_payload}; \
         ask for less (a filter, a narrower request) or raise max_payload"
    )))
}

/// Bytes the header block takes on the wire (`NATS/1.0\r\n`, `key: value\r\n`…, `\r\n`),
/// which the server counts against max_payload together with the body.
fn header_wire_len(headers: &HeaderMap) -> usize {
    let mut len = b"NATS/1.0\r\n\r\n".len();
    for (name, values) in headers.iter() {
        for value in values {
            len += AsRef::<str>::as_ref(name).len() + b": \r\n".len() + value.as_str().len();
        }
    }
    len
}

/// Sends the envelope as the reply and counts the error in `$SRV.STATS`. async-nats only
/// counts an error (`num_errors`, `last_error`) when it sends the micro error reply itself,
/// and that reply has an empty body; berth's callers need the envelope. So the envelope
/// goes to the caller here, and the library's bodiless error reply, which does the
/// counting, goes to a subject nobody listens to.
async fn respond_error(
    request: &mut async_nats::service::Request,
    client: &Client,
    encoding: Encoding,
    envelope: &ErrorEnvelope,
) -> Result<(), async_nats::PublishError> {
    let Some(reply_to) = request.message.reply.clone() else {
        // A publish without a reply subject: there is nobody to answer, only count it.
        return count_error(request, envelope).await;
    };
    let (body, headers) = error_reply(encoding, envelope);
    client
        .publish_with_headers(reply_to, headers, body.into())
        .await?;
    count_error(request, envelope).await
}

async fn count_error(
    request: &mut async_nats::service::Request,
    envelope: &ErrorEnvelope,
) -> Result<(), async_nats::PublishError> {
    request.message.reply = Some(subjects::error_count_sink().into());
    let status = async_nats::service::error::Error {
        status: header_text(&envelope.message),
        code: usize::from(envelope.code.status_code()),
    };
    request
        .respond_with_headers(Err(status), HeaderMap::new())
        .await
}

fn reply_headers(encoding: Encoding) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE_HEADER, encoding.content_type());
    headers
}

/// Body = the envelope in the request's encoding; headers = the NATS micro error headers
/// (`Nats-Service-Error-Code` the numeric status, `Nats-Service-Error` the message) so
/// generic micro tooling sees an error too, and `Berth-Error` berth's own kind.
pub fn error_reply(encoding: Encoding, envelope: &ErrorEnvelope) -> (Vec<u8>, HeaderMap) {
    let envelope = envelope.clone().sanitized();
    let mut headers = reply_headers(encoding);
    headers.insert(
        SERVICE_ERROR_HEADER,
        header_text(&envelope.message).as_str(),
    );
    headers.insert(
        SERVICE_ERROR_CODE_HEADER,
        envelope.code.status_code().to_string().as_str(),
    );
    headers.insert(BERTH_ERROR_HEADER, envelope.code.as_str());
    // Encoding an envelope of two strings cannot fail; fall back to JSON text if it ever does.
    let body = encoding.encode(&envelope).unwrap_or_else(|_| {
        format!("{{\"code\":\"{}\",\"message\":\"\"}}", envelope.code).into_bytes()
    });
    (body, headers)
}

/// A header value: the sanitized message has no line breaks left, but a header is
/// ASCII-only on some clients, so anything else is escaped too.
fn header_text(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() {
                c.to_string()
            } else {
                c.escape_unicode().to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_headers_follow_the_micro_spec_and_name_the_kind() {
        let envelope = ErrorEnvelope::not_found("no such image: café\x1b");
        let (body, headers) = error_reply(Encoding::Json, &envelope);
        let get = |name: &str| headers.get(name).map(|value| value.as_str().to_string());
        assert_eq!(get(SERVICE_ERROR_CODE_HEADER).as_deref(), Some("404"));
        assert_eq!(get(BERTH_ERROR_HEADER).as_deref(), Some("not_found"));
        assert_eq!(
            get(SERVICE_ERROR_HEADER).as_deref(),
            Some("no such image: caf\\u{e9}\\x1b")
        );
        let back: ErrorEnvelope = Encoding::Json.decode(&body).expect("an envelope");
        assert_eq!(back, envelope);
    }

    #[test]
    fn an_envelope_built_field_by_field_is_still_escaped() {
        let raw = ErrorEnvelope {
            code: berth_proto::ErrorKind::Invalid,
            message: "tar: \x1b[2J\x07".to_string(),
        };
        let (body, _) = error_reply(Encoding::Bincode, &raw);
        let back: ErrorEnvelope = Encoding::Bincode.decode(&body).expect("an envelope");
        assert_eq!(back.message, "tar: \\x1b[2J\\x07");
    }

    #[test]
    fn replies_over_max_payload_become_an_error() {
        assert!(check_fits(1024, 1024).is_ok());
        let err = check_fits(1025, 1024).expect_err("over the limit");
        assert_eq!(err.code, berth_proto::ErrorKind::Internal);
        assert!(
            err.message.contains("1025") && err.message.contains("1024"),
            "{err}"
        );
    }

    #[test]
    fn header_length_matches_the_wire_form() {
        let mut headers = HeaderMap::new();
        headers.insert("Content-Type", "application/json");
        // "NATS/1.0\r\n" + "Content-Type: application/json\r\n" + "\r\n"
        assert_eq!(header_wire_len(&headers), 10 + 32 + 2);
    }
}
