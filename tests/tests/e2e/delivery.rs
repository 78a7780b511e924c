//! Routing and delivery semantics: QoS both ways, retained, overlapping and shared
//! subscriptions, v5 options, flow control, `$SYS`.

use bytes::Bytes;
use hermes_tests::*;
use sdk::mqtt::{Packet, Publish, PublishProperties, SubscribeTopic, Version};

const VERSIONS: [Version; 2] = [Version::V311, Version::V5];

#[tokio::test(flavor = "multi_thread")]
async fn qos_0_1_2_in_both_directions() {
    let edge = TestEdge::start().await;
    for v in VERSIONS {
        let mut sub = edge.client(v, &format!("sub-{v:?}")).await;
        let codes = sub.subscribe(vec![SubscribeTopic::new("q/#", 2)], WAIT).await.expect("suback");
        assert_eq!(codes, vec![2]);
        let mut publisher = edge.client(v, &format!("pub-{v:?}")).await;
        for qos in 0..=2u8 {
            let code = publisher
                .publish(&format!("q/{qos}"), format!("m{qos}").as_bytes(), qos, false, WAIT)
                .await
                .expect("publish");
            assert_eq!(code.unwrap_or(0), 0, "{v:?} QoS {qos} acknowledged");
            let p = expect_publish(&mut sub).await;
            assert_eq!(
                (p.topic.as_str(), &p.payload[..], p.qos, p.retain),
                (format!("q/{qos}").as_str(), format!("m{qos}").as_bytes(), qos, false)
            );
            assert_eq!(p.packet_id.is_some(), qos > 0);
            ack(&mut sub, &p).await;
        }
        expect_nothing(&mut sub).await;
    }
    edge.stop().await;
}

/// A v5 client publishing at QoS 2 sends more messages than its receive maximum over time and
/// uses its packet ids again once their exchanges are done (ntex-mqtt 9.0.0 kept every id for
/// the life of the connection: PUBACK 0x91 on reuse, DISCONNECT 0x93 after 32; see
/// vendor/ntex-mqtt).
#[tokio::test(flavor = "multi_thread")]
async fn a_v5_qos2_publisher_reuses_its_packet_ids() {
    let edge = TestEdge::start().await;
    let mut sub = edge.client(Version::V5, "sub").await;
    sub.subscribe(vec![SubscribeTopic::new("q2/#", 2)], WAIT).await.expect("suback");
    let mut publisher = edge.client(Version::V5, "pub").await;
    let mut got = Vec::new();
    let receive = async |sub: &mut sdk::mqtt::Client| {
        let p = expect_publish(sub).await;
        ack(sub, &p).await;
        String::from_utf8_lossy(&p.payload).into_owned()
    };
    for n in 0..100 {
        let code = publisher.publish("q2/t", n.to_string().as_bytes(), 2, false, WAIT).await.expect("pubcomp");
        assert_eq!(code, Some(0), "message {n}");
        got.push(receive(&mut sub).await);
    }
    // Packet id 1 again, once more by hand.
    let again = Publish {
        topic: "q2/t".into(),
        payload: Bytes::from_static(b"again"),
        qos: 2,
        packet_id: Some(1),
        ..Publish::default()
    };
    publisher.send(&Packet::Publish(again)).await.expect("send");
    assert!(matches!(publisher.recv(WAIT).await, Ok(Packet::PubRec { packet_id: 1, code: 0 })));
    publisher.send(&Packet::PubRel { packet_id: 1, code: 0 }).await.expect("send");
    assert!(matches!(publisher.recv(WAIT).await, Ok(Packet::PubComp { packet_id: 1, .. })));
    got.push(receive(&mut sub).await);
    let want: Vec<String> = (0..100).map(|n: u32| n.to_string()).chain(["again".to_owned()]).collect();
    assert_eq!(got, want);
    expect_nothing(&mut sub).await;
    edge.stop().await;
}

/// A subscriber may finish a QoS 2 message (PUBCOMP) before it answers the next one with its
/// PUBREC: MQTT orders PUBRECs among themselves, not PUBCOMPs (ntex-mqtt 9.0.0 matched acks
/// strictly in the order sent and closed the connection with 0x83; see vendor/ntex-mqtt).
#[tokio::test(flavor = "multi_thread")]
async fn a_qos2_subscriber_completes_one_message_before_it_receives_the_next() {
    let edge = TestEdge::start().await;
    let mut publisher = edge.client(Version::V5, "pub").await;
    for v in [Version::V5, Version::V311] {
        let mut sub = edge.client(v, "sub").await;
        sub.subscribe(vec![SubscribeTopic::new("q2/#", 2)], WAIT).await.expect("suback");
        for n in ["one", "two"] {
            publisher.publish("q2/t", n.as_bytes(), 2, false, WAIT).await.expect("pubcomp");
        }
        let (one, two) = (expect_publish(&mut sub).await, expect_publish(&mut sub).await);
        assert_eq!((&one.payload[..], &two.payload[..]), (&b"one"[..], &b"two"[..]));
        for p in [&one, &two] {
            ack(&mut sub, p).await;
        }
        publisher.publish("q2/t", b"three", 2, false, WAIT).await.expect("pubcomp");
        let three = expect_publish(&mut sub).await;
        assert_eq!((&three.payload[..], three.dup), (&b"three"[..], false), "{v:?}: still connected");
        ack(&mut sub, &three).await;
        expect_nothing(&mut sub).await;
    }
    edge.stop().await;
}

/// A PUBCOMP where a PUBREC was due is a protocol error: the connection is closed (v5 0x82),
/// and the message comes again to the session's next connection.
#[tokio::test(flavor = "multi_thread")]
async fn a_pubcomp_instead_of_a_pubrec_closes_the_connection() {
    let edge = TestEdge::start().await;
    let mut publisher = edge.client(Version::V5, "pub").await;
    let lasting = || sdk::mqtt::Connect { session_expiry: Some(60), ..connect("sub", false) };
    let mut sub = edge.connect(Version::V5, lasting()).await.0;
    sub.subscribe(vec![SubscribeTopic::new("q2/#", 2)], WAIT).await.expect("suback");
    publisher.publish("q2/t", b"one", 2, false, WAIT).await.expect("pubcomp");
    let one = expect_publish(&mut sub).await;
    let id = one.packet_id.expect("QoS 2");
    sub.send(&Packet::PubComp { packet_id: id, code: 0 }).await.expect("send");
    assert_eq!(expect_disconnect(&mut sub).await, 0x82);
    let mut again = edge.connect(Version::V5, lasting()).await.0;
    let resent = expect_publish(&mut again).await;
    assert_eq!((&resent.payload[..], resent.dup), (&b"one"[..], true));
    ack(&mut again, &resent).await;
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn qos_is_the_lower_of_published_and_granted() {
    let edge = TestEdge::start().await;
    let mut sub = edge.client(Version::V311, "low").await;
    sub.subscribe(vec![SubscribeTopic::new("low/#", 1)], WAIT).await.expect("suback");
    let mut p = edge.client(Version::V311, "low-pub").await;
    p.publish("low/a", b"x", 2, false, WAIT).await.expect("publish");
    assert_eq!(expect_publish(&mut sub).await.qos, 1);
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn retained_set_replace_clear_and_flags() {
    let edge = TestEdge::start().await;
    let mut p = edge.client(Version::V5, "ret-pub").await;
    // QoS 0 first: the PUBACKs that follow mean it was routed (a connection's publishes are
    // routed in order) before anyone subscribes.
    p.publish("ret/b", b"bee", 0, true, WAIT).await.expect("publish");
    p.publish("ret/a", b"one", 1, true, WAIT).await.expect("publish");
    p.publish("ret/a", b"two", 1, true, WAIT).await.expect("publish");
    let mut s = edge.client(Version::V5, "ret-sub").await;
    s.subscribe(vec![SubscribeTopic::new("ret/+", 1)], WAIT).await.expect("suback");
    let mut got = [expect_publish(&mut s).await, expect_publish(&mut s).await];
    got.sort_by(|a, b| a.topic.cmp(&b.topic));
    assert_eq!((&got[0].payload[..], got[0].retain, got[0].qos), (&b"two"[..], true, 1));
    assert_eq!((&got[1].payload[..], got[1].retain, got[1].qos), (&b"bee"[..], true, 0));
    ack(&mut s, &got[0]).await;
    // A live message on a subscribed topic arrives with retain cleared (no retain-as-published).
    p.publish("ret/a", b"three", 0, true, WAIT).await.expect("publish");
    assert!(!expect_publish(&mut s).await.retain);
    // An empty retained payload clears the topic.
    p.publish("ret/a", b"", 0, true, WAIT).await.expect("publish");
    let cleared = expect_publish(&mut s).await;
    assert!(cleared.payload.is_empty());
    let mut late = edge.client(Version::V5, "ret-late").await;
    late.subscribe(vec![SubscribeTopic::new("ret/a", 1)], WAIT).await.expect("suback");
    expect_nothing(&mut late).await;
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v5_retain_handling_and_retain_as_published() {
    let edge = TestEdge::start().await;
    let mut p = edge.client(Version::V5, "rh-pub").await;
    p.publish("rh/x", b"kept", 1, true, WAIT).await.expect("publish");
    let mut s = edge.client(Version::V5, "rh-sub").await;
    let never = SubscribeTopic { retain_handling: 2, ..SubscribeTopic::new("rh/#", 0) };
    s.subscribe(vec![never], WAIT).await.expect("suback");
    expect_nothing(&mut s).await;
    let if_new = SubscribeTopic { retain_handling: 1, ..SubscribeTopic::new("rh/x", 0) };
    s.subscribe(vec![if_new.clone()], WAIT).await.expect("suback");
    assert_eq!(&expect_publish(&mut s).await.payload[..], b"kept");
    s.subscribe(vec![if_new], WAIT).await.expect("suback");
    expect_nothing(&mut s).await;
    let mut rap = edge.client(Version::V5, "rh-rap").await;
    rap.subscribe(
        vec![SubscribeTopic { retain_as_published: true, retain_handling: 2, ..SubscribeTopic::new("rh/x", 0) }],
        WAIT,
    )
    .await
    .expect("suback");
    p.publish("rh/x", b"live", 0, true, WAIT).await.expect("publish");
    assert!(expect_publish(&mut rap).await.retain, "retain-as-published keeps the flag");
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn overlapping_subscriptions_deliver_one_copy() {
    let edge = TestEdge::start().await;
    let mut s3 = edge.client(Version::V311, "ov3").await;
    s3.subscribe(vec![SubscribeTopic::new("ov/#", 0), SubscribeTopic::new("ov/x", 1)], WAIT).await.expect("suback");
    let mut s5 = edge.client(Version::V5, "ov5").await;
    s5.send(&Packet::Subscribe {
        packet_id: 1,
        topics: vec![SubscribeTopic::new("ov/#", 2)],
        subscription_id: Some(7),
        user_properties: vec![],
    })
    .await
    .expect("send");
    assert!(matches!(s5.recv(WAIT).await, Ok(Packet::SubAck { .. })));
    s5.send(&Packet::Subscribe {
        packet_id: 2,
        topics: vec![SubscribeTopic::new("ov/+", 1)],
        subscription_id: Some(9),
        user_properties: vec![],
    })
    .await
    .expect("send");
    assert!(matches!(s5.recv(WAIT).await, Ok(Packet::SubAck { .. })));
    let mut p = edge.client(Version::V311, "ov-pub").await;
    p.publish("ov/x", b"once", 2, false, WAIT).await.expect("publish");
    let got3 = expect_publish(&mut s3).await;
    assert_eq!(got3.qos, 1, "v3: one copy at the highest granted QoS");
    ack(&mut s3, &got3).await;
    expect_nothing(&mut s3).await;
    let got5 = expect_publish(&mut s5).await;
    assert_eq!(got5.qos, 2);
    let mut ids = got5.properties.subscription_ids.clone();
    ids.sort();
    assert_eq!(ids, vec![7, 9], "v5: one copy carrying every subscription identifier");
    ack(&mut s5, &got5).await;
    expect_nothing(&mut s5).await;
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn shared_subscription_spreads_messages_over_members() {
    let edge = TestEdge::start().await;
    let mut a = edge.client(Version::V5, "sh-a").await;
    let mut b = edge.client(Version::V311, "sh-b").await;
    for c in [&mut a, &mut b] {
        c.subscribe(vec![SubscribeTopic::new("$share/workers/jobs/#", 0)], WAIT).await.expect("suback");
    }
    let mut p = edge.client(Version::V311, "sh-pub").await;
    for i in 0..6 {
        p.publish(&format!("jobs/{i}"), b"j", 0, false, WAIT).await.expect("publish");
    }
    let mut counts = [0, 0];
    for (i, c) in [&mut a, &mut b].into_iter().enumerate() {
        while let Ok(Packet::Publish(_)) = c.recv(QUIET).await {
            counts[i] += 1;
        }
    }
    assert_eq!(counts[0] + counts[1], 6, "each message goes to exactly one member: {counts:?}");
    assert!(counts[0] > 0 && counts[1] > 0, "both members get work: {counts:?}");
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v5_no_local_and_properties_pass_through() {
    let edge = TestEdge::start().await;
    let mut c = edge.client(Version::V5, "nl").await;
    c.subscribe(
        vec![SubscribeTopic { no_local: true, ..SubscribeTopic::new("nl/#", 1) }, SubscribeTopic::new("props/#", 1)],
        WAIT,
    )
    .await
    .expect("suback");
    c.publish("nl/x", b"mine", 0, false, WAIT).await.expect("publish");
    expect_nothing(&mut c).await;
    let props = PublishProperties {
        user_properties: vec![("k".into(), "v".into())],
        content_type: Some("text/plain".into()),
        response_topic: Some("reply/here".into()),
        correlation_data: Some(b"corr".to_vec()),
        message_expiry: Some(60),
        ..PublishProperties::default()
    };
    let mut p = edge.client(Version::V5, "props-pub").await;
    p.send(&Packet::Publish(Publish {
        topic: "props/x".into(),
        payload: Bytes::from_static(b"p"),
        qos: 0,
        properties: props,
        ..Publish::default()
    }))
    .await
    .expect("send");
    let got = expect_publish(&mut c).await;
    assert_eq!(got.properties.user_properties, vec![("k".to_string(), "v".to_string())]);
    assert_eq!(got.properties.content_type.as_deref(), Some("text/plain"));
    assert_eq!(got.properties.response_topic.as_deref(), Some("reply/here"));
    assert_eq!(got.properties.correlation_data.as_deref(), Some(&b"corr"[..]));
    assert!(got.properties.message_expiry.is_some_and(|e| (58..=60).contains(&e)));
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v5_topic_alias_from_client() {
    let edge = TestEdge::start().await;
    let mut s = edge.client(Version::V5, "alias-sub").await;
    s.subscribe(vec![SubscribeTopic::new("alias/t", 0)], WAIT).await.expect("suback");
    let mut p = edge.client(Version::V5, "alias-pub").await;
    for (topic, payload) in [("alias/t", "first"), ("", "second")] {
        p.send(&Packet::Publish(Publish {
            topic: topic.into(),
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            properties: PublishProperties { topic_alias: Some(1), ..PublishProperties::default() },
            ..Publish::default()
        }))
        .await
        .expect("send");
        let got = expect_publish(&mut s).await;
        assert_eq!((got.topic.as_str(), &got.payload[..]), ("alias/t", payload.as_bytes()));
    }
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v5_receive_maximum_limits_unacked_deliveries() {
    let edge = TestEdge::start().await;
    let mut c =
        edge.connect(Version::V5, sdk::mqtt::Connect { receive_maximum: Some(2), ..connect("rm", true) }).await.0;
    c.subscribe(vec![SubscribeTopic::new("rm/#", 1)], WAIT).await.expect("suback");
    let mut p = edge.client(Version::V311, "rm-pub").await;
    for i in 0..5 {
        p.publish(&format!("rm/{i}"), b"x", 1, false, WAIT).await.expect("publish");
    }
    let first = expect_publish(&mut c).await;
    let second = expect_publish(&mut c).await;
    expect_nothing(&mut c).await;
    ack(&mut c, &first).await;
    let third = expect_publish(&mut c).await;
    assert_eq!(third.topic, "rm/2", "order is kept");
    ack(&mut c, &second).await;
    ack(&mut c, &third).await;
    for i in 3..5 {
        let p = expect_publish(&mut c).await;
        assert_eq!(p.topic, format!("rm/{i}"));
        ack(&mut c, &p).await;
    }
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sys_topics_are_published_and_hidden_from_wildcards() {
    let edge = TestEdge::start().await;
    let mut all = edge.client(Version::V311, "sys-all").await;
    all.subscribe(vec![SubscribeTopic::new("#", 0)], WAIT).await.expect("suback");
    let mut sys = edge.client(Version::V311, "sys").await;
    sys.subscribe(vec![SubscribeTopic::new("$SYS/broker/clients/connected", 0)], WAIT).await.expect("suback");
    // The first value may be a retained one from before we connected; a fresh one follows
    // within the one-second interval the harness configures.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(4);
    let mut seen = Vec::new();
    loop {
        match sys.recv(std::time::Duration::from_secs(2)).await {
            Ok(Packet::Publish(p)) => {
                let n: usize = std::str::from_utf8(&p.payload).expect("utf8").parse().expect("a number");
                seen.push(n);
                if n >= 2 {
                    break;
                }
            }
            other => panic!("no $SYS message: {other:?}"),
        }
        assert!(std::time::Instant::now() < deadline, "connected count never reached 2: {seen:?}");
    }
    expect_nothing(&mut all).await;
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v5_clients_that_take_topic_aliases_get_them() {
    let edge = TestEdge::start().await;
    let (mut sub, _) = edge
        .connect(Version::V5, sdk::mqtt::Connect { topic_alias_maximum: Some(2), ..connect("aliased", true) })
        .await;
    let mut plain = edge.client(Version::V5, "plain").await;
    let long = |n: &str| format!("acme/im/msg/{n}");
    for c in [&mut sub, &mut plain] {
        c.subscribe(vec![SubscribeTopic::new("acme/im/msg/+", 0)], WAIT).await.expect("suback");
    }
    let mut publisher = edge.client(Version::V311, "publisher").await;
    let order = ["alice", "alice", "bob", "carol", "alice", "carol"];
    for n in order {
        publisher.publish(&long(n), n.as_bytes(), 0, false, WAIT).await.expect("publish");
    }
    // The client's view: (topic on the wire, alias) resolved as a client must [MQTT-3.3.2-12].
    let mut bound: std::collections::HashMap<u16, String> = std::collections::HashMap::new();
    let mut wire = Vec::new();
    for n in order {
        let p = expect_publish(&mut sub).await;
        let alias = p.properties.topic_alias;
        let topic = match (p.topic.is_empty(), alias) {
            (false, Some(a)) => {
                bound.insert(a, p.topic.clone());
                p.topic.clone()
            }
            (true, Some(a)) => bound.get(&a).cloned().expect("a bound alias"),
            (false, None) => p.topic.clone(),
            (true, None) => panic!("empty topic without an alias"),
        };
        assert_eq!((topic.as_str(), &p.payload[..]), (long(n).as_str(), n.as_bytes()));
        assert!(alias.is_some_and(|a| (1..=2).contains(&a)), "within the client's maximum: {alias:?}");
        wire.push((p.topic.is_empty(), alias));
    }
    // alice bound 1, used 1; bob bound 2; carol rebinds the least recently used (1, alice);
    // alice rebinds 2 (bob); carol uses 1.
    let expected =
        [(false, Some(1)), (true, Some(1)), (false, Some(2)), (false, Some(1)), (false, Some(2)), (true, Some(1))];
    assert_eq!(wire, expected);
    for n in order {
        let p = expect_publish(&mut plain).await;
        assert_eq!((p.topic.as_str(), p.properties.topic_alias), (long(n).as_str(), None), "no aliases unasked");
    }
    edge.stop().await;
}
