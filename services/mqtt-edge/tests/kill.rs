//! An edge killed with -9 while QoS 1 traffic flows through it loses nothing it acknowledged:
//! real `mqtt-edge` processes on a real nats-server and Redis. Its clients reconnect to another
//! edge; the persistent session there continues from the journal in Redis (the dead edge is
//! known gone at once, no handover wait); every message a publisher got a PUBACK for reaches
//! every subscriber, in the publisher's order. Counted by sequence: lost must be 0, duplicates
//! (at-least-once redeliveries) are reported.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hermes_tests::servers::{self, ServerProcess};
use sdk::mqtt::{Client, Connect, Packet, SubscribeTopic, Version, Will};

const EDGE: &str = env!("CARGO_BIN_EXE_mqtt-edge");
const WAIT: Duration = Duration::from_secs(10);

/// Starts an edge named `name` on a free loopback port, joined to the others through `nats`
/// and `redis`.
fn edge(name: &str, nats: &str, redis: &str) -> ServerProcess {
    edge_with(name, nats, redis, None)
}

/// [`edge`], with the settings in the TOML file `config`.
fn edge_with(name: &str, nats: &str, redis: &str, config: Option<&std::path::Path>) -> ServerProcess {
    servers::start_binary(std::path::Path::new(EDGE), |port| {
        let flags = ["--mqtt-ws-addr", "", "--ops-addr", "127.0.0.1:0", "--allow-anonymous"];
        let mut args: Vec<String> = flags.iter().map(|f| (*f).to_owned()).collect();
        if let Some(c) = config {
            args.extend(["--config".to_owned(), c.display().to_string()]);
        }
        args.extend(["--mqtt-addr".to_owned(), format!("127.0.0.1:{port}")]);
        for (flag, value) in [("--bus-nats-url", nats), ("--bus-node-id", name), ("--state-redis-url", redis)] {
            args.extend([flag.to_owned(), value.to_owned()]);
        }
        args
    })
}

/// A v5 client; a persistent session (one hour) unless `clean`. Returns whether a session was
/// resumed.
async fn client(addr: SocketAddr, id: &str, clean: bool) -> (Client, bool) {
    let mut c = Client::connect_tcp(addr, Version::V5).await.expect("tcp");
    let hello = Connect {
        client_id: id.into(),
        clean_start: clean,
        keep_alive: 60,
        session_expiry: (!clean).then_some(3600),
        ..Connect::default()
    };
    match c.handshake(hello, WAIT).await {
        Ok(Packet::ConnAck { code: 0, session_present, .. }) => (c, session_present),
        other => panic!("{id}: {other:?}"),
    }
}

/// Reads and acknowledges deliveries into `got` until the connection ends or `stop` is set.
async fn read(mut c: Client, got: Arc<Mutex<Vec<u32>>>, stop: Arc<std::sync::atomic::AtomicBool>) {
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        match c.recv(Duration::from_millis(200)).await {
            Ok(Packet::Publish(p)) => {
                let n = std::str::from_utf8(&p.payload).ok().and_then(|s| s.parse().ok()).expect("a number");
                got.lock().expect("lock").push(n);
                if c.send(&Packet::PubAck { packet_id: p.packet_id.expect("QoS 1"), code: 0 }).await.is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) if format!("{e:?}").contains("Timeout") => {}
            Err(_) => return,
        }
    }
}

/// Publishes `from..to` at QoS 1 one by one; returns the first number not acknowledged.
async fn publish(c: &mut Client, from: u32, to: u32, acked: &Mutex<Vec<u32>>) -> u32 {
    for n in from..to {
        match c.publish("kept/load", n.to_string().as_bytes(), 1, false, WAIT).await {
            Ok(Some(0)) => acked.lock().expect("lock").push(n),
            _ => return n,
        }
    }
    to
}

/// Publishes `numbers` on `topic` at QoS 1 one by one, each acknowledged, into `acked`.
async fn publish_acked(c: &mut Client, topic: &str, numbers: std::ops::RangeInclusive<u32>, acked: &mut Vec<u32>) {
    for n in numbers {
        c.publish(topic, n.to_string().as_bytes(), 1, false, WAIT).await.expect("puback");
        acked.push(n);
    }
}

/// Lost (acknowledged, never received), duplicated, and whether first arrivals kept the
/// publisher's order.
fn count(acked: &[u32], got: &[u32]) -> (Vec<u32>, usize, bool) {
    let received: HashSet<u32> = got.iter().copied().collect();
    let lost = acked.iter().copied().filter(|n| !received.contains(n)).collect();
    let mut seen = HashSet::new();
    let firsts: Vec<u32> = got.iter().copied().filter(|n| seen.insert(*n)).collect();
    let in_order = firsts.windows(2).all(|w| w[0] < w[1]);
    (lost, got.len() - firsts.len(), in_order)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_edge_killed_mid_traffic_loses_no_acknowledged_message() {
    let (nats, redis) = (servers::nats(), servers::redis());
    let (nats_url, redis_url) = (nats.nats_url(), redis.redis_url());
    let mut a = edge("edge-a", &nats_url, &redis_url);
    let b = edge("edge-b", &nats_url, &redis_url);

    // A subscriber on the edge that dies and one on the edge that stays, both persistent.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (on_a, on_b) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
    let mut readers = Vec::new();
    for (addr, id, got) in [(a.addr, "sub-a", &on_a), (b.addr, "sub-b", &on_b)] {
        let (mut c, _) = client(addr, id, false).await;
        assert_eq!(c.subscribe(vec![SubscribeTopic::new("kept/#", 1)], WAIT).await.expect("suback"), [1]);
        readers.push(tokio::spawn(read(c, got.clone(), stop.clone())));
    }
    // Edge b's interest reaches edge a over NATS.
    let (mut probe, _) = client(a.addr, "probe", true).await;
    for _ in 0..100 {
        probe.publish("kept/probe", b"0", 1, false, WAIT).await.expect("probe");
        tokio::time::sleep(Duration::from_millis(50)).await;
        if on_b.lock().expect("lock").contains(&0) {
            break;
        }
    }
    assert!(on_b.lock().expect("lock").contains(&0), "edge b hears edge a");
    drop(probe);
    on_a.lock().expect("lock").clear();
    on_b.lock().expect("lock").clear();

    // The publisher on the edge that dies: after 300 acknowledged messages, kill -9.
    let acked = Arc::new(Mutex::new(Vec::new()));
    let (mut publisher, _) = client(a.addr, "pub", true).await;
    let total = 600;
    let killer = {
        let acked = acked.clone();
        tokio::spawn(async move {
            while acked.lock().expect("lock").len() < 300 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            a.kill();
        })
    };
    let mut next = publish(&mut publisher, 1, total, &acked).await;
    killer.await.expect("killed");
    assert!(next < total, "the kill came while it published");

    // Everyone moves to edge b; the publisher goes on from its first unacknowledged message.
    readers.remove(0).await.expect("reader on a ends with its edge");
    let (c, present) = client(b.addr, "sub-a", false).await;
    assert!(present, "the session of the dead edge continues from the journal");
    let reader = tokio::spawn(read(c, on_a.clone(), stop.clone()));
    let (mut publisher, _) = client(b.addr, "pub", true).await;
    while next < total {
        next = publish(&mut publisher, next, total, &acked).await;
    }

    let acked = acked.lock().expect("lock").clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        let done = |got: &Mutex<Vec<u32>>| count(&acked, &got.lock().expect("lock")).0.is_empty();
        if done(&on_a) && done(&on_b) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = reader.await;
    let _ = readers.remove(0).await;
    for (who, got) in [("sub-a (its edge killed)", &on_a), ("sub-b", &on_b)] {
        let got = got.lock().expect("lock").clone();
        let (lost, duplicated, in_order) = count(&acked, &got);
        eprintln!(
            "{who}: {} acknowledged, {} received, {} lost, {duplicated} duplicated",
            acked.len(),
            got.len(),
            lost.len()
        );
        assert!(lost.is_empty(), "{who} lost {} acknowledged messages: {lost:?}", lost.len());
        assert!(in_order, "{who}: first arrivals in the publisher's order");
    }
    drop(b);
}

/// Reads and acknowledges deliveries on `topic` until `want` distinct numbers arrived (or 20 s).
async fn collect(c: &mut Client, want: usize, got: &mut Vec<u32>) {
    collect_marked(c, want, got, &mut Vec::new()).await;
}

/// [`collect`], also noting in `resent` the numbers that came with the DUP flag (a resend of
/// what was in flight).
async fn collect_marked(c: &mut Client, want: usize, got: &mut Vec<u32>, resent: &mut Vec<u32>) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while got.iter().collect::<HashSet<_>>().len() < want && std::time::Instant::now() < deadline {
        if let Ok(Packet::Publish(p)) = c.recv(Duration::from_millis(200)).await {
            let n = std::str::from_utf8(&p.payload).ok().and_then(|s| s.parse().ok()).expect("a number");
            got.push(n);
            if p.dup {
                resent.push(n);
            }
            c.send(&Packet::PubAck { packet_id: p.packet_id.expect("QoS 1"), code: 0 }).await.expect("puback");
        }
    }
}

/// Publishes `0` on `topic` until `subscriber` (on another edge than `publisher`) gets one:
/// its edge hears the publisher's. Returns what it got.
async fn heard(publisher: &mut Client, subscriber: &mut Client, topic: &str) -> Vec<u32> {
    let mut got = Vec::new();
    for _ in 0..100 {
        publisher.publish(topic, b"0", 1, false, WAIT).await.expect("probe");
        collect(subscriber, 1, &mut got).await;
        if !got.is_empty() {
            return got;
        }
    }
    panic!("the subscriber's edge never heard the publisher's");
}

#[tokio::test(flavor = "multi_thread")]
async fn what_a_dead_edge_was_sent_reaches_its_sessions_from_their_streams() {
    let (lost, _) = what_a_dead_edge_was_sent_on("acme/im/msg/bob").await;
    assert!(lost.is_empty(), "lost {} acknowledged messages: {lost:?}", lost.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn what_a_dead_edge_was_sent_on_any_topic_reaches_its_sessions_from_the_bus() {
    let (lost, duplicated) = what_a_dead_edge_was_sent_on("acme/devices/bob/cmd").await;
    assert!(lost.is_empty(), "lost {} acknowledged messages: {lost:?}", lost.len());
    assert_eq!(duplicated, 0, "nothing came twice but resends of what was in flight");
}

/// Bob's persistent session lives on edge a and gets 50 messages on `topic` published on edge
/// b; a is killed, b acknowledges 50 more, bob comes back on b. Returns what bob lost and how
/// many he got twice other than as a resend (DUP) of what was in flight.
async fn what_a_dead_edge_was_sent_on(topic: &str) -> (Vec<u32>, usize) {
    let (nats, redis) = (servers::nats(), servers::redis());
    let (nats_url, redis_url) = (nats.nats_url(), redis.redis_url());
    let mut a = edge("edge-a", &nats_url, &redis_url);
    let b = edge("edge-b", &nats_url, &redis_url);
    // bob's persistent session lives on edge a; his messages are published on edge b.
    let (mut bob, _) = client(a.addr, "bob", false).await;
    assert_eq!(bob.subscribe(vec![SubscribeTopic::new(topic, 1)], WAIT).await.expect("suback"), [1]);
    let (mut publisher, _) = client(b.addr, "pub", true).await;
    let mut got = heard(&mut publisher, &mut bob, topic).await;
    let mut acked = Vec::new();
    for n in 1..=50 {
        // 0x10: edge b has no subscriber of its own; edge a has.
        let code = publisher.publish(topic, n.to_string().as_bytes(), 1, false, WAIT).await.expect("puback");
        assert!(matches!(code, Some(0 | 0x10)), "{code:?}");
        acked.push(n);
    }
    collect(&mut bob, 51, &mut got).await;
    // Bob's acknowledgements reach edge a's journal (those still on their way would come back
    // as resends, with DUP); then edge a dies, and what edge b acknowledges meanwhile goes
    // nowhere live.
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.kill();
    drop(bob);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for n in 51..=100 {
        let code = publisher.publish(topic, n.to_string().as_bytes(), 1, false, WAIT).await.expect("puback");
        assert!(matches!(code, Some(0 | 0x10)), "{code:?}");
        acked.push(n);
    }
    let (mut bob, present) = client(b.addr, "bob", false).await;
    assert!(present, "bob's session continues from the journal");
    let mut resent = Vec::new();
    collect_marked(&mut bob, 101, &mut got, &mut resent).await;
    got.retain(|n| *n != 0);
    let (lost, duplicated, _) = count(&acked, &got);
    let duplicated = duplicated.saturating_sub(resent.len());
    eprintln!(
        "bob on {topic}: {} acknowledged, {} received, {} lost, {} resent, {duplicated} more duplicated",
        acked.len(),
        got.len(),
        lost.len(),
        resent.len()
    );
    drop(b);
    (lost, duplicated)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_users_of_a_killed_edge_go_offline() {
    let (nats, redis) = (servers::nats(), servers::redis());
    let (nats_url, redis_url) = (nats.nats_url(), redis.redis_url());
    let signer = wire::token::Signer::generate().expect("keys");
    let config = std::env::temp_dir().join(format!("hermes-kill-{}.toml", std::process::id()));
    let settings = format!(
        "[auth]\ntoken_public_key = \"{}\"\n[limits]\npresence_grace_secs = 0\n",
        signer.verifier().to_paserk()
    );
    std::fs::write(&config, settings).expect("config");
    let mut a = edge_with("edge-a", &nats_url, &redis_url, Some(&config));
    let b = edge_with("edge-b", &nats_url, &redis_url, Some(&config));
    let (mut watcher, _) = client(b.addr, "watcher", true).await;
    assert_eq!(watcher.subscribe(vec![SubscribeTopic::new("acme/im/pres/alice", 1)], WAIT).await.expect("suback"), [1]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut alice = Client::connect_tcp(a.addr, Version::V5).await.expect("tcp");
    let token = hermes_tests::access_token(&signer, "alice", Duration::from_secs(600));
    let hello = Connect { client_id: "phone".into(), keep_alive: 60, password: Some(token), ..Connect::default() };
    assert!(matches!(alice.handshake(hello, WAIT).await, Ok(Packet::ConnAck { code: 0, .. })));
    let status = async |c: &mut Client, within: Duration| match c.recv(within).await {
        Ok(Packet::Publish(p)) => String::from_utf8(p.payload.to_vec()).expect("utf8"),
        other => panic!("expected a presence change, got {other:?}"),
    };
    assert_eq!(status(&mut watcher, WAIT).await, "online");
    a.kill();
    // Edge b reaps edge a once it stopped heartbeating (15 s) and announces alice gone.
    let started = std::time::Instant::now();
    assert_eq!(status(&mut watcher, Duration::from_secs(30)).await, "offline");
    eprintln!("offline announced {:?} after the kill", started.elapsed());
    let _ = std::fs::remove_file(&config);
    drop(b);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_wills_of_a_killed_edges_connections_are_sent_by_another() {
    let (nats, redis) = (servers::nats(), servers::redis());
    let (nats_url, redis_url) = (nats.nats_url(), redis.redis_url());
    let mut a = edge("edge-a", &nats_url, &redis_url);
    let b = edge("edge-b", &nats_url, &redis_url);
    let c = edge("edge-c", &nats_url, &redis_url);
    let (mut watcher, _) = client(b.addr, "watcher", true).await;
    assert_eq!(watcher.subscribe(vec![SubscribeTopic::new("wills/#", 1)], WAIT).await.expect("suback"), [1]);
    // On edge a: each with a will on its own topic (`delayed` and `back` 2 s after).
    let with_will = async |version, id: &str, delay: Option<u32>, expiry: Option<u32>| {
        let mut c = Client::connect_tcp(a.addr, version).await.expect("tcp");
        let will = Will {
            topic: format!("wills/{id}"),
            payload: format!("{id} gone").into_bytes(),
            qos: 1,
            delay_interval: delay,
            ..Will::default()
        };
        let hello = Connect {
            client_id: id.into(),
            clean_start: expiry.is_none(),
            keep_alive: 60,
            will: Some(will),
            session_expiry: expiry,
            ..Connect::default()
        };
        assert!(matches!(c.handshake(hello, WAIT).await, Ok(Packet::ConnAck { code: 0, .. })), "{id}");
        c
    };
    let _v3 = with_will(Version::V311, "v3", None, None).await;
    let _persistent = with_will(Version::V5, "persistent", Some(0), Some(3600)).await;
    let _delayed = with_will(Version::V5, "delayed", Some(2), Some(3600)).await;
    let _back = with_will(Version::V5, "back", Some(2), Some(3600)).await;
    let _bounce_b = with_will(Version::V5, "bounce-b", Some(2), Some(3600)).await;
    let _bounce_c = with_will(Version::V5, "bounce-c", Some(2), Some(3600)).await;
    let mut polite = with_will(Version::V5, "polite", None, None).await;
    polite.send(&Packet::disconnect(0)).await.expect("a DISCONNECT without its will");
    assert!(polite.is_closed(WAIT).await, "the edge closes after a DISCONNECT");
    // Two whose connections end abnormally before the kill, their wills waiting on edge a for
    // 4 s: one's client comes back to edge a before the kill (cancelled), the other's does
    // not (sent: it used to die with edge a).
    drop(with_will(Version::V5, "ended", Some(4), Some(3600)).await);
    drop(with_will(Version::V5, "ended-back", Some(4), Some(3600)).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_ended_back, present) = client(a.addr, "ended-back", false).await;
    assert!(present, "ended-back: its session waited");
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.kill();
    // `back` comes back to edge c before edge a is found dead: its delayed will is cancelled
    // (whichever edge takes edge a's sessions and wills).
    let (_back_again, present) = client(c.addr, "back", false).await;
    assert!(present, "its session came along");
    // Two more come back, one to each live edge, and leave again keeping their sessions: one of
    // them to the edge that takes edge a's wills. Neither will goes out either.
    for (id, addr) in [("bounce-b", b.addr), ("bounce-c", c.addr)] {
        let (mut again, present) = client(addr, id, false).await;
        assert!(present, "{id}: its session came along");
        again.send(&Packet::disconnect(0)).await.expect("DISCONNECT");
        assert!(again.is_closed(WAIT).await, "{id}");
    }
    let started = std::time::Instant::now();
    let mut sent = Vec::new();
    while let Ok(Packet::Publish(p)) = watcher.recv(Duration::from_secs(30)).await {
        if let Some(id) = p.packet_id {
            watcher.send(&Packet::PubAck { packet_id: id, code: 0 }).await.expect("puback");
        }
        sent.push((p.topic.clone(), String::from_utf8(p.payload.to_vec()).expect("utf8")));
        eprintln!("{} after the kill: {}", started.elapsed().as_secs_f32(), p.topic);
        if sent.len() == 4 {
            break;
        }
    }
    sent.sort();
    let want = [
        ("wills/delayed", "delayed gone"),
        ("wills/ended", "ended gone"),
        ("wills/persistent", "persistent gone"),
        ("wills/v3", "v3 gone"),
    ];
    assert_eq!(sent, want.map(|(t, p)| (t.to_owned(), p.to_owned())));
    // Nothing more: not `polite`'s, `back`'s, `ended-back`'s or the bounces' (nor any twice).
    let more = watcher.recv(Duration::from_secs(3)).await;
    assert!(more.is_err(), "nothing more: {more:?}");
    drop((b, c));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_that_had_nothing_yet_still_gets_what_its_dead_edge_was_sent() {
    const INBOX: &str = "acme/im/msg/carol";
    let (nats, redis) = (servers::nats(), servers::redis());
    let (nats_url, redis_url) = (nats.nats_url(), redis.redis_url());
    let mut a = edge("edge-a", &nats_url, &redis_url);
    let b = edge("edge-b", &nats_url, &redis_url);
    let (mut publisher, _) = client(b.addr, "pub", true).await;
    publisher.publish(INBOX, b"0", 1, false, WAIT).await.expect("before carol subscribed");
    // carol subscribes on edge a and gets nothing before it dies.
    let (mut carol, _) = client(a.addr, "carol", false).await;
    assert_eq!(carol.subscribe(vec![SubscribeTopic::new(INBOX, 1)], WAIT).await.expect("suback"), [1]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.kill();
    drop(carol);
    let mut acked = Vec::new();
    publish_acked(&mut publisher, INBOX, 1..=20, &mut acked).await;
    let (mut carol, present) = client(b.addr, "carol", false).await;
    assert!(present);
    let mut got = Vec::new();
    collect(&mut carol, 20, &mut got).await;
    let (lost, duplicated, in_order) = count(&acked, &got);
    assert!(lost.is_empty() && in_order, "lost {lost:?} of what came after she subscribed; got {got:?}");
    assert!(!got.contains(&0), "nothing from before she subscribed");
    eprintln!("carol: {} acknowledged, {} received, {duplicated} duplicated", acked.len(), got.len());
    drop(b);
}

/// Redis restarts without its data while edge a holds a persistent session with messages
/// queued for it: a notices within a heartbeat (the journal's mark changed) and writes the
/// session back, so when a is killed afterwards, b takes it from Redis with what was queued.
#[tokio::test(flavor = "multi_thread")]
async fn an_edge_writes_its_sessions_back_into_a_redis_that_lost_them() {
    let (nats, mut redis) = (servers::nats(), servers::redis());
    let (nats_url, redis_url) = (nats.nats_url(), redis.redis_url());
    let mut a = edge("edge-a", &nats_url, &redis_url);
    let b = edge("edge-b", &nats_url, &redis_url);
    let (mut carol, _) = client(a.addr, "carol", false).await;
    assert_eq!(carol.subscribe(vec![SubscribeTopic::new("t/#", 1)], WAIT).await.expect("suback"), [1]);
    carol.send(&Packet::disconnect(0)).await.expect("bye");
    drop(carol);
    let (mut publisher, _) = client(b.addr, "pub", true).await;
    // What b acknowledges reaches a once a's interest is on the bus: wait for the first.
    let mut acked = Vec::new();
    tokio::time::sleep(Duration::from_millis(500)).await;
    publish_acked(&mut publisher, "t/1", 1..=5, &mut acked).await;
    // Edges look at the journal's mark every 5 s: one look before the loss, one after.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let _redis = servers::redis_again(&mut redis);
    written_back(&redis_url, "carol").await;
    a.kill();
    publish_acked(&mut publisher, "t/1", 6..=10, &mut acked).await;
    let (mut carol, present) = client(b.addr, "carol", false).await;
    assert!(present, "carol's session, written back, taken from the dead edge");
    let mut got = Vec::new();
    collect(&mut carol, 10, &mut got).await;
    let (lost, _, _) = count(&acked, &got);
    assert!(lost.is_empty(), "lost {lost:?}; got {got:?}");
    drop(b);
}

/// Waits until an edge wrote `client`'s session back into the Redis at `url`, which lost it.
async fn written_back(url: &str, client: &str) {
    let conn = redis_state::connect(url).await.expect("redis");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("hermes:session:*{client}*"))
            .query_async(&mut conn.clone())
            .await
            .unwrap_or_default();
        if keys.iter().any(|k| k.ends_with(":journal")) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "no edge wrote {client}'s session back: {keys:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_edge_without_a_bus_writes_its_sessions_back_into_a_redis_that_lost_them() {
    let mut redis = servers::redis();
    let redis_url = redis.redis_url();
    // One edge on Redis and no NATS (no registry of session owners to heartbeat into).
    let mut a = edge("edge-a", "", &redis_url);
    let (mut carol, _) = client(a.addr, "carol", false).await;
    assert_eq!(carol.subscribe(vec![SubscribeTopic::new("t/#", 1)], WAIT).await.expect("suback"), [1]);
    carol.send(&Packet::disconnect(0)).await.expect("bye");
    drop(carol);
    let (mut publisher, _) = client(a.addr, "pub", true).await;
    let mut acked = Vec::new();
    publish_acked(&mut publisher, "t/1", 1..=5, &mut acked).await;
    // The edge looks at the journal's mark every 5 s: one look before the loss, one after.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let _redis = servers::redis_again(&mut redis);
    written_back(&redis_url, "carol").await;
    publish_acked(&mut publisher, "t/1", 6..=10, &mut acked).await;
    // Restarted, the edge finds carol's session in Redis when she comes back.
    a.kill();
    let a = edge("edge-a", "", &redis_url);
    let (mut carol, present) = client(a.addr, "carol", false).await;
    assert!(present, "carol's session, written back, outlived the edge's restart");
    let mut got = Vec::new();
    collect(&mut carol, 10, &mut got).await;
    let (lost, _, in_order) = count(&acked, &got);
    assert!(lost.is_empty(), "lost {lost:?}; got {got:?}");
    assert!(in_order, "out of order: {got:?}");
}

/// How long the bus keeps what edges route to each other in
/// [`a_client_away_from_a_dead_edge_for_longer_than_the_bus_keeps_anything_loses_nothing`].
const KEEP_SECS: u64 = 30;

#[tokio::test(flavor = "multi_thread")]
async fn a_client_away_from_a_dead_edge_for_longer_than_the_bus_keeps_anything_loses_nothing() {
    const TOPIC: &str = "acme/devices/dave/cmd";
    let (nats, redis) = (servers::nats(), servers::redis());
    let (nats_url, redis_url) = (nats.nats_url(), redis.redis_url());
    let config = std::env::temp_dir().join(format!("hermes-kill-keep-{}.toml", std::process::id()));
    std::fs::write(&config, format!("[bus]\nkeep_secs = {KEEP_SECS}\n")).expect("config");
    let mut a = edge_with("edge-a", &nats_url, &redis_url, Some(&config));
    let b = edge_with("edge-b", &nats_url, &redis_url, Some(&config));
    let (mut dave, _) = client(a.addr, "dave", false).await;
    assert_eq!(dave.subscribe(vec![SubscribeTopic::new(TOPIC, 1)], WAIT).await.expect("suback"), [1]);
    let (mut publisher, _) = client(b.addr, "pub", true).await;
    let mut got = heard(&mut publisher, &mut dave, TOPIC).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.kill();
    drop(dave);
    let killed = std::time::Instant::now();
    let mut acked = Vec::new();
    publish_acked(&mut publisher, TOPIC, 1..=20, &mut acked).await;
    // Edge b takes dave's session once edge a's time ran out (15 s, then b's next heartbeat);
    // what comes next is queued there.
    tokio::time::sleep(Duration::from_secs(22).saturating_sub(killed.elapsed())).await;
    publish_acked(&mut publisher, TOPIC, 21..=30, &mut acked).await;
    // Dave stays away until the bus no longer keeps the first 20.
    tokio::time::sleep(Duration::from_secs(KEEP_SECS + 4).saturating_sub(killed.elapsed())).await;
    let (mut dave, present) = client(b.addr, "dave", false).await;
    assert!(present, "dave's session waited on edge b");
    collect(&mut dave, 31, &mut got).await;
    got.retain(|n| *n != 0);
    let (lost, duplicated, in_order) = count(&acked, &got);
    eprintln!(
        "dave: {} acknowledged, {} received, {} lost, {duplicated} duplicated",
        acked.len(),
        got.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "lost {} acknowledged messages: {lost:?}", lost.len());
    assert!(in_order, "in the publisher's order: {got:?}");
    assert_eq!(duplicated, 0);
    let _ = std::fs::remove_file(&config);
    drop(b);
}

/// A shared subscription's QoS 1 messages that the bus gave to an edge that froze and then died
/// reach a member on another edge: the subscription's group on the bus gives again what that
/// edge never acknowledged (`bus.share_ack_secs`, 2 here). A queue group alone would have
/// written them into the frozen edge's socket, and they would be lost with it.
#[tokio::test(flavor = "multi_thread")]
async fn what_a_frozen_edge_took_for_a_shared_subscription_reaches_another_member() {
    const SHARE: &str = "$share/workers/jobs/#";
    let (nats, redis) = (servers::nats(), servers::redis());
    let (nats_url, redis_url) = (nats.nats_url(), redis.redis_url());
    let config = std::env::temp_dir().join(format!("hermes-kill-share-{}.toml", std::process::id()));
    std::fs::write(&config, "[bus]\nshare_ack_secs = 2\n").expect("config");
    let mut a = edge_with("edge-a", &nats_url, &redis_url, Some(&config));
    let b = edge_with("edge-b", &nats_url, &redis_url, Some(&config));
    // The only member is on edge a; the publisher on edge b.
    let (mut worker_a, _) = client(a.addr, "worker-a", true).await;
    assert_eq!(worker_a.subscribe(vec![SubscribeTopic::new(SHARE, 1)], WAIT).await.expect("suback"), [1]);
    let (mut publisher, _) = client(b.addr, "pub", true).await;
    heard(&mut publisher, &mut worker_a, "jobs/probe").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The probes that came meanwhile, acknowledged.
    while let Ok(Packet::Publish(p)) = worker_a.recv(Duration::from_millis(300)).await {
        worker_a.send(&Packet::PubAck { packet_id: p.packet_id.expect("QoS 1"), code: 0 }).await.expect("puback");
    }

    a.freeze();
    let mut acked = Vec::new();
    for n in 1..=40u32 {
        // 0x10: no member on the publisher's edge (there is one elsewhere).
        match publisher.publish("jobs/build", n.to_string().as_bytes(), 1, false, WAIT).await {
            Ok(Some(0 | 0x10)) => acked.push(n),
            other => panic!("publish {n}: {other:?}"),
        }
    }
    // Another worker joins on edge b; edge a dies without having read anything.
    let (mut worker_b, _) = client(b.addr, "worker-b", true).await;
    assert_eq!(worker_b.subscribe(vec![SubscribeTopic::new(SHARE, 1)], WAIT).await.expect("suback"), [1]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.kill();
    let mut got = Vec::new();
    collect(&mut worker_b, acked.len(), &mut got).await;
    got.retain(|n| *n != 0);
    let (lost, duplicated, _) = count(&acked, &got);
    eprintln!(
        "worker-b: {} acknowledged, {} received, {} lost, {duplicated} duplicated",
        acked.len(),
        got.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "lost {} acknowledged messages: {lost:?}", lost.len());
    let _ = std::fs::remove_file(&config);
}
