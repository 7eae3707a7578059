//! Networks: bridge networks set up through CNI (the reference `bridge`, `host-local`,
//! `portmap` and `firewall` plugins), the default `bridge` network (`berth0`, 10.88.0.0/16),
//! user-defined ones, isolation between them, and the host settings they need.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::fsutil;

/// The default network's name, as Docker calls it.
pub const DEFAULT_NETWORK: &str = "bridge";
/// The default network's bridge interface.
pub const DEFAULT_BRIDGE: &str = "berth0";
/// The default network's subnet.
pub const DEFAULT_SUBNET: &str = "10.88.0.0/16";

/// A network label naming the cluster CIDR a pod network belongs to (the node agent's):
/// its pods' traffic to that CIDR is neither masqueraded nor refused on the way in.
pub const CLUSTER_CIDR_LABEL: &str = "berth.cluster-cidr";

/// A network's record (`<root>/networks/<name>.json`), shaped for `network inspect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// Its name.
    #[serde(rename = "Name")]
    pub name: String,
    /// 64 hex digits.
    #[serde(rename = "Id")]
    pub id: String,
    /// RFC 3339.
    #[serde(rename = "Created")]
    pub created: String,
    /// Always `bridge`.
    #[serde(rename = "Driver")]
    pub driver: String,
    /// CIDR.
    #[serde(rename = "Subnet")]
    pub subnet: String,
    /// The bridge's address, the containers' gateway.
    #[serde(rename = "Gateway")]
    pub gateway: String,
    /// No route out (and no masquerading).
    #[serde(rename = "Internal")]
    pub internal: bool,
    /// User labels.
    #[serde(rename = "Labels")]
    pub labels: BTreeMap<String, String>,
    /// The bridge interface on the host.
    #[serde(rename = "Bridge")]
    pub bridge: String,
    /// The subnet was asked for without a gateway (`inspect` shows the IPAM configuration
    /// as it was asked for, as dockerd does).
    #[serde(rename = "SubnetOnly", default)]
    pub subnet_only: bool,
    /// `--ipv6`: an IPv6 subnet besides the IPv4 one (addresses on the bridge; no NAT, as
    /// Docker's bridge without ip6tables).
    #[serde(rename = "SubnetV6", default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<String>,
    /// The bridge's IPv6 address, the containers' IPv6 gateway.
    #[serde(rename = "GatewayV6", default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<String>,
    /// The IPv6 subnet was asked for without a gateway.
    #[serde(rename = "SubnetV6Only", default)]
    pub subnet6_only: bool,
}

/// Whether `name` may name a network: as dockerd, nearly anything — 1 to 255 characters,
/// no `/` (it would split the API's paths) and no control characters.
pub fn valid_network_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.contains('/')
        && !name.chars().any(char::is_control)
}

/// The name a network goes by on disk and to CNI, whose names are `[a-zA-Z0-9][a-zA-Z0-9_.-]*`:
/// the network's own when it is one of those, else `n-` and a digest of it.
pub fn file_name(name: &str) -> String {
    if crate::volumes::valid_name(name) {
        name.to_string()
    } else {
        use sha2::Digest;
        let d = format!("{:x}", sha2::Sha256::digest(name.as_bytes()));
        format!("n-{}", &d[..24])
    }
}

/// An IPv6 CIDR (`fd00:1::/64`; prefix length 48 to 120): the network address and length.
pub fn parse_cidr6(s: &str) -> Option<(std::net::Ipv6Addr, u8)> {
    let (a, l) = s.split_once('/')?;
    let addr: std::net::Ipv6Addr = a.parse().ok()?;
    let len: u8 = l.parse().ok().filter(|l| (48..=120).contains(l))?;
    let mask = u128::MAX << (128 - u32::from(len));
    Some((std::net::Ipv6Addr::from(u128::from(addr) & mask), len))
}

/// Whether two IPv6 CIDRs share an address.
fn overlaps6(a: &str, b: &str) -> bool {
    match (parse_cidr6(a), parse_cidr6(b)) {
        (Some((a, al)), Some((b, bl))) => {
            let len = u32::from(al.min(bl));
            let mask = u128::MAX << (128 - len);
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

impl Network {
    /// Docker's default network has no name resolution; user-defined ones do.
    pub fn is_default(&self) -> bool {
        self.name == DEFAULT_NETWORK
    }

    /// The CNI configuration list of this network, for a container that publishes ports or
    /// not. Masquerading and forwarding are the engine's, once per network (see
    /// `Networks::isolate`), not per container: the bridge plugin's per-container NAT chains
    /// and the firewall plugin cost iptables runs on every start and stop.
    pub fn conflist(&self, ipam_dir: &Path, ports: bool) -> Value {
        let mut ranges = vec![json!([{"subnet": self.subnet, "gateway": self.gateway}])];
        if let (Some(s6), Some(g6)) = (&self.subnet6, &self.gateway6) {
            ranges.push(json!([{"subnet": s6, "gateway": g6}]));
        }
        let mut ipam = json!({
            "type": "host-local",
            "ranges": ranges,
            "dataDir": ipam_dir,
        });
        if !self.internal {
            ipam["routes"] = if self.subnet6.is_some() {
                json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0"}])
            } else {
                json!([{"dst": "0.0.0.0/0"}])
            };
        }
        let mut list = json!({
            "cniVersion": cni::CNI_VERSION,
            "name": file_name(&self.name),
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": true,
                    "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": ipam,
                },
            ],
        });
        if ports {
            if let Some(p) = list["plugins"].as_array_mut() {
                p.push(json!({"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}));
            }
        }
        list
    }
}

/// Why a network operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// No such network.
    #[error("network {0} not found")]
    NotFound(String),
    /// The name is taken.
    #[error("network with name {0} already exists")]
    Exists(String),
    /// A bad option, named.
    #[error("{0}")]
    Invalid(String),
    /// Containers still use it.
    #[error("error while removing network: network {name} has active endpoints ({containers})")]
    InUse {
        /// The network.
        name: String,
        /// Its containers.
        containers: String,
    },
    /// The host said no.
    #[error("network {name}: {source}")]
    Io {
        /// The network.
        name: String,
        /// The error.
        source: io::Error,
    },
}

/// Parses `a.b.c.d/len` into (network address, prefix length).
pub fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (a, l) = s.split_once('/')?;
    let addr: Ipv4Addr = a.parse().ok()?;
    let len: u8 = l.parse().ok().filter(|l| *l <= 30)?;
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    Some((Ipv4Addr::from(u32::from(addr) & mask), len))
}

fn range(cidr: &str) -> Option<(u32, u32)> {
    let (a, len) = parse_cidr(cidr)?;
    let start = u32::from(a);
    let size = if len == 0 {
        u32::MAX
    } else {
        (1u32 << (32 - len)) - 1
    };
    Some((start, start.saturating_add(size)))
}

/// Whether two subnets overlap.
pub fn overlaps(a: &str, b: &str) -> bool {
    match (range(a), range(b)) {
        (Some((a0, a1)), Some((b0, b1))) => a0 <= b1 && b0 <= a1,
        _ => false,
    }
}

/// Whether `ip` is inside `cidr`.
pub fn contains(cidr: &str, ip: &str) -> bool {
    match (range(cidr), ip.parse::<Ipv4Addr>()) {
        (Some((a, b)), Ok(ip)) => (a..=b).contains(&u32::from(ip)),
        _ => false,
    }
}

/// The networks of one engine.
pub struct Networks {
    dir: PathBuf,
    /// host-local's leases.
    pub ipam_dir: PathBuf,
    /// The plugin runner.
    pub cni: cni::Cni,
    /// Work with the host: program its firewall (isolation rules) and keep clear of its
    /// routes when choosing subnets. Off for unit tests.
    firewall: bool,
    /// This engine's chains: isolation (mangle, two stages), masquerading (nat), forwarding
    /// (filter).
    chains: [String; 4],
    /// Serialises rebuilds of the chains.
    rebuilding: std::sync::Mutex<()>,
}

/// The default network's bridge and subnet (`berth daemon --bridge-name --bridge-subnet`).
#[derive(Debug, Clone)]
pub struct DefaultBridge {
    /// Interface name.
    pub name: String,
    /// CIDR.
    pub subnet: String,
}

impl Default for DefaultBridge {
    fn default() -> Self {
        DefaultBridge {
            name: DEFAULT_BRIDGE.into(),
            subnet: DEFAULT_SUBNET.into(),
        }
    }
}

/// The destinations of the host's IPv4 routes (other than the default route), as CIDRs.
pub fn host_routes() -> Vec<(String, String)> {
    fs::read_to_string("/proc/net/route")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let dest = u32::from_str_radix(f.get(1)?, 16).ok()?;
            let mask = u32::from_str_radix(f.get(7)?, 16).ok()?;
            if mask == 0 {
                return None;
            }
            // The file has them in the host's (little-endian) byte order.
            let dest = Ipv4Addr::from(u32::from_be(dest));
            let len = u32::from_be(mask).leading_ones();
            Some((f[0].to_string(), format!("{dest}/{len}")))
        })
        .collect()
}

fn run(cmd: &str, args: &[&str]) -> io::Result<std::process::Output> {
    Command::new(cmd).args(args).output()
}

impl Networks {
    /// Opens `<root>/networks`, creating the default network the first time.
    /// `ipam_dir` holds host-local's leases: it belongs with the namespaces (the exec root,
    /// cleared by a reboot), so that no lease outlives its namespace.
    pub fn open(
        root: &Path,
        ipam_dir: &Path,
        firewall: bool,
        default: &DefaultBridge,
    ) -> io::Result<Networks> {
        let dir = root.join("networks");
        let ipam_dir = ipam_dir.to_path_buf();
        fs::create_dir_all(&dir)?;
        fs::create_dir_all(&ipam_dir)?;
        // Each engine's isolation chains are its own (several daemons may share a host).
        let tag = fsutil::short_hash(&root.display().to_string());
        let n = Networks {
            dir,
            ipam_dir,
            cni: cni::Cni::default(),
            firewall,
            rebuilding: std::sync::Mutex::new(()),
            chains: [
                format!("BERTH-ISO1-{tag}"),
                format!("BERTH-ISO2-{tag}"),
                format!("BERTH-NAT-{tag}"),
                format!("BERTH-FWD-{tag}"),
            ],
        };
        if n.get(DEFAULT_NETWORK).is_err() {
            let (base, _) = parse_cidr(&default.subnet).ok_or_else(|| {
                io::Error::other(format!(
                    "invalid default bridge subnet {:?}",
                    default.subnet
                ))
            })?;
            let def = Network {
                name: DEFAULT_NETWORK.into(),
                id: fsutil::random_hex(32),
                created: timefmt::now(),
                driver: "bridge".into(),
                subnet: default.subnet.clone(),
                gateway: Ipv4Addr::from(u32::from(base) + 1).to_string(),
                subnet_only: false,
                subnet6: None,
                gateway6: None,
                subnet6_only: false,
                internal: false,
                labels: BTreeMap::new(),
                bridge: default.name.clone(),
            };
            n.save(&def)?;
        }
        Ok(n)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{}.json", file_name(name)))
    }

    fn save(&self, n: &Network) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(n).map_err(io::Error::other)?;
        fsutil::write_atomic(&self.path(&n.name), &json, 0o600)
    }

    /// Every network, the default first.
    pub fn list(&self) -> Vec<Network> {
        let mut v: Vec<Network> = fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| serde_json::from_slice(&fs::read(e.path()).ok()?).ok())
            .collect();
        v.sort_by(|a, b| (!a.is_default(), &a.name).cmp(&(!b.is_default(), &b.name)));
        v
    }

    /// A network by name, full ID or ID prefix.
    pub fn get(&self, name_or_id: &str) -> Result<Network, NetworkError> {
        if valid_network_name(name_or_id) {
            if let Ok(b) = fs::read(self.path(name_or_id)) {
                if let Ok(n) = serde_json::from_slice::<Network>(&b) {
                    if n.name == name_or_id {
                        return Ok(n);
                    }
                }
            }
        }
        let hits: Vec<Network> = self
            .list()
            .into_iter()
            .filter(|n| !name_or_id.is_empty() && n.id.starts_with(name_or_id))
            .collect();
        match hits.len() {
            1 => Ok(hits.into_iter().next().unwrap_or_else(|| unreachable!())),
            _ => Err(NetworkError::NotFound(name_or_id.into())),
        }
    }

    /// `network create`: a bridge network with `subnet` (or the next free 10.89.N.0/24).
    pub fn create(
        &self,
        name: &str,
        subnet: Option<&str>,
        gateway: Option<&str>,
        internal: bool,
        labels: BTreeMap<String, String>,
    ) -> Result<Network, NetworkError> {
        self.create_dual(name, subnet, gateway, None, internal, labels)
    }

    /// [`Networks::create`], with an IPv6 subnet (and gateway) too when `v6` is given.
    pub fn create_dual(
        &self,
        name: &str,
        subnet: Option<&str>,
        gateway: Option<&str>,
        v6: Option<(&str, Option<&str>)>,
        internal: bool,
        labels: BTreeMap<String, String>,
    ) -> Result<Network, NetworkError> {
        if !valid_network_name(name) || name == "host" || name == "none" {
            return Err(NetworkError::Invalid(format!(
                "invalid network name {name:?}: a name is 1 to 255 characters, without '/' or control characters (and not host or none)"
            )));
        }
        if self.path(name).exists() {
            return Err(NetworkError::Exists(name.into()));
        }
        let existing = self.list();
        let (subnet_given, gateway_given) = (subnet.is_some(), gateway);
        let subnet = match subnet {
            Some(s) => {
                let (addr, len) = parse_cidr(s).ok_or_else(|| {
                    NetworkError::Invalid(format!("invalid subnet {s:?}: expected an IPv4 CIDR like 10.90.0.0/24, at most /30"))
                })?;
                let s = format!("{addr}/{len}");
                if let Some(o) = existing.iter().find(|n| overlaps(&n.subnet, &s)) {
                    return Err(NetworkError::Invalid(format!(
                        "invalid pool request: Pool overlaps with other one on this address space: {s} overlaps with network {} ({})",
                        o.name, o.subnet
                    )));
                }
                s
            }
            None => (0..=255)
                .map(|n| format!("10.89.{n}.0/24"))
                .find(|s| {
                    let ours = existing.iter().any(|n| overlaps(&n.subnet, s));
                    let hosts = self.firewall && host_routes().iter().any(|(_, r)| overlaps(r, s));
                    !ours && !hosts
                })
                .ok_or_else(|| {
                    NetworkError::Invalid("no free subnet left in 10.89.0.0/16".into())
                })?,
        };
        let (base, _) = parse_cidr(&subnet).unwrap_or((Ipv4Addr::UNSPECIFIED, 0));
        let gateway = match gateway {
            Some(g) => {
                if !contains(&subnet, g) {
                    return Err(NetworkError::Invalid(format!(
                        "invalid gateway {g:?}: not in subnet {subnet}"
                    )));
                }
                g.to_string()
            }
            None => Ipv4Addr::from(u32::from(base) + 1).to_string(),
        };
        let (subnet6, gateway6) = match v6 {
            None => (None, None),
            Some((s6, g6)) => {
                let (base6, len6) = parse_cidr6(s6).ok_or_else(|| {
                    NetworkError::Invalid(format!(
                        "invalid IPv6 subnet {s6:?}: expected a CIDR like fd00:1::/64 (prefix 48 to 120)"
                    ))
                })?;
                let s6 = format!("{base6}/{len6}");
                if let Some(o) = existing
                    .iter()
                    .find(|n| n.subnet6.as_deref().is_some_and(|x| overlaps6(x, &s6)))
                {
                    return Err(NetworkError::Invalid(format!(
                        "invalid pool request: Pool overlaps with other one on this address space: {s6} overlaps with network {}",
                        o.name
                    )));
                }
                let g6 = match g6 {
                    Some(g) => {
                        let ip: std::net::Ipv6Addr = g.parse().map_err(|_| {
                            NetworkError::Invalid(format!("invalid IPv6 gateway {g:?}"))
                        })?;
                        let mask = u128::MAX << (128 - u32::from(len6));
                        if u128::from(ip) & mask != u128::from(base6) {
                            return Err(NetworkError::Invalid(format!(
                                "invalid IPv6 gateway {g:?}: not in subnet {s6}"
                            )));
                        }
                        ip.to_string()
                    }
                    None => std::net::Ipv6Addr::from(u128::from(base6) + 1).to_string(),
                };
                (Some(s6), Some(g6))
            }
        };
        let id = fsutil::random_hex(32);
        let subnet_only = subnet_given && gateway_given.is_none();
        let n = Network {
            subnet_only,
            subnet6_only: matches!(v6, Some((_, None))),
            subnet6,
            gateway6,
            name: name.into(),
            bridge: format!("br-{}", &id[..12]),
            id,
            created: timefmt::now(),
            driver: "bridge".into(),
            subnet,
            gateway,
            internal,
            labels,
        };
        self.save(&n).map_err(|source| NetworkError::Io {
            name: name.into(),
            source,
        })?;
        self.isolate();
        Ok(n)
    }

    /// `network rm` (the engine checks for endpoints first): the record, the bridge, its
    /// leases and its isolation rules.
    pub fn remove(&self, n: &Network) -> Result<(), NetworkError> {
        if n.is_default() {
            return Err(NetworkError::Invalid(format!(
                "{} is a pre-defined network and cannot be removed",
                n.name
            )));
        }
        fs::remove_file(self.path(&n.name)).map_err(|source| NetworkError::Io {
            name: n.name.clone(),
            source,
        })?;
        let _ = run("ip", &["link", "delete", &n.bridge, "type", "bridge"]);
        let _ = fs::remove_dir_all(self.ipam_dir.join(file_name(&n.name)));
        self.isolate();
        Ok(())
    }

    /// Docker's isolation between bridge networks, in two iptables chains: traffic from one
    /// berth bridge to another is dropped (stage 1 picks what leaves a bridge for another
    /// interface, stage 2 drops it if that interface is a berth bridge); an internal network's
    /// bridge talks to nothing but itself. The chains hang off the mangle table's FORWARD,
    /// which the kernel runs before the filter table, where the CNI firewall plugin accepts
    /// its containers' traffic. Rebuilt whole from the records (idempotent).
    pub fn isolate(&self) {
        if !self.firewall {
            return;
        }
        // One rebuild at a time; each table's chains are replaced in one transaction
        // (iptables-restore --noflush: a declared chain is emptied and refilled atomically,
        // the rest of the table is left alone), so isolation never has a gap.
        let _one = self.rebuilding.lock().unwrap_or_else(|p| p.into_inner());
        let nets = self.list();
        for (table, rules) in self.ruleset(&nets) {
            restore("iptables-restore", table, &rules);
        }
        // IPv6: the same isolation between the bridges (IPv6 networks have no NAT, as Docker's
        // without ip6tables, but a host that forwards IPv6 must not route one network's
        // traffic into another's).
        let v6 = restore("ip6tables-restore", "mangle", &self.ruleset6(&nets));
        // The jumps into the chains, once, first in their hooks.
        let v4_hooks = [
            ("iptables", "mangle", "FORWARD", &self.chains[0]),
            ("iptables", "nat", "POSTROUTING", &self.chains[2]),
            ("iptables", "filter", "FORWARD", &self.chains[3]),
        ];
        let v6_hook = v6.then_some(("ip6tables", "mangle", "FORWARD", &self.chains[0]));
        for (cmd, table, hook, chain) in v4_hooks.into_iter().chain(v6_hook) {
            let present = run(cmd, &["-w", "5", "-t", table, "-C", hook, "-j", chain])
                .map(|o| o.status.success())
                .unwrap_or(false);
            if !present {
                let _ = run(cmd, &["-w", "5", "-t", table, "-I", hook, "1", "-j", chain]);
            }
        }
    }

    /// The engine's chains for `nets`, per table, in iptables-restore's format:
    /// - mangle: Docker's two-stage isolation (traffic leaving one berth bridge for another
    ///   is dropped; an internal network's bridge talks only to itself);
    /// - nat: masquerading out of each non-internal network;
    /// - filter: forwarding out of a bridge accepted, into it only replies and published
    ///   (DNAT) ports (hosts with a DROP policy, as Docker leaves them).
    pub fn ruleset(&self, nets: &[Network]) -> Vec<(&'static str, String)> {
        let [c1, c2, nat, fwd] = [
            &self.chains[0],
            &self.chains[1],
            &self.chains[2],
            &self.chains[3],
        ];
        let mut mangle = format!("*mangle\n:{c1} - [0:0]\n:{c2} - [0:0]\n");
        let mut natr = format!("*nat\n:{nat} - [0:0]\n");
        let mut filter = format!("*filter\n:{fwd} - [0:0]\n");
        for n in nets {
            let b = &n.bridge;
            if n.internal {
                mangle.push_str(&format!("-A {c1} -i {b} ! -o {b} -j DROP\n"));
                mangle.push_str(&format!("-A {c1} ! -i {b} -o {b} -j DROP\n"));
            } else {
                // A pod network: traffic between the cluster's pods keeps its addresses.
                if let Some(cluster) = n.labels.get(CLUSTER_CIDR_LABEL) {
                    natr.push_str(&format!(
                        "-A {nat} -s {} -d {cluster} -j RETURN\n",
                        n.subnet
                    ));
                }
                natr.push_str(&format!(
                    "-A {nat} -s {} ! -o {b} -j MASQUERADE\n",
                    n.subnet
                ));
            }
            if let Some(cluster) = n.labels.get(CLUSTER_CIDR_LABEL) {
                // Other nodes' pods reach this node's pods (routed, not NATed).
                filter.push_str(&format!("-A {fwd} -s {cluster} -o {b} -j ACCEPT\n"));
            }
            mangle.push_str(&format!("-A {c1} -i {b} ! -o {b} -j {c2}\n"));
            mangle.push_str(&format!("-A {c2} -o {b} -j DROP\n"));
            filter.push_str(&format!("-A {fwd} -i {b} -j ACCEPT\n"));
            filter.push_str(&format!(
                "-A {fwd} -o {b} -m conntrack --ctstate RELATED,ESTABLISHED,DNAT -j ACCEPT\n"
            ));
        }
        mangle.push_str(&format!("-A {c1} -j RETURN\n-A {c2} -j RETURN\nCOMMIT\n"));
        natr.push_str("COMMIT\n");
        filter.push_str("COMMIT\n");
        vec![("mangle", mangle), ("nat", natr), ("filter", filter)]
    }

    /// The IPv6 isolation (ip6tables' mangle table): as the IPv4 mangle chains.
    pub fn ruleset6(&self, nets: &[Network]) -> String {
        let [c1, c2] = [&self.chains[0], &self.chains[1]];
        let mut mangle = format!("*mangle\n:{c1} - [0:0]\n:{c2} - [0:0]\n");
        for n in nets {
            let b = &n.bridge;
            if n.internal {
                mangle.push_str(&format!("-A {c1} -i {b} ! -o {b} -j DROP\n"));
                mangle.push_str(&format!("-A {c1} ! -i {b} -o {b} -j DROP\n"));
            }
            mangle.push_str(&format!("-A {c1} -i {b} ! -o {b} -j {c2}\n"));
            mangle.push_str(&format!("-A {c2} -o {b} -j DROP\n"));
        }
        mangle.push_str(&format!("-A {c1} -j RETURN\n-A {c2} -j RETURN\nCOMMIT\n"));
        mangle
    }

    /// Undoes what this engine set up on the host: its four chains and their jumps, and the
    /// bridges of its networks (for tests, benchmarks and uninstalling; a running engine
    /// keeps them, as dockerd keeps docker0).
    pub fn remove_host_setup(&self) {
        let hooks = [
            ("mangle", "FORWARD", &self.chains[0]),
            ("mangle", "FORWARD", &self.chains[1]),
            ("nat", "POSTROUTING", &self.chains[2]),
            ("filter", "FORWARD", &self.chains[3]),
        ];
        for (table, hook, chain) in hooks {
            let _ = run(
                "iptables",
                &["-w", "5", "-t", table, "-D", hook, "-j", chain],
            );
            let _ = run("iptables", &["-w", "5", "-t", table, "-F", chain]);
        }
        for (table, _, chain) in hooks {
            let _ = run("iptables", &["-w", "5", "-t", table, "-X", chain]);
        }
        let _ = run(
            "ip6tables",
            &[
                "-w",
                "5",
                "-t",
                "mangle",
                "-D",
                "FORWARD",
                "-j",
                &self.chains[0],
            ],
        );
        for chain in &self.chains[..2] {
            let _ = run("ip6tables", &["-w", "5", "-t", "mangle", "-F", chain]);
        }
        for chain in &self.chains[..2] {
            let _ = run("ip6tables", &["-w", "5", "-t", "mangle", "-X", chain]);
        }
        for n in self.list() {
            let _ = run("ip", &["link", "delete", &n.bridge, "type", "bridge"]);
        }
    }

    /// The CNI list of a network.
    pub fn conflist(&self, n: &Network, ports: bool) -> Result<cni::ConfList, cni::CniError> {
        cni::ConfList::parse(&n.conflist(&self.ipam_dir, ports))
    }
}

/// Feeds `rules` to `cmd` (iptables-restore or ip6tables-restore) with `--noflush`: a
/// declared chain is emptied and refilled in one transaction, the rest of `table` left alone.
/// Says why in the daemon's log when it fails.
fn restore(cmd: &str, table: &str, rules: &str) -> bool {
    let applied = Command::new(cmd)
        .args(["-w", "5", "--noflush"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            if let Some(mut i) = c.stdin.take() {
                i.write_all(rules.as_bytes())?;
            }
            c.wait_with_output()
        });
    match applied {
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            eprintln!(
                "berth daemon: {cmd} ({table}): {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            false
        }
        Err(e) => {
            eprintln!("berth daemon: {cmd} ({table}): {e}");
            false
        }
    }
}

/// What the host needs for bridge networks: IPv4 forwarding, and bridged traffic through
/// iptables when the br_netfilter module is there. Returns (forwarding, bridge-nf) for `info`.
pub fn prepare_host() -> (bool, bool) {
    let _ = fs::write("/proc/sys/net/ipv4/ip_forward", "1");
    let forwarding =
        fs::read_to_string("/proc/sys/net/ipv4/ip_forward").is_ok_and(|v| v.trim() == "1");
    let nf = Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables");
    if nf.exists() {
        let _ = fs::write(nf, "1");
    }
    let bridge_nf = fs::read_to_string(nf).is_ok_and(|v| v.trim() == "1");
    (forwarding, bridge_nf)
}

/// A published port: `-p [ip:]hostPort:containerPort[/proto]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    /// Host port (0: pick a free one).
    #[serde(rename = "hostPort")]
    pub host_port: u16,
    /// Container port.
    #[serde(rename = "containerPort")]
    pub container_port: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// Host address ("" = all; left out of the plugin's configuration then).
    #[serde(rename = "hostIP", default, skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
}

/// Parses `-p`: `[ip:][hostPort[-end]:]containerPort[-end][/tcp|udp]`; ranges expand.
pub fn parse_publish(s: &str) -> Result<Vec<PortMapping>, String> {
    let bad =
        || format!("invalid publish spec {s:?}: expected [ip:][hostPort:]containerPort[/tcp|udp]");
    let (spec, proto) = match s.rsplit_once('/') {
        Some((a, p)) => (a, p.to_ascii_lowercase()),
        None => (s, "tcp".to_string()),
    };
    if proto != "tcp" && proto != "udp" {
        return Err(format!(
            "invalid publish spec {s:?}: unknown protocol {proto:?}"
        ));
    }
    let parts: Vec<&str> = spec.rsplitn(3, ':').collect();
    let (ip, host, ctr) = match parts.as_slice() {
        [c] => ("", "", *c),
        [c, h] => ("", *h, *c),
        [c, h, ip] => (*ip, *h, *c),
        _ => return Err(bad()),
    };
    let ip = ip.trim_start_matches('[').trim_end_matches(']');
    if !ip.is_empty() && ip.parse::<std::net::IpAddr>().is_err() {
        return Err(format!(
            "invalid publish spec {s:?}: invalid IP address {ip:?}"
        ));
    }
    let ports = |p: &str| -> Result<(u16, u16), String> {
        let (a, b) = p.split_once('-').unwrap_or((p, p));
        let a: u16 = a.parse().map_err(|_| bad())?;
        let b: u16 = b.parse().map_err(|_| bad())?;
        if a == 0 || b < a {
            return Err(bad());
        }
        Ok((a, b))
    };
    let (c0, c1) = ports(ctr)?;
    let host_range = if host.is_empty() {
        None
    } else {
        Some(ports(host)?)
    };
    if let Some((h0, h1)) = host_range {
        if h1 - h0 != c1 - c0 {
            return Err(format!(
                "invalid publish spec {s:?}: host and container port ranges differ in size"
            ));
        }
    }
    Ok((c0..=c1)
        .enumerate()
        .map(|(i, c)| PortMapping {
            host_port: match host_range {
                None => 0,
                Some((h0, _)) => h0 + i as u16,
            },
            container_port: c,
            protocol: proto.clone(),
            host_ip: ip.to_string(),
        })
        .collect())
}

/// Checks a host port is free (and, for 0, picks one), by binding it as a listener would.
pub fn claim_port(m: &mut PortMapping) -> Result<(), String> {
    let ip: std::net::IpAddr = if m.host_ip.is_empty() {
        std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        m.host_ip
            .parse()
            .map_err(|_| format!("invalid host IP {:?}", m.host_ip))?
    };
    let addr = std::net::SocketAddr::new(ip, m.host_port);
    let port = if m.protocol == "udp" {
        std::net::UdpSocket::bind(addr).and_then(|s| s.local_addr())
    } else {
        std::net::TcpListener::bind(addr).and_then(|s| s.local_addr())
    }
    .map_err(|e| {
        format!(
            "Bind for {}:{} failed: port is already allocated ({e})",
            if m.host_ip.is_empty() {
                "0.0.0.0"
            } else {
                &m.host_ip
            },
            m.host_port
        )
    })?
    .port();
    m.host_port = port;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        assert_eq!(
            parse_cidr("10.88.3.7/16"),
            Some((Ipv4Addr::new(10, 88, 0, 0), 16))
        );
        assert_eq!(parse_cidr("10.88.0.0/31"), None);
        assert_eq!(parse_cidr("10.88.0.0"), None);
        assert!(overlaps("10.88.0.0/16", "10.88.5.0/24"));
        assert!(!overlaps("10.88.0.0/16", "10.89.0.0/24"));
        assert!(contains("10.89.1.0/24", "10.89.1.200"));
        assert!(!contains("10.89.1.0/24", "10.89.2.1"));
    }

    #[test]
    fn publish_specs() {
        let p = |s: &str| parse_publish(s).unwrap();
        assert_eq!(
            p("8080:80")[0],
            PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: "tcp".into(),
                host_ip: String::new()
            }
        );
        assert_eq!(p("127.0.0.1:8080:80/udp")[0].host_ip, "127.0.0.1");
        assert_eq!(p("127.0.0.1:8080:80/udp")[0].protocol, "udp");
        assert_eq!(p("80")[0].host_port, 0);
        assert_eq!(p("127.0.0.1::80")[0].host_port, 0);
        let r = p("9000-9002:8000-8002");
        assert_eq!(r.len(), 3);
        assert_eq!((r[2].host_port, r[2].container_port), (9002, 8002));
        for bad in [
            "",
            "x:80",
            "80/sctp",
            "9000-9001:80-82",
            "0",
            "1.2.3:80:80",
            "70000",
        ] {
            assert!(parse_publish(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn networks_allocate_subnets_refuse_overlaps_and_make_conflists() {
        let root = tempfile::tempdir().unwrap();
        let nets = Networks::open(
            root.path(),
            &root.path().join("ipam"),
            false,
            &DefaultBridge::default(),
        )
        .unwrap();
        assert_eq!(nets.list()[0].bridge, DEFAULT_BRIDGE);
        // Isolation rules need iptables; these checks are about the records.
        let a = nets
            .create("front", None, None, false, BTreeMap::new())
            .unwrap();
        assert_eq!(
            (a.subnet.as_str(), a.gateway.as_str()),
            ("10.89.0.0/24", "10.89.0.1")
        );
        let b = nets
            .create(
                "back",
                Some("10.90.0.0/24"),
                Some("10.90.0.254"),
                true,
                BTreeMap::new(),
            )
            .unwrap();
        assert_eq!(b.gateway, "10.90.0.254");
        assert!(matches!(
            nets.create("front", None, None, false, BTreeMap::new()),
            Err(NetworkError::Exists(_))
        ));
        let e = nets
            .create("clash", Some("10.88.1.0/24"), None, false, BTreeMap::new())
            .unwrap_err();
        assert!(
            e.to_string().contains("overlaps with network bridge"),
            "{e}"
        );
        assert!(nets
            .create(
                "g",
                Some("10.91.0.0/24"),
                Some("10.92.0.1"),
                false,
                BTreeMap::new()
            )
            .is_err());
        assert!(nets
            .create("host", None, None, false, BTreeMap::new())
            .is_err());
        let c = nets.conflist(&b, false).unwrap();
        assert_eq!(c.plugins[0]["type"], "bridge");
        assert_eq!(c.plugins.len(), 1);
        assert_eq!(
            nets.conflist(&b, true).unwrap().plugins[1]["type"],
            "portmap"
        );
        assert!(
            c.plugins[0]["ipam"].get("routes").is_none(),
            "internal: no default route"
        );
        assert_eq!(nets.get(&a.id[..8]).unwrap().name, "front");
        // The firewall rules, as iptables-restore takes them.
        let rules = nets.ruleset(&nets.list());
        let mangle = &rules[0].1;
        assert!(mangle.starts_with("*mangle\n:BERTH-ISO1-") && mangle.ends_with("COMMIT\n"));
        assert!(
            mangle.contains(&format!("-i {0} ! -o {0} -j DROP", b.bridge)),
            "internal: {mangle}"
        );
        assert!(mangle.contains(&format!("-A {} -o {} -j DROP", nets.chains[1], a.bridge)));
        assert!(rules[1]
            .1
            .contains(&format!("-s {} ! -o {} -j MASQUERADE", a.subnet, a.bridge)));
        assert!(
            !rules[1].1.contains(&b.subnet),
            "no masquerading out of an internal network"
        );
        assert!(rules[2]
            .1
            .contains("--ctstate RELATED,ESTABLISHED,DNAT -j ACCEPT"));
        assert!(nets.remove(&nets.get("bridge").unwrap()).is_err());
        nets.remove(&a).unwrap();
        assert!(matches!(nets.get("front"), Err(NetworkError::NotFound(_))));
    }

    mod props {
        use proptest::prelude::*;

        use super::super::*;

        proptest! {
            /// `[ip:][hostPort[-end]:]containerPort[-end][/proto]` expands to one mapping per
            /// port, pairwise, and mismatched ranges are refused.
            #[test]
            fn publish_ranges_expand_pairwise(
                ip in prop::option::of(prop_oneof![
                    Just("127.0.0.1".to_string()),
                    Just("[::1]".to_string()),
                    "10\\.[0-9]{1,3}\\.0\\.1",
                ]),
                host in prop::option::of(1u16..60000),
                ctr in 1u16..60000,
                len in 0u16..64,
                skew in 0u16..3,
                proto in prop::option::of(prop::sample::select(vec!["tcp", "udp", "TCP"])),
            ) {
                let range = |a: u16, n: u16| if n == 0 { a.to_string() } else { format!("{a}-{}", a + n) };
                let mut s = range(ctr, len);
                if let Some(h) = host {
                    s = format!("{}:{s}", range(h, len + skew));
                } else if ip.is_some() {
                    s = format!(":{s}");
                }
                if let Some(ip) = &ip {
                    s = format!("{ip}:{s}");
                }
                if let Some(p) = proto {
                    s = format!("{s}/{p}");
                }
                let ip_ok = ip.as_deref().is_none_or(|i| i.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok());
                match parse_publish(&s) {
                    Ok(m) => {
                        prop_assert!(ip_ok && (host.is_none() || skew == 0), "{} accepted", s);
                        prop_assert_eq!(m.len(), usize::from(len) + 1, "{}", s);
                        for (i, pm) in m.iter().enumerate() {
                            let i = i as u16;
                            prop_assert_eq!(pm.container_port, ctr + i);
                            prop_assert_eq!(pm.host_port, host.map_or(0, |h| h + i));
                            prop_assert_eq!(pm.protocol.as_str(), proto.map_or("tcp", |p| if p == "TCP" { "tcp" } else { p }));
                            prop_assert_eq!(pm.host_ip.as_str(), ip.as_deref().unwrap_or("").trim_matches(['[', ']']));
                        }
                    }
                    Err(e) => {
                        prop_assert!(!ip_ok || (host.is_some() && skew != 0), "{} refused: {}", s, e);
                        prop_assert!(e.contains(&format!("{s:?}")), "{}", e);
                    }
                }
            }

            #[test]
            fn any_publish_text_is_parsed_or_refused_without_panic(s in "\\PC{0,40}") {
                if let Ok(m) = parse_publish(&s) {
                    prop_assert!(!m.is_empty());
                    prop_assert!(m.iter().all(|p| p.container_port > 0));
                }
            }
        }
    }
}
