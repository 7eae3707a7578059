//! What the integration tests share: root, and the busybox fixtures.

// Each test crate uses a different part of this module.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

pub const BERTH: &str = env!("CARGO_BIN_EXE_berth");

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Fails (never skips) a test that needs root when not run as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "the integration tests need root (CI runs as root)");
}

/// This package's source directory, as `cargo test` says it when the test runs. Not the
/// compile-time `env!`: a target directory shared between clones (CI keeps one outside the
/// clone) may hold test binaries compiled from a clone at another path.
pub fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
}

/// Makes a busybox bundle at `dir` (scripts/busybox-bundle) whose process runs `args`.
pub fn busybox_bundle(dir: &Path, args: &[&str]) {
    let script = manifest_dir().join("../../scripts/busybox-bundle");
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

/// A daemon of the test's own (data root `dir/data`) with `busybox:latest` (CMD sh) imported.
pub fn daemon_with_busybox(dir: &Path) -> Daemon {
    daemon_with_busybox_and(dir, &[])
}

/// [`daemon_with_busybox`] with more daemon flags.
pub fn daemon_with_busybox_and(dir: &Path, flags: &[&str]) -> Daemon {
    let d = Daemon::start_with(&dir.join("data"), flags);
    let tar = rootfs_tar(dir, "bb", "busybox\n");
    d.ok(&[
        "image",
        "import",
        "-c",
        "CMD [\"sh\"]",
        tar.to_str().unwrap(),
        "busybox:latest",
    ]);
    d
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

/// A `berth daemon` of the test's own: data root under `root`, exec root and socket in a
/// short directory under /run (socket paths are limited to 108 bytes). Dropping it removes
/// every container it still has and stops it.
pub struct Daemon {
    pub root: std::path::PathBuf,
    pub exec_root: std::path::PathBuf,
    pub socket: std::path::PathBuf,
    child: Option<std::process::Child>,
    flags: Vec<String>,
}

static DAEMONS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Daemon {
    /// Starts a daemon whose data root is `root` and waits until it answers.
    pub fn start(root: &Path) -> Daemon {
        Daemon::start_with(root, &[])
    }

    /// [`Daemon::start`] with more daemon flags (kept for restarts).
    pub fn start_with(root: &Path, flags: &[&str]) -> Daemon {
        require_root();
        let n = DAEMONS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let exec_root = std::path::PathBuf::from(format!("/run/bt-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&exec_root);
        let socket = exec_root.join("berth.sock");
        let mut d = Daemon {
            root: root.to_path_buf(),
            exec_root,
            socket,
            child: None,
            flags: flags.iter().map(|f| f.to_string()).collect(),
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        std::fs::create_dir_all(&self.exec_root).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.exec_root.with_extension("log"))
            .unwrap();
        // Daemons side by side each get their own default bridge and subnet.
        let n = self
            .exec_root
            .to_string_lossy()
            .rsplit('-')
            .next()
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(0);
        let child = Command::new(BERTH)
            .arg("daemon")
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .arg("--root")
            .arg(&self.root)
            .arg("--exec-root")
            .arg(&self.exec_root)
            .arg("--bridge-name")
            .arg(format!("bt{}x{n}", std::process::id()))
            .arg("--bridge-subnet")
            .arg(format!("10.{}.0.0/16", 100 + n % 100))
            .args(&self.flags)
            // A test daemon never reaches a registry off this machine (a test that goes
            // wrong must not reach out to Docker Hub); tests name theirs when they have one.
            .args(if self.flags.iter().any(|f| f == "--allowed-registry") {
                &[][..]
            } else {
                &[
                    "--allowed-registry",
                    "127.0.0.0/8",
                    "--allowed-registry",
                    "localhost",
                    "--allowed-registry",
                    "::1",
                ][..]
            })
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        for _ in 0..200 {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        panic!("the daemon did not come up: {}", self.log());
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.exec_root.with_extension("log")).unwrap_or_default()
    }

    /// A `berth` command aimed at this daemon.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(BERTH);
        c.env("BERTH_HOST", format!("unix://{}", self.socket.display()));
        c.stdin(std::process::Stdio::null());
        c
    }

    /// Runs `berth args…`.
    pub fn berth(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// Runs `berth args…`, which must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        stdout_of(self.berth(args), &format!("berth {args:?}"))
    }

    /// Runs `berth args…`, which must fail; its exit code and stderr.
    pub fn err(&self, args: &[&str]) -> (i32, String) {
        let out = self.berth(args);
        assert!(
            !out.status.success(),
            "berth {args:?} succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Kills the daemon with SIGKILL (its containers keep running).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the daemon again on the same state.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            let ids = self.berth(&["ps", "-aq", "--no-trunc"]).stdout;
            for id in String::from_utf8_lossy(&ids).split_whitespace() {
                let _ = self.berth(&["rm", "-f", "-v", id]);
            }
        }
        // A clean stop releases the daemon's pool of ready network namespaces.
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill of our own child process.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            for _ in 0..100 {
                if c.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        // Whatever a killed daemon left pinned.
        for e in std::fs::read_dir(self.exec_root.join("netns"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(e.path().join("net"))
                .output();
        }
        // Its bridges and chains (a real daemon keeps them, as dockerd keeps docker0).
        let _ = Command::new(BERTH)
            .args(["daemon", "--remove-host-setup", "--root"])
            .arg(&self.root)
            .output();
        let _ = std::fs::remove_dir_all(&self.exec_root);
        let _ = std::fs::remove_file(self.exec_root.with_extension("log"));
    }
}

/// A pseudo-terminal pair for a test: (master, slave).
pub fn openpty(rows: u16, cols: u16) -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    use std::os::fd::FromRawFd;
    let (mut m, mut s) = (0, 0);
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty with valid out pointers and a winsize.
    let r = unsafe { libc::openpty(&mut m, &mut s, std::ptr::null_mut(), std::ptr::null(), &ws) };
    assert_eq!(r, 0);
    // SAFETY: fresh fds from openpty.
    unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(m),
            std::os::fd::OwnedFd::from_raw_fd(s),
        )
    }
}

/// Runs `cmd` on a 30x100 terminal, types `input` after a moment, and returns (exit code,
/// what it printed).
pub fn on_tty(mut cmd: Command, input: &str) -> (i32, String) {
    use std::io::{Read, Write};
    let (master, slave) = openpty(30, 100);
    cmd.stdin(std::fs::File::from(slave.try_clone().unwrap()))
        .stdout(std::fs::File::from(slave.try_clone().unwrap()))
        .stderr(std::fs::File::from(slave));
    let mut child = cmd.spawn().unwrap();
    drop(cmd);
    let mut m = std::fs::File::from(master);
    std::thread::sleep(std::time::Duration::from_millis(700));
    m.write_all(input.as_bytes()).unwrap();
    let reader = {
        let mut m = m.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut out = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = m.read(&mut buf) {
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
            }
            out
        })
    };
    let status = child.wait().unwrap();
    drop(m);
    let out = reader.join().unwrap();
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out).into_owned(),
    )
}

/// A `berth registry serve` on a free loopback port, killed when dropped.
pub struct Registry {
    child: std::process::Child,
    /// `127.0.0.1:<port>`.
    pub addr: String,
}

impl Registry {
    /// Serves `root` with the extra `args` (`--htpasswd …`).
    pub fn start(root: &Path, args: &[&str]) -> Registry {
        use std::io::BufRead;
        let mut child = Command::new(BERTH)
            .args(["registry", "serve", "-q", "--addr", "127.0.0.1:0", "--root"])
            .arg(root)
            .args(args)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        std::io::BufReader::new(child.stderr.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let addr = first
            .split("://")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("no address in {first:?}"))
            .to_string();
        Registry { child, addr }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
