//! Serving typed endpoints as a NATS micro service (`$SRV.PING`, `$SRV.INFO`, `$SRV.STATS`).
//!
//! A handler is a plain async function from a decoded request to `Result<Reply,
//! ErrorEnvelope>`; decoding, encoding, the error envelope and its micro headers, and the
//! tracing span per message all happen here, once, for every endpoint.

use async_nats::service::{Service, ServiceExt};
use async_nats::{Client, HeaderMap};
use berth_proto::codec::{CONTENT_TYPE_HEADER, SERVICE_ERROR_CODE_HEADER, SERVICE_ERROR_HEADER};
use berth_proto::subjects::metadata_keys;
use berth_proto::{Encoding, ErrorEnvelope};
use futures::StreamExt;
use serde::{de::DeserializeOwned, Serialize};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
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
        })
    }

    /// The identity the service registered with.
    pub fn identity(&self) -> &ServiceIdentity {
        &self.identity
    }

    /// Serves `subject` under the micro endpoint name `name` with a typed handler. Each
    /// request runs in its own task so a slow one does not hold up the next.
    pub async fn endpoint<Req, Resp, F, Fut>(
        &mut self,
        name: &str,
        subject: String,
        handler: F,
    ) -> anyhow::Result<()>
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        F: Fn(Req, RequestContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Handled<Resp>> + Send + 'static,
    {
        let mut endpoint = self
            .service
            .endpoint_builder()
            .name(name)
            .add(subject.clone())
            .await
            .map_err(|err| anyhow::anyhow!("cannot serve endpoint {name} on {subject}: {err}"))?;
        let handler = Arc::new(handler);
        let client = self.client.clone();
        self.endpoint_loops.spawn(async move {
            let mut in_flight = JoinSet::new();
            loop {
                tokio::select! {
                    next = endpoint.next() => {
                        let Some(request) = next else { break };
                        let handler = Arc::clone(&handler);
                        let client = client.clone();
                        in_flight.spawn(handle_one(request, handler, client));
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

async fn handle_one<Req, Resp, F, Fut>(
    request: async_nats::service::Request,
    handler: Arc<F>,
    client: Client,
) where
    Req: DeserializeOwned,
    Resp: Serialize,
    F: Fn(Req, RequestContext) -> Fut,
    Fut: Future<Output = Handled<Resp>>,
{
    let message = &request.message;
    let subject = message.subject.to_string();
    let encoding = Encoding::from_content_type(
        message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(CONTENT_TYPE_HEADER))
            .map(|value| value.as_str()),
    );
    let span = tracing::info_span!("request", subject = %subject, encoding = ?encoding);
    async {
        let outcome = match encoding.decode::<Req>(&message.payload) {
            Ok(body) => {
                let context = RequestContext {
                    subject: subject.clone(),
                    headers: message.headers.clone(),
                    encoding,
                    client,
                };
                handler(body, context).await
            }
            Err(err) => Err(ErrorEnvelope::invalid(err.to_string())),
        };
        let (payload, headers) = match outcome.and_then(|reply| {
            encoding
                .encode(&reply)
                .map_err(|err| ErrorEnvelope::internal(err.to_string()))
        }) {
            Ok(payload) => (payload, reply_headers(encoding)),
            Err(envelope) => {
                tracing::info!(code = %envelope.code, message = %envelope.message, "request failed");
                error_reply(encoding, &envelope)
            }
        };
        if let Err(err) = request.respond_with_headers(Ok(payload.into()), headers).await {
            tracing::warn!(error = %err, "cannot send reply");
        }
    }
    .instrument(span)
    .await
}

fn reply_headers(encoding: Encoding) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE_HEADER, encoding.content_type());
    headers
}

/// Body = the envelope in the request's encoding; headers = the NATS micro error headers,
/// so generic micro tooling sees an error too.
pub fn error_reply(encoding: Encoding, envelope: &ErrorEnvelope) -> (Vec<u8>, HeaderMap) {
    let mut headers = reply_headers(encoding);
    headers.insert(
        SERVICE_ERROR_HEADER,
        single_line(&envelope.message).as_str(),
    );
    headers.insert(
        SERVICE_ERROR_CODE_HEADER,
        envelope.code.status_code().to_string().as_str(),
    );
    // Encoding an envelope of two strings cannot fail; fall back to JSON text if it ever does.
    let body = encoding.encode(envelope).unwrap_or_else(|_| {
        format!("{{\"code\":\"{}\",\"message\":\"\"}}", envelope.code).into_bytes()
    });
    (body, headers)
}

/// Header values cannot hold line breaks.
fn single_line(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}
