//! The disruption controller: PodDisruptionBudget status, as Kubernetes computes it.
//! `expectedPods` is the pod count (an integer `minAvailable`) or the scale of the pods'
//! controllers (percentages and `maxUnavailable`); `currentHealthy` the Ready pods not
//! being deleted and not just evicted (`disruptedPods`, kept until the pod is seen going or
//! two minutes pass); `desiredHealthy` from the budget; `disruptionsAllowed` the difference.
//! Writes carry the version read, so an eviction counted meanwhile is never overwritten.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Patch, PatchParams};
use serde_json::{json, Value};

/// How long an evicted pod counts as disrupted before the watch shows it going.
const DISRUPTED_TTL_SECS: i64 = 120;

enum Change {
    Pdb(Option<Arc<PodDisruptionBudget>>, String),
    Pod(Option<Arc<Pod>>, String),
}

fn ns_of(key: &str) -> String {
    key.split('/').next().unwrap_or_default().to_string()
}

/// Runs the controller until the process ends.
pub async fn run(client: kube::Client) {
    let all = kube::runtime::watcher::Config::default;
    let pdbs = crate::follow_keyed(kube::Api::<PodDisruptionBudget>::all(client.clone()), all())
        .map(|(k, o)| Change::Pdb(o, k));
    let pods = crate::follow_keyed(kube::Api::<Pod>::all(client.clone()), all())
        .map(|(k, o)| Change::Pod(o, k));
    let mut events = futures::stream::select(pdbs.boxed(), pods.boxed());
    let mut budgets: HashMap<String, Arc<PodDisruptionBudget>> = HashMap::new();
    // Pods by namespace, then key: a budget looks at its namespace only.
    let mut all_pods: HashMap<String, HashMap<String, Arc<Pod>>> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    loop {
        // The budgets to recompute.
        let mut dirty: BTreeSet<String> = BTreeSet::new();
        let first = tokio::select! {
            e = events.next() => match e { Some(e) => Some(e), None => return },
            _ = tick.tick() => {
                dirty.extend(budgets.keys().cloned());
                None
            }
        };
        let mut batch: Vec<Change> = first.into_iter().collect();
        while let Some(Some(e)) = futures::FutureExt::now_or_never(events.next()) {
            batch.push(e);
        }
        for c in batch {
            match c {
                Change::Pdb(Some(p), k) => {
                    dirty.insert(k.clone());
                    budgets.insert(k, p);
                }
                Change::Pdb(None, k) => {
                    budgets.remove(&k);
                }
                Change::Pod(p, k) => {
                    let ns = ns_of(&k);
                    let in_ns = all_pods.entry(ns.clone()).or_default();
                    let old = match &p {
                        Some(p) => in_ns.insert(k, p.clone()),
                        None => in_ns.remove(&k),
                    };
                    if in_ns.is_empty() {
                        all_pods.remove(&ns);
                    }
                    // The budgets that select the pod as it was or as it is.
                    for (bk, b) in &budgets {
                        if ns_of(bk) == ns
                            && [old.as_ref(), p.as_ref()]
                                .into_iter()
                                .flatten()
                                .any(|p| selects(b, p))
                        {
                            dirty.insert(bk.clone());
                        }
                    }
                }
            }
        }
        for k in dirty {
            let Some(pdb) = budgets.get(&k).cloned() else {
                continue;
            };
            let pods: Vec<Arc<Pod>> = all_pods
                .get(&ns_of(&k))
                .map(|m| m.values().cloned().collect())
                .unwrap_or_default();
            if let Err(e) = reconcile(&client, &pdb, &pods).await {
                eprintln!("berth controllers: disruption budget {k}: {e}");
            }
        }
    }
}

fn selects(pdb: &PodDisruptionBudget, p: &Pod) -> bool {
    let labels = p.metadata.labels.clone().unwrap_or_default();
    crate::schedplugins::selects(pdb.spec.as_ref().and_then(|s| s.selector.as_ref()), &labels)
}

/// The scale of the pods' controllers (a Deployment's for its ReplicaSets).
async fn controllers_scale(
    client: &kube::Client,
    ns: &str,
    pods: &[&Arc<Pod>],
) -> anyhow::Result<Option<i64>> {
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut total = 0;
    for p in pods {
        let Some(r) = p
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
        else {
            // A pod without a controller: percentages cannot be computed.
            return Ok(None);
        };
        if !seen.insert(r.uid.clone()) {
            continue;
        }
        let Some(api) = crate::gc::api(client, &r.kind, ns) else {
            return Ok(None);
        };
        let Some(owner) = api.get_opt(&r.name).await? else {
            continue;
        };
        let mut v = serde_json::to_value(&owner)?;
        if r.kind == "ReplicaSet" {
            if let Some(d) = owner
                .metadata
                .owner_references
                .iter()
                .flatten()
                .find(|o| o.controller == Some(true) && o.kind == "Deployment")
            {
                if let Some(dapi) = crate::gc::api(client, "Deployment", ns) {
                    if seen.insert(d.uid.clone()) {
                        if let Some(dep) = dapi.get_opt(&d.name).await? {
                            v = serde_json::to_value(&dep)?;
                        }
                    } else {
                        continue;
                    }
                }
            }
        }
        total += v
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1);
    }
    Ok(Some(total))
}

fn int_or_percent(v: &Value, total: i64) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) if s.ends_with('%') => {
            let pct: f64 = s.trim_end_matches('%').parse().ok()?;
            Some((pct * total as f64 / 100.0).ceil() as i64)
        }
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

async fn reconcile(
    client: &kube::Client,
    pdb: &PodDisruptionBudget,
    pods: &[Arc<Pod>],
) -> anyhow::Result<()> {
    let ns = pdb.metadata.namespace.clone().unwrap_or_default();
    let name = pdb.metadata.name.clone().unwrap_or_default();
    let v = serde_json::to_value(pdb)?;
    let mine: Vec<&Arc<Pod>> = pods.iter().filter(|p| selects(pdb, p)).collect();
    let now = jiff::Timestamp::now();
    // Evicted pods still shown as alive count as disrupted for a while.
    let mut disrupted = serde_json::Map::new();
    if let Some(d) = v
        .pointer("/status/disruptedPods")
        .and_then(Value::as_object)
    {
        for (pod, at) in d {
            let fresh = at
                .as_str()
                .and_then(|s| s.parse::<jiff::Timestamp>().ok())
                .is_some_and(|t| now.as_second() - t.as_second() < DISRUPTED_TTL_SECS);
            let alive = mine.iter().any(|p| {
                p.metadata.name.as_deref() == Some(pod.as_str())
                    && p.metadata.deletion_timestamp.is_none()
            });
            if fresh && alive {
                disrupted.insert(pod.clone(), at.clone());
            }
        }
    }
    let healthy = mine
        .iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && crate::owned::is_ready(p)
                && !disrupted.contains_key(p.metadata.name.as_deref().unwrap_or_default())
        })
        .count() as i64;
    let spec = &v["spec"];
    let (expected, desired) = if let Some(Value::Number(n)) = spec.get("minAvailable") {
        (mine.len() as i64, n.as_i64().unwrap_or(0))
    } else {
        let scale = controllers_scale(client, &ns, &mine).await?;
        let expected = scale.unwrap_or(mine.len() as i64);
        match (spec.get("minAvailable"), spec.get("maxUnavailable")) {
            (Some(m), _) => (expected, int_or_percent(m, expected).unwrap_or(0)),
            (None, Some(m)) => (
                expected,
                (expected - int_or_percent(m, expected).unwrap_or(0)).max(0),
            ),
            (None, None) => (expected, expected),
        }
    };
    let allowed = (healthy - desired).max(0);
    let now_s = crate::now();
    let (cstatus, reason) = if allowed > 0 {
        ("True", "SufficientPods")
    } else {
        ("False", "InsufficientPods")
    };
    let prev_cond = v
        .pointer("/status/conditions/0")
        .cloned()
        .unwrap_or(Value::Null);
    let transition = if prev_cond["status"] == json!(cstatus) {
        prev_cond["lastTransitionTime"].clone()
    } else {
        json!(now_s)
    };
    let status = json!({
        "currentHealthy": healthy,
        "desiredHealthy": desired,
        "disruptionsAllowed": allowed,
        "expectedPods": expected,
        "observedGeneration": pdb.metadata.generation,
        "disruptedPods": if disrupted.is_empty() { Value::Null } else { Value::Object(disrupted) },
        "conditions": [{"type": "DisruptionAllowed", "status": cstatus, "reason": reason, "message": "",
            "observedGeneration": pdb.metadata.generation, "lastTransitionTime": transition}],
    });
    let old = v.get("status").cloned().unwrap_or(Value::Null);
    let mut cmp = status.clone();
    if cmp["disruptedPods"].is_null() {
        cmp.as_object_mut().map(|o| o.remove("disruptedPods"));
    }
    if cmp == old {
        return Ok(());
    }
    let api: kube::Api<PodDisruptionBudget> = kube::Api::namespaced(client.clone(), &ns);
    let patch =
        json!({"metadata": {"resourceVersion": pdb.metadata.resource_version}, "status": status});
    match api
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        // Changed meanwhile (an eviction): the watch brings the new version.
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
        Ok(_) => Ok(()),
    }
}
