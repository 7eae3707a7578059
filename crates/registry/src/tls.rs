//! TLS for the registry (rustls with ring): a certificate chain and key in PEM files.

use std::io;
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub use rustls::ServerConfig;

/// A server configuration from `cert` (the chain, leaf first) and `key` (PKCS#8, PKCS#1 or
/// SEC1), both PEM.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    server_config_with_clients(cert, key, None)
}

/// As [`server_config`], asking clients for a certificate of `client_ca` (PEM): one who
/// presents such a certificate is known by it; others may still authenticate otherwise.
pub fn server_config_with_clients(
    cert: &Path,
    key: &Path,
    client_ca: Option<&[u8]>,
) -> Result<Arc<ServerConfig>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(pem) {
                roots
                    .add(c.map_err(|e| format!("the client CA: {e}"))?)
                    .map_err(|e| format!("the client CA: {e}"))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| format!("the client CA: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut cfg = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("the certificate and key: {e}"))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A TLS connection over `tcp` (the handshake happens on first use).
pub fn accept(
    cfg: Arc<ServerConfig>,
    tcp: TcpStream,
) -> io::Result<rustls::StreamOwned<rustls::ServerConnection, TcpStream>> {
    let conn = rustls::ServerConnection::new(cfg).map_err(io::Error::other)?;
    Ok(rustls::StreamOwned::new(conn, tcp))
}
