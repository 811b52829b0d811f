//! Capabilities: all five sets written with capset(2) and prctl(2) directly (no crate:
//! it is ~40 lines and keeps the init free of dependencies' allocations and globals).

use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities};

use crate::error::{Context, Result};

/// Capability numbers by kernel name; the index is the capability number.
pub const NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Docker's default capability set (14 capabilities).
pub const DOCKER_DEFAULT: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Capability number of an oci-spec capability (its serde name is the kernel name).
pub fn number(cap: &Capability) -> Option<u32> {
    let name = cap.to_string();
    let name = if name.starts_with("CAP_") {
        name
    } else {
        format!("CAP_{name}")
    };
    NAMES.iter().position(|n| *n == name).map(|i| i as u32)
}

/// Bitmask of a set.
pub fn mask(set: Option<&Capabilities>) -> u64 {
    set.map(|s| {
        s.iter()
            .filter_map(number)
            .fold(0u64, |m, n| m | (1u64 << n))
    })
    .unwrap_or(0)
}

/// The five masks of a spec's capabilities, in the order bounding, effective, permitted,
/// inheritable, ambient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Masks {
    pub bounding: u64,
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: u64,
}

impl Masks {
    /// Masks from the spec (absent sets are empty, as in runc).
    pub fn from_spec(c: Option<&LinuxCapabilities>) -> Masks {
        let Some(c) = c else { return Masks::default() };
        Masks {
            bounding: mask(c.bounding().as_ref()),
            effective: mask(c.effective().as_ref()),
            permitted: mask(c.permitted().as_ref()),
            inheritable: mask(c.inheritable().as_ref()),
            ambient: mask(c.ambient().as_ref()),
        }
    }
}

fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// Drop everything outside the bounding set. Needs CAP_SETPCAP, so call before setuid.
pub fn apply_bounding(m: &Masks) -> Result<()> {
    for cap in 0..=last_cap() {
        if m.bounding & (1u64 << cap) == 0 {
            let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
            // EINVAL: the kernel does not know this capability.
            if r != 0 && nix::errno::Errno::last() != nix::errno::Errno::EINVAL {
                return Err(nix::errno::Errno::last()).ctx(|| {
                    format!(
                        "drop {} from bounding set",
                        NAMES.get(cap as usize).unwrap_or(&"?")
                    )
                });
            }
        }
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The ambient capabilities that can be raised: the kernel refuses (EPERM) any that is not
/// both permitted and inheritable. runc ignores those refusals (runc's default spec lists
/// ambient caps with an empty inheritable set and runs with CapAmb 0), so they are left out
/// here rather than failing the container; capabilities the kernel does not know are left
/// out too (runc ignores their EINVAL), as the bounding-set drop does.
pub fn ambient_to_raise(m: &Masks) -> u64 {
    m.ambient & m.permitted & m.inheritable
}

/// Set effective/permitted/inheritable with capset(2), then the ambient set.
pub fn apply_sets(m: &Masks) -> Result<()> {
    const V3: u32 = 0x2008_0522;
    let mut hdr = CapHeader {
        version: V3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: m.effective as u32,
            permitted: m.permitted as u32,
            inheritable: m.inheritable as u32,
        },
        CapData {
            effective: (m.effective >> 32) as u32,
            permitted: (m.permitted >> 32) as u32,
            inheritable: (m.inheritable >> 32) as u32,
        },
    ];
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) };
    nix::errno::Errno::result(r).ctx(|| "capset".into())?;
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    let raise = ambient_to_raise(m);
    for cap in 0..=last_cap().min(63) {
        if raise & (1u64 << cap) != 0 {
            let r = unsafe {
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                    cap as libc::c_ulong,
                    0,
                    0,
                )
            };
            nix::errno::Errno::result(r)
                .ctx(|| format!("raise ambient {}", NAMES.get(cap as usize).unwrap_or(&"?")))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ambient_needs_permitted_and_inheritable() {
        let kill = 1u64 << 5;
        let bind = 1u64 << 10;
        // runc spec's default: ambient listed, inheritable empty -> nothing raised.
        let m = Masks {
            bounding: kill | bind,
            effective: kill | bind,
            permitted: kill | bind,
            inheritable: 0,
            ambient: kill | bind,
        };
        assert_eq!(ambient_to_raise(&m), 0);
        let m = Masks {
            inheritable: kill,
            ..m
        };
        assert_eq!(ambient_to_raise(&m), kill);
        let m = Masks {
            permitted: bind,
            inheritable: kill | bind,
            ..m
        };
        assert_eq!(ambient_to_raise(&m), bind);
    }

    #[test]
    fn docker_default_masks() {
        let set: Capabilities = DOCKER_DEFAULT
            .iter()
            .map(|n| serde_json::from_value::<Capability>(serde_json::json!(n)).expect("cap"))
            .collect();
        let m = mask(Some(&set));
        assert_eq!(m.count_ones(), 14);
        assert_ne!(m & (1 << 27), 0, "MKNOD");
        assert_eq!(m & (1 << 21), 0, "no SYS_ADMIN");
        assert_eq!(m & (1 << 16), 0, "no SYS_MODULE");
    }
}
