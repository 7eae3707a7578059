//! The ReplicaSet and ReplicationController controllers (one loop, as Kubernetes runs the
//! second on the first): keeps `spec.replicas` pods matching each set's selector, created from its template with a controller ownerReference, adopting orphans
//! that match and releasing nothing it does not own; deletes the excess (unscheduled and
//! unready pods first, then the newest); and reports `replicas`, `fullyLabeledReplicas`,
//! `readyReplicas`, `availableReplicas` and `observedGeneration`. Level-triggered: every
//! ReplicaSet is reconciled whenever it or one of its pods changes, one at a time.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec, ReplicationController};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{json, Value};

fn key_of(ns: &str, name: &str) -> String {
    format!("{ns}/{name}")
}

/// What the loop needs of a ReplicaSet or a ReplicationController.
pub trait Replicated:
    crate::Object + kube::Resource<Scope = k8s_openapi::NamespaceResourceScope> + serde::Serialize
{
    /// The component its events come from.
    const COMPONENT: &'static str;
    /// Whether its selector selects `labels` (an empty one selects nothing here; the API
    /// server refuses one anyway).
    fn selects(&self, labels: &BTreeMap<String, String>) -> bool;
    fn replicas(&self) -> i32;
    fn min_ready_seconds(&self) -> i32;
    fn template(&self) -> Option<&PodTemplateSpec>;
    /// The current status, as JSON.
    fn status_value(&self) -> Value;
}

/// The accessors both kinds' specs and statuses answer alike.
macro_rules! same_shape {
    () => {
        fn replicas(&self) -> i32 {
            self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
        }
        fn min_ready_seconds(&self) -> i32 {
            self.spec
                .as_ref()
                .and_then(|s| s.min_ready_seconds)
                .unwrap_or(0)
        }
        fn template(&self) -> Option<&PodTemplateSpec> {
            self.spec.as_ref().and_then(|s| s.template.as_ref())
        }
        fn status_value(&self) -> Value {
            serde_json::to_value(&self.status).unwrap_or(Value::Null)
        }
    };
}

impl Replicated for ReplicaSet {
    const COMPONENT: &'static str = "replicaset-controller";
    fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        let Some(sel) = self.spec.as_ref().map(|s| &s.selector) else {
            return false;
        };
        let empty = sel.match_labels.as_ref().is_none_or(|m| m.is_empty())
            && sel.match_expressions.as_deref().unwrap_or(&[]).is_empty();
        !empty && crate::schedplugins::selects(Some(sel), labels)
    }
    same_shape!();
}

impl Replicated for ReplicationController {
    const COMPONENT: &'static str = "replication-controller";
    fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        // A map selector; the API server defaults an absent one to the template's labels.
        let sel = self.spec.as_ref().and_then(|s| s.selector.as_ref());
        sel.is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| labels.get(k) == Some(v)))
    }
    same_shape!();
}

fn controller_uid(p: &Pod) -> Option<&str> {
    p.metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.as_str())
}

fn active(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && !matches!(
            p.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}

fn ready(p: &Pod) -> bool {
    crate::owned::is_ready(p)
}

struct Cache<K> {
    sets: HashMap<String, Arc<K>>,
    pods: HashMap<String, Arc<Pod>>,
    /// Kubernetes' "expectations": the pods a ReplicaSet created or deleted that the watch
    /// has not shown yet (by pod key), and since when. Until they are seen (or a while
    /// passed), the set is not scaled again, or a stale cache would create or delete twice.
    expect: HashMap<String, (std::collections::HashSet<String>, std::time::Instant)>,
}

/// How long a ReplicaSet waits for its creates and deletes to show before acting again.
const EXPECTATION_TIMEOUT: Duration = Duration::from_secs(30);

enum Change<K> {
    Set(Option<Arc<K>>, String),
    Pod(Option<Arc<Pod>>, String, Option<String>),
    SetsListed(std::collections::HashSet<String>),
    PodsListed(std::collections::HashSet<String>),
    Other,
}

/// Runs the controller of `K` until the process ends.
pub async fn run<K: Replicated>(client: kube::Client) {
    let sets: kube::Api<K> = kube::Api::all(client.clone());
    let pods: kube::Api<Pod> = kube::Api::all(client.clone());
    let set_events = crate::follow(sets).map(|e| match e {
        crate::Seen::Applied(r) => {
            let k = crate::key_of(&r);
            Change::Set(Some(Arc::new(r)), k)
        }
        crate::Seen::Deleted(r) => Change::Set(None, crate::key_of(&r)),
        crate::Seen::Listed(keys) => Change::SetsListed(keys),
        crate::Seen::Nothing => Change::Other,
    });
    let pod_events = crate::follow(pods).map(|e| match e {
        crate::Seen::Applied(p) => {
            let k = crate::key_of(&p);
            let owner = controller_uid(&p).map(str::to_string);
            Change::Pod(Some(Arc::new(p)), k, owner)
        }
        crate::Seen::Deleted(p) => {
            let k = crate::key_of(&p);
            let owner = controller_uid(&p).map(str::to_string);
            Change::Pod(None, k, owner)
        }
        crate::Seen::Listed(keys) => Change::PodsListed(keys),
        crate::Seen::Nothing => Change::Other,
    });
    let mut events = futures::stream::select(set_events.boxed(), pod_events.boxed());
    let mut cache: Cache<K> = Cache {
        sets: HashMap::new(),
        pods: HashMap::new(),
        expect: HashMap::new(),
    };
    let mut resync = tokio::time::interval(Duration::from_secs(30));
    loop {
        let mut dirty: BTreeSet<String> = BTreeSet::new();
        let first = tokio::select! {
            e = events.next() => match e { Some(e) => Some(e), None => return },
            _ = resync.tick() => {
                dirty.extend(cache.sets.keys().cloned());
                None
            }
        };
        let mut batch: Vec<Change<K>> = first.into_iter().collect();
        while let Some(Some(e)) = futures::FutureExt::now_or_never(events.next()) {
            batch.push(e);
        }
        for c in batch {
            match c {
                Change::Set(Some(r), k) => {
                    cache.sets.insert(k.clone(), r);
                    dirty.insert(k);
                }
                Change::Set(None, k) => {
                    cache.sets.remove(&k);
                }
                Change::Pod(p, k, owner) => {
                    let seen = match &p {
                        // Created: seen once listed; deleted: once marked or gone.
                        Some(p) => {
                            p.metadata.deletion_timestamp.is_some() || !cache.pods.contains_key(&k)
                        }
                        None => true,
                    };
                    match p {
                        Some(p) => {
                            cache.pods.insert(k.clone(), p);
                        }
                        None => {
                            cache.pods.remove(&k);
                        }
                    }
                    if seen {
                        for (pending, _) in cache.expect.values_mut() {
                            pending.remove(&k);
                        }
                    }
                    // The owner, and any set whose selector might adopt it.
                    let ns = k.split('/').next().unwrap_or_default().to_string();
                    for (sk, s) in &cache.sets {
                        if s.meta().namespace.as_deref() == Some(ns.as_str())
                            && (owner.as_deref() == s.meta().uid.as_deref() || owner.is_none())
                        {
                            dirty.insert(sk.clone());
                        }
                    }
                }
                Change::SetsListed(keys) => cache.sets.retain(|k, _| keys.contains(k)),
                Change::PodsListed(keys) => {
                    // Pods deleted while the watch was down: gone from the cache, and no
                    // longer expected; every set is counted again.
                    cache.pods.retain(|k, _| keys.contains(k));
                    for (pending, _) in cache.expect.values_mut() {
                        pending.retain(|k| keys.contains(k));
                    }
                    dirty.extend(cache.sets.keys().cloned());
                }
                Change::Other => {}
            }
        }
        cache.expect.retain(|_, (pending, since)| {
            !pending.is_empty() && since.elapsed() < EXPECTATION_TIMEOUT
        });
        for k in dirty {
            if let Some(rs) = cache.sets.get(&k).cloned() {
                let settled = !cache.expect.contains_key(&k);
                let mut pending = std::collections::HashSet::new();
                // What was created or deleted is expected even when a later step failed.
                if let Err(e) = reconcile(&client, rs.as_ref(), &cache, settled, &mut pending).await
                {
                    eprintln!("berth controllers: {} {k}: {e}", K::COMPONENT);
                }
                if !pending.is_empty() {
                    cache.expect.insert(k, (pending, std::time::Instant::now()));
                }
            }
        }
    }
}

/// Reconciles one ReplicaSet; scales only when `settled` (no creates or deletes still to
/// show). Returns the keys of the pods it created or deleted.
async fn reconcile<K: Replicated>(
    client: &kube::Client,
    rs: &K,
    cache: &Cache<K>,
    settled: bool,
    pending: &mut std::collections::HashSet<String>,
) -> anyhow::Result<()> {
    let meta = rs.meta();
    let ns = meta.namespace.clone().unwrap_or_default();
    let name = meta.name.clone().unwrap_or_default();
    let uid = meta.uid.clone().unwrap_or_default();
    if meta.deletion_timestamp.is_some() {
        return Ok(());
    }
    let pods_api: kube::Api<Pod> = kube::Api::namespaced(client.clone(), &ns);
    let mut mine: Vec<Arc<Pod>> = Vec::new();
    for p in cache.pods.values() {
        if p.metadata.namespace.as_deref() != Some(ns.as_str()) {
            continue;
        }
        let labels = p.metadata.labels.clone().unwrap_or_default();
        match controller_uid(p) {
            Some(o) if o == uid => mine.push(p.clone()),
            None if active(p) && rs.selects(&labels) => {
                // Adopt an orphan that matches.
                let patch = json!({"metadata": {"ownerReferences": [owner_ref(rs)], "uid": p.metadata.uid}});
                if pods_api
                    .patch(
                        p.metadata.name.as_deref().unwrap_or_default(),
                        &PatchParams::default(),
                        &Patch::Strategic(&patch),
                    )
                    .await
                    .is_ok()
                {
                    mine.push(p.clone());
                }
            }
            _ => {}
        }
    }
    let live: Vec<&Arc<Pod>> = mine.iter().filter(|p| active(p)).collect();
    let want = rs.replicas().max(0) as usize;
    let involved = json!({"kind": K::kind(&()), "namespace": ns, "name": name, "uid": uid, "apiVersion": K::api_version(&())});
    if !settled {
        // Wait for what was asked to show before counting again.
    } else if live.len() < want {
        for _ in 0..(want - live.len()) {
            let pod = pod_from_template(rs)?;
            match pods_api.create(&PostParams::default(), &pod).await {
                Ok(p) => {
                    let pn = p.metadata.name.unwrap_or_default();
                    pending.insert(key_of(&ns, &pn));
                    crate::event(
                        client,
                        K::COMPONENT,
                        involved.clone(),
                        "Normal",
                        "SuccessfulCreate",
                        &format!("Created pod: {pn}"),
                    )
                    .await;
                }
                Err(e) => {
                    crate::event(
                        client,
                        K::COMPONENT,
                        involved.clone(),
                        "Warning",
                        "FailedCreate",
                        &format!("Error creating: {e}"),
                    )
                    .await;
                    break;
                }
            }
        }
    } else if live.len() > want {
        let mut victims: Vec<&Arc<Pod>> = live.clone();
        // Unscheduled first, then not ready, then the newest.
        victims.sort_by_key(|p| {
            (
                p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some(),
                ready(p),
                std::cmp::Reverse(
                    p.metadata
                        .creation_timestamp
                        .as_ref()
                        .map(|t| t.0.to_string()),
                ),
            )
        });
        for p in victims.iter().take(live.len() - want) {
            let pn = p.metadata.name.clone().unwrap_or_default();
            if pods_api.delete(&pn, &DeleteParams::default()).await.is_ok() {
                pending.insert(key_of(&ns, &pn));
                crate::event(
                    client,
                    K::COMPONENT,
                    involved.clone(),
                    "Normal",
                    "SuccessfulDelete",
                    &format!("Deleted pod: {pn}"),
                )
                .await;
            }
        }
    }
    // Status.
    let min_ready = rs.min_ready_seconds();
    let template_labels = rs
        .template()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let fully = live
        .iter()
        .filter(|p| {
            let l = p.metadata.labels.clone().unwrap_or_default();
            template_labels.iter().all(|(k, v)| l.get(k) == Some(v))
        })
        .count();
    let ready_n = live.iter().filter(|p| ready(p)).count();
    let available = live
        .iter()
        .filter(|p| {
            ready(p)
                && (min_ready == 0
                    || p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                        .and_then(|c| c.last_transition_time.as_ref())
                        .is_some_and(|t| {
                            let since = timefmt::parse_rfc3339(
                                &serde_json::to_value(t)
                                    .ok()
                                    .and_then(|v| v.as_str().map(str::to_string))
                                    .unwrap_or_default(),
                            )
                            .unwrap_or(0);
                            timefmt::now_nanos() - since >= i128::from(min_ready) * 1_000_000_000
                        }))
        })
        .count();
    let status = json!({
        "replicas": live.len(),
        "fullyLabeledReplicas": fully,
        "readyReplicas": ready_n,
        "availableReplicas": available,
        "observedGeneration": meta.generation,
    });
    let current = rs.status_value();
    let same = [
        "replicas",
        "fullyLabeledReplicas",
        "readyReplicas",
        "availableReplicas",
        "observedGeneration",
    ]
    .iter()
    .all(|k| current.get(*k).unwrap_or(&json!(0)) == status.get(*k).unwrap_or(&json!(0)));
    if !same {
        let api: kube::Api<K> = kube::Api::namespaced(client.clone(), &ns);
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": status})),
        )
        .await?;
    }
    Ok(())
}

fn owner_ref<K: Replicated>(rs: &K) -> Value {
    crate::owned::owner_ref(&K::api_version(&()), &K::kind(&()), rs.meta())
}

fn pod_from_template<K: Replicated>(rs: &K) -> anyhow::Result<Pod> {
    let t = rs
        .template()
        .ok_or_else(|| anyhow::anyhow!("the {} has no pod template", K::kind(&())))?;
    let mut meta = serde_json::to_value(t.metadata.clone().unwrap_or_default())?;
    meta["generateName"] = json!(format!(
        "{}-",
        rs.meta().name.as_deref().unwrap_or_default()
    ));
    meta["namespace"] = json!(rs.meta().namespace);
    meta["ownerReferences"] = json!([owner_ref(rs)]);
    if let Some(o) = meta.as_object_mut() {
        o.remove("name");
    }
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": meta,
        "spec": serde_json::to_value(&t.spec)?,
    }))?)
}
