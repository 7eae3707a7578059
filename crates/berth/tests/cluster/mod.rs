//! A cluster harness for tests: `berth server` processes on loopback (SQLite or a real etcd
//! from Debian's `etcd-server`), and `kubectl` pointed at them.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;

pub mod nodes;

/// A running `berth server`.
pub struct Server {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub url: String,
    /// The cluster registry's `host:port`.
    pub registry: Option<String>,
    pub pid: u32,
    _etcd: Option<u32>,
}

/// Children die with the thread that started them (PR_SET_PDEATHSIG): shared servers are
/// started from a thread that lives as long as the test process, so nothing outlives it.
fn spawn_tied(mut cmd: Command) -> Child {
    // SAFETY: prctl with PR_SET_PDEATHSIG only sets a flag of the calling (child) process;
    // it is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn().expect("spawn")
}

/// What a spawned process hands back: its pid and its stderr.
pub struct Spawned {
    pub pid: u32,
    pub stderr: Option<std::process::ChildStderr>,
}

type Request = (Command, std::sync::mpsc::Sender<Spawned>);

fn keeper() -> &'static std::sync::Mutex<std::sync::mpsc::Sender<Request>> {
    static K: OnceLock<std::sync::Mutex<std::sync::mpsc::Sender<Request>>> = OnceLock::new();
    K.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Request>();
        std::thread::spawn(move || {
            // The children are kept (and reaped) here. The sender lives in a static, so
            // this thread lives as long as the test process, and its children die with it.
            let mut children: Vec<Child> = Vec::new();
            for (cmd, back) in rx {
                let mut child = spawn_tied(cmd);
                let _ = back.send(Spawned {
                    pid: child.id(),
                    stderr: child.stderr.take(),
                });
                children.push(child);
                children.retain_mut(|c| c.try_wait().ok().flatten().is_none());
            }
        });
        std::sync::Mutex::new(tx)
    })
}

/// Spawns a process that lives until the test process ends.
pub fn spawn_for_process(cmd: Command) -> Spawned {
    let (tx, rx) = std::sync::mpsc::channel();
    keeper().lock().unwrap().send((cmd, tx)).unwrap();
    rx.recv().unwrap()
}

/// Directories the servers of this test process use, removed when it exits.
static DIRS: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

extern "C" fn remove_dirs() {
    if let Ok(dirs) = DIRS.lock() {
        for d in dirs.iter() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// A directory for one server (its data, logs, kubeconfig), removed at exit: the test
/// harness exits the process through `exit`, which runs `atexit` handlers.
pub fn base_dir(name: &str) -> PathBuf {
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    // SAFETY: atexit registers a plain function without captured state; it runs once at
    // exit, after the tests, and only removes directories.
    REGISTERED.call_once(|| unsafe {
        libc::atexit(remove_dirs);
    });
    let d = std::env::temp_dir().join(format!("berth-cluster-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    DIRS.lock().unwrap().push(d.clone());
    d
}

/// Starts Debian's etcd on free loopback ports; returns its client URL and pid.
pub fn start_etcd(dir: &Path) -> (String, u32) {
    assert!(
        Path::new("/usr/bin/etcd").exists(),
        "the etcd tests need /usr/bin/etcd: install Debian's etcd-server package"
    );
    let client = crate::common::free_port();
    let peer = crate::common::free_port();
    let mut cmd = Command::new("/usr/bin/etcd");
    cmd.args([
        "--name",
        "t",
        "--data-dir",
        dir.join("etcd").to_str().unwrap(),
        "--listen-client-urls",
        &format!("http://127.0.0.1:{client}"),
        "--advertise-client-urls",
        &format!("http://127.0.0.1:{client}"),
        "--listen-peer-urls",
        &format!("http://127.0.0.1:{peer}"),
        "--initial-advertise-peer-urls",
        &format!("http://127.0.0.1:{peer}"),
        "--initial-cluster",
        &format!("t=http://127.0.0.1:{peer}"),
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let child = spawn_for_process(cmd);
    // etcd logs "ready to serve client requests" once it answers.
    let err = child.stderr.unwrap();
    let mut lines = BufReader::new(err).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("ready to serve client requests") => break,
            Some(Ok(_)) => {}
            _ => panic!("etcd exited before it was ready"),
        }
    }
    std::thread::spawn(move || for _ in lines {});
    (format!("etcd://127.0.0.1:{client}"), child.pid)
}

impl Server {
    /// Starts a server with its own data dir; `etcd` puts its store in a new etcd.
    pub fn start(name: &str, etcd: bool) -> Server {
        Server::start_with(name, etcd, &[])
    }

    /// Starts a server with extra flags.
    pub fn start_with(name: &str, etcd: bool, extra: &[&str]) -> Server {
        Server::launch(base_dir(name), etcd, extra, false, None)
    }

    /// Starts the server of a cluster with nodes: its scheduler and controllers run (its
    /// own node agent does not; the cluster's agents are hosts of their own).
    pub fn start_cluster(name: &str, extra: &[&str]) -> Server {
        Server::launch(base_dir(name), false, extra, true, None)
    }

    /// As [`Server::start_cluster`], in the network namespace `netns` (a host of its own).
    pub fn start_cluster_in(name: &str, netns: &str, extra: &[&str]) -> Server {
        Server::launch(base_dir(name), false, extra, true, Some(netns))
    }

    /// Starts a server again on the data dir of `old` (which must have stopped).
    pub fn start_reusing(old: &Server, extra: &[&str]) -> Server {
        Server::launch(old.dir.clone(), false, extra, false, None)
    }

    /// As [`Server::start_reusing`], with the scheduler and controllers (a cluster's server).
    pub fn restart_cluster(old: &Server, extra: &[&str]) -> Server {
        Server::launch(old.dir.clone(), false, extra, true, None)
    }

    fn launch(
        dir: PathBuf,
        etcd: bool,
        extra: &[&str],
        controllers: bool,
        netns: Option<&str>,
    ) -> Server {
        let kubeconfig = dir.join("kubeconfig.yaml");
        let mut cmd = match netns {
            // `ip netns exec` execs berth: the pid is the server's.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, crate::common::BERTH]);
                c
            }
            None => Command::new(crate::common::BERTH),
        };
        cmd.arg("server");
        if !extra.contains(&"--bind-address") {
            cmd.args(["--bind-address", "127.0.0.1"]);
        }
        // API-only servers run no node agent, scheduler or controllers; clusters with nodes
        // start agents of their own.
        if !extra.contains(&"--https-listen-port") {
            cmd.args(["--https-listen-port", "0"]);
        }
        // Servers of parallel tests share addresses: each registry on a port of its own.
        if !extra.contains(&"--registry-port") && !extra.contains(&"--disable-registry") {
            cmd.args(["--registry-port", "0"]);
        }
        cmd.arg("--disable-agent");
        if !controllers {
            cmd.args(["--disable-scheduler", "--disable-controller-manager"]);
        }
        cmd.arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--write-kubeconfig")
            .arg(&kubeconfig)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut etcd_pid = None;
        if etcd {
            let (url, pid) = start_etcd(&dir);
            cmd.args(["--datastore-endpoint", &url]);
            etcd_pid = Some(pid);
        }
        let child = spawn_for_process(cmd);
        let err = child.stderr.unwrap();
        let mut lines = BufReader::new(err).lines();
        // What the server said before it served (or why it stopped).
        let mut said = Vec::new();
        let url = loop {
            match lines.next() {
                Some(Ok(l)) => {
                    if let Some(rest) = l.split("Kubernetes API on ").nth(1) {
                        break rest.split(';').next().unwrap().to_string();
                    }
                    said.push(l);
                }
                _ => panic!("berth server exited before it served:\n{}", said.join("\n")),
            }
        };
        let log = dir.join("server.log");
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::File::create(log).unwrap();
            for l in lines.map_while(Result::ok) {
                let _ = writeln!(f, "{l}");
            }
        });
        let registry = said.iter().find_map(|l| {
            l.split("registry on https://")
                .nth(1)
                .map(|r| r.trim().to_string())
        });
        Server {
            dir,
            kubeconfig,
            url,
            registry,
            pid: child.pid,
            _etcd: etcd_pid,
        }
    }

    pub fn kubectl_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("kubectl");
        c.args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", &self.dir)
            .env_remove("KUBECTL_EXTERNAL_DIFF");
        c
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_cmd(args)
            .output()
            .expect("run kubectl (installed at /usr/local/bin or /usr/bin)")
    }

    pub fn kubectl_in(&self, args: &[&str], stdin: &str) -> Output {
        use std::io::Write;
        let mut c = self.kubectl_cmd(args);
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// kubectl that must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.kubectl(args);
        assert!(
            o.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    pub fn ok_in(&self, args: &[&str], stdin: &str) -> String {
        let o = self.kubectl_in(args, stdin);
        assert!(
            o.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// kubectl that must fail; its stderr.
    pub fn err(&self, args: &[&str]) -> String {
        let o = self.kubectl(args);
        assert!(
            !o.status.success(),
            "kubectl {args:?} should have failed: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8_lossy(&o.stderr).into_owned()
    }

    pub fn err_in(&self, args: &[&str], stdin: &str) -> String {
        let o = self.kubectl_in(args, stdin);
        assert!(
            !o.status.success(),
            "kubectl {args:?} should have failed: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8_lossy(&o.stderr).into_owned()
    }

    /// A fresh namespace for one test.
    pub fn namespace(&self, name: &str) -> String {
        self.ok(&["create", "namespace", name]);
        name.to_string()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

/// Replaces AGE cells (`0s`, `12s`, `3m2s`) so tables compare exactly.
pub fn mask_ages(table: &str) -> String {
    table
        .lines()
        .map(|l| {
            l.split_inclusive(' ')
                .map(|w| {
                    let t = w.trim_end();
                    let is_age = !t.is_empty()
                        && t.chars().next().unwrap().is_ascii_digit()
                        && (t.ends_with('s') || t.ends_with('m') || t.ends_with('h'))
                        && t.chars().all(|c| c.is_ascii_digit() || "smhd".contains(c));
                    if is_age {
                        format!("{:<width$}", "AGE", width = w.len())
                    } else {
                        w.to_string()
                    }
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("\n")
}
