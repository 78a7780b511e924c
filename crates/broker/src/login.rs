//! Brute-force protection for password logins, as the accounts tier asks for it: attempts per
//! client address and per account in fixed windows (a minute), and a temporary lockout of an
//! account after consecutive failed passwords. A success clears the account's failures.
//!
//! The accounts tier keeps it in memory when it runs alone (`accounts::limiter`) and in Redis
//! when `state.redis_url` is set (`redis_state::RedisLoginGuard`), so that every accounts
//! instance enforces one limit. Both pass [`contract::check`].

use std::net::IpAddr;
use std::time::Duration;

use crate::relations::BoxFuture;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginLimits {
    /// Login attempts one address may make per window; 0 = unlimited.
    pub attempts_per_ip: u32,
    /// Login attempts on one account per window, from anywhere; 0 = unlimited.
    pub attempts_per_account: u32,
    /// How long a window of attempts lasts: a minute (shorter in tests).
    pub window: Duration,
    /// Consecutive failed passwords that lock an account; 0 = never.
    pub failures_before_lockout: u32,
    pub lockout: Duration,
}

impl Default for LoginLimits {
    fn default() -> Self {
        LoginLimits {
            attempts_per_ip: 60,
            attempts_per_account: 20,
            window: Duration::from_secs(60),
            failures_before_lockout: 5,
            lockout: Duration::from_secs(300),
        }
    }
}

/// Why an attempt is refused before the password is even checked, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttled {
    /// Too many attempts from this address.
    Address { retry_after: Duration },
    /// Too many attempts on this account.
    AccountRate { retry_after: Duration },
    /// The account is locked after failed passwords.
    Account { retry_after: Duration },
}

impl Throttled {
    pub fn retry_after(&self) -> Duration {
        match self {
            Throttled::Address { retry_after }
            | Throttled::AccountRate { retry_after }
            | Throttled::Account { retry_after } => *retry_after,
        }
    }
}

/// Where login attempts and failures are counted. `account` is `enterprise/username` as the
/// API checked it; nothing here relies on that. Every method fails with `Err` when the store
/// cannot be reached: the caller then refuses the login (fails closed).
pub trait LoginGuard: Send + Sync + std::fmt::Debug {
    /// Counts an attempt from `ip` on `account`, or refuses it (`Ok(Err(_))`, not counted
    /// anywhere) when the account is locked or a limit is reached.
    fn attempt<'a>(&'a self, ip: IpAddr, account: &'a str) -> BoxFuture<'a, Result<Result<(), Throttled>, String>>;
    /// A wrong password for `account`; `true` if that locked it.
    fn failed<'a>(&'a self, account: &'a str) -> BoxFuture<'a, Result<bool, String>>;
    /// The right password for `account`: its failures (and lockout) are forgotten.
    fn succeeded<'a>(&'a self, account: &'a str) -> BoxFuture<'a, Result<(), String>>;
}

/// The behaviour every [`LoginGuard`] must have. Accounts start with `prefix`, addresses are
/// derived from it (v4 and v6), so calls with different prefixes do not meet in a shared store.
pub mod contract {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use std::time::{Duration, Instant};

    use super::{LoginGuard, LoginLimits, Throttled};

    /// `guard` must have been made with `limits`, which must allow at least two attempts per
    /// address and per account and two failures, with a window and a lockout of at most a
    /// second (the check waits for both to end once).
    pub async fn check(guard: &dyn LoginGuard, prefix: &str, limits: LoginLimits) {
        let LoginLimits { attempts_per_ip: per_ip, attempts_per_account: per_account, window, .. } = limits;
        let (failures, lockout) = (limits.failures_before_lockout, limits.lockout);
        assert!(per_ip >= 2 && per_account >= 2 && failures >= 2, "{limits:?}");
        assert!(window <= Duration::from_secs(1) && lockout <= Duration::from_secs(1), "{limits:?}");
        let started = Instant::now();
        let ips = Addresses::new(prefix);
        let account = |name: &str| format!("{prefix}acme/{name}");
        let ok = Ok(Ok(()));

        // Per address, v4 and v6: so many attempts a window, on any accounts; other addresses
        // are not affected.
        let (v4, v6) = (ips.v4(1), ips.v6(1));
        for ip in [v4, v6] {
            for i in 0..per_ip {
                assert_eq!(guard.attempt(ip, &account(&format!("ip-{i}"))).await, ok, "{ip}: attempt {i}");
            }
            match guard.attempt(ip, &account("ip-x")).await.expect("attempt") {
                Err(Throttled::Address { retry_after }) => within(retry_after, window),
                other => panic!("{ip}: {other:?} after {per_ip} attempts"),
            }
        }
        assert_eq!(guard.attempt(ips.v4(2), &account("ip-x")).await, ok, "another v4 address");
        assert_eq!(guard.attempt(ips.v6(2), &account("ip-x")).await, ok, "another v6 address");

        // Per account, from anywhere.
        let alice = account("alice");
        for i in 0..per_account {
            assert_eq!(guard.attempt(ips.v4(10 + i), &alice).await, ok, "alice: attempt {i}");
        }
        // An address one attempt short of its limit: refused on alice, that does not count.
        let near = ips.v6(3);
        for i in 0..per_ip - 1 {
            assert_eq!(guard.attempt(near, &account(&format!("near-{i}"))).await, ok);
        }
        match guard.attempt(near, &alice).await.expect("attempt") {
            Err(Throttled::AccountRate { retry_after }) => within(retry_after, window),
            other => panic!("alice: {other:?} after {per_account} attempts"),
        }
        assert_eq!(
            guard.attempt(near, &account("near-x")).await,
            ok,
            "a refused attempt did not count for the address"
        );
        // An account one attempt short of its limit: refused for the address, that does not count.
        let bob = account("bob");
        for i in 0..per_account - 1 {
            assert_eq!(guard.attempt(ips.v6(100 + i), &bob).await, ok);
        }
        assert!(matches!(guard.attempt(v4, &bob).await, Ok(Err(Throttled::Address { .. }))));
        assert_eq!(guard.attempt(ips.v4(200), &bob).await, ok, "a refused attempt did not count for the account");

        // Lockout after consecutive failures; other accounts are not locked.
        let carol = account("carol");
        for i in 1..failures {
            assert_eq!(guard.failed(&carol).await, Ok(false), "failure {i} of {failures}");
        }
        assert_eq!(guard.failed(&carol).await, Ok(true), "failure {failures} locks");
        match guard.attempt(ips.v4(201), &carol).await.expect("attempt") {
            Err(Throttled::Account { retry_after }) => within(retry_after, lockout),
            other => panic!("carol is locked: {other:?}"),
        }
        let dave = account("dave");
        assert_eq!(guard.attempt(ips.v4(201), &dave).await, ok, "other accounts are not locked");
        for _ in 1..failures {
            assert_eq!(guard.failed(&dave).await, Ok(false), "failures are counted per account");
        }

        // A success clears the failures.
        let erin = account("erin");
        for _ in 1..failures {
            assert_eq!(guard.failed(&erin).await, Ok(false));
        }
        guard.succeeded(&erin).await.expect("succeeded");
        for _ in 1..failures {
            assert_eq!(guard.failed(&erin).await, Ok(false), "counting starts again after a success");
        }
        assert_eq!(guard.failed(&erin).await, Ok(true));
        guard.succeeded(&account("nobody")).await.expect("a success with no failures");

        // Accounts of any bytes are accounts of their own (names are checked before they get
        // here, but nothing relies on it).
        let odd = account("x:{y} *\n\u{2028}é");
        for _ in 0..failures {
            guard.failed(&odd).await.expect("failed");
        }
        assert!(matches!(guard.attempt(ips.v4(202), &odd).await, Ok(Err(Throttled::Account { .. }))));
        for other in [account("x"), account("x:"), account("x:{y}"), account("x:{y} *")] {
            assert_eq!(guard.attempt(ips.v4(202), &other).await, ok, "{other:?}");
        }

        // Windows and lockouts end.
        assert!(started.elapsed() < window, "the check took longer than a window: its refusals proved little");
        sleep(window.max(lockout) + Duration::from_millis(50)).await;
        assert_eq!(guard.attempt(v4, &account("later")).await, ok, "a new window for the address");
        assert_eq!(guard.attempt(v6, &account("later")).await, ok, "a new window for the address");
        assert_eq!(guard.attempt(ips.v4(203), &alice).await, ok, "a new window for the account");
        assert_eq!(guard.attempt(ips.v4(203), &carol).await, ok, "the lockout is over");
        assert_eq!(guard.failed(&carol).await, Ok(false), "and failures count from zero again");
        assert_eq!(guard.attempt(ips.v4(203), &odd).await, ok);
    }

    /// `guard` must have been made with every limit 0: nothing is ever refused nor locked.
    pub async fn check_unlimited(guard: &dyn LoginGuard, prefix: &str) {
        let ip = Addresses::new(prefix).v6(1);
        let account = format!("{prefix}acme/alice");
        for _ in 0..50 {
            assert_eq!(guard.attempt(ip, &account).await, Ok(Ok(())));
            assert_eq!(guard.failed(&account).await, Ok(false));
        }
    }

    fn within(retry_after: Duration, at_most: Duration) {
        assert!(
            retry_after > Duration::ZERO && retry_after <= at_most,
            "retry after {retry_after:?}, at most {at_most:?}"
        );
    }

    /// Addresses of their own for each prefix: 10.a.b.n and 2001:db8:ab::n, `ab` from a hash.
    struct Addresses(u16);

    impl Addresses {
        fn new(prefix: &str) -> Self {
            let hash = prefix.bytes().fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
            Addresses((hash ^ (hash >> 16)) as u16)
        }

        fn v4(&self, n: u32) -> IpAddr {
            let [a, b] = self.0.to_be_bytes();
            IpAddr::V4(Ipv4Addr::new(10, a, b, u8::try_from(n).expect("n < 256")))
        }

        fn v6(&self, n: u32) -> IpAddr {
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, self.0, 0, 0, 0, 0, u16::try_from(n).expect("n < 65536")))
        }
    }

    /// Sleeps without depending on a runtime (the broker crate has none): a thread wakes the
    /// task.
    async fn sleep(d: Duration) {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let done = Arc::new(AtomicBool::new(false));
        let waker = Arc::new(Mutex::new(None::<std::task::Waker>));
        let (flag, w) = (done.clone(), waker.clone());
        std::thread::spawn(move || {
            std::thread::sleep(d);
            flag.store(true, Ordering::SeqCst);
            if let Some(w) = w.lock().unwrap_or_else(|e| e.into_inner()).take() {
                w.wake();
            }
        });
        std::future::poll_fn(|cx| {
            *waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
            if done.load(Ordering::SeqCst) { std::task::Poll::Ready(()) } else { std::task::Poll::Pending }
        })
        .await;
    }
}
