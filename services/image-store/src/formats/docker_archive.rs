//! `docker save` tarballs ("docker-archive"): reading (docker ≤ 24 layout, docker ≥ 25
//! OCI-flavoured layout, skopeo/podman output with legacy symlinked layer dirs) and
//! writing archives that `docker load`, `podman load` and `skopeo copy docker-archive:`
//! accept.
//!
//! Reading spools the tar once to a temp dir (see [`super::archive`] for why) and then
//! checks every reference in `manifest.json`: paths must stay inside the archive, every
//! referenced file must exist, every file must be referenced (or be known legacy
//! metadata), each layer's diff_id must match the config, and a config or blob named by
//! its digest must have that digest.

use super::archive::{
    decompress, normalize_path, open_verified, uncompressed_digest, ArchiveError, Spool, SpoolEntry,
};
use super::digest::{Digest, DigestingWriter, VerifyingReader};
use super::image::{ImageToStore, LayerToStore};
use super::manifest::{self, media, oci_layer_media_type, Compression, ManifestError};
use super::reference::Reference;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

/// Largest `manifest.json` / `repositories` / `index.json` accepted.
const MAX_METADATA: u64 = 4 * 1024 * 1024;

/// One entry of `manifest.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ArchiveManifestEntry {
    /// Path of the config JSON inside the archive.
    pub config: String,
    /// `name:tag` references (Docker writes `null` for an untagged image).
    #[serde(default)]
    pub repo_tags: Option<Vec<String>>,
    /// Paths of the layer tars, base first.
    pub layers: Vec<String>,
    /// Foreign layers not included in the archive (diff_id → descriptor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_sources: Option<BTreeMap<String, serde_json::Value>>,
}

/// A docker-archive read and verified; blobs are served from the spool until drop.
#[derive(Debug)]
pub struct DockerArchive {
    spool: Spool,
    images: Vec<ImageToStore>,
    blobs: BTreeMap<Digest, (PathBuf, u64)>,
}

impl DockerArchive {
    /// Reads a docker-archive (optionally gzip-compressed as a whole) from a stream,
    /// spooling it under `spool_in`. `archive` names it in errors (e.g. the file name).
    pub fn read<R: Read>(input: R, spool_in: &Path, archive: &str) -> Result<Self, ArchiveError> {
        let spool = Spool::read(input, spool_in, archive)?;
        Self::from_spool(spool)
    }

    /// Interprets an already spooled tar as a docker-archive.
    pub fn from_spool(spool: Spool) -> Result<Self, ArchiveError> {
        let archive = spool.archive.clone();
        if !spool.entries.contains_key("manifest.json")
            && spool.entries.contains_key("repositories")
        {
            return Err(ArchiveError::Invalid {
                archive,
                path: "repositories".to_string(),
                reason: "legacy archive without manifest.json (docker < 1.10) is not supported"
                    .to_string(),
            });
        }
        let raw = spool.read_small("manifest.json", "the docker-archive format", MAX_METADATA)?;
        let entries: Vec<ArchiveManifestEntry> =
            serde_json::from_slice(&raw).map_err(|source| ArchiveError::Json {
                archive: archive.clone(),
                path: "manifest.json".to_string(),
                source,
            })?;
        if entries.is_empty() {
            return Err(ArchiveError::Invalid {
                archive,
                path: "manifest.json".to_string(),
                reason: "lists no images".to_string(),
            });
        }
        let mut used: BTreeSet<String> = BTreeSet::from(["manifest.json".to_string()]);
        let mut diff_id_cache: BTreeMap<String, (Digest, u64)> = BTreeMap::new();
        let mut images = Vec::new();
        let mut blobs = BTreeMap::new();
        let mut top_layers = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let (img, top) = load_entry(&spool, i, e, &mut used, &mut diff_id_cache, &mut blobs)?;
            images.push(img);
            top_layers.push(top);
        }
        if spool.entries.contains_key("repositories") {
            apply_repositories(&spool, &mut images, &top_layers)?;
            used.insert("repositories".to_string());
        }
        check_extra_files(&spool, &used)?;
        Ok(DockerArchive {
            spool,
            images,
            blobs,
        })
    }

    /// The images found, in `manifest.json` order.
    pub fn images(&self) -> &[ImageToStore] {
        &self.images
    }

    /// Every layer blob (deduplicated) with its size.
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
                archive: self.spool.archive.clone(),
                digest: digest.clone(),
            })?;
        open_verified(
            &self.spool.archive,
            file,
            digest,
            *size,
            format!("blob {digest}"),
        )
    }
}

/// The stem of a path's last component if it is a sha256 hex (`<hex>.json`,
/// `<hex>.tar`, `blobs/sha256/<hex>`): such names promise that digest.
fn promised_hex(path: &str) -> Option<&str> {
    let last = path.rsplit('/').next()?;
    let stem = last
        .strip_suffix(".json")
        .or_else(|| last.strip_suffix(".tar"))
        .unwrap_or(last);
    (stem.len() == 64 && stem.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')))
        .then_some(stem)
}

fn check_name(archive: &str, path: &str, digest: &Digest, what: &str) -> Result<(), ArchiveError> {
    if let Some(hex) = promised_hex(path) {
        if hex != digest.hex() {
            let expected =
                Digest::new(digest.algorithm(), hex).map_err(|source| ArchiveError::Digest {
                    archive: archive.to_string(),
                    path: path.to_string(),
                    source: Box::new(source),
                })?;
            return Err(ArchiveError::Digest {
                archive: archive.to_string(),
                path: path.to_string(),
                source: Box::new(super::digest::DigestError::Mismatch {
                    subject: what.to_string(),
                    expected,
                    actual: digest.clone(),
                }),
            });
        }
    }
    Ok(())
}

fn unsafe_path(archive: &str, path: &str, reason: String) -> ArchiveError {
    ArchiveError::UnsafePath {
        archive: archive.to_string(),
        path: path.to_string(),
        reason,
    }
}

/// Loads one `manifest.json` entry; returns the image and its top layer's resolved path.
fn load_entry(
    spool: &Spool,
    i: usize,
    e: &ArchiveManifestEntry,
    used: &mut BTreeSet<String>,
    diff_id_cache: &mut BTreeMap<String, (Digest, u64)>,
    blobs: &mut BTreeMap<Digest, (PathBuf, u64)>,
) -> Result<(ImageToStore, Option<String>), ArchiveError> {
    let archive = spool.archive.as_str();
    let refs = e
        .repo_tags
        .iter()
        .flatten()
        .map(|t| Reference::parse(t))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| ArchiveError::Reference {
            archive: archive.to_string(),
            source,
        })?;
    let image = refs
        .first()
        .map(Reference::familiar)
        .unwrap_or_else(|| format!("image #{} ({})", i + 1, e.config));
    if e.layer_sources.as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(ArchiveError::Invalid {
            archive: archive.to_string(),
            path: "manifest.json".to_string(),
            reason: format!(
                "{image} has foreign layers (LayerSources); berth does not fetch such layers"
            ),
        });
    }
    let referrer = format!("manifest.json entry for {image}");
    // Paths in manifest.json are relative to the archive root and must stay inside.
    let config_path =
        normalize_path("", &e.config).map_err(|r| unsafe_path(archive, &e.config, r))?;
    let (resolved, entry) = spool.resolve(&config_path, &referrer)?;
    let SpoolEntry::File { digest, .. } = entry else {
        unreachable!("resolve returns files only")
    };
    let config_digest = digest.clone();
    used.insert(config_path.clone());
    used.insert(resolved.clone());
    check_name(
        archive,
        &config_path,
        &config_digest,
        &format!("config of {image}"),
    )?;
    let config_bytes =
        spool.read_small(&config_path, &referrer, manifest::MAX_CONFIG_SIZE as u64)?;
    let manifest_err = |source: ManifestError| ArchiveError::Manifest {
        archive: archive.to_string(),
        source: Box::new(source),
    };
    let config = manifest::parse_config(&config_bytes, &image).map_err(manifest_err)?;
    let diff_ids = manifest::diff_ids(&config, &image).map_err(manifest_err)?;
    if diff_ids.len() != e.layers.len() {
        return Err(manifest_err(ManifestError::Inconsistent {
            image: image.clone(),
            reason: format!(
                "manifest.json lists {} layers but the config has {} diff_ids",
                e.layers.len(),
                diff_ids.len()
            ),
        }));
    }
    let mut layers = Vec::with_capacity(e.layers.len());
    let mut top = None;
    for (j, (layer_path, want_diff_id)) in e.layers.iter().zip(&diff_ids).enumerate() {
        let path =
            normalize_path("", layer_path).map_err(|r| unsafe_path(archive, layer_path, r))?;
        let (resolved, entry) = spool.resolve(&path, &referrer)?;
        let SpoolEntry::File {
            file,
            digest,
            size,
            compression,
        } = entry
        else {
            unreachable!("resolve returns files only")
        };
        used.insert(path.clone());
        used.insert(resolved.clone());
        let what = format!("layer {} of {image}", j + 1);
        check_name(archive, &path, digest, &what)?;
        let (diff_id, uncompressed_size) = match compression {
            Compression::None => (digest.clone(), *size),
            Compression::Gzip | Compression::Zstd => match diff_id_cache.get(&resolved) {
                Some(d) => d.clone(),
                None => {
                    let d = uncompressed_digest(file, *compression)
                        .map_err(|e| ArchiveError::io(archive, &resolved, e))?;
                    diff_id_cache.insert(resolved.clone(), d.clone());
                    d
                }
            },
        };
        if &diff_id != want_diff_id {
            return Err(ArchiveError::Digest {
                archive: archive.to_string(),
                path: resolved,
                source: Box::new(super::digest::DigestError::Mismatch {
                    subject: format!("{what} (diff_id from the config)"),
                    expected: want_diff_id.clone(),
                    actual: diff_id,
                }),
            });
        }
        blobs.insert(digest.clone(), (file.clone(), *size));
        layers.push(LayerToStore {
            digest: digest.clone(),
            size: *size,
            media_type: oci_layer_media_type(*compression).to_string(),
            diff_id,
            uncompressed_size: Some(uncompressed_size),
        });
        top = Some(resolved);
    }
    let built = ImageToStore::build(config_bytes, media::OCI_CONFIG, layers, refs, &image)
        .map_err(manifest_err)?;
    debug_assert_eq!(built.config_digest, config_digest);
    Ok((built, top))
}

/// Adds tags from the legacy `repositories` file (`{"repo": {"tag": "<legacy layer id>"}}`)
/// to the image whose top layer `<id>/layer.tar` resolves to.
fn apply_repositories(
    spool: &Spool,
    images: &mut [ImageToStore],
    top_layers: &[Option<String>],
) -> Result<(), ArchiveError> {
    let archive = spool.archive.as_str();
    let raw = spool.read_small("repositories", "the docker-archive format", MAX_METADATA)?;
    let repos: BTreeMap<String, BTreeMap<String, String>> =
        serde_json::from_slice(&raw).map_err(|source| ArchiveError::Json {
            archive: archive.to_string(),
            path: "repositories".to_string(),
            source,
        })?;
    for (repo, tags) in repos {
        for (tag, id) in tags {
            let Ok((resolved, _)) = spool.resolve(&format!("{id}/layer.tar"), "repositories")
            else {
                // Docker ignores `repositories` when manifest.json exists; so do we for ids it can't place.
                continue;
            };
            let Some(idx) = top_layers
                .iter()
                .position(|t| t.as_deref() == Some(resolved.as_str()))
            else {
                continue;
            };
            let r = Reference::parse(&format!("{repo}:{tag}")).map_err(|source| {
                ArchiveError::Reference {
                    archive: archive.to_string(),
                    source,
                }
            })?;
            if !images[idx].references.contains(&r) {
                images[idx].references.push(r);
            }
        }
    }
    Ok(())
}

/// Every file must be referenced, or be known metadata: legacy per-layer dirs
/// (`<id>/layer.tar` pointing at a used layer, with `<id>/json`, `<id>/VERSION`) and,
/// in docker ≥ 25 archives, `index.json`, `oci-layout` and the blobs index.json reaches.
fn check_extra_files(spool: &Spool, used: &BTreeSet<String>) -> Result<(), ArchiveError> {
    let archive = spool.archive.as_str();
    let mut legacy_dirs = BTreeSet::new();
    for path in spool.entries.keys() {
        if let Some(dir) = path.strip_suffix("/layer.tar") {
            if let Ok((resolved, _)) = spool.resolve(path, "legacy layer dir") {
                if used.contains(&resolved) {
                    legacy_dirs.insert(dir.to_string());
                }
            }
        }
    }
    let reachable = if spool.entries.contains_key("index.json") {
        oci_reachable(spool)?
    } else {
        BTreeSet::new()
    };
    for (path, entry) in &spool.entries {
        if matches!(entry, SpoolEntry::Dir) || used.contains(path) || reachable.contains(path) {
            continue;
        }
        let legacy = match path.rsplit_once('/') {
            Some((dir, "layer.tar" | "json" | "VERSION")) => legacy_dirs.contains(dir),
            _ => false,
        };
        let oci_meta = (path == "index.json" || path == "oci-layout") && !reachable.is_empty();
        if !legacy && !oci_meta {
            return Err(ArchiveError::ExtraFile {
                archive: archive.to_string(),
                path: path.clone(),
            });
        }
    }
    Ok(())
}

/// Blob paths reachable from a docker ≥ 25 archive's `index.json` (manifests, configs, layers).
fn oci_reachable(spool: &Spool) -> Result<BTreeSet<String>, ArchiveError> {
    let archive = spool.archive.as_str();
    let mut out = BTreeSet::from(["index.json".to_string()]);
    let raw = spool.read_small("index.json", "the OCI layout", MAX_METADATA)?;
    let index: manifest::Index =
        serde_json::from_slice(&raw).map_err(|source| ArchiveError::Json {
            archive: archive.to_string(),
            path: "index.json".to_string(),
            source,
        })?;
    let mut todo: Vec<manifest::Descriptor> = index.manifests;
    let mut seen = 0usize;
    while let Some(d) = todo.pop() {
        seen += 1;
        if seen > 10_000 {
            break;
        }
        let path = format!("blobs/{}/{}", d.digest.algorithm().name(), d.digest.hex());
        if !out.insert(path.clone()) || !spool.entries.contains_key(&path) {
            continue;
        }
        let is_manifest = matches!(
            d.media_type.as_str(),
            media::OCI_MANIFEST
                | media::DOCKER_MANIFEST
                | media::OCI_INDEX
                | media::DOCKER_MANIFEST_LIST
        );
        if !is_manifest {
            continue;
        }
        let bytes = spool.read_small(&path, "index.json", manifest::MAX_MANIFEST_SIZE as u64)?;
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) {
            for key in ["manifests", "layers"] {
                if let Some(list) = v.get(key).and_then(|l| l.as_array()) {
                    todo.extend(
                        list.iter()
                            .filter_map(|x| serde_json::from_value(x.clone()).ok()),
                    );
                }
            }
            if let Some(c) = v
                .get("config")
                .and_then(|c| serde_json::from_value(c.clone()).ok())
            {
                todo.push(c);
            }
        }
    }
    Ok(out)
}

/// Opens a blob by digest for [`write_docker_archive`]; the writer verifies what it reads.
pub type BlobOpener<'a> = dyn FnMut(&Digest) -> io::Result<Box<dyn Read>> + 'a;

/// Writes a docker-archive of `images` to `out`, in the layout skopeo writes
/// (`<config hex>.json`, `<diff_id hex>.tar`, `manifest.json`). Layers are stored
/// uncompressed, as `docker save` does: gzip/zstd layers are decompressed through a temp file
/// under `spool_in` (the tar header needs the size first). Every blob is verified
/// against its digest and size (and diff_id) while copied; on error the output is
/// incomplete and the caller should discard it. Shared layers are written once.
pub fn write_docker_archive<W: Write>(
    out: W,
    images: &[&ImageToStore],
    open_blob: &mut BlobOpener<'_>,
    spool_in: &Path,
) -> Result<W, ArchiveError> {
    let archive = "docker-archive (save)";
    let io_err = |path: &str, e: io::Error| ArchiveError::io(archive, path, e);
    let tmp = tempfile::Builder::new()
        .prefix("berth-save-")
        .tempdir_in(spool_in)
        .map_err(|e| io_err(&spool_in.display().to_string(), e))?;
    let mut tar = tar::Builder::new(out);
    let mut written = BTreeSet::new();
    let mut entries = Vec::new();
    for img in images {
        let name = img.name();
        let config_path = format!("{}.json", img.config_digest.hex());
        if written.insert(config_path.clone()) {
            img.config_digest
                .verify_bytes(&img.config_bytes, &format!("config of {name}"))
                .map_err(|source| ArchiveError::Digest {
                    archive: archive.to_string(),
                    path: config_path.clone(),
                    source: Box::new(source),
                })?;
            append(
                &mut tar,
                &config_path,
                img.config_bytes.len() as u64,
                &img.config_bytes[..],
            )
            .map_err(|e| io_err(&config_path, e))?;
        }
        let mut layer_paths = Vec::new();
        for (j, layer) in img.layers.iter().enumerate() {
            let path = format!("{}.tar", layer.diff_id.hex());
            layer_paths.push(path.clone());
            if !written.insert(path.clone()) {
                continue;
            }
            let subject = format!("layer {} ({}) of {name}", j + 1, layer.digest);
            let compression = manifest::layer_compression(&layer.media_type, &name, &layer.digest)
                .map_err(|source| ArchiveError::Manifest {
                    archive: archive.to_string(),
                    source: Box::new(source),
                })?;
            let src = open_blob(&layer.digest).map_err(|e| io_err(&subject, e))?;
            let verified =
                VerifyingReader::new(src, layer.digest.clone(), Some(layer.size), subject.clone());
            match compression {
                Compression::None => {
                    if layer.digest != layer.diff_id {
                        return Err(ArchiveError::Invalid {
                            archive: archive.to_string(),
                            path,
                            reason: format!(
                                "{subject} is uncompressed but its digest differs from its diff_id"
                            ),
                        });
                    }
                    append(&mut tar, &path, layer.size, verified)
                        .map_err(|e| io_err(&subject, e))?;
                }
                Compression::Gzip | Compression::Zstd => {
                    let tmp_path = tmp.path().join("layer");
                    let size =
                        decompress_to(compression, verified, &tmp_path, &layer.diff_id, &subject)
                            .map_err(|e| io_err(&subject, e))?;
                    let f = File::open(&tmp_path).map_err(|e| io_err(&subject, e))?;
                    append(&mut tar, &path, size, BufReader::new(f))
                        .map_err(|e| io_err(&subject, e))?;
                }
            }
        }
        let tags: Vec<String> = img
            .references
            .iter()
            .filter(|r| r.tag().is_some())
            .map(|r| r.without_digest().familiar())
            .collect();
        entries.push(ArchiveManifestEntry {
            config: config_path,
            repo_tags: (!tags.is_empty()).then_some(tags),
            layers: layer_paths,
            layer_sources: None,
        });
    }
    let manifest_json = serde_json::to_vec(&entries).map_err(|source| ArchiveError::Json {
        archive: archive.to_string(),
        path: "manifest.json".to_string(),
        source,
    })?;
    append(
        &mut tar,
        "manifest.json",
        manifest_json.len() as u64,
        &manifest_json[..],
    )
    .map_err(|e| io_err("manifest.json", e))?;
    tar.into_inner().map_err(|e| io_err("(finish)", e))
}

fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    size: u64,
    data: impl Read,
) -> io::Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, path, data)
}

/// Decompresses `src` to `dest`, checking the result's sha256 against `diff_id`.
fn decompress_to(
    c: Compression,
    src: impl Read,
    dest: &Path,
    diff_id: &Digest,
    subject: &str,
) -> io::Result<u64> {
    let mut gz = decompress(c, src)?;
    let f = File::create(dest)?;
    let mut w = DigestingWriter::new(io::BufWriter::new(f));
    io::copy(&mut gz, &mut w)?;
    let size = w.written();
    let buf = w
        .finish_verified(diff_id, None, &format!("{subject} (uncompressed, diff_id)"))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    // Scratch file: flushed, not fsynced.
    buf.into_inner().map_err(|e| e.into_error())?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::archive::SpoolEntry;
    use serde_json::json;

    /// A tiny layer tar with one file.
    fn layer_tar(name: &str, content: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(content.len() as u64);
        h.set_mode(0o755);
        b.append_data(&mut h, name, content).expect("append");
        b.into_inner().expect("tar")
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).expect("gz");
        e.finish().expect("gz")
    }

    fn config(diff_ids: &[&Digest]) -> Vec<u8> {
        let hist: Vec<serde_json::Value> = diff_ids
            .iter()
            .map(|_| json!({"created_by": "test"}))
            .collect();
        serde_json::to_vec(&json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": hist,
        }))
        .expect("json")
    }

    #[derive(Default)]
    struct Tb {
        files: Vec<(String, Vec<u8>)>,
        links: Vec<(String, String)>,
    }

    impl Tb {
        fn file(mut self, p: &str, d: &[u8]) -> Self {
            self.files.push((p.to_string(), d.to_vec()));
            self
        }
        fn symlink(mut self, p: &str, t: &str) -> Self {
            self.links.push((p.to_string(), t.to_string()));
            self
        }
        fn build(self) -> Vec<u8> {
            let mut b = tar::Builder::new(Vec::new());
            for (p, d) in &self.files {
                let mut h = tar::Header::new_gnu();
                h.set_size(d.len() as u64);
                h.set_mode(0o644);
                b.append_data(&mut h, p, &d[..]).expect("file");
            }
            for (p, t) in &self.links {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, p, t).expect("link");
            }
            b.into_inner().expect("tar")
        }
    }

    /// Classic `docker save` (≤ 24): `<id>/layer.tar`, `<id>/json`, `<id>/VERSION`,
    /// `<hex>.json`, manifest.json, repositories. Two images share the base layer.
    fn classic() -> (Vec<u8>, Digest, Digest) {
        let l1 = layer_tar("bin/a", b"aaaa");
        let l2 = layer_tar("bin/b", b"bbbb");
        let d1 = Digest::sha256_of(&l1);
        let d2 = Digest::sha256_of(&l2);
        let c1 = config(&[&d1]);
        let c2 = config(&[&d1, &d2]);
        let c1n = format!("{}.json", Digest::sha256_of(&c1).hex());
        let c2n = format!("{}.json", Digest::sha256_of(&c2).hex());
        let manifest = json!([
            {"Config": c1n, "RepoTags": ["base:1", "base:latest"], "Layers": ["id1/layer.tar"]},
            {"Config": c2n, "RepoTags": null, "Layers": ["id1/layer.tar", "id2/layer.tar"]},
        ]);
        let repos = json!({"app": {"v2": "id2"}, "base": {"1": "id1"}});
        let tar = Tb::default()
            .file("id1/layer.tar", &l1)
            .file("id1/json", b"{}")
            .file("id1/VERSION", b"1.0")
            .file("id2/layer.tar", &l2)
            .file("id2/json", b"{}")
            .file("id2/VERSION", b"1.0")
            .file(&c1n, &c1)
            .file(&c2n, &c2)
            .file(
                "manifest.json",
                &serde_json::to_vec(&manifest).expect("json"),
            )
            .file("repositories", &serde_json::to_vec(&repos).expect("json"))
            .build();
        (tar, d1, d2)
    }

    fn read(bytes: &[u8]) -> Result<DockerArchive, ArchiveError> {
        let tmp = std::env::temp_dir();
        DockerArchive::read(bytes, &tmp, "test.tar")
    }

    #[test]
    fn reads_classic_docker_save_with_shared_layers() {
        let (tar, d1, d2) = classic();
        let a = read(&tar).expect("loads");
        assert_eq!(a.images().len(), 2);
        let tags: Vec<String> = a.images()[0]
            .references
            .iter()
            .map(Reference::familiar)
            .collect();
        assert_eq!(tags, ["base:1", "base:latest"]);
        // The untagged image gets its tag from the legacy `repositories` file.
        let tags: Vec<String> = a.images()[1]
            .references
            .iter()
            .map(Reference::familiar)
            .collect();
        assert_eq!(tags, ["app:v2"]);
        assert_eq!(a.images()[1].diff_ids(), vec![d1.clone(), d2.clone()]);
        assert_eq!(a.blobs().count(), 2, "shared base layer is one blob");
        let mut out = Vec::new();
        a.open_blob(&d2)
            .expect("blob")
            .read_to_end(&mut out)
            .expect("verified");
        assert_eq!(Digest::sha256_of(&out), d2);
        assert!(matches!(
            a.open_blob(&Digest::sha256_of(b"nope")),
            Err(ArchiveError::NoSuchBlob { .. })
        ));
    }

    #[test]
    fn reads_whole_archive_gzip_and_gzip_layers() {
        let l1 = layer_tar("x", b"x");
        let gl1 = gz(&l1);
        let diff = Digest::sha256_of(&l1);
        let c = config(&[&diff]);
        let cn = format!("{}.json", Digest::sha256_of(&c).hex());
        let m = json!([{"Config": cn, "RepoTags": ["gz:1"], "Layers": ["l.tar.gz"]}]);
        let tar = Tb::default()
            .file("l.tar.gz", &gl1)
            .file(&cn, &c)
            .file("manifest.json", &serde_json::to_vec(&m).expect("json"))
            .build();
        let a = read(&gz(&tar)).expect("gzip archive with gzip layer");
        let l = &a.images()[0].layers[0];
        assert_eq!(l.media_type, media::OCI_LAYER_GZIP);
        assert_eq!(l.digest, Digest::sha256_of(&gl1));
        assert_eq!(l.diff_id, diff);
    }

    #[test]
    fn zstd_layers_read_and_saved_uncompressed() {
        let l1 = layer_tar("z", b"zzz");
        let z = zstd::encode_all(&l1[..], 3).expect("zstd");
        let diff = Digest::sha256_of(&l1);
        let c = config(&[&diff]);
        let m = json!([{"Config": "c.json", "RepoTags": ["z:1"], "Layers": ["l.tar.zst"]}]);
        let tar = Tb::default()
            .file("l.tar.zst", &z)
            .file("c.json", &c)
            .file("manifest.json", &serde_json::to_vec(&m).expect("json"))
            .build();
        let a = read(&tar).expect("zstd layer");
        let l = &a.images()[0].layers[0];
        assert_eq!(l.media_type, media::OCI_LAYER_ZSTD);
        assert_eq!(l.diff_id, diff);
        assert_eq!(l.uncompressed_size, Some(l1.len() as u64));
        let imgs: Vec<&ImageToStore> = a.images().iter().collect();
        let mut opener = |d: &Digest| -> io::Result<Box<dyn Read>> {
            Ok(Box::new(a.open_blob(d).map_err(io::Error::other)?))
        };
        let out = write_docker_archive(Vec::new(), &imgs, &mut opener, &std::env::temp_dir())
            .expect("save zstd image");
        let back = read(&out).expect("read back");
        assert_eq!(
            back.images()[0].layers[0].digest,
            diff,
            "saved uncompressed"
        );
    }

    #[test]
    fn reads_skopeo_style_symlinked_legacy_dirs() {
        let l1 = layer_tar("x", b"x");
        let d1 = Digest::sha256_of(&l1);
        let c = config(&[&d1]);
        let cn = format!("{}.json", Digest::sha256_of(&c).hex());
        let ln = format!("{}.tar", d1.hex());
        let m = json!([{"Config": cn, "RepoTags": ["s:1"], "Layers": [ln]}]);
        let tar = Tb::default()
            .file(&ln, &l1)
            .file(&cn, &c)
            .file("legacy/json", b"{}")
            .file("legacy/VERSION", b"1.0")
            .file("manifest.json", &serde_json::to_vec(&m).expect("json"))
            .file("repositories", br#"{"s":{"1":"legacy"}}"#)
            .symlink("legacy/layer.tar", &format!("../{ln}"))
            .build();
        let a = read(&tar).expect("skopeo layout");
        assert_eq!(a.images()[0].references.len(), 1);
    }

    /// A docker ≥ 25 `docker save`: an OCI layout plus manifest.json and repositories.
    fn docker25(extra_blob: bool) -> (Vec<u8>, Digest) {
        let l1 = layer_tar("bin/a", b"aaaa");
        let d1 = Digest::sha256_of(&l1);
        let c = config(&[&d1]);
        let cd = Digest::sha256_of(&c);
        let m = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": media::OCI_MANIFEST,
            "config": {"mediaType": media::OCI_CONFIG, "digest": cd, "size": c.len()},
            "layers": [{"mediaType": media::OCI_LAYER_TAR, "digest": d1, "size": l1.len()}],
        }))
        .expect("json");
        let md = Digest::sha256_of(&m);
        let index = json!({
            "schemaVersion": 2, "mediaType": media::OCI_INDEX,
            "manifests": [{"mediaType": media::OCI_MANIFEST, "digest": md, "size": m.len(),
                "annotations": {"io.containerd.image.name": "docker.io/library/busybox:latest",
                                "org.opencontainers.image.ref.name": "latest"}}],
        });
        let blob = |d: &Digest| format!("blobs/sha256/{}", d.hex());
        let manifest =
            json!([{"Config": blob(&cd), "RepoTags": ["busybox:latest"], "Layers": [blob(&d1)]}]);
        let mut tb = Tb::default()
            .file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)
            .file("index.json", &serde_json::to_vec(&index).expect("json"))
            .file(&blob(&d1), &l1)
            .file(&blob(&cd), &c)
            .file(&blob(&md), &m)
            .file(
                "manifest.json",
                &serde_json::to_vec(&manifest).expect("json"),
            )
            .file(
                "repositories",
                br#"{"busybox":{"latest":"nothing-legacy"}}"#,
            );
        if extra_blob {
            let junk = b"unreferenced";
            tb = tb.file(&blob(&Digest::sha256_of(junk)), junk);
        }
        (tb.build(), md)
    }

    #[test]
    fn reads_docker25_archive_both_ways() {
        let (tar, md) = docker25(false);
        let a = read(&tar).expect("docker-archive view");
        assert_eq!(a.images()[0].references[0].familiar(), "busybox:latest");
        let opts = crate::formats::oci_layout::OciLoadOptions::default();
        let l = crate::formats::oci_layout::OciLayout::read_tar(
            &tar[..],
            &std::env::temp_dir(),
            "d25.tar",
            &opts,
        )
        .expect("OCI layout view");
        let img = &l.images()[0].image;
        assert_eq!(
            img.manifest_digest, md,
            "layout view keeps docker's manifest"
        );
        assert_eq!(
            img.references[0].to_string(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(img.config_digest, a.images()[0].config_digest);
        let (tar, _) = docker25(true);
        assert!(matches!(read(&tar), Err(ArchiveError::ExtraFile { .. })));
    }

    #[test]
    fn missing_file_is_an_error() {
        let (tar, ..) = classic();
        let tmp = tempfile::tempdir().expect("tmp");
        let mut spool = Spool::read(&tar[..], tmp.path(), "test.tar").expect("spool");
        spool.entries.remove("id2/layer.tar");
        let err = DockerArchive::from_spool(spool).expect_err("missing");
        assert!(
            matches!(&err, ArchiveError::MissingFile { path, .. } if path == "id2/layer.tar"),
            "{err}"
        );
        assert!(err.to_string().contains("test.tar"));
        // No manifest.json at all.
        let tar = Tb::default().file("x", b"1").build();
        assert!(matches!(read(&tar), Err(ArchiveError::MissingFile { .. })));
        // Legacy-only archive.
        let tar = Tb::default().file("repositories", b"{}").build();
        assert!(matches!(read(&tar), Err(ArchiveError::Invalid { .. })));
    }

    #[test]
    fn extra_file_is_an_error() {
        let (tar, ..) = classic();
        let tmp = tempfile::tempdir().expect("tmp");
        let mut spool = Spool::read(&tar[..], tmp.path(), "test.tar").expect("spool");
        spool
            .entries
            .insert("smuggled.bin".to_string(), SpoolEntry::Dir);
        DockerArchive::from_spool(spool).expect("a directory entry alone is harmless");
        let mut tar2 = Tb::default().file("smuggled.bin", b"x").build();
        // Append a second tar stream's entries by rebuilding: simpler to splice files.
        tar2.truncate(tar2.len() - 1024);
        tar2.extend_from_slice(&tar);
        let err = read(&tar2).expect_err("extra");
        assert!(
            matches!(&err, ArchiveError::ExtraFile { path, .. } if path == "smuggled.bin"),
            "{err}"
        );
        // A legacy dir whose layer.tar nothing uses is also extra.
        let mut tar3 = Tb::default().file("id9/json", b"{}").build();
        tar3.truncate(tar3.len() - 1024);
        tar3.extend_from_slice(&tar);
        assert!(matches!(read(&tar3), Err(ArchiveError::ExtraFile { .. })));
    }

    #[test]
    fn manifest_pointing_outside_is_an_error() {
        let l1 = layer_tar("x", b"x");
        let d1 = Digest::sha256_of(&l1);
        let c = config(&[&d1]);
        for (cfg, layer) in [
            ("../../etc/passwd", "l.tar"),
            ("/etc/passwd", "l.tar"),
            ("c.json", "../l.tar"),
            ("c.json", "a/../../l.tar"),
            ("c.json", "/l.tar"),
        ] {
            let m = json!([{"Config": cfg, "RepoTags": ["x:1"], "Layers": [layer]}]);
            let tar = Tb::default()
                .file("l.tar", &l1)
                .file("c.json", &c)
                .file("manifest.json", &serde_json::to_vec(&m).expect("json"))
                .build();
            let err = read(&tar).expect_err("escape");
            assert!(
                matches!(err, ArchiveError::UnsafePath { .. }),
                "{cfg} {layer}: {err}"
            );
        }
        // Through a symlink.
        let m = json!([{"Config": "c.json", "RepoTags": ["x:1"], "Layers": ["link.tar"]}]);
        let tar = Tb::default()
            .file("l.tar", &l1)
            .file("c.json", &c)
            .file("manifest.json", &serde_json::to_vec(&m).expect("json"))
            .symlink("link.tar", "../../../l.tar")
            .build();
        assert!(matches!(read(&tar), Err(ArchiveError::UnsafePath { .. })));
        let tar = Tb::default()
            .file("c.json", &c)
            .file("manifest.json", &serde_json::to_vec(&m).expect("json"))
            .symlink("link.tar", "/etc/passwd")
            .build();
        assert!(matches!(read(&tar), Err(ArchiveError::UnsafePath { .. })));
    }

    #[test]
    fn diff_id_mismatch_is_an_error() {
        let l1 = layer_tar("x", b"x");
        let c = config(&[&Digest::sha256_of(b"something else")]);
        let m = json!([{"Config": "c.json", "RepoTags": ["x:1"], "Layers": ["l.tar"]}]);
        let tar = Tb::default()
            .file("l.tar", &l1)
            .file("c.json", &c)
            .file("manifest.json", &serde_json::to_vec(&m).expect("json"))
            .build();
        let err = read(&tar).expect_err("mismatch");
        let msg = err.to_string();
        assert!(matches!(err, ArchiveError::Digest { .. }));
        assert!(
            msg.contains("layer 1 of x:1") && msg.contains("l.tar"),
            "{msg}"
        );
    }

    #[test]
    fn digest_named_file_with_wrong_content_is_an_error() {
        let l1 = layer_tar("x", b"x");
        let d1 = Digest::sha256_of(&l1);
        let c = config(&[&d1]);
        let wrong = format!("{}.json", Digest::sha256_of(b"not the config").hex());
        let m = json!([{"Config": wrong, "RepoTags": ["x:1"], "Layers": ["l.tar"]}]);
        let tar = Tb::default()
            .file("l.tar", &l1)
            .file(&wrong, &c)
            .file("manifest.json", &serde_json::to_vec(&m).expect("json"))
            .build();
        let err = read(&tar).expect_err("config digest");
        assert!(err.to_string().contains("config of x:1"), "{err}");
    }

    #[test]
    fn malformed_metadata_errors() {
        let tar = Tb::default().file("manifest.json", b"{not json").build();
        assert!(matches!(read(&tar), Err(ArchiveError::Json { .. })));
        let tar = Tb::default().file("manifest.json", b"[]").build();
        assert!(matches!(read(&tar), Err(ArchiveError::Invalid { .. })));
        // Bad RepoTag.
        let l1 = layer_tar("x", b"x");
        let c = config(&[&Digest::sha256_of(&l1)]);
        let m = json!([{"Config": "c.json", "RepoTags": ["Bad Name"], "Layers": ["l.tar"]}]);
        let tar = Tb::default()
            .file("l.tar", &l1)
            .file("c.json", &c)
            .file("manifest.json", &serde_json::to_vec(&m).expect("json"))
            .build();
        assert!(matches!(read(&tar), Err(ArchiveError::Reference { .. })));
        // Layer count differs from diff_ids.
        let m = json!([{"Config": "c.json", "RepoTags": [], "Layers": ["l.tar", "l.tar"]}]);
        let tar = Tb::default()
            .file("l.tar", &l1)
            .file("c.json", &c)
            .file("manifest.json", &serde_json::to_vec(&m).expect("json"))
            .build();
        assert!(matches!(read(&tar), Err(ArchiveError::Manifest { .. })));
        // Malformed config.
        let m = json!([{"Config": "c.json", "RepoTags": [], "Layers": ["l.tar"]}]);
        let tar = Tb::default()
            .file("l.tar", &l1)
            .file("c.json", b"{")
            .file("manifest.json", &serde_json::to_vec(&m).expect("json"))
            .build();
        assert!(matches!(read(&tar), Err(ArchiveError::Manifest { .. })));
        // Foreign layers.
        let m = json!([{"Config": "c.json", "RepoTags": [], "Layers": ["l.tar"], "LayerSources": {"sha256:x": {}}}]);
        let tar = Tb::default()
            .file("l.tar", &l1)
            .file("c.json", &c)
            .file("manifest.json", &serde_json::to_vec(&m).expect("json"))
            .build();
        assert!(read(&tar)
            .expect_err("foreign")
            .to_string()
            .contains("foreign"));
        // Truncated tar.
        let (tar, ..) = classic();
        assert!(read(&tar[..tar.len() / 2]).is_err());
    }

    #[test]
    fn mutated_archives_fail_cleanly() {
        // Truncations and byte flips anywhere must give Ok or a clean error, never a panic,
        // and never an image whose layers don't match its config.
        let (tar, ..) = classic();
        let mut state = 0x2545_f491_u32;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as usize
        };
        for i in 0..120 {
            let mut m = tar.clone();
            if i % 3 == 0 {
                m.truncate(next() % tar.len());
            } else {
                let pos = next() % m.len();
                m[pos] ^= 1 << (next() % 8);
            }
            if let Ok(a) = read(&m) {
                for img in a.images() {
                    for l in &img.layers {
                        let mut r = a.open_blob(&l.digest).expect("listed blob opens");
                        io::copy(&mut r, &mut io::sink()).expect("listed blob verifies");
                    }
                }
            }
        }
    }

    #[test]
    fn write_then_read_round_trip() {
        let (tar, d1, _) = classic();
        let a = read(&tar).expect("loads");
        let imgs: Vec<&ImageToStore> = a.images().iter().collect();
        let mut opener = |d: &Digest| -> io::Result<Box<dyn Read>> {
            let r = a
                .open_blob(d)
                .map_err(|e| io::Error::other(e.to_string()))?;
            Ok(Box::new(r))
        };
        let out = write_docker_archive(Vec::new(), &imgs, &mut opener, &std::env::temp_dir())
            .expect("write");
        let b = read(&out).expect("reads back");
        assert_eq!(b.images().len(), 2);
        for (x, y) in a.images().iter().zip(b.images()) {
            assert_eq!(x.config_digest, y.config_digest);
            assert_eq!(x.diff_ids(), y.diff_ids());
        }
        assert_eq!(b.images()[0].references, a.images()[0].references);
        // Shared layer written once.
        let tmp = tempfile::tempdir().expect("tmp");
        let spool = Spool::read(&out[..], tmp.path(), "out").expect("spool");
        let layer_files = spool.entries.keys().filter(|k| k.ends_with(".tar")).count();
        assert_eq!(layer_files, 2);
        assert!(spool.entries.contains_key(&format!("{}.tar", d1.hex())));
    }

    #[test]
    fn writer_decompresses_gzip_layers_and_verifies_blobs() {
        let l1 = layer_tar("x", b"x");
        let gl1 = gz(&l1);
        let diff = Digest::sha256_of(&l1);
        let gd = Digest::sha256_of(&gl1);
        let img = ImageToStore::build(
            config(&[&diff]),
            media::OCI_CONFIG,
            vec![LayerToStore {
                digest: gd.clone(),
                size: gl1.len() as u64,
                media_type: media::OCI_LAYER_GZIP.to_string(),
                diff_id: diff.clone(),
                uncompressed_size: None,
            }],
            vec![Reference::parse("127.0.0.1:5000/x/y:t").expect("ref")],
            "x",
        )
        .expect("image");
        let good = gl1.clone();
        let mut opener = |_: &Digest| -> io::Result<Box<dyn Read>> {
            Ok(Box::new(io::Cursor::new(good.clone())))
        };
        let out = write_docker_archive(Vec::new(), &[&img], &mut opener, &std::env::temp_dir())
            .expect("write");
        let back = read(&out).expect("read");
        assert_eq!(
            back.images()[0].layers[0].digest,
            diff,
            "stored uncompressed"
        );
        assert_eq!(
            back.images()[0].references[0].familiar(),
            "127.0.0.1:5000/x/y:t"
        );

        let mut bad = gl1.clone();
        let n = bad.len();
        bad[n - 9] ^= 0xff; // corrupt the gzip trailer CRC region
        let mut opener = |_: &Digest| -> io::Result<Box<dyn Read>> {
            Ok(Box::new(io::Cursor::new(bad.clone())))
        };
        let err = write_docker_archive(Vec::new(), &[&img], &mut opener, &std::env::temp_dir())
            .expect_err("corrupt");
        assert!(err.to_string().contains("layer 1"), "{err}");
    }
}
