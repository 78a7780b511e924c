//! The real backends against the same contracts their embedded counterparts meet.

use std::time::Duration;

use broker::presence::PresenceDirectory;
use broker::relations::RelationDirectory;
use hermes_tests::*;
use sdk::mqtt::{Connect, Version};
use wire::token::Signer;

#[tokio::test]
async fn nats_bus_meets_the_contract() {
    let server = servers::nats();
    let bus = bus::nats::NatsBus::connect(&server.nats_url()).await.expect("connect to nats-server");
    bus::contract::check(&bus).await;
}

#[tokio::test]
async fn nats_bus_keeps_and_replays_like_the_contract_says() {
    use bus::Bus;
    let server = servers::nats();
    let bus = bus::nats::NatsBus::connect(&server.nats_url()).await.expect("connect to nats-server");
    bus::contract::check_kept(&bus).await;

    // Without JetStream nothing is kept: kept publishes are plain ones, replays empty.
    let core = servers::nats_core_only();
    let bus = bus::nats::NatsBus::connect(&core.nats_url()).await.expect("connect to nats-server");
    let config = kept_in_memory("CORE_ONLY", "core.>");
    assert!(!bus.keep(&config).await.expect("keep without JetStream"));
    let mut sub = bus.subscribe("core.>").await.expect("subscribe");
    bus.publish_batch_kept(&[("core.a".into(), "x".into(), true)]).await.expect("a plain publish");
    let m = tokio::time::timeout(Duration::from_secs(5), sub.next()).await.expect("delivered").expect("open");
    assert_eq!(m.payload, "x");
    let mut replay = bus.replay_kept(&["core.>".into()], 0).await.expect("replay");
    assert!(replay.next().await.is_none(), "nothing kept");
}

/// A group whose consumer is gone (deleted; forgotten by a NATS that kept it in memory and
/// restarted) ends its subscription, so its member joins again, instead of waiting forever on
/// a consumer that will never deliver (while the edge leaves the share's kept messages to it).
#[tokio::test]
async fn a_nats_group_whose_consumer_is_gone_ends_and_can_be_joined_again() {
    use bus::Bus;
    use futures_util::StreamExt as _;
    let mut server = servers::nats();
    let bus = bus::nats::NatsBus::connect(&server.nats_url()).await.expect("connect to nats-server");
    let config = kept_in_memory("GONE", "gone.>");
    assert!(bus.keep(&config).await.expect("keep"));
    let filters = ["gone.a.>".to_owned()];
    let join = || bus.subscribe_group("g", &filters, Duration::from_secs(5));
    let mut member = join().await.expect("joins").expect("a bus that keeps has groups");
    async fn take(member: &mut bus::GroupSubscription) -> Option<bus::Taken> {
        tokio::time::timeout(Duration::from_secs(10), member.next()).await.expect("in time")
    }
    bus.publish_batch_kept(&[("gone.a.1".into(), "1".into(), true)]).await.expect("kept");
    let first = take(&mut member).await.expect("delivered");
    assert_eq!(first.message.payload, "1");
    first.done().await.expect("done");

    let client = async_nats::connect(server.nats_url()).await.expect("connect");
    let stream = async_nats::jetstream::new(client).get_stream("GONE").await.expect("the stream");
    let names: Vec<String> = stream.consumer_names().map(|n| n.expect("a name")).collect().await;
    assert_eq!(names.len(), 1, "one consumer for one filter: {names:?}");
    stream.delete_consumer(&names[0]).await.expect("deleted");
    assert!(take(&mut member).await.is_none(), "deleted: the subscription ends");

    let mut member = join().await.expect("joins again").expect("a group");
    bus.publish_batch_kept(&[("gone.a.2".into(), "2".into(), true)]).await.expect("kept");
    let second = take(&mut member).await.expect("delivered");
    assert_eq!(second.message.payload, "2", "what comes after the new consumer");
    second.done().await.expect("done");

    // NATS restarts and forgets the stream and the consumer (kept in memory): nobody answers
    // the member's pulls any more, and the bus makes the stream again once it is back.
    let _again = servers::nats_again(&mut server);
    let ended = tokio::time::timeout(Duration::from_secs(30), member.next()).await;
    assert!(matches!(ended, Ok(None)), "forgotten: the subscription ends");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut member = loop {
        if let Ok(Some(member)) = join().await {
            break member;
        }
        assert!(std::time::Instant::now() < deadline, "the stream was never made again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    bus.publish_batch_kept(&[("gone.a.3".into(), "3".into(), true)]).await.expect("kept again");
    assert_eq!(take(&mut member).await.expect("delivered").message.payload, "3");
}

/// The kept stream takes more replays at once than the 1 000 consumers NATS 2.15 gives a
/// stream that sets no limit (a drain of thousands of sessions replays once per session).
#[tokio::test]
async fn the_kept_stream_takes_more_replays_at_once_than_natss_default_limit() {
    use bus::Bus;
    let server = servers::nats();
    let bus = bus::nats::NatsBus::connect(&server.nats_url()).await.expect("connect to nats-server");
    let config = kept_in_memory("MANY", "many.>");
    assert!(bus.keep(&config).await.expect("keep"));
    let kept = vec![("many.x".to_owned(), bytes::Bytes::from_static(b"m"), true)];
    bus.publish_batch_kept(&kept).await.expect("kept");
    let filters = ["many.>".to_owned()];
    // Each replay holds its consumer until it is read to the end or dropped.
    let mut open = Vec::new();
    for n in 0..1_100 {
        match bus.replay_kept(&filters, 0).await {
            Ok(replay) => open.push(replay),
            Err(e) => panic!("replay {n}: {e}"),
        }
    }
    assert_eq!(open.len(), 1_100);
}

/// A stream of 1 MiB in memory keeping `subjects` for a minute.
fn kept_in_memory(stream: &str, subjects: &str) -> bus::KeepConfig {
    bus::KeepConfig {
        stream: stream.into(),
        subjects: vec![subjects.into()],
        max_age: Duration::from_secs(60),
        max_bytes: 1 << 20,
        memory: true,
    }
}

/// A kept stream larger than the NATS server has room for is refused with what to change.
#[tokio::test]
async fn a_kept_stream_nats_has_no_room_for_says_which_setting_to_lower() {
    use bus::Bus;
    let server = servers::nats_with_little_room(1 << 20);
    let bus = bus::nats::NatsBus::connect(&server.nats_url()).await.expect("connect to nats-server");
    let config = |max_bytes| bus::KeepConfig {
        stream: "ROOM".into(),
        subjects: vec!["room.>".into()],
        max_age: Duration::from_secs(60),
        max_bytes,
        memory: false,
    };
    let refused = bus.keep(&config(1 << 30)).await;
    match refused {
        Err(bus::BusError::Transport(e)) => assert!(e.contains("lower bus.keep_max_bytes"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert!(bus.keep(&config(1 << 19)).await.expect("what fits is kept"));
}

#[tokio::test]
async fn redis_relation_directory_meets_the_contract() {
    relation_directory_contract(&servers::redis().redis_url()).await;
}

async fn relation_directory_contract(url: &str) {
    let dir = redis_state::RedisRelations::connect(url).await.expect("connect to redis-server");
    broker::relations::contract::check_directory(&dir, "contract-").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_session_owners_meet_the_contract() {
    session_owners_contract(&servers::redis().redis_url()).await;
}

async fn session_owners_contract(url: &str) {
    let conn = redis_state::connect(url).await.expect("connect to redis-server");
    broker::owners::contract::check(&redis_state::RedisOwners::new(conn), "contract").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_session_journal_meets_the_contract() {
    session_journal_contract(&servers::redis().redis_url()).await;
}

async fn session_journal_contract(url: &str) {
    let conn = redis_state::connect(url).await.expect("connect to redis-server");
    broker::journal::contract::check(&redis_state::RedisJournal::new(conn.clone()), "journal").await;
    // What the contract cannot see: each session's expiry is its hash's (the expired one was
    // written again, live, at the end of the contract).
    let ttl = |session: &str| {
        let mut conn = conn.clone();
        let key = wire::keys::session_journal(session);
        async move { redis::cmd("TTL").arg(key).query_async::<i64>(&mut conn).await.expect("TTL") }
    };
    assert_eq!(ttl("journal:1:p/parked").await, -1, "written again, live: no expiry");
    assert_eq!(ttl("journal:1:p/back").await, -1, "live again: no expiry");
    assert!(ttl("journal:1:p/touched").await > 3000, "touched for an hour");
    assert_eq!(ttl("journal:1:p/long").await, -2, "touched for a second: gone");
    assert_eq!(ttl("journal:1:p/nobody").await, -2, "a touch makes no hash");
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_streams_meet_the_contract() {
    streams_contract(&servers::redis().redis_url()).await;
}

async fn streams_contract(url: &str) {
    let conn = redis_state::connect(url).await.expect("connect to redis-server");
    let streams = redis_state::RedisStreams::new(conn.clone(), broker::streams::contract::RETENTION);
    // Two runs at once, as edges sharing a Redis would: streams apart, dead letters shared.
    tokio::join!(broker::streams::contract::check(&streams, "one"), broker::streams::contract::check(&streams, "two"));
    // What the contract cannot see: a stream's keys expire a second after its last append.
    let mut conn = conn.clone();
    for key in [wire::keys::stream_meta("one/len"), wire::keys::stream_log("one/len")] {
        let ttl: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut conn).await.expect("PTTL");
        assert_eq!(ttl, -2, "{key}: forgotten");
    }
    for key in [wire::keys::stream_meta("one/age/whole"), wire::keys::stream_log("one/age/whole")] {
        let ttl: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut conn).await.expect("PTTL");
        assert!((0..=1000).contains(&ttl), "{key}: {ttl}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_presence_meets_the_contract() {
    presence_contract(&servers::redis().redis_url(), "").await;
}

/// `run` names this run's users and nodes: the contract notes what every heartbeat in this
/// process returned, so runs on two servers at once must not share names.
async fn presence_contract(url: &str, run: &str) {
    let (one, two) = (format!("{run}one"), format!("{run}two"));
    let conn = redis_state::connect(url).await.expect("connect to redis-server");
    let presence = redis_state::RedisPresence::new(conn.clone());
    // Two runs at once, as edges sharing a Redis would: each reaps the other's dead node too.
    tokio::join!(
        broker::presence::contract::check(&presence, &one),
        broker::presence::contract::check(&presence, &two)
    );
    // What the contract cannot see: nothing is kept for users who are offline, and nodes that
    // were reaped are gone from the registry.
    let mut conn = conn.clone();
    let keys: Vec<String> = redis::cmd("KEYS").arg("hermes:presence:{*").query_async(&mut conn).await.expect("KEYS");
    assert!(keys.is_empty(), "{keys:?}");
    for (run, node, alive) in [(&one, "C", true), (&one, "E", false), (&two, "E", false), (&one, "D", true)] {
        let name = &format!("{run}:{node}");
        let score: Option<f64> = redis::cmd("ZSCORE")
            .arg(wire::keys::PRESENCE_NODES)
            .arg(name)
            .query_async(&mut conn)
            .await
            .expect("ZSCORE");
        assert_eq!(score.is_some(), alive, "{name}");
        let users: i64 =
            redis::cmd("SCARD").arg(wire::keys::presence_node(name)).query_async(&mut conn).await.expect("SCARD");
        assert_eq!(users, 0, "{name}: no devices left");
    }
    let ttls: Vec<(String, u64)> =
        redis::cmd("HGETALL").arg(wire::keys::PRESENCE_NODE_TTLS).query_async(&mut conn).await.expect("HGETALL");
    let mut ttls: Vec<(String, u64)> = ttls.into_iter().filter(|(n, _)| n.starts_with(&format!("{one}:"))).collect();
    ttls.sort();
    assert_eq!(ttls, [(format!("{one}:D"), 60_000)], "C was reaped, and came back without a heartbeat");

    // A dead node with more users than one run of the reaping script takes: reaped whole, each
    // user returned once.
    let n = 2 * redis_state::presence::REAP_BUDGET as usize + 500;
    let users: Vec<String> = (0..n).map(|i| format!("bulk/{i}")).collect();
    presence.heartbeat("bulk:dying", 300).await.expect("heartbeat");
    let sets = users.iter().map(|u| presence.set("bulk:dying", u, 1));
    assert!(futures_util::future::join_all(sets).await.iter().all(|r| *r == Ok((0, 1))));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut zero = presence.heartbeat("bulk:living", 60_000).await.expect("heartbeat");
    zero.sort_by_key(|u| u[5..].parse::<usize>().expect("a bulk user"));
    assert_eq!(zero, users, "every user once");
    assert_eq!(presence.heartbeat("bulk:living", 60_000).await, Ok(vec![]));
    let dying: Option<f64> = redis::cmd("ZSCORE")
        .arg(wire::keys::PRESENCE_NODES)
        .arg("bulk:dying")
        .query_async(&mut conn)
        .await
        .expect("ZSCORE");
    assert_eq!(dying, None, "gone from the registry");
    let keys: Vec<String> = redis::cmd("KEYS").arg("hermes:presence:{*").query_async(&mut conn).await.expect("KEYS");
    assert!(keys.is_empty(), "{} left", keys.len());
}

/// Short windows and lockouts, so the contract sees them end.
fn short_login_limits() -> broker::login::LoginLimits {
    broker::login::LoginLimits {
        attempts_per_ip: 4,
        attempts_per_account: 3,
        window: Duration::from_millis(500),
        failures_before_lockout: 3,
        lockout: Duration::from_millis(400),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_login_guard_meets_the_contract() {
    login_guard_contract(&servers::redis().redis_url()).await;
}

async fn login_guard_contract(url: &str) {
    let conn = redis_state::connect(url).await.expect("connect to redis-server");
    let limits = short_login_limits();
    broker::login::contract::check(&redis_state::RedisLoginGuard::new(conn.clone(), limits), "contract", limits).await;
    let unlimited = broker::login::LoginLimits {
        attempts_per_ip: 0,
        attempts_per_account: 0,
        failures_before_lockout: 0,
        ..limits
    };
    broker::login::contract::check_unlimited(&redis_state::RedisLoginGuard::new(conn.clone(), unlimited), "free").await;
    // What the contract cannot see: everything it wrote expires by itself.
    let keys: Vec<String> =
        redis::cmd("KEYS").arg("hermes:{login}:*").query_async(&mut conn.clone()).await.expect("KEYS");
    assert!(!keys.is_empty());
    for key in keys {
        let ttl: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut conn.clone()).await.expect("PTTL");
        assert!(ttl > 0, "{key}: {ttl}");
    }
}

/// Two accounts instances on one Redis (each its own connection) enforce one limit.
#[tokio::test(flavor = "multi_thread")]
async fn accounts_instances_on_one_redis_share_one_login_limit() {
    use broker::login::{LoginGuard, Throttled};
    let server = servers::redis();
    let limits = broker::login::LoginLimits { window: Duration::from_secs(60), ..short_login_limits() };
    let mut guards = Vec::new();
    for _ in 0..2 {
        let conn = redis_state::connect(&server.redis_url()).await.expect("connect to redis-server");
        guards.push(redis_state::RedisLoginGuard::new(conn, limits));
    }
    let (a, b) = (&guards[0], &guards[1]);
    let ip: std::net::IpAddr = "2001:db8::7".parse().expect("address");
    // Four attempts per address, taken on both.
    for (i, guard) in [a, b, a, b].into_iter().enumerate() {
        assert_eq!(guard.attempt(ip, &format!("acme/u{i}")).await, Ok(Ok(())));
    }
    for guard in [a, b] {
        match guard.attempt(ip, "acme/u9").await.expect("attempt") {
            Err(Throttled::Address { retry_after }) => {
                assert!(retry_after > Duration::from_secs(50) && retry_after <= Duration::from_secs(60))
            }
            other => panic!("{other:?}"),
        }
    }
    // Three attempts per account, concurrently on both: exactly three get through.
    let attempts = (0..8u8).map(|i| {
        let (guard, ip) = (guards[usize::from(i % 2)].clone(), std::net::IpAddr::from([192, 0, 2, i]));
        async move { guard.attempt(ip, "acme/alice").await.expect("attempt") }
    });
    let results = futures_util::future::join_all(attempts).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 3, "{results:?}");
    // Failures on both lock the account on both; a success on one clears them for the other.
    assert_eq!(a.failed("acme/bob").await, Ok(false));
    assert_eq!(b.failed("acme/bob").await, Ok(false));
    b.succeeded("acme/bob").await.expect("succeeded");
    assert_eq!(a.failed("acme/bob").await, Ok(false), "cleared");
    assert_eq!(b.failed("acme/bob").await, Ok(false));
    assert_eq!(a.failed("acme/bob").await, Ok(true), "the third in a row, on either");
    let other_ip = std::net::IpAddr::from([192, 0, 2, 100]);
    assert!(matches!(b.attempt(other_ip, "acme/bob").await, Ok(Err(Throttled::Account { .. }))));
}

#[tokio::test(flavor = "multi_thread")]
async fn edges_load_relations_from_redis_at_connect() {
    let server = servers::redis();
    let url = server.redis_url();
    // What the accounts tier wrote: alice and bob are friends.
    let dir = redis_state::RedisRelations::connect(&url).await.expect("connect");
    dir.set_follow("acme", "alice", "bob", true).await.expect("write");
    dir.set_follow("acme", "bob", "alice", true).await.expect("write");
    let signer = Signer::generate().expect("keys");
    let public = signer.verifier().to_paserk();
    let edge = TestEdge::start_with(|c| {
        c.auth.token_public_key = public;
        c.state.redis_url = url;
    })
    .await;
    let token = |user: &str| access_token(&signer, user, Duration::from_secs(60));
    let (mut bob, _) =
        edge.connect(Version::V311, Connect { password: Some(token("bob")), ..connect("bob", true) }).await;
    let (mut alice, _) =
        edge.connect(Version::V5, Connect { password: Some(token("alice")), ..connect("alice", true) }).await;
    // The edge never saw an event: the friendship came from Redis at CONNECT.
    let pres = expect_publish(&mut alice).await;
    assert_eq!((pres.topic.as_str(), &pres.payload[..]), ("acme/im/pres/bob", &b"online"[..]));
    bob.publish("acme/im/sig/bob", b"from redis", 0, true, WAIT).await.expect("publish");
    assert_eq!(&expect_publish(&mut alice).await.payload[..], b"from redis");
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn account_events_reach_the_edge_over_nats() {
    account_events_reach_the_edge_on(servers::nats()).await;
}

/// Without JetStream the edge still follows events as they come (and says what it cannot do).
#[tokio::test(flavor = "multi_thread")]
async fn account_events_reach_the_edge_over_nats_without_jetstream() {
    account_events_reach_the_edge_on(servers::nats_core_only()).await;
}

async fn account_events_reach_the_edge_on(server: servers::ServerProcess) {
    let signer = Signer::generate().expect("keys");
    let public = signer.verifier().to_paserk();
    let edge = TestEdge::start_with(|c| c.auth.token_public_key = public).await;
    let edge_side = bus::nats::NatsBus::connect(&server.nats_url()).await.expect("connect");
    edge.edge().account_events().follow(&edge_side).await.expect("subscribe");
    let token = access_token(&signer, "alice", Duration::from_secs(60));
    let (mut alice, _) = edge.connect(Version::V5, Connect { password: Some(token), ..connect("alice", true) }).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    // Another process (the accounts tier) on its own connection.
    let accounts_side = bus::nats::NatsBus::connect(&server.nats_url()).await.expect("connect");
    publish_event(&accounts_side, &revoked_now("alice")).await.expect("publish");
    assert_eq!(expect_disconnect(&mut alice).await, 0x98);
    edge.stop().await;
}

/// NATS restarts without its store. The account-events stream is made again by the first to
/// need it, and an edge reads the new stream from its start: an event published there before
/// the edge noticed (a revocation) is not skipped because the old stream had gone further.
#[tokio::test(flavor = "multi_thread")]
async fn an_edge_follows_account_events_into_a_stream_nats_made_again() {
    let mut server = servers::nats();
    let signer = Signer::generate().expect("keys");
    let public = signer.verifier().to_paserk();
    let edge = TestEdge::start_with(|c| c.auth.token_public_key = public).await;
    let edge_side = bus::nats::NatsBus::connect(&server.nats_url()).await.expect("connect");
    edge.edge().account_events().follow(&edge_side).await.expect("subscribe");
    let accounts_side = bus::nats::NatsBus::connect(&server.nats_url()).await.expect("connect");
    let mut clients = Vec::new();
    for user in ["alice", "bob"] {
        let token = access_token(&signer, user, Duration::from_secs(600));
        clients.push(edge.connect(Version::V5, Connect { password: Some(token), ..connect(user, true) }).await.0);
    }
    let [mut alice, mut bob] = clients.try_into().expect("two");
    tokio::time::sleep(Duration::from_millis(5)).await;
    // The old stream goes to sequence 6; the edge has read all of it once bob is gone.
    for _ in 0..5 {
        let mut other = revoked_now("carol");
        other.enterprise_id = "globex".into();
        publish_event(&accounts_side, &other).await.expect("publish");
    }
    publish_event(&accounts_side, &revoked_now("bob")).await.expect("publish");
    assert_eq!(expect_disconnect(&mut bob).await, 0x98);

    let _again = servers::nats_again(&mut server);
    // The accounts tier publishes as soon as it can: the revocation is the new stream's first.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while let Err(e) = publish_event(&accounts_side, &revoked_now("alice")).await {
        assert!(std::time::Instant::now() < deadline, "never published to the new NATS: {e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    match alice.recv(Duration::from_secs(60)).await {
        Ok(sdk::mqtt::Packet::Disconnect { code, .. }) => assert_eq!(code, 0x98),
        other => panic!("the revocation in the stream made again never reached the edge: {other:?}"),
    }
    edge.stop().await;
}

/// An edge cut off from NATS misses a revocation and a new friendship for good: NATS restarts
/// without its store (JetStream), or keeps nothing at all (core NATS). Once back, the edge
/// reads the revocations (and tables) the accounts tier also keeps in Redis again, and closes
/// the revoked device; and the relations of its connected users, so the new friends see each
/// other's presence.
#[tokio::test(flavor = "multi_thread")]
async fn an_edge_that_missed_account_events_for_good_reads_revocations_from_redis_again() {
    for jetstream in [true, false] {
        let mut nats = if jetstream { servers::nats() } else { servers::nats_core_only() };
        let redis = servers::redis();
        let proxy = hermes_tests::proxy::Proxy::start(nats.addr).await;
        let signer = Signer::generate().expect("keys");
        let public = signer.verifier().to_paserk();
        let redis_url = redis.redis_url();
        let edge = TestEdge::start_with(|c| {
            c.auth.token_public_key = public;
            c.state.redis_url = redis_url;
        })
        .await;
        let edge_side = bus::nats::NatsBus::connect(&format!("nats://{}", proxy.addr)).await.expect("connect");
        edge.edge().account_events().follow(&edge_side).await.expect("subscribe");
        let accounts_side = bus::nats::NatsBus::connect(&nats.nats_url()).await.expect("connect");
        let mut clients = Vec::new();
        for user in ["alice", "bob", "dave"] {
            let token = access_token(&signer, user, Duration::from_secs(600));
            clients.push(edge.connect(Version::V5, Connect { password: Some(token), ..connect(user, true) }).await.0);
        }
        let [mut alice, mut bob, _dave] = clients.try_into().expect("three");
        // The edge has read the stream past its start.
        publish_event(&accounts_side, &revoked_now("carol")).await.expect("publish");
        tokio::time::sleep(Duration::from_millis(300)).await;
        proxy.cut();
        tokio::time::sleep(Duration::from_millis(300)).await;
        // What the accounts tier does: Redis, then the event.
        let access = redis_state::RedisAccess::connect(&redis.redis_url()).await.expect("connect");
        let now = now_ms();
        let revoked = broker::access::Revocation {
            enterprise: "acme".into(),
            user_id: "id-alice".into(),
            before_ms: now,
            session: String::new(),
        };
        broker::access::AccessDirectory::save_revocation(&access, &revoked).await.expect("saved");
        publish_event(&accounts_side, &revoked_now("alice")).await.expect("publish");
        let relations = redis_state::RedisRelations::connect(&redis.redis_url()).await.expect("connect");
        for (a, b) in [("bob", "dave"), ("dave", "bob")] {
            broker::relations::RelationDirectory::set_follow(&relations, "acme", a, b, true).await.expect("saved");
        }
        expect_nothing(&mut alice).await;
        expect_nothing(&mut bob).await;
        let _again = jetstream.then(|| servers::nats_again(&mut nats));
        proxy.restore();
        match alice.recv(Duration::from_secs(60)).await {
            Ok(sdk::mqtt::Packet::Disconnect { code, .. }) => assert_eq!(code, 0x98, "jetstream {jetstream}"),
            other => panic!("jetstream {jetstream}: the missed revocation never applied: {other:?}"),
        }
        // Friends now: bob is auto-subscribed to dave's presence (retained "online").
        let presence = expect_publish(&mut bob).await;
        assert_eq!((presence.topic.as_str(), &presence.payload[..]), ("acme/im/pres/dave", &b"online"[..]));
        edge.stop().await;
    }
}

/// Relation events are read from Redis on an edge that has it: an older event that arrives
/// late (another accounts node's, tried again) does not undo the newer state Redis holds.
#[tokio::test(flavor = "multi_thread")]
async fn a_late_relation_event_does_not_undo_what_redis_holds() {
    use broker::relations::RelationDirectory;
    use bus::Bus;
    let redis = servers::redis();
    let signer = Signer::generate().expect("keys");
    let public = signer.verifier().to_paserk();
    let redis_url = redis.redis_url();
    let edge = TestEdge::start_with(|c| {
        c.auth.token_public_key = public;
        c.state.redis_url = redis_url;
    })
    .await;
    let bus = bus::memory::MemoryBus::default();
    edge.edge().account_events().follow(&bus).await.expect("subscribe");
    let relations = redis_state::RedisRelations::connect(&redis.redis_url()).await.expect("connect");
    let mut clients = Vec::new();
    for user in ["bob", "dave"] {
        let token = access_token(&signer, user, Duration::from_secs(600));
        clients.push(edge.connect(Version::V5, Connect { password: Some(token), ..connect(user, true) }).await.0);
    }
    let [mut bob, mut dave] = clients.try_into().expect("two");
    // Not friends yet.
    let codes = bob.subscribe(vec![sdk::mqtt::SubscribeTopic::new("acme/im/sig/dave", 0)], WAIT).await.expect("suback");
    assert_eq!(codes, vec![0x87]);
    let change = |follower: &str, followee: &str, following: bool| wire::pb::AccountEvent {
        enterprise_id: "acme".into(),
        event: Some(wire::pb::account_event::Event::RelationChanged(wire::pb::RelationChanged {
            follower: follower.into(),
            followee: followee.into(),
            following,
        })),
        ..Default::default()
    };
    let emit = async |event: wire::pb::AccountEvent| {
        use prost::Message as _;
        bus.publish(&wire::subjects::account_events("acme"), event.encode_to_vec().into()).await.expect("publish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Dave unfollowed bob, then followed him again: Redis holds the last, and events came for
    // both, the unfollow last (late).
    for (a, b) in [("bob", "dave"), ("dave", "bob")] {
        relations.set_follow("acme", a, b, true).await.expect("saved");
    }
    emit(change("bob", "dave", true)).await;
    emit(change("dave", "bob", true)).await;
    emit(change("dave", "bob", false)).await;
    // Still followed by dave: bob may read dave's signature.
    assert_eq!(expect_publish(&mut bob).await.topic, "acme/im/pres/dave", "friends: told dave is online");
    assert_eq!(expect_publish(&mut dave).await.topic, "acme/im/pres/bob");
    let codes = bob.subscribe(vec![sdk::mqtt::SubscribeTopic::new("acme/im/sig/dave", 0)], WAIT).await.expect("suback");
    assert_eq!(codes, vec![0], "the late unfollow was not taken for the truth");
    // Redis says they are not friends any more: the next event, whatever it says, follows it.
    relations.set_follow("acme", "dave", "bob", false).await.expect("saved");
    emit(change("dave", "bob", true)).await;
    let codes = bob.subscribe(vec![sdk::mqtt::SubscribeTopic::new("acme/im/sig/dave", 0)], WAIT).await.expect("suback");
    assert_eq!(codes, vec![0x87], "Redis says dave no longer follows bob");
    edge.stop().await;
}

/// Publishes `event` as the accounts tier does: kept in the account-events stream.
async fn publish_event(bus: &dyn bus::Bus, event: &wire::pb::AccountEvent) -> Result<(), bus::BusError> {
    use prost::Message as _;
    let (stream, all) = (wire::subjects::ACCOUNT_EVENTS_STREAM, wire::subjects::ALL_ACCOUNT_EVENTS);
    let subject = wire::subjects::account_events(&event.enterprise_id);
    bus.publish_durable(stream, all, &subject, event.encode_to_vec().into()).await
}

/// A NATS bus says when its connection is lost and when it is back, with an outage that begins
/// early enough to cover what its subscriptions may have missed; the in-process bus never does.
#[tokio::test(flavor = "multi_thread")]
async fn a_nats_bus_reports_each_loss_and_return_of_its_connection() {
    use bus::{Bus, Link};
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as u64;
    let server = servers::nats();
    let proxy = hermes_tests::proxy::Proxy::start(server.addr).await;
    let bus = bus::nats::NatsBus::connect(&format!("nats://{}", proxy.addr)).await.expect("connect");
    let mut changes = bus.link_changes();
    assert_eq!(*changes.borrow_and_update(), None, "connected: nothing yet");
    let next = async |changes: &mut tokio::sync::watch::Receiver<Option<Link>>| {
        tokio::time::timeout(Duration::from_secs(30), changes.changed()).await.expect("a change").expect("alive");
        changes.borrow_and_update().expect("a link state")
    };
    for _ in 0..2 {
        let cut_at = now();
        proxy.cut();
        match next(&mut changes).await {
            Link::Lost { at_ms } => assert!(at_ms >= cut_at && at_ms <= now(), "{at_ms} vs {cut_at}"),
            other => panic!("expected a loss: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!changes.has_changed().expect("the bus is alive"), "not back yet");
        proxy.restore();
        match next(&mut changes).await {
            Link::Back(outage) => {
                assert!(outage.from_ms + 30_000 <= cut_at + 1_000, "covers what may have gone unnoticed: {outage:?}");
                assert!(outage.to_ms >= cut_at + 300 && outage.to_ms <= now(), "{outage:?}");
            }
            other => panic!("expected the return: {other:?}"),
        }
    }
    let memory = bus::memory::MemoryBus::default();
    assert!(memory.link_changes().changed().await.is_err(), "never cut off");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_edge_cut_off_from_nats_catches_up_on_account_events_when_it_is_back() {
    let server = servers::nats();
    let proxy = hermes_tests::proxy::Proxy::start(server.addr).await;
    let signer = Signer::generate().expect("keys");
    let public = signer.verifier().to_paserk();
    let edge = TestEdge::start_with(|c| c.auth.token_public_key = public).await;
    // The edge reaches NATS through a proxy the test can cut; the accounts tier directly.
    let edge_side = bus::nats::NatsBus::connect(&format!("nats://{}", proxy.addr)).await.expect("connect");
    edge.edge().account_events().follow(&edge_side).await.expect("subscribe");
    let accounts_side = bus::nats::NatsBus::connect(&server.nats_url()).await.expect("connect");
    let token = access_token(&signer, "alice", Duration::from_secs(600));
    let (mut alice, _) = edge.connect(Version::V5, Connect { password: Some(token), ..connect("alice", true) }).await;
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(300)).await;
    publish_event(&accounts_side, &revoked_now("alice")).await.expect("publish while the edge is away");
    // Cut off, the edge cannot know yet.
    expect_nothing(&mut alice).await;
    // A longer outage: the server forgets the edge's consumer (after 30 s without a pull).
    use futures_util::StreamExt as _;
    let js = async_nats::jetstream::new(async_nats::connect(server.nats_url()).await.expect("connect"));
    let stream = js.get_stream(wire::subjects::ACCOUNT_EVENTS_STREAM).await.expect("the stream");
    let names: Vec<String> = stream.consumer_names().map(|n| n.expect("a name")).collect().await;
    for name in &names {
        stream.delete_consumer(name).await.expect("deleted");
    }
    proxy.restore();
    let started = std::time::Instant::now();
    match alice.recv(Duration::from_secs(60)).await {
        Ok(sdk::mqtt::Packet::Disconnect { code, .. }) => assert_eq!(code, 0x98),
        other => panic!("the revocation never reached the edge after it came back: {other:?}"),
    }
    let took = started.elapsed();
    eprintln!("caught up {took:?} after the bus came back");
    // Not two missed heartbeats (15 s each) later: a consumer is made again when the link is back.
    assert!(took < Duration::from_secs(10), "{took:?}");
    edge.stop().await;
}

#[tokio::test]
async fn redis_access_directory_meets_the_contract() {
    access_directory_contract(&servers::redis().redis_url()).await;
}

async fn access_directory_contract(url: &str) {
    let dir = redis_state::RedisAccess::connect(url).await.expect("connect to redis-server");
    broker::access::contract::check(&dir, "contract-").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_edge_that_starts_later_knows_revocations_and_tables_from_redis() {
    use broker::access::{AccessDirectory, Revocation, Tables};
    let server = servers::redis();
    let url = server.redis_url();
    let signer = Signer::generate().expect("keys");
    let old_token = access_token(&signer, "alice", Duration::from_secs(60));
    tokio::time::sleep(Duration::from_millis(5)).await;
    // What the accounts tier wrote while this edge was down.
    let access = redis_state::RedisAccess::connect(&url).await.expect("connect");
    let now = now_ms();
    let revoked =
        Revocation { enterprise: "acme".into(), user_id: "id-alice".into(), before_ms: now, session: String::new() };
    access.save_revocation(&revoked).await.expect("write");
    let tables = Tables { version: 4, acl_rules: "pattern readwrite %e/team/#".into(), auto_subscribe: String::new() };
    access.save_tables("acme", &tables).await.expect("write");

    let public = signer.verifier().to_paserk();
    let edge = TestEdge::start_with(|c| {
        c.auth.token_public_key = public;
        c.state.redis_url = url;
    })
    .await;
    let mut c = edge.raw(Version::V5).await;
    let refused = c.handshake(Connect { password: Some(old_token), ..connect("alice", true) }, WAIT).await;
    assert!(matches!(refused, Ok(sdk::mqtt::Packet::ConnAck { code: 0x87, .. })), "{refused:?}");
    let token = access_token(&signer, "bob", Duration::from_secs(60));
    let (mut bob, _) = edge.connect(Version::V5, Connect { password: Some(token), ..connect("bob", true) }).await;
    let codes = bob
        .subscribe(
            vec![sdk::mqtt::SubscribeTopic::new("acme/team/x", 0), sdk::mqtt::SubscribeTopic::new("acme/notice/#", 0)],
            WAIT,
        )
        .await
        .expect("suback");
    assert_eq!(codes, vec![0, 0x87], "acme's own tables apply");
    edge.stop().await;
}

/// What the accounts tier publishes when `user`'s tokens (at acme) are revoked, now.
fn revoked_now(user: &str) -> wire::pb::AccountEvent {
    let now = now_ms();
    let revoked = wire::pb::TokenRevoked {
        user_id: format!("id-{user}"),
        username: user.into(),
        issued_before_ms: now,
        ..Default::default()
    };
    wire::pb::AccountEvent {
        enterprise_id: "acme".into(),
        timestamp_ms: now,
        event: Some(wire::pb::account_event::Event::TokenRevoked(revoked)),
        ..Default::default()
    }
}

/// A primary of a Redis Cluster dies: its replica takes over, and the session journal writes
/// again without anything restarting (the client learns the new primary). What was written
/// before is there (replicated in the meantime: Redis replicates after it answers).
#[tokio::test(flavor = "multi_thread")]
async fn a_journal_on_a_redis_cluster_writes_again_once_a_replica_took_over_a_dead_primary() {
    use broker::journal::{SessionJournal, Write};
    let mut cluster = servers::redis_cluster_with(3, 1);
    let conn = redis_state::connect(&cluster.url()).await.expect("connect to the cluster");
    let journal = redis_state::RedisJournal::new(conn);
    // Sessions on every primary's slots.
    let sessions: Vec<std::sync::Arc<str>> = (0..30).map(|i| format!("failover/{i}").into()).collect();
    let records = |round: u8| -> Vec<Write> {
        let record =
            |s: &std::sync::Arc<str>| Write::Record { session: s.clone(), record: vec![round], ttl_secs: None };
        sessions.iter().map(record).collect()
    };
    let mut first = records(1);
    first.extend(sessions.iter().map(|s| Write::Message { session: s.clone(), entry: 7, body: b"kept".to_vec() }));
    journal.write(&first).await.expect("written");
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.nodes[0].kill();
    let started = std::time::Instant::now();
    while let Err(e) = journal.write(&records(2)).await {
        assert!(started.elapsed() < Duration::from_secs(30), "never wrote again: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("wrote again {:?} after the primary died", started.elapsed());
    for s in &sessions {
        let stored = journal.load(s).await.expect("loads").expect("kept");
        assert_eq!(stored.record, [2], "{s}");
        assert_eq!(stored.messages, [(7, b"kept".to_vec())], "{s}: written before the primary died");
    }
}

/// With `state.redis_wait_replicas`, a journal write and a stream append count only once that
/// many replicas of every primary written to have them: the PUBLISH they carry is not
/// acknowledged before. Asked for more than there are, they fail within the wait; so do they on
/// one Redis without a replica.
#[tokio::test(flavor = "multi_thread")]
async fn writes_that_wait_for_replicas_count_only_once_every_primary_written_to_has_them() {
    use broker::journal::{SessionJournal, Write};
    use broker::streams::{Append, StreamStore};
    use redis_state::{RedisJournal, RedisStreams, Replicas};
    let retention = broker::streams::contract::RETENTION;
    let cluster = servers::redis_cluster_with(3, 1);
    let conn = redis_state::connect(&cluster.url()).await.expect("connect to the cluster");
    // Sessions and streams on every primary's slots.
    let writes: Vec<Write> = (0..30)
        .map(|i| Write::Record { session: format!("wait/{i}").into(), record: vec![1], ttl_secs: None })
        .collect();
    let appends: Vec<Append> =
        (0..30).map(|i| Append { stream: format!("wait/{i}").into(), at_ms: 1, body: b"m".to_vec() }).collect();
    let journal = |n| RedisJournal::new(conn.clone()).waiting_for(Replicas(n));
    let streams = |n| RedisStreams::new(conn.clone(), retention).waiting_for(Replicas(n));
    assert_eq!(Replicas(1).short_on(&conn).await, Ok(None), "every primary has one");
    assert_eq!(Replicas(2).short_on(&conn).await, Ok(Some(1)), "none has two");
    journal(1).write(&writes).await.expect("every primary's replica has them");
    assert_eq!(streams(1).append(&appends).await.expect("appended").len(), 30);

    let started = std::time::Instant::now();
    let e = journal(2).write(&writes).await.expect_err("no primary has two replicas");
    assert!(e.contains("1 of the 2 replica(s)"), "{e}");
    let e = streams(2).append(&appends).await.expect_err("no primary has two replicas");
    assert!(e.contains("1 of the 2 replica(s)"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(3), "each waits at most {:?}", redis_state::conn::REPLICA_WAIT);

    // (That the least node's answer counts is `conn`'s unit test: which node is whose replica
    // can change under a loaded machine, the cluster's node timeout being a second.)

    // One Redis without replicas.
    let single = servers::redis();
    let conn = redis_state::connect(&single.redis_url()).await.expect("connect");
    assert_eq!(Replicas(1).short_on(&conn).await, Ok(Some(0)));
    assert_eq!(Replicas(0).short_on(&conn).await, Ok(None));
    let e = RedisJournal::new(conn.clone()).waiting_for(Replicas(1)).write(&writes).await.expect_err("no replica");
    assert!(e.contains("0 of the 1 replica(s)"), "{e}");
    RedisJournal::new(conn).write(&writes).await.expect("written");
}

/// Every Redis contract in module `$name`, on the Redis whose `state.redis_url` `$url` gives
/// (the server it starts lives for the test); presence runs as `$run`.
macro_rules! redis_contracts {
    ($name:ident, $url:expr, $run:literal) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread")]
            async fn relation_directory() {
                relation_directory_contract(&$url).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn session_owners() {
                session_owners_contract(&$url).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn session_journal() {
                session_journal_contract(&$url).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn streams() {
                streams_contract(&$url).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn presence() {
                presence_contract(&$url, $run).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn login_guard() {
                login_guard_contract(&$url).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn access_directory() {
                access_directory_contract(&$url).await;
            }
        }
    };
}

// The same contracts on a Redis Cluster of three primaries (`servers::redis_cluster`), through
// the cluster client (`redis+cluster://`): pipelines over several slots go per slot.
redis_contracts!(on_a_redis_cluster, servers::redis_cluster(3).url(), "cluster3-");

// The same contracts on a Redis in cluster mode, alone with every slot
// (`servers::redis_cluster_node`): every transaction and script of ours keeps to one hash slot,
// so the key layout holds on Redis Cluster.
redis_contracts!(on_a_redis_cluster_node, servers::redis_cluster_node().redis_url(), "cluster-");

/// Unix time in milliseconds, as account events and revocations carry it.
fn now_ms() -> i64 {
    std::time::UNIX_EPOCH.elapsed().map_or(0, |d| d.as_millis() as i64)
}
