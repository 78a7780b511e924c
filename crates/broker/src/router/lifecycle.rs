//! A session's life: CONNECT (take over, resume or start), disconnect (park or end), expiry,
//! wills and presence.

use std::sync::Arc;

use super::{
    Authorize, CloseReason, ConnectRequest, Connected, Disconnect, Effect, Effects, LinkId, Live, LostWill,
    PendingWill, Persist, Routable, Router, Will, journal,
};
use crate::session::{Change, Session, SessionSnapshot};
use crate::store::Parked;

impl<M: Routable + Clone + Send + 'static, O: Clone> Router<M, O> {
    /// A CONNECT was accepted: take over a live session of the same key or resume a parked one
    /// (unless clean start), and resend what is in flight. The new connection's id is in the
    /// answer; the edge links it before applying the effects.
    pub fn connect(
        &mut self,
        mut req: ConnectRequest<M, O>,
        auth: &dyn Authorize<O>,
        now_ms: u64,
        fx: &mut Effects<M, O>,
    ) -> Connected {
        let link = self.next_id();
        let mut takeover_will = None;
        let mut replaced_presence = None;
        let previous = match self.live.remove(&req.session) {
            Some(old) => {
                // Same session key, so the same owner: nobody else can get here.
                fx.push(Effect::TakenOver {
                    link: old.link,
                    client_id: req.client_id.clone(),
                    old: old.owner.clone(),
                    new: req.owner.clone(),
                });
                // A takeover is not a device leaving: no offline presence in between.
                replaced_presence = old.presence;
                // The old connection ended abnormally: its will goes out unless delayed, in
                // which case the new connection cancels it (v5 §3.1.3.2.2).
                takeover_will = old.will.filter(|w| w.delay_secs == 0).map(|w| PendingWill {
                    due_ms: now_ms,
                    message: w.message,
                    owner: old.owner,
                    client_id: old.client_id,
                });
                Some(Parked {
                    session: old.session,
                    key: old.key,
                    expiry_secs: old.expiry_secs,
                    offline_since_ms: now_ms,
                })
            }
            None => self.store.take(&req.session),
        };
        let previous = match (previous, req.resumed.take()) {
            (None, Some(snapshot)) if !req.clean_start => Some(self.adopt(&req.session, snapshot, now_ms, fx)),
            (previous, _) => previous,
        };
        // A delayed will is cancelled by a reconnect to the session, and due at once if the
        // session ends now (clean start).
        let delayed_will = self.pending_wills.remove(&req.session).filter(|_| req.clean_start);
        for will in takeover_will.into_iter().chain(delayed_will) {
            self.send_will(will, auth, now_ms, fx);
        }
        let (key, mut session, session_present) = match previous {
            Some(p) if !req.clean_start => (p.key, p.session, true),
            other => {
                if let Some(p) = other {
                    self.drop_session(p.key, &p.session, fx);
                }
                let key = self.next_id();
                self.client_of.insert(key, req.session.clone());
                (key, Session::new(self.cfg.session), false)
            }
        };
        if session_present {
            self.recheck_resumed(key, &mut session, (&req.owner, &req.client_id), auth, fx);
        }
        for d in session.resume(req.receive_maximum, now_ms) {
            fx.push(Effect::Deliver(link, d));
        }
        let exhausted = session.take_exhausted();
        if !exhausted.is_empty() {
            fx.push(Effect::Dropped { session: req.session.clone(), messages: exhausted, exhausted: true });
        }
        fx.push(Effect::Backlog(link, session.backlog()));
        // The journal holds the session as it is now, or nothing under its key if it ends with
        // its connection.
        fx.push(Effect::Persist { session: req.session.clone(), persist: Persist::Ended });
        session.set_durable(req.session_expiry_secs > 0);
        match req.catch_up.filter(|_| session_present) {
            Some(skip) if session.is_durable() => drop(session.begin_catch_up(skip)),
            // A session that ends with its connection has nothing to catch up on; what it held
            // while it arrived is its own.
            _ if !session.is_durable() => {
                let (deliveries, dropped) = session.end_catch_up(now_ms);
                for d in deliveries {
                    fx.push(Effect::Deliver(link, d));
                }
                fx.push(Effect::Backlog(link, session.backlog()));
                if !dropped.is_empty() {
                    fx.push(Effect::Dropped { session: req.session.clone(), messages: dropped, exhausted: false });
                }
            }
            _ => {}
        }
        let behind =
            (req.hold && session_present && session.is_durable()).then(|| session.hold_for_catch_up()).flatten();
        if session.is_durable() {
            let _ = session.take_changes();
            journal_whole(fx, &req.session, &session, req.session_expiry_secs, false);
        }
        // Count the new device before letting the replaced one go, so a takeover never shows
        // the user offline in between.
        if let Some(topic) = &req.presence {
            self.device_came(topic, now_ms, fx);
        }
        if let Some(topic) = replaced_presence {
            self.device_left(topic, now_ms, fx);
        }
        let live = Live {
            key,
            session,
            link,
            expiry_secs: req.session_expiry_secs,
            will: req.will,
            presence: req.presence,
            owner: req.owner,
            client_id: req.client_id,
        };
        self.live.insert(req.session, live);
        Connected { link, session_present, behind }
    }

    /// A connection is gone (see [`Disconnect`]). The session is parked or ends. False if the
    /// connection no longer held the session (it was taken over).
    pub fn disconnect(
        &mut self,
        gone: Disconnect<'_>,
        auth: &dyn Authorize<O>,
        now_ms: u64,
        fx: &mut Effects<M, O>,
    ) -> bool {
        let Disconnect { session, link, graceful, expiry_secs } = gone;
        if self.live.get(session).is_none_or(|l| l.link != link) {
            return false;
        }
        let Some((key, mut live)) = self.live.remove_entry(session) else {
            return false;
        };
        // What a reading client would have got but now exceeds the offline bound.
        let dropped = live.session.go_offline();
        if !dropped.is_empty() {
            fx.push(Effect::Dropped { session: session.into(), messages: dropped, exhausted: false });
        }
        let expiry = expiry_secs.unwrap_or(live.expiry_secs);
        let will = live.will.take().filter(|_| !graceful);
        let ends_now = expiry == 0;
        if ends_now {
            self.drop_session(live.key, &live.session, fx);
            fx.push(Effect::SessionEnded { session: key.clone(), expired: false });
            fx.push(Effect::Persist { session: key.clone(), persist: Persist::Ended });
        } else {
            if live.session.is_durable() {
                journal(fx, &key, &mut live.session, Some((expiry, true)));
            } else {
                // A v5 DISCONNECT gave the session an expiry its CONNECT did not: keep it whole.
                live.session.set_durable(true);
                journal_whole(fx, &key, &live.session, expiry, true);
            }
            let parked = Parked { session: live.session, key: live.key, expiry_secs: expiry, offline_since_ms: now_ms };
            self.store.park(session, parked);
        }
        if let Some(will) = will {
            let delay = if ends_now { 0 } else { u64::from(will.delay_secs.min(expiry)) };
            let pending = PendingWill {
                due_ms: now_ms + delay * 1000,
                message: will.message,
                owner: live.owner,
                client_id: live.client_id,
            };
            if delay == 0 {
                self.send_will(pending, auth, now_ms, fx);
            } else {
                self.pending_wills.insert(key, pending);
            }
        }
        if let Some(topic) = live.presence.take() {
            self.device_left(topic, now_ms, fx);
        }
        true
    }

    /// Expires parked sessions, sends delayed wills whose time has come and announces presence
    /// changes whose grace is over.
    pub fn tick(&mut self, auth: &dyn Authorize<O>, now_ms: u64, fx: &mut Effects<M, O>) {
        let mut due = Vec::new();
        for (session, parked) in self.store.expire(now_ms) {
            self.drop_session(parked.key, &parked.session, fx);
            due.extend(self.pending_wills.remove(session.as_str()));
            let session: Arc<str> = session.into();
            fx.push(Effect::SessionEnded { session: session.clone(), expired: true });
            fx.push(Effect::Persist { session, persist: Persist::Ended });
        }
        let ripe: Vec<Arc<str>> =
            self.pending_wills.iter().filter(|(_, w)| w.due_ms <= now_ms).map(|(s, _)| s.clone()).collect();
        for session in ripe {
            due.extend(self.pending_wills.remove(&session));
        }
        for will in due {
            self.send_will(will, auth, now_ms, fx);
        }
        for (topic, news) in self.presence.tick(now_ms) {
            self.originate(M::presence(&topic, news), now_ms, fx);
        }
    }

    /// Another node's connection starts `session` afresh (clean start), which ends it: a
    /// delayed will of it waiting here is due now, as when its client comes back here with a
    /// clean start (`Router::connect`). Called before [`Router::hand_over`].
    pub fn started_afresh_elsewhere(
        &mut self,
        session: &str,
        auth: &dyn Authorize<O>,
        now_ms: u64,
        fx: &mut Effects<M, O>,
    ) {
        if let Some(will) = self.pending_wills.remove(session) {
            self.send_will(will, auth, now_ms, fx);
        }
    }

    /// Another node's connection claimed `session`: it leaves this router, live (its connection
    /// is closed, v5 0x8E) or parked, and its state goes with it, with its expiry. A will due
    /// now goes out here, a delayed one is dropped (the session continues).
    pub fn hand_over(
        &mut self,
        session: &str,
        auth: &dyn Authorize<O>,
        now_ms: u64,
        fx: &mut Effects<M, O>,
    ) -> Option<(SessionSnapshot<M>, u32)> {
        self.pending_wills.remove(session);
        if let Some(live) = self.live.remove(session) {
            fx.push(Effect::MovedAway { link: live.link, client_id: live.client_id.clone() });
            if let Some(will) = live.will.filter(|w| w.delay_secs == 0) {
                let pending =
                    PendingWill { due_ms: now_ms, message: will.message, owner: live.owner, client_id: live.client_id };
                self.send_will(pending, auth, now_ms, fx);
            }
            if let Some(topic) = live.presence {
                self.device_left(topic, now_ms, fx);
            }
            self.drop_session(live.key, &live.session, fx);
            return Some((live.session.snapshot(), live.expiry_secs));
        }
        let parked = self.store.take(session)?;
        self.drop_session(parked.key, &parked.session, fx);
        Some((parked.session.snapshot(), parked.expiry_secs))
    }

    /// Parks `snapshot` (a session the journal holds, which outlives its connection by
    /// `expiry_secs`) under `session` with its subscriptions routable, as if its client had just
    /// left: what is published from now on is queued for it. With `catch_up`, it catches up on
    /// what was routed to the node that held it since that node died, but what the node named
    /// there published (see [`ConnectRequest::catch_up`]), and holds what comes meanwhile
    /// behind what its replay gives, as a session arriving with its client does
    /// ([`Router::replay_routed_to`],
    /// then [`Router::replay_done`] with [`Router::arrival_id`]). False if the session is here
    /// already.
    pub fn restore_parked(
        &mut self,
        session: &Arc<str>,
        snapshot: SessionSnapshot<M>,
        expiry_secs: u32,
        catch_up: Option<Arc<str>>,
        now_ms: u64,
        fx: &mut Effects<M, O>,
    ) -> bool {
        if self.holds(session) {
            return false;
        }
        let mut parked = self.adopt(session, snapshot, now_ms, fx);
        parked.expiry_secs = expiry_secs;
        if let Some(skip) = catch_up {
            parked.session.begin_catch_up(skip);
            parked.session.hold_for_catch_up();
        }
        // The journal has it as it is: only what changes from now on is written, and its
        // record lives as long as a parked session's (it may have been a live one's).
        parked.session.set_durable(true);
        let subscriptions = parked.session.snapshot_subscriptions();
        let record = Persist::Record { subscriptions, expiry_secs, parked: true };
        fx.push(Effect::Persist { session: session.clone(), persist: record });
        self.store.park(session, parked);
        true
    }

    /// A session another node handed over, parked here under a new key with its subscriptions
    /// routable, about to be resumed.
    fn adopt(
        &mut self,
        session: &Arc<str>,
        snapshot: SessionSnapshot<M>,
        now_ms: u64,
        fx: &mut Effects<M, O>,
    ) -> Parked<M> {
        let key = self.next_id();
        self.client_of.insert(key, session.clone());
        let restored = Session::restore(self.cfg.session, snapshot);
        let filters: Vec<(String, crate::SubOptions)> =
            restored.subscriptions().map(|(f, o)| (f.to_owned(), o.clone())).collect();
        for (filter, options) in filters {
            self.add_to_tries(key, &filter, options, fx);
        }
        Parked { session: restored, key, expiry_secs: 0, offline_since_ms: now_ms }
    }

    /// Closes the live connections whose owner `select` picks (their tokens were revoked, or
    /// the user disabled: v5 0x98); returns how many. Their wills, and the delayed wills of
    /// such owners' connections that ended before, are not sent: a will is a publish in its
    /// owner's name, and they may publish no more (refused: `Effect::WillRefused`).
    pub fn revoke_where(&mut self, select: impl Fn(&O) -> bool, fx: &mut Effects<M, O>) -> usize {
        let refused = |owner: &O, client_id: &Arc<str>, message: &M| Effect::WillRefused {
            owner: owner.clone(),
            client_id: client_id.clone(),
            topic: message.topic().to_owned(),
        };
        let mut closed = 0;
        for live in self.live.values_mut().filter(|l| select(&l.owner)) {
            if let Some(will) = live.will.take() {
                fx.push(refused(&live.owner, &live.client_id, &will.message));
            }
            fx.push(Effect::Close(live.link, CloseReason::Revoked));
            closed += 1;
        }
        self.pending_wills.retain(|_, w| {
            let keep = !select(&w.owner);
            if !keep {
                fx.push(refused(&w.owner, &w.client_id, &w.message));
            }
            keep
        });
        closed
    }

    /// A device of a user connected; the first one makes the user online (after the grace).
    fn device_came(&mut self, topic: &Arc<str>, now_ms: u64, fx: &mut Effects<M, O>) {
        if let Some(shared) = self.shared_presence.as_mut() {
            let devices = shared.entry(topic.clone()).or_default();
            *devices += 1;
            fx.push(Effect::DevicesHere { topic: topic.clone(), devices: *devices });
        } else if let Some(news) = self.presence.connected(topic, now_ms) {
            self.originate(M::presence(topic, news), now_ms, fx);
        }
    }

    /// One device of a user went away; the last one makes the user offline (after the grace).
    fn device_left(&mut self, topic: Arc<str>, now_ms: u64, fx: &mut Effects<M, O>) {
        if let Some(shared) = self.shared_presence.as_mut() {
            let devices = shared.get(&topic).map_or(0, |d| d.saturating_sub(1));
            if devices == 0 {
                shared.remove(&topic);
            } else {
                shared.insert(topic.clone(), devices);
            }
            fx.push(Effect::DevicesHere { topic, devices });
        } else if let Some(news) = self.presence.left(&topic, now_ms) {
            self.originate(M::presence(&topic, news), now_ms, fx);
        }
    }

    /// The will of a connection to `session` that another node had open when it died, or
    /// whose delay it was waiting for (that node's journal kept it): due now if it has no
    /// delay (the connection ended abnormally, whatever came after) or its session ended with
    /// the connection. A delayed one waits here as if its connection had just ended (at most
    /// as long as the session lasts), or until it fell due if it had ended (`due_ms`), unless
    /// the session is live here: its client came back in time [MQTT-3.1.3-9].
    pub fn lost_will(&mut self, lost: LostWill<M, O>, auth: &dyn Authorize<O>, now_ms: u64, fx: &mut Effects<M, O>) {
        let LostWill { session, client_id, owner, will, session_expiry_secs, due_ms } = lost;
        let delay = will.delay_secs.min(session_expiry_secs);
        let ended = due_ms.is_some();
        let due_ms = due_ms.unwrap_or(now_ms + u64::from(delay) * 1000);
        let pending = PendingWill { due_ms, message: will.message, owner, client_id };
        let came_back = self.live.contains_key(&session);
        if (!ended && delay == 0) || (!came_back && due_ms <= now_ms) {
            self.send_will(pending, auth, now_ms, fx);
        } else if !came_back {
            self.pending_wills.insert(session, pending);
        }
    }

    /// The delayed will of `session` waiting here, as this node's journal keeps it for
    /// another node to send should this one die ([`LostWill::due_ms`] set; its delay and
    /// expiry say what is left of its wait at `now_ms`, for a node that reads no `due_ms`).
    pub fn waiting_will(&self, session: &str, now_ms: u64) -> Option<LostWill<M, O>>
    where
        M: Clone,
        O: Clone,
    {
        let (session, w) = self.pending_wills.get_key_value(session)?;
        let left_secs = u32::try_from(w.due_ms.saturating_sub(now_ms).div_ceil(1000)).unwrap_or(u32::MAX);
        Some(LostWill {
            session: session.clone(),
            client_id: w.client_id.clone(),
            owner: w.owner.clone(),
            will: Will { message: w.message.clone(), delay_secs: left_secs },
            session_expiry_secs: left_secs,
            due_ms: Some(w.due_ms),
        })
    }

    /// Whether a delayed will of `session` waits here for its delay.
    pub fn will_waits(&self, session: &str) -> bool {
        self.pending_wills.contains_key(session)
    }

    /// The wills of the connections open here, with their sessions: what this node's journal
    /// keeps for another node to send should this one die.
    pub fn live_wills(&self) -> Vec<(LinkId, LostWill<M, O>)>
    where
        M: Clone,
        O: Clone,
    {
        let lost = |(session, live): (&Arc<str>, &Live<M, O>)| {
            let will = live.will.clone()?;
            let lost = LostWill {
                session: session.clone(),
                client_id: live.client_id.clone(),
                owner: live.owner.clone(),
                will,
                session_expiry_secs: live.expiry_secs,
                due_ms: None,
            };
            Some((live.link, lost))
        };
        self.live.iter().filter_map(lost).collect()
    }

    /// Publishes a will if its owner may still publish to its topic: relations or tables may
    /// have changed since the CONNECT that set it.
    fn send_will(&mut self, will: PendingWill<M, O>, auth: &dyn Authorize<O>, now_ms: u64, fx: &mut Effects<M, O>) {
        let m = &will.message;
        let past_quota = m.retain() && !m.clears_retained() && !self.retained_within_quota(m.topic(), m.payload_len());
        if past_quota || !auth.can_publish(&will.owner, &will.client_id, will.message.topic()) {
            let topic = will.message.topic().to_owned();
            fx.push(Effect::WillRefused { owner: will.owner, client_id: will.client_id, topic });
            return;
        }
        if self.will_streams.is_durable(will.message.topic()) {
            fx.push(Effect::WillForStream(will.message));
            return;
        }
        self.originate(will.message, now_ms, fx);
    }

    /// Routes a will handed out for its stream ([`Effect::WillForStream`]), now stamped with
    /// its place there (or not, if the stream could not store it: a will has no publisher to
    /// refuse, and is better delivered without its place than lost).
    pub fn send_stamped_will(&mut self, message: M, now_ms: u64, fx: &mut Effects<M, O>) {
        self.originate(message, now_ms, fx);
    }

    /// Routes a message of the router's own here, and says so for other edges.
    pub(super) fn originate(&mut self, msg: M, now_ms: u64, fx: &mut Effects<M, O>) {
        fx.push(Effect::Originated(msg.clone()));
        self.route(msg, None, true, now_ms, fx);
    }

    /// Forgets a session that ends: its subscriptions leave the tries.
    fn drop_session(&mut self, key: u64, session: &Session<M>, fx: &mut Effects<M, O>) {
        for (f, _) in session.subscriptions() {
            self.remove_from_tries(key, f, fx);
        }
        self.client_of.remove(&key);
    }
}

/// The whole of a durable session for the journal: its record, then every message it holds.
pub(super) fn journal_whole<M: Routable + Clone, O>(
    fx: &mut Effects<M, O>,
    key: &Arc<str>,
    session: &Session<M>,
    expiry_secs: u32,
    parked: bool,
) {
    let snap = session.snapshot();
    let record = Persist::Record { subscriptions: snap.subscriptions, expiry_secs, parked };
    fx.push(Effect::Persist { session: key.clone(), persist: record });
    let messages = snap.inflight.into_iter().chain(snap.queue.into_iter().map(|o| (o, false)));
    for (out, released) in messages {
        // Not `first`: a journal written whole again may hold the message already (a shared
        // one that lost part of what it held), and only a first arrival may be spared.
        let change = Change::Kept { out, released, first: false };
        fx.push(Effect::Persist { session: key.clone(), persist: Persist::Change(change) });
    }
    for packet_id in snap.incoming_qos2 {
        let change = Change::Inbound(packet_id, true);
        fx.push(Effect::Persist { session: key.clone(), persist: Persist::Change(change) });
    }
    for (stream, cursor) in snap.cursors {
        fx.push(Effect::Persist { session: key.clone(), persist: Persist::Change(Change::Cursor(stream, cursor)) });
    }
}
