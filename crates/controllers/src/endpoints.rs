//! The EndpointSlice and Endpoints controllers: which pods back each Service with a selector,
//! as Kubernetes' `endpointslice` and `endpoint` controllers compute them.
//!
//! - A pod is an endpoint when the selector matches it, it has an IP and it has not
//!   terminated. In slices, a pod being deleted stays, `terminating` and not `ready`
//!   (`serving` while it still passes its readiness probe), so proxies take it out of the
//!   rotation before its containers are signalled; in Endpoints it goes at once.
//! - `ready` is the pod's Ready condition, or always with `publishNotReadyAddresses`.
//! - Named target ports are resolved per pod: pods that number a port differently land in
//!   different slices (and Endpoints subsets), as in Kubernetes.
//! - Slices hold at most 100 endpoints; an endpoint stays in the slice it is in, so a change
//!   to one pod rewrites one slice. A Service with no endpoints keeps one empty slice.
//! - Services without a selector are left alone: their Endpoints and slices are the user's.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, PostParams};
use serde_json::{json, Value};

/// `endpointslice.kubernetes.io/managed-by` of the slices this controller owns.
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Endpoints per slice (kube-controller-manager's `--max-endpoints-per-slice` default).
const MAX_PER_SLICE: usize = 100;

/// Which of the two objects a controller writes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Writes {
    Slices,
    Endpoints,
}

/// One pod as an endpoint of one Service.
#[derive(Clone, Debug, PartialEq)]
struct Ep {
    ip: String,
    ready: bool,
    serving: bool,
    terminating: bool,
    node: Option<String>,
    hostname: Option<String>,
    pod: String,
    uid: String,
    /// The Service's ports this pod serves: (name, port number, protocol, appProtocol).
    ports: Vec<(String, i32, String, Option<String>)>,
}

enum Change {
    Service(Option<Arc<Service>>, String),
    Pod(Option<Arc<Pod>>, String),
    Slice(Option<Arc<EndpointSlice>>, String),
    Endpoints(Option<Arc<Endpoints>>, String),
}

fn ns_of(key: &str) -> &str {
    key.split('/').next().unwrap_or_default()
}

/// Runs the controller until the process ends.
pub async fn run(client: kube::Client, writes: Writes) {
    let all = kube::runtime::watcher::Config::default;
    let services = crate::follow_keyed(kube::Api::<Service>::all(client.clone()), all())
        .map(|(k, o)| Change::Service(o, k));
    let pods = crate::follow_keyed(kube::Api::<Pod>::all(client.clone()), all())
        .map(|(k, o)| Change::Pod(o, k));
    let mut streams = vec![services.boxed(), pods.boxed()];
    match writes {
        Writes::Slices => {
            let cfg = all().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
            streams.push(
                crate::follow_keyed(kube::Api::<EndpointSlice>::all(client.clone()), cfg)
                    .map(|(k, o)| Change::Slice(o, k))
                    .boxed(),
            )
        }
        Writes::Endpoints => streams.push(
            crate::follow_keyed(kube::Api::<Endpoints>::all(client.clone()), all())
                .map(|(k, o)| Change::Endpoints(o, k))
                .boxed(),
        ),
    }
    let mut events = futures::stream::select_all(streams);
    let mut st = State::default();
    loop {
        let Some(first) = events.next().await else {
            return;
        };
        let mut batch = vec![first];
        while let Some(Some(e)) = futures::FutureExt::now_or_never(events.next()) {
            batch.push(e);
        }
        let mut dirty: BTreeSet<String> = BTreeSet::new();
        for c in batch {
            st.apply(c, &mut dirty);
        }
        for key in dirty {
            let r = match writes {
                Writes::Slices => st.sync_slices(&client, &key).await,
                Writes::Endpoints => st.sync_endpoints(&client, &key).await,
            };
            if let Err(e) = r {
                // A conflict means the watch has news; it will mark the Service again.
                if !matches!(&e, kube::Error::Api(s) if s.code == 409) {
                    eprintln!("berth controllers: endpoints of service {key}: {e}");
                }
            }
        }
    }
}

#[derive(Default)]
struct State {
    services: HashMap<String, Arc<Service>>,
    /// Pods by namespace, then key.
    pods: HashMap<String, HashMap<String, Arc<Pod>>>,
    /// This controller's slices by Service key, then slice name.
    slices: HashMap<String, BTreeMap<String, Arc<EndpointSlice>>>,
    /// The Endpoints objects, by key (the `endpoint` controller's).
    endpoints: HashMap<String, Arc<Endpoints>>,
}

impl State {
    fn apply(&mut self, c: Change, dirty: &mut BTreeSet<String>) {
        match c {
            Change::Service(s, k) => {
                match s {
                    Some(s) => self.services.insert(k.clone(), s),
                    None => self.services.remove(&k),
                };
                dirty.insert(k);
            }
            Change::Pod(p, k) => {
                let ns = ns_of(&k).to_string();
                let in_ns = self.pods.entry(ns.clone()).or_default();
                let old = match &p {
                    Some(p) => in_ns.insert(k, p.clone()),
                    None => in_ns.remove(&k),
                };
                if in_ns.is_empty() {
                    self.pods.remove(&ns);
                }
                for (sk, s) in &self.services {
                    if ns_of(sk) == ns
                        && [old.as_ref(), p.as_ref()]
                            .into_iter()
                            .flatten()
                            .any(|p| selects(s, p))
                    {
                        dirty.insert(sk.clone());
                    }
                }
            }
            Change::Slice(s, k) => {
                let ns = ns_of(&k).to_string();
                let name = k[ns.len() + 1..].to_string();
                let svc_of = |s: &EndpointSlice| {
                    s.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(SERVICE_NAME_LABEL))
                        .map(|n| format!("{ns}/{n}"))
                };
                // A slice that moved Services (it should not) leaves the old one.
                for (sk, m) in self.slices.iter_mut() {
                    if m.remove(&name).is_some() {
                        dirty.insert(sk.clone());
                    }
                }
                self.slices.retain(|_, m| !m.is_empty());
                if let Some(s) = s {
                    if let Some(sk) = svc_of(&s) {
                        self.slices.entry(sk.clone()).or_default().insert(name, s);
                        dirty.insert(sk);
                    }
                }
            }
            Change::Endpoints(e, k) => {
                match e {
                    Some(e) => self.endpoints.insert(k.clone(), e),
                    None => self.endpoints.remove(&k),
                };
                dirty.insert(k);
            }
        }
    }

    /// The endpoints of a Service with a selector, by pod name; `None` when the Service is
    /// gone or has no selector (its endpoints are not this controller's).
    fn desired(&self, key: &str, with_terminating: bool) -> Option<(Arc<Service>, Vec<Ep>)> {
        let svc = self.services.get(key)?.clone();
        let spec = svc.spec.as_ref()?;
        if spec.type_.as_deref() == Some("ExternalName")
            || spec.selector.as_ref().is_none_or(|s| s.is_empty())
        {
            return None;
        }
        let publish = spec.publish_not_ready_addresses == Some(true);
        let mut eps: Vec<Ep> = self
            .pods
            .get(ns_of(key))
            .into_iter()
            .flat_map(|m| m.values())
            .filter(|p| selects(&svc, p))
            .filter_map(|p| endpoint(&svc, p, publish, with_terminating))
            .collect();
        eps.sort_by(|a, b| a.pod.cmp(&b.pod));
        Some((svc, eps))
    }

    async fn sync_slices(&mut self, client: &kube::Client, key: &str) -> kube::Result<()> {
        let ns = ns_of(key).to_string();
        let api = kube::Api::<EndpointSlice>::namespaced(client.clone(), &ns);
        let have = self.slices.get(key).cloned().unwrap_or_default();
        let Some((svc, eps)) = self.desired(key, true) else {
            // Gone or without a selector: this controller's slices go.
            for name in have.keys() {
                match api.delete(name, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
            return Ok(());
        };
        let plan = plan_slices(&have, &eps);
        for (name, ports, members) in plan.write {
            let body = slice_object(&svc, name.as_deref(), &ports, &members);
            match name.as_ref().and_then(|n| have.get(n)) {
                Some(old) => {
                    if same_slice(old, &body) {
                        continue;
                    }
                    let mut body = body;
                    body["metadata"]["resourceVersion"] =
                        json!(old.metadata.resource_version.clone().unwrap_or_default());
                    let s: EndpointSlice =
                        serde_json::from_value(body).map_err(kube::Error::SerdeError)?;
                    api.replace(
                        name.as_deref().unwrap_or_default(),
                        &PostParams::default(),
                        &s,
                    )
                    .await?;
                }
                None => {
                    let s: EndpointSlice =
                        serde_json::from_value(body).map_err(kube::Error::SerdeError)?;
                    api.create(&PostParams::default(), &s).await?;
                }
            }
        }
        for name in plan.delete {
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn sync_endpoints(&mut self, client: &kube::Client, key: &str) -> kube::Result<()> {
        let ns = ns_of(key).to_string();
        let name = &key[ns.len() + 1..];
        let api = kube::Api::<Endpoints>::namespaced(client.clone(), &ns);
        let Some((svc, eps)) = self.desired(key, false) else {
            // The Service is gone: so is its Endpoints object, unless it belongs to a
            // Service without a selector (the user's).
            if !self.services.contains_key(key) {
                match api.delete(name, &DeleteParams::default()).await {
                    Ok(_) | Err(kube::Error::Api(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            return Ok(());
        };
        let want = endpoints_object(&svc, &eps);
        match self.endpoints.get(key) {
            Some(old) => {
                let old_v = serde_json::to_value(old.as_ref()).unwrap_or_default();
                if old_v.get("subsets").cloned().unwrap_or(json!([])) == want["subsets"]
                    && old_v["metadata"]["labels"] == want["metadata"]["labels"]
                {
                    return Ok(());
                }
                let mut body = want;
                body["metadata"]["resourceVersion"] =
                    json!(old.metadata.resource_version.clone().unwrap_or_default());
                let e: Endpoints = serde_json::from_value(body).map_err(kube::Error::SerdeError)?;
                api.replace(name, &PostParams::default(), &e).await?;
            }
            None => {
                let e: Endpoints = serde_json::from_value(want).map_err(kube::Error::SerdeError)?;
                api.create(&PostParams::default(), &e).await?;
            }
        }
        Ok(())
    }
}

/// Whether the Service's selector matches the pod (a Service's selector is equality only).
fn selects(svc: &Service, p: &Pod) -> bool {
    let Some(sel) = svc.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
        return false;
    };
    if sel.is_empty() {
        return false;
    }
    let labels = p.metadata.labels.as_ref();
    sel.iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// The pod as an endpoint of the Service, as Kubernetes' `ShouldPodBeInEndpoints` and
/// endpoint conditions decide.
fn endpoint(svc: &Service, p: &Pod, publish: bool, with_terminating: bool) -> Option<Ep> {
    let status = p.status.as_ref()?;
    let ip = status.pod_ip.clone().filter(|s| !s.is_empty())?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let terminating = p.metadata.deletion_timestamp.is_some();
    if terminating && !with_terminating && !publish {
        return None;
    }
    let spec = p.spec.as_ref()?;
    let serving = crate::owned::is_ready(p);
    let svc_name = svc.metadata.name.clone().unwrap_or_default();
    let hostname = spec
        .hostname
        .clone()
        .filter(|h| !h.is_empty() && spec.subdomain.as_deref() == Some(svc_name.as_str()));
    let mut ports = Vec::new();
    for sp in svc.spec.as_ref()?.ports.iter().flatten() {
        let proto = sp.protocol.clone().unwrap_or_else(|| "TCP".into());
        let number = match &sp.target_port {
            None => Some(sp.port),
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => Some(*n),
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name)) => {
                spec.containers.iter().find_map(|c| {
                    c.ports.iter().flatten().find_map(|cp| {
                        (cp.name.as_deref() == Some(name.as_str())
                            && cp.protocol.as_deref().unwrap_or("TCP") == proto)
                            .then_some(cp.container_port)
                    })
                })
            }
        };
        // A port the pod does not name is left out for that pod, as Kubernetes does.
        if let Some(n) = number {
            ports.push((
                sp.name.clone().unwrap_or_default(),
                n,
                proto,
                sp.app_protocol.clone(),
            ));
        }
    }
    Some(Ep {
        ip,
        ready: publish || (serving && !terminating),
        serving,
        terminating,
        node: spec.node_name.clone().filter(|n| !n.is_empty()),
        hostname,
        pod: p.metadata.name.clone().unwrap_or_default(),
        uid: p.metadata.uid.clone().unwrap_or_default(),
        ports,
    })
}

type Ports = Vec<(String, i32, String, Option<String>)>;

struct Plan {
    /// Slices to write: (existing name or None to create, ports, endpoints).
    write: Vec<(Option<String>, Ports, Vec<Ep>)>,
    delete: Vec<String>,
}

/// Which slice each endpoint goes in. An endpoint stays in the slice that holds it (if the
/// slice's ports still fit it); new endpoints fill slices with room, then new slices.
fn plan_slices(have: &BTreeMap<String, Arc<EndpointSlice>>, eps: &[Ep]) -> Plan {
    let mut groups: BTreeMap<String, (Ports, Vec<&Ep>)> = BTreeMap::new();
    for e in eps {
        let k = serde_json::to_string(&e.ports).unwrap_or_default();
        groups
            .entry(k)
            .or_insert_with(|| (e.ports.clone(), Vec::new()))
            .1
            .push(e);
    }
    let ports_of = |s: &EndpointSlice| -> Ports {
        s.ports
            .iter()
            .flatten()
            .map(|p| {
                (
                    p.name.clone().unwrap_or_default(),
                    p.port.unwrap_or_default(),
                    p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    p.app_protocol.clone(),
                )
            })
            .collect()
    };
    let mut write = Vec::new();
    let mut used: BTreeSet<String> = BTreeSet::new();
    for (ports, members) in groups.into_values() {
        // Existing slices with these ports, and who is in them.
        let mut slots: Vec<(String, Vec<&Ep>)> = Vec::new();
        let mut placed: BTreeSet<&str> = BTreeSet::new();
        for (name, s) in have {
            if used.contains(name) || ports_of(s) != ports {
                continue;
            }
            let inside: BTreeSet<&str> = s
                .endpoints
                .iter()
                .filter_map(|e| e.target_ref.as_ref().and_then(|r| r.name.as_deref()))
                .collect();
            let keep: Vec<&Ep> = members
                .iter()
                .copied()
                .filter(|e| inside.contains(e.pod.as_str()) && !placed.contains(e.pod.as_str()))
                .collect();
            placed.extend(keep.iter().map(|e| e.pod.as_str()));
            used.insert(name.clone());
            slots.push((name.clone(), keep));
        }
        let mut rest = members
            .iter()
            .copied()
            .filter(|e| !placed.contains(e.pod.as_str()));
        for (_, keep) in slots.iter_mut() {
            while keep.len() < MAX_PER_SLICE {
                match rest.next() {
                    Some(e) => keep.push(e),
                    None => break,
                }
            }
        }
        let mut fresh: Vec<Vec<Ep>> = Vec::new();
        for e in rest {
            match fresh.last_mut() {
                Some(f) if f.len() < MAX_PER_SLICE => f.push(e.clone()),
                _ => fresh.push(vec![e.clone()]),
            }
        }
        for (name, mut keep) in slots {
            if keep.is_empty() {
                used.remove(&name);
                continue;
            }
            keep.sort_by(|a, b| a.pod.cmp(&b.pod));
            write.push((
                Some(name),
                ports.clone(),
                keep.into_iter().cloned().collect(),
            ));
        }
        for f in fresh {
            write.push((None, ports.clone(), f));
        }
    }
    // No endpoints at all: one empty slice stays (or is made), as Kubernetes keeps.
    if write.is_empty() {
        let keep = have
            .iter()
            .find(|(_, s)| s.endpoints.is_empty())
            .or_else(|| have.iter().next())
            .map(|(n, _)| n.clone());
        if let Some(n) = &keep {
            used.insert(n.clone());
        }
        write.push((keep, Vec::new(), Vec::new()));
    }
    let delete = have
        .keys()
        .filter(|n| !used.contains(*n))
        .cloned()
        .collect();
    Plan { write, delete }
}

fn service_labels(svc: &Service) -> serde_json::Map<String, Value> {
    let mut labels: serde_json::Map<String, Value> = svc
        .metadata
        .labels
        .iter()
        .flatten()
        .filter(|(k, _)| k.as_str() != MANAGED_BY_LABEL && k.as_str() != SERVICE_NAME_LABEL)
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    if svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None") {
        labels.insert("service.kubernetes.io/headless".into(), json!(""));
    }
    labels
}

fn slice_object(svc: &Service, name: Option<&str>, ports: &Ports, eps: &[Ep]) -> Value {
    let svc_name = svc.metadata.name.clone().unwrap_or_default();
    let ns = svc.metadata.namespace.clone().unwrap_or_default();
    let mut labels = service_labels(svc);
    labels.insert(SERVICE_NAME_LABEL.into(), json!(svc_name));
    labels.insert(MANAGED_BY_LABEL.into(), json!(MANAGED_BY));
    let mut meta = json!({
        "namespace": ns,
        "labels": labels,
        "ownerReferences": [{
            "apiVersion": "v1", "kind": "Service", "name": svc_name,
            "uid": svc.metadata.uid.clone().unwrap_or_default(),
            "controller": true, "blockOwnerDeletion": true,
        }],
    });
    match name {
        Some(n) => meta["name"] = json!(n),
        None => meta["generateName"] = json!(format!("{svc_name}-")),
    }
    let endpoints: Vec<Value> = eps
        .iter()
        .map(|e| {
            let mut v = json!({
                "addresses": [e.ip],
                "conditions": {"ready": e.ready, "serving": e.serving, "terminating": e.terminating},
                "targetRef": {"kind": "Pod", "namespace": ns, "name": e.pod, "uid": e.uid},
            });
            if let Some(n) = &e.node {
                v["nodeName"] = json!(n);
            }
            if let Some(h) = &e.hostname {
                v["hostname"] = json!(h);
            }
            v
        })
        .collect();
    let ports: Vec<Value> = ports
        .iter()
        .map(|(name, port, proto, app)| {
            let mut v = json!({"name": name, "port": port, "protocol": proto});
            if let Some(a) = app {
                v["appProtocol"] = json!(a);
            }
            v
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": meta,
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": ports,
    })
}

/// Whether the stored slice already says what `want` says.
fn same_slice(old: &EndpointSlice, want: &Value) -> bool {
    let old = serde_json::to_value(old).unwrap_or_default();
    old["endpoints"] == want["endpoints"]
        && old.get("ports").cloned().unwrap_or(json!([])) == want["ports"]
        && old["metadata"]["labels"] == want["metadata"]["labels"]
}

/// The Endpoints object: ready addresses and not-ready ones, grouped by ports.
fn endpoints_object(svc: &Service, eps: &[Ep]) -> Value {
    let svc_name = svc.metadata.name.clone().unwrap_or_default();
    let ns = svc.metadata.namespace.clone().unwrap_or_default();
    let mut subsets: BTreeMap<String, (Ports, Vec<Value>, Vec<Value>)> = BTreeMap::new();
    for e in eps {
        if e.ports.is_empty() && svc.spec.as_ref().is_some_and(|s| s.ports.is_some()) {
            continue;
        }
        let k = serde_json::to_string(&e.ports).unwrap_or_default();
        let entry = subsets
            .entry(k)
            .or_insert_with(|| (e.ports.clone(), Vec::new(), Vec::new()));
        let mut a = json!({
            "ip": e.ip,
            "targetRef": {"kind": "Pod", "namespace": ns, "name": e.pod, "uid": e.uid},
        });
        if let Some(n) = &e.node {
            a["nodeName"] = json!(n);
        }
        if let Some(h) = &e.hostname {
            a["hostname"] = json!(h);
        }
        if e.ready {
            entry.1.push(a);
        } else {
            entry.2.push(a);
        }
    }
    let subsets: Vec<Value> = subsets
        .into_values()
        .map(|(ports, ready, not_ready)| {
            let mut s = json!({
                "ports": ports.iter().map(|(name, port, proto, app)| {
                    let mut v = json!({"port": port, "protocol": proto});
                    if !name.is_empty() {
                        v["name"] = json!(name);
                    }
                    if let Some(a) = app {
                        v["appProtocol"] = json!(a);
                    }
                    v
                }).collect::<Vec<_>>(),
            });
            if !ready.is_empty() {
                s["addresses"] = json!(ready);
            }
            if !not_ready.is_empty() {
                s["notReadyAddresses"] = json!(not_ready);
            }
            s
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": svc_name, "namespace": ns, "labels": service_labels(svc)},
        "subsets": subsets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(pod: &str, port: i32) -> Ep {
        Ep {
            ip: format!("10.42.0.{}", pod.len()),
            ready: true,
            serving: true,
            terminating: false,
            node: None,
            hostname: None,
            pod: pod.into(),
            uid: String::new(),
            ports: vec![("http".into(), port, "TCP".into(), None)],
        }
    }

    fn slice(name: &str, port: i32, pods: &[&str]) -> (String, Arc<EndpointSlice>) {
        let v = json!({
            "metadata": {"name": name},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
            "endpoints": pods.iter().map(|p| json!({
                "addresses": ["10.0.0.1"], "targetRef": {"kind": "Pod", "name": p}
            })).collect::<Vec<_>>(),
        });
        (name.into(), Arc::new(serde_json::from_value(v).unwrap()))
    }

    #[test]
    fn endpoints_stay_in_their_slice_and_new_ones_fill_room() {
        let have: BTreeMap<_, _> = [slice("s-a", 80, &["p1", "p2"]), slice("s-b", 80, &["p3"])]
            .into_iter()
            .collect();
        let plan = plan_slices(&have, &[ep("p1", 80), ep("p3", 80), ep("p4", 80)]);
        let names: Vec<(Option<String>, Vec<String>)> = plan
            .write
            .iter()
            .map(|(n, _, e)| (n.clone(), e.iter().map(|e| e.pod.clone()).collect()))
            .collect();
        assert_eq!(
            names,
            vec![
                (Some("s-a".into()), vec!["p1".into(), "p4".into()]),
                (Some("s-b".into()), vec!["p3".into()]),
            ]
        );
        assert!(plan.delete.is_empty());
    }

    #[test]
    fn different_port_numbers_take_different_slices_and_empty_ones_go() {
        let have: BTreeMap<_, _> = [slice("s-a", 80, &["p1"])].into_iter().collect();
        let plan = plan_slices(&have, &[ep("p2", 8080)]);
        assert_eq!(plan.write.len(), 1);
        assert_eq!(plan.write[0].0, None);
        assert_eq!(plan.write[0].1[0].1, 8080);
        assert_eq!(plan.delete, vec!["s-a".to_string()]);
    }

    #[test]
    fn a_service_without_endpoints_keeps_one_empty_slice() {
        let have: BTreeMap<_, _> = [slice("s-a", 80, &["p1"]), slice("s-b", 80, &["p2"])]
            .into_iter()
            .collect();
        let plan = plan_slices(&have, &[]);
        assert_eq!(plan.write.len(), 1);
        assert_eq!(plan.write[0].0.as_deref(), Some("s-a"));
        assert!(plan.write[0].2.is_empty());
        assert_eq!(plan.delete, vec!["s-b".to_string()]);
    }

    fn svc(spec: serde_json::Value) -> Service {
        serde_json::from_value(
            json!({"metadata": {"name": "web", "namespace": "ns"}, "spec": spec}),
        )
        .unwrap()
    }

    fn pod(ready: bool, deleting: bool, ports: serde_json::Value) -> Pod {
        let mut p = json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": ports}]},
            "status": {"podIP": "10.42.0.9", "phase": "Running",
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        });
        if deleting {
            p["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        serde_json::from_value(p).unwrap()
    }

    #[test]
    fn named_ports_resolve_per_pod_and_conditions_follow_readiness_and_deletion() {
        let s = svc(json!({"selector": {"app": "web"}, "ports": [
            {"name": "http", "port": 80, "targetPort": "web"},
            {"name": "metrics", "port": 9100, "targetPort": 9100},
            {"name": "grpc", "port": 81, "targetPort": "grpc"},
        ]}));
        let ports = json!([{"name": "web", "containerPort": 8080}]);
        let e = endpoint(&s, &pod(true, false, ports.clone()), false, true).unwrap();
        // A named port the pod lacks is left out for that pod.
        assert_eq!(
            e.ports
                .iter()
                .map(|p| (p.0.as_str(), p.1))
                .collect::<Vec<_>>(),
            [("http", 8080), ("metrics", 9100)]
        );
        assert!(e.ready && e.serving && !e.terminating);
        assert_eq!(e.node.as_deref(), Some("n1"));
        // Not ready: listed, not ready.
        let e = endpoint(&s, &pod(false, false, ports.clone()), false, true).unwrap();
        assert!(!e.ready && !e.serving);
        // Being deleted: terminating and not ready in slices; gone from Endpoints.
        let e = endpoint(&s, &pod(true, true, ports.clone()), false, true).unwrap();
        assert!(!e.ready && e.serving && e.terminating);
        assert!(endpoint(&s, &pod(true, true, ports.clone()), false, false).is_none());
        // publishNotReadyAddresses: ready regardless, and kept in Endpoints while deleted.
        let e = endpoint(&s, &pod(false, false, ports.clone()), true, true).unwrap();
        assert!(e.ready);
        assert!(endpoint(&s, &pod(true, true, ports), true, false).is_some());
    }

    #[test]
    fn endpoints_objects_split_ready_and_not_ready_addresses() {
        let s = svc(json!({"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80}]}));
        let mut a = ep("a", 80);
        let mut b = ep("bb", 80);
        b.ready = false;
        a.hostname = Some("a".into());
        let v = endpoints_object(&s, &[a, b]);
        assert_eq!(v["subsets"][0]["addresses"][0]["hostname"], "a");
        assert_eq!(
            v["subsets"][0]["notReadyAddresses"][0]["targetRef"]["name"],
            "bb"
        );
        assert_eq!(v["subsets"][0]["ports"][0]["name"], "http");
    }

    #[test]
    fn slices_hold_at_most_a_hundred() {
        let eps: Vec<Ep> = (0..250).map(|i| ep(&format!("p{i:03}"), 80)).collect();
        let plan = plan_slices(&BTreeMap::new(), &eps);
        let sizes: Vec<usize> = plan.write.iter().map(|w| w.2.len()).collect();
        assert_eq!(sizes, vec![100, 100, 50]);
    }
}
