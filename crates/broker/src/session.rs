//! The state one MQTT session keeps between and during connections: subscriptions, the
//! outbound QoS 1/2 in-flight window with packet ids, the bounded offline queue and the inbound
//! QoS 2 ids awaiting PUBREL.
//!
//! Sans-IO: every method takes the event and returns what the connection must send; the socket
//! owner does the sending and reports acknowledgements back.

use std::collections::{HashMap, HashSet, VecDeque};
use std::num::NonZeroU16;
use std::sync::Arc;

use crate::origins::{self, CatchUp, Origin};
use crate::streams::{Cursor, Stamp};
use crate::{QoS, SubOptions};

/// What a queued message must tell the session about itself.
pub trait Deliverable {
    /// True once the message's expiry (v5 message-expiry-interval) has passed at `now_ms`.
    fn expired(&self, now_ms: u64) -> bool;
    /// The durable stream the message belongs to and its place there, if it has one.
    fn stream_position(&self) -> Option<(&str, Stamp)> {
        None
    }
    /// The node that routed the message here and its number there, if another node did.
    fn origin(&self) -> Option<&Origin> {
        None
    }
}

impl<T: Deliverable + ?Sized> Deliverable for std::sync::Arc<T> {
    fn expired(&self, now_ms: u64) -> bool {
        (**self).expired(now_ms)
    }
    fn stream_position(&self) -> Option<(&str, Stamp)> {
        (**self).stream_position()
    }
    fn origin(&self) -> Option<&Origin> {
        (**self).origin()
    }
}

/// One PUBLISH as it will go to this session's client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing<M> {
    pub msg: M,
    /// Effective QoS: the lower of the published and the subscribed QoS.
    pub qos: QoS,
    /// Assigned when the message enters the in-flight window (QoS 1/2 only).
    pub packet_id: Option<NonZeroU16>,
    /// Set on redelivery after a reconnect.
    pub dup: bool,
    pub retain: bool,
    /// v5 subscription identifiers of every matching subscription.
    pub subscription_ids: Vec<u32>,
    /// The message's number in its session, given when it arrives: its key in the journal.
    pub entry: u64,
    /// Times it was sent again after a reconnect without being acknowledged.
    pub resends: u16,
}

impl<M> Outgoing<M> {
    pub fn new(msg: M, qos: QoS, retain: bool, subscription_ids: Vec<u32>) -> Self {
        Outgoing { msg, qos, packet_id: None, dup: false, retain, subscription_ids, entry: 0, resends: 0 }
    }
}

/// What changed in the messages of a durable session (see [`Session::set_durable`]), for the
/// journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change<M> {
    /// Keep this message under its entry: it arrived (`first`: the journal cannot hold it
    /// yet), got its packet id, or its PUBREC came (`released`).
    Kept { out: Outgoing<M>, released: bool, first: bool },
    /// The message under this entry is done: acknowledged, dropped or expired.
    Done(u64),
    /// An inbound QoS 2 packet id now awaits its PUBREL (`true`) or no longer does.
    Inbound(u16, bool),
    /// The session's cursor in a durable stream moved.
    Cursor(Arc<str>, Cursor),
}

/// Which message gives way when the offline queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DropPolicy {
    /// Keep the newest messages (a notification feed wants the latest).
    #[default]
    DropOldest,
    /// Refuse new messages once full (keeps the earliest, never reorders).
    DropNewest,
}

/// Bounds of one session, from the edge config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// Largest in-flight window the server uses (further capped by the client's receive maximum).
    pub max_inflight: u16,
    /// Messages kept beyond the in-flight window while the client is away (the drop policy
    /// applies past it). While it is connected and reading, QoS 1/2 messages are never dropped:
    /// past this many the edge slows the publishers down instead (see [`Session::backlog`]).
    pub max_queued: usize,
    pub drop_policy: DropPolicy,
    /// Also queue QoS 0 messages while the client is offline.
    pub queue_qos0: bool,
    /// Times a message is sent without being acknowledged before the session gives up on it
    /// ([`Session::take_exhausted`]); 0 never gives up.
    pub max_deliveries: u16,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            max_inflight: 32,
            max_queued: 1000,
            drop_policy: DropPolicy::DropOldest,
            queue_qos0: false,
            max_deliveries: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InflightState {
    /// PUBLISH sent, waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Published,
    /// PUBREC received and PUBREL sent, waiting for PUBCOMP.
    Released,
}

/// What became of a message handed to [`Session::enqueue`].
#[derive(Debug, PartialEq, Eq)]
pub enum Enqueued<M> {
    /// Send this now.
    Send(Outgoing<M>),
    /// Kept until the window opens or the client comes back.
    Queued,
    /// Dropped: the queue was full (the message dropped may be an older one) or the message
    /// was QoS 0 for an offline client.
    Dropped(Outgoing<M>),
    /// The session already had it: a message its node sent came both replayed and live
    /// (see [`crate::origins`]).
    Had,
    /// Not now: the session is behind ([`Session::fall_behind`]), and the message comes again
    /// with its replay.
    Later,
}

/// Everything a session holds, to move it to another node: its subscriptions, the in-flight
/// window (with packet ids, and whether PUBREC already came), the queue behind it, and the
/// inbound QoS 2 ids awaiting PUBREL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSnapshot<M> {
    pub subscriptions: Vec<(String, SubOptions)>,
    /// In order; `true` once PUBREC arrived (QoS 2).
    pub inflight: Vec<(Outgoing<M>, bool)>,
    pub queue: Vec<Outgoing<M>>,
    pub incoming_qos2: Vec<u16>,
    pub last_packet_id: u16,
    /// How far the session got in each durable stream, by stream.
    pub cursors: Vec<(Arc<str>, Cursor)>,
    /// Its catch-up, while it catches up ([`Session::begin_catch_up`]).
    pub catch_up: Option<CatchUp>,
}

impl<M> SessionSnapshot<M> {
    /// The session leaves the node whose messages the node cursor `cursor` counts
    /// ([`origins::cursor_name`]), which had numbered its messages up to `at`: it had each of
    /// those it matched (it was there), and the next node catches up on those after, which may
    /// have reached nobody while the session moved: a catch-up begins, whose replay needs what
    /// the bus kept from `since_ms` on. `node` is the node as a catch-up's skip names it.
    ///
    /// A catch-up under way goes on instead, no longer skipping `node`'s messages: its replay
    /// on that node may still have owed the session some of them, so the next node gives it
    /// every one of them since the catch-up began that it did not take (some again).
    pub fn moved_from(&mut self, cursor: Arc<str>, at: Stamp, since_ms: u64, node: &str) {
        if let Some(catch_up) = &mut self.catch_up {
            catch_up.left(node, cursor, at);
            return;
        }
        match self.cursors.iter_mut().find(|(name, _)| *name == cursor) {
            Some((_, c)) => {
                origins::reach(c, at);
            }
            None => {
                self.cursors.push((cursor.clone(), Cursor { epoch: at.epoch, low: at.seq, above: Vec::new() }));
                self.cursors.sort_by(|a, b| a.0.cmp(&b.0));
            }
        }
        let cursors = self.cursors.iter().map(|(n, c)| (n, c));
        self.catch_up = Some(CatchUp::new(cursors, "".into()).replaying_from(since_ms));
    }
}

/// The session of one client id.
#[derive(Debug)]
pub struct Session<M> {
    subscriptions: HashMap<String, SubOptions>,
    inflight: VecDeque<(Outgoing<M>, InflightState)>,
    queue: VecDeque<Outgoing<M>>,
    incoming_qos2: HashSet<u16>,
    last_packet_id: u16,
    /// Effective window of the current connection; 0 while offline.
    window: u16,
    limits: SessionLimits,
    /// The entry the next message gets.
    next_entry: u64,
    /// Whether message changes are recorded for the journal.
    durable: bool,
    changes: Vec<Change<M>>,
    /// What [`Session::resume`] gave up on, for [`Session::take_exhausted`].
    exhausted: Vec<Outgoing<M>>,
    /// How far the session got in each durable stream its messages came from, and with each
    /// node that routed messages to it ([`crate::origins`]).
    cursors: HashMap<Arc<str>, Cursor>,
    /// Set while the session, resumed from the journal, catches up on what its dead node missed.
    catch_up: Option<CatchUp>,
    /// Set while it is behind on what other nodes route to it ([`Session::fall_behind`]).
    behind: Option<Behind>,
    /// Set from its arrival with a catch-up until the first pass of its replay is done
    /// ([`Session::hold_for_catch_up`], [`Session::arrived`]).
    arriving: Option<Arriving<M>>,
}

/// A session that came here with a catch-up, until the first pass of its replay is done:
/// nothing leaves its queue, what the replay gives goes in at `at`, before what reached it
/// here meanwhile, and what other nodes routed to it live waits in `held`.
#[derive(Debug)]
struct Arriving<M> {
    at: usize,
    held: Vec<Outgoing<M>>,
    /// The entry numbers of what goes in at `at`: below what comes meanwhile, so that the
    /// journal, which keeps the queue by entry, has it in the queue's order after a crash.
    entries: std::ops::Range<u64>,
}

/// Entry numbers an arriving session sets aside for what its replay gives (and what it held)
/// before what comes meanwhile; past them, those are numbered after (the journal then has
/// them out of order).
const ARRIVAL_ENTRIES: u64 = 1 << 24;

/// A session behind on what other nodes route to it ([`Session::fall_behind`]).
#[derive(Debug)]
struct Behind {
    /// Which time it fell behind, in this process (a replay ends only its own).
    id: u64,
    /// The catch-up that ends with it (one replay of it).
    catch_up: u64,
    /// Whether it skips what comes live; not while it drains ([`BehindStep::Draining`]).
    skipping: bool,
    /// The messages it skipped that its replay has not read yet, by node cursor and number.
    skipped: HashSet<(Arc<str>, Stamp)>,
    /// How many skipped messages its replay has read.
    replayed: u64,
}

impl Behind {
    /// Its replay read `origin`: returns whether it had skipped it.
    fn read(&mut self, origin: &Origin) -> bool {
        let read = self.skipped.remove(&skip_key(origin));
        self.replayed += u64::from(read);
        read
    }
}

/// How [`Behind::skipped`] notes a message from `origin`.
fn skip_key(origin: &Origin) -> (Arc<str>, Stamp) {
    (origin.cursor.clone(), origin.at)
}

/// Where a session behind stands ([`Session::caught_up_behind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BehindStep {
    /// Still behind: its replay has read `replayed` of the messages it skipped, `left` are to
    /// come.
    Behind { replayed: u64, left: usize },
    /// Its replay has read every message it skipped: it takes what comes live again, each
    /// once, but it still catches up for a while (a copy of a replayed message may still be on
    /// its way live: it is taken as had); the next step ends it, unless it fell behind anew
    /// meanwhile.
    Draining,
    /// No longer behind; its catch-up's replay is done.
    Done,
}

/// The id of the next time a session falls behind, in this process.
fn next_behind_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl<M: Deliverable + Clone> Session<M> {
    pub fn new(limits: SessionLimits) -> Self {
        Session {
            subscriptions: HashMap::new(),
            inflight: VecDeque::new(),
            queue: VecDeque::new(),
            incoming_qos2: HashSet::new(),
            last_packet_id: 0,
            window: 0,
            limits,
            next_entry: 1,
            durable: false,
            changes: Vec::new(),
            exhausted: Vec::new(),
            cursors: HashMap::new(),
            catch_up: None,
            behind: None,
            arriving: None,
        }
    }

    /// Records from now on what happens to the session's messages, for [`Session::take_changes`]
    /// (the session outlives its connection, so the journal keeps it).
    pub fn set_durable(&mut self, durable: bool) {
        self.durable = durable;
        if !durable {
            self.changes.clear();
        }
    }

    pub fn is_durable(&self) -> bool {
        self.durable
    }

    /// What happened to the messages since the last call, in order (empty unless durable).
    pub fn take_changes(&mut self) -> Vec<Change<M>> {
        std::mem::take(&mut self.changes)
    }

    fn kept(&mut self, out: &Outgoing<M>, released: bool, first: bool) {
        if self.durable {
            self.changes.push(Change::Kept { out: out.clone(), released, first });
        }
    }

    fn done(&mut self, entry: u64) {
        if self.durable {
            self.changes.push(Change::Done(entry));
        }
    }

    pub fn is_online(&self) -> bool {
        self.window > 0
    }

    /// What another node needs to continue this session.
    pub fn snapshot(&self) -> SessionSnapshot<M> {
        let subscriptions = self.snapshot_subscriptions();
        let mut incoming_qos2: Vec<u16> = self.incoming_qos2.iter().copied().collect();
        incoming_qos2.sort_unstable();
        SessionSnapshot {
            subscriptions,
            inflight: self.inflight.iter().map(|(o, st)| (o.clone(), *st == InflightState::Released)).collect(),
            queue: self.queue.iter().cloned().collect(),
            incoming_qos2,
            last_packet_id: self.last_packet_id,
            cursors: self.snapshot_cursors(),
            catch_up: self.catch_up.clone().map(|mut c| {
                match &self.behind {
                    // What it skipped while behind here, the next node's replay gives it.
                    Some(behind) if behind.skipping => c.owe(behind.skipped.iter().cloned()),
                    // Its replay here has read all it skipped, and it only drains.
                    Some(_) => c.read_here(),
                    None => {}
                }
                c
            }),
        }
    }

    /// The cursors, sorted by stream.
    pub fn snapshot_cursors(&self) -> Vec<(Arc<str>, Cursor)> {
        let mut cursors: Vec<(Arc<str>, Cursor)> = self.cursors.iter().map(|(s, c)| (s.clone(), c.clone())).collect();
        cursors.sort_by(|a, b| a.0.cmp(&b.0));
        cursors
    }

    /// The subscriptions, sorted by filter.
    pub fn snapshot_subscriptions(&self) -> Vec<(String, SubOptions)> {
        let mut subscriptions: Vec<(String, SubOptions)> =
            self.subscriptions.iter().map(|(f, o)| (f.clone(), o.clone())).collect();
        subscriptions.sort_by(|a, b| a.0.cmp(&b.0));
        subscriptions
    }

    /// The session a [`Session::snapshot`] describes, offline, under this node's `limits`.
    /// In-flight entries without a packet id (which a snapshot never has) go to the queue.
    pub fn restore(limits: SessionLimits, snap: SessionSnapshot<M>) -> Self {
        let mut session = Session::new(limits);
        session.subscriptions = snap.subscriptions.into_iter().collect();
        for (out, released) in snap.inflight {
            if out.packet_id.is_some() {
                let state = if released { InflightState::Released } else { InflightState::Published };
                session.inflight.push_back((out, state));
            } else {
                session.queue.push_back(out);
            }
        }
        session.queue.extend(snap.queue);
        session.incoming_qos2 = snap.incoming_qos2.into_iter().collect();
        session.last_packet_id = snap.last_packet_id;
        session.cursors = snap.cursors.into_iter().collect();
        session.catch_up = snap.catch_up;
        let newest = session.inflight.iter().map(|(o, _)| o.entry).chain(session.queue.iter().map(|o| o.entry)).max();
        session.next_entry = newest.map_or(1, |e| e.saturating_add(1));
        session
    }

    pub fn subscriptions(&self) -> impl Iterator<Item = (&str, &SubOptions)> {
        self.subscriptions.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Records a subscription; returns the options it replaced, if any.
    pub fn subscribe(&mut self, filter: &str, options: SubOptions) -> Option<SubOptions> {
        self.subscriptions.insert(filter.to_owned(), options)
    }

    pub fn unsubscribe(&mut self, filter: &str) -> Option<SubOptions> {
        self.subscriptions.remove(filter)
    }

    /// How many subscriptions the client asked for (those the auto-subscribe table gave are
    /// not counted).
    pub fn subscription_count(&self) -> usize {
        self.subscriptions.values().filter(|o| !o.auto).count()
    }

    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    /// A connection took this session: returns everything to (re)send, in order: the unacked
    /// in-flight messages with DUP set and their original packet ids, then queued messages
    /// up to the window. `receive_maximum` is the client's (v5) or 65 535 (v3).
    pub fn resume(&mut self, receive_maximum: u16, now_ms: u64) -> Vec<Outgoing<M>> {
        self.window = receive_maximum.min(self.limits.max_inflight).max(1);
        let max = self.limits.max_deliveries;
        let (exhausted, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.inflight)
            .into_iter()
            .partition(|(o, st)| *st == InflightState::Published && max > 0 && o.resends.saturating_add(1) >= max);
        self.inflight = kept.into();
        for (o, _) in exhausted {
            self.done(o.entry);
            self.exhausted.push(o);
        }
        let mut out: Vec<Outgoing<M>> = self
            .inflight
            .iter_mut()
            .map(|(o, _)| {
                o.dup = true;
                o.resends = o.resends.saturating_add(1);
                o.clone()
            })
            .collect();
        out.extend(self.fill_window(now_ms));
        out
    }

    /// Messages [`Session::resume`] gave up on: sent `max_deliveries` times and never
    /// acknowledged (a client that fails on them would get them forever). They are no longer
    /// the session's.
    pub fn take_exhausted(&mut self) -> Vec<Outgoing<M>> {
        std::mem::take(&mut self.exhausted)
    }

    /// The connection went away; the session keeps its state for the next one. Its queue, with
    /// what it holds unread while it arrives, is cut back to the offline bound by the drop
    /// policy; returns what was dropped (in queue order).
    pub fn go_offline(&mut self) -> Vec<Outgoing<M>> {
        self.window = 0;
        let mut dropped = Vec::new();
        while self.waiting() > self.limits.max_queued {
            let next = match self.limits.drop_policy {
                DropPolicy::DropOldest => self.drop_oldest(),
                DropPolicy::DropNewest => self.drop_newest(),
            };
            let Some((o, journaled)) = next else { break };
            if journaled {
                self.done(o.entry);
            }
            dropped.push(o);
        }
        if self.limits.drop_policy == DropPolicy::DropNewest {
            dropped.reverse();
        }
        dropped
    }

    /// Messages waiting behind the in-flight window: what a connected client has yet to take.
    pub fn backlog(&self) -> usize {
        self.queue.len()
    }

    /// Hands the session a message another node routed to it live: [`Enqueued::Later`] while
    /// it is behind ([`Session::fall_behind`]), if the bus keeps the message (it has an
    /// origin) and its replay did not give it already.
    /// An offline session that holds what comes while it arrives (taken from a dead node)
    /// holds no more than its queue's bound, with its queue: past it, the drop policy drops
    /// the newest or the oldest of both ([`Enqueued::Dropped`]); a QoS 0 message it would not
    /// queue offline it does not hold either. What it drops, a replay does not give it again.
    pub fn enqueue_from_bus(&mut self, out: Outgoing<M>) -> Enqueued<M> {
        let skipping = self.behind.as_ref().is_some_and(|b| b.skipping);
        let Some(origin) = out.msg.origin().filter(|_| skipping).cloned() else { return self.enqueue(out) };
        if self.catch_up.as_ref().is_some_and(|c| c.took(&origin)) {
            return Enqueued::Had;
        }
        let arriving_offline = self.arriving.is_some() && !self.is_online();
        let unqueued = out.qos == QoS::AtMostOnce && !self.limits.queue_qos0;
        let oldest = match arriving_offline && (unqueued || self.is_full()) {
            false => None,
            true if unqueued || self.limits.drop_policy == DropPolicy::DropNewest => return self.drop_held(out),
            true => self.drop_oldest(),
        };
        if let Some(behind) = &mut self.behind {
            behind.skipped.insert(skip_key(&origin));
        }
        if let Some(arriving) = &mut self.arriving {
            arriving.held.push(out);
        }
        oldest.map_or(Enqueued::Later, |oldest| self.dropped(oldest))
    }

    /// What [`Session::drop_oldest`] dropped, done in the journal if it had it.
    fn dropped(&mut self, (oldest, journaled): (Outgoing<M>, bool)) -> Enqueued<M> {
        if journaled {
            self.done(oldest.entry);
        }
        Enqueued::Dropped(oldest)
    }

    /// Whether an offline session's queue is at its bound, with what it holds while it
    /// arrives and its replay has not given yet (those go into the queue at its arrival; the
    /// others are copies of what the replay gave). While it arrives, what it skipped is what
    /// it holds unread.
    fn is_full(&self) -> bool {
        !self.is_online() && self.waiting() >= self.limits.max_queued
    }

    /// What waits for its client, toward its bound: its queue, and while it arrives what it
    /// holds unread.
    fn waiting(&self) -> usize {
        let unread = match (&self.arriving, &self.behind) {
            (Some(_), Some(behind)) => behind.skipped.len(),
            _ => 0,
        };
        self.queue.len() + unread
    }

    /// A message that came live while the session arrives, dropped rather than held: taken as
    /// had, so its replay does not give it again.
    fn drop_held(&mut self, out: Outgoing<M>) -> Enqueued<M> {
        self.taken_as_had(&out);
        Enqueued::Dropped(out)
    }

    /// `out`, which came live while the session arrives, counts as had: its replay does not
    /// give it (again).
    fn taken_as_had(&mut self, out: &Outgoing<M>) {
        if let (Some(catch_up), Some(origin)) = (&mut self.catch_up, out.msg.origin()) {
            catch_up.live(origin);
        }
    }

    /// Forgets the messages waiting for the client (queued, or held while the session arrives)
    /// that `gone` picks; what is in flight stays (its client had it). Held ones are taken as
    /// had, so a replay does not give them again. Returns what it forgot: the queued, then
    /// the held.
    pub fn forget_waiting(&mut self, gone: impl Fn(&Outgoing<M>) -> bool) -> Vec<Outgoing<M>> {
        let mut forgotten = Vec::new();
        let mut kept = VecDeque::with_capacity(self.queue.len());
        let mut before_at = 0;
        let at = self.arriving.as_ref().map_or(0, |a| a.at);
        for (i, out) in std::mem::take(&mut self.queue).into_iter().enumerate() {
            if gone(&out) {
                before_at += usize::from(i < at);
                self.done(out.entry);
                forgotten.push(out);
            } else {
                kept.push_back(out);
            }
        }
        self.queue = kept;
        let held = match &mut self.arriving {
            Some(a) => {
                a.at -= before_at;
                std::mem::take(&mut a.held)
            }
            None => Vec::new(),
        };
        let (gone_held, kept_held): (Vec<_>, Vec<_>) = held.into_iter().partition(|o| gone(o));
        if let Some(a) = &mut self.arriving {
            a.held = kept_held;
        }
        for out in gone_held {
            if let (Some(behind), Some(origin)) = (&mut self.behind, out.msg.origin()) {
                behind.skipped.remove(&skip_key(origin));
            }
            self.taken_as_had(&out);
            forgotten.push(out);
        }
        forgotten
    }

    /// Drops the oldest message waiting: the first of its queue, or the first it holds unread
    /// while it arrives if that goes in first (then taken as had: its replay does not give it
    /// again). Returns it, and whether the journal has it (the caller writes that it is done).
    fn drop_oldest(&mut self) -> Option<(Outgoing<M>, bool)> {
        let held_first = self.arriving.as_ref().is_some_and(|a| a.at == 0);
        let first = self.unread_held().filter(|_| held_first).and_then(|mut unread| unread.next());
        if let Some(oldest) = first.and_then(|i| self.take_held(i)) {
            return Some((oldest, false));
        }
        let oldest = self.queue.pop_front()?;
        if let Some(a) = &mut self.arriving {
            a.at = a.at.saturating_sub(1);
        }
        Some((oldest, true))
    }

    /// Drops the newest message waiting: the last of its queue, unless what it holds unread
    /// while it arrives goes in after that (then the last of those, taken as had). Returns it,
    /// and whether the journal has it.
    fn drop_newest(&mut self) -> Option<(Outgoing<M>, bool)> {
        let held_last = self.arriving.as_ref().is_some_and(|a| a.at >= self.queue.len());
        let last = self.unread_held().filter(|_| held_last).and_then(|mut unread| unread.next_back());
        if let Some(newest) = last.and_then(|i| self.take_held(i)) {
            return Some((newest, false));
        }
        let newest = self.queue.pop_back()?;
        if let Some(a) = &mut self.arriving {
            a.at = a.at.min(self.queue.len());
        }
        Some((newest, true))
    }

    /// Where, among what it holds while it arrives, the messages its replay has not read are.
    fn unread_held(&self) -> Option<impl DoubleEndedIterator<Item = usize> + '_> {
        let (arriving, behind) = (self.arriving.as_ref()?, self.behind.as_ref()?);
        let unread = |o: &Outgoing<M>| o.msg.origin().is_some_and(|o| behind.skipped.contains(&skip_key(o)));
        Some(arriving.held.iter().enumerate().filter(move |(_, o)| unread(o)).map(|(i, _)| i))
    }

    /// Takes the `i`th message it holds while it arrives, unread: taken as had, so its replay
    /// does not give it again.
    fn take_held(&mut self, i: usize) -> Option<Outgoing<M>> {
        let arriving = self.arriving.as_mut().filter(|a| i < a.held.len())?;
        let taken = arriving.held.remove(i);
        if let (Some(behind), Some(origin)) = (&mut self.behind, taken.msg.origin()) {
            behind.skipped.remove(&skip_key(origin));
        }
        self.taken_as_had(&taken);
        Some(taken)
    }

    /// Hands a routed message to the session.
    pub fn enqueue(&mut self, out: Outgoing<M>) -> Enqueued<M> {
        self.enqueue_as(out, false)
    }

    /// [`Session::enqueue`], `replayed` or not ([`Session::take_as`]).
    fn enqueue_as(&mut self, out: Outgoing<M>, replayed: bool) -> Enqueued<M> {
        if let (Some(catch_up), Some(origin)) = (&mut self.catch_up, out.msg.origin())
            && !catch_up.live(origin)
        {
            return Enqueued::Had;
        }
        self.take_as(out, replayed)
    }

    /// Hands the session a message replayed while it catches up ([`Session::begin_catch_up`]);
    /// `None` if it is not one it missed.
    /// A message it skipped while behind is taken unless it came already, whatever it had
    /// then from the same node (what a node routes on different subjects may come out of
    /// order).
    pub fn enqueue_replayed(&mut self, out: Outgoing<M>) -> Option<Enqueued<M>> {
        let skipped = match (&mut self.behind, out.msg.origin()) {
            (Some(behind), Some(origin)) => behind.read(origin),
            _ => false,
        };
        let missed = match (&mut self.catch_up, out.msg.origin()) {
            (Some(catch_up), Some(origin)) if skipped => catch_up.live(origin),
            (Some(catch_up), Some(origin)) => catch_up.wants(origin),
            _ => false,
        };
        missed.then(|| self.take_as(out, true))
    }

    /// The replay of a session behind read a message from `origin`, whether or not the session
    /// took it (it may have expired, or the subscription gone): it is no longer waited for.
    pub fn replay_read(&mut self, origin: &Origin) {
        if let Some(behind) = &mut self.behind {
            behind.read(origin);
        }
    }

    /// The session was resumed from the journal after its node died (or its node was cut off
    /// from the others): until [`Session::caught_up`], messages replayed to it are checked
    /// against what it had then (its cursors) and what comes live meanwhile.
    /// The replay skips what node `skip` published (the session had it without the bus).
    /// A session catching up already waits for one more replay: it keeps what it stood on,
    /// and ends its catch-up once both are done.
    /// Returns the catch-up's id, for [`Session::caught_up`].
    pub fn begin_catch_up(&mut self, skip: Arc<str>) -> u64 {
        match &mut self.catch_up {
            Some(c) => c.hold(),
            None => self.catch_up = Some(CatchUp::new(&self.cursors, skip)),
        }
        self.catch_up.as_ref().map_or(0, CatchUp::id)
    }

    /// Its connection has more waiting than the node lets pile up for what other nodes route
    /// (a reader slower than its publishers): rather than hold up every other session of the
    /// node, it skips their messages that the bus keeps as they come live
    /// ([`Session::enqueue_from_bus`]), and a replay from the bus gives them in order
    /// ([`Session::enqueue_replayed`]), once it has room, until the replay has read every one
    /// it skipped ([`Session::caught_up_behind`]). It catches up meanwhile (a catch-up whose
    /// replay skips what node `this_node` published: it has those without the bus), so it
    /// takes each message once, here or on the node it moves to. Returns which time it fell
    /// behind, for [`Session::caught_up_behind`]; `None` if it is behind already (one that
    /// drains skips again, and its replay goes on).
    pub fn fall_behind(&mut self, this_node: Arc<str>) -> Option<u64> {
        if let Some(behind) = &mut self.behind {
            behind.skipping = true;
            return None;
        }
        let catch_up = self.begin_catch_up(this_node);
        let id = next_behind_id();
        self.behind = Some(Behind { id, catch_up, skipping: true, skipped: HashSet::new(), replayed: 0 });
        Some(id)
    }

    /// It came here with a catch-up (resumed from the journal of a node that died, or handed
    /// over by the node it left): what other nodes route to it live waits, as for a session
    /// behind ([`Session::fall_behind`]), until its replay has read every message it skipped,
    /// so that what it missed while it moved comes first, in the order the bus has it. Its
    /// catch-up ends with that replay ([`Session::caught_up_behind`]). Returns the id for
    /// [`Session::caught_up_behind`]; `None` without a catch-up or if it is behind already.
    /// Until [`Session::arrived`], what reaches it here waits in its queue, and what the
    /// replay gives goes before that (what this node routed before the session came, on its
    /// way to the node it left then, comes by the replay alone).
    pub fn hold_for_catch_up(&mut self) -> Option<u64> {
        let catch_up = self.catch_up.as_ref().map(CatchUp::id).filter(|_| self.behind.is_none())?;
        let id = next_behind_id();
        self.behind = Some(Behind { id, catch_up, skipping: true, skipped: HashSet::new(), replayed: 0 });
        let entries = self.next_entry..self.next_entry.saturating_add(ARRIVAL_ENTRIES);
        self.next_entry = entries.end;
        self.arriving = Some(Arriving { at: self.queue.len(), held: Vec::new(), entries });
        Some(id)
    }

    /// The first pass of the replay of its catch-up since [`Session::hold_for_catch_up`]
    /// answered `id` is done, or given up: what came live meanwhile that the pass did not read
    /// (it came later, or the pass failed) is taken, in the order it came, its queue goes out
    /// again, and it takes what comes live again (the next [`Session::caught_up_behind`] after
    /// a pass that read the bus ends it). Returns what goes out now and what its queue dropped.
    pub fn arrived(&mut self, id: u64, now_ms: u64) -> (Vec<Outgoing<M>>, Vec<Outgoing<M>>) {
        let (mut out, mut dropped) = (Vec::new(), Vec::new());
        if let Some(behind) = self.behind.as_mut().filter(|b| b.id == id) {
            let held = self.arriving.as_mut().map(|a| std::mem::take(&mut a.held)).unwrap_or_default();
            let unread: Vec<Outgoing<M>> =
                held.into_iter().filter(|o| o.msg.origin().is_some_and(|origin| behind.read(origin))).collect();
            behind.skipping = !behind.skipped.is_empty();
            for o in unread {
                match self.enqueue_as(o, true) {
                    Enqueued::Send(o) => out.push(o),
                    Enqueued::Dropped(o) => dropped.push(o),
                    _ => {}
                }
            }
            self.arriving = None;
        }
        out.extend(self.fill_window(now_ms));
        (out, dropped)
    }

    /// The id [`Session::hold_for_catch_up`] answered, while the first pass of its replay is
    /// not done.
    pub fn arrival_id(&self) -> Option<u64> {
        self.behind.as_ref().map(|b| b.id).filter(|_| self.arriving.is_some())
    }

    /// Whether it came with a catch-up and the first pass of its replay is not done
    /// ([`Session::hold_for_catch_up`]): its queue does not go out, so it makes nobody wait.
    pub fn is_arriving(&self) -> bool {
        self.arriving.is_some()
    }

    /// Whether it skips what other nodes route to it live.
    pub fn is_behind(&self) -> bool {
        self.behind.as_ref().is_some_and(|b| b.skipping)
    }

    /// The next step of the session behind since [`Session::fall_behind`] answered `id`, once
    /// its replay has read what the bus has: still behind, draining once the replay has read
    /// every message it skipped, done at the step after that (its catch-up's replay is done).
    /// `None` if it is not behind since then.
    pub fn caught_up_behind(&mut self, id: u64) -> Option<BehindStep> {
        let behind = self.behind.as_mut().filter(|b| b.id == id)?;
        if behind.skipping && behind.skipped.is_empty() {
            behind.skipping = false;
            return Some(BehindStep::Draining);
        }
        if behind.skipping {
            return Some(BehindStep::Behind { replayed: behind.replayed, left: behind.skipped.len() });
        }
        let catch_up = behind.catch_up;
        self.behind = None;
        self.caught_up(catch_up);
        Some(BehindStep::Done)
    }

    /// Its replay since [`Session::fall_behind`] answered `id` gives up (the bus no longer has
    /// what it skipped): it takes what comes live again. Returns how many messages it skipped
    /// that the replay never read (lost to it); `None` if it is not behind since then.
    pub fn give_up_behind(&mut self, id: u64) -> Option<usize> {
        let behind = self.behind.take_if(|b| b.id == id)?;
        self.caught_up(behind.catch_up);
        Some(behind.skipped.len())
    }

    /// The id of its catch-up, while it catches up.
    pub fn catch_up_id(&self) -> Option<u64> {
        self.catch_up.as_ref().map(CatchUp::id)
    }

    /// One replay its catch-up `id` waited for is done; the catch-up ends with the last. A
    /// replay of another catch-up (one before the session moved away and back) changes nothing.
    pub fn caught_up(&mut self, id: u64) {
        if self.catch_up.as_mut().is_some_and(|c| c.id() == id && c.release()) {
            self.catch_up = None;
        }
    }

    /// Ends its catch-up whatever replays are under way (it no longer outlives its connection).
    /// What it held while it arrived, and its replay had not given, is taken as at its arrival
    /// ([`Session::arrived`]): returns what goes out now and what its queue dropped.
    pub fn end_catch_up(&mut self, now_ms: u64) -> (Vec<Outgoing<M>>, Vec<Outgoing<M>>) {
        let released = self.arrival_id().map(|id| self.arrived(id, now_ms)).unwrap_or_default();
        self.catch_up = None;
        self.behind = None;
        self.arriving = None;
        released
    }

    /// Takes a message, `replayed` or not (one replayed while it arrives goes before what
    /// reached it here meanwhile).
    fn take_as(&mut self, mut out: Outgoing<M>, replayed: bool) -> Enqueued<M> {
        self.advance_cursor(&out.msg);
        let set_aside = self.arriving.as_mut().filter(|_| replayed).and_then(|a| a.entries.next());
        out.entry = set_aside.unwrap_or_else(|| {
            self.next_entry = self.next_entry.saturating_add(1);
            self.next_entry - 1
        });
        if out.qos == QoS::AtMostOnce {
            if self.is_online() {
                return Enqueued::Send(out);
            }
            if !self.limits.queue_qos0 {
                return Enqueued::Dropped(out);
            }
        }
        if self.is_online()
            && out.qos != QoS::AtMostOnce
            && self.arriving.is_none()
            && self.queue.is_empty()
            && self.inflight.len() < usize::from(self.window)
        {
            out.packet_id = Some(self.next_packet_id());
            self.kept(&out, false, true);
            self.inflight.push_back((out.clone(), InflightState::Published));
            return Enqueued::Send(out);
        }
        // A connected client's messages are never dropped: its publishers wait instead.
        if self.is_full() {
            return match self.limits.drop_policy {
                DropPolicy::DropNewest => Enqueued::Dropped(out),
                DropPolicy::DropOldest => {
                    let oldest = self.drop_oldest();
                    self.kept(&out, false, true);
                    self.queue_in(out, replayed);
                    oldest.map_or(Enqueued::Queued, |oldest| self.dropped(oldest))
                }
            };
        }
        self.kept(&out, false, true);
        self.queue_in(out, replayed);
        Enqueued::Queued
    }

    /// Queues `out` last, or, `replayed` while the session arrives, after what was replayed
    /// to it before.
    fn queue_in(&mut self, out: Outgoing<M>, replayed: bool) {
        match (&mut self.arriving, replayed) {
            (Some(a), true) => {
                let place = a.at.min(self.queue.len());
                self.queue.insert(place, out);
                a.at = place + 1;
            }
            _ => self.queue.push_back(out),
        }
    }

    /// The session subscribed to `stream`, which stands at `at`: a cursor starts there unless
    /// the session has one (recorded for the journal). Returns whether it started.
    pub fn start_cursor(&mut self, stream: &str, at: Stamp) -> bool {
        if self.cursors.contains_key(stream) {
            return false;
        }
        let cursor = Cursor { epoch: at.epoch, low: at.seq, above: Vec::new() };
        if self.durable {
            self.changes.push(Change::Cursor(Arc::from(stream), cursor.clone()));
        }
        self.cursors.insert(Arc::from(stream), cursor);
        true
    }

    /// Whether the session has a cursor in `stream`.
    pub fn has_cursor(&self, stream: &str) -> bool {
        self.cursors.contains_key(stream)
    }

    /// The session got `msg`: its stream cursor and its cursor with the node that sent it
    /// move (recorded for the journal).
    fn advance_cursor(&mut self, msg: &M) {
        // Every session knows where it stands with each node (one that falls behind catches up
        // from there), but only one that outlives its connection is ever resumed from its
        // cursors.
        if let Some(origin) = msg.origin() {
            let known = self.cursors.contains_key(&origin.cursor);
            let cursor = self.cursors.entry(origin.cursor.clone()).or_default();
            if origins::reach(cursor, origin.at) && self.durable {
                let change = Change::Cursor(origin.cursor.clone(), cursor.clone());
                self.changes.push(change);
            }
            if !known {
                origins::forget_oldest(&mut self.cursors);
            }
        }
        if !self.durable {
            return;
        }
        let Some((stream, at)) = msg.stream_position() else { return };
        let cursor = match self.cursors.get_mut(stream) {
            Some(c) => c,
            None => self.cursors.entry(Arc::from(stream)).or_default(),
        };
        if cursor.saw(at) {
            let change = Change::Cursor(Arc::from(stream), cursor.clone());
            self.changes.push(change);
        }
    }

    /// PUBACK (QoS 1) or PUBCOMP (QoS 2) arrived: the message is done. Returns what the opened
    /// window lets through. Unknown ids are ignored (a late ack after a resend).
    pub fn complete(&mut self, packet_id: NonZeroU16, now_ms: u64) -> Vec<Outgoing<M>> {
        if let Some((o, _)) = self.position(packet_id).and_then(|pos| self.inflight.remove(pos)) {
            self.done(o.entry);
        }
        self.fill_window(now_ms)
    }

    /// PUBREC arrived for an outbound QoS 2 message: from now on only PUBREL/PUBCOMP remain.
    pub fn received(&mut self, packet_id: NonZeroU16) {
        if let Some(pos) = self.position(packet_id) {
            self.inflight[pos].1 = InflightState::Released;
            let out = self.inflight[pos].0.clone();
            self.kept(&out, true, false);
        }
    }

    /// Is this outbound QoS 2 message past PUBREC (so a resend must be a PUBREL)?
    pub fn is_released(&self, packet_id: NonZeroU16) -> bool {
        self.position(packet_id).is_some_and(|pos| self.inflight[pos].1 == InflightState::Released)
    }

    /// Inbound QoS 2 PUBLISH: returns false if this packet id was already received and not yet
    /// released, i.e. the PUBLISH is a duplicate that must not be routed again.
    pub fn incoming_qos2(&mut self, packet_id: u16) -> bool {
        let new = self.incoming_qos2.insert(packet_id);
        if new && self.durable {
            self.changes.push(Change::Inbound(packet_id, true));
        }
        new
    }

    /// Inbound PUBREL: the exactly-once handshake for `packet_id` is over. Returns whether the
    /// id was awaiting release.
    pub fn incoming_released(&mut self, packet_id: u16) -> bool {
        let was = self.incoming_qos2.remove(&packet_id);
        if was && self.durable {
            self.changes.push(Change::Inbound(packet_id, false));
        }
        was
    }

    fn position(&self, packet_id: NonZeroU16) -> Option<usize> {
        self.inflight.iter().position(|(o, _)| o.packet_id == Some(packet_id))
    }

    fn fill_window(&mut self, now_ms: u64) -> Vec<Outgoing<M>> {
        let mut out = Vec::new();
        while self.is_online() && self.arriving.is_none() {
            let qos0_ready = self.queue.front().is_some_and(|o| o.qos == QoS::AtMostOnce);
            if !qos0_ready && self.inflight.len() >= usize::from(self.window) {
                break;
            }
            let Some(mut next) = self.queue.pop_front() else {
                break;
            };
            if next.msg.expired(now_ms) {
                self.done(next.entry);
                continue;
            }
            if next.qos == QoS::AtMostOnce {
                self.done(next.entry);
            } else {
                next.packet_id = Some(self.next_packet_id());
                self.kept(&next, false, false);
                self.inflight.push_back((next.clone(), InflightState::Published));
            }
            out.push(next);
        }
        out
    }

    fn next_packet_id(&mut self) -> NonZeroU16 {
        loop {
            self.last_packet_id = self.last_packet_id.wrapping_add(1);
            if let Some(id) = NonZeroU16::new(self.last_packet_id)
                && self.position(id).is_none()
            {
                return id;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restored_session_continues_where_the_snapshot_left_it() {
        let limits = SessionLimits { max_inflight: 2, ..SessionLimits::default() };
        let mut s = Session::new(limits);
        s.subscribe("a/#", SubOptions { qos: QoS::ExactlyOnce, no_local: true, ..SubOptions::default() });
        let _ = s.resume(2, 0);
        for n in ["one", "two", "three"] {
            let _ = s.enqueue(Outgoing::new(Msg(n, 0), QoS::ExactlyOnce, false, vec![7]));
        }
        let first = NonZeroU16::MIN;
        s.received(first);
        assert!(s.incoming_qos2(9));
        let _ = s.go_offline();
        let snap = s.snapshot();
        assert_eq!(
            snap.inflight.iter().map(|(o, r)| (o.msg.0, *r)).collect::<Vec<_>>(),
            [("one", true), ("two", false)]
        );
        assert_eq!(snap.queue.len(), 1);
        let mut moved = Session::restore(limits, snap.clone());
        assert_eq!(moved.snapshot(), snap, "nothing lost or changed on the way");
        assert!(moved.is_released(first), "PUBREC already came: a PUBREL is what remains");
        assert!(!moved.incoming_qos2(9), "the inbound QoS 2 id still awaits its PUBREL");
        let resent: Vec<_> = moved.resume(2, 0).into_iter().map(|o| (o.msg.0, o.dup, o.packet_id)).collect();
        assert_eq!(resent[0], ("one", true, Some(first)));
        assert_eq!(resent[1].0, "two");
        assert!(resent[1].1);
        let next = moved.complete(first, 0);
        assert_eq!(next.iter().map(|o| o.msg.0).collect::<Vec<_>>(), ["three"]);
        assert_ne!(next[0].packet_id, resent[1].2, "packet ids continue without reuse");
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Msg(&'static str, u64);

    impl Deliverable for Msg {
        fn expired(&self, now_ms: u64) -> bool {
            self.1 != 0 && now_ms >= self.1
        }
    }

    fn out(name: &'static str, qos: QoS) -> Outgoing<Msg> {
        Outgoing::new(Msg(name, 0), qos, false, vec![])
    }

    fn names(v: &[Outgoing<Msg>]) -> Vec<&'static str> {
        v.iter().map(|o| o.msg.0).collect()
    }

    fn limits(max_inflight: u16, max_queued: usize, drop_policy: DropPolicy) -> SessionLimits {
        SessionLimits { max_inflight, max_queued, drop_policy, queue_qos0: false, max_deliveries: 0 }
    }

    fn id(n: u16) -> NonZeroU16 {
        NonZeroU16::new(n).expect("non-zero")
    }

    #[test]
    fn online_qos1_uses_window_then_queues() {
        let mut s = Session::new(limits(2, 10, DropPolicy::DropOldest));
        assert!(s.resume(65535, 0).is_empty());
        let Enqueued::Send(a) = s.enqueue(out("a", QoS::AtLeastOnce)) else { panic!() };
        assert_eq!(a.packet_id, Some(id(1)));
        assert!(matches!(s.enqueue(out("b", QoS::AtLeastOnce)), Enqueued::Send(_)));
        assert_eq!(s.enqueue(out("c", QoS::AtLeastOnce)), Enqueued::Queued);
        assert_eq!(s.inflight(), 2);
        let next = s.complete(id(1), 0);
        assert_eq!(names(&next), vec!["c"]);
        assert_eq!(next[0].packet_id, Some(id(3)));
    }

    #[test]
    fn qos0_offline_is_dropped_unless_configured() {
        let mut s = Session::new(limits(2, 10, DropPolicy::DropOldest));
        assert!(matches!(s.enqueue(out("a", QoS::AtMostOnce)), Enqueued::Dropped(_)));
        let mut s = Session::new(SessionLimits { queue_qos0: true, ..limits(2, 10, DropPolicy::DropOldest) });
        assert_eq!(s.enqueue(out("a", QoS::AtMostOnce)), Enqueued::Queued);
        let sent = s.resume(10, 0);
        assert_eq!(names(&sent), vec!["a"]);
        assert_eq!(sent[0].packet_id, None);
        assert_eq!(s.inflight(), 0);
    }

    #[test]
    fn a_connected_client_loses_nothing_and_the_offline_bound_applies_when_it_leaves() {
        for (policy, kept) in [(DropPolicy::DropOldest, ["q3", "q4"]), (DropPolicy::DropNewest, ["q1", "q2"])] {
            let mut s = Session::new(limits(1, 2, policy));
            s.resume(10, 0);
            assert!(matches!(s.enqueue(out("w", QoS::AtLeastOnce)), Enqueued::Send(_)));
            for n in ["q1", "q2", "q3", "q4"] {
                assert_eq!(s.enqueue(out(n, QoS::AtLeastOnce)), Enqueued::Queued, "online: never dropped");
            }
            assert_eq!(s.backlog(), 4);
            let dropped = s.go_offline();
            assert_eq!(dropped.len(), 2, "{policy:?}");
            assert_eq!(s.backlog(), 2);
            let mut sent = names(&s.resume(10, 0));
            // The window is one message wide: each ack lets the next queued one out.
            for _ in 0..2 {
                let id = s.inflight.front().and_then(|(o, _)| o.packet_id).expect("in flight");
                sent.extend(names(&s.complete(id, 0)));
            }
            assert_eq!(sent, [&["w"][..], &kept[..]].concat(), "{policy:?}");
        }
    }

    #[test]
    fn offline_queue_bound_and_drop_policies() {
        let mut s = Session::new(limits(5, 2, DropPolicy::DropOldest));
        for n in ["a", "b"] {
            assert_eq!(s.enqueue(out(n, QoS::AtLeastOnce)), Enqueued::Queued);
        }
        let Enqueued::Dropped(d) = s.enqueue(out("c", QoS::AtLeastOnce)) else { panic!() };
        assert_eq!(d.msg.0, "a");
        assert_eq!(names(&s.resume(10, 0)), vec!["b", "c"]);

        let mut s = Session::new(limits(5, 2, DropPolicy::DropNewest));
        s.enqueue(out("a", QoS::AtLeastOnce));
        s.enqueue(out("b", QoS::AtLeastOnce));
        let Enqueued::Dropped(d) = s.enqueue(out("c", QoS::AtLeastOnce)) else { panic!() };
        assert_eq!(d.msg.0, "c");
    }

    #[test]
    fn reconnect_redelivers_inflight_with_dup_and_same_ids() {
        let mut s = Session::new(limits(10, 10, DropPolicy::DropOldest));
        s.resume(10, 0);
        s.enqueue(out("a", QoS::AtLeastOnce));
        s.enqueue(out("b", QoS::ExactlyOnce));
        s.received(id(2));
        assert!(s.is_released(id(2)));
        s.go_offline();
        assert_eq!(s.enqueue(out("c", QoS::AtLeastOnce)), Enqueued::Queued);
        let again = s.resume(10, 0);
        assert_eq!(names(&again), vec!["a", "b", "c"]);
        assert_eq!(
            again.iter().map(|o| (o.packet_id, o.dup)).collect::<Vec<_>>(),
            vec![(Some(id(1)), true), (Some(id(2)), true), (Some(id(3)), false),]
        );
        s.complete(id(2), 0);
        assert!(!s.is_released(id(2)));
        assert_eq!(s.inflight(), 2);
    }

    #[test]
    fn window_is_capped_by_client_receive_maximum() {
        let mut s = Session::new(limits(10, 10, DropPolicy::DropOldest));
        s.resume(1, 0);
        assert!(matches!(s.enqueue(out("a", QoS::AtLeastOnce)), Enqueued::Send(_)));
        assert_eq!(s.enqueue(out("b", QoS::AtLeastOnce)), Enqueued::Queued);
    }

    #[test]
    fn expired_messages_are_not_sent_from_the_queue() {
        let mut s = Session::new(limits(10, 10, DropPolicy::DropOldest));
        s.enqueue(Outgoing::new(Msg("old", 100), QoS::AtLeastOnce, false, vec![]));
        s.enqueue(out("new", QoS::AtLeastOnce));
        assert_eq!(names(&s.resume(10, 200)), vec!["new"]);
    }

    #[test]
    fn packet_ids_skip_zero_and_ids_in_use() {
        let mut s = Session::new(limits(3, 10, DropPolicy::DropOldest));
        s.resume(3, 0);
        s.last_packet_id = u16::MAX - 1;
        let ids: Vec<_> = (0..3)
            .map(|_| match s.enqueue(out("x", QoS::AtLeastOnce)) {
                Enqueued::Send(o) => o.packet_id.map(NonZeroU16::get),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ids, vec![Some(u16::MAX), Some(1), Some(2)]);
    }

    #[test]
    fn inbound_qos2_duplicates_are_detected() {
        let mut s: Session<Msg> = Session::new(SessionLimits::default());
        assert!(s.incoming_qos2(7));
        assert!(!s.incoming_qos2(7));
        assert!(s.incoming_released(7));
        assert!(!s.incoming_released(7));
        assert!(s.incoming_qos2(7));
    }
}
