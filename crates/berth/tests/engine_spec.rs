//! The engine's `docker run` spec, run by berth's runtime: Docker's default security profile
//! holds from inside the container.

mod common;

use std::fs;
use std::process::{Command, Stdio};

use common::{busybox_bundle, require_root, BERTH};

#[test]
fn docker_run_defaults_hold_inside_the_container() {
    require_root();
    let dir = tempfile::Builder::new()
        .prefix("berth-engine-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let bundle = dir.path().join("bundle");
    busybox_bundle(&bundle, &["true"]);
    let image: engine::spec::ImageConfig = serde_json::from_value(serde_json::json!({
        "Cmd": ["sh", "-c", "grep -E 'CapEff|Seccomp:' /proc/self/status; unshare -n true 2>&1; echo unshare=$?; echo ok > /tmp/x && cat /tmp/x; hostname; echo $GREETING"],
        "Env": ["GREETING=hello"],
    }))
    .unwrap();
    let opts = engine::spec::RunOptions {
        hostname: Some("web".into()),
        mounts: vec![engine::spec::MountSpec::Tmpfs {
            target: "/tmp".into(),
            size: None,
            mode: None,
        }],
        ..Default::default()
    };
    let spec = engine::spec::generate(&image, &opts, &bundle.join("rootfs"), &|_| None).unwrap();
    fs::write(
        bundle.join("config.json"),
        serde_json::to_string(&spec).unwrap(),
    )
    .unwrap();
    let out = Command::new(BERTH)
        .args(["runtime", "--root"])
        .arg(dir.path().join("state"))
        .args(["run", "--bundle"])
        .arg(&bundle)
        .arg("engine-spec")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Docker's 14 default capabilities: 0x00000000a80425fb.
    assert!(stdout.contains("CapEff:\t00000000a80425fb"), "{stdout}");
    assert!(stdout.contains("Seccomp:\t2"), "{stdout}");
    assert!(
        stdout.contains("Operation not permitted") && !stdout.contains("unshare=0"),
        "unshare was allowed: {stdout}"
    );
    assert!(stdout.contains("ok\nweb\nhello\n"), "{stdout}");
}
