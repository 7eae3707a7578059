//! What the integration tests share: root, and the busybox fixtures.

// Each test crate uses a different part of this module.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

pub const BERTH: &str = env!("CARGO_BIN_EXE_berth");

/// Fails (never skips) a test that needs root when not run as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "the integration tests need root (CI runs as root)");
}

/// Makes a busybox bundle at `dir` (scripts/busybox-bundle) whose process runs `args`.
pub fn busybox_bundle(dir: &Path, args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/busybox-bundle");
    let out = Command::new(&script)
        .arg(dir)
        .arg(BERTH)
        .arg("--")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "busybox-bundle failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A gzip tarball of a busybox root file system whose /etc/version says `text`, made in `dir`.
pub fn rootfs_tar(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let bundle = dir.join(format!("bundle-{name}"));
    busybox_bundle(&bundle, &["true"]);
    std::fs::write(bundle.join("rootfs/etc/version"), text).unwrap();
    let tar = dir.join(format!("{name}.tar.gz"));
    let status = Command::new("tar")
        .arg("-C")
        .arg(bundle.join("rootfs"))
        .arg("-czf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    tar
}

/// The stdout of a command that must have succeeded (`what` names it in the failure).
pub fn stdout_of(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
