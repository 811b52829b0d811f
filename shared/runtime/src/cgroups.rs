//! cgroups through cgroups-rs, on v1, v2 and hybrid hosts.
//!
//! cgroups-rs picks v1 when `/sys/fs/cgroup` is not a cgroup2 mount, which is right for
//! hybrid hosts (v1 controllers plus a controller-less v2 mount at
//! `/sys/fs/cgroup/unified`): the limits live in the v1 hierarchies and the v2 mount is
//! left alone. What differs between versions (swap semantics, shares vs weight, where the
//! counters are) is decided by the pure functions here, unit-tested without root.

use std::path::{Path, PathBuf};

use cgroups_rs::fs::hierarchies::{self, V1};
use cgroups_rs::fs::{Cgroup, Controllers, MaxValue, Resources};
use oci_spec::runtime::{LinuxDeviceCgroup, LinuxResources};
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
    // Devices are applied by CgroupManager::create from the folded policy: v1 as writes
    // (cgroups-rs would ignore a failed write), v2 as an eBPF program.
    Ok(out)
}

/// Annotation with which a bundle opts out of runc's default device allow list: berth's own
/// spec lists its devices itself and, unlike runc, allows no `mknod` of block devices.
pub const NO_DEFAULT_DEVICES_ANNOTATION: &str = "run.berth.runtime.default-devices";

/// The device rules runc 1.1 appends after the spec's own (libcontainer/specconv
/// AllowedDevices): mknod of any node, the standard character devices, /dev/pts/*,
/// /dev/ptmx and /dev/net/tun. The path is the node a spec device may redefine.
pub fn runc_default_device_rules() -> Vec<(Option<&'static str>, LinuxDeviceCgroup)> {
    let rule = |typ: &str, major: Option<i64>, minor: Option<i64>, access: &str| {
        let v = serde_json::json!({"allow": true, "type": typ, "major": major, "minor": minor, "access": access});
        serde_json::from_value::<LinuxDeviceCgroup>(v).unwrap_or_default()
    };
    vec![
        (None, rule("c", None, None, "m")),
        (None, rule("b", None, None, "m")),
        (Some("/dev/null"), rule("c", Some(1), Some(3), "rwm")),
        (Some("/dev/random"), rule("c", Some(1), Some(8), "rwm")),
        (Some("/dev/full"), rule("c", Some(1), Some(7), "rwm")),
        (Some("/dev/tty"), rule("c", Some(5), Some(0), "rwm")),
        (Some("/dev/zero"), rule("c", Some(1), Some(5), "rwm")),
        (Some("/dev/urandom"), rule("c", Some(1), Some(9), "rwm")),
        (None, rule("c", Some(136), None, "rwm")),
        (None, rule("c", Some(5), Some(2), "rwm")),
        (None, rule("c", Some(10), Some(200), "rwm")),
    ]
}

/// The resources a container's cgroup gets: the spec's, with runc's default device allow
/// list after the spec's device rules (minus defaults for a path the spec's linux.devices
/// redefine, as runc), unless the bundle opts out with [`NO_DEFAULT_DEVICES_ANNOTATION`].
pub fn resources_for(spec: &oci_spec::runtime::Spec) -> Option<LinuxResources> {
    let linux = spec.linux().as_ref();
    let res = linux.and_then(|l| l.resources().clone());
    let opt_out = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(NO_DEFAULT_DEVICES_ANNOTATION))
        .is_some_and(|v| v == "none");
    if opt_out {
        return res;
    }
    let spec_paths: Vec<&Path> = linux
        .and_then(|l| l.devices().as_ref())
        .map(|d| d.iter().map(|d| d.path().as_path()).collect())
        .unwrap_or_default();
    let mut res = res.unwrap_or_default();
    let mut rules = res.devices().clone().unwrap_or_default();
    rules.extend(
        runc_default_device_rules()
            .into_iter()
            .filter(|(p, _)| !p.is_some_and(|p| spec_paths.contains(&Path::new(p))))
            .map(|(_, r)| r),
    );
    res.set_devices(Some(rules));
    Some(res)
}

/// One cgroup file a spec setting is written to, for the settings berth writes itself
/// (cgroups-rs ignores write failures for these, and skips hierarchies that are missing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingWrite {
    /// The spec field, as the error names it (`linux.resources.blockIO.weight`).
    pub setting: String,
    /// The controller (v1 hierarchy name; on v2 the controller the file belongs to).
    pub controller: &'static str,
    /// Candidate file names, first existing one wins (blkio's BFQ vs CFQ names).
    pub files: Vec<String>,
    pub value: String,
}

fn write(setting: &str, controller: &'static str, files: &[&str], value: String) -> SettingWrite {
    SettingWrite {
        setting: format!("linux.resources.{setting}"),
        controller,
        files: files.iter().map(|f| f.to_string()).collect(),
        value,
    }
}

fn unsupported(setting: &str, why: &str) -> Error {
    Error::InvalidSpec(format!("linux.resources.{setting}: {why}"))
}

/// runc's conversion of a blkio weight (10..1000) to a v2 io.weight (1..10000).
pub fn blkio_weight_to_io(w: u16) -> u64 {
    if w == 0 {
        return 0;
    }
    1 + (u64::from(w).saturating_sub(10)) * 9999 / 990
}

/// The file writes for the linux.resources settings cgroups-rs does not apply (or applies
/// without reporting failure): disableOOMKiller, cpu idle/burst/realtime, blockIO,
/// hugepageLimits, network, rdma, unified. A setting that has no meaning on this cgroup
/// version is an error naming it; kernel memory limits are ignored with a warning, as
/// runc 1.1 does (the kernel deprecated them).
pub fn setting_writes(r: &LinuxResources, v2: bool) -> Result<Vec<SettingWrite>> {
    let mut out = Vec::new();
    if let Some(m) = r.memory() {
        if m.kernel().is_some() || m.kernel_tcp().is_some() {
            tracing::warn!("linux.resources.memory.kernel/kernelTCP are ignored, as runc does");
        }
        if let Some(h) = m.use_hierarchy() {
            if v2 {
                tracing::warn!(
                    "linux.resources.memory.useHierarchy: cgroup v2 is always hierarchical"
                );
            } else {
                // Recent kernels are always hierarchical and refuse 0: then create fails
                // naming the setting rather than running flat-accounted silently.
                out.push(write(
                    "memory.useHierarchy",
                    "memory",
                    &["memory.use_hierarchy"],
                    u8::from(h).to_string(),
                ));
            }
        }
        if v2 && m.swappiness().is_some() {
            // No v2 equivalent; runc ignores it there as well.
            tracing::warn!("linux.resources.memory.swappiness has no cgroup v2 equivalent: ignored, as runc does");
        }
        // checkBeforeUpdate only concerns `update`; a new cgroup has no earlier usage.
        if m.disable_oom_killer() == Some(true) {
            if v2 {
                // cgroup v2 has no way to disable the OOM killer; runc ignores the setting there.
                tracing::warn!("linux.resources.memory.disableOOMKiller has no cgroup v2 equivalent: ignored, as runc does");
            } else {
                out.push(write(
                    "memory.disableOOMKiller",
                    "memory",
                    &["memory.oom_control"],
                    "1".into(),
                ));
            }
        }
    }
    if let Some(c) = r.cpu() {
        if let Some(idle) = c.idle() {
            out.push(write("cpu.idle", "cpu", &["cpu.idle"], idle.to_string()));
        }
        if let Some(b) = c.burst() {
            let f = if v2 {
                "cpu.max.burst"
            } else {
                "cpu.cfs_burst_us"
            };
            out.push(write("cpu.burst", "cpu", &[f], b.to_string()));
        }
        if c.realtime_period().is_some() || c.realtime_runtime().is_some() {
            if v2 {
                return Err(unsupported(
                    "cpu.realtimeRuntime/realtimePeriod",
                    "cgroup v2 has no realtime CPU limits",
                ));
            }
            // The period first: a runtime above the current period is refused.
            if let Some(p) = c.realtime_period() {
                out.push(write(
                    "cpu.realtimePeriod",
                    "cpu",
                    &["cpu.rt_period_us"],
                    p.to_string(),
                ));
            }
            if let Some(rt) = c.realtime_runtime() {
                out.push(write(
                    "cpu.realtimeRuntime",
                    "cpu",
                    &["cpu.rt_runtime_us"],
                    rt.to_string(),
                ));
            }
        }
    }
    if let Some(b) = r.block_io() {
        let ctrl = if v2 { "io" } else { "blkio" };
        if let Some(w) = b.weight() {
            out.push(if v2 {
                write(
                    "blockIO.weight",
                    ctrl,
                    &["io.bfq.weight", "io.weight"],
                    blkio_weight_to_io(w).to_string(),
                )
            } else {
                write(
                    "blockIO.weight",
                    ctrl,
                    &["blkio.bfq.weight", "blkio.weight"],
                    w.to_string(),
                )
            });
        }
        if let Some(w) = b.leaf_weight() {
            if v2 {
                return Err(unsupported(
                    "blockIO.leafWeight",
                    "cgroup v2 has no leaf weights",
                ));
            }
            out.push(write(
                "blockIO.leafWeight",
                ctrl,
                &["blkio.leaf_weight"],
                w.to_string(),
            ));
        }
        for d in b.weight_device().iter().flatten() {
            let dev = format!("{}:{}", d.major(), d.minor());
            if let Some(w) = d.weight() {
                out.push(if v2 {
                    write(
                        "blockIO.weightDevice",
                        ctrl,
                        &["io.bfq.weight", "io.weight"],
                        format!("{dev} {}", blkio_weight_to_io(w)),
                    )
                } else {
                    write(
                        "blockIO.weightDevice",
                        ctrl,
                        &["blkio.bfq.weight_device", "blkio.weight_device"],
                        format!("{dev} {w}"),
                    )
                });
            }
            if let Some(w) = d.leaf_weight() {
                if v2 {
                    return Err(unsupported(
                        "blockIO.weightDevice.leafWeight",
                        "cgroup v2 has no leaf weights",
                    ));
                }
                out.push(write(
                    "blockIO.weightDevice.leafWeight",
                    ctrl,
                    &["blkio.leaf_weight_device"],
                    format!("{dev} {w}"),
                ));
            }
        }
        let throttles = [
            (
                "throttleReadBpsDevice",
                b.throttle_read_bps_device(),
                "blkio.throttle.read_bps_device",
                "rbps",
            ),
            (
                "throttleWriteBpsDevice",
                b.throttle_write_bps_device(),
                "blkio.throttle.write_bps_device",
                "wbps",
            ),
            (
                "throttleReadIOPSDevice",
                b.throttle_read_iops_device(),
                "blkio.throttle.read_iops_device",
                "riops",
            ),
            (
                "throttleWriteIOPSDevice",
                b.throttle_write_iops_device(),
                "blkio.throttle.write_iops_device",
                "wiops",
            ),
        ];
        for (name, devs, v1file, v2key) in throttles {
            for d in devs.iter().flatten() {
                let dev = format!("{}:{}", d.major(), d.minor());
                out.push(if v2 {
                    write(
                        &format!("blockIO.{name}"),
                        ctrl,
                        &["io.max"],
                        format!("{dev} {v2key}={}", d.rate()),
                    )
                } else {
                    write(
                        &format!("blockIO.{name}"),
                        ctrl,
                        &[v1file],
                        format!("{dev} {}", d.rate()),
                    )
                });
            }
        }
    }
    for h in r.hugepage_limits().iter().flatten() {
        let size = h.page_size();
        // The size becomes part of a file name.
        if size.is_empty() || !size.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(unsupported(
                "hugepageLimits.pageSize",
                &format!("{size:?} is not a page size like 2MB"),
            ));
        }
        let f = if v2 {
            format!("hugetlb.{size}.max")
        } else {
            format!("hugetlb.{size}.limit_in_bytes")
        };
        out.push(write(
            "hugepageLimits",
            "hugetlb",
            &[&f],
            h.limit().to_string(),
        ));
    }
    if let Some(n) = r.network() {
        if (n.class_id().is_some() || n.priorities().as_ref().is_some_and(|p| !p.is_empty())) && v2
        {
            return Err(unsupported(
                "network",
                "cgroup v2 has no net_cls/net_prio controllers",
            ));
        }
        if let Some(id) = n.class_id() {
            out.push(write(
                "network.classID",
                "net_cls",
                &["net_cls.classid"],
                id.to_string(),
            ));
        }
        for p in n.priorities().iter().flatten() {
            if p.name().is_empty() || p.name().contains(char::is_whitespace) {
                return Err(unsupported(
                    "network.priorities",
                    &format!("bad interface name {:?}", p.name()),
                ));
            }
            out.push(write(
                "network.priorities",
                "net_prio",
                &["net_prio.ifpriomap"],
                format!("{} {}", p.name(), p.priority()),
            ));
        }
    }
    if let Some(rdma) = r.rdma() {
        let mut devs: Vec<_> = rdma.iter().collect();
        devs.sort_by(|a, b| a.0.cmp(b.0));
        for (dev, l) in devs {
            if dev.is_empty() || dev.contains(char::is_whitespace) {
                return Err(unsupported("rdma", &format!("bad device name {dev:?}")));
            }
            let mut v = dev.clone();
            if let Some(h) = l.hca_handles() {
                v.push_str(&format!(" hca_handle={h}"));
            }
            if let Some(o) = l.hca_objects() {
                v.push_str(&format!(" hca_object={o}"));
            }
            out.push(write("rdma", "rdma", &["rdma.max"], v));
        }
    }
    if let Some(u) = r.unified() {
        if !u.is_empty() && !v2 {
            return Err(unsupported("unified", "cannot use unified on cgroup v1"));
        }
        let mut keys: Vec<_> = u.iter().collect();
        keys.sort();
        for (k, v) in keys {
            let ctrl = k.split('.').next().unwrap_or_default();
            if k.contains('/') || !k.contains('.') || ctrl.is_empty() {
                return Err(unsupported(
                    "unified",
                    &format!("{k:?} is not a cgroup file name"),
                ));
            }
            let ctrl = match ctrl {
                "cgroup" => "cgroup",
                "memory" => "memory",
                "cpu" => "cpu",
                "cpuset" => "cpuset",
                "io" => "io",
                "pids" => "pids",
                "hugetlb" => "hugetlb",
                "rdma" => "rdma",
                "misc" => "misc",
                other => {
                    return Err(unsupported(
                        "unified",
                        &format!("{k:?}: unknown controller {other:?}"),
                    ))
                }
            };
            let mut w = write("unified", ctrl, &[k], v.clone());
            w.setting = format!("linux.resources.unified.{k}");
            out.push(w);
        }
    }
    Ok(out)
}

fn controller_of(name: &str) -> Option<Controllers> {
    Some(match name {
        "memory" => Controllers::Mem,
        "cpu" => Controllers::Cpu,
        "cpuset" => Controllers::CpuSet,
        "pids" => Controllers::Pids,
        "blkio" | "io" => Controllers::BlkIo,
        "hugetlb" => Controllers::HugeTlb,
        "net_cls" => Controllers::NetCls,
        "net_prio" => Controllers::NetPrio,
        "rdma" => Controllers::Rdma,
        _ => return None,
    })
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
        (Controllers::BlkIo, "blkio"),
        (Controllers::HugeTlb, "hugetlb"),
        (Controllers::NetCls, "net_cls"),
        (Controllers::NetPrio, "net_prio"),
        (Controllers::Rdma, "rdma"),
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
            let writes = setting_writes(r, v2).map_err(|e| Error::Cgroup {
                path: path.to_string(),
                message: e.to_string(),
            })?;
            if let Some(w) = writes
                .iter()
                .find(|w| w.controller != "cgroup" && !have.iter().any(|h| h == w.controller))
            {
                return Err(Error::Cgroup {
                    path: path.to_string(),
                    message: format!(
                        "{}: cannot set {} limit: this host has no {} controller {} (it offers {have:?})",
                        w.setting,
                        w.controller,
                        w.controller,
                        if v2 { "enabled in the cgroup v2 hierarchy" } else { "mounted" }
                    ),
                });
            }
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
            if let Err(e) = setting_writes(r, v2).and_then(|w| m.write_settings(&w)) {
                let _ = m.cg.delete();
                return Err(e);
            }
        }
        Ok(m)
    }

    /// The spec's device rules folded into one policy (as v1 folds them), then applied:
    /// v1 as `a` reset plus sorted exceptions, v2 as an eBPF program on the cgroup. No
    /// rules means nothing is written: a new cgroup allows every device then anyway.
    fn apply_device_rules(&self, r: &LinuxResources) -> Result<()> {
        let rules = r.devices().as_deref().unwrap_or_default();
        if rules.is_empty() {
            return Ok(());
        }
        let policy = crate::devfilter::Policy::from_rules(rules)?;
        if self.v2 {
            let dir = Path::new(hierarchies::UNIFIED_MOUNTPOINT).join(&self.path);
            return crate::bpf::install_device_policy(&dir, &policy);
        }
        let dir = self.dir(Controllers::Devices).ok_or_else(|| {
            cgerr(
                &self.path,
                "linux.resources.devices",
                "no devices hierarchy is mounted",
            )
        })?;
        for (file, rule) in policy.v1_writes() {
            std::fs::write(dir.join(file), &rule).map_err(|e| {
                cgerr(
                    &self.path,
                    "linux.resources.devices",
                    format!("write {rule:?} to {}: {e}", dir.join(file).display()),
                )
            })?;
        }
        Ok(())
    }

    /// Write each setting to the first of its candidate files that exists in this cgroup.
    fn write_settings(&self, writes: &[SettingWrite]) -> Result<()> {
        for w in writes {
            let dir = match controller_of(w.controller) {
                Some(c) => self.dir(c),
                None if self.v2 => {
                    Some(Path::new(hierarchies::UNIFIED_MOUNTPOINT).join(&self.path))
                }
                None => None,
            }
            .ok_or_else(|| {
                cgerr(
                    &self.path,
                    &w.setting,
                    format!("no {} hierarchy", w.controller),
                )
            })?;
            let file = w
                .files
                .iter()
                .map(|f| dir.join(f))
                .find(|p| p.exists())
                .ok_or_else(|| {
                    cgerr(
                        &self.path,
                        &w.setting,
                        format!(
                            "this host's {} controller has no {} in {}",
                            w.controller,
                            w.files.join(" or "),
                            dir.display()
                        ),
                    )
                })?;
            std::fs::write(&file, &w.value).map_err(|e| {
                cgerr(
                    &self.path,
                    &w.setting,
                    format!("write {:?} to {}: {e}", w.value, file.display()),
                )
            })?;
        }
        Ok(())
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

    fn spec(v: serde_json::Value) -> oci_spec::runtime::Spec {
        serde_json::from_value(v).expect("spec")
    }

    #[test]
    fn runc_defaults_follow_the_spec_rules_unless_the_bundle_opts_out() {
        let s = spec(serde_json::json!({"ociVersion": "1.0.2", "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "devices": [{"path": "/dev/null", "type": "c", "major": 1, "minor": 7}]}}));
        let rules = resources_for(&s)
            .and_then(|r| r.devices().clone())
            .expect("rules");
        assert!(!rules[0].allow(), "the spec's deny-all stays first");
        assert_eq!(
            rules.len(),
            1 + runc_default_device_rules().len() - 1,
            "/dev/null's default is the spec's"
        );
        assert!(!rules
            .iter()
            .any(|r| r.major() == Some(1) && r.minor() == Some(3)));
        // A spec without resources still gets them (runc applies them to every container).
        let bare = spec(serde_json::json!({"ociVersion": "1.0.2"}));
        assert_eq!(
            resources_for(&bare)
                .and_then(|r| r.devices().clone())
                .map(|d| d.len()),
            Some(runc_default_device_rules().len())
        );
        let own = spec(serde_json::json!({"ociVersion": "1.0.2",
            "annotations": {NO_DEFAULT_DEVICES_ANNOTATION: "none"},
            "linux": {"resources": {"devices": [{"allow": false, "access": "rwm"}]}}}));
        assert_eq!(
            resources_for(&own)
                .and_then(|r| r.devices().clone())
                .map(|d| d.len()),
            Some(1)
        );
    }

    fn files(w: &[SettingWrite]) -> Vec<(String, &str, String)> {
        w.iter()
            .map(|w| {
                (
                    w.setting.clone(),
                    w.controller,
                    format!("{} <- {}", w.files.join("|"), w.value),
                )
            })
            .collect()
    }

    #[test]
    fn every_setting_cgroups_rs_leaves_out_becomes_a_named_write() {
        let r = res(serde_json::json!({
            "memory": {"disableOOMKiller": true, "kernel": 1, "useHierarchy": true},
            "cpu": {"idle": 1, "burst": 5, "realtimeRuntime": 10, "realtimePeriod": 100},
            "blockIO": {"weight": 500, "leafWeight": 400,
                "weightDevice": [{"major": 8, "minor": 0, "weight": 300, "leafWeight": 200}],
                "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 7}],
                "throttleWriteIOPSDevice": [{"major": 8, "minor": 0, "rate": 9}]},
            "hugepageLimits": [{"pageSize": "2MB", "limit": 4096}],
            "network": {"classID": 17, "priorities": [{"name": "eth0", "priority": 3}]},
            "rdma": {"mlx5_0": {"hcaHandles": 3}}
        }));
        let w = setting_writes(&r, false).expect("v1");
        let f = files(&w);
        let has = |setting: &str, ctrl: &str, what: &str| {
            assert!(
                f.iter()
                    .any(|(s, c, x)| s == &format!("linux.resources.{setting}")
                        && *c == ctrl
                        && x == what),
                "{setting}: {f:#?}"
            )
        };
        has(
            "memory.disableOOMKiller",
            "memory",
            "memory.oom_control <- 1",
        );
        has("memory.useHierarchy", "memory", "memory.use_hierarchy <- 1");
        has("cpu.idle", "cpu", "cpu.idle <- 1");
        has("cpu.burst", "cpu", "cpu.cfs_burst_us <- 5");
        has("cpu.realtimePeriod", "cpu", "cpu.rt_period_us <- 100");
        has("cpu.realtimeRuntime", "cpu", "cpu.rt_runtime_us <- 10");
        has(
            "blockIO.weight",
            "blkio",
            "blkio.bfq.weight|blkio.weight <- 500",
        );
        has("blockIO.leafWeight", "blkio", "blkio.leaf_weight <- 400");
        has(
            "blockIO.weightDevice",
            "blkio",
            "blkio.bfq.weight_device|blkio.weight_device <- 8:0 300",
        );
        has(
            "blockIO.weightDevice.leafWeight",
            "blkio",
            "blkio.leaf_weight_device <- 8:0 200",
        );
        has(
            "blockIO.throttleReadBpsDevice",
            "blkio",
            "blkio.throttle.read_bps_device <- 8:0 7",
        );
        has(
            "blockIO.throttleWriteIOPSDevice",
            "blkio",
            "blkio.throttle.write_iops_device <- 8:0 9",
        );
        has(
            "hugepageLimits",
            "hugetlb",
            "hugetlb.2MB.limit_in_bytes <- 4096",
        );
        has("network.classID", "net_cls", "net_cls.classid <- 17");
        has(
            "network.priorities",
            "net_prio",
            "net_prio.ifpriomap <- eth0 3",
        );
        has("rdma", "rdma", "rdma.max <- mlx5_0 hca_handle=3");
        // The period is written before the runtime (a runtime above the period is refused).
        let pos = |s: &str| f.iter().position(|(x, _, _)| x.ends_with(s)).expect(s);
        assert!(pos("realtimePeriod") < pos("realtimeRuntime"));
    }

    #[test]
    fn settings_without_meaning_on_this_version_are_refused_by_name() {
        let refused = |v: serde_json::Value, v2: bool, name: &str| {
            let e = setting_writes(&res(v), v2).expect_err(name).to_string();
            assert!(e.contains(name), "{e}");
        };
        refused(
            serde_json::json!({"unified": {"memory.high": "1"}}),
            false,
            "linux.resources.unified",
        );
        refused(
            serde_json::json!({"unified": {"../x.y": "1"}}),
            true,
            "linux.resources.unified",
        );
        refused(
            serde_json::json!({"unified": {"bogus.file": "1"}}),
            true,
            "linux.resources.unified",
        );
        refused(
            serde_json::json!({"network": {"classID": 1}}),
            true,
            "linux.resources.network",
        );
        refused(
            serde_json::json!({"cpu": {"realtimeRuntime": 1}}),
            true,
            "linux.resources.cpu.realtime",
        );
        refused(
            serde_json::json!({"blockIO": {"leafWeight": 10}}),
            true,
            "linux.resources.blockIO.leafWeight",
        );
        refused(
            serde_json::json!({"hugepageLimits": [{"pageSize": "../2MB", "limit": 1}]}),
            false,
            "linux.resources.hugepageLimits",
        );
        refused(
            serde_json::json!({"network": {"priorities": [{"name": "a b", "priority": 1}]}}),
            false,
            "linux.resources.network.priorities",
        );
        // v2 equivalents of v1 files.
        let w = setting_writes(
            &res(serde_json::json!({"blockIO": {"weight": 1000,
            "throttleWriteBpsDevice": [{"major": 8, "minor": 0, "rate": 5}]},
            "unified": {"memory.high": "100"}, "memory": {"disableOOMKiller": true}})),
            true,
        )
        .expect("v2");
        let f = files(&w);
        assert_eq!(
            f.len(),
            3,
            "disableOOMKiller has no v2 file (runc ignores it there): {f:#?}"
        );
        assert!(
            f.iter()
                .any(|(_, c, x)| *c == "io" && x == "io.bfq.weight|io.weight <- 10000"),
            "{f:#?}"
        );
        assert!(
            f.iter()
                .any(|(_, c, x)| *c == "io" && x == "io.max <- 8:0 wbps=5"),
            "{f:#?}"
        );
        assert!(
            f.iter()
                .any(|(s, c, x)| s == "linux.resources.unified.memory.high"
                    && *c == "memory"
                    && x == "memory.high <- 100"),
            "{f:#?}"
        );
    }

    #[test]
    fn blkio_weight_converts_like_runc() {
        assert_eq!(blkio_weight_to_io(10), 1);
        assert_eq!(blkio_weight_to_io(1000), 10000);
        assert_eq!(blkio_weight_to_io(500), 4950);
    }

    #[test]
    fn default_path() {
        assert_eq!(cgroup_path(None, "abc"), "berth/abc");
        assert_eq!(cgroup_path(Some(Path::new("/x/y")), "abc"), "x/y");
    }
}
