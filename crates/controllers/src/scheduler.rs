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
use k8s_openapi::api::core::v1::{
    Node, PersistentVolume, PersistentVolumeClaim, Pod, Taint, Toleration,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

mod preemption;
mod volumes;

pub const NAME: &str = "default-scheduler";

/// How many bindings are sent at once: enough for the store's group commits to fill
/// (bench/scheduler.sh measures 128 to unbounded alike, within its noise), few enough that
/// a burst of thousands does not open a connection each.
const BINDINGS_IN_FLIGHT: usize = 256;

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
    static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();
    let labels = n.metadata.labels.as_ref().unwrap_or(&NO_LABELS);
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
    filter_with(p, &requests(p), n, &allocatable(n), used, used_ports)
}

/// [`filter`] with the pod's requests and the node's allocatable counted beforehand.
fn filter_with(
    p: &Pod,
    want: &Resources,
    n: &Node,
    have: &Resources,
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
    fits_resources(want, have, used, &mut why);
    why
}

/// NodeResourcesFit with the pod's requests and the node's allocatable already counted.
fn fits_resources(want: &Resources, have: &Resources, used: &Resources, why: &mut Vec<String>) {
    if used.pods + 1 > have.pods {
        why.push("Too many pods".into());
    }
    if want.cpu_milli > 0 && used.cpu_milli + want.cpu_milli > have.cpu_milli {
        why.push("Insufficient cpu".into());
    }
    if want.memory > 0 && used.memory + want.memory > have.memory {
        why.push("Insufficient memory".into());
    }
}

/// The node's score, 0–300: LeastAllocated (the share of CPU and memory left after the
/// pod), the pod's preferred node affinity, and PreferNoSchedule taints it does not tolerate.
pub fn score(p: &Pod, n: &Node, used: &Resources) -> i64 {
    score_with(p, &requests(p), n, &allocatable(n), used)
}

fn score_with(p: &Pod, want: &Resources, n: &Node, have: &Resources, used: &Resources) -> i64 {
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

/// What a pod adds to its node: the node, its requests and its host ports.
type Counted = (String, Resources, Vec<(String, i32)>);

/// A map with a fast hash, for the lookups a cycle makes per node.
type Fast<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The cache's record of one node (kube-scheduler's NodeInfo): the node (None while only
/// pods name it), its allocatable parsed once per update, and what its pods take.
#[derive(Default)]
struct NodeUse {
    node: Option<Arc<Node>>,
    alloc: Resources,
    used: Resources,
    ports: HashSet<(String, i32)>,
}

#[derive(Default)]
struct State {
    nodes: BTreeMap<String, Node>,
    pods: HashMap<String, Arc<Pod>>,
    /// Pods bound by this scheduler that the watch has not shown bound yet: key → node.
    assumed: HashMap<String, String>,
    /// Pods that fit nowhere, with the message they were given.
    unschedulable: HashMap<String, String>,
    /// Pods whose binding failed: not tried again before the instant, and how often.
    backoff: HashMap<String, (std::time::Instant, u32)>,
    /// The node cache, kept as pods come and go, and the pods on each node.
    usage: Fast<String, NodeUse>,
    by_node: HashMap<String, HashSet<String>>,
    /// The nodes in the order cycles take them, in turn.
    ring: Vec<String>,
    /// What each pod adds to its node, to take it back when it changes.
    counted: HashMap<String, Counted>,
    /// Pods with required anti-affinity (every pod must look at them).
    anti: HashSet<String>,
    /// Where the next cycle starts looking (nodes are taken in turn, as kube-scheduler does).
    next_start: usize,
    /// The queue: pods for this scheduler that are not placed yet (the unschedulable and
    /// backed-off ones among them wait their turn).
    active: HashSet<String>,
    /// Pods nominated to a node by preemption and not bound yet: key → node.
    nominated: HashMap<String, String>,
    /// Claims, volumes and storage classes, for VolumeBinding.
    volumes: volumes::Volumes,
    /// PodDisruptionBudgets, which preemption spares where it can.
    budgets: HashMap<String, Arc<PodDisruptionBudget>>,
}

fn host_ports(p: &Pod) -> Vec<(String, i32)> {
    p.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|port| {
            port.host_port
                .filter(|h| *h > 0)
                .map(|hp| (port.protocol.clone().unwrap_or_else(|| "TCP".into()), hp))
        })
        .collect()
}

/// How many feasible nodes a cycle looks for before it stops (kube-scheduler's adaptive
/// percentageOfNodesToScore: 50% minus 1% per 125 nodes, at least 5%, at least 100 nodes).
fn nodes_to_find(total: usize) -> usize {
    if total <= 100 {
        return total;
    }
    let pct = (50 - (total as i64) / 125).max(5) as usize;
    (total * pct / 100).max(100)
}

impl State {
    /// Records a node as it now is.
    fn set_node(&mut self, n: Node) {
        let name = n.metadata.name.clone().unwrap_or_default();
        let u = self.usage.entry(name.clone()).or_default();
        u.alloc = allocatable(&n);
        if u.node.is_none() {
            self.ring.push(name.clone());
        }
        u.node = Some(Arc::new(n.clone()));
        self.nodes.insert(name, n);
    }

    /// Forgets a node (what its pods take stays counted until they go).
    fn remove_node(&mut self, name: &str) {
        self.nodes.remove(name);
        if let Some(u) = self.usage.get_mut(name) {
            u.node = None;
            u.alloc = Resources::default();
        }
        self.ring.retain(|n| n != name);
    }

    /// Records a pod as it now is (or its removal), keeping the node cache right.
    fn set_pod(&mut self, k: &str, p: Option<Arc<Pod>>) {
        if let Some((node, r, ports)) = self.counted.remove(k) {
            if let Some(u) = self.usage.get_mut(&node) {
                u.used.sub(&r);
                for port in ports {
                    u.ports.remove(&port);
                }
            }
            if let Some(s) = self.by_node.get_mut(&node) {
                s.remove(k);
            }
        }
        self.anti.remove(k);
        let Some(p) = p else {
            self.pods.remove(k);
            return;
        };
        let finished = matches!(
            p.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        );
        let node = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty())
            .or_else(|| self.assumed.get(k).cloned());
        if let (Some(node), false) = (node, finished) {
            let mut r = requests(&p);
            r.pods = 1;
            let ports = host_ports(&p);
            let u = self.usage.entry(node.clone()).or_default();
            u.used.add(&r);
            u.ports.extend(ports.iter().cloned());
            self.by_node
                .entry(node.clone())
                .or_default()
                .insert(k.to_string());
            self.counted.insert(k.to_string(), (node, r, ports));
            if p.spec
                .as_ref()
                .and_then(|s| s.affinity.as_ref())
                .and_then(|a| a.pod_anti_affinity.as_ref())
                .is_some_and(|a| {
                    a.required_during_scheduling_ignored_during_execution
                        .is_some()
                })
            {
                self.anti.insert(k.to_string());
            }
        }
        self.pods.insert(k.to_string(), p);
    }

    /// Places `p` on `node` in the cache before the binding is seen.
    fn assume(&mut self, k: &str, node: &str) {
        self.assumed.insert(k.to_string(), node.to_string());
        if let Some(p) = self.pods.get(k).cloned() {
            self.set_pod(k, Some(p));
        }
    }

    /// One scheduling cycle for `p`: the chosen node, or the summary of why none fits.
    fn decide(&mut self, p: &Pod) -> Result<String, String> {
        let total = self.ring.len();
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        let view = crate::schedplugins::needs_view(p, !self.anti.is_empty()).then(|| {
            let placed = crate::schedplugins::Placed {
                nodes: &self.nodes,
                by_node: &self.by_node,
                pods: &self.pods,
            };
            crate::schedplugins::PodView::build(p, &placed, &|n| {
                node_fit(p, n).is_none_or(|r| r.contains("taint") || r.contains("unschedulable"))
            })
        });
        let needs = if volumes::claim_names(p).next().is_some() {
            match self.volumes.needs(p) {
                Ok(n) => n,
                Err(msg) => return Err(format!("0/{total} nodes are available: {msg}.")),
            }
        } else {
            Vec::new()
        };
        let me = key(p);
        let want = nodes_to_find(total);
        let want_res = requests(p);
        let reserved = if self.nominated.is_empty() {
            HashMap::new()
        } else {
            self.reserved(&key(p), preemption::priority(p))
        };
        let start = if total == 0 {
            0
        } else {
            self.next_start % total
        };
        let mut best: Option<(i64, &String)> = None;
        let mut found = 0;
        let mut looked = 0;
        for i in 0..total {
            let name = &self.ring[(start + i) % total];
            looked += 1;
            let Some(u) = self.usage.get(name) else {
                continue;
            };
            let Some(n) = u.node.as_deref() else {
                continue;
            };
            let (used, ports, have) = (&u.used, &u.ports, &u.alloc);
            let with_reserved;
            let used = match reserved.get(name.as_str()) {
                Some(r) => {
                    let mut u = used.clone();
                    u.add(r);
                    with_reserved = u;
                    &with_reserved
                }
                None => used,
            };
            let mut why = filter_with(p, &want_res, n, have, used, ports);
            if why.is_empty() {
                if let Some(r) = view.as_ref().and_then(|v| v.filter(p, n)) {
                    why.push(r);
                }
            }
            if why.is_empty() && !needs.is_empty() {
                if let Err(r) = self.volumes.on_node(&me, &needs, n) {
                    why.push(r.to_string());
                }
            }
            if !why.is_empty() {
                for w in why {
                    *reasons.entry(w).or_default() += 1;
                }
                continue;
            }
            found += 1;
            let s = score_with(p, &want_res, n, have, used)
                + view.as_ref().map_or(0, |v| v.score(n))
                + crate::schedplugins::image_locality(p, n) / 4;
            if best.is_none_or(|(b, _)| s > b) {
                best = Some((s, name));
            }
            if found >= want {
                break;
            }
        }
        self.next_start = (start + looked) % total.max(1);
        match best {
            Some((_, n)) => Ok(n.clone()),
            None => Err(summary(total, &reasons)),
        }
    }
}

enum Change {
    Node(Option<Box<Node>>, String),
    /// A change to one of the other kinds the scheduler keeps, as what it does to the state.
    Kept(Box<dyn FnOnce(&mut State) + Send>),
    Pod(Option<Arc<Pod>>, String),
    NodesListed(std::collections::HashSet<String>),
    PodsListed(std::collections::HashSet<String>),
    Relisted,
}

fn put<V>(m: &mut HashMap<String, Arc<V>>, k: String, v: Option<Arc<V>>) {
    match v {
        Some(v) => m.insert(k, v),
        None => m.remove(&k),
    };
}

/// A watch of every `K` the scheduler keeps (by `ns/name`, or `name` if cluster-scoped), as
/// changes that `set` them into the state or, after a relist, `keep` only the keys listed.
fn kept<K: crate::Object>(
    client: &kube::Client,
    set: fn(&mut State, String, Option<Arc<K>>),
    keep: fn(&mut State, &HashSet<String>),
) -> futures::stream::BoxStream<'static, Change> {
    let name = |k: String| k.strip_prefix('/').map(str::to_string).unwrap_or(k);
    crate::follow(kube::Api::<K>::all(client.clone()))
        .filter_map(move |e| async move {
            let f: Box<dyn FnOnce(&mut State) + Send> = match e {
                crate::Seen::Applied(o) => {
                    let k = name(crate::key_of(&o));
                    Box::new(move |st| set(st, k, Some(Arc::new(o))))
                }
                crate::Seen::Deleted(o) => {
                    let k = name(crate::key_of(&o));
                    Box::new(move |st| set(st, k, None))
                }
                crate::Seen::Listed(keys) => {
                    let keys: HashSet<String> = keys.into_iter().map(name).collect();
                    Box::new(move |st| keep(st, &keys))
                }
                crate::Seen::Nothing => return None,
            };
            Some(Change::Kept(f))
        })
        .boxed()
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
    let claim_events = kept::<PersistentVolumeClaim>(
        &client,
        |st, k, c| put(&mut st.volumes.claims, k, c),
        |st, keys| st.volumes.claims.retain(|k, _| keys.contains(k)),
    );
    let volume_events = kept::<PersistentVolume>(
        &client,
        |st, k, v| match v {
            Some(v) => drop(st.volumes.pvs.insert(k, v)),
            None => drop(st.volumes.pvs.remove(&k)),
        },
        |st, keys| st.volumes.pvs.retain(|k, _| keys.contains(k)),
    );
    let class_events = kept::<StorageClass>(
        &client,
        |st, k, c| put(&mut st.volumes.classes, k, c),
        |st, keys| st.volumes.classes.retain(|k, _| keys.contains(k)),
    );
    let budget_events = kept::<PodDisruptionBudget>(
        &client,
        |st, k, b| put(&mut st.budgets, k, b),
        |st, keys| st.budgets.retain(|k, _| keys.contains(k)),
    );
    let mut events = futures::stream::select_all([
        node_events.boxed(),
        pod_events.boxed(),
        claim_events,
        volume_events,
        class_events,
        budget_events,
    ]);
    let mut st = State::default();
    let mut retry = tokio::time::interval(Duration::from_secs(30));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (failed_tx, mut failed_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let inflight = Arc::new(tokio::sync::Semaphore::new(BINDINGS_IN_FLIGHT));
    let mut backoff_tick = tokio::time::interval(Duration::from_secs(1));
    let mut fails: Vec<String> = Vec::new();
    loop {
        // Take every change that is ready, then schedule what is pending.
        let first = tokio::select! {
            e = events.next() => match e { Some(e) => Some(e), None => return },
            _ = retry.tick() => {
                // The safety net: unschedulable pods are tried again now and then.
                st.unschedulable.clear();
                None
            }
            _ = backoff_tick.tick(), if !st.backoff.is_empty() => None,
            Some(k) = failed_rx.recv() => {
                fails.push(k);
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
                Change::Node(Some(n), _) => {
                    st.set_node(*n);
                    // Something that could help unschedulable pods.
                    st.unschedulable.clear();
                }
                Change::Node(None, name) => st.remove_node(&name),
                // Claims, volumes, classes and budgets that change could help pods waiting.
                Change::Kept(apply) => {
                    apply(&mut st);
                    st.unschedulable.clear();
                }
                Change::Pod(Some(p), k) => {
                    if p.spec
                        .as_ref()
                        .and_then(|s| s.node_name.as_deref())
                        .is_some_and(|n| !n.is_empty())
                    {
                        st.assumed.remove(&k);
                        st.unschedulable.remove(&k);
                        st.backoff.remove(&k);
                        st.nominated.remove(&k);
                        st.volumes.reserved.retain(|_, p| *p != k);
                    } else if let Some(n) = p
                        .status
                        .as_ref()
                        .and_then(|s| s.nominated_node_name.clone())
                        .filter(|n| !n.is_empty())
                    {
                        // A nomination made before a restart, or by another instance.
                        st.nominated.entry(k.clone()).or_insert(n);
                    }
                    if wants_us(&p) && !st.assumed.contains_key(&k) {
                        st.active.insert(k.clone());
                    } else {
                        st.active.remove(&k);
                    }
                    st.set_pod(&k, Some(p));
                }
                Change::Pod(None, k) => {
                    st.active.remove(&k);
                    st.nominated.remove(&k);
                    st.set_pod(&k, None);
                    st.assumed.remove(&k);
                    st.backoff.remove(&k);
                    if st.unschedulable.remove(&k).is_none() {
                        // A pod gone frees room.
                        st.unschedulable.clear();
                    }
                }
                Change::NodesListed(keys) => {
                    // Node keys are `/name`.
                    let names = keys
                        .iter()
                        .map(|k| k.trim_start_matches('/').to_string())
                        .collect();
                    for n in crate::unlisted(st.nodes.keys(), &names) {
                        st.remove_node(&n);
                    }
                }
                Change::PodsListed(keys) => {
                    for k in crate::unlisted(st.pods.keys(), &keys) {
                        st.active.remove(&k);
                        st.set_pod(&k, None);
                    }
                    st.assumed.retain(|k, _| keys.contains(k));
                    st.unschedulable.clear();
                }
                Change::Relisted => {}
            }
        }
        // Binding failures come back to the back-off queue.
        while let Ok(k) = failed_rx.try_recv() {
            fails.push(k);
        }
        for k in fails.drain(..) {
            st.volumes.reserved.retain(|_, p| *p != k);
            if st.assumed.remove(&k).is_some() {
                let tries = st.backoff.get(&k).map_or(0, |b| b.1) + 1;
                // 1 s doubling to 10 s, as kube-scheduler's pod back-off.
                let wait = Duration::from_secs((1u64 << tries.min(4).saturating_sub(1)).min(10));
                st.backoff
                    .insert(k.clone(), (std::time::Instant::now() + wait, tries));
                if let Some(p) = st.pods.get(&k).cloned() {
                    if wants_us(&p) {
                        st.active.insert(k.clone());
                    }
                    st.set_pod(&k, Some(p));
                }
            }
        }
        let now = std::time::Instant::now();
        let mut pending: Vec<Arc<Pod>> = st
            .active
            .iter()
            .filter(|k| {
                !st.unschedulable.contains_key(*k)
                    && st.backoff.get(*k).is_none_or(|(until, _)| *until <= now)
            })
            .filter_map(|k| st.pods.get(k).cloned())
            .collect();
        // Higher priority first, then the oldest.
        pending.sort_by_cached_key(|p| {
            (
                std::cmp::Reverse(p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)),
                p.metadata.creation_timestamp.as_ref().map(|t| t.0),
                key(p),
            )
        });
        for p in pending {
            let k = key(&p);
            match st.decide(&p) {
                Ok(node) => {
                    st.active.remove(&k);
                    // The volumes its waiting claims get there, held until it is bound.
                    let plan = match (st.nodes.get(&node), volumes::claim_names(&p).next()) {
                        (Some(n), Some(_)) => st
                            .volumes
                            .needs(&p)
                            .ok()
                            .and_then(|needs| st.volumes.on_node(&k, &needs, n).ok())
                            .unwrap_or_default(),
                        _ => Vec::new(),
                    };
                    for r in &plan {
                        st.volumes.reserved.insert(r.3.clone(), k.clone());
                    }
                    st.assume(&k, &node);
                    let client = client.clone();
                    let permit = inflight.clone();
                    let failed_tx = failed_tx.clone();
                    tokio::spawn(async move {
                        // Bindings share a few connections rather than each opening one.
                        let _permit = permit.acquire_owned().await;
                        bind(client, p, node, plan, failed_tx).await
                    });
                }
                Err(msg) => match st.preempt(&p) {
                    Ok(plan) => {
                        // Retried once the victims are gone; meanwhile the room is held.
                        st.nominated.insert(k.clone(), plan.node.clone());
                        st.unschedulable.insert(k, msg.clone());
                        tokio::spawn(preemption::carry_out(client.clone(), p.clone(), plan, msg));
                    }
                    Err(why) => {
                        let msg = format!("{msg} preemption: {why}");
                        let had = st.nominated.remove(&k).map(|_| String::new());
                        st.unschedulable.insert(k, msg.clone());
                        tokio::spawn(unschedulable(client.clone(), p.clone(), msg, had));
                    }
                },
            }
        }
    }
}

/// Binds off the cycle, through `pods/binding`.
async fn bind(
    client: kube::Client,
    p: Arc<Pod>,
    node: String,
    volumes: Vec<volumes::Reservation>,
    failed: tokio::sync::mpsc::UnboundedSender<String>,
) {
    let ns = p.metadata.namespace.clone().unwrap_or_default();
    let name = p.metadata.name.clone().unwrap_or_default();
    // PreBind: the claims first.
    if !volumes.is_empty() {
        if let Err(e) = volumes::bind_claims(&client, &volumes).await {
            eprintln!("berth scheduler: binding the volumes of {ns}/{name}: {e:#}");
            let _ = failed.send(format!("{ns}/{name}"));
            return;
        }
    }
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
        Err(e) => {
            eprintln!("berth scheduler: binding {ns}/{name} to {node}: {e}");
            let _ = failed.send(format!("{ns}/{name}"));
        }
    }
}

/// Records why `p` waits: the `PodScheduled=False` condition and a `FailedScheduling`
/// event; `nominated` sets (or, empty, clears) `status.nominatedNodeName`.
async fn unschedulable(client: kube::Client, p: Arc<Pod>, msg: String, nominated: Option<String>) {
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
    let current = p
        .status
        .as_ref()
        .and_then(|s| s.nominated_node_name.clone())
        .unwrap_or_default();
    if already && nominated.as_ref().is_none_or(|n| *n == current) {
        return;
    }
    let mut patch = json!({"status": {"conditions": [{"type": "PodScheduled", "status": "False",
        "reason": "Unschedulable", "message": msg, "lastProbeTime": null,
        "lastTransitionTime": crate::now()}]}});
    if let Some(n) = nominated {
        patch["status"]["nominatedNodeName"] = if n.is_empty() { json!(null) } else { json!(n) };
    }
    let _ = api
        .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await;
    let involved = json!({"kind": "Pod", "namespace": ns, "name": name, "uid": p.metadata.uid, "apiVersion": "v1"});
    crate::event(&client, NAME, involved, "Warning", "FailedScheduling", &msg).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn node(name: &str, cpu: &str, taint: Option<(&str, &str)>) -> Node {
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
        st.set_node(node("a", "1", None));
        st.set_node(node("b", "4", Some(("dedicated", "gpu"))));
        st.set_node(node("c", "4", Some(("dedicated", "gpu"))));
        let e = st.decide(&pod("2")).unwrap_err();
        assert_eq!(e, "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had untolerated taint {dedicated: gpu}.");
        assert_eq!(st.decide(&pod("500m")).unwrap(), "a");
    }

    #[test]
    fn least_allocated_spreads_pods() {
        let mut st = State::default();
        st.set_node(node("a", "2", None));
        st.set_node(node("b", "2", None));
        let mut first = pod("1");
        let n = st.decide(&first).unwrap();
        first.spec.as_mut().unwrap().node_name = Some(n.clone());
        st.set_pod("d/p", Some(Arc::new(first)));
        let second = st.decide(&pod("1")).unwrap();
        assert_ne!(second, n);
    }

    fn labelled(name: &str, zone: &str) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "topology.kubernetes.io/zone": zone}},
            "status": {"allocatable": {"cpu": "8", "memory": "8Gi", "pods": "110"}}
        }))
        .unwrap()
    }

    fn app_pod(name: &str, spec_extra: serde_json::Value) -> Pod {
        let mut spec = json!({"containers": [{"name": "c", "image": "i"}]});
        for (k, v) in spec_extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "d", "labels": {"app": "a"}}, "spec": spec}))
            .unwrap()
    }

    pub(super) fn place(st: &mut State, p: &Pod) -> Result<String, String> {
        let node = st.decide(p)?;
        let mut bound = p.clone();
        bound.spec.as_mut().unwrap().node_name = Some(node.clone());
        st.set_pod(&key(&bound), Some(Arc::new(bound)));
        Ok(node)
    }

    #[test]
    fn required_anti_affinity_keeps_replicas_apart() {
        let mut st = State::default();
        for n in ["a", "b"] {
            st.set_node(labelled(n, "z1"));
        }
        let anti = json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "a"}}, "topologyKey": "kubernetes.io/hostname"}]}}});
        let first = place(&mut st, &app_pod("p1", anti.clone())).unwrap();
        let second = place(&mut st, &app_pod("p2", anti.clone())).unwrap();
        assert_ne!(first, second);
        let e = place(&mut st, &app_pod("p3", anti)).unwrap_err();
        assert!(
            e.starts_with(
                "0/2 nodes are available: 2 node(s) didn't match pod anti-affinity rules."
            ),
            "{e}"
        );
        // A pod without the rule is still kept off by the existing pods' anti-affinity.
        let e = place(&mut st, &app_pod("p4", json!({}))).unwrap_err();
        assert!(
            e.contains("2 node(s) didn't satisfy existing pods anti-affinity rules"),
            "{e}"
        );
    }

    #[test]
    fn topology_spread_fills_the_emptier_zone_and_affinity_follows_its_peer() {
        let mut st = State::default();
        st.set_node(labelled("a", "z1"));
        st.set_node(labelled("b", "z1"));
        st.set_node(labelled("c", "z2"));
        let spread = json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "a"}}}]});
        let mut zones = Vec::new();
        for i in 0..4 {
            let n = place(&mut st, &app_pod(&format!("s{i}"), spread.clone())).unwrap();
            zones.push(if n == "c" { "z2" } else { "z1" });
        }
        zones.sort();
        assert_eq!(zones, ["z1", "z1", "z2", "z2"]);
        // Required affinity to a pod labelled web: only its node.
        let mut web: Pod = serde_json::from_value(
            json!({"metadata": {"name": "w", "namespace": "d", "labels": {"role": "web"}},
            "spec": {"containers": [{"name": "c", "image": "i"}], "nodeName": "b"}}),
        )
        .unwrap();
        web.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("x".into(), "y".into());
        st.set_pod("d/w", Some(Arc::new(web)));
        let follow = json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"role": "web"}}, "topologyKey": "kubernetes.io/hostname"}]}}});
        let mut f = app_pod("f", follow);
        f.metadata.labels = None;
        assert_eq!(place(&mut st, &f).unwrap(), "b");
    }
}
