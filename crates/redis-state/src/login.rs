//! Login limits (`broker::login`) on Redis, so that every accounts instance on one Redis
//! enforces one limit. Keys from `wire::keys`:
//! - `login_address(ip)`, `login_account(account)`: a window's attempts, INCR'd, with the
//!   window's length as PEXPIRE at its first attempt; its PTTL is what is left of it;
//! - `login_failures(account)`: consecutive failed passwords, forgotten the longer of a window
//!   and a lockout after the last one;
//! - `login_lockout(account)`: present while the account is locked, with the lockout as TTL.
//!
//! Each operation is one script (or one DEL), so concurrent logins on any instances cannot both
//! take the last attempt of a window, and an attempt refused for one limit is counted for
//! neither. A refusal's Retry-After is the PTTL of the key that refused it.

use std::net::IpAddr;
use std::sync::LazyLock;
use std::time::Duration;

use crate::RedisConn;
use broker::login::{LoginGuard, LoginLimits, Throttled};
use broker::relations::BoxFuture;

/// KEYS: lockout, address window, account window. ARGV: attempts per address, attempts per
/// account (0 = unlimited), window (ms). `{0, 0}` when the attempt is counted (in both windows),
/// else `{why, ms left}`, why = 1 address, 2 account, 3 locked, and nothing is counted.
static ATTEMPT: LazyLock<redis::Script> = LazyLock::new(|| {
    crate::script(
        r"
local locked = redis.call('PTTL', KEYS[1])
if locked > 0 then return {3, locked} end
local limits = {tonumber(ARGV[1]), tonumber(ARGV[2])}
for i = 1, 2 do
  local key = KEYS[i + 1]
  if limits[i] > 0 and tonumber(redis.call('GET', key) or '0') >= limits[i] then
    local left = redis.call('PTTL', key)
    if left < 0 then
      -- A count without an end (not written here): it ends a window from now.
      redis.call('PEXPIRE', key, ARGV[3])
      left = tonumber(ARGV[3])
    end
    return {i, left}
  end
end
for i = 1, 2 do
  local key = KEYS[i + 1]
  if limits[i] > 0 and (redis.call('INCR', key) == 1 or redis.call('PTTL', key) < 0) then
    redis.call('PEXPIRE', key, ARGV[3])
  end
end
return {0, 0}",
    )
});

/// KEYS: failures, lockout. ARGV: failures before lockout (> 0), lockout (ms), how long
/// failures are remembered (ms). 1 if this failure locked the account (and its count starts
/// again), else 0.
static FAILED: LazyLock<redis::Script> = LazyLock::new(|| {
    crate::script(
        r"
if redis.call('INCR', KEYS[1]) >= tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1])
  if tonumber(ARGV[2]) > 0 then redis.call('SET', KEYS[2], '1', 'PX', ARGV[2]) end
  return 1
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 0",
    )
});

/// Login attempts and failures on Redis (see the module's documentation).
#[derive(Clone)]
pub struct RedisLoginGuard {
    conn: RedisConn,
    limits: LoginLimits,
    window_ms: u64,
    lockout_ms: u64,
}

impl std::fmt::Debug for RedisLoginGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLoginGuard").field("limits", &self.limits).finish_non_exhaustive()
    }
}

/// Milliseconds, at most 2^50 (some thirty thousand years: what Redis and Lua take exactly).
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).min(1 << 50)
}

impl RedisLoginGuard {
    pub fn new(conn: RedisConn, limits: LoginLimits) -> Self {
        RedisLoginGuard { conn, limits, window_ms: millis(limits.window).max(1), lockout_ms: millis(limits.lockout) }
    }
}

impl LoginGuard for RedisLoginGuard {
    fn attempt<'a>(&'a self, ip: IpAddr, account: &'a str) -> BoxFuture<'a, Result<Result<(), Throttled>, String>> {
        Box::pin(async move {
            let (why, left): (i64, i64) = ATTEMPT
                .key(wire::keys::login_lockout(account))
                .key(wire::keys::login_address(ip))
                .key(wire::keys::login_account(account))
                .arg(self.limits.attempts_per_ip)
                .arg(self.limits.attempts_per_account)
                .arg(self.window_ms)
                .invoke_async(&mut self.conn.clone())
                .await
                .map_err(|e| format!("login attempt: {e}"))?;
            // A key a millisecond from its end still refuses: never a Retry-After of nothing.
            let retry_after = Duration::from_millis(u64::try_from(left).unwrap_or(0).max(1));
            match why {
                0 => Ok(Ok(())),
                1 => Ok(Err(Throttled::Address { retry_after })),
                2 => Ok(Err(Throttled::AccountRate { retry_after })),
                3 => Ok(Err(Throttled::Account { retry_after })),
                other => Err(format!("login attempt: the script answered {other}")),
            }
        })
    }

    fn failed<'a>(&'a self, account: &'a str) -> BoxFuture<'a, Result<bool, String>> {
        Box::pin(async move {
            if self.limits.failures_before_lockout == 0 {
                return Ok(false);
            }
            let locked: i64 = FAILED
                .key(wire::keys::login_failures(account))
                .key(wire::keys::login_lockout(account))
                .arg(self.limits.failures_before_lockout)
                .arg(self.lockout_ms)
                .arg(self.lockout_ms.max(self.window_ms))
                .invoke_async(&mut self.conn.clone())
                .await
                .map_err(|e| format!("login failure: {e}"))?;
            Ok(locked == 1)
        })
    }

    fn succeeded<'a>(&'a self, account: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            redis::cmd("DEL")
                .arg(wire::keys::login_failures(account))
                .arg(wire::keys::login_lockout(account))
                .query_async::<i64>(&mut self.conn.clone())
                .await
                .map(drop)
                .map_err(|e| format!("login success: {e}"))
        })
    }
}
