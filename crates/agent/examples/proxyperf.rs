//! Rule programming of the node's service proxy, measured in a network namespace of its own:
//! SERVICES ClusterIP Services with ENDPOINTS endpoints each are applied in one transaction,
//! then one endpoint change at a time is applied incrementally (as the proxy does), and,
//! for comparison, the same change as a full rewrite of the table (what a proxy that
//! regenerates everything per change pays). Prints one line per figure, in milliseconds.
//!   proxyperf SERVICES ENDPOINTS [CHANGES]
//! Needs root (unshare) and nft.

use std::sync::Arc;
use std::time::Instant;

use agent::proxy::{desired, nft_apply, service_rules, transaction, Applied, Catalog, Rules};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;
use std::collections::BTreeMap;

const CIDR: &str = "10.42.0.0/16";

fn service(i: usize) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": format!("svc-{i}"), "namespace": "bench"},
        "spec": {"clusterIP": format!("10.43.{}.{}", i / 250, 1 + i % 250), "type": "ClusterIP",
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
    }))
    .unwrap()
}

fn slice(i: usize, eps: usize, generation: usize) -> EndpointSlice {
    serde_json::from_value(json!({
        "metadata": {"name": format!("svc-{i}-x"), "namespace": "bench",
                     "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": (0..eps).map(|e| {
            // The first endpoint moves with each generation.
            let n = i * eps + e + if e == 0 { generation * 7919 } else { 0 };
            json!({"addresses": [format!("10.42.{}.{}", (n / 250) % 250, 1 + n % 250)],
                   "conditions": {"ready": true}, "nodeName": "n"})
        }).collect::<Vec<_>>(),
    }))
    .unwrap()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let services: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let eps: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10);
    let changes: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(20);
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare (run as root)");
    let mut cat = Catalog::default();
    for i in 0..services {
        cat.services
            .insert(format!("bench/svc-{i}"), Arc::new(service(i)));
        cat.put_slice(format!("bench/svc-{i}-x"), Some(Arc::new(slice(i, eps, 0))));
    }
    let t = Instant::now();
    let mut applied = Applied::default();
    let script = transaction(
        &mut applied,
        Some((&[], &[])),
        desired(&cat, "n", CIDR),
        Instant::now(),
    );
    nft_apply(&script).expect("the first transaction");
    let full = t.elapsed().as_secs_f64() * 1000.0;
    let (mut compute, mut total, mut rewrite) = (Vec::new(), Vec::new(), Vec::new());
    for g in 1..=changes {
        let i = (g * 37) % services;
        cat.put_slice(format!("bench/svc-{i}-x"), Some(Arc::new(slice(i, eps, g))));
        // As the proxy does: the changed Service's rules again, and the difference.
        let t = Instant::now();
        let key = format!("bench/svc-{i}");
        let changed: BTreeMap<String, Rules> =
            [(key.clone(), service_rules(&cat, &key, "n", CIDR))].into();
        let script = transaction(&mut applied, None, changed, Instant::now());
        compute.push(t.elapsed().as_secs_f64() * 1000.0);
        nft_apply(&script).expect("an incremental transaction");
        total.push(t.elapsed().as_secs_f64() * 1000.0);
        if g <= 3 {
            // The same state, written whole.
            let t = Instant::now();
            let mut whole = Applied::default();
            let script = transaction(
                &mut whole,
                Some((&[], &[])),
                desired(&cat, "n", CIDR),
                Instant::now(),
            );
            nft_apply(&script).expect("a full rewrite");
            rewrite.push(t.elapsed().as_secs_f64() * 1000.0);
            applied = whole;
        }
    }
    println!("services {services}");
    println!("endpoints {}", services * eps);
    println!("full_apply_ms {full:.1}");
    println!("change_ms {:.2}", median(total));
    println!("change_compute_ms {:.2}", median(compute));
    println!("rewrite_ms {:.1}", median(rewrite));
}
