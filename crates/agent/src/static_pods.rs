//! Static pods: manifests in `<data-dir>/manifests` run on this node as the kubelet runs
//! them, through mirror pods in the API (`<name>-<node>`, annotated with the manifest's
//! hash, `kubernetes.io/config.source: file`, owned by the Node). A changed manifest
//! replaces its mirror pod; a removed one deletes it; a mirror pod deleted through the API
//! is made again, as the kubelet does.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, ListParams, PostParams};
use serde_json::{json, Value};

pub const MIRROR: &str = "kubernetes.io/config.mirror";
const HASH: &str = "kubernetes.io/config.hash";
const SOURCE: &str = "kubernetes.io/config.source";

fn hash(b: &[u8], node: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b);
    ctx.update(node.as_bytes());
    ctx.finish().as_ref()[..16]
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// The mirror pods the manifests ask for: name → (namespace, pod).
fn wanted(dir: &Path, node: &str, node_uid: &str) -> BTreeMap<String, (String, Value)> {
    let mut out = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    let mut files: Vec<_> = rd.flatten().map(|e| e.path()).collect();
    files.sort();
    for f in files {
        let ext = f.extension().and_then(|e| e.to_str()).unwrap_or_default();
        if !matches!(ext, "yaml" | "yml" | "json")
            || f.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        {
            continue;
        }
        let Ok(bytes) = std::fs::read(&f) else {
            continue;
        };
        let mut v: Value = match serde_yaml::from_slice(&bytes) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("berth agent: static pod {}: {e}", f.display());
                continue;
            }
        };
        if v["kind"] != "Pod"
            || v.pointer("/metadata/name")
                .and_then(Value::as_str)
                .is_none()
        {
            eprintln!(
                "berth agent: static pod {}: not a Pod with a name",
                f.display()
            );
            continue;
        }
        let h = hash(&bytes, node);
        let name = format!(
            "{}-{node}",
            v["metadata"]["name"].as_str().unwrap_or_default()
        );
        let ns = v
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string();
        v["metadata"]["name"] = json!(name);
        v["metadata"]["namespace"] = json!(ns);
        let ann = v["metadata"]
            .as_object_mut()
            .map(|m| m.entry("annotations").or_insert(json!({})).clone())
            .unwrap_or_default();
        let mut ann = ann;
        ann[HASH] = json!(h);
        ann[MIRROR] = json!(h);
        ann[SOURCE] = json!("file");
        v["metadata"]["annotations"] = ann;
        v["metadata"]["ownerReferences"] = json!([{"apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid, "controller": true}]);
        v["spec"]["nodeName"] = json!(node);
        out.insert(name, (ns, v));
    }
    out
}

/// Keeps the mirror pods in step with the manifests.
pub async fn run(client: kube::Client, node: String, dir: std::path::PathBuf) {
    let _ = std::fs::create_dir_all(&dir);
    let nodes: kube::Api<Node> = kube::Api::all(client.clone());
    let all: kube::Api<Pod> = kube::Api::all(client.clone());
    loop {
        let node_uid = nodes
            .get_opt(&node)
            .await
            .ok()
            .flatten()
            .and_then(|n| n.metadata.uid)
            .unwrap_or_default();
        let want = wanted(&dir, &node, &node_uid);
        let have: Vec<Pod> = all
            .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
            .await
            .map(|l| l.items)
            .unwrap_or_default()
            .into_iter()
            .filter(|p| {
                p.metadata
                    .annotations
                    .as_ref()
                    .is_some_and(|a| a.contains_key(MIRROR))
            })
            .collect();
        for p in &have {
            let name = p.metadata.name.clone().unwrap_or_default();
            let ns = p.metadata.namespace.clone().unwrap_or_default();
            let h = p
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(MIRROR))
                .cloned();
            let keep = want.get(&name).is_some_and(|(wns, v)| {
                *wns == ns && v["metadata"]["annotations"][MIRROR].as_str() == h.as_deref()
            });
            if !keep && p.metadata.deletion_timestamp.is_none() {
                let api: kube::Api<Pod> = kube::Api::namespaced(client.clone(), &ns);
                let _ = api.delete(&name, &DeleteParams::default()).await;
            }
        }
        for (name, (ns, v)) in &want {
            let present = have.iter().any(|p| {
                p.metadata.name.as_deref() == Some(name.as_str())
                    && p.metadata.namespace.as_deref() == Some(ns.as_str())
            });
            if present {
                continue;
            }
            let api: kube::Api<Pod> = kube::Api::namespaced(client.clone(), ns);
            match serde_json::from_value::<Pod>(v.clone()) {
                Ok(p) => {
                    if let Err(e) = api.create(&PostParams::default(), &p).await {
                        if !matches!(&e, kube::Error::Api(s) if s.code == 409) {
                            eprintln!("berth agent: mirror pod {ns}/{name}: {e}");
                        }
                    }
                }
                Err(e) => eprintln!("berth agent: static pod {name}: {e}"),
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
