//! The node's resource usage, as the kubelet (with cAdvisor) measures it: a sampler reads
//! the node's CPU and memory, each pod's cgroup and each running container's every
//! housekeeping interval (`--housekeeping-interval`), and keeps the last two readings of
//! each. The kubelet API serves them as `/metrics/resource` (the cumulative counters with
//! their timestamps, in Prometheus' text format: what the server's metrics pipeline
//! scrapes) and `/stats/summary` (stats/v1alpha1, with `usageNanoCores` over the window
//! between the two readings).
//!
//! CPU is the cgroup's cumulative usage (v1 `cpuacct.usage`, v2 `cpu.stat usage_usec`);
//! memory is the working set, usage less inactive page cache (v1 `memory.usage_in_bytes`
//! − `total_inactive_file`, v2 `memory.current` − `inactive_file`), what the kubelet
//! evicts on and what `kubectl top` shows.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::node::k8s_time_of;
use crate::pods::Manager;
use crate::{podcgroup, podspec};

/// One reading of a cgroup (or of the node).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reading {
    /// When it was taken, ns since the epoch.
    pub at: i128,
    /// Cumulative CPU time, ns.
    pub cpu_ns: u64,
    /// Memory in use, bytes.
    pub usage: u64,
    /// The working set, bytes.
    pub working_set: u64,
}

/// The last two readings of one source.
#[derive(Clone, Copy, Debug)]
pub struct Series {
    pub last: Reading,
    pub prev: Option<Reading>,
}

impl Series {
    fn new(r: Reading) -> Series {
        Series {
            last: r,
            prev: None,
        }
    }
    /// Records a reading; a counter that went backwards (a new cgroup by the same key)
    /// starts the series again.
    fn push(&mut self, r: Reading) {
        self.prev = (r.cpu_ns >= self.last.cpu_ns && r.at > self.last.at).then_some(self.last);
        self.last = r;
    }
    /// CPU cores in use over the window between the readings, in nanocores.
    pub fn nano_cores(&self) -> Option<u64> {
        let p = self.prev?;
        let dt = (self.last.at - p.at).max(1) as f64;
        Some(((self.last.cpu_ns - p.cpu_ns) as f64 / dt * 1e9).round() as u64)
    }
}

/// A container's readings.
#[derive(Clone, Debug)]
pub struct ContainerStats {
    pub name: String,
    /// When its process started, ns since the epoch.
    pub start: i128,
    pub series: Series,
}

/// A pod's readings: its cgroup's and its running containers'.
#[derive(Clone, Debug)]
pub struct PodStats {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub series: Option<Series>,
    pub containers: Vec<ContainerStats>,
}

#[derive(Default)]
struct State {
    node: Option<Series>,
    /// By pod UID.
    pods: BTreeMap<String, PodStats>,
    /// By container ID.
    containers: HashMap<String, Series>,
    /// Readings that failed in the last cycle (`resource_scrape_error`).
    errors: usize,
}

/// The sampler: one cycle every housekeeping interval, on a thread of its own.
pub struct Sampler {
    state: Mutex<State>,
    /// Found once and reused every cycle.
    found: Mutex<Found>,
    pub interval: Duration,
}

/// What a cycle would otherwise look up again: the cgroup hierarchy, each pod's cgroup and
/// each running container's (with its start).
#[derive(Default)]
struct Found {
    hierarchy: Option<runtime::cgroups::Hierarchy>,
    pods: HashMap<String, runtime::cgroups::Cgroup>,
    containers: HashMap<String, (runtime::cgroups::Cgroup, i128)>,
}

fn working_set(s: &runtime::cgroups::Stats) -> u64 {
    s.memory_usage
        .unwrap_or(0)
        .saturating_sub(s.memory_inactive_file.unwrap_or(0))
}

fn reading(at: i128, s: &runtime::cgroups::Stats) -> Reading {
    Reading {
        at,
        cpu_ns: s.cpu_usage_ns.unwrap_or(0),
        usage: s.memory_usage.unwrap_or(0),
        working_set: working_set(s),
    }
}

fn meminfo() -> HashMap<String, u64> {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, rest) = l.split_once(':')?;
            let kib: u64 = rest.split_whitespace().next()?.parse().ok()?;
            Some((k.to_string(), kib * 1024))
        })
        .collect()
}

/// The host's busy CPU time, ns (all CPUs, idle and iowait excluded).
fn host_cpu_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().next() else {
        return 0;
    };
    let busy: u64 = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse::<u64>().ok())
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    busy * (1_000_000_000 / hz)
}

fn node_reading(at: i128) -> Reading {
    let mem = meminfo();
    let total = mem.get("MemTotal").copied().unwrap_or(0);
    let avail = mem.get("MemAvailable").copied().unwrap_or(0);
    let free = mem.get("MemFree").copied().unwrap_or(0);
    Reading {
        at,
        cpu_ns: host_cpu_ns(),
        usage: total.saturating_sub(free),
        working_set: total.saturating_sub(avail),
    }
}

impl Sampler {
    pub fn new(interval: Duration) -> Sampler {
        Sampler {
            state: Mutex::new(State::default()),
            found: Mutex::new(Found::default()),
            interval,
        }
    }

    /// Samples every interval until the manager is dropped.
    pub fn start(m: &Arc<Manager>) {
        let weak = Arc::downgrade(m);
        std::thread::Builder::new()
            .name("stats".into())
            .spawn(move || loop {
                let Some(m) = weak.upgrade() else { return };
                m.stats.sample(&m);
                let pause = m.stats.interval;
                drop(m);
                std::thread::sleep(pause);
            })
            .expect("spawning the stats thread");
    }

    /// One cycle: the node, every pod's cgroup, every running container of a pod.
    pub fn sample(&self, m: &Manager) {
        let at = timefmt::now_nanos();
        let node = node_reading(at);
        let pods: HashMap<String, Arc<k8s_openapi::api::core::v1::Pod>> = m
            .pods()
            .into_iter()
            .filter_map(|p| Some((p.metadata.uid.clone()?, p)))
            .collect();
        let mut found = self.found.lock().unwrap();
        if found.hierarchy.is_none() {
            found.hierarchy = runtime::cgroups::Hierarchy::detect().ok();
        }
        let mut errors = 0;
        // Pod cgroups.
        let mut pod_readings: HashMap<String, Reading> = HashMap::new();
        found.pods.retain(|uid, _| pods.contains_key(uid));
        for (uid, p) in &pods {
            let cg = match found.pods.get(uid) {
                Some(cg) => cg.clone(),
                None => {
                    let Some(h) = &found.hierarchy else { break };
                    let path = podcgroup::path(&m.cfg.cgroup_root, podspec::qos_class(p), uid);
                    match runtime::cgroups::Cgroup::new(h, Some(&path), uid) {
                        Ok(cg) => {
                            found.pods.insert(uid.clone(), cg.clone());
                            cg
                        }
                        Err(_) => {
                            errors += 1;
                            continue;
                        }
                    }
                }
            };
            match cg.usage() {
                Ok(s) if s.cpu_usage_ns.is_some() => {
                    pod_readings.insert(uid.clone(), reading(timefmt::now_nanos(), &s));
                }
                // Not made yet, or gone with its pod.
                Ok(_) | Err(_) => {
                    found.pods.remove(uid);
                }
            }
        }
        // Running containers, grouped by pod.
        let mut containers: BTreeMap<String, Vec<(String, String, i128, Reading)>> =
            BTreeMap::new();
        let mut running = std::collections::HashSet::new();
        for c in m.engine.list(false, false) {
            let (Some(uid), Some(name)) = (
                c.labels.get(podspec::LABEL_POD_UID),
                c.labels.get(podspec::LABEL_CONTAINER_NAME),
            ) else {
                continue;
            };
            if !pods.contains_key(uid) {
                continue;
            }
            running.insert(c.id.clone());
            let (cg, start) = match found.containers.get(&c.id) {
                Some(f) => f.clone(),
                None => match m.engine.container_cgroup(&c.id) {
                    Ok(Some((cg, started))) => {
                        let start = timefmt::parse_rfc3339(&started).unwrap_or(0);
                        found.containers.insert(c.id.clone(), (cg.clone(), start));
                        (cg, start)
                    }
                    Ok(None) => continue,
                    Err(_) => {
                        errors += 1;
                        continue;
                    }
                },
            };
            match cg.usage() {
                Ok(s) if s.cpu_usage_ns.is_some() => {
                    containers.entry(uid.clone()).or_default().push((
                        c.id.clone(),
                        name.clone(),
                        start,
                        reading(timefmt::now_nanos(), &s),
                    ))
                }
                _ => {
                    // It stopped since the list; a restart has a cgroup of its own.
                    found.containers.remove(&c.id);
                }
            }
        }
        found.containers.retain(|id, _| running.contains(id));
        drop(found);
        let mut st = self.state.lock().unwrap();
        match &mut st.node {
            Some(s) => s.push(node),
            None => st.node = Some(Series::new(node)),
        }
        let mut next_containers = HashMap::new();
        let mut next_pods = BTreeMap::new();
        for (uid, p) in &pods {
            let (Some(name), Some(ns)) = (&p.metadata.name, &p.metadata.namespace) else {
                continue;
            };
            let series = pod_readings.get(uid).map(|r| {
                let mut s = st
                    .pods
                    .get(uid)
                    .and_then(|o| o.series)
                    .unwrap_or(Series::new(*r));
                if s.last != *r {
                    s.push(*r);
                }
                s
            });
            let mut cs = Vec::new();
            for (id, cname, start, r) in containers.remove(uid).unwrap_or_default() {
                let s = match st.containers.get(&id) {
                    Some(old) => {
                        let mut s = *old;
                        s.push(r);
                        s
                    }
                    None => Series::new(r),
                };
                next_containers.insert(id, s);
                cs.push(ContainerStats {
                    name: cname,
                    start,
                    series: s,
                });
            }
            cs.sort_by(|a, b| a.name.cmp(&b.name));
            next_pods.insert(
                uid.clone(),
                PodStats {
                    namespace: ns.clone(),
                    name: name.clone(),
                    uid: uid.clone(),
                    series,
                    containers: cs,
                },
            );
        }
        st.pods = next_pods;
        st.containers = next_containers;
        st.errors = errors;
    }

    /// The node's and every pod's last readings.
    pub fn snapshot(&self) -> (Option<Series>, Vec<PodStats>) {
        let st = self.state.lock().unwrap();
        (st.node, st.pods.values().cloned().collect())
    }

    /// `/metrics/resource`: the kubelet's resource metrics in Prometheus' text format.
    pub fn prometheus(&self) -> String {
        let st = self.state.lock().unwrap();
        render_prometheus(st.node.as_ref(), st.pods.values(), st.errors)
    }

    /// `/stats/summary`: the kubelet's Summary (stats/v1alpha1).
    pub fn summary(&self, node_name: &str) -> Value {
        let st = self.state.lock().unwrap();
        let cpu = |s: &Series| {
            let mut v = json!({"time": k8s_time_of(s.last.at),
                "usageCoreNanoSeconds": s.last.cpu_ns});
            if let Some(n) = s.nano_cores() {
                v["usageNanoCores"] = json!(n);
            }
            v
        };
        let memory = |s: &Series| {
            json!({"time": k8s_time_of(s.last.at), "usageBytes": s.last.usage,
                "workingSetBytes": s.last.working_set})
        };
        let mut node = json!({"nodeName": node_name});
        if let Some(s) = &st.node {
            node["cpu"] = cpu(s);
            node["memory"] = memory(s);
            let mem = meminfo();
            node["memory"]["availableBytes"] = json!(mem.get("MemAvailable").copied());
            node["startTime"] = json!(k8s_time_of(boot_time()));
        }
        let pods: Vec<Value> = st
            .pods
            .values()
            .map(|p| {
                let mut v = json!({
                    "podRef": {"name": p.name, "namespace": p.namespace, "uid": p.uid},
                    "containers": p.containers.iter().map(|c| json!({
                        "name": c.name,
                        "startTime": k8s_time_of(c.start),
                        "cpu": cpu(&c.series),
                        "memory": memory(&c.series),
                    })).collect::<Vec<_>>(),
                });
                if let Some(s) = &p.series {
                    v["cpu"] = cpu(s);
                    v["memory"] = memory(s);
                }
                v
            })
            .collect();
        json!({"node": node, "pods": pods})
    }
}

/// When the host booted, ns since the epoch.
fn boot_time() -> i128 {
    std::fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse::<i128>().ok())
        .unwrap_or(0)
        * 1_000_000_000
}

/// A label value in Prometheus' text format.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The families and their help texts, as the kubelet serves them.
const FAMILIES: &[(&str, &str, &str)] = &[
    (
        "container_cpu_usage_seconds_total",
        "counter",
        "[STABLE] Cumulative cpu time consumed by the container in core-seconds",
    ),
    (
        "container_memory_working_set_bytes",
        "gauge",
        "[STABLE] Current working set of the container in bytes",
    ),
    (
        "container_start_time_seconds",
        "gauge",
        "[STABLE] Start time of the container since unix epoch in seconds",
    ),
    (
        "node_cpu_usage_seconds_total",
        "counter",
        "[STABLE] Cumulative cpu time consumed by the node in core-seconds",
    ),
    (
        "node_memory_working_set_bytes",
        "gauge",
        "[STABLE] Current working set of the node in bytes",
    ),
    (
        "pod_cpu_usage_seconds_total",
        "counter",
        "[STABLE] Cumulative cpu time consumed by the pod in core-seconds",
    ),
    (
        "pod_memory_working_set_bytes",
        "gauge",
        "[STABLE] Current working set of the pod in bytes",
    ),
    (
        "resource_scrape_error",
        "gauge",
        "[STABLE] 1 if there was an error while getting container metrics, 0 otherwise",
    ),
];

fn render_prometheus<'a>(
    node: Option<&Series>,
    pods: impl Iterator<Item = &'a PodStats> + Clone,
    errors: usize,
) -> String {
    let ms = |at: i128| at / 1_000_000;
    let secs = |ns: u64| ns as f64 / 1e9;
    let mut out = String::new();
    for (name, kind, help) in FAMILIES {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for p in pods.clone() {
            let (ns, pod) = (escape(&p.namespace), escape(&p.name));
            match *name {
                "container_cpu_usage_seconds_total"
                | "container_memory_working_set_bytes"
                | "container_start_time_seconds" => {
                    for c in &p.containers {
                        let r = &c.series.last;
                        let v = match *name {
                            "container_cpu_usage_seconds_total" => secs(r.cpu_ns),
                            "container_memory_working_set_bytes" => r.working_set as f64,
                            _ => c.start as f64 / 1e9,
                        };
                        let _ = writeln!(
                            out,
                            "{name}{{container=\"{}\",namespace=\"{ns}\",pod=\"{pod}\"}} {v} {}",
                            escape(&c.name),
                            ms(r.at)
                        );
                    }
                }
                "pod_cpu_usage_seconds_total" | "pod_memory_working_set_bytes" => {
                    if let Some(s) = &p.series {
                        let v = if *name == "pod_cpu_usage_seconds_total" {
                            secs(s.last.cpu_ns)
                        } else {
                            s.last.working_set as f64
                        };
                        let _ = writeln!(
                            out,
                            "{name}{{namespace=\"{ns}\",pod=\"{pod}\"}} {v} {}",
                            ms(s.last.at)
                        );
                    }
                }
                _ => {}
            }
        }
        match (*name, node) {
            ("node_cpu_usage_seconds_total", Some(s)) => {
                let _ = writeln!(out, "{name} {} {}", secs(s.last.cpu_ns), ms(s.last.at));
            }
            ("node_memory_working_set_bytes", Some(s)) => {
                let _ = writeln!(
                    out,
                    "{name} {} {}",
                    s.last.working_set as f64,
                    ms(s.last.at)
                );
            }
            ("resource_scrape_error", _) => {
                let _ = writeln!(out, "{name} {}", u8::from(errors > 0));
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(at_s: i128, cpu_ms: u64, ws: u64) -> Reading {
        Reading {
            at: at_s * 1_000_000_000,
            cpu_ns: cpu_ms * 1_000_000,
            usage: ws + 10,
            working_set: ws,
        }
    }

    #[test]
    fn rate_over_the_window_between_two_readings() {
        let mut s = Series::new(r(100, 1_000, 5));
        assert_eq!(s.nano_cores(), None);
        // 500 ms of CPU in 2 s: a quarter of a core.
        s.push(r(102, 1_500, 5));
        assert_eq!(s.nano_cores(), Some(250_000_000));
        // A counter that went back (a new cgroup) starts over.
        s.push(r(104, 10, 5));
        assert_eq!(s.nano_cores(), None);
        s.push(r(105, 1_010, 5));
        assert_eq!(s.nano_cores(), Some(1_000_000_000));
    }

    #[test]
    fn working_set_leaves_out_inactive_page_cache() {
        let st = runtime::cgroups::Stats {
            memory_usage: Some(10_000),
            memory_inactive_file: Some(3_000),
            cpu_usage_ns: Some(7),
            ..Default::default()
        };
        let rd = reading(1, &st);
        assert_eq!((rd.usage, rd.working_set, rd.cpu_ns), (10_000, 7_000, 7));
    }

    #[test]
    fn prometheus_text_as_the_kubelet_serves_it() {
        let pod = PodStats {
            namespace: "default".into(),
            name: "we\"b".into(),
            uid: "u1".into(),
            series: Some(Series::new(r(100, 2_500, 4096))),
            containers: vec![ContainerStats {
                name: "app".into(),
                start: 90 * 1_000_000_000,
                series: Series::new(r(100, 2_000, 1024)),
            }],
        };
        let text = render_prometheus(
            Some(&Series::new(r(100, 9_000, 1 << 20))),
            [&pod].into_iter(),
            0,
        );
        for line in [
            "# TYPE container_cpu_usage_seconds_total counter",
            "container_cpu_usage_seconds_total{container=\"app\",namespace=\"default\",pod=\"we\\\"b\"} 2 100000",
            "container_memory_working_set_bytes{container=\"app\",namespace=\"default\",pod=\"we\\\"b\"} 1024 100000",
            "container_start_time_seconds{container=\"app\",namespace=\"default\",pod=\"we\\\"b\"} 90 100000",
            "pod_cpu_usage_seconds_total{namespace=\"default\",pod=\"we\\\"b\"} 2.5 100000",
            "pod_memory_working_set_bytes{namespace=\"default\",pod=\"we\\\"b\"} 4096 100000",
            "node_cpu_usage_seconds_total 9 100000",
            "node_memory_working_set_bytes 1048576 100000",
            "resource_scrape_error 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\nnot in\n{text}");
        }
    }
}
