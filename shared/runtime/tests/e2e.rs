//! End-to-end tests as root: real busybox bundles run by the real binary and library.

mod common;

use std::time::{Duration, Instant};

use berth_runtime::{Container, ContainerStatus, CreateOptions, Stdio};
use common::*;

fn readable(fd: &impl std::os::fd::AsRawFd, timeout_ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    unsafe { libc::poll(&mut p, 1, timeout_ms) == 1 }
}

fn lib_opts(b: &Bundle, id: &str) -> CreateOptions {
    let mut o = CreateOptions::new(id, b.path(), b.root.path());
    o.init_binary = Some(runtime());
    o
}

fn pipe_stdout(o: &mut CreateOptions) -> std::fs::File {
    let (r, w) = nix::unistd::pipe().expect("pipe");
    o.stdio = Stdio {
        stdin: None,
        stdout: Some(w),
        stderr: None,
    };
    std::fs::File::from(r)
}

#[test]
fn run_prints_output_and_returns_exit_code() {
    require_root("run_prints_output_and_returns_exit_code");
    let b = Bundle::new(&["sh", "-c", "echo hello from $(hostname); exit 7"], |_| {});
    let out = b.cli(&["run", &cid("out")]);
    assert_eq!(
        text(&out.stdout),
        "hello from berth-test\n",
        "stderr: {}",
        text(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(7));
    // run deletes the container and its cgroup.
    assert!(!std::path::Path::new(&format!("/sys/fs/cgroup/memory/berth/{}", cid("out"))).exists());
    assert_eq!(text(&b.cli(&["list", "-q"]).stdout), "");
}

#[test]
fn lifecycle_create_start_state_kill_delete_via_cli() {
    require_root("lifecycle_create_start_state_kill_delete_via_cli");
    let id = cid("life");
    let b = Bundle::new(
        &[
            "sh",
            "-c",
            "trap 'exit 42' TERM; touch /tmp/ready; while true; do sleep 0.1; done",
        ],
        |_| {},
    );
    let pidfile = b.path().join("pid");
    let out = b.cli(&[
        "create",
        &id,
        "--bundle",
        b.path().to_str().expect("utf8"),
        "--pid-file",
        pidfile.to_str().expect("utf8"),
    ]);
    assert!(out.status.success(), "create: {}", text(&out.stderr));
    let state: serde_json::Value =
        serde_json::from_slice(&b.cli(&["state", &id]).stdout).expect("state json");
    assert_eq!(state["status"], "created");
    let pid = state["pid"].as_i64().expect("pid");
    assert_eq!(
        std::fs::read_to_string(&pidfile).expect("pid file"),
        pid.to_string()
    );
    // CVE-2019-5736 class: the waiting init is a sealed memfd, not the runtime on disk.
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("exe link");
    assert!(
        exe.to_string_lossy().starts_with("/memfd:berth-runtime"),
        "init exe is {}",
        exe.display()
    );
    let w = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{pid}/exe"));
    assert!(w.is_err(), "the init's executable must not be writable");

    assert!(b.cli(&["start", &id]).status.success());
    let state: serde_json::Value =
        serde_json::from_slice(&b.cli(&["state", &id]).stdout).expect("state json");
    assert_eq!(state["status"], "running");
    let list = text(&b.cli(&["list"]).stdout);
    assert!(list.contains(&id) && list.contains("running"), "{list}");
    // exec with arguments, then with --process (runc's two forms); exit codes pass through.
    let e = b.cli(&["exec", &id, "sh", "-c", "echo in-$(hostname); exit 5"]);
    assert_eq!(
        (e.status.code(), text(&e.stdout)),
        (Some(5), "in-berth-test\n".to_string()),
        "{}",
        text(&e.stderr)
    );
    // exec -t: a pty from the container's devpts, attached to our stdio.
    let e = b.cli(&["exec", "-t", &id, "tty"]);
    assert_eq!(e.status.code(), Some(0), "{}", text(&e.stderr));
    assert!(
        text(&e.stdout).starts_with("/dev/pts/"),
        "{:?}",
        text(&e.stdout)
    );
    let proc_json = b.path().join("proc.json");
    std::fs::write(&proc_json, serde_json::json!({"user": {"uid": 1000, "gid": 1000}, "args": ["id", "-u"], "cwd": "/tmp", "env": ["PATH=/bin"]}).to_string()).expect("proc.json");
    let e = b.cli(&["exec", "--process", proc_json.to_str().expect("utf8"), &id]);
    assert_eq!(
        (e.status.code(), text(&e.stdout)),
        (Some(0), "1000\n".to_string()),
        "{}",
        text(&e.stderr)
    );
    let ps: Vec<i32> =
        serde_json::from_slice(&b.cli(&["ps", "--format", "json", &id]).stdout).expect("ps json");
    assert!(ps.contains(&(pid as i32)), "{ps:?}");

    // A pid-namespace init ignores SIGTERM until its trap is set: wait for it.
    let ready = b.path().join("rootfs/tmp/ready");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "container never got ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    let del = b.cli(&["delete", &id]);
    assert_eq!(
        del.status.code(),
        Some(1),
        "delete of a running container needs --force"
    );
    assert!(b.cli(&["kill", &id]).status.success(), "kill TERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state: serde_json::Value =
            serde_json::from_slice(&b.cli(&["state", &id]).stdout).expect("state json");
        if state["status"] == "stopped" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "container did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let k = b.cli(&["kill", &id, "KILL"]);
    assert_eq!(
        k.status.code(),
        Some(1),
        "kill of a stopped container fails like runc"
    );
    assert!(b.cli(&["delete", &id]).status.success());
    let st = b.cli(&["state", &id]);
    assert_eq!(st.status.code(), Some(1));
    assert!(
        text(&st.stderr).contains("does not exist"),
        "{}",
        text(&st.stderr)
    );
}

#[test]
fn library_api_signals_exit_status_and_exec() {
    require_root("library_api_signals_exit_status_and_exec");
    let id = cid("lib");
    let b = Bundle::new(
        &[
            "sh",
            "-c",
            "trap 'exit 42' TERM; echo ready; while true; do sleep 0.1; done",
        ],
        |_| {},
    );
    let mut o = lib_opts(&b, &id);
    let mut out = pipe_stdout(&mut o);
    let mut c = Container::create(o).expect("create");
    assert_eq!(c.status(), ContainerStatus::Created);
    c.start().expect("start");
    assert_eq!(c.status(), ContainerStatus::Running);
    let mut line = [0u8; 6];
    std::io::Read::read_exact(&mut out, &mut line).expect("read ready");
    assert_eq!(&line, b"ready\n");

    // exec joins the namespaces: it sees the container's pid 1 and hostname.
    let mut p = c.spec().process().clone().expect("process");
    p.set_args(Some(vec![
        "sh".into(),
        "-c".into(),
        "test \"$(hostname)\" = berth-test && test -d /proc/1 && exit 3".into(),
    ]));
    let epid = c
        .exec(&p, Stdio::default(), Some(&runtime()))
        .expect("exec")
        .pid;
    assert_eq!(
        berth_runtime::container::wait_pid(epid).expect("wait exec"),
        3
    );

    let st = c.state();
    assert_eq!(st["status"], "running");
    assert_eq!(st["id"], id.as_str());
    c.kill(nix::sys::signal::Signal::SIGTERM, false)
        .expect("kill");
    let e = c.wait().expect("wait");
    assert_eq!(e.code, Some(42));
    assert!(!e.oom_killed);
    assert_eq!(c.status(), ContainerStatus::Stopped);
    c.delete(false).expect("delete");
}

#[test]
fn killed_by_signal_reports_128_plus_signal() {
    require_root("killed_by_signal_reports_128_plus_signal");
    let id = cid("sig");
    let b = Bundle::new(&["sleep", "100"], |_| {});
    let mut c = Container::create(lib_opts(&b, &id)).expect("create");
    c.start().expect("start");
    let pidfd = c.pidfd().expect("pidfd");
    assert!(!readable(&pidfd, 0), "running: pidfd not readable");
    c.kill(nix::sys::signal::Signal::SIGKILL, false)
        .expect("kill");
    assert!(readable(&pidfd, 5000), "exit makes the pidfd readable");
    let e = c.wait().expect("wait");
    assert_eq!((e.code, e.signal), (Some(137), Some(9)));
    c.delete(false).expect("delete");
}

#[test]
fn escape_probes_all_fail_in_a_default_container() {
    require_root("escape_probes_all_fail_in_a_default_container");
    let b = Bundle::new(&["/bin/probe"], |_| {});
    // A file next to the rootfs that no path inside the container may reach.
    let marker = b.path().join("host-marker");
    std::fs::write(&marker, "host secret").expect("marker");
    let host_name = nix::unistd::gethostname().expect("hostname");
    let rel = marker.strip_prefix("/").expect("abs");
    b.edit(|v| {
        let env = v["process"]["env"].as_array_mut().expect("env");
        env.push(format!("HOST_PID={}", std::process::id()).into());
        env.push(format!("HOST_MARKER=/{}", rel.display()).into());
    });
    let out = b.cli(&["run", &cid("probe")]);
    let report = text(&out.stdout);
    println!("{report}");
    assert!(
        report.contains("mount: blocked"),
        "probe did not run: {report}\n{}",
        text(&out.stderr)
    );
    assert!(!report.contains("ESCAPED"), "escapes:\n{report}");
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(nix::unistd::gethostname().expect("hostname"), host_name);
    for needed in [
        "reboot",
        "init_module",
        "finit_module",
        "kexec_load",
        "swapon",
        "keyctl",
        "ptrace host process",
        "mknod block device",
        "mknod char device",
        "open_by_handle_at",
        "unshare(CLONE_NEWUSER)",
        "clone(CLONE_NEWNET)",
        "pivot_root",
        "umount",
        "read /proc/kcore",
        "write /proc/sysrq-trigger",
        "write /proc/sys/kernel/sysrq",
        "reach host file via /proc/1/root/..",
        "host processes visible",
        "sethostname",
        "fd leak",
        "release_agent",
        "read masked /proc/keys",
        "list masked /sys/firmware",
    ] {
        assert!(
            report.contains(needed),
            "probe {needed} missing from report"
        );
    }
}

#[test]
fn memory_hog_is_oom_killed_and_reported() {
    require_root("memory_hog_is_oom_killed_and_reported");
    let id = cid("oom");
    let b = Bundle::new(&["/bin/probe", "hog"], |o| {
        o.memory = Some(32 << 20);
        o.memory_swap = Some(32 << 20);
    });
    let mut o = lib_opts(&b, &id);
    let _out = pipe_stdout(&mut o);
    let mut c = Container::create(o).expect("create");
    c.start().expect("start");
    let e = c.wait().expect("wait");
    assert_eq!(e.signal, Some(9), "{e:?}");
    assert!(e.oom_killed, "OOM kill not detected: {e:?}");
    let s = c.stats();
    assert_eq!(s.memory_limit, Some(32 << 20));
    assert!(s.oom_kills >= 1);
    c.delete(false).expect("delete");
}

#[test]
fn fork_bomb_stops_at_pids_limit() {
    require_root("fork_bomb_stops_at_pids_limit");
    let id = cid("pids");
    let b = Bundle::new(&["/bin/probe", "forkbomb", "500"], |o| {
        o.pids_limit = Some(20)
    });
    let mut o = lib_opts(&b, &id);
    let mut out = pipe_stdout(&mut o);
    let mut c = Container::create(o).expect("create");
    c.start().expect("start");
    let e = c.wait().expect("wait");
    let mut s = String::new();
    std::io::Read::read_to_string(&mut out, &mut s).ok();
    assert_eq!(e.code, Some(0), "fork bomb was not stopped: {s}");
    assert!(s.contains("fork refused after 19 children"), "{s}");
    c.delete(true).expect("delete");
}

#[test]
fn cpu_spinner_is_held_to_half_a_cpu() {
    require_root("cpu_spinner_is_held_to_half_a_cpu");
    let id = cid("cpu");
    let b = Bundle::new(&["sh", "-c", "while :; do :; done"], |o| o.cpus = Some(0.5));
    let mut c = Container::create(lib_opts(&b, &id)).expect("create");
    c.start().expect("start");
    std::thread::sleep(Duration::from_millis(300));
    let (u0, t0) = (c.stats().cpu_usage_ns, Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let (u1, t1) = (c.stats().cpu_usage_ns, Instant::now());
    let share = (u1 - u0) as f64 / (t1 - t0).as_nanos() as f64;
    println!("cpu share under --cpus 0.5: {share:.3}");
    c.kill(nix::sys::signal::Signal::SIGKILL, false)
        .expect("kill");
    c.wait().expect("wait");
    c.delete(false).expect("delete");
    // CFS enforces quota per 100ms period; one period of slack over 3s is < 0.04.
    assert!(share <= 0.58, "spinner used {share:.3} of a core");
    // Only "it ran": a loaded CI host may starve it, and that must not fail the test.
    assert!(u1 > u0, "cpu counter did not move: counters broken?");
}

#[test]
fn rlimit_above_host_hard_limit_is_a_clear_error() {
    require_root("rlimit_above_host_hard_limit_is_a_clear_error");
    // Above fs.nr_open no process may set it, CAP_SYS_RESOURCE or not, so the failure
    // is the same on every host and for every caller (runc: "error setting rlimit").
    let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .expect("read /proc/sys/fs/nr_open")
        .trim()
        .parse()
        .expect("nr_open is a number");
    let b = Bundle::new(&["true"], |_| {});
    let want = nr_open + 1;
    b.edit(|v| {
        v["process"]["rlimits"] =
            serde_json::json!([{"type": "RLIMIT_NOFILE", "soft": want, "hard": want}])
    });
    let out = b.cli(&["run", &cid("rlim")]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("RLIMIT_NOFILE") && err.lines().count() == 1,
        "one line naming the limit: {err}"
    );
    assert_eq!(
        text(&b.cli(&["list", "-q"]).stdout),
        "",
        "a failed run leaves nothing behind"
    );
}

#[test]
fn missing_executable_fails_at_create_like_runc() {
    require_root("missing_executable_fails_at_create_like_runc");
    let b = Bundle::new(&["no-such-binary"], |_| {});
    let out = b.cli(&["create", &cid("noexe")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("executable file not found in $PATH"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn hooks_readonly_root_and_bind_mounts() {
    require_root("hooks_readonly_root_and_bind_mounts");
    let b = Bundle::new(&["sh", "-c", "cat /data/in; touch /x 2>/dev/null && echo root-writable; touch /data/y 2>/dev/null && echo bind-writable; cat /proc/self/status | grep NoNewPrivs"], |o| o.readonly_rootfs = true);
    let data = b.path().join("data");
    std::fs::create_dir(&data).expect("mkdir");
    std::fs::write(data.join("in"), "bound\n").expect("write");
    let log = b.path().join("hooks.log");
    b.edit(|v| {
        v["mounts"].as_array_mut().expect("mounts").push(serde_json::json!({"destination": "/data", "type": "bind", "source": data, "options": ["rbind", "ro", "nosuid", "nodev", "rprivate"]}));
        let h = |name: &str| serde_json::json!([{"path": "/bin/sh", "args": ["sh", "-c", format!("echo {name} >> {}", log.display())]}]);
        // startContainer runs inside the container (read-only root): it reports on stdout.
        let start = serde_json::json!([{"path": "/bin/sh", "args": ["sh", "-c", "echo startContainer"]}]);
        v["hooks"] = serde_json::json!({"createRuntime": h("createRuntime"), "createContainer": h("createContainer"), "startContainer": start, "poststart": h("poststart"), "poststop": h("poststop")});
    });
    let out = b.cli(&["run", &cid("hooks")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "startContainer\nbound\nNoNewPrivs:\t1\n");
    assert_eq!(
        std::fs::read_to_string(&log).expect("hooks ran"),
        "createRuntime\ncreateContainer\npoststart\npoststop\n"
    );
}

#[test]
fn user_namespace_maps_root_to_an_unprivileged_host_uid() {
    require_root("user_namespace_maps_root_to_an_unprivileged_host_uid");
    let b = Bundle::new(
        &[
            "sh",
            "-c",
            "id; cat /proc/self/uid_map; ls -ln /bin/busybox",
        ],
        |_| {},
    );
    b.edit(|v| {
        v["linux"]["namespaces"]
            .as_array_mut()
            .expect("ns")
            .push(serde_json::json!({"type": "user"}));
        v["linux"]["uidMappings"] =
            serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        v["linux"]["gidMappings"] =
            serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    });
    let out = b.cli(&["run", &cid("userns")]);
    let s = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(s.starts_with("uid=0 gid=0"), "{s}");
    assert!(s.contains("0     100000      65536"), "{s}");
    // Host root's files are not root's inside: they show as the overflow uid.
    assert!(s.contains(" 65534 "), "{s}");
}

#[test]
fn joins_namespaces_by_path() {
    require_root("joins_namespaces_by_path");
    let a = Bundle::new(&["sleep", "100"], |o| o.hostname = Some("ns-owner".into()));
    let mut ca = Container::create(lib_opts(&a, &cid("nsa"))).expect("create a");
    ca.start().expect("start a");
    let pid = ca.pid();
    let b = Bundle::new(&["sh", "-c", "hostname; readlink /proc/self/ns/net"], |o| {
        o.hostname = None
    });
    b.edit(|v| {
        let ns = v["linux"]["namespaces"].as_array_mut().expect("ns");
        ns.retain(|n| n["type"] != "uts" && n["type"] != "network");
        ns.push(serde_json::json!({"type": "uts", "path": format!("/proc/{pid}/ns/uts")}));
        ns.push(serde_json::json!({"type": "network", "path": format!("/proc/{pid}/ns/net")}));
    });
    let out = b.cli(&["run", &cid("nsb")]);
    let net_a = std::fs::read_link(format!("/proc/{pid}/ns/net")).expect("ns link");
    ca.kill(nix::sys::signal::Signal::SIGKILL, false)
        .expect("kill");
    ca.wait().expect("wait");
    ca.delete(false).expect("delete");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!("ns-owner\n{}\n", net_a.display())
    );
}

#[test]
fn terminal_gives_the_process_a_pty_and_the_caller_its_master() {
    require_root("terminal_gives_the_process_a_pty_and_the_caller_its_master");
    let id = cid("tty");
    let b = Bundle::new(&["sh", "-c", "tty; test -t 0 && echo stdin-is-tty"], |o| {
        o.terminal = true
    });
    let mut c = Container::create(lib_opts(&b, &id)).expect("create");
    let master = c.take_console().expect("console master");
    c.start().expect("start");
    let mut out = String::new();
    let mut f = std::fs::File::from(master);
    let mut buf = [0u8; 1024];
    // Read until the pty closes (EIO) or we have both lines.
    while let Ok(n) = std::io::Read::read(&mut f, &mut buf) {
        if n == 0 {
            break;
        }
        out.push_str(&String::from_utf8_lossy(&buf[..n]));
        if out.contains("stdin-is-tty") {
            break;
        }
    }
    let e = c.wait().expect("wait");
    c.delete(false).expect("delete");
    assert_eq!(e.code, Some(0));
    assert!(out.starts_with("/dev/pts/0\r\n"), "{out:?}");
    assert!(out.contains("stdin-is-tty"), "{out:?}");
}

#[test]
fn namespaced_sysctls_apply_inside_only_and_others_are_refused() {
    require_root("namespaced_sysctls_apply_inside_only_and_others_are_refused");
    let host_fwd = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").expect("host sysctl");
    let want = if host_fwd.trim() == "1" { "0" } else { "1" };
    let b = Bundle::new(
        &[
            "sh",
            "-c",
            "cat /proc/sys/net/ipv4/ip_forward /proc/sys/kernel/shmmni",
        ],
        |_| {},
    );
    b.edit(|v| {
        v["linux"]["sysctl"] =
            serde_json::json!({"net.ipv4.ip_forward": want, "kernel.shmmni": "1234"})
    });
    let out = b.cli(&["run", &cid("sysctl")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("{want}\n1234\n"));
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").expect("host sysctl"),
        host_fwd
    );

    let b = Bundle::new(&["true"], |_| {});
    b.edit(|v| v["linux"]["sysctl"] = serde_json::json!({"kernel.panic": "0"}));
    let out = b.cli(&["run", &cid("sysctl2")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("sysctl kernel.panic is not namespaced"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn features_and_spec_commands() {
    require_root("features_and_spec_commands");
    let b = Bundle::new(&["true"], |_| {});
    let f: serde_json::Value =
        serde_json::from_slice(&b.cli(&["features"]).stdout).expect("features json");
    assert_eq!(f["linux"]["cgroup"]["v1"], true);
    assert!(f["hooks"].as_array().is_some_and(|h| h.len() == 6));
    let dir = tempfile::tempdir().expect("tempdir");
    let out = b.cli(&["spec", "--bundle", dir.path().to_str().expect("utf8")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let spec = oci_spec::runtime::Spec::load(dir.path().join("config.json")).expect("valid spec");
    assert!(spec.linux().as_ref().is_some_and(|l| l.seccomp().is_some()));
}

#[test]
fn user_groups_umask_and_capabilities_are_applied() {
    require_root("user_groups_umask_and_capabilities_are_applied");
    let script = "id; umask; grep -E '^Cap(Bnd|Eff)' /proc/self/status";
    let b = Bundle::new(&["sh", "-c", script], |o| {
        o.uid = 1000;
        o.gid = 1001;
        o.additional_gids = vec![10, 20];
    });
    b.edit(|v| v["process"]["user"]["umask"] = serde_json::json!(0o077));
    let out = b.cli(&["run", &cid("user")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Docker's 14 capabilities bound the process; a non-root user has none effective.
    assert_eq!(
        text(&out.stdout),
        "uid=1000 gid=1001 groups=10,20\n0077\nCapEff:\t0000000000000000\nCapBnd:\t00000000a80425fb\n"
    );
    let b = Bundle::new(&["sh", "-c", script], |_| {});
    let out = b.cli(&["run", &cid("root")]);
    assert_eq!(
        text(&out.stdout),
        "uid=0 gid=0\n0022\nCapEff:\t00000000a80425fb\nCapBnd:\t00000000a80425fb\n",
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn cgroup_v1_limits_and_spec_cgroups_path() {
    require_root("cgroup_v1_limits_and_spec_cgroups_path");
    if berth_runtime::cgroups::is_unified() {
        eprintln!("SKIP cgroup_v1_limits_and_spec_cgroups_path: this host is cgroup v2 only");
        return;
    }
    let id = cid("cglim");
    let path = format!("berth-test/{id}");
    let b = Bundle::new(&["sleep", "100"], |o| {
        o.memory = Some(64 << 20);
        o.memory_swap = Some(96 << 20);
        o.memory_reservation = Some(32 << 20);
        o.cpu_shares = Some(512);
        o.cpus = Some(1.5);
        o.cpuset_cpus = Some("0".into());
        o.pids_limit = Some(33);
        o.cgroups_path = Some(format!("/{path}"));
    });
    let c = Container::create(lib_opts(&b, &id)).expect("create");
    let read = |ctrl: &str, file: &str| {
        std::fs::read_to_string(format!("/sys/fs/cgroup/{ctrl}/{path}/{file}"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|e| format!("{e}"))
    };
    let got = [
        read("memory", "memory.limit_in_bytes"),
        read("memory", "memory.memsw.limit_in_bytes"),
        read("memory", "memory.soft_limit_in_bytes"),
        read("cpu", "cpu.shares"),
        read("cpu", "cpu.cfs_quota_us"),
        read("cpu", "cpu.cfs_period_us"),
        read("cpuset", "cpuset.cpus"),
        read("pids", "pids.max"),
    ];
    let procs = read("memory", "cgroup.procs");
    assert!(procs.lines().any(|p| p == c.pid().to_string()), "{procs}");
    c.delete(false).expect("delete created container");
    assert_eq!(
        got,
        [
            (64u64 << 20).to_string(),
            (96u64 << 20).to_string(),
            (32u64 << 20).to_string(),
            "512".into(),
            "150000".into(),
            "100000".into(),
            "0".into(),
            "33".into()
        ]
    );
    assert!(
        !std::path::Path::new(&format!("/sys/fs/cgroup/memory/{path}")).exists(),
        "cgroup removed"
    );
}

#[test]
fn default_mounts_devices_and_links_are_in_place() {
    require_root("default_mounts_devices_and_links_are_in_place");
    let script = "awk '{print $2, $3, substr($4, 1, 2)}' /proc/mounts; for l in /dev/ptmx /dev/fd /dev/stdin; do readlink $l; done; stat -c '%n %t:%T %a' /dev/null /dev/zero /dev/full /dev/random /dev/urandom /dev/tty; echo x > /dev/shm/ok && cat /dev/shm/ok; ip link show lo | grep -q ',UP' && echo lo-up; ip -o link | wc -l";
    let b = Bundle::new(&["sh", "-c", script], |_| {});
    let out = b.cli(&["run", &cid("mounts")]);
    let s = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for line in [
        "/proc proc rw",
        "/dev tmpfs rw",
        "/dev/pts devpts rw",
        "/sys sysfs ro",
        "/sys/fs/cgroup tmpfs ro",
        "/dev/mqueue mqueue rw",
        "/dev/shm tmpfs rw",
        "/proc/sys proc ro",
    ] {
        assert!(
            s.lines().any(|l| l == line),
            "missing mount {line:?} in:\n{s}"
        );
    }
    for line in [
        "pts/ptmx",
        "/proc/self/fd",
        "/proc/self/fd/0",
        "/dev/null 1:3 666",
        "/dev/zero 1:5 666",
        "/dev/full 1:7 666",
        "/dev/random 1:8 666",
        "/dev/urandom 1:9 666",
        "/dev/tty 5:0 666",
        "x",
        "lo-up", // a new network namespace with only loopback, up (as Docker)
        "1",
    ] {
        assert!(s.lines().any(|l| l == line), "missing {line:?} in:\n{s}");
    }
}

#[test]
fn kill_all_signals_every_process_in_the_container() {
    require_root("kill_all_signals_every_process_in_the_container");
    let id = cid("killall");
    let b = Bundle::new(
        &["sh", "-c", "sleep 100 & sleep 100 & touch /tmp/ready; wait"],
        |_| {},
    );
    assert!(b.cli(&["run", "--detach", &id]).status.success());
    let ready = b.path().join("rootfs/tmp/ready");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "container never got ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pids: Vec<i32> =
        serde_json::from_slice(&b.cli(&["ps", "--format", "json", &id]).stdout).expect("ps");
    assert_eq!(pids.len(), 3, "{pids:?}");
    assert!(b.cli(&["kill", "--all", &id, "9"]).status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = Container::load(b.root.path(), &id).expect("load");
        if c.status() == ContainerStatus::Stopped && c.pids().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "processes survived kill --all");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(b.cli(&["delete", &id]).status.success());
}

#[test]
fn failing_hook_fails_create_and_leaves_nothing_behind() {
    require_root("failing_hook_fails_create_and_leaves_nothing_behind");
    let id = cid("badhook");
    let b = Bundle::new(&["true"], |_| {});
    b.edit(|v| v["hooks"] = serde_json::json!({"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", "exit 3"]}]}));
    let out = b.cli(&["run", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("createRuntime hook /bin/sh"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(text(&b.cli(&["list", "-q"]).stdout), "");
    assert!(
        !std::path::Path::new(&format!("/sys/fs/cgroup/pids/berth/{id}")).exists(),
        "cgroup left behind"
    );
}

#[test]
fn console_socket_receives_the_pty_master_like_runc() {
    require_root("console_socket_receives_the_pty_master_like_runc");
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let id = cid("csock");
    let b = Bundle::new(&["sh", "-c", "echo on-$(tty)"], |o| o.terminal = true);
    let sock_path = b.path().join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock_path).expect("bind");
    let receiver = std::thread::spawn(move || -> OwnedFd {
        let (conn, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 64];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = nix::sys::socket::recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            nix::sys::socket::MsgFlags::empty(),
        )
        .expect("recvmsg");
        for c in msg.cmsgs().expect("cmsgs") {
            if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = c {
                return unsafe { OwnedFd::from_raw_fd(fds[0]) };
            }
        }
        panic!("no fd received on the console socket");
    });
    let out = b.cli(&[
        "create",
        "--console-socket",
        sock_path.to_str().expect("utf8"),
        &id,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let master = receiver.join().expect("receiver");
    assert!(b.cli(&["start", &id]).status.success());
    let mut f = std::fs::File::from(master);
    let mut got = String::new();
    let mut buf = [0u8; 256];
    while let Ok(n) = std::io::Read::read(&mut f, &mut buf) {
        if n == 0 {
            break;
        }
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
        if got.contains('\n') {
            break;
        }
    }
    assert!(got.starts_with("on-/dev/pts/0"), "{got:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Container::load(b.root.path(), &id).expect("load").status() != ContainerStatus::Stopped {
        assert!(Instant::now() < deadline, "container did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(b.cli(&["delete", &id]).status.success());
}
