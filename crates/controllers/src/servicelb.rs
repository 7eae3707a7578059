//! The built-in service load balancer, as k3s's ServiceLB: a Service of type LoadBalancer
//! (without a `loadBalancerClass`) is served on every Ready node's address at its ports,
//! by the nodes' proxies, and its `status.loadBalancer.ingress` lists those addresses.
//! A port (and protocol) can serve one LoadBalancer Service: a later Service asking for a
//! taken port gets no ingress and a `PortConflict` warning event until the port is free.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::{Patch, PatchParams};
use serde_json::json;

enum Change {
    Service(Option<Arc<Service>>, String),
    Node(Option<Arc<Node>>, String),
}

fn ready_ip(n: &Node) -> Option<String> {
    let st = n.status.as_ref()?;
    let ready = crate::nodelifecycle::is_ready(n);
    let unschedulable = n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true);
    if !ready || unschedulable {
        return None;
    }
    let addrs = st.addresses.as_ref()?;
    addrs
        .iter()
        .find(|a| a.type_ == "ExternalIP")
        .or_else(|| addrs.iter().find(|a| a.type_ == "InternalIP"))
        .map(|a| a.address.clone())
}

fn is_ours(s: &Service) -> bool {
    s.spec.as_ref().is_some_and(|sp| {
        sp.type_.as_deref() == Some("LoadBalancer") && sp.load_balancer_class.is_none()
    })
}

/// The Service's (port, protocol) pairs.
fn ports(s: &Service) -> Vec<(i32, String)> {
    s.spec
        .as_ref()
        .and_then(|sp| sp.ports.as_ref())
        .into_iter()
        .flatten()
        .map(|p| (p.port, p.protocol.clone().unwrap_or_else(|| "TCP".into())))
        .collect()
}

/// Runs the controller until the process ends.
pub async fn run(client: kube::Client) {
    let all = kube::runtime::watcher::Config::default;
    let services = crate::follow_keyed(kube::Api::<Service>::all(client.clone()), all())
        .map(|(k, o)| Change::Service(o, k));
    let nodes = crate::follow_keyed(kube::Api::<Node>::all(client.clone()), all())
        .map(|(k, o)| Change::Node(o, k));
    let mut events = futures::stream::select(services.boxed(), nodes.boxed());
    let mut svcs: BTreeMap<String, Arc<Service>> = BTreeMap::new();
    let mut node_ips: BTreeMap<String, String> = BTreeMap::new();
    let mut warned: BTreeSet<String> = BTreeSet::new();
    while let Some(first) = events.next().await {
        let mut batch = vec![first];
        while let Some(Some(e)) = futures::FutureExt::now_or_never(events.next()) {
            batch.push(e);
        }
        for c in batch {
            match c {
                Change::Service(Some(s), k) => {
                    svcs.insert(k, s);
                }
                Change::Service(None, k) => {
                    svcs.remove(&k);
                    warned.remove(&k);
                }
                Change::Node(n, k) => match n.as_deref().and_then(ready_ip) {
                    Some(ip) => {
                        node_ips.insert(k, ip);
                    }
                    None => {
                        node_ips.remove(&k);
                    }
                },
            }
        }
        let mut ips: Vec<String> = node_ips.values().cloned().collect();
        ips.sort();
        ips.dedup();
        // Oldest first: the first Service to take a port keeps it.
        let mut ours: Vec<(&String, &Arc<Service>)> =
            svcs.iter().filter(|(_, s)| is_ours(s)).collect();
        ours.sort_by_key(|(k, s)| (s.metadata.creation_timestamp.clone(), (*k).clone()));
        let mut taken: BTreeMap<(i32, String), String> = BTreeMap::new();
        for (key, s) in ours {
            let conflict = ports(s)
                .into_iter()
                .find_map(|p| taken.get(&p).map(|other| (p, other.clone())));
            let want: Vec<String> = match &conflict {
                Some(_) => Vec::new(),
                None => {
                    for p in ports(s) {
                        taken.insert(p, key.clone());
                    }
                    ips.clone()
                }
            };
            if let Some(((port, proto), other)) = &conflict {
                if warned.insert(key.clone()) {
                    crate::event(
                        &client,
                        "service-lb-controller",
                        json!({"kind": "Service", "apiVersion": "v1",
                               "namespace": s.metadata.namespace, "name": s.metadata.name,
                               "uid": s.metadata.uid}),
                        "Warning",
                        "PortConflict",
                        &format!(
                            "port {port}/{proto} is already served for Service {other}; waiting for it to be free"
                        ),
                    )
                    .await;
                }
            } else {
                warned.remove(key);
            }
            let have: Vec<String> = s
                .status
                .as_ref()
                .and_then(|st| st.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|i| i.ip.clone())
                .collect();
            if have == want {
                continue;
            }
            let ns = s.metadata.namespace.clone().unwrap_or_default();
            let name = s.metadata.name.clone().unwrap_or_default();
            let api = kube::Api::<Service>::namespaced(client.clone(), &ns);
            let ingress: Vec<serde_json::Value> = want
                .iter()
                .map(|ip| json!({"ip": ip, "ipMode": "VIP"}))
                .collect();
            let patch = json!({"status": {"loadBalancer": {"ingress": ingress}}});
            if let Err(e) = api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                eprintln!("berth controllers: load balancer of service {key}: {e}");
            }
        }
    }
}
