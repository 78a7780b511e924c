//! Which node holds each session, so a client that connects to another node takes its session
//! over from the one that has it (design §5), and the sessions of a node that died are taken by
//! a live one. Redis in a cluster (`redis_state::RedisOwners`), memory for nodes in one
//! process; both pass [`contract::check`].
//!
//! A claim swaps the owner in one atomic step, numbers it (the session's version) and returns
//! the owner it replaced: of several nodes claiming a session at once, each learns whom to ask
//! for it, and the last one to claim ends up with it. A node asked for a session it is itself
//! claiming answers an earlier claim at once (with what it holds now) and a later one once its
//! own claim is done.
//!
//! The registry also lists the sessions each node owns and which nodes are alive (each
//! heartbeats). A node whose time ran out is handed to one live node at a time, for a lease:
//! that node takes the dead one's sessions ([`SessionOwners::claim_from`], which only succeeds
//! while the dead node still owns the session: a client that came back elsewhere first keeps
//! it) and forgets the dead node once it owns none ([`SessionOwners::forget_node`]). If the
//! taker dies too, the lease runs out and another live node gets the dead one.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::relations::BoxFuture;

/// What a claim learned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// This claim's number: one more than the previous claim's of the session.
    pub version: u64,
    /// Who owned the session before, if anyone did.
    pub previous: Option<String>,
}

/// Session owners by session key ([`crate::store::session_key`]), by node (a node incarnation).
pub trait SessionOwners: Send + Sync + std::fmt::Debug {
    /// Makes `node` the owner of `session` (listed under `node`, no longer under the previous
    /// owner).
    fn claim<'a>(&'a self, session: &'a str, node: &'a str) -> BoxFuture<'a, Result<Claimed, String>>;
    /// Forgets `session`'s owner if it is still `node` (the session ended there).
    fn release<'a>(&'a self, session: &'a str, node: &'a str) -> BoxFuture<'a, Result<(), String>>;
    /// Makes `node` the owner of `session` only if `from` owns it now (`None` if not); either
    /// way `session` is no longer listed under `from`.
    fn claim_from<'a>(
        &'a self,
        session: &'a str,
        node: &'a str,
        from: &'a str,
    ) -> BoxFuture<'a, Result<Option<Claimed>, String>>;
    /// The node that owns `session` now, if any.
    fn owner<'a>(&'a self, session: &'a str) -> BoxFuture<'a, Result<Option<String>, String>>;
    /// Up to `max` of the sessions listed under `node` (in no particular order).
    fn held_by<'a>(&'a self, node: &'a str, max: usize) -> BoxFuture<'a, Result<Vec<String>, String>>;
    /// `node` is alive for `ttl_ms` more (0: it stops now). Returns the other nodes whose time
    /// ran out and whose lease (if any) did too, each now leased to the caller for `lease_ms`:
    /// no other heartbeat returns it until then.
    fn heartbeat<'a>(&'a self, node: &'a str, ttl_ms: u64, lease_ms: u64)
    -> BoxFuture<'a, Result<Vec<String>, String>>;
    /// Forgets node `node` if no session is listed under it any more; returns whether it did.
    fn forget_node<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<bool, String>>;
}

/// Owners kept in this process: for nodes that share it (tests, one process).
#[derive(Debug, Default)]
pub struct MemoryOwners {
    registry: Mutex<Registry>,
}

#[derive(Debug, Default)]
struct Registry {
    /// Session → (version, node).
    owners: HashMap<String, (u64, String)>,
    /// Node → the sessions listed under it.
    held: HashMap<String, BTreeSet<String>>,
    /// Node → until when it is alive (or leased).
    nodes: HashMap<String, Instant>,
}

impl Registry {
    fn list(&mut self, node: &str, session: &str, listed: bool) {
        let sessions = self.held.entry(node.to_owned()).or_default();
        if listed {
            sessions.insert(session.to_owned());
        } else {
            sessions.remove(session);
        }
    }

    fn claim(&mut self, session: &str, node: &str) -> Claimed {
        let (version, previous) = match self.owners.get(session) {
            Some((v, n)) => (v + 1, Some(n.clone())),
            None => (1, None),
        };
        if let Some(p) = &previous {
            self.list(p, session, false);
        }
        self.list(node, session, true);
        self.owners.insert(session.to_owned(), (version, node.to_owned()));
        Claimed { version, previous }
    }
}

impl MemoryOwners {
    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl SessionOwners for MemoryOwners {
    fn claim<'a>(&'a self, session: &'a str, node: &'a str) -> BoxFuture<'a, Result<Claimed, String>> {
        let claimed = self.registry().claim(session, node);
        Box::pin(std::future::ready(Ok(claimed)))
    }

    fn release<'a>(&'a self, session: &'a str, node: &'a str) -> BoxFuture<'a, Result<(), String>> {
        let mut r = self.registry();
        if r.owners.get(session).is_some_and(|(_, n)| n == node) {
            r.owners.remove(session);
            r.list(node, session, false);
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn claim_from<'a>(
        &'a self,
        session: &'a str,
        node: &'a str,
        from: &'a str,
    ) -> BoxFuture<'a, Result<Option<Claimed>, String>> {
        let mut r = self.registry();
        r.list(from, session, false);
        let claimed = r.owners.get(session).is_some_and(|(_, n)| n == from).then(|| r.claim(session, node));
        Box::pin(std::future::ready(Ok(claimed)))
    }

    fn owner<'a>(&'a self, session: &'a str) -> BoxFuture<'a, Result<Option<String>, String>> {
        let owner = self.registry().owners.get(session).map(|(_, node)| node.clone());
        Box::pin(std::future::ready(Ok(owner)))
    }

    fn held_by<'a>(&'a self, node: &'a str, max: usize) -> BoxFuture<'a, Result<Vec<String>, String>> {
        let some = self.registry().held.get(node).map(|s| s.iter().take(max).cloned().collect()).unwrap_or_default();
        Box::pin(std::future::ready(Ok(some)))
    }

    fn heartbeat<'a>(
        &'a self,
        node: &'a str,
        ttl_ms: u64,
        lease_ms: u64,
    ) -> BoxFuture<'a, Result<Vec<String>, String>> {
        let now = Instant::now();
        let until = |ms: u64| now.checked_add(Duration::from_millis(ms)).unwrap_or(now);
        let mut r = self.registry();
        r.nodes.insert(node.to_owned(), until(ttl_ms));
        let dead: Vec<String> =
            r.nodes.iter().filter(|(n, at)| **at <= now && *n != node).map(|(n, _)| n.clone()).collect();
        for n in &dead {
            r.nodes.insert(n.clone(), until(lease_ms));
        }
        Box::pin(std::future::ready(Ok(dead)))
    }

    fn forget_node<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<bool, String>> {
        let mut r = self.registry();
        let empty = r.held.get(node).is_none_or(BTreeSet::is_empty);
        if empty {
            r.held.remove(node);
            r.nodes.remove(node);
        }
        Box::pin(std::future::ready(Ok(empty)))
    }
}

/// The behaviour every [`SessionOwners`] must have. Sessions and nodes are unique to each call
/// (`prefix`), so a shared Redis can run it concurrently: a heartbeat may also return other
/// runs' dead nodes, so the checks look for this run's among them. Takes about 1.5 s (leases
/// run out).
pub mod contract {
    use super::{Claimed, SessionOwners};
    use crate::journal::contract::sleep;
    use std::time::Duration;

    fn claimed(version: u64, previous: Option<&str>) -> Result<Claimed, String> {
        Ok(Claimed { version, previous: previous.map(str::to_owned) })
    }

    pub async fn check(owners: &dyn SessionOwners, prefix: &str) {
        let s = format!("{prefix}:7:owner/client");
        let owner = async |s: &str| owners.owner(s).await.expect("owner");
        assert_eq!(owner(&s).await, None);
        assert_eq!(owners.claim(&s, "a").await, claimed(1, None), "nobody held it");
        assert_eq!(owner(&s).await.as_deref(), Some("a"));
        assert_eq!(owners.claim(&s, "b").await, claimed(2, Some("a")), "b asks a");
        assert_eq!(owner(&s).await.as_deref(), Some("b"));
        assert_eq!(owners.claim(&s, "b").await, claimed(3, Some("b")), "a reconnect to the same node");
        owners.release(&s, "a").await.expect("release");
        assert_eq!(owners.claim(&s, "c|d").await, claimed(4, Some("b")), "a no longer owned it: nothing released");
        assert_eq!(owners.claim(&s, "e").await, claimed(5, Some("c|d")), "node ids are kept whole");
        assert_eq!(owner(&s).await.as_deref(), Some("e"), "node ids are kept whole");
        owners.release(&s, "e").await.expect("release");
        assert_eq!(owner(&s).await, None, "released");
        assert_eq!(owners.claim(&s, "f").await, claimed(1, None), "released by its owner");
        // Keys of any bytes a client id may hold.
        let odd = format!("{prefix}:3:u:x/{{}} *>.|\n\u{2028}");
        assert_eq!(owners.claim(&odd, "a").await, claimed(1, None));
        assert_eq!(owners.claim(&odd, "b").await, claimed(2, Some("a")));
        listing(owners, prefix).await;
        dead_nodes(owners, prefix).await;
    }

    async fn held(owners: &dyn SessionOwners, node: &str) -> Vec<String> {
        let mut sessions = owners.held_by(node, 100).await.expect("held_by");
        sessions.sort();
        sessions
    }

    /// Each node's sessions are listed, and taken from a node only while it owns them.
    async fn listing(owners: &dyn SessionOwners, prefix: &str) {
        let [a, b, c] = ["a", "b", "c:17"].map(|n| format!("{prefix}:node-{n}"));
        let [s1, s2, s3] = ["1", "2", "3 odd {x}"].map(|n| format!("{prefix}:9:u/s{n}"));
        for s in [&s1, &s2, &s3] {
            owners.claim(s, &a).await.expect("claim");
        }
        assert_eq!(held(owners, &a).await, [s1.clone(), s2.clone(), s3.clone()]);
        assert_eq!(owners.held_by(&a, 2).await.expect("held_by").len(), 2, "at most as many as asked");
        assert_eq!(owners.held_by(&a, 0).await.expect("held_by"), Vec::<String>::new());
        owners.claim(&s2, &b).await.expect("claim");
        assert_eq!(held(owners, &a).await, [s1.clone(), s3.clone()], "a claim moves the listing");
        assert_eq!(held(owners, &b).await, std::slice::from_ref(&s2));
        owners.release(&s3, &a).await.expect("release");
        assert_eq!(held(owners, &a).await, std::slice::from_ref(&s1), "released: unlisted");
        owners.release(&s1, &b).await.expect("release");
        assert_eq!(held(owners, &a).await, std::slice::from_ref(&s1), "released by a node that did not own it: kept");

        assert_eq!(owners.claim_from(&s2, &c, &a).await, Ok(None), "b owns it, not a");
        assert_eq!(held(owners, &b).await, std::slice::from_ref(&s2), "and keeps it");
        assert_eq!(owners.claim_from(&s1, &c, &a).await, claimed(2, Some(&a)).map(Some));
        assert_eq!(held(owners, &a).await, Vec::<String>::new());
        assert_eq!(held(owners, &c).await, std::slice::from_ref(&s1));
        assert_eq!(owners.claim_from(&s1, &b, &a).await, Ok(None), "taken already");
        assert_eq!(owners.claim(&s1, &b).await, claimed(3, Some(&c)), "c is asked next");
        assert_eq!(owners.claim_from(&s3, &c, &a).await, Ok(None), "nobody owns it");
        assert_eq!(held(owners, &c).await, Vec::<String>::new());

        assert_eq!(owners.forget_node(&b).await, Ok(false), "b still owns sessions");
        assert_eq!(owners.forget_node(&a).await, Ok(true));
        assert_eq!(owners.forget_node(&format!("{prefix}:never-seen")).await, Ok(true));
    }

    /// Dead nodes are handed to one live node at a time, for a lease.
    async fn dead_nodes(owners: &dyn SessionOwners, prefix: &str) {
        let [x, y, z, w] = ["x", "y", "z", "w"].map(|n| format!("{prefix}:node-{n}"));
        let beat = |node: &str, ttl_ms: u64, lease_ms: u64| {
            let node = node.to_owned();
            async move { owners.heartbeat(&node, ttl_ms, lease_ms).await.expect("heartbeat") }
        };
        let first = beat(&x, 200, 1_000).await;
        assert!(!first.contains(&x), "never its own");
        let mine =
            |dead: &[String]| [&x, &y, &z, &w].into_iter().filter(|n| dead.contains(n)).cloned().collect::<Vec<_>>();
        assert_eq!(mine(&beat(&y, 60_000, 1_000).await), Vec::<String>::new(), "x is alive");
        sleep(Duration::from_millis(300)).await;
        assert_eq!(mine(&beat(&y, 60_000, 1_000).await), std::slice::from_ref(&x), "x's time ran out: leased to y");
        assert_eq!(mine(&beat(&z, 60_000, 1_000).await), Vec::<String>::new(), "x is y's for the lease");
        assert_eq!(mine(&beat(&z, 0, 60_000).await), Vec::<String>::new());
        assert_eq!(mine(&beat(&y, 60_000, 60_000).await), std::slice::from_ref(&z), "z stopped: dead at once");
        sleep(Duration::from_millis(1_100)).await;
        assert_eq!(mine(&beat(&w, 0, 60_000).await), std::slice::from_ref(&x), "y's lease on x ran out");
        assert_eq!(owners.forget_node(&w).await, Ok(true));
        assert_eq!(owners.forget_node(&x).await, Ok(true));
        assert_eq!(mine(&beat(&y, 60_000, 60_000).await), Vec::<String>::new(), "forgotten nodes are not dead");
        // The run's live node leaves no trace for the next run.
        assert_eq!(mine(&beat(&y, 0, 60_000).await), Vec::<String>::new());
        for n in [&y, &z] {
            assert_eq!(owners.forget_node(n).await, Ok(true));
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn memory_owners_meet_the_contract() {
        let owners = super::MemoryOwners::default();
        crate::test_support::block_on(super::contract::check(&owners, "t"));
    }
}
