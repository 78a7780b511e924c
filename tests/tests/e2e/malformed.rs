//! Bad bytes on the wire close that one connection with the right reason, never the server:
//! after each case a well-behaved client still gets its messages.

use std::time::Duration;

use hermes_tests::*;
use sdk::mqtt::{Packet, SubscribeTopic, Version};

/// CONNECT for "bad" with protocol level 4 (3.1.1), clean session, keep-alive 60.
const CONNECT_V311: &[u8] = &[0x10, 15, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 3, b'b', b'a', b'd'];
/// The same with keep-alive 1 s: a packet cut short is only noticed when the client falls silent.
const CONNECT_V311_KA1: &[u8] = &[0x10, 15, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 1, 0, 3, b'b', b'a', b'd'];

async fn still_serving(edge: &TestEdge, case: &str) {
    let mut s = edge.client(Version::V311, &format!("ok-sub-{case}")).await;
    s.subscribe(vec![SubscribeTopic::new("alive/#", 0)], WAIT).await.expect("suback");
    let mut p = edge.client(Version::V5, &format!("ok-pub-{case}")).await;
    p.publish("alive/x", case.as_bytes(), 0, false, WAIT).await.expect("publish");
    assert_eq!(&expect_publish(&mut s).await.payload[..], case.as_bytes(), "after {case}");
}

async fn check(edge: &TestEdge, case: &str, connect: Option<&[u8]>, bytes: &[u8]) {
    let mut c = edge.raw(Version::V311).await;
    if let Some(connect) = connect {
        c.send_raw(connect).await.expect("send CONNECT");
        assert!(matches!(c.recv(WAIT).await, Ok(Packet::ConnAck { code: 0, .. })), "{case}: CONNACK");
    }
    c.send_raw(bytes).await.expect("send");
    assert!(c.is_closed(WAIT).await, "{case}: connection must be closed");
    still_serving(edge, case).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_packets_close_only_their_connection() {
    let edge = TestEdge::start_with(|c| c.limits.max_packet_size = 1024).await;
    check(&edge, "reserved packet type 0", None, &[0x00, 0x00]).await;
    check(&edge, "packet before CONNECT", None, &[0xC0, 0x00]).await;
    check(&edge, "bad remaining length", None, &[0x10, 0xff, 0xff, 0xff, 0xff, 0x01]).await;
    check(
        &edge,
        "unknown protocol name",
        None,
        &[0x10, 15, 0, 4, b'M', b'Q', b'X', b'X', 4, 2, 0, 60, 0, 3, b'b', b'a', b'd'],
    )
    .await;
    check(&edge, "second CONNECT", Some(CONNECT_V311), CONNECT_V311).await;
    check(&edge, "QoS 3 publish", Some(CONNECT_V311), &[0x36, 5, 0, 1, b'a', 0, 1]).await;
    check(&edge, "invalid UTF-8 topic", Some(CONNECT_V311), &[0x30, 5, 0, 3, 0xff, 0xfe, 0xfd]).await;
    check(&edge, "wildcard in topic name", Some(CONNECT_V311), &[0x30, 5, 0, 3, b'a', b'/', b'#']).await;
    check(&edge, "reserved SUBSCRIBE flags", Some(CONNECT_V311), &[0x80, 8, 0, 1, 0, 3, b'a', b'/', b'b', 0]).await;
    check(&edge, "SUBSCRIBE with QoS 3", Some(CONNECT_V311), &[0x82, 8, 0, 1, 0, 3, b'a', b'/', b'b', 3]).await;
    check(&edge, "SUBSCRIBE reserved bits", Some(CONNECT_V311), &[0x82, 8, 0, 1, 0, 3, b'a', b'/', b'b', 0x04]).await;
    check(&edge, "SUBSCRIBE without a filter", Some(CONNECT_V311), &[0x82, 2, 0, 1]).await;
    check(&edge, "UNSUBSCRIBE without a filter", Some(CONNECT_V311), &[0xA2, 2, 0, 1]).await;
    check(&edge, "topic longer than the packet", Some(CONNECT_V311_KA1), &[0x30, 2, 0, 9]).await;
    check(&edge, "PUBLISH cut short", Some(CONNECT_V311_KA1), &[0x30, 10, 0, 3, b'a']).await;
    let mut big = vec![0x30, 0x80, 0x10, 0, 1, b'a'];
    big.resize(6 + 2048, b'x');
    check(&edge, "oversize packet", Some(CONNECT_V311), &big).await;
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v5_oversize_packet_gets_disconnect_reason() {
    let edge = TestEdge::start_with(|c| c.limits.max_packet_size = 1024).await;
    let mut c = edge.client(Version::V5, "big5").await;
    let payload = vec![b'x'; 4096];
    let _ = c.publish("big/x", &payload, 0, false, WAIT).await;
    match c.recv(WAIT).await {
        Ok(Packet::Disconnect { code, .. }) => assert_eq!(code, 0x95, "packet too large"),
        Err(sdk::mqtt::RecvError::Closed | sdk::mqtt::RecvError::Io(_)) => {}
        other => panic!("{other:?}"),
    }
    assert!(c.is_closed(WAIT).await);
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn slowloris_is_cut_off_by_the_connect_timeout() {
    let edge = TestEdge::start_with(|c| c.limits.connect_timeout_secs = 1).await;
    let mut c = edge.raw(Version::V311).await;
    c.send_raw(&CONNECT_V311[..5]).await.expect("send half a CONNECT");
    let started = std::time::Instant::now();
    assert!(c.is_closed(Duration::from_secs(4)).await, "half-open handshake is closed");
    assert!(started.elapsed() < Duration::from_secs(4));
    still_serving(&edge, "slowloris").await;
    edge.stop().await;
}

/// What only a server may send, or MQTT 5 rules out, from a v5 client: a subscription
/// identifier or a response topic with a wildcard in a PUBLISH, No Local on a shared
/// subscription (DISCONNECT 0x82 Protocol error); an authentication method (there is no
/// enhanced authentication here: CONNACK 0x8C).
#[tokio::test(flavor = "multi_thread")]
async fn what_mqtt_5_rules_out_from_a_client_is_a_protocol_error() {
    let edge = TestEdge::start().await;
    // CONNECT v5 for "a", clean start, keep-alive 60, Authentication Method "SCRAM".
    let scram = [
        0x10, 22, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 8, 0x15, 0, 5, b'S', b'C', b'R', b'A', b'M', 0, 1, b'a',
    ];
    let mut c = edge.raw(Version::V5).await;
    c.send_raw(&scram).await.expect("send CONNECT");
    match c.recv(WAIT).await {
        Ok(Packet::ConnAck { code, .. }) => assert_eq!(code, 0x8C, "bad authentication method"),
        other => panic!("{other:?}"),
    }
    let publish = |properties| sdk::mqtt::Publish {
        topic: "t".into(),
        payload: bytes::Bytes::from_static(b"x"),
        qos: 1,
        packet_id: Some(1),
        properties,
        ..Default::default()
    };
    let cases = [
        sdk::mqtt::PublishProperties { subscription_ids: vec![1], ..Default::default() },
        sdk::mqtt::PublishProperties { response_topic: Some("replies/#".into()), ..Default::default() },
        sdk::mqtt::PublishProperties { response_topic: Some("replies/+/x".into()), ..Default::default() },
    ];
    for (n, properties) in cases.into_iter().enumerate() {
        let mut c = edge.client(Version::V5, &format!("wrong-{n}")).await;
        c.send(&Packet::Publish(publish(properties))).await.expect("send");
        assert_eq!(expect_disconnect(&mut c).await, 0x82, "case {n}");
    }
    // No topic and no topic alias [MQTT-3.3.2-8].
    let mut c = edge.client(Version::V5, "no-topic").await;
    let no_topic = sdk::mqtt::Publish { topic: String::new(), ..publish(Default::default()) };
    c.send(&Packet::Publish(no_topic)).await.expect("send");
    assert_eq!(expect_disconnect(&mut c).await, 0x82, "a PUBLISH without a topic");
    let mut fine = edge.client(Version::V5, "fine").await;
    let reply_to = sdk::mqtt::PublishProperties { response_topic: Some("replies/a".into()), ..Default::default() };
    fine.send(&Packet::Publish(publish(reply_to))).await.expect("send");
    assert!(matches!(fine.recv(WAIT).await, Ok(Packet::PubAck { code: 0x10, .. })), "a plain response topic");
    let mut c = edge.client(Version::V5, "shared-no-local").await;
    let shared = SubscribeTopic { no_local: true, ..SubscribeTopic::new("$share/g/t", 0) };
    let _ = c.subscribe(vec![shared], Duration::from_millis(500)).await;
    assert_eq!(expect_disconnect(&mut c).await, 0x82);
    let mut c = edge.client(Version::V5, "subscribes-to-nothing").await;
    let nothing = Packet::Subscribe { packet_id: 1, topics: vec![], subscription_id: None, user_properties: vec![] };
    c.send(&nothing).await.expect("send");
    assert_eq!(expect_disconnect(&mut c).await, 0x82, "a SUBSCRIBE without a filter");
    let mut c = edge.client(Version::V5, "unsubscribes-from-nothing").await;
    c.send(&Packet::Unsubscribe { packet_id: 1, filters: vec![] }).await.expect("send");
    assert_eq!(expect_disconnect(&mut c).await, 0x82, "an UNSUBSCRIBE without a filter");
    let mut c = edge.client(Version::V5, "plain-no-local").await;
    let plain = SubscribeTopic { no_local: true, ..SubscribeTopic::new("t", 0) };
    assert_eq!(c.subscribe(vec![plain], WAIT).await.expect("suback"), [0], "no local on a plain one");
    // Values MQTT 5 names protocol errors, and a Topic Alias of 0 [MQTT-3.3.2-8]: 0x94.
    let cases: [(&str, &[u8], u8); 6] = [
        ("subscription id 0", &[0x82, 9, 0, 1, 2, 0x0B, 0, 0, 1, b't', 0], 0x82),
        ("topic alias twice", &[0x30, 10, 0, 1, b'a', 6, 0x23, 0, 1, 0x23, 0, 1], 0x82),
        ("content type twice", &[0x30, 11, 0, 1, b'a', 7, 0x03, 0, 1, b'x', 0x03, 0, 0], 0x82),
        ("retain handling 3", &[0x82, 7, 0, 1, 0, 0, 1, b't', 0x30], 0x82),
        ("subscription maximum QoS 3", &[0x82, 7, 0, 1, 0, 0, 1, b't', 0x03], 0x82),
        ("topic alias 0", &[0x30, 7, 0, 1, b'a', 3, 0x23, 0, 0], 0x94),
    ];
    for (n, (case, bytes, code)) in cases.into_iter().enumerate() {
        let mut c = edge.client(Version::V5, &format!("protocol-error-{n}")).await;
        c.send_raw(bytes).await.expect("send");
        assert_eq!(expect_disconnect(&mut c).await, code, "{case}");
        assert!(c.is_closed(WAIT).await, "{case}: closed");
    }
    still_serving(&edge, "protocol-errors").await;
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn what_a_v5_client_sends_that_cannot_be_read_is_a_malformed_packet() {
    let edge = TestEdge::start().await;
    let cases: [(&str, &[u8]); 5] = [
        ("QoS 3 publish", &[0x36, 6, 0, 1, b'a', 0, 1, 0]),
        ("invalid UTF-8 topic", &[0x30, 6, 0, 3, 0xff, 0xfe, 0xfd, 0]),
        ("packet id 0", &[0x32, 6, 0, 1, b'a', 0, 0, 0]),
        ("reserved subscription option bit 6", &[0x82, 7, 0, 1, 0, 0, 1, b't', 0x40]),
        ("reserved subscription option bit 7", &[0x82, 7, 0, 1, 0, 0, 1, b't', 0x81]),
    ];
    for (n, (case, bytes)) in cases.into_iter().enumerate() {
        let mut c = edge.client(Version::V5, &format!("malformed-{n}")).await;
        c.send_raw(bytes).await.expect("send");
        assert_eq!(expect_disconnect(&mut c).await, 0x81, "{case}");
        assert!(c.is_closed(WAIT).await, "{case}: closed");
    }
    still_serving(&edge, "v5 malformed").await;
    edge.stop().await;
}
