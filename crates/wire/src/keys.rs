//! Redis keys: one place that names them, so services agree. Enterprise ids and usernames are
//! `[A-Za-z0-9._-]` (the accounts tier checks), so `:` never occurs inside a part.

/// The set of usernames `user` follows.
pub fn follows(enterprise: &str, user: &str) -> String {
    format!("hermes:rel:{enterprise}:follows:{user}")
}

/// The set of usernames that follow `user`.
pub fn followers(enterprise: &str, user: &str) -> String {
    format!("hermes:rel:{enterprise}:followers:{user}")
}
