//! The accounts data model and the store trait its backends implement (SQLite embedded,
//! Postgres in production).

use std::future::Future;

/// An enterprise (tenant): its `id` is the `%e` of topics and ACL rules.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Enterprise {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct User {
    pub id: String,
    pub enterprise_id: String,
    pub username: String,
    pub display_name: String,
    pub signature: String,
    pub disabled: bool,
    #[serde(skip)]
    pub password_hash: String,
}

/// One entry of a contacts sync: a user I follow, or stopped following (`following = false`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Contact {
    pub user_id: String,
    pub username: String,
    pub display_name: String,
    pub following: bool,
    /// They follow me back: we are friends.
    pub friend: bool,
    pub version: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("already exists")]
    Conflict,
    #[error("not found")]
    NotFound,
    #[error("database: {0}")]
    Database(String),
}

/// Maps a database error: unique violations are conflicts, the rest is an internal error.
pub(crate) fn db(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Conflict,
        _ => StoreError::Database(e.to_string()),
    }
}

/// What the accounts API needs from a database.
pub trait AccountStore: Send + Sync + 'static {
    fn create_enterprise(&self, name: &str) -> impl Future<Output = Result<Enterprise, StoreError>> + Send;
    fn enterprise_by_name(&self, name: &str) -> impl Future<Output = Result<Option<Enterprise>, StoreError>> + Send;
    fn create_user(
        &self,
        enterprise_id: &str,
        username: &str,
        display_name: &str,
        password_hash: &str,
    ) -> impl Future<Output = Result<User, StoreError>> + Send;
    fn user_by_name(
        &self,
        enterprise_id: &str,
        username: &str,
    ) -> impl Future<Output = Result<Option<User>, StoreError>> + Send;
    /// Records a follow or unfollow; returns the new relation version.
    fn set_follow(
        &self,
        enterprise_id: &str,
        follower_id: &str,
        followee_id: &str,
        following: bool,
    ) -> impl Future<Output = Result<i64, StoreError>> + Send;
    /// The follower's contacts changed after `since` (all current ones, no removals, when 0).
    fn contacts_since(
        &self,
        user_id: &str,
        since: i64,
    ) -> impl Future<Output = Result<Vec<Contact>, StoreError>> + Send;
    /// Every current follow as (enterprise id, follower username, followee username): how an
    /// edge's relation store is primed at start.
    fn all_follows(&self) -> impl Future<Output = Result<Vec<(String, String, String)>, StoreError>> + Send;
}

/// A new random identifier (128 bits, hex).
pub fn new_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
