//! What a receiver sees as the sender is who the edge authenticated, never what the publisher
//! claims.
//!
//! Every message a client publishes (and its will) carries the user property
//! [`SENDER_PROPERTY`] set by the edge (`{enterprise}/{user}` for token users, the user name for
//! users-file users); a client-supplied property of that name is removed, so v5 receivers can
//! trust it. On an enterprise's `{eid}/im/...` topics an envelope whose `source` names someone
//! else gets the authenticated user name as its `source`, for v3 receivers and SDKs that read
//! the envelope.

use ntex_bytes::{ByteString, Bytes};
use ntex_mqtt::v5::codec::PublishProperties;

use crate::auth::Identity;
use crate::message::Message;

/// The user property naming the authenticated sender.
pub const SENDER_PROPERTY: &str = "hermes-sender";

/// User properties only the edge sets: a client's own of these names (in any case) are removed
/// from what it publishes.
const EDGE_PROPERTIES: [&str; 4] =
    [SENDER_PROPERTY, crate::streams::SEQ_PROPERTY, crate::streams::EPOCH_PROPERTY, crate::events::CHANGED_PROPERTY];

/// What a connection's publishes are stamped with, worked out once when it connects (every
/// PUBLISH is stamped: nothing is formatted per message).
#[derive(Debug, Clone)]
pub struct Sender {
    /// The [`SENDER_PROPERTY`] value; empty for anonymous clients, who get none.
    property: ByteString,
    /// Token users: their enterprise (whose `im` topics carry envelopes) and user name.
    envelope: Option<(String, String)>,
}

impl Sender {
    pub fn of(who: &Identity) -> Sender {
        Sender {
            property: ByteString::from(who.sender()),
            envelope: who.via_token.then(|| (who.enterprise.clone(), who.username.clone())),
        }
    }

    /// How long its stamp's names are, in bytes.
    pub fn names_len(&self) -> usize {
        self.property.len() + self.envelope.as_ref().map_or(0, |(e, u)| e.len() + u.len())
    }

    /// Stamps `msg` with the authenticated sender.
    pub fn stamp(&self, msg: &mut Message) {
        self.stamp_property(&mut msg.properties);
        if let Some((enterprise, user)) = &self.envelope
            && is_im_topic(&msg.topic, enterprise)
            && let Some(fixed) = envelope_from(&msg.payload, user)
        {
            msg.payload = fixed;
        }
    }

    fn stamp_property(&self, properties: &mut Option<Box<PublishProperties>>) {
        if let Some(p) = properties.as_mut() {
            p.user_properties.retain(|(k, _)| !EDGE_PROPERTIES.iter().any(|e| k.eq_ignore_ascii_case(e)));
        }
        if !self.property.is_empty() {
            let p = properties.get_or_insert_with(Box::default);
            p.user_properties.push((ByteString::from_static(SENDER_PROPERTY), self.property.clone()));
        }
    }
}

fn is_im_topic(topic: &str, enterprise: &str) -> bool {
    topic.strip_prefix(enterprise).is_some_and(|rest| rest.starts_with("/im/"))
}

/// If `payload` reads as an envelope whose `source` is not `user`, the same bytes with a
/// `source` field naming `user` appended: protobuf keeps the last value of a field, so every
/// decoder sees `user`, and nothing else in the payload changes (fields this edge does not know
/// survive). Payloads that are not envelopes, or already name `user`, are left alone.
fn envelope_from(payload: &Bytes, user: &str) -> Option<Bytes> {
    let env = wire::envelope::decode(payload).ok()?;
    if env.source.is_empty() || env.source == user {
        return None;
    }
    Some(Bytes::from(wire::envelope::with_source(payload, user)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker::QoS;
    use wire::pb::Direction;

    fn alice() -> Identity {
        Identity {
            username: "alice".into(),
            enterprise: "acme".into(),
            user_id: "u1".into(),
            via_token: true,
            ..Identity::default()
        }
    }

    fn message(topic: &str, payload: Vec<u8>) -> Message {
        Message::new(ByteString::from(topic), Bytes::from(payload), QoS::AtLeastOnce, false)
    }

    fn sender_of(msg: &Message) -> Vec<String> {
        let props = msg.properties.as_ref().map(|p| p.user_properties.clone()).unwrap_or_default();
        props.iter().filter(|(k, _)| k.as_str() == SENDER_PROPERTY).map(|(_, v)| v.to_string()).collect()
    }

    #[test]
    fn a_forged_envelope_source_is_replaced_and_the_rest_kept() {
        let forged = wire::envelope::text("m1".into(), "carol".into(), Direction::P2p, "hi bob", 7);
        let mut bytes = wire::envelope::encode(&forged);
        bytes.extend_from_slice(&[0xf8, 0x07, 0x01]); // field 127, varint 1: unknown to us
        let mut msg = message("acme/im/msg/bob", bytes.clone());
        Sender::of(&alice()).stamp(&mut msg);
        let seen = wire::envelope::decode(&msg.payload).expect("still an envelope");
        assert_eq!(seen.source, "alice");
        assert_eq!(seen.data, b"hi bob");
        assert!(msg.payload.starts_with(&bytes), "the original bytes are kept");
        assert_eq!(sender_of(&msg), ["acme/alice"]);
    }

    #[test]
    fn honest_envelopes_and_plain_payloads_are_untouched() {
        let honest =
            wire::envelope::encode(&wire::envelope::text("m1".into(), "alice".into(), Direction::P2p, "hi", 7));
        for payload in [honest, b"online".to_vec(), b"in a meeting".to_vec(), Vec::new()] {
            let mut msg = message("acme/im/msg/bob", payload.clone());
            Sender::of(&alice()).stamp(&mut msg);
            assert_eq!(msg.payload.as_ref(), payload.as_slice());
        }
        // Outside the enterprise's im tree an envelope is the publisher's business.
        let other = wire::envelope::encode(&wire::envelope::text("m".into(), "x".into(), Direction::P2p, "", 0));
        let mut msg = message("acme/team/general", other.clone());
        Sender::of(&alice()).stamp(&mut msg);
        assert_eq!(msg.payload.as_ref(), other.as_slice());
        assert_eq!(sender_of(&msg), ["acme/alice"]);
    }

    #[test]
    fn a_claimed_sender_property_is_removed() {
        let mut msg = message("acme/im/msg/bob", b"hi".to_vec());
        let claimed = vec![
            (ByteString::from("Hermes-Sender"), ByteString::from("acme/carol")),
            (ByteString::from("from"), ByteString::from("carol")),
        ];
        msg.properties = Some(Box::new(PublishProperties { user_properties: claimed, ..Default::default() }));
        Sender::of(&alice()).stamp(&mut msg);
        assert_eq!(sender_of(&msg), ["acme/alice"]);
        let names: Vec<String> = msg
            .properties
            .as_ref()
            .map_or_else(Vec::new, |p| p.user_properties.iter().map(|(k, _)| k.to_string()).collect());
        assert_eq!(names, ["from", SENDER_PROPERTY], "other properties pass through");
        // Anonymous clients prove no name: the claim goes, nothing is added.
        let anonymous = Identity { username: "alice".into(), anonymous: true, ..Identity::default() };
        let mut msg = message("t", b"x".to_vec());
        msg.properties = Some(Box::new(PublishProperties {
            user_properties: vec![(ByteString::from(SENDER_PROPERTY), ByteString::from("acme/alice"))],
            ..Default::default()
        }));
        Sender::of(&anonymous).stamp(&mut msg);
        assert!(sender_of(&msg).is_empty());
    }

    #[test]
    fn long_user_names_get_a_multi_byte_length() {
        let user = "u".repeat(200);
        let forged = wire::envelope::encode(&wire::envelope::text("m".into(), "x".into(), Direction::P2p, "", 0));
        let fixed = envelope_from(&Bytes::from(forged), &user).expect("rewritten");
        assert_eq!(wire::envelope::decode(&fixed).expect("decodes").source, user);
    }
}
