//! The engine: containers with names, logs, restart policies, health checks, exec and
//! volumes, over the image store and the runtime. The daemon and the node agent drive it
//! in-process; every container runs under its own monitor process (`shim`), so containers
//! outlive the engine and are found again when it starts (live restore).
//!
//! State: one `container.json` per container under `<root>/containers/<id>/`, replaced
//! atomically on every change, written before an operation is acknowledged.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use image::images::{ImageError, Images};
use oci_spec::runtime::{Mount, Spec};
use serde::{Deserialize, Serialize};

use crate::events::Events;
use crate::fsutil;
use crate::health::{Health, HealthConfig, Probe};
use crate::logfile::Rotation;
use crate::shim::{self, ExitInfo, ShimConfig};
use crate::spec::{
    self as runspec, ImageConfig, Ipc, MountSpec, Network, RunOptions, RunSpecError,
};
use crate::volumes::{valid_name, VolumeError, Volumes};

/// Where the engine keeps things.
#[derive(Debug, Clone)]
pub struct Config {
    /// Persistent state: images, containers, volumes (`/var/lib/berth`).
    pub root: PathBuf,
    /// Runtime state: monitors' sockets, the runtime's state (`/run/berth`).
    pub exec_root: PathBuf,
    /// The berth binary, run as `berth shim DIR` for each monitor.
    pub exe: PathBuf,
    /// The default network's bridge and subnet.
    pub default_bridge: crate::network::DefaultBridge,
    /// How registries are reached (insecure ones, CA certificates).
    pub registries: crate::distribution::RegistryOptions,
}

/// Why an engine operation failed. `status()` gives the HTTP status the API answers with.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No container by that name or ID.
    #[error("No such container: {0}")]
    NoSuchContainer(String),
    /// No image by that reference.
    #[error("No such image: {0}")]
    NoSuchImage(String),
    /// No network by that name.
    #[error("{0}")]
    NoSuchNetwork(String),
    /// No exec by that ID.
    #[error("No such exec instance: {0}")]
    NoSuchExec(String),
    /// The operation conflicts with the container's state or another object.
    #[error("{0}")]
    Conflict(String),
    /// The request is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The container's command could not be run: `code` is 126 (cannot execute) or 127 (not
    /// found), as Docker's `run` exits.
    #[error("{message}")]
    Command {
        /// 126 or 127.
        code: i32,
        /// What the runtime said.
        message: String,
    },
    /// The image store failed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A volume operation failed.
    #[error(transparent)]
    Volume(#[from] VolumeError),
    /// The run options are invalid.
    #[error(transparent)]
    Spec(#[from] RunSpecError),
    /// Something on the host failed.
    #[error("{0}")]
    Internal(String),
    /// The operation does not apply to this container as configured (reading the logs of
    /// one whose log driver keeps none).
    #[error("{0}")]
    NotImplemented(String),
}

impl EngineError {
    /// The HTTP status for this error, as Docker's API uses them.
    pub fn status(&self) -> u16 {
        match self {
            EngineError::NoSuchContainer(_)
            | EngineError::NoSuchImage(_)
            | EngineError::NoSuchNetwork(_)
            | EngineError::NoSuchExec(_) => 404,
            EngineError::Volume(VolumeError::NotFound(_)) => 404,
            EngineError::Image(ImageError::NotFound(_)) => 404,
            EngineError::Conflict(_)
            | EngineError::Volume(VolumeError::InUse { .. })
            | EngineError::Image(ImageError::InUse { .. })
            | EngineError::Image(ImageError::Tagged { .. }) => 409,
            EngineError::Invalid(_)
            | EngineError::Spec(_)
            | EngineError::Volume(VolumeError::InvalidName(_))
            | EngineError::Image(ImageError::Invalid(_)) => 400,
            EngineError::NotImplemented(_) => 501,
            _ => 500,
        }
    }
}

type Result<T> = std::result::Result<T, EngineError>;

fn internal(what: impl std::fmt::Display) -> EngineError {
    EngineError::Internal(what.to_string())
}

/// `--restart`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartPolicy {
    /// `no`, `always`, `unless-stopped`, `on-failure`.
    #[serde(rename = "Name", default)]
    pub name: String,
    /// For `on-failure`: give up after this many restarts (0 = never give up).
    #[serde(rename = "MaximumRetryCount", default)]
    pub max_retries: u32,
}

impl RestartPolicy {
    /// Parses `no`, `always`, `unless-stopped`, `on-failure[:N]`.
    pub fn parse(s: &str) -> std::result::Result<RestartPolicy, String> {
        let (name, count) = match s.split_once(':') {
            Some((n, c)) => (n, Some(c)),
            None => (s, None),
        };
        let max_retries = match (name, count) {
            ("on-failure", Some(c)) => c
                .parse()
                .map_err(|_| format!("invalid restart policy format: maximum retry count must be an integer: {c}"))?,
            (_, Some(_)) => {
                return Err(format!(
                    "invalid restart policy format: maximum retry count can only be used with 'on-failure': {s}"
                ))
            }
            _ => 0,
        };
        match name {
            "" | "no" | "always" | "unless-stopped" | "on-failure" => Ok(RestartPolicy {
                name: if name.is_empty() { "no" } else { name }.into(),
                max_retries,
            }),
            _ => Err(format!("invalid restart policy '{name}'")),
        }
    }

    fn wants_restart(&self, code: i32, manually_stopped: bool, restarts: u32) -> bool {
        if manually_stopped {
            return false;
        }
        match self.name.as_str() {
            "always" | "unless-stopped" => true,
            "on-failure" => code != 0 && (self.max_retries == 0 || restarts < self.max_retries),
            _ => false,
        }
    }
}

/// What `create` is given: berth's API body for `POST /containers/create`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CreateRequest {
    /// The image reference.
    pub image: String,
    /// `--name`.
    pub name: Option<String>,
    /// The flags that shape the runtime spec.
    pub run: RunOptions,
    /// `-i`: keep stdin open.
    pub open_stdin: bool,
    /// Close stdin after the first attached client detaches (`run -i`).
    pub stdin_once: bool,
    /// `--restart`.
    pub restart: RestartPolicy,
    /// `--health-*` (over the image's HEALTHCHECK).
    pub health: Option<HealthConfig>,
    /// `--init`.
    pub init: bool,
    /// `--rm`.
    pub auto_remove: bool,
    /// `--log-opt`: `max-size`, `max-file`.
    pub log_opts: BTreeMap<String, String>,
    /// `--stop-timeout`, seconds.
    pub stop_timeout: Option<i64>,
    /// Join this sandbox's network, IPC and UTS namespaces.
    pub sandbox: Option<String>,
    /// Networks to attach to (`--network <name>`, `network connect`), in order: the first
    /// is `eth0`, and carries the published ports.
    pub networks: Vec<EndpointRequest>,
    /// `-p`.
    pub publish: Vec<crate::network::PortMapping>,
    /// `-P`: publish the image's exposed ports on free host ports.
    pub publish_all: bool,
    /// `--dns`: the resolvers the container's resolv.conf names (instead of the host's or the
    /// embedded server).
    pub dns: Vec<String>,
    /// `--dns-search`: its search domains (instead of the host's).
    pub dns_search: Vec<String>,
    /// `--dns-option`: its options (instead of the host's).
    pub dns_options: Vec<String>,
    /// `--add-host`: `name:address` entries added to its /etc/hosts.
    pub extra_hosts: Vec<String>,
    /// `--volumes-from`: `container[:ro|:rw]`; that container's volumes and bind mounts are
    /// mounted here too (resolved at create).
    pub volumes_from: Vec<String>,
    /// `--log-driver`: `json-file` (also when empty) or `none` (no log is kept).
    pub log_driver: String,
    /// `--link`: `container:alias` (Docker's legacy links). At each start the linked
    /// container, which must be running, is named in /etc/hosts and its address, exposed
    /// ports and environment are given as `ALIAS_…` variables; on a user-defined network the
    /// alias resolves to it for this container.
    pub links: Vec<String>,
    /// The Docker API's create body as sent (`Config` and `HostConfig`), for the fields of
    /// `inspect` that berth keeps but does not act on.
    pub docker: Option<serde_json::Value>,
}

/// An attachment asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EndpointRequest {
    /// The network.
    pub name: String,
    /// `--network-alias`: more names on that network.
    pub aliases: Vec<String>,
    /// `--ip`.
    pub ip: Option<String>,
}

/// An attachment made (for one run of the container).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Endpoint {
    /// The network's name.
    pub network: String,
    /// The interface in the container.
    pub ifname: String,
    /// IPv4 address.
    pub ip: String,
    /// Prefix length.
    pub prefix: u8,
    /// Gateway.
    pub gateway: String,
    /// MAC address.
    pub mac: String,
    /// Names on this network.
    pub aliases: Vec<String>,
    /// The chain had the portmap plugin (published ports).
    #[serde(default)]
    pub with_ports: bool,
    /// The configuration list it was attached with (DEL uses the same, even if the
    /// network is gone by then).
    #[serde(default)]
    pub conf: serde_json::Value,
    /// The CNI result of the ADD, for the DEL.
    pub result: serde_json::Value,
}

/// `State` in `inspect`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    /// `created`, `running`, `paused`, `restarting`, `exited`, `dead`.
    pub status: String,
    /// The init's pid on the host (0 when not running).
    pub pid: i32,
    /// The monitor's pid.
    pub shim_pid: i32,
    /// The last exit code.
    pub exit_code: i32,
    /// The last run was ended by the OOM killer.
    pub oom_killed: bool,
    /// Why the last start failed.
    pub error: String,
    /// RFC 3339, empty before the first start.
    pub started_at: String,
    /// RFC 3339, empty before the first exit.
    pub finished_at: String,
    /// Restarts by the restart policy.
    pub restart_count: u32,
    /// Stopped by the user: restart policies leave it stopped.
    pub manually_stopped: bool,
    /// Health, when a check is configured.
    pub health: Option<Health>,
    /// The current run's network namespace and attachments.
    #[serde(default)]
    pub net: Option<RunNet>,
}

impl State {
    /// The current run's network attachments.
    pub fn endpoints(&self) -> &[Endpoint] {
        self.net.as_ref().map_or(&[], |n| &n.endpoints)
    }

    /// The current run's published ports.
    pub fn ports(&self) -> &[crate::network::PortMapping] {
        self.net.as_ref().map_or(&[], |n| &n.ports)
    }
}

/// How many ready network namespaces on the default network the engine keeps.
const POOL: usize = 2;

/// One run's network namespace: pinned at `dir/net`, attached under `cni_id`. Its
/// `owner.json` (this, written as it is built) lets a daemon that died detach it later.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunNet {
    /// The pin directory.
    pub dir: PathBuf,
    /// `CNI_CONTAINERID` for this run (a container's runs each get their own, so that one
    /// run's late detach never touches the next run's addresses).
    pub cni_id: String,
    /// The container ("" while in the pool).
    pub owner: String,
    /// Attachments, in order (`eth0` first).
    pub endpoints: Vec<Endpoint>,
    /// Published ports (host ports chosen).
    pub ports: Vec<crate::network::PortMapping>,
}

impl RunNet {
    fn save(&self) -> std::io::Result<()> {
        let json = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        fsutil::write_replace(&self.dir.join("owner.json"), &json, 0o600)
    }

    fn load(dir: &Path) -> Option<RunNet> {
        serde_json::from_slice(&fs::read(dir.join("owner.json")).ok()?).ok()
    }

    /// The CNI attachment of interface `eth<index>`.
    fn attachment(&self, index: usize, ip: Option<&str>) -> cni::Attachment {
        let mut att = cni::Attachment {
            container_id: self.cni_id.clone(),
            netns: self.dir.join("net"),
            ifname: format!("eth{index}"),
            args: vec![("IgnoreUnknown".into(), "1".into())],
            ..Default::default()
        };
        if let Some(ip) = ip {
            att.args.push(("IP".into(), ip.to_string()));
        }
        if index == 0 && !self.ports.is_empty() {
            att.capabilities.insert(
                "portMappings".into(),
                serde_json::to_value(&self.ports).unwrap_or_default(),
            );
        }
        att
    }
}

/// A mount as `inspect` lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MountPoint {
    /// `bind`, `volume`, `tmpfs`.
    #[serde(rename = "Type")]
    pub typ: String,
    /// The volume's name.
    #[serde(rename = "Name", default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Host path.
    #[serde(rename = "Source")]
    pub source: String,
    /// Path in the container.
    #[serde(rename = "Destination")]
    pub destination: String,
    /// Writable.
    #[serde(rename = "RW")]
    pub rw: bool,
}

/// A container's persistent record (`container.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// 64 hex digits.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// RFC 3339.
    pub created: String,
    /// The image as asked for.
    pub image: String,
    /// The image's ID (config digest).
    pub image_id: String,
    /// The image's config at create time.
    pub image_config: ImageConfig,
    /// What the user asked for.
    pub config: CreateRequest,
    /// The command, environment, working directory and user the process gets.
    pub process: ProcessSummary,
    /// The mounted root file system.
    pub rootfs: PathBuf,
    /// Mounts, resolved.
    pub mounts: Vec<MountPoint>,
    /// Lifecycle state.
    pub state: State,
}

/// The effective process (for `inspect`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProcessSummary {
    /// argv.
    pub args: Vec<String>,
    /// Environment.
    pub env: Vec<String>,
    /// Working directory.
    pub cwd: String,
    /// `-u` or the image's user.
    pub user: String,
}

/// `exec` options.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExecRequest {
    /// The command.
    pub cmd: Vec<String>,
    /// Extra environment.
    pub env: Vec<String>,
    /// `-u`.
    pub user: Option<String>,
    /// `-w`.
    pub workdir: Option<String>,
    /// `-t`.
    pub tty: bool,
    /// `-i`.
    pub stdin: bool,
    /// `--privileged`.
    pub privileged: bool,
    /// `--detach-keys`: the key sequence that detaches a client from the exec's stdin
    /// (Docker's `ctrl-p,ctrl-q` when not given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detach_keys: Option<String>,
}

/// `exec inspect`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecInfo {
    /// The exec's ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// The container's ID.
    #[serde(rename = "ContainerID")]
    pub container_id: String,
    /// Still running.
    #[serde(rename = "Running")]
    pub running: bool,
    /// Exit code once it ended.
    #[serde(rename = "ExitCode")]
    pub exit_code: Option<i32>,
    /// The process's pid on the host.
    #[serde(rename = "Pid")]
    pub pid: i32,
    /// What runs.
    #[serde(rename = "ProcessConfig")]
    pub process: ExecRequest,
    /// A start is under way.
    #[serde(skip)]
    pub starting: bool,
}

/// An attach request waiting for the container's start, and where its stream goes.
type PendingAttach = (
    shim::Request,
    Sender<std::result::Result<UnixStream, String>>,
);

/// A container in memory: its record and what waits on it.
struct Ctr {
    id: String,
    rec: Mutex<Record>,
    changed: Condvar,
    /// One lifecycle operation at a time.
    op: Mutex<()>,
    /// Exits seen, for `wait` on the next exit.
    exits: AtomicU64,
    /// Attach requests made before the container started.
    attach_queue: Mutex<Vec<PendingAttach>>,
    /// Bumped by every start; a health checker of an older run stops.
    run_gen: AtomicU64,
    /// The detaching of the last run's network, under way.
    teardown: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Removed from the engine.
    removed: std::sync::atomic::AtomicBool,
}

struct Exec {
    info: Mutex<ExecInfo>,
    changed: Condvar,
}

#[derive(Default)]
struct Table {
    by_id: HashMap<String, Arc<Ctr>>,
    names: HashMap<String, String>,
}

/// A started container.
struct Launched {
    pid: i32,
    shim_pid: i32,
    net: Option<RunNet>,
}

/// An attach stream now, or once the container starts.
pub enum Attach {
    /// Connected to the running container.
    Ready(UnixStream),
    /// Connected when the container starts.
    Pending(Receiver<std::result::Result<UnixStream, String>>),
}

impl Attach {
    /// The stream, waiting for the start if need be.
    pub fn wait(self) -> std::result::Result<UnixStream, String> {
        match self {
            Attach::Ready(s) => Ok(s),
            Attach::Pending(rx) => rx
                .recv()
                .map_err(|_| "the container did not start".to_string())
                .and_then(|r| r),
        }
    }
}

/// `ps` row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// Container ID.
    pub id: String,
    /// Name.
    pub name: String,
    /// Image as asked for.
    pub image: String,
    /// Image ID.
    pub image_id: String,
    /// The command line.
    pub command: String,
    /// RFC 3339.
    pub created: String,
    /// `running`, `exited`, …
    pub state: String,
    /// Docker's phrase: `Up 5 minutes (healthy)`, `Exited (0) 2 hours ago`, …
    pub status: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Bytes written to the container's layer (with `size`).
    pub size_rw: Option<u64>,
    /// Exit code.
    pub exit_code: i32,
    /// Health status, if checked.
    pub health: Option<String>,
    /// Mount destinations and volume names.
    pub mounts: Vec<MountPoint>,
    /// Published ports.
    #[serde(default)]
    pub ports: Vec<crate::network::PortMapping>,
    /// Networks.
    #[serde(default)]
    pub networks: Vec<String>,
    /// Its addresses on them while it runs.
    #[serde(default)]
    pub addresses: Vec<Address>,
    /// Docker's `HostConfig.NetworkMode`: the network mode asked for.
    #[serde(default)]
    pub network_mode: String,
}

/// A legacy link at a container's start (`--link`).
struct Link {
    alias: String,
    name: String,
    id: String,
    ip: String,
    /// Exposed ports, sorted.
    ports: Vec<(u16, String)>,
    env: Vec<String>,
}

impl Link {
    /// Docker's variables for the link (`DB_NAME`, `DB_PORT`, `DB_PORT_5432_TCP…`,
    /// `DB_ENV_…`), in the container named `me`.
    fn env(&self, me: &str) -> Vec<String> {
        let a = self.alias.to_ascii_uppercase().replace('-', "_");
        let mut v = vec![format!("{a}_NAME=/{me}/{}", self.alias)];
        if let Some((port, proto)) = self.ports.first() {
            v.push(format!("{a}_PORT={proto}://{}:{port}", self.ip));
        }
        for (port, proto) in &self.ports {
            let p = format!("{a}_PORT_{port}_{}", proto.to_ascii_uppercase());
            v.push(format!("{p}={proto}://{}:{port}", self.ip));
            v.push(format!("{p}_ADDR={}", self.ip));
            v.push(format!("{p}_PORT={port}"));
            v.push(format!("{p}_PROTO={proto}"));
        }
        for e in &self.env {
            if let Some((k, val)) = e.split_once('=') {
                if !matches!(k, "HOME" | "PATH" | "HOSTNAME") {
                    v.push(format!("{a}_ENV_{k}={val}"));
                }
            }
        }
        v
    }
}

/// A running container's address on one network (for lists).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Address {
    /// The network.
    pub network: String,
    /// IPv4 address.
    pub ip: String,
    /// Prefix length.
    pub prefix: u8,
    /// Gateway.
    pub gateway: String,
    /// MAC address.
    pub mac: String,
}

/// One stats sample.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StatsSample {
    /// RFC 3339.
    pub read: String,
    /// Container ID.
    pub id: String,
    /// Name.
    pub name: String,
    /// CPU time used by the container, ns.
    pub cpu_total_ns: u64,
    /// CPU time used by the whole host, ns (for the percentage).
    pub system_cpu_ns: u64,
    /// CPUs online.
    pub online_cpus: u32,
    /// Memory in use (without page cache, as Docker shows it), bytes.
    pub memory_usage: u64,
    /// Memory limit (the host's memory when unlimited), bytes.
    pub memory_limit: u64,
    /// Processes and threads.
    pub pids: u64,
}

const CONTAINERS: &str = "containers";
const RECORD: &str = "container.json";

/// The engine.
pub struct Engine {
    cfg: Config,
    /// The image store.
    pub images: Images,
    runtime: runtime::Runtime,
    /// Named volumes.
    pub volumes: Volumes,
    /// The event stream.
    pub events: Events,
    /// Pinned namespaces that containers join (pods).
    pub sandboxes: crate::sandbox::Sandboxes,
    /// Bridge networks (CNI).
    pub networks: crate::network::Networks,
    /// IPv4 forwarding and bridge netfilter, as the host has them (for `info`).
    host_net: (bool, bool),
    /// The embedded DNS servers, by container.
    dns: Mutex<HashMap<String, crate::dns::Server>>,
    /// Ready network namespaces on the default network.
    pool: Mutex<Vec<RunNet>>,
    /// Host ports published, by owner (container ID or `sandbox:<name>`), from their claim
    /// until their run's network is detached.
    reserved: Mutex<HashMap<String, Vec<crate::network::PortMapping>>>,
    /// Held by the one thread filling the pool.
    pool_filling: Mutex<()>,
    table: Mutex<Table>,
    execs: Mutex<HashMap<String, Arc<Exec>>>,
    /// Serialises create/rename against each other (names).
    naming: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn attrs(rec: &Record) -> BTreeMap<String, String> {
    let mut a: BTreeMap<String, String> = rec.config.run.labels.clone();
    a.insert("name".into(), rec.name.clone());
    a.insert("image".into(), rec.image.clone());
    a
}

impl Engine {
    /// Opens the engine's state and re-attaches to the containers whose monitors still run.
    pub fn open(cfg: Config) -> Result<Arc<Engine>> {
        use std::os::unix::fs::PermissionsExt;
        let io = |what: &Path| {
            let what = what.display().to_string();
            move |e: std::io::Error| internal(format!("{what}: {e}"))
        };
        let images = Images::open(&cfg.root)?;
        let cdir = cfg.root.join(CONTAINERS);
        fs::create_dir_all(&cdir).map_err(io(&cdir))?;
        fs::set_permissions(&cdir, fs::Permissions::from_mode(0o700)).map_err(io(&cdir))?;
        for d in [cfg.exec_root.join("shims"), cfg.exec_root.join("runtime")] {
            fs::create_dir_all(&d).map_err(io(&d))?;
            fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).map_err(io(&d))?;
        }
        let volumes = Volumes::open(&cfg.root).map_err(io(&cfg.root))?;
        let runtime = runtime::Runtime::new(cfg.exec_root.join("runtime"));
        let sandboxes = crate::sandbox::Sandboxes::open(&cfg.root, &cfg.exec_root)
            .map_err(io(&cfg.exec_root))?;
        let networks = crate::network::Networks::open(
            &cfg.root,
            &cfg.exec_root.join("ipam"),
            true,
            &cfg.default_bridge,
        )
        .map_err(io(&cfg.root))?;
        let host_net = crate::network::prepare_host();
        networks.isolate();
        let engine = Arc::new(Engine {
            cfg,
            images,
            runtime,
            volumes,
            events: Events::default(),
            sandboxes,
            networks,
            host_net,
            dns: Mutex::new(HashMap::new()),
            pool: Mutex::new(Vec::new()),
            reserved: Mutex::new(HashMap::new()),
            pool_filling: Mutex::new(()),
            table: Mutex::new(Table::default()),
            execs: Mutex::new(HashMap::new()),
            naming: Mutex::new(()),
        });
        let mut restore = Vec::new();
        for e in fs::read_dir(&cdir).map_err(io(&cdir))?.flatten() {
            let path = e.path().join(RECORD);
            let Ok(bytes) = fs::read(&path) else {
                // A create that died before it recorded anything: nothing refers to it.
                let id = e.file_name().to_string_lossy().into_owned();
                let _ = engine.images.remove_container(&id);
                let _ = fs::remove_dir_all(e.path());
                continue;
            };
            let rec: Record = serde_json::from_slice(&bytes)
                .map_err(|err| internal(format!("{}: {err}", path.display())))?;
            let ctr = Arc::new(Ctr {
                id: rec.id.clone(),
                rec: Mutex::new(rec.clone()),
                changed: Condvar::new(),
                op: Mutex::new(()),
                exits: AtomicU64::new(0),
                attach_queue: Mutex::new(Vec::new()),
                run_gen: AtomicU64::new(0),
                removed: Default::default(),
                teardown: Mutex::new(None),
            });
            let mut t = lock(&engine.table);
            t.names.insert(rec.name.clone(), rec.id.clone());
            t.by_id.insert(rec.id.clone(), ctr.clone());
            drop(t);
            restore.push(ctr);
        }
        // Before anything starts a run: namespaces no record owns are adopted by their
        // container if it runs, else detached.
        engine.sweep_netns();
        for ctr in restore {
            engine.restore(ctr);
        }
        engine.sweep_builds();
        engine.pool_fill();
        Ok(engine)
    }

    /// Live restore of one container: re-attach to its monitor, or record how it ended.
    fn restore(self: &Arc<Self>, ctr: Arc<Ctr>) {
        let status = lock(&ctr.rec).state.status.clone();
        let dir = self.shim_dir(&ctr.id);
        match status.as_str() {
            "running" | "paused" | "restarting" | "created" if shim::alive(&dir) => {
                // A start the daemon died in the middle of: adopt the container if it runs,
                // else undo the half-made start.
                let started = self
                    .runtime
                    .state(&ctr.id)
                    .map(|s| {
                        matches!(
                            s.status,
                            runtime::Status::Running
                                | runtime::Status::Paused
                                | runtime::Status::Stopped
                        )
                    })
                    .unwrap_or(false);
                if status == "created" || status == "restarting" {
                    if !started {
                        // Its monitor notices its container is gone and ends (within a second).
                        let _ = self.runtime.delete(&ctr.id, true);
                        for _ in 0..60 {
                            if !shim::alive(&dir) {
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        if status == "restarting" {
                            let engine = self.clone();
                            std::thread::spawn(move || {
                                let _ = engine.start_locked(&ctr, true);
                            });
                        }
                        return;
                    }
                    let pid = self.runtime.state(&ctr.id).map(|s| s.pid).unwrap_or(0);
                    let _ = self.update(&ctr, |r| {
                        r.state.status = "running".into();
                        r.state.pid = pid;
                        if r.state.started_at.is_empty() {
                            r.state.started_at = timefmt::now();
                        }
                    });
                }
                let rec = lock(&ctr.rec).clone();
                // The spec's CHECK: is what the plugins set up for it still there?
                if let Some(n) = &rec.state.net {
                    for (i, ep) in n.endpoints.iter().enumerate() {
                        let checked = self
                            .networks
                            .get(&ep.network)
                            .map_err(|e| e.to_string())
                            .and_then(|net| {
                                self.networks
                                    .conflist(&net, ep.with_ports)
                                    .map_err(|e| e.to_string())
                            })
                            .and_then(|list| {
                                self.networks
                                    .cni
                                    .check(&list, &n.attachment(i, None), &ep.result)
                                    .map_err(|e| e.to_string())
                            });
                        if let Err(e) = checked {
                            eprintln!("berth daemon: container {}: {e}", rec.name);
                        }
                    }
                }
                if let (true, Some(n)) = (self.uses_dns(&rec), &rec.state.net) {
                    if let Err(e) = self.start_dns(&rec, &n.dir) {
                        eprintln!("berth daemon: container {}: {e}", rec.name);
                    }
                }
                self.spawn_monitor(ctr.clone(), dir);
                self.spawn_health(ctr);
            }
            "running" | "paused" => {
                let info = shim::read_exit(&dir).unwrap_or(ExitInfo {
                    code: 255,
                    oom_killed: false,
                    finished_at: timefmt::now(),
                });
                let _ = self.runtime.delete(&ctr.id, true);
                let engine = self.clone();
                std::thread::spawn(move || engine.on_exit(ctr, info));
            }
            "restarting" => {
                // The daemon died during the back-off: carry on with the policy.
                let engine = self.clone();
                std::thread::spawn(move || {
                    let _ = engine.start_locked(&ctr, true);
                });
            }
            "exited" | "dead" if lock(&ctr.rec).config.auto_remove => {
                // The daemon died between the exit and the removal `--rm` asks for.
                let _ = self.remove(&ctr.id, true, true);
            }
            "exited"
                if lock(&ctr.rec).config.restart.name == "always"
                    && !lock(&ctr.rec).state.started_at.is_empty() =>
            {
                // Docker's `always`: a container stopped by hand comes back when the daemon
                // does.
                let engine = self.clone();
                std::thread::spawn(move || {
                    let _ = engine.start(&ctr.id);
                });
            }
            "removing" => {
                // The daemon died while removing it: finish the job.
                let _ = self.update(&ctr, |r| r.state.status = "exited".into());
                let _ = self.remove(&ctr.id, true, false);
            }
            _ => {}
        }
    }

    fn shim_dir(&self, id: &str) -> PathBuf {
        self.cfg
            .exec_root
            .join("shims")
            .join(&id[..id.len().min(16)])
    }

    /// An exec's monitor directory (`exec_id` is one of ours: 64 hex digits).
    fn exec_dir(&self, exec_id: &str) -> PathBuf {
        let short: String = exec_id.chars().take(16).collect();
        self.cfg.exec_root.join("shims").join(format!("x{short}"))
    }

    fn container_dir(&self, id: &str) -> PathBuf {
        self.cfg.root.join(CONTAINERS).join(id)
    }

    /// The data root.
    pub fn data_root(&self) -> &Path {
        &self.cfg.root
    }

    /// How registries are reached.
    pub fn registry_options(&self) -> crate::distribution::RegistryOptions {
        self.cfg.registries.clone()
    }

    /// The json-file log of a container.
    pub fn log_path(&self, id: &str) -> PathBuf {
        self.container_dir(id).join(format!("{id}-json.log"))
    }

    fn save(&self, rec: &Record) -> Result<()> {
        self.save_as(rec, true)
    }

    /// Saves the record, synced to the disk unless `durable` is false (for a state that a
    /// restart after a crash recomputes anyway).
    fn save_as(&self, rec: &Record, durable: bool) -> Result<()> {
        let json = serde_json::to_vec_pretty(rec).map_err(internal)?;
        let path = self.container_dir(&rec.id).join(RECORD);
        let written = if durable {
            fsutil::write_atomic(&path, &json, 0o600)
        } else {
            fsutil::write_replace(&path, &json, 0o600)
        };
        written.map_err(|e| internal(format!("writing {}: {e}", path.display())))
    }

    /// Updates a container's record, saves it and wakes its waiters.
    fn update(&self, ctr: &Ctr, f: impl FnOnce(&mut Record)) -> Result<Record> {
        self.update_as(ctr, true, f)
    }

    /// [`Engine::update`], synced or not (see [`Engine::save_as`]).
    fn update_as(&self, ctr: &Ctr, durable: bool, f: impl FnOnce(&mut Record)) -> Result<Record> {
        let mut rec = lock(&ctr.rec);
        let mut next = rec.clone();
        f(&mut next);
        self.save_as(&next, durable)?;
        *rec = next.clone();
        ctr.changed.notify_all();
        Ok(next)
    }

    fn emit(&self, rec: &Record, action: &str, extra: &[(&str, String)]) {
        let mut a = attrs(rec);
        for (k, v) in extra {
            a.insert((*k).into(), v.clone());
        }
        self.events.emit("container", action, &rec.id, a);
    }

    fn find(&self, name_or_id: &str) -> Result<Arc<Ctr>> {
        let t = lock(&self.table);
        let key = name_or_id.strip_prefix('/').unwrap_or(name_or_id);
        if let Some(c) = t.names.get(key).and_then(|id| t.by_id.get(id)) {
            return Ok(c.clone());
        }
        if let Some(c) = t.by_id.get(key) {
            return Ok(c.clone());
        }
        let hits: Vec<&Arc<Ctr>> = if key.is_empty() {
            Vec::new()
        } else {
            t.by_id
                .iter()
                .filter(|(id, _)| id.starts_with(key))
                .map(|(_, c)| c)
                .collect()
        };
        match hits.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(EngineError::NoSuchContainer(name_or_id.into())),
            _ => Err(EngineError::Invalid(format!(
                "multiple IDs found with provided prefix: {name_or_id}"
            ))),
        }
    }

    /// Every container. (The table's lock is never held while a record's is taken: `wait`
    /// holds a record's and then looks at the table.)
    fn all(&self) -> Vec<Arc<Ctr>> {
        lock(&self.table).by_id.values().cloned().collect()
    }

    /// The record of a container.
    pub fn record(&self, name_or_id: &str) -> Result<Record> {
        Ok(lock(&self.find(name_or_id)?.rec).clone())
    }

    // ----- create ---------------------------------------------------------------------

    /// `create`: records a container, mounts its root file system and checks its options.
    pub fn create(&self, req: CreateRequest) -> Result<Record> {
        if req.image.is_empty() {
            return Err(EngineError::Invalid("an image is required".into()));
        }
        let rotation = rotation(&req.log_opts)?;
        let _ = rotation;
        match req.log_driver.as_str() {
            "" | "json-file" | "none" => {}
            d => {
                return Err(EngineError::Invalid(format!(
                    "error looking up logging plugin {d}: plugin \"{d}\" not found"
                )))
            }
        }
        for ip in &req.dns {
            ip.parse::<std::net::IpAddr>()
                .map_err(|_| EngineError::Invalid(format!("{ip} is not an ip address")))?;
        }
        for l in &req.links {
            let (name, alias) = l.split_once(':').unwrap_or((l, l));
            if name.is_empty() || alias.is_empty() || alias.contains('/') {
                return Err(EngineError::Invalid(format!(
                    "invalid link {l:?}: want container:alias"
                )));
            }
            self.find(name)
                .map_err(|_| EngineError::NoSuchContainer(format!("{name} (linked)")))?;
        }
        for h in &req.extra_hosts {
            let ok = h
                .split_once(':')
                .is_some_and(|(n, ip)| !n.is_empty() && ip.parse::<std::net::IpAddr>().is_ok());
            if !ok {
                return Err(EngineError::Invalid(format!(
                    "invalid IP address in add-host: {h:?} (want name:address)"
                )));
            }
        }
        if let Some(h) = &req.health {
            if !h.test.is_empty() && h.test[0] != "NONE" {
                h.command().map_err(EngineError::Invalid)?;
            }
        }
        let image = match self.images.resolve(&req.image) {
            Ok(i) => i,
            Err(ImageError::NotFound(_)) => {
                return Err(EngineError::NoSuchImage(req.image.clone()))
            }
            Err(e) => return Err(e.into()),
        };
        let config = self.images.config(&image)?;
        let image_config: ImageConfig =
            serde_json::from_value(config["config"].clone()).unwrap_or_default();
        let id = fsutil::random_hex(32);
        let _naming = lock(&self.naming);
        let name = match &req.name {
            Some(n) if !n.is_empty() => {
                let n = n.strip_prefix('/').unwrap_or(n).to_string();
                if !valid_name(&n) {
                    return Err(EngineError::Invalid(format!(
                        "Invalid container name ({n}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
                    )));
                }
                n
            }
            _ => self.generate_name(),
        };
        if let Some(other) = lock(&self.table).names.get(&name) {
            return Err(EngineError::Conflict(format!(
                "Conflict. The container name \"/{name}\" is already in use by container \"{other}\". You have to remove (or rename) that container to be able to reuse that name."
            )));
        }
        // Everything from here is undone on error.
        let dir = self.container_dir(&id);
        let mut made_volumes = Vec::new();
        let result = (|| -> Result<Record> {
            fs::create_dir_all(&dir).map_err(|e| internal(format!("{}: {e}", dir.display())))?;
            let mut run = req.run.clone();
            self.volumes_from(&req.volumes_from, &mut run)?;
            let mounts = self.resolve_mounts(&mut run, &mut made_volumes)?;
            match &run.network {
                Network::Container(c) => {
                    self.find(c)?;
                }
                Network::Join(_) => {
                    return Err(EngineError::Invalid(
                        "--network: a namespace path is not an option of the API".into(),
                    ))
                }
                _ => {}
            }
            if let Ipc::Container(c) = &run.ipc {
                self.find(c)?;
            }
            if !req.networks.is_empty() && (run.network != Network::None || req.sandbox.is_some()) {
                return Err(EngineError::Invalid(
                    "conflicting options: a bridge network and --network none|host|container: or --sandbox".into(),
                ));
            }
            if req.networks.is_empty()
                && (!req.publish.is_empty() || req.publish_all)
                && run.network != Network::Host
            {
                return Err(EngineError::Invalid(
                    "conflicting options: port publishing and the container type network mode"
                        .into(),
                ));
            }
            let mut seen = std::collections::HashSet::new();
            for ep in &req.networks {
                let net = self
                    .networks
                    .get(&ep.name)
                    .map_err(|e| EngineError::NoSuchNetwork(e.to_string()))?;
                if !seen.insert(net.name.clone()) {
                    return Err(EngineError::Invalid(format!(
                        "container cannot be connected to network {} more than once",
                        net.name
                    )));
                }
                check_endpoint(&net, ep)?;
            }
            if let Some(s) = &req.sandbox {
                if run.network != Network::None || !matches!(run.ipc, Ipc::Private | Ipc::Host) {
                    return Err(EngineError::Invalid(
                        "conflicting options: a container in a sandbox takes its network and IPC namespaces from it".into(),
                    ));
                }
                self.sandboxes
                    .get(s)
                    .map_err(|e| EngineError::NoSuchContainer(format!("sandbox {s}: {e}")))?;
            }
            if run.uts_join.is_some() {
                return Err(EngineError::Invalid("uts_join is set by the engine".into()));
            }
            let (_, rootfs) = self.images.mount_container(&id, &image.id.to_string())?;
            let mut check = run.clone();
            self.bind_volumes(&mut check)?;
            if let Network::Container(_) = check.network {
                check.network = Network::Join("/proc/self/ns/net".into());
                check.uts_join = Some("/proc/self/ns/uts".into());
            }
            if let Ipc::Container(_) = check.ipc {
                check.ipc = Ipc::Join("/proc/self/ns/ipc".into());
            }
            if !req.networks.is_empty() {
                check.network = Network::Join("/proc/self/ns/net".into());
            }
            if req.sandbox.is_some() {
                check.network = Network::Join("/proc/self/ns/net".into());
                if check.ipc != Ipc::Host {
                    check.ipc = Ipc::Join("/proc/self/ns/ipc".into());
                }
                check.uts_join = Some("/proc/self/ns/uts".into());
            }
            if check.hostname.is_none() {
                check.hostname = Some(id[..12].to_string());
            }
            let spec = runspec::generate(&image_config, &check, &rootfs, &|_| None)?;
            let process = spec.process().clone().unwrap_or_default();
            let user = run
                .user
                .clone()
                .or(image_config.user.clone())
                .unwrap_or_default();
            let rec = Record {
                id: id.clone(),
                name: name.clone(),
                created: timefmt::now(),
                image: req.image.clone(),
                image_id: image.id.to_string(),
                image_config: image_config.clone(),
                config: CreateRequest {
                    run: run.clone(),
                    name: Some(name.clone()),
                    ..req.clone()
                },
                process: ProcessSummary {
                    args: process.args().clone().unwrap_or_default(),
                    env: process.env().clone().unwrap_or_default(),
                    cwd: process.cwd().display().to_string(),
                    user,
                },
                rootfs,
                mounts,
                state: State {
                    status: "created".into(),
                    ..Default::default()
                },
            };
            self.write_etc_files(&rec)?;
            self.save(&rec)?;
            Ok(rec)
        })();
        match result {
            Ok(rec) => {
                let ctr = Arc::new(Ctr {
                    id: id.clone(),
                    rec: Mutex::new(rec.clone()),
                    changed: Condvar::new(),
                    op: Mutex::new(()),
                    exits: AtomicU64::new(0),
                    attach_queue: Mutex::new(Vec::new()),
                    run_gen: AtomicU64::new(0),
                    removed: Default::default(),
                    teardown: Mutex::new(None),
                });
                let mut t = lock(&self.table);
                t.names.insert(name, id.clone());
                t.by_id.insert(id, ctr);
                drop(t);
                self.emit(&rec, "create", &[]);
                Ok(rec)
            }
            Err(e) => {
                let _ = self.images.remove_container(&id);
                let _ = fs::remove_dir_all(&dir);
                for v in made_volumes {
                    let _ = self.volumes.remove(&v, &[]);
                }
                Err(e)
            }
        }
    }

    fn generate_name(&self) -> String {
        const LEFT: [&str; 16] = [
            "brave", "calm", "eager", "fervent", "gallant", "happy", "jolly", "keen", "lucid",
            "nifty", "quirky", "serene", "sharp", "stoic", "vibrant", "zen",
        ];
        const RIGHT: [&str; 16] = [
            "anchor", "beacon", "buoy", "cove", "dock", "ferry", "harbor", "jetty", "keel",
            "lagoon", "marina", "pier", "quay", "skiff", "tug", "wharf",
        ];
        let t = lock(&self.table);
        loop {
            let r = fsutil::random_hex(3);
            let n = u32::from_str_radix(&r, 16).unwrap_or(0);
            let name = format!(
                "{}_{}{}",
                LEFT[(n & 15) as usize],
                RIGHT[((n >> 4) & 15) as usize],
                n >> 8
            );
            if !t.names.contains_key(&name) {
                return name;
            }
        }
    }

    /// Turns volume mounts into binds of the volumes' directories (creating named volumes on
    /// first use) and checks bind sources.
    /// `--volumes-from`: the named containers' volumes and bind mounts, added to `run`'s
    /// mounts where it mounts nothing at the same path. `:ro` or `:rw` after the name sets
    /// the mode; without it each mount keeps the other container's.
    fn volumes_from(&self, from: &[String], run: &mut RunOptions) -> Result<()> {
        for f in from {
            let (name, mode) = match f.rsplit_once(':') {
                Some((n, m @ ("ro" | "rw"))) => (n, Some(m == "ro")),
                Some((_, m)) => {
                    return Err(EngineError::Invalid(format!(
                        "invalid mode for volumes-from: {m}"
                    )))
                }
                None => (f.as_str(), None),
            };
            let other = self.record(name)?;
            for m in &other.mounts {
                if run.mounts.iter().any(|u| u.target() == m.destination) {
                    continue;
                }
                let read_only = mode.unwrap_or(!m.rw);
                run.mounts.push(match m.typ.as_str() {
                    "volume" => MountSpec::Volume {
                        name: m.name.clone(),
                        target: m.destination.clone(),
                        read_only,
                    },
                    "bind" => MountSpec::Bind {
                        source: m.source.clone().into(),
                        target: m.destination.clone(),
                        read_only,
                    },
                    _ => continue,
                });
            }
        }
        Ok(())
    }

    fn resolve_mounts(
        &self,
        run: &mut RunOptions,
        made: &mut Vec<String>,
    ) -> Result<Vec<MountPoint>> {
        let mut points = Vec::new();
        for m in run.mounts.iter_mut() {
            match m.clone() {
                MountSpec::Bind {
                    source,
                    target,
                    read_only,
                } => {
                    if !source.exists() {
                        return Err(EngineError::Invalid(format!(
                            "invalid mount config for type \"bind\": bind source path does not exist: {}",
                            source.display()
                        )));
                    }
                    points.push(MountPoint {
                        typ: "bind".into(),
                        name: String::new(),
                        source: source.display().to_string(),
                        destination: target,
                        rw: !read_only,
                    });
                }
                MountSpec::Volume {
                    name,
                    target,
                    read_only,
                } => {
                    let (v, created) = self
                        .volumes
                        .create((!name.is_empty()).then_some(name.as_str()), BTreeMap::new())?;
                    if created {
                        made.push(v.name.clone());
                        self.events
                            .emit("volume", "create", &v.name, BTreeMap::new());
                    }
                    points.push(MountPoint {
                        typ: "volume".into(),
                        name: v.name.clone(),
                        source: v.mountpoint.display().to_string(),
                        destination: target.clone(),
                        rw: !read_only,
                    });
                    *m = MountSpec::Volume {
                        name: v.name,
                        target,
                        read_only,
                    };
                }
                MountSpec::Tmpfs { target, .. } => points.push(MountPoint {
                    typ: "tmpfs".into(),
                    name: String::new(),
                    source: String::new(),
                    destination: target,
                    rw: true,
                }),
            }
        }
        Ok(points)
    }

    /// Volume mounts as bind mounts of the volumes' directories.
    fn bind_volumes(&self, run: &mut RunOptions) -> Result<()> {
        for m in run.mounts.iter_mut() {
            if let MountSpec::Volume {
                name,
                target,
                read_only,
            } = m.clone()
            {
                let v = self.volumes.inspect(&name)?;
                *m = MountSpec::Bind {
                    source: v.mountpoint,
                    target,
                    read_only,
                };
            }
        }
        Ok(())
    }

    fn write_etc_files(&self, rec: &Record) -> Result<()> {
        let dir = self.container_dir(&rec.id);
        let host = matches!(rec.config.run.network, Network::Host);
        let sandbox = rec
            .config
            .sandbox
            .as_ref()
            .and_then(|s| self.sandboxes.get(s).ok());
        let hostname = if host {
            fs::read_to_string("/proc/sys/kernel/hostname")
                .unwrap_or_default()
                .trim()
                .to_string()
        } else if let Some(s) = &sandbox {
            s.hostname.clone()
        } else {
            rec.config
                .run
                .hostname
                .clone()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| rec.id[..12].to_string())
        };
        let host_resolv = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let mut resolv = if self.uses_dns(rec) {
            // Docker's way: the embedded server, the host's search domains and options.
            let mut r = format!("nameserver {}\n", crate::dns::ADDRESS);
            for l in host_resolv.lines() {
                if l.starts_with("search") || l.starts_with("domain") {
                    r.push_str(l);
                    r.push('\n');
                }
            }
            r.push_str("options ndots:0\n");
            r
        } else {
            host_resolv
        };
        let c = &rec.config;
        if !(c.dns.is_empty() && c.dns_search.is_empty() && c.dns_options.is_empty()) {
            // With the embedded server, `--dns` names its upstream resolvers instead.
            let dns: &[String] = if self.uses_dns(rec) { &[] } else { &c.dns };
            resolv = resolv_conf(&resolv, dns, &c.dns_search, &c.dns_options);
        }
        for (name, content) in [
            ("hostname", format!("{hostname}\n")),
            ("resolv.conf", resolv),
        ] {
            let p = dir.join(name);
            fsutil::write_replace(&p, content.as_bytes(), 0o644)
                .map_err(|e| internal(format!("writing {}: {e}", p.display())))?;
        }
        self.write_hosts(rec, None)
    }

    /// `/etc/hosts` as Docker writes it: localhost, and the container's address on its first
    /// network with its hostname and aliases.
    fn write_hosts(&self, rec: &Record, endpoint: Option<&Endpoint>) -> Result<()> {
        let dir = self.container_dir(&rec.id);
        let hostname = fs::read_to_string(dir.join("hostname"))
            .unwrap_or_default()
            .trim()
            .to_string();
        let hosts = if matches!(rec.config.run.network, Network::Host) {
            fs::read_to_string("/etc/hosts").unwrap_or_default()
        } else {
            let me = match endpoint {
                Some(ep) => {
                    let mut names = vec![hostname.clone()];
                    names.extend(ep.aliases.iter().cloned());
                    format!("{}\t{}\n", ep.ip, names.join(" "))
                }
                None => format!("127.0.1.1\t{hostname}\n"),
            };
            let mut extra: String = rec
                .config
                .extra_hosts
                .iter()
                .filter_map(|h| h.split_once(':'))
                .map(|(name, ip)| format!("{ip}\t{name}\n"))
                .collect();
            let bridge = endpoint.is_some_and(|e| e.network == crate::network::DEFAULT_NETWORK);
            for l in self.links(rec).unwrap_or_default() {
                if bridge && !l.ip.is_empty() {
                    extra.push_str(&format!(
                        "{}\t{} {} {}\n",
                        l.ip,
                        l.alias,
                        &l.id[..12],
                        l.name
                    ));
                }
            }
            format!(
                "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
                 fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\n\
                 ff02::2\tip6-allrouters\n{extra}{me}"
            )
        };
        let p = dir.join("hosts");
        fsutil::write_replace(&p, hosts.as_bytes(), 0o644)
            .map_err(|e| internal(format!("writing {}: {e}", p.display())))
    }

    // ----- start ----------------------------------------------------------------------

    /// The runtime spec for a start: options resolved against live containers and volumes.
    fn build_spec(&self, rec: &Record, netns: Option<&Path>) -> Result<Spec> {
        let mut run = rec.config.run.clone();
        self.bind_volumes(&mut run)?;
        // As in Docker, the variables and hosts entries are the default bridge's; on a
        // user-defined network a link is a name its resolver answers.
        let bridge = rec
            .config
            .networks
            .iter()
            .any(|n| n.name == crate::network::DEFAULT_NETWORK);
        for link in self.links(rec)?.iter().filter(|_| bridge) {
            run.env.extend(link.env(&rec.name));
        }
        let ns_of = |c: &str, ns: &str| -> Result<PathBuf> {
            let other = self.record(c)?;
            if other.state.status != "running" && other.state.status != "paused" {
                return Err(EngineError::Conflict(format!(
                    "cannot join network of a non running container: {}",
                    other.name
                )));
            }
            Ok(PathBuf::from(format!("/proc/{}/ns/{ns}", other.state.pid)))
        };
        if let Network::Container(c) = run.network.clone() {
            run.network = Network::Join(ns_of(&c, "net")?);
            run.uts_join = Some(ns_of(&c, "uts")?);
        }
        if let Ipc::Container(c) = run.ipc.clone() {
            run.ipc = Ipc::Join(ns_of(&c, "ipc")?);
        }
        if let Some(dir) = netns {
            run.network = Network::Join(dir.join("net"));
        }
        if let Some(name) = &rec.config.sandbox {
            let s = self
                .sandboxes
                .get(name)
                .map_err(|e| EngineError::Conflict(format!("sandbox {name}: {e}")))?;
            run.network = Network::Join(s.path.join("net"));
            // A pod with hostIPC shares the host's; otherwise the sandbox's.
            if run.ipc != Ipc::Host {
                run.ipc = Ipc::Join(s.path.join("ipc"));
            }
            run.uts_join = Some(s.path.join("uts"));
        }
        if run.hostname.is_none() {
            run.hostname = Some(rec.id[..12].to_string());
        }
        let mut spec = runspec::generate(&rec.image_config, &run, &rec.rootfs, &|_| None)?;
        let dir = self.container_dir(&rec.id);
        let mut mounts = spec.mounts().clone().unwrap_or_default();
        for name in ["hostname", "hosts", "resolv.conf"] {
            let dest = format!("/etc/{name}");
            if mounts.iter().any(|m| m.destination() == Path::new(&dest)) {
                continue;
            }
            let mut m = Mount::default();
            m.set_destination(dest.into());
            m.set_typ(Some("bind".into()));
            m.set_source(Some(dir.join(name)));
            m.set_options(Some(vec!["rbind".into(), "rprivate".into()]));
            mounts.push(m);
        }
        if rec.config.init {
            let mut m = Mount::default();
            m.set_destination(crate::init::PATH_IN_CONTAINER.into());
            m.set_typ(Some("bind".into()));
            m.set_source(Some(
                crate::init::install(&self.cfg.exec_root).map_err(internal)?,
            ));
            m.set_options(Some(vec!["bind".into(), "ro".into()]));
            mounts.push(m);
            if let Some(p) = spec.process_mut() {
                let mut args = vec![crate::init::PATH_IN_CONTAINER.to_string(), "--".into()];
                args.extend(p.args().clone().unwrap_or_default());
                p.set_args(Some(args));
            }
        }
        spec.set_mounts(Some(mounts));
        if let Some(linux) = spec.linux_mut() {
            let parent = rec.config.run.cgroup_parent.as_deref().unwrap_or("/berth");
            linux.set_cgroups_path(Some(
                format!("/{}/{}", parent.trim_matches('/'), rec.id).into(),
            ));
        }
        Ok(spec)
    }

    /// `start`. Starting a running container is not an error (nothing changes).
    pub fn start(self: &Arc<Self>, name_or_id: &str) -> Result<()> {
        let ctr = self.find(name_or_id)?;
        {
            let mut rec = lock(&ctr.rec);
            if rec.state.status == "running" || rec.state.status == "paused" {
                return Ok(());
            }
            rec.state.manually_stopped = false;
        }
        let started = self.start_locked(&ctr, false);
        // A `--rm` container that cannot start goes at once, as dockerd removes it: a client
        // waiting for its removal is not left waiting.
        if started.is_err() && lock(&ctr.rec).config.auto_remove {
            let id = lock(&ctr.rec).id.clone();
            let _ = self.remove(&id, true, true);
        }
        started
    }

    fn start_locked(self: &Arc<Self>, ctr: &Arc<Ctr>, by_policy: bool) -> Result<()> {
        let _op = lock(&ctr.op);
        let rec = lock(&ctr.rec).clone();
        if rec.state.status == "running" || rec.state.status == "paused" {
            return Ok(());
        }
        if by_policy && rec.state.manually_stopped {
            return Ok(());
        }
        match self.launch(ctr, &rec) {
            Ok(Launched { pid, shim_pid, net }) => {
                let rec = self.update(ctr, |r| {
                    r.state.status = "running".into();
                    r.state.pid = pid;
                    r.state.shim_pid = shim_pid;
                    r.state.net = net;
                    r.state.error.clear();
                    r.state.started_at = timefmt::now();
                    r.state.oom_killed = false;
                    r.state.health = HealthConfig::merge(
                        r.image_config.healthcheck.as_ref(),
                        r.config.health.as_ref(),
                    )
                    .map(|_| Health::default());
                    if by_policy {
                        r.state.restart_count += 1;
                    }
                })?;
                self.emit(&rec, "start", &[]);
                self.spawn_monitor(ctr.clone(), self.shim_dir(&ctr.id));
                self.spawn_health(ctr.clone());
                Ok(())
            }
            Err(e) => {
                let code = match &e {
                    EngineError::Command { code, .. } => *code,
                    _ => 128,
                };
                let msg = e.to_string();
                let _ = self.update(ctr, |r| {
                    r.state.error = msg.clone();
                    if r.state.status == "restarting" || code != 128 {
                        r.state.status = if r.state.started_at.is_empty() && !by_policy {
                            "created".into()
                        } else {
                            "exited".into()
                        };
                        r.state.exit_code = code;
                    }
                });
                for (_, tx) in lock(&ctr.attach_queue).drain(..) {
                    let _ = tx.send(Err(msg.clone()));
                }
                ctr.exits.fetch_add(1, Ordering::SeqCst);
                ctr.changed.notify_all();
                Err(e)
            }
        }
    }

    /// Writes the bundle, starts the monitor, connects early attach clients, starts the process.
    fn launch(self: &Arc<Self>, ctr: &Ctr, rec: &Record) -> Result<Launched> {
        // The last run's detach first: its address and ports may be asked for again.
        if let Some(t) = lock(&ctr.teardown).take() {
            let _ = t.join();
        }
        let net = if rec.config.networks.is_empty() {
            None
        } else {
            Some(self.net_up(rec)?)
        };
        if let (Some(n), true) = (&net, self.uses_dns(rec)) {
            if let Err(e) = self.start_dns(rec, &n.dir) {
                self.net_down(&rec.id, n);
                return Err(e);
            }
        }
        match self.launch_process(ctr, rec, net.as_ref()) {
            Ok((pid, shim_pid)) => Ok(Launched { pid, shim_pid, net }),
            Err(e) => {
                lock(&self.dns).remove(&rec.id);
                if let Some(n) = &net {
                    self.net_down(&rec.id, n);
                }
                Err(e)
            }
        }
    }

    /// The ports a container publishes, `-P` expanded, host ports checked and chosen.
    fn claim_ports(&self, rec: &Record) -> Result<Vec<crate::network::PortMapping>> {
        let mut ports = rec.config.publish.clone();
        if rec.config.publish_all {
            for key in rec.image_config.exposed_ports.iter().flat_map(|m| m.keys()) {
                let (port, proto) = key.split_once('/').unwrap_or((key, "tcp"));
                if let Ok(p) = port.parse::<u16>() {
                    if !ports
                        .iter()
                        .any(|m| m.container_port == p && m.protocol == proto)
                    {
                        ports.push(crate::network::PortMapping {
                            host_port: 0,
                            container_port: p,
                            protocol: proto.to_string(),
                            host_ip: String::new(),
                        });
                    }
                }
            }
        }
        self.reserve_ports(&rec.id, &mut ports)?;
        Ok(ports)
    }

    /// Claims host ports for `owner`: a port another container or sandbox publishes is taken
    /// even though no socket holds it (the kernel forwards it); one a host process listens
    /// on is found by binding it; port 0 gets a free one. Held until `release_ports`.
    fn reserve_ports(&self, owner: &str, ports: &mut [crate::network::PortMapping]) -> Result<()> {
        let mut reserved = lock(&self.reserved);
        let mut taken: Vec<crate::network::PortMapping> = reserved
            .iter()
            .filter(|(o, _)| o.as_str() != owner)
            .flat_map(|(_, p)| p.clone())
            .collect();
        for m in ports.iter_mut() {
            let clash = |t: &crate::network::PortMapping| {
                m.host_port != 0
                    && t.host_port == m.host_port
                    && t.protocol == m.protocol
                    && (t.host_ip.is_empty() || m.host_ip.is_empty() || t.host_ip == m.host_ip)
            };
            if let Some(t) = taken.iter().find(|t| clash(t)) {
                return Err(EngineError::Conflict(format!(
                    "Bind for {}:{} failed: port is already allocated",
                    if m.host_ip.is_empty() {
                        "0.0.0.0"
                    } else {
                        &m.host_ip
                    },
                    t.host_port
                )));
            }
            crate::network::claim_port(m).map_err(EngineError::Conflict)?;
            taken.push(m.clone());
        }
        reserved.insert(owner.to_string(), ports.to_vec());
        Ok(())
    }

    /// Gives back what `reserve_ports` claimed for `owner`.
    fn release_ports(&self, owner: &str) {
        lock(&self.reserved).remove(owner);
    }

    /// A network namespace for one run of a container, attached to its networks (CNI ADD),
    /// with its published ports on the first: taken ready-made from the pool when the
    /// container asks for nothing but the default network, made here otherwise. Undone whole
    /// on any failure.
    fn net_up(self: &Arc<Self>, rec: &Record) -> Result<RunNet> {
        let ports = self.claim_ports(rec)?;
        let plain = ports.is_empty()
            && rec.config.networks.len() == 1
            && rec.config.networks[0].name == crate::network::DEFAULT_NETWORK;
        if plain {
            if let Some(mut n) = self.pool_take() {
                n.owner = rec.id.clone();
                let _ = n.save();
                self.pool_fill();
                return Ok(n);
            }
        }
        let requests: Vec<(String, Vec<String>, Option<String>)> = rec
            .config
            .networks
            .iter()
            .map(|r| (r.name.clone(), r.aliases.clone(), r.ip.clone()))
            .collect();
        self.make_net(&rec.id, &requests, ports)
    }

    /// Pins a network namespace and attaches it (see `net_up`).
    fn make_net(
        &self,
        owner: &str,
        requests: &[(String, Vec<String>, Option<String>)],
        ports: Vec<crate::network::PortMapping>,
    ) -> Result<RunNet> {
        let key = fsutil::random_hex(8);
        let mut n = RunNet {
            dir: self.cfg.exec_root.join("netns").join(&key),
            cni_id: format!(
                "{}-{key}",
                if owner.is_empty() {
                    "pool"
                } else {
                    &owner[..owner.len().min(16)]
                }
            ),
            owner: owner.to_string(),
            endpoints: Vec::new(),
            ports,
        };
        crate::sandbox::pin(&n.dir, &["net"], None)
            .map_err(|e| internal(format!("creating the network namespace: {e}")))?;
        self.attach_all(&mut n, requests)?;
        Ok(n)
    }

    /// Attaches the pinned namespace of `n` to the networks asked for, in order; on failure
    /// detaches what was attached and removes the pin.
    fn attach_all(
        &self,
        n: &mut RunNet,
        requests: &[(String, Vec<String>, Option<String>)],
    ) -> Result<()> {
        let owner = n.owner.clone();
        let _ = n.save();
        for (i, (name, aliases, ip)) in requests.iter().enumerate() {
            let attached = (|| -> Result<()> {
                let net = self
                    .networks
                    .get(name)
                    .map_err(|e| EngineError::Invalid(e.to_string()))?;
                let with_ports = i == 0 && !n.ports.is_empty();
                let conf = net.conflist(&self.networks.ipam_dir, with_ports);
                let list = cni::ConfList::parse(&conf).map_err(internal)?;
                let att = n.attachment(i, ip.as_deref());
                // Recorded before the ADD: a daemon that dies during it still detaches it.
                n.endpoints.push(Endpoint {
                    network: net.name.clone(),
                    ifname: att.ifname.clone(),
                    gateway: net.gateway.clone(),
                    aliases: aliases.clone(),
                    with_ports,
                    conf,
                    ..Default::default()
                });
                let _ = n.save();
                let result = self
                    .networks
                    .cni
                    .add(&list, &att)
                    .map_err(|e| internal(e.to_string()))?;
                let (addr, prefix, gateway) = cni::ipv4(&result).ok_or_else(|| {
                    internal(format!(
                        "network {}: the plugins gave no IPv4 address",
                        net.name
                    ))
                })?;
                if let Some(ep) = n.endpoints.last_mut() {
                    ep.ip = addr;
                    ep.prefix = prefix;
                    if let Some(g) = gateway {
                        ep.gateway = g;
                    }
                    ep.mac = cni::mac(&result, &att.ifname).unwrap_or_default();
                    ep.result = result;
                }
                let _ = n.save();
                Ok(())
            })();
            if let Err(e) = attached {
                self.net_down(&owner, n);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Detaches a run's namespace from its networks (CNI DEL with the ADD's results) and
    /// removes it. Best effort: what fails is logged, the rest still goes.
    fn net_down(&self, id: &str, n: &RunNet) {
        for (i, ep) in n.endpoints.iter().enumerate().rev() {
            // The list it was attached with; for records from before it was kept, the
            // network's current one.
            let list = match cni::ConfList::parse(&ep.conf) {
                Ok(l) => l,
                Err(_) => match self
                    .networks
                    .get(&ep.network)
                    .ok()
                    .and_then(|net| self.networks.conflist(&net, ep.with_ports).ok())
                {
                    Some(l) => l,
                    None => continue,
                },
            };
            let index = ep
                .ifname
                .strip_prefix("eth")
                .and_then(|x| x.parse().ok())
                .unwrap_or(i);
            let att = n.attachment(index, None);
            // An ADD cut short has no result: DEL without one (the spec allows it).
            let prev = (!ep.result.is_null()).then_some(&ep.result);
            if let Err(e) = self.networks.cni.del(&list, &att, prev) {
                eprintln!("berth daemon: container {id}: {e}");
            }
        }
        let _ = crate::sandbox::unpin(&n.dir);
        self.release_ports(id);
    }

    /// A ready-made namespace on the default network, if the pool has one.
    fn pool_take(&self) -> Option<RunNet> {
        lock(&self.pool).pop()
    }

    /// Tops the pool up to `POOL` namespaces on the default network, in the background:
    /// making one (pin, CNI ADD) is most of a container start on a bridge network.
    fn pool_fill(self: &Arc<Self>) {
        let engine = self.clone();
        std::thread::spawn(move || {
            let _one = lock(&engine.pool_filling);
            while lock(&engine.pool).len() < POOL {
                let req = [(
                    crate::network::DEFAULT_NETWORK.to_string(),
                    Vec::new(),
                    None,
                )];
                match engine.make_net("", &req, Vec::new()) {
                    Ok(n) => lock(&engine.pool).push(n),
                    Err(e) => {
                        eprintln!("berth daemon: preparing a network namespace: {e}");
                        return;
                    }
                }
            }
        });
    }

    /// At start: the namespaces no running container owns (left by a daemon that died, and
    /// the old pool) are detached and removed.
    fn sweep_netns(&self) {
        let owned: Vec<PathBuf> = self
            .all()
            .iter()
            .filter_map(|c| {
                let r = lock(&c.rec);
                let n = r.state.net.as_ref()?;
                // Its published ports are still its own.
                if !n.ports.is_empty() {
                    lock(&self.reserved).insert(r.id.clone(), n.ports.clone());
                }
                Some(n.dir.clone())
            })
            .collect();
        for e in fs::read_dir(self.cfg.exec_root.join("netns"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let dir = e.path();
            if owned.contains(&dir) {
                continue;
            }
            match RunNet::load(&dir) {
                Some(n) => {
                    // A run whose record the daemon did not get to write before it died.
                    let live = self.find(&n.owner).ok().filter(|c| {
                        self.runtime.state(&c.id).is_ok_and(|s| {
                            matches!(
                                s.status,
                                runtime::Status::Running
                                    | runtime::Status::Paused
                                    | runtime::Status::Created
                            )
                        })
                    });
                    match live {
                        Some(c) if lock(&c.rec).state.net.is_none() => {
                            let _ = self.update(&c, |r| r.state.net = Some(n));
                        }
                        _ => {
                            self.release_ports(&n.owner);
                            self.net_down(&n.owner, &n)
                        }
                    }
                }
                None => {
                    let _ = crate::sandbox::unpin(&dir);
                }
            }
        }
    }

    /// Whether a container is on a user-defined network (which has name resolution).
    fn uses_dns(&self, rec: &Record) -> bool {
        rec.config
            .networks
            .iter()
            .any(|n| n.name != crate::network::DEFAULT_NETWORK)
    }

    /// Serves 127.0.0.11 in the container's network namespace.
    fn start_dns(self: &Arc<Self>, rec: &Record, netns: &Path) -> Result<()> {
        let weak = Arc::downgrade(self);
        let me = rec.id.clone();
        let lookup: crate::dns::Lookup =
            Arc::new(move |name: &str| weak.upgrade().and_then(|e| e.resolve(&me, name)));
        // A container only on internal networks gets no way out through its resolver.
        let outside = rec
            .config
            .networks
            .iter()
            .any(|n| self.networks.get(&n.name).is_ok_and(|net| !net.internal));
        let given: Vec<SocketAddr> = rec
            .config
            .dns
            .iter()
            .filter_map(|d| d.parse::<std::net::IpAddr>().ok())
            .map(|ip| SocketAddr::new(ip, 53))
            .collect();
        let upstream = if outside && !given.is_empty() {
            given
        } else if outside {
            crate::dns::host_resolvers()
        } else {
            Vec::new()
        };
        let server = crate::dns::Server::start(&netns.join("net"), lookup, upstream)
            .map_err(|e| internal(format!("starting the embedded DNS server: {e}")))?;
        lock(&self.dns).insert(rec.id.clone(), server);
        Ok(())
    }

    /// What a container's `name` lookup finds: the addresses, on the user-defined networks
    /// it shares with them, of the running containers that have that name, alias, hostname
    /// or short ID. `None` when there is no such container (the name goes upstream).
    fn resolve(&self, asking: &str, name: &str) -> Option<Vec<Ipv4Addr>> {
        let me = self.find(asking).ok()?;
        let mine: Vec<String> = {
            let r = lock(&me.rec);
            let attached: Vec<String> = r
                .state
                .endpoints()
                .iter()
                .map(|e| e.network.clone())
                .collect();
            // A container's process can ask before its start is recorded (the server runs
            // from before the process starts): its configured networks stand in until then.
            let nets = if attached.is_empty() {
                r.config.networks.iter().map(|n| n.name.clone()).collect()
            } else {
                attached
            };
            nets.into_iter()
                .filter(|n| n != crate::network::DEFAULT_NETWORK)
                .collect()
        };
        // This container's link aliases name the linked containers.
        let linked: Vec<String> = lock(&me.rec)
            .config
            .links
            .iter()
            .filter_map(|l| l.split_once(':'))
            .filter(|(_, alias)| alias.eq_ignore_ascii_case(name))
            .map(|(target, _)| target.to_string())
            .collect();
        let mut found = Vec::new();
        for c in self.all() {
            let r = lock(&c.rec);
            let hostname = r.config.run.hostname.clone().unwrap_or_default();
            let named = linked
                .iter()
                .any(|t| t == &r.name || r.id.starts_with(t.as_str()))
                || r.name.eq_ignore_ascii_case(name)
                || (name.len() >= 12 && r.id.starts_with(name))
                || (!hostname.is_empty() && hostname.eq_ignore_ascii_case(name));
            for e in r.state.endpoints() {
                if !mine.contains(&e.network) {
                    continue;
                }
                if named || e.aliases.iter().any(|a| a.eq_ignore_ascii_case(name)) {
                    if let Ok(ip) = e.ip.parse() {
                        found.push(ip);
                    }
                }
            }
        }
        (!found.is_empty()).then_some(found)
    }

    fn launch_process(&self, ctr: &Ctr, rec: &Record, net: Option<&RunNet>) -> Result<(i32, i32)> {
        let sandbox_net = rec
            .config
            .sandbox
            .as_ref()
            .and_then(|s| self.sandboxes.get(s).ok())
            .and_then(|s| s.net)
            .and_then(|v| serde_json::from_value::<RunNet>(v).ok());
        if let Some(ep) = net
            .or(sandbox_net.as_ref())
            .and_then(|n| n.endpoints.first())
        {
            self.write_hosts(rec, Some(ep))?;
        }
        let spec = self.build_spec(rec, net.map(|n| n.dir.as_path()))?;
        let bundle = self.container_dir(&rec.id);
        let json = serde_json::to_vec(&spec).map_err(internal)?;
        // Regenerated at every start: it need not reach the disk before the container runs.
        fsutil::write_replace(&bundle.join("config.json"), &json, 0o600)
            .map_err(|e| internal(format!("writing the bundle: {e}")))?;
        let dir = self.shim_dir(&rec.id);
        let _ = fs::remove_dir_all(&dir);
        let _ = self.runtime.delete(&rec.id, true);
        let cfg = ShimConfig {
            id: rec.id.clone(),
            runtime_root: self.runtime.root().to_path_buf(),
            bundle,
            exec: None,
            tty: rec.config.run.tty,
            stdin: rec.config.open_stdin,
            stdin_once: rec.config.stdin_once,
            log: (rec.config.log_driver != "none").then(|| self.log_path(&rec.id)),
            rotation: rotation(&rec.config.log_opts)?,
        };
        let shim_pid = shim::spawn(&self.cfg.exe, &dir, &cfg).map_err(command_error)?;
        let pid = self.runtime.state(&rec.id).map(|s| s.pid).unwrap_or(0);
        if rec.config.run.network == Network::None
            && rec.config.sandbox.is_none()
            && rec.config.networks.is_empty()
            && pid > 0
        {
            if let Err(e) = crate::netns::loopback_up(pid) {
                let _ = self.runtime.delete(&rec.id, true);
                return Err(internal(format!("setting up the loopback interface: {e}")));
            }
        }
        for (req, tx) in lock(&ctr.attach_queue).drain(..) {
            let _ = tx.send(shim::request(&dir, &req));
        }
        shim::request(&dir, &shim::Request::Start).map_err(command_error)?;
        Ok((pid, shim_pid))
    }

    fn spawn_monitor(self: &Arc<Self>, ctr: Arc<Ctr>, dir: PathBuf) {
        let engine = self.clone();
        std::thread::spawn(move || {
            let info = shim::wait(&dir).unwrap_or(ExitInfo {
                code: 255,
                oom_killed: false,
                finished_at: timefmt::now(),
            });
            engine.on_exit(ctr, info);
        });
    }

    /// Records an exit and applies the restart policy (and `--rm`).
    fn on_exit(self: Arc<Self>, ctr: Arc<Ctr>, info: ExitInfo) {
        ctr.run_gen.fetch_add(1, Ordering::SeqCst);
        let _ = fs::remove_dir_all(self.shim_dir(&ctr.id));
        let before = lock(&ctr.rec).clone();
        // Its addresses, ports and namespace go with the run, in the background: detaching
        // (the kernel retiring a veth) is slow, and nothing waits for it but `rm` (which
        // joins it) — the next run has its own namespace and CNI ID.
        if let Some(n) = before.state.net.clone() {
            lock(&self.dns).remove(&before.id);
            let engine = self.clone();
            let id = before.id.clone();
            *lock(&ctr.teardown) = Some(std::thread::spawn(move || engine.net_down(&id, &n)));
        }
        let ran = timefmt::parse_rfc3339(&before.state.started_at)
            .map(|s| (timefmt::now_nanos() - s) / 1_000_000_000)
            .unwrap_or(0);
        let restart = before.config.restart.wants_restart(
            info.code,
            before.state.manually_stopped,
            before.state.restart_count,
        ) && before.state.status != "removing";
        // A `--rm` container's exit is not synced: it is removed next, and a daemon that
        // crashed in between finds a record whose monitor is gone, takes it as exited and
        // removes it all the same.
        let durable = restart || !before.config.auto_remove;
        let rec = match self.update_as(&ctr, durable, |r| {
            r.state.status = if restart { "restarting" } else { "exited" }.into();
            r.state.net = None;
            r.state.pid = 0;
            r.state.shim_pid = 0;
            r.state.exit_code = info.code;
            r.state.oom_killed = info.oom_killed;
            r.state.finished_at = info.finished_at.clone();
            if let Some(h) = r.state.health.as_mut() {
                h.status = "unhealthy".into();
            }
        }) {
            Ok(r) => r,
            Err(_) => return,
        };
        if info.oom_killed {
            self.emit(&rec, "oom", &[]);
        }
        self.emit(&rec, "die", &[("exitCode", info.code.to_string())]);
        ctr.exits.fetch_add(1, Ordering::SeqCst);
        ctr.changed.notify_all();
        if restart {
            // Docker's back-off: 100 ms doubling per restart, at most a minute, reset after
            // a run of 10 s or more.
            let n = if ran >= 10 {
                0
            } else {
                rec.state.restart_count.min(10)
            };
            let delay = Duration::from_millis((100u64 << n).min(60_000));
            let deadline = Instant::now() + delay;
            let mut g = lock(&ctr.rec);
            while g.state.status == "restarting" && !g.state.manually_stopped {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                g = ctr
                    .changed
                    .wait_timeout(g, left)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            let go = g.state.status == "restarting" && !g.state.manually_stopped;
            drop(g);
            if go {
                if self.start_locked(&ctr, true).is_err() {
                    // The failure is recorded in the state; try again by the policy.
                    let rec = lock(&ctr.rec).clone();
                    if rec.config.restart.wants_restart(
                        rec.state.exit_code,
                        false,
                        rec.state.restart_count,
                    ) {
                        let engine = self.clone();
                        let _ = self.update(&ctr, |r| {
                            r.state.status = "restarting".into();
                            r.state.restart_count += 1;
                        });
                        std::thread::spawn(move || {
                            engine.on_exit(ctr, info);
                        });
                    }
                }
            } else {
                let _ = self.update(&ctr, |r| {
                    if r.state.status == "restarting" {
                        r.state.status = "exited".into();
                    }
                });
            }
        } else if rec.config.auto_remove {
            let _ = self.remove_inner(&rec.id, true, true, false);
        }
    }

    // ----- stop, kill, restart, remove ------------------------------------------------

    fn stop_signal(rec: &Record) -> i32 {
        rec.config
            .run
            .stop_signal
            .as_deref()
            .or(rec.image_config.stop_signal.as_deref())
            .and_then(|s| runtime::signal::parse(s).ok())
            .unwrap_or(libc::SIGTERM)
    }

    /// Waits until the container is not running, up to `timeout`. True if it stopped.
    fn wait_stopped(ctr: &Ctr, timeout: Duration) -> bool {
        // At most a day: any longer is "forever" in practice, and cannot overflow.
        let deadline = Instant::now() + timeout.min(Duration::from_secs(86_400));
        let mut g = lock(&ctr.rec);
        while matches!(g.state.status.as_str(), "running" | "paused") {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            g = ctr
                .changed
                .wait_timeout(g, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    /// `stop`: the stop signal, then SIGKILL after `timeout` seconds (default: the
    /// container's `--stop-timeout`, else 10).
    pub fn stop(&self, name_or_id: &str, timeout: Option<i64>) -> Result<()> {
        let ctr = self.find(name_or_id)?;
        let _op = lock(&ctr.op);
        let rec = self.update(&ctr, |r| {
            r.state.manually_stopped = true;
            if r.state.status == "restarting" {
                r.state.status = "exited".into();
            }
        })?;
        if !matches!(rec.state.status.as_str(), "running" | "paused") {
            return Ok(());
        }
        let secs = timeout
            .or(rec.config.stop_timeout)
            .unwrap_or(10)
            .min(86_400);
        let sig = Self::stop_signal(&rec);
        if rec.state.status == "paused" {
            let _ = self.runtime.resume(&rec.id);
        }
        if secs != 0 && self.runtime.kill(&rec.id, sig, false).is_ok() {
            self.emit(&rec, "kill", &[("signal", sig.to_string())]);
        }
        if secs < 0 || !Self::wait_stopped(&ctr, Duration::from_secs(secs.max(0) as u64)) {
            let _ = self.runtime.kill(&rec.id, libc::SIGKILL, true);
            if !Self::wait_stopped(&ctr, Duration::from_secs(30)) {
                return Err(internal(format!(
                    "container {} did not stop after SIGKILL",
                    rec.name
                )));
            }
        }
        self.emit(&rec, "stop", &[]);
        Ok(())
    }

    /// `kill -s SIGNAL`.
    pub fn kill(&self, name_or_id: &str, signal: &str) -> Result<()> {
        let sig = if signal.is_empty() {
            libc::SIGKILL
        } else {
            runtime::signal::parse(signal)
                .map_err(|_| EngineError::Invalid(format!("invalid signal: {signal}")))?
        };
        let ctr = self.find(name_or_id)?;
        let _op = lock(&ctr.op);
        let rec = lock(&ctr.rec).clone();
        if rec.state.status != "running" && rec.state.status != "paused" {
            return Err(EngineError::Conflict(format!(
                "Cannot kill container: {}: container {} is not running",
                name_or_id, rec.id
            )));
        }
        if sig == libc::SIGKILL || sig == Self::stop_signal(&rec) {
            self.update(&ctr, |r| r.state.manually_stopped = true)?;
        }
        self.runtime
            .kill(&rec.id, sig, false)
            .map_err(|e| internal(format!("killing {}: {e}", rec.name)))?;
        self.emit(&rec, "kill", &[("signal", sig.to_string())]);
        if sig == libc::SIGKILL {
            Self::wait_stopped(&ctr, Duration::from_secs(10));
        }
        Ok(())
    }

    /// `restart`: stop (if running) and start.
    pub fn restart(self: &Arc<Self>, name_or_id: &str, timeout: Option<i64>) -> Result<()> {
        self.stop(name_or_id, timeout)?;
        self.start(name_or_id)?;
        let rec = self.record(name_or_id)?;
        self.emit(&rec, "restart", &[]);
        Ok(())
    }

    /// `rm`: refuses a running container unless `force` (which kills it); `volumes` also
    /// removes its anonymous volumes.
    pub fn remove(&self, name_or_id: &str, force: bool, volumes: bool) -> Result<()> {
        self.remove_inner(name_or_id, force, volumes, true)
    }

    /// `remove`; `wait_net`: also wait for the last run's network to be detached (`--rm`
    /// does not: the CLI is waiting).
    fn remove_inner(
        &self,
        name_or_id: &str,
        force: bool,
        volumes: bool,
        wait_net: bool,
    ) -> Result<()> {
        let ctr = self.find(name_or_id)?;
        let _op = lock(&ctr.op);
        let rec = lock(&ctr.rec).clone();
        let live = matches!(
            rec.state.status.as_str(),
            "running" | "paused" | "restarting"
        );
        if live && !force {
            return Err(EngineError::Conflict(format!(
                "You cannot remove a {} container {}. Stop the container before attempting removal or force remove",
                rec.state.status, rec.id
            )));
        }
        if rec.state.status == "removing" {
            return Err(EngineError::Conflict(format!(
                "removal of container {} is already in progress",
                rec.name
            )));
        }
        if live {
            let rec = self.update(&ctr, |r| {
                r.state.manually_stopped = true;
                if r.state.status == "restarting" {
                    r.state.status = "exited".into();
                }
            })?;
            if matches!(rec.state.status.as_str(), "running" | "paused") {
                let _ = self.runtime.resume(&rec.id);
                let _ = self.runtime.kill(&rec.id, libc::SIGKILL, true);
                if !Self::wait_stopped(&ctr, Duration::from_secs(30)) {
                    return Err(internal(format!("container {} did not die", rec.name)));
                }
            }
        }
        // Recorded first, so that a daemon that dies from here on finishes the removal. (Not
        // synced for a `--rm` container going after its exit, `wait_net` false: a daemon
        // restarted after a crash removes such a container whatever its record says.)
        self.update_as(&ctr, wait_net, |r| {
            r.state.manually_stopped = true;
            r.state.status = "removing".into();
        })?;
        let _ = self.runtime.delete(&rec.id, true);
        let rec = lock(&ctr.rec).clone();
        lock(&self.dns).remove(&rec.id);
        if let Some(n) = &rec.state.net {
            self.net_down(&rec.id, n);
        }
        if wait_net {
            if let Some(t) = lock(&ctr.teardown).take() {
                let _ = t.join();
            }
        }
        let removed = self
            .images
            .remove_container(&rec.id)
            .map_err(|e| internal(format!("removing the root file system: {e}")))
            .and_then(|()| {
                let _ = fs::remove_dir_all(self.shim_dir(&rec.id));
                fs::remove_dir_all(self.container_dir(&rec.id))
                    .map_err(|e| internal(format!("removing the container's state: {e}")))
            });
        if let Err(e) = removed {
            // Docker's `dead`: what could not be removed stays listed; `rm` tries again.
            if self
                .update(&ctr, |r| r.state.status = "dead".into())
                .is_err()
            {
                lock(&ctr.rec).state.status = "dead".into();
            }
            return Err(e);
        }
        {
            let mut t = lock(&self.table);
            t.by_id.remove(&rec.id);
            t.names.retain(|_, id| *id != rec.id);
        }
        ctr.removed.store(true, Ordering::SeqCst);
        lock(&self.execs).retain(|_, x| lock(&x.info).container_id != rec.id);
        if volumes {
            for m in &rec.mounts {
                if m.typ == "volume" {
                    if let Ok(v) = self.volumes.inspect(&m.name) {
                        if v.anonymous && self.volume_users(&m.name).is_empty() {
                            let _ = self.volumes.remove(&m.name, &[]);
                            self.events
                                .emit("volume", "destroy", &m.name, BTreeMap::new());
                        }
                    }
                }
            }
        }
        self.emit(&rec, "destroy", &[]);
        ctr.changed.notify_all();
        Ok(())
    }

    /// The containers using a volume.
    pub fn volume_users(&self, name: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .all()
            .iter()
            .filter_map(|c| {
                let r = lock(&c.rec);
                r.mounts
                    .iter()
                    .any(|m| m.typ == "volume" && m.name == name)
                    .then(|| r.name.clone())
            })
            .collect();
        v.sort();
        v
    }

    // ----- pause, rename, update, wait -------------------------------------------------

    /// `pause` / `unpause` (the freezer).
    pub fn pause(&self, name_or_id: &str, pause: bool) -> Result<()> {
        let ctr = self.find(name_or_id)?;
        let _op = lock(&ctr.op);
        let rec = lock(&ctr.rec).clone();
        let want = if pause { "running" } else { "paused" };
        if rec.state.status != want {
            return Err(EngineError::Conflict(if pause {
                format!("Container {} is not running", rec.id)
            } else {
                format!("Container {} is not paused", rec.id)
            }));
        }
        let r = if pause {
            self.runtime.pause(&rec.id)
        } else {
            self.runtime.resume(&rec.id)
        };
        r.map_err(|e| internal(format!("{}: {e}", rec.name)))?;
        let rec = self.update(&ctr, |r| {
            r.state.status = if pause { "paused" } else { "running" }.into()
        })?;
        self.emit(&rec, if pause { "pause" } else { "unpause" }, &[]);
        Ok(())
    }

    /// `rename`.
    pub fn rename(&self, name_or_id: &str, new: &str) -> Result<()> {
        let new = new.strip_prefix('/').unwrap_or(new);
        if !valid_name(new) {
            return Err(EngineError::Invalid(format!(
                "Invalid container name ({new}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
            )));
        }
        let _naming = lock(&self.naming);
        let ctr = self.find(name_or_id)?;
        let _op = lock(&ctr.op);
        if ctr.removed.load(Ordering::SeqCst) || lock(&ctr.rec).state.status == "removing" {
            return Err(EngineError::NoSuchContainer(name_or_id.into()));
        }
        let old = lock(&ctr.rec).name.clone();
        if old == new {
            return Err(EngineError::Conflict(format!(
                "Renaming a container with the same name as its current name: {new}"
            )));
        }
        if lock(&self.table).names.contains_key(new) {
            return Err(EngineError::Conflict(format!(
                "Conflict. The container name \"/{new}\" is already in use"
            )));
        }
        let rec = self.update(&ctr, |r| r.name = new.to_string())?;
        {
            let mut t = lock(&self.table);
            t.names.remove(&old);
            t.names.insert(new.to_string(), ctr.id.clone());
        }
        self.emit(&rec, "rename", &[("oldName", format!("/{old}"))]);
        Ok(())
    }

    /// `update`: new resource limits (applied at once to a running container) and restart
    /// policy.
    pub fn update_resources(&self, name_or_id: &str, u: &UpdateRequest) -> Result<()> {
        let ctr = self.find(name_or_id)?;
        let _op = lock(&ctr.op);
        let rec = lock(&ctr.rec).clone();
        let mut run = rec.config.run.clone();
        if u.memory.is_some() {
            run.memory = u.memory.clone();
        }
        if u.memory_swap.is_some() {
            run.memory_swap = u.memory_swap.clone();
        }
        if u.cpus.is_some() {
            run.cpus = u.cpus.clone();
        }
        if u.cpu_shares.is_some() {
            run.cpu_shares = u.cpu_shares;
        }
        if u.pids_limit.is_some() {
            run.pids_limit = u.pids_limit;
        }
        let restart = match &u.restart {
            Some(p) => RestartPolicy::parse(p).map_err(EngineError::Invalid)?,
            None => rec.config.restart.clone(),
        };
        let resources = runspec::resources(&run)?;
        if matches!(rec.state.status.as_str(), "running" | "paused") {
            self.runtime
                .update(&rec.id, &resources)
                .map_err(|e| internal(format!("Cannot update container {}: {e}", rec.name)))?;
        }
        let rec = self.update(&ctr, |r| {
            r.config.run = run;
            r.config.restart = restart;
        })?;
        self.emit(&rec, "update", &[]);
        Ok(())
    }

    /// `wait`: blocks until the container is not running (`next_exit`: until its next exit)
    /// and returns the exit code. A container that is removed meanwhile ends the wait too.
    pub fn wait(&self, name_or_id: &str, condition: WaitCondition) -> Result<i32> {
        let ctr = self.find(name_or_id)?;
        let seen = ctr.exits.load(Ordering::SeqCst);
        let mut g = lock(&ctr.rec);
        let mut code = None;
        loop {
            let exited = ctr.exits.load(Ordering::SeqCst) > seen;
            if exited && code.is_none() {
                code = Some(g.state.exit_code);
            }
            let gone = ctr.removed.load(Ordering::SeqCst);
            let idle = !matches!(
                g.state.status.as_str(),
                "running" | "paused" | "restarting" | "removing"
            );
            let done = match condition {
                WaitCondition::NotRunning => exited || gone || idle,
                WaitCondition::NextExit => exited || gone,
                WaitCondition::Removed => gone,
            };
            if done {
                return Ok(code.unwrap_or(g.state.exit_code));
            }
            g = ctr
                .changed
                .wait_timeout(g, Duration::from_secs(1))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    // ----- listing and inspection -----------------------------------------------------

    /// `ps`.
    pub fn list(&self, all: bool, size: bool) -> Vec<Summary> {
        let ctrs: Vec<Arc<Ctr>> = lock(&self.table).by_id.values().cloned().collect();
        let mut out: Vec<Summary> = ctrs
            .iter()
            .map(|c| lock(&c.rec).clone())
            .filter(|r| {
                all || matches!(r.state.status.as_str(), "running" | "paused" | "restarting")
            })
            .map(|r| {
                let size_rw = size.then(|| {
                    self.images
                        .snapshots()
                        .container_upper(&r.id)
                        .map(|p| fsutil::dir_size(&p))
                        .unwrap_or(0)
                });
                Summary {
                    status: status_phrase(&r.state),
                    id: r.id.clone(),
                    name: r.name.clone(),
                    image: r.image.clone(),
                    image_id: r.image_id.clone(),
                    command: r.process.args.join(" "),
                    created: r.created.clone(),
                    state: r.state.status.clone(),
                    labels: r.config.run.labels.clone(),
                    size_rw,
                    exit_code: r.state.exit_code,
                    health: r.state.health.as_ref().map(|h| h.status.clone()),
                    mounts: r.mounts.clone(),
                    ports: r.state.ports().to_vec(),
                    networks: r.config.networks.iter().map(|n| n.name.clone()).collect(),
                    addresses: r
                        .state
                        .endpoints()
                        .iter()
                        .map(|e| Address {
                            network: e.network.clone(),
                            ip: e.ip.clone(),
                            prefix: e.prefix,
                            gateway: e.gateway.clone(),
                            mac: e.mac.clone(),
                        })
                        .collect(),
                    network_mode: network_mode(&r),
                }
            })
            .collect();
        out.sort_by(|a, b| b.created.cmp(&a.created));
        out
    }

    /// `inspect`, shaped like `docker inspect`.
    pub fn inspect(&self, name_or_id: &str) -> Result<serde_json::Value> {
        let r = self.record(name_or_id)?;
        let mut doc = inspect_json(&r, &self.log_path(&r.id), &self.container_dir(&r.id));
        if let Some(nets) = doc["NetworkSettings"]["Networks"].as_object_mut() {
            for (name, ep) in nets.iter_mut() {
                if let Ok(n) = self.networks.get(name) {
                    ep["NetworkID"] = serde_json::json!(n.id);
                }
                if r.state.endpoints().iter().any(|e| &e.network == name) {
                    use sha2::Digest;
                    let digest = format!("{:x}", sha2::Sha256::digest(format!("{}/{name}", r.id)));
                    ep["EndpointID"] = serde_json::json!(digest);
                }
            }
        }
        let execs: Vec<String> = lock(&self.execs)
            .values()
            .filter(|x| {
                let info = lock(&x.info);
                info.container_id == r.id && info.running
            })
            .map(|x| lock(&x.info).id.clone())
            .collect();
        if !execs.is_empty() {
            doc["ExecIDs"] = serde_json::json!(execs);
        }
        Ok(doc)
    }

    /// The containers `rec` links to, as they are now; each must be running.
    fn links(&self, rec: &Record) -> Result<Vec<Link>> {
        let mine: Vec<&str> = rec
            .config
            .networks
            .iter()
            .map(|n| n.name.as_str())
            .collect();
        let mut out = Vec::new();
        for l in &rec.config.links {
            let (name, alias) = l.split_once(':').unwrap_or((l, l));
            let other = self.record(name)?;
            if !matches!(other.state.status.as_str(), "running" | "paused") {
                return Err(EngineError::Conflict(format!(
                    "Cannot link to a non running container: /{} AS /{}/{alias}",
                    other.name, rec.name
                )));
            }
            let ip = other
                .state
                .endpoints()
                .iter()
                .find(|e| mine.contains(&e.network.as_str()))
                .map(|e| e.ip.clone())
                .unwrap_or_default();
            let mut ports: Vec<(u16, String)> = other
                .image_config
                .exposed_ports
                .iter()
                .flatten()
                .map(|(p, _)| p.clone())
                .chain(
                    sent(&other, "Config", "ExposedPorts")
                        .and_then(|v| v.as_object())
                        .into_iter()
                        .flat_map(|o| o.keys().cloned()),
                )
                .filter_map(|p| {
                    let (n, proto) = p.split_once('/').unwrap_or((&p, "tcp"));
                    Some((n.parse().ok()?, proto.to_string()))
                })
                .collect();
            ports.sort();
            ports.dedup();
            out.push(Link {
                alias: alias.to_string(),
                name: other.name.clone(),
                id: other.id.clone(),
                ip,
                ports,
                env: other.process.env.clone(),
            });
        }
        Ok(out)
    }

    /// `docker diff`: what the container changed in its image's file system, `(path, kind)`
    /// with kind 0 changed, 1 added, 2 deleted. The mount points the engine itself adds (the
    /// /etc files it writes, the kernel file systems, the user's mounts) are not changes, as
    /// they are not in Docker, whose init layer holds them.
    pub fn changes(&self, name_or_id: &str) -> Result<Vec<(String, u8)>> {
        let r = self.record(name_or_id)?;
        let all = self.images.container_changes(&r.id, &r.image_id)?;
        let mut points: Vec<String> = [
            "/etc/hosts",
            "/etc/hostname",
            "/etc/resolv.conf",
            "/proc",
            "/sys",
            "/dev",
        ]
        .iter()
        .map(|p| p.to_string())
        .collect();
        points.extend(
            r.config
                .run
                .mounts
                .iter()
                .map(|m| m.target().trim_end_matches('/').to_string()),
        );
        let under = |p: &str, q: &str| p == q || p.starts_with(&format!("{q}/"));
        // A mount point's creation, and whatever shows under a kernel file system.
        let kept: Vec<(String, u8)> = all
            .iter()
            .filter(|(p, k)| !(points.iter().any(|m| under(p, m)) && *k != 2))
            .cloned()
            .collect();
        // A directory reported changed only because a mount point was made in it.
        let mut out = Vec::new();
        for (p, k) in &kept {
            let created_in = |(q, _): &(String, u8)| q.starts_with(&format!("{p}/"));
            if *k == 0
                && all.iter().any(created_in)
                && !kept.iter().any(created_in)
                && points.iter().any(|m| m.starts_with(&format!("{p}/")))
            {
                continue;
            }
            out.push((p.clone(), *k));
        }
        Ok(out)
    }

    /// Whether the container is running (for following logs).
    pub fn is_running(&self, id: &str) -> bool {
        self.find(id)
            .map(|c| {
                matches!(
                    lock(&c.rec).state.status.as_str(),
                    "running" | "paused" | "restarting"
                )
            })
            .unwrap_or(false)
    }

    /// Reads a container's logs (see [`crate::logfile::read`]).
    /// Following stops when the container stops or `cancelled()` (the reader went away).
    pub fn logs(
        &self,
        name_or_id: &str,
        q: &crate::logfile::Query,
        cancelled: &dyn Fn() -> bool,
        out: &mut dyn FnMut(&crate::logfile::Entry) -> std::io::Result<()>,
    ) -> Result<bool> {
        let rec = self.record(name_or_id)?;
        if rec.config.log_driver == "none" {
            return Err(EngineError::NotImplemented(
                "configured logging driver does not support reading".into(),
            ));
        }
        let max_file = rotation(&rec.config.log_opts)?.max_file;
        let id = rec.id.clone();
        crate::logfile::read(
            &self.log_path(&id),
            max_file,
            q,
            &|| self.is_running(&id) && !cancelled(),
            out,
        )
        .map_err(|e| internal(format!("reading logs: {e}")))?;
        Ok(rec.config.run.tty)
    }

    /// `attach`: a stream to the container's stdio now, or once it starts (for `run`).
    pub fn attach(
        &self,
        name_or_id: &str,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    ) -> Result<(Attach, bool)> {
        let ctr = self.find(name_or_id)?;
        let rec = lock(&ctr.rec).clone();
        let req = shim::Request::Attach {
            stdin: stdin && rec.config.open_stdin,
            stdout,
            stderr,
        };
        let tty = rec.config.run.tty;
        match rec.state.status.as_str() {
            "running" | "paused" => {
                let s = shim::request(&self.shim_dir(&rec.id), &req).map_err(internal)?;
                Ok((Attach::Ready(s), tty))
            }
            "created" | "restarting" => {
                let (tx, rx) = std::sync::mpsc::channel();
                lock(&ctr.attach_queue).push((req, tx));
                Ok((Attach::Pending(rx), tty))
            }
            _ => Err(EngineError::Conflict(
                "You cannot attach to a stopped container, start it first".into(),
            )),
        }
    }

    /// Sets the terminal size of a container.
    pub fn resize(&self, name_or_id: &str, height: u16, width: u16) -> Result<()> {
        let rec = self.record(name_or_id)?;
        if rec.state.status != "running" {
            return Err(EngineError::Conflict(format!(
                "Container {} is not running",
                rec.id
            )));
        }
        shim::request(
            &self.shim_dir(&rec.id),
            &shim::Request::Resize { height, width },
        )
        .map(drop)
        .map_err(EngineError::Invalid)
    }

    /// `stats`: one sample.
    pub fn stats(&self, name_or_id: &str) -> Result<StatsSample> {
        let rec = self.record(name_or_id)?;
        let mut s = StatsSample {
            read: timefmt::now(),
            id: rec.id.clone(),
            name: rec.name.clone(),
            system_cpu_ns: system_cpu_ns(),
            online_cpus: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            memory_limit: host_memory(),
            ..Default::default()
        };
        if matches!(rec.state.status.as_str(), "running" | "paused") {
            if let Ok(st) = self.runtime.stats(&rec.id) {
                s.cpu_total_ns = st.cpu_usage_ns.unwrap_or(0);
                s.memory_usage = st
                    .memory_usage
                    .unwrap_or(0)
                    .saturating_sub(st.memory_file.unwrap_or(0));
                if let Some(l) = st.memory_limit {
                    s.memory_limit = s.memory_limit.min(l);
                }
                s.pids = st.pids_current.unwrap_or(0);
            }
        }
        Ok(s)
    }

    /// A running container's cgroup and when it started (RFC 3339): what the kubelet's
    /// resource metrics read. None when it is not running.
    pub fn container_cgroup(
        &self,
        name_or_id: &str,
    ) -> Result<Option<(runtime::cgroups::Cgroup, String)>> {
        let rec = self.record(name_or_id)?;
        if !matches!(rec.state.status.as_str(), "running" | "paused") {
            return Ok(None);
        }
        match self.runtime.cgroup(&rec.id) {
            Ok(cg) => Ok(Some((cg, rec.state.started_at.clone()))),
            Err(_) if !self.is_running(&rec.id) => Ok(None),
            Err(e) => Err(internal(format!("the cgroup of {}: {e}", rec.id))),
        }
    }

    /// `top`: `ps` output for the container's processes.
    pub fn top(&self, name_or_id: &str, ps_args: &str) -> Result<(Vec<String>, Vec<Vec<String>>)> {
        let rec = self.record(name_or_id)?;
        if !matches!(rec.state.status.as_str(), "running" | "paused") {
            return Err(EngineError::Conflict(format!(
                "Container {} is not running",
                rec.id
            )));
        }
        let pids = self
            .runtime
            .pids(&rec.id)
            .map_err(|e| internal(format!("listing processes: {e}")))?;
        let args: Vec<&str> = if ps_args.trim().is_empty() {
            vec!["-ef"]
        } else {
            ps_args.split_whitespace().collect()
        };
        let out = std::process::Command::new("ps")
            .args(&args)
            .output()
            .map_err(|e| internal(format!("running ps (install procps): {e}")))?;
        if !out.status.success() {
            return Err(EngineError::Invalid(format!(
                "ps {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        parse_ps(&String::from_utf8_lossy(&out.stdout), &pids).map_err(EngineError::Invalid)
    }

    /// The path of the container's root file system (for `cp`).
    pub fn rootfs(&self, name_or_id: &str) -> Result<PathBuf> {
        Ok(self.record(name_or_id)?.rootfs)
    }

    // ----- exec -----------------------------------------------------------------------

    /// `exec` create: checks the container runs and records the process.
    pub fn exec_create(&self, name_or_id: &str, req: ExecRequest) -> Result<String> {
        let rec = self.record(name_or_id)?;
        if rec.state.status == "paused" {
            return Err(EngineError::Conflict(format!(
                "Container {} is paused, unpause the container before exec",
                rec.id
            )));
        }
        if rec.state.status != "running" {
            return Err(EngineError::Conflict(format!(
                "Container {} is not running",
                rec.id
            )));
        }
        if req.cmd.is_empty() {
            return Err(EngineError::Invalid("No exec command specified".into()));
        }
        let id = fsutil::random_hex(32);
        let info = ExecInfo {
            id: id.clone(),
            container_id: rec.id.clone(),
            running: false,
            exit_code: None,
            pid: 0,
            process: req,
            starting: false,
        };
        lock(&self.execs).insert(
            id.clone(),
            Arc::new(Exec {
                info: Mutex::new(info),
                changed: Condvar::new(),
            }),
        );
        self.emit(&rec, "exec_create", &[]);
        Ok(id)
    }

    /// `exec` start: runs the process under its own monitor; without `detach`, returns the
    /// stream of its stdio (and whether it is a TTY).
    pub fn exec_start(
        self: &Arc<Self>,
        exec_id: &str,
        detach: bool,
    ) -> Result<Option<(UnixStream, bool)>> {
        self.exec_start_then(exec_id, detach, &mut |_| Ok(()))
    }

    /// [`Engine::exec_start`], calling `attached(tty)` once the output is attached and before
    /// the process starts: an API answers its upgrade there, so that no output can reach the
    /// client ahead of the answer.
    pub fn exec_start_then(
        self: &Arc<Self>,
        exec_id: &str,
        detach: bool,
        attached: &mut dyn FnMut(bool) -> std::io::Result<()>,
    ) -> Result<Option<(UnixStream, bool)>> {
        let exec = lock(&self.execs)
            .get(exec_id)
            .cloned()
            .ok_or_else(|| EngineError::NoSuchExec(exec_id.into()))?;
        // Claimed under the lock: two starts of one exec cannot both get past here.
        let info = {
            let mut i = lock(&exec.info);
            if i.running || i.exit_code.is_some() || i.starting {
                return Err(EngineError::Conflict(format!(
                    "Error: Exec command {exec_id} has already run"
                )));
            }
            i.starting = true;
            i.clone()
        };
        let r = self.exec_launch(exec_id, &exec, &info, detach, attached);
        if r.is_err() {
            let mut i = lock(&exec.info);
            i.starting = false;
            i.exit_code.get_or_insert(126);
            exec.changed.notify_all();
        }
        r
    }

    fn exec_launch(
        self: &Arc<Self>,
        exec_id: &str,
        exec: &Arc<Exec>,
        info: &ExecInfo,
        detach: bool,
        attached: &mut dyn FnMut(bool) -> std::io::Result<()>,
    ) -> Result<Option<(UnixStream, bool)>> {
        let rec = self.record(&info.container_id)?;
        if rec.state.status != "running" {
            return Err(EngineError::Conflict(format!(
                "Container {} is not running",
                rec.id
            )));
        }
        let process = self.exec_process(&rec, &info.process)?;
        let dir = self.exec_dir(exec_id);
        let cfg = ShimConfig {
            id: rec.id.clone(),
            runtime_root: self.runtime.root().to_path_buf(),
            bundle: self.container_dir(&rec.id),
            exec: Some(process),
            tty: info.process.tty,
            stdin: info.process.stdin,
            stdin_once: true,
            log: None,
            rotation: Rotation::default(),
        };
        let shim_pid = shim::spawn(&self.cfg.exe, &dir, &cfg).map_err(command_error)?;
        let abandon = |e: EngineError| {
            // Nothing runs yet: the monitor waits for a start that will not come.
            // SAFETY: kill of the monitor we just started (it has not exec'd anything).
            unsafe { libc::kill(shim_pid, libc::SIGKILL) };
            let _ = fs::remove_dir_all(&dir);
            e
        };
        let stream = if detach {
            None
        } else {
            let req = shim::Request::Attach {
                stdin: info.process.stdin,
                stdout: true,
                stderr: true,
            };
            let s = shim::request(&dir, &req).map_err(|e| abandon(internal(e)))?;
            attached(info.process.tty).map_err(|e| abandon(internal(e)))?;
            Some(s)
        };
        if let Err(e) = shim::request(&dir, &shim::Request::Start) {
            let _ = fs::remove_dir_all(&dir);
            let err = command_error(e);
            let code = match &err {
                EngineError::Command { code, .. } => *code,
                _ => 126,
            };
            let mut i = lock(&exec.info);
            i.exit_code = Some(code);
            exec.changed.notify_all();
            return Err(err);
        }
        let pid = fs::read_to_string(dir.join("process.pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(0);
        {
            let mut i = lock(&exec.info);
            i.running = true;
            i.starting = false;
            i.pid = pid;
        }
        self.emit(&rec, "exec_start", &[("execID", exec_id.to_string())]);
        let engine = self.clone();
        let exec2 = exec.clone();
        let exec_id = exec_id.to_string();
        std::thread::spawn(move || {
            let code = shim::wait(&dir).map(|e| e.code).unwrap_or(255);
            // Recorded before the directory (and its exit file) goes: an inspect in between
            // finds one or the other.
            {
                let mut i = lock(&exec2.info);
                i.running = false;
                i.exit_code = Some(code);
            }
            let _ = fs::remove_dir_all(&dir);
            exec2.changed.notify_all();
            engine.emit(
                &rec,
                "exec_die",
                &[("execID", exec_id), ("exitCode", code.to_string())],
            );
        });
        Ok(stream.map(|s| (s, info.process.tty)))
    }

    /// `exec inspect`; waits up to `wait` for a running exec to end (so a client that saw its
    /// stream close gets the exit code).
    pub fn exec_inspect(&self, exec_id: &str, wait: Duration) -> Result<ExecInfo> {
        let exec = lock(&self.execs)
            .get(exec_id)
            .cloned()
            .ok_or_else(|| EngineError::NoSuchExec(exec_id.into()))?;
        let deadline = Instant::now() + wait;
        let mut g = lock(&exec.info);
        if g.running {
            // The monitor records the exit before it closes the streams.
            if let Some(e) = shim::read_exit(&self.exec_dir(exec_id)) {
                g.running = false;
                g.exit_code = Some(e.code);
            }
        }
        while g.running {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            g = exec
                .changed
                .wait_timeout(g, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(g.clone())
    }

    /// Resizes an exec's terminal.
    pub fn exec_resize(&self, exec_id: &str, height: u16, width: u16) -> Result<()> {
        if !lock(&self.execs).contains_key(exec_id) {
            return Err(EngineError::NoSuchExec(exec_id.into()));
        }
        let dir = self.exec_dir(exec_id);
        shim::request(&dir, &shim::Request::Resize { height, width })
            .map(drop)
            .map_err(EngineError::Invalid)
    }

    /// The process of an exec: the container's, with the exec's command and overrides.
    fn exec_process(&self, rec: &Record, req: &ExecRequest) -> Result<oci_spec::runtime::Process> {
        let spec: Spec = serde_json::from_slice(
            &fs::read(self.container_dir(&rec.id).join("config.json"))
                .map_err(|e| internal(format!("reading the container's bundle: {e}")))?,
        )
        .map_err(internal)?;
        let mut p = spec.process().clone().unwrap_or_default();
        p.set_args(Some(req.cmd.clone()));
        p.set_terminal(Some(req.tty));
        p.set_console_size(None);
        let mut env = p.env().clone().unwrap_or_default();
        for e in &req.env {
            let key = e.split('=').next().unwrap_or("");
            if key.is_empty() {
                return Err(EngineError::Invalid(format!(
                    "invalid environment variable: {e}"
                )));
            }
            env.retain(|x| x.split('=').next() != Some(key));
            env.push(e.clone());
        }
        p.set_env(Some(env));
        if let Some(w) = req.workdir.as_deref().filter(|w| !w.is_empty()) {
            if !w.starts_with('/') {
                return Err(EngineError::Invalid(format!(
                    "the working directory '{w}' is invalid, it needs to be an absolute path"
                )));
            }
            p.set_cwd(w.into());
        }
        if let Some(u) = req.user.as_deref().filter(|u| !u.is_empty()) {
            p.set_user(runspec::resolve_user(u, &rec.rootfs)?);
        }
        if req.privileged {
            let all = crate::defaults::all_capabilities();
            if let Some(mut caps) = p.capabilities().clone() {
                caps.set_bounding(Some(all.clone()));
                caps.set_effective(Some(all.clone()));
                caps.set_permitted(Some(all));
                p.set_capabilities(Some(caps));
            }
        }
        Ok(p)
    }

    // ----- health checks ----------------------------------------------------------------

    fn spawn_health(self: &Arc<Self>, ctr: Arc<Ctr>) {
        let rec = lock(&ctr.rec).clone();
        let Some(cfg) = HealthConfig::merge(
            rec.image_config.healthcheck.as_ref(),
            rec.config.health.as_ref(),
        ) else {
            return;
        };
        let Ok(cmd) = cfg.command() else { return };
        let gen = ctr.run_gen.fetch_add(1, Ordering::SeqCst) + 1;
        let engine = self.clone();
        std::thread::spawn(move || {
            let (interval, timeout, retries) = cfg.effective();
            let started = Instant::now();
            loop {
                std::thread::sleep(Duration::from_nanos(interval));
                if ctr.run_gen.load(Ordering::SeqCst) != gen {
                    return;
                }
                let start = timefmt::now();
                let (code, output) = engine.probe(&ctr.id, &cmd, Duration::from_nanos(timeout));
                if ctr.run_gen.load(Ordering::SeqCst) != gen {
                    return;
                }
                let probe = Probe {
                    start,
                    end: timefmt::now(),
                    exit_code: code,
                    output,
                };
                let in_start = started.elapsed() < Duration::from_nanos(cfg.start_period);
                let mut changed = None;
                let rec = engine.update(&ctr, |r| {
                    if let Some(h) = r.state.health.as_mut() {
                        changed = h.record(probe, retries, in_start);
                    }
                });
                if let (Ok(rec), Some(status)) = (rec, changed) {
                    engine.emit(&rec, &format!("health_status: {status}"), &[]);
                }
            }
        });
    }

    /// Runs a health check command in the container; (exit code, output).
    fn probe(self: &Arc<Self>, id: &str, cmd: &[String], timeout: Duration) -> (i64, String) {
        let req = ExecRequest {
            cmd: cmd.to_vec(),
            ..Default::default()
        };
        let exec_id = match self.exec_create(id, req) {
            Ok(e) => e,
            Err(e) => return (-1, e.to_string()),
        };
        let stream = match self.exec_start(&exec_id, false) {
            Ok(Some((s, _))) => s,
            Ok(None) => return (-1, String::new()),
            Err(e) => {
                lock(&self.execs).remove(&exec_id);
                return (-1, e.to_string());
            }
        };
        let _ = stream.set_read_timeout(Some(timeout));
        let output = demux_to_string(stream, 4096);
        let info = self.exec_inspect(&exec_id, timeout);
        lock(&self.execs).remove(&exec_id);
        match info {
            Ok(i) if !i.running => (i64::from(i.exit_code.unwrap_or(-1)), output),
            Ok(i) => {
                // SAFETY: kill of the probe's pid, which its monitor still holds unreaped.
                unsafe { libc::kill(i.pid, libc::SIGKILL) };
                (-1, format!("Health check exceeded timeout ({timeout:?})"))
            }
            Err(e) => (-1, e.to_string()),
        }
    }

    // ----- volumes, system ------------------------------------------------------------

    /// `volume rm`.
    pub fn volume_remove(&self, name: &str, force: bool) -> Result<()> {
        let users = self.volume_users(name);
        match self.volumes.remove(name, &users) {
            Err(VolumeError::NotFound(_)) if force => Ok(()),
            Err(e) => Err(e.into()),
            Ok(()) => {
                self.events.emit("volume", "destroy", name, BTreeMap::new());
                Ok(())
            }
        }
    }

    /// `volume prune`: removes volumes no container uses (only anonymous ones unless `all`).
    /// Returns their names and the bytes freed.
    pub fn volume_prune(&self, all: bool) -> (Vec<String>, u64) {
        self.volume_prune_matching(all, &|_| true)
    }

    /// [`Engine::volume_prune`] of the volumes `select` picks.
    pub fn volume_prune_matching(
        &self,
        all: bool,
        select: &dyn Fn(&crate::volumes::Volume) -> bool,
    ) -> (Vec<String>, u64) {
        let mut gone = Vec::new();
        let mut bytes = 0;
        for v in self.volumes.list() {
            if (all || v.anonymous) && select(&v) && self.volume_users(&v.name).is_empty() {
                let size = self.volumes.size(&v.name);
                if self.volume_remove(&v.name, false).is_ok() {
                    bytes += size;
                    gone.push(v.name);
                }
            }
        }
        (gone, bytes)
    }

    // ----- networks -------------------------------------------------------------------

    fn net_err(e: crate::network::NetworkError) -> EngineError {
        use crate::network::NetworkError as N;
        match e {
            N::NotFound(_) => EngineError::NoSuchNetwork(e.to_string()),
            N::Exists(_) | N::InUse { .. } => EngineError::Conflict(e.to_string()),
            N::Invalid(_) => EngineError::Invalid(e.to_string()),
            N::Io { .. } => internal(e),
        }
    }

    /// `network create`.
    pub fn network_create(
        &self,
        name: &str,
        subnet: Option<&str>,
        gateway: Option<&str>,
        internal: bool,
        labels: BTreeMap<String, String>,
    ) -> Result<crate::network::Network> {
        self.network_create_dual(name, subnet, gateway, None, internal, labels)
    }

    /// [`Engine::network_create`] with an IPv6 subnet (and gateway) too.
    pub fn network_create_dual(
        &self,
        name: &str,
        subnet: Option<&str>,
        gateway: Option<&str>,
        v6: Option<(&str, Option<&str>)>,
        internal: bool,
        labels: BTreeMap<String, String>,
    ) -> Result<crate::network::Network> {
        let _naming = lock(&self.naming);
        let n = self
            .networks
            .create_dual(name, subnet, gateway, v6, internal, labels)
            .map_err(Self::net_err)?;
        self.events.emit(
            "network",
            "create",
            &n.id,
            BTreeMap::from([("name".into(), n.name.clone())]),
        );
        Ok(n)
    }

    /// The containers configured on a network: (name, ID, endpoint if running).
    fn network_users(&self, network: &str) -> Vec<(String, String, Option<Endpoint>)> {
        let mut v: Vec<_> = self
            .all()
            .iter()
            .filter_map(|c| {
                let r = lock(&c.rec);
                r.config
                    .networks
                    .iter()
                    .any(|n| n.name == network)
                    .then(|| {
                        (
                            r.name.clone(),
                            r.id.clone(),
                            r.state
                                .endpoints()
                                .iter()
                                .find(|e| e.network == network)
                                .cloned(),
                        )
                    })
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// `network inspect`: the record and its containers.
    pub fn network_inspect(&self, name_or_id: &str) -> Result<serde_json::Value> {
        let n = self.networks.get(name_or_id).map_err(Self::net_err)?;
        let mut v = serde_json::to_value(&n).map_err(internal)?;
        let mut ctrs = serde_json::Map::new();
        for (name, id, ep) in self.network_users(&n.name) {
            ctrs.insert(
                id,
                serde_json::json!({
                    "Name": name,
                    "IPv4Address": ep.as_ref().map(|e| format!("{}/{}", e.ip, e.prefix)).unwrap_or_default(),
                    "MacAddress": ep.as_ref().map(|e| e.mac.clone()).unwrap_or_default(),
                }),
            );
        }
        v["Containers"] = serde_json::Value::Object(ctrs);
        // dockerd's shape: the `default` IPAM driver, the configuration as asked for.
        let config = if n.subnet_only {
            serde_json::json!({"Subnet": n.subnet})
        } else {
            serde_json::json!({"Subnet": n.subnet, "Gateway": n.gateway})
        };
        let mut configs = vec![config];
        match (&n.subnet6, &n.gateway6) {
            (Some(s6), _) if n.subnet6_only => configs.push(serde_json::json!({"Subnet": s6})),
            (Some(s6), Some(g6)) => configs.push(serde_json::json!({"Subnet": s6, "Gateway": g6})),
            _ => {}
        }
        v["IPAM"] = serde_json::json!({"Driver": "default", "Options": null, "Config": configs});
        v["EnableIPv6"] = serde_json::json!(n.subnet6.is_some());
        if let Some(o) = v.as_object_mut() {
            o.remove("SubnetOnly");
            o.remove("SubnetV6");
            o.remove("GatewayV6");
            o.remove("SubnetV6Only");
        }
        v["Scope"] = "local".into();
        Ok(v)
    }

    /// `network rm`: refused while a container (running or not) is configured on it.
    pub fn network_remove(&self, name_or_id: &str) -> Result<()> {
        let n = self.networks.get(name_or_id).map_err(Self::net_err)?;
        let users = self.network_users(&n.name);
        if !users.is_empty() {
            return Err(Self::net_err(crate::network::NetworkError::InUse {
                name: n.name.clone(),
                containers: users
                    .into_iter()
                    .map(|u| u.0)
                    .collect::<Vec<_>>()
                    .join(", "),
            }));
        }
        self.networks.remove(&n).map_err(Self::net_err)?;
        self.events.emit(
            "network",
            "destroy",
            &n.id,
            BTreeMap::from([("name".into(), n.name.clone())]),
        );
        Ok(())
    }

    /// `network prune`: user-defined networks no container is configured on.
    pub fn network_prune(&self) -> Vec<String> {
        self.network_prune_matching(&|_| true)
    }

    /// [`Engine::network_prune`] of the networks `select` picks.
    pub fn network_prune_matching(
        &self,
        select: &dyn Fn(&crate::network::Network) -> bool,
    ) -> Vec<String> {
        self.networks
            .list()
            .into_iter()
            .filter(|n| !n.is_default() && select(n) && self.network_users(&n.name).is_empty())
            .filter(|n| self.network_remove(&n.name).is_ok())
            .map(|n| n.name)
            .collect()
    }

    /// `network connect`: configures the container on the network, and attaches it at once
    /// when it runs.
    pub fn network_connect(
        self: &Arc<Self>,
        network: &str,
        container: &str,
        ep: EndpointRequest,
    ) -> Result<()> {
        let net = self.networks.get(network).map_err(Self::net_err)?;
        let ctr = self.find(container)?;
        let _op = lock(&ctr.op);
        let rec = lock(&ctr.rec).clone();
        if rec.config.networks.iter().any(|n| n.name == net.name) {
            return Err(EngineError::Conflict(format!(
                "endpoint with name {} already exists in network {}",
                rec.name, net.name
            )));
        }
        if rec.config.networks.is_empty() {
            return Err(EngineError::Invalid(format!(
                "container {} is not on a bridge network (its network mode cannot be combined with {})",
                rec.name, net.name
            )));
        }
        check_endpoint(&net, &ep)?;
        let req = EndpointRequest {
            name: net.name.clone(),
            ..ep
        };
        let mut endpoint = None;
        if let (true, Some(run)) = (
            matches!(rec.state.status.as_str(), "running" | "paused"),
            &rec.state.net,
        ) {
            let index = run
                .endpoints
                .iter()
                .filter_map(|e| e.ifname.strip_prefix("eth")?.parse::<usize>().ok())
                .max()
                .map_or(0, |m| m + 1);
            let conf = net.conflist(&self.networks.ipam_dir, false);
            let list = cni::ConfList::parse(&conf).map_err(internal)?;
            let mut plain = run.clone();
            plain.ports.clear();
            let att = plain.attachment(index, req.ip.as_deref());
            let result = self
                .networks
                .cni
                .add(&list, &att)
                .map_err(|e| internal(e.to_string()))?;
            let (ip, prefix, gateway) = cni::ipv4(&result).unwrap_or_default();
            endpoint = Some(Endpoint {
                network: net.name.clone(),
                ifname: att.ifname.clone(),
                ip,
                prefix,
                gateway: gateway.unwrap_or(net.gateway.clone()),
                mac: cni::mac(&result, &att.ifname).unwrap_or_default(),
                aliases: req.aliases.clone(),
                with_ports: false,
                conf,
                result,
            });
        }
        let rec = self.update(&ctr, |r| {
            r.config.networks.push(req);
            if let (Some(e), Some(n)) = (endpoint, r.state.net.as_mut()) {
                n.endpoints.push(e);
                let _ = n.save();
            }
        })?;
        if let (true, Some(n)) = (self.uses_dns(&rec), &rec.state.net) {
            if !lock(&self.dns).contains_key(&rec.id) {
                if let Err(e) = self.start_dns(&rec, &n.dir) {
                    eprintln!("berth daemon: container {}: {e}", rec.name);
                }
            }
        }
        self.events.emit(
            "network",
            "connect",
            &net.id,
            BTreeMap::from([
                ("name".into(), net.name.clone()),
                ("container".into(), rec.id),
            ]),
        );
        Ok(())
    }

    /// `network disconnect`: detaches a running container and drops the network from its
    /// configuration.
    pub fn network_disconnect(&self, network: &str, container: &str) -> Result<()> {
        let net = self.networks.get(network).map_err(Self::net_err)?;
        let ctr = self.find(container)?;
        let _op = lock(&ctr.op);
        let rec = lock(&ctr.rec).clone();
        if !rec.config.networks.iter().any(|n| n.name == net.name) {
            return Err(EngineError::Conflict(format!(
                "container {} is not connected to network {}",
                rec.name, net.name
            )));
        }
        // Its last network may go too, as in dockerd: the container keeps its network
        // namespace with only the loopback interface, and starts next without a network.
        if let (Some(run), Some(ep)) = (
            &rec.state.net,
            rec.state.endpoints().iter().find(|e| e.network == net.name),
        ) {
            if let Ok(list) = self.networks.conflist(&net, ep.with_ports) {
                let index = ep
                    .ifname
                    .strip_prefix("eth")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                let att = run.attachment(index, None);
                self.networks
                    .cni
                    .del(&list, &att, Some(&ep.result))
                    .map_err(|e| internal(e.to_string()))?;
            }
        }
        let rec = self.update(&ctr, |r| {
            r.config.networks.retain(|n| n.name != net.name);
            if let Some(n) = r.state.net.as_mut() {
                n.endpoints.retain(|e| e.network != net.name);
                let _ = n.save();
            }
        })?;
        self.events.emit(
            "network",
            "disconnect",
            &net.id,
            BTreeMap::from([
                ("name".into(), net.name.clone()),
                ("container".into(), rec.id),
            ]),
        );
        Ok(())
    }

    /// `sandbox create`.
    /// `sandbox create`: pinned namespaces, attached to `networks` (the first with the
    /// published `ports`) as a pod's are.
    pub fn sandbox_create(
        &self,
        name: &str,
        hostname: &str,
        networks: &[String],
        ports: Vec<crate::network::PortMapping>,
    ) -> Result<crate::sandbox::Sandbox> {
        for n in networks {
            self.networks.get(n).map_err(Self::net_err)?;
        }
        if networks.is_empty() && !ports.is_empty() {
            return Err(EngineError::Invalid(
                "published ports need a network".into(),
            ));
        }
        let owner = format!("sandbox:{name}");
        let mut ports = ports;
        self.reserve_ports(&owner, &mut ports)?;
        let made = self.sandboxes.create(name, hostname);
        if made.is_err() {
            self.release_ports(&owner);
        }
        let mut s = made.map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => EngineError::Conflict(e.to_string()),
            std::io::ErrorKind::InvalidInput => EngineError::Invalid(e.to_string()),
            _ => internal(e),
        })?;
        if !networks.is_empty() {
            let mut n = RunNet {
                dir: s.path.clone(),
                cni_id: format!("sandbox-{name}"),
                owner: owner.clone(),
                endpoints: Vec::new(),
                ports,
            };
            let requests: Vec<(String, Vec<String>, Option<String>)> = networks
                .iter()
                .map(|n| (n.clone(), Vec::new(), None))
                .collect();
            if let Err(e) = self.attach_all(&mut n, &requests) {
                let _ = self.sandboxes.remove(name);
                self.release_ports(&owner);
                return Err(e);
            }
            s.net = Some(serde_json::to_value(&n).map_err(internal)?);
            if let Err(e) = self.sandboxes.save(&s) {
                self.net_down(&n.owner, &n);
                let _ = self.sandboxes.remove(name);
                return Err(internal(e));
            }
        }
        self.events.emit("sandbox", "create", name, BTreeMap::new());
        Ok(s)
    }

    /// The containers in a sandbox.
    pub fn sandbox_users(&self, name: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .all()
            .iter()
            .filter_map(|c| {
                let r = lock(&c.rec);
                (r.config.sandbox.as_deref() == Some(name)).then(|| r.name.clone())
            })
            .collect();
        v.sort();
        v
    }

    /// `sandbox rm`: refused while containers use it, unless `force` (which removes them).
    pub fn sandbox_remove(&self, name: &str, force: bool) -> Result<()> {
        let users = self.sandbox_users(name);
        if !users.is_empty() {
            if !force {
                return Err(EngineError::Conflict(format!(
                    "sandbox {name} is in use by containers: {}",
                    users.join(", ")
                )));
            }
            for u in users {
                self.remove(&u, true, true)?;
            }
        }
        if let Ok(s) = self.sandboxes.get(name) {
            if let Some(n) = s.net.and_then(|v| serde_json::from_value::<RunNet>(v).ok()) {
                self.net_down(&n.owner, &n);
            }
        }
        self.sandboxes.remove(name).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => EngineError::Invalid(e.to_string()),
            _ => internal(e),
        })?;
        self.events
            .emit("sandbox", "destroy", name, BTreeMap::new());
        Ok(())
    }

    /// `container prune`: removes stopped containers; returns their IDs.
    pub fn container_prune(&self) -> Vec<String> {
        self.container_prune_matching(&|_| true).0
    }

    /// `container prune` of the stopped containers `select` picks: the IDs removed and the
    /// bytes their writable layers held.
    pub fn container_prune_matching(
        &self,
        select: &dyn Fn(&Summary) -> bool,
    ) -> (Vec<String>, u64) {
        let chosen: Vec<Summary> = self
            .list(true, true)
            .into_iter()
            .filter(|s| matches!(s.state.as_str(), "exited" | "created" | "dead") && select(s))
            .collect();
        let mut bytes = 0;
        let mut ids = Vec::new();
        for s in chosen {
            if self.remove(&s.id, false, false).is_ok() {
                bytes += s.size_rw.unwrap_or(0);
                ids.push(s.id);
            }
        }
        (ids, bytes)
    }

    /// `info`.
    pub fn info(&self) -> serde_json::Value {
        let list = self.list(true, false);
        let count = |s: &str| list.iter().filter(|c| c.state == s).count();
        let images = self.images.list().map(|l| l.len()).unwrap_or(0);
        let cgroup_version = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            "2"
        } else {
            "1"
        };
        let uname = nix::sys::utsname::uname().ok();
        serde_json::json!({
            "ID": fs::read_to_string("/etc/machine-id").unwrap_or_default().trim(),
            "Containers": list.len(),
            "ContainersRunning": count("running"),
            "ContainersPaused": count("paused"),
            "ContainersStopped": list.len() - count("running") - count("paused"),
            "Images": images,
            "Driver": "overlay2",
            "LoggingDriver": "json-file",
            "CgroupDriver": "cgroupfs",
            "CgroupVersion": cgroup_version,
            "KernelVersion": uname.as_ref().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default(),
            "OperatingSystem": os_name(),
            "OSType": "linux",
            "Architecture": uname.as_ref().map(|u| u.machine().to_string_lossy().into_owned()).unwrap_or_default(),
            "NCPU": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            "MemTotal": host_memory(),
            "DockerRootDir": self.cfg.root,
            "ExecRoot": self.cfg.exec_root,
            "Name": fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim(),
            "ServerVersion": env!("CARGO_PKG_VERSION"),
            "Runtimes": {"berth": {"path": self.cfg.exe}},
            "DefaultRuntime": "berth",
            "SecurityOptions": ["name=seccomp,profile=builtin"],
            "IPv4Forwarding": self.host_net.0,
            "BridgeNfIptables": self.host_net.1,
            "Networks": self.networks.list().len(),
            "CNIPluginPaths": cni::DEFAULT_PATHS,
            "CNIVersions": self.networks.cni.versions("bridge").unwrap_or_default(),
            "Volumes": self.volumes.list().len(),
        })
    }

    /// `system df`: (images, containers, volumes) with sizes.
    pub fn disk_usage(&self) -> serde_json::Value {
        let images = self.images.list().unwrap_or_default();
        let containers = self.list(true, true);
        let volumes: Vec<serde_json::Value> = self
            .volumes
            .list()
            .into_iter()
            .map(|v| {
                let users = self.volume_users(&v.name).len();
                serde_json::json!({"Name": v.name, "Size": self.volumes.size(&v.name), "RefCount": users})
            })
            .collect();
        let used: std::collections::HashSet<&str> =
            containers.iter().map(|c| c.image_id.as_str()).collect();
        serde_json::json!({
            "Images": images.iter().map(|i| serde_json::json!({
                "Id": i.id.to_string(), "Size": i.size, "RepoTags": i.names,
                "Containers": if used.contains(i.id.to_string().as_str()) { 1 } else { 0 },
            })).collect::<Vec<_>>(),
            "Containers": containers.iter().map(|c| serde_json::json!({
                "Id": c.id, "Names": [format!("/{}", c.name)], "SizeRw": c.size_rw, "State": c.state,
            })).collect::<Vec<_>>(),
            "Volumes": volumes,
        })
    }

    /// For a daemon shutdown: containers keep running under their monitors; the pool of
    /// ready network namespaces is released (nothing would own it).
    pub fn shutdown(&self) {
        let pool = std::mem::take(&mut *lock(&self.pool));
        for n in pool {
            self.net_down("", &n);
        }
    }
}

/// What `wait` waits for (Docker's `condition`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitCondition {
    /// The container is not running (at once if it is not).
    NotRunning,
    /// The container's next exit.
    NextExit,
    /// The container is removed (`run --rm`).
    Removed,
}

/// `update` options.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpdateRequest {
    /// `-m`.
    pub memory: Option<String>,
    /// `--memory-swap`.
    pub memory_swap: Option<String>,
    /// `--cpus`.
    pub cpus: Option<String>,
    /// `--cpu-shares`.
    pub cpu_shares: Option<u64>,
    /// `--pids-limit`.
    pub pids_limit: Option<i64>,
    /// `--restart`.
    pub restart: Option<String>,
}

/// Reads a demultiplexed stream's payloads (both streams) into a string, at most `max` bytes.
fn demux_to_string(mut s: UnixStream, max: usize) -> String {
    use std::io::Read;
    let mut out = Vec::new();
    let mut hdr = [0u8; 8];
    while s.read_exact(&mut hdr).is_ok() {
        let n = u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]) as usize;
        let mut buf = vec![0u8; n];
        if s.read_exact(&mut buf).is_err() {
            break;
        }
        if out.len() < max {
            out.extend_from_slice(&buf[..n.min(max - out.len())]);
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What an attachment may ask of a network: aliases and a fixed address only on a
/// user-defined one, the address inside its subnet.
fn check_endpoint(net: &crate::network::Network, ep: &EndpointRequest) -> Result<()> {
    if net.is_default() && (!ep.aliases.is_empty() || ep.ip.is_some()) {
        return Err(EngineError::Invalid(
            "network-scoped aliases and user specified IP addresses are supported only on user defined networks".into(),
        ));
    }
    if let Some(ip) = &ep.ip {
        if !crate::network::contains(&net.subnet, ip) {
            return Err(EngineError::Invalid(format!(
                "invalid --ip {ip}: not in network {}'s subnet {}",
                net.name, net.subnet
            )));
        }
    }
    Ok(())
}

fn command_error(msg: String) -> EngineError {
    let lower = msg.to_ascii_lowercase();
    if lower.contains("not found in $path") || lower.contains("no such file or directory") {
        EngineError::Command {
            code: 127,
            message: msg,
        }
    } else if lower.contains("permission denied")
        || lower.contains("exec format error")
        || lower.contains("is a directory")
    {
        EngineError::Command {
            code: 126,
            message: msg,
        }
    } else {
        EngineError::Internal(msg)
    }
}

/// A resolv.conf from `base` with what `--dns`, `--dns-search` and `--dns-option` set in
/// place of its lines of that kind, in Docker's order: search, nameservers, options.
fn resolv_conf(base: &str, dns: &[String], search: &[String], options: &[String]) -> String {
    let lines = |key: &str| -> Vec<String> {
        base.lines()
            .filter(|l| l.split_whitespace().next() == Some(key))
            .map(String::from)
            .collect()
    };
    let mut out = Vec::new();
    if search.is_empty() {
        out.extend(lines("search"));
    } else {
        out.push(format!("search {}", search.join(" ")));
    }
    if dns.is_empty() {
        out.extend(lines("nameserver"));
    } else {
        out.extend(dns.iter().map(|d| format!("nameserver {d}")));
    }
    if options.is_empty() {
        out.extend(lines("options"));
    } else {
        out.push(format!("options {}", options.join(" ")));
    }
    out.join("\n") + "\n"
}

fn rotation(opts: &BTreeMap<String, String>) -> Result<Rotation> {
    let mut r = Rotation::default();
    for (k, v) in opts {
        match k.as_str() {
            "max-size" => {
                let n = runspec::parse_memory_unchecked(v).map_err(|_| {
                    EngineError::Invalid(format!("invalid value for log opt max-size: {v}"))
                })?;
                r.max_size = n.max(0) as u64;
            }
            "max-file" => {
                r.max_file = v.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
                    EngineError::Invalid(format!("invalid value for log opt max-file: {v}"))
                })?;
            }
            _ => {
                return Err(EngineError::Invalid(format!(
                    "unknown log opt '{k}' for json-file log driver"
                )))
            }
        }
    }
    // dockerd's json-file: without max-size nothing rotates, so max-file has no effect.
    if r.max_size == 0 {
        r.max_file = 1;
    }
    Ok(r)
}

fn status_phrase(s: &State) -> String {
    let ago = |t: &str| {
        timefmt::parse_rfc3339(t)
            .map(|t| timefmt::human_duration(((timefmt::now_nanos() - t) / 1_000_000_000) as i64))
            .unwrap_or_default()
    };
    match s.status.as_str() {
        "running" | "paused" => {
            let mut p = format!("Up {}", ago(&s.started_at));
            if s.status == "paused" {
                p.push_str(" (Paused)");
            }
            if let Some(h) = &s.health {
                let hs = if h.status == "starting" {
                    "health: starting"
                } else {
                    &h.status
                };
                p.push_str(&format!(" ({hs})"));
            }
            p
        }
        "restarting" => format!("Restarting ({}) {} ago", s.exit_code, ago(&s.finished_at)),
        "exited" if !s.finished_at.is_empty() => {
            format!("Exited ({}) {} ago", s.exit_code, ago(&s.finished_at))
        }
        "removing" => "Removal In Progress".into(),
        _ => "Created".into(),
    }
}

/// `NetworkSettings` of `inspect`: Docker's shape.
fn network_settings(r: &Record) -> serde_json::Value {
    use serde_json::json;
    let mut nets = serde_json::Map::new();
    for req in &r.config.networks {
        let ep = r.state.endpoints().iter().find(|e| e.network == req.name);
        let v6 = ep.and_then(|e| cni::ipv6(&e.result));
        nets.insert(
            req.name.clone(),
            json!({
                // On a user-defined network dockerd adds the short ID as a name (berth's
                // resolver answers it too).
                "Aliases": if req.name != crate::network::DEFAULT_NETWORK {
                    let mut a = req.aliases.clone();
                    a.push(r.id[..12].to_string());
                    json!(a)
                } else if req.aliases.is_empty() { serde_json::Value::Null } else { json!(req.aliases) },
                "IPAddress": ep.map(|e| e.ip.as_str()).unwrap_or(""),
                "IPPrefixLen": ep.map(|e| e.prefix).unwrap_or(0),
                "Gateway": ep.map(|e| e.gateway.as_str()).unwrap_or(""),
                "MacAddress": ep.map(|e| e.mac.as_str()).unwrap_or(""),
                "IPAMConfig": req.ip.as_ref().map(|ip| json!({"IPv4Address": ip})),
                "Links": if req.name != crate::network::DEFAULT_NETWORK && !r.config.links.is_empty() {
                    json!(r.config.links)
                } else {
                    serde_json::Value::Null
                },
                "DriverOpts": serde_json::Value::Null,
                "NetworkID": "",
                "EndpointID": "",
                "IPv6Gateway": v6.as_ref().and_then(|v| v.2.clone()).unwrap_or_default(),
                "GlobalIPv6Address": v6.as_ref().map(|v| v.0.clone()).unwrap_or_default(),
                "GlobalIPv6PrefixLen": v6.as_ref().map(|v| v.1).unwrap_or(0),
            }),
        );
    }
    let mut ports = serde_json::Map::new();
    for m in r.state.ports() {
        let key = format!("{}/{}", m.container_port, m.protocol);
        let entry = ports.entry(key).or_insert_with(|| json!([]));
        if let Some(a) = entry.as_array_mut() {
            a.push(json!({
                "HostIp": if m.host_ip.is_empty() { "0.0.0.0" } else { &m.host_ip },
                "HostPort": m.host_port.to_string(),
            }));
        }
    }
    let first = r.state.endpoints().first();
    let first6 = first.and_then(|e| cni::ipv6(&e.result));
    json!({
        "Networks": nets,
        "Ports": ports,
        "IPAddress": first.map(|e| e.ip.as_str()).unwrap_or(""),
        "Gateway": first.map(|e| e.gateway.as_str()).unwrap_or(""),
        "MacAddress": first.map(|e| e.mac.as_str()).unwrap_or(""),
        "SandboxKey": if r.state.endpoints().is_empty() { String::new() } else { format!("/proc/{}/ns/net", r.state.pid) },
        "IPPrefixLen": first.map(|e| e.prefix).unwrap_or(0),
        "Bridge": "",
        "SandboxID": "",
        "HairpinMode": false,
        "LinkLocalIPv6Address": "",
        "LinkLocalIPv6PrefixLen": 0,
        "EndpointID": "",
        "IPv6Gateway": first6.as_ref().and_then(|v| v.2.clone()).unwrap_or_default(),
        "GlobalIPv6Address": first6.as_ref().map(|v| v.0.clone()).unwrap_or_default(),
        "GlobalIPv6PrefixLen": first6.as_ref().map(|v| v.1).unwrap_or(0),
        "SecondaryIPAddresses": serde_json::Value::Null,
        "SecondaryIPv6Addresses": serde_json::Value::Null,
    })
}

/// Docker's `HostConfig.NetworkMode`: as the client wrote it for a container on networks
/// (`default`, `bridge` or a network's name), else the namespace it shares.
fn network_mode(r: &Record) -> String {
    let sent_mode = sent(r, "HostConfig", "NetworkMode")
        .and_then(|m| m.as_str())
        .filter(|m| !m.is_empty());
    match &r.config.run.network {
        _ if !r.config.networks.is_empty() => sent_mode
            .map(String::from)
            .unwrap_or_else(|| r.config.networks[0].name.clone()),
        _ if r.config.sandbox.is_some() => {
            format!("sandbox:{}", r.config.sandbox.as_deref().unwrap_or(""))
        }
        Network::None => "none".to_string(),
        Network::Host => "host".to_string(),
        Network::Container(c) => format!("container:{c}"),
        Network::Join(p) => p.display().to_string(),
    }
}

/// A field of the Docker API create body as sent (`section` is `Config` or `HostConfig`).
fn sent<'a>(r: &'a Record, section: &str, key: &str) -> Option<&'a serde_json::Value> {
    r.config.docker.as_ref()?.get(section)?.get(key)
}

/// A list as dockerd shows one it was given none of: `null` when empty.
fn list_or_null<T: Serialize>(v: &[T]) -> serde_json::Value {
    if v.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::json!(v)
    }
}

/// `Mounts[]` in `inspect`, with dockerd's `Mode`, `Propagation` and `Driver`.
fn mount_json(m: &MountPoint) -> serde_json::Value {
    let mut v = serde_json::to_value(m).unwrap_or_default();
    v["Mode"] = serde_json::json!(if m.typ == "bind" && !m.rw { "ro" } else { "" });
    v["Propagation"] = serde_json::json!(if m.typ == "bind" { "rprivate" } else { "" });
    if m.typ == "volume" {
        v["Driver"] = serde_json::json!("local");
    }
    v
}

/// `HostConfig` in `inspect`: every key dockerd's has. What berth acts on comes from the
/// record (so `update` shows); what it keeps without acting on is shown as the Docker API
/// client sent it, as dockerd echoes it.
fn host_config(r: &Record, network_mode: String, memory: i64, nano_cpus: i64) -> serde_json::Value {
    use serde_json::{json, Value};
    let run = &r.config.run;
    let c = &r.config;
    let restart = if c.restart.name == "no"
        && c.restart.max_retries == 0
        && sent(r, "HostConfig", "RestartPolicy")
            .and_then(|p| p.get("Name"))
            .and_then(|n| n.as_str())
            .unwrap_or("")
            .is_empty()
        && c.docker.is_some()
    {
        json!({"Name": "", "MaximumRetryCount": 0})
    } else {
        serde_json::to_value(&c.restart).unwrap_or_default()
    };
    let ulimits: Vec<Value> = run
        .ulimits
        .iter()
        .filter_map(|u| {
            let (name, v) = u.split_once('=')?;
            let (soft, hard) = v.split_once(':').unwrap_or((v, v));
            Some(json!({"Name": name, "Soft": soft.parse::<i64>().ok()?, "Hard": hard.parse::<i64>().ok()?}))
        })
        .collect();
    let mut ports = serde_json::Map::new();
    for m in &c.publish {
        let key = format!("{}/{}", m.container_port, m.protocol);
        let entry = ports.entry(key).or_insert_with(|| json!([]));
        if let Some(a) = entry.as_array_mut() {
            a.push(json!({
                "HostIp": m.host_ip,
                "HostPort": if m.host_port == 0 { String::new() } else { m.host_port.to_string() },
            }));
        }
    }
    let mut hc = json!({
        "AutoRemove": c.auto_remove,
        "Binds": Value::Null,
        "BlkioDeviceReadBps": [], "BlkioDeviceReadIOps": [], "BlkioDeviceWriteBps": [],
        "BlkioDeviceWriteIOps": [], "BlkioWeight": 0, "BlkioWeightDevice": [],
        "CapAdd": list_or_null(&run.cap_add),
        "CapDrop": list_or_null(&run.cap_drop),
        "Cgroup": "",
        "CgroupParent": run.cgroup_parent.clone().unwrap_or_default(),
        // Every container gets a cgroup namespace of its own.
        "CgroupnsMode": "private",
        "ConsoleSize": [0, 0],
        "ContainerIDFile": "",
        "CpuCount": 0, "CpuPercent": 0, "CpuPeriod": 0, "CpuQuota": 0,
        "CpuRealtimePeriod": 0, "CpuRealtimeRuntime": 0,
        "CpuShares": run.cpu_shares.unwrap_or(0),
        "CpusetCpus": "", "CpusetMems": "",
        "DeviceCgroupRules": Value::Null, "DeviceRequests": Value::Null, "Devices": [],
        "Dns": c.dns, "DnsOptions": c.dns_options, "DnsSearch": c.dns_search,
        "ExtraHosts": list_or_null(&c.extra_hosts),
        "GroupAdd": list_or_null(&run.group_add.iter().map(|g| g.to_string()).collect::<Vec<_>>()),
    });
    let more = json!({
        "IOMaximumBandwidth": 0, "IOMaximumIOps": 0,
        "IpcMode": match &run.ipc { Ipc::Host => "host".to_string(), Ipc::Container(c) => format!("container:{c}"), _ => "private".to_string() },
        "Isolation": "",
        "KernelMemory": 0, "KernelMemoryTCP": 0,
        // dockerd keeps a user-defined network's links on its endpoint.
        "Links": if c.networks.iter().any(|n| n.name == crate::network::DEFAULT_NETWORK) {
            list_or_null(&c.links.iter().map(|l| {
                let (name, alias) = l.split_once(':').unwrap_or((l, l));
                format!("/{name}:/{}/{alias}", r.name)
            }).collect::<Vec<_>>())
        } else {
            Value::Null
        },
        "LogConfig": {
            "Type": if c.log_driver.is_empty() { "json-file" } else { c.log_driver.as_str() },
            "Config": c.log_opts,
        },
        "MaskedPaths": if run.privileged { json!([]) } else { json!(crate::defaults::DEFAULT_MASKED_PATHS) },
        "Memory": memory,
        "MemoryReservation": 0,
        "MemorySwap": run.memory_swap.as_deref().and_then(|m| if m == "-1" { Some(-1) } else { runspec::parse_memory_unchecked(m).ok() }).unwrap_or(0),
        "MemorySwappiness": Value::Null,
        "NanoCpus": nano_cpus,
        "NetworkMode": network_mode,
        "OomKillDisable": false,
        "OomScoreAdj": 0,
        "PidMode": if run.pid_host { "host" } else { "" },
        "PidsLimit": run.pids_limit.filter(|p| *p != 0),
        "PortBindings": ports,
        "Privileged": run.privileged,
        "PublishAllPorts": c.publish_all,
        "ReadonlyPaths": if run.privileged { json!([]) } else { json!(crate::defaults::DEFAULT_READONLY_PATHS) },
        "ReadonlyRootfs": run.read_only,
        "RestartPolicy": restart,
        // Containers run on berth's own OCI runtime.
        "Runtime": "berth",
        "SecurityOpt": list_or_null(&run.security_opt),
        "ShmSize": run.shm_size.filter(|s| *s > 0).unwrap_or(64 * 1024 * 1024),
        "UTSMode": "",
        "Ulimits": ulimits,
        "UsernsMode": "",
        "VolumeDriver": "",
        "VolumesFrom": list_or_null(&c.volumes_from),
    });
    if let (Some(hc), Value::Object(more)) = (hc.as_object_mut(), more) {
        hc.extend(more);
    }
    if !run.sysctls.is_empty() {
        hc["Sysctls"] = json!(run.sysctls);
    }
    if c.init || sent(r, "HostConfig", "Init").is_some_and(|i| !i.is_null()) {
        hc["Init"] = json!(c.init);
    }
    if c.docker.is_some() && sent(r, "HostConfig", "PortBindings").is_none() {
        hc["PortBindings"] = Value::Null;
    }
    // What berth keeps without acting on, and the forms dockerd echoes, as sent.
    for key in [
        "Binds",
        "Tmpfs",
        "Mounts",
        "PortBindings",
        "GroupAdd",
        "ConsoleSize",
        "CgroupParent",
        "Isolation",
        "OomScoreAdj",
        "ContainerIDFile",
    ] {
        if let Some(v) = sent(r, "HostConfig", key) {
            hc[key] = v.clone();
        }
    }
    hc
}

/// `Config` in `inspect`.
fn container_config(r: &Record, health: Option<HealthConfig>) -> serde_json::Value {
    use serde_json::{json, Value};
    let run = &r.config.run;
    // The image's environment with the container's over it, entries without a value kept as
    // given (dockerd's Config.Env; the process gets only what has a value).
    let mut env: Vec<String> = r.image_config.env.clone().unwrap_or_default();
    for e in &run.env {
        let key = e.split_once('=').map(|(k, _)| k).unwrap_or(e);
        match env
            .iter_mut()
            .find(|x| x.split_once('=').map(|(k, _)| k).unwrap_or(x) == key)
        {
            Some(slot) => *slot = e.clone(),
            None => env.push(e.clone()),
        }
    }
    let mut cfg = json!({
        "AttachStderr": false, "AttachStdin": false, "AttachStdout": false,
        "Cmd": if run.args.is_empty() { r.image_config.cmd.clone() } else { Some(run.args.clone()) },
        "Domainname": "",
        "Entrypoint": match &run.entrypoint { Some(e) => Some(vec![e.clone()]), None => r.image_config.entrypoint.clone() },
        "Env": env,
        "Hostname": run.hostname.clone().unwrap_or_else(|| r.id[..12].to_string()),
        "Image": r.image,
        "Labels": run.labels,
        "OnBuild": Value::Null,
        "OpenStdin": r.config.open_stdin,
        "StdinOnce": r.config.stdin_once,
        "Tty": run.tty,
        "User": r.process.user,
        "Volumes": Value::Null,
        "WorkingDir": run.workdir.clone().or(r.image_config.working_dir.clone()).unwrap_or_default(),
    });
    if let Some(s) = run
        .stop_signal
        .clone()
        .or(r.image_config.stop_signal.clone())
    {
        cfg["StopSignal"] = json!(s);
    }
    if let Some(t) = r.config.stop_timeout {
        cfg["StopTimeout"] = json!(t);
    }
    if let Some(h) = health {
        cfg["Healthcheck"] = json!(h);
    }
    if let Some(p) = &r.image_config.exposed_ports {
        cfg["ExposedPorts"] = json!(p);
    }
    for key in [
        "AttachStderr",
        "AttachStdin",
        "AttachStdout",
        "Domainname",
        "Volumes",
        "ExposedPorts",
        "MacAddress",
    ] {
        if let Some(v) = sent(r, "Config", key).filter(|v| !v.is_null()) {
            cfg[key] = v.clone();
        }
    }
    cfg
}

fn inspect_json(r: &Record, log: &Path, dir: &Path) -> serde_json::Value {
    use serde_json::json;
    let run = &r.config.run;
    let (path, args) = match r.process.args.split_first() {
        Some((p, a)) => (p.clone(), a.to_vec()),
        None => (String::new(), Vec::new()),
    };
    let memory = run
        .memory
        .as_deref()
        .and_then(|m| runspec::parse_memory(m).ok())
        .unwrap_or(0);
    let nano_cpus = run
        .cpus
        .as_deref()
        .and_then(|c| c.parse::<f64>().ok())
        .map(|c| (c * 1e9) as i64)
        .unwrap_or(0);
    let network_mode = network_mode(r);
    let health = HealthConfig::merge(
        r.image_config.healthcheck.as_ref(),
        r.config.health.as_ref(),
    );
    let mut state = json!({
        "Status": r.state.status,
        "Running": matches!(r.state.status.as_str(), "running" | "paused"),
        "Paused": r.state.status == "paused",
        "Restarting": r.state.status == "restarting",
        "OOMKilled": r.state.oom_killed,
        "Dead": r.state.status == "dead",
        "Pid": r.state.pid,
        "ExitCode": r.state.exit_code,
        "Error": r.state.error,
        "StartedAt": if r.state.started_at.is_empty() { "0001-01-01T00:00:00Z" } else { &r.state.started_at },
        "FinishedAt": if r.state.finished_at.is_empty() { "0001-01-01T00:00:00Z" } else { &r.state.finished_at },
    });
    if let Some(h) = &r.state.health {
        state["Health"] = serde_json::to_value(h).unwrap_or_default();
    }
    json!({
        "Id": r.id,
        "Created": r.created,
        "Path": path,
        "Args": args,
        "State": state,
        "Image": r.image_id,
        "ResolvConfPath": dir.join("resolv.conf"),
        "HostnamePath": dir.join("hostname"),
        "HostsPath": dir.join("hosts"),
        "LogPath": log,
        "Name": format!("/{}", r.name),
        "RestartCount": r.state.restart_count,
        "Driver": "overlay2",
        "Platform": "linux",
        "MountLabel": "",
        "ProcessLabel": "",
        "AppArmorProfile": "",
        "HostConfig": host_config(r, network_mode, memory, nano_cpus),
        // dockerd lists `--mount type=tmpfs` but not HostConfig.Tmpfs (`--tmpfs`).
        "Mounts": r.mounts.iter().filter(|m| !(m.typ == "tmpfs" && sent(r, "HostConfig", "Tmpfs").is_some_and(|t| t.get(&m.destination).is_some()))).map(mount_json).collect::<Vec<_>>(),
        "Config": container_config(r, health),
        "ExecIDs": serde_json::Value::Null,
        "GraphDriver": {"Name": "overlay2", "Data": {"MergedDir": r.rootfs}},
        "NetworkSettings": network_settings(r),
    })
}

/// Parses `ps` output and keeps the rows of `pids` (the PID column found by its title).
pub fn parse_ps(
    out: &str,
    pids: &[i32],
) -> std::result::Result<(Vec<String>, Vec<Vec<String>>), String> {
    let mut lines = out.lines();
    let header = lines.next().ok_or("ps printed nothing")?;
    let titles: Vec<String> = header.split_whitespace().map(String::from).collect();
    let pid_col = titles
        .iter()
        .position(|t| t == "PID")
        .ok_or("Couldn't find PID field in ps output")?;
    let mut rows = Vec::new();
    for line in lines {
        let mut fields: Vec<String> = Vec::new();
        let mut rest = line.trim_start();
        for _ in 0..titles.len().saturating_sub(1) {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            fields.push(rest[..end].to_string());
            rest = rest[end..].trim_start();
        }
        fields.push(rest.to_string());
        let Some(pid) = fields.get(pid_col).and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if pids.contains(&pid) {
            rows.push(fields);
        }
    }
    Ok((titles, rows))
}

fn system_cpu_ns() -> u64 {
    // The first line of /proc/stat: jiffies per state; USER_HZ is 100 on Linux.
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let jiffies: u64 = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|v| v.parse::<u64>().ok())
        .sum();
    jiffies * 10_000_000
}

fn host_memory() -> u64 {
    fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn os_name() -> String {
    fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "Linux".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_policies() {
        let p = |s: &str| RestartPolicy::parse(s).unwrap();
        assert_eq!(p("on-failure:3").max_retries, 3);
        assert_eq!(p("").name, "no");
        assert!(RestartPolicy::parse("sometimes").is_err());
        assert!(RestartPolicy::parse("always:3").is_err());
        assert!(RestartPolicy::parse("on-failure:x").is_err());
        assert!(!p("no").wants_restart(1, false, 0));
        assert!(p("always").wants_restart(0, false, 50));
        assert!(!p("always").wants_restart(0, true, 0));
        assert!(p("on-failure").wants_restart(1, false, 100));
        assert!(!p("on-failure").wants_restart(0, false, 0));
        assert!(p("on-failure:2").wants_restart(1, false, 1));
        assert!(!p("on-failure:2").wants_restart(1, false, 2));
    }

    #[test]
    fn log_options() {
        let o = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        assert_eq!(rotation(&o("max-size", "1k")).unwrap().max_size, 1024);
        let mut both = o("max-size", "10m");
        both.insert("max-file".into(), "3".into());
        assert_eq!(rotation(&both).unwrap().max_file, 3);
        assert_eq!(rotation(&o("max-file", "3")).unwrap().max_file, 1);
        assert!(rotation(&o("max-size", "lots")).is_err());
        assert!(rotation(&o("compress", "true")).is_err());
    }

    #[test]
    fn ps_rows_by_pid() {
        let out = "UID   PID  PPID  C STIME TTY          TIME CMD\n\
                   root    1     0  0 10:00 ?        00:00:01 /sbin/init splash\n\
                   root  4242     1  0 10:01 ?        00:00:00 sleep 100\n";
        let (titles, rows) = parse_ps(out, &[4242]).unwrap();
        assert_eq!(titles.len(), 8);
        assert_eq!(
            rows,
            vec![vec![
                "root",
                "4242",
                "1",
                "0",
                "10:01",
                "?",
                "00:00:00",
                "sleep 100"
            ]]
        );
        assert!(parse_ps("USER COMMAND\n", &[1]).is_err());
    }

    #[test]
    fn command_errors_map_to_docker_exit_codes() {
        let code = |m: &str| match command_error(m.into()) {
            EngineError::Command { code, .. } => code,
            _ => 125,
        };
        assert_eq!(
            code("container setup: \"nope\": executable file not found in $PATH"),
            127
        );
        assert_eq!(code("exec /etc/passwd: permission denied"), 126);
        assert_eq!(code("cgroup trouble"), 125);
    }
}
