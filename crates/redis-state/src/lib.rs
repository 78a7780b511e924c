//! Hermes state on Redis, what edges read without the accounts database. [`RedisRelations`]:
//! per user, a set of whom they follow and a set of who follows them (keys from `wire::keys`),
//! both changed in one round trip. [`RedisAccess`]: enterprises' ACL tables and token
//! revocations. [`RedisOwners`]: which edge holds each session. [`RedisJournal`]: persistent
//! sessions. [`RedisStreams`]: durable streams and dead letters. [`RedisLoginGuard`]: the accounts tier's login limits, shared by its instances.
//! [`RedisPresence`]: each user's devices counted over the edges of a cluster.
//! [`StateDirectories`]: all of them, over one connection.

use std::sync::Arc;

use broker::access::{AccessDirectory, Revocation, Tables};
use broker::relations::{BoxFuture, RelationDirectory, UserRelations};
use prost::Message as _;

pub mod conn;
pub mod journal;
pub mod login;
pub mod owners;
pub mod presence;
pub mod streams;
pub use conn::{RedisConn, Replicas, connect};
pub use journal::RedisJournal;
pub use login::RedisLoginGuard;
pub use owners::RedisOwners;
pub use presence::RedisPresence;
pub use streams::RedisStreams;

/// What edges read from outside the accounts database: relations at CONNECT, enterprises' ACL
/// tables and revocations at start. The accounts tier writes both.
#[derive(Debug, Clone)]
pub struct StateDirectories {
    pub relations: Arc<dyn RelationDirectory>,
    pub access: Arc<dyn AccessDirectory>,
    /// Which edge holds each session.
    pub owners: Arc<dyn broker::owners::SessionOwners>,
    /// Where persistent sessions are written (on a connection of its own, so session writes
    /// never wait behind the others).
    pub journal: Arc<dyn broker::journal::SessionJournal>,
    /// The connection the directories share, for [`StateDirectories::login_guard`] and
    /// [`StateDirectories::presence`].
    conn: RedisConn,
    /// The session journal's connection, which durable streams share (both are written before
    /// a PUBLISH is acknowledged).
    journal_conn: RedisConn,
    /// What journal writes and stream appends wait for.
    replicas: Replicas,
}

impl StateDirectories {
    /// Both directories on the Redis at `redis_url` (`state.redis_url`), over one connection;
    /// `None` when it is empty.
    pub async fn connect(redis_url: &str) -> Result<Option<StateDirectories>, String> {
        Self::connect_waiting(redis_url, Replicas::default()).await
    }

    /// [`StateDirectories::connect`], with journal writes and stream appends counted only once
    /// `replicas` replicas have them (`state.redis_wait_replicas`).
    pub async fn connect_waiting(redis_url: &str, replicas: Replicas) -> Result<Option<StateDirectories>, String> {
        if redis_url.is_empty() {
            return Ok(None);
        }
        let conn = connect(redis_url).await.map_err(|e| format!("state.redis_url: {e}"))?;
        let journal = connect(redis_url).await.map_err(|e| format!("state.redis_url: {e}"))?;
        match replicas.short_on(&journal).await {
            Ok(None) => {}
            Ok(Some(have)) => tracing::warn!(
                "state.redis_wait_replicas is {} but Redis has {have} replica(s) that confirm: until it has {}, \
                 every session-journal write and stream append fails, and PUBLISHes to persistent sessions \
                 and durable streams are not acknowledged",
                replicas.0,
                replicas.0
            ),
            Err(e) => tracing::warn!(error = %e, "cannot count Redis replicas for state.redis_wait_replicas"),
        }
        Ok(Some(StateDirectories {
            relations: Arc::new(RedisRelations::new(conn.clone())),
            access: Arc::new(RedisAccess::new(conn.clone())),
            owners: Arc::new(RedisOwners::new(conn.clone())),
            journal: Arc::new(RedisJournal::new(journal.clone()).waiting_for(replicas)),
            conn,
            journal_conn: journal,
            replicas,
        }))
    }

    /// Durable streams and dead letters on the same Redis, kept for `retention`.
    pub fn streams(&self, retention: broker::streams::Retention) -> Arc<dyn broker::streams::StreamStore> {
        Arc::new(RedisStreams::new(self.journal_conn.clone(), retention).waiting_for(self.replicas))
    }

    /// The edges' presence counters on the same Redis, over the connection the directories
    /// share.
    pub fn presence(&self) -> Arc<dyn broker::presence::PresenceDirectory> {
        Arc::new(RedisPresence::new(self.conn.clone()))
    }

    /// The accounts tier's login limits on the same Redis, over the same connection.
    pub fn login_guard(&self, limits: broker::login::LoginLimits) -> RedisLoginGuard {
        RedisLoginGuard::new(self.conn.clone(), limits)
    }

    /// The directories' mark, `fresh` unless Redis has one ([`mark`]): a node that finds
    /// another than it found before knows Redis lost what the directories were filled with
    /// (it restarted without its data, or was flushed), and revocations, ACL tables and
    /// relations must be written again.
    pub async fn mark(&self, fresh: &str) -> Result<String, String> {
        mark(&self.conn, wire::keys::DIRECTORIES_MARK, fresh).await
    }
}

/// The value of the mark `key`, set to `fresh` unless Redis has one: it changes only when Redis
/// loses its data, so a node that finds another mark than it found before knows what it wrote
/// is gone.
pub(crate) async fn mark(conn: &RedisConn, key: &str, fresh: &str) -> Result<String, String> {
    let mut pipe = redis::pipe();
    pipe.cmd("SET").arg(key).arg(fresh).arg("NX").ignore().cmd("GET").arg(key);
    let (mark,): (String,) = pipe.query_async(&mut conn.clone()).await.map_err(|e| format!("mark {key}: {e}"))?;
    Ok(mark)
}

#[derive(Clone)]
pub struct RedisRelations {
    conn: RedisConn,
}

impl std::fmt::Debug for RedisRelations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisRelations")
    }
}

impl RedisRelations {
    pub fn new(conn: RedisConn) -> Self {
        RedisRelations { conn }
    }

    pub async fn connect(url: &str) -> Result<RedisRelations, String> {
        connect(url).await.map(Self::new)
    }
}

impl RelationDirectory for RedisRelations {
    fn load<'a>(&'a self, enterprise: &'a str, user: &'a str) -> BoxFuture<'a, Result<UserRelations, String>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let (mut follows, mut followers, mut groups): (Vec<String>, Vec<String>, Vec<String>) = redis::pipe()
                .smembers(wire::keys::follows(enterprise, user))
                .smembers(wire::keys::followers(enterprise, user))
                .smembers(wire::keys::groups(enterprise, user))
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            follows.sort();
            followers.sort();
            groups.sort();
            Ok(UserRelations { follows, followers, groups })
        })
    }

    fn set_follow<'a>(
        &'a self,
        enterprise: &'a str,
        follower: &'a str,
        followee: &'a str,
        following: bool,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let (f, r) = (wire::keys::follows(enterprise, follower), wire::keys::followers(enterprise, followee));
            // Two users' keys, two hash slots: two commands, not a transaction. Each is
            // idempotent, so writing the change again repairs a half-written one.
            let mut pipe = redis::pipe();
            if following {
                pipe.sadd(&f, followee).ignore().sadd(&r, follower).ignore();
            } else {
                pipe.srem(&f, followee).ignore().srem(&r, follower).ignore();
            }
            pipe.query_async::<()>(&mut conn).await.map_err(|e| e.to_string())
        })
    }

    fn set_member<'a>(
        &'a self,
        enterprise: &'a str,
        group: &'a str,
        user: &'a str,
        member: bool,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let k = wire::keys::groups(enterprise, user);
            let mut cmd = redis::cmd(if member { "SADD" } else { "SREM" });
            cmd.arg(k).arg(group);
            cmd.query_async::<()>(&mut conn).await.map_err(|e| e.to_string())
        })
    }
}

/// The access directory on Redis: enterprises' tables and revocations in three hashes (keys
/// from `wire::keys`); "newer wins" is decided inside Redis by a script, so concurrent writers
/// cannot roll anything back.
#[derive(Clone)]
pub struct RedisAccess {
    conn: RedisConn,
}

impl std::fmt::Debug for RedisAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisAccess")
    }
}

/// KEYS: versions, tables. ARGV: enterprise, version, encoded tables.
const SAVE_TABLES: &str = r"
local v = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '-1')
if v < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
end
return 1";

/// KEYS: revocations. ARGV: field, before.
const SAVE_REVOCATION: &str = r"
local v = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '-9007199254740991')
if v < tonumber(ARGV[2]) then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 1";

/// The revocations hash's field: `enterprise\tuser`, plus `\tsession` for one session's tokens.
fn revocation_field(r: &Revocation) -> String {
    if r.session.is_empty() {
        format!("{}\t{}", r.enterprise, r.user_id)
    } else {
        format!("{}\t{}\t{}", r.enterprise, r.user_id, r.session)
    }
}

impl RedisAccess {
    pub fn new(conn: RedisConn) -> Self {
        RedisAccess { conn }
    }

    pub async fn connect(url: &str) -> Result<RedisAccess, String> {
        connect(url).await.map(Self::new)
    }
}

impl AccessDirectory for RedisAccess {
    fn save_tables<'a>(&'a self, enterprise: &'a str, t: &'a Tables) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let encoded = wire::pb::AclChanged {
                version: t.version,
                acl_rules: t.acl_rules.clone(),
                auto_subscribe: t.auto_subscribe.clone(),
            }
            .encode_to_vec();
            crate::script(SAVE_TABLES)
                .key(wire::keys::TABLE_VERSIONS)
                .key(wire::keys::TABLES)
                .arg(enterprise)
                .arg(t.version)
                .arg(encoded)
                .invoke_async::<i64>(&mut self.conn.clone())
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
    }

    fn tables(&self) -> BoxFuture<'_, Result<Vec<(String, Tables)>, String>> {
        Box::pin(async move {
            let all: Vec<(String, Vec<u8>)> = redis::cmd("HGETALL")
                .arg(wire::keys::TABLES)
                .query_async(&mut self.conn.clone())
                .await
                .map_err(|e| e.to_string())?;
            let mut out = Vec::with_capacity(all.len());
            for (enterprise, bytes) in all {
                let t = wire::pb::AclChanged::decode(bytes.as_slice()).map_err(|e| format!("{enterprise}: {e}"))?;
                out.push((
                    enterprise,
                    Tables { version: t.version, acl_rules: t.acl_rules, auto_subscribe: t.auto_subscribe },
                ));
            }
            out.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(out)
        })
    }

    fn save_revocation<'a>(&'a self, r: &'a Revocation) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            crate::script(SAVE_REVOCATION)
                .key(wire::keys::REVOCATIONS)
                .arg(revocation_field(r))
                .arg(r.before_ms)
                .invoke_async::<i64>(&mut self.conn.clone())
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
    }

    fn revocations(&self, since_ms: i64) -> BoxFuture<'_, Result<Vec<Revocation>, String>> {
        Box::pin(async move {
            let all: Vec<(String, i64)> = redis::cmd("HGETALL")
                .arg(wire::keys::REVOCATIONS)
                .query_async(&mut self.conn.clone())
                .await
                .map_err(|e| e.to_string())?;
            let mut out: Vec<Revocation> = all
                .into_iter()
                .filter(|(_, before)| *before >= since_ms)
                .filter_map(|(field, before_ms)| {
                    let mut parts = field.splitn(3, '\t');
                    let (e, u) = (parts.next()?, parts.next()?);
                    let session = parts.next().unwrap_or_default().to_owned();
                    Some(Revocation { enterprise: e.to_owned(), user_id: u.to_owned(), before_ms, session })
                })
                .collect();
            out.sort();
            Ok(out)
        })
    }
}

/// Sends `pipe` on `conn`, its errors as text (on a cluster, its slots at once).
pub(crate) async fn query<T: redis::FromRedisValue>(conn: &RedisConn, pipe: &redis::Pipeline) -> Result<T, String> {
    pipe.query_async(&mut conn.clone()).await.map_err(|e| e.to_string())
}

/// [`query`], where each command must be done before any later one starts (on a cluster, its
/// slots one after the other: see [`conn::InOrder`]).
pub(crate) async fn query_in_order<T: redis::FromRedisValue>(
    conn: &RedisConn,
    pipe: &redis::Pipeline,
) -> Result<T, String> {
    pipe.query_async(&mut conn::InOrder(conn.clone())).await.map_err(|e| e.to_string())
}

/// A Lua script as Redis Cluster runs it: the `#!lua` line makes Redis (7.0 or later) refuse any
/// key it touches outside the hash slot of the keys it names, on a cluster node, so a script
/// that would break on Redis Cluster fails the contracts already (`servers::redis_cluster_node`
/// in the tests).
pub(crate) fn script(code: &str) -> redis::Script {
    redis::Script::new(&format!("#!lua\n{code}"))
}
