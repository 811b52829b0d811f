//! Shared helpers for the root end-to-end tests: busybox bundles, the runtime binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use berth_runtime::{default_spec, DefaultSpecOptions};

pub mod parity;

/// Fail the test, naming what is missing, unless it runs as root: a test that cannot run
/// must not pass.
pub fn require_root(test: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "{test} needs root: run the runtime's tests as root"
    );
}

/// The berth-runtime binary under test.
pub fn runtime() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_berth-runtime"))
}

/// The probe example binary (built by `cargo test`).
pub fn probe_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let p = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("examples/probe");
    assert!(
        p.exists(),
        "{} missing: run via `cargo test`, which builds examples",
        p.display()
    );
    p
}

/// A unique container id for this test.
pub fn cid(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

/// A bundle directory with a busybox rootfs (plus the probe and its libraries).
pub struct Bundle {
    pub dir: tempfile::TempDir,
    pub root: tempfile::TempDir,
}

impl Bundle {
    pub fn new(args: &[&str], tweak: impl FnOnce(&mut DefaultSpecOptions)) -> Bundle {
        let dir = tempfile::Builder::new()
            .prefix("berth-bundle")
            .tempdir()
            .expect("bundle dir");
        let rootfs = dir.path().join("rootfs");
        for d in ["bin", "tmp", "mnt", "proc", "sys", "dev", "etc"] {
            std::fs::create_dir_all(rootfs.join(d)).expect("mkdir rootfs");
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
            .expect("copy busybox (apt install busybox-static)");
        let list = Command::new("/bin/busybox")
            .arg("--list")
            .output()
            .expect("busybox --list");
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            if applet != "busybox" {
                let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet));
            }
        }
        // The probe is a dynamically linked Rust binary: bring its libraries along.
        let probe = probe_bin();
        std::fs::copy(&probe, rootfs.join("bin/probe")).expect("copy probe");
        let ldd = Command::new("ldd").arg(&probe).output().expect("ldd");
        for line in String::from_utf8_lossy(&ldd.stdout).lines() {
            let lib = line.split_whitespace().find(|w| w.starts_with('/'));
            if let Some(lib) = lib {
                let dst = rootfs.join(lib.trim_start_matches('/'));
                std::fs::create_dir_all(dst.parent().expect("parent")).expect("mkdir lib");
                std::fs::copy(lib, &dst).expect("copy lib");
            }
        }
        let mut o = DefaultSpecOptions::new(args.iter().map(|s| s.to_string()).collect());
        o.hostname = Some("berth-test".into());
        tweak(&mut o);
        let spec = default_spec(&o).expect("default spec");
        spec.save(dir.path().join("config.json"))
            .expect("save config");
        let root = tempfile::Builder::new()
            .prefix("berth-state")
            .tempdir()
            .expect("state root");
        Bundle { dir, root }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Edit config.json as JSON.
    pub fn edit(&self, f: impl FnOnce(&mut serde_json::Value)) {
        let p = self.path().join("config.json");
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&p).expect("read config")).expect("parse config");
        f(&mut v);
        std::fs::write(&p, serde_json::to_vec_pretty(&v).expect("encode")).expect("write config");
    }

    /// Run `berth-runtime --root <state> <args>` and collect its output. Output goes through
    /// files, not pipes: a created container keeps the caller's stdio open (as with runc),
    /// so waiting for pipe EOF would wait for the container.
    pub fn cli(&self, args: &[&str]) -> Output {
        let out = tempfile::tempfile().expect("stdout file");
        let err = tempfile::tempfile().expect("stderr file");
        let status = Command::new(runtime())
            .arg("--root")
            .arg(self.root.path())
            .args(args)
            .current_dir(self.path())
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().expect("clone"))
            .stderr(err.try_clone().expect("clone"))
            .status()
            .expect("run berth-runtime");
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
}

impl Drop for Bundle {
    /// Leave no container behind when a test fails half-way.
    fn drop(&mut self) {
        if let Ok(ids) = berth_runtime::Container::list(self.root.path()) {
            for id in ids {
                let _ = self.cli(&["delete", "--force", &id]);
            }
        }
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
