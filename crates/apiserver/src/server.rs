//! The HTTPS front: rustls with ALPN (h2, http/1.1) on tokio/hyper, authentication,
//! authorization, routing to discovery, OpenAPI and the resource verbs, and metrics.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;

use crate::api::{Api, Body, Ctx, Output, Reply, Target};
use crate::auth::{Attributes, Authorizer, Tokens, UserInfo};
use crate::discovery;
use crate::metrics::Metrics;
use crate::openapi;
use crate::status::ApiError;

pub const MAX_BODY: usize = 3 * 1024 * 1024;

pub struct Server {
    pub api: Arc<Api>,
    pub metrics: Arc<Metrics>,
    pub tokens: Tokens,
    pub authorizer: Box<dyn Authorizer>,
    pub host: String,
    /// Generated documents (OpenAPI) by path, with the registry generation they were made at.
    pub documents: std::sync::Mutex<std::collections::HashMap<String, (u64, Bytes)>>,
    /// Joining nodes and the proxy to their kubelets.
    pub nodes: Arc<crate::nodes::Nodes>,
    /// Nodes' and pods' resource usage (metrics.k8s.io).
    pub usage: Arc<crate::resourcemetrics::ResourceMetrics>,
    /// The RBAC snapshot (for SelfSubjectRulesReview).
    pub rbac: Option<Arc<crate::rbac::Rbac>>,
    /// ServiceAccount tokens: issued by TokenRequest, checked on every bearer token.
    pub issuer: Arc<crate::serviceaccount::Issuer>,
}

pub type ResBody = BoxBody<Bytes, Infallible>;
/// A request's body, from a connection or from a client in this process.
pub type ReqBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BodyError>;

/// Why reading a request's body failed.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct BodyError(pub Box<dyn std::error::Error + Send + Sync>);

impl BodyError {
    pub fn new(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        BodyError(e.into())
    }
}

fn full(status: u16, ct: &str, body: impl Into<Bytes>) -> Response<ResBody> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_str(ct).unwrap_or(HeaderValue::from_static("application/json")),
    );
    r
}

fn to_response(reply: Reply, yaml: bool) -> Response<ResBody> {
    let mut resp = match reply.body {
        Body::Full(b) => {
            if yaml && reply.content_type == "application/json" {
                let v: Value = serde_json::from_slice(&b).unwrap_or_default();
                full(
                    reply.status,
                    "application/yaml",
                    serde_yaml::to_string(&v).unwrap_or_default(),
                )
            } else {
                full(reply.status, &reply.content_type, b)
            }
        }
        Body::Stream(rx) => {
            let stream = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv()
                    .await
                    .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
            });
            let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_str(&reply.content_type).unwrap(),
            );
            r
        }
    };
    for w in reply.warnings {
        let v = format!("299 - \"{}\"", w.replace('\\', "\\\\").replace('"', "\\\""));
        if let Ok(h) = HeaderValue::from_str(&v) {
            resp.headers_mut().append("warning", h);
        }
    }
    resp
}

/// The answer to a get or list of a kind served from memory: the object, a list, or a Table.
fn read_only_reply(
    kind: &crate::kinds::Kind,
    one: bool,
    mut items: Vec<Value>,
    output: Output,
    query: &[(String, String)],
) -> Reply {
    let include = query
        .iter()
        .find(|(k, _)| k == "includeObject")
        .map(|(_, v)| v.as_str());
    match output {
        Output::Table => Reply::json(
            200,
            &crate::table::table(kind, &items, include, Some(serde_json::json!({}))),
        ),
        _ if one => Reply::json(200, &items.remove(0)),
        _ => Reply::json(
            200,
            &serde_json::json!({
                "kind": kind.list_kind,
                "apiVersion": kind.api_version(),
                "metadata": {},
                "items": items,
            }),
        ),
    }
}

fn query_pairs(q: Option<&str>) -> Vec<(String, String)> {
    q.unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (httpwire::decode(k), httpwire::decode(v))
        })
        .collect()
}

fn output_of(accept: &str) -> Result<(Output, bool), ApiError> {
    if accept.is_empty() {
        return Ok((Output::Object, false));
    }
    for a in accept.split(',') {
        let a = a.trim();
        let base = a.split(';').next().unwrap_or_default().trim();
        if base == "application/json"
            || base == "*/*"
            || base == "application/*"
            || base == "application/yaml"
        {
            if a.contains("as=Table") {
                return Ok((Output::Table, false));
            }
            if a.contains("as=PartialObjectMetadata") {
                return Ok((Output::Metadata, false));
            }
            if a.contains("as=") {
                continue;
            }
            return Ok((Output::Object, base == "application/yaml"));
        }
    }
    Err(ApiError::not_acceptable(
        "application/json, application/yaml, application/vnd.kubernetes.protobuf",
    ))
}

impl Server {
    /// Kubernetes' user impersonation (`Impersonate-User`, `Impersonate-Group`,
    /// `Impersonate-Uid`): the request goes on as the user named, when the requester may
    /// `impersonate` that user (or service account), each group and the UID.
    fn impersonate(&self, req: &Request<ReqBody>, user: UserInfo) -> Result<UserInfo, ApiError> {
        let h = req.headers();
        let values = |name: &str| -> Vec<String> {
            h.get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(str::to_string)
                .collect()
        };
        let target = values("impersonate-user").into_iter().next();
        let groups = values("impersonate-group");
        let uid = values("impersonate-uid").into_iter().next();
        let Some(target) = target else {
            if !groups.is_empty() || uid.is_some() {
                return Err(ApiError::bad_request(format!(
                    "requested {:?} without impersonating a user",
                    groups
                )));
            }
            return Ok(user);
        };
        let check = |group: &str, resource: &str, ns: &str, name: &str| -> Result<(), ApiError> {
            let allowed = self.authorizer.authorize(
                &user,
                &Attributes {
                    verb: "impersonate",
                    group,
                    resource,
                    subresource: "",
                    namespace: ns,
                    name,
                    path: "",
                },
            );
            if allowed {
                return Ok(());
            }
            let scope = if ns.is_empty() {
                " at the cluster scope".to_string()
            } else {
                format!(" in the namespace \"{ns}\"")
            };
            Err(ApiError::forbidden(format!(
                "{resource} \"{name}\" is forbidden: User \"{}\" cannot impersonate resource \"{resource}\" in API group \"{group}\"{scope}",
                user.name
            )))
        };
        let sa = target
            .strip_prefix("system:serviceaccount:")
            .and_then(|r| r.split_once(':'));
        match sa {
            Some((ns, name)) => check("", "serviceaccounts", ns, name)?,
            None => check("", "users", "", &target)?,
        }
        for g in &groups {
            check("", "groups", "", g)?;
        }
        if let Some(u) = &uid {
            check("authentication.k8s.io", "uids", "", u)?;
        }
        let mut out_groups = groups.clone();
        if let (Some((ns, _)), true) = (sa, groups.is_empty()) {
            out_groups.push("system:serviceaccounts".into());
            out_groups.push(format!("system:serviceaccounts:{ns}"));
        }
        let anonymous = target == "system:anonymous";
        let implied = if anonymous {
            "system:unauthenticated"
        } else {
            "system:authenticated"
        };
        if !out_groups.iter().any(|g| g == implied) {
            out_groups.push(implied.into());
        }
        Ok(UserInfo {
            name: target,
            uid: uid.unwrap_or_default(),
            groups: out_groups,
        })
    }

    /// Kubernetes' escalation prevention: a user may write a Role or ClusterRole only with
    /// rules it holds itself (or the `escalate` verb on it), and a binding only to a role
    /// whose rules it holds (or the `bind` verb on it).
    fn escalation(
        &self,
        user: &UserInfo,
        kind: &crate::kinds::Kind,
        obj: &Value,
    ) -> Result<(), ApiError> {
        const G: &str = "rbac.authorization.k8s.io";
        if kind.group != G {
            return Ok(());
        }
        let ns = obj
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let (rules, role_resource, role_name, verb) = match kind.kind.as_str() {
            "Role" | "ClusterRole" => {
                let rules: Vec<crate::rbac::Rule> = obj
                    .get("rules")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().map(crate::rbac::Rule::from_value).collect())
                    .unwrap_or_default();
                (rules, kind.plural.clone(), name.to_string(), "escalate")
            }
            "RoleBinding" | "ClusterRoleBinding" => {
                let role_kind = obj
                    .pointer("/roleRef/kind")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let role_name = obj
                    .pointer("/roleRef/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let snap = match &self.rbac {
                    Some(r) => r.snapshot(),
                    None => return Ok(()),
                };
                let rules = snap.role(role_kind, ns, &role_name);
                let resource = if role_kind == "Role" {
                    "roles"
                } else {
                    "clusterroles"
                };
                (rules, resource.to_string(), role_name, "bind")
            }
            _ => return Ok(()),
        };
        let may = |verb: &str, resource: &str, name: &str| {
            self.authorizer.authorize(
                user,
                &Attributes {
                    verb,
                    group: G,
                    resource,
                    subresource: "",
                    namespace: ns,
                    name,
                    path: "",
                },
            )
        };
        if may(verb, &role_resource, &role_name) {
            return Ok(());
        }
        for r in &rules {
            if let Some(missing) =
                crate::rbac::uncovered(r, |a| self.authorizer.authorize(user, a), ns)
            {
                let scope = if ns.is_empty() {
                    String::new()
                } else {
                    format!(" in the namespace \"{ns}\"")
                };
                return Err(ApiError::forbidden(format!(
                    "{} \"{name}\" is forbidden: user \"{}\" (groups={:?}) is attempting to grant RBAC permissions not currently held:\n{missing}{scope}",
                    kind.qualified(),
                    user.name,
                    user.groups
                )));
            }
        }
        Ok(())
    }

    /// Answers a review (access reviews, SelfSubjectReview) for `user`: the object with
    /// its status filled in.
    fn review(
        &self,
        kind: &crate::kinds::Kind,
        user: &UserInfo,
        ns: Option<&str>,
        mut v: Value,
    ) -> Result<Value, ApiError> {
        use serde_json::json;
        if v.get("kind")
            .and_then(Value::as_str)
            .is_some_and(|k| k != kind.kind)
        {
            return Err(ApiError::bad_request(format!(
                "the body is a {}, not a {}",
                v["kind"].as_str().unwrap_or_default(),
                kind.kind
            )));
        }
        let spec = v.get("spec").cloned().unwrap_or(json!({}));
        let s = |p: &str| {
            spec.pointer(p)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let status = match kind.kind.as_str() {
            "SelfSubjectReview" => json!({"userInfo": {
                "username": user.name, "uid": user.uid, "groups": user.groups}}),
            "SelfSubjectRulesReview" => {
                let ns = s("/namespace");
                let snap = match &self.rbac {
                    Some(r) => r.snapshot(),
                    None => Default::default(),
                };
                let mut rules = snap.rules_for(user, &ns);
                if user.groups.iter().any(|g| g == "system:masters") {
                    rules.insert(
                        0,
                        crate::rbac::Rule {
                            verbs: vec!["*".into()],
                            api_groups: vec!["*".into()],
                            resources: vec!["*".into()],
                            ..Default::default()
                        },
                    );
                }
                let resource: Vec<Value> = rules
                    .iter()
                    .filter(|r| !r.resources.is_empty())
                    .map(|r| {
                        let mut o = json!({"verbs": r.verbs, "apiGroups": r.api_groups, "resources": r.resources});
                        if !r.resource_names.is_empty() {
                            o["resourceNames"] = json!(r.resource_names);
                        }
                        o
                    })
                    .collect();
                let non_resource: Vec<Value> = rules
                    .iter()
                    .filter(|r| !r.non_resource_urls.is_empty())
                    .map(|r| json!({"verbs": r.verbs, "nonResourceURLs": r.non_resource_urls}))
                    .collect();
                // A node's own permissions come from the node authorizer, not rules.
                let incomplete = user.groups.iter().any(|g| g == "system:nodes");
                json!({"resourceRules": resource, "nonResourceRules": non_resource, "incomplete": incomplete})
            }
            _ => {
                let subject = match kind.kind.as_str() {
                    "SelfSubjectAccessReview" => user.clone(),
                    _ => UserInfo {
                        name: s("/user"),
                        uid: s("/uid"),
                        groups: spec
                            .get("groups")
                            .and_then(Value::as_array)
                            .map(|a| {
                                a.iter()
                                    .filter_map(|g| g.as_str().map(str::to_string))
                                    .collect()
                            })
                            .unwrap_or_default(),
                    },
                };
                if kind.kind == "LocalSubjectAccessReview" {
                    let asked = s("/resourceAttributes/namespace");
                    if !asked.is_empty() && Some(asked.as_str()) != ns {
                        return Err(ApiError::bad_request(format!(
                            "spec.resourceAttributes.namespace must match namespace: {}",
                            ns.unwrap_or_default()
                        )));
                    }
                }
                let path = s("/nonResourceAttributes/path");
                let (verb, group, resource, sub, namespace, name) = if spec
                    .get("resourceAttributes")
                    .is_some()
                {
                    (
                        s("/resourceAttributes/verb"),
                        s("/resourceAttributes/group"),
                        s("/resourceAttributes/resource"),
                        s("/resourceAttributes/subresource"),
                        if kind.kind == "LocalSubjectAccessReview" {
                            ns.unwrap_or_default().to_string()
                        } else {
                            s("/resourceAttributes/namespace")
                        },
                        s("/resourceAttributes/name"),
                    )
                } else if spec.get("nonResourceAttributes").is_some() {
                    (
                        s("/nonResourceAttributes/verb"),
                        String::new(),
                        String::new(),
                        String::new(),
                        String::new(),
                        String::new(),
                    )
                } else {
                    return Err(ApiError::bad_request(
                            "spec: exactly one of nonResourceAttributes or resourceAttributes must be specified",
                        ));
                };
                let allowed = self.authorizer.authorize(
                    &subject,
                    &Attributes {
                        verb: &verb,
                        group: &group,
                        resource: &resource,
                        subresource: &sub,
                        namespace: &namespace,
                        name: &name,
                        path: &path,
                    },
                );
                json!({"allowed": allowed})
            }
        };
        if let Some(m) = v.as_object_mut() {
            m.insert("apiVersion".into(), json!(kind.api_version()));
            m.insert("kind".into(), json!(kind.kind));
            m.entry("metadata").or_insert(json!({}));
            m.insert("status".into(), status);
        }
        Ok(v)
    }

    /// A generated document, made once per registry generation.
    fn document(&self, path: &str, make: impl FnOnce() -> Option<Value>) -> Option<Bytes> {
        let generation = self.api.registry.generation();
        if let Some((g, b)) = self.documents.lock().unwrap().get(path) {
            if *g == generation {
                return Some(b.clone());
            }
        }
        let b = Bytes::from(serde_json::to_vec(&make()?).unwrap_or_default());
        self.documents
            .lock()
            .unwrap()
            .insert(path.to_string(), (generation, b.clone()));
        Some(b)
    }

    fn authenticate(
        &self,
        req: &Request<ReqBody>,
        cert_user: Option<&UserInfo>,
    ) -> Option<UserInfo> {
        if let Some(h) = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
        {
            if let Some(t) = h.strip_prefix("Bearer ") {
                return self.user_for_token(t.trim());
            }
            return None;
        }
        cert_user.cloned()
    }

    /// Who a bearer token is: a static token, a bootstrap token, the server's join token
    /// or a ServiceAccount token.
    pub fn user_for_token(&self, t: &str) -> Option<UserInfo> {
        self.tokens
            .lookup(t)
            .or_else(|| crate::csr::bootstrap_user(&self.api, t))
            .or_else(|| self.nodes.server_token_user(t))
            .or_else(|| crate::serviceaccount::authenticate(&self.api, &self.issuer, t).ok())
    }

    pub async fn handle(
        self: Arc<Self>,
        req: Request<ReqBody>,
        cert_user: Option<UserInfo>,
    ) -> Response<ResBody> {
        let start = Instant::now();
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        // A joining agent has no credentials yet: it checks the CA against its token's
        // hash, then asks for its certificates (CSRs) with the token as a bearer token.
        if path == "/cacerts" {
            return self.nodes.cacerts();
        }
        if path == "/v1-berth/server-bootstrap" && method == http::Method::GET {
            let auth = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            return self.nodes.server_bootstrap(&self.api, auth).await;
        }
        let anonymous_ok = matches!(
            path.as_str(),
            "/healthz" | "/livez" | "/readyz" | "/version"
        ) || path.starts_with("/healthz/")
            || path.starts_with("/livez/")
            || path.starts_with("/readyz/");
        let user = self.authenticate(&req, cert_user.as_ref());
        let bad_token = user.is_none() && req.headers().contains_key(http::header::AUTHORIZATION);
        if user.is_none() && (!anonymous_ok || bad_token) {
            return to_response(Reply::error(&ApiError::unauthorized()), false);
        }
        let user = match user {
            Some(u) => match self.impersonate(&req, u) {
                Ok(u) => Some(u),
                Err(e) => return to_response(Reply::error(&e), false),
            },
            None => None,
        };
        // A bug that panics answers 500 for this request alone; the connection's other
        // streams and the server go on.
        let routed = std::panic::AssertUnwindSafe(self.route(req, user));
        let (resp, verb, resource) = match futures::FutureExt::catch_unwind(routed).await {
            Ok(r) => r,
            Err(_) => (
                to_response(
                    Reply::error(&ApiError::internal(
                        "the server could not handle the request",
                    )),
                    false,
                ),
                "UNKNOWN".to_string(),
                String::new(),
            ),
        };
        let took = start.elapsed();
        self.metrics
            .request(&verb, &resource, resp.status().as_u16(), took);
        let _ = method;
        resp
    }

    async fn route(
        &self,
        req: Request<ReqBody>,
        user: Option<UserInfo>,
    ) -> (Response<ResBody>, String, String) {
        let path = req.uri().path().trim_end_matches('/').to_string();
        let path = if path.is_empty() {
            "/".to_string()
        } else {
            path
        };
        let query = query_pairs(req.uri().query());
        let accept = req
            .headers()
            .get(http::header::ACCEPT)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let method = req.method().as_str().to_string();
        let reg = &self.api.registry;
        let nonresource = |status: u16, ct: &str, body: Bytes| {
            (full(status, ct, body), method.clone(), String::new())
        };
        let js = |v: &Value| Bytes::from(serde_json::to_vec(v).unwrap_or_default());
        match path.as_str() {
            "/healthz" | "/livez" | "/readyz" => {
                return nonresource(200, "text/plain; charset=utf-8", Bytes::from_static(b"ok"))
            }
            "/version" => return nonresource(200, "application/json", js(&crate::version_info())),
            _ => {}
        }
        // The individual checks Kubernetes lists under the health endpoints.
        for (base, checks) in [
            ("/healthz/", &["ping", "etcd", "log"][..]),
            ("/livez/", &["ping", "etcd", "log"][..]),
            ("/readyz/", &["ping", "etcd", "log", "informer-sync"][..]),
        ] {
            if let Some(check) = path.strip_prefix(base) {
                return if checks.contains(&check) {
                    nonresource(200, "text/plain; charset=utf-8", Bytes::from_static(b"ok"))
                } else {
                    nonresource(
                        404,
                        "text/plain; charset=utf-8",
                        Bytes::from_static(b"404 page not found\n"),
                    )
                };
            }
        }
        let Some(user) = user else {
            return (
                to_response(Reply::error(&ApiError::unauthorized()), false),
                method.clone(),
                String::new(),
            );
        };
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let plain_get = method == "GET";
        // Non-resource paths.
        let nr_attrs = Attributes {
            verb: "get",
            group: "",
            resource: "",
            subresource: "",
            namespace: "",
            name: "",
            path: &path,
        };
        let forbidden_nr = || {
            let e = ApiError::forbidden(format!(
                "forbidden: User \"{}\" cannot get path \"{}\"",
                user.name, path
            ));
            (
                to_response(Reply::error(&e), false),
                method.clone(),
                String::new(),
            )
        };
        let is_resource_path =
            (segs.len() >= 3 && segs[0] == "api") || (segs.len() >= 4 && segs[0] == "apis");
        if !is_resource_path {
            if !self.authorizer.authorize(&user, &nr_attrs) {
                return forbidden_nr();
            }
            if !plain_get {
                let e = ApiError::method_not_allowed(
                    "the server does not allow this method on the requested resource",
                );
                return (
                    to_response(Reply::error(&e), false),
                    method.clone(),
                    String::new(),
                );
            }
            match segs.as_slice() {
                [".well-known", "openid-configuration"] => {
                    return nonresource(200, "application/json", js(&self.issuer.discovery()))
                }
                ["openid", "v1", "jwks"] => {
                    return nonresource(200, "application/jwk-set+json", js(&self.issuer.jwks()))
                }
                ["metrics"] => {
                    return nonresource(
                        200,
                        "text/plain; version=0.0.4",
                        Bytes::from(self.metrics.render()),
                    )
                }
                ["api"] => {
                    if discovery::wants_aggregated(&accept) {
                        return nonresource(
                            200,
                            discovery::AGGREGATED_CT,
                            js(&discovery::aggregated(reg, true)),
                        );
                    }
                    return nonresource(
                        200,
                        "application/json",
                        js(&discovery::api_versions(&self.host)),
                    );
                }
                ["apis"] => {
                    if discovery::wants_aggregated(&accept) {
                        return nonresource(
                            200,
                            discovery::AGGREGATED_CT,
                            js(&discovery::aggregated(reg, false)),
                        );
                    }
                    return nonresource(200, "application/json", js(&discovery::group_list(reg)));
                }
                ["api", v] => {
                    if let Some(l) = discovery::resource_list(reg, "", v) {
                        return nonresource(200, "application/json", js(&l));
                    }
                }
                ["apis", g] => {
                    if let Some(l) = discovery::group(reg, g) {
                        return nonresource(200, "application/json", js(&l));
                    }
                }
                ["apis", g, v] => {
                    if let Some(l) = discovery::resource_list(reg, g, v) {
                        return nonresource(200, "application/json", js(&l));
                    }
                }
                ["openapi", "v2"] => {
                    return nonresource(200, "application/json", js(&openapi::v2(reg)))
                }
                ["openapi", "v3"] => {
                    return nonresource(200, "application/json", js(&openapi::v3_index(reg)))
                }
                ["openapi", "v3", "api", v] => {
                    if let Some(d) = self.document(&path, || openapi::v3_doc(reg, "", v)) {
                        return nonresource(200, "application/json", d);
                    }
                }
                ["openapi", "v3", "apis", g, v] => {
                    if let Some(d) = self.document(&path, || openapi::v3_doc(reg, g, v)) {
                        return nonresource(200, "application/json", d);
                    }
                }
                _ => {}
            }
            let e = ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            );
            return (
                to_response(Reply::error(&e), false),
                method.clone(),
                String::new(),
            );
        }
        // Resource paths: /api/v1/... or /apis/G/V/...
        let (group, version, rest) = if segs[0] == "api" {
            ("", segs[1], &segs[2..])
        } else {
            (segs[1], segs[2], &segs[3..])
        };
        let (ns, plural, name, sub) = if rest.len() >= 3
            && rest[0] == "namespaces"
            && reg
                .find(group, version, rest[2])
                .is_some_and(|k| k.namespaced)
        {
            (
                Some(rest[1].to_string()),
                rest[2],
                rest.get(3).map(|s| s.to_string()),
                rest.get(4).map(|s| s.to_string()),
            )
        } else {
            (
                None,
                rest[0],
                rest.get(1).map(|s| s.to_string()),
                rest.get(2).map(|s| s.to_string()),
            )
        };
        let resource_label = if group.is_empty() {
            plural.to_string()
        } else {
            format!("{plural}.{group}")
        };
        let not_found = || {
            let e = ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            );
            (
                to_response(Reply::error(&e), false),
                method.clone(),
                resource_label.clone(),
            )
        };
        let Some(kind) = reg.find(group, version, plural) else {
            return not_found();
        };
        let proxy_sub = sub.as_deref() == Some("proxy");
        if !proxy_sub && (rest.len() > 5 || (ns.is_none() && rest.len() > 3)) {
            return not_found();
        }
        // `nodes/NAME/proxy/<path on the kubelet>`.
        let proxy_rest = if proxy_sub {
            let skip = if ns.is_some() { 5 } else { 3 };
            rest.get(skip..).map(|r| r.join("/")).unwrap_or_default()
        } else {
            String::new()
        };
        if let Some(s) = &sub {
            let ok = (s == "status" && kind.status)
                || (s == "approval" && kind.kind == "CertificateSigningRequest")
                || (s == "scale" && kind.scale.is_some())
                || kind.node_subresources.contains(&s.as_str())
                || (s == "finalize" && kind.kind == "Namespace" && kind.group.is_empty());
            if !ok {
                return not_found();
            }
        }
        let watch = matches!(
            query
                .iter()
                .find(|(k, _)| k == "watch")
                .map(|(_, v)| v.as_str()),
            Some("true") | Some("1")
        );
        let verb = match (method.as_str(), name.is_some()) {
            ("GET", false) if watch => "watch",
            ("GET", false) => "list",
            ("GET", true) if watch => "watch",
            ("GET", true) => "get",
            ("POST", false) => "create",
            ("POST", true) if sub.is_some() => "create",
            ("PUT", true) => "update",
            ("PATCH", true) => "patch",
            ("DELETE", true) => "delete",
            ("DELETE", false) => "deletecollection",
            _ => {
                let e = ApiError::method_not_allowed(
                    "the server does not allow this method on the requested resource",
                );
                return (
                    to_response(Reply::error(&e), false),
                    method.clone(),
                    resource_label,
                );
            }
        };
        if let Some(sr) = sub.as_deref() {
            let allowed: &[&str] = match sr {
                "status" | "scale" | "approval" => &["get", "update", "patch"],
                "finalize" => &["update"],
                "binding" | "eviction" | "token" => &["create"],
                "log" => &["get"],
                _ => &["get", "create", "update", "patch", "delete"],
            };
            if !allowed.contains(&verb) {
                let e = ApiError::method_not_allowed(
                    "the server does not allow this method on the requested resource",
                );
                return (
                    to_response(Reply::error(&e), false),
                    verb.to_uppercase(),
                    resource_label,
                );
            }
        }
        if kind.review && verb != "create" {
            let e = ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource: {} serves only create",
                kind.qualified()
            ));
            return (
                to_response(Reply::error(&e), false),
                verb.to_uppercase(),
                resource_label,
            );
        }
        if kind.read_only && !matches!(verb, "get" | "list") {
            let e = ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource: {} serves only get and list",
                kind.qualified()
            ));
            return (
                to_response(Reply::error(&e), false),
                verb.to_uppercase(),
                resource_label,
            );
        }
        let attrs = Attributes {
            verb,
            group,
            resource: plural,
            subresource: sub.as_deref().unwrap_or_default(),
            namespace: ns.as_deref().unwrap_or_default(),
            name: name.as_deref().unwrap_or_default(),
            path: &path,
        };
        let metric_verb = verb.to_uppercase();
        if !self.authorizer.authorize(&user, &attrs) {
            let scope = match &ns {
                Some(n) => format!(" in the namespace \"{n}\""),
                None => " at the cluster scope".into(),
            };
            // Kubernetes' text: the object's name when there is one, the subresource
            // with the resource.
            let what = match name.as_deref() {
                Some(n) if !n.is_empty() => format!("{} \"{n}\"", kind.qualified()),
                _ => kind.qualified(),
            };
            let resource = match sub.as_deref() {
                Some(sr) => format!("{plural}/{sr}"),
                None => plural.to_string(),
            };
            let e = ApiError::forbidden(format!("{what} is forbidden: User \"{}\" cannot {verb} resource \"{resource}\" in API group \"{group}\"{scope}", user.name));
            return (
                to_response(Reply::error(&e), false),
                metric_verb,
                resource_label,
            );
        }
        if let Some(s) = sub.as_deref() {
            if kind.node_subresources.contains(&s) && !matches!(s, "binding" | "eviction" | "token")
            {
                let resp = self
                    .nodes
                    .proxy(
                        &self.api,
                        req,
                        &crate::nodes::NodeSub {
                            kind: &kind,
                            namespace: ns.as_deref(),
                            name: name.as_deref().unwrap_or_default(),
                            sub: s,
                            rest: &proxy_rest,
                        },
                    )
                    .await;
                return (resp, metric_verb, resource_label);
            }
        }
        let (output, yaml) = match output_of(&accept) {
            Ok(o) => o,
            Err(e) => {
                return (
                    to_response(Reply::error(&e), false),
                    metric_verb,
                    resource_label,
                )
            }
        };
        if kind.read_only {
            let reply =
                match self
                    .usage
                    .read(&self.api, &kind, ns.as_deref(), name.as_deref(), &query)
                {
                    Ok(items) => Ok(read_only_reply(
                        &kind,
                        name.is_some(),
                        items,
                        output,
                        &query,
                    )),
                    Err(e) => Err(e),
                };
            let reply = reply.unwrap_or_else(|e| Reply::error(&e));
            return (to_response(reply, yaml), metric_verb, resource_label);
        }
        let content_type = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let user_agent = req
            .headers()
            .get(http::header::USER_AGENT)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return (
                    to_response(Reply::error(&ApiError::too_large()), false),
                    metric_verb,
                    resource_label,
                )
            }
        };
        if kind.review {
            let reply = crate::api::decode_body(&content_type, &body)
                .and_then(|v| self.review(&kind, &user, ns.as_deref(), v))
                .map(|v| Reply::json(201, &v))
                .unwrap_or_else(|e| Reply::error(&e));
            return (to_response(reply, yaml), metric_verb, resource_label);
        }
        // RBAC's escalation prevention for what this user writes.
        let guard_user = user.clone();
        let guard = move |k: &crate::kinds::Kind, obj: &mut Value, creating: bool| {
            if creating && k.group == "certificates.k8s.io" {
                crate::csr::stamp(&guard_user, obj);
            }
            node_restriction(&guard_user, k, obj, creating)?;
            self.escalation(&guard_user, k, obj)
        };
        let ctx = Ctx {
            query: &query,
            output,
            user_agent: &user_agent,
            content_type: &content_type,
            body,
            guard: Some(&guard),
        };
        let target = Target {
            kind: kind.clone(),
            namespace: ns.clone(),
            name: name.clone(),
            sub: sub.clone(),
        };
        if kind.namespaced && ns.is_none() && !matches!(verb, "list" | "watch") {
            let e = ApiError::not_found(&kind, name.as_deref().unwrap_or_default());
            return (
                to_response(Reply::error(&e), false),
                metric_verb,
                resource_label,
            );
        }
        let result = match (verb, sub.as_deref()) {
            ("create", Some("binding")) => self.api.bind(&target, &ctx).await,
            ("create", Some("eviction")) => crate::eviction::evict(&self.api, &target, &ctx).await,
            ("create", Some("token")) => {
                crate::serviceaccount::token_request(&self.api, &self.issuer, &user, &target, &ctx)
                    .await
            }
            ("get", _) => self.api.get(&target, &ctx).await,
            ("list", _) => self.api.list(&target, &ctx).await,
            ("watch", _) => {
                self.metrics.watches.fetch_add(1, Ordering::Relaxed);
                let r = self.api.watch(&target, &ctx).await;
                if let Ok(Reply {
                    body: Body::Stream(_),
                    ..
                }) = &r
                {
                } else {
                    self.metrics.watches.fetch_sub(1, Ordering::Relaxed);
                }
                r.map(|mut reply| {
                    if let Body::Stream(rx) = reply.body {
                        reply.body = Body::Stream(watch_guard(rx, self.metrics.clone()));
                    }
                    reply
                })
            }
            ("create", Some(_)) => Err(ApiError::method_not_allowed(
                "the server does not allow this method on the requested resource",
            )),
            ("create", None) => self.api.create(&target, &ctx).await,
            ("update", Some("finalize")) => self.api.update(&target, &ctx).await,
            ("update", _) => self.api.update(&target, &ctx).await,
            ("patch", _) => self.api.patch(&target, &ctx).await,
            ("delete", _) => self.api.delete(&target, &ctx).await,
            ("deletecollection", _) => self.api.delete_collection(&target, &ctx).await,
            _ => Err(ApiError::method_not_allowed(
                "the server does not allow this method on the requested resource",
            )),
        };
        let reply = result.unwrap_or_else(|e| Reply::error(&e));
        (to_response(reply, yaml), metric_verb, resource_label)
    }
}

/// Kubernetes' NodeRestriction admission for what a node writes: the pods it creates are
/// mirror pods of its own static pods, and the Node it registers is itself.
fn node_restriction(
    user: &UserInfo,
    kind: &crate::kinds::Kind,
    obj: &Value,
    creating: bool,
) -> Result<(), ApiError> {
    let Some(node) = user
        .name
        .strip_prefix("system:node:")
        .filter(|_| user.groups.iter().any(|g| g == "system:nodes"))
    else {
        return Ok(());
    };
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match (kind.group.as_str(), kind.kind.as_str()) {
        ("", "Pod") if creating => {
            let mirror = obj
                .pointer("/metadata/annotations/kubernetes.io~1config.mirror")
                .is_some();
            let bound = obj.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node);
            if !mirror || !bound {
                return Err(ApiError::forbidden(format!(
                    "pods \"{name}\" is forbidden: node \"{node}\" can only create mirror pods bound to itself"
                )));
            }
        }
        ("", "Node") if name != node => {
            return Err(ApiError::forbidden(format!(
                "nodes \"{name}\" is forbidden: node \"{node}\" is not allowed to modify node \"{name}\""
            )));
        }
        _ => {}
    }
    Ok(())
}

/// Counts a watch as open until its stream ends.
fn watch_guard(
    mut rx: tokio::sync::mpsc::Receiver<Bytes>,
    metrics: Arc<Metrics>,
) -> tokio::sync::mpsc::Receiver<Bytes> {
    let (tx, out) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if tx.send(b).await.is_err() {
                break;
            }
        }
        metrics.watches.fetch_sub(1, Ordering::Relaxed);
    });
    out
}

/// Accepts TLS connections and serves each with HTTP/2 or HTTP/1.1 as ALPN chose.
pub async fn serve(
    server: Arc<Server>,
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, _peer): (tokio::net::TcpStream, SocketAddr) = match listener.accept().await {
            Ok(c) => c,
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let server = server.clone();
        tokio::spawn(async move {
            let Ok(Ok(tls)) =
                tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp))
                    .await
            else {
                return;
            };
            let cert_user = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| crate::auth::user_from_cert(c));
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let server = server.clone();
                let cu = cert_user.clone();
                let req = req.map(|b| b.map_err(BodyError::new).boxed_unsync());
                async move { Ok::<_, Infallible>(server.handle(req, cu).await) }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder.http2().max_concurrent_streams(1000);
            let _ = builder
                .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                .await;
        });
    }
}
