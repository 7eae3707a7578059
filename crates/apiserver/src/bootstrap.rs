//! The bootstrap data servers of one cluster share through the store, as k3s shares it:
//! the cluster CA, the service-account signing key and the join token, sealed with
//! AES-256-GCM (`encryption::aesgcm_seal`) under a key derived from the token's secret
//! (PBKDF2-HMAC-SHA256). The first server saves them; a server started with `--token` on
//! the same store restores them before it loads its PKI, so it needs nothing but the
//! token, and the store never holds the keys in clear.

use std::path::Path;

use serde_json::Value;

const FILES: &[&str] = &[
    "ca.crt",
    "ca.key",
    "service-account.key",
    "token",
    ENCRYPTION_CONFIG,
];

/// The server's copy of the EncryptionConfiguration (`--encryption-provider-config`) in
/// its TLS dir: shared with the other servers, so that every one reads what any writes.
pub const ENCRYPTION_CONFIG: &str = "encryption-config.yaml";
const ITERATIONS: u32 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("the store")]
    Store(#[from] store::StoreError),
    #[error("write {0}")]
    Write(String, #[source] std::io::Error),
    #[error("the cluster's bootstrap data does not decrypt with this token: it is not the cluster's token")]
    WrongToken,
    #[error("{0} holds another cluster's CA than the store's: remove {0} to join this cluster")]
    OtherCa(String),
    #[error("the store already holds a cluster: start this server with that cluster's --token")]
    OtherCluster,
}

/// The secret of a token as `--token` gives it: `K10<hash>::server:<secret>`, or the secret.
pub fn secret_of(token: &str) -> &str {
    let t = token.trim();
    t.rsplit_once("::server:").map_or(t, |(_, s)| s)
}

fn store_key(secret: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    let hex: String = d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("/bootstrap/{hex}")
}

fn cipher_key(secret: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        std::num::NonZeroU32::new(ITERATIONS).expect("a non-zero count"),
        b"berth bootstrap data",
        secret.as_bytes(),
        &mut out,
    );
    out
}

fn seal(secret: &str, plain: &[u8]) -> Vec<u8> {
    crate::encryption::aesgcm_seal(&cipher_key(secret), plain, b"")
}

fn open(secret: &str, data: &[u8]) -> Option<Vec<u8>> {
    crate::encryption::aesgcm_open(&cipher_key(secret), data, b"")
}

/// Whether the store holds any cluster's bootstrap data.
async fn any(store: &dyn store::Store) -> Result<bool, BootstrapError> {
    let l = store
        .list(store::ListOptions {
            prefix: "/bootstrap/",
            limit: 1,
            ..Default::default()
        })
        .await?;
    Ok(!l.kvs.is_empty())
}

/// Writes the cluster's files under `tls_dir` from the store, if the store has them for
/// this token; returns whether it did.
pub async fn restore(
    store: &dyn store::Store,
    tls_dir: &Path,
    secret: &str,
) -> Result<bool, BootstrapError> {
    let Some(kv) = store.get(&store_key(secret), 0).await? else {
        // Another token's data: not this cluster's token.
        if any(store).await? {
            return Err(BootstrapError::WrongToken);
        }
        return Ok(false);
    };
    restore_sealed(&kv.value, tls_dir, secret)?;
    Ok(true)
}

/// The cluster's bootstrap data as the store holds it (sealed), for a server joining over
/// the API (`GET /v1-berth/server-bootstrap`).
pub async fn sealed(
    store: &dyn store::Store,
    secret: &str,
) -> Result<Option<Vec<u8>>, BootstrapError> {
    Ok(store.get(&store_key(secret), 0).await?.map(|kv| kv.value))
}

/// Writes the cluster's files under `tls_dir` from sealed bootstrap data.
pub fn restore_sealed(sealed: &[u8], tls_dir: &Path, secret: &str) -> Result<(), BootstrapError> {
    let plain = open(secret, sealed).ok_or(BootstrapError::WrongToken)?;
    let files: Value = serde_json::from_slice(&plain).map_err(|_| BootstrapError::WrongToken)?;
    let ca = tls_dir.join("ca.crt");
    if let (Ok(local), Some(shared)) = (std::fs::read_to_string(&ca), files["ca.crt"].as_str()) {
        if local != shared {
            return Err(BootstrapError::OtherCa(tls_dir.display().to_string()));
        }
    }
    std::fs::create_dir_all(tls_dir)
        .map_err(|e| BootstrapError::Write(tls_dir.display().to_string(), e))?;
    for name in FILES {
        let Some(content) = files[*name].as_str() else {
            continue;
        };
        let path = tls_dir.join(name);
        let mode = if name.ends_with(".crt") { 0o644 } else { 0o600 };
        crate::pki::write_secret(&path, content.as_bytes(), mode).map_err(|e| {
            BootstrapError::Write(path.display().to_string(), std::io::Error::other(e))
        })?;
    }
    Ok(())
}

/// Saves the cluster's files for servers that will join with this token. The first
/// server's CA and keys stay; the encryption configuration is the latest a server was
/// started with.
pub async fn save(
    store: &dyn store::Store,
    tls_dir: &Path,
    secret: &str,
) -> Result<(), BootstrapError> {
    let key = store_key(secret);
    let local = |name: &str| std::fs::read_to_string(tls_dir.join(name)).ok();
    loop {
        let Some(kv) = store.get(&key, 0).await? else {
            if any(store).await? {
                return Err(BootstrapError::OtherCluster);
            }
            let mut files = serde_json::Map::new();
            for name in FILES {
                if let Some(content) = local(name) {
                    files.insert(name.to_string(), Value::String(content));
                }
            }
            let sealed = seal(
                secret,
                &serde_json::to_vec(&Value::Object(files)).unwrap_or_default(),
            );
            match store.create(&key, sealed).await {
                Ok(_) => return Ok(()),
                Err(store::StoreError::AlreadyExists(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        let plain = open(secret, &kv.value).ok_or(BootstrapError::WrongToken)?;
        let mut files: Value =
            serde_json::from_slice(&plain).map_err(|_| BootstrapError::WrongToken)?;
        let Some(config) = local(ENCRYPTION_CONFIG) else {
            return Ok(());
        };
        if files[ENCRYPTION_CONFIG].as_str() == Some(config.as_str()) {
            return Ok(());
        }
        files[ENCRYPTION_CONFIG] = Value::String(config);
        let sealed = seal(secret, &serde_json::to_vec(&files).unwrap_or_default());
        match store.update(&key, sealed, kv.mod_revision).await {
            Ok(_) => return Ok(()),
            Err(store::StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_data_opens_only_with_the_same_secret() {
        let s = seal("s3cret", b"{\"ca.crt\": \"x\"}");
        assert_eq!(open("s3cret", &s).unwrap(), b"{\"ca.crt\": \"x\"}");
        assert!(open("other", &s).is_none());
        assert!(open("s3cret", &s[..20]).is_none());
        assert_eq!(secret_of("K10abc::server:xyz\n"), "xyz");
        assert_eq!(secret_of("xyz"), "xyz");
        assert_ne!(store_key("a"), store_key("b"));
    }
}
