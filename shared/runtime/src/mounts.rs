//! Root filesystem: propagation, the spec's mounts, /dev, pivot_root, masked and
//! read-only paths. All kernel calls go through [`Syscall`]; paths inside the rootfs are
//! resolved with [`crate::path`] so nothing follows a symlink out of it.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount, Spec};

use crate::error::{Context, Error, Result};
use crate::path::{fd_path, open_root, resolve_in_root, Create};
use crate::sys::Syscall;

/// Mount options of one spec mount, split into what mount(2) takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// Flags for the mount call.
    pub flags: MsFlags,
    /// Propagation changes applied after the mount, in order.
    pub propagation: Vec<MsFlags>,
    /// Filesystem-specific data (`mode=755,size=65536k`).
    pub data: String,
    /// `bind` or `rbind` was asked for.
    pub bind: bool,
}

impl MountOptions {
    /// Flags that need a remount to take effect on a bind mount.
    pub fn remount_flags(&self) -> MsFlags {
        self.flags
            & (MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC
                | MsFlags::MS_NOATIME
                | MsFlags::MS_NODIRATIME
                | MsFlags::MS_RELATIME
                | MsFlags::MS_STRICTATIME)
    }
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            flags: MsFlags::empty(),
            propagation: Vec::new(),
            data: String::new(),
            bind: false,
        }
    }
}

/// Parse OCI mount options (the fstab vocabulary) into flags, propagation and data.
pub fn parse_mount_options(options: &[String]) -> MountOptions {
    let mut o = MountOptions::default();
    for opt in options {
        let (clear, flag) = match opt.as_str() {
            "defaults" => (false, MsFlags::empty()),
            "ro" => (false, MsFlags::MS_RDONLY),
            "rw" => (true, MsFlags::MS_RDONLY),
            "nosuid" => (false, MsFlags::MS_NOSUID),
            "suid" => (true, MsFlags::MS_NOSUID),
            "nodev" => (false, MsFlags::MS_NODEV),
            "dev" => (true, MsFlags::MS_NODEV),
            "noexec" => (false, MsFlags::MS_NOEXEC),
            "exec" => (true, MsFlags::MS_NOEXEC),
            "sync" => (false, MsFlags::MS_SYNCHRONOUS),
            "async" => (true, MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (false, MsFlags::MS_DIRSYNC),
            "remount" => (false, MsFlags::MS_REMOUNT),
            "mand" => (false, MsFlags::MS_MANDLOCK),
            "nomand" => (true, MsFlags::MS_MANDLOCK),
            "noatime" => (false, MsFlags::MS_NOATIME),
            "atime" => (true, MsFlags::MS_NOATIME),
            "nodiratime" => (false, MsFlags::MS_NODIRATIME),
            "diratime" => (true, MsFlags::MS_NODIRATIME),
            "relatime" => (false, MsFlags::MS_RELATIME),
            "norelatime" => (true, MsFlags::MS_RELATIME),
            "strictatime" => (false, MsFlags::MS_STRICTATIME),
            "nostrictatime" => (true, MsFlags::MS_STRICTATIME),
            "bind" => {
                o.bind = true;
                (false, MsFlags::MS_BIND)
            }
            "rbind" => {
                o.bind = true;
                (false, MsFlags::MS_BIND | MsFlags::MS_REC)
            }
            "private" => {
                o.propagation.push(MsFlags::MS_PRIVATE);
                continue;
            }
            "rprivate" => {
                o.propagation.push(MsFlags::MS_PRIVATE | MsFlags::MS_REC);
                continue;
            }
            "shared" => {
                o.propagation.push(MsFlags::MS_SHARED);
                continue;
            }
            "rshared" => {
                o.propagation.push(MsFlags::MS_SHARED | MsFlags::MS_REC);
                continue;
            }
            "slave" => {
                o.propagation.push(MsFlags::MS_SLAVE);
                continue;
            }
            "rslave" => {
                o.propagation.push(MsFlags::MS_SLAVE | MsFlags::MS_REC);
                continue;
            }
            "unbindable" => {
                o.propagation.push(MsFlags::MS_UNBINDABLE);
                continue;
            }
            "runbindable" => {
                o.propagation.push(MsFlags::MS_UNBINDABLE | MsFlags::MS_REC);
                continue;
            }
            // Options other runtimes understand that do not map to mount(2) here.
            "tmpcopyup" | "idmap" | "ridmap" | "nosymfollow" => continue,
            other => {
                if !o.data.is_empty() {
                    o.data.push(',');
                }
                o.data.push_str(other);
                continue;
            }
        };
        if clear {
            o.flags.remove(flag);
        } else {
            o.flags.insert(flag);
        }
    }
    o
}

/// The devices every container gets on its /dev tmpfs (as runc and Docker do).
pub fn default_devices() -> Vec<(&'static str, u64, u64)> {
    vec![
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ]
}

/// Propagation flags for the root mount from `linux.rootfsPropagation` (default rslave).
pub fn root_propagation(spec_value: Option<&str>) -> Result<MsFlags> {
    Ok(match spec_value.unwrap_or("") {
        "" | "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        other => {
            return Err(Error::InvalidSpec(format!(
                "unknown rootfsPropagation {other:?}"
            )))
        }
    })
}

/// Does the spec leave /dev to us (no bind mount of the host's /dev)?
fn needs_dev_setup(spec: &Spec) -> bool {
    !spec.mounts().iter().flatten().any(|m| {
        m.destination() == Path::new("/dev")
            && (m.typ().as_deref() == Some("bind")
                || m.options()
                    .iter()
                    .flatten()
                    .any(|o| o == "bind" || o == "rbind"))
    })
}

/// Everything before pivot_root: root propagation, the rootfs bind, spec mounts, devices,
/// /dev symlinks. The caller is in the container's new mount namespace.
pub fn prepare_rootfs(sys: &dyn Syscall, spec: &Spec, rootfs: &Path) -> Result<()> {
    let linux = spec.linux().as_ref();
    let prop = root_propagation(linux.and_then(|l| l.rootfs_propagation().as_deref()))?;
    sys.mount(None, Path::new("/"), None, prop, None)
        .ctx(|| "set propagation of / in the container mount namespace".into())?;
    // pivot_root needs the new root to be a mount point whose parent is not shared.
    sys.mount(
        Some(rootfs),
        rootfs,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )
    .ctx(|| format!("bind rootfs {} onto itself", rootfs.display()))?;

    let root = open_root(rootfs)?;
    for m in spec.mounts().iter().flatten() {
        mount_one(sys, root.as_fd(), m)?;
    }
    if needs_dev_setup(spec) {
        let devices = linux.and_then(|l| l.devices().clone()).unwrap_or_default();
        create_devices(sys, root.as_fd(), &devices)?;
        dev_symlinks(root.as_fd())?;
    }
    Ok(())
}

fn mount_one(sys: &dyn Syscall, root: BorrowedFd<'_>, m: &Mount) -> Result<()> {
    let dest = m.destination();
    let opts = parse_mount_options(m.options().as_deref().unwrap_or(&[]));
    let typ = m
        .typ()
        .as_deref()
        .unwrap_or(if opts.bind { "bind" } else { "" });
    let bind = opts.bind || typ == "bind";
    let ctx = |what: &str| {
        format!(
            "mount {} ({typ}) on {}: {what}",
            m.source().as_deref().unwrap_or(Path::new("none")).display(),
            dest.display()
        )
    };

    if typ == "cgroup" || typ == "cgroup2" {
        return mount_cgroup(sys, root, dest, &opts, typ);
    }
    let create = if bind {
        let src = m.source().clone().unwrap_or_default();
        let meta = std::fs::metadata(&src).ctx(|| ctx("stat source"))?;
        if meta.is_dir() {
            Create::Dir
        } else {
            Create::File
        }
    } else {
        Create::Dir
    };
    let target = resolve_in_root(root, dest, create)?;
    let tpath = fd_path(&target);
    if bind {
        let src = m.source().clone().unwrap_or_default();
        sys.mount(
            Some(&src),
            &tpath,
            None,
            opts.flags & (MsFlags::MS_BIND | MsFlags::MS_REC),
            None,
        )
        .ctx(|| ctx("bind"))?;
        let re = opts.remount_flags();
        if !re.is_empty() {
            // A bind mount ignores most flags; they take effect on a remount of the new mount,
            // which we reach through a fresh fd (the old fd names the covered directory).
            let mounted = resolve_in_root(root, dest, Create::Nothing)?;
            let locked = locked_flags(&fd_path(&mounted));
            sys.mount(
                None,
                &fd_path(&mounted),
                None,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | re | locked,
                None,
            )
            .ctx(|| ctx("remount bind with flags"))?;
        }
    } else {
        let data = if opts.data.is_empty() {
            None
        } else {
            Some(opts.data.as_str())
        };
        let source = m.source().clone().unwrap_or_else(|| PathBuf::from(typ));
        let res = sys.mount(Some(&source), &tpath, Some(typ), opts.flags, data);
        match res {
            // Without a new network namespace sysfs cannot be mounted; bind the host's instead.
            Err(Errno::EPERM) if typ == "sysfs" => {
                sys.mount(
                    Some(Path::new("/sys")),
                    &tpath,
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None,
                )
                .ctx(|| ctx("bind /sys (sysfs mount not permitted)"))?;
                let mounted = resolve_in_root(root, dest, Create::Nothing)?;
                sys.mount(
                    None,
                    &fd_path(&mounted),
                    None,
                    MsFlags::MS_BIND
                        | MsFlags::MS_REMOUNT
                        | opts.remount_flags()
                        | locked_flags(&fd_path(&mounted)),
                    None,
                )
                .ctx(|| ctx("remount /sys read-only"))?;
            }
            r => r.ctx(|| ctx("mount"))?,
        }
    }
    for p in &opts.propagation {
        let mounted = resolve_in_root(root, dest, Create::Nothing)?;
        sys.mount(None, &fd_path(&mounted), None, *p, None)
            .ctx(|| ctx("set propagation"))?;
    }
    Ok(())
}

/// Flags already on a mount that a bind remount must keep (the kernel refuses to clear
/// "locked" flags such as nosuid/nodev/noexec inherited from a more privileged mount).
fn locked_flags(path: &Path) -> MsFlags {
    use nix::sys::statvfs::{statvfs, FsFlags};
    let Ok(st) = statvfs(path) else {
        return MsFlags::empty();
    };
    let f = st.flags();
    let mut out = MsFlags::empty();
    for (fs, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
    ] {
        if f.contains(fs) {
            out |= ms;
        }
    }
    out
}

/// Mount the container's view of the cgroup hierarchy. Inside a cgroup namespace the
/// container sees its own cgroup as the root. On v1/hybrid hosts that is a tmpfs with one
/// mount per v1 hierarchy (like runc); on v2 a single cgroup2 mount.
fn mount_cgroup(
    sys: &dyn Syscall,
    root: BorrowedFd<'_>,
    dest: &Path,
    opts: &MountOptions,
    typ: &str,
) -> Result<()> {
    let flags = opts.flags
        & (MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC);
    let target = resolve_in_root(root, dest, Create::Dir)?;
    let ctx = |what: String| format!("mount cgroup on {}: {what}", dest.display());
    let unified = crate::cgroups::is_unified();
    if unified || typ == "cgroup2" {
        return sys
            .mount(
                Some(Path::new("cgroup2")),
                &fd_path(&target),
                Some("cgroup2"),
                flags,
                None,
            )
            .ctx(|| ctx("cgroup2".into()));
    }
    sys.mount(
        Some(Path::new("tmpfs")),
        &fd_path(&target),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=755"),
    )
    .ctx(|| ctx("tmpfs".into()))?;
    let cg =
        std::fs::read_to_string("/proc/self/cgroup").ctx(|| "read /proc/self/cgroup".into())?;
    for line in cg.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls) = (parts.next(), parts.next().unwrap_or(""));
        if ctrls.is_empty() {
            continue; // the v2 line of a hybrid host: its controllers (if any) stay on the host
        }
        let name = ctrls.trim_start_matches("name=");
        let sub = dest.join(name);
        let t = resolve_in_root(root, &sub, Create::Dir)?;
        match sys.mount(
            Some(Path::new("cgroup")),
            &fd_path(&t),
            Some("cgroup"),
            flags,
            Some(ctrls),
        ) {
            Ok(()) => {}
            // v1 hierarchies cannot be mounted from a user namespace; leave the dir empty.
            Err(Errno::EPERM) => tracing::debug!(ctrls, "cgroup v1 mount not permitted, skipped"),
            Err(e) => return Err(e).ctx(|| ctx(format!("v1 hierarchy {ctrls}"))),
        }
    }
    if flags.contains(MsFlags::MS_RDONLY) {
        let t = resolve_in_root(root, dest, Create::Nothing)?;
        sys.mount(
            None,
            &fd_path(&t),
            None,
            MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC,
            Some("mode=755"),
        )
        .ctx(|| ctx("remount tmpfs read-only".into()))?;
    }
    Ok(())
}

/// path, kind, major, minor, mode, uid, gid
type DeviceNode = (PathBuf, SFlag, u64, u64, u32, Option<u32>, Option<u32>);

fn create_devices(sys: &dyn Syscall, root: BorrowedFd<'_>, extra: &[LinuxDevice]) -> Result<()> {
    let mut list: Vec<DeviceNode> = default_devices()
        .into_iter()
        .map(|(n, ma, mi)| {
            (
                PathBuf::from("/dev").join(n),
                SFlag::S_IFCHR,
                ma,
                mi,
                0o666,
                None,
                None,
            )
        })
        .collect();
    for d in extra {
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            LinuxDeviceType::A => {
                return Err(Error::InvalidSpec(format!(
                    "device {} has type a",
                    d.path().display()
                )))
            }
        };
        list.retain(|x| x.0 != *d.path());
        list.push((
            d.path().clone(),
            kind,
            d.major() as u64,
            d.minor() as u64,
            d.file_mode().unwrap_or(0o666),
            d.uid(),
            d.gid(),
        ));
    }
    for (path, kind, major, minor, mode, uid, gid) in list {
        let parent = path.parent().unwrap_or(Path::new("/dev"));
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Error::InvalidSpec(format!("device path {}", path.display())))?;
        let dir = resolve_in_root(root, parent, Create::Dir)?;
        let dirfd = nix::fcntl::openat(
            dir.as_fd(),
            ".",
            nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .ctx(|| format!("open {}", parent.display()))?;
        let _ = nix::unistd::unlinkat(dirfd.as_fd(), name, nix::unistd::UnlinkatFlags::NoRemoveDir);
        let made = sys.mknodat(
            dirfd.as_fd(),
            name,
            kind,
            Mode::from_bits_truncate(mode),
            nix::sys::stat::makedev(major, minor),
        );
        match made {
            Ok(()) => {}
            // In a user namespace mknod is not allowed: bind the host's node instead (as
            // runc does); we have not pivoted yet, so `path` still names the host device.
            // With no host node to bind, the mknod error is the one that explains it.
            Err(Errno::EPERM) if path.exists() => {
                let t = resolve_in_root(root, &path, Create::File)?;
                sys.mount(Some(&path), &fd_path(&t), None, MsFlags::MS_BIND, None)
                    .ctx(|| format!("bind host device {} (mknod not permitted)", path.display()))?;
                continue;
            }
            Err(e) => return Err(e).ctx(|| format!("mknod {}", path.display())),
        }
        // mknod applies the umask; set the mode and owner the spec asked for.
        let _ = nix::sys::stat::fchmodat(
            dirfd.as_fd(),
            name,
            Mode::from_bits_truncate(mode),
            nix::sys::stat::FchmodatFlags::NoFollowSymlink,
        );
        if uid.is_some() || gid.is_some() {
            nix::unistd::fchownat(
                dirfd.as_fd(),
                name,
                uid.map(Into::into),
                gid.map(Into::into),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .ctx(|| format!("chown {}", path.display()))?;
        }
    }
    Ok(())
}

fn dev_symlinks(root: BorrowedFd<'_>) -> Result<()> {
    let dev = resolve_in_root(root, Path::new("/dev"), Create::Dir)?;
    let dirfd = nix::fcntl::openat(
        dev.as_fd(),
        ".",
        nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ctx(|| "open /dev".into())?;
    let links = [
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
    ];
    for (target, name) in links {
        match nix::unistd::symlinkat(target, dirfd.as_fd(), name) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(e).ctx(|| format!("symlink /dev/{name}")),
        }
    }
    // With a private devpts instance, /dev/ptmx must point at that instance's ptmx.
    if nix::sys::stat::fstatat(
        dirfd.as_fd(),
        "pts/ptmx",
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .is_ok()
    {
        let _ = nix::unistd::unlinkat(
            dirfd.as_fd(),
            "ptmx",
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
        nix::unistd::symlinkat("pts/ptmx", dirfd.as_fd(), "ptmx")
            .ctx(|| "symlink /dev/ptmx".into())?;
    }
    Ok(())
}

/// Should a failed pivot_root fall back to MS_MOVE + chroot? Only when the current root
/// is the initramfs (rootfs/ramfs/tmpfs as the very first mount), where pivot_root is
/// not allowed; any other failure is a real error.
pub fn pivot_fallback_allowed(err: Errno, root_fs_magic: i64) -> bool {
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    err == Errno::EINVAL && (root_fs_magic == RAMFS_MAGIC || root_fs_magic == TMPFS_MAGIC)
}

/// Make `rootfs` the root: pivot_root(".", ".") then lazily detach the old root, so no
/// put_old directory is left behind inside the container.
pub fn pivot_into(sys: &dyn Syscall, rootfs: &Path) -> Result<()> {
    let old = open_root(Path::new("/"))?;
    let new = open_root(rootfs)?;
    sys.fchdir(new.as_fd())
        .ctx(|| format!("fchdir {}", rootfs.display()))?;
    match sys.pivot_root_dot() {
        Ok(()) => {
            sys.fchdir(old.as_fd()).ctx(|| "fchdir old root".into())?;
            // Keep the unmount of the old root from propagating to the host.
            sys.mount(
                None,
                Path::new("."),
                None,
                MsFlags::MS_SLAVE | MsFlags::MS_REC,
                None,
            )
            .ctx(|| "make old root rslave".into())?;
            sys.umount2(Path::new("."), MntFlags::MNT_DETACH)
                .ctx(|| "detach old root".into())?;
        }
        Err(e) => {
            let magic = nix::sys::statfs::statfs("/")
                .map(|s| s.filesystem_type().0)
                .unwrap_or(0);
            if !pivot_fallback_allowed(e, magic) {
                return Err(e).ctx(|| format!("pivot_root into {}", rootfs.display()));
            }
            sys.mount(Some(rootfs), Path::new("/"), None, MsFlags::MS_MOVE, None)
                .ctx(|| "MS_MOVE rootfs to / (initramfs fallback)".into())?;
            sys.chroot(Path::new("."))
                .ctx(|| "chroot (initramfs fallback)".into())?;
        }
    }
    sys.chdir(Path::new("/")).ctx(|| "chdir /".into())
}

/// After pivot_root: read-only paths, masked paths, and the read-only root.
pub fn finish_rootfs(sys: &dyn Syscall, spec: &Spec, root_path: &Path) -> Result<()> {
    let root = open_root(root_path)?;
    let linux = spec.linux().as_ref();
    for p in linux
        .and_then(|l| l.readonly_paths().clone())
        .unwrap_or_default()
    {
        let fd = match resolve_in_root(root.as_fd(), Path::new(&p), Create::Nothing) {
            Ok(fd) => fd,
            Err(e) if e.errno() == Some(Errno::ENOENT) => continue,
            Err(e) => return Err(e),
        };
        sys.mount(
            Some(&fd_path(&fd)),
            &fd_path(&fd),
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )
        .ctx(|| format!("bind read-only path {p}"))?;
        let fd = resolve_in_root(root.as_fd(), Path::new(&p), Create::Nothing)?;
        let flags = MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | locked_flags(&fd_path(&fd));
        sys.mount(None, &fd_path(&fd), None, flags, None)
            .ctx(|| format!("remount read-only path {p}"))?;
    }
    for p in linux
        .and_then(|l| l.masked_paths().clone())
        .unwrap_or_default()
    {
        let fd = match resolve_in_root(root.as_fd(), Path::new(&p), Create::Nothing) {
            Ok(fd) => fd,
            Err(e) if e.errno() == Some(Errno::ENOENT) => continue,
            Err(e) => return Err(e),
        };
        let st = nix::sys::stat::fstat(&fd).ctx(|| format!("stat masked path {p}"))?;
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR {
            sys.mount(
                Some(Path::new("tmpfs")),
                &fd_path(&fd),
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None,
            )
            .ctx(|| format!("mask directory {p}"))?;
        } else {
            sys.mount(
                Some(Path::new("/dev/null")),
                &fd_path(&fd),
                None,
                MsFlags::MS_BIND,
                None,
            )
            .ctx(|| format!("mask file {p}"))?;
        }
    }
    if spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
    {
        let flags =
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | locked_flags(root_path);
        sys.mount(None, root_path, None, flags, None)
            .ctx(|| "remount root read-only".into())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{Call, RecordingSyscall};

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn options_split_into_flags_propagation_and_data() {
        let o = parse_mount_options(&s(&[
            "nosuid",
            "strictatime",
            "mode=755",
            "size=65536k",
            "rprivate",
            "ro",
        ]));
        assert_eq!(
            o.flags,
            MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME | MsFlags::MS_RDONLY
        );
        assert_eq!(o.propagation, vec![MsFlags::MS_PRIVATE | MsFlags::MS_REC]);
        assert_eq!(o.data, "mode=755,size=65536k");
        assert!(!o.bind);
        let o = parse_mount_options(&s(&["rbind", "ro", "rw", "rslave"]));
        assert!(o.bind);
        assert_eq!(o.flags, MsFlags::MS_BIND | MsFlags::MS_REC);
        assert_eq!(o.propagation, vec![MsFlags::MS_SLAVE | MsFlags::MS_REC]);
    }

    #[test]
    fn propagation_defaults_to_rslave() {
        assert_eq!(
            root_propagation(None).expect("ok"),
            MsFlags::MS_SLAVE | MsFlags::MS_REC
        );
        assert_eq!(
            root_propagation(Some("private")).expect("ok"),
            MsFlags::MS_PRIVATE
        );
        assert!(root_propagation(Some("sideways")).is_err());
    }

    #[test]
    fn pivot_fallback_only_on_initramfs() {
        assert!(pivot_fallback_allowed(Errno::EINVAL, 0x8584_58f6));
        assert!(!pivot_fallback_allowed(Errno::EINVAL, 0xEF53)); // ext4: a real error
        assert!(!pivot_fallback_allowed(Errno::EPERM, 0x8584_58f6));
    }

    #[test]
    fn default_spec_mounts_resolve_inside_root_even_when_dev_is_a_symlink() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("real-dev")).expect("mkdir");
        // Absolute symlink that would point at the host's /tmp if followed outside.
        std::os::unix::fs::symlink("/real-dev", rootfs.join("dev")).expect("symlink");
        let spec =
            crate::spec::default_spec(&crate::spec::DefaultSpecOptions::new(vec!["sh".into()]))
                .expect("spec");
        let sys = RecordingSyscall::default();
        prepare_rootfs(&sys, &spec, &rootfs).expect("prepare");
        let calls = sys.calls.borrow();
        let targets: Vec<PathBuf> = calls
            .iter()
            .filter_map(|c| match c {
                Call::Mount {
                    target,
                    fstype: Some(t),
                    ..
                } if t != "cgroup" => Some(target.clone()),
                _ => None,
            })
            .collect();
        assert!(targets.contains(&rootfs.join("proc")), "{targets:?}");
        assert!(targets.contains(&rootfs.join("real-dev")), "{targets:?}");
        assert!(
            targets.contains(&rootfs.join("real-dev/pts")),
            "{targets:?}"
        );
        for t in &targets {
            assert!(t.starts_with(&rootfs), "{} escaped the rootfs", t.display());
        }
        let nodes: Vec<String> = calls
            .iter()
            .filter_map(|c| match c {
                Call::Mknod { dir, name, .. } => {
                    assert_eq!(dir, &rootfs.join("real-dev"));
                    Some(name.clone())
                }
                _ => None,
            })
            .collect();
        assert_eq!(nodes, ["null", "zero", "full", "random", "urandom", "tty"]);
        assert_eq!(
            std::fs::read_link(rootfs.join("real-dev/fd")).expect("fd link"),
            Path::new("/proc/self/fd")
        );
    }

    #[test]
    fn pivot_failure_on_disk_root_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sys = RecordingSyscall {
            fail_pivot: Some(Errno::EINVAL),
            ..Default::default()
        };
        // The test's own root is not an initramfs, so there must be no MS_MOVE fallback.
        let magic = nix::sys::statfs::statfs("/")
            .map(|s| s.filesystem_type().0)
            .unwrap_or(0);
        if pivot_fallback_allowed(Errno::EINVAL, magic) {
            eprintln!("SKIP: this test host runs from an initramfs");
            return;
        }
        let err = pivot_into(&sys, dir.path()).expect_err("must fail");
        assert_eq!(err.errno(), Some(Errno::EINVAL));
        assert!(!sys
            .calls
            .borrow()
            .iter()
            .any(|c| matches!(c, Call::Chroot(_))));
    }

    fn mounts_of(calls: &[Call]) -> Vec<(PathBuf, Option<String>, MsFlags, Option<PathBuf>)> {
        calls
            .iter()
            .filter_map(|c| match c {
                Call::Mount {
                    source,
                    target,
                    fstype,
                    flags,
                    ..
                } => Some((target.clone(), fstype.clone(), *flags, source.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn bind_mount_flags_need_a_remount_of_the_new_mount() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rootfs = dir.path().join("rootfs");
        let src = dir.path().join("data");
        std::fs::create_dir_all(&rootfs).expect("mkdir");
        std::fs::create_dir_all(&src).expect("mkdir");
        let spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "mounts": [{"destination": "/data", "type": "bind", "source": src, "options": ["rbind", "ro", "nosuid", "rslave"]}],
            "linux": {}
        }))
        .expect("spec");
        let sys = RecordingSyscall::default();
        prepare_rootfs(&sys, &spec, &rootfs).expect("prepare");
        let m = mounts_of(&sys.calls.borrow());
        let data: Vec<_> = m.iter().filter(|x| x.0 == rootfs.join("data")).collect();
        assert_eq!(data.len(), 3, "bind, remount, propagation: {data:?}");
        assert_eq!(data[0].2, MsFlags::MS_BIND | MsFlags::MS_REC);
        assert_eq!(data[0].3.as_deref(), Some(src.as_path()));
        assert!(data[1].2.contains(
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID
        ));
        assert_eq!(data[2].2, MsFlags::MS_SLAVE | MsFlags::MS_REC);
        // A directory source gets a directory mount point (a file source gets a file).
        assert!(rootfs.join("data").is_dir());
    }

    #[test]
    fn masked_and_readonly_paths_and_readonly_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("proc/sys")).expect("mkdir");
        std::fs::create_dir_all(root.join("proc/acpi")).expect("mkdir");
        std::fs::write(root.join("proc/kcore"), "").expect("file");
        let spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs", "readonly": true},
            "linux": {"maskedPaths": ["/proc/kcore", "/proc/acpi", "/proc/absent"], "readonlyPaths": ["/proc/sys", "/proc/absent2"]}
        }))
        .expect("spec");
        let sys = RecordingSyscall::default();
        finish_rootfs(&sys, &spec, root).expect("finish");
        let m = mounts_of(&sys.calls.borrow());
        // read-only path: bind onto itself, then remount read-only.
        assert_eq!(m[0].0, root.join("proc/sys"));
        assert_eq!(m[0].2, MsFlags::MS_BIND | MsFlags::MS_REC);
        assert!(m[1].2.contains(MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY));
        // masked file: /dev/null bound over it; masked dir: read-only tmpfs; absent: skipped.
        assert_eq!(
            (m[2].0.clone(), m[2].3.clone()),
            (root.join("proc/kcore"), Some(PathBuf::from("/dev/null")))
        );
        assert_eq!(
            (m[3].0.clone(), m[3].1.as_deref(), m[3].2),
            (root.join("proc/acpi"), Some("tmpfs"), MsFlags::MS_RDONLY)
        );
        // read-only root last.
        assert_eq!(m[4].0, root);
        assert!(m[4]
            .2
            .contains(MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_BIND));
        assert_eq!(m.len(), 5);
    }
}
