//! WAL checkpoints on a thread of their own: the writer's commits only append to the WAL,
//! and copying it back into the database (and its fsync) happens beside them.
//!
//! The write connection's WAL hook nudges this thread once the WAL holds [`PAGES`] pages
//! (SQLite's own auto-checkpoint threshold); the thread runs a PASSIVE checkpoint, which
//! waits for no reader or writer. The writer restarts the WAL from its beginning at its next
//! transaction once everything was copied.

use std::path::Path;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

/// WAL pages after which a checkpoint is due.
pub(super) const PAGES: std::ffi::c_int = 1000;

/// Starts the checkpointer of the database at `path`; it ends when the sender is dropped.
pub(super) fn spawn(path: &Path) -> std::io::Result<(SyncSender<()>, JoinHandle<()>)> {
    let (nudge, nudged) = sync_channel::<()>(1);
    let path = path.to_owned();
    let thread = std::thread::Builder::new()
        .name("store-checkpoint".into())
        .spawn(move || {
            let mut conn: Option<Connection> = None;
            while nudged.recv().is_ok() {
                if conn.is_none() {
                    conn = Connection::open_with_flags(
                        &path,
                        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                    )
                    .and_then(|c| {
                        c.busy_timeout(Duration::from_secs(5))?;
                        c.pragma_update(None, "synchronous", "FULL")?;
                        Ok(c)
                    })
                    .ok();
                }
                if let Some(c) = &conn {
                    // Errors (a busy database, say) leave the WAL to the next checkpoint.
                    let _ = c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                }
            }
        })?;
    Ok((nudge, thread))
}
