//! The session journal (`broker::journal`) on Redis: one hash per session
//! (`wire::keys::session_journal`), field `r` its record, each kept message under its entry
//! as 8 bytes big-endian, each inbound QoS 2 id awaiting its PUBREL as `i` and 2 bytes, and the
//! session's cursor in each durable stream as `stream-cursor:` and the stream's name (never 1,
//! 3 or 8 bytes long, so never taken for one of the others). HGETALL reads a session in one
//! step; a batch of writes is one pipeline, one round trip, a command per change, applied in
//! order. Each change is one command or script on one session's hash (one hash slot on Redis
//! Cluster), so a batch cut short by a lost connection leaves the journal as it was at some
//! point of the batch (the edge tries the whole batch again, and acknowledges nothing of it
//! before it is written).
//!
//! A parked session's expiry is the hash's TTL (EXPIRE at each record with one, PERSIST at each
//! record without), so Redis forgets the record, its messages and its cursors together. A
//! message (an inbound id, a cursor) is kept only while the hash holds a record, checked inside
//! Redis by a small script: a message routed to a session that has just expired or ended would
//! otherwise recreate the hash without a TTL and without a record, never to be read or deleted.
//! So a hash always holds `r`, and `load` answers `None` for one that does not (something else
//! wrote it).

use crate::RedisConn;
use broker::journal::{SessionJournal, Stored, Write};
use broker::relations::BoxFuture;

/// The hash field holding the session's record.
const RECORD: &[u8] = b"r";

/// KEYS: the session's hash. ARGV: a field (a message's, an inbound id's, a cursor's), its value.
/// Keeps it only if the session has a record.
const KEEP_FIELD: &str = concat!(
    "#!lua",
    r"
if redis.call('HEXISTS', KEYS[1], 'r') == 1 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
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

/// Queues the command of write `w` on `pipe`, its reply ignored.
fn queue(pipe: &mut redis::Pipeline, w: &Write) {
    let key = &match w {
        Write::Retained { .. } => wire::keys::RETAINED.to_owned(),
        Write::Record { session, .. }
        | Write::Message { session, .. }
        | Write::Done { session, .. }
        | Write::Inbound { session, .. }
        | Write::Ended { session }
        | Write::Touch { session, .. }
        | Write::Cursor { session, .. } => wire::keys::session_journal(session),
    };
    match w {
        Write::Record { record, ttl_secs, .. } => {
            let ttl = ttl_secs.map(|t| t.to_string()).unwrap_or_default();
            pipe.cmd("EVAL").arg(RECORD_SCRIPT).arg(1).arg(key).arg(record.as_slice()).arg(ttl).ignore();
        }
        Write::Message { entry, body, .. } => {
            pipe.cmd("EVAL")
                .arg(KEEP_FIELD)
                .arg(1)
                .arg(key)
                .arg(&entry_field(*entry)[..])
                .arg(body.as_slice())
                .ignore();
        }
        Write::Done { entry, .. } => {
            pipe.cmd("HDEL").arg(key).arg(&entry_field(*entry)[..]).ignore();
        }
        Write::Inbound { packet_id, held: true, .. } => {
            let field = inbound_field(*packet_id);
            pipe.cmd("EVAL").arg(KEEP_FIELD).arg(1).arg(key).arg(&field[..]).arg(&b"1"[..]).ignore();
        }
        Write::Inbound { packet_id, held: false, .. } => {
            pipe.cmd("HDEL").arg(key).arg(&inbound_field(*packet_id)[..]).ignore();
        }
        Write::Ended { .. } => {
            pipe.cmd("DEL").arg(key).ignore();
        }
        Write::Touch { ttl_secs, .. } => {
            pipe.cmd("EXPIRE").arg(key).arg(*ttl_secs).ignore();
        }
        Write::Cursor { stream, cursor, .. } => {
            pipe.cmd("EVAL").arg(KEEP_FIELD).arg(1).arg(key).arg(cursor_field(stream)).arg(cursor.as_slice()).ignore();
        }
        Write::Retained { topic, body: Some(body) } => {
            pipe.cmd("HSET").arg(key).arg(&**topic).arg(body.as_slice()).ignore();
        }
        Write::Retained { topic, body: None } => {
            pipe.cmd("HDEL").arg(key).arg(&**topic).ignore();
        }
    }
}

impl SessionJournal for RedisJournal {
    fn write<'a>(&'a self, writes: &'a [Write]) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            if writes.is_empty() {
                return Ok(());
            }
            let mut pipe = redis::pipe();
            for w in writes {
                queue(&mut pipe, w);
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

    fn expires_at<'a>(&'a self, session: &'a str) -> BoxFuture<'a, Result<Option<Option<u64>>, String>> {
        Box::pin(async move {
            let key = wire::keys::session_journal(session);
            let left_ms: i64 = redis::cmd("PTTL")
                .arg(&key)
                .query_async(&mut self.conn.clone())
                .await
                .map_err(|e| format!("{key}: {e}"))?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            // -2: no such key (a hash always holds its record); -1: no expiry.
            Ok(match left_ms {
                -2 => None,
                -1 => Some(None),
                ms => Some(Some(now.saturating_add(u64::try_from(ms).unwrap_or(0)))),
            })
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
