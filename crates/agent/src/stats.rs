//! The kubelet's `/stats/summary` (stats/v1alpha1 Summary): the node's CPU and memory from
//! /proc, and each pod's containers from their cgroups through the engine. CPU rates
//! (`usageNanoCores`) are taken between this request's sample and the previous one.

use std::collections::HashMap;

use serde_json::{json, Value};

use crate::node::k8s_now;
use crate::pods::Manager;

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
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let busy: u64 = f
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| *v)
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    busy * (1_000_000_000 / hz)
}

/// A CPU block: cumulative time, and the rate since the previous sample of `key`.
fn cpu(m: &Manager, key: &str, total_ns: u64) -> Value {
    let now = timefmt::now_nanos();
    let prev = m
        .stats_prev
        .lock()
        .unwrap()
        .insert(key.to_string(), (now, total_ns));
    let mut v = json!({"time": k8s_now(), "usageCoreNanoSeconds": total_ns});
    if let Some((t, c)) = prev {
        let dt = (now - t).max(1) as f64;
        if total_ns >= c {
            v["usageNanoCores"] = json!(((total_ns - c) as f64 / dt * 1e9) as u64);
        }
    }
    v
}

pub fn summary(m: &Manager) -> Value {
    let mem = meminfo();
    let total = mem.get("MemTotal").copied().unwrap_or(0);
    let avail = mem.get("MemAvailable").copied().unwrap_or(0);
    let free = mem.get("MemFree").copied().unwrap_or(0);
    let node = json!({
        "nodeName": m.cfg.node_name,
        "cpu": cpu(m, "node", host_cpu_ns()),
        "memory": {"time": k8s_now(), "availableBytes": avail, "usageBytes": total - free,
            "workingSetBytes": total - avail},
    });
    let mut pods = Vec::new();
    for p in m.pods() {
        let (Some(name), Some(ns), Some(uid)) = (
            p.metadata.name.clone(),
            p.metadata.namespace.clone(),
            p.metadata.uid.clone(),
        ) else {
            continue;
        };
        let mut containers = Vec::new();
        let (mut pod_cpu, mut pod_mem) = (0u64, 0u64);
        for c in p.spec.iter().flat_map(|s| s.containers.iter()) {
            let Some(id) = m.container_id(&ns, &name, &c.name, false) else {
                continue;
            };
            if !m.engine.is_running(&id) {
                continue;
            }
            let Ok(s) = m.engine.stats(&id) else { continue };
            pod_cpu += s.cpu_total_ns;
            pod_mem += s.memory_usage;
            containers.push(json!({
                "name": c.name,
                "cpu": cpu(m, &id, s.cpu_total_ns),
                "memory": {"time": k8s_now(), "usageBytes": s.memory_usage, "workingSetBytes": s.memory_usage},
            }));
        }
        pods.push(json!({
            "podRef": {"name": name, "namespace": ns, "uid": uid},
            "containers": containers,
            "cpu": cpu(m, &format!("pod:{uid}"), pod_cpu),
            "memory": {"time": k8s_now(), "usageBytes": pod_mem, "workingSetBytes": pod_mem},
        }));
    }
    json!({"node": node, "pods": pods})
}
