//! The PersistentVolume binder, as kube-controller-manager's: a claim without a volume is
//! bound to the smallest Available volume of its storage class whose access modes include
//! the claim's and whose capacity covers its request (or to the volume it names); both sides
//! record the binding (`claimRef` and `volumeName`) and turn `Bound`. A volume whose claim
//! is deleted is `Released` (the Retain policy) or made Available again (`Recycle` is not
//! supported and treated as Retain; `Delete` without a provisioner behaves as Retain too).
//! A claim of a `WaitForFirstConsumer` class waits for the scheduler: it is bound only to a
//! volume the scheduler reserved for it (a `claimRef`) on the node it chose for the pod.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Patch, PatchParams};
use serde_json::json;

const NAME: &str = "persistentvolume-controller";

fn request(c: &PersistentVolumeClaim) -> u64 {
    c.spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .and_then(|q| quantity::units(&q.0))
        .unwrap_or(0)
}

pub(crate) fn capacity(v: &PersistentVolume) -> u64 {
    v.spec
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .and_then(|q| quantity::units(&q.0))
        .unwrap_or(0)
}

fn class_of_claim(c: &PersistentVolumeClaim) -> String {
    c.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.clone())
        .unwrap_or_default()
}

fn class_of_volume(v: &PersistentVolume) -> String {
    v.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.clone())
        .unwrap_or_default()
}

/// Whether `v` can hold `c`.
pub(crate) fn fits(v: &PersistentVolume, c: &PersistentVolumeClaim) -> bool {
    let want_modes = c
        .spec
        .as_ref()
        .and_then(|s| s.access_modes.clone())
        .unwrap_or_default();
    let modes = v
        .spec
        .as_ref()
        .and_then(|s| s.access_modes.clone())
        .unwrap_or_default();
    class_of_volume(v) == class_of_claim(c)
        && want_modes.iter().all(|m| modes.contains(m))
        && capacity(v) >= request(c)
}

fn claim_key(v: &PersistentVolume) -> Option<(String, String, Option<String>)> {
    let r = v.spec.as_ref()?.claim_ref.as_ref()?;
    Some((
        r.namespace.clone().unwrap_or_default(),
        r.name.clone().unwrap_or_default(),
        r.uid.clone(),
    ))
}

/// Runs the binder until the process ends.
pub async fn run(client: kube::Client) {
    let claims = crate::follow(kube::Api::<PersistentVolumeClaim>::all(client.clone()))
        .map(|_| ())
        .boxed();
    let vols = crate::follow(kube::Api::<PersistentVolume>::all(client.clone()))
        .map(|_| ())
        .boxed();
    let mut events = futures::stream::select(claims, vols);
    let mut tick = tokio::time::interval(Duration::from_secs(15));
    // Claims told they wait for a consumer (by UID), so the event is recorded once.
    let mut told = std::collections::HashSet::new();
    loop {
        tokio::select! {
            e = events.next() => if e.is_none() { return },
            _ = tick.tick() => {}
        }
        // Coalesce a burst of changes into one pass.
        while let Some(Some(())) = futures::FutureExt::now_or_never(events.next()) {}
        if let Err(e) = pass(&client, &mut told).await {
            eprintln!("berth controllers: binding volumes: {e}");
        }
    }
}

/// Whether a claim of class `class` waits for its first consumer to be scheduled.
pub fn waits_for_consumer(classes: &[StorageClass], class: &str) -> bool {
    !class.is_empty()
        && classes.iter().any(|c| {
            c.metadata.name.as_deref() == Some(class)
                && c.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer")
        })
}

async fn pass(
    client: &kube::Client,
    told: &mut std::collections::HashSet<String>,
) -> anyhow::Result<()> {
    let pvs: kube::Api<PersistentVolume> = kube::Api::all(client.clone());
    let pvcs: kube::Api<PersistentVolumeClaim> = kube::Api::all(client.clone());
    let scs: kube::Api<StorageClass> = kube::Api::all(client.clone());
    let mut volumes = pvs.list(&Default::default()).await?.items;
    let claims = pvcs.list(&Default::default()).await?.items;
    let classes = scs.list(&Default::default()).await?.items;
    let by_key: HashMap<(String, String), &PersistentVolumeClaim> = claims
        .iter()
        .map(|c| {
            (
                (
                    c.metadata.namespace.clone().unwrap_or_default(),
                    c.metadata.name.clone().unwrap_or_default(),
                ),
                c,
            )
        })
        .collect();
    // Volumes whose claim went: Released.
    for v in &volumes {
        let phase = v
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .unwrap_or("");
        if let Some((ns, n, uid)) = claim_key(v) {
            let gone = match by_key.get(&(ns, n)) {
                None => true,
                Some(c) => uid.is_some() && c.metadata.uid != uid,
            };
            if gone && phase == "Bound" {
                pvs.patch_status(
                    v.metadata.name.as_deref().unwrap_or_default(),
                    &PatchParams::default(),
                    &Patch::Merge(&json!({"status": {"phase": "Released"}})),
                )
                .await?;
            }
        } else if phase != "Available" {
            pvs.patch_status(
                v.metadata.name.as_deref().unwrap_or_default(),
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": {"phase": "Available"}})),
            )
            .await?;
        }
    }
    for c in &claims {
        if c.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let phase = c
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .unwrap_or("");
        if phase == "Bound" {
            continue;
        }
        let ns = c.metadata.namespace.clone().unwrap_or_default();
        let name = c.metadata.name.clone().unwrap_or_default();
        let named = c
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.clone())
            .filter(|s| !s.is_empty());
        let wait = named.is_none() && waits_for_consumer(&classes, &class_of_claim(c));
        let pick = volumes
            .iter()
            .filter(|v| match &named {
                Some(n) => v.metadata.name.as_ref() == Some(n),
                None => true,
            })
            // A waiting claim takes only the volume the scheduler reserved for it.
            .filter(|v| !wait || claim_key(v).is_some())
            .filter(|v| match claim_key(v) {
                // Free, or reserved for this very claim.
                None => true,
                Some((cns, cn, uid)) => {
                    cns == ns && cn == name && uid.is_none_or(|u| Some(u) == c.metadata.uid)
                }
            })
            .filter(|v| named.is_some() || fits(v, c))
            .min_by_key(|v| capacity(v))
            .cloned();
        let Some(v) = pick else {
            let uid = c.metadata.uid.clone().unwrap_or_default();
            if wait && told.insert(uid) {
                let involved = json!({"kind": "PersistentVolumeClaim", "apiVersion": "v1",
                    "namespace": ns, "name": name, "uid": c.metadata.uid});
                crate::event(
                    client,
                    NAME,
                    involved,
                    "Normal",
                    "WaitForFirstConsumer",
                    "waiting for first consumer to be created before binding",
                )
                .await;
            }
            if !wait && named.is_none() {
                let involved = json!({"kind": "PersistentVolumeClaim", "apiVersion": "v1",
                    "namespace": ns, "name": name, "uid": c.metadata.uid});
                let msg = if class_of_claim(c).is_empty() {
                    "no persistent volumes available for this claim and no storage class is set"
                        .to_string()
                } else {
                    format!(
                        "storageclass.storage.k8s.io \"{}\" not found",
                        class_of_claim(c)
                    )
                };
                if phase != "Pending" {
                    pvcs_status(client, &ns, &name, json!({"phase": "Pending"})).await?;
                    crate::event(client, NAME, involved, "Normal", "FailedBinding", &msg).await;
                }
            }
            continue;
        };
        let vname = v.metadata.name.clone().unwrap_or_default();
        let claim_ref = json!({"kind": "PersistentVolumeClaim", "apiVersion": "v1",
            "namespace": ns, "name": name, "uid": c.metadata.uid,
            "resourceVersion": c.metadata.resource_version});
        pvs.patch(
            &vname,
            &PatchParams::default(),
            &Patch::Merge(
                &json!({"metadata": {"resourceVersion": v.metadata.resource_version},
                "spec": {"claimRef": claim_ref}}),
            ),
        )
        .await?;
        pvs.patch_status(
            &vname,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"phase": "Bound"}})),
        )
        .await?;
        let api: kube::Api<PersistentVolumeClaim> = kube::Api::namespaced(client.clone(), &ns);
        if named.is_none() {
            api.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": {"volumeName": vname}})),
            )
            .await?;
        }
        let spec = v.spec.clone().unwrap_or_default();
        pvcs_status(
            client,
            &ns,
            &name,
            json!({"phase": "Bound", "accessModes": spec.access_modes, "capacity": spec.capacity}),
        )
        .await?;
        // It is taken now.
        volumes.retain(|x| x.metadata.name.as_deref() != Some(vname.as_str()));
    }
    Ok(())
}

async fn pvcs_status(
    client: &kube::Client,
    ns: &str,
    name: &str,
    status: serde_json::Value,
) -> anyhow::Result<()> {
    let api: kube::Api<PersistentVolumeClaim> = kube::Api::namespaced(client.clone(), ns);
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": status})),
    )
    .await?;
    Ok(())
}
