//! Registry errors. Each names the image (`familiar` reference) and what was being
//! fetched or pushed (`manifest 3.20`, `blob sha256:…`), and maps onto one of the bus
//! error kinds via [`RegistryError::kind`].

use crate::formats::auth::AuthError;
use crate::formats::digest::{digest_error_of, DigestError};
use crate::formats::ManifestError;
use berth_proto::error::ErrorKind;
use std::io;
use std::time::Duration;

/// An error talking to a registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// 401: no or wrong credentials.
    #[error("{image}: unauthorized to access {what} on {registry}{}", detail(.message))]
    Unauthorized {
        /// The image.
        image: String,
        /// Manifest or blob.
        what: String,
        /// Registry host.
        registry: String,
        /// The registry's own words, if any.
        message: String,
    },
    /// 403: authenticated but not allowed.
    #[error("{image}: access to {what} denied by {registry}{}", detail(.message))]
    Denied {
        /// The image.
        image: String,
        /// Manifest or blob.
        what: String,
        /// Registry host.
        registry: String,
        /// The registry's own words, if any.
        message: String,
    },
    /// 404: manifest unknown, blob unknown, repository unknown.
    #[error("{image}: {what} not found on {registry}{}", detail(.message))]
    NotFound {
        /// The image.
        image: String,
        /// Manifest or blob.
        what: String,
        /// Registry host.
        registry: String,
        /// The registry's own words (`MANIFEST_UNKNOWN: manifest unknown`), if any.
        message: String,
    },
    /// 429: too many requests (after the bounded retries).
    #[error("{image}: {registry} rate-limited the request for {what}{}", retry_after_text(.retry_after))]
    RateLimited {
        /// The image.
        image: String,
        /// Manifest or blob.
        what: String,
        /// Registry host.
        registry: String,
        /// The registry's `Retry-After`, if it sent one.
        retry_after: Option<Duration>,
    },
    /// 5xx from the registry (after the bounded retries for GET/HEAD).
    #[error("{image}: {registry} failed with HTTP {status} on {what}{}", detail(.message))]
    Server {
        /// The image.
        image: String,
        /// Manifest or blob.
        what: String,
        /// Registry host.
        registry: String,
        /// HTTP status.
        status: u16,
        /// The registry's own words, if any.
        message: String,
    },
    /// Any other unexpected HTTP status (a 400 on push: digest invalid, manifest invalid…).
    #[error("{image}: {registry} answered HTTP {status} on {what}{}", detail(.message))]
    Rejected {
        /// The image.
        image: String,
        /// Manifest or blob.
        what: String,
        /// Registry host.
        registry: String,
        /// HTTP status.
        status: u16,
        /// The registry's own words, if any.
        message: String,
    },
    /// The registry could not be reached (refused, DNS, TLS, timeout, connection reset).
    #[error("{image}: registry {registry} unavailable ({what}): {reason}")]
    Unavailable {
        /// The image.
        image: String,
        /// Manifest or blob.
        what: String,
        /// Registry host.
        registry: String,
        /// The transport error, with its causes.
        reason: String,
    },
    /// The registry answered something that breaks the protocol (no Location, bad token JSON…).
    #[error("{image}: {registry} broke the distribution protocol on {what}: {reason}")]
    Protocol {
        /// The image.
        image: String,
        /// Manifest or blob.
        what: String,
        /// Registry host.
        registry: String,
        /// What was wrong.
        reason: String,
    },
    /// Getting a bearer token failed.
    #[error("{image}: authentication with {registry} failed: {reason}")]
    Auth {
        /// The image.
        image: String,
        /// Registry host.
        registry: String,
        /// What went wrong.
        reason: String,
    },
    /// A bad manifest (too large, malformed, unknown media type, no matching platform).
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// Content did not match its digest or size (includes truncated blobs).
    #[error("{image}: {source}")]
    Digest {
        /// The image.
        image: String,
        /// The mismatch; its subject names the blob or manifest.
        source: DigestError,
    },
    /// Unparsable credentials, challenge or Docker config.
    #[error("{image}: {source}")]
    Credentials {
        /// The image.
        image: String,
        /// Details.
        source: AuthError,
    },
    /// Invalid arguments (a push to a digest that does not match the bytes, a bad URL).
    #[error("{image}: {reason}")]
    Invalid {
        /// The image.
        image: String,
        /// Why.
        reason: String,
    },
    /// Reading the local source of a push, or another local I/O error.
    #[error("{image}: {what}: {source}")]
    Io {
        /// The image.
        image: String,
        /// What was being read.
        what: String,
        /// The error.
        source: io::Error,
    },
}

fn detail(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

fn retry_after_text(d: &Option<Duration>) -> String {
    match d {
        Some(d) => format!(" (retry after {}s)", d.as_secs()),
        None => String::new(),
    }
}

impl RegistryError {
    /// The bus error category this maps to, so the store can build its envelope.
    ///
    /// 404 → `not_found`; bad content, bad credentials and refusals → `invalid` (the
    /// request cannot succeed as made); 5xx, 429 and network trouble → `unavailable`
    /// (trying again later may work).
    pub fn kind(&self) -> ErrorKind {
        use RegistryError::*;
        match self {
            NotFound { .. } => ErrorKind::NotFound,
            Manifest(ManifestError::NoMatchingPlatform { .. }) => ErrorKind::NotFound,
            Unauthorized { .. }
            | Denied { .. }
            | Rejected { .. }
            | Protocol { .. }
            | Auth { .. }
            | Manifest(_)
            | Digest { .. }
            | Credentials { .. }
            | Invalid { .. } => ErrorKind::Invalid,
            RateLimited { .. } | Server { .. } | Unavailable { .. } => ErrorKind::Unavailable,
            Io { .. } => ErrorKind::Internal,
        }
    }

    /// Whether retrying the same request later could succeed (network, 5xx, 429).
    pub fn is_transient(&self) -> bool {
        self.kind() == ErrorKind::Unavailable
    }

    /// Classifies an I/O error raised while reading a [`super::BlobReader`] (or copying
    /// from it): digest/size mismatches and transport failures become their own
    /// variants; anything else (e.g. the sink's write error) stays `Io`.
    pub fn from_read_error(image: &str, what: &str, e: io::Error) -> RegistryError {
        if let Some(d) = digest_error_of(&e) {
            return RegistryError::Digest {
                image: image.to_string(),
                source: d.clone(),
            };
        }
        if e.get_ref()
            .and_then(|inner| inner.downcast_ref::<RegistryError>())
            .is_some()
        {
            if let Some(inner) = e.into_inner() {
                if let Ok(r) = inner.downcast::<RegistryError>() {
                    return *r;
                }
            }
            // Unreachable in practice: the check above saw a RegistryError.
            return RegistryError::Io {
                image: image.to_string(),
                what: what.to_string(),
                source: io::Error::other("lost error"),
            };
        }
        RegistryError::Io {
            image: image.to_string(),
            what: what.to_string(),
            source: e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::Digest;

    #[test]
    fn kinds_and_read_errors() {
        let d = Digest::sha256_of(b"x");
        let mismatch = DigestError::SizeMismatch {
            subject: format!("blob {d}"),
            expected: 2,
            actual: 1,
        };
        let e = RegistryError::from_read_error(
            "img",
            "blob",
            io::Error::new(io::ErrorKind::InvalidData, mismatch.clone()),
        );
        assert!(
            matches!(e, RegistryError::Digest { ref source, .. } if *source == mismatch),
            "{e}"
        );
        assert_eq!(e.kind(), ErrorKind::Invalid);
        let net = RegistryError::Unavailable {
            image: "img".into(),
            what: "blob".into(),
            registry: "r".into(),
            reason: "reset".into(),
        };
        let e = RegistryError::from_read_error("img", "blob", io::Error::other(net));
        assert!(matches!(e, RegistryError::Unavailable { .. }), "{e}");
        assert!(e.is_transient());
        let e = RegistryError::from_read_error("img", "blob", io::Error::other("disk full"));
        assert_eq!(e.kind(), ErrorKind::Internal);
        let nf = RegistryError::NotFound {
            image: "busybox:latest".into(),
            what: "manifest latest".into(),
            registry: "r".into(),
            message: "MANIFEST_UNKNOWN: manifest unknown".into(),
        };
        assert_eq!(nf.kind(), ErrorKind::NotFound);
        assert_eq!(
            nf.to_string(),
            "busybox:latest: manifest latest not found on r: MANIFEST_UNKNOWN: manifest unknown"
        );
    }
}
