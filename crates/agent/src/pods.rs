//! The pods bound to this node: a watch on `spec.nodeName`, and one worker per pod UID that
//! only ever sees the latest desired state (a `watch` channel) and reconciles the engine
//! toward it — sandbox, volumes, init containers in order, containers with restarts and
//! the kubelet's back-off, probes — then reports the status the kubelet reports. The
//! engine is the source of truth for what runs: container names carry the attempt
//! (restart count), labels the pod, so an agent killed at any time rebuilds its view from
//! the engine and the API and starts nothing twice.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, PersistentVolume, PersistentVolumeClaim, Pod, Secret,
};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::watcher;
use serde_json::{json, Value};

use crate::node::k8s_now;
use crate::podspec::{self, ConfigError, LABEL_ATTEMPT, LABEL_CONTAINER_NAME, LABEL_POD_UID};
use crate::probes::{self, ProbeState};
use crate::volumes;
use crate::Config;

/// The engine network pods attach to (a bridge on the node's pod CIDR).
pub const POD_NETWORK: &str = "k8s-pods";

/// The cluster CIDR (pods of every node).
pub const CLUSTER_CIDR: &str = "10.42.0.0/16";

fn pod_network_labels() -> BTreeMap<String, String> {
    BTreeMap::from([(
        engine::network::CLUSTER_CIDR_LABEL.to_string(),
        CLUSTER_CIDR.to_string(),
    )])
}

const BACKOFF_START: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

pub struct Manager {
    pub cfg: Config,
    pub node_ip: IpAddr,
    pub client: kube::Client,
    pub engine: Arc<engine::Engine>,
    workers: Mutex<HashMap<String, Handle>>,
    /// Each worker's wake-up, by pod UID: the engine's container events ring it.
    wakers: Mutex<HashMap<String, Arc<tokio::sync::Notify>>>,
    /// The node's, pods' and containers' resource usage.
    pub stats: crate::stats::Sampler,
    /// The Services and EndpointSlices the node's proxy follows.
    pub catalog: crate::proxy::Shared,
    /// ServiceAccount tokens of the pods' projected volumes, by pod UID and token key.
    tokens: Mutex<HashMap<(String, String), PodToken>>,
    /// The ImageSignaturePolicies, followed by a watch (not fetched per container start).
    policies: kube::runtime::reflector::Store<kube::api::DynamicObject>,
    /// Signature verdicts by (digest, policy identity): verified once per node.
    verdicts: Arc<Mutex<HashMap<(String, String), Verdict>>>,
}

/// Whether an image digest passed one policy (or why not).
type Verdict = Result<(), String>;
/// A digest and each covering policy's verdict on it.
type Checked = (image::digest::Digest, Vec<(signing::Policy, Verdict)>);

/// A token the server issued for a pod, and when to ask for a new one: as the kubelet,
/// after 80% of its lifetime or 24 hours, whichever comes first.
struct PodToken {
    token: String,
    refresh_at: Instant,
}

struct Handle {
    tx: tokio::sync::watch::Sender<Option<Arc<Pod>>>,
}

/// How long after this node's proxy stopped sending new connections to a terminating
/// pod its containers are signalled: the other nodes' proxies, following the same
/// EndpointSlices, apply the change within milliseconds; this covers their lag.
const DRAIN_MARGIN: Duration = Duration::from_secs(1);

/// Waits until no EndpointSlice lists `ip` as ready (the endpoint controllers mark a
/// deleted pod terminating), then [`DRAIN_MARGIN`], within `deadline`. A pod that backs
/// no Service does not wait at all.
async fn drain(catalog: &crate::proxy::Shared, ip: &str, deadline: Instant) {
    let listed = |want_ready: bool| {
        let cat = catalog.read().unwrap_or_else(|p| p.into_inner());
        cat.slices.values().any(|s| {
            s.endpoints.iter().any(|e| {
                e.addresses.first().map(String::as_str) == Some(ip)
                    && (!want_ready || e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
            })
        })
    };
    if !listed(false) {
        return;
    }
    while listed(true) {
        if Instant::now() + Duration::from_millis(50) >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = deadline.saturating_duration_since(Instant::now());
    tokio::time::sleep(DRAIN_MARGIN.min(left)).await;
}

/// Follows the cluster's ImageSignaturePolicies into a store the pod workers read.
fn follow_policies(
    client: &kube::Client,
) -> kube::runtime::reflector::Store<kube::api::DynamicObject> {
    use kube::runtime::WatchStreamExt;
    let ar = kube::api::ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk("security.berth.io", "v1", "ImageSignaturePolicy"),
        "imagesignaturepolicies",
    );
    let writer = kube::runtime::reflector::store::Writer::new(ar.clone());
    let reader = writer.as_reader();
    let api: kube::Api<kube::api::DynamicObject> = kube::Api::all_with(client.clone(), &ar);
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer);
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while stream.next().await.is_some() {}
    });
    reader
}

/// Runs a blocking engine call off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("a blocking engine call panicked")
}

impl Manager {
    pub fn new(
        cfg: Config,
        node_ip: IpAddr,
        client: kube::Client,
        engine: Arc<engine::Engine>,
        pod_cidr: &str,
        catalog: crate::proxy::Shared,
    ) -> Result<Arc<Manager>> {
        // The pod network: made on the pod CIDR, or made again if the CIDR changed.
        match engine.networks.get(POD_NETWORK) {
            Ok(n) if n.subnet == pod_cidr && n.labels == pod_network_labels() => {}
            Ok(_) => {
                for s in engine.sandboxes.list() {
                    let _ = engine.sandbox_remove(&s.name, true);
                }
                engine
                    .network_remove(POD_NETWORK)
                    .map_err(|e| anyhow::anyhow!("replacing the pod network: {e}"))?;
                engine
                    .network_create(
                        POD_NETWORK,
                        Some(pod_cidr),
                        None,
                        false,
                        pod_network_labels(),
                    )
                    .map_err(|e| anyhow::anyhow!("the pod network on {pod_cidr}: {e}"))?;
            }
            Err(_) => {
                engine
                    .network_create(
                        POD_NETWORK,
                        Some(pod_cidr),
                        None,
                        false,
                        pod_network_labels(),
                    )
                    .map_err(|e| anyhow::anyhow!("the pod network on {pod_cidr}: {e}"))?;
            }
        }
        let stats = crate::stats::Sampler::new(cfg.housekeeping_interval);
        let policies = follow_policies(&client);
        Ok(Arc::new(Manager {
            cfg,
            node_ip,
            client,
            engine,
            workers: Mutex::new(HashMap::new()),
            wakers: Mutex::new(HashMap::new()),
            stats,
            catalog,
            tokens: Mutex::new(HashMap::new()),
            verdicts: Default::default(),
            policies,
        }))
    }

    /// Wakes a pod's worker on every event of its containers (start, exit, OOM): one thread
    /// for the node, not one per container.
    fn follow_engine(self: &Arc<Self>) {
        let (_, rx) = self.engine.events.subscribe(None);
        let m = Arc::downgrade(self);
        std::thread::spawn(move || {
            for e in rx {
                if e.typ != "container" {
                    continue;
                }
                let Some(m) = m.upgrade() else { break };
                if let Some(uid) = e.actor.attributes.get(LABEL_POD_UID) {
                    if let Some(w) = m.wakers.lock().unwrap().get(uid) {
                        w.notify_one();
                    }
                }
            }
        });
    }

    /// Watches the node's pods and dispatches them to their workers.
    pub async fn run(self: Arc<Self>) -> Result<()> {
        self.follow_engine();
        let api: kube::Api<Pod> = kube::Api::all(self.client.clone());
        let wc =
            watcher::Config::default().fields(&format!("spec.nodeName={}", self.cfg.node_name));
        let mut stream = watcher::watcher(api, wc).boxed();
        let mut seen: HashSet<String> = HashSet::new();
        let mut first = true;
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Init) => seen.clear(),
                Ok(watcher::Event::InitApply(p)) => {
                    if let Some(u) = p.metadata.uid.clone() {
                        seen.insert(u);
                    }
                    self.dispatch(p);
                }
                Ok(watcher::Event::InitDone) => {
                    // Pods that went while we were not watching.
                    let gone: Vec<String> = self
                        .workers
                        .lock()
                        .unwrap()
                        .keys()
                        .filter(|u| !seen.contains(*u))
                        .cloned()
                        .collect();
                    for u in gone {
                        self.gone(&u);
                    }
                    if first {
                        first = false;
                        self.clean_orphans(&seen).await;
                    }
                }
                Ok(watcher::Event::Apply(p)) => self.dispatch(p),
                Ok(watcher::Event::Delete(p)) => {
                    if let Some(u) = p.metadata.uid.as_deref() {
                        self.gone(u);
                    }
                }
                Err(e) => {
                    eprintln!("berth agent: watching pods: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        Ok(())
    }

    fn dispatch(self: &Arc<Self>, p: Pod) {
        let Some(uid) = p.metadata.uid.clone() else {
            return;
        };
        let mut w = self.workers.lock().unwrap();
        if let Some(h) = w.get(&uid) {
            let _ = h.tx.send(Some(Arc::new(p)));
            return;
        }
        let (tx, rx) = tokio::sync::watch::channel(Some(Arc::new(p)));
        w.insert(uid.clone(), Handle { tx });
        let m = self.clone();
        let wake = Arc::new(tokio::sync::Notify::new());
        self.wakers
            .lock()
            .unwrap()
            .insert(uid.clone(), wake.clone());
        tokio::spawn(async move {
            Worker::new(m.clone(), uid.clone(), rx, wake).run().await;
            m.workers.lock().unwrap().remove(&uid);
            m.wakers.lock().unwrap().remove(&uid);
        });
    }

    fn gone(&self, uid: &str) {
        if let Some(h) = self.workers.lock().unwrap().get(uid) {
            let _ = h.tx.send(None);
        }
    }

    /// Containers and sandboxes of pods the API no longer has (deleted while the agent
    /// was down) are removed with their volumes.
    async fn clean_orphans(&self, live: &HashSet<String>) {
        let engine = self.engine.clone();
        let data = self.cfg.data_dir.clone();
        let root = self.cfg.cgroup_root.clone();
        let live = live.clone();
        blocking(move || {
            let mut uids = HashSet::new();
            for c in engine.list(true, false) {
                if let Some(u) = c.labels.get(LABEL_POD_UID) {
                    if !live.contains(u) {
                        uids.insert(u.clone());
                    }
                }
            }
            for s in engine.sandboxes.list() {
                if let Some(u) = s.name.strip_prefix("k8s_POD_") {
                    if !live.contains(u) {
                        uids.insert(u.to_string());
                    }
                }
            }
            if let Ok(rd) = std::fs::read_dir(data.join("pods")) {
                for e in rd.flatten() {
                    let u = e.file_name().to_string_lossy().into_owned();
                    if !live.contains(&u) {
                        uids.insert(u);
                    }
                }
            }
            for u in uids {
                eprintln!("berth agent: removing pod {u}, which the API no longer has");
                teardown(&engine, &data, &root, &u, Some(0));
            }
        })
        .await;
    }

    /// The latest pods the workers hold (for admission).
    fn active_pods(&self, except: &str) -> Vec<Arc<Pod>> {
        self.workers
            .lock()
            .unwrap()
            .iter()
            .filter(|(u, _)| u.as_str() != except)
            .filter_map(|(_, h)| h.tx.borrow().clone())
            .filter(|p| {
                !matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded") | Some("Failed")
                )
            })
            .collect()
    }

    /// The pods the workers hold now.
    pub fn pods(&self) -> Vec<Arc<Pod>> {
        self.workers
            .lock()
            .unwrap()
            .values()
            .filter_map(|h| h.tx.borrow().clone())
            .collect()
    }

    /// The network namespace of a pod on this node: `Some(None)` for a host-network pod,
    /// `None` when the node has no such pod.
    pub fn netns_of(&self, ns: &str, name: &str) -> Option<Option<std::path::PathBuf>> {
        let pod = self
            .workers
            .lock()
            .unwrap()
            .values()
            .filter_map(|h| h.tx.borrow().clone())
            .find(|p| {
                p.metadata.namespace.as_deref() == Some(ns)
                    && p.metadata.name.as_deref() == Some(name)
            })?;
        if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
            return Some(None);
        }
        let uid = pod.metadata.uid.clone()?;
        let sb = self
            .engine
            .sandboxes
            .get(&podspec::sandbox_name(&uid))
            .ok()?;
        Some(Some(sb.path.join("net")))
    }

    /// The engine container of a pod's container: the latest attempt, or the one before
    /// (`previous`).
    pub fn container_id(
        &self,
        ns: &str,
        pod: &str,
        container: &str,
        previous: bool,
    ) -> Option<String> {
        let mut found: Vec<(u32, String)> = self
            .engine
            .list(true, false)
            .into_iter()
            .filter(|c| {
                c.labels
                    .get(podspec::LABEL_POD_NAMESPACE)
                    .map(String::as_str)
                    == Some(ns)
                    && c.labels.get(podspec::LABEL_POD_NAME).map(String::as_str) == Some(pod)
                    && c.labels.get(LABEL_CONTAINER_NAME).map(String::as_str) == Some(container)
            })
            .map(|c| {
                (
                    c.labels
                        .get(LABEL_ATTEMPT)
                        .and_then(|a| a.parse().ok())
                        .unwrap_or(0),
                    c.id,
                )
            })
            .collect();
        found.sort();
        let i = if previous {
            found.len().checked_sub(2)?
        } else {
            found.len().checked_sub(1)?
        };
        Some(found[i].1.clone())
    }
}

/// Stops and removes everything of a pod on the node.
fn teardown(
    engine: &engine::Engine,
    data_dir: &std::path::Path,
    cgroup_root: &str,
    uid: &str,
    grace: Option<i64>,
) {
    let ids: Vec<String> = engine
        .list(true, false)
        .into_iter()
        .filter(|c| c.labels.get(LABEL_POD_UID).map(String::as_str) == Some(uid))
        .map(|c| c.id)
        .collect();
    for id in &ids {
        let _ = engine.stop(id, grace);
    }
    for id in &ids {
        let _ = engine.remove(id, true, true);
    }
    let _ = engine.sandbox_remove(&podspec::sandbox_name(uid), true);
    volumes::teardown(data_dir, uid);
    crate::podcgroup::remove(cgroup_root, uid);
}

/// What the worker keeps per container between syncs.
#[derive(Default)]
struct CState {
    /// Why it is not running (reason, message).
    waiting: Option<(String, String)>,
    /// No restart before this.
    backoff_until: Option<Instant>,
    /// The attempt the probes are for.
    probed_id: String,
    readiness: ProbeState,
    liveness: ProbeState,
    startup: ProbeState,
    /// postStart ran for this container ID.
    post_started: String,
}

struct Worker {
    m: Arc<Manager>,
    uid: String,
    rx: tokio::sync::watch::Receiver<Option<Arc<Pod>>>,
    wake: Arc<tokio::sync::Notify>,
    cs: BTreeMap<String, CState>,
    last_status: Value,
    pod_ip: String,
    start_time: Option<String>,
    rejected: Option<(String, String)>,
    sandbox_error: Option<String>,
    image_errors: BTreeMap<String, (String, String, u32, Instant)>,
}

/// What a probe step asks of the worker next.
enum Step {
    /// Run again after this.
    Next(Duration),
    /// The probe failed `failureThreshold` times in a row.
    Threshold,
}

/// A container as the engine has it.
struct Found {
    id: String,
    attempt: u32,
    rec: engine::engine::Record,
}

impl Worker {
    fn new(
        m: Arc<Manager>,
        uid: String,
        rx: tokio::sync::watch::Receiver<Option<Arc<Pod>>>,
        wake: Arc<tokio::sync::Notify>,
    ) -> Worker {
        Worker {
            m,
            uid,
            rx,
            wake,
            cs: BTreeMap::new(),
            last_status: Value::Null,
            pod_ip: String::new(),
            start_time: None,
            rejected: None,
            sandbox_error: None,
            image_errors: BTreeMap::new(),
        }
    }

    async fn run(mut self) {
        let mut last_pod: Option<Arc<Pod>> = None;
        loop {
            let pod = self.rx.borrow_and_update().clone();
            let Some(pod) = pod else {
                // Gone from the API: stop what runs with the last grace period known.
                let grace = last_pod
                    .as_ref()
                    .and_then(|p| p.spec.as_ref())
                    .and_then(|s| s.termination_grace_period_seconds);
                if let Some(p) = &last_pod {
                    self.terminate(p, grace.unwrap_or(30)).await;
                }
                self.teardown().await;
                return;
            };
            last_pod = Some(pod.clone());
            if pod.metadata.deletion_timestamp.is_some() {
                let grace = pod
                    .metadata
                    .deletion_grace_period_seconds
                    .or_else(|| {
                        pod.spec
                            .as_ref()
                            .and_then(|s| s.termination_grace_period_seconds)
                    })
                    .unwrap_or(30);
                self.terminate(&pod, grace).await;
                self.teardown().await;
                let _ = self.report(&pod, true).await;
                let api: kube::Api<Pod> = kube::Api::namespaced(
                    self.m.client.clone(),
                    pod.metadata.namespace.as_deref().unwrap_or("default"),
                );
                let dp = DeleteParams {
                    grace_period_seconds: Some(0),
                    preconditions: Some(Preconditions {
                        uid: Some(self.uid.clone()),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                let _ = api
                    .delete(pod.metadata.name.as_deref().unwrap_or_default(), &dp)
                    .await;
                // Wait for the deletion to be seen (or the pod to change again).
                if self.rx.changed().await.is_err() {
                    return;
                }
                continue;
            }
            let next = self.sync(&pod).await;
            if let Err(e) = self.report(&pod, false).await {
                eprintln!(
                    "berth agent: status of pod {}: {e}",
                    pod.metadata.name.as_deref().unwrap_or_default()
                );
            }
            let wait = next
                .unwrap_or(Duration::from_secs(10))
                .min(Duration::from_secs(10));
            tokio::select! {
                r = self.rx.changed() => { if r.is_err() { return; } }
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Removes everything of the pod from the node.
    async fn teardown(&self) {
        self.m
            .tokens
            .lock()
            .unwrap()
            .retain(|(uid, _), _| *uid != self.uid);
        let (e, d, r, u) = (
            self.m.engine.clone(),
            self.m.cfg.data_dir.clone(),
            self.m.cfg.cgroup_root.clone(),
            self.uid.clone(),
        );
        blocking(move || teardown(&e, &d, &r, &u, Some(0))).await;
    }

    fn found(&self, container: &str) -> Vec<Found> {
        let mut v: Vec<Found> = self
            .m
            .engine
            .list(true, false)
            .into_iter()
            .filter(|c| {
                c.labels.get(LABEL_POD_UID).map(String::as_str) == Some(self.uid.as_str())
                    && c.labels.get(LABEL_CONTAINER_NAME).map(String::as_str) == Some(container)
            })
            .filter_map(|c| {
                let rec = self.m.engine.record(&c.id).ok()?;
                Some(Found {
                    attempt: c
                        .labels
                        .get(LABEL_ATTEMPT)
                        .and_then(|a| a.parse().ok())
                        .unwrap_or(0),
                    id: c.id,
                    rec,
                })
            })
            .collect();
        v.sort_by_key(|f| f.attempt);
        v
    }

    async fn event(&self, pod: &Pod, typ: &str, reason: &str, message: &str, field: Option<&str>) {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let api: kube::Api<k8s_openapi::api::core::v1::Event> =
            kube::Api::namespaced(self.m.client.clone(), &ns);
        let now = k8s_now();
        let ev = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": format!("{name}.{:x}", timefmt::now_nanos()), "namespace": ns},
            "involvedObject": {"kind": "Pod", "namespace": ns, "name": name,
                "uid": self.uid, "apiVersion": "v1",
                "fieldPath": field.map(|c| format!("spec.containers{{{c}}}"))},
            "reason": reason, "message": message, "type": typ,
            "source": {"component": "kubelet", "host": self.m.cfg.node_name},
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
            "reportingComponent": "kubelet", "reportingInstance": self.m.cfg.node_name,
        });
        if let Ok(e) = serde_json::from_value(ev) {
            let _ = api.create(&PostParams::default(), &e).await;
        }
    }

    /// The kubelet's admission: the pod's requests must fit in what the node has left.
    fn admit(&self, pod: &Pod) -> Option<(String, String)> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64 * 1000;
        let alloc_cpu = cpus.saturating_sub(self.m.cfg.reserved_cpu_milli);
        let mem = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            })
            .unwrap_or(0)
            * 1024;
        let alloc_mem = mem
            .saturating_sub(self.m.cfg.reserved_memory)
            .saturating_sub(100 << 20);
        let req = |p: &Pod| -> (u64, u64) {
            let Some(s) = p.spec.as_ref() else {
                return (0, 0);
            };
            let sum = |res: &str, f: fn(&str) -> Option<u64>| -> u64 {
                let main: u64 = s
                    .containers
                    .iter()
                    .filter_map(|c| podspec::request(c, res))
                    .filter_map(|q| f(&q))
                    .sum();
                let init = s
                    .init_containers
                    .iter()
                    .flatten()
                    .filter_map(|c| podspec::request(c, res))
                    .filter_map(|q| f(&q))
                    .max()
                    .unwrap_or(0);
                main.max(init)
            };
            (
                sum("cpu", podspec::cpu_milli),
                sum("memory", podspec::bytes),
            )
        };
        let (want_cpu, want_mem) = req(pod);
        let (mut used_cpu, mut used_mem) = (0, 0);
        let others = self.m.active_pods(&self.uid);
        for p in &others {
            let (c, m) = req(p);
            used_cpu += c;
            used_mem += m;
        }
        if others.len() as u32 >= self.m.cfg.max_pods {
            return Some((
                "OutOfpods".into(),
                format!(
                    "Node didn't have enough resource: pods, requested: 1, used: {}, capacity: {}",
                    others.len(),
                    self.m.cfg.max_pods
                ),
            ));
        }
        if want_cpu > 0 && used_cpu + want_cpu > alloc_cpu {
            return Some(("OutOfcpu".into(), format!("Pod was rejected: Node didn't have enough resource: cpu, requested: {want_cpu}, used: {used_cpu}, capacity: {alloc_cpu}")));
        }
        if want_mem > 0 && used_mem + want_mem > alloc_mem {
            return Some(("OutOfmemory".into(), format!("Pod was rejected: Node didn't have enough resource: memory, requested: {want_mem}, used: {used_mem}, capacity: {alloc_mem}")));
        }
        None
    }

    /// One reconcile; returns when it wants to run again at the latest.
    async fn sync(&mut self, pod: &Arc<Pod>) -> Option<Duration> {
        if self.rejected.is_some() {
            return None;
        }
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        // Admission, once, for a pod the node has not started yet.
        if self.last_status.is_null() && matches!(phase.as_str(), "" | "Pending") {
            if let Some(msg) = podspec::forbidden_sysctl(pod) {
                let r = ("SysctlForbidden".to_string(), msg);
                self.event(pod, "Warning", &r.0, &r.1, None).await;
                self.rejected = Some(r);
                return None;
            }
            if let Some(r) = self.admit(pod) {
                self.event(pod, "Warning", &r.0, &r.1, None).await;
                self.rejected = Some(r);
                return None;
            }
        }
        if self.start_time.is_none() {
            // The time a previous agent reported is kept across restarts.
            let reported = pod
                .status
                .as_ref()
                .and_then(|s| s.start_time.as_ref())
                .and_then(|t| serde_json::to_value(t).ok())
                .and_then(|v| v.as_str().map(str::to_string));
            self.start_time = Some(reported.unwrap_or_else(k8s_now));
        }
        let spec = pod.spec.clone().unwrap_or_default();
        let host_network = spec.host_network == Some(true);
        // The sandbox.
        let sb = podspec::sandbox_name(&self.uid);
        let engine = self.m.engine.clone();
        let ports: Vec<engine::network::PortMapping> = spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .filter(|p| p.host_port.unwrap_or(0) > 0)
            .map(|p| engine::network::PortMapping {
                host_ip: p.host_ip.clone().unwrap_or_default(),
                host_port: p.host_port.unwrap_or(0) as u16,
                container_port: p.container_port as u16,
                protocol: p
                    .protocol
                    .clone()
                    .unwrap_or_else(|| "TCP".into())
                    .to_ascii_lowercase(),
            })
            .collect();
        let hostname = spec
            .hostname
            .clone()
            .unwrap_or_else(|| pod.metadata.name.clone().unwrap_or_default());
        let made = {
            let sb = sb.clone();
            let hostname = if host_network {
                String::new()
            } else {
                hostname
            };
            blocking(move || match engine.sandboxes.get(&sb) {
                Ok(s) => Ok(s),
                Err(_) => engine.sandbox_create(
                    &sb,
                    &hostname,
                    &if host_network {
                        vec![]
                    } else {
                        vec![POD_NETWORK.to_string()]
                    },
                    if host_network { vec![] } else { ports },
                ),
            })
            .await
        };
        match made {
            Ok(s) => {
                self.sandbox_error = None;
                self.pod_ip = if host_network {
                    self.m.node_ip.to_string()
                } else {
                    s.net
                        .as_ref()
                        .and_then(|n| n.pointer("/endpoints/0/ip"))
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string()
                };
            }
            Err(e) => {
                let msg = format!("Failed to create pod sandbox: {e}");
                if self.sandbox_error.as_deref() != Some(msg.as_str()) {
                    self.event(pod, "Warning", "FailedCreatePodSandBox", &msg, None)
                        .await;
                }
                self.sandbox_error = Some(msg);
                return Some(Duration::from_secs(5));
            }
        }
        // The pod's own cgroup, parent of its containers'.
        let made = {
            let (root, p) = (self.m.cfg.cgroup_root.clone(), pod.clone());
            blocking(move || crate::podcgroup::ensure(&root, &p)).await
        };
        if let Err(e) = made {
            if self.sandbox_error.as_deref() != Some(e.as_str()) {
                self.event(pod, "Warning", "FailedCreatePodCgroup", &e, None)
                    .await;
            }
            self.sandbox_error = Some(e);
            return Some(Duration::from_secs(5));
        }
        // The objects the pod names, then its volumes.
        let objs = self.fetch(pod).await;
        let host_ip = self.m.node_ip.to_string();
        let vols = {
            let (d, p, o, ip, hip) = (
                self.m.cfg.data_dir.clone(),
                pod.clone(),
                objs.clone(),
                self.pod_ip.clone(),
                host_ip.clone(),
            );
            blocking(move || volumes::setup(&d, &p, &o, &ip, &hip)).await
        };
        let vols = match vols {
            Ok(v) => v,
            Err(e) => {
                for c in spec
                    .init_containers
                    .iter()
                    .flatten()
                    .chain(spec.containers.iter())
                {
                    self.cs.entry(c.name.clone()).or_default().waiting =
                        Some(("ContainerCreating".into(), String::new()));
                }
                self.event(pod, "Warning", "FailedMount", &e.0, None).await;
                return Some(Duration::from_secs(5));
            }
        };
        let restart_policy = spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into());
        let mut next: Option<Duration> = None;
        let mut sooner = |d: Duration| {
            next = Some(next.map_or(d, |n: Duration| n.min(d)));
        };
        // Init containers, in order.
        for c in spec.init_containers.iter().flatten() {
            let found = self.found(&c.name);
            match found.last() {
                Some(f) if f.rec.state.status == "exited" && f.rec.state.exit_code == 0 => continue,
                Some(f)
                    if matches!(
                        f.rec.state.status.as_str(),
                        "running" | "created" | "restarting"
                    ) =>
                {
                    return next;
                }
                Some(f) => {
                    if restart_policy == "Never" {
                        return None;
                    }
                    let attempt = f.attempt + 1;
                    if let Some(d) = self.backoff(pod, c, attempt) {
                        return Some(d);
                    }
                    self.start(pod, c, attempt, &objs, &vols, host_network)
                        .await;
                    return Some(Duration::from_secs(1));
                }
                None => {
                    self.start(pod, c, 0, &objs, &vols, host_network).await;
                    return Some(Duration::from_secs(1));
                }
            }
        }
        // Containers.
        for c in &spec.containers {
            let found = self.found(&c.name);
            match found.last() {
                Some(f) if matches!(f.rec.state.status.as_str(), "running" | "restarting") => {
                    if let Some(d) = self.probe(pod, c, f).await {
                        sooner(d);
                    }
                }
                Some(f) if f.rec.state.status == "created" => {
                    let (e, id) = (self.m.engine.clone(), f.id.clone());
                    let _ = blocking(move || e.start(&id)).await;
                    sooner(Duration::from_secs(1));
                }
                Some(f) => {
                    let failed = f.rec.state.exit_code != 0;
                    let again = match restart_policy.as_str() {
                        "Always" => true,
                        "OnFailure" => failed,
                        _ => false,
                    };
                    if !again {
                        continue;
                    }
                    let attempt = f.attempt + 1;
                    if let Some(d) = self.backoff(pod, c, attempt) {
                        sooner(d);
                        continue;
                    }
                    self.start(pod, c, attempt, &objs, &vols, host_network)
                        .await;
                    sooner(Duration::from_secs(1));
                }
                None => {
                    self.start(pod, c, 0, &objs, &vols, host_network).await;
                    sooner(Duration::from_secs(1));
                }
            }
        }
        next
    }

    /// The kubelet's crash back-off before `attempt`: none for the first restart, then
    /// 10 s doubling to 5 min, counted from the last exit.
    fn backoff(&mut self, pod: &Pod, c: &Container, attempt: u32) -> Option<Duration> {
        if attempt <= 1 {
            return None;
        }
        let found = self.found(&c.name);
        let last = found.last()?;
        let finished = timefmt::parse_rfc3339(&last.rec.state.finished_at)?;
        let started = timefmt::parse_rfc3339(&last.rec.state.started_at).unwrap_or(finished);
        // A container that ran ten minutes resets the back-off.
        if finished - started > 600_000_000_000 {
            return None;
        }
        let delay = BACKOFF_START
            .saturating_mul(1 << (attempt - 2).min(10))
            .min(BACKOFF_MAX);
        let elapsed = Duration::from_nanos((timefmt::now_nanos() - finished).max(0) as u64);
        if elapsed >= delay {
            return None;
        }
        let st = self.cs.entry(c.name.clone()).or_default();
        st.waiting = Some((
            "CrashLoopBackOff".into(),
            format!(
                "back-off {}s restarting failed container={} pod={}_{}({})",
                delay.as_secs(),
                c.name,
                pod.metadata.name.as_deref().unwrap_or_default(),
                pod.metadata.namespace.as_deref().unwrap_or_default(),
                self.uid
            ),
        ));
        Some(delay - elapsed)
    }

    async fn fetch(&self, pod: &Pod) -> volumes::Objects {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let (cms, secrets, claims) = volumes::referenced(pod);
        let mut o = volumes::Objects::default();
        let cm_api: kube::Api<ConfigMap> = kube::Api::namespaced(self.m.client.clone(), &ns);
        let s_api: kube::Api<Secret> = kube::Api::namespaced(self.m.client.clone(), &ns);
        let pvc_api: kube::Api<PersistentVolumeClaim> =
            kube::Api::namespaced(self.m.client.clone(), &ns);
        let pv_api: kube::Api<PersistentVolume> = kube::Api::all(self.m.client.clone());
        for n in cms {
            o.config_maps
                .insert(n.clone(), cm_api.get_opt(&n).await.ok().flatten());
        }
        for n in secrets {
            o.secrets
                .insert(n.clone(), s_api.get_opt(&n).await.ok().flatten());
        }
        for (audience, expiration) in volumes::token_sources(pod) {
            let key = volumes::token_key(audience.as_deref(), expiration);
            let t = self.token(pod, &key, audience, expiration).await;
            o.tokens.insert(key, t);
        }
        for n in claims {
            let pvc = pvc_api.get_opt(&n).await.ok().flatten();
            let pv = match pvc
                .as_ref()
                .and_then(|c| c.spec.as_ref())
                .and_then(|s| s.volume_name.clone())
            {
                Some(v) if !v.is_empty() => pv_api.get_opt(&v).await.ok().flatten(),
                _ => None,
            };
            o.claims.insert(n, pvc.map(|c| (c, pv)));
        }
        o
    }

    /// The pod's token for one projected source: the one cached while it is fresh, else
    /// a new one from the TokenRequest API, bound to the pod.
    async fn token(
        &self,
        pod: &Pod,
        key: &str,
        audience: Option<String>,
        expiration: Option<i64>,
    ) -> Result<String, String> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let ck = (uid.clone(), key.to_string());
        if let Some(t) = self.m.tokens.lock().unwrap().get(&ck) {
            if Instant::now() < t.refresh_at {
                return Ok(t.token.clone());
            }
        }
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let sa = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into());
        let body = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": audience.into_iter().filter(|a| !a.is_empty()).collect::<Vec<_>>(),
                "expirationSeconds": expiration.unwrap_or(3600),
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod",
                    "name": pod.metadata.name.clone().unwrap_or_default(), "uid": uid},
            },
        });
        let api: kube::Api<k8s_openapi::api::core::v1::ServiceAccount> =
            kube::Api::namespaced(self.m.client.clone(), &ns);
        let r: k8s_openapi::api::authentication::v1::TokenRequest = api
            .create_subresource("token", &sa, &kube::api::PostParams::default(), &body)
            .await
            .map_err(|e| match e {
                kube::Error::Api(s) => s.message,
                e => e.to_string(),
            })?;
        let status = r.status.ok_or("the server's TokenRequest has no status")?;
        let ttl = Duration::from_secs(expiration.unwrap_or(3600).max(0) as u64);
        let refresh = (ttl * 4 / 5).min(Duration::from_secs(24 * 3600));
        self.m.tokens.lock().unwrap().insert(
            ck,
            PodToken {
                token: status.token.clone(),
                refresh_at: Instant::now() + refresh,
            },
        );
        Ok(status.token)
    }

    /// The image a container runs when an ImageSignaturePolicy covers it: the digest
    /// admission verified (the pod's `security.berth.io/verified-images`), or for pods
    /// that never went through admission (static pods) the tag resolved now — verified
    /// again here with the same code, so an unsigned image never starts. `None` when no
    /// policy covers the image.
    async fn signed_image(
        &self,
        pod: &Pod,
        c: &Container,
        objs: &volumes::Objects,
    ) -> Result<Option<String>, String> {
        let image = c.image.clone().unwrap_or_default();
        // The policies as the node follows them (known before any pod of ours starts).
        if tokio::time::timeout(Duration::from_secs(10), self.m.policies.wait_until_ready())
            .await
            .is_err()
        {
            return Err("the image signature policies are not known yet".into());
        }
        let candidates: Vec<(signing::Policy, String)> = self
            .m
            .policies
            .state()
            .iter()
            .filter_map(|o| {
                let v = serde_json::to_value(o.as_ref()).ok()?;
                let id = format!("{}:{}", v["metadata"]["uid"], v["spec"]);
                signing::Policy::from_object(&v).ok().map(|p| (p, id))
            })
            .filter(|(p, _)| p.names(&image))
            .collect();
        if candidates.is_empty() {
            return Ok(None);
        }
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let ns_labels: BTreeMap<String, String> = {
            let nss: kube::Api<k8s_openapi::api::core::v1::Namespace> =
                kube::Api::all(self.m.client.clone());
            nss.get_opt(&ns)
                .await
                .ok()
                .flatten()
                .and_then(|n| n.metadata.labels)
                .unwrap_or_default()
        };
        let covering: Vec<(signing::Policy, String)> = candidates
            .into_iter()
            .filter(|(p, _)| p.covers(&image, &ns_labels))
            .collect();
        if covering.is_empty() {
            return Ok(None);
        }
        let r = image::reference::Reference::parse(&image).map_err(|e| format!("{image}: {e}"))?;
        let recorded: Option<String> = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("security.berth.io/verified-images"))
            .and_then(|j| serde_json::from_str::<BTreeMap<String, String>>(j).ok())
            .and_then(|m| m.get(&c.name).cloned());
        let reference = match recorded.as_deref().and_then(|p| p.rsplit_once('@')) {
            Some((_, d)) => d.to_string(),
            None => signing::manifest_reference(&r),
        };
        let creds = pull_credentials(&image, pod, objs);
        let opts = self.m.engine.registry_options();
        let cache = self.m.verdicts.clone();
        let image_ref = r.clone();
        let checked = blocking(move || -> Result<Checked, String> {
            let (s, d) = signing::resolve_with(&image_ref, &reference, creds, &opts)?;
            let mut out = Vec::new();
            for (p, id) in covering {
                let key = (d.to_string(), id);
                let hit = cache.lock().unwrap().get(&key).cloned();
                let v = match hit {
                    Some(v) => v,
                    None => {
                        let v = signing::verify(&s, &d, &p.keys).map(|_| ());
                        // Only what passed is remembered: a refusal is checked again at
                        // the next try, in case the image has been signed since.
                        if v.is_ok() {
                            cache.lock().unwrap().insert(key, v.clone());
                        }
                        v
                    }
                };
                out.push((p, v));
            }
            Ok((d, out))
        })
        .await;
        let (digest, verdicts) = checked.map_err(|e| {
            format!("image \"{image}\" cannot be checked against its signature policies: {e}")
        })?;
        for (p, v) in verdicts {
            let Err(reason) = v else { continue };
            let text = format!(
                "image \"{image}\" is refused by ImageSignaturePolicy \"{}\": {reason}",
                p.name
            );
            match p.mode {
                signing::Mode::Enforce => return Err(text),
                signing::Mode::Warn => {
                    self.event(pod, "Warning", "UnsignedImage", &text, Some(&c.name))
                        .await
                }
            }
        }
        Ok(Some(format!("{}@{digest}", r.repository())))
    }

    /// Pulls as the image pull policy says. Errors are (reason, message) as the kubelet's.
    async fn pull(
        &mut self,
        pod: &Pod,
        c: &Container,
        objs: &volumes::Objects,
    ) -> Result<(), (String, String)> {
        let image = c.image.clone().unwrap_or_default();
        let latest = !image.contains('@')
            && image
                .rsplit('/')
                .next()
                .is_none_or(|l| !l.contains(':') || l.ends_with(":latest"));
        let policy = c.image_pull_policy.clone().unwrap_or_else(|| {
            if latest {
                "Always".into()
            } else {
                "IfNotPresent".into()
            }
        });
        let present = self.m.engine.images.resolve(&image).is_ok();
        match policy.as_str() {
            "Never" if !present => {
                return Err((
                    "ErrImageNeverPull".into(),
                    format!("Container image \"{image}\" is not present with pull policy of Never"),
                ))
            }
            "Never" | "IfNotPresent" if present => return Ok(()),
            _ => {}
        }
        if let Some((_, _, n, until)) = self.image_errors.get(&c.name) {
            if Instant::now() < *until {
                return Err((
                    "ImagePullBackOff".into(),
                    format!("Back-off pulling image \"{image}\""),
                ))
                .inspect(|_: &()| {
                    let _ = n;
                });
            }
        }
        let creds = pull_credentials(&image, pod, objs);
        self.event(
            pod,
            "Normal",
            "Pulling",
            &format!("Pulling image \"{image}\""),
            Some(&c.name),
        )
        .await;
        let (e, img) = (self.m.engine.clone(), image.clone());
        let t0 = Instant::now();
        let r = blocking(move || {
            let mut last = None;
            for cr in creds.into_iter().map(Some).chain(std::iter::once(None)) {
                match e.pull(&img, None, false, cr, &mut |_| {}) {
                    Ok(_) => return Ok(()),
                    Err(err) => last = Some(err.to_string()),
                }
            }
            Err(last.unwrap_or_default())
        })
        .await;
        match r {
            Ok(()) => {
                self.image_errors.remove(&c.name);
                self.event(
                    pod,
                    "Normal",
                    "Pulled",
                    &format!(
                        "Successfully pulled image \"{image}\" in {:?}",
                        t0.elapsed()
                    ),
                    Some(&c.name),
                )
                .await;
                Ok(())
            }
            Err(msg) => {
                let n = self.image_errors.get(&c.name).map_or(0, |e| e.2) + 1;
                let delay = BACKOFF_START
                    .saturating_mul(1 << (n - 1).min(5))
                    .min(BACKOFF_MAX);
                let text = format!("Failed to pull image \"{image}\": {msg}");
                self.image_errors.insert(
                    c.name.clone(),
                    (
                        "ErrImagePull".into(),
                        text.clone(),
                        n,
                        Instant::now() + delay,
                    ),
                );
                self.event(pod, "Warning", "Failed", &text, Some(&c.name))
                    .await;
                Err(("ErrImagePull".into(), text))
            }
        }
    }

    /// Creates and starts attempt `attempt` of a container; failures become its waiting
    /// reason.
    async fn start(
        &mut self,
        pod: &Arc<Pod>,
        c: &Container,
        attempt: u32,
        objs: &volumes::Objects,
        vols: &BTreeMap<String, std::path::PathBuf>,
        host_network: bool,
    ) {
        self.cs.entry(c.name.clone()).or_default().waiting =
            Some(("ContainerCreating".into(), String::new()));
        // An image a signature policy covers runs by its verified digest, or not at all.
        let pinned;
        let c = match self.signed_image(pod, c, objs).await {
            Ok(None) => c,
            Ok(Some(image)) => {
                pinned = Container {
                    image: Some(image),
                    ..c.clone()
                };
                &pinned
            }
            Err(msg) => {
                let st = self.cs.entry(c.name.clone()).or_default();
                if st.waiting.as_ref().map(|w| &w.1) != Some(&msg) {
                    self.event(pod, "Warning", "Failed", &msg, Some(&c.name))
                        .await;
                }
                self.cs.entry(c.name.clone()).or_default().waiting =
                    Some(("ErrImageSignature".into(), msg));
                return;
            }
        };
        if let Err((reason, msg)) = self.pull(pod, c, objs).await {
            self.cs.entry(c.name.clone()).or_default().waiting = Some((reason, msg));
            return;
        }
        let req = match self.create_request(pod, c, attempt, objs, vols, host_network) {
            Ok(r) => r,
            Err(e) => {
                let st = self.cs.entry(c.name.clone()).or_default();
                if st.waiting.as_ref().map(|w| &w.1) != Some(&e.0) {
                    self.event(
                        pod,
                        "Warning",
                        "Failed",
                        &format!("Error: {}", e.0),
                        Some(&c.name),
                    )
                    .await;
                }
                self.cs.entry(c.name.clone()).or_default().waiting =
                    Some(("CreateContainerConfigError".into(), e.0));
                return;
            }
        };
        // Attempts before the previous one go (the previous stays for `logs --previous`).
        let old: Vec<String> = self
            .found(&c.name)
            .into_iter()
            .filter(|f| f.attempt + 1 < attempt)
            .map(|f| f.id)
            .collect();
        let engine = self.m.engine.clone();
        let r = blocking(move || {
            for id in old {
                let _ = engine.remove(&id, true, false);
            }
            let name = req.name.clone().unwrap_or_default();
            // A leftover of an interrupted start of this very attempt.
            let _ = engine.remove(&name, true, false);
            let rec = engine.create(req)?;
            match engine.start(&rec.id) {
                Ok(()) => Ok(rec.id),
                Err(e) => Err(e),
            }
        })
        .await;
        match r {
            Ok(id) => {
                self.event(
                    pod,
                    "Normal",
                    "Started",
                    &format!("Started container {}", c.name),
                    Some(&c.name),
                )
                .await;
                let st = self.cs.entry(c.name.clone()).or_default();
                st.waiting = None;
                st.backoff_until = None;
                if let Some(h) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) {
                    let h = &probes::resolved_handler(h, c);
                    let st = self.cs.entry(c.name.clone()).or_default();
                    if st.post_started != id {
                        st.post_started = id.clone();
                        if let Err(e) = probes::handler(
                            &self.m.engine,
                            &id,
                            h,
                            &self.pod_ip,
                            Duration::from_secs(30),
                        )
                        .await
                        {
                            self.event(pod, "Warning", "FailedPostStartHook", &e, Some(&c.name))
                                .await;
                            let (eng, id2) = (self.m.engine.clone(), id.clone());
                            let _ = blocking(move || eng.kill(&id2, "KILL")).await;
                        }
                    }
                }
            }
            Err(e) => {
                let msg = e.to_string();
                self.event(
                    pod,
                    "Warning",
                    "Failed",
                    &format!("Error: {msg}"),
                    Some(&c.name),
                )
                .await;
                self.cs.entry(c.name.clone()).or_default().waiting =
                    Some(("CreateContainerError".into(), msg));
            }
        }
    }

    fn create_request(
        &self,
        pod: &Pod,
        c: &Container,
        attempt: u32,
        objs: &volumes::Objects,
        vols: &BTreeMap<String, std::path::PathBuf>,
        host_network: bool,
    ) -> Result<engine::engine::CreateRequest, ConfigError> {
        let host_ip = self.m.node_ip.to_string();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64 * 1000;
        let service_env = {
            let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
            let links = pod
                .spec
                .as_ref()
                .and_then(|s| s.enable_service_links)
                .unwrap_or(true);
            let cat = self.m.catalog.read().unwrap_or_else(|p| p.into_inner());
            let mine = format!("{ns}/");
            podspec::service_env(
                cat.services
                    .iter()
                    .filter(|(k, _)| {
                        k.as_str() == "default/kubernetes" || (links && k.starts_with(&mine))
                    })
                    .map(|(_, s)| s.as_ref()),
            )
        };
        let env = podspec::environment(
            pod,
            c,
            objs,
            &self.pod_ip,
            &host_ip,
            (cpus, 0),
            &service_env,
        )?;
        let map: BTreeMap<String, String> = env.iter().cloned().collect();
        let command: Vec<String> = c
            .command
            .iter()
            .flatten()
            .map(|s| podspec::expand(s, &map))
            .collect();
        let args: Vec<String> = c
            .args
            .iter()
            .flatten()
            .map(|s| podspec::expand(s, &map))
            .collect();
        let (entrypoint, args) = if let Some((first, rest)) = command.split_first() {
            let mut a = rest.to_vec();
            a.extend(args);
            (Some(first.clone()), a)
        } else {
            (None, args)
        };
        let user = podspec::user(pod, c);
        if podspec::run_as_non_root(pod, c) {
            let image_user = self
                .m
                .engine
                .images
                .resolve(c.image.as_deref().unwrap_or_default())
                .ok()
                .and_then(|r| self.m.engine.images.config(&r).ok())
                .and_then(|cfg| {
                    cfg.pointer("/config/User")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .unwrap_or_default();
            let effective = user.clone().unwrap_or(image_user);
            let uid = effective.split(':').next().unwrap_or_default();
            if uid.is_empty() || uid == "0" || uid == "root" {
                return Err(ConfigError(format!(
                    "container has runAsNonRoot and image will run as root (pod: \"{}_{}({})\", container: {})",
                    pod.metadata.name.as_deref().unwrap_or_default(),
                    pod.metadata.namespace.as_deref().unwrap_or_default(),
                    self.uid,
                    c.name
                )));
            }
            if uid.parse::<u32>().is_err() {
                return Err(ConfigError(format!(
                    "container has runAsNonRoot and image has non-numeric user ({uid}), cannot verify user is non-root (pod: \"{}_{}({})\", container: {})",
                    pod.metadata.name.as_deref().unwrap_or_default(),
                    pod.metadata.namespace.as_deref().unwrap_or_default(),
                    self.uid,
                    c.name
                )));
            }
        }
        let sec = podspec::security(pod, c)?;
        let mut mounts = Vec::new();
        for m in c.volume_mounts.iter().flatten() {
            let Some(src) = vols.get(&m.name) else {
                return Err(ConfigError(format!(
                    "cannot find volume \"{}\" to mount into container \"{}\"",
                    m.name, c.name
                )));
            };
            let mut src = src.clone();
            if let Some(sp) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                if sp.starts_with('/') || sp.split('/').any(|p| p == "..") {
                    return Err(ConfigError(format!(
                        "subPath {sp:?} must be a relative path without '..'"
                    )));
                }
                src = src.join(sp);
                if !src.exists() {
                    std::fs::create_dir_all(&src)
                        .map_err(|e| ConfigError(format!("subPath {sp}: {e}")))?;
                }
            }
            mounts.push(engine::spec::MountSpec::Bind {
                source: src,
                target: m.mount_path.clone(),
                read_only: m.read_only.unwrap_or(false),
            });
        }
        // The termination message file.
        let tm_path = c
            .termination_message_path
            .clone()
            .unwrap_or_else(|| "/dev/termination-log".into());
        let tm_host = volumes::pod_dir(&self.m.cfg.data_dir, &self.uid)
            .join("containers")
            .join(&c.name)
            .join(attempt.to_string());
        std::fs::create_dir_all(&tm_host).map_err(|e| ConfigError(e.to_string()))?;
        let tm_file = tm_host.join("termination-log");
        std::fs::write(&tm_file, b"").map_err(|e| ConfigError(e.to_string()))?;
        mounts.push(engine::spec::MountSpec::Bind {
            source: tm_file,
            target: tm_path,
            read_only: false,
        });
        // The pod's resolv.conf, for its dnsPolicy (cluster DNS first by default).
        if !mounts.iter().any(|m| {
            matches!(m, engine::spec::MountSpec::Bind { target, .. } if target == "/etc/resolv.conf")
        }) {
            let host = std::fs::read_to_string(&self.m.cfg.resolv_conf).unwrap_or_default();
            let file = tm_host.join("resolv.conf");
            std::fs::write(
                &file,
                podspec::resolv_conf(pod, &host, &self.m.cfg.cluster_domain),
            )
            .map_err(|e| ConfigError(e.to_string()))?;
            mounts.push(engine::spec::MountSpec::Bind {
                source: file,
                target: "/etc/resolv.conf".into(),
                read_only: false,
            });
        }
        let (memory, cpus_limit, shares) = podspec::limits(c);
        let qos = podspec::qos_class(pod).to_ascii_lowercase();
        let cgroup_parent = crate::podcgroup::path(&self.m.cfg.cgroup_root, &qos, &self.uid);
        let spec = pod.spec.as_ref();
        let grace = spec
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30);
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let hostname = spec.and_then(|s| s.hostname.clone()).unwrap_or(pod_name);
        Ok(engine::engine::CreateRequest {
            image: c.image.clone().unwrap_or_default(),
            name: Some(podspec::container_name(pod, &c.name, attempt)),
            run: engine::spec::RunOptions {
                args,
                entrypoint,
                env: env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
                workdir: c.working_dir.clone().filter(|w| !w.is_empty()),
                user,
                hostname: if host_network { None } else { Some(hostname) },
                tty: c.tty == Some(true),
                read_only: sec.read_only,
                privileged: sec.privileged,
                cap_add: sec.cap_add,
                cap_drop: sec.cap_drop,
                security_opt: sec.security_opt,
                memory,
                cpus: cpus_limit,
                cpu_shares: shares,
                mounts,
                network: if host_network {
                    engine::spec::Network::Host
                } else {
                    engine::spec::Network::None
                },
                ipc: if spec.and_then(|s| s.host_ipc) == Some(true) {
                    engine::spec::Ipc::Host
                } else {
                    engine::spec::Ipc::Private
                },
                pid_host: spec.and_then(|s| s.host_pid) == Some(true),
                group_add: podspec::groups(pod),
                sysctls: podspec::sysctls(pod),
                labels: podspec::labels(pod, &c.name, attempt),
                cgroup_parent: Some(cgroup_parent),
                ..Default::default()
            },
            open_stdin: c.stdin == Some(true),
            stdin_once: c.stdin_once == Some(true),
            stop_timeout: Some(grace),
            sandbox: (!host_network).then(|| podspec::sandbox_name(&self.uid)),
            ..Default::default()
        })
    }

    /// Runs the probes that are due; returns when the next one is.
    async fn probe(&mut self, pod: &Pod, c: &Container, f: &Found) -> Option<Duration> {
        let started_at = timefmt::parse_rfc3339(&f.rec.state.started_at).unwrap_or(0);
        {
            let st = self.cs.entry(c.name.clone()).or_default();
            if st.probed_id != f.id {
                st.probed_id = f.id.clone();
                st.readiness = ProbeState::default();
                st.liveness = ProbeState::default();
                st.startup = ProbeState::default();
            }
        }
        let mut next: Option<Duration> = None;
        let mut sooner = |d: Duration| next = Some(next.map_or(d, |n: Duration| n.min(d)));
        // Startup first: the others wait for it.
        if let Some(p) = &c.startup_probe {
            if !self.cs[&c.name].startup.passed {
                match self.probe_step(pod, c, f, p, "startup", started_at).await {
                    Step::Next(d) => sooner(d),
                    Step::Threshold => {
                        self.kill_for_probe(pod, c, f, "startup").await;
                        return Some(Duration::from_millis(100));
                    }
                }
                if !self.cs[&c.name].startup.passed {
                    return next;
                }
            }
        }
        if let Some(p) = &c.liveness_probe {
            match self.probe_step(pod, c, f, p, "liveness", started_at).await {
                Step::Next(d) => sooner(d),
                Step::Threshold => {
                    self.kill_for_probe(pod, c, f, "liveness").await;
                    return Some(Duration::from_millis(100));
                }
            }
        }
        if let Some(p) = &c.readiness_probe {
            // A readiness failure only makes the container unready.
            let period = Duration::from_secs(p.period_seconds.unwrap_or(10).max(1) as u64);
            match self.probe_step(pod, c, f, p, "readiness", started_at).await {
                Step::Next(d) => sooner(d),
                Step::Threshold => sooner(period),
            }
        }
        next
    }

    /// Runs one probe of `which` kind if it is due, with an `Unhealthy` event for a failure.
    async fn probe_step(
        &mut self,
        pod: &Pod,
        c: &Container,
        f: &Found,
        p: &k8s_openapi::api::core::v1::Probe,
        which: &str,
        started_at: i128,
    ) -> Step {
        let cs = self.cs.get_mut(&c.name).expect("made by probe");
        let st = match which {
            "startup" => &mut cs.startup,
            "liveness" => &mut cs.liveness,
            _ => &mut cs.readiness,
        };
        let p = probes::resolved_probe(p, c);
        let (step, failed) =
            match probes::step(&self.m.engine, &f.id, &p, &self.pod_ip, st, started_at).await {
                probes::Outcome::Wait(d) | probes::Outcome::Ran(d, None) => (Step::Next(d), None),
                probes::Outcome::Ran(d, Some(msg)) => (Step::Next(d), Some(msg)),
                probes::Outcome::Failed(msg) => (Step::Threshold, Some(msg)),
            };
        if let Some(msg) = failed {
            let mut kind = which.to_string();
            kind[..1].make_ascii_uppercase();
            self.event(
                pod,
                "Warning",
                "Unhealthy",
                &format!("{kind} probe failed: {msg}"),
                Some(&c.name),
            )
            .await;
        }
        step
    }

    async fn kill_for_probe(&mut self, pod: &Pod, c: &Container, f: &Found, which: &str) {
        self.event(
            pod,
            "Normal",
            "Killing",
            &format!(
                "Container {} failed {which} probe, will be restarted",
                c.name
            ),
            Some(&c.name),
        )
        .await;
        let grace = pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30);
        if let Some(h) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()) {
            let _ = probes::handler(
                &self.m.engine,
                &f.id,
                &probes::resolved_handler(h, c),
                &self.pod_ip,
                Duration::from_secs(grace.max(1) as u64),
            )
            .await;
        }
        let (e, id) = (self.m.engine.clone(), f.id.clone());
        let _ = blocking(move || e.stop(&id, Some(grace))).await;
    }

    /// Graceful stop of every container: preStop hooks, then the stop signal, then SIGKILL
    /// when the grace period is over.
    async fn terminate(&mut self, pod: &Pod, grace: i64) {
        let Some(spec) = pod.spec.as_ref() else {
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(grace.max(0) as u64);
        // No container is signalled while a Service may still send it new connections.
        if spec.host_network != Some(true) && !self.pod_ip.is_empty() {
            drain(&self.m.catalog, &self.pod_ip, deadline).await;
        }
        let mut tasks = Vec::new();
        for c in spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
        {
            let Some(f) = self.found(&c.name).pop() else {
                continue;
            };
            if !matches!(
                f.rec.state.status.as_str(),
                "running" | "restarting" | "paused"
            ) {
                continue;
            }
            self.event(
                pod,
                "Normal",
                "Killing",
                &format!("Stopping container {}", c.name),
                Some(&c.name),
            )
            .await;
            let engine = self.m.engine.clone();
            let pre = c
                .lifecycle
                .as_ref()
                .and_then(|l| l.pre_stop.as_ref())
                .map(|h| probes::resolved_handler(h, c));
            let ip = self.pod_ip.clone();
            tasks.push(tokio::spawn(async move {
                if let Some(h) = pre {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let _ = probes::handler(&engine, &f.id, &h, &ip, left).await;
                }
                let left = deadline.saturating_duration_since(Instant::now()).as_secs() as i64;
                let id = f.id.clone();
                let _ = blocking(move || engine.stop(&id, Some(left.max(0)))).await;
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    fn container_status(&mut self, pod: &Pod, c: &Container, init: bool) -> Value {
        let found = self.found(&c.name);
        let (waiting, readiness_passed, startup_passed) = {
            let st = self.cs.entry(c.name.clone()).or_default();
            (st.waiting.clone(), st.readiness.passed, st.startup.passed)
        };
        let term = |f: &Found| -> Value {
            let r = &f.rec.state;
            let reason = if r.oom_killed {
                "OOMKilled"
            } else if r.exit_code == 0 {
                "Completed"
            } else {
                "Error"
            };
            let t = json!({"exitCode": r.exit_code, "reason": reason,
                "startedAt": k8s_of(&r.started_at), "finishedAt": k8s_of(&r.finished_at),
                "containerID": format!("{}://{}", crate::RUNTIME, f.id)});
            t
        };
        let latest = found.last();
        let restart_count = latest.map_or(0, |f| f.attempt);
        let state = match (latest, &waiting) {
            (Some(f), _)
                if matches!(
                    f.rec.state.status.as_str(),
                    "running" | "restarting" | "paused"
                ) =>
            {
                json!({"running": {"startedAt": k8s_of(&f.rec.state.started_at)}})
            }
            (_, Some((reason, msg))) => {
                let mut w = json!({"reason": reason});
                if !msg.is_empty() {
                    w["message"] = json!(msg);
                }
                json!({"waiting": w})
            }
            (Some(f), None) if matches!(f.rec.state.status.as_str(), "exited" | "dead") => {
                json!({"terminated": term(f)})
            }
            (Some(_), None) => json!({"waiting": {"reason": "ContainerCreating"}}),
            (None, None) => {
                json!({"waiting": {"reason": if init { "PodInitializing" } else { "ContainerCreating" }}})
            }
        };
        let mut last_state = json!({});
        if found.len() >= 2 {
            let prev = &found[found.len() - 2];
            last_state = json!({"terminated": term(prev)});
        } else if state.get("waiting").is_some() {
            if let Some(f) =
                latest.filter(|f| matches!(f.rec.state.status.as_str(), "exited" | "dead"))
            {
                last_state = json!({"terminated": term(f)});
            }
        }
        // Termination messages.
        for (i, f) in found.iter().enumerate() {
            let tm = volumes::pod_dir(&self.m.cfg.data_dir, &self.uid)
                .join("containers")
                .join(&c.name)
                .join(f.attempt.to_string())
                .join("termination-log");
            let msg = std::fs::read_to_string(&tm).unwrap_or_default();
            let mut msg: String = msg.chars().take(4096).collect();
            if msg.is_empty()
                && c.termination_message_policy.as_deref() == Some("FallbackToLogsOnError")
                && f.rec.state.exit_code != 0
            {
                msg = self.tail_log(&f.id, 80);
            }
            if msg.is_empty() {
                continue;
            }
            let target = if i + 1 == found.len() {
                None
            } else if i + 2 == found.len() {
                Some(&mut last_state)
            } else {
                None
            };
            if let Some(t) = target.and_then(|v| v.get_mut("terminated")) {
                t["message"] = json!(msg);
            }
        }
        let running = state.get("running").is_some();
        let ready = running
            && match &c.readiness_probe {
                Some(_) => readiness_passed,
                None => true,
            }
            && (c.startup_probe.is_none() || startup_passed);
        let started = running && (c.startup_probe.is_none() || startup_passed);
        let mut state = state;
        if let Some(f) = latest.filter(|f| matches!(f.rec.state.status.as_str(), "exited" | "dead"))
        {
            if waiting.is_none() {
                state = json!({"terminated": term(f)});
                let tm = volumes::pod_dir(&self.m.cfg.data_dir, &self.uid)
                    .join("containers")
                    .join(&c.name)
                    .join(f.attempt.to_string())
                    .join("termination-log");
                if let Ok(m) = std::fs::read_to_string(tm) {
                    if !m.is_empty() {
                        state["terminated"]["message"] =
                            json!(m.chars().take(4096).collect::<String>());
                    }
                }
            }
        }
        let mut v = json!({
            "name": c.name,
            "state": state,
            "lastState": last_state,
            "ready": ready,
            "restartCount": restart_count,
            "image": c.image.clone().unwrap_or_default(),
            "imageID": latest.map(|f| f.rec.image_id.clone()).unwrap_or_default(),
            "started": started,
        });
        if let Some(f) = latest {
            v["containerID"] = json!(format!("{}://{}", crate::RUNTIME, f.id));
        }
        let _ = pod;
        v
    }

    fn tail_log(&self, id: &str, lines: usize) -> String {
        let mut out = Vec::new();
        let q = engine::logfile::Query {
            tail: Some(lines),
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        let _ = self.m.engine.logs(id, &q, &|| true, &mut |e| {
            out.push(e.log.clone());
            Ok(())
        });
        out.concat()
    }

    /// Reports the pod's status when it changed.
    async fn report(&mut self, pod: &Pod, terminating: bool) -> Result<()> {
        let spec = pod.spec.clone().unwrap_or_default();
        let now = k8s_now();
        let prev_conditions = pod
            .status
            .as_ref()
            .and_then(|s| serde_json::to_value(&s.conditions).ok())
            .unwrap_or(Value::Null);
        let mut status = json!({});
        if let Some((reason, message)) = &self.rejected {
            status = json!({"phase": "Failed", "reason": reason, "message": message,
                "startTime": self.start_time.clone().unwrap_or_else(k8s_now)});
        } else {
            let inits: Vec<Value> = spec
                .init_containers
                .iter()
                .flatten()
                .map(|c| self.container_status(pod, c, true))
                .collect();
            let mains: Vec<Value> = spec
                .containers
                .iter()
                .map(|c| self.container_status(pod, c, false))
                .collect();
            let init_done = inits
                .iter()
                .all(|s| s.pointer("/state/terminated/exitCode") == Some(&json!(0)));
            let restart_policy = spec
                .restart_policy
                .clone()
                .unwrap_or_else(|| "Always".into());
            let init_failed = restart_policy == "Never"
                && inits.iter().any(|s| {
                    s.pointer("/state/terminated/exitCode")
                        .and_then(Value::as_i64)
                        .is_some_and(|c| c != 0)
                });
            let all_term = mains
                .iter()
                .all(|s| s.pointer("/state/terminated").is_some());
            let any_running = mains.iter().any(|s| s.pointer("/state/running").is_some());
            let any_failed = mains.iter().any(|s| {
                s.pointer("/state/terminated/exitCode")
                    .and_then(Value::as_i64)
                    .is_some_and(|c| c != 0)
            });
            let phase = if init_failed {
                "Failed"
            } else if !init_done {
                "Pending"
            } else if all_term
                && restart_policy != "Always"
                && !(restart_policy == "OnFailure" && any_failed)
            {
                if any_failed {
                    "Failed"
                } else {
                    "Succeeded"
                }
            } else if any_running
                || mains.iter().any(|s| {
                    s["restartCount"].as_u64().unwrap_or(0) > 0
                        || s.pointer("/state/terminated").is_some()
                })
            {
                "Running"
            } else {
                "Pending"
            };
            let containers_ready = mains.iter().all(|s| s["ready"] == json!(true));
            let sandbox_ready = self.sandbox_error.is_none() && !terminating;
            let cond = |t: &str, ok: bool, reason: Option<&str>| {
                let s = if ok { "True" } else { "False" };
                let since = prev_conditions
                    .as_array()
                    .and_then(|a| a.iter().find(|c| c["type"] == t))
                    .filter(|c| c["status"] == s)
                    .and_then(|c| c["lastTransitionTime"].as_str().map(str::to_string))
                    .unwrap_or_else(|| now.clone());
                let mut c = json!({"type": t, "status": s, "lastProbeTime": null, "lastTransitionTime": since});
                if let Some(r) = reason {
                    c["reason"] = json!(r);
                }
                c
            };
            let not_ready: Vec<String> = mains
                .iter()
                .filter(|s| s["ready"] != json!(true))
                .filter_map(|s| s["name"].as_str().map(str::to_string))
                .collect();
            let mut ready_c = cond(
                "Ready",
                containers_ready && init_done && !terminating,
                (!containers_ready).then_some("ContainersNotReady"),
            );
            let mut cr_c = cond(
                "ContainersReady",
                containers_ready && init_done,
                (!containers_ready).then_some("ContainersNotReady"),
            );
            if !containers_ready {
                let m = format!("containers with unready status: [{}]", not_ready.join(" "));
                ready_c["message"] = json!(m);
                cr_c["message"] = json!(m);
            }
            let mut init_c = cond(
                "Initialized",
                init_done,
                (!init_done).then_some("ContainersNotInitialized"),
            );
            if !init_done {
                let pending: Vec<String> = inits
                    .iter()
                    .filter(|s| s.pointer("/state/terminated/exitCode") != Some(&json!(0)))
                    .filter_map(|s| s["name"].as_str().map(str::to_string))
                    .collect();
                init_c["message"] = json!(format!(
                    "containers with incomplete status: [{}]",
                    pending.join(" ")
                ));
            }
            let scheduled = cond("PodScheduled", true, None);
            let ip = if self.pod_ip.is_empty() {
                Value::Null
            } else {
                json!(self.pod_ip)
            };
            status = json!({
                "phase": phase,
                "conditions": [cond("PodReadyToStartContainers", sandbox_ready, None), init_c, ready_c, cr_c, scheduled],
                "hostIP": self.m.node_ip.to_string(),
                "hostIPs": [{"ip": self.m.node_ip.to_string()}],
                "podIP": ip,
                "podIPs": if self.pod_ip.is_empty() { json!([]) } else { json!([{"ip": self.pod_ip}]) },
                "startTime": self.start_time.clone().unwrap_or_else(k8s_now),
                "qosClass": podspec::qos_class(pod),
                "containerStatuses": mains,
            });
            if !inits.is_empty() {
                status["initContainerStatuses"] = json!(inits);
            }
        }
        let mut cmp = status.clone();
        strip_transition(&mut cmp);
        if cmp == self.last_status {
            return Ok(());
        }
        let api: kube::Api<Pod> = kube::Api::namespaced(
            self.m.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        api.patch_status(
            pod.metadata.name.as_deref().unwrap_or_default(),
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"uid": self.uid}, "status": status})),
        )
        .await?;
        self.last_status = cmp;
        Ok(())
    }
}

fn strip_transition(v: &mut Value) {
    if let Some(a) = v.get_mut("conditions").and_then(Value::as_array_mut) {
        for c in a {
            if let Some(o) = c.as_object_mut() {
                o.remove("lastTransitionTime");
            }
        }
    }
}

fn k8s_of(rfc: &str) -> Value {
    match timefmt::parse_rfc3339(rfc) {
        Some(n) if n > 0 => json!(crate::node::k8s_time_of(n)),
        _ => Value::Null,
    }
}

/// Credentials for `image` from the pod's `imagePullSecrets` (docker config JSON).
fn pull_credentials(
    image: &str,
    pod: &Pod,
    objs: &volumes::Objects,
) -> Vec<engine::distribution::Credentials> {
    let secrets: Vec<engine::distribution::PullSecret> = pod
        .spec
        .as_ref()
        .and_then(|s| s.image_pull_secrets.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|s| objs.secrets.get(&s.name).cloned().flatten())
        .filter_map(|sec| sec.data)
        .map(|data| {
            (
                data.get(".dockerconfigjson").map(|b| b.0.clone()),
                data.get(".dockercfg").map(|b| b.0.clone()),
            )
        })
        .collect();
    engine::distribution::pull_secret_credentials(image, &secrets)
}
