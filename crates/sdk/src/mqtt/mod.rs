//! Client-side MQTT 3.1.1 / 5.0: a sans-IO codec ([`codec`]) and a thin tokio TCP client
//! ([`client`]) built for tests (including malformed input) and many-connection benchmarks.

pub mod client;
pub mod codec;

pub use client::{Client, RecvError};
pub use codec::{
    ConnAckProperties, Connect, DecodeError, MAX_VAR_INT, Packet, Publish, PublishProperties, SubscribeTopic, Version,
    Will, decode, decode_var_int, encode, encode_var_int,
};
