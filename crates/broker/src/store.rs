//! Where persistent sessions wait while their client is away: the session store.
//!
//! The edge keeps a live session in memory while its connection lasts and parks it here when the
//! connection ends (v3 clean-session 0, v5 session expiry > 0). Messages routed to a parked
//! session are queued through the store; the next connection with that client id takes it
//! back. [`MemorySessionStore`] is the embedded implementation; a Redis one (so any edge can
//! resume any session) implements the same trait and must pass [`contract::check`].

use std::collections::HashMap;

use crate::session::{Deliverable, Enqueued, Outgoing, Session};

/// The key a session is kept under: who owns it and the client id they chose.
///
/// Sessions belong to an identity: the same client id under another owner is another session,
/// so nobody can take over, resume or read someone else's session by knowing its client id;
/// only the same owner takes a session over [MQTT-3.1.4-3]. The owner's length comes first so
/// no owner/client-id pair can spell another. Stores (and the cluster's Redis keys) are keyed
/// by this string.
pub fn session_key(owner: &str, client_id: &str) -> String {
    format!("{}:{owner}/{client_id}", owner.len())
}

/// A session while nobody is connected to it.
#[derive(Debug)]
pub struct Parked<M> {
    pub session: Session<M>,
    /// The session's key in the routing tries (its subscriptions stay routable while parked).
    pub key: u64,
    /// Seconds the session outlives its connection; `u32::MAX` never expires.
    pub expiry_secs: u32,
    pub offline_since_ms: u64,
}

impl<M> Parked<M> {
    /// When the session expires, `None` for never.
    pub fn expires_at_ms(&self) -> Option<u64> {
        (self.expiry_secs != u32::MAX).then(|| self.offline_since_ms.saturating_add(u64::from(self.expiry_secs) * 1000))
    }
}

/// The operations the edge needs from a session store.
pub trait SessionStore<M>: Send {
    /// Keeps `parked` for its owner's return under `session` (a [`session_key`]), replacing
    /// any session parked under that key.
    fn park(&mut self, session: &str, parked: Parked<M>);
    /// Removes and returns the parked session `session`: on reconnect, or to discard it.
    fn take(&mut self, session: &str) -> Option<Parked<M>>;
    /// The session parked under `session`, to queue a routed message for it.
    fn get_mut(&mut self, session: &str) -> Option<&mut Parked<M>>;
    /// Removes and returns the sessions (with their keys) whose expiry has passed at `now_ms`.
    fn expire(&mut self, now_ms: u64) -> Vec<(String, Parked<M>)>;
    fn contains(&self, session: &str) -> bool;
    /// The keys of the parked sessions.
    fn keys(&self) -> Vec<String>;
    /// Number of parked sessions.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Sessions parked in this process's memory: the embedded default (`hermes up`).
#[derive(Debug)]
pub struct MemorySessionStore<M> {
    parked: HashMap<String, Parked<M>>,
}

impl<M> Default for MemorySessionStore<M> {
    fn default() -> Self {
        MemorySessionStore { parked: HashMap::new() }
    }
}

impl<M: Deliverable + Clone + Send> SessionStore<M> for MemorySessionStore<M> {
    fn park(&mut self, session: &str, parked: Parked<M>) {
        self.parked.insert(session.to_owned(), parked);
    }

    fn take(&mut self, session: &str) -> Option<Parked<M>> {
        self.parked.remove(session)
    }

    fn get_mut(&mut self, session: &str) -> Option<&mut Parked<M>> {
        self.parked.get_mut(session)
    }

    fn expire(&mut self, now_ms: u64) -> Vec<(String, Parked<M>)> {
        let due: Vec<String> = self
            .parked
            .iter()
            .filter(|(_, p)| p.expires_at_ms().is_some_and(|at| now_ms >= at))
            .map(|(id, _)| id.clone())
            .collect();
        due.into_iter().filter_map(|id| self.parked.remove(&id).map(|p| (id, p))).collect()
    }

    fn contains(&self, session: &str) -> bool {
        self.parked.contains_key(session)
    }

    fn keys(&self) -> Vec<String> {
        self.parked.keys().cloned().collect()
    }

    fn len(&self) -> usize {
        self.parked.len()
    }
}

/// The behaviour every [`SessionStore`] must have, as one function each implementation's
/// tests call (the memory store below; the Redis store in the cluster tier).
pub mod contract {
    use super::*;
    use crate::session::SessionLimits;
    use crate::{QoS, SubOptions};

    fn parked<M: Deliverable + Clone>(key: u64, expiry_secs: u32, since: u64, max_queued: usize) -> Parked<M> {
        let mut session = Session::new(SessionLimits { max_queued, ..SessionLimits::default() });
        session.subscribe("a/#", SubOptions { qos: QoS::AtLeastOnce, ..SubOptions::default() });
        Parked { session, key, expiry_secs, offline_since_ms: since }
    }

    /// Runs the contract against `store`, which must start empty. `msg(n)` makes distinct
    /// messages that never expire.
    pub fn check<M, S>(store: &mut S, msg: impl Fn(u8) -> M)
    where
        M: Deliverable + Clone + PartialEq + std::fmt::Debug,
        S: SessionStore<M>,
    {
        assert!(store.is_empty());
        assert!(store.take("nobody").is_none());
        assert!(store.get_mut("nobody").is_none());
        let enqueue = |store: &mut S, n| {
            let out = Outgoing::new(msg(n), QoS::AtLeastOnce, false, vec![]);
            store.get_mut("alice").map(|p| p.session.enqueue(out))
        };

        // Park, queue while away, take back with subscriptions and queue intact, in order.
        store.park("alice", parked(1, 60, 1_000, 2));
        assert!(store.contains("alice"));
        assert_eq!(store.len(), 1);
        for n in 1..=2 {
            assert_eq!(enqueue(store, n), Some(Enqueued::Queued));
        }
        // The session's own bound and drop policy (drop oldest) apply while parked.
        match enqueue(store, 3) {
            Some(Enqueued::Dropped(d)) => assert_eq!(d.msg, msg(1)),
            other => panic!("expected the oldest to be dropped, got {other:?}"),
        }
        let mut back = store.take("alice").expect("parked session");
        assert!(!store.contains("alice"));
        assert_eq!(back.key, 1);
        assert_eq!(back.session.subscriptions().count(), 1);
        let resent: Vec<M> = back.session.resume(10, 2_000).into_iter().map(|o| o.msg).collect();
        assert_eq!(resent, vec![msg(2), msg(3)]);

        // Parking again replaces; expiry removes exactly the sessions that are due.
        store.park("bob", parked(2, 1, 10_000, 10));
        store.park("bob", parked(3, 5, 10_000, 10));
        store.park("carol", parked(4, u32::MAX, 0, 10));
        assert_eq!(store.len(), 2);
        assert!(store.expire(14_999).is_empty(), "bob's replacement lives 5 s");
        let expired = store.expire(15_000);
        assert_eq!(expired.len(), 1);
        assert_eq!((expired[0].0.as_str(), expired[0].1.key), ("bob", 3));
        assert!(store.expire(u64::MAX).is_empty(), "carol never expires");
        assert!(store.take("carol").is_some());
        assert!(store.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    struct M(u8);
    impl Deliverable for M {
        fn expired(&self, _: u64) -> bool {
            false
        }
    }

    #[test]
    fn session_keys_never_collide_across_owners() {
        // The owner "a/b" with client "c" and the owner "a" with client "b/c" are two sessions.
        assert_ne!(session_key("a/b", "c"), session_key("a", "b/c"));
        assert_ne!(session_key("", "1:x/y"), session_key("x", "y"));
        assert_eq!(session_key("acme/u1", "phone"), session_key("acme/u1", "phone"));
    }

    #[test]
    fn memory_store_meets_the_contract() {
        contract::check(&mut MemorySessionStore::default(), M);
    }
}
