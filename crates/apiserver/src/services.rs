//! What the API server allocates: for Services, cluster IPs from the service CIDR
//! (10.43.0.0/16) and node ports from 30000–32767; for Nodes, a pod CIDR (a /24 of the
//! cluster CIDR 10.42.0.0/16), as Kubernetes' node IPAM controller does.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::api::Api;
use crate::status::{ApiError, ApiResult, FieldError};

static ALLOC: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub const SERVICE_CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 43, 0, 0), 16);

/// The cluster CIDR pods take their addresses from, a /24 per node.
pub const CLUSTER_CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 42, 0, 0), 16);

/// Gives a new Node without `spec.podCIDR` the lowest /24 of the cluster CIDR no other
/// Node holds. The lock is returned held until the Node is stored. When every block is
/// taken the Node is stored without one (as Kubernetes' node IPAM leaves it, with a
/// warning), and the blocks are counted again at most every 10 s.
pub async fn allocate_pod_cidr(
    api: &Api,
    node: &mut Value,
) -> ApiResult<tokio::sync::MutexGuard<'static, ()>> {
    static NODES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let guard = NODES.lock().await;
    if node
        .pointer("/spec/podCIDR")
        .and_then(Value::as_str)
        .is_some_and(|s| !s.is_empty())
    {
        return Ok(guard);
    }
    static EXHAUSTED: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);
    let recently_full = EXHAUSTED
        .lock()
        .map(|e| e.is_some_and(|at| at.elapsed() < std::time::Duration::from_secs(10)))
        .unwrap_or(false);
    if recently_full {
        return Ok(guard);
    }
    let list = api
        .store
        .list(store::ListOptions {
            prefix: "/registry/core/nodes/",
            ..Default::default()
        })
        .await?;
    let used: HashSet<String> = list
        .kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice::<Value>(&kv.value).ok())
        .filter_map(|v| v.pointer("/spec/podCIDR")?.as_str().map(str::to_string))
        .collect();
    let base = u32::from(CLUSTER_CIDR.0);
    let count = 1u32 << (24 - CLUSTER_CIDR.1);
    let Some(free) = (0..count)
        .map(|i| format!("{}/24", Ipv4Addr::from(base + (i << 8))))
        .find(|c| !used.contains(c))
    else {
        eprintln!(
            "berth server: no pod CIDR is left for node {}: all {count} /24 blocks of {}/{} are taken (CIDRNotAvailable)",
            node.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default(),
            CLUSTER_CIDR.0,
            CLUSTER_CIDR.1
        );
        if let Ok(mut e) = EXHAUSTED.lock() {
            *e = Some(std::time::Instant::now());
        }
        return Ok(guard);
    };
    node["spec"]["podCIDR"] = json!(free);
    node["spec"]["podCIDRs"] = json!([free]);
    Ok(guard)
}

fn in_cidr(ip: Ipv4Addr) -> bool {
    let mask = u32::MAX << (32 - SERVICE_CIDR.1);
    (u32::from(ip) & mask) == u32::from(SERVICE_CIDR.0)
}

/// Fills `spec.clusterIP(s)` and node ports of a new Service.
/// The allocation lock is returned held: the caller keeps it until the Service is stored,
/// so two creates never take the same address or port.
pub async fn allocate(
    api: &Api,
    svc: &mut Value,
) -> ApiResult<tokio::sync::MutexGuard<'static, ()>> {
    let guard = ALLOC.lock().await;
    let list = api
        .store
        .list(store::ListOptions {
            prefix: "/registry/core/services/",
            ..Default::default()
        })
        .await?;
    let mut used_ips = HashSet::new();
    let mut used_ports = HashSet::new();
    for kv in &list.kvs {
        let v: Value = serde_json::from_slice(&kv.value).unwrap_or_default();
        if let Some(ip) = v
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<Ipv4Addr>().ok())
        {
            used_ips.insert(ip);
        }
        for p in v
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(n) = p.get("nodePort").and_then(Value::as_i64) {
                used_ports.insert(n);
            }
        }
    }
    let name = svc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let kind = api
        .registry
        .find("", "v1", "services")
        .expect("services are served");
    let ty = svc
        .pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_string();
    if ty != "ExternalName" {
        match svc
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .map(String::from)
        {
            Some(ip) if ip == "None" => {
                svc["spec"]["clusterIPs"] = json!(["None"]);
            }
            Some(ip) if !ip.is_empty() => {
                let parsed: Ipv4Addr = ip.parse().map_err(|_| {
                    ApiError::invalid(
                        &kind,
                        &name,
                        vec![FieldError::invalid(
                            "spec.clusterIPs[0]",
                            ip.as_str(),
                            "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                        )],
                    )
                })?;
                if !in_cidr(parsed) {
                    return Err(ApiError::invalid(&kind, &name, vec![FieldError::invalid_raw("spec.clusterIPs", format!("[]string{{\"{ip}\"}}"), format!("failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is 10.43.0.0/16"))]));
                }
                if used_ips.contains(&parsed) {
                    return Err(ApiError::invalid(
                        &kind,
                        &name,
                        vec![FieldError::invalid_raw(
                            "spec.clusterIPs",
                            format!("[]string{{\"{ip}\"}}"),
                            format!("failed to allocate IP {ip}: provided IP is already allocated"),
                        )],
                    ));
                }
                svc["spec"]["clusterIPs"] = json!([ip]);
            }
            _ => {
                let base = u32::from(SERVICE_CIDR.0);
                let size = 1u32 << (32 - SERVICE_CIDR.1);
                let mut r = [0u8; 4];
                let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut r);
                let start = u32::from_le_bytes(r) % size;
                let ip = (0..size)
                    .map(|i| Ipv4Addr::from(base + (start + i) % size))
                    .find(|ip| {
                        let o = u32::from(*ip) - base;
                        // .0 is the network, the last is broadcast; .1 is the kubernetes Service, .10 cluster DNS.
                        o > 10 && o < size - 1 && !used_ips.contains(ip)
                    })
                    .ok_or_else(|| {
                        ApiError::internal("failed to allocate a serviceIP: range is full")
                    })?;
                svc["spec"]["clusterIP"] = json!(ip.to_string());
                svc["spec"]["clusterIPs"] = json!([ip.to_string()]);
            }
        }
    }
    let needs_ports = ty == "NodePort"
        || (ty == "LoadBalancer"
            && svc.pointer("/spec/allocateLoadBalancerNodePorts") != Some(&json!(false)));
    if needs_ports {
        let mut next = 30000 + (u32::from_le_bytes([1, 2, 3, 4]) % 2768) as i64;
        for (i, p) in svc
            .pointer_mut("/spec/ports")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
            .enumerate()
        {
            match p.get("nodePort").and_then(Value::as_i64) {
                Some(n) => {
                    if !(30000..=32767).contains(&n) {
                        return Err(ApiError::invalid(&kind, &name, vec![FieldError::invalid_raw(format!("spec.ports[{i}].nodePort"), n.to_string(), "provided port is not in the valid range. The range of valid ports is 30000-32767")]));
                    }
                    if !used_ports.insert(n) {
                        return Err(ApiError::invalid(
                            &kind,
                            &name,
                            vec![FieldError::invalid_raw(
                                format!("spec.ports[{i}].nodePort"),
                                n.to_string(),
                                "provided port is already allocated",
                            )],
                        ));
                    }
                }
                None => {
                    let mut tries = 0;
                    while used_ports.contains(&next) && tries < 2768 {
                        next = if next >= 32767 { 30000 } else { next + 1 };
                        tries += 1;
                    }
                    used_ports.insert(next);
                    p["nodePort"] = json!(next);
                }
            }
        }
    }
    Ok(guard)
}

/// An update keeps what was allocated when the new object leaves it out (as Kubernetes'
/// `patchAllocatedValues`): the cluster IPs, and the node ports of ports that stay.
pub fn keep_allocations(old: &Value, new: &mut Value) {
    let ty = new
        .pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_string();
    if ty == "ExternalName" {
        return;
    }
    let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    for k in ["clusterIP", "clusterIPs"] {
        let missing = spec.get(k).is_none_or(|v| {
            v.is_null() || v.as_str() == Some("") || v.as_array().is_some_and(|a| a.is_empty())
        });
        if missing {
            if let Some(v) = old.pointer(&format!("/spec/{k}")) {
                spec.insert(k.into(), v.clone());
            }
        }
    }
    if ty == "NodePort" || ty == "LoadBalancer" {
        let old_ports = old
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for p in spec
            .get_mut("ports")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if p.get("nodePort").is_some() {
                continue;
            }
            let same = old_ports.iter().find(|o| {
                o.get("port") == p.get("port")
                    && o.get("protocol").or(Some(&json!("TCP")))
                        == p.get("protocol").or(Some(&json!("TCP")))
            });
            if let Some(n) = same.and_then(|o| o.get("nodePort")) {
                p["nodePort"] = n.clone();
            }
        }
    }
}

/// The cluster DNS Service's address (`kube-system/kube-dns`).
pub const DNS_IP: &str = "10.43.0.10";
/// The `kubernetes` Service's address.
pub const API_IP: &str = "10.43.0.1";

/// Creates the Services every cluster has, if missing: `default/kubernetes` (the API, on
/// [`API_IP`]:443) with this server's address among its endpoints, and
/// `kube-system/kube-dns` (on [`DNS_IP`]:53, served on each node by its agent, so its
/// traffic stays on the node: `internalTrafficPolicy: Local`; the controllers keep its
/// endpoints, one per node).
pub async fn ensure_cluster_services(
    api: &std::sync::Arc<Api>,
    advertise: std::net::SocketAddr,
) -> Result<(), store::StoreError> {
    let reg = &api.registry;
    let (Some(svc), Some(eps), Some(slices)) = (
        reg.find("", "v1", "services"),
        reg.find("", "v1", "endpoints"),
        reg.find("discovery.k8s.io", "v1", "endpointslices"),
    ) else {
        return Ok(());
    };
    let service = |ns: &str, name: &str, ip: &str, labels: Value, ports: Value, itp: &str| {
        json!({
            "kind": "Service", "apiVersion": "v1",
            "metadata": {"name": name, "namespace": ns, "uid": crate::api::new_uid(),
                "creationTimestamp": crate::now(), "labels": labels},
            "spec": {
                "type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
                "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                "ports": ports, "sessionAffinity": "None", "internalTrafficPolicy": itp,
            },
            "status": {"loadBalancer": {}},
        })
    };
    crate::namespaces::ensure(api, &svc.key(Some("default"), "kubernetes"), || {
        service(
            "default",
            "kubernetes",
            API_IP,
            json!({"component": "apiserver", "provider": "kubernetes"}),
            json!([{"name": "https", "port": 443, "protocol": "TCP", "targetPort": advertise.port()}]),
            "Cluster",
        )
    })
    .await?;
    crate::namespaces::ensure(api, &svc.key(Some("kube-system"), "kube-dns"), || {
        service(
            "kube-system",
            "kube-dns",
            DNS_IP,
            json!({"k8s-app": "kube-dns", "kubernetes.io/cluster-service": "true",
                   "kubernetes.io/name": "CoreDNS"}),
            json!([
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
            ]),
            "Local",
        )
    })
    .await?;
    // This server among the API's endpoints (other servers add themselves).
    let ip = advertise.ip().to_string();
    let port = advertise.port();
    let ep_key = eps.key(Some("default"), "kubernetes");
    let slice_key = slices.key(Some("default"), "kubernetes");
    for _ in 0..5 {
        let cur = api.store.get(&ep_key, 0).await?;
        let mut obj: Value = match &cur {
            Some(kv) => serde_json::from_slice(&kv.value).unwrap_or_default(),
            None => json!({
                "kind": "Endpoints", "apiVersion": "v1",
                "metadata": {"name": "kubernetes", "namespace": "default",
                    "uid": crate::api::new_uid(), "creationTimestamp": crate::now(),
                    "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
                "subsets": [],
            }),
        };
        let mut addrs: Vec<String> = obj
            .pointer("/subsets/0/addresses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|a| a["ip"].as_str().map(String::from))
            .collect();
        let same_port = obj
            .pointer("/subsets/0/ports/0/port")
            .and_then(Value::as_u64)
            == Some(u64::from(port));
        if addrs.contains(&ip) && same_port {
            break;
        }
        if !same_port {
            addrs.clear();
        }
        addrs.push(ip.clone());
        addrs.sort();
        obj["subsets"] = json!([{
            "addresses": addrs.iter().map(|a| json!({"ip": a})).collect::<Vec<_>>(),
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        }]);
        if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
        let bytes = serde_json::to_vec(&obj).unwrap_or_default();
        let done = match &cur {
            Some(kv) => api.store.update(&ep_key, bytes, kv.mod_revision).await,
            None => api.store.create(&ep_key, bytes).await,
        };
        match done {
            Ok(_) => {
                let slice = json!({
                    "kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
                    "metadata": {"name": "kubernetes", "namespace": "default",
                        "uid": crate::api::new_uid(), "creationTimestamp": crate::now(),
                        "labels": {"kubernetes.io/service-name": "kubernetes"}},
                    "addressType": "IPv4",
                    "endpoints": addrs.iter().map(|a| json!({
                        "addresses": [a], "conditions": {"ready": true, "serving": true, "terminating": false},
                    })).collect::<Vec<_>>(),
                    "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
                });
                let bytes = serde_json::to_vec(&slice).unwrap_or_default();
                match api.store.get(&slice_key, 0).await? {
                    Some(kv) => {
                        let _ = api.store.update(&slice_key, bytes, kv.mod_revision).await;
                    }
                    None => {
                        let _ = api.store.create(&slice_key, bytes).await;
                    }
                }
                break;
            }
            Err(store::StoreError::Conflict { .. } | store::StoreError::AlreadyExists(_)) => {
                continue
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// How long a server's identity Lease lasts without renewal before its address leaves the
/// `kubernetes` endpoints.
const IDENTITY_LEASE_SECONDS: i64 = 15;

fn write_api_endpoints(addrs: &[String], port: u16) -> (Value, Value) {
    let ep = json!({
        "kind": "Endpoints", "apiVersion": "v1",
        "metadata": {"name": "kubernetes", "namespace": "default",
            "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{
            "addresses": addrs.iter().map(|a| json!({"ip": a})).collect::<Vec<_>>(),
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        }],
    });
    let slice = json!({
        "kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
        "metadata": {"name": "kubernetes", "namespace": "default",
            "labels": {"kubernetes.io/service-name": "kubernetes"}},
        "addressType": "IPv4",
        "endpoints": addrs.iter().map(|a| json!({
            "addresses": [a], "conditions": {"ready": true, "serving": true, "terminating": false},
        })).collect::<Vec<_>>(),
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
    });
    (ep, slice)
}

/// Kubernetes' lease endpoint reconciler: every server keeps an identity Lease
/// (`kube-system/apiserver-<id>`, the address it serves on in an annotation) and every
/// server rewrites the `kubernetes` Endpoints and EndpointSlice to the addresses of the
/// Leases still renewed, so a dead server leaves them within
/// [`IDENTITY_LEASE_SECONDS`] and agents stop trying it.
pub async fn keep_registered(api: Arc<Api>, advertise: SocketAddr, id: String) {
    let key = format!("/registry/coordination.k8s.io/leases/kube-system/apiserver-{id}");
    let address = advertise.to_string();
    loop {
        // A MicroTime, as Leases carry it.
        let now = {
            let n = timefmt::now_nanos();
            let full = timefmt::rfc3339((n / 1_000_000_000) as i64, (n % 1_000_000_000) as u32);
            format!("{}Z", &full[..full.len() - 4])
        };
        let lease = json!({
            "kind": "Lease", "apiVersion": "coordination.k8s.io/v1",
            "metadata": {"name": format!("apiserver-{id}"), "namespace": "kube-system",
                "labels": {"apiserver.kubernetes.io/identity": "kube-apiserver"},
                "annotations": {"berth.io/advertise-address": address},
                "uid": crate::api::new_uid(), "creationTimestamp": crate::now()},
            "spec": {"holderIdentity": format!("apiserver-{id}"),
                     "leaseDurationSeconds": IDENTITY_LEASE_SECONDS, "renewTime": now},
        });
        let renewed = match api.store.get(&key, 0).await {
            Ok(Some(kv)) => {
                let mut cur: Value = serde_json::from_slice(&kv.value).unwrap_or_default();
                cur["spec"]["renewTime"] = json!(now);
                cur["metadata"]["annotations"]["berth.io/advertise-address"] = json!(address);
                api.store
                    .update(
                        &key,
                        serde_json::to_vec(&cur).unwrap_or_default(),
                        kv.mod_revision,
                    )
                    .await
                    .map(drop)
            }
            Ok(None) => api
                .store
                .create(&key, serde_json::to_vec(&lease).unwrap_or_default())
                .await
                .map(drop),
            Err(e) => Err(e),
        };
        if renewed.is_ok() {
            reconcile_api_endpoints(&api, advertise).await;
        }
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    }
}

/// The `kubernetes` endpoints from the live identity Leases (those on this server's port),
/// this server's own included (its Lease was just renewed, whether or not the watch cache
/// has seen it yet).
async fn reconcile_api_endpoints(api: &Api, me: SocketAddr) {
    let port = me.port();
    let now = timefmt::now_nanos();
    let mut addrs: Vec<String> = api
        .cache
        .list("/registry/coordination.k8s.io/leases/kube-system/apiserver-")
        .1
        .iter()
        .filter_map(|(_, _, raw)| serde_json::from_slice::<Value>(raw).ok())
        .filter(|l| {
            let renewed = l
                .pointer("/spec/renewTime")
                .and_then(Value::as_str)
                .and_then(timefmt::parse_rfc3339);
            let secs = l
                .pointer("/spec/leaseDurationSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(IDENTITY_LEASE_SECONDS);
            renewed.is_some_and(|r| r + i128::from(secs) * 1_000_000_000 > now)
        })
        .filter_map(|l| {
            l.pointer("/metadata/annotations/berth.io~1advertise-address")
                .and_then(Value::as_str)
                .and_then(|a| a.parse::<SocketAddr>().ok())
        })
        .filter(|a| a.port() == port)
        .map(|a| a.ip().to_string())
        .chain(std::iter::once(me.ip().to_string()))
        .collect();
    addrs.sort();
    addrs.dedup();
    if addrs.is_empty() {
        return;
    }
    let eps = "/registry/core/endpoints/default/kubernetes";
    let slices = "/registry/discovery.k8s.io/endpointslices/default/kubernetes";
    let (ep, slice) = write_api_endpoints(&addrs, port);
    for (key, want) in [(eps, ep), (slices, slice)] {
        let Ok(cur) = api.store.get(key, 0).await else {
            continue;
        };
        match cur {
            Some(kv) => {
                let mut obj: Value = serde_json::from_slice(&kv.value).unwrap_or_default();
                let same = ["subsets", "endpoints", "ports"]
                    .iter()
                    .all(|f| obj.get(*f) == want.get(*f));
                if same {
                    continue;
                }
                for f in ["subsets", "endpoints", "ports"] {
                    if let Some(v) = want.get(f) {
                        obj[f] = v.clone();
                    }
                }
                let _ = api
                    .store
                    .update(
                        key,
                        serde_json::to_vec(&obj).unwrap_or_default(),
                        kv.mod_revision,
                    )
                    .await;
            }
            None => {
                let mut obj = want;
                obj["metadata"]["uid"] = json!(crate::api::new_uid());
                obj["metadata"]["creationTimestamp"] = json!(crate::now());
                let _ = api
                    .store
                    .create(key, serde_json::to_vec(&obj).unwrap_or_default())
                    .await;
            }
        }
    }
}

/// The ConfigMap where servers publish their registry's address (`kube-public`): agents
/// read it to trust and reach the registry with their node's certificate.
pub const REGISTRY_CONFIGMAP: &str = "berth-registry";

/// Publishes this server's registry at `address` (`host:port`) under its identity in the
/// `kube-public/berth-registry` ConfigMap (each server of a cluster keeps its own key).
pub async fn publish_registry(api: &Api, id: &str, address: &str) -> Result<(), store::StoreError> {
    let key = format!("/registry/core/configmaps/kube-public/{REGISTRY_CONFIGMAP}");
    loop {
        match api.store.get(&key, 0).await? {
            None => {
                let cm = json!({"kind": "ConfigMap", "apiVersion": "v1",
                    "metadata": {"name": REGISTRY_CONFIGMAP, "namespace": "kube-public",
                        "uid": crate::api::new_uid(), "creationTimestamp": crate::now()},
                    "data": {id: address}});
                match api
                    .store
                    .create(&key, serde_json::to_vec(&cm).unwrap_or_default())
                    .await
                {
                    Err(store::StoreError::AlreadyExists(_)) => continue,
                    r => return r.map(|_| ()),
                }
            }
            Some(kv) => {
                let mut cm: Value = serde_json::from_slice(&kv.value).unwrap_or_default();
                if cm.pointer(&format!("/data/{id}")).and_then(Value::as_str) == Some(address) {
                    return Ok(());
                }
                cm["data"][id] = json!(address);
                match api
                    .store
                    .update(
                        &key,
                        serde_json::to_vec(&cm).unwrap_or_default(),
                        kv.mod_revision,
                    )
                    .await
                {
                    Err(store::StoreError::Conflict { .. }) => continue,
                    r => return r.map(|_| ()),
                }
            }
        }
    }
}
