//! The Docker-style container commands (`run`, `ps`, `logs`, `exec`, …): each is a call to
//! the daemon's API, with Docker's flags and output.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use api::client::{ApiError, Client, Send};
use api::http::encode;
use clap::Args;
use engine::spec::{Ipc, MountSpec, Network, RunOptions};
use serde_json::{json, Value};

use crate::template;
use crate::util::{human_size, print_table, Failure};

/// Resource limits, as `run`, `create` and `update` take them.
#[derive(Args, Debug, Default)]
pub struct ResourceArgs {
    /// Memory limit.
    #[arg(short = 'm', long)]
    memory: Option<String>,
    /// Swap limit equal to memory plus swap: -1 to enable unlimited swap.
    #[arg(long = "memory-swap")]
    memory_swap: Option<String>,
    /// Number of CPUs.
    #[arg(long)]
    cpus: Option<String>,
    /// CPU shares (relative weight).
    #[arg(short = 'c', long = "cpu-shares")]
    cpu_shares: Option<u64>,
    /// Tune container pids limit (-1 for unlimited).
    #[arg(long = "pids-limit", allow_negative_numbers = true)]
    pids_limit: Option<i64>,
}

/// Flags shared by `run` and `create`.
#[derive(Args, Debug, Default)]
pub struct CreateArgs {
    /// Print help (`-h` is the hostname, as with docker).
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
    /// Assign a name to the container.
    #[arg(long)]
    name: Option<String>,
    /// Keep STDIN open even if not attached.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Allocate a pseudo-TTY.
    #[arg(short = 't', long)]
    tty: bool,
    /// Set environment variables.
    #[arg(short = 'e', long = "env")]
    env: Vec<String>,
    /// Read in a file of environment variables.
    #[arg(long = "env-file")]
    env_file: Vec<PathBuf>,
    /// Working directory inside the container.
    #[arg(short = 'w', long)]
    workdir: Option<String>,
    /// Username or UID (format: <name|uid>[:<group|gid>]).
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// Overwrite the default ENTRYPOINT of the image.
    #[arg(long)]
    entrypoint: Option<String>,
    /// Bind mount a volume (src:dst[:ro], name:dst, or dst for an anonymous volume).
    #[arg(short = 'v', long = "volume")]
    volume: Vec<String>,
    /// Attach a filesystem mount (type=bind|volume|tmpfs,source=…,target=…,readonly).
    #[arg(long)]
    mount: Vec<String>,
    /// Mount a tmpfs directory (dst[:size=…,mode=…]).
    #[arg(long)]
    tmpfs: Vec<String>,
    #[command(flatten)]
    res: ResourceArgs,
    /// Mount the container's root filesystem as read only.
    #[arg(long = "read-only")]
    read_only: bool,
    /// Restart policy to apply when a container exits.
    #[arg(long, default_value = "no")]
    restart: String,
    /// Command to run to check health.
    #[arg(long = "health-cmd")]
    health_cmd: Option<String>,
    /// Time between running the check (ms|s|m|h).
    #[arg(long = "health-interval")]
    health_interval: Option<String>,
    /// Maximum time to allow one check to run (ms|s|m|h).
    #[arg(long = "health-timeout")]
    health_timeout: Option<String>,
    /// Start period for the container to initialize before starting health-retries countdown.
    #[arg(long = "health-start-period")]
    health_start_period: Option<String>,
    /// Consecutive failures needed to report unhealthy.
    #[arg(long = "health-retries")]
    health_retries: Option<u32>,
    /// Disable any container-specified HEALTHCHECK.
    #[arg(long = "no-healthcheck")]
    no_healthcheck: bool,
    /// Set meta data on a container.
    #[arg(short = 'l', long = "label")]
    label: Vec<String>,
    /// Container host name.
    #[arg(short = 'h', long)]
    hostname: Option<String>,
    /// Run an init inside the container that forwards signals and reaps processes.
    #[arg(long)]
    init: bool,
    /// Signal to stop the container.
    #[arg(long = "stop-signal")]
    stop_signal: Option<String>,
    /// Timeout (in seconds) to stop a container.
    #[arg(long = "stop-timeout", allow_negative_numbers = true)]
    stop_timeout: Option<i64>,
    /// Ulimit options.
    #[arg(long)]
    ulimit: Vec<String>,
    /// Connect a container to a network: a network's name (default: bridge), none, host,
    /// container:<name|id>.
    #[arg(long, alias = "net", default_value = "bridge")]
    network: String,
    /// Add a network-scoped alias for the container.
    #[arg(long = "network-alias", alias = "net-alias")]
    network_alias: Vec<String>,
    /// IPv4 address (e.g., 172.30.100.104).
    #[arg(long)]
    ip: Option<String>,
    /// Publish a container's port(s) to the host: [ip:][hostPort:]containerPort[/proto].
    #[arg(short = 'p', long)]
    publish: Vec<String>,
    /// Publish all exposed ports to random ports.
    #[arg(short = 'P', long = "publish-all")]
    publish_all: bool,
    /// IPC mode: private, shareable, host, container:<name|id>.
    #[arg(long, default_value = "private")]
    ipc: String,
    /// Give extended privileges to this container.
    #[arg(long)]
    privileged: bool,
    /// Add Linux capabilities.
    #[arg(long = "cap-add")]
    cap_add: Vec<String>,
    /// Drop Linux capabilities.
    #[arg(long = "cap-drop")]
    cap_drop: Vec<String>,
    /// Security options (no-new-privileges, seccomp=unconfined|<profile.json>).
    #[arg(long = "security-opt")]
    security_opt: Vec<String>,
    /// Log driver options (max-size, max-file).
    #[arg(long = "log-opt")]
    log_opt: Vec<String>,
    /// Automatically remove the container when it exits.
    #[arg(long)]
    rm: bool,
    /// Join a sandbox's network, IPC and UTS namespaces (`berth sandbox create`).
    #[arg(long)]
    sandbox: Option<String>,
    /// The image.
    image: String,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// `run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Run container in background and print container ID.
    #[arg(short = 'd', long)]
    detach: bool,
    #[command(flatten)]
    create: CreateArgs,
}

fn daemon_err(e: ApiError) -> Failure {
    match e {
        ApiError::Status(_, m, Some(code)) => {
            Failure::new(code, format!("Error response from daemon: {m}"))
        }
        e => Failure::new(125, e.to_string()),
    }
}

fn parse_duration_ns(flag: &str, v: &Option<String>) -> Result<u64> {
    match v {
        None => Ok(0),
        Some(s) => timefmt::parse_duration(s).map(|d| d as u64).ok_or_else(|| {
            anyhow!("invalid argument {s:?} for \"--{flag}\" flag: time: invalid duration {s:?}")
        }),
    }
}

fn parse_mount_flag(s: &str) -> Result<MountSpec> {
    let mut kv = BTreeMap::new();
    let mut read_only = false;
    for part in s.split(',') {
        match part.split_once('=') {
            Some((k, v)) => {
                kv.insert(k.trim().to_string(), v.trim().to_string());
            }
            None if part == "readonly" || part == "ro" => read_only = true,
            None => bail!("invalid argument {s:?} for \"--mount\" flag: invalid field '{part}' must be a key=value pair"),
        }
    }
    if let Some(v) = kv.remove("readonly").or(kv.remove("ro")) {
        read_only = matches!(v.as_str(), "1" | "true");
    }
    let target = kv
        .remove("target")
        .or(kv.remove("destination"))
        .or(kv.remove("dst"))
        .ok_or_else(|| {
            anyhow!("invalid argument {s:?} for \"--mount\" flag: target is required")
        })?;
    let source = kv.remove("source").or(kv.remove("src")).unwrap_or_default();
    let m = match kv.remove("type").as_deref().unwrap_or("volume") {
        "bind" => {
            if source.is_empty() {
                bail!("invalid argument {s:?} for \"--mount\" flag: source is required for a bind mount");
            }
            MountSpec::Bind {
                source: PathBuf::from(source),
                target,
                read_only,
            }
        }
        "volume" => MountSpec::Volume {
            name: source,
            target,
            read_only,
        },
        "tmpfs" => {
            let size = kv
                .remove("tmpfs-size")
                .map(|v| engine::spec::parse_memory_unchecked(&v).map(|n| n as u64))
                .transpose()?;
            let mode = kv
                .remove("tmpfs-mode")
                .map(|v| {
                    u32::from_str_radix(&v, 8).map_err(|_| anyhow!("invalid tmpfs-mode {v:?}"))
                })
                .transpose()?;
            MountSpec::Tmpfs { target, size, mode }
        }
        t => bail!("invalid argument {s:?} for \"--mount\" flag: unknown mount type {t:?}"),
    };
    if let Some(k) = kv.keys().next() {
        bail!("invalid argument {s:?} for \"--mount\" flag: unexpected key '{k}'");
    }
    Ok(m)
}

fn parse_volume_flag(s: &str) -> Result<MountSpec> {
    let parts: Vec<&str> = s.split(':').collect();
    let (src, dst, mode) = match parts.as_slice() {
        [dst] => ("", *dst, ""),
        [src, dst] => (*src, *dst, ""),
        [src, dst, mode] => (*src, *dst, *mode),
        _ => bail!("invalid volume specification: '{s}'"),
    };
    let read_only = match mode {
        "" | "rw" => false,
        "ro" => true,
        m if m.split(',').all(|o| {
            matches!(
                o,
                "ro" | "rw" | "z" | "Z" | "rprivate" | "private" | "rslave" | "slave"
            )
        }) =>
        {
            m.split(',').any(|o| o == "ro")
        }
        m => bail!("invalid mode: {m}"),
    };
    if !dst.starts_with('/') {
        bail!("invalid volume specification: '{s}': the container path must be absolute");
    }
    Ok(if src.starts_with('/') || src.starts_with('.') {
        let source = std::path::absolute(src).unwrap_or_else(|_| PathBuf::from(src));
        MountSpec::Bind {
            source,
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

fn parse_tmpfs_flag(s: &str) -> Result<MountSpec> {
    let (target, opts) = s.split_once(':').unwrap_or((s, ""));
    let mut size = None;
    let mut mode = None;
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        match o.split_once('=') {
            Some(("size", v)) => size = Some(engine::spec::parse_memory_unchecked(v)? as u64),
            Some(("mode", v)) => {
                mode = Some(
                    u32::from_str_radix(v, 8).map_err(|_| anyhow!("invalid tmpfs mode {v:?}"))?,
                )
            }
            _ => {}
        }
    }
    Ok(MountSpec::Tmpfs {
        target: target.into(),
        size,
        mode,
    })
}

/// Builds the API request from the flags (files named by flags are read here, on the client,
/// as docker does).
fn create_request(a: &CreateArgs) -> Result<Value> {
    let mut env = Vec::new();
    for f in &a.env_file {
        let text = std::fs::read_to_string(f).with_context(|| format!("open {}", f.display()))?;
        for line in text.lines() {
            let line = line.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            env.push(line.to_string());
        }
    }
    env.extend(a.env.iter().cloned());
    // `-e NAME` takes the value from this (the client's) environment, as docker does.
    let env: Vec<String> = env
        .into_iter()
        .filter_map(|e| {
            if e.contains('=') {
                Some(e)
            } else {
                std::env::var(&e).ok().map(|v| format!("{e}={v}"))
            }
        })
        .collect();
    let mut mounts = Vec::new();
    for v in &a.volume {
        mounts.push(parse_volume_flag(v)?);
    }
    for m in &a.mount {
        mounts.push(parse_mount_flag(m)?);
    }
    for t in &a.tmpfs {
        mounts.push(parse_tmpfs_flag(t)?);
    }
    let mut seccomp_profile = None;
    for o in &a.security_opt {
        if let Some(p) = o.strip_prefix("seccomp=").or(o.strip_prefix("seccomp:")) {
            if p != "unconfined" {
                seccomp_profile = Some(
                    std::fs::read_to_string(p)
                        .with_context(|| format!("opening seccomp profile ({p}) failed"))?,
                );
            }
        }
    }
    let mut labels = BTreeMap::new();
    for l in &a.label {
        let (k, v) = l.split_once('=').unwrap_or((l, ""));
        labels.insert(k.to_string(), v.to_string());
    }
    let mut log_opts = BTreeMap::new();
    for o in &a.log_opt {
        let (k, v) = o
            .split_once('=')
            .ok_or_else(|| anyhow!("invalid key/value pair format in log options: {o}"))?;
        log_opts.insert(k.to_string(), v.to_string());
    }
    let run = RunOptions {
        args: a.command.clone(),
        entrypoint: a.entrypoint.clone(),
        env,
        workdir: a.workdir.clone(),
        user: a.user.clone(),
        hostname: a.hostname.clone(),
        tty: a.tty,
        read_only: a.read_only,
        privileged: a.privileged,
        cap_add: a.cap_add.clone(),
        cap_drop: a.cap_drop.clone(),
        security_opt: a.security_opt.clone(),
        seccomp_profile,
        memory: a.res.memory.clone(),
        memory_swap: a.res.memory_swap.clone(),
        cpus: a.res.cpus.clone(),
        cpu_shares: a.res.cpu_shares,
        pids_limit: a.res.pids_limit,
        ulimits: a.ulimit.clone(),
        mounts,
        network: match a.network.as_str() {
            "none" | "host" => Network::parse(&a.network)?,
            n if n.starts_with("container:") => Network::parse(n)?,
            _ => Network::None,
        },
        ipc: Ipc::parse(&a.ipc)?,
        uts_join: None,
        labels,
        stop_signal: a.stop_signal.clone(),
        cgroup_parent: None,
        group_add: Vec::new(),
        sysctls: Default::default(),
        pid_host: false,
        shm_size: None,
    };
    // Fail fast on values the daemon would refuse anyway, with Docker's messages.
    if let Some(m) = &a.res.memory {
        engine::spec::parse_memory(m)?;
    }
    if let Some(c) = &a.res.cpus {
        engine::spec::parse_cpus(c)?;
    }
    let restart = engine::RestartPolicy::parse(&a.restart).map_err(|e| anyhow!(e))?;
    let bridge = !matches!(a.network.as_str(), "none" | "host")
        && !a.network.starts_with("container:")
        && a.sandbox.is_none();
    let networks: Vec<Value> = if bridge {
        vec![json!({"name": a.network, "aliases": a.network_alias, "ip": a.ip})]
    } else {
        if !a.network_alias.is_empty() || a.ip.is_some() {
            bail!("--network-alias and --ip need a bridge network");
        }
        Vec::new()
    };
    let mut publish = Vec::new();
    for p in &a.publish {
        publish.extend(engine::network::parse_publish(p).map_err(|e| anyhow!(e))?);
    }
    if a.rm && restart.name != "no" {
        bail!("conflicting options: cannot specify both --restart and --rm");
    }
    let health = if a.no_healthcheck {
        Some(json!({"Test": ["NONE"]}))
    } else if a.health_cmd.is_some()
        || a.health_interval.is_some()
        || a.health_timeout.is_some()
        || a.health_start_period.is_some()
        || a.health_retries.is_some()
    {
        Some(json!({
            "Test": a.health_cmd.as_ref().map(|c| vec!["CMD-SHELL".to_string(), c.clone()]).unwrap_or_default(),
            "Interval": parse_duration_ns("health-interval", &a.health_interval)?,
            "Timeout": parse_duration_ns("health-timeout", &a.health_timeout)?,
            "StartPeriod": parse_duration_ns("health-start-period", &a.health_start_period)?,
            "Retries": a.health_retries.unwrap_or(0),
        }))
    } else {
        None
    };
    Ok(json!({
        "image": a.image,
        "name": a.name,
        "run": run,
        "open_stdin": a.interactive,
        "stdin_once": a.interactive,
        "restart": restart,
        "health": health,
        "init": a.init,
        "auto_remove": a.rm,
        "log_opts": log_opts,
        "stop_timeout": a.stop_timeout,
        "sandbox": a.sandbox,
        "networks": networks,
        "publish": publish,
        "publish_all": a.publish_all,
    }))
}

fn create(c: &Client, a: &CreateArgs) -> Result<String> {
    let req = create_request(a).map_err(|e| Failure::new(125, format!("{e:#}")))?;
    let v = match c.json("POST", "/containers/create", Some(&req)) {
        // Not here: pulled, as docker run does, then created.
        Err(ApiError::Status(404, m, _)) if m.starts_with("No such image") => {
            eprintln!("Unable to find image '{}' locally", a.image);
            crate::registry_client_cmd::pull_for_run(c, &a.image, None).map_err(|e| {
                let m = e.to_string();
                Failure::new(
                    125,
                    m.trim_start_matches("Error response from daemon: ")
                        .to_string(),
                )
            })?;
            c.json("POST", "/containers/create", Some(&req))
                .map_err(daemon_err)?
        }
        r => r.map_err(daemon_err)?,
    };
    Ok(v["Id"].as_str().unwrap_or_default().to_string())
}

/// `create`.
pub fn create_cmd(c: &Client, a: &CreateArgs) -> Result<i32> {
    println!("{}", create(c, a)?);
    Ok(0)
}

fn is_tty(fd: i32) -> bool {
    // SAFETY: isatty has no preconditions.
    unsafe { libc::isatty(fd) == 1 }
}

fn term_size() -> Option<(u16, u16)> {
    runtime::console::get_size(0).or_else(|| runtime::console::get_size(1))
}

/// Streams an attached or exec'd session: stdin to the stream, the stream (raw with a TTY,
/// multiplexed without) to stdout/stderr. Returns when the output ends.
fn stream_session(
    s: UnixStream,
    leftover: Vec<u8>,
    tty: bool,
    stdin: bool,
    resize: Option<Box<dyn Fn(u16, u16) + std::marker::Send>>,
) -> Result<()> {
    let _raw = (tty && stdin && is_tty(0))
        .then(|| runtime::console::RawMode::enter(0))
        .flatten();
    if let Some(resize) = resize {
        if let Some((h, w)) = term_size() {
            resize(h, w);
        }
        // SIGWINCH without a signal handler: watch the size.
        std::thread::spawn(move || {
            let mut last = term_size();
            loop {
                std::thread::sleep(std::time::Duration::from_millis(200));
                let now = term_size();
                if now != last {
                    if let Some((h, w)) = now {
                        resize(h, w);
                    }
                    last = now;
                }
            }
        });
    }
    if stdin {
        let mut to = s.try_clone()?;
        std::thread::spawn(move || {
            let mut input = std::io::stdin().lock();
            let mut buf = [0u8; 8192];
            loop {
                match input.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if to.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = to.shutdown(std::net::Shutdown::Write);
        });
    }
    let mut reader = std::io::Cursor::new(leftover).chain(s.try_clone()?);
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    if tty {
        let mut buf = [0u8; 8192];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut o = stdout.lock();
            o.write_all(&buf[..n])?;
            o.flush()?;
        }
    } else {
        demux(&mut reader, &mut stdout.lock(), &mut stderr.lock())?;
    }
    let _ = s.shutdown(std::net::Shutdown::Both);
    Ok(())
}

/// Splits Docker's multiplexed stream into stdout and stderr.
pub fn demux(r: &mut impl Read, out: &mut impl Write, err: &mut impl Write) -> Result<()> {
    let mut hdr = [0u8; 8];
    loop {
        if r.read_exact(&mut hdr).is_err() {
            return Ok(());
        }
        let n = u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]) as usize;
        let mut buf = vec![0u8; n];
        if r.read_exact(&mut buf).is_err() {
            return Ok(());
        }
        let w: &mut dyn Write = if hdr[0] == 2 { err } else { out };
        w.write_all(&buf)?;
        w.flush()?;
    }
}

fn path_id(id: &str) -> String {
    encode(id)
}

/// `--sig-proxy` (docker's default without a TTY): signals sent to the CLI go to the
/// container. Call before the command starts any other thread, so that every thread leaves
/// these signals to the proxy's.
fn proxy_signals(c: &Client, id: &str) {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
    ] {
        set.add(s);
    }
    if set.thread_block().is_err() {
        return;
    }
    let c = c.clone();
    let id = id.to_string();
    std::thread::spawn(move || {
        while let Ok(sig) = set.wait() {
            let _ = c.call(
                "POST",
                &format!("/containers/{}/kill?signal={}", path_id(&id), sig as i32),
                Send::Nothing,
            );
        }
    });
}

/// Attaches (before or after start) and streams; returns once the output ends.
fn attach_and_stream(c: &Client, id: &str, stdin: bool, tty: bool, start: bool) -> Result<()> {
    let target = format!(
        "/containers/{}/attach?stream=1&stdout=1&stderr=1&stdin={}",
        path_id(id),
        u8::from(stdin)
    );
    // `run` reports a daemon's refusal as 125; `attach` and `start -a` as 1, as docker does.
    let (s, leftover) = c.upgrade("POST", &target, None).map_err(|e| {
        if start {
            daemon_err(e)
        } else {
            daemon_err1(e)
        }
    })?;
    if start {
        c.call(
            "POST",
            &format!("/containers/{}/start", path_id(id)),
            Send::Nothing,
        )
        .map_err(daemon_err)?;
    }
    let resize: Option<Box<dyn Fn(u16, u16) + std::marker::Send>> = if tty && is_tty(1) {
        let c2 = c.clone();
        let id2 = id.to_string();
        Some(Box::new(move |h, w| {
            let _ = c2.call(
                "POST",
                &format!("/containers/{}/resize?h={h}&w={w}", path_id(&id2)),
                Send::Nothing,
            );
        }))
    } else {
        None
    };
    stream_session(s, leftover, tty, stdin, resize)
}

/// `run`.
pub fn run(c: &Client, a: &RunArgs) -> Result<i32> {
    let id = create(c, &a.create)?;
    if a.detach {
        c.call(
            "POST",
            &format!("/containers/{}/start", path_id(&id)),
            Send::Nothing,
        )
        .map_err(|e| {
            if a.create.rm {
                let _ = c.call(
                    "DELETE",
                    &format!("/containers/{}?force=1&volumes=1", path_id(&id)),
                    Send::Nothing,
                );
            }
            daemon_err(e)
        })?;
        println!("{id}");
        return Ok(0);
    }
    if !a.create.tty {
        proxy_signals(c, &id);
    }
    // Wait for the next exit (or the removal, with --rm) before starting, so a quick exit is
    // not missed.
    let condition = if a.create.rm { "removed" } else { "next-exit" };
    let waiter = {
        let c = c.clone();
        let id = id.clone();
        std::thread::spawn(move || {
            c.json(
                "POST",
                &format!("/containers/{}/wait?condition={condition}", path_id(&id)),
                None,
            )
        })
    };
    let streamed = attach_and_stream(c, &id, a.create.interactive, a.create.tty, true);
    if let Err(e) = streamed {
        if a.create.rm {
            let _ = c.call(
                "DELETE",
                &format!("/containers/{}?force=1&volumes=1", path_id(&id)),
                Send::Nothing,
            );
        }
        return Err(e);
    }
    let code = waiter
        .join()
        .map_err(|_| anyhow!("waiting for the container failed"))?
        .map_err(daemon_err)?;
    Ok(code["StatusCode"].as_i64().unwrap_or(125) as i32)
}

/// `start`.
#[derive(Args, Debug)]
pub struct StartArgs {
    /// Attach STDOUT/STDERR and forward signals.
    #[arg(short = 'a', long)]
    attach: bool,
    /// Attach container's STDIN.
    #[arg(short = 'i', long)]
    interactive: bool,
    containers: Vec<String>,
}

pub fn start(c: &Client, a: &StartArgs) -> Result<i32> {
    if a.attach || a.interactive {
        let [id] = a.containers.as_slice() else {
            bail!("you cannot start and attach multiple containers at once");
        };
        let info = c
            .json("GET", &format!("/containers/{}", path_id(id)), None)
            .map_err(daemon_err1)?;
        let tty = info["Config"]["Tty"].as_bool().unwrap_or(false);
        if !tty {
            proxy_signals(c, id);
        }
        let waiter = {
            let c = c.clone();
            let id = id.clone();
            std::thread::spawn(move || {
                c.json(
                    "POST",
                    &format!("/containers/{}/wait?condition=next-exit", path_id(&id)),
                    None,
                )
            })
        };
        attach_and_stream(c, id, a.interactive, tty, true)?;
        let code = waiter
            .join()
            .map_err(|_| anyhow!("wait failed"))?
            .map_err(daemon_err1)?;
        return Ok(code["StatusCode"].as_i64().unwrap_or(1) as i32);
    }
    each(&a.containers, |id| {
        c.call(
            "POST",
            &format!("/containers/{}/start", path_id(id)),
            Send::Nothing,
        )?;
        println!("{id}");
        Ok(())
    })
}

fn daemon_err1(e: ApiError) -> Failure {
    Failure::new(1, e.to_string())
}

/// Runs `f` for each name; errors are printed and make the exit status 1 (docker's way).
fn each(
    names: &[String],
    mut f: impl FnMut(&str) -> std::result::Result<(), ApiError>,
) -> Result<i32> {
    if names.is_empty() {
        bail!("requires at least 1 argument");
    }
    let mut code = 0;
    for n in names {
        if let Err(e) = f(n) {
            eprintln!("{e}");
            code = 1;
        }
    }
    Ok(code)
}

/// `stop` / `restart`.
#[derive(Args, Debug)]
pub struct StopArgs {
    /// Seconds to wait before killing the container.
    #[arg(
        short = 't',
        long = "time",
        alias = "timeout",
        allow_negative_numbers = true
    )]
    time: Option<i64>,
    /// Signal to send to the container (stop only).
    #[arg(short = 's', long)]
    signal: Option<String>,
    containers: Vec<String>,
}

pub fn stop(c: &Client, a: &StopArgs, restart: bool) -> Result<i32> {
    let verb = if restart { "restart" } else { "stop" };
    let t = a.time.map(|t| format!("?t={t}")).unwrap_or_default();
    each(&a.containers, |id| {
        if let (Some(sig), false) = (&a.signal, restart) {
            c.call(
                "POST",
                &format!("/containers/{}/kill?signal={}", path_id(id), encode(sig)),
                Send::Nothing,
            )?;
        }
        c.call(
            "POST",
            &format!("/containers/{}/{verb}{t}", path_id(id)),
            Send::Nothing,
        )?;
        println!("{id}");
        Ok(())
    })
}

/// `kill`.
#[derive(Args, Debug)]
pub struct KillArgs {
    /// Signal to send to the container.
    #[arg(short = 's', long, default_value = "KILL")]
    signal: String,
    containers: Vec<String>,
}

pub fn kill(c: &Client, a: &KillArgs) -> Result<i32> {
    each(&a.containers, |id| {
        c.call(
            "POST",
            &format!(
                "/containers/{}/kill?signal={}",
                path_id(id),
                encode(&a.signal)
            ),
            Send::Nothing,
        )?;
        println!("{id}");
        Ok(())
    })
}

/// `rm`.
#[derive(Args, Debug)]
pub struct RmArgs {
    /// Force the removal of a running container (uses SIGKILL).
    #[arg(short = 'f', long)]
    force: bool,
    /// Remove anonymous volumes associated with the container.
    #[arg(short = 'v', long)]
    volumes: bool,
    containers: Vec<String>,
}

pub fn rm(c: &Client, a: &RmArgs) -> Result<i32> {
    each(&a.containers, |id| {
        c.call(
            "DELETE",
            &format!(
                "/containers/{}?force={}&volumes={}",
                path_id(id),
                u8::from(a.force),
                u8::from(a.volumes)
            ),
            Send::Nothing,
        )?;
        println!("{id}");
        Ok(())
    })
}

/// `ps`.
#[derive(Args, Debug)]
pub struct PsArgs {
    /// Show all containers (default shows just running).
    #[arg(short = 'a', long)]
    all: bool,
    /// Only display container IDs.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Filter output based on conditions provided (status, name, id, label, exited, ancestor, health).
    #[arg(short = 'f', long)]
    filter: Vec<String>,
    /// Format output using a template (`table …`, `{{.ID}}`, `json`).
    #[arg(long)]
    format: Option<String>,
    /// Don't truncate output.
    #[arg(long = "no-trunc")]
    no_trunc: bool,
    /// Display total file sizes.
    #[arg(short = 's', long)]
    size: bool,
    /// Show the latest created container.
    #[arg(short = 'l', long)]
    latest: bool,
    /// Show n last created containers.
    #[arg(short = 'n', long)]
    last: Option<usize>,
}

fn ps_matches(s: &Value, filters: &[(String, String)]) -> Result<bool> {
    let mut by_key: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (k, v) in filters {
        by_key.entry(k.as_str()).or_default().push(v.as_str());
    }
    for (k, vals) in by_key {
        let ok = vals.iter().any(|v| match k {
            "status" => s["state"].as_str() == Some(*v),
            "name" => s["name"].as_str().is_some_and(|n| n.contains(*v)),
            "id" => s["id"].as_str().is_some_and(|i| i.starts_with(*v)),
            "label" => match v.split_once('=') {
                Some((lk, lv)) => s["labels"][lk].as_str() == Some(lv),
                None => s["labels"].get(*v).is_some(),
            },
            "exited" => {
                s["state"] == "exited"
                    && s["exit_code"].as_i64().map(|c| c.to_string()).as_deref() == Some(*v)
            }
            "ancestor" => {
                s["image"].as_str() == Some(*v)
                    || s["image_id"].as_str().is_some_and(|i| i.contains(*v))
            }
            "health" => s["health"].as_str().unwrap_or("none") == *v,
            "volume" => s["mounts"]
                .as_array()
                .is_some_and(|m| m.iter().any(|m| m["Name"] == *v || m["Destination"] == *v)),
            _ => false,
        });
        if !matches!(
            k,
            "status" | "name" | "id" | "label" | "exited" | "ancestor" | "health" | "volume"
        ) {
            bail!("invalid filter '{k}'");
        }
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

fn ago(rfc: &str) -> String {
    timefmt::parse_rfc3339(rfc)
        .map(|t| {
            format!(
                "{} ago",
                timefmt::human_duration(((timefmt::now_nanos() - t) / 1_000_000_000) as i64)
            )
        })
        .unwrap_or_default()
}

pub fn ps(c: &Client, a: &PsArgs) -> Result<i32> {
    let mut filters = Vec::new();
    for f in &a.filter {
        let (k, v) = f
            .split_once('=')
            .ok_or_else(|| anyhow!("bad format of filter (expected name=value)"))?;
        filters.push((k.to_string(), v.to_string()));
    }
    let all = a.all
        || a.latest
        || a.last.is_some()
        || filters.iter().any(|(k, _)| k == "status" || k == "exited");
    let list = c
        .json(
            "GET",
            &format!(
                "/containers?all={}&size={}",
                u8::from(all),
                u8::from(a.size)
            ),
            None,
        )
        .map_err(daemon_err1)?;
    let mut rows: Vec<Value> = Vec::new();
    for s in list.as_array().cloned().unwrap_or_default() {
        if ps_matches(&s, &filters)? {
            rows.push(s);
        }
    }
    if a.latest {
        rows.truncate(1);
    }
    if let Some(n) = a.last {
        rows.truncate(n);
    }
    let trunc = |s: &str, n: usize| {
        if a.no_trunc {
            s.to_string()
        } else {
            s.chars().take(n).collect()
        }
    };
    let view = |s: &Value| -> Value {
        let id = s["id"].as_str().unwrap_or_default();
        let cmd = s["command"].as_str().unwrap_or_default();
        let cmd = if a.no_trunc || cmd.chars().count() <= 20 {
            format!("\"{cmd}\"")
        } else {
            format!("\"{}…\"", cmd.chars().take(19).collect::<String>())
        };
        let size = s["size_rw"].as_u64().map(human_size).unwrap_or_default();
        let labels = s["labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        let mounts = s["mounts"]
            .as_array()
            .map(|m| {
                m.iter()
                    .map(|m| {
                        m["Name"]
                            .as_str()
                            .filter(|n| !n.is_empty())
                            .or(m["Source"].as_str())
                            .unwrap_or("")
                            .to_string()
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        json!({
            "ID": trunc(id, 12),
            "Image": s["image"],
            "Command": cmd,
            "CreatedAt": s["created"],
            "RunningFor": ago(s["created"].as_str().unwrap_or("")),
            "Status": s["status"],
            "State": s["state"],
            "Ports": port_lines(&s["ports"]).into_iter().map(|(c, h)| format!("{h}->{c}")).collect::<Vec<_>>().join(", "),
            "Names": s["name"],
            "Labels": labels,
            "Size": size,
            "Mounts": mounts,
            "Networks": s["networks"].as_array().map(|n| n.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(",")).unwrap_or_default(),
        })
    };
    let mut out = std::io::stdout().lock();
    if a.quiet {
        for s in &rows {
            writeln!(out, "{}", trunc(s["id"].as_str().unwrap_or_default(), 12))?;
        }
        return Ok(0);
    }
    if let Some(fmt) = a.format.as_deref().filter(|f| *f != "table") {
        if fmt == "json" {
            for s in &rows {
                writeln!(out, "{}", view(s))?;
            }
            return Ok(0);
        }
        let (header, body) = match template::table_header(fmt) {
            Some((h, b)) => (Some(h), b),
            None => (None, fmt.to_string()),
        };
        let mut table = Vec::new();
        if let Some(h) = header {
            table.push(h.split('\t').map(String::from).collect::<Vec<_>>());
        }
        for s in &rows {
            let line = template::render(&body, &view(s)).map_err(|e| anyhow!(e))?;
            table.push(line.split('\t').map(String::from).collect());
        }
        if table
            .iter()
            .all(|r| r.len() == table.first().map_or(0, Vec::len))
            && table.first().is_some_and(|r| r.len() > 1)
        {
            print_table(&mut out, &table)?;
        } else {
            for r in table {
                writeln!(out, "{}", r.join("\t"))?;
            }
        }
        return Ok(0);
    }
    let mut header = vec![
        "CONTAINER ID",
        "IMAGE",
        "COMMAND",
        "CREATED",
        "STATUS",
        "PORTS",
        "NAMES",
    ];
    if a.size {
        header.push("SIZE");
    }
    let mut table = vec![header.iter().map(|s| s.to_string()).collect::<Vec<_>>()];
    for s in &rows {
        let v = view(s);
        let mut row: Vec<String> = [
            "ID",
            "Image",
            "Command",
            "RunningFor",
            "Status",
            "Ports",
            "Names",
        ]
        .iter()
        .map(|k| v[*k].as_str().unwrap_or("").to_string())
        .collect();
        if a.size {
            row.push(v["Size"].as_str().unwrap_or("").to_string());
        }
        table.push(row);
    }
    print_table(&mut out, &table)?;
    Ok(0)
}

/// `logs`.
#[derive(Args, Debug)]
pub struct LogsArgs {
    /// Follow log output.
    #[arg(short = 'f', long)]
    follow: bool,
    /// Number of lines to show from the end of the logs (or "all").
    #[arg(short = 'n', long, default_value = "all")]
    tail: String,
    /// Show logs since timestamp (e.g. 2013-01-02T13:23:37Z) or relative (e.g. 42m).
    #[arg(long)]
    since: Option<String>,
    /// Show logs before a timestamp or relative time.
    #[arg(long)]
    until: Option<String>,
    /// Show timestamps.
    #[arg(short = 't', long)]
    timestamps: bool,
    container: String,
}

pub fn logs(c: &Client, a: &LogsArgs) -> Result<i32> {
    let mut target = format!(
        "/containers/{}/logs?stdout=1&stderr=1&follow={}&timestamps={}&tail={}",
        path_id(&a.container),
        u8::from(a.follow),
        u8::from(a.timestamps),
        encode(&a.tail)
    );
    for (k, v) in [("since", &a.since), ("until", &a.until)] {
        if let Some(v) = v {
            target.push_str(&format!("&{k}={}", encode(v)));
        }
    }
    let mut resp = c.call("GET", &target, Send::Nothing).map_err(daemon_err1)?;
    let raw = resp
        .headers
        .get("content-type")
        .is_some_and(|t| t.contains("raw-stream"));
    if raw {
        std::io::copy(&mut resp, &mut std::io::stdout().lock())?;
    } else {
        demux(
            &mut resp,
            &mut std::io::stdout().lock(),
            &mut std::io::stderr().lock(),
        )?;
    }
    Ok(0)
}

/// `exec`.
#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Detached mode: run command in the background.
    #[arg(short = 'd', long)]
    detach: bool,
    /// Keep STDIN open even if not attached.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Allocate a pseudo-TTY.
    #[arg(short = 't', long)]
    tty: bool,
    /// Set environment variables.
    #[arg(short = 'e', long = "env")]
    env: Vec<String>,
    /// Read in a file of environment variables.
    #[arg(long = "env-file")]
    env_file: Vec<PathBuf>,
    /// Username or UID.
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long)]
    workdir: Option<String>,
    /// Give extended privileges to the command.
    #[arg(long)]
    privileged: bool,
    container: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    command: Vec<String>,
}

pub fn exec(c: &Client, a: &ExecArgs) -> Result<i32> {
    let mut env = Vec::new();
    for f in &a.env_file {
        let text = std::fs::read_to_string(f).with_context(|| format!("open {}", f.display()))?;
        env.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(String::from),
        );
    }
    env.extend(a.env.iter().cloned());
    let env: Vec<String> = env
        .into_iter()
        .filter_map(|e| {
            if e.contains('=') {
                Some(e)
            } else {
                std::env::var(&e).ok().map(|v| format!("{e}={v}"))
            }
        })
        .collect();
    let req = json!({
        "cmd": a.command, "env": env, "user": a.user, "workdir": a.workdir,
        "tty": a.tty, "stdin": a.interactive, "privileged": a.privileged,
    });
    let v = c
        .json(
            "POST",
            &format!("/containers/{}/exec", path_id(&a.container)),
            Some(&req),
        )
        .map_err(daemon_err1)?;
    let id = v["Id"].as_str().unwrap_or_default().to_string();
    if a.detach {
        c.call("POST", &format!("/exec/{id}/start?detach=1"), Send::Nothing)
            .map_err(daemon_exec_err)?;
        return Ok(0);
    }
    let (s, leftover) = c
        .upgrade("POST", &format!("/exec/{id}/start"), None)
        .map_err(daemon_exec_err)?;
    let resize: Option<Box<dyn Fn(u16, u16) + std::marker::Send>> = if a.tty && is_tty(1) {
        let c2 = c.clone();
        let id2 = id.clone();
        Some(Box::new(move |h, w| {
            let _ = c2.call(
                "POST",
                &format!("/exec/{id2}/resize?h={h}&w={w}"),
                Send::Nothing,
            );
        }))
    } else {
        None
    };
    stream_session(s, leftover, a.tty, a.interactive, resize)?;
    let info = c
        .json("GET", &format!("/exec/{id}"), None)
        .map_err(daemon_err1)?;
    Ok(info["ExitCode"].as_i64().unwrap_or(126) as i32)
}

fn daemon_exec_err(e: ApiError) -> Failure {
    match e {
        ApiError::Status(_, m, Some(code)) => {
            Failure::new(code, format!("Error response from daemon: {m}"))
        }
        e => Failure::new(1, e.to_string()),
    }
}

/// `attach`.
#[derive(Args, Debug)]
pub struct AttachArgs {
    /// Do not attach STDIN.
    #[arg(long = "no-stdin")]
    no_stdin: bool,
    container: String,
}

pub fn attach(c: &Client, a: &AttachArgs) -> Result<i32> {
    let info = c
        .json(
            "GET",
            &format!("/containers/{}", path_id(&a.container)),
            None,
        )
        .map_err(daemon_err1)?;
    let tty = info["Config"]["Tty"].as_bool().unwrap_or(false);
    if !tty {
        proxy_signals(c, &a.container);
    }
    let stdin = !a.no_stdin && info["Config"]["OpenStdin"].as_bool().unwrap_or(false);
    attach_and_stream(c, &a.container, stdin, tty, false)?;
    let code = c
        .json(
            "POST",
            &format!("/containers/{}/wait", path_id(&a.container)),
            None,
        )
        .map_err(daemon_err1)?;
    Ok(code["StatusCode"].as_i64().unwrap_or(0) as i32)
}

/// `inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Format output using a Go template.
    #[arg(short = 'f', long)]
    format: Option<String>,
    /// Return JSON for the specified type (container, image, volume).
    #[arg(long = "type")]
    typ: Option<String>,
    /// Display total file sizes.
    #[arg(short = 's', long)]
    size: bool,
    names: Vec<String>,
}

pub fn inspect(c: &Client, a: &InspectArgs) -> Result<i32> {
    if a.names.is_empty() {
        bail!("inspect: requires at least 1 argument");
    }
    let mut docs = Vec::new();
    let mut code = 0;
    for n in &a.names {
        let mut found = None;
        let want = |t: &str| a.typ.as_deref().is_none_or(|x| x == t);
        if want("container") {
            found = c
                .json("GET", &format!("/containers/{}", path_id(n)), None)
                .ok();
        }
        if found.is_none() && want("image") {
            found = crate::image_cmd::inspect_doc(c, n).ok();
        }
        if found.is_none() && want("volume") {
            found = c
                .json("GET", &format!("/volumes/{}", path_id(n)), None)
                .ok();
        }
        match found {
            Some(d) => docs.push(d),
            None => {
                eprintln!("Error: No such object: {n}");
                code = 1;
            }
        }
    }
    print_docs(&docs, a.format.as_deref())?;
    Ok(code)
}

/// `volume inspect`, `network inspect`: each named object of `kind`; a missing one is an
/// error on stderr and exit status 1, the others are still shown.
fn inspect_each(c: &Client, kind: &str, names: &[String], format: Option<&str>) -> Result<i32> {
    let mut docs = Vec::new();
    let mut code = 0;
    for n in names {
        match c.json("GET", &format!("/{kind}/{}", path_id(n)), None) {
            Ok(d) => docs.push(d),
            Err(e) => {
                eprintln!("{e}");
                code = 1;
            }
        }
    }
    print_docs(&docs, format)?;
    Ok(code)
}

/// Prints inspect documents as a JSON array, or each through a template.
pub fn print_docs(docs: &[Value], format: Option<&str>) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match format {
        Some(f) => {
            for d in docs {
                writeln!(out, "{}", template::render(f, d).map_err(|e| anyhow!(e))?)?;
            }
        }
        None => writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&Value::Array(docs.to_vec()))?
        )?,
    }
    Ok(())
}

/// `stats`.
#[derive(Args, Debug)]
pub struct StatsArgs {
    /// Show all containers (default shows just running).
    #[arg(short = 'a', long)]
    all: bool,
    /// Disable streaming stats and only pull the first result.
    #[arg(long = "no-stream")]
    no_stream: bool,
    /// Format output using a template.
    #[arg(long)]
    format: Option<String>,
    containers: Vec<String>,
}

pub fn stats(c: &Client, a: &StatsArgs) -> Result<i32> {
    let names: Vec<String> = if a.containers.is_empty() {
        c.json("GET", &format!("/containers?all={}", u8::from(a.all)), None)
            .map_err(daemon_err1)?
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|s| s["id"].as_str().unwrap_or("").to_string())
            .collect()
    } else {
        a.containers.clone()
    };
    let sample = |n: &str| {
        c.json(
            "GET",
            &format!("/containers/{}/stats?stream=0", path_id(n)),
            None,
        )
    };
    let mut prev: BTreeMap<String, Value> = BTreeMap::new();
    for n in &names {
        prev.insert(n.clone(), sample(n).map_err(daemon_err1)?);
    }
    let clear = !a.no_stream && is_tty(1);
    loop {
        std::thread::sleep(std::time::Duration::from_millis(if a.no_stream {
            500
        } else {
            1000
        }));
        let mut table = vec![[
            "CONTAINER ID",
            "NAME",
            "CPU %",
            "MEM USAGE / LIMIT",
            "MEM %",
            "PIDS",
        ]
        .map(String::from)
        .to_vec()];
        let mut lines = Vec::new();
        for n in &names {
            let Ok(now) = sample(n) else { continue };
            let p = prev.get(n).cloned().unwrap_or(Value::Null);
            let f = |v: &Value, k: &str| v[k].as_u64().unwrap_or(0) as f64;
            let dc = f(&now, "cpu_total_ns") - f(&p, "cpu_total_ns");
            let ds = f(&now, "system_cpu_ns") - f(&p, "system_cpu_ns");
            let cpus = f(&now, "online_cpus").max(1.0);
            let cpu = if ds > 0.0 && dc >= 0.0 {
                dc / ds * cpus * 100.0
            } else {
                0.0
            };
            let (usage, limit) = (f(&now, "memory_usage"), f(&now, "memory_limit"));
            let mem_pct = if limit > 0.0 {
                usage / limit * 100.0
            } else {
                0.0
            };
            let id = now["id"]
                .as_str()
                .unwrap_or("")
                .chars()
                .take(12)
                .collect::<String>();
            let row = json!({
                "ID": id, "Container": n, "Name": now["name"], "CPUPerc": format!("{cpu:.2}%"),
                "MemUsage": format!("{} / {}", human_bin(usage as u64), human_bin(limit as u64)),
                "MemPerc": format!("{mem_pct:.2}%"), "PIDs": now["pids"].to_string(),
            });
            match &a.format {
                Some(fmt) => lines.push(template::render(fmt, &row).map_err(|e| anyhow!(e))?),
                None => table.push(
                    ["ID", "Name", "CPUPerc", "MemUsage", "MemPerc", "PIDs"]
                        .iter()
                        .map(|k| row[*k].as_str().unwrap_or("").to_string())
                        .collect(),
                ),
            }
            prev.insert(n.clone(), now);
        }
        let mut out = std::io::stdout().lock();
        if clear {
            write!(out, "\x1b[2J\x1b[H")?;
        }
        if a.format.is_some() {
            for l in lines {
                writeln!(out, "{l}")?;
            }
        } else {
            print_table(&mut out, &table)?;
        }
        out.flush()?;
        if a.no_stream {
            return Ok(0);
        }
    }
}

fn human_bin(b: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < units.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    // Go's %.4g, as docker's units.BytesSize prints.
    let digits = match v {
        x if x >= 1000.0 => 0,
        x if x >= 100.0 => 1,
        x if x >= 10.0 => 2,
        _ => 3,
    };
    let mut n = format!("{v:.digits$}");
    if n.contains('.') {
        n = n.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    format!("{n}{}", units[i])
}

/// `top`.
pub fn top(c: &Client, container: &str, ps_args: &[String]) -> Result<i32> {
    let v = c
        .json(
            "GET",
            &format!(
                "/containers/{}/top?ps_args={}",
                path_id(container),
                encode(&ps_args.join(" "))
            ),
            None,
        )
        .map_err(daemon_err1)?;
    let mut table = vec![v["Titles"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|t| t.as_str().unwrap_or("").to_string())
        .collect::<Vec<_>>()];
    for p in v["Processes"].as_array().cloned().unwrap_or_default() {
        table.push(
            p.as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|t| t.as_str().unwrap_or("").to_string())
                .collect(),
        );
    }
    print_table(&mut std::io::stdout().lock(), &table)?;
    Ok(0)
}

/// `wait`.
pub fn wait(c: &Client, containers: &[String]) -> Result<i32> {
    each(containers, |id| {
        let v = c.json("POST", &format!("/containers/{}/wait", path_id(id)), None)?;
        println!("{}", v["StatusCode"]);
        Ok(())
    })
}

/// `pause` / `unpause`.
pub fn pause(c: &Client, containers: &[String], pause: bool) -> Result<i32> {
    let verb = if pause { "pause" } else { "unpause" };
    each(containers, |id| {
        c.call(
            "POST",
            &format!("/containers/{}/{verb}", path_id(id)),
            Send::Nothing,
        )?;
        println!("{id}");
        Ok(())
    })
}

/// `rename`.
pub fn rename(c: &Client, old: &str, new: &str) -> Result<i32> {
    c.call(
        "POST",
        &format!("/containers/{}/rename?name={}", path_id(old), encode(new)),
        Send::Nothing,
    )
    .map_err(daemon_err1)?;
    Ok(0)
}

/// `update`.
#[derive(Args, Debug)]
pub struct UpdateArgs {
    #[command(flatten)]
    res: ResourceArgs,
    /// Restart policy to apply when a container exits.
    #[arg(long)]
    restart: Option<String>,
    containers: Vec<String>,
}

pub fn update(c: &Client, a: &UpdateArgs) -> Result<i32> {
    let r = &a.res;
    if let Some(m) = &r.memory {
        engine::spec::parse_memory(m)?;
    }
    let body = json!({
        "memory": r.memory, "memory_swap": r.memory_swap, "cpus": r.cpus,
        "cpu_shares": r.cpu_shares, "pids_limit": r.pids_limit, "restart": a.restart,
    });
    each(&a.containers, |id| {
        c.json(
            "POST",
            &format!("/containers/{}/update", path_id(id)),
            Some(&body),
        )?;
        println!("{id}");
        Ok(())
    })
}

/// `events`.
#[derive(Args, Debug)]
pub struct EventsArgs {
    /// Show all events created since timestamp.
    #[arg(long)]
    since: Option<String>,
    /// Stream events until this timestamp.
    #[arg(long)]
    until: Option<String>,
    /// Filter output based on conditions provided.
    #[arg(short = 'f', long)]
    filter: Vec<String>,
    /// Format output using a template (`json` for JSON lines).
    #[arg(long)]
    format: Option<String>,
}

pub fn events(c: &Client, a: &EventsArgs) -> Result<i32> {
    let mut target = "/events?".to_string();
    for (k, v) in [("since", &a.since), ("until", &a.until)] {
        if let Some(v) = v {
            target.push_str(&format!("{k}={}&", encode(v)));
        }
    }
    for f in &a.filter {
        target.push_str(&format!("filter={}&", encode(f)));
    }
    let resp = c.call("GET", &target, Send::Nothing).map_err(daemon_err1)?;
    let mut out = std::io::stdout();
    for line in std::io::BufRead::lines(std::io::BufReader::new(resp)) {
        let Ok(line) = line else { break };
        let Ok(e) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let text = match a.format.as_deref() {
            Some("json") | Some("{{json .}}") => e.to_string(),
            Some(f) => template::render(f, &e).map_err(|e| anyhow!(e))?,
            None => {
                let nanos = e["timeNano"].as_i64().unwrap_or(0) as i128;
                let when = timefmt::rfc3339(
                    (nanos / 1_000_000_000) as i64,
                    (nanos % 1_000_000_000) as u32,
                );
                let attrs = e["Actor"]["Attributes"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default();
                format!(
                    "{when} {} {} {} ({attrs})",
                    e["Type"].as_str().unwrap_or(""),
                    e["Action"].as_str().unwrap_or(""),
                    e["Actor"]["ID"].as_str().unwrap_or("")
                )
            }
        };
        writeln!(out, "{text}")?;
        out.flush()?;
    }
    Ok(0)
}

/// `cp`: `CONTAINER:SRC DEST` or `SRC CONTAINER:DEST`.
pub fn cp(c: &Client, src: &str, dst: &str) -> Result<i32> {
    let split = |s: &str| -> Option<(String, String)> {
        if s.starts_with('/') || s.starts_with('.') {
            return None;
        }
        s.split_once(':')
            .map(|(a, b)| (a.to_string(), b.to_string()))
    };
    match (split(src), split(dst)) {
        (Some((ctr, path)), None) => {
            let mut resp = c
                .call(
                    "GET",
                    &format!(
                        "/containers/{}/archive?path={}",
                        path_id(&ctr),
                        encode(&path)
                    ),
                    Send::Nothing,
                )
                .map_err(daemon_err1)?;
            let stat: Value = resp
                .headers
                .get(&api::STAT_HEADER.to_ascii_lowercase())
                .and_then(|h| serde_json::from_str(h).ok())
                .unwrap_or(Value::Null);
            let name = stat["name"].as_str().unwrap_or("").to_string();
            if dst == "-" {
                std::io::copy(&mut resp, &mut std::io::stdout().lock())?;
                return Ok(0);
            }
            let dst = PathBuf::from(dst);
            let (dir, rename) = if dst.is_dir() {
                (dst.clone(), None)
            } else {
                let parent = dst
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(std::path::Path::new("."))
                    .to_path_buf();
                if !parent.is_dir() {
                    bail!("destination directory {} does not exist", parent.display());
                }
                (parent, Some(dst.clone()))
            };
            // Extract into a fresh directory beside the destination, then move into place:
            // nothing in the archive can reach outside it.
            let tmp = dir.join(format!(".berth-cp-{}", std::process::id()));
            std::fs::create_dir(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
            let r = image::layer::apply(&mut resp, image::Compression::None, &tmp)
                .map_err(|e| anyhow!("extracting: {e}"))
                .and_then(|_| {
                    let from = tmp.join(if path.ends_with("/.") { "." } else { &name });
                    let to = rename.clone().unwrap_or_else(|| dir.join(&name));
                    if path.ends_with("/.") {
                        std::fs::create_dir_all(&to)?;
                        for e in std::fs::read_dir(&from)? {
                            let e = e?;
                            std::fs::rename(e.path(), to.join(e.file_name()))?;
                        }
                        Ok(())
                    } else {
                        if to.is_dir() && !from.is_dir() {
                            bail!("cannot overwrite directory {} with a file", to.display());
                        }
                        std::fs::rename(&from, &to)
                            .with_context(|| format!("moving into {}", to.display()))
                    }
                });
            let _ = std::fs::remove_dir_all(&tmp);
            r?;
            Ok(0)
        }
        (None, Some((ctr, path))) => {
            let srcp = PathBuf::from(src);
            let md = std::fs::symlink_metadata(&srcp)
                .with_context(|| format!("stat {}", srcp.display()))?;
            // Into an existing directory, the source keeps its name; otherwise it is renamed.
            let head = c.call(
                "HEAD",
                &format!(
                    "/containers/{}/archive?path={}",
                    path_id(&ctr),
                    encode(&path)
                ),
                Send::Nothing,
            );
            let dst_is_dir = match &head {
                Ok(r) => r
                    .headers
                    .get(&api::STAT_HEADER.to_ascii_lowercase())
                    .and_then(|h| serde_json::from_str::<Value>(h).ok())
                    .and_then(|s| s["mode"].as_u64())
                    .is_some_and(|m| m & 0o170000 == 0o040000),
                Err(_) => false,
            };
            let (dir, name) = if dst_is_dir {
                (
                    path.clone(),
                    srcp.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|| ".".into()),
                )
            } else {
                let p = std::path::Path::new(&path);
                (
                    p.parent()
                        .map(|d| d.display().to_string())
                        .filter(|d| !d.is_empty())
                        .unwrap_or_else(|| "/".into()),
                    p.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                )
            };
            let mut buf = Vec::new();
            {
                let mut b = tar::Builder::new(&mut buf);
                b.follow_symlinks(false);
                if md.is_dir() {
                    b.append_dir_all(&name, &srcp)?;
                } else {
                    b.append_path_with_name(&srcp, &name)?;
                }
                b.finish()?;
            }
            let mut reader = std::io::Cursor::new(buf);
            c.call(
                "PUT",
                &format!(
                    "/containers/{}/archive?path={}",
                    path_id(&ctr),
                    encode(&dir)
                ),
                Send::Stream(&mut reader, "application/x-tar"),
            )
            .map_err(daemon_err1)?;
            Ok(0)
        }
        (Some(_), Some(_)) => bail!("copying between containers is not supported"),
        (None, None) => bail!("must specify at least one container source"),
    }
}

/// `volume …`.
#[derive(clap::Subcommand, Debug)]
pub enum VolumeCmd {
    /// Create a volume.
    Create {
        /// Set metadata for a volume.
        #[arg(short = 'l', long = "label")]
        label: Vec<String>,
        /// The volume's name (random when left out).
        name: Option<String>,
    },
    /// List volumes.
    #[command(alias = "list")]
    Ls {
        /// Only display volume names.
        #[arg(short = 'q', long)]
        quiet: bool,
        /// Format output using a template.
        #[arg(long)]
        format: Option<String>,
    },
    /// Display detailed information on one or more volumes.
    Inspect {
        #[arg(short = 'f', long)]
        format: Option<String>,
        names: Vec<String>,
    },
    /// Remove one or more volumes.
    #[command(alias = "remove")]
    Rm {
        /// Force the removal of one or more volumes.
        #[arg(short = 'f', long)]
        force: bool,
        names: Vec<String>,
    },
    /// Remove unused volumes (anonymous ones; all unused with --all).
    Prune {
        #[arg(short = 'a', long)]
        all: bool,
        #[arg(short = 'f', long)]
        force: bool,
    },
}

pub fn volume(c: &Client, cmd: &VolumeCmd) -> Result<i32> {
    match cmd {
        VolumeCmd::Create { label, name } => {
            let labels: BTreeMap<String, String> = label
                .iter()
                .map(|l| {
                    let (k, v) = l.split_once('=').unwrap_or((l, ""));
                    (k.to_string(), v.to_string())
                })
                .collect();
            let v = c
                .json(
                    "POST",
                    "/volumes/create",
                    Some(&json!({"Name": name.clone().unwrap_or_default(), "Labels": labels})),
                )
                .map_err(daemon_err1)?;
            println!("{}", v["Name"].as_str().unwrap_or(""));
            Ok(0)
        }
        VolumeCmd::Ls { quiet, format } => {
            let v = c.json("GET", "/volumes", None).map_err(daemon_err1)?;
            let vols = v["Volumes"].as_array().cloned().unwrap_or_default();
            let mut out = std::io::stdout().lock();
            if *quiet {
                for v in &vols {
                    writeln!(out, "{}", v["Name"].as_str().unwrap_or(""))?;
                }
            } else if let Some(f) = format {
                for v in &vols {
                    writeln!(out, "{}", template::render(f, v).map_err(|e| anyhow!(e))?)?;
                }
            } else {
                let mut table = vec![vec!["DRIVER".to_string(), "VOLUME NAME".to_string()]];
                for v in &vols {
                    table.push(vec![
                        v["Driver"].as_str().unwrap_or("").into(),
                        v["Name"].as_str().unwrap_or("").into(),
                    ]);
                }
                print_table(&mut out, &table)?;
            }
            Ok(0)
        }
        VolumeCmd::Inspect { format, names } => {
            inspect_each(c, "volumes", names, format.as_deref())
        }
        VolumeCmd::Rm { force, names } => each(names, |n| {
            c.call(
                "DELETE",
                &format!("/volumes/{}?force={}", path_id(n), u8::from(*force)),
                Send::Nothing,
            )?;
            println!("{n}");
            Ok(())
        }),
        VolumeCmd::Prune { all, force: _ } => {
            let v = c
                .json(
                    "POST",
                    &format!("/volumes/prune?all={}", u8::from(*all)),
                    None,
                )
                .map_err(daemon_err1)?;
            let gone = v["VolumesDeleted"].as_array().cloned().unwrap_or_default();
            if !gone.is_empty() {
                println!("Deleted Volumes:");
                for g in gone {
                    println!("{}", g.as_str().unwrap_or(""));
                }
                println!();
            }
            println!(
                "Total reclaimed space: {}",
                human_size(v["SpaceReclaimed"].as_u64().unwrap_or(0))
            );
            Ok(0)
        }
    }
}

/// `container prune`.
pub fn container_prune(c: &Client) -> Result<i32> {
    let v = c
        .json("POST", "/containers/prune", None)
        .map_err(daemon_err1)?;
    let gone = v["ContainersDeleted"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !gone.is_empty() {
        println!("Deleted Containers:");
        for g in &gone {
            println!("{}", g.as_str().unwrap_or(""));
        }
        println!();
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_and_mount_flags() {
        assert_eq!(
            parse_volume_flag("/srv:/data:ro").unwrap(),
            MountSpec::Bind {
                source: "/srv".into(),
                target: "/data".into(),
                read_only: true
            }
        );
        assert_eq!(
            parse_volume_flag("cache:/c").unwrap(),
            MountSpec::Volume {
                name: "cache".into(),
                target: "/c".into(),
                read_only: false
            }
        );
        assert_eq!(
            parse_volume_flag("/anon").unwrap(),
            MountSpec::Volume {
                name: String::new(),
                target: "/anon".into(),
                read_only: false
            }
        );
        assert!(parse_volume_flag("a:b:c:d").is_err());
        assert!(parse_volume_flag("x:relative").is_err());
        assert!(parse_volume_flag("/a:/b:bogus").is_err());
        assert_eq!(
            parse_mount_flag("type=tmpfs,target=/t,tmpfs-size=1m,tmpfs-mode=1777").unwrap(),
            MountSpec::Tmpfs {
                target: "/t".into(),
                size: Some(1 << 20),
                mode: Some(0o1777)
            }
        );
        assert_eq!(
            parse_mount_flag("type=bind,src=/a,dst=/b,readonly").unwrap(),
            MountSpec::Bind {
                source: "/a".into(),
                target: "/b".into(),
                read_only: true
            }
        );
        assert!(parse_mount_flag("type=bind,target=/b").is_err());
        assert!(parse_mount_flag("type=nfs,target=/b").is_err());
        assert!(parse_mount_flag("type=volume,target=/b,colour=red").is_err());
        assert_eq!(
            parse_tmpfs_flag("/run:size=64k").unwrap(),
            MountSpec::Tmpfs {
                target: "/run".into(),
                size: Some(65536),
                mode: None
            }
        );
    }

    #[test]
    fn demultiplexing() {
        let mut s = Vec::new();
        for (st, d) in [(1u8, &b"out\n"[..]), (2, b"err\n"), (1, b"more")] {
            s.extend_from_slice(&[st, 0, 0, 0]);
            s.extend_from_slice(&(d.len() as u32).to_be_bytes());
            s.extend_from_slice(d);
        }
        let (mut o, mut e) = (Vec::new(), Vec::new());
        demux(&mut &s[..], &mut o, &mut e).unwrap();
        assert_eq!(o, b"out\nmore");
        assert_eq!(e, b"err\n");
    }
}

/// `sandbox …`.
#[derive(clap::Subcommand, Debug)]
pub enum SandboxCmd {
    /// Create a sandbox: network (with loopback), IPC and UTS namespaces that outlive their containers.
    Create {
        /// The hostname of its UTS namespace (default: its name).
        #[arg(long)]
        hostname: Option<String>,
        /// Attach it to a network (repeatable; none by default, as a pod before its CNI ADD).
        #[arg(long)]
        network: Vec<String>,
        /// Publish a port on its first network: [ip:][hostPort:]containerPort[/proto].
        #[arg(short = 'p', long)]
        publish: Vec<String>,
        name: String,
    },
    /// List sandboxes and the containers in them.
    #[command(alias = "list")]
    Ls,
    /// Remove sandboxes (with -f, and the containers in them).
    #[command(alias = "remove")]
    Rm {
        #[arg(short = 'f', long)]
        force: bool,
        names: Vec<String>,
    },
}

pub fn sandbox(c: &Client, cmd: &SandboxCmd) -> Result<i32> {
    match cmd {
        SandboxCmd::Create {
            hostname,
            network,
            publish,
            name,
        } => {
            let mut ports = Vec::new();
            for p in publish {
                ports.extend(engine::network::parse_publish(p).map_err(|e| anyhow!(e))?);
            }
            c.json(
                "POST",
                "/sandboxes/create",
                Some(&json!({
                    "Name": name, "Hostname": hostname.clone().unwrap_or_default(),
                    "Networks": network, "Ports": ports,
                })),
            )
            .map_err(daemon_err1)?;
            println!("{name}");
            Ok(0)
        }
        SandboxCmd::Ls => {
            let v = c.json("GET", "/sandboxes", None).map_err(daemon_err1)?;
            let mut table = vec![["NAME", "HOSTNAME", "CREATED", "CONTAINERS"]
                .map(String::from)
                .to_vec()];
            for s in v.as_array().cloned().unwrap_or_default() {
                let users: Vec<String> = s["Containers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|u| u.as_str().map(String::from))
                    .collect();
                table.push(vec![
                    s["Name"].as_str().unwrap_or("").into(),
                    s["Hostname"].as_str().unwrap_or("").into(),
                    ago(s["Created"].as_str().unwrap_or("")),
                    users.join(","),
                ]);
            }
            print_table(&mut std::io::stdout().lock(), &table)?;
            Ok(0)
        }
        SandboxCmd::Rm { force, names } => each(names, |n| {
            c.call(
                "DELETE",
                &format!("/sandboxes/{}?force={}", path_id(n), u8::from(*force)),
                Send::Nothing,
            )?;
            println!("{n}");
            Ok(())
        }),
    }
}

/// `network …`.
#[derive(clap::Subcommand, Debug)]
pub enum NetworkCmd {
    /// Create a bridge network.
    Create {
        /// Subnet in CIDR format (default: the next free 10.89.N.0/24).
        #[arg(long)]
        subnet: Option<String>,
        /// IPv4 gateway for the subnet.
        #[arg(long)]
        gateway: Option<String>,
        /// Restrict external access to the network.
        #[arg(long)]
        internal: bool,
        /// Set metadata on a network.
        #[arg(short = 'l', long = "label")]
        label: Vec<String>,
        /// Driver to manage the network (bridge only).
        #[arg(short = 'd', long, default_value = "bridge")]
        driver: String,
        name: String,
    },
    /// List networks.
    #[command(alias = "list")]
    Ls {
        #[arg(short = 'q', long)]
        quiet: bool,
        #[arg(long)]
        format: Option<String>,
    },
    /// Display detailed information on one or more networks.
    Inspect {
        #[arg(short = 'f', long)]
        format: Option<String>,
        names: Vec<String>,
    },
    /// Remove one or more networks.
    #[command(alias = "remove")]
    Rm { names: Vec<String> },
    /// Remove all unused user-defined networks.
    Prune {
        #[arg(short = 'f', long)]
        force: bool,
    },
    /// Connect a container to a network.
    Connect {
        #[arg(long)]
        alias: Vec<String>,
        #[arg(long)]
        ip: Option<String>,
        network: String,
        container: String,
    },
    /// Disconnect a container from a network.
    Disconnect {
        #[arg(short = 'f', long)]
        force: bool,
        network: String,
        container: String,
    },
}

pub fn network(c: &Client, cmd: &NetworkCmd) -> Result<i32> {
    match cmd {
        NetworkCmd::Create {
            subnet,
            gateway,
            internal,
            label,
            driver,
            name,
        } => {
            if driver != "bridge" {
                bail!("plugin \"{driver}\" not found: berth networks are CNI bridge networks");
            }
            let labels: BTreeMap<String, String> = label
                .iter()
                .map(|l| {
                    let (k, v) = l.split_once('=').unwrap_or((l, ""));
                    (k.to_string(), v.to_string())
                })
                .collect();
            let v = c
                .json(
                    "POST",
                    "/networks/create",
                    Some(&json!({"Name": name, "Subnet": subnet, "Gateway": gateway, "Internal": internal, "Labels": labels})),
                )
                .map_err(daemon_err1)?;
            println!("{}", v["Id"].as_str().unwrap_or(""));
            Ok(0)
        }
        NetworkCmd::Ls { quiet, format } => {
            let v = c.json("GET", "/networks", None).map_err(daemon_err1)?;
            let nets = v.as_array().cloned().unwrap_or_default();
            let mut out = std::io::stdout().lock();
            if *quiet {
                for n in &nets {
                    writeln!(
                        out,
                        "{}",
                        n["Id"]
                            .as_str()
                            .unwrap_or("")
                            .chars()
                            .take(12)
                            .collect::<String>()
                    )?;
                }
            } else if let Some(f) = format {
                for n in &nets {
                    writeln!(out, "{}", template::render(f, n).map_err(|e| anyhow!(e))?)?;
                }
            } else {
                let mut table = vec![[
                    "NETWORK ID",
                    "NAME",
                    "DRIVER",
                    "SCOPE",
                    "SUBNET",
                    "INTERNAL",
                ]
                .map(String::from)
                .to_vec()];
                for n in &nets {
                    table.push(vec![
                        n["Id"].as_str().unwrap_or("").chars().take(12).collect(),
                        n["Name"].as_str().unwrap_or("").into(),
                        n["Driver"].as_str().unwrap_or("").into(),
                        "local".into(),
                        n["Subnet"].as_str().unwrap_or("").into(),
                        n["Internal"].as_bool().unwrap_or(false).to_string(),
                    ]);
                }
                print_table(&mut out, &table)?;
            }
            Ok(0)
        }
        NetworkCmd::Inspect { format, names } => {
            inspect_each(c, "networks", names, format.as_deref())
        }
        NetworkCmd::Rm { names } => each(names, |n| {
            c.call(
                "DELETE",
                &format!("/networks/{}", path_id(n)),
                Send::Nothing,
            )?;
            println!("{n}");
            Ok(())
        }),
        NetworkCmd::Prune { force: _ } => {
            let v = c
                .json("POST", "/networks/prune", None)
                .map_err(daemon_err1)?;
            let gone = v["NetworksDeleted"].as_array().cloned().unwrap_or_default();
            if !gone.is_empty() {
                println!("Deleted Networks:");
                for g in gone {
                    println!("{}", g.as_str().unwrap_or(""));
                }
            }
            Ok(0)
        }
        NetworkCmd::Connect {
            alias,
            ip,
            network,
            container,
        } => {
            c.json(
                "POST",
                &format!("/networks/{}/connect", path_id(network)),
                Some(&json!({"Container": container, "Aliases": alias, "IP": ip})),
            )
            .map_err(daemon_err1)?;
            Ok(0)
        }
        NetworkCmd::Disconnect {
            force,
            network,
            container,
        } => {
            c.json(
                "POST",
                &format!("/networks/{}/disconnect", path_id(network)),
                Some(&json!({"Container": container, "Force": force})),
            )
            .map_err(daemon_err1)?;
            Ok(0)
        }
    }
}

/// Docker's PORTS column / `port` lines: `0.0.0.0:8080->80/tcp`.
fn port_lines(ports: &Value) -> Vec<(String, String)> {
    ports
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let ip = m["hostIP"]
                .as_str()
                .filter(|i| !i.is_empty())
                .unwrap_or("0.0.0.0");
            (
                format!(
                    "{}/{}",
                    m["containerPort"],
                    m["protocol"].as_str().unwrap_or("tcp")
                ),
                format!("{ip}:{}", m["hostPort"]),
            )
        })
        .collect()
}

/// `port CONTAINER [PRIVATE_PORT[/PROTO]]`.
pub fn port(c: &Client, container: &str, private: Option<&str>) -> Result<i32> {
    let list = c
        .json("GET", "/containers?all=1", None)
        .map_err(daemon_err1)?;
    let info = c
        .json("GET", &format!("/containers/{}", path_id(container)), None)
        .map_err(daemon_err1)?;
    let id = info["Id"].as_str().unwrap_or("");
    let row = list
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["id"] == id)
        .cloned()
        .unwrap_or(Value::Null);
    let want = private.map(|p| {
        if p.contains('/') {
            p.to_string()
        } else {
            format!("{p}/tcp")
        }
    });
    let mut found = false;
    for (ctr, host) in port_lines(&row["ports"]) {
        match &want {
            Some(w) if *w != ctr => {}
            Some(_) => {
                println!("{host}");
                found = true;
            }
            None => {
                println!("{ctr} -> {host}");
                found = true;
            }
        }
    }
    if let (Some(w), false) = (&want, found) {
        bail!("No public port '{w}' published for {container}");
    }
    Ok(0)
}
