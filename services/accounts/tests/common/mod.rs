//! Shared by the accounts tests: unique names and a fresh Postgres database per test.

#![allow(dead_code)]

pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{prefix}_{}_{nanos}", std::process::id())
}

/// The URL of a new, empty database on the server `POSTGRES_TEST_URL` names (scripts/test.sh
/// starts one); `None` outside CI when it is not set. CI without it is an error.
pub async fn fresh_postgres_database() -> Option<String> {
    let Ok(url) = std::env::var("POSTGRES_TEST_URL") else {
        assert!(std::env::var_os("CI").is_none(), "CI must set POSTGRES_TEST_URL (scripts/test.sh starts Postgres)");
        eprintln!("skipped Postgres: POSTGRES_TEST_URL is not set (scripts/test.sh starts a Postgres and sets it)");
        return None;
    };
    let admin = sqlx::PgPool::connect(&url).await.expect("connect to the test server");
    let name = unique("hermes_test");
    // `name` is made of a fixed prefix, the pid and a timestamp: nothing to inject.
    let create = sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"));
    sqlx::query(create).execute(&admin).await.expect("create database");
    admin.close().await;
    let base = url.rsplit_once('/').map_or(url.as_str(), |(b, _)| b);
    Some(format!("{base}/{name}"))
}
