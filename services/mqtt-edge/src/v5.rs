//! MQTT 5.0 handlers: translate ntex-mqtt's v5 packets into hub calls and back, with reason
//! codes and reason strings on every refusal.

use std::sync::Arc;

use ntex_bytes::ByteString;
use ntex_mqtt::v5;
use ntex_mqtt::v5::codec::{ConnectAckReason, PublishAckReason, SubscribeAckReason};

use broker::{RetainHandling, SubOptions};

use crate::auth::AuthDecision;
use crate::connection::{ConnState, Sink, from_ntex_qos, spawn_delivery_task};
use crate::hub::{ConnectRequest, SubscribeError, Will};
use crate::ingress::{self, EdgeError, Inbound, PublishRefusal};
use crate::message::{Message, now_ms};
use crate::metrics as m;
use crate::server::EdgeShared;

pub type Session = v5::Session<ConnState>;

impl TryFrom<EdgeError> for v5::PublishAck {
    type Error = EdgeError;
    fn try_from(err: EdgeError) -> Result<Self, Self::Error> {
        Err(err)
    }
}

fn refuse(msg: v5::Connect, code: ConnectAckReason, why: &'static str) -> v5::ConnectAck<ConnState> {
    metrics::counter!(m::CONNECT_REFUSED, "reason" => why).increment(1);
    msg.fail_with(v5::codec::ConnectAck {
        reason_code: code,
        reason_string: Some(ByteString::from_static(why)),
        ..Default::default()
    })
}

#[tracing::instrument(name = "mqtt.connect", skip_all, fields(client_id = %msg.packet().client_id, protocol = "5.0"))]
pub async fn connect(edge: Arc<EdgeShared>, msg: v5::Connect) -> Result<v5::ConnectAck<ConnState>, EdgeError> {
    let pkt = msg.packet();
    let identity = match edge.auth.check(pkt.username.as_deref(), pkt.password.as_deref()) {
        AuthDecision::Allow(identity) => identity,
        AuthDecision::BadCredentials(why) => return Ok(refuse(msg, ConnectAckReason::BadUserNameOrPassword, why)),
        AuthDecision::NotAuthorized(why) => return Ok(refuse(msg, ConnectAckReason::NotAuthorized, why)),
    };
    ingress::load_relations(&edge, &identity).await;
    let assigned = pkt.client_id.is_empty().then(ingress::assign_client_id);
    let client_id: Arc<str> = assigned.as_deref().unwrap_or(pkt.client_id.as_str()).into();
    let will = match &pkt.last_will {
        None => None,
        Some(w) => match ingress::will_message(&edge.hub, &w.topic, &w.message, from_ntex_qos(w.qos), w.retain) {
            Ok(mut message) => {
                message.expires_at_ms = w.message_expiry_interval.map(|s| now_ms() + u64::from(s.get()) * 1000);
                message.properties = Some(Box::new(v5::codec::PublishProperties {
                    correlation_data: w.correlation_data.clone(),
                    content_type: w.content_type.clone(),
                    user_properties: w.user_properties.clone(),
                    is_utf8_payload: w.is_utf8_payload.unwrap_or(false),
                    response_topic: w.response_topic.clone(),
                    ..Default::default()
                }));
                Some(Will { message: Arc::new(message), delay_secs: w.will_delay_interval_sec.unwrap_or(0) })
            }
            Err(_) => {
                return Ok(refuse(msg, ConnectAckReason::TopicNameInvalid, "invalid will topic"));
            }
        },
    };
    let limits = &edge.cfg.limits;
    let expiry = pkt.session_expiry_interval_secs.min(limits.max_session_expiry_secs);
    let connected = edge.hub.connect(
        ConnectRequest {
            client_id: client_id.clone(),
            clean_start: pkt.clean_start,
            session_expiry_secs: expiry,
            receive_maximum: pkt.receive_max.map_or(u16::MAX, |r| r.get()),
            will,
            presence: ingress::presence_topic(&identity),
            identity: Arc::new(identity.clone()),
        },
        now_ms(),
    );
    metrics::counter!(m::CONNECTS, "protocol" => "5.0").increment(1);
    let client_keep_alive = pkt.keep_alive;
    let requested_expiry = pkt.session_expiry_interval_secs;
    spawn_delivery_task(Sink::V5(msg.sink()), connected.inbox, edge.hub.clone(), client_id.clone(), connected.link_id);
    ingress::auto_subscribe(&edge.hub, &edge.authz, &identity, &client_id);
    ingress::close_if_revoked(&edge, &identity);
    let state = ConnState::new(client_id, connected.link_id, &edge, identity);
    let cap = limits.max_keepalive_secs;
    let keep_alive = if client_keep_alive > cap { cap } else { client_keep_alive };
    let session_present = connected.session_present;
    Ok(msg.ack(state).keep_alive(keep_alive.saturating_add(keep_alive / 2)).max_send(Some(limits.max_inflight)).with(
        |ack| {
            ack.session_present = session_present;
            ack.assigned_client_id = assigned.map(ByteString::from);
            ack.shared_subscription_available = true;
            ack.subscription_identifiers_available = true;
            ack.wildcard_subscription_available = true;
            ack.retain_available = true;
            if client_keep_alive > cap {
                ack.server_keepalive_sec = Some(cap);
            }
            if requested_expiry != expiry {
                ack.session_expiry_interval_secs = Some(expiry);
            }
        },
    ))
}

#[tracing::instrument(name = "mqtt.publish", level = "debug", skip_all, fields(client_id = %ses.client_id, topic = %p.publish_topic()))]
pub async fn publish(ses: &Session, p: v5::Publish) -> Result<v5::PublishAck, EdgeError> {
    let payload = p.read_all().await.map_err(|e| EdgeError(format!("{e:?}")))?;
    let pkt = p.packet();
    let inbound = Inbound {
        topic: pkt.topic.clone(),
        payload,
        qos: from_ntex_qos(pkt.qos),
        retain: pkt.retain,
        packet_id: pkt.packet_id.map(|id| id.get()),
    };
    let props = &pkt.properties;
    let fill = |msg: &mut Message| {
        msg.expires_at_ms = props.message_expiry_interval.map(|s| now_ms() + u64::from(s.get()) * 1000);
        let pass_through = props.correlation_data.is_some()
            || props.content_type.is_some()
            || !props.user_properties.is_empty()
            || props.is_utf8_payload
            || props.response_topic.is_some();
        if pass_through {
            msg.properties = Some(Box::new(v5::codec::PublishProperties {
                correlation_data: props.correlation_data.clone(),
                content_type: props.content_type.clone(),
                user_properties: props.user_properties.clone(),
                is_utf8_payload: props.is_utf8_payload,
                response_topic: props.response_topic.clone(),
                ..Default::default()
            }));
        }
    };
    Ok(match ingress::publish(ses, inbound, fill) {
        Ok(0) => p.ack().reason_code(PublishAckReason::NoMatchingSubscribers),
        Ok(_) | Err(PublishRefusal::Duplicate) => p.ack(),
        Err(PublishRefusal::NotAuthorized) => p
            .ack()
            .reason_code(PublishAckReason::NotAuthorized)
            .reason(ByteString::from_static("the ACL does not allow publishing to this topic")),
        Err(PublishRefusal::Topic(e)) => {
            p.ack().reason_code(PublishAckReason::TopicNameInvalid).reason(ByteString::from(e.to_string()))
        }
    })
}

pub async fn protocol(ses: &Session, msg: v5::ProtocolMessage) -> Result<v5::ProtocolMessageAck, EdgeError> {
    Ok(match msg {
        v5::ProtocolMessage::Subscribe(mut s) => {
            metrics::counter!(m::PACKETS_IN, "type" => "subscribe").increment(1);
            let sub_id = s.packet().id.map(|i| i.get());
            let mut refusals = Vec::new();
            for mut sub in s.iter_mut() {
                let o = sub.options();
                let qos = o.qos;
                let options = SubOptions {
                    qos: from_ntex_qos(qos),
                    no_local: o.no_local,
                    retain_as_published: o.retain_as_published,
                    retain_handling: match o.retain_handling {
                        v5::codec::RetainHandling::AtSubscribe => RetainHandling::AtSubscribe,
                        v5::codec::RetainHandling::AtSubscribeNew => RetainHandling::AtSubscribeIfNew,
                        v5::codec::RetainHandling::NoAtSubscribe => RetainHandling::Never,
                    },
                    subscription_id: sub_id,
                };
                let topic = sub.topic().clone();
                match ingress::subscribe(ses, &topic, options) {
                    Ok(()) => sub.confirm(qos),
                    Err(e) => {
                        ingress::log_refused(ses, &topic, e);
                        refusals.push(format!("{topic}: {e}"));
                        sub.fail(match e {
                            SubscribeError::Topic(_) => SubscribeAckReason::TopicFilterInvalid,
                            SubscribeError::QuotaExceeded => SubscribeAckReason::QuotaExceeded,
                            SubscribeError::NotAuthorized => SubscribeAckReason::NotAuthorized,
                            SubscribeError::NoSession => SubscribeAckReason::UnspecifiedError,
                        });
                    }
                }
            }
            // One reason string for the SUBACK, naming each refused filter.
            if refusals.is_empty() { s.ack() } else { s.ack_reason(ByteString::from(refusals.join("; "))).ack() }
        }
        v5::ProtocolMessage::Unsubscribe(mut s) => {
            metrics::counter!(m::PACKETS_IN, "type" => "unsubscribe").increment(1);
            for mut u in s.iter_mut() {
                if !ses.hub.unsubscribe(&ses.client_id, u.topic()) {
                    u.fail(v5::codec::UnsubscribeAckReason::NoSubscriptionExisted);
                }
            }
            s.ack()
        }
        v5::ProtocolMessage::PublishRelease(r) => {
            metrics::counter!(m::PACKETS_IN, "type" => "pubrel").increment(1);
            ses.hub.incoming_released(&ses.client_id, r.packet().packet_id.get());
            r.ack()
        }
        v5::ProtocolMessage::Disconnect(d) => {
            metrics::counter!(m::PACKETS_IN, "type" => "disconnect").increment(1);
            let pkt = d.packet();
            let expiry = pkt.session_expiry_interval_secs;
            if pkt.reason_code == v5::codec::DisconnectReasonCode::DisconnectWithWillMessage {
                ses.disconnected_with_will(expiry);
            } else {
                ses.disconnected_gracefully(expiry);
            }
            d.ack()
        }
        other => {
            metrics::counter!(m::PACKETS_IN, "type" => "other").increment(1);
            other.ack()
        }
    })
}
