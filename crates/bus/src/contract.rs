//! What every [`Bus`] must do; run against each implementation.

use std::time::Duration;

use bytes::Bytes;

use crate::{Bus, BusError, Subscription};

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

/// Panics with what is wrong. Uses subjects under `contract.<random>` so runs don't interfere.
pub async fn check(bus: &dyn Bus) {
    let root =
        format!("contract.r{}", std::process::id() ^ (std::time::UNIX_EPOCH.elapsed().map_or(0, |d| d.subsec_nanos())));
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

    // A durable subscription gets what is published from now on, in order, like any other.
    let stream = format!("CONTRACT_{}", root.replace('.', "_"));
    let mut durable = bus.subscribe_durable(&stream, &s("d.>")).await.expect("durable");
    for i in 0..3u8 {
        bus.publish(&s(&format!("d.{i}")), Bytes::from(vec![i])).await.expect("publish");
    }
    for i in 0..3u8 {
        assert_eq!(next(&mut durable).await, (s(&format!("d.{i}")), Bytes::from(vec![i])), "durable, in order");
    }
    assert!(matches!(bus.subscribe_durable(&stream, "a.>.b").await, Err(BusError::InvalidSubject(_))));
}
