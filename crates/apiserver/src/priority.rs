//! Pod priority, as Kubernetes' Priority admission plugin resolves it: a pod's
//! `priorityClassName` (or the cluster's global default class) gives its `priority` and
//! `preemptionPolicy`; the two system classes exist in every cluster; a user-defined class
//! stays below them and only one may be the global default.

use std::sync::Arc;

use serde_json::{json, Value};

use crate::api::Api;
use crate::kinds::Kind;
use crate::status::{ApiError, ApiResult, FieldError};

/// The highest value a user-defined PriorityClass may have.
pub const HIGHEST_USER_DEFINABLE: i64 = 1_000_000_000;

/// The classes every cluster has, as kube-apiserver creates them.
const SYSTEM: [(&str, i64, &str); 2] = [
    (
        "system-node-critical",
        2_000_001_000,
        "Used for system critical pods that must not be moved from their current node.",
    ),
    (
        "system-cluster-critical",
        2_000_000_000,
        "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary.",
    ),
];

const PREFIX: &str = "/registry/scheduling.k8s.io/priorityclasses/";

/// Creates the system PriorityClasses if missing.
pub async fn ensure_system_classes(api: &Arc<Api>) -> Result<(), store::StoreError> {
    for (name, value, description) in SYSTEM {
        crate::namespaces::ensure(api, &format!("{PREFIX}{name}"), || {
            json!({
                "kind": "PriorityClass",
                "apiVersion": "scheduling.k8s.io/v1",
                "metadata": {"name": name, "uid": crate::api::new_uid(), "creationTimestamp": crate::now()},
                "value": value,
                "globalDefault": false,
                "description": description,
                "preemptionPolicy": "PreemptLowerPriority",
            })
        })
        .await?;
    }
    Ok(())
}

/// Every PriorityClass, from the watch cache (pod creation must not cost a store list).
fn classes(api: &Api) -> Vec<Value> {
    api.cache
        .list(PREFIX)
        .1
        .iter()
        .filter_map(|(_, _, v)| serde_json::from_slice(v).ok())
        .collect()
}

/// One class: from the cache, or from the store when it was created a moment ago.
async fn class(api: &Api, name: &str) -> ApiResult<Option<Value>> {
    let key = format!("{PREFIX}{name}");
    let raw = match api.cache.get(&key) {
        Some(raw) => raw,
        None => match api.store.get(&key, 0).await? {
            Some(kv) => std::sync::Arc::from(kv.value),
            None => return Ok(None),
        },
    };
    Ok(serde_json::from_slice(&raw).ok())
}

fn name_of(v: &Value) -> &str {
    v.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// The global default class (the lowest-valued one if a race made several).
fn global_default(api: &Api) -> Option<Value> {
    classes(api)
        .into_iter()
        .filter(|c| c.get("globalDefault").and_then(Value::as_bool) == Some(true))
        .min_by_key(|c| c.get("value").and_then(Value::as_i64).unwrap_or(0))
}

/// Resolves a new pod's priority from its class, or refuses it.
pub async fn admit_pod(api: &Api, pod: &mut Value) -> ApiResult<()> {
    let name = name_of(pod).to_string();
    let forbidden =
        |msg: String| ApiError::forbidden(format!("pods \"{name}\" is forbidden: {msg}"));
    let class_name = pod
        .pointer("/spec/priorityClassName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(String::from);
    let (class_name, priority, policy) = match class_name {
        None => match global_default(api) {
            Some(c) => (
                Some(name_of(&c).to_string()),
                c.get("value").and_then(Value::as_i64).unwrap_or(0),
                c.get("preemptionPolicy")
                    .and_then(Value::as_str)
                    .unwrap_or("PreemptLowerPriority")
                    .to_string(),
            ),
            None => (None, 0, "PreemptLowerPriority".to_string()),
        },
        Some(cn) => {
            let Some(c) = class(api, &cn).await? else {
                return Err(forbidden(format!(
                    "no PriorityClass with name {cn} was found"
                )));
            };
            (
                Some(cn),
                c.get("value").and_then(Value::as_i64).unwrap_or(0),
                c.get("preemptionPolicy")
                    .and_then(Value::as_str)
                    .unwrap_or("PreemptLowerPriority")
                    .to_string(),
            )
        }
    };
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    if let Some(given) = spec.get("priority").and_then(Value::as_i64) {
        if given != priority {
            return Err(forbidden(format!("the integer value of priority ({given}) must not be provided in pod spec; priority admission controller computed {priority} from the given PriorityClass name")));
        }
    }
    if let Some(given) = spec.get("preemptionPolicy").and_then(Value::as_str) {
        if given != policy {
            return Err(forbidden(format!("the string value of PreemptionPolicy ({given}) must not be provided in pod spec; priority admission controller computed {policy} from the given PriorityClass name")));
        }
    }
    spec.insert("priority".into(), json!(priority));
    spec.insert("preemptionPolicy".into(), json!(policy));
    if let Some(cn) = class_name {
        spec.insert("priorityClassName".into(), json!(cn));
    }
    Ok(())
}

/// Checks a PriorityClass being created or updated against the others.
pub async fn admit_class(api: &Api, kind: &Kind, class: &Value, creating: bool) -> ApiResult<()> {
    let name = name_of(class);
    if name.starts_with("system-") && !SYSTEM.iter().any(|(n, _, _)| *n == name) {
        return Err(ApiError::invalid(
            kind,
            name,
            vec![FieldError::forbidden(
                "metadata.name",
                format!("priority class names with 'system-' prefix are reserved for system use only. error: {name} is not a known system priority class"),
            )],
        ));
    }
    let forbidden = |msg: String| {
        ApiError::forbidden(format!(
            "priorityclasses.scheduling.k8s.io \"{name}\" is forbidden: {msg}"
        ))
    };
    let value = class.get("value").and_then(Value::as_i64).unwrap_or(0);
    let system = SYSTEM.iter().any(|(n, _, _)| *n == name);
    if value > HIGHEST_USER_DEFINABLE && !system {
        return Err(forbidden(format!(
            "maximum allowed value of a user defined priority is {HIGHEST_USER_DEFINABLE}"
        )));
    }
    if class.get("globalDefault").and_then(Value::as_bool) == Some(true) {
        // From the store, not the cache: two defaults made back to back must not pass.
        let list = api
            .store
            .list(store::ListOptions {
                prefix: PREFIX,
                ..Default::default()
            })
            .await?;
        let existing = list
            .kvs
            .iter()
            .filter_map(|kv| serde_json::from_slice::<Value>(&kv.value).ok())
            .find(|c| c.get("globalDefault").and_then(Value::as_bool) == Some(true));
        if let Some(d) = existing {
            if creating || name_of(&d) != name {
                return Err(forbidden(format!(
                    "PriorityClass {} is already marked as default. Only one default can exist",
                    name_of(&d)
                )));
            }
        }
    }
    Ok(())
}
