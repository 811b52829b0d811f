//! OCI image layouts (a directory, or a tar of one): `oci-layout`, `index.json`,
//! `blobs/<alg>/<hex>`. Every blob an image needs is verified (digest and size) before
//! the image is returned; blobs of platforms not selected are never touched.
//!
//! Names: `io.containerd.image.name` (docker ≥ 25, containerd) is a full reference;
//! `org.opencontainers.image.ref.name` is, per the spec, usually just a tag (skopeo,
//! umoci write `oci:DIR:tag` that way), so it is combined with the caller's name when
//! one is given, parsed as a full reference when it contains `/`, `:` or `@`, and
//! otherwise (no name given) read as an image name, as `docker load` does.

use super::archive::{normalize_path, open_verified, ArchiveError, Spool, SpoolEntry};
use super::digest::{Digest, DigestError, VerifyingReader};
use super::image::ImageToStore;
use super::manifest::{
    self, media, parse_manifest, select_platform, Descriptor, Index, ManifestError, ParsedManifest,
    PlatformSpec,
};
use super::reference::Reference;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

/// The spec's annotation naming a manifest in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// containerd's / docker's full image name annotation.
pub const CONTAINERD_NAME: &str = "io.containerd.image.name";
const MAX_METADATA: u64 = 4 * 1024 * 1024;
const MAX_DEPTH: usize = 4;

/// How to load a layout.
#[derive(Clone, Debug)]
pub struct OciLoadOptions {
    /// Platform to pick from indexes (default: this host).
    pub platform: PlatformSpec,
    /// Repository name to combine with tag-only ref names (and to name a lone unnamed image).
    pub name: Option<Reference>,
}

impl Default for OciLoadOptions {
    fn default() -> Self {
        OciLoadOptions {
            platform: PlatformSpec::host(),
            name: None,
        }
    }
}

/// One image found in a layout.
#[derive(Clone, Debug)]
pub struct OciImage {
    /// The image (its `references` filled from the annotations, possibly empty).
    pub image: ImageToStore,
    /// The raw `org.opencontainers.image.ref.name`, if any (the first one when the
    /// layout names the same manifest several times).
    pub ref_name: Option<String>,
}

#[derive(Debug)]
enum Source {
    Dir(PathBuf),
    Spool(Spool),
}

/// A layout read and verified; blobs are served from it until drop.
#[derive(Debug)]
pub struct OciLayout {
    source: Source,
    archive: String,
    images: Vec<OciImage>,
    blobs: BTreeMap<Digest, (PathBuf, u64)>,
}

impl OciLayout {
    /// Opens a layout directory.
    pub fn open_dir(dir: &Path, opts: &OciLoadOptions) -> Result<Self, ArchiveError> {
        let mut l = OciLayout {
            source: Source::Dir(dir.to_path_buf()),
            archive: dir.display().to_string(),
            images: Vec::new(),
            blobs: BTreeMap::new(),
        };
        l.load(opts)?;
        Ok(l)
    }

    /// Reads a tar (optionally gzip-compressed) of a layout, spooling it under `spool_in`.
    pub fn read_tar<R: Read>(
        input: R,
        spool_in: &Path,
        archive: &str,
        opts: &OciLoadOptions,
    ) -> Result<Self, ArchiveError> {
        let spool = Spool::read(input, spool_in, archive)?;
        Self::from_spool(spool, opts)
    }

    /// Interprets an already spooled tar as an OCI layout.
    pub fn from_spool(spool: Spool, opts: &OciLoadOptions) -> Result<Self, ArchiveError> {
        check_tar_entries(&spool)?;
        let archive = spool.archive.clone();
        let mut l = OciLayout {
            source: Source::Spool(spool),
            archive,
            images: Vec::new(),
            blobs: BTreeMap::new(),
        };
        l.load(opts)?;
        Ok(l)
    }

    /// The images found, in `index.json` order.
    pub fn images(&self) -> &[OciImage] {
        &self.images
    }

    /// Every layer blob the images need (deduplicated) with its size.
    pub fn blobs(&self) -> impl Iterator<Item = (&Digest, u64)> {
        self.blobs.iter().map(|(d, (_, s))| (d, *s))
    }

    /// Opens a layer blob as a reader that re-verifies digest and size while streaming.
    pub fn open_blob(
        &self,
        digest: &Digest,
    ) -> Result<VerifyingReader<BufReader<File>>, ArchiveError> {
        let (file, size) = self
            .blobs
            .get(digest)
            .ok_or_else(|| ArchiveError::NoSuchBlob {
                archive: self.archive.clone(),
                digest: digest.clone(),
            })?;
        open_verified(&self.archive, file, digest, *size, format!("blob {digest}"))
    }

    fn load(&mut self, opts: &OciLoadOptions) -> Result<(), ArchiveError> {
        let layout = self.read_meta("oci-layout")?;
        let v: serde_json::Value =
            serde_json::from_slice(&layout).map_err(|source| ArchiveError::Json {
                archive: self.archive.clone(),
                path: "oci-layout".to_string(),
                source,
            })?;
        let version = v.get("imageLayoutVersion").and_then(|v| v.as_str());
        if version != Some("1.0.0") {
            return Err(ArchiveError::Invalid {
                archive: self.archive.clone(),
                path: "oci-layout".to_string(),
                reason: format!("imageLayoutVersion is {version:?}, expected \"1.0.0\""),
            });
        }
        let index_bytes = self.read_meta("index.json")?;
        let index = match parse_manifest(&index_bytes, None, "index.json")
            .map_err(|source| self.manifest_err(source))?
        {
            ParsedManifest::Index(i) => i,
            ParsedManifest::Image(_) => {
                return Err(ArchiveError::Invalid {
                    archive: self.archive.clone(),
                    path: "index.json".to_string(),
                    reason: "is an image manifest, not an index".to_string(),
                })
            }
        };
        // Group by ref name: several platform manifests under one name form one image.
        let mut groups: Vec<(Option<String>, Vec<Descriptor>)> = Vec::new();
        for d in index.manifests {
            let name = d
                .annotations
                .as_ref()
                .and_then(|a| a.get(REF_NAME))
                .cloned();
            match groups.iter_mut().find(|(n, _)| n.is_some() && *n == name) {
                Some((_, v)) => v.push(d),
                None => groups.push((name, vec![d])),
            }
        }
        let lone = groups.len() == 1;
        for (ref_name, descs) in groups {
            let multi_platform = descs.len() > 1
                && descs
                    .iter()
                    .all(|d| d.platform.is_some() && is_image_manifest(&d.media_type));
            let chosen: Vec<Descriptor> = if multi_platform {
                let label = ref_name.clone().unwrap_or_else(|| "index.json".to_string());
                let synthetic = Index {
                    schema_version: 2,
                    media_type: None,
                    manifests: descs,
                    annotations: None,
                };
                vec![select_platform(&synthetic, &opts.platform, &label)
                    .map_err(|source| self.manifest_err(source))?
                    .clone()]
            } else {
                descs
            };
            for d in chosen {
                let refs = self.references_for(&d, ref_name.as_deref(), opts, lone)?;
                let image = self.resolve(&d, refs, &opts.platform, 0)?;
                // One manifest under several names is one image with several references.
                match self
                    .images
                    .iter_mut()
                    .find(|i| i.image.manifest_digest == image.manifest_digest)
                {
                    Some(existing) => {
                        for r in image.references {
                            if !existing.image.references.contains(&r) {
                                existing.image.references.push(r);
                            }
                        }
                    }
                    None => self.images.push(OciImage {
                        image,
                        ref_name: ref_name.clone(),
                    }),
                }
            }
        }
        Ok(())
    }

    fn references_for(
        &self,
        d: &Descriptor,
        ref_name: Option<&str>,
        opts: &OciLoadOptions,
        lone: bool,
    ) -> Result<Vec<Reference>, ArchiveError> {
        let ref_err = |source| ArchiveError::Reference {
            archive: self.archive.clone(),
            source,
        };
        if let Some(full) = d.annotations.as_ref().and_then(|a| a.get(CONTAINERD_NAME)) {
            return Ok(vec![Reference::parse(full).map_err(ref_err)?]);
        }
        match (ref_name, &opts.name) {
            (Some(r), _) if r.contains(['/', ':', '@']) => {
                Ok(vec![Reference::parse(r).map_err(ref_err)?])
            }
            (Some(tag), Some(name)) => Ok(vec![name
                .without_digest()
                .with_tag(tag)
                .map_err(ref_err)?]),
            (None, Some(name)) if lone => Ok(vec![name.clone()]),
            // No name to combine it with: `docker load` reads a bare ref name as an
            // image name, normalized (`fromoa` → docker.io/library/fromoa:latest).
            // One that is no valid name leaves the image untagged.
            (Some(bare), None) => Ok(Reference::parse(bare).into_iter().collect()),
            _ => Ok(Vec::new()),
        }
    }

    fn resolve(
        &mut self,
        d: &Descriptor,
        refs: Vec<Reference>,
        platform: &PlatformSpec,
        depth: usize,
    ) -> Result<ImageToStore, ArchiveError> {
        let label = refs
            .first()
            .map(Reference::familiar)
            .unwrap_or_else(|| d.digest.to_string());
        if depth > MAX_DEPTH {
            return Err(ArchiveError::Invalid {
                archive: self.archive.clone(),
                path: "index.json".to_string(),
                reason: format!("indexes nested deeper than {MAX_DEPTH} at {label}"),
            });
        }
        if d.size > manifest::MAX_MANIFEST_SIZE as u64 {
            return Err(self.manifest_err(ManifestError::TooLarge {
                image: label,
                what: "manifest",
                size: usize::try_from(d.size).unwrap_or(usize::MAX),
                limit: manifest::MAX_MANIFEST_SIZE,
            }));
        }
        let bytes = self.read_blob(d, &format!("manifest of {label}"))?;
        match parse_manifest(&bytes, Some(&d.media_type), &label)
            .map_err(|source| self.manifest_err(source))?
        {
            ParsedManifest::Index(idx) => {
                let next = select_platform(&idx, platform, &label)
                    .map_err(|source| self.manifest_err(source))?
                    .clone();
                self.resolve(&next, refs, platform, depth + 1)
            }
            ParsedManifest::Image(m) => {
                if m.config.size > manifest::MAX_CONFIG_SIZE as u64 {
                    return Err(self.manifest_err(ManifestError::TooLarge {
                        image: label,
                        what: "config",
                        size: usize::try_from(m.config.size).unwrap_or(usize::MAX),
                        limit: manifest::MAX_CONFIG_SIZE,
                    }));
                }
                let config = self.read_blob(&m.config, &format!("config of {label}"))?;
                let image = ImageToStore::from_manifest_and_config(
                    bytes,
                    Some(&d.media_type),
                    config,
                    refs,
                    &label,
                )
                .map_err(|source| self.manifest_err(source))?;
                for (i, l) in m.layers.iter().enumerate() {
                    let what = format!("layer {} of {label}", i + 1);
                    let file = self.verified_blob_file(l, &what)?;
                    self.blobs.insert(l.digest.clone(), (file, l.size));
                }
                Ok(image)
            }
        }
    }

    fn manifest_err(&self, source: ManifestError) -> ArchiveError {
        ArchiveError::Manifest {
            archive: self.archive.clone(),
            source: Box::new(source),
        }
    }

    fn read_meta(&self, name: &str) -> Result<Vec<u8>, ArchiveError> {
        match &self.source {
            Source::Spool(s) => match s.entries.get(name) {
                Some(SpoolEntry::File { .. }) => {
                    s.read_small(name, "the OCI layout spec", MAX_METADATA)
                }
                Some(_) => Err(self.not_regular(name)),
                None => Err(self.missing(name, "the OCI layout spec")),
            },
            Source::Dir(root) => {
                let p = root.join(name);
                let meta = self.regular_meta(&p, name, "the OCI layout spec")?;
                if meta.len() > MAX_METADATA {
                    return Err(ArchiveError::Invalid {
                        archive: self.archive.clone(),
                        path: name.to_string(),
                        reason: format!("{} bytes, over the limit", meta.len()),
                    });
                }
                std::fs::read(&p).map_err(|e| ArchiveError::io(&self.archive, name, e))
            }
        }
    }

    fn missing(&self, path: &str, by: &str) -> ArchiveError {
        ArchiveError::MissingFile {
            archive: self.archive.clone(),
            path: path.to_string(),
            referenced_by: by.to_string(),
        }
    }

    fn not_regular(&self, path: &str) -> ArchiveError {
        // A symlink in a layout could point anywhere on this host; never follow it.
        ArchiveError::UnsafePath {
            archive: self.archive.clone(),
            path: path.to_string(),
            reason: "not a regular file (symlinks and links are not followed in OCI layouts)"
                .to_string(),
        }
    }

    fn regular_meta(
        &self,
        p: &Path,
        rel: &str,
        by: &str,
    ) -> Result<std::fs::Metadata, ArchiveError> {
        match std::fs::symlink_metadata(p) {
            Ok(m) if m.file_type().is_file() => Ok(m),
            Ok(_) => Err(self.not_regular(rel)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(self.missing(rel, by)),
            Err(e) => Err(ArchiveError::io(&self.archive, rel, e)),
        }
    }

    /// Finds a blob's file and checks its size and digest; returns the file path.
    fn verified_blob_file(&self, d: &Descriptor, what: &str) -> Result<PathBuf, ArchiveError> {
        let rel = format!("blobs/{}/{}", d.digest.algorithm().name(), d.digest.hex());
        let digest_err = |source| ArchiveError::Digest {
            archive: self.archive.clone(),
            path: rel.clone(),
            source: Box::new(source),
        };
        let size_err = |actual| {
            digest_err(DigestError::SizeMismatch {
                subject: what.to_string(),
                expected: d.size,
                actual,
            })
        };
        let (file, known) = match &self.source {
            Source::Spool(s) => match s.entries.get(&rel) {
                Some(SpoolEntry::File {
                    file, digest, size, ..
                }) => {
                    if *size != d.size {
                        return Err(size_err(*size));
                    }
                    (file.clone(), Some(digest.clone()))
                }
                Some(_) => return Err(self.not_regular(&rel)),
                None => return Err(self.missing(&rel, what)),
            },
            Source::Dir(root) => {
                let p = root.join(&rel);
                let meta = self.regular_meta(&p, &rel, what)?;
                if meta.len() != d.size {
                    return Err(size_err(meta.len()));
                }
                (p, None)
            }
        };
        // The spool hashed sha256 while copying; anything else is hashed now.
        let actual = match known {
            Some(k) if k.algorithm() == d.digest.algorithm() => k,
            _ => {
                let mut r =
                    open_verified(&self.archive, &file, &d.digest, d.size, what.to_string())?;
                std::io::copy(&mut r, &mut std::io::sink())
                    .map_err(|e| ArchiveError::io(&self.archive, &rel, e))?;
                d.digest.clone()
            }
        };
        if actual != d.digest {
            return Err(digest_err(DigestError::Mismatch {
                subject: what.to_string(),
                expected: d.digest.clone(),
                actual,
            }));
        }
        Ok(file)
    }

    fn read_blob(&self, d: &Descriptor, what: &str) -> Result<Vec<u8>, ArchiveError> {
        let file = self.verified_blob_file(d, what)?;
        std::fs::read(&file).map_err(|e| ArchiveError::io(&self.archive, what, e))
    }
}

fn is_image_manifest(media_type: &str) -> bool {
    media_type == media::OCI_MANIFEST || media_type == media::DOCKER_MANIFEST
}

/// A layout tar may hold only the layout files (plus docker ≥ 25's manifest.json and
/// repositories, which make the same tar a docker-archive too).
fn check_tar_entries(spool: &Spool) -> Result<(), ArchiveError> {
    for (path, e) in &spool.entries {
        let ok = match path.as_str() {
            "oci-layout" | "index.json" | "manifest.json" | "repositories" => true,
            "blobs" => matches!(e, SpoolEntry::Dir),
            p => match p
                .strip_prefix("blobs/")
                .map(|r| r.split('/').collect::<Vec<_>>())
            {
                Some(parts) if parts.len() == 1 => matches!(e, SpoolEntry::Dir),
                Some(parts) if parts.len() == 2 => {
                    normalize_path("", p).is_ok() && !matches!(e, SpoolEntry::Dir)
                }
                _ => false,
            },
        };
        if !ok {
            return Err(ArchiveError::ExtraFile {
                archive: spool.archive.clone(),
                path: path.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::manifest::Platform;
    use serde_json::json;
    use std::io::Write;

    struct Layout {
        dir: tempfile::TempDir,
    }

    impl Layout {
        fn new() -> Self {
            let dir = tempfile::tempdir().expect("tmp");
            std::fs::create_dir_all(dir.path().join("blobs/sha256")).expect("mkdir");
            std::fs::write(
                dir.path().join("oci-layout"),
                br#"{"imageLayoutVersion":"1.0.0"}"#,
            )
            .expect("write");
            Layout { dir }
        }
        fn blob(&self, bytes: &[u8]) -> Digest {
            let d = Digest::sha256_of(bytes);
            std::fs::write(self.dir.path().join("blobs/sha256").join(d.hex()), bytes)
                .expect("blob");
            d
        }
        fn path(&self, d: &Digest) -> PathBuf {
            self.dir.path().join("blobs/sha256").join(d.hex())
        }
        /// An image with one layer; returns (manifest descriptor, layer digest).
        fn image(&self, arch: &str, content: &[u8], write_blobs: bool) -> (Descriptor, Digest) {
            let mut b = tar::Builder::new(Vec::new());
            let mut h = tar::Header::new_gnu();
            h.set_size(content.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, "file", content).expect("tar");
            let layer = b.into_inner().expect("tar");
            let diff = Digest::sha256_of(&layer);
            let config = serde_json::to_vec(&json!({
                "architecture": arch, "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [diff]},
                "history": [{"created_by": "test"}],
            }))
            .expect("json");
            let manifest = serde_json::to_vec(&json!({
                "schemaVersion": 2, "mediaType": media::OCI_MANIFEST,
                "config": {"mediaType": media::OCI_CONFIG, "digest": Digest::sha256_of(&config), "size": config.len()},
                "layers": [{"mediaType": media::OCI_LAYER_TAR, "digest": diff, "size": layer.len()}],
            }))
            .expect("json");
            let md = Digest::sha256_of(&manifest);
            if write_blobs {
                self.blob(&layer);
                self.blob(&config);
                self.blob(&manifest);
            }
            let mut d = Descriptor::new(media::OCI_MANIFEST, md, manifest.len() as u64);
            d.platform = Some(Platform {
                architecture: arch.to_string(),
                os: "linux".to_string(),
                ..Default::default()
            });
            (d, diff)
        }
        fn index(&self, entries: Vec<Descriptor>) {
            let idx = Index {
                schema_version: 2,
                media_type: Some(media::OCI_INDEX.to_string()),
                manifests: entries,
                annotations: None,
            };
            std::fs::write(
                self.dir.path().join("index.json"),
                serde_json::to_vec(&idx).expect("json"),
            )
            .expect("index");
        }
        fn open(&self, opts: &OciLoadOptions) -> Result<OciLayout, ArchiveError> {
            OciLayout::open_dir(self.dir.path(), opts)
        }
        fn tar(&self) -> Vec<u8> {
            let mut b = tar::Builder::new(Vec::new());
            b.append_dir_all(".", self.dir.path()).expect("tar dir");
            b.into_inner().expect("tar")
        }
    }

    fn named(mut d: Descriptor, name: &str) -> Descriptor {
        d.annotations = Some(BTreeMap::from([(REF_NAME.to_string(), name.to_string())]));
        d
    }

    fn amd64() -> OciLoadOptions {
        OciLoadOptions {
            platform: PlatformSpec::parse("linux/amd64").expect("p"),
            name: Some(Reference::parse_no_default_tag("busybox").expect("r")),
        }
    }

    #[test]
    fn reads_tagged_images_from_dir_and_tar() {
        let l = Layout::new();
        let (d, diff) = l.image("amd64", b"one", true);
        l.index(vec![named(d, "1.36")]);
        let layout = l.open(&amd64()).expect("open");
        assert_eq!(layout.images().len(), 1);
        let img = &layout.images()[0];
        assert_eq!(img.ref_name.as_deref(), Some("1.36"));
        assert_eq!(img.image.references[0].familiar(), "busybox:1.36");
        assert_eq!(img.image.diff_ids(), vec![diff.clone()]);
        let mut out = Vec::new();
        layout
            .open_blob(&diff)
            .expect("blob")
            .read_to_end(&mut out)
            .expect("read");

        let tar = l.tar();
        let t =
            OciLayout::read_tar(&tar[..], &std::env::temp_dir(), "l.tar", &amd64()).expect("tar");
        assert_eq!(
            t.images()[0].image.manifest_digest,
            img.image.manifest_digest
        );
        // Without a name, a bare ref name is the image's name, as with `docker load`.
        let anon = OciLoadOptions {
            name: None,
            ..amd64()
        };
        let t = l.open(&anon).expect("open");
        let names: Vec<String> = t.images()[0]
            .image
            .references
            .iter()
            .map(Reference::familiar)
            .collect();
        assert_eq!(names, vec!["1.36:latest".to_string()]);
        assert_eq!(t.images()[0].ref_name.as_deref(), Some("1.36"));
    }

    #[test]
    fn a_bare_ref_name_without_a_given_name_loads_under_that_name() {
        let l = Layout::new();
        let (d, _) = l.image("amd64", b"one", true);
        l.index(vec![named(d.clone(), "fromoa")]);
        let anon = OciLoadOptions {
            name: None,
            ..amd64()
        };
        let t = l.open(&anon).expect("open");
        let reference = &t.images()[0].image.references[0];
        assert_eq!(reference.familiar(), "fromoa:latest");
        assert_eq!(reference.to_string(), "docker.io/library/fromoa:latest");
        // Not a valid image name (upper case): loaded untagged, not refused.
        let l = Layout::new();
        let (d, _) = l.image("amd64", b"two", true);
        l.index(vec![named(d, "NotAName")]);
        let t = l.open(&anon).expect("open");
        assert!(t.images()[0].image.references.is_empty());
    }

    #[test]
    fn one_manifest_under_two_names_is_one_image() {
        let l = Layout::new();
        let (d, _) = l.image("amd64", b"one", true);
        l.index(vec![named(d.clone(), "1"), named(d, "latest")]);
        let layout = l.open(&amd64()).expect("open");
        assert_eq!(layout.images().len(), 1);
        let names: Vec<String> = layout.images()[0]
            .image
            .references
            .iter()
            .map(Reference::familiar)
            .collect();
        assert_eq!(names, ["busybox:1", "busybox:latest"]);
    }

    #[test]
    fn full_names_in_annotations() {
        let l = Layout::new();
        let (d1, _) = l.image("amd64", b"a", true);
        let (d2, _) = l.image("amd64", b"b", true);
        let mut d2 = named(d2, "ignored");
        d2.annotations.as_mut().expect("ann").insert(
            CONTAINERD_NAME.to_string(),
            "docker.io/library/app:2".to_string(),
        );
        l.index(vec![named(d1, "127.0.0.1:5000/x/y:t"), d2]);
        let layout = l.open(&OciLoadOptions::default()).expect("open");
        let names: Vec<String> = layout
            .images()
            .iter()
            .map(|i| i.image.references[0].familiar())
            .collect();
        assert_eq!(names, ["127.0.0.1:5000/x/y:t", "app:2"]);
    }

    #[test]
    fn selects_platform_and_ignores_unselected_blobs() {
        let l = Layout::new();
        let (amd, amd_diff) = l.image("amd64", b"amd", true);
        // The arm64 manifest's blobs are absent: they must never be read on amd64.
        let (arm, _) = l.image("arm64", b"arm", false);
        let idx = serde_json::to_vec(&Index {
            schema_version: 2,
            media_type: Some(media::OCI_INDEX.to_string()),
            manifests: vec![arm.clone(), amd.clone()],
            annotations: None,
        })
        .expect("json");
        let idx_d = l.blob(&idx);
        l.index(vec![named(
            Descriptor::new(media::OCI_INDEX, idx_d, idx.len() as u64),
            "multi",
        )]);
        let layout = l.open(&amd64()).expect("nested index");
        assert_eq!(layout.images()[0].image.diff_ids(), vec![amd_diff.clone()]);
        assert_eq!(layout.images()[0].image.platform.to_string(), "linux/amd64");
        let arm_opts = OciLoadOptions {
            platform: PlatformSpec::parse("linux/arm64").expect("p"),
            ..amd64()
        };
        assert!(matches!(
            l.open(&arm_opts),
            Err(ArchiveError::MissingFile { .. })
        ));
        let s390 = OciLoadOptions {
            platform: PlatformSpec::parse("linux/s390x").expect("p"),
            ..amd64()
        };
        assert!(matches!(
            l.open(&s390),
            Err(ArchiveError::Manifest { source, .. })
                if matches!(*source, ManifestError::NoMatchingPlatform { .. })
        ));
        // Same thing with platform entries directly in index.json under one name.
        l.index(vec![named(arm, "multi"), named(amd, "multi")]);
        let layout = l.open(&amd64()).expect("top-level platforms");
        assert_eq!(layout.images().len(), 1);
        assert_eq!(layout.images()[0].image.diff_ids(), vec![amd_diff]);
    }

    #[test]
    fn corrupt_blob_is_an_error() {
        let l = Layout::new();
        let (d, diff) = l.image("amd64", b"one", true);
        l.index(vec![named(d, "x")]);
        let mut bytes = std::fs::read(l.path(&diff)).expect("read");
        bytes[0] ^= 1;
        std::fs::write(l.path(&diff), &bytes).expect("write");
        let err = l.open(&amd64()).expect_err("digest");
        assert!(matches!(err, ArchiveError::Digest { .. }), "{err}");
        assert!(err.to_string().contains("layer 1 of busybox:x"), "{err}");
        let tar = l.tar();
        let err = OciLayout::read_tar(&tar[..], &std::env::temp_dir(), "l.tar", &amd64())
            .expect_err("tar digest");
        assert!(matches!(err, ArchiveError::Digest { .. }), "{err}");
        // Truncated.
        std::fs::write(l.path(&diff), &bytes[..10]).expect("write");
        let err = l.open(&amd64()).expect_err("size");
        assert!(err.to_string().contains("size mismatch"), "{err}");
    }

    #[test]
    fn missing_pieces() {
        let l = Layout::new();
        let (d, diff) = l.image("amd64", b"one", true);
        l.index(vec![named(d, "x")]);
        std::fs::remove_file(l.path(&diff)).expect("rm");
        assert!(matches!(
            l.open(&amd64()),
            Err(ArchiveError::MissingFile { .. })
        ));
        std::fs::remove_file(l.dir.path().join("index.json")).expect("rm");
        assert!(matches!(
            l.open(&amd64()),
            Err(ArchiveError::MissingFile { .. })
        ));
        std::fs::write(l.dir.path().join("index.json"), b"{").expect("w");
        assert!(matches!(
            l.open(&amd64()),
            Err(ArchiveError::Manifest { .. })
        ));
        std::fs::write(
            l.dir.path().join("oci-layout"),
            br#"{"imageLayoutVersion":"2.0.0"}"#,
        )
        .expect("w");
        assert!(matches!(
            l.open(&amd64()),
            Err(ArchiveError::Invalid { .. })
        ));
        std::fs::remove_file(l.dir.path().join("oci-layout")).expect("rm");
        assert!(matches!(
            l.open(&amd64()),
            Err(ArchiveError::MissingFile { .. })
        ));
    }

    #[test]
    fn symlinked_blob_is_refused() {
        let l = Layout::new();
        let (d, diff) = l.image("amd64", b"one", true);
        l.index(vec![named(d, "x")]);
        let outside = tempfile::NamedTempFile::new().expect("tmp");
        std::fs::copy(l.path(&diff), outside.path()).expect("copy");
        std::fs::remove_file(l.path(&diff)).expect("rm");
        std::os::unix::fs::symlink(outside.path(), l.path(&diff)).expect("symlink");
        assert!(matches!(
            l.open(&amd64()),
            Err(ArchiveError::UnsafePath { .. })
        ));
    }

    #[test]
    fn extra_files_in_layout_tar() {
        let l = Layout::new();
        let (d, _) = l.image("amd64", b"one", true);
        l.index(vec![named(d, "x")]);
        std::fs::File::create(l.dir.path().join("evil.sh"))
            .and_then(|mut f| f.write_all(b"#!/bin/sh"))
            .expect("w");
        let tar = l.tar();
        assert!(matches!(
            OciLayout::read_tar(&tar[..], &std::env::temp_dir(), "l.tar", &amd64()),
            Err(ArchiveError::ExtraFile { .. })
        ));
    }

    #[test]
    fn foreign_layer_in_layout_is_refused() {
        let l = Layout::new();
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [Digest::sha256_of(b"x")]},
        }))
        .expect("json");
        let cd = l.blob(&config);
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": media::OCI_MANIFEST,
            "config": {"mediaType": media::OCI_CONFIG, "digest": cd, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                        "digest": Digest::sha256_of(b"x"), "size": 1, "urls": ["https://example.invalid/x"]}],
        }))
        .expect("json");
        let md = l.blob(&manifest);
        l.index(vec![named(
            Descriptor::new(media::OCI_MANIFEST, md, manifest.len() as u64),
            "win",
        )]);
        let err = l.open(&amd64()).expect_err("foreign");
        assert!(
            matches!(&err, ArchiveError::Manifest { source, .. }
                if matches!(**source, ManifestError::ForeignLayer { .. })),
            "{err}"
        );
    }
}
