//! Durable streams (design §4, §5): topics whose messages are kept for a retention window, each
//! under a per-stream `seq` and the stream's `epoch`, so a client that was away resumes from the
//! last `seq` it has and learns whether the window still held everything after it.
//!
//! A stream is one topic matched by a stream rule ([`StreamRules`]; by default every inbox
//! `+/im/msg/+` and every notice `+/notice/#`). The edge appends a message to its stream before
//! it routes and acknowledges it, and stamps the `seq` and `epoch` it got into the message.
//! [`StreamStore`] keeps the streams: Redis Streams in a cluster
//! (`redis_state::RedisStreams`), the embedded database in the data directory for `hermes up`
//! (`embedded_state::SqliteStreams`), memory in tests; all pass [`contract::check`].
//!
//! Messages the edge gives up on (a persistent session's queue overflowed, or a message was
//! delivered too many times without an acknowledgement) go to the dead-letter stream of the same
//! store, where a backend can read them.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::relations::BoxFuture;
use crate::topic::{TopicLimits, matches, validate_filter};

/// The stream rules a node starts with: inboxes and notices.
pub const DEFAULT_RULES: &[&str] = &["+/im/msg/+", "+/notice/#"];

/// Which topics are durable streams: those matching any rule (MQTT filters).
#[derive(Debug, Clone, Default)]
pub struct StreamRules {
    rules: Vec<String>,
}

impl StreamRules {
    /// Rules from filters; a filter that is not a valid MQTT filter is refused with the reason.
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(filters: I) -> Result<StreamRules, String> {
        let rules: Vec<String> = filters.into_iter().map(Into::into).collect();
        for r in &rules {
            validate_filter(r, &TopicLimits::default()).map_err(|e| format!("stream rule {r:?}: {e:?}"))?;
            if crate::topic::is_shared(r) {
                return Err(format!("stream rule {r:?}: a rule names topics, not a shared subscription"));
            }
        }
        Ok(StreamRules { rules })
    }

    /// Whether messages on `topic` belong to the durable stream named after it. A filter with
    /// wildcards names several topics, never one stream; `$` topics (`$SYS`, `$share/...`,
    /// `$hermes/...`) are never streams.
    pub fn is_durable(&self, topic: &str) -> bool {
        !topic.starts_with('$') && !topic.contains(['+', '#']) && self.rules.iter().any(|r| matches(r, topic))
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn rules(&self) -> &[String] {
        &self.rules
    }
}

/// How much a stream keeps: its newest `max_len` messages, none older than `max_age_secs`. A
/// stream nothing was appended to for `max_age_secs` is forgotten whole: the next append starts
/// it again at `seq` 1 under a new epoch.
///
/// A message's age runs from its [`Append::at_ms`] (the edge's clock); a stream's last append
/// is timed by the store. A message `max_age_secs` old or older is never read, whether or not
/// the store has deleted it yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub max_len: u64,
    pub max_age_secs: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention { max_len: 10_000, max_age_secs: 7 * 24 * 3600 }
    }
}

/// A message to append to `stream`, published at `at_ms` (the edge's clock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Append {
    pub stream: Arc<str>,
    /// Unix time in milliseconds: the message ages from this instant (see [`Retention`]).
    pub at_ms: u64,
    pub body: Vec<u8>,
}

/// Where an appended message went: its `seq` in the stream (from 1, one more than the last) and
/// the stream's `epoch` (never 0; a new one whenever the stream starts again).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Stamp {
    pub seq: u64,
    pub epoch: u64,
}

/// A kept message of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub at_ms: u64,
    pub body: Vec<u8>,
}

/// What a stream holds after a `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Replay {
    /// The stream's epoch; 0 if the stream holds nothing (never written, or forgotten).
    pub epoch: u64,
    /// The newest `seq` given out (0 for no stream).
    pub last: u64,
    /// Entries after the asked `seq`, ascending, at most the asked limit.
    pub entries: Vec<Entry>,
    /// The oldest `seq` the stream still holds (0 if it holds none): a client whose last `seq`
    /// is below `first - 1` missed messages the window no longer has.
    ///
    /// A stream that is still there (`epoch` set) but whose messages all aged out holds none
    /// after `last`: its `first` is `last + 1`, so [`Replay::complete_after`] answers true only
    /// for a client that already has `last`.
    pub first: u64,
}

impl Replay {
    /// Whether a client that has everything up to `after` under `epoch` gets all it missed from
    /// this replay and the ones after it: same epoch (or nothing kept yet), and the window still
    /// starts at or before `after + 1`.
    pub fn complete_after(&self, epoch: u64, after: u64) -> bool {
        if self.epoch == 0 {
            return true;
        }
        self.epoch == epoch && (self.first == 0 || self.first <= after.saturating_add(1))
    }

    /// Where the next page starts, if this one stopped at `limit` entries with newer ones kept.
    pub fn next_after(&self, limit: usize) -> Option<u64> {
        self.entries.last().filter(|e| self.entries.len() >= limit && e.seq < self.last).map(|e| e.seq)
    }
}

/// A message the edge gave up on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Why: `overflow` (a session's queue was full) or `retries` (delivered too often).
    pub reason: String,
    /// The session it was for ([`crate::store::session_key`]).
    pub session: String,
    pub topic: String,
    pub at_ms: u64,
    /// The message as the edge encodes it for its journal.
    pub body: Vec<u8>,
}

/// Durable streams and the dead-letter stream.
pub trait StreamStore: Send + Sync + std::fmt::Debug {
    /// Appends each message to its stream, in order, and returns where each went (one stamp per
    /// append, same order); `Ok` once all are durable. Appends to one stream get consecutive
    /// `seq`s in the order given. Also applies the retention.
    fn append<'a>(&'a self, appends: &'a [Append]) -> BoxFuture<'a, Result<Vec<Stamp>, String>>;
    /// The stream's entries with `seq > after` still within its retention, ascending, at most
    /// `limit`.
    fn read<'a>(&'a self, stream: &'a str, after: u64, limit: usize) -> BoxFuture<'a, Result<Replay, String>>;
    /// Appends to the dead-letter stream, in order; `Ok` once durable.
    fn dead_letter<'a>(&'a self, letters: &'a [DeadLetter]) -> BoxFuture<'a, Result<(), String>>;
    /// Dead letters with an id above `after`, ascending by id (ids start at 1), at most `limit`.
    fn dead_letters(&self, after: u64, limit: usize) -> BoxFuture<'_, Result<Vec<(u64, DeadLetter)>, String>>;
    /// Whether `append` works on its caller's thread (the embedded store does), as
    /// `SessionJournal::blocks`: it is then tidied as the embedded journal is.
    fn blocks(&self) -> bool {
        false
    }
    /// See `SessionJournal::tidy`.
    fn tidy(&self) -> Result<(), String> {
        Ok(())
    }
    /// See `SessionJournal::tidy_between_writes`.
    fn tidy_between_writes(&self) -> Result<(), String> {
        Ok(())
    }
    /// Another store on the same streams, whose connection runs on the calling thread's
    /// runtime (see `SessionJournal::on_this_thread`); `None` (the default): this one serves
    /// every thread as well as any other would.
    fn on_this_thread(&self) -> Option<BoxFuture<'static, Result<std::sync::Arc<dyn StreamStore>, String>>> {
        None
    }
}

/// Unix time in milliseconds.
pub(crate) fn now_ms() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// A new epoch for a stream that starts (again) at `now_ms` (Unix ms): the time above 12 random
/// bits, never 0. Two starts of one stream share an epoch only within the same millisecond, and
/// then one time in 4096.
pub fn new_epoch(now_ms: u64) -> u64 {
    use std::hash::BuildHasher;
    let random = std::collections::hash_map::RandomState::new().hash_one(now_ms);
    ((now_ms << 12) | (random & 0xFFF)).max(1)
}

/// Whether a message published at `at_ms` is past `retention` at `now_ms`.
pub fn aged(at_ms: u64, now_ms: u64, retention: &Retention) -> bool {
    at_ms.saturating_add(retention.max_age_secs.saturating_mul(1000)) <= now_ms
}

/// Streams kept in this process: for tests, and nodes sharing one process. Dead letters are
/// never trimmed.
#[derive(Debug, Default)]
pub struct MemoryStreams {
    retention: Retention,
    streams: Mutex<HashMap<Arc<str>, Kept>>,
    dead: Mutex<Vec<DeadLetter>>,
}

/// One stream in memory.
#[derive(Debug)]
struct Kept {
    epoch: u64,
    last: u64,
    /// When it was last appended to (Unix ms, this process's clock).
    appended_ms: u64,
    entries: VecDeque<Entry>,
}

impl Kept {
    fn new(now: u64) -> Kept {
        Kept { epoch: new_epoch(now), last: 0, appended_ms: now, entries: VecDeque::new() }
    }

    /// Whether nothing was appended for the retention's age: the stream is forgotten.
    fn forgotten(&self, now: u64, retention: &Retention) -> bool {
        aged(self.appended_ms, now, retention)
    }

    fn push(&mut self, a: &Append, now: u64, retention: &Retention) -> Stamp {
        self.last += 1;
        self.appended_ms = now;
        self.entries.push_back(Entry { seq: self.last, at_ms: a.at_ms, body: a.body.clone() });
        let excess = (self.entries.len() as u64).saturating_sub(retention.max_len);
        self.entries.drain(..usize::try_from(excess).unwrap_or(usize::MAX));
        while self.entries.front().is_some_and(|e| aged(e.at_ms, now, retention)) {
            self.entries.pop_front();
        }
        Stamp { seq: self.last, epoch: self.epoch }
    }

    fn replay(&self, after: u64, limit: usize, now: u64, retention: &Retention) -> Replay {
        let mut kept = self.entries.iter().filter(|e| !aged(e.at_ms, now, retention)).peekable();
        let first = kept.peek().map_or(self.last + 1, |e| e.seq);
        let entries = kept.filter(|e| e.seq > after).take(limit).cloned().collect();
        Replay { epoch: self.epoch, last: self.last, entries, first }
    }
}

impl MemoryStreams {
    /// Streams that keep what `retention` allows.
    pub fn new(retention: Retention) -> MemoryStreams {
        MemoryStreams { retention, ..MemoryStreams::default() }
    }

    fn push_all(&self, appends: &[Append]) -> Vec<Stamp> {
        let now = now_ms();
        let retention = &self.retention;
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        streams.retain(|_, k| !k.forgotten(now, retention));
        let mut push =
            |a: &Append| streams.entry(a.stream.clone()).or_insert_with(|| Kept::new(now)).push(a, now, retention);
        appends.iter().map(&mut push).collect()
    }

    fn replay(&self, stream: &str, after: u64, limit: usize) -> Replay {
        let now = now_ms();
        let streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        let kept = streams.get(stream).filter(|k| !k.forgotten(now, &self.retention));
        kept.map(|k| k.replay(after, limit, now, &self.retention)).unwrap_or_default()
    }
}

impl StreamStore for MemoryStreams {
    fn append<'a>(&'a self, appends: &'a [Append]) -> BoxFuture<'a, Result<Vec<Stamp>, String>> {
        Box::pin(std::future::ready(Ok(self.push_all(appends))))
    }

    fn read<'a>(&'a self, stream: &'a str, after: u64, limit: usize) -> BoxFuture<'a, Result<Replay, String>> {
        Box::pin(std::future::ready(Ok(self.replay(stream, after, limit))))
    }

    fn dead_letter<'a>(&'a self, letters: &'a [DeadLetter]) -> BoxFuture<'a, Result<(), String>> {
        self.dead.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(letters);
        Box::pin(std::future::ready(Ok(())))
    }

    fn dead_letters(&self, after: u64, limit: usize) -> BoxFuture<'_, Result<Vec<(u64, DeadLetter)>, String>> {
        let dead = self.dead.lock().unwrap_or_else(|e| e.into_inner());
        let skip = usize::try_from(after).unwrap_or(usize::MAX);
        let letters = dead.iter().enumerate().skip(skip).take(limit).map(|(i, l)| (i as u64 + 1, l.clone())).collect();
        Box::pin(std::future::ready(Ok(letters)))
    }
}

/// The behaviour every [`StreamStore`] must have. The store under test must be built with
/// [`contract::RETENTION`] (`max_len` 5, `max_age_secs` 1). Stream names are unique to each call
/// (`prefix`), and only dead letters whose session starts with `prefix:` are looked at, so a
/// shared Redis can run it concurrently. Takes about 1.3 s (messages and a stream age out).
pub mod contract {
    use std::sync::Arc;
    use std::time::Duration;

    use super::{Append, DeadLetter, Entry, Replay, Retention, Stamp, StreamStore};
    use crate::journal::contract::sleep;

    /// The retention the store under test must have.
    pub const RETENTION: Retention = Retention { max_len: 5, max_age_secs: 1 };

    fn stream(prefix: &str, name: &str) -> Arc<str> {
        format!("{prefix}/{name}").into()
    }

    fn append(stream: &Arc<str>, body: &[u8]) -> Append {
        Append { stream: stream.clone(), at_ms: super::now_ms(), body: body.to_vec() }
    }

    /// The entry `a` must read back as, under `seq`.
    fn entry(seq: u64, a: &Append) -> Entry {
        Entry { seq, at_ms: a.at_ms, body: a.body.clone() }
    }

    async fn stamps(s: &dyn StreamStore, appends: &[Append]) -> Vec<Stamp> {
        s.append(appends).await.expect("append")
    }

    async fn read(s: &dyn StreamStore, stream: &str, after: u64, limit: usize) -> Replay {
        s.read(stream, after, limit).await.expect("read")
    }

    pub async fn check(s: &dyn StreamStore, prefix: &str) {
        sequences(s, prefix).await;
        length(s, prefix).await;
        odd_names_and_bodies(s, prefix).await;
        age(s, prefix).await;
        dead_letters(s, prefix).await;
    }

    /// Streams number their messages apart, in the order given, across batches; reads after a
    /// `seq`, within a limit.
    async fn sequences(s: &dyn StreamStore, prefix: &str) {
        let (a, b) = (stream(prefix, "seq/a"), stream(prefix, "seq/b"));
        assert_eq!(read(s, &a, 0, 10).await, Replay::default(), "never written");
        assert_eq!(s.append(&[]).await.expect("an empty batch"), vec![]);
        let batch = [append(&a, b"a1"), append(&b, b"b1"), append(&a, b"a2"), append(&b, b"b2"), append(&a, b"a3")];
        let got = stamps(s, &batch).await;
        let (ea, eb) = (got[0].epoch, got[1].epoch);
        assert!(ea != 0 && eb != 0, "epochs are never 0");
        let want: Vec<Stamp> =
            [(1, ea), (1, eb), (2, ea), (2, eb), (3, ea)].map(|(seq, epoch)| Stamp { seq, epoch }).into();
        assert_eq!(got, want);
        let later = append(&b, b"b3");
        assert_eq!(stamps(s, std::slice::from_ref(&later)).await, [Stamp { seq: 3, epoch: eb }], "the epoch stays");

        let (a1, a2, a3) = (entry(1, &batch[0]), entry(2, &batch[2]), entry(3, &batch[4]));
        let all = Replay { epoch: ea, last: 3, entries: vec![a1.clone(), a2.clone(), a3.clone()], first: 1 };
        assert_eq!(read(s, &a, 0, 10).await, all);
        assert_eq!(read(s, &a, 2, 10).await, Replay { entries: vec![a3], ..all.clone() });
        assert_eq!(read(s, &a, 0, 2).await, Replay { entries: vec![a1, a2], ..all.clone() }, "the limit");
        assert_eq!(read(s, &a, 0, 0).await, Replay { entries: vec![], ..all.clone() }, "a limit of 0");
        for after in [3, 4, u64::MAX] {
            assert_eq!(read(s, &a, after, 10).await, Replay { entries: vec![], ..all.clone() }, "after {after}");
        }
        let bs = [entry(1, &batch[1]), entry(2, &batch[3]), entry(3, &later)].to_vec();
        assert_eq!(read(s, &b, 0, 10).await, Replay { epoch: eb, last: 3, entries: bs, first: 1 });

        assert!(all.complete_after(ea, 0) && all.complete_after(ea, 3), "the window holds everything");
        assert!(!all.complete_after(ea ^ 1, 3), "another epoch: the stream started again");
        assert!(Replay::default().complete_after(ea, 7), "nothing kept: nothing missed");
    }

    /// A stream keeps its newest `max_len` messages.
    async fn length(s: &dyn StreamStore, prefix: &str) {
        let l = stream(prefix, "len");
        let batch: Vec<Append> = (1..=8).map(|n| append(&l, format!("m{n}").as_bytes())).collect();
        stamps(s, &batch[..6]).await;
        let got = stamps(s, &batch[6..]).await;
        let epoch = got[0].epoch;
        assert_eq!(got.iter().map(|st| st.seq).collect::<Vec<_>>(), [7, 8]);
        let kept: Vec<Entry> = (4..=8).map(|seq| entry(seq, &batch[seq as usize - 1])).collect();
        let replay = read(s, &l, 0, 10).await;
        assert_eq!(replay, Replay { epoch, last: 8, entries: kept.clone(), first: 4 });
        assert!(!replay.complete_after(epoch, 2), "5, 6, 7 and 8 are there; 3 is not");
        assert!(replay.complete_after(epoch, 3));
        assert_eq!(read(s, &l, 5, 10).await.entries, kept[2..], "after a kept seq");
        assert_eq!(read(s, &l, 1, 10).await.entries, kept, "after a trimmed seq");
    }

    /// Empty and large bodies; stream names of any bytes a topic may hold.
    async fn odd_names_and_bodies(s: &dyn StreamStore, prefix: &str) {
        let odd = stream(prefix, "{x} *>.|\n\u{2028}/ü");
        let tagged = stream(prefix, "{x}");
        let big = vec![0xA5_u8; 1 << 20];
        let batch = [append(&odd, b""), append(&tagged, b"tagged"), append(&odd, &big)];
        let got = stamps(s, &batch).await;
        assert_eq!(got.iter().map(|st| st.seq).collect::<Vec<_>>(), [1, 1, 2], "streams apart");
        let replay = read(s, &odd, 0, 10).await;
        assert_eq!(replay.entries, [entry(1, &batch[0]), entry(2, &batch[2])]);
        assert_eq!(read(s, &tagged, 0, 10).await.entries, [entry(1, &batch[1])]);
    }

    /// Messages age out, and so does a stream nothing was appended to.
    async fn age(s: &dyn StreamStore, prefix: &str) {
        let (whole, part, stale) =
            (stream(prefix, "age/whole"), stream(prefix, "age/part"), stream(prefix, "age/stale"));
        // A message published longer ago than the retention is never read.
        let old = Append { at_ms: super::now_ms() - 2000, ..append(&stale, b"old") };
        let got = stamps(s, &[old]).await;
        let replay = read(s, &stale, 0, 10).await;
        assert_eq!(replay, Replay { epoch: got[0].epoch, last: 1, entries: vec![], first: 2 }, "aged out");
        assert!(!replay.complete_after(got[0].epoch, 0) && replay.complete_after(got[0].epoch, 1));

        let first = stamps(s, &[append(&whole, b"w1"), append(&part, b"p1")]).await;
        sleep(Duration::from_millis(600)).await;
        let p2 = append(&part, b"p2");
        assert_eq!(stamps(s, std::slice::from_ref(&p2)).await, [Stamp { seq: 2, epoch: first[1].epoch }]);
        sleep(Duration::from_millis(700)).await;
        // `part` was appended to 0.7 s ago: it stays, without its message of 1.3 s ago.
        let want = Replay { epoch: first[1].epoch, last: 2, entries: vec![entry(2, &p2)], first: 2 };
        assert_eq!(read(s, &part, 0, 10).await, want, "the older message aged out");
        assert_eq!(read(s, &whole, 0, 10).await, Replay::default(), "forgotten whole");
        let w2 = append(&whole, b"w2");
        let again = stamps(s, std::slice::from_ref(&w2)).await;
        assert_eq!(again[0].seq, 1, "starts again");
        assert_ne!(again[0].epoch, first[0].epoch, "under a new epoch");
        let want = Replay { epoch: again[0].epoch, last: 1, entries: vec![entry(1, &w2)], first: 1 };
        assert_eq!(read(s, &whole, 0, 10).await, want);
    }

    /// Dead letters come back in order under ascending ids, after an id, within a limit.
    async fn dead_letters(s: &dyn StreamStore, prefix: &str) {
        let letter = |reason: &str, n: u8| DeadLetter {
            reason: reason.to_owned(),
            session: format!("{prefix}:5:alice/phone{n}"),
            topic: format!("{prefix}/im/msg/ü{n}"),
            at_ms: 1_700_000_000_000 + u64::from(n),
            body: vec![n; usize::from(n) * 100],
        };
        let letters = [letter("overflow", 1), letter("retries", 2), letter("overflow", 0)];
        s.dead_letter(&[]).await.expect("an empty batch");
        s.dead_letter(&letters[..2]).await.expect("dead letters");
        s.dead_letter(&letters[2..]).await.expect("a dead letter");
        let mine = |all: Vec<(u64, DeadLetter)>| -> Vec<(u64, DeadLetter)> {
            all.into_iter().filter(|(_, l)| l.session.starts_with(&format!("{prefix}:"))).collect()
        };
        let all = s.dead_letters(0, 1_000_000).await.expect("dead letters");
        assert!(all.first().is_some_and(|(id, _)| *id >= 1), "ids start at 1");
        assert!(all.windows(2).all(|w| w[0].0 < w[1].0), "ascending ids");
        let got = mine(all.clone());
        assert_eq!(got.iter().map(|(_, l)| l.clone()).collect::<Vec<_>>(), letters, "in order, intact");
        let rest = mine(s.dead_letters(got[0].0, 1_000_000).await.expect("dead letters"));
        assert_eq!(rest, got[1..], "after an id");
        assert!(mine(s.dead_letters(got[2].0, 1_000_000).await.expect("dead letters")).is_empty());
        let page = s.dead_letters(0, 2).await.expect("dead letters");
        assert_eq!(page, all[..2], "the limit");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn memory_streams_meet_the_contract() {
        let streams = super::MemoryStreams::new(super::contract::RETENTION);
        crate::test_support::block_on(super::contract::check(&streams, "t"));
    }

    #[test]
    fn epochs_are_never_0_and_carry_the_time() {
        assert_ne!(super::new_epoch(0), 0);
        assert_eq!(super::new_epoch(1_700_000_000_000) >> 12, 1_700_000_000_000);
    }
}

/// How far a session got in one durable stream: every `seq` up to `low`, and those in `above`
/// (each higher than `low + 1`), under `epoch`. A session that resumes from the journal (its
/// node died) is given what its streams hold beyond its cursors: what was routed to the dead
/// node meanwhile.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cursor {
    pub epoch: u64,
    pub low: u64,
    /// Ascending, at most [`Cursor::MAX_ABOVE`].
    pub above: Vec<u64>,
}

impl Cursor {
    /// Seqs kept beyond a gap at most: past it, the oldest gap is given up as never coming (a
    /// message the session was never meant to get, like a QoS 0 one while it was away).
    pub const MAX_ABOVE: usize = 64;

    /// The session got `at`; returns whether the cursor moved. The first seq of a stream (or of
    /// a new epoch) starts it: what came before is none of the session's business.
    pub fn saw(&mut self, at: Stamp) -> bool {
        if at.epoch != self.epoch {
            *self = Cursor { epoch: at.epoch, low: at.seq.saturating_sub(1), above: Vec::new() };
        }
        if self.has(at.seq) {
            return false;
        }
        let i = self.above.partition_point(|s| *s < at.seq);
        self.above.insert(i, at.seq);
        if self.above.len() > Self::MAX_ABOVE {
            self.low = self.above.remove(0);
        }
        while self.low.checked_add(1).is_some_and(|next| self.above.first() == Some(&next)) {
            self.low = self.above.remove(0);
        }
        true
    }

    /// Whether the session got `seq` (under this cursor's epoch).
    pub fn has(&self, seq: u64) -> bool {
        seq <= self.low || self.above.binary_search(&seq).is_ok()
    }

    /// Bytes for the journal: epoch, low, then each of `above`, big-endian.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + 8 * self.above.len());
        for v in [self.epoch, self.low].iter().chain(&self.above) {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out
    }

    /// A cursor [`Cursor::encode`] wrote; `None` for other bytes.
    pub fn decode(bytes: &[u8]) -> Option<Cursor> {
        if bytes.len() < 16 || !bytes.len().is_multiple_of(8) || bytes.len() > 16 + 8 * Self::MAX_ABOVE {
            return None;
        }
        let mut words = bytes.chunks_exact(8).map(|c| u64::from_be_bytes(c.try_into().unwrap_or([0; 8])));
        let (epoch, low) = (words.next()?, words.next()?);
        let above: Vec<u64> = words.collect();
        let ordered = above.windows(2).all(|w| w[0] < w[1]) && above.first().is_none_or(|s| *s > low.saturating_add(1));
        ordered.then_some(Cursor { epoch, low, above })
    }
}

#[cfg(test)]
mod rules_tests {
    use super::{Entry, Replay, StreamRules};

    #[test]
    fn a_stream_is_one_topic_a_rule_matches() {
        let rules = StreamRules::new(super::DEFAULT_RULES.iter().copied()).expect("valid rules");
        for topic in ["acme/im/msg/bob", "acme/notice/x", "acme/notice/a/b/c"] {
            assert!(rules.is_durable(topic), "{topic}");
        }
        for not in [
            "acme/im/msg/+",
            "acme/notice/#",
            "+/im/msg/bob",
            "$share/g/acme/im/msg/bob",
            "$hermes/resume/acme/im/msg/bob",
            "acme/im/pres/bob",
            "",
            "/",
        ] {
            assert!(!rules.is_durable(not), "{not}");
        }
        assert!(StreamRules::new(["a/#/b"]).is_err() && StreamRules::new(["$share/g/a"]).is_err());
        assert!(!StreamRules::default().is_durable("acme/im/msg/bob"), "no rules, no streams");
    }

    #[test]
    fn the_next_page_starts_after_a_full_one_only() {
        let entry = |seq| Entry { seq, at_ms: 0, body: Vec::new() };
        let page = Replay { epoch: 1, last: 9, entries: vec![entry(3), entry(4)], first: 3 };
        assert_eq!(page.next_after(2), Some(4), "full, and 5..9 are kept");
        assert_eq!(page.next_after(3), None, "not full: the stream has no more for it");
        let last = Replay { last: 4, ..page.clone() };
        assert_eq!(last.next_after(2), None, "full, but 4 is the newest");
        assert_eq!(Replay::default().next_after(0), None);
    }
}

#[cfg(test)]
mod cursor_tests {
    use super::{Cursor, Stamp};

    fn at(seq: u64) -> Stamp {
        Stamp { seq, epoch: 7 }
    }

    #[test]
    fn a_cursor_follows_seqs_in_any_order_and_remembers_gaps() {
        let mut c = Cursor::default();
        assert!(c.saw(at(5)), "starts the stream");
        assert_eq!((c.low, c.above.as_slice()), (5, &[][..]));
        assert!(!c.saw(at(3)) && !c.saw(at(5)), "before the start, or again: nothing new");
        assert!(c.saw(at(8)) && c.saw(at(7)));
        assert_eq!((c.low, c.above.as_slice()), (5, &[7, 8][..]));
        assert!(!c.has(6) && c.has(7) && c.has(4));
        assert!(c.saw(at(6)));
        assert_eq!((c.low, c.above.as_slice()), (8, &[][..]), "the gap closed");
        assert_eq!(Cursor::decode(&c.encode()), Some(c.clone()));
        // A new epoch starts over.
        assert!(c.saw(Stamp { seq: 2, epoch: 9 }));
        assert_eq!((c.epoch, c.low), (9, 2));
    }

    #[test]
    fn a_cursor_stays_bounded_and_reads_only_what_it_wrote() {
        let mut c = Cursor::default();
        c.saw(at(1));
        for s in (3..).step_by(2).take(Cursor::MAX_ABOVE + 10) {
            c.saw(at(s));
        }
        assert!(c.above.len() <= Cursor::MAX_ABOVE);
        assert_eq!(Cursor::decode(&c.encode()), Some(c.clone()));
        let max = Cursor { epoch: u64::MAX, low: u64::MAX - 2, above: vec![u64::MAX] };
        assert_eq!(Cursor::decode(&max.encode()), Some(max));
        for junk in [&b""[..], &[0; 15], &[0; 17], &[1; 24]] {
            assert_eq!(Cursor::decode(junk), None, "{junk:?}");
        }
    }
}
