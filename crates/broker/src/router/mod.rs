//! The broker's decisions as a sans-IO router: who owns a session, what a takeover, a
//! disconnect or an expiry does to it, where a publish goes, when a will or a presence change is
//! sent, which subscriptions survive a change of relations.
//!
//! The router takes events (`connect`, `publish`, `disconnect`, `tick`, ...) with the time
//! `now_ms` and pushes [`Effect`]s: deliveries to hand to a connection, connections to close,
//! and what happened (for metrics and logs). It never touches a socket, a clock or a lock; the
//! edge keeps those, one router per edge behind its mutex, and applies the effects in order.
//! Authorization is passed in ([`Authorize`]): the router asks, the edge's ACL answers.
//!
//! Sessions are keyed by [`crate::store::session_key`] (owner and client id). A session with a
//! connection is *live* here; without one it is *parked* in the [`SessionStore`], with its
//! subscriptions still routable so messages queue for it.

mod lifecycle;
mod subscriptions;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;

use crate::QoS;
use crate::SubOptions;
use crate::presence::{Announce, Presence};
use crate::retained::RetainedStore;
use crate::route::RoutePlan;
use crate::session::{BehindStep, Change, Deliverable, Enqueued, Outgoing, Session, SessionLimits, SessionSnapshot};
use crate::store::{MemorySessionStore, SessionStore};
use crate::topic::{TopicError, TopicLimits};
use crate::trie::SubscriptionTrie;

/// Names one connection of the edge: the router allocates it at CONNECT, the edge links it to
/// the connection's delivery channel.
pub type LinkId = u64;

/// What the router needs to know about a message. The router clones messages once per
/// session they go to: make cloning cheap (`Arc<T>` is `Routable` when `T` is).
pub trait Routable: Deliverable {
    fn topic(&self) -> &str;
    fn qos(&self) -> QoS;
    fn retain(&self) -> bool;
    /// A retained message with an empty payload clears its topic's retained message.
    fn clears_retained(&self) -> bool;
    /// Its payload's size in bytes (what retained-message quotas count).
    fn payload_len(&self) -> usize;
    /// The retained QoS 1 message the router publishes when a user's presence changes.
    fn presence(topic: &str, news: Announce) -> Self;
}

impl<T: Routable> Routable for Arc<T> {
    fn topic(&self) -> &str {
        (**self).topic()
    }
    fn qos(&self) -> QoS {
        (**self).qos()
    }
    fn retain(&self) -> bool {
        (**self).retain()
    }
    fn clears_retained(&self) -> bool {
        (**self).clears_retained()
    }
    fn payload_len(&self) -> usize {
        (**self).payload_len()
    }
    fn presence(topic: &str, news: Announce) -> Self {
        Arc::new(T::presence(topic, news))
    }
}

/// The ACL, as the router asks it about an owner `O` (the edge's authenticated identity).
pub trait Authorize<O> {
    fn can_publish(&self, owner: &O, client_id: &str, topic: &str) -> bool;
    fn can_subscribe(&self, owner: &O, client_id: &str, filter: &str) -> bool;
    /// Filters the owner is subscribed to at CONNECT, with their QoS.
    fn auto_subscriptions(&self, owner: &O, client_id: &str) -> Vec<(String, QoS)>;
}

/// Why the edge closes a connection on its own initiative.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Another connection took over the session (v5 0x8E).
    SessionTakenOver,
    /// The server is stopping (v5 0x8B).
    ServerShuttingDown,
    /// The connection did not keep up with its deliveries (v5 0x97 quota exceeded).
    SlowConsumer,
    /// The user was disabled or their token revoked (v5 0x98 administrative action).
    Revoked,
}

/// What the edge must do, or know, after an event. Applied in the order pushed.
#[derive(Debug, PartialEq)]
pub enum Effect<M, O> {
    /// Hand this delivery to the connection.
    Deliver(LinkId, Outgoing<M>),
    /// The session behind the connection now holds this many messages not yet written.
    Backlog(LinkId, usize),
    /// Close the connection.
    Close(LinkId, CloseReason),
    /// A new connection of the same owner took the session over: close `link` (v5 0x8E).
    TakenOver { link: LinkId, client_id: Arc<str>, old: O, new: O },
    /// The session was handed to another node, where its owner connected: close `link` (v5
    /// 0x8E).
    MovedAway { link: LinkId, client_id: Arc<str> },
    /// A will was not sent: its owner may no longer publish to its topic, or it is retained
    /// and past its tenant's quota ([`RouterConfig::retained_quota`]).
    WillRefused { owner: O, client_id: Arc<str>, topic: String },
    /// A will is due on a durable stream's topic ([`Router::stamp_wills_on`]): the node appends
    /// it to its stream, then routes it stamped with its place ([`Router::send_stamped_will`]).
    WillForStream(M),
    /// Messages `session` gave up on: its bound or drop policy discarded them (`overflow`), or
    /// they were sent `max_deliveries` times without an acknowledgement (`exhausted`). QoS 0
    /// messages not queued for an offline client are among the overflow.
    Dropped { session: Arc<str>, messages: Vec<Outgoing<M>>, exhausted: bool },
    /// The session ended here: with its connection (expiry 0) or after its expiry (`expired`).
    SessionEnded { session: Arc<str>, expired: bool },
    /// A live subscription the ACL no longer allows was removed.
    SubscriptionRevoked,
    /// The first subscription to `filter` on this router appeared (`held`), or the last one
    /// went: other edges route matching messages here while held. A shared subscription is
    /// reported whole (`$share/{group}/{filter}`).
    Interest { filter: String, held: bool },
    /// A message the router itself published (a will, a presence change): other edges route
    /// it too. Client publishes are the caller's to pass on.
    Originated(M),
    /// With presence shared between nodes ([`Router::share_presence`]): this node now has
    /// `devices` devices of the user whose presence topic is `topic`. The caller counts them
    /// with the other nodes' and announces through [`Router::announce`].
    DevicesHere { topic: Arc<str>, devices: u32 },
    /// What the journal must keep of a session that outlives its connection (expiry > 0), in
    /// order; written before the PUBLISH that caused it is acknowledged.
    Persist { session: Arc<str>, persist: Persist<M> },
    /// A message published here set (or, `None`, cleared) the retained message of `topic`: the
    /// journal keeps it for nodes that start later. (Other edges' retained messages are theirs
    /// to keep.)
    Retain { topic: Arc<str>, message: Option<M> },
}

/// A change to a session in the journal (`crate::journal`).
#[derive(Debug, PartialEq)]
pub enum Persist<M> {
    /// The session's subscriptions and expiry, `parked` while its client is away (its expiry
    /// runs).
    Record { subscriptions: Vec<(String, SubOptions)>, expiry_secs: u32, parked: bool },
    /// A message of the session arrived, changed or is done.
    Change(Change<M>),
    /// Forget the session and its messages.
    Ended,
}

/// A will message and its delay (v5; 0 for v3).
#[derive(Debug, Clone)]
pub struct Will<M> {
    pub message: M,
    pub delay_secs: u32,
}

/// A connection's will, with whose connection it was: kept in the journal while the
/// connection is open, sent by another node if its node dies ([`Router::lost_will`]).
#[derive(Debug, Clone)]
pub struct LostWill<M, O> {
    pub session: Arc<str>,
    pub client_id: Arc<str>,
    pub owner: O,
    pub will: Will<M>,
    /// The session's expiry as its connection had it: the will's delay ends with the session.
    pub session_expiry_secs: u32,
    /// When it falls due, for a delayed will whose connection had ended (Unix ms; its delay
    /// and the session's expiry applied); `None` while its connection is open: its delay
    /// starts when it is found lost.
    pub due_ms: Option<u64>,
}

impl<M, O> LostWill<M, O> {
    /// Whether it waits for a delay after its connection ended, so its client may come back
    /// first and cancel it.
    pub fn waits(&self) -> bool {
        self.due_ms.is_some() || (self.will.delay_secs > 0 && self.session_expiry_secs > 0)
    }
}

/// What a CONNECT asks of the router.
#[derive(Debug)]
pub struct ConnectRequest<M, O> {
    /// The session's key: its owner and client id. Only a CONNECT with the same key takes the
    /// session over or resumes it.
    pub session: Arc<str>,
    pub client_id: Arc<str>,
    pub clean_start: bool,
    /// Seconds the session outlives the connection: 0 = ends with it, `u32::MAX` = never expires.
    pub session_expiry_secs: u32,
    /// The client's receive maximum (v5) or 65 535 (v3).
    pub receive_maximum: u16,
    pub will: Option<Will<M>>,
    /// The user's presence topic for token users: online while any of their devices is.
    pub presence: Option<Arc<str>>,
    /// Who authenticated: wills and re-authorization are checked for them.
    pub owner: O,
    /// The session as another node handed it over ([`Router::hand_over`] there), when this
    /// node has none under the key.
    pub resumed: Option<SessionSnapshot<M>>,
    /// `resumed` comes from the journal of a node that is gone: what was routed to that node
    /// meanwhile will be replayed ([`Router::replay_routed`]) until [`Router::caught_up`],
    /// but what the node named here published (the journal has it; empty: none). A session
    /// handed over while it caught up carries its catch-up instead.
    pub catch_up: Option<Arc<str>>,
    /// A session that comes with a catch-up (`resumed` carried one, or `catch_up` begins one)
    /// holds what other nodes route to it live until its replay has read it
    /// ([`crate::session::Session::hold_for_catch_up`]); the caller runs that replay.
    pub hold: bool,
}

/// A connection that went away.
#[derive(Debug, Clone, Copy)]
pub struct Disconnect<'a> {
    /// The session key the connection held.
    pub session: &'a str,
    pub link: LinkId,
    /// A DISCONNECT packet without "send will" arrived: the will is discarded.
    pub graceful: bool,
    /// The session expiry a v5 DISCONNECT set, if it did.
    pub expiry_secs: Option<u32>,
}

/// The router's answer to a CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connected {
    pub link: LinkId,
    pub session_present: bool,
    /// With [`ConnectRequest::hold`]: the session holds what comes live from other nodes
    /// until its replay is read, for [`Router::caught_up_behind`].
    pub behind: Option<u64>,
}

/// Bounds the router applies, from the edge config.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    pub session: SessionLimits,
    pub topic: TopicLimits,
    pub max_subscriptions: usize,
    /// How long presence changes wait before they are announced.
    pub presence_grace_ms: u64,
    /// What the retained messages under one first topic level may hold when a client's
    /// message (or will) would add; 0 for no limit ([`Router::retained_within_quota`]).
    pub retained_quota: crate::retained::Usage,
}

/// Topics whose retained messages each node keeps of its own (`$SYS/...` statistics): never
/// journaled, nor taken from what other nodes journaled.
pub const NODE_TOPICS: &str = "$SYS/";

/// Why a SUBSCRIBE entry was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeError {
    Topic(TopicError),
    /// The ACL does not let this client read the filter.
    NotAuthorized,
    /// The session holds `max_subscriptions` already.
    QuotaExceeded,
    NoSession,
}

impl std::fmt::Display for SubscribeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubscribeError::Topic(e) => write!(f, "{e}"),
            SubscribeError::NotAuthorized => f.write_str("the ACL does not allow subscribing to it"),
            SubscribeError::QuotaExceeded => f.write_str("too many subscriptions for this client"),
            SubscribeError::NoSession => f.write_str("no session"),
        }
    }
}

impl std::error::Error for SubscribeError {}

/// Sizes for `$SYS` and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub live: usize,
    pub parked: usize,
    pub subscriptions: usize,
    pub retained: usize,
}

/// A session with a connection.
struct Live<M, O> {
    /// The session's key in the routing tries.
    key: u64,
    session: Session<M>,
    link: LinkId,
    expiry_secs: u32,
    will: Option<Will<M>>,
    presence: Option<Arc<str>>,
    owner: O,
    client_id: Arc<str>,
}

/// A will waiting for its v5 will-delay, with who it is sent for (checked again when due).
struct PendingWill<M, O> {
    due_ms: u64,
    message: M,
    owner: O,
    client_id: Arc<str>,
}

/// One edge's routing state. See the module documentation.
pub struct Router<M, O> {
    cfg: RouterConfig,
    live: HashMap<Arc<str>, Live<M, O>>,
    store: Box<dyn SessionStore<M>>,
    /// Users' presence by presence topic: devices connected, what was announced.
    presence: Presence<Arc<str>>,
    /// Wills waiting for their v5 will-delay, by session key.
    pending_wills: HashMap<Arc<str>, PendingWill<M, O>>,
    /// Session key of each trie key, live or parked.
    client_of: HashMap<u64, Arc<str>>,
    subs: SubscriptionTrie<u64, SubOptions>,
    shared: SubscriptionTrie<(u64, Arc<str>), SubOptions>,
    retained: RetainedStore<M>,
    /// Subscriptions per filter (share group removed), live and parked: what [`Effect::Interest`]
    /// reports.
    interest: HashMap<String, usize>,
    next_id: u64,
    round_robin: usize,
    /// Shared subscriptions are served through the bus (one member among every node's), not
    /// by [`Router::publish`]: see [`Router::share_through_bus`].
    shared_on_bus: bool,
    /// Devices here per presence topic, when presence is decided with other nodes.
    shared_presence: Option<HashMap<Arc<str>, u32>>,
    /// Topics whose wills go to their durable stream first ([`Router::stamp_wills_on`]).
    will_streams: crate::streams::StreamRules,
}

impl<M, O> std::fmt::Debug for Router<M, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").field("cfg", &self.cfg).field("live", &self.live.len()).finish_non_exhaustive()
    }
}

type Effects<M, O> = Vec<Effect<M, O>>;

impl<M: Routable + Clone + Send + 'static, O: Clone> Router<M, O> {
    /// A router whose parked sessions live in this process's memory.
    pub fn new(cfg: RouterConfig) -> Self {
        Self::with_store(cfg, Box::new(MemorySessionStore::default()))
    }

    pub fn with_store(cfg: RouterConfig, store: Box<dyn SessionStore<M>>) -> Self {
        Router {
            presence: Presence::new(cfg.presence_grace_ms),
            cfg,
            live: HashMap::new(),
            store,
            pending_wills: HashMap::new(),
            client_of: HashMap::new(),
            subs: SubscriptionTrie::new(),
            shared: SubscriptionTrie::new(),
            retained: RetainedStore::new(),
            interest: HashMap::new(),
            next_id: 0,
            round_robin: 0,
            shared_on_bus: false,
            shared_presence: None,
            will_streams: crate::streams::StreamRules::default(),
        }
    }

    /// From now on a will due on a topic of a durable stream is handed out
    /// ([`Effect::WillForStream`]) instead of routed: like every message on a stream, it must
    /// carry its place in it.
    pub fn stamp_wills_on(&mut self, rules: crate::streams::StreamRules) {
        self.will_streams = rules;
    }

    /// From now on a publish reaches the shared subscriptions here only through
    /// [`Router::publish_shared`]: the nodes of a cluster pick one member per group among all
    /// of theirs (a queue group on the bus), so no node delivers to its own members on its own.
    pub fn share_through_bus(&mut self) {
        self.shared_on_bus = true;
    }

    /// Presence is decided with the other nodes from now on: instead of announcing, the router
    /// says how many devices of each user it has ([`Effect::DevicesHere`]).
    pub fn share_presence(&mut self) {
        self.shared_presence.get_or_insert_with(HashMap::new);
    }

    /// Announces a user's presence (decided with the other nodes), as the router's own publish.
    pub fn announce(&mut self, topic: &str, news: Announce, now_ms: u64, fx: &mut Effects<M, O>) {
        self.originate(M::presence(topic, news), now_ms, fx);
    }

    /// Hands `msg` to one member here of the shared subscription `share`
    /// (`$share/{group}/{filter}`), which the bus picked this node for: one whose connection
    /// has fewer than `full` messages waiting (a member whose client is away takes it into its
    /// queue as ever). Returns how many took it; `None` if every member here has that many
    /// waiting: nothing changed, and the bus may give it to a member elsewhere (or here, once
    /// one has room).
    pub fn publish_shared(
        &mut self,
        msg: M,
        share: &str,
        now_ms: u64,
        full: usize,
        fx: &mut Effects<M, O>,
    ) -> Option<usize> {
        if msg.expired(now_ms) {
            return Some(0);
        }
        let mut members = Vec::new();
        self.shared.for_each_match(msg.topic(), |(key, group), opts| {
            if **group == *share {
                members.push((*key, group.clone(), opts.clone()));
            }
        });
        let any = !members.is_empty();
        members.retain(|(key, ..)| self.waiting_for(*key) < full);
        if any && members.is_empty() {
            return None;
        }
        let mut plan = RoutePlan::new(None, msg.qos(), msg.retain());
        for (key, group, opts) in &members {
            plan.add_shared(group, key, opts);
        }
        Some(self.deliver(plan, msg, fx))
    }

    /// How many messages wait for the connection of the live session under `key` (0 for one
    /// whose client is away).
    fn waiting_for(&self, key: u64) -> usize {
        let live = self.client_of.get(&key).and_then(|name| self.live.get(name));
        live.map_or(0, |l| l.session.backlog())
    }

    pub fn config(&self) -> &RouterConfig {
        &self.cfg
    }

    /// The owners of the live sessions (one per session: a user with two devices twice).
    pub fn live_owners(&self) -> impl Iterator<Item = &O> {
        self.live.values().map(|l| &l.owner)
    }

    pub fn counts(&self) -> Counts {
        Counts {
            live: self.live.len(),
            parked: self.store.len(),
            subscriptions: self.subs.len() + self.shared.len(),
            retained: self.retained.len(),
        }
    }

    /// The client id of the live connection `link`, if it is still live.
    pub fn client_id_of(&self, link: LinkId) -> Option<Arc<str>> {
        self.live.values().find(|l| l.link == link).map(|l| l.client_id.clone())
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Routes a message published by the live session `from`, or by the system (`None`).
    /// Returns how many sessions it was handed to.
    pub fn publish(&mut self, msg: M, from: Option<&str>, now_ms: u64, fx: &mut Effects<M, O>) -> usize {
        let publisher = from.and_then(|s| self.live.get(s)).map(|l| l.key);
        self.route(msg, publisher, true, now_ms, fx)
    }

    /// Routes a message another node published (and keeps in its journal, if retained).
    pub fn publish_remote(&mut self, msg: M, now_ms: u64, fx: &mut Effects<M, O>) -> usize {
        self.route(msg, None, false, now_ms, fx)
    }

    /// Hands `msg`, which the live session `session` missed (a replay from a durable stream),
    /// to that session alone, as its subscriptions matching the topic ask; never as retained.
    /// Returns whether the session took it.
    pub fn replay(&mut self, session: &str, msg: M, now_ms: u64, fx: &mut Effects<M, O>) -> bool {
        let Some(key) = self.live.get(session).map(|l| l.key) else {
            return false;
        };
        if msg.expired(now_ms) {
            return false;
        }
        let mut plan = RoutePlan::new(None, msg.qos(), false);
        self.subs.for_each_match(msg.topic(), |k, opts| {
            if *k == key {
                plan.add(k, opts);
            }
        });
        self.deliver(plan, msg, fx) == 1
    }

    /// A message the bus kept, taken there at `at_ms`, that `session` (resumed from the
    /// journal, catching up: [`ConnectRequest::catch_up`]) may have missed while it had no
    /// node. It goes to the session's matching subscriptions made before `at_ms`, unless the
    /// session had it already (see [`crate::origins`]). Returns whether it went.
    pub fn replay_routed(&mut self, session: &str, msg: M, at_ms: u64, now_ms: u64, fx: &mut Effects<M, O>) -> bool {
        let Some((key, _)) = self.held_mut(session) else {
            return false;
        };
        let origin = msg.origin().cloned();
        let went = self.replay_kept(|k| *k == key, msg, at_ms, now_ms, fx) == 1;
        // Taken or not, the replay of a session behind has read it.
        if let (Some(origin), Some((_, s))) = (origin, self.held_mut(session)) {
            s.replay_read(&origin);
        }
        went
    }

    /// This node lost the others (and nothing from them reaches it until it has them back):
    /// every session here, live (whether or not it outlives its connection: its subscriptions
    /// stood while the others routed to them) or parked, but those `held` names (catching up
    /// for this outage already), starts catching up, from where it stands now, on what is
    /// routed to this node meanwhile ([`Router::replay_routed_all`] once it is back, then
    /// [`Router::caught_up`]); one catching up already (after a dead node) waits for that
    /// replay too. Returns those sessions.
    pub fn begin_catch_up_all(&mut self, this_node: &Arc<str>, held: impl Fn(&str) -> bool) -> Vec<(Arc<str>, u64)> {
        let mut names: Vec<Arc<str>> = self.live.keys().cloned().collect();
        names.extend(self.store.keys().into_iter().map(Arc::from));
        names
            .into_iter()
            .filter_map(|name| match self.held_mut(&name) {
                Some((_, s)) if !held(&name) => {
                    let id = s.begin_catch_up(this_node.clone());
                    Some((name, id))
                }
                _ => None,
            })
            .collect()
    }

    /// The shared journal lost what it held (its store restarted without its data): every
    /// session here that outlives its connection, live or parked (with what is left of its
    /// expiry), is written to it whole again, and every retained message but a node's own
    /// statistics. Returns the sessions written.
    pub fn journal_all_again(&mut self, now_ms: u64, fx: &mut Effects<M, O>) -> Vec<Arc<str>> {
        let mut written = Vec::new();
        for (name, live) in self.live.iter_mut().filter(|(_, l)| l.session.is_durable()) {
            let _ = live.session.take_changes();
            lifecycle::journal_whole(fx, name, &live.session, live.expiry_secs, false);
            written.push(name.clone());
        }
        for name in self.store.keys() {
            let Some(parked) = self.store.get_mut(&name) else { continue };
            let left_ms = parked.expires_at_ms().map(|at| at.saturating_sub(now_ms));
            let left = left_ms.map_or(u32::MAX, |ms| u32::try_from(ms.div_ceil(1000)).unwrap_or(u32::MAX).max(1));
            let name: Arc<str> = name.into();
            lifecycle::journal_whole(fx, &name, &parked.session, left, true);
            written.push(name);
        }
        for msg in self.retained.matching("#", now_ms) {
            fx.push(Effect::Retain { topic: msg.topic().into(), message: Some(msg) });
        }
        written
    }

    /// The id of `session`'s catch-up, if it is here and catching up (for [`Router::caught_up`]).
    pub fn catch_up_id(&mut self, session: &str) -> Option<u64> {
        self.held_mut(session).and_then(|(_, s)| s.catch_up_id())
    }

    /// The filters of `session`'s subscriptions but its shared ones (whose messages go to one
    /// member of the group); none if it is not here.
    pub fn plain_filters(&mut self, session: &str) -> Vec<String> {
        let Some((_, s)) = self.held_mut(session) else { return Vec::new() };
        s.subscriptions().map(|(f, _)| f.to_owned()).filter(|f| !crate::topic::is_shared(f)).collect()
    }

    /// [`Router::replay_routed`] to every session here catching up.
    pub fn replay_routed_all(&mut self, msg: M, at_ms: u64, now_ms: u64, fx: &mut Effects<M, O>) -> usize {
        self.replay_kept(|_| true, msg, at_ms, now_ms, fx)
    }

    /// [`Router::replay_routed`] to each session here that `takes` this message (by name):
    /// one replay read for several sessions at once (sessions arriving together, each with
    /// what it leaves out). Each of them with a subscription to the topic made before `at_ms`
    /// has read it, taken or not; the others have not (what they held of it stays theirs).
    /// Returns how many took it.
    pub fn replay_routed_to(
        &mut self,
        msg: M,
        at_ms: u64,
        now_ms: u64,
        takes: impl Fn(&str) -> bool,
        fx: &mut Effects<M, O>,
    ) -> usize {
        let mut readers = Vec::new();
        let client_of = &self.client_of;
        self.subs.for_each_match(msg.topic(), |k, opts| {
            if opts.since_ms <= at_ms && client_of.get(k).is_some_and(|s| takes(s)) {
                readers.push(*k);
            }
        });
        readers.sort_unstable();
        readers.dedup();
        let origin = msg.origin().cloned();
        let went = self.replay_kept(|k| readers.binary_search(k).is_ok(), msg, at_ms, now_ms, fx);
        let Some(origin) = origin else { return went };
        for key in readers {
            let Some(name) = self.client_of.get(&key).cloned() else { continue };
            if let Some((_, s)) = self.held_mut(&name) {
                s.replay_read(&origin);
            }
        }
        went
    }

    /// A message the bus kept (taken there at `at_ms`) to the subscriptions made before then
    /// of the sessions whose key is `only`, each session taking it only if it catches up and
    /// missed it. Returns how many took it.
    fn replay_kept(
        &mut self,
        only: impl Fn(&u64) -> bool,
        msg: M,
        at_ms: u64,
        now_ms: u64,
        fx: &mut Effects<M, O>,
    ) -> usize {
        if msg.expired(now_ms) {
            return 0;
        }
        let mut plan = RoutePlan::new(None, msg.qos(), msg.retain());
        self.subs.for_each_match(msg.topic(), |k, opts| {
            if only(k) && opts.since_ms <= at_ms {
                plan.add(k, opts);
            }
        });
        self.deliver_as(plan, msg, Via::Replay, fx)
    }

    /// The session of the live connection `link` falls behind on what other nodes route to it
    /// (see [`Session::fall_behind`]); its replay skips what `this_node` published. Returns the
    /// session and which time it fell behind; `None` if it is not here or behind already.
    /// (It looks for the link among the live sessions: a node calls it only when a connection
    /// has too much waiting.)
    pub fn fall_behind(&mut self, link: LinkId, this_node: &Arc<str>) -> Option<(Arc<str>, u64)> {
        let live = self.live.iter_mut().find(|(_, l)| l.link == link).map(|(name, l)| (name.clone(), l))?;
        let (name, live) = live;
        let id = live.session.fall_behind(this_node.clone())?;
        Some((name, id))
    }

    /// The next step of `session`, behind since [`Router::fall_behind`] answered `id` (see
    /// [`Session::caught_up_behind`]); `None` if it is not here or not behind since then.
    pub fn caught_up_behind(&mut self, session: &str, id: u64) -> Option<BehindStep> {
        self.held_mut(session)?.1.caught_up_behind(id)
    }

    /// The first pass of the replay of `session`, held since it arrived ([`Connected::behind`]
    /// answered `id`), is done or given up: what waits in its queue goes out (see
    /// [`crate::session::Session::arrived`]).
    pub fn arrived(&mut self, session: &str, id: u64, now_ms: u64, fx: &mut Effects<M, O>) {
        let Some((link, s)) = held_with_link(&mut self.live, self.store.as_mut(), session) else { return };
        let (deliveries, dropped) = s.arrived(id, now_ms);
        if let Some(link) = link {
            for d in deliveries {
                fx.push(Effect::Deliver(link, d));
            }
            fx.push(Effect::Backlog(link, s.backlog()));
        }
        journal(fx, &Arc::from(session), s, None);
        if !dropped.is_empty() {
            fx.push(Effect::Dropped { session: session.into(), messages: dropped, exhausted: false });
        }
    }

    /// The id of `session`'s arrival while what comes to it waits for its replay (a session
    /// parked with a catch-up: [`Router::restore_parked`]; or [`Connected::behind`]).
    pub fn arrival_id(&mut self, session: &str) -> Option<u64> {
        self.held_mut(session)?.1.arrival_id()
    }

    /// The one replay of `session`, parked with a catch-up since [`Router::arrival_id`]
    /// answered `id`, is done or given up: what it held goes in after what the replay gave
    /// ([`Router::arrived`]), and its catch-up ends unless another replay holds it too. It
    /// takes what comes live at once (no drain: a live copy of a replayed message that comes
    /// later is delivered again).
    pub fn replay_done(&mut self, session: &str, id: u64, now_ms: u64, fx: &mut Effects<M, O>) {
        self.arrived(session, id, now_ms, fx);
        while self.caught_up_behind(session, id) == Some(BehindStep::Draining) {}
    }

    /// `session`'s replay, behind since [`Router::fall_behind`] answered `id`, gives up (see
    /// [`Session::give_up_behind`]): returns how many messages it skipped were never read.
    pub fn give_up_behind(&mut self, session: &str, id: u64) -> Option<usize> {
        self.held_mut(session)?.1.give_up_behind(id)
    }

    /// `session` has been given everything its catch-up `catch_up` replayed (see
    /// [`Router::replay_routed`]).
    pub fn caught_up(&mut self, session: &str, catch_up: u64) {
        if let Some((_, s)) = self.held_mut(session) {
            s.caught_up(catch_up);
        }
    }

    /// The session `session` of this node, live or parked, with its key.
    fn held_mut(&mut self, session: &str) -> Option<(u64, &mut Session<M>)> {
        match self.live.get_mut(session) {
            Some(l) => Some((l.key, &mut l.session)),
            None => self.store.get_mut(session).map(|p| (p.key, &mut p.session)),
        }
    }

    /// Whether the live session `session` outlives its connection and has no cursor in
    /// `stream` yet (one should start where the stream stands: [`Router::start_cursor`]).
    pub fn wants_cursor(&self, session: &str, stream: &str) -> bool {
        self.live.get(session).is_some_and(|l| l.session.is_durable() && !l.session.has_cursor(stream))
    }

    /// The live session `session` subscribed to `stream`, which stands at `at`: its cursor
    /// there starts (unless it has one), so a resume from the journal after its node died
    /// replays what came after.
    pub fn start_cursor(&mut self, session: &str, stream: &str, at: crate::streams::Stamp, fx: &mut Effects<M, O>) {
        if let Some(live) = self.live.get_mut(session)
            && live.session.start_cursor(stream, at)
        {
            let key: Arc<str> = session.into();
            journal(fx, &key, &mut live.session, None);
        }
    }

    /// Retained messages a node kept (its journal), as they were before this one started;
    /// nothing is routed, and a topic that already has one here keeps it (it is newer).
    pub fn restore_retained(&mut self, messages: impl IntoIterator<Item = M>) {
        for msg in messages {
            if !self.retained.contains(msg.topic()) {
                self.retained.set(msg.topic(), Some((msg.clone(), msg.payload_len())));
            }
        }
    }

    /// Where the retained messages stand, for a [`Router::reconcile_retained`] with what was
    /// read after it.
    pub fn retained_mark(&mut self) -> u64 {
        self.retained.mark()
    }

    /// Makes the retained messages here those of `all` (every retained message, as a journal
    /// the nodes share holds them, read after `mark`), but for what was set or cleared here
    /// since, which is newer: how a node that missed what others published (cut off from
    /// them) catches up. Nothing is routed or journaled. Returns how many topics it wrote.
    pub fn reconcile_retained(&mut self, all: Vec<M>, mark: u64) -> usize {
        let all = all.into_iter().map(|m| {
            let (topic, bytes) = (m.topic().to_owned(), m.payload_len());
            (topic, m, bytes)
        });
        self.retained.reconcile(all, mark, |topic| !topic.starts_with(NODE_TOPICS))
    }

    /// Keeps or clears the retained message (saying so for the journal if the message was
    /// published here, `local`), then hands `msg` to every matching session: live ones through
    /// their connection, parked ones into their queue.
    fn route(&mut self, msg: M, publisher: Option<u64>, local: bool, now_ms: u64, fx: &mut Effects<M, O>) -> usize {
        if msg.retain() {
            let keep = (!msg.clears_retained()).then(|| msg.clone());
            // A node's own statistics are its own: not for a journal the nodes share.
            if local && !msg.topic().starts_with(NODE_TOPICS) {
                fx.push(Effect::Retain { topic: msg.topic().into(), message: keep.clone() });
            }
            self.retained.set(msg.topic(), keep.map(|m| (m, msg.payload_len())));
        }
        if msg.expired(now_ms) {
            return 0;
        }
        let mut plan = RoutePlan::new(publisher, msg.qos(), msg.retain());
        self.subs.for_each_match(msg.topic(), |key, opts| plan.add(key, opts));
        // From another node, to the plain subscriptions alone (shared ones' come through their
        // group on the bus): a session behind takes it later.
        let via = if !local && self.shared_on_bus { Via::Bus } else { Via::Here };
        // Shared subscriptions served through the bus still count as taking the message (a v5
        // publisher is not told "no matching subscribers" for them).
        let mut shared_elsewhere = std::collections::HashSet::new();
        if self.shared_on_bus {
            self.shared.for_each_match(msg.topic(), |(_, group), _| {
                shared_elsewhere.insert(group.clone());
            });
        } else {
            self.shared.for_each_match(msg.topic(), |(key, group), opts| plan.add_shared(group, key, opts));
        }
        self.deliver_as(plan, msg, via, fx) + shared_elsewhere.len()
    }

    /// Hands `msg` to the sessions `plan` picked: live ones through their connection, parked
    /// ones into their queue. Returns how many.
    fn deliver(&mut self, plan: RoutePlan<u64>, msg: M, fx: &mut Effects<M, O>) -> usize {
        self.deliver_as(plan, msg, Via::Here, fx)
    }

    /// [`Router::deliver`] of a message that came `via`.
    fn deliver_as(&mut self, plan: RoutePlan<u64>, msg: M, via: Via, fx: &mut Effects<M, O>) -> usize {
        let mut rr = self.round_robin;
        let deliveries = plan.finish(|n| {
            rr = rr.wrapping_add(1);
            rr % n
        });
        self.round_robin = rr;
        let mut count = deliveries.len();
        for (key, d) in deliveries {
            let Some(session) = self.client_of.get(&key) else {
                continue;
            };
            let out = Outgoing::new(msg.clone(), d.qos, d.retain, d.subscription_ids);
            let enqueue = |s: &mut Session<M>, out| match via {
                Via::Here => Some(s.enqueue(out)),
                Via::Bus => Some(s.enqueue_from_bus(out)),
                Via::Replay => s.enqueue_replayed(out),
            };
            let Some((live, s)) = held_with_link(&mut self.live, self.store.as_mut(), session) else { continue };
            // A replayed message the session already had.
            let Some(outcome) = enqueue(s, out) else {
                count -= 1;
                continue;
            };
            // Nothing changed: it comes with a replay.
            if matches!(outcome, Enqueued::Later) {
                continue;
            }
            match live {
                Some(link) => {
                    push_enqueued(fx, session, link, outcome);
                    // What comes from other nodes waits for no session behind (a QoS 0
                    // message, sent or dropped, left its queue as it was), and nothing for
                    // one that arrives (its queue goes out once its replay's first pass is done).
                    if !(s.is_arriving() || via == Via::Bus && s.is_behind()) {
                        fx.push(Effect::Backlog(link, s.backlog()));
                    }
                    journal(fx, session, s, None);
                }
                None => {
                    journal(fx, session, s, None);
                    if let Enqueued::Dropped(out) = outcome {
                        fx.push(Effect::Dropped { session: session.clone(), messages: vec![out], exhausted: false });
                    }
                }
            }
        }
        count
    }

    /// PUBACK or PUBCOMP for an outbound message of `link`: frees window space.
    pub fn complete(
        &mut self,
        session: &str,
        link: LinkId,
        packet_id: std::num::NonZeroU16,
        now_ms: u64,
        fx: &mut Effects<M, O>,
    ) {
        let Some(live) = self.live.get_mut(session).filter(|l| l.link == link) else {
            return;
        };
        for d in live.session.complete(packet_id, now_ms) {
            fx.push(Effect::Deliver(link, d));
        }
        fx.push(Effect::Backlog(link, live.session.backlog()));
        self.journal_live(session, false, fx);
    }

    /// PUBREC for an outbound QoS 2 message.
    pub fn received(&mut self, session: &str, packet_id: std::num::NonZeroU16, fx: &mut Effects<M, O>) {
        if let Some(live) = self.live.get_mut(session) {
            live.session.received(packet_id);
            self.journal_live(session, false, fx);
        }
    }

    /// The live sessions that outlive their connection, with their expiry: the journal keeps
    /// their records only while this node says they are still here.
    pub fn durable_live(&self) -> Vec<(Arc<str>, u32)> {
        self.live.iter().filter(|(_, l)| l.session.is_durable()).map(|(s, l)| (s.clone(), l.expiry_secs)).collect()
    }

    /// Whether `bytes` retained on `topic` (replacing what it has) keep what its first level
    /// holds here within [`RouterConfig::retained_quota`].
    pub fn retained_within_quota(&self, topic: &str, bytes: usize) -> bool {
        let (u, most) = (self.retained.usage_with(topic, bytes), self.cfg.retained_quota);
        let within = |used: usize, most: usize| most == 0 || used <= most;
        within(u.messages, most.messages) && within(u.bytes, most.bytes)
    }

    /// The retained message of `topic`, if this node holds one.
    pub fn retained(&self, topic: &str) -> Option<&M> {
        self.retained.get(topic)
    }

    /// Whether `session` is here, live or parked: if not, a node may load it from the journal.
    pub fn holds(&self, session: &str) -> bool {
        self.live.contains_key(session) || self.store.contains(session)
    }

    /// Tells the journal what changed in the live session `session`, if it outlives its
    /// connection: its messages, and its record when `record`.
    fn journal_live(&mut self, session: &str, record: bool, fx: &mut Effects<M, O>) {
        let Some(live) = self.live.get_mut(session) else {
            return;
        };
        if let Some(key) = self.client_of.get(&live.key) {
            journal(fx, key, &mut live.session, record.then_some((live.expiry_secs, false)));
        }
    }

    /// Inbound QoS 2: false if `packet_id` is a duplicate of an unreleased PUBLISH.
    pub fn incoming_qos2(&mut self, session: &str, packet_id: u16, fx: &mut Effects<M, O>) -> bool {
        let fresh = self.live.get_mut(session).is_none_or(|l| l.session.incoming_qos2(packet_id));
        self.journal_live(session, false, fx);
        fresh
    }

    /// Inbound PUBREL; returns whether `packet_id` was awaiting release in the session.
    pub fn incoming_released(&mut self, session: &str, packet_id: u16, fx: &mut Effects<M, O>) -> bool {
        let was = self.live.get_mut(session).is_some_and(|l| l.session.incoming_released(packet_id));
        self.journal_live(session, false, fx);
        was
    }
}

/// The journal's share of what happened to a durable `session` (key `key`): its message
/// changes, then its record with `(expiry_secs, parked)` if given.
fn journal<M: Deliverable + Clone, O>(
    fx: &mut Effects<M, O>,
    key: &Arc<str>,
    session: &mut Session<M>,
    record: Option<(u32, bool)>,
) {
    if !session.is_durable() {
        return;
    }
    for c in session.take_changes() {
        fx.push(Effect::Persist { session: key.clone(), persist: Persist::Change(c) });
    }
    if let Some((expiry_secs, parked)) = record {
        let persist = Persist::Record { subscriptions: session.snapshot_subscriptions(), expiry_secs, parked };
        fx.push(Effect::Persist { session: key.clone(), persist });
    }
}

/// The session under `session`, live (with its connection) or parked; `None` if it is not here.
fn held_with_link<'a, M, O>(
    live: &'a mut HashMap<Arc<str>, Live<M, O>>,
    store: &'a mut dyn SessionStore<M>,
    session: &str,
) -> Option<(Option<LinkId>, &'a mut Session<M>)> {
    match live.get_mut(session) {
        Some(l) => Some((Some(l.link), &mut l.session)),
        None => store.get_mut(session).map(|p| (None, &mut p.session)),
    }
}

/// How a message reaches the sessions [`Router::deliver_as`] hands it to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// Published here, or given here (a shared subscription's member, a stream's replay).
    Here,
    /// Routed live by another node ([`Session::enqueue_from_bus`]).
    Bus,
    /// Replayed from the bus: only to sessions that missed it ([`Session::enqueue_replayed`]).
    Replay,
}

/// A delivery to send now, or a message the session dropped.
fn push_enqueued<M, O>(fx: &mut Effects<M, O>, session: &str, link: LinkId, outcome: Enqueued<M>) {
    match outcome {
        Enqueued::Send(d) => fx.push(Effect::Deliver(link, d)),
        Enqueued::Dropped(out) => {
            fx.push(Effect::Dropped { session: session.into(), messages: vec![out], exhausted: false })
        }
        Enqueued::Queued | Enqueued::Had | Enqueued::Later => {}
    }
}
