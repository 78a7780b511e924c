//! Durable streams and dead letters (`broker::streams`) in a SQLite file of its own
//! (`<data_dir>/streams.db`): [`SqliteStreams`].
//!
//! Three tables: `streams` (a stream's epoch, last `seq` and when it was last appended to, Unix
//! ms), `stream_entries` (its kept messages by `seq`) and `dead_letters` (numbered by SQLite,
//! never reused). An append batch is one transaction; it trims each stream it appends to to
//! `max_len` messages. What aged out (messages published `max_age_secs` ago, streams nothing
//! was appended to for as long, dead letters beyond [`DEAD_LETTERS_KEPT`]) is deleted when the
//! file opens and inside an append at most once a second; reads never return it meanwhile.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};

use broker::relations::BoxFuture;
use broker::streams::{Append, DeadLetter, Entry, Replay, Retention, Stamp, StreamStore};
use sqlx::Row;
use sqlx::sqlite::SqlitePool;

use crate::{Writer, db, now_ms};

/// Most dead letters kept: the oldest go first.
pub const DEAD_LETTERS_KEPT: i64 = 100_000;

/// Most rows one statement carries (SQLite takes at least 999 parameters a statement).
const RUN: usize = 150;

const SCHEMA: [&str; 5] = [
    "CREATE TABLE IF NOT EXISTS streams (name TEXT PRIMARY KEY, epoch INTEGER NOT NULL, seq INTEGER NOT NULL, \
     last_ms INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS streams_by_last ON streams (last_ms)",
    // A rowid table: bodies may be large.
    "CREATE TABLE IF NOT EXISTS stream_entries (name TEXT NOT NULL, seq INTEGER NOT NULL, at_ms INTEGER NOT NULL, \
     body BLOB NOT NULL, PRIMARY KEY (name, seq))",
    "CREATE INDEX IF NOT EXISTS stream_entries_by_age ON stream_entries (at_ms)",
    "CREATE TABLE IF NOT EXISTS dead_letters (id INTEGER PRIMARY KEY AUTOINCREMENT, reason TEXT NOT NULL, \
     session TEXT NOT NULL, topic TEXT NOT NULL, at_ms INTEGER NOT NULL, body BLOB NOT NULL)",
];

/// Durable streams in a SQLite file (see the module's documentation). Clones share the pool.
#[derive(Debug, Clone)]
pub struct SqliteStreams {
    pool: SqlitePool,
    writer: Writer,
    retention: Retention,
    /// When what aged out was last deleted (Unix ms): at most once a second, inside an append.
    swept_at: std::sync::Arc<AtomicI64>,
}

type Tx<'c> = sqlx::Transaction<'c, sqlx::Sqlite>;

/// Where a stream of a batch stands: its epoch and last `seq` so far.
#[derive(Debug, Clone, Copy)]
struct Head {
    epoch: i64,
    seq: i64,
    /// Whether this batch starts it (again).
    starts: bool,
}

impl SqliteStreams {
    /// Opens the streams at `path` keeping what `retention` allows, creating the file
    /// (owner-only) and its tables if needed, and deletes what aged out while it was closed.
    pub async fn open(path: &Path, retention: Retention) -> Result<SqliteStreams, String> {
        let named = |e: &dyn std::fmt::Display| format!("streams {}: {e}", path.display());
        let (pool, writer) = crate::open(path, &SCHEMA).await.map_err(|e| named(&e))?;
        let streams = SqliteStreams { pool, writer, retention, swept_at: Default::default() };
        streams.sweep().await.map_err(|e| named(&e))?;
        Ok(streams)
    }

    /// Deletes the messages and streams that aged out and the dead letters beyond
    /// [`DEAD_LETTERS_KEPT`].
    pub async fn sweep(&self) -> Result<(), String> {
        let mut conn = self.writer.lock().await;
        let mut tx = sqlx::Connection::begin_with(&mut **conn, "BEGIN IMMEDIATE").await.map_err(db)?;
        let now = now_ms();
        sweep(&mut tx, self.cutoff(now)).await?;
        tx.commit().await.map_err(db)?;
        self.swept_at.store(now, Ordering::Relaxed);
        Ok(())
    }

    /// The instant at or before which a message or a stream's last append has aged out.
    fn cutoff(&self, now: i64) -> i64 {
        now.saturating_sub(int(self.retention.max_age_secs.saturating_mul(1000)))
    }

    async fn push(&self, appends: &[Append]) -> Result<Vec<Stamp>, String> {
        let now = now_ms();
        let mut conn = self.writer.lock().await;
        // IMMEDIATE: the write lock is taken (or waited for) now, not on a later statement where
        // SQLite could only answer "busy".
        let mut tx = sqlx::Connection::begin_with(&mut **conn, "BEGIN IMMEDIATE").await.map_err(db)?;
        if now - self.swept_at.load(Ordering::Relaxed) >= 1000 {
            sweep(&mut tx, self.cutoff(now)).await?;
            self.swept_at.store(now, Ordering::Relaxed);
        }
        let mut heads = heads(&mut tx, &names(appends), now, self.cutoff(now)).await?;
        let stamps: Vec<Stamp> = appends.iter().map(|a| stamp(heads.get_mut(&*a.stream))).collect();
        let heads: Vec<(&str, Head)> = heads.into_iter().collect();
        let starting: Vec<&str> = heads.iter().filter(|(_, h)| h.starts).map(|(name, _)| *name).collect();
        forget_entries(&mut tx, &starting).await?;
        keep_entries(&mut tx, appends, &stamps).await?;
        save_heads(&mut tx, &heads, now).await?;
        trim_length(&mut tx, &heads, int(self.retention.max_len)).await?;
        tx.commit().await.map_err(db)?;
        Ok(stamps)
    }

    async fn replay(&self, stream: &str, after: u64, limit: usize) -> Result<Replay, String> {
        let cutoff = self.cutoff(now_ms());
        // One read transaction: the stream and its messages of one moment.
        let mut tx = self.pool.begin().await.map_err(db)?;
        let head = sqlx::query("SELECT epoch, seq FROM streams WHERE name = ?1 AND last_ms > ?2")
            .bind(stream)
            .bind(cutoff)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
        let Some(head) = head else { return Ok(Replay::default()) };
        let (epoch, last) = (head.get::<i64, _>(0) as u64, head.get::<i64, _>(1) as u64);
        let first = sqlx::query("SELECT seq FROM stream_entries WHERE name = ?1 AND at_ms > ?2 ORDER BY seq LIMIT 1")
            .bind(stream)
            .bind(cutoff)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?
            .map_or(last + 1, |row| row.get::<i64, _>(0) as u64);
        let rows = sqlx::query(
            "SELECT seq, at_ms, body FROM stream_entries WHERE name = ?1 AND seq > ?2 AND at_ms > ?3 \
             ORDER BY seq LIMIT ?4",
        )
        .bind(stream)
        .bind(int(after))
        .bind(cutoff)
        .bind(int(limit as u64))
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        let entries = rows.into_iter().map(|r| Entry {
            seq: r.get::<i64, _>(0) as u64,
            at_ms: r.get::<i64, _>(1) as u64,
            body: r.get(2),
        });
        Ok(Replay { epoch, last, entries: entries.collect(), first })
    }

    async fn add_dead(&self, letters: &[DeadLetter]) -> Result<(), String> {
        let mut conn = self.writer.lock().await;
        let mut tx = sqlx::Connection::begin_with(&mut **conn, "BEGIN IMMEDIATE").await.map_err(db)?;
        for run in letters.chunks(RUN) {
            let mut q = sqlx::QueryBuilder::new("INSERT INTO dead_letters (reason, session, topic, at_ms, body) ");
            q.push_values(run, |mut row, l| {
                row.push_bind(&l.reason)
                    .push_bind(&l.session)
                    .push_bind(&l.topic)
                    .push_bind(int(l.at_ms))
                    .push_bind(l.body.as_slice());
            });
            q.build().execute(&mut *tx).await.map_err(db)?;
        }
        tx.commit().await.map_err(db)
    }

    async fn read_dead(&self, after: u64, limit: usize) -> Result<Vec<(u64, DeadLetter)>, String> {
        let rows = sqlx::query(
            "SELECT id, reason, session, topic, at_ms, body FROM dead_letters WHERE id > ?1 ORDER BY id LIMIT ?2",
        )
        .bind(int(after))
        .bind(int(limit as u64))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let letter = |r: sqlx::sqlite::SqliteRow| {
            let at_ms = r.get::<i64, _>(4) as u64;
            let l = DeadLetter { reason: r.get(1), session: r.get(2), topic: r.get(3), at_ms, body: r.get(5) };
            (r.get::<i64, _>(0) as u64, l)
        };
        Ok(rows.into_iter().map(letter).collect())
    }
}

/// A u64 as SQLite's signed integer, the largest one for those above it.
fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The streams a batch appends to, each once.
fn names(appends: &[Append]) -> Vec<&str> {
    let mut seen = HashSet::new();
    appends.iter().map(|a| &*a.stream).filter(|name| seen.insert(*name)).collect()
}

/// The next stamp of the stream at `head`.
fn stamp(head: Option<&mut Head>) -> Stamp {
    let Some(head) = head else { return Stamp { seq: 0, epoch: 0 } };
    head.seq += 1;
    Stamp { seq: head.seq as u64, epoch: head.epoch as u64 }
}

/// Where each of `names` stands before the batch: as saved, or starting (again) under a new
/// epoch if it is not saved or aged out (last appended to at or before `cutoff`).
async fn heads<'n>(
    tx: &mut Tx<'_>,
    names: &[&'n str],
    now: i64,
    cutoff: i64,
) -> Result<HashMap<&'n str, Head>, String> {
    let mut saved: HashMap<String, (i64, i64)> = HashMap::new();
    for run in names.chunks(RUN) {
        let mut q = sqlx::QueryBuilder::new("SELECT name, epoch, seq FROM streams WHERE last_ms > ");
        q.push_bind(cutoff).push(" AND name IN (");
        let mut list = q.separated(", ");
        for name in run {
            list.push_bind(*name);
        }
        q.push(")");
        for row in q.build().fetch_all(&mut **tx).await.map_err(db)? {
            saved.insert(row.get(0), (row.get(1), row.get(2)));
        }
    }
    let head = |name: &str| match saved.get(name) {
        Some(&(epoch, seq)) => Head { epoch, seq, starts: false },
        None => Head { epoch: broker::streams::new_epoch(now as u64) as i64, seq: 0, starts: true },
    };
    Ok(names.iter().map(|name| (*name, head(name))).collect())
}

/// Deletes what is left of streams that start again.
async fn forget_entries(tx: &mut Tx<'_>, names: &[&str]) -> Result<(), String> {
    for run in names.chunks(RUN) {
        let mut q = sqlx::QueryBuilder::new("DELETE FROM stream_entries WHERE name IN (");
        let mut list = q.separated(", ");
        for name in run {
            list.push_bind(*name);
        }
        q.push(")");
        q.build().execute(&mut **tx).await.map_err(db)?;
    }
    Ok(())
}

/// Keeps each appended message under its stamp.
async fn keep_entries(tx: &mut Tx<'_>, appends: &[Append], stamps: &[Stamp]) -> Result<(), String> {
    let rows: Vec<(&Append, &Stamp)> = appends.iter().zip(stamps).collect();
    for run in rows.chunks(RUN) {
        let mut q = sqlx::QueryBuilder::new("INSERT INTO stream_entries (name, seq, at_ms, body) ");
        q.push_values(run, |mut row, (a, s)| {
            row.push_bind(&*a.stream).push_bind(int(s.seq)).push_bind(int(a.at_ms)).push_bind(a.body.as_slice());
        });
        q.build().execute(&mut **tx).await.map_err(db)?;
    }
    Ok(())
}

/// Saves where each stream stands, appended to `now`.
async fn save_heads(tx: &mut Tx<'_>, heads: &[(&str, Head)], now: i64) -> Result<(), String> {
    for run in heads.chunks(RUN) {
        let mut q = sqlx::QueryBuilder::new("INSERT INTO streams (name, epoch, seq, last_ms) ");
        q.push_values(run, |mut row, (name, h)| {
            row.push_bind(*name).push_bind(h.epoch).push_bind(h.seq).push_bind(now);
        });
        q.push(
            " ON CONFLICT (name) DO UPDATE SET epoch = excluded.epoch, seq = excluded.seq, \
             last_ms = excluded.last_ms",
        );
        q.build().execute(&mut **tx).await.map_err(db)?;
    }
    Ok(())
}

/// Deletes the messages of each stream beyond its newest `max_len`.
async fn trim_length(tx: &mut Tx<'_>, heads: &[(&str, Head)], max_len: i64) -> Result<(), String> {
    let over: Vec<(&str, i64)> =
        heads.iter().filter(|(_, h)| h.seq > max_len).map(|(name, h)| (*name, h.seq - max_len)).collect();
    for run in over.chunks(RUN) {
        let mut q = sqlx::QueryBuilder::new("DELETE FROM stream_entries WHERE ");
        for (i, (name, upto)) in run.iter().enumerate() {
            q.push(if i == 0 { "(name = " } else { " OR (name = " });
            q.push_bind(*name).push(" AND seq <= ").push_bind(*upto).push(")");
        }
        q.build().execute(&mut **tx).await.map_err(db)?;
    }
    Ok(())
}

/// Deletes the streams last appended to at or before `cutoff` with their messages, the messages
/// published at or before it, and the dead letters beyond [`DEAD_LETTERS_KEPT`].
async fn sweep(tx: &mut Tx<'_>, cutoff: i64) -> Result<(), String> {
    let statements = [
        "DELETE FROM stream_entries WHERE name IN (SELECT name FROM streams WHERE last_ms <= ?1)",
        "DELETE FROM streams WHERE last_ms <= ?1",
        "DELETE FROM stream_entries WHERE at_ms <= ?1",
    ];
    for statement in statements {
        sqlx::query(statement).bind(cutoff).execute(&mut **tx).await.map_err(db)?;
    }
    sqlx::query("DELETE FROM dead_letters WHERE id <= (SELECT MAX(id) FROM dead_letters) - ?1")
        .bind(DEAD_LETTERS_KEPT)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    Ok(())
}

impl StreamStore for SqliteStreams {
    fn append<'a>(&'a self, appends: &'a [Append]) -> BoxFuture<'a, Result<Vec<Stamp>, String>> {
        Box::pin(async move {
            if appends.is_empty() {
                return Ok(Vec::new());
            }
            self.push(appends).await.map_err(|e| format!("appending {} message(s) to streams: {e}", appends.len()))
        })
    }

    fn read<'a>(&'a self, stream: &'a str, after: u64, limit: usize) -> BoxFuture<'a, Result<Replay, String>> {
        Box::pin(async move {
            self.replay(stream, after, limit).await.map_err(|e| format!("reading stream {stream:?}: {e}"))
        })
    }

    fn dead_letter<'a>(&'a self, letters: &'a [DeadLetter]) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            if letters.is_empty() {
                return Ok(());
            }
            self.add_dead(letters).await.map_err(|e| format!("writing {} dead letter(s): {e}", letters.len()))
        })
    }

    fn dead_letters(&self, after: u64, limit: usize) -> BoxFuture<'_, Result<Vec<(u64, DeadLetter)>, String>> {
        Box::pin(async move { self.read_dead(after, limit).await.map_err(|e| format!("reading dead letters: {e}")) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn count(s: &SqliteStreams, table: &str) -> i64 {
        let sql = format!("SELECT COUNT(*) FROM {table}");
        sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_one(&s.pool).await.expect("count").get(0)
    }

    #[tokio::test]
    async fn what_aged_out_is_deleted_when_the_file_opens() {
        let dir = std::env::temp_dir().join(format!("hermes-streams-sweep-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let file = dir.join("streams.db");
        let retention = Retention { max_len: 5, max_age_secs: 1 };
        let streams = SqliteStreams::open(&file, retention).await.expect("open");
        let at_ms = now_ms() as u64;
        let batch = [
            Append { stream: "old".into(), at_ms: at_ms - 2000, body: b"old".to_vec() },
            Append { stream: "new".into(), at_ms, body: b"new".to_vec() },
        ];
        streams.append(&batch).await.expect("append");
        assert_eq!(count(&streams, "stream_entries").await, 2, "not swept yet (at most once a second)");
        drop(streams);

        let streams = SqliteStreams::open(&file, retention).await.expect("reopen");
        assert_eq!(count(&streams, "stream_entries").await, 1, "the aged-out message is gone");
        let replay = streams.read("new", 0, 10).await.expect("read");
        assert_eq!(replay.entries, [Entry { seq: 1, at_ms, body: b"new".to_vec() }], "kept across a reopen");
        drop(streams);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
