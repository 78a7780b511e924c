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
//!   ([`wire::keys::PRESENCE_NODE_TTLS`]); both in one hash slot.
//!
//! A total is the sum of the fields whose node is alive, so a dead node stops counting when its
//! time runs out, before anyone reaps it. Every script keeps to one hash slot (Redis Cluster):
//! the registry's scripts read and change the registry; a user's scripts read and change the
//! user's hash, and are given the registry as read just before (a node missing from it is one
//! that has just begun: alive). Every time is Redis's (`TIME` in the scripts), never an edge's
//! clock.
//!
//! `set` is one pipeline: a script on the registry keeps the node alive and returns the
//! registry as it was (for the next `set`); the user is added to the node's set; a script on
//! the user's hash, given the registry the previous `set` read (at most [`FRESH`] ago, else
//! read first: two round trips), decides the totals; and the user is removed from the node's
//! set if the count is 0 — in that order, so a failure in between leaves a user too many in the
//! set (harmless: reaping finds no field), never a field the reaping would miss. A node's calls for one user are expected one
//! at a time (they are absolute counts: the last one wins).
//!
//! `heartbeat` keeps the node alive in the registry and leases it the dead nodes nobody else is
//! reaping (for [`REAP_LEASE_MS`]; a node stopping with TTL 0 leases itself in the same step),
//! then reaps them: takes [`REAP_BUDGET`] users at a time off a dead node's set, deletes the
//! node's field in each user's hash (noting the users left at 0: only the script whose delete
//! took the field reports the user, so each is reported once even by two reapers), removes those
//! users from the set, and once the set is empty removes the node from the registry (if it is
//! still dead) and ends the lease. A node dead halfway is finished by its reaper's next
//! heartbeat, or by any node's once the lease has run out.
//!
//! Commands time out as the connection says ([`crate::connect`]: 2 s).

use std::sync::LazyLock;

use crate::RedisConn;
use broker::presence::{Announce, DEFAULT_TTL_MS, MAX_TTL_MS, PresenceDirectory};
use broker::relations::BoxFuture;
use redis::Script;

/// Most users of a dead node one round of reaping takes.
pub const REAP_BUDGET: u32 = 1_000;

/// Redis's time in ms, for the scripts.
const NOW_MS: &str = r"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
";

/// Functions the user's scripts share: the registry as given in `ARGV` from `first` on (node,
/// until when it is alive, ...); the total of the user's hash `key` over the nodes alive at
/// `now` in it (a node not in it has just begun: alive); forgetting a user with nothing to keep.
const USER: &str = r"
local function registry(first)
  local r = {}
  for i = first, #ARGV, 2 do r[ARGV[i]] = tonumber(ARGV[i + 1]) end
  return r
end
local function total(key, alive, now)
  local sum = 0
  local all = redis.call('HGETALL', key)
  for i = 1, #all, 2 do
    if string.sub(all[i], 1, 2) == 'n:' then
      local till = alive[string.sub(all[i], 3)]
      if not till or till > now then sum = sum + tonumber(all[i + 1]) end
    end
  end
  return sum
end
local function tidy(key, sum)
  if sum == 0 and redis.call('HGET', key, 'announced') ~= 'online' then redis.call('DEL', key) end
end
";

/// KEYS: the registry, the TTLs. ARGV: node, the default TTL. Keeps the node alive for its TTL
/// (its last heartbeat's, or the default) from now. Returns the registry as it was before
/// (node, until when, ...).
static TOUCH: LazyLock<Script> = LazyLock::new(|| {
    crate::script(&format!(
        r"{NOW_MS}
local nodes, ttls, node = KEYS[1], KEYS[2], ARGV[1]
local was = redis.call('ZRANGE', nodes, 0, -1, 'WITHSCORES')
local ttl = redis.call('HGET', ttls, node) or ARGV[2]
redis.call('ZADD', nodes, string.format('%.0f', now_ms() + tonumber(ttl)), node)
return was"
    ))
});

/// KEYS: the registry, the TTLs, the reapers. ARGV: node, its TTL (ms), how long a reaper's
/// lease lasts (ms). Keeps the node alive for its TTL from now, and leases it the dead nodes
/// nobody else is reaping. Returns the registry as it is now, and those dead nodes.
static BEAT: LazyLock<Script> = LazyLock::new(|| {
    crate::script(&format!(
        r"{NOW_MS}
local nodes, ttls, reapers, node = KEYS[1], KEYS[2], KEYS[3], ARGV[1]
local now = now_ms()
redis.call('HSET', ttls, node, ARGV[2])
redis.call('ZADD', nodes, string.format('%.0f', now + tonumber(ARGV[2])), node)
local mine = {{}}
for _, dead in ipairs(redis.call('ZRANGEBYSCORE', nodes, '-inf', string.format('%.0f', now))) do
  local lease = redis.call('HGET', reapers, dead)
  local bar = lease and string.find(lease, '|', 1, true)
  if not lease or tonumber(string.sub(lease, 1, bar - 1)) <= now or string.sub(lease, bar + 1) == node then
    redis.call('HSET', reapers, dead, string.format('%.0f', now + tonumber(ARGV[3])) .. '|' .. node)
    table.insert(mine, dead)
  end
end
return {{redis.call('ZRANGE', nodes, 0, -1, 'WITHSCORES'), mine}}"
    ))
});

/// KEYS: the user's hash. ARGV: node, devices, then the registry. Returns the totals before and
/// after (the node counts as alive after: it has just called).
static SET: LazyLock<Script> = LazyLock::new(|| {
    crate::script(&format!(
        r"{NOW_MS}{USER}
local user, node, devices = KEYS[1], ARGV[1], ARGV[2]
local now, alive = now_ms(), registry(3)
local before = total(user, alive, now)
if tonumber(devices) == 0 then
  redis.call('HDEL', user, 'n:' .. node)
else
  redis.call('HSET', user, 'n:' .. node, devices)
end
alive[node] = nil
local after = total(user, alive, now)
tidy(user, after)
return {{before, after}}"
    ))
});

/// KEYS: the user's hash. ARGV: `online` or `offline`, then the registry. Returns 1 to
/// announce it.
static ANNOUNCE: LazyLock<Script> = LazyLock::new(|| {
    crate::script(&format!(
        r"{NOW_MS}{USER}
local user = KEYS[1]
local sum = total(user, registry(2), now_ms())
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

/// KEYS: the user's hash. ARGV: a dead node, then the registry. Takes the node's count off;
/// returns 1 if that left the user at 0.
static REAP: LazyLock<Script> = LazyLock::new(|| {
    crate::script(&format!(
        r"{NOW_MS}{USER}
local user = KEYS[1]
if redis.call('HDEL', user, 'n:' .. ARGV[1]) == 0 then return 0 end
local sum = total(user, registry(2), now_ms())
tidy(user, sum)
if sum == 0 then return 1 end
return 0"
    ))
});

/// KEYS: the registry, the TTLs, the reapers. ARGV: a node whose users were all reaped. Ends
/// its lease, and forgets it if it is still dead (it did not come back meanwhile).
static FORGET: LazyLock<Script> = LazyLock::new(|| {
    crate::script(&format!(
        r"{NOW_MS}
redis.call('HDEL', KEYS[3], ARGV[1])
local till = redis.call('ZSCORE', KEYS[1], ARGV[1])
if till and tonumber(till) > now_ms() then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1"
    ))
});

/// How long a node reaping a dead one has it to itself: if it fails halfway, another takes
/// the dead node over after this.
const REAP_LEASE_MS: u64 = 60_000;

/// The registry as the scripts return it and take it: node, until when it is alive, ...
type Registry = Vec<(String, String)>;

/// Presence counters on Redis (see the module's documentation).
#[derive(Clone)]
pub struct RedisPresence {
    conn: RedisConn,
    /// The registry as the last change read it, and when: a change within [`FRESH`] of it
    /// uses it, so it is one round trip instead of two.
    registry: std::sync::Arc<std::sync::Mutex<Option<(std::time::Instant, Registry)>>>,
}

/// How long a change trusts the registry as the last one read it. A live node heartbeats every
/// few seconds and counts for longer (15 s), so a second-old copy misses only nodes that began
/// within it (taken as alive) or came back from the dead.
const FRESH: std::time::Duration = std::time::Duration::from_secs(1);

impl std::fmt::Debug for RedisPresence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisPresence")
    }
}

impl RedisPresence {
    /// Presence on `conn` (from [`crate::connect`]).
    pub fn new(conn: RedisConn) -> Self {
        RedisPresence { conn, registry: Default::default() }
    }

    async fn registry(&self) -> Result<Registry, String> {
        redis::cmd("ZRANGE")
            .arg(wire::keys::PRESENCE_NODES)
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| e.to_string())
    }

    async fn change(&self, node: &str, user: &str, devices: u32) -> Result<(u64, u64), String> {
        let registry = match self.cached() {
            Some(r) => r,
            None => self.registry().await?,
        };
        let node_users = wire::keys::presence_node(node);
        let mut touch = TOUCH.prepare_invoke();
        touch.key(wire::keys::PRESENCE_NODES).key(wire::keys::PRESENCE_NODE_TTLS).arg(node).arg(DEFAULT_TTL_MS);
        let mut call = SET.prepare_invoke();
        call.key(wire::keys::presence_user(user)).arg(node).arg(devices);
        with_registry(&mut call, &registry);
        let mut pipe = redis::pipe();
        // Keeps the node alive before its count changes, and reads the registry for the next
        // change.
        pipe.load_script(&TOUCH).ignore().invoke_script(&touch);
        pipe.load_script(&SET).ignore();
        if devices > 0 {
            pipe.sadd(&node_users, user).ignore();
        }
        pipe.invoke_script(&call);
        if devices == 0 {
            pipe.srem(&node_users, user).ignore();
        }
        let (registry, totals): (Registry, (u64, u64)) = crate::query_in_order(&self.conn, &pipe).await?;
        self.keep(registry);
        Ok(totals)
    }

    /// The registry as the last change read it, if that was within [`FRESH`].
    fn cached(&self) -> Option<Registry> {
        let cache = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        cache.as_ref().filter(|(at, _)| at.elapsed() < FRESH).map(|(_, r)| r.clone())
    }

    fn keep(&self, registry: Registry) {
        *self.registry.lock().unwrap_or_else(|e| e.into_inner()) = Some((std::time::Instant::now(), registry));
    }

    async fn tell(&self, user: &str, state: Announce) -> Result<bool, String> {
        let state = match state {
            Announce::Online => "online",
            Announce::Offline => "offline",
        };
        let registry = self.registry().await?;
        let mut call = ANNOUNCE.prepare_invoke();
        call.key(wire::keys::presence_user(user)).arg(state);
        with_registry(&mut call, &registry);
        let yes: i64 = call.invoke_async(&mut self.conn.clone()).await.map_err(|e| e.to_string())?;
        Ok(yes == 1)
    }

    async fn beat(&self, node: &str, ttl_ms: u64) -> Result<Vec<String>, String> {
        let mut call = BEAT.prepare_invoke();
        call.key(wire::keys::PRESENCE_NODES).key(wire::keys::PRESENCE_NODE_TTLS).key(wire::keys::PRESENCE_REAPERS);
        call.arg(node).arg(ttl_ms.min(MAX_TTL_MS)).arg(REAP_LEASE_MS);
        let (registry, dead): (Registry, Vec<String>) =
            call.invoke_async(&mut self.conn.clone()).await.map_err(|e| e.to_string())?;
        let mut zero = Vec::new();
        for dead in &dead {
            self.reap(dead, &registry, &mut zero).await?;
        }
        Ok(zero)
    }

    /// Takes dead node `dead`'s counts off its users, noting those left at 0 in `zero`, then
    /// forgets it.
    async fn reap(&self, dead: &str, registry: &Registry, zero: &mut Vec<String>) -> Result<(), String> {
        let set = wire::keys::presence_node(dead);
        loop {
            let users: Vec<String> = redis::cmd("SRANDMEMBER")
                .arg(&set)
                .arg(REAP_BUDGET)
                .query_async(&mut self.conn.clone())
                .await
                .map_err(|e| e.to_string())?;
            if users.is_empty() {
                break;
            }
            let mut pipe = redis::pipe();
            pipe.load_script(&REAP).ignore();
            for u in &users {
                let mut call = REAP.prepare_invoke();
                call.key(wire::keys::presence_user(u)).arg(dead);
                with_registry(&mut call, registry);
                pipe.invoke_script(&call);
            }
            let left: Vec<u8> = crate::query(&self.conn, &pipe).await?;
            zero.extend(users.iter().zip(left).filter(|(_, z)| *z == 1).map(|(u, _)| u.clone()));
            redis::cmd("SREM")
                .arg(&set)
                .arg(&users)
                .query_async::<()>(&mut self.conn.clone())
                .await
                .map_err(|e| e.to_string())?;
        }
        let mut call = FORGET.prepare_invoke();
        call.key(wire::keys::PRESENCE_NODES).key(wire::keys::PRESENCE_NODE_TTLS).key(wire::keys::PRESENCE_REAPERS);
        call.arg(dead);
        call.invoke_async::<i64>(&mut self.conn.clone()).await.map(drop).map_err(|e| e.to_string())
    }
}

/// Appends the registry to a user's script's arguments.
fn with_registry(call: &mut redis::ScriptInvocation<'_>, registry: &Registry) {
    for (node, till) in registry {
        call.arg(node).arg(till);
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
