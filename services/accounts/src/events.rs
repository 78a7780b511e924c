//! Account events onto the bus (design §2): every change other services must know about is
//! published as a protobuf `AccountEvent` on `hermes.account.<enterprise>`, after it is stored,
//! into the stream edges follow (`Bus::publish_durable`). One the bus did not take is tried
//! again, in order, before any later one, and kept in the database meanwhile ([`Outbox`]): an
//! accounts node that dies before NATS takes it leaves it for any node to publish later. Edges
//! take an event late or twice without harm: revocations keep the latest instant, ACL tables
//! their version, and relation changes are read from Redis where edges have it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bus::{BoxFuture, Bus};
use bytes::Bytes;
use prost::Message as _;
use wire::pb::{self, account_event::Event};

use crate::store::{AccountStore, OutboxEvent, User, new_id, now_ms};

/// The first wait before events the bus did not take are tried again; it doubles up to
/// [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// How long one publish may take before it counts as refused: while NATS is away a JetStream
/// publish waits for an answer that does not come, and the events behind it with it.
const PUBLISH_WAIT: Duration = Duration::from_secs(3);

/// How often a node looks for events some node kept and has not published for
/// [`ORPHANED_AFTER`] (it died, or NATS is still away), and how many it takes at a time.
const SWEEP_EVERY: Duration = Duration::from_secs(30);
const ORPHANED_AFTER: Duration = Duration::from_secs(60);
const SWEEP_BATCH: i64 = 100;

/// Where events the bus did not take are kept until it does: the accounts database.
pub trait Outbox: Send + Sync + 'static {
    fn add<'a>(&'a self, subject: &'a str, body: &'a [u8]) -> BoxFuture<'a, Result<i64, String>>;
    fn remove(&self, id: i64) -> BoxFuture<'_, Result<(), String>>;
    fn older_than(&self, before_ms: i64, limit: i64) -> BoxFuture<'_, Result<Vec<OutboxEvent>, String>>;
}

impl<S: AccountStore> Outbox for S {
    fn add<'a>(&'a self, subject: &'a str, body: &'a [u8]) -> BoxFuture<'a, Result<i64, String>> {
        Box::pin(async move { self.outbox_add(subject, body).await.map_err(|e| e.to_string()) })
    }
    fn remove(&self, id: i64) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move { self.outbox_remove(id).await.map_err(|e| e.to_string()) })
    }
    fn older_than(&self, before_ms: i64, limit: i64) -> BoxFuture<'_, Result<Vec<OutboxEvent>, String>> {
        Box::pin(async move { self.outbox_older_than(before_ms, limit).await.map_err(|e| e.to_string()) })
    }
}

#[derive(Clone)]
pub struct Events {
    bus: Arc<dyn Bus>,
    outbox: Option<Arc<dyn Outbox>>,
    /// Events not published yet, oldest first.
    pending: Arc<tokio::sync::Mutex<VecDeque<Pending>>>,
    /// A task is trying the pending events again.
    retrying: Arc<AtomicBool>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").field("bus", &self.bus).finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Pending {
    subject: String,
    body: Bytes,
    kind: &'static str,
    /// Its number in the outbox, once kept there.
    kept: Option<i64>,
}

impl Events {
    /// Events onto `bus`, kept in `outbox` (if any) while the bus does not take them; with an
    /// outbox (and a runtime), a task publishes what any node kept and left for
    /// [`ORPHANED_AFTER`].
    pub fn new(bus: Arc<dyn Bus>, outbox: Option<Arc<dyn Outbox>>) -> Self {
        let events = Events { bus, outbox, pending: Default::default(), retrying: Default::default() };
        if events.outbox.is_some()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(events.clone().sweep_forever());
        }
        events
    }

    /// Publishes `event` for `enterprise`, kept for edges that are away. The change is already
    /// stored: when the bus does not take the event (NATS unreachable), that is logged and
    /// counted, not reported to the client, and the event is kept in the outbox and tried again
    /// in the background, in order, until it is published. While earlier ones wait, it only
    /// joins them. The work is a task of its own: a caller that stops waiting (a request whose
    /// client hung up) leaves no event behind without a task to publish it.
    pub async fn emit(&self, enterprise: &str, event: Event) {
        let (events, enterprise) = (self.clone(), enterprise.to_owned());
        let queued = tokio::spawn(async move { events.queue(&enterprise, event).await });
        if let Err(e) = queued.await {
            tracing::error!(error = %e, "an account event's task failed");
        }
    }

    /// [`Events::emit`]'s work.
    async fn queue(&self, enterprise: &str, event: Event) {
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
        pending.push_back(Pending { subject, body: e.encode_to_vec().into(), kind, kept: None });
        metrics::gauge!("hermes_accounts_events_pending").set(pending.len() as f64);
        if !waiting && self.publish_pending(&mut pending).await {
            return;
        }
        if let Some(last) = pending.back_mut() {
            self.keep(last).await;
        }
        if !waiting && !self.retrying.swap(true, Ordering::AcqRel) {
            tokio::spawn(self.clone().retry());
        }
    }

    /// Keeps `p` in the outbox (if any) until it is published.
    async fn keep(&self, p: &mut Pending) {
        let Some(outbox) = &self.outbox else { return };
        match outbox.add(&p.subject, &p.body).await {
            Ok(id) => p.kept = Some(id),
            Err(e) => {
                tracing::error!(subject = %p.subject, error = %e, "account event not kept in the outbox: it lives in memory only")
            }
        }
    }

    /// Publishes pending events, oldest first, until the bus refuses one; `true` once none is
    /// left.
    async fn publish_pending(&self, pending: &mut VecDeque<Pending>) -> bool {
        while let Some(p) = pending.front() {
            if !self.publish(&p.subject, &p.body, p.kind).await {
                return false;
            }
            if let Some(p) = pending.pop_front() {
                self.forget(p.kept).await;
            }
            metrics::gauge!("hermes_accounts_events_pending").set(pending.len() as f64);
        }
        true
    }

    /// Publishes one event; `false` (logged and counted) when the bus does not take it.
    async fn publish(&self, subject: &str, body: &Bytes, kind: &'static str) -> bool {
        let (stream, all) = (wire::subjects::ACCOUNT_EVENTS_STREAM, wire::subjects::ALL_ACCOUNT_EVENTS);
        let published =
            tokio::time::timeout(PUBLISH_WAIT, self.bus.publish_durable(stream, all, subject, body.clone()));
        match published.await.unwrap_or_else(|_| Err(bus::BusError::Transport("no answer".into()))) {
            Ok(()) => {
                metrics::counter!("hermes_accounts_events_total", "kind" => kind).increment(1);
                true
            }
            Err(err) => {
                metrics::counter!("hermes_accounts_event_failures_total", "kind" => kind).increment(1);
                tracing::error!(%subject, kind, error = %err, "account event not published yet: it is tried again");
                false
            }
        }
    }

    /// The outbox's event `kept` (if any) is published.
    async fn forget(&self, kept: Option<i64>) {
        if let (Some(outbox), Some(id)) = (&self.outbox, kept)
            && let Err(e) = outbox.remove(id).await
        {
            tracing::warn!(id, error = %e, "a published account event stays in the outbox: it will be published again");
        }
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

    /// Publishes what the outbox kept before `before_ms`, oldest first, until the bus refuses
    /// one; returns how many were published.
    pub async fn sweep(&self, before_ms: i64) -> usize {
        let Some(outbox) = &self.outbox else { return 0 };
        let kept = match outbox.older_than(before_ms, SWEEP_BATCH).await {
            Ok(kept) => kept,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the account events outbox");
                return 0;
            }
        };
        let mut published = 0;
        for event in kept {
            if !self.publish(&event.subject, &Bytes::from(event.body), "kept").await {
                break;
            }
            self.forget(Some(event.id)).await;
            published += 1;
        }
        if published > 0 {
            tracing::info!(published, "account events some node kept were published");
        }
        published
    }

    async fn sweep_forever(self) {
        loop {
            let orphaned = now_ms().saturating_sub(ORPHANED_AFTER.as_millis() as i64);
            self.sweep(orphaned).await;
            tokio::time::sleep(SWEEP_EVERY).await;
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

    /// The in-process bus, refusing durable publishes while `refusing` is set, and never
    /// answering them while `hanging` is (NATS away under a JetStream publish).
    #[derive(Debug, Default)]
    struct Refusing {
        inner: Arc<MemoryBus>,
        refusing: AtomicBool,
        hanging: AtomicBool,
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
            if self.hanging.load(Ordering::Relaxed) {
                return Box::pin(std::future::pending());
            }
            match self.refusing.load(Ordering::Relaxed) {
                true => Box::pin(async { Err(BusError::Transport("refused".into())) }),
                false => self.inner.publish_durable(stream, pattern, subject, payload),
            }
        }
    }

    /// An outbox in memory.
    #[derive(Default)]
    struct Kept(std::sync::Mutex<Vec<OutboxEvent>>);

    impl Outbox for Kept {
        fn add<'a>(&'a self, subject: &'a str, body: &'a [u8]) -> BoxFuture<'a, Result<i64, String>> {
            let mut kept = self.0.lock().expect("lock");
            let id = kept.iter().map(|e| e.id).max().unwrap_or(0) + 1;
            kept.push(OutboxEvent { id, subject: subject.to_owned(), body: body.to_vec() });
            Box::pin(async move { Ok(id) })
        }
        fn remove(&self, id: i64) -> BoxFuture<'_, Result<(), String>> {
            self.0.lock().expect("lock").retain(|e| e.id != id);
            Box::pin(async { Ok(()) })
        }
        fn older_than(&self, _before_ms: i64, limit: i64) -> BoxFuture<'_, Result<Vec<OutboxEvent>, String>> {
            let kept: Vec<OutboxEvent> = self.0.lock().expect("lock").iter().take(limit as usize).cloned().collect();
            Box::pin(async move { Ok(kept) })
        }
    }

    #[tokio::test]
    async fn events_the_bus_refused_are_kept_and_published_by_any_node_later() {
        let refusing = Arc::new(Refusing::default());
        let outbox = Arc::new(Kept::default());
        let mut seen = refusing.subscribe(wire::subjects::ALL_ACCOUNT_EVENTS).await.expect("subscribe");
        refusing.refusing.store(true, Ordering::Relaxed);
        let dying = Events::new(refusing.clone(), Some(outbox.clone()));
        for e in ["e1", "e2"] {
            dying.emit(e, Event::UserCreated(pb::UserCreated::default())).await;
        }
        let kept: Vec<String> = outbox.0.lock().expect("lock").iter().map(|e| e.subject.clone()).collect();
        assert_eq!(kept, [wire::subjects::account_events("e1"), wire::subjects::account_events("e2")]);
        // That node dies (its retries end with it); another, on a bus that works, publishes
        // what it left.
        drop(dying);
        let working = Arc::new(Refusing { inner: refusing.inner.clone(), ..Refusing::default() });
        let other = Events::new(working, Some(outbox.clone()));
        assert_eq!(other.sweep(i64::MAX).await, 2);
        for e in ["e1", "e2"] {
            let m = tokio::time::timeout(Duration::from_secs(5), seen.next()).await.expect("published").expect("open");
            assert_eq!(m.subject, wire::subjects::account_events(e), "in order");
        }
        assert!(outbox.0.lock().expect("lock").is_empty(), "published: no longer kept");
        // Published at once: never kept.
        other.emit("e3", Event::UserCreated(pb::UserCreated::default())).await;
        assert_eq!(seen.next().await.expect("open").subject, wire::subjects::account_events("e3"));
        assert!(outbox.0.lock().expect("lock").is_empty());
    }

    #[tokio::test]
    async fn events_the_bus_refused_are_published_later_in_order_before_newer_ones() {
        let bus = Arc::new(Refusing::default());
        let events = Events::new(bus.clone(), None);
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

    /// A request whose client hangs up while NATS is away (a JetStream publish that never
    /// answers) leaves its event to be published once NATS is back, and holds up no later one.
    #[tokio::test]
    async fn an_event_whose_caller_stopped_waiting_while_the_bus_hung_is_published_with_later_ones() {
        let bus = Arc::new(Refusing::default());
        let events = Events::new(bus.clone(), None);
        let mut seen = bus.subscribe(wire::subjects::ALL_ACCOUNT_EVENTS).await.expect("subscribe");
        let created = || Event::UserCreated(pb::UserCreated::default());
        bus.hanging.store(true, Ordering::Relaxed);
        let gave_up = tokio::time::timeout(Duration::from_millis(100), events.emit("e1", created())).await;
        assert!(gave_up.is_err(), "the bus hangs: the caller stops waiting");
        bus.hanging.store(false, Ordering::Relaxed);
        events.emit("e2", created()).await;
        for e in ["e1", "e2"] {
            let m = tokio::time::timeout(Duration::from_secs(10), seen.next()).await.expect("published").expect("open");
            assert_eq!(m.subject, wire::subjects::account_events(e), "in order");
        }
    }
}
