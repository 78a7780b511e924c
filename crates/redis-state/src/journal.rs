//! The session journal (`broker::journal`) on Redis: one hash per session
//! (`wire::keys::session_journal`), field `r` its record, each kept message under its entry
//! as 8 bytes big-endian, each inbound QoS 2 id awaiting its PUBREL as `i` and 2 bytes, and the
//! session's cursor in each durable stream as `stream-cursor:` and the stream's name (never 1,
//! 3 or 8 bytes long, so never taken for one of the others). HGETALL reads a session in one
//! step; a batch of writes is one pipeline, one round trip. Sessions are apart, so a batch's
//! writes go by session, each session's in order: a run of changes to its messages, inbound
//! ids and cursors in one script call, any other change in a command of its own. Each command
//! or script works on one session's hash (one hash slot on Redis Cluster), so a batch cut short
//! by a lost connection leaves each session as it was at some point of the batch (the edge
//! tries the whole batch again, and acknowledges nothing of it before it is written).
//!
//! A parked session's expiry is the hash's TTL (EXPIRE at each record with one, PERSIST at each
//! record without), so Redis forgets the record, its messages and its cursors together. A
//! message (an inbound id, a cursor) is kept only while the hash holds a record, checked inside
//! Redis by a small script: a message routed to a session that has just expired or ended would
//! otherwise recreate the hash without a TTL and without a record, never to be read or deleted.
//! So a hash always holds `r`, and `load` answers `None` for one that does not (something else
//! wrote it).

use std::sync::Arc;

use crate::RedisConn;
use broker::journal::{SessionJournal, Stored, Write};
use broker::relations::BoxFuture;

/// The hash field holding the session's record.
const RECORD: &[u8] = b"r";

/// KEYS: the session's hash. ARGV: how many fields to set (n), n pairs of a field (a message's,
/// an inbound id's, a cursor's) and its value, then the fields to delete (none of those set);
/// applied only if the session has a record. One HSET and one HDEL (called again for every
/// 1000 arguments past the first: Lua's stack) rather than a call per field,
/// which cost Redis about a microsecond each, more than the change itself.
const FIELDS: &str = concat!(
    "#!lua",
    r"
if redis.call('HEXISTS', KEYS[1], 'r') == 0 then
  return 0
end
local last = 1 + 2 * tonumber(ARGV[1])
for i = 2, last, 1000 do
  redis.call('HSET', KEYS[1], unpack(ARGV, i, math.min(i + 999, last)))
end
for i = last + 1, #ARGV, 1000 do
  redis.call('HDEL', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
return 0"
);

/// KEYS: the session's hash. ARGV: its record, its TTL in seconds (empty: none). Writes the
/// record and the hash's expiry together.
const RECORD_SCRIPT: &str = concat!(
    "#!lua",
    r"
redis.call('HSET', KEYS[1], 'r', ARGV[1])
if ARGV[2] == '' then
  redis.call('PERSIST', KEYS[1])
else
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return 0"
);

/// Persistent sessions on Redis (see the module's documentation).
#[derive(Clone)]
pub struct RedisJournal {
    conn: RedisConn,
    replicas: crate::Replicas,
}

impl std::fmt::Debug for RedisJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisJournal")
    }
}

impl RedisJournal {
    pub fn new(conn: RedisConn) -> Self {
        RedisJournal { conn, replicas: crate::Replicas::default() }
    }

    /// A write counts once `replicas` replicas have it too (see [`crate::Replicas`]).
    pub fn waiting_for(self, replicas: crate::Replicas) -> Self {
        RedisJournal { replicas, ..self }
    }
}

/// The field of an inbound QoS 2 id: `i` and the id, 3 bytes (never 1 like `r` nor 8 like an
/// entry).
fn inbound_field(packet_id: u16) -> [u8; 3] {
    let [hi, lo] = packet_id.to_be_bytes();
    [INBOUND, hi, lo]
}

const INBOUND: u8 = b'i';

/// The field of the session's cursor in durable stream `stream` starts with this: 14 bytes, so a
/// cursor's field is never 1 byte long like `r`, 3 like an inbound id nor 8 like an entry.
const CURSOR: &[u8] = b"stream-cursor:";

fn cursor_field(stream: &str) -> Vec<u8> {
    [CURSOR, stream.as_bytes()].concat()
}

/// The hash field of message `entry`.
fn entry_field(entry: u64) -> [u8; 8] {
    entry.to_be_bytes()
}

/// A change to one field of a session's hash: set to a value, or deleted (`None`).
type FieldChange<'a> = (Vec<u8>, Option<&'a [u8]>);

/// `w` as a change to one field of its session's hash, if it is one (a message, its end, an
/// inbound id, a cursor).
fn field_change(w: &Write) -> Option<FieldChange<'_>> {
    Some(match w {
        Write::Message { entry, body, .. } => (entry_field(*entry).to_vec(), Some(body.as_slice())),
        Write::Done { entry, .. } => (entry_field(*entry).to_vec(), None),
        Write::Inbound { packet_id, held, .. } => (inbound_field(*packet_id).to_vec(), held.then_some(&b"1"[..])),
        Write::Cursor { stream, cursor, .. } => (cursor_field(stream), Some(cursor.as_slice())),
        Write::Record { .. }
        | Write::Ended { .. }
        | Write::Touch { .. }
        | Write::Retained { .. }
        | Write::Will { .. }
        | Write::WillsAre { .. } => return None,
    })
}

/// What a write changes: one key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Target<'a> {
    Session(&'a str),
    Retained,
    Wills(&'a str),
}

impl Target<'_> {
    fn of(w: &Write) -> Target<'_> {
        match w {
            Write::Retained { .. } => Target::Retained,
            Write::Will { node, .. } | Write::WillsAre { node, .. } => Target::Wills(node),
            Write::Record { session, .. }
            | Write::Message { session, .. }
            | Write::Done { session, .. }
            | Write::Inbound { session, .. }
            | Write::Ended { session }
            | Write::Touch { session, .. }
            | Write::Cursor { session, .. } => Target::Session(session),
        }
    }

    fn key(self) -> String {
        match self {
            Target::Session(session) => wire::keys::session_journal(session),
            Target::Retained => wire::keys::RETAINED.to_owned(),
            Target::Wills(node) => wire::keys::node_wills(node),
        }
    }
}

/// `writes` by the key each changes, in the order each key first comes, each key's in their
/// order: keys are apart (a session's hash, the retained messages, a node's wills), so only
/// each one's order counts. Each key is spelled once.
fn by_key(writes: &[Write]) -> Vec<(String, Vec<&Write>)> {
    let mut keys: Vec<(String, Vec<&Write>)> = Vec::new();
    let mut at: std::collections::HashMap<Target<'_>, usize> = std::collections::HashMap::new();
    for w in writes {
        let target = Target::of(w);
        let i = *at.entry(target).or_insert_with(|| {
            keys.push((target.key(), Vec::new()));
            keys.len() - 1
        });
        keys[i].1.push(w);
    }
    keys
}

/// Queues the commands of `writes`, all to `key`, on `pipe`, their replies ignored: a run of
/// field changes is one command (HDEL when it only deletes, else one call of [`FIELDS`]), any
/// other write one command of its own.
fn queue(pipe: &mut redis::Pipeline, key: &str, writes: &[&Write]) {
    let mut run: Vec<FieldChange<'_>> = Vec::new();
    for w in writes {
        match field_change(w) {
            Some(change) => run.push(change),
            None => {
                queue_fields(pipe, key, &mut run);
                queue_one(pipe, key, w);
            }
        }
    }
    queue_fields(pipe, key, &mut run);
}

/// Queues `run`'s field changes to `key` as one command, and empties it: what the run leaves
/// of each field (its last change), the fields set and those deleted apart.
fn queue_fields(pipe: &mut redis::Pipeline, key: &str, run: &mut Vec<FieldChange<'_>>) {
    if run.is_empty() {
        return;
    }
    let mut seen = std::collections::HashSet::with_capacity(run.len());
    let (mut sets, mut deletes) = (Vec::new(), Vec::new());
    for (field, value) in run.iter().rev() {
        if seen.insert(field.as_slice()) {
            match value {
                Some(value) => sets.push((field.as_slice(), *value)),
                None => deletes.push(field.as_slice()),
            }
        }
    }
    if sets.is_empty() {
        pipe.cmd("HDEL").arg(key).arg(&deletes);
    } else {
        pipe.cmd("EVAL").arg(FIELDS).arg(1).arg(key).arg(sets.len());
        for (field, value) in sets.iter().rev() {
            pipe.arg(*field).arg(*value);
        }
        pipe.arg(&deletes);
    }
    pipe.ignore();
    run.clear();
}

/// Queues the command of `w` (not a field change) on `pipe`, its reply ignored.
fn queue_one(pipe: &mut redis::Pipeline, key: &str, w: &Write) {
    match w {
        Write::Record { record, ttl_secs, .. } => {
            let ttl = ttl_secs.map(|t| t.to_string()).unwrap_or_default();
            pipe.cmd("EVAL").arg(RECORD_SCRIPT).arg(1).arg(key).arg(record.as_slice()).arg(ttl);
        }
        Write::Ended { .. } => {
            pipe.cmd("DEL").arg(key);
        }
        Write::Touch { ttl_secs, .. } => {
            pipe.cmd("EXPIRE").arg(key).arg(*ttl_secs);
        }
        Write::Retained { topic, body: Some(body) } => {
            pipe.cmd("HSET").arg(key).arg(&**topic).arg(body.as_slice());
        }
        Write::Retained { topic, body: None } => {
            pipe.cmd("HDEL").arg(key).arg(&**topic);
        }
        Write::Will { link, body: Some(body), .. } => {
            pipe.cmd("HSET").arg(key).arg(&link.to_be_bytes()[..]).arg(body.as_slice());
        }
        Write::Will { link, body: None, .. } => {
            pipe.cmd("HDEL").arg(key).arg(&link.to_be_bytes()[..]);
        }
        Write::WillsAre { wills, .. } => {
            pipe.cmd("DEL").arg(key);
            for chunk in wills.chunks(1000) {
                pipe.ignore().cmd("HSET").arg(key);
                for (link, body) in chunk {
                    pipe.arg(&link.to_be_bytes()[..]).arg(body.as_slice());
                }
            }
        }
        Write::Message { .. } | Write::Done { .. } | Write::Inbound { .. } | Write::Cursor { .. } => {
            let mut run = field_change(w).into_iter().collect();
            return queue_fields(pipe, key, &mut run);
        }
    }
    pipe.ignore();
}

/// When a session's journal expires by its `PTTL` answer `left_ms`, at `now` (Unix ms):
/// `Some(None)` never (-1), `None` if it is gone (-2: a hash always holds its record).
fn expiry_of(left_ms: i64, now: u64) -> Option<Option<u64>> {
    match left_ms {
        -2 => None,
        -1 => Some(None),
        ms => Some(Some(now.saturating_add(u64::try_from(ms).unwrap_or(0)))),
    }
}

/// The wall clock, Unix ms.
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl SessionJournal for RedisJournal {
    fn is_shared(&self) -> bool {
        true
    }

    fn mark<'a>(&'a self, fresh: &'a str) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(crate::mark(&self.conn, wire::keys::JOURNAL_MARK, fresh))
    }

    fn on_this_thread(&self) -> Option<BoxFuture<'static, Result<Arc<dyn SessionJournal>, String>>> {
        let (conn, replicas) = (self.conn.clone(), self.replicas);
        Some(Box::pin(async move {
            let journal: Arc<dyn SessionJournal> =
                Arc::new(RedisJournal::new(conn.another().await?).waiting_for(replicas));
            Ok(journal)
        }))
    }

    fn write<'a>(&'a self, writes: &'a [Write]) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            if writes.is_empty() {
                return Ok(());
            }
            let mut pipe = redis::pipe();
            for (key, writes) in by_key(writes) {
                queue(&mut pipe, &key, &writes);
            }
            self.replicas.wait_in(&mut pipe);
            let failed =
                |e: &dyn std::fmt::Display| format!("writing {} change(s) to the session journal: {e}", writes.len());
            // Every write is ignored: what answers is the WAIT, if any.
            let mut answers: Vec<redis::Value> =
                pipe.query_async(&mut self.conn.clone()).await.map_err(|e| failed(&e))?;
            self.replicas.take_answer(&mut answers).map_err(|e| failed(&e))
        })
    }

    fn load<'a>(&'a self, session: &'a str) -> BoxFuture<'a, Result<Option<Stored>, String>> {
        Box::pin(async move {
            let key = wire::keys::session_journal(session);
            let fields: Vec<(Vec<u8>, Vec<u8>)> = redis::cmd("HGETALL")
                .arg(&key)
                .query_async(&mut self.conn.clone())
                .await
                .map_err(|e| format!("loading {key}: {e}"))?;
            let mut record = None;
            let mut messages = Vec::with_capacity(fields.len().saturating_sub(1));
            let mut inbound = Vec::new();
            let mut cursors = Vec::new();
            for (field, value) in fields {
                match field.as_slice() {
                    RECORD => record = Some(value),
                    [INBOUND, hi, lo] => inbound.push(u16::from_be_bytes([*hi, *lo])),
                    f if f.starts_with(CURSOR) => {
                        let stream = String::from_utf8(f[CURSOR.len()..].to_vec())
                            .map_err(|_| format!("{key}: field {:?} names no stream", f.escape_ascii()))?;
                        cursors.push((stream, value));
                    }
                    f => {
                        let entry = <[u8; 8]>::try_from(f).map_err(|_| {
                            format!(
                                "{key}: field {:?} is neither `r`, an inbound id, a cursor nor an entry",
                                f.escape_ascii()
                            )
                        })?;
                        messages.push((u64::from_be_bytes(entry), value));
                    }
                }
            }
            messages.sort_unstable_by_key(|(entry, _)| *entry);
            inbound.sort_unstable();
            cursors.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
            Ok(record.map(|record| Stored { record, messages, inbound, cursors }))
        })
    }

    fn every_session(&self) -> BoxFuture<'_, Result<broker::journal::ToRestore, String>> {
        Box::pin(async move {
            let pattern = wire::keys::session_journal("*");
            let keys: Vec<String> = match &self.conn {
                // A cursor through the keys, a page at a time.
                RedisConn::Single(..) => {
                    let (mut cursor, mut keys) = (0_u64, Vec::new());
                    loop {
                        let (next, page): (u64, Vec<String>) = redis::cmd("SCAN")
                            .arg(cursor)
                            .arg("MATCH")
                            .arg(&pattern)
                            .arg("COUNT")
                            .arg(1000)
                            .query_async(&mut self.conn.clone())
                            .await
                            .map_err(|e| format!("listing sessions: {e}"))?;
                        keys.extend(page);
                        cursor = next;
                        if cursor == 0 {
                            break keys;
                        }
                    }
                }
                // Every primary answers (redis-rs combines them); SCAN has no such routing.
                RedisConn::Cluster(_) => redis::cmd("KEYS")
                    .arg(&pattern)
                    .query_async(&mut self.conn.clone())
                    .await
                    .map_err(|e| format!("listing sessions: {e}"))?,
            };
            let (head, tail) = pattern.split_once('*').unwrap_or((&pattern, ""));
            let sessions: Vec<String> =
                keys.iter().filter_map(|k| k.strip_prefix(head)?.strip_suffix(tail).map(str::to_owned)).collect();
            let now = wall_ms();
            let mut every = Vec::with_capacity(sessions.len());
            for chunk in sessions.chunks(500) {
                let mut pipe = redis::pipe();
                for session in chunk {
                    pipe.cmd("PTTL").arg(wire::keys::session_journal(session));
                }
                let left: Vec<i64> = pipe
                    .query_async(&mut self.conn.clone())
                    .await
                    .map_err(|e| format!("listing sessions' expiry: {e}"))?;
                // Gone meanwhile: left out.
                for (session, left_ms) in chunk.iter().zip(left) {
                    every.extend(expiry_of(left_ms, now).map(|at| (session.clone(), at)));
                }
            }
            Ok(every)
        })
    }

    fn expires_at<'a>(&'a self, session: &'a str) -> BoxFuture<'a, Result<Option<Option<u64>>, String>> {
        Box::pin(async move {
            let key = wire::keys::session_journal(session);
            let left_ms: i64 = redis::cmd("PTTL")
                .arg(&key)
                .query_async(&mut self.conn.clone())
                .await
                .map_err(|e| format!("{key}: {e}"))?;
            Ok(expiry_of(left_ms, wall_ms()))
        })
    }

    fn wills<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<broker::journal::Wills, String>> {
        Box::pin(async move {
            let key = wire::keys::node_wills(node);
            let fields: Vec<(Vec<u8>, Vec<u8>)> = redis::cmd("HGETALL")
                .arg(&key)
                .query_async(&mut self.conn.clone())
                .await
                .map_err(|e| format!("loading {key}: {e}"))?;
            fields
                .into_iter()
                .map(|(field, body)| match <[u8; 8]>::try_from(field.as_slice()) {
                    Ok(link) => Ok((u64::from_be_bytes(link), body)),
                    Err(_) => Err(format!("{key}: field {:?} is no link", field.escape_ascii())),
                })
                .collect()
        })
    }

    fn forget_wills<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let key = wire::keys::node_wills(node);
            let () = redis::cmd("DEL")
                .arg(&key)
                .query_async(&mut self.conn.clone())
                .await
                .map_err(|e| format!("deleting {key}: {e}"))?;
            Ok(())
        })
    }

    fn runs<'a>(&'a self, id: &'a str, node: &'a str) -> BoxFuture<'a, Result<Vec<String>, String>> {
        Box::pin(async move {
            let key = wire::keys::node_runs(id);
            let (_, runs): (usize, Vec<String>) = redis::pipe()
                .cmd("SADD")
                .arg(&key)
                .arg(node)
                .cmd("SMEMBERS")
                .arg(&key)
                .query_async(&mut self.conn.clone())
                .await
                .map_err(|e| format!("recording a run in {key}: {e}"))?;
            Ok(runs.into_iter().filter(|r| r != node).collect())
        })
    }

    fn forget_run<'a>(&'a self, id: &'a str, node: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let key = wire::keys::node_runs(id);
            let _: usize = redis::cmd("SREM")
                .arg(&key)
                .arg(node)
                .query_async(&mut self.conn.clone())
                .await
                .map_err(|e| format!("forgetting a run in {key}: {e}"))?;
            Ok(())
        })
    }

    fn load_retained(&self) -> BoxFuture<'_, Result<broker::journal::Retained, String>> {
        Box::pin(async move {
            let fields: Vec<(String, Vec<u8>)> = redis::cmd("HGETALL")
                .arg(wire::keys::RETAINED)
                .query_async(&mut self.conn.clone())
                .await
                .map_err(|e| format!("loading {}: {e}", wire::keys::RETAINED))?;
            Ok(fields)
        })
    }
}
