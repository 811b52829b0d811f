//! runc parity harness: the same busybox bundle (config.json written by `runc spec`) run
//! under runc and under berth-runtime, each with its own `--root`, and the observable
//! outcome of both compared: exit code, stdout, and cgroup files read from outside while
//! the container exists.
//!
//! A scenario runc itself cannot run on this host is reported as skipped, naming runc's
//! error; berth-runtime is still run (so a crash or hang still fails the test) and its
//! outcome printed.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The two runtimes compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rt {
    Runc,
    Berth,
}

impl Rt {
    pub fn name(self) -> &'static str {
        match self {
            Rt::Runc => "runc",
            Rt::Berth => "berth-runtime",
        }
    }

    pub fn bin(self) -> PathBuf {
        match self {
            Rt::Runc => runc_bin(),
            Rt::Berth => super::runtime(),
        }
    }
}

/// runc on PATH (setup.sh installs it); a parity test without it fails naming it.
pub fn runc_bin() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join("runc"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("parity tests need runc on PATH (apt install runc, or run setup.sh)")
        })
}

/// A bundle as a runc user makes it: busybox rootfs plus `runc spec`'s config.json, with
/// `terminal` off (the tests have no tty), the given args, then the caller's edit.
pub struct ParityBundle {
    pub name: String,
    dir: tempfile::TempDir,
}

impl ParityBundle {
    pub fn new(name: &str, args: &[&str], edit: impl FnOnce(&mut Value)) -> ParityBundle {
        super::require_root(name);
        let dir = tempfile::Builder::new()
            .prefix("berth-parity")
            .tempdir()
            .expect("bundle dir");
        let rootfs = dir.path().join("rootfs");
        for d in ["bin", "tmp", "proc", "sys", "dev", "etc"] {
            std::fs::create_dir_all(rootfs.join(d)).expect("mkdir rootfs");
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
            .expect("copy /bin/busybox (apt install busybox-static)");
        let list = Command::new("/bin/busybox")
            .arg("--list")
            .output()
            .expect("busybox --list");
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            if applet != "busybox" {
                std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))
                    .expect("busybox applet link");
            }
        }
        let spec = Command::new(runc_bin())
            .arg("spec")
            .current_dir(dir.path())
            .output()
            .expect("run runc spec");
        assert!(
            spec.status.success(),
            "runc spec: {}",
            String::from_utf8_lossy(&spec.stderr)
        );
        let b = ParityBundle {
            name: name.to_string(),
            dir,
        };
        b.edit(|v| {
            v["process"]["terminal"] = Value::Bool(false);
            v["process"]["args"] = args.iter().map(|a| Value::from(*a)).collect();
            edit(v);
        });
        b
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn edit(&self, f: impl FnOnce(&mut Value)) {
        let p = self.path().join("config.json");
        let mut v: Value =
            serde_json::from_slice(&std::fs::read(&p).expect("read config")).expect("parse config");
        f(&mut v);
        std::fs::write(&p, serde_json::to_vec_pretty(&v).expect("encode")).expect("write config");
    }

    /// A container id unique to this bundle, runtime and test process.
    fn id(&self, rt: Rt) -> String {
        format!(
            "par-{}-{}-{}",
            self.name,
            match rt {
                Rt::Runc => "runc",
                Rt::Berth => "berth",
            },
            std::process::id()
        )
    }

    /// `<rt> --root <own> run <id>`: exit code, stdout, stderr.
    pub fn run(&self, rt: Rt) -> Observed {
        let root = state_root();
        let (code, stdout, stderr) = cmd(rt, root.path(), self.path(), &["run", &self.id(rt)]);
        // run leaves nothing on success; after a failed run a half-made container may remain.
        let _ = cmd(
            rt,
            root.path(),
            self.path(),
            &["delete", "--force", &self.id(rt)],
        );
        Observed {
            rt,
            code,
            stdout,
            stderr,
            outside: BTreeMap::new(),
        }
    }

    /// `<rt> create <id>`: the container's stdout/stderr go to files readable once it exits.
    pub fn create(&self, rt: Rt) -> Created<'_> {
        let root = state_root();
        let id = self.id(rt);
        let out = tempfile::tempfile().expect("stdout file");
        let err = tempfile::tempfile().expect("stderr file");
        let status = Command::new(rt.bin())
            .arg("--root")
            .arg(root.path())
            .args(["create", "--bundle"])
            .arg(self.path())
            .arg(&id)
            .current_dir(self.path())
            .stdin(Stdio::null())
            // The container inherits these (runc's pass-through stdio without a terminal).
            .stdout(out.try_clone().expect("clone"))
            .stderr(err.try_clone().expect("clone"))
            .status()
            .unwrap_or_else(|e| panic!("spawn {} create: {e}", rt.name()));
        Created {
            bundle: self,
            rt,
            id,
            root,
            out,
            err,
            code: status.code(),
        }
    }

    /// Observe this bundle under `rt`: with no `outside` files, `run`; otherwise create,
    /// read each (controller, file) from the container's cgroup from outside, start, wait
    /// for it to stop, and take its stdout (`code` is then start's exit code).
    pub fn observe(&self, rt: Rt, outside: &[(&str, &str)]) -> Observed {
        if outside.is_empty() {
            return self.run(rt);
        }
        let c = self.create(rt);
        if c.code != Some(0) {
            let stderr = c.stderr();
            return Observed {
                rt,
                code: c.code,
                stdout: c.stdout(),
                stderr,
                outside: BTreeMap::new(),
            };
        }
        let mut values = BTreeMap::new();
        for (ctrl, file) in outside {
            let v = c
                .cgroup_file(ctrl, file)
                .unwrap_or_else(|e| format!("<unreadable: {e}>"));
            values.insert(format!("{ctrl}/{file}"), v);
        }
        let (code, _, start_err) = c.ctl(&["start", &c.id]);
        if code == Some(0) {
            c.wait_stopped();
        }
        Observed {
            rt,
            code,
            stdout: c.stdout(),
            stderr: format!("{start_err}{}", c.stderr()),
            outside: values,
        }
    }
}

/// What one runtime did with a bundle.
#[derive(Debug, Clone)]
pub struct Observed {
    pub rt: Rt,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// "controller/file" -> trimmed contents, read from outside.
    pub outside: BTreeMap<String, String>,
}

impl Observed {
    /// Did the runtime itself fail (not the container's process)? runc logs its own
    /// failures as `level=error msg="runc <cmd> failed: ..."`.
    pub fn runc_error(&self) -> Option<String> {
        self.stderr
            .lines()
            .find(|l| l.contains("level=error"))
            .map(str::to_string)
    }
}

/// Both runtimes' outcome for one scenario.
pub struct Parity {
    pub case: String,
    pub runc: Observed,
    pub berth: Observed,
}

impl Parity {
    /// Assert the same exit code, stdout and outside cgroup values. When runc itself failed
    /// on this host, print SKIP naming runc's error (plus what berth-runtime did) and return
    /// false; the caller may then still check berth-runtime's outcome on its own.
    pub fn assert_same(&self) -> bool {
        if let Some(why) = self.runc.runc_error() {
            eprintln!(
                "SKIP parity {}: runc fails on this host: {why}\n  berth-runtime: exit {:?}, stdout {:?}, stderr {:?}",
                self.case, self.berth.code, self.berth.stdout, self.berth.stderr
            );
            return false;
        }
        let ctx = format!(
            "parity {}\n runc: {:?}\n berth-runtime: {:?}",
            self.case, self.runc, self.berth
        );
        assert_eq!(self.berth.code, self.runc.code, "exit code: {ctx}");
        assert_eq!(self.berth.stdout, self.runc.stdout, "stdout: {ctx}");
        assert_eq!(
            self.berth.outside, self.runc.outside,
            "cgroup files read from outside: {ctx}"
        );
        true
    }

    /// Both runtimes refuse the bundle (non-zero exit); berth-runtime's stderr names
    /// `setting` as the reason, as runc's does.
    pub fn assert_both_refuse(&self, setting: &str) {
        let ctx = format!(
            "parity {}\n runc: {:?}\n berth-runtime: {:?}",
            self.case, self.runc, self.berth
        );
        assert!(
            self.runc.code.is_some_and(|c| c != 0),
            "runc accepted it: {ctx}"
        );
        assert!(
            self.berth.code.is_some_and(|c| c != 0),
            "berth-runtime accepted it: {ctx}"
        );
        assert!(
            self.berth.stderr.contains(setting),
            "berth-runtime's error does not name {setting:?}: {ctx}"
        );
    }
}

/// Run one scenario under runc, then berth-runtime (always both), on the same bundle.
pub fn parity(
    case: &str,
    args: &[&str],
    edit: impl Fn(&mut Value),
    outside: &[(&str, &str)],
) -> Parity {
    let b = ParityBundle::new(case, args, &edit);
    let runc = b.observe(Rt::Runc, outside);
    let berth = b.observe(Rt::Berth, outside);
    Parity {
        case: case.to_string(),
        runc,
        berth,
    }
}

/// A created container, deleted (forced) on drop.
pub struct Created<'a> {
    pub bundle: &'a ParityBundle,
    pub rt: Rt,
    pub id: String,
    root: tempfile::TempDir,
    out: std::fs::File,
    err: std::fs::File,
    /// create's exit code.
    pub code: Option<i32>,
}

impl Created<'_> {
    /// `<rt> --root <own> <args>`: exit code, stdout, stderr.
    pub fn ctl(&self, args: &[&str]) -> (Option<i32>, String, String) {
        cmd(self.rt, self.root.path(), self.bundle.path(), args)
    }

    pub fn state(&self) -> Value {
        let (code, out, err) = self.ctl(&["state", &self.id]);
        assert_eq!(code, Some(0), "{} state {}: {err}", self.rt.name(), self.id);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("{} state {}: {e}: {out}", self.rt.name(), self.id))
    }

    /// The container's init pid (on the host).
    pub fn pid(&self) -> i32 {
        let s = self.state();
        s["pid"]
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
            .unwrap_or_else(|| panic!("{} state has no pid: {s}", self.rt.name()))
    }

    /// The container's cgroup directory for `controller` ("" or "unified": the v2 one),
    /// found from outside as the host sees it.
    pub fn cgroup_dir(&self, controller: &str) -> Result<PathBuf, String> {
        let pid = self.pid();
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .map_err(|e| format!("/proc/{pid}/cgroup: {e}"))?;
        let mi = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
        cgroup_dir_from(&cg, &mi, controller)
    }

    /// One file of the container's cgroup, trimmed.
    pub fn cgroup_file(&self, controller: &str, file: &str) -> Result<String, String> {
        let p = self.cgroup_dir(controller)?.join(file);
        std::fs::read_to_string(&p)
            .map(|s| s.trim().to_string())
            .map_err(|e| format!("{}: {e}", p.display()))
    }

    /// Poll `state` until the container has stopped. A container that never stops fails
    /// the test here rather than hanging it.
    pub fn wait_stopped(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = self.state();
            if s["status"] == "stopped" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} container {} still {} after 60 s",
                self.rt.name(),
                self.id,
                s["status"]
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What the container (and create) wrote to stdout so far.
    pub fn stdout(&self) -> String {
        read_all(&self.out)
    }

    pub fn stderr(&self) -> String {
        read_all(&self.err)
    }
}

impl Drop for Created<'_> {
    fn drop(&mut self) {
        let _ = self.ctl(&["delete", "--force", &self.id]);
    }
}

/// The host path of a process's cgroup for `controller`, from its /proc/PID/cgroup and the
/// reader's mountinfo ("" or "unified" selects the v2 entry and the cgroup2 mount).
pub fn cgroup_dir_from(
    proc_cgroup: &str,
    mountinfo: &str,
    controller: &str,
) -> Result<PathBuf, String> {
    let v2 = controller.is_empty() || controller == "unified";
    let rel = proc_cgroup
        .lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (id, ctrls, path) = (f.next()?, f.next()?, f.next()?);
            let hit = if v2 {
                id == "0" && ctrls.is_empty()
            } else {
                ctrls.split(',').any(|c| c == controller)
            };
            hit.then_some(path)
        })
        .ok_or_else(|| format!("no {controller:?} line in /proc/PID/cgroup"))?;
    for l in mountinfo.lines() {
        let (pre, post) = match l.split_once(" - ") {
            Some(x) => x,
            None => continue,
        };
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        if pre.len() < 5 || post.len() < 3 {
            continue;
        }
        let (root, mnt, fstype, opts) = (pre[3], pre[4], post[0], post[2]);
        let hit = if v2 {
            fstype == "cgroup2"
        } else {
            fstype == "cgroup" && opts.split(',').any(|o| o == controller)
        };
        if !hit {
            continue;
        }
        let inner = Path::new(rel)
            .strip_prefix(root)
            .map_err(|_| format!("cgroup {rel} is outside the mount of {root} at {mnt}"))?;
        return Ok(Path::new(mnt).join(inner));
    }
    Err(format!("no cgroup mount for {controller:?}"))
}

fn state_root() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("berth-parity-state")
        .tempdir()
        .expect("state root")
}

/// Run a runtime command with output through files (a created container keeps the
/// caller's stdio open, so pipes would wait for the container).
fn cmd(rt: Rt, root: &Path, bundle: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = tempfile::tempfile().expect("stdout file");
    let err = tempfile::tempfile().expect("stderr file");
    let status = Command::new(rt.bin())
        .arg("--root")
        .arg(root)
        .args(args)
        .current_dir(bundle)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("clone"))
        .stderr(err.try_clone().expect("clone"))
        .status()
        .unwrap_or_else(|e| panic!("spawn {} {args:?}: {e}", rt.name()));
    (status.code(), read_all(&out), read_all(&err))
}

fn read_all(f: &std::fs::File) -> String {
    let mut f = f.try_clone().expect("clone");
    let mut v = Vec::new();
    f.seek(std::io::SeekFrom::Start(0)).expect("seek");
    f.read_to_end(&mut v).expect("read");
    String::from_utf8_lossy(&v).into_owned()
}
