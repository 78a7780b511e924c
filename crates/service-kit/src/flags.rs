//! The command-line flags every service binary has (`mqtt-edge`, `accounts`, `hermes up`), for
//! the settings they share (`service_kit::sections`): one flag per config key, named after it.

use std::path::PathBuf;

use toml::Value;

#[derive(Debug, Clone, Default, clap::Args)]
pub struct SharedFlags {
    /// TOML config file (keys as `print-config` shows them).
    #[arg(long, env = "HERMES_CONFIG")]
    pub config: Option<PathBuf>,
    /// NATS URL (`bus.nats_url`): the bus between services (account events; for edges, also
    /// routing to and from the other edges).
    #[arg(long)]
    pub bus_nats_url: Option<String>,
    /// This node's name on the bus (`bus.node_id`); random when not given.
    #[arg(long)]
    pub bus_node_id: Option<String>,
    /// Redis URL of the directories edges read (`state.redis_url`).
    #[arg(long)]
    pub state_redis_url: Option<String>,
    /// Metrics and health endpoint address (`ops.addr`); empty disables.
    #[arg(long)]
    pub ops_addr: Option<String>,
    /// `text` or `json` logs (`telemetry.log_format`).
    #[arg(long)]
    pub log_format: Option<String>,
}

impl SharedFlags {
    /// The flags that were given, as (config key, value) overrides.
    pub fn overrides(&self) -> Vec<(&'static str, Value)> {
        strings(&[
            ("bus.nats_url", &self.bus_nats_url),
            ("bus.node_id", &self.bus_node_id),
            ("state.redis_url", &self.state_redis_url),
            ("ops.addr", &self.ops_addr),
            ("telemetry.log_format", &self.log_format),
        ])
    }
}

/// The string flags that were given, as (config key, value) overrides.
pub fn strings(flags: &[(&'static str, &Option<String>)]) -> Vec<(&'static str, Value)> {
    flags.iter().filter_map(|(key, v)| Some((*key, Value::String(v.as_ref()?.clone())))).collect()
}
