//! Packet encoding for both protocol versions; see `codec::encode` for the clamping rules.

use bytes::{BufMut, BytesMut};

use super::prim::{put_bin, put_str, with_var_len};
use super::props::{self, *};
use super::{ConnAckProperties, Connect, Packet, Publish, SubscribeTopic, Version};

pub(super) fn packet(packet: &Packet, version: Version, out: &mut BytesMut) {
    let v5 = version == Version::V5;
    match packet {
        Packet::Connect(c) => frame(out, 0x10, |o| connect(c, version, o)),
        Packet::ConnAck { session_present, code, properties } => frame(out, 0x20, |o| {
            o.put_u8(u8::from(*session_present));
            o.put_u8(*code);
            if v5 {
                connack_props(properties, o);
            }
        }),
        Packet::Publish(p) => publish(p, v5, out),
        Packet::PubAck { packet_id, code } => ack(out, 0x40, *packet_id, *code, v5),
        Packet::PubRec { packet_id, code } => ack(out, 0x50, *packet_id, *code, v5),
        Packet::PubRel { packet_id, code } => ack(out, 0x62, *packet_id, *code, v5),
        Packet::PubComp { packet_id, code } => ack(out, 0x70, *packet_id, *code, v5),
        Packet::Subscribe { packet_id, topics, subscription_id, user_properties } => frame(out, 0x82, |o| {
            o.put_u16(*packet_id);
            if v5 {
                with_var_len(o, |o| {
                    props::put_var(o, SUBSCRIPTION_ID, *subscription_id);
                    for (k, v) in user_properties {
                        props::put_pair(o, k, v);
                    }
                });
            }
            for t in topics {
                put_str(o, &t.filter);
                o.put_u8(subscription_options(t, v5));
            }
        }),
        Packet::SubAck { packet_id, codes, reason_string, user_properties } => frame(out, 0x90, |o| {
            o.put_u16(*packet_id);
            if v5 {
                with_var_len(o, |o| {
                    props::put_string(o, REASON_STRING, reason_string.as_deref());
                    for (k, v) in user_properties {
                        props::put_pair(o, k, v);
                    }
                });
            }
            o.put_slice(codes);
        }),
        Packet::Unsubscribe { packet_id, filters } => frame(out, 0xA2, |o| {
            o.put_u16(*packet_id);
            if v5 {
                o.put_u8(0);
            }
            for f in filters {
                put_str(o, f);
            }
        }),
        Packet::UnsubAck { packet_id, codes } => frame(out, 0xB0, |o| {
            o.put_u16(*packet_id);
            // 3.1.1 UNSUBACK has no payload at all.
            if v5 {
                o.put_u8(0);
                o.put_slice(codes);
            }
        }),
        Packet::PingReq => frame(out, 0xC0, |_| {}),
        Packet::PingResp => frame(out, 0xD0, |_| {}),
        Packet::Disconnect { code, session_expiry, reason_string, server_reference } => frame(out, 0xE0, |o| {
            // v5 lets a normal disconnection without properties be just the fixed header.
            if v5 && (*code != 0 || session_expiry.is_some() || reason_string.is_some() || server_reference.is_some()) {
                o.put_u8(*code);
                with_var_len(o, |o| {
                    props::put_u32(o, SESSION_EXPIRY, *session_expiry);
                    props::put_string(o, REASON_STRING, reason_string.as_deref());
                    props::put_string(o, SERVER_REFERENCE, server_reference.as_deref());
                });
            }
        }),
    }
}

/// Writes the first header byte, then `body` behind its remaining length.
fn frame(out: &mut BytesMut, first: u8, body: impl FnOnce(&mut BytesMut)) {
    out.put_u8(first);
    with_var_len(out, body);
}

fn connect(c: &Connect, version: Version, o: &mut BytesMut) {
    let v5 = version == Version::V5;
    put_str(o, "MQTT");
    o.put_u8(version.level());
    let mut flags = 0u8;
    if c.clean_start {
        flags |= 0x02;
    }
    if let Some(w) = &c.will {
        flags |= 0x04 | (w.qos.min(3) << 3);
        if w.retain {
            flags |= 0x20;
        }
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    if c.username.is_some() {
        flags |= 0x80;
    }
    o.put_u8(flags);
    o.put_u16(c.keep_alive);
    if v5 {
        with_var_len(o, |o| {
            props::put_u32(o, SESSION_EXPIRY, c.session_expiry);
            props::put_u16(o, RECEIVE_MAXIMUM, c.receive_maximum);
            props::put_u32(o, MAX_PACKET_SIZE, c.max_packet_size);
            props::put_u16(o, TOPIC_ALIAS_MAXIMUM, c.topic_alias_maximum);
        });
    }
    put_str(o, &c.client_id);
    if let Some(w) = &c.will {
        if v5 {
            with_var_len(o, |o| props::put_u32(o, WILL_DELAY, w.delay_interval));
        }
        put_str(o, &w.topic);
        put_bin(o, &w.payload);
    }
    if let Some(u) = &c.username {
        put_str(o, u);
    }
    if let Some(p) = &c.password {
        put_bin(o, p);
    }
}

fn connack_props(p: &ConnAckProperties, o: &mut BytesMut) {
    with_var_len(o, |o| {
        props::put_u32(o, SESSION_EXPIRY, p.session_expiry);
        props::put_u16(o, RECEIVE_MAXIMUM, p.receive_maximum);
        props::put_u8(o, MAXIMUM_QOS, p.maximum_qos);
        props::put_u32(o, MAX_PACKET_SIZE, p.max_packet_size);
        props::put_string(o, ASSIGNED_CLIENT_ID, p.assigned_client_id.as_deref());
        props::put_u16(o, TOPIC_ALIAS_MAXIMUM, p.topic_alias_maximum);
        props::put_string(o, REASON_STRING, p.reason_string.as_deref());
        props::put_u16(o, SERVER_KEEP_ALIVE, p.server_keep_alive);
        props::put_string(o, SERVER_REFERENCE, p.server_reference.as_deref());
    });
}

fn publish(p: &Publish, v5: bool, out: &mut BytesMut) {
    let qos = p.qos.min(3);
    let first = 0x30 | (u8::from(p.dup) << 3) | (qos << 1) | u8::from(p.retain);
    frame(out, first, |o| {
        put_str(o, &p.topic);
        // QoS 0 has no packet identifier on the wire; a missing one for QoS > 0 is sent as 0.
        if qos > 0 {
            o.put_u16(p.packet_id.unwrap_or(0));
        }
        if v5 {
            let pp = &p.properties;
            with_var_len(o, |o| {
                props::put_u32(o, MESSAGE_EXPIRY, pp.message_expiry);
                props::put_string(o, CONTENT_TYPE, pp.content_type.as_deref());
                props::put_string(o, RESPONSE_TOPIC, pp.response_topic.as_deref());
                props::put_binary(o, CORRELATION_DATA, pp.correlation_data.as_deref());
                for id in &pp.subscription_ids {
                    props::put_var(o, SUBSCRIPTION_ID, Some(*id));
                }
                props::put_u16(o, TOPIC_ALIAS, pp.topic_alias);
                for (k, v) in &pp.user_properties {
                    props::put_pair(o, k, v);
                }
            });
        }
        o.put_slice(&p.payload);
    });
}

/// PUBACK/PUBREC/PUBREL/PUBCOMP. In v5 a success without properties uses the two-byte form,
/// any other code the three-byte form (properties may be omitted when there are none).
fn ack(out: &mut BytesMut, first: u8, packet_id: u16, code: u8, v5: bool) {
    frame(out, first, |o| {
        o.put_u16(packet_id);
        if v5 && code != 0 {
            o.put_u8(code);
        }
    });
}

fn subscription_options(t: &SubscribeTopic, v5: bool) -> u8 {
    let mut opts = t.qos.min(3);
    if v5 {
        opts |= u8::from(t.no_local) << 2;
        opts |= u8::from(t.retain_as_published) << 3;
        opts |= t.retain_handling.min(3) << 4;
    }
    opts
}
