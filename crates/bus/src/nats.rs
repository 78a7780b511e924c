//! The production bus: NATS core publish/subscribe through async-nats; the messages it keeps
//! ([`Bus::keep`]) in a JetStream stream.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use futures_util::StreamExt;

use crate::{
    BoxFuture, Bus, BusError, BusMessage, GroupSubscription, KeepConfig, KeptMessage, Link, Outage, Replay,
    Subscription, valid_subject, without_covered,
};

mod durable;

/// Kept messages awaiting their JetStream ack at once, over all batches (the JetStream
/// context's limit, which it enforces by holding up the publish past it).
const ACKS_IN_FLIGHT: usize = 4096;

/// The most entries of a [`Bus::publish_batch_kept`] batch sent before their acks are awaited.
const ENTRIES_PER_ROUND_TRIP: usize = 256;

/// The stream a plain publish on a kept subject expects: none is named so (names have no
/// dots), so JetStream does not store it.
const NOT_KEPT: &str = "hermes.not-kept";

/// How long a replay waits for its next message before it reports the bus broken.
const REPLAY_STALL: Duration = Duration::from_secs(5);

/// How long the deletion of a finished replay's consumer may take.
const REPLAY_CLEANUP: Duration = Duration::from_secs(5);

/// What [`Bus::keep`] set up, once it has.
type Keeper = Arc<Mutex<Option<Arc<Keeping>>>>;

#[derive(Debug, Clone)]
pub struct NatsBus {
    client: async_nats::Client,
    keeping: Keeper,
    link: tokio::sync::watch::Receiver<Option<Link>>,
}

/// How often the client pings the server: a connection that stopped answering is noticed as
/// lost within a few of them.
const PING_INTERVAL: Duration = Duration::from_secs(10);

/// How long a lost connection may go unnoticed: async-nats gives up on it after two pings
/// without an answer; one more for the ping that was on its way.
const UNNOTICED: Duration = Duration::from_secs(3 * PING_INTERVAL.as_secs());

/// Turns the client's connection events into [`Link`] changes (until the client is gone).
async fn watch_connection(
    mut events: tokio::sync::mpsc::UnboundedReceiver<async_nats::Event>,
    link: tokio::sync::watch::Sender<Option<Link>>,
) {
    let mut lost_at = None;
    while let Some(event) = events.recv().await {
        match event {
            async_nats::Event::Disconnected if lost_at.is_none() => {
                let at_ms = crate::now_ms();
                lost_at = Some(at_ms);
                link.send_replace(Some(Link::Lost { at_ms }));
            }
            async_nats::Event::Connected => {
                if let Some(at) = lost_at.take() {
                    let from_ms = at.saturating_sub(UNNOTICED.as_millis() as u64);
                    link.send_replace(Some(Link::Back(Outage { from_ms, to_ms: crate::now_ms() })));
                }
            }
            _ => {}
        }
    }
}

/// Keeping on: the stream, and how to publish to it.
#[derive(Debug)]
struct Keeping {
    config: KeepConfig,
    js: jetstream::Context,
    /// The [`ACKS_IN_FLIGHT`] a batch takes before it sends anything: a batch never waits for
    /// the JetStream context's room in the middle, holding acks it has not awaited yet (with
    /// others doing the same, none would ever await theirs).
    acks: tokio::sync::Semaphore,
    not_kept: async_nats::HeaderMap,
}

impl NatsBus {
    /// Connects to `url` (e.g. `nats://127.0.0.1:4222`); async-nats reconnects by itself and
    /// subscribes again to what it held ([`Bus::link_changes`] tells when).
    pub async fn connect(url: &str) -> Result<NatsBus, BusError> {
        let (events, events_rx) = tokio::sync::mpsc::unbounded_channel();
        let client = async_nats::ConnectOptions::new()
            .ping_interval(PING_INTERVAL)
            .event_callback(move |event| {
                let _ = events.send(event);
                std::future::ready(())
            })
            .connect(url)
            .await
            .map_err(|e| BusError::Transport(format!("{url}: {e}")))?;
        let (link, link_rx) = tokio::sync::watch::channel(None);
        tokio::spawn(watch_connection(events_rx, link));
        let keeping = Keeper::default();
        tokio::spawn(keep_again(keeping.clone(), link_rx.clone()));
        Ok(NatsBus { client, keeping, link: link_rx })
    }
}

/// Makes the kept stream again each time the connection is back: a NATS that restarted may
/// have forgotten it (kept in memory, or a new server), and then no kept publish would succeed
/// until the node restarted. Ends with the client.
async fn keep_again(keeping: Keeper, mut link: tokio::sync::watch::Receiver<Option<Link>>) {
    while link.changed().await.is_ok() {
        if !matches!(*link.borrow_and_update(), Some(Link::Back(_))) {
            continue;
        }
        let Some(k) = keeping.lock().unwrap_or_else(|e| e.into_inner()).clone() else { continue };
        if let Err(e) = make_stream(&k.js, &k.config).await {
            tracing::warn!(stream = %k.config.stream, error = %e, "cannot make the kept stream again");
        }
    }
}

/// Whether `e` says the server has no JetStream (for this account).
fn no_jetstream(e: &jetstream::context::CreateStreamError) -> bool {
    use jetstream::ErrorCode;
    use jetstream::context::CreateStreamErrorKind;
    match e.kind() {
        CreateStreamErrorKind::JetStreamUnavailable => true,
        CreateStreamErrorKind::JetStream(e) => {
            matches!(e.error_code(), ErrorCode::JETSTREAM_NOT_ENABLED | ErrorCode::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT)
        }
        _ => false,
    }
}

/// The most consumers the kept stream takes (replays and shared subscriptions' groups). NATS
/// 2.15 gives a stream that sets none (0 or -1 alike) 1 000, which a drain of 5 000 sessions
/// (a replay each, deleted a moment later) went past.
const MAX_CONSUMERS: i32 = 100_000;

/// Makes (or updates) the kept stream; a server that will not change the consumer limit of a
/// stream made before (before 2.15) keeps the one it has.
async fn make_stream(
    js: &jetstream::Context,
    config: &KeepConfig,
) -> Result<jetstream::stream::Info, jetstream::context::CreateStreamError> {
    let first = match js.create_or_update_stream(stream_config(config, MAX_CONSUMERS)).await {
        Ok(stream) => return Ok(stream),
        // Anything else (JetStream not ready yet, a timeout) is an error as it is.
        Err(e) if !e.to_string().contains("MaxConsumers") => return Err(e),
        Err(e) => e,
    };
    match js.create_or_update_stream(stream_config(config, 0)).await {
        Ok(stream) => {
            tracing::warn!(stream = %config.stream, error = %first, "the kept stream keeps the server's limit of consumers");
            Ok(stream)
        }
        Err(_) => Err(first),
    }
}

/// The JetStream stream that keeps what `config` says, with at most `max_consumers` (0: the
/// server's default).
fn stream_config(config: &KeepConfig, max_consumers: i32) -> jetstream::stream::Config {
    use jetstream::stream::{Config, DiscardPolicy, RetentionPolicy, StorageType};
    Config {
        name: config.stream.clone(),
        max_consumers,
        subjects: config.subjects.clone(),
        max_age: config.max_age,
        max_bytes: i64::try_from(config.max_bytes).unwrap_or(i64::MAX),
        storage: if config.memory { StorageType::Memory } else { StorageType::File },
        discard: DiscardPolicy::Old,
        retention: RetentionPolicy::Limits,
        ..Default::default()
    }
}

impl NatsBus {
    /// `sub` as a [`Subscription`], once the server knows about it.
    /// A subscription to `subject` (in queue group `queue`, if any) sent to the server, which
    /// has it after the next flush.
    async fn subscriber(&self, subject: &str, queue: Option<&str>) -> Result<async_nats::Subscriber, BusError> {
        let sub = match queue {
            Some(q) if !valid_subject(subject, true) || !valid_subject(q, false) => {
                return Err(BusError::InvalidSubject(format!("{subject} (queue {q})")));
            }
            None if !valid_subject(subject, true) => return Err(BusError::InvalidSubject(subject.to_owned())),
            Some(q) => self.client.queue_subscribe(subject.to_owned(), q.to_owned()).await,
            None => self.client.subscribe(subject.to_owned()).await,
        };
        sub.map_err(|e| BusError::Transport(e.to_string()))
    }

    /// [`NatsBus::subscriber`], once the server has it.
    async fn held(&self, subject: &str, queue: Option<&str>) -> Result<Subscription, BusError> {
        let sub = self.subscriber(subject, queue).await?;
        self.flush().await?;
        Ok(subscription(sub))
    }

    fn keeping(&self) -> Option<Arc<Keeping>> {
        self.keeping.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Publishes into the client's buffer a message not to be kept: JetStream captures every
    /// message on its stream's subjects, so one on a kept subject says it expects another stream.
    async fn send(&self, keeping: Option<&Keeping>, subject: &str, payload: Bytes) -> Result<(), BusError> {
        let sent = match keeping.filter(|k| k.config.holds(subject)) {
            Some(k) => self.client.publish_with_headers(subject.to_owned(), k.not_kept.clone(), payload).await,
            None => self.client.publish(subject.to_owned(), payload).await,
        };
        sent.map_err(|e| BusError::Transport(e.to_string()))
    }

    async fn flush(&self) -> Result<(), BusError> {
        self.client.flush().await.map_err(|e| BusError::Transport(e.to_string()))
    }
}

impl Bus for NatsBus {
    fn publish<'a>(&'a self, subject: &'a str, payload: Bytes) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            if !valid_subject(subject, false) {
                return Err(BusError::InvalidSubject(subject.to_owned()));
            }
            self.send(self.keeping().as_deref(), subject, payload).await?;
            // Out of the client's buffer before we report success.
            self.flush().await
        })
    }

    fn publish_to_present<'a>(&'a self, subject: &'a str, payload: Bytes) -> BoxFuture<'a, Result<(), BusError>> {
        use async_nats::RequestErrorKind;
        Box::pin(async move {
            if !valid_subject(subject, false) {
                return Err(BusError::InvalidSubject(subject.to_owned()));
            }
            let request = self.client.request(subject.to_owned(), payload);
            match tokio::time::timeout(std::time::Duration::from_secs(1), request).await {
                Ok(Err(e)) if e.kind() == RequestErrorKind::NoResponders => {
                    Err(BusError::NoSubscriber(subject.to_owned()))
                }
                Ok(Err(e)) if e.kind() != RequestErrorKind::TimedOut => Err(BusError::Transport(e.to_string())),
                // Answered, or held without an answer: someone is there.
                _ => Ok(()),
            }
        })
    }

    fn publish_batch<'a>(&'a self, batch: &'a [(String, Bytes)]) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            if let Some((bad, _)) = batch.iter().find(|(s, _)| !valid_subject(s, false)) {
                return Err(BusError::InvalidSubject(bad.clone()));
            }
            let keeping = self.keeping();
            for (subject, payload) in batch {
                self.send(keeping.as_deref(), subject, payload.clone()).await?;
            }
            self.flush().await
        })
    }

    fn keep<'a>(&'a self, config: &'a KeepConfig) -> BoxFuture<'a, Result<bool, BusError>> {
        use jetstream::ErrorCode;
        use jetstream::context::CreateStreamErrorKind;
        Box::pin(async move {
            if let Some(bad) = config.invalid_subject() {
                return Err(BusError::InvalidSubject(bad.to_owned()));
            }
            let js = jetstream::ContextBuilder::new().max_ack_inflight(ACKS_IN_FLIGHT).build(self.client.clone());
            match make_stream(&js, config).await {
                Ok(_) => {}
                Err(e) if no_jetstream(&e) => {
                    tracing::warn!(stream = %config.stream, error = %e, "no JetStream: messages are not kept");
                    *self.keeping.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    return Ok(false);
                }
                Err(e) => {
                    let room = matches!(e.kind(), CreateStreamErrorKind::JetStream(e)
                        if e.error_code() == ErrorCode::STORAGE_RESOURCES_EXCEEDED);
                    // The server reserves the stream's whole `max_bytes` up front.
                    let hint = if room {
                        format!(
                            " (it would keep up to {} bytes: more than the NATS server has room for; lower bus.keep_max_bytes or give it room)",
                            config.max_bytes
                        )
                    } else {
                        String::new()
                    };
                    return Err(BusError::Transport(format!("jetstream stream {}: {e}{hint}", config.stream)));
                }
            }
            let mut not_kept = async_nats::HeaderMap::new();
            not_kept.insert(async_nats::header::NATS_EXPECTED_STREAM, NOT_KEPT);
            let keeping =
                Keeping { config: config.clone(), js, acks: tokio::sync::Semaphore::new(ACKS_IN_FLIGHT), not_kept };
            *self.keeping.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(keeping));
            Ok(true)
        })
    }

    fn publish_batch_kept<'a>(&'a self, batch: &'a [(String, Bytes, bool)]) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            if let Some((bad, ..)) = batch.iter().find(|(s, ..)| !valid_subject(s, false)) {
                return Err(BusError::InvalidSubject(bad.clone()));
            }
            let Some(keeping) = self.keeping() else {
                for (subject, payload, _) in batch {
                    self.send(None, subject, payload.clone()).await?;
                }
                return self.flush().await;
            };
            let transport = |e: &dyn std::fmt::Display| BusError::Transport(format!("jetstream publish: {e}"));
            for run in batch.chunks(ENTRIES_PER_ROUND_TRIP) {
                let kept: Vec<bool> = run.iter().map(|(s, _, keep)| *keep && keeping.config.holds(s)).collect();
                let count = kept.iter().filter(|k| **k).count();
                // `run` is short: the count fits.
                let permits = u32::try_from(count).unwrap_or(u32::MAX);
                let _room = keeping.acks.acquire_many(permits).await.map_err(|e| transport(&e))?;
                let mut acks = Vec::with_capacity(count);
                // Through the client's one command queue, in order: a JetStream publish is a
                // request on the same connection.
                for ((subject, payload, _), keep) in run.iter().zip(kept) {
                    if keep {
                        acks.push(
                            keeping.js.publish(subject.clone(), payload.clone()).await.map_err(|e| transport(&e))?,
                        );
                    } else {
                        self.send(Some(&keeping), subject, payload.clone()).await?;
                    }
                }
                self.flush().await?;
                for ack in acks {
                    ack.await.map_err(|e| transport(&e))?;
                }
            }
            Ok(())
        })
    }

    fn max_payload(&self) -> Option<usize> {
        Some(self.client.max_payload())
    }

    fn link_changes(&self) -> tokio::sync::watch::Receiver<Option<Link>> {
        self.link.clone()
    }

    fn replay_kept<'a>(&'a self, filters: &'a [String], since_ms: u64) -> BoxFuture<'a, Result<Replay, BusError>> {
        use jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
        Box::pin(async move {
            if let Some(bad) = filters.iter().find(|f| !valid_subject(f, true)) {
                return Err(BusError::InvalidSubject(bad.clone()));
            }
            let Some(keeping) = self.keeping() else { return Ok(Replay::empty()) };
            let mut patterns = without_covered(filters);
            let since_ns = i128::from(since_ms) * 1_000_000;
            // Past the end of time (year 9999): nothing was kept then.
            let Ok(start_time) = async_nats::datetime::from_nanos(since_ns) else { return Ok(Replay::empty()) };
            let mut config =
                OrderedConfig { deliver_policy: DeliverPolicy::ByStartTime { start_time }, ..Default::default() };
            if patterns.is_empty() {
                return Ok(Replay::empty());
            }
            // Filters that take in every subject the stream keeps: none at all. A consumer with
            // several filters costs the server a search of the stream's subjects per message
            // (a replay of 10 000 subjects' messages went at about 1 300 a second).
            let whole = keeping.config.subjects.iter().all(|s| patterns.iter().any(|p| crate::covers(p, s)));
            // One filter in the field every server knows (`filter_subjects` needs 2.10).
            match patterns.len() {
                _ if whole => {}
                1 => config.filter_subject = patterns.remove(0),
                _ => config.filter_subjects = patterns,
            }
            let stream = &keeping.config.stream;
            let consumer = keeping
                .js
                .create_consumer_on_stream(config, stream)
                .await
                .map_err(|e| BusError::Transport(format!("jetstream replay consumer on {stream}: {e}")))?;
            let (name, pending) = (consumer.cached_info().name.clone(), consumer.cached_info().num_pending);
            let cleanup = Cleanup { js: keeping.js.clone(), stream: stream.clone(), consumer: name };
            if pending == 0 {
                return Ok(Replay::empty());
            }
            let messages =
                consumer.messages().await.map_err(|e| BusError::Transport(format!("jetstream replay: {e}")))?;
            let reading = Reading { messages, left: pending, since_ns, cleanup };
            Ok(Replay::new(futures_util::stream::unfold(Some(reading), |reading| async move {
                let mut reading = reading?;
                loop {
                    match reading.step().await {
                        Step::Older { last: false } => {}
                        Step::Older { last: true } => return None,
                        Step::Message { message, last } => return Some((Ok(message), (!last).then_some(reading))),
                        Step::Failed(e) => return Some((Err(e), None)),
                    }
                }
            })))
        })
    }

    fn subscribe_durable<'a>(
        &'a self,
        stream: &'a str,
        subject: &'a str,
    ) -> BoxFuture<'a, Result<Subscription, BusError>> {
        Box::pin(async move {
            if !valid_subject(subject, true) {
                return Err(BusError::InvalidSubject(subject.to_owned()));
            }
            durable::follow(jetstream::new(self.client.clone()), self.link.clone(), stream, subject).await
        })
    }

    fn publish_durable<'a>(
        &'a self,
        stream: &'a str,
        pattern: &'a str,
        subject: &'a str,
        payload: Bytes,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            crate::check_durable(pattern, subject)?;
            let js = jetstream::new(self.client.clone());
            if durable::publish(&js, stream, pattern, subject, payload.clone()).await? {
                return Ok(());
            }
            // No JetStream: present subscribers are all there is.
            self.publish(subject, payload).await
        })
    }

    fn subscribe_group<'a>(
        &'a self,
        group: &'a str,
        filters: &'a [String],
        ack_wait: Duration,
    ) -> BoxFuture<'a, Result<Option<GroupSubscription>, BusError>> {
        use jetstream::consumer::{AckPolicy, DeliverPolicy, pull, pull::Config};
        Box::pin(async move {
            crate::check_group(group, filters)?;
            let Some(keeping) = self.keeping() else { return Ok(None) };
            let transport = |e: &dyn std::fmt::Display| BusError::Transport(format!("jetstream group {group}: {e}"));
            let stream = keeping.js.get_stream(&keeping.config.stream).await.map_err(|e| transport(&e))?;
            // One consumer per pattern: JetStream finds a single filter's next message through
            // its subject index, while several filters on one consumer make it intersect them
            // with every subject a block holds (the routed stream holds a subject per topic).
            let mut taking = Vec::new();
            for pattern in without_covered(filters) {
                let config = Config {
                    durable_name: Some(group_consumer(group, &pattern)),
                    filter_subject: pattern,
                    deliver_policy: DeliverPolicy::New,
                    ack_policy: AckPolicy::Explicit,
                    ack_wait,
                    // Forgotten once nobody has asked for its messages for as long as they are
                    // kept.
                    inactive_threshold: keeping.config.max_age.max(ack_wait * 2),
                    // Stored like the stream: its acknowledgements survive a restart of a
                    // NATS that keeps the messages on disk.
                    memory_storage: keeping.config.memory,
                    ..Default::default()
                };
                // The consumer as the first member made it; a member with another wait (its
                // node configured otherwise) updates it.
                let consumer = stream.create_consumer(config).await.map_err(|e| transport(&e))?;
                taking.push(consumer.messages().await.map_err(|e| transport(&e))?);
            }
            // A consumer that is gone (deleted; forgotten by a NATS that kept it in memory and
            // restarted) never delivers again: the subscription ends, so the member joins anew.
            let group = group.to_owned();
            let alive = move |m: &Result<jetstream::Message, pull::MessagesError>| {
                let gone = m.as_ref().is_err_and(|e| {
                    matches!(e.kind(), pull::MessagesErrorKind::ConsumerDeleted | pull::MessagesErrorKind::NoResponders)
                });
                if gone {
                    tracing::debug!(%group, "a group consumer is gone");
                }
                std::future::ready(!gone)
            };
            let taking = futures_util::stream::select_all(taking).take_while(alive).filter_map(|m| {
                std::future::ready(match m {
                    Ok(m) => Some(taken(m)),
                    Err(e) => {
                        tracing::debug!(error = %e, "jetstream group consumer");
                        None
                    }
                })
            });
            Ok(Some(GroupSubscription::new(taking)))
        })
    }

    fn subscribe_queue<'a>(
        &'a self,
        subject: &'a str,
        queue: &'a str,
    ) -> BoxFuture<'a, Result<Subscription, BusError>> {
        Box::pin(self.held(subject, Some(queue)))
    }

    fn subscribe<'a>(&'a self, subject: &'a str) -> BoxFuture<'a, Result<Subscription, BusError>> {
        Box::pin(self.held(subject, None))
    }

    fn subscribe_many<'a>(
        &'a self,
        subjects: &'a [(String, Option<String>)],
    ) -> BoxFuture<'a, Vec<Result<Subscription, BusError>>> {
        Box::pin(async move {
            let mut subscribed = Vec::with_capacity(subjects.len());
            for (subject, queue) in subjects {
                subscribed.push(self.subscriber(subject, queue.as_deref()).await);
            }
            // One flush: the server has every subscription sent before it.
            if let Err(e) = self.flush().await {
                return subjects.iter().map(|_| Err(e.clone())).collect();
            }
            subscribed.into_iter().map(|sub| sub.map(subscription)).collect()
        })
    }
}

/// The name of group `group`'s consumer of `pattern`: what consumer names may hold (no dots or
/// wildcards), and a digest of the whole group and pattern, so that two groups never share a
/// consumer. A cryptographic one: clients choose share names and (within their own topics)
/// filters, and a consumer created again under the same name with another filter takes the
/// new filter, so a name one could make collide on purpose (FNV, say) would let a client of one
/// enterprise take over another's group.
fn group_consumer(group: &str, pattern: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::new().chain_update(group).chain_update([0]).chain_update(pattern).finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    let readable: String =
        group.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).take(32).collect();
    format!("group-{readable}-{hex}")
}

/// A group consumer's message as the bus hands it on.
fn taken(m: jetstream::Message) -> crate::Taken {
    let message = BusMessage { subject: m.subject.to_string(), payload: m.payload.clone() };
    let redelivered = m.info().is_ok_and(|info| info.delivered > 1);
    crate::Taken::new(message, redelivered, move |done| {
        Box::pin(async move {
            let kind = if done { jetstream::AckKind::Ack } else { jetstream::AckKind::Nak(Some(GIVEN_BACK_DELAY)) };
            m.ack_with(kind).await.map_err(|e| BusError::Transport(format!("jetstream ack: {e}")))
        })
    })
}

/// How long a message given back to its group waits before it goes to a member again (so a
/// member that cannot take it is not handed it in a loop).
const GIVEN_BACK_DELAY: Duration = Duration::from_millis(500);

/// What a subscription takes, as the bus hands it on.
fn subscription(sub: async_nats::Subscriber) -> Subscription {
    Subscription::new(sub.map(|m| BusMessage { subject: m.subject.to_string(), payload: m.payload }))
}

/// A replay under way: its ordered consumer's messages, and how many it has yet to give.
struct Reading {
    messages: jetstream::consumer::pull::Ordered,
    /// The messages the consumer had pending when it was made that are still to come: those
    /// kept up to the moment the replay began.
    left: u64,
    since_ns: i128,
    /// After `messages`: dropped once they are.
    cleanup: Cleanup,
}

/// What a replay's consumer gave next.
enum Step {
    /// One from before the replay's start: the ordered consumer starts over from the stream's
    /// beginning when it has to make itself again before its first message.
    Older {
        last: bool,
    },
    Message {
        message: KeptMessage,
        last: bool,
    },
    Failed(BusError),
}

impl Reading {
    async fn step(&mut self) -> Step {
        let failed = |what: String| Step::Failed(BusError::Transport(format!("jetstream replay: {what}")));
        let message = match tokio::time::timeout(REPLAY_STALL, self.messages.next()).await {
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(e))) => return failed(e.to_string()),
            Ok(None) => return failed("the consumer is gone".into()),
            Err(_) => return failed(format!("nothing for {REPLAY_STALL:?} with {} to come", self.left)),
        };
        let info = match message.info() {
            Ok(info) => info,
            Err(e) => return failed(e.to_string()),
        };
        // Made again, under another name: the one to delete.
        if info.consumer != self.cleanup.consumer {
            self.cleanup.consumer = info.consumer.to_owned();
        }
        let published = info.published.unix_timestamp_nanos();
        if published < self.since_ns {
            return Step::Older { last: info.pending == 0 };
        }
        self.left = self.left.saturating_sub(1);
        let last = info.pending == 0 || self.left == 0;
        let at_ms = u64::try_from(published / 1_000_000).unwrap_or(0);
        let message = KeptMessage { subject: message.subject.to_string(), payload: message.payload.clone(), at_ms };
        Step::Message { message, last }
    }
}

/// Deletes a replay's consumer when the replay is over, rather than leaving it to the server
/// (30 s without a pull).
struct Cleanup {
    js: jetstream::Context,
    stream: String,
    consumer: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let (js, stream, consumer) =
            (self.js.clone(), std::mem::take(&mut self.stream), std::mem::take(&mut self.consumer));
        runtime.spawn(async move {
            let deleted =
                tokio::time::timeout(REPLAY_CLEANUP, js.delete_consumer_from_stream(&consumer, &stream)).await;
            if let Ok(Err(e)) = deleted {
                tracing::debug!(%stream, %consumer, error = %e, "replay consumer not deleted");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::group_consumer;

    #[test]
    fn a_group_consumers_name_is_a_valid_name_and_a_digest_of_group_and_pattern() {
        let name = group_consumer("hermes_share_00ff", "hermes.m.acme.orders");
        // SHA-256 of "hermes_share_00ff\0hermes.m.acme.orders", its first 16 bytes.
        assert_eq!(name, format!("group-hermes_share_00ff-{}", "08f522ba7177be1cdf94bcf0731c0eac"));
        assert_ne!(name, group_consumer("hermes_share_00ff", "hermes.m.globex.orders"), "another filter");
        assert_ne!(name, group_consumer("hermes_share_00fe", "hermes.m.acme.orders"), "another group");
        assert_ne!(group_consumer("a", "b.c"), group_consumer("a\0b", ".c"), "the parts are kept apart");
        let odd = group_consumer("x.y *>{}/\n\u{2028}", "hermes.m.*.>");
        assert!(odd.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{odd}");
    }
}
