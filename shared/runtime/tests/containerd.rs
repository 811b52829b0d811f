//! containerd end to end: the test starts containerd (Debian's package) with its own root,
//! state, sockets and no CRI plugin, imports a busybox OCI image built with umoci, and runs
//! containers with `ctr run --runc-binary <runtime>` through the io.containerd.runc.v2
//! shim, with runc and with berth-runtime, comparing what ctr reports. Needs root,
//! containerd, ctr, containerd-shim-runc-v2, umoci, runc and /bin/busybox.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

use common::{text, Bundle};

fn need_root(test: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "{test} needs root (containerd, namespaces, cgroups)"
    );
}

fn need_tool(tool: &str) {
    assert!(
        Command::new("sh")
            .args(["-c", &format!("command -v {tool} >/dev/null")])
            .status()
            .is_ok_and(|s| s.success()),
        "{tool} is missing (setup.sh installs it)"
    );
}

const IMAGE: &str = "localhost/berth-bb:latest";
const NS: &str = "berth-test";

/// A containerd of our own, killed (with what it started) when dropped.
struct Containerd {
    dir: tempfile::TempDir,
    daemon: Child,
}

/// Busybox rootfs (with the probe) as an OCI image archive, built with umoci.
fn oci_archive(dir: &Path) -> PathBuf {
    let b = Bundle::new(&["true"], |_| {});
    let layout = dir.join("oci");
    let unpacked = dir.join("unpacked");
    let run = |args: &[&str]| {
        let o = Command::new("umoci")
            .args(args)
            .output()
            .expect("run umoci");
        assert!(o.status.success(), "umoci {args:?}: {}", text(&o.stderr));
    };
    let image = format!("{}:latest", layout.display());
    run(&["init", "--layout", layout.to_str().expect("utf8")]);
    run(&["new", "--image", &image]);
    run(&[
        "unpack",
        "--image",
        &image,
        unpacked.to_str().expect("utf8"),
    ]);
    let st = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", b.path().join("rootfs").display()))
        .arg(unpacked.join("rootfs"))
        .status()
        .expect("cp rootfs");
    assert!(st.success(), "copy the busybox rootfs");
    run(&[
        "repack",
        "--image",
        &image,
        unpacked.to_str().expect("utf8"),
    ]);
    run(&["config", "--image", &image, "--config.cmd", "sh"]);
    let tar = dir.join("image.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .expect("tar");
    assert!(st.success(), "tar the OCI layout");
    // umoci leaves read-only dirs in the unpacked tree; the image no longer needs it.
    let _ = std::fs::remove_dir_all(&unpacked);
    tar
}

impl Containerd {
    fn start() -> Containerd {
        for t in [
            "containerd",
            "ctr",
            "containerd-shim-runc-v2",
            "umoci",
            "runc",
        ] {
            need_tool(t);
        }
        let dir = tempfile::Builder::new()
            .prefix("berth-ctrd")
            .tempdir()
            .expect("containerd dir");
        let d = dir.path();
        let config = d.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{0}/c.sock\"\n[ttrpc]\n  address = \"{0}/c-ttrpc.sock\"\n\
                 [debug]\n  address = \"\"\n[metrics]\n  address = \"\"\n",
                d.display()
            ),
        )
        .expect("config.toml");
        let log = std::fs::File::create(d.join("containerd.log")).expect("log");
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(log.try_clone().expect("clone"))
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let c = Containerd { dir, daemon };
        let mut up = false;
        for _ in 0..500 {
            if c.ctr(&["version"]).status.success() {
                up = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(
            up,
            "containerd did not come up: {}",
            std::fs::read_to_string(c.dir.path().join("containerd.log")).unwrap_or_default()
        );
        let tar = oci_archive(c.dir.path());
        let o = c.ctr(&[
            "image",
            "import",
            "--snapshotter",
            "native",
            "--index-name",
            IMAGE,
            tar.to_str().expect("utf8"),
        ]);
        assert!(o.status.success(), "ctr image import: {}", text(&o.stderr));
        c
    }

    fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("-a")
            .arg(self.dir.path().join("c.sock"))
            .args(["-n", NS])
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run ctr")
    }

    /// `ctr run --rm` of a busybox command with `runtime` as the runc binary.
    fn run(&self, runtime: &str, id: &str, opts: &[&str], cmd: &str) -> Output {
        let mut a = vec![
            "run",
            "--rm",
            "--snapshotter",
            "native",
            "--runc-binary",
            runtime,
        ];
        a.extend_from_slice(opts);
        a.extend_from_slice(&[IMAGE, id, "sh", "-c", cmd]);
        self.ctr(&a)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Ok(ids) = String::from_utf8(self.ctr(&["task", "ls", "-q"]).stdout) {
            for id in ids.lines() {
                let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", id]);
                let _ = self.ctr(&["task", "delete", "--force", id]);
            }
        }
        if let Ok(ids) = String::from_utf8(self.ctr(&["container", "ls", "-q"]).stdout) {
            for id in ids.lines() {
                let _ = self.ctr(&["container", "rm", id]);
            }
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

fn runtimes() -> [(&'static str, String); 2] {
    [
        ("runc", "runc".to_string()),
        (
            "berth-runtime",
            common::runtime().to_str().expect("utf8").to_string(),
        ),
    ]
}

#[test]
fn containerd_run_exec_kill_delete_match_runc() {
    need_root("containerd_run_exec_kill_delete_match_runc");
    let c = Containerd::start();
    let mut seen = Vec::new();
    for (name, rt) in runtimes() {
        let id = format!("run-{name}");
        let o = c.run(&rt, &id, &[], "echo hi; exit 3");
        let run = (o.status.code(), text(&o.stdout));

        let id = format!("life-{name}");
        let o = c.ctr(&[
            "run",
            "-d",
            "--snapshotter",
            "native",
            "--runc-binary",
            &rt,
            IMAGE,
            &id,
            "sh",
            "-c",
            "trap 'exit 7' TERM; touch /tmp/ready; while true; do sleep 0.05; done",
        ]);
        assert!(o.status.success(), "{name}: run -d: {}", text(&o.stderr));
        for _ in 0..400 {
            let o = c.ctr(&[
                "task",
                "exec",
                "--exec-id",
                "ready",
                &id,
                "test",
                "-e",
                "/tmp/ready",
            ]);
            if o.status.success() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let o = c.ctr(&[
            "task",
            "exec",
            "--exec-id",
            "e1",
            &id,
            "sh",
            "-c",
            "echo in-exec; exit 4",
        ]);
        let exec = (o.status.code(), text(&o.stdout));
        let o = c.ctr(&["task", "ps", &id]);
        assert!(o.status.success(), "{name}: task ps: {}", text(&o.stderr));
        let o = c.ctr(&["task", "kill", "-s", "SIGTERM", &id]);
        assert!(o.status.success(), "{name}: kill: {}", text(&o.stderr));
        let mut status = String::new();
        for _ in 0..400 {
            status = text(&c.ctr(&["task", "ls"]).stdout);
            if status
                .lines()
                .any(|l| l.starts_with(&id) && l.contains("STOPPED"))
            {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(status.contains("STOPPED"), "{name}: {status}");
        let o = c.ctr(&["task", "delete", &id]);
        assert!(
            o.status.success(),
            "{name}: task delete: {}",
            text(&o.stderr)
        );
        let deleted = text(&o.stderr).contains("exit code 7");
        let o = c.ctr(&["container", "rm", &id]);
        assert!(
            o.status.success(),
            "{name}: container rm: {}",
            text(&o.stderr)
        );
        seen.push((name, run, exec, deleted));
    }
    assert_eq!(seen[0].1, (Some(3), "hi\n".to_string()), "runc run");
    assert_eq!(seen[0].2, (Some(4), "in-exec\n".to_string()), "runc exec");
    assert!(seen[0].3, "runc: exit code 7 after SIGTERM");
    assert_eq!(
        (&seen[1].1, &seen[1].2, seen[1].3),
        (&seen[0].1, &seen[0].2, seen[0].3),
        "berth-runtime vs runc"
    );
}

#[test]
fn containerd_memory_limit_and_oom_match_runc() {
    need_root("containerd_memory_limit_and_oom_match_runc");
    let c = Containerd::start();
    let mut seen = Vec::new();
    for (name, rt) in runtimes() {
        let id = format!("mem-{name}");
        let o = c.ctr(&[
            "run",
            "-d",
            "--snapshotter",
            "native",
            "--runc-binary",
            &rt,
            "--memory-limit",
            "67108864",
            IMAGE,
            &id,
            "sleep",
            "60",
        ]);
        assert!(o.status.success(), "{name}: run -d: {}", text(&o.stderr));
        // ctr's cgroup is /<namespace>/<id>; ctr's spec mounts no cgroupfs inside.
        let limit = if berth_runtime::cgroups::is_unified() {
            format!("/sys/fs/cgroup/{NS}/{id}/memory.max")
        } else {
            format!("/sys/fs/cgroup/memory/{NS}/{id}/memory.limit_in_bytes")
        };
        let limit =
            std::fs::read_to_string(&limit).unwrap_or_else(|e| panic!("{name}: read {limit}: {e}"));
        let _ = c.ctr(&["task", "kill", "-s", "SIGKILL", &id]);
        for _ in 0..400 {
            if c.ctr(&["task", "delete", &id]).status.success() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = c.ctr(&["container", "rm", &id]);
        let o = c.run(
            &rt,
            &format!("oom-{name}"),
            &["--memory-limit", "33554432"],
            "x=a; while true; do x=$x$x; done",
        );
        seen.push((limit.trim().to_string(), o.status.code()));
    }
    assert_eq!(seen[0], ("67108864".to_string(), Some(137)), "runc");
    assert_eq!(seen[1], seen[0], "berth-runtime vs runc");
}

#[test]
fn containerd_escape_probes_fail_as_under_runc() {
    need_root("containerd_escape_probes_fail_as_under_runc");
    let c = Containerd::start();
    let mut escaped = Vec::new();
    for (name, rt) in runtimes() {
        let host_pid = format!("HOST_PID={}", std::process::id());
        let o = c.run(
            &rt,
            &format!("probe-{name}"),
            &["--env", &host_pid],
            "/bin/probe",
        );
        let r = text(&o.stdout);
        println!("== {name}\n{r}");
        assert!(
            r.contains("mount: blocked"),
            "{name}: probe did not run: {r}\n{}",
            text(&o.stderr)
        );
        escaped.push(
            r.lines()
                .filter_map(|l| l.split_once(": ESCAPED").map(|(n, _)| n.to_string()))
                .collect::<Vec<_>>(),
        );
    }
    let extra: Vec<&String> = escaped[1]
        .iter()
        .filter(|n| !escaped[0].contains(n))
        .collect();
    assert!(
        extra.is_empty(),
        "escapes under berth-runtime but not runc: {extra:?}"
    );
}
