//! Container networking through CNI, driven as a user would: bridge networks, names through
//! the embedded DNS server, isolation between networks, published ports, and nothing left
//! behind. Needs root and Debian's containernetworking-plugins and iptables (scripts/test
//! installs them). Traffic stays on loopback, the host's own address and the bridges the
//! tests make.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::Daemon;

struct Env {
    d: Daemon,
    dir: tempfile::TempDir,
}

fn env() -> Env {
    common::require_root();
    assert!(
        std::path::Path::new("/usr/lib/cni/bridge").exists(),
        "the CNI reference plugins are missing: install containernetworking-plugins"
    );
    let dir = tempfile::Builder::new()
        .prefix("berth-net-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let d = Daemon::start(&dir.path().join("data"));
    let tar = common::rootfs_tar(dir.path(), "bb", "busybox\n");
    d.ok(&[
        "image",
        "import",
        "-c",
        "CMD [\"sh\"]",
        "-c",
        "EXPOSE 80",
        tar.to_str().unwrap(),
        "busybox:latest",
    ]);
    Env { d, dir }
}

impl Env {
    fn ip(&self, name: &str) -> String {
        self.d
            .ok(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", name])
            .trim()
            .to_string()
    }
}

/// An HTTP GET through a TCP connection from the test (the host), or why it failed.
fn http_get(addr: &str) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(3))
        .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Retries `f` until it holds (the deadline bounds a hang; it is not a timing assertion).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The host's own (global) IPv4 address.
fn host_address() -> String {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.contains(" br-") && !l.contains("berth0"))
        .find_map(|l| {
            l.split_whitespace()
                .nth(3)?
                .split('/')
                .next()
                .map(String::from)
        })
        .expect("the host has a global IPv4 address")
}

#[test]
fn user_networks_resolve_names_and_stay_apart() {
    let e = env();
    let d = &e.d;
    d.ok(&["network", "create", "app"]);
    d.ok(&["network", "create", "--subnet", "10.99.7.0/24", "other"]);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "app",
        "--network-alias",
        "www",
        "busybox",
        "httpd",
        "-f",
        "-p",
        "80",
    ]);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "db",
        "--network",
        "other",
        "--ip",
        "10.99.7.50",
        "busybox",
        "httpd",
        "-f",
        "-p",
        "80",
    ]);
    let web = e.ip("web");
    assert!(web.starts_with("10.89."), "{web}");
    assert_eq!(e.ip("db"), "10.99.7.50");
    // By name and alias through 127.0.0.11 (busybox's nslookup and ping; its wget and nc
    // use static glibc's resolver, which cannot work in an image without a C library).
    let out = d.ok(&[
        "run",
        "--rm",
        "--network",
        "app",
        "busybox",
        "sh",
        "-c",
        "cat /etc/resolv.conf; nslookup web; nslookup www; ping -c1 -W2 www",
    ]);
    assert!(out.contains("nameserver 127.0.0.11"), "{out}");
    assert_eq!(out.matches(&format!("Address: {web}")).count(), 2, "{out}");
    assert!(out.contains("1 packets received"), "{out}");
    // Reaching the server: an HTTP answer over the bridge.
    let page = d.ok(&[
        "run",
        "--rm",
        "--network",
        "app",
        "busybox",
        "sh",
        "-c",
        &format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {web} 80"),
    ]);
    assert!(page.contains("HTTP/1.") && page.contains("404"), "{page}");
    // Another network's containers are neither found nor reachable.
    let out = d.berth(&[
        "run",
        "--rm",
        "--network",
        "app",
        "busybox",
        "nslookup",
        "db",
    ]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stdout).contains("NXDOMAIN")
            || String::from_utf8_lossy(&out.stderr).contains("NXDOMAIN"),
        "{out:?}"
    );
    let out = d.berth(&[
        "run",
        "--rm",
        "--network",
        "app",
        "busybox",
        "sh",
        "-c",
        "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 10.99.7.50 80",
    ]);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("HTTP/1."),
        "isolation failed: {out:?}"
    );
    // On both networks, a container is found from both.
    d.ok(&["network", "connect", "--alias", "database", "app", "db"]);
    let out = d.ok(&[
        "run",
        "--rm",
        "--network",
        "app",
        "busybox",
        "sh",
        "-c",
        "nslookup database; ping -c1 -W2 db",
    ]);
    assert!(out.contains("1 packets received"), "{out}");
    let inspect = d.ok(&["network", "inspect", "-f", "{{json .Containers}}", "app"]);
    assert!(
        inspect.contains("\"web\"") && inspect.contains("\"db\""),
        "{inspect}"
    );
    d.ok(&["network", "disconnect", "app", "db"]);
    let (code, msg) = d.err(&["network", "rm", "app"]);
    assert_eq!(code, 1);
    assert!(msg.contains("active endpoints (web)"), "{msg}");
    // --network none has only lo; a container on another's network shares its interfaces.
    let links = d.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "busybox",
        "ip",
        "-o",
        "link",
    ]);
    assert_eq!(links.lines().count(), 1, "{links}");
    assert!(links.contains(": lo:"));
    let shared = d.ok(&[
        "run",
        "--rm",
        "--network",
        "container:web",
        "busybox",
        "ip",
        "-o",
        "-4",
        "addr",
    ]);
    assert!(shared.contains(&web), "{shared}");
    // An internal network: its containers reach each other, nothing else.
    d.ok(&["network", "create", "--internal", "sealed"]);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "inside",
        "--network",
        "sealed",
        "busybox",
        "httpd",
        "-f",
        "-p",
        "80",
    ]);
    let inside = e.ip("inside");
    let out = d.ok(&[
        "run",
        "--rm",
        "--network",
        "sealed",
        "busybox",
        "sh",
        "-c",
        &format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {inside} 80; ip route"),
    ]);
    assert!(out.contains("404"), "{out}");
    assert!(
        !out.contains("default"),
        "an internal network has no default route: {out}"
    );
    let host = host_address();
    let out = d.berth(&[
        "run",
        "--rm",
        "--network",
        "sealed",
        "busybox",
        "ping",
        "-c1",
        "-W1",
        &host,
    ]);
    assert!(
        !out.status.success(),
        "the host was reachable from an internal network: {out:?}"
    );
    // Bad input, named.
    let (code, msg) = d.err(&["run", "--network", "nosuch", "busybox", "true"]);
    assert_eq!(code, 125);
    assert!(msg.contains("network nosuch not found"), "{msg}");
    let (_, msg) = d.err(&["network", "create", "--subnet", "10.99.7.128/25", "clash"]);
    assert!(msg.contains("overlaps with network other"), "{msg}");
    let (code, msg) = d.err(&[
        "run",
        "--network",
        "other",
        "--ip",
        "10.99.7.50",
        "busybox",
        "true",
    ]);
    assert_eq!(code, 125);
    assert!(
        msg.contains("host-local") || msg.contains("10.99.7.50"),
        "{msg}"
    );
    let (_, msg) = d.err(&[
        "run",
        "--network",
        "other",
        "--ip",
        "10.1.1.1",
        "busybox",
        "true",
    ]);
    assert!(msg.contains("not in network other's subnet"), "{msg}");
}

#[test]
fn published_ports_answer_and_go_with_the_container() {
    let e = env();
    let d = &e.d;
    let port = {
        let l = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        l.local_addr().unwrap().port()
    };
    d.ok(&[
        "run",
        "-d",
        "--name",
        "site",
        "-p",
        &format!("{port}:80"),
        "busybox",
        "httpd",
        "-f",
        "-p",
        "80",
    ]);
    eventually("the published port", || {
        http_get(&format!("127.0.0.1:{port}")).is_ok()
    });
    assert!(http_get(&format!("127.0.0.1:{port}"))
        .unwrap()
        .contains("404"));
    let host = host_address();
    assert!(
        http_get(&format!("{host}:{port}")).unwrap().contains("404"),
        "on {host}"
    );
    assert_eq!(
        d.ok(&["port", "site", "80"]).trim(),
        format!("0.0.0.0:{port}")
    );
    assert!(d.ok(&["ps"]).contains(&format!("0.0.0.0:{port}->80/tcp")));
    // From another container, through the host's address.
    let out = d.ok(&[
        "run",
        "--rm",
        "busybox",
        "sh",
        "-c",
        &format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {host} {port}"),
    ]);
    assert!(out.contains("404"), "{out}");
    // A port in use is refused by name, and that container is not left connected.
    let (code, msg) = d.err(&[
        "run",
        "-d",
        "--name",
        "second",
        "-p",
        &format!("{port}:80"),
        "busybox",
        "httpd",
        "-f",
    ]);
    assert_eq!(code, 125);
    assert!(msg.contains("port is already allocated"), "{msg}");
    assert_eq!(
        d.ok(&["inspect", "-f", "{{.State.Status}}", "second"])
            .trim(),
        "created"
    );
    d.ok(&["rm", "second"]);
    // Stopped: the port is released.
    d.ok(&["stop", "-t", "1", "site"]);
    assert!(
        http_get(&format!("127.0.0.1:{port}")).is_err(),
        "still answering after stop"
    );
    // -P: the image's EXPOSE on a free port.
    d.ok(&[
        "run", "-d", "--name", "all", "-P", "busybox", "httpd", "-f", "-p", "80",
    ]);
    let mapped = d.ok(&["port", "all", "80/tcp"]);
    let host_port = mapped.trim().rsplit(':').next().unwrap().to_string();
    eventually("the -P port", || {
        http_get(&format!("127.0.0.1:{host_port}")).is_ok()
    });
    let info = d.ok(&["info", "-f", "{{.IPv4Forwarding}}"]);
    assert_eq!(info.trim(), "true");
}

/// The interfaces attached to this daemon's bridges (the host ends of containers' veths).
fn veths(e: &Env) -> Vec<String> {
    let mut v = Vec::new();
    for f in fs::read_dir(e.dir.path().join("data/networks"))
        .unwrap()
        .flatten()
    {
        let Ok(text) = fs::read_to_string(f.path()) else {
            continue;
        };
        let Ok(n) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        let Some(bridge) = n["Bridge"].as_str() else {
            continue;
        };
        let out = Command::new("ip")
            .args(["-o", "link", "show", "master", bridge])
            .output()
            .unwrap();
        v.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(String::from),
        );
    }
    v
}

fn iptables_mentions(ids: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for table in ["filter", "nat"] {
        let out = Command::new("iptables-save")
            .args(["-t", table])
            .output()
            .unwrap();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if ids.iter().any(|id| line.contains(&id[..12])) {
                found.push(line.to_string());
            }
        }
    }
    found
}

#[test]
fn cycles_and_a_daemon_sigkill_leave_no_interface_rule_lease_or_namespace() {
    let mut e = env();
    e.d.ok(&["network", "create", "cyc"]);
    let mut ids = Vec::new();
    for i in 0..50 {
        let mut args = vec![
            "run",
            "-d",
            "--network",
            if i % 2 == 0 { "bridge" } else { "cyc" },
        ];
        if i % 5 == 0 {
            args.extend(["-p", "80"]);
        }
        args.extend(["busybox", "sleep", "300"]);
        let id = e.d.ok(&args).trim().to_string();
        if i % 10 != 9 {
            e.d.ok(&["rm", "-f", &id]);
        }
        ids.push(id);
    }
    // Five still run; the daemon dies; one of them dies while it is down.
    let running: Vec<String> =
        e.d.ok(&["ps", "-q", "--no-trunc"])
            .lines()
            .map(String::from)
            .collect();
    assert_eq!(running.len(), 5);
    let victim_pid =
        e.d.ok(&["inspect", "-f", "{{.State.Pid}}", &running[0]])
            .trim()
            .parse::<i32>()
            .unwrap();
    e.d.kill9();
    // SAFETY: kill of a container's init we started.
    unsafe { libc::kill(victim_pid, libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(300));
    e.d.restart();
    eventually("the exit to be recorded", || {
        e.d.ok(&["inspect", "-f", "{{.State.Status}}", &running[0]])
            .trim()
            == "exited"
    });
    let all: Vec<String> =
        e.d.ok(&["ps", "-aq", "--no-trunc"])
            .lines()
            .map(String::from)
            .collect();
    for id in &all {
        e.d.ok(&["rm", "-f", id]);
    }
    let rules = iptables_mentions(&ids);
    assert!(rules.is_empty(), "iptables rules are left: {rules:?}");
    // What is left is the engine's pool of ready namespaces on the default network (owner
    // ""), each with its one interface and lease; nothing of a container.
    let pooled: Vec<std::path::PathBuf> = fs::read_dir(e.d.exec_root.join("netns"))
        .map(|r| r.flatten().map(|x| x.path()).collect())
        .unwrap_or_default();
    for p in &pooled {
        let owner: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(p.join("owner.json")).unwrap()).unwrap();
        assert_eq!(owner["owner"], "", "a container's namespace is left: {p:?}");
    }
    let left = veths(&e);
    assert_eq!(
        left.len(),
        pooled.len(),
        "veth interfaces are left: {left:?}"
    );
    let ipam = e.d.exec_root.join("ipam");
    for net in ["bridge", "cyc"] {
        let leases: Vec<String> = fs::read_dir(ipam.join(net))
            .map(|r| {
                r.flatten()
                    .filter(|f| {
                        let n = f.file_name().to_string_lossy().into_owned();
                        !n.starts_with("last_reserved_ip") && n != "lock"
                    })
                    .map(|f| fs::read_to_string(f.path()).unwrap_or_default())
                    .filter(|owner| !owner.starts_with("pool-"))
                    .collect()
            })
            .unwrap_or_default();
        assert!(leases.is_empty(), "{net}: leases left: {leases:?}");
    }
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    for id in &ids {
        assert!(!mounts.contains(&id[..16]), "a mount of {id} is left");
    }
    e.d.ok(&["network", "rm", "cyc"]);
}
