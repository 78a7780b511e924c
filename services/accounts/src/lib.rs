//! Hermes accounts: the static tier (design §2). Enterprises and users with argon2id passwords,
//! login to a signed MQTT access token and a rotating refresh token, follow relations with
//! incremental contact sync, profiles and signatures, per-enterprise ACL tables, API keys, file
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
pub mod postgres;
pub mod sqlite;
pub mod store;

use std::path::Path;

use wire::token::Signer;

/// Loads the token signing key from `path`, or creates one there (readable by the owner only).
pub fn load_or_create_signer(path: &Path) -> Result<Signer, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Signer::from_paserk(&text).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let signer = Signer::generate().map_err(|e| e.to_string())?;
            write_private(path, &signer.to_paserk()).map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(signer)
        }
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    options.open(path)?.write_all(text.as_bytes())
}
