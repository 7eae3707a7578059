//! The watch cache: one store watch over everything feeds an in-memory copy of the current
//! objects and a window of recent events, so N API watchers cost one store watch and lists
//! of the current state are served from memory.
//!
//! Invariant: `objects` is exactly the store's state at `revision`, and `history` holds
//! every event after `history_start` (the revision just before its first event) in order.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

use futures::StreamExt;
use serde_json::Value;
use tokio::sync::{broadcast, watch};

use store::{Event, Store};

/// An event as watchers see it. The object stays in its stored bytes; it is parsed once,
/// by the first watcher that needs to look inside it, and the plain JSON watch line is
/// made once for every watcher that takes it as it is.
#[derive(Debug)]
pub struct CacheEvent {
    pub revision: i64,
    pub key: String,
    /// "ADDED", "MODIFIED" or "DELETED".
    pub kind: &'static str,
    /// The object (for DELETED, the last state), without its resourceVersion set.
    pub raw: Arc<[u8]>,
    /// The object before (MODIFIED/DELETED), for selectors that stop matching.
    pub prev_raw: Option<Arc<[u8]>>,
    parsed: OnceLock<Arc<Value>>,
    prev_parsed: OnceLock<Option<Arc<Value>>>,
    /// The watch line `{"type":…,"object":…}` of the stored version.
    pub line: OnceLock<bytes::Bytes>,
}

impl CacheEvent {
    fn new(
        revision: i64,
        key: String,
        kind: &'static str,
        raw: Arc<[u8]>,
        prev_raw: Option<Arc<[u8]>>,
    ) -> CacheEvent {
        CacheEvent {
            revision,
            key,
            kind,
            raw,
            prev_raw,
            parsed: OnceLock::new(),
            prev_parsed: OnceLock::new(),
            line: OnceLock::new(),
        }
    }
    /// The object, parsed.
    pub fn object(&self) -> &Arc<Value> {
        self.parsed
            .get_or_init(|| Arc::new(serde_json::from_slice(&self.raw).unwrap_or(Value::Null)))
    }
    /// The object before the change, parsed.
    pub fn prev(&self) -> Option<&Arc<Value>> {
        self.prev_parsed
            .get_or_init(|| {
                self.prev_raw
                    .as_ref()
                    .map(|p| Arc::new(serde_json::from_slice(p).unwrap_or(Value::Null)))
            })
            .as_ref()
    }
}

struct Inner {
    revision: i64,
    objects: BTreeMap<String, (i64, Arc<[u8]>)>,
    history: VecDeque<Arc<CacheEvent>>,
    history_start: i64,
}

/// A cached object: its key, revision and stored bytes.
pub type Entry = (String, i64, Arc<[u8]>);

pub struct Cache {
    inner: Mutex<Inner>,
    /// Replaced when the cache relists, which ends every open watch (clients then resume,
    /// get 410 for the lost window, and relist).
    tx: Mutex<broadcast::Sender<Arc<CacheEvent>>>,
    rev_tx: watch::Sender<i64>,
    capacity: usize,
}

/// A watcher's start: the events or objects to send first, then the live receiver.
pub struct Subscription {
    pub initial: Vec<Arc<CacheEvent>>,
    pub revision: i64,
    pub rx: broadcast::Receiver<Arc<CacheEvent>>,
}

impl Cache {
    /// Lists everything in the store, then follows it.
    pub async fn start(
        store: Arc<dyn Store>,
        capacity: usize,
    ) -> Result<Arc<Cache>, store::StoreError> {
        let list = store
            .list(store::ListOptions {
                prefix: "/registry/",
                ..Default::default()
            })
            .await?;
        let objects = list
            .kvs
            .into_iter()
            .map(|kv| (kv.key, (kv.mod_revision, Arc::from(kv.value))))
            .collect();
        let (tx, _) = broadcast::channel(capacity.max(16));
        let (rev_tx, _) = watch::channel(list.revision);
        let cache = Arc::new(Cache {
            inner: Mutex::new(Inner {
                revision: list.revision,
                objects,
                history: VecDeque::new(),
                history_start: list.revision,
            }),
            tx: Mutex::new(tx),
            rev_tx,
            capacity,
        });
        let c = cache.clone();
        let mut from = list.revision;
        tokio::spawn(async move {
            loop {
                match store.watch("/registry/", from).await {
                    Ok(mut stream) => {
                        while let Some(batch) = stream.next().await {
                            match batch {
                                Ok(events) => {
                                    for e in events {
                                        from = e.revision();
                                        c.apply(e);
                                    }
                                }
                                Err(_) => break,
                            }
                        }
                    }
                    Err(store::StoreError::Compacted { .. }) => {
                        // Fell too far behind: relist and start over from the new state.
                        if let Ok(l) = store
                            .list(store::ListOptions {
                                prefix: "/registry/",
                                ..Default::default()
                            })
                            .await
                        {
                            c.reset(l);
                            from = c.revision();
                        }
                    }
                    Err(_) => {}
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        });
        Ok(cache)
    }

    fn reset(&self, list: store::ListResult) {
        let mut inner = self.inner.lock().unwrap();
        inner.objects = list
            .kvs
            .into_iter()
            .map(|kv| (kv.key, (kv.mod_revision, Arc::from(kv.value))))
            .collect();
        inner.revision = list.revision;
        inner.history.clear();
        inner.history_start = list.revision;
        *self.tx.lock().unwrap() = broadcast::channel(self.capacity.max(16)).0;
        self.rev_tx.send_replace(list.revision);
    }

    fn apply(&self, e: Event) {
        let mut inner = self.inner.lock().unwrap();
        let ev = match e {
            Event::Put { kv, prev } => {
                let raw: Arc<[u8]> = Arc::from(kv.value);
                // The cache's own previous copy serves when the store gives none.
                let before = inner
                    .objects
                    .insert(kv.key.clone(), (kv.mod_revision, raw.clone()))
                    .map(|(_, b)| b);
                let prev_raw = prev.map(|p| Arc::from(p.value)).or(before);
                let kind = if prev_raw.is_some() {
                    "MODIFIED"
                } else {
                    "ADDED"
                };
                CacheEvent::new(kv.mod_revision, kv.key, kind, raw, prev_raw)
            }
            Event::Delete { revision, prev } => {
                inner.objects.remove(&prev.key);
                let raw: Arc<[u8]> = Arc::from(prev.value);
                CacheEvent::new(revision, prev.key, "DELETED", raw.clone(), Some(raw))
            }
        };
        let ev = Arc::new(ev);
        inner.revision = ev.revision;
        inner.history.push_back(ev.clone());
        while inner.history.len() > self.capacity {
            if let Some(old) = inner.history.pop_front() {
                inner.history_start = old.revision;
            }
        }
        let _ = self.tx.lock().unwrap().send(ev);
        drop(inner);
        self.rev_tx.send_replace(self.revision());
    }

    pub fn revision(&self) -> i64 {
        self.inner.lock().unwrap().revision
    }

    /// Waits until the cache has seen revision `rev` (a write acknowledged by the store).
    pub async fn wait_for(&self, rev: i64) {
        let mut rx = self.rev_tx.subscribe();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(3),
            rx.wait_for(|r| *r >= rev),
        )
        .await;
    }

    /// The objects under `prefix` now, with their revisions, and the cache revision.
    /// One object's stored bytes, if the cache holds it.
    pub fn get(&self, key: &str) -> Option<Arc<[u8]>> {
        self.inner
            .lock()
            .unwrap()
            .objects
            .get(key)
            .map(|(_, v)| v.clone())
    }

    pub fn list(&self, prefix: &str) -> (i64, Vec<Entry>) {
        let inner = self.inner.lock().unwrap();
        let items = inner
            .objects
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, (r, v))| (k.clone(), *r, v.clone()))
            .collect();
        (inner.revision, items)
    }

    /// Starts a watch under `prefix`: from revision `from` (events after it), or with
    /// `from == None` from the current state as synthetic ADDED events. `Err` with the
    /// oldest revision still available when `from` is too old.
    pub fn subscribe(&self, prefix: &str, from: Option<i64>) -> Result<Subscription, i64> {
        let inner = self.inner.lock().unwrap();
        let rx = self.tx.lock().unwrap().subscribe();
        let initial = match from {
            None => inner
                .objects
                .range(prefix.to_string()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, (r, v))| {
                    Arc::new(CacheEvent::new(*r, k.clone(), "ADDED", v.clone(), None))
                })
                .collect(),
            Some(r) => {
                if r < inner.history_start {
                    return Err(inner.history_start);
                }
                inner
                    .history
                    .iter()
                    .filter(|e| e.revision > r && e.key.starts_with(prefix))
                    .cloned()
                    .collect()
            }
        };
        Ok(Subscription {
            initial,
            revision: inner.revision,
            rx,
        })
    }

    /// Events after `after` under `prefix` from the window (a lagging watcher refills here).
    pub fn since(&self, prefix: &str, after: i64) -> Option<Vec<Arc<CacheEvent>>> {
        let inner = self.inner.lock().unwrap();
        if after < inner.history_start {
            return None;
        }
        Some(
            inner
                .history
                .iter()
                .filter(|e| e.revision > after && e.key.starts_with(prefix))
                .cloned()
                .collect(),
        )
    }
}
