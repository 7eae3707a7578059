//! Trusting and reaching the cluster's registry with no configuration on the node: the
//! servers publish their registries' addresses in the `kube-public/berth-registry`
//! ConfigMap, and the agent keeps, for each, a Docker-style certs.d directory for its
//! engine (`<data-dir>/certs.d/<host:port>/`): the cluster CA (`ca.crt`) and the node's
//! own client certificate (`client.cert`, `client.key`), which the registry knows as the
//! node and RBAC lets pull. Renewed certificates are copied as they change.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;

/// The ConfigMap the servers publish their registries in.
const CONFIGMAP: &str = "berth-registry";
/// How often the published addresses and the node's certificates are looked at.
const PERIOD: Duration = Duration::from_secs(10);

/// The certs.d directory the engine reads (see `RegistryOptions::certs_dir`).
pub fn certs_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("certs.d")
}

/// Writes `content` to `path` unless it holds it already.
fn put(path: &Path, content: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if std::fs::read(path).is_ok_and(|c| c == content) {
        return Ok(());
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path)
}

/// One pass: the directory of each published registry, with the current certificates.
fn sync(certs: &Path, tls: &Path, addresses: &[String]) -> std::io::Result<()> {
    let ca = std::fs::read(tls.join("ca.crt"))?;
    let cert = std::fs::read(tls.join("client.crt"))?;
    let key = std::fs::read(tls.join("client.key"))?;
    for a in addresses {
        // A published address is `host:port`; anything else is not a directory name.
        if a.is_empty() || a.contains('/') || a.starts_with('.') {
            continue;
        }
        let d = certs.join(a);
        std::fs::create_dir_all(&d)?;
        put(&d.join("ca.crt"), &ca, 0o644)?;
        put(&d.join("client.cert"), &cert, 0o644)?;
        put(&d.join("client.key"), &key, 0o600)?;
    }
    Ok(())
}

/// Keeps the certs.d directories of the published registries, forever.
pub async fn follow(client: kube::Client, data_dir: PathBuf) {
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(client, "kube-public");
    let (certs, tls) = (certs_dir(&data_dir), data_dir.join("tls"));
    let mut said = false;
    loop {
        match api.get_opt(CONFIGMAP).await {
            Ok(Some(cm)) => {
                let addresses: Vec<String> = cm.data.unwrap_or_default().into_values().collect();
                if let Err(e) = sync(&certs, &tls, &addresses) {
                    eprintln!(
                        "berth agent: the registry's certificates under {}: {e}",
                        certs.display()
                    );
                }
            }
            Ok(None) => {}
            Err(e) if !said => {
                said = true;
                eprintln!("berth agent: reading where the cluster's registry is: {e}");
            }
            Err(_) => {}
        }
        tokio::time::sleep(PERIOD).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_per_published_registry() {
        let d = tempfile::tempdir().unwrap();
        let tls = d.path().join("tls");
        std::fs::create_dir_all(&tls).unwrap();
        for (n, c) in [
            ("ca.crt", "CA"),
            ("client.crt", "CERT"),
            ("client.key", "KEY"),
        ] {
            std::fs::write(tls.join(n), c).unwrap();
        }
        let certs = certs_dir(d.path());
        sync(&certs, &tls, &["10.0.0.1:5000".into(), "../x".into()]).unwrap();
        let r = |p: &str| std::fs::read_to_string(certs.join(p)).unwrap();
        assert_eq!(r("10.0.0.1:5000/ca.crt"), "CA");
        assert_eq!(r("10.0.0.1:5000/client.cert"), "CERT");
        assert_eq!(r("10.0.0.1:5000/client.key"), "KEY");
        assert!(!d.path().join("x").exists());
        // A renewed certificate is copied.
        std::fs::write(tls.join("client.crt"), "NEW").unwrap();
        sync(&certs, &tls, &["10.0.0.1:5000".into()]).unwrap();
        assert_eq!(r("10.0.0.1:5000/client.cert"), "NEW");
    }
}
