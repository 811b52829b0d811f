//! Walks over directory trees that a container or an image layer controls.
//!
//! Such a tree can be arbitrarily deep (a container can build 25,000 levels
//! with `mkdir t && mv d t/d && mv t d` in a loop), so nothing here recurses:
//! a recursive walk overflows the stack of the thread running it and takes the
//! whole service down. Nothing here builds ever-longer path strings either (they
//! stop working at `PATH_MAX`): every step is a `*at` call on the fd of the
//! directory it is in, and only one directory fd per tree is open at a time.
//!
//! Going back up uses `openat(dir, "..")`, checked against the device and inode
//! recorded on the way down, so a directory moved away while the walk is in it
//! makes the walk fail instead of continuing somewhere else. Symlinks are never
//! followed (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`).

use std::ffi::{CStr, CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const DIR_FLAGS: libc::c_int =
    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;

/// How many times a directory that refills while being removed is emptied again
/// before giving up (a process still writing into the tree would loop forever).
const MAX_REFILLS: u32 = 64;

/// Removes `path` and, for a directory, everything below it, without following
/// symlinks below `path` (`path`'s own parent is resolved normally: it is the
/// caller's, trusted). A missing `path` is not an error.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let (parent, name) = split(path)?;
    let dir = match open_path(parent) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(with_path("open", parent, e)),
    };
    remove_tree_at(dir.as_fd(), name).map_err(|e| with_path("remove", path, e))
}

/// Removes `name` in directory `dir`, recursively for a directory, never
/// following symlinks. A missing `name` is not an error.
pub fn remove_tree_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let Some(st) = lstat_at(dir, name)? else {
        return Ok(());
    };
    if !is_dir(&st) {
        return ok_if_gone(unlink_at(dir, name, 0));
    }
    // Most directories are removed empty-or-not in one call.
    match unlink_at(dir, name, libc::AT_REMOVEDIR) {
        Ok(()) => return Ok(()),
        Err(e) if errno(&e) == libc::ENOENT => return Ok(()),
        Err(e) if not_empty(&e) => {}
        Err(e) => return Err(e),
    }
    let top = open_dir_at(dir, name)?;
    let top_st = fstat(top.as_fd())?;
    let mut cur = top;
    let mut stack = vec![Frame {
        name: name.to_os_string(),
        id: (top_st.st_dev, top_st.st_ino),
        pending: empty_files(cur.as_fd())?,
    }];
    let mut refills = 0u32;
    loop {
        let Some(top) = stack.last_mut() else {
            return Ok(());
        };
        if let Some(child) = top.pending.pop() {
            match unlink_at(cur.as_fd(), &child, libc::AT_REMOVEDIR) {
                Ok(()) => continue,
                Err(e) if errno(&e) == libc::ENOENT => continue,
                // Replaced by a non-directory since it was listed.
                Err(e) if errno(&e) == libc::ENOTDIR => {
                    ok_if_gone(unlink_at(cur.as_fd(), &child, 0))?;
                    continue;
                }
                Err(e) if not_empty(&e) => {}
                Err(e) => return Err(named("rmdir", &child, e)),
            }
            let fd = match open_dir_at(cur.as_fd(), &child) {
                Ok(fd) => fd,
                Err(e) if errno(&e) == libc::ENOENT => continue,
                Err(e) if matches!(errno(&e), libc::ENOTDIR | libc::ELOOP) => {
                    ok_if_gone(unlink_at(cur.as_fd(), &child, 0))?;
                    continue;
                }
                Err(e) => return Err(named("open", &child, e)),
            };
            let st = fstat(fd.as_fd())?;
            let pending = empty_files(fd.as_fd()).map_err(|e| named("empty", &child, e))?;
            stack.push(Frame {
                name: child,
                id: (st.st_dev, st.st_ino),
                pending,
            });
            cur = fd;
            continue;
        }
        // Everything below the top frame is gone: remove it from its parent.
        let Some(done) = stack.pop() else {
            return Ok(());
        };
        let parent_fd;
        let parent = match stack.last() {
            None => dir,
            Some(p) => {
                parent_fd = up(cur.as_fd(), p.id)?;
                cur = parent_fd;
                cur.as_fd()
            }
        };
        match unlink_at(parent, &done.name, libc::AT_REMOVEDIR) {
            Ok(()) => {}
            Err(e) if errno(&e) == libc::ENOENT => {}
            Err(e) if not_empty(&e) && refills < MAX_REFILLS => {
                // Something was created in it meanwhile: empty it again.
                refills += 1;
                match stack.last_mut() {
                    Some(p) => p.pending.push(done.name),
                    None => {
                        cur = open_dir_at(dir, &done.name)?;
                        let pending = empty_files(cur.as_fd())?;
                        stack.push(Frame { pending, ..done });
                    }
                }
            }
            Err(e) => return Err(named("rmdir", &done.name, e)),
        }
    }
}

/// A directory on the way down: its name in its parent, its identity (to check
/// `..` against on the way back) and the subdirectories still to remove.
struct Frame {
    name: OsString,
    id: (libc::dev_t, libc::ino_t),
    pending: Vec<OsString>,
}

/// Opens the parent of `cur` through `..` and checks it is the directory the
/// walk came down from.
fn up(cur: BorrowedFd<'_>, expect: (libc::dev_t, libc::ino_t)) -> io::Result<OwnedFd> {
    let fd = open_dir_at(cur, OsStr::new(".."))?;
    let st = fstat(fd.as_fd())?;
    if (st.st_dev, st.st_ino) != expect {
        return Err(io::Error::other(
            "a directory was moved while its tree was being walked",
        ));
    }
    Ok(fd)
}

/// Unlinks every non-directory in `dir`; returns the names of its subdirectories.
fn empty_files(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    let mut dirs = Vec::new();
    let mut stream = DirStream::open(dir)?;
    while let Some(entry) = stream.next_entry()? {
        let (name, kind) = entry;
        let is_subdir = match kind {
            libc::DT_DIR => true,
            libc::DT_UNKNOWN => lstat_at(dir, &name)?.is_some_and(|st| is_dir(&st)),
            _ => false,
        };
        if is_subdir {
            dirs.push(name);
            continue;
        }
        match unlink_at(dir, &name, 0) {
            Ok(()) => {}
            Err(e) if errno(&e) == libc::ENOENT => {}
            // Became a directory since it was listed.
            Err(e) if errno(&e) == libc::EISDIR => dirs.push(name),
            Err(e) => return Err(named("unlink", &name, e)),
        }
    }
    Ok(dirs)
}

/// Copies the content of directory `from` into the existing, empty directory
/// `to`: regular files, directories and symlinks (as links, never followed),
/// with owner and mode; `to` itself takes `from`'s owner and mode. Devices,
/// fifos and sockets are skipped. Directory modes are set once their content
/// is written, so a read-only directory copies too.
pub fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    let src = open_path(from).map_err(|e| with_path("open", from, e))?;
    let dst = open_path(to).map_err(|e| with_path("open", to, e))?;
    copy_tree_fd(src, dst).map_err(|e| with_path("copy", from, e))
}

struct CopyFrame {
    src_id: (libc::dev_t, libc::ino_t),
    dst_id: (libc::dev_t, libc::ino_t),
    /// Owner and mode to give the copy once its content is written.
    meta: (u32, u32, libc::mode_t),
    /// Subdirectories of the source still to copy.
    pending: Vec<OsString>,
}

fn copy_tree_fd(src: OwnedFd, dst: OwnedFd) -> io::Result<()> {
    let (mut src, mut dst) = (src, dst);
    let sst = fstat(src.as_fd())?;
    let dst_st = fstat(dst.as_fd())?;
    let mut stack = vec![CopyFrame {
        src_id: (sst.st_dev, sst.st_ino),
        dst_id: (dst_st.st_dev, dst_st.st_ino),
        meta: (sst.st_uid, sst.st_gid, sst.st_mode & 0o7777),
        pending: copy_leaves(src.as_fd(), dst.as_fd())?,
    }];
    loop {
        let Some(top) = stack.last_mut() else {
            return Ok(());
        };
        if let Some(child) = top.pending.pop() {
            let s = match open_dir_at(src.as_fd(), &child) {
                Ok(fd) => fd,
                // Gone or replaced since it was listed: copy what is there now.
                Err(e) if matches!(errno(&e), libc::ENOENT | libc::ENOTDIR | libc::ELOOP) => {
                    continue
                }
                Err(e) => return Err(named("open", &child, e)),
            };
            let st = fstat(s.as_fd())?;
            mkdir_at(dst.as_fd(), &child, 0o700).map_err(|e| named("mkdir", &child, e))?;
            let d = open_dir_at(dst.as_fd(), &child).map_err(|e| named("open", &child, e))?;
            let dst_st = fstat(d.as_fd())?;
            let pending =
                copy_leaves(s.as_fd(), d.as_fd()).map_err(|e| named("copy", &child, e))?;
            stack.push(CopyFrame {
                src_id: (st.st_dev, st.st_ino),
                dst_id: (dst_st.st_dev, dst_st.st_ino),
                meta: (st.st_uid, st.st_gid, st.st_mode & 0o7777),
                pending,
            });
            (src, dst) = (s, d);
            continue;
        }
        let Some(done) = stack.pop() else {
            return Ok(());
        };
        let (uid, gid, mode) = done.meta;
        fchown(dst.as_fd(), uid, gid)?;
        fchmod(dst.as_fd(), mode)?;
        if let Some(p) = stack.last() {
            src = up(src.as_fd(), p.src_id)?;
            dst = up(dst.as_fd(), p.dst_id)?;
        }
    }
}

/// Copies the non-directories of `src` into `dst`; returns the subdirectory names.
fn copy_leaves(src: BorrowedFd<'_>, dst: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    let mut dirs = Vec::new();
    let mut stream = DirStream::open(src)?;
    while let Some((name, _)) = stream.next_entry()? {
        let Some(st) = lstat_at(src, &name)? else {
            continue;
        };
        let fmt = st.st_mode & libc::S_IFMT;
        match fmt {
            libc::S_IFDIR => {
                dirs.push(name);
                continue;
            }
            libc::S_IFLNK => {
                let target = readlink_at(src, &name).map_err(|e| named("readlink", &name, e))?;
                symlink_at(&target, dst, &name).map_err(|e| named("symlink", &name, e))?;
                lchown_at(dst, &name, st.st_uid, st.st_gid)
                    .map_err(|e| named("chown", &name, e))?;
            }
            libc::S_IFREG => {
                let from = match open_at(src, &name, libc::O_RDONLY | libc::O_NOFOLLOW, 0) {
                    Ok(fd) => fd,
                    Err(e) if errno(&e) == libc::ENOENT => continue,
                    Err(e) => return Err(named("open", &name, e)),
                };
                let to = open_at(
                    dst,
                    &name,
                    libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                    0o600,
                )
                .map_err(|e| named("create", &name, e))?;
                let mut r = std::fs::File::from(from);
                let mut w = std::fs::File::from(to);
                io::copy(&mut r, &mut w).map_err(|e| named("copy", &name, e))?;
                fchown(w.as_fd(), st.st_uid, st.st_gid).map_err(|e| named("chown", &name, e))?;
                fchmod(w.as_fd(), st.st_mode & 0o7777).map_err(|e| named("chmod", &name, e))?;
            }
            // Devices, fifos and sockets in an image volume: not worth a mknod.
            _ => {}
        }
    }
    Ok(dirs)
}

/// What [`walk_dirs`] reports. It says only which name it goes into and when
/// it leaves, never a whole path: a visitor that needs one keeps its own stack,
/// so a deep tree costs constant work per directory.
pub trait DirVisitor {
    /// Whether to go into subdirectory `name` of the directory the walk is in.
    /// When true, a matching [`DirVisitor::leave`] follows.
    fn enter(&mut self, name: &OsStr) -> io::Result<bool>;
    /// Everything below the directory was visited; `dir` is the directory.
    fn leave(&mut self, dir: BorrowedFd<'_>) -> io::Result<()>;
}

/// Walks the directories below `root` that the visitor enters, depth first,
/// iteratively and without following symlinks; `leave` comes after a
/// directory's subdirectories (post-order), for `root` last (without `enter`).
pub fn walk_dirs(root: BorrowedFd<'_>, visitor: &mut impl DirVisitor) -> io::Result<()> {
    let mut cur = open_dir_at(root, OsStr::new("."))?;
    let st = fstat(cur.as_fd())?;
    let mut stack = vec![(st.st_dev, st.st_ino, subdirs(cur.as_fd())?)];
    loop {
        let Some((_, _, pending)) = stack.last_mut() else {
            return Ok(());
        };
        if let Some(child) = pending.pop() {
            if !visitor.enter(&child)? {
                continue;
            }
            let fd = open_dir_at(cur.as_fd(), &child).map_err(|e| named("open", &child, e))?;
            let st = fstat(fd.as_fd())?;
            let pending = subdirs(fd.as_fd()).map_err(|e| named("list", &child, e))?;
            stack.push((st.st_dev, st.st_ino, pending));
            cur = fd;
            continue;
        }
        visitor.leave(cur.as_fd())?;
        stack.pop();
        if let Some((dev, ino, _)) = stack.last() {
            cur = up(cur.as_fd(), (*dev, *ino))?;
        }
    }
}

/// Names of the subdirectories of `dir`.
fn subdirs(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    let mut out = Vec::new();
    let mut stream = DirStream::open(dir)?;
    while let Some((name, kind)) = stream.next_entry()? {
        let is_subdir = match kind {
            libc::DT_DIR => true,
            libc::DT_UNKNOWN => lstat_at(dir, &name)?.is_some_and(|st| is_dir(&st)),
            _ => false,
        };
        if is_subdir {
            out.push(name);
        }
    }
    Ok(out)
}

/// A `readdir` stream over a duplicate of a directory fd.
struct DirStream(*mut libc::DIR);

impl DirStream {
    fn open(dir: BorrowedFd<'_>) -> io::Result<DirStream> {
        // SAFETY: plain fcntl on a valid fd.
        let fd = unsafe { libc::fcntl(dir.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh fd we own; fdopendir takes it over on success.
        let d = unsafe { libc::fdopendir(fd) };
        if d.is_null() {
            let e = io::Error::last_os_error();
            // SAFETY: fdopendir failed, so `fd` is still ours to close.
            unsafe { libc::close(fd) };
            return Err(e);
        }
        // The duplicate shares the file offset: a directory read before (a
        // rescan) would otherwise start at its end.
        // SAFETY: valid DIR pointer.
        unsafe { libc::rewinddir(d) };
        Ok(DirStream(d))
    }

    fn next_entry(&mut self) -> io::Result<Option<(OsString, u8)>> {
        loop {
            // SAFETY: errno is thread-local; readdir reports errors only through it.
            unsafe { *libc::__errno_location() = 0 };
            // SAFETY: valid DIR pointer, used by this thread only.
            let ent = unsafe { libc::readdir(self.0) };
            if ent.is_null() {
                let e = io::Error::last_os_error();
                return match e.raw_os_error() {
                    Some(0) | None => Ok(None),
                    Some(_) => Err(e),
                };
            }
            // SAFETY: readdir returned a valid entry with a NUL-terminated name.
            let (name, kind) = unsafe { (CStr::from_ptr((*ent).d_name.as_ptr()), (*ent).d_type) };
            let name = name.to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            return Ok(Some((OsStr::from_bytes(name).to_os_string(), kind)));
        }
    }
}

impl Drop for DirStream {
    fn drop(&mut self) {
        // SAFETY: the DIR pointer is valid and closed exactly once.
        unsafe { libc::closedir(self.0) };
    }
}

fn split(path: &Path) -> io::Result<(&Path, &OsStr)> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} has no final name", path.display()),
        )
    })?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Ok((parent, name))
}

fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

fn not_empty(e: &io::Error) -> bool {
    matches!(errno(e), libc::ENOTEMPTY | libc::EEXIST)
}

fn ok_if_gone(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if errno(&e) == libc::ENOENT => Ok(()),
        other => other,
    }
}

fn named(op: &str, name: &OsStr, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{op} {:?}: {e}", name))
}

fn with_path(op: &str, path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{op} {}: {e}", path.display()))
}

fn cstring(name: &OsStr) -> io::Result<CString> {
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

fn own(fd: libc::c_int) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd returned by the kernel, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens a directory by path (the caller's own, trusted path).
fn open_path(path: &Path) -> io::Result<OwnedFd> {
    let c = cstring(path.as_os_str())?;
    // SAFETY: valid C string.
    own(unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })
}

fn open_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    let c = cstring(name)?;
    // SAFETY: valid dirfd and C string; mode is the variadic argument.
    own(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    })
}

fn open_dir_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    open_at(dir, name, DIR_FLAGS, 0)
}

fn unlink_at(dir: BorrowedFd<'_>, name: &OsStr, flags: libc::c_int) -> io::Result<()> {
    let c = cstring(name)?;
    // SAFETY: valid dirfd and C string.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), flags) })
}

fn mkdir_at(dir: BorrowedFd<'_>, name: &OsStr, mode: libc::mode_t) -> io::Result<()> {
    let c = cstring(name)?;
    // SAFETY: valid dirfd and C string.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), mode) })
}

fn symlink_at(target: &OsStr, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let t = cstring(target)?;
    let c = cstring(name)?;
    // SAFETY: valid C strings and dirfd.
    check(unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), c.as_ptr()) })
}

fn readlink_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OsString> {
    let c = cstring(name)?;
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: valid dirfd, C string and buffer of the given length.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            c.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(OsString::from(OsStr::from_bytes(&buf)))
}

fn lchown_at(dir: BorrowedFd<'_>, name: &OsStr, uid: u32, gid: u32) -> io::Result<()> {
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

fn fchown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: valid fd.
    check(unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) })
}

fn fchmod(fd: BorrowedFd<'_>, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: valid fd.
    check(unsafe { libc::fchmod(fd.as_raw_fd(), mode) })
}

fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: valid fd and out-pointer.
    check(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded and filled `st`.
    Ok(unsafe { st.assume_init() })
}

fn lstat_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<libc::stat>> {
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
        if errno(&e) == libc::ENOENT {
            return Ok(None);
        }
        return Err(e);
    }
    // SAFETY: fstatat succeeded and filled `st`.
    Ok(Some(unsafe { st.assume_init() }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    /// Builds `depth` nested directories named `d` under `root` with
    /// `mkdirat` on fds, as a container can (its paths exceed PATH_MAX).
    fn deep(root: &Path, depth: usize) {
        let mut cur = open_path(root).expect("open root");
        for i in 0..depth {
            mkdir_at(cur.as_fd(), OsStr::new("d"), 0o755).expect("mkdir");
            if i % 1000 == 0 {
                let f = open_at(
                    cur.as_fd(),
                    OsStr::new("f"),
                    libc::O_WRONLY | libc::O_CREAT,
                    0o644,
                )
                .expect("file");
                drop(f);
            }
            cur = open_dir_at(cur.as_fd(), OsStr::new("d")).expect("open");
        }
        symlink_at(OsStr::new("/"), cur.as_fd(), OsStr::new("root-link")).expect("symlink");
    }

    /// A 64 KiB stack is far too small for any recursion over thousands of levels.
    fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .stack_size(64 << 10)
            .spawn(f)
            .expect("spawn")
            .join()
            .expect("walk overflowed or panicked")
    }

    #[test]
    fn removes_a_deep_tree_on_a_small_stack() {
        let t = tempfile::tempdir().expect("tempdir");
        let top = t.path().join("top");
        std::fs::create_dir(&top).expect("mkdir");
        // Each level is a few ms on a busy ext4; 5,000 already needs far more
        // than 64 KiB of stack to recurse.
        deep(&top, 5_000);
        let p = top.clone();
        on_small_stack(move || remove_tree(&p)).expect("removes");
        assert!(!top.exists());
    }

    #[test]
    fn never_follows_symlinks_and_ignores_missing() {
        let t = tempfile::tempdir().expect("tempdir");
        let outside = t.path().join("outside");
        std::fs::create_dir(&outside).expect("mkdir");
        std::fs::write(outside.join("keep"), b"x").expect("write");
        let tree = t.path().join("tree");
        std::fs::create_dir_all(tree.join("a/b")).expect("mkdir");
        std::os::unix::fs::symlink(&outside, tree.join("a/link")).expect("symlink");
        std::os::unix::fs::symlink(&outside, tree.join("a/b/link")).expect("symlink");
        std::fs::write(tree.join("a/b/f"), b"x").expect("write");
        // A read-only directory is no obstacle (as for `rm -rf` by root; its
        // entries are unlinked through the parent's write permission).
        std::fs::set_permissions(tree.join("a"), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        remove_tree(&tree).expect("removes");
        assert!(!tree.exists());
        assert!(outside.join("keep").exists());
        remove_tree(&tree).expect("missing is fine");
        remove_tree(&t.path().join("no/such/parent")).expect("missing parent is fine");
        // A symlink given as the tree itself is removed, not followed.
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&outside, &link).expect("symlink");
        remove_tree(&link).expect("removes link");
        assert!(outside.join("keep").exists());
    }

    #[test]
    fn wide_trees_are_removed_too() {
        let t = tempfile::tempdir().expect("tempdir");
        let tree = t.path().join("tree");
        for i in 0..200 {
            std::fs::create_dir_all(tree.join(format!("d{i}/e"))).expect("mkdir");
            std::fs::write(tree.join(format!("d{i}/e/f")), b"x").expect("write");
            std::fs::write(tree.join(format!("f{i}")), b"x").expect("write");
        }
        remove_tree(&tree).expect("removes");
        assert!(!tree.exists());
    }

    #[test]
    fn copies_a_deep_tree_with_links_modes_and_content() {
        let t = tempfile::tempdir().expect("tempdir");
        let from = t.path().join("from");
        std::fs::create_dir(&from).expect("mkdir");
        deep(&from, 5_000);
        std::fs::write(from.join("top"), b"content").expect("write");
        std::fs::set_permissions(from.join("top"), std::fs::Permissions::from_mode(0o640))
            .expect("chmod");
        std::fs::create_dir(from.join("ro")).expect("mkdir");
        std::fs::write(from.join("ro/f"), b"x").expect("write");
        std::fs::set_permissions(from.join("ro"), std::fs::Permissions::from_mode(0o555))
            .expect("chmod");
        let to = t.path().join("to");
        std::fs::create_dir(&to).expect("mkdir");
        let (f, d) = (from.clone(), to.clone());
        on_small_stack(move || copy_tree(&f, &d)).expect("copies");
        assert_eq!(std::fs::read(to.join("top")).expect("read"), b"content");
        let mode = |p: &Path| std::fs::symlink_metadata(p).expect("meta").mode() & 0o7777;
        assert_eq!(mode(&to.join("top")), 0o640);
        assert_eq!(mode(&to.join("ro")), 0o555);
        assert_eq!(std::fs::read(to.join("ro/f")).expect("read"), b"x");
        // The deepest level, reached by fds (its path is beyond PATH_MAX).
        let mut cur = open_path(&to).expect("open");
        for _ in 0..5_000 {
            cur = open_dir_at(cur.as_fd(), OsStr::new("d")).expect("level");
        }
        let target = readlink_at(cur.as_fd(), OsStr::new("root-link")).expect("link kept");
        assert_eq!(target, OsStr::new("/"));
        let (f, d) = (from.clone(), to.clone());
        on_small_stack(move || {
            remove_tree(&f)?;
            remove_tree(&d)
        })
        .expect("cleans up");
    }

    #[test]
    fn walk_dirs_visits_post_order_and_only_what_it_enters() {
        struct V(Vec<String>, Vec<String>);
        impl DirVisitor for V {
            fn enter(&mut self, name: &OsStr) -> io::Result<bool> {
                let n = name.to_string_lossy().into_owned();
                if n == "skip" {
                    return Ok(false);
                }
                self.1.push(n);
                Ok(true)
            }
            fn leave(&mut self, _dir: BorrowedFd<'_>) -> io::Result<()> {
                let n = self.1.pop().unwrap_or_else(|| "root".into());
                self.0.push(n);
                Ok(())
            }
        }
        let t = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(t.path().join("a/b")).expect("mkdir");
        std::fs::create_dir_all(t.path().join("skip/x")).expect("mkdir");
        std::os::unix::fs::symlink("/", t.path().join("a/link")).expect("symlink");
        let root = open_path(t.path()).expect("open");
        let mut v = V(Vec::new(), Vec::new());
        walk_dirs(root.as_fd(), &mut v).expect("walk");
        assert_eq!(v.0, ["b", "a", "root"]);
    }
}
