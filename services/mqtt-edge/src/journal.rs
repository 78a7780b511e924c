//! The edge's side of the session journal (`broker::journal`): what the router decided about
//! persistent sessions ([`Persist`]) is written in the order it was decided, whatever piled
//! up meanwhile in one write (one Redis round trip, one SQLite transaction), where it is
//! submitted ([`crate::turns`]). A PUBLISH is acknowledged once the batch holding its changes is
//! durable ([`Durable`]).
//!
//! A message that arrives and is acknowledged by its subscriber before its batch is written is
//! never written at all: the pair cancels out. A failed write is reported to whoever waits
//! (the PUBLISH is not acknowledged; a Redis write is tried once more first) and the journal
//! counts as unhealthy (readiness) until a write succeeds; so does a write under way for
//! longer than a try may take (the embedded store's cannot be cut short).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use prost::Message as _;
use tokio::sync::oneshot;

use broker::journal::{SessionJournal, Write};
use broker::router::Persist;
use broker::session::Change;

use crate::cluster::NodeName;
use crate::message::SharedMessage;
use crate::metrics as m;
use crate::stored;
use crate::turns::{self, Turns};
use wire::pb;

/// Tries of one write before its waiters are told it failed.
const TRIES: u32 = 2;
/// How long one try may take: a write that has not succeeded by then counts as failed (it
/// may still land; what it carried was not acknowledged, so at worst it is delivered twice).
const TRY_TIMEOUT: Duration = Duration::from_secs(1);
/// How often an unhealthy journal is tried while nothing needs writing.
const PROBE_INTERVAL_MS: u64 = 1000;
/// How often a journal written where it is submitted ([`crate::turns`]) is tidied, and how long
/// what nobody waits for may wait for a write.
const TIDY_INTERVAL: Duration = Duration::from_millis(100);

/// How long a message that went out to its session's connection at once waits to be written
/// unless set (`limits.journal_linger_ms`): its subscriber's acknowledgement usually comes
/// first (a fraction of a millisecond on a LAN), and then it needs no writing at all. Its
/// publisher's PUBACK waits for whichever comes first, so this is what a PUBACK may be late by
/// when the subscriber is slower.
pub const LINGER: Duration = Duration::from_millis(1);

/// How many waiting items [`spare`] looks through for a message's arrival: what waits longer
/// is written soon anyway (at worst the pair is written both).
const SPARE_SCAN: usize = 512;

/// What the router decided for the journal: about one session, or a retained message.
#[derive(Debug)]
pub enum Item {
    Session(Arc<str>, Persist<SharedMessage>),
    Retained(Arc<str>, Option<SharedMessage>),
    /// A live session is still here: keep its record this many seconds more (see [`live_ttl`]).
    Touch(Arc<str>, u32),
    /// The will of connection `link`, open here (encoded: `wills::encode`), or none any more:
    /// kept under this edge's name for a live edge to send should this one die (`wills`).
    Will(u64, Option<Vec<u8>>),
    /// The wills of every connection open here, and no others (`Hub::write_wills_again`).
    WillsAre(broker::journal::Wills),
}

/// What a parked session's record outlives the session by in the journal (the router decides
/// when the session ends).
pub const PARKED_SLACK_SECS: u32 = 60;

/// How long a session the journal holds has left, from when its record expires (`None`: never)
/// at `now_ms`: what is left of its expiry, as if it had been parked (its record outlives it
/// by [`PARKED_SLACK_SECS`], or more for a live one's: it gets the benefit of the doubt).
/// 0 when nothing is.
pub fn expiry_left(expiry_secs: u32, record_expires_at_ms: Option<u64>, now_ms: u64) -> u32 {
    let Some(at) = record_expires_at_ms else { return expiry_secs };
    let left = (at.saturating_sub(now_ms) / 1000).saturating_sub(u64::from(PARKED_SLACK_SECS));
    expiry_secs.min(u32::try_from(left).unwrap_or(u32::MAX))
}

/// How often the records of live sessions are touched.
pub const TOUCH_INTERVAL: Duration = Duration::from_secs(300);

/// How long the journal keeps a live session's record after the last write or touch: its
/// expiry plus three touches, so a session whose node died (and stopped touching it) ends in
/// the journal about when it would have ended on that node. `None` for a session that never
/// expires.
pub fn live_ttl(expiry_secs: u32) -> Option<u32> {
    (expiry_secs != u32::MAX).then(|| expiry_secs.saturating_add(3 * TOUCH_INTERVAL.as_secs() as u32))
}

struct Batch {
    items: Vec<Item>,
    done: Option<oneshot::Sender<bool>>,
    /// Where `done` is completed: on the submitting worker's thread when it has a relay.
    relay: Option<crate::relay::Relay>,
    /// Reported written only if no write failed since then either (Unix ms).
    clean_since_ms: Option<u64>,
    /// Writes to write first: those of a write cut short (see [`CutShort`]).
    again: Vec<Write>,
}

impl Batch {
    /// A batch waited for on this thread, and what tells when it is written (see
    /// `clean_since_ms`).
    fn waited(items: Vec<Item>, clean_since_ms: Option<u64>) -> (Self, Durable) {
        let (done, rx) = oneshot::channel();
        let batch = Batch { done: Some(done), relay: crate::relay::here(), clean_since_ms, ..Batch::unwaited(items) };
        (batch, Durable(rx))
    }

    /// A batch nobody waits for.
    fn unwaited(items: Vec<Item>) -> Self {
        Batch { items, done: None, relay: None, clean_since_ms: None, again: Vec::new() }
    }
}

/// Writes to the journal in order, from any thread, where it is submitted
/// ([`crate::turns`]).
#[derive(Clone)]
pub struct JournalWriter {
    turns: Arc<Turns<Journal>>,
    /// How long a message that went out at once may wait to be written ([`LINGER`]).
    linger: Duration,
}

/// The journal as [`JournalWriter`] writes it, in turns.
struct Journal {
    journal: Arc<dyn SessionJournal>,
    health: Health,
    holder: NodeName,
    fence: turns::Fence<dyn SessionJournal>,
}

/// Whether the journal works: the last write succeeded, and the one under way (if any) has
/// not taken longer than a try may. A store that writes on the writer's thread (the embedded
/// one) cannot be interrupted by the writer's timeouts: a hung disk shows here.
#[derive(Debug)]
struct Health {
    ok: AtomicBool,
    writing: crate::UnderWay,
    /// When a write last failed (Unix ms; 0: never).
    failed_at_ms: AtomicU64,
    /// When the journal was last probed (Unix ms).
    probed_at_ms: AtomicU64,
}

impl Health {
    fn new() -> Self {
        Health {
            ok: AtomicBool::new(true),
            writing: Default::default(),
            failed_at_ms: AtomicU64::new(0),
            probed_at_ms: AtomicU64::new(0),
        }
    }

    fn is_healthy(&self, now_ms: u64) -> bool {
        self.ok.load(Ordering::Relaxed) && !self.writing.longer_than(TRY_TIMEOUT, now_ms)
    }

    /// Finds out whether an unhealthy `journal` is back, with a read (nothing needs writing),
    /// at most every [`PROBE_INTERVAL_MS`].
    async fn probe(&self, journal: &dyn SessionJournal) {
        let now = crate::message::now_ms();
        if self.ok.load(Ordering::Relaxed) || now < self.probed_at_ms.load(Ordering::Relaxed) + PROBE_INTERVAL_MS {
            return;
        }
        self.probed_at_ms.store(now, Ordering::Relaxed);
        let probe = tokio::time::timeout(TRY_TIMEOUT, journal.load("hermes:probe")).await;
        self.ok.store(matches!(probe, Ok(Ok(_))), Ordering::Relaxed);
    }
}

impl std::fmt::Debug for JournalWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalWriter").field("journal", &self.turns.work.journal).finish_non_exhaustive()
    }
}

/// Resolves once a batch is durable: `true`, or `false` if it could not be written.
#[derive(Debug)]
pub struct Durable(oneshot::Receiver<bool>);

impl Durable {
    pub async fn wait(self) -> bool {
        self.0.await.unwrap_or(false)
    }
}

impl JournalWriter {
    /// Starts the writer, with the thread of its own that writes what is submitted off the
    /// edge's workers. `holder` signs the records. The writer ends once every clone is dropped.
    pub fn start(journal: Arc<dyn SessionJournal>, holder: NodeName) -> Result<Self, String> {
        Self::start_tidying(journal, holder, TIDY_INTERVAL)
    }

    /// Waits up to `linger` (none: writes at once) before writing messages that went out at
    /// once (see [`JournalWriter::submit`]).
    pub fn lingering(self, linger: Duration) -> Self {
        JournalWriter { linger, ..self }
    }

    /// [`JournalWriter::start`], tidying the journal (and writing what was left for later)
    /// every `tidy_every`.
    fn start_tidying(journal: Arc<dyn SessionJournal>, holder: NodeName, tidy_every: Duration) -> Result<Self, String> {
        let work = Journal { journal, health: Health::new(), holder, fence: Default::default() };
        Ok(JournalWriter { turns: Turns::start(work, "hermes-journal", tidy_every)?, linger: LINGER })
    }

    /// Queues `items` for writing after everything submitted before. Messages that went out
    /// to their sessions' connections at once, and nothing else, wait up to the linger
    /// ([`LINGER`]) to be written: if they are all done meanwhile
    /// ([`JournalWriter::submit_lazily`]), they are never written and the answer is `true` at
    /// once.
    pub fn submit(&self, items: Vec<Item>) -> Durable {
        let lingers = !self.linger.is_zero() && !items.is_empty() && items.iter().all(went_out);
        let (batch, durable) = Batch::waited(items, None);
        match lingers {
            true => self.turns.submit_within(batch, self.linger),
            false => self.turns.submit(batch),
        }
        durable
    }

    fn submit_checked(&self, items: Vec<Item>, clean_since_ms: Option<u64>) -> Durable {
        let (batch, durable) = Batch::waited(items, clean_since_ms);
        self.turns.submit(batch);
        durable
    }

    /// Queues `items` with nobody waiting for them.
    pub fn submit_detached(&self, items: Vec<Item>) {
        self.turns.submit(Batch::unwaited(items));
    }

    /// Queues `items` nobody waits for and that lose nothing if they are never written (a
    /// message's end: unwritten, it is delivered again after a crash): they go with the next
    /// write of something due submitted after them, or within [`TIDY_INTERVAL`].
    ///
    /// A message done before its arrival was written is taken out of what waits instead (see
    /// [`spare`]), and whoever waits only for it hears at once that nothing needs writing.
    pub fn submit_lazily(&self, mut items: Vec<Item>) {
        let mut outcomes = crate::relay::Outcomes::default();
        let spared = self.turns.amend(|waiting| spare(waiting, &mut items, &mut outcomes));
        outcomes.send();
        if spared > 0 {
            metrics::counter!(m::JOURNAL_SPARED).increment(spared as u64);
        }
        if !items.is_empty() {
            self.turns.leave(Batch::unwaited(items));
        }
    }

    /// Resolves once everything submitted so far is written (or failed).
    pub fn written_so_far(&self) -> Durable {
        self.submit(Vec::new())
    }

    /// [`JournalWriter::written_so_far`], `true` only if no write failed since `since_ms`
    /// either: whatever was submitted since then is written, including a batch that failed
    /// before this was asked for.
    pub fn written_since(&self, since_ms: u64) -> Durable {
        self.submit_checked(Vec::new(), Some(since_ms))
    }

    /// Waits until everything submitted so far is written (or failed).
    pub async fn flush(&self) -> bool {
        self.written_so_far().wait().await
    }

    /// The last write succeeded.
    pub fn is_healthy(&self) -> bool {
        self.turns.work.health.is_healthy(crate::message::now_ms())
    }

    /// Whether every edge of the cluster writes to this journal (see `SessionJournal::is_shared`).
    pub fn is_shared(&self) -> bool {
        self.turns.work.journal.is_shared()
    }

    /// The journal's mark, `fresh` unless it had one (see `SessionJournal::mark`).
    pub async fn mark(&self, fresh: &str) -> Result<String, String> {
        self.turns.work.journal.mark(fresh).await
    }

    /// The retained messages the journal holds; unreadable ones are skipped (and logged).
    pub async fn load_retained(&self) -> Result<Vec<SharedMessage>, String> {
        let all = self.turns.work.journal.load_retained().await?;
        let mut messages = Vec::with_capacity(all.len());
        for (topic, body) in all {
            match pb::RoutedMessage::decode(&body[..]).ok().and_then(crate::cluster::decode_message) {
                Some(m) => messages.push(Arc::new(m)),
                None => tracing::warn!(topic, "the journal holds a retained message this edge cannot read"),
            }
        }
        Ok(messages)
    }

    /// When a write last failed (Unix ms; 0: never).
    pub fn failed_at_ms(&self) -> u64 {
        self.turns.work.health.failed_at_ms.load(Ordering::Relaxed)
    }

    /// This edge as it names itself in the journal (the wills of its connections).
    pub fn node(&self) -> String {
        self.turns.work.holder.registered()
    }

    /// The wills `node`'s open connections left (see `SessionJournal::wills`).
    pub async fn wills(&self, node: &str) -> Result<broker::journal::Wills, String> {
        self.turns.work.journal.wills(node).await
    }

    /// Forgets the wills of `node` (see `SessionJournal::forget_wills`).
    pub async fn forget_wills(&self, node: &str) -> Result<(), String> {
        self.turns.work.journal.forget_wills(node).await
    }

    /// The nodes that left wills in a journal only this node writes (see
    /// `SessionJournal::will_nodes`).
    pub async fn will_nodes(&self) -> Result<Vec<String>, String> {
        self.turns.work.journal.will_nodes().await
    }

    /// Records this run of this node in a shared journal; returns its earlier runs (see
    /// `SessionJournal::runs`).
    pub async fn earlier_runs(&self) -> Result<Vec<String>, String> {
        let holder = &self.turns.work.holder;
        self.turns.work.journal.runs(&holder.id, &holder.registered()).await
    }

    /// Forgets `run`, an earlier run of this node, whose wills were sent (see
    /// `SessionJournal::forget_run`).
    pub async fn forget_run(&self, run: &str) -> Result<(), String> {
        self.turns.work.journal.forget_run(&self.turns.work.holder.id, run).await
    }

    /// When `session`'s record expires (see `SessionJournal::expires_at`).
    pub async fn expires_at(&self, session: &str) -> Result<Option<Option<u64>>, String> {
        self.turns.work.journal.expires_at(session).await
    }

    /// The sessions to park when this edge starts (see `SessionJournal::sessions_to_restore`).
    pub async fn sessions_to_restore(&self) -> Result<broker::journal::ToRestore, String> {
        self.turns.work.journal.sessions_to_restore().await
    }

    /// Every session the journal holds (see `SessionJournal::every_session`).
    pub async fn every_session(&self) -> Result<broker::journal::ToRestore, String> {
        self.turns.work.journal.every_session().await
    }

    /// The id of the node writing here (its runs share it).
    pub fn node_id(&self) -> &str {
        &self.turns.work.holder.id
    }

    /// The session the journal holds under `session`.
    pub async fn load(&self, session: &str) -> Result<Option<stored::Journaled>, String> {
        let Some(stored) = self.turns.work.journal.load(session).await? else {
            return Ok(None);
        };
        match stored::from_journal(stored) {
            Some(s) => Ok(Some(s)),
            None => {
                tracing::warn!(session, "the journal holds a session this edge cannot read: starting afresh");
                Ok(None)
            }
        }
    }
}

impl turns::Work for Journal {
    type Job = Batch;

    /// One write of `batches`: a Redis one is tried once more after a timeout; the embedded
    /// store's does not retry (SQLite waits out a lock itself, its busy timeout, and its other
    /// errors do not pass with a retry).
    async fn write(turns: &Arc<Turns<Self>>, mut batches: Vec<Batch>) {
        let Journal { journal, health, holder, fence } = &turns.work;
        let writes = prepare(&mut batches, holder);
        let mut ok = None;
        if !writes.is_empty() {
            let _writing = health.writing.begun(crate::message::now_ms());
            let here = turns::own(turns, journal, || journal.on_this_thread());
            let mut cut_short = CutShort { turns, under_way: Some((writes, batches)) };
            let writes = cut_short.under_way.as_ref().map_or(&[][..], |(writes, _)| writes.as_slice());
            ok = Some(match here.blocks() {
                true => written_once(&*here, writes),
                false => match fence.pass(TRY_TIMEOUT, |j| j.load("hermes:fence")).await {
                    Ok(()) => {
                        let written = write(&*here, writes).await;
                        if !written {
                            fence.put(here);
                        }
                        written
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot write to the session journal");
                        false
                    }
                },
            });
            batches = cut_short.under_way.take().map(|(_, batches)| batches).unwrap_or_default();
        }
        report(batches, ok, health);
    }

    /// Tidies a journal that writes on its caller's thread, the last of it between writes (a
    /// worker holds the turn for a write's microseconds); probes an unhealthy one.
    async fn tick(turns: &Arc<Turns<Self>>) {
        let journal = &*turns.work.journal;
        if journal.blocks() {
            turns::tidy(turns, "the session journal", || journal.tidy(), || journal.tidy_between_writes()).await;
        }
        turns.work.health.probe(journal).await;
    }
}

/// A write under way, with the batches it holds the writes of. Cut short (its worker stopped
/// while Redis answered), it goes back to be written first, by the journal's thread: written
/// twice in order, it leaves what it would have left once. Not fenced ([`turns::Fence`]): its
/// connection ends with its worker, and what Redis had not read of it yet (a stall, at that
/// very moment) could land after the second writing.
struct CutShort<'a> {
    turns: &'a Turns<Journal>,
    under_way: Option<(Vec<Write>, Vec<Batch>)>,
}

impl Drop for CutShort<'_> {
    fn drop(&mut self) {
        if let Some((writes, mut batches)) = self.under_way.take() {
            match batches.first_mut() {
                Some(first) => first.again = writes,
                None => batches.push(Batch { again: writes, ..Batch::unwaited(Vec::new()) }),
            }
            self.turns.put_back(batches);
        }
    }
}

/// Writes to a journal that works on its caller's thread, once.
fn written_once(journal: &dyn SessionJournal, writes: &[Write]) -> bool {
    use futures_util::FutureExt;
    let started = std::time::Instant::now();
    let written = journal.write(writes).now_or_never();
    let written = written.unwrap_or_else(|| Err("the journal did not write on its caller's thread".into()));
    written_or_logged(written, writes.len(), started)
}

/// The writes of `batches`, whose items it takes: what came and went within them is left
/// out.
fn prepare(batches: &mut [Batch], holder: &NodeName) -> Vec<Write> {
    let mut writes: Vec<Write> = batches.iter_mut().flat_map(|b| std::mem::take(&mut b.again)).collect();
    let items: Vec<Item> = batches.iter_mut().flat_map(|b| std::mem::take(&mut b.items)).collect();
    let taken = items.len();
    let items = coalesce(items.into_iter());
    metrics::counter!(m::JOURNAL_SPARED).increment((taken - items.len()) as u64);
    writes.extend(encode(items, holder));
    writes
}

/// Records how a write went and tells those waiting for `batches`. `ok`: how it went, `None`
/// if there was nothing to write (what waited was spared, or only a barrier): the journal's
/// health then stays as it was.
fn report(batches: Vec<Batch>, ok: Option<bool>, health: &Health) {
    if let Some(ok) = ok {
        health.ok.store(ok, Ordering::Relaxed);
        if !ok {
            health.failed_at_ms.store(crate::message::now_ms(), Ordering::Relaxed);
        }
    }
    let ok = ok.unwrap_or(true);
    let failed_at = health.failed_at_ms.load(Ordering::Relaxed);
    let mut outcomes = crate::relay::Outcomes::default();
    for b in batches {
        if let Some(done) = b.done {
            let written = ok && b.clean_since_ms.is_none_or(|since| failed_at < since);
            outcomes.add(b.relay, crate::relay::Outcome::Written(done, written));
        }
    }
    outcomes.send();
}

/// `written`'s outcome, counted (and logged if it failed).
fn written_or_logged(written: Result<(), String>, writes: usize, started: std::time::Instant) -> bool {
    match written {
        Ok(()) => {
            metrics::histogram!(m::JOURNAL_WRITE_SECONDS).record(started.elapsed().as_secs_f64());
            metrics::counter!(m::JOURNAL_WRITES).increment(writes as u64);
            true
        }
        Err(e) => {
            metrics::counter!(m::JOURNAL_ERRORS).increment(1);
            tracing::warn!(error = %e, writes, "cannot write to the session journal");
            false
        }
    }
}

async fn write(journal: &dyn SessionJournal, writes: &[Write]) -> bool {
    let started = std::time::Instant::now();
    for attempt in 1..=TRIES {
        match crate::within(TRY_TIMEOUT, journal.write(writes)).await {
            Err(_) if attempt < TRIES => tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await,
            written => return written_or_logged(written, writes.len(), started),
        }
    }
    false
}

/// Whether `item` is a message's arrival in a session that sent it at once (it has a packet
/// id): its subscriber may acknowledge it before it is written.
fn went_out(item: &Item) -> bool {
    matches!(item, Item::Session(_, Persist::Change(Change::Kept { out, first: true, .. })) if out.packet_id.is_some())
}

/// Takes out of `waiting` the arrival (and later changes) of each message `items` says is done,
/// and that end from `items`: the message came and went before it was written. A batch left
/// with nothing to write tells whoever waits for it that it is written (through `outcomes`;
/// at once if it waits on this thread). Returns how many items were taken.
fn spare(waiting: &mut [Batch], items: &mut Vec<Item>, outcomes: &mut crate::relay::Outcomes) -> usize {
    let mut spared = 0;
    items.retain(|item| {
        let Item::Session(session, Persist::Change(Change::Done(entry))) = item else { return true };
        let Some(found) = arrival(waiting, session, *entry) else { return true };
        spared += found.len() + 1;
        // Descending: each removal leaves the positions still to remove where they were.
        for (b, i) in found {
            let batch = &mut waiting[b];
            batch.items.remove(i);
            if batch.items.is_empty()
                && batch.again.is_empty()
                && batch.clean_since_ms.is_none()
                && let Some(done) = batch.done.take()
            {
                outcomes.add(batch.relay.take(), crate::relay::Outcome::Written(done, true));
            }
        }
        false
    });
    spared
}

/// Where `waiting` holds message `entry` of `session` since it arrived (its arrival and any
/// later change, by batch and item, the last first): `None` if its arrival is not among the
/// last [`SPARE_SCAN`] items (written, or about to be) or the session ended after it.
fn arrival(waiting: &[Batch], session: &Arc<str>, entry: u64) -> Option<Vec<(usize, usize)>> {
    let mut found = Vec::new();
    let mut looked = 0;
    for (b, batch) in waiting.iter().enumerate().rev() {
        for (i, item) in batch.items.iter().enumerate().rev() {
            looked += 1;
            if looked > SPARE_SCAN {
                return None;
            }
            let Item::Session(s, persist) = item else { continue };
            if s != session {
                continue;
            }
            match persist {
                Persist::Change(Change::Kept { out, first, .. }) if out.entry == entry => {
                    found.push((b, i));
                    if *first {
                        return Some(found);
                    }
                }
                Persist::Ended => return None,
                _ => {}
            }
        }
    }
    None
}

/// Drops the messages that arrived and were done within these items: they never need writing.
fn coalesce(items: impl Iterator<Item = Item>) -> Vec<Item> {
    let mut out: Vec<Option<Item>> = Vec::new();
    // (session, entry) → the positions of a message that arrived within these items.
    let mut fresh: HashMap<(Arc<str>, u64), Vec<usize>> = HashMap::new();
    // (session, stream) → the position of the latest cursor.
    let mut cursors: HashMap<(Arc<str>, Arc<str>), usize> = HashMap::new();
    for item in items {
        let (session, persist) = match item {
            Item::Session(session, persist) => (session, persist),
            other @ (Item::Retained(..) | Item::Touch(..) | Item::Will(..) | Item::WillsAre(..)) => {
                out.push(Some(other));
                continue;
            }
        };
        match &persist {
            Persist::Change(Change::Kept { out: o, first, .. }) => {
                let key = (session.clone(), o.entry);
                if *first {
                    fresh.insert(key, vec![out.len()]);
                } else if let Some(at) = fresh.get_mut(&key) {
                    at.push(out.len());
                }
            }
            Persist::Change(Change::Done(entry)) => {
                if let Some(at) = fresh.remove(&(session.clone(), *entry)) {
                    for i in at {
                        out[i] = None;
                    }
                    continue;
                }
            }
            Persist::Change(Change::Cursor(stream, _)) => {
                // Only the last position of a stream in these items is written.
                if let Some(before) = cursors.insert((session.clone(), stream.clone()), out.len()) {
                    out[before] = None;
                }
            }
            Persist::Ended => {
                fresh.retain(|(s, _), _| *s != session);
                cursors.retain(|(s, _), _| *s != session);
            }
            Persist::Record { .. } | Persist::Change(Change::Inbound(..)) => {}
        }
        out.push(Some(Item::Session(session, persist)));
    }
    out.into_iter().flatten().collect()
}

fn encode(items: Vec<Item>, holder: &NodeName) -> Vec<Write> {
    let mut me: Option<Arc<str>> = None;
    items
        .into_iter()
        .map(|item| match item {
            Item::Will(link, body) => {
                let node = me.get_or_insert_with(|| holder.registered().into()).clone();
                Write::Will { node, link, body }
            }
            Item::WillsAre(wills) => {
                let node = me.get_or_insert_with(|| holder.registered().into()).clone();
                Write::WillsAre { node, wills }
            }
            Item::Retained(topic, message) => {
                Write::Retained { topic, body: message.map(|m| crate::cluster::encode_message(&m).encode_to_vec()) }
            }
            Item::Touch(session, ttl_secs) => Write::Touch { session, ttl_secs },
            Item::Session(session, persist) => match persist {
                Persist::Record { subscriptions, expiry_secs, parked } => Write::Record {
                    session,
                    record: stored::journal_record(subscriptions, expiry_secs, holder),
                    // Parked: a minute more than the router's own expiry (the router decides
                    // when it ends). Live: as long as this edge keeps touching it.
                    ttl_secs: if parked {
                        (expiry_secs != u32::MAX).then_some(expiry_secs.saturating_add(PARKED_SLACK_SECS))
                    } else {
                        live_ttl(expiry_secs)
                    },
                },
                Persist::Change(Change::Kept { out, released, .. }) => {
                    let body = stored::stored_message(&out, released).encode_to_vec();
                    Write::Message { session, entry: out.entry, body }
                }
                Persist::Change(Change::Done(entry)) => Write::Done { session, entry },
                Persist::Change(Change::Inbound(packet_id, held)) => Write::Inbound { session, packet_id, held },
                Persist::Change(Change::Cursor(stream, cursor)) => {
                    Write::Cursor { session, stream, cursor: cursor.encode() }
                }
                Persist::Ended => Write::Ended { session },
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;
    use crate::relay::on_a_worker;
    use broker::QoS;
    use broker::session::Outgoing;

    fn kept(session: &Arc<str>, entry: u64, first: bool) -> Item {
        let msg = Arc::new(Message::new("t".into(), ntex_bytes::Bytes::from_static(b"x"), QoS::AtLeastOnce, false));
        let mut out = Outgoing::new(msg, QoS::AtLeastOnce, false, vec![]);
        out.entry = entry;
        Item::Session(session.clone(), Persist::Change(Change::Kept { out, released: false, first }))
    }

    /// A message that went out to its session's connection as it arrived (it has a packet id).
    fn sent(session: &Arc<str>, entry: u64) -> Item {
        let mut item = kept(session, entry, true);
        if let Item::Session(_, Persist::Change(Change::Kept { out, .. })) = &mut item {
            out.packet_id = std::num::NonZeroU16::new(1);
        }
        item
    }

    fn done(session: &Arc<str>, entry: u64) -> Item {
        Item::Session(session.clone(), Persist::Change(Change::Done(entry)))
    }

    fn shape(items: &[Item]) -> Vec<(String, u64, &'static str)> {
        items
            .iter()
            .map(|item| match item {
                Item::Session(s, p) => (s, p),
                Item::Retained(..) | Item::Touch(..) | Item::Will(..) | Item::WillsAre(..) => {
                    panic!("only session changes here")
                }
            })
            .map(|(s, p)| match p {
                Persist::Change(Change::Kept { out, .. }) => (s.to_string(), out.entry, "kept"),
                Persist::Change(Change::Done(e)) => (s.to_string(), *e, "done"),
                Persist::Change(Change::Inbound(id, _)) => (s.to_string(), u64::from(*id), "inbound"),
                Persist::Change(Change::Cursor(_, c)) => (s.to_string(), c.low, "cursor"),
                Persist::Ended => (s.to_string(), 0, "ended"),
                Persist::Record { .. } => (s.to_string(), 0, "record"),
            })
            .collect()
    }

    #[test]
    fn a_message_that_came_and_went_within_a_batch_is_never_written() {
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let items = vec![
            kept(&a, 1, true),
            kept(&b, 1, true),
            kept(&a, 1, false),
            kept(&a, 2, false),
            done(&a, 1),
            done(&a, 2),
            Item::Session(b.clone(), Persist::Ended),
            done(&b, 1),
        ];
        let left = coalesce(items.into_iter());
        // a/1 arrived and was acknowledged: gone. a/2 arrived in an earlier batch: its update
        // and its end are written. b/1's arrival is written before b ended: the end clears it,
        // and the Done after it is kept (harmless).
        assert_eq!(
            shape(&left),
            [
                ("b".into(), 1, "kept"),
                ("a".into(), 2, "kept"),
                ("a".into(), 2, "done"),
                ("b".into(), 0, "ended"),
                ("b".into(), 1, "done")
            ]
        );
    }

    fn cursor(session: &Arc<str>, stream: &str, low: u64) -> Item {
        let c = broker::streams::Cursor { epoch: 1, low, above: vec![] };
        Item::Session(session.clone(), Persist::Change(Change::Cursor(stream.into(), c)))
    }

    #[test]
    fn only_the_last_cursor_of_a_stream_in_a_batch_is_written() {
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let items = vec![
            cursor(&a, "s", 1),
            cursor(&a, "t", 1),
            cursor(&b, "s", 1),
            cursor(&a, "s", 2),
            cursor(&a, "s", 3),
            Item::Session(b.clone(), Persist::Ended),
        ];
        let left = coalesce(items.into_iter());
        assert_eq!(
            shape(&left),
            [("a".into(), 1, "cursor"), ("b".into(), 1, "cursor"), ("a".into(), 3, "cursor"), ("b".into(), 0, "ended")]
        );
    }

    #[test]
    fn a_restored_session_keeps_what_was_left_of_its_expiry() {
        let now = 1_000_000;
        assert_eq!(expiry_left(3600, None, now), 3600, "a record that never expires");
        assert_eq!(expiry_left(u32::MAX, None, now), u32::MAX);
        let parked_at = |secs_ago: u64, expiry: u32| Some(now - secs_ago * 1000 + u64::from(expiry + 60) * 1000);
        assert_eq!(expiry_left(3600, parked_at(600, 3600), now), 3000, "parked ten minutes before the restart");
        assert_eq!(expiry_left(60, parked_at(600, 60), now), 0, "its expiry passed while the node was down");
        assert_eq!(expiry_left(60, Some(now + 30_000), now), 0, "within the slack only");
        assert_eq!(expiry_left(0, Some(now + 3_600_000), now), 0);
        assert_eq!(expiry_left(60, Some(now + 3_600_000), now), 60, "never more than its own expiry");
        assert_eq!(expiry_left(60, Some(u64::MAX), now), 60);
    }

    #[test]
    fn a_write_under_way_for_longer_than_a_try_makes_the_journal_unhealthy() {
        let health = Health::new();
        assert!(health.is_healthy(10_000), "idle");
        health.writing.begin(10_000);
        assert!(health.is_healthy(10_000 + TRY_TIMEOUT.as_millis() as u64), "within a try");
        assert!(!health.is_healthy(10_001 + TRY_TIMEOUT.as_millis() as u64), "stuck");
        assert!(health.is_healthy(5_000), "a clock that went back counts as no time");
        health.writing.end();
        assert!(health.is_healthy(u64::MAX), "done");
        health.ok.store(false, Ordering::Relaxed);
        assert!(!health.is_healthy(10_000), "the last write failed");
    }

    #[tokio::test]
    async fn writes_reach_the_journal_in_order_and_waiters_learn_when() {
        let journal = Arc::new(broker::journal::MemoryJournal::default());
        let writer = JournalWriter::start(journal.clone(), NodeName::new("a")).expect("starts");
        let s: Arc<str> = "s".into();
        let record = Persist::Record { subscriptions: vec![], expiry_secs: 60, parked: false };
        let first = writer.submit(vec![Item::Session(s.clone(), record), kept(&s, 1, true), kept(&s, 2, true)]);
        let second = writer.submit(vec![done(&s, 1)]);
        assert!(first.wait().await && second.wait().await);
        let loaded = writer.load("s").await.expect("loads").expect("a session");
        assert_eq!(loaded.expiry_secs, 60);
        assert_eq!(loaded.holder.map(|h| h.id), Some("a".to_owned()), "signed by its writer");
        assert_eq!(loaded.snapshot.queue.iter().map(|o| o.entry).collect::<Vec<_>>(), [2]);
        assert!(writer.flush().await);
        assert!(writer.is_healthy());
    }

    /// A journal whose writes fail while `failing` is set (its loads while `loads_fail` is),
    /// and of which the next `hang` writes never end; with `blocks`, it says it writes on its caller's thread (as the embedded one), with
    /// `per_thread` it gives each thread a journal of its own (as Redis: `own` is set in it),
    /// and it notes the threads that wrote (", own" after a thread's own journal's).
    #[derive(Debug, Default)]
    struct Failing {
        inner: Arc<broker::journal::MemoryJournal>,
        failing: Arc<AtomicBool>,
        loads_fail: Arc<AtomicBool>,
        hang: Arc<std::sync::atomic::AtomicUsize>,
        blocks: bool,
        per_thread: bool,
        own: bool,
        writers: Arc<std::sync::Mutex<Vec<String>>>,
    }

    impl Failing {
        fn blocking() -> Self {
            Failing { blocks: true, ..Default::default() }
        }

        /// The names of the threads that wrote since the last call.
        fn writers(&self) -> Vec<String> {
            std::mem::take(&mut *self.writers.lock().expect("not poisoned"))
        }
    }

    /// This thread's name, as [`Failing::writers`] notes it.
    fn this_thread() -> String {
        std::thread::current().name().unwrap_or("?").to_owned()
    }

    impl SessionJournal for Failing {
        fn blocks(&self) -> bool {
            self.blocks
        }

        fn on_this_thread(
            &self,
        ) -> Option<broker::relations::BoxFuture<'static, Result<Arc<dyn SessionJournal>, String>>> {
            let own = Failing {
                inner: self.inner.clone(),
                failing: self.failing.clone(),
                loads_fail: self.loads_fail.clone(),
                hang: self.hang.clone(),
                writers: self.writers.clone(),
                own: true,
                ..Default::default()
            };
            let own: Arc<dyn SessionJournal> = Arc::new(own);
            self.per_thread.then(|| Box::pin(async move { Ok(own) }) as broker::relations::BoxFuture<'static, _>)
        }

        fn write<'a>(&'a self, writes: &'a [Write]) -> broker::relations::BoxFuture<'a, Result<(), String>> {
            let by = if self.own { format!("{}, own", this_thread()) } else { this_thread() };
            self.writers.lock().expect("not poisoned").push(by);
            if self.hang.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok() {
                return Box::pin(std::future::pending());
            }
            match self.failing.load(Ordering::Relaxed) {
                true => Box::pin(async { Err("failing".to_owned()) }),
                false => self.inner.write(writes),
            }
        }
        fn load<'a>(
            &'a self,
            session: &'a str,
        ) -> broker::relations::BoxFuture<'a, Result<Option<broker::journal::Stored>, String>> {
            match self.loads_fail.load(Ordering::Relaxed) {
                true => Box::pin(async { Err("failing".to_owned()) }),
                false => self.inner.load(session),
            }
        }
        fn wills<'a>(
            &'a self,
            node: &'a str,
        ) -> broker::relations::BoxFuture<'a, Result<broker::journal::Wills, String>> {
            self.inner.wills(node)
        }
        fn forget_wills<'a>(&'a self, node: &'a str) -> broker::relations::BoxFuture<'a, Result<(), String>> {
            self.inner.forget_wills(node)
        }
        fn load_retained(&self) -> broker::relations::BoxFuture<'_, Result<broker::journal::Retained, String>> {
            self.inner.load_retained()
        }
        fn expires_at<'a>(
            &'a self,
            session: &'a str,
        ) -> broker::relations::BoxFuture<'a, Result<Option<Option<u64>>, String>> {
            self.inner.expires_at(session)
        }
    }

    #[tokio::test]
    async fn written_since_says_no_while_a_write_failed_since_then() {
        let journal = Arc::new(Failing::default());
        let writer = JournalWriter::start(journal.clone(), NodeName::new("a")).expect("starts");
        let s: Arc<str> = "s".into();
        let before = crate::message::now_ms();
        journal.failing.store(true, Ordering::Relaxed);
        assert!(!writer.submit(vec![kept(&s, 1, true)]).wait().await, "failed");
        journal.failing.store(false, Ordering::Relaxed);
        // Nothing is left to write: the barrier alone succeeds, though a write before it failed.
        assert!(writer.written_so_far().wait().await);
        assert!(!writer.written_since(before).wait().await, "a write failed since");
        assert!(writer.written_since(crate::message::now_ms() + 1).wait().await, "none since then");
    }

    #[tokio::test]
    async fn after_a_failed_write_the_next_waits_for_an_answer_over_the_connection_it_failed_on() {
        let journal = Arc::new(Failing::default());
        let writer = untidied(journal.clone());
        let s: Arc<str> = "s".into();
        journal.failing.store(true, Ordering::Relaxed);
        assert!(!writer.submit(vec![record(&s, 60)]).wait().await, "failed");
        journal.writers();
        journal.failing.store(false, Ordering::Relaxed);
        journal.loads_fail.store(true, Ordering::Relaxed);
        assert!(!writer.submit(vec![record(&s, 60)]).wait().await, "its connection does not answer: not written");
        assert_eq!(journal.writers(), [] as [String; 0], "nor tried");
        journal.loads_fail.store(false, Ordering::Relaxed);
        assert!(writer.submit(vec![record(&s, 60)]).wait().await, "it answers: written");
        assert_eq!(journal.writers().len(), 1);
        journal.loads_fail.store(true, Ordering::Relaxed);
        assert!(writer.submit(vec![kept(&s, 1, true)]).wait().await, "and the fence is gone");
        journal.loads_fail.store(false, Ordering::Relaxed);
        assert_eq!(entries(&writer, "s").await, [1]);
    }

    /// A writer of `journal` whose thread does not tick meanwhile: it writes what waits only
    /// when asked to.
    fn untidied(journal: Arc<dyn SessionJournal>) -> JournalWriter {
        JournalWriter::start_tidying(journal, NodeName::new("a"), Duration::from_secs(3600)).expect("starts")
    }

    fn record(session: &Arc<str>, expiry_secs: u32) -> Item {
        Item::Session(session.clone(), Persist::Record { subscriptions: vec![], expiry_secs, parked: false })
    }

    async fn entries(writer: &JournalWriter, session: &str) -> Vec<u64> {
        let loaded = writer.load(session).await.expect("loads").expect("a session");
        let inflight = loaded.snapshot.inflight.iter().map(|(o, _)| o);
        inflight.chain(&loaded.snapshot.queue).map(|o| o.entry).collect()
    }

    #[tokio::test]
    async fn an_embedded_journal_is_written_by_the_worker_that_submits_else_by_its_own_thread() {
        let journal = Arc::new(Failing::blocking());
        // Not tidied meanwhile: the journal's thread writes what waits when it does.
        let writer = untidied(journal.clone());
        let s: Arc<str> = "s".into();
        let worker = this_thread();
        on_a_worker(|| async {
            let first = writer.submit(vec![record(&s, 60), kept(&s, 1, true), kept(&s, 2, true)]);
            let second = writer.submit(vec![done(&s, 1)]);
            assert!(first.wait().await && second.wait().await);
        })
        .await;
        assert_eq!(journal.writers(), [worker.as_str()], "both in one write, on the worker");
        assert_eq!(entries(&writer, "s").await, [2]);
        // A task of the worker's runtime, outside its `LocalSet` (as a catch-up's), too.
        let (w, session) = (writer.clone(), s.clone());
        let on_the_runtime =
            on_a_worker(|| tokio::spawn(async move { w.submit(vec![kept(&session, 3, true)]).wait().await }));
        assert!(on_the_runtime.await.expect("no panic"));
        assert_eq!(journal.writers(), [worker], "on the worker");
        assert_eq!(entries(&writer, "s").await, [2, 3]);
        // Off a worker (a bus task, say), the journal's thread writes.
        assert!(writer.submit(vec![done(&s, 2), done(&s, 3)]).wait().await);
        assert_eq!(journal.writers(), ["hermes-journal"]);
        assert_eq!(entries(&writer, "s").await, [] as [u64; 0]);
        assert!(writer.is_healthy());
    }

    #[tokio::test]
    async fn a_journal_that_connects_each_thread_is_written_over_the_writing_threads_own_connection() {
        let journal = Arc::new(Failing { per_thread: true, ..Default::default() });
        let writer = untidied(journal.clone());
        let s: Arc<str> = "s".into();
        let worker = this_thread();
        let own = format!("{worker}, own");
        on_a_worker(|| async {
            assert!(writer.submit(vec![record(&s, 60), kept(&s, 1, true)]).wait().await);
            assert_eq!(journal.writers(), [worker.as_str()], "over the shared connection while its own is made");
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
            assert!(writer.submit(vec![kept(&s, 2, true)]).wait().await);
            assert!(writer.submit(vec![done(&s, 1)]).wait().await);
            assert_eq!(journal.writers(), [own.as_str(), own.as_str()], "then over its own");
        })
        .await;
        assert_eq!(entries(&writer, "s").await, [2]);
        // Off a worker, the journal's thread writes, over a connection of its own once made.
        assert!(writer.submit(vec![done(&s, 2)]).wait().await);
        let started = std::time::Instant::now();
        while journal.writers().last().is_none_or(|by| by != "hermes-journal, own") {
            assert!(started.elapsed() < Duration::from_secs(3), "the journal's thread connects");
            assert!(writer.submit(vec![done(&s, 99)]).wait().await);
        }
        assert_eq!(entries(&writer, "s").await, [] as [u64; 0]);
    }

    #[tokio::test]
    async fn a_write_cut_short_with_its_worker_is_written_again_by_the_journals_thread() {
        let journal = Arc::new(Failing::default());
        let writer = untidied(journal.clone());
        let s: Arc<str> = "s".into();
        journal.hang.store(1, Ordering::Relaxed);
        let (w, j, session) = (writer.clone(), journal.clone(), s.clone());
        let worker = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(on_a_worker(|| async {
                w.submit_detached(vec![record(&session, 60), kept(&session, 1, true)]);
                while j.writers.lock().expect("not poisoned").is_empty() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                // The worker stops here, its write under way: the task writing is dropped.
            }));
        });
        worker.join().expect("the worker ends");
        let started = std::time::Instant::now();
        while writer.load("s").await.expect("loads").is_none() {
            assert!(started.elapsed() < Duration::from_secs(3), "written again");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(entries(&writer, "s").await, [1]);
        assert_eq!(journal.writers()[1..], ["hermes-journal"], "the write under way, then again");
        assert!(writer.submit(vec![done(&s, 1)]).wait().await, "and the turn was given back");
        assert_eq!(entries(&writer, "s").await, [] as [u64; 0]);
    }

    #[test]
    fn batches_submitted_on_several_workers_at_once_are_all_written_in_the_order_submitted() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let journal = Arc::new(Failing::blocking());
        let writer = runtime.block_on(async { JournalWriter::start(journal.clone(), NodeName::new("a")) });
        let writer = writer.expect("starts");
        let s: Arc<str> = "s".into();
        // As the hub's lock: what is decided is submitted in that order.
        let decided = Arc::new(std::sync::Mutex::new(0u32));
        const EACH: u32 = 500;
        let workers: Vec<_> = (0..3)
            .map(|_| {
                let (writer, s, decided) = (writer.clone(), s.clone(), decided.clone());
                std::thread::spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
                    runtime.block_on(on_a_worker(|| async {
                        let mut waits = Vec::new();
                        for _ in 0..EACH {
                            let arrived = {
                                let mut n = decided.lock().expect("not poisoned");
                                *n += 1;
                                let entry = u64::from(*n);
                                let arrived = writer.submit(vec![record(&s, *n), kept(&s, entry, true)]);
                                // Its end, decided later: written after its arrival, or never.
                                writer.submit_lazily(vec![done(&s, entry)]);
                                arrived
                            };
                            waits.push(arrived);
                            if waits.len() == 16 {
                                for w in waits.drain(..) {
                                    assert!(w.wait().await);
                                }
                            }
                        }
                        for w in waits {
                            assert!(w.wait().await);
                        }
                    }))
                })
            })
            .collect();
        for w in workers {
            w.join().expect("a worker");
        }
        runtime.block_on(async {
            assert!(writer.flush().await);
            let loaded = writer.load("s").await.expect("loads").expect("a session");
            assert_eq!(loaded.expiry_secs, 3 * EACH, "the last record decided is the one kept");
            assert_eq!(entries(&writer, "s").await, [] as [u64; 0], "every end after its message");
        });
    }

    #[tokio::test]
    async fn what_nobody_waits_for_goes_with_the_next_write_or_soon_after() {
        lazily_written(Failing::blocking(), Duration::from_secs(1)).await;
    }

    #[tokio::test]
    async fn what_nobody_waits_for_goes_to_redis_with_the_next_write_or_soon_after() {
        lazily_written(Failing::default(), TIDY_INTERVAL).await;
    }

    /// Lazy changes go with the next write, or within `soon`.
    async fn lazily_written(journal: Failing, soon: Duration) {
        let journal = Arc::new(journal);
        let writer = JournalWriter::start_tidying(journal.clone(), NodeName::new("a"), soon).expect("starts");
        let s: Arc<str> = "s".into();
        on_a_worker(|| async {
            assert!(writer.submit(vec![record(&s, 60), kept(&s, 1, true), kept(&s, 2, true)]).wait().await);
            writer.submit_lazily(vec![done(&s, 1)]);
            tokio::time::sleep(soon / 5).await;
            assert_eq!(entries(&writer, "s").await, [1, 2], "not written yet");
            assert!(writer.submit(vec![kept(&s, 3, true)]).wait().await);
            assert_eq!(entries(&writer, "s").await, [2, 3], "with the next write");
            writer.submit_lazily(vec![done(&s, 2)]);
            let started = std::time::Instant::now();
            while entries(&writer, "s").await != [3] {
                assert!(started.elapsed() < 3 * soon, "written soon");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }

    #[tokio::test]
    async fn a_message_acknowledged_before_it_is_written_is_never_written_and_its_publisher_is_told_at_once() {
        let journal = Arc::new(Failing::blocking());
        let writer = untidied(journal.clone());
        let s: Arc<str> = "s".into();
        on_a_worker(|| async {
            assert!(writer.submit(vec![record(&s, 60)]).wait().await);
            journal.writers();
            // No await between these: the linger cannot end in between.
            let mut both = writer.submit(vec![sent(&s, 1), sent(&s, 2)]);
            writer.submit_lazily(vec![done(&s, 1)]);
            assert!(both.0.try_recv().is_err(), "message 2 is not done yet");
            writer.submit_lazily(vec![done(&s, 2)]);
            assert_eq!(both.0.try_recv(), Ok(true), "nothing left to write: told at once");
            tokio::time::sleep(LINGER * 5).await;
            assert_eq!(journal.writers(), [] as [String; 0], "nothing was written");
            // Not acknowledged within the linger: written, by the worker.
            let started = std::time::Instant::now();
            assert!(writer.submit(vec![sent(&s, 3)]).wait().await);
            assert!(started.elapsed() >= LINGER, "after the linger");
            assert_eq!(journal.writers(), [this_thread()]);
            // A lingering message goes with a change to be written at once: one write.
            let lingering = writer.submit(vec![sent(&s, 4)]);
            assert!(writer.submit(vec![record(&s, 60)]).wait().await);
            assert!(lingering.wait().await);
            assert_eq!(journal.writers(), [this_thread()]);
            // Its end, once written, is written too.
            writer.submit_lazily(vec![done(&s, 3)]);
            assert!(writer.flush().await);
        })
        .await;
        assert_eq!(entries(&writer, "s").await, [4]);
    }

    #[tokio::test]
    async fn without_a_linger_a_message_that_went_out_is_written_at_once() {
        let journal = Arc::new(Failing::blocking());
        let writer = untidied(journal.clone()).lingering(Duration::ZERO);
        let s: Arc<str> = "s".into();
        on_a_worker(|| async {
            assert!(writer.submit(vec![record(&s, 60)]).wait().await);
            journal.writers();
            let sent = writer.submit(vec![sent(&s, 1)]);
            // The write is this worker's next task: no timer involved.
            tokio::task::yield_now().await;
            assert_eq!(journal.writers(), [this_thread()], "written at the end of the turn");
            assert!(sent.wait().await);
        })
        .await;
        assert_eq!(entries(&writer, "s").await, [1]);
    }

    #[tokio::test]
    async fn a_write_of_nothing_leaves_the_journals_health_as_it_was() {
        let journal = Arc::new(Failing::default());
        let writer = untidied(journal.clone());
        let s: Arc<str> = "s".into();
        journal.failing.store(true, Ordering::Relaxed);
        on_a_worker(|| async {
            assert!(!writer.submit(vec![record(&s, 60)]).wait().await, "failed");
            assert!(!writer.is_healthy());
            let sent = writer.submit(vec![sent(&s, 1)]);
            writer.submit_lazily(vec![done(&s, 1)]);
            assert!(sent.wait().await, "spared");
            assert!(writer.flush().await, "nothing to write");
        })
        .await;
        assert!(!writer.is_healthy(), "still not known to work");
    }

    #[test]
    fn only_a_message_whose_arrival_waits_since_its_session_began_is_spared() {
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let (first, mut first_done) = Batch::waited(vec![sent(&a, 1), kept(&b, 1, true), kept(&a, 1, false)], None);
        let (second, mut second_done) = Batch::waited(vec![sent(&b, 2)], None);
        let (third, _) = Batch::waited(vec![Item::Session(b.clone(), Persist::Ended), sent(&b, 9)], None);
        let mut waiting = [first, second, third];
        let mut outcomes = crate::relay::Outcomes::default();
        // b's session ended after its messages 1 and 2 arrived: their ends stay (the session
        // that began since has its own entries, as 9), as does the end of a message not waiting.
        let mut items = vec![done(&a, 1), done(&b, 1), done(&b, 2), done(&a, 7), done(&b, 9)];
        assert_eq!(spare(&mut waiting, &mut items, &mut outcomes), 5, "a/1 with its change, b/9, their ends");
        outcomes.send();
        assert_eq!(shape(&items), [("b".into(), 1, "done"), ("b".into(), 2, "done"), ("a".into(), 7, "done")]);
        let left: Vec<_> = waiting.iter().map(|b| shape(&b.items)).collect();
        assert_eq!(
            left,
            [vec![("b".into(), 1, "kept")], vec![("b".into(), 2, "kept")], vec![("b".into(), 0, "ended")]]
        );
        assert!(first_done.0.try_recv().is_err(), "b/1 is still to write");
        assert!(second_done.0.try_recv().is_err());
    }

    #[tokio::test]
    async fn an_embedded_journal_that_fails_says_so_and_is_found_healthy_again() {
        let journal = Arc::new(Failing::blocking());
        let writer = JournalWriter::start(journal.clone(), NodeName::new("a")).expect("starts");
        let s: Arc<str> = "s".into();
        journal.failing.store(true, Ordering::Relaxed);
        on_a_worker(|| async {
            assert!(!writer.submit(vec![record(&s, 60)]).wait().await, "not written");
        })
        .await;
        assert!(!writer.is_healthy());
        journal.failing.store(false, Ordering::Relaxed);
        let started = std::time::Instant::now();
        while !writer.is_healthy() {
            assert!(started.elapsed() < Duration::from_millis(3 * PROBE_INTERVAL_MS), "probed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(writer.submit(vec![record(&s, 60)]).wait().await);
    }
}
