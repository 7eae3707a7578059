//! Node lifecycle, as kube-controller-manager's node lifecycle controller and its taint
//! eviction manager do it.
//!
//! - A node's heartbeat is its Lease in `kube-node-lease` (and its Ready condition's
//!   heartbeat); the time is the controller's own clock when it *saw* the renewal change, so
//!   clocks of other machines do not matter.
//! - A node with no heartbeat for the grace period gets every condition `Unknown`
//!   (`NodeStatusUnknown`, "Kubelet stopped posting node status."), its pods `Ready=False`,
//!   and the taints `node.kubernetes.io/unreachable` NoSchedule and NoExecute. A node whose
//!   agent reports `Ready=False` gets `node.kubernetes.io/not-ready` instead; a Ready node
//!   loses both.
//! - A pod on a node with a NoExecute taint it does not tolerate is deleted at once; one
//!   that tolerates it for `tolerationSeconds` is deleted that long after the taint was
//!   added (`TaintManagerEviction`). Its controller then makes a replacement elsewhere; the
//!   deleted pod stays terminating until its node comes back and finishes it, so a node
//!   that returns never runs it again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::json;

const NAME: &str = "node-controller";
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";

enum Change {
    Node(Option<Arc<Node>>, String),
    NodesListed(std::collections::HashSet<String>),
    Lease(String, Option<String>),
    Pod(Option<Arc<Pod>>, String),
    PodsListed(std::collections::HashSet<String>),
    Other,
}

/// Whether the node's Ready condition is True.
pub fn is_ready(n: &Node) -> bool {
    ready_status(n) == Some("True")
}

fn ready_status(n: &Node) -> Option<&str> {
    n.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.as_str())
}

fn heartbeat_of(n: &Node) -> Option<String> {
    n.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .and_then(|c| c.last_heartbeat_time.as_ref())
        .map(|t| t.0.to_string())
}

/// When a pod on a node with these NoExecute taints must go: `Some(ZERO)` at once, `Some(d)`
/// `d` after the taints were added, `None` never (every taint tolerated forever).
fn eviction_delay(pod: &Pod, taints: &[Taint]) -> Option<Duration> {
    let tols = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or(&[]);
    let mut delay: Option<Duration> = None;
    for taint in taints.iter().filter(|t| t.effect == "NoExecute") {
        let matching: Vec<&Toleration> = tols
            .iter()
            .filter(|t| crate::scheduler::tolerates(t, taint))
            .collect();
        if matching.is_empty() {
            return Some(Duration::ZERO);
        }
        // The shortest tolerationSeconds of those that match; none means forever.
        if let Some(secs) = matching.iter().filter_map(|t| t.toleration_seconds).min() {
            let d = Duration::from_secs(secs.max(0) as u64);
            delay = Some(delay.map_or(d, |x| x.min(d)));
        }
    }
    delay
}

#[derive(Default)]
struct State {
    nodes: HashMap<String, Arc<Node>>,
    /// The last heartbeat seen per node (lease renewTime or Ready heartbeat) and when.
    seen: HashMap<String, (Option<String>, Option<String>, Instant)>,
    pods: HashMap<String, Arc<Pod>>,
    /// The keys of the pods on each node, so an outage looks at that node's pods only.
    by_node: HashMap<String, std::collections::HashSet<String>>,
    /// When this controller saw each NoExecute taint on a node appear, by (node, key).
    tainted_at: HashMap<(String, String), Instant>,
    /// Pods already evicted (by UID), so one is deleted once.
    evicted: std::collections::HashSet<String>,
    /// Nodes whose pods were already marked not ready for this outage.
    marked: std::collections::HashSet<String>,
}

impl State {
    fn node_of(p: &Pod) -> Option<&str> {
        p.spec.as_ref().and_then(|s| s.node_name.as_deref())
    }

    fn put_pod(&mut self, k: String, p: Arc<Pod>) {
        if let Some(n) = Self::node_of(&p) {
            self.by_node
                .entry(n.to_string())
                .or_default()
                .insert(k.clone());
        }
        if let Some(old) = self.pods.insert(k.clone(), p) {
            self.unindex(&k, &old);
        }
    }

    fn drop_pod(&mut self, k: &str) -> Option<Arc<Pod>> {
        let p = self.pods.remove(k)?;
        self.unindex(k, &p);
        Some(p)
    }

    /// Takes `k` out of the index of `old`'s node unless it is still there.
    fn unindex(&mut self, k: &str, old: &Pod) {
        let Some(n) = Self::node_of(old) else { return };
        let still = self
            .pods
            .get(k)
            .is_some_and(|p| Self::node_of(p) == Some(n));
        if !still {
            if let Some(s) = self.by_node.get_mut(n) {
                s.remove(k);
                if s.is_empty() {
                    self.by_node.remove(n);
                }
            }
        }
    }

    /// The pods bound to `node`.
    fn on_node(&self, node: &str) -> impl Iterator<Item = &Arc<Pod>> {
        self.by_node
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(|k| self.pods.get(k))
    }
}

/// Runs the controller until the process ends.
pub async fn run(client: kube::Client, grace: Duration) {
    let nodes = crate::follow(kube::Api::<Node>::all(client.clone())).map(|e| match e {
        crate::Seen::Applied(n) => {
            let k = n.metadata.name.clone().unwrap_or_default();
            Change::Node(Some(Arc::new(n)), k)
        }
        crate::Seen::Deleted(n) => Change::Node(None, n.metadata.name.unwrap_or_default()),
        crate::Seen::Listed(keys) => Change::NodesListed(
            keys.into_iter()
                .map(|k| k.trim_start_matches('/').to_string())
                .collect(),
        ),
        crate::Seen::Nothing => Change::Other,
    });
    let leases = crate::follow(kube::Api::<Lease>::namespaced(
        client.clone(),
        "kube-node-lease",
    ))
    .map(|e| match e {
        crate::Seen::Applied(l) => Change::Lease(
            l.metadata.name.clone().unwrap_or_default(),
            l.spec.and_then(|s| s.renew_time).map(|t| t.0.to_string()),
        ),
        _ => Change::Other,
    });
    let pods = crate::follow(kube::Api::<Pod>::all(client.clone())).map(|e| match e {
        crate::Seen::Applied(p) => {
            let k = crate::key_of(&p);
            Change::Pod(Some(Arc::new(p)), k)
        }
        crate::Seen::Deleted(p) => Change::Pod(None, crate::key_of(&p)),
        crate::Seen::Listed(keys) => Change::PodsListed(keys),
        crate::Seen::Nothing => Change::Other,
    });
    let mut events = futures::stream::select_all([nodes.boxed(), leases.boxed(), pods.boxed()]);
    let mut st = State::default();
    let mut tick = tokio::time::interval(
        (grace / 8).clamp(Duration::from_millis(100), Duration::from_secs(5)),
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            e = events.next() => {
                let Some(e) = e else { return };
                apply(&mut st, e);
                while let Some(Some(e)) = futures::FutureExt::now_or_never(events.next()) {
                    apply(&mut st, e);
                }
            }
            _ = tick.tick() => {}
        }
        monitor(&client, &mut st, grace).await;
    }
}

fn apply(st: &mut State, e: Change) {
    let now = Instant::now();
    match e {
        Change::Node(Some(n), k) => {
            let hb = heartbeat_of(&n);
            let e = st.seen.entry(k.clone()).or_insert((None, None, now));
            if e.1 != hb {
                e.1 = hb;
                e.2 = now;
            }
            st.nodes.insert(k, n);
        }
        Change::Node(None, k) => {
            st.nodes.remove(&k);
            st.seen.remove(&k);
            st.marked.remove(&k);
            st.tainted_at.retain(|(n, _), _| n != &k);
        }
        Change::NodesListed(keys) => {
            st.nodes.retain(|k, _| keys.contains(k));
            st.seen.retain(|k, _| keys.contains(k));
        }
        Change::Lease(name, renew) => {
            let e = st.seen.entry(name).or_insert((None, None, now));
            if renew.is_some() && e.0 != renew {
                e.0 = renew;
                e.2 = now;
            }
        }
        Change::Pod(Some(p), k) => {
            if p.spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .is_some()
            {
                st.put_pod(k, p);
            } else {
                st.drop_pod(&k);
            }
        }
        Change::Pod(None, k) => {
            if let Some(p) = st.drop_pod(&k) {
                st.evicted
                    .remove(p.metadata.uid.as_deref().unwrap_or_default());
            }
        }
        Change::PodsListed(keys) => {
            for k in crate::unlisted(st.pods.keys(), &keys) {
                st.drop_pod(&k);
            }
        }
        Change::Other => {}
    }
}

fn taint(key: &str, effect: &str) -> serde_json::Value {
    json!({"key": key, "effect": effect, "timeAdded": crate::now()})
}

async fn monitor(client: &kube::Client, st: &mut State, grace: Duration) {
    let api: kube::Api<Node> = kube::Api::all(client.clone());
    let names: Vec<String> = st.nodes.keys().cloned().collect();
    for name in names {
        let node = st.nodes[&name].clone();
        let last = st.seen.get(&name).map(|s| s.2).unwrap_or_else(Instant::now);
        let overdue = last.elapsed() > grace;
        let Some(mut ready) = ready_status(&node)
            .map(str::to_string)
            .or_else(|| overdue.then(|| "Unknown".to_string()))
        else {
            // A node that has not reported yet gets its grace period from when it was seen.
            continue;
        };
        if overdue && ready != "Unknown" {
            // Every condition the agent reported becomes Unknown.
            let now = crate::now();
            let conds: Vec<serde_json::Value> = node
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .map(|cs| {
                    cs.iter()
                        .map(|c| {
                            json!({"type": c.type_, "status": "Unknown", "reason": "NodeStatusUnknown",
                                "message": "Kubelet stopped posting node status.",
                                "lastHeartbeatTime": c.last_heartbeat_time, "lastTransitionTime": now})
                        })
                        .collect()
                })
                .unwrap_or_default();
            match api
                .patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(&json!({"status": {"conditions": conds}})),
                )
                .await
            {
                Ok(n) => {
                    eprintln!("berth controllers: node {name} stopped posting its status");
                    crate::event(
                        client,
                        NAME,
                        json!({"kind": "Node", "name": name, "uid": name, "apiVersion": "v1"}),
                        "Normal",
                        "NodeNotReady",
                        &format!("Node {name} status is now: NodeNotReady"),
                    )
                    .await;
                    st.nodes.insert(name.clone(), Arc::new(n));
                    ready = "Unknown".into();
                }
                Err(e) => {
                    eprintln!("berth controllers: node {name}: {e}");
                    continue;
                }
            }
        }
        if ready != "True" && st.marked.insert(name.clone()) {
            mark_pods_not_ready(client, st, &name).await;
        } else if ready == "True" {
            st.marked.remove(&name);
        }
        // The taints this state calls for.
        let want: &[&str] = match ready.as_str() {
            "True" => &[],
            "False" => &[NOT_READY],
            _ => &[UNREACHABLE],
        };
        let node = st.nodes[&name].clone();
        let taints: Vec<Taint> = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        let ours = |t: &Taint| {
            (t.key == UNREACHABLE || t.key == NOT_READY)
                && (t.effect == "NoExecute" || t.effect == "NoSchedule")
        };
        let have: Vec<(String, String)> = taints
            .iter()
            .filter(|t| ours(t))
            .map(|t| (t.key.clone(), t.effect.clone()))
            .collect();
        let wanted: Vec<(String, String)> = want
            .iter()
            .flat_map(|k| {
                [
                    (k.to_string(), "NoSchedule".to_string()),
                    (k.to_string(), "NoExecute".to_string()),
                ]
            })
            .collect();
        let same = have.len() == wanted.len() && wanted.iter().all(|w| have.contains(w));
        if !same {
            let mut next: Vec<serde_json::Value> = taints
                .iter()
                .filter(|t| !ours(t) || wanted.contains(&(t.key.clone(), t.effect.clone())))
                .map(|t| serde_json::to_value(t).unwrap_or_default())
                .collect();
            for (k, e) in &wanted {
                if !have.contains(&(k.clone(), e.clone())) {
                    next.push(taint(k, e));
                }
            }
            // A precondition on the version read: a taint added meanwhile is not lost.
            let patch = json!({"metadata": {"resourceVersion": node.metadata.resource_version},
                "spec": {"taints": next}});
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(n) => {
                    st.nodes.insert(name.clone(), Arc::new(n));
                }
                Err(e) => eprintln!("berth controllers: tainting node {name}: {e}"),
            }
        }
        let node = st.nodes[&name].clone();
        let no_execute: Vec<Taint> = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|t| t.effect == "NoExecute")
            .collect();
        let now = Instant::now();
        st.tainted_at
            .retain(|(n, k), _| n != &name || no_execute.iter().any(|t| &t.key == k));
        for t in &no_execute {
            st.tainted_at
                .entry((name.clone(), t.key.clone()))
                .or_insert(now);
        }
        if no_execute.is_empty() {
            continue;
        }
        let since = no_execute
            .iter()
            .filter_map(|t| st.tainted_at.get(&(name.clone(), t.key.clone())))
            .min()
            .copied()
            .unwrap_or(now);
        let victims: Vec<Arc<Pod>> = st
            .on_node(&name)
            .filter(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && !st
                        .evicted
                        .contains(p.metadata.uid.as_deref().unwrap_or_default())
                    && eviction_delay(p, &no_execute).is_some_and(|d| since.elapsed() >= d)
            })
            .cloned()
            .collect();
        for p in victims {
            evict(client, st, &p).await;
        }
    }
}

async fn mark_pods_not_ready(client: &kube::Client, st: &State, node: &str) {
    let now = crate::now();
    for p in st.on_node(node) {
        let Some(conds) = p.status.as_ref().and_then(|s| s.conditions.as_ref()) else {
            continue;
        };
        if !conds
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
        {
            continue;
        }
        let next: Vec<serde_json::Value> = conds
            .iter()
            .map(|c| {
                let mut v = serde_json::to_value(c).unwrap_or_default();
                if c.type_ == "Ready" || c.type_ == "ContainersReady" {
                    v["status"] = json!("False");
                    v["lastTransitionTime"] = json!(now);
                    v["reason"] = json!("NodeNotReady");
                    v.as_object_mut().map(|o| o.remove("message"));
                }
                v
            })
            .collect();
        let api: kube::Api<Pod> = kube::Api::namespaced(
            client.clone(),
            p.metadata.namespace.as_deref().unwrap_or("default"),
        );
        let name = p.metadata.name.clone().unwrap_or_default();
        if let Err(e) = api
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": {"conditions": next}})),
            )
            .await
        {
            eprintln!("berth controllers: marking pod {name} not ready: {e}");
        }
    }
}

async fn evict(client: &kube::Client, st: &mut State, p: &Pod) {
    let ns = p.metadata.namespace.clone().unwrap_or_default();
    let name = p.metadata.name.clone().unwrap_or_default();
    let uid = p.metadata.uid.clone().unwrap_or_default();
    crate::event(
        client,
        NAME,
        json!({"kind": "Pod", "namespace": ns, "name": name, "uid": uid, "apiVersion": "v1"}),
        "Normal",
        "TaintManagerEviction",
        &format!("Marking for deletion Pod {ns}/{name}"),
    )
    .await;
    let api: kube::Api<Pod> = kube::Api::namespaced(client.clone(), &ns);
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(uid.clone()),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(&name, &dp).await {
        Ok(_) => {
            st.evicted.insert(uid);
        }
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {
            st.evicted.insert(uid);
        }
        Err(e) => eprintln!("berth controllers: evicting pod {ns}/{name}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(tols: serde_json::Value) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": "p"}, "spec": {"containers": [], "tolerations": tols}}),
        )
        .unwrap()
    }

    fn unreachable() -> Vec<Taint> {
        vec![Taint {
            key: UNREACHABLE.into(),
            effect: "NoExecute".into(),
            ..Default::default()
        }]
    }

    #[test]
    fn the_pods_of_a_node_are_found_without_scanning_the_others() {
        let on = |node: &str| -> Arc<Pod> {
            Arc::new(
                serde_json::from_value(json!({"metadata": {"name": "p"},
                    "spec": {"containers": [], "nodeName": node}}))
                .unwrap(),
            )
        };
        let mut st = State::default();
        st.put_pod("ns/a".into(), on("n1"));
        st.put_pod("ns/b".into(), on("n2"));
        st.put_pod("ns/a".into(), on("n1"));
        assert_eq!(st.on_node("n1").count(), 1);
        assert_eq!(st.on_node("n2").count(), 1);
        st.drop_pod("ns/a");
        assert_eq!(st.on_node("n1").count(), 0);
        assert!(!st.by_node.contains_key("n1"));
    }

    #[test]
    fn eviction_follows_toleration_seconds() {
        assert_eq!(
            eviction_delay(&pod(json!([])), &unreachable()),
            Some(Duration::ZERO)
        );
        let p = pod(
            json!([{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 7}]),
        );
        assert_eq!(
            eviction_delay(&p, &unreachable()),
            Some(Duration::from_secs(7))
        );
        let forever = pod(json!([{"operator": "Exists"}]));
        assert_eq!(eviction_delay(&forever, &unreachable()), None);
        let other = pod(json!([{"key": NOT_READY, "operator": "Exists", "effect": "NoExecute"}]));
        assert_eq!(eviction_delay(&other, &unreachable()), Some(Duration::ZERO));
    }
}
