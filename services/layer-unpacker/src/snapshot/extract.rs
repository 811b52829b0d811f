//! One layer tar → one directory, in a single streaming pass.
//!
//! The blob is decompressed, hashed (sha256 of the uncompressed stream, checked
//! against the diff_id) and untarred at the same time; nothing is buffered in
//! memory beyond one read buffer.
//!
//! Two modes share everything but the whiteout rules:
//! - [`ExtractMode::Overlay`]: into an empty directory that becomes an overlay
//!   lowerdir. `.wh.NAME` becomes a 0:0 character device, `.wh..wh..opq` the
//!   `trusted.overlay.opaque=y` xattr on its directory.
//! - [`ExtractMode::Apply`]: onto the tree of the layers below (the copy-based
//!   fallback). `.wh.NAME` deletes NAME, `.wh..wh..opq` deletes what lower layers
//!   put in its directory; entries replace what they land on.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::hash::{BuildHasher, DefaultHasher, Hasher};
use std::io::{self, BufReader, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use sha2::{Digest, Sha256};
use tar::EntryType;

use super::decompress::{decompressor, Compression};
use super::safe_path::{self as sp, join, normalize, Root, WalkError};
use super::{Error, LayerError, LayerSpec, Limits};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// Other `.wh..wh.` names are aufs bookkeeping (e.g. `.wh..wh.plnk`); OCI says to ignore them.
const AUFS_META_PREFIX: &[u8] = b".wh..wh.";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Where a layer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtractMode {
    /// Into an empty directory, whiteouts kept in overlayfs form.
    Overlay,
    /// Onto the tree of the layers below, whiteouts applied.
    Apply,
}

/// What unpacking one layer found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerStats {
    /// sha256 of the uncompressed stream, equal to the expected diff_id.
    pub diff_id: String,
    pub compression: Compression,
    pub uncompressed_bytes: u64,
    pub entries: u64,
    /// Sum of regular file sizes (apparent, holes included).
    pub file_bytes: u64,
    /// Overlay form only: directories that had no entry of their own in the
    /// layer (created as parents, or the root without a `./` entry). In the
    /// merged view the topmost layer's directory supplies owner, mode and
    /// xattrs, so these must inherit them from the layers below (see
    /// [`super::implicit`]); empty in applied mode, where they already exist.
    pub implicit_dirs: Vec<PathBuf>,
}

/// Unpacks one layer blob (`blob`: the stored, possibly compressed bytes) into
/// `root`, which must exist. On any error the directory is left half-written:
/// the caller discards it (the store unpacks into a temp dir for that reason).
pub fn unpack_layer<R: Read>(
    blob: R,
    root: &Path,
    layer: &LayerSpec,
    limits: &Limits,
    mode: ExtractMode,
) -> Result<LayerStats, Error> {
    let err = |e| Error::new(&layer.digest, e);
    let (compression, decoded) = decompressor(&layer.media_type, blob).map_err(err)?;
    let exceeded = Rc::new(Cell::new(false));
    let last_entry = Rc::new(Cell::new((0, 0)));
    let mut counted = Counted {
        inner: decoded,
        hasher: Sha256::new(),
        count: 0,
        limit: limits.max_uncompressed_bytes,
        exceeded: exceeded.clone(),
        last_entry: last_entry.clone(),
        padded: 0,
    };
    let root = Root::open(root).map_err(|e| {
        err(LayerError::Io {
            op: "open root",
            path: root.to_path_buf(),
            source: e,
        })
    })?;
    let mut ex = Extractor {
        root,
        mode,
        limits,
        keys: PathKeys::new(),
        seen: HashMap::new(),
        ancestors: HashSet::new(),
        dirs: HashMap::new(),
        buf: vec![0u8; 1 << 20],
        entries: 0,
        file_bytes: 0,
        root_explicit: false,
    };
    let stream_err = |e: io::Error| {
        if exceeded.get() {
            LayerError::TooLarge {
                limit: limits.max_uncompressed_bytes,
            }
        } else {
            LayerError::Stream(e)
        }
    };
    {
        let mut buffered = BufReader::with_capacity(256 << 10, &mut counted);
        {
            let mut archive = tar::Archive::new(&mut buffered);
            let entries = archive.entries().map_err(|e| err(stream_err(e)))?;
            for entry in entries {
                let entry = entry.map_err(|e| err(stream_err(e)))?;
                let data_end = entry
                    .raw_file_position()
                    .saturating_add(entry.header().entry_size().unwrap_or(0));
                last_entry.set((data_end, data_end.next_multiple_of(512)));
                ex.entry(entry).map_err(|e| match e {
                    LayerError::Stream(io) => err(stream_err(io)),
                    other => err(other),
                })?;
            }
        }
        // The diff_id covers the whole stream, including what follows the tar's
        // end-of-archive blocks.
        io::copy(&mut buffered, &mut io::sink()).map_err(|e| err(stream_err(e)))?;
    }
    ex.finish_dirs().map_err(err)?;
    let implicit_dirs = ex.implicit_dirs();
    let actual = format!("sha256:{}", hex::encode(counted.hasher.finalize()));
    if actual != layer.diff_id {
        return Err(err(LayerError::DigestMismatch {
            expected: layer.diff_id.clone(),
            actual,
        }));
    }
    Ok(LayerStats {
        diff_id: actual,
        compression,
        uncompressed_bytes: counted.count,
        entries: ex.entries,
        file_bytes: ex.file_bytes,
        implicit_dirs,
    })
}

/// Hashes and counts the decompressed stream; stops it at the size limit.
struct Counted<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
    limit: u64,
    /// Shared with the error mapper: the tar crate rewraps reader errors, so the
    /// error value alone cannot say that the limit was hit.
    exceeded: Rc<Cell<bool>>,
    /// Where the current entry's data ends and where its padding ends, set by
    /// the extract loop: see [`Counted::pad_at_eof`].
    last_entry: Rc<Cell<(u64, u64)>>,
    /// Zero bytes supplied at the end (neither hashed nor counted).
    padded: u64,
}

impl<R> Counted<R> {
    /// umoci's `insert` ends its tars right after the last entry's data: no
    /// padding to 512 bytes, no end-of-archive blocks. GNU tar, podman and umoci
    /// read those; so does this, by supplying the missing padding when the
    /// stream ends inside it. Ending anywhere else (inside an entry's data or a
    /// header) still reaches the tar reader as the error it is.
    fn pad_at_eof(&mut self, buf: &mut [u8]) -> usize {
        let pos = self.count + self.padded;
        let (data_end, pad_end) = self.last_entry.get();
        if pos < data_end || pos >= pad_end {
            return 0;
        }
        let k = buf
            .len()
            .min(usize::try_from(pad_end - pos).unwrap_or(usize::MAX));
        buf[..k].fill(0);
        self.padded += k as u64;
        k
    }
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            return Ok(self.pad_at_eof(buf));
        }
        self.count += n as u64;
        if self.count > self.limit {
            self.exceeded.set(true);
            return Err(io::Error::other("uncompressed size limit exceeded"));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Dir,
    NonDir,
    Whiteout,
}

struct Extractor<'l> {
    root: Root,
    mode: ExtractMode,
    limits: &'l Limits,
    keys: PathKeys,
    /// Entries of this layer so far, by path key: hardlink targets, whiteout
    /// conflicts, and which children an opaque marker must keep. Keys, not
    /// paths: a path is as long as its depth, and a deep layer would need
    /// memory quadratic in its depth to keep them all.
    seen: HashMap<PathKey, Seen>,
    /// Directories with entries of this layer below them (or its whiteouts).
    ancestors: HashSet<PathKey>,
    /// Directory mode and mtime are set after their contents are written (a
    /// read-only dir could not take them; writing would bump the mtime).
    dirs: HashMap<PathKey, (u32, libc::timespec)>,
    buf: Vec<u8>,
    entries: u64,
    file_bytes: u64,
    root_explicit: bool,
}

/// Metadata of an entry, PAX records applied.
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: libc::timespec,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

impl Extractor<'_> {
    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), LayerError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(LayerError::TooManyEntries {
                limit: self.limits.max_entries,
            });
        }
        let raw_path = PathBuf::from(OsStr::from_bytes(&entry.path_bytes()));
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader) {
            return Ok(());
        }
        let comps = normalize(&raw_path).map_err(|reason| LayerError::UnsafePath {
            path: raw_path.clone(),
            reason,
        })?;
        let meta = read_meta(&mut entry, &raw_path)?;

        let Some((name, parent)) = comps.split_last() else {
            // The layer root itself (`./`): only its metadata can be set.
            if !kind.is_dir() {
                return Err(LayerError::UnsafePath {
                    path: raw_path,
                    reason: "the root entry must be a directory",
                });
            }
            self.root_explicit = true;
            self.apply_dir_meta(&[], &meta, &raw_path)?;
            return Ok(());
        };
        let name_bytes = name.as_bytes();

        if let Some(rest) = name_bytes.strip_prefix(WHITEOUT_PREFIX) {
            if name_bytes == OPAQUE_MARKER {
                return self.opaque(parent, &raw_path);
            }
            if name_bytes.starts_with(AUFS_META_PREFIX) {
                return Ok(());
            }
            if rest.is_empty() || rest == b"." || rest == b".." {
                return Err(LayerError::UnsafePath {
                    path: raw_path,
                    reason: "whiteout of `.`, `..` or nothing",
                });
            }
            let target = OsStr::from_bytes(rest);
            return self.whiteout(parent, target, &meta, &raw_path);
        }

        let is_dir = kind.is_dir();
        // A name seen before in this layer: the later entry wins, as in Docker.
        // What it replaces goes in `clear_target`; a directory merges with a
        // directory.
        self.record(&comps, if is_dir { Seen::Dir } else { Seen::NonDir });

        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.file(&mut entry, parent, name, &meta, &raw_path)
            }
            EntryType::Directory => {
                self.clear_target(parent, name, true, &raw_path)?;
                let dir = self.parent_fd(parent, &raw_path)?;
                match sp::mkdirat(dir, name, 0o700) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                    Err(e) => return Err(io_err("mkdir", &raw_path, e)),
                }
                self.apply_dir_meta(&comps, &meta, &raw_path)
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| malformed(&raw_path, "symlink without a target"))?;
                let target = OsStr::from_bytes(&target).to_os_string();
                self.clear_target(parent, name, false, &raw_path)?;
                let dir = self.parent_fd(parent, &raw_path)?;
                sp::symlinkat(&target, dir, name)
                    .map_err(|e| create_err("symlink", &raw_path, e))?;
                self.apply_meta_at(parent, name, &meta, &raw_path, false)
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| malformed(&raw_path, "hardlink without a target"))?;
                let target_path = PathBuf::from(OsStr::from_bytes(&target));
                self.hardlink(parent, name, &target_path, &raw_path)
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let fmt = match kind {
                    EntryType::Char => libc::S_IFCHR,
                    EntryType::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                let dev = if fmt == libc::S_IFIFO {
                    0
                } else {
                    if !self.limits.allow_devices {
                        return Err(LayerError::DeviceNotAllowed(raw_path));
                    }
                    let h = entry.header();
                    let major = h
                        .device_major()
                        .map_err(|e| malformed(&raw_path, &e.to_string()))?
                        .unwrap_or(0);
                    let minor = h
                        .device_minor()
                        .map_err(|e| malformed(&raw_path, &e.to_string()))?
                        .unwrap_or(0);
                    libc::makedev(major, minor)
                };
                self.clear_target(parent, name, false, &raw_path)?;
                let dir = self.parent_fd(parent, &raw_path)?;
                sp::mknodat(dir, name, fmt | (meta.mode & 0o777), dev)
                    .map_err(|e| create_err("mknod", &raw_path, e))?;
                self.apply_meta_at(parent, name, &meta, &raw_path, true)
            }
            other => Err(LayerError::Unsupported {
                path: raw_path,
                kind: other.as_byte(),
            }),
        }
    }

    fn parent_fd(&mut self, parent: &[OsString], raw: &Path) -> Result<BorrowedFd<'_>, LayerError> {
        self.root.dir(parent, true).map_err(|e| walk_err(e, raw))
    }

    /// Makes room for a new entry at `parent/name`. In overlay form the
    /// directory starts empty, so anything there came from this layer (an
    /// implicit parent): a conflict, found by the create itself. When applying,
    /// what lower layers put there is replaced, except a directory by a
    /// directory (tar semantics: merged).
    fn clear_target(
        &mut self,
        parent: &[OsString],
        name: &OsStr,
        want_dir: bool,
        raw: &Path,
    ) -> Result<(), LayerError> {
        let dir = self.parent_fd(parent, raw)?;
        let Some(st) = sp::lstatat(dir, name).map_err(|e| io_err("stat", raw, e))? else {
            return Ok(());
        };
        let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        if is_dir && want_dir {
            return Ok(());
        }
        // In overlay form the directory started empty, so this is an earlier
        // entry of this layer (or a parent made for one); when applying it may
        // also come from below. Either way the later entry wins (Docker's
        // rule), and whatever this layer put below the name goes with it.
        let dir = self.parent_fd(parent, raw)?;
        sp::remove_all_at(dir, name).map_err(|e| io_err("remove", raw, e))?;
        self.root.invalidate();
        if is_dir {
            let mut comps = parent.to_vec();
            comps.push(name.to_os_string());
            self.forget_below(&comps);
        }
        Ok(())
    }

    /// Forgets what this layer wrote under directory `comps`, which was just
    /// removed to make room for a later entry of the same name. Rare, so scans
    /// are fine.
    fn forget_below(&mut self, comps: &[OsString]) {
        // `seen` and `ancestors` keep the keys below (keys cannot be listed
        // by prefix): a hardlink to a removed entry then fails at the link,
        // as in Docker. A directory made again at the same path takes its
        // mode from its own entry.
        self.dirs.remove(&self.keys.of(comps, None));
        self.root.created.retain(|k| !k.starts_with(comps));
    }

    /// Notes an entry of this layer: its own kind, and that its parents now
    /// hold one. Parents are added bottom up until one is already known, so a
    /// deep tree costs constant work per entry beyond hashing its path.
    fn record(&mut self, comps: &[OsString], kind: Seen) -> Option<Seen> {
        let prefixes = self.keys.prefixes(comps);
        let parents = prefixes
            .get(1..prefixes.len().saturating_sub(1))
            .unwrap_or(&[]);
        for k in parents.iter().rev() {
            if !self.ancestors.insert(*k) {
                break;
            }
        }
        let own = prefixes.last().copied().unwrap_or_default();
        self.seen.insert(own, kind)
    }

    /// Whether `parent/name` is a directory holding entries of this layer.
    fn holds_ours(&self, parent: &[OsString], name: &OsStr) -> bool {
        self.ancestors.contains(&self.keys.of(parent, Some(name)))
    }

    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        parent: &[OsString],
        name: &OsStr,
        meta: &Meta,
        raw: &Path,
    ) -> Result<(), LayerError> {
        let size = entry.size();
        self.clear_target(parent, name, false, raw)?;
        let dir = self.parent_fd(parent, raw)?;
        // O_EXCL + O_NOFOLLOW: never writes through anything already there.
        let fd = sp::openat(
            dir,
            name,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o600,
        )
        .map_err(|e| create_err("create", raw, e))?;
        let file = File::from(fd);
        let written = write_sparse(&file, entry, &mut self.buf).map_err(|e| {
            // A read error is the stream's (maybe the size limit); a write error is the disk's.
            match e {
                SparseError::Read(e) => LayerError::Stream(e),
                SparseError::Write(e) => io_err("write", raw, e),
            }
        })?;
        if written != size {
            return Err(malformed(raw, "file data shorter than its header says"));
        }
        self.file_bytes += size;
        let fd = file.as_fd();
        if self.limits.preserve_owner {
            sp::fchown(fd, meta.uid, meta.gid).map_err(|e| io_err("chown", raw, e))?;
        }
        // After chown, which clears setuid/setgid.
        sp::fchmod(fd, meta.mode & 0o7777).map_err(|e| io_err("chmod", raw, e))?;
        // After chown, which clears security.capability.
        for (k, v) in &meta.xattrs {
            sp::fsetxattr(fd, k, v).map_err(|e| io_err("setxattr", &raw.join(k), e))?;
        }
        sp::futimens(fd, meta.mtime).map_err(|e| io_err("utimes", raw, e))
    }

    /// Owner, mode (unless a symlink), xattrs and mtime of a non-regular,
    /// non-directory entry, addressed through its parent's fd.
    fn apply_meta_at(
        &mut self,
        parent: &[OsString],
        name: &OsStr,
        meta: &Meta,
        raw: &Path,
        chmod: bool,
    ) -> Result<(), LayerError> {
        let preserve_owner = self.limits.preserve_owner;
        let dir = self.parent_fd(parent, raw)?;
        if preserve_owner {
            sp::lchownat(dir, name, meta.uid, meta.gid).map_err(|e| io_err("chown", raw, e))?;
        }
        if chmod {
            // mknod applied the umask; the header's mode is wanted exactly.
            sp::chmodat(dir, name, meta.mode & 0o7777).map_err(|e| io_err("chmod", raw, e))?;
        }
        for (k, v) in &meta.xattrs {
            sp::lsetxattrat(dir, name, k, v).map_err(|e| io_err("setxattr", &raw.join(k), e))?;
        }
        sp::lutimesat(dir, name, meta.mtime).map_err(|e| io_err("utimes", raw, e))
    }

    fn apply_dir_meta(
        &mut self,
        comps: &[OsString],
        meta: &Meta,
        raw: &Path,
    ) -> Result<(), LayerError> {
        let preserve_owner = self.limits.preserve_owner;
        let fd = self.root.dir(comps, false).map_err(|e| walk_err(e, raw))?;
        if preserve_owner {
            sp::fchown(fd, meta.uid, meta.gid).map_err(|e| io_err("chown", raw, e))?;
        }
        for (k, v) in &meta.xattrs {
            sp::fsetxattr(fd, k, v).map_err(|e| io_err("setxattr", &raw.join(k), e))?;
        }
        self.dirs
            .insert(self.keys.of(comps, None), (meta.mode & 0o7777, meta.mtime));
        Ok(())
    }

    fn hardlink(
        &mut self,
        parent: &[OsString],
        name: &OsStr,
        target: &Path,
        raw: &Path,
    ) -> Result<(), LayerError> {
        let bad = |reason| LayerError::Hardlink {
            path: raw.to_path_buf(),
            target: target.to_path_buf(),
            reason,
        };
        let tcomps = normalize(target).map_err(bad)?;
        // Only to something this layer already wrote: a link to a lower layer
        // cannot exist in overlay form, and the name must not be a way to reach
        // outside or through a symlink.
        match self.seen.get(&self.keys.of(&tcomps, None)) {
            Some(Seen::NonDir) => {}
            Some(Seen::Dir) => return Err(bad("target is a directory")),
            Some(Seen::Whiteout) => return Err(bad("target is a whiteout")),
            None => return Err(bad("target is not an earlier entry of this layer")),
        }
        let Some((tname, tparent)) = tcomps.split_last() else {
            return Err(bad("target is the root"));
        };
        let tdir = self
            .root
            .dir_uncached(tparent, false)
            .map_err(|e| match e {
                WalkError::Symlink(_) => bad("target path goes through a symlink"),
                WalkError::NotADirectory(_) => bad("target path goes through a non-directory"),
                WalkError::Io(op, e) => io_err(op, raw, e),
            })?;
        self.clear_target(parent, name, false, raw)?;
        let dir = self.parent_fd(parent, raw)?;
        sp::linkat(tdir.as_fd(), tname, dir, name).map_err(|e| create_err("link", raw, e))
    }

    fn whiteout(
        &mut self,
        parent: &[OsString],
        target: &OsStr,
        meta: &Meta,
        raw: &Path,
    ) -> Result<(), LayerError> {
        let mut tcomps = parent.to_vec();
        tcomps.push(target.to_os_string());
        // A whiteout hides lower layers only; one for an entry of this same
        // layer (or twice the same) is a conflict, as in overlay form it would
        // be the same name twice.
        match self.record(&tcomps, Seen::Whiteout) {
            None => {}
            // The same whiteout twice says the same thing twice.
            Some(Seen::Whiteout) => return Ok(()),
            Some(_) => return Err(LayerError::Duplicate(raw.to_path_buf())),
        }
        match self.mode {
            ExtractMode::Overlay => {
                // Anything already there is a parent this layer made for its
                // own entries: hiding it is the same conflict as above.
                let dir = self.parent_fd(parent, raw)?;
                if sp::lstatat(dir, target)
                    .map_err(|e| io_err("stat", raw, e))?
                    .is_some()
                {
                    return Err(LayerError::Duplicate(raw.to_path_buf()));
                }
                self.clear_target(parent, target, false, raw)?;
                let dir = self.parent_fd(parent, raw)?;
                sp::mknodat(dir, target, libc::S_IFCHR, libc::makedev(0, 0))
                    .map_err(|e| create_err("mknod whiteout", raw, e))?;
                let whiteout_meta = Meta {
                    uid: 0,
                    gid: 0,
                    mode: 0,
                    mtime: meta.mtime,
                    xattrs: Vec::new(),
                };
                self.apply_meta_at(parent, target, &whiteout_meta, raw, false)
            }
            ExtractMode::Apply => {
                if self.holds_ours(parent, target) {
                    return Err(LayerError::Duplicate(raw.to_path_buf()));
                }
                let dir = match self.root.dir(parent, false) {
                    Ok(d) => d,
                    // Nothing below to delete.
                    Err(WalkError::Io(_, e)) if e.raw_os_error() == Some(libc::ENOENT) => {
                        return Ok(())
                    }
                    Err(e) => return Err(walk_err(e, raw)),
                };
                sp::remove_all_at(dir, target).map_err(|e| io_err("whiteout", raw, e))?;
                self.root.invalidate();
                Ok(())
            }
        }
    }

    fn opaque(&mut self, dir_comps: &[OsString], raw: &Path) -> Result<(), LayerError> {
        let mode = self.mode;
        let dir = self
            .root
            .dir(dir_comps, true)
            .map_err(|e| walk_err(e, raw))?;
        if mode == ExtractMode::Overlay {
            return sp::fsetxattr(dir, OsStr::new(OPAQUE_XATTR), b"y")
                .map_err(|e| io_err("set opaque xattr", raw, e));
        }
        let names = sp::list_dir(dir).map_err(|e| io_err("list", raw, e))?;
        // What this layer wrote stays, whatever the order in the tar: its
        // entries and the directories it made as their parents.
        let doomed: Vec<OsString> = names
            .into_iter()
            .filter(|n| {
                let child = self.keys.of(dir_comps, Some(n));
                !self.seen.contains_key(&child) && !self.holds_ours(dir_comps, n)
            })
            .collect();
        if doomed.is_empty() {
            return Ok(());
        }
        let dir = self
            .root
            .dir(dir_comps, false)
            .map_err(|e| walk_err(e, raw))?;
        for n in &doomed {
            sp::remove_all_at(dir, n).map_err(|e| io_err("opaque clear", raw, e))?;
        }
        self.root.invalidate();
        Ok(())
    }

    fn implicit_dirs(&self) -> Vec<PathBuf> {
        if self.mode != ExtractMode::Overlay {
            return Vec::new();
        }
        let mut out: Vec<PathBuf> = Vec::new();
        if !self.root_explicit {
            out.push(PathBuf::new());
        }
        for c in &self.root.created {
            if self.seen.get(&self.keys.of(c, None)) != Some(&Seen::Dir) {
                out.push(join(c));
            }
        }
        out
    }

    /// Sets directory modes and mtimes now that their contents are written,
    /// in one iterative walk over the directories this layer touched (a walk
    /// from the root per directory would be quadratic in a deep layer).
    fn finish_dirs(&mut self) -> Result<(), LayerError> {
        if self.dirs.is_empty() {
            return Ok(());
        }
        let mut v = FinishDirs {
            ancestors: &self.ancestors,
            dirs: &self.dirs,
            stack: vec![self.keys.start()],
        };
        berth_fstree::walk_dirs(self.root.fd(), &mut v)
            .map_err(|e| io_err("set directory modes", self.root.path(), e))
    }
}

/// Where [`Extractor::finish_dirs`] is: one hash state per level.
struct FinishDirs<'a> {
    ancestors: &'a HashSet<PathKey>,
    dirs: &'a HashMap<PathKey, (u32, libc::timespec)>,
    stack: Vec<(DefaultHasher, DefaultHasher)>,
}

impl berth_fstree::DirVisitor for FinishDirs<'_> {
    fn enter(&mut self, name: &OsStr) -> io::Result<bool> {
        let Some(top) = self.stack.last() else {
            return Ok(false);
        };
        let mut next = top.clone();
        PathKeys::push(&mut next, name);
        let key = PathKeys::key(&next);
        if self.ancestors.contains(&key) || self.dirs.contains_key(&key) {
            self.stack.push(next);
            return Ok(true);
        }
        Ok(false)
    }

    fn leave(&mut self, dir: BorrowedFd<'_>) -> io::Result<()> {
        let Some(top) = self.stack.pop() else {
            return Ok(());
        };
        if let Some((mode, mtime)) = self.dirs.get(&PathKeys::key(&top)) {
            sp::fchmod(dir, *mode)?;
            sp::futimens(dir, *mtime)?;
        }
        Ok(())
    }
}

/// A path inside the layer, hashed: 128 bits from two independently keyed
/// SipHashes, so neither chance nor a crafted layer makes two paths collide.
type PathKey = u128;

struct PathKeys {
    a: RandomState,
    b: RandomState,
}

impl PathKeys {
    fn new() -> PathKeys {
        PathKeys {
            a: RandomState::new(),
            b: RandomState::new(),
        }
    }

    fn start(&self) -> (DefaultHasher, DefaultHasher) {
        (self.a.build_hasher(), self.b.build_hasher())
    }

    fn push(state: &mut (DefaultHasher, DefaultHasher), comp: &OsStr) {
        let bytes = comp.as_bytes();
        for h in [&mut state.0, &mut state.1] {
            h.write_usize(bytes.len());
            h.write(bytes);
        }
    }

    fn key(state: &(DefaultHasher, DefaultHasher)) -> PathKey {
        (u128::from(state.0.finish()) << 64) | u128::from(state.1.finish())
    }

    /// The key of `comps` (plus `last`).
    fn of(&self, comps: &[OsString], last: Option<&OsStr>) -> PathKey {
        let mut st = self.start();
        for c in comps.iter().map(OsString::as_os_str).chain(last) {
            Self::push(&mut st, c);
        }
        Self::key(&st)
    }

    /// The keys of every prefix of `comps`, the root's first.
    fn prefixes(&self, comps: &[OsString]) -> Vec<PathKey> {
        let mut st = self.start();
        let mut out = Vec::with_capacity(comps.len() + 1);
        out.push(Self::key(&st));
        for c in comps {
            Self::push(&mut st, c);
            out.push(Self::key(&st));
        }
        out
    }
}

fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>, raw: &Path) -> Result<Meta, LayerError> {
    let h = entry.header();
    let to_u32 = |v: io::Result<u64>, what: &str| -> Result<u32, LayerError> {
        let v = v.map_err(|e| malformed(raw, &format!("{what}: {e}")))?;
        u32::try_from(v).map_err(|_| malformed(raw, &format!("{what} {v} out of range")))
    };
    let mut uid = to_u32(h.uid(), "uid")?;
    let mut gid = to_u32(h.gid(), "gid")?;
    let mode = to_u32(h.mode().map(u64::from), "mode")?;
    let secs = h
        .mtime()
        .map_err(|e| malformed(raw, &format!("mtime: {e}")))?;
    let mut mtime = sp::timespec(i64::try_from(secs).unwrap_or(i64::MAX), 0);
    let mut xattrs = Vec::new();
    if let Some(pax) = entry
        .pax_extensions()
        .map_err(|e| malformed(raw, &format!("pax: {e}")))?
    {
        for ext in pax {
            let ext = ext.map_err(|e| malformed(raw, &format!("pax: {e}")))?;
            let key = ext.key_bytes();
            let value = ext.value_bytes();
            if key.starts_with(b"GNU.sparse.") {
                // PAX sparse maps (`tar --format=posix --sparse`) are not decoded
                // by the tar crate: extracting would write the map as content.
                return Err(malformed(
                    raw,
                    "PAX (GNU 0.x/1.0) sparse files are not supported",
                ));
            }
            if let Some(x) = key.strip_prefix(b"SCHILY.xattr.") {
                // overlayfs reads its own xattrs from lowerdirs: a layer must not
                // be able to set redirects, metacopy or opaque markers directly.
                if x.starts_with(b"trusted.overlay.") || x.starts_with(b"user.overlay.") {
                    continue;
                }
                xattrs.push((OsStr::from_bytes(x).to_os_string(), value.to_vec()));
            } else {
                let text = std::str::from_utf8(value).unwrap_or("");
                match key {
                    b"uid" => uid = parse_id(text).ok_or_else(|| malformed(raw, "pax uid"))?,
                    b"gid" => gid = parse_id(text).ok_or_else(|| malformed(raw, "pax gid"))?,
                    b"mtime" => {
                        mtime = parse_pax_time(text).ok_or_else(|| malformed(raw, "pax mtime"))?
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(Meta {
        uid,
        gid,
        mode,
        mtime,
        xattrs,
    })
}

fn parse_id(s: &str) -> Option<u32> {
    s.trim().parse().ok()
}

/// PAX times are decimal seconds with an optional fraction: `1700000000.123`.
fn parse_pax_time(s: &str) -> Option<libc::timespec> {
    let s = s.trim();
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let nanos: i64 = if digits.is_empty() {
        0
    } else {
        format!("{digits:0<9}").parse().ok()?
    };
    // A negative time with a fraction counts down: -1.5 is 2 s before the epoch plus 0.5 s.
    if s.starts_with('-') && nanos > 0 {
        return Some(sp::timespec(secs - 1, 1_000_000_000 - nanos));
    }
    Some(sp::timespec(secs, nanos))
}

enum SparseError {
    Read(io::Error),
    Write(io::Error),
}

const BLOCK: usize = 4096;

/// Copies `src` into `file`, leaving all-zero 4 KiB blocks as holes: layers
/// with large sparse files (database preallocations, `/var/log/lastlog`) stay
/// small on disk, and content is identical either way.
fn write_sparse(file: &File, src: &mut impl Read, buf: &mut [u8]) -> Result<u64, SparseError> {
    let mut off: u64 = 0;
    let mut data_end: u64 = 0;
    loop {
        let n = read_full(src, buf).map_err(SparseError::Read)?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        let mut i = 0;
        while i < n {
            let end = (i + BLOCK).min(n);
            if is_zero(&chunk[i..end]) {
                i = end;
                continue;
            }
            let start = i;
            while i < n {
                let end = (i + BLOCK).min(n);
                if is_zero(&chunk[i..end]) {
                    break;
                }
                i = end;
            }
            file.write_all_at(&chunk[start..i], off + start as u64)
                .map_err(SparseError::Write)?;
            data_end = off + i as u64;
        }
        off += n as u64;
    }
    if data_end < off {
        // Trailing hole: extend without writing.
        file.set_len(off).map_err(SparseError::Write)?;
    }
    Ok(off)
}

fn read_full(src: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match src.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn is_zero(b: &[u8]) -> bool {
    // OR-folding fixed chunks vectorizes; `iter().all` does not.
    b.chunks(64).all(|c| c.iter().fold(0u8, |a, x| a | x) == 0)
}

fn io_err(op: &'static str, path: &Path, source: io::Error) -> LayerError {
    LayerError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A create that found something in place: in overlay form that is a name
/// used twice in the layer (an implicit parent dir, then a non-dir entry).
fn create_err(op: &'static str, path: &Path, source: io::Error) -> LayerError {
    if source.raw_os_error() == Some(libc::EEXIST) {
        LayerError::Duplicate(path.to_path_buf())
    } else {
        io_err(op, path, source)
    }
}

fn malformed(path: &Path, detail: &str) -> LayerError {
    LayerError::Malformed {
        path: path.to_path_buf(),
        detail: detail.to_string(),
    }
}

fn walk_err(e: WalkError, raw: &Path) -> LayerError {
    match e {
        WalkError::Symlink(_) => LayerError::UnsafePath {
            path: raw.to_path_buf(),
            reason: "a parent is a symlink",
        },
        WalkError::NotADirectory(_) => LayerError::UnsafePath {
            path: raw.to_path_buf(),
            reason: "a parent is not a directory",
        },
        WalkError::Io(op, e) => io_err(op, raw, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times_parse() {
        let t = parse_pax_time("1700000000.5").expect("time");
        assert_eq!((t.tv_sec, t.tv_nsec), (1_700_000_000, 500_000_000));
        let t = parse_pax_time("12").expect("time");
        assert_eq!((t.tv_sec, t.tv_nsec), (12, 0));
        assert!(parse_pax_time("x").is_none());
    }

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0u8; 4096]));
        let mut b = [0u8; 4096];
        b[4095] = 1;
        assert!(!is_zero(&b));
    }

    #[test]
    fn sparse_write_keeps_content_and_makes_holes() {
        let t = tempfile::tempdir().expect("tempdir");
        let p = t.path().join("f");
        let f = File::create(&p).expect("create");
        let mut data = vec![0u8; 8 << 20];
        data[100] = 7;
        let last = data.len() - 1;
        data[last] = 9;
        let mut buf = vec![0u8; 1 << 20];
        let n = write_sparse(&f, &mut &data[..], &mut buf).unwrap_or_else(|_| panic!("write"));
        assert_eq!(n, data.len() as u64);
        drop(f);
        assert_eq!(std::fs::read(&p).expect("read"), data);
        use std::os::unix::fs::MetadataExt;
        let blocks = std::fs::metadata(&p).expect("meta").blocks();
        assert!(blocks * 512 < 1 << 20, "not sparse: {blocks} blocks");
    }
}
