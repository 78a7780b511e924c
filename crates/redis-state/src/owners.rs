//! Which edge holds each session (`broker::owners`) on Redis:
//!
//! - `wire::keys::session_owner`: one string per session, `version|node`, with a week's
//!   expiry renewed at every claim (longer than any session waits for its client by default);
//! - `wire::keys::node_sessions`: per node, the set of sessions it owns;
//! - `wire::keys::OWNER_NODES`: the nodes, each until when it is alive or leased.
//!
//! Each call is one script, so the owner and the listings change together. The scripts name
//! the previous owner's set from the owner they read (Redis Cluster would need it declared).

use std::sync::LazyLock;

use broker::owners::Claimed;
use broker::relations::BoxFuture;
use redis::aio::ConnectionManager;

use crate::around;

/// How long an owner record outlives its last claim.
const OWNER_TTL_SECS: u64 = 7 * 24 * 3600;

/// The longest TTL or lease a node gets (about 34 years): a larger one is taken as this.
const MAX_TTL_MS: u64 = 1 << 40;

/// Dead nodes one heartbeat hands out at most.
const DEAD_PER_HEARTBEAT: u32 = 100;

/// KEYS: the session's owner, the claiming node's set. ARGV: node, TTL, the sets' name around
/// a node, the session. Returns `{version, previous or false}`.
static CLAIM: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"local old = redis.call('GET', KEYS[1])
        local version, previous = 1, false
        if old then
            local bar = string.find(old, '|', 1, true)
            version = tonumber(string.sub(old, 1, bar - 1)) + 1
            previous = string.sub(old, bar + 1)
            redis.call('SREM', ARGV[3] .. previous .. ARGV[4], ARGV[5])
        end
        redis.call('SET', KEYS[1], version .. '|' .. ARGV[1], 'EX', ARGV[2])
        redis.call('SADD', KEYS[2], ARGV[5])
        return {version, previous}",
    )
});

/// KEYS: the session's owner, the node's set. ARGV: node, the session.
static RELEASE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"local old = redis.call('GET', KEYS[1])
        if old and string.sub(old, string.find(old, '|', 1, true) + 1) == ARGV[1] then
            redis.call('DEL', KEYS[1])
            redis.call('SREM', KEYS[2], ARGV[2])
        end
        return 0",
    )
});

/// KEYS: the session's owner, the claiming node's set, `from`'s set. ARGV: node, from, TTL,
/// the session. Returns the new version, or nil if `from` does not own the session.
static CLAIM_FROM: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"redis.call('SREM', KEYS[3], ARGV[4])
        local old = redis.call('GET', KEYS[1])
        if not old then return false end
        local bar = string.find(old, '|', 1, true)
        if string.sub(old, bar + 1) ~= ARGV[2] then return false end
        local version = tonumber(string.sub(old, 1, bar - 1)) + 1
        redis.call('SET', KEYS[1], version .. '|' .. ARGV[1], 'EX', ARGV[3])
        redis.call('SADD', KEYS[2], ARGV[4])
        return version",
    )
});

/// KEYS: the nodes. ARGV: node, TTL ms, lease ms, most dead nodes to return. Returns the other
/// nodes whose time ran out, each now leased to the caller.
static HEARTBEAT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        redis.call('ZADD', KEYS[1], string.format('%.0f', now + tonumber(ARGV[2])), ARGV[1])
        local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now), 'LIMIT', 0, tonumber(ARGV[4]) + 1)
        local out = {}
        for _, n in ipairs(dead) do
            if n ~= ARGV[1] and #out < tonumber(ARGV[4]) then
                redis.call('ZADD', KEYS[1], string.format('%.0f', now + tonumber(ARGV[3])), n)
                table.insert(out, n)
            end
        end
        return out",
    )
});

/// KEYS: the nodes, the node's set. ARGV: node. Returns 1 if it was forgotten.
static FORGET_NODE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"if redis.call('SCARD', KEYS[2]) > 0 then return 0 end
        redis.call('ZREM', KEYS[1], ARGV[1])
        return 1",
    )
});

static NODE_SESSIONS: LazyLock<(String, String)> = LazyLock::new(|| around(wire::keys::node_sessions));

/// Session owners on Redis (see the module's documentation).
#[derive(Clone)]
pub struct RedisOwners {
    conn: ConnectionManager,
}

impl std::fmt::Debug for RedisOwners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisOwners")
    }
}

impl RedisOwners {
    pub fn new(conn: ConnectionManager) -> Self {
        RedisOwners { conn }
    }

    async fn run<T: redis::FromRedisValue>(&self, call: redis::ScriptInvocation<'_>) -> Result<T, String> {
        call.invoke_async(&mut self.conn.clone()).await.map_err(|e| e.to_string())
    }
}

impl broker::owners::SessionOwners for RedisOwners {
    fn claim<'a>(&'a self, session: &'a str, node: &'a str) -> BoxFuture<'a, Result<Claimed, String>> {
        Box::pin(async move {
            let mut call = CLAIM.prepare_invoke();
            call.key(wire::keys::session_owner(session)).key(wire::keys::node_sessions(node));
            call.arg(node).arg(OWNER_TTL_SECS).arg(&NODE_SESSIONS.0).arg(&NODE_SESSIONS.1).arg(session);
            let (version, previous): (u64, Option<String>) = self.run(call).await?;
            Ok(Claimed { version, previous })
        })
    }

    fn release<'a>(&'a self, session: &'a str, node: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let mut call = RELEASE.prepare_invoke();
            call.key(wire::keys::session_owner(session)).key(wire::keys::node_sessions(node));
            call.arg(node).arg(session);
            self.run::<i64>(call).await.map(drop)
        })
    }

    fn claim_from<'a>(
        &'a self,
        session: &'a str,
        node: &'a str,
        from: &'a str,
    ) -> BoxFuture<'a, Result<Option<Claimed>, String>> {
        Box::pin(async move {
            let mut call = CLAIM_FROM.prepare_invoke();
            call.key(wire::keys::session_owner(session))
                .key(wire::keys::node_sessions(node))
                .key(wire::keys::node_sessions(from));
            call.arg(node).arg(from).arg(OWNER_TTL_SECS).arg(session);
            let version: Option<u64> = self.run(call).await?;
            Ok(version.map(|version| Claimed { version, previous: Some(from.to_owned()) }))
        })
    }

    fn held_by<'a>(&'a self, node: &'a str, max: usize) -> BoxFuture<'a, Result<Vec<String>, String>> {
        Box::pin(async move {
            if max == 0 {
                return Ok(Vec::new());
            }
            redis::cmd("SRANDMEMBER")
                .arg(wire::keys::node_sessions(node))
                .arg(max)
                .query_async(&mut self.conn.clone())
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn heartbeat<'a>(
        &'a self,
        node: &'a str,
        ttl_ms: u64,
        lease_ms: u64,
    ) -> BoxFuture<'a, Result<Vec<String>, String>> {
        Box::pin(async move {
            let mut call = HEARTBEAT.prepare_invoke();
            call.key(wire::keys::OWNER_NODES);
            call.arg(node).arg(ttl_ms.min(MAX_TTL_MS)).arg(lease_ms.min(MAX_TTL_MS)).arg(DEAD_PER_HEARTBEAT);
            self.run(call).await.map_err(|e| format!("heartbeat of {node:?}: {e}"))
        })
    }

    fn forget_node<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<bool, String>> {
        Box::pin(async move {
            let mut call = FORGET_NODE.prepare_invoke();
            call.key(wire::keys::OWNER_NODES).key(wire::keys::node_sessions(node));
            call.arg(node);
            self.run::<i64>(call).await.map(|forgot| forgot == 1)
        })
    }
}
