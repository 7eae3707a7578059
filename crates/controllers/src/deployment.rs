//! The Deployment controller: one ReplicaSet per pod template (named and labelled by the
//! template's hash, `pod-template-hash`, with the `deployment.kubernetes.io/revision`
//! annotation), rolled from the old ones to the new one as the strategy says — Recreate, or
//! RollingUpdate within maxSurge and maxUnavailable — with `Available` and `Progressing`
//! conditions, paused rollouts left alone, and old ReplicaSets beyond
//! `revisionHistoryLimit` removed. `kubectl rollout status|history|undo` and
//! `kubectl set image` read and write exactly these.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{json, Value};

const NAME: &str = "deployment-controller";
const REVISION: &str = "deployment.kubernetes.io/revision";
const HASH_LABEL: &str = "pod-template-hash";

/// Kubernetes' safe encoding alphabet for hashes in names.
fn safe_encode(mut n: u32) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut s = Vec::new();
    loop {
        s.push(ALPHABET[(n % ALPHABET.len() as u32) as usize]);
        n /= ALPHABET.len() as u32;
        if n == 0 {
            break;
        }
    }
    String::from_utf8(s).unwrap_or_default()
}

/// FNV-1a of the template as JSON, encoded as Kubernetes encodes pod-template-hash.
pub fn template_hash(template: &Value, collisions: i32) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in template
        .to_string()
        .bytes()
        .chain(collisions.to_string().bytes())
    {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    safe_encode(h)
}

/// The template as compared between a Deployment and its ReplicaSets: without the hash
/// label the controller adds.
fn comparable(template: &Value) -> Value {
    let mut t = template.clone();
    if let Some(l) = t
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        l.remove(HASH_LABEL);
        if l.is_empty() {
            if let Some(m) = t.pointer_mut("/metadata").and_then(Value::as_object_mut) {
                m.remove("labels");
            }
        }
    }
    if let Some(m) = t.pointer_mut("/metadata").and_then(Value::as_object_mut) {
        m.remove("creationTimestamp");
        if m.is_empty() {
            t.as_object_mut().map(|o| o.remove("metadata"));
        }
    }
    t
}

/// An int-or-percent of `total` (percentages rounded up for surge, down for unavailable).
fn scaled(v: Option<&Value>, total: i32, default_pct: i32, round_up: bool) -> i32 {
    let pct = |p: i32| {
        let x = i64::from(total) * i64::from(p);
        (if round_up { (x + 99) / 100 } else { x / 100 }) as i32
    };
    match v {
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0) as i32,
        Some(Value::String(s)) => pct(s.trim_end_matches('%').parse().unwrap_or(default_pct)),
        _ => pct(default_pct),
    }
}

#[derive(Default)]
struct Cache {
    deployments: HashMap<String, Arc<Deployment>>,
    sets: HashMap<String, Arc<ReplicaSet>>,
}

enum Change {
    Deploy(Option<Arc<Deployment>>, String),
    Set(Option<Arc<ReplicaSet>>, String, String),
    DeploysListed(std::collections::HashSet<String>),
    SetsListed(std::collections::HashSet<String>),
    Other,
}

fn k(ns: Option<&str>, name: Option<&str>) -> String {
    format!("{}/{}", ns.unwrap_or_default(), name.unwrap_or_default())
}

fn owner_name(rs: &ReplicaSet) -> Option<String> {
    rs.metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true) && o.kind == "Deployment")
        .map(|o| o.name.clone())
}

/// Runs the controller until the process ends.
pub async fn run(client: kube::Client) {
    let deps: kube::Api<Deployment> = kube::Api::all(client.clone());
    let sets: kube::Api<ReplicaSet> = kube::Api::all(client.clone());
    let dep_events = crate::follow(deps).map(|e| match e {
        crate::Seen::Applied(d) => {
            let key = crate::key_of(&d);
            Change::Deploy(Some(Arc::new(d)), key)
        }
        crate::Seen::Deleted(d) => Change::Deploy(None, crate::key_of(&d)),
        crate::Seen::Listed(keys) => Change::DeploysListed(keys),
        crate::Seen::Nothing => Change::Other,
    });
    let set_events = crate::follow(sets).map(|e| match e {
        crate::Seen::Applied(r) => {
            let key = crate::key_of(&r);
            let owner = k(r.metadata.namespace.as_deref(), owner_name(&r).as_deref());
            Change::Set(Some(Arc::new(r)), key, owner)
        }
        crate::Seen::Deleted(r) => {
            let owner = k(r.metadata.namespace.as_deref(), owner_name(&r).as_deref());
            Change::Set(None, crate::key_of(&r), owner)
        }
        crate::Seen::Listed(keys) => Change::SetsListed(keys),
        crate::Seen::Nothing => Change::Other,
    });
    let mut events = futures::stream::select(dep_events.boxed(), set_events.boxed());
    let mut cache = Cache::default();
    let mut resync = tokio::time::interval(Duration::from_secs(10));
    loop {
        let mut dirty: BTreeSet<String> = BTreeSet::new();
        let first = tokio::select! {
            e = events.next() => match e { Some(e) => Some(e), None => return },
            _ = resync.tick() => {
                dirty.extend(cache.deployments.keys().cloned());
                None
            }
        };
        let mut batch: Vec<Change> = first.into_iter().collect();
        while let Some(Some(e)) = futures::FutureExt::now_or_never(events.next()) {
            batch.push(e);
        }
        for c in batch {
            match c {
                Change::Deploy(Some(d), key) => {
                    cache.deployments.insert(key.clone(), d);
                    dirty.insert(key);
                }
                Change::Deploy(None, key) => {
                    cache.deployments.remove(&key);
                }
                Change::Set(r, key, owner) => {
                    match r {
                        Some(r) => cache.sets.insert(key, r),
                        None => cache.sets.remove(&key),
                    };
                    dirty.insert(owner);
                }
                Change::DeploysListed(keys) => cache.deployments.retain(|k, _| keys.contains(k)),
                Change::SetsListed(keys) => {
                    cache.sets.retain(|k, _| keys.contains(k));
                    dirty.extend(cache.deployments.keys().cloned());
                }
                Change::Other => {}
            }
        }
        for key in dirty {
            if let Some(d) = cache.deployments.get(&key).cloned() {
                match reconcile(&client, &d, &cache).await {
                    Ok(()) => {}
                    // Acted on a stale cache: the watch brings the news and a new pass.
                    Err(e)
                        if e.downcast_ref::<kube::Error>()
                            .is_some_and(|k| matches!(k, kube::Error::Api(s) if s.code == 409)) => {
                    }
                    Err(e) => eprintln!("berth controllers: deployment {key}: {e}"),
                }
            }
        }
    }
}

fn replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn available(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

fn revision(rs: &ReplicaSet) -> i64 {
    rs.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

async fn scale(
    client: &kube::Client,
    rs: &ReplicaSet,
    to: i32,
    d: &Deployment,
) -> anyhow::Result<()> {
    if replicas(rs) == to {
        return Ok(());
    }
    let ns = rs.metadata.namespace.clone().unwrap_or_default();
    let name = rs.metadata.name.clone().unwrap_or_default();
    let api: kube::Api<ReplicaSet> = kube::Api::namespaced(client.clone(), &ns);
    // With the version this decision was made on: a cache that lags behind this
    // controller's own writes makes the write fail (409) rather than scale twice.
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(
            &json!({"metadata": {"resourceVersion": rs.metadata.resource_version},
            "spec": {"replicas": to}}),
        ),
    )
    .await?;
    let up = to > replicas(rs);
    let dn = d.metadata.name.clone().unwrap_or_default();
    crate::event(
        client,
        NAME,
        json!({"kind": "Deployment", "namespace": ns, "name": dn, "uid": d.metadata.uid, "apiVersion": "apps/v1"}),
        "Normal",
        "ScalingReplicaSet",
        &format!("Scaled {} replica set {name} from {} to {to}", if up { "up" } else { "down" }, replicas(rs)),
    )
    .await;
    Ok(())
}

async fn reconcile(client: &kube::Client, d: &Deployment, cache: &Cache) -> anyhow::Result<()> {
    if d.metadata.deletion_timestamp.is_some() {
        return Ok(());
    }
    let ns = d.metadata.namespace.clone().unwrap_or_default();
    let name = d.metadata.name.clone().unwrap_or_default();
    let uid = d.metadata.uid.clone().unwrap_or_default();
    let spec = d.spec.clone().unwrap_or_default();
    let want = spec.replicas.unwrap_or(1);
    let template = serde_json::to_value(&spec.template)?;
    let mut owned: Vec<Arc<ReplicaSet>> = cache
        .sets
        .values()
        .filter(|r| {
            r.metadata.namespace.as_deref() == Some(ns.as_str())
                && r.metadata
                    .owner_references
                    .as_ref()
                    .is_some_and(|o| o.iter().any(|o| o.controller == Some(true) && o.uid == uid))
        })
        .cloned()
        .collect();
    owned.sort_by_key(|r| revision(r));
    let wanted = comparable(&template);
    let current = owned.iter().find(|r| {
        r.spec
            .as_ref()
            .and_then(|s| s.template.as_ref())
            .and_then(|t| serde_json::to_value(t).ok())
            .is_some_and(|t| comparable(&t) == wanted)
    });
    let max_rev = owned.iter().map(|r| revision(r)).max().unwrap_or(0);
    let rs_api: kube::Api<ReplicaSet> = kube::Api::namespaced(client.clone(), &ns);
    let paused = spec.paused == Some(true);
    let new_rs: Arc<ReplicaSet> = match current {
        Some(r) => {
            // A rollback to an older template makes it the newest revision again.
            if revision(r) < max_rev && !paused {
                let mut ann = json!({REVISION: (max_rev + 1).to_string()});
                if let Some(c) = d
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("kubernetes.io/change-cause"))
                {
                    ann["kubernetes.io/change-cause"] = json!(c);
                }
                let r2 = rs_api
                    .patch(
                        r.metadata.name.as_deref().unwrap_or_default(),
                        &PatchParams::default(),
                        &Patch::Merge(&json!({"metadata": {"annotations": ann}})),
                    )
                    .await?;
                Arc::new(r2)
            } else {
                r.clone()
            }
        }
        // Paused: no new ReplicaSet, but the status still observes the generation.
        None if paused => match owned.last() {
            Some(r) => r.clone(),
            None => return Ok(()),
        },
        None => {
            let collisions = d
                .status
                .as_ref()
                .and_then(|s| s.collision_count)
                .unwrap_or(0);
            let hash = template_hash(&wanted, collisions);
            let mut t = template.clone();
            t["metadata"]["labels"][HASH_LABEL] = json!(hash);
            let mut selector = serde_json::to_value(&spec.selector)?;
            selector["matchLabels"][HASH_LABEL] = json!(hash);
            let mut ann = json!({REVISION: (max_rev + 1).to_string(),
                "deployment.kubernetes.io/desired-replicas": want.to_string(),
                "deployment.kubernetes.io/max-replicas": want.to_string()});
            if let Some(c) = d
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("kubernetes.io/change-cause"))
            {
                ann["kubernetes.io/change-cause"] = json!(c);
            }
            let mut labels = t["metadata"]["labels"].clone();
            labels[HASH_LABEL] = json!(hash);
            let rs: ReplicaSet = serde_json::from_value(json!({
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": format!("{name}-{hash}"), "namespace": ns, "labels": labels,
                    "annotations": ann,
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": name,
                        "uid": uid, "controller": true, "blockOwnerDeletion": true}]},
                "spec": {"replicas": 0, "selector": selector, "template": t,
                    "minReadySeconds": spec.min_ready_seconds.unwrap_or(0)},
            }))?;
            let made = rs_api.create(&PostParams::default(), &rs).await?;
            Arc::new(made)
        }
    };
    let new_name = new_rs.metadata.name.clone().unwrap_or_default();
    // The Deployment carries its newest revision too, as Kubernetes annotates it.
    let rev = revision(&new_rs).to_string();
    if !paused
        && d.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(REVISION))
            != Some(&rev)
    {
        let api: kube::Api<Deployment> = kube::Api::namespaced(client.clone(), &ns);
        api.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"annotations": {REVISION: rev}}})),
        )
        .await?;
    }
    let olds: Vec<&Arc<ReplicaSet>> = owned
        .iter()
        .filter(|r| r.metadata.name.as_deref() != Some(new_name.as_str()))
        .collect();
    if !paused {
        let strategy = serde_json::to_value(&spec.strategy).unwrap_or(Value::Null);
        if strategy["type"] == "Recreate" {
            for o in &olds {
                scale(client, o, 0, d).await?;
            }
            let old_pods: i32 = olds
                .iter()
                .map(|o| o.status.as_ref().map_or(0, |s| s.replicas))
                .sum();
            if old_pods == 0 {
                scale(client, &new_rs, want, d).await?;
            }
        } else {
            let ru = &strategy["rollingUpdate"];
            let surge = scaled(ru.get("maxSurge"), want, 25, true);
            let mut unavailable = scaled(ru.get("maxUnavailable"), want, 25, false);
            if surge == 0 && unavailable == 0 {
                unavailable = 1;
            }
            let olds_empty = olds.iter().all(|o| replicas(o) == 0);
            if olds_empty {
                scale(client, &new_rs, want, d).await?;
            } else {
                // Scale up the new ReplicaSet within the surge.
                // Pods that still exist count too (a set scaled down whose pods are not
                // gone yet), so the surge holds for pods, not only for specs.
                let total: i32 = owned
                    .iter()
                    .map(|r| replicas(r).max(r.status.as_ref().map_or(0, |s| s.replicas)))
                    .sum();
                let allowed = (want + surge - total).max(0);
                let to = (replicas(&new_rs) + allowed).min(want);
                if to > replicas(&new_rs) {
                    // As kube's controller: a pass that scaled up does not also scale down;
                    // the new pods count as unavailable once the new set's spec says so.
                    scale(client, &new_rs, to, d).await?;
                    return Ok(());
                }
                // Scale old ones down while enough stay available (kube's formula:
                // all pods - minAvailable - the new set's unavailable pods), unhealthy
                // old pods first, oldest sets first.
                let min_available = want - unavailable;
                let all_pods: i32 = owned.iter().map(|r| replicas(r)).sum::<i32>();
                let new_unavailable = (replicas(&new_rs) - available(&new_rs)).max(0);
                let mut budget = (all_pods - min_available - new_unavailable).max(0);
                for o in &olds {
                    if budget == 0 {
                        break;
                    }
                    let unhealthy = (replicas(o) - available(o)).max(0).min(budget);
                    if unhealthy > 0 {
                        scale(client, o, replicas(o) - unhealthy, d).await?;
                        budget -= unhealthy;
                    }
                }
                for o in &olds {
                    if budget == 0 {
                        break;
                    }
                    let left = (replicas(o) - (replicas(o) - available(o)).max(0)).max(0);
                    let down = left.min(budget);
                    if down > 0 {
                        scale(client, o, replicas(o) - down, d).await?;
                        budget -= down;
                    }
                }
            }
        }
        // Revision history.
        let limit = spec.revision_history_limit.unwrap_or(10).max(0) as usize;
        let empty: Vec<&&Arc<ReplicaSet>> = olds
            .iter()
            .filter(|o| replicas(o) == 0 && o.status.as_ref().map_or(0, |s| s.replicas) == 0)
            .collect();
        if empty.len() > limit {
            for o in empty.iter().take(empty.len() - limit) {
                let _ = rs_api
                    .delete(
                        o.metadata.name.as_deref().unwrap_or_default(),
                        &DeleteParams::background(),
                    )
                    .await;
            }
        }
    }
    // Status.
    let sum =
        |f: &dyn Fn(&ReplicaSet) -> i32| -> i32 { owned.iter().map(|r| f(r)).sum::<i32>().max(0) };
    let total = sum(&|r| r.status.as_ref().map_or(0, |s| s.replicas));
    let ready = sum(&|r| {
        r.status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0)
    });
    let avail = sum(&|r| available(r));
    let updated = new_rs.status.as_ref().map_or(0, |s| s.replicas);
    let new_avail = available(&new_rs);
    let unavailable_max = scaled(
        serde_json::to_value(&spec.strategy)
            .unwrap_or(Value::Null)
            .pointer("/rollingUpdate/maxUnavailable"),
        want,
        25,
        false,
    );
    let now = crate::now();
    let prev: Vec<Value> = d
        .status
        .as_ref()
        .and_then(|s| serde_json::to_value(&s.conditions).ok())
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default();
    let cond = |t: &str, ok: bool, reason: &str, msg: String| {
        let s = if ok { "True" } else { "False" };
        let old = prev.iter().find(|c| c["type"] == t);
        let since = old
            .filter(|c| c["status"] == s)
            .and_then(|c| c["lastTransitionTime"].as_str())
            .unwrap_or(&now)
            .to_string();
        let updated_at = if old.is_some_and(|c| c["reason"] == reason && c["status"] == s) {
            old.and_then(|c| c["lastUpdateTime"].as_str())
                .unwrap_or(&now)
                .to_string()
        } else {
            now.clone()
        };
        json!({"type": t, "status": s, "reason": reason, "message": msg,
            "lastTransitionTime": since, "lastUpdateTime": updated_at})
    };
    let complete = updated == want && new_avail >= want && total == want;
    let available_c = if avail >= want - unavailable_max {
        cond(
            "Available",
            true,
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.".into(),
        )
    } else {
        cond(
            "Available",
            false,
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".into(),
        )
    };
    let progressing_c = if paused {
        cond(
            "Progressing",
            true,
            "DeploymentPaused",
            "Deployment is paused".into(),
        )
    } else if complete {
        cond(
            "Progressing",
            true,
            "NewReplicaSetAvailable",
            format!("ReplicaSet \"{new_name}\" has successfully progressed."),
        )
    } else {
        // Progress is the new set gaining updated or available pods; none for
        // progressDeadlineSeconds (600 by default) and the rollout has failed.
        let st = d.status.as_ref();
        let moved = st.and_then(|s| s.updated_replicas).unwrap_or(0) != updated
            || st.and_then(|s| s.available_replicas).unwrap_or(0) != avail;
        let old = prev.iter().find(|c| c["type"] == "Progressing");
        let last_progress = old
            .filter(|_| !moved)
            .and_then(|c| c["lastUpdateTime"].as_str())
            .and_then(timefmt::parse_rfc3339);
        let deadline = i128::from(spec.progress_deadline_seconds.unwrap_or(600)) * 1_000_000_000;
        // (A new rollout, a new set, starts its own clock.)
        let already = old.is_some_and(|c| {
            c["reason"] == "ProgressDeadlineExceeded"
                && c["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(&format!("\"{new_name}\"")))
        });
        if already || last_progress.is_some_and(|t| timefmt::now_nanos() - t > deadline) {
            cond(
                "Progressing",
                false,
                "ProgressDeadlineExceeded",
                format!("ReplicaSet \"{new_name}\" has timed out progressing."),
            )
        } else if moved {
            let mut c = cond(
                "Progressing",
                true,
                "ReplicaSetUpdated",
                format!("ReplicaSet \"{new_name}\" is progressing."),
            );
            c["lastUpdateTime"] = json!(now);
            c
        } else {
            cond(
                "Progressing",
                true,
                "ReplicaSetUpdated",
                format!("ReplicaSet \"{new_name}\" is progressing."),
            )
        }
    };
    let status = json!({
        "observedGeneration": d.metadata.generation,
        "replicas": total,
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": avail,
        "unavailableReplicas": (total - avail).max(0),
        "conditions": [available_c, progressing_c],
    });
    let cur = serde_json::to_value(&d.status).unwrap_or(Value::Null);
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(a) = v.get_mut("conditions").and_then(Value::as_array_mut) {
            for c in a {
                if let Some(o) = c.as_object_mut() {
                    o.remove("lastUpdateTime");
                    o.remove("lastTransitionTime");
                }
            }
        }
        if let Some(o) = v.as_object_mut() {
            o.remove("collisionCount");
        }
        v
    };
    if strip(&cur) != strip(&status) {
        let api: kube::Api<Deployment> = kube::Api::namespaced(client.clone(), &ns);
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": status})),
        )
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_stable_and_safe() {
        let t = json!({"spec": {"containers": [{"name": "c", "image": "a"}]}});
        let h = template_hash(&t, 0);
        assert_eq!(h, template_hash(&t, 0));
        assert_ne!(h, template_hash(&t, 1));
        assert!(h
            .bytes()
            .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b)));
    }

    #[test]
    fn surge_and_unavailable_round_as_kubernetes() {
        assert_eq!(scaled(None, 6, 25, true), 2);
        assert_eq!(scaled(None, 6, 25, false), 1);
        assert_eq!(scaled(Some(&json!("50%")), 5, 25, true), 3);
        assert_eq!(scaled(Some(&json!(2)), 5, 25, false), 2);
    }
}
