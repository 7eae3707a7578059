//! berth's registry: the OCI Distribution Specification v1.1 served from the file system
//! (`storage`), over HTTP/1.1 or TLS (`server`, `tls`), with none, htpasswd or bearer-token
//! authentication and per-repository permissions (`auth`).

pub mod auth;
pub mod error;
pub mod names;
pub mod server;
pub mod storage;
pub mod tls;

pub use error::RegError;
pub use server::{Config, Registry};
pub use storage::Storage;
