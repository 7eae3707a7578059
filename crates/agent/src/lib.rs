//! berth's node agent (`berth agent`, and the agent `berth server` runs for its own node):
//! the kubelet's job on berth's engine, driven in-process. It joins the cluster with the
//! token (`join`), registers its Node and renews its Lease (`node`), runs the pods bound
//! to it — one worker per pod UID, each seeing only the latest desired state (`pods`,
//! `podspec`, `volumes`, `probes`) — and serves the kubelet's API for logs and exec
//! (`kubelet`, `ws`), runs static pods from manifests (`static_pods`), and routes to the other nodes' pod CIDRs (`routes`). The engine it embeds also serves berth's and Docker's API on the
//! node's engine socket.

pub mod clusterdns;
pub mod join;
pub mod kubelet;
pub mod lb;
pub mod node;
pub mod podcgroup;
pub mod pods;
pub mod podspec;
pub mod portforward;
pub mod probes;
pub mod proxy;
pub mod registry;
pub mod routes;
pub mod spdy;
pub mod static_pods;
pub mod stats;
pub mod volumes;
pub mod ws;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

/// The runtime version the Node reports (`containerRuntimeVersion`, container IDs).
pub const RUNTIME: &str = "berth";

/// What `berth agent` is told.
/// The cluster's pod addresses (each node's pod CIDR is a block of it).
pub const CLUSTER_CIDR: &str = "10.42.0.0/16";

#[derive(Debug, Clone)]
pub struct Config {
    /// `https://HOST:PORT` of the API server.
    pub server: String,
    /// The join token.
    pub token: String,
    pub node_name: String,
    pub node_ip: Option<IpAddr>,
    /// Node state: credentials, the engine's root (`engine/`), pods' volumes.
    pub data_dir: PathBuf,
    /// The engine's runtime state (monitors, the runtime's state).
    pub exec_root: PathBuf,
    /// The engine's API socket.
    pub engine_socket: PathBuf,
    /// The cgroup every pod's goes under.
    pub cgroup_root: String,
    pub labels: Vec<(String, String)>,
    /// `key[=value]:Effect`.
    pub taints: Vec<String>,
    pub kubelet_port: u16,
    /// How long the Node's Lease lasts; it is renewed every quarter of it.
    pub lease_duration: Duration,
    /// CPU (millicores) and memory (bytes) kept for the system, off allocatable.
    pub reserved_cpu_milli: u64,
    pub reserved_memory: u64,
    /// The maximum number of pods.
    pub max_pods: u32,
    /// The default bridge of the embedded engine (`berth daemon`'s `--bridge-*`).
    pub default_bridge: engine::network::DefaultBridge,
    pub registries: engine::distribution::RegistryOptions,
    /// This is the server's own node (labelled as a control-plane node).
    pub control_plane: bool,
    /// The resolvers for names outside the cluster, and `dnsPolicy: Default`'s file.
    pub resolv_conf: PathBuf,
    /// `cluster.local`.
    pub cluster_domain: String,
    /// How pod traffic crosses nodes.
    pub network_backend: routes::Backend,
    /// How often the node's, pods' and containers' resource usage is sampled.
    pub housekeeping_interval: Duration,
}

/// The source address the kernel would use to reach `server`: the node's address when
/// none is given. (A UDP connect sends nothing.)
pub fn address_towards(server: &str) -> Result<IpAddr> {
    let (host, port) = join::host_port(server)?;
    let target = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
        .with_context(|| format!("resolving {host}"))?
        .next()
        .with_context(|| format!("{host} has no address"))?;
    let any: IpAddr = if target.is_ipv4() {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    };
    let s = std::net::UdpSocket::bind((any, 0))?;
    s.connect(target)?;
    Ok(s.local_addr()?.ip())
}

/// Joins, opens the engine (already opened by the caller, who serves its socket), and runs
/// until the process ends.
pub async fn run(cfg: Config, engine: Arc<engine::Engine>) -> Result<()> {
    let token = join::Token::parse(&cfg.token)?;
    let node_ip = match cfg.node_ip {
        Some(ip) => ip,
        None => address_towards(&cfg.server)?,
    };
    let addresses = vec![node_ip.to_string(), cfg.node_name.clone()];
    let creds = join::join(
        &cfg.server,
        &token,
        &cfg.node_name,
        &addresses,
        &cfg.data_dir.join("tls"),
    )
    .await?;
    let kubeconfig = join::kubeconfig(&cfg.server, &creds);
    std::fs::write(cfg.data_dir.join("kubelet.kubeconfig"), &kubeconfig)?;
    // The client reaches the servers through the node's load balancer, which fails over
    // between every server the cluster lists.
    let servers = lb::Servers::new(&lb::authority(&cfg.server));
    let lb_url = format!("https://{}", lb::start(servers.clone()).await?);
    let kc = kube::config::Kubeconfig::from_yaml(&join::kubeconfig(&lb_url, &creds))?;
    let kconf =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?;
    // The certificates are renewed in place before they expire.
    let live = join::Live::new(&creds)?;
    let client = live.client(kconf, &creds.ca)?;
    tokio::spawn(lb::follow(client.clone(), servers));
    tokio::spawn(registry::follow(client.clone(), cfg.data_dir.clone()));
    tokio::spawn(join::keep_renewed(
        lb_url.clone(),
        cfg.server.clone(),
        creds.clone(),
        cfg.node_name.clone(),
        addresses.clone(),
        cfg.data_dir.join("tls"),
        live.clone(),
    ));

    let node = Arc::new(node::NodeAgent::new(
        cfg.clone(),
        node_ip,
        client.clone(),
        engine.clone(),
    ));
    let pod_cidr = node.register().await?;
    let catalog: proxy::Shared = Default::default();
    let pods = pods::Manager::new(
        cfg.clone(),
        node_ip,
        client.clone(),
        engine.clone(),
        &pod_cidr,
        catalog.clone(),
    )?;
    let kubelet_tls = kubelet::tls_config(&creds, &live)?;
    let listener = tokio::net::TcpListener::bind((node_ip, cfg.kubelet_port))
        .await
        .with_context(|| format!("binding the kubelet API on {node_ip}:{}", cfg.kubelet_port))?;
    stats::Sampler::start(&pods);
    tokio::spawn(kubelet::serve(listener, kubelet_tls, pods.clone()));
    tokio::spawn(node.clone().heartbeat());
    // The backend's device, and what the other nodes need to know of it.
    let mac = match cfg.network_backend {
        routes::Backend::Vxlan => {
            let (ip, cidr) = (node_ip.to_string(), pod_cidr.clone());
            Some(
                tokio::task::spawn_blocking(move || routes::setup_vxlan(&ip, &cidr))
                    .await?
                    .map_err(|e| anyhow::anyhow!("the VXLAN device: {e}"))?,
            )
        }
        routes::Backend::HostGw => {
            tokio::task::spawn_blocking(routes::remove_vxlan).await?;
            None
        }
    };
    kube::Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
        .patch(
            &cfg.node_name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({"metadata": {"annotations": {
                routes::BACKEND: cfg.network_backend.name(),
                routes::VTEP_MAC: mac,
            }}})),
        )
        .await
        .context("publishing the node's network backend")?;
    // Raised when this node's Node is deleted: it has left the cluster.
    let (left_tx, left_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(routes::run(
        client.clone(),
        cfg.node_name.clone(),
        cfg.network_backend,
        left_tx,
    ));
    proxy::check_nft()?;
    // Cluster DNS on the pod network's gateway.
    match engine
        .networks
        .get(pods::POD_NETWORK)
        .ok()
        .and_then(|n| n.gateway.parse::<std::net::Ipv4Addr>().ok())
    {
        Some(gw) => {
            let resolv = std::fs::read_to_string(&cfg.resolv_conf).unwrap_or_default();
            let zone = Arc::new(clusterdns::Zone {
                domain: cfg.cluster_domain.clone(),
                catalog: catalog.clone(),
                upstream: clusterdns::resolvers(
                    &resolv,
                    podspec::CLUSTER_DNS
                        .parse()
                        .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
                ),
            });
            let addr = std::net::SocketAddr::from((gw, 53));
            tokio::spawn(async move {
                if let Err(e) = clusterdns::serve(addr, zone).await {
                    eprintln!("berth agent: cluster DNS on {addr}: {e:#}");
                }
            });
        }
        None => eprintln!("berth agent: the pod network has no gateway: no cluster DNS"),
    }
    tokio::spawn(proxy::run(
        client.clone(),
        cfg.node_name.clone(),
        CLUSTER_CIDR.to_string(),
        catalog.clone(),
        left_rx,
    ));
    tokio::spawn(static_pods::run(
        client.clone(),
        cfg.node_name.clone(),
        cfg.data_dir.join("manifests"),
    ));
    eprintln!(
        "berth agent: node {} ({node_ip}, pod CIDR {pod_cidr}) joined {}",
        cfg.node_name, cfg.server
    );
    pods.run().await
}
