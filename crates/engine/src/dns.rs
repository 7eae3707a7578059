//! The embedded DNS server of user-defined networks, as Docker's at 127.0.0.11: a UDP
//! socket bound inside each such container's network namespace, served by the engine.
//! Container names and aliases on the networks the asking container shares with them are
//! answered here; every other name is forwarded to the host's resolvers.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};

/// The address the server listens on inside a container.
pub const ADDRESS: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);

/// Answers a name for the asking container: `Some(addresses)` when it is one of the
/// engine's (possibly empty for a known name without IPv4), `None` to forward.
pub type Lookup = Arc<dyn Fn(&str) -> Option<Vec<Ipv4Addr>> + Send + Sync>;

/// A running server; dropping it (or `stop`) ends it within a second.
pub struct Server {
    stop: Arc<AtomicBool>,
}

impl Server {
    /// Binds 127.0.0.11:53 inside the network namespace at `netns` and serves it on a
    /// thread of the engine.
    pub fn start(netns: &Path, lookup: Lookup, upstream: Vec<SocketAddr>) -> io::Result<Server> {
        let ns = std::fs::File::open(netns)?;
        // The socket is made on a thread that enters the namespace (setns of a network
        // namespace is per thread) and stays there when the thread ends.
        let sock = std::thread::spawn(move || -> io::Result<UdpSocket> {
            // SAFETY: setns with a namespace fd we opened; only this thread moves.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            UdpSocket::bind((ADDRESS, 53))
        })
        .join()
        .map_err(|_| io::Error::other("the namespace thread panicked"))??;
        sock.set_read_timeout(Some(Duration::from_secs(1)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !flag.load(Ordering::SeqCst) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(reply) = answer(&buf[..n], &lookup, &upstream) {
                    let _ = sock.send_to(&reply, from);
                }
            }
        });
        Ok(Server { stop })
    }

    /// Ends the server.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The host's resolvers (`nameserver` lines of /etc/resolv.conf), port 53.
pub fn host_resolvers() -> Vec<SocketAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
        .filter(|a| *a != std::net::IpAddr::V4(ADDRESS))
        .map(|a| SocketAddr::new(a, 53))
        .collect()
}

/// The reply to one query packet (`None`: not a query worth an answer).
pub fn answer(packet: &[u8], lookup: &Lookup, upstream: &[SocketAddr]) -> Option<Vec<u8>> {
    let req = Message::from_vec(packet).ok()?;
    if req.metadata.message_type != MessageType::Query {
        return None;
    }
    let reply = |code: ResponseCode, answers: Vec<Record>| -> Option<Vec<u8>> {
        let mut m = Message::response(req.metadata.id, OpCode::Query);
        m.metadata.recursion_desired = req.metadata.recursion_desired;
        m.metadata.recursion_available = true;
        m.metadata.response_code = code;
        for q in &req.queries {
            m.add_query(q.clone());
        }
        for a in answers {
            m.add_answer(a);
        }
        m.to_vec().ok()
    };
    let [q] = req.queries.as_slice() else {
        return reply(ResponseCode::FormErr, Vec::new());
    };
    let name = q
        .name()
        .to_ascii()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    if let Some(addrs) = lookup(&name) {
        let answers = if q.query_type() == RecordType::A {
            addrs
                .into_iter()
                .map(|ip| Record::from_rdata(q.name().clone(), 600, RData::A(A(ip))))
                .collect()
        } else {
            // A container has no other records: an empty answer, so resolvers try A.
            Vec::new()
        };
        return reply(ResponseCode::NoError, answers);
    }
    // A single label that is no container here is no name anywhere: answered at once, not
    // sent to the host's resolvers (the client's search domains make their own queries).
    if !name.contains('.') {
        return reply(ResponseCode::NXDomain, Vec::new());
    }
    forward(packet, upstream).or_else(|| reply(ResponseCode::ServFail, Vec::new()))
}

/// Asks the upstream resolvers in turn; the first answer is relayed as it is.
fn forward(packet: &[u8], upstream: &[SocketAddr]) -> Option<Vec<u8>> {
    for server in upstream {
        let bind: SocketAddr = if server.is_ipv4() {
            "0.0.0.0:0".parse().ok()?
        } else {
            "[::]:0".parse().ok()?
        };
        let Ok(s) = UdpSocket::bind(bind) else {
            continue;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.send_to(packet, server).is_err() {
            continue;
        }
        let mut buf = vec![0u8; 4096];
        if let Ok((n, from)) = s.recv_from(&mut buf) {
            if from == *server {
                buf.truncate(n);
                return Some(buf);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    fn query(name: &str, t: RecordType) -> Vec<u8> {
        let mut q = Message::query();
        q.metadata.id = 4242;
        q.metadata.recursion_desired = true;
        q.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        q.to_vec().unwrap()
    }

    fn lookup() -> Lookup {
        Arc::new(|name: &str| match name {
            "web" | "www" => Some(vec![
                Ipv4Addr::new(10, 89, 0, 2),
                Ipv4Addr::new(10, 89, 0, 3),
            ]),
            _ => None,
        })
    }

    #[test]
    fn container_names_are_answered_here() {
        let r = Message::from_vec(&answer(&query("WEB.", RecordType::A), &lookup(), &[]).unwrap())
            .unwrap();
        assert_eq!(r.metadata.id, 4242);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        let ips: Vec<String> = r.answers.iter().map(|a| a.data.to_string()).collect();
        assert_eq!(ips, ["10.89.0.2", "10.89.0.3"]);
        let r =
            Message::from_vec(&answer(&query("www.", RecordType::AAAA), &lookup(), &[]).unwrap())
                .unwrap();
        assert_eq!(
            (r.metadata.response_code, r.answers.len()),
            (ResponseCode::NoError, 0)
        );
        // An unknown single label is not sent upstream.
        let r = Message::from_vec(&answer(&query("db.", RecordType::A), &lookup(), &[]).unwrap())
            .unwrap();
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        // Garbage gets no answer.
        assert!(answer(b"\x01\x02junk", &lookup(), &[]).is_none());
    }

    #[test]
    fn other_names_go_upstream_or_fail() {
        // No upstream: SERVFAIL.
        let r = Message::from_vec(
            &answer(&query("example.org.", RecordType::A), &lookup(), &[]).unwrap(),
        )
        .unwrap();
        assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
        // A fake upstream on loopback: its answer is relayed unchanged.
        let up = UdpSocket::bind("127.0.0.1:0").unwrap();
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
        let r = answer(&query("nowhere.test.", RecordType::A), &lookup(), &[addr]).unwrap();
        server.join().unwrap();
        let r = Message::from_vec(&r).unwrap();
        assert_eq!(
            (r.metadata.id, r.metadata.response_code),
            (4242, ResponseCode::NXDomain)
        );
    }
}
