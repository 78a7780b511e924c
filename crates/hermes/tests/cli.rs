//! The `hermes` binary as a user runs it: `up` prints its endpoints and serves MQTT, SIGTERM
//! tells clients why and exits 0; configuration layering and errors; `bench` reports JSON.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hermes_tests::process::{Running, exit_status, sigterm};
use hermes_tests::servers::free_port;
use sdk::mqtt::{Client, Connect, Packet, Version};

const HERMES: &str = env!("CARGO_BIN_EXE_hermes");

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("hermes-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// Starts `hermes up` on ephemeral ports; returns the child and its MQTT address.
fn up(extra: &[&str]) -> (Running, SocketAddr) {
    let (child, mqtt, _) = up_with_http(extra);
    (child, mqtt)
}

/// Like [`up`], also returning the accounts API address.
fn up_with_http(extra: &[&str]) -> (Running, SocketAddr, SocketAddr) {
    up_with_env(extra, &[])
}

fn up_with_env(extra: &[&str], env: &[(&str, &str)]) -> (Running, SocketAddr, SocketAddr) {
    let (child, mqtt, http, _) = up_with_admin(extra, env);
    (child, mqtt, http)
}

/// Like [`up_with_http`], also returning the admin key it printed.
fn up_with_admin(extra: &[&str], env: &[(&str, &str)]) -> (Running, SocketAddr, SocketAddr, String) {
    static RUN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let data = temp_dir(&format!("up-{}", RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
    let up = up_in(&data, extra, env);
    (up.child, up.mqtt, up.http, up.admin)
}

/// A running `hermes up` and what it printed until it was ready (logs go to standard output).
struct Up {
    child: Running,
    mqtt: SocketAddr,
    http: SocketAddr,
    admin: String,
    printed: Vec<String>,
}

impl Up {
    /// The ops endpoint (`/metrics`, `/healthz`, `/readyz`), as it printed it.
    fn ops(&self) -> SocketAddr {
        self.printed
            .iter()
            .find_map(|l| l.trim().strip_prefix("metrics         http://"))
            .and_then(|rest| rest.split('/').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no metrics endpoint printed: {:#?}", self.printed))
    }
}

/// Starts `hermes up` on ephemeral ports with its data in `data`.
fn up_in(data: &std::path::Path, extra: &[&str], env: &[(&str, &str)]) -> Up {
    let mut child = Running(
        Command::new(HERMES)
            .args(["up", "--mqtt-addr", "127.0.0.1:0", "--mqtt-ws-addr", "127.0.0.1:0", "--ops-addr", "127.0.0.1:0"])
            .args(["--http-addr", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(data)
            .args(extra)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn hermes up"),
    );
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut addr = None;
    let mut http = None;
    let mut admin = String::new();
    let mut seen = Vec::new();
    while let Some(Ok(line)) = lines.next() {
        seen.push(line.clone());
        if let Some(rest) = line.trim().strip_prefix("MQTT            mqtt://") {
            addr = rest.parse().ok();
        }
        if let Some(rest) =
            line.trim().strip_prefix("accounts API    http://").or(line.trim().strip_prefix("accounts API    https://"))
        {
            http = rest.split('/').next().and_then(|a| a.parse().ok());
            admin = rest.split("admin key: ").nth(1).unwrap_or_default().trim_end_matches(')').to_owned();
        }
        if line.starts_with("Stop with Ctrl-C") {
            break;
        }
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let mqtt = addr.unwrap_or_else(|| panic!("no MQTT endpoint printed: {seen:#?}"));
    let http = http.unwrap_or_else(|| panic!("no accounts endpoint printed: {seen:#?}"));
    Up { child, mqtt, http, admin, printed: seen }
}

#[tokio::test(flavor = "multi_thread")]
async fn up_serves_mqtt_and_stops_on_sigterm_with_0x8b() {
    let (mut child, addr) = up(&["--allow-anonymous"]);
    let mut c = Client::connect_tcp(addr, Version::V5).await.expect("tcp");
    let ack = c
        .handshake(
            Connect { client_id: "cli".into(), clean_start: true, keep_alive: 30, ..Default::default() },
            Duration::from_secs(5),
        )
        .await;
    assert!(matches!(ack, Ok(Packet::ConnAck { code: 0, .. })), "{ack:?}");
    sigterm(&child);
    match c.recv(Duration::from_secs(5)).await {
        Ok(Packet::Disconnect { code, .. }) => assert_eq!(code, 0x8B),
        other => panic!("expected DISCONNECT 0x8B, got {other:?}"),
    }
    let status = tokio::task::spawn_blocking(move || child.wait()).await.expect("join").expect("wait");
    assert!(status.success(), "hermes up exits 0 after SIGTERM: {status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn up_without_anonymous_refuses_clients_without_credentials() {
    let (mut child, addr) = up(&[]);
    let mut c = Client::connect_tcp(addr, Version::V311).await.expect("tcp");
    let ack = c
        .handshake(
            Connect { client_id: "anon".into(), clean_start: true, ..Default::default() },
            Duration::from_secs(5),
        )
        .await;
    assert!(matches!(ack, Ok(Packet::ConnAck { code: 5, .. })), "not authorized: {ack:?}");
    sigterm(&child);
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
}

#[test]
fn print_config_layers_file_env_and_flags() {
    let dir = temp_dir("cfg");
    let file = dir.join("hermes.toml");
    std::fs::write(
        &file,
        "[mqtt]\naddr = \"127.0.0.1:1111\"\nws_addr = \"127.0.0.1:2222\"\n[limits]\nmax_inflight = 7\n",
    )
    .expect("write");
    let out = Command::new(HERMES)
        .args(["print-config", "--config"])
        .arg(&file)
        .args(["--mqtt-ws-addr", "127.0.0.1:3333"])
        .env("HERMES_LIMITS__MAX_INFLIGHT", "9")
        .output()
        .expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("addr = \"127.0.0.1:1111\""), "file value: {text}");
    assert!(text.contains("ws_addr = \"127.0.0.1:3333\""), "flag beats file: {text}");
    assert!(text.contains("max_inflight = 9"), "env beats file: {text}");
}

#[test]
fn bad_configuration_is_refused_naming_the_key() {
    // In a directory of its own: `hermes up` defaults to `./hermes-data`.
    let cwd = temp_dir("bad-config");
    let out = Command::new(HERMES)
        .args(["up"])
        .current_dir(&cwd)
        .env("HERMES_LIMITS__MAX_INFLGHT", "3")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_inflght"), "names the unknown key: {err}");
    let out =
        Command::new(HERMES).args(["up", "--mqtt-tls-addr", "127.0.0.1:0"]).current_dir(&cwd).output().expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("mqtt.tls_cert"), "TLS needs a certificate");
    assert!(!cwd.join("hermes-data").exists(), "an invalid configuration creates no keys");
}

/// The permission bits of `path`.
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[tokio::test(flavor = "multi_thread")]
async fn up_keeps_its_keys_database_and_sessions_to_their_owner() {
    let dir = temp_dir("private");
    let data = dir.join("data");
    let _ = std::fs::remove_dir_all(&data);
    let mut up = up_in(&data, &["--demo", "--demo-password", "demo secret"], &[]);
    assert_eq!(mode(&data), 0o700, "the data directory");
    // The database is open in WAL mode, so its -wal and -shm files exist now.
    for file in ["token.key", "admin.key", "link.key", "accounts.db", "accounts.db-wal", "accounts.db-shm"] {
        assert_eq!(mode(&data.join(file)), 0o600, "{file}");
    }
    // A session holds a refresh token: owner-only, also when it replaces a readable one.
    let old = session_file(&dir, "bob");
    std::fs::write(&old, "{}").expect("write");
    set_mode(std::path::Path::new(&old), 0o644);
    for user in ["alice", "bob"] {
        demo_login(&dir, up.http, up.mqtt, user);
        assert_eq!(mode(std::path::Path::new(&session_file(&dir, user))), 0o600, "{user}'s session");
    }
    sigterm(&up.child);
    let _ = tokio::task::spawn_blocking(move || up.child.wait()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn up_tightens_a_data_directory_others_can_read_and_keeps_its_keys() {
    let data = temp_dir("loose").join("data");
    std::fs::create_dir_all(&data).expect("dir");
    set_mode(&data, 0o755);
    let key = "an-admin-key-the-operator-chose";
    std::fs::write(data.join("admin.key"), key).expect("write");
    set_mode(&data.join("admin.key"), 0o644);
    let mut up = up_in(&data, &[], &[]);
    assert_eq!(up.admin, key, "the existing key is kept");
    assert_eq!((mode(&data), mode(&data.join("admin.key"))), (0o700, 0o600));
    for path in [data.clone(), data.join("admin.key")] {
        // Quoted, as the log shows a path: the directory's own warning, not the key's.
        let path = format!("{:?}", path.display().to_string());
        let warned = up.printed.iter().any(|l| l.contains("WARN") && l.contains(&path));
        assert!(warned, "a warning names {path}: {:#?}", up.printed);
    }
    sigterm(&up.child);
    let _ = tokio::task::spawn_blocking(move || up.child.wait()).await;
}

/// Runs `hermes up` with its data in `data`, which must make it fail at start; returns what it
/// wrote to standard error.
fn up_fails(data: &std::path::Path) -> String {
    let mut child = Running(
        Command::new(HERMES)
            .args(["up", "--mqtt-addr", "127.0.0.1:0", "--mqtt-ws-addr", "127.0.0.1:0"])
            .args(["--ops-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn hermes up"),
    );
    let status = exit_status(&mut child, Duration::from_secs(30));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err).expect("stderr");
    assert!(!status.success(), "hermes up exits with an error: {err}");
    err
}

#[test]
fn a_key_file_that_cannot_be_used_stops_up_naming_it() {
    // (file, its bytes; None: a directory where the file should be)
    let cases: [(&str, Option<&[u8]>); 5] = [
        ("token.key", Some(b"not a key")),
        ("admin.key", Some(&[0xff, 0xfe, 0x00, 0x41])),
        ("admin.key", None),
        ("link.key", Some(b"")),
        ("link.key", Some(b"two words")),
    ];
    for (i, (file, bytes)) in cases.into_iter().enumerate() {
        let data = temp_dir(&format!("bad-key-{i}")).join("data");
        let path = data.join(file);
        let _ = std::fs::remove_dir_all(&data);
        match bytes {
            Some(b) => {
                std::fs::create_dir_all(&data).expect("dir");
                std::fs::write(&path, b).expect("write");
            }
            None => std::fs::create_dir_all(&path).expect("dir"),
        }
        let err = up_fails(&data);
        assert!(err.contains(&path.display().to_string()), "{file} ({bytes:?}): the error names it: {err}");
        if let Some(b) = bytes {
            assert_eq!(std::fs::read(&path).expect("read"), b, "{file} is left as it was");
        }
    }
}

#[test]
fn up_refuses_a_data_directory_every_user_may_write_to() {
    let data = temp_dir("shared").join("data");
    std::fs::create_dir_all(&data).expect("dir");
    set_mode(&data, 0o1777);
    let err = up_fails(&data);
    assert!(err.contains(&data.display().to_string()) && err.contains("every user may write"), "{err}");
    assert_eq!(mode(&data), 0o777, "a shared directory is left as it was");
    assert!(!data.join("token.key").exists(), "and no key is put in it");
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_users_each_get_a_hash_with_its_own_salt() {
    use accounts::store::AccountStore;
    let data = temp_dir("salts").join("data");
    let _ = std::fs::remove_dir_all(&data);
    let mut up = up_in(&data, &["--demo", "--demo-password", "demo secret"], &[]);
    let store = accounts::sqlite::SqliteStore::open(&data.join("accounts.db")).await.expect("open");
    let mut hashes = Vec::new();
    for user in ["alice", "bob", "carol"] {
        let u = store.user_by_name("acme", user).await.expect("read").expect("a demo user");
        assert!(service_kit::password::verify(&u.password_hash, b"demo secret"), "{user}");
        hashes.push(u.password_hash);
    }
    hashes.sort();
    hashes.dedup();
    assert_eq!(hashes.len(), 3, "one hash (and salt) per user: {hashes:?}");
    sigterm(&up.child);
    let _ = tokio::task::spawn_blocking(move || up.child.wait()).await;
}

#[test]
fn passwd_writes_a_users_file_that_up_accepts() {
    let dir = temp_dir("passwd");
    let users = dir.join("users");
    for pw in ["first", "-second, starting with a hyphen"] {
        let ok = Command::new(HERMES)
            .args(["passwd", "--users-file"])
            .arg(&users)
            .args(["alice", "--password", pw])
            .status()
            .expect("run")
            .success();
        assert!(ok);
    }
    let text = std::fs::read_to_string(&users).expect("users file");
    assert_eq!(text.lines().count(), 1, "one line per user: {text}");
    assert_eq!(mode(&users), 0o600, "password hashes are for the owner only");
    assert!(text.starts_with("alice:$argon2id$"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bench_reports_json_against_a_running_broker() {
    let (mut child, addr) = up(&["--allow-anonymous"]);
    let port = addr.port().to_string();
    let pid = child.id().to_string();
    for scenario in [
        vec!["connections", "-n", "50", "--hold-secs", "0"],
        vec!["fanout", "-n", "20", "--rounds", "2"],
        vec!["throughput", "--publishers", "2", "--subscribers", "2", "--qos", "1", "--seconds", "1"],
    ] {
        let out = Command::new(HERMES)
            .args(["bench", "--port", &port, "--pid", &pid, "--json"])
            .args(&scenario)
            .output()
            .expect("run bench");
        assert!(out.status.success(), "{scenario:?}: {}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
        assert_eq!(v["scenario"], scenario[0]);
        match scenario[0] {
            "connections" => {
                assert_eq!(v["connected"], 50);
                assert!(v["broker_rss_kib_per_connection"].is_number());
            }
            "fanout" => {
                let rounds = v["rounds"].as_array().expect("rounds");
                assert!(rounds.iter().all(|r| r["delivered"] == 20), "{v}");
            }
            _ => {
                assert!(v["delivered"].as_u64().is_some_and(|d| d > 0), "{v}");
                assert_eq!(v["delivered"], v["expected_deliveries"], "QoS 1 loses nothing: {v}");
            }
        }
    }
    sigterm(&child);
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_login_then_mqtt_with_the_token() {
    use sdk::http::request;
    let (mut child, mqtt, http) = up_with_http(&["--demo", "--demo-password", "demo secret"]);
    let login = async |user: &str| {
        let body = serde_json::json!({"enterprise": "acme", "username": user, "password": "demo secret"});
        let r = request(http, "POST", "/v1/login", &[], Some(&body), Duration::from_secs(10)).await.expect("login");
        assert_eq!(r.status, 200, "{:?}", r.body);
        r.body
    };
    let alice = login("alice").await;
    let friends: Vec<&str> = alice["contacts"]["contacts"]
        .as_array()
        .expect("contacts")
        .iter()
        .filter(|c| c["friend"] == true)
        .filter_map(|c| c["username"].as_str())
        .collect();
    assert_eq!(friends, vec!["bob"], "the demo's friends");
    let bob = login("bob").await;
    let token = |v: &serde_json::Value| v["access_token"].as_str().expect("token").as_bytes().to_vec();
    let connect = |id: &str, v: &serde_json::Value| Connect {
        client_id: id.into(),
        clean_start: true,
        keep_alive: 30,
        password: Some(token(v)),
        ..Default::default()
    };
    let mut a = Client::connect_tcp(mqtt, Version::V5).await.expect("tcp");
    assert!(matches!(
        a.handshake(connect("alice-1", &alice), Duration::from_secs(5)).await,
        Ok(Packet::ConnAck { code: 0, .. })
    ));
    let mut b = Client::connect_tcp(mqtt, Version::V311).await.expect("tcp");
    assert!(matches!(
        b.handshake(connect("bob-1", &bob), Duration::from_secs(5)).await,
        Ok(Packet::ConnAck { code: 0, .. })
    ));
    assert_eq!(
        b.publish("acme/im/msg/alice", b"hello", 1, false, Duration::from_secs(5)).await.expect("puback"),
        Some(0)
    );
    // Alice is auto-subscribed to her inbox and her friend's presence: bob coming online and
    // his message both reach her, in some order.
    let mut got = Vec::new();
    while got.len() < 2 {
        match a.recv(Duration::from_secs(5)).await {
            Ok(Packet::Publish(p)) => got.push((p.topic.clone(), String::from_utf8_lossy(&p.payload).into_owned())),
            Ok(_) => {}
            other => panic!("{other:?} after {got:?}"),
        }
    }
    got.sort();
    assert_eq!(got, vec![("acme/im/msg/alice".into(), "hello".into()), ("acme/im/pres/bob".into(), "online".into())]);
    sigterm(&child);
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
}

/// The connection limit is process-wide in ntex (a global per worker), so it is tested on a
/// process of its own.
#[tokio::test(flavor = "multi_thread")]
async fn connections_beyond_the_limit_wait_in_the_backlog() {
    let env = [("HERMES_LIMITS__MAX_CONNECTIONS", "1"), ("HERMES_MQTT__WORKERS", "1")];
    let (mut child, addr, _) = up_with_env(&["--allow-anonymous"], &env);
    let hello = |id: &str| Connect { client_id: id.into(), clean_start: true, keep_alive: 30, ..Default::default() };
    let mut first = Client::connect_tcp(addr, Version::V311).await.expect("tcp");
    assert!(matches!(first.handshake(hello("one"), Duration::from_secs(5)).await, Ok(Packet::ConnAck { code: 0, .. })));
    let mut second = Client::connect_tcp(addr, Version::V311).await.expect("tcp: the kernel completes the handshake");
    match second.handshake(hello("two"), Duration::from_millis(500)).await {
        Err(sdk::mqtt::RecvError::Timeout) => {}
        other => panic!("a connection over the limit must wait, got {other:?}"),
    }
    drop(first);
    match second.recv(Duration::from_secs(5)).await {
        Ok(Packet::ConnAck { code: 0, .. }) => {}
        other => panic!("served once a slot frees up, got {other:?}"),
    }
    sigterm(&child);
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
}

/// Runs `hermes args`, requires it to succeed, returns what it printed.
fn hermes(args: &[&str]) -> String {
    let out = Command::new(HERMES).args(args).output().expect("run hermes");
    assert!(out.status.success(), "hermes {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Where [`demo_login`] keeps `user`'s session.
fn session_file(dir: &std::path::Path, user: &str) -> String {
    dir.join(format!("{user}.json")).display().to_string()
}

/// `hermes login` as a `--demo` user (password "demo secret"); returns what it printed.
fn demo_login(dir: &std::path::Path, http: SocketAddr, mqtt: SocketAddr, user: &str) -> String {
    let (h, m, s) = (http.to_string(), mqtt.to_string(), session_file(dir, user));
    let args = ["login", "--http", &h, "--mqtt", &m, "--enterprise", "acme", "--username", user];
    hermes(&[&args[..], &["--password", "demo secret", "--session", &s]].concat())
}

/// `hermes listen` with `args`, once it has said it listens as `user` of acme; its output
/// after that line.
fn listening(user: &str, args: &[&str]) -> (Child, std::io::Lines<BufReader<std::process::ChildStdout>>) {
    let mut listener = Command::new(HERMES).arg("listen").args(args).stdout(Stdio::piped()).spawn().expect("listen");
    let mut lines = BufReader::new(listener.stdout.take().expect("stdout")).lines();
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    assert!(first.starts_with(&format!("listening as {user}@acme")), "{first}");
    (listener, lines)
}

#[tokio::test(flavor = "multi_thread")]
async fn client_verbs_from_two_terminals() {
    let (mut child, mqtt, http) = up_with_http(&["--demo", "--demo-password", "demo secret"]);
    let dir = temp_dir("verbs");
    let session = |user: &str| session_file(&dir, user);
    for user in ["alice", "bob"] {
        let out = demo_login(&dir, http, mqtt, user);
        assert!(out.contains(&format!("logged in as {user}@acme")), "{out}");
    }
    let contacts = hermes(&["contacts", "--session", &session("alice")]);
    assert!(contacts.contains("bob") && contacts.contains("friend"), "{contacts}");
    // Terminal 1 listens; terminal 2 sends once the listener says it is connected. Alice sees
    // his message, and no online/offline flicker: a one-shot `send` is no presence.
    let (mut listener, lines) =
        listening("alice", &["--count", "1", "--idle-secs", "20", "--session", &session("alice")]);
    let sent = hermes(&["send", "--to", "alice", "hello from bob", "--session", &session("bob")]);
    assert!(sent.contains("sent to alice"), "{sent}");
    let printed: Vec<String> =
        tokio::task::spawn_blocking(move || lines.map_while(Result::ok).collect()).await.expect("join");
    assert_eq!(printed, ["acme/im/msg/alice [bob] hello from bob"]);
    assert!(listener.wait().expect("wait").success());
    // Bob forges an envelope from carol, with a sender property of his own making: alice's
    // listener shows who the edge authenticated.
    let (mut listener, lines) = listening("alice", &["--idle-secs", "3", "--session", &session("alice")]);
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(session("bob")).expect("session")).expect("json");
    let token = saved["access_token"].as_str().expect("access token").as_bytes().to_vec();
    let mut bob = Client::connect_tcp(mqtt, Version::V5).await.expect("connect");
    let hello = Connect {
        client_id: "forger".into(),
        clean_start: true,
        keep_alive: 30,
        password: Some(token),
        ..Connect::default()
    };
    assert!(matches!(bob.handshake(hello, Duration::from_secs(5)).await, Ok(Packet::ConnAck { code: 0, .. })));
    let forged = wire::envelope::text("m".into(), "carol".into(), wire::pb::Direction::P2p, "forged", 1);
    let publish = sdk::mqtt::Publish {
        topic: "acme/im/msg/alice".into(),
        payload: wire::envelope::encode(&forged).into(),
        qos: 1,
        packet_id: Some(1),
        properties: sdk::mqtt::PublishProperties {
            user_properties: vec![("hermes-sender".into(), "acme/carol".into())],
            ..Default::default()
        },
        ..Default::default()
    };
    bob.send(&Packet::Publish(publish)).await.expect("publish");
    // Bob's own auto-subscriptions may deliver retained states first.
    loop {
        match bob.recv(Duration::from_secs(5)).await {
            Ok(Packet::PubAck { packet_id: 1, code }) => break assert_eq!(code, 0),
            Ok(Packet::Publish(_)) => {}
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    // A plain payload, as mosquitto_pub sends: shown with its sender too.
    let plain = bob.publish("acme/im/msg/alice", b"plain hi", 1, false, Duration::from_secs(5)).await;
    assert_eq!(plain.expect("puback"), Some(0));
    let printed: Vec<String> =
        tokio::task::spawn_blocking(move || lines.map_while(Result::ok).collect()).await.expect("join");
    assert!(printed.iter().any(|l| l == "acme/im/msg/alice [bob] forged"), "{printed:?}");
    assert!(printed.iter().any(|l| l == "acme/im/msg/alice [bob] plain hi"), "{printed:?}");
    assert!(!printed.iter().any(|l| l.contains("carol")), "{printed:?}");
    let _ = listener.wait();
    let followed = hermes(&["follow", "carol", "--session", &session("alice")]);
    assert!(followed.contains("following carol"), "{followed}");
    sigterm(&child);
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn signatures_presence_and_disabling_from_two_terminals() {
    let (mut child, mqtt, http, admin) = up_with_admin(&["--demo", "--demo-password", "demo secret"], &[]);
    assert!(!admin.is_empty(), "up prints the admin key");
    let dir = temp_dir("presence");
    let session = |user: &str| session_file(&dir, user);
    for user in ["alice", "bob"] {
        demo_login(&dir, http, mqtt, user);
    }
    // Alice watches; bob comes online (his listener) and sets a signature.
    let mut watcher = Command::new(HERMES)
        .args(["presence", "--count", "2", "--idle-secs", "20", "--session", &session("alice")])
        .stdout(Stdio::piped())
        .spawn()
        .expect("presence");
    let mut watched = BufReader::new(watcher.stdout.take().expect("stdout")).lines();
    let first = watched.next().and_then(Result::ok).unwrap_or_default();
    assert!(first.starts_with("watching presence as alice@acme"), "{first}");
    let mut bob = Command::new(HERMES)
        .args(["listen", "--idle-secs", "30", "--session", &session("bob")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("listen");
    let mut bob_out = BufReader::new(bob.stdout.take().expect("stdout")).lines();
    assert!(bob_out.next().and_then(Result::ok).unwrap_or_default().starts_with("listening as bob@acme"));
    let set = hermes(&["signature", "in a meeting", "--session", &session("bob")]);
    assert!(set.contains("signature of bob: in a meeting"), "{set}");
    let seen: Vec<String> =
        tokio::task::spawn_blocking(move || watched.map_while(Result::ok).collect()).await.expect("join");
    // Presence comes once bob's listener has stayed for the grace; the signature at once.
    let mut seen = seen;
    seen.sort();
    assert_eq!(seen, vec!["bob is online".to_owned(), "bob signature: in a meeting".to_owned()]);
    assert!(watcher.wait().expect("wait").success());

    // The admin disables bob: his live connection is closed with 0x98 at once.
    let body = serde_json::json!({"disabled": true});
    let r = sdk::http::request(
        http,
        "PATCH",
        "/v1/enterprises/acme/users/bob",
        &[("X-Admin-Key", &admin)],
        Some(&body),
        Duration::from_secs(10),
    )
    .await
    .expect("http");
    assert_eq!(r.status, 200, "{:?}", r.body);
    let started = std::time::Instant::now();
    let out = tokio::task::spawn_blocking(move || bob.wait_with_output()).await.expect("join").expect("wait");
    assert!(started.elapsed() < Duration::from_secs(5), "closed promptly");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("disconnected (0x98)"), "{err}");
    let refused = Command::new(HERMES).args(["contacts", "--session", &session("bob")]).output().expect("run");
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("disabled"));
    sigterm(&child);
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
}

/// A tool scripts/test.sh installs; missing is a failure, not a skip.
fn tool(name: &str) -> std::path::PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file()).unwrap_or_else(|| {
        panic!("`{name}` is not installed: run scripts/test.sh, which installs the test dependencies")
    })
}

async fn api_user_id(http: SocketAddr, token: &str) -> String {
    let auth = format!("Bearer {token}");
    let r = sdk::http::request(http, "GET", "/v1/me", &[("Authorization", &auth)], None, Duration::from_secs(10))
        .await
        .expect("http");
    r.body["id"].as_str().expect("id").to_owned()
}

async fn login_token(http: SocketAddr, user: &str) -> String {
    let body = serde_json::json!({"enterprise": "acme", "username": user, "password": "demo secret"});
    let r =
        sdk::http::request(http, "POST", "/v1/login", &[], Some(&body), Duration::from_secs(10)).await.expect("http");
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body["access_token"].as_str().expect("token").to_owned()
}

/// What the edge answers `user` subscribing to group `ops`'s topic (SUBACK codes, MQTT 5).
async fn group_suback(up: &Up, user: &str) -> Vec<u8> {
    let token = login_token(up.http, user).await;
    let mut c = Client::connect_tcp(up.mqtt, Version::V5).await.expect("tcp");
    let hello = Connect {
        client_id: format!("{user}-groups"),
        clean_start: true,
        keep_alive: 30,
        password: Some(token.into_bytes()),
        ..Connect::default()
    };
    assert!(matches!(c.handshake(hello, Duration::from_secs(5)).await, Ok(Packet::ConnAck { code: 0, .. })));
    let topic = sdk::mqtt::SubscribeTopic::new("acme/im/group/ops", 1);
    c.subscribe(vec![topic], Duration::from_secs(5)).await.expect("suback")
}

/// Group topics are their members': a membership made through the API reaches the running
/// edge, and a restarted `hermes up` primes its edge with it from the database.
#[tokio::test(flavor = "multi_thread")]
async fn group_topics_are_their_members_also_after_a_restart() {
    let data = temp_dir("groups").join("data");
    let _ = std::fs::remove_dir_all(&data);
    let demo = ["--demo", "--demo-password", "demo secret"];
    let mut up = up_in(&data, &demo, &[]);
    let alice = format!("Bearer {}", login_token(up.http, "alice").await);
    let call = async |method: &str, path: &str, body: Option<serde_json::Value>| {
        let auth = [("Authorization", alice.as_str())];
        sdk::http::request(up.http, method, path, &auth, body.as_ref(), Duration::from_secs(10)).await.expect("http")
    };
    let r = call("POST", "/v1/groups", Some(serde_json::json!({"name": "ops"}))).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let r = call("PUT", "/v1/groups/ops/members/bob", None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(group_suback(&up, "bob").await, vec![1], "a member");
    assert_eq!(group_suback(&up, "carol").await, vec![0x87], "no member");
    sigterm(&up.child);
    let _ = tokio::task::spawn_blocking(move || up.child.wait()).await;

    let mut up = up_in(&data, &demo, &[]);
    assert_eq!(group_suback(&up, "bob").await, vec![1], "primed from the database");
    assert_eq!(group_suback(&up, "alice").await, vec![1]);
    assert_eq!(group_suback(&up, "carol").await, vec![0x87]);
    sigterm(&up.child);
    let _ = tokio::task::spawn_blocking(move || up.child.wait()).await;
}

/// What the edge at `mqtt` answers a CONNECT with `token` (the CONNACK's code).
async fn connack_code(mqtt: SocketAddr, version: Version, client_id: &str, token: &str) -> u8 {
    let mut c = Client::connect_tcp(mqtt, version).await.expect("tcp");
    let hello = Connect {
        client_id: client_id.into(),
        clean_start: true,
        keep_alive: 30,
        password: Some(token.as_bytes().to_vec()),
        ..Connect::default()
    };
    match c.handshake(hello, Duration::from_secs(5)).await {
        Ok(Packet::ConnAck { code, .. }) => code,
        other => panic!("{other:?}"),
    }
}

/// Logging one device out revokes its access tokens, and that revocation is in the database:
/// a restarted `hermes up` without Redis primes its edge with it, so the logged-out device's
/// unexpired token stays refused over MQTT while the other device's still works.
#[tokio::test(flavor = "multi_thread")]
async fn a_logged_out_device_stays_logged_out_after_a_restart() {
    let data = temp_dir("logout-restart").join("data");
    let _ = std::fs::remove_dir_all(&data);
    let demo = ["--demo", "--demo-password", "demo secret"];
    let mut up = up_in(&data, &demo, &[]);
    let login = async |http: SocketAddr| {
        let body = serde_json::json!({"enterprise": "acme", "username": "alice", "password": "demo secret"});
        let r = sdk::http::request(http, "POST", "/v1/login", &[], Some(&body), Duration::from_secs(10))
            .await
            .expect("login");
        assert_eq!(r.status, 200, "{:?}", r.body);
        let field = |name: &str| r.body[name].as_str().expect(name).to_owned();
        (field("access_token"), field("refresh_token"))
    };
    let (phone, phone_refresh) = login(up.http).await;
    let (laptop, _) = login(up.http).await;
    assert_eq!(connack_code(up.mqtt, Version::V5, "phone", &phone).await, 0);
    let body = serde_json::json!({"refresh_token": phone_refresh});
    let r = sdk::http::request(up.http, "POST", "/v1/logout", &[], Some(&body), Duration::from_secs(10))
        .await
        .expect("logout");
    assert_eq!(r.status, 204, "{:?}", r.body);
    // The logout reaches the running edge as an account event, applied by a task of its own:
    // under load a CONNECT can come first, so wait (5 s at most) until the edge has it.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut code = connack_code(up.mqtt, Version::V5, "phone", &phone).await;
    while code == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        code = connack_code(up.mqtt, Version::V5, "phone", &phone).await;
    }
    assert_eq!(code, 0x87, "refused by the running edge");
    sigterm(&up.child);
    let _ = tokio::task::spawn_blocking(move || up.child.wait()).await;

    let mut up = up_in(&data, &demo, &[]);
    assert_eq!(connack_code(up.mqtt, Version::V5, "phone", &phone).await, 0x87, "still refused after the restart");
    assert_eq!(connack_code(up.mqtt, Version::V311, "phone", &phone).await, 5, "v3: not authorized");
    assert_eq!(connack_code(up.mqtt, Version::V5, "laptop", &laptop).await, 0, "the other device is still logged in");
    sigterm(&up.child);
    let _ = tokio::task::spawn_blocking(move || up.child.wait()).await;
}

/// Reads `c` until the server closes it; how long that took, or `None` if it was still open
/// after `limit`.
async fn closed_within(c: &mut tokio::net::TcpStream, limit: Duration) -> Option<Duration> {
    use tokio::io::AsyncReadExt;
    let started = std::time::Instant::now();
    let mut buf = [0u8; 1024];
    let read_to_end = async {
        // A reset counts as closed too.
        while matches!(c.read(&mut buf).await, Ok(n) if n > 0) {}
    };
    tokio::time::timeout(limit, read_to_end).await.ok().map(|()| started.elapsed())
}

/// The HTTP listeners of `hermes up` (the accounts API, the ops endpoint) enforce their limits,
/// set here through `[http]` and `[ops]`: a connection that sends half a request header is
/// closed at `header_timeout_secs`, and one connection past `max_connections_per_address` is
/// closed as soon as it is accepted.
#[tokio::test(flavor = "multi_thread")]
async fn http_listeners_close_half_sent_headers_and_cap_connections_per_address() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    let env = [
        ("HERMES_HTTP__HEADER_TIMEOUT_SECS", "2"),
        ("HERMES_OPS__HEADER_TIMEOUT_SECS", "2"),
        ("HERMES_HTTP__MAX_CONNECTIONS_PER_ADDRESS", "3"),
        ("HERMES_OPS__MAX_CONNECTIONS_PER_ADDRESS", "3"),
    ];
    let data = temp_dir("http-limits").join("data");
    let _ = std::fs::remove_dir_all(&data);
    let mut up = up_in(&data, &[], &env);
    let ops = up.ops();
    for (name, addr) in [("accounts API", up.http), ("ops endpoint", ops)] {
        // Half a header, then silence: closed at the header timeout (2 s), not at the default 10 s.
        let mut half = TcpStream::connect(addr).await.expect("connect");
        half.write_all(b"GET /healthz HTTP/1.1\r\nHost: hermes\r\n").await.expect("write");
        let took = closed_within(&mut half, Duration::from_secs(6)).await;
        assert!(
            took.is_some_and(|t| t >= Duration::from_millis(1500)),
            "{name}: half a header must be closed at the 2 s header timeout, after {took:?}"
        );

        // Three connections from one address are held; the fourth is closed at once.
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(TcpStream::connect(addr).await.expect("connect"));
        }
        let mut fourth = TcpStream::connect(addr).await.expect("the kernel accepts it");
        let took = closed_within(&mut fourth, Duration::from_millis(1000)).await;
        assert!(
            took.is_some(),
            "{name}: a fourth connection from one address must be closed before its header timeout"
        );
        // One leaves: the next is served.
        held.pop();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut next = TcpStream::connect(addr).await.expect("connect");
        next.write_all(b"GET /healthz HTTP/1.1\r\nHost: hermes\r\nConnection: close\r\n\r\n").await.expect("write");
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), next.read_to_end(&mut answer)).await;
        assert!(answer.starts_with(b"HTTP/1.1 "), "{name}: {:?}", String::from_utf8_lossy(&answer));
    }
    sigterm(&up.child);
    let _ = tokio::task::spawn_blocking(move || up.child.wait()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn login_then_mosquitto_and_paho_with_the_token() {
    let (mut child, mqtt, http) = up_with_http(&["--demo", "--demo-password", "demo secret"]);
    let (alice, bob) = (login_token(http, "alice").await, login_token(http, "bob").await);
    let carol = login_token(http, "carol").await;
    let port = mqtt.port().to_string();
    for version in ["mqttv311", "mqttv5"] {
        let mut sub = Command::new(tool("mosquitto_sub"))
            .args(["-h", "127.0.0.1", "-p", &port, "-V", version, "-q", "1", "-W", "20", "-v"])
            .args(["-i", &format!("alice-sub-{version}"), "-u", "alice", "-P", &alice, "-t", "acme/im/msg/alice"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("mosquitto_sub");
        // Alice's connection also carries her auto-subscriptions (friends' presence), so look
        // for the inbox line. mosquitto_sub has no "subscribed" signal: publish until it shows.
        let lines = BufReader::new(sub.stdout.take().expect("stdout")).lines();
        let (found_tx, found_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if line == "acme/im/msg/alice hi from mosquitto" {
                    let _ = found_tx.send(());
                }
            }
        });
        let mut found = false;
        for _ in 0..50 {
            let ok = Command::new(tool("mosquitto_pub"))
                .args(["-h", "127.0.0.1", "-p", &port, "-V", version, "-q", "1", "-u", "bob", "-P", &bob])
                .args(["-t", "acme/im/msg/alice", "-m", "hi from mosquitto"])
                .status()
                .expect("mosquitto_pub")
                .success();
            assert!(ok, "bob may write to alice's inbox ({version})");
            if found_rx.recv_timeout(Duration::from_millis(200)).is_ok() {
                found = true;
                break;
            }
        }
        let _ = sub.kill();
        let _ = sub.wait();
        assert!(found, "mosquitto_sub {version} never got bob's message");
        // Carol (no friends, so no retained presence arrives) may not read alice's inbox.
        let denied = Command::new(tool("mosquitto_sub"))
            .args(["-h", "127.0.0.1", "-p", &port, "-V", version, "-C", "1", "-W", "3", "-u", "carol", "-P", &carol])
            .args(["-t", "acme/im/msg/alice"])
            .output()
            .expect("mosquitto_sub");
        let text = String::from_utf8_lossy(&denied.stderr).to_lowercase()
            + &String::from_utf8_lossy(&denied.stdout).to_lowercase();
        assert!(text.contains("all subscription requests were denied"), "{version}: {text}");
    }
    let (ok, out) = {
        let o = Command::new(tool("python3"))
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/python/paho_token.py"))
            .args(["127.0.0.1", &port, &alice, &bob])
            .output()
            .expect("python3");
        (o.status.success(), String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr))
    };
    assert!(ok && out.contains("paho token flow: all checks passed"), "{out}");
    sigterm(&child);
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn up_on_postgres_nats_and_redis() {
    use broker::relations::RelationDirectory;
    let Some(db) = hermes_tests::servers::fresh_postgres_database().await else { return };
    let (nats, redis) = (hermes_tests::servers::nats(), hermes_tests::servers::redis());
    let env = [
        ("HERMES_HTTP__DATABASE_URL", db.as_str()),
        ("HERMES_BUS__NATS_URL", &nats.nats_url()),
        ("HERMES_STATE__REDIS_URL", &redis.redis_url()),
    ];
    let (mut child, mqtt, http, admin) = up_with_admin(&["--demo", "--demo-password", "demo secret"], &env);
    // The demo's relations went to Postgres and, from there, to Redis.
    let dir = redis_state::RedisRelations::connect(&redis.redis_url()).await.expect("redis");
    let alice_rel = dir.load("acme", "alice").await.expect("load");
    assert_eq!(
        (alice_rel.follows, alice_rel.followers),
        (vec!["bob".to_owned()], vec!["bob".to_owned(), "carol".to_owned()])
    );
    let token = login_token(http, "alice").await;
    let alice_id = api_user_id(http, &token).await;
    let mut alice = Client::connect_tcp(mqtt, Version::V5).await.expect("tcp");
    let hello = Connect {
        client_id: "alice".into(),
        clean_start: true,
        keep_alive: 60,
        password: Some(token.into_bytes()),
        ..Connect::default()
    };
    assert!(matches!(alice.handshake(hello, Duration::from_secs(10)).await, Ok(Packet::ConnAck { code: 0, .. })));
    // Her device is counted in Redis, with the other edges on it (it was counted in this
    // process alone).
    let mut direct = redis::Client::open(redis.redis_url()).and_then(|c| c.get_connection()).expect("redis");
    let mut counted: Vec<String> = Vec::new();
    for _ in 0..50 {
        counted = redis::cmd("KEYS").arg("hermes:presence:{*").query(&mut direct).expect("KEYS");
        if !counted.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!counted.is_empty(), "alice's devices counted in Redis");
    // A new follow lands in Redis; revoking alice's tokens reaches the edge over NATS.
    let carol = login_token(http, "carol").await;
    let r = sdk::http::request(
        http,
        "PUT",
        "/v1/follows/bob",
        &[("Authorization", &format!("Bearer {carol}"))],
        None,
        Duration::from_secs(10),
    )
    .await
    .expect("http");
    assert_eq!(r.status, 200);
    assert_eq!(dir.load("acme", "carol").await.expect("load").follows, vec!["alice".to_owned(), "bob".to_owned()]);
    // So does a group membership, and its end.
    let group = serde_json::json!({"name": "ops", "owner": "carol"});
    let admin_key = [("X-Admin-Key", admin.as_str())];
    let r = sdk::http::request(
        http,
        "POST",
        "/v1/enterprises/acme/groups",
        &admin_key,
        Some(&group),
        Duration::from_secs(10),
    )
    .await
    .expect("http");
    assert_eq!(r.status, 201, "{:?}", r.body);
    let path = "/v1/enterprises/acme/groups/ops/members/bob";
    let r = sdk::http::request(http, "PUT", path, &admin_key, None, Duration::from_secs(10)).await.expect("http");
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(dir.load("acme", "bob").await.expect("load").groups, vec!["ops".to_owned()]);
    let r = sdk::http::request(http, "DELETE", path, &admin_key, None, Duration::from_secs(10)).await.expect("http");
    assert_eq!(r.status, 204, "{:?}", r.body);
    assert!(dir.load("acme", "bob").await.expect("load").groups.is_empty());
    assert_eq!(dir.load("acme", "carol").await.expect("load").groups, vec!["ops".to_owned()]);
    let r = sdk::http::request(
        http,
        "POST",
        "/v1/enterprises/acme/users/alice/revoke-tokens",
        &[("X-Admin-Key", &admin)],
        None,
        Duration::from_secs(10),
    )
    .await
    .expect("http");
    assert_eq!(r.status, 200, "{:?}", r.body);
    match alice.recv(Duration::from_secs(5)).await {
        Ok(Packet::Disconnect { code, .. }) => assert_eq!(code, 0x98),
        other => panic!("expected DISCONNECT 0x98, got {other:?}"),
    }
    // ... and is kept in Redis for edges that start later.
    use broker::access::AccessDirectory;
    let access = redis_state::RedisAccess::connect(&redis.redis_url()).await.expect("redis");
    let revocations = access.revocations(0).await.expect("load");
    assert!(revocations.iter().any(|r| r.enterprise == "acme" && r.user_id == alice_id), "{revocations:?}");
    sigterm(&child);
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_accounts_api_serves_https_when_given_a_certificate() {
    let dir = temp_dir("https");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).expect("certificate");
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, cert.cert.pem()).expect("write");
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).expect("write");
    let (c, k) = (cert_file.display().to_string(), key_file.display().to_string());
    let env = [("HERMES_HTTP__TLS_CERT", c.as_str()), ("HERMES_HTTP__TLS_KEY", k.as_str())];
    let (mut child, _, http, _) = up_with_admin(&["--demo", "--demo-password", "demo secret"], &env);
    // Python's urllib verifies the certificate against the file: a real HTTPS client.
    let script = r#"
import json, ssl, sys, urllib.request
ctx = ssl.create_default_context(cafile=sys.argv[2])
req = urllib.request.Request(f"https://{sys.argv[1]}/v1/login", method="POST",
    data=json.dumps({"enterprise": "acme", "username": "alice", "password": "demo secret"}).encode(),
    headers={"content-type": "application/json"})
print(json.load(urllib.request.urlopen(req, context=ctx))["access_token"][:10])
"#;
    let out = Command::new(tool("python3")).args(["-c", script, &http.to_string(), &c]).output().expect("python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "v4.public.");
    // Plain HTTP to the HTTPS port gets no answer it could mistake for one.
    let plain = sdk::http::request(http, "GET", "/openapi.json", &[], None, Duration::from_secs(5)).await;
    assert!(plain.is_err() || plain.as_ref().is_ok_and(|r| r.status != 200), "{plain:?}");
    sigterm(&child);
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
}

/// `hermes up` on fixed addresses, so a restarted one is found where the first one was; `None`
/// if it stopped before serving (another process took one of the ports meanwhile).
fn up_at(data: &std::path::Path, mqtt: u16, http: u16, extra: &[&str]) -> Option<Running> {
    let mut child = Running(
        Command::new(HERMES)
            .args(["up", "--mqtt-addr", &format!("127.0.0.1:{mqtt}"), "--mqtt-ws-addr", "127.0.0.1:0"])
            .args(["--ops-addr", "127.0.0.1:0", "--http-addr", &format!("127.0.0.1:{http}"), "--data-dir"])
            .arg(data)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn hermes up"),
    );
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let serving = lines.by_ref().map_while(Result::ok).any(|line| line.starts_with("Stop with Ctrl-C"));
    std::thread::spawn(move || for _ in lines {});
    serving.then_some(child)
}

/// [`up_at`] on free ports, trying others when one was taken before `up` could bind it.
fn up_on_free_ports(data: &std::path::Path, extra: &[&str]) -> (Running, u16, u16) {
    for _ in 0..5 {
        let (mqtt, http) = (free_port(), free_port());
        if let Some(child) = up_at(data, mqtt, http, extra) {
            return (child, mqtt, http);
        }
    }
    panic!("hermes up found no free ports in five tries");
}

#[tokio::test(flavor = "multi_thread")]
async fn listen_keeps_its_connection_alive_and_comes_back_after_a_restart() {
    let data = temp_dir("listen-restart");
    let (mut first, mqtt, http) = up_on_free_ports(&data, &["--demo", "--demo-password", "demo secret"]);
    let dir = temp_dir("listen-sessions");
    let (mqtt_addr, http_addr) = (SocketAddr::from(([127, 0, 0, 1], mqtt)), SocketAddr::from(([127, 0, 0, 1], http)));
    for user in ["alice", "bob"] {
        assert!(demo_login(&dir, http_addr, mqtt_addr, user).contains("logged in"));
    }
    // A keep-alive of 2 s: the edge drops a silent client after 3 s, so only pings keep it.
    let mut listener = Command::new(HERMES)
        .args(["listen", "--keep-alive-secs", "2", "--idle-secs", "40", "--session", &session_file(&dir, "alice")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("listen");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let out = BufReader::new(listener.stdout.take().expect("stdout"));
    let err = BufReader::new(listener.stderr.take().expect("stderr"));
    let tx_err = tx.clone();
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    std::thread::spawn(move || {
        for line in err.lines().map_while(Result::ok) {
            let _ = tx_err.send(line);
        }
    });
    let wait_for = |want: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(line) if line.contains(want) => return,
                Ok(line) => seen.push(line),
                Err(_) => break,
            }
        }
        panic!("`{want}` never printed; saw {seen:?}");
    };
    wait_for("listening as alice@acme");
    std::thread::sleep(Duration::from_secs(5));
    let bob = session_file(&dir, "bob");
    assert!(hermes(&["send", "--to", "alice", "after five quiet seconds", "--session", &bob]).contains("sent"));
    wait_for("[bob] after five quiet seconds");
    // The server goes away and comes back: the listener reconnects by itself.
    sigterm(&first);
    let _ = first.wait();
    // The same ports again (a few tries: another process may hold one for a moment).
    let _second = (0..20)
        .find_map(|_| {
            up_at(&data, mqtt, http, &[]).or_else(|| {
                std::thread::sleep(Duration::from_millis(250));
                None
            })
        })
        .expect("hermes up restarts on its ports");
    wait_for("reconnected");
    assert!(hermes(&["send", "--to", "alice", "after the restart", "--session", &bob]).contains("sent to alice"));
    wait_for("[bob] after the restart");
    let _ = listener.kill();
    let _ = listener.wait();
}

#[test]
fn bench_acl_reports_decisions_for_a_user_with_many_friends() {
    let out = hermes(&["bench", "--json", "acl", "--friends", "20", "--checks", "200"]);
    let report: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(report["friends"], 20);
    // Every friend's inbox may be written and every friend's presence read.
    assert_eq!(report["publish_to_a_friends_inbox"]["allowed"], 200);
    assert_eq!(report["subscribe_to_a_friends_presence"]["allowed"], 200);
    assert_eq!(report["expanding_the_friends_rule_once"]["filters"], 20);
    assert!(report["connect_auto_subscriptions"]["subscriptions"].as_u64().is_some_and(|n| n >= 40), "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn login_takes_several_edges_and_the_client_verbs_use_one_that_answers() {
    let (mut child, mqtt, http) = up_with_http(&["--demo", "--demo-password", "demo secret"]);
    let dir = temp_dir("several-edges");
    // The first edge is gone (nothing listens there); the second is up.
    let gone = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let both = format!("{gone},{mqtt}");
    let bob = session_file(&dir, "bob");
    let args = ["login", "--http", &http.to_string(), "--mqtt", &both, "--enterprise", "acme", "--username", "bob"];
    assert!(hermes(&[&args[..], &["--password", "demo secret", "--session", &bob]].concat()).contains("logged in"));
    assert!(hermes(&["send", "--to", "alice", "through the edge that answers", "--session", &bob]).contains("sent"));
    // A session file from before (one address as a string) still works.
    let text = std::fs::read_to_string(&bob).expect("session file");
    let mut json: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(json["mqtt"], serde_json::json!([gone.to_string(), mqtt.to_string()]), "both kept, in order");
    json["mqtt"] = serde_json::Value::String(mqtt.to_string());
    std::fs::write(&bob, json.to_string()).expect("write");
    assert!(hermes(&["send", "--to", "alice", "from an older session file", "--session", &bob]).contains("sent"));
    sigterm(&child);
    let _ = child.wait();
}

/// `hermes up` keeps persistent sessions and retained messages in its data directory: killed
/// with -9 and started again, it delivers every message it acknowledged to a publisher, in
/// order, to a subscriber that was connected with messages in flight and more queued behind
/// them, and what was published after the restart before the subscriber came back; it still
/// has the retained message.
#[tokio::test(flavor = "multi_thread")]
async fn up_loses_no_acknowledged_message_to_a_kill_minus_9() {
    let data = temp_dir("journal").join("data");
    let _ = std::fs::remove_dir_all(&data);
    let wait = Duration::from_secs(10);
    let subscriber = || Connect {
        client_id: "keeper".into(),
        clean_start: false,
        keep_alive: 60,
        session_expiry: Some(3600),
        ..Connect::default()
    };
    let mut up = up_in(&data, &["--allow-anonymous"], &[]);
    let mut sub = Client::connect_tcp(up.mqtt, Version::V5).await.expect("tcp");
    assert!(matches!(sub.handshake(subscriber(), wait).await, Ok(Packet::ConnAck { code: 0, .. })));
    let codes = sub.subscribe(vec![sdk::mqtt::SubscribeTopic::new("kept/#", 1)], wait).await.expect("suback");
    assert_eq!(codes, [1]);
    let mut publisher = Client::connect_tcp(up.mqtt, Version::V5).await.expect("tcp");
    let hello = Connect { client_id: "writer".into(), clean_start: true, keep_alive: 60, ..Connect::default() };
    assert!(matches!(publisher.handshake(hello, wait).await, Ok(Packet::ConnAck { code: 0, .. })));
    let code = publisher.publish("retained/news", b"still retained", 1, true, wait).await.expect("puback");
    assert_eq!(code, Some(0x10), "kept, though nobody subscribes yet");
    for n in 1..=100 {
        let code = publisher.publish("kept/a", format!("m{n}").as_bytes(), 1, false, wait).await.expect("puback");
        assert_eq!(code, Some(0), "m{n} acknowledged");
        if n <= 10 {
            // The first ten are received and acknowledged; the rest stay in flight or queued.
            let Packet::Publish(p) = sub.recv(wait).await.expect("delivery") else { panic!("a PUBLISH") };
            assert_eq!(&p.payload[..], format!("m{n}").as_bytes());
            sub.send(&Packet::PubAck { packet_id: p.packet_id.expect("QoS 1"), code: 0 }).await.expect("puback");
        }
    }
    // Let the PUBACK of m10 reach the edge before it dies.
    tokio::time::sleep(Duration::from_millis(200)).await;
    up.child.kill().expect("kill -9");
    let _ = up.child.wait();

    let mut up = up_in(&data, &["--allow-anonymous"], &[]);
    // Before the subscriber is back, its session takes what is published for it.
    let mut publisher = Client::connect_tcp(up.mqtt, Version::V5).await.expect("tcp");
    let hello = Connect { client_id: "writer".into(), clean_start: true, keep_alive: 60, ..Connect::default() };
    assert!(matches!(publisher.handshake(hello, wait).await, Ok(Packet::ConnAck { code: 0, .. })));
    for n in 101..=110 {
        let code = publisher.publish("kept/a", format!("m{n}").as_bytes(), 1, false, wait).await.expect("puback");
        assert_eq!(code, Some(0), "m{n}: the parked session matches");
    }
    let mut sub = Client::connect_tcp(up.mqtt, Version::V5).await.expect("tcp");
    match sub.handshake(subscriber(), wait).await {
        Ok(Packet::ConnAck { code: 0, session_present, .. }) => assert!(session_present, "the session survived"),
        other => panic!("{other:?}"),
    }
    let mut got = Vec::new();
    while got.len() < 100 {
        match sub.recv(wait).await {
            Ok(Packet::Publish(p)) => {
                got.push(String::from_utf8_lossy(&p.payload).into_owned());
                sub.send(&Packet::PubAck { packet_id: p.packet_id.expect("QoS 1"), code: 0 }).await.expect("puback");
            }
            other => panic!("after {} messages: {other:?}", got.len()),
        }
    }
    let want: Vec<String> = (11..=110).map(|n| format!("m{n}")).collect();
    assert_eq!(got, want, "every acknowledged message, in order, none twice");
    let mut reader = Client::connect_tcp(up.mqtt, Version::V5).await.expect("tcp");
    let hello = Connect { client_id: "reader".into(), clean_start: true, keep_alive: 60, ..Connect::default() };
    assert!(matches!(reader.handshake(hello, wait).await, Ok(Packet::ConnAck { code: 0, .. })));
    reader.subscribe(vec![sdk::mqtt::SubscribeTopic::new("retained/#", 1)], wait).await.expect("suback");
    match reader.recv(wait).await {
        Ok(Packet::Publish(p)) => assert_eq!((&p.payload[..], p.retain), (&b"still retained"[..], true)),
        other => panic!("the retained message survived the kill: {other:?}"),
    }
    sigterm(&up.child);
    let _ = tokio::task::spawn_blocking(move || up.child.wait()).await;
}

/// The wills of connections open when `hermes up` was killed go out when it starts again: a
/// persistent watcher finds them queued, with what was published before it came back, a later
/// one the retained one; a device that said goodbye leaves none. On the embedded store and on
/// a Redis of its own (no bus: its sessions and wills are found by the node id it keeps in its
/// data directory; before, its sessions were not restored and what came before their clients
/// reached nobody, and the wills stayed in Redis).
#[tokio::test(flavor = "multi_thread")]
async fn up_sends_the_wills_a_kill_minus_9_left() {
    let redis = hermes_tests::servers::redis();
    let redis_url = redis.redis_url();
    for env in [vec![], vec![("HERMES_STATE__REDIS_URL", redis_url.as_str())]] {
        wills_after_a_kill(&env).await;
    }
}

async fn wills_after_a_kill(env: &[(&str, &str)]) {
    let data = temp_dir("wills").join("data");
    let _ = std::fs::remove_dir_all(&data);
    let wait = Duration::from_secs(10);
    let watcher = || Connect {
        client_id: "watcher".into(),
        clean_start: false,
        keep_alive: 60,
        session_expiry: Some(3600),
        ..Connect::default()
    };
    let device = |id: &str| Connect {
        client_id: id.into(),
        clean_start: true,
        keep_alive: 60,
        will: Some(sdk::mqtt::Will {
            topic: format!("status/{id}"),
            payload: b"offline".to_vec(),
            qos: 1,
            retain: true,
            ..Default::default()
        }),
        ..Connect::default()
    };
    let mut up = up_in(&data, &["--allow-anonymous"], env);
    // One `hermes up` per data directory: a second one is refused before it takes anything of
    // the first one's for an earlier run's.
    let second = Command::new(HERMES)
        .args(["up", "--mqtt-addr", "127.0.0.1:0", "--mqtt-ws-addr", "127.0.0.1:0", "--ops-addr", "127.0.0.1:0"])
        .args(["--http-addr", "127.0.0.1:0", "--allow-anonymous", "--data-dir"])
        .arg(&data)
        .envs(env.iter().copied())
        .output()
        .expect("run a second hermes up");
    assert!(!second.status.success(), "{env:?}: a second one on the data directory");
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("is in use by another process"), "{env:?}: {err}");
    let node_id = std::fs::read_to_string(data.join("node-id")).expect("the node id it keeps");
    let mut watch = Client::connect_tcp(up.mqtt, Version::V5).await.expect("tcp");
    assert!(matches!(watch.handshake(watcher(), wait).await, Ok(Packet::ConnAck { code: 0, .. })));
    let filters = ["status/#", "news/#"].map(|f| sdk::mqtt::SubscribeTopic::new(f, 1)).to_vec();
    assert_eq!(watch.subscribe(filters, wait).await.expect("suback"), [1, 1]);
    let mut devices = Vec::new();
    for (version, id) in [(Version::V311, "sensor"), (Version::V5, "phone"), (Version::V5, "polite")] {
        let mut d = Client::connect_tcp(up.mqtt, version).await.expect("tcp");
        assert!(matches!(d.handshake(device(id), wait).await, Ok(Packet::ConnAck { code: 0, .. })), "{id}");
        devices.push(d);
    }
    let mut polite = devices.pop().expect("polite");
    polite.send(&Packet::disconnect(0)).await.expect("DISCONNECT");
    assert!(polite.is_closed(wait).await);
    drop(watch);
    tokio::time::sleep(Duration::from_millis(300)).await;
    up.child.kill().expect("kill -9");
    let _ = up.child.wait();

    let mut up = up_in(&data, &["--allow-anonymous"], env);
    assert_eq!(std::fs::read_to_string(data.join("node-id")).expect("node id"), node_id, "the same across runs");
    let mut news = Client::connect_tcp(up.mqtt, Version::V5).await.expect("tcp");
    let hello = Connect { client_id: "news".into(), clean_start: true, keep_alive: 60, ..Connect::default() };
    assert!(matches!(news.handshake(hello, wait).await, Ok(Packet::ConnAck { code: 0, .. })));
    news.publish("news/1", b"while away", 1, false, wait).await.expect("puback");
    let mut watch = Client::connect_tcp(up.mqtt, Version::V5).await.expect("tcp");
    assert!(matches!(
        watch.handshake(watcher(), wait).await,
        Ok(Packet::ConnAck { code: 0, session_present: true, .. })
    ));
    let mut sent = Vec::new();
    while let Ok(Packet::Publish(p)) = watch.recv(Duration::from_secs(3)).await {
        watch.send(&Packet::PubAck { packet_id: p.packet_id.expect("QoS 1"), code: 0 }).await.expect("puback");
        sent.push(p.topic.clone());
    }
    sent.sort();
    assert_eq!(sent, ["news/1", "status/phone", "status/sensor"], "{env:?}: the wills of the two left open, once each");
    let mut later = Client::connect_tcp(up.mqtt, Version::V5).await.expect("tcp");
    let hello = Connect { client_id: "later".into(), clean_start: true, keep_alive: 60, ..Connect::default() };
    assert!(matches!(later.handshake(hello, wait).await, Ok(Packet::ConnAck { code: 0, .. })));
    later.subscribe(vec![sdk::mqtt::SubscribeTopic::new("status/phone", 1)], wait).await.expect("suback");
    match later.recv(wait).await {
        Ok(Packet::Publish(p)) => assert_eq!((&p.payload[..], p.retain), (&b"offline"[..], true)),
        other => panic!("the retained will: {other:?}"),
    }
    sigterm(&up.child);
    let _ = tokio::task::spawn_blocking(move || up.child.wait()).await;
}

/// Durable streams live in the data directory: after a kill -9 and a restart, a client resumes
/// an inbox from the start and gets every acknowledged message under its seq, and the stream
/// goes on under the same epoch.
#[tokio::test(flavor = "multi_thread")]
async fn up_keeps_its_durable_streams_across_a_kill_minus_9() {
    let data = temp_dir("streams").join("data");
    let _ = std::fs::remove_dir_all(&data);
    let wait = Duration::from_secs(10);
    let inbox = "acme/im/msg/bob";
    let client = async |up: &Up, id: &str| {
        let mut c = Client::connect_tcp(up.mqtt, Version::V5).await.expect("tcp");
        let hello = Connect { client_id: id.into(), clean_start: true, keep_alive: 60, ..Connect::default() };
        assert!(matches!(c.handshake(hello, wait).await, Ok(Packet::ConnAck { code: 0, .. })));
        c
    };
    let mut up = up_in(&data, &["--allow-anonymous"], &[]);
    let mut publisher = client(&up, "writer").await;
    for n in 1..=20 {
        let code = publisher.publish(inbox, format!("m{n}").as_bytes(), 1, false, wait).await.expect("puback");
        assert_eq!(code, Some(0x10), "m{n} kept in its stream, though nobody subscribes");
    }
    up.child.kill().expect("kill -9");
    let _ = up.child.wait();

    let mut up = up_in(&data, &["--allow-anonymous"], &[]);
    let mut bob = client(&up, "bob").await;
    bob.send(&Packet::Subscribe {
        packet_id: 1,
        topics: vec![sdk::mqtt::SubscribeTopic::new(inbox, 1)],
        subscription_id: None,
        user_properties: vec![("hermes-resume".into(), "0:0".into())],
    })
    .await
    .expect("subscribe");
    let (mut got, mut report) = (Vec::new(), None);
    while got.len() < 20 || report.is_none() {
        match bob.recv(wait).await {
            Ok(Packet::Publish(p)) => {
                let prop = |k: &str| p.properties.user_properties.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
                got.push((String::from_utf8_lossy(&p.payload).into_owned(), prop("hermes-seq"), prop("hermes-epoch")));
                bob.send(&Packet::PubAck { packet_id: p.packet_id.expect("QoS 1"), code: 0 }).await.expect("puback");
            }
            Ok(Packet::SubAck { user_properties, .. }) => report = Some(user_properties),
            other => panic!("after {} messages: {other:?}", got.len()),
        }
    }
    let epoch = got[0].2.clone().expect("an epoch");
    let want: Vec<(String, Option<String>, Option<String>)> =
        (1..=20).map(|n| (format!("m{n}"), Some(n.to_string()), Some(epoch.clone()))).collect();
    assert_eq!(got, want, "every acknowledged message, under its seq, in order");
    let line = format!("complete epoch={epoch} first=1 last=20 stream={inbox}");
    assert_eq!(report, Some(vec![("hermes-replay".to_string(), line)]));
    let mut publisher = client(&up, "writer").await;
    publisher.publish(inbox, b"m21", 1, false, wait).await.expect("puback");
    let Ok(Packet::Publish(p)) = bob.recv(wait).await else { panic!("the next message") };
    let seq = p.properties.user_properties.iter().find(|(n, _)| n == "hermes-seq").map(|(_, v)| v.clone());
    assert_eq!(seq.as_deref(), Some("21"), "the stream goes on after the restart");
    sigterm(&up.child);
    let _ = tokio::task::spawn_blocking(move || up.child.wait()).await;
}

/// Exactly once across a kill -9: a QoS 2 PUBLISH that `hermes up` received (PUBREC sent, no
/// PUBREL yet) is not routed again when its publisher, back after the restart, sends it again.
#[tokio::test(flavor = "multi_thread")]
async fn up_routes_a_qos2_publish_once_across_a_kill_minus_9() {
    let data = temp_dir("qos2-journal").join("data");
    let _ = std::fs::remove_dir_all(&data);
    let wait = Duration::from_secs(10);
    let lasting = |id: &str| Connect {
        client_id: id.into(),
        clean_start: false,
        keep_alive: 60,
        session_expiry: Some(3600),
        ..Connect::default()
    };
    let connect = async |up: &Up, id: &str| {
        let mut c = Client::connect_tcp(up.mqtt, Version::V5).await.expect("tcp");
        match c.handshake(lasting(id), wait).await {
            Ok(Packet::ConnAck { code: 0, session_present, .. }) => (c, session_present),
            other => panic!("{id}: {other:?}"),
        }
    };
    let once = sdk::mqtt::Publish {
        topic: "exactly/once".into(),
        payload: bytes::Bytes::from_static(b"once"),
        qos: 2,
        packet_id: Some(7),
        ..Default::default()
    };
    let mut up = up_in(&data, &["--allow-anonymous"], &[]);
    let (mut sub, _) = connect(&up, "qos2-sub").await;
    sub.subscribe(vec![sdk::mqtt::SubscribeTopic::new("exactly/#", 2)], wait).await.expect("suback");
    let (mut publisher, _) = connect(&up, "qos2-pub").await;
    publisher.send(&Packet::Publish(once.clone())).await.expect("publish");
    assert!(matches!(publisher.recv(wait).await, Ok(Packet::PubRec { packet_id: 7, code: 0 })));
    let Ok(Packet::Publish(p)) = sub.recv(wait).await else { panic!("delivered") };
    hermes_tests::ack(&mut sub, &p).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    up.child.kill().expect("kill -9");
    let _ = up.child.wait();

    let mut up = up_in(&data, &["--allow-anonymous"], &[]);
    let (mut sub, present) = connect(&up, "qos2-sub").await;
    assert!(present);
    let (mut publisher, present) = connect(&up, "qos2-pub").await;
    assert!(present, "the publisher's session, with the id awaiting PUBREL, survived");
    // As a publisher that never saw the PUBREC would: the same PUBLISH again, DUP set.
    publisher.send(&Packet::Publish(sdk::mqtt::Publish { dup: true, ..once })).await.expect("publish again");
    assert!(matches!(publisher.recv(wait).await, Ok(Packet::PubRec { packet_id: 7, code: 0 })));
    publisher.send(&Packet::PubRel { packet_id: 7, code: 0 }).await.expect("pubrel");
    assert!(matches!(publisher.recv(wait).await, Ok(Packet::PubComp { packet_id: 7, .. })));
    match sub.recv(Duration::from_secs(1)).await {
        Err(sdk::mqtt::RecvError::Timeout) => {}
        other => panic!("routed a second time: {other:?}"),
    }
    sigterm(&up.child);
    let _ = tokio::task::spawn_blocking(move || up.child.wait()).await;
}

/// What a session gives up on goes to the dead-letter stream and is counted on `/metrics` by
/// reason: here the queue (2 messages) of a persistent session whose client is away overflows
/// with 3 more (the newest are dropped: `limits.queue_drop_policy`).
#[tokio::test(flavor = "multi_thread")]
async fn up_counts_dead_letters_on_its_metrics() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let data = temp_dir("dead-letters").join("data");
    let _ = std::fs::remove_dir_all(&data);
    let up = up_in(&data, &["--allow-anonymous"], &[("HERMES_LIMITS__MAX_QUEUED_MESSAGES", "2")]);
    let wait = Duration::from_secs(10);
    let mut away = Client::connect_tcp(up.mqtt, Version::V5).await.expect("tcp");
    let hello = Connect {
        client_id: "away".into(),
        clean_start: false,
        keep_alive: 60,
        session_expiry: Some(300),
        ..Connect::default()
    };
    assert!(matches!(away.handshake(hello, wait).await, Ok(Packet::ConnAck { code: 0, .. })));
    let codes = away.subscribe(vec![sdk::mqtt::SubscribeTopic::new("d/#", 1)], wait).await.expect("suback");
    assert_eq!(codes, [1]);
    away.send(&Packet::disconnect(0)).await.expect("bye");
    assert!(away.is_closed(wait).await);
    let mut publisher = Client::connect_tcp(up.mqtt, Version::V5).await.expect("tcp");
    let hello = Connect { client_id: "writer".into(), clean_start: true, keep_alive: 60, ..Connect::default() };
    assert!(matches!(publisher.handshake(hello, wait).await, Ok(Packet::ConnAck { code: 0, .. })));
    for n in 1..=5 {
        let code = publisher.publish("d/1", format!("m{n}").as_bytes(), 1, false, wait).await.expect("puback");
        assert_eq!(code, Some(0), "m{n}");
    }
    let want = "hermes_edge_dead_letters_total{reason=\"overflow\"} 3";
    let mut body = String::new();
    for _ in 0..50 {
        let mut http = tokio::net::TcpStream::connect(up.ops()).await.expect("connect");
        http.write_all(b"GET /metrics HTTP/1.1\r\nHost: hermes\r\nConnection: close\r\n\r\n").await.expect("write");
        body.clear();
        http.read_to_string(&mut body).await.expect("read");
        if body.contains(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let counted: Vec<&str> = body.lines().filter(|l| l.contains("dead_letter")).collect();
    panic!("expected `{want}` on /metrics: {counted:#?}");
}
