//! Hermes accounts: the static tier (design §2). Enterprises and users with argon2id passwords,
//! login to a signed MQTT access token and a rotating refresh token, follow relations with
//! incremental contact sync, groups with owners and members, profiles and signatures, per-enterprise ACL tables, API keys, file
//! uploads with signed links. Every change other services need goes out as an account event on
//! the bus ([`events`]).
//!
//! `api::router` is generic over the [`store::AccountStore`] backend: [`sqlite::SqliteStore`]
//! (embedded, `hermes up`) or [`postgres::PgStore`] (production). [`node`] runs it as a process
//! does: the `accounts` binary, and `hermes up`.

#[macro_use]
mod sql;

pub mod api;
pub mod cli;
pub mod config;
pub mod error;
pub mod events;
pub mod files;
pub mod limiter;
pub mod node;
pub mod owner_only;
pub mod postgres;
pub mod sqlite;
pub mod store;
