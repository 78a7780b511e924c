//! Where persistent sessions and retained messages are written so they outlive the edge
//! holding them: the session journal (design §5). Redis in a cluster (`redis_state::RedisJournal`), an embedded database
//! in the data directory for `hermes up` (`embedded_state::SqliteJournal`), memory in tests;
//! all pass [`contract::check`].
//!
//! The router says what changed ([`crate::router::Effect::Persist`]); the edge encodes it and
//! writes it here, in order, before it acknowledges the PUBLISH that caused it. A session is a
//! record (subscriptions, expiry: bytes the edge encodes) and its messages, each under the
//! number the session gave it when it arrived (`Outgoing::entry`). A node that finds no live
//! edge holding a session loads it from here.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use crate::relations::BoxFuture;

/// One change to the journal. Writes of one batch are applied in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// The session's record, replacing the one written before. With `ttl_secs`, the session
    /// and its messages are forgotten that long after this write unless written again (a
    /// parked session's expiry); without, they are kept (a live session).
    Record { session: Arc<str>, record: Vec<u8>, ttl_secs: Option<u32> },
    /// Keeps `body` as the session's message `entry`, replacing one kept under that number;
    /// ignored if the session has no record (it ended or expired: nothing would ever remove
    /// the message).
    Message { session: Arc<str>, entry: u64, body: Vec<u8> },
    /// Message `entry` is done (acknowledged, dropped or expired): forget it.
    Done { session: Arc<str>, entry: u64 },
    /// Inbound QoS 2 `packet_id` awaits its PUBREL (`held`), or no longer does; ignored, like
    /// a message, if the session has no record.
    Inbound { session: Arc<str>, packet_id: u16, held: bool },
    /// The session ended: forget its record and its messages.
    Ended { session: Arc<str> },
    /// Forget the session this long from now unless written or touched again (a live session
    /// whose node keeps it; nothing if the session has no record).
    Touch { session: Arc<str>, ttl_secs: u32 },
    /// The retained message of `topic` (encoded by the edge), or none (cleared).
    Retained { topic: Arc<str>, body: Option<Vec<u8>> },
    /// How far the session got in the durable stream `stream` (encoded by the edge), replacing
    /// the one written before; ignored, like a message, if the session has no record. Gone
    /// with the session.
    Cursor { session: Arc<str>, stream: Arc<str>, cursor: Vec<u8> },
    /// The will of connection `link` of node `node` (encoded by the edge), or none any more
    /// (`body: None`: the connection ended and its node dealt with its will). What is left
    /// when a node dies is what another node sends for its connections.
    Will { node: Arc<str>, link: u64, body: Option<Vec<u8>> },
    /// Node `node`'s wills are these and no others (written again after a write failed: a
    /// will or the end of one may have been lost).
    WillsAre { node: Arc<str>, wills: Wills },
}

/// A session as the journal holds it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stored {
    pub record: Vec<u8>,
    /// By ascending entry.
    pub messages: Vec<(u64, Vec<u8>)>,
    /// Inbound QoS 2 packet ids awaiting their PUBREL, ascending.
    pub inbound: Vec<u16>,
    /// The session's cursors in durable streams, by stream name (ascending).
    pub cursors: Vec<(String, Vec<u8>)>,
}

/// Retained messages by topic, as the journal holds them.
/// Sessions to restore, each with when its record expires (Unix ms, `None` for never).
pub type ToRestore = Vec<(String, Option<u64>)>;

pub type Retained = Vec<(String, Vec<u8>)>;

/// A node's wills by link ([`Write::Will`]).
pub type Wills = Vec<(u64, Vec<u8>)>;

/// Wills kept in memory: by node, by link.
type WillsByNode = BTreeMap<Arc<str>, BTreeMap<u64, Vec<u8>>>;

/// Persistent sessions by session key ([`crate::store::session_key`]).
pub trait SessionJournal: Send + Sync + std::fmt::Debug {
    /// Applies `writes` in order; `Ok` once all of them are durable.
    fn write<'a>(&'a self, writes: &'a [Write]) -> BoxFuture<'a, Result<(), String>>;
    /// The session as written, `None` if it has no record (never written, ended or expired).
    fn load<'a>(&'a self, session: &'a str) -> BoxFuture<'a, Result<Option<Stored>, String>>;
    /// Every retained message, by topic (in no particular order).
    fn load_retained(&self) -> BoxFuture<'_, Result<Retained, String>>;
    /// Whether the nodes of a cluster all write to it (Redis), so that it holds every node's
    /// retained messages; a node's own journal holds only what was published on it.
    fn is_shared(&self) -> bool {
        false
    }
    /// Sets the journal's mark to `fresh` unless it has one; returns the mark it has. A node
    /// that finds another mark than it found before knows the journal lost what it held (its
    /// store restarted without its data). One that never loses anything (the default) always
    /// answers the same, empty, mark.
    fn mark<'a>(&'a self, _fresh: &'a str) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(std::future::ready(Ok(String::new())))
    }
    /// The wills `node`'s connections left ([`Write::Will`]), by link.
    fn wills<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<Wills, String>>;
    /// Forgets every will of `node`.
    fn forget_wills<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<(), String>>;
    /// The nodes that left wills, for a journal only one node writes (the embedded one): what
    /// its earlier runs left, to send when it starts. Empty (the default) for a shared journal:
    /// there a live node sends a dead one's wills when it takes its sessions.
    fn will_nodes(&self) -> BoxFuture<'_, Result<Vec<String>, String>> {
        Box::pin(std::future::ready(Ok(Vec::new())))
    }
    /// Records that `node`, a run of the node named `id`, writes to this shared journal and
    /// returns the other runs of `id` recorded here (earlier ones, which may have left wills),
    /// for a node alone on it without a registry of live nodes: it tells its own earlier runs
    /// apart from other nodes by its id. Empty (the default) for a journal only one node writes
    /// (see [`SessionJournal::will_nodes`]).
    fn runs<'a>(&'a self, _id: &'a str, _node: &'a str) -> BoxFuture<'a, Result<Vec<String>, String>> {
        Box::pin(std::future::ready(Ok(Vec::new())))
    }
    /// Forgets run `node` of `id` (its wills were sent).
    fn forget_run<'a>(&'a self, _id: &'a str, _node: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(std::future::ready(Ok(())))
    }
    /// When `session`'s record expires (Unix ms; `Some(None)`: never), `None` if it has none.
    fn expires_at<'a>(&'a self, session: &'a str) -> BoxFuture<'a, Result<Option<Option<u64>>, String>>;
    /// The sessions a node starting on this journal routes for until their clients come back
    /// (parked, so nothing published meanwhile passes them by), with when each one's record
    /// expires (Unix ms, `None` for never): every live one when only this node writes the
    /// journal (the embedded one), none when nodes share it (their sessions belong to the
    /// nodes that hold them, or come back with their clients).
    fn sessions_to_restore(&self) -> BoxFuture<'_, Result<ToRestore, String>> {
        Box::pin(std::future::ready(Ok(Vec::new())))
    }
    /// Every session this journal holds a record of, with when it expires: what a node alone
    /// on a shared journal (no registry of live nodes) reads when it starts, to restore those
    /// its earlier runs held ([`Stored`] records name their holder). By default
    /// [`SessionJournal::sessions_to_restore`] (a journal only one node writes).
    fn every_session(&self) -> BoxFuture<'_, Result<ToRestore, String>> {
        self.sessions_to_restore()
    }
    /// Whether `write` works on its caller's thread (the embedded store does: its future is
    /// done when first polled), so it cannot be cut short by a timeout, nor is worth trying
    /// again at once.
    fn blocks(&self) -> bool {
        false
    }
    /// Another journal on the same store, whose connection runs on the calling thread's
    /// runtime: a node that writes from several threads, each with a runtime of its own (an
    /// edge's workers), then writes without handing each write to another thread and back.
    /// `None` (the default): this journal serves every thread as well as any other would (the
    /// embedded one writes on its caller's thread).
    fn on_this_thread(&self) -> Option<BoxFuture<'static, Result<Arc<dyn SessionJournal>, String>>> {
        None
    }
    /// For a journal that [`blocks`](SessionJournal::blocks): does what its writes leave out
    /// to stay short (the embedded store's checkpoint, which waits for the disk), as far as
    /// it can while writes go on. Its node calls it now and then on a thread of its own, then
    /// [`SessionJournal::tidy_between_writes`]; a journal left untidied too long tidies within
    /// a write.
    fn tidy(&self) -> Result<(), String> {
        Ok(())
    }
    /// The rest of [`SessionJournal::tidy`], called while no write runs (little is left).
    fn tidy_between_writes(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Sessions kept in this process: for tests, and nodes sharing one process.
#[derive(Debug, Default)]
pub struct MemoryJournal {
    sessions: Mutex<HashMap<Arc<str>, Kept>>,
    retained: Mutex<HashMap<Arc<str>, Vec<u8>>>,
    wills: Mutex<WillsByNode>,
}

#[derive(Debug, Default)]
struct Kept {
    record: Option<Vec<u8>>,
    expires_at: Option<std::time::Instant>,
    messages: BTreeMap<u64, Vec<u8>>,
    inbound: std::collections::BTreeSet<u16>,
    cursors: BTreeMap<Arc<str>, Vec<u8>>,
}

impl MemoryJournal {
    fn apply(&self, writes: &[Write]) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        sessions.retain(|_, k| k.expires_at.is_none_or(|at| at > now));
        for w in writes {
            match w {
                Write::Record { session, record, ttl_secs } => {
                    let kept = sessions.entry(session.clone()).or_default();
                    kept.record = Some(record.clone());
                    kept.expires_at = ttl_secs.map(|t| now + std::time::Duration::from_secs(u64::from(t)));
                }
                Write::Message { session, entry, body } => {
                    if let Some(k) = sessions.get_mut(session).filter(|k| k.record.is_some()) {
                        k.messages.insert(*entry, body.clone());
                    }
                }
                Write::Done { session, entry } => {
                    if let Some(k) = sessions.get_mut(session) {
                        k.messages.remove(entry);
                    }
                }
                Write::Inbound { session, packet_id, held } => {
                    if let Some(k) = sessions.get_mut(session).filter(|k| k.record.is_some()) {
                        if *held {
                            k.inbound.insert(*packet_id);
                        } else {
                            k.inbound.remove(packet_id);
                        }
                    }
                }
                Write::Cursor { session, stream, cursor } => {
                    if let Some(k) = sessions.get_mut(session).filter(|k| k.record.is_some()) {
                        k.cursors.insert(stream.clone(), cursor.clone());
                    }
                }
                Write::Ended { session } => {
                    sessions.remove(session);
                }
                Write::Touch { session, ttl_secs } => {
                    if let Some(k) = sessions.get_mut(session) {
                        k.expires_at = Some(now + std::time::Duration::from_secs(u64::from(*ttl_secs)));
                    }
                }
                Write::Retained { topic, body } => {
                    let mut retained = self.retained.lock().unwrap_or_else(|e| e.into_inner());
                    match body {
                        Some(b) => retained.insert(topic.clone(), b.clone()),
                        None => retained.remove(topic),
                    };
                }
                Write::WillsAre { node, wills } => {
                    let mut all = self.lock_wills();
                    all.remove(node);
                    if !wills.is_empty() {
                        all.insert(node.clone(), wills.iter().cloned().collect());
                    }
                }
                Write::Will { node, link, body } => {
                    let mut wills = self.lock_wills();
                    match body {
                        Some(b) => {
                            wills.entry(node.clone()).or_default().insert(*link, b.clone());
                        }
                        None => {
                            if let Some(of_node) = wills.get_mut(node) {
                                of_node.remove(link);
                                if of_node.is_empty() {
                                    wills.remove(node);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

impl MemoryJournal {
    fn lock_wills(&self) -> std::sync::MutexGuard<'_, WillsByNode> {
        self.wills.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl SessionJournal for MemoryJournal {
    fn wills<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<Wills, String>> {
        let wills = self.lock_wills().get(node).map(|w| w.iter().map(|(l, b)| (*l, b.clone())).collect());
        Box::pin(std::future::ready(Ok(wills.unwrap_or_default())))
    }

    fn forget_wills<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<(), String>> {
        self.lock_wills().remove(node);
        Box::pin(std::future::ready(Ok(())))
    }

    fn will_nodes(&self) -> BoxFuture<'_, Result<Vec<String>, String>> {
        let nodes = self.lock_wills().keys().map(|n| n.to_string()).collect();
        Box::pin(std::future::ready(Ok(nodes)))
    }

    fn write<'a>(&'a self, writes: &'a [Write]) -> BoxFuture<'a, Result<(), String>> {
        self.apply(writes);
        Box::pin(std::future::ready(Ok(())))
    }

    fn load<'a>(&'a self, session: &'a str) -> BoxFuture<'a, Result<Option<Stored>, String>> {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        let stored = sessions.get(session).filter(|k| k.expires_at.is_none_or(|at| at > now)).and_then(|k| {
            let record = k.record.clone()?;
            let messages = k.messages.iter().map(|(e, b)| (*e, b.clone())).collect();
            let inbound = k.inbound.iter().copied().collect();
            let cursors = k.cursors.iter().map(|(s, c)| (s.to_string(), c.clone())).collect();
            Some(Stored { record, messages, inbound, cursors })
        });
        Box::pin(std::future::ready(Ok(stored)))
    }

    fn expires_at<'a>(&'a self, session: &'a str) -> BoxFuture<'a, Result<Option<Option<u64>>, String>> {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        let wall_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let at =
            sessions.get(session).filter(|k| k.record.is_some() && k.expires_at.is_none_or(|at| at > now)).map(|k| {
                k.expires_at.map(|at| wall_ms.saturating_add(u64::try_from((at - now).as_millis()).unwrap_or(u64::MAX)))
            });
        Box::pin(std::future::ready(Ok(at)))
    }

    fn load_retained(&self) -> BoxFuture<'_, Result<Retained, String>> {
        let retained = self.retained.lock().unwrap_or_else(|e| e.into_inner());
        let all = retained.iter().map(|(t, b)| (t.to_string(), b.clone())).collect();
        Box::pin(std::future::ready(Ok(all)))
    }
}

/// The behaviour every [`SessionJournal`] must have. Session keys are unique to each call
/// (`prefix`), so a shared Redis can run it concurrently. Takes about 1.5 s (a TTL runs out).
pub mod contract {
    use std::sync::Arc;

    use super::{SessionJournal, Stored, Write};

    fn record(session: &Arc<str>, bytes: &[u8], ttl_secs: Option<u32>) -> Write {
        Write::Record { session: session.clone(), record: bytes.to_vec(), ttl_secs }
    }

    fn message(session: &Arc<str>, entry: u64, body: &[u8]) -> Write {
        Write::Message { session: session.clone(), entry, body: body.to_vec() }
    }

    fn stored(record: &[u8], messages: &[(u64, &[u8])]) -> Option<Stored> {
        let messages = messages.iter().map(|(e, b)| (*e, b.to_vec())).collect();
        Some(Stored { record: record.to_vec(), messages, inbound: Vec::new(), cursors: Vec::new() })
    }

    fn cursor(session: &Arc<str>, stream: &str, cursor: &[u8]) -> Write {
        Write::Cursor { session: session.clone(), stream: stream.into(), cursor: cursor.to_vec() }
    }

    fn cursors(want: &[(&str, &[u8])]) -> Option<Vec<(String, Vec<u8>)>> {
        Some(want.iter().map(|(s, c)| (s.to_string(), c.to_vec())).collect())
    }

    fn inbound(session: &Arc<str>, packet_id: u16, held: bool) -> Write {
        Write::Inbound { session: session.clone(), packet_id, held }
    }

    async fn load(j: &dyn SessionJournal, session: &str) -> Option<Stored> {
        j.load(session).await.expect("load")
    }

    pub async fn check(j: &dyn SessionJournal, prefix: &str) {
        let s: Arc<str> = format!("{prefix}:5:alice/phone").into();
        let other: Arc<str> = format!("{prefix}:5:alice/phone2").into();
        assert_eq!(load(j, &s).await, None, "never written");
        j.write(&[]).await.expect("an empty batch");
        // The mark stays what it first was (the contracts may share a store: whatever it is).
        let mark = j.mark(&format!("{prefix}-a")).await.expect("mark");
        assert_eq!(j.mark(&format!("{prefix}-b")).await.expect("mark"), mark, "a mark is set once");

        // Messages come back by entry, whatever order they were written in.
        let batch = [record(&s, b"r1", None), message(&s, 3, b"three"), message(&s, 1, b"one"), message(&s, 2, b"two")];
        j.write(&batch).await.expect("write");
        j.write(&[record(&other, b"o", None), message(&other, 1, b"other")]).await.expect("write");
        assert_eq!(load(j, &s).await, stored(b"r1", &[(1, b"one"), (2, b"two"), (3, b"three")]));

        // Replace a message (a packet id assigned), finish one, rewrite the record: in order.
        let batch = [
            message(&s, 2, b"two, sent"),
            Write::Done { session: s.clone(), entry: 1 },
            Write::Done { session: s.clone(), entry: 99 },
            record(&s, b"r2", None),
            message(&s, 4, b"four"),
            Write::Done { session: s.clone(), entry: 4 },
        ];
        j.write(&batch).await.expect("write");
        assert_eq!(load(j, &s).await, stored(b"r2", &[(2, b"two, sent"), (3, b"three")]));
        assert_eq!(load(j, &other).await, stored(b"o", &[(1, b"other")]), "sessions are apart");

        // Inbound QoS 2 ids: held, released, at the bounds; gone with the session.
        let batch = [inbound(&s, 1, true), inbound(&s, 65_535, true), inbound(&s, 7, true), inbound(&s, 7, false)];
        j.write(&batch).await.expect("write");
        let held = load(j, &s).await.map(|st| st.inbound);
        assert_eq!(held, Some(vec![1, 65_535]));
        // Released and taken again within one batch, among other sessions' changes: held.
        let batch = [inbound(&s, 9, true), inbound(&other, 9, true), inbound(&s, 9, false), inbound(&s, 9, true)];
        j.write(&batch).await.expect("write");
        assert_eq!(load(j, &s).await.map(|st| st.inbound), Some(vec![1, 9, 65_535]));
        j.write(&[inbound(&s, 9, false), inbound(&other, 9, false)]).await.expect("write");
        assert_eq!(load(j, &other).await.map(|st| st.inbound), Some(vec![]), "sessions are apart");

        // Cursors in durable streams: written in a batch with the record, replaced by later
        // writes, by ascending stream name, names of any bytes a topic may hold, empty and
        // large cursors; gone with the session.
        let c: Arc<str> = format!("{prefix}:5:c/cursors").into();
        let odd_stream = "s/{x} *>.|\u{e9}\u{2028}\u{1F600}";
        let large = vec![0x5A_u8; 64 << 10];
        let batch = [
            cursor(&c, "early", b"before the record: ignored"),
            record(&c, b"c", None),
            cursor(&c, "orders/eu", b"eu1"),
            cursor(&c, "orders", b"o1"),
            cursor(&c, odd_stream, b"odd"),
            cursor(&c, "alerts", b""),
            cursor(&c, "large", &large),
            message(&c, 1, b"m"),
        ];
        j.write(&batch).await.expect("write");
        let want =
            [("alerts", &b""[..]), ("large", &large), ("orders", b"o1"), ("orders/eu", b"eu1"), (odd_stream, b"odd")];
        assert_eq!(load(j, &c).await.map(|st| st.cursors), cursors(&want));
        assert_eq!(load(j, &c).await.map(|st| st.messages), Some(vec![(1, b"m".to_vec())]), "beside messages");
        let batch = [
            cursor(&c, "orders", b"o2"),
            cursor(&c, "alerts", b"a2"),
            cursor(&c, "orders", b"o3"),
            cursor(&c, "large", b""),
        ];
        j.write(&batch).await.expect("write");
        let want =
            [("alerts", &b"a2"[..]), ("large", b""), ("orders", b"o3"), ("orders/eu", b"eu1"), (odd_stream, b"odd")];
        assert_eq!(load(j, &c).await.map(|st| st.cursors), cursors(&want), "replaced");
        j.write(&[record(&c, b"c2", None), Write::Touch { session: c.clone(), ttl_secs: 3600 }]).await.expect("write");
        assert_eq!(load(j, &c).await.map(|st| st.cursors), cursors(&want), "a new record keeps them");
        assert_eq!(load(j, &other).await.map(|st| st.cursors), cursors(&[]), "sessions are apart");
        j.write(&[cursor(&s, "orders", b"s1"), cursor(&s, "alerts", b"s2")]).await.expect("write");
        assert_eq!(load(j, &s).await.map(|st| st.cursors), cursors(&[("alerts", b"s2"), ("orders", b"s1")]));
        let none: Arc<str> = format!("{prefix}:5:c/none").into();
        j.write(&[cursor(&none, "orders", b"n1"), Write::Done { session: none.clone(), entry: 1 }])
            .await
            .expect("write");
        assert_eq!(load(j, &none).await, None, "a cursor makes no session");
        j.write(&[record(&none, b"n", None)]).await.expect("write");
        assert_eq!(load(j, &none).await, stored(b"n", &[]), "and was never kept");
        let batch = [cursor(&c, "orders", b"o4"), Write::Ended { session: c.clone() }, cursor(&c, "orders", b"o5")];
        j.write(&batch).await.expect("end");
        assert_eq!(load(j, &c).await, None, "ended with its cursors");
        j.write(&[record(&c, b"c3", None)]).await.expect("restart");
        assert_eq!(load(j, &c).await, stored(b"c3", &[]), "restarted without cursors");

        // An ended session is gone with its messages; a new one under the key starts empty.
        j.write(&[Write::Ended { session: s.clone() }]).await.expect("end");
        assert_eq!(load(j, &s).await, None);
        j.write(&[Write::Ended { session: s.clone() }, record(&s, b"r3", None)]).await.expect("restart");
        assert_eq!(load(j, &s).await, stored(b"r3", &[]));

        // Entries at the bounds, empty and large bodies, keys of any bytes a client id may hold.
        let odd: Arc<str> = format!("{prefix}:3:u:x/{{}} *>.|\n\u{2028}").into();
        let big = vec![0xA5_u8; 1 << 20];
        let batch = [record(&odd, b"", None), message(&odd, u64::MAX, &big), message(&odd, 0, b"")];
        j.write(&batch).await.expect("write");
        assert_eq!(load(j, &odd).await, stored(b"", &[(0, b""), (u64::MAX, &big)]));

        // A long run of changes to one session in one batch: set, some deleted again, some
        // deleted that never were (more than a store may take in one command).
        let many: Arc<str> = format!("{prefix}:5:m/many").into();
        let mut batch = vec![record(&many, b"m", None)];
        let body = |e: u64| (e ^ 0xFF).to_be_bytes();
        batch.extend((0..2500_u64).map(|e| message(&many, e, &body(e))));
        batch.extend((0..1500_u64).map(|e| Write::Done { session: many.clone(), entry: e * 2 }));
        j.write(&batch).await.expect("a long run");
        let odd_ones: Vec<(u64, Vec<u8>)> = (1..2500_u64).step_by(2).map(|e| (e, body(e).to_vec())).collect();
        assert_eq!(load(j, &many).await.map(|st| st.messages), Some(odd_ones));

        // A parked session is forgotten when its expiry runs out, unless its client came back.
        let parked: Arc<str> = format!("{prefix}:1:p/parked").into();
        let back: Arc<str> = format!("{prefix}:1:p/back").into();
        let long: Arc<str> = format!("{prefix}:1:p/long").into();
        let touched: Arc<str> = format!("{prefix}:1:p/touched").into();
        let nobody: Arc<str> = format!("{prefix}:1:p/nobody").into();
        let batch = [
            record(&parked, b"p", Some(1)),
            message(&parked, 1, b"queued"),
            cursor(&parked, "orders", b"p1"),
            record(&back, b"b", Some(1)),
            message(&back, 1, b"queued"),
            cursor(&back, "orders", b"b1"),
            record(&back, b"b, live", None),
            record(&long, b"l", Some(3600)),
            // A live session's node keeps touching it; one it stopped touching runs out.
            record(&touched, b"t", Some(1)),
            Write::Touch { session: touched.clone(), ttl_secs: 3600 },
            Write::Touch { session: long.clone(), ttl_secs: 1 },
            Write::Touch { session: nobody.clone(), ttl_secs: 3600 },
        ];
        j.write(&batch).await.expect("write");
        sleep(std::time::Duration::from_millis(1500)).await;
        assert_eq!(load(j, &parked).await, None, "expired");
        let mut kept = stored(b"b, live", &[(1, b"queued")]);
        if let Some(st) = kept.as_mut() {
            st.cursors = vec![("orders".to_string(), b"b1".to_vec())];
        }
        assert_eq!(load(j, &back).await, kept, "live again: kept, with its cursors");
        assert_eq!(load(j, &touched).await, stored(b"t", &[]), "touched: kept");
        assert_eq!(load(j, &long).await, None, "touched shorter: gone");
        assert_eq!(j.expires_at(&long).await, Ok(None), "no record, no expiry");
        assert_eq!(j.expires_at(&back).await, Ok(Some(None)), "live: never");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as u64;
        let at = j.expires_at(&touched).await.expect("expires_at").flatten().expect("touched for an hour");
        assert!((now + 3_590_000..=now + 3_600_000).contains(&at), "touched for an hour at {now}: {at}");
        assert_eq!(load(j, &nobody).await, None, "a touch makes no session");
        let batch = [message(&parked, 2, b"late"), inbound(&parked, 3, true), cursor(&parked, "late", b"p2")];
        j.write(&batch).await.expect("for a session that is gone");
        assert_eq!(load(j, &parked).await, None, "messages without a record are no session");
        j.write(&[record(&parked, b"p2", None)]).await.expect("write");
        assert_eq!(load(j, &parked).await, stored(b"p2", &[]), "and were never kept, nor its cursors");

        // Retained messages: set, replaced, cleared, topics of any bytes; in the same batches
        // as session writes. Other runs may share the journal: only this run's topics count.
        let topic = |t: &str| -> Arc<str> { format!("{prefix}/{t}").into() };
        let retain = |t: &str, body: Option<&[u8]>| Write::Retained { topic: topic(t), body: body.map(<[u8]>::to_vec) };
        let batch = [
            retain("a", Some(b"1")),
            retain("a", Some(b"2")),
            retain("b", Some(b"")),
            retain("c", Some(b"gone")),
            record(&s, b"r4", None),
            retain("c", None),
            retain("d/{x} *>.", Some(b"odd")),
            retain("never", None),
        ];
        j.write(&batch).await.expect("write");
        let mut mine: Vec<(String, Vec<u8>)> = j
            .load_retained()
            .await
            .expect("load retained")
            .into_iter()
            .filter(|(t, _)| t.starts_with(&format!("{prefix}/")))
            .collect();
        mine.sort();
        let want = [(topic("a"), &b"2"[..]), (topic("b"), b""), (topic("d/{x} *>."), b"odd")];
        let want: Vec<(String, Vec<u8>)> = want.iter().map(|(t, b)| (t.to_string(), b.to_vec())).collect();
        assert_eq!(mine, want);
        check_wills(j, prefix).await;
        if j.is_shared() {
            check_runs(j, prefix).await;
            check_every_session(j, prefix).await;
        }
    }

    /// A shared journal lists every session it holds a record of, with its expiry.
    async fn check_every_session(j: &dyn SessionJournal, prefix: &str) {
        let session = |name: &str| -> Arc<str> { format!("{prefix}:9:every/{{}}*{name}").into() };
        let (lasting, expiring, ended) = (session("lasting"), session("expiring"), session("ended"));
        let record = |s: &Arc<str>, ttl_secs| Write::Record { session: s.clone(), record: b"r".to_vec(), ttl_secs };
        let batch = [
            record(&lasting, None),
            record(&expiring, Some(3600)),
            record(&ended, None),
            Write::Ended { session: ended.clone() },
        ];
        j.write(&batch).await.expect("write");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let mut mine: crate::journal::ToRestore = j
            .every_session()
            .await
            .expect("every session")
            .into_iter()
            .filter(|(s, _)| s.starts_with(&format!("{prefix}:9:every/")))
            .collect();
        mine.sort();
        let names: Vec<&str> = mine.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(names, [&*expiring, &*lasting], "not the ended one");
        assert_eq!(mine[1].1, None, "one that never expires");
        let at = mine[0].1.expect("one that expires");
        assert!(at > now + 3_500_000 && at <= now + 3_601_000, "in an hour: {at} vs {now}");
    }

    /// A shared journal's runs of a node id: each run learns the others, ids apart, a run
    /// forgotten once its wills were sent.
    async fn check_runs(j: &dyn SessionJournal, prefix: &str) {
        let (id, other) = (format!("{prefix}-lone"), format!("{prefix}-other"));
        let run = |n: u64| format!("{id}:{n}");
        assert_eq!(j.runs(&id, &run(1)).await.expect("runs"), Vec::<String>::new(), "the first run");
        assert_eq!(j.runs(&id, &run(2)).await.expect("runs"), vec![run(1)], "the next learns the first");
        assert_eq!(j.runs(&id, &run(2)).await.expect("runs"), vec![run(1)], "asked again");
        assert_eq!(j.runs(&other, &format!("{other}:1")).await.expect("runs"), Vec::<String>::new(), "ids apart");
        j.forget_run(&id, &run(1)).await.expect("forget");
        let mut runs = j.runs(&id, &run(3)).await.expect("runs");
        runs.sort();
        assert_eq!(runs, vec![run(2)], "the first forgotten, the second not yet");
    }

    /// Wills by node and link: set, replaced, gone, at the bounds of a link; nodes apart.
    async fn check_wills(j: &dyn SessionJournal, prefix: &str) {
        let (a, b): (Arc<str>, Arc<str>) = (format!("{prefix}-edge-a:1").into(), format!("{prefix}-edge-b:2").into());
        let will = |node: &Arc<str>, link: u64, body: Option<&[u8]>| Write::Will {
            node: node.clone(),
            link,
            body: body.map(<[u8]>::to_vec),
        };
        assert_eq!(j.wills(&a).await.expect("wills"), Vec::new(), "none yet");
        let batch = [
            will(&a, 0, Some(b"zero")),
            will(&a, u64::MAX, Some(b"max")),
            will(&a, 7, Some(b"seven")),
            will(&b, 7, Some(b"b's seven")),
            will(&a, 7, Some(b"seven again")),
            will(&a, 0, None),
            will(&a, 12, None),
        ];
        j.write(&batch).await.expect("write wills");
        let mut left = j.wills(&a).await.expect("wills");
        left.sort();
        assert_eq!(left, vec![(7, b"seven again".to_vec()), (u64::MAX, b"max".to_vec())]);
        assert_eq!(j.wills(&b).await.expect("wills"), vec![(7, b"b's seven".to_vec())], "nodes are apart");
        let nodes = j.will_nodes().await.expect("will nodes");
        if !j.is_shared() {
            assert!(nodes.contains(&a.to_string()) && nodes.contains(&b.to_string()), "{nodes:?}");
        }
        j.forget_wills(&a).await.expect("forget");
        assert_eq!(j.wills(&a).await.expect("wills"), Vec::new(), "forgotten");
        assert_eq!(j.wills(&b).await.expect("wills").len(), 1, "the other node's stay");
        // Written whole again: these and no others, then added to.
        let again = Write::WillsAre { node: b.clone(), wills: vec![(1, b"one".to_vec()), (u64::MAX, b"max".to_vec())] };
        j.write(&[will(&b, 3, Some(b"three")), again, will(&b, 2, Some(b"two"))]).await.expect("write");
        let mut left = j.wills(&b).await.expect("wills");
        left.sort();
        assert_eq!(left, vec![(1, b"one".to_vec()), (2, b"two".to_vec()), (u64::MAX, b"max".to_vec())]);
        j.write(&[Write::WillsAre { node: b.clone(), wills: Vec::new() }]).await.expect("write");
        assert_eq!(j.wills(&b).await.expect("wills"), Vec::new(), "none left");
        let nodes = j.will_nodes().await.expect("will nodes");
        assert!(!nodes.contains(&a.to_string()) && !nodes.contains(&b.to_string()), "{nodes:?}");
    }

    /// Sleeps without depending on a runtime (the broker crate has none): a thread wakes the
    /// task.
    pub(crate) async fn sleep(d: std::time::Duration) {
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = done.clone();
        let waker = std::sync::Arc::new(std::sync::Mutex::new(None::<std::task::Waker>));
        let w = waker.clone();
        std::thread::spawn(move || {
            std::thread::sleep(d);
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            if let Some(w) = w.lock().unwrap_or_else(|e| e.into_inner()).take() {
                w.wake();
            }
        });
        std::future::poll_fn(|cx| {
            *waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
            if done.load(std::sync::atomic::Ordering::SeqCst) {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn memory_journal_meets_the_contract() {
        let journal = super::MemoryJournal::default();
        crate::test_support::block_on(super::contract::check(&journal, "t"));
    }
}
