//! The Python Docker SDK (PyPI `docker`, installed by scripts/test into a virtual
//! environment named by BERTH_PYTHON) runs a session of its own against berth's daemon:
//! containers, images (build, push and pull with berth's registry), networks and volumes.
//! Loopback only.

mod common;

use std::process::Command;

#[test]
fn the_python_docker_sdk_runs_its_session_against_berth() {
    common::require_root();
    let python = std::env::var("BERTH_PYTHON").unwrap_or_else(|_| "python3".into());
    let has_sdk = Command::new(&python)
        .args(["-c", "import docker"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        has_sdk,
        "{python} cannot import the Docker SDK: scripts/test installs it (or set BERTH_PYTHON)"
    );
    let dir = tempfile::Builder::new()
        .prefix("berth-sdk-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let d = common::daemon_with_busybox(dir.path());
    let reg = common::Registry::start(&dir.path().join("registry"), &[]);
    let addr = reg.addr.clone();
    let script = common::manifest_dir().join("tests/sdk/session.py");
    let out = Command::new(&python)
        .arg(&script)
        .env("DOCKER_HOST", format!("unix://{}", d.socket.display()))
        .env("REGISTRY", &addr)
        .output()
        .unwrap();
    drop(reg);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("ok"),
        "the SDK session failed:\n{stdout}\n{}\ndaemon log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
}
