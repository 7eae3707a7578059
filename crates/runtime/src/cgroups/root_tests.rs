//! Tests against the real kernel: they make cgroups under /sys/fs/cgroup/*/berth-test-<random>
//! and need root. Run as non-root they fail, saying so.

use std::io::{BufRead, BufReader, Write as _};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use oci_spec::runtime::LinuxResources;

use super::devices_bpf::attached_count;
use super::*;

fn require_root() {
    let status = fs::read_to_string("/proc/self/status").expect("reading /proc/self/status");
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .expect("Uid line in /proc/self/status");
    assert_eq!(
        euid, "0",
        "this test needs root: it creates cgroups under /sys/fs/cgroup (run the suite as root)"
    );
}

fn unique_name() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "/berth-test-{}-{:08x}-{}",
        std::process::id(),
        nanos,
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// Kills what is left and removes the cgroup even when an assertion fails.
struct Guard {
    cg: Cgroup,
    children: Vec<Child>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = self.cg.kill_all(libc::SIGKILL);
        let _ = self.cg.delete();
    }
}

fn resources(json: &str) -> LinuxResources {
    serde_json::from_str(json).expect("resources JSON")
}

fn read(p: PathBuf) -> String {
    fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
        .trim()
        .to_string()
}

fn spawn_sleeper() -> Child {
    Command::new("sleep")
        .arg("60")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning sleep")
}

#[test]
fn root_lifecycle_limits_procs_stats_freeze_kill_delete() {
    require_root();
    let h = Hierarchy::detect().unwrap();
    let name = unique_name();
    let cg = Cgroup::new(&h, Some(&name), "unused").unwrap();
    let mut g = Guard {
        cg: cg.clone(),
        children: Vec::new(),
    };
    cg.create().unwrap();
    for p in cg.paths() {
        assert!(p.is_dir(), "{} was not created", p.display());
        assert!(p.ends_with(name.trim_start_matches('/')));
    }
    let r = resources(
        r#"{"memory":{"limit":67108864},"pids":{"limit":32},
            "cpu":{"shares":512,"quota":50000,"period":100000}}"#,
    );
    cg.apply(&r).unwrap();
    if cg.is_v2() {
        let d = cg.unified_path().unwrap();
        assert_eq!(read(d.join("memory.max")), "67108864");
        assert_eq!(read(d.join("pids.max")), "32");
        assert_eq!(read(d.join("cpu.max")), "50000 100000");
        assert_eq!(
            read(d.join("cpu.weight")),
            shares_to_weight(512).to_string()
        );
    } else {
        let mem = cg.v1_path("memory").expect("memory controller");
        assert_eq!(read(mem.join("memory.limit_in_bytes")), "67108864");
        let pids = cg.v1_path("pids").expect("pids controller");
        assert_eq!(read(pids.join("pids.max")), "32");
        let cpu = cg.v1_path("cpu").expect("cpu controller");
        assert_eq!(read(cpu.join("cpu.shares")), "512");
        assert_eq!(read(cpu.join("cpu.cfs_quota_us")), "50000");
        assert_eq!(read(cpu.join("cpu.cfs_period_us")), "100000");
    }

    // An update lowers the limit.
    cg.apply(&resources(r#"{"memory":{"limit":33554432}}"#))
        .unwrap();

    let child = spawn_sleeper();
    let pid = child.id() as i32;
    g.children.push(child);
    cg.add_process(pid).unwrap();
    assert_eq!(cg.procs().unwrap(), vec![pid]);
    let own = parse_proc_cgroup(&read(PathBuf::from(format!("/proc/{pid}/cgroup")))).unwrap();
    if cg.is_v2() {
        assert_eq!(own.unified.as_deref(), Some(name.as_str()));
    } else {
        assert_eq!(own.v1["memory"], name);
        assert_eq!(own.v1["pids"], name);
        if own.unified.is_some() && cg.unified_path().is_some() {
            assert_eq!(own.unified.as_deref(), Some(name.as_str()));
        }
    }

    let s = cg.stats().unwrap();
    assert_eq!(s.pids_current, Some(1), "{s:?}");
    assert_eq!(s.pids_limit, Some(32), "{s:?}");
    assert_eq!(s.memory_limit, Some(33554432), "{s:?}");
    assert!(s.memory_usage.is_some(), "{s:?}");
    assert!(s.cpu_usage_ns.is_some(), "{s:?}");
    assert!(s.cpu_periods.is_some(), "{s:?}");

    cg.freeze(true).unwrap();
    assert!(cg.is_frozen());
    cg.freeze(false).unwrap();
    assert!(!cg.is_frozen());

    // Deleting with a live process fails (after retrying), naming the directory.
    let e = cg.delete().unwrap_err().to_string();
    assert!(e.contains("busy"), "{e}");

    cg.kill_all(libc::SIGKILL).unwrap();
    let status = g.children[0].wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    g.children.clear();

    cg.delete().unwrap();
    for p in cg.paths() {
        assert!(!p.exists(), "{} still exists", p.display());
    }
    // Idempotent.
    cg.delete().unwrap();
    assert_eq!(cg.procs().unwrap(), Vec::<i32>::new());
}

#[test]
fn root_nested_path_removes_only_what_it_created() {
    require_root();
    let h = Hierarchy::detect().unwrap();
    let outer = unique_name();
    let cg = Cgroup::new(&h, Some(&format!("{outer}/mid/leaf")), "unused").unwrap();
    let _g = Guard {
        cg: cg.clone(),
        children: Vec::new(),
    };
    cg.create().unwrap();
    let leaf = cg.paths();
    cg.apply(&resources(r#"{"pids":{"limit":10}}"#)).unwrap();
    cg.delete().unwrap();
    for p in &leaf {
        assert!(!p.exists(), "{}", p.display());
        let outer_dir = p.parent().and_then(Path::parent).unwrap();
        assert!(!outer_dir.exists(), "{} left behind", outer_dir.display());
    }
}

#[test]
fn root_kill_all_with_sigterm_and_errors_name_the_field() {
    require_root();
    let h = Hierarchy::detect().unwrap();
    let cg = Cgroup::new(&h, Some(&unique_name()), "unused").unwrap();
    let mut g = Guard {
        cg: cg.clone(),
        children: Vec::new(),
    };
    cg.create().unwrap();
    for _ in 0..3 {
        let c = spawn_sleeper();
        cg.add_process(c.id() as i32).unwrap();
        g.children.push(c);
    }
    assert_eq!(cg.procs().unwrap().len(), 3);
    cg.kill_all(libc::SIGTERM).unwrap();
    for c in &mut g.children {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(c.wait().unwrap().signal(), Some(libc::SIGTERM));
    }
    g.children.clear();
    assert!(!cg.is_frozen(), "kill_all must leave the cgroup thawed");

    // The kernel's own refusal is reported with the OCI field and the file.
    let e = cg
        .apply(&resources(r#"{"cpu":{"cpus":"100000"}}"#))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("linux.resources.cpu.cpus: writing 100000 to cpuset.cpus: "),
        "{e}"
    );
    cg.delete().unwrap();
}

#[test]
fn root_memory_and_swap_updates_in_both_directions() {
    require_root();
    let h = Hierarchy::detect().unwrap();
    let cg = Cgroup::new(&h, Some(&unique_name()), "unused").unwrap();
    let _g = Guard {
        cg: cg.clone(),
        children: Vec::new(),
    };
    cg.create().unwrap();
    let (dir, limit_file, swap_file) = if cg.is_v2() {
        let d = cg.unified_path().unwrap().to_path_buf();
        (d, "memory.max", "memory.swap.max")
    } else {
        let d = cg
            .v1_path("memory")
            .expect("memory controller")
            .to_path_buf();
        (d, "memory.limit_in_bytes", "memory.memsw.limit_in_bytes")
    };
    let has_swap = dir.join(swap_file).exists();
    const M: i64 = 1 << 20;
    // Set, raise well above the old memory+swap, lower well below the old limit, unlimit.
    for (limit, swap) in [
        (64 * M, 128 * M),
        (512 * M, 1024 * M),
        (16 * M, 32 * M),
        (-1, -1),
    ] {
        let json = if has_swap {
            format!(r#"{{"memory":{{"limit":{limit},"swap":{swap}}}}}"#)
        } else {
            format!(r#"{{"memory":{{"limit":{limit}}}}}"#)
        };
        cg.apply(&resources(&json))
            .unwrap_or_else(|e| panic!("{json}: {e}"));
        let got_limit = read(dir.join(limit_file));
        if limit == -1 {
            assert!(got_limit == "max" || got_limit.parse::<u64>().unwrap() > 1 << 62);
        } else {
            assert_eq!(got_limit, limit.to_string());
        }
        if has_swap && limit != -1 {
            let want = if cg.is_v2() { swap - limit } else { swap };
            assert_eq!(read(dir.join(swap_file)), want.to_string(), "{json}");
        }
    }
    // Validation happens before anything is written.
    let e = cg
        .apply(&resources(r#"{"memory":{"limit":2097152,"swap":1048576}}"#))
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "linux.resources.memory.swap: memory+swap (1048576) must be >= memory limit (2097152)"
    );
    cg.delete().unwrap();
}

#[test]
fn root_hugepage_limits_go_where_hugetlb_is() {
    require_root();
    let h = Hierarchy::detect().unwrap();
    let cg = Cgroup::new(&h, Some(&unique_name()), "unused").unwrap();
    let _g = Guard {
        cg: cg.clone(),
        children: Vec::new(),
    };
    cg.create().unwrap();
    let r = resources(r#"{"hugepageLimits":[{"pageSize":"2MB","limit":4194304}]}"#);
    let v1_dir = cg.v1_path("hugetlb").map(Path::to_path_buf);
    let unified_dir = cg
        .unified_path()
        .filter(|d| v2::has_controller(d, "hugetlb"))
        .map(Path::to_path_buf);
    match (v1_dir, unified_dir) {
        (Some(d), _) if !cg.is_v2() => {
            cg.apply(&r).unwrap();
            assert_eq!(read(d.join("hugetlb.2MB.limit_in_bytes")), "4194304");
        }
        (_, Some(d)) => {
            // Pure v2, or a hybrid host whose hugetlb controller lives in cgroup2 (as here).
            cg.apply(&r).unwrap();
            assert_eq!(read(d.join("hugetlb.2MB.max")), "4194304");
        }
        _ => {
            let e = cg.apply(&r).unwrap_err().to_string();
            assert!(e.starts_with("linux.resources.hugepageLimits: "), "{e}");
        }
    }
    cg.delete().unwrap();
}

#[test]
fn root_kernel_verifier_accepts_every_generated_program_shape() {
    require_root();
    use super::devices_bpf::tests::{parse_rules, RULE_SETS};
    use super::devices_bpf::{device_filter_program, load};
    let mut sets: Vec<String> = RULE_SETS.iter().map(|s| s.to_string()).collect();
    // A long list (a few thousand instructions).
    let one = r#"{"allow":true,"type":"c","major":1,"minor":3,"access":"rw"}"#;
    sets.push(format!("[{}]", vec![one; 300].join(",")));
    for json in &sets {
        let prog = device_filter_program(&parse_rules(json)).unwrap();
        if let Err(e) = load(&prog, Path::new("/test")) {
            panic!("{json}: {e}");
        }
    }
}

/// Where the eBPF device filter can be tried: the unified hierarchy (pure v2, or hybrid's).
fn unified_hierarchy(h: &Hierarchy) -> Option<Hierarchy> {
    match h {
        Hierarchy::V2 { .. } => Some(h.clone()),
        Hierarchy::V1 { unified, .. } => unified.as_ref().map(|m| Hierarchy::V2 {
            root: m.mountpoint.clone(),
            mount_root: m.root.clone(),
        }),
    }
}

/// Starts `sh` in the cgroup and reports which of /dev/null and /dev/zero it could open.
fn probe_devices(cg: &Cgroup, g: &mut Guard) -> String {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(
            "read go; \
             if (exec 3>/dev/null); then echo null-ok; else echo null-denied; fi; \
             if (exec 3</dev/zero); then echo zero-ok; else echo zero-denied; fi",
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning sh");
    cg.add_process(child.id() as i32).unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"go\n").unwrap();
    drop(stdin);
    let out = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map(|l| l.unwrap())
        .collect::<Vec<_>>()
        .join(" ");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let _ = &g.children;
    out
}

#[test]
fn root_device_rules_are_enforced() {
    require_root();
    let h = Hierarchy::detect().unwrap();
    let cg = Cgroup::new(&h, Some(&unique_name()), "unused").unwrap();
    let mut g = Guard {
        cg: cg.clone(),
        children: Vec::new(),
    };
    cg.create().unwrap();
    // Deny everything but /dev/null (c 1:3); the shell itself needs no device.
    let rules = r#"{"devices":[{"allow":false,"access":"rwm"},
        {"allow":true,"type":"c","major":1,"minor":3,"access":"rwm"}]}"#;
    cg.apply(&resources(rules)).unwrap();
    if let Some(d) = cg.v1_path("devices") {
        assert_eq!(read(d.join("devices.list")), "c 1:3 rwm");
    }
    assert_eq!(probe_devices(&cg, &mut g), "null-ok zero-denied");
    cg.delete().unwrap();
}

#[test]
fn root_ebpf_device_filter_alone_in_unified_hierarchy() {
    require_root();
    let h = Hierarchy::detect().unwrap();
    let Some(u) = unified_hierarchy(&h) else {
        eprintln!("pure cgroup v1 host: no unified hierarchy, so no eBPF device filter to test");
        return;
    };
    // A cgroup in the unified hierarchy only: the v1 devices controller (if any) allows all, so
    // whatever is denied here is denied by the eBPF program.
    let cg = Cgroup::new(&u, Some(&unique_name()), "unused").unwrap();
    let mut g = Guard {
        cg: cg.clone(),
        children: Vec::new(),
    };
    cg.create().unwrap();
    let dir = cg.unified_path().unwrap().to_path_buf();
    let deny_zero = r#"{"devices":[{"allow":true,"access":"rwm"},
        {"allow":false,"type":"c","major":1,"minor":5,"access":"rwm"}]}"#;
    cg.apply(&resources(deny_zero)).unwrap();
    assert_eq!(attached_count(&dir).unwrap(), 1);
    assert_eq!(probe_devices(&cg, &mut g), "null-ok zero-denied");

    // Updating replaces the program instead of stacking a second one.
    let only_zero = r#"{"devices":[{"allow":true,"type":"c","major":1,"minor":5,"access":"rw"}]}"#;
    cg.apply(&resources(only_zero)).unwrap();
    assert_eq!(attached_count(&dir).unwrap(), 1);
    assert_eq!(probe_devices(&cg, &mut g), "null-denied zero-ok");

    // The v2 freezer and cgroup.kill on a live process.
    let c = spawn_sleeper();
    cg.add_process(c.id() as i32).unwrap();
    g.children.push(c);
    cg.freeze(true).unwrap();
    assert_eq!(read(dir.join("cgroup.freeze")), "1");
    cg.freeze(false).unwrap();
    cg.kill_all(libc::SIGKILL).unwrap();
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(g.children[0].wait().unwrap().signal(), Some(libc::SIGKILL));
    }
    g.children.clear();
    cg.delete().unwrap();
    assert!(!dir.exists());
}
