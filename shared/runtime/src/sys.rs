//! The narrow seam for kernel side effects that need root (mount, pivot_root, mknod,
//! hostname). Decision logic takes `&dyn Syscall`, so tests pass a [`RecordingSyscall`]
//! and run without root; the real thing is [`LinuxSyscall`].

use std::cell::RefCell;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag};

/// Kernel operations the rootfs setup performs.
pub trait Syscall {
    /// mount(2).
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()>;
    /// umount2(2).
    fn umount2(&self, target: &Path, flags: MntFlags) -> nix::Result<()>;
    /// pivot_root(2) with both arguments ".", after fchdir to the new root.
    fn pivot_root_dot(&self) -> nix::Result<()>;
    /// chroot(2).
    fn chroot(&self, path: &Path) -> nix::Result<()>;
    /// fchdir(2).
    fn fchdir(&self, fd: BorrowedFd<'_>) -> nix::Result<()>;
    /// chdir(2).
    fn chdir(&self, path: &Path) -> nix::Result<()>;
    /// mknodat(2).
    fn mknodat(
        &self,
        dir: BorrowedFd<'_>,
        name: &str,
        kind: SFlag,
        perm: Mode,
        dev: u64,
    ) -> nix::Result<()>;
    /// sethostname(2).
    fn sethostname(&self, name: &str) -> nix::Result<()>;
    /// setdomainname(2).
    fn setdomainname(&self, name: &str) -> nix::Result<()>;
}

/// The real kernel.
pub struct LinuxSyscall;

impl Syscall for LinuxSyscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()> {
        nix::mount::mount(source, target, fstype, flags, data)
    }
    fn umount2(&self, target: &Path, flags: MntFlags) -> nix::Result<()> {
        nix::mount::umount2(target, flags)
    }
    fn pivot_root_dot(&self) -> nix::Result<()> {
        nix::unistd::pivot_root(".", ".")
    }
    fn chroot(&self, path: &Path) -> nix::Result<()> {
        nix::unistd::chroot(path)
    }
    fn fchdir(&self, fd: BorrowedFd<'_>) -> nix::Result<()> {
        nix::unistd::fchdir(fd)
    }
    fn chdir(&self, path: &Path) -> nix::Result<()> {
        nix::unistd::chdir(path)
    }
    fn mknodat(
        &self,
        dir: BorrowedFd<'_>,
        name: &str,
        kind: SFlag,
        perm: Mode,
        dev: u64,
    ) -> nix::Result<()> {
        nix::sys::stat::mknodat(dir, name, kind, perm, dev)
    }
    fn sethostname(&self, name: &str) -> nix::Result<()> {
        nix::unistd::sethostname(name)
    }
    fn setdomainname(&self, name: &str) -> nix::Result<()> {
        let r = unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) };
        nix::errno::Errno::result(r).map(drop)
    }
}

/// One recorded kernel call; `/proc/self/fd/N` targets are recorded as the path they name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Mount {
        source: Option<PathBuf>,
        target: PathBuf,
        fstype: Option<String>,
        flags: MsFlags,
        data: Option<String>,
    },
    Umount(PathBuf),
    PivotRoot,
    Chroot(PathBuf),
    Chdir(PathBuf),
    Mknod {
        dir: PathBuf,
        name: String,
        kind: SFlag,
        dev: u64,
    },
    Hostname(String),
    Domainname(String),
}

/// A fake that records calls and succeeds (or fails with `fail_pivot`), for tests without root.
#[derive(Default)]
pub struct RecordingSyscall {
    /// Calls in order.
    pub calls: RefCell<Vec<Call>>,
    /// Make pivot_root fail with this errno (to test the MS_MOVE fallback decision).
    pub fail_pivot: Option<nix::errno::Errno>,
}

fn resolve_fd_path(p: &Path) -> PathBuf {
    if p.starts_with("/proc/self/fd") {
        std::fs::read_link(p).unwrap_or_else(|_| p.to_path_buf())
    } else {
        p.to_path_buf()
    }
}

impl Syscall for RecordingSyscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()> {
        self.calls.borrow_mut().push(Call::Mount {
            source: source.map(resolve_fd_path),
            target: resolve_fd_path(target),
            fstype: fstype.map(str::to_string),
            flags,
            data: data.map(str::to_string),
        });
        Ok(())
    }
    fn umount2(&self, target: &Path, _flags: MntFlags) -> nix::Result<()> {
        self.calls
            .borrow_mut()
            .push(Call::Umount(resolve_fd_path(target)));
        Ok(())
    }
    fn pivot_root_dot(&self) -> nix::Result<()> {
        if let Some(e) = self.fail_pivot {
            return Err(e);
        }
        self.calls.borrow_mut().push(Call::PivotRoot);
        Ok(())
    }
    fn chroot(&self, path: &Path) -> nix::Result<()> {
        self.calls
            .borrow_mut()
            .push(Call::Chroot(path.to_path_buf()));
        Ok(())
    }
    fn fchdir(&self, fd: BorrowedFd<'_>) -> nix::Result<()> {
        let p = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default();
        self.calls.borrow_mut().push(Call::Chdir(p));
        Ok(())
    }
    fn chdir(&self, path: &Path) -> nix::Result<()> {
        self.calls
            .borrow_mut()
            .push(Call::Chdir(path.to_path_buf()));
        Ok(())
    }
    fn mknodat(
        &self,
        dir: BorrowedFd<'_>,
        name: &str,
        kind: SFlag,
        _perm: Mode,
        dev: u64,
    ) -> nix::Result<()> {
        let d =
            std::fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd())).unwrap_or_default();
        // Leave a regular file behind so later steps (chown, bind) find something.
        let _ = std::fs::File::create(d.join(name));
        self.calls.borrow_mut().push(Call::Mknod {
            dir: d,
            name: name.to_string(),
            kind,
            dev,
        });
        Ok(())
    }
    fn sethostname(&self, name: &str) -> nix::Result<()> {
        self.calls
            .borrow_mut()
            .push(Call::Hostname(name.to_string()));
        Ok(())
    }
    fn setdomainname(&self, name: &str) -> nix::Result<()> {
        self.calls
            .borrow_mut()
            .push(Call::Domainname(name.to_string()));
        Ok(())
    }
}
