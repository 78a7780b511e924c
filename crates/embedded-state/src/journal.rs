//! The session journal (`broker::journal`) in a SQLite file of its own: [`SqliteJournal`].
//!
//! Tables: `sessions` (a session's record and when it expires, Unix ms, `NULL` for never),
//! `session_messages` (its kept messages by entry), `session_inbound` (its inbound QoS 2 ids
//! awaiting their PUBREL), `session_cursors` (how far it got in each durable stream) and
//! `retained`. Only the node in this data directory writes it, so that node parks every
//! session it holds when it starts ([`SessionJournal::sessions_to_restore`]). The database runs
//! in WAL mode with `synchronous = NORMAL` (see the crate's
//! documentation).
//!
//! Expired sessions are deleted with their messages, ids and cursors when the journal opens,
//! inside a write at most once a second, and by [`SqliteJournal::sweep_expired`]; until then
//! `load` does not see them, and a record written again after its expiry starts without the old
//! messages, ids and cursors. A message (an id, a cursor) is kept only if its session has a live
//! record: one routed to a session that has expired or ended is dropped, not left behind where
//! nothing would delete it.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use broker::journal::{SessionJournal, Stored, Write};
use broker::relations::BoxFuture;
use rusqlite::{Transaction, params};
use sqlx::Row;
use sqlx::sqlite::SqlitePool;

use crate::tidy::Tidy;
use crate::{SyncWriter, db, now_ms};

/// The session journal in a SQLite file (see the module's documentation). Clones share the
/// pool (reads) and the writing connection; a write runs on the caller's thread.
#[derive(Debug, Clone)]
pub struct SqliteJournal {
    pool: SqlitePool,
    writer: SyncWriter,
    /// When expired sessions were last swept (Unix ms): at most once a second, inside a write.
    swept_at: Arc<AtomicI64>,
    /// Its checkpoints ([`SessionJournal::tidy`]).
    tidy: Arc<Tidy>,
}

const SCHEMA: [&str; 7] = [
    "CREATE TABLE IF NOT EXISTS sessions (session TEXT PRIMARY KEY, record BLOB NOT NULL, expires_at_ms INTEGER)",
    "CREATE INDEX IF NOT EXISTS sessions_by_expiry ON sessions (expires_at_ms)",
    // `entry` is the u64 bit-cast to i64 (SQLite integers are signed): `load` orders them.
    "CREATE TABLE IF NOT EXISTS session_messages (session TEXT NOT NULL, entry INTEGER NOT NULL, body BLOB NOT NULL, \
     PRIMARY KEY (session, entry)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS retained (topic TEXT PRIMARY KEY, body BLOB NOT NULL) WITHOUT ROWID",
    // Inbound QoS 2 packet ids awaiting their PUBREL.
    "CREATE TABLE IF NOT EXISTS session_inbound (session TEXT NOT NULL, packet_id INTEGER NOT NULL, \
     PRIMARY KEY (session, packet_id)) WITHOUT ROWID",
    // The session's cursor in each durable stream (bytes the edge encodes).
    "CREATE TABLE IF NOT EXISTS session_cursors (session TEXT NOT NULL, stream TEXT NOT NULL, cursor BLOB NOT NULL, \
     PRIMARY KEY (session, stream)) WITHOUT ROWID",
    // The wills of the connections of this node's runs (`Write::Will`); `link` bit-cast to i64.
    "CREATE TABLE IF NOT EXISTS wills (node TEXT NOT NULL, link INTEGER NOT NULL, body BLOB NOT NULL, \
     PRIMARY KEY (node, link)) WITHOUT ROWID",
];

/// What the tables above are (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 1;

/// The tables holding a session's rows besides `sessions`, deleted with it.
const SESSION_TABLES: [&str; 3] = ["session_messages", "session_inbound", "session_cursors"];

/// A session's record is live at `now` (parameters: the session, `now`).
const LIVE: &str =
    "EXISTS (SELECT 1 FROM sessions WHERE session = ?1 AND (expires_at_ms IS NULL OR expires_at_ms > ?2))";

impl SqliteJournal {
    /// Opens the journal at `path`, creating the file (owner-only) and its tables if needed,
    /// and deletes the sessions that expired while it was closed.
    pub async fn open(path: &Path) -> Result<SqliteJournal, String> {
        let named = |e: &dyn std::fmt::Display| format!("session journal {}: {e}", path.display());
        let pool = crate::open(path, &SCHEMA).await.map_err(|e| named(&e))?;
        let writer = SyncWriter::open(path).map_err(|e| named(&e))?;
        // Checkpoints wait for the disk: they are left out of writes (see `tidy`).
        let tidy = Arc::new(Tidy::open(path, &writer, "the session journal", SCHEMA_VERSION).map_err(|e| named(&e))?);
        let journal = SqliteJournal { pool, writer, swept_at: Default::default(), tidy };
        journal.sweep_expired().await.map_err(|e| named(&e))?;
        Ok(journal)
    }

    /// Deletes the sessions whose expiry has passed, with their messages, ids and cursors;
    /// returns how many.
    pub async fn sweep_expired(&self) -> Result<u64, String> {
        self.writer.transaction(|tx| sweep(tx, now_ms()))
    }

    /// Writes `writes` in one transaction, on the caller's thread (see [`SyncWriter`]).
    fn apply(&self, writes: &[Write]) -> Result<(), String> {
        let now = now_ms();
        let sweep_due = now - self.swept_at.load(Ordering::Relaxed) >= 1000;
        if sweep_due {
            self.swept_at.store(now, Ordering::Relaxed);
        }
        self.writer.transaction(|tx| {
            if sweep_due {
                sweep(tx, now)?;
            }
            writes.iter().try_for_each(|w| apply_one(tx, w, now))
        })?;
        self.tidy.wrote()
    }

    async fn read(&self, session: &str) -> Result<Option<Stored>, String> {
        // One read transaction: the record, messages, ids and cursors of one moment.
        let mut tx = self.pool.begin().await.map_err(db)?;
        let record: Option<Vec<u8>> = sqlx::query(
            "SELECT record FROM sessions WHERE session = ?1 AND (expires_at_ms IS NULL OR expires_at_ms > ?2)",
        )
        .bind(session)
        .bind(now_ms())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?
        .map(|row| row.get(0));
        let Some(record) = record else { return Ok(None) };
        let rows = sqlx::query("SELECT entry, body FROM session_messages WHERE session = ?1")
            .bind(session)
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?;
        let inbound = sqlx::query("SELECT packet_id FROM session_inbound WHERE session = ?1 ORDER BY packet_id")
            .bind(session)
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?;
        let cursors = sqlx::query("SELECT stream, cursor FROM session_cursors WHERE session = ?1 ORDER BY stream")
            .bind(session)
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        let mut messages: Vec<(u64, Vec<u8>)> =
            rows.into_iter().map(|row| (row.get::<i64, _>(0) as u64, row.get(1))).collect();
        messages.sort_unstable_by_key(|(entry, _)| *entry);
        let inbound = inbound.into_iter().filter_map(|row| u16::try_from(row.get::<i64, _>(0)).ok()).collect();
        let cursors = cursors.into_iter().map(|row| (row.get(0), row.get(1))).collect();
        Ok(Some(Stored { record, messages, inbound, cursors }))
    }
}

/// One write, with statements prepared once per connection. Messages, ids and cursors are kept
/// only for a session with a live record.
fn apply_one(tx: &Transaction<'_>, w: &Write, now: i64) -> rusqlite::Result<()> {
    let expires = |ttl_secs: u32| now + i64::from(ttl_secs) * 1000;
    match w {
        Write::Record { session, record, ttl_secs } => {
            // An expired record not swept yet: its messages, ids and cursors go before it lives
            // again.
            for table in SESSION_TABLES {
                let sql = format!(
                    "DELETE FROM {table} WHERE session = ?1 \
                     AND EXISTS (SELECT 1 FROM sessions WHERE session = ?1 AND expires_at_ms <= ?2)"
                );
                tx.prepare_cached(&sql)?.execute(params![&**session, now])?;
            }
            tx.prepare_cached(
                "INSERT INTO sessions (session, record, expires_at_ms) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (session) DO UPDATE SET record = excluded.record, expires_at_ms = excluded.expires_at_ms",
            )?
            .execute(params![&**session, record, ttl_secs.map(expires)])?;
        }
        Write::Message { session, entry, body } => {
            tx.prepare_cached(&format!(
                "INSERT INTO session_messages (session, entry, body) SELECT ?1, ?3, ?4 WHERE {LIVE} \
                 ON CONFLICT (session, entry) DO UPDATE SET body = excluded.body"
            ))?
            .execute(params![&**session, now, *entry as i64, body])?;
        }
        Write::Done { session, entry } => {
            tx.prepare_cached("DELETE FROM session_messages WHERE session = ?1 AND entry = ?2")?
                .execute(params![&**session, *entry as i64])?;
        }
        Write::Touch { session, ttl_secs } => {
            tx.prepare_cached("UPDATE sessions SET expires_at_ms = ?2 WHERE session = ?1")?
                .execute(params![&**session, expires(*ttl_secs)])?;
        }
        Write::Inbound { session, packet_id, held: true } => {
            tx.prepare_cached(&format!(
                "INSERT INTO session_inbound (session, packet_id) SELECT ?1, ?3 WHERE {LIVE} ON CONFLICT DO NOTHING"
            ))?
            .execute(params![&**session, now, i64::from(*packet_id)])?;
        }
        Write::Inbound { session, packet_id, held: false } => {
            tx.prepare_cached("DELETE FROM session_inbound WHERE session = ?1 AND packet_id = ?2")?
                .execute(params![&**session, i64::from(*packet_id)])?;
        }
        Write::Cursor { session, stream, cursor } => {
            tx.prepare_cached(&format!(
                "INSERT INTO session_cursors (session, stream, cursor) SELECT ?1, ?3, ?4 WHERE {LIVE} \
                 ON CONFLICT (session, stream) DO UPDATE SET cursor = excluded.cursor"
            ))?
            .execute(params![&**session, now, &**stream, cursor])?;
        }
        Write::Ended { session } => {
            for table in SESSION_TABLES {
                tx.prepare_cached(&format!("DELETE FROM {table} WHERE session = ?1"))?.execute([&**session])?;
            }
            tx.prepare_cached("DELETE FROM sessions WHERE session = ?1")?.execute([&**session])?;
        }
        Write::Retained { topic, body: Some(body) } => {
            tx.prepare_cached(
                "INSERT INTO retained (topic, body) VALUES (?1, ?2) ON CONFLICT (topic) DO UPDATE SET body = excluded.body",
            )?
            .execute(params![&**topic, body])?;
        }
        Write::Retained { topic, body: None } => {
            tx.prepare_cached("DELETE FROM retained WHERE topic = ?1")?.execute([&**topic])?;
        }
        Write::Will { node, link, body: Some(body) } => {
            tx.prepare_cached(
                "INSERT INTO wills (node, link, body) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (node, link) DO UPDATE SET body = excluded.body",
            )?
            .execute(params![&**node, *link as i64, body])?;
        }
        Write::WillsAre { node, wills } => {
            tx.prepare_cached("DELETE FROM wills WHERE node = ?1")?.execute([&**node])?;
            for (link, body) in wills {
                tx.prepare_cached("INSERT INTO wills (node, link, body) VALUES (?1, ?2, ?3)")?.execute(params![
                    &**node,
                    *link as i64,
                    body
                ])?;
            }
        }
        Write::Will { node, link, body: None } => {
            tx.prepare_cached("DELETE FROM wills WHERE node = ?1 AND link = ?2")?
                .execute(params![&**node, *link as i64])?;
        }
    }
    Ok(())
}

impl SessionJournal for SqliteJournal {
    fn blocks(&self) -> bool {
        true
    }

    /// See [`Tidy::tidy`].
    fn tidy(&self) -> Result<(), String> {
        self.tidy.tidy()
    }

    /// See [`Tidy::between_writes`].
    fn tidy_between_writes(&self) -> Result<(), String> {
        self.tidy.between_writes(&self.writer)
    }

    fn write<'a>(&'a self, writes: &'a [Write]) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            if writes.is_empty() {
                return Ok(());
            }
            self.apply(writes).map_err(|e| format!("writing {} change(s) to the session journal: {e}", writes.len()))
        })
    }

    fn load<'a>(&'a self, session: &'a str) -> BoxFuture<'a, Result<Option<Stored>, String>> {
        Box::pin(async move { self.read(session).await.map_err(|e| format!("loading session {session:?}: {e}")) })
    }

    fn sessions_to_restore(&self) -> BoxFuture<'_, Result<broker::journal::ToRestore, String>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT session, expires_at_ms FROM sessions WHERE expires_at_ms IS NULL OR expires_at_ms > ?1",
            )
            .bind(now_ms())
            .fetch_all(&self.pool)
            .await
            .map_err(|e| format!("listing sessions: {e}"))?;
            let expires = |at: Option<i64>| at.map(|at| u64::try_from(at).unwrap_or(0));
            Ok(rows.into_iter().map(|row| (row.get(0), expires(row.get(1)))).collect())
        })
    }

    fn expires_at<'a>(&'a self, session: &'a str) -> BoxFuture<'a, Result<Option<Option<u64>>, String>> {
        Box::pin(async move {
            let row = sqlx::query(
                "SELECT expires_at_ms FROM sessions WHERE session = ?1 AND (expires_at_ms IS NULL OR expires_at_ms > ?2)",
            )
            .bind(session)
            .bind(now_ms())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| format!("reading the expiry of session {session:?}: {e}"))?;
            Ok(row.map(|row| row.get::<Option<i64>, _>(0).map(|at| u64::try_from(at).unwrap_or(0))))
        })
    }

    fn wills<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<broker::journal::Wills, String>> {
        Box::pin(async move {
            let rows = sqlx::query("SELECT link, body FROM wills WHERE node = ?1")
                .bind(node)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| format!("loading the wills of {node}: {e}"))?;
            Ok(rows.into_iter().map(|row| (row.get::<i64, _>(0) as u64, row.get(1))).collect())
        })
    }

    fn forget_wills<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.writer
                .transaction(|tx| tx.prepare_cached("DELETE FROM wills WHERE node = ?1")?.execute([node]).map(drop))
                .map_err(|e| format!("forgetting the wills of {node}: {e}"))
        })
    }

    fn will_nodes(&self) -> BoxFuture<'_, Result<Vec<String>, String>> {
        Box::pin(async move {
            let rows = sqlx::query("SELECT DISTINCT node FROM wills")
                .fetch_all(&self.pool)
                .await
                .map_err(|e| format!("listing the nodes that left wills: {e}"))?;
            Ok(rows.into_iter().map(|row| row.get(0)).collect())
        })
    }

    fn load_retained(&self) -> BoxFuture<'_, Result<broker::journal::Retained, String>> {
        Box::pin(async move {
            let rows = sqlx::query("SELECT topic, body FROM retained")
                .fetch_all(&self.pool)
                .await
                .map_err(|e| format!("loading retained messages: {e}"))?;
            Ok(rows.into_iter().map(|row| (row.get(0), row.get(1))).collect())
        })
    }
}

/// Deletes the sessions expired at `now` and their messages, ids and cursors.
fn sweep(tx: &Transaction<'_>, now: i64) -> rusqlite::Result<u64> {
    for table in SESSION_TABLES {
        let sql =
            format!("DELETE FROM {table} WHERE session IN (SELECT session FROM sessions WHERE expires_at_ms <= ?1)");
        tx.prepare_cached(&sql)?.execute([now])?;
    }
    let done = tx.prepare_cached("DELETE FROM sessions WHERE expires_at_ms <= ?1")?.execute([now])?;
    Ok(done as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_for_a_session_without_a_record_are_not_kept() {
        let dir = std::env::temp_dir().join(format!("hermes-journal-orphans-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let journal = SqliteJournal::open(&dir.join("journal.db")).await.expect("open");
        let (gone, parked): (std::sync::Arc<str>, std::sync::Arc<str>) = ("1:a/gone".into(), "1:a/parked".into());
        let batch = [
            Write::Message { session: gone.clone(), entry: 1, body: b"never".to_vec() },
            Write::Record { session: parked.clone(), record: b"p".to_vec(), ttl_secs: Some(0) },
            Write::Message { session: parked.clone(), entry: 1, body: b"late".to_vec() },
            Write::Inbound { session: gone.clone(), packet_id: 1, held: true },
            Write::Inbound { session: parked.clone(), packet_id: 1, held: true },
            Write::Cursor { session: gone.clone(), stream: "s".into(), cursor: b"never".to_vec() },
            Write::Cursor { session: parked.clone(), stream: "s".into(), cursor: b"late".to_vec() },
        ];
        journal.write(&batch).await.expect("write");
        // The parked session's expiry (now) has passed, though it is not swept yet.
        for table in SESSION_TABLES {
            let sql = format!("SELECT COUNT(*) FROM {table}");
            let kept: i64 = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_one(&journal.pool).await.expect("count").get(0);
            assert_eq!(kept, 0, "{table}: neither: one has no record, the other's has expired");
        }
        assert_eq!(journal.sweep_expired().await.expect("sweep"), 1);
        assert_eq!(journal.load(&parked).await.expect("load"), None);
        drop(journal);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Writes `n` batches of one message each for `session`, from `entry` on.
    async fn write_messages(journal: &SqliteJournal, session: &std::sync::Arc<str>, entry: u64, n: u64) {
        for e in entry..entry + n {
            let body = vec![7u8; 600];
            journal.write(&[Write::Message { session: session.clone(), entry: e, body }]).await.expect("write");
        }
    }

    #[tokio::test]
    async fn writes_leave_the_checkpoint_to_tidy_which_starts_the_log_again_unless_it_waits_too_long() {
        let dir = std::env::temp_dir().join(format!("hermes-journal-tidy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let path = dir.join("journal.db");
        let wal = || std::fs::metadata(dir.join("journal.db-wal")).map(|m| m.len()).unwrap_or(0);
        let journal = SqliteJournal::open(&path).await.expect("open");
        journal.tidy.set_limit(400);
        let s: std::sync::Arc<str> = "1:a/s".into();
        let record = Write::Record { session: s.clone(), record: b"r".to_vec(), ttl_secs: None };
        journal.write(&[record]).await.expect("write");
        write_messages(&journal, &s, 1, 100).await;
        let grown = wal();
        assert!(grown > 100 * 4096, "one page per write at least, none checkpointed: {grown}");
        write_messages(&journal, &s, 101, 100).await;
        assert!(wal() > grown + 100 * 4096, "the log grows while nobody tidies");
        let grown = wal();
        journal.tidy().expect("tidy");
        journal.tidy_between_writes().expect("tidy");
        // The tidy's own write started the log again: one frame, page 1.
        assert_eq!(journal.tidy.frames(), 1);
        write_messages(&journal, &s, 201, 100).await;
        assert_eq!(wal(), grown, "the log started again from its beginning");
        // 100 writes after the tidy; 300 more reach the limit, and the last of them checkpoints.
        write_messages(&journal, &s, 301, 300).await;
        let at_limit = wal();
        write_messages(&journal, &s, 601, 100).await;
        assert_eq!(wal(), at_limit, "the write at the limit checkpointed: the log started again");
        let loaded = journal.load(&s).await.expect("load").expect("the session");
        assert_eq!(loaded.messages.len(), 700, "every message is there");
        drop(journal);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
