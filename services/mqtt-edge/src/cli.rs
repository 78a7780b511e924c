//! Command-line flags shared by every binary that runs an edge (`mqtt-edge`, `hermes up`):
//! one flag per config key, named after it (`--mqtt-addr` sets `mqtt.addr`).

use std::path::PathBuf;

use toml::Value;

#[derive(Debug, Clone, Default, clap::Args)]
pub struct EdgeFlags {
    /// TOML config file (keys as `print-config` shows them).
    #[arg(long, env = "HERMES_CONFIG")]
    pub config: Option<PathBuf>,
    /// MQTT over TCP listen address (`mqtt.addr`); empty disables.
    #[arg(long)]
    pub mqtt_addr: Option<String>,
    /// MQTT over TLS listen address (`mqtt.tls_addr`); needs --mqtt-tls-cert/--mqtt-tls-key.
    #[arg(long)]
    pub mqtt_tls_addr: Option<String>,
    /// MQTT over WebSocket listen address (`mqtt.ws_addr`); empty disables.
    #[arg(long)]
    pub mqtt_ws_addr: Option<String>,
    /// PEM certificate chain for TLS (`mqtt.tls_cert`).
    #[arg(long)]
    pub mqtt_tls_cert: Option<String>,
    /// PEM private key for TLS (`mqtt.tls_key`).
    #[arg(long)]
    pub mqtt_tls_key: Option<String>,
    /// Accept clients without credentials (`auth.allow_anonymous`).
    #[arg(long)]
    pub allow_anonymous: bool,
    /// File of `username:argon2id-hash` lines (`auth.users_file`).
    #[arg(long)]
    pub users_file: Option<String>,
    /// NATS URL (`bus.nats_url`): account events, and routing to and from the other edges.
    #[arg(long)]
    pub bus_nats_url: Option<String>,
    /// This edge's name on the bus (`bus.node_id`); random when not given.
    #[arg(long)]
    pub bus_node_id: Option<String>,
    /// Redis URL of the relation and access directories (`state.redis_url`).
    #[arg(long)]
    pub state_redis_url: Option<String>,
    /// Metrics and health endpoint address (`ops.addr`); empty disables.
    #[arg(long)]
    pub ops_addr: Option<String>,
    /// `text` or `json` logs (`telemetry.log_format`).
    #[arg(long)]
    pub log_format: Option<String>,
}

impl EdgeFlags {
    /// The flags that were given, as (config key, value) overrides.
    pub fn overrides(&self) -> Vec<(&'static str, Value)> {
        let mut out = Vec::new();
        let strings = [
            ("mqtt.addr", &self.mqtt_addr),
            ("mqtt.tls_addr", &self.mqtt_tls_addr),
            ("mqtt.ws_addr", &self.mqtt_ws_addr),
            ("mqtt.tls_cert", &self.mqtt_tls_cert),
            ("mqtt.tls_key", &self.mqtt_tls_key),
            ("auth.users_file", &self.users_file),
            ("bus.nats_url", &self.bus_nats_url),
            ("bus.node_id", &self.bus_node_id),
            ("state.redis_url", &self.state_redis_url),
            ("ops.addr", &self.ops_addr),
            ("telemetry.log_format", &self.log_format),
        ];
        for (key, v) in strings {
            if let Some(v) = v {
                out.push((key, Value::String(v.clone())));
            }
        }
        if self.allow_anonymous {
            out.push(("auth.allow_anonymous", Value::Boolean(true)));
        }
        out
    }
}
