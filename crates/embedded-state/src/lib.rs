//! Hermes state kept in the data directory, for a node without Redis (`hermes up`), each in a
//! SQLite file of its own: [`SqliteJournal`], the session journal (`broker::journal`), and
//! [`SqliteStreams`], durable streams and dead letters (`broker::streams`).
//!
//! A database runs in WAL mode with `synchronous = NORMAL`: a committed batch survives the
//! process being killed (a power cut may lose the last ones, never corrupt the file). It is
//! created readable by its owner only. Batches are written on one connection held for them.

use std::path::Path;

use sqlx::ConnectOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};

pub mod journal;
pub mod streams;
pub use journal::SqliteJournal;
pub use streams::SqliteStreams;

/// The connection batches are written on, held (a pool's hand-out per batch costs more than the
/// batch).
type Writer = std::sync::Arc<tokio::sync::Mutex<sqlx::pool::PoolConnection<sqlx::Sqlite>>>;

/// Opens the database at `path`, creating the file (owner-only) and running `schema` (statements
/// that create what is missing); returns its pool and the connection held for writes.
async fn open(path: &Path, schema: &[&'static str]) -> Result<(SqlitePool, Writer), String> {
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
    let writer = std::sync::Arc::new(tokio::sync::Mutex::new(pool.acquire().await.map_err(db)?));
    Ok((pool, writer))
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
