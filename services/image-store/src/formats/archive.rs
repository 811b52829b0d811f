//! Shared pieces of the archive readers: the error type, safe path handling, and a
//! one-pass spool of a tar stream into a temp dir with every file's sha256 and size.
//!
//! Why spool rather than read the tar twice: the input may be a pipe (stdin, a blob
//! streamed from the object store), may be gzip-compressed as a whole, and
//! `manifest.json` usually comes *after* the layers, so nothing can be decided on the
//! first pass anyway. One pass to disk, hashing as we write, gives every blob's digest
//! before the caller stores anything (so it can skip blobs it already has), keeps
//! memory flat, and lets the caller then stream each blob from a local file.

use super::digest::{Digest, DigestError, DigestingWriter, VerifyingReader};
use super::manifest::{Compression, ManifestError};
use super::reference::ReferenceError;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

/// Errors reading or writing docker-archives and OCI layouts; each names the archive
/// and the path, image or blob concerned.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Reading or writing failed.
    #[error("{archive}: {path}: {source}")]
    Io {
        /// The archive.
        archive: String,
        /// The file inside it (or the spool) being handled.
        path: String,
        /// The I/O error.
        source: io::Error,
    },
    /// A path that is absolute or climbs out with `..`, or a symlink that does.
    #[error("{archive}: path {path:?} escapes the archive ({reason})")]
    UnsafePath {
        /// The archive.
        archive: String,
        /// The offending path.
        path: String,
        /// Why.
        reason: String,
    },
    /// A referenced file is not in the archive.
    #[error("{archive}: {path:?} is missing (referenced by {referenced_by})")]
    MissingFile {
        /// The archive.
        archive: String,
        /// The missing path.
        path: String,
        /// Who referenced it.
        referenced_by: String,
    },
    /// A file nothing refers to.
    #[error("{archive}: unexpected file {path:?} that no image refers to")]
    ExtraFile {
        /// The archive.
        archive: String,
        /// The extra path.
        path: String,
    },
    /// The same path twice.
    #[error("{archive}: {path:?} appears twice")]
    Duplicate {
        /// The archive.
        archive: String,
        /// The path.
        path: String,
    },
    /// A device, fifo, or other entry that has no place in an image archive.
    #[error("{archive}: {path:?} is a {kind}, not allowed in an image archive")]
    UnsupportedEntry {
        /// The archive.
        archive: String,
        /// The path.
        path: String,
        /// Entry kind.
        kind: String,
    },
    /// Bad JSON in a metadata file.
    #[error("{archive}: malformed {path}: {source}")]
    Json {
        /// The archive.
        archive: String,
        /// manifest.json, index.json…
        path: String,
        /// Parser error.
        source: serde_json::Error,
    },
    /// A metadata file that parses but makes no sense.
    #[error("{archive}: {path}: {reason}")]
    Invalid {
        /// The archive.
        archive: String,
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// Manifest/config problems of one image.
    #[error("{archive}: {source}")]
    Manifest {
        /// The archive.
        archive: String,
        /// The manifest error (names the image).
        source: Box<ManifestError>,
    },
    /// A blob whose digest or size is wrong.
    #[error("{archive}: {path}: {source}")]
    Digest {
        /// The archive.
        archive: String,
        /// The file.
        path: String,
        /// Details (expected and actual).
        source: Box<DigestError>,
    },
    /// A bad RepoTag / ref name.
    #[error("{archive}: {source}")]
    Reference {
        /// The archive.
        archive: String,
        /// Details.
        source: ReferenceError,
    },
    /// A blob asked for that the archive does not hold.
    #[error("{archive}: no blob {digest}")]
    NoSuchBlob {
        /// The archive.
        archive: String,
        /// The digest asked for.
        digest: Digest,
    },
}

impl ArchiveError {
    pub(crate) fn io(archive: &str, path: impl Into<String>, source: io::Error) -> Self {
        // A verifying reader's failure is a digest error, not an I/O one.
        if let Some(de) = super::digest::digest_error_of(&source) {
            return ArchiveError::Digest {
                archive: archive.to_string(),
                path: path.into(),
                source: Box::new(de.clone()),
            };
        }
        ArchiveError::Io {
            archive: archive.to_string(),
            path: path.into(),
            source,
        }
    }
}

/// Normalizes a path found inside an archive or its metadata: strips `./` and empty
/// components, resolves `..` lexically, and refuses absolute paths or climbing above
/// the root. `base` is the directory a relative symlink target is resolved against.
pub fn normalize_path(base: &str, path: &str) -> Result<String, String> {
    if path.starts_with('/') {
        return Err("absolute path".to_string());
    }
    if path.contains('\0') || path.contains('\\') {
        return Err("NUL or backslash in path".to_string());
    }
    let mut parts: Vec<&str> = base
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    for comp in path.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err("climbs above the archive root with '..'".to_string());
                }
            }
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return Err("empty path".to_string());
    }
    Ok(parts.join("/"))
}

/// Sniffs compression from a stream's first bytes.
pub fn sniff_compression(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// Length of a layer blob once decompressed (gzip, zstd or plain, told by its magic).
pub fn uncompressed_length(input: impl Read) -> io::Result<u64> {
    let mut input = BufReader::with_capacity(256 * 1024, input);
    let compression = sniff_compression(input.fill_buf()?);
    match compression {
        Compression::None => io::copy(&mut input, &mut io::sink()),
        Compression::Gzip => io::copy(&mut flate2::bufread::GzDecoder::new(input), &mut io::sink()),
        Compression::Zstd => io::copy(
            &mut zstd::stream::read::Decoder::with_buffer(input)?,
            &mut io::sink(),
        ),
    }
}

/// Wraps `input` in a gzip decoder if it starts with the gzip magic.
pub fn maybe_gunzip<'a, R: Read + 'a>(input: R) -> io::Result<(Box<dyn Read + 'a>, Compression)> {
    let mut br = BufReader::with_capacity(64 * 1024, input);
    let c = sniff_compression(br.fill_buf()?);
    Ok(match c {
        Compression::Gzip => (Box::new(flate2::read::MultiGzDecoder::new(br)), c),
        _ => (Box::new(br), c),
    })
}

/// Most entries a spooled archive may have.
pub const MAX_ENTRIES: usize = 100_000;

/// One entry of a spooled tar.
#[derive(Clone, Debug)]
pub enum SpoolEntry {
    /// A regular file, copied to `file` in the spool dir.
    File {
        /// Where its bytes are.
        file: PathBuf,
        /// sha256 of its bytes.
        digest: Digest,
        /// Its size.
        size: u64,
        /// Compression sniffed from its first bytes.
        compression: Compression,
    },
    /// A symlink (target as written in the tar).
    Symlink(String),
    /// A hard link to another entry (archive path).
    HardLink(String),
    /// A directory.
    Dir,
}

/// A tar stream spooled to disk; the temp dir is removed on drop.
#[derive(Debug)]
pub struct Spool {
    /// Name of the archive for messages.
    pub archive: String,
    /// Entries by normalized path.
    pub entries: BTreeMap<String, SpoolEntry>,
    dir: tempfile::TempDir,
}

impl Spool {
    /// Reads a (possibly gzip-compressed) tar stream into a new temp dir under `spool_in`.
    pub fn read<R: Read>(input: R, spool_in: &Path, archive: &str) -> Result<Self, ArchiveError> {
        let dir = tempfile::Builder::new()
            .prefix("berth-spool-")
            .tempdir_in(spool_in)
            .map_err(|e| ArchiveError::io(archive, spool_in.display().to_string(), e))?;
        let (reader, _) =
            maybe_gunzip(input).map_err(|e| ArchiveError::io(archive, "(start)", e))?;
        let mut tar = tar::Archive::new(reader);
        let mut entries = BTreeMap::new();
        let tar_err = |e: io::Error| ArchiveError::Invalid {
            archive: archive.to_string(),
            path: "(tar)".to_string(),
            reason: format!("not a valid tar stream: {e}"),
        };
        let mut n = 0usize;
        for (count, entry) in tar.entries().map_err(tar_err)?.enumerate() {
            if count >= MAX_ENTRIES {
                // Image archives hold a handful of files per layer; this is something else.
                return Err(ArchiveError::Invalid {
                    archive: archive.to_string(),
                    path: "(tar)".to_string(),
                    reason: format!("more than {MAX_ENTRIES} entries"),
                });
            }
            let mut entry = entry.map_err(tar_err)?;
            let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let kind = entry.header().entry_type();
            let path = match normalize_path("", &raw) {
                Ok(p) => p,
                // The tar root itself ("./") is harmless.
                Err(_)
                    if kind.is_dir() && raw.trim_matches(|c| c == '.' || c == '/').is_empty() =>
                {
                    continue
                }
                Err(reason) => {
                    return Err(ArchiveError::UnsafePath {
                        archive: archive.to_string(),
                        path: raw,
                        reason,
                    })
                }
            };
            let link = || -> Result<String, ArchiveError> {
                entry
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .ok_or_else(|| ArchiveError::Invalid {
                        archive: archive.to_string(),
                        path: path.clone(),
                        reason: "link without target".to_string(),
                    })
            };
            let spooled = if kind.is_file() || kind == tar::EntryType::Continuous {
                n += 1;
                let file = dir.path().join(n.to_string());
                let (digest, size, compression) = spool_file(&mut entry, &file)
                    .map_err(|e| ArchiveError::io(archive, &path, e))?;
                SpoolEntry::File {
                    file,
                    digest,
                    size,
                    compression,
                }
            } else if kind.is_dir() {
                SpoolEntry::Dir
            } else if kind.is_symlink() {
                SpoolEntry::Symlink(link()?)
            } else if kind.is_hard_link() {
                let target = link()?;
                let target =
                    normalize_path("", &target).map_err(|reason| ArchiveError::UnsafePath {
                        archive: archive.to_string(),
                        path: format!("{path} -> {target}"),
                        reason,
                    })?;
                SpoolEntry::HardLink(target)
            } else if kind.is_pax_global_extensions() || kind.is_pax_local_extensions() {
                continue;
            } else {
                return Err(ArchiveError::UnsupportedEntry {
                    archive: archive.to_string(),
                    path,
                    kind: format!("{kind:?}"),
                });
            };
            if let Some(prev) = entries.insert(path.clone(), spooled) {
                // Directories may legitimately repeat; files may not.
                if !matches!(prev, SpoolEntry::Dir) {
                    return Err(ArchiveError::Duplicate {
                        archive: archive.to_string(),
                        path,
                    });
                }
            }
        }
        Ok(Spool {
            archive: archive.to_string(),
            entries,
            dir,
        })
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Follows symlinks and hard links (within the archive) to a regular file.
    /// Returns the resolved path and entry; `referenced_by` names the referrer in errors.
    pub fn resolve(
        &self,
        path: &str,
        referenced_by: &str,
    ) -> Result<(String, &SpoolEntry), ArchiveError> {
        let mut current = normalize_path("", path).map_err(|reason| ArchiveError::UnsafePath {
            archive: self.archive.clone(),
            path: path.to_string(),
            reason,
        })?;
        for _ in 0..16 {
            let entry = self
                .entries
                .get(&current)
                .ok_or_else(|| ArchiveError::MissingFile {
                    archive: self.archive.clone(),
                    path: current.clone(),
                    referenced_by: referenced_by.to_string(),
                })?;
            match entry {
                SpoolEntry::File { .. } => return Ok((current, entry)),
                SpoolEntry::Dir => {
                    return Err(ArchiveError::Invalid {
                        archive: self.archive.clone(),
                        path: current,
                        reason: format!("is a directory, but {referenced_by} needs a file"),
                    })
                }
                SpoolEntry::HardLink(t) => current = t.clone(),
                SpoolEntry::Symlink(t) => {
                    let base = current.rsplit_once('/').map_or("", |(d, _)| d);
                    current =
                        normalize_path(base, t).map_err(|reason| ArchiveError::UnsafePath {
                            archive: self.archive.clone(),
                            path: format!("{current} -> {t}"),
                            reason,
                        })?;
                }
            }
        }
        Err(ArchiveError::Invalid {
            archive: self.archive.clone(),
            path: path.to_string(),
            reason: "too many levels of links".to_string(),
        })
    }

    /// Reads a small file completely (metadata, configs), refusing anything over `limit`.
    pub fn read_small(
        &self,
        path: &str,
        referenced_by: &str,
        limit: u64,
    ) -> Result<Vec<u8>, ArchiveError> {
        let (resolved, entry) = self.resolve(path, referenced_by)?;
        let SpoolEntry::File { file, size, .. } = entry else {
            unreachable!("resolve returns files only")
        };
        if *size > limit {
            return Err(ArchiveError::Invalid {
                archive: self.archive.clone(),
                path: resolved,
                reason: format!("{size} bytes, over the {limit}-byte limit"),
            });
        }
        std::fs::read(file).map_err(|e| ArchiveError::io(&self.archive, resolved, e))
    }
}

/// Copies an entry to `dest` while hashing; returns digest, size and sniffed compression.
fn spool_file(src: &mut impl Read, dest: &Path) -> io::Result<(Digest, u64, Compression)> {
    let out = File::create(dest)?;
    let mut w = DigestingWriter::new(io::BufWriter::with_capacity(256 * 1024, out));
    let mut head = [0u8; 4];
    let mut got = 0;
    // Read the first bytes separately to sniff compression without buffering the file.
    while got < head.len() {
        let n = src.read(&mut head[got..])?;
        if n == 0 {
            break;
        }
        got += n;
    }
    w.write_all(&head[..got])?;
    io::copy(src, &mut w)?;
    let (buf, digest, size) = w.finish();
    // Flush (BufWriter errors surface here) but no fsync: a spool is scratch space that
    // a crash throws away, and is re-verified when read.
    buf.into_inner().map_err(|e| e.into_error())?;
    Ok((digest, size, sniff_compression(&head[..got])))
}

/// Opens a spooled file as a reader verified against `digest` and `size` (insurance
/// against the spool being changed underneath us).
pub fn open_verified(
    archive: &str,
    file: &Path,
    digest: &Digest,
    size: u64,
    subject: String,
) -> Result<VerifyingReader<BufReader<File>>, ArchiveError> {
    let f = File::open(file).map_err(|e| ArchiveError::io(archive, subject.clone(), e))?;
    Ok(VerifyingReader::new(
        BufReader::with_capacity(256 * 1024, f),
        digest.clone(),
        Some(size),
        subject,
    ))
}

/// A reader that decompresses `r` (gzip or zstd; a plain stream passes through).
pub fn decompress<'a, R: Read + 'a>(c: Compression, r: R) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match c {
        Compression::None => Box::new(r),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(r))),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(r)?),
    })
}

/// sha256 and size of the decompressed content of a layer file (its diff_id).
pub fn uncompressed_digest(file: &Path, c: Compression) -> io::Result<(Digest, u64)> {
    let f = BufReader::with_capacity(256 * 1024, File::open(file)?);
    super::digest::sha256_reader(decompress(c, f)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_paths() {
        assert_eq!(normalize_path("", "./a/b").as_deref(), Ok("a/b"));
        assert_eq!(normalize_path("", "a//b/").as_deref(), Ok("a/b"));
        assert_eq!(normalize_path("x", "../a").as_deref(), Ok("a"));
        assert_eq!(normalize_path("x/y", "../a").as_deref(), Ok("x/a"));
        assert!(normalize_path("", "../a").is_err());
        assert!(normalize_path("x", "../../a").is_err());
        assert!(normalize_path("", "/etc/passwd").is_err());
        assert!(normalize_path("", "a/../..").is_err());
        assert!(normalize_path("", ".").is_err());
        assert!(normalize_path("", "a\\b").is_err());
    }

    #[test]
    fn sniffs() {
        assert_eq!(sniff_compression(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(
            sniff_compression(&[0x28, 0xb5, 0x2f, 0xfd]),
            Compression::Zstd
        );
        assert_eq!(sniff_compression(b"bin/"), Compression::None);
        assert_eq!(sniff_compression(b""), Compression::None);
    }

    fn tar_with(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (p, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, p, *data).expect("append");
        }
        b.into_inner().expect("finish")
    }

    #[test]
    fn spools_and_resolves_links() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o644);
        b.append_data(&mut h, "dir/file", &b"hello"[..])
            .expect("file");
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "other/link", "../dir/file")
            .expect("link");
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "evil", "../../etc/passwd")
            .expect("link");
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Link);
        h.set_size(0);
        b.append_link(&mut h, "hard", "dir/file").expect("link");
        let bytes = b.into_inner().expect("tar");
        let tmp = tempfile::tempdir().expect("tmp");
        let spool = Spool::read(&bytes[..], tmp.path(), "t.tar").expect("spool");
        let (p, e) = spool.resolve("other/link", "test").expect("resolves");
        assert_eq!(p, "dir/file");
        assert!(matches!(e, SpoolEntry::File { size: 5, .. }));
        assert_eq!(spool.resolve("hard", "test").expect("hard").0, "dir/file");
        assert!(matches!(
            spool.resolve("evil", "test"),
            Err(ArchiveError::UnsafePath { .. })
        ));
        assert!(matches!(
            spool.resolve("nope", "test"),
            Err(ArchiveError::MissingFile { .. })
        ));
        assert_eq!(
            spool.read_small("dir/file", "t", 10).expect("read"),
            b"hello"
        );
        assert!(spool.read_small("dir/file", "t", 2).is_err());
    }

    #[test]
    fn rejects_duplicates_and_gz_input_works() {
        let bytes = tar_with(&[("a", b"1"), ("a", b"2")]);
        let tmp = tempfile::tempdir().expect("tmp");
        assert!(matches!(
            Spool::read(&bytes[..], tmp.path(), "t"),
            Err(ArchiveError::Duplicate { .. })
        ));
        let bytes = tar_with(&[("a", b"1")]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&bytes).expect("gz");
        let gz = gz.finish().expect("gz");
        let spool = Spool::read(&gz[..], tmp.path(), "t.tar.gz").expect("gz spool");
        assert!(spool.entries.contains_key("a"));
    }

    #[test]
    fn rejects_escaping_entry_names_and_devices() {
        // tar::Builder refuses '..' itself, so write the header by hand.
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..9].copy_from_slice(b"../escape");
        h.set_size(0);
        h.set_mode(0o644);
        h.set_cksum();
        let mut bytes = h.as_bytes().to_vec();
        bytes.extend_from_slice(&[0u8; 1024]);
        let tmp = tempfile::tempdir().expect("tmp");
        assert!(matches!(
            Spool::read(&bytes[..], tmp.path(), "t"),
            Err(ArchiveError::UnsafePath { .. })
        ));
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Char);
        h.set_size(0);
        b.append_data(&mut h, "dev", &b""[..]).expect("dev");
        let bytes = b.into_inner().expect("tar");
        assert!(matches!(
            Spool::read(&bytes[..], tmp.path(), "t"),
            Err(ArchiveError::UnsupportedEntry { .. })
        ));
    }

    #[test]
    fn garbage_is_not_a_tar() {
        let tmp = tempfile::tempdir().expect("tmp");
        let junk = vec![0x42u8; 2048];
        assert!(Spool::read(&junk[..], tmp.path(), "junk").is_err());
    }
}
