//! Signed images only: the ImageSignaturePolicy kind (`security.berth.io/v1`, cluster
//! scoped, served as a CRD the server installs) and its admission. A pod whose image a
//! policy covers (image globs, and a namespace selector) is admitted only if the image's
//! digest — the tag resolved with the pod's pull secrets — carries a signature by one of
//! the policy's keys, in either cosign format (`signing`). The digests verified are
//! recorded in the pod's `security.berth.io/verified-images` annotation, not written into
//! its spec (GitOps tools see no drift); the agent runs those digests and verifies them
//! again before the first container starts. Verdicts are cached per digest and policy
//! version; tags are resolved on every admission, so a tag moved to an unsigned digest
//! is refused at once. Warn-mode policies admit with a warning, and a workload's pod
//! template is checked as a warning when it is written.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::api::Api;
use crate::kinds::Kind;
use crate::status::{ApiError, ApiResult, FieldError};

pub const GROUP: &str = "security.berth.io";
pub const PLURAL: &str = "imagesignaturepolicies";
pub const ANNOTATION: &str = "security.berth.io/verified-images";
const CRD_KEY: &str =
    "/registry/apiextensions.k8s.io/customresourcedefinitions/imagesignaturepolicies.security.berth.io";
/// How long a verdict stands before the signatures are fetched again.
const VERDICT_TTL: Duration = Duration::from_secs(300);
/// How long admission waits for a registry.
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(10);

/// The CRD of the policy kind, made at start.
fn crd() -> Value {
    let spec_schema = json!({"type": "object", "required": ["images", "keys"], "properties": {
        "images": {"type": "array", "minItems": 1,
            "description": "Repository globs (`*` within a path segment, `**` across), e.g. registry.example:5000/app/*",
            "items": {"type": "string", "minLength": 1}},
        "keys": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["name", "publicKey"], "properties": {
                "name": {"type": "string", "minLength": 1},
                "publicKey": {"type": "string", "description": "ECDSA P-256 public key, PEM"}}}},
        "mode": {"type": "string", "enum": ["enforce", "warn"], "default": "enforce"},
        "namespaceSelector": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
    }});
    let schema = json!({
        "type": "object",
        "description": "Which images must be signed, and by which cosign public keys.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"}, "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema,
        },
    });
    let columns = json!([
        {"name": "Mode", "type": "string", "jsonPath": ".spec.mode"},
        {"name": "Images", "type": "string", "jsonPath": ".spec.images"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]);
    let names = json!({"plural": PLURAL, "singular": "imagesignaturepolicy",
        "kind": "ImageSignaturePolicy", "listKind": "ImageSignaturePolicyList",
        "shortNames": ["isp"]});
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{PLURAL}.{GROUP}"), "uid": crate::api::new_uid(),
                     "creationTimestamp": crate::now(), "generation": 1,
                     "labels": {"app.kubernetes.io/managed-by": "berth"}},
        "spec": {
            "group": GROUP,
            "scope": "Cluster",
            "names": names,
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "additionalPrinterColumns": columns,
                "schema": {"openAPIV3Schema": schema},
            }],
        },
        "status": {},
    })
}

/// Installs the policy kind (once; an existing definition is kept).
pub async fn ensure_kind(api: &Api) -> Result<(), store::StoreError> {
    crate::namespaces::ensure(api, CRD_KEY, crd).await
}

/// The semantic checks the schema cannot make: keys that parse, and the rest of
/// [`signing::Policy::from_object`].
pub fn validate(kind: &Kind, obj: &Value) -> Vec<FieldError> {
    if kind.group != GROUP || kind.plural != PLURAL {
        return Vec::new();
    }
    match signing::Policy::from_object(obj) {
        Ok(_) => Vec::new(),
        Err(e) => {
            let (field, detail) = e.split_once(": ").unwrap_or(("spec", e.as_str()));
            // The value at the field, for Kubernetes' `Invalid value: "…"`.
            let pointer = format!("/{}", field.replace(['.', '['], "/").replace(']', ""));
            let value = match obj.pointer(&pointer) {
                Some(Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
                None => String::new(),
            };
            vec![FieldError::invalid(field, value, detail)]
        }
    }
}

type Verdict = Result<signing::Verified, String>;

/// The admission step, with its verdict cache and the registries it may reach over http.
pub struct ImagePolicies {
    verdicts: Mutex<HashMap<(String, String), (Instant, Verdict)>>,
    insecure: Vec<String>,
}

fn labels_of(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
        .collect()
}

/// The pod spec (and whether the object is a Pod) of what admission looks at.
fn pod_spec<'a>(kind: &Kind, obj: &'a Value) -> Option<(&'a Value, bool)> {
    match (kind.group.as_str(), kind.kind.as_str()) {
        ("", "Pod") => obj.get("spec").map(|s| (s, true)),
        ("batch", "CronJob") => obj
            .pointer("/spec/jobTemplate/spec/template/spec")
            .map(|s| (s, false)),
        ("", "ReplicationController" | "PodTemplate")
        | ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet")
        | ("batch", "Job") => obj
            .pointer("/spec/template/spec")
            .or_else(|| obj.pointer("/template/spec"))
            .map(|s| (s, false)),
        _ => None,
    }
}

impl ImagePolicies {
    pub fn new(insecure: Vec<String>) -> ImagePolicies {
        ImagePolicies {
            verdicts: Mutex::new(HashMap::new()),
            insecure,
        }
    }

    /// The policies (with their resourceVersion-free identity: name and spec) from the cache.
    fn policies(api: &Api) -> Vec<(signing::Policy, String)> {
        api.cache
            .list(&format!("/registry/{GROUP}/{PLURAL}/"))
            .1
            .iter()
            .filter_map(|(_, _, raw)| serde_json::from_slice::<Value>(raw).ok())
            .filter_map(|v| {
                let id = format!("{}:{}", v["metadata"]["uid"], v["spec"]);
                signing::Policy::from_object(&v).ok().map(|p| (p, id))
            })
            .collect()
    }

    /// Checks a pod (or a workload's template) being created.
    pub async fn admit(
        &self,
        api: &Api,
        kind: &Kind,
        obj: &mut Value,
        warnings: &mut Vec<String>,
    ) -> ApiResult<()> {
        let Some((spec, is_pod)) = pod_spec(kind, obj) else {
            return Ok(());
        };
        let policies = Self::policies(api);
        if policies.is_empty() {
            return Ok(());
        }
        let ns = obj
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let ns_labels = labels_of(
            api.cache
                .get(&format!("/registry/core/namespaces/{ns}"))
                .and_then(|raw| serde_json::from_slice::<Value>(&raw).ok())
                .as_ref()
                .and_then(|n| n.pointer("/metadata/labels")),
        );
        let containers: Vec<(String, String)> =
            ["initContainers", "containers", "ephemeralContainers"]
                .iter()
                .flat_map(|k| spec[*k].as_array().into_iter().flatten())
                .map(|c| {
                    (
                        c["name"].as_str().unwrap_or_default().to_string(),
                        c["image"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect();
        let pull_secrets = self.pull_secrets(api, &ns, spec);
        let pod_name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let mut verified: BTreeMap<String, String> = BTreeMap::new();
        for (cname, image) in containers {
            let covering: Vec<&(signing::Policy, String)> = policies
                .iter()
                .filter(|(p, _)| p.covers(&image, &ns_labels))
                .collect();
            if covering.is_empty() {
                continue;
            }
            let outcome = self.check(&image, &pull_secrets, &covering).await;
            for (policy, verdict) in outcome.verdicts {
                let Err(reason) = verdict else { continue };
                let text = format!(
                    "image \"{image}\" is refused by ImageSignaturePolicy \"{}\": {reason}",
                    policy.name
                );
                match (policy.mode, is_pod) {
                    (signing::Mode::Enforce, true) => {
                        return Err(ApiError::forbidden(format!(
                            "pods \"{pod_name}\" is forbidden: {text}"
                        )))
                    }
                    (signing::Mode::Enforce, false) => {
                        warnings.push(format!("pods of this template would be refused: {text}"))
                    }
                    (signing::Mode::Warn, _) => warnings.push(format!(
                        "image \"{image}\" is not signed as ImageSignaturePolicy \"{}\" requires (warn mode): {reason}",
                        policy.name
                    )),
                }
            }
            if let Some(d) = outcome.digest {
                let repo = image::reference::Reference::parse(&image)
                    .map(|r| r.repository())
                    .unwrap_or_default();
                verified.insert(cname, format!("{repo}@{d}"));
            }
        }
        if is_pod && !verified.is_empty() {
            if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                let ann = m.entry("annotations").or_insert_with(|| json!({}));
                if let Some(a) = ann.as_object_mut() {
                    a.insert(
                        ANNOTATION.into(),
                        json!(serde_json::to_string(&verified).unwrap_or_default()),
                    );
                }
            }
        }
        Ok(())
    }

    /// The `.dockerconfigjson`/`.dockercfg` bytes of the pod's pull secrets.
    fn pull_secrets(
        &self,
        api: &Api,
        ns: &str,
        spec: &Value,
    ) -> Vec<engine::distribution::PullSecret> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        spec["imagePullSecrets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["name"].as_str())
            .filter_map(|n| {
                api.cache
                    .get(&format!("/registry/core/secrets/{ns}/{n}"))
                    .and_then(|raw| serde_json::from_slice::<Value>(&raw).ok())
            })
            .map(|s| {
                let get = |k: &str| s["data"][k].as_str().and_then(|v| b64.decode(v).ok());
                (get(".dockerconfigjson"), get(".dockercfg"))
            })
            .collect()
    }

    /// Resolves the image's tag and asks each covering policy's keys, from the cache where
    /// a verdict for the digest stands.
    async fn check<'a>(
        &self,
        image: &str,
        pull_secrets: &[engine::distribution::PullSecret],
        covering: &[&'a (signing::Policy, String)],
    ) -> Outcome<'a> {
        let fail_all = |reason: String| Outcome {
            digest: None,
            verdicts: covering
                .iter()
                .map(|(p, _)| (p, Err(reason.clone())))
                .collect(),
        };
        let r = match image::reference::Reference::parse(image) {
            Ok(r) => r,
            Err(e) => return fail_all(format!("not an image reference: {e}")),
        };
        let creds = engine::distribution::pull_secret_credentials(image, pull_secrets);
        let opts = engine::distribution::RegistryOptions {
            insecure: self.insecure.clone(),
            ..Default::default()
        };
        let reference = signing::manifest_reference(&r);
        let wanted: Vec<(usize, signing::Policy, String)> = covering
            .iter()
            .enumerate()
            .map(|(i, (p, id))| (i, p.clone(), id.clone()))
            .collect();
        let verdicts = Arc::new(Mutex::new(Vec::<(usize, Verdict)>::new()));
        let done = verdicts.clone();
        let cache: HashMap<(String, String), (Instant, Verdict)> =
            self.verdicts.lock().unwrap().clone();
        let work = tokio::task::spawn_blocking(move || -> Result<image::digest::Digest, String> {
            let (s, d) = signing::resolve_with(&r, &reference, creds, &opts)?;
            for (i, p, id) in wanted {
                let key = (d.to_string(), id);
                let v = match cache.get(&key) {
                    Some((at, v)) if at.elapsed() < VERDICT_TTL => v.clone(),
                    _ => signing::verify(&s, &d, &p.keys),
                };
                done.lock().unwrap().push((i, v));
            }
            Ok(d)
        });
        let digest = match tokio::time::timeout(REGISTRY_TIMEOUT, work).await {
            Ok(Ok(Ok(d))) => d,
            Ok(Ok(Err(e))) => return fail_all(e),
            Ok(Err(_)) => return fail_all("the check failed".into()),
            Err(_) => {
                return fail_all(format!(
                    "the registry did not answer within {}s",
                    REGISTRY_TIMEOUT.as_secs()
                ))
            }
        };
        let got = std::mem::take(&mut *verdicts.lock().unwrap());
        {
            let mut c = self.verdicts.lock().unwrap();
            c.retain(|_, (at, _)| at.elapsed() < VERDICT_TTL);
            for (i, v) in &got {
                c.entry((digest.to_string(), covering[*i].1.clone()))
                    .or_insert_with(|| (Instant::now(), v.clone()));
            }
        }
        // The digest is pinned when every enforcing policy passed (warn ones only warn).
        let all_ok = got.len() == covering.len()
            && got
                .iter()
                .all(|(i, v)| v.is_ok() || covering[*i].0.mode == signing::Mode::Warn);
        Outcome {
            digest: all_ok.then_some(digest),
            verdicts: got.into_iter().map(|(i, v)| (&covering[i].0, v)).collect(),
        }
    }
}

/// What one image's check found: the digest (when every covering policy passed) and
/// each policy's verdict.
struct Outcome<'a> {
    digest: Option<image::digest::Digest>,
    verdicts: Vec<(&'a signing::Policy, Verdict)>,
}
