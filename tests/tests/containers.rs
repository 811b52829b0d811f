//! Containers end to end, as root: real nats-server, image-store, layer-unpacker and
//! executor binaries, the real CLI, and a busybox image built here from Debian's
//! busybox-static and imported with `berth import`.

use berth_proto::messages::exec::ContainerEvent;
use berth_proto::subjects::{self, EventKind};
use berth_tests::cli::{eventually, CliEnv};
use berth_tests::fixtures::need_containers;
use berth_tests::{bin_path, Stack};
use futures::StreamExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const NODE: &str = "node-c";
const IMAGE: &str = "busybox:test";
const SERVICES: [&str; 4] = [
    "berth-image-store",
    "berth-layer-unpacker",
    "berth-scheduler",
    "berth-executor",
];

/// A rootfs tarball: /bin/busybox with its applet links, passwd and group with a `www` user.
fn busybox_tar(dir: &Path) -> anyhow::Result<PathBuf> {
    let root = dir.join("rootfs");
    for sub in ["bin", "etc", "tmp", "root", "var/www"] {
        std::fs::create_dir_all(root.join(sub))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))?;
    let list = Command::new("/bin/busybox").arg("--list").output()?;
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
        }
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/var/www:/bin/sh\n",
    )?;
    std::fs::write(
        root.join("etc/group"),
        "root:x:0:\nwww:x:33:\nstaff:x:50:www\n",
    )?;
    let tar = dir.join("busybox.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()?;
    anyhow::ensure!(status.success(), "tar failed: {status}");
    Ok(tar)
}

/// The stack with the busybox image imported; every container goes when it drops.
type Env = CliEnv;

async fn start() -> anyhow::Result<Env> {
    let stack = Stack::start(&SERVICES, NODE).await?;
    CliEnv::import(stack, IMAGE, &[], busybox_tar)
}

#[tokio::test]
async fn run_streams_output_and_propagates_exit_codes() -> anyhow::Result<()> {
    need_containers(&[])?;
    let env = start().await?;
    let client = env.stack.nats.client().await?;
    let mut events = client
        .subscribe(subjects::events_of_kind(EventKind::Container))
        .await?;
    client.flush().await?;
    let (code, out, _) = env.run_rm(&[], &["echo", "hello from berth"])?;
    assert_eq!((code, out.as_str()), (0, "hello from berth\n"));
    // create, start, die (with the exit code), destroy: in order, on the container's subjects.
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let message = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("event subscription ended"))?;
        let event: ContainerEvent = serde_json::from_slice(&message.payload)?;
        assert_eq!(
            message.subject.as_str(),
            subjects::event(EventKind::Container, &event.id, &event.action)
        );
        seen.push((event.action, event.exit_code));
    }
    assert_eq!(
        seen,
        [
            ("create".to_string(), None),
            ("start".to_string(), None),
            ("die".to_string(), Some(0)),
            ("destroy".to_string(), None)
        ]
    );

    let (code, out, err) = env.run_rm(&[], &["sh", "-c", "echo out; echo err >&2; exit 3"])?;
    assert_eq!(code, 3);
    assert_eq!(out, "out\n");
    assert!(err.contains("err\n"), "{err}");

    let (code, _, err) = env.run_rm(&[], &["no-such-command"])?;
    assert_eq!(code, 127, "{err}");
    assert!(err.contains("no-such-command"), "{err}");
    let (code, _, err) = env.run_rm(&[], &["/etc/passwd"])?;
    assert!(code == 126 || code == 127, "{code}: {err}");

    // A long line arrives whole (partial CRI records are joined again).
    let (code, out, _) = env.run_rm(&[], &["sh", "-c", "head -c 40000 /dev/zero | tr '\\0' x"])?;
    assert_eq!((code, out.len()), (0, 40_000));

    // --rm left nothing behind: no container, and no snapshot still pinned by one.
    let left = env.stdout(&["ps", "-a", "-q"])?;
    assert!(left.trim().is_empty(), "{left}");
    let df: serde_json::Value = serde_json::from_str(&env.stdout(&["system", "df", "--json"])?)?;
    let snapshots = df
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["kind"] == "Snapshots"))
        .ok_or_else(|| anyhow::anyhow!("no snapshot row in {df}"))?;
    assert!(snapshots["total"].as_u64() >= Some(1), "{df}");
    assert_eq!(
        snapshots["active"].as_u64(),
        Some(0),
        "removed containers still pin: {df}"
    );
    Ok(())
}

#[tokio::test]
async fn env_workdir_user_hostname_and_limits_apply() -> anyhow::Result<()> {
    need_containers(&[])?;
    let env = start().await?;
    let (code, out, err) = env.run_rm(
        &[
            "-e",
            "FOO=bar",
            "-w",
            "/tmp",
            "-u",
            "www",
            "--hostname",
            "box",
        ],
        &[
            "sh",
            "-c",
            "echo $FOO; pwd; id -u; id -g; id -G; hostname; echo $HOME",
        ],
    )?;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "bar\n/tmp\n33\n33\n33 50\nbox\n/var/www\n");

    let (code, out, _) = env.run_rm(&["-u", "1234:50"], &["sh", "-c", "id -u; id -g"])?;
    assert_eq!((code, out.as_str()), (0, "1234\n50\n"));
    let (code, _, err) = env.run_rm(&["-u", "nobody-here"], &["true"])?;
    assert_eq!(code, 125);
    assert!(err.contains("unable to find user nobody-here"), "{err}");

    let env_file = tempfile::NamedTempFile::new()?;
    std::fs::write(env_file.path(), "# comment\nFROM_FILE=yes\nFOO=file\n")?;
    let env_path = env_file.path().display().to_string();
    let (code, out, err) = env.run_rm(
        &[
            "--env-file", &env_path, "-e", "FOO=flag", "--ulimit", "nofile=100:200",
            "--tmpfs", "/scratch:size=1m", "--cap-drop", "CHOWN",
        ],
        &[
            "sh", "-c",
            "echo $FROM_FILE $FOO; ulimit -n; grep -c ' /scratch tmpfs' /proc/mounts; chown 1 /tmp || echo no chown",
        ],
    )?;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "yes flag\n100\n1\nno chown\n");

    let (code, _, err) = env.run_rm(&["--read-only"], &["touch", "/x"])?;
    assert_eq!(code, 1);
    assert!(err.contains("Read-only"), "{err}");

    let (code, out, _) = env.run_rm(
        &["--pids-limit", "32", "--cpus", "0.5", "--network", "none"],
        &["sh", "-c", "ls /sys/class/net"],
    )?;
    assert_eq!((code, out.as_str()), (0, "lo\n"));

    // A memory limit the process exceeds: OOM-killed, reported as such.
    let output = env.berth(&[
        "run",
        "--name",
        "hog",
        "--memory",
        "16m",
        IMAGE,
        "sh",
        "-c",
        "x=aaaaaaaa; while true; do x=\"$x$x\"; done",
    ])?;
    assert_eq!(output.status.code(), Some(137));
    let hog = env.inspect("hog")?;
    assert_eq!(hog["oom_killed"], true, "{hog}");
    assert_eq!(hog["exit_code"], 137, "{hog}");
    Ok(())
}

#[tokio::test]
async fn a_missing_workdir_is_created_for_the_containers_user() -> anyhow::Result<()> {
    need_containers(&[])?;
    let env = start().await?;
    let (code, out, err) = env.run_rm(
        &["-w", "/a/b/c"],
        &["sh", "-c", "pwd; stat -c %u:%g:%a /a /a/b /a/b/c"],
    )?;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "/a/b/c\n0:0:755\n0:0:755\n0:0:755\n");

    // Every created component belongs to the user, who can work in it; what existed
    // (here /var) keeps its owner.
    let (code, out, err) = env.run_rm(
        &["-w", "/var/a/b/c", "-u", "1000:1000"],
        &[
            "sh",
            "-c",
            "pwd; stat -c %u:%g /var /var/a /var/a/b /var/a/b/c; touch f && echo writable",
        ],
    )?;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "/var/a/b/c\n0:0\n1000:1000\n1000:1000\n1000:1000\nwritable\n"
    );

    // A read-only root cannot get the directory: a clear error before the process runs.
    let (code, out, err) = env.run_rm(&["--read-only", "-w", "/ro/dir"], &["echo", "ran"])?;
    assert_ne!(code, 0, "{out}{err}");
    assert!(!out.contains("ran"), "{out}");
    assert!(
        err.contains("working directory /ro/dir") && err.contains("read-only"),
        "{err}"
    );
    // An existing one is fine there.
    let (code, out, err) = env.run_rm(&["--read-only", "-w", "/var/www"], &["pwd"])?;
    assert_eq!((code, out.as_str()), (0, "/var/www\n"), "{err}");

    // An image whose WORKDIR its layers do not hold.
    let scratch = tempfile::tempdir()?;
    let tar = busybox_tar(scratch.path())?;
    let tar = tar.display().to_string();
    env.stdout(&[
        "import",
        &tar,
        "busybox:workdir",
        "-c",
        "WORKDIR /missing/here",
    ])?;
    let output = env.berth(&[
        "run",
        "--rm",
        "-u",
        "33:33",
        "busybox:workdir",
        "sh",
        "-c",
        "pwd; stat -c %u:%g .",
    ])?;
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "/missing/here\n33:33\n",
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.status.code(), Some(0));
    Ok(())
}

#[tokio::test]
async fn bind_mounts_are_read_only_or_writable() -> anyhow::Result<()> {
    need_containers(&[])?;
    let env = start().await?;
    let host = tempfile::tempdir()?;
    std::fs::write(host.path().join("in"), "from the host\n")?;
    let ro = format!("{}:/data:ro", host.path().display());
    let (code, out, err) = env.run_rm(
        &["-v", &ro],
        &["sh", "-c", "cat /data/in; echo x > /data/out"],
    )?;
    assert_eq!(code, 1);
    assert_eq!(out, "from the host\n");
    assert!(err.contains("Read-only file system"), "{err}");
    assert!(!host.path().join("out").exists());

    let rw = format!("{}:/data", host.path().display());
    let (code, _, err) = env.run_rm(&["-v", &rw], &["sh", "-c", "echo written > /data/out"])?;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read_to_string(host.path().join("out"))?,
        "written\n"
    );
    Ok(())
}

#[tokio::test]
async fn detached_containers_log_stop_kill_and_remove() -> anyhow::Result<()> {
    need_containers(&[])?;
    let env = start().await?;
    // Handles SIGTERM: stop ends it within the grace period with its own code.
    let polite = env.stdout(&[
        "run", "-d", "--name", "polite", IMAGE, "sh", "-c",
        "trap 'echo got TERM; exit 7' TERM; echo line 1; echo line 2; while true; do sleep 0.1; done",
    ])?;
    let polite = polite.trim().to_string();
    assert_eq!(polite.len(), 64, "{polite}");
    // PID 1 ignores SIGTERM by default: stop must fall back to SIGKILL after the grace.
    env.stdout(&["run", "-d", "--name", "stubborn", IMAGE, "sleep", "600"])?;
    env.stdout(&[
        "run",
        "-d",
        "--name",
        "target",
        IMAGE,
        "sh",
        "-c",
        "trap 'exit 42' USR1; while true; do sleep 0.1; done",
    ])?;

    assert!(eventually(Duration::from_secs(10), || {
        env.stdout(&["logs", "polite"])
            .is_ok_and(|out| out == "line 1\nline 2\n")
    }));
    assert_eq!(env.stdout(&["logs", "--tail", "1", "polite"])?, "line 2\n");

    let ps: Vec<serde_json::Value> = serde_json::from_str(&env.stdout(&["ps", "--json"])?)?;
    let mut names: Vec<&str> = ps.iter().filter_map(|c| c["name"].as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["polite", "stubborn", "target"]);
    assert!(ps.iter().all(|c| c["status"] == "running"), "{ps:?}");

    // A running container is not removed without force.
    let refused = env.berth(&["rm", "polite"])?;
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("running"));

    let started = Instant::now();
    env.stdout(&["stop", "polite"])?;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(env.stdout(&["wait", "polite"])?, "7\n");
    assert_eq!(
        env.stdout(&["logs", "polite"])?,
        "line 1\nline 2\ngot TERM\n"
    );

    let started = Instant::now();
    env.stdout(&["stop", "-t", "1", "stubborn"])?;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(6),
        "{took:?}"
    );
    assert_eq!(env.inspect("stubborn")?["exit_code"], 137);

    env.stdout(&["kill", "-s", "USR1", "target"])?;
    assert_eq!(env.stdout(&["wait", "target"])?, "42\n");
    let killing_stopped = env.berth(&["kill", "target"])?;
    assert_eq!(killing_stopped.status.code(), Some(1));

    // Exited containers show in ps -a only; rm removes them.
    let running = env.stdout(&["ps", "-q"])?;
    assert!(running.trim().is_empty(), "{running}");
    let all = env.stdout(&["ps", "-a"])?;
    assert!(
        all.contains("Exited (7)") && all.contains("Exited (137)"),
        "{all}"
    );
    env.stdout(&["rm", "polite", "stubborn", "target"])?;
    assert!(env.stdout(&["ps", "-a", "-q"])?.trim().is_empty());

    // rm -f on a running one; start of a created one.
    let id = env.stdout(&[
        "create",
        "--name",
        "later",
        IMAGE,
        "sh",
        "-c",
        "echo started late; sleep 600",
    ])?;
    assert_eq!(env.inspect("later")?["status"], "created");
    env.stdout(&["start", "later"])?;
    assert!(eventually(Duration::from_secs(10), || {
        env.stdout(&["logs", "later"])
            .is_ok_and(|out| out == "started late\n")
    }));
    env.stdout(&["rm", "-f", id.trim()])?;
    let gone = env.berth(&["inspect", "later"])?;
    assert!(!gone.status.success());
    Ok(())
}

#[tokio::test]
async fn logs_follow_streams_until_the_container_exits() -> anyhow::Result<()> {
    need_containers(&[])?;
    let env = start().await?;
    env.stdout(&[
        "run",
        "-d",
        "--name",
        "ticker",
        IMAGE,
        "sh",
        "-c",
        "for i in 1 2 3 4 5; do echo tick $i; sleep 0.3; done",
    ])?;
    let follow = env.berth(&["logs", "-f", "ticker"])?;
    assert!(follow.status.success());
    assert_eq!(
        String::from_utf8_lossy(&follow.stdout),
        "tick 1\ntick 2\ntick 3\ntick 4\ntick 5\n"
    );
    Ok(())
}

#[tokio::test]
async fn a_sigkilled_executor_readopts_its_containers() -> anyhow::Result<()> {
    need_containers(&[])?;
    // Declared before `env` so it is dropped after it: Env's drop removes the containers
    // through this executor, even when an assertion fails.
    let restarted: std::cell::Cell<Option<tokio::process::Child>> = std::cell::Cell::new(None);
    let mut env = start().await?;
    // Twenty containers: five exit while no executor runs, each with its own code;
    // fourteen keep running; one ticks through the outage so its log shows whether lines
    // were lost.
    for n in 0..14 {
        let name = format!("long-{n}");
        env.stdout(&["run", "-d", "--name", &name, IMAGE, "sleep", "600"])?;
    }
    env.stdout(&[
        "run",
        "-d",
        "--name",
        "ticker",
        IMAGE,
        "sh",
        "-c",
        "i=0; while [ $i -lt 100 ]; do echo tick $i; i=$((i+1)); sleep 0.1; done",
    ])?;
    // Started last, so that none has exited before the executor is killed.
    for code in [3, 5, 7, 9, 11] {
        let name = format!("short-{code}");
        let script = format!("echo before; sleep 2; echo after; exit {code}");
        env.stdout(&["run", "-d", "--name", &name, IMAGE, "sh", "-c", &script])?;
    }

    // A `logs -f` already following when the executor dies must ride out the outage:
    // every tick once, in order, and exit 0 when the ticker ends.
    let follower_started = env
        .stack
        .berth()?
        .args(["logs", "-f", "ticker"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let executor = env
        .stack
        .services
        .iter_mut()
        .find(|s| s.name == "berth-executor")
        .ok_or_else(|| anyhow::anyhow!("no executor in the stack"))?;
    let pid = executor
        .pid()
        .ok_or_else(|| anyhow::anyhow!("executor has no pid"))?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    // The short ones exit while no executor runs.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = env.stack.data_dir().join("executor-restarted.log");
    let log_file = std::fs::File::create(&log)?;
    let child = tokio::process::Command::new(bin_path("berth-executor")?)
        .env("BERTH_NATS_URL", env.stack.nats.url())
        .env("BERTH_DATA_DIR", env.stack.data_dir())
        .env("BERTH_NODE_ID", NODE)
        .env("RUST_LOG", "info")
        .env_remove("BERTH_CONFIG")
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()?;
    restarted.set(Some(child));
    env.stack
        .wait_ready(&["berth-executor"], Duration::from_secs(20))
        .await?;

    for code in [3, 5, 7, 9, 11] {
        let state = env.inspect(&format!("short-{code}"))?;
        assert_eq!(state["status"], "exited", "{state}");
        assert_eq!(state["exit_code"], code, "{state}");
        assert_eq!(
            env.stdout(&["logs", &format!("short-{code}")])?,
            "before\nafter\n"
        );
    }
    let running = env.stdout(&["ps", "-q"])?;
    assert_eq!(
        running.split_whitespace().count(),
        15,
        "14 sleepers and the ticker: {running}"
    );
    // logs -f picks up the ticker across the outage and ends with it, whether it was
    // started after the restart or was following through it.
    let follow = env.berth(&["logs", "-f", "ticker"])?;
    let expected: String = (0..100).map(|i| format!("tick {i}\n")).collect();
    assert_eq!(String::from_utf8_lossy(&follow.stdout), expected);
    let through =
        tokio::task::spawn_blocking(move || follower_started.wait_with_output()).await??;
    assert!(
        through.status.success(),
        "logs -f through the executor's restart: {} {}",
        through.status,
        String::from_utf8_lossy(&through.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&through.stdout), expected);

    // Exits of re-adopted containers are still seen and recorded.
    env.stdout(&["kill", "-s", "KILL", "long-0"])?;
    assert_eq!(env.stdout(&["wait", "long-0"])?, "137\n");
    env.stdout(&["stop", "-t", "1", "long-1"])?;
    assert_eq!(env.inspect("long-1")?["exit_code"], 137);
    drop(env);
    if let Some(mut child) = restarted.take() {
        let _ = child.kill().await;
    }
    Ok(())
}

#[tokio::test]
async fn exec_runs_in_the_container_with_its_own_exit_code_and_stats_count() -> anyhow::Result<()> {
    need_containers(&[])?;
    let env = start().await?;
    env.stdout(&[
        "run",
        "-d",
        "--name",
        "host",
        "--memory",
        "64m",
        IMAGE,
        "sh",
        "-c",
        "echo marker > /tmp/inside; sleep 600",
    ])?;
    assert!(eventually(Duration::from_secs(10), || {
        env.berth(&["exec", "host", "cat", "/tmp/inside"])
            .is_ok_and(|o| o.status.success() && o.stdout == b"marker\n")
    }));
    // The monitor gave its sealed copy of the init binary back after the start (several
    // MB of node memory per container otherwise).
    let id = env.inspect("host")?["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(
        env.stack
            .data_dir()
            .join("containers")
            .join(&id)
            .join("state.json"),
    )?)?;
    let monitor = state["monitor_pid"].as_i64().unwrap_or_default();
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{monitor}/fd"))?
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|p| p.display().to_string())
        .collect();
    assert!(!fds.iter().any(|f| f.contains("memfd:")), "{fds:?}");
    let output = env.berth(&["exec", "host", "sh", "-c", "echo out; echo err >&2; exit 4"])?;
    assert_eq!(output.status.code(), Some(4));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&output.stderr), "err\n");
    let output = env.berth(&[
        "exec",
        "-u",
        "www",
        "-w",
        "/tmp",
        "-e",
        "A=b",
        "host",
        "sh",
        "-c",
        "id -u; pwd; echo $A",
    ])?;
    assert_eq!(String::from_utf8_lossy(&output.stdout), "33\n/tmp\nb\n");
    let missing = env.berth(&["exec", "host", "no-such-command"])?;
    assert_eq!(missing.status.code(), Some(127));

    let stats = env.stdout(&["stats", "--no-stream", "host"])?;
    let row = stats
        .lines()
        .find(|l| l.contains("host"))
        .ok_or_else(|| anyhow::anyhow!("no row for host in:\n{stats}"))?;
    assert!(row.contains("/ 64.0MiB"), "{row}");
    assert!(row.trim_end().ends_with(" 1"), "one process (sleep): {row}");
    Ok(())
}

/// Once its container runs, the monitor re-executes itself to supervise from a fresh,
/// small address space: the same pid, the container still its child (exact exit codes),
/// nothing of the set-up left open, and output before and after the re-exec logged.
#[tokio::test]
async fn the_monitor_supervises_from_a_fresh_image() -> anyhow::Result<()> {
    need_containers(&[])?;
    let env = start().await?;
    let id = env.stdout(&[
        "run",
        "-d",
        "--name",
        "watched",
        IMAGE,
        "sh",
        "-c",
        "echo early; echo early-err >&2; while [ ! -e /tmp/go ]; do sleep 0.1; done; echo late; exit 7",
    ])?;
    let dir = env.stack.data_dir().join("containers").join(id.trim());
    // What the container wrote before the re-exec waited in its pipes.
    let logs = |out: &str, err: &str| {
        env.berth(&["logs", "watched"]).is_ok_and(|o| {
            o.status.success() && o.stdout == out.as_bytes() && o.stderr == err.as_bytes()
        })
    };
    assert!(eventually(Duration::from_secs(10), || logs(
        "early\n",
        "early-err\n"
    )));
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("state.json"))?)?;
    let monitor = state["monitor_pid"].as_i64().unwrap_or_default();
    let pid = state["pid"].as_i64().unwrap_or_default();
    let cmdline = std::fs::read(format!("/proc/{monitor}/cmdline"))?;
    let argv: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    assert_eq!(argv.get(1).copied(), Some(&b"supervise"[..]), "{argv:?}");
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{monitor}/comm"))?,
        "berth-monitor\n"
    );
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    assert!(
        status.contains(&format!("\nPPid:\t{monitor}\n")),
        "the container is not the monitor's child: {status}"
    );
    // The init's socket, its sealed copy and the runtime's files closed with the exec.
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{monitor}/fd"))?
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        !fds.iter()
            .any(|f| f.contains("memfd:") || f.starts_with("socket:")),
        "{fds:?}"
    );
    env.stdout(&["exec", "watched", "touch", "/tmp/go"])?;
    assert_eq!(env.stdout(&["wait", "watched"])?, "7\n");
    assert!(logs("early\nlate\n", "early-err\n"));
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("state.json"))?)?;
    assert_eq!(state["status"], "exited", "{state}");
    assert_eq!(state["exit_code"], 7, "{state}");
    Ok(())
}

#[tokio::test]
async fn on_failure_restarts_exactly_n_times_and_stop_is_remembered() -> anyhow::Result<()> {
    need_containers(&[])?;
    let env = start().await?;
    env.stdout(&[
        "run",
        "-d",
        "--restart",
        "on-failure:2",
        "--name",
        "flaky",
        IMAGE,
        "sh",
        "-c",
        "echo try; exit 1",
    ])?;
    // Backoff 100 ms then 200 ms: three runs well within the wait.
    assert!(eventually(Duration::from_secs(10), || {
        env.inspect("flaky")
            .is_ok_and(|c| c["restart_count"] == 2 && c["status"] == "exited")
    }));
    std::thread::sleep(Duration::from_secs(1));
    let flaky = env.inspect("flaky")?;
    assert_eq!(flaky["restart_count"], 2, "{flaky}");
    assert_eq!(flaky["exit_code"], 1, "{flaky}");
    assert_eq!(env.stdout(&["logs", "flaky"])?, "try\ntry\ntry\n");

    // `always` restarts a clean exit too, but not after an explicit stop.
    env.stdout(&[
        "run",
        "-d",
        "--restart",
        "always",
        "--name",
        "keeper",
        IMAGE,
        "sh",
        "-c",
        "sleep 0.2",
    ])?;
    assert!(eventually(Duration::from_secs(10), || {
        env.inspect("keeper")
            .is_ok_and(|c| c["restart_count"].as_u64().is_some_and(|n| n >= 2))
    }));
    env.stdout(&["stop", "-t", "1", "keeper"])?;
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(env.inspect("keeper")?["status"], "exited");

    let combined = env.berth(&["run", "--rm", "--restart", "always", IMAGE, "true"])?;
    assert_eq!(combined.status.code(), Some(125));
    Ok(())
}

#[tokio::test]
async fn volumes_labels_flags_events_and_rotated_logs() -> anyhow::Result<()> {
    need_containers(&[])?;
    let env = start().await?;
    let began = env.stdout(&["run", "--rm", IMAGE, "date", "+%s"])?;
    let began: i64 = began.trim().parse()?;

    // Named volumes: created explicitly or on first use, data kept across containers,
    // refused removal while a container (even a stopped one) uses them.
    assert_eq!(
        env.stdout(&["volume", "create", "--label", "k=v", "shared"])?,
        "shared\n"
    );
    let (code, _, err) = env.run_rm(
        &["-v", "shared:/data"],
        &["sh", "-c", "echo kept > /data/f"],
    )?;
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = env.run_rm(
        &["-v", "shared:/data:ro"],
        &["sh", "-c", "cat /data/f; touch /data/g"],
    )?;
    assert_eq!((code, out.as_str()), (1, "kept\n"));
    env.stdout(&["create", "--name", "holder", "-v", "auto:/v", IMAGE, "true"])?;
    let volumes: Vec<serde_json::Value> =
        serde_json::from_str(&env.stdout(&["volume", "ls", "--json"])?)?;
    let names: Vec<&str> = volumes.iter().filter_map(|v| v["name"].as_str()).collect();
    assert_eq!(names, ["auto", "shared"], "{volumes:?}");
    let listed = env.stdout(&["volume", "ls", "-q", "--filter", "label=k=v"])?;
    assert_eq!(listed, "shared\n");
    let auto: Vec<serde_json::Value> =
        serde_json::from_str(&env.stdout(&["volume", "inspect", "auto"])?)?;
    assert_eq!(
        auto[0]["containers"].as_array().map(Vec::len),
        Some(1),
        "{auto:?}"
    );
    let mountpoint = auto[0]["mountpoint"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(Path::new(&mountpoint).is_dir(), "{mountpoint}");
    let refused = env.berth(&["volume", "rm", "auto"])?;
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("in use by container"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let missing = env.berth(&["volume", "inspect", "nope"])?;
    assert_eq!(missing.status.code(), Some(1));
    let bad = env.berth(&["run", "--rm", "-v", "bad/name:/x", IMAGE, "true"])?;
    assert_eq!(
        bad.status.code(),
        Some(125),
        "bad -v is a usage error (125, as Docker)"
    );
    env.stdout(&["rm", "holder"])?;
    env.stdout(&["volume", "rm", "auto", "shared"])?;
    assert!(!Path::new(&mountpoint).exists());
    assert!(env.stdout(&["volume", "ls", "-q"])?.trim().is_empty());
    // An anonymous volume lives as long as its --rm container.
    let (code, out, _) = env.run_rm(
        &["-v", "/scratch"],
        &["sh", "-c", "grep -c ' /scratch ' /proc/mounts"],
    )?;
    assert_eq!((code, out.as_str()), (0, "1\n"));
    assert!(env.stdout(&["volume", "ls", "-q"])?.trim().is_empty());

    // --privileged: every capability, no seccomp, mounts allowed; not so without it.
    let (code, out, err) = env.run_rm(
        &["--privileged"],
        &[
            "sh",
            "-c",
            "grep -E '^(CapEff|Seccomp):' /proc/self/status; mount -t tmpfs t /tmp && echo mounted",
        ],
    )?;
    assert_eq!(code, 0, "{err}");
    // Every capability this host allows (its bounding set; a sandbox may lack some).
    let bounding = std::fs::read_to_string("/proc/self/status")?
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:").map(|v| v.trim().to_string()))
        .unwrap_or_default();
    assert_eq!(out, format!("CapEff:\t{bounding}\nSeccomp:\t0\nmounted\n"));
    let (code, out, _) = env.run_rm(
        &[],
        &[
            "sh",
            "-c",
            "grep Seccomp: /proc/self/status; mount -t tmpfs t /tmp 2>/dev/null || echo refused",
        ],
    )?;
    assert_eq!((code, out.as_str()), (0, "Seccomp:\t2\nrefused\n"));

    // --entrypoint, --hostname, labels and ps filters.
    let (code, out, _) = env.run_rm(
        &["--entrypoint", "/bin/hostname", "--hostname", "named-box"],
        &[],
    )?;
    assert_eq!((code, out.as_str()), (0, "named-box\n"));
    env.stdout(&[
        "run",
        "-d",
        "--name",
        "web-a",
        "--label",
        "tier=front",
        "--label",
        "team",
        IMAGE,
        "sleep",
        "600",
    ])?;
    env.stdout(&[
        "run",
        "-d",
        "--name",
        "db-a",
        "--label",
        "tier=back",
        IMAGE,
        "sh",
        "-c",
        "exit 4",
    ])?;
    assert_eq!(env.stdout(&["wait", "db-a"])?, "4\n");
    let names = |args: &[&str]| -> anyhow::Result<Vec<String>> {
        let mut all = vec!["ps", "--json"];
        all.extend_from_slice(args);
        let rows: Vec<serde_json::Value> = serde_json::from_str(&env.stdout(&all)?)?;
        let mut out: Vec<String> = rows
            .iter()
            .filter_map(|r| r["name"].as_str().map(str::to_string))
            .collect();
        out.sort();
        Ok(out)
    };
    assert_eq!(names(&["--filter", "label=tier=front"])?, ["web-a"]);
    assert_eq!(names(&["-a", "--filter", "label=tier"])?, ["db-a", "web-a"]);
    assert_eq!(
        names(&["--filter", "status=exited", "--filter", "label=tier"])?,
        ["db-a"]
    );
    assert_eq!(
        names(&["-a", "--filter", "name=web", "--filter", "label=team"])?,
        ["web-a"]
    );
    let bad = env.berth(&["ps", "--filter", "status=sleepy"])?;
    assert_eq!(bad.status.code(), Some(125));

    // --stop-signal and --stop-timeout are what `stop` uses.
    env.stdout(&[
        "run",
        "-d",
        "--name",
        "usr1",
        "--stop-signal",
        "USR1",
        IMAGE,
        "sh",
        "-c",
        "trap 'exit 21' USR1; while true; do sleep 0.1; done",
    ])?;
    env.stdout(&[
        "run",
        "-d",
        "--name",
        "slow",
        "--stop-timeout",
        "1",
        IMAGE,
        "sleep",
        "600",
    ])?;
    std::thread::sleep(Duration::from_millis(500));
    env.stdout(&["stop", "usr1"])?;
    assert_eq!(env.inspect("usr1")?["exit_code"], 21);
    let started = Instant::now();
    env.stdout(&["stop", "slow"])?;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(8),
        "{took:?}"
    );
    assert_eq!(env.inspect("slow")?["exit_code"], 137);

    // exec events.
    env.stdout(&["exec", "web-a", "sh", "-c", "exit 6"]).err();

    // Size-based rotation: the CRI files stay small and the newest lines remain.
    env.stdout(&[
        "run",
        "-d",
        "--name",
        "chatty",
        "--log-opt",
        "max-size=2k",
        "--log-opt",
        "max-file=2",
        IMAGE,
        "sh",
        "-c",
        "i=0; while [ $i -lt 300 ]; do echo line $i; i=$((i+1)); done",
    ])?;
    env.stdout(&["wait", "chatty"])?;
    let chatty = env.inspect("chatty")?;
    let log_path = PathBuf::from(chatty["log_path"].as_str().unwrap_or_default());
    let log_dir = log_path
        .parent()
        .ok_or_else(|| anyhow::anyhow!("log path {log_path:?}"))?;
    let files: Vec<PathBuf> = std::fs::read_dir(log_dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("log"))
        })
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");
    for file in &files {
        let size = std::fs::metadata(file)?.len();
        assert!(size <= 2048, "{file:?} is {size} bytes");
    }
    let logs = env.stdout(&["logs", "chatty"])?;
    assert!(logs.ends_with("line 298\nline 299\n"), "{logs}");
    assert!(!logs.starts_with("line 0\n"), "rotated away: {logs}");
    let kept: Vec<&str> = logs.lines().collect();
    let first: usize = kept[0].trim_start_matches("line ").parse()?;
    let expected: Vec<String> = (first..300).map(|i| format!("line {i}")).collect();
    assert_eq!(kept, expected, "no gaps in what is kept");
    assert_eq!(
        env.stdout(&["logs", "--tail", "2", "chatty"])?,
        "line 298\nline 299\n"
    );
    // A long line is cut into partial records on disk and joined again on output.
    env.stdout(&[
        "run",
        "-d",
        "--name",
        "long",
        IMAGE,
        "sh",
        "-c",
        "head -c 40000 /dev/zero | tr '\\0' y; echo",
    ])?;
    env.stdout(&["wait", "long"])?;
    let raw = std::fs::read_to_string(
        env.inspect("long")?["log_path"]
            .as_str()
            .unwrap_or_default(),
    )?;
    let tags: Vec<&str> = raw.lines().filter_map(|l| l.split(' ').nth(2)).collect();
    assert_eq!(tags, ["P", "P", "F"], "{} records", tags.len());
    assert_eq!(
        env.stdout(&["logs", "long"])?,
        format!("{}\n", "y".repeat(40_000))
    );

    // --since, -t.
    env.stdout(&[
        "run",
        "-d",
        "--name",
        "twice",
        IMAGE,
        "sh",
        "-c",
        "echo first; sleep 1.5; echo second",
    ])?;
    env.stdout(&["wait", "twice"])?;
    let stamped = env.stdout(&["logs", "-t", "twice"])?;
    let second_at = stamped
        .lines()
        .find(|l| l.ends_with(" second"))
        .and_then(|l| l.split(' ').next())
        .ok_or_else(|| anyhow::anyhow!("no stamped second line in {stamped}"))?
        .to_string();
    assert_eq!(
        env.stdout(&["logs", "--since", &second_at, "twice"])?,
        "second\n"
    );
    assert_eq!(
        env.stdout(&["logs", "--until", &second_at, "twice"])?,
        "first\nsecond\n"
    );
    assert_eq!(
        env.stdout(&["logs", "--since", "1h", "twice"])?,
        "first\nsecond\n"
    );

    // `berth events` replays the stream with Docker's filters.
    let since = began.to_string();
    let until = format!("{}", began + 3600);
    let out = env.stdout(&[
        "events",
        "--since",
        &since,
        "--until",
        "0s",
        "--filter",
        "type=container",
        "--filter",
        "event=die",
        "--filter",
        "container=db-a",
    ])?;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert!(
        lines[0].contains(" container die ")
            && lines[0].contains("exit_code=4")
            && lines[0].contains("name=db-a"),
        "{out}"
    );
    let out = env.stdout(&[
        "events",
        "--since",
        &since,
        "--until",
        "0s",
        "--filter",
        "event=exec_start",
        "--filter",
        "event=exec_die",
        "--json",
    ])?;
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let actions: Vec<&str> = events.iter().filter_map(|e| e["action"].as_str()).collect();
    assert_eq!(actions, ["exec_start", "exec_die"], "{out}");
    assert_eq!(events[1]["exit_code"], 6);
    assert_eq!(events[1]["command"], "sh -c exit 6");
    let _ = until;
    let bad = env.berth(&["events", "--filter", "type=volume"])?;
    assert_eq!(bad.status.code(), Some(125));
    Ok(())
}

#[tokio::test]
async fn a_full_log_disk_drops_lines_once_reported_and_logging_resumes() -> anyhow::Result<()> {
    need_containers(&[])?;
    // The logs on a small tmpfs of this test's own, the rest of the node on the normal disk.
    let logs = tempfile::Builder::new()
        .prefix("berth-logdisk-")
        .tempdir()?;
    nix::mount::mount(
        Some("tmpfs"),
        logs.path(),
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
        Some("size=256k"),
    )?;
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _unmount = Unmount(logs.path().to_path_buf());
    let config = tempfile::NamedTempFile::new()?;
    std::fs::write(
        config.path(),
        format!(
            "log_dir = {:?}\n",
            logs.path().join("c").display().to_string()
        ),
    )?;
    let config_path = config.path().display().to_string();
    let stack = Stack::start_with_env(&SERVICES, NODE, &[("BERTH_CONFIG", &config_path)]).await?;
    let env = CliEnv::import(stack, IMAGE, &[], busybox_tar)?;
    env.stdout(&[
        "run",
        "-d",
        "--name",
        "writer",
        IMAGE,
        "sh",
        "-c",
        "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.05; done",
    ])?;
    assert!(eventually(Duration::from_secs(10), || {
        env.stdout(&["logs", "writer"])
            .is_ok_and(|o| o.contains("line 2\n"))
    }));
    // Fill the disk.
    let filler = logs.path().join("filler");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&filler)?;
        let block = vec![0u8; 4096];
        while file.write_all(&block).is_ok() {}
        let _ = file.sync_all();
    }
    assert!(
        eventually(Duration::from_secs(10), || {
            env.inspect("writer")
                .is_ok_and(|c| c["log_error"].is_string())
        }),
        "the full disk is reported in inspect"
    );
    std::thread::sleep(Duration::from_secs(1));
    let during = env.inspect("writer")?;
    assert_eq!(
        during["status"], "running",
        "the container keeps running: {during}"
    );
    // Space returns: logging resumes, the report goes away.
    std::fs::remove_file(&filler)?;
    let before = env.stdout(&["logs", "writer"])?.lines().count();
    assert!(
        eventually(Duration::from_secs(10), || {
            env.stdout(&["logs", "writer"])
                .is_ok_and(|o| o.lines().count() > before + 3)
                && env
                    .inspect("writer")
                    .is_ok_and(|c| c["log_error"].is_null())
        }),
        "logging resumes"
    );
    let logs_now = env.stdout(&["logs", "writer"])?;
    assert!(
        logs_now.lines().all(|l| l.starts_with("line ")),
        "only whole lines: {logs_now}"
    );
    let data_dir = env.stack.data_dir();
    let id = env.inspect("writer")?["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let monitor_log =
        std::fs::read_to_string(data_dir.join("containers").join(&id).join("monitor.log"))?;
    assert_eq!(
        monitor_log.matches("failed").count(),
        1,
        "reported once: {monitor_log}"
    );
    assert_eq!(monitor_log.matches("resumed").count(), 1, "{monitor_log}");
    env.stdout(&["rm", "-f", "writer"])?;
    assert!(
        !logs.path().join("c").join(&id).exists(),
        "rm takes the log dir too"
    );
    Ok(())
}

/// Docker's exit codes for the CLI's own parsing: a bad flag is a berth error (125, not
/// clap's 2, which a script would take for the container's code); `--help` is success.
/// Parsing fails before the bus is dialled, so no stack is needed.
#[test]
fn bad_flags_exit_125_and_help_exits_0() -> anyhow::Result<()> {
    let berth = bin_path("berth")?;
    let unreachable = "nats://127.0.0.1:9";
    let bad = Command::new(&berth)
        .args([
            "--nats-url",
            unreachable,
            "run",
            "--no-such-flag",
            "busybox",
            "true",
        ])
        .output()?;
    anyhow::ensure!(
        bad.status.code() == Some(125),
        "bad flag exited {} (want 125): {}",
        bad.status,
        String::from_utf8_lossy(&bad.stderr)
    );
    let stderr = String::from_utf8_lossy(&bad.stderr);
    anyhow::ensure!(
        stderr.contains("--no-such-flag"),
        "clap's message names the flag on stderr: {stderr}"
    );
    for args in [&["--help"][..], &["run", "--help"], &["--version"]] {
        let out = Command::new(&berth)
            .args(["--nats-url", unreachable])
            .args(args)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "berth {args:?} exited {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        anyhow::ensure!(
            !out.stdout.is_empty(),
            "berth {args:?} printed nothing on stdout"
        );
    }
    Ok(())
}
