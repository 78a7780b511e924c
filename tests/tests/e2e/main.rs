//! End-to-end tests of the MQTT edge: the real server in-process, real sockets, a raw client
//! for exact packet-level expectations, and external clients (mosquitto, paho) for interop.

mod account_events;
mod auth;
mod backends;
mod boundaries;
mod cluster;
mod delivery;
mod faults;
mod flow;
mod fuzz;
mod identity;
mod interop;
mod layering;
mod limits;
mod malformed;
mod sessions;
mod streams;
