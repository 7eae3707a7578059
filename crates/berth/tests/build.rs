//! `berth build --check` over Dockerfiles written to cover the language: every problem by
//! file:line:column, none for a file that uses every instruction correctly.

use std::path::Path;
use std::process::Command;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

fn check(name: &str) -> (i32, String) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dockerfiles");
    let out = Command::new(BERTH)
        .args(["build", "--check", "-f"])
        .arg(dir.join(name))
        .arg(&dir)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn a_dockerfile_using_every_instruction_checks_clean() {
    let (code, out) = check("good.Dockerfile");
    assert_eq!(
        (code, out.trim()),
        (0, "Check complete, no warnings found."),
        "{out}"
    );
}

#[test]
fn every_problem_is_reported_with_its_place() {
    let (code, out) = check("bad.Dockerfile");
    assert_eq!(code, 1);
    let lines: Vec<&str> = out.lines().collect();
    let expect = [
        ":1:1: error: RUN: no build stage in current context",
        ":3:6: error: COPY: unknown flag: --form",
        ":4:1: error: unknown instruction: FORM",
        ":5:1: warning: JSON arguments recommended for CMD",
        ":6:1: warning: multiple CMD instructions",
        ":7:6: error: duplicate stage name",
        ":8:6: error: COPY --from=5: stage 5 is not an earlier stage",
        ":9:7: error: SHELL requires the arguments to be in JSON form",
    ];
    for e in expect {
        assert!(
            lines.iter().any(|l| l.contains(e)),
            "missing {e:?} in:\n{out}"
        );
    }
    assert!(out.contains("bad.Dockerfile:"));
    assert!(
        lines
            .last()
            .unwrap()
            .starts_with("Check complete, 6 error(s) and 2 warning(s)"),
        "{out}"
    );
}
