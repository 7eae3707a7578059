//! The scheduler: places pods that name no node (and ask for the default scheduler) on the
//! node that fits them best, as kube-scheduler's default plugins do, and binds them through
//! `pods/binding`. Each cycle runs the filters, then the scores, over a snapshot of the
//! nodes and of the pods placed so far (bound ones, and those assumed by this scheduler and
//! not yet seen bound). A pod no node fits gets `PodScheduled=False` and a
//! `FailedScheduling` event with kube-scheduler's wording, and is tried again when a node
//! or a pod changes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

pub const NAME: &str = "default-scheduler";

/// What a node has left, and why it cannot take a pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu_milli: u64,
    pub memory: u64,
    pub pods: u64,
}

/// A pod's requests (the larger of its containers' sum and any init container, plus
/// overhead), as the NodeResourcesFit plugin counts them.
pub fn requests(p: &Pod) -> Resources {
    let Some(s) = p.spec.as_ref() else {
        return Resources::default();
    };
    let get = |c: &k8s_openapi::api::core::v1::Container, r: &str| -> Option<String> {
        c.resources
            .as_ref()
            .and_then(|x| {
                x.requests
                    .as_ref()
                    .and_then(|m| m.get(r))
                    .or_else(|| x.limits.as_ref().and_then(|m| m.get(r)))
            })
            .map(|q| q.0.clone())
    };
    let sum = |r: &str, f: fn(&str) -> Option<u64>| -> u64 {
        let main: u64 = s
            .containers
            .iter()
            .filter_map(|c| get(c, r))
            .filter_map(|q| f(&q))
            .sum();
        let init = s
            .init_containers
            .iter()
            .flatten()
            .filter_map(|c| get(c, r))
            .filter_map(|q| f(&q))
            .max()
            .unwrap_or(0);
        let overhead = s
            .overhead
            .as_ref()
            .and_then(|o| o.get(r))
            .and_then(|q| f(&q.0))
            .unwrap_or(0);
        main.max(init) + overhead
    };
    Resources {
        cpu_milli: sum("cpu", quantity::cpu_milli),
        memory: sum("memory", quantity::units),
        pods: 1,
    }
}

fn allocatable(n: &Node) -> Resources {
    let a = n.status.as_ref().and_then(|s| s.allocatable.as_ref());
    let q = |r: &str, f: fn(&str) -> Option<u64>| {
        a.and_then(|m| m.get(r)).and_then(|q| f(&q.0)).unwrap_or(0)
    };
    Resources {
        cpu_milli: q("cpu", quantity::cpu_milli),
        memory: q("memory", quantity::units),
        pods: q("pods", quantity::units),
    }
}

/// Whether `t` tolerates `taint`, as Kubernetes matches them.
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(e) = t.effect.as_deref().filter(|e| !e.is_empty()) {
        if e != taint.effect {
            return false;
        }
    }
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => t
            .key
            .as_deref()
            .is_none_or(|k| k.is_empty() || k == taint.key),
        _ => {
            t.key.as_deref() == Some(taint.key.as_str())
                && t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
    }
}

fn tolerations(p: &Pod) -> &[Toleration] {
    p.spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or(&[])
}

/// A node selector requirement against a node's labels (or `metadata.name` for fields).
fn requirement_matches(
    key: &str,
    op: &str,
    values: &[String],
    labels: &BTreeMap<String, String>,
) -> bool {
    let v = labels.get(key);
    match op {
        "In" => v.is_some_and(|v| values.contains(v)),
        "NotIn" => v.is_none_or(|v| !values.contains(v)),
        "Exists" => v.is_some(),
        "DoesNotExist" => v.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(b)) = (
                v.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|b| b.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if op == "Gt" {
                v > b
            } else {
                v < b
            }
        }
        _ => false,
    }
}

fn term_matches(t: &k8s_openapi::api::core::v1::NodeSelectorTerm, n: &Node) -> bool {
    let labels = n.metadata.labels.clone().unwrap_or_default();
    let fields = BTreeMap::from([(
        "metadata.name".to_string(),
        n.metadata.name.clone().unwrap_or_default(),
    )]);
    let exprs = t.match_expressions.as_deref().unwrap_or(&[]);
    let field_exprs = t.match_fields.as_deref().unwrap_or(&[]);
    if exprs.is_empty() && field_exprs.is_empty() {
        return false;
    }
    exprs.iter().all(|r| {
        requirement_matches(
            &r.key,
            &r.operator,
            r.values.as_deref().unwrap_or(&[]),
            &labels,
        )
    }) && field_exprs.iter().all(|r| {
        requirement_matches(
            &r.key,
            &r.operator,
            r.values.as_deref().unwrap_or(&[]),
            &fields,
        )
    })
}

/// Whether the pod may go on the node at all (NodeUnschedulable, NodeAffinity,
/// TaintToleration), as kube-scheduler words why not; the DaemonSet controller asks this too.
pub fn node_fit(p: &Pod, n: &Node) -> Option<String> {
    let spec = p.spec.as_ref();
    // NodeUnschedulable.
    if n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        let t = Taint {
            key: "node.kubernetes.io/unschedulable".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        if !tolerations(p).iter().any(|x| tolerates(x, &t)) {
            return Some("node(s) were unschedulable".to_string());
        }
    }
    // NodeAffinity: nodeSelector and required terms.
    let labels = n.metadata.labels.clone().unwrap_or_default();
    let selector_ok = spec
        .and_then(|s| s.node_selector.as_ref())
        .is_none_or(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)));
    let required_ok = spec
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .is_none_or(|r| r.node_selector_terms.iter().any(|t| term_matches(t, n)));
    if !selector_ok || !required_ok {
        return Some("node(s) didn't match Pod's node affinity/selector".to_string());
    }
    // TaintToleration: NoSchedule and NoExecute taints must be tolerated.
    if let Some(t) = n
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .find(|t| !tolerations(p).iter().any(|x| tolerates(x, t)))
    {
        let v = t.value.as_deref().unwrap_or("");
        return Some(if v.is_empty() {
            format!("node(s) had untolerated taint {{{}: }}", t.key)
        } else {
            format!("node(s) had untolerated taint {{{}: {v}}}", t.key)
        });
    }
    None
}

/// Why a node does not fit a pod, as kube-scheduler words it in its summary; `None` fits.
pub fn filter(
    p: &Pod,
    n: &Node,
    used: &Resources,
    used_ports: &HashSet<(String, i32)>,
) -> Vec<String> {
    let mut why = Vec::new();
    let spec = p.spec.as_ref();
    if let Some(r) = node_fit(p, n) {
        why.push(r);
        return why;
    }
    // NodePorts.
    for c in spec.map(|s| s.containers.as_slice()).unwrap_or(&[]) {
        for port in c.ports.iter().flatten() {
            if let Some(hp) = port.host_port.filter(|h| *h > 0) {
                let proto = port.protocol.clone().unwrap_or_else(|| "TCP".into());
                if used_ports.contains(&(proto, hp)) {
                    why.push("node(s) didn't have free ports for the requested pod ports".into());
                    return why;
                }
            }
        }
    }
    // NodeResourcesFit.
    let want = requests(p);
    let have = allocatable(n);
    if used.pods + 1 > have.pods {
        why.push("Too many pods".into());
    }
    if want.cpu_milli > 0 && used.cpu_milli + want.cpu_milli > have.cpu_milli {
        why.push("Insufficient cpu".into());
    }
    if want.memory > 0 && used.memory + want.memory > have.memory {
        why.push("Insufficient memory".into());
    }
    why
}

/// The node's score, 0–300: LeastAllocated (the share of CPU and memory left after the
/// pod), the pod's preferred node affinity, and PreferNoSchedule taints it does not tolerate.
pub fn score(p: &Pod, n: &Node, used: &Resources) -> i64 {
    let want = requests(p);
    let have = allocatable(n);
    let free = |used: u64, want: u64, cap: u64| -> i64 {
        if cap == 0 {
            return 0;
        }
        let left = cap.saturating_sub(used + want);
        (left * 100 / cap) as i64
    };
    let least = (free(used.cpu_milli, want.cpu_milli, have.cpu_milli)
        + free(used.memory, want.memory, have.memory))
        / 2;
    let preferred: i64 = p
        .spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .into_iter()
        .flatten()
        .filter(|t| term_matches(&t.preference, n))
        .map(|t| i64::from(t.weight))
        .sum::<i64>()
        .min(100);
    let untolerated = n
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .filter(|t| t.effect == "PreferNoSchedule")
        .filter(|t| !tolerations(p).iter().any(|x| tolerates(x, t)))
        .count() as i64;
    least + preferred + (100 - 25 * untolerated).max(0)
}

/// kube-scheduler's summary: `0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had
/// untolerated taint {…}.` (reasons counted over nodes, sorted).
pub fn summary(total: usize, reasons: &BTreeMap<String, usize>) -> String {
    let mut parts: Vec<String> = reasons.iter().map(|(r, c)| format!("{c} {r}")).collect();
    parts.sort();
    let mut msg = format!("0/{total} nodes are available");
    if !parts.is_empty() {
        msg.push_str(": ");
        msg.push_str(&parts.join(", "));
    }
    msg.push('.');
    msg.push_str(&format!(
        " preemption: 0/{total} nodes are available: {total} Preemption is not helpful for scheduling."
    ));
    msg
}

fn key(p: &Pod) -> String {
    format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or_default(),
        p.metadata.name.as_deref().unwrap_or_default()
    )
}

fn wants_us(p: &Pod) -> bool {
    let s = p.spec.as_ref();
    s.and_then(|s| s.node_name.as_deref())
        .is_none_or(str::is_empty)
        && s.and_then(|s| s.scheduler_name.as_deref())
            .is_none_or(|n| n.is_empty() || n == NAME)
        && p.metadata.deletion_timestamp.is_none()
        && !matches!(
            p.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}

#[derive(Default)]
struct State {
    nodes: BTreeMap<String, Node>,
    pods: HashMap<String, Arc<Pod>>,
    /// Pods bound by this scheduler that the watch has not shown bound yet: key → node.
    assumed: HashMap<String, String>,
    /// Pods that fit nowhere, with the message they were given.
    unschedulable: HashMap<String, String>,
}

impl State {
    fn placed(&self) -> HashMap<String, (Resources, HashSet<(String, i32)>)> {
        let mut by_node: HashMap<String, (Resources, HashSet<(String, i32)>)> = HashMap::new();
        for (k, p) in &self.pods {
            let node = p
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .filter(|n| !n.is_empty())
                .or_else(|| self.assumed.get(k).cloned());
            let Some(node) = node else { continue };
            if matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            ) {
                continue;
            }
            let r = requests(p);
            let e = by_node.entry(node).or_default();
            e.0.cpu_milli += r.cpu_milli;
            e.0.memory += r.memory;
            e.0.pods += 1;
            for c in p.spec.iter().flat_map(|s| s.containers.iter()) {
                for port in c.ports.iter().flatten() {
                    if let Some(hp) = port.host_port.filter(|h| *h > 0) {
                        e.1.insert((port.protocol.clone().unwrap_or_else(|| "TCP".into()), hp));
                    }
                }
            }
        }
        by_node
    }

    /// One scheduling cycle for `p`: the chosen node, or the summary of why none fits.
    fn decide(&self, p: &Pod) -> Result<String, String> {
        let placed = self.placed();
        let empty = (Resources::default(), HashSet::new());
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        let mut best: Option<(i64, &String)> = None;
        for (name, n) in &self.nodes {
            let (used, ports) = placed.get(name).unwrap_or(&empty);
            let why = filter(p, n, used, ports);
            if !why.is_empty() {
                for w in why {
                    *reasons.entry(w).or_default() += 1;
                }
                continue;
            }
            let s = score(p, n, used);
            if best.is_none_or(|(b, _)| s > b) {
                best = Some((s, name));
            }
        }
        match best {
            Some((_, n)) => Ok(n.clone()),
            None => Err(summary(self.nodes.len(), &reasons)),
        }
    }
}

enum Change {
    Node(Option<Box<Node>>, String),
    Pod(Option<Arc<Pod>>, String),
    NodesListed(std::collections::HashSet<String>),
    PodsListed(std::collections::HashSet<String>),
    Relisted,
}

/// Runs the scheduler until the process ends.
pub async fn run(client: kube::Client) {
    let nodes: kube::Api<Node> = kube::Api::all(client.clone());
    let pods: kube::Api<Pod> = kube::Api::all(client.clone());
    let node_events = crate::follow(nodes).map(|e| match e {
        crate::Seen::Applied(n) => {
            let name = n.metadata.name.clone().unwrap_or_default();
            Change::Node(Some(Box::new(n)), name)
        }
        crate::Seen::Deleted(n) => Change::Node(None, n.metadata.name.unwrap_or_default()),
        crate::Seen::Listed(keys) => Change::NodesListed(keys),
        crate::Seen::Nothing => Change::Relisted,
    });
    let pod_events = crate::follow(pods).map(|e| match e {
        crate::Seen::Applied(p) => {
            let k = key(&p);
            Change::Pod(Some(Arc::new(p)), k)
        }
        crate::Seen::Deleted(p) => Change::Pod(None, key(&p)),
        crate::Seen::Listed(keys) => Change::PodsListed(keys),
        crate::Seen::Nothing => Change::Relisted,
    });
    let mut events = futures::stream::select(node_events.boxed(), pod_events.boxed());
    let mut st = State::default();
    let mut retry = tokio::time::interval(Duration::from_secs(30));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Take every change that is ready, then schedule what is pending.
        let first = tokio::select! {
            e = events.next() => match e { Some(e) => Some(e), None => return },
            _ = retry.tick() => {
                // The safety net: unschedulable pods are tried again now and then.
                st.unschedulable.clear();
                None
            }
        };
        let mut batch: Vec<Change> = first.into_iter().collect();
        while let Some(Some(e)) = futures::FutureExt::now_or_never(events.next()) {
            batch.push(e);
            if batch.len() > 1000 {
                break;
            }
        }
        for c in batch {
            match c {
                Change::Node(Some(n), name) => {
                    st.nodes.insert(name, *n);
                    // Something that could help unschedulable pods.
                    st.unschedulable.clear();
                }
                Change::Node(None, name) => {
                    st.nodes.remove(&name);
                }
                Change::Pod(Some(p), k) => {
                    if p.spec
                        .as_ref()
                        .and_then(|s| s.node_name.as_deref())
                        .is_some_and(|n| !n.is_empty())
                    {
                        st.assumed.remove(&k);
                        st.unschedulable.remove(&k);
                    }
                    st.pods.insert(k, p);
                }
                Change::Pod(None, k) => {
                    st.pods.remove(&k);
                    st.assumed.remove(&k);
                    if st.unschedulable.remove(&k).is_none() {
                        // A pod gone frees room.
                        st.unschedulable.clear();
                    }
                }
                Change::NodesListed(keys) => {
                    // Node keys are `/name`.
                    st.nodes.retain(|n, _| keys.contains(&format!("/{n}")));
                }
                Change::PodsListed(keys) => {
                    st.pods.retain(|k, _| keys.contains(k));
                    st.assumed.retain(|k, _| keys.contains(k));
                    st.unschedulable.clear();
                }
                Change::Relisted => {}
            }
        }
        let mut pending: Vec<Arc<Pod>> = st
            .pods
            .iter()
            .filter(|(k, p)| {
                wants_us(p) && !st.assumed.contains_key(*k) && !st.unschedulable.contains_key(*k)
            })
            .map(|(_, p)| p.clone())
            .collect();
        // Higher priority first, then the oldest.
        pending.sort_by_key(|p| {
            (
                std::cmp::Reverse(p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)),
                p.metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|t| t.0.to_string()),
                key(p),
            )
        });
        for p in pending {
            let k = key(&p);
            match st.decide(&p) {
                Ok(node) => {
                    st.assumed.insert(k.clone(), node.clone());
                    let client = client.clone();
                    tokio::spawn(bind(client, p.clone(), node));
                }
                Err(msg) => {
                    st.unschedulable.insert(k, msg.clone());
                    tokio::spawn(unschedulable(client.clone(), p.clone(), msg));
                }
            }
        }
    }
}

/// Binds off the cycle, through `pods/binding`.
async fn bind(client: kube::Client, p: Arc<Pod>, node: String) {
    let ns = p.metadata.namespace.clone().unwrap_or_default();
    let name = p.metadata.name.clone().unwrap_or_default();
    let api: kube::Api<Pod> = kube::Api::namespaced(client.clone(), &ns);
    let body = json!({"apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": name, "uid": p.metadata.uid},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node}});
    let r = api
        .create_subresource::<serde_json::Value, serde_json::Value>(
            "binding",
            &name,
            &PostParams::default(),
            &body,
        )
        .await;
    let involved = json!({"kind": "Pod", "namespace": ns, "name": name, "uid": p.metadata.uid, "apiVersion": "v1"});
    match r {
        Ok(_) => {
            crate::event(
                &client,
                NAME,
                involved,
                "Normal",
                "Scheduled",
                &format!("Successfully assigned {ns}/{name} to {node}"),
            )
            .await
        }
        Err(e) => eprintln!("berth scheduler: binding {ns}/{name} to {node}: {e}"),
    }
}

async fn unschedulable(client: kube::Client, p: Arc<Pod>, msg: String) {
    let ns = p.metadata.namespace.clone().unwrap_or_default();
    let name = p.metadata.name.clone().unwrap_or_default();
    let api: kube::Api<Pod> = kube::Api::namespaced(client.clone(), &ns);
    let already = p
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter().any(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.message.as_deref() == Some(msg.as_str())
            })
        });
    if already {
        return;
    }
    let patch = json!({"status": {"conditions": [{"type": "PodScheduled", "status": "False",
        "reason": "Unschedulable", "message": msg, "lastProbeTime": null,
        "lastTransitionTime": crate::now()}]}});
    let _ = api
        .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await;
    let involved = json!({"kind": "Pod", "namespace": ns, "name": name, "uid": p.metadata.uid, "apiVersion": "v1"});
    crate::event(&client, NAME, involved, "Warning", "FailedScheduling", &msg).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cpu: &str, taint: Option<(&str, &str)>) -> Node {
        let mut n: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {"allocatable": {"cpu": cpu, "memory": "1Gi", "pods": "110"}}
        }))
        .unwrap();
        if let Some((k, v)) = taint {
            n.spec = Some(
                serde_json::from_value(
                    json!({"taints": [{"key": k, "value": v, "effect": "NoSchedule"}]}),
                )
                .unwrap(),
            );
        }
        n
    }

    fn pod(cpu: &str) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "d"},
            "spec": {"containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": cpu}}}]}}))
        .unwrap()
    }

    #[test]
    fn the_summary_counts_reasons_as_kube_scheduler() {
        let mut st = State::default();
        st.nodes.insert("a".into(), node("a", "1", None));
        st.nodes
            .insert("b".into(), node("b", "4", Some(("dedicated", "gpu"))));
        st.nodes
            .insert("c".into(), node("c", "4", Some(("dedicated", "gpu"))));
        let e = st.decide(&pod("2")).unwrap_err();
        assert_eq!(e, "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had untolerated taint {dedicated: gpu}. preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling.");
        assert_eq!(st.decide(&pod("500m")).unwrap(), "a");
    }

    #[test]
    fn least_allocated_spreads_pods() {
        let mut st = State::default();
        st.nodes.insert("a".into(), node("a", "2", None));
        st.nodes.insert("b".into(), node("b", "2", None));
        let mut first = pod("1");
        let n = st.decide(&first).unwrap();
        first.spec.as_mut().unwrap().node_name = Some(n.clone());
        st.pods.insert("d/p".into(), Arc::new(first));
        let second = st.decide(&pod("1")).unwrap();
        assert_ne!(second, n);
    }
}
