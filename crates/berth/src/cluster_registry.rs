//! The cluster's registry: `berth server` serves berth's registry (the OCI distribution API
//! of `berth registry serve`) on a port of its own (`--registry-port`, 5000) with the
//! server's certificate, storing images under `<data-dir>/registry`.
//!
//! It knows its clients by the cluster's identities: a client certificate of the cluster
//! CA (nodes, the admin, users from `berth kubeconfig`), or one of the API's tokens
//! (ServiceAccount, static and bootstrap tokens) as the password of Basic authentication
//! (what `docker login` and `berth login` send) or as a bearer token. RBAC decides what
//! each may do, on the cluster-scoped resource `repositories` of the group
//! `registry.berth.io`, named by the repository: `get` to pull, `create` to push, `delete`
//! to delete, and `list` for the catalog.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use apiserver::auth::{Attributes, UserInfo};
use registry::auth::{Access, Gate, Principal};

/// How often unreferenced blobs are collected (and how old they must be).
const GC_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3600);

/// The API group RBAC rules name for the registry.
pub const GROUP: &str = "registry.berth.io";

/// The cluster's identities and RBAC in front of the registry.
struct ClusterGate {
    api: apiserver::Running,
}

impl Gate for ClusterGate {
    fn authenticate(
        &self,
        client_certificate: Option<&[u8]>,
        authorization: Option<&str>,
    ) -> Result<Option<Principal>, String> {
        let principal = |u: UserInfo| {
            Some(Principal {
                name: u.name,
                groups: u.groups,
            })
        };
        if let Some(der) = client_certificate {
            if let Some(u) = apiserver::auth::user_from_cert(der) {
                return Ok(principal(u));
            }
        }
        let Some(h) = authorization else {
            return Ok(None);
        };
        let token = if let Some(t) = h.strip_prefix("Bearer ") {
            t.trim().to_string()
        } else if let Some(b) = h.strip_prefix("Basic ") {
            let raw = registry::auth::base64_decode(b.trim(), false)
                .and_then(|r| String::from_utf8(r).ok())
                .ok_or("malformed Basic credentials")?;
            // The user name is the client's to choose; the token says who it is.
            raw.split_once(':')
                .map(|(_, p)| p.to_string())
                .ok_or("malformed Basic credentials")?
        } else {
            return Err("expected Basic credentials with a token of the cluster as the password, or a Bearer token".into());
        };
        match self.api.user_for_token(&token) {
            Some(u) => Ok(principal(u)),
            None => Err("the token is not one of this cluster's (a ServiceAccount token from `kubectl create token`, or a static or bootstrap token)".into()),
        }
    }

    fn allowed(&self, who: &Principal, repository: &str, access: Access) -> bool {
        let user = UserInfo {
            name: who.name.clone(),
            uid: String::new(),
            groups: who.groups.clone(),
        };
        let (verb, name) = match (access, repository) {
            (_, "*") => ("list", ""),
            (Access::Pull, r) => ("get", r),
            (Access::Push, r) => ("create", r),
            (Access::Delete, r) => ("delete", r),
        };
        self.api.authorize(
            &user,
            &Attributes {
                verb,
                group: GROUP,
                resource: "repositories",
                subresource: "",
                namespace: "",
                name,
                path: "",
            },
        )
    }
}

/// Starts the registry on `bind:port` in threads of its own; returns the address it
/// listens on.
pub fn start(
    api: &apiserver::Running,
    data_dir: &Path,
    bind: IpAddr,
    port: u16,
) -> Result<SocketAddr> {
    let root = data_dir.join("registry");
    let storage =
        registry::Storage::open(&root).with_context(|| format!("opening {}", root.display()))?;
    let tls_dir = data_dir.join("tls");
    let tls = registry::tls::server_config_with_clients(
        &tls_dir.join("serving.crt"),
        &tls_dir.join("serving.key"),
        Some(api.pki.ca_cert_pem.as_bytes()),
    )
    .map_err(|e| anyhow!(e))
    .context("the registry's TLS")?;
    let addr = SocketAddr::new(bind, port);
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("the registry listening on {addr} (--registry-port)"))?;
    let local = listener.local_addr()?;
    let gate = Arc::new(ClusterGate { api: api.clone() });
    let reg = Arc::new(registry::Registry::new(
        storage,
        registry::Config {
            auth: Some(registry::auth::Auth::gate(gate)),
            log: false,
            ..Default::default()
        },
    ));
    // Blobs no manifest references any more go, as `berth registry gc` removes them, while
    // serving goes on; the grace keeps what a push in progress has sent.
    let collected = reg.clone();
    std::thread::Builder::new()
        .name("registry-gc".into())
        .spawn(move || loop {
            std::thread::sleep(GC_INTERVAL);
            match collected.storage.gc(GC_INTERVAL) {
                Ok(r) if !r.removed.is_empty() => eprintln!(
                    "berth server: the registry removed {} unreferenced blobs",
                    r.removed.len()
                ),
                Ok(_) => {}
                Err(e) => eprintln!("berth server: the registry's garbage collection: {e}"),
            }
        })
        .context("starting the registry's garbage collection")?;
    std::thread::Builder::new()
        .name("registry".into())
        .spawn(move || registry::server::serve(listener, reg, Some(tls)))
        .context("starting the registry")?;
    Ok(local)
}
