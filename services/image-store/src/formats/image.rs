//! "An image to store": the plain description the store persists — manifest bytes and
//! digest, config bytes and digest, layer descriptors, references. Layer bytes are not
//! in here; each producer (import, docker-archive, OCI layout, pull) hands them out as
//! verified readers keyed by digest.

use super::digest::{chain_ids, Digest};
use super::manifest::{
    self, check_consistency, media, parse_config, parse_image_manifest, Descriptor, Manifest,
    ManifestError, PlatformSpec,
};
use super::reference::Reference;
use serde::{Deserialize, Serialize};

/// One layer: the blob as stored (possibly compressed) and its uncompressed diff_id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerToStore {
    /// Digest of the blob (the object name in the blob store).
    pub digest: Digest,
    /// Size of the blob in bytes.
    pub size: u64,
    /// Layer media type (tells its compression).
    pub media_type: String,
    /// Digest of the uncompressed tar, from the config's `rootfs.diff_ids`.
    pub diff_id: Digest,
    /// Size of the uncompressed tar, when known (import and docker-archive know it;
    /// a pulled gzip layer does not until it is unpacked).
    #[serde(default)]
    pub uncompressed_size: Option<u64>,
}

/// One row of `berth history`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRow {
    /// RFC 3339 creation time, if recorded.
    pub created: Option<String>,
    /// The command that made the step.
    pub created_by: String,
    /// Comment.
    pub comment: String,
    /// Layer size in bytes (0 for an empty layer).
    pub size: u64,
    /// Whether the step made no layer.
    pub empty_layer: bool,
    /// The layer's diff_id, for a non-empty step.
    pub diff_id: Option<Digest>,
}

/// A complete, validated image ready to persist.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageToStore {
    /// Names to point at this image (`name:tag`); may be empty (loaded by digest only).
    pub references: Vec<Reference>,
    /// Manifest media type.
    pub manifest_media_type: String,
    /// Digest of `manifest_bytes`.
    pub manifest_digest: Digest,
    /// The manifest exactly as stored (its digest is the image's content address).
    pub manifest_bytes: Vec<u8>,
    /// Digest of `config_bytes` (Docker's "image ID").
    pub config_digest: Digest,
    /// The config exactly as stored.
    pub config_bytes: Vec<u8>,
    /// Layers, base first.
    pub layers: Vec<LayerToStore>,
    /// os/arch/variant from the config.
    pub platform: PlatformSpec,
}

impl ImageToStore {
    /// Validates a manifest and its config (as fetched from a registry or layout) and
    /// describes the image. Checks the config's digest and size against the manifest.
    pub fn from_manifest_and_config(
        manifest_bytes: Vec<u8>,
        manifest_media_type: Option<&str>,
        config_bytes: Vec<u8>,
        references: Vec<Reference>,
        image: &str,
    ) -> Result<Self, ManifestError> {
        let manifest = parse_image_manifest(&manifest_bytes, manifest_media_type, image)?;
        let config_digest = manifest.config.digest.clone();
        let digest_err = |source| ManifestError::Digest {
            image: image.to_string(),
            source,
        };
        if manifest.config.size != config_bytes.len() as u64 {
            return Err(digest_err(super::digest::DigestError::SizeMismatch {
                subject: format!("config {config_digest}"),
                expected: manifest.config.size,
                actual: config_bytes.len() as u64,
            }));
        }
        config_digest
            .verify_bytes(&config_bytes, &format!("config {config_digest}"))
            .map_err(digest_err)?;
        let config = parse_config(&config_bytes, image)?;
        let diff_ids = check_consistency(&manifest, &config, image)?;
        let layers = manifest
            .layers
            .iter()
            .zip(diff_ids)
            .map(|(l, diff_id)| LayerToStore {
                digest: l.digest.clone(),
                size: l.size,
                media_type: l.media_type.clone(),
                diff_id,
                // An uncompressed layer's size is its own.
                uncompressed_size: matches!(
                    l.media_type.as_str(),
                    media::OCI_LAYER_TAR | media::DOCKER_LAYER_TAR
                )
                .then_some(l.size),
            })
            .collect();
        let media_type = manifest
            .media_type
            .clone()
            .or_else(|| manifest_media_type.map(str::to_string))
            .unwrap_or_else(|| media::OCI_MANIFEST.to_string());
        Ok(ImageToStore {
            references,
            manifest_media_type: media_type,
            manifest_digest: super::digest::Digest::sha256_of(&manifest_bytes),
            manifest_bytes,
            config_digest,
            config_bytes,
            layers,
            platform: platform_of(&config),
        })
    }

    /// Builds an OCI manifest for a config and its layers (used where the source has no
    /// manifest: `import`, docker-archive), then validates the result like a pulled one.
    pub fn build(
        config_bytes: Vec<u8>,
        config_media_type: &str,
        layers: Vec<LayerToStore>,
        references: Vec<Reference>,
        image: &str,
    ) -> Result<Self, ManifestError> {
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(media::OCI_MANIFEST.to_string()),
            config: Descriptor::new(
                config_media_type,
                Digest::sha256_of(&config_bytes),
                config_bytes.len() as u64,
            ),
            layers: layers
                .iter()
                .map(|l| Descriptor::new(&l.media_type, l.digest.clone(), l.size))
                .collect(),
            annotations: None,
            subject: None,
            artifact_type: None,
        };
        let manifest_bytes =
            serde_json::to_vec(&manifest).map_err(|source| ManifestError::Json {
                image: image.to_string(),
                what: "manifest",
                source,
            })?;
        let mut built = Self::from_manifest_and_config(
            manifest_bytes,
            Some(media::OCI_MANIFEST),
            config_bytes,
            references,
            image,
        )?;
        // The config's diff_ids must be the ones the producer computed from the layers.
        for (i, (given, parsed)) in layers.iter().zip(&mut built.layers).enumerate() {
            if given.diff_id != parsed.diff_id {
                return Err(ManifestError::Inconsistent {
                    image: image.to_string(),
                    reason: format!(
                        "layer {i} ({}) has diff_id {} but the config says {}",
                        given.digest, given.diff_id, parsed.diff_id
                    ),
                });
            }
            parsed.uncompressed_size = given.uncompressed_size.or(parsed.uncompressed_size);
        }
        Ok(built)
    }

    /// The parsed manifest (cannot fail on a value built by this module's constructors).
    pub fn manifest(&self) -> Result<Manifest, ManifestError> {
        parse_image_manifest(
            &self.manifest_bytes,
            Some(&self.manifest_media_type),
            &self.name(),
        )
    }

    /// The parsed config.
    pub fn config(&self) -> Result<oci_spec::image::ImageConfiguration, ManifestError> {
        parse_config(&self.config_bytes, &self.name())
    }

    /// A name for messages: the first reference, else the manifest digest.
    pub fn name(&self) -> String {
        self.references
            .first()
            .map(Reference::familiar)
            .unwrap_or_else(|| self.manifest_digest.to_string())
    }

    /// The diff_ids, base first.
    pub fn diff_ids(&self) -> Vec<Digest> {
        self.layers.iter().map(|l| l.diff_id.clone()).collect()
    }

    /// The chainID of every layer prefix (what the layer-unpacker keys snapshots by).
    pub fn chain_ids(&self) -> Vec<Digest> {
        chain_ids(&self.diff_ids())
    }

    /// `docker history` rows, oldest first (the CLI shows them newest first).
    ///
    /// Each non-empty history entry is matched with the next layer; its size is the
    /// layer's uncompressed size when known, else the blob size. Without history in the
    /// config, one row per layer with empty text.
    pub fn history(&self) -> Result<Vec<HistoryRow>, ManifestError> {
        let config = self.config()?;
        let size_of = |l: &LayerToStore| l.uncompressed_size.unwrap_or(l.size);
        let entries = config.history().clone().unwrap_or_default();
        if entries.is_empty() {
            return Ok(self
                .layers
                .iter()
                .map(|l| HistoryRow {
                    created: None,
                    created_by: String::new(),
                    comment: String::new(),
                    size: size_of(l),
                    empty_layer: false,
                    diff_id: Some(l.diff_id.clone()),
                })
                .collect());
        }
        let mut layers = self.layers.iter();
        Ok(entries
            .iter()
            .map(|h| {
                let empty = h.empty_layer() == Some(true);
                let layer = if empty { None } else { layers.next() };
                HistoryRow {
                    created: h.created().clone(),
                    created_by: h.created_by().clone().unwrap_or_default(),
                    comment: h.comment().clone().unwrap_or_default(),
                    size: layer.map_or(0, size_of),
                    empty_layer: empty,
                    diff_id: layer.map(|l| l.diff_id.clone()),
                }
            })
            .collect())
    }

    /// Sum of the layer blob sizes.
    pub fn layers_size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
}

/// os/arch/variant recorded in a config.
pub fn platform_of(config: &oci_spec::image::ImageConfiguration) -> PlatformSpec {
    PlatformSpec::new(
        &config.os().to_string(),
        &config.architecture().to_string(),
        config.variant().as_deref(),
    )
}

/// Re-exported so callers can name the manifest module's types through this one.
pub use manifest::Compression;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(diff_ids: &[Digest]) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "architecture": "arm64", "variant": "v8", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .expect("json")
    }

    fn layer(n: &str) -> LayerToStore {
        LayerToStore {
            digest: Digest::sha256_of(format!("gz{n}").as_bytes()),
            size: 3,
            media_type: media::OCI_LAYER_GZIP.to_string(),
            diff_id: Digest::sha256_of(n.as_bytes()),
            uncompressed_size: Some(1),
        }
    }

    #[test]
    fn build_and_reparse() {
        let layers = vec![layer("a"), layer("b")];
        let ids: Vec<Digest> = layers.iter().map(|l| l.diff_id.clone()).collect();
        let r = Reference::parse("busybox").expect("ref");
        let img = ImageToStore::build(
            config(&ids),
            media::OCI_CONFIG,
            layers.clone(),
            vec![r],
            "busybox",
        )
        .expect("build");
        assert_eq!(img.layers, layers);
        assert_eq!(img.name(), "busybox:latest");
        assert_eq!(img.platform.to_string(), "linux/arm64");
        assert_eq!(img.manifest_digest, Digest::sha256_of(&img.manifest_bytes));
        assert_eq!(img.config_digest, Digest::sha256_of(&img.config_bytes));
        assert_eq!(img.chain_ids().len(), 2);
        assert_eq!(img.chain_ids()[0], ids[0]);
        assert_eq!(img.layers_size(), 6);
        let m = img.manifest().expect("manifest");
        assert_eq!(m.layers.len(), 2);
        img.config().expect("config");
    }

    #[test]
    fn history_rows_match_layers() {
        let layers = vec![layer("a"), layer("b")];
        let ids: Vec<Digest> = layers.iter().map(|l| l.diff_id.clone()).collect();
        let with_history = serde_json::to_vec(&json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": ids},
            "history": [
                {"created": "2024-01-01T00:00:00Z", "created_by": "ADD rootfs", "comment": "base"},
                {"created_by": "ENV X=1", "empty_layer": true},
                {"created_by": "RUN make"},
            ],
        }))
        .expect("json");
        let img = ImageToStore::build(with_history, media::OCI_CONFIG, layers, vec![], "x")
            .expect("build");
        let rows = img.history().expect("history");
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].created_by, "ADD rootfs");
        assert_eq!(rows[0].diff_id.as_ref(), Some(&ids[0]));
        assert_eq!(rows[0].size, 1, "uncompressed size preferred");
        assert!(rows[1].empty_layer);
        assert_eq!(rows[1].size, 0);
        assert_eq!(rows[2].diff_id.as_ref(), Some(&ids[1]));

        let bare = ImageToStore::build(
            config(&ids),
            media::OCI_CONFIG,
            vec![layer("a"), layer("b")],
            vec![],
            "x",
        )
        .expect("build");
        assert_eq!(bare.history().expect("rows").len(), 2);
    }

    #[test]
    fn build_rejects_wrong_diff_ids() {
        let layers = vec![layer("a")];
        let err = ImageToStore::build(
            config(&[Digest::sha256_of(b"other")]),
            media::OCI_CONFIG,
            layers,
            vec![],
            "x",
        )
        .expect_err("mismatch");
        assert!(err.to_string().contains("diff_id"), "{err}");
        let err = ImageToStore::build(
            config(&[]),
            media::OCI_CONFIG,
            vec![layer("a")],
            vec![],
            "x",
        )
        .expect_err("count");
        assert!(err.to_string().contains("1 layers"), "{err}");
    }

    #[test]
    fn config_digest_and_size_are_checked() {
        let layers = vec![layer("a")];
        let ids = vec![layers[0].diff_id.clone()];
        let img = ImageToStore::build(config(&ids), media::OCI_CONFIG, layers, vec![], "x")
            .expect("build");
        let mut tampered = img.config_bytes.clone();
        tampered[0] = b' ';
        let err = ImageToStore::from_manifest_and_config(
            img.manifest_bytes.clone(),
            None,
            tampered,
            vec![],
            "x",
        )
        .expect_err("digest");
        assert!(err.to_string().contains("digest mismatch"), "{err}");
        let mut longer = img.config_bytes.clone();
        longer.push(b' ');
        let err =
            ImageToStore::from_manifest_and_config(img.manifest_bytes, None, longer, vec![], "x")
                .expect_err("size");
        assert!(err.to_string().contains("size mismatch"), "{err}");
    }
}
