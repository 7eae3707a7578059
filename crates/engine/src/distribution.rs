//! The registry client: `pull` and `push` over the OCI distribution API, with Docker's token
//! authentication (realm/service/scope), Basic auth, manifest lists and OCI indexes with
//! platform selection, blob redirects, layers in parallel with retries and digests
//! verified, and https — or plain http for the registries configured insecure and for
//! loopback, as Docker allows.

use std::collections::BTreeMap;
use std::io::{self, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use image::digest::Digest;
use image::reference::Reference;
use rustls_pki_types::pem::PemObject;
use serde_json::{json, Value};

use crate::engine::{Engine, EngineError};

type Result<T> = std::result::Result<T, EngineError>;

fn failed(msg: impl Into<String>) -> EngineError {
    EngineError::Invalid(msg.into())
}

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// How the engine reaches registries.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// `host[:port]` reachable over plain http (`--insecure-registry`).
    pub insecure: Vec<String>,
    /// Per-registry TLS material, as /etc/docker/certs.d has it: `<dir>/<host[:port]>/*.crt`
    /// are CA certificates, and a `NAME.cert` with its `NAME.key` a client certificate.
    pub certs_dir: Option<PathBuf>,
    /// Blobs larger than this go up in chunks of this size (PATCH with Content-Range), a
    /// chunk that fails resumed where the registry says the upload stands; smaller ones in
    /// one request. 0: [`DEFAULT_CHUNK`].
    pub chunk_size: u64,
    /// `--allowed-registry`: when not empty, the only registries contacted (`host`, `host:port`
    /// or an IPv4 CIDR); anything else — Docker Hub included, and a token service or a blob
    /// redirect elsewhere — is refused before a connection is made.
    pub allowed: Vec<String>,
}

/// Whether `host` (`name[:port]`) is one of `allowed` (all are when it is empty).
pub fn registry_allowed(allowed: &[String], host: &str) -> bool {
    let bare = match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    let bare = bare.trim_start_matches('[').trim_end_matches(']');
    allowed.is_empty()
        || allowed.iter().any(|a| {
            let a_bare = a.trim_start_matches('[').trim_end_matches(']');
            a == host || a_bare == bare || in_cidr(a, bare)
        })
}

/// The upload chunk when none is configured.
pub const DEFAULT_CHUNK: u64 = 32 << 20;

/// Credentials for a registry.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
pub struct Credentials {
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub password: String,
}

/// A response: status, headers (lower-case names), the body.
struct Response {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Box<dyn Read + Send>,
}

impl Response {
    fn text(mut self, max: usize) -> String {
        let mut b = Vec::new();
        let _ = (&mut self.body).take(max as u64).read_to_end(&mut b);
        String::from_utf8_lossy(&b).into_owned()
    }

    /// The registry's error message, or the status.
    fn error(self, what: &str) -> EngineError {
        let status = self.status;
        let text = self.text(64 * 1024);
        let v: Value = serde_json::from_str(&text).unwrap_or_default();
        let msg = match v["errors"][0]["message"].as_str() {
            Some(m) => format!("{} ({})", m, v["errors"][0]["code"].as_str().unwrap_or("")),
            None => format!("HTTP {status}"),
        };
        match status {
            401 | 403 => failed(format!(
                "{what}: {msg}: authentication required or access denied"
            )),
            404 => EngineError::NoSuchImage(format!("{what}: {msg}")),
            _ => failed(format!("{what}: {msg}")),
        }
    }
}

/// Makes a request's body (and its length) afresh for each try.
type BodyFn<'a> = dyn FnMut() -> io::Result<Option<(Box<dyn Read>, u64)>> + 'a;

/// A connection to one registry for one repository: its scheme, credentials and token.
pub struct Session {
    host: String,
    scheme: Mutex<&'static str>,
    insecure: bool,
    creds: Option<Credentials>,
    auth: Mutex<Option<String>>,
    tls: Arc<rustls::ClientConfig>,
    repo: String,
    /// Scopes a token asks for besides the challenge's: `pull` on the repositories a push
    /// mounts blobs from.
    extra_scopes: Mutex<Vec<String>>,
    chunk: u64,
    allowed: Vec<String>,
}

/// What became of a blob pushed.
#[derive(Debug, PartialEq)]
enum Pushed {
    Sent,
    Exists,
    Mounted(String),
}

/// Progress messages for one blob as Docker's JSON stream has them, at most every 100 ms.
struct Progress<'a> {
    tx: &'a std::sync::mpsc::Sender<Value>,
    id: String,
    status: &'static str,
    total: u64,
    current: u64,
    last: std::time::Instant,
}

impl Progress<'_> {
    fn new<'a>(
        tx: &'a std::sync::mpsc::Sender<Value>,
        d: &Digest,
        status: &'static str,
        total: u64,
    ) -> Progress<'a> {
        Progress {
            tx,
            id: short(d),
            status,
            total,
            current: 0,
            // The first report goes out at once.
            last: std::time::Instant::now()
                .checked_sub(Duration::from_secs(1))
                .unwrap_or_else(std::time::Instant::now),
        }
    }

    /// Where the transfer stands now (it may go back, when a try starts over).
    fn at(&mut self, current: u64) {
        self.current = current;
        if self.last.elapsed() >= Duration::from_millis(100) || current == self.total {
            self.last = std::time::Instant::now();
            let _ = self.tx.send(json!({
                "status": self.status,
                "id": self.id,
                "progressDetail": {"current": current, "total": self.total},
                "progress": progress_bar(current, self.total),
            }));
        }
    }
}

/// Docker's progress text: `[=====>      ]  12.5MB/50MB`.
fn progress_bar(current: u64, total: u64) -> String {
    let width = 50;
    let filled = (current.min(total) * width).checked_div(total).unwrap_or(0) as usize;
    let mut bar = "=".repeat(filled);
    if filled < width as usize {
        bar.push('>');
        bar.push_str(&" ".repeat(width as usize - filled - 1));
    }
    format!("[{bar}] {}/{}", human_bytes(current), human_bytes(total))
}

fn human_bytes(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.3}GB", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1}MB", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1}kB", n / 1e3)
    } else {
        format!("{n}B")
    }
}

/// A reader that reports how far it has got.
struct Counting<'a, 'b, R> {
    inner: R,
    n: u64,
    progress: &'a mut Progress<'b>,
}

impl<R: Read> Read for Counting<'_, '_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        self.progress.at(self.n);
        Ok(n)
    }
}

/// Where blobs are known to be (see [`Engine::blob_sources`]), in the data root.
const SOURCES: &str = "distribution-sources.json";
static SOURCES_LOCK: Mutex<()> = Mutex::new(());

fn read_sources(path: &Path) -> BTreeMap<String, Vec<String>> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// The TLS client: the system's roots, and the registry's own CA when it has one.
/// With `verify` false (an insecure registry, as Docker treats one), any certificate is
/// accepted; the handshake's signatures are still checked.
fn tls_config(host: &str, opts: &RegistryOptions, verify: bool) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for bundle in [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
    ] {
        if let Ok(iter) = rustls_pki_types::CertificateDer::pem_file_iter(bundle) {
            for c in iter.flatten() {
                let _ = roots.add(c);
            }
        }
    }
    let mut dirs: Vec<PathBuf> = vec![
        Path::new("/etc/berth/certs.d").join(host),
        Path::new("/etc/docker/certs.d").join(host),
    ];
    if let Some(d) = &opts.certs_dir {
        dirs.insert(0, d.join(host));
    }
    let mut identity = None;
    for dir in dirs {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for path in entries {
            match path.extension().and_then(|x| x.to_str()) {
                Some("crt") => {
                    if let Ok(iter) = rustls_pki_types::CertificateDer::pem_file_iter(&path) {
                        for c in iter.flatten() {
                            let _ = roots.add(c);
                        }
                    }
                }
                // The first client certificate whose key is beside it, as Docker takes it.
                Some("cert") if identity.is_none() => identity = client_identity(&path),
                _ => {}
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("rustls default protocol versions");
    let builder = if verify {
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
    };
    let cfg = match identity {
        Some((chain, key)) => match builder.clone().with_client_auth_cert(chain, key) {
            Ok(cfg) => cfg,
            Err(_) => builder.with_no_client_auth(),
        },
        None => builder.with_no_client_auth(),
    };
    Arc::new(cfg)
}

/// A client certificate `NAME.cert` (PEM chain) with its key `NAME.key` beside it.
fn client_identity(
    cert: &Path,
) -> Option<(
    Vec<rustls_pki_types::CertificateDer<'static>>,
    rustls_pki_types::PrivateKeyDer<'static>,
)> {
    let chain: Vec<_> = rustls_pki_types::CertificateDer::pem_file_iter(cert)
        .ok()?
        .flatten()
        .collect();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(cert.with_extension("key")).ok()?;
    (!chain.is_empty()).then_some((chain, key))
}

/// The verifier for insecure registries: every certificate goes; signatures are checked.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `scheme://host[:port]/path` → (scheme, host[:port], path).
/// An image pull secret's `.dockerconfigjson` and legacy `.dockercfg` bytes.
pub type PullSecret = (Option<Vec<u8>>, Option<Vec<u8>>);

/// The credentials image pull secrets hold for `image`'s registry: each secret as its
/// `.dockerconfigjson` or legacy `.dockercfg` bytes, entries matched by host (Docker Hub's
/// names folded), `auth` preferred to `username`/`password`.
pub fn pull_secret_credentials(image: &str, secrets: &[PullSecret]) -> Vec<Credentials> {
    use ::base64::Engine as _;
    let first = image.split('/').next().unwrap_or_default();
    let domain = if image.contains('/')
        && (first.contains('.') || first.contains(':') || first == "localhost")
    {
        first.to_string()
    } else {
        "docker.io".to_string()
    };
    let mut out = Vec::new();
    for (json, legacy) in secrets {
        let cfg: Value = match (json, legacy) {
            (Some(b), _) => serde_json::from_slice::<Value>(b)
                .ok()
                .and_then(|v| v.get("auths").cloned())
                .unwrap_or_default(),
            (None, Some(b)) => serde_json::from_slice(b).unwrap_or_default(),
            _ => continue,
        };
        let Some(auths) = cfg.as_object() else {
            continue;
        };
        for (k, v) in auths {
            let host = k
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .split('/')
                .next()
                .unwrap_or_default();
            let host = if host == "index.docker.io" || host == "registry-1.docker.io" {
                "docker.io"
            } else {
                host
            };
            if host != domain {
                continue;
            }
            let (mut user, mut pass) = (
                v["username"].as_str().unwrap_or_default().to_string(),
                v["password"].as_str().unwrap_or_default().to_string(),
            );
            if let Some(a) = v["auth"].as_str() {
                if let Ok(d) = ::base64::engine::general_purpose::STANDARD.decode(a) {
                    if let Some((u, p)) = String::from_utf8_lossy(&d).split_once(':') {
                        user = u.to_string();
                        pass = p.to_string();
                    }
                }
            }
            out.push(Credentials {
                username: user,
                password: pass,
            });
        }
    }
    out
}

/// Whether `host` is an IPv4 address inside `cidr` (`10.0.0.0/8`): Docker's
/// `--insecure-registry` takes networks as well as hosts.
fn in_cidr(cidr: &str, host: &str) -> bool {
    let Some((net, bits)) = cidr.split_once('/') else {
        return false;
    };
    let (Ok(net), Ok(bits), Ok(ip)) = (
        net.parse::<std::net::Ipv4Addr>(),
        bits.parse::<u32>(),
        host.parse::<std::net::Ipv4Addr>(),
    ) else {
        return false;
    };
    if bits > 32 {
        return false;
    }
    let mask = if bits == 0 {
        0
    } else {
        u32::MAX << (32 - bits)
    };
    u32::from(net) & mask == u32::from(ip) & mask
}

fn split_url(url: &str) -> Option<(&str, &str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    Some((scheme, host, path))
}

/// `GET url` (http or https, the TLS trust as for registries), following up to five
/// redirects: the body (ADD of a URL).
pub fn fetch_url(url: &str, opts: &RegistryOptions) -> std::result::Result<Vec<u8>, String> {
    let mut url = url.to_string();
    for _ in 0..6 {
        let Some((scheme, host, _)) = split_url(&url) else {
            return Err(format!("bad URL {url}"));
        };
        if !matches!(scheme, "http" | "https") {
            return Err("only http:// and https:// URLs can be fetched".into());
        }
        let host = host.to_string();
        let tls = tls_config(&host, opts, true);
        let mut resp = send(&tls, &url, "GET", &[("Accept", "*/*".into())], None)
            .map_err(|e| e.to_string())?;
        match resp.status {
            200 => {
                let mut b = Vec::new();
                resp.body.read_to_end(&mut b).map_err(|e| e.to_string())?;
                return Ok(b);
            }
            301 | 302 | 303 | 307 | 308 => {
                let loc = resp
                    .headers
                    .get("location")
                    .cloned()
                    .ok_or("a redirect without Location")?;
                url = if loc.starts_with('/') {
                    format!("{scheme}://{host}{loc}")
                } else {
                    loc
                };
            }
            code => return Err(format!("HTTP {code}")),
        }
    }
    Err("too many redirects".into())
}

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// One request on a new connection.
fn send(
    tls: &Arc<rustls::ClientConfig>,
    url: &str,
    method: &str,
    headers: &[(&str, String)],
    body: Option<(&mut dyn Read, u64)>,
) -> io::Result<Response> {
    let (scheme, hostport, path) =
        split_url(url).ok_or_else(|| io::Error::other(format!("bad URL {url}")))?;
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || hostport.starts_with('[') => {
            (h.trim_matches(['[', ']']), p.parse().unwrap_or(443))
        }
        _ => (hostport, if scheme == "https" { 443 } else { 80 }),
    };
    use std::net::ToSocketAddrs;
    let addr = (host, port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::other(format!("{host}: no address")))?;
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(30))?;
    tcp.set_read_timeout(Some(Duration::from_secs(120)))?;
    tcp.set_nodelay(true)?;
    let mut stream: Box<dyn Stream> = if scheme == "https" {
        let name =
            rustls_pki_types::ServerName::try_from(host.to_string()).map_err(io::Error::other)?;
        let conn = rustls::ClientConnection::new(tls.clone(), name).map_err(io::Error::other)?;
        let mut s = rustls::StreamOwned::new(conn, tcp);
        // Handshake now, so that a plain-http server is found out here.
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock)?;
        }
        Box::new(s)
    } else {
        Box::new(tcp)
    };
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nUser-Agent: berth/{}\r\nConnection: close\r\n", env!("CARGO_PKG_VERSION"));
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    match &body {
        Some((_, len)) => head.push_str(&format!("Content-Length: {len}\r\n")),
        None if matches!(method, "POST" | "PUT" | "PATCH") => {
            head.push_str("Content-Length: 0\r\n")
        }
        None => {}
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if let Some((r, _)) = body {
        io::copy(r, &mut stream)?;
    }
    stream.flush()?;
    let mut r = BufReader::with_capacity(256 * 1024, stream);
    let (status, headers) = httpwire::read_response_head(&mut r)?;
    let body: Box<dyn Read + Send> = if method == "HEAD" {
        Box::new(io::empty())
    } else {
        Box::new(httpwire::Body::for_response(&headers, status, r))
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// `key="value",…` of a `WWW-Authenticate` header.
fn challenge_params(h: &str) -> (String, BTreeMap<String, String>) {
    let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
    let mut out = BTreeMap::new();
    let mut rest = rest.trim();
    while let Some((k, after)) = rest.split_once('=') {
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (v, next) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"').unwrap_or(q.len());
            (&q[..end], q.get(end + 1..).unwrap_or(""))
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        out.insert(k, v.to_string());
        rest = next.trim_start_matches(',').trim();
    }
    (scheme.to_ascii_lowercase(), out)
}

impl Session {
    /// A session with `repo` on the registry `host` (Docker Hub's name resolved).
    pub fn new(
        host: &str,
        repo: &str,
        creds: Option<Credentials>,
        opts: &RegistryOptions,
    ) -> Session {
        let host = if host == "docker.io" {
            "registry-1.docker.io"
        } else {
            host
        };
        let bare = host.rsplit_once(':').map_or(host, |(h, _)| h);
        let insecure = opts.insecure.iter().any(|i| i == host || in_cidr(i, bare))
            || matches!(bare, "localhost" | "127.0.0.1" | "[::1]" | "::1")
            || bare.starts_with("127.");
        Session {
            host: host.to_string(),
            scheme: Mutex::new("https"),
            insecure,
            creds,
            auth: Mutex::new(None),
            tls: tls_config(host, opts, !insecure),
            repo: repo.to_string(),
            extra_scopes: Mutex::new(Vec::new()),
            allowed: opts.allowed.clone(),
            chunk: if opts.chunk_size == 0 {
                DEFAULT_CHUNK
            } else {
                opts.chunk_size
            },
        }
    }

    /// Refuses a URL on a registry the daemon may not contact (`--allowed-registry`).
    fn check_allowed(&self, url: &str) -> Result<()> {
        let host = split_url(url)
            .map(|(_, h, _)| h.to_string())
            .unwrap_or_default();
        if registry_allowed(&self.allowed, &host) {
            return Ok(());
        }
        Err(EngineError::Invalid(format!(
            "{host}: this daemon may not contact that registry (--allowed-registry {})",
            self.allowed.join(", ")
        )))
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            return path.to_string();
        }
        format!(
            "{}://{}{path}",
            self.scheme.lock().unwrap_or_else(|e| e.into_inner()),
            self.host
        )
    }

    /// A request with the session's auth; a 401 gets a token (or Basic) and one retry. `body`
    /// makes the body afresh for each try.
    fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: &mut BodyFn,
    ) -> Result<Response> {
        for attempt in 0..3 {
            let url = self.url(path);
            self.check_allowed(&url)?;
            let mut hs: Vec<(&str, String)> = headers.to_vec();
            let same_host = split_url(&url).is_some_and(|(_, h, _)| h == self.host);
            if let (Some(a), true) = (
                self.auth.lock().unwrap_or_else(|e| e.into_inner()).clone(),
                same_host,
            ) {
                hs.push(("Authorization", a));
            }
            let mut b = body().map_err(|e| failed(e.to_string()))?;
            let sent = send(
                &self.tls,
                &url,
                method,
                &hs,
                b.as_mut().map(|(r, n)| (r.as_mut() as &mut dyn Read, *n)),
            );
            let resp = match sent {
                Ok(r) => r,
                Err(e) => {
                    // An insecure registry that does not speak TLS: plain http.
                    let mut scheme = self.scheme.lock().unwrap_or_else(|e| e.into_inner());
                    if self.insecure && *scheme == "https" {
                        *scheme = "http";
                        continue;
                    }
                    // The registry could not be reached: the host's trouble (500), as dockerd says.
                    return Err(EngineError::Internal(format!("{} {}: {e}", method, url)));
                }
            };
            if resp.status == 401 && attempt < 2 {
                let Some(ch) = resp.headers.get("www-authenticate").cloned() else {
                    return Ok(resp);
                };
                self.authenticate(&ch)?;
                continue;
            }
            return Ok(resp);
        }
        Err(failed(format!("{method} {path}: authentication failed")))
    }

    /// Answers a challenge: Basic credentials, or a bearer token from the realm.
    fn authenticate(&self, challenge: &str) -> Result<()> {
        let (scheme, p) = challenge_params(challenge);
        let basic = self.creds.as_ref().map(|c| {
            format!(
                "Basic {}",
                base64(format!("{}:{}", c.username, c.password).as_bytes())
            )
        });
        let auth = match scheme.as_str() {
            "basic" => basic.ok_or_else(|| {
                failed(format!(
                    "{}: authentication required (berth login {})",
                    self.host, self.host
                ))
            })?,
            "bearer" => {
                let realm = p
                    .get("realm")
                    .ok_or_else(|| failed("a bearer challenge without a realm"))?;
                let mut url = format!("{realm}?");
                if let Some(s) = p.get("service") {
                    url.push_str(&format!("service={}&", httpwire::encode(s)));
                }
                let scope = p.get("scope").cloned().unwrap_or_else(|| {
                    if self.repo.is_empty() {
                        String::new() // login: no repository
                    } else {
                        format!("repository:{}:pull", self.repo)
                    }
                });
                let extra = self
                    .extra_scopes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                for s in scope
                    .split(' ')
                    .chain(extra.iter().map(String::as_str))
                    .filter(|s| !s.is_empty())
                {
                    url.push_str(&format!("scope={}&", httpwire::encode(s)));
                }
                let mut hs = Vec::new();
                if let Some(b) = basic {
                    hs.push(("Authorization", b));
                }
                self.check_allowed(&url)?;
                let resp = send(&self.tls, &url, "GET", &hs, None)
                    .map_err(|e| failed(format!("the token from {realm}: {e}")))?;
                if matches!(resp.status, 401 | 403) {
                    return Err(failed(format!(
                        "{}: unauthorized: incorrect username or password",
                        self.host
                    )));
                }
                if resp.status != 200 {
                    let status = resp.status;
                    return Err(failed(format!(
                        "{}: the token service answered {status}: {}",
                        self.host,
                        resp.text(4096)
                    )));
                }
                let v: Value = serde_json::from_str(&resp.text(1 << 20))
                    .map_err(|e| failed(format!("the token from {realm}: {e}")))?;
                let t = v["token"]
                    .as_str()
                    .or_else(|| v["access_token"].as_str())
                    .ok_or_else(|| failed(format!("no token from {realm}")))?;
                format!("Bearer {t}")
            }
            s => {
                return Err(failed(format!(
                    "{}: unsupported authentication scheme {s}",
                    self.host
                )))
            }
        };
        *self.auth.lock().unwrap_or_else(|e| e.into_inner()) = Some(auth);
        Ok(())
    }

    /// For push: the token must cover pull and push.
    fn want_push(&self) -> Result<()> {
        let resp = self.request(
            "POST",
            &format!("/v2/{}/blobs/uploads/", self.repo),
            &[],
            &mut || Ok(None),
        )?;
        match resp.status {
            202 => {
                // An upload we do not need: cancel it.
                if let Some(loc) = resp.headers.get("location").cloned() {
                    let _ = self.request("DELETE", &loc, &[], &mut || Ok(None));
                }
                Ok(())
            }
            _ => Err(resp.error(&format!("push to {}/{}", self.host, self.repo))),
        }
    }

    /// GET of a manifest: media type, digest, bytes (verified against a digest reference).
    fn manifest(&self, reference: &str) -> Result<(String, Digest, Vec<u8>)> {
        self.fetch_manifest(reference, ACCEPT, false)?
            .ok_or_else(|| {
                failed(format!(
                    "{}/{}:{reference}: not found",
                    self.host, self.repo
                ))
            })
    }

    /// GET of a manifest: media type, digest, bytes (checked against a digest reference);
    /// a 404 is `None` when `missing_ok`, else the registry's error.
    fn fetch_manifest(
        &self,
        reference: &str,
        accept: &str,
        missing_ok: bool,
    ) -> Result<Option<(String, Digest, Vec<u8>)>> {
        let resp = self.request(
            "GET",
            &format!("/v2/{}/manifests/{reference}", self.repo),
            &[("Accept", accept.to_string())],
            &mut || Ok(None),
        )?;
        if resp.status == 404 && missing_ok {
            return Ok(None);
        }
        if resp.status != 200 {
            return Err(resp.error(&format!("{}/{}:{reference}", self.host, self.repo)));
        }
        let media = resp
            .headers
            .get("content-type")
            .cloned()
            .unwrap_or_default();
        let text = {
            let mut b = Vec::new();
            let mut body = resp.body;
            body.by_ref()
                .take(4 << 20)
                .read_to_end(&mut b)
                .map_err(|e| failed(e.to_string()))?;
            b
        };
        let d = Digest::of(&text);
        if let Ok(want) = reference.parse::<Digest>() {
            if want != d {
                return Err(failed(format!(
                    "manifest {reference}: the registry sent {d}"
                )));
            }
        }
        Ok(Some((media, d, text)))
    }

    /// A GET that follows the registry's redirects (blobs are often served elsewhere).
    fn get_following(&self, path: &str) -> Result<Response> {
        let mut path = path.to_string();
        let mut resp = self.request("GET", &path, &[], &mut || Ok(None))?;
        for _ in 0..5 {
            if !matches!(resp.status, 301 | 302 | 303 | 307 | 308) {
                break;
            }
            let Some(loc) = resp.headers.get("location").cloned() else {
                break;
            };
            path = loc;
            resp = self.request("GET", &path, &[], &mut || Ok(None))?;
        }
        Ok(resp)
    }

    /// A blob into the store (verified; a layer extracted on the way), with retries;
    /// redirects followed.
    fn fetch_blob(
        &self,
        fetch: &image::images::Fetch,
        d: &Digest,
        media: &str,
        progress: &mut Progress,
    ) -> Result<u64> {
        let mut last = String::new();
        for attempt in 0..3 {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(500 * attempt));
            }
            let resp = match self.get_following(&format!("/v2/{}/blobs/{d}", self.repo)) {
                Ok(r) => r,
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            };
            if resp.status != 200 {
                let transient = resp.status >= 500 || resp.status == 429;
                let e = resp.error(&format!("blob {d}"));
                if transient {
                    last = e.to_string();
                    continue;
                }
                return Err(e);
            }
            let body = Counting {
                inner: resp.body,
                n: 0,
                progress: &mut *progress,
            };
            match fetch.blob(d, media, body) {
                Ok(n) => return Ok(n),
                Err(e) => last = e.to_string(),
            }
        }
        Err(failed(format!("blob {d}: {last}")))
    }

    /// A blob from the store into the repository, unless it is there already: mounted from
    /// another repository of the registry known to hold it (`sources`) when the registry
    /// lets us, else uploaded.
    fn push_blob(
        &self,
        images: &image::images::Images,
        d: &Digest,
        sources: &[String],
        progress: &mut Progress,
    ) -> Result<Pushed> {
        let head = self.request(
            "HEAD",
            &format!("/v2/{}/blobs/{d}", self.repo),
            &[],
            &mut || Ok(None),
        )?;
        if head.status == 200 {
            return Ok(Pushed::Exists);
        }
        let mut started = None;
        for from in sources.iter().filter(|f| **f != self.repo).take(3) {
            let resp = self.request(
                "POST",
                &format!(
                    "/v2/{}/blobs/uploads/?mount={d}&from={}",
                    self.repo,
                    httpwire::encode(from)
                ),
                &[],
                &mut || Ok(None),
            )?;
            match resp.status {
                201 => return Ok(Pushed::Mounted(from.clone())),
                // Not mounted: the registry began an upload instead, which serves as well.
                202 => {
                    started = resp.headers.get("location").cloned();
                    break;
                }
                _ => {}
            }
        }
        let loc = match started {
            Some(l) => l,
            None => {
                let resp = self.request(
                    "POST",
                    &format!("/v2/{}/blobs/uploads/", self.repo),
                    &[],
                    &mut || Ok(None),
                )?;
                if resp.status != 202 {
                    return Err(resp.error(&format!("upload of {d}")));
                }
                resp.headers
                    .get("location")
                    .cloned()
                    .ok_or_else(|| failed("an upload without a Location"))?
            }
        };
        let size = images.store().size(d).map_err(|e| failed(e.to_string()))?;
        let path = images.store().path(d);
        let section = |offset: u64, len: u64| -> io::Result<Option<(Box<dyn Read>, u64)>> {
            let mut f = std::fs::File::open(&path)?;
            io::Seek::seek(&mut f, io::SeekFrom::Start(offset))?;
            Ok(Some((Box::new(f.take(len)) as Box<dyn Read>, len)))
        };
        let (loc, body) = if size <= self.chunk {
            (loc, size)
        } else {
            (self.upload_chunks(d, loc, size, &section, progress)?, 0)
        };
        // The closing PUT: the whole blob (monolithic), or nothing after the chunks.
        let sep = if loc.contains('?') { '&' } else { '?' };
        let resp = self.request(
            "PUT",
            &format!("{loc}{sep}digest={d}"),
            &[("Content-Type", "application/octet-stream".to_string())],
            &mut || section(0, body),
        )?;
        if resp.status != 201 {
            return Err(resp.error(&format!("upload of {d}")));
        }
        progress.at(size);
        Ok(Pushed::Sent)
    }

    /// PATCHes `size` bytes to the upload at `loc` in chunks; after a chunk fails, asks the
    /// registry how much it has and goes on from there (three tries in a row at most).
    /// Returns the upload's last location.
    #[allow(clippy::type_complexity)]
    fn upload_chunks(
        &self,
        d: &Digest,
        mut loc: String,
        size: u64,
        section: &dyn Fn(u64, u64) -> io::Result<Option<(Box<dyn Read>, u64)>>,
        progress: &mut Progress,
    ) -> Result<String> {
        let mut offset = 0;
        let mut failures = 0;
        while offset < size {
            let len = self.chunk.min(size - offset);
            let sent = self.request(
                "PATCH",
                &loc,
                &[
                    ("Content-Type", "application/octet-stream".to_string()),
                    ("Content-Range", format!("{offset}-{}", offset + len - 1)),
                ],
                &mut || section(offset, len),
            );
            match sent {
                Ok(resp) if resp.status == 202 => {
                    if let Some(l) = resp.headers.get("location") {
                        loc = l.clone();
                    }
                    offset += len;
                    failures = 0;
                    progress.at(offset);
                    continue;
                }
                Ok(resp) if resp.status < 500 && resp.status != 416 => {
                    return Err(resp.error(&format!("upload of {d}")));
                }
                Ok(_) | Err(_) => {}
            }
            failures += 1;
            if failures >= 3 {
                return Err(failed(format!(
                    "upload of {d}: a chunk at {offset} failed three times"
                )));
            }
            std::thread::sleep(Duration::from_millis(200 * failures));
            // Where does the upload stand? `Range: 0-<last byte>`.
            let status = match self.request("GET", &loc, &[], &mut || Ok(None)) {
                Ok(s) if s.status == 204 => s,
                Ok(s) if s.status < 500 => return Err(s.error(&format!("upload of {d}"))),
                _ => continue, // unreachable for now: another try
            };
            if let Some(l) = status.headers.get("location") {
                loc = l.clone();
            }
            offset = status
                .headers
                .get("range")
                .and_then(|r| r.rsplit('-').next())
                .and_then(|e| e.trim().parse::<u64>().ok())
                // "0-0" is also what an empty upload says.
                .map_or(0, |end| if end == 0 { 0 } else { end + 1 })
                .min(size);
        }
        Ok(loc)
    }

    fn put_manifest(&self, reference: &str, media: &str, bytes: &[u8]) -> Result<()> {
        let resp = self.request(
            "PUT",
            &format!("/v2/{}/manifests/{reference}", self.repo),
            &[("Content-Type", media.to_string())],
            &mut || {
                Ok(Some((
                    Box::new(io::Cursor::new(bytes.to_vec())) as Box<dyn Read>,
                    bytes.len() as u64,
                )))
            },
        )?;
        if resp.status != 201 {
            return Err(resp.error(&format!("manifest {reference}")));
        }
        Ok(())
    }

    /// The repository's tags.
    fn tags(&self) -> Result<Vec<String>> {
        let resp = self.request(
            "GET",
            &format!("/v2/{}/tags/list", self.repo),
            &[],
            &mut || Ok(None),
        )?;
        if resp.status != 200 {
            return Err(resp.error(&format!("tags of {}/{}", self.host, self.repo)));
        }
        let v: Value =
            serde_json::from_str(&resp.text(16 << 20)).map_err(|e| failed(e.to_string()))?;
        Ok(v["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str().map(String::from))
            .collect())
    }

    /// A manifest by tag or digest, with the media types `accept` names (the image ones
    /// when empty): media type, digest and bytes (checked against a digest reference);
    /// `None` when the registry has no such manifest.
    pub fn get_manifest(
        &self,
        reference: &str,
        accept: &str,
    ) -> Result<Option<(String, Digest, Vec<u8>)>> {
        let accept = if accept.is_empty() { ACCEPT } else { accept };
        self.fetch_manifest(reference, accept, true)
    }

    /// A small blob's bytes (at most `max`), checked against its digest.
    pub fn get_blob(&self, d: &Digest, max: usize) -> Result<Vec<u8>> {
        let resp = self.get_following(&format!("/v2/{}/blobs/{d}", self.repo))?;
        if resp.status != 200 {
            return Err(resp.error(&format!("blob {d}")));
        }
        let mut b = Vec::new();
        let mut body = resp.body;
        body.by_ref()
            .take(max as u64 + 1)
            .read_to_end(&mut b)
            .map_err(|e| failed(e.to_string()))?;
        if b.len() > max {
            return Err(failed(format!("blob {d} is larger than {max} bytes")));
        }
        if Digest::of(&b) != *d {
            return Err(failed(format!("blob {d}: the registry sent other bytes")));
        }
        Ok(b)
    }

    /// Uploads `data` as a blob in one request, unless the repository has it.
    pub fn put_blob(&self, data: &[u8]) -> Result<Digest> {
        let d = Digest::of(data);
        let head = self.request(
            "HEAD",
            &format!("/v2/{}/blobs/{d}", self.repo),
            &[],
            &mut || Ok(None),
        )?;
        if head.status == 200 {
            return Ok(d);
        }
        let start = self.request(
            "POST",
            &format!("/v2/{}/blobs/uploads/", self.repo),
            &[],
            &mut || Ok(None),
        )?;
        if start.status != 202 {
            return Err(start.error(&format!("upload to {}/{}", self.host, self.repo)));
        }
        let loc = start.headers.get("location").cloned().unwrap_or_default();
        let sep = if loc.contains('?') { '&' } else { '?' };
        let put = self.request(
            "PUT",
            &format!("{loc}{sep}digest={d}"),
            &[("Content-Type", "application/octet-stream".to_string())],
            &mut || {
                Ok(Some((
                    Box::new(io::Cursor::new(data.to_vec())) as Box<dyn Read>,
                    data.len() as u64,
                )))
            },
        )?;
        if put.status != 201 {
            return Err(put.error(&format!("blob {d}")));
        }
        Ok(d)
    }

    /// Stores a manifest under a tag or its digest.
    pub fn put_manifest_as(&self, reference: &str, media: &str, bytes: &[u8]) -> Result<()> {
        self.put_manifest(reference, media, bytes)
    }

    /// The descriptors of the manifests that refer to `d` with `artifact_type`: from the
    /// OCI referrers API, or, where a registry has none, from the referrers tag
    /// (`sha256-<hex>`) as the distribution spec's fallback.
    pub fn referrers(&self, d: &Digest, artifact_type: &str) -> Result<Vec<Value>> {
        const INDEX: &str = "application/vnd.oci.image.index.v1+json";
        let resp = self.request(
            "GET",
            &format!(
                "/v2/{}/referrers/{d}?artifactType={}",
                self.repo,
                httpwire::encode(artifact_type)
            ),
            &[("Accept", INDEX.to_string())],
            &mut || Ok(None),
        )?;
        let index: Value = if resp.status == 200 {
            serde_json::from_str(&resp.text(4 << 20)).map_err(|e| failed(e.to_string()))?
        } else if resp.status == 404 {
            let tag = d.to_string().replace(':', "-");
            match self.get_manifest(&tag, INDEX)? {
                Some((_, _, b)) => serde_json::from_slice(&b).map_err(|e| failed(e.to_string()))?,
                None => return Ok(Vec::new()),
            }
        } else {
            return Err(resp.error(&format!("referrers of {d}")));
        };
        Ok(index["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| {
                artifact_type.is_empty() || m["artifactType"].as_str() == Some(artifact_type)
            })
            .cloned()
            .collect())
    }

    /// `/v2/` with the credentials: what `login` checks.
    pub fn check(&self) -> Result<()> {
        let resp = self.request("GET", "/v2/", &[], &mut || Ok(None))?;
        match resp.status {
            200 => Ok(()),
            401 | 403 => Err(failed(format!(
                "login to {}: unauthorized: incorrect username or password",
                self.host
            ))),
            _ => Err(resp.error(&format!("login to {}", self.host))),
        }
    }
}

/// Runs `work` on `items`, three at a time (blob transfers); the messages it sends reach
/// `out` as they come. After all are done, the first error.
fn three_at_a_time<T: Send>(
    items: Vec<T>,
    out: &mut dyn FnMut(Value),
    work: &(dyn Fn(T, &std::sync::mpsc::Sender<Value>) -> Result<()> + Sync),
) -> Result<()> {
    let queue = Mutex::new(items.into_iter());
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    let errors: Mutex<Vec<EngineError>> = Mutex::new(Vec::new());
    std::thread::scope(|sc| {
        for _ in 0..3 {
            let tx = tx.clone();
            let (queue, errors) = (&queue, &errors);
            sc.spawn(move || loop {
                let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
                let Some(item) = next else { break };
                if let Err(e) = work(item, &tx) {
                    errors.lock().unwrap_or_else(|e| e.into_inner()).push(e);
                }
            });
        }
        drop(tx);
        for v in rx {
            out(v);
        }
    });
    match errors
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .next()
    {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Standard base64 with padding (also the Docker API's path-stat header).
pub fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            out.push(if i <= c.len() {
                T[(n >> (18 - 6 * i)) as usize & 63] as char
            } else {
                '='
            });
        }
    }
    out
}

impl Engine {
    /// The repositories of registry `host` known to hold blob `d` (pulled from or pushed
    /// to), newest first: where a push may mount it from.
    fn blob_sources(&self, host: &str, d: &Digest) -> Vec<String> {
        let _g = SOURCES_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let all = read_sources(&self.data_root().join(SOURCES));
        let prefix = format!("{host}/");
        all.get(&d.to_string())
            .into_iter()
            .flatten()
            .filter_map(|s| s.strip_prefix(&prefix).map(str::to_string))
            .collect()
    }

    /// Records that `host/repo` holds `blobs`. Entries of blobs the store no longer has go;
    /// a failure only costs later pushes their mounts.
    fn note_sources(&self, host: &str, repo: &str, blobs: &[Digest]) {
        let _g = SOURCES_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let path = self.data_root().join(SOURCES);
        let mut all = read_sources(&path);
        let place = format!("{host}/{repo}");
        for d in blobs {
            let list = all.entry(d.to_string()).or_default();
            list.retain(|p| *p != place);
            list.insert(0, place.clone());
            list.truncate(5);
        }
        let store = self.images.store();
        all.retain(|d, _| d.parse::<Digest>().is_ok_and(|d| store.contains(&d)));
        if let Ok(bytes) = serde_json::to_vec(&all) {
            let _ = crate::fsutil::write_atomic(&path, &bytes, 0o600);
        }
    }

    fn session(&self, r: &Reference, creds: Option<Credentials>) -> Session {
        Session::new(r.domain(), r.path(), creds, &self.registry_options())
    }

    /// `pull`: the image (or, with `all_tags`, every tag of the repository) into the store;
    /// progress as Docker's JSON messages. Returns the image IDs.
    pub fn pull(
        &self,
        name: &str,
        platform: Option<&str>,
        all_tags: bool,
        creds: Option<Credentials>,
        out: &mut dyn FnMut(Value),
    ) -> Result<Vec<String>> {
        let r =
            Reference::parse(name).map_err(|e| failed(format!("invalid reference format: {e}")))?;
        let want = match platform {
            Some(p) => image::model::Platform::parse(p).map_err(|e| failed(e.to_string()))?,
            None => image::model::Platform::host(),
        };
        let session = self.session(&r, creds);
        let refs: Vec<Reference> = if all_tags {
            session
                .tags()?
                .iter()
                .filter_map(|t| r.with_tag(t).ok())
                .collect()
        } else if r.tag().is_none() && r.digest().is_none() {
            vec![r.with_tag("latest").map_err(|e| failed(e.to_string()))?]
        } else {
            vec![r.clone()]
        };
        let mut ids = Vec::new();
        for r in refs {
            ids.push(self.pull_one(&session, &r, &want, out)?);
        }
        Ok(ids)
    }

    fn pull_one(
        &self,
        s: &Session,
        r: &Reference,
        want: &image::model::Platform,
        out: &mut dyn FnMut(Value),
    ) -> Result<String> {
        let reference = match (r.digest(), r.tag()) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.to_string(),
            (None, None) => "latest".to_string(),
        };
        // Said once the registry has the manifest, as dockerd: a pull that fails before is
        // an error answer rather than a stream.
        let (media, mut digest, mut bytes) = s.manifest(&reference)?;
        out(
            json!({"status": format!("Pulling from {}", r.familiar_repository()), "id": reference}),
        );
        let store = self.images.store();
        let mut index_bytes = None;
        if let image::model::Document::Index(index) =
            image::model::parse_document(Some(&media), &bytes)
                .map_err(|e| failed(format!("{r}: {e}")))?
        {
            let desc = image::model::select_platform(&index, want)
                .map_err(|e| failed(format!("{r}: {e}")))?;
            index_bytes = Some(bytes.clone());
            let (_, d, b) = s.manifest(desc.digest().as_ref())?;
            digest = d;
            bytes = b;
        }
        let image::model::Document::Manifest(m) =
            image::model::parse_document(None, &bytes).map_err(|e| failed(format!("{r}: {e}")))?
        else {
            return Err(failed(format!("{r}: an index inside an index")));
        };
        let config: Digest = m
            .config()
            .digest()
            .to_string()
            .parse()
            .map_err(|e: image::digest::InvalidDigest| failed(e.to_string()))?;
        let mut blobs: Vec<(Digest, u64, String)> = vec![(
            config,
            m.config().size(),
            m.config().media_type().to_string(),
        )];
        for l in m.layers() {
            let d: Digest = l
                .digest()
                .to_string()
                .parse()
                .map_err(|e: image::digest::InvalidDigest| failed(e.to_string()))?;
            blobs.push((d, l.size(), l.media_type().to_string()));
        }
        // The layers in parallel (three at a time), each extracted as it streams in; what the
        // store has is not fetched again.
        let fetch = self.images.fetch()?;
        let todo: Vec<(Digest, u64, String)> = blobs
            .iter()
            .filter(|(d, ..)| !store.contains(d))
            .cloned()
            .collect();
        for (d, ..) in blobs.iter().filter(|(d, ..)| store.contains(d)) {
            out(json!({"status": "Already exists", "id": short(d)}));
        }
        three_at_a_time(todo, out, &|(d, size, media), tx| {
            let mut progress = Progress::new(tx, &d, "Downloading", size);
            progress.at(0);
            let n = s.fetch_blob(&fetch, &d, &media, &mut progress)?;
            let _ = tx.send(json!({"status": "Download complete", "id": short(&d), "progressDetail": {"current": n, "total": size}}));
            Ok(())
        })?;
        store
            .write(Some(&digest), &bytes[..])
            .map_err(|e| failed(e.to_string()))?;
        if let Some(ib) = index_bytes {
            let _ = store.write(None, &ib[..]);
        }
        let tag = r.tag().map(|_| r.clone());
        let (record, _) = fetch.register(&digest, tag.as_ref())?;
        let all: Vec<Digest> = blobs.iter().map(|(d, ..)| d.clone()).collect();
        self.note_sources(&s.host, &s.repo, &all);
        for (d, ..) in &blobs[1..] {
            out(json!({"status": "Pull complete", "id": short(d)}));
        }
        out(json!({"status": format!("Digest: {digest}")}));
        out(json!({"status": format!("Status: Downloaded newer image for {}", r.familiar())}));
        self.events
            .emit("image", "pull", &r.familiar(), Default::default());
        Ok(record.id.to_string())
    }

    /// `push`: the local image `name` (every tag of its repository with `all_tags`) to its
    /// registry; blobs the registry has are not sent again.
    pub fn push(
        &self,
        name: &str,
        all_tags: bool,
        creds: Option<Credentials>,
        out: &mut dyn FnMut(Value),
    ) -> Result<()> {
        let r =
            Reference::parse(name).map_err(|e| failed(format!("invalid reference format: {e}")))?;
        let session = self.session(&r, creds);
        let refs: Vec<Reference> = if all_tags || (r.tag().is_none() && r.digest().is_none()) {
            if all_tags {
                self.images
                    .list()?
                    .iter()
                    .flat_map(|s| s.names.clone())
                    .filter_map(|n| Reference::parse(&n).ok())
                    .filter(|n| n.repository() == r.repository())
                    .collect()
            } else {
                vec![r.with_tag("latest").map_err(|e| failed(e.to_string()))?]
            }
        } else {
            vec![r.clone()]
        };
        let images: Vec<(Reference, image::images::ImageRecord)> = refs
            .into_iter()
            .map(|t| {
                let img = self
                    .images
                    .resolve(&t.to_string())
                    .map_err(|_| EngineError::NoSuchImage(t.familiar()))?;
                Ok((t, img))
            })
            .collect::<Result<_>>()?;
        // Blobs this registry holds in other repositories are mounted, not sent: the token
        // must cover pulling from those too.
        let mut sources: BTreeMap<Digest, Vec<String>> = BTreeMap::new();
        for (_, img) in &images {
            for d in img.layers.iter().chain(std::iter::once(&img.id)) {
                let from = self.blob_sources(&session.host, d);
                if !from.is_empty() {
                    sources.insert(d.clone(), from);
                }
            }
        }
        {
            let mut scopes: Vec<String> = sources
                .values()
                .flat_map(|f| f.iter().take(3))
                .filter(|f| **f != session.repo)
                .map(|f| format!("repository:{f}:pull"))
                .collect();
            scopes.sort();
            scopes.dedup();
            scopes.truncate(10);
            *session
                .extra_scopes
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = scopes;
        }
        session.want_push()?;
        out(json!({"status": format!("The push refers to repository [{}]", r.repository())}));
        for (t, img) in images {
            let manifest = self
                .images
                .store()
                .read(&img.manifest)
                .map_err(|e| failed(e.to_string()))?;
            let v: Value = serde_json::from_slice(&manifest).map_err(|e| failed(e.to_string()))?;
            let media = v["mediaType"]
                .as_str()
                .unwrap_or("application/vnd.oci.image.manifest.v1+json")
                .to_string();
            let mut blobs: Vec<Digest> = img.layers.clone();
            blobs.push(img.id.clone());
            three_at_a_time(blobs, out, &|d, tx| {
                let _ = tx.send(json!({"status": "Preparing", "id": short(&d)}));
                let size = self.images.store().size(&d).unwrap_or(0);
                let mut progress = Progress::new(tx, &d, "Pushing", size);
                let from = sources.get(&d).map(Vec::as_slice).unwrap_or_default();
                let status = match session.push_blob(&self.images, &d, from, &mut progress)? {
                    Pushed::Sent => "Pushed".to_string(),
                    Pushed::Exists => "Layer already exists".to_string(),
                    Pushed::Mounted(from) => format!("Mounted from {from}"),
                };
                let _ = tx.send(json!({"status": status, "id": short(&d)}));
                Ok(())
            })?;
            let tag = t.tag().unwrap_or("latest").to_string();
            session.put_manifest(&tag, &media, &manifest)?;
            let pushed: Vec<Digest> = img
                .layers
                .iter()
                .chain(std::iter::once(&img.id))
                .cloned()
                .collect();
            self.note_sources(&session.host, &session.repo, &pushed);
            out(
                json!({"status": format!("{tag}: digest: {} size: {}", img.manifest, manifest.len())}),
            );
            self.events
                .emit("image", "push", &t.familiar(), Default::default());
        }
        Ok(())
    }

    /// `login`: the credentials work against `server`.
    pub fn login(&self, server: &str, creds: Credentials) -> Result<()> {
        Session::new(server, "", Some(creds), &self.registry_options()).check()
    }
}

fn short(d: &Digest) -> String {
    d.hex()[..12].to_string()
}

#[cfg(test)]
mod tests {
    use super::{tls_config, RegistryOptions};
    use std::sync::Arc;

    /// A registry that requires a client certificate (as Docker's certs.d configures one,
    /// `client.cert` and `client.key`) is reached with the one in the registry's directory;
    /// without it the handshake fails.
    #[test]
    fn certs_dir_client_certificates() {
        use rustls_pki_types::pem::PemObject;
        use std::io::{Read as _, Write as _};
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::from_ca_cert_pem(&ca.pem(), &ca_key).unwrap();
        let leaf = |name: &str| {
            let k = rcgen::KeyPair::generate().unwrap();
            let c = rcgen::CertificateParams::new(vec![name.to_string()])
                .unwrap()
                .signed_by(&k, &issuer)
                .unwrap();
            (c, k)
        };
        let (server_cert, server_key) = leaf("localhost");
        let (client_cert, client_key) = leaf("node-0");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let server = Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_client_cert_verifier(verifier)
                .with_single_cert(
                    vec![server_cert.der().clone()],
                    rustls_pki_types::PrivateKeyDer::from_pem_slice(
                        server_key.serialize_pem().as_bytes(),
                    )
                    .unwrap(),
                )
                .unwrap(),
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for tcp in listener.incoming().flatten() {
                let conn = rustls::ServerConnection::new(server.clone()).unwrap();
                let mut s = rustls::StreamOwned::new(conn, tcp);
                let mut buf = [0u8; 1];
                if s.read(&mut buf).is_ok() {
                    let _ = s.write_all(b"y");
                }
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let host = format!("localhost:{port}");
        let d = dir.path().join(&host);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("ca.crt"), ca.pem()).unwrap();
        let opts = RegistryOptions {
            certs_dir: Some(dir.path().to_path_buf()),
            ..Default::default()
        };
        let talk = |cfg: Arc<rustls::ClientConfig>| -> bool {
            let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            let conn = rustls::ClientConnection::new(cfg, name).unwrap();
            let mut s = rustls::StreamOwned::new(conn, tcp);
            let mut buf = [0u8; 1];
            s.write_all(b"x").is_ok() && s.read(&mut buf).is_ok_and(|n| n == 1)
        };
        assert!(
            !talk(tls_config(&host, &opts, true)),
            "no client certificate"
        );
        std::fs::write(d.join("client.cert"), client_cert.pem()).unwrap();
        std::fs::write(d.join("client.key"), client_key.serialize_pem()).unwrap();
        assert!(
            talk(tls_config(&host, &opts, true)),
            "with certs.d's client.cert"
        );
    }

    #[test]
    fn challenges() {
        let (s, p) = super::challenge_params(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(s, "bearer");
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["service"], "registry.example");
        assert_eq!(p["scope"], "repository:a/b:pull,push");
        let (s, p) = super::challenge_params(r#"Basic realm="x""#);
        assert_eq!((s.as_str(), p["realm"].as_str()), ("basic", "x"));
        assert_eq!(super::base64(b"alice:wonder"), "YWxpY2U6d29uZGVy");
    }
}
