//! The loop shared by the controllers whose objects own pods (Jobs, DaemonSets,
//! StatefulSets): watch the owners, their pods (and nodes, for those that care), keep them
//! in a cache, and reconcile each owner, one at a time, whenever it, one of its pods or a
//! node changes, when it asked to be looked at again, and every 30 s.
//!
//! Kubernetes' "expectations" guard against a cache that lags: the pods a reconcile created
//! or deleted are remembered until the watch shows them, and the owner is not reconciled
//! again before that (or 30 s), so nothing is created or deleted twice.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};

/// How long an owner waits for its creates and deletes to show before acting again.
const EXPECTATION_TIMEOUT: Duration = Duration::from_secs(30);

/// What a reconcile sees.
pub struct View<'a, C = Pod> {
    /// The children (pods, or Jobs for CronJobs) whose controller is the object.
    pub pods: Vec<Arc<C>>,
    /// Every node, by name (empty unless the controller watches nodes).
    pub nodes: &'a BTreeMap<String, Arc<Node>>,
}

/// One controller's reconcile.
pub trait Reconciler<K, C = Pod>: Send + Sync + 'static {
    /// Brings `obj` to its desired state. Adds the keys (`ns/name`) of the pods it created
    /// or deleted to `changed`; returns when it wants to be called again regardless.
    fn reconcile(
        &self,
        client: &kube::Client,
        obj: &K,
        view: View<'_, C>,
        changed: &mut HashSet<String>,
    ) -> impl Future<Output = anyhow::Result<Option<Duration>>> + Send;
}

enum Change<K, C> {
    Obj(Option<Arc<K>>, String),
    ObjsListed(HashSet<String>),
    Pod(Option<Arc<C>>, String),
    PodsListed(HashSet<String>),
    Node(Option<Arc<Node>>, String),
    Other,
}

fn controller_uid<C: kube::Resource>(p: &C) -> Option<String> {
    p.meta()
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.clone())
}

/// Runs `r` over every `K` until the process ends (children of kind `C`).
pub async fn run<K, C, R>(client: kube::Client, name: &'static str, watch_nodes: bool, r: R)
where
    K: crate::Object,
    C: crate::Object,
    R: Reconciler<K, C>,
{
    let objs = crate::follow(kube::Api::<K>::all(client.clone())).map(|e| match e {
        crate::Seen::Applied(o) => {
            let k = crate::key_of(&o);
            Change::Obj(Some(Arc::new(o)), k)
        }
        crate::Seen::Deleted(o) => Change::Obj(None, crate::key_of(&o)),
        crate::Seen::Listed(keys) => Change::ObjsListed(keys),
        crate::Seen::Nothing => Change::Other,
    });
    let pods = crate::follow(kube::Api::<C>::all(client.clone())).map(|e| match e {
        crate::Seen::Applied(p) => {
            let k = crate::key_of(&p);
            Change::Pod(Some(Arc::new(p)), k)
        }
        crate::Seen::Deleted(p) => Change::Pod(None, crate::key_of(&p)),
        crate::Seen::Listed(keys) => Change::PodsListed(keys),
        crate::Seen::Nothing => Change::Other,
    });
    let mut streams = vec![objs.boxed(), pods.boxed()];
    if watch_nodes {
        let nodes = crate::follow(kube::Api::<Node>::all(client.clone())).map(|e| match e {
            crate::Seen::Applied(n) => {
                let k = n.metadata.name.clone().unwrap_or_default();
                Change::Node(Some(Arc::new(n)), k)
            }
            crate::Seen::Deleted(n) => Change::Node(None, n.metadata.name.unwrap_or_default()),
            _ => Change::Other,
        });
        streams.push(nodes.boxed());
    }
    let mut events = futures::stream::select_all(streams);
    let mut objs: HashMap<String, Arc<K>> = HashMap::new();
    let mut uids: HashMap<String, String> = HashMap::new();
    let mut pods: HashMap<String, Arc<C>> = HashMap::new();
    let mut by_owner: HashMap<String, BTreeSet<String>> = HashMap::new();
    let mut nodes: BTreeMap<String, Arc<Node>> = BTreeMap::new();
    let mut expect: HashMap<String, (HashSet<String>, Instant)> = HashMap::new();
    let mut wake: HashMap<String, Instant> = HashMap::new();
    let mut resync = tokio::time::interval(Duration::from_secs(30));
    loop {
        let mut dirty: BTreeSet<String> = BTreeSet::new();
        let next_wake = wake.values().min().copied();
        let first = tokio::select! {
            e = events.next() => match e { Some(e) => Some(e), None => return },
            _ = resync.tick() => {
                dirty.extend(objs.keys().cloned());
                None
            }
            _ = async {
                match next_wake {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            } => None,
        };
        let mut batch: Vec<Change<K, C>> = first.into_iter().collect();
        while let Some(Some(e)) = futures::FutureExt::now_or_never(events.next()) {
            batch.push(e);
        }
        let now = Instant::now();
        wake.retain(|k, t| {
            if *t <= now {
                dirty.insert(k.clone());
                false
            } else {
                true
            }
        });
        let uid_to_key = |uids: &HashMap<String, String>, uid: &str| {
            uids.iter()
                .find(|(_, u)| u.as_str() == uid)
                .map(|(k, _)| k.clone())
        };
        for c in batch {
            match c {
                Change::Obj(Some(o), k) => {
                    uids.insert(k.clone(), o.meta().uid.clone().unwrap_or_default());
                    objs.insert(k.clone(), o);
                    dirty.insert(k);
                }
                Change::Obj(None, k) => {
                    objs.remove(&k);
                    uids.remove(&k);
                    expect.remove(&k);
                    wake.remove(&k);
                }
                Change::ObjsListed(keys) => {
                    objs.retain(|k, _| keys.contains(k));
                    uids.retain(|k, _| keys.contains(k));
                }
                Change::Pod(p, k) => {
                    let old_owner = pods.get(&k).and_then(|p| controller_uid(p.as_ref()));
                    let new_owner = p.as_ref().and_then(|p| controller_uid(p.as_ref()));
                    let seen = match &p {
                        Some(p) => p.meta().deletion_timestamp.is_some() || !pods.contains_key(&k),
                        None => true,
                    };
                    if seen {
                        for (pending, _) in expect.values_mut() {
                            pending.remove(&k);
                        }
                    }
                    if let Some(o) = &old_owner {
                        if let Some(s) = by_owner.get_mut(o) {
                            s.remove(&k);
                        }
                    }
                    match p {
                        Some(p) => {
                            if let Some(o) = &new_owner {
                                by_owner.entry(o.clone()).or_default().insert(k.clone());
                            }
                            pods.insert(k.clone(), p);
                        }
                        None => {
                            pods.remove(&k);
                        }
                    }
                    for o in [old_owner, new_owner].into_iter().flatten() {
                        if let Some(key) = uid_to_key(&uids, &o) {
                            dirty.insert(key);
                        }
                    }
                }
                Change::PodsListed(keys) => {
                    pods.retain(|k, _| keys.contains(k));
                    for s in by_owner.values_mut() {
                        s.retain(|k| keys.contains(k));
                    }
                    for (pending, _) in expect.values_mut() {
                        pending.retain(|k| keys.contains(k));
                    }
                    dirty.extend(objs.keys().cloned());
                }
                Change::Node(n, k) => {
                    match n {
                        Some(n) => nodes.insert(k, n),
                        None => nodes.remove(&k),
                    };
                    dirty.extend(objs.keys().cloned());
                }
                Change::Other => {}
            }
        }
        expect.retain(|_, (pending, since)| {
            !pending.is_empty() && since.elapsed() < EXPECTATION_TIMEOUT
        });
        for k in dirty {
            let Some(o) = objs.get(&k).cloned() else {
                continue;
            };
            if expect.contains_key(&k) {
                continue;
            }
            let uid = o.meta().uid.clone().unwrap_or_default();
            let owned: Vec<Arc<C>> = by_owner
                .get(&uid)
                .map(|s| s.iter().filter_map(|k| pods.get(k).cloned()).collect())
                .unwrap_or_default();
            let mut changed = HashSet::new();
            let view = View {
                pods: owned,
                nodes: &nodes,
            };
            match r.reconcile(&client, &o, view, &mut changed).await {
                Ok(Some(after)) => {
                    wake.insert(k.clone(), Instant::now() + after);
                }
                Ok(None) => {}
                Err(e) => {
                    eprintln!("berth controllers: {name} {k}: {e:#}");
                    wake.insert(k.clone(), Instant::now() + Duration::from_secs(2));
                }
            }
            if !changed.is_empty() {
                expect.insert(k, (changed, Instant::now()));
            }
        }
    }
}

/// Creates a pod owned (as its controller) by the object of `owner` (an ownerReference);
/// returns its `ns/name`.
pub async fn create_pod(
    client: &kube::Client,
    ns: &str,
    mut pod: serde_json::Value,
    owner: serde_json::Value,
) -> anyhow::Result<String> {
    pod["apiVersion"] = "v1".into();
    pod["kind"] = "Pod".into();
    pod["metadata"]["ownerReferences"] = serde_json::json!([owner]);
    let p: Pod = serde_json::from_value(pod)?;
    let api: kube::Api<Pod> = kube::Api::namespaced(client.clone(), ns);
    let made = api.create(&Default::default(), &p).await?;
    Ok(format!(
        "{ns}/{}",
        made.metadata.name.clone().unwrap_or_default()
    ))
}

/// Deletes a pod (with a UID precondition); returns its key, or None if it was gone.
pub async fn delete_pod(client: &kube::Client, p: &Pod) -> anyhow::Result<Option<String>> {
    let ns = p.metadata.namespace.clone().unwrap_or_default();
    let name = p.metadata.name.clone().unwrap_or_default();
    let api: kube::Api<Pod> = kube::Api::namespaced(client.clone(), &ns);
    let dp = kube::api::DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: p.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(&name, &dp).await {
        Ok(_) => Ok(Some(format!("{ns}/{name}"))),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Who reports a controller's pod creates and deletes as Events, and about what object.
pub struct Reporter<'a> {
    pub component: &'a str,
    pub involved: &'a serde_json::Value,
}

/// [`create_pod`], recorded in `changed` (the expectations) and as a `SuccessfulCreate`
/// event "Created pod: NAME", as the ReplicaSet, Job and DaemonSet controllers word it.
pub async fn create_reported(
    client: &kube::Client,
    r: &Reporter<'_>,
    ns: &str,
    pod: serde_json::Value,
    owner: serde_json::Value,
    changed: &mut HashSet<String>,
) -> anyhow::Result<()> {
    let k = create_pod(client, ns, pod, owner).await?;
    let name = k.split('/').nth(1).unwrap_or_default().to_string();
    changed.insert(k);
    let msg = format!("Created pod: {name}");
    crate::event(
        client,
        r.component,
        r.involved.clone(),
        "Normal",
        "SuccessfulCreate",
        &msg,
    )
    .await;
    Ok(())
}

/// [`delete_pod`], recorded in `changed` and as a `SuccessfulDelete` event "Deleted pod:
/// NAME" when the pod was there.
pub async fn delete_reported(
    client: &kube::Client,
    r: &Reporter<'_>,
    p: &Pod,
    changed: &mut HashSet<String>,
) -> anyhow::Result<()> {
    if let Some(k) = delete_pod(client, p).await? {
        changed.insert(k);
        let msg = format!(
            "Deleted pod: {}",
            p.metadata.name.as_deref().unwrap_or_default()
        );
        crate::event(
            client,
            r.component,
            r.involved.clone(),
            "Normal",
            "SuccessfulDelete",
            &msg,
        )
        .await;
    }
    Ok(())
}

/// An ownerReference to `obj` as its controller.
pub fn owner_ref(api_version: &str, kind: &str, m: &kube::api::ObjectMeta) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": api_version, "kind": kind,
        "name": m.name, "uid": m.uid,
        "controller": true, "blockOwnerDeletion": true,
    })
}

/// The metadata and spec of a new pod from `owner`'s `spec.template`, with the name,
/// generateName and namespace taken off (the caller names it).
pub fn from_template(owner: &serde_json::Value) -> (serde_json::Value, serde_json::Value) {
    let t = &owner["spec"]["template"];
    let mut meta = t
        .get("metadata")
        .cloned()
        .unwrap_or_else(|| serde_json::json!({}));
    let spec = t
        .get("spec")
        .cloned()
        .unwrap_or_else(|| serde_json::json!({}));
    if let Some(m) = meta.as_object_mut() {
        m.remove("name");
        m.remove("generateName");
        m.remove("namespace");
    }
    (meta, spec)
}

/// The pod's phase.
pub fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// Whether the pod's Ready condition is True.
pub fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
