//! The installed docker CLI (28.x) driven against berth's daemon through a realistic
//! session, its outputs checked: berth serves the Docker Engine API on its socket. All
//! traffic stays on loopback and in the test's own namespaces.

mod common;

use std::path::Path;
use std::process::Command;

use common::Daemon;
use serde_json::Value;

/// A docker command aimed at `d`, with a configuration directory of the test's own.
fn docker_cmd(d: &Daemon, config: &Path) -> Command {
    let mut c = Command::new("docker");
    c.env("DOCKER_HOST", format!("unix://{}", d.socket.display()))
        .env("DOCKER_CONFIG", config)
        .env("DOCKER_BUILDKIT", "0")
        .env("DOCKER_CLI_HINTS", "false")
        .stdin(std::process::Stdio::null());
    c
}

struct Session<'a> {
    d: &'a Daemon,
    config: std::path::PathBuf,
}

impl Session<'_> {
    /// `docker args…`: (exit code, stdout, stderr).
    fn run(&self, args: &[&str]) -> (i32, String, String) {
        eprintln!("+ docker {}", args.join(" "));
        // A hang is a failure that names the command, not a stuck test.
        let child = docker_cmd(self.d, &self.config)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            if rx
                .recv_timeout(std::time::Duration::from_secs(120))
                .is_err()
            {
                // SAFETY: kill of our own child process.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        });
        let out = child.wait_with_output().unwrap();
        let _ = tx.send(());
        assert!(
            out.status.code().is_some(),
            "docker {args:?} hung (killed after 120 s)"
        );
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `docker args…`, which must succeed: its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.run(args);
        assert_eq!(
            code,
            0,
            "docker {args:?}:\n{out}{err}\ndaemon log:\n{}",
            self.d.log()
        );
        out
    }

    /// `docker args…`, which must fail: (code, stderr).
    fn err(&self, args: &[&str]) -> (i32, String) {
        let (code, out, err) = self.run(args);
        assert_ne!(code, 0, "docker {args:?} succeeded:\n{out}");
        (code, err)
    }
}

#[test]
fn the_docker_cli_runs_a_realistic_session_against_berth() {
    common::require_root();
    let dir = tempfile::Builder::new()
        .prefix("berth-docker-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let d = Daemon::start(&dir.path().join("data"));
    let s = Session {
        d: &d,
        config: dir.path().join("docker-config"),
    };

    // version and info name the server.
    let v = s.ok(&[
        "version",
        "--format",
        "{{.Server.APIVersion}} {{.Server.Os}}",
    ]);
    assert_eq!(v.trim(), "1.50 linux");
    let info = s.ok(&["info", "--format", "{{.OSType}} {{.Driver}}"]);
    assert_eq!(info.trim(), "linux overlay2");

    // import: a busybox root file system becomes busybox:latest.
    let tar = common::rootfs_tar(dir.path(), "bb", "busybox\n");
    let id = s.ok(&[
        "import",
        "-c",
        "CMD [\"sh\"]",
        tar.to_str().unwrap(),
        "busybox:latest",
    ]);
    assert!(id.trim().starts_with("sha256:"), "{id}");
    let images = s.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert_eq!(images.trim(), "busybox:latest");
    let named = s.ok(&["images", "busybox", "--format", "{{.Repository}}"]);
    assert_eq!(named.trim(), "busybox");

    // run: output, exit codes, --rm leaving nothing.
    assert_eq!(
        s.ok(&["run", "--rm", "busybox", "echo", "hello"]),
        "hello\n"
    );
    let (code, _) = s.err(&["run", "--rm", "busybox", "sh", "-c", "exit 7"]);
    assert_eq!(code, 7);
    let (code, err) = s.err(&["run", "--rm", "busybox", "no-such-command"]);
    assert_eq!(code, 127, "{err}");
    assert_eq!(s.ok(&["ps", "-aq"]), "");
    let both = s.run(&[
        "run",
        "--rm",
        "busybox",
        "sh",
        "-c",
        "echo out; echo err >&2",
    ]);
    assert_eq!(
        (both.0, both.1.as_str(), both.2.as_str()),
        (0, "out\n", "err\n")
    );

    // A detached server with a published port, a bind mount, env, memory and restart policy.
    let site = dir.path().join("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("index.html"), "served by berth\n").unwrap();
    let port = common::free_port();
    let web = s.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        &format!("127.0.0.1:{port}:80"),
        "-v",
        &format!("{}:/www:ro", site.display()),
        "-e",
        "GREETING=hi",
        "-m",
        "64m",
        "--restart",
        "on-failure:2",
        "busybox",
        "sh",
        "-c",
        "echo starting; exec httpd -f -p 80 -h /www",
    ]);
    let web = web.trim().to_string();
    assert_eq!(web.len(), 64, "{web}");
    let ps = s.ok(&["ps", "--format", "{{.Names}}|{{.Image}}|{{.Ports}}"]);
    assert_eq!(
        ps.trim(),
        format!("web|busybox|127.0.0.1:{port}->80/tcp"),
        "{ps}"
    );
    let inspect: Value = serde_json::from_str(&s.ok(&["inspect", "web"])).unwrap();
    let c = &inspect[0];
    assert_eq!(c["Id"], web.as_str());
    assert_eq!(c["State"]["Status"], "running");
    assert_eq!(c["HostConfig"]["Memory"], 64 << 20);
    assert_eq!(c["HostConfig"]["RestartPolicy"]["Name"], "on-failure");
    assert!(c["Config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e == "GREETING=hi"));
    // The published port answers, from the host.
    let mut body = String::new();
    for _ in 0..50 {
        if let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            conn.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").unwrap();
            body.clear();
            let _ = conn.read_to_string(&mut body);
            if body.contains("served by berth") {
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(body.contains("served by berth"), "{body}");
    assert_eq!(
        s.ok(&["port", "web", "80"]).trim(),
        format!("127.0.0.1:{port}")
    );
    assert!(s.ok(&["logs", "web"]).starts_with("starting"));
    assert_eq!(s.ok(&["exec", "web", "sh", "-c", "echo $GREETING"]), "hi\n");
    let (code, _) = s.err(&["exec", "web", "sh", "-c", "exit 4"]);
    assert_eq!(code, 4);
    let top = s.ok(&["top", "web"]);
    assert!(top.contains("httpd"), "{top}");
    let stats = s.ok(&[
        "stats",
        "--no-stream",
        "--format",
        "{{.Name}} {{.MemUsage}}",
        "web",
    ]);
    assert!(
        stats.starts_with("web ") && stats.contains("64MiB"),
        "{stats}"
    );
    // cp both ways.
    std::fs::write(dir.path().join("in.txt"), "copied in\n").unwrap();
    s.ok(&[
        "cp",
        dir.path().join("in.txt").to_str().unwrap(),
        "web:/tmp/",
    ]);
    assert_eq!(s.ok(&["exec", "web", "cat", "/tmp/in.txt"]), "copied in\n");
    s.ok(&[
        "cp",
        "web:/tmp/in.txt",
        dir.path().join("out.txt").to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out.txt")).unwrap(),
        "copied in\n"
    );
    // logs -f follows until the container ends.
    s.ok(&[
        "run",
        "-d",
        "--name",
        "talker",
        "busybox",
        "sh",
        "-c",
        "echo first; sleep 0.5; echo second",
    ]);
    assert_eq!(s.ok(&["logs", "-f", "talker"]), "first\nsecond\n");
    s.ok(&["rm", "talker"]);
    // rename, pause, unpause, restart, stop, kill, wait, rm.
    s.ok(&["rename", "web", "site"]);
    s.ok(&["pause", "site"]);
    assert_eq!(
        s.ok(&["inspect", "-f", "{{.State.Status}}", "site"]).trim(),
        "paused"
    );
    s.ok(&["unpause", "site"]);
    s.ok(&["restart", "-t", "1", "site"]);
    assert_eq!(
        s.ok(&["inspect", "-f", "{{.State.Status}}", "site"]).trim(),
        "running"
    );
    s.ok(&["stop", "-t", "1", "site"]);
    assert_eq!(s.ok(&["wait", "site"]).trim(), "137");
    s.ok(&["start", "site"]);
    s.ok(&["kill", "site"]);
    assert_eq!(s.ok(&["wait", "site"]).trim(), "137");
    s.ok(&["rm", "site"]);
    let (_, err) = s.err(&["inspect", "site"]);
    assert!(err.contains("No such object: site"), "{err}");

    // Interactive: run -it and exec -it through a pseudo-terminal.
    let mut cmd = docker_cmd(&d, &s.config);
    cmd.args(["run", "-it", "--rm", "busybox", "sh"]);
    let (code, out) = common::on_tty(cmd, "stty size; echo $((6*7)); exit 3\r");
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("30 100") && out.contains("42"), "{out}");
    s.ok(&["run", "-d", "--name", "box", "busybox", "sleep", "1000"]);
    let mut cmd = docker_cmd(&d, &s.config);
    cmd.args(["exec", "-it", "box", "sh"]);
    let (code, out) = common::on_tty(cmd, "stty size; echo in-exec; exit 5\r");
    assert_eq!(code, 5, "{out}");
    assert!(out.contains("30 100") && out.contains("in-exec"), "{out}");
    // Piped stdin ends at EOF.
    let mut child = docker_cmd(&d, &s.config)
        .args(["exec", "-i", "box", "sh", "-c", "cat; echo done"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"piped\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "piped\ndone\n");
    // attach to a running container: its stdin from ours, its output to ours, its exit code.
    s.ok(&[
        "run",
        "-d",
        "-i",
        "--name",
        "att",
        "busybox",
        "sh",
        "-c",
        "read x; echo got $x; exit 6",
    ]);
    let mut child = docker_cmd(&d, &s.config)
        .args(["attach", "att"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"hello\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "got hello\n");
    assert_eq!(out.status.code(), Some(6));
    s.ok(&["rm", "att"]);

    // Images: tag, history, commit, build, save, load, rmi.
    s.ok(&["tag", "busybox:latest", "mine/bb:1"]);
    let history = s.ok(&["history", "--format", "{{.CreatedBy}}", "mine/bb:1"]);
    assert!(history.contains("import"), "{history}");
    s.ok(&["exec", "box", "touch", "/made-in-box"]);
    s.ok(&["commit", "box", "committed:1"]);
    assert_eq!(
        s.ok(&["run", "--rm", "committed:1", "ls", "/made-in-box"]),
        "/made-in-box\n"
    );
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM busybox\nRUN echo built > /b\nCMD [\"cat\", \"/b\"]\n",
    )
    .unwrap();
    s.ok(&["build", "-t", "built:1", ctx.to_str().unwrap()]);
    assert_eq!(s.ok(&["run", "--rm", "built:1"]), "built\n");
    let archive = dir.path().join("saved.tar");
    s.ok(&["save", "-o", archive.to_str().unwrap(), "built:1"]);
    s.ok(&["rmi", "built:1"]);
    let (_, err) = s.err(&["image", "inspect", "built:1"]);
    assert!(err.contains("No such image"), "{err}");
    let loaded = s.ok(&["load", "-i", archive.to_str().unwrap()]);
    assert!(loaded.contains("Loaded image: built:1"), "{loaded}");
    assert_eq!(s.ok(&["run", "--rm", "built:1"]), "built\n");
    let untagged = s.ok(&["rmi", "mine/bb:1"]);
    assert!(untagged.contains("Untagged: mine/bb:1"), "{untagged}");

    // login, push, pull and run-pulls against berth's registry (bearer tokens).
    let reg_root = dir.path().join("registry");
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(
        &htpasswd,
        format!("alice:{}\n", bcrypt::hash("wonder", 4).unwrap()),
    )
    .unwrap();
    let reg = common::Registry::start(&reg_root, &["--htpasswd", htpasswd.to_str().unwrap()]);
    let addr = reg.addr.clone();
    let (_, err) = s.err(&["login", "-u", "alice", "-p", "wrong", &addr]);
    assert!(err.contains("unauthorized"), "{err}");
    let out = s.ok(&["login", "-u", "alice", "-p", "wonder", &addr]);
    assert!(out.contains("Login Succeeded"), "{out}");
    let remote = format!("{addr}/lib/built:1");
    s.ok(&["tag", "built:1", &remote]);
    let pushed = s.ok(&["push", &remote]);
    assert!(pushed.contains("1: digest: sha256:"), "{pushed}");
    s.ok(&["rmi", &remote, "built:1"]);
    let pulled = s.ok(&["pull", &remote]);
    assert!(pulled.contains("Downloaded newer image"), "{pulled}");
    s.ok(&["rmi", &remote]);
    // run pulls what is not here.
    let (code, out, err) = s.run(&["run", "--rm", &remote]);
    assert_eq!((code, out.as_str()), (0, "built\n"), "{err}");
    assert!(err.contains("Unable to find image"), "{err}");
    drop(reg);

    // Networks and volumes.
    s.ok(&["network", "create", "--subnet", "10.239.7.0/24", "backend"]);
    let nets = s.ok(&["network", "ls", "--format", "{{.Name}} {{.Driver}}"]);
    for n in ["backend bridge", "bridge bridge", "host host", "none null"] {
        assert!(nets.contains(n), "{n} in {nets}");
    }
    let subnet = s.ok(&[
        "network",
        "inspect",
        "-f",
        "{{range .IPAM.Config}}{{.Subnet}}{{end}}",
        "backend",
    ]);
    assert_eq!(subnet.trim(), "10.239.7.0/24");
    s.ok(&["network", "connect", "--alias", "db", "backend", "box"]);
    let ip = s.ok(&[
        "inspect",
        "-f",
        "{{(index .NetworkSettings.Networks \"backend\").IPAddress}}",
        "box",
    ]);
    assert!(ip.trim().starts_with("10.239.7."), "{ip}");
    s.ok(&["network", "disconnect", "backend", "box"]);
    s.ok(&["volume", "create", "data"]);
    assert!(s.ok(&["volume", "ls", "-q"]).lines().any(|l| l == "data"));
    s.ok(&[
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
        s.ok(&[
            "run",
            "--rm",
            "-v",
            "data:/data",
            "busybox",
            "cat",
            "/data/f"
        ]),
        "kept\n"
    );
    let mp = s.ok(&["volume", "inspect", "-f", "{{.Mountpoint}}", "data"]);
    assert!(Path::new(mp.trim()).join("f").exists(), "{mp}");

    // events and system df / prune.
    let events = s.ok(&[
        "events",
        "--since",
        "5m",
        "--until",
        "0s",
        "--format",
        "{{.Type}} {{.Action}}",
    ]);
    assert!(events.contains("container start"), "{events}");
    // Docker's JSON filters reach the event stream.
    let filtered = s.ok(&[
        "events",
        "--since",
        "5m",
        "--until",
        "0s",
        "--filter",
        "type=container",
        "--filter",
        "event=destroy",
        "--format",
        "{{.Type}} {{.Action}}",
    ]);
    assert!(
        !filtered.is_empty() && filtered.lines().all(|l| l == "container destroy"),
        "{filtered}"
    );
    let df = s.ok(&["system", "df", "--format", "{{.Type}} {{.TotalCount}}"]);
    assert!(df.contains("Images "), "{df}");
    s.ok(&["rm", "-f", "box"]);
    s.ok(&["volume", "rm", "data"]);
    s.ok(&["network", "rm", "backend"]);
    s.ok(&["system", "prune", "-f"]);
    assert_eq!(s.ok(&["ps", "-aq"]), "");
}

/// One raw request on the daemon's socket: (status, body).
fn raw(d: &Daemon, request: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_string())
}

fn post_json(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[test]
fn bad_requests_get_docker_s_errors_and_the_daemon_lives_on() {
    common::require_root();
    let dir = tempfile::Builder::new()
        .prefix("berth-docker-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let d = common::daemon_with_busybox(dir.path());
    let cases: Vec<(String, u16, &str)> = vec![
        (
            post_json("/v1.50/containers/create", "{\"Image\": \"busybox\", "),
            400,
            "invalid request body",
        ),
        (
            post_json(
                "/v1.50/containers/create",
                "{\"Image\": \"busybox\", \"HostConfig\": {\"Memory\": \"lots\"}}",
            ),
            400,
            "Memory",
        ),
        (
            post_json("/v1.50/containers/create", "{\"Image\": 5}"),
            400,
            "Image",
        ),
        (
            post_json("/v1.50/containers/create", "{}"),
            400,
            "config cannot be empty",
        ),
        (
            post_json(
                "/v1.50/containers/create",
                "{\"Image\": \"busybox\", \"HostConfig\": {\"Binds\": [\"relative:/x:ro:extra\"]}}",
            ),
            400,
            "invalid volume specification",
        ),
        (
            post_json(
                "/v1.50/containers/create",
                "{\"Image\": \"busybox\", \"HostConfig\": {\"LogConfig\": {\"Type\": \"syslog\"}}}",
            ),
            400,
            "error looking up logging plugin syslog: plugin \"syslog\" not found",
        ),
        (
            post_json("/v1.50/networks/create", "{\"Name\": \"n\", \"Driver\": \"overlay\"}"),
            404,
            "plugin \"overlay\" not found",
        ),
        (
            "GET /v1.99/info HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n".into(),
            400,
            "client version 1.99 is too new. Maximum supported API version is 1.50",
        ),
        (
            "GET /v1.12/info HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n".into(),
            400,
            "client version 1.12 is too old",
        ),
        (
            "GET /v1.50/containers/nothing/json HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n"
                .into(),
            404,
            "No such container: nothing",
        ),
        (
            "GET /v1.50/no/such/route HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n".into(),
            404,
            "page not found",
        ),
        (
            post_json("/v1.50/containers/create?name=a%2Fb", "{\"Image\": \"busybox\"}"),
            400,
            "Invalid container name",
        ),
        (
            post_json("/v1.50/containers/create", "{\"Image\": \"127.0.0.1:1/none\"}"),
            404,
            "No such image: 127.0.0.1:1/none:latest",
        ),
        // The test daemon contacts loopback registries only: Docker Hub is refused before
        // any connection, and the answer is an error status, not a stream.
        (
            post_json("/v1.50/images/create?fromImage=busybox&tag=latest", ""),
            400,
            "registry-1.docker.io: this daemon may not contact that registry",
        ),
    ];
    for (req, status, says) in &cases {
        let (got, body) = raw(&d, req);
        assert_eq!(got, *status, "{req}\n{body}");
        let v: Value = serde_json::from_str(&body).unwrap_or_default();
        let msg = v["message"].as_str().unwrap_or("");
        assert!(msg.contains(says), "{req}: {says:?} not in {body}");
    }
    // Nothing was made by any of them.
    let list = raw(
        &d,
        "GET /v1.50/containers/json?all=1 HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(list.1.trim(), "[]");
    // Go clients send nil maps as null (compose's LogConfig, testcontainers' EndpointsConfig).
    let (status, body) = raw(
        &d,
        &post_json(
            "/v1.50/containers/create?name=nulls",
            "{\"Image\": \"busybox\", \"HostConfig\": {\"LogConfig\": {\"Type\": \"\", \"Config\": null}}, \"NetworkingConfig\": {\"EndpointsConfig\": null}}",
        ),
    );
    assert_eq!(status, 201, "{body}");
    let (status, _) = raw(
        &d,
        "DELETE /v1.50/containers/nulls?v=1 HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 204);
    // A filter berth does not apply is refused, never dropped: a prune must not remove what
    // the filter meant to keep.
    for path in [
        "/v1.50/containers/prune?filters=%7B%22keep%22%3A%5B%22x%22%5D%7D",
        "/v1.50/volumes/prune?filters=%7B%22dangling%22%3A%5B%22x%22%5D%7D",
        "/v1.50/networks/prune?filters=%7B%22driver%22%3A%5B%22bridge%22%5D%7D",
    ] {
        let (status, body) = raw(&d, &post_json(path, ""));
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains("invalid filter"), "{body}");
    }
    // Unknown fields are ignored, as dockerd (Go's JSON decoding) ignores them: a newer
    // client's body still creates.
    let (status, body) = raw(
        &d,
        &post_json(
            "/v1.50/containers/create?name=newer",
            "{\"Image\": \"busybox\", \"SomeFutureField\": {\"x\": 1}}",
        ),
    );
    assert_eq!(status, 201, "{body}");
    let (status, _) = raw(
        &d,
        "DELETE /v1.50/containers/newer HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 204);
    // attach without the upgrade headers streams anyway (200, raw), as dockerd does; a
    // stopped container's attach ends at once instead of hanging.
    let created = raw(
        &d,
        &post_json(
            "/v1.50/containers/create",
            "{\"Image\": \"busybox\", \"Cmd\": [\"echo\", \"attached\"]}",
        ),
    );
    let id = serde_json::from_str::<Value>(&created.1).unwrap()["Id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _) = raw(
        &d,
        &format!("POST /v1.50/containers/{id}/attach?stream=0&stdout=1&logs=1 HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n"),
    );
    assert!(matches!(status, 200 | 409), "{status}");
    // The daemon still answers.
    let (status, body) = raw(
        &d,
        "GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n",
    );
    assert_eq!((status, body.as_str()), (200, "OK"));
}
