//! The `accounts` binary as an operator runs it: it makes its keys on the first start and reads
//! them on the next, serves logins that end in an MQTT access token, publishes account events
//! to NATS and writes what edges read to Redis, and stops with exit status 0 on SIGTERM;
//! configuration layering; startup errors are one line and a non-zero exit.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use accounts::config::NodeConfig;
use broker::relations::RelationDirectory;
use bus::Bus;
use hermes_tests::process::{Running, exit_status, sigterm};
use prost::Message as _;
use sdk::http::{Response, request};
use serde_json::{Value, json};
use wire::pb::{AccountEvent, RelationChanged, account_event::Event};

const ACCOUNTS: &str = env!("CARGO_BIN_EXE_accounts");
const PASSWORD: &str = "correct horse";
/// How long a node may take to stop once told to.
const STOP: Duration = Duration::from_secs(10);

/// A directory of its own that does not exist yet.
fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(common::unique(&format!("hermes-accounts-cli-{name}")));
    assert!(!dir.exists());
    dir
}

/// A running `accounts` node, where it serves, and what it logged until then.
struct Node {
    child: Running,
    http: SocketAddr,
    ops: SocketAddr,
    logs: Vec<Value>,
}

/// Starts `accounts` on ephemeral loopback ports with its data in `data`, JSON logs, and the
/// extra `args` and `env`; returns once it says it serves.
fn start(data: &Path, args: &[&str], env: &[(&str, &str)]) -> Node {
    let mut child = Running(
        Command::new(ACCOUNTS)
            .args(["--http-addr", "127.0.0.1:0", "--ops-addr", "127.0.0.1:0", "--log-format", "json", "--data-dir"])
            .arg(data)
            .args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn accounts"),
    );
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut logs = Vec::new();
    let serving = loop {
        let Some(Ok(line)) = lines.next() else { panic!("accounts ended before it served: {logs:#?}") };
        let log: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        let fields = log["fields"].clone();
        logs.push(log);
        if fields["message"] == "accounts serving" {
            break fields;
        }
    };
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let addr = |key: &str| serving[key].as_str().and_then(|a| a.parse().ok()).expect("an address");
    Node { http: addr("http"), ops: addr("ops"), child, logs }
}

impl Node {
    /// Whether it logged a warning containing `text` before it served.
    fn warned(&self, text: &str) -> bool {
        self.logs
            .iter()
            .any(|l| l["level"] == "WARN" && l["fields"]["message"].as_str().is_some_and(|m| m.contains(text)))
    }

    async fn call(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Option<Value>) -> Response {
        request(self.http, method, path, headers, body.as_ref(), Duration::from_secs(10)).await.expect("http")
    }

    /// `POST path` as the operator, with the admin key the node keeps in `data`.
    async fn as_operator(&self, data: &Path, path: &str, body: Value) -> Response {
        let admin = read_key(data, "admin.key");
        self.call("POST", path, &[("X-Admin-Key", admin.trim())], Some(body)).await
    }

    /// Logs `user` of `acme` in; returns the access token.
    async fn login(&self, user: &str) -> String {
        let body = json!({"enterprise": "acme", "username": user, "password": PASSWORD});
        let r = self.call("POST", "/v1/login", &[], Some(body)).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        r.body["access_token"].as_str().expect("access_token").to_owned()
    }

    /// Sends SIGTERM; the node must exit with status 0.
    fn stop(mut self) {
        sigterm(&self.child);
        let status = exit_status(&mut self.child, STOP);
        assert!(status.success(), "accounts exits 0 after SIGTERM: {status}");
    }
}

fn read_key(data: &Path, name: &str) -> String {
    std::fs::read_to_string(data.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Creates enterprise `acme` and `users` in it as the operator.
async fn create_acme(node: &Node, data: &Path, users: &[&str]) {
    let r = node.as_operator(data, "/v1/enterprises", json!({"name": "acme"})).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    for user in users {
        let body = json!({"username": user, "password": PASSWORD});
        let r = node.as_operator(data, "/v1/enterprises/acme/users", body).await;
        assert_eq!(r.status, 201, "{:?}", r.body);
    }
}

/// The claims of `token`, which must verify with the public half of the node's `token.key`:
/// what edges are configured with.
fn verified(data: &Path, token: &str) -> wire::token::AccessClaims {
    let signer = wire::token::Signer::from_paserk(&read_key(data, "token.key")).expect("token.key");
    signer.verifier().verify(token).expect("the token verifies with the node's key")
}

/// The permission bits of `path`.
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

/// A node on a new data directory: makes its keys there, the operator creates an enterprise
/// and a user, the user logs in and gets an access token signed with the node's key; SIGTERM
/// stops the node with status 0.
async fn first_start_login_and_stop(data: &Path, args: &[&str]) {
    let node = start(data, args, &[("HERMES_FOO", "not a setting")]);
    assert_eq!(mode(data), 0o700, "the data directory");
    for key in ["token.key", "admin.key", "link.key"] {
        assert_eq!(mode(&data.join(key)), 0o600, "{key}");
    }
    create_acme(&node, data, &["alice"]).await;
    let claims = verified(data, &node.login("alice").await);
    assert_eq!((claims.enterprise_id.as_str(), claims.username.as_str()), ("acme", "alice"));
    node.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_makes_its_keys_serves_logins_and_reads_the_same_keys_after_a_restart() {
    let data = fresh_dir("sqlite");
    first_start_login_and_stop(&data, &[]).await;
    assert!(data.join("accounts.db").exists(), "SQLite in the data directory");
    let keys = ["token.key", "admin.key", "link.key"].map(|k| read_key(&data, k));

    let node = start(&data, &[], &[]);
    assert!(node.warned("bus.nats_url is empty"), "says events go nowhere: {:#?}", node.logs);
    assert_eq!(["token.key", "admin.key", "link.key"].map(|k| read_key(&data, k)), keys, "keys are read, not made");
    assert_eq!(verified(&data, &node.login("alice").await).username, "alice", "alice was kept");
    assert_eq!(ops_get(node.ops, "/healthz").await, "ok\n");
    let metrics = ops_get(node.ops, "/metrics").await;
    assert!(metrics.contains("hermes_accounts_logins_total 1"), "{metrics}");
    node.stop();
}

/// The text the ops endpoint at `addr` answers `GET path` with.
async fn ops_get(addr: SocketAddr, path: &str) -> String {
    let r = sdk::http::request_raw(addr, "GET", path, &[], b"", Duration::from_secs(10)).await.expect("http");
    assert_eq!(r.status, 200, "{path}");
    String::from_utf8_lossy(&r.body).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_on_postgres() {
    let Some(url) = common::fresh_postgres_database().await else { return };
    let data = fresh_dir("postgres");
    first_start_login_and_stop(&data, &["--http-database-url", &url]).await;
    assert!(!data.join("accounts.db").exists(), "no SQLite database next to Postgres");
}

/// The next account event on `events` that is a relation change.
async fn next_relation_change(events: &mut bus::Subscription) -> RelationChanged {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), events.next()).await.expect("an event").expect("bus open");
        if let Some(Event::RelationChanged(r)) = AccountEvent::decode(m.payload).expect("protobuf").event {
            return r;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn events_go_to_nats_and_relations_to_redis_which_a_restart_refills() {
    let (nats, redis) = (hermes_tests::servers::nats(), hermes_tests::servers::redis());
    let bus = bus::nats::NatsBus::connect(&nats.nats_url()).await.expect("nats");
    let mut events = bus.subscribe(wire::subjects::ALL_ACCOUNT_EVENTS).await.expect("subscribe");
    let data = fresh_dir("nats-redis");
    let node = start(&data, &["--bus-nats-url", &nats.nats_url(), "--state-redis-url", &redis.redis_url()], &[]);
    assert!(!node.warned("is empty"), "{:#?}", node.logs);
    create_acme(&node, &data, &["alice", "bob"]).await;
    let bob = format!("Bearer {}", node.login("bob").await);
    let r = node.call("PUT", "/v1/follows/alice", &[("Authorization", &bob)], None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let change = next_relation_change(&mut events).await;
    assert_eq!((change.follower.as_str(), change.followee.as_str(), change.following), ("bob", "alice", true));
    let relations = redis_state::RedisRelations::connect(&redis.redis_url()).await.expect("redis");
    assert_eq!(relations.load("acme", "bob").await.expect("load").follows, ["alice"]);
    node.stop();

    // A Redis that knows nothing: the node fills it from the database before it serves.
    let empty = hermes_tests::servers::redis();
    let node = start(&data, &["--state-redis-url", &empty.redis_url()], &[]);
    let relations = redis_state::RedisRelations::connect(&empty.redis_url()).await.expect("redis");
    assert_eq!(relations.load("acme", "alice").await.expect("load").followers, ["bob"]);
    node.stop();
}

/// Redis restarts without its data while the node runs: the node notices (its mark is gone)
/// and fills the directories again, so an edge that starts afterwards still refuses revoked
/// tokens and knows the relations.
#[tokio::test(flavor = "multi_thread")]
async fn a_redis_that_lost_its_data_is_filled_again_while_the_node_runs() {
    let mut redis = hermes_tests::servers::redis();
    let data = fresh_dir("redis-lost");
    let node = start(&data, &["--state-redis-url", &redis.redis_url()], &[]);
    create_acme(&node, &data, &["alice", "bob"]).await;
    let bob = format!("Bearer {}", node.login("bob").await);
    let r = node.call("PUT", "/v1/follows/alice", &[("Authorization", &bob)], None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = node.as_operator(&data, "/v1/enterprises/acme/users/bob/revoke-tokens", json!({})).await;
    assert!(r.status < 300, "{:?}", r.body);

    let _redis = hermes_tests::servers::redis_again(&mut redis);
    let conn = redis_state::connect(&redis.redis_url()).await.expect("redis");
    let (relations, access) = (redis_state::RedisRelations::new(conn.clone()), redis_state::RedisAccess::new(conn));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let filled = loop {
        let followers = relations.load("acme", "alice").await.map(|r| r.followers).unwrap_or_default();
        let revoked = broker::access::AccessDirectory::revocations(&access, 0).await.unwrap_or_default();
        if followers == ["bob"] && !revoked.is_empty() {
            break revoked;
        }
        assert!(std::time::Instant::now() < deadline, "never filled again: {followers:?}, {revoked:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(filled.len(), 1, "bob's revocation: {filled:?}");
    node.stop();
}

/// `accounts [args] print-config` with `env`; returns the configuration it printed.
fn print_config(args: &[&str], env: &[(&str, &str)]) -> NodeConfig {
    let out = Command::new(ACCOUNTS).args(args).arg("print-config").envs(env.iter().copied()).output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    toml::from_str(&String::from_utf8_lossy(&out.stdout)).expect("print-config prints the configuration")
}

#[test]
fn print_config_layers_file_env_and_flags() {
    let dir = fresh_dir("config");
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("accounts.toml");
    std::fs::write(&file, "[http]\naddr = \"127.0.0.1:1111\"\n[bus]\nnats_url = \"nats://file:4222\"\n")
        .expect("write");
    let file = file.display().to_string();
    let (from_file, from_env, from_flag) = ("127.0.0.1:1111", "127.0.0.1:2222", "127.0.0.1:3333");
    let config = [("HERMES_CONFIG", file.as_str()), ("HERMES_FOO", "not a setting")];
    let cfg = print_config(&[], &config);
    assert_eq!((cfg.http.addr.as_str(), cfg.bus.nats_url.as_str()), (from_file, "nats://file:4222"));
    let env = [config[0], config[1], ("HERMES_HTTP__ADDR", from_env)];
    assert_eq!(print_config(&[], &env).http.addr, from_env, "env beats file");
    let cfg = print_config(&["--http-addr", from_flag], &env);
    assert_eq!(cfg.http.addr, from_flag, "flag beats env");
    assert_eq!(cfg.bus.nats_url, "nats://file:4222", "what no later layer sets stays");
    assert_eq!(cfg.ops.addr, "127.0.0.1:9101", "the default");
}

/// Runs `accounts` in `cwd` on ephemeral ports (set in the environment, so flags in `args`
/// win), which must make it fail at start; returns its exit code and what it wrote to standard
/// error.
fn fails(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut child = Running(
        Command::new(ACCOUNTS)
            .args(args)
            .env("HERMES_HTTP__ADDR", "127.0.0.1:0")
            .env("HERMES_OPS__ADDR", "127.0.0.1:0")
            .envs(env.iter().copied())
            .current_dir(cwd)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn accounts"),
    );
    let status = exit_status(&mut child, Duration::from_secs(40));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err).expect("stderr");
    assert!(!status.success(), "accounts fails: {err}");
    (status.code().expect("an exit code, not a signal"), err)
}

#[test]
fn an_unknown_setting_stops_it_naming_the_key_before_it_makes_anything() {
    let cwd = fresh_dir("unknown-key");
    std::fs::create_dir_all(&cwd).expect("dir");
    let (code, err) = fails(&cwd, &[], &[("HERMES_HTTP__NOPE", "1"), ("HERMES_FOO", "not a setting")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("nope"), "names the unknown key: {err}");
    assert!(!cwd.join("hermes-data").exists(), "an invalid configuration creates no data directory");
}

/// Starts `accounts` on a new data directory holding `files`, with `args`, which must make it
/// fail: exit code 1 and one line on standard error, which is returned. `files` are left as
/// they were.
fn fails_at_start(args: &[&str], files: &[(&str, &[u8])]) -> String {
    let dir = fresh_dir("startup-error");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).expect("dir");
    for (name, bytes) in files {
        std::fs::write(data.join(name), bytes).expect("write");
    }
    let data_arg = data.display().to_string();
    let (code, err) = fails(&dir, &[args, &["--data-dir", &data_arg]].concat(), &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.starts_with("accounts: ") && err.trim_end().lines().count() == 1, "one line: {err}");
    for (name, bytes) in files {
        assert_eq!(std::fs::read(data.join(name)).expect("read"), *bytes, "{name} is left as it was");
    }
    err
}

#[test]
fn startup_errors_are_one_line_naming_what_is_wrong() {
    for (key, bytes) in [("token.key", b"not a key".as_slice()), ("admin.key", [0xff, 0xfe].as_slice())] {
        let err = fails_at_start(&[], &[(key, bytes)]);
        assert!(err.contains(key), "names the key that cannot be used: {err}");
    }
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = taken.local_addr().expect("addr").to_string();
    let unreachable = format!("postgres://hermes@127.0.0.1:{}/hermes", hermes_tests::servers::free_port());
    for (args, named) in [
        (["--http-addr", &taken], "http.addr"),
        (["--http-database-url", &unreachable], "http.database_url"),
        (["--log-format", "xml"], "telemetry.log_format"),
    ] {
        let err = fails_at_start(&args, &[]);
        assert!(err.contains(named), "names {named}: {err}");
    }
}
