//! The production bus: NATS core publish/subscribe through async-nats.

use bytes::Bytes;
use futures_util::StreamExt;

use crate::{BoxFuture, Bus, BusError, BusMessage, Subscription, valid_subject};

/// How long a durable stream keeps its messages.
const DURABLE_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, Clone)]
pub struct NatsBus {
    client: async_nats::Client,
}

impl NatsBus {
    /// Connects to `url` (e.g. `nats://127.0.0.1:4222`); async-nats reconnects by itself.
    pub async fn connect(url: &str) -> Result<NatsBus, BusError> {
        let client = async_nats::connect(url).await.map_err(|e| BusError::Transport(format!("{url}: {e}")))?;
        Ok(NatsBus { client })
    }
}

impl NatsBus {
    /// `sub` as a [`Subscription`], once the server knows about it.
    async fn held(&self, sub: async_nats::Subscriber) -> Result<Subscription, BusError> {
        self.client.flush().await.map_err(|e| BusError::Transport(e.to_string()))?;
        Ok(Subscription::new(sub.map(|m| BusMessage { subject: m.subject.to_string(), payload: m.payload })))
    }
}

impl Bus for NatsBus {
    fn publish<'a>(&'a self, subject: &'a str, payload: Bytes) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            if !valid_subject(subject, false) {
                return Err(BusError::InvalidSubject(subject.to_owned()));
            }
            self.client.publish(subject.to_owned(), payload).await.map_err(|e| BusError::Transport(e.to_string()))?;
            // Out of the client's buffer before we report success.
            self.client.flush().await.map_err(|e| BusError::Transport(e.to_string()))
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
            for (subject, payload) in batch {
                self.client
                    .publish(subject.clone(), payload.clone())
                    .await
                    .map_err(|e| BusError::Transport(e.to_string()))?;
            }
            self.client.flush().await.map_err(|e| BusError::Transport(e.to_string()))
        })
    }

    fn subscribe_durable<'a>(
        &'a self,
        stream: &'a str,
        subject: &'a str,
    ) -> BoxFuture<'a, Result<Subscription, BusError>> {
        use async_nats::jetstream::{self, consumer, stream as js_stream};
        Box::pin(async move {
            if !valid_subject(subject, true) {
                return Err(BusError::InvalidSubject(subject.to_owned()));
            }
            let err = |what: &str, e: &dyn std::fmt::Display| BusError::Transport(format!("jetstream {what}: {e}"));
            let js = jetstream::new(self.client.clone());
            let config = js_stream::Config {
                name: stream.to_owned(),
                subjects: vec![subject.to_owned()],
                max_age: DURABLE_MAX_AGE,
                storage: js_stream::StorageType::File,
                ..Default::default()
            };
            let stream = js.get_or_create_stream(config).await.map_err(|e| err("stream", &e))?;
            let ordered = consumer::pull::OrderedConfig {
                filter_subject: subject.to_owned(),
                deliver_policy: consumer::DeliverPolicy::New,
                ..Default::default()
            };
            let consumer = stream.create_consumer(ordered).await.map_err(|e| err("consumer", &e))?;
            let messages = consumer.messages().await.map_err(|e| err("messages", &e))?;
            // Gaps and lost connections are the ordered consumer's to mend (it starts again
            // after the last message it gave); what it reports meanwhile is only logged.
            Ok(Subscription::new(messages.filter_map(|m| {
                std::future::ready(match m {
                    Ok(m) => Some(BusMessage { subject: m.subject.to_string(), payload: m.payload.clone() }),
                    Err(e) => {
                        tracing::debug!(error = %e, "jetstream ordered consumer");
                        None
                    }
                })
            })))
        })
    }

    fn subscribe_queue<'a>(
        &'a self,
        subject: &'a str,
        queue: &'a str,
    ) -> BoxFuture<'a, Result<Subscription, BusError>> {
        Box::pin(async move {
            if !valid_subject(subject, true) || !valid_subject(queue, false) {
                return Err(BusError::InvalidSubject(format!("{subject} (queue {queue})")));
            }
            let sub = self.client.queue_subscribe(subject.to_owned(), queue.to_owned()).await;
            self.held(sub.map_err(|e| BusError::Transport(e.to_string()))?).await
        })
    }

    fn subscribe<'a>(&'a self, subject: &'a str) -> BoxFuture<'a, Result<Subscription, BusError>> {
        Box::pin(async move {
            if !valid_subject(subject, true) {
                return Err(BusError::InvalidSubject(subject.to_owned()));
            }
            let sub = self.client.subscribe(subject.to_owned()).await;
            self.held(sub.map_err(|e| BusError::Transport(e.to_string()))?).await
        })
    }
}
