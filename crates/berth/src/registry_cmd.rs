//! `berth registry serve` (the OCI distribution server) and `berth registry gc`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context as _, Result};
use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub enum RegistryCmd {
    /// Serve the OCI distribution API.
    Serve(ServeArgs),
    /// Remove blobs no manifest references (safe while `serve` runs).
    Gc {
        /// The registry's storage.
        #[arg(long, default_value = "/var/lib/berth/registry")]
        root: PathBuf,
        /// Keep blobs and uploads younger than this (they may belong to a push in progress).
        #[arg(long, default_value = "1h")]
        grace: String,
    },
}

#[derive(Args)]
pub struct ServeArgs {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:5000")]
    addr: String,
    /// The registry's storage.
    #[arg(long, default_value = "/var/lib/berth/registry")]
    root: PathBuf,
    /// Users (htpasswd file, bcrypt entries): turns authentication on.
    #[arg(long)]
    htpasswd: Option<PathBuf>,
    /// How clients authenticate: basic (every request) or token (bearer tokens from /token).
    #[arg(long, default_value = "token")]
    auth: String,
    /// Permissions per user and repository (JSON: {"access": [{"user", "repository", "actions"}]}).
    #[arg(long)]
    access: Option<PathBuf>,
    /// The service name tokens are issued for.
    #[arg(long, default_value = "berth-registry")]
    service: String,
    /// Seconds a token is valid.
    #[arg(long, default_value_t = 300)]
    token_ttl: u64,
    /// TLS certificate chain (PEM).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The largest blob accepted, in bytes.
    #[arg(long, default_value_t = 64 << 30)]
    max_blob_size: u64,
    /// The largest manifest accepted, in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    max_manifest_size: usize,
    /// No request log.
    #[arg(long, short = 'q')]
    quiet: bool,
}

pub fn run(cmd: RegistryCmd) -> Result<i32> {
    match cmd {
        RegistryCmd::Serve(a) => serve(a),
        RegistryCmd::Gc { root, grace } => {
            let grace = timefmt::parse_duration(&grace)
                .ok_or_else(|| anyhow!("--grace {grace}: not a duration (1h, 30m, 0s)"))?;
            let storage = registry::Storage::open(&root)
                .with_context(|| format!("opening {}", root.display()))?;
            let report = storage
                .gc(std::time::Duration::from_nanos(grace as u64))
                .map_err(|e| anyhow!("{e}"))?;
            for d in &report.removed {
                println!("deleted {d}");
            }
            println!(
                "{} blobs kept, {} removed, {} abandoned uploads removed",
                report.kept,
                report.removed.len(),
                report.uploads_removed
            );
            Ok(0)
        }
    }
}

fn serve(a: ServeArgs) -> Result<i32> {
    let mut storage = registry::Storage::open(&a.root)
        .with_context(|| format!("opening {}", a.root.display()))?;
    storage.max_manifest = a.max_manifest_size;
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(c), Some(k)) => Some(registry::tls::server_config(c, k).map_err(|e| anyhow!(e))?),
        _ => None,
    };
    let auth = match &a.htpasswd {
        None => {
            if a.access.is_some() {
                bail!("--access needs --htpasswd (who the users are)");
            }
            None
        }
        Some(h) => {
            let mode = match a.auth.as_str() {
                "basic" => registry::auth::Mode::Basic,
                "token" => registry::auth::Mode::Token {
                    service: a.service.clone(),
                    key: registry::auth::token_key(&a.root)
                        .with_context(|| format!("the token key in {}", a.root.display()))?,
                    ttl: a.token_ttl,
                },
                m => bail!("--auth {m}: expected basic or token"),
            };
            let mut auth =
                registry::auth::Auth::new(h, a.access.as_deref(), mode).map_err(|e| anyhow!(e))?;
            if tls.is_some() {
                auth.scheme = "https";
            }
            Some(auth)
        }
    };
    let listener =
        std::net::TcpListener::bind(&a.addr).with_context(|| format!("listening on {}", a.addr))?;
    let local = listener.local_addr()?;
    let reg = Arc::new(registry::Registry::new(
        storage,
        registry::Config {
            max_blob: a.max_blob_size,
            auth,
            log: !a.quiet,
            ..Default::default()
        },
    ));
    eprintln!(
        "berth registry: listening on {}://{local} (storage {})",
        if tls.is_some() { "https" } else { "http" },
        a.root.display()
    );
    registry::server::serve(listener, reg, tls);
    Ok(0)
}
