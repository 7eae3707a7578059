//! `berth registry serve`: the OCI distribution API over HTTP/1.1 (plain or TLS), one thread
//! per connection, keep-alive, request logs and Prometheus metrics.

use std::collections::BTreeMap;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use httpwire::{Body, Head, ReadError};
use image::digest::Digest;
use serde_json::{json, Value};

use crate::auth::{Access, Auth};
use crate::error::RegError;
use crate::names;
use crate::storage::{Storage, OCI_INDEX};

/// How the registry is configured.
pub struct Config {
    /// The largest blob accepted (bytes).
    pub max_blob: u64,
    /// Authentication and authorization; none lets everyone do everything.
    pub auth: Option<Auth>,
    /// Log one line per request to stderr.
    pub log: bool,
    /// The largest page `tags/list` and `_catalog` answer with.
    pub max_page: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_blob: 64 << 30,
            auth: None,
            log: true,
            max_page: 1000,
        }
    }
}

/// Request counters for `/metrics`.
#[derive(Default)]
struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

/// A registry: its storage, configuration and counters.
pub struct Registry {
    /// The storage.
    pub storage: Storage,
    cfg: Config,
    metrics: Metrics,
}

/// What a handler answers.
enum Reply {
    /// A complete response.
    Full {
        status: u16,
        headers: Vec<(&'static str, String)>,
        content_type: &'static str,
        body: Vec<u8>,
    },
    /// A blob (or part of one) streamed from a file.
    File {
        status: u16,
        headers: Vec<(&'static str, String)>,
        file: std::fs::File,
        offset: u64,
        len: u64,
    },
}

fn empty(status: u16, headers: Vec<(&'static str, String)>) -> Reply {
    Reply::Full {
        status,
        headers,
        content_type: "application/json",
        body: Vec::new(),
    }
}

fn json_reply(status: u16, headers: Vec<(&'static str, String)>, v: &Value) -> Reply {
    Reply::Full {
        status,
        headers,
        content_type: "application/json",
        body: serde_json::to_vec(v).unwrap_or_default(),
    }
}

/// A request's route.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Base,
    Catalog,
    Metrics,
    Token,
    Blob(String, &'a str),
    Uploads(String),
    Upload(String, &'a str),
    Manifest(String, &'a str),
    Tags(String),
    Referrers(String, &'a str),
}

fn route(path: &str) -> Option<Route<'_>> {
    match path {
        "/v2" | "/v2/" => return Some(Route::Base),
        "/v2/_catalog" => return Some(Route::Catalog),
        "/metrics" => return Some(Route::Metrics),
        "/token" => return Some(Route::Token),
        _ => {}
    }
    let rest = path.strip_prefix("/v2/")?;
    let segs: Vec<&str> = rest.split('/').collect();
    let n = segs.len();
    let name = |k: usize| segs[..n - k].join("/");
    if n >= 3 && segs[n - 2] == "manifests" {
        return Some(Route::Manifest(name(2), segs[n - 1]));
    }
    if n >= 3 && segs[n - 2] == "referrers" {
        return Some(Route::Referrers(name(2), segs[n - 1]));
    }
    if n >= 3 && segs[n - 2..] == ["tags", "list"] {
        return Some(Route::Tags(name(2)));
    }
    if n >= 4 && segs[n - 3..n - 1] == ["blobs", "uploads"] {
        return Some(if segs[n - 1].is_empty() {
            Route::Uploads(name(3))
        } else {
            Route::Upload(name(3), segs[n - 1])
        });
    }
    if n >= 3 && segs[n - 2..] == ["blobs", "uploads"] {
        return Some(Route::Uploads(name(2)));
    }
    if n >= 3 && segs[n - 2] == "blobs" {
        return Some(Route::Blob(name(2), segs[n - 1]));
    }
    None
}

fn parse_digest(s: &str) -> Result<Digest, RegError> {
    s.parse()
        .map_err(|e: image::digest::InvalidDigest| RegError::digest_invalid(e.to_string()))
}

/// `n` and `last` of a paginated list; the page, and the `Link` to the next one.
fn paginate(
    all: Vec<String>,
    head: &Head,
    base: &str,
    max: usize,
) -> Result<(Vec<String>, Option<String>), RegError> {
    let n = match head.q("n") {
        Some(n) => n.parse::<usize>().map_err(|_| {
            RegError::new(
                400,
                "PAGINATION_NUMBER_INVALID",
                format!("n={n}: not a number"),
            )
        })?,
        None => max,
    }
    .min(max);
    let after: Vec<String> = match head.q("last") {
        Some(last) => all.into_iter().filter(|t| t.as_str() > last).collect(),
        None => all,
    };
    let more = after.len() > n;
    let page: Vec<String> = after.into_iter().take(n).collect();
    let link = match (more, page.last()) {
        (true, Some(last)) => Some(format!(
            "<{base}?n={n}&last={}>; rel=\"next\"",
            httpwire::encode(last)
        )),
        _ => None,
    };
    Ok((page, link))
}

/// A connection the registry serves: plain TCP hands blobs to the kernel (sendfile), TLS
/// encrypts them in the process.
pub trait Conn: Read + Write {
    /// The socket, when bytes written to it go to the peer as they are.
    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }

    /// Ends the sending side (the peer reads the end); reads time out after two seconds.
    fn shutdown_write(&mut self);

    /// The client's certificate (DER), when it presented one the TLS layer verified.
    fn peer_certificate(&self) -> Option<Vec<u8>> {
        None
    }
}

impl Conn for std::net::TcpStream {
    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(std::os::fd::AsRawFd::as_raw_fd(self))
    }

    fn shutdown_write(&mut self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
        let _ = self.set_read_timeout(Some(std::time::Duration::from_secs(2)));
    }
}

impl Conn for rustls::StreamOwned<rustls::ServerConnection, std::net::TcpStream> {
    fn shutdown_write(&mut self) {
        self.conn.send_close_notify();
        let _ = self.flush();
        self.sock.shutdown_write();
    }

    fn peer_certificate(&self) -> Option<Vec<u8>> {
        self.conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
    }
}

/// `len` bytes of `file` from `offset` to the socket `fd`, by sendfile(2).
fn send_file(
    fd: std::os::fd::RawFd,
    file: &std::fs::File,
    offset: u64,
    len: u64,
) -> io::Result<u64> {
    use std::os::fd::AsRawFd;
    let mut off = offset as libc::off_t;
    let mut left = len;
    while left > 0 {
        let chunk = left.min(1 << 30) as usize;
        // SAFETY: both descriptors are open for the call; `off` is a valid pointer.
        let n = unsafe { libc::sendfile(fd, file.as_raw_fd(), &mut off, chunk) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        left -= n as u64;
    }
    Ok(len)
}

impl Registry {
    /// A registry over `storage`.
    pub fn new(storage: Storage, cfg: Config) -> Registry {
        Registry {
            storage,
            cfg,
            metrics: Metrics::default(),
        }
    }

    /// Serves one connection (plain or TLS) until it closes.
    pub fn serve_conn<S: Conn>(&self, stream: S, peer: &str) {
        let mut r = BufReader::with_capacity(64 * 1024, stream);
        // A TLS handshake on a plain-HTTP port: answered in plain HTTP at once, as Go's
        // servers do, so a client that tries https first falls back without a timeout.
        if matches!(io::BufRead::fill_buf(&mut r), Ok(b) if b.first() == Some(&0x16)) {
            let _ = r
                .get_mut()
                .write_all(b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTPS request to an HTTP server.\n");
            return;
        }
        let mut peer_cert: Option<Vec<u8>> = None;
        loop {
            let head = match httpwire::read_head(&mut r) {
                Ok(h) => h,
                Err(ReadError::Closed) | Err(ReadError::Io(_)) => return,
                Err(ReadError::Bad(m)) => {
                    let e = RegError::bad_request(m);
                    let _ = self.write_reply(r.get_mut(), "GET", error_reply(&e, None), false);
                    return;
                }
            };
            let started = Instant::now();
            // Known once the handshake is done, which reading the head finished.
            if peer_cert.is_none() {
                peer_cert = r.get_ref().peer_certificate();
            }
            let mut body = match Body::new(&head, &mut r) {
                Ok(b) => b,
                Err(_) => {
                    let e = RegError::bad_request("unreadable body framing".into());
                    let _ =
                        self.write_reply(r.get_mut(), &head.method, error_reply(&e, None), false);
                    return;
                }
            };
            // `100 Continue` only when the handler reads the body: an answer decided before
            // (401, 404, 413, …) goes out without inviting a body it would not read.
            let mut counted = Counted {
                inner: &mut Continue {
                    body: &mut body,
                    pending: head.expects_continue(),
                },
                n: 0,
            };
            let reply = match self.handle(&head, peer_cert.as_deref(), &mut counted) {
                Ok(r) => r,
                Err(e) => error_reply(&e, self.challenge(&head, &e)),
            };
            let received = counted.n;
            let waiting = counted.inner.pending;
            // The rest of the body, if the handler left some: drained when small, else the
            // connection closes after the answer. A client still waiting for `100 Continue`
            // sends nothing more: that connection closes too.
            let keep = !waiting
                && io::copy(&mut (&mut body).take(1 << 20), &mut io::sink()).is_ok()
                && matches!(body.read(&mut [0u8; 1]), Ok(0));
            let status = match &reply {
                Reply::Full { status, .. } | Reply::File { status, .. } => *status,
            };
            let sent = match self.write_reply(r.get_mut(), &head.method, reply, keep) {
                Ok(n) => n,
                Err(_) => return,
            };
            self.metrics.bytes_in.fetch_add(received, Ordering::Relaxed);
            self.metrics.bytes_out.fetch_add(sent, Ordering::Relaxed);
            *self
                .metrics
                .requests
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry((head.method.clone(), status))
                .or_default() += 1;
            if self.cfg.log {
                eprintln!(
                    "{} {peer} \"{} {}\" {status} in={received} out={sent} {:.1}ms",
                    timefmt::now(),
                    head.method,
                    head.path,
                    started.elapsed().as_secs_f64() * 1000.0
                );
            }
            if !keep {
                // Closed for writing first, then what the client still sends is read (for
                // a while): a close with unread data would reset the answer away.
                r.get_mut().shutdown_write();
                let _ = io::copy(&mut (&mut r).take(64 << 20), &mut io::sink());
                return;
            }
            if head
                .header("connection")
                .is_some_and(|c| c.eq_ignore_ascii_case("close"))
            {
                return;
            }
        }
    }

    /// Writes `reply`; returns the body bytes sent.
    fn write_reply(
        &self,
        w: &mut impl Conn,
        method: &str,
        reply: Reply,
        keep: bool,
    ) -> io::Result<u64> {
        let (status, headers, content_type, len) = match &reply {
            Reply::Full {
                status,
                headers,
                content_type,
                body,
            } => (*status, headers, *content_type, body.len() as u64),
            Reply::File {
                status,
                headers,
                len,
                ..
            } => (*status, headers, "application/octet-stream", *len),
        };
        let mut head = format!(
            "HTTP/1.1 {status} {}\r\nDocker-Distribution-API-Version: registry/2.0\r\n",
            httpwire::reason(status)
        );
        // A 204 has no body, and so no length (RFC 9110 8.6).
        if status != 204 {
            head.push_str(&format!("Content-Length: {len}\r\n"));
        }
        if len > 0 || matches!(reply, Reply::File { .. }) {
            head.push_str(&format!("Content-Type: {content_type}\r\n"));
        }
        for (k, v) in headers {
            if *k == "Content-Type" {
                head = head.replace(&format!("Content-Type: {content_type}\r\n"), "");
            }
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if !keep {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        w.write_all(head.as_bytes())?;
        if method == "HEAD" {
            w.flush()?;
            return Ok(0);
        }
        let sent = match reply {
            Reply::Full { body, .. } => {
                w.write_all(&body)?;
                body.len() as u64
            }
            Reply::File {
                mut file,
                offset,
                len,
                ..
            } => {
                w.flush()?;
                match w.raw_fd() {
                    Some(fd) => send_file(fd, &file, offset, len)?,
                    None => {
                        file.seek(SeekFrom::Start(offset))?;
                        let mut buf = vec![0u8; 256 << 10];
                        let mut left = len;
                        while left > 0 {
                            let want = buf.len().min(left as usize);
                            let n = file.read(&mut buf[..want])?;
                            if n == 0 {
                                return Err(io::ErrorKind::UnexpectedEof.into());
                            }
                            w.write_all(&buf[..n])?;
                            left -= n as u64;
                        }
                        len
                    }
                }
            }
        };
        w.flush()?;
        Ok(sent)
    }

    /// The `WWW-Authenticate` challenge an UNAUTHORIZED answer carries.
    fn challenge(&self, head: &Head, e: &RegError) -> Option<String> {
        if e.status != 401 {
            return None;
        }
        let auth = self.cfg.auth.as_ref()?;
        let host = head.header("host").unwrap_or("localhost");
        // A bearer token that was sent but lacks the scope: Docker's `insufficient_scope`.
        let insufficient = head
            .header("authorization")
            .and_then(|a| a.get(..7))
            .is_some_and(|p| p.eq_ignore_ascii_case("bearer "));
        let scope = route(&head.path)
            .as_ref()
            .and_then(|r| scope_of(r, &head.method));
        Some(auth.challenge(host, scope, insufficient))
    }

    fn authorize(
        &self,
        head: &Head,
        cert: Option<&[u8]>,
        repo: &str,
        access: Access,
    ) -> Result<(), RegError> {
        match &self.cfg.auth {
            None => Ok(()),
            Some(a) => a.authorize(head.header("authorization"), cert, repo, access),
        }
    }

    fn handle(
        &self,
        head: &Head,
        cert: Option<&[u8]>,
        body: &mut dyn Read,
    ) -> Result<Reply, RegError> {
        let m = head.method.as_str();
        let route = route(&head.path).ok_or_else(RegError::not_found)?;
        let repo_of = |r: &Route| -> Option<String> {
            match r {
                Route::Blob(n, _)
                | Route::Uploads(n)
                | Route::Upload(n, _)
                | Route::Manifest(n, _)
                | Route::Tags(n)
                | Route::Referrers(n, _) => Some(n.clone()),
                _ => None,
            }
        };
        if let Some(repo) = repo_of(&route) {
            names::validate(&repo)?;
            let access = match m {
                "GET" | "HEAD" => Access::Pull,
                "DELETE" => Access::Delete,
                _ => Access::Push,
            };
            self.authorize(head, cert, &repo, access)?;
        }
        let st = &self.storage;
        match (m, route) {
            ("GET" | "HEAD", Route::Base) => {
                if let Some(a) = &self.cfg.auth {
                    a.authenticate(head.header("authorization"), cert)?;
                }
                Ok(json_reply(200, vec![], &json!({})))
            }
            ("GET", Route::Metrics) => Ok(Reply::Full {
                status: 200,
                headers: vec![],
                content_type: "text/plain; version=0.0.4",
                body: self.metrics_text().into_bytes(),
            }),
            ("GET", Route::Token) => {
                let auth = self.cfg.auth.as_ref().ok_or_else(RegError::not_found)?;
                let token = auth.issue(head)?;
                Ok(json_reply(200, vec![], &token))
            }
            ("GET", Route::Catalog) => {
                if let Some(a) = &self.cfg.auth {
                    a.authorize_catalog(head.header("authorization"), cert)?;
                }
                let (page, link) = paginate(st.catalog(), head, "/v2/_catalog", self.cfg.max_page)?;
                let headers = link.map(|l| vec![("Link", l)]).unwrap_or_default();
                Ok(json_reply(200, headers, &json!({ "repositories": page })))
            }
            ("GET", Route::Tags(repo)) => {
                let base = format!("/v2/{repo}/tags/list");
                let (page, link) = paginate(st.tags(&repo)?, head, &base, self.cfg.max_page)?;
                let headers = link.map(|l| vec![("Link", l)]).unwrap_or_default();
                Ok(json_reply(
                    200,
                    headers,
                    &json!({ "name": repo, "tags": page }),
                ))
            }
            ("GET" | "HEAD", Route::Blob(repo, d)) => {
                let d = parse_digest(d)?;
                if !st.repo_has_blob(&repo, &d) {
                    return Err(RegError::blob_unknown(&d));
                }
                let size = st.blob_size(&d).ok_or_else(|| RegError::blob_unknown(&d))?;
                let file = st.open_blob(&d)?;
                let mut headers = vec![
                    ("Docker-Content-Digest", d.to_string()),
                    ("Accept-Ranges", "bytes".to_string()),
                    ("Etag", format!("\"{d}\"")),
                ];
                // A range in another unit, or several ranges: ignored (RFC 9110), the whole.
                let range = head
                    .header("range")
                    .filter(|r| m == "GET" && r.trim().starts_with("bytes=") && !r.contains(','));
                match range {
                    None => Ok(Reply::File {
                        status: 200,
                        headers,
                        file,
                        offset: 0,
                        len: size,
                    }),
                    Some(r) => {
                        let Some((start, end)) = parse_range(r, size) else {
                            return Ok(Reply::Full {
                                status: 416,
                                headers: vec![("Content-Range", format!("bytes */{size}"))],
                                content_type: "text/plain",
                                body: Vec::new(),
                            });
                        };
                        headers.push(("Content-Range", format!("bytes {start}-{end}/{size}")));
                        Ok(Reply::File {
                            status: 206,
                            headers,
                            file,
                            offset: start,
                            len: end - start + 1,
                        })
                    }
                }
            }
            ("DELETE", Route::Blob(repo, d)) => {
                let d = parse_digest(d)?;
                st.delete_blob(&repo, &d)?;
                Ok(empty(202, vec![("Docker-Content-Digest", d.to_string())]))
            }
            ("POST", Route::Uploads(repo)) => {
                if let (Some(mount), Some(from)) = (head.q("mount"), head.q("from")) {
                    let d = parse_digest(mount)?;
                    if self.authorize(head, cert, from, Access::Pull).is_ok()
                        && st.mount(&repo, from, &d)?
                    {
                        return Ok(empty(
                            201,
                            vec![
                                ("Location", format!("/v2/{repo}/blobs/{d}")),
                                ("Docker-Content-Digest", d.to_string()),
                            ],
                        ));
                    }
                }
                // A bad digest is refused before an upload exists.
                let monolithic = head.q("digest").map(parse_digest).transpose()?;
                let uuid = st.start_upload(&repo)?;
                if let Some(d) = monolithic {
                    // Monolithic: the body is the blob.
                    let done = st
                        .upload_append(&repo, &uuid, None, body, self.cfg.max_blob)
                        .and_then(|_| st.upload_finish(&repo, &uuid, &d));
                    if let Err(e) = done {
                        let _ = st.upload_cancel(&repo, &uuid);
                        return Err(e);
                    }
                    return Ok(empty(
                        201,
                        vec![
                            ("Location", format!("/v2/{repo}/blobs/{d}")),
                            ("Docker-Content-Digest", d.to_string()),
                        ],
                    ));
                }
                Ok(empty(202, upload_headers(&repo, &uuid, 0)))
            }
            ("GET", Route::Upload(repo, uuid)) => {
                let len = st.upload_status(&repo, uuid)?;
                Ok(empty(204, upload_headers(&repo, uuid, len)))
            }
            ("PATCH", Route::Upload(repo, uuid)) => {
                let start = match head.header("content-range") {
                    Some(r) => {
                        let r = r
                            .trim()
                            .trim_start_matches("bytes")
                            .trim_start_matches([' ', '=']);
                        let (s, e) = r.split_once('-').ok_or_else(|| {
                            RegError::upload_invalid(format!("Content-Range {r:?}"))
                        })?;
                        let s: u64 = s.parse().map_err(|_| {
                            RegError::upload_invalid(format!("Content-Range {r:?}"))
                        })?;
                        let e: u64 = e.parse().map_err(|_| {
                            RegError::upload_invalid(format!("Content-Range {r:?}"))
                        })?;
                        if e < s {
                            return Err(RegError::range_invalid(st.upload_status(&repo, uuid)?));
                        }
                        if let Some(len) = head
                            .header("content-length")
                            .and_then(|l| l.parse::<u64>().ok())
                        {
                            if len != e - s + 1 {
                                return Err(RegError::range_invalid(
                                    st.upload_status(&repo, uuid)?,
                                ));
                            }
                        }
                        Some(s)
                    }
                    None => None,
                };
                let len = st.upload_append(&repo, uuid, start, body, self.cfg.max_blob)?;
                Ok(empty(202, upload_headers(&repo, uuid, len)))
            }
            ("PUT", Route::Upload(repo, uuid)) => {
                let d = parse_digest(head.q("digest").ok_or_else(|| {
                    RegError::digest_invalid("the closing PUT needs ?digest=".into())
                })?)?;
                st.upload_append(&repo, uuid, None, body, self.cfg.max_blob)?;
                st.upload_finish(&repo, uuid, &d)?;
                Ok(empty(
                    201,
                    vec![
                        ("Location", format!("/v2/{repo}/blobs/{d}")),
                        ("Docker-Content-Digest", d.to_string()),
                    ],
                ))
            }
            ("DELETE", Route::Upload(repo, uuid)) => {
                st.upload_cancel(&repo, uuid)?;
                Ok(empty(204, vec![]))
            }
            ("GET" | "HEAD", Route::Manifest(repo, reference)) => {
                let (d, media, bytes) = st.get_manifest(&repo, reference)?;
                Ok(Reply::Full {
                    status: 200,
                    headers: vec![
                        ("Docker-Content-Digest", d.to_string()),
                        ("Content-Type", media),
                        ("Etag", format!("\"{d}\"")),
                    ],
                    content_type: "application/json",
                    body: bytes,
                })
            }
            ("PUT", Route::Manifest(repo, reference)) => {
                let mut bytes = Vec::new();
                body.take(st.max_manifest as u64 + 1)
                    .read_to_end(&mut bytes)
                    .map_err(|e| RegError::manifest_invalid(format!("reading the body: {e}")))?;
                let (d, subject) =
                    st.put_manifest(&repo, reference, head.header("content-type"), &bytes)?;
                let mut headers = vec![
                    ("Location", format!("/v2/{repo}/manifests/{d}")),
                    ("Docker-Content-Digest", d.to_string()),
                ];
                if let Some(s) = subject {
                    headers.push(("OCI-Subject", s.to_string()));
                }
                Ok(empty(201, headers))
            }
            ("DELETE", Route::Manifest(repo, reference)) => {
                st.delete_manifest(&repo, reference)?;
                Ok(empty(202, vec![]))
            }
            ("GET", Route::Referrers(repo, d)) => {
                let d = parse_digest(d)?;
                let mut list = st.referrers(&repo, &d);
                let mut headers = vec![("Content-Type", OCI_INDEX.to_string())];
                if let Some(t) = head.q("artifactType") {
                    list.retain(|x| x["artifactType"].as_str() == Some(t));
                    headers.push(("OCI-Filters-Applied", "artifactType".to_string()));
                }
                let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": list});
                Ok(json_reply(200, headers, &index))
            }
            _ => Err(RegError::method()),
        }
    }

    fn metrics_text(&self) -> String {
        let mut s = String::from(
            "# HELP registry_http_requests_total Requests answered, by method and status.\n# TYPE registry_http_requests_total counter\n",
        );
        for ((m, code), n) in self
            .metrics
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            s.push_str(&format!(
                "registry_http_requests_total{{method=\"{m}\",code=\"{code}\"}} {n}\n"
            ));
        }
        s.push_str(&format!(
            "# HELP registry_http_received_bytes_total Request body bytes.\n# TYPE registry_http_received_bytes_total counter\nregistry_http_received_bytes_total {}\n",
            self.metrics.bytes_in.load(Ordering::Relaxed)
        ));
        s.push_str(&format!(
            "# HELP registry_http_sent_bytes_total Response body bytes.\n# TYPE registry_http_sent_bytes_total counter\nregistry_http_sent_bytes_total {}\n",
            self.metrics.bytes_out.load(Ordering::Relaxed)
        ));
        for (k, v) in self.storage.counts() {
            s.push_str(&format!(
                "# TYPE registry_storage_{k} gauge\nregistry_storage_{k} {v}\n"
            ));
        }
        s
    }
}

/// The token scope a request needs (for the challenge): what the method does to the route.
fn scope_of(r: &Route, method: &str) -> Option<String> {
    match r {
        Route::Blob(n, _) | Route::Manifest(n, _) => Some(match method {
            "GET" | "HEAD" => format!("repository:{n}:pull"),
            "DELETE" => format!("repository:{n}:delete"),
            _ => format!("repository:{n}:pull,push"),
        }),
        Route::Tags(n) | Route::Referrers(n, _) => Some(format!("repository:{n}:pull")),
        Route::Uploads(n) | Route::Upload(n, _) => Some(format!("repository:{n}:pull,push")),
        Route::Catalog => Some("registry:catalog:*".into()),
        _ => None,
    }
}

fn upload_headers(repo: &str, uuid: &str, len: u64) -> Vec<(&'static str, String)> {
    vec![
        ("Location", format!("/v2/{repo}/blobs/uploads/{uuid}")),
        ("Range", format!("0-{}", len.max(1) - 1)),
        ("Docker-Upload-UUID", uuid.to_string()),
    ]
}

fn error_reply(e: &RegError, challenge: Option<String>) -> Reply {
    let mut headers = Vec::new();
    if let Some(c) = challenge {
        headers.push(("WWW-Authenticate", c));
    }
    if let Some(end) = e.range_end {
        headers.push(("Range", format!("0-{}", end.max(1) - 1)));
    }
    json_reply(e.status, headers, &e.body())
}

/// `bytes=a-b`, `bytes=a-`, `bytes=-n` against `size`: the inclusive byte range.
pub fn parse_range(r: &str, size: u64) -> Option<(u64, u64)> {
    let spec = r.trim().strip_prefix("bytes=")?;
    if spec.contains(',') || size == 0 {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().ok()?;
            (size.saturating_sub(n), size - 1)
        }
        (a, "") => (a.parse().ok()?, size - 1),
        (a, b) => (a.parse().ok()?, b.parse::<u64>().ok()?.min(size - 1)),
    };
    (start <= end && start < size).then_some((start, end))
}

/// A request body that answers `100 Continue` when it is first read.
struct Continue<'a, 'b, S: Conn> {
    body: &'a mut Body<&'b mut BufReader<S>>,
    pending: bool,
}

impl<S: Conn> Read for Continue<'_, '_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pending {
            self.pending = false;
            let s = self.body.get_mut().get_mut();
            s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
            s.flush()?;
        }
        self.body.read(buf)
    }
}

/// A reader that counts.
struct Counted<'a, R: Read> {
    inner: &'a mut R,
    n: u64,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

/// Accepts connections on `listener` until the process ends: a thread each.
pub fn serve(
    listener: std::net::TcpListener,
    reg: Arc<Registry>,
    tls: Option<Arc<crate::tls::ServerConfig>>,
) {
    for conn in listener.incoming() {
        let Ok(stream) = conn else { continue };
        let reg = reg.clone();
        let tls = tls.clone();
        std::thread::spawn(move || {
            let peer = stream
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            let _ = stream.set_nodelay(true);
            match tls {
                None => reg.serve_conn(stream, &peer),
                Some(cfg) => {
                    // Plain HTTP on the TLS port: told so at once, as Go's servers do (else
                    // the TLS layer would wait for a record the client never sends).
                    let mut first = [0u8; 1];
                    match stream.peek(&mut first) {
                        Ok(1) if first[0] != 0x16 => {
                            let _ = (&stream).write_all(b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n");
                            // Closed for writing, then what the client sent is read, so the
                            // close does not reset the answer away.
                            let _ = stream.shutdown(std::net::Shutdown::Write);
                            let _ =
                                stream.set_read_timeout(Some(std::time::Duration::from_secs(2)));
                            let _ = io::copy(&mut (&stream).take(1 << 20), &mut io::sink());
                            return;
                        }
                        Ok(1) => {}
                        _ => return,
                    }
                    if let Ok(conn) = crate::tls::accept(cfg, stream) {
                        reg.serve_conn(conn, &peer);
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("/v2/"), Some(Route::Base));
        assert_eq!(
            route("/v2/a/b/manifests/latest"),
            Some(Route::Manifest("a/b".into(), "latest"))
        );
        assert_eq!(
            route("/v2/a/blobs/uploads/"),
            Some(Route::Uploads("a".into()))
        );
        assert_eq!(
            route("/v2/a/blobs/uploads"),
            Some(Route::Uploads("a".into()))
        );
        assert_eq!(
            route("/v2/x/blobs/uploads/1234"),
            Some(Route::Upload("x".into(), "1234"))
        );
        assert_eq!(
            route("/v2/blobs/blobs/sha256:ab"),
            Some(Route::Blob("blobs".into(), "sha256:ab"))
        );
        assert_eq!(route("/v2/a/tags/list"), Some(Route::Tags("a".into())));
        assert_eq!(
            route("/v2/a/referrers/sha256:ab"),
            Some(Route::Referrers("a".into(), "sha256:ab"))
        );
        assert_eq!(route("/v1/x"), None);
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(parse_range("bytes=90-", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=-10", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=95-200", 100), Some((95, 99)));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("bytes=5-1", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
    }

    /// A connection whose client sent `input`; what the registry answers is kept.
    struct Mem {
        input: io::Cursor<Vec<u8>>,
        out: Vec<u8>,
    }

    impl Read for Mem {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for Mem {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.out.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Conn for &mut Mem {
        fn shutdown_write(&mut self) {}
    }

    /// Found by fuzz/fuzz_targets/registry_request.rs: a non-ASCII Authorization header on a
    /// refused request panicked (a byte slice inside a character) instead of answering 401.
    #[test]
    fn a_non_ascii_authorization_header_is_refused_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let htpasswd = dir.path().join("htpasswd");
        std::fs::write(&htpasswd, "").unwrap();
        let auth = crate::auth::Auth::new(
            &htpasswd,
            None,
            crate::auth::Mode::Token {
                service: "s".into(),
                key: b"k".to_vec(),
                ttl: 60,
            },
        )
        .unwrap();
        let reg = Registry::new(
            Storage::open(&dir.path().join("root")).unwrap(),
            Config {
                auth: Some(auth),
                log: false,
                ..Config::default()
            },
        );
        for header in ["Ba\u{fffd}\u{fffd}sic YTpi", "\u{e9}\u{e9}\u{e9}\u{e9}x"] {
            let mut conn = Mem {
                input: io::Cursor::new(
                    format!("GET /v2/ HTTP/1.1\r\nAuthorization: {header}\r\n\r\n").into_bytes(),
                ),
                out: Vec::new(),
            };
            reg.serve_conn(&mut conn, "127.0.0.1:1");
            let out = String::from_utf8_lossy(&conn.out);
            assert!(out.starts_with("HTTP/1.1 401 "), "{header:?}: {out}");
        }
    }
}
