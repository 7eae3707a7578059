//! The patch types: JSON patch (RFC 6902), JSON merge patch (RFC 7386) and Kubernetes'
//! strategic merge patch with the built-in types' merge keys and `$patch` directives.

use serde_json::{Map, Value};

/// The merge key of a list field in the built-in types (`patchMergeKey`), if it is merged
/// by key. `parent` names the object that holds the list (the key it sits under, or the
/// list it is an item of): `ports` of a container merge by `containerPort`, of a Service's
/// spec by `port`, and elsewhere (NetworkPolicy rules, EndpointSlices) are atomic.
pub fn merge_key(parent: &str, field: &str, items: &[Value]) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims"
        | "schedulingGates" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "hostAliases" => "ip",
        "conditions" => "type",
        "ownerReferences" => "uid",
        "topologySpreadConstraints" => "topologyKey",
        "addresses" if parent == "status" => "type",
        "ports" => match parent {
            "containers" | "initContainers" | "ephemeralContainers" => "containerPort",
            "spec" if !items.iter().any(|i| i.get("containerPort").is_some()) => "port",
            _ => return None,
        },
        _ => return None,
    })
}

/// Lists of primitives merged as sets (`patchStrategy:"merge"` on a []string).
fn is_merged_primitive_list(field: &str) -> bool {
    field == "finalizers"
}

/// RFC 7386.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let t = target.as_object_mut().unwrap();
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// Applies a strategic merge patch to `target`.
pub fn strategic_merge(target: &mut Value, patch: &Value) -> Result<(), String> {
    merge_object(target, patch, "")
}

/// `name` is the key the object sits under (or the list it is an item of).
fn merge_object(target: &mut Value, patch: &Value, name: &str) -> Result<(), String> {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return Ok(());
    };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut clean = p.clone();
        clean.remove("$patch");
        *target = Value::Object(clean);
        return Ok(());
    }
    if p.get("$patch").and_then(Value::as_str) == Some("delete") {
        *target = Value::Object(Map::new());
        return Ok(());
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().unwrap();
    if let Some(retain) = p.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = retain.iter().filter_map(Value::as_str).collect();
        t.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (k, v) in p {
        if k == "$patch" || k == "$retainKeys" || k.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(list), Some(del)) =
                (t.get_mut(field).and_then(Value::as_array_mut), v.as_array())
            {
                list.retain(|x| !del.contains(x));
            }
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        match v {
            Value::Array(items) => {
                let existing = t.get(k).and_then(Value::as_array).cloned();
                let replace = items
                    .iter()
                    .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"));
                let merged = match existing {
                    Some(cur) if !replace => merge_list(name, k, cur, items)?,
                    _ => items
                        .iter()
                        .filter(|i| i.get("$patch").is_none())
                        .cloned()
                        .collect(),
                };
                t.insert(k.clone(), Value::Array(merged));
            }
            Value::Object(_) => {
                let entry = t.entry(k.clone()).or_insert(Value::Null);
                merge_object(entry, v, k)?;
            }
            other => {
                t.insert(k.clone(), other.clone());
            }
        }
    }
    Ok(())
}

fn merge_list(
    parent: &str,
    field: &str,
    mut cur: Vec<Value>,
    patch: &[Value],
) -> Result<Vec<Value>, String> {
    if is_merged_primitive_list(field) {
        for v in patch {
            if !cur.contains(v) {
                cur.push(v.clone());
            }
        }
        return Ok(cur);
    }
    let Some(key) = merge_key(parent, field, patch).or_else(|| merge_key(parent, field, &cur))
    else {
        return Ok(patch.to_vec());
    };
    for item in patch {
        let Some(kv) = item.get(key) else {
            return Err(format!(
                "map: {item} does not contain declared merge key: {key}"
            ));
        };
        let pos = cur.iter().position(|c| c.get(key) == Some(kv));
        if item.get("$patch").and_then(Value::as_str) == Some("delete") {
            if let Some(i) = pos {
                cur.remove(i);
            }
            continue;
        }
        match pos {
            Some(i) => merge_object(&mut cur[i], item, field)?,
            None => {
                let mut v = Value::Null;
                merge_object(&mut v, item, field)?;
                cur.push(v);
            }
        }
    }
    Ok(cur)
}

/// Applies an RFC 6902 JSON patch.
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), String> {
    let p: json_patch::Patch = serde_json::from_value(patch.clone()).map_err(|e| e.to_string())?;
    json_patch::patch(target, &p).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merge_by_key_and_directives() {
        let cases = [
            (
                json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}}),
                json!({"spec": {"containers": [{"name": "b", "image": "z"}, {"name": "c", "image": "w"}]}}),
                json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "z"}, {"name": "c", "image": "w"}]}}),
            ),
            (
                json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}}),
                json!({"spec": {"containers": [{"name": "a", "$patch": "delete"}]}}),
                json!({"spec": {"containers": [{"name": "b"}]}}),
            ),
            (
                json!({"metadata": {"labels": {"a": "1", "b": "2"}}}),
                json!({"metadata": {"labels": {"a": null, "c": "3"}}}),
                json!({"metadata": {"labels": {"b": "2", "c": "3"}}}),
            ),
            (
                json!({"spec": {"args": ["a", "b"]}}),
                json!({"spec": {"args": ["c"]}}),
                json!({"spec": {"args": ["c"]}}),
            ),
            (
                json!({"spec": {"ports": [{"port": 80, "name": "a"}, {"port": 81, "name": "b"}]}}),
                json!({"spec": {"ports": [{"port": 81, "name": "bb"}]}}),
                json!({"spec": {"ports": [{"port": 80, "name": "a"}, {"port": 81, "name": "bb"}]}}),
            ),
            (
                json!({"spec": {"ingress": [{"ports": [{"port": 80}, {"port": 81}]}]}}),
                json!({"spec": {"ingress": [{"ports": [{"port": 81}]}]}}),
                json!({"spec": {"ingress": [{"ports": [{"port": 81}]}]}}),
            ),
            (
                json!({"spec": {"taints": [{"key": "a", "effect": "NoSchedule"}, {"key": "b", "effect": "NoSchedule"}]}}),
                json!({"spec": {"taints": [{"key": "b", "effect": "NoSchedule"}]}}),
                json!({"spec": {"taints": [{"key": "b", "effect": "NoSchedule"}]}}),
            ),
            (
                json!({"metadata": {"finalizers": ["a"]}}),
                json!({"metadata": {"finalizers": ["b"]}}),
                json!({"metadata": {"finalizers": ["a", "b"]}}),
            ),
            (
                json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}}),
                json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}),
                json!({"spec": {"strategy": {"type": "Recreate"}}}),
            ),
        ];
        for (mut target, patch, want) in cases {
            strategic_merge(&mut target, &patch).unwrap();
            assert_eq!(target, want, "patch {patch}");
        }
    }

    #[test]
    fn merge_patch_rfc7386() {
        let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut t, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(t, json!({"a": "z", "c": {"d": "e"}}));
    }
}
