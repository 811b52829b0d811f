//! Docker schema2 and OCI manifests, manifest lists / OCI indexes, platform selection,
//! media types, and the image config with its consistency checks.
//!
//! Manifests and descriptors are our own plain serde structs rather than `oci-spec`'s:
//! they cover Docker and OCI alike, carry a validated [`Digest`] (oci-spec accepts any
//! algorithm), and keep media types as strings so an unknown one is reported by name.
//! The image config is `oci-spec`'s `ImageConfiguration`.

use super::digest::{Digest, DigestError};
use oci_spec::image::ImageConfiguration;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Manifests larger than this are refused before parsing (same limit as containerd).
pub const MAX_MANIFEST_SIZE: usize = 4 * 1024 * 1024;
/// Image configs larger than this are refused (real ones are a few KiB).
pub const MAX_CONFIG_SIZE: usize = 8 * 1024 * 1024;

/// Media type strings berth knows.
pub mod media {
    /// Docker image manifest, schema 2.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker manifest list.
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    /// Docker schema 1 (unsupported, named for a clear error).
    pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
    /// Docker schema 1, signed (unsupported).
    pub const DOCKER_SCHEMA1_SIGNED: &str =
        "application/vnd.docker.distribution.manifest.v1+prettyjws";
    /// Docker image config.
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    /// Docker gzip layer.
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    /// Docker uncompressed layer (used by containerd/BuildKit).
    pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
    /// Docker zstd layer (containerd's name).
    pub const DOCKER_LAYER_ZSTD: &str = "application/vnd.docker.image.rootfs.diff.tar.zstd";
    /// Docker foreign (Windows base) layer: refused.
    pub const DOCKER_LAYER_FOREIGN: &str =
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// OCI image config.
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// OCI uncompressed layer.
    pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
    /// OCI gzip layer.
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    /// OCI zstd layer.
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    /// Prefix of OCI non-distributable layer types: refused.
    pub const OCI_NONDISTRIBUTABLE_PREFIX: &str =
        "application/vnd.oci.image.layer.nondistributable.";
}

/// The `Accept` header for manifest requests: every manifest type berth can use.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// Errors about manifests and configs; each names the image it concerns.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Bigger than the limit: refused unparsed.
    #[error("{what} of {image} is {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        /// Image being handled.
        image: String,
        /// "manifest" or "config".
        what: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Not JSON, or JSON of the wrong shape.
    #[error("malformed {what} of {image}: {source}")]
    Json {
        /// Image being handled.
        image: String,
        /// "manifest", "config"…
        what: &'static str,
        /// The parser's complaint.
        source: serde_json::Error,
    },
    /// `schemaVersion` is not 2.
    #[error("manifest of {image} has schemaVersion {version:?}; only schema 2 (Docker v2 / OCI) is supported")]
    SchemaVersion {
        /// Image being handled.
        image: String,
        /// The version found.
        version: Option<u64>,
    },
    /// A media type berth does not handle.
    #[error("{what} of {image} has unknown media type {media_type:?}")]
    UnknownMediaType {
        /// Image being handled.
        image: String,
        /// What carried it ("manifest", "config", "layer sha256:…").
        what: String,
        /// The media type.
        media_type: String,
    },
    /// A foreign or non-distributable layer (fetched from elsewhere; berth refuses these).
    #[error("layer {digest} of {image} is foreign/non-distributable ({media_type}); berth does not fetch such layers")]
    ForeignLayer {
        /// Image being handled.
        image: String,
        /// The layer.
        digest: Digest,
        /// Its media type.
        media_type: String,
    },
    /// The body's media type and the transport's disagree on manifest vs index.
    #[error("manifest of {image} says media type {body:?} but was served as {served:?}")]
    MediaTypeMismatch {
        /// Image being handled.
        image: String,
        /// In the JSON body.
        body: String,
        /// From Content-Type / descriptor.
        served: String,
    },
    /// An index holds no manifest for the wanted platform.
    #[error("no manifest for platform {wanted} in {image}; available: {available}")]
    NoMatchingPlatform {
        /// Image being handled.
        image: String,
        /// Platform wanted.
        wanted: String,
        /// Platforms on offer, comma-separated.
        available: String,
    },
    /// A `--platform` value that does not parse.
    #[error("invalid platform {input:?}: {reason}")]
    BadPlatform {
        /// The text.
        input: String,
        /// Why.
        reason: String,
    },
    /// Manifest and config disagree, or a config field is invalid.
    #[error("inconsistent image {image}: {reason}")]
    Inconsistent {
        /// Image being handled.
        image: String,
        /// What is wrong.
        reason: String,
    },
    /// A digest inside did not validate or match.
    #[error("image {image}: {source}")]
    Digest {
        /// Image being handled.
        image: String,
        /// The digest problem.
        source: DigestError,
    },
}

/// A platform as written in descriptors (`architecture`, `os`, `variant`…).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// GOARCH value (`amd64`, `arm64`).
    pub architecture: String,
    /// GOOS value (`linux`).
    pub os: String,
    /// OS version (Windows).
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    /// OS features (Windows).
    #[serde(
        rename = "os.features",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_features: Option<Vec<String>>,
    /// CPU variant (`v7`, `v8`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Reserved by the spec; kept for round-trips.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<String>>,
}

/// A content descriptor (Docker and OCI share the shape).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the target.
    pub media_type: String,
    /// Digest of the target's bytes.
    pub digest: Digest,
    /// Size of the target's bytes.
    pub size: u64,
    /// Where to fetch it from instead (foreign layers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Platform of the target (index entries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Artifact type (OCI 1.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
}

impl Descriptor {
    /// A descriptor with only the required fields.
    pub fn new(media_type: &str, digest: Digest, size: u64) -> Self {
        Descriptor {
            media_type: media_type.to_string(),
            digest,
            size,
            urls: None,
            annotations: None,
            platform: None,
            artifact_type: None,
        }
    }
}

/// An image manifest (Docker schema2 or OCI).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// Media type (required by Docker, optional in OCI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The config blob.
    pub config: Descriptor,
    /// Layers, base first.
    pub layers: Vec<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// OCI 1.1 subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    /// OCI 1.1 artifact type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
}

/// A Docker manifest list or an OCI image index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// Media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The entries.
    pub manifests: Vec<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// What a manifest document turned out to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParsedManifest {
    /// A single-platform image (boxed: descriptors are large, indexes small).
    Image(Box<Manifest>),
    /// A list of platform-specific manifests.
    Index(Index),
}

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

/// Checks a layer media type: its compression, or a clear error for foreign/unknown ones.
pub fn layer_compression(
    media_type: &str,
    image: &str,
    digest: &Digest,
) -> Result<Compression, ManifestError> {
    use media::*;
    match media_type {
        OCI_LAYER_TAR | DOCKER_LAYER_TAR => Ok(Compression::None),
        OCI_LAYER_GZIP | DOCKER_LAYER_GZIP => Ok(Compression::Gzip),
        OCI_LAYER_ZSTD | DOCKER_LAYER_ZSTD => Ok(Compression::Zstd),
        m if m == DOCKER_LAYER_FOREIGN || m.starts_with(OCI_NONDISTRIBUTABLE_PREFIX) => {
            Err(ManifestError::ForeignLayer {
                image: image.to_string(),
                digest: digest.clone(),
                media_type: m.to_string(),
            })
        }
        m => Err(ManifestError::UnknownMediaType {
            image: image.to_string(),
            what: format!("layer {digest}"),
            media_type: m.to_string(),
        }),
    }
}

/// The OCI layer media type for a compression (used when berth writes manifests).
pub fn oci_layer_media_type(c: Compression) -> &'static str {
    match c {
        Compression::None => media::OCI_LAYER_TAR,
        Compression::Gzip => media::OCI_LAYER_GZIP,
        Compression::Zstd => media::OCI_LAYER_ZSTD,
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Image,
    Index,
    Schema1,
}

fn kind_of(media_type: &str) -> Option<Kind> {
    use media::*;
    match media_type {
        DOCKER_MANIFEST | OCI_MANIFEST => Some(Kind::Image),
        DOCKER_MANIFEST_LIST | OCI_INDEX => Some(Kind::Index),
        DOCKER_SCHEMA1 | DOCKER_SCHEMA1_SIGNED => Some(Kind::Schema1),
        _ => None,
    }
}

/// Parses and validates a manifest or index.
///
/// `served_as` is the media type from the transport (registry `Content-Type`, or the
/// descriptor that pointed here), if any; generic `application/json` is ignored.
/// `image` names the image in errors. Checks: size limit, JSON shape, schema version,
/// known media types for manifest, config and every layer, no foreign layers.
pub fn parse_manifest(
    bytes: &[u8],
    served_as: Option<&str>,
    image: &str,
) -> Result<ParsedManifest, ManifestError> {
    if bytes.len() > MAX_MANIFEST_SIZE {
        return Err(ManifestError::TooLarge {
            image: image.to_string(),
            what: "manifest",
            size: bytes.len(),
            limit: MAX_MANIFEST_SIZE,
        });
    }
    let json_err = |source| ManifestError::Json {
        image: image.to_string(),
        what: "manifest",
        source,
    };
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(json_err)?;
    let Some(obj) = value.as_object() else {
        return Err(ManifestError::Inconsistent {
            image: image.to_string(),
            reason: "manifest is not a JSON object".to_string(),
        });
    };
    let body_type = obj.get("mediaType").and_then(|v| v.as_str());
    let served = served_as.filter(|s| !s.is_empty() && *s != "application/json");
    let unknown = |m: &str| ManifestError::UnknownMediaType {
        image: image.to_string(),
        what: "manifest".to_string(),
        media_type: m.to_string(),
    };
    let body_kind = body_type
        .map(|m| kind_of(m).ok_or_else(|| unknown(m)))
        .transpose()?;
    let served_kind = served
        .map(|m| kind_of(m).ok_or_else(|| unknown(m)))
        .transpose()?;
    let version = obj.get("schemaVersion").and_then(|v| v.as_u64());
    let kind = match (body_kind, served_kind) {
        (Some(b), Some(s)) if b != s => {
            return Err(ManifestError::MediaTypeMismatch {
                image: image.to_string(),
                body: body_type.unwrap_or_default().to_string(),
                served: served.unwrap_or_default().to_string(),
            })
        }
        (Some(k), _) | (None, Some(k)) => k,
        // OCI allows omitting mediaType: decide by shape.
        (None, None) if version == Some(1) => Kind::Schema1,
        (None, None) if obj.contains_key("manifests") => Kind::Index,
        (None, None) => Kind::Image,
    };
    if kind == Kind::Schema1 || version != Some(2) {
        return Err(ManifestError::SchemaVersion {
            image: image.to_string(),
            version,
        });
    }
    match kind {
        Kind::Index => {
            let index: Index = serde_json::from_value(value).map_err(json_err)?;
            for m in &index.manifests {
                if kind_of(&m.media_type).is_none_or(|k| k == Kind::Schema1) {
                    return Err(ManifestError::UnknownMediaType {
                        image: image.to_string(),
                        what: format!("index entry {}", m.digest),
                        media_type: m.media_type.clone(),
                    });
                }
            }
            Ok(ParsedManifest::Index(index))
        }
        _ => {
            let manifest: Manifest = serde_json::from_value(value).map_err(json_err)?;
            validate_image_manifest(&manifest, image)?;
            Ok(ParsedManifest::Image(Box::new(manifest)))
        }
    }
}

/// Parses bytes that must be a single-platform image manifest.
pub fn parse_image_manifest(
    bytes: &[u8],
    served_as: Option<&str>,
    image: &str,
) -> Result<Manifest, ManifestError> {
    match parse_manifest(bytes, served_as, image)? {
        ParsedManifest::Image(m) => Ok(*m),
        ParsedManifest::Index(_) => Err(ManifestError::Inconsistent {
            image: image.to_string(),
            reason: "expected an image manifest, found an index".to_string(),
        }),
    }
}

fn validate_image_manifest(m: &Manifest, image: &str) -> Result<(), ManifestError> {
    match m.config.media_type.as_str() {
        media::DOCKER_CONFIG | media::OCI_CONFIG => {}
        other => {
            // Artifacts (Helm charts, signatures) land here: not runnable images.
            return Err(ManifestError::UnknownMediaType {
                image: image.to_string(),
                what: format!("config {}", m.config.digest),
                media_type: other.to_string(),
            });
        }
    }
    for layer in &m.layers {
        layer_compression(&layer.media_type, image, &layer.digest)?;
    }
    Ok(())
}

/// Parses an image config (`oci-spec`'s `ImageConfiguration`; Docker's extra fields are ignored).
pub fn parse_config(bytes: &[u8], image: &str) -> Result<ImageConfiguration, ManifestError> {
    if bytes.len() > MAX_CONFIG_SIZE {
        return Err(ManifestError::TooLarge {
            image: image.to_string(),
            what: "config",
            size: bytes.len(),
            limit: MAX_CONFIG_SIZE,
        });
    }
    serde_json::from_slice(bytes).map_err(|source| ManifestError::Json {
        image: image.to_string(),
        what: "config",
        source,
    })
}

/// The config's `rootfs.diff_ids` as validated digests.
pub fn diff_ids(config: &ImageConfiguration, image: &str) -> Result<Vec<Digest>, ManifestError> {
    config
        .rootfs()
        .diff_ids()
        .iter()
        .map(|d| {
            d.parse::<Digest>().map_err(|source| ManifestError::Digest {
                image: image.to_string(),
                source,
            })
        })
        .collect()
}

/// Checks that a config fits its manifest: rootfs type `layers`, one diff_id per layer,
/// and (when history is present) one non-empty history entry per layer.
pub fn check_consistency(
    manifest: &Manifest,
    config: &ImageConfiguration,
    image: &str,
) -> Result<Vec<Digest>, ManifestError> {
    let inconsistent = |reason: String| ManifestError::Inconsistent {
        image: image.to_string(),
        reason,
    };
    if config.rootfs().typ() != "layers" {
        return Err(inconsistent(format!(
            "config rootfs.type is {:?}, expected \"layers\"",
            config.rootfs().typ()
        )));
    }
    let ids = diff_ids(config, image)?;
    if ids.len() != manifest.layers.len() {
        return Err(inconsistent(format!(
            "manifest has {} layers but config has {} diff_ids",
            manifest.layers.len(),
            ids.len()
        )));
    }
    if let Some(history) = config.history() {
        if !history.is_empty() {
            let non_empty = history
                .iter()
                .filter(|h| h.empty_layer() != Some(true))
                .count();
            if non_empty != manifest.layers.len() {
                return Err(inconsistent(format!(
                    "manifest has {} layers but config history has {} non-empty entries",
                    manifest.layers.len(),
                    non_empty
                )));
            }
        }
    }
    Ok(ids)
}

/// A platform to select: `os/arch[/variant]`, compared after containerd's normalization.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformSpec {
    /// GOOS.
    pub os: String,
    /// GOARCH.
    pub architecture: String,
    /// CPU variant.
    pub variant: Option<String>,
}

impl PlatformSpec {
    /// This host's platform (linux/amd64, linux/arm64, linux/arm/v7…).
    pub fn host() -> Self {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
            "powerpc64" => "ppc64",
            "loongarch64" => "loong64",
            other => other,
        };
        PlatformSpec::new(std::env::consts::OS, arch, None)
    }

    /// A normalized spec.
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        let (architecture, variant) = normalize_arch(architecture, variant);
        PlatformSpec {
            os: normalize_os(os),
            architecture,
            variant,
        }
    }

    /// Parses `--platform` text: `os/arch[/variant]`, or a bare `arch` (host OS).
    pub fn parse(input: &str) -> Result<Self, ManifestError> {
        let bad = |reason: &str| ManifestError::BadPlatform {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let parts: Vec<&str> = input.split('/').collect();
        if parts.iter().any(|p| {
            p.is_empty()
                || !p
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-' || c == b'.')
        }) {
            return Err(bad(
                "expected os/arch[/variant] with letters, digits, '_', '-', '.'",
            ));
        }
        match parts.as_slice() {
            [arch] => Ok(Self::new(std::env::consts::OS, arch, None)),
            [os, arch] => Ok(Self::new(os, arch, None)),
            [os, arch, variant] => Ok(Self::new(os, arch, Some(variant))),
            _ => Err(bad("expected os/arch[/variant]")),
        }
    }

    /// How well a descriptor platform fits: `None` = not at all, lower = better.
    fn rank(&self, p: &Platform) -> Option<u32> {
        let other = PlatformSpec::new(&p.os, &p.architecture, p.variant.as_deref());
        if other.os != self.os || other.architecture != self.architecture {
            return None;
        }
        if other.variant == self.variant {
            return Some(0);
        }
        // An armv7 host runs v6 and v5 binaries; prefer the closest.
        if self.architecture == "arm" {
            let want = arm_level(self.variant.as_deref())?;
            let have = arm_level(other.variant.as_deref())?;
            return want.checked_sub(have);
        }
        // No variant asked for: accept any variant, after exact matches.
        if self.variant.is_none() {
            return Some(100);
        }
        None
    }
}

impl fmt::Display for PlatformSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

fn arm_level(v: Option<&str>) -> Option<u32> {
    v?.strip_prefix('v')?.parse().ok()
}

fn normalize_os(os: &str) -> String {
    match os.to_ascii_lowercase().as_str() {
        "macos" => "darwin".to_string(),
        o => o.to_string(),
    }
}

/// containerd's `platforms.Normalize` for architecture and variant.
fn normalize_arch(arch: &str, variant: Option<&str>) -> (String, Option<String>) {
    let arch = arch.to_ascii_lowercase();
    let variant = variant
        .map(str::to_ascii_lowercase)
        .filter(|v| !v.is_empty());
    match arch.as_str() {
        "i386" | "386" => ("386".to_string(), None),
        "x86_64" | "x86-64" | "amd64" => {
            let v = variant.filter(|v| v != "v1");
            ("amd64".to_string(), v)
        }
        "aarch64" | "arm64" => {
            let v = variant.filter(|v| !matches!(v.as_str(), "8" | "v8" | "v8.0"));
            ("arm64".to_string(), v)
        }
        "armhf" => ("arm".to_string(), Some("v7".to_string())),
        "armel" => ("arm".to_string(), Some("v6".to_string())),
        "arm" => {
            let v = match variant.as_deref() {
                None | Some("7") => "v7".to_string(),
                Some("5") => "v5".to_string(),
                Some("6") => "v6".to_string(),
                Some("8") => "v8".to_string(),
                Some(v) => v.to_string(),
            };
            ("arm".to_string(), Some(v))
        }
        other => (other.to_string(), variant),
    }
}

/// Picks the index entry for `want`: best-ranked platform match, first on ties.
///
/// Entries without a platform (or `unknown/unknown`, BuildKit's attestations) never
/// match, except that an index holding exactly one image manifest and no platforms
/// at all yields that manifest. A nested index entry is returned as is: the caller
/// fetches it and selects again.
pub fn select_platform<'a>(
    index: &'a Index,
    want: &PlatformSpec,
    image: &str,
) -> Result<&'a Descriptor, ManifestError> {
    let best = index
        .manifests
        .iter()
        .filter_map(|d| {
            d.platform
                .as_ref()
                .and_then(|p| want.rank(p))
                .map(|r| (r, d))
        })
        .min_by_key(|(r, _)| *r);
    if let Some((_, d)) = best {
        return Ok(d);
    }
    if index.manifests.len() == 1 && index.manifests[0].platform.is_none() {
        return Ok(&index.manifests[0]);
    }
    let available: Vec<String> = index
        .manifests
        .iter()
        .map(|d| match &d.platform {
            Some(p) => PlatformSpec::new(&p.os, &p.architecture, p.variant.as_deref()).to_string(),
            None => "(none)".to_string(),
        })
        .collect();
    Err(ManifestError::NoMatchingPlatform {
        image: image.to_string(),
        wanted: want.to_string(),
        available: if available.is_empty() {
            "(empty index)".to_string()
        } else {
            available.join(", ")
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn d(s: &str) -> Digest {
        Digest::sha256_of(s.as_bytes())
    }

    fn docker_manifest(layer_type: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": media::DOCKER_MANIFEST,
            "config": {"mediaType": media::DOCKER_CONFIG, "size": 10, "digest": d("c").to_string()},
            "layers": [
                {"mediaType": layer_type, "size": 20, "digest": d("l1").to_string()},
            ]
        }))
        .expect("json")
    }

    fn config(diff_ids: usize, history: &[bool]) -> Vec<u8> {
        let ids: Vec<String> = (0..diff_ids)
            .map(|i| d(&format!("u{i}")).to_string())
            .collect();
        let hist: Vec<serde_json::Value> = history
            .iter()
            .map(|empty| json!({"created_by": "x", "empty_layer": empty}))
            .collect();
        serde_json::to_vec(&json!({
            "architecture": "amd64", "os": "linux",
            "created": "2024-01-01T00:00:00Z",
            "config": {"Cmd": ["sh"], "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": ids},
            "history": hist,
            "container_config": {"Hostname": "docker extra field"},
        }))
        .expect("json")
    }

    #[test]
    fn parses_docker_schema2() {
        let m = parse_image_manifest(&docker_manifest(media::DOCKER_LAYER_GZIP), None, "img")
            .expect("valid");
        assert_eq!(m.layers.len(), 1);
        assert_eq!(m.config.digest, d("c"));
        // Served type agreeing is fine; generic json is ignored.
        parse_manifest(
            &docker_manifest(media::DOCKER_LAYER_GZIP),
            Some(media::OCI_MANIFEST),
            "img",
        )
        .expect("same kind");
        parse_manifest(
            &docker_manifest(media::DOCKER_LAYER_GZIP),
            Some("application/json"),
            "img",
        )
        .expect("generic");
    }

    #[test]
    fn parses_oci_without_media_type() {
        let bytes = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "config": {"mediaType": media::OCI_CONFIG, "size": 10, "digest": d("c").to_string()},
            "layers": [
                {"mediaType": media::OCI_LAYER_TAR, "size": 1, "digest": d("a").to_string()},
                {"mediaType": media::OCI_LAYER_GZIP, "size": 1, "digest": d("b").to_string()},
                {"mediaType": media::OCI_LAYER_ZSTD, "size": 1, "digest": d("c").to_string()},
                {"mediaType": media::DOCKER_LAYER_TAR, "size": 1, "digest": d("e").to_string()},
            ],
            "annotations": {"a": "b"}
        }))
        .expect("json");
        let ParsedManifest::Image(m) = parse_manifest(&bytes, None, "img").expect("ok") else {
            panic!("not an image")
        };
        let comps: Vec<Compression> = m
            .layers
            .iter()
            .map(|l| layer_compression(&l.media_type, "img", &l.digest).expect("known"))
            .collect();
        assert_eq!(
            comps,
            [
                Compression::None,
                Compression::Gzip,
                Compression::Zstd,
                Compression::None
            ]
        );
    }

    #[test]
    fn rejects_malformed_json() {
        for bad in [
            &b"{"[..],
            b"[]",
            b"null",
            b"{\"schemaVersion\":2,\"config\":1,\"layers\":[]}",
        ] {
            let err = parse_manifest(bad, None, "busybox:latest").expect_err("bad");
            assert!(err.to_string().contains("busybox:latest"), "{err}");
        }
        let err = parse_manifest(b"not json", None, "busybox:latest").expect_err("bad");
        assert!(matches!(err, ManifestError::Json { .. }), "{err}");
    }

    #[test]
    fn rejects_bad_digest_in_descriptor() {
        let bytes = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": media::OCI_MANIFEST,
            "config": {"mediaType": media::OCI_CONFIG, "size": 10, "digest": "sha256:abc"},
            "layers": []
        }))
        .expect("json");
        let err = parse_manifest(&bytes, None, "img").expect_err("bad digest");
        assert!(err.to_string().contains("sha256:abc"), "{err}");
    }

    #[test]
    fn rejects_oversized_manifest() {
        let mut big = docker_manifest(media::DOCKER_LAYER_GZIP);
        big.resize(MAX_MANIFEST_SIZE + 1, b' ');
        let err = parse_manifest(&big, None, "img").expect_err("too big");
        assert!(
            matches!(
                err,
                ManifestError::TooLarge {
                    what: "manifest",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("img"));
    }

    #[test]
    fn mutated_manifests_never_panic() {
        let good = docker_manifest(media::DOCKER_LAYER_GZIP);
        for i in 0..good.len() {
            let _ = parse_manifest(&good[..i], None, "img");
            let mut m = good.clone();
            m[i] = m[i].wrapping_add(1);
            let _ = parse_manifest(&m, None, "img");
        }
    }

    #[test]
    fn rejects_schema1_and_wrong_versions() {
        let s1 = br#"{"schemaVersion":1,"name":"x","tag":"y","fsLayers":[]}"#;
        assert!(matches!(
            parse_manifest(s1, None, "img"),
            Err(ManifestError::SchemaVersion {
                version: Some(1),
                ..
            })
        ));
        let s1typed = format!(
            r#"{{"schemaVersion":1,"mediaType":"{}"}}"#,
            media::DOCKER_SCHEMA1_SIGNED
        );
        assert!(matches!(
            parse_manifest(s1typed.as_bytes(), None, "img"),
            Err(ManifestError::SchemaVersion { .. })
        ));
        let s3 = br#"{"schemaVersion":3,"config":{},"layers":[]}"#;
        assert!(matches!(
            parse_manifest(s3, None, "img"),
            Err(ManifestError::SchemaVersion {
                version: Some(3),
                ..
            })
        ));
    }

    #[test]
    fn rejects_unknown_media_types() {
        let bytes = br#"{"schemaVersion":2,"mediaType":"application/vnd.example+json"}"#;
        assert!(matches!(
            parse_manifest(bytes, None, "img"),
            Err(ManifestError::UnknownMediaType { .. })
        ));
        let err = parse_manifest(&docker_manifest("application/x-weird"), None, "img")
            .expect_err("unknown layer");
        match &err {
            ManifestError::UnknownMediaType {
                what, media_type, ..
            } => {
                assert!(what.contains(&d("l1").to_string()));
                assert_eq!(media_type, "application/x-weird");
            }
            other => panic!("{other}"),
        }
        // An artifact (Helm chart) config type.
        let helm = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": media::OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.cncf.helm.config.v1+json", "size": 1, "digest": d("h").to_string()},
            "layers": []
        }))
        .expect("json");
        assert!(matches!(
            parse_manifest(&helm, None, "chart"),
            Err(ManifestError::UnknownMediaType { .. })
        ));
        assert!(matches!(
            parse_manifest(
                &docker_manifest(media::DOCKER_LAYER_GZIP),
                Some("text/html"),
                "img"
            ),
            Err(ManifestError::UnknownMediaType { .. })
        ));
    }

    #[test]
    fn rejects_foreign_layers() {
        for t in [
            media::DOCKER_LAYER_FOREIGN,
            "application/vnd.oci.image.layer.nondistributable.v1.tar",
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        ] {
            let err = parse_manifest(&docker_manifest(t), None, "win:ltsc").expect_err(t);
            assert!(matches!(err, ManifestError::ForeignLayer { .. }), "{err}");
            let msg = err.to_string();
            assert!(
                msg.contains("win:ltsc") && msg.contains(&d("l1").to_string()),
                "{msg}"
            );
        }
    }

    #[test]
    fn rejects_media_type_mismatch() {
        let err = parse_manifest(
            &docker_manifest(media::DOCKER_LAYER_GZIP),
            Some(media::OCI_INDEX),
            "img",
        )
        .expect_err("mismatch");
        assert!(
            matches!(err, ManifestError::MediaTypeMismatch { .. }),
            "{err}"
        );
    }

    fn entry(os: &str, arch: &str, variant: Option<&str>, tag: &str) -> serde_json::Value {
        let mut p = json!({"os": os, "architecture": arch});
        if let Some(v) = variant {
            p["variant"] = json!(v);
        }
        json!({"mediaType": media::OCI_MANIFEST, "size": 100, "digest": d(tag).to_string(), "platform": p})
    }

    fn index(entries: Vec<serde_json::Value>) -> Index {
        let bytes = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": entries
        }))
        .expect("json");
        match parse_manifest(&bytes, None, "multi").expect("index") {
            ParsedManifest::Index(i) => i,
            ParsedManifest::Image(_) => panic!("not an index"),
        }
    }

    #[test]
    fn selects_platforms() {
        let idx = index(vec![
            entry("unknown", "unknown", None, "attest"),
            entry("linux", "amd64", None, "amd64"),
            entry("linux", "arm64", Some("v8"), "arm64"),
            entry("linux", "arm", Some("v6"), "armv6"),
            entry("linux", "arm", Some("v7"), "armv7"),
            entry("windows", "amd64", None, "win"),
        ]);
        let pick = |spec: &str| {
            select_platform(&idx, &PlatformSpec::parse(spec).expect("spec"), "multi")
                .map(|d| d.digest.clone())
        };
        assert_eq!(pick("linux/amd64").expect("amd64"), d("amd64"));
        assert_eq!(pick("linux/x86_64").expect("alias"), d("amd64"));
        assert_eq!(
            pick("linux/arm64").expect("arm64 normalizes v8"),
            d("arm64")
        );
        assert_eq!(pick("linux/aarch64/v8").expect("alias"), d("arm64"));
        assert_eq!(pick("linux/arm").expect("arm defaults v7"), d("armv7"));
        assert_eq!(pick("linux/arm/v6").expect("v6"), d("armv6"));
        assert_eq!(
            pick("linux/arm/v8").expect("v8 falls back to v7"),
            d("armv7")
        );
        assert_eq!(pick("windows/amd64").expect("win"), d("win"));
        let err = pick("linux/s390x").expect_err("none");
        let msg = err.to_string();
        assert!(
            msg.contains("linux/s390x") && msg.contains("linux/arm64"),
            "{msg}"
        );
        let err = pick("linux/arm/v5").expect_err("v5 can't run v6");
        assert!(matches!(err, ManifestError::NoMatchingPlatform { .. }));
    }

    #[test]
    fn host_platform_default() {
        let host = PlatformSpec::host();
        assert_eq!(host.os, "linux");
        let idx = index(vec![
            entry("linux", "arm64", None, "arm64"),
            entry("linux", "amd64", None, "amd64"),
            entry("linux", "ppc64le", None, "ppc"),
            entry("linux", "riscv64", None, "rv"),
        ]);
        let got = select_platform(&idx, &host, "multi").expect("host platform present");
        let p = got.platform.as_ref().expect("platform");
        assert_eq!(
            PlatformSpec::new(&p.os, &p.architecture, None).architecture,
            host.architecture
        );
    }

    #[test]
    fn single_unplatformed_entry_is_selected() {
        let mut e = entry("linux", "amd64", None, "only");
        e.as_object_mut().expect("obj").remove("platform");
        let idx = index(vec![e]);
        let got = select_platform(&idx, &PlatformSpec::parse("linux/arm64").expect("p"), "x")
            .expect("only one");
        assert_eq!(got.digest, d("only"));
        let empty = index(vec![]);
        assert!(select_platform(&empty, &PlatformSpec::host(), "x").is_err());
    }

    #[test]
    fn bad_platform_strings() {
        for bad in ["", "/", "linux/", "linux/amd64/v1/x", "linux amd64"] {
            assert!(PlatformSpec::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            PlatformSpec::parse("linux/arm64/v8")
                .expect("ok")
                .to_string(),
            "linux/arm64"
        );
        assert_eq!(
            PlatformSpec::parse("linux/armhf").expect("ok").to_string(),
            "linux/arm/v7"
        );
    }

    #[test]
    fn index_rejects_unknown_entry_types() {
        let bytes = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": media::DOCKER_MANIFEST_LIST,
            "manifests": [{"mediaType": "application/x-foo", "size": 1, "digest": d("x").to_string()}]
        }))
        .expect("json");
        assert!(matches!(
            parse_manifest(&bytes, None, "img"),
            Err(ManifestError::UnknownMediaType { .. })
        ));
    }

    #[test]
    fn config_parses_with_docker_fields() {
        let c = parse_config(&config(1, &[false, true]), "img").expect("config");
        assert_eq!(c.rootfs().diff_ids().len(), 1);
        assert_eq!(c.created().as_deref(), Some("2024-01-01T00:00:00Z"));
        let cmd = c.config().as_ref().and_then(|c| c.cmd().clone());
        assert_eq!(cmd, Some(vec!["sh".to_string()]));
        assert_eq!(c.history().as_ref().map(Vec::len), Some(2));
    }

    #[test]
    fn config_errors() {
        assert!(matches!(
            parse_config(b"{", "img"),
            Err(ManifestError::Json { what: "config", .. })
        ));
        // Missing required rootfs.
        assert!(parse_config(br#"{"architecture":"amd64","os":"linux"}"#, "img").is_err());
        let big = vec![b' '; MAX_CONFIG_SIZE + 1];
        assert!(matches!(
            parse_config(&big, "img"),
            Err(ManifestError::TooLarge { .. })
        ));
    }

    #[test]
    fn consistency_checks() {
        let m = parse_image_manifest(&docker_manifest(media::DOCKER_LAYER_GZIP), None, "img")
            .expect("m");
        let good = parse_config(&config(1, &[true, false, true]), "img").expect("c");
        let ids = check_consistency(&m, &good, "img").expect("consistent");
        assert_eq!(ids, vec![d("u0")]);
        let no_history = parse_config(&config(1, &[]), "img").expect("c");
        check_consistency(&m, &no_history, "img").expect("history optional");

        let two_ids = parse_config(&config(2, &[false, false]), "img").expect("c");
        let err = check_consistency(&m, &two_ids, "img").expect_err("diff_ids");
        assert!(err.to_string().contains("2 diff_ids"), "{err}");

        let bad_hist = parse_config(&config(1, &[false, false]), "img").expect("c");
        let err = check_consistency(&m, &bad_hist, "img").expect_err("history");
        assert!(err.to_string().contains("history"), "{err}");

        let mut v: serde_json::Value = serde_json::from_slice(&config(1, &[])).expect("json");
        v["rootfs"]["diff_ids"][0] = json!("sha256:nothex");
        let bad_id = parse_config(&serde_json::to_vec(&v).expect("ser"), "img").expect("c");
        assert!(matches!(
            check_consistency(&m, &bad_id, "img"),
            Err(ManifestError::Digest { .. })
        ));
        v["rootfs"]["type"] = json!("fs");
        let bad_type = parse_config(&serde_json::to_vec(&v).expect("ser"), "img").expect("c");
        assert!(check_consistency(&m, &bad_type, "img").is_err());
    }
}
