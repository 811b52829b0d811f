//! `berth load`: one entry point for an archive whose format the user did not say —
//! a docker-archive (`docker save`, skopeo, podman) or a tar of an OCI layout. The tar
//! is spooled once and then interpreted: `manifest.json` means docker-archive (docker
//! ≥ 25 archives have both, and the docker view carries their RepoTags), else
//! `index.json` + `oci-layout` means OCI layout.

use super::archive::{ArchiveError, Spool};
use super::digest::{Digest, VerifyingReader};
use super::docker_archive::DockerArchive;
use super::image::ImageToStore;
use super::oci_layout::{OciLayout, OciLoadOptions};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

/// A loaded archive of either format; blobs stay readable until drop.
#[derive(Debug)]
pub enum LoadedArchive {
    /// A docker-archive.
    Docker(DockerArchive),
    /// An OCI image layout.
    Oci(OciLayout),
}

/// Reads a docker-archive or OCI layout tar (optionally gzip-compressed as a whole),
/// spooling under `spool_in`; `opts` applies to OCI layouts (platform, name for tag-only
/// ref names).
pub fn load_archive<R: Read>(
    input: R,
    spool_in: &Path,
    archive: &str,
    opts: &OciLoadOptions,
) -> Result<LoadedArchive, ArchiveError> {
    let spool = Spool::read(input, spool_in, archive)?;
    if spool.entries.contains_key("manifest.json") || spool.entries.contains_key("repositories") {
        return Ok(LoadedArchive::Docker(DockerArchive::from_spool(spool)?));
    }
    if spool.entries.contains_key("index.json") || spool.entries.contains_key("oci-layout") {
        return Ok(LoadedArchive::Oci(OciLayout::from_spool(spool, opts)?));
    }
    Err(ArchiveError::Invalid {
        archive: archive.to_string(),
        path: "(tar)".to_string(),
        reason: "neither a docker-archive (no manifest.json) nor an OCI layout (no index.json)"
            .to_string(),
    })
}

impl LoadedArchive {
    /// The images found.
    pub fn images(&self) -> Vec<&ImageToStore> {
        match self {
            LoadedArchive::Docker(d) => d.images().iter().collect(),
            LoadedArchive::Oci(o) => o.images().iter().map(|i| &i.image).collect(),
        }
    }

    /// Every layer blob the images need (deduplicated) with its size.
    pub fn blobs(&self) -> Vec<(Digest, u64)> {
        match self {
            LoadedArchive::Docker(d) => d.blobs().map(|(d, s)| (d.clone(), s)).collect(),
            LoadedArchive::Oci(o) => o.blobs().map(|(d, s)| (d.clone(), s)).collect(),
        }
    }

    /// Opens a layer blob as a reader that re-verifies digest and size while streaming.
    pub fn open_blob(
        &self,
        digest: &Digest,
    ) -> Result<VerifyingReader<BufReader<File>>, ArchiveError> {
        match self {
            LoadedArchive::Docker(d) => d.open_blob(digest),
            LoadedArchive::Oci(o) => o.open_blob(digest),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::import::{import_rootfs, ImportOptions};
    use crate::formats::reference::Reference;
    use std::io;

    fn one_image_archive() -> (Vec<u8>, Digest) {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o644);
        b.append_data(&mut h, "hi", &b"hi"[..]).expect("tar");
        let rootfs = b.into_inner().expect("tar");
        let img = import_rootfs(
            &rootfs[..],
            Some(Reference::parse("hi:1").expect("ref")),
            &ImportOptions::default(),
            &std::env::temp_dir(),
        )
        .expect("import");
        let mut opener =
            |_: &Digest| -> io::Result<Box<dyn Read>> { Ok(Box::new(img.open_layer()?)) };
        let out = crate::formats::docker_archive::write_docker_archive(
            Vec::new(),
            &[&img.image],
            &mut opener,
            &std::env::temp_dir(),
        )
        .expect("save");
        (out, img.image.config_digest.clone())
    }

    #[test]
    fn detects_docker_archive() {
        let (tar, config) = one_image_archive();
        let l = load_archive(
            &tar[..],
            &std::env::temp_dir(),
            "a.tar",
            &OciLoadOptions::default(),
        )
        .expect("load");
        assert!(matches!(l, LoadedArchive::Docker(_)));
        assert_eq!(l.images()[0].config_digest, config);
        let (d, _) = l.blobs()[0].clone();
        io::copy(&mut l.open_blob(&d).expect("blob"), &mut io::sink()).expect("verified");
    }

    #[test]
    fn detects_oci_layout_and_rejects_other_tars() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(
            dir.path().join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .expect("w");
        std::fs::write(
            dir.path().join("index.json"),
            br#"{"schemaVersion":2,"manifests":[]}"#,
        )
        .expect("w");
        let mut b = tar::Builder::new(Vec::new());
        b.append_dir_all(".", dir.path()).expect("tar");
        let tar = b.into_inner().expect("tar");
        let l = load_archive(
            &tar[..],
            &std::env::temp_dir(),
            "o.tar",
            &OciLoadOptions::default(),
        )
        .expect("empty layout loads");
        assert!(matches!(l, LoadedArchive::Oci(_)));
        assert!(l.images().is_empty());

        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        b.append_data(&mut h, "etc/passwd", &b"x"[..]).expect("tar");
        let tar = b.into_inner().expect("tar");
        let err = load_archive(
            &tar[..],
            &std::env::temp_dir(),
            "r.tar",
            &OciLoadOptions::default(),
        )
        .expect_err("a rootfs is not an image archive");
        assert!(err.to_string().contains("neither"), "{err}");
    }
}
