//! cgroup v2 device filter: an eBPF `BPF_PROG_TYPE_CGROUP_DEVICE` program generated from the rule
//! list (in the manner of runc's devicefilter), loaded and attached with bpf(2).
//!
//! Semantics, the same as the v1 rendering: rules apply in order and, for each access bit the
//! kernel asks about (read, write, mknod), the last rule that matches the device and carries that
//! bit decides; a request is allowed only if every bit is; nothing matches → denied. An "a" rule
//! matches every device and bit, as v1's "a" does.
//!
//! Program shape (context `struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }`,
//! `access_type = access << 16 | type`):
//! ```text
//!   r2 = type, r3 = access, r4 = major, r5 = minor
//!   for bit in [read, write, mknod]:
//!       if r3 & bit == 0: goto next_bit
//!       for rule in rules (last first) having bit:
//!           if r2 != rule.type / r4 != rule.major / r5 != rule.minor: goto next_rule
//!           goto rule.allow ? next_bit : deny
//!       goto deny
//!   next_bit (after the last): r0 = 1; exit
//!   deny: r0 = 0; exit
//! ```

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use super::devices::{DeviceKind, DeviceRule, ACC_MKNOD, ACC_READ, ACC_WRITE};
use super::{invalid, CgroupError};

/// One eBPF instruction (`struct bpf_insn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    /// Opcode.
    pub code: u8,
    /// Destination register.
    pub dst: u8,
    /// Source register.
    pub src: u8,
    /// Jump or memory offset.
    pub off: i16,
    /// Immediate.
    pub imm: i32,
}

impl Insn {
    /// The kernel's 8-byte encoding (little-endian host assumed for the register nibbles, as on
    /// every architecture berth supports).
    pub fn encode(&self) -> u64 {
        let mut b = [0u8; 8];
        b[0] = self.code;
        b[1] = (self.dst & 0x0f) | (self.src << 4);
        b[2..4].copy_from_slice(&self.off.to_ne_bytes());
        b[4..8].copy_from_slice(&self.imm.to_ne_bytes());
        u64::from_ne_bytes(b)
    }
}

// Opcodes used.
pub(crate) const LDX_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
pub(crate) const AND32_K: u8 = 0x54; // BPF_ALU | BPF_AND | BPF_K
pub(crate) const RSH32_K: u8 = 0x74; // BPF_ALU | BPF_RSH | BPF_K
pub(crate) const MOV32_K: u8 = 0xb4; // BPF_ALU | BPF_MOV | BPF_K
pub(crate) const MOV32_X: u8 = 0xbc; // BPF_ALU | BPF_MOV | BPF_X
pub(crate) const JA: u8 = 0x05; // BPF_JMP | BPF_JA
pub(crate) const JEQ_K: u8 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
pub(crate) const JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
pub(crate) const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

/// BPF_DEVCG_DEV_BLOCK
pub(crate) const DEV_BLOCK: i32 = 1;
/// BPF_DEVCG_DEV_CHAR
pub(crate) const DEV_CHAR: i32 = 2;

const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R5: u8 = 5;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        dst,
        src,
        off,
        imm,
    }
}

#[derive(Clone, Copy)]
struct Label(usize);

/// A tiny assembler with forward labels.
#[derive(Default)]
struct Asm {
    insns: Vec<Insn>,
    labels: Vec<Option<usize>>,
    fixups: Vec<(usize, Label)>,
}

impl Asm {
    fn push(&mut self, i: Insn) {
        self.insns.push(i);
    }
    fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }
    fn bind(&mut self, l: Label) {
        self.labels[l.0] = Some(self.insns.len());
    }
    fn jump(&mut self, code: u8, dst: u8, imm: i32, target: Label) {
        self.fixups.push((self.insns.len(), target));
        self.push(insn(code, dst, 0, 0, imm));
    }
    fn finish(mut self) -> Result<Vec<Insn>, CgroupError> {
        for (at, l) in &self.fixups {
            let target = self.labels[l.0].ok_or_else(|| {
                invalid(
                    "linux.resources.devices",
                    "internal error: unbound eBPF label",
                )
            })?;
            let off = i16::try_from(target as i64 - (*at as i64 + 1)).map_err(|_| {
                invalid(
                    "linux.resources.devices",
                    "too many rules for one eBPF device filter",
                )
            })?;
            self.insns[*at].off = off;
        }
        Ok(self.insns)
    }
}

/// Generates the device filter program for checked rules (see the module docs for semantics).
pub fn device_filter_program(rules: &[DeviceRule]) -> Result<Vec<Insn>, CgroupError> {
    let mut a = Asm::default();
    // r2 = type (low 16 bits of access_type), r3 = access (high 16 bits), r4 = major, r5 = minor
    a.push(insn(LDX_W, R2, R1, 0, 0));
    a.push(insn(AND32_K, R2, 0, 0, 0xffff));
    a.push(insn(LDX_W, R3, R1, 0, 0));
    a.push(insn(RSH32_K, R3, 0, 0, 16));
    a.push(insn(LDX_W, R4, R1, 4, 0));
    a.push(insn(LDX_W, R5, R1, 8, 0));
    let deny = a.label();
    let mut deny_used = false;
    for bit in [ACC_READ, ACC_WRITE, ACC_MKNOD] {
        let next_bit = a.label();
        a.push(insn(MOV32_X, R0, R3, 0, 0));
        a.push(insn(AND32_K, R0, 0, 0, i32::from(bit)));
        a.jump(JEQ_K, R0, 0, next_bit);
        let mut decided = false;
        for r in rules.iter().rev() {
            let type_val = match r.kind {
                DeviceKind::All => None,
                DeviceKind::Char => Some(DEV_CHAR),
                DeviceKind::Block => Some(DEV_BLOCK),
            };
            if type_val.is_some() && r.access & bit == 0 {
                continue;
            }
            let next_rule = a.label();
            if let Some(t) = type_val {
                a.jump(JNE_K, R2, t, next_rule);
                if let Some(major) = r.major {
                    a.jump(JNE_K, R4, major as i32, next_rule);
                }
                if let Some(minor) = r.minor {
                    a.jump(JNE_K, R5, minor as i32, next_rule);
                }
            }
            if r.allow {
                a.jump(JA, 0, 0, next_bit);
            } else {
                a.jump(JA, 0, 0, deny);
                deny_used = true;
            }
            a.bind(next_rule);
            if type_val.is_none() {
                // Matches everything: the rules before it can never decide this bit (and code
                // for them would be unreachable, which the verifier rejects).
                decided = true;
                break;
            }
        }
        if !decided {
            a.jump(JA, 0, 0, deny);
            deny_used = true;
        }
        a.bind(next_bit);
    }
    a.push(insn(MOV32_K, R0, 0, 0, 1));
    a.push(insn(EXIT, 0, 0, 0, 0));
    if deny_used {
        a.bind(deny);
        a.push(insn(MOV32_K, R0, 0, 0, 0));
        a.push(insn(EXIT, 0, 0, 0, 0));
    }
    a.finish()
}

// bpf(2) commands and constants (linux/bpf.h).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_DETACH: libc::c_long = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// The BPF_PROG_LOAD part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
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

/// The BPF_PROG_ATTACH / BPF_PROG_DETACH part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// The BPF_PROG_QUERY part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    pad: u32,
}

/// The BPF_PROG_GET_FD_BY_ID part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct GetFdAttr {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

/// bpf(2).
///
/// # Safety
/// `attr` must be the `union bpf_attr` prefix that `cmd` expects, and every address stored in it
/// must point to memory that is valid (and writable where the kernel writes) for the whole call.
unsafe fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: the caller guarantees `attr` is a correctly laid out bpf_attr prefix whose embedded
    // pointers are valid; the size passed is exactly that of `T`, so the kernel reads no further.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn owned_fd(fd: libc::c_long) -> io::Result<OwnedFd> {
    let fd = i32::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: `fd` was just returned by bpf(2) as a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn bpf_err(op: &'static str, dir: &Path, cause: io::Error, log: String) -> CgroupError {
    CgroupError::Bpf {
        op,
        dir: dir.to_path_buf(),
        cause,
        log,
    }
}

/// Loads a device program into the kernel (the verifier checks it). `dir` is for messages.
pub(crate) fn load(insns: &[Insn], dir: &Path) -> Result<OwnedFd, CgroupError> {
    let code: Vec<u64> = insns.iter().map(Insn::encode).collect();
    let license = b"Apache\0";
    let mut name = [0u8; 16];
    name[..13].copy_from_slice(b"berth_devices");
    let try_load = |log: &mut [u8]| -> io::Result<OwnedFd> {
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
            insn_cnt: code.len() as u32,
            insns: code.as_ptr() as u64,
            license: license.as_ptr() as u64,
            prog_name: name,
            ..Default::default()
        };
        if !log.is_empty() {
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
        }
        // SAFETY: attr is a BPF_PROG_LOAD attr; insns, license (NUL-terminated) and log point to
        // live buffers of the stated sizes that outlive the call.
        let fd = unsafe { sys_bpf(BPF_PROG_LOAD, &mut attr)? };
        owned_fd(fd)
    };
    match try_load(&mut []) {
        Ok(fd) => Ok(fd),
        Err(cause) => {
            // Load again with the verifier log, for the error message.
            let mut log = vec![0u8; 1 << 18];
            let _ = try_load(&mut log);
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            Err(bpf_err(
                "loading",
                dir,
                cause,
                String::from_utf8_lossy(&log[..end]).into_owned(),
            ))
        }
    }
}

/// Programs attached directly to the cgroup for BPF_CGROUP_DEVICE, and their attach flags.
fn query(cg: &File, dir: &Path) -> Result<(Vec<u32>, u32), CgroupError> {
    let mut ids = vec![0u32; 64];
    loop {
        let mut attr = QueryAttr {
            target_fd: cg.as_raw_fd() as u32,
            attach_type: BPF_CGROUP_DEVICE,
            prog_ids: ids.as_mut_ptr() as u64,
            prog_cnt: ids.len() as u32,
            ..Default::default()
        };
        // SAFETY: attr is a BPF_PROG_QUERY attr; prog_ids points to `prog_cnt` writable u32s.
        match unsafe { sys_bpf(BPF_PROG_QUERY, &mut attr) } {
            Ok(_) => {
                ids.truncate(attr.prog_cnt as usize);
                return Ok((ids, attr.attach_flags));
            }
            Err(e)
                if e.raw_os_error() == Some(libc::ENOSPC) && attr.prog_cnt as usize > ids.len() =>
            {
                ids = vec![0u32; attr.prog_cnt as usize];
            }
            Err(cause) => return Err(bpf_err("querying", dir, cause, String::new())),
        }
    }
}

/// Loads the filter for `rules` and attaches it to the cgroup v2 directory `dir`, replacing any
/// device filter attached there before (so `apply` can be repeated for updates).
pub(crate) fn apply_device_filter(dir: &Path, rules: &[DeviceRule]) -> Result<(), CgroupError> {
    let insns = device_filter_program(rules)?;
    let cg = File::open(dir).map_err(|cause| CgroupError::Io {
        op: "opening",
        path: PathBuf::from(dir),
        cause,
    })?;
    let (old, old_flags) = query(&cg, dir)?;
    let prog = load(&insns, dir)?;
    // A single program attached without BPF_F_ALLOW_MULTI is replaced by attaching with the same
    // flags; otherwise attach alongside and detach the old ones afterwards, so that there is no
    // moment without a filter.
    let replace_in_place = !old.is_empty() && old_flags & BPF_F_ALLOW_MULTI == 0;
    let mut attr = AttachAttr {
        target_fd: cg.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: if replace_in_place {
            old_flags
        } else {
            BPF_F_ALLOW_MULTI
        },
        replace_bpf_fd: 0,
    };
    // SAFETY: attr is a BPF_PROG_ATTACH attr holding only descriptors and flags, no pointers.
    unsafe { sys_bpf(BPF_PROG_ATTACH, &mut attr) }
        .map_err(|cause| bpf_err("attaching", dir, cause, String::new()))?;
    if replace_in_place {
        return Ok(());
    }
    for id in old {
        let mut get = GetFdAttr {
            prog_id: id,
            ..Default::default()
        };
        // SAFETY: attr is a BPF_PROG_GET_FD_BY_ID attr holding only integers.
        let old_fd = match unsafe { sys_bpf(BPF_PROG_GET_FD_BY_ID, &mut get) } {
            Ok(fd) => owned_fd(fd).map_err(|e| bpf_err("detaching old", dir, e, String::new()))?,
            // Detached meanwhile.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(cause) => return Err(bpf_err("detaching old", dir, cause, String::new())),
        };
        let mut attr = AttachAttr {
            target_fd: cg.as_raw_fd() as u32,
            attach_bpf_fd: old_fd.as_raw_fd() as u32,
            attach_type: BPF_CGROUP_DEVICE,
            ..Default::default()
        };
        // SAFETY: attr is a BPF_PROG_DETACH attr holding only descriptors, no pointers.
        match unsafe { sys_bpf(BPF_PROG_DETACH, &mut attr) } {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(cause) => return Err(bpf_err("detaching old", dir, cause, String::new())),
        }
    }
    Ok(())
}

/// Number of device programs attached directly to a cgroup (for tests).
#[cfg(test)]
pub(crate) fn attached_count(dir: &Path) -> Result<usize, CgroupError> {
    let cg = File::open(dir).map_err(|cause| CgroupError::Io {
        op: "opening",
        path: PathBuf::from(dir),
        cause,
    })?;
    Ok(query(&cg, dir)?.0.len())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::devices::normalize;
    use super::*;
    use oci_spec::runtime::LinuxDeviceCgroup;

    /// Checks what the kernel verifier would reject in programs of this shape: jumps out of range
    /// or backwards, unreachable instructions, falling off the end.
    pub(crate) fn check_cfg(prog: &[Insn]) {
        let mut reach = vec![false; prog.len()];
        let mut todo = vec![0usize];
        while let Some(pc) = todo.pop() {
            assert!(pc < prog.len(), "falls off the end");
            if reach[pc] {
                continue;
            }
            reach[pc] = true;
            let i = prog[pc];
            let target = || {
                let t = pc as i64 + 1 + i64::from(i.off);
                assert!(i.off >= 0, "backward jump at {pc}");
                assert!((t as usize) < prog.len(), "jump out of range at {pc}");
                t as usize
            };
            match i.code {
                EXIT => {}
                JA => todo.push(target()),
                JEQ_K | JNE_K => {
                    todo.push(target());
                    todo.push(pc + 1);
                }
                _ => todo.push(pc + 1),
            }
        }
        if let Some(pc) = reach.iter().position(|r| !r) {
            panic!("unreachable insn {pc}");
        }
    }

    /// A tiny eBPF interpreter for the instructions the generator emits. `ctx` is
    /// `bpf_cgroup_dev_ctx`: [access << 16 | type, major, minor].
    pub(crate) fn run(prog: &[Insn], ctx: [u32; 3]) -> u64 {
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        for _ in 0..1_000_000 {
            let i = prog[pc];
            pc += 1;
            let d = usize::from(i.dst);
            let jump = |pc: usize| (pc as i64 + i64::from(i.off)) as usize;
            match i.code {
                LDX_W => {
                    assert_eq!(i.src, R1, "loads only from the context");
                    assert!(i.off % 4 == 0 && (0..12).contains(&i.off));
                    r[d] = u64::from(ctx[i.off as usize / 4]);
                }
                AND32_K => r[d] = u64::from(r[d] as u32 & i.imm as u32),
                RSH32_K => r[d] = u64::from((r[d] as u32) >> i.imm),
                MOV32_K => r[d] = u64::from(i.imm as u32),
                MOV32_X => r[d] = u64::from(r[usize::from(i.src)] as u32),
                JA => pc = jump(pc),
                JEQ_K => {
                    if r[d] == i64::from(i.imm) as u64 {
                        pc = jump(pc)
                    }
                }
                JNE_K => {
                    if r[d] != i64::from(i.imm) as u64 {
                        pc = jump(pc)
                    }
                }
                EXIT => return r[0],
                c => panic!("opcode {c:#x} not supported by the test interpreter"),
            }
        }
        panic!("program does not terminate");
    }

    /// The semantics the program must implement, written directly.
    fn reference(
        rules: &[DeviceRule],
        kind: DeviceKind,
        major: u32,
        minor: u32,
        access: u8,
    ) -> bool {
        [ACC_READ, ACC_WRITE, ACC_MKNOD]
            .into_iter()
            .filter(|bit| access & bit != 0)
            .all(|bit| {
                rules
                    .iter()
                    .rev()
                    .find(|r| {
                        r.kind == DeviceKind::All
                            || (r.kind == kind
                                && r.access & bit != 0
                                && r.major.is_none_or(|m| m == major)
                                && r.minor.is_none_or(|m| m == minor))
                    })
                    .is_some_and(|r| r.allow)
            })
    }

    /// Rule sets of every shape: empty, all, none, partial access, wildcards, "a" in the middle.
    pub(crate) const RULE_SETS: [&str; 7] = [
        DOCKERISH,
        "[]",
        r#"[{"allow":true}]"#,
        r#"[{"allow":false}]"#,
        r#"[{"allow":true,"type":"c","access":"r"},{"allow":false,"type":"c","major":1,"access":"rw"},{"allow":true,"type":"c","major":1,"minor":5,"access":"w"}]"#,
        r#"[{"allow":true,"type":"b","major":8},{"allow":false,"type":"b","major":8,"minor":0,"access":"m"},{"allow":true,"type":"c","minor":3,"access":"rm"}]"#,
        r#"[{"allow":false,"type":"c","major":1,"minor":3},{"allow":true},{"allow":false,"type":"b","access":"w"}]"#,
    ];

    pub(crate) fn parse_rules(json: &str) -> Vec<DeviceRule> {
        let rules: Vec<LinuxDeviceCgroup> = serde_json::from_str(json).unwrap();
        normalize(&rules).unwrap()
    }

    fn access_bits(s: &str) -> u8 {
        s.chars()
            .map(|c| match c {
                'r' => ACC_READ,
                'w' => ACC_WRITE,
                'm' => ACC_MKNOD,
                _ => panic!("{c}"),
            })
            .fold(0, |a, b| a | b)
    }

    fn eval(prog: &[Insn], kind: char, major: u32, minor: u32, access: &str) -> bool {
        let t = match kind {
            'c' => DEV_CHAR as u32,
            'b' => DEV_BLOCK as u32,
            _ => panic!("{kind}"),
        };
        run(
            prog,
            [u32::from(access_bits(access)) << 16 | t, major, minor],
        ) == 1
    }

    /// The usual container rule set: deny all, then an allow list.
    pub(crate) const DOCKERISH: &str = r#"[
        {"allow":false,"access":"rwm"},
        {"allow":true,"type":"c","major":1,"minor":3,"access":"rwm"},
        {"allow":true,"type":"c","major":1,"minor":5,"access":"rwm"},
        {"allow":true,"type":"c","major":136,"access":"rwm"},
        {"allow":true,"type":"c","access":"m"},
        {"allow":true,"type":"b","access":"m"},
        {"allow":true,"type":"c","major":10,"minor":200,"access":"rw"}
    ]"#;

    #[test]
    fn data_driven_decisions() {
        // (rules, [(type, major, minor, access, allowed)])
        type Case = (char, u32, u32, &'static str, bool);
        let cases: &[(&str, &[Case])] = &[
            (
                DOCKERISH,
                &[
                    ('c', 1, 3, "rw", true),
                    ('c', 1, 3, "m", true),
                    ('c', 1, 5, "r", true),
                    ('c', 1, 7, "r", false),
                    ('c', 1, 7, "m", true),
                    ('b', 8, 0, "m", true),
                    ('b', 8, 0, "r", false),
                    ('b', 1, 3, "r", false),
                    ('c', 136, 4, "rw", true),
                    ('c', 137, 4, "rw", false),
                    ('c', 10, 200, "rw", true),
                    ('c', 10, 200, "rwm", true),
                    ('c', 10, 201, "rw", false),
                ],
            ),
            // No rules: everything denied.
            ("[]", &[('c', 1, 3, "r", false), ('b', 8, 0, "m", false)]),
            // Allow all.
            (
                r#"[{"allow":true,"access":"rwm"}]"#,
                &[('c', 1, 3, "rwm", true), ('b', 8, 0, "w", true)],
            ),
            // Allow all, then deny writing one device: last match wins per bit.
            (
                r#"[{"allow":true},{"allow":false,"type":"c","major":1,"minor":3,"access":"w"}]"#,
                &[
                    ('c', 1, 3, "r", true),
                    ('c', 1, 3, "w", false),
                    ('c', 1, 3, "rw", false),
                    ('c', 1, 5, "rw", true),
                ],
            ),
            // Allow rwm, then deny w on the same device; a later allow of w wins again.
            (
                r#"[{"allow":true,"type":"c","major":1,"minor":3},
                    {"allow":false,"type":"c","major":1,"minor":3,"access":"w"},
                    {"allow":true,"type":"c","major":1,"minor":3,"access":"w"}]"#,
                &[('c', 1, 3, "rw", true), ('c', 1, 3, "m", true)],
            ),
            // Split access across two allow rules: both bits allowed.
            (
                r#"[{"allow":true,"type":"c","major":4,"minor":1,"access":"r"},
                    {"allow":true,"type":"c","major":4,"minor":1,"access":"w"}]"#,
                &[('c', 4, 1, "rw", true), ('c', 4, 1, "m", false)],
            ),
            // Wildcard major with specific minor; block vs char.
            (
                r#"[{"allow":true,"type":"b","minor":0,"access":"r"}]"#,
                &[
                    ('b', 8, 0, "r", true),
                    ('b', 259, 0, "r", true),
                    ('b', 8, 1, "r", false),
                    ('c', 8, 0, "r", false),
                ],
            ),
            // A deny-all after allows wins over them.
            (
                r#"[{"allow":true,"type":"c","major":1,"minor":3},{"allow":false}]"#,
                &[('c', 1, 3, "r", false)],
            ),
        ];
        for (rules_json, checks) in cases {
            let rules = parse_rules(rules_json);
            let prog = device_filter_program(&rules).unwrap();
            check_cfg(&prog);
            for &(kind, major, minor, access, want) in *checks {
                assert_eq!(
                    eval(&prog, kind, major, minor, access),
                    want,
                    "rules {rules_json}: {kind} {major}:{minor} {access}"
                );
            }
        }
    }

    #[test]
    fn matches_reference_semantics_exhaustively() {
        let mut checked = 0;
        for json in RULE_SETS {
            let rules = parse_rules(json);
            let prog = device_filter_program(&rules).unwrap();
            check_cfg(&prog);
            for (kind, t) in [(DeviceKind::Char, DEV_CHAR), (DeviceKind::Block, DEV_BLOCK)] {
                for major in [0, 1, 8, 136] {
                    for minor in [0, 3, 5] {
                        for access in 1..=7u8 {
                            let got =
                                run(&prog, [u32::from(access) << 16 | t as u32, major, minor]);
                            let want = reference(&rules, kind, major, minor, access);
                            assert_eq!(
                                got == 1,
                                want,
                                "{json}: {kind:?} {major}:{minor} access {access}"
                            );
                            checked += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(checked, 7 * 2 * 4 * 3 * 7);
    }

    #[test]
    fn encoding_and_shape() {
        let i = insn(JNE_K, R4, 0, -2, 136);
        let b = i.encode().to_ne_bytes();
        assert_eq!(b[0], 0x55);
        assert_eq!(b[1], 0x04);
        assert_eq!(i16::from_ne_bytes([b[2], b[3]]), -2);
        assert_eq!(i32::from_ne_bytes([b[4], b[5], b[6], b[7]]), 136);
        let mov = insn(MOV32_X, R0, R3, 0, 0).encode().to_ne_bytes();
        assert_eq!(mov[1], 0x30);
        // Empty rule list: prologue, three sections that jump to deny, allow tail, deny tail.
        let prog = device_filter_program(&[]).unwrap();
        assert_eq!(prog.len(), 6 + 3 * 4 + 2 + 2);
        check_cfg(&prog);
        // Allow-all has no deny block at all (it would be unreachable).
        let prog = device_filter_program(&parse_rules(r#"[{"allow":true}]"#)).unwrap();
        assert!(!prog.iter().any(|i| i.code == MOV32_K && i.imm == 0));
        check_cfg(&prog);
    }

    #[test]
    fn too_many_rules_is_an_error_not_a_bad_program() {
        let one = r#"{"allow":true,"type":"c","major":1,"minor":3,"access":"rwm"}"#;
        // 3000 rules still fit the 16-bit jump offsets; 6000 do not.
        let json = format!("[{}]", vec![one; 3000].join(","));
        let prog = device_filter_program(&parse_rules(&json)).unwrap();
        check_cfg(&prog);
        assert!(eval(&prog, 'c', 1, 3, "rw"));
        let json = format!("[{}]", vec![one; 6000].join(","));
        let e = device_filter_program(&parse_rules(&json)).map(|p| p.len());
        assert_eq!(
            e.map_err(|e| e.to_string()),
            Err("linux.resources.devices: too many rules for one eBPF device filter".to_string())
        );
    }
}
