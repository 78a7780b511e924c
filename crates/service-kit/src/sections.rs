//! Configuration sections that every service's tree has under the same names: `[bus]`, `[state]`
//! and `[ops]` (with `[telemetry]`, in [`crate::telemetry`]). A service that runs without one of
//! them says so in its log.

use serde::{Deserialize, Serialize};

/// The bus between services.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct BusConfig {
    /// NATS server URL (`nats://host:4222`); empty: no bus between processes. Edges route
    /// messages to each other over it.
    pub nats_url: String,
    /// This node's name among its service's nodes on the bus; empty: a random one at each start.
    pub node_id: String,
}

/// State shared between processes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// Redis URL (`redis://host:6379/0`) of the directories edges read (relations, ACL tables,
    /// revocations); empty: none.
    pub redis_url: String,
}

/// The operations HTTP endpoint: `/metrics`, `/healthz`, `/readyz`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct OpsConfig {
    /// Empty disables the endpoint.
    pub addr: String,
}

impl Default for OpsConfig {
    fn default() -> Self {
        OpsConfig { addr: "127.0.0.1:9100".into() }
    }
}
