//! The in-process bus `hermes up` uses: subscribers are channels in a list.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::{
    BoxFuture, Bus, BusError, BusMessage, GroupSubscription, KeepConfig, KeptMessage, Replay, Subscription, Taken,
    now_ms, subject_matches, valid_subject,
};

/// How many messages a subscriber may have unread before publishers wait for it.
const SUBSCRIBER_CAPACITY: usize = 1024;

/// Pattern, queue group (if any), channel.
type Subscriber = (String, Option<String>, mpsc::Sender<BusMessage>);

#[derive(Debug, Default)]
pub struct MemoryBus {
    subscribers: Mutex<Vec<Subscriber>>,
    /// Messages each queue group had: whose turn it is among its members.
    turns: Mutex<std::collections::HashMap<String, usize>>,
    kept: Mutex<Kept>,
    /// Groups of [`Bus::subscribe_group`], by name.
    groups: Groups,
}

/// A group's filters and wait, its members, and whose turn it is.
#[derive(Debug, Default)]
struct Group {
    filters: Vec<String>,
    ack_wait: std::time::Duration,
    members: Vec<mpsc::UnboundedSender<Taken>>,
    turn: usize,
}

type Groups = std::sync::Arc<Mutex<std::collections::HashMap<String, Group>>>;

/// Hands `message` to a member of group `name` (in turn), and again to one after its wait if it
/// is not acknowledged by then; kept while the group has no member (checked at each wait)
/// until `until`, when the bus would no longer keep it.
fn hand_to_group(groups: Groups, name: String, message: BusMessage, redelivered: bool, until: tokio::time::Instant) {
    if tokio::time::Instant::now() >= until {
        return;
    }
    let (settled, answer) = tokio::sync::oneshot::channel::<bool>();
    let wait = {
        let mut all = groups.lock().unwrap_or_else(|e| e.into_inner());
        let Some(group) = all.get_mut(&name) else { return };
        group.members.retain(|m| !m.is_closed());
        let settle = move |done: bool| -> BoxFuture<'static, Result<(), BusError>> {
            let _ = settled.send(done);
            Box::pin(std::future::ready(Ok(())))
        };
        let taken = Taken::new(message.clone(), redelivered, settle);
        if !group.members.is_empty() {
            let n = group.turn % group.members.len();
            group.turn = group.turn.wrapping_add(1);
            let _ = group.members[n].send(taken);
        }
        group.ack_wait
    };
    tokio::spawn(async move {
        match tokio::time::timeout(wait, answer).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                tokio::time::sleep(GIVEN_BACK_DELAY.min(wait)).await;
                hand_to_group(groups, name, message, true, until);
            }
            // Not acknowledged in time (or dropped unsettled): to a member again.
            Ok(Err(_)) | Err(_) => hand_to_group(groups, name, message, true, until),
        }
    });
}

/// How long a message given back to its group waits before it goes to a member again.
const GIVEN_BACK_DELAY: std::time::Duration = std::time::Duration::from_millis(500);

/// What [`Bus::keep`] asked for, and the messages kept under it, oldest first.
#[derive(Debug, Default)]
struct Kept {
    config: Option<KeepConfig>,
    messages: VecDeque<KeptMessage>,
    /// Subject and payload bytes of `messages`.
    bytes: u64,
}

impl Kept {
    /// Drops the messages older than the config's age, then the oldest past its size.
    fn prune(&mut self, now_ms: u64) {
        let Some(config) = &self.config else { return };
        let max_age = u64::try_from(config.max_age.as_millis()).unwrap_or(u64::MAX);
        while let Some(oldest) = self.messages.front()
            && (now_ms.saturating_sub(oldest.at_ms) > max_age || self.bytes > config.max_bytes)
        {
            self.bytes -= size(oldest);
            self.messages.pop_front();
        }
    }
}

/// What a kept message counts against [`KeepConfig::max_bytes`].
fn size(m: &KeptMessage) -> u64 {
    (m.subject.len() + m.payload.len()) as u64
}

impl MemoryBus {
    /// The subscribers a message on `subject` goes to: every plain one, and one member of each
    /// queue group (in turn).
    fn matching(&self, subject: &str) -> Vec<mpsc::Sender<BusMessage>> {
        let mut subs = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        subs.retain(|(_, _, tx)| !tx.is_closed());
        let mut out = Vec::new();
        let mut groups: std::collections::BTreeMap<&str, Vec<&mpsc::Sender<BusMessage>>> = Default::default();
        for (_, queue, tx) in subs.iter().filter(|(p, _, _)| subject_matches(p, subject)) {
            match queue {
                Some(q) => groups.entry(q.as_str()).or_default().push(tx),
                None => out.push(tx.clone()),
            }
        }
        let mut turns = self.turns.lock().unwrap_or_else(|e| e.into_inner());
        for (queue, members) in groups {
            let n = turns.entry(queue.to_owned()).or_default();
            out.push(members[*n % members.len()].clone());
            *n = n.wrapping_add(1);
        }
        out
    }

    fn add(&self, subject: &str, queue: Option<&str>) -> Result<Subscription, BusError> {
        if !valid_subject(subject, true) {
            return Err(BusError::InvalidSubject(subject.to_owned()));
        }
        if let Some(q) = queue.filter(|q| !valid_subject(q, false)) {
            return Err(BusError::InvalidSubject(format!("{subject} (queue {q})")));
        }
        let (tx, rx) = mpsc::channel(SUBSCRIBER_CAPACITY);
        let entry = (subject.to_owned(), queue.map(str::to_owned), tx);
        self.subscribers.lock().unwrap_or_else(|e| e.into_inner()).push(entry);
        Ok(Subscription::new(ReceiverStream::new(rx)))
    }
}

impl Bus for MemoryBus {
    fn publish<'a>(&'a self, subject: &'a str, payload: Bytes) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            if !valid_subject(subject, false) {
                return Err(BusError::InvalidSubject(subject.to_owned()));
            }
            for tx in self.matching(subject) {
                // Lossless in process: a full subscriber holds the publisher up; a gone one is skipped.
                let _ = tx.send(BusMessage { subject: subject.to_owned(), payload: payload.clone() }).await;
            }
            Ok(())
        })
    }

    fn publish_to_present<'a>(&'a self, subject: &'a str, payload: Bytes) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            if valid_subject(subject, false) && self.matching(subject).is_empty() {
                return Err(BusError::NoSubscriber(subject.to_owned()));
            }
            self.publish(subject, payload).await
        })
    }

    fn subscribe<'a>(&'a self, subject: &'a str) -> BoxFuture<'a, Result<Subscription, BusError>> {
        Box::pin(std::future::ready(self.add(subject, None)))
    }

    fn subscribe_queue<'a>(
        &'a self,
        subject: &'a str,
        queue: &'a str,
    ) -> BoxFuture<'a, Result<Subscription, BusError>> {
        Box::pin(std::future::ready(self.add(subject, Some(queue))))
    }

    fn keep<'a>(&'a self, config: &'a KeepConfig) -> BoxFuture<'a, Result<bool, BusError>> {
        Box::pin(async move {
            if let Some(bad) = config.invalid_subject() {
                return Err(BusError::InvalidSubject(bad.to_owned()));
            }
            let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
            kept.config = Some(config.clone());
            kept.prune(now_ms());
            Ok(true)
        })
    }

    fn publish_batch_kept<'a>(&'a self, batch: &'a [(String, Bytes, bool)]) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            if let Some((bad, ..)) = batch.iter().find(|(s, ..)| !valid_subject(s, false)) {
                return Err(BusError::InvalidSubject(bad.clone()));
            }
            for (subject, payload, keep) in batch {
                if *keep {
                    let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(max_age) = kept.config.as_ref().filter(|c| c.holds(subject)).map(|c| c.max_age) {
                        let until = tokio::time::Instant::now() + max_age;
                        let groups: Vec<String> = {
                            let all = self.groups.lock().unwrap_or_else(|e| e.into_inner());
                            let matching = |g: &Group| g.filters.iter().any(|f| subject_matches(f, subject));
                            all.iter().filter(|(_, g)| matching(g)).map(|(name, _)| name.clone()).collect()
                        };
                        for name in groups {
                            let message = BusMessage { subject: subject.clone(), payload: payload.clone() };
                            hand_to_group(self.groups.clone(), name, message, false, until);
                        }
                        let message =
                            KeptMessage { subject: subject.clone(), payload: payload.clone(), at_ms: now_ms() };
                        kept.bytes += size(&message);
                        kept.messages.push_back(message);
                        kept.prune(now_ms());
                    }
                }
                self.publish(subject, payload.clone()).await?;
            }
            Ok(())
        })
    }

    fn subscribe_group<'a>(
        &'a self,
        group: &'a str,
        filters: &'a [String],
        ack_wait: std::time::Duration,
    ) -> BoxFuture<'a, Result<Option<GroupSubscription>, BusError>> {
        Box::pin(async move {
            crate::check_group(group, filters)?;
            if self.kept.lock().unwrap_or_else(|e| e.into_inner()).config.is_none() {
                return Ok(None);
            }
            let (tx, rx) = mpsc::unbounded_channel();
            let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
            let joined = groups.entry(group.to_owned()).or_default();
            // As a NATS consumer: the last member to join sets the filters and the wait.
            joined.filters = filters.to_vec();
            joined.ack_wait = ack_wait;
            joined.members.push(tx);
            Ok(Some(GroupSubscription::new(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))))
        })
    }

    fn replay_kept<'a>(&'a self, filters: &'a [String], since_ms: u64) -> BoxFuture<'a, Result<Replay, BusError>> {
        Box::pin(async move {
            if let Some(bad) = filters.iter().find(|f| !valid_subject(f, true)) {
                return Err(BusError::InvalidSubject(bad.clone()));
            }
            let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
            kept.prune(now_ms());
            let replayed: Vec<Result<KeptMessage, BusError>> = kept
                .messages
                .iter()
                .filter(|m| m.at_ms >= since_ms && filters.iter().any(|f| subject_matches(f, &m.subject)))
                .map(|m| Ok(m.clone()))
                .collect();
            Ok(Replay::new(futures_util::stream::iter(replayed)))
        })
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn memory_bus_meets_the_contract() {
        crate::contract::check(&super::MemoryBus::default()).await;
    }

    #[tokio::test]
    async fn memory_bus_keeps_and_replays() {
        crate::contract::check_kept(&super::MemoryBus::default()).await;
    }

    #[tokio::test]
    async fn the_oldest_kept_go_first_past_the_size() {
        use crate::{Bus, KeepConfig};
        use bytes::Bytes;
        let bus = super::MemoryBus::default();
        let config = KeepConfig {
            stream: "K".into(),
            subjects: vec!["k.>".into()],
            max_age: std::time::Duration::from_secs(60),
            max_bytes: 10,
            memory: true,
        };
        assert!(bus.keep(&config).await.expect("keep"));
        let batch: Vec<(String, Bytes, bool)> =
            (0..3u8).map(|i| (format!("k.{i}"), Bytes::from(vec![i; 2]), true)).collect();
        bus.publish_batch_kept(&batch).await.expect("batch");
        let mut replay = bus.replay_kept(&["k.>".into()], 0).await.expect("replay");
        let mut got = Vec::new();
        while let Some(m) = replay.next().await {
            got.push(m.expect("in process").subject);
        }
        assert_eq!(got, ["k.1", "k.2"], "5 bytes each, 10 at most");
    }
}
