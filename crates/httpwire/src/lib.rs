//! A small, strict HTTP/1.1 over a byte stream (unix socket, TCP, TLS): requests parsed with
//! `httparse`, bodies by `Content-Length` or chunked, responses with a length, chunked or
//! delimited by close, and connection upgrades (Docker's attach hijack).

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};

/// Headers larger than this are refused (431).
const MAX_HEAD: usize = 64 * 1024;

/// A parsed request head; the body is read from the connection as needed.
#[derive(Debug, Clone)]
pub struct Head {
    /// `GET`, `POST`, …
    pub method: String,
    /// The path without the query.
    pub path: String,
    /// Query parameters, percent-decoded (a repeated key keeps every value).
    pub query: BTreeMap<String, Vec<String>>,
    /// Header names lower-cased.
    pub headers: BTreeMap<String, String>,
    /// Content-Length came more than once.
    pub duplicate_length: bool,
    /// HTTP/1.1 (else 1.0).
    pub http11: bool,
}

impl Head {
    /// A query parameter (the first, if repeated).
    pub fn q(&self, key: &str) -> Option<&str> {
        self.query
            .get(key)
            .and_then(|v| v.first())
            .map(String::as_str)
    }

    /// A boolean query parameter (`1`, `true`).
    pub fn flag(&self, key: &str) -> bool {
        matches!(self.q(key), Some("1" | "true" | "True" | "yes"))
    }

    /// A header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// Whether the client waits for `100 Continue` before it sends the body (RFC 9110
    /// 10.1.1): curl does for bodies over 1 MiB, and waits a second without it.
    pub fn expects_continue(&self) -> bool {
        self.http11
            && self
                .header("expect")
                .is_some_and(|e| e.trim().eq_ignore_ascii_case("100-continue"))
    }

    /// Answers `100 Continue` when the client waits for it: called by a server that will
    /// read the body.
    pub fn send_continue(&self, w: &mut impl Write) -> io::Result<()> {
        if self.expects_continue() {
            w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
            w.flush()?;
        }
        Ok(())
    }

    /// Whether the client asks to upgrade the connection (hijack).
    pub fn wants_upgrade(&self) -> bool {
        self.header("connection")
            .is_some_and(|c| c.to_ascii_lowercase().contains("upgrade"))
            && self.header("upgrade").is_some()
    }
}

/// Why a request could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed before a request began.
    Closed,
    /// Malformed; the message says how.
    Bad(String),
    /// The connection failed.
    Io(io::Error),
}

/// Percent-decodes a query component (`+` is a space).
pub fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes a query component.
pub fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/' | b':') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Splits `path?query`.
pub fn split_target(target: &str) -> (String, BTreeMap<String, Vec<String>>) {
    let (path, q) = target.split_once('?').unwrap_or((target, ""));
    let mut query: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        query.entry(decode(k)).or_default().push(decode(v));
    }
    (decode(path), query)
}

/// Reads a request head from `r` (buffered: the body follows in the same reader).
pub fn read_head(r: &mut BufReader<impl Read>) -> Result<Head, ReadError> {
    let mut buf = Vec::new();
    loop {
        let before = buf.len();
        // Bounded: a line that never ends must not fill the memory.
        let room = (MAX_HEAD + 1 - buf.len().min(MAX_HEAD)) as u64;
        let n = r
            .by_ref()
            .take(room)
            .read_until(b'\n', &mut buf)
            .map_err(ReadError::Io)?;
        if buf.len() > MAX_HEAD {
            return Err(ReadError::Bad("request head too large".into()));
        }
        if n == 0 {
            return if buf.is_empty() {
                Err(ReadError::Closed)
            } else {
                Err(ReadError::Bad(
                    "connection closed inside the request head".into(),
                ))
            };
        }
        let line = &buf[before..];
        if line == b"\r\n" || line == b"\n" {
            if before == 0 {
                // Tolerate blank lines between keep-alive requests.
                buf.clear();
                continue;
            }
            break;
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 100];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(&buf) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(ReadError::Bad("incomplete request head".into()))
        }
        Err(e) => return Err(ReadError::Bad(format!("malformed request: {e}"))),
    }
    let target = req.path.unwrap_or("/");
    let (path, query) = split_target(target);
    let mut h = BTreeMap::new();
    let mut duplicate_length = false;
    for hd in req.headers.iter() {
        let name = hd.name.to_ascii_lowercase();
        let value = String::from_utf8_lossy(hd.value).into_owned();
        if let Some(old) = h.insert(name.clone(), value) {
            duplicate_length |= name == "content-length" || name == "transfer-encoding";
            let _ = old;
        }
    }
    Ok(Head {
        duplicate_length,
        http11: req.version == Some(1),
        method: req.method.unwrap_or("GET").to_string(),
        path,
        query,
        headers: h,
    })
}

/// A message body: `Content-Length` bytes, chunked, up to the connection's close, or nothing.
pub struct Body<R: BufRead> {
    inner: R,
    kind: BodyKind,
}

enum BodyKind {
    Length(u64),
    Chunked { left: u64, done: bool },
    UntilClose,
}

impl<R: BufRead> Body<R> {
    /// A response body per its headers (lower-cased names): without a length it runs to the
    /// connection's close.
    pub fn for_response(headers: &BTreeMap<String, String>, status: u16, inner: R) -> Body<R> {
        let chunked = headers
            .get("transfer-encoding")
            .is_some_and(|t| t.to_ascii_lowercase().contains("chunked"));
        let kind = if chunked {
            BodyKind::Chunked {
                left: 0,
                done: false,
            }
        } else if let Some(n) = headers
            .get("content-length")
            .and_then(|l| l.trim().parse().ok())
        {
            BodyKind::Length(n)
        } else if status == 204 || status == 304 || status == 101 {
            BodyKind::Length(0)
        } else {
            BodyKind::UntilClose
        };
        Body { inner, kind }
    }

    /// The reader under the body, borrowed (to answer `100 Continue` on its connection).
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// The reader under the body (for a connection that was upgraded).
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// The body of the request with `head`, read from `inner`.
    pub fn new(head: &Head, inner: R) -> Result<Body<R>, ReadError> {
        // Only what cannot be read two ways (request smuggling): chunked alone, or one length.
        let te = head
            .header("transfer-encoding")
            .map(|t| t.trim().to_ascii_lowercase());
        let chunked = match te.as_deref() {
            None => false,
            Some("chunked") => true,
            Some(t) => {
                return Err(ReadError::Bad(format!(
                    "unsupported Transfer-Encoding {t:?}"
                )))
            }
        };
        if chunked && head.header("content-length").is_some() {
            return Err(ReadError::Bad(
                "both Transfer-Encoding and Content-Length given".into(),
            ));
        }
        if head.duplicate_length {
            return Err(ReadError::Bad("more than one Content-Length".into()));
        }
        let kind = if chunked {
            BodyKind::Chunked {
                left: 0,
                done: false,
            }
        } else {
            match head.header("content-length") {
                Some(l) => BodyKind::Length(
                    l.trim()
                        .parse()
                        .map_err(|_| ReadError::Bad(format!("invalid Content-Length {l:?}")))?,
                ),
                None => BodyKind::Length(0),
            }
        };
        Ok(Body { inner, kind })
    }

    /// Reads the whole body, refusing more than `max` bytes.
    pub fn read_all(&mut self, max: usize) -> io::Result<Vec<u8>> {
        let mut v = Vec::new();
        let mut limited = self.take(max as u64 + 1);
        limited.read_to_end(&mut v)?;
        if v.len() > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request body too large",
            ));
        }
        Ok(v)
    }
}

impl<R: BufRead> Read for Body<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.kind {
            BodyKind::UntilClose => self.inner.read(buf),
            BodyKind::Length(left) => {
                if *left == 0 || buf.is_empty() {
                    return Ok(0);
                }
                let want = buf.len().min(*left as usize);
                let n = self.inner.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "body ended early",
                    ));
                }
                *left -= n as u64;
                Ok(n)
            }
            BodyKind::Chunked { left, done } => {
                if *done {
                    return Ok(0);
                }
                if *left == 0 {
                    let mut line = String::new();
                    (&mut self.inner).take(1024).read_line(&mut line)?;
                    let size = line.trim().split(';').next().unwrap_or("");
                    let size = u64::from_str_radix(size, 16).map_err(|_| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("bad chunk size {size:?}"),
                        )
                    })?;
                    if size == 0 {
                        // Trailers, then the blank line.
                        for _ in 0..64 {
                            line.clear();
                            let n = (&mut self.inner).take(4096).read_line(&mut line)?;
                            if n == 0 || line.trim().is_empty() {
                                break;
                            }
                        }
                        *done = true;
                        return Ok(0);
                    }
                    *left = size;
                }
                let want = buf.len().min(*left as usize);
                let n = self.inner.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "chunk ended early",
                    ));
                }
                *left -= n as u64;
                if *left == 0 {
                    let mut crlf = [0u8; 2];
                    self.inner.read_exact(&mut crlf)?;
                    if &crlf != b"\r\n" {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "a chunk does not end with CRLF",
                        ));
                    }
                }
                Ok(n)
            }
        }
    }
}

/// Reads a response head: status and headers (names lower-cased).
pub fn read_response_head(r: &mut impl BufRead) -> io::Result<(u16, BTreeMap<String, String>)> {
    let mut buf = Vec::new();
    loop {
        let before = buf.len();
        if r.read_until(b'\n', &mut buf)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the daemon closed the connection without an answer",
            ));
        }
        if buf.len() > MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "response head too large",
            ));
        }
        let line = &buf[before..];
        if line == b"\r\n" || line == b"\n" {
            break;
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 100];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(&buf) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "malformed response from the daemon",
            ))
        }
    }
    let mut h = BTreeMap::new();
    for hd in resp.headers.iter() {
        h.insert(
            hd.name.to_ascii_lowercase(),
            String::from_utf8_lossy(hd.value).into_owned(),
        );
    }
    Ok((resp.code.unwrap_or(0), h))
}

/// The reason phrase of a status code.
pub fn reason(code: u16) -> &'static str {
    match code {
        101 => "UPGRADED",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        307 => "Temporary Redirect",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        _ => "Status",
    }
}

/// Writes a complete response with a body; `headers` are added as given.
pub fn respond_with(
    w: &mut impl Write,
    code: u16,
    content_type: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {code} {}\r\nServer: berth/{}\r\nContent-Length: {}\r\n",
        reason(code),
        env!("CARGO_PKG_VERSION"),
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || code == 200 {
        head.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes())?;
    w.write_all(body)?;
    w.flush()
}

/// Writes the head of a streamed (chunked) response; `headers` are added as given.
pub fn respond_stream_head_with(
    w: &mut impl Write,
    code: u16,
    content_type: &str,
    headers: &[(&str, &str)],
) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {code} {}\r\nServer: berth/{}\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n",
        reason(code),
        env!("CARGO_PKG_VERSION"),
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes())?;
    w.flush()
}

/// Writes the chunks of a streamed response.
pub struct Chunked<W: Write>(pub W);

impl<W: Write> Chunked<W> {
    /// Ends the stream.
    pub fn finish(mut self) -> io::Result<()> {
        self.0.write_all(b"0\r\n\r\n")?;
        self.0.flush()
    }
}

impl<W: Write> Write for Chunked<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        write!(self.0, "{:x}\r\n", buf.len())?;
        self.0.write_all(buf)?;
        self.0.write_all(b"\r\n")?;
        self.0.flush()?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// Writes the 101 answer to an upgrade (hijack), after which the connection is raw.
pub fn respond_upgrade_with(
    w: &mut impl Write,
    content_type: &str,
    headers: &[(&str, &str)],
) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 101 UPGRADED\r\nContent-Type: {content_type}\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes())?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_and_queries() {
        let raw = b"POST /berth/v1/containers/create?name=web%201&x=1&x=2&flag=true HTTP/1.1\r\nHost: berth\r\nContent-Length: 5\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\nhello";
        let mut r = BufReader::new(&raw[..]);
        let h = read_head(&mut r).unwrap();
        assert_eq!(h.method, "POST");
        assert_eq!(h.path, "/berth/v1/containers/create");
        assert_eq!(h.q("name"), Some("web 1"));
        assert_eq!(h.query["x"], vec!["1", "2"]);
        assert!(h.flag("flag") && !h.flag("nope"));
        assert!(h.wants_upgrade());
        let mut body = Body::new(&h, &mut r).unwrap();
        assert_eq!(body.read_all(100).unwrap(), b"hello");
    }

    #[test]
    fn a_client_waiting_for_100_continue_is_answered_and_others_are_not() {
        let cases: [(&[u8], &[u8]); 3] = [
            (
                b"PUT /x HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n",
                b"HTTP/1.1 100 Continue\r\n\r\n",
            ),
            (
                b"PUT /x HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
                b"",
            ),
            (b"PUT /x HTTP/1.1\r\nContent-Length: 1\r\n\r\n", b""),
        ];
        for (raw, answer) in cases {
            let h = read_head(&mut BufReader::new(raw)).unwrap();
            let mut out = Vec::new();
            h.send_continue(&mut out).unwrap();
            assert_eq!(out, answer, "{}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn chunked_bodies_and_limits() {
        let raw = b"PUT /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\nGET /next HTTP/1.1\r\n\r\n";
        let mut r = BufReader::new(&raw[..]);
        let h = read_head(&mut r).unwrap();
        assert_eq!(
            Body::new(&h, &mut r).unwrap().read_all(100).unwrap(),
            b"hello world"
        );
        let next = read_head(&mut r).unwrap();
        assert_eq!(next.path, "/next");
        assert!(matches!(read_head(&mut r), Err(ReadError::Closed)));
        let raw = b"PUT /x HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789";
        let mut r = BufReader::new(&raw[..]);
        let h = read_head(&mut r).unwrap();
        assert!(Body::new(&h, &mut r).unwrap().read_all(5).is_err());
    }

    #[test]
    fn malformed_requests_are_errors() {
        for raw in [
            &b"GARBAGE\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x",
        ] {
            let mut r = BufReader::new(raw);
            assert!(
                matches!(read_head(&mut r), Err(ReadError::Bad(_))),
                "{raw:?}"
            );
        }
        let raw = b"POST / HTTP/1.1\r\nContent-Length: nope\r\n\r\n";
        let mut r = BufReader::new(&raw[..]);
        let h = read_head(&mut r).unwrap();
        assert!(Body::new(&h, &mut r).is_err());
        // Bodies that could be read two ways (request smuggling) are refused.
        for raw in [
            &b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\n",
        ] {
            let mut r = BufReader::new(raw);
            let h = read_head(&mut r).unwrap();
            assert!(Body::new(&h, &mut r).is_err(), "{raw:?}");
        }
        let raw = b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXX0\r\n\r\n";
        let mut r = BufReader::new(&raw[..]);
        let h = read_head(&mut r).unwrap();
        assert!(Body::new(&h, &mut r).unwrap().read_all(100).is_err());
        // A head line that never ends is cut off at the limit.
        let mut long = b"GET /".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_HEAD * 2));
        let mut r = BufReader::new(&long[..]);
        assert!(matches!(read_head(&mut r), Err(ReadError::Bad(_))));
    }

    #[test]
    fn percent_coding_round_trips() {
        for s in ["a b", "x=1&y", "päth/ü", "100%"] {
            assert_eq!(decode(&encode(s)), s);
        }
        assert_eq!(decode("%zz"), "%zz");
    }
}
