//! Choosing and opening the backend from one endpoint string (a server flag).
//!
//! | endpoint | store |
//! | --- | --- |
//! | none, `""` or `sqlite://` | SQLite at `DATA_DIR/db/state.db` |
//! | `sqlite://PATH` | SQLite at `PATH` (a relative one is under `DATA_DIR`) |
//! | `etcd://HOST:PORT[,HOST:PORT...]` or `http://...` | etcd, plain gRPC |
//! | `https://HOST:PORT[,...]?cacert=FILE[&cert=FILE&key=FILE]` | etcd over TLS |
//!
//! The query's file paths are taken literally (no percent-decoding); `cacert` is required
//! over TLS, `cert` and `key` (a client certificate) go together. `autosync=true` keeps the
//! client's endpoints to the cluster's members as etcd lists them (etcdctl's
//! `--auto-sync-interval`), for the members a berth server runs itself.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::{
    spawn_compactor, EtcdStore, SqliteStore, Store, StoreError, TlsFiles, DEFAULT_COMPACT_INTERVAL,
    DEFAULT_COMPACT_KEEP,
};

const FORMS: &str = "expected sqlite://PATH, etcd://HOST:PORT[,HOST:PORT...] or \
                     https://HOST:PORT[,...]?cacert=FILE[&cert=FILE&key=FILE]";

/// Where the store is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// The embedded SQLite store in this file.
    Sqlite(PathBuf),
    /// etcd at these `HOST:PORT`s, over TLS when `tls` is set.
    Etcd {
        endpoints: Vec<String>,
        tls: Option<TlsFiles>,
        /// Follow the members etcd lists (`autosync=true`).
        autosync: bool,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("bad store endpoint {endpoint:?}: {reason}")]
    BadEndpoint { endpoint: String, reason: String },
    #[error("create {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("open store {endpoint}")]
    Open {
        endpoint: String,
        #[source]
        source: StoreError,
    },
}

impl Endpoint {
    /// Parses an endpoint (see the module documentation); `data_dir` places SQLite files.
    pub fn parse(endpoint: Option<&str>, data_dir: &Path) -> Result<Endpoint, OpenError> {
        let default = || data_dir.join("db").join("state.db");
        let text = endpoint.unwrap_or("").trim();
        let bad = |reason: &str| OpenError::BadEndpoint {
            endpoint: text.to_owned(),
            reason: reason.to_owned(),
        };
        if text.is_empty() {
            return Ok(Endpoint::Sqlite(default()));
        }
        let Some((scheme, rest)) = text.split_once("://") else {
            return Err(bad(FORMS));
        };
        match scheme {
            "sqlite" => {
                if rest.contains('?') {
                    return Err(bad("sqlite endpoints take no options"));
                }
                Ok(Endpoint::Sqlite(match rest {
                    "" => default(),
                    path => data_dir.join(path),
                }))
            }
            "etcd" | "http" | "https" => {
                let (hosts, query) = match rest.split_once('?') {
                    Some((hosts, query)) => (hosts, Some(query)),
                    None => (rest, None),
                };
                let mut endpoints = Vec::new();
                for host in hosts.split(',') {
                    let host = host.strip_prefix(&format!("{scheme}://")).unwrap_or(host);
                    let port = host.rsplit_once(':').map(|(h, p)| (h, p.parse::<u16>()));
                    match port {
                        Some((h, Ok(_))) if !h.is_empty() && !h.contains('/') => {
                            endpoints.push(host.to_owned())
                        }
                        _ => return Err(bad(&format!("{host:?} is not HOST:PORT; {FORMS}"))),
                    }
                }
                let mut autosync = false;
                let query = query.map(|q| {
                    q.split('&')
                        .filter(|p| match *p {
                            "autosync=true" => {
                                autosync = true;
                                false
                            }
                            _ => true,
                        })
                        .collect::<Vec<_>>()
                        .join("&")
                });
                let tls = match (scheme, query.as_deref()) {
                    ("https", Some(query)) => Some(tls_files(query).map_err(|r| bad(&r))?),
                    ("https", None) => return Err(bad("https needs ?cacert=FILE")),
                    (_, Some("")) => None,
                    (_, Some(_)) => return Err(bad("only https endpoints take options")),
                    (_, None) => None,
                };
                Ok(Endpoint::Etcd {
                    endpoints,
                    tls,
                    autosync,
                })
            }
            _ => Err(bad(FORMS)),
        }
    }

    /// Opens the store.
    pub async fn open(&self) -> Result<Arc<dyn Store>, OpenError> {
        match self {
            Endpoint::Sqlite(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|source| OpenError::CreateDir {
                        path: dir.to_owned(),
                        source,
                    })?;
                }
                let store = SqliteStore::open(path).map_err(|source| OpenError::Open {
                    endpoint: format!("sqlite://{}", path.display()),
                    source,
                })?;
                Ok(Arc::new(store))
            }
            Endpoint::Etcd {
                endpoints,
                tls,
                autosync,
            } => {
                let store = EtcdStore::connect(endpoints, tls.clone())
                    .await
                    .map_err(|source| OpenError::Open {
                        endpoint: format!("etcd {}", endpoints.join(",")),
                        source,
                    })?;
                if *autosync {
                    store.follow_members(crate::etcd::AUTOSYNC_INTERVAL);
                }
                Ok(Arc::new(store))
            }
        }
    }
}

fn tls_files(query: &str) -> Result<TlsFiles, String> {
    let (mut ca, mut cert, mut key) = (None, None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair
            .split_once('=')
            .ok_or(format!("option {pair:?} has no value"))?;
        let slot = match name {
            "cacert" => &mut ca,
            "cert" => &mut cert,
            "key" => &mut key,
            _ => return Err(format!("unknown option {name:?} (cacert, cert, key)")),
        };
        *slot = Some(PathBuf::from(value));
    }
    if cert.is_some() != key.is_some() {
        return Err("cert and key go together".into());
    }
    Ok(TlsFiles {
        ca: ca.ok_or("https needs cacert=FILE")?,
        cert,
        key,
    })
}

/// Opens the store at `endpoint` (see the module documentation) and starts its periodic
/// compaction ([`DEFAULT_COMPACT_INTERVAL`], keeping at least [`DEFAULT_COMPACT_KEEP`]
/// revisions; see [`spawn_compactor`]). Needs a tokio runtime.
pub async fn open(endpoint: Option<&str>, data_dir: &Path) -> Result<Arc<dyn Store>, OpenError> {
    let store = Endpoint::parse(endpoint, data_dir)?.open().await?;
    spawn_compactor(&store, DEFAULT_COMPACT_INTERVAL, DEFAULT_COMPACT_KEEP);
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Endpoint, OpenError> {
        Endpoint::parse(Some(s), Path::new("/data"))
    }

    #[test]
    fn endpoints() {
        let sqlite = |p: &str| Endpoint::Sqlite(PathBuf::from(p));
        assert_eq!(
            Endpoint::parse(None, Path::new("/data")).unwrap(),
            sqlite("/data/db/state.db")
        );
        assert_eq!(parse("sqlite://").unwrap(), sqlite("/data/db/state.db"));
        assert_eq!(parse("sqlite:///x/y.db").unwrap(), sqlite("/x/y.db"));
        assert_eq!(parse("sqlite://y.db").unwrap(), sqlite("/data/y.db"));
        let etcd = |e: &[&str], tls| Endpoint::Etcd {
            endpoints: e.iter().map(|s| s.to_string()).collect(),
            tls,
            autosync: false,
        };
        assert_eq!(parse("etcd://a:2379").unwrap(), etcd(&["a:2379"], None));
        assert_eq!(
            parse("http://a:1,http://[::1]:2").unwrap(),
            etcd(&["a:1", "[::1]:2"], None)
        );
        let files = TlsFiles {
            ca: "/ca.pem".into(),
            cert: Some("/c.pem".into()),
            key: Some("/k.pem".into()),
        };
        assert_eq!(
            parse("https://a:1,b:2?cacert=/ca.pem&cert=/c.pem&key=/k.pem").unwrap(),
            etcd(&["a:1", "b:2"], Some(files.clone()))
        );
        assert_eq!(
            parse("https://a:1?cacert=/ca.pem&autosync=true&cert=/c.pem&key=/k.pem").unwrap(),
            Endpoint::Etcd {
                endpoints: vec!["a:1".into()],
                tls: Some(files),
                autosync: true,
            }
        );
        assert!(matches!(
            parse("etcd://a:1?autosync=true").unwrap(),
            Endpoint::Etcd {
                autosync: true,
                tls: None,
                ..
            }
        ));
        for bad in [
            "etcd://a",
            "etcd://a:b",
            "etcd://:1",
            "https://a:1",
            "https://a:1?cert=/c",
            "https://a:1?cacert=/ca&key=/k",
            "etcd://a:1?cacert=/ca",
            "mysql://a:1",
            "a:1",
            "sqlite://x?y=z",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.to_string().contains(&format!("{bad:?}")), "{bad}: {e}");
        }
    }
}
