//! Subscriptions: SUBSCRIBE with retained messages, UNSUBSCRIBE, and re-authorization when an
//! owner's relations or their enterprise's ACL tables change.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Authorize, Effect, Effects, Routable, Router, SubscribeError, push_enqueued};
use crate::session::{Outgoing, Session};
use crate::topic::{match_filter, parse_subscription};
use crate::{RetainHandling, SubOptions};

impl<M: Routable + Clone + Send + 'static, O: Clone> Router<M, O> {
    /// A SUBSCRIBE entry of the live session `session`; retained messages that match go to its
    /// connection.
    pub fn subscribe(
        &mut self,
        session: &str,
        raw_filter: &str,
        options: SubOptions,
        now_ms: u64,
        fx: &mut Effects<M, O>,
    ) -> Result<(), SubscribeError> {
        let parsed = parse_subscription(raw_filter, &self.cfg.topic).map_err(SubscribeError::Topic)?;
        let live = self.live.get_mut(session).ok_or(SubscribeError::NoSession)?;
        let since = live.session.subscriptions().find(|(f, _)| *f == raw_filter).map(|(_, o)| o.since_ms);
        let existed = since.is_some();
        if !existed && !options.auto && live.session.subscription_count() >= self.cfg.max_subscriptions {
            return Err(SubscribeError::QuotaExceeded);
        }
        // A subscription replaced keeps its age: it never stopped.
        let options = SubOptions { since_ms: since.unwrap_or(now_ms), ..options };
        live.session.subscribe(raw_filter, options.clone());
        let (key, link) = (live.key, live.link);
        self.add_to_tries(key, raw_filter, options.clone(), fx);
        if parsed.share_group.is_some() {
            // Shared subscriptions never get retained messages (v5 §4.8.2).
            self.journal_live(session, true, fx);
            return Ok(());
        }
        let live = self.live.get_mut(session).ok_or(SubscribeError::NoSession)?;
        let send_retained = match options.retain_handling {
            RetainHandling::AtSubscribe => true,
            RetainHandling::AtSubscribeIfNew => !existed,
            RetainHandling::Never => false,
        };
        if send_retained {
            for msg in self.retained.matching(parsed.filter, now_ms) {
                let qos = msg.qos().min(options.qos);
                let ids = options.subscription_id.into_iter().collect();
                push_enqueued(fx, session, link, live.session.enqueue(Outgoing::new(msg, qos, true, ids)));
            }
            fx.push(Effect::Backlog(link, live.session.backlog()));
        }
        self.journal_live(session, true, fx);
        Ok(())
    }

    /// An UNSUBSCRIBE entry; returns whether the subscription existed.
    pub fn unsubscribe(&mut self, session: &str, raw_filter: &str, fx: &mut Effects<M, O>) -> bool {
        let Some(live) = self.live.get_mut(session) else {
            return false;
        };
        if live.session.unsubscribe(raw_filter).is_none() {
            return false;
        }
        let key = live.key;
        self.remove_from_tries(key, raw_filter, fx);
        self.journal_live(session, true, fx);
        true
    }

    /// The relations or ACL tables of the owners `select` picks changed: re-check their live
    /// sessions' subscriptions (dropping what the ACL no longer allows) and add the
    /// auto-subscriptions it now gives. Parked sessions are re-checked when they are resumed
    /// ([`Router::recheck_resumed`]).
    pub fn reauthorize(
        &mut self,
        auth: &dyn Authorize<O>,
        select: impl Fn(&O) -> bool,
        now_ms: u64,
        fx: &mut Effects<M, O>,
    ) {
        let affected: Vec<(Arc<str>, O, Arc<str>)> = self
            .live
            .iter()
            .filter(|(_, l)| select(&l.owner))
            .map(|(session, l)| (session.clone(), l.owner.clone(), l.client_id.clone()))
            .collect();
        for (session, who, cid) in affected {
            let revoked =
                self.live.get(&session).map_or_else(Vec::new, |l| self.not_allowed(&l.session, (&who, &cid), auth));
            for f in revoked {
                self.unsubscribe(&session, &f, fx);
                fx.push(Effect::SubscriptionRevoked);
            }
            for (filter, qos) in auth.auto_subscriptions(&who, &cid) {
                let known =
                    self.live.get(&session).is_some_and(|l| l.session.subscriptions().any(|(f, _)| f == filter));
                if !known {
                    let options = SubOptions { qos, auto: true, ..SubOptions::default() };
                    let _ = self.subscribe(&session, &filter, options, now_ms, fx);
                }
            }
        }
    }

    /// `session` (routable under `key`) is resumed by `owner`: its subscriptions are checked
    /// again, for the ACL may have changed while it was parked, here or on another node (a
    /// parked session is not re-checked when it does). Those no longer allowed go, and with
    /// them what waits in the session that none of those it keeps would have given it: its
    /// owner may no longer read it. What is in flight stays (the client had it).
    pub(super) fn recheck_resumed(
        &mut self,
        key: u64,
        session: &mut Session<M>,
        (owner, client_id): (&O, &str),
        auth: &dyn Authorize<O>,
        fx: &mut Effects<M, O>,
    ) {
        let revoked = self.not_allowed(session, (owner, client_id), auth);
        if revoked.is_empty() {
            return;
        }
        for raw in &revoked {
            session.unsubscribe(raw);
            self.remove_from_tries(key, raw, fx);
            fx.push(Effect::SubscriptionRevoked);
        }
        let limits = &self.cfg.topic;
        let kept: Vec<String> = session.subscriptions().map(|(raw, _)| match_filter(raw, limits).to_owned()).collect();
        session.forget_waiting(|o| !kept.iter().any(|f| crate::topic::matches(f, o.msg.topic())));
    }

    /// The subscriptions of `session` the ACL no longer lets `owner` hold (a shared one is
    /// checked on its filter).
    fn not_allowed(
        &self,
        session: &Session<M>,
        (owner, client_id): (&O, &str),
        auth: &dyn Authorize<O>,
    ) -> Vec<String> {
        let allowed = |raw: &str| auth.can_subscribe(owner, client_id, match_filter(raw, &self.cfg.topic));
        session.subscriptions().map(|(raw, _)| raw).filter(|raw| !allowed(raw)).map(str::to_owned).collect()
    }

    /// Makes the session `key`'s subscription to `raw_filter` routable.
    pub(super) fn add_to_tries(&mut self, key: u64, raw_filter: &str, options: SubOptions, fx: &mut Effects<M, O>) {
        let Ok(p) = parse_subscription(raw_filter, &self.cfg.topic) else {
            return;
        };
        // A shared subscription is its whole filter (`$share/{group}/{filter}`): one group per
        // share name and filter, reported apart so other nodes can share it with this one.
        let (added, interest) = match p.share_group {
            Some(_) => (self.shared.insert(p.filter, (key, raw_filter.into()), options).is_none(), raw_filter),
            None => (self.subs.insert(p.filter, key, options).is_none(), p.filter),
        };
        if added {
            count_interest(&mut self.interest, interest, true, fx);
        }
    }

    pub(super) fn remove_from_tries(&mut self, key: u64, raw_filter: &str, fx: &mut Effects<M, O>) {
        let Ok(p) = parse_subscription(raw_filter, &self.cfg.topic) else {
            return;
        };
        let (removed, interest) = match p.share_group {
            Some(_) => (self.shared.remove(p.filter, &(key, raw_filter.into())).is_some(), raw_filter),
            None => (self.subs.remove(p.filter, &key).is_some(), p.filter),
        };
        if removed {
            count_interest(&mut self.interest, interest, false, fx);
        }
    }
}

/// One subscription more (`added`) or less to `filter`; the first and the last are reported.
fn count_interest<M, O>(counts: &mut HashMap<String, usize>, filter: &str, added: bool, fx: &mut Effects<M, O>) {
    if added {
        let n = counts.entry(filter.to_owned()).or_default();
        *n += 1;
        if *n == 1 {
            fx.push(Effect::Interest { filter: filter.to_owned(), held: true });
        }
    } else if let Some(n) = counts.get_mut(filter) {
        *n -= 1;
        if *n == 0 {
            counts.remove(filter);
            fx.push(Effect::Interest { filter: filter.to_owned(), held: false });
        }
    }
}
