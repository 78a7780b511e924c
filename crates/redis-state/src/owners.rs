//! Which edge holds each session (`broker::owners`) on Redis:
//!
//! - `wire::keys::session_owner`: one string per session, `version|node`, with a week's
//!   expiry renewed at every claim (longer than any session waits for its client by default);
//! - `wire::keys::node_sessions`: per node, the set of sessions it owns;
//! - `wire::keys::OWNER_NODES`: the nodes, each until when it is alive or leased.
//!
//! Each session's owner changes in one script on its key alone, and a node's listing around
//! it, so every step keeps to one hash slot (Redis Cluster). A session is added to a node's set
//! before the node's claim and removed from the previous owner's after it: a failure in
//! between leaves a session listed by a node that does not own it (harmless: taking it from
//! that node finds another owner, and unlists it), never an owned session its node does not
//! list (which nobody would take when that node dies).

use std::sync::LazyLock;

use crate::RedisConn;
use broker::owners::Claimed;
use broker::relations::BoxFuture;

/// How long an owner record outlives its last claim.
const OWNER_TTL_SECS: u64 = 7 * 24 * 3600;

/// The longest TTL or lease a node gets (about 34 years): a larger one is taken as this.
const MAX_TTL_MS: u64 = 1 << 40;

/// Dead nodes one heartbeat hands out at most.
const DEAD_PER_HEARTBEAT: u32 = 100;

/// KEYS: the session's owner. ARGV: node, TTL. Returns `{version, previous or false}`.
static CLAIM: LazyLock<redis::Script> = LazyLock::new(|| {
    crate::script(
        r"local old = redis.call('GET', KEYS[1])
        local version, previous = 1, false
        if old then
            local bar = string.find(old, '|', 1, true)
            version = tonumber(string.sub(old, 1, bar - 1)) + 1
            previous = string.sub(old, bar + 1)
        end
        redis.call('SET', KEYS[1], version .. '|' .. ARGV[1], 'EX', ARGV[2])
        return {version, previous}",
    )
});

/// KEYS: the session's owner. ARGV: node.
static RELEASE: LazyLock<redis::Script> = LazyLock::new(|| {
    crate::script(
        r"local old = redis.call('GET', KEYS[1])
        if old and string.sub(old, string.find(old, '|', 1, true) + 1) == ARGV[1] then
            redis.call('DEL', KEYS[1])
        end
        return 0",
    )
});

/// KEYS: the session's owner. ARGV: node, from, TTL. Returns `{1, the new version}`, or
/// `{0, the owner}` (false for none) if `from` does not own the session.
static CLAIM_FROM: LazyLock<redis::Script> = LazyLock::new(|| {
    crate::script(
        r"local old = redis.call('GET', KEYS[1])
        if not old then return {0, false} end
        local bar = string.find(old, '|', 1, true)
        local owner = string.sub(old, bar + 1)
        if owner ~= ARGV[2] then return {0, owner} end
        local version = tonumber(string.sub(old, 1, bar - 1)) + 1
        redis.call('SET', KEYS[1], version .. '|' .. ARGV[1], 'EX', ARGV[3])
        return {1, tostring(version)}",
    )
});

/// KEYS: the nodes. ARGV: node, TTL ms, lease ms, most dead nodes to return. Returns the other
/// nodes whose time ran out, each now leased to the caller.
static HEARTBEAT: LazyLock<redis::Script> = LazyLock::new(|| {
    crate::script(
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

/// Session owners on Redis (see the module's documentation).
#[derive(Clone)]
pub struct RedisOwners {
    conn: RedisConn,
}

impl std::fmt::Debug for RedisOwners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisOwners")
    }
}

impl RedisOwners {
    pub fn new(conn: RedisConn) -> Self {
        RedisOwners { conn }
    }

    async fn run<T: redis::FromRedisValue>(&self, call: redis::ScriptInvocation<'_>) -> Result<T, String> {
        call.invoke_async(&mut self.conn.clone()).await.map_err(|e| e.to_string())
    }

    /// Takes `session` off `node`'s listing. A failure leaves it listed where it is not owned,
    /// which is harmless (see the module's documentation): logged, not returned.
    async fn unlist(&self, node: &str, session: &str) {
        let unlisted = redis::cmd("SREM")
            .arg(wire::keys::node_sessions(node))
            .arg(session)
            .query_async::<()>(&mut self.conn.clone())
            .await;
        if let Err(e) = unlisted {
            tracing::warn!(node, error = %e, "a session stays listed under a node that no longer owns it");
        }
    }
}

impl broker::owners::SessionOwners for RedisOwners {
    fn claim<'a>(&'a self, session: &'a str, node: &'a str) -> BoxFuture<'a, Result<Claimed, String>> {
        Box::pin(async move {
            let mut call = CLAIM.prepare_invoke();
            call.key(wire::keys::session_owner(session)).arg(node).arg(OWNER_TTL_SECS);
            let mut pipe = redis::pipe();
            pipe.sadd(wire::keys::node_sessions(node), session).ignore();
            pipe.load_script(&CLAIM).ignore().invoke_script(&call);
            let ((version, previous),): ((u64, Option<String>),) = crate::query_in_order(&self.conn, &pipe).await?;
            if let Some(p) = previous.as_deref().filter(|p| *p != node) {
                self.unlist(p, session).await;
            }
            Ok(Claimed { version, previous })
        })
    }

    fn release<'a>(&'a self, session: &'a str, node: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let mut call = RELEASE.prepare_invoke();
            call.key(wire::keys::session_owner(session)).arg(node);
            let mut pipe = redis::pipe();
            pipe.load_script(&RELEASE).ignore().invoke_script(&call).ignore();
            // Whoever owns it now, this node no longer does.
            pipe.srem(wire::keys::node_sessions(node), session).ignore();
            crate::query_in_order::<()>(&self.conn, &pipe).await
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
            call.key(wire::keys::session_owner(session)).arg(node).arg(from).arg(OWNER_TTL_SECS);
            let mut pipe = redis::pipe();
            pipe.sadd(wire::keys::node_sessions(node), session).ignore();
            pipe.srem(wire::keys::node_sessions(from), session).ignore();
            pipe.load_script(&CLAIM_FROM).ignore().invoke_script(&call);
            let ((taken, value),): ((u8, Option<String>),) = crate::query_in_order(&self.conn, &pipe).await?;
            if taken == 1 {
                let version = value.as_deref().and_then(|v| v.parse().ok()).ok_or("claim_from: no version")?;
                return Ok(Some(Claimed { version, previous: Some(from.to_owned()) }));
            }
            if value.as_deref() != Some(node) {
                self.unlist(node, session).await;
            }
            Ok(None)
        })
    }

    fn owner<'a>(&'a self, session: &'a str) -> BoxFuture<'a, Result<Option<String>, String>> {
        Box::pin(async move {
            let key = wire::keys::session_owner(session);
            let record: Option<String> =
                redis::cmd("GET").arg(&key).query_async(&mut self.conn.clone()).await.map_err(|e| e.to_string())?;
            // `version|node`: the node id is everything after the first bar.
            Ok(record.and_then(|r| r.split_once('|').map(|(_, node)| node.to_owned())))
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
            // The node is dead: nothing lists sessions under it any more (two slots, two steps).
            let mut conn = self.conn.clone();
            let held: u64 = redis::cmd("SCARD")
                .arg(wire::keys::node_sessions(node))
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            if held > 0 {
                return Ok(false);
            }
            redis::cmd("ZREM")
                .arg(wire::keys::OWNER_NODES)
                .arg(node)
                .query_async::<()>(&mut conn)
                .await
                .map(|()| true)
                .map_err(|e| e.to_string())
        })
    }
}
