//! The endpoints of the cluster DNS Service (`kube-system/kube-dns`): every node's agent
//! serves DNS on its pod network's gateway (the first address of its pod CIDR), so the
//! Service has one endpoint per node, ready while the node is. With the Service's
//! `internalTrafficPolicy: Local`, a pod's queries go to its own node's server.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Endpoints, Node};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Patch, PatchParams};
use serde_json::{json, Value};

const NAMESPACE: &str = "kube-system";
const SERVICE: &str = "kube-dns";
const MANAGER: &str = "berth-cluster-dns";
const PER_SLICE: usize = 100;

/// A node's DNS address: the gateway of its pod CIDR.
pub fn node_dns_address(pod_cidr: &str) -> Option<Ipv4Addr> {
    let (net, len) = pod_cidr.split_once('/')?;
    let net: Ipv4Addr = net.parse().ok()?;
    let len: u32 = len.parse().ok()?;
    (len < 31).then(|| Ipv4Addr::from(u32::from(net) + 1))
}

/// Runs the controller until the process ends.
pub async fn run(client: kube::Client) {
    let mut nodes: BTreeMap<String, (Ipv4Addr, bool)> = BTreeMap::new();
    let mut events = crate::follow(kube::Api::<Node>::all(client.clone())).boxed();
    let mut written: Option<BTreeMap<String, (Ipv4Addr, bool)>> = None;
    while let Some(first) = events.next().await {
        let mut batch = vec![first];
        while let Some(Some(e)) = futures::FutureExt::now_or_never(events.next()) {
            batch.push(e);
        }
        for e in batch {
            match e {
                crate::Seen::Applied(n) => {
                    let name = n.metadata.name.clone().unwrap_or_default();
                    match n
                        .spec
                        .as_ref()
                        .and_then(|s| s.pod_cidr.as_deref())
                        .and_then(node_dns_address)
                    {
                        Some(ip) => nodes.insert(name, (ip, crate::nodelifecycle::is_ready(&n))),
                        None => nodes.remove(&name),
                    };
                }
                crate::Seen::Deleted(n) => {
                    nodes.remove(&n.metadata.name.clone().unwrap_or_default());
                }
                crate::Seen::Listed(keys) => {
                    nodes.retain(|name, _| keys.contains(&format!("/{name}")));
                }
                crate::Seen::Nothing => {}
            }
        }
        if written.as_ref() == Some(&nodes) {
            continue;
        }
        match write(&client, &nodes).await {
            Ok(()) => written = Some(nodes.clone()),
            Err(e) => {
                eprintln!("berth controllers: endpoints of {NAMESPACE}/{SERVICE}: {e}");
                written = None;
            }
        }
    }
}

async fn write(
    client: &kube::Client,
    nodes: &BTreeMap<String, (Ipv4Addr, bool)>,
) -> kube::Result<()> {
    let pp = PatchParams::apply(MANAGER).force();
    let ports = json!([
        {"name": "dns", "port": 53, "protocol": "UDP"},
        {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
    ]);
    let all: Vec<(&String, &(Ipv4Addr, bool))> = nodes.iter().collect();
    let chunks: Vec<&[(&String, &(Ipv4Addr, bool))]> = if all.is_empty() {
        vec![&[]]
    } else {
        all.chunks(PER_SLICE).collect()
    };
    let slices = kube::Api::<EndpointSlice>::namespaced(client.clone(), NAMESPACE);
    for (i, chunk) in chunks.iter().enumerate() {
        let name = format!("{SERVICE}-nodes-{i}");
        let body = json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": NAMESPACE, "labels": {
                "kubernetes.io/service-name": SERVICE,
                "endpointslice.kubernetes.io/managed-by": MANAGER,
            }},
            "addressType": "IPv4",
            "endpoints": chunk.iter().map(|(node, (ip, ready))| json!({
                "addresses": [ip.to_string()],
                "conditions": {"ready": ready, "serving": ready, "terminating": false},
                "nodeName": node,
            })).collect::<Vec<Value>>(),
            "ports": ports,
        });
        slices.patch(&name, &pp, &Patch::Apply(body)).await?;
    }
    // Slices beyond the ones needed now go.
    let lp = kube::api::ListParams::default()
        .labels(&format!("endpointslice.kubernetes.io/managed-by={MANAGER}"));
    for s in slices.list(&lp).await?.items {
        let name = s.metadata.name.clone().unwrap_or_default();
        let idx = name
            .strip_prefix(&format!("{SERVICE}-nodes-"))
            .and_then(|i| i.parse::<usize>().ok());
        if idx.is_none_or(|i| i >= chunks.len()) {
            let _ = slices.delete(&name, &Default::default()).await;
        }
    }
    let (ready, not_ready): (Vec<_>, Vec<_>) = nodes.iter().partition(|(_, (_, r))| *r);
    let addr = |(node, (ip, _)): &(&String, &(Ipv4Addr, bool))| json!({"ip": ip.to_string(), "nodeName": node});
    let mut subset = json!({"ports": ports});
    if !ready.is_empty() {
        subset["addresses"] = json!(ready.iter().map(addr).collect::<Vec<_>>());
    }
    if !not_ready.is_empty() {
        subset["notReadyAddresses"] = json!(not_ready.iter().map(addr).collect::<Vec<_>>());
    }
    let eps = json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": SERVICE, "namespace": NAMESPACE,
            "labels": {"k8s-app": "kube-dns"}},
        "subsets": if nodes.is_empty() { json!([]) } else { json!([subset]) },
    });
    kube::Api::<Endpoints>::namespaced(client.clone(), NAMESPACE)
        .patch(SERVICE, &pp, &Patch::Apply(eps))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_nodes_dns_address_is_its_pod_gateway() {
        assert_eq!(
            super::node_dns_address("10.42.3.0/24"),
            Some("10.42.3.1".parse().unwrap())
        );
        assert_eq!(super::node_dns_address("bad"), None);
    }
}
