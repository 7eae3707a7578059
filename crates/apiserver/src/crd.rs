//! CustomResourceDefinitions: the kinds they add, their structural schemas (pruning unknown
//! fields, defaults, validation), and the controller that establishes and cleans them up.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::api::Api;
use crate::kinds::{Codec, Kind, PrinterColumn, ScalePaths};
use crate::status::FieldError;

pub const CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";

/// A custom resource's codec: its version's structural schema.
pub struct SchemaCodec {
    pub schema: Value,
    pub name: String,
    pub gvk: (String, String, String),
}

fn prune(v: &mut Value, schema: &Value, path: &str, root: bool, out: &mut Vec<String>) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true))
        && schema.get("properties").is_none()
    {
        return;
    }
    match v {
        Value::Object(m) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            let embedded = schema.get("x-kubernetes-embedded-resource") == Some(&json!(true));
            let preserve = schema.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                let child_path = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                if (root || embedded) && (k == "apiVersion" || k == "kind" || k == "metadata") {
                    continue;
                }
                if let Some(ps) = props.and_then(|p| p.get(&k)) {
                    prune(m.get_mut(&k).unwrap(), ps, &child_path, false, out);
                } else if let Some(a) = additional.filter(|a| a.is_object()) {
                    prune(m.get_mut(&k).unwrap(), a, &child_path, false, out);
                } else if additional == Some(&json!(true)) || preserve {
                } else {
                    m.remove(&k);
                    out.push(child_path);
                }
            }
        }
        Value::Array(items) => {
            if let Some(is) = schema.get("items") {
                for (i, it) in items.iter_mut().enumerate() {
                    prune(it, is, &format!("{path}[{i}]"), false, out);
                }
            }
        }
        _ => {}
    }
}

fn apply_defaults(v: &mut Value, schema: &Value) {
    if let (Some(m), Some(props)) = (
        v.as_object_mut(),
        schema.get("properties").and_then(Value::as_object),
    ) {
        for (k, ps) in props {
            if !m.contains_key(k) {
                if let Some(d) = ps.get("default") {
                    m.insert(k.clone(), d.clone());
                }
            }
            if let Some(child) = m.get_mut(k) {
                apply_defaults(child, ps);
            }
        }
    }
    if let (Some(items), Some(is)) = (v.as_array_mut(), schema.get("items")) {
        for it in items {
            apply_defaults(it, is);
        }
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn check(v: &Value, schema: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let shown = |v: &Value| match v {
        Value::String(s) => format!("\"{s}\""),
        other => other.to_string(),
    };
    if v.is_null() && schema.get("nullable") == Some(&json!(true)) {
        return;
    }
    let int_or_string = schema.get("x-kubernetes-int-or-string") == Some(&json!(true));
    if let Some(t) = schema.get("type").and_then(Value::as_str) {
        let actual = type_name(v);
        let ok = actual == t
            || (t == "number" && actual == "integer")
            || (int_or_string && (actual == "integer" || actual == "string"));
        if !ok {
            errs.push(FieldError::invalid_raw(
                path,
                shown(v),
                format!("{path} in body must be of type {t}: \"{actual}\""),
            ));
            return;
        }
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            let allowed: Vec<String> = e
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(String::from)
                        .unwrap_or_else(|| x.to_string())
                })
                .collect();
            let refs: Vec<&str> = allowed.iter().map(String::as_str).collect();
            errs.push(FieldError::not_supported(
                path,
                v.as_str().unwrap_or(&v.to_string()),
                &refs,
            ));
        }
    }
    if let Some(n) = v.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
            if n < min {
                errs.push(FieldError::invalid_raw(
                    path,
                    v.to_string(),
                    format!("{path} in body should be greater than or equal to {min}"),
                ));
            }
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
            if n > max {
                errs.push(FieldError::invalid_raw(
                    path,
                    v.to_string(),
                    format!("{path} in body should be less than or equal to {max}"),
                ));
            }
        }
    }
    if let Some(s) = v.as_str() {
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
            if (s.chars().count() as u64) < min {
                errs.push(FieldError::invalid(
                    path,
                    s,
                    format!("{path} in body should be at least {min} chars long"),
                ));
            }
        }
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
            if s.chars().count() as u64 > max {
                errs.push(FieldError {
                    field: path.into(),
                    reason: "FieldValueTooLong",
                    value: None,
                    detail: format!("may not be more than {max} bytes"),
                });
            }
        }
    }
    if let Some(a) = v.as_array() {
        if let Some(max) = schema.get("maxItems").and_then(Value::as_u64) {
            if a.len() as u64 > max {
                errs.push(FieldError {
                    field: path.into(),
                    reason: "FieldValueTooMany",
                    value: None,
                    detail: format!("must have at most {max} items"),
                });
            }
        }
        if let Some(min) = schema.get("minItems").and_then(Value::as_u64) {
            if (a.len() as u64) < min {
                errs.push(FieldError::invalid_raw(
                    path,
                    v.to_string(),
                    format!("{path} in body should have at least {min} items"),
                ));
            }
        }
        if let Some(is) = schema.get("items") {
            for (i, it) in a.iter().enumerate() {
                check(it, is, &format!("{path}[{i}]"), errs);
            }
        }
    }
    if let Some(m) = v.as_object() {
        for r in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !m.contains_key(r) {
                let p = if path.is_empty() {
                    r.to_string()
                } else {
                    format!("{path}.{r}")
                };
                errs.push(FieldError::required(p, ""));
            }
        }
        let props = schema.get("properties").and_then(Value::as_object);
        for (k, child) in m {
            if path.is_empty() && (k == "metadata" || k == "apiVersion" || k == "kind") {
                continue;
            }
            let p = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            if let Some(ps) = props.and_then(|p| p.get(k)) {
                check(child, ps, &p, errs);
            } else if let Some(a) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                check(child, a, &p, errs);
            }
        }
    }
}

impl Codec for SchemaCodec {
    fn decode(&self, mut value: Value) -> Result<(Value, Vec<String>), String> {
        let mut unknown = Vec::new();
        if let Some(meta) = value.get("metadata") {
            if !meta.is_object() {
                return Err("metadata must be an object".into());
            }
        }
        prune(&mut value, &self.schema, "", true, &mut unknown);
        // Metadata goes through ObjectMeta like every object's.
        if let Some(meta) = value.get("metadata").cloned() {
            let mut mu = Vec::new();
            let typed: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta =
                serde_ignored::deserialize(meta, |p| mu.push(crate::kinds::field_path(&p)))
                    .map_err(|e| e.to_string())?;
            value["metadata"] = serde_json::to_value(typed).map_err(|e| e.to_string())?;
            unknown.extend(mu.into_iter().map(|p| format!("metadata.{p}")));
        }
        Ok((value, unknown))
    }
    fn schema_name(&self) -> String {
        self.name.clone()
    }
    fn add_schema(&self, gen: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let mut s = self.schema.clone();
        let meta_ref =
            gen.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>();
        if let Some(props) = s.get_mut("properties").and_then(Value::as_object_mut) {
            props.insert("metadata".into(), meta_ref.to_value());
            props.entry("apiVersion").or_insert(json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."}));
            props.entry("kind").or_insert(json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."}));
        }
        s["x-kubernetes-group-version-kind"] =
            json!([{"group": self.gvk.0, "version": self.gvk.1, "kind": self.gvk.2}]);
        let def_path = gen.settings().definitions_path.to_string();
        let defs = gen.definitions_mut();
        defs.insert(self.name.clone(), s);
        schemars::Schema::try_from(json!({"$ref": format!("#{def_path}/{}", self.name)}))
            .unwrap_or_default()
    }
}

/// Defaults from a custom resource's schema.
pub fn default_and_prune(kind: &Kind, obj: &mut Value) {
    if let Some(schema) = &kind.crd_schema {
        apply_defaults(obj, schema);
    }
    if kind.group == "apiextensions.k8s.io" && kind.kind == "CustomResourceDefinition" {
        let deleting = obj.pointer("/metadata/deletionTimestamp").is_some();
        let m = obj["metadata"].as_object_mut();
        if let Some(m) = m {
            let f = m.entry("finalizers").or_insert(json!([]));
            if let Some(a) = f.as_array_mut() {
                if !a.contains(&json!(CLEANUP_FINALIZER)) && !deleting {
                    a.push(json!(CLEANUP_FINALIZER));
                }
            }
        }
        for v in obj
            .pointer_mut("/spec/versions")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            for c in v
                .get_mut("additionalPrinterColumns")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                if let Some(c) = c.as_object_mut() {
                    c.entry("priority").or_insert(json!(0));
                }
            }
        }
        if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
            spec.entry("conversion")
                .or_insert(json!({"strategy": "None"}));
        }
    }
}

/// Validation of custom resources against their schema, and of CRDs themselves.
pub fn validate(kind: &Kind, obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if let Some(schema) = &kind.crd_schema {
        check(obj, schema, "", &mut errs);
    }
    if kind.group == "apiextensions.k8s.io" && kind.kind == "CustomResourceDefinition" {
        let group = obj
            .pointer("/spec/group")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let plural = obj
            .pointer("/spec/names/plural")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if group.is_empty() {
            errs.push(FieldError::required("spec.group", ""));
        } else if !group.contains('.') {
            errs.push(FieldError::invalid(
                "spec.group",
                group,
                "should be a domain with at least one dot",
            ));
        }
        if plural.is_empty() {
            errs.push(FieldError::required("spec.names.plural", ""));
        }
        if obj
            .pointer("/spec/names/kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .is_empty()
        {
            errs.push(FieldError::required("spec.names.kind", ""));
        }
        if !plural.is_empty() && !group.is_empty() && name != format!("{plural}.{group}") {
            errs.push(FieldError::invalid(
                "metadata.name",
                name,
                "must be spec.names.plural+\".\"+spec.group",
            ));
        }
        let versions = obj
            .pointer("/spec/versions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if versions.is_empty() {
            errs.push(FieldError::invalid_raw(
                "spec.versions",
                "[]".into(),
                "must have exactly one version marked as storage version",
            ));
        } else if versions
            .iter()
            .filter(|v| v.get("storage") == Some(&json!(true)))
            .count()
            != 1
        {
            errs.push(FieldError::invalid_raw(
                "spec.versions",
                "[]apiextensions.CustomResourceDefinitionVersion{...}".into(),
                "must have exactly one version marked as storage version",
            ));
        }
        for (i, v) in versions.iter().enumerate() {
            if v.pointer("/schema/openAPIV3Schema").is_none() {
                errs.push(FieldError::required(
                    format!("spec.versions[{i}].schema.openAPIV3Schema"),
                    "schemas are required",
                ));
            }
        }
        let scope = obj
            .pointer("/spec/scope")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !["Namespaced", "Cluster"].contains(&scope) {
            errs.push(FieldError::not_supported(
                "spec.scope",
                scope,
                &["Cluster", "Namespaced"],
            ));
        }
    }
    errs
}

/// The kinds a CRD serves.
pub fn kinds_of(crd: &Value) -> Vec<Kind> {
    let s = |p: &str| {
        crd.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let group = s("/spec/group");
    let kind = s("/spec/names/kind");
    let plural = s("/spec/names/plural");
    let list_kind = crd
        .pointer("/spec/names/listKind")
        .and_then(Value::as_str)
        .map(String::from)
        .unwrap_or_else(|| format!("{kind}List"));
    let singular = crd
        .pointer("/spec/names/singular")
        .and_then(Value::as_str)
        .map(String::from)
        .unwrap_or_else(|| kind.to_lowercase());
    let strs = |p: &str| -> Vec<String> {
        crd.pointer(p)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().map(String::from))
            .collect()
    };
    let versions = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let storage = versions
        .iter()
        .find(|v| v.get("storage") == Some(&json!(true)))
        .and_then(|v| v.get("name"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let mut out = Vec::new();
    for v in versions
        .iter()
        .filter(|v| v.get("served") == Some(&json!(true)))
    {
        let version = v
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let schema = v
            .pointer("/schema/openAPIV3Schema")
            .cloned()
            .unwrap_or(json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}));
        let rev_group: Vec<&str> = group.split('.').rev().collect();
        let scale = v.pointer("/subresources/scale").map(|sc| ScalePaths {
            spec_replicas: sc
                .get("specReplicasPath")
                .and_then(Value::as_str)
                .unwrap_or(".spec.replicas")
                .into(),
            status_replicas: sc
                .get("statusReplicasPath")
                .and_then(Value::as_str)
                .unwrap_or(".status.replicas")
                .into(),
            label_selector: sc
                .get("labelSelectorPath")
                .and_then(Value::as_str)
                .map(String::from),
        });
        let printer_columns = v
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|c| PrinterColumn {
                name: c
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .into(),
                type_: c
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("string")
                    .into(),
                format: c
                    .get("format")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .into(),
                description: c
                    .get("description")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .into(),
                priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0) as i32,
                json_path: c
                    .get("jsonPath")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .into(),
            })
            .collect();
        out.push(Kind {
            group: group.clone(),
            version: version.clone(),
            kind: kind.clone(),
            list_kind: list_kind.clone(),
            plural: plural.clone(),
            singular: singular.clone(),
            namespaced: s("/spec/scope") == "Namespaced",
            short_names: strs("/spec/names/shortNames"),
            categories: strs("/spec/names/categories"),
            status: v.pointer("/subresources/status").is_some(),
            scale,
            codec: Arc::new(SchemaCodec {
                schema: schema.clone(),
                name: format!("{}.{version}.{kind}", rev_group.join(".")),
                gvk: (group.clone(), version.clone(), kind.clone()),
            }),
            storage_group: group.clone(),
            storage_plural: plural.clone(),
            storage_version: storage.clone(),
            printer_columns,
            crd_schema: Some(schema),
            node_subresources: Vec::new(),
            read_only: false,
            review: false,
        });
    }
    out
}

/// Keeps the registry in step with the CRDs, marks new ones Established, and removes the
/// custom resources of deleted ones before letting the CRD go.
pub fn run_controller(api: Arc<Api>) {
    tokio::spawn(async move {
        let prefix = "/registry/apiextensions.k8s.io/customresourcedefinitions/";
        loop {
            let Ok(sub) = api.cache.subscribe(prefix, None) else {
                continue;
            };
            let mut rx = sub.rx;
            reconcile(&api).await;
            loop {
                match rx.recv().await {
                    Ok(e) if e.key.starts_with(prefix) => reconcile(&api).await,
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        reconcile(&api).await
                    }
                    Err(_) => break,
                }
            }
        }
    });
}

/// Reconciles again in a while (a CRD waiting for its custom resources to go), once per CRD.
fn retry_later(api: &Api, key: &str) {
    static WAITING: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut waiting = WAITING.lock().unwrap();
    if waiting.iter().any(|k| k == key) {
        return;
    }
    waiting.push(key.to_string());
    let api = api.clone_handle();
    let key = key.to_string();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        WAITING.lock().unwrap().retain(|k| *k != key);
        reconcile(&api).await;
    });
}

async fn reconcile(api: &Api) {
    let prefix = "/registry/apiextensions.k8s.io/customresourcedefinitions/";
    let Ok(list) = api
        .store
        .list(store::ListOptions {
            prefix,
            ..Default::default()
        })
        .await
    else {
        return;
    };
    let mut custom = Vec::new();
    let mut todo = Vec::new();
    for kv in &list.kvs {
        let crd: Value = serde_json::from_slice(&kv.value).unwrap_or_default();
        custom.extend(kinds_of(&crd));
        todo.push((kv.key.clone(), kv.mod_revision, crd));
    }
    api.registry.set_custom(custom);
    for (key, rev, mut crd) in todo {
        if crd.pointer("/metadata/deletionTimestamp").is_some() {
            let group = crd
                .pointer("/spec/group")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let plural = crd
                .pointer("/spec/names/plural")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            // Custom resources go through the API's delete (their own finalizers hold them);
            // the CRD goes once none is left.
            let cr_prefix = format!("/registry/{group}/{plural}/");
            let left = match api
                .store
                .list(store::ListOptions {
                    prefix: &cr_prefix,
                    ..Default::default()
                })
                .await
            {
                Ok(crs) => crs.kvs,
                Err(_) => continue,
            };
            if !left.is_empty() {
                if let Some(kind) = api.registry.any_version(&group, &plural) {
                    for cr in &left {
                        let v: Value = serde_json::from_slice(&cr.value).unwrap_or_default();
                        let name = v
                            .pointer("/metadata/name")
                            .and_then(Value::as_str)
                            .unwrap_or_default();
                        let ns = v.pointer("/metadata/namespace").and_then(Value::as_str);
                        let _ = api.delete_default(&kind, ns, name).await;
                    }
                }
                retry_later(api, &key);
                continue;
            }
            if let Some(f) = crd
                .pointer_mut("/metadata/finalizers")
                .and_then(Value::as_array_mut)
            {
                f.retain(|x| x != CLEANUP_FINALIZER);
            }
            let empty = crd
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .is_none_or(|f| f.is_empty());
            if empty {
                let _ = api.store.delete(&key, Some(rev)).await;
            } else {
                let _ = api
                    .store
                    .update(&key, serde_json::to_vec(&crd).unwrap(), rev)
                    .await;
            }
            continue;
        }
        let established = crd
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|c| {
                c.iter().any(|c| {
                    c.get("type") == Some(&json!("Established"))
                        && c.get("status") == Some(&json!("True"))
                })
            });
        let accepted = crd.pointer("/status/acceptedNames") == crd.pointer("/spec/names");
        if established && accepted {
            continue;
        }
        let now = crate::now();
        let names = crd.pointer("/spec/names").cloned().unwrap_or(json!({}));
        let mut names_full = names.clone();
        if let Some(m) = names_full.as_object_mut() {
            let kind = m
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            m.entry("listKind").or_insert(json!(format!("{kind}List")));
            m.entry("singular").or_insert(json!(kind.to_lowercase()));
        }
        let storage: Vec<Value> = crd
            .pointer("/spec/versions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|v| v.get("storage") == Some(&json!(true)))
            .filter_map(|v| v.get("name").cloned())
            .collect();
        let mut status = Map::new();
        status.insert("acceptedNames".into(), names_full.clone());
        status.insert("storedVersions".into(), json!(storage));
        status.insert("conditions".into(), json!([
            {"type": "NamesAccepted", "status": "True", "lastTransitionTime": now, "reason": "NoConflicts", "message": "no conflicts found"},
            {"type": "Established", "status": "True", "lastTransitionTime": now, "reason": "InitialNamesAccepted", "message": "the initial names have been accepted"},
        ]));
        crd["spec"]["names"] = names_full;
        crd["status"] = Value::Object(status);
        let _ = api
            .store
            .update(&key, serde_json::to_vec(&crd).unwrap(), rev)
            .await;
    }
}
