//! berth's API over `httpwire`: its responses carry `Api-Version`.

pub use httpwire::*;

use std::io::{self, Write};

/// Writes a complete response with a body.
pub fn respond(w: &mut impl Write, code: u16, content_type: &str, body: &[u8]) -> io::Result<()> {
    respond_with(
        w,
        code,
        content_type,
        &[("Api-Version", crate::API_VERSION)],
        body,
    )
}

/// Writes the head of a streamed (chunked) response. The server closes the connection after
/// a stream, and says so: a client must not send its next request on it.
pub fn respond_stream_head(w: &mut impl Write, code: u16, content_type: &str) -> io::Result<()> {
    respond_stream_head_with(
        w,
        code,
        content_type,
        &[("Api-Version", crate::API_VERSION), ("Connection", "close")],
    )
}

/// Writes the 101 answer to an upgrade (hijack), after which the connection is raw.
pub fn respond_upgrade(w: &mut impl Write, content_type: &str) -> io::Result<()> {
    respond_upgrade_with(w, content_type, &[("Api-Version", crate::API_VERSION)])
}
