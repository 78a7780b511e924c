//! Building and reading [`pb::Envelope`]: the kind byte (direction + content type) and the
//! protobuf encoding used as an MQTT payload.

use prost::Message;

use crate::pb::{self, ContentType, Direction};

/// Envelope format version this crate writes.
pub const VERSION: u32 = 1;

/// Packs direction (high nibble) and content type (low nibble) into paper 001's kind byte.
pub fn kind(direction: Direction, content: ContentType) -> u32 {
    ((direction as u32 & 0x0f) << 4) | (content as u32 & 0x0f)
}

/// Splits a kind byte; unknown values come back as `Unspecified`.
pub fn split_kind(kind: u32) -> (Direction, ContentType) {
    let d = Direction::try_from(((kind >> 4) & 0x0f) as i32).unwrap_or(Direction::Unspecified);
    let c = ContentType::try_from((kind & 0x0f) as i32).unwrap_or(ContentType::Unspecified);
    (d, c)
}

/// A text envelope from `source`.
pub fn text(msg_id: String, source: String, direction: Direction, text: &str, timestamp_ms: i64) -> pb::Envelope {
    pb::Envelope {
        version: VERSION,
        msg_id,
        kind: kind(direction, ContentType::Text),
        timestamp_ms,
        source,
        data: text.as_bytes().to_vec(),
        ..Default::default()
    }
}

pub fn encode(env: &pb::Envelope) -> Vec<u8> {
    env.encode_to_vec()
}

pub fn decode(bytes: &[u8]) -> Result<pb::Envelope, prost::DecodeError> {
    pb::Envelope::decode(bytes)
}

/// `payload` with `source` appended as the envelope's sender. Protobuf keeps the last value of
/// a field, so every decoder sees the appended one, and every other byte (fields this crate does
/// not know included) is kept.
pub fn with_source(payload: &[u8], source: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + source.len() + 6);
    out.extend_from_slice(payload);
    prost::encoding::string::encode(7, &source.to_owned(), &mut out);
    out
}

/// `payload` with its place in a durable stream appended (`seq`, `epoch`, `stream`), the same
/// way as [`with_source`].
pub fn with_stream_position(payload: &[u8], stream: &str, seq: u64, epoch: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + stream.len() + 26);
    out.extend_from_slice(payload);
    prost::encoding::uint64::encode(3, &seq, &mut out);
    prost::encoding::uint64::encode(4, &epoch, &mut out);
    prost::encoding::string::encode(11, &stream.to_owned(), &mut out);
    out
}

/// The envelope `payload` holds if an SDK or the publish API wrote it (a version and a message
/// id): other payloads, even ones that happen to parse, are not touched.
pub fn written_envelope(payload: &[u8]) -> Option<pb::Envelope> {
    decode(payload).ok().filter(|e| e.version >= 1 && !e.msg_id.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appended_fields_win_and_keep_the_rest() {
        let env = text("m1".into(), "carol".into(), Direction::P2p, "hi", 7);
        let mut bytes = encode(&env);
        bytes.extend_from_slice(&[0xf8, 0x07, 0x01]); // field 127, varint 1: unknown here
        let stamped = with_stream_position(&with_source(&bytes, "alice"), "acme/im/msg/bob", 42, u64::MAX);
        assert!(stamped.starts_with(&bytes));
        let seen = written_envelope(&stamped).expect("an envelope");
        assert_eq!((seen.source.as_str(), seen.seq, seen.epoch), ("alice", 42, u64::MAX));
        assert_eq!((seen.stream.as_str(), seen.data.as_slice()), ("acme/im/msg/bob", &b"hi"[..]));
        let again = with_stream_position(&stamped, "s", 1, 1);
        assert_eq!(decode(&again).map(|e| (e.seq, e.stream)).ok(), Some((1, "s".to_string())));
        assert!(written_envelope(b"online").is_none() && written_envelope(b"").is_none());
    }

    #[test]
    fn kind_byte_round_trips() {
        let k = kind(Direction::Group, ContentType::Image);
        assert_eq!(k, 0x45);
        assert_eq!(split_kind(k), (Direction::Group, ContentType::Image));
        assert_eq!(split_kind(0xff).0, Direction::Unspecified);
    }

    #[test]
    fn envelope_round_trips_and_rejects_garbage() {
        let e = text("01H".into(), "u1".into(), Direction::P2p, "hi", 7);
        assert_eq!(decode(&encode(&e)).expect("decodes"), e);
        assert!(decode(&[0xff, 0xff, 0xff]).is_err());
    }
}
