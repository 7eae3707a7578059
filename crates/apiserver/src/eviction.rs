//! The `pods/eviction` subresource, as Kubernetes' eviction REST: a pod is deleted only if
//! the PodDisruptionBudget that covers it allows a disruption, which is then counted
//! against it (`disruptionsAllowed` lowered, the pod recorded in `disruptedPods`) in the
//! same compare-and-swap, so two evictions racing cannot both take the last one. Refusals
//! are `429 TooManyRequests` with the budget's numbers, which `kubectl drain` retries.

use serde_json::{json, Value};

use crate::api::{Api, Ctx, Reply, Target};
use crate::selector::LabelSelector;
use crate::status::{ApiError, ApiResult};

fn too_many(message: &str, cause: String) -> ApiError {
    let mut e = ApiError::new(429, "TooManyRequests", message);
    e.details = Some(json!({"causes": [{"reason": "DisruptionBudget", "message": cause}]}));
    e
}

/// Evicts the pod `t` names with the Eviction in `ctx`'s body.
pub async fn evict(api: &Api, t: &Target, ctx: &Ctx<'_>) -> ApiResult<Reply> {
    let eviction = crate::api::decode_body(ctx.content_type, &ctx.body)?;
    let options = eviction
        .get("deleteOptions")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let ns = t.namespace.clone().unwrap_or_default();
    let name = t.name.clone().unwrap_or_default();
    let pod_key = t.kind.key(Some(&ns), &name);
    let Some(pod) = api.store.get(&pod_key, 0).await? else {
        return Err(ApiError::not_found(&t.kind, &name));
    };
    let pod: Value = serde_json::from_slice(&pod.value).unwrap_or_default();
    let phase = pod
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("");
    let exempt = matches!(phase, "Succeeded" | "Failed")
        || pod.pointer("/metadata/deletionTimestamp").is_some();
    let dry_run = ctx.q("dryRun") == Some("All")
        || options
            .get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|x| x == "All"));
    if !exempt {
        charge_budget(api, &ns, &name, &pod, dry_run).await?;
    }
    let body = bytes::Bytes::from(serde_json::to_vec(&options).unwrap_or_default());
    api.delete(
        &Target {
            kind: t.kind.clone(),
            namespace: t.namespace.clone(),
            name: t.name.clone(),
            sub: None,
        },
        &Ctx {
            body,
            content_type: "application/json",
            query: ctx.query,
            output: ctx.output,
            user_agent: ctx.user_agent,
            guard: ctx.guard,
        },
    )
    .await?;
    Ok(Reply::json(
        201,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    ))
}

/// Takes one disruption from the budget covering the pod, or says why not.
async fn charge_budget(
    api: &Api,
    ns: &str,
    pod_name: &str,
    pod: &Value,
    dry_run: bool,
) -> ApiResult<()> {
    let Some(kind) = api.registry.find("policy", "v1", "poddisruptionbudgets") else {
        return Ok(());
    };
    let labels = pod.pointer("/metadata/labels").and_then(Value::as_object);
    for _ in 0..5 {
        let prefix = kind.key(Some(ns), "");
        let list = api
            .store
            .list(store::ListOptions {
                prefix: &prefix,
                ..Default::default()
            })
            .await?;
        let mut covering = Vec::new();
        for kv in list.kvs {
            let pdb: Value = serde_json::from_slice(&kv.value).unwrap_or_default();
            let sel = pdb.pointer("/spec/selector").cloned().unwrap_or(json!({}));
            let Ok(sel) = LabelSelector::from_object(&sel) else {
                continue;
            };
            if sel.matches(labels) {
                covering.push((kv.key, kv.mod_revision, pdb));
            }
        }
        match covering.len() {
            0 => return Ok(()),
            1 => {}
            _ => {
                return Err(ApiError::internal(
                    "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
                ))
            }
        }
        let (key, rev, mut pdb) = covering.remove(0);
        let pdb_name = pdb
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        const REFUSED: &str = "Cannot evict pod as it would violate the pod's disruption budget.";
        let generation = pdb
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let observed = pdb
            .pointer("/status/observedGeneration")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if observed < generation {
            return Err(too_many(
                REFUSED,
                format!("The disruption budget {pdb_name} is still being processed by the server."),
            ));
        }
        let allowed = pdb
            .pointer("/status/disruptionsAllowed")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if allowed <= 0 {
            let n = |k: &str| {
                pdb.pointer(&format!("/status/{k}"))
                    .and_then(Value::as_i64)
                    .unwrap_or(0)
            };
            return Err(too_many(
                REFUSED,
                format!(
                    "The disruption budget {pdb_name} needs {} healthy pods and has {} currently",
                    n("desiredHealthy"),
                    n("currentHealthy")
                ),
            ));
        }
        if dry_run {
            return Ok(());
        }
        pdb["status"]["disruptionsAllowed"] = json!(allowed - 1);
        pdb["status"]["disruptedPods"][pod_name] = json!(crate::now());
        match api
            .store
            .update(&key, serde_json::to_vec(&pdb).unwrap_or_default(), rev)
            .await
        {
            Ok(_) => return Ok(()),
            // Someone else wrote the budget: read it again.
            Err(store::StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(too_many(
        "Cannot evict pod as it would violate the pod's disruption budget.",
        "the disruption budget kept changing; try again".into(),
    ))
}
