//! Codec tests: round trips of every packet in both versions, partial input, known byte
//! layouts, and malformed input that must error instead of panicking.

use bytes::{Bytes, BytesMut};

use super::*;

const MAX: usize = 1 << 20;

fn bytes_of(p: &Packet, v: Version) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(p, v, &mut out);
    out.to_vec()
}

fn decode_all(bytes: &[u8], v: Version) -> Result<Option<Packet>, DecodeError> {
    decode(&mut BytesMut::from(bytes), v, MAX)
}

fn connect_full(v5: bool) -> Connect {
    Connect {
        client_id: "client-ü".into(),
        clean_start: true,
        keep_alive: 30,
        username: Some("user".into()),
        password: Some(vec![0, 1, 2, 255]),
        will: Some(Will {
            topic: "will/t".into(),
            payload: b"gone".to_vec(),
            qos: 2,
            retain: true,
            delay_interval: v5.then_some(10),
        }),
        session_expiry: v5.then_some(3600),
        receive_maximum: v5.then_some(20),
        max_packet_size: v5.then_some(65_536),
        topic_alias_maximum: v5.then_some(8),
    }
}

/// Every variant, with only the fields `v` can carry set.
fn samples(v: Version) -> Vec<Packet> {
    let v5 = v == Version::V5;
    let props = if v5 {
        PublishProperties {
            message_expiry: Some(60),
            topic_alias: Some(3),
            subscription_ids: vec![1, 268_435_455],
            user_properties: vec![("k".into(), "v".into()), ("k".into(), "v2".into())],
            content_type: Some("text/plain".into()),
            response_topic: Some("reply/to".into()),
            correlation_data: Some(vec![9, 8, 7]),
        }
    } else {
        PublishProperties::default()
    };
    let code = |c: u8| if v5 { c } else { 0 };
    let mut out = vec![
        Packet::Connect(connect_full(v5)),
        Packet::Connect(Connect { client_id: String::new(), ..Connect::default() }),
        Packet::Connect(Connect { will: Some(Will { topic: "w".into(), ..Will::default() }), ..Connect::default() }),
        Packet::ConnAck { session_present: true, code: 0, properties: ConnAckProperties::default() },
        Packet::ConnAck {
            session_present: false,
            code: if v5 { 0x87 } else { 5 },
            properties: ConnAckProperties::default(),
        },
        Packet::Publish(Publish { topic: "a/b".into(), payload: Bytes::from_static(b"hello"), ..Publish::default() }),
        Packet::Publish(Publish {
            topic: "a/€".into(),
            payload: Bytes::from(vec![0u8; 300]),
            qos: 1,
            retain: true,
            dup: true,
            packet_id: Some(7),
            properties: props.clone(),
        }),
        Packet::Publish(Publish {
            topic: "q2".into(),
            qos: 2,
            packet_id: Some(65_535),
            properties: props,
            ..Publish::default()
        }),
        Packet::Publish(Publish { topic: "empty".into(), ..Publish::default() }),
        Packet::PubAck { packet_id: 1, code: 0 },
        Packet::PubAck { packet_id: 2, code: code(0x10) },
        Packet::PubRec { packet_id: 3, code: code(0x80) },
        Packet::PubRel { packet_id: 4, code: code(0x92) },
        Packet::PubComp { packet_id: 5, code: 0 },
        Packet::Subscribe {
            packet_id: 10,
            topics: vec![
                SubscribeTopic::new("a/+", 0),
                SubscribeTopic {
                    filter: "b/#".into(),
                    qos: 2,
                    no_local: v5,
                    retain_as_published: v5,
                    retain_handling: if v5 { 2 } else { 0 },
                },
            ],
            subscription_id: v5.then_some(42),
            user_properties: if v5 { vec![("hermes-resume".into(), "7:42".into())] } else { vec![] },
        },
        Packet::SubAck {
            packet_id: 10,
            codes: vec![0, 1, 2, 0x80],
            reason_string: v5.then(|| "one refused".into()),
            user_properties: if v5 { vec![("a".into(), "1".into()), ("a".into(), "2".into())] } else { vec![] },
        },
        Packet::Unsubscribe { packet_id: 11, filters: vec!["a/+".into(), "b/#".into()] },
        Packet::UnsubAck { packet_id: 11, codes: if v5 { vec![0, 0x11] } else { vec![] } },
        Packet::PingReq,
        Packet::PingResp,
        Packet::Disconnect { code: 0, session_expiry: None, reason_string: None, server_reference: None },
    ];
    if v5 {
        out.push(Packet::ConnAck {
            session_present: false,
            code: 0,
            properties: ConnAckProperties {
                session_expiry: Some(100),
                receive_maximum: Some(10),
                maximum_qos: Some(1),
                max_packet_size: Some(1024),
                assigned_client_id: Some("auto-1".into()),
                topic_alias_maximum: Some(5),
                reason_string: Some("welcome".into()),
                server_keep_alive: Some(45),
                server_reference: None,
            },
        });
        out.push(Packet::ConnAck {
            session_present: false,
            code: 0x9C,
            properties: ConnAckProperties {
                reason_string: Some("go elsewhere".into()),
                server_reference: Some("edge-2.example.com:1883".into()),
                ..ConnAckProperties::default()
            },
        });
        out.push(Packet::Disconnect {
            code: 0x8E,
            session_expiry: Some(0),
            reason_string: Some("taken over".into()),
            server_reference: None,
        });
        out.push(Packet::Disconnect { code: 0x04, session_expiry: None, reason_string: None, server_reference: None });
        let elsewhere = Some("10.0.0.2:1883".into());
        out.push(Packet::Disconnect {
            code: 0x8B,
            session_expiry: None,
            reason_string: None,
            server_reference: elsewhere,
        });
    }
    out
}

#[test]
fn round_trips_every_packet_in_both_versions() {
    for v in [Version::V311, Version::V5] {
        for p in samples(v) {
            let mut buf = BytesMut::from(&bytes_of(&p, v)[..]);
            let got = decode(&mut buf, v, MAX).expect("decodes").expect("complete");
            assert_eq!(got, p, "{v:?}");
            assert!(buf.is_empty(), "consumed exactly one packet: {p:?}");
        }
    }
}

#[test]
fn partial_input_needs_more_until_complete() {
    for v in [Version::V311, Version::V5] {
        for p in samples(v) {
            let bytes = bytes_of(&p, v);
            let mut buf = BytesMut::new();
            for (i, b) in bytes.iter().enumerate() {
                assert_eq!(decode(&mut buf, v, MAX), Ok(None), "{p:?} at {i}");
                assert_eq!(buf.len(), i, "nothing consumed while incomplete");
                buf.extend_from_slice(&[*b]);
            }
            assert_eq!(decode(&mut buf, v, MAX), Ok(Some(p)));
        }
    }
}

#[test]
fn consumes_one_packet_at_a_time() {
    let mut buf = BytesMut::new();
    encode(&Packet::PingReq, Version::V5, &mut buf);
    encode(&Packet::PubAck { packet_id: 9, code: 0x10 }, Version::V5, &mut buf);
    assert_eq!(decode(&mut buf, Version::V5, MAX), Ok(Some(Packet::PingReq)));
    assert_eq!(decode(&mut buf, Version::V5, MAX), Ok(Some(Packet::PubAck { packet_id: 9, code: 0x10 })));
    assert_eq!(decode(&mut buf, Version::V5, MAX), Ok(None));
}

#[test]
fn known_byte_layouts() {
    let v3 = Version::V311;
    assert_eq!(bytes_of(&Packet::PingReq, v3), [0xC0, 0]);
    assert_eq!(bytes_of(&Packet::PubRel { packet_id: 1, code: 0x92 }, v3), [0x62, 2, 0, 1]);
    assert_eq!(bytes_of(&Packet::PubAck { packet_id: 1, code: 0 }, Version::V5), [0x40, 2, 0, 1]);
    assert_eq!(bytes_of(&Packet::PubAck { packet_id: 1, code: 0x10 }, Version::V5), [0x40, 3, 0, 1, 0x10]);
    let c = Connect { client_id: "c".into(), clean_start: true, keep_alive: 60, ..Connect::default() };
    assert_eq!(
        bytes_of(&Packet::Connect(c.clone()), v3),
        [0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 1, b'c']
    );
    assert_eq!(
        bytes_of(&Packet::Connect(c), Version::V5),
        [0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 0, 0, 1, b'c']
    );
    let d = Packet::Disconnect { code: 0, session_expiry: None, reason_string: None, server_reference: None };
    assert_eq!(bytes_of(&d, Version::V5), [0xE0, 0]);
}

#[test]
fn v5_acks_accept_every_short_form() {
    let v5 = Version::V5;
    assert_eq!(decode_all(&[0x50, 2, 0, 7], v5), Ok(Some(Packet::PubRec { packet_id: 7, code: 0 })));
    assert_eq!(decode_all(&[0x50, 3, 0, 7, 0x10], v5), Ok(Some(Packet::PubRec { packet_id: 7, code: 0x10 })));
    assert_eq!(decode_all(&[0x50, 4, 0, 7, 0x10, 0], v5), Ok(Some(Packet::PubRec { packet_id: 7, code: 0x10 })));
    // Reason string and user property are skipped.
    let with_props = [0x70, 13, 0, 7, 0, 9, 0x1F, 0, 1, b'r', 0x26, 0, 0, 0, 0];
    assert_eq!(decode_all(&with_props, v5), Ok(Some(Packet::PubComp { packet_id: 7, code: 0 })));
    assert_eq!(decode_all(&with_props[..14], v5), Ok(None));
    let mut too_long = with_props;
    too_long[5] = 10;
    assert_eq!(decode_all(&too_long, v5), Err(DecodeError::Truncated("properties")));
    assert_eq!(
        decode_all(&[0xE0, 1, 0x8E], v5),
        Ok(Some(Packet::Disconnect { code: 0x8E, session_expiry: None, reason_string: None, server_reference: None }))
    );
    // 3.1.1 acks are exactly two bytes.
    assert_eq!(decode_all(&[0x40, 3, 0, 7, 0], Version::V311), Err(DecodeError::TrailingBytes("PUBACK")));
}

#[test]
fn var_int_helpers() {
    for (value, len) in
        [(0, 1), (127, 1), (128, 2), (16_383, 2), (16_384, 3), (2_097_151, 3), (2_097_152, 4), (MAX_VAR_INT, 4)]
    {
        let mut out = BytesMut::new();
        encode_var_int(value, &mut out);
        assert_eq!(out.len(), len, "{value}");
        assert_eq!(decode_var_int(&out), Ok(Some((value, len))));
        assert_eq!(decode_var_int(&out[..len - 1]), Ok(None));
    }
    let mut out = BytesMut::new();
    encode_var_int(u32::MAX, &mut out);
    assert_eq!(&out[..], [0xFF, 0xFF, 0xFF, 0x7F], "clamped to the largest encodable value");
    assert!(decode_var_int(&[0x80, 0x80, 0x80, 0x80, 0x01]).is_err());
}

#[test]
fn malformed_remaining_length_errors() {
    for v in [Version::V311, Version::V5] {
        let bytes = [0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F];
        assert_eq!(decode_all(&bytes, v), Err(DecodeError::MalformedRemainingLength));
        // Detected as soon as the fourth length byte arrives.
        assert_eq!(decode_all(&bytes[..5], v), Err(DecodeError::MalformedRemainingLength));
        assert_eq!(decode_all(&bytes[..4], v), Ok(None));
    }
}

#[test]
fn oversize_packet_errors_before_it_is_buffered() {
    let p = Packet::Publish(Publish { topic: "t".into(), payload: Bytes::from(vec![1u8; 100]), ..Publish::default() });
    let bytes = bytes_of(&p, Version::V311);
    let mut buf = BytesMut::from(&bytes[..3]);
    assert_eq!(decode(&mut buf, Version::V311, 50), Err(DecodeError::PacketTooLarge { size: bytes.len(), max: 50 }));
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(decode(&mut buf, Version::V311, bytes.len()), Ok(Some(p)));
}

#[test]
fn invalid_utf8_and_nul_are_refused() {
    for v in [Version::V311, Version::V5] {
        assert_eq!(decode_all(&[0x30, 4, 0, 2, 0xFF, 0xFE], v), Err(DecodeError::InvalidUtf8("topic")));
        // A lone surrogate encoded as UTF-8 is not valid UTF-8 either.
        assert_eq!(decode_all(&[0x30, 5, 0, 3, 0xED, 0xA0, 0x80], v), Err(DecodeError::InvalidUtf8("topic")));
        assert_eq!(decode_all(&[0x30, 4, 0, 2, b'a', 0], v), Err(DecodeError::InvalidUtf8("topic")));
    }
}

#[test]
fn bad_headers_error() {
    let v = Version::V5;
    assert_eq!(decode_all(&[0x00, 0], v), Err(DecodeError::UnknownPacketType(0)));
    assert_eq!(decode_all(&[0xF0, 0], v), Err(DecodeError::UnknownPacketType(15)));
    assert_eq!(decode_all(&[0x36], v), Err(DecodeError::InvalidFlags { packet_type: 3, flags: 6 }));
    assert_eq!(decode_all(&[0x60, 2, 0, 1], v), Err(DecodeError::InvalidFlags { packet_type: 6, flags: 0 }));
    assert_eq!(decode_all(&[0xC1, 0], v), Err(DecodeError::InvalidFlags { packet_type: 12, flags: 1 }));
    assert_eq!(decode_all(&[0xD0, 1, 0], v), Err(DecodeError::TrailingBytes("PINGRESP")));
}

#[test]
fn truncated_fields_error() {
    let v = Version::V311;
    assert_eq!(decode_all(&[0x30, 3, 0, 5, b'a'], v), Err(DecodeError::Truncated("topic")));
    assert_eq!(decode_all(&[0x32, 3, 0, 1, b'a'], v), Err(DecodeError::Truncated("packet id")));
    assert_eq!(decode_all(&[0x20, 1, 0], v), Err(DecodeError::Truncated("connack code")));
    assert_eq!(decode_all(&[0x40, 1, 0], v), Err(DecodeError::Truncated("packet id")));
    assert_eq!(decode_all(&[0x90, 2, 0, 1], v), Err(DecodeError::Malformed("SUBACK without reason codes")));
    assert_eq!(decode_all(&[0x82, 2, 0, 1], v), Err(DecodeError::Malformed("SUBSCRIBE without topic filters")));
    // v5 property length pointing past the end.
    assert_eq!(decode_all(&[0x20, 3, 0, 0, 5], Version::V5), Err(DecodeError::Truncated("properties")));
}

#[test]
fn bad_properties_error() {
    let v5 = Version::V5;
    // Unknown id 0x7F in a CONNACK.
    assert!(matches!(decode_all(&[0x20, 5, 0, 0, 2, 0x7F, 0], v5), Err(DecodeError::BadProperty { id: 0x7F, .. })));
    // Repeated Receive Maximum.
    assert!(matches!(
        decode_all(&[0x20, 9, 0, 0, 6, 0x21, 0, 1, 0x21, 0, 1], v5),
        Err(DecodeError::BadProperty { id: 0x21, .. })
    ));
    // Receive Maximum of 0 and a Maximum QoS of 2.
    assert!(matches!(decode_all(&[0x20, 6, 0, 0, 3, 0x21, 0, 0], v5), Err(DecodeError::BadProperty { id: 0x21, .. })));
    assert!(matches!(decode_all(&[0x20, 5, 0, 0, 2, 0x24, 2], v5), Err(DecodeError::BadProperty { id: 0x24, .. })));
    // A property running past its section.
    assert_eq!(decode_all(&[0x20, 5, 0, 0, 2, 0x21, 0], v5), Err(DecodeError::Truncated("property value")));
    // Known-but-unmodelled properties (Retain Available, Wildcard Available) are skipped.
    assert_eq!(
        decode_all(&[0x20, 7, 1, 0, 4, 0x25, 1, 0x28, 0], v5),
        Ok(Some(Packet::ConnAck { session_present: true, code: 0, properties: ConnAckProperties::default() }))
    );
}

#[test]
fn encoding_clamps_instead_of_panicking() {
    let long = "é".repeat(40_000);
    let p = Packet::Publish(Publish { topic: long, ..Publish::default() });
    let got = decode_all(&bytes_of(&p, Version::V311), Version::V311).expect("valid").expect("complete");
    let Packet::Publish(got) = got else { panic!("not a publish") };
    assert_eq!(got.topic.len(), 65_534, "truncated at a char boundary");
    // QoS 7 is sent as the invalid QoS 3, which a decoder must refuse.
    let p = Packet::Publish(Publish { topic: "t".into(), qos: 7, packet_id: Some(1), ..Publish::default() });
    assert!(matches!(decode_all(&bytes_of(&p, Version::V5), Version::V5), Err(DecodeError::InvalidFlags { .. })));
}

#[test]
fn garbage_never_panics() {
    // A cheap deterministic fuzz: every prefix of every sample with bytes flipped.
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    for v in [Version::V311, Version::V5] {
        for p in samples(v) {
            let bytes = bytes_of(&p, v);
            for _ in 0..200 {
                let mut b = bytes.clone();
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let idx = usize::try_from(seed % b.len() as u64).expect("fits");
                b[idx] = (seed >> 32) as u8;
                // Also cut the (possibly corrupted) packet short at a random point.
                let cut = usize::try_from((seed >> 16) % (b.len() as u64 + 1)).expect("fits");
                for input in [&b[..], &b[..cut]] {
                    let mut buf = BytesMut::from(input);
                    // Decoding must stop (error or need-more) without panicking or looping.
                    while let Ok(Some(_)) = decode(&mut buf, v, MAX) {}
                }
            }
        }
    }
}
