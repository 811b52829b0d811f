//! Paths from a layer, resolved strictly inside a root directory.
//!
//! Every name from a tar is normalized to plain components (no `..`, no
//! absolute names) and every parent directory is opened one component at a time
//! with `O_NOFOLLOW | O_DIRECTORY` relative to the previous directory's fd. A
//! symlink in a parent position is an error, never followed: a layer made by a
//! real builder never writes through its own symlinks, and in overlay form a
//! symlink could not point into another layer anyway. All writes then happen
//! with `*at` syscalls on that parent fd, so no path is ever resolved twice.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Normalized components of an entry name, relative to the root; empty = the root.
pub type Components = Vec<OsString>;

/// Splits a tar entry name into safe components.
pub fn normalize(name: &Path) -> Result<Components, &'static str> {
    let bytes = name.as_os_str().as_bytes();
    if bytes.is_empty() {
        return Err("empty name");
    }
    if bytes.starts_with(b"/") {
        return Err("absolute name");
    }
    let mut out = Vec::new();
    for part in bytes.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err("`..` component"),
            p if p.contains(&0) => return Err("NUL byte in name"),
            p => out.push(OsStr::from_bytes(p).to_os_string()),
        }
    }
    Ok(out)
}

/// Joins components for messages and for path-based calls under a verified parent.
pub fn join(comps: &[OsString]) -> PathBuf {
    comps.iter().collect()
}

/// Why a parent directory could not be opened.
#[derive(Debug)]
pub enum WalkError {
    /// Component `.0` (index) is a symlink.
    Symlink(usize),
    /// Component `.0` exists and is not a directory.
    NotADirectory(usize),
    Io(&'static str, io::Error),
}

/// A directory that all paths are resolved under.
pub struct Root {
    path: PathBuf,
    fd: OwnedFd,
    /// Last parent opened: tars list siblings together, so this saves a walk per entry.
    cache: Option<(Components, OwnedFd)>,
    /// Directories `dir(_, true)` had to create (implicit parents), in order.
    pub created: Vec<Components>,
}

impl Root {
    /// Opens an existing directory as the root.
    pub fn open(path: &Path) -> io::Result<Root> {
        let fd = open_dir_path(path)?;
        Ok(Root {
            path: path.to_path_buf(),
            fd,
            cache: None,
            created: Vec::new(),
        })
    }

    /// The root's own path (for messages and path-based calls).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The root directory's fd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Forgets the cached parent; call after anything was removed or replaced.
    pub fn invalidate(&mut self) {
        self.cache = None;
    }

    /// Opens directory `comps` (creating missing ones with mode 0755 when
    /// `create`), caching it for the next call.
    pub fn dir(&mut self, comps: &[OsString], create: bool) -> Result<BorrowedFd<'_>, WalkError> {
        let hit = matches!(&self.cache, Some((c, _)) if c.as_slice() == comps);
        if !hit {
            let fd = match &self.cache {
                // Descend from the cached directory when it is a prefix.
                Some((c, fd)) if comps.starts_with(c) => {
                    walk(fd.as_fd(), c, &comps[c.len()..], create, &mut self.created)
                        .map_err(|e| shift(e, c.len()))?
                }
                _ => walk(self.fd.as_fd(), &[], comps, create, &mut self.created)?,
            };
            self.cache = Some((comps.to_vec(), fd));
        }
        match &self.cache {
            Some((_, fd)) => Ok(fd.as_fd()),
            None => Err(WalkError::Io("cache", io::Error::other("unreachable"))),
        }
    }

    /// Opens directory `comps` without touching the cache (for a second fd).
    pub fn dir_uncached(&self, comps: &[OsString], create: bool) -> Result<OwnedFd, WalkError> {
        walk(self.fd.as_fd(), &[], comps, create, &mut Vec::new())
    }
}

fn shift(e: WalkError, by: usize) -> WalkError {
    match e {
        WalkError::Symlink(i) => WalkError::Symlink(i + by),
        WalkError::NotADirectory(i) => WalkError::NotADirectory(i + by),
        other => other,
    }
}

/// Opens `base/comps` from `start` (which is `base`), recording created dirs.
fn walk(
    start: BorrowedFd<'_>,
    base: &[OsString],
    comps: &[OsString],
    create: bool,
    created: &mut Vec<Components>,
) -> Result<OwnedFd, WalkError> {
    let mut cur =
        openat(start, OsStr::new("."), DIR_FLAGS, 0).map_err(|e| WalkError::Io("open", e))?;
    for (i, c) in comps.iter().enumerate() {
        let next = match openat(cur.as_fd(), c, DIR_FLAGS, 0) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) && create => {
                match mkdirat(cur.as_fd(), c, 0o755) {
                    Ok(()) => {
                        let mut full = base.to_vec();
                        full.extend_from_slice(&comps[..=i]);
                        created.push(full);
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                    Err(e) => return Err(WalkError::Io("mkdir", e)),
                }
                openat(cur.as_fd(), c, DIR_FLAGS, 0).map_err(|e| classify(cur.as_fd(), c, e, i))?
            }
            Err(e) => return Err(classify(cur.as_fd(), c, e, i)),
        };
        cur = next;
    }
    Ok(cur)
}

/// `O_DIRECTORY | O_NOFOLLOW` on a symlink gives ELOOP or ENOTDIR depending on
/// the kernel; ask the inode which it is.
fn classify(dir: BorrowedFd<'_>, name: &OsStr, e: io::Error, i: usize) -> WalkError {
    match e.raw_os_error() {
        Some(libc::ELOOP) | Some(libc::ENOTDIR) => match lstatat(dir, name) {
            Ok(Some(st)) if st.st_mode & libc::S_IFMT == libc::S_IFLNK => WalkError::Symlink(i),
            Ok(Some(_)) => WalkError::NotADirectory(i),
            _ => WalkError::Io("open", e),
        },
        _ => WalkError::Io("open", e),
    }
}

const DIR_FLAGS: libc::c_int =
    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;

/// Opens a directory by path (trusted paths only: the store's own dirs).
pub fn open_dir_path(path: &Path) -> io::Result<OwnedFd> {
    let c = cstring(path.as_os_str())?;
    // SAFETY: `c` is a valid NUL-terminated string; the returned fd is owned below.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by open and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `name` as a C string; a NUL inside is an invalid-input error.
pub fn cstring(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in name"))
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `openat(2)`, owning the result.
pub fn openat(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    let c = cstring(name)?;
    // SAFETY: valid dirfd and C string; mode is passed as the variadic argument.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags, mode as libc::c_uint) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fd from openat.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `mkdirat(2)`.
pub fn mkdirat(dir: BorrowedFd<'_>, name: &OsStr, mode: libc::mode_t) -> io::Result<()> {
    let c = cstring(name)?;
    // SAFETY: valid dirfd and C string.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), mode) })
}

/// `mknodat(2)`.
pub fn mknodat(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    mode: libc::mode_t,
    dev: libc::dev_t,
) -> io::Result<()> {
    let c = cstring(name)?;
    // SAFETY: valid dirfd and C string.
    check(unsafe { libc::mknodat(dir.as_raw_fd(), c.as_ptr(), mode, dev) })
}

/// `symlinkat(2)`: creates `name` in `dir` pointing at `target` (never followed here).
pub fn symlinkat(target: &OsStr, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let t = cstring(target)?;
    let c = cstring(name)?;
    // SAFETY: valid C strings and dirfd.
    check(unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), c.as_ptr()) })
}

/// `linkat(2)` without `AT_SYMLINK_FOLLOW`: a symlink target is linked itself.
pub fn linkat(
    old_dir: BorrowedFd<'_>,
    old: &OsStr,
    new_dir: BorrowedFd<'_>,
    new: &OsStr,
) -> io::Result<()> {
    let o = cstring(old)?;
    let n = cstring(new)?;
    // SAFETY: valid C strings and dirfds.
    check(unsafe {
        libc::linkat(
            old_dir.as_raw_fd(),
            o.as_ptr(),
            new_dir.as_raw_fd(),
            n.as_ptr(),
            0,
        )
    })
}

/// `unlinkat(2)`; `dir_flag` removes an empty directory.
pub fn unlinkat(dir: BorrowedFd<'_>, name: &OsStr, dir_flag: bool) -> io::Result<()> {
    let c = cstring(name)?;
    let flags = if dir_flag { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: valid dirfd and C string.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), flags) })
}

/// `fchownat(2)` with `AT_SYMLINK_NOFOLLOW`.
pub fn lchownat(dir: BorrowedFd<'_>, name: &OsStr, uid: u32, gid: u32) -> io::Result<()> {
    let c = cstring(name)?;
    // SAFETY: valid dirfd and C string.
    check(unsafe {
        libc::fchownat(
            dir.as_raw_fd(),
            c.as_ptr(),
            uid,
            gid,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

/// `fchmodat(2)` on a name that is known not to be a symlink (just created by us).
pub fn chmodat(dir: BorrowedFd<'_>, name: &OsStr, mode: libc::mode_t) -> io::Result<()> {
    let c = cstring(name)?;
    // SAFETY: valid dirfd and C string.
    check(unsafe { libc::fchmodat(dir.as_raw_fd(), c.as_ptr(), mode, 0) })
}

/// `fchmod(2)`.
pub fn fchmod(fd: BorrowedFd<'_>, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: valid fd.
    check(unsafe { libc::fchmod(fd.as_raw_fd(), mode) })
}

/// `fchown(2)`.
pub fn fchown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: valid fd.
    check(unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) })
}

/// A timestamp for `utimensat`: seconds and nanoseconds.
pub fn timespec(secs: i64, nsecs: i64) -> libc::timespec {
    libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: nsecs as _,
    }
}

/// `utimensat(2)` with `AT_SYMLINK_NOFOLLOW`, setting atime = mtime.
pub fn lutimesat(dir: BorrowedFd<'_>, name: &OsStr, t: libc::timespec) -> io::Result<()> {
    let c = cstring(name)?;
    let times = [t, t];
    // SAFETY: valid dirfd, C string and a 2-element timespec array.
    check(unsafe {
        libc::utimensat(
            dir.as_raw_fd(),
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

/// `futimens(2)`, setting atime = mtime.
pub fn futimens(fd: BorrowedFd<'_>, t: libc::timespec) -> io::Result<()> {
    let times = [t, t];
    // SAFETY: valid fd and a 2-element timespec array.
    check(unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) })
}

/// `fsetxattr(2)`.
pub fn fsetxattr(fd: BorrowedFd<'_>, key: &OsStr, value: &[u8]) -> io::Result<()> {
    let k = cstring(key)?;
    // SAFETY: valid fd, C string and byte slice.
    check(unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            k.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
}

/// `flistxattr(2)`: names of the xattrs of `fd`.
pub fn flistxattr(fd: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: valid fd and buffer of the given length.
        let n = unsafe { libc::flistxattr(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            buf.truncate(n as usize);
            break;
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) || buf.len() >= 1 << 20 {
            return Err(e);
        }
        buf.resize(buf.len() * 4, 0);
    }
    Ok(buf
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| OsStr::from_bytes(n).to_os_string())
        .collect())
}

/// `fgetxattr(2)`: one xattr value of `fd`.
pub fn fgetxattr(fd: BorrowedFd<'_>, key: &OsStr) -> io::Result<Vec<u8>> {
    let k = cstring(key)?;
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: valid fd, C string and buffer of the given length.
        let n = unsafe {
            libc::fgetxattr(
                fd.as_raw_fd(),
                k.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(buf);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) || buf.len() >= 1 << 20 {
            return Err(e);
        }
        buf.resize(buf.len() * 4, 0);
    }
}

/// `fstat(2)`.
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: valid fd and out-pointer.
    check(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded and filled `st`.
    Ok(unsafe { st.assume_init() })
}

/// `lsetxattr(2)` on `name` inside `dir` without following it: goes through
/// `/proc/self/fd/<dir>/<name>`, which resolves the directory by fd and leaves
/// the last component unfollowed (there is no `setxattrat` before Linux 6.13).
pub fn lsetxattrat(dir: BorrowedFd<'_>, name: &OsStr, key: &OsStr, value: &[u8]) -> io::Result<()> {
    let mut p = OsString::from(format!("/proc/self/fd/{}/", dir.as_raw_fd()));
    p.push(name);
    let path = cstring(&p)?;
    let k = cstring(key)?;
    // SAFETY: valid C strings and byte slice.
    check(unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            k.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
}

/// `fstatat(2)` with `AT_SYMLINK_NOFOLLOW`; `Ok(None)` when absent.
pub fn lstatat(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<libc::stat>> {
    let c = cstring(name)?;
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: valid dirfd, C string and out-pointer.
    let r = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            c.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOENT) {
            return Ok(None);
        }
        return Err(e);
    }
    // SAFETY: fstatat succeeded and filled `st`.
    Ok(Some(unsafe { st.assume_init() }))
}

/// Removes `name` in `dir`, recursively for directories, never following
/// symlinks; iterative, so a layer's depth cannot overflow the stack.
pub fn remove_all_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    berth_fstree::remove_tree_at(dir, name)
}

/// Names in directory `fd` (without `.` and `..`).
pub fn list_dir(fd: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    let p = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    let mut out = Vec::new();
    for e in std::fs::read_dir(p)? {
        out.push(e?.file_name());
    }
    Ok(out)
}

/// `syncfs(2)`: flush the whole filesystem `fd` lives on. One call instead of an
/// fsync per file; layers have many small files.
pub fn syncfs(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: valid fd.
    check(unsafe { libc::syncfs(fd.as_raw_fd()) })
}

/// `fsync(2)` on a directory or file fd.
pub fn fsync(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: valid fd.
    check(unsafe { libc::fsync(fd.as_raw_fd()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Components {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn normalize_accepts_plain_and_dotted() {
        assert_eq!(
            normalize(Path::new("a/b/c")).expect("ok"),
            names(&["a", "b", "c"])
        );
        assert_eq!(
            normalize(Path::new("./a//b/./")).expect("ok"),
            names(&["a", "b"])
        );
        assert!(normalize(Path::new("./")).expect("root").is_empty());
    }

    #[test]
    fn normalize_refuses_escapes() {
        for bad in ["/etc/passwd", "../x", "a/../../x", "a/..", ""] {
            assert!(normalize(Path::new(bad)).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn walk_refuses_symlink_parents_and_creates_missing() {
        let t = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink("/", t.path().join("link")).expect("symlink");
        std::fs::write(t.path().join("file"), b"x").expect("file");
        let mut root = Root::open(t.path()).expect("root");
        assert!(matches!(
            root.dir(&names(&["link", "etc"]), true),
            Err(WalkError::Symlink(0))
        ));
        assert!(matches!(
            root.dir(&names(&["file", "x"]), true),
            Err(WalkError::NotADirectory(0))
        ));
        root.dir(&names(&["a", "b"]), true).expect("create");
        assert!(t.path().join("a/b").is_dir());
        // From the cached prefix.
        root.dir(&names(&["a", "b", "c"]), true).expect("create");
        assert!(t.path().join("a/b/c").is_dir());
        assert!(matches!(
            root.dir(&names(&["a", "b", "c", "link2"]), false),
            Err(WalkError::Io(_, _))
        ));
    }
}
