//! Hermes state kept in the data directory, for a node without Redis (`hermes up`), each in a
//! SQLite file of its own: [`SqliteJournal`], the session journal (`broker::journal`), and
//! [`SqliteStreams`], durable streams and dead letters (`broker::streams`).
//!
//! A database runs in WAL mode with `synchronous = NORMAL`: a committed batch survives the
//! process being killed (a power cut may lose the last ones, never corrupt the file). It is
//! created readable by its owner only. Batches are written on one connection held for them,
//! without sqlx's worker thread ([`SyncWriter`]); reads go through a sqlx pool.

use std::path::Path;

use sqlx::ConnectOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};

pub mod journal;
pub mod streams;
mod tidy;
pub use journal::SqliteJournal;
pub use streams::SqliteStreams;

/// Opens the database at `path`, creating the file (owner-only) and running `schema` (statements
/// that create what is missing); returns its pool.
async fn open(path: &Path, schema: &[&'static str]) -> Result<SqlitePool, String> {
    create_owner_only(path).map_err(|e| e.to_string())?;
    let options = SqliteConnectOptions::new()
        .filename(path)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        // With WAL, NORMAL never corrupts the database and loses nothing when the process
        // dies; a power cut may lose the last commits.
        .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
        .log_statements(log::LevelFilter::Off);
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .test_before_acquire(false)
        .connect_with(options)
        .await
        .map_err(db)?;
    for statement in schema {
        sqlx::query(*statement).execute(&pool).await.map_err(db)?;
    }
    Ok(pool)
}

/// A connection to the database for writing whole batches right where they are asked for: SQLite
/// does a small transaction in microseconds, and a hop to another thread and back (sqlx's worker,
/// once per statement) costs more than that. The call blocks until the batch is committed: the
/// edge's stream appender writes from a thread of its own, its journal where it is submitted,
/// with the journal's checkpoints, which wait for the disk, left out (`SessionJournal::tidy`).
#[derive(Debug, Clone)]
pub(crate) struct SyncWriter(std::sync::Arc<std::sync::Mutex<rusqlite::Connection>>);

impl SyncWriter {
    /// Opens `path` (already created, in WAL mode).
    pub(crate) fn open(path: &Path) -> Result<SyncWriter, String> {
        let conn = rusqlite::Connection::open(path).map_err(|e| e.to_string())?;
        // See the crate's documentation; readers never block the writer in WAL mode, the busy
        // timeout covers a checkpoint.
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(|e| e.to_string())?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(|e| e.to_string())?;
        Ok(SyncWriter(std::sync::Arc::new(std::sync::Mutex::new(conn))))
    }

    /// Sets `pragma` on the writing connection.
    pub(crate) fn pragma(&self, pragma: &str, value: i64) -> Result<(), String> {
        let conn = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        conn.pragma_update(None, pragma, value).map_err(|e| e.to_string())
    }

    /// Runs `f` in an IMMEDIATE transaction (the write lock is taken now, not on a later
    /// statement where SQLite could only answer "busy") and commits what it did.
    pub(crate) fn transaction<R>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<R>,
    ) -> Result<R, String> {
        let mut conn = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let run = || {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let r = f(&tx)?;
            tx.commit()?;
            Ok(r)
        };
        run().map_err(|e: rusqlite::Error| e.to_string())
    }
}

/// Copies what the write-ahead log holds into the database, without waiting for readers or
/// writers (what is written meanwhile, or a reader still sees, stays in the log until the
/// next checkpoint). If no write ran meanwhile, the next write starts the log from its
/// beginning again.
pub(crate) fn checkpoint(conn: &rusqlite::Connection) -> Result<(), String> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())).map_err(|e| e.to_string())
}

pub(crate) fn db(e: sqlx::Error) -> String {
    e.to_string()
}

/// Unix time in milliseconds.
pub(crate) fn now_ms() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// Creates `path` empty (which SQLite takes for a new database) and readable by its owner only
/// before SQLite opens it; an existing file loses any group or other permission. SQLite gives
/// the `-wal` and `-shm` files it makes the permissions of the database file.
fn create_owner_only(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(file) => file.sync_all(),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(path)?.permissions().mode() & 0o7777;
                if mode & 0o077 != 0 {
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & !0o077))?;
                }
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}
