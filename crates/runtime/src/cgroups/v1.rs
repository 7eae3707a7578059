//! cgroup v1: OCI resources → control file writes, cpuset set-up, memory/swap ordering, freezer.
//!
//! Conventions shared with v2: a value of 0 for memory limit/reservation/swap, cpu
//! shares/quota/period/realtime, blkio weight means "not set" (as runc treats them); -1 means
//! unlimited. `memory.kernel` is ignored: kernel memory limits are deprecated and kernels since
//! 5.16 reject writes to memory.kmem.limit_in_bytes.

use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use oci_spec::runtime::LinuxResources;

use super::devices::v1_device_writes;
use super::{invalid, read_optional, write_file, CgroupError, Write};

pub(crate) const F_MEM_LIMIT: &str = "linux.resources.memory.limit";
pub(crate) const F_MEM_RESERVATION: &str = "linux.resources.memory.reservation";
pub(crate) const F_MEM_SWAP: &str = "linux.resources.memory.swap";
pub(crate) const F_MEM_KERNEL_TCP: &str = "linux.resources.memory.kernelTCP";
pub(crate) const F_MEM_SWAPPINESS: &str = "linux.resources.memory.swappiness";
pub(crate) const F_MEM_OOM: &str = "linux.resources.memory.disableOOMKiller";
pub(crate) const F_MEM_HIERARCHY: &str = "linux.resources.memory.useHierarchy";
pub(crate) const F_CPU_SHARES: &str = "linux.resources.cpu.shares";
pub(crate) const F_CPU_QUOTA: &str = "linux.resources.cpu.quota";
pub(crate) const F_CPU_PERIOD: &str = "linux.resources.cpu.period";
pub(crate) const F_CPU_BURST: &str = "linux.resources.cpu.burst";
pub(crate) const F_CPU_IDLE: &str = "linux.resources.cpu.idle";
pub(crate) const F_CPU_RT_RUNTIME: &str = "linux.resources.cpu.realtimeRuntime";
pub(crate) const F_CPU_RT_PERIOD: &str = "linux.resources.cpu.realtimePeriod";
pub(crate) const F_CPU_CPUS: &str = "linux.resources.cpu.cpus";
pub(crate) const F_CPU_MEMS: &str = "linux.resources.cpu.mems";
pub(crate) const F_PIDS: &str = "linux.resources.pids.limit";
pub(crate) const F_BLKIO_WEIGHT: &str = "linux.resources.blockIO.weight";
pub(crate) const F_BLKIO_LEAF_WEIGHT: &str = "linux.resources.blockIO.leafWeight";
pub(crate) const F_BLKIO_WEIGHT_DEVICE: &str = "linux.resources.blockIO.weightDevice";
pub(crate) const F_BLKIO_READ_BPS: &str = "linux.resources.blockIO.throttleReadBpsDevice";
pub(crate) const F_BLKIO_WRITE_BPS: &str = "linux.resources.blockIO.throttleWriteBpsDevice";
pub(crate) const F_BLKIO_READ_IOPS: &str = "linux.resources.blockIO.throttleReadIOPSDevice";
pub(crate) const F_BLKIO_WRITE_IOPS: &str = "linux.resources.blockIO.throttleWriteIOPSDevice";
pub(crate) const F_HUGEPAGES: &str = "linux.resources.hugepageLimits";
pub(crate) const F_NET_CLASSID: &str = "linux.resources.network.classID";
pub(crate) const F_NET_PRIORITIES: &str = "linux.resources.network.priorities";
pub(crate) const F_RDMA: &str = "linux.resources.rdma";
pub(crate) const F_UNIFIED: &str = "linux.resources.unified";

/// "-1" for unlimited, else the number; errors for values below -1.
fn limit_value(field: &'static str, v: i64, what: &str) -> Result<String, CgroupError> {
    if v < -1 {
        return Err(invalid(
            field,
            format!("{what} must be -1 (unlimited) or a number of bytes, got {v}"),
        ));
    }
    Ok(v.to_string())
}

/// Checks shared by v1 and v2 for the memory section. Returns (limit, reservation, swap) with 0
/// turned into None.
pub(crate) struct MemoryValues {
    pub limit: Option<i64>,
    pub reservation: Option<i64>,
    pub swap: Option<i64>,
}

pub(crate) fn check_memory(r: &LinuxResources) -> Result<Option<MemoryValues>, CgroupError> {
    let Some(m) = r.memory() else {
        return Ok(None);
    };
    let nz = |v: Option<i64>| v.filter(|v| *v != 0);
    let (limit, reservation, swap) = (nz(m.limit()), nz(m.reservation()), nz(m.swap()));
    if let Some(v) = limit {
        limit_value(F_MEM_LIMIT, v, "memory limit")?;
    }
    if let Some(v) = reservation {
        limit_value(F_MEM_RESERVATION, v, "memory reservation")?;
    }
    if let Some(v) = swap {
        limit_value(F_MEM_SWAP, v, "memory+swap limit")?;
    }
    if let (Some(swap), Some(limit)) = (swap, limit) {
        if swap != -1 && limit != -1 && swap < limit {
            return Err(invalid(
                F_MEM_SWAP,
                format!("memory+swap ({swap}) must be >= memory limit ({limit})"),
            ));
        }
    }
    if let Some(s) = m.swappiness() {
        if s > 100 {
            return Err(invalid(
                F_MEM_SWAPPINESS,
                format!("must be between 0 and 100, got {s}"),
            ));
        }
    }
    Ok(Some(MemoryValues {
        limit,
        reservation,
        swap,
    }))
}

/// Checked cpu bandwidth values (0 → None).
pub(crate) struct CpuValues {
    pub quota: Option<i64>,
    pub period: Option<u64>,
}

pub(crate) fn check_cpu_bandwidth(r: &LinuxResources) -> Result<CpuValues, CgroupError> {
    let Some(c) = r.cpu() else {
        return Ok(CpuValues {
            quota: None,
            period: None,
        });
    };
    let quota = c.quota().filter(|q| *q != 0);
    let period = c.period().filter(|p| *p != 0);
    if let Some(q) = quota {
        if q < -1 || (0..1000).contains(&q) {
            return Err(invalid(
                F_CPU_QUOTA,
                format!("must be -1 (unlimited) or at least 1000 microseconds, got {q}"),
            ));
        }
    }
    if let Some(p) = period {
        if !(1000..=1_000_000).contains(&p) {
            return Err(invalid(
                F_CPU_PERIOD,
                format!("must be between 1000 and 1000000 microseconds, got {p}"),
            ));
        }
    }
    if let (Some(c), Some(q)) = (c.burst(), quota) {
        if q > 0 && c > q as u64 {
            return Err(invalid(
                F_CPU_BURST,
                format!("burst ({c}) must not exceed the quota ({q})"),
            ));
        }
    }
    Ok(CpuValues { quota, period })
}

fn device_number(field: &'static str, major: i64, minor: i64) -> Result<String, CgroupError> {
    if major < 0 || minor < 0 || major > u32::MAX as i64 || minor > u32::MAX as i64 {
        return Err(invalid(field, format!("invalid device {major}:{minor}")));
    }
    Ok(format!("{major}:{minor}"))
}

/// Per-device weights and throttles, shared checks. Yields (field, "major:minor", value).
pub(crate) fn check_blkio_weight(field: &'static str, w: u16) -> Result<u16, CgroupError> {
    if !(10..=1000).contains(&w) {
        return Err(invalid(
            field,
            format!("must be between 10 and 1000, got {w}"),
        ));
    }
    Ok(w)
}

pub(crate) type Throttle = (&'static str, String, u64);

/// Throttle entries in OCI order: read bps, write bps, read iops, write iops.
pub(crate) fn throttles(r: &LinuxResources) -> Result<Vec<(usize, Throttle)>, CgroupError> {
    let mut out = Vec::new();
    let Some(b) = r.block_io() else {
        return Ok(out);
    };
    let lists = [
        (F_BLKIO_READ_BPS, b.throttle_read_bps_device()),
        (F_BLKIO_WRITE_BPS, b.throttle_write_bps_device()),
        (F_BLKIO_READ_IOPS, b.throttle_read_iops_device()),
        (F_BLKIO_WRITE_IOPS, b.throttle_write_iops_device()),
    ];
    for (kind, (field, list)) in lists.into_iter().enumerate() {
        for d in list.iter().flatten() {
            out.push((
                kind,
                (field, device_number(field, d.major(), d.minor())?, d.rate()),
            ));
        }
    }
    Ok(out)
}

/// Checks a hugepage size like "2MB", "1GB", "64KB".
pub(crate) fn check_page_size(s: &str) -> Result<(), CgroupError> {
    let digits = s.trim_end_matches(['K', 'M', 'G', 'B']);
    let unit = &s[digits.len()..];
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || !matches!(unit, "KB" | "MB" | "GB")
    {
        return Err(invalid(
            F_HUGEPAGES,
            format!("invalid page size {s:?} (expected e.g. \"2MB\", \"1GB\", \"64KB\")"),
        ));
    }
    Ok(())
}

pub(crate) fn rdma_writes(r: &LinuxResources, controller: &'static str) -> Vec<Write> {
    let mut out = Vec::new();
    if let Some(map) = r.rdma() {
        let mut devs: Vec<_> = map.iter().collect();
        devs.sort_by(|a, b| a.0.cmp(b.0));
        for (dev, l) in devs {
            let mut v = dev.clone();
            if let Some(h) = l.hca_handles() {
                v.push_str(&format!(" hca_handle={h}"));
            }
            if let Some(o) = l.hca_objects() {
                v.push_str(&format!(" hca_object={o}"));
            }
            if v != *dev {
                out.push(Write::new(controller, "rdma.max", v, F_RDMA));
            }
        }
    }
    out
}

/// Pure: the writes an OCI LinuxResources turns into on cgroup v1, in order. Device rules are
/// included (devices.deny "a", then the rules); `unified` is an error.
///
/// Order: cpuset, memory, cpu, pids, blkio, hugetlb, net_cls, net_prio, rdma, devices. When
/// both memory limit and swap are set, [`Cgroup::apply`](super::Cgroup::apply) may put the
/// memsw write first (when the new memory+swap is above the current limit, as runc).
pub fn v1_writes(r: &LinuxResources) -> Result<Vec<Write>, CgroupError> {
    let mut w = Vec::new();
    if r.unified().as_ref().is_some_and(|u| !u.is_empty()) {
        return Err(invalid(
            F_UNIFIED,
            "cgroup v2 settings cannot be applied: this host uses cgroup v1",
        ));
    }

    // cpuset
    if let Some(c) = r.cpu() {
        if let Some(cpus) = c.cpus().as_deref().filter(|s| !s.is_empty()) {
            w.push(Write::new("cpuset", "cpuset.cpus", cpus, F_CPU_CPUS));
        }
        if let Some(mems) = c.mems().as_deref().filter(|s| !s.is_empty()) {
            w.push(Write::new("cpuset", "cpuset.mems", mems, F_CPU_MEMS));
        }
    }

    // memory
    if let (Some(v), Some(m)) = (check_memory(r)?, r.memory()) {
        if let Some(l) = v.limit {
            w.push(Write::new(
                "memory",
                "memory.limit_in_bytes",
                l,
                F_MEM_LIMIT,
            ));
        }
        match v.swap {
            Some(s) => w.push(Write::new(
                "memory",
                "memory.memsw.limit_in_bytes",
                s,
                F_MEM_SWAP,
            )),
            // Unlimited memory without a swap setting: unlimited memory+swap too, where the
            // kernel has swap accounting (as runc).
            None if v.limit == Some(-1) => w.push(
                Write::new("memory", "memory.memsw.limit_in_bytes", -1, F_MEM_SWAP).optional(),
            ),
            None => {}
        }
        if let Some(res) = v.reservation {
            w.push(Write::new(
                "memory",
                "memory.soft_limit_in_bytes",
                res,
                F_MEM_RESERVATION,
            ));
        }
        if let Some(k) = m.kernel_tcp().filter(|k| *k != 0) {
            let k = limit_value(F_MEM_KERNEL_TCP, k, "kernel TCP limit")?;
            w.push(Write::new(
                "memory",
                "memory.kmem.tcp.limit_in_bytes",
                k,
                F_MEM_KERNEL_TCP,
            ));
        }
        if let Some(s) = m.swappiness() {
            w.push(Write::new(
                "memory",
                "memory.swappiness",
                s,
                F_MEM_SWAPPINESS,
            ));
        }
        if m.disable_oom_killer() == Some(true) {
            w.push(Write::new("memory", "memory.oom_control", 1, F_MEM_OOM));
        }
        if let Some(h) = m.use_hierarchy() {
            w.push(Write::new(
                "memory",
                "memory.use_hierarchy",
                u8::from(h),
                F_MEM_HIERARCHY,
            ));
        }
    }

    // cpu
    let bw = check_cpu_bandwidth(r)?;
    if let Some(c) = r.cpu() {
        // Realtime first: the period bounds the runtime.
        if let Some(p) = c.realtime_period().filter(|p| *p != 0) {
            w.push(Write::new("cpu", "cpu.rt_period_us", p, F_CPU_RT_PERIOD));
        }
        if let Some(rt) = c.realtime_runtime().filter(|r| *r != 0) {
            if rt < -1 {
                return Err(invalid(
                    F_CPU_RT_RUNTIME,
                    format!("must be -1 (unlimited) or a number of microseconds, got {rt}"),
                ));
            }
            w.push(Write::new("cpu", "cpu.rt_runtime_us", rt, F_CPU_RT_RUNTIME));
        }
        if let Some(s) = c.shares().filter(|s| *s != 0) {
            w.push(Write::new("cpu", "cpu.shares", s, F_CPU_SHARES));
        }
        if let Some(p) = bw.period {
            w.push(Write::new("cpu", "cpu.cfs_period_us", p, F_CPU_PERIOD));
        }
        if let Some(q) = bw.quota {
            w.push(Write::new("cpu", "cpu.cfs_quota_us", q, F_CPU_QUOTA));
        }
        if let Some(b) = c.burst() {
            w.push(Write::new("cpu", "cpu.cfs_burst_us", b, F_CPU_BURST));
        }
        if let Some(i) = c.idle() {
            if !(0..=1).contains(&i) {
                return Err(invalid(F_CPU_IDLE, format!("must be 0 or 1, got {i}")));
            }
            w.push(Write::new("cpu", "cpu.idle", i, F_CPU_IDLE));
        }
    }

    // pids
    if let Some(p) = r.pids() {
        w.push(Write::new(
            "pids",
            "pids.max",
            pids_value(p.limit()),
            F_PIDS,
        ));
    }

    // blkio: BFQ's files where present, else CFQ's.
    if let Some(b) = r.block_io() {
        if let Some(wt) = b.weight().filter(|w| *w != 0) {
            let wt = check_blkio_weight(F_BLKIO_WEIGHT, wt)?;
            w.push(
                Write::new("blkio", "blkio.bfq.weight", wt, F_BLKIO_WEIGHT)
                    .or_instead("blkio.weight", wt),
            );
        }
        if let Some(lw) = b.leaf_weight().filter(|w| *w != 0) {
            let lw = check_blkio_weight(F_BLKIO_LEAF_WEIGHT, lw)?;
            w.push(Write::new(
                "blkio",
                "blkio.leaf_weight",
                lw,
                F_BLKIO_LEAF_WEIGHT,
            ));
        }
        for d in b.weight_device().iter().flatten() {
            let dev = device_number(F_BLKIO_WEIGHT_DEVICE, d.major(), d.minor())?;
            if let Some(wt) = d.weight().filter(|w| *w != 0) {
                let wt = check_blkio_weight(F_BLKIO_WEIGHT_DEVICE, wt)?;
                let v = format!("{dev} {wt}");
                w.push(
                    Write::new(
                        "blkio",
                        "blkio.bfq.weight_device",
                        &v,
                        F_BLKIO_WEIGHT_DEVICE,
                    )
                    .or_instead("blkio.weight_device", &v),
                );
            }
            if let Some(lw) = d.leaf_weight().filter(|w| *w != 0) {
                let lw = check_blkio_weight(F_BLKIO_WEIGHT_DEVICE, lw)?;
                w.push(Write::new(
                    "blkio",
                    "blkio.leaf_weight_device",
                    format!("{dev} {lw}"),
                    F_BLKIO_WEIGHT_DEVICE,
                ));
            }
        }
        const FILES: [&str; 4] = [
            "blkio.throttle.read_bps_device",
            "blkio.throttle.write_bps_device",
            "blkio.throttle.read_iops_device",
            "blkio.throttle.write_iops_device",
        ];
        for (kind, (field, dev, rate)) in throttles(r)? {
            w.push(Write::new(
                "blkio",
                FILES[kind],
                format!("{dev} {rate}"),
                field,
            ));
        }
    }

    // hugetlb: the page-fault limit, and the reservation limit where the kernel has it.
    for h in r.hugepage_limits().iter().flatten() {
        check_page_size(h.page_size())?;
        let v = limit_value(F_HUGEPAGES, h.limit(), "hugepage limit")?;
        let ps = h.page_size();
        w.push(Write::new(
            "hugetlb",
            format!("hugetlb.{ps}.limit_in_bytes"),
            &v,
            F_HUGEPAGES,
        ));
        w.push(
            Write::new(
                "hugetlb",
                format!("hugetlb.{ps}.rsvd.limit_in_bytes"),
                &v,
                F_HUGEPAGES,
            )
            .optional(),
        );
    }

    // network: net_cls / net_prio must be mounted (a value the host cannot apply is an
    // error, as the runtime spec says).
    if let Some(n) = r.network() {
        if let Some(id) = n.class_id() {
            w.push(Write::new("net_cls", "net_cls.classid", id, F_NET_CLASSID));
        }
        for p in n.priorities().iter().flatten() {
            if p.name().is_empty() || p.name().contains(char::is_whitespace) {
                return Err(invalid(
                    F_NET_PRIORITIES,
                    format!("invalid interface name {:?}", p.name()),
                ));
            }
            w.push(Write::new(
                "net_prio",
                "net_prio.ifpriomap",
                format!("{} {}", p.name(), p.priority()),
                F_NET_PRIORITIES,
            ));
        }
    }

    w.extend(rdma_writes(r, "rdma"));

    if let Some(rules) = r.devices() {
        w.extend(v1_device_writes(rules)?);
    }
    Ok(w)
}

/// pids.limit: > 0 is the limit, <= 0 means no limit (runc ≥ 1.2, runtime-spec).
pub(crate) fn pids_value(limit: i64) -> String {
    if limit > 0 {
        limit.to_string()
    } else {
        "max".into()
    }
}

/// Pure: when memory limit and memory+swap are both written, the kernel requires
/// memsw >= limit after each write. Writing memsw first is right when the new memsw is unlimited
/// or above the current memory limit; otherwise the limit goes first (runc's rule).
pub(crate) fn reorder_memory_writes(writes: &mut [Write], current_limit: u64) {
    let limit = writes
        .iter()
        .position(|w| w.file == "memory.limit_in_bytes");
    let swap = writes
        .iter()
        .position(|w| w.file == "memory.memsw.limit_in_bytes");
    let (Some(l), Some(s)) = (limit, swap) else {
        return;
    };
    let new_swap: i64 = writes[s].value.parse().unwrap_or(-1);
    let swap_first = new_swap == -1 || (new_swap >= 0 && current_limit < new_swap as u64);
    if swap_first != (s < l) {
        writes.swap(l, s);
    }
}

/// Reads the current memory.limit_in_bytes and orders the memory/memsw writes accordingly.
pub(crate) fn order_memory_writes(mem_dir: &Path, writes: &mut [Write]) -> Result<(), CgroupError> {
    let both = writes.iter().any(|w| w.file == "memory.limit_in_bytes")
        && writes
            .iter()
            .any(|w| w.file == "memory.memsw.limit_in_bytes");
    if !both {
        return Ok(());
    }
    let path = mem_dir.join("memory.limit_in_bytes");
    let Some(text) = read_optional(&path)? else {
        return Ok(());
    };
    let current = text
        .trim()
        .parse::<u64>()
        .map_err(|_| CgroupError::BadContent {
            path: path.clone(),
            reason: format!("{:?} is not a number", text.trim()),
        })?;
    reorder_memory_writes(writes, current);
    Ok(())
}

/// A v1 hugetlb write redirected to the unified hierarchy (hybrid hosts whose hugetlb controller
/// is only in cgroup2).
pub(crate) fn hugetlb_write_as_v2(w: &Write) -> Write {
    let file = w
        .file
        .replace(".rsvd.limit_in_bytes", ".rsvd.max")
        .replace(".limit_in_bytes", ".max");
    let value = if w.value == "-1" {
        "max".to_string()
    } else {
        w.value.clone()
    };
    Write {
        controller: "",
        file,
        value,
        field: w.field,
        if_missing: w.if_missing.clone(),
    }
}

/// Copies cpuset.cpus and cpuset.mems down from each parent where empty, from the mount to `leaf`.
pub(crate) fn copy_cpuset_down(mountpoint: &Path, leaf: &Path) -> Result<(), CgroupError> {
    let Ok(rel) = leaf.strip_prefix(mountpoint) else {
        return Ok(());
    };
    let mut parent = mountpoint.to_path_buf();
    for comp in rel.components() {
        let dir = parent.join(comp);
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let mine = read_optional(&dir.join(file))?;
            if mine.as_deref().is_some_and(|s| s.trim().is_empty()) {
                if let Some(from_parent) = read_optional(&parent.join(file))? {
                    let v = from_parent.trim();
                    if !v.is_empty() {
                        write_file(&dir.join(file), v).map_err(|cause| CgroupError::Io {
                            op: "copying the parent's value into",
                            path: dir.join(file),
                            cause,
                        })?;
                    }
                }
            }
        }
        parent = dir;
    }
    Ok(())
}

/// v1 freezer: FROZEN (waiting until the kernel reports FROZEN) or THAWED.
pub(crate) fn freeze(dir: &Path, frozen: bool) -> Result<(), CgroupError> {
    let path = dir.join("freezer.state");
    let want = if frozen { "FROZEN" } else { "THAWED" };
    let set = |v: &str| {
        write_file(&path, v).map_err(|cause| CgroupError::Io {
            op: if frozen {
                "freezing via"
            } else {
                "thawing via"
            },
            path: path.clone(),
            cause,
        })
    };
    set(want)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut tries, mut since_ask) = (0u32, 0u32);
    loop {
        let state = read_optional(&path)?.unwrap_or_default();
        if state.trim() == want {
            return Ok(());
        }
        if Instant::now() >= deadline {
            if frozen {
                let _ = set("THAWED");
            }
            return Err(CgroupError::Timeout { path, state: want });
        }
        tries += 1;
        since_ask += 1;
        // FREEZING can stick when a task is in an uninterruptible state: ask again now and then.
        if since_ask == 50 {
            since_ask = 0;
            set(want)?;
        }
        sleep(Duration::from_millis(if tries < 20 { 1 } else { 10 }));
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests_common::render;
    use super::*;

    fn writes(json: &str) -> Result<Vec<String>, String> {
        let r: LinuxResources = serde_json::from_str(json).map_err(|e| format!("json: {e}"))?;
        v1_writes(&r)
            .map(|w| w.iter().map(render).collect())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn data_driven_writes() {
        // (resources JSON, expected writes "controller/file=value @field [if missing]")
        let cases: &[(&str, &[&str])] = &[
            ("{}", &[]),
            (
                r#"{"memory":{"limit":1048576,"reservation":524288,"swap":2097152,"swappiness":60,"disableOOMKiller":true,"useHierarchy":true,"kernel":1000000,"kernelTCP":2000000}}"#,
                &[
                    "memory/memory.limit_in_bytes=1048576 @memory.limit",
                    "memory/memory.memsw.limit_in_bytes=2097152 @memory.swap",
                    "memory/memory.soft_limit_in_bytes=524288 @memory.reservation",
                    "memory/memory.kmem.tcp.limit_in_bytes=2000000 @memory.kernelTCP",
                    "memory/memory.swappiness=60 @memory.swappiness",
                    "memory/memory.oom_control=1 @memory.disableOOMKiller",
                    "memory/memory.use_hierarchy=1 @memory.useHierarchy",
                ],
            ),
            (
                r#"{"memory":{"limit":-1}}"#,
                &[
                    "memory/memory.limit_in_bytes=-1 @memory.limit",
                    "memory/memory.memsw.limit_in_bytes=-1 @memory.swap [skip]",
                ],
            ),
            (
                r#"{"memory":{"limit":0,"swap":0,"disableOOMKiller":false,"useHierarchy":false}}"#,
                &["memory/memory.use_hierarchy=0 @memory.useHierarchy"],
            ),
            (
                r#"{"memory":{"limit":4096,"swap":-1}}"#,
                &[
                    "memory/memory.limit_in_bytes=4096 @memory.limit",
                    "memory/memory.memsw.limit_in_bytes=-1 @memory.swap",
                ],
            ),
            (
                r#"{"cpu":{"shares":1024,"quota":50000,"period":100000,"realtimeRuntime":950000,"realtimePeriod":1000000,"cpus":"0-1","mems":"0","idle":1,"burst":1000}}"#,
                &[
                    "cpuset/cpuset.cpus=0-1 @cpu.cpus",
                    "cpuset/cpuset.mems=0 @cpu.mems",
                    "cpu/cpu.rt_period_us=1000000 @cpu.realtimePeriod",
                    "cpu/cpu.rt_runtime_us=950000 @cpu.realtimeRuntime",
                    "cpu/cpu.shares=1024 @cpu.shares",
                    "cpu/cpu.cfs_period_us=100000 @cpu.period",
                    "cpu/cpu.cfs_quota_us=50000 @cpu.quota",
                    "cpu/cpu.cfs_burst_us=1000 @cpu.burst",
                    "cpu/cpu.idle=1 @cpu.idle",
                ],
            ),
            (
                r#"{"cpu":{"quota":-1,"cpus":""}}"#,
                &["cpu/cpu.cfs_quota_us=-1 @cpu.quota"],
            ),
            (r#"{"pids":{"limit":100}}"#, &["pids/pids.max=100 @pids.limit"]),
            (r#"{"pids":{"limit":0}}"#, &["pids/pids.max=max @pids.limit"]),
            (r#"{"pids":{"limit":-1}}"#, &["pids/pids.max=max @pids.limit"]),
            (
                r#"{"blockIO":{"weight":500,"leafWeight":300,
                    "weightDevice":[{"major":8,"minor":0,"weight":600,"leafWeight":200}],
                    "throttleReadBpsDevice":[{"major":8,"minor":0,"rate":1048576}],
                    "throttleWriteBpsDevice":[{"major":8,"minor":16,"rate":0}],
                    "throttleReadIOPSDevice":[{"major":8,"minor":0,"rate":100}],
                    "throttleWriteIOPSDevice":[{"major":8,"minor":0,"rate":200}]}}"#,
                &[
                    "blkio/blkio.bfq.weight=500 @blockIO.weight [else blkio.weight=500]",
                    "blkio/blkio.leaf_weight=300 @blockIO.leafWeight",
                    "blkio/blkio.bfq.weight_device=8:0 600 @blockIO.weightDevice [else blkio.weight_device=8:0 600]",
                    "blkio/blkio.leaf_weight_device=8:0 200 @blockIO.weightDevice",
                    "blkio/blkio.throttle.read_bps_device=8:0 1048576 @blockIO.throttleReadBpsDevice",
                    "blkio/blkio.throttle.write_bps_device=8:16 0 @blockIO.throttleWriteBpsDevice",
                    "blkio/blkio.throttle.read_iops_device=8:0 100 @blockIO.throttleReadIOPSDevice",
                    "blkio/blkio.throttle.write_iops_device=8:0 200 @blockIO.throttleWriteIOPSDevice",
                ],
            ),
            (
                r#"{"hugepageLimits":[{"pageSize":"2MB","limit":209715200},{"pageSize":"1GB","limit":-1}]}"#,
                &[
                    "hugetlb/hugetlb.2MB.limit_in_bytes=209715200 @hugepageLimits",
                    "hugetlb/hugetlb.2MB.rsvd.limit_in_bytes=209715200 @hugepageLimits [skip]",
                    "hugetlb/hugetlb.1GB.limit_in_bytes=-1 @hugepageLimits",
                    "hugetlb/hugetlb.1GB.rsvd.limit_in_bytes=-1 @hugepageLimits [skip]",
                ],
            ),
            (
                r#"{"network":{"classID":1048577,"priorities":[{"name":"eth0","priority":500},{"name":"lo","priority":1}]}}"#,
                &[
                    "net_cls/net_cls.classid=1048577 @network.classID",
                    "net_prio/net_prio.ifpriomap=eth0 500 @network.priorities",
                    "net_prio/net_prio.ifpriomap=lo 1 @network.priorities",
                ],
            ),
            (
                r#"{"rdma":{"mlx5_1":{"hcaHandles":3},"mlx4_0":{"hcaHandles":2,"hcaObjects":2000}}}"#,
                &[
                    "rdma/rdma.max=mlx4_0 hca_handle=2 hca_object=2000 @rdma",
                    "rdma/rdma.max=mlx5_1 hca_handle=3 @rdma",
                ],
            ),
            (
                r#"{"devices":[{"allow":false,"access":"rwm"},{"allow":true,"type":"c","major":1,"minor":3,"access":"rwm"},{"allow":false,"type":"b","major":8,"access":"w"}]}"#,
                &[
                    "devices/devices.deny=a @devices",
                    "devices/devices.deny=a @devices",
                    "devices/devices.allow=c 1:3 rwm @devices",
                    "devices/devices.deny=b 8:* w @devices",
                ],
            ),
            (r#"{"devices":[]}"#, &["devices/devices.deny=a @devices"]),
            (r#"{"unified":{}}"#, &[]),
            // Sections come out in a fixed order whatever the JSON order.
            (
                r#"{"pids":{"limit":5},"memory":{"limit":8192},"cpu":{"mems":"0"}}"#,
                &[
                    "cpuset/cpuset.mems=0 @cpu.mems",
                    "memory/memory.limit_in_bytes=8192 @memory.limit",
                    "pids/pids.max=5 @pids.limit",
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
                r#"{"memory":{"limit":1048576,"swap":524288}}"#,
                "linux.resources.memory.swap: memory+swap (524288) must be >= memory limit (1048576)",
            ),
            (
                r#"{"memory":{"limit":-2}}"#,
                "linux.resources.memory.limit: memory limit must be -1 (unlimited) or a number of bytes, got -2",
            ),
            (
                r#"{"memory":{"reservation":-5}}"#,
                "linux.resources.memory.reservation: memory reservation must be -1 (unlimited) or a number of bytes, got -5",
            ),
            (
                r#"{"memory":{"swap":-3}}"#,
                "linux.resources.memory.swap: memory+swap limit must be -1 (unlimited) or a number of bytes, got -3",
            ),
            (
                r#"{"memory":{"swappiness":101}}"#,
                "linux.resources.memory.swappiness: must be between 0 and 100, got 101",
            ),
            (
                r#"{"cpu":{"quota":500}}"#,
                "linux.resources.cpu.quota: must be -1 (unlimited) or at least 1000 microseconds, got 500",
            ),
            (
                r#"{"cpu":{"quota":-7}}"#,
                "linux.resources.cpu.quota: must be -1 (unlimited) or at least 1000 microseconds, got -7",
            ),
            (
                r#"{"cpu":{"quota":50000,"period":999}}"#,
                "linux.resources.cpu.period: must be between 1000 and 1000000 microseconds, got 999",
            ),
            (
                r#"{"cpu":{"period":2000000}}"#,
                "linux.resources.cpu.period: must be between 1000 and 1000000 microseconds, got 2000000",
            ),
            (
                r#"{"cpu":{"quota":10000,"burst":20000}}"#,
                "linux.resources.cpu.burst: burst (20000) must not exceed the quota (10000)",
            ),
            (
                r#"{"cpu":{"idle":2}}"#,
                "linux.resources.cpu.idle: must be 0 or 1, got 2",
            ),
            (
                r#"{"cpu":{"realtimeRuntime":-2}}"#,
                "linux.resources.cpu.realtimeRuntime: must be -1 (unlimited) or a number of microseconds, got -2",
            ),
            (
                r#"{"blockIO":{"weight":5}}"#,
                "linux.resources.blockIO.weight: must be between 10 and 1000, got 5",
            ),
            (
                r#"{"blockIO":{"throttleReadBpsDevice":[{"major":-1,"minor":0,"rate":1}]}}"#,
                "linux.resources.blockIO.throttleReadBpsDevice: invalid device -1:0",
            ),
            (
                r#"{"hugepageLimits":[{"pageSize":"2M","limit":1}]}"#,
                "linux.resources.hugepageLimits: invalid page size \"2M\" (expected e.g. \"2MB\", \"1GB\", \"64KB\")",
            ),
            (
                r#"{"hugepageLimits":[{"pageSize":"2MB","limit":-4}]}"#,
                "linux.resources.hugepageLimits: hugepage limit must be -1 (unlimited) or a number of bytes, got -4",
            ),
            (
                r#"{"unified":{"memory.high":"1G"}}"#,
                "linux.resources.unified: cgroup v2 settings cannot be applied: this host uses cgroup v1",
            ),
            (
                r#"{"devices":[{"allow":true,"type":"c","access":"x"}]}"#,
                "linux.resources.devices: rule 0: invalid access \"x\" (a combination of r, w and m)",
            ),
            (
                r#"{"network":{"priorities":[{"name":"","priority":1}]}}"#,
                "linux.resources.network.priorities: invalid interface name \"\"",
            ),
        ];
        for (json, want) in cases {
            assert_eq!(writes(json), Err(want.to_string()), "{json}");
        }
    }

    #[test]
    fn memory_swap_order() {
        let r: LinuxResources =
            serde_json::from_str(r#"{"memory":{"limit":1000000,"swap":2000000}}"#).unwrap();
        let order = |current: u64, r: &LinuxResources| -> Vec<String> {
            let mut w = v1_writes(r).unwrap();
            reorder_memory_writes(&mut w, current);
            w.iter().map(|w| w.file.clone()).collect()
        };
        let (mem, sw) = ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes");
        // Raising from a small limit: memsw first (new memsw 2000000 > current 500000).
        assert_eq!(order(500_000, &r), [sw, mem]);
        // Unlimited now (first apply): new memsw is below it → limit first.
        assert_eq!(order(9_223_372_036_854_771_712, &r), [mem, sw]);
        // Unlimited swap always goes first.
        let r2: LinuxResources =
            serde_json::from_str(r#"{"memory":{"limit":1000000,"swap":-1}}"#).unwrap();
        assert_eq!(order(9_223_372_036_854_771_712, &r2), [sw, mem]);
        // Only one of them: nothing to order.
        let r3: LinuxResources = serde_json::from_str(r#"{"memory":{"limit":1000000}}"#).unwrap();
        assert_eq!(order(0, &r3), [mem]);
    }

    #[test]
    fn hugetlb_to_v2() {
        let w = Write::new("hugetlb", "hugetlb.2MB.limit_in_bytes", -1, F_HUGEPAGES);
        assert_eq!(
            render(&hugetlb_write_as_v2(&w)),
            "hugetlb.2MB.max=max @hugepageLimits"
        );
        let w = Write::new(
            "hugetlb",
            "hugetlb.1GB.rsvd.limit_in_bytes",
            1073741824,
            F_HUGEPAGES,
        )
        .optional();
        assert_eq!(
            render(&hugetlb_write_as_v2(&w)),
            "hugetlb.1GB.rsvd.max=1073741824 @hugepageLimits [skip]"
        );
    }

    #[test]
    fn cpuset_copy_down_fills_empty_levels_only() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::write(root.join("cpuset.cpus"), "0-3\n").unwrap();
        std::fs::write(root.join("cpuset.mems"), "0\n").unwrap();
        let a = root.join("a");
        let leaf = a.join("b");
        std::fs::create_dir_all(&leaf).unwrap();
        std::fs::write(a.join("cpuset.cpus"), "\n").unwrap();
        std::fs::write(a.join("cpuset.mems"), "\n").unwrap();
        std::fs::write(leaf.join("cpuset.cpus"), "1\n").unwrap();
        std::fs::write(leaf.join("cpuset.mems"), "").unwrap();
        copy_cpuset_down(root, &leaf).unwrap();
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        assert_eq!(read(&a.join("cpuset.cpus")), "0-3");
        assert_eq!(read(&a.join("cpuset.mems")), "0");
        assert_eq!(read(&leaf.join("cpuset.cpus")), "1\n");
        assert_eq!(read(&leaf.join("cpuset.mems")), "0");
    }
}
