//! `berth daemon`: the engine behind berth's API on a unix socket.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

#[derive(Args, Debug)]
pub struct DaemonArgs {
    /// The socket to listen on (unix:///path).
    #[arg(short = 'H', long, default_value = "unix:///run/berth/berth.sock")]
    host: String,
    /// Persistent state: images, containers, volumes.
    #[arg(long, alias = "data-root", default_value = "/var/lib/berth")]
    root: PathBuf,
    /// Runtime state: monitors, the runtime's container state.
    #[arg(long = "exec-root", default_value = "/run/berth")]
    exec_root: PathBuf,
    /// The default network's bridge interface (when the network is first made).
    #[arg(long = "bridge-name", default_value = engine::network::DEFAULT_BRIDGE)]
    bridge_name: String,
    /// The default network's subnet (when the network is first made).
    #[arg(long = "bridge-subnet", default_value = engine::network::DEFAULT_SUBNET)]
    bridge_subnet: String,
    /// A registry (host[:port]) that may be reached over plain http; repeatable.
    #[arg(long = "insecure-registry")]
    insecure_registry: Vec<String>,
    /// Contact only this registry (host, host:port or an IPv4 CIDR); repeatable. Pulls,
    /// pushes and logins anywhere else — Docker Hub included — are refused. Without it any
    /// registry may be contacted.
    #[arg(long = "allowed-registry")]
    allowed_registry: Vec<String>,
    /// CA certificates per registry: DIR/<host[:port]>/*.crt (besides /etc/docker/certs.d).
    #[arg(long = "registry-certs")]
    registry_certs: Option<std::path::PathBuf>,
    /// Push blobs larger than this in chunks of this many bytes (PATCH with Content-Range,
    /// resumed after a failure); smaller ones in one request.
    #[arg(long = "upload-chunk-size", default_value_t = engine::distribution::DEFAULT_CHUNK)]
    upload_chunk_size: u64,
    /// Do not serve: remove what a daemon with this --root set up on the host (its iptables
    /// chains and network bridges), then exit. For uninstalling, tests and benchmarks.
    #[arg(long = "remove-host-setup")]
    remove_host_setup: bool,
}

pub fn run(a: &DaemonArgs) -> Result<i32> {
    if a.remove_host_setup {
        let nets = engine::network::Networks::open(
            &a.root,
            &a.exec_root.join("ipam"),
            true,
            &engine::network::DefaultBridge {
                name: a.bridge_name.clone(),
                subnet: a.bridge_subnet.clone(),
            },
        )
        .with_context(|| format!("opening the networks under {}", a.root.display()))?;
        nets.remove_host_setup();
        return Ok(0);
    }
    let socket = PathBuf::from(a.host.strip_prefix("unix://").unwrap_or(&a.host));
    if !socket.is_absolute() {
        bail!("--host {}: expected unix:///absolute/path", a.host);
    }
    // Signals are taken by one thread; every other thread (and so every monitor process the
    // engine starts, which resets its mask) runs with them blocked.
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(nix::sys::signal::Signal::SIGTERM);
    set.add(nix::sys::signal::Signal::SIGINT);
    set.thread_block()?;
    let (engine, listener, pid_file) = open_engine(
        &socket,
        &a.root,
        &a.exec_root,
        engine::network::DefaultBridge {
            name: a.bridge_name.clone(),
            subnet: a.bridge_subnet.clone(),
        },
        engine::distribution::RegistryOptions {
            insecure: a.insecure_registry.clone(),
            certs_dir: a.registry_certs.clone(),
            chunk_size: a.upload_chunk_size,
            allowed: a.allowed_registry.clone(),
        },
    )?;
    {
        let socket = socket.clone();
        let engine = engine.clone();
        std::thread::spawn(move || {
            let sig = set.wait();
            eprintln!("berth daemon: {sig:?}: shutting down (containers keep running)");
            let _ = std::fs::remove_file(&socket);
            engine.shutdown();
            std::process::exit(0);
        });
    }
    eprintln!(
        "berth daemon: listening on unix://{} (root {}, exec root {})",
        socket.display(),
        a.root.display(),
        a.exec_root.display()
    );
    api::server::serve(listener, engine);
    drop(pid_file);
    Ok(0)
}

/// Takes the exec root (one daemon or agent per exec root: its pid file stays locked),
/// opens the engine and binds its API socket. Shared by `berth daemon` and the node agent.
pub fn open_engine(
    socket: &std::path::Path,
    root: &std::path::Path,
    exec_root: &std::path::Path,
    default_bridge: engine::network::DefaultBridge,
    registries: engine::distribution::RegistryOptions,
) -> Result<(std::sync::Arc<engine::Engine>, UnixListener, std::fs::File)> {
    let a_exec_root = exec_root;
    if !socket.is_absolute() {
        bail!(
            "{}: the engine socket must be an absolute path",
            socket.display()
        );
    }
    std::fs::create_dir_all(a_exec_root)
        .with_context(|| format!("creating {}", a_exec_root.display()))?;
    std::fs::set_permissions(a_exec_root, std::fs::Permissions::from_mode(0o711))?;
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // One daemon per exec root: the pid file stays locked while this one runs.
    let pid_path = a_exec_root.join("berth.pid");
    let pid_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&pid_path)
        .with_context(|| format!("opening {}", pid_path.display()))?;
    // SAFETY: flock on an fd we own.
    if unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&pid_file),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    } != 0
    {
        bail!(
            "another berth daemon is running with exec root {} (see {})",
            a_exec_root.display(),
            pid_path.display()
        );
    }
    pid_file.set_len(0)?;
    std::fs::write(&pid_path, format!("{}\n", std::process::id()))?;
    if socket.exists() {
        if UnixStream::connect(socket).is_ok() {
            bail!("another daemon is listening on {}", socket.display());
        }
        std::fs::remove_file(socket)
            .with_context(|| format!("removing the stale socket {}", socket.display()))?;
    }
    let exe = std::env::current_exe().context("finding the berth binary")?;
    let engine = engine::Engine::open(engine::Config {
        root: root.to_path_buf(),
        exec_root: a_exec_root.to_path_buf(),
        exe,
        default_bridge,
        registries,
    })?;
    let listener =
        UnixListener::bind(socket).with_context(|| format!("binding {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660))?;
    Ok((engine, listener, pid_file))
}
