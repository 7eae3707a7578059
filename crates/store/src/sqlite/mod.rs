//! The embedded backend: SQLite in the shape of k3s's kine, with group commit.
//!
//! # Layout
//!
//! One append-only table, `kine`, whose `INTEGER PRIMARY KEY` is the revision: every write
//! (create, update, delete) appends one row, so the revision of the store is the largest id
//! ever used (kept by `AUTOINCREMENT` in `sqlite_sequence`, so that compaction deleting the
//! last row never gives a revision twice). A row holds the key (`name`, a BLOB so that
//! SQLite compares keys byte by byte), `created` (the write created the key), `deleted` (a
//! tombstone), the key's `create_revision`, `prev_revision` (the id of the key's previous
//! row, 0 for none) and the `value`. `UNIQUE(name, prev_revision)` makes the database itself
//! refuse two successors of one row, whatever a bug in the compare-and-swap might let
//! through. The value of a key at revision R is its row with the largest id ≤ R, unless that
//! row is a tombstone. A `meta` table holds `compact_rev` (reads below it fail) and
//! `compact_progress` (history up to it has been deleted).
//!
//! # Writes: one writer thread, group commit
//!
//! Every write goes to one thread that owns the only write connection (WAL mode,
//! `synchronous=FULL`: a commit is on disk when it is acknowledged). The thread takes the
//! first queued request, then drains every request queued behind it, and applies them all in
//! one `BEGIN IMMEDIATE` transaction: each is checked on its own (a create needs no live
//! key; an update or delete compares the key's `mod_revision`) and a failing one gets its
//! own error without aborting the others. One `COMMIT` (one fsync of the WAL) then covers
//! the whole group; the thread publishes the group's events to the watchers and answers each
//! caller. Under load the queue fills while the previous commit syncs, so the cost of the
//! fsync is shared by every writer waiting, and throughput grows with concurrency. WAL
//! checkpoints (copying the log back into the database) run on a thread of their own, so a
//! commit never waits for one.
//!
//! # Reads
//!
//! Reads run on a small pool of separate connections (WAL lets them read a consistent
//! snapshot while the writer appends) on tokio's blocking threads. Each read is one read
//! transaction: the current revision and the compaction point are read in the same snapshot
//! as the data, so a read at revision R is refused exactly when R is compacted or in the
//! future.
//!
//! # Watches: replay, then live, with no gap and no duplicate
//!
//! A watch subscribes to the writer's broadcast of committed groups *before* it reads any
//! history. It then replays the rows after its start revision from the database, page by
//! page, until a page comes back short: it has caught up with the snapshot's revision S.
//! Every group committed after S is in the broadcast (the watch subscribed before reading S,
//! and the writer publishes after committing), so the watch switches to the broadcast and
//! skips whatever it already delivered (revisions ≤ the last one delivered or replayed). If
//! the watch falls behind the broadcast's buffer it is told it lagged; it then goes back to
//! replaying from the database from its last revision, and nothing is lost. A replay that
//! finds its position compacted away ends the stream with [`StoreError::Compacted`].
//!
//! # Compaction
//!
//! `compact(C)` first records `compact_rev = C` (reads below C fail from then on), then
//! deletes history in steps of [`COMPACT_STEP`] revisions, each a request of its own to the
//! writer so that it never holds the writer for long: for each row in the step, the row it
//! superseded (its `prev_revision`) goes, and so does the row itself if it is a tombstone.
//! The latest row at or before C of every live key stays, as does every row after C. The
//! progress is stored with each step, so an interrupted compaction resumes where it stopped.

mod checkpoint;
mod reader;
mod watch;
mod writer;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::{KeyValue, ListOptions, ListResult, Result, Store, StoreError, WatchStream};
use reader::ReadPool;
use writer::{Batch, Op, Reply, Request, Writer};

/// How many revisions one compaction step covers.
pub const COMPACT_STEP: i64 = 1000;

/// Tuning of a [`SqliteStore`].
#[derive(Clone, Debug)]
pub struct SqliteConfig {
    /// Read connections (reads beyond this many wait for one).
    pub read_connections: usize,
    /// At most this many requests share one transaction.
    pub max_group: usize,
    /// Committed groups buffered for watchers; a watcher further behind reads the database.
    pub watch_buffer: usize,
}

impl Default for SqliteConfig {
    fn default() -> Self {
        SqliteConfig {
            read_connections: 4,
            max_group: 1024,
            watch_buffer: 1024,
        }
    }
}

/// What the backend's own failures look like (inside [`StoreError::Backend`]).
#[derive(Debug, thiserror::Error)]
pub enum SqliteError {
    #[error("open database {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("database {} cannot use WAL (journal mode {mode})", path.display())]
    NotWal { path: PathBuf, mode: String },
    #[error("database {} is in use by another process", path.display())]
    InUse { path: PathBuf },
    #[error("lock file {}", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("start the writer thread")]
    Thread(#[source] std::io::Error),
    #[error("sqlite")]
    Sql(#[from] rusqlite::Error),
    #[error("corrupt row at revision {revision}: {what}")]
    Corrupt { revision: i64, what: &'static str },
    #[error("commit failed: {0}")]
    Commit(String),
    #[error("the store is closed")]
    Closed,
    #[error("read task failed")]
    Join(#[source] tokio::task::JoinError),
}

impl From<SqliteError> for StoreError {
    fn from(e: SqliteError) -> Self {
        StoreError::Backend(Box::new(e))
    }
}

fn db(e: rusqlite::Error) -> StoreError {
    SqliteError::Sql(e).into()
}

/// Counters the writer keeps for cheap reads.
#[derive(Default)]
struct Shared {
    /// The revision of the last committed write.
    current: AtomicI64,
    /// The compaction point last committed.
    compacted: AtomicI64,
}

/// The SQLite store. Cheap to clone (clones share the database, writer and readers).
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    requests: mpsc::Sender<Request>,
    events: broadcast::Sender<Batch>,
    readers: Arc<ReadPool>,
    shared: Arc<Shared>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    _lock: Flock<File>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the request channel ends the writer once it has answered what is queued.
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.requests, closed));
        if let Some(thread) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS kine (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name BLOB NOT NULL,
    created INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    create_revision INTEGER NOT NULL,
    prev_revision INTEGER NOT NULL,
    value BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS kine_name_prev_revision ON kine (name, prev_revision);
CREATE INDEX IF NOT EXISTS kine_name_id ON kine (name, id);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (name, value) VALUES
    ('schema', 1), ('compact_rev', 0), ('compact_progress', 0);
";

/// The revision of the last write: the largest id `AUTOINCREMENT` ever gave.
fn read_current(conn: &Connection) -> rusqlite::Result<i64> {
    Ok(conn
        .prepare_cached("SELECT seq FROM sqlite_sequence WHERE name = 'kine'")?
        .query_row([], |r| r.get::<_, i64>(0))
        .optional()?
        .unwrap_or(0))
}

fn read_meta(conn: &Connection, name: &str) -> rusqlite::Result<i64> {
    conn.prepare_cached("SELECT value FROM meta WHERE name = ?1")?
        .query_row([name], |r| r.get(0))
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` with the default configuration.
    pub fn open(path: &Path) -> Result<SqliteStore> {
        Self::open_with(path, SqliteConfig::default())
    }

    /// Opens (creating if needed) the database at `path`.
    ///
    /// Only one process may have a database open: a lock file `PATH.lock` beside it is held
    /// (flock) for as long as the store lives.
    pub fn open_with(path: &Path, config: SqliteConfig) -> Result<SqliteStore> {
        let lock_path = {
            let mut p = path.as_os_str().to_owned();
            p.push(".lock");
            PathBuf::from(p)
        };
        let lock_err = |source| SqliteError::Lock {
            path: lock_path.clone(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(lock_err)?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
            if errno == nix::errno::Errno::EWOULDBLOCK {
                SqliteError::InUse {
                    path: path.to_owned(),
                }
            } else {
                lock_err(errno.into())
            }
        })?;

        let open_err = |source| SqliteError::Open {
            path: path.to_owned(),
            source,
        };
        let mut conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(30))
            .map_err(open_err)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(SqliteError::NotWal {
                path: path.to_owned(),
                mode,
            }
            .into());
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        // A WAL file left larger than this is truncated when it restarts.
        conn.pragma_update(None, "journal_size_limit", 64 << 20)
            .map_err(open_err)?;
        conn.execute_batch(SCHEMA).map_err(open_err)?;
        conn.set_prepared_statement_cache_capacity(32);
        // Checkpoints run on a thread of their own, not inside the writer's commits.
        let (checkpoints, checkpointer) = checkpoint::spawn(path).map_err(SqliteError::Thread)?;
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(open_err)?;
        conn.wal_hook(Some(
            move |_: &mut rusqlite::hooks::Wal, pages: std::ffi::c_int| {
                if pages >= checkpoint::PAGES {
                    let _ = checkpoints.try_send(());
                }
                Ok(())
            },
        ))
        .map_err(open_err)?;

        let shared = Arc::new(Shared::default());
        shared
            .current
            .store(read_current(&conn).map_err(open_err)?, Ordering::SeqCst);
        shared.compacted.store(
            read_meta(&conn, "compact_rev").map_err(open_err)?,
            Ordering::SeqCst,
        );

        let (requests, queue) = mpsc::channel(config.max_group.max(1) * 4);
        let (events, _) = broadcast::channel(config.watch_buffer.max(1));
        let writer = Writer::new(
            conn,
            shared.clone(),
            events.clone(),
            config.max_group.max(1),
        );
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                writer.run(queue);
                // The write connection (and with it the hook's sender) is closed: the
                // checkpointer ends.
                let _ = checkpointer.join();
            })
            .map_err(SqliteError::Thread)?;

        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                requests,
                events,
                readers: Arc::new(ReadPool::new(
                    path.to_owned(),
                    config.read_connections.max(1),
                )),
                shared,
                writer: Mutex::new(Some(thread)),
                _lock: lock,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Starts periodic compaction of this store: see [`crate::spawn_compactor`] (kine
    /// v0.13 compacts every 5 minutes keeping the last 1000 revisions:
    /// [`crate::DEFAULT_COMPACT_INTERVAL`], [`crate::DEFAULT_COMPACT_KEEP`]).
    pub fn spawn_compactor(
        &self,
        interval: Duration,
        keep_revisions: i64,
    ) -> tokio::task::JoinHandle<()> {
        let store: Arc<dyn Store> = Arc::new(self.clone());
        crate::spawn_compactor(&store, interval, keep_revisions)
    }

    async fn write(&self, op: Op) -> Result<Reply> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .requests
            .send(Request { op, reply })
            .await
            .map_err(|_| SqliteError::Closed)?;
        answer.await.map_err(|_| SqliteError::Closed)?
    }
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn current_revision(&self) -> Result<i64> {
        Ok(self.inner.shared.current.load(Ordering::SeqCst))
    }

    async fn compacted_revision(&self) -> Result<i64> {
        Ok(self.inner.shared.compacted.load(Ordering::SeqCst))
    }

    async fn get(&self, key: &str, revision: i64) -> Result<Option<KeyValue>> {
        let key = key.to_owned();
        self.inner
            .readers
            .read(move |snap| snap.get(&key, revision))
            .await
    }

    async fn list(&self, opts: ListOptions<'_>) -> Result<ListResult> {
        let prefix = opts.prefix.as_bytes().to_vec();
        let start_after = opts.start_after.map(|s| s.as_bytes().to_vec());
        let (revision, limit) = (opts.revision, opts.limit);
        self.inner
            .readers
            .read(move |snap| snap.list(&prefix, start_after.as_deref(), revision, limit))
            .await
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<i64> {
        match self
            .write(Op::Create {
                key: key.to_owned(),
                value,
            })
            .await?
        {
            Reply::Revision(rev) => Ok(rev),
            other => Err(other.unexpected()),
        }
    }

    async fn update(&self, key: &str, value: Vec<u8>, expected: i64) -> Result<i64> {
        match self
            .write(Op::Update {
                key: key.to_owned(),
                value,
                expected,
            })
            .await?
        {
            Reply::Revision(rev) => Ok(rev),
            other => Err(other.unexpected()),
        }
    }

    async fn delete(&self, key: &str, expected: Option<i64>) -> Result<(i64, KeyValue)> {
        match self
            .write(Op::Delete {
                key: key.to_owned(),
                expected,
            })
            .await?
        {
            Reply::Deleted(rev, prev) => Ok((rev, prev)),
            other => Err(other.unexpected()),
        }
    }

    async fn watch(&self, prefix: &str, after: i64) -> Result<WatchStream> {
        // Subscribe first: whatever commits after this is in the broadcast.
        let live = self.inner.events.subscribe();
        let compacted = self.inner.shared.compacted.load(Ordering::SeqCst);
        if after < compacted {
            return Err(StoreError::Compacted {
                requested: after,
                compacted,
            });
        }
        Ok(watch::stream(
            self.inner.readers.clone(),
            live,
            prefix.as_bytes().to_vec(),
            after,
        ))
    }

    async fn compact(&self, revision: i64) -> Result<()> {
        self.write(Op::Compact { revision }).await?;
        loop {
            match self.write(Op::CompactStep { target: revision }).await? {
                Reply::Step { done: true } => return Ok(()),
                Reply::Step { done: false } => tokio::task::yield_now().await,
                other => return Err(other.unexpected()),
            }
        }
    }
}

/// The first key after every key that starts with `prefix` (None: there is none).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}
