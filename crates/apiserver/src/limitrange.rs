//! LimitRanger admission: a namespace's LimitRanges give containers that name no requests
//! or limits their defaults (`default`, `defaultRequest`), and refuse pods and claims
//! outside `min`, `max` and `maxLimitRequestRatio`, with Kubernetes' messages
//! (plugin/pkg/admission/limitranger).

use serde_json::{json, Value};

use crate::api::Api;
use crate::status::{ApiError, ApiResult};

use crate::quota::milli as q;

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The namespace's LimitRanges' items, from the watch cache.
fn items(api: &Api, ns: &str) -> Vec<Value> {
    api.cache
        .list(&format!("/registry/core/limitranges/{ns}/"))
        .1
        .iter()
        .filter_map(|(_, _, raw)| serde_json::from_slice::<Value>(raw).ok())
        .flat_map(|lr| {
            lr.pointer("/spec/limits")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        })
        .collect()
}

/// Applies the defaults to a pod being created and checks its bounds.
pub fn admit_pod(api: &Api, pod: &mut Value) -> ApiResult<()> {
    let ns = pod
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let limits = items(api, &ns);
    if limits.is_empty() {
        return Ok(());
    }
    let name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let forbidden = |m: String| ApiError::forbidden(format!("pods \"{name}\" is forbidden: {m}"));
    // Defaults, per container (as Kubernetes' defaultContainerResourceRequirements: the
    // default request falls back to the default limit when only that is given... and a
    // container's own limit becomes its request when it sets only the limit).
    for item in limits.iter().filter(|i| i["type"] == "Container") {
        let default_limit = item.get("default").and_then(Value::as_object);
        let default_request = item.get("defaultRequest").and_then(Value::as_object);
        for list in ["initContainers", "containers"] {
            for c in pod
                .pointer_mut(&format!("/spec/{list}"))
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                let res = c
                    .as_object_mut()
                    .map(|o| o.entry("resources").or_insert_with(|| json!({})));
                let Some(res) = res.and_then(Value::as_object_mut) else {
                    continue;
                };
                if let Some(d) = default_limit {
                    let l = res.entry("limits").or_insert_with(|| json!({}));
                    if let Some(l) = l.as_object_mut() {
                        for (k, v) in d {
                            l.entry(k.clone()).or_insert_with(|| v.clone());
                        }
                    }
                }
                if let Some(d) = default_request {
                    let r = res.entry("requests").or_insert_with(|| json!({}));
                    if let Some(r) = r.as_object_mut() {
                        for (k, v) in d {
                            r.entry(k.clone()).or_insert_with(|| v.clone());
                        }
                    }
                }
                // Requests default to limits where a limit is set and no request.
                let lim = res.get("limits").and_then(Value::as_object).cloned();
                if let Some(lim) = lim {
                    let r = res.entry("requests").or_insert_with(|| json!({}));
                    if let Some(r) = r.as_object_mut() {
                        for (k, v) in lim {
                            r.entry(k).or_insert(v);
                        }
                    }
                }
                for k in ["limits", "requests"] {
                    if res
                        .get(k)
                        .and_then(Value::as_object)
                        .is_some_and(|m| m.is_empty())
                    {
                        res.remove(k);
                    }
                }
            }
        }
    }
    // Bounds.
    let containers: Vec<Value> = ["initContainers", "containers"]
        .iter()
        .flat_map(|l| {
            pod.pointer(&format!("/spec/{l}"))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    for item in &limits {
        let typ = item["type"].as_str().unwrap_or_default();
        if typ != "Container" && typ != "Pod" {
            continue;
        }
        // For a Pod item, the sums over its containers.
        let sum = |which: &str, r: &str| -> (Option<i64>, bool) {
            let mut total = 0;
            let mut all = true;
            for c in &containers {
                match c.pointer(&format!("/resources/{which}/{r}")).and_then(q) {
                    Some(v) => total += v,
                    None => all = false,
                }
            }
            (Some(total), all)
        };
        let targets: Vec<(String, Value)> = if typ == "Container" {
            containers
                .iter()
                .map(|c| {
                    (
                        c["name"].as_str().unwrap_or_default().to_string(),
                        c.get("resources").cloned().unwrap_or(json!({})),
                    )
                })
                .collect()
        } else {
            vec![(String::new(), Value::Null)]
        };
        for (_cname, res) in targets {
            let get = |which: &str, r: &str| -> (Option<i64>, bool) {
                if typ == "Pod" {
                    sum(which, r)
                } else {
                    let v = res.pointer(&format!("/{which}/{r}")).and_then(q);
                    (v, v.is_some())
                }
            };
            for (r, min) in item
                .get("min")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                let m = q(min).unwrap_or(0);
                let (req, all) = get("requests", r);
                match req {
                    Some(v) if all && v >= m => {}
                    Some(v) if all => {
                        return Err(forbidden(format!(
                            "minimum {r} usage per {typ} is {}, but request is {}",
                            text(min),
                            quantity::format_milli(v)
                        )))
                    }
                    _ => {
                        return Err(forbidden(format!(
                            "minimum {r} usage per {typ} is {}.  No request is specified",
                            text(min)
                        )))
                    }
                }
            }
            for (r, max) in item
                .get("max")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                let m = q(max).unwrap_or(0);
                let (lim, all) = get("limits", r);
                match lim {
                    Some(v) if all && v <= m => {}
                    Some(v) if all => {
                        return Err(forbidden(format!(
                            "maximum {r} usage per {typ} is {}, but limit is {}",
                            text(max),
                            quantity::format_milli(v)
                        )))
                    }
                    _ => {
                        return Err(forbidden(format!(
                            "maximum {r} usage per {typ} is {}.  No limit is specified",
                            text(max)
                        )))
                    }
                }
            }
            for (r, ratio) in item
                .get("maxLimitRequestRatio")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                let m = q(ratio).unwrap_or(0);
                let (lim, _) = get("limits", r);
                let (req, _) = get("requests", r);
                if let (Some(l), Some(rq)) = (lim, req) {
                    if rq > 0 && l * 1000 / rq > m {
                        return Err(forbidden(format!(
                            "{r} max limit to request ratio per {typ} is {}, but provided ratio is {:.6}",
                            text(ratio),
                            l as f64 / rq as f64
                        )));
                    }
                }
            }
        }
    }
    Ok(())
}

/// The bounds of `PersistentVolumeClaim` items on a claim's requested storage.
pub fn admit_claim(api: &Api, pvc: &Value) -> ApiResult<()> {
    let ns = pvc
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let name = pvc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let asked = pvc.pointer("/spec/resources/requests/storage").and_then(q);
    for item in items(api, ns)
        .iter()
        .filter(|i| i["type"] == "PersistentVolumeClaim")
    {
        let f = |m: String| {
            ApiError::forbidden(format!(
                "persistentvolumeclaims \"{name}\" is forbidden: {m}"
            ))
        };
        if let Some(min) = item.pointer("/min/storage") {
            match asked {
                Some(v) if v >= q(min).unwrap_or(0) => {}
                Some(v) => {
                    return Err(f(format!(
                        "minimum storage usage per PersistentVolumeClaim is {}, but request is {}",
                        text(min),
                        quantity::format_milli(v)
                    )))
                }
                None => {
                    return Err(f(format!(
                        "minimum storage usage per PersistentVolumeClaim is {}.  No request is specified",
                        text(min)
                    )))
                }
            }
        }
        if let Some(max) = item.pointer("/max/storage") {
            if let Some(v) = asked.filter(|v| *v > q(max).unwrap_or(i64::MAX)) {
                return Err(f(format!(
                    "maximum storage usage per PersistentVolumeClaim is {}, but request is {}",
                    text(max),
                    quantity::format_milli(v)
                )));
            }
        }
    }
    Ok(())
}
