//! Session lifetime: persistent sessions across reconnects, in-flight redelivery, expiry,
//! takeover, wills, keep-alive and shutdown.

use std::time::Duration;

use hermes_tests::*;
use sdk::mqtt::{Client, Connect, Packet, SubscribeTopic, Version, Will};

#[tokio::test(flavor = "multi_thread")]
async fn persistent_session_gets_what_was_published_while_away() {
    let edge = TestEdge::start().await;
    for v in [Version::V311, Version::V5] {
        let id = format!("persist-{v:?}");
        let persistent = Connect { session_expiry: (v == Version::V5).then_some(300), ..connect(&id, false) };
        let (mut c, present) = edge.connect(v, persistent.clone()).await;
        assert!(!present);
        c.subscribe(vec![SubscribeTopic::new(&format!("away/{id}"), 1)], WAIT).await.expect("suback");
        c.send(&Packet::disconnect(0)).await.expect("disconnect");
        assert!(c.is_closed(WAIT).await);
        let mut p = edge.client(Version::V311, &format!("away-pub-{v:?}")).await;
        // QoS 0 first: the PUBACKs that follow prove the edge routed it before we reconnect.
        p.publish(&format!("away/{id}"), b"qos0 is not queued", 0, false, WAIT).await.expect("publish");
        for i in 0..3 {
            p.publish(&format!("away/{id}"), format!("m{i}").as_bytes(), 1, false, WAIT).await.expect("publish");
        }
        let (mut c, present) = edge.connect(v, persistent).await;
        assert!(present, "{v:?}: session present after reconnect");
        for i in 0..3 {
            let m = expect_publish(&mut c).await;
            assert_eq!(&m.payload[..], format!("m{i}").as_bytes(), "{v:?}: in order");
            ack(&mut c, &m).await;
        }
        expect_nothing(&mut c).await;
        // A clean start discards the session.
        drop(c);
        let (_c, present) = edge.connect(v, connect(&id, true)).await;
        assert!(!present);
    }
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unacknowledged_messages_are_redelivered_with_dup_and_same_id() {
    let edge = TestEdge::start().await;
    let (mut c, _) = edge.connect(Version::V311, connect("redeliver", false)).await;
    c.subscribe(vec![SubscribeTopic::new("rd/#", 2)], WAIT).await.expect("suback");
    let mut p = edge.client(Version::V311, "rd-pub").await;
    p.publish("rd/1", b"one", 1, false, WAIT).await.expect("publish");
    p.publish("rd/2", b"two", 2, false, WAIT).await.expect("publish");
    let first = expect_publish(&mut c).await;
    let second = expect_publish(&mut c).await;
    assert!(!first.dup && !second.dup);
    drop(c); // connection lost without acks
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (mut c, present) = edge.connect(Version::V311, connect("redeliver", false)).await;
    assert!(present);
    for original in [first, second] {
        let again = expect_publish(&mut c).await;
        assert!(again.dup, "redelivery sets DUP");
        assert_eq!((again.packet_id, &again.payload), (original.packet_id, &original.payload));
        ack(&mut c, &again).await;
    }
    expect_nothing(&mut c).await;
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v5_session_expiry_is_honoured() {
    let edge = TestEdge::start().await;
    let short = Connect { session_expiry: Some(1), ..connect("expiring", false) };
    let (mut c, _) = edge.connect(Version::V5, short.clone()).await;
    c.subscribe(vec![SubscribeTopic::new("exp/x", 1)], WAIT).await.expect("suback");
    drop(c);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_c, present) = edge.connect(Version::V5, short).await;
    assert!(!present, "the session expired while away");
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v5_message_expiry_drops_stale_queued_messages() {
    let edge = TestEdge::start().await;
    let persistent = Connect { session_expiry: Some(60), ..connect("msg-exp", false) };
    let (mut c, _) = edge.connect(Version::V5, persistent.clone()).await;
    c.subscribe(vec![SubscribeTopic::new("mexp/#", 1)], WAIT).await.expect("suback");
    drop(c);
    let mut p = edge.client(Version::V5, "mexp-pub").await;
    p.send(&Packet::Publish(sdk::mqtt::Publish {
        topic: "mexp/old".into(),
        payload: bytes::Bytes::from_static(b"stale"),
        qos: 1,
        packet_id: Some(1),
        properties: sdk::mqtt::PublishProperties { message_expiry: Some(1), ..Default::default() },
        ..Default::default()
    }))
    .await
    .expect("send");
    // 0, which MQTT 5 allows: expired at once (taken as 1 s), not a reason to close.
    p.send(&Packet::Publish(sdk::mqtt::Publish {
        topic: "mexp/zero".into(),
        payload: bytes::Bytes::from_static(b"expired at once"),
        qos: 1,
        packet_id: Some(2),
        properties: sdk::mqtt::PublishProperties { message_expiry: Some(0), ..Default::default() },
        ..Default::default()
    }))
    .await
    .expect("send");
    p.publish("mexp/new", b"fresh", 1, false, WAIT).await.expect("publish");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (mut c, present) = edge.connect(Version::V5, persistent).await;
    assert!(present);
    assert_eq!(&expect_publish(&mut c).await.payload[..], b"fresh");
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn second_connection_takes_over_the_client_id() {
    let edge = TestEdge::start().await;
    let persistent = Connect { session_expiry: Some(60), ..connect("twin", false) };
    let (mut first, _) = edge.connect(Version::V5, persistent.clone()).await;
    first.subscribe(vec![SubscribeTopic::new("twin/x", 1)], WAIT).await.expect("suback");
    let (mut second, present) = edge.connect(Version::V5, persistent).await;
    assert!(present, "the new connection inherits the session");
    assert_eq!(expect_disconnect(&mut first).await, 0x8E);
    assert!(first.is_closed(WAIT).await);
    let mut p = edge.client(Version::V311, "twin-pub").await;
    p.publish("twin/x", b"to the new one", 1, false, WAIT).await.expect("publish");
    assert_eq!(&expect_publish(&mut second).await.payload[..], b"to the new one");
    // v3: the old connection is simply closed.
    let (mut old3, _) = edge.connect(Version::V311, connect("twin3", true)).await;
    let (_new3, _) = edge.connect(Version::V311, connect("twin3", true)).await;
    assert!(old3.is_closed(WAIT).await);
    edge.stop().await;
}

fn with_will(id: &str, topic: &str, delay: Option<u32>) -> Connect {
    Connect {
        will: Some(Will {
            topic: topic.into(),
            payload: b"gone".to_vec(),
            qos: 1,
            retain: false,
            delay_interval: delay,
        }),
        session_expiry: delay.map(|_| 60),
        ..connect(id, true)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn will_is_sent_on_abnormal_close_only() {
    let edge = TestEdge::start().await;
    let mut watcher = edge.client(Version::V311, "will-watch").await;
    watcher.subscribe(vec![SubscribeTopic::new("will/#", 1)], WAIT).await.expect("suback");
    for v in [Version::V311, Version::V5] {
        let (c, _) = edge.connect(v, with_will(&format!("w-{v:?}"), &format!("will/{v:?}"), None)).await;
        drop(c);
        let w = expect_publish(&mut watcher).await;
        assert_eq!((w.topic.as_str(), &w.payload[..]), (format!("will/{v:?}").as_str(), &b"gone"[..]));
        ack(&mut watcher, &w).await;
        let (mut c, _) = edge.connect(v, with_will(&format!("w2-{v:?}"), "will/polite", None)).await;
        c.send(&Packet::disconnect(0)).await.expect("send");
        assert!(c.is_closed(WAIT).await);
        expect_nothing(&mut watcher).await;
    }
    // v5 DISCONNECT 0x04 asks for the will.
    let (mut c, _) = edge.connect(Version::V5, with_will("w-04", "will/asked", None)).await;
    c.send(&Packet::disconnect(0x04)).await.expect("send");
    assert_eq!(expect_publish(&mut watcher).await.topic, "will/asked");
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v5_will_delay_waits_and_a_reconnect_cancels_it() {
    let edge = TestEdge::start().await;
    let mut watcher = edge.client(Version::V311, "wd-watch").await;
    watcher.subscribe(vec![SubscribeTopic::new("wd/#", 0)], WAIT).await.expect("suback");
    let (c, _) = edge.connect(Version::V5, with_will("wd-1", "wd/late", Some(1))).await;
    drop(c);
    expect_nothing(&mut watcher).await;
    let w = match watcher.recv(Duration::from_secs(4)).await {
        Ok(Packet::Publish(p)) => p,
        other => panic!("delayed will not sent: {other:?}"),
    };
    assert_eq!(w.topic, "wd/late");
    let cancel = Connect { clean_start: false, ..with_will("wd-2", "wd/cancelled", Some(2)) };
    let (c, _) = edge.connect(Version::V5, cancel.clone()).await;
    drop(c);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_back, present) = edge.connect(Version::V5, Connect { will: None, ..cancel }).await;
    assert!(present);
    assert!(matches!(watcher.recv(Duration::from_secs(3)).await, Err(sdk::mqtt::RecvError::Timeout)));
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn keep_alive_is_enforced_and_capped() {
    let edge = TestEdge::start_with(|c| c.limits.max_keepalive_secs = 5).await;
    let (mut idle, _) = edge.connect(Version::V311, Connect { keep_alive: 1, ..connect("ka", true) }).await;
    let started = std::time::Instant::now();
    assert!(idle.is_closed(Duration::from_secs(4)).await, "silent client is dropped");
    assert!(started.elapsed() >= Duration::from_millis(1000), "not before the keep-alive");
    let mut c = edge.raw(Version::V5).await;
    match c.handshake(Connect { keep_alive: 100, ..connect("ka5", true) }, WAIT).await {
        Ok(Packet::ConnAck { code: 0, properties, .. }) => assert_eq!(properties.server_keep_alive, Some(5)),
        other => panic!("{other:?}"),
    }
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_tells_v5_clients_why() {
    let edge = TestEdge::start().await;
    let mut c = edge.client(Version::V5, "bye").await;
    let addr = edge.tcp;
    let stopping = tokio::spawn(edge.stop());
    assert_eq!(expect_disconnect(&mut c).await, 0x8B);
    // Told to go, it comes straight back: a stopping node no longer takes it in (it would lose
    // what is sent to it meanwhile), so it goes to another node.
    for _ in 0..5 {
        let Ok(mut again) = Client::connect_tcp(addr, Version::V5).await else { break };
        match again.handshake(connect("bye", true), WAIT).await {
            Ok(Packet::ConnAck { code, .. }) => assert_eq!(code, 0x88, "a stopping node refuses as unavailable"),
            other => assert!(other.is_err(), "{other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stopping.await.expect("stopped");
}

#[tokio::test(flavor = "multi_thread")]
async fn empty_client_id_is_assigned_or_refused() {
    let edge = TestEdge::start().await;
    let mut assigned = Vec::new();
    for _ in 0..2 {
        let mut c = edge.raw(Version::V5).await;
        match c.handshake(connect("", true), WAIT).await {
            Ok(Packet::ConnAck { code: 0, properties, .. }) => assigned.extend(properties.assigned_client_id),
            other => panic!("{other:?}"),
        }
    }
    // 128 random bits: nobody can guess another client's (and take its session).
    for id in &assigned {
        let random = id.strip_prefix("hermes-").unwrap_or_default();
        assert!(random.len() == 32 && random.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
    }
    assert!(assigned.len() == 2 && assigned[0] != assigned[1], "{assigned:?}");
    let mut c = edge.raw(Version::V311).await;
    // v3: an empty id needs a clean session [MQTT-3.1.3-8].
    match c.handshake(connect("", false), WAIT).await {
        Ok(Packet::ConnAck { code, .. }) => assert_eq!(code, 2, "identifier rejected"),
        other => panic!("{other:?}"),
    }
    assert!(c.is_closed(WAIT).await, "then closed");
    let mut c = edge.raw(Version::V311).await;
    assert!(
        matches!(c.handshake(connect("", true), WAIT).await, Ok(Packet::ConnAck { code: 0, .. })),
        "clean: accepted"
    );
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn qos2_release_completes_after_a_reconnect() {
    let edge = TestEdge::start().await;
    for v in [Version::V311, Version::V5] {
        let mut sub = edge.client(Version::V311, &format!("q2r-sub-{v:?}")).await;
        sub.subscribe(vec![SubscribeTopic::new("q2r/#", 2)], WAIT).await.expect("suback");
        let id = format!("q2r-{v:?}");
        let persistent = Connect { session_expiry: (v == Version::V5).then_some(60), ..connect(&id, false) };
        let (mut p, _) = edge.connect(v, persistent.clone()).await;
        p.send(&Packet::Publish(sdk::mqtt::Publish {
            topic: "q2r/x".into(),
            payload: bytes::Bytes::from_static(b"exactly once"),
            qos: 2,
            packet_id: Some(7),
            ..Default::default()
        }))
        .await
        .expect("send");
        assert!(matches!(p.recv(WAIT).await, Ok(Packet::PubRec { packet_id: 7, .. })));
        let got = expect_publish(&mut sub).await;
        ack(&mut sub, &got).await;
        drop(p); // gone before sending PUBREL
        let (mut p, present) = edge.connect(v, persistent).await;
        assert!(present);
        p.send(&Packet::PubRel { packet_id: 7, code: 0 }).await.expect("send");
        match p.recv(WAIT).await {
            Ok(Packet::PubComp { packet_id: 7, code: 0 }) => {}
            other => panic!("{v:?}: expected PUBCOMP 7, got {other:?}"),
        }
        // An id nobody knows still gets its PUBCOMP (v5 says "packet identifier not found").
        p.send(&Packet::PubRel { packet_id: 99, code: 0 }).await.expect("send");
        match p.recv(WAIT).await {
            Ok(Packet::PubComp { packet_id: 99, code }) => {
                assert_eq!(code, if v == Version::V5 { 0x92 } else { 0 })
            }
            other => panic!("{v:?}: expected PUBCOMP 99, got {other:?}"),
        }
        p.send(&Packet::PingReq).await.expect("send");
        assert!(matches!(p.recv(WAIT).await, Ok(Packet::PingResp)), "{v:?}: connection still healthy");
        expect_nothing(&mut sub).await;
    }
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_subscriber_is_cut_off_without_holding_up_others() {
    // The flooder is held while the slow one's backlog is high, for at most the stall time.
    let edge = TestEdge::start_with(|c| {
        c.limits.max_pending_deliveries = 8;
        c.limits.max_stall_secs = 1;
    })
    .await;
    let mut slow = edge.client(Version::V5, "slow").await;
    slow.subscribe(vec![SubscribeTopic::new("flood/#", 0)], WAIT).await.expect("suback");
    let mut fast = edge.client(Version::V311, "fast").await;
    fast.subscribe(vec![SubscribeTopic::new("flood/#", 0)], WAIT).await.expect("suback");
    let mut p = edge.client(Version::V311, "flooder").await;
    let payload = vec![b'x'; 16 * 1024];
    let (batches, per_batch) = (100, 20);
    for _ in 0..batches {
        for _ in 0..per_batch {
            p.publish("flood/x", &payload, 0, false, WAIT).await.expect("publish");
        }
        for _ in 0..per_batch {
            expect_publish(&mut fast).await;
        }
    }
    // The slow one never read: what it gets now is what fit in buffers, then the reason.
    let mut received = 0;
    let end = loop {
        match slow.recv(WAIT).await {
            Ok(Packet::Publish(_)) => received += 1,
            other => break other,
        }
    };
    assert!(matches!(end, Ok(Packet::Disconnect { code: 0x97, .. })), "{end:?} after {received}");
    assert!(received < batches * per_batch, "it was cut off: {received}");
    edge.stop().await;
}
