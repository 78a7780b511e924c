//! Identity boundaries, tried as an attacker would with token users of two enterprises
//! (`acme`, `evil`): sessions belong to their owner, wills obey the ACL, and the sender a
//! receiver sees is who the edge authenticated. Each for MQTT 3.1.1 and 5.0.

use std::time::Duration;

use bytes::Bytes;
use hermes_tests::*;
use sdk::mqtt::{Client, Connect, Packet, Publish, PublishProperties, SubscribeTopic, Version, Will};
use wire::pb::{self, Direction, account_event::Event};
use wire::token::Signer;

const TTL: Duration = Duration::from_secs(600);

struct World {
    edge: TestEdge,
    signer: Signer,
}

impl World {
    async fn start() -> World {
        let signer = Signer::generate().expect("keys");
        let public = signer.verifier().to_paserk();
        let edge = TestEdge::start_with(|c| {
            c.auth.allow_anonymous = false;
            c.auth.token_public_key = public;
        })
        .await;
        World { edge, signer }
    }

    /// A CONNECT as `user` of `enterprise`; `persistent` asks for a session that outlives it.
    fn login(&self, enterprise: &str, user: &str, client_id: &str, persistent: bool) -> Connect {
        Connect {
            password: Some(access_token_in(&self.signer, enterprise, user, TTL)),
            session_expiry: persistent.then_some(300),
            ..connect(client_id, !persistent)
        }
    }

    async fn connect(&self, v: Version, c: Connect) -> (Client, bool) {
        self.edge.connect(v, c).await
    }

    /// The CONNACK code and reason string for `c`.
    async fn connack(&self, v: Version, c: Connect) -> (u8, Option<String>) {
        let mut client = self.edge.raw(v).await;
        match client.handshake(c, WAIT).await {
            Ok(Packet::ConnAck { code, properties, .. }) => (code, properties.reason_string),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Applies an enterprise's ACL tables as the accounts tier would announce them.
    fn set_tables(&self, enterprise: &str, version: u64, acl: &str) {
        let tables = pb::AclChanged { version, acl_rules: acl.into(), auto_subscribe: String::new() };
        self.edge.edge().account_events().apply(&pb::AccountEvent {
            enterprise_id: enterprise.into(),
            event: Some(Event::AclChanged(tables)),
            ..Default::default()
        });
    }
}

async fn expect_inbox(c: &mut Client, payload: &[u8]) {
    let p = expect_publish(c).await;
    assert_eq!((p.topic.as_str(), &p.payload[..]), ("acme/im/msg/bob", payload));
    ack(c, &p).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_id_names_a_session_only_within_its_owner() {
    let w = World::start().await;
    for v in [Version::V311, Version::V5] {
        let tag = format!("{v:?}");
        let listening = format!("bob-listening-{tag}");
        let phone = format!("bob-phone-{tag}");
        let (mut carol, _) = w.connect(v, w.login("acme", "carol", &format!("carol-{tag}"), false)).await;

        // A live session: alice (same enterprise) and mallory (another one) reuse bob's client
        // id. Both get sessions of their own; bob is not disconnected and his inbox stays his.
        let (mut bob, _) = w.connect(v, w.login("acme", "bob", &listening, false)).await;
        let (mut alice, present) = w.connect(v, w.login("acme", "alice", &listening, false)).await;
        assert!(!present, "{tag}: alice must not see bob's session");
        let (mut mallory, present) = w.connect(v, w.login("evil", "mallory", &listening, false)).await;
        assert!(!present, "{tag}: mallory must not see bob's session");
        carol.publish("acme/im/msg/bob", b"live", 1, false, WAIT).await.expect("puback");
        expect_inbox(&mut bob, b"live").await;
        expect_nothing(&mut alice).await;
        expect_nothing(&mut mallory).await;

        // A parked session: what was queued for bob stays for bob.
        let (bob_phone, _) = w.connect(v, w.login("acme", "bob", &phone, true)).await;
        drop(bob_phone);
        tokio::time::sleep(QUIET).await;
        carol.publish("acme/im/msg/bob", b"while away", 1, false, WAIT).await.expect("puback");
        expect_inbox(&mut bob, b"while away").await;
        for (enterprise, user) in [("acme", "alice"), ("evil", "mallory")] {
            let (mut thief, present) = w.connect(v, w.login(enterprise, user, &phone, true)).await;
            assert!(!present, "{tag}: {user} resumed bob's parked session");
            expect_nothing(&mut thief).await;
        }
        let (mut bob_phone, present) = w.connect(v, w.login("acme", "bob", &phone, true)).await;
        assert!(present, "{tag}: bob's own session is still parked");
        expect_inbox(&mut bob_phone, b"while away").await;

        // The owner still takes his own session over [MQTT-3.1.4-3].
        let (mut bob_again, _) = w.connect(v, w.login("acme", "bob", &listening, false)).await;
        match v {
            Version::V5 => assert_eq!(expect_disconnect(&mut bob).await, 0x8E, "session taken over"),
            _ => assert!(bob.is_closed(WAIT).await, "{tag}: the old connection is closed"),
        }
        carol.publish("acme/im/msg/bob", b"after", 1, false, WAIT).await.expect("puback");
        expect_inbox(&mut bob_again, b"after").await;
        expect_inbox(&mut bob_phone, b"after").await;
        expect_nothing(&mut alice).await;
    }
    w.edge.stop().await;
}

fn with_will(c: Connect, topic: &str, payload: &[u8], delay: Option<u32>) -> Connect {
    Connect {
        will: Some(Will {
            topic: topic.into(),
            payload: payload.to_vec(),
            qos: 1,
            retain: true,
            delay_interval: delay,
        }),
        ..c
    }
}

/// A filter that is not one is refused as such (0x8F) for a user the ACL holds too, not as
/// "not authorized": the ACL is asked about filters only.
#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_shared_filter_is_invalid_before_it_is_unauthorized() {
    let w = World::start().await;
    let (mut alice, _) = w.connect(Version::V5, w.login("acme", "alice", "alice", false)).await;
    for filter in ["$share//acme/im/msg/alice", "$share/+/acme/im/msg/alice", "$share/g/"] {
        let codes = alice.subscribe(vec![SubscribeTopic::new(filter, 1)], WAIT).await.expect("suback");
        assert_eq!(codes, [0x8F], "{filter}");
    }
    let codes = alice.subscribe(vec![SubscribeTopic::new("$share/g/evil/#", 1)], WAIT).await.expect("suback");
    assert_eq!(codes, [0x87], "a valid filter outside the ACL");
    w.edge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_will_needs_the_acl_at_connect() {
    let w = World::start().await;
    let (mut bob, _) = w.connect(Version::V5, w.login("acme", "bob", "bob", false)).await;
    let alice_refused =
        ["acme/im/pres/bob", "acme/im/sig/bob", "acme/notice/all", "evil/im/msg/mallory", "acme/im/msg/bob/x"];
    let mallory_refused = ["acme/im/msg/bob", "acme/im/pres/bob", "acme/notice/all"];
    let cases = [("acme", "alice", &alice_refused[..]), ("evil", "mallory", &mallory_refused[..])];
    for (enterprise, user, topics) in cases {
        for &topic in topics {
            let c = || with_will(w.login(enterprise, user, "willful", false), topic, b"forged", None);
            assert_eq!(w.connack(Version::V311, c()).await.0, 5, "v3 {user} will on {topic}");
            let (code, why) = w.connack(Version::V5, c()).await;
            assert_eq!(code, 0x87, "v5 {user} will on {topic}");
            assert!(why.is_some_and(|r| r.contains("will")), "v5 reason names the will");
        }
    }
    // Nothing of it was published or retained.
    let codes = bob.subscribe(vec![SubscribeTopic::new("acme/im/pres/bob", 1)], WAIT).await.expect("suback");
    assert_eq!(codes, [1]);
    let own = expect_publish(&mut bob).await;
    assert_eq!(&own.payload[..], b"online", "only his own presence is retained");
    ack(&mut bob, &own).await;
    expect_nothing(&mut bob).await;
    // A will on a topic alice may write to is accepted and sent when she vanishes, stamped.
    for v in [Version::V311, Version::V5] {
        let (alice, _) =
            w.connect(v, with_will(w.login("acme", "alice", "alice", false), "acme/im/msg/bob", b"bye", None)).await;
        drop(alice);
        let will = expect_publish(&mut bob).await;
        assert_eq!((will.topic.as_str(), &will.payload[..]), ("acme/im/msg/bob", &b"bye"[..]), "{v:?}");
        assert_eq!(sender(&will), ["acme/alice"]);
        ack(&mut bob, &will).await;
    }
    w.edge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_will_is_authorized_again_when_it_is_sent() {
    let w = World::start().await;
    w.set_tables("acme", 1, "pattern readwrite %e/team/#");
    let (mut bob, _) = w.connect(Version::V5, w.login("acme", "bob", "bob", false)).await;
    assert_eq!(bob.subscribe(vec![SubscribeTopic::new("acme/team/#", 1)], WAIT).await.expect("suback"), [1]);
    for v in [Version::V311, Version::V5] {
        // While the tables allow it, a vanished client's will goes out.
        let dave = with_will(w.login("acme", "dave", "dave", false), "acme/team/dave", b"dave gone", None);
        drop(w.connect(v, dave).await.0);
        let will = expect_publish(&mut bob).await;
        assert_eq!(&will.payload[..], b"dave gone", "{v:?}");
        ack(&mut bob, &will).await;
    }
    // Alice sets a will (v5 with a delay, v3 without), then loses the right to write there.
    let alice5 = with_will(w.login("acme", "alice", "alice-5", true), "acme/team/alice", b"alice5 gone", Some(1));
    let (alice5, _) = w.connect(Version::V5, alice5).await;
    let alice3 = with_will(w.login("acme", "alice", "alice-3", false), "acme/team/alice", b"alice3 gone", None);
    let (alice3, _) = w.connect(Version::V311, alice3).await;
    w.set_tables("acme", 2, "pattern read %e/team/#");
    drop(alice3);
    drop(alice5);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    expect_nothing(&mut bob).await;
    w.edge.stop().await;
}

/// The sender property values a delivery carries.
fn sender(p: &Publish) -> Vec<String> {
    p.properties.user_properties.iter().filter(|(k, _)| k == "hermes-sender").map(|(_, v)| v.clone()).collect()
}

/// Publishes QoS 1 with user properties and waits for the PUBACK.
async fn publish_with(c: &mut Client, topic: &str, payload: Vec<u8>, props: Vec<(&str, &str)>) {
    let id = c.next_packet_id();
    let user_properties = props.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
    let p = Publish {
        topic: topic.into(),
        payload: Bytes::from(payload),
        qos: 1,
        packet_id: Some(id),
        properties: PublishProperties { user_properties, ..PublishProperties::default() },
        ..Publish::default()
    };
    c.send(&Packet::Publish(p)).await.expect("send");
    match c.recv(WAIT).await {
        Ok(Packet::PubAck { packet_id, code }) => assert_eq!((packet_id, code), (id, 0)),
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sender_is_who_the_edge_authenticated() {
    let w = World::start().await;
    let (mut bob3, _) = w.connect(Version::V311, w.login("acme", "bob", "bob-3", false)).await;
    let (mut bob5, _) = w.connect(Version::V5, w.login("acme", "bob", "bob-5", false)).await;
    for v in [Version::V311, Version::V5] {
        let (mut alice, _) = w.connect(v, w.login("acme", "alice", "alice", false)).await;
        let forged =
            wire::envelope::encode(&wire::envelope::text("m1".into(), "carol".into(), Direction::P2p, "hi", 1));
        let claims = match v {
            Version::V5 => vec![("hermes-sender", "acme/carol"), ("from", "carol")],
            _ => vec![],
        };
        publish_with(&mut alice, "acme/im/msg/bob", forged, claims).await;
        for bob in [&mut bob3, &mut bob5] {
            let got = expect_publish(bob).await;
            let env = wire::envelope::decode(&got.payload).expect("an envelope");
            assert_eq!((env.source.as_str(), &env.data[..]), ("alice", &b"hi"[..]), "{v:?} envelope source");
            ack(bob, &got).await;
            if bob.version() == Version::V5 {
                assert_eq!(sender(&got), ["acme/alice"], "{v:?}: only the edge's sender property");
                let from: Vec<_> = got.properties.user_properties.iter().filter(|(k, _)| k == "from").collect();
                assert_eq!(from.len(), usize::from(v == Version::V5), "other properties pass through");
            }
        }
    }
    w.edge.stop().await;
}

/// Mallory of `evil` writes to an inbox of her own enterprise, claiming to be alice of `acme`
/// (the sender property and the envelope's source): the receiver sees `evil/mallory`.
#[tokio::test(flavor = "multi_thread")]
async fn a_sender_of_another_enterprise_cannot_pass_for_one_of_acme() {
    let w = World::start().await;
    let (mut eve3, _) = w.connect(Version::V311, w.login("evil", "eve", "eve-3", false)).await;
    let (mut eve5, _) = w.connect(Version::V5, w.login("evil", "eve", "eve-5", false)).await;
    for v in [Version::V311, Version::V5] {
        let (mut mallory, _) = w.connect(v, w.login("evil", "mallory", "mallory", false)).await;
        let forged =
            wire::envelope::encode(&wire::envelope::text("m1".into(), "alice".into(), Direction::P2p, "hi", 1));
        let claims = match v {
            Version::V5 => vec![("hermes-sender", "acme/alice"), ("HERMES-SENDER", "acme/alice")],
            _ => vec![],
        };
        publish_with(&mut mallory, "evil/im/msg/eve", forged, claims).await;
        for eve in [&mut eve3, &mut eve5] {
            let got = expect_publish(eve).await;
            assert_eq!(got.topic, "evil/im/msg/eve");
            let env = wire::envelope::decode(&got.payload).expect("an envelope");
            assert_eq!((env.source.as_str(), &env.data[..]), ("mallory", &b"hi"[..]), "{v:?} envelope source");
            ack(eve, &got).await;
            if eve.version() == Version::V5 {
                assert_eq!(sender(&got), ["evil/mallory"], "{v:?}: only the edge's sender property");
                let any_case =
                    got.properties.user_properties.iter().filter(|(k, _)| k.eq_ignore_ascii_case("hermes-sender"));
                assert_eq!(any_case.count(), 1, "{v:?}: no forged one in another case");
            }
        }
        drop(mallory);
    }
    w.edge.stop().await;
}

/// A CONNECT from 127.0.0.7 with a token of the wrong key; returns the CONNACK code.
async fn forged_connect(edge: &TestEdge, forger: &Signer, v: Version) -> u8 {
    let mut c = edge.raw_from([127, 0, 0, 7], v).await;
    let forged = Connect { password: Some(access_token_in(forger, "acme", "bob", TTL)), ..connect("x", true) };
    match c.handshake(forged, Duration::from_secs(20)).await {
        Ok(Packet::ConnAck { code, .. }) => code,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_authentication_slows_its_address_down() {
    let w = World::start().await;
    let forger = Signer::generate().expect("keys");
    let bad = |v: Version| forged_connect(&w.edge, &forger, v);
    // The first failures are answered at once.
    for _ in 0..5 {
        assert_eq!(bad(Version::V5).await, 0x86);
    }
    // After that, attempts from the address wait for slots that grow apart, however many
    // connections it opens at once.
    let started = std::time::Instant::now();
    let codes = futures_util::future::join_all((0..5).map(|_| bad(Version::V5))).await;
    assert_eq!(codes, [0x86; 5]);
    assert!(started.elapsed() >= Duration::from_millis(350), "five parallel attempts took {:?}", started.elapsed());
    // Past the longest wait, attempts are turned away at once: v5 0x9F, v3 return code 3.
    let burst =
        futures_util::future::join_all((0..30).map(|i| bad(if i % 2 == 0 { Version::V5 } else { Version::V311 })))
            .await;
    assert!(burst.contains(&0x9F) && burst.contains(&3), "{burst:?}");
    // Another address is not slowed, and the right credentials still work there.
    let mut good = w.edge.raw_from([127, 0, 0, 8], Version::V5).await;
    match good.handshake(w.login("acme", "bob", "bob", false), WAIT).await {
        Ok(Packet::ConnAck { code: 0, .. }) => {}
        other => panic!("expected CONNACK 0, got {other:?}"),
    }
    w.edge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_empty_level_is_nobodys_inbox() {
    let w = World::start().await;
    let (mut alice, _) = w.connect(Version::V5, w.login("acme", "alice", "alice", false)).await;
    for topic in ["acme/im/msg/", "acme/im/group/"] {
        assert_eq!(alice.publish(topic, b"x", 1, false, WAIT).await.expect("puback"), Some(0x87), "{topic}");
    }
    assert_eq!(alice.publish("acme/im/msg/bob", b"x", 1, false, WAIT).await.expect("puback"), Some(0x10));
    w.edge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nobody_reads_or_writes_group_topics_without_membership() {
    let w = World::start().await;
    let (mut alice, _) = w.connect(Version::V5, w.login("acme", "alice", "alice", false)).await;
    let (mut carol, _) = w.connect(Version::V311, w.login("acme", "carol", "carol", false)).await;
    assert_eq!(carol.subscribe(vec![SubscribeTopic::new("acme/im/group/g1", 1)], WAIT).await.expect("suback"), [0x80]);
    assert_eq!(alice.subscribe(vec![SubscribeTopic::new("acme/im/group/+", 1)], WAIT).await.expect("suback"), [0x87]);
    assert_eq!(alice.publish("acme/im/group/g1", b"secret", 1, false, WAIT).await.expect("puback"), Some(0x87));
    expect_nothing(&mut carol).await;
    w.edge.stop().await;
}
