//! cgroups through cgroups-rs, on v1, v2 and hybrid hosts.
//!
//! cgroups-rs picks v1 when `/sys/fs/cgroup` is not a cgroup2 mount, which is right for
//! hybrid hosts (v1 controllers plus a controller-less v2 mount at
//! `/sys/fs/cgroup/unified`): the limits live in the v1 hierarchies and the v2 mount is
//! left alone. What differs between versions (swap semantics, shares vs weight, where the
//! counters are) is decided by the pure functions here, unit-tested without root.

use std::path::{Path, PathBuf};

use cgroups_rs::fs::devices::{DevicePermissions, DeviceType};
use cgroups_rs::fs::hierarchies::{self, V1};
use cgroups_rs::fs::{Cgroup, Controllers, DeviceResource, MaxValue, Resources};
use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType, LinuxResources};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Is `/sys/fs/cgroup` a pure cgroup2 mount?
pub fn is_unified() -> bool {
    hierarchies::is_cgroup2_unified_mode()
}

/// Usage counters of one container's cgroup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupStats {
    /// Total CPU time in nanoseconds.
    pub cpu_usage_ns: u64,
    /// Current memory usage in bytes.
    pub memory_usage: u64,
    /// Peak memory usage in bytes (0 when the kernel does not track it).
    pub memory_max_usage: u64,
    /// Memory limit in bytes (None: unlimited).
    pub memory_limit: Option<u64>,
    /// Number of processes.
    pub pids_current: u64,
    /// Processes killed by the OOM killer in this cgroup.
    pub oom_kills: u64,
}

/// cgroup v2 cpu.weight from v1 cpu.shares (the conversion runc and crun use).
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    1 + ((shares.clamp(2, 262_144) - 2) * 9999) / 262_142
}

/// v2 memory.swap.max from the spec's memory+swap total (v1 semantics).
pub fn swap_v2(limit: Option<i64>, swap: Option<i64>) -> Option<i64> {
    match (limit, swap) {
        (_, Some(-1)) => Some(-1),
        (Some(l), Some(s)) if l > 0 && s >= l => Some(s - l),
        _ => None,
    }
}

fn dev_rule(d: &LinuxDeviceCgroup) -> DeviceResource {
    let devtype = match d.typ() {
        Some(LinuxDeviceType::B) => DeviceType::Block,
        Some(LinuxDeviceType::C) | Some(LinuxDeviceType::U) => DeviceType::Char,
        _ => DeviceType::All,
    };
    let access = d
        .access()
        .as_deref()
        .unwrap_or("rwm")
        .chars()
        .filter_map(|c| match c {
            'r' => Some(DevicePermissions::Read),
            'w' => Some(DevicePermissions::Write),
            'm' => Some(DevicePermissions::MkNod),
            _ => None,
        });
    DeviceResource {
        allow: d.allow(),
        devtype,
        major: d.major().unwrap_or(-1),
        minor: d.minor().unwrap_or(-1),
        access: access.collect(),
    }
}

/// Translate the spec's resources to cgroups-rs resources for a v1 or v2 hierarchy.
pub fn to_resources(r: &LinuxResources, v2: bool) -> Result<Resources> {
    let mut out = Resources::default();
    if let Some(m) = r.memory() {
        out.memory.memory_hard_limit = m.limit();
        out.memory.memory_soft_limit = m.reservation();
        out.memory.memory_swap_limit = if v2 {
            swap_v2(m.limit(), m.swap())
        } else {
            m.swap()
        };
        if let (Some(l), Some(s)) = (m.limit(), m.swap()) {
            if s != -1 && l > 0 && s < l {
                return Err(Error::InvalidSpec(format!(
                    "memory+swap limit {s} is below the memory limit {l}"
                )));
            }
        }
        if !v2 {
            out.memory.swappiness = m.swappiness();
        }
    }
    if let Some(c) = r.cpu() {
        out.cpu.shares = if v2 {
            c.shares().map(shares_to_weight)
        } else {
            c.shares()
        };
        out.cpu.quota = c.quota();
        out.cpu.period = c.period();
        out.cpu.cpus = c.cpus().clone();
        out.cpu.mems = c.mems().clone();
    }
    if let Some(p) = r.pids() {
        out.pid.maximum_number_of_processes = Some(if p.limit() > 0 {
            MaxValue::Value(p.limit())
        } else {
            MaxValue::Max
        });
    }
    // v2 has no devices controller: CgroupManager::create attaches an eBPF program.
    if !v2 {
        out.devices.devices = r.devices().iter().flatten().map(dev_rule).collect();
    }
    Ok(out)
}

/// Controllers a set of limits needs (v1 names; v2 uses the same for these).
pub fn required_controllers(r: &LinuxResources) -> Vec<&'static str> {
    let mut out = Vec::new();
    if r.memory()
        .as_ref()
        .is_some_and(|m| m.limit().is_some() || m.swap().is_some() || m.reservation().is_some())
    {
        out.push("memory");
    }
    if r.cpu()
        .as_ref()
        .is_some_and(|c| c.shares().is_some() || c.quota().is_some() || c.period().is_some())
    {
        out.push("cpu");
    }
    if r.cpu()
        .as_ref()
        .is_some_and(|c| c.cpus().is_some() || c.mems().is_some())
    {
        out.push("cpuset");
    }
    if r.pids().is_some() {
        out.push("pids");
    }
    out
}

/// Controllers this host offers: v2 `cgroup.controllers` of the root, v1 mounted hierarchies.
pub fn available_controllers(v2: bool) -> Vec<String> {
    if v2 {
        return std::fs::read_to_string(
            Path::new(hierarchies::UNIFIED_MOUNTPOINT).join("cgroup.controllers"),
        )
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    }
    let v1 = V1::new();
    [
        (Controllers::Mem, "memory"),
        (Controllers::Cpu, "cpu"),
        (Controllers::CpuSet, "cpuset"),
        (Controllers::Pids, "pids"),
    ]
    .into_iter()
    .filter(|(c, _)| v1.get_mount_point(c.clone()).is_some())
    .map(|(_, n)| n.to_string())
    .collect()
}

/// Normalize the spec's cgroupsPath into a hierarchy-relative path (default `berth/<id>`).
pub fn cgroup_path(spec_path: Option<&Path>, id: &str) -> String {
    match spec_path {
        Some(p) if !p.as_os_str().is_empty() => {
            p.to_string_lossy().trim_start_matches('/').to_string()
        }
        _ => format!("berth/{id}"),
    }
}

/// A container's cgroup.
pub struct CgroupManager {
    path: String,
    cg: Cgroup,
    v2: bool,
}

fn cgerr(path: &str, what: &str, e: impl std::fmt::Display) -> Error {
    Error::Cgroup {
        path: path.to_string(),
        message: format!("{what}: {e}"),
    }
}

impl CgroupManager {
    /// Create the cgroup and apply the limits.
    pub fn create(path: &str, resources: Option<&LinuxResources>) -> Result<Self> {
        let hier = hierarchies::auto();
        let v2 = hier.v2();
        if let Some(r) = resources {
            // cgroups-rs skips limits for controllers the hierarchy lacks; a limit that is
            // silently not enforced is worse than an error.
            let have = available_controllers(v2);
            let missing: Vec<&str> = required_controllers(r)
                .into_iter()
                .filter(|c| !have.iter().any(|h| h == c))
                .collect();
            if !missing.is_empty() {
                let where_ = if v2 {
                    "the cgroup v2 hierarchy at /sys/fs/cgroup"
                } else {
                    "the cgroup v1 mounts"
                };
                return Err(Error::Cgroup {
                    path: path.to_string(),
                    message: format!(
                        "limits need controller(s) {missing:?}, but {where_} offers only {have:?}"
                    ),
                });
            }
        }
        let cg = Cgroup::new(hier, path).map_err(|e| cgerr(path, "create", e))?;
        let m = CgroupManager {
            path: path.to_string(),
            cg,
            v2,
        };
        if let Some(r) = resources {
            let mut res = to_resources(r, v2)?;
            // Hosts booted without swap accounting have no memsw files; like Docker, run
            // without the swap limit rather than fail (the memory limit still holds).
            if res.memory.memory_swap_limit.is_some() && !m.swap_accounting() {
                tracing::warn!(cgroup = %path, "no swap accounting on this host: memory+swap limit ignored");
                res.memory.memory_swap_limit = None;
            }
            if let Err(e) = m.cg.apply(&res) {
                let _ = m.cg.delete();
                return Err(cgerr(path, "apply limits", e));
            }
            if let Err(e) = m.apply_device_rules(r) {
                let _ = m.cg.delete();
                return Err(e);
            }
        }
        Ok(m)
    }

    /// v2: the spec's device rules as an eBPF program on the cgroup (v1 has them from
    /// cgroups-rs through devices.allow/deny). No rules means no program: v1 allows every
    /// device then too.
    fn apply_device_rules(&self, r: &LinuxResources) -> Result<()> {
        let rules = r.devices().as_deref().unwrap_or_default();
        if !self.v2 || rules.is_empty() {
            return Ok(());
        }
        let policy = crate::devfilter::Policy::from_rules(rules)?;
        let dir = Path::new(hierarchies::UNIFIED_MOUNTPOINT).join(&self.path);
        crate::bpf::install_device_policy(&dir, &policy)
    }

    /// Handle to an existing cgroup.
    pub fn load(path: &str) -> Self {
        let hier = hierarchies::auto();
        let v2 = hier.v2();
        CgroupManager {
            path: path.to_string(),
            cg: Cgroup::load(hier, path),
            v2,
        }
    }

    /// Can swap be limited (v1 `memory.memsw.*`, v2 `memory.swap.max`)?
    fn swap_accounting(&self) -> bool {
        let file = if self.v2 {
            "memory.swap.max"
        } else {
            "memory.memsw.limit_in_bytes"
        };
        self.dir(Controllers::Mem)
            .is_some_and(|d| d.join(file).exists())
    }

    /// The hierarchy-relative path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Is this a v2 cgroup?
    pub fn v2(&self) -> bool {
        self.v2
    }

    /// Move a process (all its threads) into the cgroup.
    pub fn add_pid(&self, pid: i32) -> Result<()> {
        self.cg
            .add_task_by_tgid(cgroups_rs::CgroupPid::from(pid as u64))
            .map_err(|e| cgerr(&self.path, &format!("add pid {pid}"), e))
    }

    /// Directory of one controller (v1) or the unified directory (v2).
    pub fn dir(&self, ctrl: Controllers) -> Option<PathBuf> {
        if self.v2 {
            return Some(Path::new(hierarchies::UNIFIED_MOUNTPOINT).join(&self.path));
        }
        let (mount, root) = V1::new().get_mount_point(ctrl)?;
        // mount_root is where the hierarchy mount starts (not "/" inside a cgroup ns).
        let rel = Path::new(&self.path);
        let rel = rel
            .strip_prefix(root.strip_prefix("/").unwrap_or(&root))
            .unwrap_or(rel);
        Some(mount.join(rel))
    }

    fn read(&self, ctrl: Controllers, file: &str) -> Option<String> {
        std::fs::read_to_string(self.dir(ctrl)?.join(file)).ok()
    }

    fn read_u64(&self, ctrl: Controllers, file: &str) -> Option<u64> {
        self.read(ctrl, file)?.trim().parse().ok()
    }

    /// Usage counters.
    pub fn stats(&self) -> CgroupStats {
        let key = |text: Option<String>, k: &str| -> Option<u64> {
            text?
                .lines()
                .find_map(|l| l.strip_prefix(k).and_then(|v| v.trim().parse().ok()))
        };
        if self.v2 {
            let limit = self
                .read(Controllers::Mem, "memory.max")
                .and_then(|s| s.trim().parse().ok());
            CgroupStats {
                cpu_usage_ns: key(self.read(Controllers::Cpu, "cpu.stat"), "usage_usec ")
                    .unwrap_or(0)
                    * 1000,
                memory_usage: self
                    .read_u64(Controllers::Mem, "memory.current")
                    .unwrap_or(0),
                memory_max_usage: self.read_u64(Controllers::Mem, "memory.peak").unwrap_or(0),
                memory_limit: limit,
                pids_current: self
                    .read_u64(Controllers::Pids, "pids.current")
                    .unwrap_or(0),
                oom_kills: self.oom_kills(),
            }
        } else {
            let limit = self
                .read_u64(Controllers::Mem, "memory.limit_in_bytes")
                .filter(|l| *l < (i64::MAX as u64) & !0xfff);
            CgroupStats {
                cpu_usage_ns: self
                    .read_u64(Controllers::CpuAcct, "cpuacct.usage")
                    .unwrap_or(0),
                memory_usage: self
                    .read_u64(Controllers::Mem, "memory.usage_in_bytes")
                    .unwrap_or(0),
                memory_max_usage: self
                    .read_u64(Controllers::Mem, "memory.max_usage_in_bytes")
                    .unwrap_or(0),
                memory_limit: limit,
                pids_current: self
                    .read_u64(Controllers::Pids, "pids.current")
                    .unwrap_or(0),
                oom_kills: self.oom_kills(),
            }
        }
    }

    /// OOM kills so far: v1 `memory.oom_control` `oom_kill`, v2 `memory.events` `oom_kill`.
    pub fn oom_kills(&self) -> u64 {
        let (file, text) = if self.v2 {
            (
                "memory.events",
                self.read(Controllers::Mem, "memory.events"),
            )
        } else {
            (
                "memory.oom_control",
                self.read(Controllers::Mem, "memory.oom_control"),
            )
        };
        let _ = file;
        parse_oom_kill(text.as_deref().unwrap_or(""))
    }

    /// Processes in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        self.read(Controllers::Pids, "cgroup.procs")
            .or_else(|| self.read(Controllers::Mem, "cgroup.procs"))
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// SIGKILL everything, wait for the cgroup to empty, remove it.
    pub fn destroy(&self) -> Result<()> {
        if !self.cg.exists() {
            return Ok(());
        }
        for _ in 0..200 {
            let pids = self.pids();
            if pids.is_empty() {
                break;
            }
            for p in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        self.cg.delete().map_err(|e| cgerr(&self.path, "remove", e))
    }
}

/// The `oom_kill N` line of memory.oom_control (v1) or memory.events (v2).
pub fn parse_oom_kill(text: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix("oom_kill ")
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(v: serde_json::Value) -> LinuxResources {
        serde_json::from_value(v).expect("resources")
    }

    #[test]
    fn v1_and_v2_translate_differently() {
        let r = res(
            serde_json::json!({"memory": {"limit": 100, "swap": 300, "reservation": 50}, "cpu": {"shares": 1024, "quota": 50000, "period": 100000}, "pids": {"limit": 32}}),
        );
        let v1 = to_resources(&r, false).expect("v1");
        assert_eq!(v1.memory.memory_swap_limit, Some(300));
        assert_eq!(v1.cpu.shares, Some(1024));
        let v2 = to_resources(&r, true).expect("v2");
        assert_eq!(
            v2.memory.memory_swap_limit,
            Some(200),
            "v2 swap.max excludes memory"
        );
        assert_eq!(v2.cpu.shares, Some(shares_to_weight(1024)));
        assert_eq!(
            v2.pid.maximum_number_of_processes,
            Some(MaxValue::Value(32))
        );
        assert!(v2.devices.devices.is_empty());
    }

    #[test]
    fn weight_conversion_matches_runc() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(1024), 39);
    }

    #[test]
    fn swap_below_limit_is_invalid() {
        let r = res(serde_json::json!({"memory": {"limit": 100, "swap": 50}}));
        assert!(to_resources(&r, false).is_err());
        assert_eq!(swap_v2(Some(100), Some(-1)), Some(-1));
    }

    #[test]
    fn oom_kill_parsing() {
        assert_eq!(
            parse_oom_kill("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"),
            3
        );
        assert_eq!(
            parse_oom_kill("low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\noom_group_kill 0\n"),
            1
        );
        assert_eq!(parse_oom_kill(""), 0);
    }

    #[test]
    fn required_controllers_follow_the_limits() {
        let r = res(
            serde_json::json!({"memory": {"limit": 1}, "cpu": {"quota": 5, "period": 10}, "pids": {"limit": 3}}),
        );
        assert_eq!(required_controllers(&r), ["memory", "cpu", "pids"]);
        let r = res(serde_json::json!({"devices": [{"allow": false, "access": "rwm"}]}));
        assert!(required_controllers(&r).is_empty());
        let r = res(serde_json::json!({"cpu": {"cpus": "0"}}));
        assert_eq!(required_controllers(&r), ["cpuset"]);
    }

    #[test]
    fn default_path() {
        assert_eq!(cgroup_path(None, "abc"), "berth/abc");
        assert_eq!(cgroup_path(Some(Path::new("/x/y")), "abc"), "x/y");
    }
}
