//! Command-line flags shared by every binary that runs an edge (`mqtt-edge`, `hermes up`):
//! one flag per config key, named after it (`--mqtt-addr` sets `mqtt.addr`).

use service_kit::flags::{SharedFlags, strings};
use toml::Value;

#[derive(Debug, Clone, Default, clap::Args)]
pub struct EdgeFlags {
    #[command(flatten)]
    pub shared: SharedFlags,
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
}

impl EdgeFlags {
    /// The flags that were given, as (config key, value) overrides.
    pub fn overrides(&self) -> Vec<(&'static str, Value)> {
        let mut out = strings(&[
            ("mqtt.addr", &self.mqtt_addr),
            ("mqtt.tls_addr", &self.mqtt_tls_addr),
            ("mqtt.ws_addr", &self.mqtt_ws_addr),
            ("mqtt.tls_cert", &self.mqtt_tls_cert),
            ("mqtt.tls_key", &self.mqtt_tls_key),
            ("auth.users_file", &self.users_file),
        ]);
        out.extend(self.shared.overrides());
        if self.allow_anonymous {
            out.push(("auth.allow_anonymous", Value::Boolean(true)));
        }
        out
    }
}
