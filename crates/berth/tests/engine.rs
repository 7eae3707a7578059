//! The engine as a user of Docker drives it: a private `berth daemon` per test and the
//! `berth` CLI — lifecycle, logs and rotation, exec and TTYs, restart policies, health checks,
//! volumes, cp, update, live restore after SIGKILL, and no residue. Needs root.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use common::Daemon;
use serde_json::Value;

struct Env {
    d: Daemon,
    dir: tempfile::TempDir,
}

/// A daemon with a busybox image (`busybox:latest`, CMD sh).
fn env() -> Env {
    common::require_root();
    let dir = tempfile::Builder::new()
        .prefix("berth-engine-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let d = common::daemon_with_busybox(dir.path());
    Env { d, dir }
}

impl Env {
    fn inspect(&self, name: &str) -> Value {
        let v: Value = serde_json::from_str(&self.d.ok(&["inspect", name])).unwrap();
        v[0].clone()
    }

    fn status(&self, name: &str) -> String {
        self.d
            .ok(&["inspect", "-f", "{{.State.Status}}", name])
            .trim()
            .to_string()
    }

    /// Polls (no timing assertion: the deadline only bounds a hang) until `f` holds.
    fn until(&self, what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn lifecycle_and_docker_errors() {
    let e = env();
    let d = &e.d;
    // Foreground run: output and exit code.
    let out = d.berth(&[
        "run",
        "--rm",
        "busybox",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("err\n"));
    assert_eq!(d.ok(&["ps", "-aq"]), "", "--rm removed it");

    let id = d.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-m",
        "64m",
        "-l",
        "tier=front",
        "busybox",
        "httpd",
        "-f",
        "-p",
        "8080",
    ]);
    let id = id.trim();
    assert_eq!(id.len(), 64);
    let ps = d.ok(&["ps"]);
    assert!(ps.contains("web") && ps.contains("Up "), "{ps}");
    let i = e.inspect("web");
    assert_eq!(i["Id"], id);
    assert_eq!(i["Name"], "/web");
    assert_eq!(i["State"]["Running"], true);
    assert_eq!(i["HostConfig"]["Memory"], 64 << 20);
    assert_eq!(i["Config"]["Labels"]["tier"], "front");
    assert_eq!(i["Path"], "httpd");
    // The none network has a working loopback; the server answers inside.
    let page = d.berth(&["exec", "web", "wget", "-q", "-O-", "http://127.0.0.1:8080/"]);
    assert!(
        String::from_utf8_lossy(&page.stderr).contains("404"),
        "{page:?}"
    );
    assert_eq!(d.ok(&["exec", "web", "hostname"]).trim(), &id[..12]);
    assert_eq!(
        d.ok(&[
            "exec",
            "-e",
            "X=1",
            "-w",
            "/etc",
            "web",
            "sh",
            "-c",
            "echo $X $(pwd)"
        ]),
        "1 /etc\n"
    );
    assert_eq!(
        d.berth(&["exec", "web", "sh", "-c", "exit 7"])
            .status
            .code(),
        Some(7)
    );
    let top = d.ok(&["top", "web"]);
    assert!(
        top.contains("PID") && top.contains("httpd -f -p 8080"),
        "{top}"
    );
    // The memory limit is the container's cgroup's.
    assert_eq!(
        d.ok(&[
            "exec",
            "web",
            "cat",
            "/sys/fs/cgroup/memory/memory.limit_in_bytes"
        ])
        .trim(),
        (64u64 << 20).to_string()
    );
    d.ok(&["update", "-m", "96m", "web"]);
    assert_eq!(
        d.ok(&[
            "exec",
            "web",
            "cat",
            "/sys/fs/cgroup/memory/memory.limit_in_bytes"
        ])
        .trim(),
        (96u64 << 20).to_string()
    );
    assert_eq!(e.inspect("web")["HostConfig"]["Memory"], 96 << 20);
    let stats = d.ok(&["stats", "--no-stream", "web"]);
    assert!(stats.contains("96MiB") && stats.contains("web"), "{stats}");

    d.ok(&["pause", "web"]);
    assert_eq!(e.status("web"), "paused");
    assert!(d.ok(&["ps"]).contains("(Paused)"));
    d.ok(&["unpause", "web"]);
    d.ok(&["rename", "web", "site"]);
    assert_eq!(e.inspect("site")["Name"], "/site");
    // Removing a running container needs -f.
    let (code, msg) = d.err(&["rm", "site"]);
    assert_eq!(code, 1);
    assert!(
        msg.contains("Stop the container before attempting removal or force remove"),
        "{msg}"
    );
    // httpd as pid 1 ignores SIGTERM: stop kills it after the timeout.
    d.ok(&["stop", "-t", "1", "site"]);
    assert_eq!(e.status("site"), "exited");
    assert_eq!(e.inspect("site")["State"]["ExitCode"], 137);
    let (code, msg) = d.err(&["exec", "site", "true"]);
    assert_eq!(code, 1);
    assert!(msg.contains("is not running"), "{msg}");
    d.ok(&["start", "site"]);
    assert_eq!(e.status("site"), "running");
    d.ok(&["restart", "-t", "0", "site"]);
    assert_eq!(e.status("site"), "running");
    d.ok(&["kill", "-s", "KILL", "site"]);
    assert_eq!(d.ok(&["wait", "site"]).trim(), "137");
    d.ok(&["rm", "site"]);

    // Bad input: Docker's messages and exit codes, nothing left behind.
    // An image that is not here is pulled; from a loopback registry that is not there, it
    // fails naming it (no traffic leaves the machine).
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let missing = format!("127.0.0.1:{closed}/nosuch:image");
    let (code, msg) = d.err(&["run", &missing]);
    assert_eq!(code, 125);
    assert!(
        msg.contains(&format!("Unable to find image '{missing}'")),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("127.0.0.1:{closed}")) && msg.contains("refused"),
        "{msg}"
    );
    d.ok(&["create", "--name", "taken", "busybox"]);
    let (code, msg) = d.err(&["run", "--name", "taken", "busybox", "true"]);
    assert_eq!(code, 125);
    assert!(msg.contains("is already in use"), "{msg}");
    let (code, msg) = d.err(&["run", "-m", "lots", "busybox", "true"]);
    assert_eq!(code, 125);
    assert!(msg.contains("invalid memory"), "{msg}");
    let (code, msg) = d.err(&["run", "--cpus", "lots", "busybox", "true"]);
    assert_eq!(code, 125, "{msg}");
    let (code, msg) = d.err(&["run", "-v", "/no/such/dir:/x", "busybox", "true"]);
    assert_eq!(code, 125);
    assert!(
        msg.contains("bind source path does not exist: /no/such/dir"),
        "{msg}"
    );
    let (code, msg) = d.err(&["run", "--rm", "busybox", "no-such-command"]);
    assert_eq!(code, 127, "{msg}");
    assert!(msg.contains("executable file not found"), "{msg}");
    let (code, msg) = d.err(&["run", "--rm", "busybox", "/etc/passwd"]);
    assert_eq!(code, 126, "{msg}");
    let names = d.ok(&["ps", "-a", "--format", "{{.Names}}"]);
    assert_eq!(
        names.trim(),
        "taken",
        "failed runs left containers: {names}"
    );
    d.ok(&["rm", "taken"]);
    assert!(fs::read_dir(e.dir.path().join("data/containers"))
        .unwrap()
        .next()
        .is_none());
}

#[test]
fn logs_rotate_and_follow() {
    let e = env();
    let d = &e.d;
    d.ok(&[
        "run",
        "-d",
        "--name",
        "chatty",
        "--log-opt",
        "max-size=2k",
        "--log-opt",
        "max-file=3",
        "busybox",
        "sh",
        "-c",
        "i=0; while [ $i -lt 300 ]; do echo line $i; i=$((i+1)); done; sleep 0.3; echo bye >&2",
    ]);
    assert_eq!(d.ok(&["wait", "chatty"]).trim(), "0");
    let id = e.inspect("chatty")["Id"].as_str().unwrap().to_string();
    let log = e
        .dir
        .path()
        .join(format!("data/containers/{id}/{id}-json.log"));
    assert_eq!(e.inspect("chatty")["LogPath"], log.to_str().unwrap());
    assert!(
        Path::new(&format!("{}.2", log.display())).exists(),
        "rotated"
    );
    assert!(
        !Path::new(&format!("{}.3", log.display())).exists(),
        "max-file=3"
    );
    for n in ["", ".1", ".2"] {
        let f = format!("{}{n}", log.display());
        assert!(fs::metadata(&f).unwrap().len() <= 2048, "{f}");
        let first: Value =
            serde_json::from_str(fs::read_to_string(&f).unwrap().lines().next().unwrap()).unwrap();
        assert!(
            first["log"].is_string() && first["time"].is_string() && first["stream"].is_string()
        );
    }
    let out = d.berth(&["logs", "chatty"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let nums: Vec<u32> = text
        .lines()
        .map(|l| l.strip_prefix("line ").unwrap().parse().unwrap())
        .collect();
    assert_eq!(*nums.last().unwrap(), 299);
    assert!(
        nums.windows(2).all(|w| w[1] == w[0] + 1),
        "in order, nothing lost within what is kept"
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "bye\n");
    assert_eq!(
        d.ok(&["logs", "--tail", "3", "chatty"]),
        "line 298\nline 299\n"
    );
    let stamped = d.ok(&["logs", "-t", "--tail", "2", "chatty"]);
    assert!(
        stamped.ends_with(" line 299\n") && stamped.starts_with("20"),
        "{stamped}"
    );
    assert_eq!(
        d.ok(&["logs", "--since", "2999-01-01T00:00:00Z", "chatty"]),
        ""
    );
    assert_eq!(d.ok(&["logs", "--until", "1", "chatty"]), "");

    // Following: lines written later arrive, across a rotation, and the stream ends with
    // the container.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "slow",
        "--log-opt",
        "max-size=1k",
        "--log-opt",
        "max-file=2",
        "busybox",
        "sh",
        "-c",
        "sleep 0.5; i=0; while [ $i -lt 100 ]; do echo later $i; i=$((i+1)); done",
    ]);
    let followed = d.ok(&["logs", "-f", "slow"]);
    assert!(followed.ends_with("later 99\n"), "{followed}");
}

/// Runs `berth args` on a terminal, types `input`, and returns (exit code, what it printed).
fn on_tty(d: &Daemon, args: &[&str], input: &str) -> (i32, String) {
    let mut cmd = d.cmd();
    cmd.args(args);
    common::on_tty(cmd, input)
}

#[test]
fn interactive_terminals_for_run_and_exec() {
    let e = env();
    let d = &e.d;
    let (code, out) = on_tty(
        d,
        &["run", "-it", "--rm", "busybox", "sh"],
        "stty size; tty; echo $((6*7)); exit 3\r",
    );
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("30 100"),
        "the terminal's size reached the container: {out}"
    );
    assert!(out.contains("/dev/pts/0") && out.contains("42"), "{out}");

    d.ok(&["run", "-d", "--name", "box", "-i", "busybox", "sh"]);
    let (code, out) = on_tty(
        d,
        &["exec", "-it", "box", "sh"],
        "stty size; echo in-exec; exit 5\r",
    );
    assert_eq!(code, 5, "{out}");
    assert!(out.contains("30 100") && out.contains("in-exec"), "{out}");
    // Without a TTY, stdin is a pipe and EOF ends it.
    let mut child = d
        .cmd()
        .args(["exec", "-i", "box", "sh", "-c", "cat; echo done"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"piped text\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "piped text\ndone\n");
    // run -i without a TTY: stdin reaches the container and its closing ends it.
    let mut child = d
        .cmd()
        .args(["run", "--rm", "-i", "busybox", "sh", "-c", "tr a-z A-Z"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"shout\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "SHOUT\n");
    assert!(out.status.success());
}

fn starts(events: &str) -> Vec<i128> {
    events
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["Action"] == "start")
        .map(|e| e["timeNano"].as_i64().unwrap() as i128)
        .collect()
}

#[test]
fn attach_and_detached_exec() {
    let e = env();
    let d = &e.d;
    d.ok(&["run", "-d", "-i", "--name", "shell", "busybox", "sh"]);
    d.ok(&[
        "exec",
        "-d",
        "shell",
        "sh",
        "-c",
        "echo from-exec > /tmp/mark",
    ]);
    e.until("the detached exec", || {
        d.berth(&["exec", "shell", "cat", "/tmp/mark"])
            .status
            .success()
    });
    let mut child = d
        .cmd()
        .args(["attach", "shell"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"cat /tmp/mark; exit 4\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from-exec\n");
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(e.status("shell"), "exited");
    let (code, msg) = d.err(&["attach", "shell"]);
    assert_eq!(code, 1);
    assert!(
        msg.contains("cannot attach to a stopped container"),
        "{msg}"
    );

    // Without a TTY, a signal to the client reaches the container (docker's --sig-proxy).
    let child = d
        .cmd()
        .args([
            "run",
            "--name",
            "trapper",
            "busybox",
            "sh",
            "-c",
            "trap 'echo got TERM; exit 5' TERM; echo ready; while true; do sleep 0.1; done",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    e.until("the container to run", || {
        d.berth(&["logs", "trapper"]).stdout.starts_with(b"ready")
    });
    // SAFETY: kill of the child we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("got TERM"));
}

#[test]
fn the_api_refuses_bad_requests_and_stays_up() {
    let e = env();
    let d = &e.d;
    let ask = |raw: &[u8]| -> String {
        let mut s = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(raw).unwrap();
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    let post = |path: &str, body: &str| {
        ask(format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes())
    };
    assert!(ask(b"\x00\x01garbage\r\n\r\n").starts_with("HTTP/1.1 400"));
    let r = post(
        "/berth/v1/containers/create",
        "{\"image\": \"busybox\", \"colour\": 1}",
    );
    assert!(r.starts_with("HTTP/1.1 400") && r.contains("colour"), "{r}");
    let r = post("/berth/v1/containers/create", "{\"image\": 5}");
    assert!(r.starts_with("HTTP/1.1 400") && r.contains("image"), "{r}");
    let r = post("/berth/v1/containers/create", "{not json");
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    let r = post(
        "/berth/v1/containers/create",
        "{\"image\": \"busybox\", \"run\": {\"memory\": \"1k\"}}",
    );
    assert!(
        r.starts_with("HTTP/1.1 400") && r.contains("Minimum memory limit"),
        "{r}"
    );
    let r = post("/berth/v1/containers/nosuch/start", "");
    assert!(
        r.starts_with("HTTP/1.1 404") && r.contains("No such container: nosuch"),
        "{r}"
    );
    // attach without the upgrade headers is served as dockerd serves it (a raw 200 stream),
    // so what it says about a missing container is the 404.
    let r = post("/berth/v1/containers/nosuch/attach", "");
    assert!(
        r.starts_with("HTTP/1.1 404") && r.contains("No such container"),
        "{r}"
    );
    let r = ask(b"GET /berth/v1/nothing HTTP/1.1\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    let r =
        ask(b"POST /berth/v1/containers/create HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n{}");
    assert!(r.starts_with("HTTP/1.1 4"), "{r}");
    // Half a request, then the client goes: the daemon carries on.
    let _ = ask(b"POST /berth/v1/containers/create HTTP/1.1\r\nContent-Length: 50\r\n\r\n{\"im");
    assert_eq!(d.ok(&["ps", "-aq"]), "", "nothing was created");
    assert_eq!(
        ask(b"GET /_ping HTTP/1.1\r\n\r\n").lines().last(),
        Some("OK")
    );
}

#[test]
fn restart_policies_back_off_and_survive_stop() {
    let e = env();
    let d = &e.d;
    let out = d.berth(&[
        "run",
        "--name",
        "crash",
        "--restart",
        "on-failure:3",
        "busybox",
        "sh",
        "-c",
        "echo crashing; exit 2",
    ]);
    assert_eq!(out.status.code(), Some(2));
    e.until("three restarts", || {
        e.inspect("crash")["RestartCount"] == 3 && e.status("crash") == "exited"
    });
    assert_eq!(d.ok(&["logs", "crash"]).matches("crashing").count(), 4);
    let events = d.ok(&[
        "events",
        "--since",
        "1h",
        "--until",
        "0s",
        "--filter",
        "container=crash",
        "--format",
        "json",
    ]);
    let t = starts(&events);
    assert_eq!(t.len(), 4, "{events}");
    // Docker's back-off: at least 100 ms, 200 ms, 400 ms between the starts.
    for (i, w) in t.windows(2).enumerate() {
        let min = 100_000_000i128 << i;
        assert!(
            w[1] - w[0] >= min,
            "restart {i} came after {} ns",
            w[1] - w[0]
        );
    }
    // `always` restarts a clean exit too, and `stop` ends that.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "loop",
        "--restart",
        "always",
        "busybox",
        "sh",
        "-c",
        "sleep 0.2",
    ]);
    e.until("a restart", || {
        e.inspect("loop")["RestartCount"].as_u64().unwrap_or(0) >= 2
    });
    d.ok(&["stop", "-t", "1", "loop"]);
    let count = e.inspect("loop")["RestartCount"].clone();
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(e.status("loop"), "exited");
    assert_eq!(
        e.inspect("loop")["RestartCount"],
        count,
        "stopped stays stopped"
    );
}

#[test]
fn health_checks_move_between_states() {
    let e = env();
    let d = &e.d;
    d.ok(&[
        "run",
        "-d",
        "--name",
        "hc",
        "--health-cmd",
        "test -f /tmp/ok",
        "--health-interval",
        "100ms",
        "--health-retries",
        "2",
        "busybox",
        "sleep",
        "300",
    ]);
    assert!(
        d.ok(&["ps"]).contains("(health: starting)")
            || e.inspect("hc")["State"]["Health"]["Status"] != "starting"
    );
    e.until("unhealthy", || {
        e.inspect("hc")["State"]["Health"]["Status"] == "unhealthy"
    });
    assert!(
        e.inspect("hc")["State"]["Health"]["FailingStreak"]
            .as_u64()
            .unwrap()
            >= 2
    );
    d.ok(&["exec", "hc", "touch", "/tmp/ok"]);
    e.until("healthy", || {
        e.inspect("hc")["State"]["Health"]["Status"] == "healthy"
    });
    assert!(d.ok(&["ps", "--filter", "health=healthy"]).contains(" hc"));
    assert!(d.ok(&["ps"]).contains("(healthy)"));
    let events = d.ok(&[
        "events",
        "--since",
        "1h",
        "--until",
        "0s",
        "--filter",
        "event=health_status",
        "--format",
        "{{.Action}}",
    ]);
    assert!(
        events.contains("health_status: unhealthy") && events.contains("health_status: healthy"),
        "{events}"
    );
}

#[test]
fn volumes_persist_and_cp_stays_inside() {
    let e = env();
    let d = &e.d;
    d.ok(&["volume", "create", "data"]);
    d.ok(&[
        "run",
        "--rm",
        "-v",
        "data:/data",
        "busybox",
        "sh",
        "-c",
        "echo kept > /data/f",
    ]);
    assert_eq!(
        d.ok(&[
            "run",
            "--rm",
            "-v",
            "data:/data:ro",
            "busybox",
            "cat",
            "/data/f"
        ]),
        "kept\n"
    );
    let (code, _) = d.err(&[
        "run",
        "--rm",
        "-v",
        "data:/data:ro",
        "busybox",
        "touch",
        "/data/g",
    ]);
    assert_eq!(code, 1);
    // In use: rm refuses; anonymous volumes go with `rm -v`.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "user",
        "-v",
        "data:/data",
        "-v",
        "/scratch",
        "busybox",
        "sleep",
        "300",
    ]);
    let (_, msg) = d.err(&["volume", "rm", "data"]);
    assert!(msg.contains("volume is in use"), "{msg}");
    assert_eq!(d.ok(&["volume", "ls", "-q"]).lines().count(), 2);
    let mp: Value = serde_json::from_str(&d.ok(&["volume", "inspect", "data"])).unwrap();
    assert_eq!(
        fs::read_to_string(Path::new(mp[0]["Mountpoint"].as_str().unwrap()).join("f")).unwrap(),
        "kept\n"
    );

    // cp in both directions.
    let host = e.dir.path().join("host");
    fs::create_dir(&host).unwrap();
    fs::write(host.join("in.txt"), "to the container\n").unwrap();
    d.ok(&["cp", host.join("in.txt").to_str().unwrap(), "user:/tmp/"]);
    assert_eq!(
        d.ok(&["exec", "user", "cat", "/tmp/in.txt"]),
        "to the container\n"
    );
    d.ok(&[
        "cp",
        host.join("in.txt").to_str().unwrap(),
        "user:/tmp/renamed.txt",
    ]);
    assert_eq!(
        d.ok(&["exec", "user", "cat", "/tmp/renamed.txt"]),
        "to the container\n"
    );
    d.ok(&["exec", "user", "sh", "-c", "mkdir -p /out/sub && echo x > /out/sub/f && ln -s /etc/shadow /out/link && ln -s / /escape && mkfifo /out/fifo"]);
    d.ok(&["cp", "user:/out", host.to_str().unwrap()]);
    assert_eq!(fs::read_to_string(host.join("out/sub/f")).unwrap(), "x\n");
    // A symlink is copied as a symlink, never followed to the host's file.
    assert_eq!(
        fs::read_link(host.join("out/link")).unwrap(),
        Path::new("/etc/shadow")
    );
    // A FIFO is copied as a FIFO, never opened (which would block).
    use std::os::unix::fs::FileTypeExt;
    assert!(fs::symlink_metadata(host.join("out/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    d.ok(&["cp", "user:/out/link", host.join("link2").to_str().unwrap()]);
    assert_eq!(
        fs::read_link(host.join("link2")).unwrap(),
        Path::new("/etc/shadow")
    );
    // Paths through a symlink to / resolve inside the container, not on the host.
    let marker = e.dir.path().join("host-only");
    fs::write(&marker, "host secret").unwrap();
    let (code, _) = d.err(&[
        "cp",
        &format!("user:/escape{}", marker.display()),
        host.join("stolen").to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(!host.join("stolen").exists());
    let target_dir = e.dir.path().join("target");
    fs::create_dir(&target_dir).unwrap();
    d.ok(&[
        "exec",
        "user",
        "sh",
        "-c",
        &format!(
            "mkdir -p {0} && rmdir {0} && ln -s {0} /planted",
            target_dir.display()
        ),
    ]);
    d.ok(&[
        "cp",
        host.join("in.txt").to_str().unwrap(),
        "user:/planted/",
    ]);
    assert!(
        !target_dir.join("in.txt").exists(),
        "a write through a container symlink reached the host"
    );

    d.ok(&["rm", "-f", "-v", "user"]);
    assert_eq!(
        d.ok(&["volume", "ls", "-q"]).trim(),
        "data",
        "the anonymous volume went with -v"
    );
    d.ok(&["volume", "rm", "data"]);
    assert_eq!(d.ok(&["volume", "ls", "-q"]), "");
}

#[test]
fn containers_survive_a_daemon_sigkill() {
    let mut e = env();
    e.d.ok(&[
        "run",
        "-d",
        "--name",
        "ticker",
        "busybox",
        "sh",
        "-c",
        "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done",
    ]);
    e.d.ok(&["run", "-d", "--name", "other", "busybox", "sleep", "300"]);
    // A --rm container that ends while the daemon is down: its exit is never recorded (as
    // when a daemon dies right after one, whose exit record is not synced).
    e.d.ok(&[
        "run", "-d", "--rm", "--name", "brief", "busybox", "sleep", "1",
    ]);
    let pid = e.inspect("ticker")["State"]["Pid"].as_i64().unwrap();
    e.until("some output", || {
        e.d.ok(&["logs", "ticker"]).lines().count() >= 3
    });
    e.d.kill9();
    // The container runs on without its daemon, and its monitor keeps logging.
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    let id = {
        let dir = e.dir.path().join("data/containers");
        fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|d| d.path())
            .find(|p| {
                fs::read_to_string(p.join("container.json"))
                    .unwrap()
                    .contains("\"ticker\"")
            })
            .unwrap()
    };
    let log = fs::read_dir(&id)
        .unwrap()
        .flatten()
        .map(|d| d.path())
        .find(|p| p.to_string_lossy().ends_with("-json.log"))
        .unwrap();
    let before = fs::metadata(&log).unwrap().len();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        fs::metadata(&log).unwrap().len() > before,
        "the log grows while the daemon is down"
    );
    std::thread::sleep(Duration::from_millis(1000));
    e.d.restart();
    e.until("the --rm container that ended meanwhile is removed", || {
        !e.d.ok(&["ps", "-a", "--format", "{{.Names}}"])
            .contains("brief")
    });
    let ps = e.d.ok(&["ps"]);
    assert!(ps.contains("ticker") && ps.contains("other"), "{ps}");
    assert_eq!(e.inspect("ticker")["State"]["Pid"], pid);
    assert!(e
        .d
        .ok(&["logs", "--tail", "1", "ticker"])
        .starts_with("tick "));
    e.d.ok(&["exec", "other", "true"]);
    e.d.ok(&["stop", "-t", "1", "ticker"]);
    assert_eq!(e.status("ticker"), "exited");
    // An exit while the daemon is down is found at its restart.
    e.d.kill9();
    let other_pid = e.inspect_offline_pid("other");
    // SAFETY: kill of the container's init we started.
    unsafe { libc::kill(other_pid, libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(300));
    e.d.restart();
    e.until("the exit recorded", || e.status("other") == "exited");
    assert_eq!(e.inspect("other")["State"]["ExitCode"], 137);
    e.d.ok(&["rm", "ticker", "other"]);
    assert_eq!(e.d.ok(&["ps", "-aq"]), "");

    // A restart policy holds across the daemon's absence: an exit while it is down is
    // restarted when it is back.
    e.d.ok(&[
        "run",
        "-d",
        "--name",
        "phoenix",
        "--restart",
        "always",
        "busybox",
        "sleep",
        "300",
    ]);
    e.d.kill9();
    let pid = e.inspect_offline_pid("phoenix");
    // SAFETY: kill of the container's init we started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(300));
    e.d.restart();
    e.until("the restart", || {
        e.inspect("phoenix")["RestartCount"] == 1 && e.status("phoenix") == "running"
    });
    assert_ne!(e.inspect("phoenix")["State"]["Pid"], pid);
    // Docker's `always`: stopped by hand, it stays stopped until the daemon restarts.
    e.d.ok(&["stop", "-t", "1", "phoenix"]);
    assert_eq!(e.status("phoenix"), "exited");
    e.d.restart();
    e.until("always to bring it back", || {
        e.status("phoenix") == "running"
    });
}

impl Env {
    /// The pid recorded for a container, read from its record on disk (the daemon is down).
    fn inspect_offline_pid(&self, name: &str) -> i32 {
        let dir = self.dir.path().join("data/containers");
        for d in fs::read_dir(dir).unwrap().flatten() {
            let v: Value =
                serde_json::from_str(&fs::read_to_string(d.path().join("container.json")).unwrap())
                    .unwrap();
            if v["name"] == name {
                return v["state"]["pid"].as_i64().unwrap() as i32;
            }
        }
        panic!("no container {name}");
    }
}

#[test]
fn shared_namespaces_init_and_events() {
    let e = env();
    let d = &e.d;
    d.ok(&[
        "run",
        "-d",
        "--name",
        "net",
        "--hostname",
        "podhost",
        "busybox",
        "httpd",
        "-f",
        "-p",
        "8080",
    ]);
    // A container on another's network sees its server on loopback, and its hostname.
    d.ok(&[
        "run",
        "--rm",
        "--network",
        "container:net",
        "busybox",
        "sh",
        "-c",
        "wget -q -O- http://127.0.0.1:8080/ 2>&1 | grep -q 404",
    ]);
    assert_eq!(
        d.ok(&[
            "run",
            "--rm",
            "--network",
            "container:net",
            "busybox",
            "hostname"
        ]),
        "podhost\n"
    );
    d.ok(&[
        "run",
        "-d",
        "--name",
        "ipc",
        "--ipc",
        "container:net",
        "busybox",
        "sleep",
        "300",
    ]);
    let ns = |c: &str, n: &str| d.ok(&["exec", c, "readlink", &format!("/proc/self/ns/{n}")]);
    assert_eq!(ns("ipc", "ipc"), ns("net", "ipc"));
    assert_ne!(ns("ipc", "net"), ns("net", "net"));
    let (code, msg) = d.err(&["run", "--network", "container:nosuch", "busybox", "true"]);
    assert_eq!(code, 125);
    assert!(msg.contains("No such container: nosuch"), "{msg}");
    // --init: pid 1 is berth-init, which reaps orphans and passes the exit code on.
    let out = d.berth(&[
        "run",
        "--rm",
        "--init",
        "busybox",
        "sh",
        "-c",
        "cat /proc/1/cmdline | tr '\\0' ' '; (sleep 0.1 &); exit 9",
    ]);
    assert_eq!(out.status.code(), Some(9));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("/sbin/berth-init -- sh"));
    // With --init, SIGTERM from `stop` reaches the command (pid 1 would ignore it).
    d.ok(&[
        "run", "-d", "--name", "term", "--init", "busybox", "sleep", "300",
    ]);
    d.ok(&["stop", "-t", "20", "term"]);
    assert_eq!(e.inspect("term")["State"]["ExitCode"], 143);
    let events = d.ok(&[
        "events",
        "--since",
        "1h",
        "--until",
        "0s",
        "--filter",
        "container=term",
    ]);
    for action in ["create", "start", "kill", "die", "stop"] {
        assert!(
            events.contains(&format!("container {action} ")),
            "{action}: {events}"
        );
    }
    let info: Value = serde_json::from_str(&d.ok(&["info"])).unwrap();
    assert_eq!(info["ContainersRunning"], 2);
    assert!(d.ok(&["version", "-f", "{{.Server.Version}}"]).trim().len() >= 5);
    let df = d.ok(&["system", "df"]);
    assert!(
        df.contains("Images") && df.contains("Local Volumes"),
        "{df}"
    );
}

#[test]
fn security_flags_reach_the_container() {
    let e = env();
    let d = &e.d;
    let status = |flags: &[&str], field: &str| -> String {
        let mut args = vec!["run", "--rm"];
        args.extend(flags);
        args.extend(["busybox", "grep", field, "/proc/self/status"]);
        d.ok(&args)
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(
        status(&[], "CapEff:"),
        "00000000a80425fb",
        "Docker's default capabilities"
    );
    assert_eq!(status(&[], "Seccomp:"), "2", "the default seccomp profile");
    assert_eq!(status(&[], "NoNewPrivs:"), "0");
    assert_eq!(
        status(&["--cap-drop", "ALL"], "CapEff:"),
        "0000000000000000"
    );
    assert_eq!(
        status(&["--cap-add", "NET_ADMIN"], "CapEff:"),
        "00000000a80435fb"
    );
    assert_eq!(
        status(&["--security-opt", "no-new-privileges"], "NoNewPrivs:"),
        "1"
    );
    assert_eq!(
        status(&["--security-opt", "seccomp=unconfined"], "Seccomp:"),
        "0"
    );
    assert_eq!(status(&["--privileged"], "Seccomp:"), "0");
    assert_ne!(status(&["--privileged"], "CapEff:"), "00000000a80425fb");
    assert_eq!(
        d.ok(&["run", "--rm", "-u", "1000:1000", "busybox", "id", "-u"]),
        "1000\n"
    );
    let (code, _) = d.err(&["run", "--rm", "--read-only", "busybox", "touch", "/x"]);
    assert_eq!(code, 1);
    d.ok(&[
        "run",
        "--rm",
        "--read-only",
        "--tmpfs",
        "/scratch",
        "busybox",
        "touch",
        "/scratch/x",
    ]);
    // A profile in Docker's own format (archMap, includes) works as Docker's does.
    let profile = e.dir.path().join("no-mkdir.json");
    fs::write(
        &profile,
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]}],
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO",
                          "includes": {"arches": ["amd64"]}, "comment": "no new directories"}]}"#,
    )
    .unwrap();
    let opt = format!("seccomp={}", profile.display());
    let out = d.berth(&[
        "run",
        "--rm",
        "--security-opt",
        &opt,
        "busybox",
        "mkdir",
        "/newdir",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    d.ok(&[
        "run",
        "--rm",
        "--security-opt",
        &opt,
        "busybox",
        "touch",
        "/newfile",
    ]);
    let (code, msg) = d.err(&[
        "run",
        "--rm",
        "--security-opt",
        "seccomp=/no/such/profile.json",
        "busybox",
        "true",
    ]);
    assert_eq!(code, 125);
    assert!(msg.contains("/no/such/profile.json"), "{msg}");
    let (code, msg) = d.err(&["run", "--rm", "--cap-add", "NOT_A_CAP", "busybox", "true"]);
    assert_eq!(code, 125);
    assert!(msg.contains("NOT_A_CAP"), "{msg}");
}

#[test]
fn sandboxes_outlive_their_containers() {
    let e = env();
    let d = &e.d;
    d.ok(&["sandbox", "create", "--hostname", "pod-a", "pod"]);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "server",
        "--sandbox",
        "pod",
        "busybox",
        "httpd",
        "-f",
        "-p",
        "8080",
    ]);
    let (code, msg) = d.err(&[
        "run",
        "--rm",
        "--sandbox",
        "pod",
        "--network",
        "host",
        "busybox",
        "true",
    ]);
    assert_eq!(code, 125, "{msg}");
    let probe = [
        "run", "--rm", "--sandbox", "pod", "busybox", "sh", "-c",
        "hostname; readlink /proc/self/ns/net; wget -q -O- http://127.0.0.1:8080/ 2>&1 | grep -c 404",
    ];
    let first = d.ok(&probe);
    let lines: Vec<&str> = first.lines().collect();
    assert_eq!(lines[0], "pod-a");
    assert_eq!(
        lines[2], "1",
        "the server in the same sandbox answers on loopback: {first}"
    );
    assert_eq!(
        d.ok(&["exec", "server", "readlink", "/proc/self/ns/net"])
            .trim(),
        lines[1]
    );
    let (_, msg) = d.err(&["sandbox", "rm", "pod"]);
    assert!(msg.contains("in use by containers: server"), "{msg}");
    // Without any container, the namespaces stay: the next container finds the same ones.
    d.ok(&["rm", "-f", "server"]);
    let again = d.ok(&[
        "run",
        "--rm",
        "--sandbox",
        "pod",
        "busybox",
        "sh",
        "-c",
        "hostname; readlink /proc/self/ns/net",
    ]);
    assert_eq!(again.lines().collect::<Vec<_>>(), lines[..2]);
    assert!(d.ok(&["sandbox", "ls"]).contains("pod-a"));
    let (code, _) = d.err(&["run", "--rm", "--sandbox", "nosuch", "busybox", "true"]);
    assert_eq!(code, 125);
    // A sandbox on a network, as a pod: its containers share its address; its port answers.
    d.ok(&[
        "sandbox",
        "create",
        "--network",
        "bridge",
        "-p",
        "127.0.0.1::80",
        "netpod",
    ]);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "podweb",
        "--sandbox",
        "netpod",
        "busybox",
        "httpd",
        "-f",
        "-p",
        "80",
    ]);
    let addr = d.ok(&[
        "run",
        "--rm",
        "--sandbox",
        "netpod",
        "busybox",
        "ip",
        "-o",
        "-4",
        "addr",
        "show",
        "eth0",
    ]);
    assert!(addr.contains("inet "), "{addr}");
    let hosts = d.ok(&["exec", "podweb", "cat", "/etc/hosts"]);
    let ip = addr
        .split_whitespace()
        .nth(3)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    assert!(hosts.contains(&ip), "{hosts}");
    assert!(d.ok(&["sandbox", "ls"]).contains("netpod"));
    d.ok(&["sandbox", "rm", "-f", "netpod"]);
    assert!(!d.ok(&["ps", "-a"]).contains("podweb"));
    d.ok(&[
        "run",
        "-d",
        "--name",
        "again",
        "--sandbox",
        "pod",
        "busybox",
        "sleep",
        "300",
    ]);
    d.ok(&["sandbox", "rm", "-f", "pod"]);
    assert_eq!(d.ok(&["ps", "-aq"]), "", "-f removed the container in it");
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&format!("{}/sandboxes/pod", d.exec_root.display())),
        "the pins are gone"
    );
}

#[test]
fn a_daemon_killed_mid_operation_restarts_consistent() {
    let mut e = env();
    // Create, start and remove containers in a loop, and kill the daemon in the middle of it.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let socket = e.d.socket.clone();
    let worker = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let berth = |args: &[&str]| {
                std::process::Command::new(common::BERTH)
                    .env("BERTH_HOST", format!("unix://{}", socket.display()))
                    .args(args)
                    .output()
                    .unwrap()
            };
            let (mut created, mut removed) = (Vec::new(), Vec::new());
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let name = format!("k{i}");
                let out = berth(&["run", "-d", "--name", &name, "busybox", "sleep", "300"]);
                if out.status.success() {
                    created.push(String::from_utf8_lossy(&out.stdout).trim().to_string());
                }
                if i % 2 == 1 && created.len() >= 2 {
                    let victim = created[created.len() - 2].clone();
                    // A removal cut short by the kill may or may not have happened.
                    let done = berth(&["rm", "-f", &victim]).status.success();
                    removed.push((victim, done));
                }
                i += 1;
            }
            (created, removed)
        })
    };
    e.until("a few containers", || {
        e.d.ok(&["ps", "-aq"]).lines().count() >= 3
    });
    // A different instant on every run.
    std::thread::sleep(Duration::from_millis(
        20 + u64::from(std::process::id() % 300),
    ));
    e.d.kill9();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (created, removed) = worker.join().unwrap();
    e.d.restart();
    // What the daemon acknowledged holds: created containers exist whole, removed ones stay
    // removed.
    let listed = e.d.ok(&["ps", "-aq", "--no-trunc"]);
    for id in &created {
        let removal = removed.iter().find(|(v, _)| v == id).map(|(_, done)| *done);
        if removal == Some(true) {
            assert!(!listed.contains(id.as_str()), "{id} came back");
        } else if removal.is_none() {
            let status = e.status(id);
            assert!(
                ["created", "running", "exited"].contains(&status.as_str()),
                "{id}: {status}"
            );
        }
    }
    let ids: Vec<String> = listed.lines().map(String::from).collect();
    for id in &ids {
        e.d.ok(&["rm", "-f", id]);
    }
    assert_eq!(e.d.ok(&["ps", "-aq"]), "");
    let mut all = ids;
    all.extend(created);
    assert_no_residue(&e, &all);
}

#[test]
fn fifty_containers_leave_nothing_behind() {
    let e = env();
    let d = &e.d;
    let mut ids = Vec::new();
    for i in 0..50 {
        let id = d.ok(&[
            "run",
            "-d",
            "--name",
            &format!("c{i}"),
            "-m",
            "32m",
            "busybox",
            "sleep",
            "300",
        ]);
        ids.push(id.trim().to_string());
    }
    assert_eq!(d.ok(&["ps", "-q"]).lines().count(), 50);
    for chunk in ids.chunks(10) {
        let mut args = vec!["rm", "-f"];
        args.extend(chunk.iter().map(String::as_str));
        d.ok(&args);
    }
    assert_no_residue(&e, &ids);
}

/// Nothing of the containers `ids` (all removed) is left: no mount, cgroup, monitor process,
/// runtime state or file.
fn assert_no_residue(e: &Env, ids: &[String]) {
    let d = &e.d;
    assert_eq!(d.ok(&["ps", "-aq"]), "");
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let cgroups: Vec<String> = fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .map(|c| c.path().join("berth"))
        .filter(|p| p.is_dir())
        .flat_map(|p| {
            fs::read_dir(p)
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    let procs = fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|p| fs::read(p.path().join("cmdline")).ok())
        .filter(|c| {
            let c = String::from_utf8_lossy(c);
            c.contains("shim") && c.contains(d.exec_root.to_str().unwrap())
        })
        .count();
    for id in ids {
        assert!(!mounts.contains(id.as_str()), "a mount of {id} is left");
        assert!(!cgroups.iter().any(|c| c == id), "a cgroup of {id} is left");
    }
    assert_eq!(procs, 0, "monitor processes are left");
    for dir in ["shims", "runtime"] {
        let left: Vec<_> = fs::read_dir(d.exec_root.join(dir))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "{dir}: {left:?}");
    }
    assert!(fs::read_dir(e.dir.path().join("data/containers"))
        .unwrap()
        .next()
        .is_none());
    assert!(fs::read_dir(e.dir.path().join("data/snapshots/containers"))
        .map(|mut r| r.next().is_none())
        .unwrap_or(true));
}
