//! rlimits: checked against the host's hard limits before setrlimit so that a spec asking
//! for more than a process without CAP_SYS_RESOURCE may have gets a clear error.

use oci_spec::runtime::{PosixRlimit, PosixRlimitType};

use crate::error::{Error, Result};

/// The resource number of an OCI rlimit type.
pub fn resource(t: PosixRlimitType) -> libc::__rlimit_resource_t {
    use PosixRlimitType::*;
    (match t {
        RlimitCpu => libc::RLIMIT_CPU,
        RlimitFsize => libc::RLIMIT_FSIZE,
        RlimitData => libc::RLIMIT_DATA,
        RlimitStack => libc::RLIMIT_STACK,
        RlimitCore => libc::RLIMIT_CORE,
        RlimitRss => libc::RLIMIT_RSS,
        RlimitNproc => libc::RLIMIT_NPROC,
        RlimitNofile => libc::RLIMIT_NOFILE,
        RlimitMemlock => libc::RLIMIT_MEMLOCK,
        RlimitAs => libc::RLIMIT_AS,
        RlimitLocks => libc::RLIMIT_LOCKS,
        RlimitSigpending => libc::RLIMIT_SIGPENDING,
        RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        RlimitNice => libc::RLIMIT_NICE,
        RlimitRtprio => libc::RLIMIT_RTPRIO,
        RlimitRttime => libc::RLIMIT_RTTIME,
    }) as libc::__rlimit_resource_t
}

/// Current (soft, hard) of a resource.
pub fn current(res: libc::__rlimit_resource_t) -> (u64, u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe { libc::getrlimit(res, &mut r) };
    (r.rlim_cur, r.rlim_max)
}

/// Decide whether `want` can be set given the current hard limit and CAP_SYS_RESOURCE.
pub fn check(name: &str, soft: u64, hard: u64, current_hard: u64, can_raise: bool) -> Result<()> {
    if soft > hard {
        return Err(Error::Rlimit(format!(
            "rlimit {name}: soft limit {soft} is above hard limit {hard}"
        )));
    }
    if hard > current_hard && !can_raise {
        return Err(Error::Rlimit(format!(
            "rlimit {name}: hard limit {hard} is above this host's hard limit {current_hard} and the runtime lacks CAP_SYS_RESOURCE to raise it"
        )));
    }
    Ok(())
}

/// Does this process hold CAP_SYS_RESOURCE in its effective set?
pub fn has_sys_resource() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("CapEff:"))
                .and_then(|l| u64::from_str_radix(l[7..].trim(), 16).ok())
        })
        .map(|eff| eff & (1 << 24) != 0)
        .unwrap_or(false)
}

/// Apply the spec's rlimits to this process.
pub fn apply(limits: &[PosixRlimit]) -> Result<()> {
    let can_raise = has_sys_resource();
    for l in limits {
        let res = resource(l.typ());
        let (_, cur_hard) = current(res);
        let name = format!("{:?}", l.typ())
            .to_uppercase()
            .replace("RLIMIT", "RLIMIT_");
        check(&name, l.soft(), l.hard(), cur_hard, can_raise)?;
        let r = libc::rlimit {
            rlim_cur: l.soft(),
            rlim_max: l.hard(),
        };
        if unsafe { libc::setrlimit(res, &r) } != 0 {
            return Err(Error::Rlimit(format!(
                "setrlimit {name} soft={} hard={}: {}",
                l.soft(),
                l.hard(),
                std::io::Error::last_os_error()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn above_host_hard_limit_is_a_clear_error() {
        let e = check("RLIMIT_NOFILE", 1_048_576, 1_048_576, 20_000, false).expect_err("must fail");
        let msg = e.to_string();
        assert!(
            msg.contains("RLIMIT_NOFILE")
                && msg.contains("20000")
                && msg.contains("CAP_SYS_RESOURCE"),
            "{msg}"
        );
        check("RLIMIT_NOFILE", 1_048_576, 1_048_576, 20_000, true).expect("with CAP_SYS_RESOURCE");
        check("RLIMIT_NOFILE", 1024, 20_000, 20_000, false).expect("within");
        assert!(check("RLIMIT_NOFILE", 10, 5, 20_000, true).is_err());
    }
}
