//! Reads: a pool of read connections, each read one snapshot (a read transaction) run on
//! tokio's blocking threads.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::types::Value;
use rusqlite::{params_from_iter, Connection, OpenFlags, OptionalExtension, Row};
use tokio::sync::Semaphore;

use super::{db, prefix_end, read_current, read_meta, SqliteError};
use crate::{Event, KeyValue, ListResult, Result, StoreError};

pub(super) struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

impl ReadPool {
    pub(super) fn new(path: PathBuf, size: usize) -> ReadPool {
        ReadPool {
            path,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(size)),
        }
    }

    fn connect(&self) -> Result<Connection> {
        let open = || -> rusqlite::Result<Connection> {
            let conn = Connection::open_with_flags(
                &self.path,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            conn.busy_timeout(Duration::from_secs(30))?;
            conn.pragma_update(None, "query_only", true)?;
            conn.set_prepared_statement_cache_capacity(32);
            Ok(conn)
        };
        open().map_err(|source| {
            SqliteError::Open {
                path: self.path.clone(),
                source,
            }
            .into()
        })
    }

    /// Runs `f` on one snapshot of the database.
    pub(super) async fn read<T, F>(self: &Arc<Self>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Snapshot<'_>) -> Result<T> + Send + 'static,
    {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| SqliteError::Closed)?;
        let pool = self.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let conn = match pool.idle.lock().unwrap_or_else(|e| e.into_inner()).pop() {
                Some(conn) => conn,
                None => pool.connect()?,
            };
            let result = Snapshot::run(&conn, f);
            pool.idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(conn);
            result
        })
        .await
        .map_err(SqliteError::Join)?
    }
}

/// One read transaction, with the revision and compaction point it sees.
pub(super) struct Snapshot<'c> {
    conn: &'c Connection,
    /// The revision of the last write in this snapshot.
    pub current: i64,
    /// The compaction point in this snapshot.
    pub compacted: i64,
}

/// A key range: keys > or >= `lower`, and < `upper` when there is one.
struct Range {
    lower: Vec<u8>,
    inclusive: bool,
    upper: Option<Vec<u8>>,
}

impl Range {
    fn new(prefix: &[u8], start_after: Option<&[u8]>) -> Range {
        let (lower, inclusive) = match start_after {
            Some(after) if after >= prefix => (after.to_vec(), false),
            _ => (prefix.to_vec(), true),
        };
        Range {
            lower,
            inclusive,
            upper: prefix_end(prefix),
        }
    }

    /// The condition on `column`, with its parameters appended to `params`.
    fn condition(&self, column: &str, params: &mut Vec<Value>) -> String {
        params.push(Value::Blob(self.lower.clone()));
        let op = if self.inclusive { ">=" } else { ">" };
        let mut sql = format!("{column} {op} ?{}", params.len());
        if let Some(upper) = &self.upper {
            params.push(Value::Blob(upper.clone()));
            sql += &format!(" AND {column} < ?{}", params.len());
        }
        sql
    }
}

fn key_of(revision: i64, name: Vec<u8>) -> Result<String> {
    String::from_utf8(name).map_err(|_| {
        SqliteError::Corrupt {
            revision,
            what: "key is not utf-8",
        }
        .into()
    })
}

/// The columns `name, id, create_revision, value` as a key-value.
fn kv_of(row: &Row<'_>) -> rusqlite::Result<(Vec<u8>, i64, i64, Vec<u8>)> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
}

impl<'c> Snapshot<'c> {
    fn run<T>(conn: &'c Connection, f: impl FnOnce(&Snapshot<'_>) -> Result<T>) -> Result<T> {
        // Deferred: the snapshot starts at the first read, which is the revision's.
        let tx = conn.unchecked_transaction().map_err(db)?;
        let current = read_current(&tx).map_err(db)?;
        let compacted = read_meta(&tx, "compact_rev").map_err(db)?;
        let snapshot = Snapshot {
            conn: &tx,
            current,
            compacted,
        };
        let result = f(&snapshot);
        drop(tx); // rolls back: nothing was written
        result
    }

    /// The revision a read at `revision` (0: now) reads at, if it can.
    fn at(&self, revision: i64) -> Result<i64> {
        if revision == 0 {
            Ok(self.current)
        } else if revision > self.current {
            Err(StoreError::FutureRevision {
                requested: revision,
                current: self.current,
            })
        } else if revision < self.compacted {
            Err(StoreError::Compacted {
                requested: revision,
                compacted: self.compacted,
            })
        } else {
            Ok(revision)
        }
    }

    pub(super) fn get(&self, key: &str, revision: i64) -> Result<Option<KeyValue>> {
        let revision = self.at(revision)?;
        let row = self
            .conn
            .prepare_cached(
                "SELECT name, id, create_revision, value, deleted FROM kine
                 WHERE name = ?1 AND id <= ?2 ORDER BY id DESC LIMIT 1",
            )
            .and_then(|mut st| {
                st.query_row((key.as_bytes(), revision), |r| {
                    Ok((kv_of(r)?, r.get::<_, i64>(4)? != 0))
                })
                .optional()
            })
            .map_err(db)?;
        match row {
            Some(((_, id, create_revision, value), false)) => Ok(Some(KeyValue {
                key: key.to_owned(),
                value,
                create_revision,
                mod_revision: id,
            })),
            _ => Ok(None),
        }
    }

    /// The live keys in `range` at `revision`: `(sql, params)` of a query whose columns are
    /// `name, id, create_revision, value` (or a count), in key order.
    ///
    /// SQLite gives bare columns of a query with one `MAX()` the values of the row with the
    /// maximum, so `deleted`, `value`... are those of each key's latest row at `revision`.
    fn live_keys(range: &Range, revision: i64, count: bool, limit: usize) -> (String, Vec<Value>) {
        let mut params = Vec::new();
        let condition = range.condition("name", &mut params);
        params.push(Value::Integer(revision));
        let rev = params.len();
        let inner = format!(
            "SELECT name, MAX(id) AS id, create_revision, value, deleted FROM kine
             WHERE {condition} AND id <= ?{rev} GROUP BY name HAVING deleted = 0"
        );
        if count {
            (format!("SELECT COUNT(*) FROM ({inner})"), params)
        } else {
            params.push(Value::Integer(if limit == 0 { -1 } else { limit as i64 }));
            (
                format!("{inner} ORDER BY name LIMIT ?{}", params.len()),
                params,
            )
        }
    }

    pub(super) fn list(
        &self,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        revision: i64,
        limit: usize,
    ) -> Result<ListResult> {
        let revision = self.at(revision)?;
        let range = Range::new(prefix, start_after);
        let (sql, params) = Self::live_keys(&range, revision, false, limit);
        let rows = self
            .conn
            .prepare_cached(&sql)
            .and_then(|mut st| st.query_map(params_from_iter(params), kv_of)?.collect())
            .map_err(db)?;
        let rows: Vec<(Vec<u8>, i64, i64, Vec<u8>)> = rows;
        let mut kvs = Vec::with_capacity(rows.len());
        for (name, id, create_revision, value) in rows {
            kvs.push(KeyValue {
                key: key_of(id, name)?,
                value,
                create_revision,
                mod_revision: id,
            });
        }
        let mut remaining = 0;
        if limit > 0 && kvs.len() == limit {
            let last = kvs.last().map(|kv| kv.key.as_bytes()).unwrap_or_default();
            let rest = Range {
                lower: last.to_vec(),
                inclusive: false,
                upper: range.upper,
            };
            let (sql, params) = Self::live_keys(&rest, revision, true, 0);
            remaining = self
                .conn
                .prepare_cached(&sql)
                .and_then(|mut st| st.query_row(params_from_iter(params), |r| r.get(0)))
                .map_err(db)?;
        }
        Ok(ListResult {
            kvs,
            revision,
            more: remaining > 0,
            remaining,
        })
    }

    /// The events under `prefix` after revision `after`, at most `limit` of them.
    pub(super) fn history(&self, prefix: &[u8], after: i64, limit: usize) -> Result<Vec<Event>> {
        if after < self.compacted {
            return Err(StoreError::Compacted {
                requested: after,
                compacted: self.compacted,
            });
        }
        let mut params = vec![Value::Integer(after), Value::Integer(self.current)];
        let condition = Range::new(prefix, None).condition("k.name", &mut params);
        params.push(Value::Integer(limit as i64));
        let sql = format!(
            "SELECT k.name, k.id, k.create_revision, k.value, k.created, k.deleted,
                    p.id, p.create_revision, p.value
             FROM kine k LEFT JOIN kine p ON p.id = k.prev_revision
             WHERE k.id > ?1 AND k.id <= ?2 AND {condition}
             ORDER BY k.id LIMIT ?{}",
            params.len()
        );
        type HistoryRow = (
            (Vec<u8>, i64, i64, Vec<u8>),
            bool,
            bool,
            Option<(i64, i64, Vec<u8>)>,
        );
        let rows: Vec<HistoryRow> = self
            .conn
            .prepare_cached(&sql)
            .and_then(|mut st| {
                st.query_map(params_from_iter(params), |r| {
                    let prev = match r.get::<_, Option<i64>>(6)? {
                        Some(id) => Some((id, r.get(7)?, r.get(8)?)),
                        None => None,
                    };
                    Ok((kv_of(r)?, r.get(4)?, r.get(5)?, prev))
                })?
                .collect()
            })
            .map_err(db)?;
        let mut events = Vec::with_capacity(rows.len());
        for ((name, id, create_revision, value), created, deleted, prev) in rows {
            let key = key_of(id, name)?;
            let prev = match prev {
                _ if created => None,
                Some((mod_revision, create_revision, value)) => Some(KeyValue {
                    key: key.clone(),
                    value,
                    create_revision,
                    mod_revision,
                }),
                None => {
                    let what = "the previous row of an update or delete is missing";
                    return Err(SqliteError::Corrupt { revision: id, what }.into());
                }
            };
            events.push(match (deleted, prev) {
                (true, Some(prev)) => Event::Delete { revision: id, prev },
                (_, prev) => Event::Put {
                    kv: KeyValue {
                        key,
                        value,
                        create_revision,
                        mod_revision: id,
                    },
                    prev,
                },
            });
        }
        Ok(events)
    }
}
