//! berth's images: the content-addressable store, the OCI and Docker image model, layers
//! applied into snapshots, and the tags that version them. It never runs a container.

pub mod archive;
pub mod digest;
pub mod images;
pub mod layer;
pub mod model;
pub mod reference;
pub mod snapshot;
pub mod store;

pub use digest::Digest;

/// How a layer blob is compressed (from its media type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}
