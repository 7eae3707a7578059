//! A cluster with nodes on one machine: `berth server` on a test bridge, and N agents each
//! in a network namespace of its own ("a host") joined to that bridge by a veth, with its
//! own data dir, exec root, engine socket and cgroup root. Hosts can be killed, restarted,
//! cut off and brought back. Dropping the cluster removes every container, mount, cgroup,
//! namespace and interface it made.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use super::{base_dir, spawn_for_process, Server};
use crate::common::BERTH;

static CLUSTERS: AtomicU32 = AtomicU32::new(0);

/// One node: an agent in its own network namespace.
pub struct Host {
    pub name: String,
    pub netns: String,
    pub ip: String,
    pub data_dir: PathBuf,
    pub exec_root: PathBuf,
    pub socket: PathBuf,
    pub cgroup_root: String,
    pub pid: AtomicU32,
    veth: String,
    server_url: String,
    token: String,
    log: PathBuf,
    /// More `berth agent` flags (`--node-label`, `--node-taint`).
    extra: Vec<String>,
}

pub struct Cluster {
    pub server: Server,
    pub hosts: Vec<Host>,
    bridge: String,
    pub subnet_prefix: String,
    server_flags: Vec<String>,
    id: String,
    nodes_dir: PathBuf,
    pub token: String,
    /// Servers added so far (each takes the next address from `<prefix>.250`).
    added_servers: AtomicU32,
}

fn sh(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect(args[0])
}

fn must(args: &[&str]) {
    let o = sh(args);
    assert!(
        o.status.success(),
        "{}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Kills every process of a cgroup v1/v2 subtree and removes it.
fn remove_cgroups(root: &str) {
    let rel = root.trim_start_matches('/');
    let mut bases = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
        for e in rd.flatten() {
            bases.push(e.path().join(rel));
        }
    }
    bases.push(PathBuf::from("/sys/fs/cgroup").join(rel));
    for b in &bases {
        kill_tree(b);
    }
    for b in &bases {
        remove_tree(b);
    }
}

fn kill_tree(dir: &std::path::Path) {
    if let Ok(p) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in p.split_whitespace().filter_map(|x| x.parse::<i32>().ok()) {
            // SAFETY: kill(2) with a pid read from the cgroup.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                kill_tree(&e.path());
            }
        }
    }
}

fn remove_tree(dir: &std::path::Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    for _ in 0..50 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Unmounts everything mounted at or under `dir`, deepest first.
pub fn unmount_under(dir: &std::path::Path) {
    let prefix = dir.to_string_lossy().to_string();
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m == &prefix || m.starts_with(&format!("{prefix}/")))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = sh(&["umount", "-l", &p]);
    }
}

impl Cluster {
    /// A server (no agent of its own) and `n` agents, each in its own network namespace.
    pub fn start(name: &str, n: usize) -> Cluster {
        Cluster::start_with(name, n, &[])
    }

    /// As [`Cluster::start`], with extra `berth server` flags.
    pub fn start_with(name: &str, n: usize, server_flags: &[&str]) -> Cluster {
        Cluster::start_full(name, n, server_flags, &[])
    }

    /// As [`Cluster::start`], with extra `berth server` flags and `berth agent` flags for
    /// every node.
    pub fn start_full(
        name: &str,
        n: usize,
        server_flags: &[&str],
        agent_flags: &[&str],
    ) -> Cluster {
        crate::common::require_root();
        let k = CLUSTERS.fetch_add(1, Ordering::SeqCst);
        let id = format!("{}{k}", std::process::id() % 100_000);
        let bridge = format!("bcb{id}");
        // A /24 of 10.240.0.0/12 per cluster.
        let third = (std::process::id() as usize * 7 + k as usize) % 250;
        let subnet_prefix = format!("10.241.{third}");
        let _ = sh(&["ip", "link", "del", &bridge]);
        must(&["ip", "link", "add", &bridge, "type", "bridge"]);
        must(&[
            "ip",
            "addr",
            "add",
            &format!("{subnet_prefix}.1/24"),
            "dev",
            &bridge,
        ]);
        must(&["ip", "link", "set", &bridge, "up"]);
        let server_ip = format!("{subnet_prefix}.1");
        let mut flags = vec!["--bind-address", &server_ip, "--tls-san", &server_ip];
        flags.extend_from_slice(server_flags);
        let server = Server::start_cluster(name, &flags);
        let token = std::fs::read_to_string(server.dir.join("data/tls/token"))
            .unwrap()
            .trim()
            .to_string();
        let mut c = Cluster {
            server,
            hosts: Vec::new(),
            bridge,
            subnet_prefix,
            server_flags: flags.iter().map(|f| f.to_string()).collect(),
            id,
            nodes_dir: base_dir(&format!("{name}-nodes")),
            token,
            added_servers: AtomicU32::new(0),
        };
        for i in 0..n {
            let h = c.new_host(i, agent_flags);
            c.hosts.push(h);
        }
        for h in &c.hosts {
            h.spawn();
        }
        for h in &c.hosts {
            c.wait_ready(h);
        }
        c
    }

    /// Starts a second server of this cluster on the bridge (address `<prefix>.250`, the
    /// first's port), on the same store, given nothing but the cluster's token: it takes
    /// the CA and keys from the store.
    ///
    /// In a cluster whose first server runs etcd itself (`--cluster-init`), the server
    /// joins with `--server` and the token instead, adding an etcd member of its own.
    pub fn add_server(&self, name: &str) -> Server {
        let k = self.added_servers.fetch_add(1, Ordering::SeqCst);
        let ip = format!("{}.{}", self.subnet_prefix, 250 + k);
        let init = self.server_flags.iter().any(|f| f == "--cluster-init");
        // A server with an etcd member of its own is a host of its own: etcd checks that a
        // peer connects from an address its certificate names, which a second address of
        // this host's bridge would not be.
        let netns = format!("bcs{}x{k}", self.id);
        if init {
            let veth = format!("bcw{}x{k}", self.id);
            let _ = sh(&["ip", "netns", "del", &netns]);
            must(&["ip", "netns", "add", &netns]);
            must(&[
                "ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &netns,
            ]);
            must(&["ip", "link", "set", &veth, "master", &self.bridge, "up"]);
            let gw = format!("{}.1", self.subnet_prefix);
            let cidr = format!("{ip}/24");
            for args in [
                vec!["ip", "addr", "add", cidr.as_str(), "dev", "eth0"],
                vec!["ip", "link", "set", "eth0", "up"],
                vec!["ip", "link", "set", "lo", "up"],
                vec!["ip", "route", "add", "default", "via", gw.as_str()],
            ] {
                let mut v = vec!["ip", "netns", "exec", &netns];
                v.extend(args);
                must(&v);
            }
        } else {
            let _ = sh(&[
                "ip",
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                &self.bridge,
            ]);
        }
        let port = self.server.url.rsplit(':').next().unwrap().to_string();
        let mut flags: Vec<&str> = vec![
            "--bind-address",
            &ip,
            "--tls-san",
            &ip,
            "--https-listen-port",
            &port,
        ];
        if init {
            flags.extend(["--server", &self.server.url]);
        }
        // The store the first one uses.
        let mut it = self.server_flags.iter();
        while let Some(f) = it.next() {
            if f == "--datastore-endpoint" {
                flags.push("--datastore-endpoint");
                flags.push(it.next().unwrap());
            }
        }
        flags.extend(["--token", &self.token]);
        if init {
            Server::start_cluster_in(name, &netns, &flags)
        } else {
            Server::start_cluster(name, &flags)
        }
    }

    /// Adds a node to the running cluster (with more agent flags) and waits for it to be
    /// Ready; returns its index.
    pub fn add_node(&mut self, extra: &[&str]) -> usize {
        let i = self.hosts.len();
        let h = self.new_host(i, extra);
        self.hosts.push(h);
        self.hosts[i].spawn();
        self.wait_ready(&self.hosts[i]);
        i
    }

    /// Host `i`'s network namespace, veth and directories (not started).
    fn new_host(&self, i: usize, extra: &[&str]) -> Host {
        let (id, dir) = (&self.id, &self.nodes_dir);
        let server_ip = format!("{}.1", self.subnet_prefix);
        let c = self;
        {
            let netns = format!("bcn{id}x{i}");
            let veth = format!("bcv{id}x{i}");
            let ip = format!("{}.{}", c.subnet_prefix, 10 + i);
            let _ = sh(&["ip", "netns", "del", &netns]);
            must(&["ip", "netns", "add", &netns]);
            must(&[
                "ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &netns,
            ]);
            must(&["ip", "link", "set", &veth, "master", &c.bridge, "up"]);
            let ns = |args: &[&str]| {
                let mut v = vec!["ip", "netns", "exec", &netns];
                v.extend_from_slice(args);
                must(&v);
            };
            ns(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
            ns(&["ip", "link", "set", "eth0", "up"]);
            ns(&["ip", "link", "set", "lo", "up"]);
            ns(&["ip", "route", "add", "default", "via", &server_ip]);
            ns(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
            let exec_root = PathBuf::from(format!("/run/bcx{id}x{i}"));
            let _ = std::fs::remove_dir_all(&exec_root);
            Host {
                name: format!("node-{i}"),
                netns,
                ip,
                data_dir: dir.join(format!("node-{i}")),
                socket: exec_root.join("berth.sock"),
                exec_root,
                cgroup_root: format!("/bc{id}x{i}"),
                pid: AtomicU32::new(0),
                veth,
                server_url: c.server.url.clone(),
                token: c.token.clone(),
                log: dir.join(format!("node-{i}.log")),
                extra: extra.iter().map(|s| s.to_string()).collect(),
            }
        }
    }

    pub fn wait_ready(&self, h: &Host) {
        // `kubectl wait` gives up at once on a Node not registered yet (the agent is still
        // getting its certificates).
        let t0 = std::time::Instant::now();
        while !self
            .server
            .kubectl(&["get", &format!("node/{}", h.name)])
            .status
            .success()
            && t0.elapsed() < std::time::Duration::from_secs(120)
        {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let out = self.server.kubectl(&[
            "wait",
            "--for=condition=Ready",
            &format!("node/{}", h.name),
            "--timeout=120s",
        ]);
        assert!(
            out.status.success(),
            "node {} did not become Ready: {}\n{}",
            h.name,
            String::from_utf8_lossy(&out.stderr),
            h.log()
        );
    }

    /// SIGKILLs a host's agent (its pods keep running) and starts it again.
    pub fn restart_agent(&self, i: usize) {
        self.hosts[i].kill9();
        self.hosts[i].spawn();
        let h = &self.hosts[i];
        self.wait_ready(h);
    }

    /// SIGKILLs the server and starts it again on the same data dir, address and port (the
    /// agents reconnect on their own).
    pub fn restart_server(&mut self) {
        let pid = self.server.pid as i32;
        // SAFETY: kill(2) of the server this harness started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        for _ in 0..200 {
            if !PathBuf::from(format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z "))
            {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let port = self.server.url.rsplit(':').next().unwrap().to_string();
        let mut flags: Vec<&str> = self.server_flags.iter().map(String::as_str).collect();
        flags.extend_from_slice(&["--https-listen-port", &port]);
        self.server = Server::restart_cluster(&self.server, &flags);
    }

    /// A node failure: the host's agent and every container on it are killed, and the
    /// host is cut off the network.
    pub fn kill_node(&self, i: usize) {
        self.hosts[i].kill9();
        let rel = self.hosts[i]
            .cgroup_root
            .trim_start_matches('/')
            .to_string();
        kill_tree(&PathBuf::from("/sys/fs/cgroup").join(rel));
        self.set_connected(i, false);
    }

    /// Cuts a host off the network (its link goes down) or brings it back.
    pub fn set_connected(&self, i: usize, up: bool) {
        must(&[
            "ip",
            "link",
            "set",
            &self.hosts[i].veth,
            if up { "up" } else { "down" },
        ]);
    }
}

impl Host {
    pub fn spawn(&self) {
        std::fs::create_dir_all(&self.data_dir).unwrap();
        // The node's resolvers: its own loopback (nothing answers there unless a test
        // starts a server), so no query for a name outside the cluster leaves the machine.
        let resolv = self.data_dir.join("resolv.conf");
        if !resolv.exists() {
            std::fs::write(&resolv, "search node.test\nnameserver 127.0.0.1\n").unwrap();
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        // nsenter enters the network namespace only (`ip netns exec` would also remount
        // /sys, hiding the cgroup file systems).
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/var/run/netns/{}", self.netns))
            .args([BERTH, "agent"])
            .args(["--server", &self.server_url, "--token", &self.token])
            .args(["--node-name", &self.name, "--node-ip", &self.ip])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--exec-root")
            .arg(&self.exec_root)
            .arg("--engine-socket")
            .arg(&self.socket)
            .args(["--cgroup-root", &self.cgroup_root])
            .args(["--node-lease-duration", "4s"])
            .arg("--resolv-conf")
            .arg(&resolv)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let child = spawn_for_process(cmd);
        let err = child.stderr.unwrap();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut log = log;
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = writeln!(log, "{l}");
            }
        });
        self.pid.store(child.pid, Ordering::SeqCst);
        for _ in 0..400 {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        panic!("the agent of {} did not come up: {}", self.name, self.log());
    }

    pub fn kill9(&self) {
        let pid = self.pid.swap(0, Ordering::SeqCst);
        if pid != 0 {
            // nsenter execs the agent: the pid is the agent's.
            // SAFETY: kill(2) of a process this harness started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            for _ in 0..200 {
                if !PathBuf::from(format!("/proc/{pid}")).exists()
                    || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                        .is_ok_and(|s| s.contains(") Z "))
                {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `berth args…` against this node's engine.
    pub fn berth(&self, args: &[&str]) -> Output {
        Command::new(BERTH)
            .env("BERTH_HOST", format!("unix://{}", self.socket.display()))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    pub fn berth_ok(&self, args: &[&str]) -> String {
        let o = self.berth(args);
        assert!(
            o.status.success(),
            "berth {}: {}\n{}'s log:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr),
            self.name,
            self.log()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// A command run in the host's network namespace.
    pub fn exec(&self, args: &[&str]) -> Output {
        let net = format!("--net=/var/run/netns/{}", self.netns);
        let mut v = vec!["nsenter", &net];
        v.extend_from_slice(args);
        sh(&v)
    }

    fn cleanup(&self) {
        self.kill9();
        remove_cgroups(&self.cgroup_root);
        unmount_under(&self.exec_root);
        unmount_under(&self.data_dir);
        let _ = sh(&["ip", "netns", "del", &self.netns]);
        let _ = sh(&["ip", "link", "del", &self.veth]);
        let _ = std::fs::remove_dir_all(&self.exec_root);
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

impl Cluster {
    /// Removes everything the cluster made (its server dies with the test process).
    pub fn cleanup(&self) {
        for h in &self.hosts {
            h.cleanup();
        }
        for k in 0..self.added_servers.load(Ordering::SeqCst) {
            let _ = sh(&["ip", "netns", "del", &format!("bcs{}x{k}", self.id)]);
        }
        let _ = sh(&["ip", "link", "del", &self.bridge]);
    }
}
