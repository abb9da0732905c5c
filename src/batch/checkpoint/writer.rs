//! The checkpoint writer: a thread with its own SQLite connection that stores finished items,
//! grouping them into transactions so that checkpointing keeps up with many concurrent calls.
//! Callers queue items through a bounded channel; `flush` is the point where everything queued
//! so far is committed and would survive the process being killed.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::{CheckpointError, ItemResult};

/// Finished items the caller may have queued before `record` blocks: enough to absorb a burst
/// of completions while a transaction commits, small enough to bound memory.
const QUEUE: usize = 1024;
/// The writer commits at least this often while items keep coming.
const MAX_ITEMS_PER_COMMIT: usize = 256;
const MAX_COMMIT_DELAY: Duration = Duration::from_millis(50);

enum Msg {
    Item(ItemResult),
    /// Answered once everything queued before it is committed, or with why it could not be.
    Flush(mpsc::Sender<Result<(), String>>),
}

/// Stores finished items from a thread of its own. `record` blocks when the queue is full, which
/// slows the runner down to what the disk can take rather than growing memory.
///
/// Dropping a `Writer` commits what was queued and waits for the thread; `close` does the same
/// and reports a failure. If the writer thread fails (disk full), `record` and `flush` return
/// the error: the items it had not committed are not checkpointed and will be redone.
pub struct Writer {
    path: PathBuf,
    tx: Option<SyncSender<Msg>>,
    thread: Option<JoinHandle<rusqlite::Result<()>>>,
    failure: Arc<Mutex<Option<String>>>,
}

impl Writer {
    /// Starts the thread on `db`, a connection of its own to the checkpoint at `path`.
    pub(super) fn start(
        path: &Path,
        db: Connection,
        batch_id: &str,
    ) -> Result<Writer, CheckpointError> {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let failure = Arc::new(Mutex::new(None));
        let thread = {
            let batch_id = batch_id.to_string();
            let failure = failure.clone();
            std::thread::Builder::new()
                .name("batch-checkpoint".into())
                .spawn(move || {
                    let result = write_items(db, &batch_id, &rx, &failure);
                    if let Err(e) = &result {
                        *failure.lock().unwrap_or_else(PoisonError::into_inner) =
                            Some(e.to_string());
                    }
                    result
                })
                .map_err(|source| CheckpointError::Thread {
                    path: path.to_path_buf(),
                    source,
                })?
        };
        Ok(Writer {
            path: path.to_path_buf(),
            tx: Some(tx),
            thread: Some(thread),
            failure,
        })
    }

    pub fn record(&self, item: ItemResult) -> Result<(), CheckpointError> {
        if self.failed() {
            return Err(self.stopped());
        }
        let tx = self.tx.as_ref().ok_or_else(|| self.stopped())?;
        tx.send(Msg::Item(item)).map_err(|_| self.stopped())
    }

    /// Returns once every item recorded before the call is committed.
    pub fn flush(&self) -> Result<(), CheckpointError> {
        let tx = self.tx.as_ref().ok_or_else(|| self.stopped())?;
        let (ack, done) = mpsc::channel();
        tx.send(Msg::Flush(ack)).map_err(|_| self.stopped())?;
        match done.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(CheckpointError::WriterStopped {
                path: self.path.clone(),
                reason,
            }),
            // Dropped unanswered: the thread had already stopped on an earlier error.
            Err(_) => Err(self.stopped()),
        }
    }

    /// Commits everything recorded and stops the thread.
    pub fn close(mut self) -> Result<(), CheckpointError> {
        match self.stop() {
            Some(Ok(Ok(()))) | None => Ok(()),
            Some(Ok(Err(source))) => Err(CheckpointError::Sqlite {
                path: self.path.clone(),
                source,
            }),
            Some(Err(_panic)) => Err(CheckpointError::WriterStopped {
                path: self.path.clone(),
                reason: "its thread panicked".into(),
            }),
        }
    }

    fn stop(&mut self) -> Option<std::thread::Result<rusqlite::Result<()>>> {
        // Closing the channel is the thread's signal to commit what is left and return.
        drop(self.tx.take());
        self.thread.take().map(JoinHandle::join)
    }

    fn failed(&self) -> bool {
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    fn stopped(&self) -> CheckpointError {
        let reason = self
            .failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .unwrap_or_else(|| "its thread has exited".into());
        CheckpointError::WriterStopped {
            path: self.path.clone(),
            reason,
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        match self.stop() {
            Some(Ok(Err(e))) => {
                tracing::warn!(path = %self.path.display(), error = %e, "checkpoint writer failed");
            }
            Some(Err(_)) => {
                tracing::warn!(path = %self.path.display(), "checkpoint writer panicked");
            }
            Some(Ok(Ok(()))) | None => {}
        }
    }
}

/// The writer thread: commits when the queue is drained, every [`MAX_ITEMS_PER_COMMIT`] items,
/// or every [`MAX_COMMIT_DELAY`], whichever comes first, and once more when the channel closes.
fn write_items(
    mut db: Connection,
    batch_id: &str,
    rx: &Receiver<Msg>,
    failure: &Mutex<Option<String>>,
) -> rusqlite::Result<()> {
    let mut pending: Vec<ItemResult> = Vec::with_capacity(MAX_ITEMS_PER_COMMIT);
    let mut oldest = Instant::now();
    loop {
        let msg = if pending.is_empty() {
            match rx.recv() {
                Ok(msg) => msg,
                Err(_) => return Ok(()),
            }
        } else {
            match rx.try_recv() {
                Ok(msg) => msg,
                Err(TryRecvError::Empty) => {
                    // Nothing more waiting: committing now costs little and loses nothing if
                    // the process dies while idle.
                    commit(&mut db, batch_id, &mut pending)?;
                    continue;
                }
                Err(TryRecvError::Disconnected) => {
                    return commit(&mut db, batch_id, &mut pending);
                }
            }
        };
        match msg {
            Msg::Item(item) => {
                if pending.is_empty() {
                    oldest = Instant::now();
                }
                pending.push(item);
                if pending.len() >= MAX_ITEMS_PER_COMMIT || oldest.elapsed() >= MAX_COMMIT_DELAY {
                    commit(&mut db, batch_id, &mut pending)?;
                }
            }
            Msg::Flush(ack) => {
                // The caller may have given up waiting; nothing to do about that.
                if let Err(e) = commit(&mut db, batch_id, &mut pending) {
                    // Stored before answering, so that once `flush` has failed every later
                    // `record` fails too instead of queueing into a thread that is exiting.
                    *failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(e.to_string());
                    let _ = ack.send(Err(e.to_string()));
                    return Err(e);
                }
                let _ = ack.send(Ok(()));
            }
        }
    }
}

fn commit(
    db: &mut Connection,
    batch_id: &str,
    pending: &mut Vec<ItemResult>,
) -> rusqlite::Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    let tx = db.transaction()?;
    super::insert_items(&tx, batch_id, pending.iter())?;
    tx.commit()?;
    pending.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::super::tests::{Fixture, item};
    use super::*;

    #[test]
    fn flushed_items_survive_a_writer_that_never_closes() {
        let f = Fixture::new();
        let cp = f.open();
        f.begin(&cp, "j", "i", false).unwrap();
        let writer = cp.writer(&f.id).unwrap();
        for line in 1..=300 {
            writer.record(item(line)).unwrap();
        }
        writer.flush().unwrap();
        // Read through another connection while the writer is still alive: flush means
        // committed, not merely queued.
        let other = f.open();
        assert_eq!(
            other.counts(&f.id).unwrap().ok + other.counts(&f.id).unwrap().failed,
            300
        );
        for line in 301..=310 {
            writer.record(item(line)).unwrap();
        }
        drop(writer);
        drop(cp);
        let resume = f.begin(&other, "j", "i", false).unwrap();
        assert!(!resume.fresh);
        assert_eq!(resume.done, (1..=310).collect::<HashSet<u64>>());
    }

    #[test]
    fn a_writer_reports_when_its_thread_fails() {
        let f = Fixture::new();
        let cp = f.open();
        f.begin(&cp, "j", "i", false).unwrap();
        let writer = cp.writer(&f.id).unwrap();
        // Taking the items table away makes the next commit fail.
        cp.lock().execute_batch("DROP TABLE items").unwrap();
        writer.record(item(1)).unwrap();
        let err = writer.flush().unwrap_err();
        assert!(
            matches!(err, CheckpointError::WriterStopped { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("items"), "{err}");
        assert!(writer.record(item(2)).is_err());
        assert!(writer.close().is_err());
    }
}
