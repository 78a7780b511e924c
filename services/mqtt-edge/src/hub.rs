//! The edge's shared routing state: sessions by client id, the subscription tries, retained
//! messages, and a link to each live connection.
//!
//! All ntex workers share one `Hub`. Its methods are synchronous and short; they decide with the
//! broker core and hand deliveries to connections through bounded channels, so a connection's
//! socket is only ever written by the worker that owns it.

use std::collections::HashMap;
use std::num::NonZeroU16;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use broker::retained::RetainedStore;
use broker::route::RoutePlan;
use broker::session::{Enqueued, Outgoing, Session, SessionLimits};
use broker::topic::{TopicError, TopicLimits, parse_subscription};
use broker::trie::SubscriptionTrie;
use broker::{RetainHandling, SubOptions};

use crate::link::{self, ConnInbox, ConnLink, Refused};
use crate::message::SharedMessage;
use crate::metrics as m;

pub type Delivery = Outgoing<SharedMessage>;

/// Why the edge closes a connection on its own initiative.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Another connection took over the client id (v5 0x8E).
    SessionTakenOver,
    /// The server is stopping (v5 0x8B).
    ServerShuttingDown,
    /// The connection did not keep up with its deliveries (v5 0x97 quota exceeded).
    SlowConsumer,
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
    pub client_id: Arc<str>,
    pub clean_start: bool,
    /// Seconds the session outlives the connection: 0 = ends with it, `u32::MAX` = never expires.
    pub session_expiry_secs: u32,
    /// The client's receive maximum (v5) or 65 535 (v3).
    pub receive_maximum: u16,
    pub will: Option<Will>,
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
}

#[derive(Debug)]
struct Slot {
    id: u64,
    session: Session<SharedMessage>,
    link: Option<ConnLink>,
    expiry_secs: u32,
    offline_since_ms: u64,
    will: Option<Will>,
    /// A will waiting for its delay to pass (v5 will-delay).
    pending_will: Option<(u64, SharedMessage)>,
}

#[derive(Debug, Default)]
struct State {
    sessions: HashMap<Arc<str>, Slot>,
    client_of: HashMap<u64, Arc<str>>,
    subs: SubscriptionTrie<u64, SubOptions>,
    shared: SubscriptionTrie<(u64, Arc<str>), SubOptions>,
    retained: RetainedStore<SharedMessage>,
    next_id: u64,
    round_robin: usize,
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

#[derive(Debug)]
pub struct Hub {
    state: Mutex<State>,
    cfg: HubConfig,
    pub counters: Counters,
}

impl Hub {
    pub fn new(cfg: HubConfig) -> Self {
        Hub { state: Mutex::new(State::default()), cfg, counters: Counters::default() }
    }

    pub fn config(&self) -> &HubConfig {
        &self.cfg
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug; the state is still consistent enough
        // to keep serving other clients, so poisoning is not propagated.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A CONNECT was accepted: take over or create the session, link the connection.
    pub fn connect(&self, req: ConnectRequest, now_ms: u64) -> Connected {
        let mut st = self.lock();
        st.next_id += 1;
        let link_id = st.next_id;
        let (link, inbox) =
            link::link(link_id, usize::from(self.cfg.session.max_inflight) + self.cfg.max_pending_deliveries);

        let mut session_present = false;
        let mut takeover_will = None;
        if let Some(slot) = st.sessions.get_mut(&req.client_id)
            && let Some(old) = slot.link.take()
        {
            old.close(CloseReason::SessionTakenOver);
            metrics::counter!(m::TAKEOVERS).increment(1);
            metrics::gauge!(m::CONNECTIONS).decrement(1.0);
            // The old connection ended abnormally: its will goes out unless delayed, in which
            // case the new connection cancels it (v5 §3.1.3.2.2).
            takeover_will = slot.will.take().filter(|w| w.delay_secs == 0);
        }
        if let Some(will) = takeover_will {
            self.route(&mut st, will.message, None, now_ms);
        }
        let slot = st.sessions.get_mut(&req.client_id);
        let resume = match slot {
            Some(slot) if !req.clean_start => {
                slot.pending_will = None;
                session_present = true;
                true
            }
            Some(_) => false,
            None => false,
        };
        if !resume {
            if let Some(old) = st.sessions.remove(&req.client_id) {
                Self::drop_subscriptions(&mut st, &old);
                if let Some((_, msg)) = old.pending_will {
                    self.route(&mut st, msg, None, now_ms);
                }
            }
            st.next_id += 1;
            let id = st.next_id;
            st.client_of.insert(id, req.client_id.clone());
            st.sessions.insert(
                req.client_id.clone(),
                Slot {
                    id,
                    session: Session::new(self.cfg.session),
                    link: None,
                    expiry_secs: 0,
                    offline_since_ms: now_ms,
                    will: None,
                    pending_will: None,
                },
            );
        }
        let slot = st.sessions.get_mut(&req.client_id).expect("session inserted above");
        slot.expiry_secs = req.session_expiry_secs;
        slot.will = req.will;
        let resend = slot.session.resume(req.receive_maximum, now_ms);
        for d in resend {
            Self::send(&link, d, &self.counters);
        }
        slot.link = Some(link);
        metrics::gauge!(m::CONNECTIONS).increment(1.0);
        Connected { session_present, link_id, inbox }
    }

    /// The connection `link_id` of `client_id` is gone. `graceful` means a DISCONNECT packet
    /// without "send will" arrived, so the will is discarded. `expiry_secs` is the session
    /// expiry the v5 DISCONNECT may have changed.
    pub fn disconnect(&self, client_id: &str, link_id: u64, graceful: bool, expiry_secs: Option<u32>, now_ms: u64) {
        let mut st = self.lock();
        let Some(slot) = st.sessions.get_mut(client_id) else {
            return;
        };
        if slot.link.as_ref().map(|l| l.id) != Some(link_id) {
            // Taken over: the new connection owns the session now.
            return;
        }
        metrics::gauge!(m::CONNECTIONS).decrement(1.0);
        slot.link = None;
        slot.session.go_offline();
        slot.offline_since_ms = now_ms;
        if let Some(e) = expiry_secs {
            slot.expiry_secs = e;
        }
        let will = slot.will.take().filter(|_| !graceful);
        let ends_now = slot.expiry_secs == 0;
        let mut publish_now = None;
        if let Some(will) = will {
            if will.delay_secs == 0 || ends_now {
                publish_now = Some(will.message);
            } else {
                let delay = will.delay_secs.min(slot.expiry_secs);
                slot.pending_will = Some((now_ms + u64::from(delay) * 1000, will.message));
            }
        }
        if ends_now && let Some(old) = st.sessions.remove(client_id) {
            Self::drop_subscriptions(&mut st, &old);
        }
        if let Some(msg) = publish_now {
            self.route(&mut st, msg, None, now_ms);
        }
    }

    /// Expires sessions and sends delayed wills whose time has come.
    pub fn tick(&self, now_ms: u64) {
        let mut st = self.lock();
        let mut due_wills = Vec::new();
        let mut expired = Vec::new();
        for (cid, slot) in st.sessions.iter_mut() {
            if slot.link.is_some() {
                continue;
            }
            if let Some((at, _)) = &slot.pending_will
                && *at <= now_ms
                && let Some((_, msg)) = slot.pending_will.take()
            {
                due_wills.push(msg);
            }
            let expiry_ms = u64::from(slot.expiry_secs) * 1000;
            if slot.expiry_secs != u32::MAX && now_ms >= slot.offline_since_ms.saturating_add(expiry_ms) {
                expired.push(cid.clone());
            }
        }
        for cid in expired {
            if let Some(old) = st.sessions.remove(&cid) {
                Self::drop_subscriptions(&mut st, &old);
                if let Some((_, msg)) = old.pending_will {
                    due_wills.push(msg);
                }
                metrics::counter!(m::SESSIONS_EXPIRED).increment(1);
            }
        }
        for msg in due_wills {
            self.route(&mut st, msg, None, now_ms);
        }
    }

    /// Routes a message published by `from` (a client id) or by the system (`None`).
    /// Returns the number of sessions it was handed to.
    pub fn publish(&self, msg: SharedMessage, from: Option<&str>, now_ms: u64) -> usize {
        let mut st = self.lock();
        let publisher = from.and_then(|c| st.sessions.get(c)).map(|s| s.id);
        if from.is_some() {
            self.counters.messages_received.fetch_add(1, Ordering::Relaxed);
        }
        self.route(&mut st, msg, publisher, now_ms)
    }

    fn route(&self, st: &mut State, msg: SharedMessage, publisher: Option<u64>, now_ms: u64) -> usize {
        if msg.retain {
            let keep = (!msg.payload.is_empty()).then(|| msg.clone());
            st.retained.set(&msg.topic, keep);
        }
        let mut plan = RoutePlan::new(publisher, msg.qos, msg.retain);
        st.subs.for_each_match(&msg.topic, |sid, opts| plan.add(sid, opts));
        st.shared.for_each_match(&msg.topic, |(sid, group), opts| plan.add_shared(group, sid, opts));
        let mut rr = st.round_robin;
        let deliveries = plan.finish(|n| {
            rr = rr.wrapping_add(1);
            rr % n
        });
        st.round_robin = rr;
        let count = deliveries.len();
        for (sid, d) in deliveries {
            let Some(cid) = st.client_of.get(&sid).cloned() else {
                continue;
            };
            let Some(slot) = st.sessions.get_mut(&cid) else {
                continue;
            };
            let out = Outgoing::new(msg.clone(), d.qos, d.retain, d.subscription_ids);
            self.hand_over(slot, out, now_ms);
        }
        count
    }

    fn hand_over(&self, slot: &mut Slot, out: Delivery, now_ms: u64) {
        if out.msg.expires_at_ms.is_some_and(|at| now_ms >= at) {
            return;
        }
        match slot.session.enqueue(out) {
            Enqueued::Send(d) => {
                if let Some(link) = &slot.link {
                    Self::send(link, d, &self.counters);
                }
            }
            Enqueued::Queued => {}
            Enqueued::Dropped(_) => {
                self.counters.messages_dropped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(m::QUEUE_DROPS).increment(1);
            }
        }
    }

    fn send(link: &ConnLink, d: Delivery, counters: &Counters) {
        match link.send(d) {
            Ok(()) => {}
            Err(Refused::Full(d)) => {
                // QoS 1/2 deliveries stay in the session's in-flight window and are resent on
                // reconnect; only QoS 0 is lost, as the protocol allows.
                if d.packet_id.is_none() {
                    counters.messages_dropped.fetch_add(1, Ordering::Relaxed);
                }
                metrics::counter!(m::SLOW_CONSUMER_DISCONNECTS).increment(1);
            }
            Err(Refused::Closed(_)) => {}
        }
    }

    /// A SUBSCRIBE entry. Returns the granted options or why it was refused; retained messages
    /// that match are handed to the connection.
    pub fn subscribe(
        &self,
        client_id: &str,
        raw_filter: &str,
        options: SubOptions,
        now_ms: u64,
    ) -> Result<(), SubscribeError> {
        let mut st = self.lock();
        let parsed = parse_subscription(raw_filter, &self.cfg.topic).map_err(SubscribeError::Topic)?;
        let st = &mut *st;
        let slot = st.sessions.get_mut(client_id).ok_or(SubscribeError::NoSession)?;
        let existed = slot.session.subscriptions().any(|(f, _)| f == raw_filter);
        if !existed && slot.session.subscription_count() >= self.cfg.max_subscriptions {
            return Err(SubscribeError::QuotaExceeded);
        }
        slot.session.subscribe(raw_filter, options.clone());
        match parsed.share_group {
            Some(group) => {
                st.shared.insert(parsed.filter, (slot.id, group.into()), options);
                // Shared subscriptions never get retained messages (v5 §4.8.2).
                return Ok(());
            }
            None => {
                st.subs.insert(parsed.filter, slot.id, options.clone());
            }
        }
        let send_retained = match options.retain_handling {
            RetainHandling::AtSubscribe => true,
            RetainHandling::AtSubscribeIfNew => !existed,
            RetainHandling::Never => false,
        };
        if send_retained {
            for msg in st.retained.matching(parsed.filter, now_ms) {
                let qos = msg.qos.min(options.qos);
                let ids = options.subscription_id.into_iter().collect();
                self.hand_over(slot, Outgoing::new(msg, qos, true, ids), now_ms);
            }
        }
        Ok(())
    }

    /// An UNSUBSCRIBE entry; returns whether the subscription existed.
    pub fn unsubscribe(&self, client_id: &str, raw_filter: &str) -> bool {
        let mut st = self.lock();
        let st = &mut *st;
        let Some(slot) = st.sessions.get_mut(client_id) else {
            return false;
        };
        if slot.session.unsubscribe(raw_filter).is_none() {
            return false;
        }
        Self::remove_from_tries(&mut st.subs, &mut st.shared, slot.id, raw_filter, &self.cfg.topic);
        true
    }

    fn remove_from_tries(
        subs: &mut SubscriptionTrie<u64, SubOptions>,
        shared: &mut SubscriptionTrie<(u64, Arc<str>), SubOptions>,
        id: u64,
        raw_filter: &str,
        limits: &TopicLimits,
    ) {
        if let Ok(p) = parse_subscription(raw_filter, limits) {
            match p.share_group {
                Some(g) => {
                    shared.remove(p.filter, &(id, g.into()));
                }
                None => {
                    subs.remove(p.filter, &id);
                }
            }
        }
    }

    fn drop_subscriptions(st: &mut State, slot: &Slot) {
        for (f, _) in slot.session.subscriptions() {
            Self::remove_from_tries(&mut st.subs, &mut st.shared, slot.id, f, &TopicLimits::default());
        }
        st.client_of.remove(&slot.id);
    }

    /// PUBACK or PUBCOMP for an outbound message: frees window space.
    pub fn complete(&self, client_id: &str, link_id: u64, packet_id: NonZeroU16, now_ms: u64) {
        let mut st = self.lock();
        let Some(slot) = st.sessions.get_mut(client_id) else {
            return;
        };
        let next = slot.session.complete(packet_id, now_ms);
        self.counters.messages_sent.fetch_add(1, Ordering::Relaxed);
        if let Some(link) = slot.link.as_ref().filter(|l| l.id == link_id) {
            for d in next {
                Self::send(link, d, &self.counters);
            }
        }
    }

    /// PUBREC for an outbound QoS 2 message.
    pub fn received(&self, client_id: &str, packet_id: NonZeroU16) {
        if let Some(slot) = self.lock().sessions.get_mut(client_id) {
            slot.session.received(packet_id);
        }
    }

    /// Inbound QoS 2: false if `packet_id` is a duplicate of an unreleased PUBLISH.
    pub fn incoming_qos2(&self, client_id: &str, packet_id: u16) -> bool {
        self.lock().sessions.get_mut(client_id).is_none_or(|s| s.session.incoming_qos2(packet_id))
    }

    /// Inbound PUBREL; returns whether `packet_id` was awaiting release in the session.
    pub fn incoming_released(&self, client_id: &str, packet_id: u16) -> bool {
        self.lock().sessions.get_mut(client_id).is_some_and(|s| s.session.incoming_released(packet_id))
    }

    /// Counts a QoS 0 delivery written to a socket.
    pub fn sent_qos0(&self) {
        self.counters.messages_sent.fetch_add(1, Ordering::Relaxed);
    }

    /// Asks every live connection to close (server shutdown).
    pub fn close_all(&self, reason: CloseReason) {
        for slot in self.lock().sessions.values() {
            if let Some(l) = &slot.link {
                l.close(reason);
            }
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        let st = self.lock();
        Snapshot {
            clients_connected: st.sessions.values().filter(|s| s.link.is_some()).count(),
            sessions: st.sessions.len(),
            subscriptions: st.subs.len() + st.shared.len(),
            retained: st.retained.len(),
            messages_received: self.counters.messages_received.load(Ordering::Relaxed),
            messages_sent: self.counters.messages_sent.load(Ordering::Relaxed),
            messages_dropped: self.counters.messages_dropped.load(Ordering::Relaxed),
        }
    }
}

/// Why a SUBSCRIBE entry was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeError {
    Topic(TopicError),
    QuotaExceeded,
    NoSession,
}
