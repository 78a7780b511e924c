//! A dispatcher middleware for what ntex-mqtt gets wrong or lets through after the handshake:
//! - a second CONNECT is a protocol violation ([MQTT-3.1.0-2]) and closes the connection;
//! - a PUBREL for a QoS 2 PUBLISH received on an *earlier* connection of a persistent session
//!   must be answered with PUBCOMP ([MQTT-4.4.0-1]); ntex-mqtt only knows this connection's
//!   packet ids and would close the connection instead, so the client could never finish;
//! - no further packet is taken while too many of the connection's PUBLISHes wait for room
//!   (`flow::Gate`).

use std::cell::RefCell;
use std::collections::HashSet;
use std::num::NonZeroU16;
use std::ops::Deref;
use std::sync::Arc;

use ntex::service::{Ctx, Middleware, Service};
use ntex_mqtt::error::DispatcherError;
use ntex_mqtt::{MqttProtocolError, QoS, v3, v5};

use crate::connection::ConnState;
use crate::hub::Hub;
use crate::metrics as m;

/// What the guard needs to know about an inbound packet.
pub enum Inbound {
    Connect,
    Qos2Publish(NonZeroU16),
    PubRel(NonZeroU16),
    Other,
}

/// One protocol version's packet types, as the guard sees them.
pub trait GuardedPacket {
    type Reply;
    fn classify(&self) -> Inbound;
    /// The PUBCOMP answering a PUBREL the dispatcher does not know.
    fn pubcomp(packet_id: NonZeroU16, found: bool) -> Self::Reply;
    /// No answer: a packet taken while the connection shuts down is dropped.
    fn nothing() -> Self::Reply;
}

impl GuardedPacket for v3::codec::Decoded {
    type Reply = Option<v3::codec::Encoded>;

    fn classify(&self) -> Inbound {
        use v3::codec::{Decoded, Packet};
        match self {
            Decoded::Packet(Packet::Connect(_), _) => Inbound::Connect,
            Decoded::Packet(Packet::PublishRelease { packet_id }, _) => Inbound::PubRel(*packet_id),
            Decoded::Publish(p, _, _) if p.qos == QoS::ExactlyOnce => {
                p.packet_id.map_or(Inbound::Other, Inbound::Qos2Publish)
            }
            _ => Inbound::Other,
        }
    }

    fn nothing() -> Self::Reply {
        None
    }

    fn pubcomp(packet_id: NonZeroU16, _found: bool) -> Self::Reply {
        Some(v3::codec::Encoded::Packet(v3::codec::Packet::PublishComplete { packet_id }))
    }
}

impl GuardedPacket for v5::codec::Decoded {
    type Reply = Option<v5::codec::Encoded>;

    fn classify(&self) -> Inbound {
        use v5::codec::{Decoded, Packet};
        match self {
            Decoded::Packet(Packet::Connect(_), _) => Inbound::Connect,
            Decoded::Packet(Packet::PublishRelease(ack), _) => Inbound::PubRel(ack.packet_id),
            Decoded::Publish(p, _, _) if p.qos == QoS::ExactlyOnce => {
                p.packet_id.map_or(Inbound::Other, Inbound::Qos2Publish)
            }
            _ => Inbound::Other,
        }
    }

    fn nothing() -> Self::Reply {
        None
    }

    fn pubcomp(packet_id: NonZeroU16, found: bool) -> Self::Reply {
        let reason_code =
            if found { v5::codec::PublishAck2Reason::Success } else { v5::codec::PublishAck2Reason::PacketIdNotFound };
        Some(v5::codec::Encoded::Packet(v5::codec::Packet::PublishComplete(v5::codec::PublishAck2 {
            packet_id,
            reason_code,
            properties: Vec::new(),
            reason_string: None,
        })))
    }
}

#[derive(Debug, Clone, Copy)]
pub struct ProtocolGuard;

impl<S, St: Deref<Target = ConnState>> Middleware<S, St> for ProtocolGuard {
    type Service = ProtocolGuardService<S>;

    fn create(&self, st: &St, service: S) -> Self::Service {
        ProtocolGuardService {
            service,
            hub: st.hub.clone(),
            session: st.session.clone(),
            gate: st.gate.clone(),
            dispatch: st.dispatch.clone(),
            qos2_here: RefCell::new(HashSet::new()),
        }
    }
}

pub struct ProtocolGuardService<S> {
    service: S,
    hub: Arc<Hub>,
    session: Arc<str>,
    /// Counts the connection's publishes waiting for a subscriber (see `flow`): past a few, no
    /// further packet is taken, so the socket is not read.
    gate: std::rc::Rc<crate::flow::Gate>,
    /// Where handlers learn which task is the dispatcher's (it asks this service for readiness).
    dispatch: std::rc::Rc<crate::flow::Dispatch>,
    /// QoS 2 packet ids whose PUBLISH arrived on this connection (ntex-mqtt tracks these).
    qos2_here: RefCell<HashSet<NonZeroU16>>,
}

impl<S, St, Req, E> Service<St, Req> for ProtocolGuardService<S>
where
    S: Service<St, Req, Res = Req::Reply, Error = DispatcherError<E>>,
    Req: GuardedPacket,
{
    type Res = S::Res;
    type Error = S::Error;

    async fn ready(&self, ctx: Ctx<'_, Self, St>) -> Result<(), Self::Error> {
        self.dispatch.on_dispatcher();
        if !self.gate.readable().await {
            // Shutting down: the inner services must not be asked any more.
            return Ok(());
        }
        ctx.ready(&self.service).await
    }

    async fn shutdown(&self, ctx: Ctx<'_, Self, St>) {
        // First end every wait of ours, so nothing polls the inner services after this.
        self.gate.close();
        ctx.shutdown(&self.service).await
    }

    async fn call(&self, req: Req, ctx: Ctx<'_, Self, St>) -> Result<Self::Res, Self::Error> {
        if self.gate.is_closed() {
            // Shutting down (see `ready`): the inner services must not be asked any more.
            return Ok(Req::nothing());
        }
        match req.classify() {
            Inbound::Connect => {
                metrics::counter!(m::CONNECT_REFUSED, "reason" => "second_connect").increment(1);
                return Err(DispatcherError::Protocol(MqttProtocolError::generic_violation(
                    "second CONNECT on an established connection",
                )));
            }
            Inbound::Qos2Publish(id) => {
                self.qos2_here.borrow_mut().insert(id);
            }
            Inbound::PubRel(id) => {
                if !self.qos2_here.borrow_mut().remove(&id) {
                    let found = self.hub.incoming_released(&self.session, id.get());
                    return Ok(Req::pubcomp(id, found));
                }
            }
            Inbound::Other => {}
        }
        ctx.call(&self.service, req).await
    }
}
