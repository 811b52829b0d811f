//! The transport: one `reqwest` client, scheme choice (plain HTTP only where allowed),
//! auth challenges answered once per request, bounded retries for idempotent requests,
//! and HTTP statuses turned into [`RegistryError`]s that name image and subject.

use super::auth::{AuthState, Scheme, TokenResponse};
use super::error::RegistryError;
use super::RegistryConfig;
use crate::formats::auth::{parse_challenge, percent_encode, token_url, Challenge, Credentials};
use crate::formats::Reference;
use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{Method, Response, StatusCode, Url};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most of an error body or token response read into memory.
const SMALL_BODY_LIMIT: usize = 64 * 1024;
/// How long the answer of a TLS probe of an insecure registry is trusted.
const TLS_PROBE_TTL: Duration = Duration::from_secs(60);

/// A client for OCI distribution registries. Cheap to clone: clones share the
/// connection pool, credentials and token cache.
#[derive(Clone)]
pub struct RegistryClient {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) http: reqwest::Client,
    /// For registries allowed plain HTTP that turn out to speak TLS: certificates are not
    /// verified there, as Docker does for its insecure registries.
    http_unverified: reqwest::Client,
    /// Per such host: whether it answered HTTPS, and until when that answer holds.
    tls_probes: std::sync::Mutex<HashMap<String, (bool, Instant)>>,
    pub(super) config: RegistryConfig,
    auth: AuthState,
    /// Serializes token fetches, so that concurrent requests challenged at once (the
    /// first layers of a pull) wait for one token instead of each fetching their own.
    token_fetch: tokio::sync::Mutex<()>,
}

/// One repository on one registry, with the scope its requests need.
#[derive(Clone)]
pub(super) struct Target {
    /// The reference as users write it, for errors.
    pub(super) image: String,
    /// Host:port the API is served from.
    pub(super) host: String,
    /// `scheme://host/v2/<path>/`.
    pub(super) repo_url: Url,
    /// Token scope(s), space-separated.
    pub(super) scope: String,
    pub(super) creds: Option<Credentials>,
    /// HTTPS without certificate verification (an insecure registry speaking TLS).
    pub(super) unverified_tls: bool,
}

impl Target {
    /// A URL under the repository (`manifests/latest`, `blobs/sha256:…`).
    pub(super) fn url(&self, rest: &str) -> Result<Url, RegistryError> {
        self.repo_url
            .join(rest)
            .map_err(|e| RegistryError::Invalid {
                image: self.image.clone(),
                reason: format!("bad URL {}{rest}: {e}", self.repo_url),
            })
    }
}

/// A request body: replayable bytes, or a stream that can be sent once.
pub(super) enum ReqBody {
    Empty,
    Bytes(Bytes),
    Stream(Option<reqwest::Body>),
}

/// A request to send through [`RegistryClient::send`].
pub(super) struct Req<'a> {
    pub(super) method: Method,
    pub(super) url: Url,
    pub(super) headers: HeaderMap,
    pub(super) body: ReqBody,
    /// What is fetched or pushed, for errors: `manifest latest`, `blob sha256:…`.
    pub(super) what: &'a str,
    /// Only idempotent requests (GET, HEAD) are retried.
    pub(super) idempotent: bool,
    /// Whole-request timeout; `None` for blob bodies, which rely on the read timeout.
    pub(super) timeout: Option<Duration>,
}

impl<'a> Req<'a> {
    pub(super) fn new(method: Method, url: Url, what: &'a str) -> Self {
        let idempotent = method == Method::GET || method == Method::HEAD;
        Req {
            method,
            url,
            headers: HeaderMap::new(),
            body: ReqBody::Empty,
            what,
            idempotent,
            timeout: None,
        }
    }

    pub(super) fn header(mut self, name: reqwest::header::HeaderName, value: &str) -> Self {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.insert(name, v);
        }
        self
    }
}

impl RegistryClient {
    /// A client with these settings. Fails only if the TLS backend cannot start.
    pub fn new(config: RegistryConfig) -> Result<Self, RegistryError> {
        let build = |verify: bool| {
            reqwest::Client::builder()
                .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(config.connect_timeout)
                .read_timeout(config.read_timeout)
                // Blob GETs redirect to storage (S3, CDN); reqwest drops Authorization
                // when the redirect leaves the registry's origin, as those backends require.
                .redirect(reqwest::redirect::Policy::limited(10))
                .danger_accept_invalid_certs(!verify)
                .build()
                .map_err(|e| RegistryError::Invalid {
                    image: "registry client".to_string(),
                    reason: error_chain(&e),
                })
        };
        Ok(RegistryClient {
            inner: Arc::new(Inner {
                http: build(true)?,
                http_unverified: build(false)?,
                tls_probes: Default::default(),
                config,
                auth: AuthState::default(),
                token_fetch: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// The settings this client runs with.
    pub fn config(&self) -> &RegistryConfig {
        &self.inner.config
    }

    /// Where and how to talk about `reference`; `actions` is `pull` or `pull,push`,
    /// `extra_scopes` e.g. `repository:other/repo:pull` for a cross-repo mount.
    pub(super) async fn target(
        &self,
        reference: &Reference,
        actions: &str,
        extra_scopes: &[String],
    ) -> Result<Target, RegistryError> {
        let image = reference.familiar();
        let host = reference.registry_host().to_string();
        // Docker's rule for registries allowed plain HTTP (loopback, listed): HTTPS if
        // they speak it, certificate unchecked; plain HTTP otherwise.
        let unverified_tls = reference.allows_plain_http(&self.inner.config.insecure_registries)
            && self.speaks_tls(&host).await;
        let scheme = if unverified_tls
            || !reference.allows_plain_http(&self.inner.config.insecure_registries)
        {
            "https"
        } else {
            "http"
        };
        let repo_url =
            Url::parse(&format!("{scheme}://{host}/v2/{}/", reference.path())).map_err(|e| {
                RegistryError::Invalid {
                    image: image.clone(),
                    reason: format!("cannot build a registry URL for {host}: {e}"),
                }
            })?;
        let mut scope = format!("repository:{}:{actions}", reference.path());
        for s in extra_scopes {
            scope.push(' ');
            scope.push_str(s);
        }
        let creds = self
            .inner
            .auth
            .credentials(&self.inner.config, reference.domain(), &image)?;
        Ok(Target {
            image,
            host,
            repo_url,
            scope,
            creds,
            unverified_tls,
        })
    }

    /// Whether an insecure registry answers HTTPS: probed with `GET /v2/` (any HTTP
    /// answer counts), remembered for a while so that a registry restarted with or
    /// without TLS is noticed.
    async fn speaks_tls(&self, host: &str) -> bool {
        let now = Instant::now();
        if let Some((tls, until)) = lock(&self.inner.tls_probes).get(host) {
            if now < *until {
                return *tls;
            }
        }
        let probe = self
            .inner
            .http_unverified
            .get(format!("https://{host}/v2/"))
            .timeout(self.inner.config.connect_timeout)
            .send()
            .await;
        let tls = probe.is_ok();
        lock(&self.inner.tls_probes).insert(host.to_string(), (tls, now + TLS_PROBE_TTL));
        tls
    }

    fn http_for(&self, t: &Target) -> &reqwest::Client {
        if t.unverified_tls {
            &self.inner.http_unverified
        } else {
            &self.inner.http
        }
    }

    /// Sends `req`, answering one auth challenge and retrying idempotent requests on
    /// connection errors, 5xx and 429 (bounded, exponential backoff, `Retry-After`
    /// honoured up to `max_retry_delay`). Returns the response whatever its status
    /// otherwise; callers check the status they expect and use [`Self::status_error`].
    pub(super) async fn send(
        &self,
        t: &Target,
        mut req: Req<'_>,
    ) -> Result<Response, RegistryError> {
        let cfg = &self.inner.config;
        let mut attempt = 0u32;
        let mut answered_challenge = false;
        loop {
            let mut rb = self
                .http_for(t)
                .request(req.method.clone(), req.url.clone())
                .headers(req.headers.clone());
            if let Some(timeout) = req.timeout {
                rb = rb.timeout(timeout);
            }
            let sent_auth = self.inner.auth.header(&t.host, &t.scope, t.creds.as_ref());
            if let Some(h) = &sent_auth {
                rb = rb.header(AUTHORIZATION, h);
            }
            let replayable = !matches!(req.body, ReqBody::Stream(_));
            rb = match &mut req.body {
                ReqBody::Empty => rb,
                ReqBody::Bytes(b) => rb.body(b.clone()),
                ReqBody::Stream(s) => match s.take() {
                    Some(body) => rb.body(body),
                    None => {
                        return Err(RegistryError::Protocol {
                            image: t.image.clone(),
                            what: req.what.to_string(),
                            registry: t.host.clone(),
                            reason: "request needed again after its streamed body was sent"
                                .to_string(),
                        })
                    }
                },
            };
            let resp = match rb.send().await {
                Ok(r) => r,
                Err(e) => {
                    if req.idempotent && attempt < cfg.retries {
                        tokio::time::sleep(backoff(cfg, attempt)).await;
                        attempt += 1;
                        continue;
                    }
                    return Err(self.unavailable(t, req.what, &e));
                }
            };
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && !answered_challenge && replayable {
                answered_challenge = true;
                if self
                    .answer_challenge(t, &resp, sent_auth.as_deref())
                    .await?
                {
                    continue;
                }
            }
            if (status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error())
                && req.idempotent
                && attempt < cfg.retries
            {
                let wait = retry_after(&resp).unwrap_or_else(|| backoff(cfg, attempt));
                if wait <= cfg.max_retry_delay {
                    drop(resp);
                    tracing::debug!(image = %t.image, what = req.what, %status, ?wait, "registry retry");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                    continue;
                }
            }
            return Ok(resp);
        }
    }

    /// Learns the scheme a 401 asks for and gets a token if it is bearer. `Ok(true)`
    /// when the request should be sent again with the new Authorization.
    async fn answer_challenge(
        &self,
        t: &Target,
        resp: &Response,
        sent_auth: Option<&str>,
    ) -> Result<bool, RegistryError> {
        let Some(header) = resp
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
        else {
            return Ok(false);
        };
        let challenge = parse_challenge(header).map_err(|source| RegistryError::Credentials {
            image: t.image.clone(),
            source,
        })?;
        match challenge.scheme.as_str() {
            "basic" => {
                // Without basic credentials, sending again changes nothing.
                let has_basic = t
                    .creds
                    .as_ref()
                    .and_then(Credentials::basic_header)
                    .is_some();
                self.inner.auth.set_scheme(&t.host, Scheme::Basic);
                Ok(has_basic)
            }
            "bearer" => {
                let _one_at_a_time = self.inner.token_fetch.lock().await;
                // Another request may have fetched a token for this scope while we
                // waited: use it rather than fetch again.
                let current = self.inner.auth.header(&t.host, &t.scope, t.creds.as_ref());
                if current.is_some() && current.as_deref() != sent_auth {
                    return Ok(true);
                }
                let (token, lifetime) = self.fetch_token(t, &challenge, header).await?;
                self.inner.auth.set_scheme(&t.host, Scheme::Bearer);
                self.inner
                    .auth
                    .store_token(&t.host, &t.scope, token, lifetime);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Fetches a bearer token for the target's scope from the challenge's realm: GET
    /// with basic credentials (or none), or an OAuth2 refresh-token POST when the
    /// credentials are an identity token.
    async fn fetch_token(
        &self,
        t: &Target,
        challenge: &Challenge,
        header: &str,
    ) -> Result<(String, Option<Duration>), RegistryError> {
        let what = "token";
        let auth_err = |reason: String| RegistryError::Auth {
            image: t.image.clone(),
            registry: t.host.clone(),
            reason,
        };
        // Our scope, not the challenge's: a HEAD before a push is challenged for `pull`
        // but the token must also allow the push that follows.
        let mut c = challenge.clone();
        c.params.insert("scope".to_string(), t.scope.clone());
        let path = t.repo_url.path().to_string();
        let url =
            token_url(&c, &path, "pull", header).map_err(|source| RegistryError::Credentials {
                image: t.image.clone(),
                source,
            })?;
        let timeout = self.inner.config.request_timeout;
        let rb = match &t.creds {
            Some(Credentials::IdentityToken(refresh)) => {
                let realm = c.params.get("realm").cloned().unwrap_or_default();
                let mut form = format!(
                    "grant_type=refresh_token&client_id=berth&refresh_token={}",
                    percent_encode(refresh)
                );
                if let Some(service) = c.params.get("service") {
                    form.push_str(&format!("&service={}", percent_encode(service)));
                }
                for s in t.scope.split(' ') {
                    form.push_str(&format!("&scope={}", percent_encode(s)));
                }
                self.http_for(t)
                    .post(realm)
                    .header("Content-Type", "application/x-www-form-urlencoded")
                    .body(form)
            }
            creds => {
                let rb = self.http_for(t).get(&url);
                match creds.as_ref().and_then(Credentials::basic_header) {
                    Some(basic) => rb.header(AUTHORIZATION, basic),
                    None => rb,
                }
            }
        };
        let resp = rb
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| self.unavailable(t, what, &e))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(self.status_error(t, what, resp).await);
        }
        let body = read_limited(resp, SMALL_BODY_LIMIT)
            .await
            .map_err(|e| match e {
                LimitedReadError::TooLarge => auth_err("token response too large".to_string()),
                LimitedReadError::Transport(e) => self.unavailable(t, what, &e),
            })?;
        let parsed: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| auth_err(format!("token response from {url} is not JSON: {e}")))?;
        parsed
            .into_parts()
            .ok_or_else(|| auth_err(format!("token response from {url} has no token")))
    }

    /// A transport error as `Unavailable`, with its causes spelled out.
    pub(super) fn unavailable(&self, t: &Target, what: &str, e: &reqwest::Error) -> RegistryError {
        RegistryError::Unavailable {
            image: t.image.clone(),
            what: what.to_string(),
            registry: t.host.clone(),
            reason: error_chain(e),
        }
    }

    /// The error for an unexpected status, with the registry's `errors[]` text.
    pub(super) async fn status_error(
        &self,
        t: &Target,
        what: &str,
        resp: Response,
    ) -> RegistryError {
        let status = resp.status();
        let retry = retry_after(&resp);
        let body = read_limited(resp, SMALL_BODY_LIMIT)
            .await
            .unwrap_or_default();
        let message = error_message(&body);
        let (image, what, registry) = (t.image.clone(), what.to_string(), t.host.clone());
        match status.as_u16() {
            401 => RegistryError::Unauthorized {
                image,
                what,
                registry,
                message,
            },
            403 => RegistryError::Denied {
                image,
                what,
                registry,
                message,
            },
            404 => RegistryError::NotFound {
                image,
                what,
                registry,
                message,
            },
            429 => RegistryError::RateLimited {
                image,
                what,
                registry,
                retry_after: retry,
            },
            s @ 500..=599 => RegistryError::Server {
                image,
                what,
                registry,
                status: s,
                message,
            },
            s => RegistryError::Rejected {
                image,
                what,
                registry,
                status: s,
                message,
            },
        }
    }

    /// A protocol violation by the registry.
    pub(super) fn protocol(
        &self,
        t: &Target,
        what: &str,
        reason: impl Into<String>,
    ) -> RegistryError {
        RegistryError::Protocol {
            image: t.image.clone(),
            what: what.to_string(),
            registry: t.host.clone(),
            reason: reason.into(),
        }
    }
}

fn backoff(cfg: &RegistryConfig, attempt: u32) -> Duration {
    cfg.retry_delay
        .saturating_mul(1u32.checked_shl(attempt).unwrap_or(u32::MAX))
        .min(cfg.max_retry_delay)
}

/// `Retry-After` in seconds (the HTTP-date form is rare from registries and ignored).
fn retry_after(resp: &Response) -> Option<Duration> {
    resp.headers()
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// Why a bounded body read failed.
pub(super) enum LimitedReadError {
    TooLarge,
    Transport(reqwest::Error),
}

/// Reads a body, counting bytes as they arrive: a lying or absent Content-Length cannot
/// make us buffer more than `limit`.
pub(super) async fn read_limited(
    mut resp: Response,
    limit: usize,
) -> Result<Vec<u8>, LimitedReadError> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(LimitedReadError::TooLarge);
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(LimitedReadError::Transport)? {
        if out.len() + chunk.len() > limit {
            return Err(LimitedReadError::TooLarge);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// The registry's `{"errors":[{"code","message","detail"}]}` as `CODE: message`, or
/// the start of a non-JSON body.
pub(super) fn error_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(e) = serde_json::from_slice::<Errors>(body) {
        return e
            .errors
            .iter()
            .map(|e| match (e.code.is_empty(), e.message.is_empty()) {
                (false, false) => format!("{}: {}", e.code, e.message),
                (false, true) => e.code.clone(),
                _ => e.message.clone(),
            })
            .collect::<Vec<_>>()
            .join("; ");
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    text.chars()
        .take(200)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// An error and its sources, `a: b: c` (reqwest's top message alone hides "refused").
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = inner.source();
    }
    s
}

/// A poisoned lock only means a panic elsewhere mid-insert; the map is still usable.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_error_bodies() {
        let b = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"x"}}]}"#;
        assert_eq!(error_message(b), "MANIFEST_UNKNOWN: manifest unknown");
        assert_eq!(error_message(b""), "");
        assert_eq!(error_message(b"  oops\n"), "oops");
        assert_eq!(error_message(&[b'a'; 500]).len(), 200);
    }

    #[test]
    fn backoff_is_bounded() {
        let cfg = RegistryConfig {
            retry_delay: Duration::from_millis(100),
            max_retry_delay: Duration::from_secs(1),
            ..RegistryConfig::default()
        };
        assert_eq!(backoff(&cfg, 0), Duration::from_millis(100));
        assert_eq!(backoff(&cfg, 2), Duration::from_millis(400));
        assert_eq!(backoff(&cfg, 10), Duration::from_secs(1));
        assert_eq!(backoff(&cfg, 40), Duration::from_secs(1));
    }

    #[tokio::test]
    async fn scheme_follows_plain_http_rules() {
        let c = RegistryClient::new(RegistryConfig {
            docker_config: None,
            insecure_registries: vec!["reg.lan:5000".into(), "tls.lan".into()],
            ..RegistryConfig::default()
        })
        .expect("client");
        // Probe answers given up front: this test sends nothing anywhere.
        let far = Instant::now() + Duration::from_secs(3600);
        for (host, tls) in [
            ("127.0.0.1:5000", false),
            ("reg.lan:5000", false),
            ("[::1]:5000", false),
            ("tls.lan", true),
        ] {
            lock(&c.inner.tls_probes).insert(host.to_string(), (tls, far));
        }
        let target = |r: &str| {
            let r = Reference::parse(r).expect("ref");
            let c = c.clone();
            async move { c.target(&r, "pull", &[]).await.expect("target") }
        };
        let url = |r: &'static str| {
            let t = target(r);
            async move { t.await.repo_url.to_string() }
        };
        assert_eq!(
            url("127.0.0.1:5000/x/y").await,
            "http://127.0.0.1:5000/v2/x/y/"
        );
        assert_eq!(url("reg.lan:5000/x").await, "http://reg.lan:5000/v2/x/");
        assert_eq!(url("reg.lan:6000/x").await, "https://reg.lan:6000/v2/x/");
        assert_eq!(
            url("busybox").await,
            "https://registry-1.docker.io/v2/library/busybox/"
        );
        assert_eq!(url("[::1]:5000/a").await, "http://[::1]:5000/v2/a/");
        let t = target("tls.lan/a").await;
        assert_eq!(t.repo_url.as_str(), "https://tls.lan/v2/a/");
        assert!(t.unverified_tls, "insecure + TLS: certificate not checked");
        assert!(!target("busybox").await.unverified_tls);
    }
}
