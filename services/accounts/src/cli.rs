//! The `accounts` binary's flags: one per config key, named after it (`--http-addr` sets
//! `http.addr`).

use std::path::PathBuf;

use toml::Value;

#[derive(Debug, Clone, Default, clap::Args)]
pub struct NodeFlags {
    /// TOML config file (keys as `print-config` shows them).
    #[arg(long, env = "HERMES_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where keys, uploads and the SQLite database live (`data_dir`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// REST API listen address (`http.addr`).
    #[arg(long)]
    pub http_addr: Option<String>,
    /// Postgres URL (`http.database_url`); empty: SQLite in the data directory. Flags show in
    /// `ps`: a URL with a password is better given as HERMES_HTTP__DATABASE_URL or in the file.
    #[arg(long)]
    pub http_database_url: Option<String>,
    /// NATS URL account events are published to (`bus.nats_url`).
    #[arg(long)]
    pub bus_nats_url: Option<String>,
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

impl NodeFlags {
    /// The flags that were given, as (config key, value) overrides.
    pub fn overrides(&self) -> Vec<(&'static str, Value)> {
        let data_dir = self.data_dir.as_ref().map(|d| d.display().to_string());
        let strings = [
            ("data_dir", &data_dir),
            ("http.addr", &self.http_addr),
            ("http.database_url", &self.http_database_url),
            ("bus.nats_url", &self.bus_nats_url),
            ("state.redis_url", &self.state_redis_url),
            ("ops.addr", &self.ops_addr),
            ("telemetry.log_format", &self.log_format),
        ];
        strings.into_iter().filter_map(|(key, v)| Some((key, Value::String(v.clone()?)))).collect()
    }
}
