//! Packet decoding for both protocol versions: fixed-header framing, then a strict parse of
//! the body (fixed-layout packets must be consumed exactly).

use bytes::{Buf, BytesMut};

use super::prim::{Reader, decode_var_int};
use super::props::{self, *};
use super::{
    ConnAckProperties, Connect, DecodeError, Packet, Publish, PublishProperties, SubscribeTopic, Version, Will,
};

pub(super) fn packet(buf: &mut BytesMut, version: Version, max_size: usize) -> Result<Option<Packet>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let (packet_type, flags) = (first >> 4, first & 0x0f);
    // Checked before the length so a garbage stream fails on its first byte.
    check_flags(packet_type, flags)?;
    let (remaining, len_bytes) = match decode_var_int(buf.get(1..).unwrap_or_default()) {
        Ok(Some(v)) => v,
        Ok(None) => return Ok(None),
        Err(_) => return Err(DecodeError::MalformedRemainingLength),
    };
    let header = 1 + len_bytes;
    let size = header.saturating_add(usize::try_from(remaining).unwrap_or(usize::MAX));
    if size > max_size {
        return Err(DecodeError::PacketTooLarge { size, max: max_size });
    }
    if buf.len() < size {
        return Ok(None);
    }
    // Freezing lets a PUBLISH payload share the read buffer instead of being copied.
    let mut frame = buf.split_to(size).freeze();
    frame.advance(header);
    body(packet_type, flags, Reader::new(frame), version == Version::V5).map(Some)
}

/// Fixed-header flag rules: PUBREL/SUBSCRIBE/UNSUBSCRIBE must be 0b0010, PUBLISH any QoS but 3,
/// everything else 0. Types 0 (reserved) and 15 (AUTH, unsupported) are refused.
fn check_flags(packet_type: u8, flags: u8) -> Result<(), DecodeError> {
    let ok = match packet_type {
        3 => (flags >> 1) & 3 != 3,
        6 | 8 | 10 => flags == 0b0010,
        1 | 2 | 4 | 5 | 7 | 9 | 11..=14 => flags == 0,
        _ => return Err(DecodeError::UnknownPacketType(packet_type)),
    };
    if ok { Ok(()) } else { Err(DecodeError::InvalidFlags { packet_type, flags }) }
}

fn body(packet_type: u8, flags: u8, mut r: Reader, v5: bool) -> Result<Packet, DecodeError> {
    let packet = match packet_type {
        1 => Packet::Connect(connect(&mut r, v5)?),
        2 => connack(&mut r, v5)?,
        3 => Packet::Publish(publish(&mut r, flags, v5)?),
        4 => {
            let (packet_id, code) = ack(&mut r, v5)?;
            Packet::PubAck { packet_id, code }
        }
        5 => {
            let (packet_id, code) = ack(&mut r, v5)?;
            Packet::PubRec { packet_id, code }
        }
        6 => {
            let (packet_id, code) = ack(&mut r, v5)?;
            Packet::PubRel { packet_id, code }
        }
        7 => {
            let (packet_id, code) = ack(&mut r, v5)?;
            Packet::PubComp { packet_id, code }
        }
        8 => subscribe(&mut r, v5)?,
        9 => {
            let packet_id = r.u16("packet id")?;
            let (mut reason_string, mut user_properties) = (None, Vec::new());
            if v5 {
                props::read(&mut r, |id, v| {
                    match (id, v) {
                        (REASON_STRING, Value::Str(s)) => reason_string = Some(s),
                        (USER_PROPERTY, Value::Pair(k, v)) => user_properties.push((k, v)),
                        _ => {}
                    }
                    Ok(())
                })?;
            }
            let codes = r.rest().to_vec();
            if codes.is_empty() {
                return Err(DecodeError::Malformed("SUBACK without reason codes"));
            }
            Packet::SubAck { packet_id, codes, reason_string, user_properties }
        }
        10 => unsubscribe(&mut r, v5)?,
        11 => {
            let packet_id = r.u16("packet id")?;
            let mut codes = Vec::new();
            if v5 {
                props::skip(&mut r)?;
                codes = r.rest().to_vec();
                if codes.is_empty() {
                    return Err(DecodeError::Malformed("UNSUBACK without reason codes"));
                }
            }
            Packet::UnsubAck { packet_id, codes }
        }
        12 => Packet::PingReq,
        13 => Packet::PingResp,
        14 => disconnect(&mut r, v5)?,
        // `check_flags` already refused every other type.
        _ => return Err(DecodeError::UnknownPacketType(packet_type)),
    };
    r.finish(name(packet_type))?;
    Ok(packet)
}

fn name(packet_type: u8) -> &'static str {
    match packet_type {
        1 => "CONNECT",
        2 => "CONNACK",
        3 => "PUBLISH",
        4 => "PUBACK",
        5 => "PUBREC",
        6 => "PUBREL",
        7 => "PUBCOMP",
        8 => "SUBSCRIBE",
        9 => "SUBACK",
        10 => "UNSUBSCRIBE",
        11 => "UNSUBACK",
        12 => "PINGREQ",
        13 => "PINGRESP",
        14 => "DISCONNECT",
        _ => "packet",
    }
}

fn connect(r: &mut Reader, v5: bool) -> Result<Connect, DecodeError> {
    if r.string("protocol name")? != "MQTT" {
        return Err(DecodeError::Malformed("protocol name is not MQTT"));
    }
    let level = r.u8("protocol level")?;
    if level != if v5 { 5 } else { 4 } {
        return Err(DecodeError::Malformed("protocol level does not match the codec version"));
    }
    let flags = r.u8("connect flags")?;
    let (will_flag, will_qos, will_retain) = (flags & 0x04 != 0, (flags >> 3) & 3, flags & 0x20 != 0);
    if flags & 0x01 != 0 {
        return Err(DecodeError::Malformed("reserved CONNECT flag set"));
    }
    if will_qos == 3 || (!will_flag && (will_qos != 0 || will_retain)) {
        return Err(DecodeError::Malformed("invalid will QoS/retain flags"));
    }
    let mut c = Connect { clean_start: flags & 0x02 != 0, keep_alive: r.u16("keep alive")?, ..Connect::default() };
    if v5 {
        props::read(r, |id, v| {
            match (id, v) {
                (SESSION_EXPIRY, Value::Four(x)) => c.session_expiry = Some(x),
                (RECEIVE_MAXIMUM, Value::Two(x)) => c.receive_maximum = Some(x),
                (MAX_PACKET_SIZE, Value::Four(x)) => c.max_packet_size = Some(x),
                (TOPIC_ALIAS_MAXIMUM, Value::Two(x)) => c.topic_alias_maximum = Some(x),
                _ => {}
            }
            Ok(())
        })?;
    }
    c.client_id = r.string("client id")?;
    if will_flag {
        let mut will = Will { qos: will_qos, retain: will_retain, ..Will::default() };
        if v5 {
            props::read(r, |id, v| {
                if let (WILL_DELAY, Value::Four(x)) = (id, v) {
                    will.delay_interval = Some(x);
                }
                Ok(())
            })?;
        }
        will.topic = r.string("will topic")?;
        will.payload = r.binary("will payload")?;
        c.will = Some(will);
    }
    if flags & 0x80 != 0 {
        c.username = Some(r.string("username")?);
    }
    if flags & 0x40 != 0 {
        c.password = Some(r.binary("password")?);
    }
    Ok(c)
}

fn connack(r: &mut Reader, v5: bool) -> Result<Packet, DecodeError> {
    let flags = r.u8("connack flags")?;
    if flags & 0xFE != 0 {
        return Err(DecodeError::Malformed("reserved CONNACK flag set"));
    }
    let code = r.u8("connack code")?;
    let mut p = ConnAckProperties::default();
    if v5 {
        props::read(r, |id, v| {
            match (id, v) {
                (SESSION_EXPIRY, Value::Four(x)) => p.session_expiry = Some(x),
                (RECEIVE_MAXIMUM, Value::Two(x)) => p.receive_maximum = Some(x),
                (MAXIMUM_QOS, Value::Byte(x)) => p.maximum_qos = Some(x),
                (MAX_PACKET_SIZE, Value::Four(x)) => p.max_packet_size = Some(x),
                (ASSIGNED_CLIENT_ID, Value::Str(x)) => p.assigned_client_id = Some(x),
                (TOPIC_ALIAS_MAXIMUM, Value::Two(x)) => p.topic_alias_maximum = Some(x),
                (REASON_STRING, Value::Str(x)) => p.reason_string = Some(x),
                (SERVER_KEEP_ALIVE, Value::Two(x)) => p.server_keep_alive = Some(x),
                (SERVER_REFERENCE, Value::Str(x)) => p.server_reference = Some(x),
                _ => {}
            }
            Ok(())
        })?;
    }
    Ok(Packet::ConnAck { session_present: flags & 1 != 0, code, properties: p })
}

fn publish(r: &mut Reader, flags: u8, v5: bool) -> Result<Publish, DecodeError> {
    let qos = (flags >> 1) & 3;
    let topic = r.string("topic")?;
    let packet_id = if qos > 0 { Some(r.u16("packet id")?) } else { None };
    let mut pp = PublishProperties::default();
    if v5 {
        props::read(r, |id, v| {
            match (id, v) {
                (MESSAGE_EXPIRY, Value::Four(x)) => pp.message_expiry = Some(x),
                (TOPIC_ALIAS, Value::Two(x)) => pp.topic_alias = Some(x),
                (SUBSCRIPTION_ID, Value::VarInt(x)) => pp.subscription_ids.push(x),
                (USER_PROPERTY, Value::Pair(k, v)) => pp.user_properties.push((k, v)),
                (CONTENT_TYPE, Value::Str(x)) => pp.content_type = Some(x),
                (RESPONSE_TOPIC, Value::Str(x)) => pp.response_topic = Some(x),
                (CORRELATION_DATA, Value::Bin(x)) => pp.correlation_data = Some(x),
                _ => {}
            }
            Ok(())
        })?;
    }
    Ok(Publish {
        topic,
        payload: r.rest(),
        qos,
        retain: flags & 1 != 0,
        dup: flags & 0x08 != 0,
        packet_id,
        properties: pp,
    })
}

/// PUBACK/PUBREC/PUBREL/PUBCOMP body. v5 may stop after the packet id (code 0) or after the
/// reason code (no properties).
fn ack(r: &mut Reader, v5: bool) -> Result<(u16, u8), DecodeError> {
    let packet_id = r.u16("packet id")?;
    let mut code = 0;
    if v5 && !r.is_empty() {
        code = r.u8("reason code")?;
        if !r.is_empty() {
            props::skip(r)?;
        }
    }
    Ok((packet_id, code))
}

fn subscribe(r: &mut Reader, v5: bool) -> Result<Packet, DecodeError> {
    let packet_id = r.u16("packet id")?;
    let mut subscription_id = None;
    let mut user_properties = Vec::new();
    if v5 {
        props::read(r, |id, v| {
            match (id, v) {
                // Repeatable in PUBLISH, so `props::read` lets repeats through; not here.
                (SUBSCRIPTION_ID, Value::VarInt(x)) if subscription_id.replace(x).is_some() => {
                    return Err(DecodeError::BadProperty { id: id.into(), reason: "property repeated" });
                }
                (USER_PROPERTY, Value::Pair(k, v)) => user_properties.push((k, v)),
                _ => {}
            }
            Ok(())
        })?;
    }
    let mut topics = Vec::new();
    while !r.is_empty() {
        let filter = r.string("topic filter")?;
        let opts = r.u8("subscription options")?;
        let reserved = if v5 { 0xC0 } else { 0xFC };
        if opts & reserved != 0 || opts & 3 == 3 || (opts >> 4) & 3 == 3 {
            return Err(DecodeError::Malformed("invalid subscription options"));
        }
        topics.push(SubscribeTopic {
            filter,
            qos: opts & 3,
            no_local: opts & 0x04 != 0,
            retain_as_published: opts & 0x08 != 0,
            retain_handling: (opts >> 4) & 3,
        });
    }
    if topics.is_empty() {
        return Err(DecodeError::Malformed("SUBSCRIBE without topic filters"));
    }
    Ok(Packet::Subscribe { packet_id, topics, subscription_id, user_properties })
}

fn unsubscribe(r: &mut Reader, v5: bool) -> Result<Packet, DecodeError> {
    let packet_id = r.u16("packet id")?;
    if v5 {
        props::skip(r)?;
    }
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(r.string("topic filter")?);
    }
    if filters.is_empty() {
        return Err(DecodeError::Malformed("UNSUBSCRIBE without topic filters"));
    }
    Ok(Packet::Unsubscribe { packet_id, filters })
}

/// v3 DISCONNECT is empty; v5 may stop before the reason code (0) or before the properties.
fn disconnect(r: &mut Reader, v5: bool) -> Result<Packet, DecodeError> {
    let (mut code, mut session_expiry, mut reason_string, mut server_reference) = (0, None, None, None);
    if v5 && !r.is_empty() {
        code = r.u8("reason code")?;
        if !r.is_empty() {
            props::read(r, |id, v| {
                match (id, v) {
                    (SESSION_EXPIRY, Value::Four(x)) => session_expiry = Some(x),
                    (REASON_STRING, Value::Str(x)) => reason_string = Some(x),
                    (SERVER_REFERENCE, Value::Str(x)) => server_reference = Some(x),
                    _ => {}
                }
                Ok(())
            })?;
        }
    }
    Ok(Packet::Disconnect { code, session_expiry, reason_string, server_reference })
}
