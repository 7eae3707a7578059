//! Joining a cluster: the token (`K10<sha256 of the CA's DER>::server:<secret>`, k3s's
//! shape) pins the cluster CA. The agent fetches `/cacerts` without trusting the server,
//! refuses to go on unless the CA's hash is the token's, then — over TLS pinned to that CA —
//! sends certificate signing requests for its client certificate (`system:node:<name>`)
//! and its kubelet serving certificate, authenticated by the token's secret. The keys never
//! leave the node. Everything is kept under `<data-dir>/tls` and reused while the CA is the
//! same.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;

/// A parsed join token.
#[derive(Debug, Clone)]
pub struct Token {
    /// The hex SHA-256 of the CA certificate's DER.
    pub ca_hash: String,
    pub secret: String,
}

impl Token {
    pub fn parse(s: &str) -> Result<Token> {
        let s = s.trim();
        let Some(rest) = s.strip_prefix("K10") else {
            bail!("the token is not a berth join token: it must look like K10<CA hash>::server:<secret> (as `berth server` writes it to <data-dir>/tls/token)");
        };
        let Some((hash, secret)) = rest.split_once("::server:") else {
            bail!("the token is not a berth join token: expected K10<CA hash>::server:<secret>");
        };
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("the token's CA hash {hash:?} is not a hex SHA-256");
        }
        if secret.is_empty() {
            bail!("the token has no secret after ::server:");
        }
        Ok(Token {
            ca_hash: hash.to_ascii_lowercase(),
            secret: secret.to_string(),
        })
    }
}

/// The node's credentials, in PEM.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub ca: String,
    pub client_cert: String,
    pub client_key: String,
    pub serving_cert: String,
    pub serving_key: String,
}

fn ca_der_hash(ca_pem: &str) -> Option<String> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).ok()?;
    let d = ring::digest::digest(&ring::digest::SHA256, &der);
    Some(d.as_ref().iter().map(|b| format!("{b:02x}")).collect())
}

/// Accepts any server certificate: only for fetching the CA, which is then checked
/// against the token's hash before anything is sent.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls_pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls_pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// `host:port` of an `https://HOST:PORT` URL.
pub fn host_port(server: &str) -> Result<(String, u16)> {
    let rest = server
        .strip_prefix("https://")
        .ok_or_else(|| anyhow!("--server {server}: expected https://HOST:PORT"))?;
    let hp = rest.split('/').next().unwrap_or_default();
    let (host, port) = match hp.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
            h.trim_start_matches('[').trim_end_matches(']').to_string(),
            p.parse::<u16>()
                .map_err(|_| anyhow!("--server {server}: bad port {p:?}"))?,
        ),
        _ => (
            hp.trim_start_matches('[').trim_end_matches(']').to_string(),
            6443,
        ),
    };
    if host.is_empty() {
        bail!("--server {server}: no host");
    }
    Ok((host, port))
}

/// One HTTP/1.1 request over TLS with `tls`; returns (status, body).
async fn request(
    tls: Arc<rustls::ClientConfig>,
    server: &str,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Result<(u16, Vec<u8>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (host, port) = host_port(server)?;
    let tcp = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| anyhow!("connecting to {server}: timed out"))?
    .with_context(|| format!("connecting to {server}"))?;
    let name = rustls_pki_types::ServerName::try_from(host.clone())
        .map_err(|_| anyhow!("{host} is not a valid server name"))?;
    let mut s = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .with_context(|| format!("TLS with {server}"))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await?;
    s.write_all(body).await?;
    s.flush().await?;
    let mut buf = Vec::new();
    // A server may close without close_notify; what was read is what counts.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(30), s.read_to_end(&mut buf))
        .await
        .map_err(|_| anyhow!("{server}{path}: no answer in 30 s"))?;
    let mut hs = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut hs);
    let n = match resp.parse(&buf) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => bail!("{server}{path}: not an HTTP answer"),
    };
    let status = resp.code.unwrap_or(0);
    let chunked = resp.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("transfer-encoding")
            && String::from_utf8_lossy(h.value).contains("chunked")
    });
    let mut body = buf[n..].to_vec();
    if chunked {
        body = dechunk(&body);
    }
    Ok((status, body))
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = b.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&b[..i])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 || b.len() < i + 2 + size {
            break;
        }
        out.extend_from_slice(&b[i + 2..i + 2 + size]);
        b = &b[(i + 4 + size).min(b.len())..];
    }
    out
}

/// A client configuration that trusts only `ca_pem`.
pub fn pinned(ca_pem: &str) -> Result<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.context("the cluster CA")?)?;
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Fetches the cluster CA and checks it against the token's pin.
pub async fn fetch_ca(server: &str, token: &Token) -> Result<String> {
    let insecure = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider())))
        .with_no_client_auth();
    let (status, body) = request(Arc::new(insecure), server, "GET", "/cacerts", &[], b"").await?;
    if status != 200 {
        bail!("{server}/cacerts answered {status}: is this a berth server?");
    }
    let ca = String::from_utf8(body).context("the server's CA is not PEM")?;
    let hash =
        ca_der_hash(&ca).ok_or_else(|| anyhow!("the server's CA is not a PEM certificate"))?;
    if hash != token.ca_hash {
        bail!(
            "the server's CA certificate has hash {hash}, but the token pins {}: refusing to join (wrong token, or not the server it was made for)",
            token.ca_hash
        );
    }
    Ok(ca)
}

/// The credentials under `dir`, if they are there and issued by `ca`.
fn load(dir: &Path, ca: &str) -> Option<Credentials> {
    let r = |n: &str| std::fs::read_to_string(dir.join(n)).ok();
    let c = Credentials {
        ca: r("ca.crt")?,
        client_cert: r("client.crt")?,
        client_key: r("client.key")?,
        serving_cert: r("serving.crt")?,
        serving_key: r("serving.key")?,
    };
    (c.ca == ca).then_some(c)
}

fn write(dir: &Path, name: &str, data: &str, mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(data.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    Ok(())
}

/// Joins (or reuses what an earlier join left under `dir`).
pub async fn join(
    server: &str,
    token: &Token,
    node_name: &str,
    addresses: &[String],
    dir: &PathBuf,
) -> Result<Credentials> {
    // A server not reachable yet (starting, or the network still coming up) is waited for,
    // as k3s's agent does; a server that answers wrongly is not.
    let mut tries = 0u32;
    let ca = loop {
        match fetch_ca(server, token).await {
            Ok(ca) => break ca,
            Err(e)
                if e.chain()
                    .any(|c| c.downcast_ref::<std::io::Error>().is_some())
                    || e.to_string().ends_with("timed out") =>
            {
                if tries.is_multiple_of(10) {
                    eprintln!("berth agent: waiting for the server: {e:#}");
                }
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    };
    if let Some(c) = load(dir, &ca) {
        return Ok(c);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let client_key = rcgen::KeyPair::generate()?;
    let serving_key = rcgen::KeyPair::generate()?;
    let csr = |key: &rcgen::KeyPair| -> Result<String> {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("system:node:{node_name}"),
        );
        Ok(p.serialize_request(key)?.pem()?)
    };
    let body = serde_json::json!({
        "nodeName": node_name,
        "addresses": addresses,
        "clientCsr": csr(&client_key)?,
        "servingCsr": csr(&serving_key)?,
    });
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("node:{}", token.secret));
    let (status, answer) = request(
        Arc::new(pinned(&ca)?),
        server,
        "POST",
        "/v1-berth/node-certificates",
        &[
            ("Authorization", format!("Basic {auth}")),
            ("Content-Type", "application/json".into()),
        ],
        body.to_string().as_bytes(),
    )
    .await?;
    if status == 401 {
        bail!("the server refused the token's secret (401): the token is not this cluster's");
    }
    let v: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
    if status != 200 {
        bail!(
            "the server refused to sign the node's certificates ({status}): {}",
            v["message"].as_str().unwrap_or("no reason given")
        );
    }
    let field = |k: &str| -> Result<String> {
        v[k].as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("the server's answer lacks {k}"))
    };
    let c = Credentials {
        ca,
        client_cert: field("clientCertificate")?,
        client_key: client_key.serialize_pem(),
        serving_cert: field("servingCertificate")?,
        serving_key: serving_key.serialize_pem(),
    };
    write(dir, "client.key", &c.client_key, 0o600)?;
    write(dir, "serving.key", &c.serving_key, 0o600)?;
    write(dir, "client.crt", &c.client_cert, 0o644)?;
    write(dir, "serving.crt", &c.serving_cert, 0o644)?;
    write(dir, "ca.crt", &c.ca, 0o644)?;
    Ok(c)
}

/// The kubeconfig the agent's client uses.
pub fn kubeconfig(server: &str, c: &Credentials) -> String {
    let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: {server}\n  name: default\ncontexts:\n- context:\n    cluster: default\n    user: node\n  name: default\ncurrent-context: default\nusers:\n- name: node\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
        b(&c.ca),
        b(&c.client_cert),
        b(&c.client_key)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        let h = "a".repeat(64);
        let t = Token::parse(&format!("K10{h}::server:s3cret\n")).unwrap();
        assert_eq!(t.ca_hash, h);
        assert_eq!(t.secret, "s3cret");
        for bad in [
            "",
            "s3cret",
            "K10abc::server:x",
            &format!("K10{h}::server:"),
            &format!("K10{h}:x"),
        ] {
            assert!(Token::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn servers() {
        assert_eq!(
            host_port("https://10.0.0.1:6443").unwrap(),
            ("10.0.0.1".into(), 6443)
        );
        assert_eq!(host_port("https://h").unwrap(), ("h".into(), 6443));
        assert_eq!(host_port("https://[::1]:7").unwrap(), ("::1".into(), 7));
        assert!(host_port("http://h:1").is_err());
    }
}
