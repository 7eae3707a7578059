//! The etcd backend: the store's operations as etcd v3 requests (as the Kubernetes API
//! server's own etcd3 storage does).
//!
//! - `create` is a transaction: `create_revision(key) == 0` → put, else get.
//! - `update` is a transaction: `mod_revision(key) == expected` → put, else get (the get
//!   gives the conflict's current value).
//! - `delete` is a transaction: `mod_revision(key) == expected` (or `version(key) > 0`
//!   without an expected revision) → delete with the previous value, else get.
//! - `list` is a range `[prefix, prefix_end)` (from just after `start_after` when paging) at
//!   the revision, with the limit; the range's count gives `remaining`.
//! - `watch` asks for `prev_kv` and starts at revision `after` itself (not `after + 1`) so
//!   that etcd refuses exactly when `after` is compacted, as the SQLite backend does; the
//!   event at `after` is dropped.
//! - `compact` is etcd's compaction (logical at once, physical in the background).
//!
//! etcd does not tell its compaction point directly: [`EtcdStore::compacted_revision`]
//! finds the first readable revision by bisection, starting from the last point it found.
//! Keys are used as given, with no prefix of the store's own.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions,
    Identity, TlsOptions, Txn, TxnOp, TxnOpResponse, TxnResponse, WatchOptions,
};
use futures::StreamExt;

use crate::sqlite::prefix_end;
use crate::{Event, KeyValue, ListOptions, ListResult, Result, Store, StoreError, WatchStream};

/// The PEM files of a TLS connection to etcd.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate authority that signed etcd's server certificates.
    pub ca: PathBuf,
    /// The client certificate (etcd's `--client-cert-auth`), with `key`.
    pub cert: Option<PathBuf>,
    /// The client certificate's private key.
    pub key: Option<PathBuf>,
}

/// What the backend's own failures look like (inside [`StoreError::Backend`]).
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("read {}", path.display())]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("a client certificate needs both cert and key")]
    HalfIdentity,
    #[error("connect to etcd at {endpoints}")]
    Connect {
        endpoints: String,
        #[source]
        source: Box<StoreError>,
    },
    #[error("etcd")]
    Client(#[from] etcd_client::Error),
    #[error("key is not utf-8 at revision {0}")]
    KeyNotUtf8(i64),
    #[error("etcd sent a delete event without the deleted value at revision {0}")]
    DeleteWithoutPrev(i64),
    #[error("etcd canceled the watch: {0}")]
    Canceled(String),
    #[error("etcd ended the watch")]
    WatchEnded,
    #[error("etcd answered a response without a header")]
    NoHeader,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

impl From<EtcdError> for StoreError {
    fn from(e: EtcdError) -> Self {
        StoreError::Backend(Box::new(e))
    }
}

/// How long connecting to an endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a store with `autosync` asks etcd for its members and sees which answer.
pub const AUTOSYNC_INTERVAL: Duration = Duration::from_secs(1);

/// How many times a request is sent when the member it went to could not be reached.
const ATTEMPTS: usize = 5;
/// The pause before the second attempt (then twice as long, and so on): long enough for
/// the balance to drop a member whose connection failed.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// The etcd store. Cheap to clone (clones share the connection).
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    /// The client URLs the client balances over.
    urls: Arc<std::sync::Mutex<Vec<String>>>,
    /// How the client connects (for probes of single members).
    options: ConnectOptions,
    /// The last compaction point found (it only moves forward).
    compacted: Arc<AtomicI64>,
}

fn read(path: &PathBuf) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| {
        EtcdError::ReadFile {
            path: path.clone(),
            source,
        }
        .into()
    })
}

/// What an etcd error means for the store, if something more precise than a failure.
enum Known {
    Compacted,
    Future,
    Other(StoreError),
}

fn classify(e: etcd_client::Error) -> Known {
    if let etcd_client::Error::GRpcStatus(status) = &e {
        if status
            .message()
            .contains("required revision has been compacted")
        {
            return Known::Compacted;
        }
        if status
            .message()
            .contains("required revision is a future revision")
        {
            return Known::Future;
        }
    }
    Known::Other(backend(e))
}

/// A failure etcd answered, as the store's error: without a leader (a quorum of members
/// lost) nothing can be served.
fn backend(e: etcd_client::Error) -> StoreError {
    match &e {
        etcd_client::Error::GRpcStatus(s) if s.message().contains("no leader") => {
            StoreError::Unavailable(format!(
                "etcd has lost the quorum of its members ({}); the store answers again when a majority of them is back",
                s.message()
            ))
        }
        _ => EtcdError::Client(e).into(),
    }
}

/// Whether a request failed because the member could not be reached (rather than
/// because etcd refused it).
fn unreachable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        // gRPC's CANCELLED (1), UNKNOWN (2) and UNAVAILABLE (14): the connection went.
        etcd_client::Error::GRpcStatus(s) => {
            matches!(s.code() as i32, 1 | 2 | 14) && !s.message().contains("no leader")
        }
        _ => false,
    }
}

fn convert(kv: &etcd_client::KeyValue) -> Result<KeyValue> {
    Ok(KeyValue {
        key: kv
            .key_str()
            .map_err(|_| EtcdError::KeyNotUtf8(kv.mod_revision()))?
            .to_owned(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
    })
}

fn txn_revision(resp: &TxnResponse) -> Result<i64> {
    Ok(resp.header().ok_or(EtcdError::NoHeader)?.revision())
}

/// The first key-value a failed transaction's `get` found.
fn txn_current(resp: &TxnResponse) -> Result<Option<KeyValue>> {
    for op in resp.op_responses() {
        if let TxnOpResponse::Get(get) = op {
            return get.kvs().first().map(convert).transpose();
        }
    }
    Ok(None)
}

/// The range etcd's requests take for a prefix: `(key, range_end)`.
fn range_of(prefix: &str) -> (Vec<u8>, Vec<u8>) {
    let key = if prefix.is_empty() {
        vec![0]
    } else {
        prefix.as_bytes().to_vec()
    };
    (
        key,
        prefix_end(prefix.as_bytes()).unwrap_or_else(|| vec![0]),
    )
}

impl EtcdStore {
    /// Connects to etcd at `endpoints` (`host:port`, or URLs), over TLS with `tls`, and
    /// checks that it answers.
    pub async fn connect(endpoints: &[String], tls: Option<TlsFiles>) -> Result<EtcdStore> {
        let scheme = if tls.is_some() { "https://" } else { "http://" };
        let urls: Vec<String> = endpoints
            .iter()
            .map(|e| {
                if e.contains("://") {
                    e.clone()
                } else {
                    format!("{scheme}{e}")
                }
            })
            .collect();
        // A member that stops answering (a frozen process, a host gone) is noticed by the
        // HTTP/2 keep-alive within 2 s, and its connection dropped from the balance; a
        // member cut off from the others' quorum answers at once that it has no leader
        // rather than holding requests.
        let mut options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_keep_alive(Duration::from_secs(1), Duration::from_secs(1))
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        if let Some(tls) = tls {
            let mut config =
                TlsOptions::new().ca_certificate(Certificate::from_pem(read(&tls.ca)?));
            match (&tls.cert, &tls.key) {
                (Some(cert), Some(key)) => {
                    config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
                }
                (None, None) => {}
                _ => return Err(EtcdError::HalfIdentity.into()),
            }
            options = options.with_tls(config);
        }
        let connect_err = |source: StoreError| EtcdError::Connect {
            endpoints: urls.join(","),
            source: Box::new(source),
        };
        let client = Client::connect(&urls, Some(options.clone()))
            .await
            .map_err(|e| connect_err(EtcdError::Client(e).into()))?;
        let store = EtcdStore {
            client,
            urls: Arc::new(std::sync::Mutex::new(urls.clone())),
            options,
            compacted: Arc::new(AtomicI64::new(0)),
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, store.current_revision()).await {
            Ok(Ok(_)) => Ok(store),
            Ok(Err(e)) => Err(connect_err(e).into()),
            Err(_) => Err(connect_err(EtcdError::Timeout(CONNECT_TIMEOUT).into()).into()),
        }
    }

    /// The etcd client, for what the trait does not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Keeps the client's endpoints to the client URLs of the members etcd lists that
    /// answer, looking every `every`: a store that knew one member reaches those that
    /// joined since, stops trying removed ones, and sends nothing to a member that is down
    /// or frozen until it answers again (the balance alone would go on picking a member
    /// whose connection fails). Needs a tokio runtime; stops when the store is dropped.
    pub fn follow_members(&self, every: Duration) {
        let client = self.client.clone();
        let options = self.options.clone();
        let urls = Arc::downgrade(&self.urls);
        let mut listed: Vec<String> = self.urls.lock().unwrap().clone();
        // One client per member, for its probe.
        let mut probes: std::collections::HashMap<String, Client> = Default::default();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(urls) = urls.upgrade() else { return };
                if let Ok(Ok(list)) =
                    tokio::time::timeout(every, client.cluster_client().member_list()).await
                {
                    let now: Vec<String> = list
                        .members()
                        .iter()
                        .flat_map(|m| m.client_urls().iter().cloned())
                        .collect();
                    if !now.is_empty() {
                        listed = now;
                    }
                }
                probes.retain(|u, _| listed.contains(u));
                let mut healthy = Vec::new();
                for u in &listed {
                    let probe = async {
                        let c = match probes.get(u) {
                            Some(c) => c.clone(),
                            None => {
                                let c =
                                    Client::connect([u.as_str()], Some(options.clone())).await?;
                                probes.insert(u.clone(), c.clone());
                                c
                            }
                        };
                        c.maintenance_client().status().await
                    };
                    match tokio::time::timeout(every, probe).await {
                        Ok(Ok(_)) => healthy.push(u.clone()),
                        _ => {
                            // A fresh connection next time.
                            probes.remove(u);
                        }
                    }
                }
                // With none answering, keep them all: requests then fail with the reason.
                let wanted = if healthy.is_empty() {
                    listed.clone()
                } else {
                    healthy
                };
                let known = urls.lock().unwrap().clone();
                for u in wanted.iter().filter(|u| !known.contains(u)) {
                    let _ = client.add_endpoint(u).await;
                }
                for u in known.iter().filter(|u| !wanted.contains(u)) {
                    let _ = client.remove_endpoint(u).await;
                }
                *urls.lock().unwrap() = wanted;
            }
        });
    }

    /// A range read, sent again (up to [`ATTEMPTS`]) when it failed because the member
    /// it went to was unreachable: reads have no effect, so another member may answer.
    async fn range(
        &self,
        key: impl Into<Vec<u8>>,
        options: GetOptions,
    ) -> std::result::Result<etcd_client::GetResponse, etcd_client::Error> {
        let key = key.into();
        let mut attempt = 1;
        loop {
            match self
                .client
                .kv_client()
                .get(key.clone(), Some(options.clone()))
                .await
            {
                Err(e) if attempt < ATTEMPTS && unreachable(&e) => {
                    tokio::time::sleep(RETRY_PAUSE * attempt as u32).await;
                    attempt += 1;
                }
                r => return r,
            }
        }
    }

    /// Whether revision `revision` can still be read.
    async fn readable(&self, revision: i64) -> Result<bool> {
        let options = GetOptions::new().with_revision(revision).with_count_only();
        match self.range(vec![0], options).await {
            Ok(_) => Ok(true),
            Err(e) => match classify(e) {
                Known::Compacted => Ok(false),
                Known::Future => Ok(true),
                Known::Other(e) => Err(e),
            },
        }
    }

    async fn compacted_error(&self, requested: i64) -> StoreError {
        let compacted = self.compacted_revision().await.unwrap_or(requested + 1);
        StoreError::Compacted {
            requested,
            compacted,
        }
    }

    async fn future_error(&self, requested: i64) -> StoreError {
        let current = self.current_revision().await.unwrap_or(requested - 1);
        StoreError::FutureRevision { requested, current }
    }

    async fn map_read_err(&self, e: etcd_client::Error, revision: i64) -> StoreError {
        match classify(e) {
            Known::Compacted => self.compacted_error(revision).await,
            Known::Future => self.future_error(revision).await,
            Known::Other(e) => e,
        }
    }

    /// Runs a compare-and-swap transaction whose failure branch gets `key`; says whether
    /// it was sent again.
    ///
    /// A transaction that failed because its member could not be reached (frozen, gone)
    /// is sent again, to another member. That is safe because every write is guarded by
    /// its comparison: if the first attempt did take effect (or a frozen member carries
    /// it out when it wakes), the comparison fails the other one, and the callers
    /// recognise their own write in the value the failed comparison reads.
    async fn cas(&self, key: &str, compare: Compare, op: TxnOp) -> Result<(TxnResponse, bool)> {
        let txn = Txn::new()
            .when([compare])
            .and_then([op])
            .or_else([TxnOp::get(key, None)]);
        let mut attempt = 1;
        loop {
            match self.client.kv_client().txn(txn.clone()).await {
                Err(e) if attempt < ATTEMPTS && unreachable(&e) => {
                    tokio::time::sleep(RETRY_PAUSE * attempt as u32).await;
                    attempt += 1;
                }
                r => return r.map(|r| (r, attempt > 1)).map_err(backend),
            }
        }
    }
}

/// Keys per request when a caller asks for a whole range.
const WHOLE_LIST_PAGE: usize = 1000;

impl EtcdStore {
    /// One range request: at most `opts.limit` keys (all when 0).
    async fn list_page(&self, opts: ListOptions<'_>) -> Result<ListResult> {
        let (prefix_key, end) = range_of(opts.prefix);
        let start = match opts.start_after {
            Some(after) if after.as_bytes() >= prefix_key.as_slice() => {
                let mut key = after.as_bytes().to_vec();
                key.push(0);
                key
            }
            _ => prefix_key,
        };
        let mut options = GetOptions::new()
            .with_range(end)
            .with_revision(opts.revision);
        if opts.limit > 0 {
            options = options.with_limit(opts.limit as i64);
        }
        let resp = match self.range(start, options).await {
            Ok(resp) => resp,
            Err(e) => return Err(self.map_read_err(e, opts.revision).await),
        };
        let kvs = resp.kvs().iter().map(convert).collect::<Result<Vec<_>>>()?;
        let revision = match opts.revision {
            0 => resp.header().ok_or(EtcdError::NoHeader)?.revision(),
            r => r,
        };
        let remaining = (resp.count() - kvs.len() as i64).max(0);
        Ok(ListResult {
            kvs,
            revision,
            more: remaining > 0,
            remaining,
        })
    }
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn current_revision(&self) -> Result<i64> {
        let options = GetOptions::new().with_count_only();
        let resp = self.range(vec![0], options).await.map_err(backend)?;
        Ok(resp.header().ok_or(EtcdError::NoHeader)?.revision())
    }

    async fn compacted_revision(&self) -> Result<i64> {
        let known = self.compacted.load(Ordering::SeqCst);
        let first = known.max(1);
        if self.readable(first).await? {
            return Ok(known);
        }
        // `low` is compacted, `high` (the current revision) never is: bisect.
        let (mut low, mut high) = (first, self.current_revision().await?);
        while high - low > 1 {
            let mid = low + (high - low) / 2;
            if self.readable(mid).await? {
                high = mid;
            } else {
                low = mid;
            }
        }
        self.compacted.fetch_max(high, Ordering::SeqCst);
        Ok(high)
    }

    async fn get(&self, key: &str, revision: i64) -> Result<Option<KeyValue>> {
        let options = GetOptions::new().with_revision(revision);
        match self.range(key, options).await {
            Ok(resp) => resp.kvs().first().map(convert).transpose(),
            Err(e) => Err(self.map_read_err(e, revision).await),
        }
    }

    async fn list(&self, opts: ListOptions<'_>) -> Result<ListResult> {
        if opts.limit > 0 {
            return self.list_page(opts).await;
        }
        // A whole range can exceed a gRPC message (4 MiB): read it in pages at one revision.
        let mut out = self
            .list_page(ListOptions {
                limit: WHOLE_LIST_PAGE,
                ..opts.clone()
            })
            .await?;
        while out.more {
            let last = out.kvs.last().map(|kv| kv.key.clone()).unwrap_or_default();
            let page = self
                .list_page(ListOptions {
                    prefix: opts.prefix,
                    start_after: Some(&last),
                    revision: out.revision,
                    limit: WHOLE_LIST_PAGE,
                })
                .await?;
            out.kvs.extend(page.kvs);
            out.more = page.more;
        }
        out.remaining = 0;
        Ok(out)
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<i64> {
        let compare = Compare::create_revision(key, CompareOp::Equal, 0);
        let (resp, again) = self
            .cas(key, compare, TxnOp::put(key, value.clone(), None))
            .await?;
        if resp.succeeded() {
            return txn_revision(&resp);
        }
        match txn_current(&resp)? {
            // The first attempt's own value: it took effect.
            Some(kv) if again && kv.value == value && kv.create_revision == kv.mod_revision => {
                Ok(kv.mod_revision)
            }
            _ => Err(StoreError::AlreadyExists(key.to_owned())),
        }
    }

    async fn update(&self, key: &str, value: Vec<u8>, expected: i64) -> Result<i64> {
        if expected <= 0 {
            // etcd's mod_revision == 0 would hold for a missing key, and create it.
            let current = self.get(key, 0).await?.map(Box::new);
            return Err(StoreError::Conflict {
                key: key.to_owned(),
                current,
            });
        }
        let compare = Compare::mod_revision(key, CompareOp::Equal, expected);
        let (resp, again) = self
            .cas(key, compare, TxnOp::put(key, value.clone(), None))
            .await?;
        if resp.succeeded() {
            return txn_revision(&resp);
        }
        match txn_current(&resp)? {
            Some(kv) if again && kv.value == value => Ok(kv.mod_revision),
            current => Err(StoreError::Conflict {
                key: key.to_owned(),
                current: current.map(Box::new),
            }),
        }
    }

    async fn delete(&self, key: &str, expected: Option<i64>) -> Result<(i64, KeyValue)> {
        let compare = match expected {
            Some(e) if e <= 0 => {
                let current = self.get(key, 0).await?.map(Box::new);
                return Err(StoreError::Conflict {
                    key: key.to_owned(),
                    current,
                });
            }
            Some(e) => Compare::mod_revision(key, CompareOp::Equal, e),
            None => Compare::version(key, CompareOp::Greater, 0),
        };
        let op = TxnOp::delete(key, Some(DeleteOptions::new().with_prev_key()));
        let (resp, _) = self.cas(key, compare, op).await?;
        if !resp.succeeded() {
            let current = txn_current(&resp)?;
            return Err(match (expected, current) {
                (None, _) => StoreError::NotFound(key.to_owned()),
                (Some(_), current) => StoreError::Conflict {
                    key: key.to_owned(),
                    current: current.map(Box::new),
                },
            });
        }
        let revision = txn_revision(&resp)?;
        for op in resp.op_responses() {
            if let TxnOpResponse::Delete(del) = op {
                if let Some(prev) = del.prev_kvs().first() {
                    return Ok((revision, convert(prev)?));
                }
            }
        }
        Err(EtcdError::DeleteWithoutPrev(revision).into())
    }

    async fn watch(&self, prefix: &str, after: i64) -> Result<WatchStream> {
        // etcd reports a compacted start only later in the stream: check it up front.
        if !self.readable(after.max(1)).await? {
            return Err(self.compacted_error(after).await);
        }
        let (key, end) = range_of(prefix);
        let options = WatchOptions::new()
            .with_range(end)
            .with_start_revision(after.max(1))
            .with_prev_key();
        let stream = self
            .client
            .watch_client()
            .watch(key, Some(options))
            .await
            .map_err(EtcdError::Client)?;
        let state = (stream, after, false);
        Ok(Box::pin(futures::stream::unfold(
            state,
            |(mut stream, mut position, done)| async move {
                if done {
                    return None;
                }
                loop {
                    let resp = match stream.next().await {
                        Some(Ok(resp)) => resp,
                        Some(Err(e)) => return Some((Err(backend(e)), (stream, position, true))),
                        None => {
                            return Some((
                                Err(EtcdError::WatchEnded.into()),
                                (stream, position, true),
                            ))
                        }
                    };
                    if resp.canceled() {
                        let e = if resp.compact_revision() > 0 {
                            StoreError::Compacted {
                                requested: position,
                                compacted: resp.compact_revision(),
                            }
                        } else {
                            EtcdError::Canceled(resp.cancel_reason().to_owned()).into()
                        };
                        return Some((Err(e), (stream, position, true)));
                    }
                    let mut events = Vec::new();
                    for event in resp.events() {
                        match watch_event(event, position) {
                            Ok(Some(event)) => events.push(event),
                            Ok(None) => {}
                            Err(e) => return Some((Err(e), (stream, position, true))),
                        }
                    }
                    if let Some(last) = events.last() {
                        position = last.revision();
                        return Some((Ok(events), (stream, position, false)));
                    }
                }
            },
        )))
    }

    async fn compact(&self, revision: i64) -> Result<()> {
        match self.client.kv_client().compact(revision, None).await {
            Ok(_) => {
                self.compacted.fetch_max(revision, Ordering::SeqCst);
                Ok(())
            }
            Err(e) => match classify(e) {
                // At or below the compaction point already: nothing to do.
                Known::Compacted => Ok(()),
                Known::Future => Err(self.future_error(revision).await),
                Known::Other(e) => Err(e),
            },
        }
    }
}

/// The store's event for an etcd watch event, unless it is at or before `position`.
fn watch_event(event: &etcd_client::Event, position: i64) -> Result<Option<Event>> {
    let Some(kv) = event.kv() else {
        return Ok(None);
    };
    if kv.mod_revision() <= position {
        return Ok(None);
    }
    let prev = event.prev_kv().map(convert).transpose()?;
    Ok(Some(match event.event_type() {
        EventType::Put => {
            let prev = if kv.version() == 1 { None } else { prev };
            Event::Put {
                kv: convert(kv)?,
                prev,
            }
        }
        EventType::Delete => Event::Delete {
            revision: kv.mod_revision(),
            prev: prev.ok_or(EtcdError::DeleteWithoutPrev(kv.mod_revision()))?,
        },
    }))
}
