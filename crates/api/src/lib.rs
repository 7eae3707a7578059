//! berth's HTTP API on the daemon's unix socket: `server` (routes into the engine), `client`
//! (what the CLI uses), and the HTTP/1.1 they share (`http`). The API is documented in
//! docs/api.md.

mod archive;
pub mod client;
mod docker;
pub mod http;
mod images;
pub mod server;

/// The response header of `GET/HEAD /containers/{id}/archive` that carries the path's stat.
pub const STAT_HEADER: &str = "X-Berth-Path-Stat";

/// The version of berth's API.
pub const API_VERSION: &str = "1.0";
