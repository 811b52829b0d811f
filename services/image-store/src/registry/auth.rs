//! Credentials per registry and the auth state learnt from challenges: which scheme a
//! host wants, and bearer tokens cached per scope until they expire.

use super::error::RegistryError;
use super::RegistryConfig;
use crate::formats::auth::{docker_config_credentials, Credentials};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Tokens without `expires_in` live 60 s (distribution's token spec).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// Renew a little early so a token does not expire between check and use.
const EXPIRY_MARGIN: Duration = Duration::from_secs(5);

/// What a host asked for in its last challenge.
#[derive(Clone)]
pub(super) enum Scheme {
    Basic,
    Bearer,
}

#[derive(Default)]
struct HostAuth {
    scheme: Option<Scheme>,
    /// scope string → (token, renew-at).
    tokens: HashMap<String, (String, Instant)>,
}

/// Shared by every clone of a client: hosts by `registry_host`, credentials by domain.
#[derive(Default)]
pub(super) struct AuthState {
    hosts: Mutex<HashMap<String, HostAuth>>,
    creds: Mutex<HashMap<String, Option<Credentials>>>,
}

impl AuthState {
    /// Credentials for a reference domain: explicit config first, then `config.json`.
    /// Looked up once per domain; a missing config file means "anonymous".
    pub(super) fn credentials(
        &self,
        config: &RegistryConfig,
        domain: &str,
        image: &str,
    ) -> Result<Option<Credentials>, RegistryError> {
        if let Some(c) = config.credentials.get(domain) {
            return Ok(Some(c.clone()));
        }
        if let Some(c) = lock(&self.creds).get(domain) {
            return Ok(c.clone());
        }
        let found = match &config.docker_config {
            Some(path) => match std::fs::read_to_string(path) {
                Ok(text) => docker_config_credentials(&text, domain, &path.display().to_string())
                    .map_err(|source| RegistryError::Credentials {
                    image: image.to_string(),
                    source,
                })?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(source) => {
                    return Err(RegistryError::Io {
                        image: image.to_string(),
                        what: format!("reading {}", path.display()),
                        source,
                    })
                }
            },
            None => None,
        };
        lock(&self.creds).insert(domain.to_string(), found.clone());
        Ok(found)
    }

    /// The `Authorization` value to send up front, from what the host asked before.
    pub(super) fn header(
        &self,
        host: &str,
        scope: &str,
        creds: Option<&Credentials>,
    ) -> Option<String> {
        let hosts = lock(&self.hosts);
        let h = hosts.get(host)?;
        match h.scheme.as_ref()? {
            Scheme::Basic => creds.and_then(Credentials::basic_header),
            Scheme::Bearer => h
                .tokens
                .get(scope)
                .filter(|(_, renew_at)| Instant::now() < *renew_at)
                .map(|(t, _)| format!("Bearer {t}")),
        }
    }

    pub(super) fn set_scheme(&self, host: &str, scheme: Scheme) {
        lock(&self.hosts)
            .entry(host.to_string())
            .or_default()
            .scheme = Some(scheme);
    }

    pub(super) fn store_token(
        &self,
        host: &str,
        scope: &str,
        token: String,
        lifetime: Option<Duration>,
    ) {
        let life = lifetime.unwrap_or(DEFAULT_TOKEN_LIFETIME);
        let renew_at = Instant::now()
            + life
                .saturating_sub(EXPIRY_MARGIN)
                .max(Duration::from_secs(1));
        lock(&self.hosts)
            .entry(host.to_string())
            .or_default()
            .tokens
            .insert(scope.to_string(), (token, renew_at));
    }
}

/// A poisoned lock only means another task panicked mid-update of a cache; the data
/// is still a valid map, so keep going.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A token endpoint's answer (`token` per the Docker spec, `access_token` per OAuth2).
#[derive(serde::Deserialize)]
pub(super) struct TokenResponse {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub access_token: Option<String>,
    #[serde(default)]
    pub expires_in: Option<u64>,
}

impl TokenResponse {
    pub(super) fn into_parts(self) -> Option<(String, Option<Duration>)> {
        let t = self
            .token
            .filter(|t| !t.is_empty())
            .or(self.access_token.filter(|t| !t.is_empty()))?;
        Some((
            t,
            self.expires_in.filter(|s| *s > 0).map(Duration::from_secs),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_cache_per_scope_and_expiry() {
        let a = AuthState::default();
        assert_eq!(a.header("h", "s", None), None);
        a.set_scheme("h", Scheme::Bearer);
        a.store_token("h", "s", "tok".into(), None);
        assert_eq!(a.header("h", "s", None).as_deref(), Some("Bearer tok"));
        assert_eq!(a.header("h", "other", None), None);
        // Already past its renewal time: not sent.
        a.store_token("h", "short", "t2".into(), Some(Duration::from_secs(0)));
        lock(&a.hosts)
            .get_mut("h")
            .map(|h| h.tokens.get_mut("short").map(|t| t.1 = Instant::now()));
        assert_eq!(a.header("h", "short", None), None);
        let basic = Credentials::Basic {
            username: "u".into(),
            password: "p".into(),
        };
        a.set_scheme("b", Scheme::Basic);
        assert_eq!(
            a.header("b", "s", Some(&basic)).as_deref(),
            Some("Basic dTpw")
        );
        assert_eq!(a.header("b", "s", None), None);
    }

    #[test]
    fn token_json_shapes() {
        let t: TokenResponse =
            serde_json::from_str(r#"{"token":"a","expires_in":300}"#).expect("json");
        assert_eq!(
            t.into_parts(),
            Some(("a".into(), Some(Duration::from_secs(300))))
        );
        let t: TokenResponse = serde_json::from_str(r#"{"access_token":"b"}"#).expect("json");
        assert_eq!(t.into_parts(), Some(("b".into(), None)));
        let t: TokenResponse = serde_json::from_str(r#"{"token":""}"#).expect("json");
        assert_eq!(t.into_parts(), None);
    }
}
