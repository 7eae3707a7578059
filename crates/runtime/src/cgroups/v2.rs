//! cgroup v2: OCI resources → control file writes, enabling controllers, cgroup.freeze.
//!
//! Ignored on v2 (no such knob): memory.kernel, memory.kernelTCP, memory.swappiness,
//! memory.disableOOMKiller, memory.useHierarchy, blockIO.leafWeight. Realtime cpu settings
//! and network (no net_cls or net_prio) are an error: v2 has no interface for them.

use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use oci_spec::runtime::LinuxResources;

use super::v1::{
    check_blkio_weight, check_cpu_bandwidth, check_memory, check_page_size, pids_value,
    rdma_writes, throttles, F_BLKIO_WEIGHT, F_BLKIO_WEIGHT_DEVICE, F_CPU_BURST, F_CPU_CPUS,
    F_CPU_IDLE, F_CPU_MEMS, F_CPU_PERIOD, F_CPU_QUOTA, F_CPU_RT_PERIOD, F_CPU_RT_RUNTIME,
    F_CPU_SHARES, F_HUGEPAGES, F_MEM_LIMIT, F_MEM_RESERVATION, F_MEM_SWAP, F_NET_CLASSID,
    F_NET_PRIORITIES, F_PIDS, F_UNIFIED,
};
use super::{invalid, mkdir_p, read_optional, write_file, CgroupError, Write};

/// cpu.shares (2..262144) → cpu.weight (1..10000), the conversion runc and crun use:
/// `1 + ((shares - 2) * 9999) / 262142`. 0 (unset) stays 0.
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    let s = shares.clamp(2, 262_144);
    1 + ((s - 2) * 9999) / 262_142
}

/// blkio weight (10..1000) → io.weight (1..10000), as runc.
fn blkio_to_io_weight(w: u16) -> u64 {
    1 + (u64::from(w).saturating_sub(10)) * 9999 / 990
}

fn num_or_max(v: i64) -> String {
    if v == -1 {
        "max".into()
    } else {
        v.to_string()
    }
}

/// Pure: the writes an OCI LinuxResources turns into on cgroup v2 (controller ""), in order:
/// cpuset, memory, cpu, pids, io, hugetlb, rdma, then `unified` (last, so it overrides). Device
/// rules are not writes on v2: [`Cgroup::apply`](super::Cgroup::apply) attaches an eBPF program.
pub fn v2_writes(r: &LinuxResources) -> Result<Vec<Write>, CgroupError> {
    let mut w = Vec::new();

    // The runtime spec: a value the runtime cannot apply is an error, not a silent skip.
    // cgroup v2 has no net_cls or net_prio.
    if let Some(n) = r.network() {
        if n.class_id().is_some() {
            return Err(invalid(
                F_NET_CLASSID,
                "cgroup v2 has no net_cls controller: this host cannot apply it",
            ));
        }
        if n.priorities().as_ref().is_some_and(|p| !p.is_empty()) {
            return Err(invalid(
                F_NET_PRIORITIES,
                "cgroup v2 has no net_prio controller: this host cannot apply it",
            ));
        }
    }

    if let Some(c) = r.cpu() {
        if let Some(cpus) = c.cpus().as_deref().filter(|s| !s.is_empty()) {
            w.push(Write::new("", "cpuset.cpus", cpus, F_CPU_CPUS));
        }
        if let Some(mems) = c.mems().as_deref().filter(|s| !s.is_empty()) {
            w.push(Write::new("", "cpuset.mems", mems, F_CPU_MEMS));
        }
    }

    if let Some(v) = check_memory(r)? {
        // memory.swap.max is swap alone: memory+swap minus memory.
        let swap = match (v.swap, v.limit) {
            (None, Some(-1)) => Some(-1),
            (None, _) => None,
            (Some(-1), _) => Some(-1),
            (Some(s), Some(l)) if l > 0 => Some(s - l),
            (Some(s), _) => {
                return Err(invalid(
                    F_MEM_SWAP,
                    format!("memory+swap ({s}) cannot be set without a memory limit on cgroup v2"),
                ))
            }
        };
        if let Some(s) = swap {
            let value = num_or_max(s);
            let write = Write::new("", "memory.swap.max", &value, F_MEM_SWAP);
            // Without swap accounting there is nothing to limit; only a real limit is an error.
            w.push(if s == -1 || s == 0 {
                write.optional()
            } else {
                write
            });
        }
        if let Some(l) = v.limit {
            w.push(Write::new("", "memory.max", num_or_max(l), F_MEM_LIMIT));
        }
        if let Some(res) = v.reservation {
            w.push(Write::new(
                "",
                "memory.low",
                num_or_max(res),
                F_MEM_RESERVATION,
            ));
        }
    }

    let bw = check_cpu_bandwidth(r)?;
    if let Some(c) = r.cpu() {
        if c.realtime_runtime().is_some_and(|v| v != 0) {
            return Err(invalid(F_CPU_RT_RUNTIME, "not supported on cgroup v2"));
        }
        if c.realtime_period().is_some_and(|v| v != 0) {
            return Err(invalid(F_CPU_RT_PERIOD, "not supported on cgroup v2"));
        }
        if let Some(i) = c.idle() {
            if !(0..=1).contains(&i) {
                return Err(invalid(F_CPU_IDLE, format!("must be 0 or 1, got {i}")));
            }
            w.push(Write::new("", "cpu.idle", i, F_CPU_IDLE));
        }
        if let Some(s) = c.shares().filter(|s| *s != 0) {
            w.push(Write::new(
                "",
                "cpu.weight",
                shares_to_weight(s),
                F_CPU_SHARES,
            ));
        }
        if let Some(b) = c.burst() {
            w.push(Write::new("", "cpu.max.burst", b, F_CPU_BURST));
        }
        if bw.quota.is_some() || bw.period.is_some() {
            let quota = match bw.quota {
                Some(q) if q > 0 => q.to_string(),
                _ => "max".to_string(),
            };
            // The kernel's default period, documented in cgroup-v2.rst.
            let period = bw.period.unwrap_or(100_000);
            let field = if bw.quota.is_some() {
                F_CPU_QUOTA
            } else {
                F_CPU_PERIOD
            };
            w.push(Write::new(
                "",
                "cpu.max",
                format!("{quota} {period}"),
                field,
            ));
        }
    }

    if let Some(p) = r.pids() {
        w.push(Write::new("", "pids.max", pids_value(p.limit()), F_PIDS));
    }

    if let Some(b) = r.block_io() {
        // BFQ's weight where present (same 10..1000 scale), else io.weight (1..10000).
        if let Some(wt) = b.weight().filter(|w| *w != 0) {
            let wt = check_blkio_weight(F_BLKIO_WEIGHT, wt)?;
            w.push(
                Write::new("", "io.bfq.weight", wt, F_BLKIO_WEIGHT)
                    .or_instead("io.weight", blkio_to_io_weight(wt)),
            );
        }
        for d in b.weight_device().iter().flatten() {
            if let Some(wt) = d.weight().filter(|w| *w != 0) {
                let wt = check_blkio_weight(F_BLKIO_WEIGHT_DEVICE, wt)?;
                if d.major() < 0 || d.minor() < 0 {
                    return Err(invalid(
                        F_BLKIO_WEIGHT_DEVICE,
                        format!("invalid device {}:{}", d.major(), d.minor()),
                    ));
                }
                let dev = format!("{}:{}", d.major(), d.minor());
                w.push(
                    Write::new(
                        "",
                        "io.bfq.weight",
                        format!("{dev} {wt}"),
                        F_BLKIO_WEIGHT_DEVICE,
                    )
                    .or_instead("io.weight", format!("{dev} {}", blkio_to_io_weight(wt))),
                );
            }
        }
        const KEYS: [&str; 4] = ["rbps", "wbps", "riops", "wiops"];
        for (kind, (field, dev, rate)) in throttles(r)? {
            let rate = if rate == 0 {
                "max".to_string()
            } else {
                rate.to_string()
            };
            w.push(Write::new(
                "",
                "io.max",
                format!("{dev} {}={rate}", KEYS[kind]),
                field,
            ));
        }
    }

    for h in r.hugepage_limits().iter().flatten() {
        check_page_size(h.page_size())?;
        if h.limit() < -1 {
            return Err(invalid(
                F_HUGEPAGES,
                format!(
                    "hugepage limit must be -1 (unlimited) or a number of bytes, got {}",
                    h.limit()
                ),
            ));
        }
        let ps = h.page_size();
        let v = num_or_max(h.limit());
        w.push(Write::new("", format!("hugetlb.{ps}.max"), &v, F_HUGEPAGES));
        w.push(Write::new("", format!("hugetlb.{ps}.rsvd.max"), &v, F_HUGEPAGES).optional());
    }

    w.extend(rdma_writes(r, ""));

    if let Some(u) = r.unified() {
        let mut keys: Vec<_> = u.iter().collect();
        keys.sort_by(|a, b| a.0.cmp(b.0));
        for (k, v) in keys {
            let ok = !k.is_empty()
                && !k.contains('/')
                && k.contains('.')
                && !k.starts_with('.')
                && !k.starts_with("cgroup.");
            if !ok {
                return Err(invalid(
                    F_UNIFIED,
                    format!(
                        "invalid key {k:?} (must be a control file name like \"memory.high\", not a path or a cgroup.* core file)"
                    ),
                ));
            }
            w.push(Write::new("", k.clone(), v, F_UNIFIED));
        }
    }
    Ok(w)
}

/// Impure adjustments before writing: checkBeforeUpdate, and keeping the current quota when only
/// the period changes (cpu.max takes both).
pub(crate) fn prepare_writes(
    dir: &Path,
    r: &LinuxResources,
    writes: &mut [Write],
) -> Result<(), CgroupError> {
    let m = r.memory().as_ref();
    if m.and_then(|m| m.check_before_update()) == Some(true) {
        if let Some(limit) = m.and_then(|m| m.limit()).filter(|l| *l > 0) {
            let path = dir.join("memory.current");
            if let Some(cur) = read_optional(&path)? {
                let cur: i64 = cur.trim().parse().map_err(|_| CgroupError::BadContent {
                    path: path.clone(),
                    reason: format!("{:?} is not a number", cur.trim()),
                })?;
                if cur > limit {
                    return Err(invalid(
                        F_MEM_LIMIT,
                        format!(
                            "new limit {limit} is below the current usage {cur} (checkBeforeUpdate)"
                        ),
                    ));
                }
            }
        }
    }
    if let Some(w) = writes
        .iter_mut()
        .find(|w| w.file == "cpu.max" && w.field == F_CPU_PERIOD)
    {
        if let Some(cur) = read_optional(&dir.join("cpu.max"))? {
            preserve_quota(w, &cur);
        }
    }
    Ok(())
}

/// Pure: with only a period given, keep the quota already in cpu.max.
pub(crate) fn preserve_quota(w: &mut Write, current_cpu_max: &str) {
    if let (Some(q), Some(p)) = (
        current_cpu_max.split_whitespace().next(),
        w.value.split_whitespace().nth(1),
    ) {
        w.value = format!("{q} {p}");
    }
}

/// True if `ctrl` is listed in `dir/cgroup.controllers`.
pub(crate) fn has_controller(dir: &Path, ctrl: &str) -> bool {
    std::fs::read_to_string(dir.join("cgroup.controllers"))
        .map(|s| s.split_whitespace().any(|c| c == ctrl))
        .unwrap_or(false)
}

/// mkdir each level from the mount down to `leaf`, enabling in every ancestor the controllers
/// available there (all at once, else one by one; failures are left for `apply` to report).
pub(crate) fn create_with_controllers(mountpoint: &Path, leaf: &Path) -> Result<(), CgroupError> {
    let Ok(rel) = leaf.strip_prefix(mountpoint) else {
        return mkdir_p(leaf);
    };
    let mut current = mountpoint.to_path_buf();
    for comp in rel.components() {
        enable_controllers(&current);
        current.push(comp);
        match std::fs::create_dir(&current) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(cause) => {
                return Err(CgroupError::Io {
                    op: "creating directory",
                    path: current,
                    cause,
                })
            }
        }
    }
    Ok(())
}

fn enable_controllers(dir: &Path) {
    let Ok(avail) = std::fs::read_to_string(dir.join("cgroup.controllers")) else {
        return;
    };
    let ctrls: Vec<String> = avail.split_whitespace().map(|c| format!("+{c}")).collect();
    if ctrls.is_empty() {
        return;
    }
    let file = dir.join("cgroup.subtree_control");
    if write_file(&file, &ctrls.join(" ")).is_err() {
        for c in &ctrls {
            let _ = write_file(&file, c);
        }
    }
}

/// cgroup.freeze, waiting for cgroup.events to report the new state.
pub(crate) fn freeze(dir: &Path, frozen: bool) -> Result<(), CgroupError> {
    let file = dir.join("cgroup.freeze");
    write_file(&file, if frozen { "1" } else { "0" }).map_err(|cause| CgroupError::Io {
        op: if frozen {
            "freezing via"
        } else {
            "thawing via"
        },
        path: file.clone(),
        cause,
    })?;
    let events = dir.join("cgroup.events");
    let want = if frozen { "frozen 1" } else { "frozen 0" };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut tries = 0u32;
    loop {
        match read_optional(&events)? {
            // Kernels without the frozen key report nothing to wait for.
            Some(s) if s.lines().any(|l| l.trim() == want) || !s.contains("frozen ") => {
                return Ok(())
            }
            None => return Ok(()),
            Some(_) => {}
        }
        if Instant::now() >= deadline {
            if frozen {
                let _ = write_file(&file, "0");
            }
            return Err(CgroupError::Timeout {
                path: events,
                state: if frozen { "frozen" } else { "thawed" },
            });
        }
        tries += 1;
        sleep(Duration::from_millis(if tries < 20 { 1 } else { 10 }));
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests_common::render;
    use super::*;

    fn writes(json: &str) -> Result<Vec<String>, String> {
        let r: LinuxResources = serde_json::from_str(json).map_err(|e| format!("json: {e}"))?;
        v2_writes(&r)
            .map(|w| w.iter().map(render).collect())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn weight_conversion() {
        for (shares, weight) in [
            (0, 0),
            (1, 1),
            (2, 1),
            (1024, 39),
            (512, 20),
            (262_144, 10_000),
            (1_000_000, 10_000),
        ] {
            assert_eq!(shares_to_weight(shares), weight, "shares {shares}");
        }
        assert_eq!(blkio_to_io_weight(10), 1);
        assert_eq!(blkio_to_io_weight(500), 4950);
        assert_eq!(blkio_to_io_weight(1000), 10000);
    }

    #[test]
    fn data_driven_writes() {
        let cases: &[(&str, &[&str])] = &[
            ("{}", &[]),
            (
                r#"{"memory":{"limit":1048576,"reservation":524288,"swap":3145728,"swappiness":10,"kernel":1,"kernelTCP":1,"disableOOMKiller":true,"useHierarchy":true}}"#,
                &[
                    "memory.swap.max=2097152 @memory.swap",
                    "memory.max=1048576 @memory.limit",
                    "memory.low=524288 @memory.reservation",
                ],
            ),
            (
                r#"{"memory":{"limit":-1}}"#,
                &[
                    "memory.swap.max=max @memory.swap [skip]",
                    "memory.max=max @memory.limit",
                ],
            ),
            (
                r#"{"memory":{"limit":1048576,"swap":1048576}}"#,
                &[
                    "memory.swap.max=0 @memory.swap [skip]",
                    "memory.max=1048576 @memory.limit",
                ],
            ),
            (
                r#"{"memory":{"limit":1048576,"swap":-1}}"#,
                &[
                    "memory.swap.max=max @memory.swap [skip]",
                    "memory.max=1048576 @memory.limit",
                ],
            ),
            (
                r#"{"memory":{"reservation":-1}}"#,
                &["memory.low=max @memory.reservation"],
            ),
            (
                r#"{"cpu":{"shares":1024,"quota":50000,"period":200000,"idle":0,"burst":10000,"cpus":"1","mems":"0"}}"#,
                &[
                    "cpuset.cpus=1 @cpu.cpus",
                    "cpuset.mems=0 @cpu.mems",
                    "cpu.idle=0 @cpu.idle",
                    "cpu.weight=39 @cpu.shares",
                    "cpu.max.burst=10000 @cpu.burst",
                    "cpu.max=50000 200000 @cpu.quota",
                ],
            ),
            (
                r#"{"cpu":{"quota":20000}}"#,
                &["cpu.max=20000 100000 @cpu.quota"],
            ),
            (
                r#"{"cpu":{"quota":-1}}"#,
                &["cpu.max=max 100000 @cpu.quota"],
            ),
            (
                r#"{"cpu":{"period":50000}}"#,
                &["cpu.max=max 50000 @cpu.period"],
            ),
            (r#"{"cpu":{"shares":0,"quota":0,"period":0}}"#, &[]),
            (r#"{"pids":{"limit":64}}"#, &["pids.max=64 @pids.limit"]),
            (r#"{"pids":{"limit":0}}"#, &["pids.max=max @pids.limit"]),
            (r#"{"pids":{"limit":-1}}"#, &["pids.max=max @pids.limit"]),
            (
                r#"{"blockIO":{"weight":500,"leafWeight":300,
                    "weightDevice":[{"major":8,"minor":0,"weight":100}],
                    "throttleReadBpsDevice":[{"major":8,"minor":0,"rate":1048576}],
                    "throttleWriteBpsDevice":[{"major":8,"minor":0,"rate":0}],
                    "throttleReadIOPSDevice":[{"major":8,"minor":0,"rate":100}],
                    "throttleWriteIOPSDevice":[{"major":253,"minor":1,"rate":200}]}}"#,
                &[
                    "io.bfq.weight=500 @blockIO.weight [else io.weight=4950]",
                    "io.bfq.weight=8:0 100 @blockIO.weightDevice [else io.weight=8:0 910]",
                    "io.max=8:0 rbps=1048576 @blockIO.throttleReadBpsDevice",
                    "io.max=8:0 wbps=max @blockIO.throttleWriteBpsDevice",
                    "io.max=8:0 riops=100 @blockIO.throttleReadIOPSDevice",
                    "io.max=253:1 wiops=200 @blockIO.throttleWriteIOPSDevice",
                ],
            ),
            (
                r#"{"hugepageLimits":[{"pageSize":"2MB","limit":4194304},{"pageSize":"1GB","limit":-1}]}"#,
                &[
                    "hugetlb.2MB.max=4194304 @hugepageLimits",
                    "hugetlb.2MB.rsvd.max=4194304 @hugepageLimits [skip]",
                    "hugetlb.1GB.max=max @hugepageLimits",
                    "hugetlb.1GB.rsvd.max=max @hugepageLimits [skip]",
                ],
            ),
            (
                r#"{"rdma":{"mlx4_0":{"hcaHandles":2,"hcaObjects":2000}}}"#,
                &["rdma.max=mlx4_0 hca_handle=2 hca_object=2000 @rdma"],
            ),
            // devices are not writes on v2.
            (r#"{"devices":[{"allow":false,"access":"rwm"}]}"#, &[]),
            (
                r#"{"pids":{"limit":10},"unified":{"pids.max":"20","memory.high":"1G","io.weight":"default 100"}}"#,
                &[
                    "pids.max=10 @pids.limit",
                    "io.weight=default 100 @unified",
                    "memory.high=1G @unified",
                    "pids.max=20 @unified",
                ],
            ),
        ];
        for (json, want) in cases {
            let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
            assert_eq!(writes(json), Ok(want), "{json}");
        }
    }

    #[test]
    fn data_driven_errors() {
        let cases = [
            (
                r#"{"memory":{"limit":2097152,"swap":1048576}}"#,
                "linux.resources.memory.swap: memory+swap (1048576) must be >= memory limit (2097152)",
            ),
            (
                r#"{"memory":{"swap":1048576}}"#,
                "linux.resources.memory.swap: memory+swap (1048576) cannot be set without a memory limit on cgroup v2",
            ),
            (
                r#"{"cpu":{"realtimeRuntime":1000}}"#,
                "linux.resources.cpu.realtimeRuntime: not supported on cgroup v2",
            ),
            (
                r#"{"network":{"classID":1}}"#,
                "linux.resources.network.classID: cgroup v2 has no net_cls controller: this host cannot apply it",
            ),
            (
                r#"{"network":{"priorities":[{"name":"eth0","priority":5}]}}"#,
                "linux.resources.network.priorities: cgroup v2 has no net_prio controller: this host cannot apply it",
            ),
            (
                r#"{"cpu":{"realtimePeriod":1000}}"#,
                "linux.resources.cpu.realtimePeriod: not supported on cgroup v2",
            ),
            (
                r#"{"cpu":{"quota":999}}"#,
                "linux.resources.cpu.quota: must be -1 (unlimited) or at least 1000 microseconds, got 999",
            ),
            (
                r#"{"unified":{"../memory.max":"1"}}"#,
                "linux.resources.unified: invalid key \"../memory.max\" (must be a control file name like \"memory.high\", not a path or a cgroup.* core file)",
            ),
            (
                r#"{"unified":{"cgroup.procs":"1"}}"#,
                "linux.resources.unified: invalid key \"cgroup.procs\" (must be a control file name like \"memory.high\", not a path or a cgroup.* core file)",
            ),
            (
                r#"{"unified":{"memory":"1"}}"#,
                "linux.resources.unified: invalid key \"memory\" (must be a control file name like \"memory.high\", not a path or a cgroup.* core file)",
            ),
            (
                r#"{"hugepageLimits":[{"pageSize":"huge","limit":1}]}"#,
                "linux.resources.hugepageLimits: invalid page size \"huge\" (expected e.g. \"2MB\", \"1GB\", \"64KB\")",
            ),
            (
                r#"{"blockIO":{"weightDevice":[{"major":8,"minor":-1,"weight":100}]}}"#,
                "linux.resources.blockIO.weightDevice: invalid device 8:-1",
            ),
        ];
        for (json, want) in cases {
            assert_eq!(writes(json), Err(want.to_string()), "{json}");
        }
    }

    #[test]
    fn period_only_keeps_current_quota() {
        let r: LinuxResources = serde_json::from_str(r#"{"cpu":{"period":50000}}"#).unwrap();
        let mut w = v2_writes(&r).unwrap();
        preserve_quota(&mut w[0], "20000 100000\n");
        assert_eq!(w[0].value, "20000 50000");
        preserve_quota(&mut w[0], "max 100000\n");
        assert_eq!(w[0].value, "max 50000");
    }

    #[test]
    fn prepare_writes_checks_usage_before_update() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("memory.current"), "5000000\n").unwrap();
        std::fs::write(tmp.path().join("cpu.max"), "30000 100000\n").unwrap();
        let r: LinuxResources =
            serde_json::from_str(r#"{"memory":{"limit":4000000,"checkBeforeUpdate":true}}"#)
                .unwrap();
        let mut w = v2_writes(&r).unwrap();
        let e = prepare_writes(tmp.path(), &r, &mut w)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "linux.resources.memory.limit: new limit 4000000 is below the current usage 5000000 (checkBeforeUpdate)"
        );
        let r: LinuxResources = serde_json::from_str(
            r#"{"memory":{"limit":6000000,"checkBeforeUpdate":true},"cpu":{"period":10000}}"#,
        )
        .unwrap();
        let mut w = v2_writes(&r).unwrap();
        prepare_writes(tmp.path(), &r, &mut w).unwrap();
        assert_eq!(w.last().map(|w| w.value.as_str()), Some("30000 10000"));
    }

    #[test]
    fn create_enables_available_controllers_in_ancestors_only() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::write(root.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        std::fs::write(root.join("cgroup.subtree_control"), "").unwrap();
        let leaf = root.join("a/b");
        // Fake: "a" appears with its own files once created; emulate by pre-creating it.
        std::fs::create_dir(root.join("a")).unwrap();
        std::fs::write(root.join("a/cgroup.controllers"), "memory\n").unwrap();
        std::fs::write(root.join("a/cgroup.subtree_control"), "").unwrap();
        create_with_controllers(root, &leaf).unwrap();
        assert!(leaf.is_dir());
        let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
        assert_eq!(read("cgroup.subtree_control"), "+cpu +memory +pids");
        assert_eq!(read("a/cgroup.subtree_control"), "+memory");
        assert!(!leaf.join("cgroup.subtree_control").exists());
        assert!(has_controller(&root.join("a"), "memory"));
        assert!(!has_controller(&root.join("a"), "cpu"));
    }
}
