//! Durable streams and dead letters (`broker::streams`) in a SQLite file of its own
//! (`<data_dir>/streams.db`): [`SqliteStreams`].
//!
//! Three tables: `streams` (a stream's epoch, last `seq` and when it was last appended to, Unix
//! ms), `stream_entries` (its kept messages by `seq`) and `dead_letters` (numbered by SQLite,
//! never reused). An append batch is one transaction; it trims each stream it appends to to
//! `max_len` messages, in steps (reads leave out what a stream holds beyond them).
//!
//! What aged out is deleted when the file opens and inside an append at most once a second;
//! reads never return it meanwhile: messages published `max_age_secs` ago, streams nothing was
//! appended to for as long (less a 16th of it at most: when a stream was last appended to is
//! saved at that resolution, at most a second, so most appends leave its index alone), and
//! dead letters beyond [`DEAD_LETTERS_KEPT`].

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};

use broker::relations::BoxFuture;
use broker::streams::{Append, DeadLetter, Entry, Replay, Retention, Stamp, StreamStore};
use rusqlite::{OptionalExtension, params};
use sqlx::Row;
use sqlx::sqlite::SqlitePool;

use crate::tidy::Tidy;
use crate::{SyncWriter, db, now_ms};

/// How many messages beyond its `max_len` a stream may hold before it is trimmed (see
/// [`trim_due`]).
const TRIM_STEP: i64 = 64;

/// What the tables below are (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 1;

/// Most dead letters kept: the oldest go first.
pub const DEAD_LETTERS_KEPT: i64 = 100_000;

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

/// Durable streams in a SQLite file (see the module's documentation). Clones share the pool
/// (reads) and the writing connection; a write runs on the caller's thread.
#[derive(Debug, Clone)]
pub struct SqliteStreams {
    pool: SqlitePool,
    writer: SyncWriter,
    retention: Retention,
    /// When what aged out was last deleted (Unix ms): at most once a second, inside an append.
    swept_at: std::sync::Arc<AtomicI64>,
    /// Its checkpoints ([`StreamStore::tidy`]).
    tidy: std::sync::Arc<Tidy>,
}

type Tx<'c> = rusqlite::Transaction<'c>;

/// Where a stream of a batch stands: its epoch and last `seq` so far.
#[derive(Debug, Clone, Copy)]
struct Head {
    epoch: i64,
    seq: i64,
    /// Its `seq` before this batch.
    from: i64,
    /// When it was last appended to, as saved (0 for a stream that starts).
    last_ms: i64,
    /// Whether this batch starts it (again).
    starts: bool,
}

impl SqliteStreams {
    /// Opens the streams at `path` keeping what `retention` allows, creating the file
    /// (owner-only) and its tables if needed, and deletes what aged out while it was closed.
    pub async fn open(path: &Path, retention: Retention) -> Result<SqliteStreams, String> {
        let named = |e: &dyn std::fmt::Display| format!("streams {}: {e}", path.display());
        let pool = crate::open(path, &SCHEMA).await.map_err(|e| named(&e))?;
        let writer = SyncWriter::open(path).map_err(|e| named(&e))?;
        // Checkpoints wait for the disk: they are left out of appends (see `tidy`).
        let tidy =
            std::sync::Arc::new(Tidy::open(path, &writer, "the streams", SCHEMA_VERSION).map_err(|e| named(&e))?);
        let streams = SqliteStreams { pool, writer, retention, swept_at: Default::default(), tidy };
        streams.sweep().await.map_err(|e| named(&e))?;
        Ok(streams)
    }

    /// Deletes the messages and streams that aged out and the dead letters beyond
    /// [`DEAD_LETTERS_KEPT`].
    pub async fn sweep(&self) -> Result<(), String> {
        let now = now_ms();
        self.writer.transaction(|tx| sweep(tx, self.cutoff(now)))?;
        self.swept_at.store(now, Ordering::Relaxed);
        Ok(())
    }

    /// How far behind the last append a stream's saved `last_ms` may be: a 16th of the
    /// retention's age, at most a second. Most appends then leave `streams_by_last` alone; a
    /// stream may be forgotten that much before its age has passed since its last append.
    fn moved_on_ms(&self) -> i64 {
        (int(self.retention.max_age_secs.saturating_mul(1000)) / 16).min(1000)
    }

    /// The instant at or before which a message or a stream's last append has aged out.
    fn cutoff(&self, now: i64) -> i64 {
        now.saturating_sub(int(self.retention.max_age_secs.saturating_mul(1000)))
    }

    /// Appends in one transaction, on the caller's thread (see [`SyncWriter`]).
    fn push(&self, appends: &[Append]) -> Result<Vec<Stamp>, String> {
        let now = now_ms();
        let cutoff = self.cutoff(now);
        let sweep_due = now - self.swept_at.load(Ordering::Relaxed) >= 1000;
        if sweep_due {
            self.swept_at.store(now, Ordering::Relaxed);
        }
        self.writer
            .transaction(|tx| {
                if sweep_due {
                    sweep(tx, cutoff)?;
                }
                let mut heads = heads(tx, &names(appends), now, cutoff)?;
                let stamps: Vec<Stamp> = appends.iter().map(|a| stamp(heads.get_mut(&*a.stream))).collect();
                for (name, head) in &heads {
                    if head.starts {
                        // What is left of a stream that starts again.
                        tx.prepare_cached("DELETE FROM stream_entries WHERE name = ?1")?.execute([name])?;
                    }
                }
                let mut keep =
                    tx.prepare_cached("INSERT INTO stream_entries (name, seq, at_ms, body) VALUES (?1, ?2, ?3, ?4)")?;
                for (a, s) in appends.iter().zip(&stamps) {
                    keep.execute(params![&*a.stream, int(s.seq), int(a.at_ms), a.body])?;
                }
                save_heads(tx, &heads, now, self.moved_on_ms(), int(self.retention.max_len))?;
                Ok(stamps)
            })
            .and_then(|stamps| self.tidy.wrote().map(|()| stamps))
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
        // What a trim left beyond the newest `max_len` is not kept.
        let kept_after = last.saturating_sub(self.retention.max_len);
        let first = "SELECT seq FROM stream_entries WHERE name = ?1 AND at_ms > ?2 AND seq > ?3 ORDER BY seq LIMIT 1";
        let first = sqlx::query(first)
            .bind(stream)
            .bind(cutoff)
            .bind(int(kept_after))
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?
            .map_or(last + 1, |row| row.get::<i64, _>(0) as u64);
        let rows = sqlx::query(
            "SELECT seq, at_ms, body FROM stream_entries WHERE name = ?1 AND seq > ?2 AND at_ms > ?3 \
             ORDER BY seq LIMIT ?4",
        )
        .bind(stream)
        .bind(int(after.max(kept_after)))
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

    fn add_dead(&self, letters: &[DeadLetter]) -> Result<(), String> {
        self.writer.transaction(|tx| {
            let mut add = tx.prepare_cached(
                "INSERT INTO dead_letters (reason, session, topic, at_ms, body) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for l in letters {
                add.execute(params![l.reason, l.session, l.topic, int(l.at_ms), l.body])?;
            }
            Ok(())
        })?;
        self.tidy.wrote()
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
fn heads<'n>(tx: &Tx<'_>, names: &[&'n str], now: i64, cutoff: i64) -> rusqlite::Result<HashMap<&'n str, Head>> {
    let mut saved = tx.prepare_cached("SELECT epoch, seq, last_ms FROM streams WHERE name = ?1 AND last_ms > ?2")?;
    let mut heads = HashMap::with_capacity(names.len());
    for name in names {
        let head = saved
            .query_row(params![name, cutoff], |row| {
                let seq = row.get(1)?;
                Ok(Head { epoch: row.get(0)?, seq, from: seq, last_ms: row.get(2)?, starts: false })
            })
            .optional()?
            .unwrap_or(Head {
                epoch: broker::streams::new_epoch(now as u64) as i64,
                seq: 0,
                from: 0,
                last_ms: 0,
                starts: true,
            });
        heads.insert(*name, head);
    }
    Ok(heads)
}

/// Saves where each stream stands, appended to `now` (when it was last appended to only once
/// that moved on by `moved_on_ms`), and deletes its messages beyond its newest `max_len`.
fn save_heads(
    tx: &Tx<'_>,
    heads: &HashMap<&str, Head>,
    now: i64,
    moved_on_ms: i64,
    max_len: i64,
) -> rusqlite::Result<()> {
    let mut numbered = tx.prepare_cached("UPDATE streams SET seq = ?2 WHERE name = ?1")?;
    let mut save = tx.prepare_cached(
        "INSERT INTO streams (name, epoch, seq, last_ms) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (name) DO UPDATE SET epoch = excluded.epoch, seq = excluded.seq, last_ms = excluded.last_ms",
    )?;
    let mut trim = tx.prepare_cached("DELETE FROM stream_entries WHERE name = ?1 AND seq <= ?2")?;
    for (name, h) in heads {
        if h.starts || now.saturating_sub(h.last_ms) >= moved_on_ms {
            save.execute(params![name, h.epoch, h.seq, now])?;
        } else {
            numbered.execute(params![name, h.seq])?;
        }
        if trim_due(h.from, h.seq, max_len) {
            trim.execute(params![name, h.seq - max_len])?;
        }
    }
    Ok(())
}

/// Whether a stream that went from `seq` `from` to `to` is trimmed: each time it passes a
/// multiple of [`TRIM_STEP`] beyond its newest `max_len`, so most appends leave its oldest
/// pages alone. It holds up to `TRIM_STEP` messages more than it keeps; reads leave them out.
fn trim_due(from: i64, to: i64, max_len: i64) -> bool {
    let step = |seq: i64| (seq - max_len - 1).div_euclid(TRIM_STEP);
    to > max_len && step(to) != step(from)
}

/// Deletes the streams last appended to at or before `cutoff` with their messages, the messages
/// published at or before it, and the dead letters beyond [`DEAD_LETTERS_KEPT`].
fn sweep(tx: &Tx<'_>, cutoff: i64) -> rusqlite::Result<()> {
    let statements = [
        "DELETE FROM stream_entries WHERE name IN (SELECT name FROM streams WHERE last_ms <= ?1)",
        "DELETE FROM streams WHERE last_ms <= ?1",
        "DELETE FROM stream_entries WHERE at_ms <= ?1",
    ];
    for statement in statements {
        tx.prepare_cached(statement)?.execute([cutoff])?;
    }
    tx.prepare_cached("DELETE FROM dead_letters WHERE id <= (SELECT MAX(id) FROM dead_letters) - ?1")?
        .execute([DEAD_LETTERS_KEPT])?;
    Ok(())
}

impl StreamStore for SqliteStreams {
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

    fn append<'a>(&'a self, appends: &'a [Append]) -> BoxFuture<'a, Result<Vec<Stamp>, String>> {
        Box::pin(async move {
            if appends.is_empty() {
                return Ok(Vec::new());
            }
            self.push(appends).map_err(|e| format!("appending {} message(s) to streams: {e}", appends.len()))
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
            self.add_dead(letters).map_err(|e| format!("writing {} dead letter(s): {e}", letters.len()))
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

    #[test]
    fn a_stream_is_trimmed_each_time_it_passes_a_step_beyond_what_it_keeps() {
        assert!(!trim_due(0, 5, 5), "within what it keeps");
        assert!(trim_due(5, 6, 5), "one beyond");
        assert!(!trim_due(6, 7, 5), "then not until the next step");
        assert!(!trim_due(7, 5 + TRIM_STEP, 5));
        assert!(trim_due(5 + TRIM_STEP, 6 + TRIM_STEP, 5), "a step on");
        assert!(trim_due(0, 1_000_000, 5), "a batch that passes many steps at once");
        assert!(!trim_due(i64::MAX - 1, i64::MAX, i64::MAX), "at the bounds");
        assert!(!trim_due(0, i64::MAX, i64::MAX));
    }

    #[tokio::test]
    async fn appends_leave_the_checkpoint_to_tidy_which_starts_the_log_again() {
        let dir = std::env::temp_dir().join(format!("hermes-streams-tidy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let path = dir.join("streams.db");
        let wal = || std::fs::metadata(dir.join("streams.db-wal")).map(|m| m.len()).unwrap_or(0);
        let streams = SqliteStreams::open(&path, Retention::default()).await.expect("open");
        let append = |n: u32| {
            let streams = &streams;
            async move {
                for _ in 0..n {
                    let a = Append { stream: "s".into(), at_ms: now_ms() as u64, body: vec![7u8; 600] };
                    streams.append(&[a]).await.expect("append");
                }
            }
        };
        append(100).await;
        let grown = wal();
        assert!(grown > 100 * 4096, "one page per append at least, none checkpointed: {grown}");
        append(100).await;
        assert!(wal() > grown + 100 * 4096, "the log grows while nobody tidies");
        let grown = wal();
        streams.tidy().expect("tidy");
        streams.tidy_between_writes().expect("tidy");
        assert_eq!(streams.tidy.frames(), 1, "the tidy's own write started the log again");
        append(100).await;
        assert_eq!(wal(), grown, "the log started again from its beginning");
        assert_eq!(streams.read("s", 0, 1000).await.expect("read").last, 300);
        drop(streams);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
