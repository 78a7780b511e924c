//! What both protocol versions do with a CONNECT, PUBLISH and SUBSCRIBE before the reply
//! differs: client-id rules, topic checks, duplicate QoS 2 detection, handing to the hub.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ntex_bytes::{ByteString, Bytes};

use broker::QoS;
use broker::topic::{TopicError, validate_name};

use crate::connection::ConnState;
use crate::hub::{Hub, SubscribeError};
use crate::message::{Message, now_ms};
use crate::metrics as m;

/// Error type of the ntex-mqtt services: the connection is closed when a handler returns it.
#[derive(Debug)]
pub struct EdgeError(pub String);

impl From<()> for EdgeError {
    fn from(_: ()) -> Self {
        EdgeError("connection closed".into())
    }
}

impl std::fmt::Display for EdgeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Server-assigned client ids for clients that sent an empty one.
pub fn assign_client_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("hermes-{:x}-{}", now_ms(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Why an inbound PUBLISH was not routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishRefusal {
    Topic(TopicError),
    /// A resent QoS 2 PUBLISH whose first copy was already routed: ack, don't route again.
    Duplicate,
}

/// An inbound PUBLISH, already read, as both versions describe it.
pub struct Inbound {
    pub topic: ByteString,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub packet_id: Option<u16>,
}

/// Validates and routes an inbound PUBLISH; `build` adds version-specific fields.
pub fn publish(st: &ConnState, inbound: Inbound, build: impl FnOnce(&mut Message)) -> Result<usize, PublishRefusal> {
    metrics::counter!(m::PACKETS_IN, "type" => "publish").increment(1);
    metrics::counter!(m::PUBLISH_BYTES_IN).increment(inbound.payload.len() as u64);
    if let Err(e) = validate_name(&inbound.topic, &st.hub.config().topic) {
        metrics::counter!(m::PUBLISH_REFUSED, "reason" => "topic").increment(1);
        return Err(PublishRefusal::Topic(e));
    }
    if inbound.qos == QoS::ExactlyOnce
        && let Some(id) = inbound.packet_id
        && !st.hub.incoming_qos2(&st.client_id, id)
    {
        return Err(PublishRefusal::Duplicate);
    }
    let mut msg = Message::new(inbound.topic, inbound.payload, inbound.qos, inbound.retain);
    build(&mut msg);
    let started = std::time::Instant::now();
    let n = st.hub.publish(Arc::new(msg), Some(&st.client_id), now_ms());
    metrics::histogram!(m::ROUTE_SECONDS).record(started.elapsed().as_secs_f64());
    Ok(n)
}

/// Validates a will before the session exists; returns the message to keep.
pub fn will_message(
    hub: &Hub,
    topic: &ByteString,
    payload: &Bytes,
    qos: QoS,
    retain: bool,
) -> Result<Message, TopicError> {
    validate_name(topic, &hub.config().topic)?;
    Ok(Message::new(topic.clone(), payload.clone(), qos, retain))
}

/// Logs a refused SUBSCRIBE entry (the SUBACK carries the code to the client).
pub fn log_refused(st: &ConnState, filter: &str, e: SubscribeError) {
    tracing::debug!(client_id = %st.client_id, topic = %filter, error = ?e, "subscription refused");
}
