//! runc parity for namespaces and the root filesystem (issue 19 items 4, 5, 6 and
//! `runc spec --rootless`): every namespace type new, joined by path, and absent; every
//! rootfsPropagation value; the container's own cgroup at /sys/fs/cgroup with and without
//! a cgroup namespace. Each scenario runs `runc spec` bundles under runc and berth-runtime
//! and compares exit code and stdout (what the container sees). A case runc itself fails
//! on this host is reported as skipped by the harness, naming runc's error.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::parity::{parity, Parity, ParityBundle, Rt};
use serde_json::{json, Value};

/// (spec type, /proc/PID/ns name, unshare flag)
const TYPES: &[(&str, &str, &str)] = &[
    ("uts", "uts", "--uts"),
    ("ipc", "ipc", "--ipc"),
    ("network", "net", "--net"),
    ("pid", "pid", "--pid"),
    ("cgroup", "cgroup", "--cgroup"),
    ("mount", "mnt", "--mount"),
    ("user", "user", "--user"),
];

fn our_ns(name: &str) -> String {
    let p = format!("/proc/self/ns/{name}");
    std::fs::read_link(&p)
        .unwrap_or_else(|e| panic!("readlink {p}: {e}"))
        .to_string_lossy()
        .into_owned()
}

fn namespaces(v: &mut Value) -> &mut Vec<Value> {
    v["linux"]["namespaces"]
        .as_array_mut()
        .expect("runc spec has linux.namespaces")
}

fn drop_ns(v: &mut Value, typ: &str) {
    namespaces(v).retain(|n| n["type"] != typ);
}

/// Shell lines printing, for each listed namespace, whether the container's is the given
/// one (`name=same`) or not (`name=other`): runs compare as equal stdout although the
/// namespace ids differ from run to run.
fn ns_check(expect: &[(&str, String)]) -> String {
    expect
        .iter()
        .map(|(name, link)| {
            format!(
                "if [ \"$(readlink /proc/self/ns/{name})\" = '{link}' ]; then echo {name}=same; \
                 else echo {name}=other; fi; "
            )
        })
        .collect()
}

/// Mounts a runtime made in the runtime's own mount namespace for a container without one
/// (runc leaves them there for good): detach them so the bundle can be removed and the
/// next run starts clean.
fn detach_leftovers(rootfs: &Path) {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let n = mi
        .lines()
        .filter(|l| l.split(' ').nth(4).map(Path::new) == Some(rootfs))
        .count();
    for _ in 0..n {
        nix::mount::umount2(rootfs, nix::mount::MntFlags::MNT_DETACH)
            .unwrap_or_else(|e| panic!("detach {}: {e}", rootfs.display()));
    }
}

/// A process in new namespaces of one type, to be joined by path. Killed on drop.
struct Holder {
    child: Child,
    ns: &'static str,
}

impl Holder {
    fn new(flag: &str, ns: &'static str) -> Holder {
        let mut c = Command::new("unshare");
        c.arg(flag);
        match ns {
            // The pid namespace needs a live init: the forked sleep is its pid 1, and it
            // dies with unshare.
            "pid" => c.args(["--fork", "--kill-child"]),
            "mnt" => c.args(["--propagation", "private"]),
            // Root mapped to root, as `unshare -r` does (setgroups is then denied).
            "user" => c.arg("--map-root-user"),
            _ => &mut c,
        };
        let child = c
            .args(["sleep", "1000"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn unshare {flag} (util-linux): {e}"));
        let h = Holder { child, ns };
        // Readiness, not timing: wait until the namespace exists (bounded).
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::fs::read_link(h.path())
            .ok()
            .map(|l| l.to_string_lossy().into_owned())
            == Some(our_ns(ns))
            || (ns == "pid" && h.pid_init().is_none())
        {
            assert!(Instant::now() < deadline, "unshare {flag} never got ready");
            std::thread::sleep(Duration::from_millis(10));
        }
        h
    }

    fn pid_init(&self) -> Option<u32> {
        let p = self.child.id();
        std::fs::read_to_string(format!("/proc/{p}/task/{p}/children"))
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    fn path(&self) -> PathBuf {
        match self.ns {
            "pid" => match self.pid_init() {
                Some(p) => PathBuf::from(format!("/proc/{p}/ns/pid")),
                None => PathBuf::from(format!("/proc/{}/ns/pid_for_children", self.child.id())),
            },
            ns => PathBuf::from(format!("/proc/{}/ns/{ns}", self.child.id())),
        }
    }

    fn link(&self) -> String {
        std::fs::read_link(self.path())
            .expect("holder namespace")
            .to_string_lossy()
            .into_owned()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The edits a joined namespace of this type needs in runc's default spec.
fn join_edit(v: &mut Value, typ: &str, path: &Path) {
    drop_ns(v, typ);
    namespaces(v).push(json!({"type": typ, "path": path}));
    if typ == "user" {
        // runc requires the maps even for a joined user namespace; the holder maps 0 to 0.
        v["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 0, "size": 1}]);
        v["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 0, "size": 1}]);
        // gid 5 does not exist in a namespace that maps only root.
        for m in v["mounts"].as_array_mut().expect("mounts") {
            if m["type"] == "devpts" {
                if let Some(o) = m["options"].as_array_mut() {
                    o.retain(|x| x != "gid=5");
                }
            }
        }
    }
}

/// Item 6: every namespace type joined by path. Each runtime gets its own holder (joining
/// a mount namespace pivots its root for every process in it) and its own bundle.
#[test]
fn every_namespace_type_can_be_joined_by_path() {
    for &(typ, ns, flag) in TYPES {
        let case = format!("join-{typ}");
        let run = |rt: Rt| {
            let h = Holder::new(flag, ns);
            let path = h.path();
            let mut script = ns_check(&[(ns, h.link())]);
            // What the joined namespace gives the container, beyond its id.
            script.push_str(match typ {
                "uts" => "hostname; ",
                "pid" => "[ $$ -ne 1 ] && echo not-pid-1; ",
                "user" => "id -u; cat /proc/self/uid_map; ",
                _ => "",
            });
            let b = ParityBundle::new(
                &format!("{case}-{}", rt.name()),
                &["sh", "-c", &script],
                |v| {
                    join_edit(v, typ, &path);
                    v["hostname"] = json!("joined-host");
                },
            );
            let o = b.run(rt);
            if typ == "uts" {
                // The hostname was set in the joined namespace itself, as with runc.
                let out = Command::new("nsenter")
                    .args(["-t", &h.child.id().to_string(), "-u", "hostname"])
                    .output()
                    .expect("nsenter");
                assert_eq!(
                    String::from_utf8_lossy(&out.stdout).trim(),
                    "joined-host",
                    "{case} under {}",
                    rt.name()
                );
            }
            o
        };
        let p = Parity {
            case: case.clone(),
            runc: run(Rt::Runc),
            berth: run(Rt::Berth),
        };
        if !p.assert_same() {
            continue;
        }
        assert!(
            p.berth.stdout.contains(&format!("{ns}=same")),
            "{case}: {}",
            p.berth.stdout
        );
    }
}

/// Item 6: every namespace type left out of the spec means the runtime's own (which is
/// the test's), as runc does; without a mount namespace the root is entered with chroot.
#[test]
fn every_namespace_type_can_be_absent() {
    for &(typ, ns, _) in TYPES {
        let case = format!("absent-{typ}");
        let script =
            ns_check(&[(ns, our_ns(ns))]) + "ls /bin/busybox; cat /proc/self/cgroup | grep -c :";
        let edit = |v: &mut Value| {
            drop_ns(v, typ);
            match typ {
                "uts" => {
                    v.as_object_mut().expect("spec").remove("hostname");
                }
                "mount" => {
                    let l = v["linux"].as_object_mut().expect("linux");
                    l.remove("maskedPaths");
                    l.remove("readonlyPaths");
                }
                _ => {}
            }
        };
        let run = |rt: Rt| {
            let b = ParityBundle::new(
                &format!("{case}-{}", rt.name()),
                &["sh", "-c", &script],
                edit,
            );
            let o = b.run(rt);
            if typ == "mount" {
                detach_leftovers(&b.path().join("rootfs"));
            }
            o
        };
        let p = Parity {
            case: case.clone(),
            runc: run(Rt::Runc),
            berth: run(Rt::Berth),
        };
        if !p.assert_same() {
            continue;
        }
        assert!(
            p.berth.stdout.contains(&format!("{ns}=same")),
            "{case}: {}",
            p.berth.stdout
        );
    }
}

/// Every namespace runc's default spec asks for (plus cgroup) is new, in both runtimes.
#[test]
fn new_namespaces_are_private() {
    let all: Vec<(&str, String)> = TYPES
        .iter()
        .filter(|t| t.0 != "user")
        .map(|t| (t.1, our_ns(t.1)))
        .collect();
    let script = ns_check(&all) + "echo pid=$$; hostname";
    let p = parity(
        "new-ns",
        &["sh", "-c", &script],
        |v| namespaces(v).push(json!({"type": "cgroup"})),
        &[],
    );
    if !p.assert_same() {
        return;
    }
    for (name, _) in &all {
        assert!(
            p.berth.stdout.contains(&format!("{name}=other")),
            "{}",
            p.berth.stdout
        );
    }
    assert!(p.berth.stdout.contains("pid=1\n"), "{}", p.berth.stdout);
}

/// Settings that need a namespace the spec does not have are refused by both, naming it.
#[test]
fn settings_without_their_namespace_are_refused_like_runc() {
    let p = parity("no-uts-hostname", &["true"], |v| drop_ns(v, "uts"), &[]);
    p.assert_both_refuse("hostname");
    let p = parity("no-mnt-masked", &["true"], |v| drop_ns(v, "mount"), &[]);
    p.assert_both_refuse("without a private");
}

/// Item 4: the container sees its own cgroup at /sys/fs/cgroup, whether or not it has a
/// cgroup namespace: the limits read inside are the spec's, and no other group shows.
#[test]
fn container_sees_its_own_cgroup_with_and_without_cgroup_namespace() {
    let script = "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max; \
                  ls /sys/fs/cgroup; find /sys/fs/cgroup/memory -mindepth 1 -type d | wc -l; \
                  wc -l < /sys/fs/cgroup/pids/cgroup.procs";
    for cgroupns in [false, true] {
        let case = if cgroupns {
            "own-cgroup-ns"
        } else {
            "own-cgroup"
        };
        let p = parity(
            case,
            &["sh", "-c", script],
            |v| {
                v["linux"]["resources"]["memory"] = json!({"limit": 67_108_864});
                v["linux"]["resources"]["pids"] = json!({"limit": 77});
                if cgroupns {
                    namespaces(v).push(json!({"type": "cgroup"}));
                }
            },
            &[("memory", "memory.limit_in_bytes")],
        );
        if !p.assert_same() {
            continue;
        }
        assert!(
            p.berth.stdout.starts_with("67108864\n77\n"),
            "{case}: {}",
            p.berth.stdout
        );
        assert_eq!(
            p.berth
                .outside
                .get("memory/memory.limit_in_bytes")
                .map(String::as_str),
            Some("67108864")
        );
    }
}

/// Item 5: every rootfsPropagation value behaves as with runc (the unbindable ones are
/// refused by both: a bind of an unbindable mount is EINVAL).
#[test]
fn every_rootfs_propagation_works_like_runc() {
    // The propagation tags of / inside (numbers differ between runs; kinds must not).
    let script = "awk '$5==\"/\" {t=\"\"; for (i=7; $i!=\"-\"; i++) {sub(/:.*/, \"\", $i); t=t $i \" \"}; print \"root:\" t}' /proc/self/mountinfo";
    for prop in [
        "shared",
        "rshared",
        "slave",
        "rslave",
        "private",
        "rprivate",
        "unbindable",
        "runbindable",
    ] {
        let p = parity(
            &format!("prop-{prop}"),
            &["sh", "-c", script],
            |v| v["linux"]["rootfsPropagation"] = json!(prop),
            &[],
        );
        if prop.ends_with("unbindable") {
            assert!(p.runc.code != Some(0), "runc accepted {prop}");
            assert!(p.berth.code != Some(0), "berth-runtime accepted {prop}");
            continue;
        }
        p.assert_same();
    }
}

/// `runc spec --rootless` bundles run as runc runs them as root: a user namespace mapping
/// root to root, /sys bound from the host, the container's own cgroup bound at
/// /sys/fs/cgroup (no v1 mount is possible from the user namespace).
#[test]
fn rootless_spec_runs_like_runc() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(common::parity::runc_bin())
        .args(["spec", "--rootless"])
        .current_dir(dir.path())
        .output()
        .expect("runc spec --rootless");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rootless: Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("config.json")).expect("rootless config"),
    )
    .expect("parse");
    let script = "id; cat /proc/self/uid_map /proc/self/gid_map; \
                  cat /sys/fs/cgroup/memory/memory.limit_in_bytes; ls /sys/fs/cgroup";
    let p = parity(
        "rootless-spec",
        &["sh", "-c", script],
        |v| {
            let (args, terminal) = (
                v["process"]["args"].clone(),
                v["process"]["terminal"].clone(),
            );
            *v = rootless.clone();
            v["process"]["args"] = args;
            v["process"]["terminal"] = terminal;
            v["linux"]["resources"] = json!({"memory": {"limit": 67_108_864}});
        },
        &[],
    );
    if p.assert_same() {
        assert!(p.berth.stdout.contains("67108864"), "{}", p.berth.stdout);
    }
}
