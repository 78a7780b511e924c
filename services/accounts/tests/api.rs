//! The accounts REST API against its embedded SQLite backend, over real HTTP.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use accounts::api::{AccountsState, RelationHook, router};
use accounts::sqlite::SqliteStore;
use sdk::http::{Response, request};
use serde_json::{Value, json};
use wire::token::Signer;

#[derive(Default)]
struct Recorder(Mutex<Vec<(String, String, String, bool)>>);

impl RelationHook for Recorder {
    fn follow_changed(&self, e: &str, a: &str, b: &str, following: bool) {
        self.0.lock().expect("lock").push((e.into(), a.into(), b.into(), following));
    }
}

struct Api {
    addr: SocketAddr,
    hook: Arc<Recorder>,
    verifier: wire::token::Verifier,
}

const ADMIN: &str = "test-admin-key";

async fn start() -> Api {
    let dir = std::env::temp_dir().join(format!("hermes-accounts-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dir).expect("dir");
    let store = SqliteStore::open(&dir.join("accounts.db")).await.expect("sqlite");
    let signer = Signer::generate().expect("keys");
    let verifier = signer.verifier().clone();
    let hook = Arc::new(Recorder::default());
    let state = AccountsState {
        store,
        signer,
        token_ttl: Duration::from_secs(300),
        admin_key: ADMIN.into(),
        hook: hook.clone(),
    };
    let addr = serve(router(Arc::new(state))).await;
    Api { addr, hook, verifier }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

async fn serve(r: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, r).await });
    addr
}

impl Api {
    async fn call(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Option<Value>) -> Response {
        request(self.addr, method, path, headers, body.as_ref(), Duration::from_secs(10)).await.expect("http")
    }

    async fn admin(&self, path: &str, body: Value) -> Response {
        self.call("POST", path, &[("X-Admin-Key", ADMIN)], Some(body)).await
    }

    async fn login(&self, user: &str) -> Value {
        let r = self
            .call(
                "POST",
                "/v1/login",
                &[],
                Some(json!({"enterprise": "acme", "username": user, "password": "correct horse"})),
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        r.body
    }

    async fn seed(&self) {
        assert_eq!(self.admin("/v1/enterprises", json!({"name": "acme"})).await.status, 201);
        for u in ["alice", "bob", "carol"] {
            let r = self.admin("/v1/enterprises/acme/users", json!({"username": u, "password": "correct horse"})).await;
            assert_eq!(r.status, 201, "{:?}", r.body);
        }
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test(flavor = "multi_thread")]
async fn login_returns_a_token_the_edge_can_verify() {
    let api = start().await;
    api.seed().await;
    let body = api.login("alice").await;
    let token = body["access_token"].as_str().expect("token");
    let claims = api.verifier.verify(token).expect("verifies with the public key alone");
    assert_eq!((claims.username.as_str(), claims.enterprise_id.as_str()), ("alice", "acme"));
    assert_eq!(body["user_id"], claims.user_id);
    assert_eq!(body["contacts"]["full"], true);
    let pk = api.call("GET", "/v1/token/public-key", &[], None).await;
    assert_eq!(pk.body["public_key"], api.verifier.to_paserk());
}

#[tokio::test(flavor = "multi_thread")]
async fn follows_and_incremental_contact_sync() {
    let api = start().await;
    api.seed().await;
    let alice = api.login("alice").await["access_token"].as_str().expect("token").to_owned();
    let bob = api.login("bob").await["access_token"].as_str().expect("token").to_owned();
    let a = bearer(&alice);
    let b = bearer(&bob);
    assert_eq!(api.call("PUT", "/v1/follows/bob", &[("Authorization", &a)], None).await.status, 200);
    assert_eq!(api.call("PUT", "/v1/follows/carol", &[("Authorization", &a)], None).await.status, 200);
    assert_eq!(api.call("PUT", "/v1/follows/alice", &[("Authorization", &b)], None).await.status, 200);
    let full = api.call("GET", "/v1/contacts", &[("Authorization", &a)], None).await.body;
    let names: Vec<(&str, bool)> = full["contacts"]
        .as_array()
        .expect("list")
        .iter()
        .map(|c| (c["username"].as_str().unwrap_or(""), c["friend"] == true))
        .collect();
    assert_eq!(names, vec![("bob", true), ("carol", false)]);
    let version = full["version"].as_i64().expect("version");
    // Only what changed since then, removals included.
    assert_eq!(api.call("DELETE", "/v1/follows/carol", &[("Authorization", &a)], None).await.status, 200);
    let delta = api.call("GET", &format!("/v1/contacts?since={version}"), &[("Authorization", &a)], None).await.body;
    assert_eq!(delta["full"], false);
    let changes = delta["contacts"].as_array().expect("list");
    assert_eq!(changes.len(), 1, "{delta}");
    assert_eq!((changes[0]["username"].as_str(), changes[0]["following"].as_bool()), (Some("carol"), Some(false)));
    let unchanged =
        api.call("GET", &format!("/v1/contacts?since={}", delta["version"]), &[("Authorization", &a)], None).await;
    assert!(unchanged.body["contacts"].as_array().expect("list").is_empty());
    let seen = api.hook.0.lock().expect("lock").clone();
    assert_eq!(seen.len(), 4, "every change reaches the hook: {seen:?}");
    assert_eq!(seen[3], ("acme".into(), "alice".into(), "carol".into(), false));
}

/// method, path, headers, body, expected status, expected error code
type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, Option<Value>, u16, &'a str);

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_json_errors_naming_the_problem() {
    let api = start().await;
    api.seed().await;
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/v1/login",
            vec![],
            Some(json!({"enterprise": "acme", "username": "alice", "password": "wrong pass"})),
            401,
            "unauthorized",
        ),
        (
            "POST",
            "/v1/login",
            vec![],
            Some(json!({"enterprise": "nope", "username": "alice", "password": "x"})),
            401,
            "unauthorized",
        ),
        ("POST", "/v1/login", vec![], Some(json!({"enterprise": "acme", "username": "alice"})), 400, "invalid_request"),
        ("POST", "/v1/enterprises", vec![], Some(json!({"name": "globex"})), 403, "forbidden"),
        ("POST", "/v1/enterprises", vec![("X-Admin-Key", ADMIN)], Some(json!({"name": "acme"})), 409, "conflict"),
        ("POST", "/v1/enterprises", vec![("X-Admin-Key", ADMIN)], Some(json!({"name": "a/#"})), 400, "invalid_request"),
        (
            "POST",
            "/v1/enterprises/acme/users",
            vec![("X-Admin-Key", ADMIN)],
            Some(json!({"username": "x+y", "password": "long enough"})),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/enterprises/acme/users",
            vec![("X-Admin-Key", ADMIN)],
            Some(json!({"username": "dave", "password": "short"})),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/enterprises/none/users",
            vec![("X-Admin-Key", ADMIN)],
            Some(json!({"username": "dave", "password": "long enough"})),
            404,
            "not_found",
        ),
        ("GET", "/v1/contacts", vec![], None, 401, "unauthorized"),
        ("GET", "/v1/contacts", vec![("Authorization", "Bearer v4.public.forged")], None, 401, "unauthorized"),
        ("PUT", "/v1/follows/alice", vec![("Authorization", "Bearer nope")], None, 401, "unauthorized"),
    ];
    for (method, path, headers, body, status, code) in cases {
        let r = api.call(method, path, &headers, body.clone()).await;
        assert_eq!(
            (r.status, r.body["error"].as_str()),
            (status, Some(code)),
            "{method} {path} {body:?}: {:?}",
            r.body
        );
        assert!(r.body["message"].as_str().is_some_and(|m| !m.is_empty()), "{method} {path}: a message");
    }
    // Not JSON at all, and JSON without the content type.
    let raw =
        request(api.addr, "POST", "/v1/login", &[("Content-Type", "application/json")], None, Duration::from_secs(5))
            .await
            .expect("http");
    assert_eq!(raw.status, 400);
    let alice = api.login("alice").await["access_token"].as_str().expect("token").to_owned();
    let r = api.call("PUT", "/v1/follows/nobody", &[("Authorization", &bearer(&alice))], None).await;
    assert_eq!((r.status, r.body["error"].as_str()), (404, Some("not_found")));
    let r = api.call("PUT", "/v1/follows/alice", &[("Authorization", &bearer(&alice))], None).await;
    assert_eq!(r.status, 400, "cannot follow yourself");
}
