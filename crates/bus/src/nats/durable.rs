//! Durable subjects on NATS ([`Bus::subscribe_durable`], [`Bus::publish_durable`]): a JetStream
//! stream kept a week, which publishers store into with an acknowledgement and subscribers
//! follow by sequence number. A follower carries on after the last message it passed on when
//! its connection comes back; a stream that was lost and made again (a NATS that restarted
//! without its store, an operator who deleted it) holds only messages published since, so the
//! follower reads that one from its start.
//!
//! [`Bus::subscribe_durable`]: crate::Bus::subscribe_durable
//! [`Bus::publish_durable`]: crate::Bus::publish_durable

use std::time::Duration;

use async_nats::datetime::DateTime;
use async_nats::jetstream::{self, ErrorCode, consumer, context::GetStreamErrorKind, stream};
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};

use crate::{BusError, BusMessage, Link, Subscription};

/// How long a durable stream keeps its messages.
const MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// How often a follower checks that its stream is still the one it reads, besides each time
/// the connection comes back.
const CHECK_EVERY: Duration = Duration::from_secs(30);

/// How long a follower waits before it tries again to read a stream it could not.
const RETRY: Duration = Duration::from_secs(1);

/// Messages passed on and not yet taken by the subscriber.
const BUFFERED: usize = 256;

/// The stream `name` that keeps what is published on `subject` (a pattern).
pub(super) fn config(name: &str, subject: &str) -> stream::Config {
    stream::Config {
        name: name.to_owned(),
        subjects: vec![subject.to_owned()],
        max_age: MAX_AGE,
        storage: stream::StorageType::File,
        ..Default::default()
    }
}

fn transport(what: &str, e: &dyn std::fmt::Display) -> BusError {
    BusError::Transport(format!("jetstream {what}: {e}"))
}

/// Follows `subject` in stream `name` (made if missing) from now on, until the subscription is
/// dropped; `link` says when the connection is back.
pub(super) async fn follow(
    js: jetstream::Context,
    link: watch::Receiver<Option<Link>>,
    name: &str,
    subject: &str,
) -> Result<Subscription, BusError> {
    let mut follower = Follower { js, name: name.to_owned(), subject: subject.to_owned(), place: None, missed: false };
    let reading = follower.read().await?;
    let (tx, rx) = mpsc::channel(BUFFERED);
    tokio::spawn(follower.run(reading, link, tx));
    Ok(Subscription::new(futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) })))
}

/// Where a follower is: the stream it reads (by when it was made) and the last sequence number
/// it passed on (or had nothing to pass on up to).
#[derive(Debug, Clone, Copy)]
struct Place {
    made: DateTime,
    last: u64,
}

struct Follower {
    js: jetstream::Context,
    name: String,
    subject: String,
    place: Option<Place>,
    /// Messages may have been missed since the last one passed on: say so next.
    missed: bool,
}

/// What the follower is reading: a consumer's messages and the consumer sequence of the last.
struct Reading {
    messages: consumer::pull::Stream,
    delivered: u64,
}

impl Follower {
    /// The stream (made if missing) and a consumer of it after where this follower is: from its
    /// end the first time, after the last message passed on while it is the same stream, from
    /// its start once it was made again.
    async fn read(&mut self) -> Result<Reading, BusError> {
        let stream = self
            .js
            .get_or_create_stream(config(&self.name, &self.subject))
            .await
            .map_err(|e| transport("stream", &e))?;
        let info = stream.cached_info();
        let (made, end) = (info.created, info.state.last_sequence);
        let place = match self.place {
            None => Place { made, last: end },
            Some(p) if p.made == made => p,
            Some(_) => {
                tracing::warn!(stream = %self.name, "the durable stream was made again: reading it from its start");
                // What the old stream held past the last message passed on is gone.
                self.missed = true;
                Place { made, last: 0 }
            }
        };
        self.place = Some(place);
        let ordered = consumer::pull::OrderedConfig {
            filter_subject: self.subject.clone(),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: place.last + 1 },
            ..Default::default()
        };
        // Unacknowledged, in memory, one replica: what an ordered consumer is, renewed by this
        // follower (async-nats's own renewal would start a stream made again after the old
        // stream's last sequence).
        let consumer = stream
            .create_consumer(consumer::pull::Config::from(ordered))
            .await
            .map_err(|e| transport("consumer", &e))?;
        let messages = consumer.messages().await.map_err(|e| transport("messages", &e))?;
        Ok(Reading { messages, delivered: 0 })
    }

    /// [`Follower::read`] until it succeeds; `None` once nobody listens.
    async fn read_again(&mut self, tx: &mpsc::Sender<BusMessage>) -> Option<Reading> {
        loop {
            match self.read().await {
                Ok(reading) => return Some(reading),
                Err(e) => tracing::debug!(stream = %self.name, error = %e, "durable stream not readable yet"),
            }
            tokio::select! {
                _ = tx.closed() => return None,
                _ = tokio::time::sleep(RETRY) => {}
            }
        }
    }

    /// Whether the stream is no longer the one this follower reads (`false` when that cannot
    /// be told now).
    async fn made_again(&self) -> bool {
        let Some(place) = self.place else { return false };
        match self.js.get_stream(&self.name).await {
            Ok(stream) => stream.cached_info().created != place.made,
            Err(e) => {
                matches!(e.kind(), GetStreamErrorKind::JetStream(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND)
            }
        }
    }

    /// Passes messages on to `tx` until it is dropped, reading anew when a message went
    /// missing in between (the consumer's sequence skipped one), when the consumer is lost,
    /// when the connection is back and when the stream was made again.
    async fn run(
        mut self,
        mut reading: Reading,
        mut link: watch::Receiver<Option<Link>>,
        tx: mpsc::Sender<BusMessage>,
    ) {
        let mut check = tokio::time::interval(CHECK_EVERY);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        check.reset();
        loop {
            let read_anew = tokio::select! {
                _ = tx.closed() => return,
                message = reading.messages.next() => match message {
                    Some(Ok(m)) => match self.pass_on(&mut reading, m) {
                        Some(m) => {
                            if tx.send(m).await.is_err() {
                                return;
                            }
                            false
                        }
                        None => true,
                    },
                    Some(Err(e)) => {
                        tracing::debug!(stream = %self.name, error = %e, "durable stream consumer");
                        use consumer::pull::MessagesErrorKind as K;
                        matches!(e.kind(), K::MissingHeartbeat | K::ConsumerDeleted | K::NoResponders)
                    }
                    None => true,
                },
                // Back: the consumer may have been forgotten meanwhile (it outlives 30 s without
                // a pull only), and noticing that takes two missed heartbeats; read anew now.
                changed = link.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    matches!(*link.borrow_and_update(), Some(Link::Back(_)))
                }
                _ = check.tick() => self.made_again().await,
            };
            if read_anew {
                match self.read_again(&tx).await {
                    Some(again) => reading = again,
                    None => return,
                }
            }
            if std::mem::take(&mut self.missed) {
                let marker = BusMessage { subject: crate::MAY_HAVE_MISSED.to_owned(), payload: Default::default() };
                if tx.send(marker).await.is_err() {
                    return;
                }
            }
        }
    }

    /// `m` as a [`BusMessage`] once its place is recorded; `None` when the message before it
    /// went missing (then the follower reads again after the last one passed on).
    fn pass_on(&mut self, reading: &mut Reading, m: jetstream::Message) -> Option<BusMessage> {
        let info = m.info().ok()?;
        if info.consumer_sequence != reading.delivered + 1 {
            return None;
        }
        reading.delivered = info.consumer_sequence;
        let place = self.place.as_mut()?;
        if place.last != 0 && info.stream_sequence > place.last + 1 {
            self.missed = true;
            tracing::warn!(
                stream = %self.name,
                missed = info.stream_sequence - place.last - 1,
                "durable messages were gone (older than the stream keeps) before this follower read them"
            );
        }
        place.last = info.stream_sequence;
        Some(BusMessage { subject: m.subject.to_string(), payload: m.payload.clone() })
    }
}

/// Publishes `payload` on `subject`, stored in stream `name` (capturing `pattern`; made when
/// missing): `Ok(true)` once JetStream has it, `Ok(false)` when the server has no JetStream
/// (nothing was published).
pub(super) async fn publish(
    js: &jetstream::Context,
    name: &str,
    pattern: &str,
    subject: &str,
    payload: bytes::Bytes,
) -> Result<bool, BusError> {
    use jetstream::context::PublishErrorKind;
    // Made first, every time: without JetStream a publish awaiting its acknowledgement would
    // reach plain subscribers and then time out; and the stream may have been lost since.
    let mut tries = 0;
    loop {
        tries += 1;
        match js.get_or_create_stream(config(name, pattern)).await {
            Ok(_) => {}
            Err(e) if super::no_jetstream(&e) => return Ok(false),
            Err(e) => return Err(transport("stream", &e)),
        }
        let ack = js.publish(subject.to_owned(), payload.clone()).await.map_err(|e| transport("publish", &e))?;
        match ack.await {
            Ok(_) => return Ok(true),
            // Lost in between: made again, once.
            Err(e) if e.kind() == PublishErrorKind::StreamNotFound && tries == 1 => {}
            Err(e) => return Err(transport("publish", &e)),
        }
    }
}
