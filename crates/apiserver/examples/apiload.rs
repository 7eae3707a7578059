//! A load generator for bench/apiserver.sh: Kubernetes API requests over HTTP/2 (one TLS
//! connection per group of streams, as client-go multiplexes), authenticated with the
//! admin kubeconfig's client certificate.
//!
//! apiload create KUBECONFIG COUNT CONCURRENCY   pods created from CONCURRENCY tasks
//! apiload list KUBECONFIG                        a full pod list, as JSON and as Table
//! apiload fanout KUBECONFIG WATCHERS EVENTS      one write seen by WATCHERS watches
//! apiload get KUBECONFIG PATH COUNT CONCURRENCY  GETs of one path (as the kubeconfig's user)
//! apiload admit KUBECONFIG NAMESPACE IMAGE COUNT pods created one at a time: the first's
//!                                                latency and the others' p50/p99
//! apiload ready URL                              waits until /readyz answers

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use serde_json::{json, Value};

type Sender = SendRequest<Full<Bytes>>;

struct Target {
    host: String,
    tls: Arc<rustls::ClientConfig>,
}

fn b64(v: &serde_yaml::Value, k: &str) -> Vec<u8> {
    let s = v
        .get(k)
        .and_then(|x| x.as_str())
        .unwrap_or_else(|| panic!("kubeconfig lacks {k}"));
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

fn target(kubeconfig: &str) -> Target {
    let kc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(kubeconfig).unwrap()).unwrap();
    let cluster = &kc["clusters"][0]["cluster"];
    let user = &kc["users"][0]["user"];
    let server = cluster["server"]
        .as_str()
        .unwrap()
        .trim_start_matches("https://")
        .to_string();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(&b64(
        cluster,
        "certificate-authority-data",
    )) {
        roots.add(c.unwrap()).unwrap();
    }
    let certs: Vec<_> =
        rustls_pki_types::CertificateDer::pem_slice_iter(&b64(user, "client-certificate-data"))
            .map(Result::unwrap)
            .collect();
    let key =
        rustls_pki_types::PrivateKeyDer::from_pem_slice(&b64(user, "client-key-data")).unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(certs, key)
    .unwrap();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    Target {
        host: server,
        tls: Arc::new(tls),
    }
}

async fn connect(t: &Target) -> Sender {
    let tcp = tokio::net::TcpStream::connect(&t.host).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(t.tls.clone())
        .connect(name, tcp)
        .await
        .unwrap();
    let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(8 << 20)
        .handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

async fn call(
    s: &mut Sender,
    method: &str,
    path: &str,
    accept: &str,
    body: Option<Value>,
) -> (u16, Bytes) {
    let body = body
        .map(|b| Bytes::from(serde_json::to_vec(&b).unwrap()))
        .unwrap_or_default();
    let req = hyper::Request::builder()
        .method(method)
        .uri(format!("https://localhost{path}"))
        .header("content-type", "application/json")
        .header("accept", accept)
        .body(Full::new(body))
        .unwrap();
    s.ready().await.unwrap();
    let resp = s.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, bytes)
}

fn pod(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": {"app": "bench", "tier": "load"}},
        "spec": {"containers": [{"name": "c", "image": "registry.local/app:1.0", "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}})
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

async fn ensure_ns(s: &mut Sender, ns: &str) {
    let (code, _) = call(
        s,
        "POST",
        "/api/v1/namespaces",
        "application/json",
        Some(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})),
    )
    .await;
    assert!(code == 201 || code == 409, "namespace create: {code}");
}

async fn create(t: Target, count: usize, conc: usize) {
    let mut s = connect(&t).await;
    ensure_ns(&mut s, "bench").await;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..conc {
        let per = count / conc + usize::from(c < count % conc);
        let mut s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            for i in 0..per {
                let t0 = Instant::now();
                let (code, body) = call(
                    &mut s,
                    "POST",
                    "/api/v1/namespaces/bench/pods",
                    "application/json",
                    Some(pod("bench", &format!("p-{c:02}-{i:05}"))),
                )
                .await;
                assert_eq!(code, 201, "{}", String::from_utf8_lossy(&body));
                lat.push(t0.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let took = start.elapsed();
    println!(
        "creates={} concurrency={conc} seconds={:.2} creates_per_s={:.0} p50_ms={:.2} p99_ms={:.2}",
        lat.len(),
        took.as_secs_f64(),
        lat.len() as f64 / took.as_secs_f64(),
        pct(&mut lat, 0.50).as_secs_f64() * 1000.0,
        pct(&mut lat, 0.99).as_secs_f64() * 1000.0
    );
}

async fn get(t: Target, path: String, count: usize, conc: usize) {
    let s = connect(&t).await;
    let start = Instant::now();
    let mut tasks = Vec::new();
    let path = Arc::new(path);
    for c in 0..conc {
        let per = count / conc + usize::from(c < count % conc);
        let mut s = s.clone();
        let path = path.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            for _ in 0..per {
                let t0 = Instant::now();
                let (code, body) = call(&mut s, "GET", &path, "application/json", None).await;
                assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
                lat.push(t0.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let took = start.elapsed();
    println!(
        "gets={} concurrency={conc} gets_per_s={:.0} p50_ms={:.3} p99_ms={:.3}",
        lat.len(),
        lat.len() as f64 / took.as_secs_f64(),
        pct(&mut lat, 0.50).as_secs_f64() * 1000.0,
        pct(&mut lat, 0.99).as_secs_f64() * 1000.0
    );
}

async fn admit(t: Target, ns: String, image: String, count: usize) {
    let mut s = connect(&t).await;
    let mut lat = Vec::with_capacity(count);
    let tag = std::process::id();
    for i in 0..count {
        let mut p = pod(&ns, &format!("adm-{tag}-{i:04}"));
        p["spec"]["containers"][0]["image"] = json!(image);
        let t0 = Instant::now();
        let (code, body) = call(
            &mut s,
            "POST",
            &format!("/api/v1/namespaces/{ns}/pods"),
            "application/json",
            Some(p),
        )
        .await;
        assert_eq!(code, 201, "{}", String::from_utf8_lossy(&body));
        lat.push(t0.elapsed());
    }
    let first = lat.remove(0);
    println!(
        "first_ms={:.2} then_p50_ms={:.2} then_p99_ms={:.2}",
        first.as_secs_f64() * 1000.0,
        pct(&mut lat, 0.50).as_secs_f64() * 1000.0,
        pct(&mut lat, 0.99).as_secs_f64() * 1000.0
    );
}

async fn list(t: Target) {
    let mut s = connect(&t).await;
    for (what, accept) in [
        ("json", "application/json"),
        (
            "table",
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
        ),
    ] {
        let mut times = Vec::new();
        let mut n = 0;
        for _ in 0..5 {
            let t0 = Instant::now();
            let (code, body) =
                call(&mut s, "GET", "/api/v1/namespaces/bench/pods", accept, None).await;
            times.push(t0.elapsed());
            assert_eq!(code, 200);
            let v: Value = serde_json::from_slice(&body).unwrap();
            n = v
                .get("items")
                .or_else(|| v.get("rows"))
                .and_then(Value::as_array)
                .map_or(0, |a| a.len());
        }
        println!(
            "list_{what} items={n} median_ms={:.1}",
            pct(&mut times, 0.5).as_secs_f64() * 1000.0
        );
    }
}

async fn fanout(t: Target, watchers: usize, events: usize) {
    let mut s = connect(&t).await;
    ensure_ns(&mut s, "fanout").await;
    let (code, _) = call(&mut s, "POST", "/api/v1/namespaces/fanout/configmaps", "application/json", Some(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "tick"}, "data": {"n": "0"}}))).await;
    assert!(code == 201 || code == 409);
    let (_, body) = call(
        &mut s,
        "GET",
        "/api/v1/namespaces/fanout/configmaps/tick",
        "application/json",
        None,
    )
    .await;
    let rv = serde_json::from_slice::<Value>(&body).unwrap()["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    // 250 streams per connection, as many connections as that takes.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, usize, Instant)>();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut conns = Vec::new();
    for _ in 0..watchers.div_ceil(250) {
        conns.push(connect(&t).await);
    }
    for w in 0..watchers {
        let mut c = conns[w / 250].clone();
        let tx = tx.clone();
        let ready = ready_tx.clone();
        let path = format!("/api/v1/namespaces/fanout/configmaps?watch=true&fieldSelector=metadata.name%3Dtick&resourceVersion={rv}&timeoutSeconds=600");
        tokio::spawn(async move {
            let req = hyper::Request::builder()
                .uri(format!("https://localhost{path}"))
                .header("accept", "application/json")
                .body(Full::new(Bytes::new()))
                .unwrap();
            c.ready().await.unwrap();
            let resp = c.send_request(req).await.unwrap();
            let _ = ready.send(());
            let mut body = resp.into_body();
            let mut buf = Vec::new();
            while let Some(Ok(frame)) = body.frame().await {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                buf.extend_from_slice(&data);
                while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=nl).collect();
                    let v: Value = serde_json::from_slice(&line).unwrap();
                    let n: usize = v["object"]["data"]["n"].as_str().unwrap().parse().unwrap();
                    let _ = tx.send((w, n, Instant::now()));
                }
            }
        });
    }
    for _ in 0..watchers {
        ready_rx.recv().await.unwrap();
    }
    let mut lat = Vec::new();
    for n in 1..=events {
        let t0 = Instant::now();
        let code = patch_counter(&mut s, n).await;
        assert_eq!(code, 200);
        let mut seen = 0;
        let mut last = t0;
        while seen < watchers {
            let (_, got, at) = rx.recv().await.unwrap();
            if got == n {
                seen += 1;
                last = at;
            }
        }
        lat.push(last - t0);
    }
    println!(
        "fanout watchers={watchers} events={events} last_receipt_p50_ms={:.1} last_receipt_p99_ms={:.1}",
        pct(&mut lat, 0.5).as_secs_f64() * 1000.0,
        pct(&mut lat, 0.99).as_secs_f64() * 1000.0
    );
}

/// Sets the fanout counter to `n` with a merge patch; returns the status.
async fn patch_counter(s: &mut Sender, n: usize) -> u16 {
    let req = hyper::Request::builder()
        .method("PATCH")
        .uri("https://localhost/api/v1/namespaces/fanout/configmaps/tick")
        .header("content-type", "application/merge-patch+json")
        .body(Full::new(Bytes::from(
            json!({"data": {"n": n.to_string()}}).to_string(),
        )))
        .unwrap();
    s.ready().await.unwrap();
    let resp = s.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    status
}

async fn ready(url: &str) {
    let t0 = Instant::now();
    let host = url.trim_start_matches("https://").to_string();
    let tls = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerify))
        .with_no_client_auth(),
    );
    loop {
        if let Ok(tcp) = tokio::net::TcpStream::connect(&host).await {
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            if let Ok(tls) = tokio_rustls::TlsConnector::from(tls.clone())
                .connect(name, tcp)
                .await
            {
                if let Ok((mut s, conn)) =
                    hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(tls)).await
                {
                    tokio::spawn(conn);
                    let req = hyper::Request::get("/readyz")
                        .header("host", "localhost")
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                    if let Ok(r) = s.send_request(req).await {
                        if r.status() == 200 {
                            println!("ready_ms={:.1}", t0.elapsed().as_secs_f64() * 1000.0);
                            return;
                        }
                    }
                }
            }
        }
        if t0.elapsed() > Duration::from_secs(30) {
            eprintln!("apiload: {url} was not ready within 30 s");
            std::process::exit(1);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Only for waiting on /readyz, which answers anonymously; nothing is trusted from it.
#[derive(Debug)]
struct NoVerify;

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a: Vec<String> = std::env::args().collect();
    let n = |i: usize| {
        a.get(i)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("usage: see the module docs"))
    };
    match a.get(1).map(String::as_str) {
        Some("create") => create(target(&a[2]), n(3), n(4)).await,
        Some("list") => list(target(&a[2])).await,
        Some("get") => get(target(&a[2]), a[3].clone(), n(4), n(5)).await,
        Some("admit") => admit(target(&a[2]), a[3].clone(), a[4].clone(), n(5)).await,
        Some("fanout") => fanout(target(&a[2]), n(3), n(4)).await,
        Some("ready") => ready(&a[2]).await,
        _ => panic!("usage: apiload create|list|fanout|ready …"),
    }
}
