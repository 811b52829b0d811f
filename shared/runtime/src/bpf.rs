//! The bpf(2) calls that put a device program (see devfilter.rs) on a cgroup v2 directory.
//!
//! No crate: the five commands used here take small fixed structs, and a BPF library
//! (aya, libbpf-rs) would bring an ELF loader and far more unsafe code than they need.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;

use crate::devfilter::{self, Policy};
use crate::error::{Context, Error, Result};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_DETACH: libc::c_long = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct Attach {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

#[repr(C)]
#[derive(Default)]
struct Query {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
}

#[repr(C)]
#[derive(Default)]
struct GetFdById {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct ObjInfo {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The leading part of struct bpf_prog_info, up to and including the name.
#[repr(C)]
#[derive(Default)]
struct ProgInfo {
    typ: u32,
    id: u32,
    tag: [u8; 8],
    jited_prog_len: u32,
    xlated_prog_len: u32,
    jited_prog_insns: u64,
    xlated_prog_insns: u64,
    load_time: u64,
    created_by_uid: u32,
    nr_map_ids: u32,
    map_ids: u64,
    name: [u8; 16],
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> nix::Result<libc::c_long> {
    // SAFETY: attr is a live, fully initialized #[repr(C)] prefix of union bpf_attr, and
    // the size passed is its size; the kernel zero-extends shorter attrs.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    Errno::result(r)
}

fn load(policy: &Policy, dir: &Path) -> Result<OwnedFd> {
    let bytes = devfilter::encode(&devfilter::program(policy));
    let license = CString::new("Apache-2.0").map_err(|_| Error::InvalidSpec("license".into()))?;
    let mut name = [0u8; 16];
    name[..devfilter::PROG_NAME.len()].copy_from_slice(devfilter::PROG_NAME.as_bytes());
    let attr = |log: &mut [u8]| ProgLoad {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: (bytes.len() / 8) as u32,
        insns: bytes.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: u32::from(!log.is_empty()),
        log_size: log.len() as u32,
        log_buf: if log.is_empty() {
            0
        } else {
            log.as_mut_ptr() as u64
        },
        prog_name: name,
        ..Default::default()
    };
    match bpf(BPF_PROG_LOAD, &mut attr(&mut [])) {
        // SAFETY: a successful BPF_PROG_LOAD returns a new fd that nothing else owns.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
        Err(e @ (Errno::EINVAL | Errno::EACCES)) => {
            // Load again with the verifier's log so the error says what it disliked.
            let mut log = vec![0u8; 1 << 16];
            let _ = bpf(BPF_PROG_LOAD, &mut attr(&mut log));
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            Err(e).ctx(|| {
                format!(
                    "load the device program for cgroup {} ({policy:?}); verifier: {text}",
                    dir.display()
                )
            })
        }
        Err(e) => Err(e).ctx(|| format!("load the device program for cgroup {}", dir.display())),
    }
}

/// Ids of the device programs attached to a cgroup.
fn attached(cg: BorrowedFd<'_>) -> Result<Vec<u32>> {
    let mut q = Query {
        target_fd: cg.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        ..Default::default()
    };
    bpf(BPF_PROG_QUERY, &mut q).ctx(|| "query the cgroup's device programs".into())?;
    let mut ids = vec![0u32; q.prog_cnt as usize];
    if ids.is_empty() {
        return Ok(ids);
    }
    q.prog_ids = ids.as_mut_ptr() as u64;
    bpf(BPF_PROG_QUERY, &mut q).ctx(|| "list the cgroup's device programs".into())?;
    ids.truncate(q.prog_cnt as usize);
    Ok(ids)
}

fn prog_fd_and_name(id: u32) -> Result<(OwnedFd, String)> {
    let mut by_id = GetFdById {
        prog_id: id,
        ..Default::default()
    };
    let fd = bpf(BPF_PROG_GET_FD_BY_ID, &mut by_id).ctx(|| format!("open bpf program {id}"))?;
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut info = ProgInfo::default();
    let mut req = ObjInfo {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of::<ProgInfo>() as u32,
        info: &mut info as *mut ProgInfo as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut req).ctx(|| format!("read bpf program {id}'s info"))?;
    let end = info.name.iter().position(|b| *b == 0).unwrap_or(16);
    Ok((fd, String::from_utf8_lossy(&info.name[..end]).into_owned()))
}

/// Enforce `policy` on the cgroup v2 directory `dir`: attach its program, then detach the
/// device programs berth attached there earlier. In between both are attached, and the
/// kernel allows only what every program allows, so the cgroup is never less restricted
/// than either policy. Programs that are not berth's are left alone.
pub fn install_device_policy(dir: &Path, policy: &Policy) -> Result<()> {
    let cg = nix::fcntl::open(
        dir,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ctx(|| format!("open cgroup {}", dir.display()))?;
    let mut old = Vec::new();
    for id in attached(cg.as_fd())? {
        let (fd, name) = prog_fd_and_name(id)?;
        if name == devfilter::PROG_NAME {
            old.push((id, fd));
        }
    }
    let prog = load(policy, dir)?;
    let mut at = Attach {
        target_fd: cg.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        ..Default::default()
    };
    bpf(BPF_PROG_ATTACH, &mut at)
        .ctx(|| format!("attach the device program to cgroup {}", dir.display()))?;
    for (id, fd) in old {
        let mut de = Attach {
            target_fd: cg.as_raw_fd() as u32,
            attach_bpf_fd: fd.as_raw_fd() as u32,
            attach_type: BPF_CGROUP_DEVICE,
            ..Default::default()
        };
        bpf(BPF_PROG_DETACH, &mut de).ctx(|| {
            format!(
                "detach the earlier device program {id} from cgroup {}",
                dir.display()
            )
        })?;
    }
    Ok(())
}

/// Ids and names of the device programs on a cgroup (for tests and diagnostics).
pub fn device_programs(dir: &Path) -> Result<Vec<(u32, String)>> {
    let cg = nix::fcntl::open(
        dir,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ctx(|| format!("open cgroup {}", dir.display()))?;
    attached(cg.as_fd())?
        .into_iter()
        .map(|id| prog_fd_and_name(id).map(|(_, n)| (id, n)))
        .collect()
}
