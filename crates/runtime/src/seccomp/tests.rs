//! Tests for the seccomp compiler: a small classic-BPF interpreter runs the compiled filters
//! against `seccomp_data` records, and a forked child installs a real filter.

use super::*;

const LD_W_ABS: u16 = BPF_LD | BPF_W | BPF_ABS;
const AND_K: u16 = BPF_ALU | BPF_AND | BPF_K;
const JA: u16 = BPF_JMP | BPF_JA;
const JEQ_K: u16 = BPF_JMP | BPF_JEQ | BPF_K;
const JGT_K: u16 = BPF_JMP | BPF_JGT | BPF_K;
const JGE_K: u16 = BPF_JMP | BPF_JGE | BPF_K;
const JSET_K: u16 = BPF_JMP | BPF_JSET | BPF_K;
const RET_K: u16 = BPF_RET | BPF_K;

const AUDIT_ARCH_AARCH64: u32 = 0xc000_00b7;
const SECCOMP_DATA_SIZE: u32 = 64;

fn errno(e: u32) -> u32 {
    SECCOMP_RET_ERRNO | e
}

/// Parses a profile exactly as it appears under `linux.seccomp` in config.json.
fn profile(json: &str) -> LinuxSeccomp {
    serde_json::from_str(json).expect("test profile is valid JSON for LinuxSeccomp")
}

/// Compiles and checks the program the way the kernel does before accepting it.
fn compile_ok(json: &str) -> Filter {
    let filter = compile(&profile(json)).expect("profile compiles");
    verify(filter.instructions());
    filter
}

fn compile_err(json: &str) -> String {
    compile(&profile(json))
        .expect_err("profile must be rejected")
        .to_string()
}

/// Static checks of the kernel's `bpf_check_classic` and `seccomp_check_filter`, restricted to
/// the instructions the compiler emits.
fn verify(prog: &[libc::sock_filter]) {
    assert!(!prog.is_empty() && prog.len() <= BPF_MAXINSNS);
    for (pc, ins) in prog.iter().enumerate() {
        let next = pc + 1;
        match ins.code {
            LD_W_ABS => assert!(
                ins.k % 4 == 0 && ins.k < SECCOMP_DATA_SIZE,
                "bad load at {pc}"
            ),
            AND_K | RET_K => {}
            JA => assert!(
                next + (ins.k as usize) < prog.len(),
                "ja out of range at {pc}"
            ),
            JEQ_K | JGT_K | JGE_K | JSET_K => assert!(
                next + (ins.jt.max(ins.jf) as usize) < prog.len(),
                "jump out of range at {pc}"
            ),
            code => panic!("unexpected opcode {code:#x} at {pc}"),
        }
    }
    assert_eq!(prog[prog.len() - 1].code, RET_K, "program must end in ret");
}

/// A `struct seccomp_data`.
#[derive(Clone, Copy, Debug)]
struct Data {
    nr: u32,
    arch: u32,
    args: [u64; 6],
}

impl Data {
    fn new(arch: u32, nr: u32) -> Self {
        Data {
            nr,
            arch,
            args: [0; 6],
        }
    }

    fn x86_64(name: &str) -> Self {
        Self::new(AUDIT_ARCH_X86_64, nr("x86_64", name))
    }

    fn i386(name: &str) -> Self {
        Self::new(AUDIT_ARCH_I386, nr("x86", name))
    }

    fn x32(name: &str) -> Self {
        Self::new(AUDIT_ARCH_X86_64, nr("x32", name))
    }

    fn arg(mut self, index: usize, value: u64) -> Self {
        self.args[index] = value;
        self
    }

    fn bytes(&self) -> [u8; SECCOMP_DATA_SIZE as usize] {
        let mut b = [0u8; SECCOMP_DATA_SIZE as usize];
        b[0..4].copy_from_slice(&self.nr.to_le_bytes());
        b[4..8].copy_from_slice(&self.arch.to_le_bytes());
        b[8..16].copy_from_slice(&0x7f00_dead_beefu64.to_le_bytes());
        for (i, a) in self.args.iter().enumerate() {
            b[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        b
    }
}

fn nr(abi: &str, name: &str) -> u32 {
    syscall_number(abi, name).unwrap_or_else(|| panic!("{name} is a {abi} syscall"))
}

/// Runs a classic BPF program on a `seccomp_data` record.
fn run(prog: &[libc::sock_filter], data: &Data) -> u32 {
    let bytes = data.bytes();
    let mut a: u32 = 0;
    let mut pc = 0usize;
    loop {
        let ins = prog[pc];
        pc += 1;
        match ins.code {
            LD_W_ABS => {
                let k = ins.k as usize;
                a = u32::from_le_bytes(bytes[k..k + 4].try_into().expect("4 bytes"));
            }
            AND_K => a &= ins.k,
            JA => pc += ins.k as usize,
            JEQ_K | JGT_K | JGE_K | JSET_K => {
                let taken = match ins.code {
                    JEQ_K => a == ins.k,
                    JGT_K => a > ins.k,
                    JGE_K => a >= ins.k,
                    _ => a & ins.k != 0,
                };
                pc += if taken { ins.jt } else { ins.jf } as usize;
            }
            RET_K => return ins.k,
            code => panic!("unexpected opcode {code:#x}"),
        }
    }
}

/// Asserts the verdict of each `(data, expected)` pair.
fn check(filter: &Filter, cases: &[(Data, u32)]) {
    for (data, expected) in cases {
        let got = run(filter.instructions(), data);
        assert_eq!(
            got, *expected,
            "verdict for {data:x?}: got {got:#x}, expected {expected:#x}"
        );
    }
}

#[test]
fn default_allow_with_errno_for_one_syscall() {
    let f = compile_ok(
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 42}]}"#,
    );
    check(
        &f,
        &[
            (Data::x86_64("mkdirat"), errno(42)),
            (Data::x86_64("mkdir"), SECCOMP_RET_ALLOW),
            (Data::x86_64("read"), SECCOMP_RET_ALLOW),
            (Data::new(AUDIT_ARCH_X86_64, 100_000), SECCOMP_RET_ALLOW),
        ],
    );
}

#[test]
fn errno_ret_defaults_to_eperm() {
    let f = compile_ok(
        r#"{"defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["uname"], "action": "SCMP_ACT_ERRNO"},
                         {"names": ["getpid"], "action": "SCMP_ACT_TRACE"}]}"#,
    );
    check(
        &f,
        &[
            (Data::x86_64("uname"), errno(1)),
            (Data::x86_64("read"), errno(1)),
            (Data::x86_64("getpid"), SECCOMP_RET_TRACE | 1),
        ],
    );
}

#[test]
fn default_errno_with_allow_list() {
    let f = compile_ok(
        r#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38,
            "syscalls": [{"names": ["read", "write", "exit_group", "openat"],
                          "action": "SCMP_ACT_ALLOW"}]}"#,
    );
    check(
        &f,
        &[
            (Data::x86_64("read"), SECCOMP_RET_ALLOW),
            (Data::x86_64("write"), SECCOMP_RET_ALLOW),
            (Data::x86_64("exit_group"), SECCOMP_RET_ALLOW),
            (Data::x86_64("openat"), SECCOMP_RET_ALLOW),
            (Data::x86_64("open"), errno(38)),
            (Data::x86_64("close"), errno(38)),
            (Data::new(AUDIT_ARCH_X86_64, 0x3fff_ffff), errno(38)),
        ],
    );
}

#[test]
fn actions_map_to_seccomp_return_values() {
    let cases = [
        ("SCMP_ACT_KILL", "", SECCOMP_RET_KILL_THREAD),
        ("SCMP_ACT_KILL_THREAD", "", SECCOMP_RET_KILL_THREAD),
        ("SCMP_ACT_KILL_PROCESS", "", SECCOMP_RET_KILL_PROCESS),
        ("SCMP_ACT_TRAP", "", SECCOMP_RET_TRAP),
        ("SCMP_ACT_ERRNO", r#", "errnoRet": 13"#, errno(13)),
        (
            "SCMP_ACT_TRACE",
            r#", "errnoRet": 1234"#,
            SECCOMP_RET_TRACE | 1234,
        ),
        ("SCMP_ACT_LOG", "", SECCOMP_RET_LOG),
        ("SCMP_ACT_ALLOW", "", SECCOMP_RET_ALLOW),
    ];
    for (action, errno_ret, expected) in cases {
        // As the action of a rule, with an ERRNO default.
        let f = compile_ok(&format!(
            r#"{{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 99,
                "syscalls": [{{"names": ["kill"], "action": "{action}"{errno_ret}}}]}}"#
        ));
        check(
            &f,
            &[
                (Data::x86_64("kill"), expected),
                (Data::x86_64("tkill"), errno(99)),
            ],
        );
        // As the default action.
        let default_errno = errno_ret.replace("errnoRet", "defaultErrnoRet");
        let f = compile_ok(&format!(
            r#"{{"defaultAction": "{action}"{default_errno},
                "syscalls": [{{"names": ["kill"], "action": "SCMP_ACT_ERRNO", "errnoRet": 7}}]}}"#
        ));
        check(
            &f,
            &[
                (Data::x86_64("kill"), errno(7)),
                (Data::x86_64("tkill"), expected),
            ],
        );
    }
}

/// Every OCI/libseccomp comparison operator.
const OPS: [&str; 7] = [
    "SCMP_CMP_NE",
    "SCMP_CMP_LT",
    "SCMP_CMP_LE",
    "SCMP_CMP_EQ",
    "SCMP_CMP_GE",
    "SCMP_CMP_GT",
    "SCMP_CMP_MASKED_EQ",
];

/// What the OCI/libseccomp operators mean, on the argument value the filter sees.
fn reference(op: &str, value: u64, value_two: u64, arg: u64) -> bool {
    match op {
        "SCMP_CMP_NE" => arg != value,
        "SCMP_CMP_LT" => arg < value,
        "SCMP_CMP_LE" => arg <= value,
        "SCMP_CMP_EQ" => arg == value,
        "SCMP_CMP_GE" => arg >= value,
        "SCMP_CMP_GT" => arg > value,
        "SCMP_CMP_MASKED_EQ" => arg & value == value_two,
        _ => unreachable!("unknown operator {op}"),
    }
}

const INTERESTING: [u64; 14] = [
    0,
    1,
    5,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_fffe,
    0xffff_ffff,
    0x1_0000_0000,
    0x1_0000_0005,
    0x2_0000_0000,
    0xdead_beef_0000_0005,
    0x8000_0000_0000_0000,
    u64::MAX - 1,
    u64::MAX,
];

/// Every operator against many 64-bit values whose high word matters, on x86_64 (64-bit
/// comparison) and i386 (low 32 bits of the argument only).
#[test]
fn operators_match_reference_semantics() {
    let args: Vec<u64> = INTERESTING
        .iter()
        .flat_map(|&v| [v.wrapping_sub(1), v, v.wrapping_add(1), v | 0x10_0000_0000])
        .collect();
    let mut cases: Vec<(&str, u64, u64)> = Vec::new();
    for &op in OPS.iter().filter(|o| **o != "SCMP_CMP_MASKED_EQ") {
        cases.extend(INTERESTING.iter().map(|&v| (op, v, 0)));
    }
    for mask in INTERESTING {
        for value_two in [0, 5, mask, mask & 0xffff_0000_ffff_0000, 0x1_0000_0000] {
            cases.push(("SCMP_CMP_MASKED_EQ", mask, value_two));
        }
    }
    for (op, value, value_two) in cases {
        let f = compile_ok(&format!(
            r#"{{"defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
                "syscalls": [{{"names": ["mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 7,
                    "args": [{{"index": 2, "value": {value}, "valueTwo": {value_two},
                               "op": "{op}"}}]}}]}}"#
        ));
        for &arg in &args {
            for (data, seen) in [
                (Data::x86_64("mkdirat"), arg),
                (Data::i386("mkdirat"), arg & 0xffff_ffff),
            ] {
                let expected = if reference(op, value, value_two, seen) {
                    errno(7)
                } else {
                    SECCOMP_RET_ALLOW
                };
                let got = run(f.instructions(), &data.arg(2, arg));
                assert_eq!(
                    got, expected,
                    "{op} value={value:#x} valueTwo={value_two:#x} arg={arg:#x} arch={:#x}",
                    data.arch
                );
            }
        }
    }
}

#[test]
fn masked_eq_is_arg_and_value_equals_value_two() {
    // Docker's clone rule: no namespace flags (value is the mask, valueTwo the result).
    let f = compile_ok(
        r#"{"defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 0, "value": 2114060288, "valueTwo": 0,
                          "op": "SCMP_CMP_MASKED_EQ"}]},
                         {"names": ["fcntl"], "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 1, "value": 18446744069414584335, "valueTwo": 4294967300,
                          "op": "SCMP_CMP_MASKED_EQ"}]}]}"#,
    );
    let clone_vm_sigchld = 0x100 | 17;
    check(
        &f,
        &[
            (
                Data::x86_64("clone").arg(0, clone_vm_sigchld),
                SECCOMP_RET_ALLOW,
            ),
            (Data::x86_64("clone").arg(0, 0x1000_0000 | 17), errno(1)),
            (Data::x86_64("clone").arg(0, 0x2_0000), errno(1)),
            (
                Data::x86_64("clone").arg(0, 0xffff_ffff_0000_0011),
                SECCOMP_RET_ALLOW,
            ),
            // mask 0xffffffff_0000000f, valueTwo 0x1_00000004
            (
                Data::x86_64("fcntl").arg(1, 0x1_0000_0004),
                SECCOMP_RET_ALLOW,
            ),
            (
                Data::x86_64("fcntl").arg(1, 0x1_0000_fff4),
                SECCOMP_RET_ALLOW,
            ),
            (Data::x86_64("fcntl").arg(1, 0x2_0000_0004), errno(1)),
            (Data::x86_64("fcntl").arg(1, 0x4), errno(1)),
            (Data::x86_64("fcntl").arg(1, 0x1_0000_0005), errno(1)),
        ],
    );
}

#[test]
fn conditions_of_one_entry_are_anded() {
    let f = compile_ok(
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["kill"], "action": "SCMP_ACT_ERRNO", "errnoRet": 3,
                "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"},
                         {"index": 1, "value": 9, "op": "SCMP_CMP_EQ"}]},
                         {"names": ["read"], "action": "SCMP_ACT_ERRNO", "errnoRet": 4,
                "args": [{"index": 2, "value": 10, "op": "SCMP_CMP_GE"},
                         {"index": 2, "value": 20, "op": "SCMP_CMP_LE"}]}]}"#,
    );
    check(
        &f,
        &[
            (Data::x86_64("kill").arg(0, 1).arg(1, 9), errno(3)),
            (Data::x86_64("kill").arg(0, 1).arg(1, 15), SECCOMP_RET_ALLOW),
            (Data::x86_64("kill").arg(0, 2).arg(1, 9), SECCOMP_RET_ALLOW),
            (Data::x86_64("read").arg(2, 9), SECCOMP_RET_ALLOW),
            (Data::x86_64("read").arg(2, 10), errno(4)),
            (Data::x86_64("read").arg(2, 20), errno(4)),
            (Data::x86_64("read").arg(2, 21), SECCOMP_RET_ALLOW),
            (
                Data::x86_64("read").arg(2, 0x1_0000_0010),
                SECCOMP_RET_ALLOW,
            ),
        ],
    );
}

#[test]
fn entries_for_one_syscall_are_ored() {
    let f = compile_ok(
        r#"{"defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [
              {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
               "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
              {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
               "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
              {"names": ["personality"], "action": "SCMP_ACT_LOG",
               "args": [{"index": 0, "value": 4294967295, "op": "SCMP_CMP_EQ"}]}]}"#,
    );
    check(
        &f,
        &[
            (Data::x86_64("personality").arg(0, 0), SECCOMP_RET_ALLOW),
            (Data::x86_64("personality").arg(0, 8), SECCOMP_RET_ALLOW),
            (
                Data::x86_64("personality").arg(0, 0xffff_ffff),
                SECCOMP_RET_LOG,
            ),
            (Data::x86_64("personality").arg(0, 9), errno(1)),
            (Data::x86_64("personality").arg(0, 0x1_0000_0000), errno(1)),
        ],
    );
}

#[test]
fn conditional_entries_take_precedence_over_unconditional_ones() {
    let f = compile_ok(
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
              {"names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5},
              {"names": ["socket"], "action": "SCMP_ACT_ALLOW",
               "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]},
              {"names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": 6},
              {"names": ["socket"], "action": "SCMP_ACT_KILL_PROCESS",
               "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_LE"}]},
              {"names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5,
               "args": [{"index": 0, "value": 40, "op": "SCMP_CMP_EQ"}]}]}"#,
    );
    check(
        &f,
        &[
            // The first matching conditional entry wins ...
            (Data::x86_64("socket").arg(0, 1), SECCOMP_RET_ALLOW),
            (Data::x86_64("socket").arg(0, 0), SECCOMP_RET_KILL_PROCESS),
            // ... then the first unconditional one.
            (Data::x86_64("socket").arg(0, 2), errno(5)),
            (Data::x86_64("socket").arg(0, 40), errno(5)),
            (Data::x86_64("connect"), SECCOMP_RET_ALLOW),
        ],
    );
}

#[test]
fn kill_and_errno_rules_side_by_side() {
    let f = compile_ok(
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["kexec_load", "init_module"], "action": "SCMP_ACT_KILL"},
                         {"names": ["reboot"], "action": "SCMP_ACT_KILL_PROCESS"},
                         {"names": ["mount", "umount2"], "action": "SCMP_ACT_ERRNO"}]}"#,
    );
    check(
        &f,
        &[
            (Data::x86_64("kexec_load"), SECCOMP_RET_KILL_THREAD),
            (Data::x86_64("init_module"), SECCOMP_RET_KILL_THREAD),
            (Data::x86_64("reboot"), SECCOMP_RET_KILL_PROCESS),
            (Data::x86_64("mount"), errno(1)),
            (Data::x86_64("umount2"), errno(1)),
            (Data::x86_64("finit_module"), SECCOMP_RET_ALLOW),
        ],
    );
}

#[test]
fn other_architectures_are_killed() {
    let only_native = compile_ok(r#"{"defaultAction": "SCMP_ACT_ALLOW"}"#);
    let listed = compile_ok(
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]}"#,
    );
    for f in [&only_native, &listed] {
        check(
            f,
            &[
                (Data::new(AUDIT_ARCH_AARCH64, 63), SECCOMP_RET_KILL_PROCESS),
                (Data::new(0, 0), SECCOMP_RET_KILL_PROCESS),
                (Data::i386("read"), SECCOMP_RET_KILL_PROCESS),
                (Data::x86_64("read"), SECCOMP_RET_ALLOW),
            ],
        );
    }
    // The native ABI stays filtered even when only i386 is listed (as with libseccomp).
    let f = compile_ok(
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86"],
            "syscalls": [{"names": ["uname"], "action": "SCMP_ACT_ERRNO"}]}"#,
    );
    check(
        &f,
        &[
            (Data::x86_64("uname"), errno(1)),
            (Data::i386("uname"), errno(1)),
            (Data::i386("read"), SECCOMP_RET_ALLOW),
        ],
    );
}

#[test]
fn x32_syscalls_are_killed_unless_x32_is_listed() {
    for arches in [
        "",
        r#", "architectures": []"#,
        r#", "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]"#,
        r#", "architectures": ["SCMP_ARCH_NATIVE"]"#,
    ] {
        let f = compile_ok(&format!(
            r#"{{"defaultAction": "SCMP_ACT_ALLOW"{arches},
                "syscalls": [{{"names": ["uname"], "action": "SCMP_ACT_ERRNO"}}]}}"#
        ));
        check(
            &f,
            &[
                (Data::x32("read"), SECCOMP_RET_KILL_PROCESS),
                (Data::x32("uname"), SECCOMP_RET_KILL_PROCESS),
                (Data::x32("ioctl"), SECCOMP_RET_KILL_PROCESS),
                (
                    Data::new(AUDIT_ARCH_X86_64, 0x7fff_ffff),
                    SECCOMP_RET_KILL_PROCESS,
                ),
                (
                    Data::new(AUDIT_ARCH_X86_64, 0xffff_fffe),
                    SECCOMP_RET_KILL_PROCESS,
                ),
                // -1 (a syscall skipped by a tracer) is no x32 syscall: default action.
                (Data::new(AUDIT_ARCH_X86_64, u32::MAX), SECCOMP_RET_ALLOW),
                (Data::x86_64("uname"), errno(1)),
                (Data::x86_64("read"), SECCOMP_RET_ALLOW),
            ],
        );
    }
}

#[test]
fn x32_numbers_are_used_when_x32_is_listed() {
    let f = compile_ok(
        r#"{"defaultAction": "SCMP_ACT_ERRNO",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X32"],
            "syscalls": [{"names": ["read", "ioctl", "uname"], "action": "SCMP_ACT_ALLOW"},
                         {"names": ["write"], "action": "SCMP_ACT_ALLOW",
                          "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]}]}"#,
    );
    assert_eq!(nr("x32", "read"), X32_SYSCALL_BIT);
    assert_eq!(nr("x32", "ioctl"), X32_SYSCALL_BIT | 514);
    check(
        &f,
        &[
            (Data::x32("read"), SECCOMP_RET_ALLOW),
            (Data::x32("uname"), SECCOMP_RET_ALLOW),
            (Data::x32("ioctl"), SECCOMP_RET_ALLOW),
            // The x86_64 number of ioctl with the x32 bit is not an x32 syscall.
            (Data::new(AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 16), errno(1)),
            (Data::x32("mount"), errno(1)),
            (Data::x86_64("ioctl"), SECCOMP_RET_ALLOW),
            (Data::x86_64("mount"), errno(1)),
            // 32-bit ABI: only the low word of an argument counts.
            (Data::x32("write").arg(0, 1), SECCOMP_RET_ALLOW),
            (Data::x32("write").arg(0, 0x5_0000_0001), SECCOMP_RET_ALLOW),
            (Data::x86_64("write").arg(0, 0x5_0000_0001), errno(1)),
            (Data::new(AUDIT_ARCH_X86_64, u32::MAX), errno(1)),
            (Data::i386("read"), SECCOMP_RET_KILL_PROCESS),
        ],
    );
}

#[test]
fn i386_numbers_are_used_when_x86_is_listed() {
    let f = compile_ok(
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
            "syscalls": [{"names": ["uname", "mkdirat"], "action": "SCMP_ACT_ERRNO",
                          "errnoRet": 42},
                         {"names": ["socketcall", "arch_prctl"], "action": "SCMP_ACT_TRAP"}]}"#,
    );
    assert_eq!((nr("x86", "uname"), nr("x86_64", "uname")), (122, 63));
    assert_eq!((nr("x86", "mkdirat"), nr("x86_64", "mkdirat")), (296, 258));
    check(
        &f,
        &[
            (Data::i386("uname"), errno(42)),
            (Data::i386("mkdirat"), errno(42)),
            (Data::i386("socketcall"), SECCOMP_RET_TRAP),
            (Data::x86_64("uname"), errno(42)),
            (Data::x86_64("mkdirat"), errno(42)),
            (Data::x86_64("arch_prctl"), SECCOMP_RET_TRAP),
            // i386 63 is dup2, x86_64 122 is setfsuid: numbers are per ABI.
            (Data::new(AUDIT_ARCH_I386, 63), SECCOMP_RET_ALLOW),
            (Data::new(AUDIT_ARCH_X86_64, 122), SECCOMP_RET_ALLOW),
            // x86_64's socketcall does not exist; i386's arch_prctl is 384.
            (Data::new(AUDIT_ARCH_X86_64, 102), SECCOMP_RET_ALLOW),
            (Data::i386("arch_prctl"), SECCOMP_RET_TRAP),
        ],
    );
}

#[test]
fn unknown_syscall_names_are_errors() {
    let msg = compile_err(
        r#"{"defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"},
                         {"names": ["write"], "action": "SCMP_ACT_ALLOW"},
                         {"names": ["exit"], "action": "SCMP_ACT_ALLOW"},
                         {"names": ["close", "fooo"], "action": "SCMP_ACT_ALLOW"}]}"#,
    );
    assert_eq!(
        msg,
        r#"linux.seccomp.syscalls[3].names: unknown syscall "fooo""#
    );
    let msg = compile_err(
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["Read"], "action": "SCMP_ACT_KILL"}]}"#,
    );
    assert_eq!(
        msg,
        r#"linux.seccomp.syscalls[0].names: unknown syscall "Read""#
    );
}

#[test]
fn syscalls_of_other_abis_are_ignored() {
    // Names Docker lists that are syscalls elsewhere: ARM-only, and i386-only without
    // SCMP_ARCH_X86.
    let f = compile_ok(
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["arm_fadvise64_64", "recv", "send", "s390_pci_mmio_read",
                                    "socketcall", "chown32", "_llseek"],
                          "action": "SCMP_ACT_KILL"},
                         {"names": ["riscv_hwprobe", "getpid"], "action": "SCMP_ACT_KILL"}]}"#,
    );
    check(
        &f,
        &[
            (Data::x86_64("getpid"), SECCOMP_RET_KILL_THREAD),
            (Data::new(AUDIT_ARCH_X86_64, 102), SECCOMP_RET_ALLOW),
            (Data::x86_64("recvfrom"), SECCOMP_RET_ALLOW),
            (Data::x86_64("chown"), SECCOMP_RET_ALLOW),
        ],
    );
    // The whole filter is the skeleton: only getpid has a rule.
    let plain = compile_ok(
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_KILL"}]}"#,
    );
    assert_eq!(f.len(), plain.len());
}

#[test]
fn invalid_profiles_are_rejected() {
    let cases = [
        (
            r#"{"defaultAction": "SCMP_ACT_NOTIFY", "listenerPath": "/run/agent.sock"}"#,
            "linux.seccomp.defaultAction: SCMP_ACT_NOTIFY requires listenerPath, not supported",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"},
                             {"names": ["openat"], "action": "SCMP_ACT_NOTIFY"}]}"#,
            "linux.seccomp.syscalls[1].action: SCMP_ACT_NOTIFY requires listenerPath, not supported",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ERRNO",
                "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "errnoRet": 1}]}"#,
            "linux.seccomp.syscalls[0].errnoRet: only allowed with SCMP_ACT_ERRNO or SCMP_ACT_TRACE, not SCMP_ACT_ALLOW",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_KILL_PROCESS", "defaultErrnoRet": 1}"#,
            "linux.seccomp.defaultErrnoRet: only allowed with SCMP_ACT_ERRNO or SCMP_ACT_TRACE, not SCMP_ACT_KILL_PROCESS",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 65536}"#,
            "linux.seccomp.defaultErrnoRet: 65536 is out of range (at most 65535)",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO", "errnoRet": 70000}]}"#,
            "linux.seccomp.syscalls[0].errnoRet: 70000 is out of range (at most 65535)",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": [], "action": "SCMP_ACT_ERRNO"}]}"#,
            "linux.seccomp.syscalls[0].names: must name at least one syscall",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
                              "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"},
                                       {"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]}"#,
            "linux.seccomp.syscalls[0].args[1].index: argument index 6 is out of range (at most 5)",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
                              "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"},
                                       {"index": 1, "value": 1, "op": "SCMP_CMP_EQ"},
                                       {"index": 2, "value": 1, "op": "SCMP_CMP_EQ"},
                                       {"index": 3, "value": 1, "op": "SCMP_CMP_EQ"},
                                       {"index": 4, "value": 1, "op": "SCMP_CMP_EQ"},
                                       {"index": 5, "value": 1, "op": "SCMP_CMP_EQ"},
                                       {"index": 0, "value": 2, "op": "SCMP_CMP_EQ"}]}]}"#,
            "linux.seccomp.syscalls[0].args: 7 conditions, at most 6 allowed",
        ),
    ];
    for (json, expected) in cases {
        assert_eq!(compile_err(json), expected, "for {json}");
    }
}

#[test]
fn profile_without_syscalls_applies_the_default_action() {
    for json in [
        r#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 5}"#,
        r#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 5, "syscalls": []}"#,
        r#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 5,
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5}]}"#,
    ] {
        let f = compile_ok(json);
        check(
            &f,
            &[
                (Data::x86_64("read"), errno(5)),
                (Data::new(AUDIT_ARCH_X86_64, 0), errno(5)),
                (Data::new(AUDIT_ARCH_X86_64, u32::MAX), errno(5)),
                (Data::new(AUDIT_ARCH_AARCH64, 0), SECCOMP_RET_KILL_PROCESS),
            ],
        );
        assert!(f.len() < 16, "{} instructions", f.len());
    }
}

/// moby's default profile as Docker writes it into config.json on amd64 (default
/// capabilities, kernel >= 4.8).
const DOCKER_DEFAULT: &str = include_str!("testdata/docker-default.json");

#[test]
fn docker_default_profile_fits_and_decides_correctly() {
    let p = profile(DOCKER_DEFAULT);
    let names: usize = p.syscalls().iter().flatten().map(|s| s.names().len()).sum();
    assert!(names > 350, "fixture lists {names} names");
    let f = compile_ok(DOCKER_DEFAULT);
    assert!(
        f.len() < 1024,
        "docker default profile compiles to {} instructions",
        f.len()
    );

    let eperm = errno(1);
    let allow = SECCOMP_RET_ALLOW;
    let mut cases = vec![
        (Data::new(AUDIT_ARCH_AARCH64, 0), SECCOMP_RET_KILL_PROCESS),
        (Data::new(AUDIT_ARCH_X86_64, u32::MAX), eperm),
        (Data::x86_64("socket").arg(0, 2), allow),
        (Data::x86_64("socket").arg(0, 40), eperm),
        (Data::x86_64("personality").arg(0, 0), allow),
        (Data::x86_64("personality").arg(0, 0x20008), allow),
        (Data::x86_64("personality").arg(0, 0xffff_ffff), allow),
        (Data::x86_64("personality").arg(0, 0x40000), eperm),
        (Data::x86_64("clone").arg(0, 0x3d0f00), allow),
        (Data::x86_64("clone").arg(0, 0x1000_0011), eperm),
        (Data::x86_64("clone").arg(0, 0x2_0011), eperm),
        (Data::x86_64("clone3"), errno(38)),
        (Data::i386("clone").arg(0, 0x11), allow),
        (Data::i386("clone").arg(0, 0x4000_0011), eperm),
        (
            Data::i386("personality").arg(0, 0xffff_ffff_0000_0000),
            allow,
        ),
        (Data::i386("socketcall"), allow),
        (Data::i386("modify_ldt"), allow),
        (Data::x32("ioctl"), allow),
        (Data::new(AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 16), eperm),
        (Data::x86_64("arch_prctl"), allow),
        (Data::x86_64("chroot"), allow),
        (Data::x86_64("ptrace"), allow),
        (Data::x86_64("listns"), eperm),
        (Data::new(AUDIT_ARCH_X86_64, 4000), eperm),
    ];
    for name in [
        "read",
        "write",
        "openat",
        "mmap",
        "futex",
        "epoll_pwait",
        "execve",
        "exit_group",
        "rt_sigreturn",
        "cachestat",
        "mseal",
        "getxattrat",
        "statx",
        "io_setup",
        "wait4",
    ] {
        for abi in [Data::x86_64(name), Data::i386(name), Data::x32(name)] {
            cases.push((abi, allow));
        }
    }
    for name in [
        "mount",
        "umount2",
        "unshare",
        "setns",
        "bpf",
        "keyctl",
        "add_key",
        "kexec_load",
        "reboot",
        "init_module",
        "delete_module",
        "open_by_handle_at",
        "perf_event_open",
        "userfaultfd",
        "io_uring_setup",
        "pivot_root",
        "swapon",
        "settimeofday",
        "syslog",
        "acct",
        "quotactl",
        "lookup_dcookie",
        "move_mount",
        "fsopen",
        "vhangup",
        "iopl",
    ] {
        cases.push((Data::x86_64(name), eperm));
        cases.push((Data::i386(name), eperm));
    }
    check(&f, &cases);
}

/// A profile whose program is far longer than 255 instructions, so that conditional jumps
/// need trampolines, still decides every syscall right.
#[test]
fn long_jumps_go_through_trampolines() {
    let names: Vec<&str> = syscalls_x86_64::X86_64.iter().map(|(n, _)| *n).collect();
    let entries: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            format!(
                r#"{{"names": ["{name}"], "action": "SCMP_ACT_ERRNO", "errnoRet": {},
                    "args": [{{"index": {}, "value": {}, "op": "SCMP_CMP_EQ"}}]}}"#,
                i + 1,
                i % 6,
                (i as u64 + 1) * 0x1_0000_0001
            )
        })
        .collect();
    let json = format!(
        r#"{{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{}]}}"#,
        entries.join(",")
    );
    let f = compile_ok(&json);
    assert!(f.len() > 1000, "{} instructions", f.len());
    assert!(
        f.instructions()
            .iter()
            .any(|i| i.code == JA && i.k > u8::MAX as u32),
        "expected long jumps"
    );
    for (i, name) in names.iter().enumerate() {
        let value = (i as u64 + 1) * 0x1_0000_0001;
        let data = Data::x86_64(name);
        check(
            &f,
            &[
                (data.arg(i % 6, value), errno(i as u32 + 1)),
                (data.arg(i % 6, value ^ 0x1_0000_0000), SECCOMP_RET_ALLOW),
                (data.arg((i + 1) % 6, value), SECCOMP_RET_ALLOW),
            ],
        );
    }
}

#[test]
fn oversized_filters_are_rejected() {
    let cond = |i: usize| format!(r#"{{"index": {i}, "value": 12345678901, "op": "SCMP_CMP_GT"}}"#);
    let args = (0..6).map(cond).collect::<Vec<_>>().join(",");
    let entries: Vec<String> = syscalls_x86_64::X86_64
        .iter()
        .map(|(name, _)| {
            format!(r#"{{"names": ["{name}"], "action": "SCMP_ACT_LOG", "args": [{args}]}}"#)
        })
        .collect();
    let json = format!(
        r#"{{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{}]}}"#,
        entries.join(",")
    );
    let msg = compile_err(&json);
    assert!(
        msg.starts_with("linux.seccomp: compiled filter has ")
            && msg.ends_with(" instructions, more than the kernel limit of 4096"),
        "{msg}"
    );
}

#[test]
fn flags_map_to_seccomp_filter_flags() {
    let p = profile(
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "flags": ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG",
                      "SECCOMP_FILTER_FLAG_SPEC_ALLOW", "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]}"#,
    );
    assert_eq!(filter_flags(&p), 0b111);
    assert_eq!(
        filter_flags(&profile(r#"{"defaultAction": "SCMP_ACT_ALLOW"}"#)),
        0
    );
    assert_eq!(
        filter_flags(&profile(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_LOG"]}"#
        )),
        SECCOMP_FILTER_FLAG_LOG
    );
}

/// The seccomp lines of this thread's /proc status (mode, and filter count where shown).
fn seccomp_status() -> Vec<String> {
    std::fs::read_to_string("/proc/thread-self/status")
        .expect("/proc/thread-self/status is readable")
        .lines()
        .filter(|l| l.starts_with("Seccomp"))
        .map(str::to_string)
        .collect()
}

#[test]
fn kernel_flag_probe_installs_nothing() {
    let before = seccomp_status();
    assert!(!before.is_empty());
    assert!(kernel_supports_flag(SECCOMP_FILTER_FLAG_TSYNC));
    assert!(kernel_supports_flag(SECCOMP_FILTER_FLAG_LOG));
    assert!(!kernel_supports_flag(1 << 30));
    assert_eq!(seccomp_status(), before);
}

#[test]
fn kernel_errors_are_reported() {
    // An empty program is rejected before anything is installed.
    let empty = Filter { insns: Vec::new() };
    let p = profile(r#"{"defaultAction": "SCMP_ACT_ALLOW"}"#);
    let before = seccomp_status();
    let err = install(&empty, &p).expect_err("an empty program is invalid");
    assert!(matches!(err, SeccompError::Install(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "seccomp(SECCOMP_SET_MODE_FILTER): Invalid argument (os error 22)"
    );
    assert_eq!(seccomp_status(), before);
}

#[test]
fn syscall_tables_are_sorted_and_consistent() {
    for table in [
        syscalls_x86_64::X86_64,
        syscalls_x86::X86,
        syscalls_x32::X32,
    ] {
        assert!(table.windows(2).all(|w| w[0].0 < w[1].0));
        let mut numbers: Vec<u32> = table.iter().map(|(_, n)| *n).collect();
        numbers.sort_unstable();
        numbers.dedup();
        assert_eq!(numbers.len(), table.len(), "duplicate numbers");
    }
    assert!(syscalls_other::OTHER_ARCH_ONLY
        .windows(2)
        .all(|w| w[0] < w[1]));
    assert!(syscalls_x32::X32
        .iter()
        .all(|(_, n)| n & X32_SYSCALL_BIT != 0));
    let spot = [
        ("x86_64", "read", 0),
        ("x86_64", "uname", 63),
        ("x86_64", "clone3", 435),
        ("x86_64", "listns", 470),
        ("x86_64", "uretprobe", 335),
        ("x86", "read", 3),
        ("x86", "socketcall", 102),
        ("x86", "mseal", 462),
        ("x32", "execve", X32_SYSCALL_BIT | 520),
        ("x32", "mseal", X32_SYSCALL_BIT | 462),
    ];
    for (abi, name, expected) in spot {
        assert_eq!(syscall_number(abi, name), Some(expected), "{abi} {name}");
    }
    assert_eq!(syscall_number("x86", "map_shadow_stack"), None);
    assert_eq!(syscall_number("x86_64", "socketcall"), None);
    assert_eq!(syscall_number("arm", "read"), None);
    assert!(known_syscall("arm_fadvise64_64") && known_syscall("socketcall"));
    assert!(!known_syscall("fooo"));
}

/// Forks; the child sets no_new_privs, installs `filter` and runs `body`, whose return value
/// becomes its exit status. Returns the raw wait status.
fn in_filtered_child(filter: &Filter, profile: &LinuxSeccomp, body: fn() -> i32) -> i32 {
    // SAFETY: the child only calls async-signal-safe functions (prctl, seccomp and the test
    // syscalls through `syscall`, `_exit`) and `install`, which does not allocate on success;
    // it never returns into the test harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1) takes no pointers.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            // SAFETY: _exit ends the child without running the parent's atexit handlers.
            unsafe { libc::_exit(100) };
        }
        let code = match install(filter, profile) {
            Ok(()) => body(),
            Err(_) => 101,
        };
        // SAFETY: as above.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: `status` is a valid out-pointer and `pid` is our child.
    let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(rc, pid, "waitpid: {}", io::Error::last_os_error());
    status
}

/// mkdirat on a path that cannot exist: 0 when it failed with errno 42.
fn mkdirat_gives_errno_42() -> i32 {
    let path = c"/nonexistent-berth-seccomp-test/dir";
    // SAFETY: `path` is a NUL-terminated string that outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_mkdirat, libc::AT_FDCWD, path.as_ptr(), 0o700) };
    // SAFETY: __errno_location returns this thread's errno slot.
    let e = unsafe { *libc::__errno_location() };
    // SAFETY: getpid takes no arguments; it must still be allowed.
    let pid_ok = unsafe { libc::syscall(libc::SYS_getpid) } > 0;
    if rc == -1 && e == 42 && pid_ok {
        0
    } else {
        1
    }
}

#[test]
fn installed_filter_makes_mkdirat_fail_with_errno_42() {
    let p = profile(
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "flags": ["SECCOMP_FILTER_FLAG_LOG"],
            "syscalls": [{"names": ["mkdirat", "mkdir"], "action": "SCMP_ACT_ERRNO",
                          "errnoRet": 42}]}"#,
    );
    let f = compile(&p).expect("profile compiles");
    verify(f.instructions());
    let status = in_filtered_child(&f, &p, mkdirat_gives_errno_42);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child status {status:#x}"
    );
    // Without the filter mkdirat fails with ENOENT instead.
    assert_eq!(mkdirat_gives_errno_42(), 1);
}

#[test]
fn installed_filter_kills_with_sigsys() {
    let p = profile(
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "flags": ["SECCOMP_FILTER_FLAG_TSYNC"],
            "syscalls": [{"names": ["mkdirat"], "action": "SCMP_ACT_KILL_PROCESS"}]}"#,
    );
    let f = compile(&p).expect("profile compiles");
    let status = in_filtered_child(&f, &p, mkdirat_gives_errno_42);
    assert!(
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS,
        "child status {status:#x}"
    );
}

/// Under Docker's default profile: getpid works, umount2 and socket(AF_VSOCK) fail with EPERM,
/// clone3 with ENOSYS. 0 when all hold.
fn docker_verdicts_hold() -> i32 {
    fn errno_of(rc: libc::c_long) -> i32 {
        if rc == -1 {
            // SAFETY: __errno_location returns this thread's errno slot.
            unsafe { *libc::__errno_location() }
        } else {
            0
        }
    }
    let path = c"/nonexistent-berth-seccomp-test";
    // SAFETY: getpid takes no arguments.
    let pid_ok = unsafe { libc::syscall(libc::SYS_getpid) } > 0;
    // SAFETY: `path` is a NUL-terminated string that outlives the call.
    let umount = errno_of(unsafe { libc::syscall(libc::SYS_umount2, path.as_ptr(), 0) });
    // SAFETY: socket takes integer arguments only.
    let vsock = errno_of(unsafe { libc::syscall(libc::SYS_socket, 40, libc::SOCK_STREAM, 0) });
    // SAFETY: clone3 with a NULL argument would fail with EFAULT; the filter answers first.
    let clone3 =
        errno_of(unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<libc::c_void>(), 0) });
    if pid_ok && umount == libc::EPERM && vsock == libc::EPERM && clone3 == libc::ENOSYS {
        0
    } else {
        1
    }
}

#[test]
fn docker_default_profile_is_accepted_and_enforced_by_the_kernel() {
    let p = profile(DOCKER_DEFAULT);
    let f = compile(&p).expect("profile compiles");
    let status = in_filtered_child(&f, &p, docker_verdicts_hold);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child status {status:#x}"
    );
}

#[test]
fn kernel_accepts_long_jumps() {
    let entries: Vec<String> = syscalls_x86_64::X86_64
        .iter()
        .enumerate()
        .filter(|(_, (name, _))| !matches!(*name, "exit_group" | "exit" | "prctl" | "seccomp"))
        .map(|(i, (name, _))| {
            format!(
                r#"{{"names": ["{name}"], "action": "SCMP_ACT_ERRNO", "errnoRet": {},
                    "args": [{{"index": {}, "value": {}, "op": "SCMP_CMP_GE"}}]}}"#,
                i + 1,
                i % 6,
                (i as u64 + 1) * 0x1_0000_0001
            )
        })
        .collect();
    let p = profile(&format!(
        r#"{{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{}]}}"#,
        entries.join(",")
    ));
    let f = compile(&p).expect("profile compiles");
    verify(f.instructions());
    assert!(f.instructions().iter().any(|i| i.code == JA && i.k > 255));
    let status = in_filtered_child(&f, &p, mkdirat_gives_errno_42);
    // Installed: mkdirat with small arguments is allowed and fails with ENOENT (exit 1).
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 1,
        "child status {status:#x}"
    );
}

/// Random profiles against random syscalls, each verdict checked against the documented model
/// (module docs: conditional entries first, in order; then the first unconditional one; then
/// `defaultAction`; i386 sees only the low 32 bits of an argument).
mod props {
    use proptest::prelude::*;

    use super::*;

    const NAMES: [&str; 5] = ["read", "mkdirat", "socket", "personality", "clone"];

    #[derive(Debug, Clone)]
    struct Cond {
        index: usize,
        op: &'static str,
        value: u64,
        value_two: u64,
    }

    #[derive(Debug, Clone)]
    struct Entry {
        names: Vec<&'static str>,
        /// (action, errnoRet when it takes one, verdict)
        action: (&'static str, Option<u32>, u32),
        conds: Vec<Cond>,
    }

    fn value() -> impl Strategy<Value = u64> {
        prop_oneof![
            prop::sample::select(INTERESTING.to_vec()),
            any::<u64>(),
            0u64..8
        ]
    }

    fn action() -> impl Strategy<Value = (&'static str, Option<u32>, u32)> {
        prop_oneof![
            Just(("SCMP_ACT_ALLOW", None, SECCOMP_RET_ALLOW)),
            Just(("SCMP_ACT_LOG", None, SECCOMP_RET_LOG)),
            Just(("SCMP_ACT_KILL_PROCESS", None, SECCOMP_RET_KILL_PROCESS)),
            (1u32..4096).prop_map(|e| ("SCMP_ACT_ERRNO", Some(e), errno(e))),
        ]
    }

    fn cond() -> impl Strategy<Value = Cond> {
        (
            0usize..6,
            prop::sample::select(OPS.to_vec()),
            value(),
            value(),
        )
            .prop_map(|(index, op, value, value_two)| Cond {
                index,
                op,
                value,
                value_two,
            })
    }

    fn entry() -> impl Strategy<Value = Entry> {
        (
            prop::sample::subsequence(NAMES.to_vec(), 1..=3),
            action(),
            prop::collection::vec(cond(), 0..4),
        )
            .prop_map(|(names, action, conds)| Entry {
                names,
                action,
                conds,
            })
    }

    fn to_json(default: &(&str, Option<u32>, u32), entries: &[Entry]) -> String {
        let action = |(a, e, _): &(&str, Option<u32>, u32), key: &str| {
            let mut v = serde_json::json!({ key: a });
            if let Some(e) = e {
                v[if key == "action" {
                    "errnoRet"
                } else {
                    "defaultErrnoRet"
                }] = (*e).into();
            }
            v
        };
        let mut p = action(default, "defaultAction");
        p["architectures"] = serde_json::json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]);
        p["syscalls"] = entries
            .iter()
            .map(|e| {
                let mut v = action(&e.action, "action");
                v["names"] = serde_json::json!(e.names);
                if !e.conds.is_empty() {
                    v["args"] = e
                        .conds
                        .iter()
                        .map(|c| serde_json::json!({"index": c.index, "op": c.op, "value": c.value, "valueTwo": c.value_two}))
                        .collect();
                }
                v
            })
            .collect();
        p.to_string()
    }

    fn model(default: u32, entries: &[Entry], name: &str, args: &[u64; 6], wide: bool) -> u32 {
        let seen = |a: u64| if wide { a } else { a & 0xffff_ffff };
        let mine = || entries.iter().filter(|e| e.names.contains(&name));
        mine()
            .filter(|e| !e.conds.is_empty())
            .find(|e| {
                e.conds
                    .iter()
                    .all(|c| reference(c.op, c.value, c.value_two, seen(args[c.index])))
            })
            .or_else(|| mine().find(|e| e.conds.is_empty()))
            .map_or(default, |e| e.action.2)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn compiled_filters_decide_as_the_model(
            default in action(),
            entries in prop::collection::vec(entry(), 0..8),
            calls in prop::collection::vec(
                (prop::sample::select(NAMES.to_vec()), prop::array::uniform6(value()), any::<bool>()),
                1..16,
            ),
        ) {
            let json = to_json(&default, &entries);
            let filter = compile_ok(&json);
            for (name, args, i386) in calls {
                let mut data = if i386 { Data::i386(name) } else { Data::x86_64(name) };
                data.args = args;
                // A condition's value is often the argument itself, so equality is exercised.
                let want = model(default.2, &entries, name, &args, !i386);
                prop_assert_eq!(run(filter.instructions(), &data), want, "{} for {:?}", json, data);
                for e in &entries {
                    for c in &e.conds {
                        data.args[c.index] = c.value;
                        let mut a = args;
                        a[c.index] = c.value;
                        let want = model(default.2, &entries, name, &a, !i386);
                        prop_assert_eq!(run(filter.instructions(), &data), want, "{} for {:?}", json, data);
                        data.args = args;
                    }
                }
            }
        }
    }
}
