//! Namespaces: the four every cluster starts with, and the finalizer that empties a
//! namespace being deleted before it goes.

use std::sync::Arc;

use serde_json::{json, Value};

use crate::api::Api;

/// Creates `default`, `kube-system`, `kube-public` and `kube-node-lease` if missing, and
/// resumes finishing namespaces that were being deleted.
pub async fn ensure_defaults(api: &Arc<Api>) -> Result<(), store::StoreError> {
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        ensure(api, &format!("/registry/core/namespaces/{ns}"), || {
            json!({
                "kind": "Namespace",
                "apiVersion": "v1",
                "metadata": {"name": ns, "uid": crate::api::new_uid(), "creationTimestamp": crate::now(), "labels": {"kubernetes.io/metadata.name": ns}},
                "spec": {"finalizers": ["kubernetes"]},
                "status": {"phase": "Active"},
            })
        })
        .await?;
    }
    let list = api
        .store
        .list(store::ListOptions {
            prefix: "/registry/core/namespaces/",
            ..Default::default()
        })
        .await?;
    for kv in list.kvs {
        let v: Value = serde_json::from_slice(&kv.value).unwrap_or_default();
        if v.pointer("/metadata/deletionTimestamp").is_some() {
            if let Some(name) = v.pointer("/metadata/name").and_then(Value::as_str) {
                finalize_later(api.clone(), name.to_string());
            }
        }
    }
    Ok(())
}

/// Stores the object `make` gives at `key` unless something is there already (another
/// server may have made it meanwhile).
pub async fn ensure(
    api: &Api,
    key: &str,
    make: impl FnOnce() -> Value,
) -> Result<(), store::StoreError> {
    if api.store.get(key, 0).await?.is_some() {
        return Ok(());
    }
    match api
        .store
        .create(key, serde_json::to_vec(&make()).unwrap_or_default())
        .await
    {
        Ok(_) | Err(store::StoreError::AlreadyExists(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Deletes everything in namespace `ns`, then the namespace.
pub fn finalize_later(api: Arc<Api>, ns: String) {
    tokio::spawn(async move {
        let key = format!("/registry/core/namespaces/{ns}");
        let uid_of = |v: &Value| {
            v.pointer("/metadata/uid")
                .and_then(Value::as_str)
                .map(String::from)
        };
        let Ok(Some(first)) = api.store.get(&key, 0).await else {
            return;
        };
        let uid = uid_of(&serde_json::from_slice(&first.value).unwrap_or_default());
        let mut pause = std::time::Duration::from_millis(50);
        loop {
            // Another finisher may have removed it, or a namespace of the same name exists now.
            match api.store.get(&key, 0).await {
                Ok(Some(kv))
                    if uid_of(&serde_json::from_slice(&kv.value).unwrap_or_default()) == uid => {}
                Ok(_) => return,
                Err(_) => {
                    tokio::time::sleep(pause).await;
                    continue;
                }
            }
            let mut left = 0;
            let mut prefixes: Vec<String> = api
                .registry
                .all()
                .iter()
                .filter(|k| k.namespaced && !k.read_only && !k.review)
                .map(|k| k.prefix(Some(&ns)))
                .collect();
            prefixes.sort();
            prefixes.dedup();
            for p in prefixes {
                let Ok(list) = api
                    .store
                    .list(store::ListOptions {
                        prefix: &p,
                        ..Default::default()
                    })
                    .await
                else {
                    continue;
                };
                for kv in list.kvs {
                    let mut v: Value = serde_json::from_slice(&kv.value).unwrap_or_default();
                    let bound_pod = p.starts_with("/registry/core/pods/")
                        && v.pointer("/spec/nodeName")
                            .and_then(Value::as_str)
                            .is_some_and(|n| !n.is_empty());
                    let has_finalizers = v
                        .pointer("/metadata/finalizers")
                        .and_then(Value::as_array)
                        .is_some_and(|f| !f.is_empty());
                    left += 1;
                    if bound_pod || has_finalizers {
                        // The node (or the finalizer's owner) finishes it; mark it for deletion.
                        if v.pointer("/metadata/deletionTimestamp").is_none() {
                            v["metadata"]["deletionTimestamp"] = json!(crate::now());
                            v["metadata"]["deletionGracePeriodSeconds"] =
                                json!(if bound_pod { 30 } else { 0 });
                            let _ = api
                                .store
                                .update(&kv.key, serde_json::to_vec(&v).unwrap(), kv.mod_revision)
                                .await;
                        }
                    } else {
                        let _ = api.store.delete(&kv.key, Some(kv.mod_revision)).await;
                    }
                }
            }
            if left == 0 {
                let key = format!("/registry/core/namespaces/{ns}");
                if let Ok(Some(kv)) = api.store.get(&key, 0).await {
                    let mut v: Value = serde_json::from_slice(&kv.value).unwrap_or_default();
                    if let Some(f) = v
                        .pointer_mut("/spec/finalizers")
                        .and_then(Value::as_array_mut)
                    {
                        f.retain(|x| x != "kubernetes");
                    }
                    let meta_empty = v
                        .pointer("/metadata/finalizers")
                        .and_then(Value::as_array)
                        .is_none_or(|f| f.is_empty());
                    if meta_empty {
                        let _ = api.store.delete(&key, Some(kv.mod_revision)).await;
                    } else {
                        let _ = api
                            .store
                            .update(&key, serde_json::to_vec(&v).unwrap(), kv.mod_revision)
                            .await;
                    }
                }
                return;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_secs(2));
        }
    });
}
