//! MQTT 5.0 handlers: translate ntex-mqtt's v5 packets into hub calls and back, with reason
//! codes and reason strings on every refusal.

use std::sync::Arc;

use ntex_bytes::ByteString;
use ntex_mqtt::v5;
use ntex_mqtt::v5::codec::{ConnectAckReason, PublishAckReason, SubscribeAckReason};

use broker::{RetainHandling, SubOptions};

use crate::connect::{self, ConnectInput, Listener, Refusal, WillInput};
use crate::connection::{ConnState, Sink, from_ntex_qos, reference_fits};
use crate::hub::SubscribeError;
use crate::ingress::{self, EdgeError, Inbound, PublishRefusal, peer_ip};
use crate::message::{Message, now_ms};
use crate::metrics as m;
use crate::server::EdgeShared;
use crate::streams;

pub type Session = v5::Session<ConnState>;

impl TryFrom<EdgeError> for v5::PublishAck {
    type Error = EdgeError;
    fn try_from(err: EdgeError) -> Result<Self, Self::Error> {
        Err(err)
    }
}

/// The CONNACK refusing `msg`; a client refused as this edge stops is told to use another
/// (0x9C, Server Reference) where one is known: `elsewhere`, only ever given for that.
fn refuse(msg: v5::Connect, refusal: Refusal, elsewhere: Option<String>) -> v5::ConnectAck<ConnState> {
    let reason_code = match refusal {
        Refusal::ShuttingDown if elsewhere.is_some() => ConnectAckReason::UseAnotherServer,
        Refusal::BadCredentials(_) => ConnectAckReason::BadUserNameOrPassword,
        Refusal::NotAuthorized(_) | Refusal::WillNotAuthorized => ConnectAckReason::NotAuthorized,
        Refusal::Throttled => ConnectAckReason::ConnectionRateExceeded,
        Refusal::WillTopicInvalid => ConnectAckReason::TopicNameInvalid,
        Refusal::ShuttingDown | Refusal::JournalUnavailable => ConnectAckReason::ServerUnavailable,
    };
    msg.fail_with(v5::codec::ConnectAck {
        reason_code,
        reason_string: Some(ByteString::from_static(refusal.reason())),
        server_reference: elsewhere.map(ByteString::from),
        ..Default::default()
    })
}

fn will_input(w: &v5::codec::LastWill) -> WillInput {
    WillInput {
        topic: w.topic.clone(),
        payload: w.message.clone(),
        qos: from_ntex_qos(w.qos),
        retain: w.retain,
        delay_secs: w.will_delay_interval_sec.unwrap_or(0),
        expiry_secs: w.message_expiry_interval.map(|s| s.get()),
        properties: Some(Box::new(v5::codec::PublishProperties {
            correlation_data: w.correlation_data.clone(),
            content_type: w.content_type.clone(),
            user_properties: w.user_properties.clone(),
            is_utf8_payload: w.is_utf8_payload.unwrap_or(false),
            response_topic: w.response_topic.clone(),
            ..Default::default()
        })),
    }
}

#[tracing::instrument(name = "mqtt.connect", skip_all, fields(client_id = %msg.packet().client_id, protocol = "5.0"))]
pub async fn connect(
    edge: Arc<EdgeShared>,
    msg: v5::Connect,
    listener: Listener,
) -> Result<v5::ConnectAck<ConnState>, EdgeError> {
    let pkt = msg.packet();
    // No enhanced authentication (AUTH) here: a method asked for is one not supported
    // [MQTT-4.12.0-1].
    if pkt.auth_method.is_some() {
        return Ok(msg.fail_with(v5::codec::ConnectAck {
            reason_code: v5::codec::ConnectAckReason::BadAuthenticationMethod,
            reason_string: Some(ByteString::from_static("no authentication method is supported: use the password")),
            ..Default::default()
        }));
    }
    let limits = &edge.cfg.limits;
    let expiry = pkt.session_expiry_interval_secs.min(limits.max_session_expiry_secs);
    let input = ConnectInput {
        username: pkt.username.clone(),
        password: pkt.password.clone(),
        client_id: pkt.client_id.clone(),
        clean_start: pkt.clean_start,
        session_expiry_secs: expiry,
        receive_maximum: pkt.receive_max.map_or(u16::MAX, |r| r.get()),
        will: pkt.last_will.as_ref().map(will_input),
        peer: peer_ip(msg.io()),
        topic_alias_max: pkt.topic_alias_max,
        protocol: "5.0",
        listener,
    };
    let client_keep_alive = pkt.keep_alive;
    let requested_expiry = pkt.session_expiry_interval_secs;
    let max_packet_size = pkt.max_packet_size.map_or(u32::MAX, std::num::NonZeroU32::get);
    let came = input.came();
    let accepted = match connect::accept(&edge, input, Sink::V5(msg.sink(), max_packet_size)).await {
        Ok(a) => a,
        Err(refusal) => {
            // A CONNACK holds one byte more than a DISCONNECT before its properties.
            let fits = |r: &String| reference_fits(r, max_packet_size.saturating_sub(1));
            let elsewhere = matches!(refusal, Refusal::ShuttingDown).then(|| came.elsewhere(&edge.hub)).flatten();
            return Ok(refuse(msg, refusal, elsewhere.filter(fits)));
        }
    };
    let keep_alive = connect::keep_alive(client_keep_alive, limits.max_keepalive_secs);
    let session_present = accepted.session_present;
    let inbound_max = accepted.state.max_packet_size;
    let assigned = accepted.assigned_client_id;
    Ok(msg.ack(accepted.state).keep_alive(keep_alive.idle_timeout_secs()).max_send(Some(limits.max_inflight)).with(
        |ack| {
            ack.session_present = session_present;
            ack.assigned_client_id = assigned.map(ByteString::from);
            ack.shared_subscription_available = true;
            ack.subscription_identifiers_available = true;
            ack.wildcard_subscription_available = true;
            ack.retain_available = true;
            // ntex-mqtt's decoder keeps to it from now on.
            ack.max_packet_size = Some(inbound_max);
            ack.server_keepalive_sec = keep_alive.announce;
            if requested_expiry != expiry {
                ack.session_expiry_interval_secs = Some(expiry);
            }
        },
    ))
}

/// Closes the connection with DISCONNECT 0x82 Protocol error, saying `why`.
fn protocol_error(ses: &Session, why: &'static str) -> EdgeError {
    let mut pkt = v5::codec::Disconnect::new(v5::codec::DisconnectReasonCode::ProtocolError);
    pkt.reason_string = Some(ByteString::from_static(why));
    ses.sink().close_with_reason(pkt);
    EdgeError(why.into())
}

#[tracing::instrument(name = "mqtt.publish", level = "debug", skip_all, fields(client_id = %ses.client_id, topic = %p.publish_topic()))]
pub async fn publish(ses: &Session, p: v5::Publish) -> Result<v5::PublishAck, EdgeError> {
    if ingress::exceeds_packet_limit(p.packet_size(), ses.max_packet_size) {
        let mut pkt = v5::codec::Disconnect::new(v5::codec::DisconnectReasonCode::PacketTooLarge);
        pkt.reason_string = Some(ByteString::from_static("the packet exceeds the maximum packet size"));
        ses.sink().close_with_reason(pkt);
        return Err(EdgeError("packet too large".into()));
    }
    let pkt = p.packet();
    // What only the server may send, or may not hold, or must [MQTT-3.3.4-6, MQTT-3.3.2-14].
    let wrong = if !pkt.properties.subscription_ids.is_empty() {
        Some("a client's PUBLISH carries no subscription identifier")
    } else if pkt.topic.is_empty() {
        // ntex-mqtt put the topic of a known alias here [MQTT-3.3.2-8].
        Some("a PUBLISH names its topic, or a topic alias for it")
    } else if pkt.properties.response_topic.as_ref().is_some_and(|t| t.contains(['+', '#'])) {
        Some("a response topic holds no wildcard")
    } else {
        None
    };
    if let Some(why) = wrong {
        return Err(protocol_error(ses, why));
    }
    let inbound = |payload| Inbound {
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
    let routed =
        ingress::publish_in_order(ses, p.read_all(), inbound, fill).await.map_err(|e| EdgeError(format!("{e:?}")))?;
    Ok(match routed {
        // Only an edge alone knows there is nobody: in a cluster, other edges' subscribers
        // are not counted here [MQTT-3.4.2.1: 0x10 only when the server knows].
        Ok(0) if ses.hub.cluster().is_none() => p.ack().reason_code(PublishAckReason::NoMatchingSubscribers),
        Ok(_) | Err(PublishRefusal::Duplicate) => p.ack(),
        Err(PublishRefusal::NotAuthorized) => p
            .ack()
            .reason_code(PublishAckReason::NotAuthorized)
            .reason(ByteString::from_static("the ACL does not allow publishing to this topic")),
        Err(PublishRefusal::Topic(e)) => {
            p.ack().reason_code(PublishAckReason::TopicNameInvalid).reason(ByteString::from(e.to_string()))
        }
        Err(PublishRefusal::BadResume(why)) => {
            p.ack().reason_code(PublishAckReason::ImplementationSpecificError).reason(ByteString::from_static(why))
        }
        Err(PublishRefusal::RetainedQuota) => p
            .ack()
            .reason_code(PublishAckReason::QuotaExceeded)
            .reason(ByteString::from_static("retained messages under this topic's first level are at their quota")),
        Err(PublishRefusal::TooLargeForBus) => {
            p.ack().reason_code(PublishAckReason::ImplementationSpecificError).reason(ByteString::from_static(
                "larger than the bus carries to the other edges: not sent to all subscribers",
            ))
        }
        Err(PublishRefusal::NotStored) => p.ack().reason_code(PublishAckReason::UnspecifiedError).reason(
            ByteString::from_static("not stored: the session journal or durable stream is unavailable, publish again"),
        ),
    })
}

/// A SUBSCRIBE with [`streams::RESUME_PROPERTY`] `"<epoch>:<seq>"` resumes every durable stream
/// it subscribed to by name (no wildcards) from that `seq`: the missed messages are queued for
/// the session (they may reach the client before or after the SUBACK), and the SUBACK says how
/// each replay went ([`streams::REPLAY_PROPERTY`]).
async fn resume_streams(
    ses: &Session,
    properties: &v5::codec::UserProperties,
    confirmed: &[ByteString],
) -> Vec<(ByteString, ByteString)> {
    let Some((_, value)) = properties.iter().find(|(k, _)| k.eq_ignore_ascii_case(streams::RESUME_PROPERTY)) else {
        return Vec::new();
    };
    let report = |line: String| (ByteString::from_static(streams::REPLAY_PROPERTY), ByteString::from(line));
    let Some((epoch, after)) = streams::parse_resume(value) else {
        return vec![report(format!("refused: {} is \"<epoch>:<seq>\"", streams::RESUME_PROPERTY))];
    };
    let mut reports = Vec::new();
    for filter in confirmed {
        match ingress::resume(ses, filter, epoch, after).await {
            Ok(r) => reports.push(report(r.line())),
            Err(ingress::ResumeRefusal::NotDurable) => {}
            Err(e) => reports.push(report(format!("refused: {e:?} stream={filter}"))),
        }
    }
    reports
}

pub async fn protocol(ses: &Session, msg: v5::ProtocolMessage) -> Result<v5::ProtocolMessageAck, EdgeError> {
    Ok(match msg {
        v5::ProtocolMessage::Subscribe(mut s) => {
            metrics::counter!(m::PACKETS_IN, "type" => "subscribe").increment(1);
            let sub_id = s.packet().id.map(|i| i.get());
            let mut refusals = Vec::new();
            let mut confirmed = Vec::new();
            if s.iter_mut().next().is_none() {
                return Err(protocol_error(ses, "a SUBSCRIBE holds at least one topic filter"));
            }
            // No Local on a shared subscription is a protocol error [MQTT-3.8.3-4].
            if s.iter_mut().any(|sub| sub.options().no_local && sub.topic().starts_with(broker::topic::SHARE_PREFIX)) {
                return Err(protocol_error(ses, "no local on a shared subscription"));
            }
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
                    // The router dates it.
                    since_ms: 0,
                    auto: false,
                };
                let topic = sub.topic().clone();
                match ingress::subscribe(ses, &topic, options) {
                    Ok(()) => {
                        confirmed.push(topic);
                        sub.confirm(qos);
                    }
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
            ingress::start_cursors(&ses.hub, &ses.session, &confirmed).await;
            let reports = resume_streams(ses, &s.packet().user_properties, &confirmed).await;
            let s = s.ack_properties(|p| p.extend(reports));
            // One bounded reason string for the SUBACK, naming the refused filters that fit.
            if refusals.is_empty() {
                s.ack()
            } else {
                s.ack_reason(ByteString::from(ingress::bounded_reason(&refusals))).ack()
            }
        }
        v5::ProtocolMessage::Unsubscribe(mut s) => {
            metrics::counter!(m::PACKETS_IN, "type" => "unsubscribe").increment(1);
            if s.iter_mut().next().is_none() {
                return Err(protocol_error(ses, "an UNSUBSCRIBE holds at least one topic filter"));
            }
            for mut u in s.iter_mut() {
                if !ses.hub.unsubscribe(&ses.session, u.topic()) {
                    u.fail(v5::codec::UnsubscribeAckReason::NoSubscriptionExisted);
                }
            }
            s.ack()
        }
        v5::ProtocolMessage::PublishRelease(r) => {
            metrics::counter!(m::PACKETS_IN, "type" => "pubrel").increment(1);
            ses.hub.incoming_released(&ses.session, r.packet().packet_id.get());
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
