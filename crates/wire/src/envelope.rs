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

#[cfg(test)]
mod tests {
    use super::*;

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
