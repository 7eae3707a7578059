//! The kubelet's API on the node (port 10250, TLS from the cluster CA; clients must present
//! a certificate of the CA in `system:masters`, as the API server's is): `/healthz`,
//! `/stats/summary` and `/metrics/resource` (`stats.rs`),
//! `/containerLogs`, and `/exec` and `/attach` over WebSocket with the
//! `v5.channel.k8s.io`/`v4.channel.k8s.io` subprotocols (or SPDY/3.1 with a stream per
//! channel, for clients that fall back to it) (channel 0 stdin, 1 stdout,
//! 2 stderr, 3 the error channel's Status, 4 terminal resize, 255 close), and
//! `/portForward` (`portforward.rs`). A request it
//! cannot serve gets a non-101 answer with a Status, so a client can fall back.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::join::Credentials;
use crate::pods::Manager;
use crate::ws;

type ResBody = BoxBody<Bytes, Infallible>;

pub fn tls_config(
    c: &Credentials,
    live: &crate::join::Live,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use rustls_pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(c.ca.as_bytes()) {
        roots.add(cert?)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(live.serving_resolver());
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Whether a client certificate is in `system:masters` (the organization).
fn is_master(der: &[u8]) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return false;
    };
    let master = cert
        .subject()
        .iter_organization()
        .any(|o| o.as_str().ok() == Some("system:masters"));
    master
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    pods: Arc<Manager>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, pods) = (acceptor.clone(), pods.clone());
        tokio::spawn(async move {
            let Ok(Ok(s)) =
                tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp))
                    .await
            else {
                return;
            };
            let master = s
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .is_some_and(|c| is_master(c));
            let svc = hyper::service::service_fn(move |req| {
                let pods = pods.clone();
                async move {
                    if !master {
                        return Ok::<_, Infallible>(status(
                            403,
                            "Forbidden",
                            "only the API server may use the kubelet's API",
                        ));
                    }
                    Ok(handle(req, pods).await)
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .http1_only()
                .serve_connection_with_upgrades(TokioIo::new(s), svc)
                .await;
        });
    }
}

fn status(code: u16, reason: &str, message: &str) -> Response<ResBody> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code});
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn query(req: &Request<Incoming>) -> Vec<(String, String)> {
    req.uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (httpwire::decode(k), httpwire::decode(v))
        })
        .collect()
}

fn flag(q: &[(String, String)], k: &str) -> bool {
    q.iter()
        .any(|(n, v)| n == k && matches!(v.as_str(), "1" | "true" | "True" | ""))
}

fn get<'a>(q: &'a [(String, String)], k: &str) -> Option<&'a str> {
    q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

async fn handle(req: Request<Incoming>, pods: Arc<Manager>) -> Response<ResBody> {
    let path = req.uri().path().to_string();
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        ["healthz"] => Response::new(Full::new(Bytes::from_static(b"ok")).boxed()),
        ["stats", "summary"] => {
            let v = pods.stats.summary(&pods.cfg.node_name);
            let mut r = Response::new(Full::new(Bytes::from(v.to_string())).boxed());
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        ["metrics", "resource"] => {
            let mut r = Response::new(Full::new(Bytes::from(pods.stats.prometheus())).boxed());
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        ["containerLogs", ns, pod, container] => logs(&req, &pods, ns, pod, container).await,
        ["exec", ns, pod, container] | ["exec", ns, pod, _, container] => {
            stream(
                req,
                pods.clone(),
                ns.to_string(),
                pod.to_string(),
                container.to_string(),
                false,
            )
            .await
        }
        ["attach", ns, pod, container] | ["attach", ns, pod, _, container] => {
            stream(
                req,
                pods.clone(),
                ns.to_string(),
                pod.to_string(),
                container.to_string(),
                true,
            )
            .await
        }
        ["portForward", ns, pod] | ["portForward", ns, pod, _] => {
            port_forward(req, pods.clone(), ns, pod).await
        }
        _ => status(404, "NotFound", &format!("the kubelet has no {path}")),
    }
}

async fn logs(
    req: &Request<Incoming>,
    pods: &Arc<Manager>,
    ns: &str,
    pod: &str,
    container: &str,
) -> Response<ResBody> {
    let q = query(req);
    let previous = flag(&q, "previous");
    let Some(id) = pods.container_id(ns, pod, container, previous) else {
        let msg = if previous {
            format!("previous terminated container \"{container}\" in pod \"{pod}\" not found")
        } else {
            format!(
                "container \"{container}\" in pod \"{pod}\" is waiting to start: ContainerCreating"
            )
        };
        return status(400, "BadRequest", &msg);
    };
    let num = |k: &str| get(&q, k).and_then(|v| v.parse::<i64>().ok());
    let follow = flag(&q, "follow");
    let timestamps = flag(&q, "timestamps");
    let mut limit = num("limitBytes").map(|n| n.max(0) as u64);
    let since = num("sinceSeconds")
        .map(|s| timefmt::now_nanos() - i128::from(s) * 1_000_000_000)
        .or_else(|| get(&q, "sinceTime").and_then(timefmt::parse_rfc3339));
    let query = engine::logfile::Query {
        since,
        until: None,
        tail: num("tailLines").map(|n| n.max(0) as usize),
        follow,
        stdout: true,
        stderr: true,
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let engine = pods.engine.clone();
    tokio::task::spawn_blocking(move || {
        let tx2 = tx.clone();
        let _ = engine.logs(&id, &query, &|| tx2.is_closed(), &mut |e| {
            let mut line = if timestamps {
                format!("{} {}", e.time, e.log).into_bytes()
            } else {
                e.log.clone().into_bytes()
            };
            if let Some(l) = limit.as_mut() {
                if *l == 0 {
                    return Err(std::io::Error::other("limit reached"));
                }
                line.truncate((*l).min(line.len() as u64) as usize);
                *l -= line.len() as u64;
            }
            tx.blocking_send(Bytes::from(line))
                .map_err(|_| std::io::Error::other("the reader went away"))
        });
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    r
}

/// `portForward`: SPDY/3.1 tunneled through a WebSocket, or on an upgraded connection.
async fn port_forward(
    mut req: Request<Incoming>,
    pods: Arc<Manager>,
    ns: &str,
    pod: &str,
) -> Response<ResBody> {
    let Some(netns) = pods.netns_of(ns, pod) else {
        return status(
            404,
            "NotFound",
            &format!("pod \"{pod}\" not found on this node"),
        );
    };
    let h = req.headers();
    let header = |n: &str| -> Vec<String> {
        h.get_all(n)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(',').map(|s| s.trim().to_string()))
            .collect()
    };
    let upgrade = header("upgrade");
    let websocket = upgrade.iter().any(|u| u.eq_ignore_ascii_case("websocket"));
    let spdy = upgrade.iter().any(|u| u.eq_ignore_ascii_case("SPDY/3.1"));
    const WS_PROTO: &str = "SPDY/3.1+portforward.k8s.io";
    let mut r = Response::new(Full::new(Bytes::new()).boxed());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    if websocket {
        if !header("sec-websocket-protocol")
            .iter()
            .any(|p| p == WS_PROTO)
        {
            return status(
                400,
                "BadRequest",
                &format!("port forwarding over WebSocket needs the subprotocol {WS_PROTO}"),
            );
        }
        let Some(key) = h
            .get("sec-websocket-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
        else {
            return status(400, "BadRequest", "missing Sec-WebSocket-Key");
        };
        let hs = r.headers_mut();
        hs.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
        hs.insert(
            http::header::CONNECTION,
            HeaderValue::from_static("Upgrade"),
        );
        hs.insert(
            "sec-websocket-accept",
            HeaderValue::from_str(&ws::accept_key(&key)).expect("base64"),
        );
        hs.insert("sec-websocket-protocol", HeaderValue::from_static(WS_PROTO));
    } else if spdy {
        if !header("x-stream-protocol-version")
            .iter()
            .any(|p| p == "portforward.k8s.io")
        {
            return status(
                400,
                "BadRequest",
                "port forwarding needs X-Stream-Protocol-Version: portforward.k8s.io",
            );
        }
        let hs = r.headers_mut();
        hs.insert(http::header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
        hs.insert(
            http::header::CONNECTION,
            HeaderValue::from_static("Upgrade"),
        );
        hs.insert(
            "x-stream-protocol-version",
            HeaderValue::from_static("portforward.k8s.io"),
        );
    } else {
        return status(
            400,
            "BadRequest",
            "port forwarding needs an upgrade to SPDY/3.1 or a WebSocket",
        );
    }
    let on = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(up) = on.await else { return };
        let io = TokioIo::new(up);
        if websocket {
            crate::portforward::session(crate::portforward::unwrap_websocket(io), netns).await;
        } else {
            crate::portforward::session(io, netns).await;
        }
    });
    r
}

fn exit_status(code: i32, cmd: &[String]) -> Value {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({"metadata": {}, "status": "Failure",
        "message": format!("command terminated with non-zero exit code: error executing command [{}], exit code {code}", cmd.join(" ")),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}})
}

/// How a stream reaches the client.
enum Transport {
    /// WebSocket with this subprotocol and `Sec-WebSocket-Key`.
    WebSocket { proto: &'static str, key: String },
    /// SPDY/3.1 with this `X-Stream-Protocol-Version`.
    Spdy { proto: &'static str },
}

fn offered(h: &http::HeaderMap, name: &str) -> Vec<String> {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_string()))
        .collect()
}

fn transport(h: &http::HeaderMap) -> Result<Transport, Response<ResBody>> {
    let upgrade = offered(h, "upgrade");
    if upgrade.iter().any(|u| u.eq_ignore_ascii_case("websocket")) {
        let protos = offered(h, "sec-websocket-protocol");
        let Some(proto) = ["v5.channel.k8s.io", "v4.channel.k8s.io"]
            .into_iter()
            .find(|p| protos.iter().any(|o| o == p))
        else {
            return Err(status(
                400,
                "BadRequest",
                &format!("none of the offered subprotocols {protos:?} is served: v5.channel.k8s.io, v4.channel.k8s.io"),
            ));
        };
        let Some(key) = h
            .get("sec-websocket-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
        else {
            return Err(status(400, "BadRequest", "missing Sec-WebSocket-Key"));
        };
        return Ok(Transport::WebSocket { proto, key });
    }
    if upgrade.iter().any(|u| u.eq_ignore_ascii_case("SPDY/3.1")) {
        let protos = offered(h, "x-stream-protocol-version");
        let Some(proto) = [
            "v4.channel.k8s.io",
            "v3.channel.k8s.io",
            "v2.channel.k8s.io",
            "channel.k8s.io",
        ]
        .into_iter()
        .find(|p| protos.iter().any(|o| o == p)) else {
            return Err(status(
                403,
                "Forbidden",
                &format!("none of the offered stream protocols {protos:?} is served: v4.channel.k8s.io, v3.channel.k8s.io, v2.channel.k8s.io, channel.k8s.io"),
            ));
        };
        return Ok(Transport::Spdy { proto });
    }
    Err(status(
        400,
        "BadRequest",
        "exec and attach need an upgrade to a WebSocket (v5.channel.k8s.io, v4.channel.k8s.io) or SPDY/3.1",
    ))
}

/// `exec` and `attach` over WebSocket or SPDY.
async fn stream(
    mut req: Request<Incoming>,
    pods: Arc<Manager>,
    ns: String,
    pod: String,
    container: String,
    attach: bool,
) -> Response<ResBody> {
    let transport = match transport(req.headers()) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let q = query(&req);
    let cmd: Vec<String> = q
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    let flags = Flags {
        stdin: flag(&q, "stdin"),
        stdout: flag(&q, "stdout"),
        stderr: flag(&q, "stderr"),
        tty: flag(&q, "tty"),
    };
    let Some(id) = pods.container_id(&ns, &pod, &container, false) else {
        return status(
            400,
            "BadRequest",
            &format!("container {container} is not valid for pod {pod}"),
        );
    };
    if !pods.engine.is_running(&id) {
        return status(
            400,
            "BadRequest",
            &format!("unable to upgrade connection: container not found (\"{container}\")"),
        );
    }
    let engine = pods.engine.clone();
    // Made before the upgrade, so a refusal is an ordinary answer.
    let exec_id = if attach {
        None
    } else {
        if cmd.is_empty() {
            return status(400, "BadRequest", "you must specify at least 1 command");
        }
        let r = engine.exec_create(
            &id,
            engine::engine::ExecRequest {
                cmd: cmd.clone(),
                tty: flags.tty,
                stdin: flags.stdin,
                ..Default::default()
            },
        );
        match r {
            Ok(e) => Some(e),
            Err(e) => return status(500, "InternalError", &e.to_string()),
        }
    };
    let upgrade = hyper::upgrade::on(&mut req);
    let mut r = Response::new(Full::new(Bytes::new()).boxed());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let hs = r.headers_mut();
    hs.insert(
        http::header::CONNECTION,
        HeaderValue::from_static("Upgrade"),
    );
    let (v5, spdy) = match &transport {
        Transport::WebSocket { proto, key } => {
            hs.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
            hs.insert(
                "sec-websocket-accept",
                HeaderValue::from_str(&ws::accept_key(key)).expect("base64"),
            );
            hs.insert("sec-websocket-protocol", HeaderValue::from_static(proto));
            (*proto == "v5.channel.k8s.io", false)
        }
        Transport::Spdy { proto } => {
            hs.insert(http::header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
            hs.insert("x-stream-protocol-version", HeaderValue::from_static(proto));
            (false, true)
        }
    };
    tokio::spawn(async move {
        let Ok(up) = upgrade.await else { return };
        let io = TokioIo::new(up);
        let (input, output, ready) = if spdy {
            spdy_channels(io, flags)
        } else {
            ws_channels(io, v5)
        };
        if ready.await.is_err() {
            return;
        }
        if let Err(e) = bridge(engine, id, exec_id, cmd, flags, input, output).await {
            eprintln!("berth agent: stream of {ns}/{pod}/{container}: {e}");
        }
    });
    r
}

#[derive(Clone, Copy)]
struct Flags {
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
}

/// From the client: data on a channel (0 stdin, 4 resize), stdin closed.
enum In {
    Data(u8, Vec<u8>),
    CloseStdin,
}

/// To the client: data on a channel (1 stdout, 2 stderr, 3 error), then the end.
enum Out {
    Data(u8, Vec<u8>),
    Finish,
}

type Channels = (
    tokio::sync::mpsc::Receiver<In>,
    tokio::sync::mpsc::Sender<Out>,
    tokio::sync::oneshot::Receiver<()>,
);

/// The channel protocol over a WebSocket: each message starts with its channel byte.
fn ws_channels<S>(io: S, v5: bool) -> Channels
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let (in_tx, in_rx) = tokio::sync::mpsc::channel(64);
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<Out>(64);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let _ = ready_tx.send(());
    let pong = out_tx.clone();
    tokio::spawn(async move {
        while let Ok(Some((op, data))) = ws::read_message(&mut rd).await {
            match op {
                ws::CLOSE => break,
                ws::PING => {
                    let _ = pong.send(Out::Data(255, data)).await;
                }
                ws::BINARY | 1 if !data.is_empty() => {
                    let msg = match data[0] {
                        255 if v5 && data.get(1) == Some(&0) => In::CloseStdin,
                        ch => In::Data(ch, data[1..].to_vec()),
                    };
                    if in_tx.send(msg).await.is_err() {
                        break;
                    }
                }
                _ => {}
            }
        }
    });
    tokio::spawn(async move {
        while let Some(o) = out_rx.recv().await {
            let r = match o {
                // (255: a pong for a ping.)
                Out::Data(255, d) => ws::write_frame(&mut wr, ws::PONG, &d).await,
                Out::Data(ch, d) => {
                    let mut m = Vec::with_capacity(d.len() + 1);
                    m.push(ch);
                    m.extend_from_slice(&d);
                    ws::write_frame(&mut wr, ws::BINARY, &m).await
                }
                Out::Finish => {
                    let _ = ws::write_frame(&mut wr, ws::CLOSE, &[3, 232]).await;
                    let _ = wr.shutdown().await;
                    break;
                }
            };
            if r.is_err() {
                break;
            }
        }
    });
    (in_rx, out_tx, ready_rx)
}

/// The channel protocol over SPDY: one stream per channel, named by its `streamtype`
/// header. Ready once every stream the request asked for is open.
fn spdy_channels<S>(io: S, f: Flags) -> Channels
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use crate::spdy::{self, Frame};
    let (mut rd, mut wr) = tokio::io::split(io);
    let (in_tx, in_rx) = tokio::sync::mpsc::channel(64);
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<Out>(64);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (raw_tx, mut raw_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    // channel → stream id, shared with the writer.
    let ids: Arc<std::sync::Mutex<std::collections::HashMap<u8, u32>>> = Default::default();
    let want: Vec<u8> = [
        (true, 3u8),
        (f.stdin, 0),
        (f.stdout, 1),
        (f.stderr && !f.tty, 2),
        (f.tty, 4),
    ]
    .into_iter()
    .filter(|(w, _)| *w)
    .map(|(_, c)| c)
    .collect();
    {
        let ids = ids.clone();
        let raw = raw_tx.clone();
        tokio::spawn(async move {
            let mut headers = spdy::Headers::default();
            let mut ready = Some(ready_tx);
            let mut by_id: std::collections::HashMap<u32, u8> = Default::default();
            while let Ok(Some(frame)) = spdy::read_frame(&mut rd).await {
                match frame {
                    Frame::Control {
                        kind: spdy::SYN_STREAM,
                        data,
                        ..
                    } if data.len() >= 10 => {
                        let id = u32::from_be_bytes([data[0] & 0x7f, data[1], data[2], data[3]]);
                        let Ok(h) = headers.decode(&data[10..]) else {
                            break;
                        };
                        let Ok(reply) = spdy::syn_reply(&mut headers, id) else {
                            break;
                        };
                        let _ = raw.send(reply).await;
                        let ch = match h.get("streamtype").map(String::as_str) {
                            Some("stdin") => 0,
                            Some("stdout") => 1,
                            Some("stderr") => 2,
                            Some("error") => 3,
                            Some("resize") => 4,
                            _ => continue,
                        };
                        by_id.insert(id, ch);
                        let all = {
                            let mut m = ids.lock().unwrap();
                            m.insert(ch, id);
                            want.iter().all(|c| m.contains_key(c))
                        };
                        if all {
                            if let Some(r) = ready.take() {
                                let _ = r.send(());
                            }
                        }
                    }
                    Frame::Control {
                        kind: spdy::PING,
                        data,
                        ..
                    } => {
                        let _ = raw.send(spdy::control(spdy::PING, 0, &data)).await;
                    }
                    Frame::Control {
                        kind: spdy::GOAWAY, ..
                    } => break,
                    Frame::Control { .. } => {}
                    Frame::Data {
                        stream,
                        flags,
                        data,
                    } => {
                        let Some(ch) = by_id.get(&stream).copied() else {
                            continue;
                        };
                        if !data.is_empty() && in_tx.send(In::Data(ch, data)).await.is_err() {
                            break;
                        }
                        if flags & spdy::FLAG_FIN != 0 && ch == 0 {
                            let _ = in_tx.send(In::CloseStdin).await;
                        }
                    }
                }
            }
        });
    }
    tokio::spawn(async move {
        loop {
            tokio::select! {
                b = raw_rx.recv() => {
                    let Some(b) = b else { break };
                    if wr.write_all(&b).await.is_err() { break; }
                    let _ = wr.flush().await;
                }
                o = out_rx.recv() => {
                    let bytes = match o {
                        Some(Out::Data(ch, d)) => {
                            let Some(id) = ids.lock().unwrap().get(&ch).copied() else { continue };
                            spdy::data(id, 0, &d)
                        }
                        Some(Out::Finish) | None => {
                            let streams: Vec<u32> = ids.lock().unwrap().values().copied().collect();
                            let mut b = Vec::new();
                            for id in streams {
                                b.extend(spdy::data(id, spdy::FLAG_FIN, b""));
                            }
                            let _ = wr.write_all(&b).await;
                            let _ = wr.flush().await;
                            let _ = wr.shutdown().await;
                            break;
                        }
                    };
                    if wr.write_all(&bytes).await.is_err() { break; }
                    let _ = wr.flush().await;
                }
            }
        }
    });
    (in_rx, out_tx, ready_rx)
}

async fn bridge(
    engine: Arc<engine::Engine>,
    id: String,
    exec_id: Option<String>,
    cmd: Vec<String>,
    f: Flags,
    mut input: tokio::sync::mpsc::Receiver<In>,
    output: tokio::sync::mpsc::Sender<Out>,
) -> std::io::Result<()> {
    // The process's stream.
    let s = {
        let (engine, id, exec_id) = (engine.clone(), id.clone(), exec_id.clone());
        tokio::task::spawn_blocking(
            move || -> Result<(std::os::unix::net::UnixStream, bool), String> {
                match exec_id {
                    Some(x) => match engine.exec_start(&x, false) {
                        Ok(Some(s)) => Ok(s),
                        Ok(None) => Err("the exec has no stream".into()),
                        Err(e) => Err(e.to_string()),
                    },
                    None => {
                        let (a, tty) = engine
                            .attach(&id, f.stdin, f.stdout, f.stderr)
                            .map_err(|e| e.to_string())?;
                        Ok((a.wait()?, tty))
                    }
                }
            },
        )
        .await
        .map_err(std::io::Error::other)?
    };
    let (s, is_tty) = match s {
        Ok(s) => s,
        Err(e) => {
            let st = json!({"metadata": {}, "status": "Failure", "message": e, "reason": "InternalError"});
            let _ = output.send(Out::Data(3, st.to_string().into_bytes())).await;
            let _ = output.send(Out::Finish).await;
            return Ok(());
        }
    };
    s.set_nonblocking(true)?;
    let s = tokio::net::UnixStream::from_std(s)?;
    let (mut out, mut inp) = s.into_split();
    // Client → process: stdin, resize, close.
    let pump_in = {
        let (engine, exec_id, id) = (engine.clone(), exec_id.clone(), id.clone());
        tokio::spawn(async move {
            while let Some(m) = input.recv().await {
                match m {
                    In::Data(0, d) if f.stdin => {
                        if inp.write_all(&d).await.is_err() {
                            break;
                        }
                    }
                    In::Data(4, d) => {
                        // One or more {"Width":…,"Height":…} objects.
                        let sizes: Vec<(u16, u16)> = serde_json::Deserializer::from_slice(&d)
                            .into_iter::<Value>()
                            .flatten()
                            .map(|v| {
                                (
                                    v["Width"].as_u64().unwrap_or(0) as u16,
                                    v["Height"].as_u64().unwrap_or(0) as u16,
                                )
                            })
                            .collect();
                        for (w, h) in sizes {
                            if w > 0 && h > 0 {
                                let (e, x, i) = (engine.clone(), exec_id.clone(), id.clone());
                                let _ = tokio::task::spawn_blocking(move || match x {
                                    Some(x) => e.exec_resize(&x, h, w),
                                    None => e.resize(&i, h, w),
                                })
                                .await;
                            }
                        }
                    }
                    In::CloseStdin => {
                        let _ = inp.shutdown().await;
                    }
                    In::Data(..) => {}
                }
            }
        })
    };
    // Process → client.
    let mut buf = vec![0u8; 32 * 1024];
    if is_tty || f.tty {
        loop {
            let n = out.read(&mut buf).await.unwrap_or(0);
            if n == 0 || output.send(Out::Data(1, buf[..n].to_vec())).await.is_err() {
                break;
            }
        }
    } else {
        loop {
            let mut h = [0u8; 8];
            if out.read_exact(&mut h).await.is_err() {
                break;
            }
            let n = u32::from_be_bytes([h[4], h[5], h[6], h[7]]) as usize;
            let mut payload = vec![0u8; n];
            if out.read_exact(&mut payload).await.is_err() {
                break;
            }
            let ch = if h[0] == 2 { 2 } else { 1 };
            if output.send(Out::Data(ch, payload)).await.is_err() {
                break;
            }
        }
    }
    pump_in.abort();
    let code = match &exec_id {
        Some(x) => {
            let (e, x) = (engine.clone(), x.clone());
            tokio::task::spawn_blocking(move || {
                e.exec_inspect(&x, std::time::Duration::from_secs(10))
            })
            .await
            .ok()
            .and_then(|r| r.ok())
            .and_then(|i| i.exit_code)
            .unwrap_or(0)
        }
        None => 0,
    };
    let _ = output
        .send(Out::Data(
            3,
            exit_status(code, &cmd).to_string().into_bytes(),
        ))
        .await;
    let _ = output.send(Out::Finish).await;
    Ok(())
}
