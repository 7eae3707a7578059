//! What the integration tests share: root, and the busybox bundle fixture.

use std::path::Path;
use std::process::Command;

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
