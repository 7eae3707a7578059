//! ResourceQuota: admission refuses an object that would take a namespace's usage over
//! a quota's `hard` (with Kubernetes' `exceeded quota: …, requested: …, used: …, limited:
//! …` message) and charges what it admits to the quota's `status.used` by compare-and-swap,
//! so concurrent creations cannot both take the last unit; a pod must name the requests
//! and limits a quota counts (`failed quota: …: must specify …`). A task of the server
//! recomputes `status.used` from the watch cache when objects in a namespace with quotas
//! change or go, as kube-controller-manager's resourcequota controller does.
//!
//! Counted: `pods`, `services`, `configmaps`, `secrets`, `persistentvolumeclaims`,
//! `replicationcontrollers`, `resourcequotas`, `services.nodeports`,
//! `services.loadbalancers`, `requests.*`/`limits.*` (and bare `cpu`, `memory`,
//! `ephemeral-storage`), `requests.storage` and its per-StorageClass forms, and
//! `count/<resource>[.<group>]` for any kind. Scopes: `Terminating`, `NotTerminating`,
//! `BestEffort`, `NotBestEffort`, and a `PriorityClass` scopeSelector.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::{json, Value};

use crate::api::Api;
use crate::kinds::Kind;
use crate::status::{ApiError, ApiResult};

const QUOTAS: &str = "/registry/core/resourcequotas/";

/// A quantity (string, or a bare number) in thousandths.
pub(crate) fn milli(v: &Value) -> Option<i64> {
    match v {
        Value::String(s) => quantity::milli(s),
        Value::Number(n) => n.as_f64().map(|f| (f * 1000.0).ceil() as i64),
        _ => None,
    }
}

/// Thousandths written as Kubernetes would for a quantity shaped like `like`.
fn format_like(m: i64, like: &str) -> String {
    let binary = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    if like.ends_with('i') && m % 1000 == 0 {
        let mut v = m / 1000;
        if v == 0 {
            return "0".into();
        }
        let mut i = 0;
        while v % 1024 == 0 && i < binary.len() {
            v /= 1024;
            i += 1;
        }
        return if i == 0 {
            v.to_string()
        } else {
            format!("{v}{}", binary[i - 1])
        };
    }
    quantity::format_milli(m)
}

fn terminal(pod: &Value) -> bool {
    matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded") | Some("Failed")
    )
}

/// A pod's requests or limits: the containers' sum, or the largest init container's when
/// larger, per resource.
fn pod_resources(spec: &Value, which: &str) -> BTreeMap<String, i64> {
    let mut sum: BTreeMap<String, i64> = BTreeMap::new();
    for c in spec["containers"].as_array().into_iter().flatten() {
        for (k, v) in c["resources"][which].as_object().into_iter().flatten() {
            *sum.entry(k.clone()).or_default() += milli(v).unwrap_or(0);
        }
    }
    for c in spec["initContainers"].as_array().into_iter().flatten() {
        for (k, v) in c["resources"][which].as_object().into_iter().flatten() {
            let e = sum.entry(k.clone()).or_default();
            *e = (*e).max(milli(v).unwrap_or(0));
        }
    }
    for (k, v) in spec["overhead"].as_object().into_iter().flatten() {
        *sum.entry(k.clone()).or_default() += milli(v).unwrap_or(0);
    }
    sum
}

/// What one object uses, by quota resource name, in thousandths.
pub fn usage(group: &str, plural: &str, obj: &Value) -> BTreeMap<String, i64> {
    let mut u = BTreeMap::new();
    let count = if group.is_empty() {
        format!("count/{plural}")
    } else {
        format!("count/{plural}.{group}")
    };
    if group.is_empty() && plural == "pods" {
        if terminal(obj) {
            return u;
        }
        u.insert("pods".into(), 1000);
        u.insert(count, 1000);
        let spec = &obj["spec"];
        for (which, prefix) in [("requests", "requests."), ("limits", "limits.")] {
            for (k, v) in pod_resources(spec, which) {
                u.insert(format!("{prefix}{k}"), v);
                if which == "requests"
                    && matches!(k.as_str(), "cpu" | "memory" | "ephemeral-storage")
                {
                    u.insert(k, v);
                }
            }
        }
        return u;
    }
    u.insert(count, 1000);
    if group.is_empty() {
        match plural {
            "services" => {
                u.insert("services".into(), 1000);
                let t = obj
                    .pointer("/spec/type")
                    .and_then(Value::as_str)
                    .unwrap_or("ClusterIP");
                if t == "LoadBalancer" {
                    u.insert("services.loadbalancers".into(), 1000);
                }
                if t == "NodePort" || t == "LoadBalancer" {
                    let n = obj
                        .pointer("/spec/ports")
                        .and_then(Value::as_array)
                        .map_or(0, |p| p.len());
                    u.insert("services.nodeports".into(), n as i64 * 1000);
                }
            }
            "persistentvolumeclaims" => {
                u.insert("persistentvolumeclaims".into(), 1000);
                let storage = obj
                    .pointer("/spec/resources/requests/storage")
                    .and_then(milli)
                    .unwrap_or(0);
                u.insert("requests.storage".into(), storage);
                if let Some(sc) = obj
                    .pointer("/spec/storageClassName")
                    .and_then(Value::as_str)
                {
                    u.insert(
                        format!("{sc}.storageclass.storage.k8s.io/requests.storage"),
                        storage,
                    );
                    u.insert(
                        format!("{sc}.storageclass.storage.k8s.io/persistentvolumeclaims"),
                        1000,
                    );
                }
            }
            "configmaps" | "secrets" | "replicationcontrollers" | "resourcequotas" => {
                u.insert(plural.into(), 1000);
            }
            _ => {}
        }
    }
    u
}

/// Whether a quota's scopes take in this object (scopes concern pods only).
fn in_scope(quota: &Value, group: &str, plural: &str, obj: &Value) -> bool {
    let scopes: Vec<&str> = quota
        .pointer("/spec/scopes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let selector: Vec<&Value> = quota
        .pointer("/spec/scopeSelector/matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    if scopes.is_empty() && selector.is_empty() {
        return true;
    }
    if !(group.is_empty() && plural == "pods") {
        return false;
    }
    let spec = &obj["spec"];
    let terminating = spec
        .get("activeDeadlineSeconds")
        .is_some_and(|v| !v.is_null());
    let best_effort = crate::rules::qos_class(spec) == "BestEffort";
    let priority = spec
        .get("priorityClassName")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let scope_ok = |s: &str| match s {
        "Terminating" => terminating,
        "NotTerminating" => !terminating,
        "BestEffort" => best_effort,
        "NotBestEffort" => !best_effort,
        _ => false,
    };
    scopes.iter().all(|s| scope_ok(s))
        && selector.iter().all(|e| {
            let name = e["scopeName"].as_str().unwrap_or_default();
            let values: Vec<&str> = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            match (name, e["operator"].as_str().unwrap_or_default()) {
                ("PriorityClass", "In") => values.contains(&priority),
                ("PriorityClass", "NotIn") => !values.contains(&priority),
                ("PriorityClass", "Exists") => !priority.is_empty(),
                ("PriorityClass", "DoesNotExist") => priority.is_empty(),
                (s, "Exists") => scope_ok(s),
                (s, "DoesNotExist") => !scope_ok(s),
                _ => false,
            }
        })
}

fn hard(quota: &Value) -> BTreeMap<String, (i64, String)> {
    quota
        .pointer("/spec/hard")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| {
            let text = match v {
                Value::String(s) => s.clone(),
                o => o.to_string(),
            };
            milli(v).map(|m| (k.clone(), (m, text)))
        })
        .collect()
}

/// Kubernetes' podEvaluator.Constraints: a pod must state the compute resources a quota
/// counts, per container.
fn must_specify(hard: &BTreeMap<String, (i64, String)>, pod: &Value) -> Option<String> {
    let mut missing: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in [
        "requests.cpu",
        "requests.memory",
        "limits.cpu",
        "limits.memory",
        "cpu",
        "memory",
    ] {
        if !hard.contains_key(r) {
            continue;
        }
        let (which, res) = match r.split_once('.') {
            Some((w, res)) => (w, res),
            None => ("requests", r),
        };
        for list in ["containers", "initContainers"] {
            for c in pod["spec"][list].as_array().into_iter().flatten() {
                if c["resources"][which].get(res).is_none() {
                    missing
                        .entry(r.to_string())
                        .or_default()
                        .insert(c["name"].as_str().unwrap_or_default().to_string());
                }
            }
        }
    }
    (!missing.is_empty()).then(|| {
        format!(
            "must specify {}",
            missing
                .iter()
                .map(|(r, cs)| format!(
                    "{r} for: {}",
                    cs.iter().cloned().collect::<Vec<_>>().join(",")
                ))
                .collect::<Vec<_>>()
                .join("; ")
        )
    })
}

fn pretty(m: &BTreeMap<String, String>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The usage a quota counts in its namespace now, from the watch cache.
fn compute_used(api: &Api, ns: &str, quota: &Value) -> BTreeMap<String, i64> {
    let hard = hard(quota);
    let mut prefixes: BTreeSet<(String, String)> = BTreeSet::new();
    for k in hard.keys() {
        let k = k.as_str();
        let (g, p) = if let Some(c) = k.strip_prefix("count/") {
            match c.split_once('.') {
                Some((p, g)) => (g.to_string(), p.to_string()),
                None => (String::new(), c.to_string()),
            }
        } else if k == "pods"
            || k.starts_with("requests.") && k != "requests.storage"
            || k.starts_with("limits.")
            || matches!(k, "cpu" | "memory" | "ephemeral-storage")
        {
            (String::new(), "pods".into())
        } else if k.starts_with("services") {
            (String::new(), "services".into())
        } else if k == "requests.storage" || k.contains(".storageclass.storage.k8s.io/") {
            (String::new(), "persistentvolumeclaims".into())
        } else {
            (String::new(), k.to_string())
        };
        prefixes.insert((g, p));
    }
    let mut used: BTreeMap<String, i64> = hard.keys().map(|k| (k.clone(), 0)).collect();
    for (g, p) in prefixes {
        let storage_group = if g.is_empty() { "core" } else { g.as_str() };
        for (_, _, raw) in api
            .cache
            .list(&format!("/registry/{storage_group}/{p}/{ns}/"))
            .1
        {
            let Ok(obj) = serde_json::from_slice::<Value>(&raw) else {
                continue;
            };
            if !in_scope(quota, &g, &p, &obj) {
                continue;
            }
            for (k, v) in usage(&g, &p, &obj) {
                if let Some(u) = used.get_mut(&k) {
                    *u += v;
                }
            }
        }
    }
    used
}

fn status_of(quota: &Value, used: &BTreeMap<String, i64>) -> Value {
    let hard = hard(quota);
    let used: serde_json::Map<String, Value> = used
        .iter()
        .filter_map(|(k, v)| {
            hard.get(k)
                .map(|(_, text)| (k.clone(), json!(format_like(*v, text))))
        })
        .collect();
    json!({"hard": quota.pointer("/spec/hard").cloned().unwrap_or(json!({})), "used": used})
}

/// Admits the creation of `obj` against its namespace's quotas, charging them.
pub async fn admit(api: &Api, kind: &Kind, obj: &Value) -> ApiResult<()> {
    if !kind.namespaced {
        return Ok(());
    }
    let ns = obj
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let (_, quotas) = api.cache.list(&format!("{QUOTAS}{ns}/"));
    if quotas.is_empty() {
        return Ok(());
    }
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let group = kind.group.as_str();
    let plural = kind.plural.as_str();
    let delta = usage(group, plural, obj);
    let forbidden = |m: String| {
        ApiError::forbidden(format!("{} \"{name}\" is forbidden: {m}", kind.qualified()))
    };
    for (key, _, _) in quotas {
        for _attempt in 0..16 {
            let Some(kv) = api.store.get(&key, 0).await? else {
                break;
            };
            let mut quota: Value = serde_json::from_slice(&kv.value).unwrap_or_default();
            let qname = quota
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if !in_scope(&quota, group, plural, obj) {
                break;
            }
            let hard = hard(&quota);
            let covered: Vec<&String> = hard.keys().filter(|k| delta.contains_key(*k)).collect();
            if group.is_empty() && plural == "pods" && !terminal(obj) {
                if let Some(m) = must_specify(&hard, obj) {
                    return Err(forbidden(format!("failed quota: {qname}: {m}")));
                }
            }
            if covered.is_empty() {
                break;
            }
            // The recorded usage, unless the quota's status is not for its spec yet.
            let current = quota.pointer("/status/hard") == quota.pointer("/spec/hard")
                && quota.pointer("/status/used").is_some();
            let mut used: BTreeMap<String, i64> = if current {
                quota
                    .pointer("/status/used")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                    .filter_map(|(k, v)| milli(v).map(|m| (k.clone(), m)))
                    .collect()
            } else {
                compute_used(api, &ns, &quota)
            };
            let mut exceeded = Vec::new();
            for k in &covered {
                let now = used.get(*k).copied().unwrap_or(0);
                let d = delta[*k];
                if d > 0 && now + d > hard[*k].0 {
                    exceeded.push((*k).clone());
                }
                used.insert((*k).clone(), now + d);
            }
            if !exceeded.is_empty() {
                let text = |k: &String| hard[k].1.clone();
                let mut requested = BTreeMap::new();
                let mut was = BTreeMap::new();
                let mut limited = BTreeMap::new();
                for k in &exceeded {
                    requested.insert(k.clone(), format_like(delta[k], &text(k)));
                    was.insert(k.clone(), format_like(used[k] - delta[k], &text(k)));
                    limited.insert(k.clone(), text(k));
                }
                return Err(forbidden(format!(
                    "exceeded quota: {qname}, requested: {}, used: {}, limited: {}",
                    pretty(&requested),
                    pretty(&was),
                    pretty(&limited)
                )));
            }
            quota["status"] = status_of(&quota, &used);
            match api
                .store
                .update(
                    &key,
                    serde_json::to_vec(&quota).unwrap_or_default(),
                    kv.mod_revision,
                )
                .await
            {
                Ok(_) => break,
                Err(store::StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// Keeps every quota's `status` equal to what its namespace uses: recomputed when an
/// object in a namespace with quotas changes or goes, and when a quota is written.
pub async fn follow(api: Arc<Api>) {
    let all_quota_namespaces = |api: &Api| -> BTreeSet<String> {
        api.cache
            .list(QUOTAS)
            .1
            .iter()
            .filter_map(|(k, _, _)| {
                k.strip_prefix(QUOTAS)
                    .and_then(|r| r.split_once('/'))
                    .map(|(ns, _)| ns.to_string())
            })
            .collect()
    };
    loop {
        // The receiver carries every change; the prefix only shapes the initial events.
        let Ok(mut sub) = api.cache.subscribe(QUOTAS, None) else {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            continue;
        };
        let mut dirty = all_quota_namespaces(&api);
        loop {
            for ns in std::mem::take(&mut dirty) {
                refresh(&api, &ns).await;
            }
            let first = match sub.rx.recv().await {
                Ok(e) => e,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    dirty = all_quota_namespaces(&api);
                    continue;
                }
                Err(_) => break,
            };
            // Whatever else arrived goes in the same pass, after a breath for bursts.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let mut keys = vec![first.key.clone()];
            let mut lagged = false;
            loop {
                match sub.rx.try_recv() {
                    Ok(e) => keys.push(e.key.clone()),
                    Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => lagged = true,
                    Err(_) => break,
                }
            }
            if lagged {
                dirty = all_quota_namespaces(&api);
                continue;
            }
            for key in keys {
                // /registry/<group>/<plural>/<ns>/<name>
                let parts: Vec<&str> = key.splitn(6, '/').collect();
                if parts.len() == 6 {
                    let ns = parts[4];
                    if !dirty.contains(ns)
                        && (key.starts_with(QUOTAS)
                            || !api.cache.list(&format!("{QUOTAS}{ns}/")).1.is_empty())
                    {
                        dirty.insert(ns.to_string());
                    }
                }
            }
        }
    }
}

async fn refresh(api: &Api, ns: &str) {
    for (key, _, _) in api.cache.list(&format!("{QUOTAS}{ns}/")).1 {
        for _attempt in 0..8 {
            let Ok(Some(kv)) = api.store.get(&key, 0).await else {
                break;
            };
            let mut quota: Value = serde_json::from_slice(&kv.value).unwrap_or_default();
            let status = status_of(&quota, &compute_used(api, ns, &quota));
            if quota.get("status") == Some(&status) {
                break;
            }
            quota["status"] = status;
            match api
                .store
                .update(
                    &key,
                    serde_json::to_vec(&quota).unwrap_or_default(),
                    kv.mod_revision,
                )
                .await
            {
                Err(store::StoreError::Conflict { .. }) => continue,
                _ => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_use_their_containers_resources() {
        let pod = json!({"spec": {
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"cpu": "1"}}},
                {"name": "b", "resources": {"requests": {"cpu": "250m"}}},
            ],
            "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "2"}}}],
        }});
        let u = usage("", "pods", &pod);
        assert_eq!(u["pods"], 1000);
        assert_eq!(u["requests.cpu"], 2000);
        assert_eq!(u["cpu"], 2000);
        assert_eq!(u["requests.memory"], 64 * 1024 * 1024 * 1000);
        assert_eq!(u["limits.cpu"], 1000);
        let mut done = pod.clone();
        done["status"] = json!({"phase": "Succeeded"});
        assert!(usage("", "pods", &done).is_empty());
        assert_eq!(
            usage("apps", "deployments", &json!({}))["count/deployments.apps"],
            1000
        );
    }

    #[test]
    fn quantities_print_in_the_shape_of_the_limit() {
        assert_eq!(format_like(512 * 1024 * 1024 * 1000, "1Gi"), "512Mi");
        assert_eq!(format_like(1500, "2"), "1500m");
        assert_eq!(format_like(3000, "4"), "3");
        assert_eq!(format_like(0, "1Gi"), "0");
    }

    #[test]
    fn a_quota_on_cpu_needs_every_container_to_say_its_cpu() {
        let hard = hard(&json!({"spec": {"hard": {"requests.cpu": "1", "limits.memory": "1Gi"}}}));
        let pod = json!({"spec": {"containers": [
            {"name": "a", "resources": {"requests": {"cpu": "1"}}},
            {"name": "b"},
        ]}});
        assert_eq!(
            must_specify(&hard, &pod).unwrap(),
            "must specify limits.memory for: a,b; requests.cpu for: b"
        );
    }
}
