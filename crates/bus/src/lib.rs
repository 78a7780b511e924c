//! The bus between Hermes services (design §2, §6): subject-addressed publish/subscribe.
//! [`nats::NatsBus`] in production, [`memory::MemoryBus`] when everything runs in one process.
//! Subjects follow NATS rules: dot-separated tokens, `*` matches one token, `>` the rest.
//! [`contract::check`] is what both must do.

pub mod contract;
pub mod memory;
pub mod nats;

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One message as a subscriber receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusMessage {
    pub subject: String,
    pub payload: Bytes,
}

#[derive(Debug, thiserror::Error)]
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

/// Publish/subscribe by subject.
pub trait Bus: Send + Sync + std::fmt::Debug + 'static {
    fn publish<'a>(&'a self, subject: &'a str, payload: Bytes) -> BoxFuture<'a, Result<(), BusError>>;
    fn subscribe<'a>(&'a self, subject: &'a str) -> BoxFuture<'a, Result<Subscription, BusError>>;
    /// Like [`Bus::subscribe`], as a member of queue group `queue` (a concrete subject-like
    /// name): each message goes to one member of the group, wherever its members are.
    fn subscribe_queue<'a>(&'a self, subject: &'a str, queue: &'a str)
    -> BoxFuture<'a, Result<Subscription, BusError>>;

    /// Messages on `subject` (a pattern) that the bus keeps for subscribers that were away:
    /// from now on, and after a lost connection, from where this subscription left off (NATS:
    /// a JetStream stream named `stream` capturing `subject`, kept a week, read by an ordered
    /// consumer). The in-process bus is never away: a plain subscription.
    fn subscribe_durable<'a>(
        &'a self,
        stream: &'a str,
        subject: &'a str,
    ) -> BoxFuture<'a, Result<Subscription, BusError>> {
        let _ = stream;
        self.subscribe(subject)
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
}
