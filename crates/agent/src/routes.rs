//! Routes to the other nodes' pod CIDRs, so every pod reaches every other pod by its IP
//! without NAT. Two backends (`--network-backend`):
//!
//! - `host-gw` (default): a route to each node's pod CIDR via that node's address; the
//!   nodes must share an L2 segment.
//! - `vxlan`: for nodes that share none. Each node has a VXLAN device (`berth.vxlan`, VNI
//!   1, UDP 8472 as flannel's) with the first address of its pod CIDR's block (`.0/32`)
//!   and publishes the device's MAC on its Node (`berth.dev/vtep-mac`); the others route
//!   the CIDR via that address on the device, with a permanent neighbour entry (address →
//!   MAC) and forwarding entry (MAC → the node's address), as flannel's vxlan backend does.
//!
//! Kept from a watch on Nodes: a node that joins, moves or leaves updates every node's
//! routes, neighbours and forwarding entries. berth's routes carry their own protocol
//! number, so the agent finds (and removes) exactly the ones it made.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::Command;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::watcher;

/// The `proto` of berth's routes (`ip route … proto 98`).
const PROTO: &str = "98";
/// The VXLAN device.
pub const VXLAN_DEVICE: &str = "berth.vxlan";
const VXLAN_ID: &str = "1";
const VXLAN_PORT: &str = "8472";
/// The Node annotation with a node's VXLAN device MAC.
pub const VTEP_MAC: &str = "berth.dev/vtep-mac";
/// The Node annotation naming a node's backend.
pub const BACKEND: &str = "berth.dev/network-backend";

/// How pod traffic crosses nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Backend {
    #[default]
    HostGw,
    Vxlan,
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "host-gw" => Ok(Backend::HostGw),
            "vxlan" => Ok(Backend::Vxlan),
            _ => Err(format!(
                "unknown network backend {s:?}: the backends are host-gw and vxlan"
            )),
        }
    }
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::HostGw => "host-gw",
            Backend::Vxlan => "vxlan",
        }
    }
}

fn command(cmd: &str, args: &[&str]) -> Result<String, String> {
    let o = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd} {}: {e}", args.join(" ")))?;
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

fn ip(args: &[&str]) -> Result<String, String> {
    command("ip", args)
}

/// Where one other node's pods are reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub cidr: String,
    pub node_ip: String,
    /// Its VXLAN device's MAC, if it has one.
    pub mac: Option<String>,
}

/// A pod CIDR's VXLAN address: its block's first address.
fn vtep_ip(cidr: &str) -> Option<Ipv4Addr> {
    cidr.split_once('/')?.0.parse().ok()
}

/// berth's routes now: CIDR → (gateway, device).
fn current() -> BTreeMap<String, (String, String)> {
    let out = ip(&["-4", "route", "show", "proto", PROTO]).unwrap_or_default();
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let via = f.iter().position(|w| *w == "via")?;
            let dev = f.iter().position(|w| *w == "dev")?;
            Some((
                f.first()?.to_string(),
                (f.get(via + 1)?.to_string(), f.get(dev + 1)?.to_string()),
            ))
        })
        .collect()
}

/// The device that holds `addr`.
fn device_of(addr: &str) -> Option<String> {
    let out = ip(&["-o", "-4", "addr", "show"]).ok()?;
    out.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let a = f.get(3)?.split('/').next()?;
        if a != addr {
            return None;
        }
        Some(f.get(1)?.trim_end_matches(':').to_string())
    })
}

/// Makes (or keeps) this node's VXLAN device for `pod_cidr` on `node_ip`; returns its MAC.
pub fn setup_vxlan(node_ip: &str, pod_cidr: &str) -> Result<String, String> {
    let vtep = vtep_ip(pod_cidr).ok_or_else(|| format!("pod CIDR {pod_cidr}"))?;
    let under = device_of(node_ip)
        .ok_or_else(|| format!("no interface holds the node's address {node_ip}"))?;
    // (Through `ip`, not /sys: sysfs shows the network namespace it was mounted in.)
    let exists = ip(&["link", "show", VXLAN_DEVICE]).is_ok();
    let local_ok = exists
        && ip(&["-d", "link", "show", VXLAN_DEVICE])
            .is_ok_and(|s| s.contains(&format!("local {node_ip} ")));
    if exists && !local_ok {
        ip(&["link", "del", VXLAN_DEVICE])?;
    }
    if !local_ok {
        ip(&[
            "link",
            "add",
            VXLAN_DEVICE,
            "type",
            "vxlan",
            "id",
            VXLAN_ID,
            "local",
            node_ip,
            "dev",
            &under,
            "dstport",
            VXLAN_PORT,
            "nolearning",
        ])?;
    }
    let mtu: u32 = link_field(&under, "mtu")
        .and_then(|m| m.parse().ok())
        .unwrap_or(1500);
    ip(&["link", "set", VXLAN_DEVICE, "mtu", &(mtu - 50).to_string()])?;
    // Only this node's VXLAN address on the device.
    let want = format!("{vtep}/32");
    let have = ip(&["-o", "-4", "addr", "show", "dev", VXLAN_DEVICE]).unwrap_or_default();
    for l in have.lines() {
        if let Some(a) = l.split_whitespace().nth(3) {
            if a != want {
                let _ = ip(&["addr", "del", a, "dev", VXLAN_DEVICE]);
            }
        }
    }
    ip(&["addr", "replace", &want, "dev", VXLAN_DEVICE])?;
    ip(&["link", "set", VXLAN_DEVICE, "up"])?;
    link_field(VXLAN_DEVICE, "link/ether").ok_or_else(|| format!("{VXLAN_DEVICE} has no MAC"))
}

/// The word after `key` in `ip -o link show dev DEV`.
fn link_field(dev: &str, key: &str) -> Option<String> {
    let out = ip(&["-o", "link", "show", "dev", dev]).ok()?;
    let f: Vec<&str> = out.split_whitespace().collect();
    let i = f.iter().position(|w| *w == key)?;
    f.get(i + 1).map(|s| s.to_string())
}

/// Removes the VXLAN device (and with it every route, neighbour and forwarding entry on it).
pub fn remove_vxlan() {
    if ip(&["link", "show", VXLAN_DEVICE]).is_ok() {
        let _ = ip(&["link", "del", VXLAN_DEVICE]);
    }
}

/// Makes the routes (and for VXLAN, neighbour and forwarding entries) to `peers`, and
/// removes berth's others.
pub fn apply(backend: Backend, peers: &[Peer]) {
    let mut want: BTreeMap<String, (String, String)> = BTreeMap::new();
    for p in peers {
        match backend {
            Backend::HostGw => {
                let dev = device_towards(&p.node_ip).unwrap_or_default();
                want.insert(p.cidr.clone(), (p.node_ip.clone(), dev));
            }
            Backend::Vxlan => {
                let (Some(mac), Some(vtep)) = (&p.mac, vtep_ip(&p.cidr)) else {
                    eprintln!(
                        "berth agent: node at {} publishes no VXLAN device (is it on the vxlan backend?); its pods are unreachable from here",
                        p.node_ip
                    );
                    continue;
                };
                let vtep = vtep.to_string();
                let neigh = ip(&[
                    "neigh",
                    "replace",
                    &vtep,
                    "lladdr",
                    mac,
                    "dev",
                    VXLAN_DEVICE,
                    "nud",
                    "permanent",
                ]);
                let fdb = command(
                    "bridge",
                    &[
                        "fdb",
                        "replace",
                        mac,
                        "dev",
                        VXLAN_DEVICE,
                        "dst",
                        &p.node_ip,
                        "self",
                        "permanent",
                    ],
                );
                if let Err(e) = neigh.and(fdb) {
                    eprintln!("berth agent: VXLAN entries for {}: {e}", p.cidr);
                    continue;
                }
                want.insert(p.cidr.clone(), (vtep, VXLAN_DEVICE.to_string()));
            }
        }
    }
    let have = current();
    for (cidr, (gw, dev)) in &want {
        if have.get(cidr) == Some(&(gw.clone(), dev.clone())) {
            continue;
        }
        let r = match backend {
            Backend::HostGw => ip(&["route", "replace", cidr, "via", gw, "proto", PROTO]),
            Backend::Vxlan => ip(&[
                "route",
                "replace",
                cidr,
                "via",
                gw,
                "dev",
                VXLAN_DEVICE,
                "onlink",
                "proto",
                PROTO,
            ]),
        };
        if let Err(e) = r {
            eprintln!("berth agent: route to {cidr}: {e}");
        }
    }
    for cidr in have.keys() {
        if !want.contains_key(cidr) {
            let _ = ip(&["route", "del", cidr, "proto", PROTO]);
        }
    }
    if backend == Backend::Vxlan {
        prune_vxlan(peers);
    }
}

/// Removes the neighbour and forwarding entries of nodes that are gone.
fn prune_vxlan(peers: &[Peer]) {
    let macs: Vec<&str> = peers.iter().filter_map(|p| p.mac.as_deref()).collect();
    let vteps: Vec<String> = peers
        .iter()
        .filter_map(|p| vtep_ip(&p.cidr).map(|v| v.to_string()))
        .collect();
    let neigh = ip(&["neigh", "show", "dev", VXLAN_DEVICE]).unwrap_or_default();
    for l in neigh.lines() {
        if let Some(addr) = l.split_whitespace().next() {
            if !vteps.iter().any(|v| v == addr) {
                let _ = ip(&["neigh", "del", addr, "dev", VXLAN_DEVICE]);
            }
        }
    }
    let fdb = command("bridge", &["fdb", "show", "dev", VXLAN_DEVICE]).unwrap_or_default();
    for l in fdb.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if let (Some(mac), Some(pos)) = (f.first(), f.iter().position(|w| *w == "dst")) {
            if !macs.contains(mac) && *mac != "00:00:00:00:00:00" {
                let _ = command(
                    "bridge",
                    &[
                        "fdb",
                        "del",
                        mac,
                        "dev",
                        VXLAN_DEVICE,
                        "dst",
                        f[pos + 1],
                        "self",
                    ],
                );
            }
        }
    }
}

/// The device the kernel would use to reach `addr` (for comparing host-gw routes).
fn device_towards(addr: &str) -> Option<String> {
    let out = ip(&["-4", "route", "get", addr]).ok()?;
    let f: Vec<&str> = out.split_whitespace().collect();
    let dev = f.iter().position(|w| *w == "dev")?;
    f.get(dev + 1).map(|s| s.to_string())
}

fn node_peer(n: &Node) -> Option<(String, Peer)> {
    let name = n.metadata.name.clone()?;
    let cidr = n
        .spec
        .as_ref()?
        .pod_cidr
        .clone()
        .filter(|c| !c.is_empty())?;
    let addr = n
        .status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .find(|a| a.type_ == "InternalIP")?
        .address
        .clone();
    let mac = n
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(VTEP_MAC))
        .cloned();
    Some((
        name,
        Peer {
            cidr,
            node_ip: addr,
            mac,
        },
    ))
}

/// Follows the Nodes and keeps this node's routes to the others' pod CIDRs. When this
/// node's own Node is deleted, the node has left the cluster: its routes and VXLAN device
/// go, `left` is raised (the proxy then removes its table), and this returns.
pub async fn run(
    client: kube::Client,
    me: String,
    backend: Backend,
    left: tokio::sync::watch::Sender<bool>,
) {
    let api: kube::Api<Node> = kube::Api::all(client);
    let mut stream = watcher::watcher(api, watcher::Config::default()).boxed();
    let mut nodes: BTreeMap<String, Peer> = BTreeMap::new();
    let mut building: BTreeMap<String, Peer> = BTreeMap::new();
    let mut ready = false;
    let mut last: Option<(Vec<Peer>, std::time::Instant)> = None;
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(watcher::Event::Init) => building.clear(),
            Ok(watcher::Event::InitApply(n)) => {
                if let Some((name, p)) = node_peer(&n) {
                    building.insert(name, p);
                }
            }
            Ok(watcher::Event::InitDone) => {
                nodes = std::mem::take(&mut building);
                ready = true;
            }
            Ok(watcher::Event::Apply(n)) => match node_peer(&n) {
                Some((name, p)) => {
                    nodes.insert(name, p);
                }
                None => {
                    if let Some(name) = &n.metadata.name {
                        nodes.remove(name);
                    }
                }
            },
            Ok(watcher::Event::Delete(n)) => {
                if n.metadata.name.as_deref() == Some(me.as_str()) {
                    eprintln!(
                        "berth agent: node {me} was deleted from the cluster: removing its routes, network device and Service rules (restart the agent to join again)"
                    );
                    tokio::task::spawn_blocking(move || {
                        apply(backend, &[]);
                        remove_vxlan();
                    })
                    .await
                    .ok();
                    let _ = left.send(true);
                    return;
                }
                if let Some(name) = &n.metadata.name {
                    nodes.remove(name);
                }
            }
            Err(e) => {
                eprintln!("berth agent: watching nodes: {e}");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        }
        if ready {
            let peers: Vec<Peer> = nodes
                .iter()
                .filter(|(n, _)| **n != me)
                .map(|(_, p)| p.clone())
                .collect();
            // Node status updates come every few seconds and routes change far less often:
            // the same peers are applied again only every 30 s (which mends what someone
            // else changed meanwhile).
            if last
                .as_ref()
                .is_some_and(|(p, at)| *p == peers && at.elapsed().as_secs() < 30)
            {
                continue;
            }
            last = Some((peers.clone(), std::time::Instant::now()));
            tokio::task::spawn_blocking(move || apply(backend, &peers))
                .await
                .ok();
        }
    }
}
