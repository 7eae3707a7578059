//! Image layers: applying a (possibly hostile) layer tar into an overlayfs snapshot, and
//! producing layer tars from an overlayfs upper directory or a plain directory tree.
//!
//! Applying never uses the `tar` crate's own unpacking: every path in the layer is resolved
//! inside the snapshot with openat2(RESOLVE_IN_ROOT), and every file is created, linked or
//! changed relative to the fd of its resolved parent directory, never following a final symlink.
//! `..` that climbs above the root, hardlinks whose target climbs out, and whiteouts naming a
//! path outside are errors naming the tar entry; symlinks may point anywhere, but nothing is
//! ever written through one outside the snapshot.

mod apply;
mod diff;
pub mod guard;
mod sys;
#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::path::PathBuf;

pub use apply::apply;
pub use diff::{diff, tar_dir};

use crate::digest::Digest;

/// The prefix of a whiteout entry's name: `.wh.<name>` deletes `<name>` of the layers below.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// The entry that makes its directory opaque: nothing of the layers below shows through.
pub const WHITEOUT_OPAQUE: &str = ".wh..wh..opq";
/// The prefix of aufs metadata entries (`.wh..wh.plnk`, `.wh..wh.aufs`), skipped when applying.
pub const WHITEOUT_META_PREFIX: &str = ".wh..wh.";
/// The overlayfs xattr marking a directory opaque (value `y`).
pub const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// What [`apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The sha256 of the uncompressed tar stream, end-of-archive blocks and padding included
    /// (the image config's `rootfs.diff_ids` entry).
    pub diff_id: Digest,
    /// Uncompressed bytes read.
    pub size: u64,
    /// Tar entries seen (PAX and GNU long-name headers are part of the entry they describe).
    pub entries: u64,
}

/// Where in a layer stream a stream error happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum At {
    /// Before the first entry's header was read.
    Start,
    /// While reading this entry's content.
    Entry(String),
    /// While reading the header that follows this entry.
    After(String),
    /// After the end-of-archive marker.
    End,
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            At::Start => write!(f, " at the start of the layer"),
            At::Entry(e) => write!(f, " while reading layer entry {e:?}"),
            At::After(e) => write!(f, " after layer entry {e:?}"),
            At::End => write!(f, " after the last layer entry"),
        }
    }
}

/// Why a layer could not be applied or produced. Messages name the tar entry or the file.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// The destination (or source) directory itself cannot be opened.
    #[error("layer directory {}: {}", path.display(), errno_text(cause))]
    Dir { path: PathBuf, cause: io::Error },
    /// The entry's path climbs above the layer root.
    #[error("layer entry {entry:?}: path escapes the layer root")]
    Escape { entry: String },
    /// A hardlink's target climbs above the layer root.
    #[error("layer entry {entry:?}: hardlink target {target:?} escapes the layer root")]
    LinkEscape { entry: String, target: String },
    /// A hardlink's target is not in the snapshot (it is resolved inside it, never on the host).
    #[error("layer entry {entry:?}: hardlink target {target:?} does not exist in the layer")]
    LinkMissing { entry: String, target: String },
    /// An entry type that layers cannot carry (GNU sparse files, volume labels, …).
    #[error("layer entry {entry:?}: unsupported entry type: {kind}")]
    Unsupported { entry: String, kind: String },
    /// The entry's header or PAX records make no sense.
    #[error("layer entry {entry:?}: {reason}")]
    Invalid { entry: String, reason: String },
    /// Creating or changing the entry in the snapshot failed.
    #[error("layer entry {entry:?}: {op}: {}", errno_text(cause))]
    Entry {
        entry: String,
        op: String,
        cause: io::Error,
    },
    /// The gzip or zstd stream is corrupt or cut short.
    #[error("corrupt or truncated {format} stream{at}: {}", errno_text(cause))]
    Decompress {
        format: &'static str,
        at: At,
        cause: io::Error,
    },
    /// The layer's bytes end before the tar says they should.
    #[error("truncated layer: the {format} stream ends{at}")]
    Truncated { format: &'static str, at: At },
    /// Reading the (uncompressed) layer failed.
    #[error("reading the layer{at}: {}", errno_text(cause))]
    Read { at: At, cause: io::Error },
    /// The tar structure itself is broken (bad checksum, bad number field, …).
    #[error("malformed tar{at}: {}", errno_text(cause))]
    Tar { at: At, cause: io::Error },
    /// Reading a file of the directory being turned into a layer failed.
    #[error("{}: {op}: {}", path.display(), errno_text(cause))]
    Source {
        path: PathBuf,
        op: String,
        cause: io::Error,
    },
    /// A file of the directory being turned into a layer cannot be expressed in a layer.
    #[error("{}: {reason}", path.display())]
    Unrepresentable { path: PathBuf, reason: String },
    /// Writing the layer tar failed.
    #[error("writing the layer: {}", errno_text(.0))]
    Write(io::Error),
}

/// An io::Error's text without the trailing " (os error N)".
fn errno_text(e: &io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) if s.ends_with(')') => s[..i].to_string(),
        _ => s,
    }
}
