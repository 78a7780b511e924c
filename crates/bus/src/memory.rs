//! The in-process bus `hermes up` uses: subscribers are channels in a list.

use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::{BoxFuture, Bus, BusError, BusMessage, Subscription, subject_matches, valid_subject};

/// How many messages a subscriber may have unread before publishers wait for it.
const SUBSCRIBER_CAPACITY: usize = 1024;

/// Pattern, queue group (if any), channel.
type Subscriber = (String, Option<String>, mpsc::Sender<BusMessage>);

#[derive(Debug, Default)]
pub struct MemoryBus {
    subscribers: Mutex<Vec<Subscriber>>,
    /// Messages each queue group had: whose turn it is among its members.
    turns: Mutex<std::collections::HashMap<String, usize>>,
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
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn memory_bus_meets_the_contract() {
        crate::contract::check(&super::MemoryBus::default()).await;
    }
}
