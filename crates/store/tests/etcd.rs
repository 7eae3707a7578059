//! The etcd backend against a real etcd: Debian's `/usr/bin/etcd` (package `etcd-server`),
//! one server per test on free loopback ports with a data directory of its own, killed when
//! the test ends. Without the binary the tests fail: they never skip.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use store::conformance;
use store::{EtcdStore, Store, StoreError, TlsFiles};
use tempfile::TempDir;

const ETCD: &str = "/usr/bin/etcd";

/// A running etcd, killed on drop.
struct Etcd {
    child: Child,
    dir: TempDir,
    /// `HOST:PORT` of its client URL.
    endpoint: String,
    peer_port: u16,
}

/// `N` distinct loopback ports free a moment ago (the listeners are held until all are
/// picked, so the kernel cannot give one twice).
fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().unwrap().port())
}

/// The client and peer TLS flags of a server using `tls`'s files.
struct ServerTls {
    files: TlsFiles,
    server_cert: PathBuf,
    server_key: PathBuf,
}

impl Etcd {
    fn start(tls: Option<&ServerTls>) -> Etcd {
        let dir = tempfile::tempdir().unwrap();
        let [client_port, peer_port] = free_ports();
        Etcd::launch(dir, client_port, peer_port, tls)
    }

    /// Kills etcd with SIGKILL and starts it again on the same data dir and ports.
    fn kill_and_restart(mut self) -> Etcd {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let client_port: u16 = self.endpoint.rsplit(':').next().unwrap().parse().unwrap();
        let peer_port = self.peer_port;
        let dir = tempfile::TempDir::new().unwrap();
        let old = std::mem::replace(&mut self.dir, dir);
        // The old Etcd (now with an empty directory) is dropped; its child is reaped already.
        drop(self);
        Etcd::launch(old, client_port, peer_port, None)
    }

    fn launch(dir: TempDir, client_port: u16, peer_port: u16, tls: Option<&ServerTls>) -> Etcd {
        assert!(
            Path::new(ETCD).exists(),
            "{ETCD} is missing: install Debian's etcd-server package (apt-get install etcd-server)"
        );
        let scheme = if tls.is_some() { "https" } else { "http" };
        let client_url = format!("{scheme}://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("etcd.log"))
            .unwrap();
        let mut command = Command::new(ETCD);
        command
            .arg("--name=test")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=test={peer_url}"))
            .arg("--logger=zap")
            .arg("--log-outputs=stderr");
        if let Some(tls) = tls {
            command
                .arg(format!("--cert-file={}", tls.server_cert.display()))
                .arg(format!("--key-file={}", tls.server_key.display()))
                .arg(format!("--trusted-ca-file={}", tls.files.ca.display()))
                .arg("--client-cert-auth");
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {ETCD}: {e}"));
        Etcd {
            child,
            dir,
            endpoint: format!("127.0.0.1:{client_port}"),
            peer_port,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// Connects once etcd answers (polling, bounded; fails if etcd exits).
    async fn connect(&mut self, tls: Option<TlsFiles>) -> Arc<dyn Store> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match EtcdStore::connect(std::slice::from_ref(&self.endpoint), tls.clone()).await {
                Ok(store) => return Arc::new(store),
                Err(e) => {
                    if let Some(status) = self.child.try_wait().unwrap() {
                        panic!("etcd exited ({status}):\n{}", self.log());
                    }
                    assert!(
                        Instant::now() < deadline,
                        "etcd never answered: {e:?}\n{}",
                        self.log()
                    );
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            }
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh etcd and a store on it.
async fn fresh() -> (Etcd, Arc<dyn Store>) {
    let mut etcd = Etcd::start(None);
    let store = etcd.connect(None).await;
    (etcd, store)
}

macro_rules! conformance_tests {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let (_etcd, store) = fresh().await;
            conformance::$name(store, concat!("/registry/", stringify!($name), "/")).await;
        }
    )*};
}

conformance_tests!(
    crud,
    compare_and_swap,
    paging,
    prefix_isolation,
    watch_from_every_revision,
    watch_during_writes,
    list_and_watch_rebuild,
    compaction,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_watcher() {
    let (_etcd, store) = fresh().await;
    conformance::slow_watcher(store, "/registry/slow/", 300).await;
}

/// The suite's checks in sequence on one server, under prefixes of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_on_one_server() {
    let (_etcd, store) = fresh().await;
    conformance::all(store, "/registry/all/").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_by_endpoint() {
    let mut etcd = Etcd::start(None);
    etcd.connect(None).await;
    let dir = tempfile::tempdir().unwrap();
    let store = store::open(Some(&format!("etcd://{}", etcd.endpoint)), dir.path())
        .await
        .unwrap();
    let rev = store.create("/open", b"1".to_vec()).await.unwrap();
    assert_eq!(
        store.get("/open", 0).await.unwrap().unwrap().mod_revision,
        rev
    );
    assert!(!dir.path().join("db").exists(), "etcd made a SQLite file");

    // Nothing listens on a port just freed: a clear error, not a hang.
    let [port] = free_ports();
    let nowhere = format!("etcd://127.0.0.1:{port}");
    let e = store::open(Some(&nowhere), dir.path()).await.err().unwrap();
    assert!(e.to_string().contains("127.0.0.1"), "{e}");
}

/// Over TLS with client certificates (etcd's `--client-cert-auth`), via an `https://`
/// endpoint carrying the files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates() {
    let certs = tempfile::tempdir().unwrap();
    let tls = make_certs(certs.path());
    let mut etcd = Etcd::start(Some(&tls));
    etcd.connect(Some(tls.files.clone())).await;

    let endpoint = format!(
        "https://{}?cacert={}&cert={}&key={}",
        etcd.endpoint,
        tls.files.ca.display(),
        tls.files.cert.as_ref().unwrap().display(),
        tls.files.key.as_ref().unwrap().display()
    );
    let store = store::open(Some(&endpoint), certs.path()).await.unwrap();
    conformance::crud(store.clone(), "/registry/tls/").await;

    // Without a client certificate etcd refuses the connection.
    let anonymous = TlsFiles {
        ca: tls.files.ca.clone(),
        cert: None,
        key: None,
    };
    match EtcdStore::connect(std::slice::from_ref(&etcd.endpoint), Some(anonymous)).await {
        Err(StoreError::Backend(_)) => {}
        Err(e) => panic!("connect without a client certificate: {e:?}"),
        Ok(_) => panic!("etcd took a client without a certificate"),
    }
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files.
fn make_certs(dir: &Path) -> ServerTls {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let client = CertificateParams::new(vec!["client".to_owned()])
        .unwrap()
        .signed_by(&client_key, &issuer)
        .unwrap();
    ServerTls {
        files: TlsFiles {
            ca: write("ca.pem", ca_cert.pem()),
            cert: Some(write("client.pem", client.pem())),
            key: Some(write("client-key.pem", client_key.serialize_pem())),
        },
        server_cert: write("server.pem", server.pem()),
        server_key: write("server-key.pem", server_key.serialize_pem()),
    }
}

/// etcd killed with SIGKILL during a stream of writes restarts with every acknowledged
/// write, in revision order, and takes new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_safety() {
    let (etcd, store) = fresh().await;
    let acked = Arc::new(std::sync::Mutex::new(Vec::<(String, i64, Vec<u8>)>::new()));
    // The store sends a request again when etcd could not be reached, so writers may go on
    // through the restart: they stop when told.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..8 {
        let (store, acked, stop) = (store.clone(), acked.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let key = format!("/crash/w{w}");
            let mut rev = 0;
            for i in 0u64.. {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                let value = format!("{w}:{i}:{}", "x".repeat((i % 64) as usize)).into_bytes();
                let r = if rev == 0 {
                    store.create(&key, value.clone()).await
                } else {
                    store.update(&key, value.clone(), rev).await
                };
                match r {
                    Ok(r) => {
                        rev = r;
                        acked.lock().unwrap().push((key.clone(), r, value));
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    while acked.lock().unwrap().len() < 1500 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut etcd = etcd.kill_and_restart();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for w in writers {
        let _ = tokio::time::timeout(Duration::from_secs(60), w).await;
    }
    drop(store);
    let store = etcd.connect(None).await;
    let acked = acked.lock().unwrap().clone();
    // The last acknowledged write of each key is there, at its revision or later.
    let mut last: BTreeMap<String, (i64, Vec<u8>)> = BTreeMap::new();
    for (k, r, v) in &acked {
        let e = last.entry(k.clone()).or_insert((0, Vec::new()));
        if *r > e.0 {
            *e = (*r, v.clone());
        }
    }
    for (k, (r, v)) in &last {
        let kv = store
            .get(k, 0)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{k} lost"));
        assert!(
            kv.mod_revision >= *r,
            "{k}: revision {} older than the acknowledged {r}",
            kv.mod_revision
        );
        if kv.mod_revision == *r {
            assert_eq!(&kv.value, v, "{k} torn");
        }
    }
    // Every acknowledged revision reads back with its value.
    for (k, r, v) in acked.iter().rev().take(200) {
        let kv = store.get(k, *r).await.unwrap().unwrap();
        assert_eq!((&kv.value, kv.mod_revision), (v, *r));
    }
    let current = store.current_revision().await.unwrap();
    let rev = store.create("/crash/after", b"ok".to_vec()).await.unwrap();
    assert!(rev > current);
}
