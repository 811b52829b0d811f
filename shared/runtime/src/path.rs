//! Resolve paths inside a container root without ever leaving it.
//!
//! Mount destinations come from images and specs; a symlink such as `/dev -> /host/etc`
//! or `a -> ../../..` must resolve *inside* the rootfs (runc CVE-2021-30465 class).
//! `openat2(RESOLVE_IN_ROOT)` makes the kernel treat the root fd as `/` for every
//! component, including `..` and absolute symlinks; we then mount onto `/proc/self/fd/N`
//! so the checked fd, not a re-walked path, is the mount target.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;

use crate::error::{Context, Result};

/// What to create when the last component is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// Do not create; missing is an error.
    Nothing,
    /// Create directories for every missing component.
    Dir,
    /// Create parent directories and an empty regular file as the last component.
    File,
}

/// openat2 with RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS relative to `root`.
pub fn openat_in_root(root: BorrowedFd<'_>, path: &Path, flags: i32) -> nix::Result<OwnedFd> {
    let rel = relative(path);
    let rel = if rel.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        rel
    };
    let c = CString::new(rel.as_os_str().as_encoded_bytes()).map_err(|_| Errno::EINVAL)?;
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    let fd = Errno::result(fd)?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `path` without its root and `.` components (`/a/./b` -> `a/b`); `..` is kept for the
/// kernel to clamp at the root.
pub fn relative(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| {
            !matches!(
                c,
                Component::RootDir | Component::CurDir | Component::Prefix(_)
            )
        })
        .collect()
}

/// Open `path` inside `root` as an O_PATH fd, creating what `create` asks for.
pub fn resolve_in_root(root: BorrowedFd<'_>, path: &Path, create: Create) -> Result<OwnedFd> {
    let ctx = || format!("resolve {} inside container root", path.display());
    match openat_in_root(root, path, libc::O_PATH) {
        Ok(fd) => return Ok(fd),
        Err(Errno::ENOENT) if create != Create::Nothing => {}
        Err(e) => return Err(e).ctx(ctx),
    }
    // Walk component by component so every created entry is created under an fd that
    // was itself resolved inside the root.
    let rel = relative(path);
    let comps: Vec<_> = rel.components().collect();
    let mut cur =
        openat_in_root(root, Path::new("."), libc::O_PATH | libc::O_DIRECTORY).ctx(ctx)?;
    for (i, comp) in comps.iter().enumerate() {
        let last = i + 1 == comps.len();
        let so_far: PathBuf = comps[..=i].iter().collect();
        match openat_in_root(root, &so_far, libc::O_PATH) {
            Ok(fd) => {
                cur = fd;
                continue;
            }
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(e).ctx(ctx),
        }
        let name = comp.as_os_str();
        // `cur` is an O_PATH fd: create relative to it through its dir fd.
        let dir = openat_in_root(
            root,
            &so_far.parent().map(Path::to_path_buf).unwrap_or_default(),
            libc::O_DIRECTORY | libc::O_RDONLY,
        )
        .ctx(ctx)?;
        if last && create == Create::File {
            match nix::fcntl::openat(
                dir.as_fd(),
                name,
                nix::fcntl::OFlag::O_CREAT
                    | nix::fcntl::OFlag::O_WRONLY
                    | nix::fcntl::OFlag::O_CLOEXEC
                    | nix::fcntl::OFlag::O_NOFOLLOW,
                nix::sys::stat::Mode::from_bits_truncate(0o644),
            ) {
                Ok(_) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(e).ctx(ctx),
            }
        } else {
            match nix::sys::stat::mkdirat(
                dir.as_fd(),
                name,
                nix::sys::stat::Mode::from_bits_truncate(0o755),
            ) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(e).ctx(ctx),
            }
        }
        cur = openat_in_root(root, &so_far, libc::O_PATH).ctx(ctx)?;
    }
    Ok(cur)
}

/// `mkdir -p` of `path` inside `root` for a process' working directory: every missing
/// component is created mode 0755 (whatever the umask) and owned by `uid:gid`, so the
/// container's user can work in the directory it asked for; existing components are left
/// as they are. Every lookup goes through `openat_in_root`, so symlinks in the image
/// cannot make us create or chown anything outside the root. Returns the created
/// directories, outermost first.
pub fn mkdir_all_owned(
    root: BorrowedFd<'_>,
    path: &Path,
    uid: u32,
    gid: u32,
) -> Result<Vec<PathBuf>> {
    use nix::sys::stat::Mode;
    let ctx = || format!("create working directory {}", path.display());
    let dir_flags = libc::O_PATH | libc::O_DIRECTORY;
    match openat_in_root(root, path, dir_flags) {
        Ok(_) => return Ok(Vec::new()),
        Err(Errno::ENOENT) => {}
        Err(e) => return Err(e).ctx(ctx),
    }
    let rel = relative(path);
    let comps: Vec<_> = rel.components().collect();
    let mut created = Vec::new();
    for i in 0..comps.len() {
        let so_far: PathBuf = comps[..=i].iter().collect();
        match openat_in_root(root, &so_far, dir_flags) {
            Ok(_) => continue,
            Err(Errno::ENOENT) => {}
            Err(e) => {
                return Err(e).ctx(|| format!("{}: {}", ctx(), so_far.display()));
            }
        }
        let parent = so_far.parent().map(Path::to_path_buf).unwrap_or_default();
        let dir = openat_in_root(root, &parent, libc::O_DIRECTORY | libc::O_RDONLY).ctx(ctx)?;
        let name = comps[i].as_os_str();
        match nix::sys::stat::mkdirat(dir.as_fd(), name, Mode::from_bits_truncate(0o755)) {
            Ok(()) => {}
            // Someone else made it between our lookup and mkdir: theirs, leave it be.
            Err(Errno::EEXIST) => continue,
            Err(e) => {
                return Err(e).ctx(|| format!("{}: mkdir {}", ctx(), so_far.display()));
            }
        }
        // O_NOFOLLOW: the entry we just made, not a symlink swapped in under its name.
        let made = nix::fcntl::openat(
            dir.as_fd(),
            name,
            nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_RDONLY
                | nix::fcntl::OFlag::O_NOFOLLOW
                | nix::fcntl::OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .ctx(|| format!("{}: open {}", ctx(), so_far.display()))?;
        nix::unistd::fchown(made.as_fd(), Some(uid.into()), Some(gid.into()))
            .ctx(|| format!("{}: chown {} to {uid}:{gid}", ctx(), so_far.display()))?;
        nix::sys::stat::fchmod(made.as_fd(), Mode::from_bits_truncate(0o755))
            .ctx(|| format!("{}: chmod {}", ctx(), so_far.display()))?;
        created.push(so_far);
    }
    Ok(created)
}

/// `/proc/self/fd/N` for an fd: the mount target that cannot be swapped under us.
pub fn fd_path(fd: &impl AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Open a directory as an O_PATH root fd.
pub fn open_root(path: &Path) -> Result<OwnedFd> {
    nix::fcntl::open(
        path,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ctx(|| format!("open root {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn real(fd: &OwnedFd) -> PathBuf {
        std::fs::read_link(fd_path(fd)).expect("readlink fd")
    }

    #[test]
    fn absolute_symlink_stays_inside_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir(root.join("target")).expect("mkdir");
        // An image whose /dev is an absolute symlink pointing "out".
        symlink("/target", root.join("dev")).expect("symlink");
        let rfd = open_root(root).expect("root");
        let fd = resolve_in_root(rfd.as_fd(), Path::new("/dev/pts"), Create::Dir).expect("resolve");
        assert_eq!(real(&fd), root.join("target/pts"));
    }

    #[test]
    fn dotdot_symlink_is_clamped_at_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("rootfs");
        std::fs::create_dir(&root).expect("mkdir");
        symlink("../../../../../..", root.join("escape")).expect("symlink");
        let rfd = open_root(&root).expect("root");
        let fd =
            resolve_in_root(rfd.as_fd(), Path::new("/escape/etc/x"), Create::Dir).expect("resolve");
        assert_eq!(real(&fd), root.join("etc/x"));
        assert!(!Path::new("/etc/x").exists());
    }

    #[test]
    fn creates_file_for_file_binds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rfd = open_root(dir.path()).expect("root");
        let fd =
            resolve_in_root(rfd.as_fd(), Path::new("etc/hosts"), Create::File).expect("resolve");
        assert_eq!(real(&fd), dir.path().join("etc/hosts"));
        assert!(dir.path().join("etc/hosts").is_file());
    }

    #[test]
    fn missing_without_create_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rfd = open_root(dir.path()).expect("root");
        let err =
            resolve_in_root(rfd.as_fd(), Path::new("/nope"), Create::Nothing).expect_err("missing");
        assert_eq!(err.errno(), Some(Errno::ENOENT));
    }

    #[test]
    fn workdir_is_created_owned_and_0755_only_where_missing() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir(root.join("a")).expect("mkdir");
        let before = std::fs::metadata(root.join("a")).expect("stat a");
        let (uid, gid) = (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        );
        // A different owner proves the chown when we may (tests run as root here).
        let (uid, gid) = if uid == 0 { (1000, 1001) } else { (uid, gid) };
        let rfd = open_root(root).expect("root");
        let made = mkdir_all_owned(rfd.as_fd(), Path::new("/a/b/c"), uid, gid).expect("mkdir -p");
        assert_eq!(made, [PathBuf::from("a/b"), PathBuf::from("a/b/c")]);
        for p in ["a/b", "a/b/c"] {
            let m = std::fs::metadata(root.join(p)).expect("stat");
            assert!(m.is_dir(), "{p}");
            assert_eq!((m.uid(), m.gid()), (uid, gid), "{p}");
            assert_eq!(m.permissions().mode() & 0o7777, 0o755, "{p}");
        }
        let after = std::fs::metadata(root.join("a")).expect("stat a");
        assert_eq!((after.uid(), after.gid()), (before.uid(), before.gid()));
        // Present already: nothing to do.
        let again = mkdir_all_owned(rfd.as_fd(), Path::new("/a/b/c"), uid, gid).expect("again");
        assert!(again.is_empty());
    }

    #[test]
    fn workdir_through_escaping_symlink_stays_inside_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("rootfs");
        std::fs::create_dir(&root).expect("mkdir");
        // Absolute: means /berth-test-inner of the container, not of the host.
        std::fs::create_dir(root.join("berth-test-inner")).expect("mkdir");
        symlink("/berth-test-inner", root.join("abs")).expect("symlink");
        symlink("../../../..", root.join("up")).expect("symlink");
        let rfd = open_root(&root).expect("root");
        let me = (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        );
        mkdir_all_owned(rfd.as_fd(), Path::new("/abs/w"), me.0, me.1).expect("abs");
        mkdir_all_owned(rfd.as_fd(), Path::new("/up/v"), me.0, me.1).expect("up");
        assert!(
            !Path::new("/berth-test-inner").exists(),
            "created outside the root"
        );
        assert!(!dir.path().join("v").exists(), "created outside the root");
        assert!(root.join("berth-test-inner/w").is_dir());
        assert!(root.join("v").is_dir());
    }

    #[test]
    fn workdir_under_a_file_is_an_error_that_names_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("f"), "x").expect("write");
        let rfd = open_root(dir.path()).expect("root");
        let err = mkdir_all_owned(rfd.as_fd(), Path::new("/f/x"), 0, 0).expect_err("ENOTDIR");
        assert!(err.to_string().contains("/f/x"), "{err}");
        assert_eq!(err.errno(), Some(Errno::ENOTDIR));
    }
}
