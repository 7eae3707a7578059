//! The load of `bench/scheduler.sh`, after kube-scheduler's scheduler_perf: creates NODES
//! Node objects (no agents: allocatable 32 CPU, 256 GiB, 110 pods; ten zones), then PODS
//! pods through the API with 64 requests in flight, and measures with a watch the time from
//! the first create until every pod is bound. Prints `pods/s seconds`.
//!   schedperf KUBECONFIG NODES PODS basic|anti|spread

use std::collections::HashSet;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

fn node(i: usize) -> Node {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": format!("perf-node-{i}"), "labels": {
            "kubernetes.io/hostname": format!("perf-node-{i}"),
            "topology.kubernetes.io/zone": format!("zone-{}", i % 10)}},
    }))
    .expect("a valid node")
}

fn pod(i: usize, mode: &str) -> Pod {
    let mut spec = json!({"containers": [{"name": "c", "image": "registry.invalid/pause:3.10",
        "resources": {"requests": {"cpu": "100m", "memory": "100Mi"}}}]});
    // scheduler_perf's workloads: anti-affinity within groups of pods on hostname; topology
    // spread across zones with maxSkew 5.
    let group = format!("g{}", i % 50);
    match mode {
        "anti" => {
            spec["affinity"] = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"group": group}}, "topologyKey": "kubernetes.io/hostname"}]}});
        }
        "spread" => {
            spec["topologySpreadConstraints"] = json!([{"maxSkew": 5, "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"group": group}}}]);
        }
        _ => {}
    }
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("perf-pod-{i}"), "labels": {"group": group}},
        "spec": spec,
    }))
    .expect("a valid pod")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let (kc, nodes, pods, mode) = (
        &a[1],
        a[2].parse::<usize>()?,
        a[3].parse::<usize>()?,
        a[4].clone(),
    );
    let kcfg = kube::config::Kubeconfig::read_from(kc)?;
    let cfg = kube::Config::from_custom_kubeconfig(kcfg, &Default::default()).await?;
    let client = kube::Client::try_from(cfg)?;
    let napi: kube::Api<Node> = kube::Api::all(client.clone());
    futures::stream::iter(0..nodes)
        .map(|i| {
            let napi = napi.clone();
            async move {
                let n = node(i);
                let name = n.metadata.name.clone().unwrap_or_default();
                if napi.get_opt(&name).await?.is_none() {
                    napi.create(&PostParams::default(), &n).await?;
                }
                let status = json!({"status": {
                    "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"},
                    "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"},
                    "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}});
                napi.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<_>>()
        .await?;
    let ns = format!("perf-{mode}");
    let nsapi: kube::Api<Namespace> = kube::Api::all(client.clone());
    let n: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}}))?;
    let _ = nsapi.create(&PostParams::default(), &n).await;
    let papi: kube::Api<Pod> = kube::Api::namespaced(client.clone(), &ns);
    // The watch first, so no binding is missed.
    let (tx, rx) = tokio::sync::oneshot::channel::<Instant>();
    let watch_api = papi.clone();
    let watching = tokio::spawn(async move {
        let mut bound: HashSet<String> = HashSet::new();
        let mut s = watcher::watcher(watch_api, watcher::Config::default()).boxed();
        let mut tx = Some(tx);
        while let Some(e) = s.next().await {
            let p = match e {
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => p,
                _ => continue,
            };
            if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some() {
                bound.insert(p.metadata.name.unwrap_or_default());
                if bound.len() >= pods {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(Instant::now());
                    }
                    return;
                }
            }
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let t0 = Instant::now();
    futures::stream::iter(0..pods)
        .map(|i| {
            let papi = papi.clone();
            let mode = mode.clone();
            async move {
                papi.create(&PostParams::default(), &pod(i, &mode))
                    .await
                    .map(drop)
            }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<_>>()
        .await?;
    let created = t0.elapsed().as_secs_f64();
    let done = rx.await?;
    watching.abort();
    let secs = done.duration_since(t0).as_secs_f64();
    eprintln!("created {pods} pods in {created:.1} s");
    println!("{:.0} {secs:.1}", pods as f64 / secs);
    Ok(())
}
