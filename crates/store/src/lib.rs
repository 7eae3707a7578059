//! The cluster's state: an etcd-shaped key-value store with revisions, compare-and-swap
//! updates and ordered watches, behind one trait with two backends (embedded SQLite in the
//! shape of kine, and etcd).
//!
//! Invariants every backend keeps (and `conformance` tests):
//! - revisions only increase; every write (create, update, delete) gets a new one, and the
//!   revision of the store is the revision of its last write;
//! - `update` and `delete` with an expected revision are compare-and-swap on the key's
//!   `mod_revision`: they fail with [`StoreError::Conflict`] if the key changed since;
//! - a watch from revision R delivers every event with revision > R, in order, exactly once,
//!   or fails with [`StoreError::Compacted`] if R is below the compaction point;
//! - a list at revision R plus a watch from R rebuilds the state exactly.
//!
//! Semantics both backends share (pinned down by [`conformance`]):
//! - `update` or `delete` with an expected revision of a key that does not exist fails with
//!   [`StoreError::Conflict`] whose `current` is `None`; `delete` without one fails with
//!   [`StoreError::NotFound`];
//! - after `compact(C)`, reads at a revision below `C` and watches from a revision below `C`
//!   fail with [`StoreError::Compacted`]; the state at `C` and every event after it stay;
//!   `compact` to a revision at or below the compaction point is a no-op, and to a revision
//!   past the current one fails with [`StoreError::FutureRevision`];
//! - a watch may start from a revision past the current one: it waits for it.
//!
//! [`open`] picks the backend from an endpoint string; [`sqlite::SqliteStore`] and
//! [`etcd::EtcdStore`] can also be opened directly.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;

pub mod conformance;
mod endpoint;
pub mod etcd;
pub mod sqlite;

pub use endpoint::{open, Endpoint, OpenError};
pub use etcd::{EtcdStore, TlsFiles};
pub use sqlite::{SqliteConfig, SqliteStore};

/// One key's value at one revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// The revision of the write that created the key (as etcd's `create_revision`).
    pub create_revision: i64,
    /// The revision of the write that last changed the key (as etcd's `mod_revision`).
    pub mod_revision: i64,
}

/// A change seen by a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A create or update: `kv` is the new value (`kv.create_revision == kv.mod_revision`
    /// for a create); `prev` is the value before, if the key existed.
    Put {
        kv: KeyValue,
        prev: Option<KeyValue>,
    },
    /// A delete at `revision`; `prev` is the value that was deleted.
    Delete { revision: i64, prev: KeyValue },
}

impl Event {
    /// The revision of the write that made this event.
    pub fn revision(&self) -> i64 {
        match self {
            Event::Put { kv, .. } => kv.mod_revision,
            Event::Delete { revision, .. } => *revision,
        }
    }
    /// The key the event is about.
    pub fn key(&self) -> &str {
        match self {
            Event::Put { kv, .. } => &kv.key,
            Event::Delete { prev, .. } => &prev.key,
        }
    }
}

/// A page of a list.
#[derive(Clone, Debug, Default)]
pub struct ListResult {
    /// Keys in ascending byte order, at most `limit` of them.
    pub kvs: Vec<KeyValue>,
    /// The revision the list was read at.
    pub revision: i64,
    /// Whether keys after the last returned one exist under the prefix.
    pub more: bool,
    /// How many keys after this page remain (0 when `more` is false).
    pub remaining: i64,
}

/// What a list reads.
#[derive(Clone, Debug, Default)]
pub struct ListOptions<'a> {
    /// Every key that starts with this.
    pub prefix: &'a str,
    /// Only keys strictly after this one (for paging); must start with `prefix`.
    pub start_after: Option<&'a str>,
    /// Read at this revision; 0 means the current one.
    pub revision: i64,
    /// At most this many keys; 0 means all.
    pub limit: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key {0} already exists")]
    AlreadyExists(String),
    #[error("key {0} not found")]
    NotFound(String),
    /// The compare-and-swap failed: the key's current value (None if it is gone).
    #[error("key {key} was modified (now at revision {})", current.as_ref().map_or(0, |c| c.mod_revision))]
    Conflict {
        key: String,
        current: Option<Box<KeyValue>>,
    },
    /// The revision asked for has been compacted away.
    #[error("revision {requested} has been compacted (compacted up to {compacted})")]
    Compacted { requested: i64, compacted: i64 },
    /// The revision asked for is newer than the store's.
    #[error("revision {requested} is in the future (current {current})")]
    FutureRevision { requested: i64, current: i64 },
    /// The store cannot serve anything now, reads included (an etcd cluster without a
    /// quorum of its members): it answers nothing rather than something stale.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    #[error("store backend")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A stream of watch events in revision order; a batch holds the events of consecutive
/// revisions. The stream ends (with an error item) if the watch cannot go on.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<Vec<Event>>> + Send>>;

/// The store the API server keeps every object in. Keys are `/registry/...` paths; values
/// are opaque bytes.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// The revision of the last write.
    async fn current_revision(&self) -> Result<i64>;
    /// The revision below which history is gone.
    async fn compacted_revision(&self) -> Result<i64>;
    /// One key at `revision` (0: now).
    async fn get(&self, key: &str, revision: i64) -> Result<Option<KeyValue>>;
    /// Keys under a prefix, paged.
    async fn list(&self, opts: ListOptions<'_>) -> Result<ListResult>;
    /// Creates a key that must not exist; returns the new revision.
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<i64>;
    /// Replaces a key whose `mod_revision` must be `expected`; returns the new revision.
    async fn update(&self, key: &str, value: Vec<u8>, expected: i64) -> Result<i64>;
    /// Deletes a key (whose `mod_revision` must be `expected` when given); returns the
    /// revision of the delete and the value deleted.
    async fn delete(&self, key: &str, expected: Option<i64>) -> Result<(i64, KeyValue)>;
    /// Every event under `prefix` with a revision > `after`, in order, then live.
    async fn watch(&self, prefix: &str, after: i64) -> Result<WatchStream>;
    /// Drops history below `revision` (the latest value of every live key stays).
    async fn compact(&self, revision: i64) -> Result<()>;
}

/// How often the default compactor runs (kine v0.13's interval).
pub const DEFAULT_COMPACT_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// How many recent revisions the default compactor keeps (kine v0.13's window).
pub const DEFAULT_COMPACT_KEEP: i64 = 1000;

/// Starts a task that compacts `store` every `interval`.
///
/// Each round compacts to the revision the previous round saw as current, but never past
/// `current - keep_revisions`: history always covers at least one interval (as the
/// Kubernetes API server's compactor does) and at least `keep_revisions` revisions (as
/// kine's does). The task holds the store weakly and ends once the store is dropped; errors
/// are retried at the next round. Needs a tokio runtime.
pub fn spawn_compactor(
    store: &Arc<dyn Store>,
    interval: Duration,
    keep_revisions: i64,
) -> tokio::task::JoinHandle<()> {
    let weak = Arc::downgrade(store);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await; // the first tick is immediate
        let mut seen = 0;
        loop {
            ticker.tick().await;
            let Some(store) = weak.upgrade() else { return };
            let Ok(current) = store.current_revision().await else {
                continue;
            };
            let target = seen.min(current - keep_revisions);
            seen = current;
            if target <= 0 {
                continue;
            }
            match store.compacted_revision().await {
                Ok(compacted) if compacted >= target => {}
                _ => {
                    let _ = store.compact(target).await;
                }
            }
        }
    })
}
