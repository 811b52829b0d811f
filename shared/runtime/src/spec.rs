//! `default_spec`: the runtime spec berth builds when the user did not bring one —
//! Docker-equivalent isolation (namespaces, mounts, masked/read-only paths, 14 caps,
//! no_new_privs, Docker's seccomp profile) with limits that fit the host.

use std::path::PathBuf;

use oci_spec::runtime::Spec;
use serde_json::{json, Value};

use crate::error::{Context, Result};

/// What the caller decides about a container; everything else gets Docker's defaults.
#[derive(Debug, Clone)]
pub struct DefaultSpecOptions {
    /// argv of the process.
    pub args: Vec<String>,
    /// Extra environment (`KEY=value`); PATH and HOSTNAME get defaults if missing.
    pub env: Vec<String>,
    /// Working directory inside the container.
    pub cwd: String,
    /// uid, gid and supplementary gids of the process.
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    /// Hostname (UTS namespace).
    pub hostname: Option<String>,
    /// rootfs path (relative to the bundle, or absolute).
    pub rootfs: PathBuf,
    /// Mount the root read-only.
    pub readonly_rootfs: bool,
    /// Allocate a terminal.
    pub terminal: bool,
    /// memory limit in bytes.
    pub memory: Option<i64>,
    /// memory + swap in bytes (-1 unlimited swap).
    pub memory_swap: Option<i64>,
    /// soft limit in bytes.
    pub memory_reservation: Option<i64>,
    /// CPUs as a fraction (`--cpus 0.5`): becomes quota/period.
    pub cpus: Option<f64>,
    /// cpu.shares (v1) / converted to cpu.weight on v2.
    pub cpu_shares: Option<u64>,
    /// cpuset (`0-1`).
    pub cpuset_cpus: Option<String>,
    /// pids limit.
    pub pids_limit: Option<i64>,
    /// cgroup path (default `/berth/<hostname or "container">` is chosen by the caller).
    pub cgroups_path: Option<String>,
    /// Share the host network namespace (`--network host`).
    pub host_network: bool,
}

impl DefaultSpecOptions {
    /// Defaults for running `args` as root in `rootfs` (bundle-relative).
    pub fn new(args: Vec<String>) -> Self {
        DefaultSpecOptions {
            args,
            env: Vec::new(),
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            additional_gids: Vec::new(),
            hostname: None,
            rootfs: PathBuf::from("rootfs"),
            readonly_rootfs: false,
            terminal: false,
            memory: None,
            memory_swap: None,
            memory_reservation: None,
            cpus: None,
            cpu_shares: None,
            cpuset_cpus: None,
            pids_limit: None,
            cgroups_path: None,
            host_network: false,
        }
    }
}

/// CFS period used for `--cpus` (Docker's).
pub const CPU_PERIOD: u64 = 100_000;

/// Docker's masked paths.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Docker's read-only paths.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// RLIMIT_NOFILE like containerd's default (1024:1048576) but never above this host's hard
/// limit: a runtime without CAP_SYS_RESOURCE could not set it.
pub fn default_nofile() -> (u64, u64) {
    let (_, host_hard) = crate::rlimits::current(libc::RLIMIT_NOFILE as _);
    let hard = host_hard.min(1_048_576);
    (1024.min(hard), hard)
}

/// Build a Docker-equivalent runtime spec.
pub fn default_spec(o: &DefaultSpecOptions) -> Result<Spec> {
    let mut env = o.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(
            0,
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        );
    }
    if let Some(h) = &o.hostname {
        if !env.iter().any(|e| e.starts_with("HOSTNAME=")) {
            env.push(format!("HOSTNAME={h}"));
        }
    }
    let caps: Vec<&str> = crate::caps::DOCKER_DEFAULT.to_vec();
    let (nofile_soft, nofile_hard) = default_nofile();
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
        json!({"type": "cgroup"}),
    ];
    if !o.host_network {
        namespaces.push(json!({"type": "network"}));
    }
    let mut resources = json!({ "devices": default_device_rules() });
    let mut memory = serde_json::Map::new();
    if let Some(m) = o.memory {
        memory.insert("limit".into(), json!(m));
    }
    if let Some(m) = o.memory_swap {
        memory.insert("swap".into(), json!(m));
    }
    if let Some(m) = o.memory_reservation {
        memory.insert("reservation".into(), json!(m));
    }
    if !memory.is_empty() {
        resources["memory"] = Value::Object(memory);
    }
    let mut cpu = serde_json::Map::new();
    if let Some(c) = o.cpus {
        cpu.insert(
            "quota".into(),
            json!((c * CPU_PERIOD as f64).round() as i64),
        );
        cpu.insert("period".into(), json!(CPU_PERIOD));
    }
    if let Some(s) = o.cpu_shares {
        cpu.insert("shares".into(), json!(s));
    }
    if let Some(s) = &o.cpuset_cpus {
        cpu.insert("cpus".into(), json!(s));
    }
    if !cpu.is_empty() {
        resources["cpu"] = Value::Object(cpu);
    }
    if let Some(p) = o.pids_limit {
        resources["pids"] = json!({"limit": p});
    }

    // 1.0.2 rather than the newest: crun 1.8 and runc 1.1 (Debian 12) reject newer versions,
    // and the bundle must run on them too.
    let mut v = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": o.terminal,
            "user": {"uid": o.uid, "gid": o.gid, "additionalGids": o.additional_gids},
            "args": o.args,
            "env": env,
            "cwd": o.cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "soft": nofile_soft, "hard": nofile_hard}],
            "noNewPrivileges": true,
            "oomScoreAdj": 0
        },
        "root": {"path": o.rootfs, "readonly": o.readonly_rootfs},
        // The device rules below are the whole list: no runc defaults (`b *:* m`) appended.
        "annotations": {(crate::cgroups::NO_DEFAULT_DEVICES_ANNOTATION): "none"},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["ro", "nosuid", "noexec", "nodev"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=67108864"]}
        ],
        "linux": {
            "namespaces": namespaces,
            "resources": resources,
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
            "seccomp": docker_seccomp_profile()
        }
    });
    if let Some(h) = &o.hostname {
        v["hostname"] = json!(h);
    }
    if let Some(p) = &o.cgroups_path {
        v["linux"]["cgroupsPath"] = json!(p);
    }
    serde_json::from_value(v).ctx(|| "build default spec".into())
}

/// Device cgroup rules (v1): deny everything, then allow the devices a container gets.
/// Unlike Docker we do not allow `mknod` of *block* devices (`b *:* m`).
fn default_device_rules() -> Value {
    let c = |major: i64, minor: Option<i64>, access: &str| json!({"allow": true, "type": "c", "major": major, "minor": minor, "access": access});
    json!([
        {"allow": false, "access": "rwm"},
        {"allow": true, "type": "c", "access": "m"},
        c(1, Some(3), "rwm"), c(1, Some(5), "rwm"), c(1, Some(7), "rwm"), c(1, Some(8), "rwm"),
        c(1, Some(9), "rwm"), c(5, Some(0), "rwm"), c(5, Some(1), "rwm"), c(5, Some(2), "rwm"),
        c(136, None, "rwm"), c(10, Some(200), "rwm")
    ])
}

/// Syscalls Docker's default profile allows unconditionally (a superset across
/// architectures; names this architecture lacks are skipped when compiling).
pub const DOCKER_ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
    // Docker allows these on kernels >= 4.8 (ptrace can no longer bypass seccomp there).
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "pidfd_getfd",
    // Docker allows these on x86_64.
    "arch_prctl",
    "modify_ldt",
    // Docker allows these with the default capabilities (CAP_SYS_CHROOT, CAP_KILL...).
    "chroot",
];

/// Docker's default seccomp profile, expressed as a runtime-spec `linux.seccomp`.
pub fn docker_seccomp_profile() -> Value {
    const CLONE_NS_FLAGS: u64 = 0x7E02_0000; // NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET
    const S_IFMT: u64 = 0o170000;
    const S_IFBLK: u64 = 0o060000;
    const S_IFCHR: u64 = 0o020000;
    let personality: Vec<Value> = [0u64, 8, 0x20000, 0x20008, 0xffff_ffff]
        .iter()
        .map(|p| json!({"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": p, "op": "SCMP_CMP_EQ"}]}))
        .collect();
    let mut syscalls = vec![json!({"names": DOCKER_ALLOWED, "action": "SCMP_ACT_ALLOW"})];
    syscalls.extend(personality);
    syscalls.extend([
        // socket(2) for every family except AF_VSOCK (40), as Docker.
        json!({"names": ["socket"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 40, "op": "SCMP_CMP_NE"}]}),
        // clone(2) without namespace flags; clone3 cannot be filtered by flags, so ENOSYS
        // makes libc fall back to clone.
        json!({"names": ["clone"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": CLONE_NS_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]}),
        json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::ENOSYS}),
        // berth addition: no device nodes (block or char), whatever the cgroup version.
        // cgroup v2 has no device controller without eBPF, so there the device cgroup
        // cannot stop a container with CAP_MKNOD from creating and opening a host device.
        json!({"names": ["mknod"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EPERM, "args": [{"index": 1, "value": S_IFMT, "valueTwo": S_IFBLK, "op": "SCMP_CMP_MASKED_EQ"}]}),
        json!({"names": ["mknodat"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EPERM, "args": [{"index": 2, "value": S_IFMT, "valueTwo": S_IFBLK, "op": "SCMP_CMP_MASKED_EQ"}]}),
        json!({"names": ["mknod"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EPERM, "args": [{"index": 1, "value": S_IFMT, "valueTwo": S_IFCHR, "op": "SCMP_CMP_MASKED_EQ"}]}),
        json!({"names": ["mknodat"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EPERM, "args": [{"index": 2, "value": S_IFMT, "valueTwo": S_IFCHR, "op": "SCMP_CMP_MASKED_EQ"}]}),
    ]);
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": libc::EPERM,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": syscalls
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_spec_is_docker_like() {
        let mut o = DefaultSpecOptions::new(vec!["/bin/true".into()]);
        o.cpus = Some(0.5);
        o.memory = Some(64 << 20);
        o.pids_limit = Some(64);
        let s = default_spec(&o).expect("spec");
        let p = s.process().as_ref().expect("process");
        assert_eq!(p.no_new_privileges(), Some(true));
        let caps = p.capabilities().as_ref().expect("caps");
        assert_eq!(caps.bounding().as_ref().map(|b| b.len()), Some(14));
        let l = s.linux().as_ref().expect("linux");
        assert_eq!(l.namespaces().as_ref().map(|n| n.len()), Some(6));
        assert!(l
            .masked_paths()
            .as_ref()
            .expect("masked")
            .iter()
            .any(|m| m == "/proc/kcore"));
        assert!(l
            .readonly_paths()
            .as_ref()
            .expect("ro")
            .iter()
            .any(|m| m == "/proc/sysrq-trigger"));
        let r = l.resources().as_ref().expect("resources");
        assert_eq!(r.cpu().as_ref().and_then(|c| c.quota()), Some(50_000));
        assert_eq!(r.pids().as_ref().map(|p| p.limit()), Some(64));
        let (soft, hard) = default_nofile();
        let rl = &p.rlimits().as_ref().expect("rlimits")[0];
        assert_eq!((rl.soft(), rl.hard()), (soft, hard));
        assert!(hard <= crate::rlimits::current(libc::RLIMIT_NOFILE as _).1);
        let progs =
            crate::seccomp::compile(l.seccomp().as_ref().expect("seccomp")).expect("compile");
        assert_eq!(
            progs.len(),
            3,
            "allowlist filter + ERRNO(ENOSYS) filter + ERRNO(EPERM) args filter"
        );
    }
}
