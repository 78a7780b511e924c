//! One live connection on its ntex worker: the state its handlers share, the task that writes
//! the hub's deliveries to the socket, and the clean-up when the connection ends.

use std::cell::Cell;
use std::future::Future;
use std::num::NonZeroU16;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;

use ntex_bytes::ByteString;
use ntex_mqtt::error::SendPacketError;
use ntex_mqtt::{v3, v5};

use broker::QoS;
use broker::alias::{Alias, TopicAliases};

use crate::auth::Identity;
use crate::authz::Authorizer;
use crate::hub::{CloseReason, Delivery, Hub};
use crate::link::{ConnInbox, Next};
use crate::message::now_ms;
use crate::metrics as m;
use crate::server::EdgeShared;

/// State of one connection, shared by its publish and protocol handlers.
///
/// Dropping it (ntex drops the session when the connection ends, however it ends) tells the
/// hub, which then publishes or schedules the will and keeps or ends the session.
#[derive(Debug)]
pub struct ConnState {
    /// The session's key in the hub (owner and client id).
    pub session: Arc<str>,
    pub client_id: Arc<str>,
    pub link_id: u64,
    pub hub: Arc<Hub>,
    pub identity: Arc<Identity>,
    pub authz: Arc<Authorizer>,
    /// The largest PUBLISH packet it may send, header included: `limits.max_packet_size`, or
    /// less in a cluster ([`crate::cluster::ClusterLink::packet_room`]).
    pub max_packet_size: u32,
    /// `limits.max_stall_secs`.
    pub max_stall: std::time::Duration,
    /// Who this connection's publishes are stamped with.
    pub sender: crate::sender::Sender,
    /// Keeps this connection's PUBLISHes routed in arrival order.
    pub line: std::rc::Rc<crate::flow::Line>,
    /// Keeps them appended to their durable streams in arrival order (ahead of `line`: a
    /// PUBLISH is handed to its stream while earlier ones still wait for their place).
    pub appends: std::rc::Rc<crate::flow::Line>,
    /// How ntex-mqtt runs this connection's handlers (see `flow::Dispatch`).
    pub dispatch: std::rc::Rc<crate::flow::Dispatch>,
    /// Closed while a publish waits for a subscriber to catch up.
    pub gate: std::rc::Rc<crate::flow::Gate>,
    /// A DISCONNECT without "send will" was received.
    graceful: Cell<bool>,
    /// Session expiry sent in a v5 DISCONNECT.
    expiry_override: Cell<Option<u32>>,
}

/// The largest PUBLISH packet a client stamped as `sender` may send: `limits.max_packet_size`,
/// or less on an edge of a cluster, so that the bus carries it to the other edges.
fn packet_limit(edge: &EdgeShared, sender: &crate::sender::Sender) -> u32 {
    let limit = edge.cfg.limits.max_packet_size;
    edge.hub.cluster().map_or(limit, |c| c.packet_room(sender.names_len(), limit))
}

impl ConnState {
    pub fn new(
        session: Arc<str>,
        client_id: Arc<str>,
        link_id: u64,
        edge: &EdgeShared,
        identity: Arc<Identity>,
    ) -> Self {
        let sender = crate::sender::Sender::of(&identity);
        ConnState {
            session,
            client_id,
            link_id,
            hub: edge.hub.clone(),
            identity,
            authz: edge.authz.clone(),
            max_packet_size: packet_limit(edge, &sender),
            max_stall: std::time::Duration::from_secs(u64::from(edge.cfg.limits.max_stall_secs)),
            sender,
            line: std::rc::Rc::default(),
            appends: std::rc::Rc::default(),
            dispatch: std::rc::Rc::default(),
            gate: std::rc::Rc::default(),
            graceful: Cell::new(false),
            expiry_override: Cell::new(None),
        }
    }

    pub fn disconnected_gracefully(&self, expiry_secs: Option<u32>) {
        self.graceful.set(true);
        self.expiry_override.set(expiry_secs);
    }

    /// A v5 DISCONNECT 0x04: close normally but publish the will.
    pub fn disconnected_with_will(&self, expiry_secs: Option<u32>) {
        self.expiry_override.set(expiry_secs);
    }
}

impl Drop for ConnState {
    fn drop(&mut self) {
        self.hub.disconnect(&self.session, self.link_id, self.graceful.get(), self.expiry_override.get(), now_ms());
    }
}

/// The write side of a connection, either protocol version; a v5 one with the client's
/// Maximum Packet Size (`u32::MAX` if it set none).
#[derive(Clone)]
pub enum Sink {
    V3(v3::MqttSink),
    V5(v5::MqttSink, u32),
}

impl Sink {
    /// Waits until the connection can take another packet: the CONNACK has been written, the
    /// in-flight cap has room, and write back-pressure is off. False when the connection is gone.
    async fn ready(&self) -> bool {
        match self {
            Sink::V3(s) => s.ready().await,
            Sink::V5(s, _) => s.ready().await,
        }
    }

    /// Closes the connection for `reason`; a v5 client told the server stops is named another
    /// (`elsewhere`, Server Reference) if one is known.
    fn close(&self, reason: CloseReason, elsewhere: Option<String>) {
        match self {
            // v3 has no DISCONNECT from the server: the connection is simply closed.
            Sink::V3(s) => s.close(),
            Sink::V5(s, max_packet_size) => {
                let (code, text) = match reason {
                    CloseReason::SessionTakenOver => (
                        v5::codec::DisconnectReasonCode::SessionTakenOver,
                        "another connection took over this client id",
                    ),
                    CloseReason::ServerShuttingDown => {
                        (v5::codec::DisconnectReasonCode::ServerShuttingDown, "server shutting down")
                    }
                    CloseReason::SlowConsumer => (
                        v5::codec::DisconnectReasonCode::QuotaExceeded,
                        "too many undelivered messages: the client reads too slowly",
                    ),
                    CloseReason::Revoked => (
                        v5::codec::DisconnectReasonCode::AdministrativeAction,
                        "the user was disabled or their access token revoked",
                    ),
                };
                let mut pkt = v5::codec::Disconnect::new(code);
                pkt.reason_string = Some(ByteString::from_static(text));
                // The encoder leaves the reason string out where it does not fit, not this.
                pkt.server_reference = elsewhere.filter(|r| reference_fits(r, *max_packet_size)).map(ByteString::from);
                s.close_with_reason(pkt);
            }
        }
    }
}

/// Whether a v5 DISCONNECT naming `reference` (its Server Reference, and no other property)
/// fits in `max_packet_size` bytes as the encoder counts: it allows the fixed header its
/// longest, 5 bytes, and refuses a packet that does not fit (the connection then just closes).
pub(crate) fn reference_fits(reference: &str, max_packet_size: u32) -> bool {
    let length_size = |n: usize| match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    let properties = 1 + 2 + reference.len();
    let remaining = 1 + length_size(properties) + properties;
    let room = if max_packet_size > 5 { max_packet_size - 5 } else { max_packet_size };
    remaining <= usize::try_from(room).unwrap_or(usize::MAX)
}

/// Where a client came from, for a stopping edge to name it another edge it can reach the
/// same way (`peers`).
#[derive(Debug, Clone, Copy)]
pub struct Came {
    /// The kind of listener: a client is named another edge's listener of the same kind
    /// (named a plain one, a client on TLS could send its token in the clear).
    pub on: crate::connect::Listener,
    /// The client is on loopback: it may be named a loopback address.
    pub from_loopback: bool,
}

impl Came {
    /// The edge to name to this client as this one stops: the next other edge heard from
    /// with a listener of the kind it came to, if any (`peers`).
    pub fn elsewhere(self, hub: &Hub) -> Option<String> {
        let now = std::time::Instant::now();
        hub.cluster().and_then(|c| c.peers().next(now, self.on, self.from_loopback))
    }
}

/// Runs on the connection's worker until the connection ends: writes each delivery the hub
/// sends, and closes the connection when the hub asks to.
///
/// `topic_alias_max` is the v5 client's Topic Alias Maximum: topics it has seen on this
/// connection are then sent as aliases. A stopping edge names another to it where it `came`.
pub fn spawn_delivery_task(
    sink: Sink,
    inbox: ConnInbox,
    hub: Arc<Hub>,
    session: Arc<str>,
    link_id: u64,
    topic_alias_max: u16,
    came: Came,
) {
    // The connection's PUBLISHes wait for the journal on this worker.
    crate::relay::start_here();
    ntex::rt::spawn(async move {
        let mut aliases = TopicAliases::new(topic_alias_max);
        loop {
            match inbox.next().await {
                // Boxed so the idle task stays small: only a delivery in progress needs the space.
                Next::Deliver(d) => Box::pin(deliver(&sink, d, &hub, &session, link_id, &mut aliases)).await,
                Next::Close(reason) => {
                    let elsewhere = match reason {
                        CloseReason::ServerShuttingDown => came.elsewhere(&hub),
                        _ => None,
                    };
                    sink.close(reason, elsewhere);
                    break;
                }
                Next::Stop => break,
            }
        }
    });
}

/// Writes one delivery. QoS 1/2 packets are written at once (so order is kept) and their
/// acknowledgement is awaited on a task of its own, so the in-flight window stays full.
async fn deliver(
    sink: &Sink,
    d: Delivery,
    hub: &Arc<Hub>,
    client_id: &Arc<str>,
    link_id: u64,
    aliases: &mut TopicAliases,
) {
    // Waiting here (not writing into an ever-growing buffer) is what lets a slow reader's
    // channel fill up, so the hub can close it instead of holding up everyone else.
    if !sink.ready().await {
        return;
    }
    let now = now_ms();
    let qos = d.qos;
    hub.hot.deliveries[qos as usize].increment(1);
    if qos == QoS::AtMostOnce {
        let res = match sink {
            Sink::V3(s) => v3_builder(s, &d).send_at_most_once(d.msg.payload.clone()),
            Sink::V5(s, _) => v5_builder(s, &d, now, aliases).send_at_most_once(d.msg.payload.clone()),
        };
        match res {
            Ok(()) => hub.sent_qos0(),
            Err(e) => {
                metrics::counter!(m::DELIVERY_FAILURES).increment(1);
                tracing::debug!(client_id = %client_id, error = %e, "QoS 0 delivery failed");
            }
        }
        return;
    }
    let Some(packet_id) = d.packet_id else {
        return;
    };
    let flow = AckFlow {
        hub: hub.clone(),
        client_id: client_id.clone(),
        link_id,
        packet_id,
        started: std::time::Instant::now(),
    };
    let payload = d.msg.payload.clone();
    match (sink, qos) {
        (Sink::V3(s), QoS::AtLeastOnce) => start(flow.qos1(v3_builder(s, &d).send_at_least_once(payload))).await,
        (Sink::V5(s, _), QoS::AtLeastOnce) => {
            let b = v5_builder(s, &d, now, aliases);
            start(flow.qos1(async move { b.send_at_least_once(payload).await.map(|_| ()) })).await
        }
        (Sink::V3(s), _) => {
            let b = v3_builder(s, &d);
            start(flow.qos2(async move {
                let rec = b.send_exactly_once(payload).await?;
                Ok(async move { rec.release().await })
            }))
            .await
        }
        (Sink::V5(s, _), _) => {
            let b = v5_builder(s, &d, now, aliases);
            start(flow.qos2(async move {
                let rec = b.send_exactly_once(payload).await?;
                Ok(async move { rec.release().await })
            }))
            .await
        }
    }
}

/// Polls `fut` once here (which writes the packet, keeping delivery order), then lets a task
/// of its own wait for the acknowledgement.
async fn start(fut: impl Future<Output = ()> + 'static) {
    let mut fut = Box::pin(fut);
    let first = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
    if first.is_pending() {
        ntex::rt::spawn(fut);
    }
}

/// Reports the acknowledgement of one QoS 1/2 delivery back to the hub.
struct AckFlow {
    hub: Arc<Hub>,
    client_id: Arc<str>,
    link_id: u64,
    packet_id: NonZeroU16,
    started: std::time::Instant,
}

impl AckFlow {
    async fn qos1(self, send: impl Future<Output = Result<(), SendPacketError>>) {
        let res = send.await;
        self.finish(res);
    }

    async fn qos2<R>(self, send: impl Future<Output = Result<R, SendPacketError>>)
    where
        R: Future<Output = Result<(), SendPacketError>>,
    {
        // A message already past PUBREC before a reconnect is resent as a PUBLISH with DUP set
        // (ntex-mqtt cannot send a bare PUBREL); a conforming receiver answers PUBREC again
        // without redelivering it to the application.
        match pin!(send).await {
            Ok(release) => {
                self.hub.received(&self.client_id, self.packet_id);
                let res = release.await;
                self.finish(res);
            }
            Err(e) => self.finish(Err(e)),
        }
    }

    fn finish(self, res: Result<(), SendPacketError>) {
        match res {
            Ok(()) => {
                self.hub.hot.ack_seconds.record(self.started.elapsed().as_secs_f64());
                self.hub.complete(&self.client_id, self.link_id, self.packet_id, now_ms());
            }
            Err(e @ SendPacketError::Encode(_)) => {
                // The packet can never be sent (e.g. larger than the client's maximum packet
                // size, v5 §3.1.2.11.4): discard it instead of retrying forever.
                metrics::counter!(m::DELIVERY_FAILURES).increment(1);
                tracing::warn!(client_id = %self.client_id, error = %e, "delivery discarded");
                self.hub.complete(&self.client_id, self.link_id, self.packet_id, now_ms());
            }
            // Connection gone: the message stays in flight and is resent on reconnect.
            Err(_) => {}
        }
    }
}

pub fn from_ntex_qos(q: ntex_mqtt::QoS) -> QoS {
    match q {
        ntex_mqtt::QoS::AtMostOnce => QoS::AtMostOnce,
        ntex_mqtt::QoS::AtLeastOnce => QoS::AtLeastOnce,
        ntex_mqtt::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

fn v3_builder(s: &v3::MqttSink, d: &Delivery) -> v3::PublishBuilder {
    let mut b = s.publish(d.msg.topic.clone()).dup(d.dup);
    if d.retain {
        b = b.retain();
    }
    if let Some(id) = d.packet_id {
        b = b.packet_id(id.get());
    }
    b
}

fn v5_builder(s: &v5::MqttSink, d: &Delivery, now: u64, aliases: &mut TopicAliases) -> v5::PublishBuilder {
    let alias = aliases.alias(&d.msg.topic);
    let topic = match alias {
        Alias::Use(_) => {
            metrics::counter!(m::TOPIC_ALIAS_BYTES_SAVED).increment(d.msg.topic.len() as u64);
            ByteString::new()
        }
        Alias::None | Alias::Bind(_) => d.msg.topic.clone(),
    };
    let mut b = s.publish(topic).dup(d.dup).retain(d.retain);
    if let Some(id) = d.packet_id {
        b = b.packet_id(id.get());
    }
    let expiry = d.msg.remaining_secs(now);
    let has_props =
        d.msg.properties.is_some() || expiry.is_some() || !d.subscription_ids.is_empty() || alias != Alias::None;
    if has_props {
        b = b.properties(|p| {
            if let Some(props) = &d.msg.properties {
                *p = (**props).clone();
            }
            p.message_expiry_interval = expiry.and_then(std::num::NonZeroU32::new);
            p.subscription_ids = d.subscription_ids.iter().filter_map(|i| std::num::NonZeroU32::new(*i)).collect();
            p.topic_alias = match alias {
                Alias::Bind(a) | Alias::Use(a) => std::num::NonZeroU16::new(a),
                Alias::None => None,
            };
        });
    }
    b
}
