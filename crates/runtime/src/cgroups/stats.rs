//! Reading usage and limits from cgroup files (v1 and v2) into [`Stats`].

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{read_optional, CgroupError};

/// A container's resource usage. `None` = not available on this host (controller not mounted or
/// enabled, kernel too old), except for the limits where `None` means unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Memory in use, bytes (v1 memory.usage_in_bytes, v2 memory.current).
    pub memory_usage: Option<u64>,
    /// Peak memory use, bytes (v1 memory.max_usage_in_bytes, v2 memory.peak).
    pub memory_max_usage: Option<u64>,
    /// Memory limit, bytes; None = unlimited (or no memory controller).
    pub memory_limit: Option<u64>,
    /// Anonymous memory, bytes (v1 total_rss, v2 anon in memory.stat).
    pub memory_anon: Option<u64>,
    /// Page cache, bytes (v1 total_cache, v2 file in memory.stat).
    pub memory_file: Option<u64>,
    /// Page cache the kernel may reclaim first, bytes (v1 total_inactive_file, v2
    /// inactive_file in memory.stat): usage minus this is the kubelet's working set.
    #[serde(default)]
    pub memory_inactive_file: Option<u64>,
    /// Swap in use, bytes (v1 memsw usage minus usage, v2 memory.swap.current).
    pub swap_usage: Option<u64>,
    /// Processes killed by the OOM killer (v1 memory.oom_control, v2 memory.events "oom_kill").
    pub oom_kill: Option<u64>,
    /// Times the cgroup hit out-of-memory (v2 memory.events "oom"; v1 has no counter).
    pub oom_events: Option<u64>,
    /// CPU time used, nanoseconds.
    pub cpu_usage_ns: Option<u64>,
    /// CPU time in user mode, nanoseconds.
    pub cpu_user_ns: Option<u64>,
    /// CPU time in kernel mode, nanoseconds.
    pub cpu_system_ns: Option<u64>,
    /// Enforcement periods elapsed (cpu.stat nr_periods).
    pub cpu_periods: Option<u64>,
    /// Periods in which the cgroup was throttled (cpu.stat nr_throttled).
    pub cpu_throttled_periods: Option<u64>,
    /// Time throttled, nanoseconds.
    pub cpu_throttled_ns: Option<u64>,
    /// Processes and threads in the cgroup (pids.current).
    pub pids_current: Option<u64>,
    /// pids.max; None = max.
    pub pids_limit: Option<u64>,
}

/// USER_HZ, the unit of cpuacct.stat; 100 on every Linux ABI.
const USER_HZ: u64 = 100;

/// v1 reports "unlimited" as the largest page-aligned i64, v2 as "max".
const V1_UNLIMITED_ABOVE: u64 = 1 << 62;

/// Parses "key value" lines (memory.stat, cpu.stat, memory.events, memory.oom_control).
pub fn parse_flat_keyed(path: &Path, text: &str) -> Result<BTreeMap<String, u64>, CgroupError> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(k), Some(v)) = (it.next(), it.next()) else {
            continue;
        };
        let v = v.parse::<u64>().map_err(|_| CgroupError::BadContent {
            path: path.to_path_buf(),
            reason: format!("value of {k} is not a number: {v:?}"),
        })?;
        out.insert(k.to_string(), v);
    }
    Ok(out)
}

/// Parses a single number, or "max" (→ None, as do v1's huge "unlimited" values).
pub fn parse_limit(path: &Path, text: &str) -> Result<Option<u64>, CgroupError> {
    let t = text.trim();
    if t == "max" {
        return Ok(None);
    }
    let v = parse_u64(path, t)?;
    Ok(if v > V1_UNLIMITED_ABOVE {
        None
    } else {
        Some(v)
    })
}

fn parse_u64(path: &Path, text: &str) -> Result<u64, CgroupError> {
    text.trim()
        .parse::<u64>()
        .map_err(|_| CgroupError::BadContent {
            path: path.to_path_buf(),
            reason: format!("{:?} is not a number", text.trim()),
        })
}

fn read_u64(dir: &Path, file: &str) -> Result<Option<u64>, CgroupError> {
    let path = dir.join(file);
    read_optional(&path)?
        .map(|t| parse_u64(&path, &t))
        .transpose()
}

fn read_limit(dir: &Path, file: &str) -> Result<Option<u64>, CgroupError> {
    let path = dir.join(file);
    Ok(match read_optional(&path)? {
        Some(t) => parse_limit(&path, &t)?,
        None => None,
    })
}

fn read_keyed(dir: &Path, file: &str) -> Result<Option<BTreeMap<String, u64>>, CgroupError> {
    let path = dir.join(file);
    read_optional(&path)?
        .map(|t| parse_flat_keyed(&path, &t))
        .transpose()
}

/// Stats from v1 controller directories (any may be absent).
pub(crate) fn read_v1(
    memory: Option<&Path>,
    cpu: Option<&Path>,
    cpuacct: Option<&Path>,
    pids: Option<&Path>,
) -> Result<Stats, CgroupError> {
    let mut s = Stats::default();
    if let Some(d) = memory {
        s.memory_usage = read_u64(d, "memory.usage_in_bytes")?;
        s.memory_max_usage = read_u64(d, "memory.max_usage_in_bytes")?;
        s.memory_limit = read_limit(d, "memory.limit_in_bytes")?;
        if let Some(st) = read_keyed(d, "memory.stat")? {
            s.memory_anon = st.get("total_rss").or(st.get("rss")).copied();
            s.memory_file = st.get("total_cache").or(st.get("cache")).copied();
            s.memory_inactive_file = st
                .get("total_inactive_file")
                .or(st.get("inactive_file"))
                .copied();
            s.swap_usage = st.get("total_swap").or(st.get("swap")).copied();
        }
        if s.swap_usage.is_none() {
            if let (Some(memsw), Some(usage)) =
                (read_u64(d, "memory.memsw.usage_in_bytes")?, s.memory_usage)
            {
                s.swap_usage = Some(memsw.saturating_sub(usage));
            }
        }
        if let Some(oc) = read_keyed(d, "memory.oom_control")? {
            s.oom_kill = oc.get("oom_kill").copied();
        }
    }
    if let Some(d) = cpuacct {
        s.cpu_usage_ns = read_u64(d, "cpuacct.usage")?;
        s.cpu_user_ns = read_u64(d, "cpuacct.usage_user")?;
        s.cpu_system_ns = read_u64(d, "cpuacct.usage_sys")?;
        if s.cpu_user_ns.is_none() || s.cpu_system_ns.is_none() {
            if let Some(st) = read_keyed(d, "cpuacct.stat")? {
                let ns = |ticks: u64| ticks.saturating_mul(1_000_000_000 / USER_HZ);
                s.cpu_user_ns = s.cpu_user_ns.or(st.get("user").copied().map(ns));
                s.cpu_system_ns = s.cpu_system_ns.or(st.get("system").copied().map(ns));
            }
        }
    }
    if let Some(d) = cpu {
        if let Some(st) = read_keyed(d, "cpu.stat")? {
            s.cpu_periods = st.get("nr_periods").copied();
            s.cpu_throttled_periods = st.get("nr_throttled").copied();
            s.cpu_throttled_ns = st.get("throttled_time").copied();
        }
    }
    if let Some(d) = pids {
        s.pids_current = read_u64(d, "pids.current")?;
        s.pids_limit = read_limit(d, "pids.max")?;
    }
    Ok(s)
}

/// CPU and memory usage only, from v1 controller directories.
pub(crate) fn read_v1_usage(
    memory: Option<&Path>,
    cpuacct: Option<&Path>,
) -> Result<Stats, CgroupError> {
    let mut s = Stats::default();
    if let Some(d) = cpuacct {
        s.cpu_usage_ns = read_u64(d, "cpuacct.usage")?;
    }
    if let Some(d) = memory {
        s.memory_usage = read_u64(d, "memory.usage_in_bytes")?;
        if let Some(st) = read_keyed(d, "memory.stat")? {
            s.memory_file = st.get("total_cache").or(st.get("cache")).copied();
            s.memory_inactive_file = st
                .get("total_inactive_file")
                .or(st.get("inactive_file"))
                .copied();
        }
    }
    Ok(s)
}

/// CPU and memory usage only, from a v2 cgroup directory.
pub(crate) fn read_v2_usage(d: &Path) -> Result<Stats, CgroupError> {
    let mut s = Stats {
        memory_usage: read_u64(d, "memory.current")?,
        ..Stats::default()
    };
    if let Some(st) = read_keyed(d, "memory.stat")? {
        s.memory_file = st.get("file").copied();
        s.memory_inactive_file = st.get("inactive_file").copied();
    }
    if let Some(st) = read_keyed(d, "cpu.stat")? {
        s.cpu_usage_ns = st.get("usage_usec").map(|v| v.saturating_mul(1000));
    }
    Ok(s)
}

/// Stats from a v2 cgroup directory.
pub(crate) fn read_v2(d: &Path) -> Result<Stats, CgroupError> {
    let mut s = Stats {
        memory_usage: read_u64(d, "memory.current")?,
        memory_max_usage: read_u64(d, "memory.peak")?,
        memory_limit: read_limit(d, "memory.max")?,
        swap_usage: read_u64(d, "memory.swap.current")?,
        pids_current: read_u64(d, "pids.current")?,
        pids_limit: read_limit(d, "pids.max")?,
        ..Stats::default()
    };
    if let Some(st) = read_keyed(d, "memory.stat")? {
        s.memory_anon = st.get("anon").copied();
        s.memory_file = st.get("file").copied();
        s.memory_inactive_file = st.get("inactive_file").copied();
    }
    if let Some(ev) = read_keyed(d, "memory.events")? {
        s.oom_kill = ev.get("oom_kill").copied();
        s.oom_events = ev.get("oom").copied();
    }
    if let Some(st) = read_keyed(d, "cpu.stat")? {
        let us = |k: &str| st.get(k).map(|v| v.saturating_mul(1000));
        s.cpu_usage_ns = us("usage_usec");
        s.cpu_user_ns = us("user_usec");
        s.cpu_system_ns = us("system_usec");
        s.cpu_periods = st.get("nr_periods").copied();
        s.cpu_throttled_periods = st.get("nr_throttled").copied();
        s.cpu_throttled_ns = us("throttled_usec");
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn flat_keyed_and_limits() {
        let p = Path::new("/x/memory.stat");
        let m = parse_flat_keyed(p, "anon 4096\nfile 8192\n\nweird\n").unwrap();
        assert_eq!(m["anon"], 4096);
        assert_eq!(m["file"], 8192);
        assert_eq!(m.len(), 2);
        let e = parse_flat_keyed(p, "anon x\n").unwrap_err().to_string();
        assert_eq!(
            e,
            "parsing /x/memory.stat: value of anon is not a number: \"x\""
        );
        assert_eq!(parse_limit(p, "max\n").unwrap(), None);
        assert_eq!(parse_limit(p, "9223372036854771712\n").unwrap(), None);
        assert_eq!(parse_limit(p, "67108864\n").unwrap(), Some(67108864));
        assert!(parse_limit(p, "-1").is_err());
    }

    fn write_all(dir: &Path, files: &[(&str, &str)]) {
        for (f, c) in files {
            fs::write(dir.join(f), c).unwrap();
        }
    }

    #[test]
    fn v1_files() {
        let tmp = tempfile::tempdir().unwrap();
        let (mem, cpu, acct, pids) = (
            tmp.path().join("memory"),
            tmp.path().join("cpu"),
            tmp.path().join("cpuacct"),
            tmp.path().join("pids"),
        );
        for d in [&mem, &cpu, &acct, &pids] {
            fs::create_dir(d).unwrap();
        }
        write_all(
            &mem,
            &[
                ("memory.usage_in_bytes", "1000\n"),
                ("memory.max_usage_in_bytes", "2000\n"),
                ("memory.limit_in_bytes", "9223372036854771712\n"),
                ("memory.memsw.usage_in_bytes", "1500\n"),
                (
                    "memory.stat",
                    "cache 10\nrss 20\ntotal_cache 100\ntotal_rss 200\n",
                ),
                (
                    "memory.oom_control",
                    "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
                ),
            ],
        );
        write_all(
            &acct,
            &[
                ("cpuacct.usage", "5000000000\n"),
                ("cpuacct.stat", "user 300\nsystem 200\n"),
            ],
        );
        write_all(
            &cpu,
            &[(
                "cpu.stat",
                "nr_periods 10\nnr_throttled 4\nthrottled_time 123456\n",
            )],
        );
        write_all(&pids, &[("pids.current", "3\n"), ("pids.max", "64\n")]);
        let s = read_v1(Some(&mem), Some(&cpu), Some(&acct), Some(&pids)).unwrap();
        assert_eq!(
            s,
            Stats {
                memory_usage: Some(1000),
                memory_max_usage: Some(2000),
                memory_limit: None,
                memory_anon: Some(200),
                memory_file: Some(100),
                memory_inactive_file: None,
                swap_usage: Some(500),
                oom_kill: Some(3),
                oom_events: None,
                cpu_usage_ns: Some(5_000_000_000),
                cpu_user_ns: Some(3_000_000_000),
                cpu_system_ns: Some(2_000_000_000),
                cpu_periods: Some(10),
                cpu_throttled_periods: Some(4),
                cpu_throttled_ns: Some(123456),
                pids_current: Some(3),
                pids_limit: Some(64),
            }
        );
        // usage_user/usage_sys win over the tick counts.
        write_all(
            &acct,
            &[("cpuacct.usage_user", "7\n"), ("cpuacct.usage_sys", "8\n")],
        );
        let s = read_v1(None, None, Some(&acct), None).unwrap();
        assert_eq!((s.cpu_user_ns, s.cpu_system_ns), (Some(7), Some(8)));
        assert_eq!(s.memory_usage, None);
    }

    #[test]
    fn usage_reads_cpu_memory_and_inactive_cache_only() {
        let tmp = tempfile::tempdir().unwrap();
        let (mem, acct) = (tmp.path().join("memory"), tmp.path().join("cpuacct"));
        fs::create_dir_all(&mem).unwrap();
        fs::create_dir_all(&acct).unwrap();
        write_all(
            &mem,
            &[
                ("memory.usage_in_bytes", "10000\n"),
                (
                    "memory.stat",
                    "cache 4000\ninactive_file 100\ntotal_cache 5000\ntotal_inactive_file 3000\n",
                ),
            ],
        );
        write_all(&acct, &[("cpuacct.usage", "42\n")]);
        let s = read_v1_usage(Some(&mem), Some(&acct)).unwrap();
        assert_eq!(
            (
                s.cpu_usage_ns,
                s.memory_usage,
                s.memory_inactive_file,
                s.pids_current
            ),
            (Some(42), Some(10000), Some(3000), None)
        );
        let d = tmp.path().join("v2");
        fs::create_dir_all(&d).unwrap();
        write_all(
            &d,
            &[
                ("memory.current", "8192\n"),
                ("memory.stat", "file 4096\ninactive_file 1024\n"),
                ("cpu.stat", "usage_usec 7\nuser_usec 5\n"),
            ],
        );
        let s = read_v2_usage(&d).unwrap();
        assert_eq!(
            (s.cpu_usage_ns, s.memory_usage, s.memory_inactive_file),
            (Some(7000), Some(8192), Some(1024))
        );
    }

    #[test]
    fn v2_files() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        write_all(
            d,
            &[
                ("memory.current", "4096\n"),
                ("memory.peak", "8192\n"),
                ("memory.max", "max\n"),
                ("memory.swap.current", "0\n"),
                ("memory.stat", "anon 1024\nfile 2048\ninactive_file 1536\nkernel 512\n"),
                ("memory.events", "low 0\nhigh 0\nmax 5\noom 2\noom_kill 1\noom_group_kill 0\n"),
                (
                    "cpu.stat",
                    "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 7\nnr_throttled 2\nthrottled_usec 90\n",
                ),
                ("pids.current", "2\n"),
                ("pids.max", "max\n"),
            ],
        );
        let s = read_v2(d).unwrap();
        assert_eq!(
            s,
            Stats {
                memory_usage: Some(4096),
                memory_max_usage: Some(8192),
                memory_limit: None,
                memory_anon: Some(1024),
                memory_file: Some(2048),
                memory_inactive_file: Some(1536),
                swap_usage: Some(0),
                oom_kill: Some(1),
                oom_events: Some(2),
                cpu_usage_ns: Some(1_500_000),
                cpu_user_ns: Some(1_000_000),
                cpu_system_ns: Some(500_000),
                cpu_periods: Some(7),
                cpu_throttled_periods: Some(2),
                cpu_throttled_ns: Some(90_000),
                pids_current: Some(2),
                pids_limit: None,
            }
        );
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["memory_usage"], 4096);
        assert!(json["pids_limit"].is_null());
        fs::write(d.join("pids.current"), "lots\n").unwrap();
        let e = read_v2(d).unwrap_err().to_string();
        assert!(e.ends_with("pids.current: \"lots\" is not a number"), "{e}");
    }
}
