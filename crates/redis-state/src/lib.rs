//! Hermes state on Redis. [`RedisRelations`] is the relation directory edges read without the
//! accounts database: per user, a set of whom they follow and a set of who follows them
//! (keys from `wire::keys`), changed together in one MULTI.

use broker::relations::{BoxFuture, RelationDirectory, UserRelations};
use redis::aio::ConnectionManager;

#[derive(Clone)]
pub struct RedisRelations {
    conn: ConnectionManager,
}

impl std::fmt::Debug for RedisRelations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisRelations")
    }
}

impl RedisRelations {
    /// Connects to `url` (`redis://host:6379/0`); the connection manager reconnects by itself.
    pub async fn connect(url: &str) -> Result<RedisRelations, String> {
        let client = redis::Client::open(url).map_err(|e| format!("{url}: {e}"))?;
        let conn = client.get_connection_manager().await.map_err(|e| format!("{url}: {e}"))?;
        Ok(RedisRelations { conn })
    }
}

impl RelationDirectory for RedisRelations {
    fn load<'a>(&'a self, enterprise: &'a str, user: &'a str) -> BoxFuture<'a, Result<UserRelations, String>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let (mut follows, mut followers): (Vec<String>, Vec<String>) = redis::pipe()
                .smembers(wire::keys::follows(enterprise, user))
                .smembers(wire::keys::followers(enterprise, user))
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            follows.sort();
            followers.sort();
            Ok(UserRelations { follows, followers })
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
            let mut pipe = redis::pipe();
            pipe.atomic();
            if following {
                pipe.sadd(&f, followee).ignore().sadd(&r, follower).ignore();
            } else {
                pipe.srem(&f, followee).ignore().srem(&r, follower).ignore();
            }
            pipe.query_async::<()>(&mut conn).await.map_err(|e| e.to_string())
        })
    }
}
