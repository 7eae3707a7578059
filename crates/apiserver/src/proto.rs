//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`), which
//! kubectl's typed clients send (`kubectl create namespace|configmap|secret|deployment…`):
//! the `k8s\0` + runtime.Unknown envelope, and each message decoded to the JSON object
//! Kubernetes would have, through a table of field numbers (proto/fields.txt, from
//! Kubernetes' generated.proto) and the OpenAPI schema for property names.

use std::collections::HashMap;
use std::sync::OnceLock;

use base64::Engine as _;
use serde_json::{json, Map, Value};

#[derive(Debug)]
struct Field {
    tag: u32,
    /// The field's name with underscores removed, lower case (matched against JSON names).
    key: String,
    kind: String,
    repeated: bool,
    target: Option<String>,
}

struct Tables {
    messages: HashMap<String, Vec<Field>>,
    /// Definition name -> (normalized property name -> JSON property name).
    props: HashMap<String, HashMap<String, String>>,
    /// Definition name -> the definition, for array-typed wrappers.
    array_defs: std::collections::HashSet<String>,
    /// apiVersion/kind -> definition name.
    gvk: HashMap<(String, String), String>,
}

fn tables() -> &'static Tables {
    static T: OnceLock<Tables> = OnceLock::new();
    T.get_or_init(|| {
        let mut messages: HashMap<String, Vec<Field>> = HashMap::new();
        let mut current = String::new();
        for line in include_str!("../proto/fields.txt").lines() {
            if let Some(f) = line.strip_prefix(' ') {
                let p: Vec<&str> = f.split(' ').collect();
                if p.len() != 4 {
                    continue;
                }
                let (kind, label) = p[2].split_once(':').unwrap_or((p[2], "opt"));
                let (kind, repeated) = if kind == "map" {
                    (format!("map:{label}"), false)
                } else {
                    (kind.to_string(), label == "rep")
                };
                messages.entry(current.clone()).or_default().push(Field {
                    tag: p[0].parse().unwrap_or(0),
                    key: p[1].replace('_', "").to_lowercase(),
                    kind,
                    repeated,
                    target: (p[3] != "-").then(|| p[3].to_string()),
                });
            } else {
                current = line.trim().to_lowercase();
                messages.entry(current.clone()).or_default();
            }
        }
        let mut gen = schemars::generate::SchemaSettings::draft07().into_generator();
        let mut gvk = HashMap::new();
        for k in crate::kinds::builtins() {
            let _ = k.codec.add_schema(&mut gen);
            gvk.insert((k.api_version(), k.kind.clone()), k.codec.schema_name());
        }
        let _ =
            gen.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::DeleteOptions>();
        let _ = gen.subschema_for::<k8s_openapi::api::autoscaling::v1::Scale>();
        let _ = gen.subschema_for::<k8s_openapi::api::core::v1::Binding>();
        let _ = gen.subschema_for::<k8s_openapi::api::policy::v1::Eviction>();
        let _ = gen.subschema_for::<k8s_openapi::api::authentication::v1::TokenRequest>();
        for (av, k, def) in [
            (
                "v1",
                "DeleteOptions",
                "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions",
            ),
            (
                "meta.k8s.io/v1",
                "DeleteOptions",
                "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions",
            ),
            ("autoscaling/v1", "Scale", "io.k8s.api.autoscaling.v1.Scale"),
            ("v1", "Binding", "io.k8s.api.core.v1.Binding"),
            ("policy/v1", "Eviction", "io.k8s.api.policy.v1.Eviction"),
            (
                "authentication.k8s.io/v1",
                "TokenRequest",
                "io.k8s.api.authentication.v1.TokenRequest",
            ),
        ] {
            gvk.insert((av.to_string(), k.to_string()), def.to_string());
        }
        let defs = gen.take_definitions(false);
        let mut props = HashMap::new();
        let mut array_defs = std::collections::HashSet::new();
        for (name, d) in defs {
            if d.get("type") == Some(&json!("array")) {
                array_defs.insert(name.to_lowercase());
            }
            let m: HashMap<String, String> = d
                .get("properties")
                .and_then(Value::as_object)
                .map(|p| p.keys().map(|k| (k.to_lowercase(), k.clone())).collect())
                .unwrap_or_default();
            // k8s-pb names some messages in Rust's case (HttpIngressRuleValue): match any case.
            props.insert(name.to_lowercase(), m);
        }
        Tables {
            messages,
            props,
            array_defs,
            gvk,
        }
    })
}

/// Fields whose zero is a value (Go pointers, or fields without `omitempty`).
const MEANINGFUL_ZERO: &[&str] = &[
    "replicas",
    "minReplicas",
    "maxReplicas",
    "parallelism",
    "completions",
    "backoffLimit",
    "backoffLimitPerIndex",
    "maxFailedIndexes",
    "activeDeadlineSeconds",
    "terminationGracePeriodSeconds",
    "suspend",
    "automountServiceAccountToken",
    "runAsUser",
    "runAsGroup",
    "runAsNonRoot",
    "readOnlyRootFilesystem",
    "allowPrivilegeEscalation",
    "privileged",
    "fsGroup",
    "optional",
    "defaultMode",
    "mode",
    "ttlSecondsAfterFinished",
    "startingDeadlineSeconds",
    "successfulJobsHistoryLimit",
    "failedJobsHistoryLimit",
    "revisionHistoryLimit",
    "progressDeadlineSeconds",
    "immutable",
    "enableServiceLinks",
    "hostUsers",
    "shareProcessNamespace",
    "setHostnameAsFQDN",
    "priority",
    "value",
    "port",
    "containerPort",
    "tolerationSeconds",
    "expirationSeconds",
    "partition",
    "allocateLoadBalancerNodePorts",
    "leaseDurationSeconds",
    "leaseTransitions",
    "maxSkew",
    "weight",
    "minAvailable",
    "currentReplicas",
    "desiredReplicas",
    "exitCode",
    "restartCount",
    "ready",
    "started",
];

struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = *self.b.get(self.i).ok_or("truncated varint")?;
            self.i += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint too long".into())
    }
    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.varint()? as usize;
        let end = self
            .i
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or("truncated field")?;
        let s = &self.b[self.i..end];
        self.i = end;
        Ok(s)
    }
    fn fixed(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .i
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or("truncated fixed field")?;
        let s = &self.b[self.i..end];
        self.i = end;
        Ok(s)
    }
    /// The next (tag, wire type, payload) where payload is a varint or bytes.
    fn next(&mut self) -> Result<Option<(u32, Wire<'a>)>, String> {
        if self.i >= self.b.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let tag = (key >> 3) as u32;
        let w = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => Wire::Fixed64(self.fixed(8)?),
            2 => Wire::Bytes(self.bytes()?),
            5 => {
                self.fixed(4)?;
                Wire::Fixed32
            }
            t => return Err(format!("unsupported wire type {t}")),
        };
        Ok(Some((tag, w)))
    }
}

enum Wire<'a> {
    Varint(u64),
    Fixed64(&'a [u8]),
    Fixed32,
    Bytes(&'a [u8]),
}

fn go_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    let neg = nanos < 0;
    let n = nanos.unsigned_abs();
    let (h, m, s, frac) = (
        n / 3_600_000_000_000,
        n / 60_000_000_000 % 60,
        n / 1_000_000_000 % 60,
        n % 1_000_000_000,
    );
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if frac > 0 {
        let f = format!("{frac:09}");
        out.push_str(&format!("{s}.{}s", f.trim_end_matches('0')));
    } else {
        out.push_str(&format!("{s}s"));
    }
    out
}

fn scalar(kind: &str, w: &Wire) -> Result<Value, String> {
    Ok(match (kind, w) {
        ("bool", Wire::Varint(v)) => json!(*v != 0),
        ("int32", Wire::Varint(v)) => json!(*v as i64 as i32),
        ("int64", Wire::Varint(v)) => json!(*v as i64),
        ("double", Wire::Fixed64(b)) => json!(f64::from_le_bytes((*b).try_into().unwrap())),
        ("string", Wire::Bytes(b)) => {
            json!(std::str::from_utf8(b).map_err(|_| "a string field is not UTF-8")?)
        }
        ("bytes", Wire::Bytes(b)) => json!(base64::engine::general_purpose::STANDARD.encode(b)),
        (k, _) => return Err(format!("field of type {k} has the wrong wire type")),
    })
}

fn special(name: &str, raw: &[u8]) -> Result<Option<Value>, String> {
    let mut fields: HashMap<u32, Wire> = HashMap::new();
    let short = name.rsplit('.').next().unwrap_or_default();
    let known = matches!(
        short,
        "Time"
            | "MicroTime"
            | "Duration"
            | "IntOrString"
            | "Quantity"
            | "RawExtension"
            | "FieldsV1"
            | "JSON"
    );
    if !known
        || !(name.starts_with("io.k8s.apimachinery")
            || name.starts_with("io.k8s.apiextensions-apiserver"))
    {
        return Ok(None);
    }
    let mut r = Reader { b: raw, i: 0 };
    while let Some((t, w)) = r.next()? {
        fields.insert(t, w);
    }
    let int = |t| match fields.get(&t) {
        Some(Wire::Varint(v)) => *v as i64,
        _ => 0,
    };
    let bytes = |t| match fields.get(&t) {
        Some(Wire::Bytes(b)) => *b,
        _ => &[][..],
    };
    Ok(Some(match short {
        // Go marshals a zero Time that JSON shows as null.
        "Time" if int(1) == 0 && int(2) == 0 => Value::Null,
        "Time" => json!(crate::time_secs(int(1))),
        "MicroTime" => {
            let full = timefmt::rfc3339(int(1), int(2) as u32);
            let (head, frac) = full.split_once('.').unwrap_or((&full, "000000000Z"));
            json!(format!("{head}.{}Z", &frac[..6]))
        }
        "Duration" => json!(go_duration(int(1))),
        "IntOrString" => {
            if int(1) == 1 {
                json!(String::from_utf8_lossy(bytes(3)))
            } else {
                json!(int(2) as i32)
            }
        }
        "Quantity" => json!(String::from_utf8_lossy(bytes(1))),
        _ => {
            let b = bytes(1);
            if b.is_empty() {
                json!({})
            } else {
                serde_json::from_slice(b).map_err(|e| format!("embedded JSON: {e}"))?
            }
        }
    }))
}

/// Decodes one message. `outer` names the JSON properties to use when the message has no
/// definition of its own: a Go struct inlined into its parent (IngressRuleValue).
fn message(
    name: &str,
    raw: &[u8],
    depth: usize,
    outer: Option<&HashMap<String, String>>,
) -> Result<Value, String> {
    if depth > 64 {
        return Err("nested too deeply".into());
    }
    if let Some(v) = special(name, raw)? {
        return Ok(v);
    }
    let t = tables();
    // Names compare in any case: k8s-pb spells CSIDriver as CsiDriver.
    let fields = t
        .messages
        .get(&name.to_lowercase())
        .ok_or_else(|| format!("unknown protobuf message {name}"))?;
    let props = t.props.get(&name.to_lowercase()).or(outer);
    let mut out = Map::new();
    let mut r = Reader { b: raw, i: 0 };
    while let Some((tag, w)) = r.next()? {
        let Some(f) = fields.iter().find(|f| f.tag == tag) else {
            continue;
        };
        let json_name = props.and_then(|p| p.get(&f.key)).cloned();
        let value = if let Some(v) = f.kind.strip_prefix("map:") {
            let Wire::Bytes(entry) = w else {
                return Err(format!(
                    "{name}.{}: a map entry must be length-delimited",
                    f.key
                ));
            };
            let mut er = Reader { b: entry, i: 0 };
            let (mut k, mut val) = (String::new(), Value::Null);
            while let Some((et, ew)) = er.next()? {
                match (et, &ew) {
                    (1, Wire::Bytes(b)) => k = String::from_utf8_lossy(b).into_owned(),
                    (2, Wire::Bytes(b)) if v == "message" => {
                        val = message(f.target.as_deref().unwrap_or_default(), b, depth + 1, None)?
                    }
                    (2, _) => val = scalar(v, &ew)?,
                    _ => {}
                }
            }
            if val.is_null() {
                val = match v {
                    "message" => json!({}),
                    _ => json!(""),
                };
            }
            let key = json_name.clone().unwrap_or_else(|| f.key.clone());
            let m = out.entry(key).or_insert_with(|| json!({}));
            if let Some(m) = m.as_object_mut() {
                m.insert(k, val);
            }
            continue;
        } else if f.kind == "message" {
            let Wire::Bytes(b) = w else {
                return Err(format!(
                    "{name}.{}: a message must be length-delimited",
                    f.key
                ));
            };
            let target = f.target.as_deref().unwrap_or_default();
            // An inlined struct's fields are named by this message's properties.
            let v = message(
                target,
                b,
                depth + 1,
                if json_name.is_none() { props } else { None },
            )?;
            // A Go struct embedded inline has no JSON property of its own: merge its fields.
            if v.is_null() {
                continue;
            }
            if json_name.is_none() {
                if let Value::Object(m) = v {
                    out.extend(m);
                }
                continue;
            }
            // Wrappers such as ExtraValue are arrays in JSON.
            if t.array_defs.contains(&target.to_lowercase()) {
                v.get("items").cloned().unwrap_or(json!([]))
            } else {
                v
            }
        } else if let (true, Wire::Bytes(b), false) =
            (f.repeated, &w, f.kind == "string" || f.kind == "bytes")
        {
            // A packed repeated scalar.
            let mut pr = Reader { b, i: 0 };
            let mut items = Vec::new();
            while pr.i < b.len() {
                items.push(scalar(&f.kind, &Wire::Varint(pr.varint()?))?);
            }
            let key = json_name.unwrap_or_else(|| f.key.clone());
            let e = out.entry(key).or_insert_with(|| json!([]));
            if let Some(a) = e.as_array_mut() {
                a.extend(items);
            }
            continue;
        } else {
            scalar(&f.kind, &w)?
        };
        // Go writes value (non-pointer) fields even when zero, and its JSON omits them;
        // pointer fields are written only when set, and there a zero means zero.
        let zero = value.is_null()
            || value.as_str() == Some("")
            || value.as_bool() == Some(false)
            || value.as_i64() == Some(0)
            || value.as_f64() == Some(0.0);
        if zero
            && !f.repeated
            && !json_name
                .as_deref()
                .is_some_and(|n| MEANINGFUL_ZERO.contains(&n))
        {
            continue;
        }
        let key = json_name.unwrap_or_else(|| f.key.clone());
        if f.repeated {
            let e = out.entry(key).or_insert_with(|| json!([]));
            if let Some(a) = e.as_array_mut() {
                a.push(value);
            }
        } else {
            out.insert(key, value);
        }
    }
    Ok(Value::Object(out))
}

/// Decodes a Kubernetes protobuf body (`k8s\0` + runtime.Unknown) into its JSON object.
pub fn decode(body: &[u8]) -> Result<Value, String> {
    let rest = body
        .strip_prefix(b"k8s\x00")
        .ok_or("the body does not start with the Kubernetes protobuf prefix")?;
    let mut r = Reader { b: rest, i: 0 };
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    while let Some((t, w)) = r.next()? {
        match (t, w) {
            (1, Wire::Bytes(tm)) => {
                let mut tr = Reader { b: tm, i: 0 };
                while let Some((tt, tw)) = tr.next()? {
                    if let Wire::Bytes(s) = tw {
                        match tt {
                            1 => api_version = String::from_utf8_lossy(s).into_owned(),
                            2 => kind = String::from_utf8_lossy(s).into_owned(),
                            _ => {}
                        }
                    }
                }
            }
            (2, Wire::Bytes(b)) => raw = b,
            _ => {}
        }
    }
    let def = tables()
        .gvk
        .get(&(api_version.clone(), kind.clone()))
        .ok_or_else(|| format!("no kind \"{kind}\" is registered for version \"{api_version}\""))?;
    let mut v = message(def, raw, 0, None)?;
    if let Some(m) = v.as_object_mut() {
        m.insert("apiVersion".into(), json!(api_version));
        m.insert("kind".into(), json!(kind));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(tag: u32, wire: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![((tag << 3) | wire as u32) as u8];
        if wire == 2 {
            out.push(payload.len() as u8);
        }
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn decodes_a_configmap_envelope() {
        let mut meta = field(1, 2, b"cfg");
        meta.extend(field(3, 2, b"ns"));
        let mut entry = field(1, 2, b"a");
        entry.extend(field(2, 2, b"1"));
        let mut cm = field(1, 2, &meta);
        cm.extend(field(2, 2, &entry));
        cm.extend(field(4, 0, &[1]));
        let mut tm = field(1, 2, b"v1");
        tm.extend(field(2, 2, b"ConfigMap"));
        let mut body = b"k8s\x00".to_vec();
        body.extend(field(1, 2, &tm));
        body.extend(field(2, 2, &cm));
        let v = decode(&body).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": "ns"}, "data": {"a": "1"}, "immutable": true})
        );
    }

    #[test]
    fn durations_as_go_prints_them() {
        assert_eq!(go_duration(90_000_000_000), "1m30s");
        assert_eq!(go_duration(3_600_000_000_000), "1h0m0s");
        assert_eq!(go_duration(1_500_000_000), "1.5s");
    }
}
