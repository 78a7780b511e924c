//! NATS subjects: one place that names them, so services agree.

/// Where the accounts tier publishes an enterprise's [`crate::pb::AccountEvent`]s.
pub fn account_events(enterprise_id: &str) -> String {
    // Enterprise ids are `[A-Za-z0-9._-]`: a `.` would split the token, so it is escaped.
    format!("hermes.account.{}", enterprise_id.replace('.', "_2e"))
}

/// Every enterprise's account events.
pub const ALL_ACCOUNT_EVENTS: &str = "hermes.account.>";

#[cfg(test)]
mod tests {
    #[test]
    fn one_token_per_enterprise() {
        assert_eq!(super::account_events("acme"), "hermes.account.acme");
        assert_eq!(super::account_events("a.b"), "hermes.account.a_2eb");
    }
}
