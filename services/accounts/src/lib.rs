//! Hermes accounts: the static tier (design §2). Enterprises and users with argon2id passwords,
//! login to a signed MQTT access token and a rotating refresh token, follow relations with
//! incremental contact sync, groups with owners and members, profiles and signatures, per-enterprise ACL tables, API keys, file
//! uploads with signed links. Every change other services need goes out as an account event on
//! the bus ([`events`]).
//!
//! `api::router` is generic over the [`store::AccountStore`] backend: [`sqlite::SqliteStore`]
//! (embedded, `hermes up`) or [`postgres::PgStore`] (production).

#[macro_use]
mod sql;

pub mod api;
pub mod config;
pub mod error;
pub mod events;
pub mod files;
pub mod limiter;
pub mod owner_only;
pub mod postgres;
pub mod sqlite;
pub mod store;

use std::path::Path;

use wire::token::Signer;

/// Loads the token signing key from `path`, or creates one there (readable by the owner only).
/// A file that exists but cannot be read or is not a key is an error naming it, never replaced.
pub fn load_or_create_signer(path: &Path) -> Result<Signer, String> {
    let text =
        owner_only::read_or_create(path, || Signer::generate().map(|s| s.to_paserk()).map_err(|e| e.to_string()))?;
    Signer::from_paserk(&text).map_err(|e| format!("{}: not a token signing key: {e}", path.display()))
}
