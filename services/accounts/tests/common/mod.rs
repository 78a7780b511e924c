//! Shared by the accounts tests: unique names; Postgres databases come from the test harness.

pub use hermes_tests::servers::fresh_postgres_database;

pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{prefix}_{}_{nanos}", std::process::id())
}
