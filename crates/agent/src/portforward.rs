//! `kubectl port-forward`: a SPDY/3.1 session (`portforward.k8s.io`), either on an upgraded
//! connection or tunneled through a WebSocket (`SPDY/3.1+portforward.k8s.io`, the bytes of
//! the session in binary messages). Each forwarded connection is a pair of streams, `error`
//! and `data`, sharing a `requestid`; the data stream is connected to `localhost:<port>`
//! inside the pod's network namespace, as the kubelet does.

use std::collections::HashMap;
use std::path::PathBuf;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::spdy::{self, Frame};
use crate::ws;

/// Connects to `127.0.0.1:port` in the network namespace at `netns` (the agent's own when
/// `None`), on a thread of its own that exits afterwards.
fn connect_in(netns: Option<PathBuf>, port: u16) -> std::io::Result<std::net::TcpStream> {
    std::thread::spawn(move || {
        if let Some(ns) = netns {
            let f = std::fs::File::open(&ns)?;
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| std::io::Error::other(format!("entering {}: {e}", ns.display())))?;
        }
        std::net::TcpStream::connect(("127.0.0.1", port))
    })
    .join()
    .map_err(|_| std::io::Error::other("the connecting thread panicked"))?
}

/// Carries the bytes of WebSocket binary messages as a byte stream, both ways.
pub fn unwrap_websocket<S>(io: S) -> tokio::io::DuplexStream
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (inner, outer) = tokio::io::duplex(256 * 1024);
    let (mut rd, mut wr) = tokio::io::split(io);
    let (mut in_rd, mut in_wr) = tokio::io::split(inner);
    let (pong_tx, mut pong_rx) = mpsc::channel::<Vec<u8>>(4);
    tokio::spawn(async move {
        while let Ok(Some((op, payload))) = ws::read_message(&mut rd).await {
            match op {
                ws::CLOSE => break,
                ws::PING => {
                    let _ = pong_tx.send(payload).await;
                }
                ws::BINARY if in_wr.write_all(&payload).await.is_err() => break,
                _ => {}
            }
        }
        let _ = in_wr.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            tokio::select! {
                n = in_rd.read(&mut buf) => {
                    let n = n.unwrap_or(0);
                    if n == 0 {
                        let _ = ws::write_frame(&mut wr, ws::CLOSE, &[3, 232]).await;
                        break;
                    }
                    if ws::write_frame(&mut wr, ws::BINARY, &buf[..n]).await.is_err() {
                        break;
                    }
                }
                Some(p) = pong_rx.recv() => {
                    let _ = ws::write_frame(&mut wr, ws::PONG, &p).await;
                }
            }
        }
    });
    outer
}

/// Serves one port-forward session until the client ends it.
pub async fn session<S>(io: S, netns: Option<PathBuf>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let (out, mut out_rx) = mpsc::channel::<Vec<u8>>(256);
    let writer = tokio::spawn(async move {
        while let Some(b) = out_rx.recv().await {
            if wr.write_all(&b).await.is_err() || wr.flush().await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let mut headers = spdy::Headers::default();
    let mut to_conn: HashMap<u32, mpsc::Sender<Option<Vec<u8>>>> = HashMap::new();
    // requestid → the error stream's id.
    let mut error_streams: HashMap<String, u32> = HashMap::new();
    while let Ok(Some(frame)) = spdy::read_frame(&mut rd).await {
        match frame {
            Frame::Control {
                kind: spdy::SYN_STREAM,
                data,
                ..
            } if data.len() >= 10 => {
                let id = u32::from_be_bytes([data[0] & 0x7f, data[1], data[2], data[3]]);
                let h = match headers.decode(&data[10..]) {
                    Ok(h) => h,
                    Err(e) => {
                        eprintln!("berth agent: port-forward: {e}");
                        break;
                    }
                };
                match headers_reply(&mut headers, id) {
                    Some(r) => {
                        let _ = out.send(r).await;
                    }
                    None => break,
                }
                let req = h.get("requestid").cloned().unwrap_or_default();
                match h.get("streamtype").map(String::as_str) {
                    Some("error") => {
                        error_streams.insert(req, id);
                    }
                    Some("data") => {
                        let port: Option<u16> = h
                            .get("port")
                            .and_then(|p| p.parse().ok())
                            .filter(|p| *p > 0);
                        let err_id = error_streams.get(&req).copied();
                        let (tx, rx) = mpsc::channel::<Option<Vec<u8>>>(64);
                        to_conn.insert(id, tx);
                        tokio::spawn(forward(
                            id,
                            err_id,
                            port,
                            h.get("port").cloned().unwrap_or_default(),
                            netns.clone(),
                            rx,
                            out.clone(),
                        ));
                    }
                    _ => {
                        let _ = out
                            .send(spdy::control(
                                spdy::RST_STREAM,
                                0,
                                &[&id.to_be_bytes()[..], &1u32.to_be_bytes()[..]].concat(),
                            ))
                            .await;
                    }
                }
            }
            Frame::Control {
                kind: spdy::PING,
                data,
                ..
            } => {
                let _ = out.send(spdy::control(spdy::PING, 0, &data)).await;
            }
            Frame::Control {
                kind: spdy::RST_STREAM,
                data,
                ..
            } if data.len() >= 4 => {
                let id = u32::from_be_bytes([data[0] & 0x7f, data[1], data[2], data[3]]);
                if let Some(tx) = to_conn.remove(&id) {
                    let _ = tx.send(None).await;
                }
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
                if let Some(tx) = to_conn.get(&stream) {
                    if !data.is_empty() {
                        let _ = tx.send(Some(data)).await;
                    }
                    if flags & spdy::FLAG_FIN != 0 {
                        let _ = tx.send(None).await;
                        to_conn.remove(&stream);
                    }
                }
            }
        }
    }
    drop(to_conn);
    drop(out);
    let _ = writer.await;
}

fn headers_reply(h: &mut spdy::Headers, id: u32) -> Option<Vec<u8>> {
    spdy::syn_reply(h, id).ok()
}

/// One forwarded connection: the data stream `id` to `localhost:port` in the pod.
async fn forward(
    id: u32,
    err_id: Option<u32>,
    port: Option<u16>,
    port_text: String,
    netns: Option<PathBuf>,
    mut from_client: mpsc::Receiver<Option<Vec<u8>>>,
    out: mpsc::Sender<Vec<u8>>,
) {
    let fail = |msg: String| {
        let out = out.clone();
        async move {
            if let Some(e) = err_id {
                let _ = out
                    .send(spdy::data(e, spdy::FLAG_FIN, msg.as_bytes()))
                    .await;
            }
            let _ = out.send(spdy::data(id, spdy::FLAG_FIN, b"")).await;
        }
    };
    let Some(port) = port else {
        fail(format!("invalid port {port_text:?}")).await;
        return;
    };
    let conn = tokio::task::spawn_blocking(move || connect_in(netns, port)).await;
    let conn = match conn {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            fail(format!("error forwarding port {port} to pod: failed to connect to localhost:{port} inside the pod's network namespace: {e}")).await;
            return;
        }
        Err(_) => return,
    };
    let _ = conn.set_nonblocking(true);
    let Ok(conn) = tokio::net::TcpStream::from_std(conn) else {
        return;
    };
    let (mut crd, mut cwr) = conn.into_split();
    let up = tokio::spawn(async move {
        while let Some(Some(b)) = from_client.recv().await {
            if cwr.write_all(&b).await.is_err() {
                break;
            }
        }
        let _ = cwr.shutdown().await;
    });
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match crd.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if out.send(spdy::data(id, 0, &buf[..n])).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = out.send(spdy::data(id, spdy::FLAG_FIN, b"")).await;
    if let Some(e) = err_id {
        let _ = out.send(spdy::data(e, spdy::FLAG_FIN, b"")).await;
    }
    let _ = up.await;
}
