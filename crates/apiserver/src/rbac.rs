//! Role-based access control as Kubernetes' RBAC authorizer evaluates it: a request is
//! allowed when a ClusterRoleBinding, or a RoleBinding in the request's namespace, binds a
//! subject the user is (its name, one of its groups, or the ServiceAccount it is) to a role
//! with a rule that covers the verb, API group, resource (and subresource) and name — or
//! the non-resource path. ClusterRoles with an `aggregationRule` hold the rules of every
//! ClusterRole their selectors match.
//!
//! The authorizer reads a snapshot compiled from the watch cache and rebuilt whenever an
//! RBAC object changes, so a request costs no store access. The server makes Kubernetes'
//! default roles and bindings at start (`ensure_defaults`).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde_json::{json, Value};

use crate::api::Api;
use crate::auth::{Attributes, Authorizer, UserInfo};

const PREFIX: &str = "/registry/rbac.authorization.k8s.io/";

/// One PolicyRule.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rule {
    pub verbs: Vec<String>,
    pub api_groups: Vec<String>,
    pub resources: Vec<String>,
    pub resource_names: Vec<String>,
    pub non_resource_urls: Vec<String>,
}

fn strings(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

impl Rule {
    pub fn from_value(v: &Value) -> Rule {
        Rule::from_json(v)
    }

    fn from_json(v: &Value) -> Rule {
        Rule {
            verbs: strings(v, "verbs"),
            api_groups: strings(v, "apiGroups"),
            resources: strings(v, "resources"),
            resource_names: strings(v, "resourceNames"),
            non_resource_urls: strings(v, "nonResourceURLs"),
        }
    }

    fn verb(&self, verb: &str) -> bool {
        self.verbs.iter().any(|v| v == "*" || v == verb)
    }

    /// Whether the rule covers a request (Kubernetes' `RuleAllows`).
    pub fn allows(&self, a: &Attributes) -> bool {
        if !a.resource.is_empty() {
            let resource = if a.subresource.is_empty() {
                a.resource.to_string()
            } else {
                format!("{}/{}", a.resource, a.subresource)
            };
            self.verb(a.verb)
                && self.api_groups.iter().any(|g| g == "*" || g == a.group)
                && self.resources.iter().any(|r| {
                    r == "*"
                        || *r == resource
                        || (!a.subresource.is_empty() && *r == format!("*/{}", a.subresource))
                })
                && (self.resource_names.is_empty()
                    || self.resource_names.iter().any(|n| n == a.name))
        } else {
            self.verb(a.verb)
                && self.non_resource_urls.iter().any(|u| {
                    u == "*"
                        || u == a.path
                        || u.strip_suffix('*').is_some_and(|p| a.path.starts_with(p))
                })
        }
    }
}

#[derive(Clone, Debug)]
struct Binding {
    /// (kind, name, namespace)
    subjects: Vec<(String, String, String)>,
    role_kind: String,
    role_name: String,
}

/// The compiled RBAC objects.
#[derive(Default)]
pub struct Snapshot {
    cluster_roles: HashMap<String, Vec<Rule>>,
    roles: HashMap<(String, String), Vec<Rule>>,
    cluster_bindings: Vec<Binding>,
    bindings: HashMap<String, Vec<Binding>>,
}

fn labels_match(selector: &Value, labels: Option<&serde_json::Map<String, Value>>) -> bool {
    crate::selector::LabelSelector::from_object(selector)
        .is_ok_and(|s| !s.is_empty() && s.matches(labels))
}

impl Snapshot {
    /// Compiles the RBAC objects (as stored JSON).
    pub fn compile(objects: &[Value]) -> Snapshot {
        let mut s = Snapshot::default();
        let meta = |o: &Value, k: &str| {
            o.pointer(&format!("/metadata/{k}"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let rules = |o: &Value| -> Vec<Rule> {
            o.get("rules")
                .and_then(Value::as_array)
                .map(|a| a.iter().map(Rule::from_json).collect())
                .unwrap_or_default()
        };
        let mut cluster_roles: Vec<&Value> = Vec::new();
        for o in objects {
            match o["kind"].as_str().unwrap_or_default() {
                "ClusterRole" => cluster_roles.push(o),
                "Role" => {
                    s.roles
                        .insert((meta(o, "namespace"), meta(o, "name")), rules(o));
                }
                kind @ ("ClusterRoleBinding" | "RoleBinding") => {
                    let b = Binding {
                        subjects: o
                            .get("subjects")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                            .map(|x| {
                                (
                                    x["kind"].as_str().unwrap_or_default().to_string(),
                                    x["name"].as_str().unwrap_or_default().to_string(),
                                    x["namespace"].as_str().unwrap_or_default().to_string(),
                                )
                            })
                            .collect(),
                        role_kind: o
                            .pointer("/roleRef/kind")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                        role_name: o
                            .pointer("/roleRef/name")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                    };
                    if kind == "ClusterRoleBinding" {
                        s.cluster_bindings.push(b);
                    } else {
                        s.bindings.entry(meta(o, "namespace")).or_default().push(b);
                    }
                }
                _ => {}
            }
        }
        // Aggregation: a role's rules and those of the roles its selectors match, to any
        // depth (the aggregated roles' own aggregations included), each role once.
        let by_name: HashMap<String, &Value> = cluster_roles
            .iter()
            .map(|o| (meta(o, "name"), *o))
            .collect();
        for (name, o) in &by_name {
            let mut out = rules(o);
            let mut seen = vec![name.clone()];
            let mut todo = vec![*o];
            while let Some(r) = todo.pop() {
                let selectors = r
                    .pointer("/aggregationRule/clusterRoleSelectors")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                for (other_name, other) in &by_name {
                    if seen.contains(other_name) {
                        continue;
                    }
                    let labels = other.pointer("/metadata/labels").and_then(Value::as_object);
                    if selectors.iter().any(|sel| labels_match(sel, labels)) {
                        seen.push(other_name.clone());
                        out.extend(rules(other));
                        todo.push(other);
                    }
                }
            }
            s.cluster_roles.insert(name.clone(), out);
        }
        s
    }

    fn binds(b: &Binding, user: &UserInfo) -> bool {
        b.subjects
            .iter()
            .any(|(kind, name, ns)| match kind.as_str() {
                "User" => *name == user.name,
                "Group" => user.groups.iter().any(|g| g == name),
                "ServiceAccount" => user.name == format!("system:serviceaccount:{ns}:{name}"),
                _ => false,
            })
    }

    fn role_rules<'a>(&'a self, b: &Binding, ns: &str) -> &'a [Rule] {
        let rules = match b.role_kind.as_str() {
            "ClusterRole" => self.cluster_roles.get(&b.role_name),
            "Role" => self.roles.get(&(ns.to_string(), b.role_name.clone())),
            _ => None,
        };
        rules.map(Vec::as_slice).unwrap_or_default()
    }

    /// The rules of a role a binding refers to.
    pub fn role(&self, kind: &str, ns: &str, name: &str) -> Vec<Rule> {
        match kind {
            "ClusterRole" => self.cluster_roles.get(name).cloned().unwrap_or_default(),
            "Role" => self
                .roles
                .get(&(ns.to_string(), name.to_string()))
                .cloned()
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// Every rule that applies to the user in `ns` (cluster-wide ones when empty).
    pub fn rules_for(&self, user: &UserInfo, ns: &str) -> Vec<Rule> {
        let mut out = Vec::new();
        for b in self
            .cluster_bindings
            .iter()
            .filter(|b| Self::binds(b, user))
        {
            out.extend_from_slice(self.role_rules(b, ""));
        }
        if !ns.is_empty() {
            for b in self
                .bindings
                .get(ns)
                .into_iter()
                .flatten()
                .filter(|b| Self::binds(b, user))
            {
                out.extend_from_slice(self.role_rules(b, ns));
            }
        }
        out
    }

    pub fn allows(&self, user: &UserInfo, a: &Attributes) -> bool {
        let cluster = self
            .cluster_bindings
            .iter()
            .filter(|b| Self::binds(b, user))
            .any(|b| self.role_rules(b, "").iter().any(|r| r.allows(a)));
        cluster
            || (!a.namespace.is_empty()
                && self
                    .bindings
                    .get(a.namespace)
                    .into_iter()
                    .flatten()
                    .filter(|b| Self::binds(b, user))
                    .any(|b| self.role_rules(b, a.namespace).iter().any(|r| r.allows(a))))
    }
}

/// The first part of `rule` that `may` does not allow, in `ns` (Kubernetes'
/// `ConfirmNoEscalation`: every verb, group, resource and name the rule names must be
/// held), as `{APIGroups:[…], Resources:[…], Verbs:[…]}`.
pub fn uncovered(rule: &Rule, may: impl Fn(&Attributes) -> bool, ns: &str) -> Option<String> {
    let names: Vec<&str> = if rule.resource_names.is_empty() {
        vec![""]
    } else {
        rule.resource_names.iter().map(String::as_str).collect()
    };
    for verb in &rule.verbs {
        for url in &rule.non_resource_urls {
            let a = Attributes {
                verb,
                group: "",
                resource: "",
                subresource: "",
                namespace: "",
                name: "",
                path: url,
            };
            if !may(&a) {
                return Some(format!(
                    "{{NonResourceURLs:[\"{url}\"], Verbs:[\"{verb}\"]}}"
                ));
            }
        }
        for group in &rule.api_groups {
            for res in &rule.resources {
                let (resource, sub) = res.split_once('/').unwrap_or((res.as_str(), ""));
                for name in &names {
                    let a = Attributes {
                        verb,
                        group,
                        resource,
                        subresource: sub,
                        namespace: ns,
                        name,
                        path: "",
                    };
                    if !may(&a) {
                        let n = if name.is_empty() {
                            String::new()
                        } else {
                            format!(", ResourceNames:[\"{name}\"]")
                        };
                        return Some(format!(
                            "{{APIGroups:[\"{group}\"], Resources:[\"{res}\"]{n}, Verbs:[\"{verb}\"]}}"
                        ));
                    }
                }
            }
        }
    }
    None
}

/// The RBAC authorizer: the current snapshot.
#[derive(Default)]
pub struct Rbac {
    snapshot: RwLock<Arc<Snapshot>>,
}

impl Rbac {
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.read().unwrap().clone()
    }

    /// Compiles the RBAC objects the cache holds now.
    pub fn rebuild(&self, api: &Api) {
        let objects: Vec<Value> = api
            .cache
            .list(PREFIX)
            .1
            .iter()
            .filter_map(|(_, _, v)| serde_json::from_slice(v).ok())
            .collect();
        *self.snapshot.write().unwrap() = Arc::new(Snapshot::compile(&objects));
    }

    /// Rebuilds the snapshot after every change of an RBAC object, for as long as the
    /// process runs.
    pub async fn follow(self: Arc<Self>, api: Arc<Api>) {
        loop {
            let Ok(mut sub) = api.cache.subscribe(PREFIX, None) else {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                continue;
            };
            self.rebuild(&api);
            loop {
                match sub.rx.recv().await {
                    Ok(e) if e.key.starts_with(PREFIX) => {
                        // Whatever else arrived meanwhile goes in the same rebuild.
                        while sub.rx.try_recv().is_ok() {}
                        self.rebuild(&api);
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        self.rebuild(&api);
                    }
                    Err(_) => break,
                }
            }
        }
    }
}

/// The authorizers in Kubernetes' order: the privileged `system:masters` group, the Node
/// authorizer, then RBAC.
pub struct Chain {
    pub rbac: Arc<Rbac>,
    pub api: Arc<Api>,
}

impl Authorizer for Chain {
    fn authorize(&self, user: &UserInfo, attrs: &Attributes) -> bool {
        if user.groups.iter().any(|g| g == "system:masters") {
            return true;
        }
        if user.groups.iter().any(|g| g == "system:nodes") {
            if let Some(node) = user.name.strip_prefix("system:node:") {
                if node_allows(&self.api, node, attrs) {
                    return true;
                }
            }
        }
        self.rbac.snapshot().allows(user, attrs)
    }
}

/// The names of the objects of `resource` a pod refers to: its volumes' and projected
/// sources' ConfigMaps and Secrets, its containers' environment, its image pull secrets,
/// its claims.
fn pod_refers(pod: &Value, resource: &str, name: &str) -> bool {
    let spec = &pod["spec"];
    let is = |v: &Value| v.as_str() == Some(name);
    let volumes = spec["volumes"].as_array().into_iter().flatten();
    let containers = ["containers", "initContainers", "ephemeralContainers"]
        .iter()
        .flat_map(|k| spec[*k].as_array().into_iter().flatten());
    match resource {
        "secrets" => {
            volumes.clone().any(|v| {
                is(&v["secret"]["secretName"])
                    || v["projected"]["sources"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|s| is(&s["secret"]["name"]))
            }) || containers.clone().any(|c| {
                c["env"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|e| is(&e["valueFrom"]["secretKeyRef"]["name"]))
                    || c["envFrom"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|e| is(&e["secretRef"]["name"]))
            }) || spec["imagePullSecrets"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| is(&s["name"]))
        }
        "configmaps" => {
            volumes.clone().any(|v| {
                is(&v["configMap"]["name"])
                    || v["projected"]["sources"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|s| is(&s["configMap"]["name"]))
            }) || containers.clone().any(|c| {
                c["env"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|e| is(&e["valueFrom"]["configMapKeyRef"]["name"]))
                    || c["envFrom"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|e| is(&e["configMapRef"]["name"]))
            })
        }
        "persistentvolumeclaims" => volumes
            .clone()
            .any(|v| is(&v["persistentVolumeClaim"]["claimName"])),
        _ => false,
    }
}

/// The pods bound to `node` (in `ns`, or every namespace when empty), from the cache.
fn node_pods(api: &Api, node: &str, ns: &str) -> Vec<Value> {
    let prefix = if ns.is_empty() {
        "/registry/core/pods/".to_string()
    } else {
        format!("/registry/core/pods/{ns}/")
    };
    api.cache
        .list(&prefix)
        .1
        .iter()
        .filter_map(|(_, _, v)| serde_json::from_slice::<Value>(v).ok())
        .filter(|p| p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node))
        .collect()
}

fn pod_on_node(api: &Api, node: &str, ns: &str, name: &str) -> bool {
    api.cache
        .get(&format!("/registry/core/pods/{ns}/{name}"))
        .and_then(|raw| serde_json::from_slice::<Value>(&raw).ok())
        .is_some_and(|p| p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node))
}

/// Kubernetes' Node authorizer, for the agent of `node`: its own Node and Lease, the pods
/// bound to it and their status, and only the Secrets, ConfigMaps, claims and volumes those
/// pods refer to (by name); Services, endpoints and namespaces for its proxy and DNS; events.
pub fn node_allows(api: &Api, node: &str, a: &Attributes) -> bool {
    let read = matches!(a.verb, "get" | "list" | "watch");
    let own_write = matches!(a.verb, "update" | "patch" | "delete") && a.name == node;
    match (a.group, a.resource, a.subresource) {
        ("", "nodes", "") => read || a.verb == "create" || own_write,
        ("", "nodes", "status") => read || (own_write && a.verb != "delete"),
        ("coordination.k8s.io", "leases", "") => {
            a.namespace == "kube-node-lease" && (read || a.verb == "create" || own_write)
        }
        ("", "pods", "") => {
            read || a.verb == "create"
                || (a.verb == "delete" && pod_on_node(api, node, a.namespace, a.name))
        }
        ("", "pods", "status") => {
            read || (matches!(a.verb, "update" | "patch")
                && pod_on_node(api, node, a.namespace, a.name))
        }
        // Where the servers' registry is (every node trusts and pulls from it).
        ("", "configmaps", "")
            if a.namespace == "kube-public" && a.name == crate::services::REGISTRY_CONFIGMAP =>
        {
            a.verb == "get"
        }
        ("", "secrets" | "configmaps" | "persistentvolumeclaims", "") => {
            a.verb == "get"
                && !a.name.is_empty()
                && node_pods(api, node, a.namespace)
                    .iter()
                    .any(|p| pod_refers(p, a.resource, a.name))
        }
        ("", "persistentvolumes", "") => {
            a.verb == "get"
                && !a.name.is_empty()
                && node_pods(api, node, "").iter().any(|p| {
                    let ns = p
                        .pointer("/metadata/namespace")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    p["spec"]["volumes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|v| {
                            v["persistentVolumeClaim"]["claimName"]
                                .as_str()
                                .is_some_and(|c| {
                                    api.cache
                                        .get(&format!(
                                            "/registry/core/persistentvolumeclaims/{ns}/{c}"
                                        ))
                                        .and_then(|raw| serde_json::from_slice::<Value>(&raw).ok())
                                        .is_some_and(|pvc| {
                                            pvc.pointer("/spec/volumeName").and_then(Value::as_str)
                                                == Some(a.name)
                                        })
                                })
                        })
                })
        }
        ("", "events", "") | ("events.k8s.io", "events", "") => {
            read || matches!(a.verb, "create" | "update" | "patch")
        }
        // Tokens for the accounts its pods run as (the TokenRequest itself checks the pod).
        ("", "serviceaccounts", "token") => {
            a.verb == "create"
                && node_pods(api, node, a.namespace).iter().any(|p| {
                    p.pointer("/spec/serviceAccountName")
                        .and_then(Value::as_str)
                        == Some(a.name)
                })
        }
        ("", "services" | "endpoints" | "namespaces", "") => read,
        // Its own certificates: asked for, renewed, and watched until issued.
        ("certificates.k8s.io", "certificatesigningrequests", "") => read || a.verb == "create",
        // The agent checks images against the signature policies before it runs them.
        ("security.berth.io", "imagesignaturepolicies", "") => read,
        ("discovery.k8s.io", "endpointslices", "") => read,
        _ => false,
    }
}

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];

/// Kubernetes' default ClusterRoles and ClusterRoleBindings (its bootstrap policy's
/// user-facing and discovery roles).
pub fn defaults() -> Vec<(String, Value)> {
    let auto = json!({"rbac.authorization.kubernetes.io/autoupdate": "true"});
    let bootstrap = json!({"kubernetes.io/bootstrapping": "rbac-defaults"});
    let role = |name: &str, labels: Value, rules: Vec<Value>, aggregate: Option<&str>| {
        let mut labels = labels;
        labels["kubernetes.io/bootstrapping"] = json!("rbac-defaults");
        let mut o = json!({
            "kind": "ClusterRole", "apiVersion": "rbac.authorization.k8s.io/v1",
            "metadata": {"name": name, "labels": labels, "annotations": auto,
                "uid": crate::api::new_uid(), "creationTimestamp": crate::now()},
            "rules": rules,
        });
        if let Some(a) = aggregate {
            o["aggregationRule"] = json!({"clusterRoleSelectors": [
                {"matchLabels": {format!("rbac.authorization.k8s.io/aggregate-to-{a}"): "true"}}]});
        }
        (format!("{PREFIX}clusterroles/{name}"), o)
    };
    let binding = |name: &str, role: &str, groups: &[&str]| {
        let subjects: Vec<Value> = groups
            .iter()
            .map(|g| json!({"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": g}))
            .collect();
        (
            format!("{PREFIX}clusterrolebindings/{name}"),
            json!({
                "kind": "ClusterRoleBinding", "apiVersion": "rbac.authorization.k8s.io/v1",
                "metadata": {"name": name, "labels": bootstrap, "annotations": auto,
                    "uid": crate::api::new_uid(), "creationTimestamp": crate::now()},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                "subjects": subjects,
            }),
        )
    };
    let user_binding = |name: &str, user: &str| {
        (
            format!("{PREFIX}clusterrolebindings/{name}"),
            json!({
                "kind": "ClusterRoleBinding", "apiVersion": "rbac.authorization.k8s.io/v1",
                "metadata": {"name": name, "labels": bootstrap, "annotations": auto,
                    "uid": crate::api::new_uid(), "creationTimestamp": crate::now()},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": user},
                "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": user}],
            }),
        )
    };
    let view_rules = vec![
        rule(
            &[""],
            &[
                "configmaps",
                "endpoints",
                "persistentvolumeclaims",
                "persistentvolumeclaims/status",
                "pods",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "serviceaccounts",
                "services",
                "services/status",
            ],
            READ,
        ),
        rule(
            &[""],
            &[
                "bindings",
                "events",
                "limitranges",
                "namespaces/status",
                "pods/log",
                "pods/status",
                "replicationcontrollers/status",
                "resourcequotas",
                "resourcequotas/status",
            ],
            READ,
        ),
        rule(&[""], &["namespaces"], READ),
        rule(&["discovery.k8s.io"], &["endpointslices"], READ),
        rule(
            &["apps"],
            &[
                "controllerrevisions",
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "statefulsets",
                "statefulsets/scale",
                "statefulsets/status",
            ],
            READ,
        ),
        rule(
            &["autoscaling"],
            &[
                "horizontalpodautoscalers",
                "horizontalpodautoscalers/status",
            ],
            READ,
        ),
        rule(
            &["batch"],
            &["cronjobs", "cronjobs/status", "jobs", "jobs/status"],
            READ,
        ),
        rule(
            &["policy"],
            &["poddisruptionbudgets", "poddisruptionbudgets/status"],
            READ,
        ),
        rule(
            &["networking.k8s.io"],
            &["ingresses", "ingresses/status", "networkpolicies"],
            READ,
        ),
        rule(&["events.k8s.io"], &["events"], READ),
        rule(&["metrics.k8s.io"], &["pods", "nodes"], READ),
    ];
    let edit_rules = vec![
        rule(
            &[""],
            &[
                "pods/attach",
                "pods/exec",
                "pods/portforward",
                "pods/proxy",
                "secrets",
                "services/proxy",
            ],
            READ,
        ),
        rule(&[""], &["serviceaccounts"], &["impersonate"]),
        rule(
            &[""],
            &[
                "pods",
                "pods/attach",
                "pods/exec",
                "pods/portforward",
                "pods/proxy",
            ],
            WRITE,
        ),
        rule(&[""], &["pods/eviction"], &["create"]),
        rule(
            &[""],
            &[
                "configmaps",
                "events",
                "persistentvolumeclaims",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "secrets",
                "serviceaccounts",
                "services",
                "services/proxy",
            ],
            WRITE,
        ),
        rule(&[""], &["serviceaccounts/token"], &["create"]),
        rule(
            &["apps"],
            &[
                "daemonsets",
                "deployments",
                "deployments/rollback",
                "deployments/scale",
                "replicasets",
                "replicasets/scale",
                "statefulsets",
                "statefulsets/scale",
            ],
            WRITE,
        ),
        rule(&["autoscaling"], &["horizontalpodautoscalers"], WRITE),
        rule(&["batch"], &["cronjobs", "jobs"], WRITE),
        rule(
            &["networking.k8s.io"],
            &["ingresses", "networkpolicies"],
            WRITE,
        ),
        rule(&["policy"], &["poddisruptionbudgets"], WRITE),
    ];
    let admin_rules = vec![
        rule(
            &["authorization.k8s.io"],
            &["localsubjectaccessreviews"],
            &["create"],
        ),
        rule(
            &["rbac.authorization.k8s.io"],
            &["rolebindings", "roles"],
            &[
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch",
            ],
        ),
    ];
    let agg = |to: &str| json!({format!("rbac.authorization.k8s.io/aggregate-to-{to}"): "true"});
    let mut both = agg("admin");
    both["rbac.authorization.k8s.io/aggregate-to-edit"] = json!("true");
    vec![
        role(
            "cluster-admin",
            json!({}),
            vec![
                json!({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}),
                json!({"nonResourceURLs": ["*"], "verbs": ["*"]}),
            ],
            None,
        ),
        role("admin", json!({}), vec![], Some("admin")),
        role("edit", agg("admin"), vec![], Some("edit")),
        role("view", agg("edit"), vec![], Some("view")),
        role("system:aggregate-to-admin", agg("admin"), admin_rules, None),
        role("system:aggregate-to-edit", agg("edit"), edit_rules, None),
        role("system:aggregate-to-view", agg("view"), view_rules, None),
        role(
            "system:basic-user",
            json!({}),
            vec![
                rule(
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                    &["create"],
                ),
                rule(
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                    &["create"],
                ),
            ],
            None,
        ),
        role(
            "system:discovery",
            json!({}),
            vec![json!({"nonResourceURLs": [
            "/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/openapi", "/openapi/*",
            "/readyz", "/version", "/version/"], "verbs": ["get"]})],
            None,
        ),
        role(
            "system:public-info-viewer",
            json!({}),
            vec![json!({"nonResourceURLs": [
            "/healthz", "/livez", "/readyz", "/version", "/version/"], "verbs": ["get"]})],
            None,
        ),
        // kube-scheduler's: what it reads to place pods, and bindings, status, preemption.
        role(
            "system:kube-scheduler",
            json!({}),
            vec![
                rule(
                    &["", "events.k8s.io"],
                    &["events"],
                    &["create", "patch", "update"],
                ),
                rule(
                    &["coordination.k8s.io"],
                    &["leases"],
                    &["create", "get", "update"],
                ),
                rule(&[""], &["nodes", "namespaces"], &["get", "list", "watch"]),
                rule(&[""], &["pods"], &["delete", "get", "list", "watch"]),
                rule(&[""], &["bindings", "pods/binding"], &["create"]),
                rule(&[""], &["pods/status"], &["patch", "update"]),
                rule(
                    &[""],
                    &["persistentvolumeclaims", "persistentvolumes"],
                    &["get", "list", "watch", "patch", "update"],
                ),
                rule(
                    &["", "apps", "policy", "storage.k8s.io"],
                    &[
                        "services",
                        "replicationcontrollers",
                        "replicasets",
                        "statefulsets",
                        "poddisruptionbudgets",
                        "storageclasses",
                        "csinodes",
                        "csidrivers",
                    ],
                    &["get", "list", "watch"],
                ),
            ],
            None,
        ),
        // The union of kube-controller-manager's per-controller roles: the garbage
        // collector's reach over every resource (no create), and the creates each
        // controller makes. It cannot create Secrets, ConfigMaps, RBAC objects or
        // anything else no controller makes, nor impersonate.
        role(
            "system:kube-controller-manager",
            json!({}),
            vec![
                rule(
                    &["*"],
                    &["*"],
                    &[
                        "get",
                        "list",
                        "watch",
                        "patch",
                        "update",
                        "delete",
                        "deletecollection",
                    ],
                ),
                rule(
                    &[""],
                    &[
                        "pods",
                        "events",
                        "endpoints",
                        "persistentvolumeclaims",
                        "pods/eviction",
                    ],
                    &["create"],
                ),
                rule(
                    &["apps"],
                    &["replicasets", "controllerrevisions"],
                    &["create"],
                ),
                rule(&["batch"], &["jobs"], &["create"]),
                rule(&["discovery.k8s.io"], &["endpointslices"], &["create"]),
                rule(&["events.k8s.io"], &["events"], &["create"]),
                rule(&["coordination.k8s.io"], &["leases"], &["create"]),
            ],
            None,
        ),
        role(
            "system:node-bootstrapper",
            json!({}),
            vec![rule(
                &["certificates.k8s.io"],
                &["certificatesigningrequests"],
                &["create", "get", "list", "watch"],
            )],
            None,
        ),
        role(
            "system:service-account-issuer-discovery",
            json!({}),
            vec![json!({"nonResourceURLs": [
            "/.well-known/openid-configuration", "/.well-known/openid-configuration/",
            "/openid/v1/jwks", "/openid/v1/jwks/"], "verbs": ["get"]})],
            None,
        ),
        // The server's registry (`registry.berth.io`, cluster-scoped `repositories` named
        // by the repository): nodes pull; pushers are bound by the admin.
        role(
            "berth:registry-pull",
            json!({}),
            vec![rule(
                &["registry.berth.io"],
                &["repositories"],
                &["get", "list"],
            )],
            None,
        ),
        role(
            "berth:registry-push",
            json!({}),
            vec![rule(
                &["registry.berth.io"],
                &["repositories"],
                &["get", "list", "create", "delete"],
            )],
            None,
        ),
        binding(
            "berth:registry-pull:nodes",
            "berth:registry-pull",
            &["system:nodes"],
        ),
        binding("cluster-admin", "cluster-admin", &["system:masters"]),
        binding(
            "system:node-bootstrapper",
            "system:node-bootstrapper",
            &["system:bootstrappers"],
        ),
        user_binding("system:kube-scheduler", "system:kube-scheduler"),
        user_binding(
            "system:kube-controller-manager",
            "system:kube-controller-manager",
        ),
        binding(
            "system:service-account-issuer-discovery",
            "system:service-account-issuer-discovery",
            &["system:serviceaccounts"],
        ),
        binding(
            "system:basic-user",
            "system:basic-user",
            &["system:authenticated"],
        ),
        binding(
            "system:discovery",
            "system:discovery",
            &["system:authenticated"],
        ),
        binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            &["system:authenticated", "system:unauthenticated"],
        ),
    ]
}

/// Makes the default roles and bindings that do not exist (an existing one, changed by an
/// administrator, is left as it is).
pub async fn ensure_defaults(api: &Arc<Api>) -> Result<(), store::StoreError> {
    for (key, obj) in defaults() {
        crate::namespaces::ensure(api, &key, || obj.clone()).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo {
            name: name.into(),
            uid: String::new(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    fn attrs<'a>(
        verb: &'a str,
        group: &'a str,
        resource: &'a str,
        sub: &'a str,
        ns: &'a str,
    ) -> Attributes<'a> {
        Attributes {
            verb,
            group,
            resource,
            subresource: sub,
            namespace: ns,
            name: "",
            path: "",
        }
    }

    fn snapshot(extra: Vec<Value>) -> Snapshot {
        let mut objects: Vec<Value> = defaults().into_iter().map(|(_, o)| o).collect();
        objects.extend(extra);
        Snapshot::compile(&objects)
    }

    #[test]
    fn view_in_one_namespace_reads_there_only() {
        let s = snapshot(vec![
            json!({"kind": "RoleBinding", "metadata": {"name": "v", "namespace": "a"},
            "roleRef": {"kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "User", "name": "alice"}]}),
        ]);
        let alice = user("alice", &["system:authenticated"]);
        assert!(s.allows(&alice, &attrs("list", "", "pods", "", "a")));
        assert!(s.allows(&alice, &attrs("get", "apps", "deployments", "scale", "a")));
        assert!(!s.allows(&alice, &attrs("list", "", "pods", "", "b")));
        assert!(!s.allows(&alice, &attrs("create", "", "pods", "", "a")));
        assert!(
            !s.allows(&alice, &attrs("get", "", "secrets", "", "a")),
            "view reads no secrets"
        );
        assert!(
            !s.allows(&alice, &attrs("list", "", "pods", "", "")),
            "nor across namespaces"
        );
        // Everyone authenticated may discover and ask what they may do.
        let mut d = attrs("get", "", "", "", "");
        d.path = "/apis/apps/v1";
        assert!(s.allows(&alice, &d));
        assert!(s.allows(
            &alice,
            &attrs(
                "create",
                "authorization.k8s.io",
                "selfsubjectaccessreviews",
                "",
                ""
            )
        ));
    }

    #[test]
    fn aggregation_makes_admin_hold_edit_and_view() {
        let s = snapshot(vec![]);
        let admin = &s.cluster_roles["admin"];
        let want = |verb, group, res| {
            admin
                .iter()
                .any(|r| r.allows(&attrs(verb, group, res, "", "x")))
        };
        assert!(want("create", "rbac.authorization.k8s.io", "rolebindings"));
        assert!(want("delete", "apps", "deployments"));
        assert!(want("watch", "batch", "jobs"));
        assert!(!s.cluster_roles["view"].iter().any(|r| r.allows(&attrs(
            "delete",
            "apps",
            "deployments",
            "",
            "x"
        ))));
    }

    #[test]
    fn rules_match_as_kubernetes_matches_them() {
        let r = Rule::from_json(
            &json!({"apiGroups": [""], "resources": ["pods", "*/status"],
            "verbs": ["get"], "resourceNames": ["web"]}),
        );
        let mut a = attrs("get", "", "pods", "", "d");
        a.name = "web";
        assert!(r.allows(&a));
        a.name = "other";
        assert!(!r.allows(&a));
        let r = Rule::from_json(
            &json!({"apiGroups": ["*"], "resources": ["*/status"], "verbs": ["*"]}),
        );
        assert!(r.allows(&attrs("patch", "apps", "deployments", "status", "d")));
        assert!(!r.allows(&attrs("patch", "apps", "deployments", "", "d")));
        let r = Rule::from_json(&json!({"nonResourceURLs": ["/logs/*"], "verbs": ["get"]}));
        let mut a = attrs("get", "", "", "", "");
        a.path = "/logs/x";
        assert!(r.allows(&a));
        // Service accounts and groups as subjects.
        let s = snapshot(vec![
            json!({"kind": "ClusterRoleBinding", "metadata": {"name": "sa"},
            "roleRef": {"kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "ServiceAccount", "name": "bot", "namespace": "ci"},
                         {"kind": "Group", "name": "auditors"}]}),
        ]);
        assert!(s.allows(
            &user("system:serviceaccount:ci:bot", &[]),
            &attrs("list", "", "pods", "", "")
        ));
        assert!(s.allows(
            &user("eve", &["auditors"]),
            &attrs("list", "", "pods", "", "q")
        ));
        assert!(!s.allows(
            &user("system:serviceaccount:other:bot", &[]),
            &attrs("list", "", "pods", "", "")
        ));
    }
}
