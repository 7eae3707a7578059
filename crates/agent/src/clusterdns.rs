//! Cluster DNS, served by every node's agent on its pod network's gateway (port 53, UDP
//! and TCP): the records of the Kubernetes DNS specification from the Services and
//! EndpointSlices the proxy follows, so no query leaves the node for a cluster name. The
//! `kube-dns` Service (10.43.0.10) reaches it through the proxy, on the pod's own node
//! (`internalTrafficPolicy: Local`).
//!
//! - `<svc>.<ns>.svc.<zone>`: A for a ClusterIP; for a headless Service, an A per ready
//!   endpoint (NXDOMAIN with none); CNAME for ExternalName.
//! - `<hostname>.<svc>.<ns>.svc.<zone>` for headless endpoints with a hostname.
//! - SRV `_<port>._<proto>.<svc>.<ns>.svc.<zone>` for named ports.
//! - `a-b-c-d.<ns>.pod.<zone>` pod records; PTR for Service and endpoint addresses;
//!   TXT `dns-version.<zone>`.
//! - TTL 5 s. Names in the zone that do not exist: NXDOMAIN with the zone's SOA; other
//!   names are forwarded to the node's resolvers.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, CNAME, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::proxy::{Catalog, Shared};

/// The records' TTL (CoreDNS's default).
pub const TTL: u32 = 5;
/// The version of the specification answered at `dns-version.<zone>`.
const SPEC_VERSION: &str = "1.1.0";

/// What the server answers from.
pub struct Zone {
    /// `cluster.local`, without the final dot.
    pub domain: String,
    pub catalog: Shared,
    /// Where names outside the zone go.
    pub upstream: Vec<SocketAddr>,
}

/// The nameservers of a resolv.conf, port 53, leaving out `exclude` (the cluster DNS).
pub fn resolvers(resolv_conf: &str, exclude: Ipv4Addr) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
        .filter(|a| *a != std::net::IpAddr::V4(exclude))
        .map(|a| SocketAddr::new(a, 53))
        .collect()
}

/// A socket bound to `addr` whether or not the address exists yet (IP_FREEBIND): the pod
/// network's bridge gets its gateway address with the first pod.
fn freebind(addr: SocketAddr, stream: bool) -> std::io::Result<std::os::fd::OwnedFd> {
    use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn};
    let ty = if stream {
        SockType::Stream
    } else {
        SockType::Datagram
    };
    let fd = socket::socket(
        AddressFamily::Inet,
        ty,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    socket::setsockopt(&fd, sockopt::IpFreebind, &true)?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    let SocketAddr::V4(v4) = addr else {
        return Err(std::io::Error::other("cluster DNS listens on IPv4"));
    };
    socket::bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(v4))?;
    if stream {
        socket::listen(&fd, socket::Backlog::new(128)?)?;
    }
    Ok(fd)
}

/// Serves DNS on `addr` (UDP and TCP) until the process ends.
pub async fn serve(addr: SocketAddr, zone: Arc<Zone>) -> anyhow::Result<()> {
    let udp = tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(freebind(addr, false)?))?;
    let tcp =
        tokio::net::TcpListener::from_std(std::net::TcpListener::from(freebind(addr, true)?))?;
    let udp = Arc::new(udp);
    let z = zone.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = tcp.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let z = z.clone();
            tokio::spawn(async move {
                let _ = serve_tcp(stream, z).await;
            });
        }
    });
    udp_loop(udp, zone).await
}

/// Serves DNS on `addr` over UDP alone (what `bench/services.sh` loads).
pub async fn serve_udp(addr: SocketAddr, zone: Arc<Zone>) -> anyhow::Result<()> {
    let udp = tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(freebind(addr, false)?))?;
    udp_loop(Arc::new(udp), zone).await
}

async fn udp_loop(udp: Arc<tokio::net::UdpSocket>, zone: Arc<Zone>) -> anyhow::Result<()> {
    // Names in the zone are answered inline, by a receiver per core; only forwarded
    // queries get a task of their own.
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut receivers = Vec::new();
    for _ in 0..workers {
        let (udp, zone) = (udp.clone(), zone.clone());
        receivers.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, from)) = udp.recv_from(&mut buf).await else {
                    continue;
                };
                match answer_here(&buf[..n], &zone, false) {
                    Reply::Answer(reply) => {
                        let _ = udp.send_to(&reply, from).await;
                    }
                    Reply::Forward(servfail) => {
                        let packet = buf[..n].to_vec();
                        let (udp, zone) = (udp.clone(), zone.clone());
                        tokio::spawn(async move {
                            let reply = forward(&packet, &zone.upstream, false)
                                .await
                                .unwrap_or(servfail);
                            let _ = udp.send_to(&reply, from).await;
                        });
                    }
                    Reply::Ignore => {}
                }
            }
        }));
    }
    for r in receivers {
        let _ = r.await;
    }
    Ok(())
}

async fn serve_tcp(mut s: tokio::net::TcpStream, zone: Arc<Zone>) -> std::io::Result<()> {
    loop {
        let len = match tokio::time::timeout(Duration::from_secs(10), s.read_u16()).await {
            Ok(Ok(n)) => n as usize,
            _ => return Ok(()),
        };
        let mut packet = vec![0u8; len];
        s.read_exact(&mut packet).await?;
        if let Some(reply) = answer(&packet, &zone, true).await {
            s.write_u16(reply.len() as u16).await?;
            s.write_all(&reply).await?;
        }
    }
}

/// What the zone holds for a name: records (possibly none: NODATA), or nothing (NXDOMAIN).
enum Found {
    Records(Vec<Record>, Vec<Record>),
    NoName,
}

/// What the zone makes of one query packet.
pub enum Reply {
    /// The answer, from the zone (or an error it gives).
    Answer(Vec<u8>),
    /// A name outside the zone: for the upstream resolvers, with the SERVFAIL to send if
    /// none answers.
    Forward(Vec<u8>),
    /// Nothing worth answering.
    Ignore,
}

/// The reply to one query packet (`None`: nothing worth answering), forwarding names
/// outside the zone.
pub async fn answer(packet: &[u8], zone: &Zone, tcp: bool) -> Option<Vec<u8>> {
    match answer_here(packet, zone, tcp) {
        Reply::Answer(b) => Some(b),
        Reply::Forward(servfail) => forward(packet, &zone.upstream, tcp)
            .await
            .or(Some(servfail)),
        Reply::Ignore => None,
    }
}

/// The zone's reply to one query packet, without waiting on anything.
pub fn answer_here(packet: &[u8], zone: &Zone, tcp: bool) -> Reply {
    let Ok(req) = Message::from_vec(packet) else {
        return Reply::Ignore;
    };
    if req.metadata.message_type != MessageType::Query {
        return Reply::Ignore;
    }
    let encode = |m: &Message| m.to_vec().map_or(Reply::Ignore, Reply::Answer);
    let mut m = Message::response(req.metadata.id, OpCode::Query);
    m.metadata.recursion_desired = req.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    for q in &req.queries {
        m.add_query(q.clone());
    }
    let [q] = req.queries.as_slice() else {
        m.metadata.response_code = ResponseCode::FormErr;
        return encode(&m);
    };
    let name = q.name().to_ascii().to_ascii_lowercase();
    let name = name.trim_end_matches('.');
    let in_zone = name == zone.domain || name.ends_with(&format!(".{}", zone.domain));
    let reverse = name.ends_with(".in-addr.arpa");
    let found = if in_zone {
        let cat = zone.catalog.read().unwrap_or_else(|p| p.into_inner());
        Some(lookup(&cat, &zone.domain, name, q.query_type()))
    } else if reverse {
        let cat = zone.catalog.read().unwrap_or_else(|p| p.into_inner());
        reverse_lookup(&cat, &zone.domain, name)
    } else {
        None
    };
    let Some(found) = found else {
        m.metadata.response_code = ResponseCode::ServFail;
        return match m.to_vec() {
            Ok(servfail) => Reply::Forward(servfail),
            Err(_) => Reply::Ignore,
        };
    };
    m.metadata.authoritative = true;
    match found {
        Found::Records(answers, extra) => {
            for a in answers {
                m.add_answer(a);
            }
            for a in extra {
                m.add_additional(a);
            }
            if m.answers.is_empty() {
                m.add_authority(soa(&zone.domain));
            }
        }
        Found::NoName => {
            m.metadata.response_code = ResponseCode::NXDomain;
            m.add_authority(soa(&zone.domain));
        }
    }
    let Ok(bytes) = m.to_vec() else {
        return Reply::Ignore;
    };
    let limit = req.edns.as_ref().map_or(512, |e| e.max_payload().max(512)) as usize;
    if !tcp && bytes.len() > limit {
        // Too big for UDP: the header and question, truncated, so the client asks by TCP.
        m.answers.clear();
        m.additionals.clear();
        m.authorities.clear();
        m.metadata.truncation = true;
        return encode(&m);
    }
    Reply::Answer(bytes)
}

fn n(s: &str) -> Name {
    Name::from_ascii(format!("{s}.")).unwrap_or_default()
}

fn rec(name: &str, data: RData) -> Record {
    Record::from_rdata(n(name), TTL, data)
}

fn soa(domain: &str) -> Record {
    Record::from_rdata(
        n(domain),
        TTL,
        RData::SOA(SOA::new(
            n(&format!("ns.dns.{domain}")),
            n(&format!("hostmaster.{domain}")),
            1,
            7200,
            1800,
            86400,
            TTL,
        )),
    )
}

/// A ready endpoint of a Service: (address, hostname, port by (name, protocol)).
struct Ready {
    ip: Ipv4Addr,
    hostname: Option<String>,
    ports: Vec<(String, String, u16)>,
}

fn ready_endpoints(cat: &Catalog, key: &str) -> Vec<Ready> {
    let mut out: Vec<Ready> = Vec::new();
    for s in cat.slices_of(key) {
        if s.address_type != "IPv4" {
            continue;
        }
        let ports: Vec<(String, String, u16)> = s
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                Some((
                    p.name.clone().unwrap_or_default(),
                    p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    u16::try_from(p.port?).ok()?,
                ))
            })
            .collect();
        for e in &s.endpoints {
            if e.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            let Some(ip) = e.addresses.first().and_then(|a| a.parse().ok()) else {
                continue;
            };
            if out.iter().any(|r| r.ip == ip) {
                continue;
            }
            out.push(Ready {
                ip,
                hostname: e.hostname.clone(),
                ports: ports.clone(),
            });
        }
    }
    out.sort_by_key(|r| r.ip);
    out
}

fn dashed(ip: Ipv4Addr) -> String {
    ip.to_string().replace('.', "-")
}

/// A name in the zone.
fn lookup(cat: &Catalog, domain: &str, name: &str, qt: RecordType) -> Found {
    let rel = name
        .strip_suffix(domain)
        .unwrap_or_default()
        .trim_end_matches('.');
    let labels: Vec<&str> = if rel.is_empty() {
        Vec::new()
    } else {
        rel.split('.').collect()
    };
    let want = |t: RecordType| qt == t || qt == RecordType::ANY;
    let records = |v: Vec<Record>| Found::Records(v, Vec::new());
    match labels.as_slice() {
        [] | ["svc"] | ["pod"] | [_, "svc"] | [_, "pod"] => records(Vec::new()),
        ["dns-version"] => records(if want(RecordType::TXT) {
            vec![rec(name, RData::TXT(TXT::new(vec![SPEC_VERSION.into()])))]
        } else {
            Vec::new()
        }),
        [pod, _ns, "pod"] => {
            let ip: Option<Ipv4Addr> = pod.replace('-', ".").parse().ok();
            match ip {
                Some(ip) if pod.matches('-').count() == 3 => records(if want(RecordType::A) {
                    vec![rec(name, RData::A(A(ip)))]
                } else {
                    Vec::new()
                }),
                _ => Found::NoName,
            }
        }
        [svc, ns, "svc"] => {
            let key = format!("{ns}/{svc}");
            let Some(s) = cat.services.get(&key) else {
                return Found::NoName;
            };
            let Some(spec) = s.spec.as_ref() else {
                return Found::NoName;
            };
            if spec.type_.as_deref() == Some("ExternalName") {
                let target = spec.external_name.clone().unwrap_or_default();
                return records(vec![rec(
                    name,
                    RData::CNAME(CNAME(n(target.trim_end_matches('.')))),
                )]);
            }
            match spec.cluster_ip.as_deref() {
                Some("None") => {
                    let eps = ready_endpoints(cat, &key);
                    if eps.is_empty() {
                        return Found::NoName;
                    }
                    records(if want(RecordType::A) {
                        eps.iter().map(|e| rec(name, RData::A(A(e.ip)))).collect()
                    } else {
                        Vec::new()
                    })
                }
                Some(ip) => records(match ip.parse::<Ipv4Addr>() {
                    Ok(ip) if want(RecordType::A) => vec![rec(name, RData::A(A(ip)))],
                    _ => Vec::new(),
                }),
                None => Found::NoName,
            }
        }
        [host, svc, ns, "svc"] if !host.starts_with('_') => {
            let key = format!("{ns}/{svc}");
            let headless = cat
                .services
                .get(&key)
                .and_then(|s| s.spec.as_ref())
                .is_some_and(|s| s.cluster_ip.as_deref() == Some("None"));
            if !headless {
                return Found::NoName;
            }
            let hit: Vec<Record> = ready_endpoints(cat, &key)
                .into_iter()
                .filter(|e| e.hostname.as_deref() == Some(*host) || dashed(e.ip) == *host)
                .map(|e| rec(name, RData::A(A(e.ip))))
                .collect();
            if hit.is_empty() {
                Found::NoName
            } else if want(RecordType::A) {
                records(hit)
            } else {
                records(Vec::new())
            }
        }
        [port, proto, svc, ns, "svc"] => {
            let (Some(port), Some(proto)) = (port.strip_prefix('_'), proto.strip_prefix('_'))
            else {
                return Found::NoName;
            };
            let key = format!("{ns}/{svc}");
            let Some(spec) = cat.services.get(&key).and_then(|s| s.spec.clone()) else {
                return Found::NoName;
            };
            let Some(sp) = spec.ports.iter().flatten().find(|p| {
                p.name.as_deref() == Some(port)
                    && p.protocol
                        .as_deref()
                        .unwrap_or("TCP")
                        .eq_ignore_ascii_case(proto)
            }) else {
                return Found::NoName;
            };
            let svc_name = format!("{svc}.{ns}.svc.{domain}");
            if spec.cluster_ip.as_deref() == Some("None") {
                let eps = ready_endpoints(cat, &key);
                let mut answers = Vec::new();
                let mut extra = Vec::new();
                for e in &eps {
                    let Some((_, _, p)) = e
                        .ports
                        .iter()
                        .find(|(pn, pp, _)| pn == port && pp.eq_ignore_ascii_case(proto))
                    else {
                        continue;
                    };
                    let target = format!(
                        "{}.{svc_name}",
                        e.hostname.clone().unwrap_or_else(|| dashed(e.ip))
                    );
                    answers.push(rec(name, RData::SRV(SRV::new(0, 100, *p, n(&target)))));
                    extra.push(rec(&target, RData::A(A(e.ip))));
                }
                if answers.is_empty() {
                    return Found::NoName;
                }
                if want(RecordType::SRV) {
                    Found::Records(answers, extra)
                } else {
                    records(Vec::new())
                }
            } else {
                let port = u16::try_from(sp.port).unwrap_or_default();
                if !want(RecordType::SRV) {
                    return records(Vec::new());
                }
                let extra = spec
                    .cluster_ip
                    .as_deref()
                    .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
                    .map(|ip| vec![rec(&svc_name, RData::A(A(ip)))])
                    .unwrap_or_default();
                Found::Records(
                    vec![rec(name, RData::SRV(SRV::new(0, 100, port, n(&svc_name))))],
                    extra,
                )
            }
        }
        _ => Found::NoName,
    }
}

/// PTR records for Service addresses and headless endpoints; `None` for addresses that are
/// not the cluster's (forwarded).
fn reverse_lookup(cat: &Catalog, domain: &str, name: &str) -> Option<Found> {
    let octets: Vec<u8> = name
        .strip_suffix(".in-addr.arpa")?
        .split('.')
        .rev()
        .map(|o| o.parse().ok())
        .collect::<Option<Vec<u8>>>()?;
    let [a, b, c, d] = octets.as_slice() else {
        return None;
    };
    let ip = Ipv4Addr::new(*a, *b, *c, *d);
    let target = cat.services.iter().find_map(|(key, s)| {
        let spec = s.spec.as_ref()?;
        let (ns, svc) = key.split_once('/')?;
        if spec.cluster_ip.as_deref() == Some(ip.to_string().as_str()) {
            return Some(format!("{svc}.{ns}.svc.{domain}"));
        }
        if spec.cluster_ip.as_deref() == Some("None") {
            let e = ready_endpoints(cat, key).into_iter().find(|e| e.ip == ip)?;
            let host = e.hostname.unwrap_or_else(|| dashed(ip));
            return Some(format!("{host}.{svc}.{ns}.svc.{domain}"));
        }
        None
    });
    target.map(|t| Found::Records(vec![rec(name, RData::PTR(PTR(n(&t))))], Vec::new()))
}

/// Asks the upstream resolvers in turn; the first answer is relayed as it is.
async fn forward(packet: &[u8], upstream: &[SocketAddr], tcp: bool) -> Option<Vec<u8>> {
    for server in upstream {
        let got = tokio::time::timeout(Duration::from_secs(2), async {
            if tcp {
                let mut s = tokio::net::TcpStream::connect(server).await.ok()?;
                s.write_u16(packet.len() as u16).await.ok()?;
                s.write_all(packet).await.ok()?;
                let len = s.read_u16().await.ok()? as usize;
                let mut buf = vec![0u8; len];
                s.read_exact(&mut buf).await.ok()?;
                Some(buf)
            } else {
                // Connected, so an unreachable resolver fails at once (ICMP) instead of
                // after the timeout.
                let s = tokio::net::UdpSocket::bind("0.0.0.0:0").await.ok()?;
                s.connect(server).await.ok()?;
                s.send(packet).await.ok()?;
                let mut buf = vec![0u8; 4096];
                let n = s.recv(&mut buf).await.ok()?;
                buf.truncate(n);
                Some(buf)
            }
        })
        .await;
        if let Ok(Some(r)) = got {
            return Some(r);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use serde_json::json;

    fn zone() -> Zone {
        let mut cat = Catalog::default();
        let svc = |name: &str, spec: serde_json::Value| {
            serde_json::from_value(
                json!({"metadata": {"name": name, "namespace": "ns"}, "spec": spec}),
            )
            .unwrap()
        };
        cat.services.insert(
            "ns/web".into(),
            Arc::new(svc(
                "web",
                json!({"clusterIP": "10.43.0.20",
                "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}),
            )),
        );
        cat.services.insert(
            "ns/db".into(),
            Arc::new(svc(
                "db",
                json!({"clusterIP": "None",
                "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]}),
            )),
        );
        cat.services.insert(
            "ns/ext".into(),
            Arc::new(svc(
                "ext",
                json!({"type": "ExternalName", "externalName": "example.test"}),
            )),
        );
        let slice = json!({
            "metadata": {"name": "db-1", "namespace": "ns", "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv4",
            "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.42.1.7"], "hostname": "db-0", "conditions": {"ready": true}},
                {"addresses": ["10.42.2.8"], "conditions": {"ready": true}},
                {"addresses": ["10.42.2.9"], "conditions": {"ready": false}},
            ],
        });
        cat.put_slice(
            "ns/db-1".into(),
            Some(Arc::new(serde_json::from_value(slice).unwrap())),
        );
        Zone {
            domain: "cluster.local".into(),
            catalog: Arc::new(std::sync::RwLock::new(cat)),
            upstream: Vec::new(),
        }
    }

    fn ask(z: &Zone, name: &str, t: RecordType) -> Message {
        let mut q = Message::query();
        q.metadata.id = 7;
        q.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let r = rt.block_on(answer(&q.to_vec().unwrap(), z, false)).unwrap();
        Message::from_vec(&r).unwrap()
    }

    fn data(m: &Message) -> Vec<String> {
        m.answers.iter().map(|a| a.data.to_string()).collect()
    }

    #[test]
    fn services_headless_endpoints_and_external_names() {
        let z = zone();
        let m = ask(&z, "web.ns.svc.cluster.local.", RecordType::A);
        assert_eq!(data(&m), ["10.43.0.20"]);
        assert_eq!(m.answers[0].ttl, TTL);
        assert!(m.metadata.authoritative);
        let m = ask(&z, "web.ns.svc.cluster.local.", RecordType::AAAA);
        assert_eq!(
            (m.metadata.response_code, m.answers.len()),
            (ResponseCode::NoError, 0)
        );
        let m = ask(&z, "db.ns.svc.cluster.local.", RecordType::A);
        assert_eq!(data(&m), ["10.42.1.7", "10.42.2.8"]);
        assert_eq!(
            data(&ask(&z, "db-0.db.ns.svc.cluster.local.", RecordType::A)),
            ["10.42.1.7"]
        );
        assert_eq!(
            data(&ask(&z, "ext.ns.svc.cluster.local.", RecordType::A)),
            ["example.test."]
        );
        let m = ask(&z, "nope.ns.svc.cluster.local.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(m.authorities.len(), 1);
    }

    #[test]
    fn srv_pod_ptr_and_version_records() {
        let z = zone();
        assert_eq!(
            data(&ask(
                &z,
                "_http._tcp.web.ns.svc.cluster.local.",
                RecordType::SRV
            )),
            ["0 100 80 web.ns.svc.cluster.local."]
        );
        let m = ask(&z, "_pg._tcp.db.ns.svc.cluster.local.", RecordType::SRV);
        assert_eq!(
            data(&m),
            [
                "0 100 5432 db-0.db.ns.svc.cluster.local.",
                "0 100 5432 10-42-2-8.db.ns.svc.cluster.local."
            ]
        );
        assert_eq!(m.additionals.len(), 2);
        assert_eq!(
            data(&ask(&z, "10-42-3-4.ns.pod.cluster.local.", RecordType::A)),
            ["10.42.3.4"]
        );
        assert_eq!(
            data(&ask(&z, "20.0.43.10.in-addr.arpa.", RecordType::PTR)),
            ["web.ns.svc.cluster.local."]
        );
        assert_eq!(
            data(&ask(&z, "7.1.42.10.in-addr.arpa.", RecordType::PTR)),
            ["db-0.db.ns.svc.cluster.local."]
        );
        assert_eq!(
            data(&ask(&z, "dns-version.cluster.local.", RecordType::TXT)),
            ["1.1.0"]
        );
        // Not the cluster's, no upstream: SERVFAIL.
        let m = ask(&z, "example.org.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    }

    #[test]
    fn other_names_go_to_the_nodes_resolvers() {
        let up = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = up.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            let (n, from) = up.recv_from(&mut buf).unwrap();
            let req = Message::from_vec(&buf[..n]).unwrap();
            let mut m = Message::response(req.metadata.id, OpCode::Query);
            m.metadata.response_code = ResponseCode::NXDomain;
            m.add_query(req.queries[0].clone());
            up.send_to(&m.to_vec().unwrap(), from).unwrap();
        });
        let mut z = zone();
        z.upstream = vec![addr];
        let m = ask(&z, "nowhere.example.", RecordType::A);
        server.join().unwrap();
        assert_eq!(
            (m.metadata.id, m.metadata.response_code),
            (7, ResponseCode::NXDomain)
        );
        assert!(!m.metadata.authoritative);
        // A resolver that is not there: SERVFAIL.
        let gone = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        z.upstream = vec![gone];
        let m = ask(&z, "nowhere.example.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    }
}
