//! The server side of SPDY/3.1 as Kubernetes' port-forward protocol uses it
//! (`portforward.k8s.io`): streams opened by the client with SYN_STREAM (headers
//! `streamtype: error|data`, `port`, `requestid`), answered with SYN_REPLY, DATA frames
//! both ways, FIN to half-close, RST_STREAM, PING echoed. Header blocks are zlib streams
//! with SPDY's dictionary, one compression context per direction for the whole session.

use std::collections::BTreeMap;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt};

pub const FLAG_FIN: u8 = 1;
pub const SYN_STREAM: u16 = 1;
pub const SYN_REPLY: u16 = 2;
pub const RST_STREAM: u16 = 3;
pub const PING: u16 = 6;
pub const GOAWAY: u16 = 7;

/// Frames longer than this are refused (SPDY's length field allows 16 MiB).
const MAX_FRAME: usize = 1 << 24;

/// SPDY/3's header compression dictionary: length-prefixed header names and values, then
/// common text (draft-mbelshe-httpbis-spdy-00, 2.6.10.1).
pub fn dictionary() -> Vec<u8> {
    let words = [
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ];
    let mut d = Vec::new();
    for w in words {
        d.extend_from_slice(&(w.len() as u32).to_be_bytes());
        d.extend_from_slice(w.as_bytes());
    }
    d.extend_from_slice(
        concat!(
            "100101201202205206300302303304305306307402405406407408409410411412413414415416417",
            "502504505203 Non-Authoritative Information204 No Content301 Moved Permanently",
            "400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error",
            "501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct",
            " Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,",
            "image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,",
            "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=",
            "iso-8859-1,utf-,*,enq=0."
        )
        .as_bytes(),
    );
    d
}

/// A frame read from the client.
#[derive(Debug)]
pub enum Frame {
    Control {
        kind: u16,
        flags: u8,
        data: Vec<u8>,
    },
    Data {
        stream: u32,
        flags: u8,
        data: Vec<u8>,
    },
}

pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<Frame>> {
    let mut h = [0u8; 8];
    match r.read_exact(&mut h).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let flags = h[4];
    let len = u32::from_be_bytes([0, h[5], h[6], h[7]]) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::other("SPDY frame too large"));
    }
    let mut data = vec![0u8; len];
    r.read_exact(&mut data).await?;
    if h[0] & 0x80 != 0 {
        let version = u16::from_be_bytes([h[0] & 0x7f, h[1]]);
        if version != 3 {
            return Err(std::io::Error::other(format!(
                "SPDY version {version} is not served (3 is)"
            )));
        }
        Ok(Some(Frame::Control {
            kind: u16::from_be_bytes([h[2], h[3]]),
            flags,
            data,
        }))
    } else {
        Ok(Some(Frame::Data {
            stream: u32::from_be_bytes([h[0] & 0x7f, h[1], h[2], h[3]]),
            flags,
            data,
        }))
    }
}

pub fn control(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80, 3];
    f.extend_from_slice(&kind.to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(payload);
    f
}

pub fn data(stream: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = (stream & 0x7fff_ffff).to_be_bytes().to_vec();
    f.push(flags);
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(payload);
    f
}

/// The two header compression contexts of a session.
pub struct Headers {
    inflate: Decompress,
    deflate: Compress,
    dict: Vec<u8>,
    deflate_started: bool,
}

impl Default for Headers {
    fn default() -> Self {
        Headers {
            inflate: Decompress::new(true),
            deflate: Compress::new(Compression::default(), true),
            dict: dictionary(),
            deflate_started: false,
        }
    }
}

impl Headers {
    /// Decodes a header block (lower-case names; multiple values joined by NUL kept whole).
    pub fn decode(&mut self, block: &[u8]) -> std::io::Result<BTreeMap<String, String>> {
        let mut out = Vec::with_capacity(block.len() * 4 + 64);
        let mut input = block;
        loop {
            let before_in = self.inflate.total_in();
            if out.capacity() - out.len() < 256 {
                out.reserve(4096);
            }
            match self
                .inflate
                .decompress_vec(input, &mut out, FlushDecompress::Sync)
            {
                Ok(Status::Ok | Status::BufError | Status::StreamEnd) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(&self.dict)
                        .map_err(std::io::Error::other)?;
                }
                Err(e) => return Err(std::io::Error::other(format!("SPDY headers: {e}"))),
            }
            let used = (self.inflate.total_in() - before_in) as usize;
            input = &input[used..];
            if input.is_empty() && out.capacity() > out.len() {
                break;
            }
        }
        let mut p = &out[..];
        let u32_at = |p: &mut &[u8]| -> std::io::Result<usize> {
            if p.len() < 4 {
                return Err(std::io::Error::other("SPDY headers: truncated"));
            }
            let n = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize;
            *p = &p[4..];
            Ok(n)
        };
        let count = u32_at(&mut p)?;
        let mut h = BTreeMap::new();
        for _ in 0..count {
            let n = u32_at(&mut p)?;
            if p.len() < n {
                return Err(std::io::Error::other("SPDY headers: truncated"));
            }
            let name = String::from_utf8_lossy(&p[..n]).to_ascii_lowercase();
            p = &p[n..];
            let n = u32_at(&mut p)?;
            if p.len() < n {
                return Err(std::io::Error::other("SPDY headers: truncated"));
            }
            let value = String::from_utf8_lossy(&p[..n]).into_owned();
            p = &p[n..];
            h.insert(name, value);
        }
        Ok(h)
    }

    /// Encodes a header block.
    pub fn encode(&mut self, headers: &[(&str, &str)]) -> std::io::Result<Vec<u8>> {
        if !self.deflate_started {
            self.deflate
                .set_dictionary(&self.dict)
                .map_err(std::io::Error::other)?;
            self.deflate_started = true;
        }
        let mut raw = (headers.len() as u32).to_be_bytes().to_vec();
        for (k, v) in headers {
            raw.extend_from_slice(&(k.len() as u32).to_be_bytes());
            raw.extend_from_slice(k.as_bytes());
            raw.extend_from_slice(&(v.len() as u32).to_be_bytes());
            raw.extend_from_slice(v.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut input = &raw[..];
        loop {
            out.reserve(256);
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .map_err(std::io::Error::other)?;
            input = &input[(self.deflate.total_in() - before) as usize..];
            if input.is_empty() && out.capacity() > out.len() {
                break;
            }
        }
        Ok(out)
    }
}

/// A SYN_REPLY for `stream` with no headers.
pub fn syn_reply(h: &mut Headers, stream: u32) -> std::io::Result<Vec<u8>> {
    let mut p = stream.to_be_bytes().to_vec();
    p.extend_from_slice(&h.encode(&[])?);
    Ok(control(SYN_REPLY, 0, &p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dictionary_is_spdy3s() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        assert_eq!(&d[..11], b"\0\0\0\x07options");
        assert!(d.ends_with(b"HTTP/1.1\0\0\0\x03url\0\0\0\x06public\0\0\0\x0aset-cookie\0\0\0\x0akeep-alive\0\0\0\x06origin100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."));
    }

    #[test]
    fn headers_round_trip_through_one_context_per_direction() {
        let mut client = Headers::default();
        let mut server = Headers::default();
        for i in 0..3 {
            let port = format!("80{i}");
            let block = client
                .encode(&[("streamtype", "data"), ("port", &port)])
                .unwrap();
            let h = server.decode(&block).unwrap();
            assert_eq!(h["streamtype"], "data");
            assert_eq!(h["port"], port);
        }
    }

    #[tokio::test]
    async fn frames() {
        let mut b = control(PING, 0, &7u32.to_be_bytes());
        b.extend(data(5, FLAG_FIN, b"hi"));
        let mut r = &b[..];
        match read_frame(&mut r).await.unwrap().unwrap() {
            Frame::Control { kind, data, .. } => {
                assert_eq!(kind, PING);
                assert_eq!(data, 7u32.to_be_bytes());
            }
            f => panic!("{f:?}"),
        }
        match read_frame(&mut r).await.unwrap().unwrap() {
            Frame::Data {
                stream,
                flags,
                data,
            } => {
                assert_eq!((stream, flags, &data[..]), (5, FLAG_FIN, &b"hi"[..]));
            }
            f => panic!("{f:?}"),
        }
    }
}
