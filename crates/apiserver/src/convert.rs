//! Conversion between the versions one resource is served in and the version it is stored
//! in: autoscaling/v1 HorizontalPodAutoscalers (stored as v2) and events.k8s.io/v1 Events
//! (stored as core/v1 Events).

use serde_json::{json, Map, Value};

use crate::kinds::Kind;

fn take(m: &mut Map<String, Value>, k: &str) -> Option<Value> {
    m.remove(k)
}

/// From the stored version to the version `kind` serves.
pub fn to_served(kind: &Kind, mut v: Value) -> Value {
    if !v.is_object() {
        return v;
    }
    match (
        kind.group.as_str(),
        kind.version.as_str(),
        kind.kind.as_str(),
    ) {
        ("autoscaling", "v1", "HorizontalPodAutoscaler") => {
            let spec = v.get("spec").cloned().unwrap_or(json!({}));
            let mut out = json!({
                "scaleTargetRef": spec.get("scaleTargetRef").cloned().unwrap_or(json!({})),
                "maxReplicas": spec.get("maxReplicas").cloned().unwrap_or(json!(0)),
            });
            if let Some(m) = spec.get("minReplicas") {
                out["minReplicas"] = m.clone();
            }
            for m in spec
                .get("metrics")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if m.pointer("/resource/name") == Some(&json!("cpu")) {
                    if let Some(u) = m.pointer("/resource/target/averageUtilization") {
                        out["targetCPUUtilizationPercentage"] = u.clone();
                    }
                }
            }
            let st = v.get("status").cloned().unwrap_or(json!({}));
            let mut status = json!({
                "currentReplicas": st.get("currentReplicas").cloned().unwrap_or(json!(0)),
                "desiredReplicas": st.get("desiredReplicas").cloned().unwrap_or(json!(0)),
            });
            for k in ["observedGeneration", "lastScaleTime"] {
                if let Some(x) = st.get(k) {
                    status[k] = x.clone();
                }
            }
            for m in st
                .get("currentMetrics")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if m.pointer("/resource/name") == Some(&json!("cpu")) {
                    if let Some(u) = m.pointer("/resource/current/averageUtilization") {
                        status["currentCPUUtilizationPercentage"] = u.clone();
                    }
                }
            }
            v["spec"] = out;
            v["status"] = status;
            v["apiVersion"] = json!("autoscaling/v1");
            v
        }
        ("events.k8s.io", "v1", "Event") => {
            let Some(m) = v.as_object_mut() else { return v };
            let mut out = Map::new();
            out.insert("apiVersion".into(), json!("events.k8s.io/v1"));
            out.insert("kind".into(), json!("Event"));
            if let Some(x) = take(m, "metadata") {
                out.insert("metadata".into(), x);
            }
            let renames = [
                ("involvedObject", "regarding"),
                ("message", "note"),
                ("source", "deprecatedSource"),
                ("firstTimestamp", "deprecatedFirstTimestamp"),
                ("lastTimestamp", "deprecatedLastTimestamp"),
                ("count", "deprecatedCount"),
                ("reportingComponent", "reportingController"),
            ];
            for (from, to) in renames {
                if let Some(x) = take(m, from) {
                    if !x.is_null() && x != json!("") {
                        out.insert(to.into(), x);
                    }
                }
            }
            for k in [
                "reason",
                "type",
                "action",
                "related",
                "eventTime",
                "series",
                "reportingInstance",
            ] {
                if let Some(x) = take(m, k) {
                    out.insert(k.into(), x);
                }
            }
            if !out.contains_key("eventTime") {
                out.insert("eventTime".into(), Value::Null);
            }
            Value::Object(out)
        }
        _ => v,
    }
}

/// From the version `kind` serves to the stored version.
pub fn to_storage(kind: &Kind, mut v: Value) -> Value {
    if !v.is_object() {
        return v;
    }
    match (
        kind.group.as_str(),
        kind.version.as_str(),
        kind.kind.as_str(),
    ) {
        ("autoscaling", "v1", "HorizontalPodAutoscaler") => {
            let spec = v.get("spec").cloned().unwrap_or(json!({}));
            let mut out = json!({
                "scaleTargetRef": spec.get("scaleTargetRef").cloned().unwrap_or(json!({})),
                "maxReplicas": spec.get("maxReplicas").cloned().unwrap_or(json!(0)),
            });
            if let Some(m) = spec.get("minReplicas") {
                out["minReplicas"] = m.clone();
            }
            if let Some(u) = spec.get("targetCPUUtilizationPercentage") {
                out["metrics"] = json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": u}}}]);
            }
            v["spec"] = out;
            if let Some(st) = v.get("status").cloned() {
                let mut s = json!({
                    "currentReplicas": st.get("currentReplicas").cloned().unwrap_or(json!(0)),
                    "desiredReplicas": st.get("desiredReplicas").cloned().unwrap_or(json!(0)),
                });
                for k in ["observedGeneration", "lastScaleTime"] {
                    if let Some(x) = st.get(k) {
                        s[k] = x.clone();
                    }
                }
                if let Some(u) = st.get("currentCPUUtilizationPercentage") {
                    s["currentMetrics"] = json!([{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": u}}}]);
                }
                v["status"] = s;
            }
            v["apiVersion"] = json!("autoscaling/v2");
            v
        }
        ("events.k8s.io", "v1", "Event") => {
            let Some(m) = v.as_object_mut() else { return v };
            let mut out = Map::new();
            out.insert("apiVersion".into(), json!("v1"));
            out.insert("kind".into(), json!("Event"));
            if let Some(x) = take(m, "metadata") {
                out.insert("metadata".into(), x);
            }
            let renames = [
                ("regarding", "involvedObject"),
                ("note", "message"),
                ("deprecatedSource", "source"),
                ("deprecatedFirstTimestamp", "firstTimestamp"),
                ("deprecatedLastTimestamp", "lastTimestamp"),
                ("deprecatedCount", "count"),
                ("reportingController", "reportingComponent"),
            ];
            for (from, to) in renames {
                if let Some(x) = take(m, from) {
                    out.insert(to.into(), x);
                }
            }
            for k in [
                "reason",
                "type",
                "action",
                "related",
                "eventTime",
                "series",
                "reportingInstance",
            ] {
                if let Some(x) = take(m, k) {
                    out.insert(k.into(), x);
                }
            }
            out.entry("involvedObject").or_insert(json!({}));
            Value::Object(out)
        }
        _ => v,
    }
}
