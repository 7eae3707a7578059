//! certificates.k8s.io/v1 CertificateSigningRequests, and bootstrap tokens:
//!
//! - on create the server records who asks (`spec.username`, `uid`, `groups`), whatever
//!   the body said, and checks the request: a PEM `CERTIFICATE REQUEST` whose signature
//!   verifies (proof of the key), a signer, usages, a lifetime of at least ten minutes;
//! - a task of the server approves what Kubernetes' csrapproving controller approves for
//!   kubelets — a client certificate `system:node:<name>` in `system:nodes` asked by a
//!   bootstrapper (a valid bootstrap token) or by that node itself (renewal) — and the
//!   kubelet's serving certificate asked by the node it names, then signs approved
//!   requests of the `kubernetes.io/kube-apiserver-client[-kubelet]` and
//!   `kubernetes.io/kubelet-serving` signers with the cluster CA (csrsigning), for
//!   `spec.expirationSeconds` or `--cluster-signing-duration`;
//! - `kubectl certificate approve|deny` write the `approval` subresource;
//! - bootstrap tokens are Kubernetes' Secrets `kube-system/bootstrap-token-<id>` of type
//!   `bootstrap.kubernetes.io/token`; a bearer token `<id>.<secret>` authenticates as
//!   `system:bootstrap:<id>` in `system:bootstrappers` (and its `auth-extra-groups`)
//!   while the Secret says `usage-bootstrap-authentication: "true"` and its `expiration`
//!   has not passed.

use std::sync::Arc;

use base64::Engine as _;
use serde_json::{json, Value};

use crate::api::Api;
use crate::auth::UserInfo;
use crate::status::FieldError;

const PREFIX: &str = "/registry/certificates.k8s.io/certificatesigningrequests/";
pub const CLIENT_KUBELET: &str = "kubernetes.io/kube-apiserver-client-kubelet";
pub const CLIENT: &str = "kubernetes.io/kube-apiserver-client";
pub const SERVING: &str = "kubernetes.io/kubelet-serving";

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// Records the requester in a CertificateSigningRequest being created.
pub fn stamp(user: &UserInfo, obj: &mut Value) {
    if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
        spec.insert("username".into(), json!(user.name));
        spec.insert("uid".into(), json!(user.uid));
        spec.insert("groups".into(), json!(user.groups));
        spec.remove("extra");
    }
}

/// What a request asks for, read from its PEM.
pub struct Asked {
    pub pem: String,
    pub cn: String,
    pub orgs: Vec<String>,
    pub sans: Vec<String>,
}

pub fn parse_request(obj: &Value) -> Result<Asked, String> {
    let raw = obj
        .pointer("/spec/request")
        .and_then(Value::as_str)
        .ok_or("spec.request: Required value")?;
    let pem = b64()
        .decode(raw)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or("spec.request: not base64 of a PEM block")?;
    if !pem.contains("-----BEGIN CERTIFICATE REQUEST-----") {
        return Err("spec.request: not a PEM \"CERTIFICATE REQUEST\" block".into());
    }
    let csr = rcgen::CertificateSigningRequestParams::from_pem(&pem)
        .map_err(|e| format!("spec.request: not a valid certificate request: {e}"))?;
    let text = |v: &rcgen::DnValue| match v {
        rcgen::DnValue::Utf8String(s) => s.clone(),
        rcgen::DnValue::PrintableString(s) => s.as_str().to_string(),
        rcgen::DnValue::Ia5String(s) => s.as_str().to_string(),
        rcgen::DnValue::TeletexString(s) => s.as_str().to_string(),
        other => format!("{other:?}"),
    };
    let mut cn = String::new();
    let mut orgs = Vec::new();
    for (t, v) in csr.params.distinguished_name.iter() {
        match t {
            rcgen::DnType::CommonName => cn = text(v),
            rcgen::DnType::OrganizationName => orgs.push(text(v)),
            _ => {}
        }
    }
    let sans = csr
        .params
        .subject_alt_names
        .iter()
        .map(|s| match s {
            rcgen::SanType::DnsName(d) => d.as_str().to_string(),
            rcgen::SanType::IpAddress(ip) => ip.to_string(),
            other => format!("{other:?}"),
        })
        .collect();
    Ok(Asked {
        pem,
        cn,
        orgs,
        sans,
    })
}

/// Kubernetes' validation of a request (the parts that are not the schema's).
pub fn validate(obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if let Err(e) = parse_request(obj) {
        let (f, d) = e.split_once(": ").unwrap_or(("spec.request", e.as_str()));
        errs.push(FieldError::invalid(f, "", d));
    }
    let signer = obj
        .pointer("/spec/signerName")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if signer.is_empty() {
        errs.push(FieldError::required("spec.signerName", ""));
    } else if !signer.contains('/') {
        errs.push(FieldError::invalid(
            "spec.signerName",
            signer,
            "must be a fully qualified domain and path of the form 'example.com/signer-name'",
        ));
    }
    match obj.pointer("/spec/usages").and_then(Value::as_array) {
        Some(u) if !u.is_empty() => {}
        _ => errs.push(FieldError::required(
            "spec.usages",
            "usages must be provided",
        )),
    }
    if let Some(s) = obj
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_i64)
    {
        if s < 600 {
            errs.push(FieldError::invalid_raw(
                "spec.expirationSeconds",
                s.to_string(),
                "may not specify a duration less than 600 seconds (10 minutes)",
            ));
        }
    }
    errs
}

fn has_condition(csr: &Value, t: &str) -> bool {
    csr.pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| c["type"] == t)
}

fn strs(v: &Value, p: &str) -> Vec<String> {
    v.pointer(p)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

/// Whether the csrapproving rules approve this request: (reason, message).
fn auto_approval(csr: &Value, asked: &Asked) -> Option<&'static str> {
    let signer = csr.pointer("/spec/signerName").and_then(Value::as_str)?;
    let user = csr.pointer("/spec/username").and_then(Value::as_str)?;
    let groups = strs(csr, "/spec/groups");
    let node = asked.cn.strip_prefix("system:node:")?;
    if node.is_empty() || asked.orgs != ["system:nodes"] {
        return None;
    }
    match signer {
        CLIENT_KUBELET if asked.sans.is_empty() => {
            if user == asked.cn {
                Some("Auto approving self kubelet client certificate after SubjectAccessReview.")
            } else if groups.iter().any(|g| g == "system:bootstrappers") {
                Some("Auto approving kubelet client certificate after SubjectAccessReview.")
            } else {
                None
            }
        }
        // The node's own serving certificate, for names and addresses only.
        SERVING if user == asked.cn => Some("Auto approving kubelet serving certificate."),
        _ => None,
    }
}

/// Approves and signs CertificateSigningRequests as they come.
pub async fn follow(
    api: Arc<Api>,
    pki: Arc<crate::pki::Pki>,
    signing_duration: std::time::Duration,
) {
    loop {
        let Ok(mut sub) = api.cache.subscribe(PREFIX, None) else {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            continue;
        };
        let mut keys: Vec<String> = sub.initial.iter().map(|e| e.key.clone()).collect();
        loop {
            for k in std::mem::take(&mut keys) {
                reconcile(&api, &pki, signing_duration, &k).await;
            }
            match sub.rx.recv().await {
                Ok(e) if e.key.starts_with(PREFIX) && e.kind != "DELETED" => {
                    keys.push(e.key.clone())
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    keys = api
                        .cache
                        .list(PREFIX)
                        .1
                        .into_iter()
                        .map(|(k, _, _)| k)
                        .collect();
                }
                Err(_) => break,
            }
        }
    }
}

async fn reconcile(api: &Api, pki: &crate::pki::Pki, duration: std::time::Duration, key: &str) {
    for _attempt in 0..5 {
        let Ok(Some(kv)) = api.store.get(key, 0).await else {
            return;
        };
        let mut csr: Value = serde_json::from_slice(&kv.value).unwrap_or_default();
        if csr
            .pointer("/status/certificate")
            .is_some_and(|c| !c.is_null())
            || has_condition(&csr, "Denied")
            || has_condition(&csr, "Failed")
        {
            return;
        }
        let Ok(asked) = parse_request(&csr) else {
            return;
        };
        let now = crate::now();
        let approved = has_condition(&csr, "Approved");
        if !approved {
            let Some(message) = auto_approval(&csr, &asked) else {
                return;
            };
            push_condition(
                &mut csr,
                json!({"type": "Approved", "status": "True", "reason": "AutoApproved",
                "message": message, "lastUpdateTime": now, "lastTransitionTime": now}),
            );
        } else {
            let signer = csr
                .pointer("/spec/signerName")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if ![CLIENT_KUBELET, CLIENT, SERVING].contains(&signer.as_str()) {
                return;
            }
            let secs = csr
                .pointer("/spec/expirationSeconds")
                .and_then(Value::as_i64)
                .map(|s| std::time::Duration::from_secs(s as u64))
                .unwrap_or(duration)
                .min(duration);
            let orgs: Vec<&str> = asked.orgs.iter().map(String::as_str).collect();
            let sans = if signer == SERVING {
                asked.sans.clone()
            } else {
                Vec::new()
            };
            match pki.sign_csr_for(&asked.pem, &asked.cn, &orgs, &sans, signer == SERVING, secs) {
                Ok(cert) => {
                    csr["status"]["certificate"] = json!(b64().encode(cert));
                }
                Err(e) => push_condition(
                    &mut csr,
                    json!({"type": "Failed", "status": "True",
                    "reason": "SigningError", "message": e.to_string(),
                    "lastUpdateTime": now, "lastTransitionTime": now}),
                ),
            }
        }
        match api
            .store
            .update(
                key,
                serde_json::to_vec(&csr).unwrap_or_default(),
                kv.mod_revision,
            )
            .await
        {
            Err(store::StoreError::Conflict { .. }) => continue,
            _ => return,
        }
    }
}

fn push_condition(csr: &mut Value, c: Value) {
    if !csr["status"]["conditions"].is_array() {
        csr["status"]["conditions"] = json!([]);
    }
    if let Some(a) = csr["status"]["conditions"].as_array_mut() {
        a.push(c);
    }
}

/// The user a bootstrap token `<id>.<secret>` names, if its Secret allows it now.
pub fn bootstrap_user(api: &Api, token: &str) -> Option<UserInfo> {
    let (id, secret) = token.split_once('.')?;
    let ok = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    if !ok(id, 6) || !ok(secret, 16) {
        return None;
    }
    let raw = api.cache.get(&format!(
        "/registry/core/secrets/kube-system/bootstrap-token-{id}"
    ))?;
    let s: Value = serde_json::from_slice(&raw).ok()?;
    if s["type"] != "bootstrap.kubernetes.io/token" {
        return None;
    }
    let field = |k: &str| -> Option<String> {
        s["data"][k]
            .as_str()
            .and_then(|v| b64().decode(v).ok())
            .and_then(|b| String::from_utf8(b).ok())
    };
    if field("token-id")? != id {
        return None;
    }
    let stored = field("token-secret")?;
    let same = crate::nodes::same_secret(stored.as_bytes(), secret.as_bytes());
    if !same || field("usage-bootstrap-authentication").as_deref() != Some("true") {
        return None;
    }
    if let Some(exp) = field("expiration") {
        let t = timefmt::parse_rfc3339(&exp)?;
        if t <= timefmt::now_nanos() {
            return None;
        }
    }
    let mut groups = vec!["system:bootstrappers".to_string()];
    for g in field("auth-extra-groups").unwrap_or_default().split(',') {
        let g = g.trim();
        if g.starts_with("system:bootstrappers:") && !groups.iter().any(|x| x == g) {
            groups.push(g.to_string());
        }
    }
    groups.push("system:authenticated".into());
    Some(UserInfo {
        name: format!("system:bootstrap:{id}"),
        uid: String::new(),
        groups,
    })
}
