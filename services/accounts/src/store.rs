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
    pub avatar_url: String,
    /// Where the user sits in the organisation: `/`-separated units, e.g. `sales/emea`.
    pub org_unit: String,
    /// An enterprise admin: may use the admin endpoints of their own enterprise.
    pub admin: bool,
    pub disabled: bool,
    /// Access tokens issued before this instant (Unix ms) are refused.
    #[serde(skip)]
    pub tokens_revoked_ms: i64,
    #[serde(skip)]
    pub password_hash: String,
}

/// Profile fields to change; `None` leaves one as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileUpdate {
    pub display_name: Option<String>,
    pub signature: Option<String>,
    pub avatar_url: Option<String>,
    pub org_unit: Option<String>,
}

/// What presenting a refresh token found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshUse {
    /// Valid and now used up: issue the next one in `family`.
    Valid {
        user_id: String,
        family: String,
    },
    /// Already used once: someone replays it, so the family must be revoked.
    Reused {
        family: String,
    },
    Revoked,
    Expired,
    Unknown,
}

/// An enterprise's own ACL rules and auto-subscribe table (empty text: the default).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Policy {
    pub acl_rules: String,
    pub auto_subscribe: String,
    pub version: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ApiKey {
    pub id: String,
    pub enterprise_id: String,
    pub name: String,
    pub created_ms: i64,
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

    /// The user's display name changed: their followers' next contact sync reports them again
    /// (their follow rows move to a new version).
    fn touch_contact(&self, user_id: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn user_by_id(&self, user_id: &str) -> impl Future<Output = Result<Option<User>, StoreError>> + Send;
    /// Users of an enterprise in username order, after `after`, at most `limit`, optionally
    /// only those in `org_unit` or below it.
    fn list_users(
        &self,
        enterprise_id: &str,
        after: &str,
        limit: i64,
        org_unit: Option<&str>,
    ) -> impl Future<Output = Result<Vec<User>, StoreError>> + Send;
    /// Applies `update`; returns the user as it now is.
    fn update_profile(
        &self,
        user_id: &str,
        update: &ProfileUpdate,
    ) -> impl Future<Output = Result<User, StoreError>> + Send;
    fn set_flags(
        &self,
        user_id: &str,
        disabled: bool,
        admin: bool,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn set_password(&self, user_id: &str, password_hash: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Refuses the user's access tokens issued before `before_ms` and revokes every refresh token.
    fn revoke_tokens(&self, user_id: &str, before_ms: i64) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn insert_refresh(
        &self,
        hash: &str,
        user_id: &str,
        family: &str,
        expires_ms: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Uses up the refresh token with this hash, atomically: of two concurrent uses one wins.
    fn use_refresh(&self, hash: &str, now_ms: i64) -> impl Future<Output = Result<RefreshUse, StoreError>> + Send;
    fn revoke_refresh_family(&self, family: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The family of the refresh token with this hash, if there is one.
    fn refresh_family(&self, hash: &str) -> impl Future<Output = Result<Option<(String, String)>, StoreError>> + Send;
    /// Whether the login session (refresh family) `family` has been revoked: logged out, or
    /// ended for a reused refresh token. Its access tokens are refused too.
    fn session_revoked(&self, family: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;

    fn policy(&self, enterprise_id: &str) -> impl Future<Output = Result<Policy, StoreError>> + Send;
    /// Replaces the enterprise's tables; returns the new version.
    fn set_policy(
        &self,
        enterprise_id: &str,
        acl_rules: &str,
        auto_subscribe: &str,
    ) -> impl Future<Output = Result<i64, StoreError>> + Send;
    /// Every enterprise's own tables: how edges are primed at start.
    fn all_policies(&self) -> impl Future<Output = Result<Vec<(String, Policy)>, StoreError>> + Send;

    /// Org units in use and how many users each has, in name order.
    fn org_units(&self, enterprise_id: &str) -> impl Future<Output = Result<Vec<(String, i64)>, StoreError>> + Send;
    /// (enterprise id, user id, tokens revoked before) for revocations after `since_ms`: how
    /// edges are primed at start.
    fn revocations_since(
        &self,
        since_ms: i64,
    ) -> impl Future<Output = Result<Vec<(String, String, i64)>, StoreError>> + Send;

    fn create_api_key(
        &self,
        enterprise_id: &str,
        name: &str,
        key_hash: &str,
    ) -> impl Future<Output = Result<ApiKey, StoreError>> + Send;
    fn list_api_keys(&self, enterprise_id: &str) -> impl Future<Output = Result<Vec<ApiKey>, StoreError>> + Send;
    /// True if it existed.
    fn delete_api_key(&self, enterprise_id: &str, id: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;
    fn api_key_by_hash(&self, key_hash: &str) -> impl Future<Output = Result<Option<ApiKey>, StoreError>> + Send;
}

/// A new random identifier (128 bits, hex).
pub fn new_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    crate::files::hex(&b)
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
