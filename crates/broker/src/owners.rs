//! Which node holds each session, so a client that connects to another node takes its session
//! over from the one that has it (design §5). Redis in a cluster
//! (`redis_state::RedisOwners`), memory for nodes in one process; both pass
//! [`contract::check`].
//!
//! A claim swaps the owner in one atomic step, numbers it (the session's version) and returns
//! the owner it replaced: of several nodes claiming a session at once, each learns whom to ask
//! for it, and the last one to claim ends up with it. A node asked for a session it is itself
//! claiming answers an earlier claim at once (with what it holds now) and a later one once its
//! own claim is done.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::relations::BoxFuture;

/// What a claim learned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// This claim's number: one more than the previous claim's of the session.
    pub version: u64,
    /// Who owned the session before, if anyone did.
    pub previous: Option<String>,
}

/// Session owners by session key ([`crate::store::session_key`]).
pub trait SessionOwners: Send + Sync + std::fmt::Debug {
    /// Makes `node` the owner of `session`.
    fn claim<'a>(&'a self, session: &'a str, node: &'a str) -> BoxFuture<'a, Result<Claimed, String>>;
    /// Forgets `session`'s owner if it is still `node` (the session ended there).
    fn release<'a>(&'a self, session: &'a str, node: &'a str) -> BoxFuture<'a, Result<(), String>>;
}

/// Owners kept in this process: for nodes that share it (tests, one process).
#[derive(Debug, Default)]
pub struct MemoryOwners {
    /// Session → (version, node).
    owners: Mutex<HashMap<String, (u64, String)>>,
}

impl SessionOwners for MemoryOwners {
    fn claim<'a>(&'a self, session: &'a str, node: &'a str) -> BoxFuture<'a, Result<Claimed, String>> {
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        let (version, previous) = match owners.get(session) {
            Some((v, n)) => (v + 1, Some(n.clone())),
            None => (1, None),
        };
        owners.insert(session.to_owned(), (version, node.to_owned()));
        Box::pin(std::future::ready(Ok(Claimed { version, previous })))
    }

    fn release<'a>(&'a self, session: &'a str, node: &'a str) -> BoxFuture<'a, Result<(), String>> {
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        if owners.get(session).is_some_and(|(_, n)| n == node) {
            owners.remove(session);
        }
        Box::pin(std::future::ready(Ok(())))
    }
}

/// The behaviour every [`SessionOwners`] must have. `owners` must start empty; the session keys
/// are unique to each call (`prefix`), so a shared Redis can run it concurrently.
pub mod contract {
    use super::{Claimed, SessionOwners};

    fn claimed(version: u64, previous: Option<&str>) -> Result<Claimed, String> {
        Ok(Claimed { version, previous: previous.map(str::to_owned) })
    }

    pub async fn check(owners: &dyn SessionOwners, prefix: &str) {
        let s = format!("{prefix}:7:owner/client");
        assert_eq!(owners.claim(&s, "a").await, claimed(1, None), "nobody held it");
        assert_eq!(owners.claim(&s, "b").await, claimed(2, Some("a")), "b asks a");
        assert_eq!(owners.claim(&s, "b").await, claimed(3, Some("b")), "a reconnect to the same node");
        owners.release(&s, "a").await.expect("release");
        assert_eq!(owners.claim(&s, "c|d").await, claimed(4, Some("b")), "a no longer owned it: nothing released");
        assert_eq!(owners.claim(&s, "e").await, claimed(5, Some("c|d")), "node ids are kept whole");
        owners.release(&s, "e").await.expect("release");
        assert_eq!(owners.claim(&s, "f").await, claimed(1, None), "released by its owner");
        // Keys of any bytes a client id may hold.
        let odd = format!("{prefix}:3:u:x/{{}} *>.|\n\u{2028}");
        assert_eq!(owners.claim(&odd, "a").await, claimed(1, None));
        assert_eq!(owners.claim(&odd, "b").await, claimed(2, Some("a")));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn memory_owners_meet_the_contract() {
        let owners = super::MemoryOwners::default();
        let run = super::contract::check(&owners, "t");
        // The memory store never awaits: one poll finishes it.
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut run = std::pin::pin!(run);
        assert!(run.as_mut().poll(&mut cx).is_ready());
    }
}
