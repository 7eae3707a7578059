//! The garbage collector, for every kind berth's controllers own (see [`KINDS`]). A
//! dependent whose owners are all gone is deleted (background propagation, checked against
//! the API before acting, with a UID precondition); an owner deleted with
//! `propagationPolicy: Orphan` has its dependents' ownerReferences to it removed, then its
//! `orphan` finalizer; one deleted with `Foreground` has its dependents deleted, and loses
//! its `foregroundDeletion` finalizer once none is left.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions};
use kube::core::GroupVersionKind;
use serde_json::json;

/// The kinds the collector follows: (group, version, kind, plural).
pub const KINDS: &[(&str, &str, &str, &str)] = &[
    ("apps", "v1", "Deployment", "deployments"),
    ("apps", "v1", "ReplicaSet", "replicasets"),
    ("apps", "v1", "StatefulSet", "statefulsets"),
    ("apps", "v1", "DaemonSet", "daemonsets"),
    ("apps", "v1", "ControllerRevision", "controllerrevisions"),
    ("batch", "v1", "Job", "jobs"),
    ("batch", "v1", "CronJob", "cronjobs"),
    ("", "v1", "ReplicationController", "replicationcontrollers"),
    ("", "v1", "Pod", "pods"),
    ("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
];

fn resource(kind: &str) -> Option<ApiResource> {
    let (g, v, k, plural) = KINDS.iter().find(|x| x.2 == kind)?;
    Some(ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(g, v, k),
        plural,
    ))
}

/// A dynamic API for one of [`KINDS`] in `ns`.
pub fn api(client: &kube::Client, kind: &str, ns: &str) -> Option<kube::Api<DynamicObject>> {
    resource(kind).map(|r| kube::Api::namespaced_with(client.clone(), ns, &r))
}

/// What the collector knows of an object.
#[derive(Clone)]
struct Obj {
    kind: &'static str,
    ns: String,
    name: String,
    uid: String,
    owners: Vec<OwnerReference>,
    finalizers: Vec<String>,
    deleting: bool,
}

fn obj(kind: &'static str, m: &ObjectMeta) -> Obj {
    Obj {
        kind,
        ns: m.namespace.clone().unwrap_or_default(),
        name: m.name.clone().unwrap_or_default(),
        uid: m.uid.clone().unwrap_or_default(),
        owners: m.owner_references.clone().unwrap_or_default(),
        finalizers: m.finalizers.clone().unwrap_or_default(),
        deleting: m.deletion_timestamp.is_some(),
    }
}

enum Change {
    Up(Obj),
    Gone(String),
    Listed(&'static str),
    Other,
}

/// Runs the collector until the process ends.
pub async fn run(client: kube::Client) {
    let to_change = |kind: &'static str| {
        move |e: crate::Seen<ObjectMeta>| match e {
            crate::Seen::Applied(m) => Change::Up(obj(kind, &m)),
            crate::Seen::Deleted(m) => Change::Gone(m.uid.unwrap_or_default()),
            crate::Seen::Listed(_) => Change::Listed(kind),
            crate::Seen::Nothing => Change::Other,
        }
    };
    let streams = KINDS.iter().map(|(g, v, k, plural)| {
        let r = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(g, v, k), plural);
        let kind: &'static str = k;
        crate::follow(kube::Api::<DynamicObject>::all_with(client.clone(), &r))
            .map(move |s| match s {
                crate::Seen::Applied(o) => crate::Seen::Applied(o.metadata),
                crate::Seen::Deleted(o) => crate::Seen::Deleted(o.metadata),
                crate::Seen::Listed(k) => crate::Seen::Listed(k),
                crate::Seen::Nothing => crate::Seen::Nothing,
            })
            .map(to_change(kind))
            .boxed()
    });
    let mut events = futures::stream::select_all(streams);
    let mut all: HashMap<String, Obj> = HashMap::new();
    let mut listed = std::collections::HashSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            e = events.next() => match e {
                Some(Change::Up(o)) => { all.insert(o.uid.clone(), o); }
                Some(Change::Gone(uid)) => { all.remove(&uid); }
                Some(Change::Listed(kind)) => { listed.insert(kind); }
                Some(Change::Other) => continue,
                None => return,
            },
            _ = tick.tick() => {}
        }
        // Act only once every kind has been listed: before, an owner may just be unseen.
        if listed.len() < KINDS.len() {
            continue;
        }
        while let Some(Some(e)) = futures::FutureExt::now_or_never(events.next()) {
            match e {
                Change::Up(o) => {
                    all.insert(o.uid.clone(), o);
                }
                Change::Gone(uid) => {
                    all.remove(&uid);
                }
                _ => {}
            }
        }
        collect(&client, &all).await;
    }
}

async fn delete(client: &kube::Client, o: &Obj, propagation: &str) {
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(o.uid.clone()),
            resource_version: None,
        }),
        propagation_policy: Some(match propagation {
            "Foreground" => kube::api::PropagationPolicy::Foreground,
            _ => kube::api::PropagationPolicy::Background,
        }),
        ..Default::default()
    };
    let Some(a) = api(client, o.kind, &o.ns) else {
        return;
    };
    let r = a.delete(&o.name, &dp).await.map(drop);
    if let Err(e) = r {
        if !matches!(&e, kube::Error::Api(s) if s.code == 404 || s.code == 409) {
            eprintln!("berth gc: deleting {} {}/{}: {e}", o.kind, o.ns, o.name);
        }
    }
}

async fn patch_meta(client: &kube::Client, o: &Obj, patch: serde_json::Value) {
    let pp = PatchParams::default();
    let p = Patch::Merge(&patch);
    let Some(a) = api(client, o.kind, &o.ns) else {
        return;
    };
    let r = a.patch(&o.name, &pp, &p).await.map(drop);
    if let Err(e) = r {
        if !matches!(&e, kube::Error::Api(s) if s.code == 404) {
            eprintln!("berth gc: updating {} {}/{}: {e}", o.kind, o.ns, o.name);
        }
    }
}

async fn collect(client: &kube::Client, all: &HashMap<String, Obj>) {
    let dependents = |uid: &str| -> Vec<&Obj> {
        all.values()
            .filter(|d| d.owners.iter().any(|r| r.uid == uid))
            .collect()
    };
    for o in all.values() {
        // Owners being deleted with a policy the collector carries out.
        if o.deleting && o.finalizers.iter().any(|f| f == "orphan") {
            for d in dependents(&o.uid) {
                let owners: Vec<&OwnerReference> =
                    d.owners.iter().filter(|r| r.uid != o.uid).collect();
                // None left: the field goes, as Kubernetes leaves it.
                let refs = if owners.is_empty() {
                    json!(null)
                } else {
                    json!(owners)
                };
                patch_meta(
                    client,
                    d,
                    json!({"metadata": {"ownerReferences": refs, "uid": d.uid}}),
                )
                .await;
            }
            let rest: Vec<&String> = o.finalizers.iter().filter(|f| *f != "orphan").collect();
            patch_meta(
                client,
                o,
                json!({"metadata": {"finalizers": rest, "uid": o.uid}}),
            )
            .await;
            continue;
        }
        if o.deleting && o.finalizers.iter().any(|f| f == "foregroundDeletion") {
            let ds = dependents(&o.uid);
            if ds.is_empty() {
                let rest: Vec<&String> = o
                    .finalizers
                    .iter()
                    .filter(|f| *f != "foregroundDeletion")
                    .collect();
                patch_meta(
                    client,
                    o,
                    json!({"metadata": {"finalizers": rest, "uid": o.uid}}),
                )
                .await;
            } else {
                for d in ds.into_iter().filter(|d| !d.deleting) {
                    delete(client, d, "Foreground").await;
                }
            }
            continue;
        }
        // Dependents whose owners are all gone.
        if o.owners.is_empty() || o.deleting {
            continue;
        }
        let orphaned = o.owners.iter().all(|r| match all.get(&r.uid) {
            Some(owner) => owner.ns != o.ns,
            None => true,
        });
        if orphaned && owners_gone(client, o).await {
            delete(client, o, "Background").await;
        }
    }
}

/// Asks the API (not the cache) whether every owner of `o` is gone.
async fn owners_gone(client: &kube::Client, o: &Obj) -> bool {
    for r in &o.owners {
        // Owners of kinds the collector does not follow are left to exist.
        let Some(a) = api(client, &r.kind, &o.ns) else {
            return false;
        };
        let got = a
            .get_opt(&r.name)
            .await
            .map(|x| x.and_then(|x| x.metadata.uid));
        match got {
            Ok(Some(uid)) if uid == r.uid => return false,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    true
}
