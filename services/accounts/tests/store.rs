//! One contract for every accounts backend, run against SQLite (embedded) and Postgres
//! (production). Postgres comes from `POSTGRES_TEST_URL`, which `scripts/test.sh` sets
//! after starting a throwaway server; each run gets a database of its own.

use accounts::postgres::PgStore;
use accounts::sqlite::SqliteStore;
use accounts::store::{AccountStore, StoreError};

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{prefix}_{}_{nanos}", std::process::id())
}

async fn contract<S: AccountStore>(s: &S) {
    let acme = s.create_enterprise("acme").await.expect("create");
    assert_eq!(acme.id, "acme");
    assert!(matches!(s.create_enterprise("acme").await, Err(StoreError::Conflict)));
    assert_eq!(s.enterprise_by_name("acme").await.expect("read"), Some(acme.clone()));
    assert_eq!(s.enterprise_by_name("globex").await.expect("read"), None);
    s.create_enterprise("globex").await.expect("create");

    let alice = s.create_user("acme", "alice", "Alice", "hash-a").await.expect("user");
    let bob = s.create_user("acme", "bob", "Bob", "hash-b").await.expect("user");
    let carol = s.create_user("acme", "carol", "Carol", "hash-c").await.expect("user");
    assert!(matches!(s.create_user("acme", "alice", "Again", "x").await, Err(StoreError::Conflict)));
    s.create_user("globex", "alice", "Other Alice", "hash-g").await.expect("same name, other enterprise");
    let found = s.user_by_name("acme", "alice").await.expect("read").expect("alice");
    assert_eq!((found.id.as_str(), found.password_hash.as_str(), found.disabled), (alice.id.as_str(), "hash-a", false));
    assert_eq!(s.user_by_name("acme", "nobody").await.expect("read"), None);

    let v1 = s.set_follow("acme", &alice.id, &bob.id, true).await.expect("follow");
    let v2 = s.set_follow("acme", &alice.id, &carol.id, true).await.expect("follow");
    let v3 = s.set_follow("acme", &bob.id, &alice.id, true).await.expect("follow");
    assert!(v1 < v2 && v2 < v3, "versions increase: {v1} {v2} {v3}");
    let full = s.contacts_since(&alice.id, 0).await.expect("contacts");
    let names: Vec<(&str, bool)> = full.iter().map(|c| (c.username.as_str(), c.friend)).collect();
    assert_eq!(names, vec![("bob", true), ("carol", false)]);
    let v4 = s.set_follow("acme", &alice.id, &carol.id, false).await.expect("unfollow");
    let delta = s.contacts_since(&alice.id, v3).await.expect("delta");
    assert_eq!(delta.len(), 1);
    assert_eq!((delta[0].username.as_str(), delta[0].following, delta[0].version), ("carol", false, v4));
    let full = s.contacts_since(&alice.id, 0).await.expect("contacts");
    assert_eq!(full.iter().map(|c| c.username.as_str()).collect::<Vec<_>>(), vec!["bob"], "full lists omit removals");
    let mut follows = s.all_follows().await.expect("all");
    follows.sort();
    assert_eq!(
        follows,
        vec![("acme".into(), "alice".into(), "bob".into()), ("acme".into(), "bob".into(), "alice".into())]
    );
}

#[tokio::test]
async fn sqlite_store_meets_the_contract() {
    let dir = std::env::temp_dir().join(unique("hermes-accounts-store"));
    std::fs::create_dir_all(&dir).expect("dir");
    let store = SqliteStore::open(&dir.join("accounts.db")).await.expect("open");
    contract(&store).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn postgres_store_meets_the_contract() {
    let Ok(url) = std::env::var("POSTGRES_TEST_URL") else {
        assert!(std::env::var_os("CI").is_none(), "CI must set POSTGRES_TEST_URL (scripts/test.sh starts Postgres)");
        eprintln!("skipped: POSTGRES_TEST_URL is not set (scripts/test.sh starts a Postgres and sets it)");
        return;
    };
    let admin = sqlx::PgPool::connect(&url).await.expect("connect to the test server");
    let name = unique("hermes_test");
    // `name` is made of a fixed prefix, the pid and a timestamp: nothing to inject.
    let create = sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"));
    sqlx::query(create).execute(&admin).await.expect("create database");
    let base = url.rsplit_once('/').map_or(url.as_str(), |(b, _)| b);
    let store = PgStore::connect(&format!("{base}/{name}"), 2).await.expect("connect and migrate");
    contract(&store).await;
}
