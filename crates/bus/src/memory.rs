//! The in-process bus `hermes up` uses: subscribers are channels in a list.

use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::{BoxFuture, Bus, BusError, BusMessage, Subscription, subject_matches, valid_subject};

/// How many messages a subscriber may have unread before publishers wait for it.
const SUBSCRIBER_CAPACITY: usize = 1024;

#[derive(Debug, Default)]
pub struct MemoryBus {
    subscribers: Mutex<Vec<(String, mpsc::Sender<BusMessage>)>>,
}

impl MemoryBus {
    fn matching(&self, subject: &str) -> Vec<mpsc::Sender<BusMessage>> {
        let mut subs = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        subs.retain(|(_, tx)| !tx.is_closed());
        subs.iter().filter(|(p, _)| subject_matches(p, subject)).map(|(_, tx)| tx.clone()).collect()
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
        Box::pin(async move {
            if !valid_subject(subject, true) {
                return Err(BusError::InvalidSubject(subject.to_owned()));
            }
            let (tx, rx) = mpsc::channel(SUBSCRIBER_CAPACITY);
            self.subscribers.lock().unwrap_or_else(|e| e.into_inner()).push((subject.to_owned(), tx));
            Ok(Subscription::new(ReceiverStream::new(rx)))
        })
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn memory_bus_meets_the_contract() {
        crate::contract::check(&super::MemoryBus::default()).await;
    }
}
