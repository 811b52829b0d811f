//! The container's init, run as a re-executed sealed copy of the runtime binary.
//!
//! Why re-exec: the executor is multi-threaded, and after fork(2) in a threaded process
//! only async-signal-safe code may run; namespace and mount setup is far from that. So the
//! runtime spawns (fork+exec, which is safe) a *sealed memfd copy* of its own executable
//! with `_BERTH_INIT` set. A process inside the container can therefore never reach the
//! runtime binary on disk through `/proc/<pid>/exe` (runc CVE-2019-5736 class): it would
//! find an anonymous, write-sealed memfd.
//!
//! Two stages, talking to the runtime over a SOCK_SEQPACKET socket on fd 3:
//! * stage 1 joins/creates namespaces (a new user namespace waits for the runtime to write
//!   its id maps), then clone(CLONE_PARENT) so that the container process is a direct child
//!   of the runtime (which can then wait(2) for its exit status) and PID 1 of the new pid
//!   namespace; stage 1 reports that pid and exits.
//! * stage 2 builds the root filesystem, reports "created", blocks on the exec fifo until
//!   `start`, drops privileges and execs the user's process.

use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use nix::sys::socket::{send, MsgFlags};
use oci_spec::runtime::{LinuxNamespaceType, Process, Spec};
use serde::{Deserialize, Serialize};

use crate::error::{Context, Error, Result};
use crate::sys::{LinuxSyscall, Syscall};

/// Environment variable naming the init socket fd; its presence selects init mode.
pub const INIT_ENV: &str = "_BERTH_INIT";
/// The fd the init socket is placed on.
pub const INIT_FD: RawFd = 3;

/// What the runtime asks the init to do.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct InitConfig {
    pub id: String,
    pub spec: Spec,
    /// The process to run (the spec's for create, process.json for exec).
    pub process: Process,
    /// Absolute rootfs path (create only).
    pub rootfs: PathBuf,
    /// Exec fifo (create only): the init blocks on it until `start`.
    pub fifo: Option<PathBuf>,
    /// Exec into the namespaces of this running container process.
    pub join_pid: Option<i32>,
    /// The state JSON handed to createContainer/startContainer hooks.
    pub state_json: String,
}

/// Messages on the init socket.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Msg {
    Config(Box<InitConfig>),
    /// Stage 1 created a user namespace: write its maps.
    UsernsReady,
    UsernsMapped,
    /// The container process' host pid.
    Pid(i32),
    /// Mounts are done, before pivot_root: run prestart/createRuntime hooks.
    RunHooks,
    HooksDone,
    /// The pty master of `process.terminal` rides along as SCM_RIGHTS.
    Console,
    /// Ready and waiting on the exec fifo.
    Created,
    Error(String),
}

pub(crate) fn send_msg(fd: impl AsFd, m: &Msg) -> Result<()> {
    let buf = serde_json::to_vec(m).ctx(|| "encode init message".into())?;
    send(fd.as_fd().as_raw_fd(), &buf, MsgFlags::empty()).ctx(|| "send on init socket".into())?;
    Ok(())
}

/// Receive one message; `None` on EOF (the peer exec'd or exited).
pub(crate) fn recv_msg(fd: impl AsFd) -> Result<Option<Msg>> {
    Ok(recv_msg_fd(fd)?.0)
}

/// Receive one message and the fd passed with it, if any.
pub(crate) fn recv_msg_fd(fd: impl AsFd) -> Result<(Option<Msg>, Option<OwnedFd>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned};
    let mut buf = vec![0u8; 4 << 20];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let (n, passed) = loop {
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        match recvmsg::<()>(
            fd.as_fd().as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => {
                let m = r.ctx(|| "receive on init socket".into())?;
                let mut passed = None;
                for c in m.cmsgs().ctx(|| "read control message".into())? {
                    if let ControlMessageOwned::ScmRights(fds) = c {
                        for f in fds {
                            let f = unsafe { OwnedFd::from_raw_fd(f) };
                            passed.get_or_insert(f);
                        }
                    }
                }
                break (m.bytes, passed);
            }
        }
    };
    if n == 0 {
        return Ok((None, passed));
    }
    let msg = serde_json::from_slice(&buf[..n]).ctx(|| "decode init message".into())?;
    Ok((Some(msg), passed))
}

fn send_fd(sock: &OwnedFd, m: &Msg, fd: &OwnedFd) -> Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage};
    let buf = serde_json::to_vec(m).ctx(|| "encode init message".into())?;
    let fds = [fd.as_raw_fd()];
    sendmsg::<()>(
        sock.as_raw_fd(),
        &[std::io::IoSlice::new(&buf)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .ctx(|| "send fd on init socket".into())?;
    Ok(())
}

/// `process.terminal`: a pty from the container's own devpts; the master goes to the
/// runtime, the slave becomes our controlling terminal and stdio.
fn setup_console(sock: &OwnedFd, p: &Process) -> Result<()> {
    use nix::fcntl::OFlag;
    let flags = OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let master = nix::fcntl::open("/dev/ptmx", flags, nix::sys::stat::Mode::empty())
        .ctx(|| "open /dev/ptmx".into())?;
    let unlock: libc::c_int = 0;
    let r = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) };
    nix::errno::Errno::result(r).ctx(|| "unlock pty".into())?;
    let mut n: libc::c_uint = 0;
    let r = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n) };
    nix::errno::Errno::result(r).ctx(|| "get pty number".into())?;
    let slave_path = format!("/dev/pts/{n}");
    let slave = nix::fcntl::open(slave_path.as_str(), flags, nix::sys::stat::Mode::empty())
        .ctx(|| format!("open {slave_path}"))?;
    if let Some(sz) = p.console_size() {
        let ws = libc::winsize {
            ws_row: sz.height() as u16,
            ws_col: sz.width() as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }
    send_fd(sock, &Msg::Console, &master)?;
    drop(master);
    nix::unistd::setsid().ctx(|| "setsid".into())?;
    let r = unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) };
    nix::errno::Errno::result(r).ctx(|| "set controlling terminal".into())?;
    for target in 0..3 {
        nix::errno::Errno::result(unsafe { libc::dup2(slave.as_raw_fd(), target) })
            .ctx(|| "dup pty onto stdio".into())?;
    }
    Ok(())
}

/// The init socket's fd: [`INIT_FD`], or above the fds the container process inherits
/// (`--preserve-fds`, LISTEN_FDS), which sit at 3.. right below it.
fn init_sock_fd() -> RawFd {
    std::env::var(INIT_ENV)
        .ok()
        .and_then(|v| v.parse::<RawFd>().ok())
        .filter(|fd| *fd >= INIT_FD)
        .unwrap_or(INIT_FD)
}

/// Call first thing in `main` of every binary that creates containers: in init mode it
/// sets up the container and never returns; otherwise it returns immediately.
pub fn init_if_requested() {
    if std::env::var_os(INIT_ENV).is_none() {
        return;
    }
    // Not dumpable until the final exec: a process already in the container (same uid) must
    // not ptrace us or open our /proc/<pid>/fd while we hold namespace and socket fds.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    let sock = unsafe { OwnedFd::from_raw_fd(init_sock_fd()) };
    let _ = nix::fcntl::fcntl(
        &sock,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    let code = match stage1(&sock) {
        Ok(()) => 0,
        Err(e) => {
            let _ = send_msg(&sock, &Msg::Error(e.to_string()));
            1
        }
    };
    unsafe { libc::_exit(code) }
}

fn ns_flag(t: LinuxNamespaceType) -> CloneFlags {
    match t {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::Time => CloneFlags::from_bits_retain(libc::CLONE_NEWTIME),
    }
}

/// The namespaces to join by path and the flags to unshare, from the spec.
pub fn plan_namespaces(spec: &Spec) -> (Vec<(CloneFlags, PathBuf)>, CloneFlags) {
    let mut join = Vec::new();
    let mut new = CloneFlags::empty();
    for ns in spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default()
    {
        let f = ns_flag(ns.typ());
        match ns.path() {
            Some(p) if !p.as_os_str().is_empty() => join.push((f, p.clone())),
            _ => new |= f,
        }
    }
    // Join the user namespace first: it owns the others and grants the rights to join them.
    join.sort_by_key(|(f, _)| {
        if *f == CloneFlags::CLONE_NEWUSER {
            0
        } else {
            1
        }
    });
    (join, new)
}

fn open_namespace(path: &Path) -> Result<OwnedFd> {
    nix::fcntl::open(
        path,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ctx(|| format!("open namespace {}", path.display()))
}

fn become_userns_root(which: &str) -> Result<()> {
    nix::unistd::setresgid(0.into(), 0.into(), 0.into())
        .ctx(|| format!("setresgid 0 in the {which} user namespace"))?;
    nix::unistd::setresuid(0.into(), 0.into(), 0.into())
        .ctx(|| format!("setresuid 0 in the {which} user namespace"))
}

/// Is the namespace at `path` the one this process is in already (so joining it gives the
/// container nothing private: the host's UTS, network or mount namespace)?
fn same_namespace_as_ours(fd: &OwnedFd, path: &Path, flag: CloneFlags) -> Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let name = match flag {
        CloneFlags::CLONE_NEWNS => "mnt",
        CloneFlags::CLONE_NEWCGROUP => "cgroup",
        CloneFlags::CLONE_NEWUTS => "uts",
        CloneFlags::CLONE_NEWIPC => "ipc",
        CloneFlags::CLONE_NEWUSER => "user",
        CloneFlags::CLONE_NEWPID => "pid",
        CloneFlags::CLONE_NEWNET => "net",
        _ => "time",
    };
    let theirs = nix::sys::stat::fstat(fd).ctx(|| format!("stat namespace {}", path.display()))?;
    let ours = std::fs::metadata(format!("/proc/self/ns/{name}"))
        .ctx(|| format!("stat /proc/self/ns/{name}"))?;
    Ok(theirs.st_ino == ours.ino() && theirs.st_dev == ours.dev())
}

/// Settings that need a namespace of their own, checked before anything is set up (runc's
/// validator refuses the same configs): a hostname needs a UTS namespace, masked and
/// read-only paths need a mount namespace (without one they would be applied to the host).
pub fn validate_namespaces(
    spec: &Spec,
    join: &[(CloneFlags, PathBuf)],
    new: CloneFlags,
) -> Result<()> {
    // Two entries of one type would silently merge into one namespace (runc refuses too).
    let mut seen = CloneFlags::empty();
    for ns in spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .into_iter()
        .flatten()
    {
        let f = ns_flag(ns.typ());
        if seen.contains(f) {
            return Err(Error::InvalidSpec(format!(
                "namespace {:?} is listed twice in linux.namespaces",
                ns.typ()
            )));
        }
        seen |= f;
    }
    let present = join.iter().fold(new, |acc, (f, _)| acc | *f);
    if spec.hostname().as_deref().is_some_and(|h| !h.is_empty())
        && !present.contains(CloneFlags::CLONE_NEWUTS)
    {
        return Err(Error::InvalidSpec(
            "unable to set hostname without a private UTS namespace".into(),
        ));
    }
    if spec.domainname().as_deref().is_some_and(|h| !h.is_empty())
        && !present.contains(CloneFlags::CLONE_NEWUTS)
    {
        return Err(Error::InvalidSpec(
            "unable to set domainname without a private UTS namespace".into(),
        ));
    }
    let linux = spec.linux().as_ref();
    let restricts = linux.is_some_and(|l| {
        l.masked_paths().as_ref().is_some_and(|v| !v.is_empty())
            || l.readonly_paths().as_ref().is_some_and(|v| !v.is_empty())
    });
    if restricts && !present.contains(CloneFlags::CLONE_NEWNS) {
        return Err(Error::InvalidSpec(
            "unable to restrict sys entries (maskedPaths, readonlyPaths) without a private \
             mount namespace"
                .into(),
        ));
    }
    Ok(())
}

fn stage1(sock: &OwnedFd) -> Result<()> {
    let cfg = match recv_msg(sock)? {
        Some(Msg::Config(c)) => *c,
        other => {
            return Err(Error::InvalidSpec(format!(
                "init: expected config, got {other:?}"
            )))
        }
    };
    // Namespaces the container has that are not the runtime's own: decided before any
    // setns, while /proc/self/ns still names the runtime's.
    let mut private = CloneFlags::empty();
    if let Some(pid) = cfg.join_pid {
        join_container(pid)?;
    } else {
        let (join, new) = plan_namespaces(&cfg.spec);
        validate_namespaces(&cfg.spec, &join, new)?;
        private = new;
        // Open every path before joining any: after setns into a mount namespace the paths
        // would resolve in that namespace (runc opens them all first too).
        let mut fds = Vec::with_capacity(join.len());
        for (flag, path) in &join {
            let fd = open_namespace(path)?;
            if !same_namespace_as_ours(&fd, path, *flag)? {
                private |= *flag;
            }
            fds.push((*flag, path, fd));
        }
        for (flag, path, fd) in fds {
            nix::sched::setns(fd, flag).ctx(|| format!("setns {}", path.display()))?;
            if flag == CloneFlags::CLONE_NEWUSER {
                // Like a new user namespace: act as its root (runc's init does setuid(0)).
                become_userns_root("joined")?;
            }
        }
        if new.contains(CloneFlags::CLONE_NEWUSER) {
            nix::sched::unshare(CloneFlags::CLONE_NEWUSER)
                .ctx(|| "unshare user namespace".into())?;
            send_msg(sock, &Msg::UsernsReady)?;
            match recv_msg(sock)? {
                Some(Msg::UsernsMapped) => {}
                other => {
                    return Err(Error::InvalidSpec(format!(
                        "init: expected id maps, got {other:?}"
                    )))
                }
            }
            become_userns_root("new")?;
        }
        let rest = new - CloneFlags::CLONE_NEWUSER;
        nix::sched::unshare(rest).ctx(|| format!("unshare namespaces {rest:?}"))?;
    }
    // Like fork(2), but the child's parent is the runtime (our parent).
    let child = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    let child = nix::errno::Errno::result(child).ctx(|| "clone container process".into())?;
    if child == 0 {
        let code = match stage2(sock, &cfg, private) {
            Ok(never) => match never {},
            Err(e) => {
                let _ = send_msg(sock, &Msg::Error(e.to_string()));
                1
            }
        };
        unsafe { libc::_exit(code) }
    }
    send_msg(sock, &Msg::Pid(child as i32))
}

/// Join every namespace of a running container process that differs from ours.
fn join_container(pid: i32) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let order = [
        ("user", CloneFlags::CLONE_NEWUSER),
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("cgroup", CloneFlags::CLONE_NEWCGROUP),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ];
    let mut fds = Vec::new();
    // Open them all first: after joining the mount namespace /proc/<pid> may not resolve.
    for (name, flag) in order {
        let theirs = PathBuf::from(format!("/proc/{pid}/ns/{name}"));
        let ours = PathBuf::from(format!("/proc/self/ns/{name}"));
        let (Ok(t), Ok(o)) = (std::fs::metadata(&theirs), std::fs::metadata(&ours)) else {
            continue;
        };
        if t.ino() == o.ino() && t.dev() == o.dev() {
            continue;
        }
        let fd = nix::fcntl::open(
            &theirs,
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .ctx(|| format!("open {}", theirs.display()))?;
        fds.push((name, flag, fd));
    }
    // A container without a mount namespace of its own was entered with chroot: joining
    // its namespaces alone would leave an exec'd process at the host's root (runc's does).
    let joins_mnt = fds.iter().any(|(_, f, _)| *f == CloneFlags::CLONE_NEWNS);
    let their_root = if joins_mnt {
        None
    } else {
        let p = format!("/proc/{pid}/root");
        let fd = nix::fcntl::open(
            p.as_str(),
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .ctx(|| format!("open {p}"))?;
        Some(fd)
    };
    for (name, flag, fd) in fds {
        nix::sched::setns(fd, flag).ctx(|| format!("join {name} namespace of pid {pid}"))?;
    }
    if let Some(root) = their_root {
        let theirs = nix::sys::stat::fstat(&root).ctx(|| format!("stat root of pid {pid}"))?;
        let ours = nix::sys::stat::stat("/").ctx(|| "stat /".into())?;
        if (theirs.st_dev, theirs.st_ino) != (ours.st_dev, ours.st_ino) {
            nix::unistd::fchdir(&root).ctx(|| format!("fchdir to root of pid {pid}"))?;
            nix::unistd::chroot(".").ctx(|| format!("chroot to root of pid {pid}"))?;
            nix::unistd::chdir("/").ctx(|| "chdir /".into())?;
        }
    }
    Ok(())
}

enum Never {}

fn stage2(sock: &OwnedFd, cfg: &InitConfig, private: CloneFlags) -> Result<Never> {
    let sys = LinuxSyscall;
    if cfg.join_pid.is_some() {
        if cfg.process.terminal().unwrap_or(false) {
            setup_console(sock, &cfg.process)?;
        }
        return finalize_and_exec(cfg, &cfg.process);
    }
    let spec = &cfg.spec;
    let (_, new) = plan_namespaces(spec);
    let plan = crate::mounts::RootfsPlan {
        private_mount_ns: private.contains(CloneFlags::CLONE_NEWNS),
        cgroup_ns: private.contains(CloneFlags::CLONE_NEWCGROUP),
    };
    crate::mounts::prepare_rootfs(&sys, spec, &cfg.rootfs, plan)?;
    let fifo = match &cfg.fifo {
        Some(p) => Some(
            nix::fcntl::open(
                p,
                nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .ctx(|| format!("open exec fifo {}", p.display()))?,
        ),
        None => None,
    };
    let hooks = spec.hooks().as_ref();
    #[allow(deprecated)]
    let runtime_hooks = hooks.is_some_and(|h| {
        h.prestart().as_ref().is_some_and(|v| !v.is_empty())
            || h.create_runtime().as_ref().is_some_and(|v| !v.is_empty())
    });
    if runtime_hooks {
        send_msg(sock, &Msg::RunHooks)?;
        match recv_msg(sock)? {
            Some(Msg::HooksDone) => {}
            other => {
                return Err(Error::InvalidSpec(format!(
                    "init: expected hooks done, got {other:?}"
                )))
            }
        }
    }
    if let Some(h) = hooks.and_then(|h| h.create_container().clone()) {
        crate::hooks::run(&h, &cfg.state_json, "createContainer")?;
    }
    if new.contains(CloneFlags::CLONE_NEWNET) {
        loopback_up()?;
    }
    if plan.private_mount_ns {
        crate::mounts::pivot_into(&sys, &cfg.rootfs)?;
    } else {
        crate::mounts::chroot_into(&sys, &cfg.rootfs)?;
    }
    // A UTS namespace joined by path gets the hostname too (as with runc), but never the
    // runtime's own: that would rename the host.
    for (value, what) in [
        (spec.hostname(), "hostname"),
        (spec.domainname(), "domainname"),
    ] {
        let Some(v) = value.as_deref().filter(|v| !v.is_empty()) else {
            continue;
        };
        if !private.contains(CloneFlags::CLONE_NEWUTS) {
            return Err(Error::InvalidSpec(format!(
                "{what} needs a UTS namespace of the container's own (the one given is the \
                 runtime's)"
            )));
        }
        let r = if what == "hostname" {
            sys.sethostname(v)
        } else {
            sys.setdomainname(v)
        };
        r.ctx(|| format!("set{what} {v}"))?;
    }
    for (k, v) in spec
        .linux()
        .as_ref()
        .and_then(|l| l.sysctl().clone())
        .unwrap_or_default()
    {
        if !sysctl_allowed(&k, private) {
            return Err(Error::InvalidSpec(format!(
                "sysctl {k} is not namespaced (or its namespace is shared with the host)"
            )));
        }
        let path = PathBuf::from("/proc/sys").join(k.replace('.', "/"));
        std::fs::write(&path, v.as_bytes()).ctx(|| format!("write sysctl {k}"))?;
    }
    crate::mounts::finish_rootfs(&sys, spec, Path::new("/"))?;
    ensure_workdir(&cfg.process)?;
    // Fail `create`, not `start`, when the program is missing (as runc does).
    let args = cfg.process.args().clone().unwrap_or_default();
    let cmd = args
        .first()
        .ok_or_else(|| Error::InvalidSpec("process.args is empty".into()))?;
    lookup_path(cmd, cfg.process.env().as_deref().unwrap_or(&[]))?;
    if cfg.process.terminal().unwrap_or(false) {
        setup_console(sock, &cfg.process)?;
    }
    // Everything that can fail (rlimits, capabilities, user, seccomp) happens before
    // "created", as in runc: after it the creating process may have exited (`runc create`)
    // and a failure would only show as a dead container at `start`.
    let ready = finalize(cfg, &cfg.process)?;
    send_msg(sock, &Msg::Created)?;
    if let Some(fifo) = fifo {
        // Blocks until `start` opens the fifo for reading.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(crate::path::fd_path(&fifo))
            .ctx(|| "open exec fifo for writing".into())?;
        f.write_all(b"0").ctx(|| "write exec fifo".into())?;
    }
    if let Some(h) = hooks.and_then(|h| h.start_container().clone()) {
        crate::hooks::run(&h, &cfg.state_json, "startContainer")?;
    }
    exec_ready(ready)
}

/// Create a missing working directory as Docker does (an image's WORKDIR need not exist
/// in its layers; `-w` may name any path), owned by the process' user. Done after
/// pivot_root and after the root and read-only paths got their final flags, so a
/// read-only root or read-only path fails here, at create, with a clear error instead of
/// a bare chdir ENOENT at start.
fn ensure_workdir(p: &Process) -> Result<()> {
    let cwd = p.cwd();
    if cwd.as_os_str().is_empty() {
        return Ok(());
    }
    let root = crate::path::open_root(Path::new("/"))?;
    let user = p.user();
    match crate::path::mkdir_all_owned(root.as_fd(), cwd, user.uid(), user.gid()) {
        Err(e) if e.errno() == Some(nix::errno::Errno::EROFS) => Err(Error::InvalidSpec(format!(
            "working directory {} does not exist and cannot be created: the container's \
             root filesystem (or the mount holding it) is read-only",
            cwd.display()
        ))),
        r => r.map(drop),
    }
}

/// A new network namespace has only `lo`, and it is down; Docker brings it up, so do we.
fn loopback_up() -> Result<()> {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .ctx(|| "socket for loopback".into())?;
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) };
    nix::errno::Errno::result(r).ctx(|| "get flags of lo".into())?;
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) };
    nix::errno::Errno::result(r).ctx(|| "bring lo up".into())?;
    Ok(())
}

/// Namespaced sysctls only (what runc accepts), and only when that namespace is private.
pub fn sysctl_allowed(key: &str, new: CloneFlags) -> bool {
    const IPC: &[&str] = &[
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    if IPC.contains(&key) || key.starts_with("fs.mqueue.") {
        return new.contains(CloneFlags::CLONE_NEWIPC);
    }
    if key.starts_with("net.") {
        return new.contains(CloneFlags::CLONE_NEWNET);
    }
    if key == "kernel.hostname" || key == "kernel.domainname" {
        return new.contains(CloneFlags::CLONE_NEWUTS);
    }
    false
}

/// Find `cmd` in PATH (from the process env) inside the container root.
pub fn lookup_path(cmd: &str, env: &[String]) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let ok = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if cmd.contains('/') {
        let p = PathBuf::from(cmd);
        return if ok(&p) {
            Ok(p)
        } else {
            Err(Error::InvalidSpec(format!(
                "exec: {cmd:?}: no such file or executable"
            )))
        };
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path.split(':')
        .map(|d| Path::new(d).join(cmd))
        .find(|p| ok(p))
        .ok_or_else(|| {
            Error::InvalidSpec(format!("exec: {cmd:?}: executable file not found in $PATH"))
        })
}

fn finalize_and_exec(cfg: &InitConfig, p: &Process) -> Result<Never> {
    exec_ready(finalize(cfg, p)?)
}

/// The process, set up up to the exec: what is left to do once `start` arrives.
struct Ready {
    exe: CString,
    args: Vec<CString>,
    env: Vec<CString>,
    exe_path: PathBuf,
    /// no_new_privs is set last, with its seccomp filter, just before the exec.
    nnp: bool,
    seccomp: Vec<seccompiler::BpfProgram>,
}

/// Everything before the exec that can fail: cwd, rlimits, seccomp (without
/// no_new_privs it needs CAP_SYS_ADMIN, so before the capabilities drop), capabilities,
/// user and groups.
fn finalize(cfg: &InitConfig, p: &Process) -> Result<Ready> {
    let args = p.args().clone().unwrap_or_default();
    let Some(cmd) = args.first() else {
        return Err(Error::InvalidSpec("process.args is empty".into()));
    };
    let env = p.env().clone().unwrap_or_default();
    let exe = lookup_path(cmd, &env)?;
    let cwd = if p.cwd().as_os_str().is_empty() {
        Path::new("/")
    } else {
        p.cwd().as_path()
    };
    // chdir after pivot_root / setns(mnt), so the cwd is inside the container root and no
    // host directory fd can be the cwd (runc CVE-2024-21626).
    nix::unistd::chdir(cwd).ctx(|| format!("chdir to cwd {}", cwd.display()))?;
    crate::rlimits::apply(p.rlimits().as_deref().unwrap_or(&[]))?;
    let masks = crate::caps::Masks::from_spec(p.capabilities().as_ref());
    let nnp = p.no_new_privileges().unwrap_or(false);
    let seccomp = match cfg.spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        Some(s) => crate::seccomp::compile(s)?,
        None => Vec::new(),
    };
    // Without no_new_privs, installing a filter needs CAP_SYS_ADMIN: do it while we have it.
    if !nnp {
        crate::seccomp::install(&seccomp)?;
    }
    crate::caps::apply_bounding(&masks)?;
    let user = p.user();
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) };
    let groups: Vec<nix::unistd::Gid> = user
        .additional_gids()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(Into::into)
        .collect();
    // A user namespace whose setgroups is "deny" (made by an unprivileged user, or by
    // `unshare --map-root-user`) refuses setgroups(2) even for an empty list: skip it as
    // runc does, unless groups were asked for.
    let setgroups_denied =
        std::fs::read_to_string("/proc/self/setgroups").is_ok_and(|s| s.trim() == "deny");
    if !setgroups_denied {
        nix::unistd::setgroups(&groups).ctx(|| "setgroups".into())?;
    } else if !groups.is_empty() {
        return Err(Error::InvalidSpec(format!(
            "additionalGids {groups:?} cannot be set: setgroups is denied in this user namespace"
        )));
    }
    nix::unistd::setresgid(user.gid().into(), user.gid().into(), user.gid().into())
        .ctx(|| format!("setgid {}", user.gid()))?;
    nix::unistd::setresuid(user.uid().into(), user.uid().into(), user.uid().into())
        .ctx(|| format!("setuid {}", user.uid()))?;
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) };
    crate::caps::apply_sets(&masks)?;
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(
        user.umask().unwrap_or(0o022),
    ));
    let c_exe = CString::new(exe.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::InvalidSpec("NUL in path".into()))?;
    let c_args: Vec<CString> = args
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|_| Error::InvalidSpec("NUL in args".into()))?;
    let c_env: Vec<CString> = env
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|_| Error::InvalidSpec("NUL in env".into()))?;
    Ok(Ready {
        exe: c_exe,
        args: c_args,
        env: c_env,
        exe_path: exe,
        nnp,
        seccomp: if nnp { seccomp } else { Vec::new() },
    })
}

fn exec_ready(r: Ready) -> Result<Never> {
    if r.nnp {
        let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
        nix::errno::Errno::result(rc).ctx(|| "set no_new_privs".into())?;
        crate::seccomp::install(&r.seccomp)?;
    }
    // Nothing but stdio and the preserved fds (3 up to the init socket) crosses into the
    // container: mark every other fd close-on-exec.
    let first = init_sock_fd();
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc != 0 {
        // Old kernel: walk /proc/self/fd instead.
        for fd in first..1024 {
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
    let e = nix::unistd::execve(&r.exe, &r.args, &r.env).unwrap_err();
    Err(Error::Sys {
        context: format!("exec {}", r.exe_path.display()),
        cause: e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_plan_joins_user_first() {
        let spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.0",
            "linux": {"namespaces": [{"type": "network", "path": "/proc/1/ns/net"}, {"type": "pid"}, {"type": "user", "path": "/proc/1/ns/user"}, {"type": "mount"}]}
        }))
        .expect("spec");
        let (join, new) = plan_namespaces(&spec);
        assert_eq!(join[0].0, CloneFlags::CLONE_NEWUSER);
        assert_eq!(join[1].0, CloneFlags::CLONE_NEWNET);
        assert_eq!(new, CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNS);
    }

    #[test]
    fn only_namespaced_sysctls() {
        let all = CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWUTS;
        assert!(sysctl_allowed("net.ipv4.ip_forward", all));
        assert!(!sysctl_allowed(
            "net.ipv4.ip_forward",
            CloneFlags::CLONE_NEWIPC
        ));
        assert!(sysctl_allowed("kernel.shmmax", all));
        assert!(sysctl_allowed("fs.mqueue.msg_max", all));
        assert!(!sysctl_allowed("kernel.panic", all));
        assert!(!sysctl_allowed("vm.overcommit_memory", all));
    }

    #[test]
    fn path_lookup() {
        let env = vec!["PATH=/nonexistent:/bin".to_string()];
        assert_eq!(
            lookup_path("sh", &env).expect("sh"),
            PathBuf::from("/bin/sh")
        );
        let e = lookup_path("no-such-cmd-xyz", &env).expect_err("missing");
        assert!(e.to_string().contains("executable file not found in $PATH"));
    }

    #[test]
    fn settings_that_need_a_namespace_are_refused_without_one() {
        let spec = |v: serde_json::Value| -> Spec { serde_json::from_value(v).expect("spec") };
        let with_hostname = spec(serde_json::json!({
            "ociVersion": "1.0.2", "hostname": "h",
            "linux": {"namespaces": [{"type": "mount"}]}
        }));
        let (join, new) = plan_namespaces(&with_hostname);
        let e = validate_namespaces(&with_hostname, &join, new).expect_err("no uts");
        assert!(e.to_string().contains("private UTS namespace"), "{e}");
        // A UTS namespace joined by path is enough (runc sets the hostname there).
        let joined = spec(serde_json::json!({
            "ociVersion": "1.0.2", "hostname": "h",
            "linux": {"namespaces": [{"type": "uts", "path": "/proc/1/ns/uts"}]}
        }));
        let (join, new) = plan_namespaces(&joined);
        validate_namespaces(&joined, &join, new).expect("joined uts");
        // No mount namespace at all runs, unless masked/read-only paths would hit the host.
        let no_mnt = spec(serde_json::json!({
            "ociVersion": "1.0.2", "linux": {"namespaces": [{"type": "pid"}]}
        }));
        let (join, new) = plan_namespaces(&no_mnt);
        validate_namespaces(&no_mnt, &join, new).expect("no mount ns");
        let masked = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "linux": {"namespaces": [{"type": "pid"}], "maskedPaths": ["/proc/kcore"]}
        }));
        let (join, new) = plan_namespaces(&masked);
        let e = validate_namespaces(&masked, &join, new).expect_err("masked");
        assert!(e.to_string().contains("mount namespace"), "{e}");
        let twice = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "linux": {"namespaces": [{"type": "pid"}, {"type": "pid", "path": "/proc/1/ns/pid"}]}
        }));
        let (join, new) = plan_namespaces(&twice);
        let e = validate_namespaces(&twice, &join, new).expect_err("twice");
        assert!(e.to_string().contains("listed twice"), "{e}");
    }
}
