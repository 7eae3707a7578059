//! The CLI's side of the API: blocking HTTP/1.1 over the daemon's unix socket.

use std::io::{self, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use serde_json::Value;

use crate::http::{self, Body};
use crate::server::PREFIX;

/// The daemon's socket when neither `-H` nor `BERTH_HOST` says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/berth/berth.sock";

/// Why a call failed.
#[derive(Debug)]
pub enum ApiError {
    /// The daemon cannot be reached.
    Connect(PathBuf, io::Error),
    /// The daemon answered with an error status (and, for a command that could not run, the
    /// exit code Docker gives it: 126 or 127).
    Status(u16, String, Option<i32>),
    /// The connection broke or the answer was malformed.
    Io(io::Error),
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Connect(p, e) => write!(
                f,
                "Cannot connect to the berth daemon at unix://{}. Is the berth daemon running? ({e})",
                p.display()
            ),
            ApiError::Status(_, m, _) => write!(f, "Error response from daemon: {m}"),
            ApiError::Io(e) => write!(f, "talking to the daemon: {e}"),
        }
    }
}

impl std::error::Error for ApiError {}

impl From<io::Error> for ApiError {
    fn from(e: io::Error) -> Self {
        ApiError::Io(e)
    }
}

/// A response whose body is read as a stream.
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: std::collections::BTreeMap<String, String>,
    body: Body<BufReader<UnixStream>>,
}

impl Read for Response {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.body.read(buf)
    }
}

impl Response {
    /// The whole body as JSON (`null` when empty).
    pub fn json(mut self) -> Result<Value, ApiError> {
        let mut b = Vec::new();
        self.read_to_end(&mut b)?;
        if b.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&b)
            .map_err(|e| ApiError::Io(io::Error::new(io::ErrorKind::InvalidData, e)))
    }

    fn check(mut self) -> Result<Response, ApiError> {
        if self.status < 400 {
            return Ok(self);
        }
        let mut b = Vec::new();
        let _ = self.read_to_end(&mut b);
        let v = serde_json::from_slice::<Value>(&b).ok();
        let msg = v
            .as_ref()
            .and_then(|v| v["message"].as_str().map(String::from))
            .unwrap_or_else(|| String::from_utf8_lossy(&b).trim().to_string());
        let code = v.and_then(|v| v["exit_code"].as_i64()).map(|c| c as i32);
        Err(ApiError::Status(self.status, msg, code))
    }
}

/// What a request sends.
pub enum Send<'a> {
    /// Nothing.
    Nothing,
    /// JSON.
    Json(&'a Value),
    /// A stream, sent chunked.
    Stream(&'a mut dyn Read, &'a str),
}

/// A client of one daemon.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// A client for `host`: `unix:///path/to.sock` or a path; `None` = the default socket.
    pub fn new(host: Option<&str>) -> Result<Client, String> {
        let socket = match host.filter(|h| !h.is_empty()) {
            None => PathBuf::from(DEFAULT_SOCKET),
            Some(h) => match h.strip_prefix("unix://") {
                Some(p) => PathBuf::from(p),
                None if h.starts_with('/') => PathBuf::from(h),
                None => {
                    return Err(format!(
                        "invalid host {h:?}: only unix:///path sockets are supported"
                    ))
                }
            },
        };
        Ok(Client { socket })
    }

    fn connect(&self) -> Result<UnixStream, ApiError> {
        UnixStream::connect(&self.socket).map_err(|e| ApiError::Connect(self.socket.clone(), e))
    }

    fn send(
        &self,
        method: &str,
        target: &str,
        body: Send<'_>,
        upgrade: bool,
        extra: &[(&str, &str)],
    ) -> Result<(UnixStream, BufReader<UnixStream>), ApiError> {
        let mut s = self.connect()?;
        let mut head = format!(
            "{method} {PREFIX}{target} HTTP/1.1\r\nHost: berth\r\nUser-Agent: berth-cli/{}\r\n",
            env!("CARGO_PKG_VERSION")
        );
        for (k, v) in extra {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if upgrade {
            head.push_str("Connection: Upgrade\r\nUpgrade: tcp\r\n");
        } else {
            head.push_str("Connection: close\r\n");
        }
        match body {
            Send::Nothing => {
                head.push_str("Content-Length: 0\r\n\r\n");
                s.write_all(head.as_bytes())?;
            }
            Send::Json(v) => {
                let b = serde_json::to_vec(v).unwrap_or_default();
                head.push_str(&format!(
                    "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    b.len()
                ));
                s.write_all(head.as_bytes())?;
                s.write_all(&b)?;
            }
            Send::Stream(r, ct) => {
                head.push_str(&format!(
                    "Content-Type: {ct}\r\nTransfer-Encoding: chunked\r\n\r\n"
                ));
                s.write_all(head.as_bytes())?;
                let mut w = http::Chunked(io::BufWriter::with_capacity(256 * 1024, s.try_clone()?));
                let copied = io::copy(r, &mut w).and_then(|_| w.flush());
                if let Err(e) = copied {
                    // The daemon may have refused early: its answer says why.
                    let mut reader = BufReader::new(s.try_clone()?);
                    if let Ok((status, headers)) = http::read_response_head(&mut reader) {
                        let resp = Response {
                            status,
                            body: Body::for_response(&headers, status, reader),
                            headers,
                        };
                        resp.check()?;
                    }
                    return Err(e.into());
                }
                w.finish()?;
            }
        }
        let reader = BufReader::new(s.try_clone()?);
        Ok((s, reader))
    }

    /// Sends a request; an error status becomes `ApiError::Status` with the daemon's message.
    pub fn call(&self, method: &str, target: &str, body: Send<'_>) -> Result<Response, ApiError> {
        self.call_with(method, target, &[], body)
    }

    /// `call` with extra request headers.
    pub fn call_with(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: Send<'_>,
    ) -> Result<Response, ApiError> {
        let (_s, mut reader) = self.send(method, target, body, false, headers)?;
        let (status, headers) = http::read_response_head(&mut reader)?;
        Response {
            status,
            body: Body::for_response(&headers, status, reader),
            headers,
        }
        .check()
    }

    /// A JSON call: the answer's body as JSON.
    pub fn json(
        &self,
        method: &str,
        target: &str,
        body: Option<&Value>,
    ) -> Result<Value, ApiError> {
        let send = match body {
            Some(v) => Send::Json(v),
            None => Send::Nothing,
        };
        self.call(method, target, send)?.json()
    }

    /// An upgraded (hijacked) connection: the raw stream, with anything already read.
    pub fn upgrade(
        &self,
        method: &str,
        target: &str,
        body: Option<&Value>,
    ) -> Result<(UnixStream, Vec<u8>), ApiError> {
        let send = match body {
            Some(v) => Send::Json(v),
            None => Send::Nothing,
        };
        let (s, mut reader) = self.send(method, target, send, true, &[])?;
        let (status, headers) = http::read_response_head(&mut reader)?;
        if status != 101 {
            let resp = Response {
                status,
                body: Body::for_response(&headers, status, reader),
                headers,
            };
            resp.check()?;
            return Err(ApiError::Status(
                status,
                "the daemon did not upgrade the connection".into(),
                None,
            ));
        }
        let leftover = reader.buffer().to_vec();
        Ok((s, leftover))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn hosts() {
        assert!(super::Client::new(Some("tcp://1.2.3.4:2375")).is_err());
        assert_eq!(
            super::Client::new(Some("unix:///tmp/x.sock"))
                .unwrap()
                .socket,
            std::path::PathBuf::from("/tmp/x.sock")
        );
        assert_eq!(
            super::Client::new(None).unwrap().socket,
            std::path::PathBuf::from(super::DEFAULT_SOCKET)
        );
    }
}
