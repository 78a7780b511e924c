//! The bus between Hermes services (design §2, §6): subject-addressed publish/subscribe.
//! [`nats::NatsBus`] in production, [`memory::MemoryBus`] when everything runs in one process.
//! Subjects follow NATS rules: dot-separated tokens, `*` matches one token, `>` the rest.
//! [`contract::check`] is what both must do, [`contract::check_kept`] what they do with the
//! messages they keep ([`Bus::keep`]).

pub mod contract;
pub mod memory;
pub mod nats;

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The subject of what a durable subscription ([`Bus::subscribe_durable`]) yields where it may
/// have missed messages (empty payload): its stream was lost and made again, or kept messages
/// were gone before it read them. A subscriber that can, catches up another way.
pub const MAY_HAVE_MISSED: &str = "$hermes.may-have-missed";

/// One message as a subscriber receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusMessage {
    pub subject: String,
    pub payload: Bytes,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    #[error("invalid subject `{0}`")]
    InvalidSubject(String),
    #[error("bus: {0}")]
    Transport(String),
    /// Nobody subscribes to the subject ([`Bus::publish_to_present`]).
    #[error("nobody subscribes to `{0}`")]
    NoSubscriber(String),
}

/// Messages on the subjects a subscription matches, in publish order per publisher. Dropping
/// it unsubscribes.
pub struct Subscription {
    inner: Pin<Box<dyn Stream<Item = BusMessage> + Send>>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Subscription")
    }
}

impl Subscription {
    pub fn new(inner: impl Stream<Item = BusMessage> + Send + 'static) -> Self {
        Subscription { inner: Box::pin(inner) }
    }

    /// The next message; `None` once the bus is gone.
    pub async fn next(&mut self) -> Option<BusMessage> {
        futures_util::StreamExt::next(&mut self.inner).await
    }
}

/// A message the bus kept ([`Bus::publish_batch_kept`]), as [`Bus::replay_kept`] gives it back.
/// A message a [`GroupSubscription`] took: its group's until [`Taken::done`], or given to a
/// member again (another, if this one's node died) once the group's wait is over.
pub struct Taken {
    pub message: BusMessage,
    /// Delivered before, to this member or another, and not acknowledged in time.
    pub redelivered: bool,
    settle: Box<dyn FnOnce(bool) -> BoxFuture<'static, Result<(), BusError>> + Send>,
}

impl std::fmt::Debug for Taken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Taken").field("message", &self.message).field("redelivered", &self.redelivered).finish()
    }
}

impl Taken {
    /// `settle(true)` acknowledges the message (nobody gets it again), `settle(false)` gives
    /// it back (a member gets it soon).
    pub fn new(
        message: BusMessage,
        redelivered: bool,
        settle: impl FnOnce(bool) -> BoxFuture<'static, Result<(), BusError>> + Send + 'static,
    ) -> Self {
        Taken { message, redelivered, settle: Box::new(settle) }
    }

    /// Delivered where it is safe: no member gets it again.
    pub async fn done(self) -> Result<(), BusError> {
        (self.settle)(true).await
    }

    /// Not for this member: the bus gives it to one soon (another, if there is one).
    pub async fn give_back(self) -> Result<(), BusError> {
        (self.settle)(false).await
    }
}

/// What a [`Bus::subscribe_group`] member takes.
pub struct GroupSubscription {
    inner: Pin<Box<dyn Stream<Item = Taken> + Send>>,
}

impl std::fmt::Debug for GroupSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GroupSubscription")
    }
}

impl GroupSubscription {
    pub fn new(inner: impl Stream<Item = Taken> + Send + 'static) -> Self {
        GroupSubscription { inner: Box::pin(inner) }
    }

    /// The next message; `None` once the subscription broke (subscribe again).
    pub async fn next(&mut self) -> Option<Taken> {
        futures_util::StreamExt::next(&mut self.inner).await
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptMessage {
    pub subject: String,
    pub payload: Bytes,
    /// When the bus took it: milliseconds since the Unix epoch (the NATS server's clock).
    pub at_ms: u64,
}

/// How a bus keeps messages ([`Bus::keep`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeepConfig {
    /// The JetStream stream's name.
    pub stream: String,
    /// Subject patterns whose kept messages it holds (publish_batch_kept entries marked kept
    /// must be on one of them, or they are only published).
    pub subjects: Vec<String>,
    /// How long a message is kept.
    pub max_age: std::time::Duration,
    /// The most bytes kept; the oldest go first past it.
    pub max_bytes: u64,
    /// Kept in memory (true) or on disk (false).
    pub memory: bool,
}

impl KeepConfig {
    /// Whether a message on `subject` is one this config keeps (when marked).
    pub(crate) fn holds(&self, subject: &str) -> bool {
        self.subjects.iter().any(|p| subject_matches(p, subject))
    }

    /// The first of its subjects that is not a pattern, or "" when it has none: a stream
    /// needs at least one.
    fn invalid_subject(&self) -> Option<&str> {
        if self.subjects.is_empty() {
            return Some("");
        }
        self.subjects.iter().map(String::as_str).find(|p| !valid_subject(p, true))
    }
}

/// Kept messages, oldest first, up to the moment the replay began; `next` gives `None` after
/// the last.
pub struct Replay {
    inner: Pin<Box<dyn Stream<Item = Result<KeptMessage, BusError>> + Send>>,
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Replay")
    }
}

impl Replay {
    /// `inner` ends the replay after its last message, or after an error.
    pub fn new(inner: impl Stream<Item = Result<KeptMessage, BusError>> + Send + 'static) -> Self {
        Replay { inner: Box::pin(inner) }
    }

    /// Nothing to replay.
    pub fn empty() -> Self {
        Replay::new(futures_util::stream::empty())
    }

    /// The next kept message; `None` after the last, `Some(Err)` when the replay broke off
    /// before it (the bus failed).
    pub async fn next(&mut self) -> Option<Result<KeptMessage, BusError>> {
        futures_util::StreamExt::next(&mut self.inner).await
    }
}

/// A time this node's connection to the bus was lost, once it is back: subscriptions may have
/// missed what was published from `from_ms` (Unix ms; the earliest the loss may have begun,
/// however late it was noticed) until about `to_ms`, when the connection came back (the
/// client then subscribes again before it sends anything else).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outage {
    pub from_ms: u64,
    pub to_ms: u64,
}

/// This node's connection to the bus, as it changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Lost, noticed at `at_ms`: nothing published on the bus reaches this node until it is
    /// back.
    Lost { at_ms: u64 },
    /// Back after an [`Outage`].
    Back(Outage),
}

/// Publish/subscribe by subject.
pub trait Bus: Send + Sync + std::fmt::Debug + 'static {
    fn publish<'a>(&'a self, subject: &'a str, payload: Bytes) -> BoxFuture<'a, Result<(), BusError>>;
    fn subscribe<'a>(&'a self, subject: &'a str) -> BoxFuture<'a, Result<Subscription, BusError>>;
    /// Like [`Bus::subscribe`], as a member of queue group `queue` (a concrete subject-like
    /// name): each message goes to one member of the group, wherever its members are.
    fn subscribe_queue<'a>(&'a self, subject: &'a str, queue: &'a str)
    -> BoxFuture<'a, Result<Subscription, BusError>>;

    /// [`Bus::subscribe`] (or [`Bus::subscribe_queue`] with the queue group given) to each of
    /// `subjects`, one answer each, in order; the server has them all once it resolves (NATS:
    /// one flush for all, where one subscription at a time costs a round trip each).
    fn subscribe_many<'a>(
        &'a self,
        subjects: &'a [(String, Option<String>)],
    ) -> BoxFuture<'a, Vec<Result<Subscription, BusError>>> {
        Box::pin(async move {
            let mut subscribed = Vec::with_capacity(subjects.len());
            for (subject, queue) in subjects {
                subscribed.push(match queue {
                    Some(q) => self.subscribe_queue(subject, q).await,
                    None => self.subscribe(subject).await,
                });
            }
            subscribed
        })
    }

    /// Messages on `subject` (a pattern) that the bus keeps for subscribers that were away:
    /// from now on, and after a lost connection, from where this subscription left off (NATS:
    /// a JetStream stream named `stream` capturing `subject`, kept a week, read by sequence
    /// number). Where it cannot tell that nothing was missed, it yields a message on
    /// [`MAY_HAVE_MISSED`]. The in-process bus is never away: a plain subscription.
    fn subscribe_durable<'a>(
        &'a self,
        stream: &'a str,
        subject: &'a str,
    ) -> BoxFuture<'a, Result<Subscription, BusError>> {
        let _ = stream;
        self.subscribe(subject)
    }

    /// Publishes `payload` on `subject` for [`Bus::subscribe_durable`] subscribers of stream
    /// `stream`, which captures `pattern` (`subject` matches it): `Ok` once the bus keeps it (NATS:
    /// JetStream acknowledged it, the stream made if it was missing), so a subscriber that was
    /// away still gets it. A bus that keeps nothing (the in-process one, NATS without JetStream)
    /// publishes it plainly.
    fn publish_durable<'a>(
        &'a self,
        stream: &'a str,
        pattern: &'a str,
        subject: &'a str,
        payload: Bytes,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        let _ = stream;
        Box::pin(async move {
            check_durable(pattern, subject)?;
            self.publish(subject, payload).await
        })
    }

    /// Joins group `group` (a concrete subject-like name; every member, on any node, names it
    /// alike) for the messages kept ([`Bus::keep`]) on subjects matching `filters` from when
    /// the group began: each goes to one member, which acknowledges it ([`Taken::done`]) once
    /// it is safe; one not acknowledged within `ack_wait` (its member's node died or froze)
    /// goes to a member again. The bus remembers the group while it keeps messages, members or
    /// not. `Ok(None)` when this bus keeps nothing (the in-process bus, NATS without
    /// JetStream): then queue groups ([`Bus::subscribe_queue`]) are all there is. The filters
    /// are expected not to overlap: on NATS each is a consumer of its own, so a message two of
    /// them match goes to the group twice.
    fn subscribe_group<'a>(
        &'a self,
        group: &'a str,
        filters: &'a [String],
        ack_wait: std::time::Duration,
    ) -> BoxFuture<'a, Result<Option<GroupSubscription>, BusError>> {
        let _ = (group, filters, ack_wait);
        Box::pin(std::future::ready(Ok(None)))
    }

    /// Publishes `payload` on `subject` for a subscriber that should be there, and fails with
    /// [`BusError::NoSubscriber`] when nobody subscribes to it (how a node learns at once that
    /// another is gone). NATS: a request the server answers "no responders" at once; any other
    /// answer is not awaited, and after a second without one the subject counts as held.
    fn publish_to_present<'a>(&'a self, subject: &'a str, payload: Bytes) -> BoxFuture<'a, Result<(), BusError>>;

    /// Publishes `batch` in order, out of the client's buffer once at the end (one flush for
    /// the lot). A bad subject refuses the whole batch before anything is sent.
    fn publish_batch<'a>(&'a self, batch: &'a [(String, Bytes)]) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            if let Some((bad, _)) = batch.iter().find(|(s, _)| !valid_subject(s, false)) {
                return Err(BusError::InvalidSubject(bad.clone()));
            }
            for (subject, payload) in batch {
                self.publish(subject, payload.clone()).await?;
            }
            Ok(())
        })
    }

    /// Starts keeping messages as `config` says, for [`Bus::publish_batch_kept`] and
    /// [`Bus::replay_kept`]; called once when a node starts (idempotent: every node calls it
    /// with the same config; a changed config updates what is kept). `Ok(false)` when this bus
    /// cannot keep anything (NATS without JetStream): kept publishes are then plain ones and
    /// replays are empty.
    fn keep<'a>(&'a self, config: &'a KeepConfig) -> BoxFuture<'a, Result<bool, BusError>> {
        let _ = config;
        Box::pin(std::future::ready(Ok(false)))
    }

    /// Like [`Bus::publish_batch`] (in order, one flush, a bad subject refuses the batch before
    /// anything is sent), but the entries marked `true` are also kept, and it resolves only once
    /// the bus has stored each of those (NATS: each one's JetStream ack, all awaited after the
    /// one flush: a batch costs one round trip). Unmarked entries are not kept, even on kept
    /// subjects.
    fn publish_batch_kept<'a>(&'a self, batch: &'a [(String, Bytes, bool)]) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            let plain: Vec<(String, Bytes)> = batch.iter().map(|(s, p, _)| (s.clone(), p.clone())).collect();
            self.publish_batch(&plain).await
        })
    }

    /// The largest payload one message may have on this bus (NATS: the server's `max_payload`,
    /// as the client last heard it); `None` when there is no such limit.
    fn max_payload(&self) -> Option<usize> {
        None
    }

    /// The latest change of this node's connection ([`Link`]; `None` before the first). A
    /// watch keeps only the latest: a reader may see `Back` without the `Lost` before it. The
    /// in-process bus is never cut off: its receiver never changes (its sender is gone, so
    /// `changed` fails at once).
    fn link_changes(&self) -> tokio::sync::watch::Receiver<Option<Link>> {
        tokio::sync::watch::channel(None).1
    }

    /// The kept messages on subjects matching any of `filters` (patterns within the kept
    /// subjects) taken at or after `since_ms`, each once, oldest first, up to the moment of the
    /// call.
    fn replay_kept<'a>(&'a self, filters: &'a [String], since_ms: u64) -> BoxFuture<'a, Result<Replay, BusError>> {
        let _ = (filters, since_ms);
        Box::pin(std::future::ready(Ok(Replay::empty())))
    }
}

/// Checks what [`Bus::subscribe_group`] was given: a concrete group name and at least one
/// filter, all valid.
/// `subject` is a concrete subject that pattern `pattern` matches ([`Bus::publish_durable`]).
pub(crate) fn check_durable(pattern: &str, subject: &str) -> Result<(), BusError> {
    match valid_subject(subject, false) && valid_subject(pattern, true) && subject_matches(pattern, subject) {
        true => Ok(()),
        false => Err(BusError::InvalidSubject(format!("{subject} (in {pattern})"))),
    }
}

pub(crate) fn check_group(group: &str, filters: &[String]) -> Result<(), BusError> {
    if !valid_subject(group, false) {
        return Err(BusError::InvalidSubject(group.to_owned()));
    }
    match filters.iter().find(|f| !valid_subject(f, true)) {
        Some(bad) => Err(BusError::InvalidSubject(bad.clone())),
        None if filters.is_empty() => Err(BusError::InvalidSubject(String::new())),
        None => Ok(()),
    }
}

/// `patterns` without those whose subjects another one already matches, nor repeats, in
/// order: what a NATS consumer takes as its filters (it refuses overlapping ones).
pub fn without_covered(patterns: &[String]) -> Vec<String> {
    patterns
        .iter()
        .enumerate()
        .filter(|&(i, p)| !patterns.iter().enumerate().any(|(j, q)| j != i && covers(q, p) && (j < i || !covers(p, q))))
        .map(|(_, p)| p.clone())
        .collect()
}

/// Whether every subject `inner` matches, `outer` matches too.
pub(crate) fn covers(outer: &str, inner: &str) -> bool {
    let mut i = inner.split('.');
    for o in outer.split('.') {
        match (o, i.next()) {
            (">", Some(_)) => return true,
            ("*", Some(t)) if t != ">" => {}
            (o, Some(t)) if o == t && !matches!(t, "*" | ">") => {}
            _ => return false,
        }
    }
    i.next().is_none()
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> u64 {
    std::time::UNIX_EPOCH.elapsed().map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Whether `subject` is a concrete subject (`wildcards` false) or a subscription pattern.
pub fn valid_subject(subject: &str, wildcards: bool) -> bool {
    let tokens: Vec<&str> = subject.split('.').collect();
    tokens.iter().enumerate().all(|(i, t)| {
        !t.is_empty()
            && !t.contains(char::is_whitespace)
            && match *t {
                "*" => wildcards,
                ">" => wildcards && i + 1 == tokens.len(),
                t => !t.contains(['*', '>']),
            }
    })
}

/// NATS matching: `*` is one token, a final `>` one or more.
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut s = subject.split('.');
    for p in pattern.split('.') {
        match (p, s.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (p, Some(t)) if p == t => {}
            _ => return false,
        }
    }
    s.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_follows_nats() {
        assert!(subject_matches("a.b", "a.b"));
        assert!(!subject_matches("a.b", "a.b.c"));
        assert!(subject_matches("a.*", "a.b"));
        assert!(!subject_matches("a.*", "a.b.c"));
        assert!(subject_matches("a.>", "a.b.c"));
        assert!(!subject_matches("a.>", "a"));
        assert!(subject_matches("*.b.>", "x.b.c"));
        assert!(valid_subject("a.b", false));
        assert!(!valid_subject("a.*", false));
        assert!(valid_subject("a.*.>", true));
        assert!(!valid_subject("a.>.b", true));
        assert!(!valid_subject("a..b", true));
        assert!(!valid_subject("a b", true));
        assert!(!valid_subject("", true));
    }

    fn strings(patterns: &[&str]) -> Vec<String> {
        patterns.iter().map(|p| (*p).to_owned()).collect()
    }

    #[test]
    fn covered_patterns_go() {
        assert!(without_covered(&[]).is_empty());
        assert_eq!(without_covered(&strings(&["a.b"])), strings(&["a.b"]));
        assert_eq!(without_covered(&strings(&["a.>", "a.b", "a.*", "x.y", "x.y"])), strings(&["a.>", "x.y"]));
        assert_eq!(without_covered(&strings(&["a.b", "a.*"])), strings(&["a.*"]));
        assert_eq!(without_covered(&strings(&["a.*", "a.b"])), strings(&["a.*"]));
        assert_eq!(without_covered(&strings(&["a.b.>", "a.*.c"])), strings(&["a.b.>", "a.*.c"]), "overlap, no cover");
        assert_eq!(without_covered(&strings(&["a.*", "a.>"])), strings(&["a.>"]));
        assert_eq!(without_covered(&strings(&["a.*.>", "a.b.c", "a.b"])), strings(&["a.*.>", "a.b"]));
        assert_eq!(without_covered(&strings(&["a.>", "a"])), strings(&["a.>", "a"]), "`>` needs a token");
        assert_eq!(without_covered(&strings(&["a.*", "a.b.c", "*.*"])), strings(&["a.b.c", "*.*"]));
        assert_eq!(without_covered(&strings(&["a.b", "a.>", "a.b"])), strings(&["a.>"]));
        assert_eq!(without_covered(&strings(&[">", "a.b.c"])), strings(&[">"]));
    }
}
