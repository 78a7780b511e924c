//! What every Hermes binary does at start: load one typed config tree (defaults → file → env →
//! flags), set up logs, traces and metrics, serve health and metrics over HTTP, and wait for
//! the signal to stop.

pub mod config;
pub mod flags;
pub mod http;
pub mod node;
pub mod password;
pub mod sections;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
