//! berth's HTTP API on the daemon's unix socket: `server` (routes into the engine), `client`
//! (what the CLI uses), and the HTTP/1.1 they share (`http`). The API is documented in
//! docs/api.md.

mod archive;
pub mod client;
mod docker;
pub mod http;
mod images;
pub mod server;

/// The Docker API's request bodies as the engine gets them: what the server decodes from
/// hostile input before any engine call, open to the fuzz targets (`fuzz/`).
pub mod bodies {
    use crate::http::Head;

    /// Why a body was refused: the status the API answers and its message.
    pub type Refused = (u16, String);

    fn refused(f: crate::server::Failure) -> Refused {
        (f.0, f.1)
    }

    /// `POST /containers/create` (its query, e.g. `name`, comes from `head`).
    pub fn container_create(head: &Head, body: &[u8]) -> Result<engine::CreateRequest, Refused> {
        crate::docker::create_body(head, &mut &body[..]).map_err(refused)
    }

    /// `POST /containers/{id}/update`.
    pub fn container_update(body: &[u8]) -> Result<engine::UpdateRequest, Refused> {
        crate::docker::update_request(&mut &body[..]).map_err(refused)
    }

    /// `POST /containers/{id}/exec`.
    pub fn exec_create(body: &[u8]) -> Result<engine::ExecRequest, Refused> {
        crate::docker::exec_request(&mut &body[..]).map_err(refused)
    }
}

/// The response header of `GET/HEAD /containers/{id}/archive` that carries the path's stat.
pub const STAT_HEADER: &str = "X-Berth-Path-Stat";

/// The version of berth's API.
pub const API_VERSION: &str = "1.0";
