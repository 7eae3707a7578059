//! The server side of WebSocket (RFC 6455) as the kubelet's streaming protocols use it:
//! the handshake's accept key, and reading (masked) and writing (unmasked) frames.

use base64::Engine as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const BINARY: u8 = 2;
pub const CLOSE: u8 = 8;
pub const PING: u8 = 9;
pub const PONG: u8 = 10;

/// Frames larger than this are refused (the streams send small ones).
const MAX_FRAME: u64 = 16 << 20;

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.trim().as_bytes());
    ctx.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(ctx.finish().as_ref())
}

/// Reads one message (continuation frames joined): (opcode, payload). `None` at the end
/// of the stream.
pub async fn read_message<R: AsyncRead + Unpin>(
    r: &mut R,
) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    let mut opcode = 0;
    let mut out = Vec::new();
    loop {
        let mut h = [0u8; 2];
        match r.read_exact(&mut h).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let fin = h[0] & 0x80 != 0;
        let op = h[0] & 0x0f;
        let masked = h[1] & 0x80 != 0;
        let mut len = u64::from(h[1] & 0x7f);
        if len == 126 {
            let mut b = [0u8; 2];
            r.read_exact(&mut b).await?;
            len = u64::from(u16::from_be_bytes(b));
        } else if len == 127 {
            let mut b = [0u8; 8];
            r.read_exact(&mut b).await?;
            len = u64::from_be_bytes(b);
        }
        if len > MAX_FRAME {
            return Err(std::io::Error::other("WebSocket frame too large"));
        }
        let mut mask = [0u8; 4];
        if masked {
            r.read_exact(&mut mask).await?;
        }
        let mut payload = vec![0u8; len as usize];
        r.read_exact(&mut payload).await?;
        if masked {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= mask[i % 4];
            }
        }
        // Control frames may come between the fragments of a message.
        if op >= 8 {
            return Ok(Some((op, payload)));
        }
        if op != 0 {
            opcode = op;
        }
        out.extend_from_slice(&payload);
        if fin {
            return Ok(Some((opcode, out)));
        }
    }
}

/// Writes one unmasked frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    opcode: u8,
    payload: &[u8],
) -> std::io::Result<()> {
    let mut h = vec![0x80 | opcode];
    let n = payload.len();
    if n < 126 {
        h.push(n as u8);
    } else if n <= 0xffff {
        h.push(126);
        h.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        h.push(127);
        h.extend_from_slice(&(n as u64).to_be_bytes());
    }
    h.extend_from_slice(payload);
    w.write_all(&h).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[tokio::test]
    async fn frames_round_trip() {
        let mut buf = Vec::new();
        write_frame(&mut buf, BINARY, &[1, 2, 3]).await.unwrap();
        let big = vec![7u8; 70000];
        write_frame(&mut buf, BINARY, &big).await.unwrap();
        let mut r = &buf[..];
        assert_eq!(
            read_message(&mut r).await.unwrap(),
            Some((BINARY, vec![1, 2, 3]))
        );
        assert_eq!(read_message(&mut r).await.unwrap(), Some((BINARY, big)));
        assert_eq!(read_message(&mut r).await.unwrap(), None);
        // A masked client frame.
        let mask = [9u8, 8, 7, 6];
        let data = b"hi";
        let mut f = vec![0x82, 0x80 | 2];
        f.extend_from_slice(&mask);
        f.extend(data.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        let mut r = &f[..];
        assert_eq!(
            read_message(&mut r).await.unwrap(),
            Some((BINARY, b"hi".to_vec()))
        );
    }
}
