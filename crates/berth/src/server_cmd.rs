//! `berth server`: the cluster's control plane (today: the store and the Kubernetes API).

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context;

#[derive(clap::Args)]
pub struct ServerArgs {
    /// Where the server keeps its state (store, certificates, join token).
    #[arg(long, default_value = "/var/lib/berth/server")]
    data_dir: PathBuf,
    /// The address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    bind_address: IpAddr,
    /// The address pods and nodes reach the API by (the `kubernetes` Service's endpoint):
    /// by default the bind address, or the address of the default route's interface.
    #[arg(long)]
    advertise_address: Option<IpAddr>,
    /// The HTTPS port of the Kubernetes API.
    #[arg(long, default_value_t = 6443)]
    https_listen_port: u16,
    /// The store: unset or sqlite://PATH for embedded SQLite; etcd://HOST:PORT[,HOST:PORT]
    /// or https://HOST:PORT[,…] for etcd.
    #[arg(long)]
    datastore_endpoint: Option<String>,
    /// Where to write the admin kubeconfig (mode 0600).
    #[arg(long, default_value = "/etc/berth/kubeconfig.yaml")]
    write_kubeconfig: PathBuf,
    /// Extra names or addresses for the serving certificate (repeatable).
    #[arg(long = "tls-san")]
    tls_san: Vec<String>,
    /// Static bearer tokens: lines of token,user,uid,"group1,group2".
    #[arg(long)]
    token_auth_file: Option<PathBuf>,
    /// How many recent events the watch cache keeps for watches that resume from a
    /// resourceVersion (older ones get 410 Expired and relist).
    #[arg(long, default_value_t = 10_000)]
    default_watch_cache_size: usize,
    /// Do not run an agent for this machine's node (a control plane only).
    #[arg(long)]
    disable_agent: bool,
    /// Do not run the scheduler (pods then wait for something else to bind them).
    #[arg(long)]
    disable_scheduler: bool,
    /// Do not run the controllers (ReplicaSets).
    #[arg(long)]
    disable_controller_manager: bool,
    /// The controllers to run, as kube-controller-manager's flag: `*` for all, a name to
    /// add one, `-name` to leave one out (e.g. `*,-nodelifecycle`).
    #[arg(long, value_delimiter = ',', default_value = "*")]
    controllers: Vec<String>,
    /// How long a node may go without renewing its Lease before it is `Ready=Unknown` and
    /// tainted unreachable.
    #[arg(long, default_value = "5s", value_parser = crate::agent_cmd::parse_duration)]
    node_monitor_grace_period: std::time::Duration,
    /// DefaultTolerationSeconds: how long pods stay on a not-ready node (Kubernetes: 300).
    #[arg(long, default_value_t = 2)]
    default_not_ready_toleration_seconds: i64,
    /// DefaultTolerationSeconds: how long pods stay on an unreachable node (Kubernetes: 300).
    #[arg(long, default_value_t = 2)]
    default_unreachable_toleration_seconds: i64,
    /// Run the scheduler and controllers only while holding the kube-system/berth-controllers
    /// Lease, so that of several servers sharing a store one runs them.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// How long a leader's lease lasts without renewal before another server takes the
    /// controllers over (kube-controller-manager: 15s).
    #[arg(long, default_value = "4s", value_parser = crate::agent_cmd::parse_duration)]
    leader_elect_lease_duration: std::time::Duration,
    /// How long the leader keeps trying to renew before it stops its controllers
    /// (kube-controller-manager: 10s).
    #[arg(long, default_value = "3s", value_parser = crate::agent_cmd::parse_duration)]
    leader_elect_renew_deadline: std::time::Duration,
    /// How often the leader renews and candidates look (kube-controller-manager: 2s).
    #[arg(long, default_value = "500ms", value_parser = crate::agent_cmd::parse_period)]
    leader_elect_retry_period: std::time::Duration,
    /// Delete the oldest terminated pods when there are more than this many (0: never).
    #[arg(long, default_value_t = 12_500)]
    terminated_pod_gc_threshold: usize,
    /// How often every node's CPU and memory are scraped for metrics.k8s.io (metrics-server's
    /// `--metric-resolution`; its default is 15 s).
    #[arg(long, default_value = "10s", value_parser = crate::agent_cmd::parse_duration)]
    metric_resolution: std::time::Duration,
    /// How often each HorizontalPodAutoscaler is reconciled (kube-controller-manager's
    /// default is 15 s; a reconcile costs a few in-process requests).
    #[arg(long, default_value = "5s", value_parser = crate::agent_cmd::parse_duration)]
    horizontal_pod_autoscaler_sync_period: std::time::Duration,
    /// How far back an HPA without `behavior` looks for a higher recommendation before it
    /// scales down.
    #[arg(long, default_value = "5m", value_parser = crate::agent_cmd::parse_duration)]
    horizontal_pod_autoscaler_downscale_stabilization: std::time::Duration,
    /// The ratio of usage to target within which an HPA does not scale.
    #[arg(long, default_value_t = 0.1)]
    horizontal_pod_autoscaler_tolerance: f64,
    /// How long after a pod starts its CPU may be skipped while it is not yet ready.
    #[arg(long, default_value = "5m", value_parser = crate::agent_cmd::parse_duration)]
    horizontal_pod_autoscaler_cpu_initialization_period: std::time::Duration,
    /// How long after a pod starts a readiness change counts as its first.
    #[arg(long, default_value = "30s", value_parser = crate::agent_cmd::parse_duration)]
    horizontal_pod_autoscaler_initial_readiness_delay: std::time::Duration,
    /// The cluster's token: on the first server, the secret of the join token it writes
    /// (`K10<hash>::server:<secret>` or the secret alone); on another server of the same
    /// store (`--datastore-endpoint`), what lets it take the cluster's CA and keys.
    #[arg(long, env = "BERTH_TOKEN")]
    token: Option<String>,
    /// The longest lifetime of a certificate the server signs for a
    /// CertificateSigningRequest (nodes' certificates; agents renew theirs before they
    /// expire).
    #[arg(long, default_value = "8760h", value_parser = crate::agent_cmd::parse_duration)]
    cluster_signing_duration: std::time::Duration,
    /// How requests are authorized: `Node,RBAC` (Kubernetes' Node authorizer, then RBAC)
    /// or `AlwaysAllow` (every authenticated request; for tests and measurements).
    #[arg(long, default_value = "Node,RBAC", value_parser = ["Node,RBAC", "RBAC,Node", "AlwaysAllow"])]
    authorization_mode: String,
    /// Encrypt stored objects as this Kubernetes EncryptionConfiguration file says
    /// (aescbc, aesgcm, secretbox, identity). Objects stored in another key or unencrypted
    /// are re-written with the first key at start: that is how keys are rotated.
    #[arg(long)]
    encryption_provider_config: Option<std::path::PathBuf>,
    /// The issuer (`iss`) of ServiceAccount tokens, published in the OIDC discovery
    /// document; tokens must also name it as an audience to authenticate here.
    #[arg(long, default_value = apiserver::serviceaccount::DEFAULT_ISSUER)]
    service_account_issuer: String,
    /// Start the first server of an HA cluster: this server runs and supervises an etcd
    /// member (Debian's etcd-server, installed if missing; data under the data dir; TLS
    /// from the cluster CA) as its store, which other servers join with --server.
    #[arg(long, conflicts_with_all = ["datastore_endpoint", "server"])]
    cluster_init: bool,
    /// Join the HA cluster of the server at this URL (https://HOST:6443), with the
    /// cluster's server token (--token): this server adds an etcd member of its own to the
    /// cluster and serves the API from it.
    #[arg(long, requires = "token", conflicts_with = "datastore_endpoint")]
    server: Option<String>,
    /// The port of the cluster's registry (the OCI distribution API, with the server's
    /// certificate; clients authenticate with the cluster's certificates or tokens, RBAC on
    /// `repositories.registry.berth.io` decides).
    #[arg(long, default_value_t = 5000)]
    registry_port: u16,
    /// Do not serve the cluster's registry.
    #[arg(long)]
    disable_registry: bool,
    #[command(flatten)]
    node: crate::agent_cmd::NodeArgs,
}

pub fn run(a: ServerArgs) -> anyhow::Result<i32> {
    // The node's engine is opened before any async thread exists.
    let node = if a.disable_agent {
        None
    } else {
        // The token is read once the PKI exists; a placeholder until then.
        let cfg = crate::agent_cmd::config(
            String::new(),
            String::new(),
            &a.data_dir.join("agent"),
            &a.node,
            true,
        )?;
        let engine = crate::agent_cmd::start_engine(&cfg)?;
        Some((cfg, engine))
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    let code = rt.block_on(async move {
        let data_dir = a.data_dir.clone();
        let advertise_address = a.advertise_address.or_else(|| {
            if a.bind_address.is_unspecified() || a.bind_address.is_loopback() {
                crate::agent_cmd::default_node_ip()
            } else {
                Some(a.bind_address)
            }
        });
        // An HA server's store is the etcd member it runs.
        let (datastore_endpoint, etcd_members) = if a.cluster_init || a.server.is_some() {
            let advertise = advertise_address.context(
                "an HA server needs an address the other servers reach it by: give --advertise-address",
            )?;
            let join = a.server.as_deref().zip(a.token.as_deref());
            let member = crate::etcd_member::start(&data_dir, advertise, join)
                .await
                .context("the server's etcd member")?;
            (Some(member.datastore_endpoint), vec![member.client_url])
        } else {
            (a.datastore_endpoint, Vec::new())
        };
        let cfg = apiserver::Config {
            data_dir: a.data_dir,
            bind_address: a.bind_address,
            advertise_address,
            https_port: a.https_listen_port,
            datastore_endpoint,
            etcd_members,
            write_kubeconfig: a.write_kubeconfig.clone(),
            tls_sans: a.tls_san,
            token_auth_file: a.token_auth_file,
            watch_cache_events: a.default_watch_cache_size,
            metric_resolution: a.metric_resolution,
            service_account_issuer: a.service_account_issuer,
            encryption_provider_config: a.encryption_provider_config,
            insecure_registries: a.node.insecure_registry.clone(),
            authorization_mode: a.authorization_mode.clone(),
            cluster_signing_duration: a.cluster_signing_duration,
            token: a.token.clone(),
            admission: apiserver::api::Admission {
                not_ready_toleration_seconds: a.default_not_ready_toleration_seconds,
                unreachable_toleration_seconds: a.default_unreachable_toleration_seconds,
            },
        };
        let running = apiserver::start(cfg).await.context("start the server")?;
        if !a.disable_registry {
            let addr = crate::cluster_registry::start(
                &running,
                &data_dir,
                a.bind_address,
                a.registry_port,
            )?;
            let published = std::net::SocketAddr::new(running.advertise, addr.port());
            running
                .publish_registry(&published.to_string())
                .await
                .context("publishing where the registry is")?;
            eprintln!("berth server: registry on https://{addr}");
        }
        eprintln!(
            "berth server: Kubernetes API on https://{}; kubeconfig {}",
            running.addr,
            a.write_kubeconfig.display()
        );
        if !a.disable_scheduler || !a.disable_controller_manager {
            // The scheduler and controllers are clients of this server, each as its own user
            // with the least its default role grants, served in process: no TLS, socket or
            // HTTP framing between them and the API.
            let client_as = |user: &str| {
                let local = running.local(user);
                let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
                    use http_body_util::BodyExt;
                    let req =
                        req.map(|b| b.map_err(apiserver::server::BodyError::new).boxed_unsync());
                    let call = local(req);
                    async move { Ok::<_, std::convert::Infallible>(call.await) }
                });
                kube::Client::new(service, "default")
            };
            let client = client_as("system:kube-controller-manager");
            let opts = controllers::Options {
                scheduler: !a.disable_scheduler,
                scheduler_client: Some(client_as("system:kube-scheduler")),
                controllers: if a.disable_controller_manager {
                    vec!["-*".into()]
                } else {
                    a.controllers.clone()
                },
                node_monitor_grace_period: a.node_monitor_grace_period,
                terminated_pod_gc_threshold: a.terminated_pod_gc_threshold,
                leader_election: controllers::leader::Timing {
                    lease_duration: a.leader_elect_lease_duration,
                    renew_deadline: a.leader_elect_renew_deadline,
                    retry_period: a.leader_elect_retry_period,
                },
                hpa: controllers::hpa::Settings {
                    sync_period: a.horizontal_pod_autoscaler_sync_period,
                    downscale_stabilization: a.horizontal_pod_autoscaler_downscale_stabilization,
                    tolerance: a.horizontal_pod_autoscaler_tolerance,
                    cpu_initialization_period: a
                        .horizontal_pod_autoscaler_cpu_initialization_period,
                    initial_readiness_delay: a.horizontal_pod_autoscaler_initial_readiness_delay,
                },
            };
            // Stable across restarts of this server (its data dir), distinct between servers:
            // the host's name and the server's identity.
            let leader = a.leader_elect.then(|| {
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|s| s.trim().to_string())
                    .unwrap_or_default();
                format!("{host}_{}", running.identity)
            });
            controllers::start(client, opts, leader).context("--controllers")?;
        }
        let agent = node.map(|(mut cfg, engine)| {
            let host = if running.addr.ip().is_unspecified() {
                std::net::IpAddr::from([127, 0, 0, 1])
            } else {
                running.addr.ip()
            };
            cfg.server = format!(
                "https://{}",
                std::net::SocketAddr::new(host, running.addr.port())
            );
            cfg.token = running.pki.token.clone();
            if cfg.node_ip.is_none() && host.is_loopback() {
                cfg.node_ip = crate::agent_cmd::default_node_ip();
            }
            tokio::spawn(async move {
                if let Err(e) = agent::run(cfg, engine).await {
                    eprintln!("berth server: the node agent stopped: {e:#}");
                }
            })
        });
        let _ = &agent;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("signal handler")?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        Ok(0)
    });
    // Stopping does not wait on anything a task or a blocking call still holds.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    code
}

#[derive(clap::Args)]
pub struct KubeconfigArgs {
    /// The user's name (the certificate's CN, what RBAC subjects of kind User name).
    #[arg(long)]
    user: String,
    /// A group the user is in (the certificate's O); repeatable.
    #[arg(long = "group")]
    groups: Vec<String>,
    /// The server's data dir, whose `tls/ca.key` signs the certificate.
    #[arg(long, default_value = "/var/lib/berth/server")]
    data_dir: PathBuf,
    /// The API server's URL (default: the one in the admin kubeconfig).
    #[arg(long)]
    server: Option<String>,
    /// The admin kubeconfig the server wrote, to take the URL from.
    #[arg(long, default_value = "/etc/berth/kubeconfig.yaml")]
    kubeconfig: PathBuf,
}

/// `berth kubeconfig --user NAME [--group G]`: prints a kubeconfig for a new user.
pub fn kubeconfig(a: KubeconfigArgs) -> anyhow::Result<i32> {
    if a.user.is_empty() || a.user.contains(['\n', '/']) {
        anyhow::bail!(
            "--user {:?}: a user name is one line without slashes",
            a.user
        );
    }
    if a.user == "system:admin" || a.groups.iter().any(|g| g == "system:masters") {
        anyhow::bail!(
            "berth kubeconfig issues users to be granted roles; the admin kubeconfig is {}",
            a.kubeconfig.display()
        );
    }
    let server = match a.server {
        Some(s) => s,
        None => std::fs::read_to_string(&a.kubeconfig)
            .with_context(|| {
                format!(
                    "reading {} for the server's URL (or give --server)",
                    a.kubeconfig.display()
                )
            })?
            .lines()
            .find_map(|l| l.trim().strip_prefix("server: ").map(str::to_string))
            .with_context(|| format!("{} names no server", a.kubeconfig.display()))?,
    };
    let groups: Vec<&str> = a.groups.iter().map(String::as_str).collect();
    let kc =
        apiserver::pki::Pki::user_kubeconfig(&a.data_dir.join("tls"), &server, &a.user, &groups)
            .with_context(|| {
                format!(
                    "signing with the cluster CA under {}",
                    a.data_dir.join("tls").display()
                )
            })?;
    print!("{kc}");
    Ok(0)
}

/// `berth token`: bootstrap tokens as Kubernetes keeps them, Secrets
/// `kube-system/bootstrap-token-<id>`.
#[derive(clap::Subcommand, Debug)]
pub enum TokenCmd {
    /// Make a token; prints it as `berth agent --token` takes it (`K10<CA hash>::<id>.<secret>`).
    Create {
        /// How long it may be used to join (0: forever).
        #[arg(long, default_value = "24h", value_parser = crate::agent_cmd::parse_duration)]
        ttl: std::time::Duration,
        #[arg(long, default_value = "")]
        description: String,
        /// Extra groups for its user (each must start with system:bootstrappers:).
        #[arg(
            long = "groups",
            default_value = "system:bootstrappers:berth:default-node-token"
        )]
        groups: String,
        /// The admin kubeconfig.
        #[arg(long, default_value = "/etc/berth/kubeconfig.yaml")]
        kubeconfig: PathBuf,
    },
    /// List the tokens.
    #[command(alias = "ls")]
    List {
        #[arg(long, default_value = "/etc/berth/kubeconfig.yaml")]
        kubeconfig: PathBuf,
    },
    /// Delete tokens by ID (or full token).
    #[command(alias = "rm")]
    Delete {
        #[arg(long, default_value = "/etc/berth/kubeconfig.yaml")]
        kubeconfig: PathBuf,
        #[arg(required = true)]
        tokens: Vec<String>,
    },
}

async fn admin_client(path: &std::path::Path) -> anyhow::Result<(kube::Client, String)> {
    let kc = kube::config::Kubeconfig::read_from(path)
        .with_context(|| format!("reading the admin kubeconfig {}", path.display()))?;
    let ca_pem = kc
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.certificate_authority_data.clone())
        .and_then(|d| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.decode(d).ok()
        })
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| anyhow::anyhow!("{}: no certificate-authority-data", path.display()))?;
    let hash = apiserver::pki::ca_hash(&ca_pem)
        .ok_or_else(|| anyhow::anyhow!("{}: the CA is not a certificate", path.display()))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    Ok((kube::Client::try_from(cfg)?, hash))
}

fn random_token_part(n: usize) -> String {
    const ALPHA: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut b = vec![0u8; n];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .expect("the system random source");
    b.iter()
        .map(|x| ALPHA[*x as usize % ALPHA.len()] as char)
        .collect()
}

pub fn token(cmd: TokenCmd) -> anyhow::Result<i32> {
    use k8s_openapi::api::core::v1::Secret;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cmd {
            TokenCmd::Create {
                ttl,
                description,
                groups,
                kubeconfig,
            } => {
                for g in groups.split(',').filter(|g| !g.is_empty()) {
                    if !g.starts_with("system:bootstrappers:") {
                        anyhow::bail!("--groups {g:?}: extra groups of a bootstrap token must start with system:bootstrappers:");
                    }
                }
                let (client, hash) = admin_client(&kubeconfig).await?;
                let (id, secret) = (random_token_part(6), random_token_part(16));
                let mut data = serde_json::json!({
                    "token-id": id, "token-secret": secret,
                    "usage-bootstrap-authentication": "true", "usage-bootstrap-signing": "true",
                    "auth-extra-groups": groups, "description": description,
                });
                if !ttl.is_zero() {
                    let until = (timefmt::now_nanos() / 1_000_000_000) as i64 + ttl.as_secs().max(1) as i64;
                    data["expiration"] = serde_json::json!(timefmt::rfc3339(until, 0));
                }
                let s: Secret = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": format!("bootstrap-token-{id}"), "namespace": "kube-system"},
                    "type": "bootstrap.kubernetes.io/token",
                    "stringData": data,
                }))?;
                kube::Api::<Secret>::namespaced(client, "kube-system")
                    .create(&Default::default(), &s)
                    .await
                    .context("storing the token")?;
                println!("K10{hash}::{id}.{secret}");
            }
            TokenCmd::List { kubeconfig } => {
                let (client, _) = admin_client(&kubeconfig).await?;
                let list = kube::Api::<Secret>::namespaced(client, "kube-system")
                    .list(&kube::api::ListParams::default())
                    .await?;
                println!("{:<24}{:<10}{:<22}{:<32}{:<20}EXTRA GROUPS", "TOKEN", "TTL", "EXPIRES", "USAGES", "DESCRIPTION");
                let now = timefmt::now_nanos();
                for s in list
                    .items
                    .into_iter()
                    .filter(|s| s.type_.as_deref() == Some("bootstrap.kubernetes.io/token"))
                {
                    let d = s.data.unwrap_or_default();
                    let f = |k: &str| d.get(k).map(|b| String::from_utf8_lossy(&b.0).into_owned()).unwrap_or_default();
                    let exp = f("expiration");
                    let ttl = match timefmt::parse_rfc3339(&exp) {
                        Some(t) if t <= now => "expired".to_string(),
                        Some(t) => timefmt::human_duration(((t - now) / 1_000_000_000) as i64),
                        None => "<forever>".to_string(),
                    };
                    let usages: Vec<&str> = ["authentication", "signing"]
                        .into_iter()
                        .filter(|u| f(&format!("usage-bootstrap-{u}")) == "true")
                        .collect();
                    println!(
                        "{:<24}{:<10}{:<22}{:<32}{:<20}{}",
                        format!("{}.{}", f("token-id"), f("token-secret")),
                        ttl,
                        if exp.is_empty() { "<never>".into() } else { exp },
                        usages.join(","),
                        if f("description").is_empty() { "<none>".into() } else { f("description") },
                        f("auth-extra-groups")
                    );
                }
            }
            TokenCmd::Delete { kubeconfig, tokens } => {
                let (client, _) = admin_client(&kubeconfig).await?;
                let api = kube::Api::<Secret>::namespaced(client, "kube-system");
                for t in tokens {
                    let id = t.rsplit("::").next().unwrap_or(&t).split('.').next().unwrap_or_default().to_string();
                    api.delete(&format!("bootstrap-token-{id}"), &Default::default())
                        .await
                        .with_context(|| format!("deleting token {id}"))?;
                    println!("bootstrap token \"{id}\" deleted");
                }
            }
        }
        Ok(0)
    })
}
