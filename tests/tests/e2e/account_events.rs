//! Account events arriving over the bus change what live connections may do, at once: relation
//! changes re-authorize, revocations close connections with v5 0x98, new signatures are
//! published retained, and new enterprise ACL tables apply to connected users.

use std::sync::Arc;
use std::time::Duration;

use bus::Bus;
use bus::memory::MemoryBus;
use bytes::Bytes;
use hermes_tests::*;
use prost::Message as _;
use sdk::mqtt::{Client, Connect, Packet, Publish, PublishProperties, SubscribeTopic, Version, Will};
use wire::pb::{self, account_event::Event};
use wire::token::Signer;

/// An edge that takes tokens from `signer` and follows account events on an in-process bus.
async fn edge_on_bus() -> (TestEdge, Arc<MemoryBus>, Signer) {
    let signer = Signer::generate().expect("keys");
    let public = signer.verifier().to_paserk();
    let edge = TestEdge::start_with(|c| c.auth.token_public_key = public).await;
    let bus = Arc::new(MemoryBus::default());
    edge.edge().account_events().follow(bus.as_ref()).await.expect("subscribe");
    (edge, bus, signer)
}

async fn emit(bus: &MemoryBus, event: Event) {
    emit_at(bus, event, now_ms()).await;
}

fn now_ms() -> i64 {
    std::time::UNIX_EPOCH.elapsed().map_or(0, |d| d.as_millis() as i64)
}

/// An event the accounts tier published at `timestamp_ms`.
async fn emit_at(bus: &MemoryBus, event: Event, timestamp_ms: i64) {
    let e =
        pb::AccountEvent { event_id: "test".into(), timestamp_ms, enterprise_id: "acme".into(), event: Some(event) };
    bus.publish(&wire::subjects::account_events("acme"), e.encode_to_vec().into()).await.expect("publish");
    // The edge applies bus events on a task of its own: give it a moment.
    tokio::time::sleep(Duration::from_millis(20)).await;
}

fn follow(a: &str, b: &str, following: bool) -> Event {
    Event::RelationChanged(pb::RelationChanged { follower: a.into(), followee: b.into(), following })
}

async fn login(edge: &TestEdge, signer: &Signer, v: Version, id: &str, user: &str) -> Client {
    let token = access_token(signer, user, Duration::from_secs(60));
    edge.connect(v, Connect { password: Some(token), ..connect(id, true) }).await.0
}

#[tokio::test(flavor = "multi_thread")]
async fn relation_changes_apply_to_connected_sessions() {
    let (edge, bus, signer) = edge_on_bus().await;
    let mut alice = login(&edge, &signer, Version::V5, "alice", "alice").await;
    let mut bob = login(&edge, &signer, Version::V311, "bob", "bob").await;
    let codes = alice.subscribe(vec![SubscribeTopic::new("acme/im/sig/bob", 0)], WAIT).await.expect("suback");
    assert_eq!(codes, vec![0x87], "not friends yet");

    emit(&bus, follow("alice", "bob", true)).await;
    emit(&bus, follow("bob", "alice", true)).await;
    // Friends now: auto-subscribed to each other's presence (retained "online" arrives)
    // and signatures.
    let pres = expect_publish(&mut alice).await;
    assert_eq!((pres.topic.as_str(), &pres.payload[..]), ("acme/im/pres/bob", &b"online"[..]));
    let pres = expect_publish(&mut bob).await;
    assert_eq!(pres.topic, "acme/im/pres/alice");
    bob.publish("acme/im/sig/bob", b"in a meeting", 0, true, WAIT).await.expect("publish");
    assert_eq!(&expect_publish(&mut alice).await.payload[..], b"in a meeting");

    emit(&bus, follow("bob", "alice", false)).await;
    bob.publish("acme/im/sig/bob", b"free again", 0, true, WAIT).await.expect("publish");
    expect_nothing(&mut alice).await;
    let codes = alice.subscribe(vec![SubscribeTopic::new("acme/im/sig/bob", 0)], WAIT).await.expect("suback");
    assert_eq!(codes, vec![0x87], "no longer friends");
    edge.stop().await;
}

async fn refused_code(edge: &TestEdge, v: Version, token: Vec<u8>) -> u8 {
    let mut c = edge.raw(v).await;
    match c.handshake(Connect { password: Some(token), ..connect("again", true) }, WAIT).await {
        Ok(Packet::ConnAck { code, .. }) => code,
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_tokens_close_every_device_and_no_longer_connect() {
    let (edge, bus, signer) = edge_on_bus().await;
    let old = access_token(&signer, "alice", Duration::from_secs(60));
    let mut phone =
        edge.connect(Version::V5, Connect { password: Some(old.clone()), ..connect("phone", true) }).await.0;
    let mut pc = login(&edge, &signer, Version::V311, "pc", "alice").await;
    let mut bob = login(&edge, &signer, Version::V5, "bob", "bob").await;
    tokio::time::sleep(Duration::from_millis(5)).await;

    let revoked = pb::TokenRevoked {
        user_id: "id-alice".into(),
        username: "alice".into(),
        issued_before_ms: std::time::UNIX_EPOCH.elapsed().map_or(0, |d| d.as_millis() as i64),
        ..Default::default()
    };
    emit(&bus, Event::TokenRevoked(revoked)).await;
    assert_eq!(expect_disconnect(&mut phone).await, 0x98, "v5: administrative action");
    assert!(pc.is_closed(Duration::from_secs(1)).await, "v3: the connection is closed within a second");
    expect_nothing(&mut bob).await;

    assert_eq!(refused_code(&edge, Version::V5, old.clone()).await, 0x87, "the old token is refused");
    assert_eq!(refused_code(&edge, Version::V311, old).await, 5);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let _fresh = login(&edge, &signer, Version::V5, "phone", "alice").await;
    edge.stop().await;
}

/// A will is a publish in its owner's name: a revoked user's connections close without theirs,
/// and the delayed will of one of their devices that went away before is not sent either.
#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_users_wills_are_not_sent() {
    let (edge, bus, signer) = edge_on_bus().await;
    let mut bob = login(&edge, &signer, Version::V5, "bob", "bob").await;
    assert_eq!(bob.subscribe(vec![SubscribeTopic::new("acme/im/msg/bob", 1)], WAIT).await.expect("suback"), [1]);
    let token = access_token(&signer, "alice", Duration::from_secs(60));
    let device = |id: &str, clean: bool, payload: &[u8], delay_interval: Option<u32>| Connect {
        password: Some(token.clone()),
        will: Some(Will {
            topic: "acme/im/msg/bob".into(),
            payload: payload.to_vec(),
            qos: 1,
            retain: false,
            delay_interval,
        }),
        session_expiry: (!clean).then_some(60),
        ..connect(id, clean)
    };
    // Before the revocation a device that vanishes leaves its will.
    drop(edge.connect(Version::V5, device("watch", true, b"watch gone", None)).await.0);
    let will = expect_publish(&mut bob).await;
    assert_eq!(&will.payload[..], b"watch gone");
    ack(&mut bob, &will).await;
    // One went away before, its will waiting for its delay; two are connected.
    drop(edge.connect(Version::V5, device("tablet", false, b"tablet gone", Some(2))).await.0);
    let (mut phone, _) = edge.connect(Version::V5, device("phone", true, b"phone gone", None)).await;
    let (mut pc, _) = edge.connect(Version::V311, device("pc", true, b"pc gone", None)).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let revoked = pb::TokenRevoked {
        user_id: "id-alice".into(),
        username: "alice".into(),
        issued_before_ms: now_ms(),
        ..Default::default()
    };
    emit(&bus, Event::TokenRevoked(revoked)).await;
    assert_eq!(expect_disconnect(&mut phone).await, 0x98);
    assert!(pc.is_closed(Duration::from_secs(1)).await);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    expect_nothing(&mut bob).await;
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn disabled_users_are_disconnected() {
    let (edge, bus, signer) = edge_on_bus().await;
    let mut carol = login(&edge, &signer, Version::V5, "carol", "carol").await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    emit(&bus, Event::UserDisabled(pb::UserDisabled { user_id: "id-carol".into(), username: "carol".into() })).await;
    assert_eq!(expect_disconnect(&mut carol).await, 0x98);
    let token = access_token(&signer, "carol", Duration::from_secs(60));
    let code = refused_code(&edge, Version::V5, token).await;
    assert!(code == 0 || code == 0x87, "a token issued in the same millisecond may pass; got {code:#x}");
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn new_signatures_are_published_retained() {
    let (edge, bus, signer, mut alice) = friends_with_alice_on_v5().await;
    emit(&bus, profile("on holiday", true)).await;
    let sig = expect_publish(&mut alice).await;
    assert_eq!((sig.topic.as_str(), &sig.payload[..]), ("acme/im/sig/bob", &b"on holiday"[..]));
    ack(&mut alice, &sig).await;
    emit(&bus, profile("on holiday", false)).await;
    expect_nothing(&mut alice).await;
    // A friend connecting later gets the retained signature with its auto-subscription.
    let mut later = login(&edge, &signer, Version::V311, "alice-pc", "alice").await;
    let kept = expect_publish(&mut later).await;
    assert_eq!((kept.topic.as_str(), &kept.payload[..], kept.retain), ("acme/im/sig/bob", &b"on holiday"[..], true));
    edge.stop().await;
}

/// Bob's profile, with `signature` (new when `changed`).
fn profile(signature: &str, changed: bool) -> Event {
    Event::ProfileChanged(pb::ProfileChanged {
        user_id: "id-bob".into(),
        username: "bob".into(),
        display_name: "Bob".into(),
        signature: signature.into(),
        signature_changed: changed,
        ..Default::default()
    })
}

fn signature(signature: &str) -> Event {
    profile(signature, true)
}

/// Alice and bob follow each other; alice is connected (v5).
async fn friends_with_alice_on_v5() -> (TestEdge, Arc<MemoryBus>, Signer, Client) {
    let (edge, bus, signer) = edge_on_bus().await;
    emit(&bus, follow("alice", "bob", true)).await;
    emit(&bus, follow("bob", "alice", true)).await;
    let alice = login(&edge, &signer, Version::V5, "alice", "alice").await;
    (edge, bus, signer, alice)
}

fn changed_ms(p: &Publish) -> Option<i64> {
    let (_, at) = p.properties.user_properties.iter().find(|(k, _)| k == "hermes-changed-ms")?;
    at.parse().ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_late_signature_change_does_not_bring_an_older_signature_back() {
    let (edge, bus, signer, mut alice) = friends_with_alice_on_v5().await;
    let now = now_ms();
    emit_at(&bus, signature("on holiday"), now).await;
    let sig = expect_publish(&mut alice).await;
    assert_eq!((&sig.payload[..], changed_ms(&sig)), (&b"on holiday"[..], Some(now)));
    ack(&mut alice, &sig).await;

    // Published a minute earlier, arriving now (tried again, or from the accounts outbox).
    emit_at(&bus, signature("at work"), now - 60_000).await;
    expect_nothing(&mut alice).await;
    let mut later = login(&edge, &signer, Version::V311, "alice-pc", "alice").await;
    let kept = expect_publish(&mut later).await;
    assert_eq!((kept.topic.as_str(), &kept.payload[..]), ("acme/im/sig/bob", &b"on holiday"[..]));

    // Bob may write his own signature topic, but not the instant it changed: a far-future
    // claim is removed and does not hold back the next change.
    let mut bob = login(&edge, &signer, Version::V5, "bob", "bob").await;
    let forged = Publish {
        topic: "acme/im/sig/bob".into(),
        payload: Bytes::from_static(b"forever"),
        qos: 1,
        retain: true,
        packet_id: Some(bob.next_packet_id()),
        properties: PublishProperties {
            user_properties: vec![("hermes-changed-ms".into(), i64::MAX.to_string())],
            ..PublishProperties::default()
        },
        ..Publish::default()
    };
    bob.send(&Packet::Publish(forged)).await.expect("send");
    // Bob is told alice's presence first (a friend's, auto-subscribed).
    loop {
        match bob.recv(WAIT).await {
            Ok(Packet::PubAck { code, .. }) => break assert_eq!(code, 0),
            Ok(Packet::Publish(p)) => assert_eq!(p.topic, "acme/im/pres/alice"),
            other => panic!("expected the PUBACK, got {other:?}"),
        }
    }
    let mut own = expect_publish(&mut alice).await;
    if own.topic == "acme/im/pres/bob" {
        own = expect_publish(&mut alice).await; // bob came online first
    }
    assert_eq!((&own.payload[..], changed_ms(&own)), (&b"forever"[..], None), "the claimed instant is removed");
    ack(&mut alice, &own).await;
    emit_at(&bus, signature("back"), now + 1).await;
    let next = expect_publish(&mut alice).await;
    assert_eq!((&next.payload[..], changed_ms(&next)), (&b"back"[..], Some(now + 1)));
    ack(&mut alice, &next).await;

    // Cleared (no retained message left), then a change from before arrives: it stays cleared.
    emit_at(&bus, signature(""), now + 3).await;
    let cleared = expect_publish(&mut alice).await;
    assert_eq!((cleared.topic.as_str(), &cleared.payload[..]), ("acme/im/sig/bob", &b""[..]));
    ack(&mut alice, &cleared).await;
    emit_at(&bus, signature("stale"), now + 2).await;
    expect_nothing(&mut alice).await;
    emit_at(&bus, signature("fresh"), now + 4).await;
    let fresh = expect_publish(&mut alice).await;
    assert_eq!((&fresh.payload[..], changed_ms(&fresh)), (&b"fresh"[..], Some(now + 4)));
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn enterprise_acl_tables_apply_to_connected_users() {
    let (edge, bus, signer) = edge_on_bus().await;
    let mut alice = login(&edge, &signer, Version::V5, "alice", "alice").await;
    let codes = alice.subscribe(vec![SubscribeTopic::new("acme/team/general", 1)], WAIT).await.expect("suback");
    assert_eq!(codes, vec![0x87], "the built-in rules know no team topics");

    let tables = pb::AclChanged {
        version: 1,
        acl_rules: "pattern readwrite %e/team/#\npattern read %e/im/msg/%u\n".into(),
        auto_subscribe: "%e/team/general 1\n".into(),
    };
    emit(&bus, Event::AclChanged(tables)).await;
    // Auto-subscribed by the new table; notices are no longer readable.
    let mut bob = login(&edge, &signer, Version::V311, "bob", "bob").await;
    bob.publish("acme/team/general", b"standup", 1, false, WAIT).await.expect("allowed to write");
    let p = expect_publish(&mut alice).await;
    assert_eq!((p.topic.as_str(), &p.payload[..]), ("acme/team/general", &b"standup"[..]));
    ack(&mut alice, &p).await;
    let codes = alice.subscribe(vec![SubscribeTopic::new("acme/notice/#", 1)], WAIT).await.expect("suback");
    assert_eq!(codes, vec![0x87]);
    // Tables from before (a late event, or priming racing one) do not roll the rules back.
    let stale = pb::AclChanged { version: 1, acl_rules: "pattern read %e/#".into(), auto_subscribe: String::new() };
    emit(&bus, Event::AclChanged(stale)).await;
    let codes = alice.subscribe(vec![SubscribeTopic::new("acme/notice/#", 1)], WAIT).await.expect("suback");
    assert_eq!(codes, vec![0x87], "version 1 again is ignored");
    // Tables reaching outside the enterprise are refused by the edge too.
    let escape = pb::AclChanged { version: 2, acl_rules: "pattern read #".into(), auto_subscribe: String::new() };
    emit(&bus, Event::AclChanged(escape)).await;
    let codes = alice.subscribe(vec![SubscribeTopic::new("globex/im/msg/ceo", 0)], WAIT).await.expect("suback");
    assert_eq!(codes, vec![0x87]);
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn logging_out_one_device_revokes_only_its_tokens() {
    let (edge, bus, signer) = edge_on_bus().await;
    let token = |session: &str| {
        let claims = wire::token::AccessClaims {
            user_id: "id-alice".into(),
            enterprise_id: "acme".into(),
            username: "alice".into(),
            token_id: format!("t-{session}"),
            issued_at_ms: std::time::UNIX_EPOCH.elapsed().map_or(0, |d| d.as_millis() as i64),
            session_id: session.into(),
        };
        signer.sign(&claims, Duration::from_secs(60)).expect("sign").into_bytes()
    };
    let with = |id: &str, t: Vec<u8>| Connect { password: Some(t), ..connect(id, true) };
    let phone_token = token("phone-session");
    let (mut phone, _) = edge.connect(Version::V5, with("phone", phone_token.clone())).await;
    let (mut pc, _) = edge.connect(Version::V311, with("pc", token("pc-session"))).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let revoked = pb::TokenRevoked {
        user_id: "id-alice".into(),
        username: "alice".into(),
        issued_before_ms: std::time::UNIX_EPOCH.elapsed().map_or(0, |d| d.as_millis() as i64),
        session_id: "phone-session".into(),
    };
    emit(&bus, Event::TokenRevoked(revoked)).await;
    assert_eq!(expect_disconnect(&mut phone).await, 0x98, "the logged-out device is closed");
    expect_nothing(&mut pc).await;
    assert_eq!(refused_code(&edge, Version::V5, phone_token).await, 0x87, "its token is refused");
    assert_eq!(refused_code(&edge, Version::V311, token("pc-session")).await, 0, "the other device's is not");
    edge.stop().await;
}

fn membership(group: &str, user: &str, member: bool) -> Event {
    Event::GroupMembershipChanged(pb::GroupMembershipChanged { group: group.into(), username: user.into(), member })
}

#[tokio::test(flavor = "multi_thread")]
async fn group_topics_follow_membership_live() {
    let (edge, bus, signer) = edge_on_bus().await;
    let mut alice = login(&edge, &signer, Version::V5, "alice", "alice").await;
    let mut carol = login(&edge, &signer, Version::V311, "carol", "carol").await;
    let mut bob = login(&edge, &signer, Version::V5, "bob", "bob").await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    // Joining auto-subscribes the connected members and lets them write; others stay out.
    emit(&bus, membership("ops", "alice", true)).await;
    emit(&bus, membership("ops", "carol", true)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    carol.publish("acme/im/group/ops", b"standup", 1, false, WAIT).await.expect("puback");
    let got = expect_publish(&mut alice).await;
    assert_eq!((got.topic.as_str(), &got.payload[..]), ("acme/im/group/ops", &b"standup"[..]));
    ack(&mut alice, &got).await;
    assert_eq!(bob.publish("acme/im/group/ops", b"let me in", 1, false, WAIT).await.expect("puback"), Some(0x87));
    let codes = bob.subscribe(vec![SubscribeTopic::new("acme/im/group/ops", 1)], WAIT).await.expect("suback");
    assert_eq!(codes, [0x87], "not a member");
    // Leaving takes the subscription and the right away at once.
    emit(&bus, membership("ops", "alice", false)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    carol.publish("acme/im/group/ops", b"after alice left", 1, false, WAIT).await.expect("puback");
    expect_nothing(&mut alice).await;
    assert_eq!(alice.publish("acme/im/group/ops", b"x", 1, false, WAIT).await.expect("puback"), Some(0x87));
    expect_nothing(&mut bob).await;
    edge.stop().await;
}

/// A member who leaves a group while her session is away gets nothing more of it on return:
/// the subscription the group gave her is checked again when she resumes the session, and what
/// it queued goes with it. What came to her inbox meanwhile is delivered.
#[tokio::test(flavor = "multi_thread")]
async fn a_member_who_left_a_group_while_away_gets_nothing_of_it_on_return() {
    let (edge, bus, signer) = edge_on_bus().await;
    let token = access_token(&signer, "alice", Duration::from_secs(60));
    let persistent = Connect { password: Some(token), ..connect("alice-phone", false) };
    let (mut alice, _) = edge.connect(Version::V311, persistent.clone()).await;
    let mut carol = login(&edge, &signer, Version::V311, "carol", "carol").await;
    emit(&bus, membership("ops", "alice", true)).await;
    emit(&bus, membership("ops", "carol", true)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    carol.publish("acme/im/group/ops", b"standup", 1, false, WAIT).await.expect("puback");
    let got = expect_publish(&mut alice).await;
    assert_eq!(&got.payload[..], b"standup", "a member's auto-subscription");
    ack(&mut alice, &got).await;
    alice.send(&Packet::disconnect(0)).await.expect("disconnect");
    assert!(alice.is_closed(WAIT).await);
    carol.publish("acme/im/group/ops", b"while a member", 1, false, WAIT).await.expect("puback");
    emit(&bus, membership("ops", "alice", false)).await;
    carol.publish("acme/im/group/ops", b"after she left", 1, false, WAIT).await.expect("puback");
    carol.publish("acme/im/msg/alice", b"dm", 1, false, WAIT).await.expect("puback");
    // The edge applies events in order: once carol may join another group, alice has left.
    emit(&bus, membership("ops-2", "carol", true)).await;
    let deadline = std::time::Instant::now() + WAIT;
    while carol.subscribe(vec![SubscribeTopic::new("acme/im/group/ops-2", 1)], WAIT).await.expect("suback") != [1] {
        assert!(std::time::Instant::now() < deadline, "the edge never applied the events");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (mut alice, present) = edge.connect(Version::V311, persistent).await;
    assert!(present);
    let got = expect_publish(&mut alice).await;
    assert_eq!((got.topic.as_str(), &got.payload[..]), ("acme/im/msg/alice", &b"dm"[..]));
    ack(&mut alice, &got).await;
    expect_nothing(&mut alice).await;
    carol.publish("acme/im/group/ops", b"later", 1, false, WAIT).await.expect("puback");
    expect_nothing(&mut alice).await;
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deny_rules_in_enterprise_tables_fence_a_wildcard_grant() {
    let (edge, bus, signer) = edge_on_bus().await;
    let tables = pb::AclChanged {
        version: 1,
        acl_rules: "pattern readwrite %e/team/#\npattern deny %e/team/board/#\n".into(),
        auto_subscribe: String::new(),
    };
    emit(&bus, Event::AclChanged(tables)).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut alice = login(&edge, &signer, Version::V5, "alice", "alice").await;
    let mut bob = login(&edge, &signer, Version::V311, "bob", "bob").await;
    let topics = |f: &[&str]| f.iter().map(|t| SubscribeTopic::new(t, 1)).collect::<Vec<_>>();
    let wanted = ["acme/team/general", "acme/team/board/minutes", "acme/team/#"];
    assert_eq!(alice.subscribe(topics(&wanted), WAIT).await.expect("suback"), [1, 0x87, 0x87], "v5");
    assert_eq!(bob.subscribe(topics(&wanted), WAIT).await.expect("suback"), [1, 0x80, 0x80], "v3");
    assert_eq!(alice.publish("acme/team/board/minutes", b"x", 1, false, WAIT).await.expect("puback"), Some(0x87));
    assert_eq!(alice.publish("acme/team/general", b"hi", 1, false, WAIT).await.expect("puback"), Some(0));
    assert_eq!(&expect_publish(&mut bob).await.payload[..], b"hi");
    edge.stop().await;
}
