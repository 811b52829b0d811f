//! cgroup v2 device control: the spec's `linux.resources.devices` rules as an eBPF
//! program (BPF_PROG_TYPE_CGROUP_DEVICE), emitted here by hand.
//!
//! cgroup v2 has no devices controller; the kernel instead runs the programs attached to
//! the cgroup on every open/mknod of a device node and allows it only if all of them
//! return 1. To behave exactly as the v1 devices controller does for the same spec, the
//! rules are first folded the way v1 folds writes to `devices.allow`/`devices.deny`
//! (security/device_cgroup.c): a type-`a` rule resets everything to allow-all or deny-all,
//! and every other rule either adds an exception to that default or takes access bits away
//! from an earlier exception with the same type, major and minor. The program then checks
//! the exceptions and falls back to the default:
//! * deny by default: allowed only if one exception holds *all* requested access bits;
//! * allow by default: denied if any exception holds *any* requested access bit.
//!
//! This is pure code (no syscalls) so it is unit-tested byte for byte and by running the
//! generated program through a small interpreter of the few instructions it uses.

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

use crate::error::{Error, Result};

/// `bpf_cgroup_dev_ctx.access_type` low half (include/uapi/linux/bpf.h).
pub const DEV_BLOCK: u32 = 1;
pub const DEV_CHAR: u32 = 2;
/// `bpf_cgroup_dev_ctx.access_type` high half.
pub const ACC_MKNOD: u32 = 1;
pub const ACC_READ: u32 = 2;
pub const ACC_WRITE: u32 = 4;
const ACC_ALL: u32 = ACC_MKNOD | ACC_READ | ACC_WRITE;

/// Name the program is loaded under: how a later install recognizes berth's own program.
pub const PROG_NAME: &str = "berth_devices";

/// Which devices a rule is about. `None` is the `*` wildcard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// `DEV_BLOCK` or `DEV_CHAR`.
    pub typ: u32,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    /// `ACC_*` bits.
    pub access: u32,
}

/// The folded rule list: a default and the exceptions to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub default_allow: bool,
    pub exceptions: Vec<Rule>,
}

fn access_bits(access: Option<&str>) -> Result<u32> {
    // OCI: an absent access means "rwm".
    let Some(a) = access else {
        return Ok(ACC_ALL);
    };
    let mut bits = 0;
    for c in a.chars() {
        bits |= match c {
            'r' => ACC_READ,
            'w' => ACC_WRITE,
            'm' => ACC_MKNOD,
            _ => {
                return Err(Error::InvalidSpec(format!(
                    "device rule access {a:?}: only r, w and m are allowed"
                )))
            }
        };
    }
    Ok(bits)
}

fn number(what: &str, v: Option<i64>) -> Result<Option<u32>> {
    match v {
        None | Some(-1) => Ok(None),
        // Majors have 12 bits and minors 20 in the kernel; anything that does not fit the
        // program's signed 32-bit immediates is a mistake, not a device.
        Some(n) if (0..=i64::from(i32::MAX)).contains(&n) => Ok(Some(n as u32)),
        Some(n) => Err(Error::InvalidSpec(format!(
            "device rule {what} {n} is out of range"
        ))),
    }
}

impl Policy {
    /// Fold the spec's rules in order, as the v1 devices controller would. The starting
    /// point is v1's for a new cgroup under a permissive parent: allow everything.
    pub fn from_rules(rules: &[LinuxDeviceCgroup]) -> Result<Policy> {
        let mut p = Policy {
            default_allow: true,
            exceptions: Vec::new(),
        };
        for r in rules {
            let access = access_bits(r.access().as_deref())?;
            let typ = match r.typ() {
                None | Some(LinuxDeviceType::A) => {
                    p.default_allow = r.allow();
                    p.exceptions.clear();
                    continue;
                }
                Some(LinuxDeviceType::B) => DEV_BLOCK,
                Some(LinuxDeviceType::C) | Some(LinuxDeviceType::U) => DEV_CHAR,
                Some(LinuxDeviceType::P) => {
                    return Err(Error::InvalidSpec(
                        "device rule type p (fifo) cannot be controlled by a device cgroup".into(),
                    ))
                }
            };
            let rule = Rule {
                typ,
                major: number("major", r.major())?,
                minor: number("minor", r.minor())?,
                access,
            };
            if access == 0 {
                continue;
            }
            if r.allow() != p.default_allow {
                p.add(rule);
            } else {
                p.remove(rule);
            }
        }
        Ok(p)
    }

    fn same_devices(a: &Rule, b: &Rule) -> bool {
        a.typ == b.typ && a.major == b.major && a.minor == b.minor
    }

    fn add(&mut self, rule: Rule) {
        match self
            .exceptions
            .iter_mut()
            .find(|e| Self::same_devices(e, &rule))
        {
            Some(e) => e.access |= rule.access,
            None => self.exceptions.push(rule),
        }
    }

    /// v1 takes access away only from exceptions naming exactly the same devices: a
    /// narrower rule does not punch a hole into a wildcard exception.
    fn remove(&mut self, rule: Rule) {
        for e in self
            .exceptions
            .iter_mut()
            .filter(|e| Self::same_devices(e, &rule))
        {
            e.access &= !rule.access;
        }
        self.exceptions.retain(|e| e.access != 0);
    }

    /// The same policy as writes to a v1 devices cgroup, in order: `a` to reset to the
    /// default, then the exceptions to the other file. Exceptions are sorted (block before
    /// char, wildcards first, then by number), so `devices.list` reads as runc's does.
    pub fn v1_writes(&self) -> Vec<(&'static str, String)> {
        let (reset, other) = if self.default_allow {
            ("devices.allow", "devices.deny")
        } else {
            ("devices.deny", "devices.allow")
        };
        let mut ex = self.exceptions.clone();
        let key = |n: Option<u32>| n.map_or(-1, i64::from);
        ex.sort_by_key(|e| (e.typ, key(e.major), key(e.minor)));
        let num = |n: Option<u32>| n.map_or("*".to_string(), |n| n.to_string());
        let mut out = vec![(reset, "a".to_string())];
        for e in ex {
            let typ = if e.typ == DEV_BLOCK { 'b' } else { 'c' };
            let access: String = [(ACC_READ, 'r'), (ACC_WRITE, 'w'), (ACC_MKNOD, 'm')]
                .iter()
                .filter(|(b, _)| e.access & b != 0)
                .map(|(_, c)| *c)
                .collect();
            out.push((
                other,
                format!("{typ} {}:{} {access}", num(e.major), num(e.minor)),
            ));
        }
        out
    }

    /// What the program decides for one request (the reference the program is tested
    /// against).
    pub fn allows(&self, typ: u32, major: u32, minor: u32, access: u32) -> bool {
        let matches = |e: &&Rule| {
            e.typ == typ && e.major.is_none_or(|m| m == major) && e.minor.is_none_or(|m| m == minor)
        };
        if self.default_allow {
            !self
                .exceptions
                .iter()
                .filter(matches)
                .any(|e| e.access & access != 0)
        } else {
            self.exceptions
                .iter()
                .filter(matches)
                .any(|e| access & !e.access == 0)
        }
    }
}

/// One eBPF instruction (struct bpf_insn).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    pub dst: u8,
    pub src: u8,
    pub off: i16,
    pub imm: i32,
}

impl Insn {
    /// The kernel's 8-byte encoding (registers in one byte: dst low nibble, src high).
    pub fn encode(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0] = self.code;
        b[1] = (self.dst & 0x0f) | (self.src << 4);
        b[2..4].copy_from_slice(&self.off.to_le_bytes());
        b[4..8].copy_from_slice(&self.imm.to_le_bytes());
        b
    }
}

// Opcodes: class | op | source (include/uapi/linux/bpf_common.h, bpf.h).
/// dst = *(u32 *)(src + off)
pub const LDX_MEM_W: u8 = 0x61;
/// dst &= imm (32-bit)
pub const ALU32_AND_K: u8 = 0x54;
/// dst >>= imm (32-bit)
pub const ALU32_RSH_K: u8 = 0x74;
/// dst = src (32-bit)
pub const ALU32_MOV_X: u8 = 0xbc;
/// dst = imm (64-bit)
pub const ALU64_MOV_K: u8 = 0xb7;
/// if dst != imm goto pc + off
pub const JNE_K: u8 = 0x55;
/// if dst != src goto pc + off
pub const JNE_X: u8 = 0x5d;
/// if dst == imm goto pc + off
pub const JEQ_K: u8 = 0x15;
pub const EXIT: u8 = 0x95;

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        dst,
        src,
        off,
        imm,
    }
}

/// A jump to the end of the block it is in; the offset is filled in once the block is
/// complete.
const TO_NEXT: i16 = i16::MIN;

/// The program for a policy. Registers: r1 = ctx, then r2 = type, r3 = access,
/// r4 = major, r5 = minor; r1 is scratch once the context is read.
pub fn program(p: &Policy) -> Vec<Insn> {
    let mut out = vec![
        insn(LDX_MEM_W, 2, 1, 0, 0),
        insn(ALU32_AND_K, 2, 0, 0, 0xffff),
        insn(LDX_MEM_W, 3, 1, 0, 0),
        insn(ALU32_RSH_K, 3, 0, 0, 16),
        insn(LDX_MEM_W, 4, 1, 4, 0),
        insn(LDX_MEM_W, 5, 1, 8, 0),
    ];
    for e in &p.exceptions {
        let mut block = vec![insn(JNE_K, 2, 0, TO_NEXT, e.typ as i32)];
        if p.default_allow {
            // Any requested bit this exception denies: r1 = r3 & access; skip if r1 == 0.
            if e.access != ACC_ALL {
                block.push(insn(ALU32_MOV_X, 1, 3, 0, 0));
                block.push(insn(ALU32_AND_K, 1, 0, 0, e.access as i32));
                block.push(insn(JEQ_K, 1, 0, TO_NEXT, 0));
            }
        } else if e.access != ACC_ALL {
            // All requested bits allowed: r1 = r3 & access; skip if r1 != r3.
            block.push(insn(ALU32_MOV_X, 1, 3, 0, 0));
            block.push(insn(ALU32_AND_K, 1, 0, 0, e.access as i32));
            block.push(insn(JNE_X, 1, 3, TO_NEXT, 0));
        }
        if let Some(m) = e.major {
            block.push(insn(JNE_K, 4, 0, TO_NEXT, m as i32));
        }
        if let Some(m) = e.minor {
            block.push(insn(JNE_K, 5, 0, TO_NEXT, m as i32));
        }
        block.push(insn(ALU64_MOV_K, 0, 0, 0, i32::from(!p.default_allow)));
        block.push(insn(EXIT, 0, 0, 0, 0));
        let len = block.len();
        for (i, ins) in block.iter_mut().enumerate() {
            if ins.off == TO_NEXT {
                // Relative to the next instruction: land on the first one after the block.
                ins.off = (len - i - 1) as i16;
            }
        }
        out.extend(block);
    }
    out.push(insn(ALU64_MOV_K, 0, 0, 0, i32::from(p.default_allow)));
    out.push(insn(EXIT, 0, 0, 0, 0));
    out
}

/// The program as the bytes BPF_PROG_LOAD takes.
pub fn encode(insns: &[Insn]) -> Vec<u8> {
    insns.iter().flat_map(Insn::encode).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(v: serde_json::Value) -> Vec<LinuxDeviceCgroup> {
        serde_json::from_value(v).expect("rules")
    }

    /// Runs a program the way the kernel would, for the instructions `program` emits;
    /// anything else fails the test.
    fn run(prog: &[Insn], typ: u32, major: u32, minor: u32, access: u32) -> bool {
        let ctx = [(access << 16) | typ, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = prog[pc];
            let (d, s) = (usize::from(i.dst), usize::from(i.src));
            pc += 1;
            let jump = |cond: bool, pc: &mut usize| {
                if cond {
                    *pc = (*pc as isize + isize::from(i.off)) as usize;
                }
            };
            match i.code {
                LDX_MEM_W => {
                    assert_eq!(s, 1, "loads only from the context");
                    r[d] = u64::from(ctx[i.off as usize / 4]);
                }
                ALU32_AND_K => r[d] = u64::from(r[d] as u32 & i.imm as u32),
                ALU32_RSH_K => r[d] = u64::from((r[d] as u32) >> i.imm),
                ALU32_MOV_X => r[d] = u64::from(r[s] as u32),
                ALU64_MOV_K => r[d] = i64::from(i.imm) as u64,
                JNE_K => jump(r[d] != i64::from(i.imm) as u64, &mut pc),
                JEQ_K => jump(r[d] == i64::from(i.imm) as u64, &mut pc),
                JNE_X => jump(r[d] != r[s], &mut pc),
                EXIT => return r[0] == 1,
                c => panic!("unexpected opcode {c:#x}"),
            }
            assert!(pc < prog.len(), "ran off the end");
        }
    }

    /// The program agrees with the policy on every type/access and on the devices the
    /// rules name, their neighbours and a far-away one.
    fn check_exhaustively(p: &Policy) {
        let prog = program(p);
        let mut numbers = vec![0u32, 1, 4095, (1 << 20) - 1];
        for e in &p.exceptions {
            for n in [e.major, e.minor].into_iter().flatten() {
                numbers.extend([n.saturating_sub(1), n, n + 1]);
            }
        }
        for typ in [DEV_BLOCK, DEV_CHAR] {
            for access in 1..=ACC_ALL {
                for &major in &numbers {
                    for &minor in &numbers {
                        assert_eq!(
                            run(&prog, typ, major, minor, access),
                            p.allows(typ, major, minor, access),
                            "type {typ} {major}:{minor} access {access:#b} under {p:?}"
                        );
                    }
                }
            }
        }
    }

    fn docker_default() -> Vec<LinuxDeviceCgroup> {
        let c = |maj: i64, min: Option<i64>| serde_json::json!({"allow": true, "type": "c", "major": maj, "minor": min, "access": "rwm"});
        rules(serde_json::json!([
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "c", "access": "m"},
            c(1, Some(3)), c(1, Some(5)), c(1, Some(7)), c(1, Some(8)), c(1, Some(9)),
            c(5, Some(0)), c(5, Some(1)), c(5, Some(2)), c(136, None), c(10, Some(200))
        ]))
    }

    #[test]
    fn v1_writes_reset_then_list_exceptions_in_runcs_order() {
        let mut r = docker_default();
        r.extend(rules(serde_json::json!([
            {"allow": true, "type": "b", "access": "m"},
            {"allow": false, "type": "c", "major": 1, "minor": 3, "access": "w"}
        ])));
        let w = Policy::from_rules(&r).expect("policy").v1_writes();
        assert_eq!(w[0], ("devices.deny", "a".to_string()));
        let allowed: Vec<&str> = w[1..]
            .iter()
            .map(|(f, v)| {
                assert_eq!(*f, "devices.allow");
                v.as_str()
            })
            .collect();
        assert_eq!(
            allowed,
            [
                "b *:* m",
                "c *:* m",
                "c 1:3 rm",
                "c 1:5 rwm",
                "c 1:7 rwm",
                "c 1:8 rwm",
                "c 1:9 rwm",
                "c 5:0 rwm",
                "c 5:1 rwm",
                "c 5:2 rwm",
                "c 10:200 rwm",
                "c 136:* rwm"
            ]
        );
        let allow_all = Policy::from_rules(&rules(serde_json::json!([
            {"allow": false, "type": "b", "major": 8, "minor": 0, "access": "rw"}
        ])))
        .expect("policy");
        assert_eq!(
            allow_all.v1_writes(),
            [
                ("devices.allow", "a".to_string()),
                ("devices.deny", "b 8:0 rw".to_string())
            ]
        );
    }

    #[test]
    fn default_list_allows_the_usual_devices_and_nothing_else() {
        let p = Policy::from_rules(&docker_default()).expect("policy");
        assert!(!p.default_allow);
        let rw = ACC_READ | ACC_WRITE;
        assert!(p.allows(DEV_CHAR, 1, 3, rw), "/dev/null");
        assert!(p.allows(DEV_CHAR, 136, 7, rw), "/dev/pts/7");
        assert!(p.allows(DEV_CHAR, 10, 200, rw), "/dev/net/tun");
        assert!(
            p.allows(DEV_CHAR, 10, 232, ACC_MKNOD),
            "mknod of any char device"
        );
        for (typ, major, minor, name) in [
            (DEV_CHAR, 10, 232, "kvm"),
            (DEV_CHAR, 10, 237, "loop-control"),
            (DEV_CHAR, 10, 229, "fuse"),
            (DEV_BLOCK, 7, 0, "loop0"),
            (DEV_CHAR, 1, 1, "mem"),
        ] {
            assert!(!p.allows(typ, major, minor, ACC_READ), "{name}");
        }
        assert!(!p.allows(DEV_BLOCK, 7, 0, ACC_MKNOD), "no block mknod");
        check_exhaustively(&p);
    }

    #[test]
    fn later_rules_override_earlier_ones_like_v1() {
        // Allow everything, then deny writes to 1:3 only, then allow-all resets.
        let p = Policy::from_rules(&rules(serde_json::json!([
            {"allow": false, "type": "c", "major": 1, "minor": 3, "access": "w"},
            {"allow": false, "type": "b", "access": "m"}
        ])))
        .expect("policy");
        assert!(p.default_allow);
        assert!(!p.allows(DEV_CHAR, 1, 3, ACC_WRITE));
        assert!(
            !p.allows(DEV_CHAR, 1, 3, ACC_READ | ACC_WRITE),
            "any denied bit denies"
        );
        assert!(p.allows(DEV_CHAR, 1, 3, ACC_READ));
        assert!(!p.allows(DEV_BLOCK, 8, 0, ACC_MKNOD));
        assert!(p.allows(DEV_BLOCK, 8, 0, ACC_READ));
        check_exhaustively(&p);

        // A deny of the same devices takes bits back; an allow-all afterwards resets.
        let p = Policy::from_rules(&rules(serde_json::json!([
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
            {"allow": false, "type": "c", "major": 1, "minor": 3, "access": "w"},
            {"allow": true, "type": "c", "major": 4, "access": "r"},
            {"allow": true, "type": "c", "major": 4, "access": "w"}
        ])))
        .expect("policy");
        assert!(p.allows(DEV_CHAR, 1, 3, ACC_READ | ACC_MKNOD));
        assert!(!p.allows(DEV_CHAR, 1, 3, ACC_WRITE));
        assert!(
            p.allows(DEV_CHAR, 4, 9, ACC_READ | ACC_WRITE),
            "merged r + w"
        );
        check_exhaustively(&p);
        let reset = Policy::from_rules(&rules(serde_json::json!([
            {"allow": false, "access": "rwm"},
            {"allow": true, "access": "rwm"}
        ])))
        .expect("policy");
        assert_eq!(
            reset,
            Policy {
                default_allow: true,
                exceptions: vec![]
            }
        );
        check_exhaustively(&reset);
    }

    #[test]
    fn a_narrow_deny_does_not_punch_a_wildcard_allow() {
        // As in v1: removing 1:3 from "c 1:* rwm" changes nothing.
        let p = Policy::from_rules(&rules(serde_json::json!([
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "c", "major": 1, "access": "rwm"},
            {"allow": false, "type": "c", "major": 1, "minor": 3, "access": "rwm"}
        ])))
        .expect("policy");
        assert!(p.allows(DEV_CHAR, 1, 3, ACC_READ));
        check_exhaustively(&p);
    }

    #[test]
    fn all_requested_bits_must_come_from_one_exception_when_denying_by_default() {
        let p = Policy::from_rules(&rules(serde_json::json!([
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "c", "major": 1, "access": "r"},
            {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "w"}
        ])))
        .expect("policy");
        assert!(p.allows(DEV_CHAR, 1, 3, ACC_WRITE));
        assert!(p.allows(DEV_CHAR, 1, 3, ACC_READ));
        assert!(
            !p.allows(DEV_CHAR, 1, 3, ACC_READ | ACC_WRITE),
            "v1 match_exception"
        );
        check_exhaustively(&p);
    }

    #[test]
    fn bad_rules_are_refused() {
        for bad in [
            serde_json::json!([{"allow": true, "type": "c", "major": 1, "access": "rx"}]),
            serde_json::json!([{"allow": true, "type": "c", "major": 4_294_967_296i64}]),
            serde_json::json!([{"allow": true, "type": "c", "minor": -2}]),
            serde_json::json!([{"allow": true, "type": "p"}]),
        ] {
            let err = Policy::from_rules(&rules(bad.clone())).expect_err("refused");
            assert!(err.to_string().contains("device rule"), "{bad}: {err}");
        }
    }

    #[test]
    fn encoding_matches_the_kernel_layout() {
        // r4 = *(u32 *)(r1 + 4); if r5 != 0x12345 goto +3; r0 = 1
        assert_eq!(
            insn(LDX_MEM_W, 4, 1, 4, 0).encode(),
            [0x61, 0x14, 4, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            insn(JNE_K, 5, 0, 3, 0x12345).encode(),
            [0x55, 0x05, 3, 0, 0x45, 0x23, 0x01, 0]
        );
        assert_eq!(
            insn(ALU64_MOV_K, 0, 0, 0, 1).encode(),
            [0xb7, 0, 0, 0, 1, 0, 0, 0]
        );
        // The prologue, then the default-deny epilogue for an empty deny-all policy.
        let p = Policy::from_rules(&rules(serde_json::json!([{"allow": false}]))).expect("p");
        let bytes = encode(&program(&p));
        assert_eq!(bytes.len(), 8 * 8);
        assert_eq!(
            &bytes[48..],
            [0xb7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0]
        );
    }
}
