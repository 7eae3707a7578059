//! The pod's own cgroup, as the kubelet makes it: `<cgroup-root>/kubepods/[burstable/|
//! besteffort/]pod<uid>` in every hierarchy, the parent of the pod's containers' cgroups,
//! with the pod's CPU shares (the sum of its requests), and its CPU quota and memory limit
//! (the sums of its limits) when every container has them. Init containers run alone, so
//! each counts against the pod's totals on its own.

use k8s_openapi::api::core::v1::Pod;
use runtime::cgroups::{Cgroup, Hierarchy};
use serde_json::json;

use crate::podspec;

/// The pod cgroup's path for a QoS class.
pub fn path(root: &str, qos: &str, uid: &str) -> String {
    let qos = qos.to_ascii_lowercase();
    format!(
        "{}/kubepods/{}pod{uid}",
        root.trim_end_matches('/'),
        if qos == "guaranteed" {
            String::new()
        } else {
            format!("{qos}/")
        }
    )
}

/// (shares, quota µs per 100 ms period, memory limit bytes) for the pod.
pub fn resources(pod: &Pod) -> (u64, Option<u64>, Option<u64>) {
    let Some(spec) = pod.spec.as_ref() else {
        return (2, None, None);
    };
    let sum = |f: &dyn Fn(&k8s_openapi::api::core::v1::Container) -> Option<u64>| -> Option<u64> {
        let main: Option<u64> = spec.containers.iter().map(f).sum();
        let init: Option<u64> = spec
            .init_containers
            .iter()
            .flatten()
            .map(f)
            .try_fold(0u64, |m, v| v.map(|v| m.max(v)));
        match (main, init) {
            (Some(m), Some(i)) => Some(m.max(i)),
            _ => None,
        }
    };
    let requests: u64 = spec
        .containers
        .iter()
        .filter_map(|c| podspec::request(c, "cpu").and_then(|q| podspec::cpu_milli(&q)))
        .sum();
    let shares = (requests * 1024 / 1000).max(2);
    let quota = sum(&|c| podspec::limit(c, "cpu").and_then(|q| podspec::cpu_milli(&q)))
        .map(|m| (m * 100).max(1000));
    let memory = sum(&|c| podspec::limit(c, "memory").and_then(|q| podspec::bytes(&q)));
    (shares, quota, memory)
}

/// Makes the pod's cgroup (if need be) and sets its resources.
pub fn ensure(root: &str, pod: &Pod) -> Result<(), String> {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let p = path(root, podspec::qos_class(pod), uid);
    let h = Hierarchy::detect().map_err(|e| e.to_string())?;
    let cg = Cgroup::new(&h, Some(&p), uid).map_err(|e| e.to_string())?;
    cg.create()
        .map_err(|e| format!("the pod cgroup {p}: {e}"))?;
    let (shares, quota, memory) = resources(pod);
    let mut r = json!({"cpu": {"shares": shares}});
    if let Some(q) = quota {
        r["cpu"]["quota"] = json!(q);
        r["cpu"]["period"] = json!(100_000);
    }
    if let Some(m) = memory {
        r["memory"] = json!({"limit": m});
    }
    let r = serde_json::from_value(r).map_err(|e| e.to_string())?;
    cg.apply(&r).map_err(|e| format!("the pod cgroup {p}: {e}"))
}

/// Removes the pod's cgroup, whatever its QoS class was.
pub fn remove(root: &str, uid: &str) {
    let Ok(h) = Hierarchy::detect() else { return };
    for qos in ["Guaranteed", "Burstable", "BestEffort"] {
        if let Ok(cg) = Cgroup::new(&h, Some(&path(root, qos, uid)), uid) {
            let _ = cg.delete();
        }
    }
}
