//! Pod garbage collection, as kube-controller-manager's podgc: every 20 s it force-deletes
//! pods bound to nodes that no longer exist (checked against the API, not a cache), pods
//! being deleted that were never scheduled, and the oldest terminated pods beyond the
//! threshold.

use std::collections::HashSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, ListParams, Preconditions};

const PERIOD: Duration = Duration::from_secs(20);

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// The pods to delete, given every pod and the nodes that exist.
fn doomed<'a>(pods: &'a [Pod], nodes: &HashSet<String>, threshold: usize) -> Vec<&'a Pod> {
    let mut out: Vec<&Pod> = Vec::new();
    let mut terminated: Vec<&Pod> = pods
        .iter()
        .filter(|p| matches!(phase(p), "Succeeded" | "Failed"))
        .collect();
    if threshold > 0 && terminated.len() > threshold {
        terminated.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
        let excess = terminated.len() - threshold;
        out.extend(terminated.into_iter().take(excess));
    }
    for p in pods {
        let node = p.spec.as_ref().and_then(|s| s.node_name.as_deref());
        let orphan = node.is_some_and(|n| !n.is_empty() && !nodes.contains(n));
        let unscheduled_terminating =
            node.is_none_or(str::is_empty) && p.metadata.deletion_timestamp.is_some();
        if (orphan || unscheduled_terminating) && !out.iter().any(|o| std::ptr::eq(*o, p)) {
            out.push(p);
        }
    }
    out
}

/// Runs the collector until the process ends.
pub async fn run(client: kube::Client, threshold: usize) {
    let pods: kube::Api<Pod> = kube::Api::all(client.clone());
    let nodes: kube::Api<Node> = kube::Api::all(client.clone());
    let mut tick = tokio::time::interval(PERIOD);
    loop {
        tick.tick().await;
        // Nodes are listed after pods: a node created in between is not taken for gone.
        let Ok(ps) = pods.list(&ListParams::default()).await else {
            continue;
        };
        let Ok(ns) = nodes.list(&ListParams::default()).await else {
            continue;
        };
        let names: HashSet<String> = ns
            .items
            .into_iter()
            .filter_map(|n| n.metadata.name)
            .collect();
        for p in doomed(&ps.items, &names, threshold) {
            let ns = p.metadata.namespace.clone().unwrap_or_default();
            let name = p.metadata.name.clone().unwrap_or_default();
            let api: kube::Api<Pod> = kube::Api::namespaced(client.clone(), &ns);
            let dp = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: p.metadata.uid.clone(),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match api.delete(&name, &dp).await {
                Ok(_) => eprintln!("berth controllers: podgc deleted pod {ns}/{name}"),
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(e) => eprintln!("berth controllers: podgc: pod {ns}/{name}: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, node: Option<&str>, phase: &str, created: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "creationTimestamp": created},
            "spec": {"containers": [], "nodeName": node},
            "status": {"phase": phase},
        }))
        .unwrap()
    }

    #[test]
    fn orphans_and_the_oldest_terminated_pods_go() {
        let pods = vec![
            pod("a", Some("n1"), "Succeeded", "2026-01-01T00:00:00Z"),
            pod("b", Some("n1"), "Failed", "2026-01-02T00:00:00Z"),
            pod("c", Some("gone"), "Running", "2026-01-03T00:00:00Z"),
            pod("d", None, "Pending", "2026-01-03T00:00:00Z"),
        ];
        let nodes: HashSet<String> = ["n1".to_string()].into();
        let names = |v: Vec<&Pod>| {
            v.iter()
                .map(|p| p.metadata.name.clone().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(doomed(&pods, &nodes, 1)), ["a", "c"]);
        assert_eq!(names(doomed(&pods, &nodes, 0)), ["c"]);
    }
}
