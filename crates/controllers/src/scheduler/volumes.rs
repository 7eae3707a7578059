//! VolumeBinding, as kube-scheduler's plugin does it for volumes that exist beforehand
//! (local PersistentVolumes): a pod's bound claims restrict it to the nodes their volumes'
//! node affinity allows; a claim of a `WaitForFirstConsumer` class is matched, per node,
//! to an available volume that fits it there, and once the pod's node is chosen the
//! scheduler reserves that volume for the claim (its `claimRef`) and waits for the
//! PersistentVolume binder to finish the binding before it binds the pod.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use super::term_matches;

/// The scheduler's view of claims, volumes and classes.
#[derive(Default)]
pub struct Volumes {
    pub claims: HashMap<String, Arc<PersistentVolumeClaim>>,
    pub pvs: BTreeMap<String, Arc<PersistentVolume>>,
    pub classes: HashMap<String, Arc<StorageClass>>,
    /// Volumes this scheduler reserved for a pod not yet seen bound: volume → pod key.
    pub reserved: HashMap<String, String>,
}

/// What one of a pod's claims asks of a node.
pub enum Need {
    /// Bound: the volume's node affinity must allow the node (None: the volume is missing).
    Bound(Option<Arc<PersistentVolume>>),
    /// Waiting for its first consumer: an available volume must fit it on the node.
    Wait(Arc<PersistentVolumeClaim>),
}

/// A volume to reserve for a claim: (claim namespace, claim name, claim UID, volume name).
pub type Reservation = (String, String, Option<String>, String);

pub fn claim_names(p: &Pod) -> impl Iterator<Item = &str> {
    p.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| v.persistent_volume_claim.as_ref())
        .map(|c| c.claim_name.as_str())
}

fn node_allows(v: &PersistentVolume, n: &Node) -> bool {
    v.spec
        .as_ref()
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref())
        .is_none_or(|r| r.node_selector_terms.iter().any(|t| term_matches(t, n)))
}

impl Volumes {
    /// The pod's claims and what each needs, or (as kube-scheduler's PreFilter words it)
    /// why no node can do: a claim missing or being deleted, or an unbound immediate one.
    pub fn needs(&self, p: &Pod) -> Result<Vec<Need>, String> {
        let ns = p.metadata.namespace.as_deref().unwrap_or_default();
        let mut out = Vec::new();
        for name in claim_names(p) {
            let Some(c) = self.claims.get(&format!("{ns}/{name}")) else {
                return Err(format!("persistentvolumeclaim \"{name}\" not found"));
            };
            if c.metadata.deletion_timestamp.is_some() {
                return Err(format!("persistentvolumeclaim \"{name}\" is being deleted"));
            }
            let bound_to = c
                .spec
                .as_ref()
                .and_then(|s| s.volume_name.as_deref())
                .filter(|v| !v.is_empty());
            match bound_to {
                Some(v) => out.push(Need::Bound(self.pvs.get(v).cloned())),
                None => {
                    let class = c
                        .spec
                        .as_ref()
                        .and_then(|s| s.storage_class_name.as_deref())
                        .unwrap_or_default();
                    let waits = self.classes.get(class).is_some_and(|sc| {
                        sc.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer")
                    });
                    if !waits {
                        return Err("pod has unbound immediate PersistentVolumeClaims".into());
                    }
                    out.push(Need::Wait(c.clone()));
                }
            }
        }
        Ok(out)
    }

    /// The volumes to reserve for the pod `me` on node `n`, or why the node cannot hold
    /// its claims (kube-scheduler's reasons).
    pub fn on_node(
        &self,
        me: &str,
        needs: &[Need],
        n: &Node,
    ) -> Result<Vec<Reservation>, &'static str> {
        let mut out = Vec::new();
        let mut taken: HashSet<&str> = HashSet::new();
        for need in needs {
            match need {
                Need::Bound(None) => {
                    return Err(
                        "node(s) unavailable due to one or more pvc(s) bound to non-existent pv(s)",
                    )
                }
                Need::Bound(Some(v)) => {
                    if !node_allows(v, n) {
                        return Err("node(s) had volume node affinity conflict");
                    }
                }
                Need::Wait(c) => {
                    let cns = c.metadata.namespace.as_deref().unwrap_or_default();
                    let cname = c.metadata.name.as_deref().unwrap_or_default();
                    let pick = self
                        .pvs
                        .iter()
                        .filter(|(name, _)| !taken.contains(name.as_str()))
                        .filter(|(name, _)| self.reserved.get(*name).is_none_or(|p| p == me))
                        .filter(|(_, v)| {
                            let free = match v.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) {
                                None => true,
                                Some(r) => {
                                    r.namespace.as_deref() == Some(cns)
                                        && r.name.as_deref() == Some(cname)
                                }
                            };
                            let phase = v.status.as_ref().and_then(|s| s.phase.as_deref());
                            free && !matches!(phase, Some("Released" | "Failed"))
                                && crate::pvbinder::fits(v, c)
                                && node_allows(v, n)
                        })
                        .min_by_key(|(_, v)| crate::pvbinder::capacity(v));
                    let Some((name, _)) = pick else {
                        return Err("node(s) didn't find available persistent volumes to bind");
                    };
                    taken.insert(name);
                    out.push((
                        cns.to_string(),
                        cname.to_string(),
                        c.metadata.uid.clone(),
                        name.clone(),
                    ));
                }
            }
        }
        Ok(out)
    }
}

/// Reserves each volume for its claim, then waits (up to 30 s) for the binder to bind the
/// claims. An error sends the pod back to the queue.
pub async fn bind_claims(client: &kube::Client, plan: &[Reservation]) -> anyhow::Result<()> {
    let pvs: kube::Api<PersistentVolume> = kube::Api::all(client.clone());
    for (ns, name, uid, pv) in plan {
        let claim_ref = json!({"kind": "PersistentVolumeClaim", "apiVersion": "v1",
            "namespace": ns, "name": name, "uid": uid});
        pvs.patch(
            pv,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"claimRef": claim_ref}})),
        )
        .await?;
    }
    for (ns, name, _, _) in plan {
        let api: kube::Api<PersistentVolumeClaim> = kube::Api::namespaced(client.clone(), ns);
        let bound =
            kube::runtime::wait::await_condition(api, name, |c: Option<&PersistentVolumeClaim>| {
                c.and_then(|c| c.status.as_ref())
                    .and_then(|s| s.phase.as_deref())
                    == Some("Bound")
            });
        tokio::time::timeout(Duration::from_secs(30), bound)
            .await
            .map_err(|_| anyhow::anyhow!("claim {ns}/{name} was not bound within 30 s"))??;
    }
    Ok(())
}
