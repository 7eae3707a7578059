//! Integration tests of `berth runtime`: real containers from a busybox bundle, checked from
//! inside. They need root (CI runs as root) and fail, never skip, without it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;

use common::{busybox_bundle, require_root, BERTH};

/// A busybox bundle plus a private state root.
struct Bundle {
    dir: tempfile::TempDir,
    id: String,
}

impl Bundle {
    fn new(name: &str, args: &[&str]) -> Bundle {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix("berth-test-")
            .tempdir_in("/var/tmp")
            .unwrap();
        busybox_bundle(&dir.path().join("bundle"), args);
        let b = Bundle {
            dir,
            id: format!("{name}-{}", std::process::id()),
        };
        // A writable /tmp for tests that write.
        b.edit(|c| c["mounts"].as_array_mut().unwrap().push(json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]})));
        b
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("bundle")
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn rootfs(&self) -> PathBuf {
        self.path().join("rootfs")
    }

    fn edit(&self, f: impl FnOnce(&mut Value)) {
        let p = self.path().join("config.json");
        let mut c: Value = serde_json::from_str(&fs::read_to_string(&p).unwrap()).unwrap();
        f(&mut c);
        fs::write(&p, serde_json::to_string_pretty(&c).unwrap()).unwrap();
    }

    /// `<binary> runtime --root <root> <verb> <extra…> --bundle <bundle> <id>`, stdin closed.
    fn command(&self, binary: &Path, verb: &str, extra: &[&str]) -> Command {
        let mut cmd = Command::new(binary);
        cmd.arg("runtime")
            .arg("--root")
            .arg(self.root())
            .arg(verb)
            .args(extra);
        cmd.arg("--bundle")
            .arg(self.path())
            .arg(&self.id)
            .stdin(Stdio::null());
        cmd
    }

    fn berth(&self, args: &[&str]) -> Output {
        Command::new(BERTH)
            .arg("runtime")
            .arg("--root")
            .arg(self.root())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn run(&self) -> Output {
        let bundle = self.path();
        self.berth(&["run", "--bundle", bundle.to_str().unwrap(), &self.id])
    }

    /// [`Bundle::run`] with `--log`: the output and the log file's path.
    fn run_logged(&self) -> (Output, PathBuf) {
        let log = self.dir.path().join("runtime.log");
        let bundle = self.path();
        let out = self.berth(&[
            "--log",
            log.to_str().unwrap(),
            "run",
            "--bundle",
            bundle.to_str().unwrap(),
            &self.id,
        ]);
        (out, log)
    }

    /// Runs the container in the foreground and returns its stdout, asserting success.
    fn run_ok(&self) -> String {
        let out = self.run();
        assert!(
            out.status.success(),
            "run failed ({:?}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `create`, with the container's stdio (which is the caller's) going to files: a pipe
    /// would stay open as long as the container runs.
    fn create(&self) {
        let out = fs::File::create(self.dir.path().join("stdout")).unwrap();
        let err_path = self.dir.path().join("stderr");
        let err = fs::File::create(&err_path).unwrap();
        let status = self
            .command(Path::new(BERTH), "create", &[])
            .stdout(out)
            .stderr(err)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "create failed: {}",
            fs::read_to_string(err_path).unwrap()
        );
    }

    /// `create` that must fail; returns its stderr.
    fn create_err(&self) -> String {
        let err_path = self.dir.path().join("stderr-dup");
        let status = self
            .command(Path::new(BERTH), "create", &[])
            .stdout(Stdio::null())
            .stderr(fs::File::create(&err_path).unwrap())
            .status()
            .unwrap();
        assert!(!status.success(), "create succeeded");
        fs::read_to_string(err_path).unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        common::stdout_of(self.berth(args), &format!("berth runtime {args:?}"))
    }

    fn state(&self) -> Value {
        serde_json::from_str(&self.ok(&["state", &self.id])).unwrap()
    }

    fn wait_status(&self, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.state();
            if s["status"] == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "container never reached {want}: {s}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every cgroup directory that could belong to this container.
    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for entry in fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
            let p = entry.path().join("berth").join(&self.id);
            if p.exists() {
                out.push(p);
            }
        }
        let v2 = Path::new("/sys/fs/cgroup/berth").join(&self.id);
        if v2.exists() {
            out.push(v2);
        }
        out
    }

    fn assert_gone(&self) {
        assert!(
            !self.root().join(&self.id).exists(),
            "state directory left behind"
        );
        assert_eq!(
            self.cgroup_dirs(),
            Vec::<PathBuf>::new(),
            "cgroups left behind"
        );
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let rootfs = self.rootfs();
        assert!(
            !mounts.contains(rootfs.to_str().unwrap()),
            "mount left behind under {}",
            rootfs.display()
        );
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        let _ = self.berth(&["delete", "--force", &self.id]);
    }
}

#[test]
fn container_is_pid_one_with_its_hostname_and_sees_no_host_process() {
    let b = Bundle::new(
        "pid1",
        &[
            "sh",
            "-c",
            "echo pid=$$; hostname; ls /proc | grep -c '^[0-9]'; cat /proc/1/cmdline",
        ],
    );
    let out = b.run_ok();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "pid=1");
    assert_eq!(lines[1], "berth");
    let procs: usize = lines[2].parse().unwrap();
    assert!(procs <= 4, "the container sees {procs} processes: {out}");
    b.assert_gone();
}

#[test]
fn stdio_is_the_callers_and_exit_codes_pass_through() {
    let b = Bundle::new("stdio", &["sh", "-c", "echo out; echo err >&2; exit 7"]);
    let out = b.run();
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    let b = Bundle::new("stdin", &["sh", "-c", "read line; echo got:$line"]);
    let mut child = b
        .command(Path::new(BERTH), "run", &[])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"hello\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "got:hello\n");
}

#[test]
fn memory_limit_oom_kills_and_is_reported() {
    let b = Bundle::new("oom", &["sh", "-c", "head -c 200m /dev/zero | tail"]);
    b.edit(|c| c["linux"]["resources"]["memory"] = json!({"limit": 32 << 20, "swap": 32 << 20}));
    b.create();
    let limit = fs::read_to_string(
        b.cgroup_dirs()
            .iter()
            .find(|p| p.starts_with("/sys/fs/cgroup/memory"))
            .expect("memory cgroup")
            .join("memory.limit_in_bytes"),
    )
    .unwrap();
    assert_eq!(limit.trim(), (32u64 << 20).to_string());
    b.ok(&["start", &b.id]);
    b.wait_status("stopped");
    let stats: Value = serde_json::from_str(&b.ok(&["events", "--stats", &b.id])).unwrap();
    let oom = stats["data"]["memory"]["oom_kill"]
        .as_u64()
        .or_else(|| stats["data"]["oom_kill"].as_u64())
        .unwrap_or_else(|| panic!("no oom_kill in {stats}"));
    assert!(oom >= 1, "OOM kill not reported: {stats}");
    b.ok(&["delete", &b.id]);
    b.assert_gone();
}

#[test]
fn pids_limit_stops_forks() {
    let b = Bundle::new(
        "pids",
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 12 ]; do sleep 30 & i=$((i+1)); done; echo all started",
        ],
    );
    b.edit(|c| c["linux"]["resources"]["pids"] = json!({"limit": 6}));
    let out = b.run();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && !stdout.contains("all started"),
        "12 processes started despite a pids limit of 6"
    );
    assert!(stderr.contains("can't fork"), "{stderr}");
    b.assert_gone();
}

fn status_field(status: &str, name: &str) -> u64 {
    let line = status
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("{name} missing"));
    u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
}

#[test]
fn capability_sets_are_exactly_as_configured() {
    let b = Bundle::new("caps-root", &["cat", "/proc/self/status"]);
    b.edit(|c| c["process"]["capabilities"] = json!({"bounding": ["CAP_KILL", "CAP_CHOWN"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]}));
    let s = b.run_ok();
    assert_eq!(status_field(&s, "CapBnd:"), 0x21);
    // noNewPrivileges (on in the default spec) keeps execve from raising permitted above what was set.
    assert_eq!(status_field(&s, "CapPrm:"), 0x20);
    assert_eq!(status_field(&s, "CapEff:"), 0x20);
    // As an unprivileged user, all five sets survive exec exactly (ambient carries into permitted/effective).
    let b = Bundle::new("caps-user", &["cat", "/proc/self/status"]);
    b.edit(|c| {
        c["process"]["user"] = json!({"uid": 1000, "gid": 1000, "additionalGids": [5]});
        c["process"]["capabilities"] = json!({
            "bounding": ["CAP_KILL", "CAP_CHOWN", "CAP_NET_BIND_SERVICE"],
            "effective": ["CAP_KILL", "CAP_CHOWN"], "permitted": ["CAP_KILL", "CAP_CHOWN"],
            "inheritable": ["CAP_KILL", "CAP_CHOWN"], "ambient": ["CAP_KILL"]});
    });
    let s = b.run_ok();
    assert_eq!(status_field(&s, "CapBnd:"), 0x421);
    assert_eq!(status_field(&s, "CapInh:"), 0x21);
    assert_eq!(status_field(&s, "CapPrm:"), 0x20);
    assert_eq!(status_field(&s, "CapEff:"), 0x20);
    assert_eq!(status_field(&s, "CapAmb:"), 0x20);
    assert!(
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("1000")),
        "{s}"
    );
    assert!(
        s.lines()
            .any(|l| l.starts_with("Groups:") && l.split_whitespace().nth(1) == Some("5")),
        "{s}"
    );
    assert!(
        s.lines()
            .any(|l| l.starts_with("NoNewPrivs:") && l.ends_with('1')),
        "{s}"
    );
}

#[test]
fn seccomp_returns_the_configured_errno() {
    let b = Bundle::new(
        "seccomp",
        &[
            "sh",
            "-c",
            "mkdir /tmp/x; echo rc=$?; touch /tmp/y && echo touched",
        ],
    );
    b.edit(|c| {
        c["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 122}]})
    });
    let out = b.run();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("quota"),
        "mkdir did not fail with EDQUOT (122): {stderr}"
    );
    assert!(
        stdout.contains("rc=1") && stdout.contains("touched"),
        "{stdout}"
    );
}

#[test]
fn masked_paths_are_unreadable_and_readonly_paths_readonly() {
    let b = Bundle::new("paths", &["sh", "-c", "wc -c < /proc/keys; ls -A /sys/firmware | wc -l; echo 1 > /proc/sys/vm/overcommit_memory || echo readonly; echo x > /etc/x || echo rootro"]);
    let out = b.run();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        ["0", "0", "readonly", "rootro"],
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bind_mounts_are_present_and_read_only_when_asked() {
    let b = Bundle::new(
        "bind",
        &[
            "sh",
            "-c",
            "cat /data/hello; echo y > /data/new || echo ro; cat /file",
        ],
    );
    let host = b.dir.path().join("hostdata");
    fs::create_dir(&host).unwrap();
    fs::write(host.join("hello"), "hi from the host\n").unwrap();
    let file = b.dir.path().join("single");
    fs::write(&file, "a single file\n").unwrap();
    b.edit(|c| {
        let m = c["mounts"].as_array_mut().unwrap();
        m.push(json!({"destination": "/data", "type": "bind", "source": host, "options": ["rbind", "ro"]}));
        m.push(json!({"destination": "/file", "type": "bind", "source": file, "options": ["bind"]}));
    });
    let out = b.run_ok();
    assert_eq!(out, "hi from the host\nro\na single file\n");
    assert!(!host.join("new").exists());
}

#[test]
fn mount_targets_never_follow_symlinks_out_of_the_rootfs() {
    let b = Bundle::new(
        "symlink",
        &["stat", "-f", "-c", "%T", "/escape", "/escape2/sub"],
    );
    let victim = b.dir.path().join("victim");
    fs::create_dir(&victim).unwrap();
    fs::write(victim.join("keep"), "host file").unwrap();
    std::os::unix::fs::symlink(&victim, b.rootfs().join("escape")).unwrap();
    std::os::unix::fs::symlink(
        format!("../../../../../../..{}", victim.display()),
        b.rootfs().join("escape2"),
    )
    .unwrap();
    b.edit(|c| {
        let m = c["mounts"].as_array_mut().unwrap();
        m.push(json!({"destination": "/escape", "type": "tmpfs", "source": "tmpfs"}));
        m.push(json!({"destination": "/escape2/sub", "type": "tmpfs", "source": "tmpfs"}));
    });
    // Inside, both targets are the tmpfs mounts, reached through the symlinks as the container sees them.
    assert_eq!(b.run_ok(), "tmpfs\ntmpfs\n");
    // Outside, the host directory the symlinks name was neither written to nor created in: what
    // had to be created went inside the rootfs.
    assert_eq!(
        fs::read_dir(&victim)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect::<Vec<_>>(),
        ["keep"]
    );
    assert!(b.rootfs().join(victim.strip_prefix("/").unwrap()).is_dir());
    b.assert_gone();
}

#[test]
fn user_namespace_maps_ids() {
    let b = Bundle::new(
        "userns",
        &[
            "sh",
            "-c",
            "cat /proc/self/uid_map /proc/self/gid_map; id -u; sleep 30",
        ],
    );
    b.edit(|c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "user"}));
        c["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        c["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        // cgroup v1 hierarchies cannot be mounted from a user namespace.
        c["mounts"]
            .as_array_mut()
            .unwrap()
            .retain(|m| m["type"] != "cgroup");
    });
    let log = b.dir.path().join("out");
    let out_file = fs::File::create(&log).unwrap();
    let status = b
        .command(Path::new(BERTH), "run", &["--detach"])
        .stdout(out_file)
        .status()
        .unwrap();
    assert!(status.success());
    let pid = b.state()["pid"].as_i64().unwrap();
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("100000")),
        "{status}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while fs::read_to_string(&log).unwrap().lines().count() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = fs::read_to_string(&log).unwrap();
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(
        words,
        ["0", "100000", "65536", "0", "100000", "65536", "0"],
        "{out}"
    );
    b.ok(&["delete", "--force", &b.id]);
    b.assert_gone();
}

#[test]
fn hooks_run_in_order_with_the_state_on_stdin() {
    let b = Bundle::new("hooks", &["true"]);
    let logdir = b.dir.path().join("hooklog");
    fs::create_dir(&logdir).unwrap();
    let log = logdir.join("log");
    let host_hook = |name: &str| json!({"path": "/bin/sh", "args": ["sh", "-c", format!("read -r s; echo \"{name} $s\" >> {}", log.display())]});
    b.edit(|c| {
        c["mounts"].as_array_mut().unwrap().push(json!({"destination": "/hooklog", "type": "bind", "source": logdir, "options": ["bind"]}));
        c["hooks"] = json!({
            "prestart": [host_hook("prestart")],
            "createRuntime": [host_hook("createRuntime")],
            "createContainer": [host_hook("createContainer")],
            "startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "read -r s; echo \"startContainer $s\" >> /hooklog/log"]}],
            "poststart": [host_hook("poststart")],
            "poststop": [host_hook("poststop")],
        });
    });
    b.run_ok();
    let text = fs::read_to_string(&log).unwrap();
    let names: Vec<&str> = text.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(
        names,
        [
            "prestart",
            "createRuntime",
            "createContainer",
            "startContainer",
            "poststart",
            "poststop"
        ],
        "{text}"
    );
    for line in text.lines() {
        let state: Value = serde_json::from_str(line.split_once(' ').unwrap().1).unwrap();
        assert_eq!(state["id"], b.id.as_str(), "{line}");
    }
    assert!(
        text.lines()
            .next()
            .unwrap()
            .contains("\"status\":\"creating\""),
        "{text}"
    );
    assert!(
        text.contains("poststop {")
            && text
                .lines()
                .last()
                .unwrap()
                .contains("\"status\":\"stopped\""),
        "{text}"
    );
    // The program (`true`) has exited by the time poststart runs, or is about to: the state
    // still says running, with its pid, by construction (issue 22).
    let post: Value = serde_json::from_str(
        text.lines()
            .find(|l| l.starts_with("poststart "))
            .unwrap()
            .split_once(' ')
            .unwrap()
            .1,
    )
    .unwrap();
    assert_eq!(post["status"], "running", "{text}");
    assert!(post["pid"].as_i64().unwrap_or(0) > 0, "{text}");
}

/// `create` then `start` of a program that exits at once: poststart runs after the program
/// was executed and is told `running` (issue 22).
#[test]
fn poststart_after_start_sees_running_even_for_a_program_that_exits_at_once() {
    let b = Bundle::new("poststart", &["true"]);
    let log = b.dir.path().join("poststart.log");
    b.edit(|c| {
        c["hooks"] = json!({"poststart": [{"path": "/bin/sh", "args": ["sh", "-c", format!("cat > {}", log.display())]}]});
    });
    b.create();
    b.ok(&["start", &b.id]);
    let state: Value = serde_json::from_str(&fs::read_to_string(&log).unwrap()).unwrap();
    assert_eq!(state["status"], "running", "{state}");
    assert_eq!(state["id"], b.id.as_str());
    b.wait_status("stopped");
    b.ok(&["delete", &b.id]);
    b.assert_gone();
}

#[test]
fn failing_hook_fails_create_and_leaves_nothing() {
    let b = Bundle::new("badhook", &["true"]);
    b.edit(|c| c["hooks"] = json!({"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", "echo nope >&2; exit 3"]}]}));
    let out = b.run();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("hooks.createRuntime[0]")
            && err.contains("exited with status 3")
            && err.contains("nope"),
        "{err}"
    );
    b.assert_gone();
}

#[test]
fn lifecycle_create_start_kill_delete_and_exec_joins_everything() {
    let b = Bundle::new("life", &["sleep", "1000"]);
    b.create();
    let s = b.state();
    assert_eq!(s["status"], "created");
    assert_eq!(s["ociVersion"], "1.2.0");
    assert_eq!(s["bundle"], b.path().to_str().unwrap());
    let pid = s["pid"].as_i64().unwrap();
    // A second create with the same id fails and leaves the first alone.
    let dup = b.create_err();
    assert!(dup.contains("already exists"), "{dup}");
    assert_eq!(b.state()["pid"].as_i64(), Some(pid));

    b.ok(&["start", &b.id]);
    b.wait_status("running");
    let list = b.ok(&["list", "--format", "json"]);
    assert!(list.contains(&b.id), "{list}");

    // exec: same namespaces and cgroup as the init.
    let out = b.ok(&["exec", &b.id, "sh", "-c", "for n in ipc mnt net pid uts cgroup; do readlink /proc/self/ns/$n; done; grep memory /proc/self/cgroup; hostname"]);
    let mut lines = out.lines();
    for n in ["ipc", "mnt", "net", "pid", "uts", "cgroup"] {
        let host = fs::read_link(format!("/proc/{pid}/ns/{n}")).unwrap();
        assert_eq!(
            lines.next().unwrap(),
            host.to_str().unwrap(),
            "namespace {n}"
        );
    }
    let cg = lines.next().unwrap();
    assert!(
        cg.ends_with(":/"),
        "exec'd process is not at the root of the container's cgroup namespace: {cg}"
    );
    assert_eq!(lines.next(), Some("berth"));
    let exec_code = b
        .berth(&["exec", &b.id, "sh", "-c", "exit 5"])
        .status
        .code();
    assert_eq!(exec_code, Some(5));
    let pids: Vec<i64> = serde_json::from_str(&b.ok(&["ps", "--format", "json", &b.id])).unwrap();
    assert_eq!(pids, vec![pid]);

    // delete refuses a running container without --force.
    let out = b.berth(&["delete", &b.id]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("running"));
    b.ok(&["kill", &b.id, "KILL"]);
    b.wait_status("stopped");
    let out = b.berth(&["kill", &b.id, "TERM"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not running"));
    b.ok(&["delete", &b.id]);
    b.assert_gone();
    let out = b.berth(&["state", &b.id]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("does not exist")
    );
}

/// A name, an edit that breaks the config, and what the error must name.
type BadCase = (&'static str, fn(&mut Value), &'static str);

#[test]
fn bad_configs_are_named_and_leave_nothing_behind() {
    let cases: &[BadCase] = &[
        (
            "unknown-field",
            |c| c["process"]["bogus"] = json!(1),
            "unknown field `process.bogus`",
        ),
        (
            "bad-ns",
            |c| {
                c["linux"]["namespaces"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"type": "bogus"}))
            },
            "linux.namespaces[6].type",
        ),
        (
            "no-rootfs",
            |c| c["root"]["path"] = json!("missing"),
            "root.path",
        ),
        (
            "bad-cap",
            |c| c["process"]["capabilities"]["bounding"] = json!(["CAP_BOGUS"]),
            "process.capabilities.bounding",
        ),
        (
            "tiny-mem",
            |c| c["linux"]["resources"]["memory"] = json!({"limit": 4096}),
            "linux.resources.memory.limit",
        ),
        (
            "bad-swap",
            |c| c["linux"]["resources"]["memory"] = json!({"limit": 64 << 20, "swap": 32 << 20}),
            "linux.resources.memory.swap",
        ),
        (
            "bad-exe",
            |c| c["process"]["args"] = json!(["/no/such/program"]),
            "process.args[0]",
        ),
        (
            "bad-cwd",
            |c| c["process"]["cwd"] = json!("/no/such/dir"),
            "process.cwd",
        ),
        (
            "bad-seccomp",
            |c| c["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_BOGUS"}),
            "linux.seccomp.defaultAction",
        ),
        (
            "host-sysctl",
            |c| c["linux"]["sysctl"] = json!({"kernel.core_pattern": "|/tmp/x"}),
            "linux.sysctl",
        ),
        (
            "magic-exe",
            |c| c["process"]["args"] = json!(["/proc/self/exe"]),
            "process.args[0]",
        ),
        (
            "apparmor",
            |c| c["process"]["apparmorProfile"] = json!("docker-default"),
            "process.apparmorProfile",
        ),
    ];
    for (name, edit, want) in cases {
        let b = Bundle::new(&format!("bad-{name}"), &["true"]);
        b.edit(edit);
        // Unknown properties are an error only when asked for (the spec's rule is to ignore
        // them; see unknown_properties_are_ignored_and_named_in_the_log).
        let bundle = b.path();
        let out = b.berth(&[
            "--strict-spec",
            "run",
            "--bundle",
            bundle.to_str().unwrap(),
            &b.id,
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: accepted");
        assert!(
            err.contains(want),
            "{name}: error {err:?} does not name {want:?}"
        );
        b.assert_gone();
    }
}

#[test]
fn the_runtime_binary_cannot_be_reopened_for_writing_or_run_in_a_container() {
    // CVE-2019-5736: whoever holds /proc/<pid>/exe of a berth process (a container that caught
    // one in its pid namespace) waits for it to exit and reopens it for writing. Here the
    // strongest such attacker, host root, tries it. Run with a copy of berth so that a
    // regression could only ever damage the copy.
    let b = Bundle::new("exe", &["sleep", "1"]);
    let berth = b.dir.path().join("berth-copy");
    fs::copy(BERTH, &berth).unwrap();
    let original = fs::read(&berth).unwrap();
    let root = b.root();
    let mut run = b.command(&berth, "run", &[]).spawn().unwrap();
    // Once the state exists, the runtime has re-executed into its protected form.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !root.join(&b.id).join("state.json").exists() {
        assert!(Instant::now() < deadline, "the container never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    let exe = fs::File::open(format!("/proc/{}/exe", run.id())).unwrap();
    assert_eq!(
        exe.metadata().unwrap().len(),
        original.len() as u64,
        "not the berth binary"
    );
    assert!(run.wait().unwrap().success());
    let reopened = fs::OpenOptions::new().write(true).open(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&exe)
    ));
    let err = reopened.expect_err("the runtime binary was reopened for writing");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    assert!(
        fs::read(&berth).unwrap() == original,
        "the runtime binary was modified"
    );

    // And a container cannot make berth run inside itself through /proc/self/exe.
    let b = Bundle::new("exe-inside", &["/evil", "--version"]);
    std::os::unix::fs::symlink("/proc/self/exe", b.rootfs().join("evil")).unwrap();
    let out = b.command(&berth, "run", &[]).output().unwrap();
    assert!(
        !out.status.success(),
        "berth ran inside the container: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("berth"),
        "{out:?}"
    );
}

#[test]
fn working_directory_through_a_leaked_fd_is_refused() {
    // CVE-2024-21626: a host directory fd inherited by the runtime must not become the
    // container's working directory.
    use std::os::unix::process::CommandExt;
    let b = Bundle::new("cwd-leak", &["pwd"]);
    b.edit(|c| c["process"]["cwd"] = json!("/proc/self/fd/7"));
    let host_dir = fs::File::open(b.dir.path()).unwrap();
    let raw = std::os::fd::AsRawFd::as_raw_fd(&host_dir);
    let mut cmd = b.command(Path::new(BERTH), "run", &[]);
    // SAFETY: dup2 in the child before exec, on fds that exist; no allocation.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(raw, 7) < 0 || libc::fcntl(7, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "ran with a working directory outside the container: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(err.contains("process.cwd"), "{err}");
    b.assert_gone();
}

/// Receives one fd sent with SCM_RIGHTS on a connected unix socket.
fn recv_fd(sock: &std::os::unix::net::UnixStream) -> std::os::fd::OwnedFd {
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut payload = [0u8; 256];
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast(),
        iov_len: payload.len(),
    };
    let mut cbuf = [0u8; 64];
    // SAFETY: zeroed msghdr is valid; every pointer we set refers to live local buffers.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = cbuf.len();
        assert!(
            libc::recvmsg(sock.as_raw_fd(), &mut msg, 0) > 0,
            "recvmsg: {}",
            std::io::Error::last_os_error()
        );
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        assert!(
            !cmsg.is_null() && (*cmsg).cmsg_type == libc::SCM_RIGHTS,
            "no fd received"
        );
        std::os::fd::OwnedFd::from_raw_fd(std::ptr::read_unaligned(
            libc::CMSG_DATA(cmsg) as *const i32
        ))
    }
}

#[test]
fn terminal_goes_through_the_console_socket() {
    use std::io::{Read, Write};
    let b = Bundle::new(
        "tty",
        &["sh", "-c", "tty; stty size; read line; echo got:$line"],
    );
    b.edit(|c| {
        c["process"]["terminal"] = json!(true);
        c["process"]["consoleSize"] = json!({"height": 33, "width": 111});
    });
    let sock_path = b.dir.path().join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock_path).unwrap();
    let bundle = b.path();
    let create = std::thread::spawn({
        let (root, id, sock) = (b.root(), b.id.clone(), sock_path.clone());
        move || {
            Command::new(BERTH)
                .args([
                    "runtime",
                    "--root",
                    root.to_str().unwrap(),
                    "create",
                    "--console-socket",
                    sock.to_str().unwrap(),
                    "--bundle",
                    bundle.to_str().unwrap(),
                    &id,
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .output()
                .unwrap()
        }
    });
    let (conn, _) = listener.accept().unwrap();
    let master = recv_fd(&conn);
    let out = create.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    b.ok(&["start", &b.id]);
    let mut term = fs::File::from(master);
    term.write_all(b"hello\n").unwrap();
    let mut text = String::new();
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !text.contains("got:hello") && Instant::now() < deadline {
        match term.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => text.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
    assert!(text.contains("/dev/pts/0"), "{text:?}");
    assert!(text.contains("33 111"), "{text:?}");
    assert!(text.contains("got:hello"), "{text:?}");
}

#[test]
fn joins_another_containers_namespaces_by_path() {
    let a = Bundle::new("pod-a", &["sleep", "30"]);
    a.create();
    let pid = a.state()["pid"].as_i64().unwrap();
    let b = Bundle::new(
        "pod-b",
        &[
            "sh",
            "-c",
            "for n in net ipc uts pid; do readlink /proc/self/ns/$n; done; hostname",
        ],
    );
    b.edit(|c| {
        let ns = c["linux"]["namespaces"].as_array_mut().unwrap();
        for n in ns.iter_mut() {
            let t = n["type"].as_str().unwrap().to_string();
            let file = match t.as_str() {
                "network" => "net",
                "ipc" => "ipc",
                "uts" => "uts",
                _ => continue,
            };
            n["path"] = json!(format!("/proc/{pid}/ns/{file}"));
        }
        c.as_object_mut().unwrap().remove("hostname");
    });
    let out = b.run_ok();
    let lines: Vec<&str> = out.lines().collect();
    for (i, n) in ["net", "ipc", "uts"].iter().enumerate() {
        assert_eq!(
            lines[i],
            fs::read_link(format!("/proc/{pid}/ns/{n}"))
                .unwrap()
                .to_str()
                .unwrap(),
            "{n}"
        );
    }
    assert_ne!(
        lines[3],
        fs::read_link(format!("/proc/{pid}/ns/pid"))
            .unwrap()
            .to_str()
            .unwrap(),
        "pid namespace is new"
    );
    assert_eq!(lines[4], "berth", "the joined uts namespace's hostname");
    b.assert_gone();
    a.ok(&["delete", "--force", &a.id]);
    a.assert_gone();
}

#[test]
fn cgroups_path_absolute_and_relative() {
    let b = Bundle::new("cgabs", &["cat", "/proc/self/cgroup"]);
    let abs = format!("/berth-test-abs-{}/{}", std::process::id(), b.id);
    b.edit(|c| c["linux"]["cgroupsPath"] = json!(abs));
    b.create();
    let mem = Path::new("/sys/fs/cgroup/memory").join(abs.trim_start_matches('/'));
    assert!(mem.join("cgroup.procs").exists(), "{}", mem.display());
    b.ok(&["start", &b.id]);
    b.wait_status("stopped");
    b.ok(&["delete", &b.id]);
    assert!(
        !mem.exists() && !mem.parent().unwrap().exists(),
        "cgroup (or the parent it created) left behind"
    );

    // Relative: under the caller's own cgroup.
    let b = Bundle::new("cgrel", &["true"]);
    b.edit(|c| c["linux"]["cgroupsPath"] = json!(format!("rel-{}", b.id)));
    b.create();
    let own = fs::read_to_string("/proc/self/cgroup").unwrap();
    let own_mem = own
        .lines()
        .find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_string()))
        .unwrap();
    let dir = Path::new("/sys/fs/cgroup/memory")
        .join(own_mem.trim_start_matches('/'))
        .join(format!("rel-{}", b.id));
    assert!(dir.exists(), "{}", dir.display());
    b.ok(&["delete", "--force", &b.id]);
    assert!(!dir.exists());
}

#[test]
fn log_format_json_records_errors() {
    let b = Bundle::new("log", &["true"]);
    b.edit(|c| c["process"]["cwd"] = json!("relative"));
    let log = b.dir.path().join("runtime.log");
    let bundle = b.path();
    let out = b.berth(&[
        "--log",
        log.to_str().unwrap(),
        "--log-format",
        "json",
        "run",
        "--bundle",
        bundle.to_str().unwrap(),
        &b.id,
    ]);
    assert!(!out.status.success());
    let text = fs::read_to_string(&log).unwrap();
    let entry: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(entry["level"], "error");
    assert!(
        entry["msg"].as_str().unwrap().contains("process.cwd"),
        "{entry}"
    );
    assert!(entry["time"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn process_settings_rlimits_oom_sysctl_domainname_umask() {
    let b = Bundle::new("procset", &["sh", "-c", "ulimit -n; cat /proc/self/oom_score_adj; cat /proc/sys/net/ipv4/ip_forward; cat /proc/sys/kernel/domainname; umask; id -G"]);
    b.edit(|c| {
        c["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "soft": 123, "hard": 456}]);
        c["process"]["oomScoreAdj"] = json!(321);
        c["process"]["user"] =
            json!({"uid": 0, "gid": 0, "umask": 0o27, "additionalGids": [10, 20]});
        c["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1"});
        c["domainname"] = json!("example.test");
    });
    let out = b.run_ok();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        ["123", "321", "1", "example.test", "0027", "0 10 20"],
        "{out}"
    );
    // The host's own setting is untouched by the container's network namespace.
    assert_ne!(
        fs::read_to_string("/proc/sys/net/ipv4/ip_forward").ok(),
        None
    );
}

#[test]
fn device_cgroup_denies_what_it_does_not_allow() {
    // /dev/fuse is created in the container but not allowed by the device rules; /dev/null is.
    let b = Bundle::new(
        "devices",
        &[
            "sh",
            "-c",
            "echo x > /dev/null && echo null-ok; cat /dev/fuse 2>&1; ls -l /dev/fuse",
        ],
    );
    b.edit(|c| {
        c["linux"]["devices"] =
            json!([{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 438}])
    });
    let out = b.run();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("null-ok"), "{stdout}");
    assert!(
        stdout.contains("Operation not permitted"),
        "open of a denied device did not fail: {stdout}"
    );
    assert!(
        stdout.contains("crw-rw-rw-") && stdout.contains("10,") && stdout.contains("229"),
        "{stdout}"
    );
}

#[test]
fn stats_report_memory_cpu_and_pids_of_a_running_container() {
    let b = Bundle::new(
        "stats",
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; sleep 30",
        ],
    );
    b.edit(|c| c["linux"]["resources"]["memory"] = json!({"limit": 64 << 20}));
    b.create();
    b.ok(&["start", &b.id]);
    std::thread::sleep(Duration::from_millis(300));
    let s: Value = serde_json::from_str(&b.ok(&["events", "--stats", &b.id])).unwrap();
    let d = &s["data"];
    assert!(d["memory_usage"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(d["memory_limit"].as_u64(), Some(64 << 20), "{s}");
    assert!(d["cpu_usage_ns"].as_u64().unwrap() > 0, "{s}");
    assert!(d["pids_current"].as_u64().unwrap() >= 1, "{s}");
    let table = b.ok(&["ps", &b.id]);
    assert!(
        table.starts_with("UID") && table.contains("sleep 30"),
        "{table}"
    );
    let list = b.ok(&["list"]);
    assert!(
        list.starts_with("ID") && list.contains(&b.id) && list.contains("running"),
        "{list}"
    );
    b.ok(&["kill", &b.id, "9"]);
    b.wait_status("stopped");
    b.ok(&["delete", &b.id]);
    b.assert_gone();
}

/// Runs `command` under script(1), which gives it a real terminal, feeding `input` after a pause.
fn in_terminal(command: &str, input: &str) -> Output {
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c", command, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script(1) from Debian's bsdutils");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_string();
    let feeder = std::thread::spawn(move || {
        use std::io::Write;
        std::thread::sleep(Duration::from_millis(700));
        let _ = stdin.write_all(input.as_bytes());
        std::thread::sleep(Duration::from_millis(700));
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    out
}

#[test]
fn foreground_run_and_exec_proxy_a_terminal() {
    let b = Bundle::new("fgtty", &["sh", "-c", "tty; read x; echo got:$x; exit 3"]);
    b.edit(|c| c["process"]["terminal"] = json!(true));
    let cmd = format!(
        "{BERTH} runtime --root {} run --bundle {} {}",
        b.root().display(),
        b.path().display(),
        b.id
    );
    let out = in_terminal(&cmd, "hello\n");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("/dev/pts/0") && text.contains("got:hello"),
        "{text:?}"
    );
    assert_eq!(out.status.code(), Some(3), "{text:?}");
    b.assert_gone();

    let b = Bundle::new("exectty", &["sleep", "30"]);
    b.edit(|c| c["process"]["terminal"] = json!(false));
    b.create();
    b.ok(&["start", &b.id]);
    let cmd = format!(
        "{BERTH} runtime --root {} exec --tty {} sh -c 'tty; read x; echo exec-got:$x'",
        b.root().display(),
        b.id
    );
    let out = in_terminal(&cmd, "there\n");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("/dev/pts/") && text.contains("exec-got:there"),
        "{text:?}"
    );
    assert!(out.status.success());
}

#[test]
fn berth_runtime_symlink_speaks_runcs_command_line() {
    let b = Bundle::new("multicall", &["echo", "hi"]);
    let link = b.dir.path().join("berth-runtime");
    std::os::unix::fs::symlink(BERTH, &link).unwrap();
    let out = Command::new(&link)
        .args([
            "--root",
            b.root().to_str().unwrap(),
            "--log-format",
            "json",
            "run",
            "--bundle",
            b.path().to_str().unwrap(),
            &b.id,
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
}

#[test]
fn signal_dispositions_and_stdio_reach_the_process_as_expected() {
    // The runtime ignores SIGPIPE (Rust does); the container's program must not inherit that.
    let b = Bundle::new(
        "sigs",
        &[
            "sh",
            "-c",
            "grep -E 'SigIgn|SigBlk' /proc/self/status; echo to-stdout > /dev/stdout",
        ],
    );
    b.edit(|c| c["process"]["user"] = json!({"uid": 1000, "gid": 1000}));
    let out = b.run_ok();
    for line in out.lines().filter(|l| l.starts_with("Sig")) {
        assert!(line.ends_with("0000000000000000"), "{line}");
    }
    // A non-root process can reopen its stdout (it was handed over, as runc does).
    assert!(out.contains("to-stdout"), "{out}");
}

#[test]
fn no_device_rules_means_only_the_default_devices() {
    let b = Bundle::new(
        "nodevrules",
        &[
            "sh",
            "-c",
            "echo x > /dev/null && echo null-ok; cat /dev/fuse 2>&1",
        ],
    );
    b.edit(|c| {
        c["linux"].as_object_mut().unwrap().remove("resources");
        c["linux"]["devices"] =
            json!([{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 438}]);
    });
    let out = String::from_utf8(b.run().stdout).unwrap();
    assert!(
        out.contains("null-ok") && out.contains("Operation not permitted"),
        "{out}"
    );
}

#[test]
fn hooks_that_flood_stderr_or_ignore_stdin_fail_cleanly() {
    let b = Bundle::new("floodhook", &["true"]);
    b.edit(|c| {
        c["annotations"] = json!({"big": "x".repeat(200_000)});
        c["hooks"] = json!({"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", "head -c 300000 /dev/zero | tr '\\\\0' e >&2; exit 4"], "timeout": 20}]});
    });
    let out = b.run();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("exited with status 4"),
        "{}",
        &err[..err.len().min(300)]
    );
    assert!(
        err.len() < 20_000,
        "the hook's whole stderr was copied into the error ({} bytes)",
        err.len()
    );
    b.assert_gone();
}

#[test]
fn joins_another_containers_user_namespace_by_path() {
    let a = Bundle::new("userns-a", &["sleep", "30"]);
    a.edit(|c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "user"}));
        c["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 200000, "size": 65536}]);
        c["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 200000, "size": 65536}]);
        c["mounts"]
            .as_array_mut()
            .unwrap()
            .retain(|m| m["type"] != "cgroup");
    });
    a.create();
    let pid = a.state()["pid"].as_i64().unwrap();
    let b = Bundle::new(
        "userns-b",
        &[
            "sh",
            "-c",
            "cat /proc/self/uid_map; id -u; ls -ln /dev/null",
        ],
    );
    b.edit(|c| {
        let ns = c["linux"]["namespaces"].as_array_mut().unwrap();
        ns.push(json!({"type": "user", "path": format!("/proc/{pid}/ns/user")}));
        for n in ns.iter_mut().filter(|n| n["type"] == "network") {
            n["path"] = json!(format!("/proc/{pid}/ns/net"));
        }
        c["mounts"]
            .as_array_mut()
            .unwrap()
            .retain(|m| m["type"] != "cgroup");
    });
    let out = b.run_ok();
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(&words[..4], ["0", "200000", "65536", "0"], "{out}");
    b.assert_gone();
    a.ok(&["delete", "--force", &a.id]);
    a.assert_gone();
}

#[test]
fn a_created_container_can_be_killed_and_deleted() {
    let b = Bundle::new("killcreated", &["sleep", "30"]);
    b.create();
    assert_eq!(b.state()["status"], "created");
    b.ok(&["kill", &b.id, "SIGKILL"]);
    b.wait_status("stopped");
    b.ok(&["delete", &b.id]);
    b.assert_gone();
}

#[test]
fn detached_exec_reports_a_failed_execve() {
    let b = Bundle::new("execfail", &["sleep", "30"]);
    fs::write(b.rootfs().join("bad"), "#!/no/such/interpreter\n").unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut fs::metadata(b.rootfs().join("bad")).unwrap().permissions(),
        0o755,
    );
    fs::set_permissions(
        b.rootfs().join("bad"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    b.create();
    b.ok(&["start", &b.id]);
    let out = b.berth(&["exec", "--detach", &b.id, "/bad"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("exec /bad"), "{err}");
    let out = b.berth(&["exec", "--detach", &b.id, "/no/such/program"]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("process.args[0]")
    );
    assert_eq!(
        serde_json::from_str::<Vec<i64>>(&b.ok(&["ps", "--format", "json", &b.id]))
            .unwrap()
            .len(),
        1,
        "a failed exec left a process"
    );
}

#[test]
fn without_a_cgroup_namespace_the_container_sees_only_its_own_cgroup() {
    let b = Bundle::new("owncg", &["sh", "-c", "cat /sys/fs/cgroup/memory/memory.limit_in_bytes; ls /sys/fs/cgroup/memory | grep -c -e berth -e process_api; echo x > /sys/fs/cgroup/memory/memory.limit_in_bytes || echo ro"]);
    b.edit(|c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .retain(|n| n["type"] != "cgroup");
        c["linux"]["resources"]["memory"] = json!({"limit": 64 << 20});
    });
    let out = String::from_utf8(b.run().stdout).unwrap();
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["67108864", "0", "ro"],
        "{out}"
    );
    b.assert_gone();
}

#[test]
fn rshared_root_propagation_carries_container_mounts_to_the_host() {
    // Kubernetes' Bidirectional mount propagation: a mount made by the container inside a
    // shared volume appears on the host.
    let b = Bundle::new(
        "rshared",
        &[
            "sh",
            "-c",
            "mkdir -p /shared/sub && mount -t tmpfs inner /shared/sub && echo mounted",
        ],
    );
    let host = b.dir.path().join("shared");
    fs::create_dir(&host).unwrap();
    let sh = |cmd: String| {
        assert!(
            Command::new("sh")
                .args(["-c", &cmd])
                .status()
                .unwrap()
                .success(),
            "{cmd}"
        )
    };
    sh(format!(
        "mount --bind {0} {0} && mount --make-shared {0}",
        host.display()
    ));
    let caps = ["CAP_SYS_ADMIN", "CAP_KILL"];
    b.edit(|c| {
        c["linux"]["rootfsPropagation"] = json!("rshared");
        c["process"]["capabilities"] = json!({"bounding": caps, "effective": caps, "permitted": caps});
        c["mounts"].as_array_mut().unwrap().push(json!({"destination": "/shared", "type": "bind", "source": host, "options": ["rbind", "rshared"]}));
    });
    let out = b.run();
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let sub = host.join("sub");
    let propagated = mounts
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(sub.to_str().unwrap()));
    let rootfs_leaked = mounts.contains(b.rootfs().to_str().unwrap());
    sh(format!("umount -R {}", host.display()));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("mounted"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(propagated, "the container's mount did not reach the host");
    assert!(
        !rootfs_leaked,
        "the container's root file system mounts reached the host"
    );
}

#[test]
fn pause_freezes_and_resume_thaws() {
    let b = Bundle::new(
        "pause",
        &[
            "sh",
            "-c",
            "i=0; while :; do i=$((i+1)); echo $i > /out/count; done",
        ],
    );
    let out = b.dir.path().join("out");
    fs::create_dir(&out).unwrap();
    b.edit(|c| {
        c["mounts"].as_array_mut().unwrap().push(
            json!({"destination": "/out", "type": "bind", "source": out, "options": ["bind"]}),
        )
    });
    b.create();
    b.ok(&["start", &b.id]);
    let count = || {
        fs::read_to_string(out.join("count"))
            .unwrap_or_default()
            .trim()
            .parse::<u64>()
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while count() == 0 {
        assert!(Instant::now() < deadline, "the counter never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    b.ok(&["pause", &b.id]);
    assert_eq!(b.state()["status"], "paused");
    let frozen = count();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(count(), frozen, "the container kept running while paused");
    let exec = b.berth(&["exec", &b.id, "true"]);
    assert!(!exec.status.success() && String::from_utf8_lossy(&exec.stderr).contains("paused"));
    let delete = b.berth(&["delete", &b.id]);
    assert!(!delete.status.success() && String::from_utf8_lossy(&delete.stderr).contains("paused"));
    b.ok(&["resume", &b.id]);
    assert_eq!(b.state()["status"], "running");
    let deadline = Instant::now() + Duration::from_secs(10);
    while count() == frozen {
        assert!(Instant::now() < deadline, "the container did not resume");
        std::thread::sleep(Duration::from_millis(10));
    }
    b.ok(&["pause", &b.id]);
    b.ok(&["delete", "--force", &b.id]);
    b.assert_gone();
}

#[test]
fn pid_file_preserve_fds_and_exec_process_json() {
    use std::os::unix::process::CommandExt;
    // --preserve-fds 1 passes fd 3 into the container; nothing above it gets there.
    let b = Bundle::new(
        "flags",
        &[
            "sh",
            "-c",
            "cat <&3; ls /proc/self/fd | sort -n | tr '\\n' ' '",
        ],
    );
    let shared = b.dir.path().join("shared.txt");
    fs::write(&shared, "through fd 3\n").unwrap();
    let f3 = fs::File::open(&shared).unwrap();
    let f9 = fs::File::open(&shared).unwrap();
    let (raw3, raw9) = (
        std::os::fd::AsRawFd::as_raw_fd(&f3),
        std::os::fd::AsRawFd::as_raw_fd(&f9),
    );
    let pid_file = b.dir.path().join("pidfile");
    let mut cmd = b.command(
        Path::new(BERTH),
        "run",
        &[
            "--preserve-fds",
            "1",
            "--pid-file",
            pid_file.to_str().unwrap(),
        ],
    );
    // SAFETY: dup2 in the child before exec, on fds that exist; no allocation.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself keeps close-on-exec: clear it explicitly.
            if libc::dup2(raw3, 3) < 0
                || libc::dup2(raw9, 9) < 0
                || libc::fcntl(3, libc::F_SETFD, 0) < 0
                || libc::fcntl(9, libc::F_SETFD, 0) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("through fd 3\n"), "{stdout}");
    // ls's own fds: stdio, the preserved 3 and its directory handle; never the caller's 9.
    let fds: Vec<&str> = stdout.lines().nth(1).unwrap().split_whitespace().collect();
    assert!(
        fds.contains(&"3") && !fds.contains(&"9"),
        "fds in the container: {fds:?}"
    );
    assert!(
        fs::read_to_string(&pid_file)
            .unwrap()
            .parse::<i32>()
            .unwrap()
            > 1
    );

    // --pid-file on create names the init; exec --process takes a whole process.json.
    let b = Bundle::new("procjson", &["sleep", "30"]);
    let pid_file = b.dir.path().join("init.pid");
    let status = b
        .command(
            Path::new(BERTH),
            "create",
            &["--pid-file", pid_file.to_str().unwrap()],
        )
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        fs::read_to_string(&pid_file).unwrap(),
        b.state()["pid"].to_string()
    );
    b.ok(&["start", &b.id]);
    let process = b.dir.path().join("process.json");
    fs::write(&process, r#"{"user":{"uid":1000,"gid":1000},"args":["sh","-c","id -u; echo $GREETING; pwd"],"env":["GREETING=hello","PATH=/bin"],"cwd":"/tmp"}"#).unwrap();
    let out = b.ok(&["exec", "--process", process.to_str().unwrap(), &b.id]);
    assert_eq!(out, "1000\nhello\n/tmp\n");
    fs::write(
        &process,
        r#"{"user":{"uid":0,"gid":0},"args":["true"],"cwd":"/","bogus":true}"#,
    )
    .unwrap();
    let out = b.berth(&[
        "--strict-spec",
        "exec",
        "--process",
        process.to_str().unwrap(),
        &b.id,
    ]);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("unknown field `bogus`")
    );
    // Without --strict-spec the unknown property is ignored, as the runtime spec says.
    let out = b.berth(&["exec", "--process", process.to_str().unwrap(), &b.id]);
    assert!(out.status.success(), "{out:?}");
}

/// The OCI runtime spec: a runtime MUST NOT error on unknown properties, and ignores them;
/// berth names each in its log, and refuses them with --strict-spec (issue 22).
#[test]
fn unknown_properties_are_ignored_and_named_in_the_log() {
    let b = Bundle::new("unknown", &["sh", "-c", "echo ran"]);
    b.edit(|c| {
        c["process"]["futureSetting"] = json!({"x": 1});
        c["linux"]["someNewThing"] = json!(true);
    });
    let (out, log) = b.run_logged();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ran\n");
    let text = fs::read_to_string(&log).unwrap();
    for field in ["process.futureSetting", "linux.someNewThing"] {
        assert!(text.contains(field), "the log names {field}: {text}");
    }
    let bundle = b.path();
    let out = b.berth(&[
        "--strict-spec",
        "run",
        "--bundle",
        bundle.to_str().unwrap(),
        &b.id,
    ]);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("unknown field `linux.someNewThing`"),
        "{out:?}"
    );
    b.assert_gone();
}

#[test]
fn default_devices_and_dev_symlinks() {
    let b = Bundle::new("devs", &["sh", "-c", "for l in fd stdin stdout stderr ptmx; do echo $l=$(readlink /dev/$l); done; ls -l /dev/null /dev/zero /dev/full /dev/random /dev/urandom /dev/tty | cut -c1-10 | sort -u; head -c 4 /dev/zero | wc -c"]);
    let out = b.run_ok();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        &lines[..5],
        [
            "fd=/proc/self/fd",
            "stdin=/proc/self/fd/0",
            "stdout=/proc/self/fd/1",
            "stderr=/proc/self/fd/2",
            "ptmx=pts/ptmx"
        ],
        "{out}"
    );
    assert_eq!(
        lines[5], "crw-rw-rw-",
        "default devices are 0666 character devices: {out}"
    );
    assert_eq!(lines[6].trim(), "4");
}

#[test]
fn cpu_cpuset_and_memory_resources_reach_the_cgroup() {
    let b = Bundle::new("resources", &["sh", "-c", "cd /sys/fs/cgroup; cat cpu/cpu.shares cpu/cpu.cfs_quota_us cpu/cpu.cfs_period_us cpuset/cpuset.cpus memory/memory.soft_limit_in_bytes memory/memory.limit_in_bytes memory/memory.memsw.limit_in_bytes pids/pids.max"]);
    b.edit(|c| {
        c["linux"]["resources"]["cpu"] =
            json!({"shares": 512, "quota": 50000, "period": 100000, "cpus": "0"});
        c["linux"]["resources"]["memory"] =
            json!({"limit": 96 << 20, "reservation": 32 << 20, "swap": 128 << 20});
        c["linux"]["resources"]["pids"] = json!({"limit": 99});
    });
    let out = b.run_ok();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "512",
            "50000",
            "100000",
            "0",
            &(32u64 << 20).to_string(),
            &(96u64 << 20).to_string(),
            &(128u64 << 20).to_string(),
            "99"
        ],
        "{out}"
    );
}

#[test]
fn update_changes_a_running_containers_resources() {
    let b = Bundle::new("update", &["sleep", "30"]);
    b.edit(|c| {
        c["linux"]["resources"]["memory"] = json!({"limit": 64 << 20});
        c["linux"]["resources"]["pids"] = json!({"limit": 50});
    });
    b.create();
    b.ok(&["start", &b.id]);
    let cg = |controller: &str, file: &str| {
        fs::read_to_string(
            Path::new("/sys/fs/cgroup")
                .join(controller)
                .join("berth")
                .join(&b.id)
                .join(file),
        )
        .unwrap()
        .trim()
        .to_string()
    };
    assert_eq!(
        cg("memory", "memory.limit_in_bytes"),
        (64u64 << 20).to_string()
    );
    b.ok(&[
        "update",
        "--memory",
        "32m",
        "--pids-limit",
        "10",
        "--cpu-quota",
        "20000",
        "--cpu-period",
        "100000",
        &b.id,
    ]);
    assert_eq!(
        cg("memory", "memory.limit_in_bytes"),
        (32u64 << 20).to_string()
    );
    assert_eq!(cg("pids", "pids.max"), "10");
    assert_eq!(cg("cpu", "cpu.cfs_quota_us"), "20000");
    // A resources document works too (runc update -r).
    let resources = b.dir.path().join("resources.json");
    fs::write(&resources, r#"{"memory": {"limit": 50331648}}"#).unwrap();
    b.ok(&["update", "-r", resources.to_str().unwrap(), &b.id]);
    assert_eq!(cg("memory", "memory.limit_in_bytes"), "50331648");
    assert_eq!(
        cg("pids", "pids.max"),
        "10",
        "fields the update leaves out keep their values"
    );
    let bad = b.berth(&["update", "--memory", "lots", &b.id]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("--memory"));
    b.ok(&["kill", &b.id, "KILL"]);
    b.wait_status("stopped");
    let out = b.berth(&["update", "--memory", "16m", &b.id]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not running"));
}

/// `runc spec`'s own config.json (what countless tutorials start from) runs: its ambient
/// capabilities are not inheritable, which the kernel cannot raise, so they are skipped and
/// the log says which (issue 22).
#[test]
fn runc_spec_s_default_config_runs_and_the_log_names_skipped_ambient_capabilities() {
    let b = Bundle::new("runcspec", &["true"]);
    fs::remove_file(b.path().join("config.json")).unwrap();
    let spec = Command::new("runc")
        .args(["spec", "--bundle"])
        .arg(b.path())
        .output()
        .expect("runc (scripts/test installs docker.io, which brings it)");
    assert!(spec.status.success(), "{spec:?}");
    b.edit(|c| {
        c["process"]["terminal"] = json!(false);
        c["process"]["args"] = json!(["sh", "-c", "grep CapAmb /proc/self/status; echo ran"]);
        assert!(
            c["process"]["capabilities"]["inheritable"].is_null()
                || !c["process"]["capabilities"]["inheritable"]
                    .as_array()
                    .unwrap()
                    .contains(&json!("CAP_KILL"))
        );
    });
    let (out, log) = b.run_logged();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.ends_with("ran\n"),
        "{out:?}\n{}",
        fs::read_to_string(&log).unwrap_or_default()
    );
    // Nothing ambient was raised.
    assert!(stdout.contains("CapAmb:\t0000000000000000"), "{stdout}");
    let text = fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("CAP_KILL") && text.contains("skipped"),
        "the log names the skipped capabilities: {text}"
    );
}

/// A resource the host cannot apply is an error naming it, as the runtime spec says, not a
/// silent skip: `linux.resources.network` needs the cgroup v1 net_cls controller, which
/// cgroup v2 lacks and v1 hosts often leave unmounted (issue 22). Where it is mounted, the
/// class is set.
#[test]
fn a_resource_the_host_cannot_apply_is_refused_naming_it() {
    let b = Bundle::new("netcls", &["cat", "/proc/self/cgroup"]);
    b.edit(|c| c["linux"]["resources"]["network"] = json!({"classID": 1048577}));
    let mounted = fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.contains(" - cgroup ") && l.split(',').any(|o| o.trim() == "net_cls"));
    let out = b.run();
    let err = String::from_utf8_lossy(&out.stderr);
    if mounted {
        assert!(out.status.success(), "{err}");
    } else {
        assert!(
            !out.status.success(),
            "a class that cannot be set was accepted"
        );
        assert!(
            err.contains("linux.resources.network.classID"),
            "the error names the field: {err}"
        );
        b.assert_gone();
    }
}

/// The mount table lines (of `/proc/<who>/mountinfo`) that name `path`.
fn mounts_naming(who: &str, path: &Path) -> Vec<String> {
    fs::read_to_string(format!("/proc/{who}/mountinfo"))
        .unwrap()
        .lines()
        .filter(|l| l.contains(path.to_str().unwrap()))
        .map(str::to_string)
        .collect()
}

/// The propagation fields (`shared:N`, `master:N`) of the host's `/`.
fn root_propagation() -> String {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/"))
        .unwrap();
    let fields: Vec<&str> = line.split(' ').collect();
    let end = fields.iter().position(|f| *f == "-").unwrap();
    fields[6..end].join(" ")
}

#[test]
fn without_a_mount_namespace_the_container_is_chrooted_and_delete_unmounts_everything() {
    let b = Bundle::new("hostmnt", &["sleep", "1000"]);
    let victim = b.dir.path().join("victim");
    fs::create_dir(&victim).unwrap();
    std::os::unix::fs::symlink(&victim, b.rootfs().join("escape")).unwrap();
    fs::write(b.rootfs().join("marker"), "rootfs\n").unwrap();
    b.edit(|c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .retain(|n| n["type"] != "mount");
        c["mounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"destination": "/escape", "type": "tmpfs", "source": "tmpfs"}));
    });
    let propagation = root_propagation();
    b.create();
    let pid = b.state()["pid"].as_i64().unwrap();
    b.ok(&["start", &b.id]);
    b.wait_status("running");
    assert_eq!(
        fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap(),
        fs::read_link("/proc/self/ns/mnt").unwrap(),
        "the container shares the runtime's mount namespace"
    );
    // Its mounts are in the host's table, under the rootfs only.
    let ours = mounts_naming("self", &b.rootfs());
    assert!(ours.len() >= 5, "{ours:#?}");
    assert!(
        mounts_naming("self", &victim)
            .iter()
            .all(|l| l.contains(b.rootfs().to_str().unwrap())),
        "a mount followed the rootfs's symlink to the host"
    );
    assert_eq!(
        root_propagation(),
        propagation,
        "the host's / propagation changed"
    );
    // The process and an exec'd one see the rootfs as /, with the tmpfs where the symlink
    // pointed, inside the rootfs.
    let out = b.ok(&[
        "exec",
        &b.id,
        "sh",
        "-c",
        "cat /marker; stat -f -c %T /escape; readlink /proc/1/root",
    ]);
    assert_eq!(out, "rootfs\ntmpfs\n/\n");
    assert_eq!(
        fs::read_link(format!("/proc/{pid}/root")).unwrap(),
        fs::canonicalize(b.rootfs()).unwrap()
    );
    b.ok(&["delete", "--force", &b.id]);
    b.assert_gone();
    assert_eq!(mounts_naming("self", &victim), Vec::<String>::new());
    assert_eq!(root_propagation(), propagation);
    // Changing the root's propagation would change the host's: refused, nothing made.
    b.edit(|c| c["linux"]["rootfsPropagation"] = json!("rshared"));
    let err = b.create_err();
    assert!(err.contains("linux.rootfsPropagation"), "{err}");
    b.assert_gone();
}

#[test]
fn a_joined_mount_namespace_is_used_and_left_as_it_was() {
    let b = Bundle::new(
        "joinmnt",
        &["sh", "-c", "readlink /proc/self/ns/mnt; cat /shared/marker"],
    );
    let shared = b.rootfs().join("shared");
    fs::create_dir(&shared).unwrap();
    // A namespace of its own holding a mount the host does not have, kept by a process.
    let mut helper = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs joined {0} && echo in-namespace > {0}/marker && echo ready && exec sleep 1000",
            shared.display()
        ))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(helper.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "ready\n");
    let pid = helper.id().to_string();
    let theirs = mounts_naming(&pid, &b.rootfs());
    assert_eq!(theirs.len(), 1, "{theirs:#?}");
    b.edit(|c| {
        let ns = c["linux"]["namespaces"].as_array_mut().unwrap();
        for n in ns.iter_mut().filter(|n| n["type"] == "mount") {
            n["path"] = json!(format!("/proc/{pid}/ns/mnt"));
        }
    });
    let out = b.run_ok();
    assert_eq!(
        out,
        format!(
            "{}\nin-namespace\n",
            fs::read_link(format!("/proc/{pid}/ns/mnt"))
                .unwrap()
                .display()
        )
    );
    // The namespace has what it had before, the host nothing.
    assert_eq!(mounts_naming(&pid, &b.rootfs()), theirs);
    b.assert_gone();
    // A create that fails half-way through its mounts leaves that namespace as it was, too.
    b.edit(|c| {
        c["mounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"destination": "/late", "type": "nosuchfs", "source": "x"}));
    });
    let err = b.create_err();
    assert!(err.contains("mounts[") && err.contains("/late"), "{err}");
    assert_eq!(mounts_naming(&pid, &b.rootfs()), theirs);
    b.assert_gone();
    helper.kill().unwrap();
    helper.wait().unwrap();
}
