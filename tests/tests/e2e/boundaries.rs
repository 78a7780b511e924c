//! Boundary values of the numeric CONNECT fields and properties (0, 1, max) through a real
//! edge: each gets a well-formed answer, and no connection handler panics.

use hermes_tests::*;
use sdk::mqtt::{Connect, Packet, Version};

/// The CONNACK for `c`: (code, server keep-alive).
async fn connack(edge: &TestEdge, v: Version, c: Connect) -> (u8, Option<u16>) {
    let mut client = edge.raw(v).await;
    match client.handshake(c, WAIT).await {
        Ok(Packet::ConnAck { code, properties, .. }) => (code, properties.server_keep_alive),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_fields_at_their_boundaries_get_well_formed_answers() {
    count_edge_panics();
    let edge = TestEdge::start_with(|c| c.limits.max_keepalive_secs = 1200).await;
    let with = |f: &dyn Fn(&mut Connect)| {
        let mut c = connect("edge-case", true);
        f(&mut c);
        c
    };
    // Keep-alive: 0 means none; the edge then enforces its maximum and says so (v5).
    for (asked, announced) in [(0, Some(1200)), (1, None), (1200, None), (1201, Some(1200)), (u16::MAX, Some(1200))] {
        assert_eq!(connack(&edge, Version::V5, with(&|c| c.keep_alive = asked)).await, (0, announced), "v5 {asked}");
        assert_eq!(connack(&edge, Version::V311, with(&|c| c.keep_alive = asked)).await.0, 0, "v3 {asked}");
    }
    for aliases in [0, 1, u16::MAX] {
        let c = with(&|c| c.topic_alias_maximum = Some(aliases));
        assert_eq!(connack(&edge, Version::V5, c).await.0, 0, "topic alias maximum {aliases}");
    }
    for expiry in [0, 1, u32::MAX] {
        let c = with(&|c| c.session_expiry = Some(expiry));
        assert_eq!(connack(&edge, Version::V5, c).await.0, 0, "session expiry {expiry}");
    }
    for receive_max in [1, u16::MAX] {
        let c = with(&|c| c.receive_maximum = Some(receive_max));
        assert_eq!(connack(&edge, Version::V5, c).await.0, 0, "receive maximum {receive_max}");
    }
    for max_packet in [64, 65_535, u32::MAX] {
        let c = with(&|c| c.max_packet_size = Some(max_packet));
        assert_eq!(connack(&edge, Version::V5, c).await.0, 0, "maximum packet size {max_packet}");
    }
    // Invalid (0 [MQTT-3.1.2-24]) or too small for any CONNACK: answered or closed, never hung.
    for (what, c) in [
        ("maximum packet size 0", with(&|c| c.max_packet_size = Some(0))),
        ("maximum packet size 1", with(&|c| c.max_packet_size = Some(1))),
        ("receive maximum 0", with(&|c| c.receive_maximum = Some(0))),
    ] {
        let mut client = edge.raw(Version::V5).await;
        match client.handshake(c, WAIT).await {
            Ok(Packet::ConnAck { code, .. }) => assert!(code >= 0x80, "{what}: refused, got {code:#x}"),
            Err(sdk::mqtt::RecvError::Closed | sdk::mqtt::RecvError::Io(_)) => {}
            other => panic!("{what}: {other:?}"),
        }
    }
    // A client with keep-alive 0 is not cut off for silence before the edge's maximum.
    let (mut quiet, _) = edge.connect(Version::V5, with(&|c| c.keep_alive = 0)).await;
    expect_nothing(&mut quiet).await;
    assert_eq!(quiet.publish("ka/zero", b"still here", 1, false, WAIT).await.expect("puback"), Some(0x10));
    assert_eq!(edge_panics(), Vec::<String>::new(), "a connection handler panicked");
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn more_unacknowledged_publishes_than_the_receive_maximum_is_0x93() {
    count_edge_panics();
    let edge = TestEdge::start_with(|c| c.limits.max_inbound_inflight = 2).await;
    let mut c = edge.raw(Version::V5).await;
    match c.handshake(connect("greedy", true), WAIT).await {
        Ok(Packet::ConnAck { code: 0, properties, .. }) => assert_eq!(properties.receive_maximum, Some(2)),
        other => panic!("{other:?}"),
    }
    // QoS 2 PUBLISHes stay unacknowledged until their PUBREL: the third is one too many.
    for id in 1..=3 {
        let p = sdk::mqtt::Publish {
            topic: "rm/x".into(),
            payload: bytes::Bytes::from_static(b"x"),
            qos: 2,
            packet_id: Some(id),
            ..Default::default()
        };
        c.send(&Packet::Publish(p)).await.expect("send");
    }
    loop {
        match c.recv(WAIT).await {
            Ok(Packet::PubRec { .. }) => continue,
            Ok(Packet::Disconnect { code, .. }) => break assert_eq!(code, 0x93, "receive maximum exceeded"),
            other => panic!("expected DISCONNECT 0x93, got {other:?}"),
        }
    }
    assert_eq!(edge_panics(), Vec::<String>::new(), "a connection handler panicked");
    edge.stop().await;
}
