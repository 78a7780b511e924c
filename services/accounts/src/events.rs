//! Account events onto the bus (design §2): every change other services must know about is
//! published as a protobuf `AccountEvent` on `hermes.account.<enterprise>`, after it is stored,
//! into the stream edges follow (`Bus::publish_durable`). One the bus did not take is tried
//! again, in order, before any later one: an edge never applies a change before an earlier one.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bus::Bus;
use bytes::Bytes;
use prost::Message as _;
use wire::pb::{self, account_event::Event};

use crate::store::{User, new_id, now_ms};

/// The first wait before events the bus did not take are tried again; it doubles up to
/// [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct Events {
    bus: Arc<dyn Bus>,
    /// Events not published yet, oldest first.
    pending: Arc<tokio::sync::Mutex<VecDeque<Pending>>>,
    /// A task is trying the pending events again.
    retrying: Arc<AtomicBool>,
}

#[derive(Debug)]
struct Pending {
    subject: String,
    body: Bytes,
    kind: &'static str,
}

impl Events {
    pub fn new(bus: Arc<dyn Bus>) -> Self {
        Events { bus, pending: Default::default(), retrying: Default::default() }
    }

    /// Publishes `event` for `enterprise`, kept for edges that are away. The change is already
    /// stored: when the bus does not take the event (NATS unreachable), that is logged and
    /// counted, not reported to the client, and the event is tried again in the background, in
    /// order, until it is published (kept in this process's memory meanwhile). While earlier
    /// ones wait, it only joins them.
    pub async fn emit(&self, enterprise: &str, event: Event) {
        let kind = kind(&event);
        let e = pb::AccountEvent {
            event_id: new_id(),
            timestamp_ms: now_ms(),
            enterprise_id: enterprise.to_owned(),
            event: Some(event),
        };
        let subject = wire::subjects::account_events(enterprise);
        let mut pending = self.pending.lock().await;
        let waiting = !pending.is_empty();
        pending.push_back(Pending { subject, body: e.encode_to_vec().into(), kind });
        metrics::gauge!("hermes_accounts_events_pending").set(pending.len() as f64);
        if waiting {
            return;
        }
        if !self.publish_pending(&mut pending).await && !self.retrying.swap(true, Ordering::AcqRel) {
            tokio::spawn(self.clone().retry());
        }
    }

    /// Publishes pending events, oldest first, until the bus refuses one; `true` once none is
    /// left.
    async fn publish_pending(&self, pending: &mut VecDeque<Pending>) -> bool {
        let (stream, all) = (wire::subjects::ACCOUNT_EVENTS_STREAM, wire::subjects::ALL_ACCOUNT_EVENTS);
        while let Some(p) = pending.front() {
            match self.bus.publish_durable(stream, all, &p.subject, p.body.clone()).await {
                Ok(()) => metrics::counter!("hermes_accounts_events_total", "kind" => p.kind).increment(1),
                Err(err) => {
                    metrics::counter!("hermes_accounts_event_failures_total", "kind" => p.kind).increment(1);
                    tracing::error!(subject = %p.subject, kind = p.kind, error = %err, waiting = pending.len(),
                        "account event not published yet: it is tried again");
                    return false;
                }
            }
            pending.pop_front();
            metrics::gauge!("hermes_accounts_events_pending").set(pending.len() as f64);
        }
        true
    }

    /// Tries the pending events again, waiting longer after each refusal, until none is left.
    async fn retry(self) {
        let mut wait = RETRY_FIRST;
        loop {
            tokio::time::sleep(wait).await;
            let mut pending = self.pending.lock().await;
            if self.publish_pending(&mut pending).await {
                self.retrying.store(false, Ordering::Release);
                return;
            }
            wait = (wait * 2).min(RETRY_MAX);
        }
    }

    pub async fn profile_changed(&self, u: &User, signature_changed: bool) {
        let p = pb::ProfileChanged {
            user_id: u.id.clone(),
            username: u.username.clone(),
            display_name: u.display_name.clone(),
            signature: u.signature.clone(),
            avatar_url: u.avatar_url.clone(),
            org_unit: u.org_unit.clone(),
            signature_changed,
        };
        self.emit(&u.enterprise_id, Event::ProfileChanged(p)).await;
    }

    /// Tokens of `u` issued before `before_ms` are revoked: one login `session`'s, or all (empty).
    pub async fn tokens_revoked(&self, u: &User, session: &str, before_ms: i64) {
        let t = pb::TokenRevoked {
            user_id: u.id.clone(),
            username: u.username.clone(),
            issued_before_ms: before_ms,
            session_id: session.to_owned(),
        };
        self.emit(&u.enterprise_id, Event::TokenRevoked(t)).await;
    }
}

fn kind(e: &Event) -> &'static str {
    match e {
        Event::UserCreated(_) => "user_created",
        Event::UserDisabled(_) => "user_disabled",
        Event::RelationChanged(_) => "relation_changed",
        Event::TokenRevoked(_) => "token_revoked",
        Event::ProfileChanged(_) => "profile_changed",
        Event::AclChanged(_) => "acl_changed",
        Event::GroupMembershipChanged(_) => "group_membership_changed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bus::memory::MemoryBus;
    use bus::{BoxFuture, BusError, Subscription};

    /// The in-process bus, refusing durable publishes while `refusing` is set.
    #[derive(Debug, Default)]
    struct Refusing {
        inner: MemoryBus,
        refusing: AtomicBool,
    }

    impl Bus for Refusing {
        fn publish<'a>(&'a self, subject: &'a str, payload: Bytes) -> BoxFuture<'a, Result<(), BusError>> {
            self.inner.publish(subject, payload)
        }
        fn subscribe<'a>(&'a self, subject: &'a str) -> BoxFuture<'a, Result<Subscription, BusError>> {
            self.inner.subscribe(subject)
        }
        fn subscribe_queue<'a>(
            &'a self,
            subject: &'a str,
            queue: &'a str,
        ) -> BoxFuture<'a, Result<Subscription, BusError>> {
            self.inner.subscribe_queue(subject, queue)
        }
        fn publish_to_present<'a>(&'a self, subject: &'a str, payload: Bytes) -> BoxFuture<'a, Result<(), BusError>> {
            self.inner.publish_to_present(subject, payload)
        }
        fn publish_durable<'a>(
            &'a self,
            stream: &'a str,
            pattern: &'a str,
            subject: &'a str,
            payload: Bytes,
        ) -> BoxFuture<'a, Result<(), BusError>> {
            match self.refusing.load(Ordering::Relaxed) {
                true => Box::pin(async { Err(BusError::Transport("refused".into())) }),
                false => self.inner.publish_durable(stream, pattern, subject, payload),
            }
        }
    }

    #[tokio::test]
    async fn events_the_bus_refused_are_published_later_in_order_before_newer_ones() {
        let bus = Arc::new(Refusing::default());
        let events = Events::new(bus.clone());
        let mut seen = bus.subscribe(wire::subjects::ALL_ACCOUNT_EVENTS).await.expect("subscribe");
        let created = || Event::UserCreated(pb::UserCreated::default());
        bus.refusing.store(true, Ordering::Relaxed);
        for e in ["e1", "e2", "e3"] {
            // Returns at once, though the bus refuses.
            tokio::time::timeout(Duration::from_secs(5), events.emit(e, created())).await.expect("returns");
        }
        let nothing = tokio::time::timeout(Duration::from_millis(300), seen.next()).await;
        assert!(nothing.is_err(), "refused: nothing published yet");
        assert_eq!(events.pending.lock().await.len(), 3);
        bus.refusing.store(false, Ordering::Relaxed);
        events.emit("e4", created()).await;
        for e in ["e1", "e2", "e3", "e4"] {
            let m = tokio::time::timeout(Duration::from_secs(10), seen.next()).await.expect("published").expect("open");
            assert_eq!(m.subject, wire::subjects::account_events(e), "in order");
        }
        assert!(events.pending.lock().await.is_empty());
        assert!(!events.retrying.load(Ordering::Acquire), "the retrying task is done");
        events.emit("e5", created()).await;
        let m = tokio::time::timeout(Duration::from_secs(1), seen.next()).await.expect("at once").expect("open");
        assert_eq!(m.subject, wire::subjects::account_events("e5"));
    }
}
