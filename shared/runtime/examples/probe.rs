//! Escape probes run *inside* a container by the end-to-end tests. Each probe tries one
//! thing a container must not be able to do and prints `blocked` or `ESCAPED`; the exit
//! code is the number of escapes. Every probe is harmless if it succeeds: it writes back
//! values it just read, sets the hostname it already has, and uses invalid arguments
//! where a success would matter.
//!
//! Other modes: `hog` (touch memory until killed), `forkbomb N` (fork until refused).

use std::ffi::CString;
use std::io::{Read, Write};

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn report(name: &str, escaped: bool, detail: String, escapes: &mut i32) {
    println!(
        "{name}: {} ({detail})",
        if escaped { "ESCAPED" } else { "blocked" }
    );
    if escaped {
        *escapes += 1;
    }
}

/// A syscall probe: blocked when it returns -1 (any errno listed as "ok" for the probe).
fn sys(name: &str, r: libc::c_long, escapes: &mut i32) {
    let e = errno();
    report(name, r != -1, format!("ret={r} errno={e}"), escapes);
}

fn write_back(path: &str) -> (bool, String) {
    let mut cur = String::new();
    if let Err(e) = std::fs::File::open(path).and_then(|mut f| f.read_to_string(&mut cur)) {
        return (false, format!("read: {e}"));
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(cur.as_bytes()))
    {
        Ok(()) => (true, "wrote own value back".into()),
        Err(e) => (false, format!("{e}")),
    }
}

fn c(s: &str) -> CString {
    CString::new(s).expect("no NUL")
}

fn probes() -> i32 {
    let mut n = 0;
    let fds: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    // 0,1,2 and the directory fd read_dir itself holds.
    report(
        "fd leak",
        fds.len() > 4,
        format!("open fds {fds:?}"),
        &mut n,
    );
    unsafe {
        sys(
            "mount",
            libc::mount(
                c("none").as_ptr(),
                c("/mnt").as_ptr(),
                c("tmpfs").as_ptr(),
                0,
                std::ptr::null(),
            ) as _,
            &mut n,
        );
        sys(
            "umount",
            libc::umount2(c("/proc").as_ptr(), libc::MNT_DETACH) as _,
            &mut n,
        );
        sys(
            "pivot_root",
            libc::syscall(libc::SYS_pivot_root, c("/").as_ptr(), c("/").as_ptr()),
            &mut n,
        );
        // CAD_ON is refused in a child pid namespace and harmless anyway.
        sys(
            "reboot",
            libc::syscall(
                libc::SYS_reboot,
                libc::LINUX_REBOOT_MAGIC1,
                libc::LINUX_REBOOT_MAGIC2,
                libc::LINUX_REBOOT_CMD_CAD_ON,
                0usize,
            ),
            &mut n,
        );
        sys(
            "init_module",
            libc::syscall(
                libc::SYS_init_module,
                std::ptr::null::<u8>(),
                0usize,
                c("").as_ptr(),
            ),
            &mut n,
        );
        sys(
            "finit_module",
            libc::syscall(libc::SYS_finit_module, -1, c("").as_ptr(), 0),
            &mut n,
        );
        sys(
            "kexec_load",
            libc::syscall(
                libc::SYS_kexec_load,
                0usize,
                0usize,
                std::ptr::null::<u8>(),
                0usize,
            ),
            &mut n,
        );
        sys(
            "swapon",
            libc::syscall(libc::SYS_swapon, c("/nonexistent-swap").as_ptr(), 0),
            &mut n,
        );
        let r = libc::unshare(libc::CLONE_NEWUSER);
        sys("unshare(CLONE_NEWUSER)", r as _, &mut n);
        let r = libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_NEWNET | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        );
        if r == 0 {
            libc::_exit(0);
        }
        sys("clone(CLONE_NEWNET)", r, &mut n);
        sys(
            "keyctl",
            libc::syscall(
                libc::SYS_keyctl,
                0,  /* KEYCTL_GET_KEYRING_ID */
                -3, /* session */
                0,
            ),
            &mut n,
        );
        let host_pid: i32 = std::env::var("HOST_PID")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(1);
        sys(
            "ptrace host process",
            libc::ptrace(libc::PTRACE_ATTACH, host_pid, 0, 0),
            &mut n,
        );
        let dev = libc::makedev(8, 0);
        sys(
            "mknod block device",
            libc::mknod(c("/dev/probe-sda").as_ptr(), libc::S_IFBLK | 0o600, dev) as _,
            &mut n,
        );
        // c 4:1 is the host's tty1: a char node the device cgroup (v1) would only stop at open.
        sys(
            "mknod char device",
            libc::mknod(
                c("/dev/probe-tty1").as_ptr(),
                libc::S_IFCHR | 0o600,
                libc::makedev(4, 1),
            ) as _,
            &mut n,
        );
        let mut handle = [0u8; 136];
        handle[0..4].copy_from_slice(&128u32.to_ne_bytes());
        sys(
            "open_by_handle_at",
            libc::syscall(
                libc::SYS_open_by_handle_at,
                libc::AT_FDCWD,
                handle.as_ptr(),
                libc::O_RDONLY,
            ),
            &mut n,
        );
        let mut host = [0u8; 256];
        libc::gethostname(host.as_mut_ptr().cast(), host.len());
        let len = host.iter().position(|b| *b == 0).unwrap_or(0);
        sys(
            "sethostname (same name)",
            libc::sethostname(host.as_ptr().cast(), len) as _,
            &mut n,
        );
    }
    // /proc/kcore: masked (reads nothing) or absent.
    let mut buf = [0u8; 1];
    let r = std::fs::File::open("/proc/kcore").and_then(|mut f| f.read(&mut buf));
    report(
        "read /proc/kcore",
        matches!(r, Ok(1)),
        format!("{r:?}"),
        &mut n,
    );
    // Masked paths: files read empty (bound /dev/null), directories are empty tmpfs.
    for p in [
        "/proc/keys",
        "/proc/timer_list",
        "/proc/interrupts",
        "/proc/sched_debug",
        "/proc/latency_stats",
    ] {
        let r = std::fs::read(p);
        report(
            &format!("read masked {p}"),
            r.as_ref().is_ok_and(|b| !b.is_empty()),
            format!("{:?}", r.map(|b| b.len())),
            &mut n,
        );
    }
    for p in ["/sys/firmware", "/proc/acpi", "/proc/scsi"] {
        let entries = std::fs::read_dir(p).map(|d| d.count()).unwrap_or(0);
        report(
            &format!("list masked {p}"),
            entries > 0,
            format!("{entries} entries"),
            &mut n,
        );
    }
    let r = std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/sysrq-trigger")
        .and_then(|mut f| f.write_all(b"h"));
    report(
        "write /proc/sysrq-trigger",
        r.is_ok(),
        format!("{r:?}"),
        &mut n,
    );
    for p in [
        "/proc/sys/kernel/sysrq",
        "/proc/sys/kernel/panic",
        "/proc/sys/vm/overcommit_memory",
    ] {
        let (ok, d) = write_back(p);
        report(&format!("write {p}"), ok, d, &mut n);
    }
    for p in [
        "/sys/kernel/mm/transparent_hugepage/enabled",
        "/sys/kernel/uevent_helper",
        "/sys/power/state",
    ] {
        let r = std::fs::OpenOptions::new().write(true).open(p);
        report(
            &format!("open {p} for writing"),
            r.is_ok(),
            format!("{:?}", r.err()),
            &mut n,
        );
    }
    // Host processes: in a new pid namespace only container pids are visible.
    let pids: Vec<u32> = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    report(
        "host processes visible",
        pids.iter().any(|p| *p > 50),
        format!("pids {pids:?}"),
        &mut n,
    );
    // Host files through /proc magic links.
    let marker = std::env::var("HOST_MARKER").unwrap_or_default();
    for base in [
        "/proc/1/root/..",
        "/proc/self/root/..",
        "/proc/self/cwd/..",
        "/..",
    ] {
        let p = format!("{base}/../../../../..{marker}");
        let r = std::fs::read_to_string(&p);
        report(
            &format!("reach host file via {base}"),
            r.is_ok(),
            format!("{p}: {:?}", r.err()),
            &mut n,
        );
    }
    // release_agent of any cgroup hierarchy.
    if let Ok(d) = std::fs::read_dir("/sys/fs/cgroup") {
        for e in d.flatten() {
            let p = e.path().join("release_agent");
            if p.exists() {
                let r = std::fs::OpenOptions::new().write(true).open(&p);
                report(
                    &format!("open {} for writing", p.display()),
                    r.is_ok(),
                    format!("{:?}", r.err()),
                    &mut n,
                );
            }
        }
    }
    let r = unsafe {
        libc::mount(
            c("cgroup").as_ptr(),
            c("/mnt").as_ptr(),
            c("cgroup").as_ptr(),
            0,
            c("memory").as_ptr().cast(),
        )
    };
    sys("mount cgroup (for release_agent)", r as _, &mut n);
    n
}

fn hog() -> i32 {
    let mut v: Vec<Vec<u8>> = Vec::new();
    for i in 0..4096 {
        v.push(vec![1u8; 1 << 20]);
        if i % 64 == 0 {
            println!("allocated {} MiB", i + 1);
        }
    }
    println!("allocated 4 GiB without being killed");
    0
}

fn forkbomb(max: usize) -> i32 {
    let mut ok = 0;
    for _ in 0..max {
        match unsafe { libc::fork() } {
            0 => unsafe {
                libc::pause();
                libc::_exit(0)
            },
            -1 => {
                println!("fork refused after {ok} children: errno {}", errno());
                return 0;
            }
            _ => ok += 1,
        }
    }
    println!("forked all {ok} children");
    1
}

/// `open PATH...`: open each path read-only and close it again, printing `PATH: opened`
/// or `PATH: errno N`. Read-only, non-blocking and nothing read or written: harmless
/// even on a real device node.
fn open_paths(paths: &[String]) -> i32 {
    for p in paths {
        let fd = unsafe {
            libc::open(
                c(p).as_ptr(),
                libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC,
            )
        };
        if fd >= 0 {
            unsafe { libc::close(fd) };
            println!("{p}: opened");
        } else {
            println!("{p}: errno {}", errno());
        }
    }
    0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let code = match args.get(1).map(String::as_str) {
        Some("hog") => hog(),
        Some("open") => open_paths(&args[2..]),
        Some("forkbomb") => forkbomb(args.get(2).and_then(|n| n.parse().ok()).unwrap_or(200)),
        _ => probes(),
    };
    std::process::exit(code);
}
