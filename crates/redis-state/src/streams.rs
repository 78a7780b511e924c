//! Durable streams (`broker::streams`) on Redis: per stream a Redis Stream of its messages
//! (`wire::keys::stream_log`, id `<seq>-0`, fields `t` and `b`) and a hash of its `epoch` and
//! last `seq` (`wire::keys::stream_meta`). Both keys carry the stream's name as their hash tag, so
//! on Redis Cluster each stream lives in one slot.
//!
//! An append is one script per stream of the batch: it starts the stream under the epoch it is
//! given if the hash is gone, numbers the messages, adds them, trims the stream to `max_len`
//! (exactly), deletes at most [`AGE_TRIM`] of its oldest messages that aged out, and sets both
//! keys to expire `max_age_secs` after this append, so Redis forgets a stream nobody appends to.
//! The scripts of a batch go in one pipeline (not a MULTI: a batch spans slots), preceded by
//! the script's load, so none of them can find Redis without it (after a restart).
//!
//! A read is one script too: it answers nothing when the hash is gone, deletes the aged-out
//! messages at the head (each once, whatever the number of reads), and returns the messages
//! after the asked `seq` that have not aged out.
//!
//! Dead letters are one Redis Stream (`wire::keys::DEAD_LETTERS`) numbered by a counter
//! (`wire::keys::DEAD_LETTERS_SEQ`), trimmed to about [`DEAD_LETTERS_KEPT`]; it never expires.
//!
//! Commands time out as the connection says ([`crate::connect`]: 2 s).

use std::collections::HashMap;
use std::sync::LazyLock;

use crate::RedisConn;
use broker::relations::BoxFuture;
use broker::streams::{Append, DeadLetter, Entry, Replay, Retention, Stamp, StreamStore};
use redis::Script;

/// Most aged-out messages one append deletes: bounded work per append (a read deletes the rest
/// at the head).
pub const AGE_TRIM: u32 = 8;

/// About how many dead letters are kept (`XADD MAXLEN ~`): the oldest go first.
pub const DEAD_LETTERS_KEPT: u64 = 100_000;

/// KEYS: the stream's hash, its log. ARGV: now (Unix ms), max_len, max age (ms), an epoch for a
/// new stream, then `at_ms` and body of each message. Returns the epoch and the first `seq`.
static APPEND: LazyLock<Script> = LazyLock::new(|| {
    crate::script(&format!(
        r"
local meta, log = KEYS[1], KEYS[2]
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
  epoch = ARGV[4]
  redis.call('DEL', log)
  redis.call('HSET', meta, 'epoch', epoch, 'seq', 0)
end
local n = (#ARGV - 4) / 2
local last = redis.call('HINCRBY', meta, 'seq', n)
for i = 1, n do
  redis.call('XADD', log, string.format('%d-0', last - n + i), 't', ARGV[3 + 2 * i], 'b', ARGV[4 + 2 * i])
end
redis.call('XTRIM', log, 'MAXLEN', ARGV[2])
local cutoff = tonumber(ARGV[1]) - tonumber(ARGV[3])
for _ = 1, {AGE_TRIM} do
  local e = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)[1]
  if not e or tonumber(e[2][2]) > cutoff then break end
  redis.call('XDEL', log, e[1])
end
redis.call('PEXPIRE', meta, ARGV[3])
redis.call('PEXPIRE', log, ARGV[3])
return {{epoch, last - n + 1}}"
    ))
});

/// KEYS: the stream's hash, its log. ARGV: now (Unix ms), max age (ms), the first id wanted,
/// the limit. Returns nothing for no stream, else the epoch, the last `seq`, the first kept id
/// (empty for none), then id, `t` and `b` of each message.
static READ: LazyLock<Script> = LazyLock::new(|| {
    crate::script(
        r"
local meta, log = KEYS[1], KEYS[2]
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then return {} end
local cutoff = tonumber(ARGV[1]) - tonumber(ARGV[2])
local first = false
while not first do
  local head = redis.call('XRANGE', log, '-', '+', 'COUNT', 100)
  if #head == 0 then break end
  for _, e in ipairs(head) do
    if tonumber(e[2][2]) > cutoff then first = e[1] break end
    redis.call('XDEL', log, e[1])
  end
end
local out = {epoch, redis.call('HGET', meta, 'seq'), first or ''}
local from, left = ARGV[3], tonumber(ARGV[4])
while left > 0 do
  local page = redis.call('XRANGE', log, from, '+', 'COUNT', left)
  if #page == 0 then break end
  for _, e in ipairs(page) do
    if tonumber(e[2][2]) > cutoff then
      table.insert(out, e[1])
      table.insert(out, e[2][2])
      table.insert(out, e[2][4])
      left = left - 1
    end
  end
  from = string.format('%d-0', tonumber(string.match(page[#page][1], '^%d+')) + 1)
end
return out",
    )
});

/// KEYS: the dead letters, their counter. ARGV: how many to keep (about), then reason, session,
/// topic, `at_ms` and body of each letter.
static DEAD_LETTER: LazyLock<Script> = LazyLock::new(|| {
    crate::script(
        r"
for i = 2, #ARGV, 5 do
  local id = redis.call('INCR', KEYS[2])
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], string.format('%d-0', id),
    'reason', ARGV[i], 'session', ARGV[i + 1], 'topic', ARGV[i + 2], 'at', ARGV[i + 3], 'body', ARGV[i + 4])
end
return 0",
    )
});

/// Durable streams on Redis (see the module's documentation).
#[derive(Clone)]
pub struct RedisStreams {
    conn: RedisConn,
    retention: Retention,
    replicas: crate::Replicas,
}

impl std::fmt::Debug for RedisStreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStreams").field("retention", &self.retention).finish_non_exhaustive()
    }
}

/// The appends of a batch by stream, in the order each stream first appears: the stream and the
/// indexes of its appends.
type Groups<'a> = Vec<(&'a str, Vec<usize>)>;

/// A message of a stream as the read script returns it: id, `t`, `b`.
type Fields = Vec<Vec<u8>>;

/// A dead letter as XRANGE returns it: its id and its fields and values.
type RawLetter = (String, Vec<Vec<u8>>);

impl RedisStreams {
    /// Streams on `conn` (from [`crate::connect`]) keeping what `retention` allows.
    pub fn new(conn: RedisConn, retention: Retention) -> Self {
        RedisStreams { conn, retention, replicas: crate::Replicas::default() }
    }

    /// An append counts once `replicas` replicas have it too (see [`crate::Replicas`]).
    pub fn waiting_for(self, replicas: crate::Replicas) -> Self {
        RedisStreams { replicas, ..self }
    }

    fn max_age_ms(&self) -> u64 {
        self.retention.max_age_secs.saturating_mul(1000)
    }

    async fn push(&self, appends: &[Append]) -> Result<Vec<Stamp>, String> {
        let groups = by_stream(appends);
        let now = now_ms();
        let mut pipe = redis::pipe();
        pipe.load_script(&APPEND).ignore();
        for (stream, indexes) in &groups {
            let mut call = APPEND.prepare_invoke();
            call.key(wire::keys::stream_meta(stream)).key(wire::keys::stream_log(stream));
            call.arg(now).arg(self.retention.max_len).arg(self.max_age_ms()).arg(broker::streams::new_epoch(now));
            for &i in indexes {
                call.arg(appends[i].at_ms).arg(appends[i].body.as_slice());
            }
            pipe.invoke_script(&call);
        }
        self.replicas.wait_in(&mut pipe);
        let mut answers: Vec<redis::Value> =
            pipe.query_async(&mut self.conn.clone()).await.map_err(|e| e.to_string())?;
        self.replicas.take_answer(&mut answers)?;
        let placed: Vec<(u64, u64)> =
            redis::FromRedisValue::from_redis_value(redis::Value::Array(answers)).map_err(|e| e.to_string())?;
        Ok(stamps(appends.len(), &groups, &placed))
    }

    async fn replay(&self, stream: &str, after: u64, limit: usize) -> Result<Replay, String> {
        // Never more than a stream holds, and a count Lua writes as an integer.
        let limit = (limit as u64).min(self.retention.max_len).min(1 << 40);
        let out: Fields = READ
            .key(wire::keys::stream_meta(stream))
            .key(wire::keys::stream_log(stream))
            .arg(now_ms())
            .arg(self.max_age_ms())
            .arg(format!("{}-0", after.saturating_add(1)))
            .arg(limit)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| e.to_string())?;
        parse_replay(&out)
    }

    async fn add_dead(&self, letters: &[DeadLetter]) -> Result<(), String> {
        let mut call = DEAD_LETTER.prepare_invoke();
        call.key(wire::keys::DEAD_LETTERS).key(wire::keys::DEAD_LETTERS_SEQ).arg(DEAD_LETTERS_KEPT);
        for l in letters {
            call.arg(&l.reason).arg(&l.session).arg(&l.topic).arg(l.at_ms).arg(l.body.as_slice());
        }
        call.invoke_async::<i64>(&mut self.conn.clone()).await.map(drop).map_err(|e| e.to_string())
    }

    async fn read_dead(&self, after: u64, limit: usize) -> Result<Vec<(u64, DeadLetter)>, String> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let raw: Vec<RawLetter> = redis::cmd("XRANGE")
            .arg(wire::keys::DEAD_LETTERS)
            .arg(format!("{}-0", after.saturating_add(1)))
            .arg("+")
            .arg("COUNT")
            .arg((limit as u64).min(i64::MAX as u64))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| e.to_string())?;
        raw.into_iter().map(|(id, fields)| Ok((seq_of(id.as_bytes())?, dead_letter(&fields)?))).collect()
    }
}

/// The appends' indexes grouped by stream, streams in the order they first appear.
fn by_stream(appends: &[Append]) -> Groups<'_> {
    let mut groups: Groups<'_> = Vec::new();
    let mut at: HashMap<&str, usize> = HashMap::new();
    for (i, a) in appends.iter().enumerate() {
        let g = *at.entry(&a.stream).or_insert_with(|| {
            groups.push((&a.stream, Vec::new()));
            groups.len() - 1
        });
        groups[g].1.push(i);
    }
    groups
}

/// The stamp of each append, from each stream's epoch and first `seq`.
fn stamps(n: usize, groups: &Groups<'_>, placed: &[(u64, u64)]) -> Vec<Stamp> {
    let mut stamps = vec![Stamp { seq: 0, epoch: 0 }; n];
    for ((_, indexes), &(epoch, first)) in groups.iter().zip(placed) {
        for (k, &i) in indexes.iter().enumerate() {
            stamps[i] = Stamp { seq: first + k as u64, epoch };
        }
    }
    stamps
}

fn parse_replay(out: &[Vec<u8>]) -> Result<Replay, String> {
    let [epoch, last, first, messages @ ..] = out else { return Ok(Replay::default()) };
    let last = number(last)?;
    let first = if first.is_empty() { last + 1 } else { seq_of(first)? };
    let entries = messages
        .chunks(3)
        .map(|m| match m {
            [id, at, body] => Ok(Entry { seq: seq_of(id)?, at_ms: number(at)?, body: body.clone() }),
            _ => Err("a message without its fields".to_owned()),
        })
        .collect::<Result<_, String>>()?;
    Ok(Replay { epoch: number(epoch)?, last, entries, first })
}

fn dead_letter(fields: &[Vec<u8>]) -> Result<DeadLetter, String> {
    let mut letter =
        DeadLetter { reason: String::new(), session: String::new(), topic: String::new(), at_ms: 0, body: vec![] };
    for pair in fields.chunks(2) {
        let [field, value] = pair else { return Err("a dead letter's field without a value".to_owned()) };
        match field.as_slice() {
            b"reason" => letter.reason = text(value)?,
            b"session" => letter.session = text(value)?,
            b"topic" => letter.topic = text(value)?,
            b"at" => letter.at_ms = number(value)?,
            b"body" => letter.body = value.clone(),
            other => return Err(format!("a dead letter's field {:?}", other.escape_ascii().to_string())),
        }
    }
    Ok(letter)
}

/// The `seq` of a stream id `<seq>-0`.
fn seq_of(id: &[u8]) -> Result<u64, String> {
    let seq = id.split(|b| *b == b'-').next().unwrap_or_default();
    number(seq).map_err(|_| format!("stream id {:?}", id.escape_ascii().to_string()))
}

fn number(bytes: &[u8]) -> Result<u64, String> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{:?} is not a number", bytes.escape_ascii().to_string()))
}

fn text(bytes: &[u8]) -> Result<String, String> {
    String::from_utf8(bytes.to_vec()).map_err(|e| e.to_string())
}

/// Unix time in milliseconds.
fn now_ms() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

impl StreamStore for RedisStreams {
    fn on_this_thread(&self) -> Option<BoxFuture<'static, Result<std::sync::Arc<dyn StreamStore>, String>>> {
        let (conn, retention, replicas) = (self.conn.clone(), self.retention, self.replicas);
        Some(Box::pin(async move {
            let own = RedisStreams::new(conn.another().await?, retention).waiting_for(replicas);
            Ok(std::sync::Arc::new(own) as std::sync::Arc<dyn StreamStore>)
        }))
    }

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

    #[test]
    fn a_batch_is_grouped_by_stream_and_stamped_back_in_order() {
        let a = |s: &str| Append { stream: s.into(), at_ms: 0, body: vec![] };
        let batch = [a("x"), a("y"), a("x"), a("z"), a("y")];
        let groups = by_stream(&batch);
        assert_eq!(groups, [("x", vec![0, 2]), ("y", vec![1, 4]), ("z", vec![3])]);
        let got = stamps(batch.len(), &groups, &[(7, 4), (8, 1), (9, 1)]);
        let want = [(4, 7), (1, 8), (5, 7), (1, 9), (2, 8)].map(|(seq, epoch)| Stamp { seq, epoch });
        assert_eq!(got, want);
    }

    #[test]
    fn replies_parse() {
        assert_eq!(parse_replay(&[]), Ok(Replay::default()));
        let out: Vec<Vec<u8>> = [&b"77"[..], b"9", b"", b"9-0", b"123", b"body"].map(<[u8]>::to_vec).into();
        let want = Replay {
            epoch: 77,
            last: 9,
            entries: vec![Entry { seq: 9, at_ms: 123, body: b"body".to_vec() }],
            first: 10,
        };
        assert_eq!(parse_replay(&out), Ok(want));
        assert!(seq_of(b"x-0").is_err());
    }
}
