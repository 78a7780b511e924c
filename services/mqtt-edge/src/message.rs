//! An application message as the edge routes it: one allocation per PUBLISH, shared by every
//! subscriber it goes to (payload bytes are reference-counted, never copied per delivery).

use std::sync::Arc;

use ntex_bytes::{ByteString, Bytes};
use ntex_mqtt::v5::codec::PublishProperties;

use broker::QoS;
use broker::origins::Origin;
use broker::presence::Announce;
use broker::router::Routable;
use broker::session::Deliverable;
use broker::streams::Stamp;

/// A routed message; `Arc<Message>` is what sessions queue.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: ByteString,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// v5 properties passed through to v5 subscribers (topic alias and subscription ids removed).
    pub properties: Option<Box<PublishProperties>>,
    /// Absolute expiry (v5 message-expiry-interval), milliseconds since the Unix epoch.
    pub expires_at_ms: Option<u64>,
    /// Its place in the durable stream named after its topic, if it has one.
    pub stream_at: Option<Stamp>,
    /// The edge that routed it here and its number there, when it came from another edge.
    pub origin: Option<Origin>,
}

pub type SharedMessage = Arc<Message>;

impl Message {
    pub fn new(topic: ByteString, payload: Bytes, qos: QoS, retain: bool) -> Self {
        Message { topic, payload, qos, retain, properties: None, expires_at_ms: None, stream_at: None, origin: None }
    }

    /// Seconds left before expiry, for the message-expiry-interval sent to v5 subscribers.
    pub fn remaining_secs(&self, now_ms: u64) -> Option<u32> {
        self.expires_at_ms.map(|at| (at.saturating_sub(now_ms).div_ceil(1000)).max(1) as u32)
    }
}

impl Deliverable for Message {
    fn expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|at| now_ms >= at)
    }
    fn stream_position(&self) -> Option<(&str, Stamp)> {
        self.stream_at.map(|at| (&*self.topic, at))
    }
    fn origin(&self) -> Option<&Origin> {
        self.origin.as_ref()
    }
}

impl Routable for Message {
    fn topic(&self) -> &str {
        &self.topic
    }
    fn qos(&self) -> QoS {
        self.qos
    }
    fn retain(&self) -> bool {
        self.retain
    }
    fn clears_retained(&self) -> bool {
        self.payload.is_empty()
    }
    fn payload_len(&self) -> usize {
        self.payload.len()
    }
    /// A retained QoS 1 `online` or `offline`.
    fn presence(topic: &str, news: Announce) -> Self {
        let status: &'static str = match news {
            Announce::Online => "online",
            Announce::Offline => "offline",
        };
        Message::new(ByteString::from(topic), Bytes::from_static(status.as_bytes()), QoS::AtLeastOnce, true)
    }
}

/// Milliseconds since the Unix epoch: the clock every expiry in the edge is measured on.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
