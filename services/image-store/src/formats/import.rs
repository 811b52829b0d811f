//! `berth import ROOTFS.tar[.gz] NAME:TAG`: a one-layer image from a root filesystem
//! tarball, like `docker import`.
//!
//! A plain tar is gzipped on the way in (one pass: the input is hashed for the diff_id,
//! checked as a tar, and compressed to a spool file that is hashed again for the blob
//! digest). A gzip tar is kept as given (blob digest = the input's), then decompressed
//! once from the spool to compute the diff_id and check it is a tar.

use super::archive::{decompress, open_verified, sniff_compression};
use super::changes::{ChangeError, RunConfig};
use super::digest::{Digest, DigestingWriter, VerifyingReader};
use super::image::{ImageToStore, LayerToStore};
use super::manifest::{media, oci_layer_media_type, Compression, ManifestError, PlatformSpec};
use super::reference::Reference;
use serde_json::json;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

/// Errors of `import`; each names the source tarball.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// Reading the input or writing the spool failed.
    #[error("import of {source_name}: {error}")]
    Io {
        /// The tarball.
        source_name: String,
        /// The error.
        error: io::Error,
    },
    /// The input is not a (gzip-compressed) tar.
    #[error("import of {source_name}: not a valid tar archive: {reason}")]
    NotATar {
        /// The tarball.
        source_name: String,
        /// Details.
        reason: String,
    },
    /// A compression other than gzip.
    #[error("import of {source_name}: {what} input is not supported (use a plain or gzip tar)")]
    Compression {
        /// The tarball.
        source_name: String,
        /// The compression found.
        what: &'static str,
    },
    /// A bad `--change`.
    #[error("import of {source_name}: {source}")]
    Change {
        /// The tarball.
        source_name: String,
        /// Details.
        source: ChangeError,
    },
    /// The config/manifest could not be built (should not happen for valid input).
    #[error("import of {source_name}: {source}")]
    Manifest {
        /// The tarball.
        source_name: String,
        /// Details.
        source: Box<ManifestError>,
    },
}

/// Options of `import`.
#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// `--change` instructions, applied in order.
    pub changes: Vec<String>,
    /// Platform recorded in the config (default: this host).
    pub platform: PlatformSpec,
    /// RFC 3339 creation time (default: now). Fixed values make imports reproducible.
    pub created: Option<String>,
    /// History comment (default: "Imported from SOURCE").
    pub message: Option<String>,
    /// Name of the source for history and errors (a path, or "-" for stdin).
    pub source_name: String,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            changes: Vec::new(),
            platform: PlatformSpec::host(),
            created: None,
            message: None,
            source_name: "-".to_string(),
        }
    }
}

/// An imported image; its one layer blob sits in a spool file until drop.
#[derive(Debug)]
pub struct ImportedImage {
    /// The image to store.
    pub image: ImageToStore,
    layer_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl ImportedImage {
    /// The layer blob (gzip), verified against its digest and size while read.
    pub fn open_layer(&self) -> io::Result<VerifyingReader<BufReader<File>>> {
        let l = &self.image.layers[0];
        open_verified(
            "import",
            &self.layer_file,
            &l.digest,
            l.size,
            format!("layer {}", l.digest),
        )
        .map_err(io::Error::other)
    }
}

/// Imports a root filesystem tarball (plain or gzip) as a one-layer image.
pub fn import_rootfs<R: Read>(
    input: R,
    reference: Option<Reference>,
    opts: &ImportOptions,
    spool_in: &Path,
) -> Result<ImportedImage, ImportError> {
    let src = opts.source_name.as_str();
    let io_err = |error| ImportError::Io {
        source_name: src.to_string(),
        error,
    };
    // Apply changes first: a typo should fail before minutes of compression.
    let mut run = RunConfig::default();
    run.apply_all(&opts.changes)
        .map_err(|source| ImportError::Change {
            source_name: src.to_string(),
            source,
        })?;
    let dir = tempfile::Builder::new()
        .prefix("berth-import-")
        .tempdir_in(spool_in)
        .map_err(io_err)?;
    let layer_file = dir.path().join("layer.tar.gz");
    let mut input = BufReader::with_capacity(256 * 1024, input);
    let head = input.fill_buf().map_err(io_err)?;
    let compression = sniff_compression(head);
    if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        return Err(ImportError::Compression {
            source_name: src.to_string(),
            what: "xz",
        });
    }
    if head.starts_with(b"BZh") {
        return Err(ImportError::Compression {
            source_name: src.to_string(),
            what: "bzip2",
        });
    }
    let (digest, size, (diff_id, uncompressed_size)) = match compression {
        Compression::None => {
            let out = File::create(&layer_file).map_err(io_err)?;
            let compressed = DigestingWriter::new(io::BufWriter::new(out));
            let gz = flate2::write::GzEncoder::new(compressed, flate2::Compression::default());
            let mut tee = Tee {
                inner: input,
                copy: gz,
            };
            let diff_id = hash_and_check_tar(&mut tee, src)?;
            let compressed = tee.copy.finish().map_err(io_err)?;
            let (buf, digest, size) = compressed.finish();
            // Spool file: flushed, not fsynced (scratch; verified again when read).
            buf.into_inner().map_err(|e| io_err(e.into_error()))?;
            (digest, size, diff_id)
        }
        // Compressed input is kept as given; its decompressed stream gives the diff_id.
        Compression::Gzip | Compression::Zstd => {
            let out = File::create(&layer_file).map_err(io_err)?;
            let mut w = DigestingWriter::new(io::BufWriter::new(out));
            io::copy(&mut input, &mut w).map_err(io_err)?;
            let (buf, digest, size) = w.finish();
            // Spool file: flushed, not fsynced (scratch; verified again when read).
            buf.into_inner().map_err(|e| io_err(e.into_error()))?;
            let f = BufReader::new(File::open(&layer_file).map_err(io_err)?);
            let mut plain = decompress(compression, f).map_err(|e| ImportError::NotATar {
                source_name: src.to_string(),
                reason: e.to_string(),
            })?;
            let diff_id = hash_and_check_tar(&mut plain, src)?;
            (digest, size, diff_id)
        }
    };
    let created = match &opts.created {
        Some(c) => c.clone(),
        None => time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_string()),
    };
    let comment = opts
        .message
        .clone()
        .unwrap_or_else(|| format!("Imported from {src}"));
    let mut config = json!({
        "created": created,
        "architecture": opts.platform.architecture,
        "os": opts.platform.os,
        "config": run.to_json(),
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created, "created_by": "berth import", "comment": comment}],
    });
    if let Some(v) = &opts.platform.variant {
        config["variant"] = json!(v);
    }
    let manifest_err = |source| ImportError::Manifest {
        source_name: src.to_string(),
        source: Box::new(source),
    };
    let config_bytes = serde_json::to_vec(&config).map_err(|e| io_err(io::Error::other(e)))?;
    let layer = LayerToStore {
        digest,
        size,
        media_type: oci_layer_media_type(match compression {
            // A plain tar was gzipped on the way in.
            Compression::None => Compression::Gzip,
            c => c,
        })
        .to_string(),
        diff_id,
        uncompressed_size: Some(uncompressed_size),
    };
    let label = reference
        .as_ref()
        .map(Reference::familiar)
        .unwrap_or_else(|| format!("import of {src}"));
    let image = ImageToStore::build(
        config_bytes,
        media::OCI_CONFIG,
        vec![layer],
        reference.into_iter().collect(),
        &label,
    )
    .map_err(manifest_err)?;
    Ok(ImportedImage {
        image,
        layer_file,
        _dir: dir,
    })
}

/// A reader that copies everything read through it into `copy`.
struct Tee<R, W> {
    inner: R,
    copy: W,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.copy.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// A reader that hashes everything read through it.
struct HashingReader<R> {
    inner: R,
    w: DigestingWriter<io::Sink>,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.w.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// Walks the tar (checking every header) and hashes the whole stream, including the
/// padding after the end-of-archive marker, which is part of the diff_id.
fn hash_and_check_tar(r: &mut impl Read, src: &str) -> Result<(Digest, u64), ImportError> {
    let not_tar = |reason: String| ImportError::NotATar {
        source_name: src.to_string(),
        reason,
    };
    let mut hr = HashingReader {
        inner: r,
        w: DigestingWriter::new(io::sink()),
    };
    let mut count = 0usize;
    {
        let mut archive = tar::Archive::new(&mut hr);
        let entries = archive.entries().map_err(|e| not_tar(e.to_string()))?;
        for e in entries {
            let mut e = e.map_err(|e| not_tar(e.to_string()))?;
            // Reading the data (not just skipping) surfaces truncation inside an entry.
            io::copy(&mut e, &mut io::sink())
                .map_err(|e| not_tar(format!("truncated entry: {e}")))?;
            count += 1;
        }
    }
    io::copy(&mut hr, &mut io::sink()).map_err(|e| not_tar(e.to_string()))?;
    if count == 0 {
        return Err(not_tar("no entries".to_string()));
    }
    let (_, digest, size) = hr.w.finish();
    Ok((digest, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, "bin/", &b""[..]).expect("dir");
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o755);
        h.set_size(4);
        b.append_data(&mut h, "bin/busybox", &b"\x7fELF"[..])
            .expect("file");
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "bin/sh", "busybox").expect("link");
        b.into_inner().expect("tar")
    }

    fn opts(changes: &[&str]) -> ImportOptions {
        ImportOptions {
            changes: changes.iter().map(|s| s.to_string()).collect(),
            platform: PlatformSpec::parse("linux/amd64").expect("p"),
            created: Some("2024-05-01T00:00:00Z".to_string()),
            message: None,
            source_name: "rootfs.tar".to_string(),
        }
    }

    fn import(bytes: &[u8], changes: &[&str]) -> Result<ImportedImage, ImportError> {
        import_rootfs(
            bytes,
            Some(Reference::parse("busybox:imported").expect("ref")),
            &opts(changes),
            &std::env::temp_dir(),
        )
    }

    #[test]
    fn imports_plain_tar_by_gzipping() {
        let tar = rootfs();
        let img = import(
            &tar,
            &[r#"CMD ["/bin/sh"]"#, "ENV PATH=/bin", "WORKDIR /root"],
        )
        .expect("import");
        let l = &img.image.layers[0];
        assert_eq!(l.diff_id, Digest::sha256_of(&tar));
        assert_eq!(l.uncompressed_size, Some(tar.len() as u64));
        assert_eq!(l.media_type, media::OCI_LAYER_GZIP);
        let mut gz = Vec::new();
        img.open_layer()
            .expect("open")
            .read_to_end(&mut gz)
            .expect("verified");
        assert_eq!(Digest::sha256_of(&gz), l.digest);
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut plain)
            .expect("gunzip");
        assert_eq!(plain, tar);
        let c = img.image.config().expect("config");
        let rc = c.config().as_ref().expect("run config");
        assert_eq!(rc.cmd().as_deref(), Some(&["/bin/sh".to_string()][..]));
        assert_eq!(rc.working_dir().as_deref(), Some("/root"));
        assert_eq!(c.created().as_deref(), Some("2024-05-01T00:00:00Z"));
        let h = c.history().as_ref().expect("history");
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].comment().as_deref(), Some("Imported from rootfs.tar"));
        assert_eq!(img.image.references[0].familiar(), "busybox:imported");
        assert_eq!(img.image.platform.to_string(), "linux/amd64");
    }

    #[test]
    fn keeps_gzip_input_as_given() {
        let tar = rootfs();
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(&tar).expect("gz");
        let gz = e.finish().expect("gz");
        let img = import(&gz, &[]).expect("import");
        let l = &img.image.layers[0];
        assert_eq!(l.digest, Digest::sha256_of(&gz));
        assert_eq!(l.size, gz.len() as u64);
        assert_eq!(l.diff_id, Digest::sha256_of(&tar));
        // Deterministic given a fixed `created`.
        let again = import(&gz, &[]).expect("import");
        assert_eq!(again.image.manifest_digest, img.image.manifest_digest);
    }

    #[test]
    fn keeps_zstd_input_as_given() {
        let tar = rootfs();
        let z = zstd::encode_all(&tar[..], 3).expect("zstd");
        let img = import(&z, &[]).expect("import zstd");
        let l = &img.image.layers[0];
        assert_eq!(l.media_type, media::OCI_LAYER_ZSTD);
        assert_eq!(l.digest, Digest::sha256_of(&z));
        assert_eq!(l.diff_id, Digest::sha256_of(&tar));
    }

    #[test]
    fn bad_inputs() {
        let err = import(
            b"this is not a tar file at all, just some text.........",
            &[],
        )
        .expect_err("text");
        assert!(matches!(err, ImportError::NotATar { .. }), "{err}");
        assert!(err.to_string().contains("rootfs.tar"));
        let tar = rootfs();
        let err = import(&tar[..700], &[]).expect_err("truncated");
        assert!(matches!(err, ImportError::NotATar { .. }), "{err}");
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&tar).expect("gz");
        let gz = e.finish().expect("gz");
        let err = import(&gz[..gz.len() / 2], &[]).expect_err("truncated gzip");
        assert!(matches!(err, ImportError::NotATar { .. }), "{err}");
        let empty = vec![0u8; 1024];
        assert!(matches!(
            import(&empty, &[]),
            Err(ImportError::NotATar { .. })
        ));
        assert!(matches!(
            import(&[0x28, 0xb5, 0x2f, 0xfd, 0, 0], &[]),
            Err(ImportError::NotATar { .. })
        ));
        assert!(matches!(
            import(b"BZh91AY", &[]),
            Err(ImportError::Compression { what: "bzip2", .. })
        ));
        assert!(matches!(import(b"", &[]), Err(ImportError::NotATar { .. })));
        let err = import(&tar, &["RUN rm -rf /"]).expect_err("bad change");
        assert!(matches!(err, ImportError::Change { .. }), "{err}");
    }
}
