//! Server-side apply and managedFields: field sets in the FieldsV1 format, ownership per
//! manager, conflicts (and `force`), and removal of fields a manager stopped applying.

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

use crate::patch::merge_key;

/// A field path: `f:spec`, `f:containers`, `k:{"name":"a"}`, `f:image` (or `.` for the item).
pub type FieldPath = Vec<String>;
pub type FieldSet = BTreeSet<FieldPath>;

const IGNORED_TOP: &[&str] = &["apiVersion", "kind", "status"];
const IGNORED_META: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];

/// Which part of an object a field set covers: the main resource (not status) or the
/// status subresource (status only).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Main,
    Status,
}

/// `field` is the key `v` sits under; `ctx` names the object holding it (for merge keys).
fn walk(
    v: &Value,
    field: Option<&str>,
    ctx: &str,
    part: Part,
    path: &mut FieldPath,
    out: &mut FieldSet,
) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            let inner = field.unwrap_or(ctx);
            for (k, child) in m {
                if k.starts_with('$') {
                    continue;
                }
                if path.is_empty() {
                    let skip = match part {
                        Part::Main => IGNORED_TOP.contains(&k.as_str()),
                        Part::Status => k != "status",
                    };
                    if skip {
                        continue;
                    }
                }
                if path.len() == 1 && path[0] == "f:metadata" && IGNORED_META.contains(&k.as_str())
                {
                    continue;
                }
                path.push(format!("f:{k}"));
                walk(child, Some(k), inner, part, path, out);
                path.pop();
            }
        }
        Value::Array(items) if !items.is_empty() => {
            let f = field.unwrap_or_default();
            if f == "finalizers" {
                for i in items {
                    path.push(format!("v:{i}"));
                    out.insert(path.clone());
                    path.pop();
                }
            } else if let Some(key) =
                merge_key(ctx, f, items).filter(|_| items.iter().all(Value::is_object))
            {
                for i in items {
                    let mut kv = Map::new();
                    if let Some(x) = i.get(key) {
                        kv.insert(key.into(), x.clone());
                    }
                    path.push(format!("k:{}", Value::Object(kv)));
                    path.push(".".into());
                    out.insert(path.clone());
                    path.pop();
                    walk(i, None, f, part, path, out);
                    path.pop();
                }
            } else {
                out.insert(path.clone());
            }
        }
        _ => {
            out.insert(path.clone());
        }
    }
}

/// The fields an object sets (outside status).
pub fn field_set(v: &Value) -> FieldSet {
    field_set_of(v, Part::Main)
}

/// The fields an object sets in one part.
pub fn field_set_of(v: &Value, part: Part) -> FieldSet {
    let mut out = FieldSet::new();
    walk(v, None, "", part, &mut Vec::new(), &mut out);
    out.retain(|p| !p.is_empty());
    out
}

/// Whether two objects are the same but for the times in their managedFields (an apply
/// that changes nothing must not write a new revision).
pub fn same_ignoring_times(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut c = v.clone();
        if let Some(list) = c
            .pointer_mut("/metadata/managedFields")
            .and_then(Value::as_array_mut)
        {
            for e in list.iter_mut() {
                if let Some(o) = e.as_object_mut() {
                    o.remove("time");
                }
            }
            list.sort_by_key(|e| e.to_string());
        }
        c
    };
    a == b || strip(a) == strip(b)
}

/// FieldsV1 JSON from a set.
pub fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for p in set {
        let mut cur = &mut root;
        for el in p {
            cur = cur
                .entry(el.clone())
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .unwrap();
        }
    }
    Value::Object(root)
}

/// A set from FieldsV1 JSON.
pub fn from_fields_v1(v: &Value) -> FieldSet {
    fn rec(v: &Value, path: &mut FieldPath, out: &mut FieldSet) {
        match v.as_object() {
            Some(m) if !m.is_empty() => {
                for (k, c) in m {
                    path.push(k.clone());
                    rec(c, path, out);
                    path.pop();
                }
            }
            _ => {
                if !path.is_empty() {
                    out.insert(path.clone());
                }
            }
        }
    }
    let mut out = FieldSet::new();
    rec(v, &mut Vec::new(), &mut out);
    out
}

/// Renders a path as Kubernetes shows it in conflicts: `.spec.containers[name="a"].image`.
pub fn display(p: &FieldPath) -> String {
    let mut s = String::new();
    for el in p {
        if let Some(f) = el.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(k) = el.strip_prefix("k:") {
            let kv: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
            let parts: Vec<String> = kv.iter().map(|(k, v)| format!("{k}={v}")).collect();
            s.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(v) = el.strip_prefix("v:") {
            s.push_str(&format!("[={v}]"));
        }
    }
    s
}

/// The value at a path in an object.
/// Whether a list item is the one a path element names.
type ItemMatcher = Box<dyn Fn(&Value) -> bool>;

/// For a path element naming a list item (`k:{"name":"a"}` by key, `v:"x"` by value), what
/// the item must match; None for a field (`f:x`) or the item itself (`.`).
fn item_matcher(el: &str) -> Option<ItemMatcher> {
    if let Some(k) = el.strip_prefix("k:") {
        let kv: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
        return Some(Box::new(move |i: &Value| {
            kv.iter().all(|(k, v)| i.get(k) == Some(v))
        }));
    }
    let want: Value = serde_json::from_str(el.strip_prefix("v:")?).unwrap_or(Value::Null);
    Some(Box::new(move |i: &Value| *i == want))
}

/// The value at a path in an object.
pub fn lookup<'a>(v: &'a Value, p: &[String]) -> Option<&'a Value> {
    let mut cur = v;
    for el in p.iter().filter(|el| *el != ".") {
        cur = match el.strip_prefix("f:") {
            Some(f) => cur.get(f)?,
            None => {
                let m = item_matcher(el)?;
                cur.as_array()?.iter().find(|i| m(i))?
            }
        };
    }
    Some(cur)
}

fn remove_path(v: &mut Value, p: &[String]) {
    let Some((last, parent)) = p.split_last() else {
        return;
    };
    if last == "." {
        return remove_path(v, parent);
    }
    let mut cur = v;
    for el in parent.iter().filter(|el| *el != ".") {
        let next = match (el.strip_prefix("f:"), item_matcher(el)) {
            (Some(f), _) => cur.get_mut(f),
            (None, Some(m)) => cur.as_array_mut().and_then(|a| a.iter_mut().find(|i| m(i))),
            (None, None) => None,
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    match (last.strip_prefix("f:"), item_matcher(last)) {
        (Some(f), _) => {
            if let Some(m) = cur.as_object_mut() {
                m.remove(f);
            }
        }
        (None, Some(m)) => {
            if let Some(a) = cur.as_array_mut() {
                a.retain(|i| !m(i));
            }
        }
        (None, None) => {}
    }
}

/// One entry of `metadata.managedFields`.
#[derive(Clone, Debug)]
pub struct Managed {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub time: String,
    pub subresource: Option<String>,
    pub fields: FieldSet,
}

pub fn read_managed(obj: &Value) -> Vec<Managed> {
    let text = |e: &Value, k: &str| {
        e.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|e| Managed {
            manager: text(e, "manager"),
            operation: text(e, "operation"),
            api_version: text(e, "apiVersion"),
            time: text(e, "time"),
            subresource: e
                .get("subresource")
                .and_then(Value::as_str)
                .map(String::from),
            fields: e.get("fieldsV1").map(from_fields_v1).unwrap_or_default(),
        })
        .collect()
}

pub fn write_managed(obj: &mut Value, managed: &[Managed]) {
    let list: Vec<Value> = managed
        .iter()
        .filter(|m| !m.fields.is_empty())
        .map(|m| {
            let mut e = json!({
                "manager": m.manager,
                "operation": m.operation,
                "apiVersion": m.api_version,
                "time": m.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": to_fields_v1(&m.fields),
            });
            if let Some(s) = &m.subresource {
                e["subresource"] = json!(s);
            }
            e
        })
        .collect();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(list));
        }
    }
}

fn is_prefix(a: &[String], b: &[String]) -> bool {
    b.len() >= a.len() && b[..a.len()] == *a
}

/// Records an ordinary write (create, update, patch) by `manager`: the fields that changed
/// between `old` and `new` move to it.
pub fn record_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    api_version: &str,
    subresource: Option<&str>,
    now: &str,
) {
    let mut managed = old.map(read_managed).unwrap_or_default();
    let new_set = field_set(new);
    let changed: FieldSet = match old {
        None => new_set.clone(),
        Some(o) => {
            let old_set = field_set(o);
            new_set
                .iter()
                .filter(|p| !old_set.contains(*p) || lookup(o, p) != lookup(new, p))
                .cloned()
                .collect()
        }
    };
    // Fields that no longer exist belong to nobody.
    for m in managed.iter_mut() {
        m.fields
            .retain(|p| lookup(new, p).is_some() || p.last().is_some_and(|l| l == "."));
        m.fields.retain(|p| !changed.contains(p));
    }
    if !changed.is_empty() {
        match managed.iter_mut().find(|m| {
            m.manager == manager
                && m.operation == "Update"
                && m.subresource.as_deref() == subresource
        }) {
            Some(m) => {
                m.fields.extend(changed);
                m.time = now.into();
                m.api_version = api_version.into();
            }
            None => managed.push(Managed {
                manager: manager.into(),
                operation: "Update".into(),
                api_version: api_version.into(),
                time: now.into(),
                subresource: subresource.map(String::from),
                fields: changed,
            }),
        }
    }
    write_managed(new, &managed);
}

/// A conflict: the field and the manager that owns it.
pub struct Conflict {
    pub field: String,
    pub manager: String,
    pub api_version: String,
}

/// Server-side apply of `config` by `manager` onto `live` (None: a create). Returns the new
/// object, or the conflicts when `force` is false.
pub fn apply(
    live: Option<&Value>,
    config: &Value,
    manager: &str,
    api_version: &str,
    force: bool,
    now: &str,
) -> Result<Value, Vec<Conflict>> {
    apply_part(live, config, manager, api_version, force, now, Part::Main)
}

/// Server-side apply of one part of an object (the main resource or its status).
pub fn apply_part(
    live: Option<&Value>,
    config: &Value,
    manager: &str,
    api_version: &str,
    force: bool,
    now: &str,
    part: Part,
) -> Result<Value, Vec<Conflict>> {
    let subresource = (part == Part::Status).then(|| "status".to_string());
    let mine = |m: &Managed| {
        m.manager == manager && m.operation == "Apply" && m.subresource == subresource
    };
    let mut managed = live.map(read_managed).unwrap_or_default();
    let new_set = field_set_of(config, part);
    let base = live.cloned().unwrap_or_else(|| json!({}));
    // Conflicts: fields others own whose value the config changes.
    let mut conflicts = Vec::new();
    let mut forced = FieldSet::new();
    for m in managed.iter() {
        if mine(m) {
            continue;
        }
        for p in m.fields.intersection(&new_set) {
            if p.last().is_some_and(|l| l == ".") {
                continue;
            }
            if lookup(&base, p) != lookup(config, p) {
                conflicts.push(Conflict {
                    field: display(p),
                    manager: m.manager.clone(),
                    api_version: m.api_version.clone(),
                });
                forced.insert(p.clone());
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflicts);
    }
    // Fields this manager applied before and no longer applies: removed unless others own them.
    let previous: FieldSet = managed
        .iter()
        .filter(|m| mine(m))
        .flat_map(|m| m.fields.iter().cloned())
        .collect();
    let mut result = base.clone();
    let mut gone: Vec<&FieldPath> = previous.iter().filter(|p| !new_set.contains(*p)).collect();
    gone.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in gone {
        let item_prefix: &[String] = if p.last().is_some_and(|l| l == ".") {
            &p[..p.len() - 1]
        } else {
            p
        };
        let owned_by_other = managed
            .iter()
            .any(|m| !mine(m) && m.fields.iter().any(|q| is_prefix(item_prefix, q)));
        let still_applied = new_set.iter().any(|q| is_prefix(item_prefix, q));
        if !owned_by_other && !still_applied {
            remove_path(&mut result, p);
        }
    }
    // Only the part applied is merged in.
    let cfg = match part {
        Part::Main => {
            let mut c = config.clone();
            if let Some(m) = c.as_object_mut() {
                m.remove("status");
            }
            c
        }
        Part::Status => json!({"status": config.get("status").cloned().unwrap_or(json!({}))}),
    };
    crate::patch::strategic_merge(&mut result, &cfg).map_err(|e| {
        vec![Conflict {
            field: e,
            manager: String::new(),
            api_version: String::new(),
        }]
    })?;
    for m in managed.iter_mut() {
        if !mine(m) {
            m.fields.retain(|p| !forced.contains(p));
        }
    }
    // The manager's entry keeps its place; a new one goes last.
    let entry = Managed {
        manager: manager.into(),
        operation: "Apply".into(),
        api_version: api_version.into(),
        time: now.into(),
        subresource: subresource.clone(),
        fields: new_set,
    };
    let list: Vec<Managed> = match managed.iter().position(&mine) {
        Some(at) => {
            managed[at] = entry;
            managed
        }
        None => {
            managed.push(entry);
            managed
        }
    };

    write_managed(&mut result, &list);
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_removes_what_is_no_longer_applied_and_reports_conflicts() {
        let c1 = json!({"metadata": {"name": "a", "labels": {"x": "1", "y": "2"}}, "spec": {"replicas": 1}});
        let o1 = apply(None, &c1, "m1", "v1", false, "t").ok().unwrap();
        let c2 = json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "spec": {"replicas": 1}});
        let o2 = apply(Some(&o1), &c2, "m1", "v1", false, "t").ok().unwrap();
        assert_eq!(o2.pointer("/metadata/labels"), Some(&json!({"x": "1"})));
        let c3 = json!({"metadata": {"name": "a"}, "spec": {"replicas": 3}});
        let err = apply(Some(&o2), &c3, "m2", "v1", false, "t").err().unwrap();
        assert_eq!(err[0].field, ".spec.replicas");
        assert_eq!(err[0].manager, "m1");
        let o3 = apply(Some(&o2), &c3, "m2", "v1", true, "t").ok().unwrap();
        assert_eq!(o3.pointer("/spec/replicas"), Some(&json!(3)));
        let m = read_managed(&o3);
        assert!(!m
            .iter()
            .find(|e| e.manager == "m1")
            .unwrap()
            .fields
            .contains(&vec!["f:spec".to_string(), "f:replicas".to_string()]));
    }
}
