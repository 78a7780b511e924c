//! Configured limits refuse with the protocol's codes: SUBACK failures, topic limits; filters
//! that are not valid MQTT at all are malformed packets and close the connection.

use std::time::Duration;

use hermes_tests::*;
use sdk::mqtt::{Connect, Packet, SubscribeTopic, Version};

fn limited(c: &mut mqtt_edge::EdgeConfig) {
    c.limits.max_subscriptions_per_client = 2;
    c.limits.max_topic_levels = 4;
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_subscriptions_get_failure_codes() {
    let edge = TestEdge::start_with(limited).await;
    let mut v3 = edge.client(Version::V311, "refuse3").await;
    let codes = v3
        .subscribe(
            vec![
                SubscribeTopic::new("ok/1", 1),
                SubscribeTopic::new("a/b/c/d/e", 0),
                SubscribeTopic::new("ok/2", 2),
                SubscribeTopic::new("ok/3", 0),
            ],
            WAIT,
        )
        .await
        .expect("suback");
    assert_eq!(codes, vec![1, 0x80, 2, 0x80], "too deep, then over quota");
    let mut v5 = edge.client(Version::V5, "refuse5").await;
    let codes = v5
        .subscribe(
            vec![
                SubscribeTopic::new("ok/1", 1),
                SubscribeTopic::new("ok/2", 2),
                SubscribeTopic::new("ok/3", 0),
                SubscribeTopic::new("$share//x", 0),
                SubscribeTopic::new("a/b/c/d/e", 0),
            ],
            WAIT,
        )
        .await
        .expect("suback");
    assert_eq!(codes, vec![1, 2, 0x97, 0x8F, 0x8F]);
    // Re-subscribing to an existing filter is not a new subscription.
    assert_eq!(v5.subscribe(vec![SubscribeTopic::new("ok/1", 0)], WAIT).await.expect("suback"), vec![0]);
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_filters_close_the_connection() {
    let edge = TestEdge::start().await;
    let mut v3 = edge.client(Version::V311, "malformed3").await;
    let _ = v3.subscribe(vec![SubscribeTopic::new("a/#/b", 1)], WAIT).await;
    assert!(v3.is_closed(WAIT).await, "v3: a malformed SUBSCRIBE closes the connection");
    let mut v5 = edge.client(Version::V5, "malformed5").await;
    v5.send(&Packet::Subscribe {
        packet_id: 1,
        topics: vec![SubscribeTopic::new("a/b#", 1)],
        subscription_id: None,
        user_properties: vec![],
    })
    .await
    .expect("send");
    let code = expect_disconnect(&mut v5).await;
    assert!(code >= 0x80, "v5: DISCONNECT with an error reason, got {code:#x}");
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v5_publish_to_a_topic_beyond_limits_is_refused_with_a_reason() {
    let edge = TestEdge::start_with(|c| c.limits.max_topic_levels = 3).await;
    let mut p = edge.client(Version::V5, "deep").await;
    let code = p.publish("a/b/c/d", b"x", 1, false, WAIT).await.expect("puback");
    assert_eq!(code, Some(0x90), "topic name invalid");
    let code = p.publish("a/b/c", b"x", 1, false, WAIT).await.expect("puback");
    assert_eq!(code, Some(0x10), "accepted, no matching subscribers");
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v5_client_maximum_packet_size_is_respected() {
    let edge = TestEdge::start().await;
    let small = Connect { max_packet_size: Some(128), ..connect("small", true) };
    let (mut c, _) = edge.connect(Version::V5, small).await;
    c.subscribe(vec![SubscribeTopic::new("mps/#", 1)], WAIT).await.expect("suback");
    let mut p = edge.client(Version::V311, "mps-pub").await;
    // More oversize messages than the in-flight window: none may block the ones that fit.
    for _ in 0..40 {
        p.publish("mps/big", &[b'x'; 500], 1, false, WAIT).await.expect("publish");
    }
    p.publish("mps/small", b"fits", 1, false, WAIT).await.expect("publish");
    let got = expect_publish(&mut c).await;
    assert_eq!(got.topic, "mps/small", "oversize messages are dropped for this client, not sent");
    ack(&mut c, &got).await;
    expect_nothing(&mut c).await;
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscribe_far_past_the_quota_gets_a_well_formed_suback() {
    let edge = TestEdge::start_with(|c| c.limits.max_subscriptions_per_client = 10).await;
    for v in [Version::V311, Version::V5] {
        let mut c = edge.client(v, &format!("many-{v:?}")).await;
        let topics: Vec<SubscribeTopic> =
            (0..2000).map(|i| SubscribeTopic::new(&format!("a/rather/long/topic/name/{i:04}"), 1)).collect();
        let codes = c.subscribe(topics, WAIT).await.expect("a SUBACK the client can decode");
        let refused = if v == Version::V5 { 0x97 } else { 0x80 };
        assert_eq!(codes.len(), 2000);
        assert!(codes[..10].iter().all(|&c| c == 1), "{v:?}: the first ten are granted");
        assert!(codes[10..].iter().all(|&c| c == refused), "{v:?}: the rest refused");
        // The connection is still usable.
        assert_eq!(c.publish("a/rather/long/topic/name/0003", b"x", 1, false, WAIT).await.expect("puback"), Some(0));
        assert_eq!(&expect_publish(&mut c).await.payload[..], b"x");
    }
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_maximum_packet_size_counts_the_whole_packet() {
    let edge = TestEdge::start().await;
    let limit = mqtt_edge::EdgeConfig::default().limits.max_packet_size as usize;
    let mut c = edge.raw(Version::V5).await;
    match c.handshake(connect("mps", true), WAIT).await {
        Ok(Packet::ConnAck { code: 0, properties, .. }) => {
            assert_eq!(properties.max_packet_size, Some(limit as u32), "advertised")
        }
        other => panic!("{other:?}"),
    }
    // PUBLISH QoS 1 to "t": fixed header 1 + 3 bytes, topic 3, packet id 2, properties 1.
    let payload = vec![b'x'; limit - 10];
    assert_eq!(c.publish("t", &payload, 1, false, WAIT).await.expect("puback"), Some(0x10), "exactly the limit");
    let over = vec![b'x'; limit - 9];
    let _ = c.publish("t", &over, 1, false, Duration::from_millis(200)).await;
    assert_eq!(expect_disconnect(&mut c).await, 0x95, "one byte over the limit");
    let mut v3 = edge.client(Version::V311, "mps3").await;
    // v3 has no properties byte: fixed header 4, topic 3, packet id 2.
    let _ = v3.publish("t", &vec![b'x'; limit - 8], 1, false, Duration::from_millis(200)).await;
    assert!(v3.is_closed(WAIT).await, "v3: one byte over the limit closes the connection");
    // A fixed header that declares 200 MB is refused before a byte of it is read.
    let mut big = edge.client(Version::V5, "declares-200mb").await;
    big.send_raw(&[0x30, 0x80, 0x84, 0xaf, 0x5f]).await.expect("send");
    assert_eq!(expect_disconnect(&mut big).await, 0x95);
    // More than four length bytes is not a length MQTT can spell: malformed [MQTT-1.5.5].
    let mut huge = edge.client(Version::V5, "declares-300mb").await;
    huge.send_raw(&[0x30, 0x80, 0x80, 0x80, 0x80, 0x01]).await.expect("send");
    let code = expect_disconnect(&mut huge).await;
    assert_eq!(code, 0x81, "malformed packet");
    edge.stop().await;
}

/// Retained messages are kept within a quota per first topic level (a tenant: for token users,
/// their enterprise), in messages and payload bytes: past it a retained PUBLISH that would add
/// is refused (v5 0x97) or dropped (v3), and other tenants are not held back; replacing or
/// clearing one is counted as such.
#[tokio::test(flavor = "multi_thread")]
async fn retained_messages_are_kept_within_each_tenants_quota() {
    let edge = TestEdge::start_with(|c| {
        c.limits.max_retained_per_tenant = 3;
        c.limits.max_retained_bytes_per_tenant = 100;
    })
    .await;
    let mut c = edge.client(Version::V5, "retainer").await;
    let mut retain = async |topic: &str, bytes: usize| {
        c.publish(topic, &vec![b'x'; bytes], 1, true, WAIT).await.expect("puback").expect("v5 code")
    };
    const NO_MATCH: u8 = 0x10;
    for n in 1..=3 {
        assert_eq!(retain(&format!("acme/{n}"), 10).await, NO_MATCH);
    }
    assert_eq!(retain("acme/4", 1).await, 0x97, "a fourth message");
    assert_eq!(retain("evil/1", 100).await, NO_MATCH, "another tenant");
    assert_eq!(retain("acme/1", 80).await, NO_MATCH, "replaced: 100 bytes");
    assert_eq!(retain("acme/2", 11).await, 0x97, "101 bytes");
    assert_eq!(retain("acme/3", 0).await, NO_MATCH, "cleared");
    assert_eq!(retain("acme/4", 10).await, NO_MATCH, "room again");
    let mut v3 = edge.client(Version::V311, "retainer-3").await;
    v3.publish("acme/5", b"x", 1, true, WAIT).await.expect("v3: acknowledged, dropped");
    let mut reader = edge.client(Version::V5, "reader").await;
    reader.subscribe(vec![SubscribeTopic::new("acme/#", 0)], WAIT).await.expect("suback");
    let mut topics = Vec::new();
    for _ in 0..3 {
        topics.push(expect_publish(&mut reader).await.topic);
    }
    topics.sort();
    assert_eq!(topics, ["acme/1", "acme/2", "acme/4"]);
    expect_nothing(&mut reader).await;
    edge.stop().await;
}

/// A plain TCP edge on `port` (0: any).
async fn edge_on(port: u16, reuse_port: bool) -> Result<mqtt_edge::Edge, String> {
    let mut cfg = mqtt_edge::EdgeConfig::default();
    cfg.mqtt.addr = format!("127.0.0.1:{port}");
    cfg.mqtt.ws_addr = String::new();
    cfg.mqtt.reuse_port = reuse_port;
    cfg.ops.addr = String::new();
    mqtt_edge::Edge::builder(cfg).start().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_taken_port_is_shared_only_when_asked() {
    let first = TestEdge::start().await;
    let err = edge_on(first.tcp.port(), false).await.expect_err("the port is taken");
    assert!(err.contains("in use"), "{err}");
    first.stop().await;
    // Both asking for it: two edges on one port.
    let a = edge_on(0, true).await.expect("starts");
    let port = a.addrs().mqtt.expect("tcp").port();
    let b = edge_on(port, true).await.expect("shares the port");
    assert_eq!(b.addrs().mqtt.expect("tcp").port(), port);
    b.stop().await;
    a.stop().await;
}
