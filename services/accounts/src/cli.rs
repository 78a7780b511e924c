//! The `accounts` binary's flags: one per config key, named after it (`--http-addr` sets
//! `http.addr`).

use std::path::PathBuf;

use service_kit::flags::{SharedFlags, strings};
use toml::Value;

#[derive(Debug, Clone, Default, clap::Args)]
pub struct NodeFlags {
    #[command(flatten)]
    pub shared: SharedFlags,
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
}

impl NodeFlags {
    /// The flags that were given, as (config key, value) overrides.
    pub fn overrides(&self) -> Vec<(&'static str, Value)> {
        let data_dir = self.data_dir.as_ref().map(|d| d.display().to_string());
        let mut out = strings(&[
            ("data_dir", &data_dir),
            ("http.addr", &self.http_addr),
            ("http.database_url", &self.http_database_url),
        ]);
        out.extend(self.shared.overrides());
        out
    }
}
