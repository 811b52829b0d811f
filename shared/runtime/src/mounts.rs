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

/// How the container's mount namespace relates to the runtime's (decides how the root
/// is entered and how /sys/fs/cgroup shows the container's own cgroup).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RootfsPlan {
    /// The container has a mount namespace of its own (new, or joined by path and not the
    /// runtime's): propagation is set and the root is entered with pivot_root. Without one
    /// the mounts are made in the runtime's namespace and the root is entered with chroot,
    /// as runc does; the host's own propagation is left alone.
    pub private_mount_ns: bool,
    /// The container has a cgroup namespace of its own: a cgroup mount shows its cgroup as
    /// the root. Without one the container's cgroup directories are bound instead, so the
    /// host's hierarchy is never visible (runc does the same for v1).
    pub cgroup_ns: bool,
}

impl RootfsPlan {
    /// What berth's own containers get: private mount and cgroup namespaces.
    pub const PRIVATE: RootfsPlan = RootfsPlan {
        private_mount_ns: true,
        cgroup_ns: true,
    };
}

/// Everything before pivot_root: root propagation, the rootfs bind, spec mounts, devices,
/// /dev symlinks. The caller is in the container's mount namespace (or, without one, in
/// the runtime's).
pub fn prepare_rootfs(
    sys: &dyn Syscall,
    spec: &Spec,
    rootfs: &Path,
    plan: RootfsPlan,
) -> Result<()> {
    let linux = spec.linux().as_ref();
    let prop = root_propagation(linux.and_then(|l| l.rootfs_propagation().as_deref()))?;
    if plan.private_mount_ns {
        sys.mount(None, Path::new("/"), None, prop, None)
            .ctx(|| "set propagation of / in the container mount namespace".into())?;
        // pivot_root refuses a new root whose parent mount is shared (rootfsPropagation
        // shared/rshared makes it so); the parent is private to this namespace anyway,
        // and making it private also keeps the binds below from propagating.
        let info = std::fs::read_to_string("/proc/self/mountinfo")
            .ctx(|| "read /proc/self/mountinfo".into())?;
        let mounts = parse_mountinfo(&info);
        if let Some(parent) = mount_containing(&mounts, rootfs) {
            if parent.is_shared() {
                sys.mount(None, &parent.mount_point, None, MsFlags::MS_PRIVATE, None)
                    .ctx(|| {
                        format!(
                            "make {} (parent mount of the rootfs) private",
                            parent.mount_point.display()
                        )
                    })?;
            }
        }
    }
    // The root must be a mount point: for pivot_root, for the read-only remount, and so
    // that without a private namespace one detach of it removes every container mount.
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
        mount_one(sys, root.as_fd(), m, plan)?;
    }
    if needs_dev_setup(spec) {
        let devices = linux.and_then(|l| l.devices().clone()).unwrap_or_default();
        create_devices(sys, root.as_fd(), &devices)?;
        dev_symlinks(root.as_fd())?;
    }
    Ok(())
}

/// One line of /proc/self/mountinfo (the fields the runtime needs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// The path inside the filesystem that is mounted (a bind's or a cgroup's subtree).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    /// Optional fields: `shared:N`, `master:N`, `propagate_from:N`, `unbindable`.
    pub optional: Vec<String>,
    pub fstype: String,
    pub super_options: Vec<String>,
}

impl MountInfo {
    pub fn is_shared(&self) -> bool {
        self.optional.iter().any(|o| o.starts_with("shared:"))
    }
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .and_then(|o| std::str::from_utf8(o).ok());
        match oct.and_then(|o| u8::from_str_radix(o, 8).ok()) {
            Some(v) if b[i] == b'\\' => {
                out.push(v);
                i += 4;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parse /proc/<pid>/mountinfo; malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let f: Vec<&str> = pre.split(' ').collect();
            if f.len() < 6 {
                return None;
            }
            let mut post = post.split(' ');
            let fstype = post.next()?.to_string();
            let _source = post.next()?;
            let super_options = post
                .next()
                .unwrap_or("")
                .split(',')
                .map(str::to_string)
                .collect();
            Some(MountInfo {
                root: PathBuf::from(unescape_mountinfo(f[3])),
                mount_point: PathBuf::from(unescape_mountinfo(f[4])),
                optional: f[6..].iter().map(|s| s.to_string()).collect(),
                fstype,
                super_options,
            })
        })
        .collect()
}

/// The mount that holds `path`: the last-mounted one with the longest matching mount point.
pub fn mount_containing<'a>(mounts: &'a [MountInfo], path: &Path) -> Option<&'a MountInfo> {
    let mut best: Option<&MountInfo> = None;
    for m in mounts {
        if path.starts_with(&m.mount_point)
            && best.is_none_or(|b| {
                m.mount_point.components().count() >= b.mount_point.components().count()
            })
        {
            best = Some(m);
        }
    }
    best
}

/// A cgroup directory to bind into the container at `/sys/fs/cgroup/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupBind {
    /// Directory under the cgroup mount (`memory`, `cpu,cpuacct`, `systemd`; empty for
    /// the v2 hierarchy, which is the mount itself).
    pub name: String,
    /// The container's cgroup directory on the host.
    pub source: PathBuf,
    /// Each controller of a co-mounted hierarchy gets a symlink to `name` (`cpu` ->
    /// `cpu,cpuacct`), as on the host.
    pub links: Vec<String>,
}

/// Where the cgroup of the calling process lives on the host, per hierarchy, from
/// /proc/self/cgroup and /proc/self/mountinfo. `v2` picks the unified hierarchy alone;
/// otherwise every v1 hierarchy that is mounted (the v2 line of a hybrid host is left
/// out: its controllers, if any, stay on the host, as with runc). Mounts under `rootfs`
/// are never the host's hierarchy (a container's own, or one left by another runtime).
pub fn cgroup_binds(
    proc_cgroup: &str,
    mounts: &[MountInfo],
    v2: bool,
    rootfs: &Path,
) -> Result<Vec<CgroupBind>> {
    let mut out = Vec::new();
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = (parts.next(), parts.next(), parts.next());
        let (Some(ctrls), Some(path)) = (ctrls, path) else {
            continue;
        };
        if v2 != ctrls.is_empty() {
            continue;
        }
        let wanted: Vec<&str> = ctrls.split(',').filter(|c| !c.is_empty()).collect();
        let of_this_hierarchy: Vec<&MountInfo> = mounts
            .iter()
            .rev()
            .filter(|m| {
                if m.mount_point.starts_with(rootfs) {
                    false
                } else if v2 {
                    m.fstype == "cgroup2"
                } else {
                    m.fstype == "cgroup"
                        && wanted
                            .iter()
                            .all(|w| m.super_options.iter().any(|o| o == w))
                }
            })
            .collect();
        // The same hierarchy can be mounted more than once: binds of one group, such as
        // another container's left in this namespace (one run without a mount namespace).
        // The widest mount holding the cgroup is the host's own.
        let mount = of_this_hierarchy
            .iter()
            .filter(|m| Path::new(path).starts_with(&m.root))
            .min_by_key(|m| m.root.components().count())
            .or(of_this_hierarchy.first())
            .copied();
        let Some(mount) = mount else {
            if v2 {
                return Err(Error::InvalidSpec(
                    "the cgroup v2 hierarchy is not mounted in the runtime's mount namespace"
                        .into(),
                ));
            }
            continue; // a hierarchy nobody mounted (e.g. a named one): nothing to show
        };
        let rel = Path::new(path).strip_prefix(&mount.root).map_err(|_| {
            Error::InvalidSpec(format!(
                "cgroup {path} ({ctrls}) is outside the mount at {} (root {})",
                mount.mount_point.display(),
                mount.root.display()
            ))
        })?;
        let name = if v2 {
            String::new()
        } else {
            mount
                .mount_point
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| ctrls.trim_start_matches("name=").to_string())
        };
        let links = if wanted.len() > 1 {
            wanted
                .iter()
                .map(|w| w.trim_start_matches("name=").to_string())
                .filter(|w| *w != name)
                .collect()
        } else {
            Vec::new()
        };
        out.push(CgroupBind {
            name,
            source: mount.mount_point.join(rel),
            links,
        });
        if v2 {
            break;
        }
    }
    if v2 && out.is_empty() {
        return Err(Error::InvalidSpec(
            "no cgroup v2 entry in /proc/self/cgroup".into(),
        ));
    }
    Ok(out)
}

fn mount_one(sys: &dyn Syscall, root: BorrowedFd<'_>, m: &Mount, plan: RootfsPlan) -> Result<()> {
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
        return mount_cgroup(sys, root, dest, &opts, typ, plan.cgroup_ns);
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

/// Mount the container's view of the cgroup hierarchy: always its own cgroup as the root.
/// Inside a cgroup namespace a cgroup mount shows exactly that; without one the
/// container's cgroup directories are bound from the host (as runc does for v1; for v2
/// runc would mount the whole host tree, which we never show). On v1/hybrid hosts that is
/// a tmpfs with one mount per v1 hierarchy; on v2 a single mount.
fn mount_cgroup(
    sys: &dyn Syscall,
    root: BorrowedFd<'_>,
    dest: &Path,
    opts: &MountOptions,
    typ: &str,
    cgroup_ns: bool,
) -> Result<()> {
    let flags = opts.flags
        & (MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC);
    let target = resolve_in_root(root, dest, Create::Dir)?;
    let ctx = |what: String| format!("mount cgroup on {}: {what}", dest.display());
    let unified = crate::cgroups::is_unified();
    // The rootfs as the mount table names it (`root` is an fd on it).
    let rootfs_path =
        std::fs::read_link(fd_path(&root)).ctx(|| "resolve the rootfs path".into())?;
    let binds = if cgroup_ns {
        None
    } else {
        let cg =
            std::fs::read_to_string("/proc/self/cgroup").ctx(|| "read /proc/self/cgroup".into())?;
        let info = std::fs::read_to_string("/proc/self/mountinfo")
            .ctx(|| "read /proc/self/mountinfo".into())?;
        Some(cgroup_binds(
            &cg,
            &parse_mountinfo(&info),
            unified || typ == "cgroup2",
            &rootfs_path,
        )?)
    };
    // Bind a host cgroup directory, then give it the spec's flags (a bind ignores them).
    let bind = |source: &Path, sub: &Path| -> Result<()> {
        let t = resolve_in_root(root, sub, Create::Dir)?;
        sys.mount(
            Some(source),
            &fd_path(&t),
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )
        .ctx(|| ctx(format!("bind {}", source.display())))?;
        let t = resolve_in_root(root, sub, Create::Nothing)?;
        sys.mount(
            None,
            &fd_path(&t),
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags | locked_flags(&fd_path(&t)),
            None,
        )
        .ctx(|| ctx(format!("remount {} with flags", source.display())))
    };
    if unified || typ == "cgroup2" {
        return match &binds {
            Some(b) => bind(&b[0].source, dest),
            None => sys
                .mount(
                    Some(Path::new("cgroup2")),
                    &fd_path(&target),
                    Some("cgroup2"),
                    flags,
                    None,
                )
                .ctx(|| ctx("cgroup2".into())),
        };
    }
    sys.mount(
        Some(Path::new("tmpfs")),
        &fd_path(&target),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=755"),
    )
    .ctx(|| ctx("tmpfs".into()))?;
    let mut links = Vec::new();
    if let Some(binds) = &binds {
        for b in binds {
            bind(&b.source, &dest.join(&b.name))?;
            links.extend(b.links.iter().map(|l| (l.clone(), b.name.clone())));
        }
    } else {
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
                Err(Errno::EPERM) => {
                    tracing::debug!(ctrls, "cgroup v1 mount not permitted, skipped")
                }
                Err(e) => return Err(e).ctx(|| ctx(format!("v1 hierarchy {ctrls}"))),
            }
            let wanted: Vec<&str> = ctrls.split(',').collect();
            if wanted.len() > 1 {
                for w in wanted {
                    links.push((w.trim_start_matches("name=").to_string(), name.to_string()));
                }
            }
        }
    }
    if !links.is_empty() {
        let dir = resolve_in_root(root, dest, Create::Nothing)?;
        for (link, to) in links {
            match nix::unistd::symlinkat(to.as_str(), dir.as_fd(), link.as_str()) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(e).ctx(|| ctx(format!("symlink {link} -> {to}"))),
            }
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

/// Enter `rootfs` without a private mount namespace (pivot_root would move the root of
/// every process in the runtime's namespace): chroot, as runc does.
pub fn chroot_into(sys: &dyn Syscall, rootfs: &Path) -> Result<()> {
    let new = open_root(rootfs)?;
    sys.fchdir(new.as_fd())
        .ctx(|| format!("fchdir {}", rootfs.display()))?;
    sys.chroot(Path::new("."))
        .ctx(|| format!("chroot into {}", rootfs.display()))?;
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
        prepare_rootfs(&sys, &spec, &rootfs, RootfsPlan::PRIVATE).expect("prepare");
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
        prepare_rootfs(&sys, &spec, &rootfs, RootfsPlan::PRIVATE).expect("prepare");
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

    const MOUNTINFO: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 /sandbox /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 27 254:0 /b/rootfs /b/rootfs rw,relatime - ext4 /dev/vda rw
51 50 0:32 /old /b/rootfs/sys/fs/cgroup/memory ro,relatime - cgroup cgroup rw,memory
60 27 0:40 / /mnt/with\\040space rw master:3 - tmpfs tmpfs rw
70 27 0:29 /berth/other /other/rootfs/sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
71 27 0:37 /berth/other /other/rootfs/sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
";

    const PROC_CGROUP: &str = "\
9:name=systemd:/berth/c1
4:memory:/sandbox/berth/c1
2:cpu,cpuacct:/berth/c1
1:pids:/berth/c1
0::/berth/c1
";

    #[test]
    fn mountinfo_fields_and_escapes() {
        let m = parse_mountinfo(MOUNTINFO);
        assert_eq!(m.len(), 12);
        assert_eq!(m[1].mount_point, Path::new("/"));
        assert!(m[1].is_shared());
        assert!(!m[0].is_shared());
        assert_eq!(m[4].root, Path::new("/sandbox"));
        assert_eq!(m[5].super_options, ["rw", "xattr", "name=systemd"]);
        assert_eq!(m[9].mount_point, Path::new("/mnt/with space"));
        assert_eq!(m[9].optional, ["master:3"]);
        assert_eq!(
            mount_containing(&m, Path::new("/b/rootfs/x")).map(|x| x.mount_point.clone()),
            Some(PathBuf::from("/b/rootfs"))
        );
        assert_eq!(
            mount_containing(&m, Path::new("/srv")).map(|x| x.mount_point.clone()),
            Some(PathBuf::from("/"))
        );
        assert!(parse_mountinfo("garbage\n1 2 3\n").is_empty());
    }

    #[test]
    fn cgroup_binds_name_the_containers_own_cgroup_per_hierarchy() {
        let m = parse_mountinfo(MOUNTINFO);
        let b = cgroup_binds(PROC_CGROUP, &m, false, Path::new("/b/rootfs")).expect("binds");
        let got: Vec<(&str, &Path)> = b
            .iter()
            .map(|b| (b.name.as_str(), b.source.as_path()))
            .collect();
        assert_eq!(
            got,
            [
                // Another container's binds of its own group (mounted later, in this
                // namespace) are not taken for the hierarchy.
                ("systemd", Path::new("/sys/fs/cgroup/systemd/berth/c1")),
                // The memory mount starts at /sandbox: the rest is relative to it, and the
                // container's own mount of the same hierarchy under the rootfs is ignored.
                ("memory", Path::new("/sys/fs/cgroup/memory/berth/c1")),
                (
                    "cpu,cpuacct",
                    Path::new("/sys/fs/cgroup/cpu,cpuacct/berth/c1")
                ),
            ]
        );
        // pids has no mount here: nothing to show rather than the wrong hierarchy.
        assert_eq!(b[2].links, ["cpu", "cpuacct"]);
        assert!(b[0].links.is_empty());
        let v2 = cgroup_binds(PROC_CGROUP, &m, true, Path::new("/b/rootfs")).expect("v2");
        assert_eq!(v2.len(), 1);
        assert_eq!(v2[0].source, Path::new("/sys/fs/cgroup/unified/berth/c1"));
        // A cgroup outside the mounted subtree is an error, not a bind of something else.
        let err = cgroup_binds(
            "4:memory:/elsewhere/c1\n",
            &m,
            false,
            Path::new("/b/rootfs"),
        )
        .expect_err("outside");
        assert!(err.to_string().contains("/elsewhere/c1"), "{err}");
        assert!(cgroup_binds("4:memory:/x\n", &m, true, Path::new("/b")).is_err());
    }

    #[test]
    fn without_a_private_mount_namespace_host_propagation_is_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir_all(&rootfs).expect("mkdir");
        let spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "linux": {"rootfsPropagation": "shared"}
        }))
        .expect("spec");
        let host = RecordingSyscall::default();
        let plan = RootfsPlan {
            private_mount_ns: false,
            cgroup_ns: false,
        };
        prepare_rootfs(&host, &spec, &rootfs, plan).expect("prepare");
        let m = mounts_of(&host.calls.borrow());
        assert_eq!(m.len(), 1, "only the rootfs bind: {m:?}");
        assert_eq!(m[0].0, rootfs);
        assert_eq!(m[0].2, MsFlags::MS_BIND | MsFlags::MS_REC);
        chroot_into(&host, &rootfs).expect("chroot");
        let calls = host.calls.borrow();
        assert!(calls.iter().any(|c| matches!(c, Call::Chroot(_))));
        assert!(!calls.iter().any(|c| matches!(c, Call::PivotRoot)));

        // With one: the spec's propagation on / first, then the rootfs bind.
        let own = RecordingSyscall::default();
        prepare_rootfs(&own, &spec, &rootfs, RootfsPlan::PRIVATE).expect("prepare");
        let m = mounts_of(&own.calls.borrow());
        assert_eq!(
            (m[0].0.as_path(), m[0].2),
            (Path::new("/"), MsFlags::MS_SHARED)
        );
        let last = m.last().expect("bind");
        assert_eq!(
            (last.0.as_path(), last.2),
            (rootfs.as_path(), MsFlags::MS_BIND | MsFlags::MS_REC)
        );
        // Anything between is the rootfs' parent made private (only when it is shared).
        for x in &m[1..m.len() - 1] {
            assert_eq!(x.2, MsFlags::MS_PRIVATE, "{x:?}");
        }
    }
}
