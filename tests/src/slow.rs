//! Backends that take their time where the real ones do under load: a bus whose replays of
//! kept messages begin one at a time, each after a pause ([`SlowReplays`]), and a journal
//! whose loads each take a pause ([`SlowLoads`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use broker::journal::{Retained, SessionJournal, Stored, ToRestore, Write};
use bus::{BoxFuture, Bus, BusError, GroupSubscription, KeepConfig, Link, Replay, Subscription};
use bytes::Bytes;

/// A bus whose replays of kept messages begin one at a time, each after a pause, as on NATS,
/// where JetStream makes each replay's consumer one after another: a storm of them waits in
/// line. Everything else is the bus it wraps. It counts the replays.
#[derive(Debug)]
pub struct SlowReplays {
    inner: Arc<dyn Bus>,
    pause: Duration,
    line: tokio::sync::Mutex<()>,
    replays: AtomicUsize,
}

impl SlowReplays {
    pub fn new(inner: Arc<dyn Bus>, pause: Duration) -> Self {
        SlowReplays { inner, pause, line: tokio::sync::Mutex::new(()), replays: AtomicUsize::new(0) }
    }

    /// How many replays began.
    pub fn replays(&self) -> usize {
        self.replays.load(Ordering::Relaxed)
    }
}

impl Bus for SlowReplays {
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

    fn subscribe_many<'a>(
        &'a self,
        subjects: &'a [(String, Option<String>)],
    ) -> BoxFuture<'a, Vec<Result<Subscription, BusError>>> {
        self.inner.subscribe_many(subjects)
    }

    fn subscribe_durable<'a>(
        &'a self,
        stream: &'a str,
        subject: &'a str,
    ) -> BoxFuture<'a, Result<Subscription, BusError>> {
        self.inner.subscribe_durable(stream, subject)
    }

    fn publish_durable<'a>(
        &'a self,
        stream: &'a str,
        pattern: &'a str,
        subject: &'a str,
        payload: Bytes,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        self.inner.publish_durable(stream, pattern, subject, payload)
    }

    fn subscribe_group<'a>(
        &'a self,
        group: &'a str,
        filters: &'a [String],
        ack_wait: Duration,
    ) -> BoxFuture<'a, Result<Option<GroupSubscription>, BusError>> {
        self.inner.subscribe_group(group, filters, ack_wait)
    }

    fn publish_to_present<'a>(&'a self, subject: &'a str, payload: Bytes) -> BoxFuture<'a, Result<(), BusError>> {
        self.inner.publish_to_present(subject, payload)
    }

    fn publish_batch<'a>(&'a self, batch: &'a [(String, Bytes)]) -> BoxFuture<'a, Result<(), BusError>> {
        self.inner.publish_batch(batch)
    }

    fn keep<'a>(&'a self, config: &'a KeepConfig) -> BoxFuture<'a, Result<bool, BusError>> {
        self.inner.keep(config)
    }

    fn publish_batch_kept<'a>(&'a self, batch: &'a [(String, Bytes, bool)]) -> BoxFuture<'a, Result<(), BusError>> {
        self.inner.publish_batch_kept(batch)
    }

    fn link_changes(&self) -> tokio::sync::watch::Receiver<Option<Link>> {
        self.inner.link_changes()
    }

    fn replay_kept<'a>(&'a self, filters: &'a [String], since_ms: u64) -> BoxFuture<'a, Result<Replay, BusError>> {
        Box::pin(async move {
            let _turn = self.line.lock().await;
            self.replays.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(self.pause).await;
            self.inner.replay_kept(filters, since_ms).await
        })
    }
}

/// A journal whose loads each take a pause, as from a Redis far away: the sessions of a dead
/// edge are parked over a while rather than at once. Everything else is the journal it wraps.
#[derive(Debug)]
pub struct SlowLoads {
    inner: Arc<dyn SessionJournal>,
    pause: Duration,
}

impl SlowLoads {
    pub fn new(inner: Arc<dyn SessionJournal>, pause: Duration) -> Self {
        SlowLoads { inner, pause }
    }
}

impl SessionJournal for SlowLoads {
    fn write<'a>(&'a self, writes: &'a [Write]) -> BoxFuture<'a, Result<(), String>> {
        self.inner.write(writes)
    }

    fn is_shared(&self) -> bool {
        self.inner.is_shared()
    }

    fn load<'a>(&'a self, session: &'a str) -> BoxFuture<'a, Result<Option<Stored>, String>> {
        Box::pin(async move {
            tokio::time::sleep(self.pause).await;
            self.inner.load(session).await
        })
    }

    fn load_retained(&self) -> BoxFuture<'_, Result<Retained, String>> {
        self.inner.load_retained()
    }

    fn mark<'a>(&'a self, fresh: &'a str) -> BoxFuture<'a, Result<String, String>> {
        self.inner.mark(fresh)
    }

    fn expires_at<'a>(&'a self, session: &'a str) -> BoxFuture<'a, Result<Option<Option<u64>>, String>> {
        self.inner.expires_at(session)
    }

    fn sessions_to_restore(&self) -> BoxFuture<'_, Result<ToRestore, String>> {
        self.inner.sessions_to_restore()
    }

    fn wills<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<broker::journal::Wills, String>> {
        self.inner.wills(node)
    }

    fn forget_wills<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<(), String>> {
        self.inner.forget_wills(node)
    }

    fn will_nodes(&self) -> BoxFuture<'_, Result<Vec<String>, String>> {
        self.inner.will_nodes()
    }

    fn blocks(&self) -> bool {
        self.inner.blocks()
    }
}
