//! The agent's client-side load balancer, as k3s's agent has one: the API client talks to
//! `https://127.0.0.1:<port>`, and each connection is spliced to a live server — the one
//! that answered last, else the next of the list. The list starts with `--server` and
//! follows the `kubernetes` Endpoints (every live server, kept by the servers' lease
//! reconciler), so when a server dies the agent's watches reconnect to another and resume
//! from their resourceVersion: the servers share one store, so nothing is relisted.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;

/// The servers a node may reach, in the order to try them.
#[derive(Clone, Default)]
pub struct Servers {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    /// `host:port` of each server; the first is tried first.
    list: Vec<String>,
    /// The `--server` the agent was given: always kept.
    seed: String,
}

impl Servers {
    pub fn new(seed: &str) -> Servers {
        let s = Servers::default();
        {
            let mut i = s.inner.lock().unwrap();
            i.seed = seed.to_string();
            i.list = vec![seed.to_string()];
        }
        s
    }

    /// The list now.
    pub fn list(&self) -> Vec<String> {
        self.inner.lock().unwrap().list.clone()
    }

    /// Puts `addr` first: it answered.
    fn prefer(&self, addr: &str) {
        let mut i = self.inner.lock().unwrap();
        if let Some(p) = i.list.iter().position(|a| a == addr) {
            let a = i.list.remove(p);
            i.list.insert(0, a);
        }
    }

    /// The servers the cluster lists now, keeping the preferred one first.
    fn set(&self, addrs: Vec<String>) {
        let mut i = self.inner.lock().unwrap();
        let mut next: Vec<String> = Vec::new();
        if let Some(first) = i
            .list
            .first()
            .filter(|f| addrs.contains(f) || **f == i.seed)
        {
            next.push(first.clone());
        }
        // Servers known before and no longer listed stay last, as fallbacks: a list read
        // while the servers' leases disagree must not leave the node one server to try.
        let known = i.list.clone();
        for a in addrs
            .into_iter()
            .chain(std::iter::once(i.seed.clone()))
            .chain(known)
        {
            if !next.contains(&a) {
                next.push(a);
            }
        }
        if next != i.list {
            eprintln!("berth agent: API servers: {}", next.join(", "));
            i.list = next;
        }
    }
}

/// `host:port` of a server URL.
pub fn authority(url: &str) -> String {
    let rest = url
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .to_string();
    if rest
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && !p.contains(']') && p.parse::<u16>().is_ok())
    {
        rest
    } else {
        format!("{rest}:6443")
    }
}

/// Listens on loopback and splices every connection to a live server.
pub async fn start(servers: Servers) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let _ = client.set_nodelay(true);
            let servers = servers.clone();
            tokio::spawn(async move {
                for target in servers.list() {
                    let connected = tokio::time::timeout(
                        Duration::from_secs(3),
                        tokio::net::TcpStream::connect(target.as_str()),
                    )
                    .await;
                    let Ok(Ok(mut upstream)) = connected else {
                        continue;
                    };
                    let _ = upstream.set_nodelay(true);
                    servers.prefer(&target);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    return;
                }
            });
        }
    });
    Ok(addr)
}

/// Keeps the list equal to the `kubernetes` Endpoints' addresses.
pub async fn follow(client: kube::Client, servers: Servers) {
    use k8s_openapi::api::core::v1::Endpoints;
    let api: kube::Api<Endpoints> = kube::Api::namespaced(client, "default");
    let cfg = kube::runtime::watcher::Config::default().fields("metadata.name=kubernetes");
    let mut events = kube::runtime::watcher(api, cfg).boxed();
    while let Some(e) = events.next().await {
        let ep = match e {
            Ok(kube::runtime::watcher::Event::Apply(ep))
            | Ok(kube::runtime::watcher::Event::InitApply(ep)) => ep,
            Ok(_) => continue,
            Err(_) => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut addrs = Vec::new();
        for s in ep.subsets.iter().flatten() {
            let Some(port) = s.ports.iter().flatten().next().map(|p| p.port) else {
                continue;
            };
            for a in s.addresses.iter().flatten() {
                let host = if a.ip.contains(':') {
                    format!("[{}]", a.ip)
                } else {
                    a.ip.clone()
                };
                addrs.push(format!("{host}:{port}"));
            }
        }
        if !addrs.is_empty() {
            servers.set(addrs);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_keeps_the_seed_and_the_preferred_first() {
        let s = Servers::new("10.0.0.1:6443");
        s.set(vec!["10.0.0.2:6443".into(), "10.0.0.1:6443".into()]);
        assert_eq!(s.list(), ["10.0.0.1:6443", "10.0.0.2:6443"]);
        s.prefer("10.0.0.2:6443");
        s.set(vec!["10.0.0.2:6443".into(), "10.0.0.3:6443".into()]);
        assert_eq!(
            s.list(),
            ["10.0.0.2:6443", "10.0.0.3:6443", "10.0.0.1:6443"]
        );
        // A server no longer listed is kept, last.
        s.set(vec!["10.0.0.3:6443".into()]);
        assert_eq!(
            s.list(),
            ["10.0.0.3:6443", "10.0.0.1:6443", "10.0.0.2:6443"]
        );
        assert_eq!(authority("https://h:7/"), "h:7");
        assert_eq!(authority("https://h"), "h:6443");
        assert_eq!(authority("https://[::1]:9"), "[::1]:9");
    }
}
