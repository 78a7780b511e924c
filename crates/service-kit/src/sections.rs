//! Configuration sections that every service's tree has under the same names: `[bus]`, `[state]`
//! and `[ops]` (with `[telemetry]`, in [`crate::telemetry`]). A service that runs without one of
//! them says so in its log.

use serde::{Deserialize, Serialize};

use crate::http::HttpLimits;

/// The bus between services.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct BusConfig {
    /// NATS server URL (`nats://host:4222`); empty: no bus between processes. Edges route
    /// messages to each other over it.
    pub nats_url: String,
    /// This node's name among its service's nodes on the bus; empty: a random one at each start.
    pub node_id: String,
    /// Seconds the bus keeps the QoS 1/2 messages edges route to each other (a JetStream
    /// stream), so an edge resuming the session of a dead edge gives it what it missed; 0: not
    /// kept (and missed).
    pub keep_secs: u64,
    /// The most bytes kept; the oldest messages go first past it.
    pub keep_max_bytes: u64,
    /// `file` or `memory`: where the NATS server keeps them.
    pub keep_storage: String,
    /// Seconds the bus waits for an edge to acknowledge a kept message it gave to a shared
    /// subscription's member there, before it gives the message to a member again (elsewhere,
    /// if that edge died or froze). 0: no such groups, queue groups alone (faster; what an
    /// edge took and died with is lost).
    pub share_ack_secs: u64,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            nats_url: String::new(),
            node_id: String::new(),
            keep_secs: 900,
            keep_max_bytes: 1 << 30,
            keep_storage: "file".into(),
            share_ack_secs: 30,
        }
    }
}

/// The longest `bus.keep_secs`: a year (NATS counts ages in nanoseconds).
pub const MAX_KEEP_SECS: u64 = 365 * 24 * 3600;
/// The longest `bus.share_ack_secs`: a day.
pub const MAX_SHARE_ACK_SECS: u64 = 24 * 3600;

impl BusConfig {
    /// Checks the keep settings; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        if !matches!(self.keep_storage.as_str(), "file" | "memory") {
            return Err(format!("bus.keep_storage: `{}` is neither `file` nor `memory`", self.keep_storage));
        }
        if self.keep_secs > MAX_KEEP_SECS {
            return Err(format!("bus.keep_secs: at most {MAX_KEEP_SECS} (a year), not {}", self.keep_secs));
        }
        if self.share_ack_secs > MAX_SHARE_ACK_SECS {
            return Err(format!(
                "bus.share_ack_secs: at most {MAX_SHARE_ACK_SECS} (a day), not {}",
                self.share_ack_secs
            ));
        }
        if self.keep_secs > 0 && self.keep_max_bytes == 0 {
            return Err("bus.keep_max_bytes: must be positive while bus.keep_secs is".into());
        }
        Ok(())
    }
}

/// State shared between processes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// Redis URL (`redis://host:6379/0`, or `redis+cluster://host:7000,host:7001` for a Redis
    /// Cluster) of the directories edges read (relations, ACL tables, revocations) and the
    /// cluster's state; empty: none.
    pub redis_url: String,
    /// Replicas of its primary a session-journal write or stream append must reach (Redis
    /// `WAIT`, up to 500 ms) before the PUBLISH it carries is acknowledged, so that a failover
    /// loses none of them; 0 (the default): the primary's answer is enough.
    pub redis_wait_replicas: u32,
}

/// The operations HTTP endpoint: `/metrics`, `/healthz`, `/readyz`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct OpsConfig {
    /// Empty disables the endpoint.
    pub addr: String,
    /// Seconds a client may take to send a complete request header (and wait between requests).
    pub header_timeout_secs: u64,
    /// Seconds a client may take to send a request body (408 past it).
    pub body_timeout_secs: u64,
    /// Seconds a connection may stay silent between requests.
    pub idle_timeout_secs: u64,
    /// Connections one client address may hold at once.
    pub max_connections_per_address: usize,
}

impl Default for OpsConfig {
    fn default() -> Self {
        let limits = HttpLimits::default();
        OpsConfig {
            addr: "127.0.0.1:9100".into(),
            header_timeout_secs: limits.header_timeout.as_secs(),
            body_timeout_secs: limits.body_timeout.as_secs(),
            idle_timeout_secs: limits.idle_timeout.as_secs(),
            max_connections_per_address: limits.max_connections_per_address,
        }
    }
}

impl OpsConfig {
    /// The endpoint's [`HttpLimits`]; an error names the key that is not positive.
    pub fn limits(&self) -> Result<HttpLimits, String> {
        HttpLimits::from_config(
            "ops",
            self.header_timeout_secs,
            self.body_timeout_secs,
            self.idle_timeout_secs,
            self.max_connections_per_address,
        )
    }

    /// Checks what serde cannot. Names the key.
    pub fn validate(&self) -> Result<(), String> {
        self.limits().map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::BusConfig;

    #[test]
    fn the_keep_settings_are_checked_and_name_their_key() {
        assert_eq!(BusConfig::default().validate(), Ok(()));
        let memory = BusConfig { keep_storage: "memory".into(), ..BusConfig::default() };
        assert_eq!(memory.validate(), Ok(()));
        let disk = BusConfig { keep_storage: "disk".into(), ..BusConfig::default() };
        assert!(disk.validate().is_err_and(|e| e.starts_with("bus.keep_storage")));
        let no_room = BusConfig { keep_max_bytes: 0, ..BusConfig::default() };
        assert!(no_room.validate().is_err_and(|e| e.starts_with("bus.keep_max_bytes")));
        let off = BusConfig { keep_secs: 0, keep_max_bytes: 0, ..BusConfig::default() };
        assert_eq!(off.validate(), Ok(()), "nothing kept needs no room");
        for secs in [super::MAX_SHARE_ACK_SECS + 1, u64::MAX] {
            let wait = BusConfig { share_ack_secs: secs, ..BusConfig::default() };
            assert!(wait.validate().is_err_and(|e| e.starts_with("bus.share_ack_secs")), "{secs}");
        }
        for secs in [0, 1, super::MAX_SHARE_ACK_SECS] {
            assert_eq!(BusConfig { share_ack_secs: secs, ..BusConfig::default() }.validate(), Ok(()), "{secs}");
        }
        let most = BusConfig { keep_secs: super::MAX_KEEP_SECS, keep_max_bytes: u64::MAX, ..BusConfig::default() };
        assert_eq!(most.validate(), Ok(()));
        let too_long = BusConfig { keep_secs: u64::MAX, ..BusConfig::default() };
        assert!(too_long.validate().is_err_and(|e| e.starts_with("bus.keep_secs")));
    }
}
