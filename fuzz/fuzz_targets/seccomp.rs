//! Seccomp profiles compiled to classic BPF.
//! Invariants: no panic; a compiled filter is one the kernel accepts: 1..=4096 instructions,
//! every jump lands inside the program, and it ends with a return.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oci_spec::runtime::LinuxSeccomp;

const BPF_JMP: u16 = 0x05;
const BPF_RET: u16 = 0x06;
const BPF_JA: u16 = 0x00;

fuzz_target!(|data: &[u8]| {
    let Ok(profile) = serde_json::from_slice::<LinuxSeccomp>(data) else {
        return;
    };
    let Ok(filter) = runtime::seccomp::compile(&profile) else {
        return;
    };
    let prog = filter.instructions();
    assert!(
        (1..=4096).contains(&prog.len()),
        "{} instructions",
        prog.len()
    );
    for (pc, ins) in prog.iter().enumerate() {
        if ins.code & 0x07 == BPF_JMP {
            let targets: Vec<usize> = if ins.code & 0xf0 == BPF_JA {
                vec![pc + 1 + ins.k as usize]
            } else {
                vec![pc + 1 + ins.jt as usize, pc + 1 + ins.jf as usize]
            };
            for t in targets {
                assert!(t < prog.len(), "jump at {pc} to {t} of {}", prog.len());
            }
        }
    }
    assert_eq!(
        prog.last().unwrap().code & 0x07,
        BPF_RET,
        "no return at the end"
    );
});
