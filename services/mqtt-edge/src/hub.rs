//! The edge's side of routing: one [`Router`] (the broker core's sans-IO decisions: sessions,
//! takeover, wills, presence, routing, re-authorization) behind a mutex, the link to each live
//! connection, and the metrics. Every method locks, asks the router, and applies the effects it
//! returns in order: deliveries go to connections through bounded channels, so a connection's
//! socket is only ever written by the worker that owns it.
//!
//! All ntex workers share one `Hub`. Its methods are synchronous and short.

use std::collections::HashMap;
use std::num::NonZeroU16;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use broker::SubOptions;
use broker::router::{Disconnect, Effect, LinkId, Router, RouterConfig};
use broker::session::{DropPolicy, SessionLimits};
use broker::topic::TopicLimits;

use crate::auth::Identity;
use crate::authz::Authorizer;
use crate::cluster::{ClusterLink, Forwarded, Slot};
use crate::config::LimitsConfig;
use crate::journal::{self, Durable, JournalWriter};
pub use crate::link::Delivery;
use crate::link::{self, ConnInbox, ConnLink, Refused, Room};
use crate::message::SharedMessage;
use crate::metrics as m;
use crate::presence::SharedPresence;
use crate::streams::Streams;

pub use broker::router::{CloseReason, SubscribeError};

/// A will message and its delay (v5; 0 for v3).
pub type Will = broker::router::Will<SharedMessage>;

/// What a CONNECT asks of the hub; the owner is the authenticated identity.
pub type ConnectRequest = broker::router::ConnectRequest<SharedMessage, Arc<Identity>>;

type Effects = Vec<Effect<SharedMessage, Arc<Identity>>>;

/// What became of a published message.
#[derive(Debug)]
pub struct Routed {
    /// Sessions it was handed to.
    pub sessions: usize,
    /// Connections with too much waiting for them: the publisher waits for room in each
    /// before acknowledging (see `flow`).
    pub pressure: Vec<Room>,
    /// Resolves once what the message changed in persistent sessions is in the journal: the
    /// publisher is acknowledged after that.
    pub durable: Option<Durable>,
    /// A client's publish in a cluster, on its way to the other edges (in the [`Slot`] it was
    /// given): resolves once the bus has it.
    pub forwarded: Option<Forwarded>,
}

#[derive(Debug)]
pub struct Connected {
    pub session_present: bool,
    pub link_id: u64,
    pub inbox: ConnInbox,
    /// [`Hub::numbered`] once the session was here: what this edge routes from then on
    /// reaches it here.
    pub numbered: u64,
    /// With `ConnectRequest::hold`: which time the session fell behind on arrival, for its
    /// replay (`behind::catch_up`).
    pub behind: Option<u64>,
    /// The connection's room, for that replay.
    pub room: Room,
}

/// Bounds of the hub, from the edge config.
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub session: SessionLimits,
    pub topic: TopicLimits,
    pub max_subscriptions: usize,
    /// Deliveries a connection may have waiting for its socket before it counts as slow.
    pub max_pending_deliveries: usize,
    /// The backlog at which publishers wait (`limits.max_backlog`).
    pub max_backlog: usize,
    /// How long presence changes wait before they are announced (`limits.presence_grace_secs`).
    pub presence_grace_ms: u64,
    /// `limits.max_retained_per_tenant` and `limits.max_retained_bytes_per_tenant`.
    pub retained_quota: broker::retained::Usage,
}

impl HubConfig {
    /// The hub's share of the `[limits]` section.
    pub fn from_limits(l: &LimitsConfig) -> Self {
        HubConfig {
            session: SessionLimits {
                max_inflight: l.max_inflight,
                max_queued: l.max_queued_messages,
                drop_policy: if l.queue_drop_policy == "drop_newest" {
                    DropPolicy::DropNewest
                } else {
                    DropPolicy::DropOldest
                },
                queue_qos0: l.queue_qos0,
                max_deliveries: l.max_deliveries,
            },
            topic: TopicLimits { max_len: l.max_topic_length, max_levels: l.max_topic_levels },
            max_subscriptions: l.max_subscriptions_per_client,
            max_pending_deliveries: l.max_pending_deliveries,
            max_backlog: l.max_backlog,
            presence_grace_ms: u64::from(l.presence_grace_secs) * 1000,
            retained_quota: broker::retained::Usage {
                messages: l.max_retained_per_tenant,
                bytes: l.max_retained_bytes_per_tenant,
            },
        }
    }

    fn router(&self) -> RouterConfig {
        RouterConfig {
            session: self.session,
            topic: self.topic,
            max_subscriptions: self.max_subscriptions,
            presence_grace_ms: self.presence_grace_ms,
            retained_quota: self.retained_quota,
        }
    }
}

struct State {
    router: Router<SharedMessage, Arc<Identity>>,
    /// The delivery channel of each live connection.
    links: HashMap<LinkId, ConnLink>,
    /// See [`Hub::numbered`].
    numbered: u64,
    /// The connections whose wills this edge keeps in the journal (`wills`).
    wills_kept: std::collections::HashSet<LinkId>,
    /// The delayed wills waiting here that this edge keeps in the journal, by session, each
    /// under the link of the connection that set it or, for one a dead edge left, a key of its
    /// own ([`WAITING_KEYS`]).
    wills_waiting: HashMap<Arc<str>, LinkId>,
    /// The last key given to a will a dead edge left waiting.
    waiting_keys: LinkId,
}

/// Where the journal keys of the delayed wills a dead edge left start: above every link id.
const WAITING_KEYS: LinkId = 1 << 63;

/// Keeps the delayed will of `session` waiting here in the journal under `key` (in `items`),
/// in place of the record of an earlier one of it; false if none waits.
fn keep_waiting_will(st: &mut State, session: &str, key: LinkId, now_ms: u64, items: &mut Vec<journal::Item>) -> bool {
    let Some(waiting) = st.router.waiting_will(session, now_ms) else { return false };
    if let Some(before) = st.wills_waiting.insert(waiting.session.clone(), key).filter(|b| *b != key) {
        items.push(journal::Item::Will(before, None));
    }
    items.push(journal::Item::Will(key, Some(crate::wills::encode(&waiting))));
    true
}

/// Counters for `$SYS` and logs (Prometheus gets the same events through `metrics`).
#[derive(Debug, Default)]
pub struct Counters {
    pub messages_received: AtomicU64,
    pub messages_sent: AtomicU64,
    pub messages_dropped: AtomicU64,
}

/// A snapshot for `$SYS/broker/...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub clients_connected: usize,
    pub sessions: usize,
    pub subscriptions: usize,
    pub retained: usize,
    pub messages_received: u64,
    pub messages_sent: u64,
    pub messages_dropped: u64,
}

pub struct Hub {
    state: Mutex<State>,
    cfg: HubConfig,
    /// Wills are authorized again when they are sent: relations may have changed meanwhile.
    authz: Arc<Authorizer>,
    pub counters: Counters,
    /// What every message counts (`metrics::Hot`).
    pub hot: crate::metrics::Hot,
    /// Set by [`Hub::close_all`]: connections that arrive afterwards are closed at once.
    closing: AtomicBool,
    /// Routing to and from other edges, when there are any (see `cluster`).
    cluster: OnceLock<ClusterLink>,
    /// Where persistent sessions are written, when they are (see `journal`).
    journal: OnceLock<JournalWriter>,
    /// Where messages on durable topics are appended (see `streams`).
    streams: OnceLock<Streams>,
    /// Wills due on durable topics, to be appended to their streams (`streams::send_wills`).
    stream_wills: OnceLock<tokio::sync::mpsc::UnboundedSender<SharedMessage>>,
    /// Where presence is decided with the other edges, in a cluster (see `presence`).
    presence: OnceLock<SharedPresence>,
    /// When the wills of the connections here were last written to the journal whole
    /// ([`Hub::write_wills_again_if_lost`]; Unix ms).
    wills_written_at_ms: AtomicU64,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("cfg", &self.cfg).field("snapshot", &self.snapshot()).finish()
    }
}

impl Hub {
    /// A hub whose parked sessions live in this process's memory.
    pub fn new(cfg: HubConfig, authz: Arc<Authorizer>) -> Self {
        let router = Router::new(cfg.router());
        let state = State {
            router,
            links: HashMap::new(),
            numbered: 0,
            wills_kept: Default::default(),
            wills_waiting: HashMap::new(),
            waiting_keys: WAITING_KEYS,
        };
        Hub {
            state: Mutex::new(state),
            cfg,
            hot: crate::metrics::Hot::register(),
            authz,
            counters: Counters::default(),
            closing: AtomicBool::new(false),
            cluster: OnceLock::new(),
            journal: OnceLock::new(),
            streams: OnceLock::new(),
            stream_wills: OnceLock::new(),
            wills_written_at_ms: AtomicU64::new(0),
            presence: OnceLock::new(),
        }
    }

    pub fn config(&self) -> &HubConfig {
        &self.cfg
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug; the state is still consistent enough
        // to keep serving other clients, so poisoning is not propagated.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A CONNECT was accepted: the router takes over, resumes or starts the session; the new
    /// connection gets a delivery channel before anything is sent to it.
    pub fn connect(&self, req: ConnectRequest, now_ms: u64) -> Connected {
        let will = self.journal().and(req.will.clone()).map(|will| {
            let (session, client_id, owner) = (req.session.clone(), req.client_id.clone(), req.owner.clone());
            let session_expiry_secs = req.session_expiry_secs;
            crate::wills::encode(&crate::wills::LostWill {
                session,
                client_id,
                owner,
                will,
                session_expiry_secs,
                due_ms: None,
            })
        });
        let session = req.session.clone();
        let mut st = self.lock();
        let mut fx = Effects::new();
        let connected = st.router.connect(req, &*self.authz, now_ms, &mut fx);
        // A delayed will its client came back in time for is gone from the journal before
        // anything else of the new connection's.
        self.forget_waiting_will(&mut st, &session);
        if let (Some(journal), Some(will)) = (self.journal(), will) {
            st.wills_kept.insert(connected.link);
            journal.submit_detached(vec![journal::Item::Will(connected.link, Some(will))]);
        }
        let (link, inbox) = link::link(connected.link, self.link_capacity());
        let room = link.room();
        if self.is_closing() {
            // Got past the CONNECT checks while `close_all` ran: the server is going all the same.
            link.close(CloseReason::ServerShuttingDown);
        }
        st.links.insert(connected.link, link);
        metrics::gauge!(m::CONNECTIONS).increment(1.0);
        self.apply(&mut st, fx, None);
        Connected {
            session_present: connected.session_present,
            link_id: connected.link,
            inbox,
            numbered: st.numbered,
            behind: connected.behind,
            room,
        }
    }

    /// The connection `link_id` of `session` is gone. `graceful` means a DISCONNECT packet
    /// without "send will" arrived, so the will is discarded. `expiry_secs` is the session
    /// expiry the v5 DISCONNECT may have changed. The session is parked or ends.
    pub fn disconnect(&self, session: &str, link_id: u64, graceful: bool, expiry_secs: Option<u32>, now_ms: u64) {
        let mut st = self.lock();
        st.links.remove(&link_id);
        let will_kept = st.wills_kept.remove(&link_id);
        let mut fx = Effects::new();
        let gone = Disconnect { session, link: link_id, graceful, expiry_secs };
        let held = st.router.disconnect(gone, &*self.authz, now_ms, &mut fx);
        if held {
            metrics::gauge!(m::CONNECTIONS).decrement(1.0);
        }
        // Dealt with here, but for a delayed will now waiting: it stays in the journal, with
        // when it falls due, for the edge that takes this one's sessions should this one die
        // or stop before (it would die with this edge). Only a connection that still held its
        // session leaves one (one taken over ends without).
        if let Some(journal) = self.journal().filter(|_| will_kept) {
            let mut items = Vec::new();
            if !(held && keep_waiting_will(&mut st, session, link_id, now_ms, &mut items)) {
                items.push(journal::Item::Will(link_id, None));
            }
            journal.submit_detached(items);
        }
        self.apply(&mut st, fx, None);
    }

    /// Forgets, in the journal too, the waiting will of `session` if it no longer waits (sent,
    /// cancelled, refused, or its session went to another edge).
    fn forget_waiting_will(&self, st: &mut State, session: &str) {
        if st.router.will_waits(session) {
            return;
        }
        if let (Some(link), Some(journal)) = (st.wills_waiting.remove(session), self.journal()) {
            journal.submit_detached(vec![journal::Item::Will(link, None)]);
        }
    }

    /// Expires parked sessions, sends delayed wills whose time has come, announces presence.
    pub fn tick(&self, now_ms: u64) {
        let mut st = self.lock();
        let mut fx = Effects::new();
        st.router.tick(&*self.authz, now_ms, &mut fx);
        let st = &mut *st;
        let gone: Vec<LinkId> =
            st.wills_waiting.extract_if(|session, _| !st.router.will_waits(session)).map(|(_, link)| link).collect();
        if let Some(journal) = self.journal().filter(|_| !gone.is_empty()) {
            journal.submit_detached(gone.into_iter().map(|link| journal::Item::Will(link, None)).collect());
        }
        self.apply(st, fx, None);
    }

    /// Routes a message published by `from` (a session key) or by the system (`None`). A
    /// client's message in a cluster goes on to the other edges in `slot`
    /// ([`ClusterLink::slot`]), numbered as it is routed.
    pub fn publish(&self, msg: SharedMessage, from: Option<&str>, now_ms: u64, slot: Option<Slot>) -> Routed {
        if from.is_some() {
            self.counters.messages_received.fetch_add(1, Ordering::Relaxed);
        }
        let onward = slot.filter(|_| from.is_some() && self.cluster.get().is_some()).map(|slot| (slot, msg.clone()));
        self.route_as(onward, |router, fx| router.publish(msg, from, now_ms, fx))
    }

    /// The number of the last message this edge routed for the other edges too (its clients'
    /// publishes, wills and presence changes), in a cluster. Numbered under the hub's lock as
    /// they are routed, so all routed after a moment have higher numbers than all routed
    /// before: a session that leaves this edge had every message of it up to the number then
    /// (`handover`), and one that comes here gets every message numbered above the number at
    /// its arrival here (`catch_up`).
    pub fn numbered(&self) -> u64 {
        self.lock().numbered
    }

    /// Routes a message another edge sent.
    pub fn publish_remote(&self, msg: SharedMessage, now_ms: u64) -> Routed {
        self.route(|router, fx| router.publish_remote(msg, now_ms, fx))
    }

    /// Hands a message `session` missed (from a durable stream) to that session alone.
    pub fn replay(&self, session: &str, msg: SharedMessage, now_ms: u64) -> Routed {
        self.route(|router, fx| usize::from(router.replay(session, msg, now_ms, fx)))
    }

    /// Hands `session`, catching up after its edge died, a message the bus kept (taken there
    /// at `at_ms`) if it missed it.
    pub fn replay_routed(&self, session: &str, msg: SharedMessage, at_ms: u64, now_ms: u64) -> Routed {
        self.route(|router, fx| usize::from(router.replay_routed(session, msg, at_ms, now_ms, fx)))
    }

    /// Parks a session the journal holds, whose record expires at `expires_at` (Unix ms, `None`:
    /// never), as if its client had just left, with what is left of its expiry
    /// (`journal::expiry_left`: neither brought back after it should have ended nor given more
    /// time), catching up if `catch_up` names the node whose messages its replay skips, and
    /// holding what comes meanwhile until [`Hub::replay_done`] (see `Router::restore_parked`).
    /// Returns [`Hub::numbered`] once it was here (what this edge
    /// routed after that reached it here); `None` if it is here already or nothing is left of it.
    pub fn restore_parked(
        &self,
        session: &str,
        journaled: crate::stored::Journaled,
        expires_at: Option<u64>,
        catch_up: Option<Arc<str>>,
        now_ms: u64,
    ) -> Option<u64> {
        let expiry = crate::journal::expiry_left(journaled.expiry_secs, expires_at, now_ms);
        if expiry == 0 {
            return None;
        }
        let session: Arc<str> = session.into();
        let mut st = self.lock();
        let mut fx = Effects::new();
        let parked = st.router.restore_parked(&session, journaled.snapshot, expiry, catch_up, now_ms, &mut fx);
        let numbered = st.numbered;
        self.apply(&mut st, fx, None);
        parked.then_some(numbered)
    }

    /// Every session here that outlives its connection starts catching up, as this edge lost
    /// the bus; returns them (see `catch_up::after_outages`).
    pub fn begin_catch_up_all(&self, this_node: &Arc<str>, held: impl Fn(&str) -> bool) -> Vec<(Arc<str>, u64)> {
        self.lock().router.begin_catch_up_all(this_node, held)
    }

    /// The id of `session`'s catch-up, if it is here and catching up.
    pub fn catch_up_id(&self, session: &str) -> Option<u64> {
        self.lock().router.catch_up_id(session)
    }

    /// The filters of `session`'s subscriptions but its shared ones.
    pub fn plain_filters(&self, session: &str) -> Vec<String> {
        self.lock().router.plain_filters(session)
    }

    /// [`Hub::replay_routed`] to every session here catching up.
    pub fn replay_routed_all(&self, msg: SharedMessage, at_ms: u64, now_ms: u64) -> Routed {
        self.route(|router, fx| router.replay_routed_all(msg, at_ms, now_ms, fx))
    }

    /// [`Hub::replay_routed`] to each session here that `takes` it (by name), in one read of
    /// the bus for several (see `Router::replay_routed_to`).
    pub fn replay_routed_to(
        &self,
        msg: SharedMessage,
        at_ms: u64,
        now_ms: u64,
        takes: impl Fn(&str) -> bool,
    ) -> Routed {
        self.route(|router, fx| router.replay_routed_to(msg, at_ms, now_ms, takes, fx))
    }

    /// The session of the live connection `link` falls behind on what other edges route (see
    /// `behind`); its replay skips what `this_node` published. Returns the session and which
    /// time it fell behind; `None` if it is not here or behind already.
    pub fn fall_behind(&self, link: u64, this_node: &Arc<str>) -> Option<(Arc<str>, u64)> {
        self.lock().router.fall_behind(link, this_node)
    }

    /// The shared journal lost what it held: this edge's sessions that outlive their
    /// connection, and its retained messages, are written to it again (see
    /// `Router::journal_all_again`). Returns the sessions written and the write to wait for.
    pub fn journal_all_again(&self) -> (Vec<Arc<str>>, Option<Durable>) {
        let mut st = self.lock();
        let mut fx = Effects::new();
        let now_ms = crate::message::now_ms();
        let written = st.router.journal_all_again(now_ms, &mut fx);
        let durable = self.apply(&mut st, fx, None);
        self.write_wills_again(&st, now_ms);
        (written, durable)
    }

    /// Writes the wills of the connections open here to the journal again, whole, if a write
    /// failed since they last were (a will, or the end of one, may be missing there): at most
    /// every second, from the housekeeping tick.
    pub fn write_wills_again_if_lost(&self, now_ms: u64) {
        let Some(journal) = self.journal() else { return };
        let failed_at = journal.failed_at_ms();
        if failed_at == 0 || failed_at < self.wills_written_at_ms.load(Ordering::Relaxed) || !journal.is_healthy() {
            return;
        }
        let st = self.lock();
        self.wills_written_at_ms.store(now_ms.max(failed_at + 1), Ordering::Relaxed);
        self.write_wills_again(&st, now_ms);
    }

    /// Replaces what the journal holds of this edge's wills by those of the connections open
    /// here (under the lock: in order with their own writes).
    fn write_wills_again(&self, st: &State, now_ms: u64) {
        let Some(journal) = self.journal() else { return };
        let wills: broker::journal::Wills = st
            .router
            .live_wills()
            .into_iter()
            .filter(|(link, _)| st.wills_kept.contains(link))
            .chain(
                st.wills_waiting
                    .iter()
                    .filter_map(|(session, link)| Some((*link, st.router.waiting_will(session, now_ms)?))),
            )
            .map(|(link, lost)| (link, crate::wills::encode(&lost)))
            .collect();
        journal.submit_detached(vec![journal::Item::WillsAre(wills)]);
    }

    /// Sends the wills of connections a dead edge had open or waiting (see `wills`); a
    /// delayed one that now waits here is kept in the journal under this edge's name.
    pub fn lost_wills(&self, wills: Vec<crate::wills::LostWill>, now_ms: u64) {
        let mut st = self.lock();
        let mut fx = Effects::new();
        let mut kept = Vec::new();
        for lost in wills {
            let session = lost.session.clone();
            st.router.lost_will(lost, &*self.authz, now_ms, &mut fx);
            if self.journal().is_some() && st.router.will_waits(&session) {
                st.waiting_keys += 1;
                let key = st.waiting_keys;
                keep_waiting_will(&mut st, &session, key, now_ms, &mut kept);
            }
        }
        if let Some(journal) = self.journal().filter(|_| !kept.is_empty()) {
            journal.submit_detached(kept);
        }
        self.apply(&mut st, fx, None);
    }

    /// The next step of `session`, behind since [`Hub::fall_behind`] answered `id`; `None` if
    /// it is not here or not behind since then.
    pub fn caught_up_behind(&self, session: &str, id: u64) -> Option<broker::session::BehindStep> {
        self.lock().router.caught_up_behind(session, id)
    }

    /// The first pass of the replay of `session`, held since it arrived
    /// ([`Connected::behind`] answered `id`), is done or given up: its queue goes out.
    pub fn arrived(&self, session: &str, id: u64, now_ms: u64) {
        let mut st = self.lock();
        let mut fx = Effects::new();
        st.router.arrived(session, id, now_ms, &mut fx);
        self.apply(&mut st, fx, None);
    }

    /// `session`'s replay, behind since [`Hub::fall_behind`] answered `id`, gives up; returns
    /// how many messages it skipped were never read.
    pub fn give_up_behind(&self, session: &str, id: u64) -> Option<usize> {
        self.lock().router.give_up_behind(session, id)
    }

    /// The id of `session`'s arrival while what comes to it waits for its replay (a session
    /// taken from a dead edge: [`Hub::restore_parked`] with a catch-up).
    pub fn arrival_id(&self, session: &str) -> Option<u64> {
        self.lock().router.arrival_id(session)
    }

    /// The one replay of `session`, parked with a catch-up since [`Hub::arrival_id`] answered
    /// `id`, is done or given up: what it held goes in after what the replay gave, and its
    /// catch-up ends (see `Router::replay_done`).
    pub fn replay_done(&self, session: &str, id: u64, now_ms: u64) {
        let mut st = self.lock();
        let mut fx = Effects::new();
        st.router.replay_done(session, id, now_ms, &mut fx);
        self.apply(&mut st, fx, None);
    }

    /// A replay of `session`'s catch-up `catch_up` is done (see `catch_up`).
    pub fn caught_up(&self, session: &str, catch_up: u64) {
        self.lock().router.caught_up(session, catch_up);
    }

    /// Whether `session` outlives its connection and has no cursor in `stream` yet.
    pub fn wants_cursor(&self, session: &str, stream: &str) -> bool {
        self.lock().router.wants_cursor(session, stream)
    }

    /// Starts `session`'s cursor in `stream` where the stream stands (`at`).
    pub fn start_cursor(&self, session: &str, stream: &str, at: broker::streams::Stamp) {
        self.route(|router, fx| {
            router.start_cursor(session, stream, at, fx);
            0
        });
    }

    /// Retained messages from the journal, before the first client comes.
    pub fn restore_retained(&self, messages: Vec<SharedMessage>) {
        self.lock().router.restore_retained(messages);
    }

    /// See `Router::retained_mark`.
    pub fn retained_mark(&self) -> u64 {
        self.lock().router.retained_mark()
    }

    /// See `Router::reconcile_retained`.
    pub fn reconcile_retained(&self, all: Vec<SharedMessage>, mark: u64) -> usize {
        self.lock().router.reconcile_retained(all, mark)
    }

    /// One routing decision (`decide` returns how many sessions took the message), applied
    /// with the connections a publisher must wait for and the journal's answer.
    fn route(&self, decide: impl FnOnce(&mut Router<SharedMessage, Arc<Identity>>, &mut Effects) -> usize) -> Routed {
        self.route_as(None, decide)
    }

    /// [`Hub::route`]; `onward`, a message for the other edges too, goes in its slot numbered
    /// ([`Hub::numbered`]) under the lock, in number order.
    fn route_as(
        &self,
        onward: Option<(Slot, SharedMessage)>,
        decide: impl FnOnce(&mut Router<SharedMessage, Arc<Identity>>, &mut Effects) -> usize,
    ) -> Routed {
        let mut st = self.lock();
        let mut fx = Effects::new();
        let sessions = decide(&mut st.router, &mut fx);
        let forwarded = onward.map(|(slot, msg)| slot.fill(msg, next_number(&mut st)));
        let mut pressure = Vec::new();
        let durable = self.apply(&mut st, fx, Some(&mut pressure));
        Routed { sessions, pressure, durable, forwarded }
    }

    /// Hands `session` to another edge where its client connected: its connection here is
    /// closed (v5 0x8E); returns its state and expiry, if it was here. A client that started
    /// afresh there (clean start) ends the session here first (a delayed will is due now).
    pub fn hand_over(
        &self,
        session: &str,
        starts_afresh: bool,
        now_ms: u64,
    ) -> Option<(broker::session::SessionSnapshot<SharedMessage>, u32)> {
        let mut st = self.lock();
        let mut fx = Effects::new();
        if starts_afresh {
            st.router.started_afresh_elsewhere(session, &*self.authz, now_ms, &mut fx);
        }
        let mut handed = st.router.hand_over(session, &*self.authz, now_ms, &mut fx);
        self.forget_waiting_will(&mut st, session);
        // Whatever this edge routed before now the session had here; the next edge catches
        // up on what comes after (what it routes until the session's interest is in place
        // there reaches nobody).
        if let (Some((snapshot, _)), Some(c)) = (&mut handed, self.cluster.get()) {
            let at = broker::streams::Stamp { epoch: c.node().incarnation, seq: st.numbered };
            let since_ms = now_ms.saturating_sub(crate::catch_up::MOVE_MARGIN_MS);
            let cursor = broker::origins::cursor_name(&c.node().id).into();
            snapshot.moved_from(cursor, at, since_ms, &c.node().registered());
        }
        self.apply(&mut st, fx, None);
        handed
    }

    /// Routing to other edges, once attached.
    pub fn cluster(&self) -> Option<&ClusterLink> {
        self.cluster.get()
    }

    /// Starts telling `link` this hub's interest and messages; before the first client comes.
    /// Shared subscriptions are served through the bus from then on (one member among every
    /// edge's).
    pub fn attach_cluster(&self, link: ClusterLink) {
        self.lock().router.share_through_bus();
        let _ = self.cluster.set(link);
    }

    /// Hands a message to one member here of the shared subscription `share`, which the bus
    /// picked this edge for, whatever it has waiting.
    pub fn publish_shared(&self, msg: SharedMessage, share: &str, now_ms: u64) -> Routed {
        self.route(|router, fx| router.publish_shared(msg, share, now_ms, usize::MAX, fx).unwrap_or(0))
    }

    /// [`Hub::publish_shared`] to a member with fewer than `full` messages waiting for its
    /// connection; `None` if none has (nothing changed).
    pub fn publish_shared_with_room(
        &self,
        msg: SharedMessage,
        share: &str,
        now_ms: u64,
        full: usize,
    ) -> Option<Routed> {
        let mut every_member_full = false;
        let routed = self.route(|router, fx| {
            let took = router.publish_shared(msg, share, now_ms, full, fx);
            every_member_full = took.is_none();
            took.unwrap_or(0)
        });
        (!every_member_full).then_some(routed)
    }

    /// Decides presence with the other edges through `presence` from now on; before the first
    /// client comes.
    pub fn attach_presence(&self, presence: SharedPresence) {
        self.lock().router.share_presence();
        let _ = self.presence.set(presence);
    }

    /// Announces a user's presence, decided with the other edges.
    pub fn announce_presence(&self, topic: &str, news: broker::presence::Announce) {
        self.route(|router, fx| {
            router.announce(topic, news, crate::message::now_ms(), fx);
            0
        });
    }

    /// Durable streams, once attached.
    pub fn streams(&self) -> Option<&Streams> {
        self.streams.get()
    }

    /// Appends messages on durable topics to `streams`; before the first client comes.
    pub fn attach_streams(self: &Arc<Self>, streams: Streams) {
        self.lock().router.stamp_wills_on(streams.rules().clone());
        let (wills, due) = tokio::sync::mpsc::unbounded_channel();
        let _ = self.stream_wills.set(wills);
        let _ = self.streams.set(streams);
        tokio::spawn(crate::streams::send_wills(Arc::downgrade(self), due));
    }

    /// Routes a will due on a durable topic, stamped with its place in its stream (see
    /// `Router::send_stamped_will`).
    pub fn send_stamped_will(&self, will: SharedMessage, now_ms: u64) {
        self.route(|router, fx| {
            router.send_stamped_will(will, now_ms, fx);
            0
        });
    }

    /// The session journal, once attached.
    pub fn journal(&self) -> Option<&JournalWriter> {
        self.journal.get()
    }

    /// Starts writing persistent sessions to `writer`; before the first client comes.
    pub fn attach_journal(&self, writer: JournalWriter) {
        let _ = self.journal.set(writer);
    }

    /// Tells the journal that the live sessions that outlive their connection are still here
    /// (their records expire otherwise: a killed edge's sessions do not stay forever).
    pub fn touch_live(&self) {
        let Some(writer) = self.journal.get() else {
            return;
        };
        let live = self.lock().router.durable_live();
        let touches: Vec<journal::Item> = live
            .into_iter()
            .filter_map(|(s, expiry)| Some(journal::Item::Touch(s, journal::live_ttl(expiry)?)))
            .collect();
        if !touches.is_empty() {
            writer.submit_detached(touches);
        }
    }

    /// The retained message of `topic`, if this edge holds one.
    pub fn retained(&self, topic: &str) -> Option<SharedMessage> {
        self.lock().router.retained(topic).cloned()
    }

    /// Whether `bytes` retained on `topic` keep what its first level holds within
    /// `limits.max_retained_per_tenant` and `limits.max_retained_bytes_per_tenant`.
    pub fn retained_within_quota(&self, topic: &str, bytes: usize) -> bool {
        self.lock().router.retained_within_quota(topic, bytes)
    }

    /// Whether `session` is here, live or parked (if not, it may be in the journal).
    pub fn holds(&self, session: &str) -> bool {
        self.lock().router.holds(session)
    }

    /// Does what the router decided, in order. With `pressure`, connections whose backlog
    /// reached the high-water mark are collected there (the publisher waits for them). What
    /// goes to the journal is submitted last, in one batch; the answer resolves once it is
    /// written.
    fn apply(&self, st: &mut State, fx: Effects, pressure: Option<&mut Vec<Room>>) -> Option<Durable> {
        let journal = self.effects(st, fx, pressure);
        let writer = self.journal.get().filter(|_| !journal.is_empty())?;
        Some(writer.submit(journal))
    }

    /// [`Hub::apply`] for effects whose journal changes nobody waits for, and which lose
    /// nothing if they are never written (`JournalWriter::submit_lazily`).
    fn apply_lazily(&self, st: &mut State, fx: Effects) {
        let journal = self.effects(st, fx, None);
        if let Some(writer) = self.journal.get().filter(|_| !journal.is_empty()) {
            writer.submit_lazily(journal);
        }
    }

    /// Does what the router decided, in order, but for the journal's changes: returned.
    fn effects(&self, st: &mut State, fx: Effects, mut pressure: Option<&mut Vec<Room>>) -> Vec<journal::Item> {
        let mut journal = Vec::new();
        for effect in fx {
            match effect {
                Effect::Persist { session, persist } => {
                    if self.journal.get().is_some() {
                        journal.push(journal::Item::Session(session, persist));
                    }
                }
                Effect::Retain { topic, message } => {
                    if self.journal.get().is_some() {
                        journal.push(journal::Item::Retained(topic, message));
                    }
                }
                Effect::Deliver(link, d) => {
                    if let Some(l) = st.links.get(&link) {
                        self.send(l, d);
                    }
                }
                Effect::Backlog(link, n) => {
                    if let Some(l) = st.links.get(&link) {
                        l.set_session_backlog(n);
                        if let Some(p) = pressure.as_deref_mut()
                            && l.backlog() >= self.high_water(crate::flow::Router::Publisher)
                        {
                            p.push(l.room());
                        }
                    }
                }
                Effect::Close(link, reason) => {
                    if let Some(l) = st.links.get(&link) {
                        l.close(reason);
                    }
                }
                Effect::TakenOver { link, client_id, old, new } => {
                    tracing::info!(
                        client_id = %client_id,
                        tenant = %new.enterprise,
                        user = %new.username,
                        old_user = %old.username,
                        old_token_issued_ms = old.issued_at_ms,
                        new_token_issued_ms = new.issued_at_ms,
                        "session taken over by a new connection of its owner"
                    );
                    Self::taken_over(st, link);
                }
                Effect::MovedAway { link, client_id } => {
                    tracing::info!(client_id = %client_id, "session taken over by a connection on another edge");
                    Self::taken_over(st, link);
                }
                Effect::WillRefused { owner, client_id, topic } => {
                    metrics::counter!(m::WILLS_REFUSED).increment(1);
                    tracing::info!(
                        client_id = %client_id,
                        tenant = %owner.enterprise,
                        topic = %topic,
                        "will not sent: the ACL no longer allows its topic, it is retained past its tenant's quota, or its owner's tokens were revoked"
                    );
                }
                Effect::Dropped { session, messages, exhausted } => self.dropped(&session, messages, exhausted),
                Effect::SessionEnded { session, expired } => {
                    if expired {
                        metrics::counter!(m::SESSIONS_EXPIRED).increment(1);
                    }
                    if let Some(c) = self.cluster.get() {
                        c.ended(session);
                    }
                }
                Effect::SubscriptionRevoked => metrics::counter!(m::SUBSCRIPTIONS_REVOKED).increment(1),
                Effect::Interest { filter, held } => {
                    if let Some(c) = self.cluster.get() {
                        c.interest(filter, held);
                    }
                }
                Effect::WillForStream(will) => {
                    if let Some(wills) = self.stream_wills.get() {
                        let _ = wills.send(will);
                    }
                }
                Effect::Originated(msg) => {
                    if let Some(c) = self.cluster.get() {
                        c.originated(msg, next_number(st));
                    }
                }
                Effect::DevicesHere { topic, devices } => {
                    if let Some(p) = self.presence.get() {
                        p.report(topic, devices);
                    }
                }
            }
        }
        journal
    }

    /// A newer connection of the session, here or on another edge, took over from `link`.
    fn taken_over(st: &mut State, link: LinkId) {
        if let Some(l) = st.links.remove(&link) {
            l.close(CloseReason::SessionTakenOver);
        }
        metrics::counter!(m::TAKEOVERS).increment(1);
        metrics::gauge!(m::CONNECTIONS).decrement(1.0);
    }

    /// Closes the connection behind `room`: it stopped reading while publishers waited for it
    /// (v5 0x97). Its QoS 1/2 messages stay in its session.
    pub fn close_stalled(&self, room: &Room) {
        let st = self.lock();
        if let Some(link) = st.links.get(&room.link_id) {
            let client_id = st.router.client_id_of(room.link_id).unwrap_or_default();
            tracing::info!(client_id = %client_id, "closing a subscriber that stopped reading");
            link.close(CloseReason::SlowConsumer);
            metrics::counter!(m::SLOW_CONSUMER_DISCONNECTS).increment(1);
        }
    }

    /// The backlog at which `router` waits: `limits.max_queued_messages` (beyond it the session
    /// would drop) and at most half what a connection's queue holds (so QoS 0 floods are slowed
    /// before they drop); for a client's PUBLISH at most `limits.max_backlog` too.
    pub fn high_water(&self, router: crate::flow::Router) -> usize {
        let queue = self.cfg.session.max_queued.min(self.link_capacity() / 2);
        match router {
            crate::flow::Router::Publisher => queue.min(self.cfg.max_backlog),
            crate::flow::Router::Edge => queue,
        }
        .max(1)
    }

    /// Deliveries a connection's channel holds: its in-flight window and what may wait for its
    /// socket beyond it.
    fn link_capacity(&self) -> usize {
        usize::from(self.cfg.session.max_inflight) + self.cfg.max_pending_deliveries
    }

    /// Messages `session` gave up on: counted (overflow) and, at QoS 1/2, kept as dead letters.
    fn dropped(&self, session: &str, messages: Vec<broker::session::Outgoing<SharedMessage>>, exhausted: bool) {
        if !exhausted {
            self.count_dropped(messages.len());
        }
        let Some(streams) = self.streams.get() else { return };
        let reason = if exhausted { "retries" } else { "overflow" };
        let now = crate::message::now_ms();
        for out in messages.iter().filter(|o| o.qos != broker::QoS::AtMostOnce) {
            streams.dead_letter(reason, session, &out.msg, now);
        }
    }

    fn count_dropped(&self, n: usize) {
        if n > 0 {
            self.counters.messages_dropped.fetch_add(n as u64, Ordering::Relaxed);
            metrics::counter!(m::QUEUE_DROPS).increment(n as u64);
        }
    }

    fn send(&self, link: &ConnLink, d: Delivery) {
        match link.send(d) {
            Ok(()) => {}
            // Only QoS 0 is ever refused for room, and the protocol lets it be dropped.
            Err(Refused::Full(_)) => {
                self.counters.messages_dropped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(m::QOS0_DROPS).increment(1);
            }
            // QoS 1/2 deliveries stay in the session's in-flight window and are resent on
            // reconnect.
            Err(Refused::Closed(_)) => {}
        }
    }

    /// A SUBSCRIBE entry. Returns why it was refused, if it was; retained messages that match
    /// are handed to the connection.
    pub fn subscribe(
        &self,
        session: &str,
        raw_filter: &str,
        options: SubOptions,
        now_ms: u64,
    ) -> Result<(), SubscribeError> {
        let mut st = self.lock();
        let mut fx = Effects::new();
        let result = st.router.subscribe(session, raw_filter, options, now_ms, &mut fx);
        self.apply(&mut st, fx, None);
        result
    }

    /// The token users with a live session here, each once, by enterprise.
    pub fn token_users(&self) -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
        let st = self.lock();
        let mut users: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> = Default::default();
        for who in st.router.live_owners().filter(|who| who.via_token) {
            users.entry(who.enterprise.clone()).or_default().insert(who.username.clone());
        }
        users
    }

    /// Relations of `users` in `enterprise` changed: re-check their live sessions' subscriptions
    /// against the ACL (dropping what it no longer allows) and add the auto-subscriptions it now
    /// gives. Parked sessions are re-checked when they are resumed.
    /// `users` `None` means every user of the enterprise (its ACL tables changed).
    pub fn reauthorize(&self, authz: &Authorizer, enterprise: &str, users: Option<&[&str]>, now_ms: u64) {
        let mut st = self.lock();
        let mut fx = Effects::new();
        let select = |who: &Arc<Identity>| {
            who.via_token && who.enterprise == enterprise && users.is_none_or(|u| u.contains(&who.username.as_str()))
        };
        st.router.reauthorize(authz, select, now_ms, &mut fx);
        self.apply(&mut st, fx, None);
    }

    /// An UNSUBSCRIBE entry; returns whether the subscription existed.
    pub fn unsubscribe(&self, session: &str, raw_filter: &str) -> bool {
        let mut st = self.lock();
        let mut fx = Effects::new();
        let existed = st.router.unsubscribe(session, raw_filter, &mut fx);
        self.apply(&mut st, fx, None);
        existed
    }

    /// PUBACK or PUBCOMP for an outbound message: frees window space.
    pub fn complete(&self, session: &str, link_id: u64, packet_id: NonZeroU16, now_ms: u64) {
        let mut st = self.lock();
        self.counters.messages_sent.fetch_add(1, Ordering::Relaxed);
        let mut fx = Effects::new();
        st.router.complete(session, link_id, packet_id, now_ms, &mut fx);
        self.apply_lazily(&mut st, fx);
    }

    /// PUBREC for an outbound QoS 2 message.
    pub fn received(&self, session: &str, packet_id: NonZeroU16) {
        let mut st = self.lock();
        let mut fx = Effects::new();
        st.router.received(session, packet_id, &mut fx);
        self.apply_lazily(&mut st, fx);
    }

    /// Inbound QoS 2: false if `packet_id` is a duplicate of an unreleased PUBLISH.
    /// With a persistent session, the id is journaled: the answer's `Durable` resolves once
    /// it is written (the PUBREC waits for it).
    pub fn incoming_qos2(&self, session: &str, packet_id: u16) -> (bool, Option<Durable>) {
        let mut st = self.lock();
        let mut fx = Effects::new();
        let fresh = st.router.incoming_qos2(session, packet_id, &mut fx);
        (fresh, self.apply(&mut st, fx, None))
    }

    /// Inbound PUBREL; returns whether `packet_id` was awaiting release in the session.
    pub fn incoming_released(&self, session: &str, packet_id: u16) -> bool {
        let mut st = self.lock();
        let mut fx = Effects::new();
        let was = st.router.incoming_released(session, packet_id, &mut fx);
        self.apply(&mut st, fx, None);
        was
    }

    /// Counts a QoS 0 delivery written to a socket.
    pub fn sent_qos0(&self) {
        self.counters.messages_sent.fetch_add(1, Ordering::Relaxed);
    }

    /// Closes the live connections of a token user whose token was issued before `before_ms`
    /// (v5 0x98), without their wills, and drops the user's delayed wills; returns how many
    /// connections. Only connections and wills of the login `session` when it is not empty.
    pub fn close_user(&self, enterprise: &str, user_id: &str, session: &str, before_ms: i64) -> usize {
        let mut st = self.lock();
        let mut fx = Effects::new();
        let select = |who: &Arc<Identity>| {
            who.via_token
                && who.enterprise == enterprise
                && who.user_id == user_id
                && (session.is_empty() || who.session_id == session)
                && who.issued_at_ms < before_ms
        };
        let closed = st.router.revoke_where(select, &mut fx);
        self.apply(&mut st, fx, None);
        closed
    }

    /// Whether the server is stopping: new connections are refused.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Asks every live connection to close (server shutdown), and every one still to come.
    pub fn close_all(&self, reason: CloseReason) {
        self.closing.store(true, Ordering::SeqCst);
        for link in self.lock().links.values() {
            link.close(reason);
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        let counts = self.lock().router.counts();
        Snapshot {
            clients_connected: counts.live,
            sessions: counts.live + counts.parked,
            subscriptions: counts.subscriptions,
            retained: counts.retained,
            messages_received: self.counters.messages_received.load(Ordering::Relaxed),
            messages_sent: self.counters.messages_sent.load(Ordering::Relaxed),
            messages_dropped: self.counters.messages_dropped.load(Ordering::Relaxed),
        }
    }
}

/// Numbers a message this edge routes for the other edges too ([`Hub::numbered`]).
fn next_number(st: &mut State) -> u64 {
    st.numbered += 1;
    st.numbered
}
