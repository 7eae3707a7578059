//! `/openapi/v2` and `/openapi/v3`, generated from the `k8s-openapi` types (and CRD
//! schemas): GVK-tagged operations with `fieldValidation`, and the strategic merge keys
//! (`x-kubernetes-patch-merge-key`) kubectl builds its patches from.

use serde_json::{json, Map, Value};

use crate::kinds::{Kind, Registry};

fn params_common() -> Vec<Value> {
    vec![
        json!({"name": "dryRun", "in": "query", "description": "When present, indicates that modifications should not be persisted.", "schema": {"type": "string", "uniqueItems": true}}),
        json!({"name": "fieldManager", "in": "query", "description": "fieldManager is a name associated with the actor or entity that is making these changes.", "schema": {"type": "string", "uniqueItems": true}}),
        json!({"name": "fieldValidation", "in": "query", "description": "fieldValidation instructs the server on how to handle objects in the request (POST/PUT/PATCH) containing unknown or duplicate fields. Valid values are: - Ignore - Warn - Strict", "schema": {"type": "string", "uniqueItems": true}}),
    ]
}

fn v2_params(v3: Vec<Value>) -> Vec<Value> {
    v3.into_iter()
        .map(|mut p| {
            if let Some(s) = p.as_object_mut().and_then(|m| m.remove("schema")) {
                p["type"] = s.get("type").cloned().unwrap_or(json!("string"));
                p["uniqueItems"] = json!(true);
            }
            p
        })
        .collect()
}

fn add_merge_keys(defs: &mut Map<String, Value>, refs_prefix: &str) {
    for (def_name, def) in defs.iter_mut() {
        let Some(props) = def.get_mut("properties").and_then(Value::as_object_mut) else {
            continue;
        };
        for (pname, p) in props.iter_mut() {
            if pname == "finalizers" && def_name.ends_with("ObjectMeta") {
                p["x-kubernetes-patch-strategy"] = json!("merge");
                continue;
            }
            if p.get("type") != Some(&json!("array")) {
                continue;
            }
            let item_ref = p
                .pointer("/items/$ref")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .trim_start_matches(refs_prefix)
                .to_string();
            let key = match (
                pname.as_str(),
                item_ref.rsplit('.').next().unwrap_or_default(),
            ) {
                ("ports", "ContainerPort") => Some("containerPort"),
                ("ports", "ServicePort") => Some("port"),
                ("ports", _) => None,
                ("addresses", "NodeAddress") => Some("type"),
                ("addresses", _) => None,
                (name, _) if !item_ref.is_empty() => crate::patch::merge_key("", name, &[]),
                _ => None,
            };
            if let Some(k) = key {
                p["x-kubernetes-patch-merge-key"] = json!(k);
                p["x-kubernetes-patch-strategy"] = json!("merge");
                p["x-kubernetes-list-type"] = json!("map");
                p["x-kubernetes-list-map-keys"] = json!([k]);
            }
        }
    }
}

fn kind_paths(k: &Kind, schema_ref: &str, v3: bool) -> Vec<(String, Value)> {
    let base = if k.group.is_empty() {
        format!("/api/{}", k.version)
    } else {
        format!("/apis/{}/{}", k.group, k.version)
    };
    let coll = if k.namespaced {
        format!("{base}/namespaces/{{namespace}}/{}", k.plural)
    } else {
        format!("{base}/{}", k.plural)
    };
    let item = format!("{coll}/{{name}}");
    let gvk = json!({"group": k.group, "version": k.version, "kind": k.kind});
    let resp = |r: &str| {
        if v3 {
            json!({"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": r}}}}})
        } else {
            json!({"200": {"description": "OK", "schema": {"$ref": r}}})
        }
    };
    let patch_ref = if v3 {
        "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.Patch"
    } else {
        "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.Patch"
    };
    let mut patch_types = vec![
        "application/json-patch+json",
        "application/merge-patch+json",
        "application/apply-patch+yaml",
    ];
    if k.crd_schema.is_none() {
        patch_types.insert(2, "application/strategic-merge-patch+json");
    }
    let mut patch_params = params_common();
    patch_params.push(json!({"name": "force", "in": "query", "description": "Force is going to \"force\" Apply requests.", "schema": {"type": "boolean", "uniqueItems": true}}));
    let write_op = |action: &str,
                    id: &str,
                    r: &str,
                    params: Vec<Value>,
                    body_types: &[&str],
                    body_ref: &str| {
        let mut op = json!({
            "operationId": id,
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk,
            "responses": resp(r),
        });
        if v3 {
            op["parameters"] = json!(params);
            let content: Map<String, Value> = body_types
                .iter()
                .map(|t| (t.to_string(), json!({"schema": {"$ref": body_ref}})))
                .collect();
            op["requestBody"] = json!({"content": content, "required": true});
        } else {
            let mut p = v2_params(params);
            p.push(json!({"name": "body", "in": "body", "required": true, "schema": {"$ref": body_ref}}));
            op["parameters"] = json!(p);
            op["consumes"] = json!(body_types);
        }
        op
    };
    let name = format!("{}{}", k.kind, k.version);
    let read = |id: &str, r: &str| json!({"operationId": id, "x-kubernetes-action": "get", "x-kubernetes-group-version-kind": gvk, "responses": resp(r)});
    let mut out = vec![
        (
            coll.clone(),
            json!({
                "get": {"operationId": format!("list{name}"), "x-kubernetes-action": "list", "x-kubernetes-group-version-kind": gvk, "responses": resp(schema_ref)},
                "post": write_op("post", &format!("create{name}"), schema_ref, params_common(), &["application/json", "application/yaml"], schema_ref),
                "delete": {"operationId": format!("deletecollection{name}"), "x-kubernetes-action": "deletecollection", "x-kubernetes-group-version-kind": gvk, "responses": resp(schema_ref)},
            }),
        ),
        (
            item.clone(),
            json!({
                "get": read(&format!("read{name}"), schema_ref),
                "put": write_op("put", &format!("replace{name}"), schema_ref, params_common(), &["application/json", "application/yaml"], schema_ref),
                "patch": write_op("patch", &format!("patch{name}"), schema_ref, patch_params.clone(), &patch_types, patch_ref),
                "delete": {"operationId": format!("delete{name}"), "x-kubernetes-action": "delete", "x-kubernetes-group-version-kind": gvk, "responses": resp(schema_ref)},
            }),
        ),
    ];
    if k.status {
        out.push((
            format!("{item}/status"),
            json!({
                "get": read(&format!("read{name}Status"), schema_ref),
                "put": write_op("put", &format!("replace{name}Status"), schema_ref, params_common(), &["application/json", "application/yaml"], schema_ref),
                "patch": write_op("patch", &format!("patch{name}Status"), schema_ref, patch_params.clone(), &patch_types, patch_ref),
            }),
        ));
    }
    if k.scale.is_some() {
        let sref = if v3 {
            "#/components/schemas/io.k8s.api.autoscaling.v1.Scale"
        } else {
            "#/definitions/io.k8s.api.autoscaling.v1.Scale"
        };
        let sgvk = json!({"group": "autoscaling", "version": "v1", "kind": "Scale"});
        let mut get = read(&format!("read{name}Scale"), sref);
        get["x-kubernetes-group-version-kind"] = sgvk.clone();
        let mut put = write_op(
            "put",
            &format!("replace{name}Scale"),
            sref,
            params_common(),
            &["application/json"],
            sref,
        );
        put["x-kubernetes-group-version-kind"] = sgvk.clone();
        let mut patch = write_op(
            "patch",
            &format!("patch{name}Scale"),
            sref,
            patch_params,
            &patch_types,
            patch_ref,
        );
        patch["x-kubernetes-group-version-kind"] = sgvk;
        out.push((
            format!("{item}/scale"),
            json!({"get": get, "put": put, "patch": patch}),
        ));
    }
    out
}

fn generate(kinds: &[&Kind], v3: bool) -> (Map<String, Value>, Map<String, Value>) {
    let settings = if v3 {
        schemars::generate::SchemaSettings::openapi3()
    } else {
        schemars::generate::SchemaSettings::draft07()
    };
    let mut gen = settings.into_generator();
    let prefix = if v3 {
        "#/components/schemas/"
    } else {
        "#/definitions/"
    };
    let mut paths = Map::new();
    let mut tagged = Vec::new();
    for k in kinds {
        let _ = k.codec.add_schema(&mut gen);
        let name = k.codec.schema_name();
        tagged.push((
            name.clone(),
            k.group.clone(),
            k.version.clone(),
            k.kind.clone(),
        ));
        for (p, ops) in kind_paths(k, &format!("{prefix}{name}"), v3) {
            paths.insert(p, ops);
        }
        if k.scale.is_some() {
            let _ = gen.subschema_for::<k8s_openapi::api::autoscaling::v1::Scale>();
            tagged.push((
                "io.k8s.api.autoscaling.v1.Scale".into(),
                "autoscaling".into(),
                "v1".into(),
                "Scale".into(),
            ));
        }
    }
    let mut defs = gen.take_definitions(true);
    for (name, g, v, kd) in tagged {
        if let Some(d) = defs.get_mut(&name) {
            if d.get("x-kubernetes-group-version-kind").is_none() {
                d["x-kubernetes-group-version-kind"] =
                    json!([{"group": g, "version": v, "kind": kd}]);
            }
        }
    }
    defs.insert("io.k8s.apimachinery.pkg.apis.meta.v1.Patch".into(), json!({"description": "Patch is provided to give a concrete name and type to the Kubernetes PATCH request body.", "type": "object"}));
    add_merge_keys(&mut defs, prefix);
    (paths, defs)
}

/// The whole API in OpenAPI v2.
pub fn v2(reg: &Registry) -> Value {
    let all = reg.all();
    let kinds: Vec<&Kind> = all.iter().map(|k| k.as_ref()).collect();
    let (paths, defs) = generate(&kinds, false);
    json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": crate::VERSION}, "paths": paths, "definitions": defs})
}

/// The v3 index: one document per group-version.
pub fn v3_index(reg: &Registry) -> Value {
    let mut paths = Map::new();
    let mut gvs: Vec<(String, String)> = reg
        .all()
        .iter()
        .map(|k| (k.group.clone(), k.version.clone()))
        .collect();
    gvs.sort();
    gvs.dedup();
    for (g, v) in gvs {
        let p = if g.is_empty() {
            format!("api/{v}")
        } else {
            format!("apis/{g}/{v}")
        };
        let hash = fnv(&format!(
            "{p}:{}",
            reg.all()
                .iter()
                .filter(|k| k.group == g && k.version == v)
                .map(|k| format!(
                    "{}{}",
                    k.plural,
                    k.crd_schema
                        .as_ref()
                        .map(|s| s.to_string())
                        .unwrap_or_default()
                ))
                .collect::<String>()
        ));
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={hash:016X}")}),
        );
    }
    json!({"paths": paths})
}

fn fnv(s: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// The v3 document of one group-version.
pub fn v3_doc(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    let all = reg.all();
    let kinds: Vec<&Kind> = all
        .iter()
        .filter(|k| k.group == group && k.version == version)
        .map(|k| k.as_ref())
        .collect();
    if kinds.is_empty() {
        return None;
    }
    let (paths, defs) = generate(&kinds, true);
    Some(
        json!({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": crate::VERSION}, "paths": paths, "components": {"schemas": defs}}),
    )
}
