//! Configured limits refuse with the protocol's codes: SUBACK failures, topic limits; filters
//! that are not valid MQTT at all are malformed packets and close the connection.

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
    v5.send(&Packet::Subscribe { packet_id: 1, topics: vec![SubscribeTopic::new("a/b#", 1)], subscription_id: None })
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
