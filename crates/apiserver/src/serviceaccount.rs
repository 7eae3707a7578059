//! ServiceAccount identity, as Kubernetes' API server gives it:
//!
//! - the token issuer: ES256 JWTs in Kubernetes' claim layout (`iss`, `sub`, `aud`, `exp`,
//!   and the `kubernetes.io` private claims naming the namespace, the account and the
//!   object the token is bound to), signed with `<data-dir>/tls/service-account.key`;
//! - the TokenRequest API (`serviceaccounts/NAME/token`, `kubectl create token`);
//! - authentication of those tokens: signature, issuer, audience, lifetime, and the bound
//!   objects — the account, and the pod when bound to one — still existing with the UIDs
//!   the token names, so a pod's token stops working once the pod is gone;
//! - the ServiceAccount admission: a pod runs as `default` unless it names an account,
//!   the account must exist, and unless automounting is switched off the pod gets the
//!   `kube-api-access-*` projected volume (token, `ca.crt`, `namespace`) at
//!   `/var/run/secrets/kubernetes.io/serviceaccount` in every container;
//! - what every namespace holds: the `default` ServiceAccount and the `kube-root-ca.crt`
//!   ConfigMap, made when the namespace is and made again when deleted;
//! - the issuer's OIDC discovery document and JWKS.

use std::sync::Arc;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::api::{Api, Ctx, Reply, Target};
use crate::auth::UserInfo;
use crate::status::{ApiError, ApiResult, FieldError};

/// Kubernetes' default issuer (and API audience), as kubeadm and k3s configure it.
pub const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// Where every container finds its account's credentials.
pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The ConfigMap with the cluster CA in every namespace.
pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";
/// The kubelet's token lifetime for the projected volume (3600 s plus 7, a marker
/// Kubernetes uses to recognise the default token).
pub const PROJECTED_EXPIRATION: i64 = 3607;

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

fn unb64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
}

/// A name and UID in the `kubernetes.io` claims.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Ref {
    pub name: String,
    pub uid: String,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Private {
    pub namespace: String,
    pub serviceaccount: Ref,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Ref>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Ref>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<Ref>,
}

/// A token's claims, in Kubernetes' layout.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Claims {
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub iss: String,
    #[serde(default)]
    pub jti: String,
    pub nbf: i64,
    pub sub: String,
    #[serde(rename = "kubernetes.io")]
    pub k8s: Private,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

/// Why a token was not accepted (logged by nobody: the client gets 401, as Kubernetes').
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not a JWT")]
    Malformed,
    #[error("signed with {0}, not ES256")]
    Algorithm(String),
    #[error("signed by another key")]
    Signature,
    #[error("issued by {0}")]
    Issuer(String),
    #[error("not for this API server's audiences")]
    Audience,
    #[error("expired")]
    Expired,
    #[error("not valid yet")]
    NotYetValid,
    #[error("{0}")]
    Invalidated(String),
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the service-account key {0}")]
    Pki(#[from] crate::pki::PkiError),
    #[error("the service-account key {0} is not an ECDSA P-256 key")]
    Unreadable(String),
}

/// Signs and checks ServiceAccount tokens.
pub struct Issuer {
    key: ring::signature::EcdsaKeyPair,
    kid: String,
    pub issuer: String,
    /// What a token must be for to authenticate here (Kubernetes' `--api-audiences`).
    pub audiences: Vec<String>,
}

fn now_secs() -> i64 {
    (timefmt::now_nanos() / 1_000_000_000) as i64
}

impl Issuer {
    /// Loads `<dir>/service-account.key`, making it on first start.
    pub fn load_or_create(dir: &std::path::Path, issuer: &str) -> Result<Issuer, KeyError> {
        let path = dir.join("service-account.key");
        let pem = match std::fs::read_to_string(&path) {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let k = rcgen::KeyPair::generate()
                    .map_err(|_| KeyError::Unreadable(path.display().to_string()))?;
                let pem = k.serialize_pem();
                crate::pki::write_secret(&path, pem.as_bytes(), 0o600)?;
                pem
            }
            Err(source) => {
                return Err(KeyError::Pki(crate::pki::PkiError::Io {
                    action: "read",
                    path,
                    source,
                }))
            }
        };
        Issuer::from_pem(&pem, issuer)
            .ok_or_else(|| KeyError::Unreadable(path.display().to_string()))
    }

    pub fn from_pem(pem: &str, issuer: &str) -> Option<Issuer> {
        let kp = rcgen::KeyPair::from_pem(pem).ok()?;
        let key = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &kp.serialize_der(),
            &ring::rand::SystemRandom::new(),
        )
        .ok()?;
        // Kubernetes' key ID: the SHA-256 of the public key's DER (SubjectPublicKeyInfo).
        let spki: String = kp
            .public_key_pem()
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let spki = base64::engine::general_purpose::STANDARD
            .decode(spki)
            .ok()?;
        let kid = b64(ring::digest::digest(&ring::digest::SHA256, &spki).as_ref());
        Some(Issuer {
            key,
            kid,
            issuer: issuer.to_string(),
            audiences: vec![issuer.to_string()],
        })
    }

    /// A signed token with these claims.
    pub fn sign(&self, claims: &Claims) -> String {
        let header = json!({"alg": "ES256", "kid": self.kid});
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(&serde_json::to_vec(claims).unwrap_or_default())
        );
        let sig = self
            .key
            .sign(&ring::rand::SystemRandom::new(), input.as_bytes())
            .expect("ECDSA signing with the system random source");
        format!("{input}.{}", b64(sig.as_ref()))
    }

    /// The claims of a token this issuer signed, if its signature, issuer, audience and
    /// lifetime hold at `now` (bound objects are checked by [`authenticate`]).
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        use ring::signature::KeyPair as _;
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let header: Header = unb64(h)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed)?;
        if header.alg != "ES256" {
            return Err(TokenError::Algorithm(header.alg));
        }
        if header.kid.as_deref().is_some_and(|k| k != self.kid) {
            return Err(TokenError::Signature);
        }
        let sig = unb64(s).ok_or(TokenError::Malformed)?;
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_FIXED,
            self.key.public_key().as_ref(),
        )
        .verify(format!("{h}.{c}").as_bytes(), &sig)
        .map_err(|_| TokenError::Signature)?;
        let claims: Claims = unb64(c)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed)?;
        if claims.iss != self.issuer {
            return Err(TokenError::Issuer(claims.iss));
        }
        if !claims.aud.iter().any(|a| self.audiences.contains(a)) {
            return Err(TokenError::Audience);
        }
        if now >= claims.exp {
            return Err(TokenError::Expired);
        }
        if now < claims.nbf {
            return Err(TokenError::NotYetValid);
        }
        Ok(claims)
    }

    /// `/.well-known/openid-configuration`.
    pub fn discovery(&self) -> Value {
        json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{}/openid/v1/jwks", self.issuer.trim_end_matches('/')),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })
    }

    /// `/openid/v1/jwks`: the public key as a JWK set.
    pub fn jwks(&self) -> Value {
        use ring::signature::KeyPair as _;
        let point = self.key.public_key().as_ref();
        // An uncompressed P-256 point: 0x04, X, Y.
        let (x, y) = point[1..].split_at(32);
        json!({"keys": [{
            "use": "sig", "kty": "EC", "kid": self.kid, "crv": "P-256", "alg": "ES256",
            "x": b64(x), "y": b64(y),
        }]})
    }
}

fn cached(api: &Api, key: &str) -> Option<Value> {
    api.cache
        .get(key)
        .and_then(|raw| serde_json::from_slice(&raw).ok())
}

fn str_at<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or_default()
}

/// The user a ServiceAccount token names, if the token is this issuer's and what it is
/// bound to still exists.
pub fn authenticate(api: &Api, issuer: &Issuer, token: &str) -> Result<UserInfo, TokenError> {
    let now = now_secs();
    let c = issuer.verify(token, now)?;
    let ns = &c.k8s.namespace;
    let sa = cached(
        api,
        &format!(
            "/registry/core/serviceaccounts/{ns}/{}",
            c.k8s.serviceaccount.name
        ),
    )
    .ok_or_else(|| {
        TokenError::Invalidated(format!(
            "serviceaccounts \"{}\" not found",
            c.k8s.serviceaccount.name
        ))
    })?;
    if str_at(&sa, "/metadata/uid") != c.k8s.serviceaccount.uid {
        return Err(TokenError::Invalidated(
            "the ServiceAccount UID has changed (it was deleted and made again)".into(),
        ));
    }
    if let Some(p) = &c.k8s.pod {
        let pod = cached(api, &format!("/registry/core/pods/{ns}/{}", p.name))
            .ok_or_else(|| TokenError::Invalidated(format!("pods \"{}\" not found", p.name)))?;
        if str_at(&pod, "/metadata/uid") != p.uid {
            return Err(TokenError::Invalidated(
                "the Pod UID has changed (it was deleted and made again)".into(),
            ));
        }
        // A pod whose grace period has run out is gone for its tokens.
        let deleting = str_at(&pod, "/metadata/deletionTimestamp");
        if !deleting.is_empty()
            && timefmt::parse_rfc3339(deleting).is_some_and(|t| t / 1_000_000_000 <= now as i128)
        {
            return Err(TokenError::Invalidated("the Pod has been deleted".into()));
        }
    }
    if let Some(s) = &c.k8s.secret {
        let secret = cached(api, &format!("/registry/core/secrets/{ns}/{}", s.name))
            .ok_or_else(|| TokenError::Invalidated(format!("secrets \"{}\" not found", s.name)))?;
        if str_at(&secret, "/metadata/uid") != s.uid {
            return Err(TokenError::Invalidated("the Secret UID has changed".into()));
        }
    }
    Ok(UserInfo {
        name: c.sub.clone(),
        uid: c.k8s.serviceaccount.uid.clone(),
        groups: vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{ns}"),
            "system:authenticated".into(),
        ],
    })
}

/// Kubernetes' bounds on a requested lifetime.
const MIN_EXPIRATION: i64 = 600;
const MAX_EXPIRATION: i64 = 1 << 32;

/// `POST …/serviceaccounts/NAME/token`: a TokenRequest answered with a token. A node may
/// ask only for tokens bound to pods it runs (NodeRestriction).
pub async fn token_request(
    api: &Api,
    issuer: &Issuer,
    user: &UserInfo,
    t: &Target,
    ctx: &Ctx<'_>,
) -> ApiResult<Reply> {
    let body = crate::api::decode_body(ctx.content_type, &ctx.body)?;
    if let Some(k) = body.get("kind").and_then(Value::as_str) {
        if k != "TokenRequest" {
            return Err(ApiError::bad_request(format!(
                "the body is a {k}, not a TokenRequest"
            )));
        }
    }
    let ns = t.namespace.clone().unwrap_or_default();
    let name = t.name.clone().unwrap_or_default();
    let kind = || {
        let mut k = (*t.kind).clone();
        k.kind = "TokenRequest".into();
        k.group = "authentication.k8s.io".into();
        k
    };
    let spec = body.get("spec").cloned().unwrap_or_else(|| json!({}));
    let audiences: Vec<String> = match spec.get("audiences").and_then(Value::as_array) {
        Some(a) if !a.is_empty() => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => issuer.audiences.clone(),
    };
    let expiration = match spec.get("expirationSeconds") {
        None | Some(Value::Null) => 3600,
        Some(v) => v
            .as_i64()
            .ok_or_else(|| ApiError::bad_request("spec.expirationSeconds must be an integer"))?,
    };
    let mut errs = Vec::new();
    if expiration < MIN_EXPIRATION {
        errs.push(FieldError::invalid_raw(
            "spec.expirationSeconds",
            expiration.to_string(),
            "may not specify a duration less than 10 minutes",
        ));
    }
    if expiration > MAX_EXPIRATION {
        errs.push(FieldError::invalid_raw(
            "spec.expirationSeconds",
            expiration.to_string(),
            "may not specify a duration larger than 2^32 seconds",
        ));
    }
    let bound = spec.get("boundObjectRef").filter(|b| !b.is_null());
    if let Some(b) = bound {
        let k = str_at(b, "/kind");
        if !matches!(k, "Pod" | "Secret" | "Node") {
            errs.push(FieldError::not_supported(
                "spec.boundObjectRef.kind",
                k,
                &["Pod", "Secret", "Node"],
            ));
        }
        if str_at(b, "/name").is_empty() {
            errs.push(FieldError::required("spec.boundObjectRef.name", ""));
        }
    }
    if !errs.is_empty() {
        return Err(ApiError::invalid(&kind(), &name, errs));
    }
    let sa_key = t.kind.key(Some(&ns), &name);
    let sa: Value = match api.store.get(&sa_key, 0).await? {
        Some(kv) => serde_json::from_slice(&kv.value).unwrap_or_default(),
        None => return Err(ApiError::not_found(&t.kind, &name)),
    };
    let node_user = user
        .groups
        .iter()
        .any(|g| g == "system:nodes")
        .then(|| user.name.strip_prefix("system:node:"))
        .flatten();
    let mut private = Private {
        namespace: ns.clone(),
        serviceaccount: Ref {
            name: name.clone(),
            uid: str_at(&sa, "/metadata/uid").to_string(),
        },
        pod: None,
        secret: None,
        node: None,
    };
    let mut bound_out = Value::Null;
    if let Some(b) = bound {
        let (bk, bn, buid) = (str_at(b, "/kind"), str_at(b, "/name"), str_at(b, "/uid"));
        let key = match bk {
            "Pod" => format!("/registry/core/pods/{ns}/{bn}"),
            "Secret" => format!("/registry/core/secrets/{ns}/{bn}"),
            _ => format!("/registry/core/nodes/{bn}"),
        };
        let plural = match bk {
            "Pod" => "pods",
            "Secret" => "secrets",
            _ => "nodes",
        };
        let obj: Value = match api.store.get(&key, 0).await? {
            Some(kv) => serde_json::from_slice(&kv.value).unwrap_or_default(),
            None => return Err(ApiError::not_found_gr("", plural, bn)),
        };
        let uid = str_at(&obj, "/metadata/uid").to_string();
        if !buid.is_empty() && buid != uid {
            return Err(ApiError::new(409, "Conflict", format!(
                "the UID in the bound object reference ({buid}) does not match the UID in record. The object might have been deleted and then recreated"
            )));
        }
        let r = Ref {
            name: bn.to_string(),
            uid: uid.clone(),
        };
        match bk {
            "Pod" => {
                let pod_sa = str_at(&obj, "/spec/serviceAccountName");
                if pod_sa != name {
                    return Err(ApiError::bad_request(format!(
                        "cannot bind token for serviceaccount \"{name}\" to pod running with different serviceaccount name."
                    )));
                }
                let node = str_at(&obj, "/spec/nodeName");
                if let Some(n) = node_user {
                    if node != n {
                        return Err(ApiError::forbidden(format!(
                            "node \"{n}\" can only create tokens for pods bound to it; pod {ns}/{bn} is on \"{node}\""
                        )));
                    }
                }
                if !node.is_empty() {
                    let node_uid = cached(api, &format!("/registry/core/nodes/{node}"))
                        .map(|n| str_at(&n, "/metadata/uid").to_string())
                        .unwrap_or_default();
                    private.node = Some(Ref {
                        name: node.to_string(),
                        uid: node_uid,
                    });
                }
                private.pod = Some(r);
            }
            "Secret" => private.secret = Some(r),
            _ => private.node = Some(r),
        }
        bound_out = json!({"kind": bk, "apiVersion": "v1", "name": bn, "uid": uid});
    }
    if node_user.is_some() && private.pod.is_none() {
        return Err(ApiError::forbidden(
            "a node may only request tokens bound to a pod it runs",
        ));
    }
    let now = now_secs();
    let claims = Claims {
        aud: audiences.clone(),
        exp: now + expiration,
        iat: now,
        iss: issuer.issuer.clone(),
        jti: crate::api::new_uid(),
        nbf: now,
        sub: format!("system:serviceaccount:{ns}:{name}"),
        k8s: private,
    };
    let token = issuer.sign(&claims);
    let mut spec_out = json!({"audiences": audiences, "expirationSeconds": expiration});
    spec_out["boundObjectRef"] = bound_out;
    let out = json!({
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": null},
        "spec": spec_out,
        "status": {"token": token, "expirationTimestamp": crate::time_secs(now + expiration)},
    });
    Ok(Reply::json(201, &out))
}

/// The ServiceAccount admission for a pod being created: the account defaulted and
/// checked, and its token volume added unless automounting is off.
pub async fn admit_pod(api: &Api, pod: &mut Value) -> ApiResult<()> {
    // Mirror pods (a node's static pods) have no account, as in Kubernetes.
    if pod
        .pointer("/metadata/annotations/kubernetes.io~1config.mirror")
        .is_some()
    {
        return Ok(());
    }
    let ns = str_at(pod, "/metadata/namespace").to_string();
    let pod_name = str_at(pod, "/metadata/name").to_string();
    let mut name = str_at(pod, "/spec/serviceAccountName").to_string();
    if name.is_empty() {
        name = str_at(pod, "/spec/serviceAccount").to_string();
    }
    if name.is_empty() {
        name = "default".into();
    }
    if let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) {
        spec.insert("serviceAccountName".into(), json!(name));
        spec.insert("serviceAccount".into(), json!(name));
    }
    let key = format!("/registry/core/serviceaccounts/{ns}/{name}");
    // The default account is made with its namespace: wait briefly for it, as
    // Kubernetes' admission retries for it.
    let mut sa = cached(api, &key);
    let tries = if name == "default" { 20 } else { 1 };
    for _ in 1..tries {
        if sa.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        sa = cached(api, &key);
    }
    let Some(sa) = sa else {
        return Err(ApiError::forbidden(format!(
            "pods \"{pod_name}\" is forbidden: error looking up service account {ns}/{name}: serviceaccount \"{name}\" not found"
        )));
    };
    let automount = pod
        .pointer("/spec/automountServiceAccountToken")
        .and_then(Value::as_bool)
        .or_else(|| {
            sa.get("automountServiceAccountToken")
                .and_then(Value::as_bool)
        })
        .unwrap_or(true);
    if !automount {
        return Ok(());
    }
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    // A pod that mounts something at the path itself keeps it.
    let mounts_own = ["initContainers", "containers"].iter().any(|list| {
        spec.get(*list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|c| {
                c["volumeMounts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|m| m["mountPath"].as_str() == Some(MOUNT_PATH))
            })
    });
    if mounts_own {
        return Ok(());
    }
    let vol_name = format!("kube-api-access-{}", crate::api::random_suffix(5));
    let volume = json!({
        "name": vol_name,
        "projected": {
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": PROJECTED_EXPIRATION, "path": "token"}},
                {"configMap": {"name": ROOT_CA_CONFIGMAP, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ],
        },
    });
    match spec.get_mut("volumes").and_then(Value::as_array_mut) {
        Some(v) => v.push(volume),
        None => {
            spec.insert("volumes".into(), json!([volume]));
        }
    }
    for list in ["initContainers", "containers"] {
        for c in spec
            .get_mut(list)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let Some(c) = c.as_object_mut() else { continue };
            let mount = json!({"name": vol_name, "readOnly": true, "mountPath": MOUNT_PATH});
            match c.get_mut("volumeMounts").and_then(Value::as_array_mut) {
                Some(m) => m.push(mount),
                None => {
                    c.insert("volumeMounts".into(), json!([mount]));
                }
            }
        }
    }
    Ok(())
}

/// Keeps the `default` ServiceAccount and the `kube-root-ca.crt` ConfigMap in every
/// active namespace (Kubernetes' serviceaccount and root-ca-cert-publisher controllers):
/// made when a namespace appears or when either is deleted, the ConfigMap corrected when
/// its CA differs.
pub async fn follow_namespaces(api: Arc<Api>, ca_pem: String) {
    const PREFIX: &str = "/registry/core/";
    loop {
        let Ok(mut sub) = api.cache.subscribe("/registry/core/namespaces/", None) else {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            continue;
        };
        for e in &sub.initial {
            if let Some(ns) = e.key.strip_prefix("/registry/core/namespaces/") {
                ensure_namespace(&api, ns, &ca_pem).await;
            }
        }
        loop {
            let e = match sub.rx.recv().await {
                Ok(e) => e,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                Err(_) => break,
            };
            if !e.key.starts_with(PREFIX) || e.kind == "DELETED" && e.key.contains("/namespaces/") {
                continue;
            }
            let rest = &e.key[PREFIX.len()..];
            let ns = match rest.split('/').collect::<Vec<_>>().as_slice() {
                ["namespaces", ns] => ns.to_string(),
                ["serviceaccounts", ns, "default"] if e.kind == "DELETED" => ns.to_string(),
                ["configmaps", ns, ROOT_CA_CONFIGMAP] if e.kind != "ADDED" => ns.to_string(),
                _ => continue,
            };
            ensure_namespace(&api, &ns, &ca_pem).await;
        }
    }
}

async fn ensure_namespace(api: &Api, ns: &str, ca_pem: &str) {
    let Some(n) = cached(api, &format!("/registry/core/namespaces/{ns}")) else {
        return;
    };
    if n.pointer("/metadata/deletionTimestamp").is_some() {
        return;
    }
    let meta = |name: &str| {
        json!({"name": name, "namespace": ns, "uid": crate::api::new_uid(),
               "creationTimestamp": crate::now()})
    };
    let r = crate::namespaces::ensure(
        api,
        &format!("/registry/core/serviceaccounts/{ns}/default"),
        || json!({"kind": "ServiceAccount", "apiVersion": "v1", "metadata": meta("default")}),
    )
    .await;
    if let Err(e) = r {
        eprintln!("berth server: the default ServiceAccount of {ns}: {e}");
    }
    let key = format!("/registry/core/configmaps/{ns}/{ROOT_CA_CONFIGMAP}");
    let make = || {
        json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": meta(ROOT_CA_CONFIGMAP),
               "data": {"ca.crt": ca_pem}})
    };
    match api.store.get(&key, 0).await {
        Ok(None) => {
            let _ = crate::namespaces::ensure(api, &key, make).await;
        }
        Ok(Some(kv)) => {
            let mut cm: Value = serde_json::from_slice(&kv.value).unwrap_or_default();
            if cm.pointer("/data/ca.crt").and_then(Value::as_str) != Some(ca_pem) {
                cm["data"] = json!({"ca.crt": ca_pem});
                let _ = api
                    .store
                    .update(
                        &key,
                        serde_json::to_vec(&cm).unwrap_or_default(),
                        kv.mod_revision,
                    )
                    .await;
            }
        }
        Err(e) => eprintln!("berth server: the {ROOT_CA_CONFIGMAP} ConfigMap of {ns}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer() -> Issuer {
        let k = rcgen::KeyPair::generate().unwrap();
        Issuer::from_pem(&k.serialize_pem(), DEFAULT_ISSUER).unwrap()
    }

    fn claims(now: i64) -> Claims {
        Claims {
            aud: vec![DEFAULT_ISSUER.into()],
            exp: now + 600,
            iat: now,
            iss: DEFAULT_ISSUER.into(),
            jti: "j".into(),
            nbf: now,
            sub: "system:serviceaccount:ns:sa".into(),
            k8s: Private {
                namespace: "ns".into(),
                serviceaccount: Ref {
                    name: "sa".into(),
                    uid: "u".into(),
                },
                pod: None,
                secret: None,
                node: None,
            },
        }
    }

    #[test]
    fn signed_tokens_verify_and_nothing_else_does() {
        let i = issuer();
        let now = 1_000_000;
        let t = i.sign(&claims(now));
        assert_eq!(
            i.verify(&t, now).unwrap().sub,
            "system:serviceaccount:ns:sa"
        );
        assert_eq!(i.verify(&t, now + 600).unwrap_err(), TokenError::Expired);
        assert_eq!(i.verify(&t, now - 1).unwrap_err(), TokenError::NotYetValid);
        // Another key's token.
        assert_eq!(issuer().verify(&t, now).unwrap_err(), TokenError::Signature);
        // A changed claim.
        let parts: Vec<&str> = t.split('.').collect();
        let mut c = claims(now);
        c.sub = "system:serviceaccount:kube-system:admin".into();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            b64(&serde_json::to_vec(&c).unwrap()),
            parts[2]
        );
        assert_eq!(i.verify(&forged, now).unwrap_err(), TokenError::Signature);
        // alg none.
        let none = format!("{}.{}.", b64(br#"{"alg":"none"}"#), parts[1]);
        assert_eq!(
            i.verify(&none, now).unwrap_err(),
            TokenError::Algorithm("none".into())
        );
        // Another audience.
        let mut c = claims(now);
        c.aud = vec!["vault".into()];
        assert_eq!(
            i.verify(&i.sign(&c), now).unwrap_err(),
            TokenError::Audience
        );
        for junk in ["", "a.b", "a.b.c", "...", "x.y.z.w", &"A".repeat(10_000)] {
            assert!(i.verify(junk, now).is_err(), "{junk}");
        }
    }

    /// Mutated tokens (bits flipped, bytes inserted, dropped, cut) never panic, and none
    /// verifies with other claims than the token's own.
    #[test]
    fn mutated_tokens_are_refused_without_panicking() {
        let i = issuer();
        let now = 1_000_000;
        let good = i.sign(&claims(now));
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n.max(1) as u64) as usize
        };
        for _ in 0..3000 {
            let mut b = good.clone().into_bytes();
            for _ in 0..=next(3) {
                if b.is_empty() {
                    break;
                }
                let at = next(b.len());
                match next(4) {
                    0 => b[at] ^= 1 << next(8),
                    1 => b.insert(at, b"A.=-_{}\"\0"[next(9)]),
                    2 => {
                        b.remove(at);
                    }
                    _ => b.truncate(at),
                }
            }
            let t = String::from_utf8_lossy(&b);
            if let Ok(c) = i.verify(&t, now) {
                assert_eq!(c.sub, "system:serviceaccount:ns:sa");
                assert_eq!(c.exp, now + 600);
            }
        }
    }

    #[test]
    fn the_jwks_holds_the_key_that_verifies() {
        let i = issuer();
        let jwks = i.jwks();
        let k = &jwks["keys"][0];
        let x = unb64(k["x"].as_str().unwrap()).unwrap();
        let y = unb64(k["y"].as_str().unwrap()).unwrap();
        let mut point = vec![4u8];
        point.extend(x);
        point.extend(y);
        let t = i.sign(&claims(5));
        let (input, sig) = t.rsplit_once('.').unwrap();
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, point)
            .verify(input.as_bytes(), &unb64(sig).unwrap())
            .unwrap();
        let header: Value =
            serde_json::from_slice(&unb64(t.split('.').next().unwrap()).unwrap()).unwrap();
        assert_eq!(header["kid"], k["kid"]);
    }
}
