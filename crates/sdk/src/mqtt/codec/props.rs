//! MQTT 5 property sections: identifiers, typed writers, and a validating reader that knows the
//! type of every defined property so it can skip the ones a packet type does not model.

use bytes::{BufMut, BytesMut};

use super::DecodeError;
use super::prim::{Reader, encode_var_int, put_bin, put_str};

pub(super) const PAYLOAD_FORMAT: u8 = 0x01;
pub(super) const MESSAGE_EXPIRY: u8 = 0x02;
pub(super) const CONTENT_TYPE: u8 = 0x03;
pub(super) const RESPONSE_TOPIC: u8 = 0x08;
pub(super) const CORRELATION_DATA: u8 = 0x09;
pub(super) const SUBSCRIPTION_ID: u8 = 0x0B;
pub(super) const SESSION_EXPIRY: u8 = 0x11;
pub(super) const ASSIGNED_CLIENT_ID: u8 = 0x12;
pub(super) const SERVER_KEEP_ALIVE: u8 = 0x13;
pub(super) const AUTH_METHOD: u8 = 0x15;
pub(super) const AUTH_DATA: u8 = 0x16;
pub(super) const REQUEST_PROBLEM_INFO: u8 = 0x17;
pub(super) const WILL_DELAY: u8 = 0x18;
pub(super) const REQUEST_RESPONSE_INFO: u8 = 0x19;
pub(super) const RESPONSE_INFO: u8 = 0x1A;
pub(super) const SERVER_REFERENCE: u8 = 0x1C;
pub(super) const REASON_STRING: u8 = 0x1F;
pub(super) const RECEIVE_MAXIMUM: u8 = 0x21;
pub(super) const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
pub(super) const TOPIC_ALIAS: u8 = 0x23;
pub(super) const MAXIMUM_QOS: u8 = 0x24;
pub(super) const RETAIN_AVAILABLE: u8 = 0x25;
pub(super) const USER_PROPERTY: u8 = 0x26;
pub(super) const MAX_PACKET_SIZE: u8 = 0x27;
pub(super) const WILDCARD_AVAILABLE: u8 = 0x28;
pub(super) const SUBSCRIPTION_ID_AVAILABLE: u8 = 0x29;
pub(super) const SHARED_AVAILABLE: u8 = 0x2A;

/// A decoded property value; the variant is fixed by the property id.
pub(super) enum Value {
    Byte(u8),
    Two(u16),
    Four(u32),
    VarInt(u32),
    Str(String),
    Bin(Vec<u8>),
    Pair(String, String),
}

#[derive(Clone, Copy)]
enum Kind {
    /// A byte whose only legal values are 0 and 1.
    Flag,
    Two,
    Four,
    VarInt,
    Str,
    Bin,
    Pair,
}

/// The wire type of every property MQTT 5 defines; `None` means the id is unknown.
fn kind(id: u8) -> Option<Kind> {
    Some(match id {
        PAYLOAD_FORMAT
        | REQUEST_PROBLEM_INFO
        | REQUEST_RESPONSE_INFO
        | MAXIMUM_QOS
        | RETAIN_AVAILABLE
        | WILDCARD_AVAILABLE
        | SUBSCRIPTION_ID_AVAILABLE
        | SHARED_AVAILABLE => Kind::Flag,
        SERVER_KEEP_ALIVE | RECEIVE_MAXIMUM | TOPIC_ALIAS_MAXIMUM | TOPIC_ALIAS => Kind::Two,
        MESSAGE_EXPIRY | SESSION_EXPIRY | WILL_DELAY | MAX_PACKET_SIZE => Kind::Four,
        SUBSCRIPTION_ID => Kind::VarInt,
        CONTENT_TYPE | RESPONSE_TOPIC | ASSIGNED_CLIENT_ID | AUTH_METHOD | RESPONSE_INFO | SERVER_REFERENCE
        | REASON_STRING => Kind::Str,
        CORRELATION_DATA | AUTH_DATA => Kind::Bin,
        USER_PROPERTY => Kind::Pair,
        _ => return None,
    })
}

/// Reads a property section (length + properties) and hands each property to `each`.
///
/// Unknown ids, repeated single-valued properties, and out-of-range values (flags other than
/// 0/1, zero where MQTT forbids it) are errors; `each` ignores the properties it does not need.
pub(super) fn read(
    r: &mut Reader,
    mut each: impl FnMut(u8, Value) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    let len = r.var_int("property length")?;
    let mut section = r.sub(usize::try_from(len).unwrap_or(usize::MAX), "properties")?;
    // Every defined id is below 64, so one bit per id tracks repeats.
    let mut seen = 0u64;
    while !section.is_empty() {
        let raw = section.var_int("property id")?;
        let unknown = DecodeError::BadProperty { id: raw, reason: "unknown property id" };
        let id = u8::try_from(raw).map_err(|_| unknown.clone())?;
        let kind = kind(id).ok_or(unknown)?;
        let bad = |reason| DecodeError::BadProperty { id: raw, reason };
        let bit = 1u64 << id;
        if seen & bit != 0 && id != USER_PROPERTY && id != SUBSCRIPTION_ID {
            return Err(bad("property repeated"));
        }
        seen |= bit;
        let value = match kind {
            Kind::Flag => match section.u8("property value")? {
                v @ (0 | 1) => Value::Byte(v),
                _ => return Err(bad("value must be 0 or 1")),
            },
            Kind::Two => Value::Two(section.u16("property value")?),
            Kind::Four => Value::Four(section.u32("property value")?),
            Kind::VarInt => Value::VarInt(section.var_int("property value")?),
            Kind::Str => Value::Str(section.string("property value")?),
            Kind::Bin => Value::Bin(section.binary("property value")?),
            Kind::Pair => Value::Pair(section.string("user property name")?, section.string("user property value")?),
        };
        let zero = matches!(value, Value::Two(0) | Value::Four(0) | Value::VarInt(0));
        if zero && matches!(id, RECEIVE_MAXIMUM | TOPIC_ALIAS | MAX_PACKET_SIZE | SUBSCRIPTION_ID) {
            return Err(bad("value must not be 0"));
        }
        each(id, value)?;
    }
    Ok(())
}

/// Reads a property section the caller has no use for, still validating it.
pub(super) fn skip(r: &mut Reader) -> Result<(), DecodeError> {
    read(r, |_, _| Ok(()))
}

pub(super) fn put_u8(out: &mut BytesMut, id: u8, v: Option<u8>) {
    if let Some(v) = v {
        out.put_u8(id);
        out.put_u8(v);
    }
}

pub(super) fn put_u16(out: &mut BytesMut, id: u8, v: Option<u16>) {
    if let Some(v) = v {
        out.put_u8(id);
        out.put_u16(v);
    }
}

pub(super) fn put_u32(out: &mut BytesMut, id: u8, v: Option<u32>) {
    if let Some(v) = v {
        out.put_u8(id);
        out.put_u32(v);
    }
}

pub(super) fn put_var(out: &mut BytesMut, id: u8, v: Option<u32>) {
    if let Some(v) = v {
        out.put_u8(id);
        encode_var_int(v, out);
    }
}

pub(super) fn put_string(out: &mut BytesMut, id: u8, v: Option<&str>) {
    if let Some(v) = v {
        out.put_u8(id);
        put_str(out, v);
    }
}

pub(super) fn put_binary(out: &mut BytesMut, id: u8, v: Option<&[u8]>) {
    if let Some(v) = v {
        out.put_u8(id);
        put_bin(out, v);
    }
}

pub(super) fn put_pair(out: &mut BytesMut, name: &str, value: &str) {
    out.put_u8(USER_PROPERTY);
    put_str(out, name);
    put_str(out, value);
}
