//! The scheduler plugins that look at other pods: PodTopologySpread, InterPodAffinity, and
//! ImageLocality (which looks at the node's images). Each works on a [`Domains`] view
//! built once per scheduling cycle from the pods placed so far, so a cycle costs one pass
//! over the pods for the pods that need it and nothing for those that do not.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod, PodAffinityTerm};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Whether `sel` selects `labels` (an empty selector selects everything; none, nothing).
pub fn selects(sel: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    let Some(sel) = sel else {
        return false;
    };
    sel.match_labels
        .as_ref()
        .is_none_or(|m| m.iter().all(|(k, v)| labels.get(k) == Some(v)))
        && sel.match_expressions.iter().flatten().all(|e| {
            let v = labels.get(&e.key);
            let vals = e.values.as_deref().unwrap_or(&[]);
            match e.operator.as_str() {
                "In" => v.is_some_and(|v| vals.contains(v)),
                "NotIn" => v.is_none_or(|v| !vals.contains(v)),
                "Exists" => v.is_some(),
                "DoesNotExist" => v.is_none(),
                _ => false,
            }
        })
}

fn labels(p: &Pod) -> BTreeMap<String, String> {
    p.metadata.labels.clone().unwrap_or_default()
}

fn node_label<'a>(n: &'a Node, key: &str) -> Option<&'a String> {
    n.metadata.labels.as_ref()?.get(key)
}

/// The placed pods, by node, as a scheduling cycle sees them.
pub struct Placed<'a> {
    pub nodes: &'a BTreeMap<String, Node>,
    /// Node name → the pods on it (bound or assumed, not finished).
    pub by_node: &'a HashMap<String, HashSet<String>>,
    pub pods: &'a HashMap<String, Arc<Pod>>,
}

impl Placed<'_> {
    fn each(&self) -> impl Iterator<Item = (&Node, &Arc<Pod>)> {
        let (nodes, pods) = (self.nodes, self.pods);
        self.by_node
            .iter()
            .filter_map(move |(n, keys)| {
                let node = nodes.get(n)?;
                Some(
                    keys.iter()
                        .filter_map(move |k| pods.get(k).map(|p| (node, p))),
                )
            })
            .flatten()
    }
}

/// A term's namespaces: those listed, or the pod's own.
fn term_namespaces(t: &PodAffinityTerm, pod_ns: &str) -> Vec<String> {
    match t.namespaces.as_ref().filter(|n| !n.is_empty()) {
        Some(n) => n.clone(),
        None => vec![pod_ns.to_string()],
    }
}

fn term_matches_pod(t: &PodAffinityTerm, owner_ns: &str, other: &Pod) -> bool {
    let ns = other.metadata.namespace.as_deref().unwrap_or_default();
    (t.namespace_selector.is_some() || term_namespaces(t, owner_ns).iter().any(|n| n == ns))
        && selects(t.label_selector.as_ref(), &labels(other))
}

/// What the inter-pod plugins need for one pod, computed once per cycle.
#[derive(Default)]
pub struct PodView {
    /// Required affinity: per term, the topology values holding a matching pod.
    affinity: Vec<(String, HashSet<String>)>,
    /// Whether the pod matches all its own affinity terms (the first of a group).
    self_affine: bool,
    /// Required anti-affinity: per term, the values holding a matching pod.
    anti: Vec<(String, HashSet<String>)>,
    /// Existing pods' anti-affinity that the pod matches: (topology key, value).
    forbidden: HashSet<(String, String)>,
    /// Preferred terms: (key, value) → weight (negative for anti-affinity).
    preferred: HashMap<(String, String), i64>,
    /// Topology spread: (constraint, counts per value, min over eligible domains).
    spread: Vec<(Spread, HashMap<String, i64>, i64)>,
}

#[derive(Clone, Debug)]
pub struct Spread {
    pub key: String,
    pub max_skew: i64,
    pub hard: bool,
    pub selector: Option<LabelSelector>,
    pub min_domains: i64,
}

/// The pod's spread constraints; a pod owned by a controller and without any gets the
/// cluster's defaults (hostname 3 and zone 5, ScheduleAnyway), as kube-scheduler does.
fn spreads(p: &Pod) -> Vec<Spread> {
    let given: Vec<Spread> = p
        .spec
        .as_ref()
        .and_then(|s| s.topology_spread_constraints.as_ref())
        .into_iter()
        .flatten()
        .map(|c| Spread {
            key: c.topology_key.clone(),
            max_skew: i64::from(c.max_skew.max(1)),
            hard: c.when_unsatisfiable == "DoNotSchedule",
            selector: c.label_selector.clone(),
            min_domains: i64::from(c.min_domains.unwrap_or(1).max(1)),
        })
        .collect();
    if !given.is_empty() {
        return given;
    }
    let owned = p.metadata.owner_references.iter().flatten().any(|o| {
        o.controller == Some(true)
            && matches!(
                o.kind.as_str(),
                "ReplicaSet" | "StatefulSet" | "ReplicationController"
            )
    });
    if !owned || p.metadata.labels.as_ref().is_none_or(|l| l.is_empty()) {
        return Vec::new();
    }
    let sel = LabelSelector {
        match_labels: p.metadata.labels.clone(),
        match_expressions: None,
    };
    vec![
        Spread {
            key: "kubernetes.io/hostname".into(),
            max_skew: 3,
            hard: false,
            selector: Some(sel.clone()),
            min_domains: 1,
        },
        Spread {
            key: "topology.kubernetes.io/zone".into(),
            max_skew: 5,
            hard: false,
            selector: Some(sel),
            min_domains: 1,
        },
    ]
}

/// Whether anything about `p` needs the other pods (so a cycle can skip the pass).
pub fn needs_view(p: &Pod, any_anti: bool) -> bool {
    let a = p.spec.as_ref().and_then(|s| s.affinity.as_ref());
    any_anti
        || a.is_some_and(|a| a.pod_affinity.is_some() || a.pod_anti_affinity.is_some())
        || !spreads(p).is_empty()
}

impl PodView {
    /// Builds the view of the placed pods for `p`; `eligible` says which nodes count as
    /// spread domains (those the pod's node affinity allows).
    pub fn build(p: &Pod, placed: &Placed<'_>, eligible: &dyn Fn(&Node) -> bool) -> PodView {
        let ns = p.metadata.namespace.clone().unwrap_or_default();
        let aff = p.spec.as_ref().and_then(|s| s.affinity.as_ref());
        let req_aff: Vec<PodAffinityTerm> = aff
            .and_then(|a| a.pod_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .clone()
            })
            .unwrap_or_default();
        let req_anti: Vec<PodAffinityTerm> = aff
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .clone()
            })
            .unwrap_or_default();
        let pref_aff = aff
            .and_then(|a| a.pod_affinity.as_ref())
            .and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .clone()
            })
            .unwrap_or_default();
        let pref_anti = aff
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .clone()
            })
            .unwrap_or_default();
        let mut v = PodView {
            affinity: req_aff
                .iter()
                .map(|t| (t.topology_key.clone(), HashSet::new()))
                .collect(),
            anti: req_anti
                .iter()
                .map(|t| (t.topology_key.clone(), HashSet::new()))
                .collect(),
            self_affine: req_aff.iter().all(|t| term_matches_pod(t, &ns, p)),
            ..Default::default()
        };
        let spread = spreads(p);
        let mut counts: Vec<HashMap<String, i64>> = vec![HashMap::new(); spread.len()];
        // Every eligible domain exists with a count of 0.
        for n in placed.nodes.values().filter(|n| eligible(n)) {
            for (i, s) in spread.iter().enumerate() {
                if let Some(val) = node_label(n, &s.key) {
                    counts[i].entry(val.clone()).or_insert(0);
                }
            }
        }
        for (node, other) in placed.each() {
            let olabels = labels(other);
            let ons = other.metadata.namespace.as_deref().unwrap_or_default();
            for (i, t) in req_aff.iter().enumerate() {
                if term_matches_pod(t, &ns, other) {
                    if let Some(val) = node_label(node, &t.topology_key) {
                        v.affinity[i].1.insert(val.clone());
                    }
                }
            }
            for (i, t) in req_anti.iter().enumerate() {
                if term_matches_pod(t, &ns, other) {
                    if let Some(val) = node_label(node, &t.topology_key) {
                        v.anti[i].1.insert(val.clone());
                    }
                }
            }
            for w in &pref_aff {
                if term_matches_pod(&w.pod_affinity_term, &ns, other) {
                    if let Some(val) = node_label(node, &w.pod_affinity_term.topology_key) {
                        *v.preferred
                            .entry((w.pod_affinity_term.topology_key.clone(), val.clone()))
                            .or_default() += i64::from(w.weight);
                    }
                }
            }
            for w in &pref_anti {
                if term_matches_pod(&w.pod_affinity_term, &ns, other) {
                    if let Some(val) = node_label(node, &w.pod_affinity_term.topology_key) {
                        *v.preferred
                            .entry((w.pod_affinity_term.topology_key.clone(), val.clone()))
                            .or_default() -= i64::from(w.weight);
                    }
                }
            }
            // Existing pods' required anti-affinity against this pod.
            let their_anti = other
                .spec
                .as_ref()
                .and_then(|s| s.affinity.as_ref())
                .and_then(|a| a.pod_anti_affinity.as_ref())
                .and_then(|a| {
                    a.required_during_scheduling_ignored_during_execution
                        .as_ref()
                });
            for t in their_anti.into_iter().flatten() {
                if term_matches_pod(t, ons, p) {
                    if let Some(val) = node_label(node, &t.topology_key) {
                        v.forbidden.insert((t.topology_key.clone(), val.clone()));
                    }
                }
            }
            if ons == ns && eligible(node) {
                for (i, s) in spread.iter().enumerate() {
                    if selects(s.selector.as_ref(), &olabels) {
                        if let Some(val) = node_label(node, &s.key) {
                            *counts[i].entry(val.clone()).or_insert(0) += 1;
                        }
                    }
                }
            }
        }
        for (s, c) in spread.into_iter().zip(counts) {
            let mut min = c.values().copied().min().unwrap_or(0);
            if (c.len() as i64) < s.min_domains {
                min = 0;
            }
            v.spread.push((s, c, min));
        }
        v
    }

    /// Why `n` does not fit these rules (kube-scheduler's words), if it does not.
    pub fn filter(&self, p: &Pod, n: &Node) -> Option<String> {
        let self_match: Vec<bool> = self
            .spread
            .iter()
            .map(|(s, _, _)| selects(s.selector.as_ref(), &labels(p)))
            .collect();
        for ((s, counts, min), me) in self.spread.iter().zip(self_match) {
            if !s.hard {
                continue;
            }
            let Some(val) = node_label(n, &s.key) else {
                return Some(
                    "node(s) didn't match pod topology spread constraints (missing required label)"
                        .into(),
                );
            };
            let here = counts.get(val).copied().unwrap_or(0) + i64::from(me);
            if here - min > s.max_skew {
                return Some("node(s) didn't match pod topology spread constraints".into());
            }
        }
        for (key, vals) in &self.affinity {
            let ok = node_label(n, key).is_some_and(|v| vals.contains(v));
            // The first pod of a group that matches its own terms may go anywhere.
            let all_empty = self.affinity.iter().all(|(_, v)| v.is_empty());
            let first_of_group = all_empty && self.self_affine && node_label(n, key).is_some();
            if !(ok || first_of_group) {
                return Some("node(s) didn't match pod affinity rules".into());
            }
        }
        for (key, vals) in &self.anti {
            if node_label(n, key).is_some_and(|v| vals.contains(v)) {
                return Some("node(s) didn't match pod anti-affinity rules".into());
            }
        }
        for (key, val) in &self.forbidden {
            if node_label(n, key) == Some(val) {
                return Some("node(s) didn't satisfy existing pods anti-affinity rules".into());
            }
        }
        None
    }

    /// The plugins' score for `n` (higher is better).
    pub fn score(&self, n: &Node) -> i64 {
        let mut s = 0;
        for ((key, val), w) in &self.preferred {
            if node_label(n, key) == Some(val) {
                s += w;
            }
        }
        for (sp, counts, min) in &self.spread {
            if let Some(val) = node_label(n, &sp.key) {
                // Fewer matching pods in the domain, higher: up to 100 per constraint.
                let c = counts.get(val).copied().unwrap_or(0) - min;
                s +=
                    (100 - c * 100 / (sp.max_skew + 1).max(1)).max(0) / if sp.hard { 1 } else { 2 };
            }
        }
        s
    }
}

/// ImageLocality: up to 100 for a node that has the pod's images (by size, up to 1 GB).
pub fn image_locality(p: &Pod, n: &Node) -> i64 {
    let images = n.status.as_ref().and_then(|s| s.images.as_ref());
    let Some(images) = images else {
        return 0;
    };
    let mut bytes: i64 = 0;
    for c in p.spec.iter().flat_map(|s| s.containers.iter()) {
        let Some(want) = c.image.as_deref() else {
            continue;
        };
        let want_full = if want.contains(':') || want.contains('@') {
            want.to_string()
        } else {
            format!("{want}:latest")
        };
        if let Some(img) = images.iter().find(|i| {
            i.names
                .iter()
                .flatten()
                .any(|n| n == want || n == &want_full || n.ends_with(&format!("/{want_full}")))
        }) {
            bytes += img.size_bytes.unwrap_or(0);
        }
    }
    const MAX: i64 = 1_000_000_000;
    bytes.min(MAX) * 100 / MAX
}
