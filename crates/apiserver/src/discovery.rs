//! Discovery: `/api`, `/apis`, the group and resource lists, and the aggregated v2 form
//! kubectl asks for first (with its exact Content-Type).

use serde_json::{json, Value};

use crate::kinds::{Kind, Registry};

pub const AGGREGATED_CT: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Whether an Accept header asks for aggregated discovery.
pub fn wants_aggregated(accept: &str) -> bool {
    accept.split(',').any(|a| {
        a.contains("as=APIGroupDiscoveryList")
            && a.contains("g=apidiscovery.k8s.io")
            && a.contains("v=v2")
    })
}

/// A subresource's response kind: group, version, kind (None: the resource's own).
type ResponseKind = Option<(String, String, String)>;

fn subresources(k: &Kind) -> Vec<(&'static str, Vec<&'static str>, ResponseKind)> {
    let mut out = Vec::new();
    if k.status {
        out.push(("status", vec!["get", "patch", "update"], None));
    }
    if k.group == "certificates.k8s.io" && k.kind == "CertificateSigningRequest" {
        out.push(("approval", vec!["get", "patch", "update"], None));
    }
    if k.scale.is_some() {
        out.push((
            "scale",
            vec!["get", "patch", "update"],
            Some(("autoscaling".into(), "v1".into(), "Scale".into())),
        ));
    }
    for s in &k.node_subresources {
        let (verbs, rk): (Vec<&'static str>, ResponseKind) = match *s {
            "log" => (vec!["get"], Some(("".into(), "v1".into(), "Pod".into()))),
            "exec" | "attach" | "portforward" => (
                vec!["create", "get"],
                Some(("".into(), "v1".into(), "PodExecOptions".into())),
            ),
            "proxy" => (vec!["create", "delete", "get", "patch", "update"], None),
            "binding" => (
                vec!["create"],
                Some(("".into(), "v1".into(), "Binding".into())),
            ),
            "eviction" => (
                vec!["create"],
                Some(("policy".into(), "v1".into(), "Eviction".into())),
            ),
            "ephemeralcontainers" => (vec!["get", "patch", "update"], None),
            "token" => (
                vec!["create"],
                Some((
                    "authentication.k8s.io".into(),
                    "v1".into(),
                    "TokenRequest".into(),
                )),
            ),
            _ => (vec!["get"], None),
        };
        out.push((s, verbs, rk));
    }
    out
}

/// `/api/v1` or `/apis/G/V`: an APIResourceList.
pub fn resource_list(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    let kinds: Vec<_> = reg
        .all()
        .iter()
        .filter(|k| k.group == group && k.version == version)
        .cloned()
        .collect();
    if kinds.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for k in &kinds {
        let mut r = json!({
            "name": k.plural,
            "singularName": k.singular,
            "namespaced": k.namespaced,
            "kind": k.kind,
            "verbs": k.verbs(),
        });
        if !k.short_names.is_empty() {
            r["shortNames"] = json!(k.short_names);
        }
        if !k.categories.is_empty() {
            r["categories"] = json!(k.categories);
        }
        resources.push(r);
        for (s, verbs, rk) in subresources(k) {
            let mut r = json!({"name": format!("{}/{s}", k.plural), "singularName": "", "namespaced": k.namespaced, "kind": rk.as_ref().map(|r| r.2.clone()).unwrap_or_else(|| k.kind.clone()), "verbs": verbs});
            if let Some((g, v, _)) = rk {
                if !g.is_empty() {
                    r["group"] = json!(g);
                    r["version"] = json!(v);
                }
            }
            resources.push(r);
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

pub fn api_versions(host: &str) -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}]})
}

fn group_entry(name: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    json!({"name": name, "versions": vs, "preferredVersion": vs[0]})
}

pub fn group_list(reg: &Registry) -> Value {
    let groups: Vec<Value> = reg
        .groups()
        .iter()
        .map(|(g, vs)| group_entry(g, vs))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn group(reg: &Registry, name: &str) -> Option<Value> {
    reg.groups().iter().find(|(g, _)| g == name).map(|(g, vs)| {
        let mut e = group_entry(g, vs);
        e["kind"] = json!("APIGroup");
        e["apiVersion"] = json!("v1");
        e
    })
}

fn aggregated_version(reg: &Registry, group: &str, version: &str) -> Value {
    let mut resources = Vec::new();
    for k in reg
        .all()
        .iter()
        .filter(|k| k.group == group && k.version == version)
    {
        let mut r = json!({
            "resource": k.plural,
            "responseKind": {"group": k.group, "version": k.version, "kind": k.kind},
            "scope": if k.namespaced { "Namespaced" } else { "Cluster" },
            "singularResource": k.singular,
            "verbs": k.verbs(),
        });
        if !k.short_names.is_empty() {
            r["shortNames"] = json!(k.short_names);
        }
        if !k.categories.is_empty() {
            r["categories"] = json!(k.categories);
        }
        let subs: Vec<Value> = subresources(k)
            .into_iter()
            .map(|(s, verbs, rk)| {
                let (g, v, kd) = rk.unwrap_or_else(|| (k.group.clone(), k.version.clone(), k.kind.clone()));
                json!({"subresource": s, "responseKind": {"group": g, "version": v, "kind": kd}, "verbs": verbs})
            })
            .collect();
        if !subs.is_empty() {
            r["subresources"] = json!(subs);
        }
        resources.push(r);
    }
    json!({"version": version, "resources": resources, "freshness": "Current"})
}

/// The aggregated list for `/api` (legacy) or `/apis`.
pub fn aggregated(reg: &Registry, legacy: bool) -> Value {
    let items: Vec<Value> = if legacy {
        vec![
            json!({"metadata": {"creationTimestamp": null}, "versions": [aggregated_version(reg, "", "v1")]}),
        ]
    } else {
        reg.groups()
            .iter()
            .map(|(g, vs)| {
                json!({"metadata": {"name": g, "creationTimestamp": null}, "versions": vs.iter().map(|v| aggregated_version(reg, g, v)).collect::<Vec<_>>()})
            })
            .collect()
    };
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}
