//! The DaemonSet controller, as Kubernetes': one pod on every node the pod may go on (its
//! nodeSelector, required node affinity and the node's taints), placed by the scheduler
//! through a required node affinity to that node's name; the tolerations Kubernetes adds to
//! daemon pods (not-ready and unreachable without a time limit, the pressure conditions,
//! unschedulable), so they stay on sick and cordoned nodes. A node that no longer fits loses
//! its pod; a failed pod is replaced. RollingUpdate replaces pods of older revisions within
//! `maxUnavailable` (deleting first) or `maxSurge` (the new pod first, the old one once the
//! new is available); OnDelete waits for the user to delete them. History is kept as
//! ControllerRevisions, so `kubectl rollout status|history|undo` work.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Patch, PatchParams};
use serde_json::{json, Value};

use crate::owned::{self, View};
use crate::revisions;

const NAME: &str = "daemonset-controller";

/// Runs the controller until the process ends.
pub async fn run(client: kube::Client) {
    owned::run::<DaemonSet, Pod, _>(client, "daemonset", true, DaemonSets::default()).await
}

#[derive(Default)]
struct DaemonSets {
    revisions: revisions::Known,
}

/// The tolerations Kubernetes adds to every daemon pod.
fn daemon_tolerations(spec: &mut Value) {
    let mut add = vec![
        json!({"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"}),
        json!({"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"}),
        json!({"key": "node.kubernetes.io/disk-pressure", "operator": "Exists", "effect": "NoSchedule"}),
        json!({"key": "node.kubernetes.io/memory-pressure", "operator": "Exists", "effect": "NoSchedule"}),
        json!({"key": "node.kubernetes.io/pid-pressure", "operator": "Exists", "effect": "NoSchedule"}),
        json!({"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}),
    ];
    if spec["hostNetwork"].as_bool() == Some(true) {
        add.push(json!({"key": "node.kubernetes.io/network-unavailable", "operator": "Exists", "effect": "NoSchedule"}));
    }
    let list = spec
        .as_object_mut()
        .map(|o| o.entry("tolerations").or_insert_with(|| json!([])));
    if let Some(Value::Array(list)) = list {
        for t in add {
            if !list
                .iter()
                .any(|x| x["key"] == t["key"] && x["effect"] == t["effect"])
            {
                list.push(t);
            }
        }
    }
}

/// The daemon pod for `node`, from the template.
fn pod_for(ds: &Value, node: &str, hash: &str) -> Value {
    let (mut meta, mut spec) = owned::from_template(ds);
    let name = ds["metadata"]["name"].as_str().unwrap_or_default();
    meta["generateName"] = json!(format!("{name}-"));
    meta["labels"][revisions::HASH_LABEL] = json!(hash);
    meta["labels"]["pod-template-generation"] = json!(ds["metadata"]["generation"]
        .as_i64()
        .unwrap_or(1)
        .to_string());
    daemon_tolerations(&mut spec);
    // Placed by the scheduler, pinned to the node by affinity (replacing any node affinity
    // terms' fields, as Kubernetes does).
    spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] = json!({
        "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}]
    });
    json!({"metadata": meta, "spec": spec})
}

/// The node a daemon pod is for: where it runs, or where its affinity pins it.
fn node_of(p: &Pod) -> Option<String> {
    if let Some(n) = p.spec.as_ref()?.node_name.clone().filter(|n| !n.is_empty()) {
        return Some(n);
    }
    let v = serde_json::to_value(p).ok()?;
    v.pointer("/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms/0/matchFields/0/values/0")
        .and_then(Value::as_str)
        .map(String::from)
}

fn available(p: &Pod, min_ready: i64) -> bool {
    if !owned::is_ready(p) {
        return false;
    }
    if min_ready <= 0 {
        return true;
    }
    let since = p
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| t.0.as_second());
    since.is_some_and(|s| jiff::Timestamp::now().as_second() - s >= min_ready)
}

/// An int-or-percent of `total`, rounded as Kubernetes rounds it (up for surge, down for
/// unavailable), but at least 1 for unavailable when surge is 0.
fn int_or_percent(v: &Value, total: i64, round_up: bool) -> i64 {
    match v {
        Value::Number(n) => n.as_i64().unwrap_or(0),
        Value::String(s) => {
            let pct: f64 = s.trim_end_matches('%').parse().unwrap_or(0.0);
            let x = pct * total as f64 / 100.0;
            if round_up {
                x.ceil() as i64
            } else {
                x.floor() as i64
            }
        }
        _ => 0,
    }
}

impl owned::Reconciler<DaemonSet, Pod> for DaemonSets {
    async fn reconcile(
        &self,
        client: &kube::Client,
        ds: &DaemonSet,
        view: View<'_, Pod>,
        changed: &mut HashSet<String>,
    ) -> anyhow::Result<Option<Duration>> {
        if ds.metadata.deletion_timestamp.is_some() {
            return Ok(None);
        }
        let v = serde_json::to_value(ds)?;
        let ns = ds.metadata.namespace.clone().unwrap_or_default();
        let name = ds.metadata.name.clone().unwrap_or_default();
        let involved = json!({"kind": "DaemonSet", "apiVersion": "apps/v1", "namespace": ns,
            "name": name, "uid": ds.metadata.uid});
        let history = v["spec"]["revisionHistoryLimit"]
            .as_i64()
            .unwrap_or(10)
            .max(0) as usize;
        let (hash, _) = self
            .revisions
            .current(client, &v, "apps/v1", "DaemonSet", history)
            .await?;
        let min_ready = v["spec"]["minReadySeconds"].as_i64().unwrap_or(0);
        let strategy = v["spec"]["updateStrategy"]["type"]
            .as_str()
            .unwrap_or("RollingUpdate")
            .to_string();

        // A probe pod from the template decides which nodes should run one.
        let probe: Pod = serde_json::from_value({
            let mut p = pod_for(&v, "", &hash);
            p["spec"]["affinity"]["nodeAffinity"] =
                v["spec"]["template"]["spec"]["affinity"]["nodeAffinity"].clone();
            if p["spec"]["affinity"]["nodeAffinity"].is_null() {
                p["spec"]["affinity"]
                    .as_object_mut()
                    .map(|o| o.remove("nodeAffinity"));
            }
            p
        })?;
        let eligible = |n: &Node| crate::scheduler::node_fit(&probe, n).is_none();

        let mut by_node: BTreeMap<String, Vec<Arc<Pod>>> = BTreeMap::new();
        for p in &view.pods {
            if p.metadata.deletion_timestamp.is_some() {
                continue;
            }
            if let Some(n) = node_of(p) {
                by_node.entry(n).or_default().push(p.clone());
            }
        }
        let mut create: Vec<String> = Vec::new();
        let mut delete: Vec<Arc<Pod>> = Vec::new();
        let mut desired = 0;
        let mut current = 0;
        let mut misscheduled = 0;
        let mut ready = 0;
        let mut avail = 0;
        let mut updated = 0;
        // Nodes whose daemon pod is unavailable, and old-revision pods that could go.
        let mut unavailable_nodes = 0;
        let mut old_pods: Vec<(String, Arc<Pod>, bool)> = Vec::new();
        let mut surge_waiting: Vec<String> = Vec::new();
        for (node_name, node) in view.nodes.iter() {
            let mut pods = by_node.remove(node_name).unwrap_or_default();
            // Failed pods are replaced.
            for p in pods.iter().filter(|p| owned::phase(p) == "Failed") {
                delete.push(p.clone());
            }
            pods.retain(|p| owned::phase(p) != "Failed");
            if !eligible(node) {
                if !pods.is_empty() {
                    misscheduled += 1;
                    delete.extend(pods);
                }
                continue;
            }
            desired += 1;
            if pods.is_empty() {
                create.push(node_name.clone());
                unavailable_nodes += 1;
                continue;
            }
            current += 1;
            pods.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
            let (new, old): (Vec<Arc<Pod>>, Vec<Arc<Pod>>) = pods
                .into_iter()
                .partition(|p| revisions::hash_of(p) == Some(hash.as_str()));
            if new.len() > 1 {
                delete.extend(new[1..].iter().cloned());
            }
            let any_ready = new.iter().chain(old.iter()).any(|p| owned::is_ready(p));
            if any_ready {
                ready += 1;
            }
            let new_avail = new.first().is_some_and(|p| available(p, min_ready));
            let old_avail = old.iter().any(|p| available(p, min_ready));
            if new_avail || old_avail {
                avail += 1;
            } else {
                unavailable_nodes += 1;
            }
            if !new.is_empty() {
                updated += 1;
                if new_avail {
                    // A surged node: the old pod goes once the new one is available.
                    delete.extend(old.iter().cloned());
                } else if !old.is_empty() {
                    surge_waiting.push(node_name.clone());
                }
            } else if let Some(o) = old.first() {
                old_pods.push((node_name.clone(), o.clone(), available(o, min_ready)));
                if old.len() > 1 {
                    delete.extend(old[1..].iter().cloned());
                }
            }
        }
        // Pods on nodes that are gone.
        for (_, pods) in by_node {
            misscheduled += 1;
            delete.extend(pods);
        }
        let mut requeue = None;
        if strategy == "RollingUpdate" && !old_pods.is_empty() {
            let ru = &v["spec"]["updateStrategy"]["rollingUpdate"];
            let surge = int_or_percent(&ru["maxSurge"], desired, true);
            let mut max_unavail = int_or_percent(
                ru.get("maxUnavailable").unwrap_or(&json!(1)),
                desired,
                false,
            );
            if surge == 0 && max_unavail == 0 {
                max_unavail = 1;
            }
            // Unavailable old pods go first: they cost nothing.
            old_pods.sort_by_key(|(_, _, a)| *a);
            if surge > 0 {
                let mut room = surge - surge_waiting.len() as i64;
                for (node, p, is_avail) in old_pods {
                    if !is_avail {
                        delete.push(p);
                    } else if room > 0 {
                        create.push(node);
                        room -= 1;
                    }
                }
            } else {
                let mut budget = max_unavail - unavailable_nodes;
                for (_, p, is_avail) in old_pods {
                    if !is_avail {
                        delete.push(p);
                    } else if budget > 0 {
                        delete.push(p);
                        budget -= 1;
                    }
                }
            }
            if min_ready > 0 {
                requeue = Some(Duration::from_secs(min_ready as u64));
            }
        }

        let status = json!({
            "desiredNumberScheduled": desired,
            "currentNumberScheduled": current,
            "numberMisscheduled": misscheduled,
            "numberReady": ready,
            "numberAvailable": avail,
            "numberUnavailable": desired - avail,
            "updatedNumberScheduled": updated,
            "observedGeneration": ds.metadata.generation,
        });
        let old_status = serde_json::to_value(&ds.status).unwrap_or_default();
        let differs = crate::status_differs(&status, &old_status);
        if differs {
            let api: kube::Api<DaemonSet> = kube::Api::namespaced(client.clone(), &ns);
            api.patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": status})),
            )
            .await?;
        }
        let report = owned::Reporter {
            component: NAME,
            involved: &involved,
        };
        let mut seen = HashSet::new();
        for p in delete {
            if !seen.insert(p.metadata.uid.clone()) {
                continue;
            }
            owned::delete_reported(client, &report, &p, changed).await?;
        }
        for node in create {
            let pod = pod_for(&v, &node, &hash);
            let owner = owned::owner_ref("apps/v1", "DaemonSet", &ds.metadata);
            owned::create_reported(client, &report, &ns, pod, owner, changed).await?;
        }
        Ok(requeue)
    }
}
