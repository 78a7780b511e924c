//! What every [`Bus`] must do; run against each implementation.

use std::time::Duration;

use bytes::Bytes;

use crate::{Bus, BusError, KeepConfig, Subscription, now_ms};

async fn next(sub: &mut Subscription) -> (String, Bytes) {
    let m = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("a message within 5 s")
        .expect("subscription open");
    (m.subject, m.payload)
}

async fn nothing(sub: &mut Subscription) {
    if let Ok(m) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
        panic!("unexpected message {m:?}");
    }
}

/// A number for names no other run uses.
fn random() -> u32 {
    std::process::id() ^ (std::time::UNIX_EPOCH.elapsed().map_or(0, |d| d.subsec_nanos()))
}

/// Panics with what is wrong. Uses subjects under `contract.<random>` so runs don't interfere.
pub async fn check(bus: &dyn Bus) {
    let root = format!("contract.r{}", random());
    let s = |tail: &str| format!("{root}.{tail}");
    let mut exact = bus.subscribe(&s("a.b")).await.expect("subscribe exact");
    let mut star = bus.subscribe(&s("*.b")).await.expect("subscribe *");
    let mut tail = bus.subscribe(&s(">")).await.expect("subscribe >");

    for i in 0..3u8 {
        bus.publish(&s("a.b"), Bytes::from(vec![i])).await.expect("publish");
    }
    for sub in [&mut exact, &mut star, &mut tail] {
        for i in 0..3u8 {
            assert_eq!(next(sub).await, (s("a.b"), Bytes::from(vec![i])), "in publish order");
        }
    }

    bus.publish(&s("a.b.c"), Bytes::from_static(b"deep")).await.expect("publish");
    assert_eq!(next(&mut tail).await, (s("a.b.c"), Bytes::from_static(b"deep")), "`>` matches many tokens");
    nothing(&mut exact).await;
    nothing(&mut star).await;

    // A dropped subscription is gone; the others keep receiving.
    drop(exact);
    bus.publish(&s("x.b"), Bytes::from_static(b"x")).await.expect("publish after a drop");
    assert_eq!(next(&mut star).await.1, Bytes::from_static(b"x"));
    assert_eq!(next(&mut tail).await.1, Bytes::from_static(b"x"));

    // Empty payloads travel; bad subjects are refused, not sent.
    bus.publish(&s("a.b"), Bytes::new()).await.expect("empty payload");
    assert_eq!(next(&mut star).await.1, Bytes::new());
    assert_eq!(next(&mut tail).await.1, Bytes::new());
    assert!(matches!(bus.publish(&s("a.*"), Bytes::new()).await, Err(BusError::InvalidSubject(_))));
    assert!(matches!(bus.publish("a..b", Bytes::new()).await, Err(BusError::InvalidSubject(_))));
    assert!(matches!(bus.subscribe("a.>.b").await, Err(BusError::InvalidSubject(_))));
    nothing(&mut tail).await;

    // A batch arrives in order; one bad subject refuses all of it.
    let batch: Vec<(String, Bytes)> = (0..3u8).map(|i| (s(&format!("n{i}")), Bytes::from(vec![i]))).collect();
    bus.publish_batch(&batch).await.expect("batch");
    for (subject, payload) in &batch {
        assert_eq!(&next(&mut tail).await, &(subject.clone(), payload.clone()), "a batch in order");
    }
    let spoiled = vec![(s("ok"), Bytes::new()), ("a..b".to_owned(), Bytes::new())];
    assert!(matches!(bus.publish_batch(&spoiled).await, Err(BusError::InvalidSubject(_))));
    nothing(&mut tail).await;

    // A publish for a subscriber that must be there reaches it, or says nobody is there.
    bus.publish_to_present(&s("here"), Bytes::from_static(b"p")).await.expect("a subscriber is there");
    assert_eq!(next(&mut tail).await, (s("here"), Bytes::from_static(b"p")));
    let nobody = format!("{root}x.nobody");
    let started = std::time::Instant::now();
    assert!(matches!(bus.publish_to_present(&nobody, Bytes::new()).await, Err(BusError::NoSubscriber(_))));
    assert!(started.elapsed() < Duration::from_millis(500), "at once: {:?}", started.elapsed());

    // Members of a queue group share its messages, one each; plain subscribers get them all.
    let mut members = [
        bus.subscribe_queue(&s("q.>"), "contract_q").await.expect("queue member"),
        bus.subscribe_queue(&s("q.>"), "contract_q").await.expect("queue member"),
    ];
    for i in 0..20u8 {
        bus.publish(&s(&format!("q.{i}")), Bytes::from(vec![i])).await.expect("publish");
    }
    let mut shares = Vec::new();
    for member in &mut members {
        let mut got = Vec::new();
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), member.next()).await {
            got.push(m.payload[0]);
        }
        shares.push(got);
    }
    let mut all: Vec<u8> = shares.concat();
    all.sort_unstable();
    assert_eq!(all, (0..20).collect::<Vec<u8>>(), "each message to one member: {shares:?}");
    for i in 0..20u8 {
        assert_eq!(next(&mut tail).await.1, Bytes::from(vec![i]), "a plain subscriber gets every one");
    }
    assert!(matches!(bus.subscribe_queue("a.>.b", "q").await, Err(BusError::InvalidSubject(_))));

    // Many at once: an answer each, in order; each subscribed once the call returns.
    let asks = [
        (s("m.one"), None),
        ("a..b".to_owned(), None),
        (s("m.*"), Some("contract_m".to_owned())),
        (s("m.two"), Some("a..b".to_owned())),
        (s("m.>"), None),
    ];
    let mut many = bus.subscribe_many(&asks).await;
    assert_eq!(many.len(), asks.len());
    assert!(matches!(many[1], Err(BusError::InvalidSubject(_))), "a bad subject");
    assert!(matches!(many[3], Err(BusError::InvalidSubject(_))), "a bad queue group");
    bus.publish(&s("m.one"), Bytes::from_static(b"m")).await.expect("publish");
    for i in [0, 2, 4] {
        let sub = many[i].as_mut().expect("subscribed");
        assert_eq!(next(sub).await, (s("m.one"), Bytes::from_static(b"m")), "subscription {i}");
    }
    assert_eq!(next(&mut tail).await.1, Bytes::from_static(b"m"));
    assert!(bus.subscribe_many(&[]).await.is_empty());

    // A durable subscription gets what is published from now on, in order, like any other.
    let stream = format!("CONTRACT_{}", root.replace('.', "_"));
    let mut durable = bus.subscribe_durable(&stream, &s("d.>")).await.expect("durable");
    for i in 0..4u8 {
        let (subject, payload) = (s(&format!("d.{i}")), Bytes::from(vec![i]));
        if i % 2 == 0 {
            bus.publish(&subject, payload).await.expect("publish");
        } else {
            bus.publish_durable(&stream, &s("d.>"), &subject, payload).await.expect("publish durably");
        }
    }
    for i in 0..4u8 {
        assert_eq!(next(&mut durable).await, (s(&format!("d.{i}")), Bytes::from(vec![i])), "durable, in order");
    }
    assert!(matches!(bus.subscribe_durable(&stream, "a.>.b").await, Err(BusError::InvalidSubject(_))));
    for (pattern, subject) in [("d.>", "e.1"), ("d.>", "d.*"), ("d.>.x", "d.1.x"), ("d.>", "d..1")] {
        let refused = bus.publish_durable(&stream, &s(pattern), &s(subject), Bytes::new()).await;
        assert!(matches!(refused, Err(BusError::InvalidSubject(_))), "{subject} in {pattern}: {refused:?}");
    }

    // Nothing kept: no group to join (queue groups are all there is).
    let group = bus.subscribe_group("contract_none", &[s("g.>")], Duration::from_secs(1)).await;
    assert!(group.expect("asked").is_none(), "no groups without keeping");
}

/// The subjects and payloads a replay gives, in order, once it has ended.
async fn replayed(bus: &dyn Bus, filters: &[String], since_ms: u64) -> Vec<(String, Bytes)> {
    let mut replay = bus.replay_kept(filters, since_ms).await.expect("replay");
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), replay.next()).await.expect("a replay ends") {
            None => return got,
            Some(m) => {
                let m = m.expect("a whole replay");
                let now = now_ms();
                assert!(m.at_ms <= now + 1000 && m.at_ms + 5000 >= now, "taken just now: {} (now {now})", m.at_ms);
                got.push((m.subject, m.payload));
            }
        }
    }
}

/// What [`Bus::keep`], [`Bus::publish_batch_kept`] and [`Bus::replay_kept`] must do; panics with
/// what is wrong. Uses subjects under `contract.k<random>` and a stream `CONTRACT_K<random>`.
pub async fn check_kept(bus: &dyn Bus) {
    let n = random();
    let root = format!("contract.k{n}");
    let s = |tail: &str| format!("{root}.{tail}");
    let config = KeepConfig {
        stream: format!("CONTRACT_K{n}"),
        subjects: vec![s("a.>"), s("b.*")],
        max_age: Duration::from_secs(60),
        max_bytes: 10 << 20,
        memory: true,
    };
    assert!(bus.keep(&config).await.expect("keep"), "this bus keeps messages");
    let mut all = bus.subscribe(&s(">")).await.expect("subscribe");

    let before = now_ms();
    let entry = |tail: &str, payload: &'static str, keep: bool| (s(tail), Bytes::from_static(payload.as_bytes()), keep);
    let batch = vec![
        entry("a.1", "k1", true),
        entry("a.1", "plain on a kept subject", false),
        entry("b.x", "k2", true),
        entry("c.x", "marked, on no kept subject", true),
        entry("a.2.deep", "k3", true),
        entry("b.y", "plain", false),
        entry("b.x", "k4", true),
    ];
    bus.publish_batch_kept(&batch).await.expect("a kept batch");
    for (subject, payload, _) in &batch {
        assert_eq!(next(&mut all).await, (subject.clone(), payload.clone()), "all of a batch, in order");
    }
    // Neither plain publishes nor plain batches are kept, on kept subjects too.
    bus.publish(&s("a.1"), Bytes::from_static(b"published")).await.expect("publish");
    bus.publish_batch(&[(s("b.x"), Bytes::from_static(b"batched"))]).await.expect("batch");
    assert_eq!(next(&mut all).await.1, Bytes::from_static(b"published"));
    assert_eq!(next(&mut all).await.1, Bytes::from_static(b"batched"));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let after = now_ms();

    let kept = |payloads: &[&'static str]| -> Vec<(String, Bytes)> {
        let subject = |p: &str| match p {
            "k1" => s("a.1"),
            "k2" | "k4" => s("b.x"),
            _ => s("a.2.deep"),
        };
        payloads.iter().map(|p| (subject(p), Bytes::from_static(p.as_bytes()))).collect()
    };
    assert_eq!(replayed(bus, &[s("a.>")], before).await, kept(&["k1", "k3"]), "the kept ones on matching subjects");
    assert_eq!(replayed(bus, &[s("b.x")], before).await, kept(&["k2", "k4"]));
    assert_eq!(replayed(bus, &[s("a.1"), s("b.*")], before).await, kept(&["k1", "k2", "k4"]), "several filters");
    assert_eq!(
        replayed(bus, &[s("a.>"), s("a.1"), s("b.*"), s("b.x"), s("a.>")], before).await,
        kept(&["k1", "k2", "k3", "k4"]),
        "overlapping filters: each message once"
    );
    assert_eq!(replayed(bus, &[s("a.>"), s("b.*")], 0).await, kept(&["k1", "k2", "k3", "k4"]), "since ever");
    assert!(replayed(bus, &[s("a.>"), s("b.*")], after).await.is_empty(), "nothing taken since");
    assert!(replayed(bus, &[s("a.>"), s("b.*")], u64::MAX).await.is_empty(), "nothing from the far future");
    assert!(replayed(bus, &[], before).await.is_empty(), "no filter, nothing");
    assert!(replayed(bus, &[s("b.z")], before).await.is_empty(), "nothing on the subject");
    assert!(matches!(bus.replay_kept(&["a..b".into()], before).await, Err(BusError::InvalidSubject(_))));

    // A bad subject refuses the whole batch: nothing sent, nothing kept.
    let spoiled = vec![entry("a.9", "k9", true), ("a..b".to_owned(), Bytes::new(), true)];
    assert!(matches!(bus.publish_batch_kept(&spoiled).await, Err(BusError::InvalidSubject(_))));
    nothing(&mut all).await;
    assert_eq!(replayed(bus, &[s("a.>")], before).await, kept(&["k1", "k3"]), "the refused batch is not kept");

    // Every node says the same at start: nothing changes.
    assert!(bus.keep(&config).await.expect("keep again"), "keep is idempotent");
    assert_eq!(replayed(bus, &[s("a.>"), s("b.*")], before).await, kept(&["k1", "k2", "k3", "k4"]), "still kept");
    let bad = KeepConfig { subjects: vec![s("a.>.b")], ..config.clone() };
    assert!(matches!(bus.keep(&bad).await, Err(BusError::InvalidSubject(_))));

    check_group(bus, &root, n).await;
}

/// Messages a group member takes within `quiet` of the last one.
async fn taken(member: &mut crate::GroupSubscription, quiet: Duration) -> Vec<crate::Taken> {
    let mut got = Vec::new();
    while let Ok(Some(t)) = tokio::time::timeout(quiet, member.next()).await {
        got.push(t);
    }
    got
}

/// [`Bus::subscribe_group`] on a bus that keeps `root.a.>` (see [`check_kept`]).
async fn check_group(bus: &dyn Bus, root: &str, n: u32) {
    let filters = [format!("{root}.a.g.>")];
    let group = format!("contract_g{n}");
    let wait = Duration::from_secs(2);
    let join = || bus.subscribe_group(&group, &filters, wait);
    let mut members = [
        join().await.expect("joins").expect("a bus that keeps has groups"),
        join().await.expect("joins").expect("again"),
    ];
    let batch: Vec<(String, Bytes, bool)> =
        (0..10u8).map(|i| (format!("{root}.a.g.{i}"), Bytes::from(vec![i]), true)).collect();
    bus.publish_batch_kept(&batch).await.expect("kept");
    // Neither plain publishes nor what the filters do not match reach the group.
    bus.publish(&format!("{root}.a.g.plain"), Bytes::from_static(b"p")).await.expect("plain");
    bus.publish_batch_kept(&[(format!("{root}.a.other"), Bytes::from_static(b"o"), true)]).await.expect("kept");

    // Each message to one member; the first acknowledges what it took, the second gives its
    // first one back and leaves the rest unsettled.
    let first = taken(&mut members[0], Duration::from_millis(300)).await;
    let second = taken(&mut members[1], Duration::from_millis(300)).await;
    let payload = |t: &crate::Taken| t.message.payload[0];
    let mut all: Vec<u8> = first.iter().chain(&second).map(payload).collect();
    all.sort_unstable();
    assert_eq!(all, (0..10).collect::<Vec<u8>>(), "each once, to one member");
    assert!(first.iter().chain(&second).all(|t| !t.redelivered), "none delivered before");
    let mut owed: Vec<u8> = second.iter().map(payload).collect();
    owed.sort_unstable();
    for t in first {
        t.done().await.expect("acknowledged");
    }
    let mut second = second.into_iter();
    if let Some(t) = second.next() {
        t.give_back().await.expect("given back");
    }
    drop(second);

    // What was not acknowledged comes again (after the wait at the latest), marked so.
    let mut again = Vec::new();
    let until = tokio::time::Instant::now() + wait * 3;
    while again.len() < owed.len() && tokio::time::Instant::now() < until {
        for member in &mut members {
            for t in taken(member, Duration::from_millis(100)).await {
                assert!(t.redelivered, "{} is delivered again", payload(&t));
                again.push(payload(&t));
                t.done().await.expect("acknowledged");
            }
        }
    }
    again.sort_unstable();
    assert_eq!(again, owed, "what the second member did not acknowledge, again");
    // Acknowledged: never again.
    tokio::time::sleep(wait + Duration::from_millis(500)).await;
    for member in &mut members {
        let late: Vec<u8> = taken(member, Duration::from_millis(200)).await.iter().map(payload).collect();
        assert!(late.is_empty(), "acknowledged ones came again: {late:?}");
    }
    assert!(matches!(bus.subscribe_group("a.*", &filters, wait).await, Err(BusError::InvalidSubject(_))));
    assert!(matches!(bus.subscribe_group(&group, &[], wait).await, Err(BusError::InvalidSubject(_))), "no filter");
    assert!(matches!(bus.subscribe_group(&group, &["a..b".into()], wait).await, Err(BusError::InvalidSubject(_))));
}
