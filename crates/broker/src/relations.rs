//! Who follows whom: the relation sets the ACL's `%f` (users I follow) and `%F` (mutual friends)
//! expand to. The accounts tier owns relations; edges read them from a store they can reach
//! without the accounts database (design §2): Redis in a cluster, memory when embedded.

use std::collections::{BTreeSet, HashMap};
use std::sync::RwLock;

/// Relation sets by enterprise and user. Implementations must pass [`contract::check`].
pub trait RelationStore: Send + Sync + std::fmt::Debug {
    /// Users `user` follows, sorted.
    fn follows(&self, enterprise: &str, user: &str) -> Vec<String>;
    /// Users who follow `user` and whom `user` follows, sorted.
    fn friends(&self, enterprise: &str, user: &str) -> Vec<String>;
    /// Records that `follower` follows `followee` (or stopped, with `following = false`).
    fn set_follow(&self, enterprise: &str, follower: &str, followee: &str, following: bool);
}

/// Relations held in this process (the embedded default).
#[derive(Debug, Default)]
pub struct MemoryRelations {
    follows: RwLock<HashMap<(String, String), BTreeSet<String>>>,
}

impl MemoryRelations {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<(String, String), BTreeSet<String>>> {
        self.follows.read().unwrap_or_else(|e| e.into_inner())
    }
}

fn key(enterprise: &str, user: &str) -> (String, String) {
    (enterprise.to_owned(), user.to_owned())
}

impl RelationStore for MemoryRelations {
    fn follows(&self, enterprise: &str, user: &str) -> Vec<String> {
        self.read().get(&key(enterprise, user)).map(|s| s.iter().cloned().collect()).unwrap_or_default()
    }

    fn friends(&self, enterprise: &str, user: &str) -> Vec<String> {
        let all = self.read();
        let Some(mine) = all.get(&key(enterprise, user)) else {
            return Vec::new();
        };
        mine.iter()
            .filter(|other| all.get(&key(enterprise, other)).is_some_and(|theirs| theirs.contains(user)))
            .cloned()
            .collect()
    }

    fn set_follow(&self, enterprise: &str, follower: &str, followee: &str, following: bool) {
        let mut all = self.follows.write().unwrap_or_else(|e| e.into_inner());
        let k = key(enterprise, follower);
        if following {
            all.entry(k).or_default().insert(followee.to_owned());
        } else if let Some(set) = all.get_mut(&k) {
            set.remove(followee);
            if set.is_empty() {
                all.remove(&k);
            }
        }
    }
}

/// The behaviour every [`RelationStore`] must have. `store` must start empty.
pub mod contract {
    use super::RelationStore;

    pub fn check(store: &dyn RelationStore) {
        assert!(store.follows("acme", "alice").is_empty());
        store.set_follow("acme", "alice", "bob", true);
        store.set_follow("acme", "carol", "alice", true);
        store.set_follow("acme", "alice", "dave", true);
        store.set_follow("globex", "bob", "alice", true);
        assert_eq!(store.follows("acme", "alice"), vec!["bob", "dave"]);
        assert!(store.friends("acme", "alice").is_empty(), "bob follows alice only in another enterprise");
        store.set_follow("acme", "bob", "alice", true);
        store.set_follow("acme", "bob", "alice", true);
        assert_eq!(store.friends("acme", "alice"), vec!["bob"]);
        assert_eq!(store.friends("acme", "bob"), vec!["alice"]);
        assert!(store.friends("acme", "carol").is_empty(), "carol follows alice, not mutual");
        store.set_follow("acme", "alice", "bob", false);
        assert!(store.friends("acme", "bob").is_empty(), "unfollowing ends the friendship");
        assert_eq!(store.follows("acme", "alice"), vec!["dave"]);
        store.set_follow("acme", "nobody", "x", false);
        assert!(store.follows("acme", "nobody").is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_relations_meet_the_contract() {
        contract::check(&MemoryRelations::default());
    }
}
