//! `berth runtime …`: the OCI runtime command line (create, start, state, kill, delete, run,
//! exec, ps, list, spec) with runc's flags, so containerd, podman or dockerd can use berth.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use runtime::{CreateOptions, ExecOptions, Runtime};

/// The runtime verb of a command line (the arguments after `runtime`, or after
/// `berth-runtime`), found without building the parser: its global flags are skipped, with the
/// value of those that take one. `None` when something else comes first.
pub fn verb(args: &[std::ffi::OsString]) -> Option<&str> {
    let mut it = args.iter().map(|a| a.to_str());
    while let Some(a) = it.next()? {
        match a {
            "--root" | "--log" | "--log-format" => {
                it.next()?;
            }
            "--strict-spec" | "--debug" | "--systemd-cgroup" => {}
            a if a.starts_with("--root=")
                || a.starts_with("--log=")
                || a.starts_with("--log-format=") => {}
            a if a.starts_with('-') => return None,
            verb => return Some(verb),
        }
    }
    None
}

/// Whether the verb enters a container, so the binary must be protected first
/// ([`runtime::selfexe::ensure_protected`]): done before anything else in `main`, so the
/// re-execution happens before the command line is parsed and not after.
pub fn enters_container(args: &[std::ffi::OsString]) -> bool {
    matches!(verb(args), Some("create" | "run" | "exec"))
}

#[derive(Args)]
pub struct RuntimeArgs {
    /// Directory for container state.
    #[arg(long, global = true, default_value = "/run/berth/runtime")]
    root: PathBuf,
    /// Write the runtime's own messages to this file.
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// Format of --log.
    #[arg(long = "log-format", global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Refuse unknown properties in config.json and process files instead of ignoring them
    /// with a warning in the log (the OCI runtime spec's rule).
    #[arg(long = "strict-spec", global = true)]
    strict_spec: bool,
    /// Accepted for compatibility; berth always logs what it warns about.
    #[arg(long, global = true)]
    debug: bool,
    /// Manage cgroups through systemd (not supported: berth writes cgroupfs directly).
    #[arg(long = "systemd-cgroup", global = true)]
    systemd_cgroup: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Format {
    Table,
    Json,
}

#[derive(Args)]
struct CreateArgs {
    /// Path to the bundle (the directory holding config.json).
    #[arg(long, short = 'b', default_value = ".")]
    bundle: PathBuf,
    /// Unix socket to receive the pty master on, when process.terminal is true.
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    /// File to write the container process's pid to.
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    /// Pass N additional fds (3 .. 3+N-1) into the container.
    #[arg(long = "preserve-fds", default_value_t = 0)]
    preserve_fds: i32,
    /// Accepted for compatibility (berth always uses pivot_root).
    #[arg(long = "no-pivot")]
    no_pivot: bool,
    /// Accepted for compatibility (berth does not create session keyrings).
    #[arg(long = "no-new-keyring")]
    no_new_keyring: bool,
    id: String,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a container: set everything up and leave its process waiting for `start`.
    Create(CreateArgs),
    /// Start a created container's process.
    Start { id: String },
    /// Print the OCI state of a container as JSON.
    State { id: String },
    /// Send a signal (default SIGTERM) to a container's init, or with --all to every process.
    Kill {
        #[arg(long, short = 'a')]
        all: bool,
        id: String,
        #[arg(default_value = "SIGTERM")]
        signal: String,
    },
    /// Delete a container and everything it holds.
    Delete {
        #[arg(long, short = 'f')]
        force: bool,
        id: String,
    },
    /// Create and start a container; waits for it unless --detach.
    Run {
        #[command(flatten)]
        create: CreateArgs,
        #[arg(long, short = 'd')]
        detach: bool,
        /// Keep the container's state after it exits (default: delete it).
        #[arg(long)]
        keep: bool,
    },
    /// Freeze every process of a running container.
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// Change a running container's resources (cgroup limits), like runc update.
    Update(UpdateArgs),
    /// Run another process in a running container.
    Exec(ExecArgs),
    /// List the processes in a container.
    Ps {
        #[arg(long, short = 'f', value_enum, default_value = "table")]
        format: Format,
        id: String,
        /// Options passed to ps(1) (default -ef).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// List containers.
    List {
        #[arg(long, short = 'f', value_enum, default_value = "table")]
        format: Format,
        #[arg(long, short = 'q')]
        quiet: bool,
    },
    /// Write a default config.json into the bundle (like `runc spec`); with a command, it becomes process.args and the terminal is off.
    Spec {
        #[arg(long, short = 'b', default_value = ".")]
        bundle: PathBuf,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Print resource usage of a container's cgroup as JSON (memory, cpu, pids, OOM kills).
    Events {
        /// Print stats once and exit.
        #[arg(long)]
        stats: bool,
        id: String,
    },
}

#[derive(Args)]
struct UpdateArgs {
    /// A LinuxResources JSON document (`-` for stdin); the flags below override it.
    #[arg(long, short = 'r')]
    resources: Option<PathBuf>,
    /// Memory limit (bytes, or with a k, m or g suffix).
    #[arg(long)]
    memory: Option<String>,
    /// Memory plus swap limit (-1: unlimited).
    #[arg(long = "memory-swap")]
    memory_swap: Option<String>,
    #[arg(long = "memory-reservation")]
    memory_reservation: Option<String>,
    #[arg(long = "cpu-shares")]
    cpu_shares: Option<u64>,
    #[arg(long = "cpu-quota")]
    cpu_quota: Option<i64>,
    #[arg(long = "cpu-period")]
    cpu_period: Option<u64>,
    #[arg(long = "cpuset-cpus")]
    cpuset_cpus: Option<String>,
    #[arg(long = "cpuset-mems")]
    cpuset_mems: Option<String>,
    #[arg(long = "pids-limit")]
    pids_limit: Option<i64>,
    id: String,
}

/// Bytes from `64m`-style sizes (binary units, as runc's update takes them); -1 stays -1.
fn parse_bytes(flag: &str, s: &str) -> Result<i64> {
    let t = s.trim().to_ascii_lowercase();
    if t == "-1" {
        return Ok(-1);
    }
    let (num, mult) = match t.trim_end_matches('b').chars().last() {
        Some('k') => (&t[..t.trim_end_matches('b').len() - 1], 1i64 << 10),
        Some('m') => (&t[..t.trim_end_matches('b').len() - 1], 1 << 20),
        Some('g') => (&t[..t.trim_end_matches('b').len() - 1], 1 << 30),
        _ => (t.trim_end_matches('b'), 1),
    };
    let n: i64 = num.parse().with_context(|| {
        format!("--{flag} {s:?}: expected bytes, optionally with a k, m or g suffix")
    })?;
    n.checked_mul(mult)
        .with_context(|| format!("--{flag} {s:?}: too large"))
}

fn update(rt: &Runtime, u: UpdateArgs) -> Result<()> {
    let mut doc: serde_json::Value = match &u.resources {
        Some(p) => {
            let text = if p.as_os_str() == "-" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
                s
            } else {
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
            };
            serde_json::from_str(&text)
                .with_context(|| format!("--resources {}: not JSON", p.display()))?
        }
        None => serde_json::json!({}),
    };
    let mut set = |path: [&str; 2], v: serde_json::Value| doc[path[0]][path[1]] = v;
    if let Some(m) = &u.memory {
        set(["memory", "limit"], parse_bytes("memory", m)?.into());
    }
    if let Some(m) = &u.memory_swap {
        set(["memory", "swap"], parse_bytes("memory-swap", m)?.into());
    }
    if let Some(m) = &u.memory_reservation {
        set(
            ["memory", "reservation"],
            parse_bytes("memory-reservation", m)?.into(),
        );
    }
    if let Some(v) = u.cpu_shares {
        set(["cpu", "shares"], v.into());
    }
    if let Some(v) = u.cpu_quota {
        set(["cpu", "quota"], v.into());
    }
    if let Some(v) = u.cpu_period {
        set(["cpu", "period"], v.into());
    }
    if let Some(v) = &u.cpuset_cpus {
        set(["cpu", "cpus"], v.clone().into());
    }
    if let Some(v) = &u.cpuset_mems {
        set(["cpu", "mems"], v.clone().into());
    }
    if let Some(v) = u.pids_limit {
        set(["pids", "limit"], v.into());
    }
    let path = u
        .resources
        .clone()
        .unwrap_or_else(|| PathBuf::from("--resources"));
    let resources: oci_spec::runtime::LinuxResources =
        runtime::spec::parse(&doc.to_string(), &path)?;
    rt.update(&u.id, &resources)?;
    Ok(())
}

#[derive(Args)]
struct ExecArgs {
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    #[arg(long)]
    cwd: Option<PathBuf>,
    #[arg(long, short = 'e')]
    env: Vec<String>,
    #[arg(long, short = 't')]
    tty: bool,
    /// uid[:gid]
    #[arg(long, short = 'u')]
    user: Option<String>,
    #[arg(long = "additional-gids", short = 'g')]
    additional_gids: Vec<u32>,
    /// A process.json with the whole process to run.
    #[arg(long, short = 'p')]
    process: Option<PathBuf>,
    #[arg(long, short = 'd')]
    detach: bool,
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    /// Add a capability (e.g. CAP_NET_ADMIN).
    #[arg(long, short = 'c')]
    cap: Vec<String>,
    #[arg(long = "no-new-privs")]
    no_new_privs: bool,
    #[arg(long = "preserve-fds", default_value_t = 0)]
    preserve_fds: i32,
    id: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// Runs a runtime command and returns the process exit code.
pub fn main(args: RuntimeArgs) -> i32 {
    runtime::log::init(args.log.clone(), matches!(args.log_format, LogFormat::Json));
    runtime::spec::set_strict(args.strict_spec);
    let has_log = args.log.is_some();
    match dispatch(args) {
        Ok(code) => code,
        Err(e) => {
            let msg = format!("{e:#}");
            if has_log {
                runtime::log::error(&msg);
            }
            eprintln!("berth: {msg}");
            1
        }
    }
}

fn options(c: &CreateArgs) -> CreateOptions {
    let _ = (c.no_pivot, c.no_new_keyring);
    CreateOptions {
        id: c.id.clone(),
        bundle: c.bundle.clone(),
        pid_file: c.pid_file.clone(),
        console_socket: c.console_socket.clone(),
        preserve_fds: c.preserve_fds,
    }
}

fn dispatch(args: RuntimeArgs) -> Result<i32> {
    if args.systemd_cgroup {
        bail!("--systemd-cgroup is not supported: berth manages cgroupfs directly");
    }
    let _ = args.debug;
    let rt = Runtime::new(&args.root);
    match args.command {
        Cmd::Create(c) => {
            runtime::selfexe::ensure_protected()
                .context("protecting the runtime binary (CVE-2019-5736)")?;
            rt.create(&options(&c))?;
        }
        Cmd::Start { id } => rt.start(&id)?,
        Cmd::State { id } => {
            let s = rt.state(&id)?;
            println!("{}", serde_json::to_string_pretty(&s)?);
        }
        Cmd::Kill { all, id, signal } => rt.kill(&id, runtime::signal::parse(&signal)?, all)?,
        Cmd::Delete { force, id } => rt.delete(&id, force)?,
        Cmd::Pause { id } => rt.pause(&id)?,
        Cmd::Update(u) => update(&rt, u)?,
        Cmd::Resume { id } => rt.resume(&id)?,
        Cmd::Run {
            create,
            detach,
            keep,
        } => {
            runtime::selfexe::ensure_protected()
                .context("protecting the runtime binary (CVE-2019-5736)")?;
            if keep && !detach {
                bail!("--keep is only meaningful with --detach: a foreground run deletes its container when it exits");
            }
            return Ok(rt.run(&options(&create), detach)?);
        }
        Cmd::Exec(e) => {
            runtime::selfexe::ensure_protected()
                .context("protecting the runtime binary (CVE-2019-5736)")?;
            return exec(&rt, e);
        }
        Cmd::Ps {
            format,
            id,
            ps_args,
        } => ps(&rt, format, &id, &ps_args)?,
        Cmd::List { format, quiet } => list(&rt, format, quiet)?,
        Cmd::Spec { bundle, args } => spec(&bundle, &args)?,
        Cmd::Events { stats, id } => {
            let _ = stats;
            let s = rt.stats(&id)?;
            println!(
                "{}",
                serde_json::to_string_pretty(
                    &serde_json::json!({ "type": "stats", "id": id, "data": s })
                )?
            );
        }
    }
    Ok(0)
}

fn exec(rt: &Runtime, e: ExecArgs) -> Result<i32> {
    let process: oci_spec::runtime::Process = match &e.process {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            runtime::spec::parse(&text, path)?
        }
        None => {
            if e.command.is_empty() {
                bail!("exec: no command given (pass one after the container id, or --process)");
            }
            let record = rt.record(&e.id)?;
            let mut p = record
                .spec
                .process()
                .clone()
                .context("the container has no process to take defaults from")?;
            p.set_args(Some(e.command.clone()));
            let mut env = p.env().clone().unwrap_or_default();
            env.extend(e.env.iter().cloned());
            p.set_env(Some(env));
            if let Some(cwd) = &e.cwd {
                p.set_cwd(cwd.clone());
            }
            p.set_terminal(Some(e.tty));
            if let Some(u) = &e.user {
                let (uid, gid) = match u.split_once(':') {
                    Some((a, b)) => (
                        a.parse::<u32>().context("--user: uid must be a number")?,
                        Some(b.parse::<u32>().context("--user: gid must be a number")?),
                    ),
                    None => (
                        u.parse::<u32>().context("--user: uid must be a number")?,
                        None,
                    ),
                };
                p.user_mut().set_uid(uid);
                if let Some(g) = gid {
                    p.user_mut().set_gid(g);
                }
            }
            if !e.additional_gids.is_empty() {
                p.user_mut()
                    .set_additional_gids(Some(e.additional_gids.clone()));
            }
            if e.no_new_privs {
                p.set_no_new_privileges(Some(true));
            }
            if !e.cap.is_empty() {
                let mut caps = p.capabilities().clone().unwrap_or_default();
                for name in &e.cap {
                    let cap: oci_spec::runtime::Capability =
                        serde_json::from_value(serde_json::Value::String(name.to_uppercase()))
                            .with_context(|| format!("--cap: unknown capability {name:?}"))?;
                    for set in [
                        caps.bounding().clone(),
                        caps.effective().clone(),
                        caps.permitted().clone(),
                        caps.ambient().clone(),
                        caps.inheritable().clone(),
                    ]
                    .iter()
                    .enumerate()
                    {
                        let mut s = set.1.clone().unwrap_or_default();
                        s.insert(cap);
                        match set.0 {
                            0 => caps.set_bounding(Some(s)),
                            1 => caps.set_effective(Some(s)),
                            2 => caps.set_permitted(Some(s)),
                            3 => caps.set_ambient(Some(s)),
                            _ => caps.set_inheritable(Some(s)),
                        };
                    }
                }
                p.set_capabilities(Some(caps));
            }
            p
        }
    };
    let opts = ExecOptions {
        process,
        detach: e.detach,
        pid_file: e.pid_file,
        console_socket: e.console_socket,
        preserve_fds: e.preserve_fds,
    };
    Ok(rt.exec(&e.id, &opts)?)
}

fn ps(rt: &Runtime, format: Format, id: &str, ps_args: &[String]) -> Result<()> {
    let pids = rt.pids(id)?;
    if format == Format::Json {
        println!("{}", serde_json::to_string(&pids)?);
        return Ok(());
    }
    let args: Vec<String> = if ps_args.is_empty() {
        vec!["-ef".into()]
    } else {
        ps_args.to_vec()
    };
    let out = std::process::Command::new("ps")
        .args(&args)
        .output()
        .context("running ps(1)")?;
    if !out.status.success() {
        bail!(
            "ps {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let col = header
        .split_whitespace()
        .position(|h| h == "PID")
        .context("ps output has no PID column")?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{header}")?;
    for line in lines {
        if let Some(pid) = line
            .split_whitespace()
            .nth(col)
            .and_then(|p| p.parse::<i32>().ok())
        {
            if pids.contains(&pid) {
                writeln!(stdout, "{line}")?;
            }
        }
    }
    Ok(())
}

fn list(rt: &Runtime, format: Format, quiet: bool) -> Result<()> {
    let states = rt.list()?;
    let mut out = std::io::stdout().lock();
    if quiet {
        for s in &states {
            writeln!(out, "{}", s.id)?;
        }
        return Ok(());
    }
    if format == Format::Json {
        writeln!(out, "{}", serde_json::to_string(&states)?)?;
        return Ok(());
    }
    let rows: Vec<[String; 5]> = states
        .iter()
        .map(|s| {
            [
                s.id.clone(),
                s.pid.to_string(),
                s.status.to_string(),
                s.bundle.display().to_string(),
                s.created.clone(),
            ]
        })
        .collect();
    let header = ["ID", "PID", "STATUS", "BUNDLE", "CREATED"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    for r in std::iter::once(&header).chain(rows.iter()) {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        writeln!(out, "{}", line.join("   ").trim_end())?;
    }
    Ok(())
}

/// The default configuration, as `runc spec` writes it (hostname aside).
fn spec(bundle: &Path, args: &[String]) -> Result<()> {
    let path = bundle.join("config.json");
    if path.exists() {
        bail!("{} already exists: remove it first", path.display());
    }
    let terminal = args.is_empty();
    let args: Vec<String> = if args.is_empty() {
        vec!["sh".into()]
    } else {
        args.to_vec()
    };
    let caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"];
    let config = serde_json::json!({
        "ociVersion": runtime::OCI_VERSION,
        "process": {
            "terminal": terminal,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "berth",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
        ],
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}],
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    });
    std::fs::write(&path, serde_json::to_string_pretty(&config)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<std::ffi::OsString> {
        s.split_whitespace().map(Into::into).collect()
    }

    #[test]
    fn the_verb_is_found_past_global_flags() {
        for (line, want) in [
            ("run --bundle b x", Some("run")),
            (
                "--root /r --log /l --log-format json exec x sh",
                Some("exec"),
            ),
            (
                "--root=/r --strict-spec --debug --systemd-cgroup create x",
                Some("create"),
            ),
            ("--log-format=text state x", Some("state")),
            ("--unknown run x", None),
            ("--root", None),
            ("", None),
        ] {
            assert_eq!(verb(&args(line)), want, "{line}");
        }
        assert!(enters_container(&args("--root /r run x")));
        assert!(!enters_container(&args("--root /r delete x")));
        // A flag's value is never taken for the verb.
        assert!(!enters_container(&args("--root run state x")));
    }
}
