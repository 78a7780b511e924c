//! Sans-IO MQTT 3.1.1 / 5.0 packet types with `encode` and `decode`; no sockets, no async.
//!
//! Encoding never fails: fields a version cannot carry are silently dropped, and values the
//! wire cannot represent are clamped (see [`encode`]). Decoding never panics: anything a peer
//! can send either yields a [`Packet`] or a [`DecodeError`].

use bytes::BytesMut;

mod decode;
mod encode;
mod prim;
mod props;
#[cfg(test)]
mod tests;

pub use prim::{MAX_VAR_INT, decode_var_int, encode_var_int};

/// Protocol version spoken on a connection; it changes the layout of almost every packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    V311,
    /// MQTT 5.0 (protocol level 5).
    V5,
}

impl Version {
    /// The protocol level byte carried in CONNECT.
    pub fn level(self) -> u8 {
        match self {
            Version::V311 => 4,
            Version::V5 => 5,
        }
    }
}

/// CONNECT. The v5-only fields are ignored when encoding for 3.1.1.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Connect {
    pub client_id: String,
    /// "Clean session" in 3.1.1, "clean start" in 5.0.
    pub clean_start: bool,
    pub keep_alive: u16,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
    pub will: Option<Will>,
    /// v5 Session Expiry Interval property.
    pub session_expiry: Option<u32>,
    /// v5 Receive Maximum property.
    pub receive_maximum: Option<u16>,
    /// v5 Maximum Packet Size property.
    pub max_packet_size: Option<u32>,
    /// v5 Topic Alias Maximum property: how many topic aliases the server may send.
    pub topic_alias_maximum: Option<u16>,
}

/// The will message inside CONNECT.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Will {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    /// v5 Will Delay Interval property.
    pub delay_interval: Option<u32>,
}

/// PUBLISH. `packet_id` is only on the wire for QoS > 0; `properties` only in v5.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Publish {
    pub topic: String,
    pub payload: bytes::Bytes,
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
    pub packet_id: Option<u16>,
    pub properties: PublishProperties,
}

/// The v5 PUBLISH properties this SDK models (Payload Format Indicator is skipped on decode).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PublishProperties {
    pub message_expiry: Option<u32>,
    pub topic_alias: Option<u16>,
    pub subscription_ids: Vec<u32>,
    pub user_properties: Vec<(String, String)>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Vec<u8>>,
}

/// One entry of SUBSCRIBE. `no_local`, `retain_as_published` and `retain_handling` are v5-only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeTopic {
    pub filter: String,
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: u8,
}

impl SubscribeTopic {
    /// A plain subscription with all v5 options at their defaults.
    pub fn new(filter: &str, qos: u8) -> Self {
        SubscribeTopic {
            filter: filter.to_owned(),
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: 0,
        }
    }
}

/// The v5 CONNACK properties this SDK models; others are validated and skipped on decode.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnAckProperties {
    pub session_expiry: Option<u32>,
    pub receive_maximum: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub max_packet_size: Option<u32>,
    pub assigned_client_id: Option<String>,
    pub topic_alias_maximum: Option<u16>,
    pub reason_string: Option<String>,
    pub server_keep_alive: Option<u16>,
    /// Where to connect instead (with reason 0x9C Use another server, 0x9D Server moved).
    pub server_reference: Option<String>,
}

/// Every packet this SDK encodes and decodes (AUTH is not supported).
///
/// `code` fields are v5 reason codes (or the v3 CONNACK return code); in 3.1.1 acks carry no
/// code, so they are dropped on encode and decode as 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Connect),
    ConnAck {
        session_present: bool,
        code: u8,
        properties: ConnAckProperties,
    },
    Publish(Publish),
    PubAck {
        packet_id: u16,
        code: u8,
    },
    PubRec {
        packet_id: u16,
        code: u8,
    },
    PubRel {
        packet_id: u16,
        code: u8,
    },
    PubComp {
        packet_id: u16,
        code: u8,
    },
    /// `user_properties` only in v5.
    Subscribe {
        packet_id: u16,
        topics: Vec<SubscribeTopic>,
        subscription_id: Option<u32>,
        user_properties: Vec<(String, String)>,
    },
    /// v3: return codes (0, 1, 2, 0x80); v5: reason codes, and the reason string and user
    /// properties (empty in v3).
    SubAck {
        packet_id: u16,
        codes: Vec<u8>,
        reason_string: Option<String>,
        user_properties: Vec<(String, String)>,
    },
    Unsubscribe {
        packet_id: u16,
        filters: Vec<String>,
    },
    /// Always empty `codes` in 3.1.1, which has no UNSUBACK payload.
    UnsubAck {
        packet_id: u16,
        codes: Vec<u8>,
    },
    PingReq,
    PingResp,
    Disconnect {
        code: u8,
        session_expiry: Option<u32>,
        reason_string: Option<String>,
        /// v5: another server to use (sent by a server that stops or moves, MQTT 5 §4.11).
        server_reference: Option<String>,
    },
}

impl Packet {
    /// A DISCONNECT with `code` and no properties.
    pub fn disconnect(code: u8) -> Packet {
        Packet::Disconnect { code, session_expiry: None, reason_string: None, server_reference: None }
    }

    /// A normal DISCONNECT that ends the session with the connection (v5: session expiry 0).
    pub fn end_session() -> Packet {
        Packet::Disconnect { code: 0, session_expiry: Some(0), reason_string: None, server_reference: None }
    }
}

/// Why received bytes are not a valid packet. After any of these the stream is unusable:
/// the codec cannot know where the next packet starts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed remaining length: continuation bit set on the fourth byte")]
    MalformedRemainingLength,
    #[error("malformed variable byte integer in `{0}`")]
    MalformedVarInt(&'static str),
    #[error("packet of {size} bytes exceeds the {max}-byte limit")]
    PacketTooLarge { size: usize, max: usize },
    #[error("invalid UTF-8 string (or one containing U+0000) in `{0}`")]
    InvalidUtf8(&'static str),
    #[error("unknown or unsupported packet type {0}")]
    UnknownPacketType(u8),
    #[error("invalid fixed-header flags {flags:#06b} for packet type {packet_type}")]
    InvalidFlags { packet_type: u8, flags: u8 },
    #[error("packet truncated: `{0}` runs past the end")]
    Truncated(&'static str),
    #[error("bad property {id:#04x}: {reason}")]
    BadProperty { id: u32, reason: &'static str },
    #[error("unexpected bytes after the end of {0}")]
    TrailingBytes(&'static str),
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
}

/// Appends `packet` in wire format for `version` to `out`.
///
/// Never fails: fields `version` cannot carry are dropped, strings and binary fields longer
/// than 65 535 bytes are truncated, QoS/retain-handling above 3 are clamped to 3 (so a
/// deliberately invalid 3 still reaches the wire) and a body above [`MAX_VAR_INT`] gets a
/// saturated, therefore wrong, remaining length.
pub fn encode(packet: &Packet, version: Version, out: &mut BytesMut) {
    encode::packet(packet, version, out);
}

/// Decodes one packet from the front of `buf`.
///
/// `Ok(None)` means more bytes are needed and `buf` is untouched; on success exactly one packet
/// is consumed. `max_size` bounds the whole packet (fixed header included) and is checked as
/// soon as the header is readable, so an oversize packet is refused before it is buffered.
pub fn decode(buf: &mut BytesMut, version: Version, max_size: usize) -> Result<Option<Packet>, DecodeError> {
    decode::packet(buf, version, max_size)
}
