//! The watch cache: one store watch over everything feeds an in-memory copy of the current
//! objects and a window of recent events, so N API watchers cost one store watch and lists
//! of the current state are served from memory.
//!
//! Invariant: `objects` is exactly the store's state at `revision`, and `history` holds
//! every event after `history_start` (the revision just before its first event) in order.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use serde_json::Value;
use tokio::sync::{broadcast, watch};

use store::{Event, Store};

/// An event as watchers see it: the object parsed once for all of them.
#[derive(Debug)]
pub struct CacheEvent {
    pub revision: i64,
    pub key: String,
    /// "ADDED", "MODIFIED" or "DELETED".
    pub kind: &'static str,
    /// The object (for DELETED, the last state), without its resourceVersion set.
    pub object: Arc<Value>,
    /// The object before (MODIFIED/DELETED), for selectors that stop matching.
    pub prev: Option<Arc<Value>>,
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
    tx: broadcast::Sender<Arc<CacheEvent>>,
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
            tx,
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
        self.rev_tx.send_replace(list.revision);
    }

    fn apply(&self, e: Event) {
        let parse = |b: &[u8]| Arc::new(serde_json::from_slice::<Value>(b).unwrap_or(Value::Null));
        let mut inner = self.inner.lock().unwrap();
        let ev = match e {
            Event::Put { kv, prev } => {
                let object = parse(&kv.value);
                let existed = inner
                    .objects
                    .insert(kv.key.clone(), (kv.mod_revision, Arc::from(kv.value)))
                    .is_some();
                CacheEvent {
                    revision: kv.mod_revision,
                    key: kv.key,
                    kind: if existed || prev.is_some() {
                        "MODIFIED"
                    } else {
                        "ADDED"
                    },
                    object,
                    prev: prev.map(|p| parse(&p.value)),
                }
            }
            Event::Delete { revision, prev } => {
                inner.objects.remove(&prev.key);
                let object = parse(&prev.value);
                CacheEvent {
                    revision,
                    key: prev.key,
                    kind: "DELETED",
                    object: object.clone(),
                    prev: Some(object),
                }
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
        let _ = self.tx.send(ev);
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
        let rx = self.tx.subscribe();
        let initial = match from {
            None => inner
                .objects
                .range(prefix.to_string()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, (r, v))| {
                    Arc::new(CacheEvent {
                        revision: *r,
                        key: k.clone(),
                        kind: "ADDED",
                        object: Arc::new(serde_json::from_slice(v).unwrap_or(Value::Null)),
                        prev: None,
                    })
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
