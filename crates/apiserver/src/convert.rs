//! Conversion between the versions one resource is served in and the version it is stored
//! in: autoscaling/v1 HorizontalPodAutoscalers (stored as v2) and events.k8s.io/v1 Events
//! (stored as core/v1 Events).

use serde_json::{json, Map, Value};

use crate::kinds::Kind;

/// core/v1 Event field → events.k8s.io/v1 Event field.
const EVENT_RENAMES: &[(&str, &str)] = &[
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
    ("reportingComponent", "reportingController"),
];

/// Fields both Event versions share.
const EVENT_SHARED: &[&str] = &[
    "metadata",
    "reason",
    "type",
    "action",
    "related",
    "eventTime",
    "series",
    "reportingInstance",
];

/// An Event in the other version: `to_events_api` renames core fields to events.k8s.io's.
fn convert_event(mut v: Value, to_events_api: bool) -> Value {
    let Some(m) = v.as_object_mut() else { return v };
    let mut out = Map::new();
    out.insert(
        "apiVersion".into(),
        json!(if to_events_api {
            "events.k8s.io/v1"
        } else {
            "v1"
        }),
    );
    out.insert("kind".into(), json!("Event"));
    for (core, events) in EVENT_RENAMES {
        let (from, to) = if to_events_api {
            (core, events)
        } else {
            (events, core)
        };
        if let Some(x) = m.remove(*from) {
            // events.k8s.io leaves out what core/v1 kept empty.
            if !to_events_api || !(x.is_null() || x == json!("")) {
                out.insert(to.to_string(), x);
            }
        }
    }
    for k in EVENT_SHARED {
        if let Some(x) = m.remove(*k) {
            out.insert(k.to_string(), x);
        }
    }
    if to_events_api {
        out.entry("eventTime").or_insert(Value::Null);
    } else {
        out.entry("involvedObject").or_insert(json!({}));
    }
    Value::Object(out)
}

/// The fields an HPA's spec (or status) keeps the same in v1 and v2.
fn copy_fields(from: &Value, fields: &[&str], defaults: &[(&str, Value)]) -> Value {
    let mut out = json!({});
    for (k, d) in defaults {
        out[*k] = from.get(*k).cloned().unwrap_or_else(|| d.clone());
    }
    for k in fields {
        if let Some(x) = from.get(*k) {
            out[*k] = x.clone();
        }
    }
    out
}

/// The CPU utilization of a v2 metric list (`target` or `current` side).
fn cpu_utilization(metrics: Option<&Value>, side: &str) -> Option<Value> {
    metrics?
        .as_array()?
        .iter()
        .find(|m| m.pointer("/resource/name") == Some(&json!("cpu")))
        .and_then(|m| {
            m.pointer(&format!("/resource/{side}/averageUtilization"))
                .cloned()
        })
}

/// An HPA in the other version: `to_v1` from the stored v2, else from v1 to v2.
fn convert_hpa(mut v: Value, to_v1: bool) -> Value {
    let spec = v.get("spec").cloned().unwrap_or(json!({}));
    let defaults = [("scaleTargetRef", json!({})), ("maxReplicas", json!(0))];
    let mut out = copy_fields(&spec, &["minReplicas"], &defaults);
    let st = v.get("status").cloned();
    let status_defaults = [("currentReplicas", json!(0)), ("desiredReplicas", json!(0))];
    let mut status = st.as_ref().map(|s| {
        copy_fields(
            s,
            &["observedGeneration", "lastScaleTime"],
            &status_defaults,
        )
    });
    if to_v1 {
        if let Some(u) = cpu_utilization(spec.get("metrics"), "target") {
            out["targetCPUUtilizationPercentage"] = u;
        }
        let current = st
            .as_ref()
            .and_then(|s| cpu_utilization(s.get("currentMetrics"), "current"));
        if let (Some(s), Some(u)) = (status.as_mut(), current) {
            s["currentCPUUtilizationPercentage"] = u;
        }
        status.get_or_insert_with(|| copy_fields(&json!({}), &[], &status_defaults));
    } else {
        if let Some(u) = spec.get("targetCPUUtilizationPercentage") {
            out["metrics"] = json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": u}}}]);
        }
        let current = st
            .as_ref()
            .and_then(|s| s.get("currentCPUUtilizationPercentage"))
            .cloned();
        if let (Some(s), Some(u)) = (status.as_mut(), current) {
            s["currentMetrics"] = json!([{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": u}}}]);
        }
    }
    v["spec"] = out;
    match status {
        Some(s) => v["status"] = s,
        None => {
            if let Some(o) = v.as_object_mut() {
                o.remove("status");
            }
        }
    }
    v["apiVersion"] = json!(if to_v1 {
        "autoscaling/v1"
    } else {
        "autoscaling/v2"
    });
    v
}

fn convert(kind: &Kind, mut v: Value, to_served: bool) -> Value {
    if !v.is_object() {
        return v;
    }
    if kind.crd_schema.is_some() {
        // Custom resources convert with strategy None: only the apiVersion changes.
        v["apiVersion"] = json!(if to_served {
            kind.api_version()
        } else {
            format!("{}/{}", kind.group, kind.storage_version)
        });
        return v;
    }
    match (
        kind.group.as_str(),
        kind.version.as_str(),
        kind.kind.as_str(),
    ) {
        ("autoscaling", "v1", "HorizontalPodAutoscaler") => convert_hpa(v, to_served),
        ("events.k8s.io", "v1", "Event") => convert_event(v, to_served),
        _ => v,
    }
}

/// From the stored version to the version `kind` serves.
pub fn to_served(kind: &Kind, v: Value) -> Value {
    convert(kind, v, true)
}

/// From the version `kind` serves to the stored version.
pub fn to_storage(kind: &Kind, v: Value) -> Value {
    convert(kind, v, false)
}
