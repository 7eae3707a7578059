//! spec.rs: turns an image's configuration and `docker run` flags into an OCI runtime spec,
//! with Docker's semantics (command, environment, user, capabilities, mounts, namespaces,
//! resources and the default seccomp profile).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capability, LinuxCapabilities, LinuxCpu, LinuxMemory, LinuxNamespace, LinuxNamespaceType,
    LinuxPids, LinuxResources, LinuxSeccomp, Mount, PosixRlimit, PosixRlimitBuilder,
    PosixRlimitType, Process, Root, Spec, User,
};

use crate::defaults;

/// What the image says (the OCI/Docker image config's `config` object).
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageConfig {
    /// `Entrypoint`.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// `Cmd`.
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// `Env`: `KEY=value` entries.
    #[serde(default)]
    pub env: Option<Vec<String>>,
    /// `WorkingDir`.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// `User`: `user[:group]`, names or numbers.
    #[serde(default)]
    pub user: Option<String>,
    /// `StopSignal`.
    #[serde(default)]
    pub stop_signal: Option<String>,
    /// `Labels`.
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// `Healthcheck`: the image's HEALTHCHECK.
    #[serde(default)]
    pub healthcheck: Option<crate::health::HealthConfig>,
    /// `ExposedPorts`: `{"80/tcp": {}}`.
    #[serde(default)]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
}

/// The `docker run` flags that shape the spec.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunOptions {
    /// The command line after the image name (replaces the image's `Cmd`).
    pub args: Vec<String>,
    /// `--entrypoint`: replaces the image's entrypoint and drops its `Cmd`; `""` clears it.
    pub entrypoint: Option<String>,
    /// `-e, --env`: `K=V`, or `K` alone to take the value from the host (dropped when unset).
    pub env: Vec<String>,
    /// `-w, --workdir`: absolute path.
    pub workdir: Option<String>,
    /// `-u, --user`: `user[:group]`, names or numbers.
    pub user: Option<String>,
    /// `-h, --hostname` (the caller passes the container ID prefix when the flag is absent).
    pub hostname: Option<String>,
    /// `-t, --tty`.
    pub tty: bool,
    /// `--read-only`.
    pub read_only: bool,
    /// `--privileged`.
    pub privileged: bool,
    /// `--cap-add`: names with or without `CAP_`, or `ALL`.
    pub cap_add: Vec<String>,
    /// `--cap-drop`: names with or without `CAP_`, or `ALL`.
    pub cap_drop: Vec<String>,
    /// `--security-opt`: `no-new-privileges[:true|false]`, `seccomp=unconfined`,
    /// `seccomp=<file>` (the file's text in `seccomp_profile`); `apparmor=` and `label=` are
    /// accepted and ignored (berth has no LSM support).
    pub security_opt: Vec<String>,
    /// The text of the profile file named by `--security-opt seccomp=<file>`.
    pub seccomp_profile: Option<String>,
    /// `-m, --memory`: `64m`, `1.5g`, …
    pub memory: Option<String>,
    /// `--memory-swap`: memory plus swap; `-1` = unlimited swap.
    pub memory_swap: Option<String>,
    /// `--cpus`: `1.5`.
    pub cpus: Option<String>,
    /// `-c, --cpu-shares`.
    pub cpu_shares: Option<u64>,
    /// `--pids-limit`: `-1` = unlimited.
    pub pids_limit: Option<i64>,
    /// `--ulimit`: `nofile=1024:2048`.
    pub ulimits: Vec<String>,
    /// `-v`, `--mount`, `--tmpfs`.
    pub mounts: Vec<MountSpec>,
    /// `--network`.
    pub network: Network,
    /// `--ipc`.
    pub ipc: Ipc,
    /// The UTS namespace to join (set by the engine for `--network container:<name>`).
    pub uts_join: Option<PathBuf>,
    /// `-l, --label` (not part of the runtime spec).
    pub labels: BTreeMap<String, String>,
    /// `--stop-signal` (not part of the runtime spec).
    pub stop_signal: Option<String>,
    /// The cgroup the container's own goes under (`--cgroup-parent`; a pod's cgroup for the
    /// node agent's containers). Default `/berth`.
    #[serde(default)]
    pub cgroup_parent: Option<String>,
    /// `--group-add` (numeric): more supplementary groups for the process.
    #[serde(default)]
    pub group_add: Vec<u32>,
    /// `--sysctl`: namespaced kernel parameters set in the container.
    #[serde(default)]
    pub sysctls: BTreeMap<String, String>,
    /// `--pid host`: no PID namespace of its own.
    #[serde(default)]
    pub pid_host: bool,
    /// `--shm-size`: the size of `/dev/shm` in bytes (default 64 MiB, as Docker's).
    #[serde(default)]
    pub shm_size: Option<u64>,
}

/// A mount the user asked for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum MountSpec {
    /// `-v /src:/dst[:ro]` or `--mount type=bind,…`.
    Bind {
        /// Host path (absolute).
        source: PathBuf,
        /// Path in the container (absolute).
        target: String,
        /// Mount read-only.
        #[serde(default)]
        read_only: bool,
    },
    /// `-v name:/dst[:ro]` or `--mount type=volume,…`: a named volume (the engine resolves it
    /// to a bind mount of the volume's directory before generating the spec).
    Volume {
        /// The volume's name; empty for an anonymous volume.
        #[serde(default)]
        name: String,
        /// Path in the container (absolute).
        target: String,
        /// Mount read-only.
        #[serde(default)]
        read_only: bool,
    },
    /// `--tmpfs /dst[:size=…,mode=…]`.
    Tmpfs {
        /// Path in the container (absolute).
        target: String,
        /// Size in bytes.
        #[serde(default)]
        size: Option<u64>,
        /// Permission bits of the root directory.
        #[serde(default)]
        mode: Option<u32>,
    },
}

impl MountSpec {
    /// The path in the container.
    pub fn target(&self) -> &str {
        match self {
            MountSpec::Bind { target, .. }
            | MountSpec::Volume { target, .. }
            | MountSpec::Tmpfs { target, .. } => target,
        }
    }
}

/// `--network`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// `none`: an own, empty network namespace.
    #[default]
    None,
    /// `host`: the host's network namespace.
    Host,
    /// `container:<name>`: another container's network (and UTS) namespace; the engine
    /// resolves it to `Join`.
    Container(String),
    /// A network namespace file to join, such as `/proc/<pid>/ns/net` or a pinned sandbox's.
    Join(PathBuf),
}

/// `--ipc`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ipc {
    /// `private` (and Docker's `shareable`): an own IPC namespace.
    #[default]
    Private,
    /// `host`: the host's IPC namespace.
    Host,
    /// `container:<name>`: another container's; the engine resolves it to `Join`.
    Container(String),
    /// An IPC namespace file to join.
    Join(PathBuf),
}

impl Network {
    /// Parses `--network`: `none`, `host`, `container:<name>`.
    pub fn parse(s: &str) -> Result<Network, RunSpecError> {
        match s {
            "" | "none" | "default" => Ok(Network::None),
            "host" => Ok(Network::Host),
            _ => match s.strip_prefix("container:") {
                Some(c) if !c.is_empty() => Ok(Network::Container(c.to_string())),
                _ => Err(RunSpecError::UnknownNetwork(s.to_string())),
            },
        }
    }
}

impl Ipc {
    /// Parses `--ipc`: `private`, `shareable`, `host`, `container:<name>`.
    pub fn parse(s: &str) -> Result<Ipc, RunSpecError> {
        match s {
            "" | "private" | "shareable" => Ok(Ipc::Private),
            "host" => Ok(Ipc::Host),
            _ => match s.strip_prefix("container:") {
                Some(c) if !c.is_empty() => Ok(Ipc::Container(c.to_string())),
                _ => Err(RunSpecError::InvalidIpc(s.to_string())),
            },
        }
    }
}

/// Why the flags cannot be turned into a spec. Messages name the flag and use Docker's wording
/// where it has one.
#[derive(Debug, thiserror::Error)]
pub enum RunSpecError {
    /// Neither the image nor the command line give a command.
    #[error("no command specified")]
    NoCommand,
    /// A size flag (`--memory`, `--memory-swap`) is not a size.
    #[error("invalid {flag} {value:?}: expected a number with an optional b, k, m or g suffix")]
    InvalidSize {
        /// The flag's name, without dashes.
        flag: &'static str,
        /// The value given.
        value: String,
    },
    /// `--memory` below 6 MiB.
    #[error("Minimum memory limit allowed is 6MB")]
    MemoryTooLow,
    /// `--memory-swap` below `--memory`.
    #[error("Minimum memoryswap limit should be larger than memory limit, see usage")]
    MemorySwapTooLow,
    /// `--memory-swap` without `--memory`.
    #[error("You should always set the Memory limit when using Memoryswap limit, see usage")]
    MemorySwapWithoutMemory,
    /// `--cpus` is not a positive decimal number.
    #[error("invalid cpus {value:?}: {reason}")]
    InvalidCpus {
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `--ulimit` is malformed.
    #[error("invalid ulimit {value:?}: {reason}")]
    InvalidUlimit {
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `--cap-add` or `--cap-drop` names no capability.
    #[error("unknown capability: {0:?}")]
    UnknownCapability(String),
    /// `-u` names a user that the container's `/etc/passwd` does not list.
    #[error("unable to find user {0}: no matching entries in passwd file")]
    UnknownUser(String),
    /// `-u` names a group that the container's `/etc/group` does not list.
    #[error("unable to find group {0}: no matching entries in group file")]
    UnknownGroup(String),
    /// `-u` is malformed (or an ID is out of range).
    #[error("invalid user {0:?}: expected user[:group], names or numbers")]
    InvalidUser(String),
    /// `/etc/passwd` or `/etc/group` of the container cannot be read.
    #[error("reading {path}: {source}")]
    UserDb {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// `-e` with an empty name.
    #[error("invalid environment variable: {0}")]
    InvalidEnv(String),
    /// `-w` is not absolute.
    #[error("the working directory '{0}' is invalid, it needs to be an absolute path")]
    InvalidWorkdir(String),
    /// A mount's path is not absolute (or is `/`).
    #[error("invalid mount config: invalid mount path: '{0}' mount path must be absolute")]
    InvalidMountPath(String),
    /// An unknown or malformed `--security-opt`.
    #[error("invalid --security-opt: {0:?}")]
    InvalidSecurityOpt(String),
    /// `--security-opt seccomp=<file>` but the caller passed no profile text.
    #[error("--security-opt seccomp=<file> given but the profile file's content is missing")]
    SeccompProfileMissing,
    /// The seccomp profile file is not a valid profile.
    #[error("decoding seccomp profile failed: {0}")]
    InvalidSeccompProfile(serde_json::Error),
    /// `--network` names no network berth knows.
    #[error("network {0} not found")]
    UnknownNetwork(String),
    /// `--ipc` is not a mode.
    #[error("invalid IPC mode: {0}")]
    InvalidIpc(String),
    /// A volume or `container:` reference reached `generate` unresolved (an engine bug).
    #[error("unresolved {0}: the engine resolves it before generating the spec")]
    Unresolved(&'static str),
}

const KIB: f64 = 1024.0;

/// Parses a size the way Docker's `RAMInBytes` does: a decimal number, optionally followed by
/// `b`, `k`, `m`, `g`, `t` or `p` (binary units, case-insensitive, optional `i`/`b` after them).
fn parse_size(flag: &'static str, s: &str) -> Result<i64, RunSpecError> {
    let bad = || RunSpecError::InvalidSize {
        flag,
        value: s.to_string(),
    };
    let t = s.trim();
    let digits_end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(digits_end);
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') || num.matches('.').count() > 1
    {
        return Err(bad());
    }
    let unit = unit.trim_start_matches(' ').to_ascii_lowercase();
    let mut chars = unit.chars();
    let mult = match chars.next() {
        None => 1.0,
        Some('b') => {
            return if chars.next().is_none() {
                num_times(num, 1.0).ok_or_else(bad)
            } else {
                Err(bad())
            }
        }
        Some('k') => KIB,
        Some('m') => KIB * KIB,
        Some('g') => KIB * KIB * KIB,
        Some('t') => KIB * KIB * KIB * KIB,
        Some('p') => KIB * KIB * KIB * KIB * KIB,
        Some(_) => return Err(bad()),
    };
    let rest: String = chars.collect();
    if !matches!(rest.as_str(), "" | "b" | "i" | "ib") {
        return Err(bad());
    }
    num_times(num, mult).ok_or_else(bad)
}

fn num_times(num: &str, mult: f64) -> Option<i64> {
    let n: f64 = num.parse().ok()?;
    let v = n * mult;
    (v.is_finite() && v < i64::MAX as f64).then_some(v as i64)
}

/// Parses a size in Docker's units without the memory minimum (`--log-opt max-size`).
pub fn parse_memory_unchecked(s: &str) -> Result<i64, RunSpecError> {
    parse_size("size", s)
}

/// Parses `-m, --memory` (Docker's units), refusing limits below Docker's minimum of 6 MiB.
pub fn parse_memory(s: &str) -> Result<i64, RunSpecError> {
    let v = parse_size("memory", s)?;
    if v < 6 * 1024 * 1024 {
        return Err(RunSpecError::MemoryTooLow);
    }
    Ok(v)
}

/// CFS period used for `--cpus` (Docker's 100 ms).
pub const CPU_PERIOD: u64 = 100_000;

/// Parses `--cpus` into a CFS `(quota, period)`: `"1.5"` → `(150000, 100000)`. The value must
/// be a decimal number of at least 0.01 with at most nine decimals (Docker's nano-CPUs).
pub fn parse_cpus(s: &str) -> Result<(i64, u64), RunSpecError> {
    let bad = |reason| RunSpecError::InvalidCpus {
        value: s.to_string(),
        reason,
    };
    let t = s.trim();
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || (t.contains('.') && frac.is_empty())
    {
        return Err(bad("expected a decimal number such as 1.5"));
    }
    if frac.len() > 9 {
        return Err(bad("value is too precise"));
    }
    let int: u64 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| bad("value is too large"))?
    };
    let frac_nanos: u64 = format!("{frac:0<9}").parse().unwrap_or(0);
    let nanos = int
        .checked_mul(1_000_000_000)
        .and_then(|n| n.checked_add(frac_nanos))
        .filter(|n| *n <= i64::MAX as u64)
        .ok_or_else(|| bad("value is too large"))?;
    if nanos < 10_000_000 {
        return Err(bad("the minimum is 0.01"));
    }
    let quota = (u128::from(nanos) * u128::from(CPU_PERIOD) / 1_000_000_000) as i64;
    Ok((quota, CPU_PERIOD))
}

const ULIMITS: [(&str, PosixRlimitType); 16] = [
    ("as", PosixRlimitType::RlimitAs),
    ("core", PosixRlimitType::RlimitCore),
    ("cpu", PosixRlimitType::RlimitCpu),
    ("data", PosixRlimitType::RlimitData),
    ("fsize", PosixRlimitType::RlimitFsize),
    ("locks", PosixRlimitType::RlimitLocks),
    ("memlock", PosixRlimitType::RlimitMemlock),
    ("msgqueue", PosixRlimitType::RlimitMsgqueue),
    ("nice", PosixRlimitType::RlimitNice),
    ("nofile", PosixRlimitType::RlimitNofile),
    ("nproc", PosixRlimitType::RlimitNproc),
    ("rss", PosixRlimitType::RlimitRss),
    ("rtprio", PosixRlimitType::RlimitRtprio),
    ("rttime", PosixRlimitType::RlimitRttime),
    ("sigpending", PosixRlimitType::RlimitSigpending),
    ("stack", PosixRlimitType::RlimitStack),
];

/// Parses `--ulimit name=soft[:hard]` (hard defaults to soft; `-1` = unlimited).
pub fn parse_ulimit(s: &str) -> Result<PosixRlimit, RunSpecError> {
    let bad = |reason: String| RunSpecError::InvalidUlimit {
        value: s.to_string(),
        reason,
    };
    let (name, limits) = s
        .split_once('=')
        .ok_or_else(|| bad("expected name=soft[:hard]".into()))?;
    let typ = ULIMITS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| *t)
        .ok_or_else(|| bad(format!("invalid ulimit type: {name}")))?;
    let parts: Vec<&str> = limits.split(':').collect();
    if parts.len() > 2 {
        return Err(bad(
            "too many limit value arguments, can only have up to two, `soft[:hard]`".into(),
        ));
    }
    let value = |p: &str| -> Result<u64, RunSpecError> {
        match p.parse::<i64>() {
            Ok(-1) => Ok(u64::MAX),
            Ok(v) if v >= 0 => Ok(v as u64),
            _ => Err(bad(format!(
                "invalid limit {p:?}: expected a non-negative integer or -1"
            ))),
        }
    };
    let soft = value(parts[0])?;
    let hard = match parts.get(1) {
        Some(h) => value(h)?,
        None => soft,
    };
    if soft > hard {
        return Err(bad(format!(
            "ulimit soft limit must be less than or equal to hard limit: {soft} > {hard}"
        )));
    }
    Ok(PosixRlimitBuilder::default()
        .typ(typ)
        .soft(soft)
        .hard(hard)
        .build()
        .expect("every field of the rlimit is set"))
}

/// The process's command line: Docker's entrypoint/cmd rules.
fn command(image: &ImageConfig, opts: &RunOptions) -> Result<Vec<String>, RunSpecError> {
    let mut args = match &opts.entrypoint {
        Some(e) if e.is_empty() => Vec::new(),
        Some(e) => vec![e.clone()],
        None => image.entrypoint.clone().unwrap_or_default(),
    };
    if !opts.args.is_empty() {
        args.extend(opts.args.iter().cloned());
    } else if opts.entrypoint.is_none() {
        args.extend(image.cmd.iter().flatten().cloned());
    }
    if args.is_empty() {
        return Err(RunSpecError::NoCommand);
    }
    Ok(args)
}

fn env_key(entry: &str) -> &str {
    entry.split_once('=').map_or(entry, |(k, _)| k)
}

fn replace_or_append(env: &mut Vec<String>, entry: String) {
    let key = env_key(&entry).to_string();
    match env.iter_mut().find(|e| env_key(e) == key) {
        Some(slot) => *slot = entry,
        None => env.push(entry),
    }
}

/// The environment: Docker's defaults, the image's, then `-e`.
fn environment(
    image: &ImageConfig,
    opts: &RunOptions,
    hostname: Option<&str>,
    host_env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<String>, RunSpecError> {
    let mut env = vec![format!("PATH={}", defaults::DEFAULT_PATH)];
    if let Some(h) = hostname {
        env.push(format!("HOSTNAME={h}"));
    }
    if opts.tty {
        env.push("TERM=xterm".to_string());
    }
    for e in image.env.iter().flatten() {
        replace_or_append(&mut env, e.clone());
    }
    for e in &opts.env {
        let entry = match e.split_once('=') {
            Some(("", _)) => return Err(RunSpecError::InvalidEnv(e.clone())),
            Some(_) => e.clone(),
            None if e.is_empty() => return Err(RunSpecError::InvalidEnv(e.clone())),
            None => match host_env(e) {
                Some(v) => format!("{e}={v}"),
                None => continue,
            },
        };
        replace_or_append(&mut env, entry);
    }
    Ok(env)
}

/// One entry of `/etc/passwd` or `/etc/group`, split on `:`.
fn db_entries(rootfs: &Path, file: &str) -> Result<Vec<Vec<String>>, RunSpecError> {
    let path = rootfs.join("etc").join(file);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .map(|l| l.split(':').map(str::to_string).collect())
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(RunSpecError::UserDb { path, source }),
    }
}

fn parse_id(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Resolves `user[:group]` against the container's `/etc/passwd` and `/etc/group`, as runc does:
/// a name must be listed; a number need not be (its primary group is then 0); without a group,
/// the user's primary group and the groups listing the user by name (supplementary groups).
pub fn resolve_user(spec: &str, rootfs: &Path) -> Result<User, RunSpecError> {
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user_part.is_empty() || group_part == Some("") {
        return Err(RunSpecError::InvalidUser(spec.to_string()));
    }
    let numeric_uid = parse_id(user_part);
    if numeric_uid.is_none() && user_part.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RunSpecError::InvalidUser(spec.to_string()));
    }
    // Numeric user and group: nothing to look up.
    if let (Some(uid), Some(Some(gid))) = (numeric_uid, group_part.map(parse_id)) {
        let mut u = User::default();
        u.set_uid(uid);
        u.set_gid(gid);
        return Ok(u);
    }
    let passwd = db_entries(rootfs, "passwd")?;
    let entry = passwd.iter().find(|f| {
        f.len() >= 4
            && match numeric_uid {
                Some(uid) => parse_id(&f[2]) == Some(uid),
                None => f[0] == user_part,
            }
    });
    let (uid, mut gid, name) = match (entry, numeric_uid) {
        (Some(f), _) => (
            parse_id(&f[2]).ok_or_else(|| RunSpecError::InvalidUser(spec.to_string()))?,
            parse_id(&f[3]).unwrap_or(0),
            Some(f[0].clone()),
        ),
        (None, Some(uid)) => (uid, 0, None),
        (None, None) => return Err(RunSpecError::UnknownUser(user_part.to_string())),
    };
    let mut additional = Vec::new();
    match group_part {
        Some(g) => {
            gid = match parse_id(g) {
                Some(id) => id,
                None => {
                    if g.bytes().all(|b| b.is_ascii_digit()) {
                        return Err(RunSpecError::InvalidUser(spec.to_string()));
                    }
                    db_entries(rootfs, "group")?
                        .iter()
                        .find(|f| f.len() >= 3 && f[0] == g)
                        .and_then(|f| parse_id(&f[2]))
                        .ok_or_else(|| RunSpecError::UnknownGroup(g.to_string()))?
                }
            }
        }
        None => {
            if let Some(name) = &name {
                for f in db_entries(rootfs, "group")? {
                    let member = f.len() >= 4 && f[3].split(',').any(|m| m.trim() == name);
                    if let (true, Some(id)) = (member, f.get(2).and_then(|s| parse_id(s))) {
                        if id != gid && !additional.contains(&id) {
                            additional.push(id);
                        }
                    }
                }
            }
        }
    }
    let mut u = User::default();
    u.set_uid(uid);
    u.set_gid(gid);
    if !additional.is_empty() {
        u.set_additional_gids(Some(additional));
    }
    Ok(u)
}

fn normalize_cap(name: &str) -> Result<Option<Capability>, RunSpecError> {
    if name.eq_ignore_ascii_case("ALL") {
        return Ok(None);
    }
    defaults::parse_capability(name)
        .map(Some)
        .ok_or_else(|| RunSpecError::UnknownCapability(name.to_string()))
}

/// The container's capabilities, with Docker's rules: `--privileged` → all; `--cap-add ALL` →
/// all but the dropped ones; `--cap-drop ALL` → only the added ones; else the defaults minus
/// the dropped plus the added.
pub fn capabilities(opts: &RunOptions) -> Result<HashSet<Capability>, RunSpecError> {
    // Validate every name, also with --privileged (as Docker does).
    let adds: Vec<Option<Capability>> = opts
        .cap_add
        .iter()
        .map(|c| normalize_cap(c))
        .collect::<Result<_, _>>()?;
    let drops: Vec<Option<Capability>> = opts
        .cap_drop
        .iter()
        .map(|c| normalize_cap(c))
        .collect::<Result<_, _>>()?;
    if opts.privileged {
        return Ok(defaults::grantable_capabilities());
    }
    let dropped: HashSet<Capability> = drops.iter().flatten().copied().collect();
    let added: HashSet<Capability> = adds.iter().flatten().copied().collect();
    let caps = if adds.contains(&None) {
        defaults::grantable_capabilities()
            .difference(&dropped)
            .copied()
            .collect()
    } else if drops.contains(&None) {
        added
    } else {
        let mut caps: HashSet<Capability> = defaults::default_capabilities()
            .difference(&dropped)
            .copied()
            .collect();
        caps.extend(added);
        caps
    };
    Ok(caps)
}

struct Security {
    no_new_privileges: bool,
    seccomp: Option<LinuxSeccomp>,
}

fn security(opts: &RunOptions, caps: &HashSet<Capability>) -> Result<Security, RunSpecError> {
    let mut nnp = false;
    let mut seccomp_opt: Option<String> = None;
    for o in &opts.security_opt {
        let (key, value) = match o.split_once(['=', ':']) {
            Some((k, v)) => (k, Some(v)),
            None => (o.as_str(), None),
        };
        match (key, value) {
            ("no-new-privileges", None) => nnp = true,
            ("no-new-privileges", Some(v)) => {
                nnp = match v {
                    "true" => true,
                    "false" => false,
                    _ => return Err(RunSpecError::InvalidSecurityOpt(o.clone())),
                }
            }
            ("seccomp", Some(v)) if !v.is_empty() => seccomp_opt = Some(v.to_string()),
            ("apparmor" | "label", Some(_)) => {}
            _ => return Err(RunSpecError::InvalidSecurityOpt(o.clone())),
        }
    }
    let seccomp = match seccomp_opt.as_deref() {
        _ if opts.privileged => None,
        Some("unconfined") => None,
        Some(_) => {
            let text = opts
                .seccomp_profile
                .as_deref()
                .ok_or(RunSpecError::SeccompProfileMissing)?;
            let v: serde_json::Value =
                serde_json::from_str(text).map_err(RunSpecError::InvalidSeccompProfile)?;
            let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
            let oci = docker_seccomp_to_oci(v, caps, std::env::consts::ARCH, release.trim());
            Some(serde_json::from_value(oci).map_err(RunSpecError::InvalidSeccompProfile)?)
        }
        None => Some(defaults::default_seccomp(caps)),
    };
    Ok(Security {
        no_new_privileges: nnp,
        seccomp,
    })
}

/// Turns a seccomp profile in Docker's format (`archMap`, rules with `includes`/`excludes` by
/// capability, architecture and kernel version, `name` or `names`) into the OCI runtime's
/// format for this container: only the rules that apply to its capabilities, `arch` (Rust's
/// name) and kernel `release`. A profile already in the OCI format passes unchanged.
pub fn docker_seccomp_to_oci(
    mut v: serde_json::Value,
    caps: &HashSet<Capability>,
    arch: &str,
    release: &str,
) -> serde_json::Value {
    use serde_json::Value;
    let (go_arch, scmp_arch) = match arch {
        "x86_64" => ("amd64", "SCMP_ARCH_X86_64"),
        "x86" => ("386", "SCMP_ARCH_X86"),
        "aarch64" => ("arm64", "SCMP_ARCH_AARCH64"),
        other => (other, ""),
    };
    let has_cap = |name: &str| {
        let bare = name.trim_start_matches("CAP_");
        caps.iter()
            .any(|c| c.to_string().trim_start_matches("CAP_") == bare)
    };
    let version = |s: &str| -> Vec<u64> {
        s.split(|c: char| !c.is_ascii_digit())
            .filter(|p| !p.is_empty())
            .take(2)
            .filter_map(|p| p.parse().ok())
            .collect()
    };
    let applies = |cond: &Value, include: bool| -> bool {
        let list = |k: &str| -> Vec<String> {
            cond[k]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        };
        let caps_l = list("caps");
        let arches = list("arches");
        if include {
            caps_l.iter().all(|c| has_cap(c))
                && (arches.is_empty() || arches.iter().any(|a| a == go_arch))
                && cond["minKernel"]
                    .as_str()
                    .is_none_or(|min| version(release) >= version(min))
        } else {
            caps_l.iter().any(|c| has_cap(c)) || arches.iter().any(|a| a == go_arch)
        }
    };
    if let Some(map) = v.get("archMap").and_then(Value::as_array).cloned() {
        if v.get("architectures").is_none() {
            let arches: Vec<Value> = map
                .iter()
                .filter(|m| m["architecture"] == scmp_arch)
                .flat_map(|m| {
                    std::iter::once(m["architecture"].clone()).chain(
                        m["subArchitectures"]
                            .as_array()
                            .cloned()
                            .unwrap_or_default(),
                    )
                })
                .collect();
            v["architectures"] = Value::Array(arches);
        }
    }
    if let Some(obj) = v.as_object_mut() {
        obj.remove("archMap");
    }
    if let Some(rules) = v.get_mut("syscalls").and_then(Value::as_array_mut) {
        rules.retain(|r| {
            r.get("includes").is_none_or(|c| applies(c, true))
                && r.get("excludes").is_none_or(|c| !applies(c, false))
        });
        for r in rules.iter_mut() {
            if let Some(o) = r.as_object_mut() {
                o.remove("includes");
                o.remove("excludes");
                o.remove("comment");
                if let Some(name) = o.remove("name") {
                    o.entry("names").or_insert_with(|| Value::Array(vec![name]));
                }
            }
        }
    }
    v
}

fn mount(destination: &str, typ: &str, source: &str, options: &[&str]) -> Mount {
    let mut m = Mount::default();
    m.set_destination(PathBuf::from(destination));
    m.set_typ(Some(typ.to_string()));
    m.set_source(Some(PathBuf::from(source)));
    m.set_options(Some(options.iter().map(|o| o.to_string()).collect()));
    m
}

/// The mounts of every container (those of `runc spec`, with `/dev/shm` and `/dev/mqueue`);
/// `/sys` and `/sys/fs/cgroup` are writable only for a privileged container.
pub fn default_mounts(privileged: bool) -> Vec<Mount> {
    let ro = if privileged { "rw" } else { "ro" };
    vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", ro]),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", ro],
        ),
    ]
}

fn check_target(target: &str) -> Result<(), RunSpecError> {
    if !target.starts_with('/') || target.trim_end_matches('/').is_empty() {
        return Err(RunSpecError::InvalidMountPath(target.to_string()));
    }
    Ok(())
}

fn user_mount(m: &MountSpec) -> Result<Mount, RunSpecError> {
    match m {
        MountSpec::Bind {
            source,
            target,
            read_only,
        } => {
            check_target(target)?;
            if !source.is_absolute() {
                return Err(RunSpecError::InvalidMountPath(source.display().to_string()));
            }
            let mut opts = vec!["rbind"];
            if *read_only {
                opts.push("ro");
            }
            let mut mnt = mount(target, "bind", "", &opts);
            mnt.set_source(Some(source.clone()));
            Ok(mnt)
        }
        MountSpec::Tmpfs { target, size, mode } => {
            check_target(target)?;
            let mut opts = vec![
                "nosuid".to_string(),
                "nodev".to_string(),
                "noexec".to_string(),
            ];
            if let Some(size) = size {
                opts.push(format!("size={size}"));
            }
            if let Some(mode) = mode {
                opts.push(format!("mode={mode:o}"));
            }
            let opts: Vec<&str> = opts.iter().map(String::as_str).collect();
            Ok(mount(target, "tmpfs", "tmpfs", &opts))
        }
        MountSpec::Volume { .. } => Err(RunSpecError::Unresolved("volume")),
    }
}

fn namespace(typ: LinuxNamespaceType, path: Option<PathBuf>) -> LinuxNamespace {
    let mut ns = LinuxNamespace::default();
    ns.set_typ(typ);
    ns.set_path(path);
    ns
}

pub fn resources(opts: &RunOptions) -> Result<LinuxResources, RunSpecError> {
    let mut r = LinuxResources::default();
    r.set_devices(Some(if opts.privileged {
        defaults::privileged_device_rules()
    } else {
        defaults::default_device_rules()
    }));
    let limit = opts.memory.as_deref().map(parse_memory).transpose()?;
    let swap = match (opts.memory_swap.as_deref().map(str::trim), limit) {
        (None, None) => None,
        (None, Some(l)) => Some(l.saturating_mul(2)),
        (Some(_), None) => return Err(RunSpecError::MemorySwapWithoutMemory),
        (Some("-1"), Some(_)) => Some(-1),
        (Some(s), Some(l)) => {
            let swap = parse_size("memory-swap", s)?;
            if swap < l {
                return Err(RunSpecError::MemorySwapTooLow);
            }
            Some(swap)
        }
    };
    if limit.is_some() {
        let mut m = LinuxMemory::default();
        m.set_limit(limit);
        m.set_swap(swap);
        r.set_memory(Some(m));
    }
    let cfs = opts.cpus.as_deref().map(parse_cpus).transpose()?;
    if cfs.is_some() || opts.cpu_shares.is_some() {
        let mut c = LinuxCpu::default();
        c.set_shares(opts.cpu_shares.filter(|s| *s > 0));
        c.set_quota(cfs.map(|(q, _)| q));
        c.set_period(cfs.map(|(_, p)| p));
        r.set_cpu(Some(c));
    }
    match opts.pids_limit {
        Some(n) if n != 0 => {
            let mut p = LinuxPids::default();
            p.set_limit(if n < 0 { -1 } else { n });
            r.set_pids(Some(p));
        }
        _ => {}
    }
    Ok(r)
}

/// The OCI spec for a container of `image` with `opts`, root file system at `rootfs`.
/// `host_env` looks up the host's environment for `-e NAME` without a value.
pub fn generate(
    image: &ImageConfig,
    opts: &RunOptions,
    rootfs: &Path,
    host_env: &dyn Fn(&str) -> Option<String>,
) -> Result<Spec, RunSpecError> {
    let args = command(image, opts)?;
    // With the host's network (and so its UTS view as Docker has it) the hostname is the host's.
    let hostname = match opts.network {
        Network::Host => None,
        _ if opts.uts_join.is_some() => None,
        _ => opts.hostname.clone().filter(|h| !h.is_empty()),
    };
    let env = environment(image, opts, hostname.as_deref(), host_env)?;
    let cwd = match opts.workdir.as_deref().filter(|w| !w.is_empty()) {
        Some(w) if !w.starts_with('/') => return Err(RunSpecError::InvalidWorkdir(w.to_string())),
        Some(w) => w.to_string(),
        None => match image.working_dir.as_deref().filter(|w| !w.is_empty()) {
            Some(w) if w.starts_with('/') => w.to_string(),
            Some(w) => format!("/{w}"),
            None => "/".to_string(),
        },
    };
    let mut user = match opts
        .user
        .as_deref()
        .or(image.user.as_deref())
        .filter(|u| !u.is_empty())
    {
        Some(u) => resolve_user(u, rootfs)?,
        None => User::default(),
    };
    if !opts.group_add.is_empty() {
        let mut groups = user.additional_gids().clone().unwrap_or_default();
        for g in &opts.group_add {
            if !groups.contains(g) && *g != user.gid() {
                groups.push(*g);
            }
        }
        user.set_additional_gids(Some(groups));
    }
    let caps = capabilities(opts)?;
    let sec = security(opts, &caps)?;
    let rlimits = opts
        .ulimits
        .iter()
        .map(|u| parse_ulimit(u))
        .collect::<Result<Vec<_>, _>>()?;

    let mut lc = LinuxCapabilities::default();
    lc.set_bounding(Some(caps.clone()));
    lc.set_effective(Some(caps.clone()));
    lc.set_permitted(Some(caps));
    lc.set_inheritable(Some(HashSet::new()));
    lc.set_ambient(Some(HashSet::new()));

    let mut process = Process::default();
    process.set_terminal(Some(opts.tty));
    process.set_user(user);
    process.set_args(Some(args));
    process.set_env(Some(env));
    process.set_cwd(PathBuf::from(cwd));
    process.set_capabilities(Some(lc));
    process.set_rlimits((!rlimits.is_empty()).then_some(rlimits));
    process.set_no_new_privileges(Some(sec.no_new_privileges));
    process.set_oom_score_adj(None);

    let mut root = Root::default();
    root.set_path(rootfs.to_path_buf());
    root.set_readonly(Some(opts.read_only));

    let user_mounts = opts
        .mounts
        .iter()
        .map(user_mount)
        .collect::<Result<Vec<_>, _>>()?;
    let mut mounts: Vec<Mount> = default_mounts(opts.privileged)
        .into_iter()
        .filter(|d| {
            !user_mounts
                .iter()
                .any(|u| u.destination() == d.destination())
        })
        .collect();
    if let Some(size) = opts.shm_size.filter(|s| *s > 0) {
        for m in mounts
            .iter_mut()
            .filter(|m| m.destination() == Path::new("/dev/shm"))
        {
            let mut o = m.options().clone().unwrap_or_default();
            o.retain(|o| !o.starts_with("size="));
            o.push(format!("size={size}"));
            m.set_options(Some(o));
        }
    }
    mounts.extend(user_mounts);

    let mut namespaces = Vec::new();
    if !opts.pid_host {
        namespaces.push(namespace(LinuxNamespaceType::Pid, None));
    }
    match &opts.network {
        Network::None => namespaces.push(namespace(LinuxNamespaceType::Network, None)),
        Network::Join(p) => {
            namespaces.push(namespace(LinuxNamespaceType::Network, Some(p.clone())))
        }
        Network::Host => {}
        Network::Container(_) => return Err(RunSpecError::Unresolved("--network container:")),
    }
    match &opts.ipc {
        Ipc::Private => namespaces.push(namespace(LinuxNamespaceType::Ipc, None)),
        Ipc::Join(p) => namespaces.push(namespace(LinuxNamespaceType::Ipc, Some(p.clone()))),
        Ipc::Host => {}
        Ipc::Container(_) => return Err(RunSpecError::Unresolved("--ipc container:")),
    }
    namespaces.push(namespace(LinuxNamespaceType::Uts, opts.uts_join.clone()));
    for t in [LinuxNamespaceType::Mount, LinuxNamespaceType::Cgroup] {
        namespaces.push(namespace(t, None));
    }

    let mut linux = oci_spec::runtime::Linux::default();
    linux.set_uid_mappings(None);
    linux.set_gid_mappings(None);
    linux.set_sysctl((!opts.sysctls.is_empty()).then(|| {
        opts.sysctls
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }));
    linux.set_resources(Some(resources(opts)?));
    linux.set_namespaces(Some(namespaces));
    linux.set_devices(None);
    linux.set_seccomp(sec.seccomp);
    linux.set_rootfs_propagation(None);
    let paths = |l: &[&str]| (!opts.privileged).then(|| l.iter().map(|p| p.to_string()).collect());
    linux.set_masked_paths(paths(&defaults::DEFAULT_MASKED_PATHS));
    linux.set_readonly_paths(paths(&defaults::DEFAULT_READONLY_PATHS));

    let mut spec = Spec::default();
    spec.set_version(runtime::OCI_VERSION.to_string());
    spec.set_root(Some(root));
    spec.set_process(Some(process));
    spec.set_hostname(hostname);
    spec.set_mounts(Some(mounts));
    spec.set_annotations(None);
    spec.set_linux(Some(linux));
    Ok(spec)
}

#[cfg(test)]
#[allow(clippy::type_complexity)] // the case tables spell out their tuple types
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn no_host_env(_: &str) -> Option<String> {
        None
    }

    fn host_env(k: &str) -> Option<String> {
        (k == "HOST_ONLY").then(|| "from-host".to_string())
    }

    fn sv(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn gen(image: &ImageConfig, opts: &RunOptions) -> Value {
        let spec = generate(image, opts, Path::new("/nonexistent-rootfs"), &host_env).unwrap();
        serde_json::to_value(spec).unwrap()
    }

    /// A temporary root file system with /etc/passwd and /etc/group.
    struct TempRoot(PathBuf);
    impl TempRoot {
        fn new(tag: &str) -> TempRoot {
            let dir = std::env::temp_dir()
                .join(format!("berth-engine-spec-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("etc")).unwrap();
            std::fs::write(
                dir.join("etc/passwd"),
                "root:x:0:0:root:/root:/bin/sh\n\
                 # comment\n\
                 daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
                 app:x:1000:1000:App:/home/app:/bin/sh\n\
                 nginx:x:101:101:nginx:/nonexistent:/bin/false\n",
            )
            .unwrap();
            std::fs::write(
                dir.join("etc/group"),
                "root:x:0:\n\
                 app:x:1000:\n\
                 wheel:x:10:root,app\n\
                 audio:x:29:nginx, app\n\
                 staff:x:50:\n\
                 nginx:x:101:\n",
            )
            .unwrap();
            TempRoot(dir)
        }
    }
    impl Drop for TempRoot {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn command_line() {
        let ep = |v: &[&str]| Some(sv(v));
        type Case<'a> = (
            Option<Vec<String>>,
            Option<Vec<String>>,
            Option<&'a str>,
            &'a [&'a str],
            Result<&'a [&'a str], ()>,
        );
        let cases: Vec<Case> = vec![
            // image entrypoint, image cmd, --entrypoint, args, expected
            (None, ep(&["sh"]), None, &[], Ok(&["sh"])),
            (None, ep(&["sh"]), None, &["ls", "-l"], Ok(&["ls", "-l"])),
            (
                ep(&["/init", "--x"]),
                ep(&["serve"]),
                None,
                &[],
                Ok(&["/init", "--x", "serve"]),
            ),
            (
                ep(&["/init"]),
                ep(&["serve"]),
                None,
                &["run"],
                Ok(&["/init", "run"]),
            ),
            (
                ep(&["/init"]),
                ep(&["serve"]),
                Some("/bin/bash"),
                &[],
                Ok(&["/bin/bash"]),
            ),
            (
                ep(&["/init"]),
                ep(&["serve"]),
                Some("/bin/bash"),
                &["-c", "x"],
                Ok(&["/bin/bash", "-c", "x"]),
            ),
            (
                ep(&["/init"]),
                ep(&["serve"]),
                Some(""),
                &["ls"],
                Ok(&["ls"]),
            ),
            (ep(&["/init"]), ep(&["serve"]), Some(""), &[], Err(())),
            (None, None, None, &[], Err(())),
            (ep(&[]), ep(&[]), None, &[], Err(())),
            (ep(&["/init"]), None, None, &[], Ok(&["/init"])),
        ];
        for (i, (ie, ic, fe, args, want)) in cases.into_iter().enumerate() {
            let image = ImageConfig {
                entrypoint: ie,
                cmd: ic,
                ..Default::default()
            };
            let opts = RunOptions {
                entrypoint: fe.map(str::to_string),
                args: sv(args),
                ..Default::default()
            };
            let got = generate(&image, &opts, Path::new("/x"), &no_host_env);
            match want {
                Ok(w) => assert_eq!(
                    got.unwrap()
                        .process()
                        .as_ref()
                        .unwrap()
                        .args()
                        .as_ref()
                        .unwrap(),
                    &sv(w),
                    "case {i}"
                ),
                Err(()) => assert_eq!(
                    got.unwrap_err().to_string(),
                    "no command specified",
                    "case {i}"
                ),
            }
        }
    }

    #[test]
    fn environment_rules() {
        let path = format!("PATH={}", defaults::DEFAULT_PATH);
        let cases: Vec<(Option<&[&str]>, &[&str], Option<&str>, bool, Vec<String>)> = vec![
            (None, &[], None, false, vec![path.clone()]),
            (
                None,
                &[],
                Some("c0ffee"),
                true,
                vec![path.clone(), "HOSTNAME=c0ffee".into(), "TERM=xterm".into()],
            ),
            (
                Some(&["PATH=/opt/bin", "LANG=C.UTF-8", "A=1"]),
                &["A=2", "B=3", "LANG=", "HOST_ONLY", "NOT_ON_HOST"],
                Some("h"),
                false,
                sv(&[
                    "PATH=/opt/bin",
                    "HOSTNAME=h",
                    "LANG=",
                    "A=2",
                    "B=3",
                    "HOST_ONLY=from-host",
                ]),
            ),
            (
                None,
                &["TERM=dumb", "PATH=/p"],
                None,
                true,
                sv(&["PATH=/p", "TERM=dumb"]),
            ),
        ];
        for (i, (image_env, flags, hostname, tty, want)) in cases.into_iter().enumerate() {
            let image = ImageConfig {
                cmd: Some(sv(&["sh"])),
                env: image_env.map(sv),
                ..Default::default()
            };
            let opts = RunOptions {
                env: sv(flags),
                hostname: hostname.map(str::to_string),
                tty,
                ..Default::default()
            };
            let v = gen(&image, &opts);
            assert_eq!(v["process"]["env"], json!(want), "case {i}");
            assert_eq!(v["process"]["terminal"], json!(tty), "case {i}");
        }
        for bad in ["=x", ""] {
            let image = ImageConfig {
                cmd: Some(sv(&["sh"])),
                ..Default::default()
            };
            let opts = RunOptions {
                env: sv(&[bad]),
                ..Default::default()
            };
            let err = generate(&image, &opts, Path::new("/x"), &no_host_env).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("invalid environment variable: {bad}")
            );
        }
    }

    #[test]
    fn working_directory() {
        for (image_wd, flag, want) in [
            (None, None, Ok("/")),
            (Some(""), None, Ok("/")),
            (Some("/app"), None, Ok("/app")),
            (Some("app"), None, Ok("/app")),
            (Some("/app"), Some("/work"), Ok("/work")),
            (
                None,
                Some("rel"),
                Err("the working directory 'rel' is invalid, it needs to be an absolute path"),
            ),
        ] {
            let image = ImageConfig {
                cmd: Some(sv(&["sh"])),
                working_dir: image_wd.map(str::to_string),
                ..Default::default()
            };
            let opts = RunOptions {
                workdir: flag.map(str::to_string),
                ..Default::default()
            };
            let got = generate(&image, &opts, Path::new("/x"), &no_host_env);
            match want {
                Ok(w) => assert_eq!(got.unwrap().process().as_ref().unwrap().cwd(), Path::new(w)),
                Err(e) => assert_eq!(got.unwrap_err().to_string(), e),
            }
        }
    }

    #[test]
    fn users() {
        let root = TempRoot::new("users");
        let cases: &[(&str, Result<(u32, u32, &[u32]), &str>)] = &[
            ("0", Ok((0, 0, &[10]))),
            ("root", Ok((0, 0, &[10]))),
            ("1000", Ok((1000, 1000, &[10, 29]))),
            ("app", Ok((1000, 1000, &[10, 29]))),
            ("nginx", Ok((101, 101, &[29]))),
            ("app:staff", Ok((1000, 50, &[]))),
            ("app:77", Ok((1000, 77, &[]))),
            ("1234", Ok((1234, 0, &[]))),
            ("1234:5678", Ok((1234, 5678, &[]))),
            ("daemon", Ok((1, 1, &[]))),
            (
                "ghost",
                Err("unable to find user ghost: no matching entries in passwd file"),
            ),
            (
                "app:ghosts",
                Err("unable to find group ghosts: no matching entries in group file"),
            ),
            (
                "app:",
                Err("invalid user \"app:\": expected user[:group], names or numbers"),
            ),
            (
                ":0",
                Err("invalid user \":0\": expected user[:group], names or numbers"),
            ),
            (
                "99999999999",
                Err("invalid user \"99999999999\": expected user[:group], names or numbers"),
            ),
        ];
        for (spec, want) in cases {
            match (resolve_user(spec, &root.0), want) {
                (Ok(u), Ok((uid, gid, extra))) => {
                    assert_eq!((u.uid(), u.gid()), (*uid, *gid), "{spec}");
                    assert_eq!(
                        u.additional_gids().clone().unwrap_or_default(),
                        extra.to_vec(),
                        "{spec}"
                    );
                }
                (Err(e), Err(msg)) => assert_eq!(e.to_string(), *msg, "{spec}"),
                (got, _) => panic!("{spec}: unexpected {got:?}"),
            }
        }
        // A name needs /etc/passwd; numbers do not.
        assert!(matches!(
            resolve_user("app", Path::new("/nonexistent-rootfs")),
            Err(RunSpecError::UnknownUser(_))
        ));
        assert_eq!(
            resolve_user("5", Path::new("/nonexistent-rootfs"))
                .unwrap()
                .uid(),
            5
        );

        // The image's user, overridden by -u; default root.
        let image = ImageConfig {
            cmd: Some(sv(&["sh"])),
            user: Some("app".into()),
            ..Default::default()
        };
        let user = |opts: RunOptions, image: &ImageConfig| {
            let spec = generate(image, &opts, &root.0, &no_host_env).unwrap();
            let u = spec.process().as_ref().unwrap().user().clone();
            (u.uid(), u.gid())
        };
        assert_eq!(user(RunOptions::default(), &image), (1000, 1000));
        assert_eq!(
            user(
                RunOptions {
                    user: Some("nginx".into()),
                    ..Default::default()
                },
                &image
            ),
            (101, 101)
        );
        let plain = ImageConfig {
            cmd: Some(sv(&["sh"])),
            ..Default::default()
        };
        assert_eq!(user(RunOptions::default(), &plain), (0, 0));
    }

    fn cap_names(v: &Value, set: &str) -> Vec<String> {
        let mut names: Vec<String> = v["process"]["capabilities"][set]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    }

    /// Every capability this test process may grant (its bounding set), but `except`.
    fn all_but(except: &[&str]) -> Vec<String> {
        let grantable: Vec<String> = defaults::grantable_capabilities()
            .iter()
            .map(|c| format!("CAP_{c}"))
            .collect();
        let mut v: Vec<String> = defaults::ALL_CAPABILITIES
            .iter()
            .filter(|c| !except.contains(c) && grantable.iter().any(|g| g == *c))
            .map(|c| c.to_string())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn capability_math() {
        let mut defaults_sorted = sv(&defaults::DEFAULT_CAPABILITIES);
        defaults_sorted.sort();
        let cases: Vec<(&[&str], &[&str], bool, Result<Vec<String>, &str>)> = vec![
            (&[], &[], false, Ok(defaults_sorted.clone())),
            (&["NET_ADMIN"], &["ALL"], false, Ok(sv(&["CAP_NET_ADMIN"]))),
            (
                &["cap_net_admin", "SYS_TIME"],
                &["all"],
                false,
                Ok(sv(&["CAP_NET_ADMIN", "CAP_SYS_TIME"])),
            ),
            (&[], &["ALL"], false, Ok(vec![])),
            (&["NET_ADMIN"], &["CHOWN", "CAP_KILL"], false, {
                let mut v: Vec<String> = defaults_sorted
                    .iter()
                    .filter(|c| *c != "CAP_CHOWN" && *c != "CAP_KILL")
                    .cloned()
                    .chain(["CAP_NET_ADMIN".to_string()])
                    .collect();
                v.sort();
                Ok(v)
            }),
            (
                &["ALL"],
                &["SYS_ADMIN"],
                false,
                Ok(all_but(&["CAP_SYS_ADMIN"])),
            ),
            (&[], &[], true, Ok(all_but(&[]))),
            (&["NET_ADMIN"], &["ALL"], true, Ok(all_but(&[]))),
            (
                &["NET_FOO"],
                &[],
                false,
                Err("unknown capability: \"NET_FOO\""),
            ),
            (
                &[],
                &["CAP_BOGUS"],
                true,
                Err("unknown capability: \"CAP_BOGUS\""),
            ),
        ];
        for (i, (add, drop, privileged, want)) in cases.into_iter().enumerate() {
            let image = ImageConfig {
                cmd: Some(sv(&["sh"])),
                ..Default::default()
            };
            let opts = RunOptions {
                cap_add: sv(add),
                cap_drop: sv(drop),
                privileged,
                ..Default::default()
            };
            match (generate(&image, &opts, Path::new("/x"), &no_host_env), want) {
                (Ok(spec), Ok(want)) => {
                    let v = serde_json::to_value(spec).unwrap();
                    let got = cap_names(&v, "bounding");
                    assert_eq!(got, want, "case {i}");
                    assert_eq!(cap_names(&v, "effective"), got, "case {i}");
                    assert_eq!(cap_names(&v, "permitted"), got, "case {i}");
                    assert_eq!(
                        v["process"]["capabilities"]["inheritable"],
                        json!([]),
                        "case {i}"
                    );
                    assert_eq!(
                        v["process"]["capabilities"]["ambient"],
                        json!([]),
                        "case {i}"
                    );
                }
                (Err(e), Err(msg)) => assert_eq!(e.to_string(), msg, "case {i}"),
                (got, want) => panic!("case {i}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn privileged_container() {
        let image = ImageConfig {
            cmd: Some(sv(&["sh"])),
            ..Default::default()
        };
        let opts = RunOptions {
            privileged: true,
            ..Default::default()
        };
        let v = gen(&image, &opts);
        assert!(v["linux"].get("seccomp").is_none());
        assert!(v["linux"].get("maskedPaths").is_none());
        assert!(v["linux"].get("readonlyPaths").is_none());
        assert_eq!(
            v["linux"]["resources"]["devices"],
            json!([{"allow": true, "access": "rwm"}])
        );
        let sys = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/sys")
            .unwrap();
        assert!(!sys["options"].as_array().unwrap().contains(&json!("ro")));
        // Even an explicit profile is not applied to a privileged container, as with Docker.
        let opts = RunOptions {
            privileged: true,
            security_opt: sv(&["seccomp=/p.json"]),
            seccomp_profile: Some("{\"defaultAction\":\"SCMP_ACT_ALLOW\"}".into()),
            ..Default::default()
        };
        assert!(gen(&image, &opts)["linux"].get("seccomp").is_none());
    }

    #[test]
    fn docker_seccomp_profiles_become_oci_ones() {
        let profile = json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 1,
            "archMap": [
                {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
                {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}
            ],
            "syscalls": [
                {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW", "comment": "always"},
                {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
                {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64", "x32"]}},
                {"names": ["arm_fadvise64_64"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["arm", "arm64"]}},
                {"names": ["clone"], "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_SYS_ADMIN"]},
                 "args": [{"index": 0, "value": 2114060288, "op": "SCMP_CMP_MASKED_EQ"}]},
                {"name": "io_uring_setup", "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "5.1"}},
                {"names": ["landlock_create_ruleset"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "99.0"}}
            ]
        });
        let names = |v: &Value| -> Vec<String> {
            v["syscalls"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|r| {
                    r["names"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|n| n.as_str().unwrap().to_string())
                })
                .collect()
        };
        let plain = defaults::default_capabilities();
        let out = docker_seccomp_to_oci(profile.clone(), &plain, "x86_64", "6.1.0-18-amd64");
        assert_eq!(
            names(&out),
            ["read", "write", "arch_prctl", "clone", "io_uring_setup"]
        );
        assert_eq!(
            out["architectures"],
            json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"])
        );
        assert!(out.get("archMap").is_none() && out["syscalls"][0].get("comment").is_none());
        let spec: oci_spec::runtime::LinuxSeccomp = serde_json::from_value(out).unwrap();
        assert!(runtime::seccomp::compile(&spec).is_ok());
        let mut admin = plain.clone();
        admin.insert(Capability::SysAdmin);
        let out = docker_seccomp_to_oci(profile, &admin, "x86_64", "4.19.0");
        assert_eq!(names(&out), ["read", "write", "mount", "arch_prctl"]);
        // An OCI profile passes through as it is.
        let oci = json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"], "syscalls": [{"names": ["kill"], "action": "SCMP_ACT_ERRNO"}]});
        assert_eq!(
            docker_seccomp_to_oci(oci.clone(), &plain, "x86_64", "6.1"),
            oci
        );
    }

    #[test]
    fn default_container() {
        let image = ImageConfig {
            cmd: Some(sv(&["sh"])),
            ..Default::default()
        };
        let opts = RunOptions {
            hostname: Some("abc123".into()),
            ..Default::default()
        };
        let v = gen(&image, &opts);
        assert_eq!(
            v["root"],
            json!({"path": "/nonexistent-rootfs", "readonly": false})
        );
        assert_eq!(v["hostname"], "abc123");
        assert_eq!(v["process"]["user"], json!({"uid": 0, "gid": 0}));
        assert_eq!(v["process"]["noNewPrivileges"], false);
        assert!(v["process"].get("rlimits").is_none());
        assert_eq!(
            v["linux"]["maskedPaths"],
            json!(defaults::DEFAULT_MASKED_PATHS)
        );
        assert_eq!(
            v["linux"]["readonlyPaths"],
            json!(defaults::DEFAULT_READONLY_PATHS)
        );
        assert_eq!(v["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(
            v["linux"]["resources"]["devices"][0],
            json!({"allow": false, "type": "a", "access": "rwm"})
        );
        assert!(v["linux"]["resources"].get("memory").is_none());
        let dests: Vec<&str> = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        assert_eq!(
            dests,
            [
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/dev/mqueue",
                "/sys",
                "/sys/fs/cgroup"
            ]
        );
        assert_eq!(
            v["mounts"][3],
            json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                   "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]})
        );
        assert_eq!(
            v["mounts"][6]["options"],
            json!(["nosuid", "noexec", "nodev", "relatime", "ro"])
        );
        // The whole spec passes through serde both ways (capability sets serialize in hash
        // order, so compare the parsed specs).
        let back: Spec = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(
            back,
            generate(
                &image,
                &opts,
                Path::new("/nonexistent-rootfs"),
                &no_host_env
            )
            .unwrap()
        );

        let ro = gen(
            &image,
            &RunOptions {
                read_only: true,
                ..Default::default()
            },
        );
        assert_eq!(ro["root"]["readonly"], true);
        assert!(ro.get("hostname").is_none());
    }

    #[test]
    fn network_modes() {
        let image = ImageConfig {
            cmd: Some(sv(&["sh"])),
            ..Default::default()
        };
        let cases = [
            (
                Network::None,
                json!([{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}]),
                Some("h"),
            ),
            (
                Network::Host,
                json!([{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}]),
                None,
            ),
            (
                Network::Join(PathBuf::from("/proc/42/ns/net")),
                json!([{"type": "pid"}, {"type": "network", "path": "/proc/42/ns/net"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}]),
                Some("h"),
            ),
        ];
        for (network, namespaces, hostname) in cases {
            let opts = RunOptions {
                network: network.clone(),
                hostname: Some("h".into()),
                ..Default::default()
            };
            let v = gen(&image, &opts);
            assert_eq!(v["linux"]["namespaces"], namespaces, "{network:?}");
            assert_eq!(v["hostname"].as_str(), hostname, "{network:?}");
            let has_hostname_env = v["process"]["env"]
                .as_array()
                .unwrap()
                .contains(&json!("HOSTNAME=h"));
            assert_eq!(has_hostname_env, hostname.is_some(), "{network:?}");
        }
    }

    #[test]
    fn user_mounts() {
        let image = ImageConfig {
            cmd: Some(sv(&["sh"])),
            ..Default::default()
        };
        let opts = RunOptions {
            mounts: vec![
                MountSpec::Bind {
                    source: "/srv/data".into(),
                    target: "/data".into(),
                    read_only: true,
                },
                MountSpec::Bind {
                    source: "/srv/rw".into(),
                    target: "/rw".into(),
                    read_only: false,
                },
                MountSpec::Tmpfs {
                    target: "/run".into(),
                    size: Some(1 << 20),
                    mode: Some(0o1777),
                },
                MountSpec::Tmpfs {
                    target: "/dev/shm".into(),
                    size: None,
                    mode: None,
                },
            ],
            ..Default::default()
        };
        let v = gen(&image, &opts);
        let mounts = v["mounts"].as_array().unwrap();
        assert_eq!(
            mounts.len(),
            7 + 3,
            "the user's /dev/shm replaces the default one"
        );
        assert_eq!(
            mounts[6..],
            [
                json!({"destination": "/data", "type": "bind", "source": "/srv/data", "options": ["rbind", "ro"]}),
                json!({"destination": "/rw", "type": "bind", "source": "/srv/rw", "options": ["rbind"]}),
                json!({"destination": "/run", "type": "tmpfs", "source": "tmpfs",
                       "options": ["nosuid", "nodev", "noexec", "size=1048576", "mode=1777"]}),
                json!({"destination": "/dev/shm", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "noexec"]}),
            ]
        );
        for (m, bad) in [
            (
                MountSpec::Bind {
                    source: "rel".into(),
                    target: "/x".into(),
                    read_only: false,
                },
                "rel",
            ),
            (
                MountSpec::Bind {
                    source: "/a".into(),
                    target: "x".into(),
                    read_only: false,
                },
                "x",
            ),
            (
                MountSpec::Tmpfs {
                    target: "/".into(),
                    size: None,
                    mode: None,
                },
                "/",
            ),
        ] {
            let opts = RunOptions {
                mounts: vec![m],
                ..Default::default()
            };
            let err = generate(&image, &opts, Path::new("/x"), &no_host_env).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "invalid mount config: invalid mount path: '{bad}' mount path must be absolute"
                )
            );
        }
    }

    #[test]
    fn memory_parsing() {
        for (s, want) in [
            ("64m", Ok(67_108_864)),
            ("64M", Ok(67_108_864)),
            ("64mb", Ok(67_108_864)),
            ("64MiB", Ok(67_108_864)),
            ("1.5g", Ok(1_610_612_736)),
            ("1g", Ok(1 << 30)),
            ("1t", Ok(1 << 40)),
            ("6291456", Ok(6_291_456)),
            ("6144k", Ok(6_291_456)),
            ("7000000b", Ok(7_000_000)),
            ("12x", Err("invalid memory \"12x\": expected a number with an optional b, k, m or g suffix")),
            ("", Err("invalid memory \"\": expected a number with an optional b, k, m or g suffix")),
            ("m", Err("invalid memory \"m\": expected a number with an optional b, k, m or g suffix")),
            ("-5m", Err("invalid memory \"-5m\": expected a number with an optional b, k, m or g suffix")),
            ("1.2.3m", Err("invalid memory \"1.2.3m\": expected a number with an optional b, k, m or g suffix")),
            ("64mm", Err("invalid memory \"64mm\": expected a number with an optional b, k, m or g suffix")),
            ("4m", Err("Minimum memory limit allowed is 6MB")),
            ("0", Err("Minimum memory limit allowed is 6MB")),
        ] {
            match (parse_memory(s), want) {
                (Ok(v), Ok(w)) => assert_eq!(v, w, "{s}"),
                (Err(e), Err(msg)) => assert_eq!(e.to_string(), msg, "{s}"),
                (got, _) => panic!("{s}: unexpected {got:?}"),
            }
        }
    }

    #[test]
    fn memory_and_swap() {
        let image = ImageConfig {
            cmd: Some(sv(&["sh"])),
            ..Default::default()
        };
        let cases: &[(Option<&str>, Option<&str>, Result<Value, &str>)] = &[
            (Some("64m"), None, Ok(json!({"limit": 67108864, "swap": 134217728}))),
            (Some("64m"), Some("-1"), Ok(json!({"limit": 67108864, "swap": -1}))),
            (Some("64m"), Some("100m"), Ok(json!({"limit": 67108864, "swap": 104857600}))),
            (Some("64m"), Some("64m"), Ok(json!({"limit": 67108864, "swap": 67108864}))),
            (Some("64m"), Some("32m"), Err("Minimum memoryswap limit should be larger than memory limit, see usage")),
            (None, Some("1g"), Err("You should always set the Memory limit when using Memoryswap limit, see usage")),
            (Some("64m"), Some("lots"), Err("invalid memory-swap \"lots\": expected a number with an optional b, k, m or g suffix")),
        ];
        for (memory, swap, want) in cases {
            let opts = RunOptions {
                memory: memory.map(str::to_string),
                memory_swap: swap.map(str::to_string),
                ..Default::default()
            };
            match (generate(&image, &opts, Path::new("/x"), &no_host_env), want) {
                (Ok(spec), Ok(w)) => assert_eq!(
                    serde_json::to_value(spec).unwrap()["linux"]["resources"]["memory"],
                    *w
                ),
                (Err(e), Err(msg)) => assert_eq!(e.to_string(), *msg),
                (got, _) => panic!("{memory:?} {swap:?}: unexpected {got:?}"),
            }
        }
    }

    #[test]
    fn cpu_parsing() {
        for (s, want) in [
            ("1.5", Ok((150_000, 100_000))),
            ("1", Ok((100_000, 100_000))),
            ("0.5", Ok((50_000, 100_000))),
            (".25", Ok((25_000, 100_000))),
            ("0.01", Ok((1_000, 100_000))),
            ("16", Ok((1_600_000, 100_000))),
            ("0.001", Err("invalid cpus \"0.001\": the minimum is 0.01")),
            ("0", Err("invalid cpus \"0\": the minimum is 0.01")),
            (
                "-1",
                Err("invalid cpus \"-1\": expected a decimal number such as 1.5"),
            ),
            (
                "abc",
                Err("invalid cpus \"abc\": expected a decimal number such as 1.5"),
            ),
            (
                "1.",
                Err("invalid cpus \"1.\": expected a decimal number such as 1.5"),
            ),
            (
                "",
                Err("invalid cpus \"\": expected a decimal number such as 1.5"),
            ),
            (
                "0.0000000001",
                Err("invalid cpus \"0.0000000001\": value is too precise"),
            ),
            (
                "99999999999999",
                Err("invalid cpus \"99999999999999\": value is too large"),
            ),
        ] {
            match (parse_cpus(s), want) {
                (Ok(v), Ok(w)) => assert_eq!(v, w, "{s}"),
                (Err(e), Err(msg)) => assert_eq!(e.to_string(), msg, "{s}"),
                (got, _) => panic!("{s}: unexpected {got:?}"),
            }
        }
        let image = ImageConfig {
            cmd: Some(sv(&["sh"])),
            ..Default::default()
        };
        let opts = RunOptions {
            cpus: Some("2.5".into()),
            cpu_shares: Some(512),
            pids_limit: Some(100),
            ..Default::default()
        };
        let v = gen(&image, &opts);
        assert_eq!(
            v["linux"]["resources"]["cpu"],
            json!({"shares": 512, "quota": 250000, "period": 100000})
        );
        assert_eq!(v["linux"]["resources"]["pids"], json!({"limit": 100}));
        let v = gen(
            &image,
            &RunOptions {
                pids_limit: Some(-1),
                ..Default::default()
            },
        );
        assert_eq!(v["linux"]["resources"]["pids"], json!({"limit": -1}));
        let v = gen(
            &image,
            &RunOptions {
                pids_limit: Some(0),
                ..Default::default()
            },
        );
        assert!(v["linux"]["resources"].get("pids").is_none());
    }

    #[test]
    fn ulimit_parsing() {
        let ok = |s: &str| serde_json::to_value(parse_ulimit(s).unwrap()).unwrap();
        assert_eq!(
            ok("nofile=1024:2048"),
            json!({"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 2048})
        );
        assert_eq!(
            ok("nofile=1024"),
            json!({"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 1024})
        );
        assert_eq!(
            ok("core=0"),
            json!({"type": "RLIMIT_CORE", "soft": 0, "hard": 0})
        );
        assert_eq!(
            ok("memlock=-1:-1"),
            json!({"type": "RLIMIT_MEMLOCK", "soft": u64::MAX, "hard": u64::MAX})
        );
        assert_eq!(ok("stack=8192:-1")["type"], "RLIMIT_STACK");
        assert_eq!(ok("nproc=10:20")["type"], "RLIMIT_NPROC");
        assert_eq!(ok("rttime=5")["type"], "RLIMIT_RTTIME");
        for (s, reason) in [
            ("nofile", "expected name=soft[:hard]"),
            ("nofiles=1", "invalid ulimit type: nofiles"),
            (
                "nofile=1:2:3",
                "too many limit value arguments, can only have up to two, `soft[:hard]`",
            ),
            (
                "nofile=2048:1024",
                "ulimit soft limit must be less than or equal to hard limit: 2048 > 1024",
            ),
            (
                "nofile=x",
                "invalid limit \"x\": expected a non-negative integer or -1",
            ),
            (
                "nofile=-2",
                "invalid limit \"-2\": expected a non-negative integer or -1",
            ),
        ] {
            assert_eq!(
                parse_ulimit(s).unwrap_err().to_string(),
                format!("invalid ulimit {s:?}: {reason}")
            );
        }
        let image = ImageConfig {
            cmd: Some(sv(&["sh"])),
            ..Default::default()
        };
        let v = gen(
            &image,
            &RunOptions {
                ulimits: sv(&["nofile=10:20", "nproc=5"]),
                ..Default::default()
            },
        );
        assert_eq!(
            v["process"]["rlimits"],
            json!([{"type": "RLIMIT_NOFILE", "soft": 10, "hard": 20}, {"type": "RLIMIT_NPROC", "soft": 5, "hard": 5}])
        );
    }

    #[test]
    fn security_options() {
        let image = ImageConfig {
            cmd: Some(sv(&["sh"])),
            ..Default::default()
        };
        let run = |opt: &[&str], profile: Option<&str>| {
            let opts = RunOptions {
                security_opt: sv(opt),
                seccomp_profile: profile.map(str::to_string),
                ..Default::default()
            };
            generate(&image, &opts, Path::new("/x"), &no_host_env)
                .map(|s| serde_json::to_value(s).unwrap())
        };
        for (opt, nnp) in [
            (&[][..], false),
            (&["no-new-privileges"][..], true),
            (&["no-new-privileges:true"][..], true),
            (&["no-new-privileges=true"][..], true),
            (&["no-new-privileges", "no-new-privileges:false"][..], false),
            (&["apparmor=unconfined"][..], false),
        ] {
            assert_eq!(
                run(opt, None).unwrap()["process"]["noNewPrivileges"],
                nnp,
                "{opt:?}"
            );
        }
        assert!(run(&["seccomp=unconfined"], None).unwrap()["linux"]
            .get("seccomp")
            .is_none());
        let custom = r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO"}]}"#;
        assert_eq!(
            run(&["seccomp=/etc/p.json"], Some(custom)).unwrap()["linux"]["seccomp"]
                ["defaultAction"],
            "SCMP_ACT_ALLOW"
        );
        let err = run(
            &["seccomp=/etc/p.json"],
            Some(r#"{"defaultAction":"SCMP_ACT_NOPE"}"#),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("decoding seccomp profile failed: unknown variant `SCMP_ACT_NOPE`"),
            "{err}"
        );
        // A syntax error says where.
        let err = run(&["seccomp=/etc/p.json"], Some("{\"defaultAction\": }"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1 column"), "{err}");
        assert!(matches!(
            run(&["seccomp=/etc/p.json"], None),
            Err(RunSpecError::SeccompProfileMissing)
        ));
        for bad in ["no-new-privileges:maybe", "bogus", "seccomp="] {
            assert_eq!(
                run(&[bad], None).unwrap_err().to_string(),
                format!("invalid --security-opt: {bad:?}")
            );
        }
        // --cap-add SYS_ADMIN widens the default profile.
        let opts = RunOptions {
            cap_add: sv(&["SYS_ADMIN"]),
            ..Default::default()
        };
        let seccomp = gen(&image, &opts)["linux"]["seccomp"].clone();
        let allowed: Vec<&str> = seccomp["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["action"] == "SCMP_ACT_ALLOW" && r.get("args").is_none())
            .flat_map(|r| {
                r["names"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|n| n.as_str().unwrap())
            })
            .collect();
        for name in ["mount", "unshare", "setns", "umount2", "clone"] {
            assert!(allowed.contains(&name), "{name}");
        }
    }
}
