//! Probes (exec, httpGet, tcpSocket, grpc) with their delays, periods, timeouts and
//! thresholds, and lifecycle hooks (exec, httpGet), as the kubelet runs them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{LifecycleHandler, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One probe's running state for one container run.
#[derive(Default, Debug)]
pub struct ProbeState {
    pub passed: bool,
    successes: i32,
    failures: i32,
    next: Option<Instant>,
}

pub enum Outcome {
    /// Not due yet: run again after this.
    Wait(Duration),
    /// Ran; the next run is after this. `Some(message)` when it failed below the threshold.
    Ran(Duration, Option<String>),
    /// Failed `failureThreshold` times in a row.
    Failed(String),
}

/// Runs `p` if it is due, updating `st`.
pub async fn step(
    engine: &Arc<engine::Engine>,
    id: &str,
    p: &Probe,
    pod_ip: &str,
    st: &mut ProbeState,
    started_at_nanos: i128,
) -> Outcome {
    let period = Duration::from_secs(p.period_seconds.unwrap_or(10).max(1) as u64);
    let now = Instant::now();
    if st.next.is_none() {
        let since_start =
            Duration::from_nanos((timefmt::now_nanos() - started_at_nanos).max(0) as u64);
        let delay = Duration::from_secs(p.initial_delay_seconds.unwrap_or(0).max(0) as u64);
        st.next = Some(now + delay.saturating_sub(since_start));
    }
    let due = st.next.unwrap_or(now);
    if due > now {
        return Outcome::Wait(due - now);
    }
    st.next = Some(now + period);
    let timeout = Duration::from_secs(p.timeout_seconds.unwrap_or(1).max(1) as u64);
    let result = run(engine, id, p, pod_ip, timeout).await;
    match result {
        Ok(()) => {
            st.failures = 0;
            st.successes += 1;
            if st.successes >= p.success_threshold.unwrap_or(1).max(1) {
                st.passed = true;
            }
            Outcome::Ran(period, None)
        }
        Err(msg) => {
            st.successes = 0;
            st.failures += 1;
            if st.failures >= p.failure_threshold.unwrap_or(3).max(1) {
                st.passed = false;
                st.failures = 0;
                Outcome::Failed(msg)
            } else {
                Outcome::Ran(period, Some(msg))
            }
        }
    }
}

fn port_of(p: &IntOrString) -> Result<u16, String> {
    match p {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("invalid port {n}")),
        IntOrString::String(s) => s
            .parse()
            .map_err(|_| format!("couldn't find port: {s} in the container's ports")),
    }
}

/// A named port (`port: http`) as the container's port of that name, as the kubelet
/// resolves it; a name the container does not declare stays, and fails when used.
fn resolve(port: &mut IntOrString, c: &k8s_openapi::api::core::v1::Container) {
    if let IntOrString::String(name) = port {
        if let Some(p) = c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
        {
            *port = IntOrString::Int(p.container_port);
        }
    }
}

/// `p` with its named ports resolved against container `c`.
pub fn resolved_probe(p: &Probe, c: &k8s_openapi::api::core::v1::Container) -> Probe {
    let mut p = p.clone();
    if let Some(h) = p.http_get.as_mut() {
        resolve(&mut h.port, c);
    }
    if let Some(t) = p.tcp_socket.as_mut() {
        resolve(&mut t.port, c);
    }
    p
}

/// `h` with its named ports resolved against container `c`.
pub fn resolved_handler(
    h: &LifecycleHandler,
    c: &k8s_openapi::api::core::v1::Container,
) -> LifecycleHandler {
    let mut h = h.clone();
    if let Some(g) = h.http_get.as_mut() {
        resolve(&mut g.port, c);
    }
    if let Some(t) = h.tcp_socket.as_mut() {
        resolve(&mut t.port, c);
    }
    h
}

async fn run(
    engine: &Arc<engine::Engine>,
    id: &str,
    p: &Probe,
    pod_ip: &str,
    timeout: Duration,
) -> Result<(), String> {
    if let Some(e) = &p.exec {
        return exec(engine, id, e.command.clone().unwrap_or_default(), timeout).await;
    }
    if let Some(h) = &p.http_get {
        let host = h.host.clone().unwrap_or_else(|| pod_ip.to_string());
        let port = port_of(&h.port)?;
        let headers: Vec<(String, String)> = h
            .http_headers
            .iter()
            .flatten()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect();
        return http_get(
            &host,
            port,
            h.path.as_deref().unwrap_or("/"),
            &headers,
            timeout,
        )
        .await;
    }
    if let Some(t) = &p.tcp_socket {
        let host = t.host.clone().unwrap_or_else(|| pod_ip.to_string());
        let port = port_of(&t.port)?;
        return match tokio::time::timeout(
            timeout,
            tokio::net::TcpStream::connect((host.as_str(), port)),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("dial tcp {host}:{port}: {e}")),
            Err(_) => Err(format!("dial tcp {host}:{port}: i/o timeout")),
        };
    }
    if let Some(g) = &p.grpc {
        return grpc(
            pod_ip,
            g.port as u16,
            g.service.as_deref().unwrap_or(""),
            timeout,
        )
        .await;
    }
    Err("the probe has no handler".into())
}

/// An exec in the container; success is exit code 0.
pub async fn exec(
    engine: &Arc<engine::Engine>,
    id: &str,
    cmd: Vec<String>,
    timeout: Duration,
) -> Result<(), String> {
    let (e, id) = (engine.clone(), id.to_string());
    let run = tokio::task::spawn_blocking(move || -> Result<(i32, String), String> {
        let exec = e
            .exec_create(
                &id,
                engine::engine::ExecRequest {
                    cmd,
                    ..Default::default()
                },
            )
            .map_err(|e| e.to_string())?;
        let out = e.exec_start(&exec, false).map_err(|e| e.to_string())?;
        let mut text = Vec::new();
        if let Some((mut s, _)) = out {
            let _ = std::io::Read::read_to_end(&mut s, &mut text);
        }
        let info = e
            .exec_inspect(&exec, Duration::from_secs(5))
            .map_err(|e| e.to_string())?;
        Ok((info.exit_code.unwrap_or(-1), demux(&text)))
    });
    match tokio::time::timeout(timeout, run).await {
        Ok(Ok(Ok((0, _)))) => Ok(()),
        Ok(Ok(Ok((code, out)))) => Err(format!("command exited with {code}: {}", out.trim())),
        Ok(Ok(Err(e))) => Err(e),
        Ok(Err(_)) => Err("the exec failed".into()),
        Err(_) => Err(format!("command timed out after {}s", timeout.as_secs())),
    }
}

/// The payload of Docker's multiplexed frames.
pub fn demux(b: &[u8]) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 8 <= b.len() {
        let n = u32::from_be_bytes([b[i + 4], b[i + 5], b[i + 6], b[i + 7]]) as usize;
        let end = (i + 8 + n).min(b.len());
        out.extend_from_slice(&b[i + 8..end]);
        i = end;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An HTTP GET; success is a status in 200–399.
pub async fn http_get(
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> Result<(), String> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| {
                format!("Get \"http://{host}:{port}{path}\": dial tcp {host}:{port}: {e}")
            })?;
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.32\r\nAccept: */*\r\nConnection: close\r\n"
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 1024];
        let mut got = 0;
        while got < 12 {
            let n = s.read(&mut buf[got..]).await.map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            got += n;
        }
        let head = String::from_utf8_lossy(&buf[..got]);
        let code: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| {
                format!("Get \"http://{host}:{port}{path}\": malformed HTTP response")
            })?;
        if (200..400).contains(&code) {
            Ok(())
        } else {
            Err(format!("HTTP probe failed with statuscode: {code}"))
        }
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "Get \"http://{host}:{port}{path}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
        )),
    }
}

/// The gRPC health check (`grpc.health.v1.Health/Check`) over HTTP/2 without TLS;
/// success is `SERVING`.
async fn grpc(host: &str, port: u16, service: &str, timeout: Duration) -> Result<(), String> {
    let fut = async {
        let tcp = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| {
                format!(
                    "failed to connect service \"{host}:{port}\" within {}s: {e}",
                    timeout.as_secs()
                )
            })?;
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        // HealthCheckRequest { string service = 1; }, length-prefixed.
        let mut msg = Vec::new();
        if !service.is_empty() {
            msg.push(0x0a);
            msg.push(service.len() as u8);
            msg.extend_from_slice(service.as_bytes());
        }
        let mut body = vec![0u8];
        body.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        body.extend_from_slice(&msg);
        let req = http::Request::post(format!("http://{host}:{port}/grpc.health.v1.Health/Check"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
        let collected = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .map_err(|e| e.to_string())?;
        let status = collected
            .trailers()
            .and_then(|t| t.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("0")
            .to_string();
        let b = collected.to_bytes();
        if status != "0" {
            return Err(format!("rpc error: code = {status}"));
        }
        // HealthCheckResponse { ServingStatus status = 1; } SERVING = 1.
        let payload = b.get(5..).unwrap_or_default();
        if payload == [0x08, 0x01] {
            Ok(())
        } else {
            Err(format!("service unhealthy (responded with {payload:?})"))
        }
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "timeout: health rpc did not complete within {}s",
            timeout.as_secs()
        )),
    }
}

/// A lifecycle hook (postStart, preStop).
pub async fn handler(
    engine: &Arc<engine::Engine>,
    id: &str,
    h: &LifecycleHandler,
    pod_ip: &str,
    timeout: Duration,
) -> Result<(), String> {
    if let Some(e) = &h.exec {
        return exec(
            engine,
            id,
            e.command.clone().unwrap_or_default(),
            timeout.max(Duration::from_secs(1)),
        )
        .await;
    }
    if let Some(g) = &h.http_get {
        let host = g.host.clone().unwrap_or_else(|| pod_ip.to_string());
        let port = port_of(&g.port)?;
        return http_get(
            &host,
            port,
            g.path.as_deref().unwrap_or("/"),
            &[],
            timeout.max(Duration::from_secs(1)),
        )
        .await;
    }
    if let Some(s) = &h.sleep {
        tokio::time::sleep(Duration::from_secs(s.seconds.max(0) as u64).min(timeout)).await;
        return Ok(());
    }
    Err("the hook has no handler".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_ports_resolve_against_the_container() {
        let c: k8s_openapi::api::core::v1::Container = serde_json::from_value(serde_json::json!({
            "name": "web", "ports": [{"name": "http", "containerPort": 8080}]}))
        .unwrap();
        let p: Probe = serde_json::from_value(
            serde_json::json!({"httpGet": {"path": "/", "port": "http"}, "tcpSocket": {"port": "nope"}}),
        )
        .unwrap();
        let r = resolved_probe(&p, &c);
        assert_eq!(port_of(&r.http_get.unwrap().port), Ok(8080));
        let err = port_of(&r.tcp_socket.unwrap().port).unwrap_err();
        assert!(err.contains("couldn't find port: nope"), "{err}");
        let h: LifecycleHandler =
            serde_json::from_value(serde_json::json!({"httpGet": {"port": "http"}})).unwrap();
        assert_eq!(
            port_of(&resolved_handler(&h, &c).http_get.unwrap().port),
            Ok(8080)
        );
    }
}
