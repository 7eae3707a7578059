//! Image signatures as cosign writes them, verified offline with ECDSA P-256 public keys
//! (no transparency log, no network beyond the registry), and the legacy format written:
//!
//! - **legacy** (cosign 1.x/2.x): the tag `sha256-<hex>.sig` in the image's repository holds
//!   an OCI manifest with one layer per signature; each layer is the "simple signing"
//!   payload naming the image's digest, and its descriptor's
//!   `dev.cosignproject.cosign/signature` annotation is the base64 ASN.1 ECDSA signature
//!   of the payload's SHA-256;
//! - **bundle** (cosign 3.x): a referrer of the image (OCI referrers API, or the
//!   `sha256-<hex>` referrers tag) with artifact type
//!   `application/vnd.dev.sigstore.bundle.v0.3+json`, whose layer is a Sigstore bundle
//!   holding a DSSE envelope of an in-toto Statement whose subject is the image's digest;
//!   the signature covers DSSE's PAE of the payload.
//!
//! [`Policy`] is the cluster's ImageSignaturePolicy as the API server and the agent both
//! read it, so admission and the node's check before a container starts run the same code.

use std::collections::BTreeMap;

use base64::Engine as _;
use engine::distribution::Session;
use image::digest::Digest;
use serde_json::{json, Value};

pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const BUNDLE_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INTOTO: &str = "application/vnd.in-toto+json";
/// The DER prefix of a P-256 SubjectPublicKeyInfo, before the 65-byte point.
const P256_SPKI: &[u8] = &[
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// The DER of the first PEM block labelled `label`.
fn pem_block(pem: &str, labels: &[&str]) -> Option<(String, Vec<u8>)> {
    for label in labels {
        let begin = format!("-----BEGIN {label}-----");
        let end = format!("-----END {label}-----");
        if let Some(start) = pem.find(&begin) {
            let rest = &pem[start + begin.len()..];
            let stop = rest.find(&end)?;
            let body: String = rest[..stop]
                .lines()
                .filter(|l| !l.contains(':'))
                .collect::<String>()
                .split_whitespace()
                .collect();
            return b64().decode(body).ok().map(|der| (label.to_string(), der));
        }
    }
    None
}

/// An ECDSA P-256 public key (PEM `PUBLIC KEY`, as `cosign generate-key-pair` and
/// `openssl ec -pubout` write it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    point: Vec<u8>,
}

impl PublicKey {
    pub fn from_pem(pem: &str) -> Result<PublicKey, String> {
        let (_, der) = pem_block(pem, &["PUBLIC KEY"]).ok_or("not a PEM \"PUBLIC KEY\" block")?;
        let point = der
            .strip_prefix(P256_SPKI)
            .ok_or("not an ECDSA P-256 public key (cosign's keys are P-256)")?;
        if point.len() != 65 || point[0] != 4 {
            return Err("not an uncompressed P-256 point".into());
        }
        Ok(PublicKey {
            point: point.to_vec(),
        })
    }

    pub fn to_pem(&self) -> String {
        let mut der = P256_SPKI.to_vec();
        der.extend(&self.point);
        pem("PUBLIC KEY", &der)
    }

    /// Whether `sig` (ASN.1 DER) signs `message` (hashed with SHA-256).
    pub fn verifies(&self, message: &[u8], sig: &[u8]) -> bool {
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_ASN1,
            &self.point,
        )
        .verify(message, sig)
        .is_ok()
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let text = b64().encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in text.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A DER length.
fn der_len(n: usize) -> Vec<u8> {
    if n < 0x80 {
        vec![n as u8]
    } else if n < 0x100 {
        vec![0x81, n as u8]
    } else {
        vec![0x82, (n >> 8) as u8, n as u8]
    }
}

/// An ECDSA P-256 private key: PEM `PRIVATE KEY` (PKCS#8) or `EC PRIVATE KEY` (SEC1, as
/// `openssl ecparam -genkey` writes it).
pub struct SigningKey {
    pair: ring::signature::EcdsaKeyPair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(P-256)")
    }
}

impl SigningKey {
    pub fn from_pem(pem: &str) -> Result<SigningKey, String> {
        if pem.contains("ENCRYPTED") {
            return Err("the key is encrypted (cosign's own format): export it unencrypted with `cosign import-key-pair` or use an `openssl` P-256 key".into());
        }
        let (label, der) = pem_block(pem, &["PRIVATE KEY", "EC PRIVATE KEY"])
            .ok_or("not a PEM \"PRIVATE KEY\" or \"EC PRIVATE KEY\" block")?;
        let pkcs8 = if label == "EC PRIVATE KEY" {
            // PKCS#8 around the SEC1 key: version 0, ecPublicKey on prime256v1.
            let alg: &[u8] = &[
                0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
                0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
            ];
            let mut body = vec![0x02, 0x01, 0x00];
            body.extend(alg);
            body.push(0x04);
            body.extend(der_len(der.len()));
            body.extend(&der);
            let mut out = vec![0x30];
            out.extend(der_len(body.len()));
            out.extend(body);
            out
        } else {
            der
        };
        let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &pkcs8,
            &ring::rand::SystemRandom::new(),
        )
        .map_err(|_| "not an ECDSA P-256 private key (cosign's keys are P-256)".to_string())?;
        Ok(SigningKey { pair })
    }

    /// A new key, as PKCS#8 PEM.
    pub fn generate_pem() -> String {
        let doc = ring::signature::EcdsaKeyPair::generate_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &ring::rand::SystemRandom::new(),
        )
        .expect("key generation from the system random source");
        pem("PRIVATE KEY", doc.as_ref())
    }

    pub fn public(&self) -> PublicKey {
        use ring::signature::KeyPair as _;
        PublicKey {
            point: self.pair.public_key().as_ref().to_vec(),
        }
    }

    /// The ASN.1 DER ECDSA signature of `message`'s SHA-256.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.pair
            .sign(&ring::rand::SystemRandom::new(), message)
            .expect("ECDSA signing")
            .as_ref()
            .to_vec()
    }
}

/// The simple-signing payload cosign signs for an image, byte for byte.
pub fn payload(repository: &str, digest: &Digest) -> Vec<u8> {
    format!(
        "{{\"critical\":{{\"identity\":{{\"docker-reference\":\"{repository}\"}},\"image\":{{\"docker-manifest-digest\":\"{digest}\"}},\"type\":\"cosign container image signature\"}},\"optional\":null}}"
    )
    .into_bytes()
}

/// DSSE's pre-authentication encoding.
pub fn pae(payload_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        body.len()
    )
    .into_bytes();
    out.extend(body);
    out
}

/// Why one signature did not count.
fn check_legacy(
    keys: &[(String, PublicKey)],
    payload: &[u8],
    sig_b64: &str,
    digest: &Digest,
) -> Result<String, String> {
    let sig = b64()
        .decode(sig_b64.trim())
        .map_err(|_| "its signature is not base64".to_string())?;
    let v: Value =
        serde_json::from_slice(payload).map_err(|_| "its payload is not JSON".to_string())?;
    let signed = v
        .pointer("/critical/image/docker-manifest-digest")
        .and_then(Value::as_str)
        .ok_or("its payload names no image digest")?;
    if signed != digest.to_string() {
        return Err(format!("it signs {signed}, not this image"));
    }
    keys.iter()
        .find(|(_, k)| k.verifies(payload, &sig))
        .map(|(n, _)| n.clone())
        .ok_or_else(|| "it does not verify with the keys given".to_string())
}

/// A Sigstore bundle's DSSE envelope checked against the keys and the image digest.
pub fn check_bundle(
    keys: &[(String, PublicKey)],
    bundle: &[u8],
    digest: &Digest,
) -> Result<String, String> {
    let v: Value =
        serde_json::from_slice(bundle).map_err(|_| "the bundle is not JSON".to_string())?;
    let media = v["mediaType"].as_str().unwrap_or_default();
    if !media.starts_with("application/vnd.dev.sigstore.bundle") {
        return Err(format!("the bundle's mediaType is {media:?}"));
    }
    let env = v
        .get("dsseEnvelope")
        .ok_or("the bundle holds no DSSE envelope")?;
    let ptype = env["payloadType"].as_str().unwrap_or_default();
    if ptype != INTOTO {
        return Err(format!(
            "the envelope's payloadType is {ptype:?}, not {INTOTO}"
        ));
    }
    let body = b64()
        .decode(env["payload"].as_str().unwrap_or_default())
        .map_err(|_| "the envelope's payload is not base64".to_string())?;
    let statement: Value = serde_json::from_slice(&body)
        .map_err(|_| "the envelope's statement is not JSON".to_string())?;
    let hex = digest.hex();
    let names_image = statement["subject"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|s| s["digest"]["sha256"].as_str() == Some(hex));
    if !names_image {
        return Err("its statement's subject is not this image".into());
    }
    let message = pae(ptype, &body);
    for s in env["signatures"].as_array().into_iter().flatten() {
        let Ok(sig) = b64().decode(s["sig"].as_str().unwrap_or_default()) else {
            continue;
        };
        if let Some((n, _)) = keys.iter().find(|(_, k)| k.verifies(&message, &sig)) {
            return Ok(n.clone());
        }
    }
    Err("it does not verify with the keys given".into())
}

/// A signature that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub digest: Digest,
    /// `cosign .sig` or `sigstore bundle`.
    pub format: &'static str,
    /// The name of the key that verified it.
    pub key: String,
}

/// The digest a tag names now.
pub fn resolve(session: &Session, reference: &str) -> Result<Digest, String> {
    if let Ok(d) = reference.parse::<Digest>() {
        return Ok(d);
    }
    match session.get_manifest(reference, "") {
        Ok(Some((_, d, _))) => Ok(d),
        Ok(None) => Err(format!("the registry has no manifest {reference}")),
        Err(e) => Err(e.to_string()),
    }
}

/// What to ask a registry for an image reference: its digest, else its tag (`latest`).
pub fn manifest_reference(r: &image::reference::Reference) -> String {
    r.digest()
        .map(|d| d.to_string())
        .unwrap_or_else(|| r.tag().unwrap_or("latest").to_string())
}

/// A session on `image`'s repository with the first of `creds` (then none) under which
/// `reference` resolves, and the digest it names.
pub fn resolve_with(
    image: &image::reference::Reference,
    reference: &str,
    creds: Vec<engine::distribution::Credentials>,
    opts: &engine::distribution::RegistryOptions,
) -> Result<(Session, Digest), String> {
    let mut last = String::new();
    for c in creds.into_iter().map(Some).chain(std::iter::once(None)) {
        let s = Session::new(image.domain(), image.path(), c, opts);
        match resolve(&s, reference) {
            Ok(d) => return Ok((s, d)),
            Err(e) => last = e,
        }
    }
    Err(format!("cannot resolve {reference}: {last}"))
}

/// Finds a signature of `digest` in either format that one of `keys` made.
pub fn verify(
    session: &Session,
    digest: &Digest,
    keys: &[(String, PublicKey)],
) -> Result<Verified, String> {
    let mut why: Vec<String> = Vec::new();
    // Legacy: the .sig tag.
    let tag = format!("{}-{}.sig", digest.algorithm_name(), digest.hex());
    if let Some((_, _, manifest)) = session
        .get_manifest(&tag, OCI_MANIFEST)
        .map_err(|e| e.to_string())?
    {
        let m: Value = serde_json::from_slice(&manifest).unwrap_or_default();
        for layer in m["layers"].as_array().into_iter().flatten() {
            let Some(sig) = layer["annotations"][SIGNATURE_ANNOTATION].as_str() else {
                continue;
            };
            let Some(d) = layer["digest"]
                .as_str()
                .and_then(|d| d.parse::<Digest>().ok())
            else {
                continue;
            };
            let payload = match session.get_blob(&d, 64 << 10) {
                Ok(p) => p,
                Err(e) => {
                    why.push(format!("a signature's payload: {e}"));
                    continue;
                }
            };
            match check_legacy(keys, &payload, sig, digest) {
                Ok(key) => {
                    return Ok(Verified {
                        digest: digest.clone(),
                        format: "cosign .sig",
                        key,
                    })
                }
                Err(e) => why.push(format!("the signature in {tag}: {e}")),
            }
        }
    }
    // cosign 3: bundles among the referrers.
    for r in session
        .referrers(digest, BUNDLE_TYPE)
        .map_err(|e| e.to_string())?
    {
        let Some(md) = r["digest"].as_str().and_then(|d| d.parse::<Digest>().ok()) else {
            continue;
        };
        let Some((_, _, manifest)) = session
            .get_manifest(&md.to_string(), OCI_MANIFEST)
            .map_err(|e| e.to_string())?
        else {
            continue;
        };
        let m: Value = serde_json::from_slice(&manifest).unwrap_or_default();
        for layer in m["layers"].as_array().into_iter().flatten() {
            let Some(d) = layer["digest"]
                .as_str()
                .and_then(|d| d.parse::<Digest>().ok())
            else {
                continue;
            };
            let bundle = match session.get_blob(&d, 1 << 20) {
                Ok(b) => b,
                Err(e) => {
                    why.push(format!("a bundle: {e}"));
                    continue;
                }
            };
            match check_bundle(keys, &bundle, digest) {
                Ok(key) => {
                    return Ok(Verified {
                        digest: digest.clone(),
                        format: "sigstore bundle",
                        key,
                    })
                }
                Err(e) => why.push(format!("the bundle {md}: {e}")),
            }
        }
    }
    if why.is_empty() {
        Err(format!(
            "no signature: {digest} has no {tag} tag and no Sigstore bundle among its referrers"
        ))
    } else {
        Err(format!("no valid signature: {}", why.join("; ")))
    }
}

/// Signs `digest` in the legacy format: the payload as a blob and the signature added to
/// the `.sig` manifest (kept with the signatures it already holds).
pub fn sign_legacy(
    session: &Session,
    repository: &str,
    digest: &Digest,
    key: &SigningKey,
) -> Result<(), String> {
    let payload = payload(repository, digest);
    let sig = b64().encode(key.sign(&payload));
    let e = |e: engine::engine::EngineError| e.to_string();
    let payload_digest = session.put_blob(&payload).map_err(e)?;
    let tag = format!("{}-{}.sig", digest.algorithm_name(), digest.hex());
    let mut layers: Vec<Value> = match session.get_manifest(&tag, OCI_MANIFEST).map_err(e)? {
        Some((_, _, m)) => serde_json::from_slice::<Value>(&m)
            .ok()
            .and_then(|m| m["layers"].as_array().cloned())
            .unwrap_or_default(),
        None => Vec::new(),
    };
    layers.retain(|l| {
        l["digest"].as_str() != Some(&payload_digest.to_string())
            || l["annotations"][SIGNATURE_ANNOTATION].as_str() != Some(&sig)
    });
    layers.push(json!({
        "mediaType": SIMPLE_SIGNING,
        "size": payload.len(),
        "digest": payload_digest.to_string(),
        "annotations": {SIGNATURE_ANNOTATION: sig},
    }));
    let diff_ids: Vec<Value> = layers.iter().map(|l| l["digest"].clone()).collect();
    let config = serde_json::to_vec(&json!({
        "architecture": "", "os": "", "created": "0001-01-01T00:00:00Z",
        "config": {}, "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": "0001-01-01T00:00:00Z"}],
    }))
    .unwrap_or_default();
    let config_digest = session.put_blob(&config).map_err(e)?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": config.len(), "digest": config_digest.to_string()},
        "layers": layers,
    }))
    .unwrap_or_default();
    session
        .put_manifest_as(&tag, OCI_MANIFEST, &manifest)
        .map_err(e)
}

/// Signs `digest` as cosign 3 does: a Sigstore bundle (DSSE over an in-toto Statement)
/// pushed as a referrer of the image.
pub fn sign_bundle(
    session: &Session,
    repository: &str,
    digest: &Digest,
    image_media: &str,
    image_size: usize,
    key: &SigningKey,
) -> Result<(), String> {
    let statement = serde_json::to_vec(&json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": repository, "digest": {"sha256": digest.hex()}}],
        "predicateType": "https://sigstore.dev/cosign/sign/v1",
        "predicate": {},
    }))
    .unwrap_or_default();
    let sig = key.sign(&pae(INTOTO, &statement));
    let bundle = serde_json::to_vec(&json!({
        "mediaType": BUNDLE_TYPE,
        "verificationMaterial": {"publicKey": {"hint": ""}},
        "dsseEnvelope": {
            "payload": b64().encode(&statement),
            "payloadType": INTOTO,
            "signatures": [{"sig": b64().encode(&sig), "keyid": ""}],
        },
    }))
    .unwrap_or_default();
    let e = |e: engine::engine::EngineError| e.to_string();
    let bundle_digest = session.put_blob(&bundle).map_err(e)?;
    let empty = b"{}";
    let empty_digest = session.put_blob(empty).map_err(e)?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": BUNDLE_TYPE,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "size": 2, "digest": empty_digest.to_string()},
        "layers": [{"mediaType": BUNDLE_TYPE, "size": bundle.len(), "digest": bundle_digest.to_string()}],
        "subject": {"mediaType": image_media, "size": image_size, "digest": digest.to_string()},
        "annotations": {
            "dev.sigstore.bundle.content": "dsse-envelope",
            "dev.sigstore.bundle.predicateType": "https://sigstore.dev/cosign/sign/v1",
        },
    }))
    .unwrap_or_default();
    let md = Digest::of(&manifest);
    session
        .put_manifest_as(&md.to_string(), OCI_MANIFEST, &manifest)
        .map_err(e)
}

/// Glob matching for image patterns: `*` within a path segment, `**` across them.
pub fn glob(pattern: &str, text: &str) -> bool {
    fn go(p: &[u8], t: &[u8]) -> bool {
        match p.first() {
            None => t.is_empty(),
            Some(b'*') if p.get(1) == Some(&b'*') => (0..=t.len()).any(|i| go(&p[2..], &t[i..])),
            Some(b'*') => {
                let mut i = 0;
                loop {
                    if go(&p[1..], &t[i..]) {
                        return true;
                    }
                    if i == t.len() || t[i] == b'/' {
                        return false;
                    }
                    i += 1;
                }
            }
            Some(c) => t.first() == Some(c) && go(&p[1..], &t[1..]),
        }
    }
    go(pattern.as_bytes(), text.as_bytes())
}

/// Whether a label selector (`matchLabels`, `matchExpressions`) selects `labels`; an
/// absent selector selects everything.
pub fn selects(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    if selector.is_null() {
        return true;
    }
    let ml = selector["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str());
    ml && selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|e| {
            let k = e["key"].as_str().unwrap_or_default();
            let values: Vec<&str> = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let have = labels.get(k).map(String::as_str);
            match e["operator"].as_str().unwrap_or_default() {
                "In" => have.is_some_and(|h| values.contains(&h)),
                "NotIn" => have.is_none_or(|h| !values.contains(&h)),
                "Exists" => have.is_some(),
                "DoesNotExist" => have.is_none(),
                _ => false,
            }
        })
}

/// Whether a policy refuses or only warns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    Warn,
}

/// An ImageSignaturePolicy (`security.berth.io/v1`), as both admission and the agent read it.
#[derive(Clone, Debug)]
pub struct Policy {
    pub name: String,
    pub images: Vec<String>,
    pub keys: Vec<(String, PublicKey)>,
    pub mode: Mode,
    pub namespace_selector: Value,
}

impl Policy {
    /// The policy an object describes, or what is wrong with it.
    pub fn from_object(v: &Value) -> Result<Policy, String> {
        let name = v["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let spec = &v["spec"];
        let images: Vec<String> = spec["images"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i.as_str().map(str::to_string))
            .collect();
        if images.is_empty() {
            return Err("spec.images: at least one image pattern is required".into());
        }
        let mut keys = Vec::new();
        for (i, k) in spec["keys"].as_array().into_iter().flatten().enumerate() {
            let kname = k["name"]
                .as_str()
                .map_or_else(|| format!("keys[{i}]"), str::to_string);
            let pem = k["publicKey"].as_str().unwrap_or_default();
            let key =
                PublicKey::from_pem(pem).map_err(|e| format!("spec.keys[{i}].publicKey: {e}"))?;
            keys.push((kname, key));
        }
        if keys.is_empty() {
            return Err("spec.keys: at least one public key is required".into());
        }
        let mode = match spec["mode"].as_str().unwrap_or("enforce") {
            "enforce" => Mode::Enforce,
            "warn" => Mode::Warn,
            m => {
                return Err(format!(
                    "spec.mode: {m:?} is neither \"enforce\" nor \"warn\""
                ))
            }
        };
        Ok(Policy {
            name,
            images,
            keys,
            mode,
            namespace_selector: spec["namespaceSelector"].clone(),
        })
    }

    /// Whether the policy covers an image (its repository, fully qualified or as
    /// written) in a namespace with these labels.
    pub fn covers(&self, image: &str, ns_labels: &BTreeMap<String, String>) -> bool {
        selects(&self.namespace_selector, ns_labels) && self.names(image)
    }

    /// Whether an image pattern names the image (whatever the namespace).
    pub fn names(&self, image: &str) -> bool {
        let Ok(r) = image::reference::Reference::parse(image) else {
            return false;
        };
        let names = [r.repository(), r.familiar_repository()];
        self.images.iter().any(|p| names.iter().any(|n| glob(p, n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_signatures_verify_only_with_their_key() {
        let k = SigningKey::from_pem(&SigningKey::generate_pem()).unwrap();
        let pubk = PublicKey::from_pem(&k.public().to_pem()).unwrap();
        let sig = k.sign(b"hello");
        assert!(pubk.verifies(b"hello", &sig));
        assert!(!pubk.verifies(b"hellO", &sig));
        let other = SigningKey::from_pem(&SigningKey::generate_pem()).unwrap();
        assert!(!other.public().verifies(b"hello", &sig));
        for bad in [
            "",
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
            "junk",
        ] {
            assert!(PublicKey::from_pem(bad).is_err());
        }
        assert!(SigningKey::from_pem("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\nx\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----").unwrap_err().contains("encrypted"));
    }

    #[test]
    fn payloads_and_bundles_check_the_digest_and_the_key() {
        let k = SigningKey::from_pem(&SigningKey::generate_pem()).unwrap();
        let keys = vec![("release".to_string(), k.public())];
        let d = Digest::of(b"image");
        let other = Digest::of(b"other");
        let p = payload("r/app", &d);
        let sig = b64().encode(k.sign(&p));
        assert_eq!(check_legacy(&keys, &p, &sig, &d).unwrap(), "release");
        assert!(check_legacy(&keys, &p, &sig, &other)
            .unwrap_err()
            .contains("not this image"));
        let mut tampered = p.clone();
        tampered[5] ^= 1;
        assert!(check_legacy(&keys, &tampered, &sig, &d).is_err());
        // A bundle, as sign_bundle writes it.
        let statement = serde_json::to_vec(&json!({"_type": "https://in-toto.io/Statement/v1",
            "subject": [{"name": "r/app", "digest": {"sha256": d.hex()}}],
            "predicateType": "https://sigstore.dev/cosign/sign/v1", "predicate": {}}))
        .unwrap();
        let bundle = |sig: Vec<u8>| {
            serde_json::to_vec(&json!({"mediaType": BUNDLE_TYPE, "dsseEnvelope": {
                "payload": b64().encode(&statement), "payloadType": INTOTO,
                "signatures": [{"sig": b64().encode(sig)}]}}))
            .unwrap()
        };
        let good = bundle(k.sign(&pae(INTOTO, &statement)));
        assert_eq!(check_bundle(&keys, &good, &d).unwrap(), "release");
        assert!(check_bundle(&keys, &good, &other).is_err());
        let raw = bundle(k.sign(&statement));
        assert!(
            check_bundle(&keys, &raw, &d).is_err(),
            "the signature must cover PAE"
        );
        for junk in [&b""[..], b"{}", b"[1]", b"{\"mediaType\": 5}"] {
            assert!(check_bundle(&keys, junk, &d).is_err());
        }
    }

    fn mutations(seed: &[u8], rounds: usize, mut f: impl FnMut(&[u8])) {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n.max(1) as u64) as usize
        };
        for _ in 0..rounds {
            let mut b = seed.to_vec();
            for _ in 0..=next(3) {
                if b.is_empty() {
                    break;
                }
                let at = next(b.len());
                match next(4) {
                    0 => b[at] ^= 1 << next(8),
                    1 => b.insert(at, b"{}[]\":,0-\n"[next(10)]),
                    2 => {
                        b.remove(at);
                    }
                    _ => b.truncate(at),
                }
            }
            f(&b);
        }
    }

    /// Mutated keys, payloads, signatures and bundles never panic, and nothing mutated
    /// verifies as a signature of another image.
    #[test]
    fn mutated_inputs_are_refused_without_panicking() {
        let k = SigningKey::from_pem(&SigningKey::generate_pem()).unwrap();
        let keys = vec![("k".to_string(), k.public())];
        let d = Digest::of(b"image");
        let signed = k.sign(b"message");
        mutations(k.public().to_pem().as_bytes(), 2000, |b| {
            if let Ok(p) = PublicKey::from_pem(&String::from_utf8_lossy(b)) {
                // Another point (or none on the curve) verifies nothing the key signed.
                assert_eq!(p.verifies(b"message", &signed), p == k.public());
            }
        });
        mutations(SigningKey::generate_pem().as_bytes(), 500, |b| {
            let _ = SigningKey::from_pem(&String::from_utf8_lossy(b));
        });
        let p = payload("r/app", &d);
        let sig = b64().encode(k.sign(&p));
        mutations(&p, 2000, |b| {
            if check_legacy(&keys, b, &sig, &d).is_ok() {
                assert_eq!(b, &p[..]);
            }
        });
        mutations(sig.as_bytes(), 2000, |b| {
            let _ = check_legacy(&keys, &p, &String::from_utf8_lossy(b), &d);
        });
        let statement = serde_json::to_vec(&json!({"_type": "https://in-toto.io/Statement/v1",
            "subject": [{"name": "r/app", "digest": {"sha256": d.hex()}}],
            "predicateType": "https://sigstore.dev/cosign/sign/v1", "predicate": {}}))
        .unwrap();
        let bundle = serde_json::to_vec(&json!({"mediaType": BUNDLE_TYPE, "dsseEnvelope": {
            "payload": b64().encode(&statement), "payloadType": INTOTO,
            "signatures": [{"sig": b64().encode(k.sign(&pae(INTOTO, &statement)))}]}}))
        .unwrap();
        mutations(&bundle, 3000, |b| {
            let _ = check_bundle(&keys, b, &d);
            assert!(check_bundle(&keys, b, &Digest::of(b"other")).is_err());
        });
    }

    #[test]
    fn globs_and_policies_pick_images() {
        assert!(glob(
            "registry.local:5000/app/*",
            "registry.local:5000/app/web"
        ));
        assert!(!glob(
            "registry.local:5000/app/*",
            "registry.local:5000/app/web/x"
        ));
        assert!(glob(
            "registry.local:5000/**",
            "registry.local:5000/app/web/x"
        ));
        assert!(glob("**", "docker.io/library/busybox"));
        let k = SigningKey::from_pem(&SigningKey::generate_pem()).unwrap();
        let p = Policy::from_object(&json!({"metadata": {"name": "p"}, "spec": {
            "images": ["10.0.0.1:5000/signed/*"], "keys": [{"name": "k", "publicKey": k.public().to_pem()}],
            "namespaceSelector": {"matchLabels": {"sign": "yes"}}}}))
        .unwrap();
        let yes: BTreeMap<String, String> = [("sign".to_string(), "yes".to_string())].into();
        assert!(p.covers("10.0.0.1:5000/signed/app:1", &yes));
        assert!(!p.covers("10.0.0.1:5000/other/app:1", &yes));
        assert!(!p.covers("10.0.0.1:5000/signed/app:1", &BTreeMap::new()));
        assert!(Policy::from_object(
            &json!({"spec": {"images": ["x"], "keys": [{"publicKey": "no"}]}})
        )
        .unwrap_err()
        .contains("spec.keys[0].publicKey"));
    }
}
