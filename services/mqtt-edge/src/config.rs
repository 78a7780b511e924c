//! The edge's configuration tree (`[mqtt]`, `[limits]`, `[auth]`), with production defaults.

use serde::{Deserialize, Serialize};

pub use service_kit::sections::{BusConfig, OpsConfig, StateConfig};
use service_kit::telemetry::TelemetryConfig;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
#[derive(Default)]
pub struct EdgeConfig {
    pub mqtt: MqttConfig,
    pub limits: LimitsConfig,
    pub auth: AuthConfig,
    pub ops: OpsConfig,
    pub bus: BusConfig,
    pub state: StateConfig,
    pub streams: StreamsConfig,
    pub telemetry: TelemetryConfig,
}

/// Listeners. An empty address disables that listener; port 0 picks a free port.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// MQTT over TCP.
    pub addr: String,
    /// MQTT over TLS; needs `tls_cert` and `tls_key`.
    pub tls_addr: String,
    /// MQTT over WebSocket (subprotocol `mqtt`, any path).
    pub ws_addr: String,
    /// PEM certificate chain for the TLS listener.
    pub tls_cert: String,
    /// PEM private key for the TLS listener.
    pub tls_key: String,
    /// ntex worker threads; 0 = one per CPU.
    pub workers: usize,
    /// Listen backlog: a reconnect storm queues here instead of losing SYNs.
    pub backlog: i32,
    /// Let several edge processes listen on the same port (SO_REUSEPORT; the kernel spreads
    /// the connections). Off by default, so a second server on a taken port fails to start
    /// instead of silently taking half the clients.
    pub reuse_port: bool,
    /// Interval of the `$SYS/broker/...` statistics, in seconds; 0 disables them.
    pub sys_interval_secs: u64,
    /// How long a stopping edge of a cluster keeps the sessions its clients left behind, to
    /// hand each over to the edge its client reconnects to; 0 lets them go at once.
    pub drain_secs: u16,
    /// Where clients reach this edge's plain TCP listener (`host:port`), announced to the
    /// other edges of a cluster: a stopping edge names another to its v5 clients (Server
    /// Reference), one with a listener of the kind the client came to. Empty: `addr` unless
    /// it listens on every address (`0.0.0.0`, `[::]`), then none.
    pub advertise: String,
    /// [`MqttConfig::advertise`] for the TLS listener (`tls_addr`): a name its certificate
    /// holds, for clients that check it.
    pub advertise_tls: String,
    /// [`MqttConfig::advertise`] for the WebSocket listener (`ws_addr`): `host:port`, or the
    /// URL clients reach it at (`wss://mqtt.example.com/mqtt`). Empty: none is announced, and
    /// clients on another edge's WebSocket listener are named none of this one's (browsers
    /// come through proxies, at URLs an edge cannot see).
    pub advertise_ws: String,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            addr: "127.0.0.1:1883".into(),
            tls_addr: String::new(),
            ws_addr: "127.0.0.1:8083".into(),
            tls_cert: String::new(),
            tls_key: String::new(),
            workers: 0,
            backlog: 4096,
            reuse_port: false,
            sys_interval_secs: 10,
            drain_secs: 5,
            advertise: String::new(),
            advertise_tls: String::new(),
            advertise_ws: String::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest packet accepted or sent, in bytes.
    pub max_packet_size: u32,
    pub max_topic_length: usize,
    pub max_topic_levels: usize,
    pub max_subscriptions_per_client: usize,
    /// QoS 1/2 messages in flight to one client (further capped by its receive maximum).
    pub max_inflight: u16,
    /// QoS 1/2 messages in flight from one client (our receive maximum).
    pub max_inbound_inflight: u16,
    /// Messages a session queues beyond the in-flight window (online or offline).
    pub max_queued_messages: usize,
    /// Messages waiting for a subscriber's connection (beyond its in-flight window) at which
    /// the clients publishing to it wait for their PUBACKs: how much a fast publisher may pile
    /// up for a slower reader, and so the latency it can add. At most `max_queued_messages`
    /// (a session never drops what a publisher waited for), where the edge's own routing waits
    /// (messages from other edges, catch-ups, stream replays).
    pub max_backlog: usize,
    /// `drop_oldest` or `drop_newest` when the queue is full.
    pub queue_drop_policy: String,
    /// Queue QoS 0 messages for offline persistent sessions too.
    pub queue_qos0: bool,
    /// Deliveries waiting for one connection's socket before it is closed as too slow.
    pub max_pending_deliveries: usize,
    /// Seconds a client has to send CONNECT after the TCP/TLS/WS handshake.
    pub connect_timeout_secs: u16,
    /// Highest keep-alive the server accepts; larger requests get this value (v5 server keep-alive).
    pub max_keepalive_secs: u16,
    /// A subscriber that takes nothing for this long while publishers wait for it is
    /// disconnected (v5 0x97); its QoS 1/2 messages stay in its session.
    pub max_stall_secs: u16,
    /// Presence changes are announced once they have lasted this long: reconnects and one-shot
    /// connections (`hermes send`) make no online/offline flicker. 0 announces at once.
    pub presence_grace_secs: u16,
    /// Connections per worker thread, all listeners together; beyond it new connections wait in
    /// the listen backlog (they are not refused) until one closes. ntex keeps this limit per
    /// process: edges started in one process share the last value set.
    pub max_connections: usize,
    /// Highest v5 session expiry honoured, in seconds.
    pub max_session_expiry_secs: u32,
    /// v5 topic aliases a client may use towards the server.
    pub max_topic_alias: u16,
    /// Times a QoS 1/2 message is sent to a persistent session (once, then again at each
    /// reconnect) without being acknowledged before it goes to the dead-letter stream instead:
    /// a client that fails on a message does not get it forever. 0 never gives up.
    pub max_deliveries: u16,
    /// Retained messages under one first topic level (for an enterprise's users, its id: the
    /// ACL keeps them under it) past which a client's retained PUBLISH that would add one is
    /// refused (v5 0x97 Quota exceeded; v3: dropped, as a PUBLISH the ACL refuses). Presence
    /// and signatures, which the edge retains, count but are always kept. 0: no limit.
    pub max_retained_per_tenant: usize,
    /// The same for the bytes of their payloads (a larger message replacing one counts too).
    pub max_retained_bytes_per_tenant: usize,
    /// Milliseconds a persistent session's message that went out to its connection at once
    /// may wait to be written to the session journal: acknowledged by its subscriber
    /// meanwhile, it is never written, and its publisher's PUBACK goes at once. The publisher's
    /// PUBACK may be this much later when the subscriber is slower. 0 writes at once; at most
    /// 1000.
    pub journal_linger_ms: u16,
}

/// The longest `limits.journal_linger_ms`: a PUBACK later than this is a stall, not a linger.
const MAX_JOURNAL_LINGER_MS: u16 = 1000;

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_packet_size: 1024 * 1024,
            max_topic_length: 1024,
            max_topic_levels: 32,
            max_subscriptions_per_client: 100,
            max_inflight: 32,
            max_inbound_inflight: 32,
            max_queued_messages: 1000,
            max_backlog: 64,
            queue_drop_policy: "drop_oldest".into(),
            queue_qos0: false,
            max_pending_deliveries: 1000,
            connect_timeout_secs: 10,
            max_keepalive_secs: 1200,
            max_stall_secs: 10,
            presence_grace_secs: 3,
            max_connections: 100_000,
            max_session_expiry_secs: 7 * 24 * 3600,
            max_topic_alias: 32,
            max_deliveries: 10,
            max_retained_per_tenant: 1_000_000,
            max_retained_bytes_per_tenant: 256 * 1024 * 1024,
            journal_linger_ms: 1,
        }
    }
}

/// Durable streams (`broker::streams`): which topics keep their messages, for how long, and
/// when the edge gives up on a message (the dead-letter stream).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct StreamsConfig {
    /// Topic filters whose topics are durable streams (each topic its own stream); empty turns
    /// durable streams off.
    pub rules: Vec<String>,
    /// Messages a stream keeps at most (the newest).
    pub max_len: u64,
    /// Seconds a stream keeps a message.
    pub max_age_secs: u64,
    /// Messages one resume replays at most; the client resumes again from the last it got.
    pub max_replay: usize,
}

impl Default for StreamsConfig {
    fn default() -> Self {
        let retention = broker::streams::Retention::default();
        StreamsConfig {
            rules: broker::streams::DEFAULT_RULES.iter().map(|r| r.to_string()).collect(),
            max_len: retention.max_len,
            max_age_secs: retention.max_age_secs,
            max_replay: 1000,
        }
    }
}

impl StreamsConfig {
    pub fn retention(&self) -> broker::streams::Retention {
        broker::streams::Retention { max_len: self.max_len, max_age_secs: self.max_age_secs }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Accept clients without credentials. Off by default.
    pub allow_anonymous: bool,
    /// File of `username:argon2id-PHC-hash` lines (`hermes passwd` writes them).
    pub users_file: String,
    /// The accounts tier's token public key (`k4.public.…`); enables token CONNECTs.
    pub token_public_key: String,
    /// ACL rules (`user`/`topic`/`pattern` lines). Token users get the built-in enterprise rules
    /// when empty; other users are then unrestricted, as with Mosquitto without an ACL file.
    pub acl_file: String,
    /// Auto-subscribe table (`FILTER QOS` lines) for token users; empty = the built-in one.
    pub auto_subscribe_file: String,
}

impl EdgeConfig {
    /// Checks what serde cannot: values that parse but make no sense. Names the key.
    pub fn validate(&self) -> Result<(), String> {
        self.bus.validate()?;
        let m = &self.mqtt;
        for (key, address) in
            [("advertise", &m.advertise), ("advertise_tls", &m.advertise_tls), ("advertise_ws", &m.advertise_ws)]
        {
            if !crate::peers::usable(address) {
                return Err(format!(
                    "mqtt.{key} must be at most 255 bytes without spaces or control characters, not `{}`",
                    address.escape_debug()
                ));
            }
        }
        let l = &self.limits;
        if !matches!(l.queue_drop_policy.as_str(), "drop_oldest" | "drop_newest") {
            return Err(format!(
                "limits.queue_drop_policy must be drop_oldest or drop_newest, not `{}`",
                l.queue_drop_policy
            ));
        }
        if l.journal_linger_ms > MAX_JOURNAL_LINGER_MS {
            return Err(format!(
                "limits.journal_linger_ms must be at most {MAX_JOURNAL_LINGER_MS}, not {}",
                l.journal_linger_ms
            ));
        }
        for (key, v) in [
            ("limits.max_inflight", usize::from(l.max_inflight)),
            ("limits.max_inbound_inflight", usize::from(l.max_inbound_inflight)),
            ("limits.max_topic_length", l.max_topic_length),
            ("limits.max_topic_levels", l.max_topic_levels),
            ("limits.max_packet_size", l.max_packet_size as usize),
            ("limits.connect_timeout_secs", usize::from(l.connect_timeout_secs)),
            ("limits.max_keepalive_secs", usize::from(l.max_keepalive_secs)),
            ("limits.max_stall_secs", usize::from(l.max_stall_secs)),
            ("limits.max_backlog", l.max_backlog),
        ] {
            if v == 0 {
                return Err(format!("{key} must be greater than 0"));
            }
        }
        self.ops.validate()?;
        broker::streams::StreamRules::new(self.streams.rules.iter().cloned())
            .map_err(|e| format!("streams.rules: {e}"))?;
        for (key, v) in [
            ("streams.max_len", self.streams.max_len),
            ("streams.max_age_secs", self.streams.max_age_secs),
            ("streams.max_replay", self.streams.max_replay as u64),
        ] {
            if v == 0 {
                return Err(format!("{key} must be greater than 0"));
            }
        }
        if !self.mqtt.tls_addr.is_empty() && (self.mqtt.tls_cert.is_empty() || self.mqtt.tls_key.is_empty()) {
            return Err("mqtt.tls_addr needs mqtt.tls_cert and mqtt.tls_key".into());
        }
        if self.mqtt.addr.is_empty() && self.mqtt.tls_addr.is_empty() && self.mqtt.ws_addr.is_empty() {
            return Err("no listener: set mqtt.addr, mqtt.tls_addr or mqtt.ws_addr".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_of_zero_is_refused_by_name() {
        assert_eq!(EdgeConfig::default().validate(), Ok(()));
        let mut c = EdgeConfig::default();
        c.limits.max_backlog = 0;
        assert_eq!(c.validate(), Err("limits.max_backlog must be greater than 0".into()));
        c.limits.max_backlog = 1;
        c.limits.max_inbound_inflight = 0;
        assert_eq!(c.validate(), Err("limits.max_inbound_inflight must be greater than 0".into()));
    }

    #[test]
    fn a_journal_linger_is_at_most_a_second_and_may_be_none() {
        let mut c = EdgeConfig::default();
        c.limits.journal_linger_ms = 0;
        assert_eq!(c.validate(), Ok(()));
        c.limits.journal_linger_ms = 1000;
        assert_eq!(c.validate(), Ok(()));
        c.limits.journal_linger_ms = 1001;
        assert_eq!(c.validate(), Err("limits.journal_linger_ms must be at most 1000, not 1001".into()));
    }

    #[test]
    fn an_address_to_advertise_that_no_client_could_be_given_is_refused() {
        type Field = fn(&mut EdgeConfig) -> &mut String;
        let fields: [(&str, Field); 3] = [
            ("advertise", |c| &mut c.mqtt.advertise),
            ("advertise_tls", |c| &mut c.mqtt.advertise_tls),
            ("advertise_ws", |c| &mut c.mqtt.advertise_ws),
        ];
        for (key, field) in fields {
            let mut c = EdgeConfig::default();
            for fine in
                ["", "edge-1.example.com:1883", "wss://edge-1.example.com/mqtt", &format!("{}:1", "h".repeat(253))]
            {
                *field(&mut c) = fine.into();
                assert_eq!(c.validate(), Ok(()), "{key} {fine}");
            }
            for bad in ["edge 1:1883", "edge-1:1883\n", &format!("{}:1", "h".repeat(254))] {
                *field(&mut c) = bad.into();
                let refused = c.validate().expect_err(bad);
                let want = format!("mqtt.{key} must be at most 255 bytes");
                assert!(refused.starts_with(&want), "{refused}");
            }
        }
    }
}
