//! Helpers shared by the snapshot tests: layer tars built byte by byte (so that
//! malicious names the `tar` crate's own checks would refuse can be written),
//! compression, diff_ids, and a file-by-file tree comparison.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use berth_layer_unpacker::snapshot::{LayerSpec, Limits};
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

pub const MT_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MT_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MT_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Fails a test that cannot run without root: CI runs as root, and a test that
/// passes without having run would hide a regression.
pub fn require_root(test: &str) {
    assert!(
        is_root(),
        "cannot run {test}: needs root (mknod, chown, trusted.* xattrs)"
    );
}

pub fn limits() -> Limits {
    Limits {
        max_uncompressed_bytes: 1 << 30,
        max_entries: 100_000,
        allow_devices: true,
        preserve_owner: is_root(),
    }
}

pub fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// One entry of a hand-built tar.
pub struct Ent {
    pub name: Vec<u8>,
    pub kind: EntryType,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub link: Vec<u8>,
    pub data: Vec<u8>,
    pub dev: (u32, u32),
    pub pax: Vec<(String, Vec<u8>)>,
}

impl Ent {
    fn new(name: &str, kind: EntryType, mode: u32) -> Ent {
        Ent {
            name: name.as_bytes().to_vec(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: 1_600_000_000,
            link: Vec::new(),
            data: Vec::new(),
            dev: (0, 0),
            pax: Vec::new(),
        }
    }
    pub fn dir(name: &str) -> Ent {
        Ent::new(name, EntryType::Directory, 0o755)
    }
    pub fn file(name: &str, data: &[u8]) -> Ent {
        let mut e = Ent::new(name, EntryType::Regular, 0o644);
        e.data = data.to_vec();
        e
    }
    pub fn symlink(name: &str, target: &str) -> Ent {
        let mut e = Ent::new(name, EntryType::Symlink, 0o777);
        e.link = target.as_bytes().to_vec();
        e
    }
    pub fn hardlink(name: &str, target: &str) -> Ent {
        let mut e = Ent::new(name, EntryType::Link, 0o644);
        e.link = target.as_bytes().to_vec();
        e
    }
    pub fn chardev(name: &str, major: u32, minor: u32) -> Ent {
        let mut e = Ent::new(name, EntryType::Char, 0o666);
        e.dev = (major, minor);
        e
    }
    pub fn blockdev(name: &str, major: u32, minor: u32) -> Ent {
        let mut e = Ent::new(name, EntryType::Block, 0o660);
        e.dev = (major, minor);
        e
    }
    pub fn fifo(name: &str) -> Ent {
        Ent::new(name, EntryType::Fifo, 0o600)
    }
    pub fn mode(mut self, m: u32) -> Ent {
        self.mode = m;
        self
    }
    pub fn owner(mut self, uid: u64, gid: u64) -> Ent {
        self.uid = uid;
        self.gid = gid;
        self
    }
    pub fn mtime(mut self, t: u64) -> Ent {
        self.mtime = t;
        self
    }
    pub fn xattr(mut self, k: &str, v: &[u8]) -> Ent {
        self.pax.push((format!("SCHILY.xattr.{k}"), v.to_vec()));
        self
    }
    pub fn pax(mut self, k: &str, v: &[u8]) -> Ent {
        self.pax.push((k.to_string(), v.to_vec()));
        self
    }
}

/// Serializes entries with raw header fields: names are copied as given.
pub fn tar_of(entries: &[Ent]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        if !e.pax.is_empty() {
            b.append_pax_extensions(e.pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .expect("pax");
        }
        if e.name.len() > 100 {
            // GNU long name: a `././@LongLink` entry carrying the name.
            let mut h = Header::new_gnu();
            h.as_gnu_mut().expect("gnu").name[..13].copy_from_slice(b"././@LongLink");
            h.set_entry_type(EntryType::GNULongName);
            h.set_size(e.name.len() as u64 + 1);
            h.set_mode(0o644);
            h.set_cksum();
            let mut data = e.name.clone();
            data.push(0);
            b.append(&h, &data[..]).expect("longname");
        }
        let mut h = Header::new_gnu();
        {
            let g = h.as_gnu_mut().expect("gnu");
            let n = e.name.len().min(100);
            g.name[..n].copy_from_slice(&e.name[..n]);
        }
        h.set_entry_type(e.kind);
        h.set_mode(e.mode);
        h.set_uid(e.uid);
        h.set_gid(e.gid);
        h.set_mtime(e.mtime);
        h.set_size(e.data.len() as u64);
        if !e.link.is_empty() {
            h.set_link_name_literal(&e.link).expect("link");
        }
        if matches!(e.kind, EntryType::Char | EntryType::Block) {
            h.set_device_major(e.dev.0).expect("major");
            h.set_device_minor(e.dev.1).expect("minor");
        }
        h.set_cksum();
        b.append(&h, &e.data[..]).expect("append");
    }
    b.into_inner().expect("finish")
}

/// A layer blob and its spec.
pub struct Layer {
    pub blob: Vec<u8>,
    pub spec: LayerSpec,
    pub tar: Vec<u8>,
}

#[derive(Clone, Copy)]
pub enum Comp {
    None,
    Gzip,
    Zstd,
}

pub fn layer(tar: Vec<u8>, comp: Comp) -> Layer {
    let (blob, mt) = match comp {
        Comp::None => (tar.clone(), MT_TAR),
        Comp::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&tar).expect("gzip");
            (e.finish().expect("gzip"), MT_GZIP)
        }
        Comp::Zstd => (zstd::encode_all(&tar[..], 3).expect("zstd"), MT_ZSTD),
    };
    Layer {
        spec: LayerSpec {
            digest: sha256(&blob),
            media_type: mt.to_string(),
            diff_id: sha256(&tar),
        },
        blob,
        tar,
    }
}

pub fn gz_layer(entries: &[Ent]) -> Layer {
    layer(tar_of(entries), Comp::Gzip)
}

/// An opener over in-memory blobs, counting how often each is opened.
pub struct Blobs {
    pub by_digest: BTreeMap<String, Vec<u8>>,
    pub opened: std::sync::Mutex<Vec<String>>,
}

impl Blobs {
    pub fn new(layers: &[&Layer]) -> Blobs {
        Blobs {
            by_digest: layers
                .iter()
                .map(|l| (l.spec.digest.clone(), l.blob.clone()))
                .collect(),
            opened: std::sync::Mutex::new(Vec::new()),
        }
    }
    pub fn open(&self, spec: &LayerSpec) -> std::io::Result<Box<dyn Read + Send>> {
        self.opened.lock().expect("lock").push(spec.digest.clone());
        let b = self
            .by_digest
            .get(&spec.digest)
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no blob"))?;
        Ok(Box::new(std::io::Cursor::new(b.clone())))
    }
    pub fn opened(&self) -> usize {
        self.opened.lock().expect("lock").len()
    }
}

/// What a test compares about one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// File content hash, symlink target, or device number.
    pub what: String,
    /// Non-directory mtime (directory mtimes change with any later edit).
    pub mtime: Option<i64>,
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// For hardlinks: the smallest path sharing this inode.
    pub link_group: Option<PathBuf>,
}

/// Every path under `root` (not `root` itself), symlinks not followed.
pub fn tree(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), Vec<PathBuf>> = BTreeMap::new();
    walk(root, root, &mut out, &mut inodes);
    for paths in inodes.values() {
        if paths.len() > 1 {
            let min = paths.iter().min().cloned();
            for p in paths {
                if let Some(n) = out.get_mut(p) {
                    n.link_group = min.clone();
                }
            }
        }
    }
    out
}

fn walk(
    root: &Path,
    dir: &Path,
    out: &mut BTreeMap<PathBuf, Node>,
    inodes: &mut BTreeMap<(u64, u64), Vec<PathBuf>>,
) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for p in entries {
        let md = std::fs::symlink_metadata(&p).expect("lstat");
        let ft = md.file_type();
        let rel = p.strip_prefix(root).expect("prefix").to_path_buf();
        let (kind, what) = if ft.is_dir() {
            ("dir", String::new())
        } else if ft.is_file() {
            let data = std::fs::read(&p).expect("read");
            ("file", sha256(&data))
        } else if ft.is_symlink() {
            let t = std::fs::read_link(&p).expect("readlink");
            ("symlink", t.to_string_lossy().into_owned())
        } else if ft.is_char_device() {
            ("char", format!("{:x}", md.rdev()))
        } else if ft.is_block_device() {
            ("block", format!("{:x}", md.rdev()))
        } else if ft.is_fifo() {
            ("fifo", String::new())
        } else {
            ("socket", String::new())
        };
        if !ft.is_dir() && md.nlink() > 1 {
            inodes
                .entry((md.dev(), md.ino()))
                .or_default()
                .push(rel.clone());
        }
        out.insert(
            rel,
            Node {
                kind,
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                what,
                mtime: (!ft.is_dir()).then_some(md.mtime()),
                xattrs: xattrs(&p),
                link_group: None,
            },
        );
        if ft.is_dir() {
            walk(root, &p, out, inodes);
        }
    }
}

/// All xattrs of `p` (not following symlinks).
pub fn xattrs(p: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let c = CString::new(p.as_os_str().as_bytes()).expect("path");
    let mut names = vec![0u8; 65536];
    // SAFETY: valid C string and buffer.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n <= 0 {
        return out;
    }
    for name in names[..n as usize]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
    {
        let cname = CString::new(name).expect("name");
        let mut val = vec![0u8; 65536];
        // SAFETY: valid C strings and buffer.
        let m = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                cname.as_ptr(),
                val.as_mut_ptr().cast(),
                val.len(),
            )
        };
        if m >= 0 {
            val.truncate(m as usize);
            out.insert(String::from_utf8_lossy(name).into_owned(), val);
        }
    }
    out
}

/// Asserts two trees are equal, listing every difference.
pub fn assert_same_tree(
    a_name: &str,
    a: &BTreeMap<PathBuf, Node>,
    b_name: &str,
    b: &BTreeMap<PathBuf, Node>,
) {
    let mut diffs = Vec::new();
    for (p, n) in a {
        match b.get(p) {
            None => diffs.push(format!("{}: only in {a_name}", p.display())),
            Some(m) if m != n => diffs.push(format!(
                "{}:\n  {a_name}: {n:?}\n  {b_name}: {m:?}",
                p.display()
            )),
            _ => {}
        }
    }
    for p in b.keys() {
        if !a.contains_key(p) {
            diffs.push(format!("{}: only in {b_name}", p.display()));
        }
    }
    assert!(diffs.is_empty(), "trees differ:\n{}", diffs.join("\n"));
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

pub fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// Streams the tar of `d/`, `d/d/`, … `depth` levels down with a file `f` at
/// the bottom, generated level by level: at 20,000 levels the names alone are
/// 400 MB, too much to build in memory.
pub struct DeepTar {
    depth: usize,
    level: usize,
    buf: Vec<u8>,
    pos: usize,
}

impl DeepTar {
    pub fn new(depth: usize) -> DeepTar {
        DeepTar {
            depth,
            level: 0,
            buf: Vec::new(),
            pos: 0,
        }
    }

    fn entry(out: &mut Vec<u8>, name: &[u8], kind: EntryType, data: &[u8]) {
        if name.len() > 100 {
            let mut h = Header::new_gnu();
            h.as_gnu_mut().expect("gnu").name[..13].copy_from_slice(b"././@LongLink");
            h.set_entry_type(EntryType::GNULongName);
            h.set_size(name.len() as u64 + 1);
            h.set_mode(0o644);
            h.set_cksum();
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(name);
            out.push(0);
            out.resize(out.len().next_multiple_of(512), 0);
        }
        let mut h = Header::new_gnu();
        let n = name.len().min(100);
        h.as_gnu_mut().expect("gnu").name[..n].copy_from_slice(&name[..n]);
        h.set_entry_type(kind);
        h.set_mode(if kind == EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_mtime(1_600_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(data.len() as u64);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(512), 0);
    }

    /// The next level's entries; false at the end.
    fn refill(&mut self) -> bool {
        self.buf.clear();
        self.pos = 0;
        self.level += 1;
        if self.level <= self.depth {
            let name = b"d/".repeat(self.level);
            Self::entry(&mut self.buf, &name, EntryType::Directory, b"");
        } else if self.level == self.depth + 1 {
            let mut name = b"d/".repeat(self.depth);
            name.push(b'f');
            Self::entry(&mut self.buf, &name, EntryType::Regular, b"deep");
            self.buf.extend_from_slice(&[0u8; 1024]);
        } else {
            return false;
        }
        true
    }
}

impl Read for DeepTar {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == self.buf.len() && !self.refill() {
            return Ok(0);
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The uncompressed layer spec of [`DeepTar`] at `depth`.
pub fn deep_spec(depth: usize) -> LayerSpec {
    let mut h = Sha256::new();
    let mut r = DeepTar::new(depth);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf).expect("generate");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let diff_id = format!("sha256:{}", hex::encode(h.finalize()));
    LayerSpec {
        // Uncompressed: the blob is the tar.
        digest: diff_id.clone(),
        media_type: MT_TAR.to_string(),
        diff_id,
    }
}
