//! The runc command-line contract engines rely on (conmon, containerd-shim-runc-v2 via
//! go-runc): failures of `create` reach the caller, signal names, pause/resume, update,
//! events, exec's --console-socket/--detach/--pid-file. Cases that runc handles on this
//! host are run with runc too and compared. Needs root.

mod common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Output};

use common::{cid, text, Bundle};

/// These tests drive real containers: without root they fail, naming why.
fn need_root(test: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "{test} needs root (namespaces, cgroups, runc)"
    );
}

/// `<runtime> --root <root> <args>` in the bundle, output through files (a created
/// container keeps the caller's stdio open).
fn run_with(bin: &str, root: &Path, bundle: &Path, args: &[&str]) -> Output {
    let out = tempfile::tempfile().expect("stdout file");
    let err = tempfile::tempfile().expect("stderr file");
    let status = Command::new(bin)
        .arg("--root")
        .arg(root)
        .args(args)
        .current_dir(bundle)
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().expect("clone"))
        .stderr(err.try_clone().expect("clone"))
        .status()
        .unwrap_or_else(|e| panic!("run {bin}: {e} (runc is installed by setup.sh)"));
    let read = |mut f: std::fs::File| {
        use std::io::{Read, Seek};
        let mut v = Vec::new();
        f.seek(std::io::SeekFrom::Start(0)).expect("seek");
        f.read_to_end(&mut v).expect("read");
        v
    };
    Output {
        status,
        stdout: read(out),
        stderr: read(err),
    }
}

/// The lines of a runc JSON log: each one object with level, msg and time.
fn json_log(path: &Path) -> Vec<serde_json::Value> {
    let t = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read log {}: {e}", path.display()));
    t.lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("log line {l:?}: {e}"));
            for k in ["level", "msg", "time"] {
                assert!(v[k].is_string(), "log line lacks {k}: {l}");
            }
            v
        })
        .collect()
}

#[test]
fn create_fails_when_the_init_cannot_apply_the_process_settings() {
    need_root("create_fails_when_the_init_cannot_apply_the_process_settings");
    // soft above hard fails setrlimit on every host (runc: EINVAL), after the clone: the
    // failure must travel back before `create` returns, not show up as a dead init.
    let b = Bundle::new(&["true"], |_| {});
    b.edit(|v| {
        v["process"]["rlimits"] =
            serde_json::json!([{"type": "RLIMIT_NOFILE", "soft": 2048, "hard": 1024}])
    });
    let runc_root = tempfile::tempdir().expect("runc root");
    for (bin, root) in [
        (common::runtime().to_str().expect("utf8"), b.root.path()),
        ("runc", runc_root.path()),
    ] {
        let log = b
            .path()
            .join(format!("log-{}.json", root.display().to_string().len()));
        let id = cid("rlim-create");
        let out = run_with(
            bin,
            root,
            b.path(),
            &[
                "--log",
                log.to_str().expect("utf8"),
                "--log-format",
                "json",
                "create",
                &id,
            ],
        );
        assert_eq!(out.status.code(), Some(1), "{bin} create: {out:?}");
        let err = text(&out.stderr);
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{bin}: one stderr line: {err:?}"
        );
        assert!(err.contains("rlimit"), "{bin} names the rlimit: {err}");
        let recs = json_log(&log);
        assert!(
            recs.iter().any(|r| r["level"] == "error"
                && r["msg"].as_str().is_some_and(|m| m.contains("rlimit"))),
            "{bin} --log: {recs:?}"
        );
        let state = run_with(bin, root, b.path(), &["state", &id]);
        assert_eq!(
            state.status.code(),
            Some(1),
            "{bin}: nothing left behind: {state:?}"
        );
        if bin != "runc" {
            assert!(err.contains("RLIMIT_NOFILE"), "{err}");
            assert!(text(&b.cli(&["list", "-q"]).stdout).is_empty());
        }
    }
    // The text log format is logrus' too.
    let log = b.path().join("log.txt");
    let out = b.cli(&[
        "--log",
        log.to_str().expect("utf8"),
        "create",
        &cid("rlim-text"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let t = std::fs::read_to_string(&log).expect("text log");
    assert!(
        t.starts_with("time=\"")
            && t.contains(" level=error msg=\"")
            && t.contains("RLIMIT_NOFILE"),
        "{t}"
    );
}

#[test]
fn create_then_start_as_an_unprivileged_user_runs_the_process() {
    need_root("create_then_start_as_an_unprivileged_user_runs_the_process");
    // The init drops to process.user before waiting on the exec fifo: it must still be
    // able to open the fifo for writing.
    let b = Bundle::new(&["sleep", "30"], |o| {
        o.uid = 1000;
        o.gid = 1000;
    });
    let id = cid("user-start");
    let out = b.cli(&["create", &id]);
    assert!(out.status.success(), "create: {}", text(&out.stderr));
    let pid = berth_runtime::Container::load(b.root.path(), &id)
        .expect("load")
        .pid();
    let out = b.cli(&["start", &id]);
    assert!(out.status.success(), "start: {}", text(&out.stderr));
    // start returns once the fifo is read; the exec follows right after.
    let mut cmdline = String::new();
    for _ in 0..500 {
        cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if cmdline.starts_with("sleep") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(cmdline, "sleep\u{0}30\u{0}");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let uid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .expect("Uid line");
    assert_eq!(uid.split_whitespace().nth(1), Some("1000"), "{uid}");
    let st: serde_json::Value =
        serde_json::from_slice(&b.cli(&["state", &id]).stdout).expect("state json");
    assert_eq!(st["status"], "running");
    assert!(b.cli(&["delete", "--force", &id]).status.success());
}

#[test]
fn kill_takes_signal_names_with_and_without_sig_and_numbers() {
    need_root("kill_takes_signal_names_with_and_without_sig_and_numbers");
    let b = Bundle::new(
        &[
            "sh",
            "-c",
            "trap 'echo x >> /tmp/got' TERM USR1 35; touch /tmp/ready; while true; do sleep 0.05; done",
        ],
        |_| {},
    );
    let id = cid("sig");
    assert!(b.cli(&["run", "-d", &id]).status.success());
    let count = || {
        let o = b.cli(&["exec", &id, "sh", "-c", "cat /tmp/got 2>/dev/null | wc -l"]);
        text(&o.stdout).trim().parse::<usize>().expect("count")
    };
    let wait_for = |n: usize| {
        for _ in 0..400 {
            if count() >= n {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("signal {n} never arrived");
    };
    for _ in 0..400 {
        if b.cli(&["exec", &id, "test", "-e", "/tmp/ready"])
            .status
            .success()
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    for (i, sig) in ["TERM", "SIGTERM", "15", "term", "usr1", "SIGRTMIN+1", "35"]
        .iter()
        .enumerate()
    {
        let o = b.cli(&["kill", &id, sig]);
        assert!(o.status.success(), "kill {sig}: {}", text(&o.stderr));
        wait_for(i + 1);
    }
    for bad in ["FOO", "0", "99", "RTMIN+99"] {
        let o = b.cli(&["kill", &id, bad]);
        assert_eq!(o.status.code(), Some(1), "kill {bad}");
        assert!(
            text(&o.stderr).contains("invalid signal"),
            "{}",
            text(&o.stderr)
        );
    }
    assert!(b.cli(&["delete", "--force", &id]).status.success());
}

/// The container's v1 (or v2) cgroup file, read from the host.
fn cgroup_file(b: &Bundle, id: &str, ctrl: &str, file: &str) -> String {
    let c = berth_runtime::Container::load(b.root.path(), id).expect("load");
    let cg = c.cgroup();
    let dir = if cg.v2() {
        Path::new("/sys/fs/cgroup").join(cg.path())
    } else {
        Path::new("/sys/fs/cgroup").join(ctrl).join(cg.path())
    };
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("read {}/{file}: {e}", dir.display()))
        .trim()
        .to_string()
}

#[test]
fn pause_resume_update_and_events() {
    need_root("pause_resume_update_and_events");
    let b = Bundle::new(&["sleep", "60"], |o| o.memory = Some(64 << 20));
    let id = cid("pause");
    assert!(b.cli(&["run", "-d", &id]).status.success());
    let status = || {
        let v: serde_json::Value =
            serde_json::from_slice(&b.cli(&["state", &id]).stdout).expect("state json");
        v["status"].as_str().expect("status").to_string()
    };
    assert!(b.cli(&["pause", &id]).status.success());
    assert_eq!(status(), "paused");
    assert_eq!(cgroup_file(&b, &id, "freezer", "freezer.state"), "FROZEN");
    let o = b.cli(&["exec", &id, "true"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "exec into a paused container is refused"
    );
    let o = b.cli(&["delete", &id]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "delete without --force of a paused one"
    );
    assert!(b.cli(&["resume", &id]).status.success());
    assert_eq!(status(), "running");
    assert_eq!(b.cli(&["resume", &id]).status.code(), Some(1));

    let o = b.cli(&["update", "--memory", "128m", "--pids-limit", "77", &id]);
    assert!(o.status.success(), "update: {}", text(&o.stderr));
    assert_eq!(
        cgroup_file(&b, &id, "memory", "memory.limit_in_bytes"),
        (128u64 << 20).to_string()
    );
    assert_eq!(cgroup_file(&b, &id, "pids", "pids.max"), "77");
    let res = b.path().join("res.json");
    std::fs::write(
        &res,
        r#"{"memory":{"limit":100663296},"pids":{"limit":55}}"#,
    )
    .expect("res");
    let o = b.cli(&["update", "--resources", res.to_str().expect("utf8"), &id]);
    assert!(
        o.status.success(),
        "update --resources: {}",
        text(&o.stderr)
    );
    assert_eq!(
        cgroup_file(&b, &id, "memory", "memory.limit_in_bytes"),
        "100663296"
    );
    assert_eq!(cgroup_file(&b, &id, "pids", "pids.max"), "55");
    assert_eq!(
        b.cli(&["update", "--memory", "lots", &id]).status.code(),
        Some(1)
    );
    assert_eq!(
        cgroup_file(&b, &id, "memory", "memory.limit_in_bytes"),
        "100663296"
    );

    let o = b.cli(&["events", "--stats", &id]);
    assert!(o.status.success(), "events: {}", text(&o.stderr));
    let ev: serde_json::Value = serde_json::from_slice(&o.stdout).expect("event json");
    assert_eq!(ev["type"], "stats");
    assert_eq!(ev["id"], id.as_str());
    assert_eq!(ev["data"]["memory"]["usage"]["limit"], 100663296u64);
    assert_eq!(ev["data"]["pids"]["current"], 1);

    // A paused container is removed by delete --force, cgroup and all.
    assert!(b.cli(&["pause", &id]).status.success());
    let c = berth_runtime::Container::load(b.root.path(), &id).expect("load");
    let dir = Path::new("/sys/fs/cgroup/freezer").join(c.cgroup().path());
    let o = b.cli(&["delete", "--force", &id]);
    assert!(o.status.success(), "delete -f paused: {}", text(&o.stderr));
    assert!(!dir.exists(), "{} left behind", dir.display());
}

/// Receive the pty master sent over a console socket (runc's protocol).
fn recv_master(listener: &std::os::unix::net::UnixListener) -> OwnedFd {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let (conn, _) = listener.accept().expect("accept console socket");
    let mut buf = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let m = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::empty(),
    )
    .expect("recvmsg");
    for c in m.cmsgs().expect("cmsgs") {
        if let ControlMessageOwned::ScmRights(fds) = c {
            return unsafe { OwnedFd::from_raw_fd(fds[0]) };
        }
    }
    panic!("no fd on the console socket");
}

#[test]
fn exec_detached_with_a_console_socket_and_pid_file() {
    need_root("exec_detached_with_a_console_socket_and_pid_file");
    let b = Bundle::new(&["sleep", "60"], |_| {});
    let id = cid("exec-tty");
    assert!(b.cli(&["run", "-d", &id]).status.success());
    let sock = b.path().join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
    let t = std::thread::spawn(move || recv_master(&listener));
    // As conmon and go-runc call it: a process.json, --detach, --pid-file, --console-socket.
    let process = b.path().join("process.json");
    std::fs::write(
        &process,
        serde_json::json!({
            "terminal": true, "user": {"uid": 0, "gid": 0}, "cwd": "/",
            "args": ["sh", "-c", "tty; echo done-$((6*7))"],
            "env": ["PATH=/bin"]
        })
        .to_string(),
    )
    .expect("process.json");
    let pidfile = b.path().join("exec.pid");
    let o = b.cli(&[
        "exec",
        "--process",
        process.to_str().expect("utf8"),
        "--detach",
        "--pid-file",
        pidfile.to_str().expect("utf8"),
        "--console-socket",
        sock.to_str().expect("utf8"),
        &id,
    ]);
    assert!(o.status.success(), "exec: {}", text(&o.stderr));
    let master = t.join().expect("console thread");
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    assert!(pid > 0);
    let mut out = String::new();
    let mut f = std::fs::File::from(master);
    let mut buf = [0u8; 1024];
    while !out.contains("done-42") {
        match std::io::Read::read(&mut f, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
    assert!(out.contains("/dev/pts/"), "{out:?}");
    assert!(out.contains("done-42"), "{out:?}");
    assert!(b.cli(&["delete", "--force", &id]).status.success());
}

/// `<bin> --root <root> run <id>` with `files` on fds 3.. and extra environment.
fn run_with_fds(
    bin: &str,
    root: &Path,
    b: &Bundle,
    args: &[&str],
    files: &[&std::fs::File],
    listen: bool,
) -> Output {
    use std::os::unix::process::CommandExt;
    let raw: Vec<i32> = files.iter().map(|f| f.as_raw_fd()).collect();
    let out = tempfile::tempfile().expect("stdout file");
    // LISTEN_PID must be the runtime's own pid: `exec` from a shell that knows its pid.
    let mut cmd = if listen {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(format!(
                "LISTEN_PID=$$ LISTEN_FDS={} exec \"$@\"",
                files.len()
            ))
            .arg("sh")
            .arg(bin);
        c
    } else {
        Command::new(bin)
    };
    cmd.arg("--root")
        .arg(root)
        .args(args)
        .current_dir(b.path())
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().expect("clone"))
        .stderr(std::process::Stdio::piped());
    unsafe {
        cmd.pre_exec(move || {
            // Sources are above 3+n (opened before); dup2 clears close-on-exec.
            for (i, fd) in raw.iter().enumerate() {
                if libc::dup2(*fd, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let o = cmd.output().expect("run runtime");
    let mut v = Vec::new();
    let mut f = out;
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(0)).expect("seek");
    std::io::Read::read_to_end(&mut f, &mut v).expect("read");
    Output {
        status: o.status,
        stdout: v,
        stderr: o.stderr,
    }
}

#[test]
fn preserve_fds_and_listen_fds_reach_the_process_as_with_runc() {
    need_root("preserve_fds_and_listen_fds_reach_the_process_as_with_runc");
    let b = Bundle::new(
        &[
            "sh",
            "-c",
            "echo fds=$(ls /proc/self/fd | wc -l) listen=$LISTEN_FDS/$LISTEN_PID; cat <&3; cat <&4 2>/dev/null || echo no-4",
        ],
        |_| {},
    );
    let paths: Vec<std::path::PathBuf> = ["three\n", "four\n"]
        .iter()
        .enumerate()
        .map(|(i, content)| {
            let p = b.path().join(format!("f{i}"));
            std::fs::write(&p, content).expect("write");
            p
        })
        .collect();
    // Fresh open files per run (a shared offset would be at EOF after the first), opened
    // well above 3..4 so that the dup2s in the child do not clobber a source.
    let open = || -> Vec<std::fs::File> {
        paths
            .iter()
            .map(|p| {
                let f = std::fs::File::open(p).expect("open");
                let hi =
                    nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(50)).expect("dup");
                unsafe { std::fs::File::from_raw_fd(hi) }
            })
            .collect()
    };
    let runc_root = tempfile::tempdir().expect("runc root");
    let berth = common::runtime();
    let mut seen = Vec::new();
    for (bin, root) in [
        ("runc", runc_root.path()),
        (berth.to_str().expect("utf8"), b.root.path()),
    ] {
        let run = |args: &[&str], n: usize, listen: bool| {
            let files = open();
            let refs: Vec<&std::fs::File> = files.iter().take(n).collect();
            run_with_fds(bin, root, &b, args, &refs, listen)
        };
        let pf = run(&["run", "--preserve-fds", "2", &cid("pf")], 2, false);
        let none = run(&["run", &cid("pf0")], 2, false);
        let lf = run(&["run", &cid("lf")], 1, true);
        seen.push([pf, none, lf].map(|o| (o.status.code(), text(&o.stdout))));
    }
    // ls's own directory fd makes stdio + preserved + 1.
    assert_eq!(
        seen[0][0],
        (Some(0), "fds=6 listen=/\nthree\nfour\n".into()),
        "runc"
    );
    assert_eq!(
        seen[0][1].1, "fds=4 listen=/\nno-4\n",
        "runc: nothing inherited"
    );
    assert_eq!(
        seen[0][2].1, "fds=5 listen=1/1\nthree\nno-4\n",
        "runc: socket activation"
    );
    assert_eq!(seen[1], seen[0], "berth-runtime vs runc");
    let o = b.cli(&["run", "--preserve-fds", "3", &cid("pf-bad")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("fd 3 is not open"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn warnings_reach_the_log_as_runc_records() {
    need_root("warnings_reach_the_log_as_runc_records");
    let b = Bundle::new(&["true"], |_| {});
    // A failing poststop hook is a warning (the spec says so), not an error.
    b.edit(|v| {
        v["hooks"] = serde_json::json!({"poststop": [{"path": "/bin/false", "args": ["false"]}]})
    });
    let log = b.path().join("log.json");
    let o = b.cli(&[
        "--log",
        log.to_str().expect("utf8"),
        "--log-format",
        "json",
        "run",
        &cid("warn"),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let recs = json_log(&log);
    assert!(
        recs.iter().any(|r| r["level"] == "warning"
            && r["msg"].as_str().is_some_and(|m| m.contains("poststop"))),
        "{recs:?}"
    );
    // exec with a terminal, detached, needs somewhere to send the pty (as runc).
    let id = cid("tty-detach");
    let b2 = Bundle::new(&["sleep", "30"], |_| {});
    assert!(b2.cli(&["run", "-d", &id]).status.success());
    let o = b2.cli(&["exec", "--tty", "--detach", &id, "true"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("console socket"),
        "{}",
        text(&o.stderr)
    );
}
