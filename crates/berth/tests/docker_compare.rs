//! The same docker CLI session (tests/docker/compare.sh) against dockerd (Debian's docker.io,
//! started here with its own data root, exec root and socket, without networking) and
//! against berth: what the user observes must be the same. Where berth differs from dockerd
//! by design, docs/api.md says so, and the script does not go there.

mod common;

use std::process::{Child, Command, Stdio};

/// A dockerd of the test's own; stopped, and its mounts released, when dropped.
struct Dockerd {
    child: Child,
    dir: std::path::PathBuf,
    socket: std::path::PathBuf,
}

impl Dockerd {
    fn start(dir: &std::path::Path) -> Dockerd {
        std::fs::create_dir_all(dir).unwrap();
        let socket = dir.join("docker.sock");
        let child = Command::new("dockerd")
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .args([
                "--bridge",
                "none",
                "--iptables=false",
                "--ip-forward=false",
                "--ip-masq=false",
                "--storage-driver",
                "overlay2",
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("dockerd.log")).unwrap())
            .spawn()
            .expect("dockerd (Debian's docker.io; scripts/test installs it)");
        let d = Dockerd {
            child,
            dir: dir.to_path_buf(),
            socket,
        };
        for _ in 0..150 {
            let up = Command::new("docker")
                .env("DOCKER_HOST", format!("unix://{}", d.socket.display()))
                .args(["version", "--format", "{{.Server.Version}}"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if up {
                return d;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        panic!(
            "dockerd did not come up: {}",
            std::fs::read_to_string(dir.join("dockerd.log")).unwrap_or_default()
        );
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let host = format!("unix://{}", self.socket.display());
        if let Ok(out) = Command::new("docker")
            .env("DOCKER_HOST", &host)
            .args(["ps", "-aq"])
            .output()
        {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("docker")
                    .env("DOCKER_HOST", &host)
                    .args(["rm", "-f", id])
                    .output();
            }
        }
        // SAFETY: SIGTERM to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        for _ in 0..100 {
            if self.child.try_wait().ok().flatten().is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Whatever it left mounted under its directories.
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut under: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(self.dir.to_str().unwrap_or("/nonexistent")))
            .collect();
        under.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in under {
            let _ = Command::new("umount").args(["-l", m]).output();
        }
    }
}

/// tests/sdk/compare.py (the Python Docker SDK and raw API requests) against `host`.
fn sdk_session(host: &str) -> String {
    let python = std::env::var("BERTH_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .arg(common::manifest_dir().join("tests/sdk/compare.py"))
        .env("DOCKER_HOST", host)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The lines where two sessions' outputs differ.
fn differences(theirs: &str, ours: &str) -> Vec<String> {
    let mut differ: Vec<String> = theirs
        .lines()
        .zip(ours.lines())
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, (a, b))| format!("line {}: dockerd {a:?}, berth {b:?}", i + 1))
        .collect();
    if theirs.lines().count() != ours.lines().count() {
        differ.push(format!(
            "dockerd printed {} lines, berth {}",
            theirs.lines().count(),
            ours.lines().count()
        ));
    }
    differ
}

fn session(host: &str, tar: &std::path::Path) -> String {
    let script = common::manifest_dir().join("tests/docker/compare.sh");
    let out = Command::new("sh")
        .arg(&script)
        .env("DOCKER_HOST", host)
        .env("TAR", tar)
        .env("DOCKER_CLI_HINTS", "false")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_same_docker_session_gives_the_same_results_on_dockerd_and_on_berth() {
    common::require_root();
    let dir = tempfile::Builder::new()
        .prefix("berth-compare-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let tar = common::rootfs_tar(dir.path(), "bb", "busybox\n");
    let dockerd = Dockerd::start(&dir.path().join("dockerd"));
    let berth = common::Daemon::start(&dir.path().join("berth"));
    let (dockerd_host, berth_host) = (
        format!("unix://{}", dockerd.socket.display()),
        format!("unix://{}", berth.socket.display()),
    );
    let theirs = session(&dockerd_host, &tar);
    let ours = session(&berth_host, &tar);
    let differ = differences(&theirs, &ours);
    assert!(
        differ.is_empty(),
        "the outputs differ:\n{}\n--- dockerd ---\n{theirs}\n--- berth ---\n{ours}",
        differ.join("\n")
    );
    assert!(theirs.contains("run: hello"), "{theirs}");
    // What programs written for Docker's API observe, on the same daemons (each has busybox
    // from the CLI session).
    let theirs = sdk_session(&dockerd_host);
    let ours = sdk_session(&berth_host);
    let differ = differences(&theirs, &ours);
    assert!(
        differ.is_empty(),
        "the API sessions differ:\n{}\n--- dockerd ---\n{theirs}\n--- berth ---\n{ours}\n--- berth's log ---\n{}",
        differ.join("\n"),
        berth.log()
    );
    // Every group ran to its end on dockerd (no group raised).
    assert!(!theirs.contains(" raised "), "{theirs}");
    assert!(theirs.contains("prune reclaims: [2, true]"), "{theirs}");
}
