//! DefaultPreemption: when no node fits a pod, find the node where deleting the fewest and
//! least important lower-priority pods makes room, nominate it, and delete those pods. As
//! kube-scheduler's plugin: only pods of lower priority are victims, every other filter
//! still has to pass with them gone, victims are reprieved (most important first) while the
//! pod still fits, and the node whose victims matter least wins.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;

use super::{key, node_fit, requests, summary, Resources, State, NAME};
use crate::schedplugins::{needs_view, Placed, PodView};

/// The node to nominate and the pods to delete there.
pub struct Plan {
    pub node: String,
    pub victims: Vec<Arc<Pod>>,
    /// How many of the victims their PodDisruptionBudgets would not allow to go.
    pub violations: usize,
}

pub fn priority(p: &Pod) -> i32 {
    p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

/// Kube-scheduler's "more important" order: higher priority, then started earlier.
fn importance(p: &Pod) -> (std::cmp::Reverse<i32>, Option<jiff::Timestamp>) {
    let started = p
        .status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .or(p.metadata.creation_timestamp.as_ref())
        .map(|t| t.0);
    (std::cmp::Reverse(priority(p)), started)
}

impl Resources {
    pub(super) fn add(&mut self, r: &Resources) {
        self.cpu_milli += r.cpu_milli;
        self.memory += r.memory;
        self.pods += r.pods;
    }
    pub(super) fn sub(&mut self, r: &Resources) {
        self.cpu_milli = self.cpu_milli.saturating_sub(r.cpu_milli);
        self.memory = self.memory.saturating_sub(r.memory);
        self.pods = self.pods.saturating_sub(r.pods);
    }
}

impl State {
    /// What pods nominated to a node (and not yet bound) hold there for a pod of priority
    /// `prio`: those of at least that priority keep their room from it.
    pub(super) fn reserved(&self, me: &str, prio: i32) -> HashMap<&str, Resources> {
        let mut out: HashMap<&str, Resources> = HashMap::new();
        for (k, node) in &self.nominated {
            if k == me {
                continue;
            }
            let Some(p) = self.pods.get(k) else { continue };
            if priority(p) < prio || self.counted.contains_key(k) {
                continue;
            }
            out.entry(node.as_str()).or_default().add(&requests(p));
        }
        out
    }

    /// Why `p` does not fit on `node` with the pods in `gone` deleted (empty: it fits).
    fn fits_without(&self, p: &Pod, node: &str, gone: &HashSet<String>) -> Vec<String> {
        let Some(n) = self.nodes.get(node) else {
            return vec!["node(s) not found".into()];
        };
        let mut used = self
            .usage
            .get(node)
            .map(|u| u.used.clone())
            .unwrap_or_default();
        let mut ports = self
            .usage
            .get(node)
            .map(|u| u.ports.clone())
            .unwrap_or_default();
        for k in gone {
            if let Some((_, r, pp)) = self.counted.get(k) {
                used.sub(r);
                for port in pp {
                    ports.remove(port);
                }
            }
        }
        if let Some(r) = self.reserved(&key(p), priority(p)).get(node) {
            used.add(r);
        }
        let have = super::allocatable(n);
        let mut why = super::filter_with(p, &requests(p), n, &have, &used, &ports);
        if why.is_empty() && needs_view(p, !self.anti.is_empty()) {
            let mut by_node = self.by_node.clone();
            if let Some(s) = by_node.get_mut(node) {
                s.retain(|k| !gone.contains(k));
            }
            let placed = Placed {
                nodes: &self.nodes,
                by_node: &by_node,
                pods: &self.pods,
            };
            let view = PodView::build(p, &placed, &|n| {
                node_fit(p, n).is_none_or(|r| r.contains("taint") || r.contains("unschedulable"))
            });
            if let Some(r) = view.filter(p, n) {
                why.push(r);
            }
        }
        why
    }

    /// The pods among `pods` whose deletion, all together, their PodDisruptionBudgets would
    /// not allow (each budget's `disruptionsAllowed` spent in the order given).
    fn budget_breakers(&self, pods: &[Arc<Pod>]) -> HashSet<String> {
        let mut out = HashSet::new();
        let mut left: HashMap<&str, i64> = HashMap::new();
        for o in pods {
            let ns = o.metadata.namespace.as_deref().unwrap_or_default();
            let labels = o.metadata.labels.clone().unwrap_or_default();
            for (k, b) in &self.budgets {
                if b.metadata.namespace.as_deref() != Some(ns)
                    || !crate::schedplugins::selects(
                        b.spec.as_ref().and_then(|s| s.selector.as_ref()),
                        &labels,
                    )
                {
                    continue;
                }
                let n = left.entry(k.as_str()).or_insert_with(|| {
                    i64::from(
                        b.status
                            .as_ref()
                            .map(|s| s.disruptions_allowed)
                            .unwrap_or(0),
                    )
                });
                *n -= 1;
                if *n < 0 {
                    out.insert(key(o));
                }
            }
        }
        out
    }

    /// Plans the preemption that would let `p` in, or says (as the `preemption:` part of
    /// the scheduler's message) why there is none.
    pub(super) fn preempt(&self, p: &Pod) -> Result<Plan, String> {
        let spec = p.spec.as_ref();
        if spec.and_then(|s| s.preemption_policy.as_deref()) == Some("Never") {
            return Err("not eligible due to preemptionPolicy=Never.".into());
        }
        let prio = priority(p);
        let me = key(p);
        // Victims already on their way out: wait for them rather than preempt again.
        if let Some(node) = self.nominated.get(&me) {
            let terminating = self.by_node.get(node).into_iter().flatten().any(|k| {
                self.pods
                    .get(k)
                    .is_some_and(|o| priority(o) < prio && o.metadata.deletion_timestamp.is_some())
            });
            if terminating {
                return Err("not eligible due to a terminating pod on the nominated node.".into());
            }
        }
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        let mut candidates: Vec<Plan> = Vec::new();
        // Volumes a node cannot give are not something deleting pods could change.
        let needs = if super::volumes::claim_names(p).next().is_some() {
            self.volumes.needs(p).ok()
        } else {
            Some(Vec::new())
        };
        for (name, n) in &self.nodes {
            let volumes_fail = match &needs {
                None => true,
                Some(v) => !v.is_empty() && self.volumes.on_node(&me, v, n).is_err(),
            };
            if volumes_fail || node_fit(p, n).is_some() {
                *reasons
                    .entry("Preemption is not helpful for scheduling".into())
                    .or_default() += 1;
                continue;
            }
            let mut lower: Vec<Arc<Pod>> = self
                .by_node
                .get(name)
                .into_iter()
                .flatten()
                .filter_map(|k| self.pods.get(k))
                .filter(|o| priority(o) < prio)
                .cloned()
                .collect();
            if lower.is_empty() {
                *reasons
                    .entry("No preemption victims found for incoming pod".into())
                    .or_default() += 1;
                continue;
            }
            let mut gone: HashSet<String> = lower.iter().map(|o| key(o)).collect();
            let why = self.fits_without(p, name, &gone);
            if !why.is_empty() {
                for w in why {
                    *reasons.entry(w).or_default() += 1;
                }
                continue;
            }
            // Reprieve the most important first, keeping each that still leaves room: those
            // whose budgets would be broken first, then the others.
            lower.sort_by_cached_key(|o| importance(o));
            let breaking = self.budget_breakers(&lower);
            let (mut first, rest): (Vec<_>, Vec<_>) =
                lower.into_iter().partition(|o| breaking.contains(&key(o)));
            let first_len = first.len();
            first.extend(rest);
            let mut victims = Vec::new();
            let mut violations = 0;
            for (i, o) in first.into_iter().enumerate() {
                let k = key(&o);
                gone.remove(&k);
                if !self.fits_without(p, name, &gone).is_empty() {
                    gone.insert(k);
                    victims.push(o);
                    if i < first_len {
                        violations += 1;
                    }
                }
            }
            candidates.push(Plan {
                node: name.clone(),
                victims,
                violations,
            });
        }
        if candidates.is_empty() {
            return Err(summary(self.nodes.len(), &reasons));
        }
        // The node whose victims matter least: the fewest budgets broken, the lowest
        // highest priority, then the lowest sum of priorities, then the fewest.
        candidates
            .into_iter()
            .min_by_key(|c| {
                let top = c
                    .victims
                    .iter()
                    .map(|v| priority(v))
                    .max()
                    .unwrap_or(i32::MIN);
                let sum: i64 = c
                    .victims
                    .iter()
                    .map(|v| i64::from(priority(v)) + i64::from(i32::MAX) + 1)
                    .sum();
                (c.violations, top, sum, c.victims.len())
            })
            .ok_or_else(String::new)
    }
}

/// Carries a plan out: each victim gets the `DisruptionTarget` condition, is deleted, and
/// gets a `Preempted` event; the pod is told where it was nominated.
pub async fn carry_out(client: kube::Client, p: Arc<Pod>, plan: Plan, msg: String) {
    let uid = p.metadata.uid.clone().unwrap_or_default();
    for v in &plan.victims {
        let ns = v.metadata.namespace.clone().unwrap_or_default();
        let name = v.metadata.name.clone().unwrap_or_default();
        let api: kube::Api<Pod> = kube::Api::namespaced(client.clone(), &ns);
        let cond = json!({"status": {"conditions": [{"type": "DisruptionTarget", "status": "True",
            "reason": "PreemptionByScheduler",
            "message": format!("{NAME}: preempting to accommodate a higher priority pod"),
            "lastTransitionTime": crate::now()}]}});
        if let Err(e) = api
            .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&cond))
            .await
        {
            eprintln!("berth scheduler: preempting {ns}/{name}: {e}");
        }
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => continue,
            Err(e) => {
                eprintln!("berth scheduler: preempting {ns}/{name}: {e}");
                continue;
            }
        }
        let involved = json!({"kind": "Pod", "namespace": ns, "name": name, "uid": v.metadata.uid, "apiVersion": "v1"});
        crate::event(
            &client,
            NAME,
            involved,
            "Normal",
            "Preempted",
            &format!("Preempted by pod {uid} on node {}", plan.node),
        )
        .await;
    }
    super::unschedulable(client, p, msg, Some(plan.node)).await;
}

#[cfg(test)]
mod tests {
    use super::super::tests::{node, place};
    use super::*;
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;

    fn pod(name: &str, cpu: &str, prio: i32) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"priority": prio, "containers": [{"name": "c", "image": "x",
                "resources": {"requests": {"cpu": cpu}}}]}
        }))
        .unwrap()
    }

    fn bound(st: &mut State, p: Pod, node: &str) {
        let mut p = p;
        p.spec.as_mut().unwrap().node_name = Some(node.into());
        let k = key(&p);
        st.set_pod(&k, Some(Arc::new(p)));
    }

    #[test]
    fn the_least_important_victims_on_the_best_node_are_chosen() {
        let mut st = State::default();
        for n in [node("a", "4", None), node("b", "4", None)] {
            st.set_node(n);
        }
        // a: two low pods of priority 10 filling it; b: one pod of priority 50 and one of 10.
        bound(&mut st, pod("a1", "2", 10), "a");
        bound(&mut st, pod("a2", "2", 10), "a");
        bound(&mut st, pod("b1", "2", 50), "b");
        bound(&mut st, pod("b2", "2", 10), "b");
        let high = pod("high", "2", 100);
        let k = key(&high);
        st.set_pod(&k, Some(Arc::new(high.clone())));
        assert!(place(&mut st, &high).is_err());
        let plan = st.preempt(&high).unwrap();
        // Either node needs one victim of priority 10; a's victims have the lower sum, and
        // on a only one of the two is needed.
        assert_eq!(plan.node, "a");
        assert_eq!(plan.victims.len(), 1);
        // A pod of equal priority finds no victims; Never never preempts.
        let same = pod("same", "2", 10);
        assert_eq!(
            st.preempt(&same).err().unwrap(),
            "0/2 nodes are available: 2 No preemption victims found for incoming pod."
        );
        let mut never = pod("never", "2", 100);
        never.spec.as_mut().unwrap().preemption_policy = Some("Never".into());
        assert_eq!(
            st.preempt(&never).err().unwrap(),
            "not eligible due to preemptionPolicy=Never."
        );
        // Too big for any node even when empty.
        let huge = pod("huge", "8", 100);
        assert_eq!(
            st.preempt(&huge).err().unwrap(),
            "0/2 nodes are available: 2 Insufficient cpu."
        );
    }

    #[test]
    fn a_disruption_budget_steers_preemption_to_another_node() {
        let mut st = State::default();
        st.set_node(node("a", "2", None));
        st.set_node(node("b", "2", None));
        let mut guarded = pod("a1", "2", 10);
        guarded.metadata.labels = Some([("app".to_string(), "db".to_string())].into());
        bound(&mut st, guarded, "a");
        bound(&mut st, pod("b1", "2", 20), "b");
        let high = pod("high", "2", 100);
        st.set_pod(&key(&high), Some(Arc::new(high.clone())));
        // Unguarded, the least important victim is a1.
        assert_eq!(st.preempt(&high).unwrap().node, "a");
        let pdb: PodDisruptionBudget = serde_json::from_value(json!({
            "metadata": {"name": "db", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "db"}}, "minAvailable": 1},
            "status": {"disruptionsAllowed": 0, "currentHealthy": 1, "desiredHealthy": 1,
                "expectedPods": 1}
        }))
        .unwrap();
        st.budgets.insert("default/db".into(), Arc::new(pdb));
        let plan = st.preempt(&high).unwrap();
        assert_eq!((plan.node.as_str(), plan.violations), ("b", 0));
    }

    #[test]
    fn a_nominated_pod_keeps_its_room_from_lower_priority_pods() {
        let mut st = State::default();
        let n = node("a", "4", None);
        st.set_node(n);
        bound(&mut st, pod("a1", "2", 10), "a");
        let high = pod("high", "2", 100);
        st.set_pod(&key(&high), Some(Arc::new(high.clone())));
        st.nominated.insert(key(&high), "a".into());
        // The lower-priority pod waits, though 2 cpus are free: they are held for `high`.
        let low = pod("low", "1", 10);
        st.set_pod(&key(&low), Some(Arc::new(low.clone())));
        assert!(place(&mut st, &low).is_err());
        // The nominated pod itself does not count its own reservation.
        assert_eq!(place(&mut st, &high).unwrap(), "a");
    }
}
