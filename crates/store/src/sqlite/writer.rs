//! The writer thread: it owns the one write connection and commits queued requests in
//! groups, one transaction and one fsync per group (see the module above for the design).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::{db, read_meta, Shared, SqliteError, COMPACT_STEP};
use crate::{Event, KeyValue, Result, StoreError};

/// The events of one committed group, in revision order.
pub(super) type Batch = Arc<Vec<Event>>;

/// One write.
pub(super) enum Op {
    Create {
        key: String,
        value: Vec<u8>,
    },
    Update {
        key: String,
        value: Vec<u8>,
        expected: i64,
    },
    Delete {
        key: String,
        expected: Option<i64>,
    },
    /// Moves the compaction point (reads below it fail from the commit on).
    Compact {
        revision: i64,
    },
    /// Deletes the next step of history up to the compaction point.
    CompactStep {
        target: i64,
    },
}

pub(super) enum Reply {
    Revision(i64),
    Deleted(i64, KeyValue),
    Compacted,
    Step { done: bool },
}

impl Reply {
    pub(super) fn unexpected(self) -> StoreError {
        SqliteError::Commit("the writer answered another request".into()).into()
    }
}

pub(super) struct Request {
    pub op: Op,
    pub reply: oneshot::Sender<Result<Reply>>,
}

/// A key's latest row.
struct Latest {
    id: i64,
    deleted: bool,
    create_revision: i64,
    value: Vec<u8>,
}

impl Latest {
    fn live(self) -> Option<Latest> {
        (!self.deleted).then_some(self)
    }
    fn into_kv(self, key: &str) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: self.value,
            create_revision: self.create_revision,
            mod_revision: self.id,
        }
    }
}

pub(super) struct Writer {
    conn: Connection,
    /// The revision the next write gets.
    next: i64,
    shared: Arc<Shared>,
    events: broadcast::Sender<Batch>,
    max_group: usize,
}

impl Writer {
    pub(super) fn new(
        conn: Connection,
        shared: Arc<Shared>,
        events: broadcast::Sender<Batch>,
        max_group: usize,
    ) -> Writer {
        let next = shared.current.load(Ordering::SeqCst) + 1;
        Writer {
            conn,
            next,
            shared,
            events,
            max_group,
        }
    }

    /// Serves requests until every sender is gone.
    pub(super) fn run(mut self, mut queue: mpsc::Receiver<Request>) {
        let mut group = Vec::with_capacity(self.max_group);
        while let Some(first) = queue.blocking_recv() {
            group.push(first);
            while group.len() < self.max_group {
                match queue.try_recv() {
                    Ok(request) => group.push(request),
                    Err(_) => break,
                }
            }
            self.commit_group(&mut group);
        }
    }

    /// Applies every request of `group` in one transaction, commits it, publishes its
    /// events and answers each request.
    fn commit_group(&mut self, group: &mut Vec<Request>) {
        let first = self.next;
        let mut events = Vec::new();
        let mut results = Vec::with_capacity(group.len());
        let mut failed: Option<String> = None;
        let mut compacted = None;

        if let Err(e) = self
            .conn
            .prepare_cached("BEGIN IMMEDIATE")
            .and_then(|mut st| st.execute([]))
        {
            failed = Some(e.to_string());
        }
        for request in group.iter_mut() {
            if failed.is_some() {
                break;
            }
            let result = self.apply(&mut request.op, &mut events, &mut compacted);
            if result.is_err() && self.conn.is_autocommit() {
                // The error rolled the whole transaction back (SQLITE_FULL, I/O errors).
                failed = Some("the transaction was rolled back".into());
            }
            results.push(result);
        }
        if failed.is_none() {
            if let Err(e) = self
                .conn
                .prepare_cached("COMMIT")
                .and_then(|mut st| st.execute([]))
            {
                failed = Some(e.to_string());
            }
        }

        if let Some(message) = failed {
            if !self.conn.is_autocommit() {
                let _ = self.conn.execute_batch("ROLLBACK");
            }
            self.next = first;
            let mut results = results.into_iter();
            for request in group.drain(..) {
                let result = match results.next() {
                    // A request refused on its own merits was refused whatever the commit did.
                    Some(Err(e)) if !matches!(e, StoreError::Backend(_)) => Err(e),
                    _ => Err(SqliteError::Commit(message.clone()).into()),
                };
                let _ = request.reply.send(result);
            }
            return;
        }

        self.shared.current.store(self.next - 1, Ordering::SeqCst);
        if let Some(rev) = compacted {
            self.shared.compacted.store(rev, Ordering::SeqCst);
        }
        // A watcher that subscribed after this check subscribed after the commit, so it
        // reads these events from the database.
        if !events.is_empty() && self.events.receiver_count() > 0 {
            let _ = self.events.send(Arc::new(events));
        }
        for (request, result) in group.drain(..).zip(results) {
            let _ = request.reply.send(result);
        }
    }

    fn apply(
        &mut self,
        op: &mut Op,
        events: &mut Vec<Event>,
        compacted: &mut Option<i64>,
    ) -> Result<Reply> {
        match op {
            Op::Create { key, value } => self.create(key, std::mem::take(value), events),
            Op::Update {
                key,
                value,
                expected,
            } => self.update(key, std::mem::take(value), *expected, events),
            Op::Delete { key, expected } => self.delete(key, *expected, events),
            Op::Compact { revision } => self.set_compact(*revision, compacted),
            Op::CompactStep { target } => self.compact_step(*target),
        }
    }

    fn latest(&self, key: &str) -> Result<Option<Latest>> {
        self.conn
            .prepare_cached(
                "SELECT id, deleted, create_revision, value FROM kine
                 WHERE name = ?1 ORDER BY id DESC LIMIT 1",
            )
            .and_then(|mut st| {
                st.query_row([key.as_bytes()], |r| {
                    Ok(Latest {
                        id: r.get(0)?,
                        deleted: r.get::<_, i64>(1)? != 0,
                        create_revision: r.get(2)?,
                        value: r.get(3)?,
                    })
                })
                .optional()
            })
            .map_err(db)
    }

    /// Appends the row of the next revision and returns that revision.
    #[allow(clippy::too_many_arguments)]
    fn append(
        &mut self,
        key: &str,
        created: bool,
        deleted: bool,
        create_revision: Option<i64>,
        prev_revision: i64,
        value: &[u8],
    ) -> Result<i64> {
        let rev = self.next;
        self.conn
            .prepare_cached(
                "INSERT INTO kine (id, name, created, deleted, create_revision, prev_revision, value)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .and_then(|mut st| {
                st.execute(params![
                    rev,
                    key.as_bytes(),
                    created,
                    deleted,
                    create_revision.unwrap_or(rev),
                    prev_revision,
                    value
                ])
            })
            .map_err(db)?;
        self.next += 1;
        Ok(rev)
    }

    fn create(&mut self, key: &str, value: Vec<u8>, events: &mut Vec<Event>) -> Result<Reply> {
        let latest = self.latest(key)?;
        if latest.as_ref().is_some_and(|l| !l.deleted) {
            return Err(StoreError::AlreadyExists(key.to_owned()));
        }
        let prev_revision = latest.map_or(0, |l| l.id);
        let rev = self.append(key, true, false, None, prev_revision, &value)?;
        let kv = KeyValue {
            key: key.to_owned(),
            value,
            create_revision: rev,
            mod_revision: rev,
        };
        events.push(Event::Put { kv, prev: None });
        Ok(Reply::Revision(rev))
    }

    /// The key's live row if its `mod_revision` is `expected`, else the conflict.
    fn expect(&self, key: &str, expected: Option<i64>) -> Result<Latest> {
        let current = self.latest(key)?.and_then(Latest::live);
        match (current, expected) {
            (None, None) => Err(StoreError::NotFound(key.to_owned())),
            (Some(c), Some(e)) if c.id != e => Err(StoreError::Conflict {
                key: key.to_owned(),
                current: Some(Box::new(c.into_kv(key))),
            }),
            (None, Some(_)) => Err(StoreError::Conflict {
                key: key.to_owned(),
                current: None,
            }),
            (Some(c), _) => Ok(c),
        }
    }

    fn update(
        &mut self,
        key: &str,
        value: Vec<u8>,
        expected: i64,
        events: &mut Vec<Event>,
    ) -> Result<Reply> {
        let prev = self.expect(key, Some(expected))?;
        let rev = self.append(
            key,
            false,
            false,
            Some(prev.create_revision),
            prev.id,
            &value,
        )?;
        let kv = KeyValue {
            key: key.to_owned(),
            value,
            create_revision: prev.create_revision,
            mod_revision: rev,
        };
        events.push(Event::Put {
            kv,
            prev: Some(prev.into_kv(key)),
        });
        Ok(Reply::Revision(rev))
    }

    fn delete(
        &mut self,
        key: &str,
        expected: Option<i64>,
        events: &mut Vec<Event>,
    ) -> Result<Reply> {
        let prev = self.expect(key, expected)?;
        // The tombstone keeps no value: the deleted one is its prev_revision row.
        let rev = self.append(key, false, true, Some(prev.create_revision), prev.id, &[])?;
        let prev = prev.into_kv(key);
        events.push(Event::Delete {
            revision: rev,
            prev: prev.clone(),
        });
        Ok(Reply::Deleted(rev, prev))
    }

    fn set_compact(&mut self, revision: i64, compacted: &mut Option<i64>) -> Result<Reply> {
        let current = self.next - 1;
        if revision > current {
            return Err(StoreError::FutureRevision {
                requested: revision,
                current,
            });
        }
        let point = read_meta(&self.conn, "compact_rev").map_err(db)?;
        if revision > point {
            self.set_meta("compact_rev", revision)?;
            *compacted = Some(revision);
        }
        Ok(Reply::Compacted)
    }

    /// Deletes the history of the next [`COMPACT_STEP`] revisions up to the compaction
    /// point (and `target`): the rows they superseded, and their tombstones.
    fn compact_step(&mut self, target: i64) -> Result<Reply> {
        let progress = read_meta(&self.conn, "compact_progress").map_err(db)?;
        let point = read_meta(&self.conn, "compact_rev").map_err(db)?;
        let end = target.min(point).min(progress.saturating_add(COMPACT_STEP));
        if end <= progress {
            return Ok(Reply::Step { done: true });
        }
        self.conn
            .prepare_cached(
                "DELETE FROM kine WHERE id IN
                   (SELECT prev_revision FROM kine
                    WHERE id > ?1 AND id <= ?2 AND prev_revision != 0)",
            )
            .and_then(|mut st| st.execute([progress, end]))
            .map_err(db)?;
        self.conn
            .prepare_cached("DELETE FROM kine WHERE id > ?1 AND id <= ?2 AND deleted != 0")
            .and_then(|mut st| st.execute([progress, end]))
            .map_err(db)?;
        self.set_meta("compact_progress", end)?;
        Ok(Reply::Step {
            done: end >= target.min(point),
        })
    }

    fn set_meta(&self, name: &str, value: i64) -> Result<()> {
        self.conn
            .prepare_cached("UPDATE meta SET value = ?2 WHERE name = ?1")
            .and_then(|mut st| st.execute(params![name, value]))
            .map_err(db)?;
        Ok(())
    }
}
