//! Brute-force protection for password logins ([`broker::login`]) in this process:
//! [`LoginLimiter`], sans IO (the caller passes the time), counts attempts per client address
//! and per account in fixed windows (a minute) and locks an account for a while after
//! consecutive failures; a success clears the account's failures. [`MemoryLoginGuard`] is the
//! [`LoginGuard`] around it, for an accounts tier that runs alone; with `state.redis_url`, the
//! API uses `redis_state::RedisLoginGuard` instead, so that every instance enforces one limit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use broker::login::{LoginGuard, LoginLimits, Throttled};
use broker::relations::BoxFuture;

/// Starts a new window (of `length`) if the current one is over; how long until it ends if
/// `limit` is reached.
fn full(window: &mut (Instant, u32), length: Duration, limit: u32, now: Instant) -> Option<Duration> {
    let (start, count) = window;
    if now.duration_since(*start) >= length {
        (*start, *count) = (now, 0);
    }
    (limit > 0 && *count >= limit).then(|| length - now.duration_since(*start))
}
/// Past this many tracked entries, stale ones are swept on the next attempt.
const SWEEP_ABOVE: usize = 10_000;

#[derive(Debug, Default)]
pub struct LoginLimiter {
    limits: LoginLimits,
    /// Per address: window start and attempts in it.
    addresses: HashMap<IpAddr, (Instant, u32)>,
    /// Per account: window start and attempts in it.
    account_windows: HashMap<String, (Instant, u32)>,
    /// Per account: consecutive failures, the last one, and the lockout end if locked.
    accounts: HashMap<String, Failures>,
    last_sweep: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    locked_until: Option<Instant>,
}

impl LoginLimiter {
    pub fn new(limits: LoginLimits) -> Self {
        LoginLimiter { limits, ..LoginLimiter::default() }
    }

    /// Counts an attempt from `ip` on `account`; refuses it when a limit is reached.
    pub fn attempt(&mut self, ip: IpAddr, account: &str, now: Instant) -> Result<(), Throttled> {
        self.sweep(now);
        if let Some(Failures { locked_until: Some(until), .. }) = self.accounts.get(account)
            && *until > now
        {
            return Err(Throttled::Account { retry_after: *until - now });
        }
        let (per_ip, per_account, length) =
            (self.limits.attempts_per_ip, self.limits.attempts_per_account, self.limits.window);
        let ip_window = self.addresses.entry(ip).or_insert((now, 0));
        let retry_after = full(ip_window, length, per_ip, now).map(|r| Throttled::Address { retry_after: r });
        if let Some(t) = retry_after {
            return Err(t);
        }
        let account_window = self.account_windows.entry(account.to_owned()).or_insert((now, 0));
        if let Some(r) = full(account_window, length, per_account, now) {
            return Err(Throttled::AccountRate { retry_after: r });
        }
        for (window, limit) in
            [(self.addresses.get_mut(&ip), per_ip), (self.account_windows.get_mut(account), per_account)]
        {
            if let Some((_, count)) = window.filter(|_| limit > 0) {
                *count += 1;
            }
        }
        Ok(())
    }

    /// A wrong password for `account`; returns true if that locked it.
    pub fn failed(&mut self, account: &str, now: Instant) -> bool {
        let max = self.limits.failures_before_lockout;
        let f = self.accounts.entry(account.to_owned()).or_insert(Failures { count: 0, last: now, locked_until: None });
        let stale = now.duration_since(f.last) >= self.limits.lockout.max(self.limits.window);
        if f.locked_until.is_some_and(|u| u <= now) || (f.locked_until.is_none() && stale) {
            (f.count, f.locked_until) = (0, None);
        }
        f.count += 1;
        f.last = now;
        if max > 0 && f.count >= max {
            f.locked_until = Some(now + self.limits.lockout);
            f.count = 0;
            return true;
        }
        false
    }

    pub fn succeeded(&mut self, account: &str) {
        self.accounts.remove(account);
    }

    /// Forgets what no longer limits anyone, at most once a window, once the maps are large.
    /// Failures older than the lockout (or a window) no longer count towards one.
    fn sweep(&mut self, now: Instant) {
        let large = [self.addresses.len(), self.account_windows.len(), self.accounts.len()].into_iter().max()
            > Some(SWEEP_ABOVE);
        let window = self.limits.window;
        if !large || self.last_sweep.is_some_and(|t| now.duration_since(t) < window) {
            return;
        }
        self.last_sweep = Some(now);
        let memory = self.limits.lockout.max(window);
        if self.addresses.len() > SWEEP_ABOVE {
            self.addresses.retain(|_, (start, _)| now.duration_since(*start) < window);
        }
        if self.account_windows.len() > SWEEP_ABOVE {
            self.account_windows.retain(|_, (start, _)| now.duration_since(*start) < window);
        }
        if self.accounts.len() > SWEEP_ABOVE {
            self.accounts.retain(|_, f| f.locked_until.is_some_and(|u| u > now) || now.duration_since(f.last) < memory);
        }
    }
}

/// The [`LoginGuard`] of an accounts tier that runs alone: a [`LoginLimiter`] on the clock.
#[derive(Debug, Default)]
pub struct MemoryLoginGuard {
    limiter: Mutex<LoginLimiter>,
}

impl MemoryLoginGuard {
    pub fn new(limits: LoginLimits) -> Self {
        MemoryLoginGuard { limiter: Mutex::new(LoginLimiter::new(limits)) }
    }

    fn limiter(&self) -> std::sync::MutexGuard<'_, LoginLimiter> {
        self.limiter.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl LoginGuard for MemoryLoginGuard {
    fn attempt<'a>(&'a self, ip: IpAddr, account: &'a str) -> BoxFuture<'a, Result<Result<(), Throttled>, String>> {
        let decided = self.limiter().attempt(ip, account, Instant::now());
        Box::pin(std::future::ready(Ok(decided)))
    }

    fn failed<'a>(&'a self, account: &'a str) -> BoxFuture<'a, Result<bool, String>> {
        let locked = self.limiter().failed(account, Instant::now());
        Box::pin(std::future::ready(Ok(locked)))
    }

    fn succeeded<'a>(&'a self, account: &'a str) -> BoxFuture<'a, Result<(), String>> {
        self.limiter().succeeded(account);
        Box::pin(std::future::ready(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(60);
    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    const OTHER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

    fn limiter() -> LoginLimiter {
        LoginLimiter::new(LoginLimits {
            attempts_per_ip: 3,
            attempts_per_account: 2,
            window: WINDOW,
            failures_before_lockout: 2,
            lockout: Duration::from_secs(30),
        })
    }

    #[test]
    fn an_address_gets_so_many_attempts_a_minute() {
        let mut l = limiter();
        let t0 = Instant::now();
        for i in 0..3 {
            assert_eq!(l.attempt(IP, &format!("u{i}"), t0), Ok(()));
        }
        let refused = l.attempt(IP, "u9", t0 + Duration::from_secs(20));
        assert_eq!(refused, Err(Throttled::Address { retry_after: Duration::from_secs(40) }));
        assert_eq!(l.attempt(OTHER, "u9", t0), Ok(()), "other addresses are not affected");
        assert_eq!(l.attempt(IP, "u9", t0 + WINDOW), Ok(()), "a new window");
    }

    #[test]
    fn an_account_gets_so_many_attempts_a_minute_from_anywhere() {
        let mut l = limiter();
        let t0 = Instant::now();
        assert_eq!(l.attempt(IP, "acme/alice", t0), Ok(()));
        assert_eq!(l.attempt(OTHER, "acme/alice", t0), Ok(()));
        let third = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 3));
        let refused = l.attempt(third, "acme/alice", t0 + Duration::from_secs(45));
        assert_eq!(refused, Err(Throttled::AccountRate { retry_after: Duration::from_secs(15) }));
        assert_eq!(l.attempt(third, "acme/bob", t0), Ok(()), "a refused attempt does not count against the address");
    }

    #[test]
    fn failures_lock_the_account_for_a_while_and_success_clears_them() {
        let mut l = limiter();
        let t0 = Instant::now();
        assert!(!l.failed("acme/alice", t0));
        l.succeeded("acme/alice");
        assert!(!l.failed("acme/alice", t0), "the count restarted after the success");
        assert!(l.failed("acme/alice", t0), "second consecutive failure locks");
        let at = t0 + Duration::from_secs(10);
        assert_eq!(
            l.attempt(OTHER, "acme/alice", at),
            Err(Throttled::Account { retry_after: Duration::from_secs(20) })
        );
        assert_eq!(l.attempt(OTHER, "acme/bob", at), Ok(()));
        assert_eq!(l.attempt(OTHER, "acme/alice", t0 + Duration::from_secs(30)), Ok(()), "lockout over");
        assert!(!l.failed("acme/alice", t0 + Duration::from_secs(31)), "failures start from zero again");
    }

    #[test]
    fn zero_limits_mean_unlimited() {
        let mut l = LoginLimiter::new(LoginLimits {
            attempts_per_ip: 0,
            attempts_per_account: 0,
            window: WINDOW,
            failures_before_lockout: 0,
            lockout: Duration::ZERO,
        });
        let t0 = Instant::now();
        for _ in 0..100 {
            assert_eq!(l.attempt(IP, "a", t0), Ok(()));
            assert!(!l.failed("a", t0));
        }
    }

    #[tokio::test]
    async fn memory_guard_meets_the_contract() {
        let limits = LoginLimits {
            attempts_per_ip: 4,
            attempts_per_account: 3,
            window: Duration::from_millis(500),
            failures_before_lockout: 3,
            lockout: Duration::from_millis(400),
        };
        broker::login::contract::check(&MemoryLoginGuard::new(limits), "t-", limits).await;
        let unlimited = LoginLimits {
            attempts_per_ip: 0,
            attempts_per_account: 0,
            failures_before_lockout: 0,
            ..LoginLimits::default()
        };
        broker::login::contract::check_unlimited(&MemoryLoginGuard::new(unlimited), "t-").await;
    }
}
