//! The Python Docker SDK (PyPI `docker`, installed by scripts/test into a virtual
//! environment named by BERTH_PYTHON) runs a session of its own against berth's daemon:
//! containers, images (build, push and pull with berth's registry), networks and volumes.
//! Loopback only.

mod common;

use std::io::BufRead;
use std::process::{Command, Stdio};

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
    let mut reg = Command::new(common::BERTH)
        .args(["registry", "serve", "-q", "--addr", "127.0.0.1:0", "--root"])
        .arg(dir.path().join("registry"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(reg.stderr.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let addr = first
        .split("://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {first:?}"))
        .to_string();
    let script = common::manifest_dir().join("tests/sdk/session.py");
    let out = Command::new(&python)
        .arg(&script)
        .env("DOCKER_HOST", format!("unix://{}", d.socket.display()))
        .env("REGISTRY", &addr)
        .output()
        .unwrap();
    let _ = reg.kill();
    let _ = reg.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("ok"),
        "the SDK session failed:\n{stdout}\n{}\ndaemon log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
}
