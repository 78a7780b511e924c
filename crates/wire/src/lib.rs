//! Everything that crosses a process boundary: the protobuf contracts in `proto/`, envelope
//! helpers, access tokens, NATS subjects (and, as the cluster arrives, Redis key builders).

/// Generated protobuf types of package `hermes.v1`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/hermes.v1.rs"));
}

pub mod envelope;
pub mod keys;
pub mod subjects;
pub mod token;
