//! The load of `bench/pods.sh`: creates pods bound to a node and measures, with a watch,
//! the time from each create to the pod's `Ready=True`. One at a time (`seq`) or all at
//! once (`par`). Prints each latency in ms, then `p50 p99` on the last line.
//!   podstart KUBECONFIG NODE COUNT seq|par IMAGE [keep]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::watcher;

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod(name: &str, node: &str, image: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"bench": "podstart"}},
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": image, "imagePullPolicy": "Never",
                "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]}]}
    }))
    .expect("a valid pod")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let (kc, node, count, mode, image) = (&a[1], &a[2], a[3].parse::<usize>()?, &a[4], &a[5]);
    let kcfg = kube::config::Kubeconfig::read_from(kc)?;
    let cfg = kube::Config::from_custom_kubeconfig(kcfg, &Default::default()).await?;
    let client = kube::Client::try_from(cfg)?;
    let api: kube::Api<Pod> = kube::Api::namespaced(client, "default");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let w = api.clone();
    tokio::spawn(async move {
        let mut s =
            watcher::watcher(w, watcher::Config::default().labels("bench=podstart")).boxed();
        while let Some(Ok(ev)) = s.next().await {
            if let watcher::Event::Apply(p) | watcher::Event::InitApply(p) = ev {
                if ready(&p) {
                    let _ = tx.send((p.metadata.name.clone().unwrap_or_default(), Instant::now()));
                }
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut lat = Vec::new();
    let mut started: HashMap<String, Instant> = HashMap::new();
    let names: Vec<String> = (0..count).map(|i| format!("podstart-{mode}-{i}")).collect();
    let wait_ready =
        |started: &HashMap<String, Instant>, lat: &mut Vec<f64>, n: String, t: Instant| {
            if let Some(s) = started.get(&n) {
                lat.push((t - *s).as_secs_f64() * 1000.0);
                true
            } else {
                false
            }
        };
    if mode == "seq" {
        for n in &names {
            started.insert(n.clone(), Instant::now());
            api.create(&PostParams::default(), &pod(n, node, image))
                .await?;
            loop {
                let (got, t) = rx.recv().await.expect("the watch ended");
                if got == *n && wait_ready(&started, &mut lat, got, t) {
                    break;
                }
            }
        }
    } else {
        let mut tasks = Vec::new();
        let t0 = Instant::now();
        for n in &names {
            started.insert(n.clone(), t0);
            let (api, p) = (api.clone(), pod(n, node, image));
            tasks.push(tokio::spawn(async move {
                api.create(&PostParams::default(), &p).await
            }));
        }
        for t in tasks {
            t.await??;
        }
        let mut seen = std::collections::HashSet::new();
        while seen.len() < names.len() {
            let (got, t) = rx.recv().await.expect("the watch ended");
            if seen.insert(got.clone()) {
                wait_ready(&started, &mut lat, got, t);
            }
        }
    }
    for l in &lat {
        println!("{l:.1}");
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1];
    println!("{:.1} {:.1}", pct(0.5), pct(0.99));
    if a.get(6).map(String::as_str) == Some("keep") {
        return Ok(());
    }
    let dp = DeleteParams::default();
    for n in &names {
        let _ = api.delete(n, &dp).await;
    }
    Ok(())
}
