//! Starting the container init: the sealed memfd copy of the runtime binary it runs
//! from, the socket it talks over, and the runtime's side of the init protocol.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use oci_spec::runtime::Spec;

use crate::container::Stdio;
use crate::error::{Context, Error, Result};
use crate::init::{recv_msg, recv_msg_fd, send_msg, InitConfig, Msg, INIT_ENV, INIT_FD};

/// A sealed memfd holding a copy of the init binary, made once per process.
pub(crate) fn sealed_init(binary: &Path) -> Result<&'static OwnedFd> {
    // One sealed fd per distinct binary for the life of the process (in practice one or
    // two), unless `forget_sealed_inits` gives them back.
    let mut cache = sealed_cache().lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, fd)) = cache.iter().find(|(p, _)| p == binary) {
        return Ok(fd);
    }
    let fd: &'static OwnedFd = Box::leak(Box::new(make_sealed(binary)?));
    cache.push((binary.to_path_buf(), fd));
    Ok(fd)
}

/// Closes every sealed init copy this process made, giving its memory back (a memfd's
/// pages live as long as an fd to it: several MB per process that keeps one).
///
/// # Safety
/// No reference returned by an earlier `sealed_init` may be in use, and no container
/// may be created or exec'd concurrently; a later create simply makes a new copy.
pub unsafe fn forget_sealed_inits() {
    let mut cache = sealed_cache().lock().unwrap_or_else(|e| e.into_inner());
    for (_, fd) in cache.drain(..) {
        // SAFETY: each entry was leaked from a Box in `sealed_init` and, per the
        // caller's promise, nothing borrows it any more.
        drop(unsafe { Box::from_raw(fd as *const OwnedFd as *mut OwnedFd) });
    }
}

type SealedCache = Mutex<Vec<(PathBuf, &'static OwnedFd)>>;

fn sealed_cache() -> &'static SealedCache {
    static CACHE: SealedCache = Mutex::new(Vec::new());
    &CACHE
}

fn make_sealed(binary: &Path) -> Result<OwnedFd> {
    // Already a write-sealed memfd (e.g. `/proc/self/fd/N` inherited from an executor
    // that sealed one copy for all its monitors): use it as is, no copy.
    if let Ok(f) = std::fs::File::open(binary) {
        let seals = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GET_SEALS) };
        if seals >= 0 && seals & libc::F_SEAL_WRITE != 0 && seals & libc::F_SEAL_SEAL != 0 {
            let fd = nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10))
                .ctx(|| "dup sealed init".into())?;
            return Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
        }
    }
    use nix::sys::memfd::{memfd_create, MFdFlags};
    // MFD_EXEC (Linux 6.3+) keeps the memfd executable where vm.memfd_noexec defaults to
    // non-executable memfds; older kernels reject the flag and are executable anyway.
    const MFD_EXEC: MFdFlags = MFdFlags::from_bits_retain(0x0010);
    let base = MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING;
    let fd = match memfd_create(c"berth-runtime", base | MFD_EXEC) {
        Err(nix::errno::Errno::EINVAL) => memfd_create(c"berth-runtime", base),
        r => r,
    }
    .ctx(|| "memfd_create for init".into())?;
    let mut src =
        std::fs::File::open(binary).ctx(|| format!("open init binary {}", binary.display()))?;
    let mut dst = std::fs::File::from(fd);
    std::io::copy(&mut src, &mut dst).ctx(|| "copy init binary into memfd".into())?;
    // Keep the memfd off fd 3: the child dup2()s its init socket there before exec.
    let fd = nix::fcntl::fcntl(&dst, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10))
        .ctx(|| "dup init memfd".into())?;
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    drop(dst);
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) };
    nix::errno::Errno::result(r).ctx(|| "seal init memfd".into())?;
    Ok(fd)
}

/// Make (once per process) the sealed memfd copy of `binary` that inits are executed from,
/// and return its `/proc/self/fd/N` path. An executor can call this at startup and pass the
/// path (the fd is inherited if the executor clears CLOEXEC for its monitors) as
/// [`CreateOptions::init_binary`], so that no monitor copies the binary again.
pub fn sealed_init_path(binary: &Path) -> Result<PathBuf> {
    Ok(PathBuf::from(format!(
        "/proc/self/fd/{}",
        sealed_init(binary)?.as_raw_fd()
    )))
}

pub(crate) struct Spawned {
    pub(crate) stage1: std::process::Child,
    pub(crate) sock: OwnedFd,
}

/// Move `fd` to a number above `floor` (close-on-exec), so that it cannot sit among the
/// preserved fds the child keeps.
fn above(fd: OwnedFd, floor: i32) -> Result<OwnedFd> {
    if fd.as_raw_fd() > floor {
        return Ok(fd);
    }
    let n = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(floor + 1))
        .ctx(|| "move fd above the preserved fds".into())?;
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(n) })
}

/// Spawn the init. `preserve_fds`: this process' fds 3..3+N stay open for the container
/// process (runc's --preserve-fds, LISTEN_FDS); the init socket then goes right above them.
pub(crate) fn spawn_init(
    init_binary: Option<&Path>,
    cwd: &Path,
    stdio: Stdio,
    preserve_fds: u32,
) -> Result<Spawned> {
    let binary = match init_binary {
        Some(b) => b.to_path_buf(),
        None => std::env::current_exe().ctx(|| "find current executable".into())?,
    };
    let target = INIT_FD
        .checked_add_unsigned(preserve_fds)
        .filter(|t| *t < 4096)
        .ok_or_else(|| Error::InvalidSpec(format!("too many fds to preserve: {preserve_fds}")))?;
    for fd in INIT_FD..target {
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(Error::InvalidSpec(format!(
                "preserving {preserve_fds} fds: fd {fd} is not open"
            )));
        }
    }
    let memfd = sealed_init(&binary)?;
    // The memfd must survive until the exec: keep it clear of the fds the child rewires.
    let memfd_copy = if memfd.as_raw_fd() <= target {
        Some(above(
            memfd.try_clone().ctx(|| "dup init memfd".into())?,
            target,
        )?)
    } else {
        None
    };
    let exe_fd = memfd_copy.as_ref().unwrap_or(memfd).as_raw_fd();
    let (parent, child) = nix::sys::socket::socketpair(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::SeqPacket,
        None,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
    )
    .ctx(|| "socketpair for init".into())?;
    let (parent, child) = (above(parent, target)?, above(child, target)?);
    let mut cmd = Command::new(format!("/proc/self/fd/{exe_fd}"));
    cmd.arg0("berth-runtime:init")
        .env_clear()
        .env(INIT_ENV, target.to_string())
        .current_dir(cwd);
    if let Some(f) = stdio.stdin {
        cmd.stdin(f);
    }
    if let Some(f) = stdio.stdout {
        cmd.stdout(f);
    }
    if let Some(f) = stdio.stderr {
        cmd.stderr(f);
    }
    let child_raw = child.as_raw_fd();
    unsafe {
        // Only dup2/fcntl here: async-signal-safe, fine after fork in a threaded process.
        cmd.pre_exec(move || {
            for fd in INIT_FD..target {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::dup2(child_raw, target) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let stage1 = cmd
        .spawn()
        .ctx(|| format!("spawn init from {}", binary.display()))?;
    drop(child);
    drop(memfd_copy);
    Ok(Spawned {
        stage1,
        sock: parent,
    })
}

fn write_id_maps(pid: u32, spec: &Spec) -> Result<()> {
    let linux = spec.linux().as_ref();
    let fmt = |m: Option<&Vec<oci_spec::runtime::LinuxIdMapping>>| {
        m.map(|v| {
            v.iter()
                .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
                .collect::<String>()
        })
        .unwrap_or_default()
    };
    let uid = fmt(linux.and_then(|l| l.uid_mappings().as_ref()));
    let gid = fmt(linux.and_then(|l| l.gid_mappings().as_ref()));
    if uid.is_empty() || gid.is_empty() {
        return Err(Error::InvalidSpec(
            "a user namespace needs uidMappings and gidMappings".into(),
        ));
    }
    std::fs::write(format!("/proc/{pid}/uid_map"), uid)
        .ctx(|| format!("write uid_map of {pid}"))?;
    std::fs::write(format!("/proc/{pid}/gid_map"), gid)
        .ctx(|| format!("write gid_map of {pid}"))?;
    Ok(())
}

/// Host uid/gid that container uid/gid 0 maps to, when the spec has a new user namespace.
pub fn host_root_ids(spec: &Spec) -> Option<(u32, u32)> {
    let linux = spec.linux().as_ref()?;
    let userns = linux
        .namespaces()
        .iter()
        .flatten()
        .any(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::User);
    if !userns {
        return None;
    }
    let find = |m: Option<&Vec<oci_spec::runtime::LinuxIdMapping>>| {
        m?.iter()
            .find(|m| m.container_id() == 0 && m.size() > 0)
            .map(|m| m.host_id())
    };
    Some((
        find(linux.uid_mappings().as_ref())?,
        find(linux.gid_mappings().as_ref())?,
    ))
}

/// Drive the init protocol until the container process is set up (or failed).
/// Returns the container process' pid.
pub(crate) fn handshake(
    id: &str,
    sp: &mut Spawned,
    spec: &Spec,
    cfg: InitConfig,
    until_created: bool,
    console: &mut Option<OwnedFd>,
    state_for_hooks: impl Fn(i32) -> String,
) -> Result<i32> {
    let mut pid = None;
    let r = handshake_inner(
        id,
        sp,
        spec,
        cfg,
        until_created,
        console,
        state_for_hooks,
        &mut pid,
    );
    if r.is_err() {
        // The container process is our child (CLONE_PARENT): reap it, never leave a zombie
        // or a process stuck in setup behind a failed create/exec.
        if let Some(p) = pid {
            let _ = nix::sys::signal::kill(Pid::from_raw(p), nix::sys::signal::Signal::SIGKILL);
            let _ = waitpid(Pid::from_raw(p), None);
        }
        let _ = sp.stage1.kill();
        let _ = sp.stage1.wait();
    }
    r
}

#[allow(clippy::too_many_arguments)]
fn handshake_inner(
    id: &str,
    sp: &mut Spawned,
    spec: &Spec,
    cfg: InitConfig,
    until_created: bool,
    console: &mut Option<OwnedFd>,
    state_for_hooks: impl Fn(i32) -> String,
    pid: &mut Option<i32>,
) -> Result<i32> {
    let stage1_pid = sp.stage1.id();
    send_msg(&sp.sock, &Msg::Config(Box::new(cfg)))?;
    loop {
        let (msg, fd) = recv_msg_fd(&sp.sock)?;
        match msg {
            Some(Msg::Console) => *console = fd,
            Some(Msg::UsernsReady) => {
                write_id_maps(stage1_pid, spec)?;
                send_msg(&sp.sock, &Msg::UsernsMapped)?;
            }
            Some(Msg::Pid(p)) => {
                *pid = Some(p);
                let _ = sp.stage1.wait();
                if !until_created {
                    return Ok(p);
                }
            }
            Some(Msg::RunHooks) => {
                let p = pid.unwrap_or(0);
                if let Some(h) = spec.hooks() {
                    #[allow(deprecated)]
                    let pre = h.prestart().clone().unwrap_or_default();
                    crate::hooks::run(&pre, &state_for_hooks(p), "prestart")?;
                    crate::hooks::run(
                        &h.create_runtime().clone().unwrap_or_default(),
                        &state_for_hooks(p),
                        "createRuntime",
                    )?;
                }
                send_msg(&sp.sock, &Msg::HooksDone)?;
            }
            Some(Msg::Created) => {
                // Pid may arrive after Created: stage 1 and 2 race on the socket.
                if let Some(p) = *pid {
                    return Ok(p);
                }
                match recv_msg(&sp.sock)? {
                    Some(Msg::Pid(p)) => {
                        let _ = sp.stage1.wait();
                        return Ok(p);
                    }
                    other => {
                        return Err(Error::Init {
                            id: id.into(),
                            message: format!("expected pid, got {other:?}"),
                        })
                    }
                }
            }
            Some(Msg::Error(message)) => {
                let _ = sp.stage1.wait();
                if let Some(p) = pid.take() {
                    let _ = waitpid(Pid::from_raw(p), None);
                }
                return Err(Error::Init {
                    id: id.into(),
                    message,
                });
            }
            Some(other) => {
                return Err(Error::Init {
                    id: id.into(),
                    message: format!("unexpected message {other:?}"),
                })
            }
            None => {
                let st = sp.stage1.wait().ok();
                return Err(Error::Init {
                    id: id.into(),
                    message: format!("init exited during setup ({st:?})"),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_init_is_copied_once_and_a_sealed_path_is_reused() {
        let exe = std::env::current_exe().expect("exe");
        let shared = sealed_init_path(&exe).expect("seal");
        assert_eq!(sealed_init_path(&exe).expect("again"), shared, "cached");
        let seals = {
            let f = std::fs::File::open(&shared).expect("open");
            unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GET_SEALS) }
        };
        assert_ne!(seals & libc::F_SEAL_WRITE, 0);
        let w = std::fs::OpenOptions::new()
            .write(true)
            .open(&shared)
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"x"));
        assert!(w.is_err(), "sealed copy must not be writable");
        // Passing the sealed copy's path (as an executor would) reuses it without copying.
        let again = sealed_init(&shared).expect("reuse");
        let target =
            std::fs::read_link(format!("/proc/self/fd/{}", again.as_raw_fd())).expect("link");
        assert!(
            target.to_string_lossy().starts_with("/memfd:berth-runtime"),
            "{}",
            target.display()
        );
    }

    #[test]
    fn userns_root_maps_to_host_ids() {
        let spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "linux": {"namespaces": [{"type": "user"}],
                      "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
                      "gidMappings": [{"containerID": 0, "hostID": 200000, "size": 65536}]}
        }))
        .expect("spec");
        assert_eq!(host_root_ids(&spec), Some((100000, 200000)));
        let plain: Spec =
            serde_json::from_value(serde_json::json!({"ociVersion": "1.0.2", "linux": {}}))
                .expect("spec");
        assert_eq!(host_root_ids(&plain), None);
    }
}
