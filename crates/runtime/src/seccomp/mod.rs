//! Compiles an OCI seccomp profile (`linux.seccomp`) to a classic BPF program and installs it.
//!
//! This is a pure-Rust replacement for the part of libseccomp that runc uses: no C library is
//! involved, the BPF program is generated here and handed to `seccomp(2)` directly. The filter
//! always targets an x86_64 kernel (the native architecture); [`install`] refuses to run on any
//! other host architecture.
//!
//! # Program layout
//!
//! ```text
//! ld  arch
//! jeq AUDIT_ARCH_X86_64 -> x86_64 (and x32) part
//! jeq AUDIT_ARCH_I386   -> i386 part           (only when SCMP_ARCH_X86 is listed)
//! ret KILL_PROCESS                              (any other architecture)
//! x86_64 part: ld nr; nr >= __X32_SYSCALL_BIT and nr != -1 ?
//!              x32 search tree (SCMP_ARCH_X32 listed) or KILL_PROCESS : x86_64 search tree
//! ```
//!
//! Each search tree is a balanced binary search (`jge`) over the sorted syscall numbers, where
//! runs of neighbouring numbers with the same unconditional verdict are merged into one range, so
//! a syscall costs about log2(ranges) comparisons and Docker's default profile for three ABIs
//! compiles to a few hundred instructions. A leaf is either a `ret` or the argument checks of
//! that syscall. The program is emitted back to front, so every jump target is already placed
//! when the jump is emitted; a conditional jump whose target is more than 255 instructions away
//! goes through a trampoline (a copy of the target `ret`, or a `ja` with a 32-bit offset).
//!
//! # Rules
//!
//! * **Architectures.** The native ABI (x86_64) is always filtered, as with libseccomp, where
//!   the native architecture is part of every filter; `SCMP_ARCH_NATIVE` and `SCMP_ARCH_X86_64`
//!   name it. `SCMP_ARCH_X86` adds the i386 ABI (i386 syscall numbers), `SCMP_ARCH_X32` the x32
//!   ABI (x32 numbers, which carry `__X32_SYSCALL_BIT`, under `AUDIT_ARCH_X86_64`). An absent or
//!   empty `architectures` means x86_64 only. Other architectures can never be reported by an
//!   x86_64 kernel and are ignored. A syscall made through an ABI that is not filtered gets
//!   `SECCOMP_RET_KILL_PROCESS`, whatever `defaultAction` says; in particular an x32 syscall
//!   (`__X32_SYSCALL_BIT` set) when `SCMP_ARCH_X32` is not listed can never bypass the filter.
//!   The number -1 (a syscall skipped by a ptrace tracer) is not treated as x32: it gets
//!   `defaultAction`.
//! * **Syscall names.** Every name is looked up in the syscall table of each filtered ABI and
//!   yields a rule for each ABI that has it. A name that is a Linux syscall but not on a filtered
//!   ABI (for example `socketcall` without `SCMP_ARCH_X86`, or `arm_fadvise64_64`, which Docker
//!   lists for ARM) is ignored, as libseccomp and runc do. A name that is not a syscall on any
//!   architecture known here (the x86_64, i386 and x32 tables of Linux 6.19 plus libseccomp's
//!   names for the other architectures) is an error naming the entry and the name: it is almost
//!   certainly a typo, and silently dropping it could leave a syscall unfiltered.
//! * **Precedence.** For one syscall, the entries that have `args` are tried first, in profile
//!   order; the first whose conditions all hold decides. Then the first entry without `args`
//!   decides (later unconditional entries for the same syscall are ignored). Otherwise
//!   `defaultAction` applies. Several entries with `args` for one syscall are therefore ORed.
//! * **Arguments.** At most six conditions per entry, all of which must hold (AND), also when
//!   several of them test the same argument index (libseccomp and crun behave so; runc instead
//!   ORs conditions that share an index). Comparisons are unsigned 64-bit; `SCMP_CMP_MASKED_EQ`
//!   means `(arg & value) == valueTwo` (`valueTwo` defaults to 0). On the 32-bit ABIs (i386,
//!   x32) only the low 32 bits of an argument are inspected, as libseccomp does, and its high
//!   word counts as 0 (so `SCMP_CMP_EQ` with a value above `u32::MAX` never matches there).
//! * **Actions.** `SCMP_ACT_KILL` and `SCMP_ACT_KILL_THREAD` kill the thread,
//!   `SCMP_ACT_KILL_PROCESS` the process; `SCMP_ACT_TRAP`, `SCMP_ACT_LOG`, `SCMP_ACT_ALLOW` map to
//!   their `SECCOMP_RET_*`. `SCMP_ACT_ERRNO` and `SCMP_ACT_TRACE` carry `errnoRet`
//!   (`defaultErrnoRet` for `defaultAction`), EPERM when absent, at most 65535. `errnoRet` with
//!   any other action is an error, as the runtime spec requires. `SCMP_ACT_NOTIFY` (seccomp user
//!   notification with `listenerPath`) is not supported and is an error.
//! * **Flags.** `SECCOMP_FILTER_FLAG_TSYNC`, `_LOG` and `_SPEC_ALLOW` are passed to `seccomp(2)`.
//!   `SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV` only applies to a notification listener, which is
//!   never created here, so it is ignored (libseccomp drops it likewise when no rule notifies).
//!
//! The syscall tables in the `syscalls_*.rs` files are generated, sorted by name.

mod syscalls_other;
mod syscalls_x32;
mod syscalls_x86;
mod syscalls_x86_64;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag,
    LinuxSeccompOperator,
};

/// The kernel's limit on the length of a classic BPF program.
pub const BPF_MAXINSNS: usize = 4096;

/// `SECCOMP_RET_KILL_PROCESS`: kill the whole process.
pub const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
/// `SECCOMP_RET_KILL_THREAD`: kill the calling thread.
pub const SECCOMP_RET_KILL_THREAD: u32 = 0x0000_0000;
/// `SECCOMP_RET_TRAP`: send SIGSYS.
pub const SECCOMP_RET_TRAP: u32 = 0x0003_0000;
/// `SECCOMP_RET_ERRNO`: fail with the errno in the low 16 bits.
pub const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
/// `SECCOMP_RET_TRACE`: notify a ptrace tracer, message in the low 16 bits.
pub const SECCOMP_RET_TRACE: u32 = 0x7ff0_0000;
/// `SECCOMP_RET_LOG`: allow after logging.
pub const SECCOMP_RET_LOG: u32 = 0x7ffc_0000;
/// `SECCOMP_RET_ALLOW`: allow.
pub const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;

/// `AUDIT_ARCH_X86_64`, the `seccomp_data.arch` of x86_64 and x32 syscalls.
pub const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// `AUDIT_ARCH_I386`, the `seccomp_data.arch` of i386 syscalls.
pub const AUDIT_ARCH_I386: u32 = 0x4000_0003;
/// `__X32_SYSCALL_BIT`, set in the syscall number of every x32 syscall.
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const SECCOMP_RET_DATA: u32 = 0x0000_ffff;
const SECCOMP_SET_MODE_FILTER: libc::c_ulong = 1;
const SECCOMP_FILTER_FLAG_TSYNC: libc::c_ulong = 1 << 0;
const SECCOMP_FILTER_FLAG_LOG: libc::c_ulong = 1 << 1;
const SECCOMP_FILTER_FLAG_SPEC_ALLOW: libc::c_ulong = 1 << 2;

/// Most conditions one entry may carry (one per syscall argument, as in libseccomp).
const MAX_CONDITIONS: usize = 6;
/// Syscall arguments in `seccomp_data`.
const SYSCALL_ARGS: usize = 6;

// Classic BPF opcodes (<linux/filter.h>).
const BPF_LD: u16 = 0x00;
const BPF_ALU: u16 = 0x04;
const BPF_JMP: u16 = 0x05;
const BPF_RET: u16 = 0x06;
const BPF_W: u16 = 0x00;
const BPF_ABS: u16 = 0x20;
const BPF_K: u16 = 0x00;
const BPF_AND: u16 = 0x50;
const BPF_JA: u16 = 0x00;
const BPF_JEQ: u16 = 0x10;
const BPF_JGT: u16 = 0x20;
const BPF_JGE: u16 = 0x30;
const BPF_JSET: u16 = 0x40;

// Offsets in `struct seccomp_data` (x86 is little-endian: an argument's low word comes first).
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
const DATA_ARGS: u32 = 16;

/// A compiled seccomp filter: a classic BPF program for an x86_64 kernel.
#[derive(Clone)]
pub struct Filter {
    insns: Vec<libc::sock_filter>,
}

impl Filter {
    /// The BPF instructions, in execution order.
    pub fn instructions(&self) -> &[libc::sock_filter] {
        &self.insns
    }

    /// Number of BPF instructions (at most [`BPF_MAXINSNS`]).
    pub fn len(&self) -> usize {
        self.insns.len()
    }

    /// Whether the program is empty (never true for a compiled filter).
    pub fn is_empty(&self) -> bool {
        self.insns.is_empty()
    }
}

impl fmt::Debug for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Filter")
            .field("instructions", &self.insns.len())
            .finish()
    }
}

/// Errors from compiling or installing a seccomp profile.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// A syscall name that is not a Linux syscall on any known architecture.
    #[error("{field}: unknown syscall {name:?}")]
    UnknownSyscall {
        /// The offending field, e.g. `linux.seccomp.syscalls[3].names`.
        field: String,
        /// The name as given.
        name: String,
    },
    /// An entry with an empty `names` list.
    #[error("{field}: must name at least one syscall")]
    EmptyNames {
        /// The offending field.
        field: String,
    },
    /// `SCMP_ACT_NOTIFY` as an action.
    #[error("{field}: SCMP_ACT_NOTIFY requires listenerPath, not supported")]
    NotifyUnsupported {
        /// The offending field.
        field: String,
    },
    /// `errnoRet`/`defaultErrnoRet` given for an action that returns no errno.
    #[error("{field}: only allowed with SCMP_ACT_ERRNO or SCMP_ACT_TRACE, not {action}")]
    ErrnoRetNotAllowed {
        /// The offending field.
        field: String,
        /// The action it was given with.
        action: LinuxSeccompAction,
    },
    /// `errnoRet`/`defaultErrnoRet` that does not fit the 16-bit `SECCOMP_RET_DATA`.
    #[error("{field}: {value} is out of range (at most 65535)")]
    ErrnoRetOutOfRange {
        /// The offending field.
        field: String,
        /// The value given.
        value: u32,
    },
    /// More than six conditions in one entry.
    #[error("{field}: {count} conditions, at most 6 allowed")]
    TooManyConditions {
        /// The offending field.
        field: String,
        /// Number of conditions given.
        count: usize,
    },
    /// A condition on an argument index above 5.
    #[error("{field}: argument index {index} is out of range (at most 5)")]
    ArgIndexOutOfRange {
        /// The offending field.
        field: String,
        /// The index given.
        index: usize,
    },
    /// The compiled program is longer than the kernel accepts.
    #[error("linux.seccomp: compiled filter has {count} instructions, more than the kernel limit of 4096")]
    FilterTooLarge {
        /// Number of instructions.
        count: usize,
    },
    /// The running kernel does not know a requested filter flag.
    #[error("flags: {flag} is not supported by the running kernel")]
    UnsupportedFlag {
        /// The flag.
        flag: LinuxSeccompFilterFlag,
    },
    /// `SECCOMP_FILTER_FLAG_TSYNC` could not synchronize another thread.
    #[error(
        "flags: SECCOMP_FILTER_FLAG_TSYNC: thread {tid} could not be synchronized to the filter"
    )]
    TsyncFailed {
        /// The thread that could not be synchronized.
        tid: i64,
    },
    /// `seccomp(2)` returned EACCES.
    #[error("seccomp(SECCOMP_SET_MODE_FILTER): permission denied (no_new_privs is not set and CAP_SYS_ADMIN is missing)")]
    PermissionDenied,
    /// Any other `seccomp(2)` failure.
    #[error("seccomp(SECCOMP_SET_MODE_FILTER): {0}")]
    Install(io::Error),
    /// The filter targets x86_64 but this runtime runs on another architecture.
    #[error("seccomp filters are compiled for x86_64 and cannot be installed on {arch}")]
    UnsupportedHostArch {
        /// The host architecture.
        arch: &'static str,
    },
}

/// The syscall ABIs an x86_64 kernel can report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Abi {
    X86_64,
    X86,
    X32,
}

impl Abi {
    const ALL: [Abi; 3] = [Abi::X86_64, Abi::X86, Abi::X32];

    fn table(self) -> &'static [(&'static str, u32)] {
        match self {
            Abi::X86_64 => syscalls_x86_64::X86_64,
            Abi::X86 => syscalls_x86::X86,
            Abi::X32 => syscalls_x32::X32,
        }
    }

    fn index(self) -> usize {
        match self {
            Abi::X86_64 => 0,
            Abi::X86 => 1,
            Abi::X32 => 2,
        }
    }

    /// Whether the kernel passes 64-bit arguments that are compared in full.
    fn wide_args(self) -> bool {
        self == Abi::X86_64
    }

    fn syscall_number(self, name: &str) -> Option<u32> {
        let table = self.table();
        table
            .binary_search_by(|(n, _)| (*n).cmp(name))
            .ok()
            .map(|i| table[i].1)
    }
}

/// Whether `name` is a syscall on any architecture known here.
fn known_syscall(name: &str) -> bool {
    Abi::ALL
        .iter()
        .any(|abi| abi.syscall_number(name).is_some())
        || syscalls_other::OTHER_ARCH_ONLY
            .binary_search_by(|n| (*n).cmp(name))
            .is_ok()
}

/// Looks up the number of syscall `name` for an ABI: `Some` for an x86_64 (`"x86_64"`), i386
/// (`"x86"`) or x32 (`"x32"`, number including `__X32_SYSCALL_BIT`) syscall.
pub fn syscall_number(abi: &str, name: &str) -> Option<u32> {
    let abi = match abi {
        "x86_64" => Abi::X86_64,
        "x86" => Abi::X86,
        "x32" => Abi::X32,
        _ => return None,
    };
    abi.syscall_number(name)
}

/// One argument condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cond {
    index: u32,
    op: LinuxSeccompOperator,
    value: u64,
    value_two: u64,
}

/// Conditions (ANDed) and the verdict when they all hold.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    conds: Vec<Cond>,
    ret: u32,
}

/// Everything the profile says about one syscall number of one ABI.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Plan {
    /// Rules with conditions, in profile order.
    conditional: Vec<Rule>,
    /// The first unconditional rule's verdict.
    fallback: Option<u32>,
}

/// Maps an action to its `SECCOMP_RET_*` value.
fn action_ret(
    action: LinuxSeccompAction,
    errno_ret: Option<u32>,
    action_field: &str,
    errno_field: &str,
) -> Result<u32, SeccompError> {
    let with_data = |base: u32| -> Result<u32, SeccompError> {
        let errno = errno_ret.unwrap_or(libc::EPERM as u32);
        if errno > SECCOMP_RET_DATA {
            return Err(SeccompError::ErrnoRetOutOfRange {
                field: errno_field.to_string(),
                value: errno,
            });
        }
        Ok(base | errno)
    };
    let no_data = |ret: u32| -> Result<u32, SeccompError> {
        if errno_ret.is_some() {
            return Err(SeccompError::ErrnoRetNotAllowed {
                field: errno_field.to_string(),
                action,
            });
        }
        Ok(ret)
    };
    match action {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            no_data(SECCOMP_RET_KILL_THREAD)
        }
        LinuxSeccompAction::ScmpActKillProcess => no_data(SECCOMP_RET_KILL_PROCESS),
        LinuxSeccompAction::ScmpActTrap => no_data(SECCOMP_RET_TRAP),
        LinuxSeccompAction::ScmpActErrno => with_data(SECCOMP_RET_ERRNO),
        LinuxSeccompAction::ScmpActTrace => with_data(SECCOMP_RET_TRACE),
        LinuxSeccompAction::ScmpActLog => no_data(SECCOMP_RET_LOG),
        LinuxSeccompAction::ScmpActAllow => no_data(SECCOMP_RET_ALLOW),
        LinuxSeccompAction::ScmpActNotify => Err(SeccompError::NotifyUnsupported {
            field: action_field.to_string(),
        }),
    }
}

fn convert_args(args: &[LinuxSeccompArg], field: &str) -> Result<Vec<Cond>, SeccompError> {
    if args.len() > MAX_CONDITIONS {
        return Err(SeccompError::TooManyConditions {
            field: field.to_string(),
            count: args.len(),
        });
    }
    args.iter()
        .enumerate()
        .map(|(i, arg)| {
            let index = arg.index();
            if index >= SYSCALL_ARGS {
                return Err(SeccompError::ArgIndexOutOfRange {
                    field: format!("{field}[{i}].index"),
                    index,
                });
            }
            Ok(Cond {
                // Lossless: index < 6.
                index: index as u32,
                op: arg.op(),
                value: arg.value(),
                value_two: arg.value_two().unwrap_or(0),
            })
        })
        .collect()
}

/// The ABIs the profile filters, indexed by [`Abi::index`].
fn enabled_abis(profile: &LinuxSeccomp) -> [bool; 3] {
    let mut enabled = [true, false, false];
    for arch in profile.architectures().iter().flatten() {
        match arch {
            Arch::ScmpArchNative | Arch::ScmpArchX86_64 => enabled[Abi::X86_64.index()] = true,
            Arch::ScmpArchX86 => enabled[Abi::X86.index()] = true,
            Arch::ScmpArchX32 => enabled[Abi::X32.index()] = true,
            // Never reported by an x86_64 kernel.
            _ => {}
        }
    }
    enabled
}

/// Compiles a seccomp profile to a BPF program (see the module documentation for the rules).
pub fn compile(profile: &LinuxSeccomp) -> Result<Filter, SeccompError> {
    let default_ret = action_ret(
        profile.default_action(),
        profile.default_errno_ret(),
        "linux.seccomp.defaultAction",
        "linux.seccomp.defaultErrnoRet",
    )?;
    let enabled = enabled_abis(profile);
    let mut plans: [BTreeMap<u32, Plan>; 3] = Default::default();

    for (i, entry) in profile.syscalls().iter().flatten().enumerate() {
        let field = format!("linux.seccomp.syscalls[{i}]");
        if entry.names().is_empty() {
            return Err(SeccompError::EmptyNames {
                field: format!("{field}.names"),
            });
        }
        let ret = action_ret(
            entry.action(),
            entry.errno_ret(),
            &format!("{field}.action"),
            &format!("{field}.errnoRet"),
        )?;
        let conds = convert_args(
            entry.args().as_deref().unwrap_or(&[]),
            &format!("{field}.args"),
        )?;
        for name in entry.names() {
            if !known_syscall(name) {
                return Err(SeccompError::UnknownSyscall {
                    field: format!("{field}.names"),
                    name: name.clone(),
                });
            }
            for abi in Abi::ALL {
                if !enabled[abi.index()] {
                    continue;
                }
                let Some(nr) = abi.syscall_number(name) else {
                    continue;
                };
                let plan = plans[abi.index()].entry(nr).or_default();
                if conds.is_empty() {
                    plan.fallback.get_or_insert(ret);
                } else {
                    plan.conditional.push(Rule {
                        conds: conds.clone(),
                        ret,
                    });
                }
            }
        }
    }

    // Trailing conditional rules that end in the verdict of the syscall anyway change nothing.
    for plan in plans.iter_mut().flat_map(|p| p.values_mut()) {
        let fallback = plan.fallback.unwrap_or(default_ret);
        let keep = plan
            .conditional
            .iter()
            .rposition(|r| r.ret != fallback)
            .map_or(0, |i| i + 1);
        plan.conditional.truncate(keep);
    }

    let mut em = Emitter::default();
    let x86_64 = &plans[Abi::X86_64.index()];
    let x86 = enabled[Abi::X86.index()].then(|| &plans[Abi::X86.index()]);
    let x32 = enabled[Abi::X32.index()].then(|| &plans[Abi::X32.index()]);

    // Emitted back to front: the x86_64/x32 part, the i386 part, then the arch dispatch.
    let native_tree = em.search_tree(x86_64, default_ret, Abi::X86_64.wide_args());
    let x32_target = match x32 {
        Some(plans) => em.search_tree(plans, default_ret, Abi::X32.wide_args()),
        None => em.ret(SECCOMP_RET_KILL_PROCESS),
    };
    let high = em.jump(BPF_JEQ, u32::MAX, native_tree, x32_target);
    let split = em.jump(BPF_JGE, X32_SYSCALL_BIT, high, native_tree);
    let native_entry = em.load(DATA_NR, split);
    let not_native = match x86 {
        Some(plans) => {
            let tree = em.search_tree(plans, default_ret, Abi::X86.wide_args());
            let entry = em.load(DATA_NR, tree);
            let bad_arch = em.ret(SECCOMP_RET_KILL_PROCESS);
            em.jump(BPF_JEQ, AUDIT_ARCH_I386, entry, bad_arch)
        }
        None => em.ret(SECCOMP_RET_KILL_PROCESS),
    };
    let dispatch = em.jump(BPF_JEQ, AUDIT_ARCH_X86_64, native_entry, not_native);
    em.load(DATA_ARCH, dispatch);

    let insns = em.finish();
    if insns.len() > BPF_MAXINSNS {
        return Err(SeccompError::FilterTooLarge { count: insns.len() });
    }
    Ok(Filter { insns })
}

/// What a range of syscall numbers leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Leaf<'a> {
    Ret(u32),
    Plan(&'a Plan),
}

/// A label: the index of an instruction in [`Emitter::rev`].
type Label = usize;

/// Builds a BPF program from its last instruction to its first.
///
/// `rev[i]` is the instruction `i` places before the end, so a label stays valid while more
/// instructions are prepended and a jump from `rev[i]` to `rev[t]` has offset `i - t - 1`.
#[derive(Default)]
struct Emitter {
    rev: Vec<libc::sock_filter>,
    /// Last emitted `ret` for each value, for reuse while it is near.
    rets: HashMap<u32, Label>,
}

/// A `ret` further away than this is emitted again rather than reached by a trampoline.
const RET_REUSE_DISTANCE: usize = 200;

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

impl Emitter {
    fn finish(mut self) -> Vec<libc::sock_filter> {
        self.rev.reverse();
        self.rev
    }

    fn push(&mut self, ins: libc::sock_filter) -> Label {
        self.rev.push(ins);
        self.rev.len() - 1
    }

    /// Instructions between the next pushed instruction and `target`.
    fn distance(&self, target: Label) -> usize {
        self.rev.len() - target - 1
    }

    fn ret(&mut self, k: u32) -> Label {
        if let Some(&label) = self.rets.get(&k) {
            if self.distance(label) <= RET_REUSE_DISTANCE {
                return label;
            }
        }
        let label = self.push(insn(BPF_RET | BPF_K, 0, 0, k));
        self.rets.insert(k, label);
        label
    }

    fn ja(&mut self, target: Label) -> Label {
        // Lossless: a program never exceeds u32::MAX instructions.
        let k = self.distance(target) as u32;
        self.push(insn(BPF_JMP | BPF_JA, 0, 0, k))
    }

    /// A nearby instruction that goes where `target` goes.
    fn trampoline(&mut self, target: Label) -> Label {
        let ins = self.rev[target];
        if ins.code == BPF_RET | BPF_K {
            self.push(ins)
        } else {
            self.ja(target)
        }
    }

    /// Makes the next pushed instruction continue at `next`.
    fn fall_into(&mut self, next: Label) {
        if next + 1 != self.rev.len() {
            self.ja(next);
        }
    }

    /// `if A <op> k goto jt else goto jf` (no instruction when both targets agree).
    fn jump(&mut self, op: u16, k: u32, jt: Label, jf: Label) -> Label {
        if jt == jf {
            return jt;
        }
        // At most two trampolines are pushed before the jump itself.
        let far = |em: &Self, l: Label| em.distance(l) + 2 > u8::MAX as usize;
        let jf = if far(self, jf) {
            self.trampoline(jf)
        } else {
            jf
        };
        let jt = if far(self, jt) {
            self.trampoline(jt)
        } else {
            jt
        };
        debug_assert!(
            self.distance(jt) <= u8::MAX as usize && self.distance(jf) <= u8::MAX as usize
        );
        // Lossless: both distances are at most 255 now.
        let (ot, of) = (self.distance(jt) as u8, self.distance(jf) as u8);
        self.push(insn(BPF_JMP | op | BPF_K, ot, of, k))
    }

    fn load(&mut self, offset: u32, next: Label) -> Label {
        self.fall_into(next);
        self.push(insn(BPF_LD | BPF_W | BPF_ABS, 0, 0, offset))
    }

    fn and(&mut self, mask: u32, next: Label) -> Label {
        self.fall_into(next);
        self.push(insn(BPF_ALU | BPF_AND | BPF_K, 0, 0, mask))
    }

    /// `if (word(offset) & mask) <op> k goto t else goto f`.
    fn test_word(&mut self, offset: u32, mask: u32, op: u16, k: u32, t: Label, f: Label) -> Label {
        if t == f {
            return t;
        }
        let mut next = self.jump(op, k, t, f);
        if mask != u32::MAX {
            next = self.and(mask, next);
        }
        self.load(offset, next)
    }

    /// `if (word(offset) & mask) == value goto t else goto f`.
    fn word_masked_eq(&mut self, offset: u32, mask: u32, value: u32, t: Label, f: Label) -> Label {
        if value & !mask != 0 {
            return f; // bits outside the mask can never be set
        }
        if mask == 0 {
            return t; // 0 == 0
        }
        if value == 0 && mask != u32::MAX && t != f {
            let next = self.jump(BPF_JSET, mask, f, t);
            return self.load(offset, next);
        }
        self.test_word(offset, mask, BPF_JEQ, value, t, f)
    }

    /// `A = word(offset)`, then three-way on `A` against `k`.
    fn three_way(&mut self, offset: u32, k: u32, gt: Label, eq: Label, lt: Label) -> Label {
        let mut pushed = false;
        let below_or_eq = if k == 0 {
            // A < 0 is impossible: A != 0 means A > 0.
            if eq == gt {
                eq
            } else {
                pushed = true;
                self.jump(BPF_JEQ, 0, eq, gt)
            }
        } else if eq == lt {
            lt
        } else {
            pushed = true;
            self.jump(BPF_JEQ, k, eq, lt)
        };
        let top = if k == 0 || k == u32::MAX || gt == below_or_eq {
            below_or_eq
        } else {
            pushed = true;
            self.jump(BPF_JGT, k, gt, below_or_eq)
        };
        if pushed {
            self.load(offset, top)
        } else {
            top
        }
    }

    /// `if arg <op> value goto pass else goto fail` for one condition.
    fn condition(&mut self, c: &Cond, wide: bool, pass: Label, fail: Label) -> Label {
        let lo_off = DATA_ARGS + 8 * c.index;
        let hi_off = lo_off + 4;
        let split = |v: u64| ((v >> 32) as u32, v as u32);
        // (arg & mask) == value
        let masked_eq = |em: &mut Self, mask: u64, value: u64, t: Label, f: Label| {
            let ((mh, ml), (vh, vl)) = (split(mask), split(value));
            let lo = em.word_masked_eq(lo_off, ml, vl, t, f);
            if wide {
                em.word_masked_eq(hi_off, mh, vh, lo, f)
            } else if vh == 0 {
                lo
            } else {
                f
            }
        };
        // arg > value (op = JGT) or arg >= value (op = JGE)
        let greater = |em: &mut Self, op: u16, value: u64, t: Label, f: Label| {
            let (vh, vl) = split(value);
            let lo = em.test_word(lo_off, u32::MAX, op, vl, t, f);
            if wide {
                em.three_way(hi_off, vh, t, lo, f)
            } else if vh == 0 {
                lo
            } else {
                f
            }
        };
        match c.op {
            LinuxSeccompOperator::ScmpCmpEq => masked_eq(self, u64::MAX, c.value, pass, fail),
            LinuxSeccompOperator::ScmpCmpNe => masked_eq(self, u64::MAX, c.value, fail, pass),
            LinuxSeccompOperator::ScmpCmpMaskedEq => {
                masked_eq(self, c.value, c.value_two, pass, fail)
            }
            LinuxSeccompOperator::ScmpCmpGt => greater(self, BPF_JGT, c.value, pass, fail),
            LinuxSeccompOperator::ScmpCmpLe => greater(self, BPF_JGT, c.value, fail, pass),
            LinuxSeccompOperator::ScmpCmpGe => greater(self, BPF_JGE, c.value, pass, fail),
            LinuxSeccompOperator::ScmpCmpLt => greater(self, BPF_JGE, c.value, fail, pass),
        }
    }

    /// The argument checks of one syscall; entered with anything in A.
    fn plan(&mut self, plan: &Plan, default_ret: u32, wide: bool) -> Label {
        let mut next = self.ret(plan.fallback.unwrap_or(default_ret));
        for rule in plan.conditional.iter().rev() {
            let pass = self.ret(rule.ret);
            let fail = next;
            next = pass;
            for c in rule.conds.iter().rev() {
                next = self.condition(c, wide, next, fail);
            }
        }
        next
    }

    /// Binary search over syscall numbers; entered with the syscall number in A.
    fn search_tree(&mut self, plans: &BTreeMap<u32, Plan>, default_ret: u32, wide: bool) -> Label {
        let ranges = ranges(plans, default_ret);
        self.subtree(&ranges, default_ret, wide)
    }

    fn subtree(&mut self, ranges: &[(u32, Leaf<'_>)], default_ret: u32, wide: bool) -> Label {
        match ranges {
            [] => self.ret(default_ret),
            [(_, Leaf::Ret(k))] => self.ret(*k),
            [(_, Leaf::Plan(plan))] => self.plan(plan, default_ret, wide),
            _ => {
                let mid = ranges.len() / 2;
                let upper = self.subtree(&ranges[mid..], default_ret, wide);
                let lower = self.subtree(&ranges[..mid], default_ret, wide);
                self.jump(BPF_JGE, ranges[mid].0, upper, lower)
            }
        }
    }
}

/// Splits the syscall number space into ranges `(first number, leaf)`, sorted, the first
/// starting at 0, neighbours with the same unconditional verdict merged.
fn ranges(plans: &BTreeMap<u32, Plan>, default_ret: u32) -> Vec<(u32, Leaf<'_>)> {
    fn add<'a>(ranges: &mut Vec<(u32, Leaf<'a>)>, start: u32, leaf: Leaf<'a>) {
        if ranges.last().is_some_and(|&(s, _)| s == start) {
            ranges.pop(); // the previous range is empty
        }
        if let (Some(&(_, Leaf::Ret(prev))), Leaf::Ret(k)) = (ranges.last(), leaf) {
            if prev == k {
                return;
            }
        }
        ranges.push((start, leaf));
    }
    let mut ranges = vec![(0, Leaf::Ret(default_ret))];
    for (&nr, plan) in plans {
        let leaf = if plan.conditional.is_empty() {
            Leaf::Ret(plan.fallback.unwrap_or(default_ret))
        } else {
            Leaf::Plan(plan)
        };
        add(&mut ranges, nr, leaf);
        if let Some(next) = nr.checked_add(1) {
            add(&mut ranges, next, Leaf::Ret(default_ret));
        }
    }
    ranges
}

/// Whether the running kernel knows a `SECCOMP_SET_MODE_FILTER` flag.
///
/// Like libseccomp: with a NULL program the kernel validates the flags first (EINVAL when
/// unknown) and then fails to read the program (EFAULT), installing nothing.
fn kernel_supports_flag(flag: libc::c_ulong) -> bool {
    // SAFETY: seccomp(2) with a NULL program pointer only validates `flag` and then fails with
    // EFAULT when copying the program in; no memory of this process is read or written and no
    // filter is installed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_SET_MODE_FILTER,
            flag,
            std::ptr::null::<libc::sock_fprog>(),
        )
    };
    !(rc == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL))
}

/// Installs the filter on the calling thread with seccomp(2) `SECCOMP_SET_MODE_FILTER` and the
/// profile's flags (`SECCOMP_FILTER_FLAG_TSYNC` / `LOG` / `SPEC_ALLOW` mapped from the OCI
/// `flags` strings). Caller has set no_new_privs or holds CAP_SYS_ADMIN.
///
/// Does not allocate on success, so it may be called in a child after `fork` of a threaded
/// process.
pub fn install(filter: &Filter, profile: &LinuxSeccomp) -> Result<(), SeccompError> {
    if !cfg!(target_arch = "x86_64") {
        return Err(SeccompError::UnsupportedHostArch {
            arch: std::env::consts::ARCH,
        });
    }
    let Ok(len) = u16::try_from(filter.insns.len()) else {
        return Err(SeccompError::FilterTooLarge {
            count: filter.insns.len(),
        });
    };
    let flags = filter_flags(profile);
    let prog = libc::sock_fprog {
        len,
        filter: filter.insns.as_ptr().cast_mut(),
    };
    // SAFETY: `prog` points to `len` initialized instructions owned by `filter`, which outlives
    // the call; the kernel only reads them (copying the program) and keeps no reference.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_SET_MODE_FILTER,
            flags,
            &prog as *const libc::sock_fprog,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    if rc > 0 {
        return Err(SeccompError::TsyncFailed { tid: rc });
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EACCES) => Err(SeccompError::PermissionDenied),
        Some(libc::EINVAL) if flags != 0 => {
            for &flag in profile.flags().iter().flatten() {
                if let Some(bit) = flag_bit(flag) {
                    if !kernel_supports_flag(bit) {
                        return Err(SeccompError::UnsupportedFlag { flag });
                    }
                }
            }
            Err(SeccompError::Install(err))
        }
        _ => Err(SeccompError::Install(err)),
    }
}

/// The `seccomp(2)` bit of one OCI flag (`None` for flags that are not passed).
fn flag_bit(flag: LinuxSeccompFilterFlag) -> Option<libc::c_ulong> {
    match flag {
        LinuxSeccompFilterFlag::SeccompFilterFlagTsync => Some(SECCOMP_FILTER_FLAG_TSYNC),
        LinuxSeccompFilterFlag::SeccompFilterFlagLog => Some(SECCOMP_FILTER_FLAG_LOG),
        LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => Some(SECCOMP_FILTER_FLAG_SPEC_ALLOW),
        // Only meaningful together with a notification listener, which is never created here.
        LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => None,
    }
}

/// The `flags` argument of `seccomp(2)` for the profile's `flags`.
fn filter_flags(profile: &LinuxSeccomp) -> libc::c_ulong {
    profile
        .flags()
        .iter()
        .flatten()
        .filter_map(|&flag| flag_bit(flag))
        .fold(0, |acc, bit| acc | bit)
}
