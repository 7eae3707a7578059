//! Joining a cluster: the token (`K10<sha256 of the CA's DER>::server:<secret>`, k3s's
//! shape, or `K10<hash>::<id>.<secret>` for a bootstrap token from `berth token create`)
//! pins the cluster CA. The agent fetches `/cacerts` without trusting the server, refuses
//! to go on unless the CA's hash is the token's, then — over TLS pinned to that CA —
//! asks for its client certificate (`system:node:<name>` in `system:nodes`) through a
//! certificates.k8s.io CertificateSigningRequest authenticated by the token, and for its
//! kubelet serving certificate the same way as the node itself. The server approves and
//! signs both. The keys never leave the node. Everything is kept under `<data-dir>/tls`
//! and reused while the CA is the same and the client certificate has more than 30% of
//! its life left; after that the agent renews it as the node, without the token.

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
            bail!("the token is not a berth join token: it must look like K10<CA hash>::server:<secret> (as `berth server` writes it to <data-dir>/tls/token) or K10<CA hash>::<id>.<secret> (from `berth token create`)");
        };
        let Some((hash, secret)) = rest.split_once("::") else {
            bail!("the token is not a berth join token: expected K10<CA hash>::server:<secret> or K10<CA hash>::<id>.<secret>");
        };
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("the token's CA hash {hash:?} is not a hex SHA-256");
        }
        let secret = match secret.strip_prefix("server:") {
            Some(s) => s,
            None => {
                let ok = secret.split_once('.').is_some_and(|(id, sec)| {
                    let low = |x: &str, n| {
                        x.len() == n
                            && x.bytes()
                                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                    };
                    low(id, 6) && low(sec, 16)
                });
                if !ok {
                    bail!("the token's secret must be server:<secret> or a bootstrap token <6 characters>.<16 characters> of [a-z0-9]");
                }
                secret
            }
        };
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
pub async fn request(
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
    let pinned_ca = Arc::new(pinned(&ca)?);
    if let Some(c) = load(dir, &ca) {
        if !needs_renewal(&c.client_cert) {
            return Ok(c);
        }
        match renew(server, &ca, &c, node_name, addresses, dir).await {
            Ok(c) => return Ok(c),
            Err(e) => eprintln!(
                "berth agent: renewing the node's certificates: {e:#}; asking again with the token"
            ),
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let client_key = rcgen::KeyPair::generate()?;
    let auth = vec![("Authorization", format!("Bearer {}", token.secret))];
    let client_cert = certificate(
        pinned_ca,
        server,
        &auth,
        &csr(&client_key, node_name, &[])?,
        CLIENT_SIGNER,
        &["digital signature", "client auth"],
    )
    .await?;
    issue_serving(
        server,
        &ca,
        client_cert,
        client_key.serialize_pem(),
        node_name,
        addresses,
        dir,
    )
    .await
}

const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
const SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";

/// A PEM certificate request for the node: CN `system:node:<name>`, O `system:nodes`,
/// and the SANs of a serving certificate.
fn csr(key: &rcgen::KeyPair, node_name: &str, sans: &[String]) -> Result<String> {
    let mut p = rcgen::CertificateParams::new(sans.to_vec())?;
    p.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("system:node:{node_name}"),
    );
    p.distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:nodes");
    Ok(p.serialize_request(key)?.pem()?)
}

/// When a certificate is due for renewal (70% into its life; the kubelet renews at
/// 70–90%), as Unix seconds; `None` if it cannot be read.
fn renewal_time(cert_pem: &str) -> Option<i64> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    let v = cert.validity();
    let (from, to) = (v.not_before.timestamp(), v.not_after.timestamp());
    Some(to - (to - from) * 3 / 10)
}

fn now_secs() -> i64 {
    (timefmt::now_nanos() / 1_000_000_000) as i64
}

/// Whether a certificate has less than 30% of its life left (or cannot be read).
pub fn needs_renewal(cert_pem: &str) -> bool {
    renewal_time(cert_pem).is_none_or(|t| now_secs() >= t)
}

/// When a certificate should be renewed, as seconds from now (0: already).
pub fn renew_in(cert_pem: &str) -> u64 {
    renewal_time(cert_pem).map_or(0, |t| (t - now_secs()).max(0) as u64)
}

/// A client configuration that trusts only `ca_pem` and presents the node's certificate.
fn as_node(ca_pem: &str, cert: &str, key: &str) -> Result<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.context("the cluster CA")?)?;
    }
    let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<_, _>>()
        .context("the node's certificate")?;
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes())
        .context("the node's key")?;
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)?)
}

/// Renews the node's certificates as the node (its current client certificate).
pub async fn renew(
    server: &str,
    ca: &str,
    current: &Credentials,
    node_name: &str,
    addresses: &[String],
    dir: &Path,
) -> Result<Credentials> {
    let tls = Arc::new(as_node(ca, &current.client_cert, &current.client_key)?);
    let client_key = rcgen::KeyPair::generate()?;
    let client_cert = certificate(
        tls,
        server,
        &[],
        &csr(&client_key, node_name, &[])?,
        CLIENT_SIGNER,
        &["digital signature", "client auth"],
    )
    .await?;
    issue_serving(
        server,
        ca,
        client_cert,
        client_key.serialize_pem(),
        node_name,
        addresses,
        dir,
    )
    .await
}

/// With the client certificate in hand, asks for the serving one as the node, then keeps
/// both.
async fn issue_serving(
    server: &str,
    ca: &str,
    client_cert: String,
    client_key: String,
    node_name: &str,
    addresses: &[String],
    dir: &Path,
) -> Result<Credentials> {
    let tls = Arc::new(as_node(ca, &client_cert, &client_key)?);
    let serving_key = rcgen::KeyPair::generate()?;
    let mut sans = vec![node_name.to_string()];
    for a in addresses {
        if !sans.contains(a) {
            sans.push(a.clone());
        }
    }
    let serving_cert = certificate(
        tls,
        server,
        &[],
        &csr(&serving_key, node_name, &sans)?,
        SERVING_SIGNER,
        &["digital signature", "key encipherment", "server auth"],
    )
    .await?;
    let c = Credentials {
        ca: ca.to_string(),
        client_cert,
        client_key,
        serving_cert,
        serving_key: serving_key.serialize_pem(),
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write(dir, "client.key", &c.client_key, 0o600)?;
    write(dir, "serving.key", &c.serving_key, 0o600)?;
    write(dir, "client.crt", &c.client_cert, 0o644)?;
    write(dir, "serving.crt", &c.serving_cert, 0o644)?;
    write(dir, "ca.crt", &c.ca, 0o644)?;
    Ok(c)
}

/// Creates a CertificateSigningRequest and waits until the server issues it; returns the
/// certificate (PEM).
async fn certificate(
    tls: Arc<rustls::ClientConfig>,
    server: &str,
    auth: &[(&str, String)],
    request_pem: &str,
    signer: &str,
    usages: &[&str],
) -> Result<String> {
    const CSRS: &str = "/apis/certificates.k8s.io/v1/certificatesigningrequests";
    let b64 = base64::engine::general_purpose::STANDARD;
    let body = serde_json::json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"generateName": "node-csr-"},
        "spec": {"request": b64.encode(request_pem), "signerName": signer, "usages": usages},
    });
    let mut headers = auth.to_vec();
    headers.push(("Content-Type", "application/json".into()));
    let (status, answer) = request(
        tls.clone(),
        server,
        "POST",
        CSRS,
        &headers,
        body.to_string().as_bytes(),
    )
    .await?;
    let v: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
    match status {
        201 => {}
        401 => bail!("the server refused the token (401 Unauthorized): it is not this cluster's, has expired, or may not authenticate"),
        _ => bail!(
            "the server refused the certificate signing request ({status}): {}",
            v["message"].as_str().unwrap_or("no reason given")
        ),
    }
    let name = v["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (status, answer) = request(
            tls.clone(),
            server,
            "GET",
            &format!("{CSRS}/{name}"),
            auth,
            b"",
        )
        .await?;
        let v: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
        if status != 200 {
            bail!(
                "reading certificate signing request {name} ({status}): {}",
                v["message"].as_str().unwrap_or("no reason given")
            );
        }
        if let Some(c) = v.pointer("/status/certificate").and_then(|c| c.as_str()) {
            let pem = b64
                .decode(c)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    anyhow!("certificate signing request {name}: the certificate is not PEM")
                })?;
            return Ok(pem);
        }
        for cond in v
            .pointer("/status/conditions")
            .and_then(|c| c.as_array())
            .into_iter()
            .flatten()
        {
            if cond["type"] == "Denied" || cond["type"] == "Failed" {
                bail!(
                    "certificate signing request {name} {}: {}",
                    cond["type"].as_str().unwrap_or_default().to_lowercase(),
                    cond["message"].as_str().unwrap_or_default()
                );
            }
        }
        if std::time::Instant::now() > deadline {
            bail!("certificate signing request {name} was not issued within 60 s (approve it with `kubectl certificate approve {name}`)");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The node's certificates as its TLS stacks read them at every handshake: replaced in
/// place when renewed, so the API client and the kubelet API carry on without a restart.
#[derive(Clone)]
pub struct Live {
    client: Arc<std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>>,
    serving: Arc<std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>>,
}

fn certified(cert: &str, key: &str) -> Result<Arc<rustls::sign::CertifiedKey>> {
    use rustls_pki_types::pem::PemObject;
    let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<_, _>>()
        .context("a node certificate")?;
    let key =
        rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).context("a node key")?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| anyhow!("a node key: {e}"))?;
    Ok(Arc::new(rustls::sign::CertifiedKey::new(certs, signing)))
}

#[derive(Debug)]
struct ClientCert(Arc<std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>>);

impl rustls::client::ResolvesClientCert for ClientCert {
    fn resolve(
        &self,
        _: &[&[u8]],
        _: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

#[derive(Debug)]
struct ServingCert(Arc<std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>>);

impl rustls::server::ResolvesServerCert for ServingCert {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

impl Live {
    pub fn new(c: &Credentials) -> Result<Live> {
        Ok(Live {
            client: Arc::new(std::sync::RwLock::new(certified(
                &c.client_cert,
                &c.client_key,
            )?)),
            serving: Arc::new(std::sync::RwLock::new(certified(
                &c.serving_cert,
                &c.serving_key,
            )?)),
        })
    }

    /// Puts renewed certificates in use for the next handshakes.
    pub fn update(&self, c: &Credentials) -> Result<()> {
        let (client, serving) = (
            certified(&c.client_cert, &c.client_key)?,
            certified(&c.serving_cert, &c.serving_key)?,
        );
        *self.client.write().unwrap_or_else(|e| e.into_inner()) = client;
        *self.serving.write().unwrap_or_else(|e| e.into_inner()) = serving;
        Ok(())
    }

    pub fn serving_resolver(&self) -> Arc<dyn rustls::server::ResolvesServerCert> {
        Arc::new(ServingCert(self.serving.clone()))
    }

    /// The API client, presenting the node's current client certificate.
    pub fn client(&self, config: kube::Config, ca: &str) -> Result<kube::Client> {
        use kube::client::ConfigExt;
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
            roots.add(c.context("the cluster CA")?)?;
        }
        let mut tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_cert_resolver(Arc::new(ClientCert(self.client.clone())));
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.enforce_http(false);
        let https = hyper_rustls::HttpsConnector::from((http, Arc::new(tls)));
        let inner =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build::<_, kube::client::Body>(https);
        let service = tower::ServiceBuilder::new()
            .layer(config.base_uri_layer())
            .option_layer(config.auth_layer()?)
            .map_err(
                |e: hyper_util::client::legacy::Error| -> Box<dyn std::error::Error + Send + Sync> {
                    Box::new(e)
                },
            )
            .service(inner);
        Ok(kube::Client::new(service, config.default_namespace))
    }
}

/// Renews the node's certificates whenever 70% of the client certificate's life has
/// passed, putting the new ones in use at once.
pub async fn keep_renewed(
    server: String,
    public_server: String,
    mut current: Credentials,
    node_name: String,
    addresses: Vec<String>,
    dir: PathBuf,
    live: Live,
) {
    loop {
        let wait = renew_in(&current.client_cert);
        tokio::time::sleep(std::time::Duration::from_secs(wait.max(1))).await;
        match renew(&server, &current.ca, &current, &node_name, &addresses, &dir).await {
            Ok(c) => match live.update(&c) {
                Ok(()) => {
                    eprintln!("berth agent: renewed the node's certificates");
                    let _ = std::fs::write(
                        dir.parent().unwrap_or(&dir).join("kubelet.kubeconfig"),
                        kubeconfig(&public_server, &c),
                    );
                    current = c;
                }
                Err(e) => eprintln!("berth agent: the renewed certificates: {e:#}"),
            },
            Err(e) => {
                eprintln!("berth agent: renewing the node's certificates: {e:#}");
                tokio::time::sleep(std::time::Duration::from_secs(10)).await;
            }
        }
    }
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
            &format!("K10{h}::abcdef.short"),
            &format!("K10{h}::ABCDEF.0123456789abcdef"),
        ] {
            assert!(Token::parse(bad).is_err(), "{bad}");
        }
        let t = Token::parse(&format!("K10{h}::abcdef.0123456789abcdef")).unwrap();
        assert_eq!(t.secret, "abcdef.0123456789abcdef");
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
