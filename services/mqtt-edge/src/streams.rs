//! The edge's side of durable streams (`broker::streams`).
//!
//! A message published on a durable topic is appended to its stream before it is routed and
//! acknowledged; one task batches the appends of every connection into one store call. The
//! message then carries its place: v5 user properties [`SEQ_PROPERTY`] and [`EPOCH_PROPERTY`]
//! (set by the edge only: a client's own are removed), and, when the payload is an envelope an
//! SDK wrote, its `seq`, `epoch` and `stream` fields.
//!
//! A client resumes a stream it subscribes to from the last `seq` it has: a v5 SUBSCRIBE with
//! the user property [`RESUME_PROPERTY`] `"<epoch>:<seq>"` (for each exact durable topic it
//! names), or, on any version, a PUBLISH to `$hermes/resume/<stream>` with that payload. The
//! edge hands the missed messages to that session alone and says how the replay went
//! ([`ReplayReport`]): in the SUBACK's [`REPLAY_PROPERTY`], or as a message on
//! `$hermes/replay/<stream>` (to a session subscribed to it).

use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use tokio::sync::{mpsc, oneshot};

use broker::streams::{Append, DeadLetter, Replay, Stamp, StreamRules, StreamStore};
use ntex_bytes::{ByteString, Bytes};

use crate::config::StreamsConfig;
use crate::message::{Message, SharedMessage};
use crate::metrics as m;
use crate::turns::{self, Turns};
use wire::pb;

/// The v5 user property with a stream message's `seq`.
pub const SEQ_PROPERTY: &str = "hermes-seq";
/// The v5 user property with a stream message's `epoch`.
pub const EPOCH_PROPERTY: &str = "hermes-epoch";
/// The v5 SUBSCRIBE user property asking for a replay: `"<epoch>:<seq>"`.
pub const RESUME_PROPERTY: &str = "hermes-resume";
/// The v5 SUBACK user property saying how a replay went (one per resumed stream).
pub const REPLAY_PROPERTY: &str = "hermes-replay";
/// Topic prefix of resume requests (`$hermes/resume/<stream>`, payload `"<epoch>:<seq>"`).
pub const RESUME_TOPIC: &str = "$hermes/resume/";
/// Topic prefix of replay reports (`$hermes/replay/<stream>`).
pub const REPLAY_TOPIC: &str = "$hermes/replay/";

/// Dead letters taken into one store call at most.
const MAX_BATCH: usize = 1024;
/// How often the appender's thread looks for appends nobody started (a safety net).
const TICK: Duration = Duration::from_millis(100);
/// How long one append batch may take before its publishers are told it failed.
const APPEND_TIMEOUT: Duration = Duration::from_secs(2);

struct Pending {
    append: Append,
    done: oneshot::Sender<Option<Stamp>>,
    /// Where `done` is completed: on the appending worker's thread when it has a relay.
    relay: Option<crate::relay::Relay>,
}

/// Durable streams as the edge uses them, from any thread.
#[derive(Clone)]
pub struct Streams {
    rules: StreamRules,
    store: Arc<dyn StreamStore>,
    turns: Arc<Turns<Appends>>,
    letters: mpsc::UnboundedSender<DeadLetter>,
    max_replay: usize,
}

/// Appends as [`Streams`] makes them, in turns ([`crate::turns`]): where they are submitted,
/// one connection's in its order.
struct Appends {
    store: Arc<dyn StreamStore>,
    /// The connection an append last failed on ([`turns::Fence`]).
    fence: turns::Fence<dyn StreamStore>,
    /// The append batch under way: the embedded store works on the appender's thread, where no
    /// timeout can cut a hung write short.
    appending: crate::UnderWay,
}

impl std::fmt::Debug for Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streams").field("rules", &self.rules).field("store", &self.store).finish_non_exhaustive()
    }
}

impl Streams {
    /// Starts appending where appends are submitted (with a thread of its own for those
    /// submitted off the edge's workers), and writing dead letters on a thread of their own.
    pub fn start(store: Arc<dyn StreamStore>, cfg: &StreamsConfig) -> Result<Streams, String> {
        let rules = StreamRules::new(cfg.rules.iter().cloned()).map_err(|e| format!("streams.rules: {e}"))?;
        let (letters, letters_rx) = mpsc::unbounded_channel();
        crate::on_own_thread("hermes-dead-letters", write_dead_letters(store.clone(), letters_rx))?;
        let work = Appends { store: store.clone(), fence: Default::default(), appending: Default::default() };
        let turns = Turns::start(work, "hermes-streams", TICK)?;
        Ok(Streams { rules, store, turns, letters, max_replay: cfg.max_replay })
    }

    /// False while an append batch has been under way for longer than it may take: the store
    /// hangs (publishers on durable topics wait, then are refused).
    pub fn is_healthy(&self) -> bool {
        !self.turns.work.appending.longer_than(APPEND_TIMEOUT, crate::message::now_ms())
    }

    /// Whether messages on `topic` go to its durable stream.
    pub fn is_durable(&self, topic: &str) -> bool {
        self.rules.is_durable(topic)
    }

    /// Which topics are durable streams.
    pub fn rules(&self) -> &StreamRules {
        &self.rules
    }

    /// Hands `msg` to be appended to the stream named after its topic, after everything handed
    /// over before (so one connection's messages get their seqs in its order); the place comes
    /// later ([`PendingStamp::wait`]).
    pub fn append(&self, msg: &Message, at_ms: u64) -> PendingStamp {
        let append = Append { stream: Arc::from(&*msg.topic), at_ms, body: encode(msg) };
        let (done, rx) = oneshot::channel();
        self.turns.submit(Pending { append, done, relay: crate::relay::here() });
        PendingStamp(rx)
    }

    /// What `stream` holds after `after` (at most `limit` and `streams.max_replay` messages,
    /// stamped) and how that answers a client that has everything up to `after` under `epoch`
    /// ("more" when the limit left some out).
    pub async fn replay(
        &self,
        stream: &str,
        epoch: u64,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<SharedMessage>, ReplayReport), String> {
        let limit = limit.min(self.max_replay);
        let read = crate::within(APPEND_TIMEOUT, self.store.read(stream, after, limit)).await?;
        let report = ReplayReport::of(&read, epoch, after, limit, stream);
        let messages = read.entries.iter().filter_map(|e| replayed(stream, e, read.epoch)).collect();
        Ok((messages, report))
    }

    /// Where `stream` stands: its newest seq and epoch (0 and 0 for a stream that holds nothing).
    pub async fn position(&self, stream: &str) -> Result<Stamp, String> {
        let replay = crate::within(APPEND_TIMEOUT, self.store.read(stream, i64::MAX as u64, 0)).await?;
        Ok(Stamp { seq: replay.last, epoch: replay.epoch })
    }

    /// Starts the cursors of the persistent session `session` in the durable streams it just
    /// subscribed to by name, where each stands now: if its node dies, the edge that resumes it
    /// replays what came after, even if nothing reached it before.
    pub async fn start_cursors<'a>(
        &self,
        hub: &crate::hub::Hub,
        session: &str,
        filters: impl IntoIterator<Item = &'a str>,
    ) {
        for stream in filters {
            if !self.is_durable(stream) || !hub.wants_cursor(session, stream) {
                continue;
            }
            match self.position(stream).await {
                Ok(at) => hub.start_cursor(session, stream, at),
                Err(e) => tracing::warn!(session, stream, error = %e, "cannot start a session's cursor in a stream"),
            }
        }
    }

    /// Hands `session`, just resumed from the journal (its edge died), what its streams got
    /// beyond its cursors meanwhile: messages routed to the dead edge. Pages through each
    /// stream `streams.max_replay` at a time, waiting for room as a publisher would.
    pub async fn replay_missed(
        &self,
        hub: &crate::hub::Hub,
        session: &str,
        cursors: Vec<(Arc<str>, broker::streams::Cursor)>,
        stall: Duration,
    ) {
        for (stream, cursor) in cursors {
            let mut after = cursor.low;
            loop {
                let replay = match crate::within(APPEND_TIMEOUT, self.store.read(&stream, after, self.max_replay)).await
                {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(session, stream = %stream, error = %e, "cannot replay what a resumed session missed");
                        break;
                    }
                };
                let same_epoch = replay.epoch == cursor.epoch;
                let missed = replay.entries.iter().filter(|e| !(same_epoch && cursor.has(e.seq)));
                for msg in missed.filter_map(|e| replayed(&stream, e, replay.epoch)) {
                    let routed = hub.replay(session, msg, crate::message::now_ms());
                    crate::flow::wait_for_room(hub, routed.pressure, stall, crate::flow::Router::Edge).await;
                }
                match replay.next_after(self.max_replay) {
                    Some(next) => after = next,
                    None => break,
                }
            }
        }
    }

    /// The dead letters with an id above `after`, oldest first, at most `limit`.
    pub async fn dead_letters(&self, after: u64, limit: usize) -> Result<Vec<(u64, DeadLetter)>, String> {
        self.store.dead_letters(after, limit).await
    }

    /// Keeps a message the edge gave up on in the dead-letter stream (written in the
    /// background, in order).
    pub fn dead_letter(&self, reason: &'static str, session: &str, msg: &Message, at_ms: u64) {
        metrics::counter!(m::DEAD_LETTERS, "reason" => reason).increment(1);
        let letter = DeadLetter {
            reason: reason.into(),
            session: session.into(),
            topic: msg.topic.to_string(),
            at_ms,
            body: encode(msg),
        };
        let _ = self.letters.send(letter);
    }
}

/// A message's place in its stream, once it is appended.
#[derive(Debug)]
pub struct PendingStamp(oneshot::Receiver<Option<Stamp>>);

impl PendingStamp {
    /// The place, or `None` if the message could not be stored.
    pub async fn wait(self) -> Option<Stamp> {
        self.0.await.ok().flatten()
    }
}

/// Appends the wills due on durable topics to their streams, in the order they fell due, and
/// routes each stamped with its place (`Effect::WillForStream`); one the stream cannot store is
/// routed without a place (a will has no publisher to refuse).
pub async fn send_wills(hub: std::sync::Weak<crate::hub::Hub>, mut due: mpsc::UnboundedReceiver<SharedMessage>) {
    while let Some(will) = due.recv().await {
        let Some(place) = hub.upgrade().and_then(|h| h.streams().map(|s| s.append(&will, crate::message::now_ms())))
        else {
            return;
        };
        let mut will = Arc::unwrap_or_clone(will);
        match place.wait().await {
            Some(at) => stamp(&mut will, at),
            None => {
                tracing::warn!(topic = %will.topic, "a will could not be stored in its stream: sent without its place")
            }
        }
        let Some(hub) = hub.upgrade() else { return };
        hub.send_stamped_will(Arc::new(will), crate::message::now_ms());
    }
}

/// `msg` with its place in its stream: the edge's user properties, and the envelope's fields
/// when the payload is an envelope an SDK wrote.
pub fn stamp(msg: &mut Message, at: Stamp) {
    msg.stream_at = Some(at);
    let props = msg.properties.get_or_insert_with(Box::default);
    props.user_properties.push((ByteString::from_static(SEQ_PROPERTY), ByteString::from(at.seq.to_string())));
    props.user_properties.push((ByteString::from_static(EPOCH_PROPERTY), ByteString::from(at.epoch.to_string())));
    if wire::envelope::written_envelope(&msg.payload).is_some() {
        msg.payload = Bytes::from(wire::envelope::with_stream_position(&msg.payload, &msg.topic, at.seq, at.epoch));
    }
}

/// The place in its stream the edge stamped on `msg` (a message from another edge or the
/// journal): its [`SEQ_PROPERTY`] and [`EPOCH_PROPERTY`].
pub fn stamped_position(msg: &Message) -> Option<Stamp> {
    let props = msg.properties.as_deref()?;
    let find = |name: &str| props.user_properties.iter().find(|(k, _)| k == name)?.1.parse().ok();
    Some(Stamp { seq: find(SEQ_PROPERTY)?, epoch: find(EPOCH_PROPERTY)? })
}

/// A resume request's `"<epoch>:<seq>"`.
pub fn parse_resume(value: &str) -> Option<(u64, u64)> {
    let (epoch, seq) = value.trim().split_once(':')?;
    Some((epoch.parse().ok()?, seq.parse().ok()?))
}

/// How a replay answered a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    pub status: ReplayStatus,
    pub epoch: u64,
    /// The oldest and newest `seq` the stream holds (0 for none).
    pub first: u64,
    pub last: u64,
    pub stream: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayStatus {
    /// Everything after the client's `seq` was replayed.
    Complete,
    /// The replay stopped at `streams.max_replay` messages: resume again from the last one.
    More,
    /// Messages after the client's `seq` are no longer kept (the window moved on, or the
    /// stream started again under a new epoch): what is kept was replayed.
    Gap,
}

impl ReplayReport {
    fn of(read: &Replay, epoch: u64, after: u64, limit: usize, stream: &str) -> ReplayReport {
        // A client with nothing yet cannot be behind an epoch.
        let epoch_known = if after == 0 { read.epoch } else { epoch };
        let status = if !read.complete_after(epoch_known, after) {
            ReplayStatus::Gap
        } else if read.next_after(limit).is_some() {
            ReplayStatus::More
        } else {
            ReplayStatus::Complete
        };
        ReplayReport { status, epoch: read.epoch, first: read.first, last: read.last, stream: stream.into() }
    }

    /// `complete|more|gap epoch=E first=F last=L stream=S`, the stream last (it may hold spaces).
    pub fn line(&self) -> String {
        let status = match self.status {
            ReplayStatus::Complete => "complete",
            ReplayStatus::More => "more",
            ReplayStatus::Gap => "gap",
        };
        format!("{status} epoch={} first={} last={} stream={}", self.epoch, self.first, self.last, self.stream)
    }
}

fn encode(msg: &Message) -> Vec<u8> {
    crate::cluster::encode_message(msg).encode_to_vec()
}

/// A kept message of `stream` as a replay hands it out: stamped with its place, not retained;
/// `None` (logged) for one this edge cannot read.
fn replayed(stream: &str, e: &broker::streams::Entry, epoch: u64) -> Option<SharedMessage> {
    let Some(mut msg) = decode(&e.body) else {
        tracing::warn!(stream, seq = e.seq, "a stream holds a message this edge cannot read");
        return None;
    };
    msg.retain = false;
    stamp(&mut msg, Stamp { seq: e.seq, epoch });
    metrics::counter!(m::STREAM_REPLAYED).increment(1);
    Some(Arc::new(msg))
}

fn decode(body: &[u8]) -> Option<Message> {
    pb::RoutedMessage::decode(body).ok().and_then(crate::cluster::decode_message)
}

impl turns::Work for Appends {
    type Job = Pending;

    /// One try: a batch that timed out may still land, and trying again would store it twice.
    /// Cut short (its worker stopped), its publishers are told it failed.
    async fn write(turns: &Arc<Turns<Self>>, batch: Vec<Pending>) {
        let Appends { store, fence, appending } = &turns.work;
        let (appends, dones): (Vec<Append>, Vec<_>) = batch.into_iter().map(|p| (p.append, (p.done, p.relay))).unzip();
        let started = std::time::Instant::now();
        let here = turns::own(turns, store, || store.on_this_thread());
        let appending = appending.begun(crate::message::now_ms());
        let appended = match fence.pass(APPEND_TIMEOUT, |s| s.read("hermes:fence", 0, 0)).await {
            Ok(()) => {
                let appended = crate::within(APPEND_TIMEOUT, here.append(&appends)).await;
                if appended.is_err() {
                    fence.put(here);
                }
                appended
            }
            Err(e) => Err(e),
        };
        drop(appending);
        let stamps = match appended {
            Ok(s) if s.len() == appends.len() => {
                metrics::histogram!(m::STREAM_APPEND_SECONDS).record(started.elapsed().as_secs_f64());
                metrics::counter!(m::STREAM_APPENDS).increment(s.len() as u64);
                s.into_iter().map(Some).collect()
            }
            other => {
                let error = match other {
                    Ok(s) => format!("{} stamps for {} appends", s.len(), appends.len()),
                    Err(e) => e,
                };
                metrics::counter!(m::STREAM_APPEND_FAILURES).increment(appends.len() as u64);
                tracing::warn!(error = %error, appends = appends.len(), "cannot append to the durable streams");
                vec![None; appends.len()]
            }
        };
        let mut outcomes = crate::relay::Outcomes::default();
        for ((done, relay), stamp) in dones.into_iter().zip(stamps) {
            outcomes.add(relay, crate::relay::Outcome::Stamped(done, stamp));
        }
        outcomes.send();
    }

    /// Tidies a store that appends on its caller's thread (see `turns::tidy`).
    async fn tick(turns: &Arc<Turns<Self>>) {
        let store = &*turns.work.store;
        if store.blocks() {
            turns::tidy(turns, "the streams", || store.tidy(), || store.tidy_between_writes()).await;
        }
    }
}

async fn write_dead_letters(store: Arc<dyn StreamStore>, mut rx: mpsc::UnboundedReceiver<DeadLetter>) {
    while let Some(batch) = crate::next_batch(&mut rx, MAX_BATCH).await {
        if let Err(e) = crate::within(APPEND_TIMEOUT, store.dead_letter(&batch)).await {
            metrics::counter!(m::DEAD_LETTER_FAILURES).increment(batch.len() as u64);
            tracing::warn!(error = %e, letters = batch.len(), "cannot write to the dead-letter stream: letters lost");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker::relations::BoxFuture;
    use broker::streams::MemoryStreams;

    /// Streams whose appends block their caller's thread for a while, as a hung disk under the
    /// embedded store does.
    #[derive(Debug)]
    struct Stuck(MemoryStreams, Duration);

    impl StreamStore for Stuck {
        fn append<'a>(&'a self, appends: &'a [Append]) -> BoxFuture<'a, Result<Vec<Stamp>, String>> {
            std::thread::sleep(self.1);
            self.0.append(appends)
        }
        fn read<'a>(&'a self, stream: &'a str, after: u64, limit: usize) -> BoxFuture<'a, Result<Replay, String>> {
            self.0.read(stream, after, limit)
        }
        fn dead_letter<'a>(&'a self, letters: &'a [DeadLetter]) -> BoxFuture<'a, Result<(), String>> {
            self.0.dead_letter(letters)
        }
        fn dead_letters(&self, after: u64, limit: usize) -> BoxFuture<'_, Result<Vec<(u64, DeadLetter)>, String>> {
            self.0.dead_letters(after, limit)
        }
    }

    /// Streams that note the thread of each append (", own" after a thread's own store's),
    /// and give each thread a store of its own (as Redis).
    #[derive(Debug, Default)]
    struct Noting {
        inner: Arc<MemoryStreams>,
        by: Arc<std::sync::Mutex<Vec<String>>>,
        own: bool,
        appends_fail: Arc<std::sync::atomic::AtomicBool>,
        reads_fail: Arc<std::sync::atomic::AtomicBool>,
    }

    fn set(flag: &std::sync::atomic::AtomicBool, to: bool) {
        flag.store(to, std::sync::atomic::Ordering::Relaxed);
    }

    fn failing<T: Send + 'static>(
        flag: &std::sync::atomic::AtomicBool,
    ) -> Option<BoxFuture<'static, Result<T, String>>> {
        flag.load(std::sync::atomic::Ordering::Relaxed)
            .then(|| Box::pin(async { Err("failing".to_owned()) }) as BoxFuture<'static, _>)
    }

    impl StreamStore for Noting {
        fn append<'a>(&'a self, appends: &'a [Append]) -> BoxFuture<'a, Result<Vec<Stamp>, String>> {
            let thread = std::thread::current().name().unwrap_or("?").to_owned();
            self.by.lock().expect("not poisoned").push(if self.own { format!("{thread}, own") } else { thread });
            failing(&self.appends_fail).unwrap_or_else(|| self.inner.append(appends))
        }
        fn read<'a>(&'a self, stream: &'a str, after: u64, limit: usize) -> BoxFuture<'a, Result<Replay, String>> {
            failing(&self.reads_fail).unwrap_or_else(|| self.inner.read(stream, after, limit))
        }
        fn dead_letter<'a>(&'a self, letters: &'a [DeadLetter]) -> BoxFuture<'a, Result<(), String>> {
            self.inner.dead_letter(letters)
        }
        fn dead_letters(&self, after: u64, limit: usize) -> BoxFuture<'_, Result<Vec<(u64, DeadLetter)>, String>> {
            self.inner.dead_letters(after, limit)
        }
        fn on_this_thread(&self) -> Option<BoxFuture<'static, Result<Arc<dyn StreamStore>, String>>> {
            let own = Noting {
                inner: self.inner.clone(),
                by: self.by.clone(),
                own: true,
                appends_fail: self.appends_fail.clone(),
                reads_fail: self.reads_fail.clone(),
            };
            let own: Arc<dyn StreamStore> = Arc::new(own);
            Some(Box::pin(async move { Ok(own) }))
        }
    }

    #[tokio::test]
    async fn appends_are_made_by_the_worker_that_submits_over_its_own_connection_else_by_the_appenders_thread() {
        let store = Arc::new(Noting { inner: Arc::new(MemoryStreams::new(Default::default())), ..Default::default() });
        let streams = Streams::start(store.clone(), &StreamsConfig::default()).expect("start");
        let taken = || std::mem::take(&mut *store.by.lock().expect("not poisoned"));
        let msg = |n: u8| Message::new("acme/im/msg/bob".into(), Bytes::from(vec![n]), broker::QoS::AtLeastOnce, false);
        let worker = std::thread::current().name().unwrap_or("?").to_owned();
        let seqs = crate::relay::on_a_worker(|| async {
            let first = streams.append(&msg(1), 1).wait().await;
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
            let (second, third) = (streams.append(&msg(2), 1), streams.append(&msg(3), 1));
            [first, second.wait().await, third.wait().await].map(|s| s.map(|s| s.seq))
        })
        .await;
        assert_eq!(seqs, [Some(1), Some(2), Some(3)], "in the order submitted");
        let own = format!("{worker}, own");
        assert_eq!(
            taken(),
            [worker.as_str(), own.as_str()],
            "the shared store while its own is made, then in one batch"
        );
        assert_eq!(streams.append(&msg(4), 1).wait().await.map(|s| s.seq), Some(4));
        assert_eq!(taken(), ["hermes-streams"], "off a worker");
    }

    #[tokio::test]
    async fn after_a_failed_append_the_next_waits_for_an_answer_over_the_connection_it_failed_on() {
        let store = Arc::new(Noting { inner: Arc::new(MemoryStreams::new(Default::default())), ..Default::default() });
        let streams = Streams::start(store.clone(), &StreamsConfig::default()).expect("start");
        let tries = || std::mem::take(&mut *store.by.lock().expect("not poisoned")).len();
        let msg = Message::new("acme/im/msg/bob".into(), Bytes::from_static(b"hi"), broker::QoS::AtLeastOnce, false);
        set(&store.appends_fail, true);
        assert_eq!(streams.append(&msg, 1).wait().await, None, "failed");
        assert_eq!(tries(), 1);
        set(&store.appends_fail, false);
        set(&store.reads_fail, true);
        assert_eq!(streams.append(&msg, 1).wait().await, None, "its connection does not answer: not appended");
        assert_eq!(tries(), 0, "nor tried");
        set(&store.reads_fail, false);
        assert_eq!(streams.append(&msg, 1).wait().await.map(|s| s.seq), Some(1), "it answers: appended");
        set(&store.reads_fail, true);
        assert_eq!(streams.append(&msg, 1).wait().await.map(|s| s.seq), Some(2), "and the fence is gone");
        assert_eq!(tries(), 2);
    }

    #[tokio::test]
    async fn an_append_stuck_for_longer_than_it_may_take_makes_the_streams_unhealthy() {
        let blocked = APPEND_TIMEOUT + Duration::from_millis(1500);
        let store = Stuck(MemoryStreams::new(broker::streams::Retention::default()), blocked);
        let streams = Streams::start(Arc::new(store), &StreamsConfig::default()).expect("start");
        assert!(streams.is_healthy(), "idle");
        let msg = Message::new("acme/im/msg/bob".into(), Bytes::from_static(b"hi"), broker::QoS::AtLeastOnce, false);
        let stamp = streams.append(&msg, 1);
        tokio::time::sleep(APPEND_TIMEOUT + Duration::from_millis(500)).await;
        assert!(!streams.is_healthy(), "stuck");
        assert!(stamp.wait().await.is_some(), "it landed in the end");
        assert!(streams.is_healthy(), "done");
    }
}
