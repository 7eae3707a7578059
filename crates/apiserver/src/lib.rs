//! berth's Kubernetes API server: the cluster's state in a [`store::Store`] behind the
//! Kubernetes API, served over HTTPS so that kubectl and client libraries work unmodified.
//!
//! Data flow: request → [`server`] (TLS, authn, authz, routing) → [`api`] (verbs over the
//! store, with [`rules`] for defaults and validation, [`patch`]/[`apply`] for patches) →
//! store; the [`cache`] follows the store with one watch and serves watchers and lists.

pub mod api;
pub mod apply;
pub mod auth;
pub mod bootstrap;
pub mod cache;
pub mod convert;
pub mod crd;
pub mod csr;
pub mod discovery;
pub mod encryption;
pub mod eviction;
pub mod imagepolicy;
pub mod kinds;
pub mod limitrange;
pub mod metrics;
pub mod namespaces;
pub mod nodes;
pub mod openapi;
pub mod patch;
pub mod pki;
pub mod podsecurity;
pub mod priority;
pub mod proto;
pub mod quota;
pub mod rbac;
pub mod resourcemetrics;
pub mod rules;
pub mod selector;
pub mod server;
pub mod serviceaccount;
pub mod services;
pub mod status;
pub mod table;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{json, Value};

/// The Kubernetes version berth's API speaks (the `k8s-openapi` feature it is built with).
pub const VERSION: &str = "v1.32.0";

pub fn version_info() -> Value {
    json!({
        "major": "1",
        "minor": "32",
        "gitVersion": format!("{VERSION}+berth"),
        "gitCommit": "berth",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.23.0",
        "compiler": "rustc",
        "platform": format!("linux/{}", if cfg!(target_arch = "x86_64") { "amd64" } else if cfg!(target_arch = "aarch64") { "arm64" } else { std::env::consts::ARCH }),
    })
}

/// A metav1.Time: RFC 3339 in UTC with second precision, as Kubernetes writes it.
pub fn time_secs(secs: i64) -> String {
    let full = timefmt::rfc3339(secs, 0);
    match full.split_once('.') {
        Some((head, _)) => format!("{head}Z"),
        None => full,
    }
}

/// Now, as a metav1.Time.
pub fn now() -> String {
    time_secs((timefmt::now_nanos() / 1_000_000_000) as i64)
}

/// How `berth server` runs.
#[derive(Clone, Debug)]
pub struct Config {
    pub data_dir: PathBuf,
    pub bind_address: IpAddr,
    pub https_port: u16,
    pub datastore_endpoint: Option<String>,
    pub write_kubeconfig: PathBuf,
    pub tls_sans: Vec<String>,
    pub token_auth_file: Option<PathBuf>,
    /// Keep this many recent revisions when compacting (SQLite).
    pub watch_cache_events: usize,
    pub admission: api::Admission,
    /// The address other hosts and pods reach this server by (the `kubernetes` Service's
    /// endpoint); the bind address when it is a specific one, else loopback.
    pub advertise_address: Option<IpAddr>,
    /// How often every node's resource usage is scraped for metrics.k8s.io.
    pub metric_resolution: std::time::Duration,
    /// The `iss` of ServiceAccount tokens, also the API audience they must name.
    pub service_account_issuer: String,
    /// Encryption at rest (Kubernetes' `--encryption-provider-config`).
    pub encryption_provider_config: Option<PathBuf>,
    /// Registries admission reaches over plain http to check image signatures.
    pub insecure_registries: Vec<String>,
    /// Kubernetes' `--authorization-mode`: `Node,RBAC` (the default) or `AlwaysAllow`.
    pub authorization_mode: String,
    /// The cluster's token (k3s's `--token`): the first server's join secret, and what a
    /// server joining the cluster's store needs to take its keys.
    pub token: Option<String>,
    /// The longest lifetime of a certificate signed for a CertificateSigningRequest.
    pub cluster_signing_duration: std::time::Duration,
    /// The client URLs of the etcd member this server runs itself (`--cluster-init`, or a
    /// server that joined one): what a server joining the cluster gets to add its own
    /// member. Empty when the store is not one this server's etcd member is part of.
    pub etcd_members: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cluster certificates")]
    Pki(#[from] pki::PkiError),
    #[error("open the store")]
    Store(#[from] store::OpenError),
    #[error("the store")]
    StoreOp(#[from] store::StoreError),
    #[error("token file")]
    Tokens(#[from] auth::TokenFileError),
    #[error("TLS configuration")]
    Tls(#[from] rustls::Error),
    #[error("listen on {0}")]
    Listen(SocketAddr, #[source] std::io::Error),
    #[error("the certificates under {0} are unreadable")]
    BadPem(PathBuf),
    #[error("the cluster's bootstrap data")]
    Bootstrap(#[from] bootstrap::BootstrapError),
    #[error("encryption at rest")]
    Encryption(#[from] encryption::ConfigError),
    #[error("encryption at rest")]
    EncryptionRewrite(#[source] store::StoreError),
    #[error("service-account tokens")]
    ServiceAccountKey(#[from] serviceaccount::KeyError),
}

/// A started server.
#[derive(Clone)]
pub struct Running {
    pub addr: SocketAddr,
    /// The address other hosts reach this server by.
    pub advertise: IpAddr,
    /// This server's identity among the cluster's servers (stable for its data dir).
    pub identity: String,
    pub api: Arc<api::Api>,
    pub pki: pki::Pki,
    server: Arc<server::Server>,
}

impl Running {
    /// Publishes this server's registry (`host:port`) for the nodes.
    pub async fn publish_registry(&self, address: &str) -> Result<(), store::StoreError> {
        services::publish_registry(&self.api, &self.identity, address).await
    }

    /// Who a bearer token is, as the API authenticates it.
    pub fn user_for_token(&self, token: &str) -> Option<auth::UserInfo> {
        self.server.user_for_token(token)
    }

    /// Whether the API's authorizers (Node, RBAC) allow `attrs` to `user`.
    pub fn authorize(&self, user: &auth::UserInfo, attrs: &auth::Attributes) -> bool {
        self.server.authorizer.authorize(user, attrs)
    }

    /// Serves a request from a client in this process (the server's own scheduler and
    /// controllers) as `user`: the same authorization, admission and metrics as a request
    /// over the network, without TLS, a socket or HTTP framing. Kubernetes' components run
    /// as `system:kube-scheduler` and `system:kube-controller-manager`, with the default
    /// roles of those names.
    pub fn local(
        &self,
        user: &str,
    ) -> impl Fn(
        http::Request<server::ReqBody>,
    ) -> futures::future::BoxFuture<'static, http::Response<server::ResBody>>
           + Clone
           + Send
           + Sync
           + 'static {
        let server = self.server.clone();
        let user = auth::UserInfo {
            name: user.into(),
            uid: String::new(),
            groups: vec!["system:authenticated".into()],
        };
        move |req| {
            let server = server.clone();
            let user = user.clone();
            Box::pin(async move { server.handle(req, Some(user)).await })
        }
    }
}

pub(crate) fn pem_certs(pem: &str) -> Vec<rustls_pki_types::CertificateDer<'static>> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .collect()
}

/// Starts the API server: PKI, store, watch cache, controllers of the API's own objects
/// (namespaces, CRDs), then the listener. Returns once it accepts connections.
pub async fn start(cfg: Config) -> Result<Running, StartError> {
    use rustls_pki_types::pem::PemObject;
    let tls_dir = cfg.data_dir.join("tls");
    let mut sans = cfg.tls_sans.clone();
    if !cfg.bind_address.is_unspecified() {
        sans.push(cfg.bind_address.to_string());
    }
    // Nodes reach the server (and its registry) by the advertised address.
    if let Some(a) = cfg.advertise_address {
        if !sans.contains(&a.to_string()) {
            sans.push(a.to_string());
        }
    }
    // The store first: a server joining a cluster takes the cluster's keys from it.
    let mut raw = store::open(cfg.datastore_endpoint.as_deref(), &cfg.data_dir).await?;
    let given_secret = cfg.token.as_deref().map(bootstrap::secret_of);
    if let Some(secret) = given_secret {
        bootstrap::restore(&*raw, &tls_dir, secret).await?;
    }
    let pki = pki::Pki::load_or_create(&tls_dir, &pki::serving_sans(&sans), given_secret)?;
    // The encryption configuration a server is given is the cluster's: shared with the
    // other servers through the bootstrap data; one given none uses the shared one.
    // A configuration given is shared only once it proved good: it parsed, and every
    // stored object is readable with it and re-written under its first key.
    let shared_config = tls_dir.join(bootstrap::ENCRYPTION_CONFIG);
    let encryption = match &cfg.encryption_provider_config {
        Some(path) => {
            let enc = encryption::Encryption::load(path)?;
            let text = std::fs::read(path)
                .map_err(|e| encryption::ConfigError::Read(path.display().to_string(), e))?;
            Some((enc, path.clone(), Some(text)))
        }
        None if shared_config.exists() => Some((
            encryption::Encryption::load(&shared_config)?,
            shared_config.clone(),
            None,
        )),
        None => None,
    };
    bootstrap::save(&*raw, &tls_dir, pki.join_secret()).await?;
    let host = if cfg.bind_address.is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        cfg.bind_address.to_string()
    };
    let url_host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.clone()
    };

    let metrics = Arc::new(metrics::Metrics::default());
    if let Some((enc, path, given)) = encryption {
        let plain = raw.clone();
        let enc = encryption::EncryptedStore { inner: raw, enc };
        let n = enc
            .rewrite_stale()
            .await
            .map_err(StartError::EncryptionRewrite)?;
        if n > 0 {
            eprintln!(
                "berth server: re-wrote {n} stored objects with the first key of {}",
                path.display()
            );
        }
        if let Some(text) = given {
            pki::write_secret(&shared_config, &text, 0o600)?;
            bootstrap::save(&*plain, &tls_dir, pki.join_secret()).await?;
        }
        raw = Arc::new(enc);
    }
    let store: Arc<dyn store::Store> = Arc::new(metrics::TimedStore {
        inner: raw,
        metrics: metrics.clone(),
    });
    let cache = cache::Cache::start(store.clone(), cfg.watch_cache_events).await?;
    let registry = Arc::new(kinds::Registry::default());
    let api = Arc::new(api::Api {
        store,
        registry,
        cache,
        admission: cfg.admission,
        images: Arc::new(imagepolicy::ImagePolicies::new(
            cfg.insecure_registries.clone(),
        )),
    });
    namespaces::ensure_defaults(&api).await?;
    priority::ensure_system_classes(&api).await?;
    rbac::ensure_defaults(&api).await?;
    imagepolicy::ensure_kind(&api).await?;
    let rbac = Arc::new(rbac::Rbac::default());
    rbac.rebuild(&api);
    tokio::spawn(rbac.clone().follow(api.clone()));
    crd::run_controller(api.clone());
    let issuer = Arc::new(serviceaccount::Issuer::load_or_create(
        &tls_dir,
        &cfg.service_account_issuer,
    )?);
    tokio::spawn(quota::follow(api.clone()));
    tokio::spawn(serviceaccount::follow_namespaces(
        api.clone(),
        pki.ca_cert_pem.clone(),
    ));

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in pem_certs(&pki.ca_cert_pem) {
        roots.add(c)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| rustls::Error::General(e.to_string()))?;
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(pki.serving_key_pem.as_bytes())
        .map_err(|_| StartError::BadPem(tls_dir.clone()))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(pem_certs(&pki.serving_cert_pem), key)?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];

    let tokens = match &cfg.token_auth_file {
        Some(p) => auth::Tokens::load(p)?,
        None => auth::Tokens::default(),
    };
    let addr = SocketAddr::new(cfg.bind_address, cfg.https_port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| StartError::Listen(addr, e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| StartError::Listen(addr, e))?;
    // Written once the port is known (`--https-listen-port 0` picks a free one).
    let server_url = format!("https://{url_host}:{}", addr.port());
    pki::write_secret(
        &cfg.write_kubeconfig,
        pki.admin_kubeconfig(&server_url).as_bytes(),
        0o600,
    )?;
    let pki_arc = Arc::new(pki.clone());
    tokio::spawn(csr::follow(
        api.clone(),
        pki_arc.clone(),
        cfg.cluster_signing_duration,
    ));
    let nodes = Arc::new(nodes::Nodes::new(pki_arc, cfg.etcd_members.clone())?);
    let usage = Arc::new(resourcemetrics::ResourceMetrics::new(cfg.metric_resolution));
    let srv = Arc::new(server::Server {
        api: api.clone(),
        metrics,
        tokens,
        authorizer: match cfg.authorization_mode.as_str() {
            "AlwaysAllow" => Box::new(auth::AlwaysAllow),
            _ => Box::new(rbac::Chain {
                rbac: rbac.clone(),
                api: api.clone(),
            }),
        },
        rbac: Some(rbac),
        host: format!("{url_host}:{}", addr.port()),
        documents: Default::default(),
        nodes: nodes.clone(),
        usage: usage.clone(),
        issuer,
    });
    tokio::spawn(resourcemetrics::run(api.clone(), nodes, usage));
    // The address pods reach this server by, through the `kubernetes` Service.
    let advertise = cfg
        .advertise_address
        .unwrap_or(if cfg.bind_address.is_unspecified() {
            std::net::IpAddr::from([127, 0, 0, 1])
        } else {
            cfg.bind_address
        });
    services::ensure_cluster_services(&api, SocketAddr::new(advertise, addr.port())).await?;
    // The server's identity: stable across restarts of one data dir, distinct between servers.
    let identity = {
        let dir = std::fs::canonicalize(&cfg.data_dir).unwrap_or(cfg.data_dir.clone());
        let h = dir.to_string_lossy().bytes().fold(0x811c_9dc5u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        });
        format!("{h:08x}")
    };
    tokio::spawn(services::keep_registered(
        api.clone(),
        SocketAddr::new(advertise, addr.port()),
        identity.clone(),
    ));
    tokio::spawn(server::serve(srv.clone(), listener, Arc::new(tls)));
    Ok(Running {
        addr,
        advertise,
        identity,
        api,
        pki,
        server: srv,
    })
}
