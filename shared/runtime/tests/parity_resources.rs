//! runc parity for capabilities, devices and linux.resources: each scenario runs the same
//! `runc spec` bundle under runc and berth-runtime and compares exit code, stdout (values
//! read inside) and the cgroup files read from outside.

mod common;

use common::parity::{cgroup_dir_from, parity};
use serde_json::{json, Value};

fn resources(v: &mut Value, r: Value) {
    let res = &mut v["linux"]["resources"];
    for (k, val) in r.as_object().expect("resources object") {
        res[k] = val.clone();
    }
}

#[test]
fn cgroup_dir_is_found_from_proc_and_mountinfo() {
    let cg = "4:memory:/outer/c1\n5:devices:/c1\n0::/c1\n";
    let mi = "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
              36 31 0:33 /outer /mnt/dev rw - cgroup cgroup rw,devices\n\
              41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
    assert_eq!(
        cgroup_dir_from(cg, mi, "memory").expect("memory"),
        std::path::Path::new("/sys/fs/cgroup/memory/outer/c1")
    );
    assert_eq!(
        cgroup_dir_from(cg, mi, "").expect("v2"),
        std::path::Path::new("/sys/fs/cgroup/unified/c1")
    );
    // A devices cgroup outside the mount's root cannot be reached through that mount.
    assert!(cgroup_dir_from(cg, mi, "devices").is_err());
    assert!(cgroup_dir_from(cg, mi, "pids").is_err());
}

/// Issue 19 item 1: runc's default spec lists ambient caps with no inheritable set; runc runs
/// it with CapAmb 0 and so must berth-runtime.
#[test]
fn runc_default_spec_runs_with_the_same_capabilities() {
    let p = parity(
        "caps",
        &["sh", "-c", "grep ^Cap /proc/self/status; id; exit 3"],
        |_| {},
        &[],
    );
    assert!(p.assert_same(), "runc must run its own default spec");
    assert!(
        p.berth.stdout.contains("CapAmb:\t0000000000000000"),
        "{}",
        p.berth.stdout
    );
}

/// Ambient caps that are also inheritable are raised by both.
#[test]
fn inheritable_ambient_caps_are_raised_like_runc() {
    let p = parity(
        "caps-amb",
        &["sh", "-c", "grep ^Cap /proc/self/status"],
        |v| {
            v["process"]["capabilities"]["inheritable"] = json!(["CAP_KILL"]);
        },
        &[],
    );
    assert!(p.assert_same());
    assert!(
        p.berth.stdout.contains("CapAmb:\t0000000000000020"),
        "{}",
        p.berth.stdout
    );
}

#[test]
fn memory_pids_cpu_limits_match_runc() {
    let p = parity(
        "mem",
        &["sh", "-c", "echo done"],
        |v| {
            resources(
                v,
                json!({"memory": {"limit": 67108864, "reservation": 33554432},
                       "pids": {"limit": 77},
                       "cpu": {"shares": 512, "quota": 50000, "period": 100000}}),
            )
        },
        &[
            ("memory", "memory.limit_in_bytes"),
            ("memory", "memory.soft_limit_in_bytes"),
            ("pids", "pids.max"),
            ("cpu", "cpu.shares"),
            ("cpu", "cpu.cfs_quota_us"),
            ("cpu", "cpu.cfs_period_us"),
        ],
    );
    assert!(p.assert_same());
    assert_eq!(p.berth.outside["memory/memory.limit_in_bytes"], "67108864");
}
