//! Who follows whom, and who belongs to which group: the relation sets the ACL's `%f` (users I
//! follow), `%F` (mutual friends) and `%g` (my groups) expand to. The accounts tier owns
//! relations and groups; edges read them from a store they can reach without the accounts
//! database (design §2): Redis in a cluster, memory when embedded.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::RwLock;

/// Relation sets by enterprise and user. Implementations must pass [`contract::check`].
pub trait RelationStore: Send + Sync + std::fmt::Debug {
    /// Users `user` follows, sorted.
    fn follows(&self, enterprise: &str, user: &str) -> Vec<String>;
    /// Users who follow `user` and whom `user` follows, sorted.
    fn friends(&self, enterprise: &str, user: &str) -> Vec<String>;
    /// Records that `follower` follows `followee` (or stopped, with `following = false`).
    fn set_follow(&self, enterprise: &str, follower: &str, followee: &str, following: bool);
    /// Groups `user` is a member of, sorted.
    fn groups(&self, enterprise: &str, user: &str) -> Vec<String>;
    /// Whether `follower` follows `followee`: one look-up, for ACL checks.
    fn is_following(&self, enterprise: &str, follower: &str, followee: &str) -> bool;
    /// Whether `user` is a member of `group`.
    fn is_member(&self, enterprise: &str, user: &str, group: &str) -> bool;
    /// Records that `user` joined `group` (or left it, with `member = false`).
    fn set_member(&self, enterprise: &str, group: &str, user: &str, member: bool);
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One user's relations as a directory returns them, both sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserRelations {
    /// Users `user` follows.
    pub follows: Vec<String>,
    /// Users who follow `user`.
    pub followers: Vec<String>,
    /// Groups `user` is a member of.
    pub groups: Vec<String>,
}

/// Where relations are kept for the edges, outside the accounts database (design §2): the
/// accounts tier writes every follow change here; an edge loads a user's relations at CONNECT
/// into its [`RelationStore`] and account events keep them current. Redis in a cluster,
/// [`MemoryRelations`] when embedded. Implementations must pass [`contract::check_directory`].
pub trait RelationDirectory: Send + Sync + std::fmt::Debug {
    fn load<'a>(&'a self, enterprise: &'a str, user: &'a str) -> BoxFuture<'a, Result<UserRelations, String>>;
    fn set_follow<'a>(
        &'a self,
        enterprise: &'a str,
        follower: &'a str,
        followee: &'a str,
        following: bool,
    ) -> BoxFuture<'a, Result<(), String>>;
    /// Records that `user` joined `group` (or left it, with `member = false`).
    fn set_member<'a>(
        &'a self,
        enterprise: &'a str,
        group: &'a str,
        user: &'a str,
        member: bool,
    ) -> BoxFuture<'a, Result<(), String>>;
}

type Sets = HashMap<(String, String), BTreeSet<String>>;

/// Follows both ways, so neither direction needs a scan over every user.
#[derive(Debug, Default)]
struct FollowGraph {
    /// (enterprise, user) → whom they follow.
    follows: Sets,
    /// (enterprise, user) → who follows them.
    followers: Sets,
}

impl FollowGraph {
    fn set(&mut self, enterprise: &str, follower: &str, followee: &str, following: bool) {
        toggle(&mut self.follows, key(enterprise, follower), followee, following);
        toggle(&mut self.followers, key(enterprise, followee), follower, following);
    }

    fn of<'a>(sets: &'a Sets, enterprise: &str, user: &str) -> impl Iterator<Item = &'a String> {
        sets.get(&key(enterprise, user)).into_iter().flatten()
    }
}

/// Relations held in this process (the embedded default).
#[derive(Debug, Default)]
pub struct MemoryRelations {
    graph: RwLock<FollowGraph>,
    /// Groups by (enterprise, user).
    groups: RwLock<Sets>,
}

impl MemoryRelations {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, FollowGraph> {
        self.graph.read().unwrap_or_else(|e| e.into_inner())
    }
}

fn key(enterprise: &str, user: &str) -> (String, String) {
    (enterprise.to_owned(), user.to_owned())
}

/// Puts `value` into (or takes it out of) the set under `k`; empty sets are not kept.
fn toggle(sets: &mut Sets, k: (String, String), value: &str, on: bool) {
    if on {
        sets.entry(k).or_default().insert(value.to_owned());
    } else if let Some(set) = sets.get_mut(&k) {
        set.remove(value);
        if set.is_empty() {
            sets.remove(&k);
        }
    }
}

impl MemoryRelations {
    /// Who follows `user`, sorted.
    pub fn followers(&self, enterprise: &str, user: &str) -> Vec<String> {
        FollowGraph::of(&self.read().followers, enterprise, user).cloned().collect()
    }

    /// Makes what this store knows about `user` match `r` (from a directory): their follows,
    /// who follows them, and their groups. Touches only `user`'s own relations.
    pub fn replace(&self, enterprise: &str, user: &str, r: &UserRelations) {
        {
            let mut groups = self.groups.write().unwrap_or_else(|e| e.into_inner());
            groups.remove(&key(enterprise, user));
            for g in &r.groups {
                toggle(&mut groups, key(enterprise, user), g, true);
            }
        }
        let mut graph = self.graph.write().unwrap_or_else(|e| e.into_inner());
        let follows: Vec<String> = FollowGraph::of(&graph.follows, enterprise, user).cloned().collect();
        for gone in follows.iter().filter(|f| !r.follows.contains(f)) {
            graph.set(enterprise, user, gone, false);
        }
        for f in &r.follows {
            graph.set(enterprise, user, f, true);
        }
        let followers: Vec<String> = FollowGraph::of(&graph.followers, enterprise, user).cloned().collect();
        for gone in followers.iter().filter(|f| !r.followers.contains(f)) {
            graph.set(enterprise, gone, user, false);
        }
        for f in &r.followers {
            graph.set(enterprise, f, user, true);
        }
    }
}

impl RelationDirectory for MemoryRelations {
    fn load<'a>(&'a self, enterprise: &'a str, user: &'a str) -> BoxFuture<'a, Result<UserRelations, String>> {
        let r = UserRelations {
            follows: RelationStore::follows(self, enterprise, user),
            followers: self.followers(enterprise, user),
            groups: RelationStore::groups(self, enterprise, user),
        };
        Box::pin(std::future::ready(Ok(r)))
    }

    fn set_member<'a>(
        &'a self,
        enterprise: &'a str,
        group: &'a str,
        user: &'a str,
        member: bool,
    ) -> BoxFuture<'a, Result<(), String>> {
        RelationStore::set_member(self, enterprise, group, user, member);
        Box::pin(std::future::ready(Ok(())))
    }

    fn set_follow<'a>(
        &'a self,
        enterprise: &'a str,
        follower: &'a str,
        followee: &'a str,
        following: bool,
    ) -> BoxFuture<'a, Result<(), String>> {
        RelationStore::set_follow(self, enterprise, follower, followee, following);
        Box::pin(std::future::ready(Ok(())))
    }
}

impl RelationStore for MemoryRelations {
    fn follows(&self, enterprise: &str, user: &str) -> Vec<String> {
        FollowGraph::of(&self.read().follows, enterprise, user).cloned().collect()
    }

    fn friends(&self, enterprise: &str, user: &str) -> Vec<String> {
        let graph = self.read();
        let followers = graph.followers.get(&key(enterprise, user));
        FollowGraph::of(&graph.follows, enterprise, user)
            .filter(|other| followers.is_some_and(|f| f.contains(*other)))
            .cloned()
            .collect()
    }

    fn set_follow(&self, enterprise: &str, follower: &str, followee: &str, following: bool) {
        self.graph.write().unwrap_or_else(|e| e.into_inner()).set(enterprise, follower, followee, following);
    }

    fn groups(&self, enterprise: &str, user: &str) -> Vec<String> {
        let groups = self.groups.read().unwrap_or_else(|e| e.into_inner());
        FollowGraph::of(&groups, enterprise, user).cloned().collect()
    }

    fn set_member(&self, enterprise: &str, group: &str, user: &str, member: bool) {
        toggle(&mut self.groups.write().unwrap_or_else(|e| e.into_inner()), key(enterprise, user), group, member);
    }

    fn is_following(&self, enterprise: &str, follower: &str, followee: &str) -> bool {
        self.read().follows.get(&key(enterprise, follower)).is_some_and(|s| s.contains(followee))
    }

    fn is_member(&self, enterprise: &str, user: &str, group: &str) -> bool {
        let groups = self.groups.read().unwrap_or_else(|e| e.into_inner());
        groups.get(&key(enterprise, user)).is_some_and(|s| s.contains(group))
    }
}

/// The behaviour every [`RelationStore`] and [`RelationDirectory`] must have.
pub mod contract {
    use super::{MemoryRelations, RelationDirectory, RelationStore, UserRelations};

    /// `dir` must hold nothing for enterprises `<prefix>acme` and `<prefix>globex`.
    pub async fn check_directory(dir: &dyn RelationDirectory, prefix: &str) {
        let (acme, globex) = (format!("{prefix}acme"), format!("{prefix}globex"));
        let load = |e: &str, u: &str| {
            let (e, u) = (e.to_owned(), u.to_owned());
            async move { dir.load(&e, &u).await.expect("load") }
        };
        assert_eq!(load(&acme, "alice").await, UserRelations::default());
        for (e, a, b) in
            [(&acme, "alice", "bob"), (&acme, "carol", "alice"), (&acme, "bob", "alice"), (&globex, "dave", "alice")]
        {
            dir.set_follow(e, a, b, true).await.expect("follow");
        }
        dir.set_follow(&acme, "alice", "bob", true).await.expect("idempotent");
        let alice = load(&acme, "alice").await;
        assert_eq!(alice.follows, vec!["bob"]);
        assert_eq!(alice.followers, vec!["bob", "carol"], "sorted, and only this enterprise");
        dir.set_follow(&acme, "carol", "alice", false).await.expect("unfollow");
        dir.set_follow(&acme, "nobody", "alice", false).await.expect("unfollow what never was");
        assert_eq!(load(&acme, "alice").await.followers, vec!["bob"]);
        assert_eq!(load(&acme, "carol").await, UserRelations::default());

        // Group membership, per enterprise.
        dir.set_member(&acme, "ops", "alice", true).await.expect("join");
        dir.set_member(&acme, "dev", "alice", true).await.expect("join");
        dir.set_member(&acme, "dev", "alice", true).await.expect("idempotent");
        dir.set_member(&globex, "sales", "alice", true).await.expect("join");
        assert_eq!(load(&acme, "alice").await.groups, vec!["dev", "ops"], "sorted, and only this enterprise");
        dir.set_member(&acme, "ops", "alice", false).await.expect("leave");
        dir.set_member(&acme, "ops", "nobody", false).await.expect("leave what never was");
        assert_eq!(load(&acme, "alice").await.groups, vec!["dev"]);

        // What an edge does at CONNECT: its store then answers like the directory.
        let cache = MemoryRelations::default();
        RelationStore::set_follow(&cache, &acme, "carol", "alice", true);
        RelationStore::set_follow(&cache, &acme, "alice", "zed", true);
        RelationStore::set_member(&cache, &acme, "ops", "alice", true);
        cache.replace(&acme, "alice", &load(&acme, "alice").await);
        assert_eq!(cache.groups(&acme, "alice"), vec!["dev"], "a membership the directory no longer has is gone");
        assert_eq!(cache.follows(&acme, "alice"), vec!["bob"]);
        assert_eq!(cache.friends(&acme, "alice"), vec!["bob"]);
        assert!(cache.follows(&acme, "carol").is_empty(), "a follow the directory no longer has is gone");
    }

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
        assert!(store.is_following("acme", "alice", "bob") && !store.is_following("globex", "alice", "bob"));
        assert!(!store.is_following("acme", "alice", "carol"), "carol follows alice, not the other way");
        assert!(store.friends("acme", "carol").is_empty(), "carol follows alice, not mutual");
        store.set_follow("acme", "alice", "bob", false);
        assert!(store.friends("acme", "bob").is_empty(), "unfollowing ends the friendship");
        assert_eq!(store.follows("acme", "alice"), vec!["dave"]);
        store.set_follow("acme", "nobody", "x", false);
        assert!(store.follows("acme", "nobody").is_empty());

        assert!(store.groups("acme", "alice").is_empty());
        store.set_member("acme", "ops", "alice", true);
        store.set_member("acme", "dev", "alice", true);
        store.set_member("globex", "ops", "bob", true);
        assert_eq!(store.groups("acme", "alice"), vec!["dev", "ops"]);
        assert!(store.is_member("acme", "alice", "ops") && !store.is_member("globex", "alice", "ops"));
        assert!(store.groups("acme", "bob").is_empty(), "bob's group is in another enterprise");
        store.set_member("acme", "ops", "alice", false);
        store.set_member("acme", "ops", "nobody", false);
        assert_eq!(store.groups("acme", "alice"), vec!["dev"]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_relations_meet_the_contract() {
        contract::check(&MemoryRelations::default());
    }

    #[test]
    fn memory_relations_meet_the_directory_contract() {
        // No runtime needed: the memory directory's futures are ready at once.
        let dir = MemoryRelations::default();
        let fut = contract::check_directory(&dir, "t-");
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut fut = std::pin::pin!(fut);
        assert!(fut.as_mut().poll(&mut cx).is_ready());
    }
}
