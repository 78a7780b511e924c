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

/// A login session (refresh family) that logged out: its access tokens issued before
/// `before_ms` are refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRevocation {
    pub enterprise_id: String,
    pub user_id: String,
    pub session: String,
    pub before_ms: i64,
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

/// What a member may do in a group: owners manage its members, members read and write its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Owner,
    Member,
}

impl Role {
    /// How the role is stored (`memberships.role`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Member => "member",
        }
    }

    /// A stored role. The migrations allow only `owner` and `member`; anything else would get
    /// the lesser right, never the greater.
    pub fn from_stored(v: &str) -> Role {
        if v == "owner" { Role::Owner } else { Role::Member }
    }
}

/// A group of an enterprise: its members read and write `{eid}/im/group/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Group {
    #[serde(skip)]
    pub id: String,
    pub enterprise_id: String,
    /// One spelling, like a username: it is a topic level.
    pub name: String,
    pub display_name: String,
    pub created_ms: i64,
}

/// A current member of a group.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Member {
    #[serde(skip)]
    pub user_id: String,
    pub username: String,
    pub display_name: String,
    pub role: Role,
}

/// One entry of a group sync: a group I belong to, or left (`member = false`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Membership {
    /// The group's name.
    pub name: String,
    pub display_name: String,
    /// The role held, or last held when `member` is false.
    pub role: Role,
    pub member: bool,
    pub version: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("already exists")]
    Conflict,
    #[error("not found")]
    NotFound,
    /// The change would leave a group without an owner, and nobody could manage it any more.
    #[error("a group keeps at least one owner")]
    LastOwner,
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
pub trait AccountStore: Clone + Send + Sync + 'static {
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
    /// Refuses the access tokens of login session `family` (of `user_id`) issued before
    /// `before_ms`: a device that logged out. Keeps the later of this and an earlier instant.
    fn revoke_session_tokens(
        &self,
        user_id: &str,
        family: &str,
        before_ms: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Login sessions whose access tokens were revoked after `since_ms`: how edges are primed
    /// at start, beside [`AccountStore::revocations_since`].
    fn session_revocations_since(
        &self,
        since_ms: i64,
    ) -> impl Future<Output = Result<Vec<SessionRevocation>, StoreError>> + Send;

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

    /// Creates group `name` with `owner_id` as its owner, in one transaction. A name taken in
    /// the enterprise, in any case, is a conflict.
    fn create_group(
        &self,
        enterprise_id: &str,
        name: &str,
        display_name: &str,
        owner_id: &str,
    ) -> impl Future<Output = Result<Group, StoreError>> + Send;
    fn group_by_name(
        &self,
        enterprise_id: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<Group>, StoreError>> + Send;
    /// Groups of an enterprise in name order, after `after`, at most `limit`.
    fn list_groups(
        &self,
        enterprise_id: &str,
        after: &str,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<Group>, StoreError>> + Send;
    /// The group's current members in username order.
    fn group_members(&self, group_id: &str) -> impl Future<Output = Result<Vec<Member>, StoreError>> + Send;
    /// The user's role in the group; `None` if they are not a member.
    fn group_role(
        &self,
        group_id: &str,
        user_id: &str,
    ) -> impl Future<Output = Result<Option<Role>, StoreError>> + Send;
    /// Makes the user a member with `role`, or (`None`) no member. Returns the new version of
    /// the user's memberships, or `None` when nothing changed. A change that would leave the
    /// group without an owner is refused with [`StoreError::LastOwner`]; an unknown group is
    /// [`StoreError::NotFound`].
    fn set_membership(
        &self,
        group_id: &str,
        user_id: &str,
        role: Option<Role>,
    ) -> impl Future<Output = Result<Option<i64>, StoreError>> + Send;
    /// The user's memberships changed after `since` (all current ones, no removals, when 0).
    fn groups_since(
        &self,
        user_id: &str,
        since: i64,
    ) -> impl Future<Output = Result<Vec<Membership>, StoreError>> + Send;
    /// Every current membership as (enterprise id, group name, username): how an edge's
    /// relation store is primed at start.
    fn all_memberships(&self) -> impl Future<Output = Result<Vec<(String, String, String)>, StoreError>> + Send;

    /// Keeps an account event until it is published; returns its number.
    fn outbox_add(&self, subject: &str, body: &[u8]) -> impl Future<Output = Result<i64, StoreError>> + Send;
    /// The event numbered `id` was published.
    fn outbox_remove(&self, id: i64) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// At most `limit` kept events written before `before_ms`, oldest first.
    fn outbox_older_than(
        &self,
        before_ms: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<OutboxEvent>, StoreError>> + Send;
}

/// An account event kept until it is published ([`AccountStore::outbox_add`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    pub id: i64,
    pub subject: String,
    pub body: Vec<u8>,
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
