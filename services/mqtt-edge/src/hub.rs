//! The edge's shared routing state: live sessions by session key (owner and client id, see
//! `broker::store::session_key`), the session store for the parked ones, the subscription
//! tries, retained messages, and a link to each live connection.
//!
//! All ntex workers share one `Hub`. Its methods are synchronous and short; they decide with the
//! broker core and hand deliveries to connections through bounded channels, so a connection's
//! socket is only ever written by the worker that owns it.

use std::collections::HashMap;
use std::num::NonZeroU16;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use broker::presence::{Announce, Presence};
use broker::retained::RetainedStore;
use broker::route::RoutePlan;
use broker::session::{Enqueued, Outgoing, Session, SessionLimits};
use broker::store::{MemorySessionStore, Parked, SessionStore};
use broker::topic::{TopicError, TopicLimits, parse_subscription};
use broker::trie::SubscriptionTrie;
use broker::{RetainHandling, SubOptions};

use crate::auth::Identity;
use crate::authz::Authorizer;
use crate::link::{self, ConnInbox, ConnLink, Refused, Room};
use crate::message::{Message, SharedMessage};
use crate::metrics as m;
use broker::QoS;
use ntex_bytes::{ByteString, Bytes};

pub type Delivery = Outgoing<SharedMessage>;

/// What became of a published message.
#[derive(Debug)]
pub struct Routed {
    /// Sessions it was handed to.
    pub sessions: usize,
    /// Connections with too much waiting for them: the publisher waits for room in each
    /// before acknowledging (see `flow`).
    pub pressure: Vec<Room>,
}

/// Why the edge closes a connection on its own initiative.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Another connection took over the client id (v5 0x8E).
    SessionTakenOver,
    /// The server is stopping (v5 0x8B).
    ServerShuttingDown,
    /// The connection did not keep up with its deliveries (v5 0x97 quota exceeded).
    SlowConsumer,
    /// The user was disabled or their token revoked (v5 0x98 administrative action).
    Revoked,
}

/// A will message and its delay (v5; 0 for v3).
#[derive(Debug, Clone)]
pub struct Will {
    pub message: SharedMessage,
    pub delay_secs: u32,
}

/// What a CONNECT asks of the hub.
#[derive(Debug)]
pub struct ConnectRequest {
    /// The session's key: its owner and client id. Only a CONNECT with the same key takes the
    /// session over or resumes it.
    pub session: Arc<str>,
    pub client_id: Arc<str>,
    pub clean_start: bool,
    /// Seconds the session outlives the connection: 0 = ends with it, `u32::MAX` = never expires.
    pub session_expiry_secs: u32,
    /// The client's receive maximum (v5) or 65 535 (v3).
    pub receive_maximum: u16,
    pub will: Option<Will>,
    /// The user's presence topic (`{eid}/im/pres/{user}`) for token users: online while any
    /// of their devices is connected.
    pub presence: Option<Arc<str>>,
    /// Who authenticated, for re-checking subscriptions when relations change.
    pub identity: Arc<Identity>,
}

#[derive(Debug)]
pub struct Connected {
    pub session_present: bool,
    pub link_id: u64,
    pub inbox: ConnInbox,
}

/// Per-connection channel capacity beyond the in-flight window.
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub session: SessionLimits,
    pub topic: TopicLimits,
    pub max_subscriptions: usize,
    /// Deliveries a connection may have waiting for its socket before it counts as slow.
    pub max_pending_deliveries: usize,
    /// How long presence changes wait before they are announced (`limits.presence_grace_secs`).
    pub presence_grace_ms: u64,
}

/// A session with a connection.
struct Live {
    /// The session's key in the routing tries.
    key: u64,
    session: Session<SharedMessage>,
    link: ConnLink,
    expiry_secs: u32,
    will: Option<Will>,
    presence: Option<Arc<str>>,
    identity: Arc<Identity>,
    client_id: Arc<str>,
}

/// A will waiting for its v5 will-delay, with who it is sent for (checked again when due).
struct PendingWill {
    due_ms: u64,
    message: SharedMessage,
    identity: Arc<Identity>,
    client_id: Arc<str>,
}

struct State {
    live: HashMap<Arc<str>, Live>,
    store: Box<dyn SessionStore<SharedMessage>>,
    /// Users' presence by presence topic: devices connected, what was announced.
    presence: Presence<Arc<str>>,
    /// Wills waiting for their v5 will-delay, by session key.
    pending_wills: HashMap<Arc<str>, PendingWill>,
    client_of: HashMap<u64, Arc<str>>,
    subs: SubscriptionTrie<u64, SubOptions>,
    shared: SubscriptionTrie<(u64, Arc<str>), SubOptions>,
    retained: RetainedStore<SharedMessage>,
    next_id: u64,
    round_robin: usize,
}

impl State {
    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Forgets a session that ends: its subscriptions leave the tries.
    fn drop_session(&mut self, key: u64, session: &Session<SharedMessage>, limits: &TopicLimits) {
        for (f, _) in session.subscriptions() {
            remove_from_tries(&mut self.subs, &mut self.shared, key, f, limits);
        }
        self.client_of.remove(&key);
    }
}

fn remove_from_tries(
    subs: &mut SubscriptionTrie<u64, SubOptions>,
    shared: &mut SubscriptionTrie<(u64, Arc<str>), SubOptions>,
    key: u64,
    raw_filter: &str,
    limits: &TopicLimits,
) {
    if let Ok(p) = parse_subscription(raw_filter, limits) {
        match p.share_group {
            Some(g) => {
                shared.remove(p.filter, &(key, g.into()));
            }
            None => {
                subs.remove(p.filter, &key);
            }
        }
    }
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
    /// Set by [`Hub::close_all`]: connections that arrive afterwards are closed at once.
    closing: AtomicBool,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("cfg", &self.cfg).field("snapshot", &self.snapshot()).finish()
    }
}

impl Hub {
    /// A hub whose parked sessions live in this process's memory.
    pub fn new(cfg: HubConfig, authz: Arc<Authorizer>) -> Self {
        Self::with_store(cfg, authz, Box::new(MemorySessionStore::default()))
    }

    pub fn with_store(cfg: HubConfig, authz: Arc<Authorizer>, store: Box<dyn SessionStore<SharedMessage>>) -> Self {
        let state = State {
            live: HashMap::new(),
            store,
            pending_wills: HashMap::new(),
            presence: Presence::new(cfg.presence_grace_ms),
            client_of: HashMap::new(),
            subs: SubscriptionTrie::new(),
            shared: SubscriptionTrie::new(),
            retained: RetainedStore::new(),
            next_id: 0,
            round_robin: 0,
        };
        Hub { state: Mutex::new(state), cfg, authz, counters: Counters::default(), closing: AtomicBool::new(false) }
    }

    pub fn config(&self) -> &HubConfig {
        &self.cfg
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug; the state is still consistent enough
        // to keep serving other clients, so poisoning is not propagated.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A CONNECT was accepted: take over a live session or resume a parked one (unless clean
    /// start), link the connection, and resend what is in flight.
    pub fn connect(&self, req: ConnectRequest, now_ms: u64) -> Connected {
        let mut st = self.lock();
        let link_id = st.next_id();
        let (link, inbox) =
            link::link(link_id, usize::from(self.cfg.session.max_inflight) + self.cfg.max_pending_deliveries);

        let mut takeover_will = None;
        let mut replaced_presence = None;
        let previous = match st.live.remove(&req.session) {
            Some(old) => {
                // Same session key, so the same owner: nobody else can get here.
                tracing::info!(
                    client_id = %req.client_id,
                    tenant = %req.identity.enterprise,
                    user = %req.identity.username,
                    old_user = %old.identity.username,
                    old_token_issued_ms = old.identity.issued_at_ms,
                    new_token_issued_ms = req.identity.issued_at_ms,
                    "session taken over by a new connection of its owner"
                );
                // A takeover is not a device leaving: no offline presence in between.
                replaced_presence = old.presence.clone();
                old.link.close(CloseReason::SessionTakenOver);
                metrics::counter!(m::TAKEOVERS).increment(1);
                metrics::gauge!(m::CONNECTIONS).decrement(1.0);
                // The old connection ended abnormally: its will goes out unless delayed, in
                // which case the new connection cancels it (v5 §3.1.3.2.2).
                takeover_will = old.will.filter(|w| w.delay_secs == 0).map(|w| PendingWill {
                    due_ms: now_ms,
                    message: w.message,
                    identity: old.identity,
                    client_id: old.client_id,
                });
                Some(Parked {
                    session: old.session,
                    key: old.key,
                    expiry_secs: old.expiry_secs,
                    offline_since_ms: now_ms,
                })
            }
            None => st.store.take(&req.session),
        };
        // A delayed will is cancelled by a reconnect to the session, and due at once if the
        // session ends now (clean start).
        let delayed_will = st.pending_wills.remove(&req.session).filter(|_| req.clean_start);
        for will in takeover_will.into_iter().chain(delayed_will) {
            self.send_will(&mut st, will, now_ms);
        }
        let (key, mut session, session_present) = match previous {
            Some(p) if !req.clean_start => (p.key, p.session, true),
            other => {
                if let Some(p) = other {
                    st.drop_session(p.key, &p.session, &self.cfg.topic);
                }
                let key = st.next_id();
                st.client_of.insert(key, req.session.clone());
                (key, Session::new(self.cfg.session), false)
            }
        };
        for d in session.resume(req.receive_maximum, now_ms) {
            Self::send(&link, d, &self.counters);
        }
        link.set_session_backlog(session.backlog());
        // Count the new device before letting the replaced one go, so a takeover never shows
        // the user offline in between.
        if let Some(topic) = &req.presence
            && let Some(news) = st.presence.connected(topic, now_ms)
        {
            self.route(&mut st, presence_message(topic, news), None, now_ms);
        }
        if let Some(topic) = replaced_presence {
            self.device_left(&mut st, topic, now_ms);
        }
        st.live.insert(
            req.session.clone(),
            Live {
                key,
                session,
                link,
                expiry_secs: req.session_expiry_secs,
                will: req.will,
                presence: req.presence,
                identity: req.identity,
                client_id: req.client_id,
            },
        );
        metrics::gauge!(m::CONNECTIONS).increment(1.0);
        if self.is_closing() {
            // Got past the CONNECT checks while `close_all` ran: the server is going all the same.
            if let Some(live) = st.live.get(&req.session) {
                live.link.close(CloseReason::ServerShuttingDown);
            }
        }
        Connected { session_present, link_id, inbox }
    }

    /// The connection `link_id` of `session` is gone. `graceful` means a DISCONNECT packet
    /// without "send will" arrived, so the will is discarded. `expiry_secs` is the session
    /// expiry the v5 DISCONNECT may have changed. The session is parked or ends.
    pub fn disconnect(&self, session: &str, link_id: u64, graceful: bool, expiry_secs: Option<u32>, now_ms: u64) {
        let mut st = self.lock();
        if st.live.get(session).is_none_or(|l| l.link.id != link_id) {
            // Taken over: the new connection owns the session now.
            return;
        }
        let Some((key, mut live)) = st.live.remove_entry(session) else {
            return;
        };
        metrics::gauge!(m::CONNECTIONS).decrement(1.0);
        // What a reading client would have got but now exceeds the offline bound.
        self.count_dropped(live.session.go_offline().len());
        let expiry = expiry_secs.unwrap_or(live.expiry_secs);
        let will = live.will.take().filter(|_| !graceful);
        let ends_now = expiry == 0;
        if ends_now {
            st.drop_session(live.key, &live.session, &self.cfg.topic);
        } else {
            let parked = Parked { session: live.session, key: live.key, expiry_secs: expiry, offline_since_ms: now_ms };
            st.store.park(session, parked);
        }
        if let Some(will) = will {
            let delay = if ends_now { 0 } else { u64::from(will.delay_secs.min(expiry)) };
            let pending = PendingWill {
                due_ms: now_ms + delay * 1000,
                message: will.message,
                identity: live.identity.clone(),
                client_id: live.client_id.clone(),
            };
            if delay == 0 {
                self.send_will(&mut st, pending, now_ms);
            } else {
                st.pending_wills.insert(key, pending);
            }
        }
        if let Some(topic) = live.presence.take() {
            self.device_left(&mut st, topic, now_ms);
        }
    }

    /// One device of a user went away; the last one makes the user offline (after the grace).
    fn device_left(&self, st: &mut State, topic: Arc<str>, now_ms: u64) {
        if let Some(news) = st.presence.left(&topic, now_ms) {
            self.route(st, presence_message(&topic, news), None, now_ms);
        }
    }

    /// Expires parked sessions and sends delayed wills whose time has come.
    pub fn tick(&self, now_ms: u64) {
        let mut st = self.lock();
        let mut due = Vec::new();
        for (session, parked) in st.store.expire(now_ms) {
            st.drop_session(parked.key, &parked.session, &self.cfg.topic);
            due.extend(st.pending_wills.remove(session.as_str()));
            metrics::counter!(m::SESSIONS_EXPIRED).increment(1);
        }
        let ripe: Vec<Arc<str>> =
            st.pending_wills.iter().filter(|(_, w)| w.due_ms <= now_ms).map(|(s, _)| s.clone()).collect();
        for session in ripe {
            due.extend(st.pending_wills.remove(&session));
        }
        for will in due {
            self.send_will(&mut st, will, now_ms);
        }
        for (topic, news) in st.presence.tick(now_ms) {
            self.route(&mut st, presence_message(&topic, news), None, now_ms);
        }
    }

    /// Publishes a will if its owner may still publish to its topic: relations or tables may
    /// have changed since the CONNECT that set it.
    fn send_will(&self, st: &mut State, will: PendingWill, now_ms: u64) {
        if !self.authz.can_publish(&will.identity, &will.client_id, &will.message.topic) {
            metrics::counter!(m::WILLS_REFUSED).increment(1);
            tracing::info!(
                client_id = %will.client_id,
                tenant = %will.identity.enterprise,
                topic = %will.message.topic,
                "will not sent: the ACL no longer allows its topic"
            );
            return;
        }
        self.route(st, will.message, None, now_ms);
    }

    /// Routes a message published by `from` (a session key) or by the system (`None`).
    pub fn publish(&self, msg: SharedMessage, from: Option<&str>, now_ms: u64) -> Routed {
        let mut st = self.lock();
        let publisher = from.and_then(|c| st.live.get(c)).map(|l| l.key);
        if from.is_some() {
            self.counters.messages_received.fetch_add(1, Ordering::Relaxed);
        }
        let mut pressure = Vec::new();
        let sessions = self.route_into(&mut st, msg, publisher, now_ms, &mut pressure);
        Routed { sessions, pressure }
    }

    /// Routes a message of the edge's own (presence, wills): nobody to slow down.
    fn route(&self, st: &mut State, msg: SharedMessage, publisher: Option<u64>, now_ms: u64) -> usize {
        self.route_into(st, msg, publisher, now_ms, &mut Vec::new())
    }

    /// Routes `msg`; connections whose backlog reached the high-water mark go into `pressure`.
    fn route_into(
        &self,
        st: &mut State,
        msg: SharedMessage,
        publisher: Option<u64>,
        now_ms: u64,
        pressure: &mut Vec<Room>,
    ) -> usize {
        if msg.retain {
            let keep = (!msg.payload.is_empty()).then(|| msg.clone());
            st.retained.set(&msg.topic, keep);
        }
        if msg.expires_at_ms.is_some_and(|at| now_ms >= at) {
            return 0;
        }
        let mut plan = RoutePlan::new(publisher, msg.qos, msg.retain);
        st.subs.for_each_match(&msg.topic, |key, opts| plan.add(key, opts));
        st.shared.for_each_match(&msg.topic, |(key, group), opts| plan.add_shared(group, key, opts));
        let mut rr = st.round_robin;
        let deliveries = plan.finish(|n| {
            rr = rr.wrapping_add(1);
            rr % n
        });
        st.round_robin = rr;
        let count = deliveries.len();
        for (key, d) in deliveries {
            let Some(cid) = st.client_of.get(&key) else {
                continue;
            };
            let out = Outgoing::new(msg.clone(), d.qos, d.retain, d.subscription_ids);
            let outcome = match st.live.get_mut(cid) {
                Some(live) => {
                    let outcome = live.session.enqueue(out);
                    match outcome {
                        Enqueued::Send(d) => Self::send(&live.link, d, &self.counters),
                        other => self.count_drop(Some(other)),
                    }
                    live.link.set_session_backlog(live.session.backlog());
                    if live.link.backlog() >= self.high_water() {
                        pressure.push(live.link.room());
                    }
                    continue;
                }
                None => st.store.enqueue(cid, out),
            };
            self.count_drop(outcome);
        }
        count
    }

    /// Closes the connection behind `room`: it stopped reading while publishers waited for it
    /// (v5 0x97). Its QoS 1/2 messages stay in its session.
    pub fn close_stalled(&self, room: &Room) {
        let st = self.lock();
        if let Some(live) = st.live.values().find(|l| l.link.id == room.link_id) {
            tracing::info!(client_id = %live.client_id, "closing a subscriber that stopped reading");
            live.link.close(CloseReason::SlowConsumer);
            metrics::counter!(m::SLOW_CONSUMER_DISCONNECTS).increment(1);
        }
    }

    /// The backlog at which publishers wait: `limits.max_queued_messages`, or half what a
    /// connection's queue holds if that is less (so QoS 0 floods are slowed before they drop).
    fn high_water(&self) -> usize {
        let capacity = usize::from(self.cfg.session.max_inflight) + self.cfg.max_pending_deliveries;
        self.cfg.session.max_queued.min(capacity / 2).max(1)
    }

    /// The backlog below which waiting publishers go on: half the high-water mark.
    pub fn low_water(&self) -> usize {
        (self.high_water() / 2).max(1)
    }

    fn count_drop(&self, outcome: Option<Enqueued<SharedMessage>>) {
        if let Some(Enqueued::Dropped(_)) = outcome {
            self.count_dropped(1);
        }
    }

    fn count_dropped(&self, n: usize) {
        if n > 0 {
            self.counters.messages_dropped.fetch_add(n as u64, Ordering::Relaxed);
            metrics::counter!(m::QUEUE_DROPS).increment(n as u64);
        }
    }

    fn send(link: &ConnLink, d: Delivery, counters: &Counters) {
        match link.send(d) {
            Ok(()) => {}
            // Only QoS 0 is ever refused for room, and the protocol lets it be dropped.
            Err(Refused::Full(_)) => {
                counters.messages_dropped.fetch_add(1, Ordering::Relaxed);
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
        self.subscribe_in(&mut self.lock(), session, raw_filter, options, now_ms)
    }

    fn subscribe_in(
        &self,
        st: &mut State,
        session: &str,
        raw_filter: &str,
        options: SubOptions,
        now_ms: u64,
    ) -> Result<(), SubscribeError> {
        let parsed = parse_subscription(raw_filter, &self.cfg.topic).map_err(SubscribeError::Topic)?;
        let State { live, subs, shared, retained, .. } = st;
        let live = live.get_mut(session).ok_or(SubscribeError::NoSession)?;
        let existed = live.session.subscriptions().any(|(f, _)| f == raw_filter);
        if !existed && live.session.subscription_count() >= self.cfg.max_subscriptions {
            return Err(SubscribeError::QuotaExceeded);
        }
        live.session.subscribe(raw_filter, options.clone());
        if let Some(group) = parsed.share_group {
            shared.insert(parsed.filter, (live.key, group.into()), options);
            // Shared subscriptions never get retained messages (v5 §4.8.2).
            return Ok(());
        }
        subs.insert(parsed.filter, live.key, options.clone());
        let send_retained = match options.retain_handling {
            RetainHandling::AtSubscribe => true,
            RetainHandling::AtSubscribeIfNew => !existed,
            RetainHandling::Never => false,
        };
        if send_retained {
            for msg in retained.matching(parsed.filter, now_ms) {
                let qos = msg.qos.min(options.qos);
                let ids = options.subscription_id.into_iter().collect();
                match live.session.enqueue(Outgoing::new(msg, qos, true, ids)) {
                    Enqueued::Send(d) => Self::send(&live.link, d, &self.counters),
                    other => self.count_drop(Some(other)),
                }
            }
            live.link.set_session_backlog(live.session.backlog());
        }
        Ok(())
    }

    /// Relations of `users` in `enterprise` changed: re-check their live sessions' subscriptions
    /// against the ACL (dropping what it no longer allows) and add the auto-subscriptions it now
    /// gives. Parked sessions are re-checked when they reconnect.
    /// `users` `None` means every user of the enterprise (its ACL tables changed).
    pub fn reauthorize(&self, authz: &Authorizer, enterprise: &str, users: Option<&[&str]>, now_ms: u64) {
        let mut st = self.lock();
        let affected: Vec<(Arc<str>, Arc<Identity>, Arc<str>)> = st
            .live
            .iter()
            .filter(|(_, l)| {
                l.identity.via_token
                    && l.identity.enterprise == enterprise
                    && users.is_none_or(|u| u.contains(&l.identity.username.as_str()))
            })
            .map(|(session, l)| (session.clone(), l.identity.clone(), l.client_id.clone()))
            .collect();
        for (session, who, cid) in affected {
            let revoked: Vec<String> = st.live.get(&session).map_or_else(Vec::new, |l| {
                l.session
                    .subscriptions()
                    .map(|(f, _)| f)
                    .filter(|f| {
                        let filter = parse_subscription(f, &self.cfg.topic).map_or(*f, |p| p.filter);
                        !authz.can_subscribe(&who, &cid, filter)
                    })
                    .map(str::to_owned)
                    .collect()
            });
            for f in revoked {
                self.unsubscribe_in(&mut st, &session, &f);
                metrics::counter!(m::SUBSCRIPTIONS_REVOKED).increment(1);
            }
            for (filter, qos) in authz.auto_subscriptions(&who, &cid) {
                let known = st.live.get(&session).is_some_and(|l| l.session.subscriptions().any(|(f, _)| f == filter));
                if !known {
                    let options = SubOptions { qos, ..SubOptions::default() };
                    let _ = self.subscribe_in(&mut st, &session, &filter, options, now_ms);
                }
            }
        }
    }

    /// An UNSUBSCRIBE entry; returns whether the subscription existed.
    pub fn unsubscribe(&self, session: &str, raw_filter: &str) -> bool {
        self.unsubscribe_in(&mut self.lock(), session, raw_filter)
    }

    fn unsubscribe_in(&self, st: &mut State, session: &str, raw_filter: &str) -> bool {
        let State { live, subs, shared, .. } = st;
        let Some(live) = live.get_mut(session) else {
            return false;
        };
        if live.session.unsubscribe(raw_filter).is_none() {
            return false;
        }
        remove_from_tries(subs, shared, live.key, raw_filter, &self.cfg.topic);
        true
    }

    /// PUBACK or PUBCOMP for an outbound message: frees window space.
    pub fn complete(&self, session: &str, link_id: u64, packet_id: NonZeroU16, now_ms: u64) {
        let mut st = self.lock();
        let Some(live) = st.live.get_mut(session).filter(|l| l.link.id == link_id) else {
            return;
        };
        self.counters.messages_sent.fetch_add(1, Ordering::Relaxed);
        for d in live.session.complete(packet_id, now_ms) {
            Self::send(&live.link, d, &self.counters);
        }
        live.link.set_session_backlog(live.session.backlog());
    }

    /// PUBREC for an outbound QoS 2 message.
    pub fn received(&self, session: &str, packet_id: NonZeroU16) {
        if let Some(live) = self.lock().live.get_mut(session) {
            live.session.received(packet_id);
        }
    }

    /// Inbound QoS 2: false if `packet_id` is a duplicate of an unreleased PUBLISH.
    pub fn incoming_qos2(&self, session: &str, packet_id: u16) -> bool {
        self.lock().live.get_mut(session).is_none_or(|l| l.session.incoming_qos2(packet_id))
    }

    /// Inbound PUBREL; returns whether `packet_id` was awaiting release in the session.
    pub fn incoming_released(&self, session: &str, packet_id: u16) -> bool {
        self.lock().live.get_mut(session).is_some_and(|l| l.session.incoming_released(packet_id))
    }

    /// Counts a QoS 0 delivery written to a socket.
    pub fn sent_qos0(&self) {
        self.counters.messages_sent.fetch_add(1, Ordering::Relaxed);
    }

    /// Closes the live connections of a token user whose token was issued before `before_ms`
    /// (v5 0x98); returns how many.
    /// Only connections of the login `session` when it is not empty.
    pub fn close_user(&self, enterprise: &str, user_id: &str, session: &str, before_ms: i64) -> usize {
        let st = self.lock();
        let mut closed = 0;
        for live in st.live.values() {
            let who = &live.identity;
            let in_session = session.is_empty() || who.session_id == session;
            if who.via_token
                && who.enterprise == enterprise
                && who.user_id == user_id
                && in_session
                && who.issued_at_ms < before_ms
            {
                live.link.close(CloseReason::Revoked);
                closed += 1;
            }
        }
        closed
    }

    /// Whether the server is stopping: new connections are refused.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Asks every live connection to close (server shutdown), and every one still to come.
    pub fn close_all(&self, reason: CloseReason) {
        self.closing.store(true, Ordering::SeqCst);
        for live in self.lock().live.values() {
            live.link.close(reason);
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        let st = self.lock();
        Snapshot {
            clients_connected: st.live.len(),
            sessions: st.live.len() + st.store.len(),
            subscriptions: st.subs.len() + st.shared.len(),
            retained: st.retained.len(),
            messages_received: self.counters.messages_received.load(Ordering::Relaxed),
            messages_sent: self.counters.messages_sent.load(Ordering::Relaxed),
            messages_dropped: self.counters.messages_dropped.load(Ordering::Relaxed),
        }
    }
}

/// A retained presence update.
fn presence_message(topic: &str, news: Announce) -> SharedMessage {
    let status: &'static str = match news {
        Announce::Online => "online",
        Announce::Offline => "offline",
    };
    let msg = Message::new(ByteString::from(topic), Bytes::from_static(status.as_bytes()), QoS::AtLeastOnce, true);
    Arc::new(msg)
}

/// Why a SUBSCRIBE entry was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    #[error("{0}")]
    Topic(TopicError),
    /// The ACL does not let this client read the filter.
    #[error("the ACL does not allow subscribing to it")]
    NotAuthorized,
    #[error("too many subscriptions for this client")]
    QuotaExceeded,
    #[error("no session")]
    NoSession,
}
