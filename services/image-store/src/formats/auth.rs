//! Pure pieces of registry authentication: parsing `WWW-Authenticate` challenges,
//! building the bearer-token request URL, and finding credentials for a registry in a
//! Docker `config.json` (`auths`). No HTTP here.

use super::reference::{DOCKER_HUB_DOMAIN, DOCKER_HUB_REGISTRY};
use base64::Engine as _;
use serde::Deserialize;
use std::collections::BTreeMap;

/// Auth errors.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// A `WWW-Authenticate` header that does not parse.
    #[error("malformed WWW-Authenticate header {header:?}: {reason}")]
    Challenge {
        /// The header.
        header: String,
        /// Why.
        reason: String,
    },
    /// A bearer challenge without a realm.
    #[error("bearer challenge {header:?} has no realm")]
    NoRealm {
        /// The header.
        header: String,
    },
    /// A bad Docker config file.
    #[error("docker config {path}: {reason}")]
    Config {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// One authentication challenge from a registry's 401.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// `basic`, `bearer`… (lowercased).
    pub scheme: String,
    /// Parameters (`realm`, `service`, `scope`, `error`…), keys lowercased.
    pub params: BTreeMap<String, String>,
}

/// Parses a `WWW-Authenticate` value: `Scheme k="v", k2=v2` (one challenge; registries
/// send one). Quoted values may contain commas and `\"` escapes.
pub fn parse_challenge(header: &str) -> Result<Challenge, AuthError> {
    let err = |reason: &str| AuthError::Challenge {
        header: header.to_string(),
        reason: reason.to_string(),
    };
    let h = header.trim();
    let (scheme, rest) = match h.split_once(char::is_whitespace) {
        Some((s, r)) => (s, r.trim()),
        None => (h, ""),
    };
    if scheme.is_empty()
        || !scheme
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-')
    {
        return Err(err("missing or bad auth scheme"));
    }
    let mut params = BTreeMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(c) if c.is_whitespace() || *c == ',') {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while matches!(chars.peek(), Some(c) if c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') || key.is_empty() {
            return Err(err("expected key=value parameters"));
        }
        while matches!(chars.peek(), Some(c) if c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => return Err(err("unterminated quoted value")),
                    },
                    Some(c) => value.push(c),
                    None => return Err(err("unterminated quoted value")),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' || c.is_whitespace() {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        params.insert(key.to_ascii_lowercase(), value);
    }
    Ok(Challenge {
        scheme: scheme.to_ascii_lowercase(),
        params,
    })
}

/// The token URL for a bearer challenge: `realm?service=…&scope=…` (the challenge's
/// scope, else `repository:<path>:<actions>`).
pub fn token_url(
    challenge: &Challenge,
    repository: &str,
    actions: &str,
    header: &str,
) -> Result<String, AuthError> {
    let realm = challenge
        .params
        .get("realm")
        .filter(|r| !r.is_empty())
        .ok_or_else(|| AuthError::NoRealm {
            header: header.to_string(),
        })?;
    let mut query = Vec::new();
    if let Some(service) = challenge.params.get("service") {
        query.push(format!("service={}", percent_encode(service)));
    }
    let scope = challenge
        .params
        .get("scope")
        .cloned()
        .unwrap_or_else(|| format!("repository:{repository}:{actions}"));
    for s in scope.split(' ').filter(|s| !s.is_empty()) {
        query.push(format!("scope={}", percent_encode(s)));
    }
    let sep = if realm.contains('?') { '&' } else { '?' };
    Ok(format!("{realm}{sep}{}", query.join("&")))
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// Username and password (basic auth, or exchanged for a bearer token).
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
    /// An identity (refresh) token for the OAuth2 token endpoint.
    IdentityToken(String),
}

impl std::fmt::Debug for Credentials {
    // Never print secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            Credentials::IdentityToken(_) => write!(f, "IdentityToken(***)"),
        }
    }
}

impl Credentials {
    /// The `Authorization: Basic …` value.
    pub fn basic_header(&self) -> Option<String> {
        match self {
            Credentials::Basic { username, password } => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
            )),
            Credentials::IdentityToken(_) => None,
        }
    }
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// The registry key of a config.json `auths` entry: scheme and path stripped, Docker
/// Hub's historical names folded into `docker.io`.
fn auth_key(key: &str) -> String {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = k.split('/').next().unwrap_or(k);
    match host {
        "index.docker.io" | DOCKER_HUB_REGISTRY | DOCKER_HUB_DOMAIN => {
            DOCKER_HUB_DOMAIN.to_string()
        }
        h => h.to_string(),
    }
}

/// Finds credentials for a registry domain (as in a reference: `docker.io`,
/// `127.0.0.1:5000`) in the text of a Docker `config.json`. `path` names the file in
/// errors. Credential helpers (`credsStore`, `credHelpers`) are not consulted.
pub fn docker_config_credentials(
    config_json: &str,
    domain: &str,
    path: &str,
) -> Result<Option<Credentials>, AuthError> {
    let err = |reason: String| AuthError::Config {
        path: path.to_string(),
        reason,
    };
    let cfg: DockerConfig =
        serde_json::from_str(config_json).map_err(|e| err(format!("malformed JSON: {e}")))?;
    let want = auth_key(domain);
    let Some((key, entry)) = cfg.auths.iter().find(|(k, _)| auth_key(k) == want) else {
        return Ok(None);
    };
    if let Some(token) = entry.identitytoken.as_ref().filter(|t| !t.is_empty()) {
        return Ok(Some(Credentials::IdentityToken(token.clone())));
    }
    if let Some(auth) = entry.auth.as_ref().filter(|a| !a.is_empty()) {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|e| err(format!("auths[{key:?}].auth is not base64: {e}")))?;
        let text =
            String::from_utf8(raw).map_err(|_| err(format!("auths[{key:?}].auth is not UTF-8")))?;
        let (username, password) = text
            .split_once(':')
            .ok_or_else(|| err(format!("auths[{key:?}].auth is not user:password")))?;
        return Ok(Some(Credentials::Basic {
            username: username.to_string(),
            password: password.to_string(),
        }));
    }
    match (&entry.username, &entry.password) {
        (Some(u), Some(p)) => Ok(Some(Credentials::Basic {
            username: u.clone(),
            password: p.clone(),
        })),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_hub_bearer_challenge() {
        let h = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#;
        let c = parse_challenge(h).expect("parse");
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.params["realm"], "https://auth.docker.io/token");
        assert_eq!(c.params["scope"], "repository:library/alpine:pull");
        let url = token_url(&c, "library/alpine", "pull", h).expect("url");
        assert_eq!(
            url,
            "https://auth.docker.io/token?service=registry.docker.io&scope=repository%3Alibrary%2Falpine%3Apull"
        );
    }

    #[test]
    fn parses_basic_and_odd_spacing() {
        let c = parse_challenge(r#"Basic realm="Registry Realm""#).expect("basic");
        assert_eq!(c.scheme, "basic");
        assert_eq!(c.params["realm"], "Registry Realm");
        let c = parse_challenge(r#"Bearer  realm = "a,b" , error=insufficient_scope, x="q\"q""#)
            .expect("odd");
        assert_eq!(c.params["realm"], "a,b");
        assert_eq!(c.params["error"], "insufficient_scope");
        assert_eq!(c.params["x"], "q\"q");
        let c = parse_challenge("Bearer realm=\"http://127.0.0.1:5001/auth\"").expect("no scope");
        let url = token_url(&c, "x/y", "pull,push", "h").expect("url");
        assert_eq!(
            url,
            "http://127.0.0.1:5001/auth?scope=repository%3Ax%2Fy%3Apull%2Cpush"
        );
    }

    #[test]
    fn bad_challenges() {
        for bad in [
            "",
            "   ",
            "Bearer realm",
            "Bearer realm=\"x",
            "Bearer =x",
            "B@d realm=x",
        ] {
            assert!(parse_challenge(bad).is_err(), "{bad:?}");
        }
        let c = parse_challenge("Bearer service=x").expect("parse");
        assert!(matches!(
            token_url(&c, "a", "pull", "h"),
            Err(AuthError::NoRealm { .. })
        ));
    }

    #[test]
    fn docker_config_lookup() {
        let cfg = r#"{
            "auths": {
                "https://index.docker.io/v1/": {"auth": "dXNlcjpwYXNzOndpdGg6Y29sb25z"},
                "127.0.0.1:5000": {"username": "u", "password": "p"},
                "http://reg.lan:5000": {"auth": "YTpi"},
                "tok.example": {"identitytoken": "secret"},
                "broken.example": {"auth": "!!!"}
            },
            "credsStore": "desktop"
        }"#;
        let hub = docker_config_credentials(cfg, "docker.io", "config.json")
            .expect("ok")
            .expect("hub creds");
        assert_eq!(
            hub,
            Credentials::Basic {
                username: "user".to_string(),
                password: "pass:with:colons".to_string()
            }
        );
        assert_eq!(
            hub.basic_header().as_deref(),
            Some("Basic dXNlcjpwYXNzOndpdGg6Y29sb25z")
        );
        assert!(
            !format!("{hub:?}").contains("pass"),
            "secrets are not printed"
        );
        let local = docker_config_credentials(cfg, "127.0.0.1:5000", "c").expect("ok");
        assert!(matches!(local, Some(Credentials::Basic { ref username, .. }) if username == "u"));
        let lan = docker_config_credentials(cfg, "reg.lan:5000", "c").expect("ok");
        assert!(matches!(lan, Some(Credentials::Basic { ref username, .. }) if username == "a"));
        assert!(matches!(
            docker_config_credentials(cfg, "tok.example", "c").expect("ok"),
            Some(Credentials::IdentityToken(_))
        ));
        assert_eq!(
            docker_config_credentials(cfg, "ghcr.io", "c").expect("ok"),
            None
        );
        assert!(docker_config_credentials(cfg, "broken.example", "c").is_err());
        assert!(docker_config_credentials("{", "x", "c").is_err());
        assert_eq!(docker_config_credentials("{}", "x", "c").expect("ok"), None);
    }
}
