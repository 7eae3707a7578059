//! Watch streams: history replayed from the database, then the writer's live broadcast,
//! handed over by revision so that no event is missed or delivered twice.

use std::sync::Arc;

use tokio::sync::broadcast;

use super::reader::ReadPool;
use super::writer::Batch;
use super::SqliteError;
use crate::{Event, Result, WatchStream};

/// Events one replay read fetches at most.
const PAGE: usize = 500;

struct Watch {
    readers: Arc<ReadPool>,
    /// Subscribed before the first replay read.
    live: broadcast::Receiver<Batch>,
    prefix: Arc<[u8]>,
    /// Every event under the prefix with a revision up to this one has been delivered.
    position: i64,
    /// Reading the database (at the start, and after lagging behind the broadcast).
    replaying: bool,
    done: bool,
}

/// The stream of events under `prefix` after `after`. `live` is subscribed already, so it
/// holds every group committed after the first replay read's snapshot.
pub(super) fn stream(
    readers: Arc<ReadPool>,
    live: broadcast::Receiver<Batch>,
    prefix: Vec<u8>,
    after: i64,
) -> WatchStream {
    let watch = Watch {
        readers,
        live,
        prefix: prefix.into(),
        position: after,
        replaying: true,
        done: false,
    };
    Box::pin(futures::stream::unfold(watch, |mut watch| async move {
        let item = watch.next().await?;
        Some((item, watch))
    }))
}

impl Watch {
    async fn next(&mut self) -> Option<Result<Vec<Event>>> {
        while !self.done {
            let result = if self.replaying {
                self.replay().await
            } else {
                self.receive().await
            };
            match result {
                Ok(events) if events.is_empty() => {}
                Ok(events) => return Some(Ok(events)),
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        None
    }

    /// One page of history after the position.
    async fn replay(&mut self) -> Result<Vec<Event>> {
        let (prefix, after) = (self.prefix.clone(), self.position);
        let (events, current) = self
            .readers
            .read(move |snap| Ok((snap.history(&prefix, after, PAGE)?, snap.current)))
            .await?;
        if events.len() < PAGE {
            // Caught up with the snapshot: whatever follows is in the broadcast.
            self.position = self.position.max(current);
            self.replaying = false;
        } else if let Some(last) = events.last() {
            self.position = last.revision();
        }
        Ok(events)
    }

    /// The next committed group's events under the prefix not yet delivered.
    async fn receive(&mut self) -> Result<Vec<Event>> {
        match self.live.recv().await {
            Ok(batch) => {
                let events = batch
                    .iter()
                    .filter(|e| {
                        e.revision() > self.position && e.key().as_bytes().starts_with(&self.prefix)
                    })
                    .cloned()
                    .collect();
                if let Some(last) = batch.last() {
                    self.position = self.position.max(last.revision());
                }
                Ok(events)
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                // Some groups were dropped for us: read them from the database.
                self.replaying = true;
                Ok(Vec::new())
            }
            Err(broadcast::error::RecvError::Closed) => Err(SqliteError::Closed.into()),
        }
    }
}
