//! A dispatcher middleware that enforces what ntex-mqtt lets through after the handshake:
//! a second CONNECT is a protocol violation ([MQTT-3.1.0-2]) and closes the connection.

use ntex::service::{Ctx, Middleware, Service};
use ntex_mqtt::MqttProtocolError;
use ntex_mqtt::error::DispatcherError;

/// Packets the guard inspects, for either protocol version.
pub trait InboundPacket {
    fn is_connect(&self) -> bool;
}

impl InboundPacket for ntex_mqtt::v3::codec::Decoded {
    fn is_connect(&self) -> bool {
        matches!(self, ntex_mqtt::v3::codec::Decoded::Packet(ntex_mqtt::v3::codec::Packet::Connect(_), _))
    }
}

impl InboundPacket for ntex_mqtt::v5::codec::Decoded {
    fn is_connect(&self) -> bool {
        matches!(self, ntex_mqtt::v5::codec::Decoded::Packet(ntex_mqtt::v5::codec::Packet::Connect(_), _))
    }
}

#[derive(Debug, Clone, Copy)]
pub struct ProtocolGuard;

impl<S, St> Middleware<S, St> for ProtocolGuard {
    type Service = ProtocolGuardService<S>;

    fn create(&self, _: &St, service: S) -> Self::Service {
        ProtocolGuardService { service }
    }
}

#[derive(Debug)]
pub struct ProtocolGuardService<S> {
    service: S,
}

impl<S, St, Req, E> Service<St, Req> for ProtocolGuardService<S>
where
    S: Service<St, Req, Error = DispatcherError<E>>,
    Req: InboundPacket,
{
    type Res = S::Res;
    type Error = S::Error;

    ntex::forward_ready!(St, service);
    ntex::forward_shutdown!(St, service);

    async fn call(&self, req: Req, ctx: Ctx<'_, Self, St>) -> Result<Self::Res, Self::Error> {
        if req.is_connect() {
            metrics::counter!(crate::metrics::CONNECT_REFUSED, "reason" => "second_connect").increment(1);
            return Err(DispatcherError::Protocol(MqttProtocolError::generic_violation(
                "second CONNECT on an established connection",
            )));
        }
        ctx.call(&self.service, req).await
    }
}
