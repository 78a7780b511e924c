//! Hermes client SDK: a small, dependency-light async MQTT 3.1.1/5.0 client used by the
//! integration tests and the benchmark tool.

pub mod http;
pub mod mqtt;
