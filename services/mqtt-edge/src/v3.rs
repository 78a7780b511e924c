//! MQTT 3.1.1 handlers: translate ntex-mqtt's v3 packets into hub calls and back.

use std::sync::Arc;

use ntex::time::Seconds;
use ntex_mqtt::v3;

use broker::SubOptions;

use crate::auth::AuthDecision;
use crate::connection::{ConnState, Sink, from_ntex_qos, spawn_delivery_task};
use crate::hub::{ConnectRequest, Will};
use crate::ingress::{self, EdgeError, Inbound, PublishRefusal};
use crate::message::now_ms;
use crate::metrics as m;
use crate::server::EdgeShared;

pub type Session = v3::Session<ConnState>;

#[tracing::instrument(name = "mqtt.connect", skip_all, fields(client_id = %msg.packet().client_id, protocol = "3.1.1"))]
pub async fn connect(edge: Arc<EdgeShared>, msg: v3::Connect) -> Result<v3::ConnectAck<ConnState>, EdgeError> {
    let pkt = msg.packet();
    let identity = match edge.auth.check(pkt.username.as_deref(), pkt.password.as_deref()) {
        AuthDecision::Allow(identity) => identity,
        AuthDecision::BadCredentials(why) => {
            tracing::info!(reason = why, "CONNECT refused");
            metrics::counter!(m::CONNECT_REFUSED, "reason" => "bad_credentials").increment(1);
            return Ok(msg.bad_username_or_pwd());
        }
        AuthDecision::NotAuthorized(why) => {
            tracing::info!(reason = why, "CONNECT refused");
            metrics::counter!(m::CONNECT_REFUSED, "reason" => "not_authorized").increment(1);
            return Ok(msg.not_authorized());
        }
    };
    ingress::load_relations(&edge, &identity).await;
    // ntex-mqtt's decoder already closes the connection for an empty id without clean session
    // (it sends no CONNACK 0x02, a known deviation from [MQTT-3.1.3-9]).
    let client_id: Arc<str> =
        if pkt.client_id.is_empty() { ingress::assign_client_id().into() } else { pkt.client_id.as_str().into() };
    let will = match &pkt.last_will {
        None => None,
        Some(w) => match ingress::will_message(&edge.hub, &w.topic, &w.message, from_ntex_qos(w.qos), w.retain) {
            Ok(message) => Some(Will { message: Arc::new(message), delay_secs: 0 }),
            Err(e) => {
                tracing::info!(client_id = %client_id, error = %e, "refusing CONNECT: invalid will topic");
                metrics::counter!(m::CONNECT_REFUSED, "reason" => "will_topic").increment(1);
                return Ok(msg.not_authorized());
            }
        },
    };
    let limits = &edge.cfg.limits;
    let connected = edge.hub.connect(
        ConnectRequest {
            client_id: client_id.clone(),
            clean_start: pkt.clean_session,
            // v3 persistent sessions have no expiry of their own: the operator's cap applies.
            session_expiry_secs: if pkt.clean_session { 0 } else { limits.max_session_expiry_secs },
            receive_maximum: u16::MAX,
            will,
            presence: ingress::presence_topic(&identity),
            identity: Arc::new(identity.clone()),
        },
        now_ms(),
    );
    metrics::counter!(m::CONNECTS, "protocol" => "3.1.1").increment(1);
    let keep_alive = pkt.keep_alive;
    spawn_delivery_task(Sink::V3(msg.sink()), connected.inbox, edge.hub.clone(), client_id.clone(), connected.link_id);
    ingress::auto_subscribe(&edge.hub, &edge.authz, &identity, &client_id);
    ingress::close_if_revoked(&edge, &identity);
    let state = ConnState::new(client_id, connected.link_id, &edge, identity);
    Ok(msg
        .ack(state, connected.session_present)
        .idle_timeout(Seconds(keep_alive.saturating_add(keep_alive / 2)))
        .max_send(Some(limits.max_inflight)))
}

#[tracing::instrument(name = "mqtt.publish", level = "debug", skip_all, fields(client_id = %ses.client_id, topic = %p.publish_topic()))]
pub async fn publish(ses: &Session, p: v3::Publish) -> Result<(), EdgeError> {
    let payload = p.read_all().await.map_err(|e| EdgeError(format!("{e:?}")))?;
    let inbound = Inbound {
        topic: p.packet().topic.clone(),
        payload,
        qos: from_ntex_qos(p.qos()),
        retain: p.retain(),
        packet_id: p.id().map(|id| id.get()),
    };
    match ingress::publish(ses, inbound, |_| {}) {
        // v3 has no negative PUBACK: a publish the ACL refuses is dropped (counted and logged).
        Ok(_) | Err(PublishRefusal::Duplicate | PublishRefusal::NotAuthorized) => Ok(()),
        // v3 has no negative PUBACK: an invalid topic name is a protocol violation.
        Err(PublishRefusal::Topic(e)) => Err(EdgeError(format!("invalid topic name: {e}"))),
    }
}

pub async fn protocol(ses: &Session, msg: v3::ProtocolMessage) -> Result<v3::ProtocolMessageAck, EdgeError> {
    Ok(match msg {
        v3::ProtocolMessage::Subscribe(mut s) => {
            metrics::counter!(m::PACKETS_IN, "type" => "subscribe").increment(1);
            for mut sub in s.iter_mut() {
                let qos = sub.qos();
                let options = SubOptions { qos: from_ntex_qos(qos), ..SubOptions::default() };
                match ingress::subscribe(ses, sub.topic(), options) {
                    Ok(()) => sub.confirm(qos),
                    Err(e) => {
                        ingress::log_refused(ses, sub.topic(), e);
                        sub.fail();
                    }
                }
            }
            s.ack()
        }
        v3::ProtocolMessage::Unsubscribe(s) => {
            metrics::counter!(m::PACKETS_IN, "type" => "unsubscribe").increment(1);
            for f in s.iter() {
                ses.hub.unsubscribe(&ses.client_id, f);
            }
            s.ack()
        }
        v3::ProtocolMessage::PublishRelease(r) => {
            metrics::counter!(m::PACKETS_IN, "type" => "pubrel").increment(1);
            ses.hub.incoming_released(&ses.client_id, r.id().get());
            r.ack()
        }
        v3::ProtocolMessage::Disconnect(d) => {
            metrics::counter!(m::PACKETS_IN, "type" => "disconnect").increment(1);
            ses.disconnected_gracefully(None);
            d.ack()
        }
        other => {
            metrics::counter!(m::PACKETS_IN, "type" => "pingreq").increment(1);
            other.ack()
        }
    })
}
