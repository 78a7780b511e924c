//! What edges must know about access beyond the token and relations: each enterprise's own ACL
//! tables and recent token revocations. Account events carry changes to running edges; an
//! [`AccessDirectory`] keeps the current state where an edge that starts (or missed events)
//! reads it before serving, without the accounts database: Redis in a cluster, memory when
//! embedded. Implementations must pass [`contract::check`].

use std::collections::HashMap;
use std::sync::Mutex;

use crate::relations::BoxFuture;

/// An enterprise's own tables, as the accounts tier last stored them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tables {
    pub version: u64,
    pub acl_rules: String,
    pub auto_subscribe: String,
}

/// A user's tokens issued before `before_ms` are refused: every one of them, or (`session`
/// not empty) those of one login session, after that device logged out.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Revocation {
    pub enterprise: String,
    pub user_id: String,
    pub before_ms: i64,
    pub session: String,
}

pub trait AccessDirectory: Send + Sync + std::fmt::Debug {
    /// Keeps `tables` for `enterprise` unless it already has a newer version.
    fn save_tables<'a>(&'a self, enterprise: &'a str, tables: &'a Tables) -> BoxFuture<'a, Result<(), String>>;
    /// Every enterprise's tables.
    fn tables(&self) -> BoxFuture<'_, Result<Vec<(String, Tables)>, String>>;
    /// Keeps the later of this and any earlier revocation of the user.
    fn save_revocation<'a>(&'a self, r: &'a Revocation) -> BoxFuture<'a, Result<(), String>>;
    /// Revocations at or after `since_ms` (older ones concern expired tokens only).
    fn revocations(&self, since_ms: i64) -> BoxFuture<'_, Result<Vec<Revocation>, String>>;
}

/// The embedded directory.
#[derive(Debug, Default)]
pub struct MemoryAccess {
    tables: Mutex<HashMap<String, Tables>>,
    revocations: Mutex<HashMap<(String, String, String), i64>>,
}

impl AccessDirectory for MemoryAccess {
    fn save_tables<'a>(&'a self, enterprise: &'a str, tables: &'a Tables) -> BoxFuture<'a, Result<(), String>> {
        let mut all = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        if all.get(enterprise).is_none_or(|t| t.version < tables.version) {
            all.insert(enterprise.to_owned(), tables.clone());
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn tables(&self) -> BoxFuture<'_, Result<Vec<(String, Tables)>, String>> {
        let all = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<(String, Tables)> = all.iter().map(|(e, t)| (e.clone(), t.clone())).collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Box::pin(std::future::ready(Ok(out)))
    }

    fn save_revocation<'a>(&'a self, r: &'a Revocation) -> BoxFuture<'a, Result<(), String>> {
        let mut all = self.revocations.lock().unwrap_or_else(|e| e.into_inner());
        let before = all.entry((r.enterprise.clone(), r.user_id.clone(), r.session.clone())).or_default();
        *before = (*before).max(r.before_ms);
        Box::pin(std::future::ready(Ok(())))
    }

    fn revocations(&self, since_ms: i64) -> BoxFuture<'_, Result<Vec<Revocation>, String>> {
        let all = self.revocations.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<Revocation> = all
            .iter()
            .filter(|(_, before)| **before >= since_ms)
            .map(|((e, u, s), before)| Revocation {
                enterprise: e.clone(),
                user_id: u.clone(),
                before_ms: *before,
                session: s.clone(),
            })
            .collect();
        out.sort();
        Box::pin(std::future::ready(Ok(out)))
    }
}

/// The behaviour every [`AccessDirectory`] must have.
pub mod contract {
    use super::{AccessDirectory, Revocation, Tables};

    /// `dir` must hold nothing for enterprises starting with `prefix`.
    pub async fn check(dir: &dyn AccessDirectory, prefix: &str) {
        let acme = format!("{prefix}acme");
        let mine =
            |all: Vec<(String, Tables)>| all.into_iter().filter(|(e, _)| e.starts_with(prefix)).collect::<Vec<_>>();
        assert!(mine(dir.tables().await.expect("tables")).is_empty());
        let v2 = Tables { version: 2, acl_rules: "pattern read %e/b/#".into(), auto_subscribe: "%e/b 1".into() };
        let v1 = Tables { version: 1, acl_rules: "pattern read %e/a/#".into(), auto_subscribe: String::new() };
        dir.save_tables(&acme, &v2).await.expect("save");
        dir.save_tables(&acme, &v1).await.expect("an older version is ignored");
        assert_eq!(mine(dir.tables().await.expect("tables")), vec![(acme.clone(), v2)]);
        let v3 = Tables { version: 3, ..Tables::default() };
        dir.save_tables(&acme, &v3).await.expect("save");
        assert_eq!(mine(dir.tables().await.expect("tables")), vec![(acme.clone(), v3)], "empty tables are kept too");

        let r = |user: &str, before_ms: i64| Revocation {
            enterprise: acme.clone(),
            user_id: user.into(),
            before_ms,
            session: String::new(),
        };
        let device = |session: &str, before_ms: i64| Revocation { session: session.into(), ..r("u1", before_ms) };
        dir.save_revocation(&r("u1", 5_000)).await.expect("save");
        dir.save_revocation(&r("u1", 4_000)).await.expect("an earlier instant does not move it back");
        dir.save_revocation(&r("u2", 1_000)).await.expect("save");
        // A session's revocation is its own entry, beside the user's.
        dir.save_revocation(&device("phone", 3_000)).await.expect("save");
        dir.save_revocation(&device("phone", 2_500)).await.expect("an earlier instant does not move it back");
        let mine =
            |all: Vec<Revocation>| all.into_iter().filter(|r| r.enterprise.starts_with(prefix)).collect::<Vec<_>>();
        assert_eq!(
            mine(dir.revocations(0).await.expect("all")),
            vec![device("phone", 3_000), r("u1", 5_000), r("u2", 1_000)]
        );
        assert_eq!(mine(dir.revocations(2_000).await.expect("recent")), vec![device("phone", 3_000), r("u1", 5_000)]);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn memory_access_meets_the_contract() {
        let dir = super::MemoryAccess::default();
        let fut = super::contract::check(&dir, "t-");
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut fut = std::pin::pin!(fut);
        assert!(std::future::Future::poll(fut.as_mut(), &mut cx).is_ready());
    }
}
