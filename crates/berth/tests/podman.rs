//! End to end with a client nobody here wrote: Debian's podman (through conmon) uses berth as
//! its OCI runtime, via the `berth-runtime` name. Needs root and podman (scripts/test installs it).

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

mod common;

use common::{require_root, BERTH};

struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    fn new() -> Podman {
        require_root();
        assert!(
            Command::new("podman")
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success()),
            "podman is missing: install Debian's podman package (scripts/test does)"
        );
        let dir = tempfile::Builder::new()
            .prefix("berth-podman-")
            .tempdir_in("/var/tmp")
            .unwrap();
        std::os::unix::fs::symlink(BERTH, dir.path().join("berth-runtime")).unwrap();
        let p = Podman { dir };
        // A busybox image made locally from the busybox fixture: no registry involved.
        let tar = common::rootfs_tar(p.dir.path(), "busybox", "podman\n");
        p.ok(&["import", tar.to_str().unwrap(), "localhost/busybox:berth"]);
        p
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("podman");
        cmd.arg("--root").arg(self.path("storage"));
        cmd.arg("--runroot").arg(self.path("run"));
        cmd.args([
            "--storage-driver",
            "vfs",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
        ]);
        cmd.arg("--runtime").arg(self.path("berth-runtime"));
        cmd.args(args).stdin(Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        common::stdout_of(self.run(args), &format!("podman {args:?}"))
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "--all", "--force", "--time", "0"]);
    }
}

/// This machine's hard limits cannot be raised (no CAP_SYS_RESOURCE), and podman asks for more.
const ULIMITS: [&str; 4] = [
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=4096:4096",
];

#[test]
fn podman_runs_execs_stops_and_removes_containers_on_berth() {
    let p = Podman::new();
    let mut run = vec!["run", "--rm", "--network", "none"];
    run.extend(ULIMITS);
    run.extend([
        "localhost/busybox:berth",
        "sh",
        "-c",
        "echo hello from berth; grep Seccomp: /proc/self/status; exit 3",
    ]);
    let out = p.run(&run);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("hello from berth") && stdout.contains("Seccomp:\t2"),
        "{stdout}"
    );

    let mut detached = vec!["run", "-d", "--name", "web", "--network", "none"];
    detached.extend(ULIMITS);
    detached.extend(["localhost/busybox:berth", "sleep", "300"]);
    p.ok(&detached);
    let exec = p.ok(&["exec", "web", "sh", "-c", "echo from exec; ps"]);
    assert!(
        exec.contains("from exec") && exec.contains("sleep 300"),
        "{exec}"
    );
    let ps = p.ok(&["ps", "--format", "{{.Names}} {{.Status}}"]);
    assert!(ps.contains("web Up"), "{ps}");
    p.ok(&["stop", "--time", "1", "web"]);
    let ps = p.ok(&["ps", "--all", "--format", "{{.Names}} {{.Status}}"]);
    assert!(ps.contains("web Exited"), "{ps}");
    p.ok(&["rm", "web"]);

    // An interactive terminal through conmon's console socket.
    let mut it = vec!["run", "-it", "--rm", "--network", "none"];
    it.extend(ULIMITS);
    it.extend([
        "localhost/busybox:berth",
        "sh",
        "-c",
        "tty; read x; echo got:$x; exit 5",
    ]);
    let cmd = format_command(&p.command(&it));
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c", &cmd, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        use std::io::Write;
        std::thread::sleep(std::time::Duration::from_secs(3));
        let _ = stdin.write_all(b"typed\n");
        std::thread::sleep(std::time::Duration::from_secs(2));
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("/dev/pts/0") && text.contains("got:typed"),
        "{text:?}"
    );
    assert_eq!(out.status.code(), Some(5), "{text:?}");
}

/// A shell-quoted rendering of a Command, for script(1).
fn format_command(cmd: &Command) -> String {
    let quote = |s: &std::ffi::OsStr| format!("'{}'", s.to_string_lossy().replace('\'', "'\\''"));
    std::iter::once(quote(cmd.get_program()))
        .chain(cmd.get_args().map(quote))
        .collect::<Vec<_>>()
        .join(" ")
}
