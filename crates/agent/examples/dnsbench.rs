//! Cluster DNS under load, for `bench/services.sh`:
//!   dnsbench serve ADDR SERVICES     serve the cluster zone of SERVICES ClusterIP Services
//!                                    (bench/svc-N) on ADDR, UDP, until killed
//!   dnsbench hosts SERVICES          the same names as a hosts file (for dnsmasq)
//!   dnsbench load ADDR SERVICES SECS WORKERS
//!                                    A queries for random Service names from WORKERS
//!                                    concurrent clients for SECS seconds; prints
//!                                    `qps P50_MS P99_MS FAILED`

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent::clusterdns::Zone;
use agent::proxy::Catalog;
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use serde_json::json;

fn ip(i: usize) -> String {
    format!("10.43.{}.{}", 1 + i / 250, 1 + i % 250)
}

fn name(i: usize) -> String {
    format!("svc-{i}.bench.svc.cluster.local")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n = |i: usize| -> usize { args.get(i).and_then(|s| s.parse().ok()).unwrap_or(1000) };
    match args.get(1).map(String::as_str) {
        Some("hosts") => {
            for i in 0..n(2) {
                println!("{} {}", ip(i), name(i));
            }
        }
        Some("serve") => serve(args[2].parse().expect("ADDR"), n(3)),
        Some("load") => load(args[2].parse().expect("ADDR"), n(3), n(4) as u64, n(5)),
        _ => eprintln!("usage: dnsbench serve ADDR SERVICES | hosts SERVICES | load ADDR SERVICES SECS WORKERS"),
    }
}

fn serve(addr: SocketAddr, services: usize) {
    let mut cat = Catalog::default();
    for i in 0..services {
        let s = json!({"metadata": {"name": format!("svc-{i}"), "namespace": "bench"},
                       "spec": {"clusterIP": ip(i), "ports": [{"name": "http", "port": 80}]}});
        cat.services.insert(
            format!("bench/svc-{i}"),
            Arc::new(serde_json::from_value(s).unwrap()),
        );
    }
    let zone = Arc::new(Zone {
        domain: "cluster.local".into(),
        catalog: Arc::new(std::sync::RwLock::new(cat)),
        upstream: Vec::new(),
    });
    // The agent's server, on a runtime of the same shape as the agent's.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        // A pod gateway's address stands in; the agent's own server, as the agent runs it.
        agent::clusterdns::serve_udp(addr, zone)
            .await
            .expect("serve");
    });
}

fn load(addr: SocketAddr, services: usize, secs: u64, workers: usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (lat, failed) = rt.block_on(async move {
        let end = Instant::now() + Duration::from_secs(secs);
        let mut tasks = Vec::new();
        for w in 0..workers {
            tasks.push(tokio::spawn(async move {
                let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
                sock.connect(addr).await.unwrap();
                let mut lat = Vec::new();
                let mut failed = 0usize;
                let mut seq: u64 = w as u64 * 7919;
                let mut buf = vec![0u8; 4096];
                while Instant::now() < end {
                    seq = seq
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let i = (seq >> 33) as usize % services;
                    let id = (seq >> 17) as u16;
                    let mut q = Message::query();
                    q.metadata.id = id;
                    q.metadata.recursion_desired = true;
                    q.add_query(Query::query(
                        Name::from_ascii(format!("{}.", name(i))).unwrap(),
                        RecordType::A,
                    ));
                    let bytes = q.to_vec().unwrap();
                    let t = Instant::now();
                    let _ = sock.send(&bytes).await;
                    let ok = loop {
                        match tokio::time::timeout(Duration::from_secs(1), sock.recv(&mut buf))
                            .await
                        {
                            Ok(Ok(len)) => match Message::from_vec(&buf[..len]) {
                                Ok(m) if m.metadata.id == id => {
                                    break m.metadata.response_code == ResponseCode::NoError
                                        && m.answers.len() == 1
                                }
                                _ => continue,
                            },
                            _ => break false,
                        }
                    };
                    if ok {
                        lat.push(t.elapsed().as_secs_f64() * 1000.0);
                    } else {
                        failed += 1;
                    }
                }
                (lat, failed)
            }));
        }
        let mut all = Vec::new();
        let mut failed = 0;
        for t in tasks {
            let (l, f) = t.await.unwrap();
            all.extend(l);
            failed += f;
        }
        (all, failed)
    });
    let mut lat = lat;
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "{:.0} {:.3} {:.3} {failed}",
        lat.len() as f64 / secs as f64,
        pct(0.5),
        pct(0.99)
    );
}
