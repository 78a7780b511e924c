//! Who may connect: a users file of argon2id password hashes, or anonymous access when the
//! operator turned it on. Token authentication replaces this for enterprise users later.

use std::collections::HashMap;

use argon2::password_hash::PasswordVerifier;
use argon2::password_hash::phc::PasswordHash;

use crate::config::AuthConfig;

/// The outcome of checking CONNECT credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthDecision {
    Allow,
    /// Credentials missing or wrong (v3 return code 4, v5 0x86).
    BadCredentials,
    /// No credentials and anonymous access is off (v3 5, v5 0x87).
    NotAuthorized,
}

#[derive(Debug, Default)]
pub struct Authenticator {
    allow_anonymous: bool,
    users: HashMap<String, String>,
}

impl Authenticator {
    pub fn from_config(cfg: &AuthConfig) -> Result<Self, String> {
        let mut users = HashMap::new();
        if !cfg.users_file.is_empty() {
            let text = std::fs::read_to_string(&cfg.users_file)
                .map_err(|e| format!("auth.users_file {}: {e}", cfg.users_file))?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let (user, hash) = line
                    .split_once(':')
                    .ok_or_else(|| format!("auth.users_file line {}: expected `username:hash`", n + 1))?;
                PasswordHash::new(hash).map_err(|e| format!("auth.users_file line {}: not a PHC hash: {e}", n + 1))?;
                users.insert(user.to_owned(), hash.to_owned());
            }
        }
        Ok(Authenticator { allow_anonymous: cfg.allow_anonymous, users })
    }

    pub fn allows_anonymous(&self) -> bool {
        self.allow_anonymous
    }

    pub fn check(&self, username: Option<&str>, password: Option<&[u8]>) -> AuthDecision {
        match (username, password) {
            (None, None) if self.allow_anonymous => AuthDecision::Allow,
            (None, None) => AuthDecision::NotAuthorized,
            (Some(u), Some(p)) => match self.users.get(u) {
                Some(hash) if verify(hash, p) => AuthDecision::Allow,
                _ => AuthDecision::BadCredentials,
            },
            // A username without a password may still be anonymous, as Mosquitto allows.
            (Some(u), None) if self.allow_anonymous && !self.users.contains_key(u) => AuthDecision::Allow,
            _ => AuthDecision::BadCredentials,
        }
    }
}

fn verify(hash: &str, password: &[u8]) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| argon2::Argon2::default().verify_password(password, &h).is_ok())
}

/// An argon2id PHC hash of `password` with a random salt, for the users file.
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::PasswordHasher;
    argon2::Argon2::default().hash_password(password.as_bytes()).map(|h| h.to_string()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_file_and_anonymous() {
        let dir = std::env::temp_dir().join(format!("hermes-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("users");
        let hash = hash_password("s3cret").expect("hash");
        std::fs::write(&file, format!("# users\nalice:{hash}\n")).expect("write");
        let auth =
            Authenticator::from_config(&AuthConfig { allow_anonymous: false, users_file: file.display().to_string() })
                .expect("loads");
        assert_eq!(auth.check(Some("alice"), Some(b"s3cret")), AuthDecision::Allow);
        assert_eq!(auth.check(Some("alice"), Some(b"wrong")), AuthDecision::BadCredentials);
        assert_eq!(auth.check(Some("bob"), Some(b"s3cret")), AuthDecision::BadCredentials);
        assert_eq!(auth.check(None, None), AuthDecision::NotAuthorized);
        std::fs::write(&file, "alice-no-hash\n").expect("write");
        let err =
            Authenticator::from_config(&AuthConfig { allow_anonymous: false, users_file: file.display().to_string() })
                .expect_err("bad line");
        assert!(err.contains("line 1"), "{err}");
    }
}
