//! Encryption at rest, configured as Kubernetes' `--encryption-provider-config`: an
//! `EncryptionConfiguration` lists resources (`secrets`, `configmaps`, `deployments.apps`,
//! `*.apps`, `*.*`) and, for each, providers in order. The first provider's first key
//! encrypts what is written; every provider listed may read. Values are stored as
//! Kubernetes stores them, `k8s:enc:<provider>:v1:<key name>:` then the ciphertext:
//!
//! - `aescbc`: a random 16-byte IV, then AES-CBC with PKCS#7 padding (16, 24 or 32-byte keys);
//! - `aesgcm`: a random 12-byte nonce, then AES-GCM with the storage key as additional
//!   data, so a value moved to another key does not decrypt (16, 24 or 32-byte keys);
//! - `secretbox`: a random 24-byte nonce, then XSalsa20-Poly1305 (32-byte keys);
//! - `identity`: the plain value (written when first, read when listed).
//!
//! [`EncryptedStore`] wraps the store below the watch cache: the cache, the API and
//! watches see plain objects, the database holds only ciphertext. At start,
//! [`EncryptedStore::rewrite_stale`] re-writes every covered value not in the first key,
//! which is how a key is rotated (add the new key first, keep the old one second, restart)
//! and how encryption is turned on for objects stored before.

use std::sync::Arc;

use base64::Engine as _;
use futures::StreamExt;
use store::{Event, KeyValue, ListOptions, ListResult, Store, StoreError, WatchStream};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read {0}")]
    Read(String, #[source] std::io::Error),
    #[error("{0}: {1}")]
    Invalid(String, String),
}

#[derive(Clone)]
enum Provider {
    Identity,
    AesCbc(Vec<Key>),
    AesGcm(Vec<Key>),
    Secretbox(Vec<Key>),
}

#[derive(Clone)]
struct Key {
    name: String,
    secret: Vec<u8>,
}

impl Provider {
    fn tag(&self) -> &'static str {
        match self {
            Provider::Identity => "identity",
            Provider::AesCbc(_) => "aescbc",
            Provider::AesGcm(_) => "aesgcm",
            Provider::Secretbox(_) => "secretbox",
        }
    }
    fn keys(&self) -> &[Key] {
        match self {
            Provider::Identity => &[],
            Provider::AesCbc(k) | Provider::AesGcm(k) | Provider::Secretbox(k) => k,
        }
    }
}

#[derive(Clone)]
struct Rule {
    /// Storage key prefixes the rule covers.
    prefixes: Vec<String>,
    providers: Vec<Provider>,
}

/// A loaded EncryptionConfiguration.
#[derive(Clone)]
pub struct Encryption {
    rules: Vec<Rule>,
}

const ENC: &str = "k8s:enc:";

fn random(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .expect("the system random source");
    b
}

/// The storage prefix of a resource as the configuration names it.
fn prefix_of(resource: &str) -> Result<String, String> {
    let (plural, group) = match resource.split_once('.') {
        Some((p, g)) => (p, g),
        None => (resource, ""),
    };
    if plural.is_empty() {
        return Err(format!("resource {resource:?} has no name"));
    }
    let group = if group.is_empty() { "core" } else { group };
    Ok(match (plural, group) {
        ("*", "*") => "/registry/".to_string(),
        ("*", g) => format!("/registry/{g}/"),
        (_, "*") => {
            return Err(format!(
                "resource {resource:?}: a wildcard group needs a wildcard resource (*.*)"
            ))
        }
        (p, g) => format!("/registry/{g}/{p}/"),
    })
}

fn parse_keys(
    where_: &str,
    v: &serde_json::Value,
    sizes: &[usize],
) -> Result<Vec<Key>, ConfigError> {
    let bad = |m: String| ConfigError::Invalid(where_.to_string(), m);
    let list = v
        .get("keys")
        .and_then(|k| k.as_array())
        .filter(|k| !k.is_empty())
        .ok_or_else(|| bad("keys: at least one key is required".into()))?;
    let mut out: Vec<Key> = Vec::new();
    for (i, k) in list.iter().enumerate() {
        let name = k.get("name").and_then(|n| n.as_str()).unwrap_or_default();
        if name.is_empty() {
            return Err(bad(format!("keys[{i}].name: Required value")));
        }
        if name.contains(':') {
            return Err(bad(format!(
                "keys[{i}].name: {name:?} must not contain ':'"
            )));
        }
        if out.iter().any(|o| o.name == name) {
            return Err(bad(format!("keys[{i}].name: Duplicate value {name:?}")));
        }
        let secret = k.get("secret").and_then(|s| s.as_str()).unwrap_or_default();
        let secret = base64::engine::general_purpose::STANDARD
            .decode(secret.trim())
            .map_err(|e| bad(format!("keys[{i}].secret: not base64: {e}")))?;
        if !sizes.contains(&secret.len()) {
            return Err(bad(format!(
                "keys[{i}].secret: the key is {} bytes; it must be {} bytes",
                secret.len(),
                sizes
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        out.push(Key {
            name: name.to_string(),
            secret,
        });
    }
    Ok(out)
}

impl Encryption {
    pub fn load(path: &std::path::Path) -> Result<Encryption, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Read(path.display().to_string(), e))?;
        Encryption::parse(&text).map_err(|e| match e {
            ConfigError::Invalid(w, m) => {
                ConfigError::Invalid(format!("{}: {w}", path.display()), m)
            }
            e => e,
        })
    }

    pub fn parse(text: &str) -> Result<Encryption, ConfigError> {
        let bad = |w: &str, m: &str| ConfigError::Invalid(w.to_string(), m.to_string());
        let v: serde_json::Value =
            serde_yaml::from_str(text).map_err(|e| bad("the file", &e.to_string()))?;
        let kind = v.get("kind").and_then(|k| k.as_str()).unwrap_or_default();
        let api = v
            .get("apiVersion")
            .and_then(|k| k.as_str())
            .unwrap_or_default();
        if kind != "EncryptionConfiguration" || api != "apiserver.config.k8s.io/v1" {
            return Err(bad(
                "kind",
                &format!(
                    "{api}/{kind} is not an apiserver.config.k8s.io/v1 EncryptionConfiguration"
                ),
            ));
        }
        let mut rules = Vec::new();
        let list = v
            .get("resources")
            .and_then(|r| r.as_array())
            .filter(|r| !r.is_empty())
            .ok_or_else(|| bad("resources", "Required value"))?;
        for (i, r) in list.iter().enumerate() {
            let w = format!("resources[{i}]");
            let names = r
                .get("resources")
                .and_then(|r| r.as_array())
                .filter(|r| !r.is_empty())
                .ok_or_else(|| bad(&format!("{w}.resources"), "Required value"))?;
            let mut prefixes = Vec::new();
            for n in names {
                let n = n.as_str().unwrap_or_default();
                prefixes.push(prefix_of(n).map_err(|m| bad(&format!("{w}.resources"), &m))?);
            }
            let provs = r
                .get("providers")
                .and_then(|r| r.as_array())
                .filter(|r| !r.is_empty())
                .ok_or_else(|| bad(&format!("{w}.providers"), "Required value"))?;
            let mut providers = Vec::new();
            for (j, p) in provs.iter().enumerate() {
                let pw = format!("{w}.providers[{j}]");
                let obj = p.as_object().filter(|o| o.len() == 1).ok_or_else(|| {
                    bad(
                        &pw,
                        "exactly one provider must be set (aescbc, aesgcm, secretbox, identity)",
                    )
                })?;
                let (name, body) = obj.iter().next().unwrap();
                let kw = format!("{pw}.{name}");
                providers.push(match name.as_str() {
                    "identity" => Provider::Identity,
                    "aescbc" => Provider::AesCbc(parse_keys(&kw, body, &[16, 24, 32])?),
                    "aesgcm" => Provider::AesGcm(parse_keys(&kw, body, &[16, 24, 32])?),
                    "secretbox" => Provider::Secretbox(parse_keys(&kw, body, &[32])?),
                    "kms" => {
                        return Err(bad(
                            &kw,
                            "KMS providers need a KMS plugin, which berth does not run: use aescbc, aesgcm or secretbox",
                        ))
                    }
                    other => {
                        return Err(bad(
                            &pw,
                            &format!("unknown provider {other:?} (aescbc, aesgcm, secretbox, identity)"),
                        ))
                    }
                });
            }
            rules.push(Rule {
                prefixes,
                providers,
            });
        }
        Ok(Encryption { rules })
    }

    /// The providers for a storage key: the first rule that covers it.
    fn providers(&self, key: &str) -> Option<&[Provider]> {
        self.rules
            .iter()
            .find(|r| r.prefixes.iter().any(|p| key.starts_with(p.as_str())))
            .map(|r| r.providers.as_slice())
    }

    /// Whether anything is written encrypted.
    pub fn encrypts(&self) -> bool {
        self.rules
            .iter()
            .any(|r| !matches!(r.providers.first(), Some(Provider::Identity)))
    }

    /// The stored form of `value` at `key`.
    pub fn seal(&self, key: &str, value: Vec<u8>) -> Vec<u8> {
        let Some(p) = self.providers(key).and_then(|p| p.first()) else {
            return value;
        };
        let Some(k) = p.keys().first() else {
            return value;
        };
        let mut out = format!("{ENC}{}:v1:{}:", p.tag(), k.name).into_bytes();
        out.extend(match p {
            Provider::Identity => unreachable!(),
            Provider::AesCbc(_) => aescbc_seal(&k.secret, &value),
            Provider::AesGcm(_) => aesgcm_seal(&k.secret, &value, key.as_bytes()),
            Provider::Secretbox(_) => secretbox_seal(&k.secret, &value),
        });
        out
    }

    /// The plain value of what is stored at `key`, and whether it is stale (not in the
    /// form the first provider's first key writes).
    pub fn open(&self, key: &str, stored: Vec<u8>) -> Result<(Vec<u8>, bool), String> {
        let Some(providers) = self.providers(key) else {
            return Ok((stored, false));
        };
        let primary = providers.first();
        if let Some(rest) = stored.strip_prefix(ENC.as_bytes()) {
            for (i, p) in providers.iter().enumerate() {
                let tag = format!("{}:v1:", p.tag());
                let Some(rest) = rest.strip_prefix(tag.as_bytes()) else {
                    continue;
                };
                for (j, k) in p.keys().iter().enumerate() {
                    let Some(ct) = rest
                        .strip_prefix(k.name.as_bytes())
                        .and_then(|r| r.strip_prefix(b":"))
                    else {
                        continue;
                    };
                    let plain = match p {
                        Provider::Identity => None,
                        Provider::AesCbc(_) => aescbc_open(&k.secret, ct),
                        Provider::AesGcm(_) => aesgcm_open(&k.secret, ct, key.as_bytes()),
                        Provider::Secretbox(_) => secretbox_open(&k.secret, ct),
                    }
                    .ok_or_else(|| {
                        format!(
                            "{key}: the value does not decrypt with {} key {:?} (corrupted, or another key of that name)",
                            p.tag(),
                            k.name
                        )
                    })?;
                    return Ok((plain, i != 0 || j != 0));
                }
            }
            let head = String::from_utf8_lossy(&rest[..rest.len().min(64)]).into_owned();
            let head: String = head.split(':').take(3).collect::<Vec<_>>().join(":");
            return Err(format!(
                "{key}: stored encrypted as {head}, which no provider of the encryption configuration reads"
            ));
        }
        if providers.iter().any(|p| matches!(p, Provider::Identity)) {
            let stale = !matches!(primary, Some(Provider::Identity));
            return Ok((stored, stale));
        }
        Err(format!(
            "{key}: stored unencrypted, and the encryption configuration does not list the identity provider to read it"
        ))
    }
}

fn aescbc_seal(key: &[u8], plain: &[u8]) -> Vec<u8> {
    use cbc::cipher::{block_padding::Pkcs7, BlockEncryptMut, KeyIvInit};
    let iv = random(16);
    let ct = match key.len() {
        16 => cbc::Encryptor::<aes::Aes128>::new_from_slices(key, &iv)
            .expect("a 16-byte key")
            .encrypt_padded_vec_mut::<Pkcs7>(plain),
        24 => cbc::Encryptor::<aes::Aes192>::new_from_slices(key, &iv)
            .expect("a 24-byte key")
            .encrypt_padded_vec_mut::<Pkcs7>(plain),
        _ => cbc::Encryptor::<aes::Aes256>::new_from_slices(key, &iv)
            .expect("a 32-byte key")
            .encrypt_padded_vec_mut::<Pkcs7>(plain),
    };
    let mut out = iv;
    out.extend(ct);
    out
}

fn aescbc_open(key: &[u8], data: &[u8]) -> Option<Vec<u8>> {
    use cbc::cipher::{block_padding::Pkcs7, BlockDecryptMut, KeyIvInit};
    if data.len() < 32 || !data.len().is_multiple_of(16) {
        return None;
    }
    let (iv, ct) = data.split_at(16);
    match key.len() {
        16 => cbc::Decryptor::<aes::Aes128>::new_from_slices(key, iv)
            .ok()?
            .decrypt_padded_vec_mut::<Pkcs7>(ct)
            .ok(),
        24 => cbc::Decryptor::<aes::Aes192>::new_from_slices(key, iv)
            .ok()?
            .decrypt_padded_vec_mut::<Pkcs7>(ct)
            .ok(),
        _ => cbc::Decryptor::<aes::Aes256>::new_from_slices(key, iv)
            .ok()?
            .decrypt_padded_vec_mut::<Pkcs7>(ct)
            .ok(),
    }
}

type Aes192Gcm = aes_gcm::AesGcm<aes::Aes192, aes_gcm::aead::consts::U12>;

fn gcm<C: aes_gcm::aead::Aead + aes_gcm::KeyInit>(
    key: &[u8],
    f: impl FnOnce(C) -> Option<Vec<u8>>,
) -> Option<Vec<u8>> {
    f(C::new_from_slice(key).ok()?)
}

pub(crate) fn aesgcm_seal(key: &[u8], plain: &[u8], aad: &[u8]) -> Vec<u8> {
    use aes_gcm::aead::{Aead, Payload};
    let nonce = random(12);
    let payload = || Payload { msg: plain, aad };
    let n = aes_gcm::Nonce::from_slice(&nonce);
    let ct = match key.len() {
        16 => gcm::<aes_gcm::Aes128Gcm>(key, |c| c.encrypt(n, payload()).ok()),
        24 => gcm::<Aes192Gcm>(key, |c| c.encrypt(n, payload()).ok()),
        _ => gcm::<aes_gcm::Aes256Gcm>(key, |c| c.encrypt(n, payload()).ok()),
    }
    .expect("AES-GCM sealing with a checked key");
    let mut out = nonce;
    out.extend(ct);
    out
}

pub(crate) fn aesgcm_open(key: &[u8], data: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
    use aes_gcm::aead::{Aead, Payload};
    if data.len() < 12 + 16 {
        return None;
    }
    let (nonce, ct) = data.split_at(12);
    let n = aes_gcm::Nonce::from_slice(nonce);
    let payload = || Payload { msg: ct, aad };
    match key.len() {
        16 => gcm::<aes_gcm::Aes128Gcm>(key, |c| c.decrypt(n, payload()).ok()),
        24 => gcm::<Aes192Gcm>(key, |c| c.decrypt(n, payload()).ok()),
        _ => gcm::<aes_gcm::Aes256Gcm>(key, |c| c.decrypt(n, payload()).ok()),
    }
}

fn secretbox_seal(key: &[u8], plain: &[u8]) -> Vec<u8> {
    use crypto_secretbox::aead::{Aead, KeyInit};
    let nonce = random(24);
    let c = crypto_secretbox::XSalsa20Poly1305::new_from_slice(key).expect("a 32-byte key");
    let ct = c
        .encrypt(crypto_secretbox::Nonce::from_slice(&nonce), plain)
        .expect("secretbox sealing");
    let mut out = nonce;
    out.extend(ct);
    out
}

fn secretbox_open(key: &[u8], data: &[u8]) -> Option<Vec<u8>> {
    use crypto_secretbox::aead::{Aead, KeyInit};
    if data.len() < 24 + 16 {
        return None;
    }
    let (nonce, ct) = data.split_at(24);
    crypto_secretbox::XSalsa20Poly1305::new_from_slice(key)
        .ok()?
        .decrypt(crypto_secretbox::Nonce::from_slice(nonce), ct)
        .ok()
}

/// A store whose covered values are encrypted on the way down and decrypted on the way up.
pub struct EncryptedStore {
    pub inner: Arc<dyn Store>,
    pub enc: Encryption,
}

fn backend(msg: String) -> StoreError {
    StoreError::Backend(msg.into())
}

impl EncryptedStore {
    fn open_kv(&self, mut kv: KeyValue) -> Result<KeyValue, StoreError> {
        kv.value = self
            .enc
            .open(&kv.key, std::mem::take(&mut kv.value))
            .map_err(backend)?
            .0;
        Ok(kv)
    }

    /// Re-writes every covered value not in the first provider's first key; returns how
    /// many were re-written.
    pub async fn rewrite_stale(&self) -> Result<usize, StoreError> {
        let mut done = 0;
        let prefixes: Vec<String> = self
            .enc
            .rules
            .iter()
            .flat_map(|r| r.prefixes.clone())
            .collect();
        for prefix in prefixes {
            let list = self
                .inner
                .list(ListOptions {
                    prefix: &prefix,
                    ..Default::default()
                })
                .await?;
            for kv in list.kvs {
                let (plain, stale) = self.enc.open(&kv.key, kv.value).map_err(backend)?;
                if !stale {
                    continue;
                }
                match self
                    .inner
                    .update(&kv.key, self.enc.seal(&kv.key, plain), kv.mod_revision)
                    .await
                {
                    Ok(_) => done += 1,
                    // Written meanwhile, so in the current key already.
                    Err(StoreError::Conflict { .. }) | Err(StoreError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(done)
    }
}

#[async_trait::async_trait]
impl Store for EncryptedStore {
    async fn current_revision(&self) -> store::Result<i64> {
        self.inner.current_revision().await
    }
    async fn compacted_revision(&self) -> store::Result<i64> {
        self.inner.compacted_revision().await
    }
    async fn get(&self, key: &str, revision: i64) -> store::Result<Option<KeyValue>> {
        match self.inner.get(key, revision).await? {
            Some(kv) => self.open_kv(kv).map(Some),
            None => Ok(None),
        }
    }
    async fn list(&self, opts: ListOptions<'_>) -> store::Result<ListResult> {
        let mut r = self.inner.list(opts).await?;
        r.kvs = r
            .kvs
            .into_iter()
            .map(|kv| self.open_kv(kv))
            .collect::<Result<_, _>>()?;
        Ok(r)
    }
    async fn create(&self, key: &str, value: Vec<u8>) -> store::Result<i64> {
        self.inner.create(key, self.enc.seal(key, value)).await
    }
    async fn update(&self, key: &str, value: Vec<u8>, expected: i64) -> store::Result<i64> {
        match self
            .inner
            .update(key, self.enc.seal(key, value), expected)
            .await
        {
            Err(StoreError::Conflict { key, current }) => Err(StoreError::Conflict {
                current: match current {
                    Some(c) => Some(Box::new(self.open_kv(*c)?)),
                    None => None,
                },
                key,
            }),
            r => r,
        }
    }
    async fn delete(&self, key: &str, expected: Option<i64>) -> store::Result<(i64, KeyValue)> {
        match self.inner.delete(key, expected).await {
            Ok((rev, kv)) => Ok((rev, self.open_kv(kv)?)),
            Err(StoreError::Conflict { key, current }) => Err(StoreError::Conflict {
                current: match current {
                    Some(c) => Some(Box::new(self.open_kv(*c)?)),
                    None => None,
                },
                key,
            }),
            Err(e) => Err(e),
        }
    }
    async fn watch(&self, prefix: &str, after: i64) -> store::Result<WatchStream> {
        let enc = self.enc.clone();
        let open = move |mut kv: KeyValue| -> Result<KeyValue, StoreError> {
            kv.value = enc
                .open(&kv.key, std::mem::take(&mut kv.value))
                .map_err(backend)?
                .0;
            Ok(kv)
        };
        let s = self.inner.watch(prefix, after).await?;
        Ok(Box::pin(s.map(move |batch| {
            batch?
                .into_iter()
                .map(|e| {
                    Ok(match e {
                        Event::Put { kv, prev } => Event::Put {
                            kv: open(kv)?,
                            prev: prev.map(&open).transpose()?,
                        },
                        Event::Delete { revision, prev } => Event::Delete {
                            revision,
                            prev: open(prev)?,
                        },
                    })
                })
                .collect()
        })))
    }
    async fn compact(&self, revision: i64) -> store::Result<()> {
        self.inner.compact(revision).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(n: usize, fill: u8) -> String {
        base64::engine::general_purpose::STANDARD.encode(vec![fill; n])
    }

    fn config(providers: &str) -> Encryption {
        Encryption::parse(&format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets, '*.apps']\n  providers:\n{providers}"
        ))
        .unwrap()
    }

    #[test]
    fn every_provider_round_trips_and_only_with_its_key() {
        for (p, n) in [
            ("aescbc", 16),
            ("aescbc", 24),
            ("aescbc", 32),
            ("aesgcm", 16),
            ("aesgcm", 24),
            ("aesgcm", 32),
            ("secretbox", 32),
        ] {
            let e = config(&format!(
                "  - {p}:\n      keys: [{{name: k1, secret: {}}}]\n",
                b64(n, 7)
            ));
            let key = "/registry/core/secrets/ns/s";
            let sealed = e.seal(key, b"{\"data\":\"c2VjcmV0\"}".to_vec());
            assert!(sealed.starts_with(format!("k8s:enc:{p}:v1:k1:").as_bytes()));
            assert!(!String::from_utf8_lossy(&sealed).contains("c2VjcmV0"));
            let (plain, stale) = e.open(key, sealed.clone()).unwrap();
            assert_eq!(plain, b"{\"data\":\"c2VjcmV0\"}");
            assert!(!stale);
            // Another key of the same name does not open it.
            let other = config(&format!(
                "  - {p}:\n      keys: [{{name: k1, secret: {}}}]\n",
                b64(n, 8)
            ));
            assert!(other.open(key, sealed.clone()).is_err(), "{p}/{n}");
            // A flipped byte does not open (cbc may, by luck of padding, so only AEADs).
            if p != "aescbc" {
                let mut bad = sealed.clone();
                let last = bad.len() - 1;
                bad[last] ^= 1;
                assert!(e.open(key, bad).is_err());
                // aesgcm binds the value to its key.
                if p == "aesgcm" {
                    assert!(e.open("/registry/core/secrets/ns/t", sealed).is_err());
                }
            }
            // Truncated and junk values are errors, not panics.
            for junk in [
                format!("k8s:enc:{p}:v1:k1:").into_bytes(),
                format!("k8s:enc:{p}:v1:k1:abc").into_bytes(),
                b"k8s:enc:".to_vec(),
            ] {
                assert!(e.open(key, junk).is_err());
            }
        }
    }

    /// Mutated stored values never panic; an AEAD provider opens nothing but the original.
    #[test]
    fn mutated_values_are_refused_without_panicking() {
        let mut x: u64 = 0x1234_5678_9abc_def1;
        let mut next = |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n.max(1) as u64) as usize
        };
        let key = "/registry/core/secrets/ns/s";
        for (p, n) in [("aescbc", 32), ("aesgcm", 32), ("secretbox", 32)] {
            let e = config(&format!(
                "  - {p}:\n      keys: [{{name: k1, secret: {}}}]\n",
                b64(n, 3)
            ));
            let plain = b"{\"data\":{\"k\":\"dg==\"}}".to_vec();
            let sealed = e.seal(key, plain.clone());
            for _ in 0..2000 {
                let mut b = sealed.clone();
                let at = next(b.len());
                match next(3) {
                    0 => b[at] ^= 1 << next(8),
                    1 => b.truncate(at),
                    _ => {
                        b.remove(at);
                    }
                }
                if let Ok((got, _)) = e.open(key, b) {
                    if p != "aescbc" {
                        assert_eq!(got, plain, "{p}");
                    }
                }
            }
        }
    }

    #[test]
    fn rotation_reads_old_keys_as_stale_and_identity_reads_plain() {
        let old = config(&format!(
            "  - aescbc:\n      keys: [{{name: old, secret: {}}}]\n",
            b64(32, 1)
        ));
        let key = "/registry/core/secrets/ns/s";
        let sealed = old.seal(key, b"v".to_vec());
        let new = config(&format!(
            "  - secretbox:\n      keys: [{{name: new, secret: {}}}]\n  - aescbc:\n      keys: [{{name: old, secret: {}}}]\n  - identity: {{}}\n",
            b64(32, 2),
            b64(32, 1)
        ));
        assert_eq!(new.open(key, sealed).unwrap(), (b"v".to_vec(), true));
        assert_eq!(
            new.open(key, b"plain".to_vec()).unwrap(),
            (b"plain".to_vec(), true)
        );
        // Without identity, plain values are refused; uncovered keys pass untouched.
        assert!(old.open(key, b"plain".to_vec()).is_err());
        assert_eq!(
            old.open("/registry/core/configmaps/ns/c", b"x".to_vec())
                .unwrap(),
            (b"x".to_vec(), false)
        );
        assert!(old
            .seal("/registry/apps/deployments/ns/d", b"x".to_vec())
            .starts_with(b"k8s:enc:aescbc:v1:old:"));
    }

    #[test]
    fn bad_configurations_say_what_is_wrong() {
        let head = "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n";
        for (body, says) in [
            ("resources: []", "resources: Required value"),
            ("resources:\n- resources: [secrets]\n  providers: []", "providers: Required value"),
            (
                "resources:\n- resources: [secrets]\n  providers:\n  - aescbc: {keys: [{name: k, secret: c2hvcnQ=}]}",
                "the key is 5 bytes; it must be 16, 24, 32 bytes",
            ),
            (
                "resources:\n- resources: [secrets]\n  providers:\n  - aescbc: {keys: [{name: k, secret: '!!'}]}",
                "not base64",
            ),
            (
                "resources:\n- resources: [secrets]\n  providers:\n  - kms: {name: x}",
                "KMS providers need a KMS plugin",
            ),
            (
                "resources:\n- resources: [secrets]\n  providers:\n  - rot13: {}",
                "unknown provider \"rot13\"",
            ),
            (
                "resources:\n- resources: [secrets]\n  providers:\n  - {identity: {}, aescbc: {}}",
                "exactly one provider",
            ),
            ("resources:\n- resources: [secrets.*]\n  providers:\n  - identity: {}", "wildcard group"),
        ] {
            let e = Encryption::parse(&format!("{head}{body}")).err().unwrap().to_string();
            assert!(e.contains(says), "{body}: {e}");
        }
        let e = Encryption::parse("kind: Secret\n")
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("is not an apiserver.config.k8s.io/v1 EncryptionConfiguration"),
            "{e}"
        );
    }
}
