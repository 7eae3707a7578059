//! The StatefulSet controller, as Kubernetes': pods with stable names `<set>-<ordinal>`,
//! hostnames and (with `serviceName`) subdomains, and a PersistentVolumeClaim per
//! `volumeClaimTemplates` entry and ordinal (`<template>-<set>-<ordinal>`, kept when the pod
//! or the set goes, as the default Retain policy says).
//!
//! OrderedReady creates ordinal i only once 0..i are Running and Ready, and removes the
//! highest first, one at a time; Parallel does all at once. RollingUpdate replaces pods of
//! an older revision from the highest ordinal down to `partition`, one at a time, each only
//! when every pod is Ready; OnDelete replaces them when the user deletes them. Revisions are
//! ControllerRevisions; `currentRevision` follows `updateRevision` once every pod is on it.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{json, Value};

use crate::owned::{self, View};
use crate::revisions;

const NAME: &str = "statefulset-controller";

/// Runs the controller until the process ends.
pub async fn run(client: kube::Client) {
    owned::run::<StatefulSet, Pod, _>(client, "statefulset", false, StatefulSets::default()).await
}

#[derive(Default)]
struct StatefulSets {
    revisions: revisions::Known,
}

fn ordinal(set: &str, p: &Pod) -> Option<i64> {
    p.metadata
        .name
        .as_deref()?
        .strip_prefix(set)?
        .strip_prefix('-')?
        .parse()
        .ok()
}

fn healthy(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none() && owned::phase(p) == "Running" && owned::is_ready(p)
}

/// The pod for `ordinal`, at revision `rev` (the revision's name).
fn pod_for(set: &Value, ordinal: i64, rev: &str) -> Value {
    let name = set["metadata"]["name"].as_str().unwrap_or_default();
    let (mut meta, mut spec) = owned::from_template(set);
    let pod_name = format!("{name}-{ordinal}");
    meta["name"] = json!(pod_name);
    meta["labels"][revisions::HASH_LABEL] = json!(rev);
    meta["labels"]["statefulset.kubernetes.io/pod-name"] = json!(pod_name);
    meta["labels"]["apps.kubernetes.io/pod-index"] = json!(ordinal.to_string());
    spec["hostname"] = json!(pod_name);
    if let Some(svc) = set["spec"]["serviceName"]
        .as_str()
        .filter(|s| !s.is_empty())
    {
        spec["subdomain"] = json!(svc);
    }
    for t in set["spec"]["volumeClaimTemplates"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let tn = t["metadata"]["name"].as_str().unwrap_or_default();
        let claim = format!("{tn}-{name}-{ordinal}");
        let vols = spec
            .as_object_mut()
            .map(|o| o.entry("volumes").or_insert_with(|| json!([])));
        if let Some(Value::Array(vols)) = vols {
            vols.retain(|v| v["name"] != json!(tn));
            vols.push(json!({"name": tn, "persistentVolumeClaim": {"claimName": claim}}));
        }
    }
    json!({"metadata": meta, "spec": spec})
}

/// Creates the ordinal's claims that do not exist yet.
async fn ensure_claims(client: &kube::Client, set: &Value, ordinal: i64) -> anyhow::Result<()> {
    let ns = set["metadata"]["namespace"].as_str().unwrap_or_default();
    let name = set["metadata"]["name"].as_str().unwrap_or_default();
    let api: kube::Api<PersistentVolumeClaim> = kube::Api::namespaced(client.clone(), ns);
    for t in set["spec"]["volumeClaimTemplates"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let tn = t["metadata"]["name"].as_str().unwrap_or_default();
        let claim = format!("{tn}-{name}-{ordinal}");
        if api.get_opt(&claim).await?.is_some() {
            continue;
        }
        let mut meta = t.get("metadata").cloned().unwrap_or_else(|| json!({}));
        meta["name"] = json!(claim);
        meta["namespace"] = json!(ns);
        if let Some(sel) = set["spec"]["selector"]["matchLabels"].as_object() {
            for (k, v) in sel {
                meta["labels"][k] = v.clone();
            }
        }
        let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": meta, "spec": t.get("spec").cloned().unwrap_or_else(|| json!({})),
        }))?;
        match api.create(&PostParams::default(), &pvc).await {
            Ok(_) => {
                let involved = json!({"kind": "StatefulSet", "apiVersion": "apps/v1", "namespace": ns,
                    "name": name, "uid": set["metadata"]["uid"]});
                crate::event(
                    client,
                    NAME,
                    involved,
                    "Normal",
                    "SuccessfulCreate",
                    &format!(
                        "create Claim {claim} Pod {name}-{ordinal} in StatefulSet {name} success"
                    ),
                )
                .await;
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

impl owned::Reconciler<StatefulSet, Pod> for StatefulSets {
    async fn reconcile(
        &self,
        client: &kube::Client,
        sts: &StatefulSet,
        view: View<'_, Pod>,
        changed: &mut HashSet<String>,
    ) -> anyhow::Result<Option<Duration>> {
        if sts.metadata.deletion_timestamp.is_some() {
            return Ok(None);
        }
        let v = serde_json::to_value(sts)?;
        let ns = sts.metadata.namespace.clone().unwrap_or_default();
        let name = sts.metadata.name.clone().unwrap_or_default();
        let involved = json!({"kind": "StatefulSet", "apiVersion": "apps/v1", "namespace": ns,
            "name": name, "uid": sts.metadata.uid});
        let history = v["spec"]["revisionHistoryLimit"]
            .as_i64()
            .unwrap_or(10)
            .max(0) as usize;
        let (hash, _) = self
            .revisions
            .current(client, &v, "apps/v1", "StatefulSet", history)
            .await?;
        let update_rev = format!("{name}-{hash}");
        let current_rev = v["status"]["currentRevision"]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or(&update_rev)
            .to_string();
        let replicas = v["spec"]["replicas"].as_i64().unwrap_or(1).max(0);
        let parallel = v["spec"]["podManagementPolicy"].as_str() == Some("Parallel");
        let strategy = v["spec"]["updateStrategy"]["type"]
            .as_str()
            .unwrap_or("RollingUpdate");
        let partition = v["spec"]["updateStrategy"]["rollingUpdate"]["partition"]
            .as_i64()
            .unwrap_or(0);

        let mut pods: BTreeMap<i64, Arc<Pod>> = BTreeMap::new();
        let mut strays: Vec<Arc<Pod>> = Vec::new();
        for p in &view.pods {
            match ordinal(&name, p) {
                Some(o) => {
                    pods.insert(o, p.clone());
                }
                None => strays.push(p.clone()),
            }
        }
        let mut create: Vec<(i64, String)> = Vec::new();
        let mut delete: Vec<Arc<Pod>> = Vec::new();
        let terminating = pods
            .values()
            .any(|p| p.metadata.deletion_timestamp.is_some());
        // Failed pods are replaced.
        for p in pods.values() {
            if owned::phase(p) == "Failed" && p.metadata.deletion_timestamp.is_none() {
                delete.push(p.clone());
            }
        }
        // The revision a missing pod is made at: below the partition, the current one.
        let rev_for = |o: i64| -> String {
            if strategy == "RollingUpdate" && o < partition {
                current_rev.clone()
            } else {
                update_rev.clone()
            }
        };
        // Scale up: missing ordinals below replicas.
        for o in 0..replicas {
            match pods.get(&o) {
                Some(_) => {}
                None => {
                    create.push((o, rev_for(o)));
                    if !parallel {
                        break;
                    }
                }
            }
            if !parallel && !pods.get(&o).is_some_and(|p| healthy(p)) {
                break;
            }
        }
        // Scale down: the highest ordinal first, one at a time unless Parallel.
        let excess: Vec<Arc<Pod>> = pods
            .range(replicas..)
            .rev()
            .map(|(_, p)| p.clone())
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        if !excess.is_empty() {
            let ordered_ok =
                parallel || (!terminating && pods.range(..replicas).all(|(_, p)| healthy(p)));
            if ordered_ok {
                if parallel {
                    delete.extend(excess);
                } else {
                    delete.push(excess[0].clone());
                }
            }
        }
        // Rolling update: the highest ordinal not at the update revision, when all are Ready.
        if strategy == "RollingUpdate" && create.is_empty() && delete.is_empty() && !terminating {
            let all_healthy = (0..replicas).all(|o| pods.get(&o).is_some_and(|p| healthy(p)));
            if all_healthy {
                if let Some(p) = (partition.max(0)..replicas)
                    .rev()
                    .filter_map(|o| pods.get(&o))
                    .find(|p| revisions::hash_of(p) != Some(update_rev.as_str()))
                {
                    delete.push(p.clone());
                }
            }
        }
        delete.extend(strays);

        // Status.
        let live: Vec<&Arc<Pod>> = pods
            .range(..replicas)
            .map(|(_, p)| p)
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        let updated = live
            .iter()
            .filter(|p| revisions::hash_of(p) == Some(update_rev.as_str()))
            .count() as i64;
        let current = live
            .iter()
            .filter(|p| revisions::hash_of(p) == Some(current_rev.as_str()))
            .count() as i64;
        let ready = live.iter().filter(|p| owned::is_ready(p)).count() as i64;
        let mut new_current = current_rev.clone();
        if updated == replicas && ready == replicas && live.len() as i64 == replicas {
            new_current = update_rev.clone();
        }
        let status = json!({
            "replicas": pods.values().filter(|p| p.metadata.deletion_timestamp.is_none()).count(),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "currentReplicas": if new_current == update_rev { updated } else { current },
            "updatedReplicas": updated,
            "currentRevision": new_current,
            "updateRevision": update_rev,
            "observedGeneration": sts.metadata.generation,
            "collisionCount": 0,
        });
        let old_status = serde_json::to_value(&sts.status).unwrap_or_default();
        if crate::status_differs(&status, &old_status) {
            let api: kube::Api<StatefulSet> = kube::Api::namespaced(client.clone(), &ns);
            api.patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": status})),
            )
            .await?;
        }
        for p in delete {
            if let Some(k) = owned::delete_pod(client, &p).await? {
                changed.insert(k);
                let pn = p.metadata.name.clone().unwrap_or_default();
                crate::event(
                    client,
                    NAME,
                    involved.clone(),
                    "Normal",
                    "SuccessfulDelete",
                    &format!("delete Pod {pn} in StatefulSet {name} successful"),
                )
                .await;
            }
        }
        for (o, rev) in create {
            ensure_claims(client, &v, o).await?;
            // A pod of that revision's template: the current one below the partition.
            let src = if rev == update_rev {
                v.clone()
            } else {
                let mut old = v.clone();
                if let Some(t) = revision_template(client, &ns, &rev).await? {
                    old["spec"]["template"] = t;
                }
                old
            };
            let pod = pod_for(&src, o, &rev);
            let owner = owned::owner_ref("apps/v1", "StatefulSet", &sts.metadata);
            match owned::create_pod(client, &ns, pod, owner).await {
                Ok(k) => {
                    changed.insert(k);
                    crate::event(
                        client,
                        NAME,
                        involved.clone(),
                        "Normal",
                        "SuccessfulCreate",
                        &format!("create Pod {name}-{o} in StatefulSet {name} successful"),
                    )
                    .await;
                }
                Err(e)
                    if e.downcast_ref::<kube::Error>()
                        .is_some_and(|k| matches!(k, kube::Error::Api(s) if s.code == 409)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }
}

/// The pod template a ControllerRevision holds.
async fn revision_template(
    client: &kube::Client,
    ns: &str,
    rev: &str,
) -> anyhow::Result<Option<Value>> {
    let api: kube::Api<k8s_openapi::api::apps::v1::ControllerRevision> =
        kube::Api::namespaced(client.clone(), ns);
    Ok(api.get_opt(rev).await?.and_then(|r| {
        let mut t = r.data?.0.pointer("/spec/template")?.clone();
        t.as_object_mut().map(|o| o.remove("$patch"));
        Some(t)
    }))
}
