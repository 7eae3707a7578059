//! `berth agent`: a node of the cluster (the kubelet's job on the embedded engine, whose
//! API it serves on the node's engine socket), and the flags `berth server` shares for the
//! agent of its own node.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// The node's flags, shared by `berth agent` and `berth server`.
#[derive(clap::Args, Debug, Clone)]
pub struct NodeArgs {
    /// The node's name (default: the host name).
    #[arg(long)]
    node_name: Option<String>,
    /// The node's address (default: the address the server is reached from).
    #[arg(long)]
    node_ip: Option<IpAddr>,
    /// A label on the Node (`key=value`); repeatable.
    #[arg(long = "node-label")]
    node_label: Vec<String>,
    /// A taint on the Node (`key[=value]:Effect`); repeatable.
    #[arg(long = "node-taint")]
    node_taint: Vec<String>,
    /// The engine's API socket on this node (berth's and Docker's API).
    #[arg(long, default_value = "/run/berth/berth.sock")]
    engine_socket: PathBuf,
    /// The engine's runtime state (monitors, the runtime's state).
    #[arg(long, default_value = "/run/berth")]
    exec_root: PathBuf,
    /// The cgroup pods' cgroups go under.
    #[arg(long, default_value = "/berth")]
    cgroup_root: String,
    /// The kubelet API's port.
    #[arg(long, default_value_t = 10250)]
    kubelet_port: u16,
    /// How long the node's Lease lasts (renewed every quarter of it). Kubernetes' kubelet
    /// uses 40 s; berth's default lets the control plane see a dead node within seconds.
    #[arg(long, default_value = "8s", value_parser = parse_duration)]
    node_lease_duration: Duration,
    /// What the system keeps off allocatable: `cpu=100m,memory=256Mi`.
    #[arg(long, default_value = "")]
    system_reserved: String,
    /// The most pods the node runs.
    #[arg(long, default_value_t = 110)]
    max_pods: u32,
    /// The engine's default bridge (for `docker run` on the node).
    #[arg(long = "bridge-name", default_value = engine::network::DEFAULT_BRIDGE)]
    bridge_name: String,
    #[arg(long = "bridge-subnet", default_value = engine::network::DEFAULT_SUBNET)]
    bridge_subnet: String,
    /// The resolv.conf whose nameservers take the names cluster DNS does not answer, and
    /// that pods with `dnsPolicy: Default` get (the kubelet's `--resolv-conf`).
    #[arg(long, default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
    /// How pod traffic crosses nodes (k3s's `--flannel-backend`): `host-gw` (routes via
    /// each node's address; nodes share an L2 segment) or `vxlan` (encapsulated in UDP
    /// 8472; for nodes that share none). Every node of a cluster uses the same.
    #[arg(long, default_value = "host-gw")]
    network_backend: agent::routes::Backend,
    /// The cluster's DNS domain (the kubelet's `--cluster-domain`).
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// How often the node's, pods' and containers' CPU and memory are sampled (the
    /// kubelet's `--housekeeping-interval`; its default is 10 s).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    housekeeping_interval: Duration,
    /// A registry (host[:port]) pods may pull from over plain http; repeatable.
    #[arg(long = "insecure-registry")]
    pub insecure_registry: Vec<String>,
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    timefmt::parse_duration(s)
        .map(|n| Duration::from_nanos(n as u64))
        .filter(|d| *d >= Duration::from_secs(1))
        .ok_or_else(|| format!("{s:?} is not a duration of at least 1s (like 8s or 1m)"))
}

/// A duration of at least 100ms (periods that may be shorter than a second).
pub fn parse_period(s: &str) -> Result<Duration, String> {
    timefmt::parse_duration(s)
        .map(|n| Duration::from_nanos(n as u64))
        .filter(|d| *d >= Duration::from_millis(100))
        .ok_or_else(|| format!("{s:?} is not a duration of at least 100ms (like 500ms or 2s)"))
}

#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    /// The API server: https://HOST:PORT.
    #[arg(long)]
    server: String,
    /// The join token (`berth server` writes it to <data-dir>/tls/token).
    #[arg(long, env = "BERTH_TOKEN")]
    token: String,
    /// The node's state: credentials, the engine's images and containers, pods' volumes.
    #[arg(long, default_value = "/var/lib/berth/agent")]
    data_dir: PathBuf,
    #[command(flatten)]
    node: NodeArgs,
}

fn reserved(s: &str) -> Result<(u64, u64)> {
    let (mut cpu, mut mem) = (0, 0);
    for kv in s.split(',').filter(|p| !p.is_empty()) {
        match kv.split_once('=') {
            Some(("cpu", v)) => {
                cpu = agent::podspec::cpu_milli(v)
                    .with_context(|| format!("--system-reserved cpu={v}: not a CPU quantity"))?
            }
            Some(("memory", v)) => {
                mem = agent::podspec::bytes(v)
                    .with_context(|| format!("--system-reserved memory={v}: not a quantity"))?
            }
            _ => bail!("--system-reserved {kv:?}: expected cpu=<quantity> or memory=<quantity>"),
        }
    }
    Ok((cpu, mem))
}

/// The agent's configuration from the flags.
pub fn config(
    server: String,
    token: String,
    data_dir: &Path,
    n: &NodeArgs,
    control_plane: bool,
) -> Result<agent::Config> {
    let node_name = match &n.node_name {
        Some(n) => n.clone(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .context("reading the host name")?
            .trim()
            .to_ascii_lowercase(),
    };
    let mut labels = Vec::new();
    for l in &n.node_label {
        let Some((k, v)) = l.split_once('=') else {
            bail!("--node-label {l:?}: expected key=value");
        };
        labels.push((k.to_string(), v.to_string()));
    }
    for t in &n.node_taint {
        agent::node::parse_taint(t)?;
    }
    let (reserved_cpu_milli, reserved_memory) = reserved(&n.system_reserved)?;
    Ok(agent::Config {
        server,
        token,
        node_name,
        node_ip: n.node_ip,
        data_dir: data_dir.to_path_buf(),
        exec_root: n.exec_root.clone(),
        engine_socket: n.engine_socket.clone(),
        cgroup_root: n.cgroup_root.clone(),
        labels,
        taints: n.node_taint.clone(),
        kubelet_port: n.kubelet_port,
        lease_duration: n.node_lease_duration,
        reserved_cpu_milli,
        reserved_memory,
        max_pods: n.max_pods,
        default_bridge: engine::network::DefaultBridge {
            name: n.bridge_name.clone(),
            subnet: n.bridge_subnet.clone(),
        },
        registries: engine::distribution::RegistryOptions {
            insecure: n.insecure_registry.clone(),
            // The cluster's registry, trusted with the node's own certificate.
            certs_dir: Some(agent::registry::certs_dir(data_dir)),
            chunk_size: engine::distribution::DEFAULT_CHUNK,
            allowed: Vec::new(),
        },
        control_plane,
        resolv_conf: n.resolv_conf.clone(),
        cluster_domain: n.cluster_domain.trim_matches('.').to_ascii_lowercase(),
        network_backend: n.network_backend,
        housekeeping_interval: n.housekeeping_interval,
    })
}

/// Opens the node's engine and serves its API on the engine socket (on threads of its own).
pub fn start_engine(cfg: &agent::Config) -> Result<std::sync::Arc<engine::Engine>> {
    // glibc gives each thread that allocates an arena of its own; a node agent's threads
    // (async workers, blocking engine calls, API connections) would each keep one. Two
    // arenas serve them all at a fraction of the memory.
    // SAFETY: mallopt only sets an allocator parameter; it is called before the agent's
    // threads start.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    let (engine, listener, pid_file) = crate::daemon::open_engine(
        &cfg.engine_socket,
        &cfg.data_dir.join("engine"),
        &cfg.exec_root,
        cfg.default_bridge.clone(),
        cfg.registries.clone(),
    )?;
    let e = engine.clone();
    std::thread::spawn(move || {
        api::server::serve(listener, e);
        drop(pid_file);
    });
    Ok(engine)
}

pub fn run(a: AgentArgs) -> Result<i32> {
    let cfg = config(a.server, a.token, &a.data_dir, &a.node, false)?;
    let engine = start_engine(&cfg)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    let socket = cfg.engine_socket.clone();
    let e = engine.clone();
    rt.block_on(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("signal handler")?;
        tokio::select! {
            r = agent::run(cfg, engine) => r?,
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        anyhow::Ok(())
    })?;
    // Pods keep running; the next agent takes them over.
    let _ = std::fs::remove_file(&socket);
    e.shutdown();
    Ok(0)
}

/// The address of the interface the default route leaves by (the server's own node when
/// the API is reached over loopback); none without a default route.
pub fn default_node_ip() -> Option<IpAddr> {
    let route = std::fs::read_to_string("/proc/net/route").ok()?;
    let dev = route
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[1] == "00000000")
        .map(|f| f[0].to_string())?;
    // The interface's first IPv4 address, through a UDP socket bound to the device.
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&s);
    let name = std::ffi::CString::new(dev).ok()?;
    // SAFETY: SO_BINDTODEVICE with a NUL-terminated name on a socket we own.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            name.as_ptr().cast(),
            name.as_bytes_with_nul().len() as libc::socklen_t,
        )
    };
    if r != 0 {
        return None;
    }
    // Any routable destination: connect sends nothing.
    s.connect("192.0.2.1:9").ok()?;
    Some(s.local_addr().ok()?.ip())
}
