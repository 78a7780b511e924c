//! What an HTTP listener allows one client: how long it may take over a request header, a
//! request body and silence, and how many connections one address may hold at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Limits for one HTTP listener; [`Default`] is what [`super::serve`] and
/// [`super::serve_with_tls`] apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// From accept (after the TLS handshake, if any) to a complete first request header. For
    /// HTTP/1 it also bounds each later header and the keep-alive wait before it: hyper starts
    /// its header timer as soon as it waits for the next request, not at its first byte.
    pub header_timeout: Duration,
    /// From a complete request header to the end of its body. A body still arriving then is
    /// answered 408 and the connection closed.
    pub body_timeout: Duration,
    /// A connection that has read and written nothing for this long, and is not handling a
    /// request, is closed. A response that is still being written is not idle; one whose client
    /// stopped reading it is.
    pub idle_timeout: Duration,
    /// Connections one client address may hold at once on one listener, TLS handshakes in
    /// progress included. The next one is closed as soon as it is accepted; 0 refuses all.
    pub max_connections_per_address: usize,
}

/// Longer than any connection lives: timeouts are cut to this, so that "now + timeout" cannot
/// overflow (and panic) when a caller passes `Duration::MAX` to mean "never".
const NEVER: Duration = Duration::from_secs(365 * 24 * 60 * 60);

impl HttpLimits {
    /// Limits from a configuration section's keys (`{section}.header_timeout_secs`,
    /// `body_timeout_secs`, `idle_timeout_secs`, `max_connections_per_address`), each of which
    /// must be positive; the error names the key that is not.
    pub fn from_config(
        section: &str,
        header_timeout_secs: u64,
        body_timeout_secs: u64,
        idle_timeout_secs: u64,
        max_connections_per_address: usize,
    ) -> Result<HttpLimits, String> {
        let keys = [
            ("header_timeout_secs", header_timeout_secs),
            ("body_timeout_secs", body_timeout_secs),
            ("idle_timeout_secs", idle_timeout_secs),
            ("max_connections_per_address", max_connections_per_address as u64),
        ];
        if let Some((key, _)) = keys.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{section}.{key} must be positive"));
        }
        Ok(HttpLimits {
            header_timeout: Duration::from_secs(header_timeout_secs),
            body_timeout: Duration::from_secs(body_timeout_secs),
            idle_timeout: Duration::from_secs(idle_timeout_secs),
            max_connections_per_address,
        })
    }

    /// These limits with every timeout at most [`NEVER`].
    pub(super) fn bounded(self) -> HttpLimits {
        HttpLimits {
            header_timeout: self.header_timeout.min(NEVER),
            body_timeout: self.body_timeout.min(NEVER),
            idle_timeout: self.idle_timeout.min(NEVER),
            ..self
        }
    }
}

impl Default for HttpLimits {
    /// Generous for a real client on a slow mobile link, short enough that a client holding
    /// connections open without sending costs little.
    fn default() -> Self {
        HttpLimits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections_per_address: 64,
        }
    }
}

/// Open connections per client address on one listener.
#[derive(Clone)]
pub(super) struct PerAddress {
    max: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One connection's place in its address's count; dropping it frees the place.
pub(super) struct AddressSlot {
    ip: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl PerAddress {
    pub(super) fn new(max: usize) -> PerAddress {
        PerAddress { max, open: Arc::default() }
    }

    /// A place for one more connection from `ip`, or `None` when it holds `max` already.
    pub(super) fn try_acquire(&self, ip: IpAddr) -> Option<AddressSlot> {
        // An IPv4 client of a dual-stack listener arrives as ::ffff:a.b.c.d; count it as a.b.c.d.
        let ip = ip.to_canonical();
        // The count stays consistent even if a holder panicked: every change is one statement.
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.get(&ip).copied().unwrap_or(0);
        if count >= self.max {
            return None;
        }
        open.insert(ip, count + 1);
        Some(AddressSlot { ip, open: self.open.clone() })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            // Forget addresses with no connections, so the map only grows with concurrent clients.
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_max_places_and_a_freed_one_back() {
        let per = PerAddress::new(2);
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let first = per.try_acquire(a).expect("first");
        let _second = per.try_acquire(a).expect("second");
        assert!(per.try_acquire(a).is_none(), "a third from the same address");
        assert!(per.try_acquire(b).is_some(), "another address has its own count");
        drop(first);
        assert!(per.try_acquire(a).is_some(), "the freed place is available again");
    }

    #[test]
    fn ipv4_mapped_addresses_count_as_ipv4() {
        let per = PerAddress::new(1);
        let _v4 = per.try_acquire("10.0.0.1".parse().expect("ip")).expect("first");
        assert!(per.try_acquire("::ffff:10.0.0.1".parse().expect("ip")).is_none());
    }

    #[test]
    fn timeouts_of_duration_max_mean_never_without_overflowing() {
        let never = HttpLimits { idle_timeout: Duration::MAX, ..HttpLimits::default() }.bounded();
        assert_eq!(never.idle_timeout, NEVER);
        assert_eq!(never.header_timeout, HttpLimits::default().header_timeout);
        let _ = tokio::time::Instant::now() + never.idle_timeout;
    }

    #[test]
    fn limits_from_config_keys_must_be_positive() {
        let limits = HttpLimits::from_config("ops", 10, 30, 60, 64).expect("the defaults");
        assert_eq!(limits, HttpLimits::default());
        assert_eq!(
            HttpLimits::from_config("http", 0, 30, 60, 64),
            Err("http.header_timeout_secs must be positive".into())
        );
        assert_eq!(
            HttpLimits::from_config("ops", 1, 1, 1, 0),
            Err("ops.max_connections_per_address must be positive".into())
        );
    }

    #[test]
    fn released_addresses_are_forgotten() {
        let per = PerAddress::new(1);
        drop(per.try_acquire("10.0.0.1".parse().expect("ip")));
        assert!(per.open.lock().expect("lock").is_empty());
    }
}
