//! Test harness: starts the real edge in-process on port 0 with isolated state, plus an MQTT
//! test vocabulary (`expect_connack`, `expect_publish`, `expect_nothing`) over the SDK's raw client.

pub mod process;
pub mod proxy;
pub mod servers;
pub mod slow;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mqtt_edge::{Edge, EdgeConfig};
use sdk::mqtt::{Client, Connect, Packet, Publish, RecvError, Version};

/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long a test waits to be sure something does not happen.
pub const QUIET: Duration = Duration::from_millis(300);

/// Where clustered edges record which of them holds each session.
pub type Owners = Arc<dyn broker::owners::SessionOwners>;

/// An edge running in this process on ephemeral loopback ports, with TLS and WebSocket.
#[derive(Debug)]
pub struct TestEdge {
    edge: Option<Edge>,
    pub tcp: SocketAddr,
    pub ws: SocketAddr,
    pub tls: SocketAddr,
    /// PEM of the self-signed certificate (for `localhost` and 127.0.0.1) the TLS listener uses.
    pub ca_file: PathBuf,
    pub dir: PathBuf,
}

fn unique_dir() -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("hermes-test-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create test dir");
    dir
}

/// `HERMES_TEST_LOG=<filter>` (e.g. `info`, `mqtt_edge=debug`) prints the edges' logs with
/// each test's output, shown when it fails.
fn log_if_asked() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    if let Ok(filter) = std::env::var("HERMES_TEST_LOG") {
        ONCE.call_once(|| {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        });
    }
}

impl TestEdge {
    /// Anonymous access on, `$SYS` every second, everything else at its default.
    pub async fn start() -> TestEdge {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut EdgeConfig)) -> TestEdge {
        Self::start_on(None, adjust).await
    }

    /// An edge that routes to and from the other edges on `bus`; sessions move between the
    /// edges sharing `owners` (or the Redis of `state.redis_url`).
    pub async fn start_clustered(
        bus: Arc<dyn bus::Bus>,
        owners: Option<Owners>,
        adjust: impl FnOnce(&mut EdgeConfig),
    ) -> TestEdge {
        Self::start_on(Some((bus, owners)), adjust).await
    }

    /// An edge whose durable streams (and dead letters) are kept in `store`.
    pub async fn start_with_streams(
        store: Arc<dyn broker::streams::StreamStore>,
        adjust: impl FnOnce(&mut EdgeConfig),
    ) -> TestEdge {
        Self::start_full(None, Some(store), None, adjust).await
    }

    /// [`TestEdge::start_clustered`] with its persistent sessions in `journal` (shared by the
    /// edges of one process, as Redis is by edges apart): a dead or stopped edge's sessions are
    /// taken by another.
    pub async fn start_journaled(
        bus: Arc<dyn bus::Bus>,
        owners: Owners,
        journal: Arc<dyn broker::journal::SessionJournal>,
        adjust: impl FnOnce(&mut EdgeConfig),
    ) -> TestEdge {
        Self::start_full(Some((bus, Some(owners))), None, Some(journal), adjust).await
    }

    async fn start_on(
        cluster: Option<(Arc<dyn bus::Bus>, Option<Owners>)>,
        adjust: impl FnOnce(&mut EdgeConfig),
    ) -> TestEdge {
        Self::start_full(cluster, None, None, adjust).await
    }

    async fn start_full(
        cluster: Option<(Arc<dyn bus::Bus>, Option<Owners>)>,
        streams: Option<Arc<dyn broker::streams::StreamStore>>,
        journal: Option<Arc<dyn broker::journal::SessionJournal>>,
        adjust: impl FnOnce(&mut EdgeConfig),
    ) -> TestEdge {
        log_if_asked();
        count_edge_panics();
        let dir = unique_dir();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("self-signed certificate");
        let ca_file = dir.join("cert.pem");
        let key_file = dir.join("key.pem");
        std::fs::write(&ca_file, cert.cert.pem()).expect("write cert");
        std::fs::write(&key_file, cert.signing_key.serialize_pem()).expect("write key");
        let mut cfg = EdgeConfig::default();
        cfg.mqtt.addr = "127.0.0.1:0".into();
        cfg.mqtt.ws_addr = "127.0.0.1:0".into();
        cfg.mqtt.tls_addr = "127.0.0.1:0".into();
        cfg.mqtt.tls_cert = ca_file.display().to_string();
        cfg.mqtt.tls_key = key_file.display().to_string();
        cfg.mqtt.workers = 2;
        cfg.mqtt.sys_interval_secs = 1;
        cfg.auth.allow_anonymous = true;
        cfg.ops.addr = String::new();
        // Presence at once, so tests see each change without waiting out a grace.
        cfg.limits.presence_grace_secs = 0;
        adjust(&mut cfg);
        let state = mqtt_edge::state_directories(&cfg.state).await.expect("state directories");
        let mut builder = Edge::builder(cfg).state(state.as_ref());
        if let Some(store) = streams {
            builder = builder.streams(store);
        }
        if let Some(journal) = journal {
            builder = builder.journal(journal);
        }
        if let Some((bus, owners)) = cluster {
            builder = builder.cluster(bus);
            if let Some(o) = owners {
                builder = builder.session_owners(o);
            }
        }
        let edge = builder.start().await.expect("edge starts");
        let a = edge.addrs().clone();
        TestEdge {
            tcp: a.mqtt.expect("tcp listener"),
            ws: a.mqtt_ws.expect("ws listener"),
            tls: a.mqtt_tls.expect("tls listener"),
            edge: Some(edge),
            ca_file,
            dir,
        }
    }

    pub fn edge(&self) -> &Edge {
        self.edge.as_ref().expect("edge running")
    }

    /// A TCP connection with no CONNECT sent yet.
    pub async fn raw(&self, version: Version) -> Client {
        Client::connect_tcp(self.tcp, version).await.expect("tcp connect")
    }

    /// A TCP connection from `source` (a loopback address of its own: failed authentication
    /// slows down the address it came from), with no CONNECT sent yet.
    pub async fn raw_from(&self, source: [u8; 4], version: Version) -> Client {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind(SocketAddr::from((source, 0))).expect("bind");
        Client::from_stream(socket.connect(self.tcp).await.expect("connect"), version)
    }

    /// A connected client; panics unless the CONNACK accepts it.
    pub async fn connect(&self, version: Version, connect: Connect) -> (Client, bool) {
        let mut c = self.raw(version).await;
        let ack = c.handshake(connect, WAIT).await.expect("CONNACK");
        match ack {
            Packet::ConnAck { session_present, code: 0, .. } => (c, session_present),
            other => panic!("connect refused: {other:?}"),
        }
    }

    /// A clean-session client with the given id.
    pub async fn client(&self, version: Version, id: &str) -> Client {
        self.connect(version, connect(id, true)).await.0
    }

    pub async fn stop(mut self) {
        if let Some(e) = self.edge.take() {
            e.stop().await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A CONNECT with keep-alive 60 and no credentials.
pub fn connect(id: &str, clean: bool) -> Connect {
    Connect { client_id: id.into(), clean_start: clean, keep_alive: 60, ..Connect::default() }
}

/// Waits for the next packet and requires a PUBLISH.
pub async fn expect_publish(c: &mut Client) -> Publish {
    match c.recv(WAIT).await {
        Ok(Packet::Publish(p)) => p,
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

/// Requires that nothing arrives for [`QUIET`].
pub async fn expect_nothing(c: &mut Client) {
    match c.recv(QUIET).await {
        Err(RecvError::Timeout) => {}
        other => panic!("expected nothing, got {other:?}"),
    }
}

/// Waits for a DISCONNECT (v5) and returns its reason code.
pub async fn expect_disconnect(c: &mut Client) -> u8 {
    loop {
        match c.recv(WAIT).await {
            Ok(Packet::Disconnect { code, .. }) => return code,
            Ok(Packet::Publish(_)) => continue,
            other => panic!("expected DISCONNECT, got {other:?}"),
        }
    }
}

/// Acknowledges a received QoS 1/2 PUBLISH the way a client must.
pub async fn ack(c: &mut Client, p: &Publish) {
    let Some(id) = p.packet_id else { return };
    match p.qos {
        1 => c.send(&Packet::PubAck { packet_id: id, code: 0 }).await.expect("send PUBACK"),
        2 => {
            c.send(&Packet::PubRec { packet_id: id, code: 0 }).await.expect("send PUBREC");
            match c.recv(WAIT).await {
                Ok(Packet::PubRel { packet_id, .. }) if packet_id == id => {}
                other => panic!("expected PUBREL {id}, got {other:?}"),
            }
            c.send(&Packet::PubComp { packet_id: id, code: 0 }).await.expect("send PUBCOMP");
        }
        _ => {}
    }
}

/// Finds an external tool the interoperability tests need, or fails with how to get it.
pub fn require_tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("`{name}` is not installed: run scripts/test.sh, which installs the test dependencies");
}

/// Runs a command with a deadline; returns (exit success, stdout, stderr).
pub async fn run_tool(cmd: &mut tokio::process::Command, deadline: Duration) -> (bool, String, String) {
    cmd.kill_on_drop(true);
    let out = tokio::time::timeout(deadline, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{cmd:?} did not finish within {deadline:?}"))
        .expect("spawn tool");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An access token for `user` of enterprise `acme` (user id `id-<user>`), issued now.
pub fn access_token(signer: &wire::token::Signer, user: &str, ttl: Duration) -> Vec<u8> {
    access_token_in(signer, "acme", user, ttl)
}

/// An access token for `user` of `enterprise` (user id `id-<user>`), issued now.
pub fn access_token_in(signer: &wire::token::Signer, enterprise: &str, user: &str, ttl: Duration) -> Vec<u8> {
    let claims = wire::token::AccessClaims {
        user_id: format!("id-{user}"),
        enterprise_id: enterprise.into(),
        username: user.into(),
        token_id: format!("t-{user}"),
        session_id: format!("s-{user}"),
        issued_at_ms: std::time::UNIX_EPOCH.elapsed().map_or(0, |d| d.as_millis() as i64),
    };
    signer.sign(&claims, ttl).expect("sign").into_bytes()
}

/// Whether `ready` (an edge's readiness) answers `want` (ready or not) within `within`.
pub async fn readiness_becomes(ready: &impl Fn() -> Result<(), String>, want: bool, within: Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    while ready().is_ok() != want && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ready().is_ok() == want
}

/// Panics on threads other than the tests' own (the edge's workers), as a panic hook notes
/// them: where, on which thread, and why.
static EDGE_PANICS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Installs (once) a panic hook that notes panics on the edge's threads: a connection handler
/// that panics is a defect even when ntex-mqtt survives it.
pub fn count_edge_panics() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // Test threads are named after their test (`module::name`).
            let thread = std::thread::current();
            let on_test_thread = thread.name().is_some_and(|n| n.contains("::") || n == "main");
            if !on_test_thread {
                let noted = format!("thread {:?}: {info}", thread.name().unwrap_or("?"));
                EDGE_PANICS.lock().unwrap_or_else(|e| e.into_inner()).push(noted);
            }
            default(info);
        }));
    });
}

/// The panics noted on the edge's threads since [`count_edge_panics`] was first called (in
/// this process: any test's edges).
pub fn edge_panics() -> Vec<String> {
    EDGE_PANICS.lock().unwrap_or_else(|e| e.into_inner()).clone()
}
