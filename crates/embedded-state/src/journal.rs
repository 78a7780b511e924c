//! The session journal (`broker::journal`) in a SQLite file of its own: [`SqliteJournal`].
//!
//! Tables: `sessions` (a session's record and when it expires, Unix ms, `NULL` for never),
//! `session_messages` (its kept messages by entry), `session_inbound` (its inbound QoS 2 ids
//! awaiting their PUBREL), `session_cursors` (how far it got in each durable stream) and
//! `retained`. The database runs in WAL mode with `synchronous = NORMAL` (see the crate's
//! documentation).
//!
//! Expired sessions are deleted with their messages, ids and cursors when the journal opens,
//! inside a write at most once a second, and by [`SqliteJournal::sweep_expired`]; until then
//! `load` does not see them, and a record written again after its expiry starts without the old
//! messages, ids and cursors. A message (an id, a cursor) is kept only if its session has a live
//! record: one routed to a session that has expired or ended is dropped, not left behind where
//! nothing would delete it.

use std::path::Path;
use std::sync::atomic::Ordering;

use broker::journal::{SessionJournal, Stored, Write};
use broker::relations::BoxFuture;
use sqlx::Row;
use sqlx::sqlite::SqlitePool;

use crate::{Writer, db, now_ms};

/// The session journal in a SQLite file (see the module's documentation). Clones share the
/// pool.
#[derive(Debug, Clone)]
pub struct SqliteJournal {
    pool: SqlitePool,
    /// The connection batches are written on, held (a pool's hand-out per batch costs more
    /// than the batch).
    writer: Writer,
    /// When expired sessions were last swept (Unix ms): at most once a second, inside a write.
    swept_at: std::sync::Arc<std::sync::atomic::AtomicI64>,
}

const SCHEMA: [&str; 6] = [
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
];

/// The tables holding a session's rows besides `sessions`, deleted with it.
const SESSION_TABLES: [&str; 3] = ["session_messages", "session_inbound", "session_cursors"];

impl SqliteJournal {
    /// Opens the journal at `path`, creating the file (owner-only) and its tables if needed,
    /// and deletes the sessions that expired while it was closed.
    pub async fn open(path: &Path) -> Result<SqliteJournal, String> {
        let named = |e: &dyn std::fmt::Display| format!("session journal {}: {e}", path.display());
        let (pool, writer) = crate::open(path, &SCHEMA).await.map_err(|e| named(&e))?;
        let journal = SqliteJournal { pool, writer, swept_at: Default::default() };
        journal.sweep_expired().await.map_err(|e| named(&e))?;
        Ok(journal)
    }

    /// Deletes the sessions whose expiry has passed, with their messages, ids and cursors;
    /// returns how many.
    pub async fn sweep_expired(&self) -> Result<u64, String> {
        let mut conn = self.writer.lock().await;
        let mut tx = sqlx::Connection::begin_with(&mut **conn, "BEGIN IMMEDIATE").await.map_err(db)?;
        let swept = sweep(&mut tx, now_ms()).await?;
        tx.commit().await.map_err(db)?;
        Ok(swept)
    }

    async fn apply(&self, writes: &[Write]) -> Result<(), String> {
        let now = now_ms();
        let mut conn = self.writer.lock().await;
        // IMMEDIATE: the write lock is taken (or waited for) now, not on a later statement where
        // SQLite could only answer "busy".
        let mut tx = sqlx::Connection::begin_with(&mut **conn, "BEGIN IMMEDIATE").await.map_err(db)?;
        if now - self.swept_at.load(Ordering::Relaxed) >= 1000 {
            sweep(&mut tx, now).await?;
            self.swept_at.store(now, Ordering::Relaxed);
        }
        let mut i = 0;
        while i < writes.len() {
            // Runs of messages and of finished messages go in one statement each: SQLite is
            // fast, a statement's trip through the driver is not.
            let run = writes[i..].iter().take(RUN).take_while(|w| same_kind(w, &writes[i])).count().max(1);
            match &writes[i] {
                Write::Message { .. } => keep_messages(&mut tx, &writes[i..i + run], now).await?,
                Write::Done { .. } => forget_messages(&mut tx, &writes[i..i + run]).await?,
                w => apply_one(&mut tx, w, now).await?,
            }
            i += run;
        }
        tx.commit().await.map_err(db)
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

/// Most writes one statement carries (SQLite takes at least 999 parameters a statement).
const RUN: usize = 300;

fn same_kind(a: &Write, b: &Write) -> bool {
    matches!((a, b), (Write::Message { .. }, Write::Message { .. }) | (Write::Done { .. }, Write::Done { .. }))
}

type Tx<'c> = sqlx::Transaction<'c, sqlx::Sqlite>;

/// Messages kept in one statement; those of sessions without a live record are left out.
async fn keep_messages(tx: &mut Tx<'_>, run: &[Write], now: i64) -> Result<(), String> {
    let mut q = sqlx::QueryBuilder::new(
        "INSERT INTO session_messages (session, entry, body) SELECT v.column1, v.column2, v.column3 FROM (",
    );
    q.push_values(run, |mut row, w| {
        if let Write::Message { session, entry, body } = w {
            row.push_bind(&**session).push_bind(*entry as i64).push_bind(body.as_slice());
        }
    });
    q.push(
        ") AS v WHERE EXISTS (SELECT 1 FROM sessions s WHERE s.session = v.column1 \
         AND (s.expires_at_ms IS NULL OR s.expires_at_ms > ",
    );
    q.push_bind(now);
    q.push(")) ON CONFLICT (session, entry) DO UPDATE SET body = excluded.body");
    q.build().execute(&mut **tx).await.map_err(db)?;
    Ok(())
}

/// Finished messages forgotten in one statement.
async fn forget_messages(tx: &mut Tx<'_>, run: &[Write]) -> Result<(), String> {
    let mut q = sqlx::QueryBuilder::new("DELETE FROM session_messages WHERE (session, entry) IN (");
    q.push_values(run, |mut row, w| {
        if let Write::Done { session, entry } = w {
            row.push_bind(&**session).push_bind(*entry as i64);
        }
    });
    q.push(")");
    q.build().execute(&mut **tx).await.map_err(db)?;
    Ok(())
}

/// A write of another kind, in its own statement(s).
async fn apply_one(tx: &mut Tx<'_>, w: &Write, now: i64) -> Result<(), String> {
    let query = match w {
        Write::Record { session, record, ttl_secs } => {
            // An expired record not swept yet: its messages, ids and cursors go before it lives
            // again.
            for table in SESSION_TABLES {
                let sql = format!(
                    "DELETE FROM {table} WHERE session = ?1 \
                     AND EXISTS (SELECT 1 FROM sessions WHERE session = ?1 AND expires_at_ms <= ?2)"
                );
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(&**session)
                    .bind(now)
                    .execute(&mut **tx)
                    .await
                    .map_err(db)?;
            }
            sqlx::query(
                "INSERT INTO sessions (session, record, expires_at_ms) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (session) DO UPDATE SET record = excluded.record, expires_at_ms = excluded.expires_at_ms",
            )
            .bind(&**session)
            .bind(record.as_slice())
            .bind(ttl_secs.map(|t| now + i64::from(t) * 1000))
        }
        Write::Message { .. } => return keep_messages(tx, std::slice::from_ref(w), now).await,
        Write::Done { .. } => return forget_messages(tx, std::slice::from_ref(w)).await,
        Write::Touch { session, ttl_secs } => sqlx::query("UPDATE sessions SET expires_at_ms = ?2 WHERE session = ?1")
            .bind(&**session)
            .bind(now + i64::from(*ttl_secs) * 1000),
        Write::Inbound { session, packet_id, held: true } => sqlx::query(
            "INSERT INTO session_inbound (session, packet_id) SELECT ?1, ?2 WHERE EXISTS (SELECT 1 FROM sessions \
             WHERE session = ?1 AND (expires_at_ms IS NULL OR expires_at_ms > ?3)) ON CONFLICT DO NOTHING",
        )
        .bind(&**session)
        .bind(i64::from(*packet_id))
        .bind(now),
        Write::Inbound { session, packet_id, held: false } => {
            sqlx::query("DELETE FROM session_inbound WHERE session = ?1 AND packet_id = ?2")
                .bind(&**session)
                .bind(i64::from(*packet_id))
        }
        Write::Cursor { session, stream, cursor } => sqlx::query(
            "INSERT INTO session_cursors (session, stream, cursor) SELECT ?1, ?2, ?3 WHERE EXISTS (SELECT 1 \
             FROM sessions WHERE session = ?1 AND (expires_at_ms IS NULL OR expires_at_ms > ?4)) \
             ON CONFLICT (session, stream) DO UPDATE SET cursor = excluded.cursor",
        )
        .bind(&**session)
        .bind(&**stream)
        .bind(cursor.as_slice())
        .bind(now),
        Write::Ended { session } => {
            for table in SESSION_TABLES {
                sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table} WHERE session = ?1")))
                    .bind(&**session)
                    .execute(&mut **tx)
                    .await
                    .map_err(db)?;
            }
            sqlx::query("DELETE FROM sessions WHERE session = ?1").bind(&**session)
        }
        Write::Retained { topic, body: Some(body) } => sqlx::query(
            "INSERT INTO retained (topic, body) VALUES (?1, ?2) ON CONFLICT (topic) DO UPDATE SET body = excluded.body",
        )
        .bind(&**topic)
        .bind(body.as_slice()),
        Write::Retained { topic, body: None } => sqlx::query("DELETE FROM retained WHERE topic = ?1").bind(&**topic),
    };
    query.execute(&mut **tx).await.map_err(db)?;
    Ok(())
}

impl SessionJournal for SqliteJournal {
    fn write<'a>(&'a self, writes: &'a [Write]) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            if writes.is_empty() {
                return Ok(());
            }
            self.apply(writes)
                .await
                .map_err(|e| format!("writing {} change(s) to the session journal: {e}", writes.len()))
        })
    }

    fn load<'a>(&'a self, session: &'a str) -> BoxFuture<'a, Result<Option<Stored>, String>> {
        Box::pin(async move { self.read(session).await.map_err(|e| format!("loading session {session:?}: {e}")) })
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
async fn sweep(tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>, now: i64) -> Result<u64, String> {
    for table in SESSION_TABLES {
        let sql =
            format!("DELETE FROM {table} WHERE session IN (SELECT session FROM sessions WHERE expires_at_ms <= ?1)");
        sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now).execute(&mut **tx).await.map_err(db)?;
    }
    let done =
        sqlx::query("DELETE FROM sessions WHERE expires_at_ms <= ?1").bind(now).execute(&mut **tx).await.map_err(db)?;
    Ok(done.rows_affected())
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
}
