//! The etcd member an HA server runs and supervises (k3s's embedded etcd, with Debian's
//! etcd as the process): `berth server --cluster-init` starts the first member of a new
//! etcd cluster; `berth server --server URL --token T` takes the cluster's bootstrap data
//! from that server (`/v1-berth/server-bootstrap`, the CA pinned by the token), adds a
//! member of its own through etcd's membership API and starts it. Peer and client traffic
//! is TLS with certificates of the cluster CA, both sides authenticated.
//!
//! Layout under the data dir: `etcd/member.json` (the member's name and how it first
//! started), `etcd/data` (etcd's own), `etcd/etcd.log`, and `tls/etcd.{crt,key}` (one
//! certificate for serving, peers and clients, re-issued at every start).
//!
//! Invariants: a member is added to the cluster only after everything it needs to start
//! is written, and removed again if it then fails to start, so a failed join leaves the
//! cluster as it was; the member is killed with the server (`PR_SET_PDEATHSIG`), and
//! restarted when it exits on its own, unless it was removed from the cluster.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

/// etcd's client port (as Kubernetes and k3s use it).
pub const CLIENT_PORT: u16 = 2379;
/// etcd's peer port.
pub const PEER_PORT: u16 = 2380;
/// How long a starting member may take to answer with a quorum (a whole cluster restarting
/// waits for enough of its servers).
const READY_TIMEOUT: Duration = Duration::from_secs(300);
/// What etcd logs when it exits because it was removed from the cluster.
const REMOVED: &str = "the member has been permanently removed from the cluster";

/// How the member first started; etcd itself remembers the rest in its data dir.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct State {
    name: String,
    /// `--initial-cluster` (used only on the first start).
    initial_cluster: String,
    /// `new` (the first member) or `existing` (a member added to a cluster).
    cluster_state: String,
    /// The member's client URL.
    client_url: String,
}

/// A running member.
pub struct Member {
    /// The store endpoint for `--datastore-endpoint`: every member's client URL known at
    /// start, over TLS, following members that join later.
    pub datastore_endpoint: String,
    /// This member's client URL.
    pub client_url: String,
}

struct Paths {
    dir: PathBuf,
    tls: PathBuf,
}

impl Paths {
    fn new(data_dir: &Path) -> Paths {
        Paths {
            dir: data_dir.join("etcd"),
            tls: data_dir.join("tls"),
        }
    }
    fn state(&self) -> PathBuf {
        self.dir.join("member.json")
    }
    fn log(&self) -> PathBuf {
        self.dir.join("etcd.log")
    }
    fn ca(&self) -> PathBuf {
        self.tls.join("ca.crt")
    }
    fn cert(&self) -> PathBuf {
        self.tls.join("etcd.crt")
    }
    fn key(&self) -> PathBuf {
        self.tls.join("etcd.key")
    }
}

fn url(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("https://{v4}:{port}"),
        IpAddr::V6(v6) => format!("https://[{v6}]:{port}"),
    }
}

/// The etcd binary: on the PATH, or installed from Debian's `etcd-server` package.
pub fn binary() -> Result<PathBuf> {
    let find = || {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
            .map(|d| d.join("etcd"))
            .find(|p| p.is_file())
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    eprintln!("berth server: etcd is not installed; installing Debian's etcd-server package");
    let apt = |args: &[&str]| {
        std::process::Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let installed = apt(&["install", "-y", "-q", "etcd-server"])
        || (apt(&["update", "-q"]) && apt(&["install", "-y", "-q", "etcd-server"]));
    match find() {
        Some(p) if installed => Ok(p),
        _ => bail!(
            "an HA server runs an etcd member, and etcd is not installed: `apt-get install etcd-server` failed (install it, or put an etcd binary on the PATH)"
        ),
    }
}

fn connect_options(paths: &Paths) -> Result<etcd_client::ConnectOptions> {
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let tls = etcd_client::TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(read(&paths.ca())?))
        .identity(etcd_client::Identity::from_pem(
            read(&paths.cert())?,
            read(&paths.key())?,
        ));
    Ok(etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(10))
        .with_tls(tls))
}

async fn client(paths: &Paths, urls: &[String]) -> Result<etcd_client::Client> {
    etcd_client::Client::connect(urls, Some(connect_options(paths)?))
        .await
        .with_context(|| format!("connecting to etcd at {}", urls.join(",")))
}

fn random_suffix() -> String {
    let mut b = [0u8; 4];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .expect("the system random source");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn new_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "server".into());
    format!("{host}-{}", random_suffix())
}

/// Certificates for this member: one of the cluster CA for the advertised address and
/// loopback, for serving, peers and clients alike.
fn issue_certificate(paths: &Paths, name: &str, advertise: IpAddr) -> Result<()> {
    let sans = vec![
        advertise.to_string(),
        "127.0.0.1".into(),
        "localhost".into(),
    ];
    apiserver::pki::issue_peer(&paths.tls, "etcd", &format!("etcd-{name}"), &sans)
        .context("issuing the etcd member's certificate")
}

fn save_state(paths: &Paths, st: &State) -> Result<()> {
    std::fs::create_dir_all(&paths.dir)
        .with_context(|| format!("creating {}", paths.dir.display()))?;
    apiserver::pki::write_secret(
        &paths.state(),
        &serde_json::to_vec_pretty(st).expect("JSON of the state"),
        0o600,
    )
    .with_context(|| format!("writing {}", paths.state().display()))
}

fn load_state(paths: &Paths) -> Result<Option<State>> {
    match std::fs::read(paths.state()) {
        Ok(b) => Ok(Some(serde_json::from_slice(&b).with_context(|| {
            format!(
                "{} is not a member state berth wrote",
                paths.state().display()
            )
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", paths.state().display())),
    }
}

fn spawn(
    bin: &Path,
    paths: &Paths,
    st: &State,
    advertise: IpAddr,
) -> Result<tokio::process::Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(paths.log())
        .with_context(|| format!("opening {}", paths.log().display()))?;
    let s = |p: PathBuf| p.to_string_lossy().into_owned();
    let client = url(advertise, CLIENT_PORT);
    let peer = url(advertise, PEER_PORT);
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args(["--name", &st.name])
        .args(["--data-dir", &s(paths.dir.join("data"))])
        .args(["--listen-client-urls", &client])
        .args(["--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer])
        .args(["--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &st.initial_cluster])
        .args(["--initial-cluster-state", &st.cluster_state])
        .args(["--cert-file", &s(paths.cert())])
        .args(["--key-file", &s(paths.key())])
        .args(["--trusted-ca-file", &s(paths.ca())])
        .arg("--client-cert-auth")
        .args(["--peer-cert-file", &s(paths.cert())])
        .args(["--peer-key-file", &s(paths.key())])
        .args(["--peer-trusted-ca-file", &s(paths.ca())])
        .arg("--peer-client-cert-auth")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().context("the etcd log")?)
        .stderr(log)
        .kill_on_drop(true);
    // SAFETY: prctl(2) between fork and exec touches only the child's own state. The
    // member dies with the server even when the server is killed.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
        .with_context(|| format!("starting {}", bin.display()))
}

fn log_tail(paths: &Paths) -> String {
    let text = std::fs::read_to_string(paths.log()).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

/// Waits until the member answers on its client URL, or fails if it exits first.
async fn wait_ready(
    paths: &Paths,
    child: &mut tokio::process::Child,
    client_url: &str,
) -> Result<()> {
    let started = tokio::time::Instant::now();
    let deadline = started + READY_TIMEOUT;
    let mut waiting = false;
    let opts = connect_options(paths)?;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "etcd exited ({status}) before it served; the end of {}:\n{}",
                paths.log().display(),
                log_tail(paths)
            );
        }
        // A linearizable read: the member serves, and a quorum of the cluster's members
        // agrees (a whole cluster restarting waits here for enough of its servers).
        let answered = async {
            let mut c = etcd_client::Client::connect([client_url], Some(opts.clone())).await?;
            c.get("/", Some(etcd_client::GetOptions::new().with_count_only()))
                .await
        };
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), answered).await {
            return Ok(());
        }
        if !waiting && started.elapsed() > Duration::from_secs(3) {
            waiting = true;
            eprintln!(
                "berth server: waiting for a quorum of etcd members (the other servers) to answer"
            );
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "etcd did not answer on {client_url} within {READY_TIMEOUT:?}; the end of {}:\n{}",
                paths.log().display(),
                log_tail(paths)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Restarts the member whenever it exits, except when it was removed from the cluster.
fn supervise(
    bin: PathBuf,
    paths: Paths,
    st: State,
    advertise: IpAddr,
    mut child: tokio::process::Child,
) {
    tokio::spawn(async move {
        loop {
            let status = child.wait().await;
            if log_tail(&paths).contains(REMOVED) {
                // A removed server must not go on serving as part of the cluster.
                eprintln!(
                    "berth server: this server's etcd member {} was removed from the cluster; the server stops (to join again, remove {} and start with --server)",
                    st.name,
                    paths.dir.display()
                );
                std::process::exit(1);
            }
            eprintln!(
                "berth server: etcd exited ({}); restarting it",
                status.map_or_else(|e| e.to_string(), |s| s.to_string())
            );
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                match spawn(&bin, &paths, &st, advertise) {
                    Ok(c) => {
                        child = c;
                        break;
                    }
                    Err(e) => eprintln!("berth server: restarting etcd: {e:#}"),
                }
            }
        }
    });
}

fn endpoint(paths: &Paths, urls: &[String]) -> String {
    format!(
        "{}?cacert={}&cert={}&key={}&autosync=true",
        urls.join(","),
        paths.ca().display(),
        paths.cert().display(),
        paths.key().display()
    )
}

/// Starts this server's member: again from its data dir when it has one; else the first
/// member of a new cluster (`join` None, `--cluster-init`) or a member added to the
/// cluster of the server `join` names, with the cluster's server token.
pub async fn start(
    data_dir: &Path,
    advertise: IpAddr,
    join: Option<(&str, &str)>,
) -> Result<Member> {
    let paths = Paths::new(data_dir);
    let bin = binary()?;
    let client_url = url(advertise, CLIENT_PORT);
    let joined_fresh = join.is_some() && !paths.tls.exists();
    let (st, mut urls, added) = match (load_state(&paths)?, join) {
        (Some(st), _) => {
            issue_certificate(&paths, &st.name, advertise)?;
            (st, vec![client_url.clone()], None)
        }
        (None, None) => {
            apiserver::pki::ensure_ca(&paths.tls).context("the cluster CA")?;
            let name = new_name();
            issue_certificate(&paths, &name, advertise)?;
            let st = State {
                initial_cluster: format!("{name}={}", url(advertise, PEER_PORT)),
                name,
                cluster_state: "new".into(),
                client_url: client_url.clone(),
            };
            save_state(&paths, &st)?;
            (st, vec![client_url.clone()], None)
        }
        (None, Some((server, token))) => {
            let fresh = !paths.tls.exists();
            match add(&paths, advertise, server, token).await {
                Ok((st, urls, id, members)) => (st, urls, Some((id, members))),
                Err(e) => {
                    // Nothing of a join that did not happen stays behind.
                    if fresh {
                        let _ = std::fs::remove_dir_all(&paths.tls);
                    }
                    let _ = std::fs::remove_dir_all(&paths.dir);
                    return Err(e);
                }
            }
        }
    };
    let started = async {
        let mut child = spawn(&bin, &paths, &st, advertise)?;
        wait_ready(&paths, &mut child, &client_url).await?;
        anyhow::Ok(child)
    }
    .await;
    let child = match (started, added) {
        (Ok(c), _) => c,
        (Err(e), Some((id, members))) => {
            // Leave the cluster as it was: the member that never started goes again.
            if let Ok(mut c) = client(&paths, &members).await {
                let _ = c.member_remove(id).await;
            }
            let _ = std::fs::remove_dir_all(&paths.dir);
            if joined_fresh {
                let _ = std::fs::remove_dir_all(&paths.tls);
            }
            return Err(
                e.context("starting the new etcd member (it was removed from the cluster again)")
            );
        }
        (Err(e), None) => return Err(e),
    };
    eprintln!(
        "berth server: etcd member {} serving on {client_url} (log {})",
        st.name,
        paths.log().display()
    );
    // Every member's client URL, so that this server's store goes on through the others
    // when its own member stops (the store then follows changes).
    if let Ok(mut c) = client(&paths, std::slice::from_ref(&client_url)).await {
        if let Ok(list) = c.member_list().await {
            for u in list.members().iter().flat_map(|m| m.client_urls()) {
                if !urls.contains(u) {
                    urls.push(u.clone());
                }
            }
        }
    }
    urls.retain(|u| u != &client_url);
    urls.insert(0, client_url.clone());
    let datastore_endpoint = endpoint(&paths, &urls);
    supervise(bin, paths, st, advertise, child);
    Ok(Member {
        datastore_endpoint,
        client_url,
    })
}

#[derive(Deserialize)]
struct ServerBootstrap {
    bootstrap: String,
    etcd: Vec<String>,
}

/// Takes the cluster's bootstrap data from `server` and adds this member to its etcd;
/// returns the state to start with, every member's client URL, the new member's ID and
/// the URLs it was added through.
async fn add(
    paths: &Paths,
    advertise: IpAddr,
    server: &str,
    token: &str,
) -> Result<(State, Vec<String>, u64, Vec<String>)> {
    use base64::Engine as _;
    let parsed = agent::join::Token::parse(token).context("--token")?;
    if !token.contains("::server:") {
        bail!("--token: a server joins with the cluster's server token (<data-dir>/tls/token on a server, K10<hash>::server:<secret>), not a node's bootstrap token");
    }
    let ca = agent::join::fetch_ca(server, &parsed).await?;
    let tls = Arc::new(agent::join::pinned(&ca)?);
    let (status, body) = agent::join::request(
        tls,
        server,
        "GET",
        "/v1-berth/server-bootstrap",
        &[("Authorization", format!("Bearer {}", token.trim()))],
        b"",
    )
    .await?;
    if status != 200 {
        let msg = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        bail!("{server} refused to let this server join ({status}): {msg}");
    }
    let boot: ServerBootstrap =
        serde_json::from_slice(&body).context("the server's bootstrap answer")?;
    let sealed = base64::engine::general_purpose::STANDARD
        .decode(&boot.bootstrap)
        .context("the server's bootstrap data")?;
    apiserver::bootstrap::restore_sealed(&sealed, &paths.tls, &parsed.secret)
        .context("the cluster's bootstrap data")?;
    let name = new_name();
    issue_certificate(paths, &name, advertise)?;
    let mut c = client(paths, &boot.etcd).await?;
    let peer = url(advertise, PEER_PORT);
    // etcd refuses a second new member until the first has started (strict
    // reconfiguration check): servers joining at once take turns.
    let mut tries = 0;
    let added = loop {
        match c.member_add([peer.as_str()], None).await {
            Ok(r) => break r,
            Err(e) if tries < 30 && e.to_string().contains("unhealthy cluster") => {
                tries += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                return Err(anyhow!(e).context(format!(
                    "adding this server's etcd member ({peer}) to the cluster"
                )))
            }
        }
    };
    let id = added
        .member()
        .map(|m| m.id())
        .ok_or_else(|| anyhow!("etcd added the member without saying its ID"))?;
    let mut initial = Vec::new();
    let mut urls = Vec::new();
    for m in added.member_list() {
        let n = if m.id() == id {
            name.as_str()
        } else {
            m.name()
        };
        for p in m.peer_urls() {
            initial.push(format!("{n}={p}"));
        }
        urls.extend(m.client_urls().iter().cloned());
    }
    let st = State {
        name,
        initial_cluster: initial.join(","),
        cluster_state: "existing".into(),
        client_url: url(advertise, CLIENT_PORT),
    };
    if let Err(e) = save_state(paths, &st) {
        let _ = c.member_remove(id).await;
        return Err(e);
    }
    Ok((st, urls, id, boot.etcd))
}

/// `berth member`: the etcd members of an HA cluster, from a server's data dir.
#[derive(clap::Subcommand, Debug)]
pub enum MemberCmd {
    /// List the members: name, ID, peer and client URLs, and whether each answers.
    #[command(alias = "ls")]
    List {
        /// The server's data dir (its etcd member's certificate and URL).
        #[arg(long, default_value = "/var/lib/berth/server")]
        data_dir: PathBuf,
    },
    /// Remove a member (a server that is gone for good) by name or hex ID; if its server
    /// still runs, its member and then the server stop.
    #[command(alias = "rm")]
    Remove {
        #[arg(long, default_value = "/var/lib/berth/server")]
        data_dir: PathBuf,
        name: String,
    },
}

pub fn member(cmd: MemberCmd) -> Result<i32> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let data_dir = match &cmd {
            MemberCmd::List { data_dir } | MemberCmd::Remove { data_dir, .. } => data_dir,
        };
        let paths = Paths::new(data_dir);
        let Some(st) = load_state(&paths)? else {
            bail!(
                "{} holds no etcd member: `berth member` runs on a server started with --cluster-init or --server",
                data_dir.display()
            );
        };
        let mut c = client(&paths, &[st.client_url]).await?;
        let list = c.member_list().await.context("listing etcd's members")?;
        match cmd {
            MemberCmd::List { .. } => {
                println!("{:<28} {:<16} {:<28} {:<28} STATUS", "NAME", "ID", "PEER URLS", "CLIENT URLS");
                for m in list.members() {
                    let status = match m.client_urls().first() {
                        None => "not started".to_string(),
                        Some(u) => {
                            let ok = async {
                                let mut mc = etcd_client::Client::connect(
                                    [u.as_str()],
                                    Some(connect_options(&paths)?),
                                )
                                .await?;
                                anyhow::Ok(mc.status().await?)
                            };
                            match tokio::time::timeout(Duration::from_secs(3), ok).await {
                                Ok(Ok(s)) if s.leader() == m.id() => "leader".into(),
                                Ok(Ok(_)) => "started".into(),
                                _ => "unreachable".into(),
                            }
                        }
                    };
                    println!(
                        "{:<28} {:<16x} {:<28} {:<28} {status}",
                        if m.name().is_empty() { "(not started)" } else { m.name() },
                        m.id(),
                        m.peer_urls().join(","),
                        m.client_urls().join(","),
                    );
                }
                Ok(0)
            }
            MemberCmd::Remove { name, .. } => {
                let found = list.members().iter().find(|m| {
                    m.name() == name || u64::from_str_radix(&name, 16).is_ok_and(|id| id == m.id())
                });
                let Some(m) = found else {
                    let names: Vec<&str> = list.members().iter().map(|m| m.name()).collect();
                    bail!("no etcd member is named {name:?} (members: {})", names.join(", "));
                };
                if list.members().len() == 1 {
                    bail!("{name} is the cluster's only member: removing it would leave no store");
                }
                c.member_remove(m.id())
                    .await
                    .with_context(|| format!("removing etcd member {name}"))?;
                println!("removed etcd member {} ({:x})", m.name(), m.id());
                Ok(0)
            }
        }
    })
}
