//! Who may connect: enterprise users with an access token (PASETO v4.public, verified with the
//! accounts tier's public key), users of a users file of argon2id password hashes, or anyone
//! when the operator turned anonymous access on.

use std::collections::HashMap;
use std::sync::Mutex;

use service_kit::password;
use wire::token::{TokenError, Verifier};

use crate::config::AuthConfig;

/// Who a connection authenticated as.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    /// Empty for anonymous clients.
    pub username: String,
    /// The enterprise (`%e`) of a token user; empty otherwise.
    pub enterprise: String,
    pub user_id: String,
    /// Authenticated with an access token: enterprise ACL and auto-subscribe apply.
    pub via_token: bool,
    /// When the access token was issued (Unix ms); 0 for other users.
    pub issued_at_ms: i64,
    /// Let in without credentials (`auth.allow_anonymous`); `username` is only a claim.
    pub anonymous: bool,
    /// The token's login session (device); logging it out revokes its tokens.
    pub session_id: String,
}

impl Identity {
    /// Who owns the sessions this identity creates (see `broker::store::session_key`): a token
    /// user by enterprise and user id, a users-file user by name; anonymous clients share one
    /// owner per claimed name, as on any broker that lets them in.
    pub fn owner(&self) -> String {
        if self.via_token {
            format!("t:{}/{}", self.enterprise, self.user_id)
        } else if self.anonymous {
            format!("a:{}", self.username)
        } else {
            format!("u:{}", self.username)
        }
    }

    /// The sender the edge stamps on what this identity publishes: `{enterprise}/{user}` for
    /// token users, the user name for users-file users, empty for anonymous clients (whose
    /// claimed name proves nothing).
    pub fn sender(&self) -> String {
        if self.via_token {
            format!("{}/{}", self.enterprise, self.username)
        } else if self.anonymous {
            String::new()
        } else {
            self.username.clone()
        }
    }
}

/// The outcome of checking CONNECT credentials; refusals carry the reason string for v5.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthDecision {
    Allow(Identity),
    /// Credentials missing or wrong (v3 return code 4, v5 0x86).
    BadCredentials(&'static str),
    /// Not allowed in now: anonymous access off, token expired (v3 5, v5 0x87).
    NotAuthorized(&'static str),
}

#[derive(Debug, Default)]
pub struct Authenticator {
    allow_anonymous: bool,
    users: HashMap<String, String>,
    tokens: Option<Verifier>,
    revoked: Revocations,
}

/// Per (enterprise, user id, session): tokens issued before this instant (Unix ms) are
/// refused; an empty session stands for every session of the user. Clones share the table
/// (the wills of a dead edge's connections are checked against it too: `wills`).
#[derive(Debug, Default, Clone)]
pub struct Revocations(std::sync::Arc<Mutex<Revoked>>);

/// (enterprise, user id, session) → tokens issued before this instant are refused.
type Revoked = HashMap<(String, String, String), i64>;

impl Revocations {
    fn revoke(&self, enterprise: &str, user_id: &str, session: &str, before_ms: i64) {
        let mut revoked = self.0.lock().unwrap_or_else(|e| e.into_inner());
        revoked.retain(|_, before| *before >= before_ms.saturating_sub(REVOCATION_MEMORY_MS));
        let entry = revoked.entry((enterprise.to_owned(), user_id.to_owned(), session.to_owned())).or_default();
        *entry = (*entry).max(before_ms);
    }

    /// Whether a token of the user's `session`, issued at `issued_at_ms`, has been revoked.
    pub fn is_revoked(&self, enterprise: &str, user_id: &str, session: &str, issued_at_ms: i64) -> bool {
        let revoked = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let before = |s: &str| revoked.get(&(enterprise.to_owned(), user_id.to_owned(), s.to_owned())).copied();
        let all = before("");
        let this = if session.is_empty() { None } else { before(session) };
        all.into_iter().chain(this).any(|before| issued_at_ms < before)
    }

    /// Whether `who` came in with a token that has been revoked since.
    pub fn has_revoked(&self, who: &Identity) -> bool {
        who.via_token && self.is_revoked(&who.enterprise, &who.user_id, &who.session_id, who.issued_at_ms)
    }
}

pub use wire::token::REVOCATION_MEMORY_MS;

/// Access tokens are PASETO v4.public: anything else in the password field is a password.
const TOKEN_PREFIX: &[u8] = b"v4.public.";

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
                if !password::is_phc(hash) {
                    return Err(format!("auth.users_file line {}: not an argon2 PHC hash", n + 1));
                }
                users.insert(user.to_owned(), hash.to_owned());
            }
        }
        let tokens = (!cfg.token_public_key.is_empty())
            .then(|| Verifier::from_paserk(&cfg.token_public_key))
            .transpose()
            .map_err(|e| format!("auth.token_public_key: {e}"))?;
        Ok(Authenticator { allow_anonymous: cfg.allow_anonymous, users, tokens, revoked: Revocations::default() })
    }

    /// Refuses the user's tokens issued before `before_ms` from now on (revocation, disabling),
    /// or only those of one login `session` (logout) when it is not empty.
    /// Revocations older than [`REVOCATION_MEMORY_MS`] are forgotten: such tokens have expired.
    pub fn revoke(&self, enterprise: &str, user_id: &str, session: &str, before_ms: i64) {
        self.revoked.revoke(enterprise, user_id, session, before_ms);
    }

    /// Whether a token of the user's `session`, issued at `issued_at_ms`, has been revoked.
    pub fn is_revoked(&self, enterprise: &str, user_id: &str, session: &str, issued_at_ms: i64) -> bool {
        self.revoked.is_revoked(enterprise, user_id, session, issued_at_ms)
    }

    /// The revocations this authenticator applies, shared.
    pub fn revocations(&self) -> Revocations {
        self.revoked.clone()
    }

    pub fn allows_anonymous(&self) -> bool {
        self.allow_anonymous
    }

    pub fn check(&self, username: Option<&str>, password: Option<&[u8]>) -> AuthDecision {
        let user = |name: &str| Identity { username: name.to_owned(), ..Identity::default() };
        let anonymous = |name: &str| Identity { anonymous: true, ..user(name) };
        if let (Some(verifier), Some(p)) = (&self.tokens, password)
            && p.starts_with(TOKEN_PREFIX)
        {
            return match std::str::from_utf8(p).map_err(|_| TokenError::Malformed).and_then(|t| verifier.verify(t)) {
                Ok(c) if username.is_some_and(|u| u != c.username) => {
                    AuthDecision::BadCredentials("the token belongs to another user")
                }
                Ok(c) if self.is_revoked(&c.enterprise_id, &c.user_id, &c.session_id, c.issued_at_ms) => {
                    AuthDecision::NotAuthorized("the access token has been revoked")
                }
                Ok(c) => AuthDecision::Allow(Identity {
                    username: c.username,
                    enterprise: c.enterprise_id,
                    user_id: c.user_id,
                    via_token: true,
                    issued_at_ms: c.issued_at_ms,
                    anonymous: false,
                    session_id: c.session_id,
                }),
                Err(TokenError::Expired) => AuthDecision::NotAuthorized("the access token has expired"),
                Err(_) => AuthDecision::BadCredentials("the access token is not valid"),
            };
        }
        match (username, password) {
            (None, None) if self.allow_anonymous => AuthDecision::Allow(anonymous("")),
            (None, None) => AuthDecision::NotAuthorized("anonymous access is disabled"),
            (Some(u), Some(p)) => match self.users.get(u) {
                Some(hash) if password::verify(hash, p) => AuthDecision::Allow(user(u)),
                _ => AuthDecision::BadCredentials("bad user name or password"),
            },
            // A username without a password may still be anonymous, as Mosquitto allows.
            (Some(u), None) if self.allow_anonymous && !self.users.contains_key(u) => AuthDecision::Allow(anonymous(u)),
            _ => AuthDecision::BadCredentials("bad user name or password"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_file_and_anonymous() {
        let dir = std::env::temp_dir().join(format!("hermes-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("users");
        let hash = password::hash("s3cret").expect("hash");
        std::fs::write(&file, format!("# users\nalice:{hash}\n")).expect("write");
        let auth =
            Authenticator::from_config(&AuthConfig { users_file: file.display().to_string(), ..AuthConfig::default() })
                .expect("loads");
        assert!(matches!(auth.check(Some("alice"), Some(b"s3cret")), AuthDecision::Allow(i) if i.username == "alice"));
        assert!(matches!(auth.check(Some("alice"), Some(b"wrong")), AuthDecision::BadCredentials(_)));
        assert!(matches!(auth.check(Some("bob"), Some(b"s3cret")), AuthDecision::BadCredentials(_)));
        assert!(matches!(auth.check(None, None), AuthDecision::NotAuthorized(_)));
        std::fs::write(&file, "alice-no-hash\n").expect("write");
        let err =
            Authenticator::from_config(&AuthConfig { users_file: file.display().to_string(), ..AuthConfig::default() })
                .expect_err("bad line");
        assert!(err.contains("line 1"), "{err}");
    }
}
