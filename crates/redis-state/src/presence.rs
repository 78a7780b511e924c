//! Presence counters (`broker::presence::PresenceDirectory`) on Redis, so a user is online while
//! any of their devices is connected to any edge. Keys are named in `wire::keys`:
//!
//! - per user a hash ([`wire::keys::presence_user`], the user as hash tag): field `n:<node>` =
//!   that node's device count, field `announced` = `online` while "online" was the last
//!   announcement. It is deleted whenever the user's total is 0 and they are not announced
//!   online: nothing is kept for offline users.
//! - per node a set of the users it has devices of ([`wire::keys::presence_node`]), only for
//!   reaping the node when it dies.
//! - the node registry, a sorted set ([`wire::keys::PRESENCE_NODES`]): node → until when it is
//!   alive (Unix ms), and each node's TTL from its last heartbeat
//!   ([`wire::keys::PRESENCE_NODE_TTLS`]).
//!
//! A total is the sum of the fields whose node is alive in the registry, so a dead node stops
//! counting when its time runs out, before anyone reaps it. Every time is Redis's (`TIME` in the
//! scripts), never an edge's clock.
//!
//! `set` is a script on the user's hash that decides the totals (and keeps the node alive in the
//! registry) plus the node's set, pipelined: the user is added to the node's set before the
//! script, and removed after it, so a failure in between leaves a user too many in the set
//! (harmless: reaping finds no field), never a field the reaping would miss. A node's calls for
//! one user are expected one at a time (they are absolute counts: the last one wins).
//!
//! `heartbeat` is a script on the registry that keeps the node alive, then reaps dead nodes: it
//! pops users off a dead node's set, deletes the node's field in each user's hash and notes the
//! users left at 0, and once the set is empty removes the node from the registry. Each user of a
//! dead node is popped by one script, so reported once. At most [`REAP_BUDGET`] users per
//! script run (Redis does nothing else meanwhile): `heartbeat` runs it again until nothing is
//! left, and a node dead halfway (its set not empty) is finished by the next heartbeat of any
//! node.
//!
//! Redis Cluster: the scripts are correct on a single Redis (with or without replicas). Each one
//! reads the registry next to a user's hash, and the reaping builds the keys of the users' hashes
//! and of the node's set from their names, so on Redis Cluster they would need the registry in
//! the slot of every user (or the registry read first, and liveness passed in) and the reaping
//! split per user. The user's hash and the node's set already have hash tags for it.
//!
//! Commands time out as the connection says ([`crate::connect`]: 2 s).

use std::sync::LazyLock;

use broker::presence::{Announce, DEFAULT_TTL_MS, MAX_TTL_MS, PresenceDirectory};
use broker::relations::BoxFuture;
use redis::Script;
use redis::aio::ConnectionManager;

use crate::around;

/// Most users of dead nodes one run of the heartbeat script reaps.
pub const REAP_BUDGET: u32 = 1_000;

/// Functions the scripts share: Redis's time in ms; the total of the user's hash `key` over the
/// nodes alive at `now` in the registry `nodes`; forgetting a user with nothing to keep.
const SHARED: &str = r"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function total(key, nodes, now)
  local sum = 0
  local all = redis.call('HGETALL', key)
  for i = 1, #all, 2 do
    if string.sub(all[i], 1, 2) == 'n:' then
      local alive = redis.call('ZSCORE', nodes, string.sub(all[i], 3))
      if alive and tonumber(alive) > now then sum = sum + tonumber(all[i + 1]) end
    end
  end
  return sum
end
local function tidy(key, sum)
  if sum == 0 and redis.call('HGET', key, 'announced') ~= 'online' then redis.call('DEL', key) end
end
";

/// KEYS: the user's hash, the registry, the TTLs. ARGV: node, devices, the default TTL (ms).
/// Returns the totals before and after.
static SET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{SHARED}
local user, nodes, ttls = KEYS[1], KEYS[2], KEYS[3]
local node, devices = ARGV[1], ARGV[2]
local now = now_ms()
local before = total(user, nodes, now)
local ttl = redis.call('HGET', ttls, node) or ARGV[3]
redis.call('ZADD', nodes, string.format('%.0f', now + tonumber(ttl)), node)
if tonumber(devices) == 0 then
  redis.call('HDEL', user, 'n:' .. node)
else
  redis.call('HSET', user, 'n:' .. node, devices)
end
local after = total(user, nodes, now)
tidy(user, after)
return {{before, after}}"
    ))
});

/// KEYS: the user's hash, the registry. ARGV: `online` or `offline`. Returns 1 to announce it.
static ANNOUNCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{SHARED}
local user, nodes = KEYS[1], KEYS[2]
local sum = total(user, nodes, now_ms())
local online = redis.call('HGET', user, 'announced') == 'online'
local want = ARGV[1] == 'online'
if want ~= (sum > 0) or want == online then return 0 end
if want then
  redis.call('HSET', user, 'announced', 'online')
else
  redis.call('DEL', user)
end
return 1"
    ))
});

/// KEYS: the registry, the TTLs. ARGV: node, its TTL (ms; empty: leave it be), the budget, the
/// key of a user's hash before and after the user, the key of a node's set before and after the
/// node. Returns 1 if there is more to reap, and the users left at 0.
static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{SHARED}
local nodes, ttls = KEYS[1], KEYS[2]
local now = now_ms()
if ARGV[2] ~= '' then
  redis.call('ZADD', nodes, string.format('%.0f', now + tonumber(ARGV[2])), ARGV[1])
  redis.call('HSET', ttls, ARGV[1], ARGV[2])
end
local budget = tonumber(ARGV[3])
local zero = {{}}
local dead = redis.call('ZRANGEBYSCORE', nodes, '-inf', string.format('%.0f', now), 'LIMIT', 0, budget)
for _, node in ipairs(dead) do
  if budget <= 0 then return {{1, zero}} end
  local set = ARGV[6] .. node .. ARGV[7]
  local users = redis.call('SPOP', set, budget)
  budget = budget - #users
  for _, u in ipairs(users) do
    local key = ARGV[4] .. u .. ARGV[5]
    if redis.call('HDEL', key, 'n:' .. node) == 1 then
      local sum = total(key, nodes, now)
      if sum == 0 then table.insert(zero, u) end
      tidy(key, sum)
    end
  end
  if redis.call('EXISTS', set) == 1 then return {{1, zero}} end
  redis.call('ZREM', nodes, node)
  redis.call('HDEL', ttls, node)
end
if #dead == tonumber(ARGV[3]) then return {{1, zero}} end
return {{0, zero}}"
    ))
});

static USER_KEY: LazyLock<(String, String)> = LazyLock::new(|| around(wire::keys::presence_user));
static NODE_KEY: LazyLock<(String, String)> = LazyLock::new(|| around(wire::keys::presence_node));

/// Presence counters on Redis (see the module's documentation).
#[derive(Clone)]
pub struct RedisPresence {
    conn: ConnectionManager,
}

impl std::fmt::Debug for RedisPresence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisPresence")
    }
}

impl RedisPresence {
    /// Presence on `conn` (from [`crate::connect`]).
    pub fn new(conn: ConnectionManager) -> Self {
        RedisPresence { conn }
    }

    async fn change(&self, node: &str, user: &str, devices: u32) -> Result<(u64, u64), String> {
        let node_users = wire::keys::presence_node(node);
        let mut call = SET.prepare_invoke();
        call.key(wire::keys::presence_user(user))
            .key(wire::keys::PRESENCE_NODES)
            .key(wire::keys::PRESENCE_NODE_TTLS)
            .arg(node)
            .arg(devices)
            .arg(DEFAULT_TTL_MS);
        let mut pipe = redis::pipe();
        pipe.load_script(&SET).ignore();
        if devices > 0 {
            pipe.sadd(&node_users, user).ignore();
        }
        pipe.invoke_script(&call);
        if devices == 0 {
            pipe.srem(&node_users, user).ignore();
        }
        let totals: Vec<(u64, u64)> = pipe.query_async(&mut self.conn.clone()).await.map_err(|e| e.to_string())?;
        totals.first().copied().ok_or_else(|| "no totals".to_owned())
    }

    async fn tell(&self, user: &str, state: Announce) -> Result<bool, String> {
        let state = match state {
            Announce::Online => "online",
            Announce::Offline => "offline",
        };
        let yes: i64 = ANNOUNCE
            .key(wire::keys::presence_user(user))
            .key(wire::keys::PRESENCE_NODES)
            .arg(state)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| e.to_string())?;
        Ok(yes == 1)
    }

    async fn beat(&self, node: &str, ttl_ms: u64) -> Result<Vec<String>, String> {
        let mut zero = Vec::new();
        let mut ttl = ttl_ms.min(MAX_TTL_MS).to_string();
        loop {
            let (more, users): (u8, Vec<String>) = HEARTBEAT
                .key(wire::keys::PRESENCE_NODES)
                .key(wire::keys::PRESENCE_NODE_TTLS)
                .arg(node)
                .arg(&ttl)
                .arg(REAP_BUDGET)
                .arg(&USER_KEY.0)
                .arg(&USER_KEY.1)
                .arg(&NODE_KEY.0)
                .arg(&NODE_KEY.1)
                .invoke_async(&mut self.conn.clone())
                .await
                .map_err(|e| e.to_string())?;
            zero.extend(users);
            if more == 0 {
                return Ok(zero);
            }
            // The node was kept alive by the first run.
            ttl.clear();
        }
    }
}

impl PresenceDirectory for RedisPresence {
    fn set<'a>(&'a self, node: &'a str, user: &'a str, devices: u32) -> BoxFuture<'a, Result<(u64, u64), String>> {
        Box::pin(async move {
            self.change(node, user, devices).await.map_err(|e| format!("presence of {user:?} on {node:?}: {e}"))
        })
    }

    fn announce<'a>(&'a self, user: &'a str, state: Announce) -> BoxFuture<'a, Result<bool, String>> {
        Box::pin(async move { self.tell(user, state).await.map_err(|e| format!("announcing {user:?}: {e}")) })
    }

    fn heartbeat<'a>(&'a self, node: &'a str, ttl_ms: u64) -> BoxFuture<'a, Result<Vec<String>, String>> {
        Box::pin(async move { self.beat(node, ttl_ms).await.map_err(|e| format!("heartbeat of {node:?}: {e}")) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_build_the_keys_wire_names() {
        for name in ["bob", "", "{x} *>.|", "acme/im/pres/bob", "ü\n"] {
            assert_eq!(format!("{}{name}{}", USER_KEY.0, USER_KEY.1), wire::keys::presence_user(name));
            assert_eq!(format!("{}{name}{}", NODE_KEY.0, NODE_KEY.1), wire::keys::presence_node(name));
        }
    }
}
