//! Builds berth-init (init/main.rs) as a static binary: it runs inside images without a C
//! library. It uses std only, so one rustc call builds it.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = "init/main.rs";
    println!("cargo:rerun-if-changed={src}");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("berth-init");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let status = Command::new(rustc)
        .args([
            "--edition=2021",
            "--crate-name=berth_init",
            "-Copt-level=s",
            "-Cpanic=abort",
            "-Cstrip=symbols",
            "-Ctarget-feature=+crt-static",
            "-o",
        ])
        .arg(&out)
        .arg(src)
        .status()
        .expect("running rustc for berth-init");
    assert!(status.success(), "building berth-init failed");
}
