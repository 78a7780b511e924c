//! Failed CONNECT authentication slows down the address it came from: a growing delay before
//! the next attempt from there is checked, not a ban (like the accounts tier's login limits).
//!
//! A few failures are free (a device with a stale token retries). After that every attempt
//! from the address waits for a slot: slots are `step` apart, and `step` doubles with each
//! further failure up to a cap, so guessing from one address costs time however many
//! connections it opens in parallel. An address whose attempts would wait longer than the
//! cap is told to go away at once (v5 0x9F, v3 return code 3). Failures are forgotten after a
//! quiet while. Sans-IO: callers pass the clock.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// Failures from one address before its attempts start to wait.
const FREE_FAILURES: u32 = 5;
/// The wait between attempts after the first failure past the free ones.
const BASE_STEP_MS: u64 = 100;
/// The longest wait between two attempts, and the longest an attempt is made to wait.
const MAX_STEP_MS: u64 = 5_000;
/// An address with no failure for this long starts afresh.
const FORGET_AFTER_MS: u64 = 60_000;
/// Addresses tracked at most; past it, the quiet ones are forgotten first.
const MAX_ADDRESSES: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Penalty {
    failures: u32,
    last_failure_ms: u64,
    /// The earliest instant the next attempt from the address may be checked.
    next_slot_ms: u64,
}

/// What to do with a CONNECT from an address before checking its credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Check now, or after waiting this many milliseconds.
    After(u64),
    /// Too many attempts are waiting already: refuse without checking.
    Busy,
}

#[derive(Debug, Default)]
pub struct AuthThrottle {
    penalties: Mutex<HashMap<IpAddr, Penalty>>,
}

impl AuthThrottle {
    /// Reserves the next slot for an attempt from `ip` at `now_ms`.
    pub fn admit(&self, ip: IpAddr, now_ms: u64) -> Admission {
        let mut all = self.penalties.lock().unwrap_or_else(|e| e.into_inner());
        let Some(p) = all.get_mut(&ip) else { return Admission::After(0) };
        if now_ms.saturating_sub(p.last_failure_ms) >= FORGET_AFTER_MS {
            all.remove(&ip);
            return Admission::After(0);
        }
        if p.failures < FREE_FAILURES {
            return Admission::After(0);
        }
        let slot = p.next_slot_ms.max(now_ms);
        let wait = slot - now_ms;
        if wait > MAX_STEP_MS {
            return Admission::Busy;
        }
        p.next_slot_ms = slot + step(p.failures);
        Admission::After(wait)
    }

    /// Records a failed authentication from `ip`.
    pub fn failed(&self, ip: IpAddr, now_ms: u64) {
        let mut all = self.penalties.lock().unwrap_or_else(|e| e.into_inner());
        if all.len() >= MAX_ADDRESSES && !all.contains_key(&ip) {
            all.retain(|_, p| now_ms.saturating_sub(p.last_failure_ms) < FORGET_AFTER_MS);
            if all.len() >= MAX_ADDRESSES {
                return;
            }
        }
        let p = all.entry(ip).or_insert(Penalty { failures: 0, last_failure_ms: now_ms, next_slot_ms: now_ms });
        p.failures = p.failures.saturating_add(1);
        p.last_failure_ms = now_ms;
    }
}

/// The time between attempts after `failures` failures: doubling from [`BASE_STEP_MS`].
fn step(failures: u32) -> u64 {
    let doublings = failures.saturating_sub(FREE_FAILURES).min(16);
    (BASE_STEP_MS << doublings).min(MAX_STEP_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 9));
    const OTHER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 10));

    #[test]
    fn the_first_failures_are_free() {
        let t = AuthThrottle::default();
        for _ in 0..FREE_FAILURES {
            assert_eq!(t.admit(IP, 0), Admission::After(0));
            t.failed(IP, 0);
        }
        assert_eq!(t.admit(OTHER, 0), Admission::After(0));
    }

    #[test]
    fn attempts_after_that_wait_for_slots_that_grow_apart() {
        let t = AuthThrottle::default();
        for _ in 0..FREE_FAILURES {
            t.failed(IP, 0);
        }
        // Parallel attempts at one instant queue up behind each other.
        assert_eq!(t.admit(IP, 0), Admission::After(0));
        assert_eq!(t.admit(IP, 0), Admission::After(BASE_STEP_MS));
        assert_eq!(t.admit(IP, 0), Admission::After(2 * BASE_STEP_MS));
        // More failures, longer steps, capped.
        for _ in 0..3 {
            t.failed(IP, 0);
        }
        assert_eq!(step(FREE_FAILURES + 3), 8 * BASE_STEP_MS);
        assert_eq!(step(u32::MAX), MAX_STEP_MS);
        // An address already queued past the cap is refused without waiting.
        let mut busy = false;
        for _ in 0..100 {
            if t.admit(IP, 0) == Admission::Busy {
                busy = true;
                break;
            }
        }
        assert!(busy, "attempts beyond the cap are refused");
        assert_eq!(t.admit(OTHER, 0), Admission::After(0), "other addresses are not slowed");
    }

    #[test]
    fn failures_are_forgotten_after_a_quiet_while() {
        let t = AuthThrottle::default();
        for _ in 0..20 {
            t.failed(IP, 1_000);
        }
        assert_eq!(t.admit(IP, 1_000), Admission::After(0));
        assert_eq!(t.admit(IP, 1_000), Admission::After(MAX_STEP_MS));
        assert_eq!(t.admit(IP, 1_000 + FORGET_AFTER_MS), Admission::After(0));
    }
}
