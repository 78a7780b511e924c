//! The accounts REST API over real HTTP, against SQLite and against Postgres (a fresh database
//! on the server `POSTGRES_TEST_URL` names), with the account events it puts on the bus.

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use accounts::api::{AccountsState, router};
use accounts::config::AccountsConfig;
use accounts::files::{DiskFiles, LinkSigner};
use accounts::store::AccountStore;
use broker::relations::{MemoryRelations, RelationStore};
use bus::Bus;
use bus::memory::MemoryBus;
use prost::Message as _;
use sdk::http::{RawResponse, Response, request, request_raw};
use serde_json::{Value, json};
use wire::pb::{AccountEvent, account_event::Event};
use wire::token::Signer;

struct Api {
    addr: SocketAddr,
    verifier: wire::token::Verifier,
    events: tokio::sync::Mutex<bus::Subscription>,
    /// Where the API writes relations and memberships for edges to load at CONNECT.
    directory: Arc<MemoryRelations>,
}

const ADMIN: &str = "test-admin-key";

/// Limits loose enough for tests that log in often from 127.0.0.1.
fn test_config() -> AccountsConfig {
    AccountsConfig {
        token_ttl_secs: 300,
        login_attempts_per_ip_per_minute: 0,
        login_attempts_per_account_per_minute: 0,
        ..AccountsConfig::default()
    }
}

async fn start_on<S: AccountStore>(store: S, cfg: AccountsConfig) -> Api {
    start_with(store, cfg, |_| {}).await
}

/// Like [`start_on`], with the state changed by `tweak` before the API serves it.
async fn start_with<S: AccountStore>(store: S, cfg: AccountsConfig, tweak: impl FnOnce(&mut AccountsState<S>)) -> Api {
    let signer = Signer::generate().expect("keys");
    let verifier = signer.verifier().clone();
    let bus = Arc::new(MemoryBus::default());
    let events = bus.subscribe(wire::subjects::ALL_ACCOUNT_EVENTS).await.expect("subscribe");
    let files = Arc::new(DiskFiles::new(std::env::temp_dir().join(common::unique("hermes-files"))));
    let links = LinkSigner::new(b"test link key".to_vec());
    let mut state = AccountsState::new(store, signer, cfg, ADMIN.into(), bus, files, links);
    let directory = Arc::new(MemoryRelations::default());
    state.directory = Some(directory.clone());
    tweak(&mut state);
    let addr = serve(router(Arc::new(state))).await;
    Api { addr, verifier, events: tokio::sync::Mutex::new(events), directory }
}

async fn sqlite(cfg: AccountsConfig) -> Api {
    let dir = std::env::temp_dir().join(common::unique("hermes-accounts"));
    std::fs::create_dir_all(&dir).expect("dir");
    let store = accounts::sqlite::SqliteStore::open(&dir.join("accounts.db")).await.expect("sqlite");
    start_on(store, cfg).await
}

async fn postgres(cfg: AccountsConfig) -> Option<Api> {
    let url = common::fresh_postgres_database().await?;
    let store = accounts::postgres::PgStore::connect(&url, 4).await.expect("postgres");
    Some(start_on(store, cfg).await)
}

/// Runs `test` against the API on SQLite, then on Postgres.
async fn both<F, Fut>(cfg: AccountsConfig, test: F)
where
    F: Fn(Api) -> Fut,
    Fut: Future<Output = ()>,
{
    test(sqlite(cfg.clone()).await).await;
    if let Some(api) = postgres(cfg).await {
        test(api).await;
    }
}

async fn serve(r: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let service = r.into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, service).await });
    addr
}

impl Api {
    async fn call(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Option<Value>) -> Response {
        request(self.addr, method, path, headers, body.as_ref(), Duration::from_secs(10)).await.expect("http")
    }

    async fn raw(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> RawResponse {
        request_raw(self.addr, method, path, headers, body, Duration::from_secs(10)).await.expect("http")
    }

    async fn admin(&self, path: &str, body: Value) -> Response {
        self.call("POST", path, &[("X-Admin-Key", ADMIN)], Some(body)).await
    }

    async fn try_login(&self, user: &str, password: &str) -> Response {
        let body = json!({"enterprise": "acme", "username": user, "password": password});
        self.call("POST", "/v1/login", &[], Some(body)).await
    }

    async fn login(&self, user: &str) -> Value {
        let r = self.try_login(user, "correct horse").await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        r.body
    }

    /// The access token of a fresh login, as an `Authorization` value.
    async fn bearer(&self, user: &str) -> String {
        bearer(self.login(user).await["access_token"].as_str().expect("token"))
    }

    /// Like [`Api::bearer`], for a user of another enterprise.
    async fn bearer_in(&self, enterprise: &str, user: &str) -> String {
        let body = json!({"enterprise": enterprise, "username": user, "password": "correct horse"});
        let r = self.call("POST", "/v1/login", &[], Some(body)).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        bearer(r.body["access_token"].as_str().expect("token"))
    }

    /// `method path` with `token` as the `Authorization` value.
    async fn as_user(&self, token: &str, method: &str, path: &str, body: Option<Value>) -> Response {
        self.call(method, path, &[("Authorization", token)], body).await
    }

    /// `method path` as the operator.
    async fn as_operator(&self, method: &str, path: &str, body: Option<Value>) -> Response {
        self.call(method, path, &[("X-Admin-Key", ADMIN)], body).await
    }

    async fn seed(&self) {
        assert_eq!(self.admin("/v1/enterprises", json!({"name": "acme"})).await.status, 201);
        for u in ["alice", "bob", "carol"] {
            let r = self.admin("/v1/enterprises/acme/users", json!({"username": u, "password": "correct horse"})).await;
            assert_eq!(r.status, 201, "{:?}", r.body);
        }
        self.drain_events().await;
    }

    async fn next_account_event(&self) -> AccountEvent {
        let mut events = self.events.lock().await;
        let m = tokio::time::timeout(Duration::from_secs(5), events.next()).await.expect("an event").expect("bus open");
        let e = AccountEvent::decode(m.payload).expect("protobuf");
        assert_eq!(m.subject, wire::subjects::account_events(&e.enterprise_id));
        e
    }

    async fn next_event(&self) -> Event {
        self.next_account_event().await.event.expect("event set")
    }

    /// The next event, which must be a group membership change:
    /// (enterprise, group, username, member).
    async fn next_membership(&self) -> (String, String, String, bool) {
        let e = self.next_account_event().await;
        match e.event {
            Some(Event::GroupMembershipChanged(g)) => (e.enterprise_id, g.group, g.username, g.member),
            other => panic!("{other:?}"),
        }
    }

    /// No event arrives for a while: nothing changed.
    async fn no_event(&self) {
        let mut events = self.events.lock().await;
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), events.next()).await {
            panic!("unexpected event: {:?}", AccountEvent::decode(m.payload));
        }
    }

    async fn drain_events(&self) {
        let mut events = self.events.lock().await;
        while tokio::time::timeout(Duration::from_millis(50), events.next()).await.is_ok() {}
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test(flavor = "multi_thread")]
async fn login_returns_tokens_the_edge_can_verify() {
    both(test_config(), |api| async move {
        api.seed().await;
        let body = api.login("alice").await;
        let token = body["access_token"].as_str().expect("token");
        let claims = api.verifier.verify(token).expect("verifies with the public key alone");
        assert_eq!((claims.username.as_str(), claims.enterprise_id.as_str()), ("alice", "acme"));
        assert_eq!(body["user_id"], claims.user_id);
        assert_eq!(body["contacts"]["full"], true);
        assert!(body["refresh_token"].as_str().is_some_and(|t| t.len() > 40), "{body}");
        let pk = api.call("GET", "/v1/token/public-key", &[], None).await;
        assert_eq!(pk.body["public_key"], api.verifier.to_paserk());
        let me = api.call("GET", "/v1/me", &[("Authorization", &bearer(token))], None).await;
        assert_eq!((me.status, me.body["username"].as_str()), (200, Some("alice")));
        assert!(me.body.get("password_hash").is_none(), "hashes never leave the service");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn follows_and_incremental_contact_sync() {
    both(test_config(), |api| async move {
        api.seed().await;
        let (a, b) = (api.bearer("alice").await, api.bearer("bob").await);
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
        let delta =
            api.call("GET", &format!("/v1/contacts?since={version}"), &[("Authorization", &a)], None).await.body;
        assert_eq!(delta["full"], false);
        let changes = delta["contacts"].as_array().expect("list");
        assert_eq!(changes.len(), 1, "{delta}");
        assert_eq!((changes[0]["username"].as_str(), changes[0]["following"].as_bool()), (Some("carol"), Some(false)));
        let path = format!("/v1/contacts?since={}", delta["version"]);
        let unchanged = api.call("GET", &path, &[("Authorization", &a)], None).await;
        assert!(unchanged.body["contacts"].as_array().expect("list").is_empty());
        // Every change went out on the bus, by username.
        let mut seen = Vec::new();
        for _ in 0..4 {
            match api.next_event().await {
                Event::RelationChanged(r) => seen.push((r.follower, r.followee, r.following)),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(seen[3], ("alice".into(), "carol".into(), false), "{seen:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refresh_tokens_rotate_and_a_reused_one_ends_the_session() {
    both(test_config(), |api| async move {
        api.seed().await;
        let first = api.login("alice").await["refresh_token"].as_str().expect("refresh").to_owned();
        let refresh = |t: &str| api.call("POST", "/v1/token/refresh", &[], Some(json!({"refresh_token": t})));
        let r = refresh(&first).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let second = r.body["refresh_token"].as_str().expect("rotated").to_owned();
        assert_ne!(second, first);
        api.verifier.verify(r.body["access_token"].as_str().expect("access")).expect("a new access token");
        // The first one again: someone copied it. Both holders lose the session.
        let replay = refresh(&first).await;
        assert_eq!(replay.status, 401);
        assert!(replay.body["message"].as_str().is_some_and(|m| m.contains("already used")), "{:?}", replay.body);
        assert_eq!(refresh(&second).await.status, 401, "the whole family is revoked");
        assert_eq!(refresh("hr_made_up").await.status, 401);

        // Logout ends one session, with its access tokens; others go on.
        let phone_login = api.login("alice").await;
        let phone = phone_login["refresh_token"].as_str().expect("refresh").to_owned();
        let phone_access = phone_login["access_token"].as_str().expect("access").to_owned();
        let phone_session = api.verifier.verify(&phone_access).expect("valid").session_id;
        let pc_login = api.login("alice").await;
        let pc = pc_login["refresh_token"].as_str().expect("refresh").to_owned();
        let pc_access = pc_login["access_token"].as_str().expect("access").to_owned();
        assert_ne!(phone_session, api.verifier.verify(&pc_access).expect("valid").session_id, "a session per login");
        api.drain_events().await;
        let out = api.call("POST", "/v1/logout", &[], Some(json!({"refresh_token": phone}))).await;
        assert_eq!(out.status, 204);
        assert_eq!(refresh(&phone).await.status, 401);
        let me = api.call("GET", "/v1/me", &[("Authorization", &bearer(&phone_access))], None).await;
        assert_eq!(me.status, 401, "the logged-out device's access token is revoked");
        let me = api.call("GET", "/v1/me", &[("Authorization", &bearer(&pc_access))], None).await;
        assert_eq!(me.status, 200, "the other device's is not");
        match api.next_event().await {
            Event::TokenRevoked(t) => assert_eq!((t.username.as_str(), t.session_id), ("alice", phone_session)),
            other => panic!("{other:?}"),
        }
        let pc = refresh(&pc).await;
        assert_eq!(pc.status, 200);

        // Logout everywhere: every refresh token and access token, and the edges are told.
        let access = bearer(pc.body["access_token"].as_str().expect("access"));
        let pc_refresh = pc.body["refresh_token"].as_str().expect("refresh").to_owned();
        let out =
            api.call("POST", "/v1/logout", &[("Authorization", &access)], Some(json!({"everywhere": true}))).await;
        assert_eq!(out.status, 204, "{:?}", out.body);
        assert_eq!(refresh(&pc_refresh).await.status, 401);
        let me = api.call("GET", "/v1/me", &[("Authorization", &access)], None).await;
        assert_eq!(me.status, 401, "the access token is revoked");
        match api.next_event().await {
            Event::TokenRevoked(t) => assert_eq!(t.username, "alice"),
            other => panic!("{other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        api.login("alice").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn logins_are_rate_limited_per_address_and_accounts_lock_after_failures() {
    let cfg = AccountsConfig {
        login_attempts_per_ip_per_minute: 8,
        login_failures_before_lockout: 3,
        lockout_secs: 60,
        ..test_config()
    };
    both(cfg, |api| async move {
        api.seed().await;
        for _ in 0..3 {
            assert_eq!(api.try_login("bob", "wrong password").await.status, 401);
        }
        let locked = api.try_login("bob", "correct horse").await;
        assert_eq!(
            (locked.status, locked.body["error"].as_str()),
            (429, Some("too_many_requests")),
            "{:?}",
            locked.body
        );
        assert!(locked.body["message"].as_str().is_some_and(|m| m.contains("locked")));
        assert_eq!(api.try_login("alice", "correct horse").await.status, 200, "other accounts are not locked");
        // Four attempts counted so far from 127.0.0.1 (a locked account's refusal is not one);
        // four more are allowed this minute.
        for user in ["carol", "carol", "alice", "alice"] {
            assert_eq!(api.try_login(user, "wrong password").await.status, 401);
        }
        let body = br#"{"enterprise":"acme","username":"alice","password":"correct horse"}"#;
        let r = api.raw("POST", "/v1/login", &[("Content-Type", "application/json")], body).await;
        assert_eq!(r.status, 429);
        let retry: u64 = r.header("retry-after").and_then(|v| v.parse().ok()).expect("Retry-After");
        assert!((1..=60).contains(&retry), "{retry}");
    })
    .await;
}

/// Two instances of the API on one database and one Redis, as two accounts nodes with
/// `state.redis_url`: one limit per address, one lockout per account. Without Redis, logins
/// fail closed.
#[tokio::test(flavor = "multi_thread")]
async fn instances_on_one_redis_share_login_limits_and_refuse_logins_without_it() {
    let redis = hermes_tests::servers::redis();
    let cfg = AccountsConfig {
        login_attempts_per_ip_per_minute: 5,
        login_failures_before_lockout: 3,
        lockout_secs: 60,
        ..test_config()
    };
    let dir = std::env::temp_dir().join(common::unique("hermes-accounts"));
    std::fs::create_dir_all(&dir).expect("dir");
    let store = accounts::sqlite::SqliteStore::open(&dir.join("accounts.db")).await.expect("sqlite");
    let mut instances = Vec::new();
    for _ in 0..2 {
        let conn = redis_state::connect(&redis.redis_url()).await.expect("redis");
        let guard = Arc::new(redis_state::RedisLoginGuard::new(conn, cfg.login_limits()));
        instances.push(start_with(store.clone(), cfg.clone(), |st| st.login_guard = guard).await);
    }
    let (a, b) = (&instances[0], &instances[1]);
    a.seed().await;
    for api in [a, b, a] {
        assert_eq!(api.try_login("bob", "wrong password").await.status, 401);
    }
    let locked = b.try_login("bob", "correct horse").await;
    assert_eq!((locked.status, locked.body["error"].as_str()), (429, Some("too_many_requests")), "{:?}", locked.body);
    assert!(locked.body["message"].as_str().is_some_and(|m| m.contains("locked")), "{:?}", locked.body);
    // Three attempts from 127.0.0.1 so far (the refusal is none): two more on either instance.
    assert_eq!(b.try_login("alice", "correct horse").await.status, 200);
    assert_eq!(a.try_login("carol", "correct horse").await.status, 200);
    let body = br#"{"enterprise":"acme","username":"alice","password":"correct horse"}"#;
    let r = b.raw("POST", "/v1/login", &[("Content-Type", "application/json")], body).await;
    assert_eq!(r.status, 429, "the sixth attempt this minute, whichever instance takes it");
    let retry: u64 = r.header("retry-after").and_then(|v| v.parse().ok()).expect("Retry-After");
    assert!((1..=60).contains(&retry), "{retry}");

    drop(redis);
    let r = a.try_login("alice", "correct horse").await;
    assert_eq!((r.status, r.body["error"].as_str()), (503, Some("unavailable")), "{:?}", r.body);
    assert!(r.body["message"].as_str().is_some_and(|m| m.contains("retry later")), "{:?}", r.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn disabling_a_user_refuses_their_tokens_and_tells_the_edges() {
    both(test_config(), |api| async move {
        api.seed().await;
        let session = api.login("carol").await;
        let token = bearer(session["access_token"].as_str().expect("access"));
        let admin = [("X-Admin-Key", ADMIN)];
        let r = api.call("PATCH", "/v1/enterprises/acme/users/carol", &admin, Some(json!({"disabled": true}))).await;
        assert_eq!((r.status, r.body["disabled"].as_bool()), (200, Some(true)), "{:?}", r.body);
        match api.next_event().await {
            Event::UserDisabled(u) => assert_eq!(
                (u.username.as_str(), u.user_id.as_str()),
                ("carol", session["user_id"].as_str().unwrap_or(""))
            ),
            other => panic!("{other:?}"),
        }
        let r = api.try_login("carol", "correct horse").await;
        assert_eq!((r.status, r.body["error"].as_str()), (403, Some("disabled")));
        assert_eq!(api.call("GET", "/v1/me", &[("Authorization", &token)], None).await.status, 403);
        let refresh = json!({"refresh_token": session["refresh_token"]});
        assert_eq!(api.call("POST", "/v1/token/refresh", &[], Some(refresh)).await.status, 401);
        // Enabled again, carol logs in; an admin can also just end her sessions.
        let r = api.call("PATCH", "/v1/enterprises/acme/users/carol", &admin, Some(json!({"disabled": false}))).await;
        assert_eq!(r.status, 200);
        tokio::time::sleep(Duration::from_millis(2)).await;
        api.login("carol").await;
        let r = api.call("POST", "/v1/enterprises/acme/users/carol/revoke-tokens", &admin, None).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        match api.next_event().await {
            Event::TokenRevoked(t) => assert_eq!(t.issued_before_ms, r.body["revoked_before_ms"].as_i64().unwrap_or(0)),
            other => panic!("{other:?}"),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn profiles_signatures_org_units_and_paged_user_lists() {
    both(test_config(), |api| async move {
        api.seed().await;
        let bob = api.bearer("bob").await;
        let auth = [("Authorization", bob.as_str())];
        let r = api.call("PATCH", "/v1/me", &auth, Some(json!({"signature": "on holiday", "display_name": "Bob B."}))).await;
        assert_eq!((r.status, r.body["signature"].as_str()), (200, Some("on holiday")), "{:?}", r.body);
        match api.next_event().await {
            Event::ProfileChanged(p) => assert!(p.signature_changed && p.signature == "on holiday" && p.display_name == "Bob B."),
            other => panic!("{other:?}"),
        }
        let r = api.call("PATCH", "/v1/me", &auth, Some(json!({"display_name": "Bobby"}))).await;
        assert_eq!(r.status, 200);
        match api.next_event().await {
            Event::ProfileChanged(p) => assert!(!p.signature_changed, "only the name changed"),
            other => panic!("{other:?}"),
        }
        let r = api.call("PATCH", "/v1/me", &auth, Some(json!({"org_unit": "board"}))).await;
        assert_eq!(r.status, 403, "users do not move themselves in the organisation");

        let admin = [("X-Admin-Key", ADMIN)];
        for (u, unit) in [("alice", "sales/emea"), ("bob", "sales"), ("carol", "it")] {
            let path = format!("/v1/enterprises/acme/users/{u}");
            assert_eq!(api.call("PATCH", &path, &admin, Some(json!({"org_unit": unit}))).await.status, 200);
        }
        let page1 = api.call("GET", "/v1/enterprises/acme/users?limit=2", &admin, None).await.body;
        let names = |v: &Value| v["users"].as_array().expect("users").iter().map(|u| u["username"].as_str().unwrap_or("").to_owned()).collect::<Vec<_>>();
        assert_eq!((names(&page1), page1["next"].as_str()), (vec!["alice".to_owned(), "bob".to_owned()], Some("bob")));
        let page2 = api.call("GET", "/v1/enterprises/acme/users?limit=2&after=bob", &admin, None).await.body;
        assert_eq!((names(&page2), page2["next"].clone()), (vec!["carol".to_owned()], Value::Null));
        let sales = api.call("GET", "/v1/enterprises/acme/users?org_unit=sales", &admin, None).await.body;
        assert_eq!(names(&sales), vec!["alice", "bob"]);
        let units = api.call("GET", "/v1/enterprises/acme/org-units", &admin, None).await.body;
        assert_eq!(units["org_units"], json!([{"org_unit": "it", "users": 1}, {"org_unit": "sales", "users": 1}, {"org_unit": "sales/emea", "users": 1}]));

        // A password change ends every session.
        let r = api.call("PUT", "/v1/me/password", &auth, Some(json!({"current_password": "wrong one", "new_password": "new horse battery"}))).await;
        assert_eq!(r.status, 403);
        let r = api.call("PUT", "/v1/me/password", &auth, Some(json!({"current_password": "correct horse", "new_password": "new horse battery"}))).await;
        assert_eq!(r.status, 204, "{:?}", r.body);
        assert_eq!(api.call("GET", "/v1/me", &auth, None).await.status, 401);
        assert_eq!(api.try_login("bob", "correct horse").await.status, 401);
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(api.try_login("bob", "new horse battery").await.status, 200);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn enterprise_admins_administer_their_own_enterprise_only() {
    both(test_config(), |api| async move {
        api.seed().await;
        assert_eq!(api.admin("/v1/enterprises", json!({"name": "globex"})).await.status, 201);
        let r = api
            .admin(
                "/v1/enterprises/acme/users",
                json!({"username": "root", "password": "correct horse", "admin": true}),
            )
            .await;
        assert_eq!((r.status, r.body["admin"].as_bool()), (201, Some(true)));
        let root = api.bearer("root").await;
        let alice = api.bearer("alice").await;
        let new_user = json!({"username": "dave", "password": "correct horse", "org_unit": "it"});
        let r =
            api.call("POST", "/v1/enterprises/acme/users", &[("Authorization", &root)], Some(new_user.clone())).await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        let r =
            api.call("POST", "/v1/enterprises/globex/users", &[("Authorization", &root)], Some(new_user.clone())).await;
        assert_eq!((r.status, r.body["error"].as_str()), (403, Some("forbidden")));
        let r = api.call("POST", "/v1/enterprises/acme/users", &[("Authorization", &alice)], Some(new_user)).await;
        assert_eq!(r.status, 403, "not an admin");
        let r =
            api.call("POST", "/v1/enterprises", &[("Authorization", &root)], Some(json!({"name": "initech"}))).await;
        assert_eq!(r.status, 403, "only the operator creates enterprises");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn acl_tables_are_validated_stored_and_published() {
    both(test_config(), |api| async move {
        api.seed().await;
        let admin = [("X-Admin-Key", ADMIN)];
        let shown = api.call("GET", "/v1/enterprises/acme/acl", &admin, None).await.body;
        assert_eq!((shown["version"].as_i64(), shown["acl_rules"].as_str()), (Some(0), Some("")));
        assert!(shown["defaults"]["acl_rules"].as_str().is_some_and(|t| t.contains("%e/im/msg/%u")));
        let bad = json!({"acl_rules": "pattern fly %e/#", "auto_subscribe": ""});
        let r = api.call("PUT", "/v1/enterprises/acme/acl", &admin, Some(bad)).await;
        assert_eq!(r.status, 400);
        assert!(r.body["message"].as_str().is_some_and(|m| m.contains("acl_rules")), "{:?}", r.body);
        let bad = json!({"acl_rules": "", "auto_subscribe": "%e/x nine"});
        let r = api.call("PUT", "/v1/enterprises/acme/acl", &admin, Some(bad)).await;
        assert!(r.body["message"].as_str().is_some_and(|m| m.contains("auto_subscribe")), "{:?}", r.body);
        // An enterprise's tables stay inside it: no other enterprise's topics, no `#`, no $SYS.
        for (rules, auto) in
            [("pattern readwrite #", ""), ("user alice\ntopic read globex/im/msg/ceo", ""), ("", "$SYS/# 0")]
        {
            let escape = json!({"acl_rules": rules, "auto_subscribe": auto});
            let r = api.call("PUT", "/v1/enterprises/acme/acl", &admin, Some(escape)).await;
            assert_eq!(r.status, 400, "{rules} {auto}");
            assert!(r.body["message"].as_str().is_some_and(|m| m.contains("outside the enterprise")), "{:?}", r.body);
        }
        let good = json!({"acl_rules": "pattern readwrite %e/team/#", "auto_subscribe": "%e/team/general 1"});
        let r = api.call("PUT", "/v1/enterprises/acme/acl", &admin, Some(good)).await;
        assert_eq!((r.status, r.body["version"].as_i64()), (200, Some(1)), "{:?}", r.body);
        match api.next_event().await {
            Event::AclChanged(a) => assert_eq!((a.version, a.auto_subscribe.as_str()), (1, "%e/team/general 1")),
            other => panic!("{other:?}"),
        }
        assert_eq!(api.call("GET", "/v1/enterprises/acme/acl", &admin, None).await.body["version"], 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn api_keys_show_their_secret_once() {
    both(test_config(), |api| async move {
        api.seed().await;
        let admin = [("X-Admin-Key", ADMIN)];
        let r = api.call("POST", "/v1/enterprises/acme/api-keys", &admin, Some(json!({"name": "billing"}))).await;
        assert_eq!(r.status, 201);
        assert!(r.body["key"].as_str().is_some_and(|k| k.starts_with("hk_")));
        let id = r.body["id"].as_str().expect("id").to_owned();
        let again = api.call("POST", "/v1/enterprises/acme/api-keys", &admin, Some(json!({"name": "billing"}))).await;
        assert_eq!(again.status, 409);
        let list = api.call("GET", "/v1/enterprises/acme/api-keys", &admin, None).await.body;
        assert_eq!(list["api_keys"].as_array().map(Vec::len), Some(1));
        assert!(list["api_keys"][0].get("key").is_none(), "secrets are not listed");
        let path = format!("/v1/enterprises/acme/api-keys/{id}");
        assert_eq!(api.call("DELETE", &path, &admin, None).await.status, 204);
        assert_eq!(api.call("DELETE", &path, &admin, None).await.status, 404);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn names_have_one_spelling_whatever_the_case() {
    both(test_config(), |api| async move {
        api.seed().await;
        let conflict = |r: &Response, what: &str| {
            assert_eq!((r.status, r.body["error"].as_str()), (409, Some("conflict")), "{what}: {:?}", r.body);
            assert!(r.body["message"].as_str().is_some_and(|m| m.contains("already exists")), "{:?}", r.body);
        };
        conflict(&api.admin("/v1/enterprises", json!({"name": "ACME"})).await, "ACME after acme");
        let alice = json!({"username": "Alice", "password": "correct horse"});
        conflict(&api.admin("/v1/enterprises/acme/users", alice).await, "Alice after alice");
        // Created in any case, kept (and answered) in lowercase.
        let r = api.admin("/v1/enterprises", json!({"name": "Globex"})).await;
        assert_eq!((r.status, r.body["id"].as_str(), r.body["name"].as_str()), (201, Some("globex"), Some("globex")));
        let r =
            api.admin("/v1/enterprises/GLOBEX/users", json!({"username": "Dave", "password": "correct horse"})).await;
        assert_eq!((r.status, r.body["username"].as_str()), (201, Some("dave")), "{:?}", r.body);
        assert_eq!(r.body["enterprise_id"], "globex");
        // Logging in as ALICE@AcMe is logging in as alice@acme: the token names the one spelling.
        let login = json!({"enterprise": "AcMe", "username": "ALICE", "password": "correct horse"});
        let r = api.call("POST", "/v1/login", &[], Some(login)).await;
        assert_eq!((r.status, r.body["username"].as_str()), (200, Some("alice")), "{:?}", r.body);
        let claims = api.verifier.verify(r.body["access_token"].as_str().expect("token")).expect("verifies");
        assert_eq!((claims.username.as_str(), claims.enterprise_id.as_str()), ("alice", "acme"));
        assert_eq!(claims.user_id, api.login("alice").await["user_id"].as_str().expect("id"));
        // Names in paths too.
        let r = api.call("GET", "/v1/enterprises/Acme/users/ALICE", &[("X-Admin-Key", ADMIN)], None).await;
        assert_eq!((r.status, r.body["id"].as_str()), (200, Some(claims.user_id.as_str())), "{:?}", r.body);
        let alice = api.bearer("alice").await;
        let r = api.call("PUT", "/v1/follows/Bob", &[("Authorization", &alice)], None).await;
        assert_eq!((r.status, r.body["username"].as_str()), (200, Some("bob")), "{:?}", r.body);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn names_start_with_a_letter_or_a_digit() {
    both(test_config(), |api| async move {
        api.seed().await;
        for bad in ["", ".", "..", "-", "_x", ".hidden", "-rf", "a/b", "\u{e9}t\u{e9}"] {
            let r = api.admin("/v1/enterprises", json!({"name": bad})).await;
            let user = json!({"username": bad, "password": "correct horse"});
            let u = api.admin("/v1/enterprises/acme/users", user).await;
            for (what, r) in [("enterprise", r), ("user", u)] {
                assert_eq!((r.status, r.body["error"].as_str()), (400, Some("invalid_request")), "{what} {bad:?}");
                let message = r.body["message"].as_str().unwrap_or_default();
                assert!(message.contains("starting with a letter or digit"), "{what} {bad:?}: {message}");
            }
        }
        for good in ["7eleven", "a.b_c-d"] {
            assert_eq!(api.admin("/v1/enterprises", json!({"name": good})).await.status, 201, "{good}");
            let user = json!({"username": good, "password": "correct horse"});
            assert_eq!(api.admin("/v1/enterprises/acme/users", user).await.status, 201, "{good}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn uploads_give_an_expiring_signed_link() {
    let cfg = AccountsConfig { max_upload_bytes: 64 * 1024, ..test_config() };
    both(cfg, |api| async move {
        api.seed().await;
        let alice = api.bearer("alice").await;
        let data: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        let headers = [("Authorization", alice.as_str()), ("Content-Type", "application/pdf")];
        let r = api.raw("POST", "/v1/files?name=Q3%20report.pdf", &headers, &data).await;
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        let link: Value = serde_json::from_slice(&r.body).expect("json");
        assert_eq!(
            (link["size"].as_u64(), link["content_type"].as_str(), link["file_name"].as_str()),
            (Some(50_000), Some("application/pdf"), Some("Q3 report.pdf"))
        );
        let url = link["url"].as_str().expect("url");
        let path =
            url.split_once(&api.addr.to_string()).map(|(_, p)| p.to_owned()).expect("the link points at this server");
        let got = api.raw("GET", &path, &[], b"").await;
        assert_eq!((got.status, got.header("content-type")), (200, Some("application/pdf")));
        assert_eq!(got.body, data, "the same bytes come back");
        assert!(got.header("content-disposition").is_some_and(|d| d.contains("Q3 report.pdf")));
        let tampered = path.replace("ct=application%2Fpdf", "ct=text%2Fhtml");
        assert_eq!(api.raw("GET", &tampered, &[], b"").await.status, 403, "the type is signed");
        let expired = path.replace("exp=", "exp=1");
        assert_eq!(api.raw("GET", &expired, &[], b"").await.status, 403);

        let big = vec![0u8; 64 * 1024 + 1];
        let r = api.raw("POST", "/v1/files?name=big.bin", &headers, &big).await;
        assert_eq!(r.status, 413);
        let r = api.raw("POST", "/v1/files?name=a.bin", &[("Authorization", alice.as_str())], b"x").await;
        assert_eq!(r.status, 415, "no content type");
        let r = api.raw("POST", "/v1/files?name=a%2Fb", &headers, b"x").await;
        assert_eq!(r.status, 400, "no slashes in names");
        let r = api.raw("POST", "/v1/files?name=a.bin", &[("Content-Type", "text/plain")], b"x").await;
        assert_eq!(r.status, 401);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_names_every_route_there_is() {
    let api = sqlite(test_config()).await;
    let doc = api.call("GET", "/openapi.json", &[], None).await.body;
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() >= 18, "{}", paths.len());
    for (path, ops) in paths {
        let concrete = path
            .replace("{enterprise}", "acme")
            .replace("{username}", "bob")
            .replace("{id}", "x")
            .replace("{sha256}", "ab")
            .replace("{group}", "ops");
        for method in ops.as_object().expect("operations").keys() {
            let r = api.call(&method.to_uppercase(), &concrete, &[], None).await;
            let missing = r.status == 405
                || (r.status == 404 && r.body["message"].as_str().is_some_and(|m| m.starts_with("no such endpoint")));
            assert!(!missing, "{method} {path} is documented but not served: {} {:?}", r.status, r.body);
            assert!(r.body["error"].is_string() || r.status < 400, "{method} {path}: JSON errors");
        }
    }
    let r = api.call("GET", "/v1/nothing-here", &[], None).await;
    assert_eq!((r.status, r.body["error"].as_str()), (404, Some("not_found")));
    let r = api.call("DELETE", "/v1/login", &[], None).await;
    assert_eq!((r.status, r.body["error"].as_str()), (405, Some("method_not_allowed")));
}

/// method, path, headers, body, expected status, expected error code
type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, Option<Value>, u16, &'a str);

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_json_errors_naming_the_problem() {
    let api = sqlite(test_config()).await;
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
        ("GET", "/v1/contacts?since=abc", vec![], None, 400, "invalid_request"),
        ("GET", "/v1/enterprises/acme/users?limit=0", vec![("X-Admin-Key", ADMIN)], None, 400, "invalid_request"),
        ("GET", "/v1/enterprises/acme/users?color=red", vec![("X-Admin-Key", ADMIN)], None, 400, "invalid_request"),
        ("GET", "/v1/enterprises/acme/users", vec![("X-Admin-Key", "wrong")], None, 403, "forbidden"),
        ("GET", "/v1/enterprises/none/users", vec![("X-Admin-Key", ADMIN)], None, 404, "not_found"),
        (
            "PATCH",
            "/v1/enterprises/acme/users/alice",
            vec![("X-Admin-Key", ADMIN)],
            Some(json!({"avatar_url": "javascript:x"})),
            400,
            "invalid_request",
        ),
        (
            "PATCH",
            "/v1/enterprises/acme/users/alice",
            vec![("X-Admin-Key", ADMIN)],
            Some(json!({"org_unit": "a//b"})),
            400,
            "invalid_request",
        ),
        (
            "PATCH",
            "/v1/enterprises/acme/users/alice",
            vec![("X-Admin-Key", ADMIN)],
            Some(json!({"nickname": "x"})),
            400,
            "invalid_request",
        ),
        ("GET", "/v1/groups", vec![], None, 401, "unauthorized"),
        ("GET", "/v1/groups?since=abc", vec![], None, 400, "invalid_request"),
        (
            "POST",
            "/v1/groups",
            vec![("Authorization", "Bearer nope")],
            Some(json!({"name": "ops"})),
            401,
            "unauthorized",
        ),
        ("PUT", "/v1/groups/ops/members/bob", vec![], None, 401, "unauthorized"),
        ("GET", "/v1/enterprises/acme/groups", vec![], None, 403, "forbidden"),
        ("GET", "/v1/enterprises/acme/groups/ops", vec![("X-Admin-Key", ADMIN)], None, 404, "not_found"),
        (
            "POST",
            "/v1/enterprises/acme/groups",
            vec![("X-Admin-Key", ADMIN)],
            Some(json!({"name": "ops"})),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/enterprises/acme/groups",
            vec![("X-Admin-Key", ADMIN)],
            Some(json!({"name": "ops", "owner": "nobody"})),
            404,
            "not_found",
        ),
        (
            "GET",
            "/v1/enterprises/acme/groups?org_unit=sales",
            vec![("X-Admin-Key", ADMIN)],
            None,
            400,
            "invalid_request",
        ),
        ("POST", "/v1/token/refresh", vec![], Some(json!({})), 400, "invalid_request"),
        ("POST", "/v1/logout", vec![], Some(json!({})), 400, "invalid_request"),
        ("POST", "/v1/logout", vec![], Some(json!({"everywhere": true})), 401, "unauthorized"),
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
    let alice = api.bearer("alice").await;
    let r = api.call("PUT", "/v1/follows/nobody", &[("Authorization", &alice)], None).await;
    assert_eq!((r.status, r.body["error"].as_str()), (404, Some("not_found")));
    let r = api.call("PATCH", "/v1/me", &[("Authorization", &alice)], Some(json!({"signature": "a\u{0007}b"}))).await;
    assert!(r.body["message"].as_str().is_some_and(|m| m.contains("signature")), "{:?}", r.body);
    let r = api.call("PUT", "/v1/follows/alice", &[("Authorization", &alice)], None).await;
    assert_eq!(r.status, 400, "cannot follow yourself");
}

#[tokio::test(flavor = "multi_thread")]
async fn groups_belong_to_their_members() {
    both(test_config(), |api| async move {
        api.seed().await;
        let (alice, bob, carol) = (api.bearer("alice").await, api.bearer("bob").await, api.bearer("carol").await);
        let changed =
            |group: &str, user: &str, member: bool| ("acme".to_owned(), group.to_owned(), user.to_owned(), member);

        // Created in any case, kept in lowercase; the creator is its owner.
        let r = api.as_user(&alice, "POST", "/v1/groups", Some(json!({"name": "ACME-Ops"}))).await;
        assert_eq!((r.status, r.body["name"].as_str()), (201, Some("acme-ops")), "{:?}", r.body);
        assert_eq!(r.body["display_name"], "ACME-Ops", "shown as typed");
        assert_eq!(r.body["members"], json!([{"username": "alice", "display_name": "alice", "role": "owner"}]));
        assert!(r.body.get("id").is_none(), "the internal id stays inside");
        assert_eq!(api.next_membership().await, changed("acme-ops", "alice", true));
        for (name, status, code) in
            [("acme-ops", 409, "conflict"), ("Acme-OPS", 409, "conflict"), ("..", 400, "invalid_request")]
        {
            let r = api.as_user(&bob, "POST", "/v1/groups", Some(json!({"name": name}))).await;
            assert_eq!((r.status, r.body["error"].as_str()), (status, Some(code)), "{name}: {:?}", r.body);
        }

        // The owner adds bob (no body needed), idempotently: the second time changes nothing.
        for _ in 0..2 {
            let r = api.as_user(&alice, "PUT", "/v1/groups/acme-ops/members/Bob", None).await;
            assert_eq!((r.status, r.body["role"].as_str()), (200, Some("member")), "{:?}", r.body);
        }
        assert_eq!(api.next_membership().await, changed("acme-ops", "bob", true));
        api.no_event().await;
        let groups_of = |user: &str| api.directory.groups("acme", user);
        assert_eq!((groups_of("alice"), groups_of("bob")), (vec!["acme-ops".into()], vec!["acme-ops".into()]));
        let r = api.as_user(&bob, "GET", "/v1/groups?since=0", None).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let groups = r.body["groups"].as_array().expect("list");
        assert_eq!(groups.len(), 1, "{:?}", r.body);
        assert_eq!(
            (groups[0]["name"].as_str(), groups[0]["role"].as_str(), groups[0]["member"].as_bool()),
            (Some("acme-ops"), Some("member"), Some(true))
        );
        let bob_version = r.body["version"].as_i64().expect("version");
        let r = api.as_user(&bob, "GET", "/v1/groups/acme-ops", None).await;
        let members: Vec<(&str, &str)> = r.body["members"]
            .as_array()
            .expect("members")
            .iter()
            .map(|m| (m["username"].as_str().unwrap_or(""), m["role"].as_str().unwrap_or("")))
            .collect();
        assert_eq!(members, vec![("alice", "owner"), ("bob", "member")]);

        // Carol is no member: for her the group does not exist, as one nobody made.
        let nothing = api.as_user(&carol, "GET", "/v1/groups/no-such-group", None).await;
        assert_eq!((nothing.status, nothing.body["error"].as_str()), (404, Some("not_found")));
        for (method, path) in [
            ("GET", "/v1/groups/acme-ops"),
            ("PUT", "/v1/groups/acme-ops/members/carol"),
            ("DELETE", "/v1/groups/acme-ops/members/bob"),
        ] {
            let r = api.as_user(&carol, method, path, None).await;
            assert_eq!((r.status, r.body["error"].as_str()), (404, Some("not_found")), "{method} {path}: {:?}", r.body);
        }
        assert!(
            api.as_user(&carol, "GET", "/v1/groups?since=0", None).await.body["groups"]
                .as_array()
                .is_some_and(Vec::is_empty)
        );

        // A plain member may not add, promote (not even themself) or remove others.
        for (method, path, body) in [
            ("PUT", "/v1/groups/acme-ops/members/carol", None),
            ("PUT", "/v1/groups/acme-ops/members/bob", Some(json!({"owner": true}))),
            ("DELETE", "/v1/groups/acme-ops/members/alice", None),
        ] {
            let r = api.as_user(&bob, method, path, body).await;
            assert_eq!((r.status, r.body["error"].as_str()), (403, Some("forbidden")), "{method} {path}: {:?}", r.body);
        }
        let r = api.as_user(&alice, "PUT", "/v1/groups/acme-ops/members/nobody", None).await;
        assert_eq!(r.status, 404, "only users of the enterprise join");
        let r = api.as_user(&alice, "PUT", "/v1/groups/acme-ops/members/bob", Some(json!({"owner": "yes"}))).await;
        assert_eq!((r.status, r.body["error"].as_str()), (400, Some("invalid_request")));
        api.no_event().await;

        // Bob leaves: his next sync says so.
        assert_eq!(api.as_user(&bob, "DELETE", "/v1/groups/acme-ops/members/bob", None).await.status, 204);
        assert_eq!(api.next_membership().await, changed("acme-ops", "bob", false));
        assert!(groups_of("bob").is_empty(), "the directory forgets it too");
        let r = api.as_user(&bob, "GET", &format!("/v1/groups?since={bob_version}"), None).await;
        assert_eq!(r.body["full"], false);
        let groups = r.body["groups"].as_array().expect("list");
        assert_eq!(groups.len(), 1, "{:?}", r.body);
        assert_eq!((groups[0]["name"].as_str(), groups[0]["member"].as_bool()), (Some("acme-ops"), Some(false)));
        assert!(r.body["version"].as_i64() > Some(bob_version));
        assert_eq!(api.as_user(&bob, "GET", "/v1/groups/acme-ops", None).await.status, 404, "no member any more");
        assert_eq!(api.as_user(&bob, "DELETE", "/v1/groups/acme-ops/members/bob", None).await.status, 404);

        // The last owner can neither leave nor step down; after promoting carol, alice may leave.
        for (method, body) in [("DELETE", None), ("PUT", Some(json!({"owner": false})))] {
            let r = api.as_user(&alice, method, "/v1/groups/acme-ops/members/alice", body).await;
            assert_eq!((r.status, r.body["error"].as_str()), (409, Some("last_owner")), "{method}: {:?}", r.body);
            assert!(r.body["message"].as_str().is_some_and(|m| m.contains("owner")), "{:?}", r.body);
        }
        let r = api.as_user(&alice, "PUT", "/v1/groups/acme-ops/members/carol", Some(json!({"owner": true}))).await;
        assert_eq!((r.status, r.body["role"].as_str()), (200, Some("owner")), "{:?}", r.body);
        assert_eq!(api.next_membership().await, changed("acme-ops", "carol", true));
        assert_eq!(api.as_user(&alice, "DELETE", "/v1/groups/acme-ops/members/alice", None).await.status, 204);
        assert_eq!(api.next_membership().await, changed("acme-ops", "alice", false));
        let r = api.as_user(&carol, "GET", "/v1/groups/acme-ops", None).await;
        assert_eq!(r.body["members"], json!([{"username": "carol", "display_name": "carol", "role": "owner"}]));
        assert_eq!((groups_of("alice"), groups_of("carol")), (vec![], vec!["acme-ops".into()]));
        api.no_event().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn another_enterprise_cannot_see_join_or_manage_groups() {
    both(test_config(), |api| async move {
        api.seed().await;
        assert_eq!(api.admin("/v1/enterprises", json!({"name": "evil"})).await.status, 201);
        let mallory = json!({"username": "mallory", "password": "correct horse", "admin": true});
        assert_eq!(api.admin("/v1/enterprises/evil/users", mallory).await.status, 201);
        api.drain_events().await;
        let (alice, mallory) = (api.bearer("alice").await, api.bearer_in("evil", "mallory").await);
        assert_eq!(api.as_user(&alice, "POST", "/v1/groups", Some(json!({"name": "ops"}))).await.status, 201);
        assert_eq!(api.as_user(&alice, "PUT", "/v1/groups/ops/members/bob", None).await.status, 200);
        api.drain_events().await;

        // Mallory, an admin of her own enterprise, knows the name: no answer tells her it exists.
        for (method, path) in [
            ("GET", "/v1/groups/ops"),
            ("PUT", "/v1/groups/ops/members/mallory"),
            ("PUT", "/v1/groups/ops/members/bob"),
            ("DELETE", "/v1/groups/ops/members/bob"),
        ] {
            let r = api.as_user(&mallory, method, path, None).await;
            assert_eq!((r.status, r.body["error"].as_str()), (404, Some("not_found")), "{method} {path}: {:?}", r.body);
        }
        for (method, path) in [
            ("GET", "/v1/enterprises/acme/groups"),
            ("GET", "/v1/enterprises/acme/groups/ops"),
            ("PUT", "/v1/enterprises/acme/groups/ops/members/mallory"),
            ("PUT", "/v1/enterprises/acme/groups/ops/members/bob"),
            ("DELETE", "/v1/enterprises/acme/groups/ops/members/bob"),
        ] {
            let r = api.as_user(&mallory, method, path, None).await;
            assert_eq!((r.status, r.body["error"].as_str()), (403, Some("forbidden")), "{method} {path}: {:?}", r.body);
        }
        let steal = json!({"name": "heist", "owner": "mallory"});
        let r = api.as_user(&mallory, "POST", "/v1/enterprises/acme/groups", Some(steal)).await;
        assert_eq!(r.status, 403);
        api.no_event().await;

        // Her own `ops` is another group: another enterprise, another topic (`evil/im/group/ops`).
        let r = api.as_user(&mallory, "POST", "/v1/groups", Some(json!({"name": "ops"}))).await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        assert_eq!(
            (r.body["enterprise_id"].as_str(), r.body["members"].as_array().map(Vec::len)),
            (Some("evil"), Some(1))
        );
        assert_eq!(api.next_membership().await, ("evil".into(), "ops".into(), "mallory".into(), true));
        let r = api.as_user(&mallory, "PUT", "/v1/groups/ops/members/alice", None).await;
        assert_eq!(r.status, 404, "alice is no user of evil: {:?}", r.body);
        let synced = api.as_user(&mallory, "GET", "/v1/groups?since=0", None).await.body;
        assert_eq!(synced["groups"].as_array().map(Vec::len), Some(1), "{synced}");
        let r = api.as_user(&alice, "GET", "/v1/groups/ops", None).await;
        let names: Vec<&str> =
            r.body["members"].as_array().expect("members").iter().filter_map(|m| m["username"].as_str()).collect();
        assert_eq!(names, vec!["alice", "bob"], "acme's group is untouched");
        assert_eq!(api.directory.groups("evil", "mallory"), vec!["ops".to_owned()]);
        assert!(api.directory.groups("acme", "mallory").is_empty());
        api.no_event().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operator_and_the_enterprise_admins_manage_any_group() {
    both(test_config(), |api| async move {
        api.seed().await;
        let (alice, bob) = (api.bearer("alice").await, api.bearer("bob").await);
        let r = api.as_operator("PATCH", "/v1/enterprises/acme/users/carol", Some(json!({"admin": true}))).await;
        assert_eq!(r.status, 200);
        let carol = api.bearer("carol").await;
        assert_eq!(api.as_user(&alice, "POST", "/v1/groups", Some(json!({"name": "ops"}))).await.status, 201);
        api.drain_events().await;

        // The operator: any group, and groups for someone.
        let r = api.as_operator("GET", "/v1/enterprises/ACME/groups/Ops", None).await;
        assert_eq!((r.status, r.body["name"].as_str()), (200, Some("ops")), "{:?}", r.body);
        let dev = json!({"name": "dev", "display_name": "Developers", "owner": "bob"});
        let r = api.as_operator("POST", "/v1/enterprises/acme/groups", Some(dev)).await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        assert_eq!(r.body["members"], json!([{"username": "bob", "display_name": "bob", "role": "owner"}]));
        assert_eq!(api.next_membership().await, ("acme".into(), "dev".into(), "bob".into(), true));
        let r =
            api.as_operator("PUT", "/v1/enterprises/acme/groups/ops/members/bob", Some(json!({"owner": true}))).await;
        assert_eq!((r.status, r.body["role"].as_str()), (200, Some("owner")), "{:?}", r.body);
        assert_eq!(api.next_membership().await, ("acme".into(), "ops".into(), "bob".into(), true));
        assert_eq!(api.as_operator("DELETE", "/v1/enterprises/acme/groups/ops/members/alice", None).await.status, 204);
        assert_eq!(api.next_membership().await, ("acme".into(), "ops".into(), "alice".into(), false));
        let r = api.as_operator("DELETE", "/v1/enterprises/acme/groups/ops/members/bob", None).await;
        assert_eq!((r.status, r.body["error"].as_str()), (409, Some("last_owner")), "not even the operator");
        let page = api.as_operator("GET", "/v1/enterprises/acme/groups?limit=1", None).await.body;
        assert_eq!((page["groups"][0]["name"].as_str(), page["next"].as_str()), (Some("dev"), Some("dev")), "{page}");
        let page = api.as_operator("GET", "/v1/enterprises/acme/groups?after=dev", None).await.body;
        assert_eq!(page["groups"][0]["name"], "ops", "{page}");

        // Carol, an admin of acme, in no group: she sees and manages them all, as a user too.
        assert_eq!(api.as_user(&carol, "GET", "/v1/groups/ops", None).await.status, 200);
        let r = api.as_user(&carol, "PUT", "/v1/groups/dev/members/alice", None).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(api.next_membership().await, ("acme".into(), "dev".into(), "alice".into(), true));
        let r = api.as_user(&carol, "DELETE", "/v1/enterprises/acme/groups/dev/members/alice", None).await;
        assert_eq!(r.status, 204);
        assert_eq!(api.next_membership().await, ("acme".into(), "dev".into(), "alice".into(), false));

        // Nobody else reaches the admin routes.
        for who in [alice.as_str(), bob.as_str()] {
            let r = api.as_user(who, "GET", "/v1/enterprises/acme/groups/dev", None).await;
            assert_eq!((r.status, r.body["error"].as_str()), (403, Some("forbidden")));
        }
        let r = api.call("GET", "/v1/enterprises/acme/groups", &[("X-Admin-Key", "wrong")], None).await;
        assert_eq!(r.status, 403);
        api.no_event().await;
    })
    .await;
}
