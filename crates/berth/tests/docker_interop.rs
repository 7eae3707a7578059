//! Image archives across berth and Docker, with clients nobody here wrote: Debian's dockerd
//! (docker.io) saves an image that berth loads and runs, and loads and runs an image berth
//! saved. Needs root and docker.io (scripts/test installs it); the daemon is private to the
//! test (own data root, socket, no bridge, no iptables).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{busybox_bundle, require_root, rootfs_tar, BERTH};

struct Dockerd {
    dir: tempfile::TempDir,
    child: Child,
}

impl Dockerd {
    fn start() -> Dockerd {
        require_root();
        assert!(
            Path::new("/usr/sbin/dockerd").exists() || Path::new("/usr/bin/dockerd").exists(),
            "dockerd is missing: install Debian's docker.io package (scripts/test does)"
        );
        let dir = tempfile::Builder::new()
            .prefix("berth-dockerd-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let p = |n: &str| dir.path().join(n);
        let log = fs::File::create(p("dockerd.log")).unwrap();
        let child = Command::new("dockerd")
            .arg("--data-root")
            .arg(p("data"))
            .arg("--exec-root")
            .arg(p("exec"))
            .arg("--pidfile")
            .arg(p("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", p("docker.sock").display()))
            .args([
                "--bridge",
                "none",
                "--iptables=false",
                "--ip6tables=false",
                "--ip-forward=false",
                "--ip-masq=false",
                "--storage-driver",
                "vfs",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let d = Dockerd { dir, child };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !d.docker(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "dockerd did not come up: {}",
                fs::read_to_string(d.dir.path().join("dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        d
    }

    fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .arg("-H")
            .arg(format!(
                "unix://{}",
                self.dir.path().join("docker.sock").display()
            ))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        common::stdout_of(self.docker(args), &format!("docker {args:?}"))
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // SAFETY: signalling the daemon we started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "grep -o ' {0}[^ ]*' /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l",
                self.dir.path().display()
            ))
            .status();
    }
}

#[test]
fn docker_save_loads_into_berth_and_berth_save_loads_into_docker() {
    let d = Dockerd::start();
    let work = d.dir.path();
    let b = common::Daemon::start(&work.join("berth"));

    // docker → berth
    let tar = rootfs_tar(work, "from-docker", "made by docker\n");
    d.ok(&[
        "import",
        "--change",
        "CMD [\"cat\", \"/etc/version\"]",
        tar.to_str().unwrap(),
        "fromdocker:1",
    ]);
    let docker_id = d
        .ok(&["image", "inspect", "--format", "{{.Id}}", "fromdocker:1"])
        .trim()
        .to_string();
    let archive = work.join("docker-saved.tar");
    d.ok(&["save", "-o", archive.to_str().unwrap(), "fromdocker:1"]);
    assert_eq!(
        b.ok(&["load", "-i", archive.to_str().unwrap()]).trim(),
        "Loaded image: fromdocker:1"
    );
    let inspect: serde_json::Value =
        serde_json::from_str(&b.ok(&["image", "inspect", "fromdocker:1"])).unwrap();
    assert_eq!(
        inspect[0]["Id"],
        docker_id.as_str(),
        "the image id changed on the way"
    );
    assert_eq!(
        inspect[0]["Config"]["Cmd"],
        serde_json::json!(["cat", "/etc/version"])
    );
    let merged = PathBuf::from(b.ok(&["image", "mount", "c1", "fromdocker:1"]).trim());
    let run = work.join("run");
    busybox_bundle(&run, &["cat", "/etc/version"]);
    let cfg = run.join("config.json");
    let mut c: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&cfg).unwrap()).unwrap();
    c["root"] = serde_json::json!({"path": merged});
    fs::write(&cfg, c.to_string()).unwrap();
    let out = Command::new(BERTH)
        .args(["runtime", "--root"])
        .arg(work.join("rt"))
        .args(["run", "--bundle"])
        .arg(&run)
        .arg("c1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "made by docker\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    b.ok(&["image", "umount", "c1"]);

    // berth → docker
    let tar = rootfs_tar(work, "from-berth", "made by berth\n");
    let berth_id = b
        .ok(&[
            "image",
            "import",
            "-c",
            "CMD [\"cat\", \"/etc/version\"]",
            tar.to_str().unwrap(),
            "fromberth:1",
        ])
        .trim()
        .to_string();
    let archive = work.join("berth-saved.tar");
    b.ok(&["save", "-o", archive.to_str().unwrap(), "fromberth:1"]);
    let loaded = d.ok(&["load", "-i", archive.to_str().unwrap()]);
    assert!(loaded.contains("fromberth:1"), "{loaded}");
    assert_eq!(
        d.ok(&["image", "inspect", "--format", "{{.Id}}", "fromberth:1"])
            .trim(),
        berth_id,
        "the image id changed on the way"
    );
    let out = d.ok(&["run", "--rm", "--network", "none", "fromberth:1"]);
    assert_eq!(out, "made by berth\n");
}
