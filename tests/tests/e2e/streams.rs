//! Durable streams: messages on stream topics carry their `seq` and `epoch`, a client resumes
//! from the `seq` it has (v5 SUBSCRIBE property, or `$hermes/resume/<stream>` on any version)
//! and is told whether the replay was complete, and messages the edge gives up on go to the
//! dead-letter stream.

use std::sync::Arc;

use bytes::Bytes;
use hermes_tests::*;
use sdk::mqtt::{Client, Packet, Publish, PublishProperties, SubscribeTopic, Version};
use wire::pb::Direction;

const INBOX: &str = "acme/im/msg/bob";

fn property(p: &Publish, name: &str) -> Option<String> {
    p.properties.user_properties.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

/// The `hermes-seq` a delivery carries (v5).
fn seq(p: &Publish) -> u64 {
    property(p, "hermes-seq").and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no hermes-seq on {p:?}"))
}

fn epoch(p: &Publish) -> u64 {
    property(p, "hermes-epoch").and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no hermes-epoch on {p:?}"))
}

async fn publish_all(edge: &TestEdge, topic: &str, bodies: &[&str]) {
    let mut publisher = edge.client(Version::V5, "publisher").await;
    for b in bodies {
        let code = publisher.publish(topic, b.as_bytes(), 1, false, WAIT).await.expect("puback");
        assert!(matches!(code, Some(0 | 0x10)), "accepted: {code:?}");
    }
}

/// SUBSCRIBEs (v5, QoS 1) to `filter` with `hermes-resume = position`; returns the replayed
/// messages (acknowledged; they may come before or after the SUBACK) and the SUBACK's
/// `hermes-replay` reports.
async fn resume_v5(c: &mut Client, filter: &str, position: &str) -> (Vec<Publish>, Vec<String>) {
    let id = send_resume(c, filter, position).await;
    let mut got = Vec::new();
    let mut reports = None;
    loop {
        let wait = if reports.is_some() { std::time::Duration::from_millis(300) } else { WAIT };
        match c.recv(wait).await {
            Ok(Packet::Publish(p)) => {
                ack(c, &p).await;
                got.push(p);
            }
            Ok(Packet::SubAck { packet_id, codes, user_properties, .. }) if packet_id == id => {
                assert_eq!(codes, [1], "granted");
                let r = user_properties.into_iter().filter(|(k, _)| k == "hermes-replay").map(|(_, v)| v);
                reports = Some(r.collect());
            }
            Err(sdk::mqtt::RecvError::Timeout) if reports.is_some() => return (got, reports.unwrap_or_default()),
            other => panic!("expected PUBLISH or SUBACK, got {other:?}"),
        }
    }
}

/// Sends a v5 SUBSCRIBE (QoS 1) to `filter` with `hermes-resume = position`; returns its packet id.
async fn send_resume(c: &mut Client, filter: &str, position: &str) -> u16 {
    let id = c.next_packet_id();
    c.send(&Packet::Subscribe {
        packet_id: id,
        topics: vec![SubscribeTopic::new(filter, 1)],
        subscription_id: None,
        user_properties: vec![("hermes-resume".into(), position.into())],
    })
    .await
    .expect("send SUBSCRIBE");
    id
}

fn bodies(ps: &[Publish]) -> Vec<String> {
    ps.iter().map(|p| String::from_utf8_lossy(&p.payload).into_owned()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_on_a_durable_topic_carries_its_place_in_the_stream() {
    let edge = TestEdge::start().await;
    let mut s5 = edge.client(Version::V5, "s5").await;
    let mut s3 = edge.client(Version::V311, "s3").await;
    for s in [&mut s5, &mut s3] {
        s.subscribe(vec![SubscribeTopic::new(INBOX, 1), SubscribeTopic::new("plain/+", 1)], WAIT)
            .await
            .expect("suback");
    }
    let mut publisher = edge.client(Version::V5, "p").await;
    // A client's own stream properties are not believed.
    let forged = Publish {
        topic: INBOX.into(),
        payload: Bytes::from_static(b"one"),
        qos: 1,
        packet_id: Some(publisher.next_packet_id()),
        properties: PublishProperties {
            user_properties: vec![("hermes-seq".into(), "999".into()), ("HERMES-EPOCH".into(), "1".into())],
            ..PublishProperties::default()
        },
        ..Publish::default()
    };
    publisher.send(&Packet::Publish(forged)).await.expect("send");
    assert!(matches!(publisher.recv(WAIT).await, Ok(Packet::PubAck { code: 0, .. })));
    publisher.publish(INBOX, b"two", 1, false, WAIT).await.expect("puback");
    let env = wire::envelope::text("m3".into(), "p".into(), Direction::P2p, "three", 3);
    publisher.publish(INBOX, &wire::envelope::encode(&env), 1, false, WAIT).await.expect("puback");
    publisher.publish("plain/x", b"not durable", 1, false, WAIT).await.expect("puback");

    let got: Vec<Publish> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            let p = expect_publish(&mut s5).await;
            ack(&mut s5, &p).await;
            v.push(p);
        }
        v
    };
    let seqs: Vec<u64> = got[..3].iter().map(seq).collect();
    assert_eq!(seqs, [1, 2, 3], "one seq per message, in order; the forged one ignored");
    assert_eq!(got[..3].iter().filter(|p| property(p, "hermes-seq").is_some()).count(), 3);
    assert!(got[..3].iter().all(|p| {
        p.properties.user_properties.iter().filter(|(k, _)| k.eq_ignore_ascii_case("hermes-seq")).count() == 1
    }));
    let e = epoch(&got[0]);
    assert!(e != 0 && got[..3].iter().all(|p| epoch(p) == e), "one epoch");
    assert_ne!(e, 1, "not the forged epoch");
    let stamped = wire::envelope::decode(&got[2].payload).expect("still an envelope");
    assert_eq!((stamped.seq, stamped.epoch, stamped.stream.as_str()), (3, e, INBOX));
    assert_eq!(stamped.data, b"three");
    assert_eq!(&got[0].payload[..], b"one", "plain payloads are never touched");
    assert_eq!(property(&got[3], "hermes-seq"), None, "plain/x is not a stream");

    // A v3 receiver reads the place from the envelope.
    let mut v3 = Vec::new();
    for _ in 0..4 {
        let p = expect_publish(&mut s3).await;
        ack(&mut s3, &p).await;
        v3.push(p);
    }
    let env3 = wire::envelope::decode(&v3[2].payload).expect("an envelope");
    assert_eq!((env3.seq, env3.epoch), (3, e));
    edge.stop().await;
}

/// A will due on a durable topic is a message of its stream like any other: stamped with its
/// place after what was published before it, and replayed to a client that resumes.
#[tokio::test(flavor = "multi_thread")]
async fn a_will_on_a_durable_topic_takes_its_place_in_the_stream() {
    let edge = TestEdge::start().await;
    let mut bob = edge.client(Version::V5, "bob").await;
    bob.subscribe(vec![SubscribeTopic::new(INBOX, 1)], WAIT).await.expect("suback");
    publish_all(&edge, INBOX, &["before"]).await;
    let before = expect_publish(&mut bob).await;
    ack(&mut bob, &before).await;
    for (v, body) in [(Version::V5, "v5 gone"), (Version::V311, "v3 gone")] {
        let will = sdk::mqtt::Will {
            topic: INBOX.into(),
            payload: body.as_bytes().to_vec(),
            qos: 1,
            retain: false,
            delay_interval: None,
        };
        let c = sdk::mqtt::Connect { will: Some(will), ..connect(&format!("dying-{body}"), true) };
        drop(edge.connect(v, c).await.0);
        let got = expect_publish(&mut bob).await;
        ack(&mut bob, &got).await;
        assert_eq!(&got.payload[..], body.as_bytes());
        assert_eq!(epoch(&got), epoch(&before), "{v:?}: in the stream's epoch");
        assert!(seq(&got) > seq(&before), "{v:?}: after what came before");
    }
    let (got, _) = resume_v5(&mut bob, INBOX, &format!("{}:0", epoch(&before))).await;
    assert_eq!(bodies(&got), ["before", "v5 gone", "v3 gone"], "the wills are in the stream");
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_v5_client_resumes_a_stream_and_learns_how_complete_the_replay_was() {
    let edge = TestEdge::start_with(|c| c.streams.max_replay = 3).await;
    publish_all(&edge, INBOX, &["m1", "m2", "m3", "m4", "m5"]).await;
    let mut bob = edge.client(Version::V5, "bob").await;
    // From nothing: the first three (the replay limit), and "more".
    let (got, reports) = resume_v5(&mut bob, INBOX, "0:0").await;
    assert_eq!(bodies(&got), ["m1", "m2", "m3"]);
    let e = epoch(&got[0]);
    assert_eq!(reports, [format!("more epoch={e} first=1 last=5 stream={INBOX}")]);
    // From m3 under the same epoch: the rest, complete.
    let (got, reports) = resume_v5(&mut bob, INBOX, &format!("{e}:3")).await;
    assert_eq!(bodies(&got), ["m4", "m5"]);
    assert_eq!(got.iter().map(seq).collect::<Vec<_>>(), [4, 5]);
    assert_eq!(reports, [format!("complete epoch={e} first=1 last=5 stream={INBOX}")]);
    // Up to date: nothing, complete.
    let (got, reports) = resume_v5(&mut bob, INBOX, &format!("{e}:5")).await;
    assert!(got.is_empty());
    assert_eq!(reports, [format!("complete epoch={e} first=1 last=5 stream={INBOX}")]);
    // Another epoch (the stream was lost and started again since): a gap, and what is kept.
    let (got, reports) = resume_v5(&mut bob, INBOX, &format!("{}:4", e + 1)).await;
    assert_eq!(bodies(&got), ["m5"]);
    assert!(reports[0].starts_with("gap "), "{reports:?}");
    // Live messages keep flowing to the subscription.
    publish_all(&edge, INBOX, &["m6"]).await;
    let live = expect_publish(&mut bob).await;
    assert_eq!((seq(&live), &live.payload[..]), (6, &b"m6"[..]));
    ack(&mut bob, &live).await;
    // A filter with wildcards, or a topic that is no stream, is subscribed without a replay.
    let (got, reports) = resume_v5(&mut bob, "acme/im/msg/+", "0:0").await;
    assert!(got.is_empty() && reports.is_empty(), "{reports:?}");
    let (got, reports) = resume_v5(&mut bob, "acme/team/x", "0:0").await;
    assert!(got.is_empty() && reports.is_empty());
    // A position that does not parse is reported.
    let (_, reports) = resume_v5(&mut bob, INBOX, "yesterday").await;
    assert!(reports[0].starts_with("refused"), "{reports:?}");
    edge.stop().await;
}

/// A client may wait for its SUBACK before it acknowledges anything: a replay is cut at what
/// the session queues before the edge would wait for room (the SUBACK says "more"), and the
/// client asks again from where it got; never a replay the requester must read before its
/// answer can come.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_reads_only_after_its_suback_resumes_a_long_stream_in_parts() {
    let edge = TestEdge::start_with(|c| {
        c.limits.max_backlog = 8;
        c.limits.max_queued_messages = 50;
    })
    .await;
    let bodies: Vec<String> = (1..=200).map(|n| format!("m{n}")).collect();
    publish_all(&edge, INBOX, &bodies.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let mut bob = edge.client(Version::V5, "bob").await;
    let mut got: Vec<Publish> = Vec::new();
    let mut position = "0:0".to_string();
    let mut parts = 0;
    loop {
        parts += 1;
        let id = send_resume(&mut bob, INBOX, &position).await;
        // Nothing is acknowledged before the SUBACK.
        let mut part = Vec::new();
        let report = loop {
            match bob.recv(WAIT).await {
                Ok(Packet::Publish(p)) => part.push(p),
                Ok(Packet::SubAck { packet_id, user_properties, .. }) if packet_id == id => {
                    break user_properties.into_iter().find(|(k, _)| k == "hermes-replay").map(|(_, v)| v);
                }
                other => panic!("expected PUBLISH or SUBACK, got {other:?} after {} PUBLISHes", part.len()),
            }
        };
        let report = report.expect("a replay report");
        // What the replay queued beyond the window comes once the window moves.
        for p in &part {
            ack(&mut bob, p).await;
        }
        while let Ok(Packet::Publish(p)) = bob.recv(std::time::Duration::from_millis(300)).await {
            ack(&mut bob, &p).await;
            part.push(p);
        }
        got.extend(part);
        if report.starts_with("complete") {
            break;
        }
        assert!(report.starts_with("more"), "{report}");
        let last = got.last().expect("a part holds messages");
        position = format!("{}:{}", epoch(last), seq(last));
    }
    let seqs: Vec<u64> = got.iter().map(seq).collect();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>(), "every message once, in order");
    assert!(parts >= 4, "200 messages in parts of at most 49: {parts} parts");
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_keeps_its_newest_messages_and_says_when_a_client_fell_behind() {
    let edge = TestEdge::start_with(|c| c.streams.max_len = 3).await;
    publish_all(&edge, INBOX, &["m1", "m2", "m3", "m4", "m5"]).await;
    let mut bob = edge.client(Version::V5, "bob").await;
    let (got, _) = resume_v5(&mut bob, INBOX, "0:0").await;
    let e = epoch(&got[0]);
    assert_eq!(bodies(&got), ["m3", "m4", "m5"], "the newest three");
    let (got, reports) = resume_v5(&mut bob, INBOX, &format!("{e}:1")).await;
    assert_eq!(bodies(&got), ["m3", "m4", "m5"]);
    assert_eq!(reports, [format!("gap epoch={e} first=3 last=5 stream={INBOX}")], "m2 is gone");
    let (got, reports) = resume_v5(&mut bob, INBOX, &format!("{e}:2")).await;
    assert_eq!(bodies(&got), ["m3", "m4", "m5"]);
    assert!(reports[0].starts_with("complete"), "had m2: nothing missed");
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_v3_client_resumes_through_the_request_topic() {
    let edge = TestEdge::start().await;
    publish_all(&edge, INBOX, &["m1", "m2", "m3"]).await;
    let mut v5 = edge.client(Version::V5, "peek").await;
    let (got, _) = resume_v5(&mut v5, INBOX, "0:0").await;
    let e = epoch(&got[0]);
    let mut bob = edge.client(Version::V311, "bob").await;
    bob.subscribe(vec![SubscribeTopic::new(INBOX, 1), SubscribeTopic::new("$hermes/replay/#", 0)], WAIT)
        .await
        .expect("suback");
    bob.publish(&format!("$hermes/resume/{INBOX}"), format!("{e}:1").as_bytes(), 1, false, WAIT).await.expect("puback");
    let mut got = Vec::new();
    for _ in 0..3 {
        let p = expect_publish(&mut bob).await;
        ack(&mut bob, &p).await;
        got.push(p);
    }
    assert_eq!(bodies(&got[..2]), ["m2", "m3"]);
    assert_eq!(got[2].topic, format!("$hermes/replay/{INBOX}"));
    assert_eq!(bodies(&got[2..]), [format!("complete epoch={e} first=1 last=3 stream={INBOX}")]);
    // Nobody else hears the report, and nobody but the edge publishes there.
    expect_nothing(&mut v5).await;
    let code = v5.publish(&format!("$hermes/replay/{INBOX}"), b"complete", 1, false, WAIT).await;
    assert_eq!(code.expect("puback"), Some(0x87));
    // v5: a request that is not a position, or for a topic that is no stream, is refused.
    let code = v5.publish(&format!("$hermes/resume/{INBOX}"), b"soon", 1, false, WAIT).await;
    assert_eq!(code.expect("puback"), Some(0x83));
    let code = v5.publish("$hermes/resume/acme/team/x", b"0:0", 1, false, WAIT).await;
    assert_eq!(code.expect("puback"), Some(0x83));
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nobody_resumes_a_stream_they_may_not_read() {
    let signer = wire::token::Signer::generate().expect("keys");
    let public = signer.verifier().to_paserk();
    let edge = TestEdge::start_with(|c| {
        c.auth.allow_anonymous = false;
        c.auth.token_public_key = public;
    })
    .await;
    let login = |enterprise: &str, user: &str, id: &str| sdk::mqtt::Connect {
        password: Some(access_token_in(&signer, enterprise, user, std::time::Duration::from_secs(600))),
        ..connect(id, true)
    };
    let (mut alice, _) = edge.connect(Version::V5, login("acme", "alice", "a")).await;
    alice.publish(INBOX, b"for bob only", 1, false, WAIT).await.expect("puback");
    for (enterprise, user) in [("acme", "alice"), ("evil", "mallory")] {
        for v in [Version::V5, Version::V311] {
            let (mut c, _) = edge.connect(v, login(enterprise, user, "thief")).await;
            // A payload that is no position is refused as the request is: not authorized.
            for payload in [&b"0:0"[..], b"yesterday"] {
                let code =
                    c.publish(&format!("$hermes/resume/{INBOX}"), payload, 1, false, WAIT).await.expect("puback");
                assert_eq!(code, Some(if v == Version::V5 { 0x87 } else { 0 }), "{user} {v:?} {payload:?}");
            }
            expect_nothing(&mut c).await;
        }
    }
    let (mut bob, _) = edge.connect(Version::V5, login("acme", "bob", "b")).await;
    let (got, reports) = resume_v5(&mut bob, INBOX, "0:0").await;
    assert_eq!(bodies(&got), ["for bob only"]);
    assert!(reports[0].starts_with("complete"), "{reports:?}");
    edge.stop().await;
}

/// A stream store that refuses every write.
#[derive(Debug)]
struct Broken;

impl broker::streams::StreamStore for Broken {
    fn append<'a>(
        &'a self,
        _: &'a [broker::streams::Append],
    ) -> broker::relations::BoxFuture<'a, Result<Vec<broker::streams::Stamp>, String>> {
        Box::pin(async { Err("down".to_string()) })
    }
    fn read<'a>(
        &'a self,
        _: &'a str,
        _: u64,
        _: usize,
    ) -> broker::relations::BoxFuture<'a, Result<broker::streams::Replay, String>> {
        Box::pin(async { Err("down".to_string()) })
    }
    fn dead_letter<'a>(
        &'a self,
        _: &'a [broker::streams::DeadLetter],
    ) -> broker::relations::BoxFuture<'a, Result<(), String>> {
        Box::pin(async { Err("down".to_string()) })
    }
    fn dead_letters(
        &self,
        _: u64,
        _: usize,
    ) -> broker::relations::BoxFuture<'_, Result<Vec<(u64, broker::streams::DeadLetter)>, String>> {
        Box::pin(async { Err("down".to_string()) })
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_its_stream_cannot_keep_is_not_acknowledged() {
    let edge = TestEdge::start_with_streams(Arc::new(Broken), |_| {}).await;
    let mut sub = edge.client(Version::V5, "sub").await;
    sub.subscribe(vec![SubscribeTopic::new(INBOX, 1)], WAIT).await.expect("suback");
    let mut p5 = edge.client(Version::V5, "p5").await;
    assert_eq!(p5.publish(INBOX, b"q1", 1, false, WAIT).await.expect("puback"), Some(0x80), "v5: not stored");
    assert_eq!(p5.publish(INBOX, b"q2", 2, false, WAIT).await.expect("pubrec"), Some(0x80));
    expect_nothing(&mut sub).await;
    // QoS 0 goes on, without a place in the stream.
    p5.publish(INBOX, b"q0", 0, false, WAIT).await.expect("sent");
    let got = expect_publish(&mut sub).await;
    assert_eq!((&got.payload[..], property(&got, "hermes-seq")), (&b"q0"[..], None));
    // v3 has no negative PUBACK: the connection closes, the client publishes again later.
    let mut p3 = edge.client(Version::V311, "p3").await;
    let _ = p3.publish(INBOX, b"q1", 1, false, std::time::Duration::from_secs(3)).await;
    assert!(p3.is_closed(WAIT).await, "v3: closed instead of acknowledged");
    // Not a stream topic: unaffected.
    assert_eq!(p5.publish("plain/x", b"fine", 1, false, WAIT).await.expect("puback"), Some(0x10));
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_given_up_on_go_to_the_dead_letter_stream() {
    let store = Arc::new(broker::streams::MemoryStreams::default());
    let edge = TestEdge::start_with_streams(store.clone(), |c| {
        c.limits.max_deliveries = 2;
        c.limits.max_queued_messages = 2;
    })
    .await;
    let persistent = |id: &str| sdk::mqtt::Connect { session_expiry: Some(300), ..connect(id, false) };
    // A client that fails on a message: it gets it twice, never acknowledges, then not again.
    let (mut c, _) = edge.connect(Version::V5, persistent("fails")).await;
    c.subscribe(vec![SubscribeTopic::new("jobs/poison", 1)], WAIT).await.expect("suback");
    let mut p = edge.client(Version::V5, "p").await;
    p.publish("jobs/poison", b"poison", 1, false, WAIT).await.expect("puback");
    assert_eq!(&expect_publish(&mut c).await.payload[..], b"poison");
    drop(c);
    let (mut c, present) = edge.connect(Version::V5, persistent("fails")).await;
    assert!(present);
    let again = expect_publish(&mut c).await;
    assert!(again.dup && &again.payload[..] == b"poison");
    drop(c);
    let (mut c, _) = edge.connect(Version::V5, persistent("fails")).await;
    expect_nothing(&mut c).await;
    // A persistent session away with a full queue: the oldest overflow.
    let (away, _) = edge.connect(Version::V5, persistent("away")).await;
    drop(away);
    let (mut away, _) = edge.connect(Version::V5, persistent("away")).await;
    away.subscribe(vec![SubscribeTopic::new("news/+", 1)], WAIT).await.expect("suback");
    away.send(&Packet::disconnect(0)).await.expect("bye");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    for n in 1..=4 {
        p.publish(&format!("news/{n}"), format!("n{n}").as_bytes(), 1, false, WAIT).await.expect("puback");
    }
    let letters = wait_for_letters(&*store, 3).await;
    let seen: Vec<(String, String, String)> = letters
        .iter()
        .map(|(_, l)| (l.reason.clone(), l.topic.clone(), l.session.rsplit('/').next().unwrap_or("").to_string()))
        .collect();
    assert_eq!(seen[0], ("retries".into(), "jobs/poison".into(), "fails".into()));
    assert_eq!(
        seen[1..],
        [("overflow".into(), "news/1".into(), "away".into()), ("overflow".into(), "news/2".into(), "away".into())]
    );
    assert!(letters.windows(2).all(|w| w[0].0 < w[1].0), "ids ascend");
    let (mut away, present) = edge.connect(Version::V5, persistent("away")).await;
    assert!(present);
    let kept: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..2 {
            let p = expect_publish(&mut away).await;
            ack(&mut away, &p).await;
            v.push(String::from_utf8_lossy(&p.payload).into_owned());
        }
        v
    };
    assert_eq!(kept, ["n3", "n4"]);
    edge.stop().await;
}

async fn wait_for_letters(
    store: &dyn broker::streams::StreamStore,
    n: usize,
) -> Vec<(u64, broker::streams::DeadLetter)> {
    for _ in 0..100 {
        let letters = store.dead_letters(0, 100).await.expect("dead letters");
        if letters.len() >= n {
            return letters;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("fewer than {n} dead letters");
}

#[tokio::test(flavor = "multi_thread")]
async fn edges_on_one_redis_share_each_stream() {
    let (nats, redis) = (servers::nats(), servers::redis());
    let (url, redis_url) = (nats.nats_url(), redis.redis_url());
    let node = |id: &'static str| {
        let redis_url = redis_url.clone();
        move |c: &mut mqtt_edge::EdgeConfig| {
            c.bus.node_id = id.into();
            c.state.redis_url = redis_url;
        }
    };
    let bus = || async { Arc::new(bus::nats::NatsBus::connect(&url).await.expect("nats")) as Arc<dyn bus::Bus> };
    let a = TestEdge::start_clustered(bus().await, None, node("a")).await;
    let b = TestEdge::start_clustered(bus().await, None, node("b")).await;
    let mut live = b.client(Version::V5, "live").await;
    live.subscribe(vec![SubscribeTopic::new(INBOX, 1)], WAIT).await.expect("suback");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    publish_all(&a, INBOX, &["a1", "a2", "a3"]).await;
    publish_all(&b, INBOX, &["b4", "b5"]).await;
    let mut got = Vec::new();
    for _ in 0..5 {
        let p = expect_publish(&mut live).await;
        ack(&mut live, &p).await;
        got.push(p);
    }
    let mut seen: Vec<(u64, String)> =
        got.iter().map(|p| (seq(p), String::from_utf8_lossy(&p.payload).into_owned())).collect();
    seen.sort();
    let want: Vec<(u64, String)> =
        ["a1", "a2", "a3", "b4", "b5"].iter().enumerate().map(|(i, b)| (i as u64 + 1, b.to_string())).collect();
    assert_eq!(seen, want, "one counter for the stream, whichever edge appended");
    let e = epoch(&got[0]);
    assert!(got.iter().all(|p| epoch(p) == e));
    // A client that had up to 2 resumes on the other edge.
    let mut back = a.client(Version::V5, "back").await;
    let (replayed, reports) = resume_v5(&mut back, INBOX, &format!("{e}:2")).await;
    assert_eq!(bodies(&replayed), ["a3", "b4", "b5"]);
    assert_eq!(reports, [format!("complete epoch={e} first=1 last=5 stream={INBOX}")]);
    a.stop().await;
    b.stop().await;
    drop((nats, redis));
}

#[tokio::test(flavor = "multi_thread")]
async fn mosquitto_sub_resumes_a_stream_with_a_user_property() {
    let sub_bin = require_tool("mosquitto_sub");
    let edge = TestEdge::start().await;
    publish_all(&edge, INBOX, &["m1", "m2", "m3"]).await;
    let port = edge.tcp.port().to_string();
    let mut sub = tokio::process::Command::new(&sub_bin);
    sub.args(["-h", "127.0.0.1", "-p", &port, "-V", "mqttv5", "-q", "1", "-t", INBOX, "-C", "2", "-W", "10"]);
    // The epoch is unknown to a client that has nothing: 0:1 asks for what follows seq 1.
    sub.args(["-D", "subscribe", "user-property", "hermes-resume", "0:1"]);
    let (ok, out, err) = run_tool(&mut sub, std::time::Duration::from_secs(15)).await;
    assert!(ok, "mosquitto_sub: {err}");
    assert_eq!(out.lines().collect::<Vec<_>>(), ["m2", "m3"]);
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_publishers_pipelined_messages_get_their_seqs_in_its_order() {
    // The subscriber reads once all 100 are acknowledged: its backlog may hold them all.
    let edge = TestEdge::start_with(|c| c.limits.max_backlog = 100).await;
    let mut sub = edge.client(Version::V5, "sub").await;
    sub.subscribe(vec![SubscribeTopic::new(INBOX, 1)], WAIT).await.expect("suback");
    let mut publisher = edge.client(Version::V5, "p").await;
    // 100 PUBLISHes back to back, before any PUBACK (the edge's receive maximum is 32: the
    // client's window, not ours, is what a real client would keep).
    for n in 1..=100u16 {
        let p = Publish {
            topic: INBOX.into(),
            payload: Bytes::from(n.to_string()),
            qos: 1,
            packet_id: Some(n),
            ..Publish::default()
        };
        publisher.send(&Packet::Publish(p)).await.expect("send");
        if n % 30 == 0 {
            for _ in 0..30 {
                assert!(matches!(publisher.recv(WAIT).await, Ok(Packet::PubAck { code: 0, .. })));
            }
        }
    }
    for _ in 0..10 {
        assert!(matches!(publisher.recv(WAIT).await, Ok(Packet::PubAck { code: 0, .. })));
    }
    for n in 1..=100u64 {
        let p = expect_publish(&mut sub).await;
        ack(&mut sub, &p).await;
        assert_eq!((String::from_utf8_lossy(&p.payload).parse::<u64>().ok(), seq(&p)), (Some(n), n));
    }
    edge.stop().await;
}

/// ntex-mqtt polls a PUBLISH handler inline when no other of its connection is pending and
/// spawns it otherwise, so a later handler may start before earlier ones (`flow::places`); with
/// a stream store that takes a while, many publishers each keeping 16 messages in flight made
/// that happen within seconds. Every subscriber must see its publisher's order.
#[tokio::test(flavor = "multi_thread")]
async fn many_pipelined_publishers_keep_their_order_behind_a_slow_stream_store() {
    let edge = TestEdge::start_with_streams(Arc::new(Slow(broker::streams::MemoryStreams::default())), |_| {}).await;
    let n = 60usize;
    let mut subs = Vec::new();
    for i in 0..n {
        let mut s = edge.client(Version::V5, &format!("s{i}")).await;
        s.subscribe(vec![SubscribeTopic::new(&format!("t{i}/im/msg/x"), 1)], WAIT).await.expect("suback");
        subs.push(s);
    }
    let mut readers = Vec::new();
    for (i, mut s) in subs.into_iter().enumerate() {
        readers.push(tokio::spawn(async move {
            let mut last = None::<u64>;
            let mut bad = 0;
            for _ in 0..400 {
                let p = expect_publish(&mut s).await;
                ack(&mut s, &p).await;
                let n: u64 = String::from_utf8_lossy(&p.payload).parse().expect("n");
                if last.is_some_and(|l| n <= l) {
                    bad += 1;
                    eprintln!("sub {i}: {n} after {last:?}");
                }
                last = Some(n);
            }
            bad
        }));
    }
    let mut pubs = Vec::new();
    for i in 0..n {
        let mut c = edge.client(Version::V5, &format!("p{i}")).await;
        pubs.push(tokio::spawn(async move {
            let mut inflight = 0;
            for k in 0..400u64 {
                let p = Publish {
                    topic: format!("t{i}/im/msg/x"),
                    payload: Bytes::from(k.to_string()),
                    qos: 1,
                    packet_id: Some(c.next_packet_id()),
                    ..Publish::default()
                };
                c.send(&Packet::Publish(p)).await.expect("send");
                inflight += 1;
                while inflight >= 16 {
                    if let Ok(Packet::PubAck { .. }) = c.recv(WAIT).await {
                        inflight -= 1;
                    }
                }
            }
            while inflight > 0 {
                if let Ok(Packet::PubAck { .. }) = c.recv(WAIT).await {
                    inflight -= 1;
                }
            }
        }));
    }
    for p in pubs {
        p.await.expect("publisher");
    }
    let mut bad = 0;
    for r in readers {
        bad += r.await.expect("reader");
    }
    assert_eq!(bad, 0);
    edge.stop().await;
}

/// A stream store that answers each append after 2 ms.
#[derive(Debug)]
struct Slow(broker::streams::MemoryStreams);

impl broker::streams::StreamStore for Slow {
    fn append<'a>(
        &'a self,
        a: &'a [broker::streams::Append],
    ) -> broker::relations::BoxFuture<'a, Result<Vec<broker::streams::Stamp>, String>> {
        Box::pin(async move {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            self.0.append(a).await
        })
    }
    fn read<'a>(
        &'a self,
        s: &'a str,
        a: u64,
        l: usize,
    ) -> broker::relations::BoxFuture<'a, Result<broker::streams::Replay, String>> {
        self.0.read(s, a, l)
    }
    fn dead_letter<'a>(
        &'a self,
        l: &'a [broker::streams::DeadLetter],
    ) -> broker::relations::BoxFuture<'a, Result<(), String>> {
        self.0.dead_letter(l)
    }
    fn dead_letters(
        &self,
        a: u64,
        l: usize,
    ) -> broker::relations::BoxFuture<'_, Result<Vec<(u64, broker::streams::DeadLetter)>, String>> {
        self.0.dead_letters(a, l)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn resume_positions_at_the_bounds_get_an_answer() {
    count_edge_panics();
    let edge = TestEdge::start().await;
    publish_all(&edge, INBOX, &["m1"]).await;
    let mut bob = edge.client(Version::V5, "bob").await;
    let max = u64::MAX;
    for position in [format!("0:{max}"), format!("{max}:0"), format!("{max}:{max}"), "0:0".into(), "1:1".into()] {
        let (_, reports) = resume_v5(&mut bob, INBOX, &position).await;
        assert_eq!(reports.len(), 1, "{position}: {reports:?}");
    }
    for junk in ["", ":", "-1:0", "0:-1", "0:18446744073709551616", "0x10:1", "1:2:3"] {
        let (_, reports) = resume_v5(&mut bob, INBOX, junk).await;
        assert!(reports[0].starts_with("refused"), "{junk:?}: {reports:?}");
        let code = bob.publish(&format!("$hermes/resume/{INBOX}"), junk.as_bytes(), 1, false, WAIT).await;
        assert_eq!(code.expect("puback"), Some(0x83), "{junk:?}");
    }
    assert_eq!(edge_panics(), Vec::<String>::new());
    edge.stop().await;
}
