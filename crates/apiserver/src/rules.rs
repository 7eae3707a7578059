//! Validation and defaulting as Kubernetes does them: names and labels per the DNS-1123
//! rules, each kind's required and immutable fields, and its defaults.

use serde_json::{json, Map, Value};

use crate::kinds::Kind;
use crate::status::FieldError;

const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

fn is_qualified_name_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

/// Why a port name is not an IANA service name (RFC 6335), if it is not.
fn port_name_error(n: &str) -> Option<&'static str> {
    if n.len() > 15 {
        return Some("must be no more than 15 characters");
    }
    if !n
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Some("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)");
    }
    if n.contains("--") {
        return Some("must not contain consecutive hyphens");
    }
    if !n.bytes().any(|b| b.is_ascii_lowercase()) {
        return Some("must contain at least one letter (a-z)");
    }
    if n.starts_with('-') || n.ends_with('-') {
        return Some("must not begin or end with a hyphen");
    }
    None
}

/// Whether a string is a Kubernetes resource quantity (`500m`, `1Gi`, `2e3`, `0.5`).
pub fn is_quantity(q: &str) -> bool {
    let q = q.strip_prefix(['+', '-']).unwrap_or(q);
    let digits = q
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b'.')
        .count();
    if digits == 0 || q[..digits].matches('.').count() > 1 || q[..digits] == *"." {
        return false;
    }
    let suffix = &q[digits..];
    const SUFFIXES: &[&str] = &[
        "", "n", "u", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
    ];
    if SUFFIXES.contains(&suffix) {
        return true;
    }
    // Decimal exponents: e3, E-2.
    let Some(exp) = suffix.strip_prefix(['e', 'E']) else {
        return false;
    };
    let exp = exp.strip_prefix(['+', '-']).unwrap_or(exp);
    !exp.is_empty() && exp.bytes().all(|b| b.is_ascii_digit())
}

/// The first resource quantity in an object that is not one, where Kubernetes reads them
/// (containers' requests and limits, claims' requests, quotas and limit ranges).
pub fn bad_quantity(obj: &Value) -> Option<String> {
    fn scan(v: &Value, in_quantities: bool) -> Option<String> {
        match v {
            Value::Object(m) => m.iter().find_map(|(k, x)| {
                if let (true, Value::String(q)) = (in_quantities, x) {
                    return (!is_quantity(q)).then(|| q.clone());
                }
                let quantities = matches!(
                    k.as_str(),
                    "requests"
                        | "limits"
                        | "hard"
                        | "capacity"
                        | "default"
                        | "defaultRequest"
                        | "max"
                        | "min"
                        | "maxLimitRequestRatio"
                        | "allocatable"
                );
                scan(x, quantities)
            }),
            Value::Array(a) => a.iter().find_map(|x| scan(x, false)),
            Value::String(q) if in_quantities && !is_quantity(q) => Some(q.clone()),
            _ => None,
        }
    }
    scan(obj, false)
}

/// Why a label (or annotation) key is invalid, if it is.
pub fn label_key_error(k: &str) -> Option<String> {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix {
        if !is_dns1123_subdomain(p) {
            return Some(format!("prefix part {DNS1123_SUBDOMAIN_MSG}"));
        }
    }
    if name.is_empty() {
        return Some("name part must be non-empty".into());
    }
    if name.len() > 63 {
        return Some("name part must be no more than 63 characters".into());
    }
    if !is_qualified_name_part(name) {
        return Some("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')".into());
    }
    None
}

fn label_value_error(v: &str) -> Option<String> {
    if v.is_empty() {
        return None;
    }
    if v.len() > 63 {
        return Some("must be no more than 63 characters".into());
    }
    if !is_qualified_name_part(v) {
        return Some("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')".into());
    }
    None
}

/// How a kind's names are checked.
fn name_rule(kind: &Kind) -> fn(&str) -> Option<&'static str> {
    fn label(s: &str) -> Option<&'static str> {
        (!is_dns1123_label(s)).then_some(DNS1123_LABEL_MSG)
    }
    fn dns1035(s: &str) -> Option<&'static str> {
        (!is_dns1035_label(s)).then_some(DNS1035_LABEL_MSG)
    }
    fn subdomain(s: &str) -> Option<&'static str> {
        (!is_dns1123_subdomain(s)).then_some(DNS1123_SUBDOMAIN_MSG)
    }
    fn path_segment(s: &str) -> Option<&'static str> {
        if s == "." || s == ".." {
            Some("may not be '.' or '..'")
        } else if s.contains('/') || s.contains('%') {
            Some("may not contain '/' or '%'")
        } else {
            None
        }
    }
    match (kind.group.as_str(), kind.plural.as_str()) {
        ("", "namespaces") => label,
        ("", "services") => dns1035,
        ("rbac.authorization.k8s.io", _) => path_segment,
        _ if kind.crd_schema.is_some() => subdomain,
        _ => subdomain,
    }
}

/// Validates an object's metadata (`name` already resolved from generateName).
pub fn validate_meta(kind: &Kind, obj: &Value, errs: &mut Vec<FieldError>) {
    let meta = obj.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    if name.is_empty() {
        errs.push(FieldError::required(
            "metadata.name",
            "name or generateName is required",
        ));
    } else if let Some(msg) = name_rule(kind)(name) {
        errs.push(FieldError::invalid("metadata.name", name, msg));
    }
    for (field, is_label) in [("labels", true), ("annotations", false)] {
        if let Some(m) = meta.and_then(|m| m.get(field)).and_then(Value::as_object) {
            let mut total = 0;
            for (k, v) in m {
                if let Some(e) = label_key_error(k) {
                    errs.push(FieldError::invalid(
                        format!("metadata.{field}"),
                        k.as_str(),
                        e,
                    ));
                }
                let v = v.as_str().unwrap_or_default();
                total += k.len() + v.len();
                if is_label {
                    if let Some(e) = label_value_error(v) {
                        errs.push(FieldError::invalid("metadata.labels", v, e));
                    }
                }
            }
            if !is_label && total > 256 * 1024 {
                errs.push(FieldError {
                    field: "metadata.annotations".into(),
                    reason: "FieldValueTooLong",
                    value: None,
                    detail: "may not be more than 262144 bytes".into(),
                });
            }
        }
    }
}

fn s<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

fn validate_pod_spec(spec: Option<&Value>, path: &str, errs: &mut Vec<FieldError>, template: bool) {
    let Some(spec) = spec else {
        errs.push(FieldError::required(path, ""));
        return;
    };
    let containers = spec.get("containers").and_then(Value::as_array);
    match containers {
        None => errs.push(FieldError::required(format!("{path}.containers"), "")),
        Some(c) if c.is_empty() => {
            errs.push(FieldError::required(format!("{path}.containers"), ""))
        }
        _ => {}
    }
    let mut names = std::collections::HashSet::new();
    for (list, field) in [
        ("initContainers", "initContainers"),
        ("containers", "containers"),
    ] {
        for (i, c) in spec
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let p = format!("{path}.{field}[{i}]");
            let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
            if name.is_empty() {
                errs.push(FieldError::required(format!("{p}.name"), ""));
            } else if !is_dns1123_label(name) {
                errs.push(FieldError::invalid(
                    format!("{p}.name"),
                    name,
                    DNS1123_LABEL_MSG,
                ));
            } else if !names.insert(name.to_string()) {
                errs.push(FieldError::duplicate(format!("{p}.name"), name));
            }
            if c.get("image")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .trim()
                .is_empty()
                && !template
            {
                errs.push(FieldError::required(format!("{p}.image"), ""));
            }
            if let Some(pp) = c.get("imagePullPolicy").and_then(Value::as_str) {
                if !["Always", "IfNotPresent", "Never"].contains(&pp) {
                    errs.push(FieldError::not_supported(
                        format!("{p}.imagePullPolicy"),
                        pp,
                        &["Always", "IfNotPresent", "Never"],
                    ));
                }
            }
            for (j, port) in c
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let cp = port
                    .get("containerPort")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                if !(1..=65535).contains(&cp) {
                    errs.push(FieldError::invalid_raw(
                        format!("{p}.ports[{j}].containerPort"),
                        cp.to_string(),
                        "must be between 1 and 65535, inclusive",
                    ));
                }
                if let Some(n) = port.get("name").and_then(Value::as_str) {
                    if let Some(why) = port_name_error(n) {
                        errs.push(FieldError::invalid(format!("{p}.ports[{j}].name"), n, why));
                    }
                }
            }
            for (j, e) in c
                .get("env")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let n = e.get("name").and_then(Value::as_str).unwrap_or_default();
                if n.is_empty() {
                    errs.push(FieldError::required(format!("{p}.env[{j}].name"), ""));
                } else if !n.bytes().all(|b| b.is_ascii_graphic() && b != b'=') {
                    errs.push(FieldError::invalid(format!("{p}.env[{j}].name"), n, "a valid environment variable name must consist only of printable ASCII characters other than '='"));
                }
            }
        }
    }
    if let Some(rp) = spec.get("restartPolicy").and_then(Value::as_str) {
        if !["Always", "OnFailure", "Never"].contains(&rp) {
            errs.push(FieldError::not_supported(
                format!("{path}.restartPolicy"),
                rp,
                &["Always", "OnFailure", "Never"],
            ));
        }
    }
    if let Some(dp) = spec.get("dnsPolicy").and_then(Value::as_str) {
        if !["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"].contains(&dp) {
            errs.push(FieldError::not_supported(
                format!("{path}.dnsPolicy"),
                dp,
                &["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"],
            ));
        }
    }
}

fn validate_selector_template(obj: &Value, errs: &mut Vec<FieldError>, required: bool) {
    let sel = obj.pointer("/spec/selector");
    let empty = sel.is_none_or(|s| {
        s.as_object().is_none_or(|o| {
            o.values().all(|v| {
                v.is_null()
                    || v.as_object().is_some_and(|m| m.is_empty())
                    || v.as_array().is_some_and(|a| a.is_empty())
            })
        })
    });
    if empty && required {
        errs.push(FieldError::required("spec.selector", ""));
        if sel.is_some() {
            errs.push(FieldError::invalid_raw("spec.selector", "v1.LabelSelector{MatchLabels:map[string]string(nil), MatchExpressions:[]v1.LabelSelectorRequirement(nil)}".into(), "empty selector is invalid for deployment"));
        }
        return;
    }
    if let Some(sel) = sel {
        let labels = obj
            .pointer("/spec/template/metadata/labels")
            .and_then(Value::as_object);
        match crate::selector::LabelSelector::from_object(sel) {
            Ok(ls) => {
                if !ls.matches(labels) {
                    let shown = labels
                        .map(|m| {
                            let parts: Vec<String> =
                                m.iter().map(|(k, v)| format!("{k:?}:{}", v)).collect();
                            format!("map[string]string{{{}}}", parts.join(", "))
                        })
                        .unwrap_or_else(|| "map[string]string(nil)".into());
                    errs.push(FieldError::invalid_raw(
                        "spec.template.metadata.labels",
                        shown,
                        "`selector` does not match template `labels`",
                    ));
                }
            }
            Err(e) => errs.push(FieldError::invalid_raw("spec.selector", sel.to_string(), e)),
        }
    }
}

fn validate_service(obj: &Value, errs: &mut Vec<FieldError>) {
    let ty = s(obj, "/spec/type").unwrap_or("ClusterIP");
    let types = ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];
    if !types.contains(&ty) {
        errs.push(FieldError::not_supported("spec.type", ty, &types));
    }
    let ports = obj.pointer("/spec/ports").and_then(Value::as_array);
    let headless = s(obj, "/spec/clusterIP") == Some("None");
    if ty != "ExternalName" && !headless && ports.is_none_or(|p| p.is_empty()) {
        errs.push(FieldError::required("spec.ports", ""));
    }
    if ty == "ExternalName" && s(obj, "/spec/externalName").unwrap_or_default().is_empty() {
        errs.push(FieldError::required("spec.externalName", ""));
    }
    let n = ports.map_or(0, |p| p.len());
    let mut names = std::collections::HashSet::new();
    for (i, p) in ports.into_iter().flatten().enumerate() {
        let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
        if !(1..=65535).contains(&port) {
            errs.push(FieldError::invalid_raw(
                format!("spec.ports[{i}].port"),
                port.to_string(),
                "must be between 1 and 65535, inclusive",
            ));
        }
        let name = p.get("name").and_then(Value::as_str).unwrap_or_default();
        if n > 1 && name.is_empty() {
            errs.push(FieldError::required(format!("spec.ports[{i}].name"), ""));
        } else if !name.is_empty() && !names.insert(name.to_string()) {
            errs.push(FieldError::duplicate(format!("spec.ports[{i}].name"), name));
        }
        if let Some(proto) = p.get("protocol").and_then(Value::as_str) {
            if !["TCP", "UDP", "SCTP"].contains(&proto) {
                errs.push(FieldError::not_supported(
                    format!("spec.ports[{i}].protocol"),
                    proto,
                    &["SCTP", "TCP", "UDP"],
                ));
            }
        }
    }
}

/// Validates an object of `kind` (already defaulted); `old` is the stored object on update.
pub fn validate(kind: &Kind, obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    validate_meta(kind, obj, &mut errs);
    match (kind.group.as_str(), kind.kind.as_str()) {
        ("", "Pod") => validate_pod_spec(obj.get("spec"), "spec", &mut errs, false),
        ("apps", "Deployment")
        | ("apps", "ReplicaSet")
        | ("apps", "StatefulSet")
        | ("apps", "DaemonSet") => {
            validate_selector_template(obj, &mut errs, true);
            validate_pod_spec(
                obj.pointer("/spec/template/spec"),
                "spec.template.spec",
                &mut errs,
                false,
            );
            if let Some(r) = obj.pointer("/spec/replicas").and_then(Value::as_i64) {
                if r < 0 {
                    errs.push(FieldError::invalid_raw(
                        "spec.replicas",
                        r.to_string(),
                        "must be greater than or equal to 0",
                    ));
                }
            }
            if kind.kind == "Deployment" {
                if let Some(t) = s(obj, "/spec/strategy/type") {
                    if !["Recreate", "RollingUpdate"].contains(&t) {
                        errs.push(FieldError::not_supported(
                            "spec.strategy.type",
                            t,
                            &["Recreate", "RollingUpdate"],
                        ));
                    }
                }
            }
        }
        ("storage.k8s.io", "StorageClass") => {
            if s(obj, "/provisioner").is_none_or(str::is_empty) {
                errs.push(FieldError::required("provisioner", ""));
            }
            if let Some(m) = s(obj, "/volumeBindingMode") {
                let ok = ["Immediate", "WaitForFirstConsumer"];
                if !ok.contains(&m) {
                    errs.push(FieldError::not_supported("volumeBindingMode", m, &ok));
                }
            }
            if let Some(m) = s(obj, "/reclaimPolicy") {
                let ok = ["Delete", "Retain"];
                if !ok.contains(&m) {
                    errs.push(FieldError::not_supported("reclaimPolicy", m, &ok));
                }
            }
            if let Some(old) = old {
                for f in [
                    "provisioner",
                    "parameters",
                    "reclaimPolicy",
                    "volumeBindingMode",
                ] {
                    if obj.get(f) != old.get(f) {
                        errs.push(FieldError::forbidden(
                            f,
                            format!("updates to {f} are forbidden."),
                        ));
                    }
                }
            }
        }
        ("", "ReplicationController") => {
            validate_pod_spec(
                obj.pointer("/spec/template/spec"),
                "spec.template.spec",
                &mut errs,
                false,
            );
        }
        ("batch", "Job") => validate_pod_spec(
            obj.pointer("/spec/template/spec"),
            "spec.template.spec",
            &mut errs,
            false,
        ),
        ("batch", "CronJob") => {
            let sched = s(obj, "/spec/schedule").unwrap_or_default();
            if sched.is_empty() {
                errs.push(FieldError::required("spec.schedule", ""));
            } else if sched.contains("TZ=") {
                errs.push(FieldError::invalid(
                    "spec.schedule",
                    sched,
                    "cannot use TZ or CRON_TZ in schedule, use timeZone field instead",
                ));
            } else if let Err(e) = cron::Schedule::parse(sched) {
                errs.push(FieldError::invalid("spec.schedule", sched, e));
            }
            if let Some(tz) = s(obj, "/spec/timeZone") {
                if let Err(e) = cron::zone(Some(tz)) {
                    errs.push(FieldError::invalid("spec.timeZone", tz, e));
                }
            }
            validate_pod_spec(
                obj.pointer("/spec/jobTemplate/spec/template/spec"),
                "spec.jobTemplate.spec.template.spec",
                &mut errs,
                false,
            );
        }
        ("", "Service") => validate_service(obj, &mut errs),
        ("", "ConfigMap") | ("", "Secret") => {
            for field in ["data", "binaryData", "stringData"] {
                for k in obj
                    .get(field)
                    .and_then(Value::as_object)
                    .into_iter()
                    .flat_map(Map::keys)
                {
                    let ok = !k.is_empty()
                        && k.len() <= 253
                        && k.bytes().all(|b| {
                            b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'
                        });
                    if !ok {
                        errs.push(FieldError::invalid(format!("{field}[{k}]"), k.as_str(), "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"));
                    }
                }
            }
        }
        ("coordination.k8s.io", "Lease") => {
            if let Some(d) = obj
                .pointer("/spec/leaseDurationSeconds")
                .and_then(Value::as_i64)
            {
                if d <= 0 {
                    errs.push(FieldError::invalid_raw(
                        "spec.leaseDurationSeconds",
                        d.to_string(),
                        "must be greater than 0",
                    ));
                }
            }
        }
        _ => {}
    }
    if let Some(old) = old {
        validate_update(kind, obj, old, &mut errs);
    }
    errs
}

fn immutable(errs: &mut Vec<FieldError>, field: &str, new: Option<&Value>, old: Option<&Value>) {
    if new != old {
        let shown = new.map(|v| v.to_string()).unwrap_or_else(|| "null".into());
        errs.push(FieldError::invalid_raw(field, shown, "field is immutable"));
    }
}

fn validate_update(kind: &Kind, new: &Value, old: &Value, errs: &mut Vec<FieldError>) {
    match (kind.group.as_str(), kind.kind.as_str()) {
        ("apps", "Deployment")
        | ("apps", "ReplicaSet")
        | ("apps", "DaemonSet")
        | ("apps", "StatefulSet") => {
            immutable(
                errs,
                "spec.selector",
                new.pointer("/spec/selector"),
                old.pointer("/spec/selector"),
            );
        }
        ("batch", "Job") => {
            immutable(
                errs,
                "spec.selector",
                new.pointer("/spec/selector"),
                old.pointer("/spec/selector"),
            );
            immutable(
                errs,
                "spec.completions",
                new.pointer("/spec/completions"),
                old.pointer("/spec/completions"),
            );
        }
        ("", "Pod") => {
            // Only images, activeDeadlineSeconds, tolerations (additions) and scheduling gates may change.
            let strip = |v: &Value| {
                let mut spec = v.get("spec").cloned().unwrap_or(Value::Null);
                if let Some(cs) = spec.get_mut("containers").and_then(Value::as_array_mut) {
                    for c in cs {
                        if let Some(c) = c.as_object_mut() {
                            c.remove("image");
                        }
                    }
                }
                if let Some(cs) = spec.get_mut("initContainers").and_then(Value::as_array_mut) {
                    for c in cs {
                        if let Some(c) = c.as_object_mut() {
                            c.remove("image");
                        }
                    }
                }
                if let Some(o) = spec.as_object_mut() {
                    o.remove("activeDeadlineSeconds");
                    o.remove("tolerations");
                    o.remove("schedulingGates");
                    if old.pointer("/spec/nodeName").is_none() {
                        o.remove("nodeName");
                    }
                }
                spec
            };
            if strip(new) != strip(old) {
                errs.push(FieldError::forbidden("spec", "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)"));
            }
        }
        ("", "Service") => {
            let old_ip = old.pointer("/spec/clusterIP");
            if s(new, "/spec/type") != Some("ExternalName")
                && s(old, "/spec/type") != Some("ExternalName")
            {
                immutable(
                    errs,
                    "spec.clusterIP",
                    new.pointer("/spec/clusterIP"),
                    old_ip,
                );
            }
        }
        ("", "Secret") | ("", "ConfigMap") => {
            if old.get("immutable") == Some(&Value::Bool(true)) {
                for f in ["data", "binaryData"] {
                    if new.get(f) != old.get(f) {
                        errs.push(FieldError::forbidden(
                            f,
                            "field is immutable when `immutable` is set",
                        ));
                    }
                }
            }
            if kind.kind == "Secret" {
                immutable(errs, "type", new.get("type"), old.get("type"));
            }
        }
        ("", "PersistentVolumeClaim") => {
            let strip = |v: &Value| {
                let mut spec = v.get("spec").cloned().unwrap_or(Value::Null);
                if let Some(o) = spec.as_object_mut() {
                    o.remove("resources");
                    o.remove("volumeName");
                    o.remove("volumeAttributesClassName");
                }
                spec
            };
            if strip(new) != strip(old) {
                errs.push(FieldError::forbidden("spec", "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims"));
            }
        }
        _ => {}
    }
}

fn set_default(m: &mut Map<String, Value>, k: &str, v: Value) {
    if m.get(k).is_none_or(Value::is_null) {
        m.insert(k.to_string(), v);
    }
}

fn obj_mut<'a>(v: &'a mut Value, k: &str) -> &'a mut Map<String, Value> {
    let m = v.as_object_mut().expect("object");
    let e = m.entry(k.to_string()).or_insert_with(|| json!({}));
    if !e.is_object() {
        *e = json!({});
    }
    e.as_object_mut().unwrap()
}

fn pull_policy(image: &str) -> &'static str {
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') {
        return "IfNotPresent";
    }
    match last.rsplit_once(':') {
        None => "Always",
        Some((_, "latest")) => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn default_containers(list: Option<&mut Value>) {
    for c in list.and_then(Value::as_array_mut).into_iter().flatten() {
        let Some(c) = c.as_object_mut() else { continue };
        let image = c
            .get("image")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        set_default(c, "imagePullPolicy", json!(pull_policy(&image)));
        set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
        set_default(c, "terminationMessagePolicy", json!("File"));
        set_default(c, "resources", json!({}));
        for p in c
            .get_mut("ports")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if let Some(p) = p.as_object_mut() {
                set_default(p, "protocol", json!("TCP"));
            }
        }
        for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
            if let Some(p) = c.get_mut(probe).and_then(Value::as_object_mut) {
                set_default(p, "timeoutSeconds", json!(1));
                set_default(p, "periodSeconds", json!(10));
                set_default(p, "successThreshold", json!(1));
                set_default(p, "failureThreshold", json!(3));
                if let Some(h) = p.get_mut("httpGet").and_then(Value::as_object_mut) {
                    set_default(h, "path", json!("/"));
                    set_default(h, "scheme", json!("HTTP"));
                }
            }
        }
    }
}

/// The defaults of a PodSpec.
pub fn default_pod_spec(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    default_containers(spec.get_mut("containers"));
    default_containers(spec.get_mut("initContainers"));
    let m = spec.as_object_mut().unwrap();
    set_default(m, "restartPolicy", json!("Always"));
    set_default(m, "terminationGracePeriodSeconds", json!(30));
    set_default(m, "dnsPolicy", json!("ClusterFirst"));
    set_default(m, "securityContext", json!({}));
    set_default(m, "schedulerName", json!("default-scheduler"));
    for v in m
        .get_mut("volumes")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        if let Some(cm) = v.get_mut("configMap").and_then(Value::as_object_mut) {
            set_default(cm, "defaultMode", json!(420));
        }
        if let Some(sec) = v.get_mut("secret").and_then(Value::as_object_mut) {
            set_default(sec, "defaultMode", json!(420));
        }
    }
}

/// Kubernetes' SetDefaults_LimitRangeItem for Container items: the default limit is the
/// max where unset, the default request the default limit, else the min.
fn default_limit_range(obj: &mut Value) {
    for item in obj
        .pointer_mut("/spec/limits")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        if item.get("type").and_then(Value::as_str) != Some("Container") {
            continue;
        }
        let Some(m) = item.as_object_mut() else {
            continue;
        };
        let list = |m: &serde_json::Map<String, Value>, k: &str| {
            m.get(k)
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default()
        };
        let (max, min) = (list(m, "max"), list(m, "min"));
        let mut default = list(m, "default");
        for (k, v) in max {
            default.entry(k).or_insert(v);
        }
        let mut request = list(m, "defaultRequest");
        for (k, v) in default.iter().chain(min.iter()) {
            request.entry(k.clone()).or_insert(v.clone());
        }
        if !default.is_empty() {
            m.insert("default".into(), Value::Object(default));
        }
        if !request.is_empty() {
            m.insert("defaultRequest".into(), Value::Object(request));
        }
    }
}

fn default_template(obj: &mut Value, ptr: &str) {
    if let Some(spec) = obj.pointer_mut(ptr) {
        default_pod_spec(spec);
    }
}

/// Applies the kind's defaults to an object before validation.
pub fn default(kind: &Kind, obj: &mut Value) {
    if !obj.is_object() {
        return;
    }
    match (kind.group.as_str(), kind.kind.as_str()) {
        ("", "LimitRange") => default_limit_range(obj),
        ("", "Pod") => {
            let spec = obj_mut(obj, "spec");
            set_default(spec, "enableServiceLinks", json!(true));
            set_default(spec, "serviceAccountName", json!("default"));
            if let Some(sa) = spec.get("serviceAccountName").cloned() {
                set_default(spec, "serviceAccount", sa);
            }
            default_template(obj, "/spec");
            let status = obj_mut(obj, "status");
            set_default(status, "phase", json!("Pending"));
            let qos = qos_class(obj.get("spec").unwrap_or(&Value::Null));
            obj_mut(obj, "status").insert("qosClass".into(), json!(qos));
        }
        ("apps", "Deployment") => {
            let spec = obj_mut(obj, "spec");
            set_default(spec, "replicas", json!(1));
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(spec, "progressDeadlineSeconds", json!(600));
            let strategy = spec.entry("strategy").or_insert_with(|| json!({}));
            if let Some(st) = strategy.as_object_mut() {
                set_default(st, "type", json!("RollingUpdate"));
                if st.get("type") == Some(&json!("RollingUpdate")) {
                    let ru = st.entry("rollingUpdate").or_insert_with(|| json!({}));
                    if let Some(ru) = ru.as_object_mut() {
                        set_default(ru, "maxUnavailable", json!("25%"));
                        set_default(ru, "maxSurge", json!("25%"));
                    }
                }
            }
            default_template(obj, "/spec/template/spec");
        }
        ("apps", "ReplicaSet") | ("", "ReplicationController") => {
            let spec = obj_mut(obj, "spec");
            set_default(spec, "replicas", json!(1));
            if kind.kind == "ReplicationController" {
                set_default(spec, "minReadySeconds", json!(0));
                if spec.get("selector").is_none() {
                    if let Some(l) = spec
                        .get("template")
                        .and_then(|t| t.pointer("/metadata/labels"))
                        .cloned()
                    {
                        spec.insert("selector".into(), l);
                    }
                }
            }
            default_template(obj, "/spec/template/spec");
        }
        ("apps", "StatefulSet") => {
            let spec = obj_mut(obj, "spec");
            set_default(spec, "replicas", json!(1));
            set_default(spec, "podManagementPolicy", json!("OrderedReady"));
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(
                spec,
                "updateStrategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
            );
            set_default(
                spec,
                "persistentVolumeClaimRetentionPolicy",
                json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
            );
            default_template(obj, "/spec/template/spec");
        }
        ("apps", "DaemonSet") => {
            let spec = obj_mut(obj, "spec");
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(
                spec,
                "updateStrategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}),
            );
            default_template(obj, "/spec/template/spec");
        }
        ("batch", "Job") => {
            default_job_spec(obj_mut(obj, "spec"));
            default_template(obj, "/spec/template/spec");
        }
        ("batch", "CronJob") => {
            let spec = obj_mut(obj, "spec");
            set_default(spec, "concurrencyPolicy", json!("Allow"));
            set_default(spec, "suspend", json!(false));
            set_default(spec, "successfulJobsHistoryLimit", json!(3));
            set_default(spec, "failedJobsHistoryLimit", json!(1));
            if let Some(js) = spec
                .get_mut("jobTemplate")
                .and_then(|j| j.get_mut("spec"))
                .and_then(Value::as_object_mut)
            {
                default_job_spec(js);
            }
            default_template(obj, "/spec/jobTemplate/spec/template/spec");
        }
        ("", "Service") => {
            let spec = obj_mut(obj, "spec");
            set_default(spec, "type", json!("ClusterIP"));
            set_default(spec, "sessionAffinity", json!("None"));
            let ty = spec
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if ty != "ExternalName" {
                set_default(spec, "internalTrafficPolicy", json!("Cluster"));
                set_default(spec, "ipFamilyPolicy", json!("SingleStack"));
                set_default(spec, "ipFamilies", json!(["IPv4"]));
            }
            if ty == "NodePort" || ty == "LoadBalancer" {
                set_default(spec, "externalTrafficPolicy", json!("Cluster"));
            }
            if ty == "LoadBalancer" {
                set_default(spec, "allocateLoadBalancerNodePorts", json!(true));
            }
            for p in spec
                .get_mut("ports")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                if let Some(p) = p.as_object_mut() {
                    set_default(p, "protocol", json!("TCP"));
                    if let Some(port) = p.get("port").cloned() {
                        set_default(p, "targetPort", port);
                    }
                }
            }
            if !obj.get("status").is_some_and(Value::is_object) {
                obj["status"] = json!({"loadBalancer": {}});
            }
        }
        ("", "Namespace") => {
            let name = obj.pointer("/metadata/name").cloned();
            if let Some(name) = name {
                obj_mut(obj, "metadata");
                let labels = obj_mut(obj.get_mut("metadata").unwrap(), "labels");
                labels.insert("kubernetes.io/metadata.name".into(), name);
            }
            let spec = obj_mut(obj, "spec");
            set_default(spec, "finalizers", json!(["kubernetes"]));
            let status = obj_mut(obj, "status");
            set_default(status, "phase", json!("Active"));
        }
        ("", "Secret") => {
            let m = obj.as_object_mut().unwrap();
            set_default(m, "type", json!("Opaque"));
            // `stringData` is write-only: its entries go into `data`, encoded, over any
            // of the same key (as Kubernetes converts it).
            if let Some(Value::Object(strings)) = m.remove("stringData") {
                use base64::Engine as _;
                let data = m.entry("data").or_insert_with(|| json!({}));
                if !data.is_object() {
                    *data = json!({});
                }
                if let Some(d) = data.as_object_mut() {
                    for (k, v) in strings {
                        let text = v.as_str().unwrap_or_default();
                        d.insert(
                            k,
                            json!(base64::engine::general_purpose::STANDARD.encode(text)),
                        );
                    }
                }
            }
        }
        ("", "PersistentVolumeClaim") => {
            let spec = obj_mut(obj, "spec");
            set_default(spec, "volumeMode", json!("Filesystem"));
            let status = obj_mut(obj, "status");
            set_default(status, "phase", json!("Pending"));
        }
        ("", "PersistentVolume") => {
            let spec = obj_mut(obj, "spec");
            set_default(spec, "persistentVolumeReclaimPolicy", json!("Retain"));
            set_default(spec, "volumeMode", json!("Filesystem"));
            let status = obj_mut(obj, "status");
            set_default(status, "phase", json!("Pending"));
        }
        ("storage.k8s.io", "StorageClass") => {
            let m = obj.as_object_mut().unwrap();
            set_default(m, "reclaimPolicy", json!("Delete"));
            set_default(m, "volumeBindingMode", json!("Immediate"));
        }
        ("scheduling.k8s.io", "PriorityClass") => {
            let m = obj.as_object_mut().unwrap();
            set_default(m, "preemptionPolicy", json!("PreemptLowerPriority"));
        }
        ("autoscaling", "HorizontalPodAutoscaler") if kind.version == "v2" => {
            let spec = obj_mut(obj, "spec");
            set_default(spec, "minReplicas", json!(1));
            set_default(
                spec,
                "metrics",
                json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]),
            );
            // A behavior given gets Kubernetes' default rules where it sets none
            // (`GenerateHPAScaleUpRules`/`…ScaleDownRules`); scale-down's window stays unset
            // for the controller's own default.
            if let Some(b) = spec.get_mut("behavior").and_then(Value::as_object_mut) {
                for (dir, defaults) in [
                    (
                        "scaleUp",
                        json!({"stabilizationWindowSeconds": 0, "selectPolicy": "Max", "policies": [
                            {"type": "Pods", "value": 4, "periodSeconds": 15},
                            {"type": "Percent", "value": 100, "periodSeconds": 15}]}),
                    ),
                    (
                        "scaleDown",
                        json!({"selectPolicy": "Max", "policies": [
                            {"type": "Percent", "value": 100, "periodSeconds": 15}]}),
                    ),
                ] {
                    let rules = b.entry(dir).or_insert_with(|| json!({}));
                    if let (Some(r), Some(d)) = (rules.as_object_mut(), defaults.as_object()) {
                        for (k, v) in d {
                            if r.get(k).is_none_or(Value::is_null) {
                                r.insert(k.clone(), v.clone());
                            }
                        }
                    }
                }
            }
        }
        ("autoscaling", "HorizontalPodAutoscaler") => {
            let spec = obj_mut(obj, "spec");
            set_default(spec, "minReplicas", json!(1));
        }
        ("policy", "PodDisruptionBudget") => {}
        _ => {}
    }
}

fn default_job_spec(spec: &mut Map<String, Value>) {
    set_default(spec, "parallelism", json!(1));
    set_default(spec, "backoffLimit", json!(6));
    set_default(spec, "completionMode", json!("NonIndexed"));
    set_default(spec, "suspend", json!(false));
    set_default(spec, "manualSelector", Value::Null);
    spec.remove("manualSelector");
    if spec.get("completions").is_none() && spec.get("parallelism") == Some(&json!(1)) {
        spec.insert("completions".into(), json!(1));
    }
    set_default(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
}

/// The pod's QoS class from its containers' requests and limits.
pub fn qos_class(spec: &Value) -> &'static str {
    let mut any = false;
    let mut guaranteed = true;
    for c in spec
        .get("containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let req = c.pointer("/resources/requests").and_then(Value::as_object);
        let lim = c.pointer("/resources/limits").and_then(Value::as_object);
        if req.is_some_and(|r| !r.is_empty()) || lim.is_some_and(|l| !l.is_empty()) {
            any = true;
        }
        for r in ["cpu", "memory"] {
            let l = lim.and_then(|l| l.get(r));
            let q = req.and_then(|q| q.get(r)).or(l);
            if l.is_none() || q != l {
                guaranteed = false;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        for ok in [
            "1", "500m", "1Gi", "0.5", "2e3", "1E-2", "+1", "100Mi", "1.5G",
        ] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", "abc", "1GB", "Gi", "1.2.3", "5 m", ".", "1e"] {
            assert!(!is_quantity(bad), "{bad}");
        }
        let pod = serde_json::json!({"spec": {"containers": [{"resources": {"requests": {"cpu": "lots"}}}]}});
        assert_eq!(bad_quantity(&pod).as_deref(), Some("lots"));
    }
}
