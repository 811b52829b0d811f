//! Image references parsed and normalized with Docker's rules
//! (github.com/distribution/reference `ParseNormalizedNamed` + `TagNameOnly`).

use super::digest::Digest;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

/// Docker Hub's canonical domain in references.
pub const DOCKER_HUB_DOMAIN: &str = "docker.io";
/// The host that actually serves Docker Hub's registry API.
pub const DOCKER_HUB_REGISTRY: &str = "registry-1.docker.io";
/// Tag used when a reference names neither tag nor digest.
pub const DEFAULT_TAG: &str = "latest";
const LEGACY_HUB_DOMAIN: &str = "index.docker.io";
const OFFICIAL_REPO_PREFIX: &str = "library/";
/// Longest repository name (domain + path) Docker accepts.
pub const NAME_MAX: usize = 255;
const TAG_MAX: usize = 128;

/// A reference that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid image reference {input:?}: {reason}")]
pub struct ReferenceError {
    /// The rejected text.
    pub input: String,
    /// Why.
    pub reason: String,
}

/// A normalized image reference: `domain/path[:tag][@digest]`.
///
/// Parsing fills in Docker's defaults: `docker.io` as domain, `library/` for
/// single-component Hub names, and tag `latest` when neither tag nor digest is given.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Reference {
    domain: String,
    path: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Parses and normalizes like `docker pull` does; see the module doc.
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        let mut r = Self::parse_no_default_tag(input)?;
        if r.tag.is_none() && r.digest.is_none() {
            r.tag = Some(DEFAULT_TAG.to_string());
        }
        Ok(r)
    }

    /// Parses and normalizes without adding the `latest` tag (a bare name stays bare).
    pub fn parse_no_default_tag(input: &str) -> Result<Self, ReferenceError> {
        let err = |reason: &str| ReferenceError {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        if input.is_empty() {
            return Err(err("empty reference"));
        }
        if input.len() == 64 && input.bytes().all(|b| b.is_ascii_hexdigit()) {
            // Docker refuses these so that an image ID is never mistaken for a name.
            return Err(err("cannot specify 64-byte hexadecimal strings as a name"));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((name, d)) => {
                let digest = d
                    .parse::<Digest>()
                    .map_err(|e| err(&format!("bad digest: {e}")))?;
                (name, Some(digest))
            }
            None => (input, None),
        };
        // The tag is after the last ':' that follows the last '/', so a registry port
        // (`host:5000/x`) is not mistaken for a tag.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let at = last_slash + i;
                (&rest[..at], Some(&rest[at + 1..]))
            }
            None => (rest, None),
        };
        if let Some(tag) = tag {
            validate_tag(tag).map_err(|reason| err(&reason))?;
        }
        let (domain, path) = split_domain(name);
        if path.to_lowercase() != path {
            return Err(err(&format!("repository name {path:?} must be lowercase")));
        }
        validate_domain(&domain).map_err(|reason| err(&reason))?;
        validate_path(&path).map_err(|reason| err(&reason))?;
        if domain.len() + 1 + path.len() > NAME_MAX {
            return Err(err(&format!(
                "repository name longer than {NAME_MAX} characters"
            )));
        }
        Ok(Reference {
            domain,
            path,
            tag: tag.map(str::to_string),
            digest,
        })
    }

    /// The registry domain as written in references (`docker.io`, `127.0.0.1:5000`).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The repository path inside the registry (`library/alpine`).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The tag, if any.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if any.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The full repository name `domain/path` (`docker.io/library/alpine`).
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// Docker's short repository name: `alpine`, `org/app`, `127.0.0.1:5000/x/y`.
    pub fn familiar_name(&self) -> String {
        if self.domain == DOCKER_HUB_DOMAIN {
            match self.path.strip_prefix(OFFICIAL_REPO_PREFIX) {
                Some(rest) if !rest.contains('/') => rest.to_string(),
                _ => self.path.clone(),
            }
        } else {
            self.name()
        }
    }

    /// Docker's display form: `busybox:latest`, `127.0.0.1:5000/x/y:tag`, `app@sha256:…`.
    pub fn familiar(&self) -> String {
        let mut s = self.familiar_name();
        self.push_suffix(&mut s);
        s
    }

    /// The host:port to talk to for the registry API (`registry-1.docker.io` for Docker Hub).
    pub fn registry_host(&self) -> &str {
        registry_host(&self.domain)
    }

    /// A copy with this tag (digest kept).
    pub fn with_tag(&self, tag: &str) -> Result<Self, ReferenceError> {
        validate_tag(tag).map_err(|reason| ReferenceError {
            input: tag.to_string(),
            reason,
        })?;
        let mut r = self.clone();
        r.tag = Some(tag.to_string());
        Ok(r)
    }

    /// A copy pinned to `digest` (tag kept).
    pub fn with_digest(&self, digest: Digest) -> Self {
        let mut r = self.clone();
        r.digest = Some(digest);
        r
    }

    /// A copy without the digest; gets tag `latest` if that leaves it bare.
    pub fn without_digest(&self) -> Self {
        let mut r = self.clone();
        r.digest = None;
        if r.tag.is_none() {
            r.tag = Some(DEFAULT_TAG.to_string());
        }
        r
    }

    /// Whether plain HTTP may be used for this reference's registry; see [`allows_plain_http`].
    pub fn allows_plain_http(&self, insecure_registries: &[String]) -> bool {
        allows_plain_http(&self.domain, insecure_registries)
    }

    fn push_suffix(&self, s: &mut String) {
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(&d.to_string());
        }
    }
}

impl fmt::Display for Reference {
    /// The fully qualified form: `docker.io/library/alpine:latest`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = self.name();
        self.push_suffix(&mut s);
        f.write_str(&s)
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reference({self})")
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

/// Maps a reference domain to the host serving its API (`docker.io` → `registry-1.docker.io`).
pub fn registry_host(domain: &str) -> &str {
    if domain == DOCKER_HUB_DOMAIN || domain == LEGACY_HUB_DOMAIN {
        DOCKER_HUB_REGISTRY
    } else {
        domain
    }
}

/// Whether plain HTTP is allowed for a registry domain (`host[:port]`).
///
/// Like Docker: loopback (127.0.0.0/8, `localhost`, `::1`) always; any other
/// registry only if listed in `insecure_registries`, either as `host:port` or as
/// a bare host (which then covers every port).
pub fn allows_plain_http(domain: &str, insecure_registries: &[String]) -> bool {
    let host = host_of(domain);
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        if ip.is_loopback() {
            return true;
        }
    }
    insecure_registries
        .iter()
        .any(|entry| entry == domain || (!has_port(entry) && entry == host))
}

/// The host part of `host[:port]`, keeping IPv6 brackets.
fn host_of(domain: &str) -> &str {
    if domain.starts_with('[') {
        return match domain.find(']') {
            Some(i) => &domain[..=i],
            None => domain,
        };
    }
    match domain.rsplit_once(':') {
        Some((h, _)) => h,
        None => domain,
    }
}

fn has_port(domain: &str) -> bool {
    host_of(domain).len() != domain.len()
}

/// Docker's `splitDockerDomain`: the first component is a domain only if it
/// looks like one (has `.` or `:`, is `localhost`, or has uppercase letters).
fn split_domain(name: &str) -> (String, String) {
    let (mut domain, mut path) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.')
                || first.contains(':')
                || first == "localhost"
                || first.to_lowercase() != first =>
        {
            (first.to_string(), rest.to_string())
        }
        _ => (DOCKER_HUB_DOMAIN.to_string(), name.to_string()),
    };
    if domain == LEGACY_HUB_DOMAIN {
        domain = DOCKER_HUB_DOMAIN.to_string();
    }
    if domain == DOCKER_HUB_DOMAIN && !path.contains('/') {
        path = format!("{OFFICIAL_REPO_PREFIX}{path}");
    }
    (domain, path)
}

fn validate_tag(tag: &str) -> Result<(), String> {
    let b = tag.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    if b.is_empty() {
        return Err("empty tag".to_string());
    }
    if b.len() > TAG_MAX {
        return Err(format!("tag longer than {TAG_MAX} characters"));
    }
    if !word(b[0]) {
        return Err(format!(
            "tag {tag:?} must start with a letter, digit or '_'"
        ));
    }
    if !b.iter().all(|&c| word(c) || c == b'.' || c == b'-') {
        return Err(format!(
            "tag {tag:?} may only contain letters, digits, '_', '.', '-'"
        ));
    }
    Ok(())
}

fn validate_domain(domain: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("bad registry domain {domain:?}: {why}"));
    let (host, port) = if let Some(rest) = domain.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return bad("unclosed '['");
        };
        if v6.parse::<Ipv6Addr>().is_err() {
            return bad("not an IPv6 address");
        }
        let port = match after {
            "" => None,
            p => match p.strip_prefix(':') {
                Some(p) => Some(p),
                None => return bad("junk after ']'"),
            },
        };
        (None, port)
    } else {
        match domain.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(domain), None),
        }
    };
    if let Some(port) = port {
        if port.is_empty() || !port.bytes().all(|c| c.is_ascii_digit()) {
            return bad("port must be digits");
        }
    }
    if let Some(host) = host {
        if host.is_empty() {
            return bad("empty host");
        }
        for comp in host.split('.') {
            let b = comp.as_bytes();
            let ok = !b.is_empty()
                && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-';
            if !ok {
                return bad("each dot-separated part must be letters, digits and inner '-'");
            }
        }
    }
    Ok(())
}

/// Path components: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*` joined by `/`.
fn validate_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("empty repository name".to_string());
    }
    for comp in path.split('/') {
        if !valid_path_component(comp) {
            return Err(format!(
                "repository path component {comp:?} must be lowercase letters and digits, separated by '.', '_', '__' or '-'"
            ));
        }
    }
    Ok(())
}

fn valid_path_component(comp: &str) -> bool {
    let b = comp.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: '.', '_', '__' or any number of '-'.
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &comp[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-');
        if !ok {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn p(s: &str) -> Reference {
        Reference::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn docker_hub_official_images() {
        let r = p("alpine");
        assert_eq!(r.to_string(), "docker.io/library/alpine:latest");
        assert_eq!(r.familiar(), "alpine:latest");
        assert_eq!(r.registry_host(), "registry-1.docker.io");
        assert_eq!(r.path(), "library/alpine");
        assert_eq!(
            p("library/alpine:3.20").to_string(),
            "docker.io/library/alpine:3.20"
        );
        assert_eq!(p("library/alpine:3.20").familiar(), "alpine:3.20");
        assert_eq!(p("docker.io/busybox").familiar(), "busybox:latest");
        assert_eq!(
            p("index.docker.io/library/busybox:1").to_string(),
            "docker.io/library/busybox:1"
        );
    }

    #[test]
    fn docker_hub_user_images() {
        let r = p("org/app:v1");
        assert_eq!(r.to_string(), "docker.io/org/app:v1");
        assert_eq!(r.familiar(), "org/app:v1");
        // Only single-component Hub names get library/.
        assert_eq!(p("library/x/y").familiar(), "library/x/y:latest");
    }

    #[test]
    fn other_registries() {
        let r = p(&format!("ghcr.io/org/app@{D}"));
        assert_eq!(r.domain(), "ghcr.io");
        assert_eq!(r.path(), "org/app");
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest().map(|d| d.to_string()), Some(D.to_string()));
        assert_eq!(r.familiar(), format!("ghcr.io/org/app@{D}"));
        assert_eq!(r.registry_host(), "ghcr.io");

        let r = p("127.0.0.1:5000/x/y:tag");
        assert_eq!(r.domain(), "127.0.0.1:5000");
        assert_eq!(r.path(), "x/y");
        assert_eq!(r.tag(), Some("tag"));
        assert_eq!(r.familiar(), "127.0.0.1:5000/x/y:tag");
        assert_eq!(r.to_string(), "127.0.0.1:5000/x/y:tag");

        let r = p("localhost/x");
        assert_eq!(r.domain(), "localhost");
        assert_eq!(r.familiar(), "localhost/x:latest");

        let r = p("localhost:5000/x");
        assert_eq!(r.domain(), "localhost:5000");

        let r = p("[::1]:5000/foo/bar:t");
        assert_eq!(r.domain(), "[::1]:5000");
        assert_eq!(r.path(), "foo/bar");
        // A port without a '/' after it is a tag: Docker reads `host:5000` as name:tag.
        let r = p("myhost:5000");
        assert_eq!(r.to_string(), "docker.io/library/myhost:5000");
    }

    #[test]
    fn tag_and_digest_together() {
        let r = p(&format!("busybox:1.36@{D}"));
        assert_eq!(r.tag(), Some("1.36"));
        assert!(r.digest().is_some());
        assert_eq!(r.familiar(), format!("busybox:1.36@{D}"));
        assert_eq!(r.without_digest().familiar(), "busybox:1.36");
        let bare = p(&format!("busybox@{D}"));
        assert_eq!(bare.without_digest().familiar(), "busybox:latest");
    }

    #[test]
    fn no_default_tag_variant() {
        let r = Reference::parse_no_default_tag("busybox").expect("ok");
        assert_eq!(r.tag(), None);
        assert_eq!(r.familiar(), "busybox");
        assert_eq!(r.with_tag("x").expect("tag").familiar(), "busybox:x");
        assert!(r.with_tag("-bad").is_err());
    }

    #[test]
    fn path_separators() {
        for ok in [
            "a", "a.b", "a_b", "a__b", "a-b", "a---b", "a/b/c", "0/1", "a.b-c_d",
        ] {
            assert!(Reference::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_what_docker_rejects() {
        for bad in [
            "",
            ":",
            "Alpine",
            "docker.io/Library/alpine",
            "alpine:",
            "alpine:-x",
            "alpine:a b",
            "alpine@",
            "alpine@sha256:abc",
            "alpine@md5:d41d8cd98f00b204e9800998ecf8427e",
            "a..b",
            "a___b",
            "_a",
            "a_",
            "a//b",
            "/a",
            "a/",
            "ghcr.io/",
            "-host.io/x",
            "host-.io/x",
            "host.io:port/x",
            "host.io:/x",
            "[::1/x",
            "[zz]:5000/x",
            "a b",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ] {
            let err = Reference::parse(bad).expect_err(bad);
            assert_eq!(err.input, bad);
            assert!(err.to_string().contains("invalid image reference"), "{err}");
        }
        let long_tag = format!("a:{}", "t".repeat(129));
        assert!(Reference::parse(&long_tag).is_err());
        let long_name = format!("a/{}", "b".repeat(260));
        assert!(Reference::parse(&long_name).is_err());
    }

    #[test]
    fn lowercase_error_message_is_clear() {
        let err = Reference::parse("Org/App").expect_err("uppercase");
        // Uppercase first component counts as a domain, like Docker; the path must be lowercase.
        assert!(err.reason.contains("lowercase"), "{err}");
    }

    #[test]
    fn odd_inputs_never_panic() {
        let base = format!("127.0.0.1:5000/a/b:t@{D}");
        for i in 0..base.len() {
            let _ = Reference::parse(&base[..i]);
            let _ = Reference::parse(&base[i..]);
        }
        for s in [
            "@", ":@", "/:", "a@b@c", "[", "]", "[]:1/x", "a:b:c", "é", "a/é", "x:é",
        ] {
            let _ = Reference::parse(s);
        }
    }

    #[test]
    fn plain_http_rules() {
        let none: Vec<String> = vec![];
        assert!(allows_plain_http("127.0.0.1:5000", &none));
        assert!(allows_plain_http("127.1.2.3", &none));
        assert!(allows_plain_http("localhost:5000", &none));
        assert!(allows_plain_http("localhost", &none));
        assert!(allows_plain_http("[::1]:5000", &none));
        assert!(!allows_plain_http("docker.io", &none));
        assert!(!allows_plain_http("10.0.0.1:5000", &none));
        assert!(!allows_plain_http("128.0.0.1:5000", &none));
        let listed = vec!["reg.lan:5000".to_string(), "other.lan".to_string()];
        assert!(allows_plain_http("reg.lan:5000", &listed));
        assert!(!allows_plain_http("reg.lan:6000", &listed));
        assert!(allows_plain_http("other.lan:7000", &listed));
        assert!(allows_plain_http("other.lan", &listed));
        assert!(p("127.0.0.1:5000/x/y:tag").allows_plain_http(&none));
        assert!(!p("alpine").allows_plain_http(&none));
    }

    #[test]
    fn serde_and_fromstr() {
        let r: Reference = "busybox".parse().expect("ok");
        let j = serde_json::to_string(&r).expect("ser");
        let back: Reference = serde_json::from_str(&j).expect("de");
        assert_eq!(back, r);
    }
}
