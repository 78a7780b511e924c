//! Checkpoints kept out of a SQLite file's writes: its writer runs with
//! `wal_autocheckpoint = 0`, and its node calls [`Tidy::tidy`] now and then (a checkpoint while
//! writes go on, on a connection of its own), then [`Tidy::between_writes`] while no write
//! runs (the rest, and a write that starts the log again). A file nobody tidies checkpoints
//! itself after [`UNTIDY_WRITES`] writes, so its log does not grow without end.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::SyncWriter;

/// Writes after which a write checkpoints the log itself, if nobody tidied the file (an edge
/// tidies about every 100 ms).
pub const UNTIDY_WRITES: u64 = 4096;

/// How a SQLite file written by a [`SyncWriter`] is tidied (see the module's documentation).
#[derive(Debug)]
pub(crate) struct Tidy {
    /// What the file holds, for errors.
    what: &'static str,
    /// Writes since the last checkpoint.
    untidy: AtomicU64,
    /// [`UNTIDY_WRITES`], but in tests.
    limit: AtomicU64,
    /// Checkpoints while the writer writes.
    checkpointer: Mutex<rusqlite::Connection>,
    /// What the file's tables are (`PRAGMA user_version`), written to start the log again.
    user_version: i64,
}

impl Tidy {
    /// Leaves `writer`'s checkpoints to the tidy, for the file at `path` holding `what`, its
    /// tables `user_version`.
    pub(crate) fn open(
        path: &Path,
        writer: &SyncWriter,
        what: &'static str,
        user_version: i64,
    ) -> Result<Tidy, String> {
        writer.pragma("wal_autocheckpoint", 0)?;
        let checkpointer = rusqlite::Connection::open(path).map_err(|e| e.to_string())?;
        Ok(Tidy {
            what,
            untidy: AtomicU64::new(0),
            limit: AtomicU64::new(UNTIDY_WRITES),
            checkpointer: Mutex::new(checkpointer),
            user_version,
        })
    }

    /// Counts a write; the one at the limit checkpoints.
    pub(crate) fn wrote(&self) -> Result<(), String> {
        if self.untidy.fetch_add(1, Ordering::Relaxed) + 1 >= self.limit.load(Ordering::Relaxed) {
            self.untidy.store(0, Ordering::Relaxed);
            self.checkpoint()?;
        }
        Ok(())
    }

    fn checkpoint(&self) -> Result<(), String> {
        let conn = self.checkpointer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        crate::checkpoint(&conn).map_err(|e| format!("checkpointing {}: {e}", self.what))
    }

    /// Checkpoints while writes go on: most of the log is copied, with the waits for the disk,
    /// and the rest between writes, so that the next write starts the log again.
    pub(crate) fn tidy(&self) -> Result<(), String> {
        match self.untidy.load(Ordering::Relaxed) {
            0 => Ok(()),
            _ => self.checkpoint(),
        }
    }

    /// Then starts the log again with a write of its own on `writer`: the first write of a log
    /// waits for the disk (SQLite syncs its header), and would stall whoever made it.
    pub(crate) fn between_writes(&self, writer: &SyncWriter) -> Result<(), String> {
        if self.untidy.swap(0, Ordering::Relaxed) == 0 {
            return Ok(());
        }
        self.checkpoint()?;
        // Rewrites the database's first page (what it says stays the same).
        let again = writer.transaction(|tx| tx.pragma_update(None, "user_version", self.user_version));
        again.map_err(|e| format!("starting the log of {} again: {e}", self.what))
    }

    #[cfg(test)]
    pub(crate) fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// The frames the log holds, checkpointing them (for tests).
    #[cfg(test)]
    pub(crate) fn frames(&self) -> i64 {
        let conn = self.checkpointer.lock().expect("not poisoned");
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get(1)).expect("frames")
    }
}
