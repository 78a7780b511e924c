//! The accounts tier's configuration: [`AccountsConfig`] is `[http]` (in `hermes up` too) and
//! [`NodeConfig`] the `accounts` binary's whole tree, with production defaults.

use serde::{Deserialize, Serialize};
use service_kit::sections::{BusConfig, OpsConfig, StateConfig};
use service_kit::telemetry::TelemetryConfig;

/// The `accounts` binary's configuration. Keys are spelled as in `hermes up`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Keys (`token.key`, `admin.key`, `link.key`), uploads and, without `http.database_url`, the
    /// SQLite database. Nodes behind one load balancer need the same keys.
    pub data_dir: String,
    /// The REST API.
    pub http: AccountsConfig,
    /// Where account events go (NATS).
    pub bus: BusConfig,
    /// Where relations, ACL tables and revocations are written for edges (Redis).
    pub state: StateConfig,
    pub ops: OpsConfig,
    pub telemetry: TelemetryConfig,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            data_dir: "hermes-data".into(),
            http: AccountsConfig::default(),
            bus: BusConfig::default(),
            state: StateConfig::default(),
            // Not the edge's 9100: an edge and an accounts node on one host both start.
            ops: OpsConfig { addr: "127.0.0.1:9101".into(), ..OpsConfig::default() },
            telemetry: TelemetryConfig::default(),
        }
    }
}

impl NodeConfig {
    /// Checks what serde cannot. Names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.data_dir.is_empty() {
            return Err("data_dir must not be empty".into());
        }
        self.http.validate()?;
        self.ops.validate()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AccountsConfig {
    /// REST API listen address.
    pub addr: String,
    /// PEM certificate chain: serve HTTPS (with `tls_key`); empty serves plain HTTP (behind a
    /// TLS-terminating load balancer, or on a laptop).
    pub tls_cert: String,
    /// PEM private key for `tls_cert`.
    pub tls_key: String,
    /// Postgres URL (`postgres://user@host/db`); empty: SQLite in the data directory.
    pub database_url: String,
    /// Lifetime of MQTT access tokens, in seconds (at most a day: edges remember revocations a week).
    pub token_ttl_secs: u64,
    /// Lifetime of refresh tokens, in seconds.
    pub refresh_ttl_secs: u64,
    /// Password login attempts one client address may make per minute; 0 = unlimited.
    pub login_attempts_per_ip_per_minute: u32,
    /// Password login attempts on one account per minute, from any address; 0 = unlimited.
    pub login_attempts_per_account_per_minute: u32,
    /// Consecutive wrong passwords that lock an account; 0 = never.
    pub login_failures_before_lockout: u32,
    /// How long a locked account stays locked, in seconds.
    pub lockout_secs: u64,
    /// Largest upload, in bytes.
    pub max_upload_bytes: u64,
    /// How long a download link works, in seconds.
    pub file_link_ttl_secs: u64,
    /// The base URL clients reach this API at, for download links; empty: the scheme we serve
    /// and the `Host` the uploading client used.
    pub public_url: String,
    /// Seconds a client may take to send a complete request header (and wait between requests).
    pub header_timeout_secs: u64,
    /// Seconds a client may take to send a request body (408 past it).
    pub body_timeout_secs: u64,
    /// Seconds a connection may stay silent between requests.
    pub idle_timeout_secs: u64,
    /// Connections one client address may hold at once.
    pub max_connections_per_address: usize,
}

impl Default for AccountsConfig {
    fn default() -> Self {
        let limits = service_kit::http::HttpLimits::default();
        AccountsConfig {
            addr: "127.0.0.1:8080".into(),
            tls_cert: String::new(),
            tls_key: String::new(),
            database_url: String::new(),
            token_ttl_secs: 3600,
            refresh_ttl_secs: 30 * 24 * 3600,
            login_attempts_per_ip_per_minute: 60,
            login_attempts_per_account_per_minute: 20,
            login_failures_before_lockout: 5,
            lockout_secs: 300,
            max_upload_bytes: 100 * 1024 * 1024,
            file_link_ttl_secs: 7 * 24 * 3600,
            public_url: String::new(),
            header_timeout_secs: limits.header_timeout.as_secs(),
            body_timeout_secs: limits.body_timeout.as_secs(),
            idle_timeout_secs: limits.idle_timeout.as_secs(),
            max_connections_per_address: limits.max_connections_per_address,
        }
    }
}

impl AccountsConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=86_400).contains(&self.token_ttl_secs) {
            return Err("http.token_ttl_secs must be between 1 and 86400".into());
        }
        if self.refresh_ttl_secs == 0 {
            return Err("http.refresh_ttl_secs must be positive".into());
        }
        if self.tls_cert.is_empty() != self.tls_key.is_empty() {
            return Err("http.tls_cert and http.tls_key go together".into());
        }
        self.http_limits().map(drop)
    }

    /// The API listener's timeouts and per-address cap; an error names the key.
    pub fn http_limits(&self) -> Result<service_kit::http::HttpLimits, String> {
        service_kit::http::HttpLimits::from_config(
            "http",
            self.header_timeout_secs,
            self.body_timeout_secs,
            self.idle_timeout_secs,
            self.max_connections_per_address,
        )
    }

    /// The TLS config when `tls_cert` and `tls_key` are set.
    pub fn tls(&self) -> Result<Option<std::sync::Arc<rustls::ServerConfig>>, String> {
        if self.tls_cert.is_empty() {
            return Ok(None);
        }
        service_kit::tls::server_config(&self.tls_cert, &self.tls_key, ("http.tls_cert", "http.tls_key"))
            .map(Some)
            .map_err(|e| e.to_string())
    }

    pub fn login_limits(&self) -> crate::limiter::LoginLimits {
        crate::limiter::LoginLimits {
            attempts_per_ip: self.login_attempts_per_ip_per_minute,
            attempts_per_account: self.login_attempts_per_account_per_minute,
            window: std::time::Duration::from_secs(60),
            failures_before_lockout: self.login_failures_before_lockout,
            lockout: std::time::Duration::from_secs(self.lockout_secs),
        }
    }
}
