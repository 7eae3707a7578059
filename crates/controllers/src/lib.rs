//! The parts of `berth server` that turn desired state into running pods, as
//! kube-scheduler and kube-controller-manager do: the scheduler (`scheduler`) and the
//! ReplicaSet controller (`replicaset`). Each is an API client over kube-rs — watch, cache,
//! reconcile, level-triggered and idempotent — talking to the server it runs in.

pub mod replicaset;
pub mod scheduler;

/// Kubernetes' time format (seconds).
pub fn now() -> String {
    let n = timefmt::now_nanos();
    let s = timefmt::rfc3339((n / 1_000_000_000) as i64, 0);
    format!("{}Z", &s[..19])
}

/// Starts the scheduler and the controllers on `client`; they run until the process ends.
pub fn start(client: kube::Client, scheduler: bool, controllers: bool) {
    if scheduler {
        tokio::spawn(scheduler::run(client.clone()));
    }
    if controllers {
        tokio::spawn(replicaset::run(client));
    }
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
