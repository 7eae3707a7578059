//! The Docker Engine API on the daemon's socket, next to berth's own: versioned
//! (`/v1.24/…` to `/v1.50/…`) and unversioned paths. Routes whose shapes are berth's own
//! already (start, stop, logs, attach, exec, archive, …) are served by the same handlers;
//! this module holds what differs: the bodies of create and the lists, images by path,
//! `version`, `_ping`'s headers and `wait`'s early headers.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use engine::engine::{Engine, EngineError};
use engine::spec::{MountSpec, Network, RunOptions};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::http::{self, Chunked, Head};
use crate::server::{bad_request, failure, parse_ref, Failure, Handled, Output};

/// The newest API version served (what docker 28 asks for).
pub const MAX_VERSION: (u32, u32) = (1, 50);
/// The oldest.
pub const MIN_VERSION: (u32, u32) = (1, 24);

/// The version header every Docker answer carries.
pub fn version_string() -> String {
    format!("{}.{}", MAX_VERSION.0, MAX_VERSION.1)
}

/// A request path: berth's own API (`/berth/v1/…`), or Docker's with its version checked
/// (`/v1.41/…`, or unversioned). Returns whether it is Docker's and the path under the
/// prefix.
pub(crate) fn split(path: &str) -> Result<(bool, &str), Failure> {
    if let Some(rest) = path.strip_prefix(crate::server::PREFIX) {
        return Ok((false, rest));
    }
    let Some(v) = path.strip_prefix("/v") else {
        return Ok((true, path));
    };
    let (ver, rest) = v.split_at(v.find('/').unwrap_or(v.len()));
    let parsed = ver
        .split_once('.')
        .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)));
    let Some(n) = parsed else {
        // Not a version (`/volumes`): an unversioned path.
        return Ok((true, path));
    };
    if n > MAX_VERSION {
        return Err(bad_request(format!(
            "client version {ver} is too new. Maximum supported API version is {}",
            version_string()
        )));
    }
    if n < MIN_VERSION {
        return Err(bad_request(format!(
            "client version {ver} is too old. Minimum supported API version is {}.{}, please upgrade your client to a newer version",
            MIN_VERSION.0, MIN_VERSION.1
        )));
    }
    Ok((true, rest))
}

/// `GET/HEAD /_ping`: `OK`, with the headers a client negotiates its version from.
pub(crate) fn ping(w: &mut UnixStream, head: bool) -> std::io::Result<()> {
    let v = version_string();
    let headers = [
        ("Api-Version", v.as_str()),
        ("Builder-Version", "1"),
        ("Docker-Experimental", "false"),
        ("Ostype", "linux"),
        ("Cache-Control", "no-cache, no-store, must-revalidate"),
        ("Pragma", "no-cache"),
    ];
    let body: &[u8] = if head { b"" } else { b"OK" };
    http::respond_with(w, 200, "text/plain; charset=utf-8", &headers, body)
}

/// `GET /version`.
pub(crate) fn version() -> Value {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let v = env!("CARGO_PKG_VERSION");
    json!({
        "Platform": {"Name": "berth"},
        "Components": [{
            "Name": "Engine",
            "Version": v,
            "Details": {
                "ApiVersion": version_string(),
                "MinAPIVersion": format!("{}.{}", MIN_VERSION.0, MIN_VERSION.1),
                "Os": "linux",
                "Arch": docker_arch(),
                "KernelVersion": kernel,
            },
        }],
        "Version": v,
        "ApiVersion": version_string(),
        "MinAPIVersion": format!("{}.{}", MIN_VERSION.0, MIN_VERSION.1),
        "GitCommit": "",
        "GoVersion": "",
        "Os": "linux",
        "Arch": docker_arch(),
        "KernelVersion": kernel,
        "BuildTime": "",
    })
}

fn docker_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// `GET /info`: the engine's, with the fields the docker CLI reads filled in.
pub(crate) fn info(engine: &Arc<Engine>) -> Value {
    let mut v = engine.info();
    let defaults = json!({
        "Driver": "overlay2",
        "LoggingDriver": "json-file",
        "CgroupDriver": "cgroupfs",
        "OSType": "linux",
        "Architecture": std::env::consts::ARCH,
        "IndexServerAddress": "https://index.docker.io/v1/",
        "RegistryConfig": {"IndexConfigs": {}, "InsecureRegistryCIDRs": ["127.0.0.0/8"], "Mirrors": []},
        "Plugins": {"Volume": ["local"], "Network": ["bridge", "host", "none"], "Log": ["json-file"]},
        "SecurityOptions": ["name=seccomp,profile=builtin"],
        "Warnings": [],
        // dockerd reports both; clients read them (docker-py's tests, `docker info`).
        "Debug": false,
        "ExperimentalBuild": false,
    });
    if let (Some(o), Some(d)) = (v.as_object_mut(), defaults.as_object()) {
        for (k, x) in d {
            o.entry(k.clone()).or_insert_with(|| x.clone());
        }
    }
    v
}

/// A field a Go client may send as `null` (a nil map or slice): its default then.
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Docker's `POST /containers/create` body. Fields berth has no use for are accepted and
/// ignored, as dockerd ignores what a platform lacks; wrong types are refused.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct CreateBody {
    image: String,
    cmd: Option<StrOrList>,
    entrypoint: Option<StrOrList>,
    env: Option<Vec<String>>,
    working_dir: String,
    user: String,
    hostname: String,
    tty: bool,
    open_stdin: bool,
    stdin_once: bool,
    labels: Option<BTreeMap<String, String>>,
    exposed_ports: Option<BTreeMap<String, Value>>,
    stop_signal: String,
    stop_timeout: Option<i64>,
    healthcheck: Option<Value>,
    volumes: Option<BTreeMap<String, Value>>,
    host_config: HostConfig,
    networking_config: Option<NetworkingConfig>,
}

/// A string or a list of strings (Cmd and Entrypoint take both).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StrOrList {
    One(String),
    Many(Vec<String>),
}

impl StrOrList {
    fn into_vec(self) -> Vec<String> {
        match self {
            StrOrList::One(s) => vec!["/bin/sh".into(), "-c".into(), s],
            StrOrList::Many(v) => v,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct HostConfig {
    binds: Option<Vec<String>>,
    mounts: Option<Vec<MountBody>>,
    tmpfs: Option<BTreeMap<String, String>>,
    port_bindings: Option<BTreeMap<String, Option<Vec<PortBinding>>>>,
    publish_all_ports: bool,
    restart_policy: Option<engine::RestartPolicy>,
    auto_remove: bool,
    network_mode: String,
    ipc_mode: String,
    privileged: bool,
    readonly_rootfs: bool,
    cap_add: Option<Vec<String>>,
    cap_drop: Option<Vec<String>>,
    security_opt: Option<Vec<String>>,
    memory: i64,
    memory_swap: i64,
    nano_cpus: i64,
    cpu_shares: i64,
    pids_limit: Option<i64>,
    ulimits: Option<Vec<Ulimit>>,
    init: Option<bool>,
    log_config: Option<LogConfig>,
    shm_size: i64,
    sysctls: Option<BTreeMap<String, String>>,
    group_add: Option<Vec<String>>,
    extra_hosts: Option<Vec<String>>,
    dns: Option<Vec<String>>,
    dns_search: Option<Vec<String>>,
    dns_options: Option<Vec<String>>,
    volumes_from: Option<Vec<String>>,
    pid_mode: String,
    cgroup_parent: String,
    links: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct PortBinding {
    host_ip: String,
    host_port: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct Ulimit {
    name: String,
    soft: i64,
    hard: i64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct LogConfig {
    #[serde(rename = "Type", deserialize_with = "null_default")]
    kind: String,
    #[serde(deserialize_with = "null_default")]
    config: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct MountBody {
    #[serde(rename = "Type")]
    kind: String,
    source: String,
    target: String,
    read_only: bool,
    tmpfs_options: Option<TmpfsOptions>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct TmpfsOptions {
    size_bytes: Option<u64>,
    mode: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct NetworkingConfig {
    #[serde(deserialize_with = "null_default")]
    endpoints_config: BTreeMap<String, EndpointBody>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct EndpointBody {
    aliases: Option<Vec<String>>,
    links: Option<Vec<String>>,
    #[serde(rename = "IPAMConfig")]
    ipam_config: Option<IpamBody>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct IpamBody {
    #[serde(rename = "IPv4Address", deserialize_with = "null_default")]
    ipv4: String,
}

/// `-v` syntax: `src:dst[:opts]`; a source that is not a path is a volume.
fn bind(s: &str) -> Result<MountSpec, Failure> {
    let parts: Vec<&str> = s.split(':').collect();
    let (src, dst, mode) = match parts.as_slice() {
        [dst] => ("", *dst, ""),
        [src, dst] => (*src, *dst, ""),
        [src, dst, mode] => (*src, *dst, *mode),
        _ => return Err(bad_request(format!("invalid volume specification: '{s}'"))),
    };
    if !dst.starts_with('/') {
        return Err(bad_request(format!(
            "invalid volume specification: '{s}': invalid mount config: the container path must be absolute"
        )));
    }
    let read_only = mode.split(',').any(|o| o == "ro");
    Ok(if src.starts_with('/') {
        MountSpec::Bind {
            source: src.into(),
            target: dst.into(),
            read_only,
        }
    } else {
        MountSpec::Volume {
            name: src.into(),
            target: dst.into(),
            read_only,
        }
    })
}

/// Docker's create body (and `?name=`) as the engine's request.
fn create_request(head: &Head, b: CreateBody) -> Result<engine::CreateRequest, Failure> {
    if b.image.is_empty() {
        return Err(bad_request(
            "config cannot be empty in order to create a container",
        ));
    }
    let h = b.host_config;
    // Entrypoint given: its first word replaces the image's, the rest go before Cmd.
    let cmd = b.cmd.map(StrOrList::into_vec).unwrap_or_default();
    let (entrypoint, args) = match b.entrypoint.map(StrOrList::into_vec) {
        Some(ep) if ep.is_empty() => (Some(String::new()), cmd),
        Some(ep) => {
            let mut args: Vec<String> = ep[1..].to_vec();
            args.extend(cmd);
            (Some(ep[0].clone()), args)
        }
        None => (None, cmd),
    };
    let mut mounts = Vec::new();
    for s in h.binds.iter().flatten() {
        mounts.push(bind(s)?);
    }
    for m in h.mounts.iter().flatten() {
        if !m.target.starts_with('/') {
            return Err(bad_request(format!(
                "invalid mount config: the target {:?} must be an absolute path",
                m.target
            )));
        }
        mounts.push(match m.kind.as_str() {
            "bind" => {
                if !m.source.starts_with('/') {
                    return Err(bad_request(format!(
                        "invalid mount config for type \"bind\": invalid mount path: '{}' mount path must be absolute",
                        m.source
                    )));
                }
                MountSpec::Bind {
                    source: m.source.clone().into(),
                    target: m.target.clone(),
                    read_only: m.read_only,
                }
            }
            "volume" => MountSpec::Volume {
                name: m.source.clone(),
                target: m.target.clone(),
                read_only: m.read_only,
            },
            "tmpfs" => MountSpec::Tmpfs {
                target: m.target.clone(),
                size: m.tmpfs_options.as_ref().and_then(|o| o.size_bytes),
                mode: m.tmpfs_options.as_ref().and_then(|o| o.mode),
            },
            k => {
                return Err(bad_request(format!(
                    "invalid mount config: mount type unknown: {k:?}"
                )))
            }
        });
    }
    for (target, opts) in h.tmpfs.iter().flatten() {
        let mut size = None;
        let mut mode = None;
        for o in opts.split(',').filter(|o| !o.is_empty()) {
            match o.split_once('=') {
                Some(("size", v)) => {
                    size = Some(
                        engine::spec::parse_memory_unchecked(v)
                            .map_err(|e| bad_request(e.to_string()))?
                            as u64,
                    )
                }
                Some(("mode", v)) => {
                    mode = Some(
                        u32::from_str_radix(v, 8)
                            .map_err(|_| bad_request(format!("invalid tmpfs mode {v:?}")))?,
                    )
                }
                _ => {}
            }
        }
        mounts.push(MountSpec::Tmpfs {
            target: target.into(),
            size,
            mode,
        });
    }
    let mode = match h.network_mode.as_str() {
        "" | "default" => "bridge",
        m => m,
    };
    let network = match mode {
        "none" | "host" => Network::parse(mode).map_err(|e| bad_request(e.to_string()))?,
        m if m.starts_with("container:") => {
            Network::parse(m).map_err(|e| bad_request(e.to_string()))?
        }
        _ => Network::None,
    };
    let bridge = !matches!(mode, "none" | "host") && !mode.starts_with("container:");
    let endpoints = b
        .networking_config
        .map(|n| n.endpoints_config)
        .unwrap_or_default();
    let endpoint = |name: &str| {
        let ep = endpoints.get(name);
        engine::engine::EndpointRequest {
            name: name.to_string(),
            aliases: ep.and_then(|e| e.aliases.clone()).unwrap_or_default(),
            ip: ep
                .and_then(|e| e.ipam_config.as_ref())
                .map(|i| i.ipv4.clone())
                .filter(|i| !i.is_empty()),
        }
    };
    // NetworkMode's network first (eth0), then the others EndpointsConfig names (API 1.44+
    // clients, compose among them, attach them all at create).
    let networks = if bridge {
        let mut v = vec![endpoint(mode)];
        // The CLI names NetworkMode's own endpoint as it wrote the mode (`default`).
        let own = |n: &str| n == mode || n == h.network_mode || n == "default";
        for name in endpoints.keys().filter(|n| !own(n)) {
            v.push(endpoint(name));
        }
        v
    } else {
        Vec::new()
    };
    let mut publish = Vec::new();
    for (port, bindings) in h.port_bindings.iter().flatten() {
        let (num, proto) = port.split_once('/').unwrap_or((port, "tcp"));
        for b in bindings.iter().flatten() {
            let spec = match (b.host_ip.as_str(), b.host_port.as_str()) {
                ("", "") => format!("{num}/{proto}"),
                ("", hp) => format!("{hp}:{num}/{proto}"),
                (ip, hp) => format!("{ip}:{hp}:{num}/{proto}"),
            };
            publish.extend(engine::network::parse_publish(&spec).map_err(bad_request)?);
        }
    }
    let mut log_opts = BTreeMap::new();
    let mut log_driver = String::new();
    if let Some(l) = h.log_config {
        log_driver = l.kind;
        log_opts = l.config;
    }
    // Config.Volumes: an anonymous volume at each path nothing else is mounted on.
    for target in b.volumes.iter().flat_map(|v| v.keys()) {
        if !target.starts_with('/') {
            return Err(bad_request(format!(
                "invalid volume specification: '{target}': the container path must be absolute"
            )));
        }
        if !mounts.iter().any(|m| m.target() == target) {
            mounts.push(MountSpec::Volume {
                name: String::new(),
                target: target.clone(),
                read_only: false,
            });
        }
    }
    let mut group_add = Vec::new();
    for g in h.group_add.iter().flatten() {
        group_add.push(g.parse::<u32>().map_err(|_| {
            bad_request(format!(
                "GroupAdd: {g:?}: berth takes numeric group IDs (a group name is not looked up)"
            ))
        })?);
    }
    let pid_host = match h.pid_mode.as_str() {
        "" => false,
        "host" => true,
        m => return Err(bad_request(format!("invalid PID mode: {m}"))),
    };
    if h.shm_size < 0 {
        return Err(bad_request("SHM size can not be less than 0"));
    }
    let run = RunOptions {
        args,
        entrypoint,
        env: b.env.unwrap_or_default(),
        workdir: Some(b.working_dir).filter(|w| !w.is_empty()),
        user: Some(b.user).filter(|u| !u.is_empty()),
        hostname: Some(b.hostname).filter(|u| !u.is_empty()),
        tty: b.tty,
        read_only: h.readonly_rootfs,
        privileged: h.privileged,
        cap_add: h.cap_add.unwrap_or_default(),
        cap_drop: h.cap_drop.unwrap_or_default(),
        security_opt: h.security_opt.unwrap_or_default(),
        seccomp_profile: None,
        memory: (h.memory > 0).then(|| h.memory.to_string()),
        memory_swap: (h.memory_swap != 0).then(|| h.memory_swap.to_string()),
        cpus: (h.nano_cpus > 0).then(|| format!("{}", h.nano_cpus as f64 / 1e9)),
        cpu_shares: (h.cpu_shares > 0).then_some(h.cpu_shares as u64),
        pids_limit: h.pids_limit.filter(|p| *p != 0),
        ulimits: h
            .ulimits
            .unwrap_or_default()
            .into_iter()
            .map(|u| format!("{}={}:{}", u.name, u.soft, u.hard))
            .collect(),
        mounts,
        network,
        ipc: engine::spec::Ipc::parse(&h.ipc_mode).map_err(|e| bad_request(e.to_string()))?,
        uts_join: None,
        labels: b.labels.unwrap_or_default(),
        stop_signal: Some(b.stop_signal).filter(|s| !s.is_empty()),
        cgroup_parent: Some(h.cgroup_parent).filter(|c| !c.is_empty()),
        group_add,
        sysctls: h.sysctls.unwrap_or_default(),
        pid_host,
        shm_size: (h.shm_size > 0).then_some(h.shm_size as u64),
    };
    if let Some(m) = &run.memory {
        engine::spec::parse_memory(m).map_err(|e| bad_request(e.to_string()))?;
    }
    let restart = h.restart_policy.unwrap_or_default();
    let restart = engine::RestartPolicy {
        name: if restart.name.is_empty() {
            "no".into()
        } else {
            restart.name
        },
        ..restart
    };
    engine::RestartPolicy::parse(&restart.name).map_err(bad_request)?;
    if h.auto_remove && restart.name != "no" {
        return Err(bad_request(
            "conflicting options: cannot specify both --restart and --rm",
        ));
    }
    let health = match b.healthcheck {
        Some(v) => {
            Some(serde_json::from_value(v).map_err(|e| bad_request(format!("Healthcheck: {e}")))?)
        }
        None => None,
    };
    let _ = b.exposed_ports;
    Ok(engine::CreateRequest {
        image: b.image,
        name: head.q("name").filter(|n| !n.is_empty()).map(String::from),
        run,
        open_stdin: b.open_stdin,
        stdin_once: b.stdin_once,
        restart,
        health,
        init: h.init.unwrap_or(false),
        auto_remove: h.auto_remove,
        log_opts,
        stop_timeout: b.stop_timeout,
        sandbox: None,
        networks,
        publish,
        publish_all: h.publish_all_ports,
        dns: h.dns.unwrap_or_default(),
        dns_search: h.dns_search.unwrap_or_default(),
        dns_options: h.dns_options.unwrap_or_default(),
        extra_hosts: h.extra_hosts.unwrap_or_default(),
        volumes_from: h.volumes_from.unwrap_or_default(),
        // `name:alias`, or Docker's stored form `/name:/container/alias`.
        links: h
            .links
            .unwrap_or_default()
            .iter()
            .chain(endpoints.values().flat_map(|e| e.links.iter().flatten()))
            .map(|l| {
                let (name, alias) = l.split_once(':').unwrap_or((l, l));
                let alias = alias.rsplit('/').next().unwrap_or(alias);
                format!("{}:{alias}", name.trim_start_matches('/'))
            })
            .collect(),
        log_driver,
        docker: None,
    })
}

/// Docker's `POST /containers/{id}/update` body (`UpdateConfig`): resources and the restart
/// policy. Zero values mean "unchanged", as in dockerd; resources berth does not manage are
/// refused when set rather than ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct UpdateBody {
    memory: i64,
    memory_swap: i64,
    nano_cpus: i64,
    cpu_shares: i64,
    pids_limit: Option<i64>,
    restart_policy: Option<engine::RestartPolicy>,
    #[serde(flatten)]
    rest: BTreeMap<String, Value>,
}

/// `POST /containers/{id}/update`.
pub(crate) fn update(engine: &Arc<Engine>, id: &str, body: &mut (impl Read + ?Sized)) -> Handled {
    let u = update_request(body)?;
    engine.update_resources(id, &u)?;
    Ok(Output::Json(200, json!({"Warnings": null})))
}

/// The engine's request of a Docker update body.
pub(crate) fn update_request(
    body: &mut (impl Read + ?Sized),
) -> Result<engine::UpdateRequest, Failure> {
    let b: UpdateBody = crate::server::json_body(body)?;
    for (k, v) in &b.rest {
        let unset = match v {
            Value::Null => true,
            Value::Bool(b) => !b,
            Value::Number(n) => n.as_f64() == Some(0.0),
            Value::String(s) => s.is_empty(),
            Value::Array(a) => a.is_empty(),
            Value::Object(o) => o.is_empty(),
        };
        if !unset {
            return Err(bad_request(format!(
                "{k}: berth cannot update this setting (it updates Memory, MemorySwap, NanoCpus, CpuShares, PidsLimit and RestartPolicy)"
            )));
        }
    }
    let u = engine::UpdateRequest {
        memory: (b.memory > 0).then(|| b.memory.to_string()),
        memory_swap: (b.memory_swap != 0).then(|| b.memory_swap.to_string()),
        cpus: (b.nano_cpus > 0).then(|| format!("{}", b.nano_cpus as f64 / 1e9)),
        cpu_shares: (b.cpu_shares > 0).then_some(b.cpu_shares as u64),
        pids_limit: b.pids_limit.filter(|p| *p != 0),
        restart: b.restart_policy.filter(|p| !p.name.is_empty()).map(|p| {
            if p.max_retries > 0 {
                format!("{}:{}", p.name, p.max_retries)
            } else {
                p.name
            }
        }),
    };
    Ok(u)
}

/// The engine's request of a Docker container-create body.
pub(crate) fn create_body(
    head: &Head,
    body: &mut (impl Read + ?Sized),
) -> Result<engine::CreateRequest, Failure> {
    let raw: Value = crate::server::json_body(body)?;
    let b: CreateBody = serde_path_to_error::deserialize(&raw)
        .map_err(|e| bad_request(format!("invalid request body: {}: {}", e.path(), e.inner())))?;
    let mut req = create_request(head, b)?;
    // Kept as sent, for inspect's fields berth keeps without acting on.
    let mut config = raw;
    let host_config = config
        .as_object_mut()
        .and_then(|c| {
            c.remove("NetworkingConfig");
            c.remove("HostConfig")
        })
        .unwrap_or(Value::Null);
    req.docker = Some(json!({"Config": config, "HostConfig": host_config}));
    Ok(req)
}

/// `POST /containers/create`.
pub(crate) fn create(
    engine: &Arc<Engine>,
    head: &Head,
    body: &mut (impl Read + ?Sized),
) -> Handled {
    let req = create_body(head, body)?;
    let image = req.image.clone();
    match engine.create(req) {
        Ok(rec) => Ok(Output::Json(201, json!({"Id": rec.id, "Warnings": []}))),
        // The docker CLI pulls on exactly this message, then creates again.
        Err(EngineError::NoSuchImage(_)) => Err(failure(
            404,
            format!("No such image: {}", familiar_with_tag(&image)),
        )),
        Err(e) => Err(e.into()),
    }
}

fn familiar_with_tag(name: &str) -> String {
    match image::reference::Reference::parse(name) {
        Ok(r) if r.tag().is_none() && r.digest().is_none() => r
            .with_tag("latest")
            .map(|r| r.familiar())
            .unwrap_or_else(|_| name.to_string()),
        Ok(r) => r.familiar(),
        Err(_) => name.to_string(),
    }
}

/// `filters=` of the list endpoints: `{"key": ["v", …]}` (or the old `{"key": {"v": true}}`).
fn filters(head: &Head) -> Result<BTreeMap<String, Vec<String>>, Failure> {
    let Some(f) = head.q("filters").filter(|f| !f.is_empty()) else {
        return Ok(BTreeMap::new());
    };
    let v: Value =
        serde_json::from_str(f).map_err(|e| bad_request(format!("invalid filter: {e}")))?;
    let mut out = BTreeMap::new();
    for (k, x) in v.as_object().into_iter().flatten() {
        let vals: Vec<String> = match x {
            Value::Array(a) => a
                .iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect(),
            Value::Object(o) => o.keys().cloned().collect(),
            _ => return Err(bad_request(format!("invalid filter {k:?}"))),
        };
        out.insert(k.clone(), vals);
    }
    Ok(out)
}

/// `filters=` as `key=value` pairs (events).
pub(crate) fn filter_pairs(head: &Head) -> Result<Vec<String>, Failure> {
    Ok(filters(head)?
        .into_iter()
        .flat_map(|(k, vs)| vs.into_iter().map(move |v| format!("{k}={v}")))
        .collect())
}

/// Refuses filter keys outside `known`: a client filtering a prune or a list must not have
/// its filter dropped (ignoring a `label` filter on a prune would remove what it keeps).
fn only_filters(f: &BTreeMap<String, Vec<String>>, known: &[&str]) -> Result<(), Failure> {
    match f.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(bad_request(format!("invalid filter '{k}'"))),
        None => Ok(()),
    }
}

/// Docker's `label` filter values (`key` or `key=value`, all must hold) and `label!` (none may).
fn labels_match(f: &BTreeMap<String, Vec<String>>, labels: &BTreeMap<String, String>) -> bool {
    let has = |l: &String| match l.split_once('=') {
        Some((k, v)) => labels.get(k).is_some_and(|x| x == v),
        None => labels.contains_key(l),
    };
    f.get("label").is_none_or(|ls| ls.iter().all(has))
        && f.get("label!").is_none_or(|ls| !ls.iter().any(has))
}

/// Docker's `until` filter: a timestamp or a duration before now, as nanoseconds.
fn until(f: &BTreeMap<String, Vec<String>>) -> Result<Option<i128>, Failure> {
    let Some(v) = f.get("until").and_then(|v| v.first()) else {
        return Ok(None);
    };
    timefmt::parse_time_arg(v, timefmt::now_nanos())
        .map(Some)
        .ok_or_else(|| {
            bad_request(format!(
                "invalid filter 'until={v}': not a timestamp or a duration"
            ))
        })
}

/// dockerd's `name` filter values, each a regular expression (`None`: no such filter).
fn name_regexes(f: &BTreeMap<String, Vec<String>>) -> Result<Option<Vec<regex::Regex>>, Failure> {
    f.get("name")
        .map(|vals| {
            vals.iter()
                .map(|v| {
                    regex::Regex::new(v)
                        .map_err(|e| bad_request(format!("invalid filter 'name={v}': {e}")))
                })
                .collect()
        })
        .transpose()
}

/// The minor version of a versioned Docker API path (`/v1.41/…` is 41).
fn api_version(head: &Head) -> Option<u32> {
    let rest = head.path.strip_prefix("/v1.")?;
    rest.split('/').next()?.parse().ok()
}

/// `GET /volumes` with dockerd's filters `name` (a regular expression), `label`, `label!`,
/// `dangling` and `driver`.
pub(crate) fn list_volumes(engine: &Arc<Engine>, head: &Head) -> Handled {
    let f = filters(head)?;
    only_filters(&f, &["name", "label", "label!", "dangling", "driver"])?;
    let names = name_regexes(&f)?;
    let dangling = match f
        .get("dangling")
        .and_then(|v| v.first())
        .map(String::as_str)
    {
        None => None,
        Some("true" | "1") => Some(true),
        Some("false" | "0") => Some(false),
        Some(v) => return Err(bad_request(format!("invalid filter 'dangling={v}'"))),
    };
    let list: Vec<_> = engine
        .volumes
        .list()
        .into_iter()
        .filter(|v| {
            names
                .as_ref()
                .is_none_or(|rs| rs.iter().any(|r| r.is_match(&v.name)))
                && labels_match(&f, &v.labels)
                && f.get("driver")
                    .is_none_or(|d| d.iter().any(|d| d == "local"))
                && dangling.is_none_or(|d| d == engine.volume_users(&v.name).is_empty())
        })
        .collect();
    Ok(Output::Json(
        200,
        json!({"Volumes": list, "Warnings": null}),
    ))
}

/// `POST /volumes/prune` with dockerd's filters `all` (named volumes too, not only
/// anonymous ones), `label` and `label!`.
pub(crate) fn prune_volumes(engine: &Arc<Engine>, head: &Head) -> Handled {
    let f = filters(head)?;
    // Before API 1.42 a prune removed named volumes too, and `all` was not a filter.
    let before_142 = api_version(head).is_some_and(|v| v < 42);
    if before_142 && f.contains_key("all") {
        return Err(bad_request("Invalid filter 'all'"));
    }
    only_filters(&f, &["all", "label", "label!"])?;
    let all = before_142
        || f.get("all")
            .is_some_and(|v| v.iter().any(|v| v == "true" || v == "1"));
    let (gone, bytes) = engine.volume_prune_matching(all, &|v| labels_match(&f, &v.labels));
    Ok(Output::Json(
        200,
        json!({
            "VolumesDeleted": if gone.is_empty() { Value::Null } else { json!(gone) },
            "SpaceReclaimed": bytes,
        }),
    ))
}

/// `POST /containers/prune` with dockerd's filters `until`, `label` and `label!`.
pub(crate) fn prune_containers(engine: &Arc<Engine>, head: &Head) -> Handled {
    let f = filters(head)?;
    only_filters(&f, &["until", "label", "label!"])?;
    let before = until(&f)?;
    let (gone, bytes) = engine.container_prune_matching(&|c| {
        labels_match(&f, &c.labels)
            && before.is_none_or(|t| timefmt::parse_rfc3339(&c.created).is_some_and(|c| c < t))
    });
    Ok(Output::Json(
        200,
        json!({
            "ContainersDeleted": if gone.is_empty() { Value::Null } else { json!(gone) },
            "SpaceReclaimed": bytes,
        }),
    ))
}

/// `GET /containers/json`: Docker's container summaries.
pub(crate) fn list_containers(engine: &Arc<Engine>, head: &Head) -> Handled {
    let f = filters(head)?;
    for k in f.keys() {
        if !matches!(
            k.as_str(),
            "id" | "name" | "label" | "status" | "ancestor" | "exited" | "network"
        ) {
            return Err(bad_request(format!("invalid filter '{k}'")));
        }
    }
    let all = head.flag("all") || f.contains_key("status") || f.contains_key("exited");
    // dockerd matches `name` as a regular expression against `/name`.
    let names = name_regexes(&f)?;
    let mut list = engine.list(all, head.flag("size"));
    // Each network's ID, read once for the whole list.
    let network_ids: BTreeMap<String, String> = engine
        .networks
        .list()
        .into_iter()
        .map(|n| (n.name, n.id))
        .collect();
    let matches = |key: &str, test: &dyn Fn(&str) -> bool| {
        f.get(key).is_none_or(|vals| vals.iter().any(|v| test(v)))
    };
    list.retain(|c| {
        matches("id", &|v| c.id.starts_with(v))
            && names
                .as_ref()
                .is_none_or(|rs| rs.iter().any(|r| r.is_match(&format!("/{}", c.name))))
            && matches("status", &|v| c.state == v)
            && matches("ancestor", &|v| c.image == v || c.image_id.contains(v))
            && matches("exited", &|v| {
                c.state == "exited" && c.exit_code.to_string() == v
            })
            && matches("network", &|v| c.networks.iter().any(|n| n == v))
            && labels_match(&f, &c.labels)
    });
    if let Some(n) = head.q("limit").and_then(|n| n.parse::<usize>().ok()) {
        if n > 0 {
            list.truncate(n);
        }
    }
    let out: Vec<Value> = list
        .iter()
        .map(|c| {
            let ports: Vec<Value> = c
                .ports
                .iter()
                .map(|p| {
                    json!({
                        "IP": if p.host_ip.is_empty() { "0.0.0.0" } else { p.host_ip.as_str() },
                        "PrivatePort": p.container_port,
                        "PublicPort": p.host_port,
                        "Type": p.protocol,
                    })
                })
                .collect();
            let networks: serde_json::Map<String, Value> = c
                .networks
                .iter()
                .map(|n| {
                    let a = c.addresses.iter().find(|a| &a.network == n);
                    let text = |f: fn(&engine::engine::Address) -> &str| a.map(f).unwrap_or("");
                    (
                        n.clone(),
                        json!({
                            "NetworkID": network_ids.get(n).cloned().unwrap_or_default(),
                            "IPAddress": text(|a| &a.ip),
                            "IPPrefixLen": a.map(|a| a.prefix).unwrap_or(0),
                            "Gateway": text(|a| &a.gateway),
                            "MacAddress": text(|a| &a.mac),
                            "IPAMConfig": Value::Null, "Links": Value::Null, "Aliases": Value::Null,
                            "DriverOpts": Value::Null, "EndpointID": "", "IPv6Gateway": "",
                            "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0,
                        }),
                    )
                })
                .collect();
            let mut v = json!({
                "Id": c.id,
                "Names": [format!("/{}", c.name)],
                "Image": c.image,
                "ImageID": c.image_id,
                "Command": c.command,
                "Created": unix(&c.created),
                "Ports": ports,
                "Labels": c.labels,
                "State": c.state,
                "Status": c.status,
                "HostConfig": {"NetworkMode": c.network_mode},
                "NetworkSettings": {"Networks": networks},
                "Mounts": c.mounts,
            });
            if let Some(s) = c.size_rw {
                v["SizeRw"] = json!(s);
            }
            v
        })
        .collect();
    Ok(Output::Json(200, Value::Array(out)))
}

/// RFC 3339 as Unix seconds (0 when unreadable).
fn unix(t: &str) -> i64 {
    timefmt::parse_rfc3339(t)
        .map(|n| (n / 1_000_000_000) as i64)
        .unwrap_or(0)
}

/// `POST /containers/{id}/wait`: the headers at once (a client that waits before it starts
/// the container knows it is waiting), the status at exit.
pub(crate) fn wait(engine: &Arc<Engine>, id: &str, head: &Head, w: &mut UnixStream) -> Handled {
    let condition = crate::server::wait_condition(head)?;
    // A container that does not exist is an error answer, not a stream.
    engine.record(id)?;
    http::respond_stream_head(w, 200, "application/json")
        .map_err(|e| failure(500, e.to_string()))?;
    let mut out = Chunked(w.try_clone().map_err(|e| failure(500, e.to_string()))?);
    let v = match engine.wait(id, condition) {
        Ok(code) => json!({"StatusCode": code}),
        Err(e) => json!({"StatusCode": -1, "Error": {"Message": e.to_string()}}),
    };
    let mut line = serde_json::to_vec(&v).unwrap_or_default();
    line.push(b'\n');
    let _ = out.write_all(&line);
    let _ = out.finish();
    Ok(Output::Done)
}

/// A Unix mode as Go's `os.FileMode` (what the docker CLI decodes).
pub(crate) fn go_file_mode(mode: u32) -> u32 {
    let mut m = mode & 0o777;
    match mode & libc::S_IFMT {
        libc::S_IFDIR => m |= 1 << 31,
        libc::S_IFLNK => m |= 1 << 27,
        libc::S_IFIFO => m |= 1 << 25,
        libc::S_IFSOCK => m |= 1 << 24,
        libc::S_IFBLK => m |= 1 << 26,
        libc::S_IFCHR => m |= (1 << 26) | (1 << 21),
        _ => {}
    }
    if mode & libc::S_ISUID != 0 {
        m |= 1 << 23;
    }
    if mode & libc::S_ISGID != 0 {
        m |= 1 << 22;
    }
    if mode & libc::S_ISVTX != 0 {
        m |= 1 << 20;
    }
    m
}

/// Docker's `POST /containers/{id}/exec` body.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct ExecBody {
    cmd: Vec<String>,
    env: Option<Vec<String>>,
    user: String,
    working_dir: String,
    tty: bool,
    attach_stdin: bool,
    privileged: bool,
    // docker-py writes it `detachKeys` (Go's decoding takes any case).
    #[serde(alias = "detachKeys")]
    detach_keys: String,
}

/// `POST /containers/{id}/exec`.
pub(crate) fn exec_create(
    engine: &Arc<Engine>,
    id: &str,
    body: &mut (impl Read + ?Sized),
) -> Handled {
    let exec_id = engine.exec_create(id, exec_request(body)?)?;
    Ok(Output::Json(201, json!({ "Id": exec_id })))
}

/// The engine's request of a Docker exec-create body.
pub(crate) fn exec_request(
    body: &mut (impl Read + ?Sized),
) -> Result<engine::ExecRequest, Failure> {
    let b: ExecBody = crate::server::json_body(body)?;
    if b.cmd.is_empty() {
        return Err(bad_request("No exec command specified"));
    }
    Ok(engine::ExecRequest {
        cmd: b.cmd,
        env: b.env.unwrap_or_default(),
        user: Some(b.user).filter(|u| !u.is_empty()),
        workdir: Some(b.working_dir).filter(|w| !w.is_empty()),
        tty: b.tty,
        stdin: b.attach_stdin,
        privileged: b.privileged,
        detach_keys: {
            crate::server::detach_keys(&b.detach_keys)?;
            Some(b.detach_keys).filter(|k| !k.is_empty())
        },
    })
}

/// A network as Docker shows it.
fn network_doc(engine: &Arc<Engine>, name: &str) -> Result<Value, Failure> {
    let mut v = engine.network_inspect(name)?;
    if let Some(o) = v.as_object_mut() {
        o.remove("Subnet");
        o.remove("Gateway");
        o.remove("Bridge");
        o.entry("EnableIPv6").or_insert(json!(false));
        o.entry("Attachable").or_insert(json!(false));
        o.entry("Ingress").or_insert(json!(false));
        o.entry("ConfigOnly").or_insert(json!(false));
        o.entry("ConfigFrom").or_insert(json!({"Network": ""}));
        o.entry("Options").or_insert(json!({}));
    }
    Ok(v)
}

/// `host` and `none`, which every Docker daemon lists.
fn builtin_network(name: &str) -> Value {
    let driver = if name == "host" { "host" } else { "null" };
    json!({
        "Name": name, "Id": image::digest::Digest::of(name.as_bytes()).hex(), "Created": "0001-01-01T00:00:00Z",
        "Scope": "local", "Driver": driver, "EnableIPv6": false, "Internal": false,
        "Attachable": false, "Ingress": false, "ConfigOnly": false,
        "IPAM": {"Driver": "default", "Config": []}, "Containers": {}, "Options": {}, "Labels": {},
    })
}

/// `/networks…` with Docker's bodies and shapes.
pub(crate) fn networks(
    engine: &Arc<Engine>,
    method: &str,
    parts: &[&str],
    head: &Head,
    body: &mut (impl Read + ?Sized),
) -> Handled {
    match (method, parts) {
        ("GET", []) => {
            let f = filters(head)?;
            only_filters(&f, &["name", "driver", "id", "label", "label!", "type"])?;
            let mut out: Vec<Value> = Vec::new();
            for n in engine.networks.list() {
                out.push(network_doc(engine, &n.name)?);
            }
            out.push(builtin_network("host"));
            out.push(builtin_network("none"));
            let text = |n: &Value, k: &str| n[k].as_str().unwrap_or("").to_string();
            out.retain(|n| {
                let labels: BTreeMap<String, String> =
                    serde_json::from_value(n["Labels"].clone()).unwrap_or_default();
                let builtin = matches!(text(n, "Name").as_str(), "host" | "none" | "bridge");
                f.get("name")
                    .is_none_or(|v| v.iter().any(|x| text(n, "Name").contains(x.as_str())))
                    && f.get("driver")
                        .is_none_or(|v| v.iter().any(|x| n["Driver"] == x.as_str()))
                    && f.get("id")
                        .is_none_or(|v| v.iter().any(|x| text(n, "Id").starts_with(x.as_str())))
                    && labels_match(&f, &labels)
                    && f.get("type").is_none_or(|v| {
                        v.iter().any(|t| {
                            (t == "builtin") == builtin
                                && matches!(t.as_str(), "builtin" | "custom")
                        })
                    })
            });
            Ok(Output::Json(200, Value::Array(out)))
        }
        ("GET", [name]) if matches!(*name, "host" | "none") => {
            Ok(Output::Json(200, builtin_network(name)))
        }
        ("GET", [name]) => Ok(Output::Json(200, network_doc(engine, name)?)),
        ("POST", ["create"]) => {
            #[derive(Deserialize, Default)]
            #[serde(default, rename_all = "PascalCase")]
            struct Req {
                name: String,
                #[serde(deserialize_with = "null_default")]
                driver: String,
                internal: bool,
                #[serde(deserialize_with = "null_default")]
                labels: BTreeMap<String, String>,
                #[serde(rename = "IPAM")]
                ipam: Option<Ipam>,
                #[serde(rename = "EnableIPv6")]
                enable_ipv6: Option<bool>,
            }
            #[derive(Deserialize, Default)]
            #[serde(default, rename_all = "PascalCase")]
            struct Ipam {
                config: Option<Vec<IpamConfig>>,
            }
            #[derive(Deserialize, Default)]
            #[serde(default, rename_all = "PascalCase")]
            struct IpamConfig {
                #[serde(deserialize_with = "null_default")]
                subnet: String,
                #[serde(deserialize_with = "null_default")]
                gateway: String,
            }
            let r: Req = crate::server::json_body(body)?;
            if !matches!(r.driver.as_str(), "" | "bridge") {
                return Err(failure(
                    404,
                    format!(
                        "plugin \"{}\" not found: berth networks are bridge networks",
                        r.driver
                    ),
                ));
            }
            // At most one IPv4 and, with EnableIPv6, one IPv6 subnet.
            let configs = r.ipam.and_then(|i| i.config).unwrap_or_default();
            let (v6, v4): (Vec<IpamConfig>, Vec<IpamConfig>) =
                configs.into_iter().partition(|c| c.subnet.contains(':'));
            if v4.len() > 1 || v6.len() > 1 {
                return Err(bad_request(
                    "one IPv4 and one IPv6 subnet per network (IPAM.Config)",
                ));
            }
            let ipv6 = r.enable_ipv6 == Some(true);
            if ipv6 && v6.is_empty() {
                return Err(bad_request(
                    "EnableIPv6: an IPv6 subnet is required (an IPAM.Config entry with an IPv6 Subnet)",
                ));
            }
            if !ipv6 && !v6.is_empty() {
                return Err(bad_request(
                    "an IPv6 subnet needs EnableIPv6 (docker network create --ipv6)",
                ));
            }
            let c = v4.into_iter().next().unwrap_or_default();
            let c6 = v6.into_iter().next();
            let n = engine.network_create_dual(
                &r.name,
                Some(c.subnet.as_str()).filter(|s| !s.is_empty()),
                Some(c.gateway.as_str()).filter(|s| !s.is_empty()),
                c6.as_ref().map(|c| {
                    (
                        c.subnet.as_str(),
                        Some(c.gateway.as_str()).filter(|g| !g.is_empty()),
                    )
                }),
                r.internal,
                r.labels,
            )?;
            Ok(Output::Json(201, json!({"Id": n.id, "Warning": ""})))
        }
        ("POST", [name, "connect"]) => {
            #[derive(Deserialize, Default)]
            #[serde(default, rename_all = "PascalCase")]
            struct Req {
                container: String,
                endpoint_config: Option<EndpointBody>,
            }
            let r: Req = crate::server::json_body(body)?;
            let ep = r.endpoint_config.unwrap_or_default();
            engine.network_connect(
                name,
                &r.container,
                engine::engine::EndpointRequest {
                    name: String::new(),
                    aliases: ep.aliases.unwrap_or_default(),
                    ip: ep.ipam_config.map(|i| i.ipv4).filter(|i| !i.is_empty()),
                },
            )?;
            Ok(Output::Empty(200))
        }
        ("POST", [name, "disconnect"]) => {
            #[derive(Deserialize, Default)]
            #[serde(default, rename_all = "PascalCase")]
            struct Req {
                container: String,
                force: bool,
            }
            let r: Req = crate::server::json_body(body)?;
            let _ = r.force;
            engine.network_disconnect(name, &r.container)?;
            Ok(Output::Empty(200))
        }
        ("DELETE", [name]) => {
            engine.network_remove(name)?;
            Ok(Output::Empty(204))
        }
        ("POST", ["prune"]) => {
            let f = filters(head)?;
            only_filters(&f, &["until", "label", "label!"])?;
            let before = until(&f)?;
            let gone = engine.network_prune_matching(&|n| {
                labels_match(&f, &n.labels)
                    && before
                        .is_none_or(|t| timefmt::parse_rfc3339(&n.created).is_some_and(|c| c < t))
            });
            Ok(Output::Json(
                200,
                json!({"NetworksDeleted": if gone.is_empty() { Value::Null } else { json!(gone) }}),
            ))
        }
        _ => Err(failure(
            404,
            format!("page not found: {method} {}", head.path),
        )),
    }
}

/// `POST /commit?container=&repo=&tag=&comment=&changes=`: a container's changes as an image.
pub(crate) fn commit(engine: &Arc<Engine>, head: &Head) -> Handled {
    let name = head
        .q("container")
        .filter(|c| !c.is_empty())
        .ok_or_else(|| bad_request("missing parameter container"))?;
    let id = engine.record(name)?.id;
    let tag = match (head.q("repo").filter(|r| !r.is_empty()), head.q("tag")) {
        (Some(r), Some(t)) if !t.is_empty() => Some(parse_ref(&format!("{r}:{t}"))?),
        (Some(r), _) => Some(parse_ref(r)?),
        (None, _) => None,
    };
    let changes = head.query.get("changes").cloned().unwrap_or_default();
    let r = engine
        .images
        .commit(&id, &changes, head.q("comment").unwrap_or(""), tag.as_ref())?;
    engine
        .events
        .emit("container", "commit", &id, Default::default());
    Ok(Output::Json(201, json!({"Id": r.id.to_string()})))
}

/// `POST /volumes/create` with Docker's body.
pub(crate) fn volume_create(engine: &Arc<Engine>, body: &mut (impl Read + ?Sized)) -> Handled {
    #[derive(Deserialize, Default)]
    #[serde(default, rename_all = "PascalCase")]
    struct Req {
        #[serde(deserialize_with = "null_default")]
        name: String,
        #[serde(deserialize_with = "null_default")]
        driver: String,
        #[serde(deserialize_with = "null_default")]
        driver_opts: BTreeMap<String, String>,
        #[serde(deserialize_with = "null_default")]
        labels: BTreeMap<String, String>,
    }
    let r: Req = crate::server::json_body(body)?;
    if !matches!(r.driver.as_str(), "" | "local") {
        return Err(failure(
            404,
            format!("plugin \"{}\" not found: berth volumes are local", r.driver),
        ));
    }
    if !r.driver_opts.is_empty() {
        return Err(bad_request("volume driver options are not supported"));
    }
    let (v, created) = engine
        .volumes
        .create((!r.name.is_empty()).then_some(r.name.as_str()), r.labels)
        .map_err(EngineError::from)?;
    if created {
        engine
            .events
            .emit("volume", "create", &v.name, BTreeMap::new());
    }
    Ok(Output::Json(
        201,
        serde_json::to_value(v).unwrap_or_default(),
    ))
}

/// `GET /system/df` in Docker's shape.
pub(crate) fn disk_usage(engine: &Arc<Engine>) -> Value {
    let du = engine.disk_usage();
    let images: Vec<Value> = du["Images"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            let tags: Vec<String> = i["RepoTags"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t.as_str())
                .filter_map(|t| image::reference::Reference::parse(t).ok())
                .map(|r| r.familiar())
                .collect();
            json!({
                "Id": i["Id"], "ParentId": "", "RepoTags": tags, "RepoDigests": [],
                "Created": 0, "Size": i["Size"], "SharedSize": 0, "Labels": {},
                "Containers": i["Containers"],
            })
        })
        .collect();
    let layers: u64 = images.iter().filter_map(|i| i["Size"].as_u64()).sum();
    let containers: Vec<Value> = du["Containers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            json!({
                "Id": c["Id"], "Names": c["Names"], "SizeRw": c["SizeRw"].as_u64().unwrap_or(0),
                "SizeRootFs": 0, "State": c["State"], "Status": "", "Created": 0, "Image": "",
                "Command": "", "Ports": [], "Labels": {}, "Mounts": [],
            })
        })
        .collect();
    let volumes: Vec<Value> = du["Volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| {
            json!({
                "Name": v["Name"], "Driver": "local", "Mountpoint": "", "Labels": {}, "Scope": "local",
                "UsageData": {"Size": v["Size"], "RefCount": v["RefCount"]},
            })
        })
        .collect();
    json!({
        "LayersSize": layers,
        "Images": images,
        "Containers": containers,
        "Volumes": volumes,
        "BuildCache": [],
    })
}

/// One of Docker's stats documents: this sample, the one before (for the CPU percentage).
fn stats_doc(s: &engine::engine::StatsSample, pre: Option<&engine::engine::StatsSample>) -> Value {
    let cpu = |s: Option<&engine::engine::StatsSample>| match s {
        Some(s) => json!({
            "cpu_usage": {"total_usage": s.cpu_total_ns, "usage_in_kernelmode": 0, "usage_in_usermode": 0},
            "system_cpu_usage": s.system_cpu_ns,
            "online_cpus": s.online_cpus,
            "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0},
        }),
        None => json!({"cpu_usage": {"total_usage": 0}, "throttling_data": {}}),
    };
    json!({
        "read": s.read,
        "preread": pre.map(|p| p.read.clone()).unwrap_or_else(|| "0001-01-01T00:00:00Z".into()),
        "id": s.id,
        "name": format!("/{}", s.name),
        "pids_stats": {"current": s.pids},
        "cpu_stats": cpu(Some(s)),
        "precpu_stats": cpu(pre),
        "memory_stats": {"usage": s.memory_usage, "limit": s.memory_limit, "stats": {}},
        "blkio_stats": {},
        "networks": {},
    })
}

/// `GET /containers/{id}/stats`: a document a second (`stream=1`, the default), or one
/// (`stream=0`) after a second's sampling, as dockerd does, so that its CPU share is real.
pub(crate) fn stats(engine: &Arc<Engine>, id: &str, head: &Head, w: &mut UnixStream) -> Handled {
    let stream = head
        .q("stream")
        .is_none_or(|s| !matches!(s.to_ascii_lowercase().as_str(), "0" | "false" | "no"));
    let one_shot = head.flag("one-shot");
    let mut pre = engine.stats(id)?;
    if !stream {
        if one_shot {
            return Ok(Output::Json(200, stats_doc(&pre, None)));
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
        let now = engine.stats(id).unwrap_or_else(|_| pre.clone());
        return Ok(Output::Json(200, stats_doc(&now, Some(&pre))));
    }
    http::respond_stream_head(w, 200, "application/json")
        .map_err(|e| failure(500, e.to_string()))?;
    let mut out = Chunked(w.try_clone().map_err(|e| failure(500, e.to_string()))?);
    let mut first = true;
    loop {
        let now = if first {
            pre.clone()
        } else {
            match engine.stats(id) {
                Ok(s) => s,
                Err(_) => break,
            }
        };
        let doc = stats_doc(&now, (!first).then_some(&pre));
        first = false;
        if out.write_all(format!("{doc}\n").as_bytes()).is_err() {
            return Ok(Output::Done);
        }
        pre = now;
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    let _ = out.finish();
    Ok(Output::Done)
}

/// `/images/…` by Docker's paths: names may hold slashes, so the action is the last part.
pub(crate) fn images(
    engine: &Arc<Engine>,
    method: &str,
    path: &str,
    head: &Head,
    body: &mut (impl Read + ?Sized),
    w: &mut UnixStream,
) -> Handled {
    let rest = path.trim_start_matches('/');
    let images = &engine.images;
    let (name, action) = match rest.rsplit_once('/') {
        Some((n, a)) if matches!(a, "json" | "history" | "push" | "tag" | "get") => (n, a),
        _ => (rest, ""),
    };
    let name = crate::http::decode(name);
    match (method, name.as_str(), action) {
        ("GET", "json", "") => {
            let cache = engine.build_cache_images();
            let all = head.flag("all");
            let f = filters(head)?;
            only_filters(&f, &["dangling", "reference", "label", "label!"])?;
            let dangling = f
                .get("dangling")
                .and_then(|v| v.first())
                .map(|v| v == "true");
            let mut out = Vec::new();
            let parents = images.parents()?;
            for s in images.list()? {
                if !all && s.names.is_empty() && cache.contains(&s.id) {
                    continue;
                }
                let labels: BTreeMap<String, String> = images
                    .resolve(&s.id.to_string())
                    .and_then(|r| images.config(&r))
                    .ok()
                    .and_then(|c| serde_json::from_value(c["config"]["Labels"].clone()).ok())
                    .unwrap_or_default();
                if !labels_match(&f, &labels) {
                    continue;
                }
                if let Some(d) = dangling {
                    if d != s.names.is_empty() {
                        continue;
                    }
                }
                if let Some(refs) = f.get("reference") {
                    // Full and familiar forms: `busybox`, `busybox:latest`,
                    // `docker.io/library/busybox:latest`.
                    let forms: Vec<String> = s
                        .names
                        .iter()
                        .flat_map(|n| {
                            let familiar = image::reference::Reference::parse(n)
                                .map(|r| r.familiar())
                                .unwrap_or_default();
                            [n.clone(), familiar]
                        })
                        .collect();
                    let hit = refs.iter().any(|r| {
                        forms
                            .iter()
                            .any(|n| n == r || n.starts_with(&format!("{r}:")))
                    });
                    if !hit {
                        continue;
                    }
                }
                let digests: Vec<String> = s
                    .names
                    .iter()
                    .filter_map(|n| image::reference::Reference::parse(n).ok())
                    .map(|r| format!("{}@{}", r.familiar_repository(), s.manifest))
                    .collect();
                let tags: Vec<String> = s
                    .names
                    .iter()
                    .filter_map(|n| image::reference::Reference::parse(n).ok())
                    .map(|r| r.familiar())
                    .collect();
                out.push(json!({
                    "Id": s.id.to_string(),
                    "ParentId": parents.get(&s.id).map(|p| p.to_string()).unwrap_or_default(),
                    "RepoTags": tags,
                    "RepoDigests": digests,
                    "Created": unix(&s.created),
                    "Size": s.size,
                    "SharedSize": -1,
                    "Labels": labels,
                    "Containers": -1,
                }));
            }
            Ok(Output::Json(200, Value::Array(out)))
        }
        ("POST", "prune", "") => {
            let f = filters(head)?;
            only_filters(&f, &["dangling"])?;
            let all = f
                .get("dangling")
                .and_then(|v| v.first())
                .is_some_and(|v| v == "false" || v == "0");
            let removed = images.prune_except(all, &engine.build_cache_images())?;
            let deleted: Vec<Value> = removed
                .iter()
                .map(|d| json!({"Deleted": d.to_string()}))
                .collect();
            Ok(Output::Json(
                200,
                json!({"ImagesDeleted": deleted, "SpaceReclaimed": 0}),
            ))
        }
        ("POST", "create", "") if head.q("fromSrc").is_some() => import(engine, head, body, w),
        ("POST", "create", "") => pull(engine, head, w),
        ("POST", "load", "") => {
            // As dockerd: an archive that cannot be loaded is a message in the stream (clients
            // raise it as a load error), not an error answer.
            let loaded = match images.load(std::io::BufReader::new(body)) {
                Ok(l) => l,
                Err(e) => {
                    http::respond_stream_head(w, 200, "application/json")
                        .map_err(|e| failure(500, e.to_string()))?;
                    let mut out = Chunked(w.try_clone().map_err(|e| failure(500, e.to_string()))?);
                    let line =
                        json!({"errorDetail": {"message": e.to_string()}, "error": e.to_string()});
                    let _ = out.write_all(format!("{line}\n").as_bytes());
                    let _ = out.finish();
                    return Ok(Output::Done);
                }
            };
            engine.events.emit("image", "load", "", Default::default());
            http::respond_stream_head(w, 200, "application/json")
                .map_err(|e| failure(500, e.to_string()))?;
            let mut out = Chunked(w.try_clone().map_err(|e| failure(500, e.to_string()))?);
            for (name, id) in loaded {
                let text = match image::reference::Reference::parse(&name) {
                    Ok(r) if !name.is_empty() => format!("Loaded image: {}\n", r.familiar()),
                    _ => format!("Loaded image ID: {id}\n"),
                };
                let _ = out.write_all(format!("{}\n", json!({ "stream": text })).as_bytes());
            }
            let _ = out.finish();
            Ok(Output::Done)
        }
        ("GET", "get", "") => save(
            engine,
            head.query.get("names").cloned().unwrap_or_default(),
            w,
        ),
        ("GET", _, "get") => save(engine, vec![name.clone()], w),
        ("GET", _, "json") => {
            let r = images
                .resolve(&name)
                .map_err(|_| failure(404, format!("No such image: {name}")))?;
            let config = images.config(&r)?;
            let names = images.names_of(&r.id)?;
            let tags: Vec<String> = names
                .iter()
                .filter_map(|n| image::reference::Reference::parse(n).ok())
                .map(|r| r.familiar())
                .collect();
            let digests: Vec<String> = names
                .iter()
                .filter_map(|n| image::reference::Reference::parse(n).ok())
                .map(|x| format!("{}@{}", x.familiar_repository(), r.manifest))
                .collect();
            Ok(Output::Json(
                200,
                json!({
                    "Id": r.id.to_string(),
                    "RepoTags": tags,
                    "RepoDigests": digests,
                    "Parent": images.parent_of(&r.id).map(|p| p.to_string()).unwrap_or_default(),
                    "Comment": config["comment"].as_str().unwrap_or(""),
                    "Created": config["created"],
                    "Author": config["author"].as_str().unwrap_or(""),
                    "Config": config["config"],
                    "Architecture": config["architecture"],
                    "Os": config["os"],
                    "Size": r.size,
                    "GraphDriver": {"Name": "overlay2", "Data": {}},
                    "RootFS": {"Type": "layers", "Layers": r.diff_ids.iter().map(|d| d.to_string()).collect::<Vec<_>>()},
                    "Metadata": {"LastTagTime": "0001-01-01T00:00:00Z"},
                }),
            ))
        }
        ("GET", _, "history") => {
            let r = images
                .resolve(&name)
                .map_err(|_| failure(404, format!("No such image: {name}")))?;
            let config = images.config(&r)?;
            let chains = image::model::chain_ids(&r.diff_ids);
            let mut sizes = chains
                .iter()
                .map(|c| images.snapshots().size(c).unwrap_or(0));
            let mut rows: Vec<Value> = Vec::new();
            for h in config["history"].as_array().into_iter().flatten() {
                let empty = h["empty_layer"].as_bool().unwrap_or(false);
                let size = if empty { 0 } else { sizes.next().unwrap_or(0) };
                rows.push(json!({
                    "Id": "<missing>",
                    "Created": h["created"].as_str().map(unix).unwrap_or(0),
                    "CreatedBy": h["created_by"].as_str().unwrap_or(""),
                    "Tags": null,
                    "Size": size,
                    "Comment": h["comment"].as_str().unwrap_or(""),
                }));
            }
            rows.reverse();
            if let Some(first) = rows.first_mut() {
                first["Id"] = json!(r.id.to_string());
            }
            Ok(Output::Json(200, Value::Array(rows)))
        }
        ("POST", _, "tag") => {
            let repo = head.q("repo").unwrap_or("");
            let target = match head.q("tag").filter(|t| !t.is_empty()) {
                Some(t) => format!("{repo}:{t}"),
                None => repo.to_string(),
            };
            let t = parse_ref(&target)?;
            images
                .resolve(&name)
                .map_err(|_| failure(404, format!("No such image: {name}")))?;
            images.tag(&name, &t)?;
            engine
                .events
                .emit("image", "tag", &name, Default::default());
            Ok(Output::Empty(201))
        }
        ("DELETE", _, "") => {
            let (untagged, deleted) =
                images
                    .remove(&name, head.flag("force"))
                    .map_err(|e| match e {
                        image::images::ImageError::NotFound(_) => {
                            failure(404, format!("No such image: {name}"))
                        }
                        e => e.into(),
                    })?;
            images.gc()?;
            engine
                .events
                .emit("image", "delete", &name, Default::default());
            let mut out: Vec<Value> = untagged
                .iter()
                .map(|u| {
                    let s = u.to_string();
                    let shown = image::reference::Reference::parse(&s)
                        .map(|r| r.familiar())
                        .unwrap_or(s);
                    json!({ "Untagged": shown })
                })
                .collect();
            if let Some(d) = deleted {
                out.push(json!({"Deleted": d.to_string()}));
            }
            Ok(Output::Json(200, Value::Array(out)))
        }
        ("POST", _, "push") => {
            let tag = head.q("tag").filter(|t| !t.is_empty());
            let full = match tag {
                Some(t) => format!("{name}:{t}"),
                None => name.clone(),
            };
            stream_job(engine, head, w, |engine, creds, send| {
                engine
                    .push(&full, tag.is_none(), creds, send)
                    .map(|_| Value::Null)
            })
        }
        _ => {
            let _ = body;
            Err(failure(
                404,
                format!("page not found: {method} {}", head.path),
            ))
        }
    }
}

/// `POST /images/create?fromSrc=-&repo=&tag=&changes=&message=`: a root file system tarball
/// in the body becomes an image (docker import).
fn import(
    engine: &Arc<Engine>,
    head: &Head,
    body: &mut (impl Read + ?Sized),
    w: &mut UnixStream,
) -> Handled {
    if head.q("fromSrc") != Some("-") {
        return Err(bad_request(
            "fromSrc: only \"-\" (the request body) is supported; berth fetches no URLs here",
        ));
    }
    let tag = match (head.q("repo").filter(|r| !r.is_empty()), head.q("tag")) {
        (Some(r), Some(t)) if !t.is_empty() => Some(parse_ref(&format!("{r}:{t}"))?),
        (Some(r), _) => Some(parse_ref(r)?),
        (None, _) => None,
    };
    let changes = head.query.get("changes").cloned().unwrap_or_default();
    let r = engine.images.import(
        body,
        &changes,
        head.q("message").unwrap_or(""),
        tag.as_ref(),
    )?;
    engine
        .events
        .emit("image", "import", &r.id.to_string(), Default::default());
    http::respond_stream_head(w, 200, "application/json")
        .map_err(|e| failure(500, e.to_string()))?;
    let mut out = Chunked(w.try_clone().map_err(|e| failure(500, e.to_string()))?);
    let _ = out.write_all(format!("{}\n", json!({"status": r.id.to_string()})).as_bytes());
    let _ = out.finish();
    Ok(Output::Done)
}

/// `GET /images/get?names=…` and `/images/{name}/get`: a docker save archive.
fn save(engine: &Arc<Engine>, names: Vec<String>, w: &mut UnixStream) -> Handled {
    if names.is_empty() {
        return Err(bad_request("no images named"));
    }
    for n in &names {
        engine
            .images
            .resolve(n)
            .map_err(|_| failure(404, format!("No such image: {n}")))?;
    }
    http::respond_stream_head(w, 200, "application/x-tar")
        .map_err(|e| failure(500, e.to_string()))?;
    let mut out = Chunked(std::io::BufWriter::with_capacity(
        256 * 1024,
        w.try_clone().map_err(|e| failure(500, e.to_string()))?,
    ));
    // A failure midway leaves the stream unterminated: the client sees a truncated body.
    if engine
        .images
        .save(&names, image::archive::Format::Docker, &mut out)
        .is_ok()
        && out.flush().is_ok()
    {
        let _ = out.finish();
    }
    Ok(Output::Done)
}

/// `POST /images/create?fromImage=&tag=`: a pull, streamed as JSON progress.
fn pull(engine: &Arc<Engine>, head: &Head, w: &mut UnixStream) -> Handled {
    let from = head.q("fromImage").unwrap_or("");
    if from.is_empty() {
        return Err(bad_request(
            "importing from a source (fromSrc) is not supported here: use berth image import",
        ));
    }
    let tag = head.q("tag").filter(|t| !t.is_empty());
    let full = match tag {
        Some(t) if t.starts_with("sha256:") => format!("{from}@{t}"),
        Some(t) => format!("{from}:{t}"),
        None => from.to_string(),
    };
    let platform = head
        .q("platform")
        .filter(|p| !p.is_empty())
        .map(String::from);
    let all = tag.is_none() && !from.contains(':') && !from.contains('@');
    stream_job(engine, head, w, |engine, creds, send| {
        engine
            .pull(&full, platform.as_deref(), all, creds, send)
            .map(|_| Value::Null)
    })
}

/// Runs a pull or push, streaming its JSON messages. As dockerd, the answer's head goes out
/// with the first message: a job that fails before it has anything to say is an error answer
/// (404 for what the registry does not have), and a failure after that is the last message.
fn stream_job(
    engine: &Arc<Engine>,
    head: &Head,
    w: &mut UnixStream,
    job: impl FnOnce(
        &Engine,
        Option<engine::distribution::Credentials>,
        &mut dyn FnMut(Value),
    ) -> Result<Value, EngineError>,
) -> Handled {
    let creds = crate::images::registry_auth(head)?;
    let mut lines = crate::server::JsonLines::new(w)?;
    let result = job(engine, creds, &mut |v| lines.send(&v));
    match result {
        Err(e) if !lines.started() => return Err(e.into()),
        Err(e) => {
            lines.send(&json!({"errorDetail": {"message": e.to_string()}, "error": e.to_string()}))
        }
        Ok(_) => {}
    }
    lines.finish();
    Ok(Output::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_checked_and_unversioned_paths_are_docker_s() {
        assert_eq!(
            split("/v1.41/containers/json").ok(),
            Some((true, "/containers/json"))
        );
        assert_eq!(
            split("/containers/json").ok(),
            Some((true, "/containers/json"))
        );
        assert_eq!(split("/volumes").ok(), Some((true, "/volumes")));
        assert_eq!(split("/berth/v1/info").ok(), Some((false, "/info")));
        let Err(e) = split("/v1.99/info") else {
            panic!()
        };
        assert!(e
            .message()
            .contains("too new. Maximum supported API version is 1.50"));
        let Err(e) = split("/v1.12/info") else {
            panic!()
        };
        assert!(e.message().contains("too old"));
    }
}
