//! What the server does for nodes besides storing their objects: hands out the cluster CA
//! (`/cacerts`, which a joining agent checks against the hash its token pins), takes the
//! server's join token as a bootstrapper's bearer token (the node's certificates then come
//! through CertificateSigningRequests, `csr.rs`), and proxies the subresources a node serves (`pods/log`, `exec`, `attach`, `portforward`,
//! `nodes/proxy`) to that node's kubelet API, as Kubernetes' API server does: the request
//! is forwarded over TLS from the cluster CA with the server's client certificate, and an
//! upgraded connection (WebSocket or SPDY) is spliced both ways.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::api::Api;
use crate::kinds::Kind;
use crate::pki::Pki;
use crate::status::ApiError;

type ResBody = BoxBody<Bytes, Infallible>;

/// The kubelet port when a Node does not say (`status.daemonEndpoints`).
pub const KUBELET_PORT: u16 = 10250;

/// A node subresource asked for: `nodes/NAME/proxy/<rest>`, `pods/NAME/{log,exec,…}`.
#[derive(Clone, Copy)]
pub struct NodeSub<'a> {
    pub kind: &'a Kind,
    pub namespace: Option<&'a str>,
    pub name: &'a str,
    pub sub: &'a str,
    pub rest: &'a str,
}

pub struct Nodes {
    pki: Arc<Pki>,
    kubelet_tls: Arc<rustls::ClientConfig>,
    /// The client URLs of this server's own etcd member (none: no member of its own).
    etcd_members: Vec<String>,
}

fn error(e: &ApiError) -> Response<ResBody> {
    json_response(e.code, &e.to_status())
}

fn json_response(status: u16, v: &Value) -> Response<ResBody> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())).boxed());
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Compares in time independent of where the first difference is.
pub(crate) fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Nodes {
    pub fn new(pki: Arc<Pki>, etcd_members: Vec<String>) -> Result<Nodes, rustls::Error> {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in crate::pem_certs(&pki.ca_cert_pem) {
            roots.add(c)?;
        }
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(pki.admin_key_pem.as_bytes())
            .map_err(|e| rustls::Error::General(format!("the admin key: {e}")))?;
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(crate::pem_certs(&pki.admin_cert_pem), key)?;
        Ok(Nodes {
            pki,
            kubelet_tls: Arc::new(tls),
            etcd_members,
        })
    }

    /// `GET /v1-berth/server-bootstrap`, for a server joining the cluster (`berth server
    /// --server URL --token T`), authenticated by the cluster's server token alone (not a
    /// node's bootstrap token): the cluster's bootstrap data, sealed with a key derived
    /// from that token (see [`crate::bootstrap`]), and the client URLs of the etcd member
    /// to add its own through.
    pub async fn server_bootstrap(
        &self,
        api: &Api,
        authorization: Option<&str>,
    ) -> Response<ResBody> {
        let given = authorization
            .and_then(|a| a.strip_prefix("Bearer "))
            .map(crate::bootstrap::secret_of)
            .unwrap_or_default();
        if !same_secret(given.as_bytes(), self.pki.join_secret().as_bytes()) {
            return error(&ApiError::new(
                401,
                "Unauthorized",
                "joining as a server takes the cluster's server token (<data-dir>/tls/token on a server), not a node's bootstrap token".to_string(),
            ));
        }
        if self.etcd_members.is_empty() {
            return error(&ApiError::new(
                404,
                "NotFound",
                "this server runs no etcd member to join: servers join a cluster whose first server was started with --cluster-init (servers sharing --datastore-endpoint need only --token)".to_string(),
            ));
        }
        match crate::bootstrap::sealed(&*api.store, self.pki.join_secret()).await {
            Ok(Some(sealed)) => {
                use base64::Engine as _;
                json_response(
                    200,
                    &serde_json::json!({
                        "bootstrap": base64::engine::general_purpose::STANDARD.encode(sealed),
                        "etcd": self.etcd_members,
                    }),
                )
            }
            Ok(None) => error(&ApiError::new(
                503,
                "ServiceUnavailable",
                "the cluster's bootstrap data is not stored yet".to_string(),
            )),
            Err(e) => error(&ApiError::new(500, "InternalError", format!("{e:#}"))),
        }
    }

    /// `GET /cacerts`: the cluster CA, which an agent hashes and compares with its token
    /// before it trusts anything this server says.
    pub fn cacerts(&self) -> Response<ResBody> {
        let mut r = Response::new(Full::new(Bytes::from(self.pki.ca_cert_pem.clone())).boxed());
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-pem-file"),
        );
        r
    }

    /// The server's own join token (`K10…::server:<secret>`) as a bearer token: a
    /// bootstrapper, which may ask for node certificates, as a bootstrap token may.
    pub fn server_token_user(&self, token: &str) -> Option<crate::auth::UserInfo> {
        same_secret(token.as_bytes(), self.pki.join_secret().as_bytes()).then(|| {
            crate::auth::UserInfo {
                name: "system:bootstrap:server-token".into(),
                uid: String::new(),
                groups: vec!["system:bootstrappers".into(), "system:authenticated".into()],
            }
        })
    }

    /// Forwards a node subresource to the kubelet of the node that serves it.
    pub async fn proxy(
        &self,
        api: &Api,
        mut req: Request<crate::server::ReqBody>,
        t: &NodeSub<'_>,
    ) -> Response<ResBody> {
        let target = match self
            .kubelet_path(api, req.uri().query().unwrap_or_default(), t)
            .await
        {
            Ok(t) => t,
            Err(e) => return error(&e),
        };
        let (host, port, path) = target;
        let tcp = match tokio::time::timeout(
            std::time::Duration::from_secs(10),
            tokio::net::TcpStream::connect((host.as_str(), port)),
        )
        .await
        {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                return error(&ApiError::new(
                    502,
                    "InternalError",
                    format!("error dialing backend: dial tcp {host}:{port}: {e}"),
                ))
            }
            Err(_) => {
                return error(&ApiError::new(
                    502,
                    "InternalError",
                    format!("error dialing backend: dial tcp {host}:{port}: i/o timeout"),
                ))
            }
        };
        let _ = tcp.set_nodelay(true);
        let server_name = match rustls_pki_types::ServerName::try_from(host.clone()) {
            Ok(n) => n,
            Err(_) => return error(&ApiError::internal(format!("kubelet address {host}"))),
        };
        let tls = match tokio_rustls::TlsConnector::from(self.kubelet_tls.clone())
            .connect(server_name, tcp)
            .await
        {
            Ok(t) => t,
            Err(e) => {
                return error(&ApiError::new(
                    502,
                    "InternalError",
                    format!("error dialing backend: tls: {e}"),
                ))
            }
        };
        let (mut send, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(tls)).await
        {
            Ok(c) => c,
            Err(e) => return error(&ApiError::internal(format!("kubelet connection: {e}"))),
        };
        tokio::spawn(conn.with_upgrades());
        let client_upgrade = hyper::upgrade::on(&mut req);
        let client_headers = req.headers().clone();
        let mut out = Request::builder()
            .method(req.method().clone())
            .uri(path)
            .body(req.into_body())
            .expect("a request of parts that were valid");
        // The client's headers (the upgrade and its subprotocols), never its credentials;
        // the request is HTTP/1.1 to the kubelet even when the client spoke HTTP/2.
        for (k, v) in client_headers.iter() {
            if k == http::header::AUTHORIZATION || k == http::header::HOST {
                continue;
            }
            out.headers_mut().append(k.clone(), v.clone());
        }
        out.headers_mut().insert(
            http::header::HOST,
            HeaderValue::from_str(&format!("{host}:{port}"))
                .unwrap_or(HeaderValue::from_static("kubelet")),
        );
        let mut resp = match send.send_request(out).await {
            Ok(r) => r,
            Err(e) => return error(&ApiError::internal(format!("kubelet request: {e}"))),
        };
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let backend_upgrade = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                let (Ok(backend), Ok(client)) = tokio::join!(backend_upgrade, client_upgrade)
                else {
                    return;
                };
                let mut backend = TokioIo::new(backend);
                let mut client = TokioIo::new(client);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut backend).await;
            });
            let (parts, _) = resp.into_parts();
            return Response::from_parts(parts, Full::new(Bytes::new()).boxed());
        }
        // Streamed through (`logs -f`); an error from the kubelet ends the stream.
        let (parts, body) = resp.into_parts();
        let stream = futures::stream::unfold(body, |mut b| async move {
            match b.frame().await {
                Some(Ok(f)) => Some((Ok::<_, Infallible>(f), b)),
                _ => None,
            }
        });
        Response::from_parts(
            parts,
            BodyExt::boxed(http_body_util::StreamBody::new(stream)),
        )
    }

    /// GETs `path` from the kubelet at `host:port` (the metrics pipeline's scrapes): the
    /// body of a 200 answer.
    pub async fn kubelet_get(&self, host: &str, port: u16, path: &str) -> Result<Bytes, String> {
        let tcp = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("dial tcp {host}:{port}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let server_name = rustls_pki_types::ServerName::try_from(host.to_string())
            .map_err(|_| format!("kubelet address {host}"))?;
        let tls = tokio_rustls::TlsConnector::from(self.kubelet_tls.clone())
            .connect(server_name, tcp)
            .await
            .map_err(|e| format!("tls with {host}:{port}: {e}"))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("{host}:{port}: {e}"))?;
        tokio::spawn(conn);
        let req = Request::builder()
            .uri(path)
            .header(http::header::HOST, format!("{host}:{port}"))
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| format!("GET {path} from {host}:{port}: {e}"))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("GET {path} from {host}:{port}: {e}"))?
            .to_bytes();
        if status != StatusCode::OK {
            return Err(format!(
                "GET {path} from {host}:{port}: {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ));
        }
        Ok(body)
    }

    /// Where on which kubelet a subresource is served: (host, port, path with query).
    async fn kubelet_path(
        &self,
        api: &Api,
        query: &str,
        t: &NodeSub<'_>,
    ) -> Result<(String, u16, String), ApiError> {
        let NodeSub {
            kind,
            namespace,
            name,
            sub,
            rest,
        } = *t;
        let obj = api
            .cache
            .get(&kind.key(namespace, name))
            .and_then(|raw| serde_json::from_slice::<Value>(&raw).ok())
            .ok_or_else(|| ApiError::not_found(kind, name))?;
        let (node, path) = match kind.kind.as_str() {
            "Node" => (name.to_string(), format!("/{rest}")),
            "Pod" => {
                let node = obj
                    .pointer("/spec/nodeName")
                    .and_then(Value::as_str)
                    .filter(|n| !n.is_empty())
                    .ok_or_else(|| {
                        ApiError::bad_request(format!("pod {name} does not have a host assigned"))
                    })?
                    .to_string();
                let ns = namespace.unwrap_or_default();
                let path = match sub {
                    "portforward" => format!("/portForward/{ns}/{name}"),
                    _ => {
                        let container = pick_container(&obj, name, query)?;
                        let base = match sub {
                            "log" => "containerLogs",
                            "exec" => "exec",
                            "attach" => "attach",
                            other => {
                                return Err(ApiError::not_found_gr("", "pods", other));
                            }
                        };
                        format!("/{base}/{ns}/{name}/{container}")
                    }
                };
                (node, path)
            }
            _ => {
                return Err(ApiError::method_not_allowed(format!(
                    "{} does not serve {sub}",
                    kind.plural
                )))
            }
        };
        let node_obj = api
            .cache
            .get(&format!("/registry/core/nodes/{node}"))
            .and_then(|raw| serde_json::from_slice::<Value>(&raw).ok())
            .ok_or_else(|| ApiError::not_found_gr("", "nodes", &node))?;
        let (host, port) = kubelet_address(&node_obj)?;
        let path = if query.is_empty() {
            path
        } else {
            format!("{path}?{query}")
        };
        Ok((host, port, path))
    }
}

/// Where a Node's kubelet listens: its InternalIP (else its Hostname) and its kubelet port.
pub fn kubelet_address(node: &Value) -> Result<(String, u16), ApiError> {
    let host = node
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .and_then(|a| {
            a.iter()
                .find(|x| x["type"] == "InternalIP")
                .or_else(|| a.iter().find(|x| x["type"] == "Hostname"))
        })
        .and_then(|x| x["address"].as_str())
        .ok_or_else(|| {
            ApiError::unavailable(format!(
                "node \"{}\" has no address to reach its kubelet",
                node.pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
            ))
        })?
        .to_string();
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .unwrap_or(KUBELET_PORT);
    Ok((host, port))
}

/// The container a pod subresource names, or the pod's only one (Kubernetes' messages
/// when it is ambiguous or unknown).
fn pick_container(pod: &Value, name: &str, query: &str) -> Result<String, ApiError> {
    let asked = query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == "container")
        .map(|(_, v)| httpwire::decode(v))
        .filter(|v| !v.is_empty());
    let names = |path: &str| -> Vec<String> {
        pod.pointer(path)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|c| c["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let containers = names("/spec/containers");
    let init = names("/spec/initContainers");
    let ephemeral = names("/spec/ephemeralContainers");
    match asked {
        Some(c) => {
            if containers.contains(&c) || init.contains(&c) || ephemeral.contains(&c) {
                Ok(c)
            } else {
                Err(ApiError::bad_request(format!(
                    "container {c} is not valid for pod {name}"
                )))
            }
        }
        None if containers.len() == 1 => Ok(containers[0].clone()),
        None => {
            let mut msg = format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            );
            if !init.is_empty() {
                msg.push_str(&format!(
                    " or one of the init containers: [{}]",
                    init.join(" ")
                ));
            }
            Err(ApiError::bad_request(msg))
        }
    }
}
