//! MQTT 3.1.1 handlers: translate ntex-mqtt's v3 packets into hub calls and back.

use std::sync::Arc;

use ntex::time::Seconds;
use ntex_mqtt::v3;

use broker::SubOptions;

use crate::connect::{self, ConnectInput, Listener, Refusal, WillInput};
use crate::connection::{ConnState, Sink, from_ntex_qos};
use crate::ingress::{self, EdgeError, Inbound, PublishRefusal, peer_ip};
use crate::metrics as m;
use crate::server::EdgeShared;

pub type Session = v3::Session<ConnState>;

#[tracing::instrument(name = "mqtt.connect", skip_all, fields(client_id = %msg.packet().client_id, protocol = "3.1.1"))]
pub async fn connect(
    edge: Arc<EdgeShared>,
    msg: v3::Connect,
    listener: Listener,
) -> Result<v3::ConnectAck<ConnState>, EdgeError> {
    let pkt = msg.packet();
    let limits = &edge.cfg.limits;
    if pkt.client_id.is_empty() && !pkt.clean_session {
        // Only a clean session may have its id chosen by the server [MQTT-3.1.3-8].
        tracing::info!("CONNECT refused: an empty client id without clean session");
        return Ok(msg.identifier_rejected());
    }
    let input = ConnectInput {
        username: pkt.username.clone(),
        password: pkt.password.clone(),
        client_id: pkt.client_id.clone(),
        clean_start: pkt.clean_session,
        // v3 persistent sessions have no expiry of their own: the operator's cap applies.
        session_expiry_secs: if pkt.clean_session { 0 } else { limits.max_session_expiry_secs },
        receive_maximum: u16::MAX,
        will: pkt.last_will.as_ref().map(|w| WillInput {
            topic: w.topic.clone(),
            payload: w.message.clone(),
            qos: from_ntex_qos(w.qos),
            retain: w.retain,
            delay_secs: 0,
            expiry_secs: None,
            properties: None,
        }),
        peer: peer_ip(msg.io()),
        topic_alias_max: 0,
        protocol: "3.1.1",
        listener,
    };
    let keep_alive = pkt.keep_alive;
    match connect::accept(&edge, input, Sink::V3(msg.sink())).await {
        Ok(accepted) => Ok(msg
            .ack(accepted.state, accepted.session_present)
            .idle_timeout(Seconds(keep_alive.saturating_add(keep_alive / 2)))
            .max_send(Some(limits.max_inflight))),
        Err(Refusal::BadCredentials(_)) => Ok(msg.bad_username_or_pwd()),
        Err(Refusal::Throttled | Refusal::ShuttingDown | Refusal::JournalUnavailable) => Ok(msg.service_unavailable()),
        Err(Refusal::NotAuthorized(_) | Refusal::WillTopicInvalid | Refusal::WillNotAuthorized) => {
            Ok(msg.not_authorized())
        }
    }
}

#[tracing::instrument(name = "mqtt.publish", level = "debug", skip_all, fields(client_id = %ses.client_id, topic = %p.publish_topic()))]
pub async fn publish(ses: &Session, p: v3::Publish) -> Result<(), EdgeError> {
    if ingress::exceeds_packet_limit(p.packet_size(), ses.max_packet_size) {
        return Err(EdgeError("packet too large".into()));
    }
    let inbound = |payload| Inbound {
        topic: p.packet().topic.clone(),
        payload,
        qos: from_ntex_qos(p.qos()),
        retain: p.retain(),
        packet_id: p.id().map(|id| id.get()),
    };
    let routed =
        ingress::publish_in_order(ses, p.read_all(), inbound, |_| {}).await.map_err(|e| EdgeError(format!("{e:?}")))?;
    match routed {
        // v3 has no negative PUBACK: a publish the ACL refuses is dropped (counted and logged).
        // A resume request it cannot answer is dropped the same way.
        Ok(_)
        | Err(
            PublishRefusal::Duplicate
            | PublishRefusal::NotAuthorized
            | PublishRefusal::BadResume(_)
            | PublishRefusal::RetainedQuota,
        ) => Ok(()),
        // v3 has no negative PUBACK: an invalid topic name is a protocol violation.
        Err(PublishRefusal::Topic(e)) => Err(EdgeError(format!("invalid topic name: {e}"))),
        // No PUBACK: the client publishes it again when it reconnects.
        Err(PublishRefusal::NotStored) => Err(EdgeError("the session journal is unavailable".into())),
        Err(PublishRefusal::TooLargeForBus) => Err(EdgeError("larger than the bus carries to the other edges".into())),
    }
}

pub async fn protocol(ses: &Session, msg: v3::ProtocolMessage) -> Result<v3::ProtocolMessageAck, EdgeError> {
    Ok(match msg {
        v3::ProtocolMessage::Subscribe(mut s) => {
            metrics::counter!(m::PACKETS_IN, "type" => "subscribe").increment(1);
            // An empty SUBSCRIBE or UNSUBSCRIBE is a protocol violation [MQTT-3.8.3-3,
            // MQTT-3.10.3-2]: the connection is closed.
            if s.iter_mut().next().is_none() {
                return Err(EdgeError("a SUBSCRIBE holds at least one topic filter".into()));
            }
            let mut confirmed = Vec::new();
            for mut sub in s.iter_mut() {
                let qos = sub.qos();
                let options = SubOptions { qos: from_ntex_qos(qos), ..SubOptions::default() };
                match ingress::subscribe(ses, sub.topic(), options) {
                    Ok(()) => {
                        confirmed.push(sub.topic().clone());
                        sub.confirm(qos);
                    }
                    Err(e) => {
                        ingress::log_refused(ses, sub.topic(), e);
                        sub.fail();
                    }
                }
            }
            ingress::start_cursors(&ses.hub, &ses.session, &confirmed).await;
            s.ack()
        }
        v3::ProtocolMessage::Unsubscribe(s) => {
            metrics::counter!(m::PACKETS_IN, "type" => "unsubscribe").increment(1);
            if s.iter().next().is_none() {
                return Err(EdgeError("an UNSUBSCRIBE holds at least one topic filter".into()));
            }
            for f in s.iter() {
                ses.hub.unsubscribe(&ses.session, f);
            }
            s.ack()
        }
        v3::ProtocolMessage::PublishRelease(r) => {
            metrics::counter!(m::PACKETS_IN, "type" => "pubrel").increment(1);
            ses.hub.incoming_released(&ses.session, r.id().get());
            r.ack()
        }
        v3::ProtocolMessage::Disconnect(d) => {
            metrics::counter!(m::PACKETS_IN, "type" => "disconnect").increment(1);
            ses.disconnected_gracefully(None);
            d.ack()
        }
        other => {
            metrics::counter!(m::PACKETS_IN, "type" => "other").increment(1);
            other.ack()
        }
    })
}
