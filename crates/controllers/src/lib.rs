//! The parts of `berth server` that turn desired state into running pods, as
//! kube-scheduler and kube-controller-manager do: the scheduler (`scheduler`) and the
//! controllers (ReplicaSet and ReplicationController in `replicaset`, the others each in
//! a module of its own). Each is an API client over kube-rs — watch, cache,
//! reconcile, level-triggered and idempotent — talking to the server it runs in.

pub mod clusterdns;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod gc;
pub mod hpa;
pub mod job;
pub mod leader;
pub mod nodelifecycle;
pub mod owned;
pub mod podgc;
pub mod pvbinder;
pub mod replicaset;
pub mod revisions;
pub mod schedplugins;
pub mod scheduler;
pub mod servicelb;
pub mod statefulset;

/// Kubernetes' time format (seconds).
pub fn now() -> String {
    let n = timefmt::now_nanos();
    let s = timefmt::rfc3339((n / 1_000_000_000) as i64, 0);
    format!("{}Z", &s[..19])
}

/// What `berth server` runs.
#[derive(Clone)]
pub struct Options {
    pub scheduler: bool,
    /// The scheduler's own client (its identity); the controllers' when None.
    pub scheduler_client: Option<kube::Client>,
    /// kube-controller-manager's `--controllers`: `*`, `name`, `-name`, `-*`.
    pub controllers: Vec<String>,
    pub node_monitor_grace_period: std::time::Duration,
    pub terminated_pod_gc_threshold: usize,
    pub hpa: hpa::Settings,
    /// The leader election's lease, renew deadline and retry period.
    pub leader_election: leader::Timing,
}

/// The controllers by name, as kube-controller-manager names them.
pub const CONTROLLERS: &[&str] = &[
    "replicaset",
    "replicationcontroller",
    "deployment",
    "garbagecollector",
    "nodelifecycle",
    "podgc",
    "job",
    "cronjob",
    "daemonset",
    "statefulset",
    "persistentvolume-binder",
    "disruption",
    "endpointslice",
    "endpoint",
    "clusterdns",
    "servicelb",
    "horizontalpodautoscaling",
];

/// The controllers `spec` selects (`*` all, `name`, `-name`; later entries win).
pub fn selected(spec: &[String]) -> anyhow::Result<std::collections::BTreeSet<&'static str>> {
    let mut on = std::collections::BTreeSet::new();
    for item in spec.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        let (off, name) = match item.strip_prefix('-') {
            Some(n) => (true, n),
            None => (false, item),
        };
        let names: Vec<&'static str> = if name == "*" {
            CONTROLLERS.to_vec()
        } else {
            vec![*CONTROLLERS.iter().find(|c| **c == name).ok_or_else(|| {
                anyhow::anyhow!(
                    "unknown controller {name:?}; the controllers are {}",
                    CONTROLLERS.join(", ")
                )
            })?]
        };
        for n in names {
            if off {
                on.remove(n);
            } else {
                on.insert(n);
            }
        }
    }
    Ok(on)
}

/// Starts the scheduler and the controllers on `client`. With a `leader` identity, they run only
/// while this server holds the `kube-system/berth-controllers` Lease (see [`leader`]);
/// otherwise until the process ends.
pub fn start(client: kube::Client, opts: Options, leader: Option<String>) -> anyhow::Result<()> {
    let on = selected(&opts.controllers)?;
    opts.leader_election.check().map_err(anyhow::Error::msg)?;
    let timing = opts.leader_election;
    match leader {
        None => drop(spawn_all(&client, &opts, &on)),
        Some(me) => drop(tokio::spawn(leader::run(
            client.clone(),
            me,
            timing,
            move |c| spawn_all(&c, &opts, &on),
        ))),
    }
    Ok(())
}

/// Spawns the scheduler and the selected controllers; returns their tasks.
fn spawn_all(
    client: &kube::Client,
    opts: &Options,
    on: &std::collections::BTreeSet<&'static str>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    if opts.scheduler {
        let c = opts
            .scheduler_client
            .clone()
            .unwrap_or_else(|| client.clone());
        tasks.push(tokio::spawn(scheduler::run(c)));
    }
    for name in on.iter().copied() {
        let c = client.clone();
        tasks.push(match name {
            "replicaset" => {
                tokio::spawn(replicaset::run::<k8s_openapi::api::apps::v1::ReplicaSet>(c))
            }
            "replicationcontroller" => tokio::spawn(replicaset::run::<
                k8s_openapi::api::core::v1::ReplicationController,
            >(c)),
            "deployment" => tokio::spawn(deployment::run(c)),
            "garbagecollector" => tokio::spawn(gc::run(c)),
            "nodelifecycle" => tokio::spawn(nodelifecycle::run(c, opts.node_monitor_grace_period)),
            "job" => tokio::spawn(job::run(c)),
            "cronjob" => tokio::spawn(cronjob::run(c)),
            "daemonset" => tokio::spawn(daemonset::run(c)),
            "statefulset" => tokio::spawn(statefulset::run(c)),
            "disruption" => tokio::spawn(disruption::run(c)),
            "endpointslice" => tokio::spawn(endpoints::run(c, endpoints::Writes::Slices)),
            "endpoint" => tokio::spawn(endpoints::run(c, endpoints::Writes::Endpoints)),
            "clusterdns" => tokio::spawn(clusterdns::run(c)),
            "servicelb" => tokio::spawn(servicelb::run(c)),
            "persistentvolume-binder" => tokio::spawn(pvbinder::run(c)),
            "podgc" => tokio::spawn(podgc::run(c, opts.terminated_pod_gc_threshold)),
            "horizontalpodautoscaling" => tokio::spawn(hpa::run(c, opts.hpa.clone())),
            _ => unreachable!("every name in CONTROLLERS is started"),
        });
    }
    tasks
}

/// Whether writing `new` would change `old`: a field of `new` differs from the stored
/// one (a missing number counts as 0, a missing value as null, as the API omits them).
pub fn status_differs(new: &serde_json::Value, old: &serde_json::Value) -> bool {
    let Some(n) = new.as_object() else {
        return false;
    };
    n.iter().any(|(k, v)| {
        let o = old.get(k).cloned().unwrap_or(serde_json::Value::Null);
        match (v, &o) {
            (serde_json::Value::Number(x), serde_json::Value::Null) => x.as_i64() != Some(0),
            _ => v != &o,
        }
    })
}

/// Records an Event about `obj` (best effort, as controllers do).
pub async fn event(
    client: &kube::Client,
    component: &str,
    involved: serde_json::Value,
    typ: &str,
    reason: &str,
    message: &str,
) {
    let ns = involved["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_string();
    let name = involved["name"].as_str().unwrap_or_default().to_string();
    let api: kube::Api<k8s_openapi::api::core::v1::Event> =
        kube::Api::namespaced(client.clone(), &ns);
    let now = now();
    let ev = serde_json::json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": format!("{name}.{:x}", timefmt::now_nanos()), "namespace": ns},
        "involvedObject": involved,
        "reason": reason, "message": message, "type": typ,
        "source": {"component": component},
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        "reportingComponent": component,
    });
    if let Ok(e) = serde_json::from_value(ev) {
        let _ = api.create(&Default::default(), &e).await;
    }
}

/// What a watch says, with relists made explicit: after a (re)list, `Listed` carries every
/// key the list held, so a cache drops what was deleted while the watch was down.
pub enum Seen<K> {
    Applied(K),
    Deleted(K),
    Listed(std::collections::HashSet<String>),
    Nothing,
}

/// The keys of `have` that a relist's `listed` keys no longer hold (what went while a watch
/// was down).
pub fn unlisted<'a>(
    have: impl Iterator<Item = &'a String>,
    listed: &std::collections::HashSet<String>,
) -> Vec<String> {
    have.filter(|k| !listed.contains(*k)).cloned().collect()
}

/// What a controller watches and caches: any typed Kubernetes object.
pub trait Object:
    kube::Resource<DynamicType = ()>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
}

impl<T> Object for T where
    T: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static
{
}

/// `namespace/name` (`/name` for cluster-scoped objects).
pub fn key_of<K: kube::ResourceExt>(o: &K) -> String {
    format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any())
}

/// A kube-rs watcher of every `K`, as [`Seen`] events.
pub fn follow<K>(api: kube::Api<K>) -> impl futures::Stream<Item = Seen<K>> + Send
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    follow_config(api, kube::runtime::watcher::Config::default())
}

/// A watch of every `K` (as [`follow_config`]) as `(key, the object)` changes, `None` for
/// an object deleted; what a cache keyed by `namespace/name` needs.
pub fn follow_keyed<K: Object>(
    api: kube::Api<K>,
    cfg: kube::runtime::watcher::Config,
) -> impl futures::Stream<Item = (String, Option<std::sync::Arc<K>>)> + Send {
    use futures::StreamExt;
    follow_config(api, cfg).filter_map(|e| {
        futures::future::ready(match e {
            Seen::Applied(o) => Some((key_of(&o), Some(std::sync::Arc::new(o)))),
            Seen::Deleted(o) => Some((key_of(&o), None)),
            Seen::Listed(_) | Seen::Nothing => None,
        })
    })
}

/// [`follow`] with a watcher configuration (a label selector, say).
pub fn follow_config<K>(
    api: kube::Api<K>,
    cfg: kube::runtime::watcher::Config,
) -> impl futures::Stream<Item = Seen<K>> + Send
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    use futures::StreamExt;
    use kube::runtime::{watcher, WatchStreamExt};
    let mut listing: Option<std::collections::HashSet<String>> = None;
    // Errors back off (0.8 s doubling to 30 s): a watch that keeps failing must neither
    // spin nor keep its task from yielding (which would also stall the runtime's shutdown).
    watcher::watcher(api, cfg)
        .default_backoff()
        .map(move |e| match e {
            Ok(watcher::Event::Init) => {
                listing = Some(Default::default());
                Seen::Nothing
            }
            Ok(watcher::Event::InitApply(o)) => {
                if let Some(l) = listing.as_mut() {
                    l.insert(key_of(&o));
                }
                Seen::Applied(o)
            }
            Ok(watcher::Event::InitDone) => Seen::Listed(listing.take().unwrap_or_default()),
            Ok(watcher::Event::Apply(o)) => Seen::Applied(o),
            Ok(watcher::Event::Delete(o)) => Seen::Deleted(o),
            Err(e) => {
                eprintln!(
                    "berth controllers: watching {}: {e}",
                    std::any::type_name::<K>()
                        .rsplit("::")
                        .next()
                        .unwrap_or_default()
                );
                Seen::Nothing
            }
        })
}
