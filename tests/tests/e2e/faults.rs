//! The session journal's backend going away (Redis cut off through a proxy): the edge never
//! acknowledges a QoS 1 PUBLISH whose changes it could not write (v5 PUBACK 0x80, v3 no PUBACK),
//! keeps QoS 0 and its connections going, says it is not ready, and comes back on its own.

use std::time::Duration;

use hermes_tests::*;
use mqtt_edge::EdgeConfig;
use sdk::mqtt::{Client, Connect, Packet, SubscribeTopic, Version};

fn persistent(id: &str) -> Connect {
    Connect {
        client_id: id.into(),
        clean_start: false,
        keep_alive: 60,
        session_expiry: Some(3600),
        ..Connect::default()
    }
}

/// A persistent v5 session of `id` on `edge`, with `filter` subscribed at QoS 1.
async fn subscribed(edge: &TestEdge, id: &str, filter: &str) -> Client {
    let (mut c, _) = edge.connect(Version::V5, persistent(id)).await;
    assert_eq!(c.subscribe(vec![SubscribeTopic::new(filter, 1)], WAIT).await.expect("suback"), [1]);
    c
}

/// [`subscribed`], its client gone (DISCONNECT): what is published to it must be kept.
async fn away(edge: &TestEdge, id: &str, filter: &str) {
    let mut c = subscribed(edge, id, filter).await;
    c.send(&Packet::disconnect(0)).await.expect("bye");
}

/// An edge whose journal is a Redis behind a proxy the test cuts off; `adjust` sets the rest.
async fn behind_a_proxy(adjust: impl FnOnce(&mut EdgeConfig)) -> (servers::ServerProcess, proxy::Proxy, TestEdge) {
    let redis = servers::redis();
    let proxy = proxy::Proxy::start(redis.addr).await;
    let url = format!("redis://{}/0", proxy.addr);
    let edge = TestEdge::start_with(|c| {
        c.state.redis_url = url;
        adjust(c);
    })
    .await;
    (redis, proxy, edge)
}

async fn publish_code(c: &mut Client, topic: &str, body: &str) -> Option<u8> {
    c.publish(topic, body.as_bytes(), 1, false, Duration::from_secs(15)).await.expect("an answer")
}

/// `state.redis_wait_replicas`: a PUBLISH for a persistent session is acknowledged only once
/// the journal write is on that many replicas too; with none left, it is refused (v5 0x80).
#[tokio::test(flavor = "multi_thread")]
async fn an_edge_that_waits_for_a_replica_acknowledges_only_what_the_replica_has() {
    let redis = servers::redis();
    let mut replica = servers::redis_replica_of(&redis);
    let url = redis.redis_url();
    let edge = TestEdge::start_with(|c| {
        c.state.redis_url = url;
        c.state.redis_wait_replicas = 1;
    })
    .await;
    away(&edge, "keeper", "f/#").await;
    let mut publisher = edge.client(Version::V5, "publisher").await;
    assert_eq!(publish_code(&mut publisher, "f/1", "on the replica").await, Some(0));
    // What the primary acknowledged is on the replica already.
    let mut on_replica = redis::Client::open(replica.redis_url()).and_then(|c| c.get_connection()).expect("replica");
    let keys: Vec<String> =
        redis::cmd("KEYS").arg("hermes:session:*keeper*:journal").query(&mut on_replica).expect("KEYS");
    assert_eq!(keys.len(), 1, "keeper's journal: {keys:?}");
    let fields: Vec<Vec<u8>> = redis::cmd("HVALS").arg(&keys[0]).query(&mut on_replica).expect("HVALS");
    assert!(fields.iter().any(|v| v.windows(14).any(|w| w == b"on the replica")), "the replica holds the message");

    replica.kill();
    let started = std::time::Instant::now();
    assert_eq!(publish_code(&mut publisher, "f/1", "on no replica").await, Some(0x80), "no promise it cannot keep");
    assert!(started.elapsed() < Duration::from_secs(5), "refused within the journal's tries");
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_its_journal_an_edge_acknowledges_nothing_it_could_not_store_and_recovers() {
    let (_redis, proxy, edge) = behind_a_proxy(|_| {}).await;
    let ready = edge.edge().readiness();

    // A persistent session away from its client: what is published to it must be stored.
    away(&edge, "keeper", "f/#").await;
    let mut live = edge.client(Version::V5, "live").await;
    assert_eq!(live.subscribe(vec![SubscribeTopic::new("f/#", 0)], WAIT).await.expect("suback"), [0]);
    let mut publisher = edge.client(Version::V5, "publisher").await;
    assert_eq!(publish_code(&mut publisher, "f/1", "stored").await, Some(0));
    assert!(ready().is_ok());

    proxy.cut();
    assert_eq!(publish_code(&mut publisher, "f/1", "not stored").await, Some(0x80), "no promise it cannot keep");
    assert!(ready().is_err(), "not ready while the journal cannot be written");
    // QoS 0 and the connections go on.
    publisher.publish("f/1", b"qos0", 0, false, WAIT).await.expect("QoS 0");
    let mut bodies = Vec::new();
    while bodies.len() < 3 {
        let p = expect_publish(&mut live).await;
        bodies.push(String::from_utf8_lossy(&p.payload).into_owned());
    }
    assert_eq!(bodies, ["stored", "not stored", "qos0"], "local delivery never stopped");
    // A v3 publisher gets no PUBACK: its connection closes, so it publishes again later.
    let mut v3 = edge.client(Version::V311, "v3-publisher").await;
    v3.send(&Packet::Publish(sdk::mqtt::Publish {
        topic: "f/1".into(),
        payload: bytes::Bytes::from_static(b"v3"),
        qos: 1,
        packet_id: Some(1),
        ..Default::default()
    }))
    .await
    .expect("publish");
    loop {
        match v3.recv(Duration::from_secs(10)).await {
            Ok(Packet::PubAck { .. }) => panic!("a PUBACK for a v3 publish that was not stored"),
            Ok(_) => {}
            Err(e) => {
                assert!(!matches!(e, sdk::mqtt::RecvError::Timeout), "closed instead of acknowledged");
                break;
            }
        }
    }

    proxy.restore();
    let back = readiness_becomes(&ready, true, Duration::from_secs(20)).await;
    assert!(back, "ready again once the journal is back, without a restart");
    assert_eq!(publish_code(&mut publisher, "f/1", "stored again").await, Some(0));

    let (mut keeper, present) = edge.connect(Version::V5, persistent("keeper")).await;
    assert!(present);
    let mut got = Vec::new();
    while let Ok(Packet::Publish(p)) = keeper.recv(Duration::from_secs(2)).await {
        got.push(String::from_utf8_lossy(&p.payload).into_owned());
        ack(&mut keeper, &p).await;
    }
    for must in ["stored", "stored again"] {
        assert!(got.iter().any(|b| b == must), "{must} reached the session: {got:?}");
    }
    edge.stop().await;
}

/// A PUBACK promises that the message is in the journal of every persistent session it went
/// to, or that those sessions acknowledged it. With the journal cut off, a message the live
/// persistent subscriber acknowledges within the linger is acknowledged to its publisher; one
/// left unacknowledged past the linger must be written, cannot be, and is refused (it was
/// delivered all the same).
#[tokio::test(flavor = "multi_thread")]
async fn a_message_its_persistent_subscriber_acknowledged_needs_no_journal_to_be_acknowledged() {
    let (_redis, proxy, edge) = behind_a_proxy(|c| c.limits.journal_linger_ms = 1000).await;
    away(&edge, "away", "a/#").await;
    let mut keeper = subscribed(&edge, "keeper", "f/#").await;
    let mut publisher = edge.client(Version::V5, "publisher").await;
    proxy.cut();
    // The journal is cut off: what a session away must keep is refused.
    assert_eq!(publish_code(&mut publisher, "a/1", "for one away").await, Some(0x80));
    let publishing = tokio::spawn(async move {
        let code = publish_code(&mut publisher, "f/1", "acknowledged").await;
        (publisher, code)
    });
    let p = expect_publish(&mut keeper).await;
    ack(&mut keeper, &p).await;
    let (mut publisher, code) = publishing.await.expect("no panic");
    assert_eq!(code, Some(0), "delivered and acknowledged: nothing left to keep");

    let started = std::time::Instant::now();
    assert_eq!(publish_code(&mut publisher, "f/2", "kept").await, Some(0x80), "no promise it cannot keep");
    assert!(started.elapsed() >= Duration::from_secs(1), "refused once the linger ended");
    let p = expect_publish(&mut keeper).await;
    assert_eq!(&p.payload[..], b"kept", "delivered all the same");
    edge.stop().await;
}

/// The wills an edge keeps in Redis for its open connections (sent by another edge if it
/// dies) are made good once Redis is back: one whose connection ended while Redis was cut off
/// is not left there to be sent for a client that said goodbye; one whose connection ended
/// abnormally then, its delay not over, stays.
#[tokio::test(flavor = "multi_thread")]
async fn the_wills_an_edge_keeps_in_redis_are_made_good_after_a_failed_write() {
    let (redis, proxy, edge) = behind_a_proxy(|_| {}).await;
    let ready = edge.edge().readiness();
    let mut direct = redis::Client::open(redis.redis_url()).and_then(|c| c.get_connection()).expect("redis");
    // The client ids of the wills kept, each with whether it waits for its delay (has a due time).
    let mut wills_kept = move || -> Vec<(String, bool)> {
        let keys: Vec<String> = redis::cmd("KEYS").arg("hermes:wills:node:*").query(&mut direct).expect("KEYS");
        let mut kept: Vec<(String, bool)> = keys
            .iter()
            .flat_map(|k| redis::cmd("HVALS").arg(k).query::<Vec<Vec<u8>>>(&mut direct).expect("HVALS"))
            .map(|bytes| mqtt_edge::wills::decode(&bytes).expect("a will"))
            .map(|w| (w.client_id.to_string(), w.due_ms.is_some()))
            .collect();
        kept.sort();
        kept
    };
    let wills = |kept: &[(&str, bool)]| kept.iter().map(|(id, waits)| ((*id).to_owned(), *waits)).collect::<Vec<_>>();
    let with_will = |id: &str| Connect {
        will: Some(sdk::mqtt::Will { topic: format!("wills/{id}"), payload: b"gone".to_vec(), ..Default::default() }),
        ..connect(id, true)
    };
    let (_stays, _) = edge.connect(Version::V5, with_will("stays")).await;
    let (mut leaves, _) = edge.connect(Version::V5, with_will("leaves")).await;
    let mut delayed = with_will("waits");
    delayed.will.as_mut().expect("a will").delay_interval = Some(600);
    let (waits, _) = edge.connect(Version::V5, Connect { session_expiry: Some(3600), ..delayed }).await;
    let kept = async |want: Vec<(String, bool)>, wills_kept: &mut dyn FnMut() -> Vec<(String, bool)>| {
        for _ in 0..100 {
            if wills_kept() == want {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    };
    let open = wills(&[("leaves", false), ("stays", false), ("waits", false)]);
    assert!(kept(open, &mut wills_kept).await, "the three wills kept: {:?}", wills_kept());

    proxy.cut();
    leaves.send(&Packet::disconnect(0)).await.expect("bye");
    assert!(leaves.is_closed(WAIT).await);
    drop(waits);
    assert!(readiness_becomes(&ready, false, Duration::from_secs(10)).await, "the journal write failed");
    proxy.restore();
    assert!(readiness_becomes(&ready, true, Duration::from_secs(20)).await, "ready again");
    let left = wills(&[("stays", false), ("waits", true)]);
    assert!(
        kept(left, &mut wills_kept).await,
        "the open connection's and the waiting will are left: {:?}",
        wills_kept()
    );
    edge.stop().await;
}

/// Redis restarted (a new process on its address): every connection the edge has to it (each
/// worker's journal writer, the streams', the registry's) is made again as soon as Redis closes
/// it, not when a command first fails on it, so a PUBLISH after Redis is back is not refused
/// for a connection that sat idle through the restart.
#[tokio::test(flavor = "multi_thread")]
async fn after_redis_restarts_no_idle_connection_refuses_the_next_publish() {
    let mut redis = servers::redis();
    let url = redis.redis_url();
    let edge = TestEdge::start_with(|c| c.state.redis_url = url).await;
    away(&edge, "keeper", "f/#").await;
    // Publishers on every worker (connections go to them in turn), each written for once.
    let mut publishers = Vec::new();
    for n in 0..4 {
        let mut p = edge.client(Version::V5, &format!("publisher-{n}")).await;
        assert_eq!(publish_code(&mut p, "f/1", "before").await, Some(0));
        publishers.push(p);
    }

    let _redis = servers::redis_again(&mut redis);
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (n, p) in publishers.iter_mut().enumerate() {
        let code = publish_code(p, "f/1", "after").await;
        assert_eq!(code, Some(0), "publisher {n}: refused on a connection Redis closed a while ago");
    }
    let _newcomer = subscribed(&edge, "newcomer", "f/#").await;
    edge.stop().await;
}
