//! Presence describes people, not sockets: a user is online while any of their devices is
//! connected, and a short grace absorbs reconnects and one-shot connections.
//!
//! A user becomes "online" once a device has stayed connected for the grace, and "offline" once
//! the last device has been gone for the grace; a device that connects, publishes and leaves
//! within the grace announces nothing, and a reconnect within the grace shows no "offline" in
//! between. With a grace of 0 every change is announced at once. Sans-IO: callers pass the
//! clock and publish what the methods return.

use std::collections::HashMap;
use std::hash::Hash;

use crate::relations::BoxFuture;

/// What to announce for a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announce {
    Online,
    Offline,
}

#[derive(Debug, Clone, Copy)]
struct User {
    devices: u32,
    /// What the world was last told.
    announced: Option<Announce>,
    /// When the current state is to be announced, if it differs from the announced one.
    due_ms: Option<u64>,
}

/// Presence of every user with a device connected or an announcement pending, by key (the
/// user's presence topic).
#[derive(Debug)]
pub struct Presence<K> {
    grace_ms: u64,
    users: HashMap<K, User>,
}

impl<K: Hash + Eq + Clone> Presence<K> {
    pub fn new(grace_ms: u64) -> Self {
        Presence { grace_ms, users: HashMap::new() }
    }

    /// A device of `user` connected.
    pub fn connected(&mut self, user: &K, now_ms: u64) -> Option<Announce> {
        let u = self.users.entry(user.clone()).or_insert(User { devices: 0, announced: None, due_ms: None });
        u.devices += 1;
        if u.devices > 1 {
            return None;
        }
        if u.announced == Some(Announce::Online) {
            // Back within the grace: the pending "offline" never happens.
            u.due_ms = None;
            return None;
        }
        self.schedule(user, Announce::Online, now_ms)
    }

    /// A device of `user` went away.
    pub fn left(&mut self, user: &K, now_ms: u64) -> Option<Announce> {
        let u = self.users.get_mut(user)?;
        u.devices = u.devices.saturating_sub(1);
        if u.devices > 0 {
            return None;
        }
        if u.announced != Some(Announce::Online) {
            // Never announced online: nothing to take back.
            self.users.remove(user);
            return None;
        }
        self.schedule(user, Announce::Offline, now_ms)
    }

    /// Announcements whose grace has passed at `now_ms`.
    pub fn tick(&mut self, now_ms: u64) -> Vec<(K, Announce)> {
        let mut out = Vec::new();
        for (k, u) in &mut self.users {
            if u.due_ms.is_some_and(|at| at <= now_ms) {
                u.due_ms = None;
                let state = if u.devices > 0 { Announce::Online } else { Announce::Offline };
                if u.announced != Some(state) {
                    u.announced = Some(state);
                    out.push((k.clone(), state));
                }
            }
        }
        self.users.retain(|_, u| u.devices > 0 || u.due_ms.is_some());
        out
    }

    /// Users with a device connected.
    pub fn online_count(&self) -> usize {
        self.users.values().filter(|u| u.devices > 0).count()
    }

    fn schedule(&mut self, user: &K, state: Announce, now_ms: u64) -> Option<Announce> {
        let u = self.users.get_mut(user)?;
        if self.grace_ms == 0 {
            u.announced = Some(state);
            u.due_ms = None;
            if state == Announce::Offline {
                self.users.remove(user);
            }
            return Some(state);
        }
        u.due_ms = Some(now_ms + self.grace_ms);
        None
    }
}

/// Where the nodes of a cluster count each user's devices together, so a user is online while
/// a device is connected to any node (design §2: presence counters in Redis). Every change of a
/// node's count for a user is one atomic step that returns the totals before and after it, so
/// exactly one node sees a user's total leave 0 (it announces "online") and exactly one sees
/// it reach 0 (it announces "offline"); [`PresenceDirectory::announce`] makes a (possibly late,
/// after a grace) announcement happen once per change of state. Nodes heartbeat; the devices
/// of a node that stopped are taken off by whichever node reaps it first.
/// `redis_state::RedisPresence` in a cluster, [`MemoryPresence`] for nodes sharing a process;
/// both pass [`contract::check`].
pub trait PresenceDirectory: Send + Sync + std::fmt::Debug {
    /// `node` (a node incarnation) now has `devices` devices of `user` (0: none). Returns the
    /// user's total over the live nodes before and after.
    fn set<'a>(&'a self, node: &'a str, user: &'a str, devices: u32) -> BoxFuture<'a, Result<(u64, u64), String>>;
    /// Records that the world is to be told `state` for `user`, if that is consistent with the
    /// total now (online: some device; offline: none) and differs from what was last announced.
    /// Returns whether the caller should announce it.
    fn announce<'a>(&'a self, user: &'a str, state: Announce) -> BoxFuture<'a, Result<bool, String>>;
    /// `node` is alive for `ttl_ms` more; nodes whose time ran out are reaped: their devices
    /// taken off. Returns the users whose total fell to 0 by it (each reaped once, by one
    /// caller): candidates for "offline".
    fn heartbeat<'a>(&'a self, node: &'a str, ttl_ms: u64) -> BoxFuture<'a, Result<Vec<String>, String>>;
}

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a node that never heartbeat counts as alive after each of its calls (15 s).
pub const DEFAULT_TTL_MS: u64 = 15_000;

/// The longest TTL a node gets (about 34 years): a larger `ttl_ms` is taken as this.
pub const MAX_TTL_MS: u64 = 1 << 40;

/// A [`PresenceDirectory`] in this process (tests, and nodes sharing a process), on this
/// process's monotonic clock, following the rules of [`contract`] under one lock.
#[derive(Debug, Default)]
pub struct MemoryPresence {
    state: Mutex<Directory>,
}

#[derive(Debug, Default)]
struct Directory {
    nodes: HashMap<String, NodeLife>,
    users: HashMap<String, Counted>,
}

/// A node: until when it is alive, for how long each call keeps it alive, and the users it has
/// a count for (so that reaping it finds them).
#[derive(Debug)]
struct NodeLife {
    expires: Instant,
    ttl: Duration,
    users: HashSet<String>,
}

/// A user's counts by node, and whether "online" is what the world was last told.
#[derive(Debug, Default)]
struct Counted {
    devices: HashMap<String, u32>,
    online: bool,
}

/// `now` + `ttl`, as far as an [`Instant`] goes.
fn until(now: Instant, ttl: Duration) -> Instant {
    now.checked_add(ttl).unwrap_or(now)
}

impl Directory {
    fn alive(&self, node: &str, now: Instant) -> bool {
        self.nodes.get(node).is_some_and(|n| n.expires > now)
    }

    /// The user's total over the nodes alive at `now`.
    fn total(&self, user: &str, now: Instant) -> u64 {
        let Some(c) = self.users.get(user) else { return 0 };
        c.devices.iter().filter(|(n, _)| self.alive(n, now)).map(|(_, d)| u64::from(*d)).sum()
    }

    /// Forgets the user if nothing is to be kept: total 0 and not announced online.
    fn tidy(&mut self, user: &str, total: u64) {
        if total == 0 && self.users.get(user).is_some_and(|c| !c.online) {
            self.users.remove(user);
        }
    }

    /// Keeps `node` alive for its TTL (`ttl`, if given, becomes it) from `now`.
    fn keep(&mut self, node: &str, ttl: Option<Duration>, now: Instant) -> &mut NodeLife {
        let default = Duration::from_millis(DEFAULT_TTL_MS);
        let n = self.nodes.entry(node.to_owned()).or_insert_with(|| NodeLife {
            expires: now,
            ttl: default,
            users: HashSet::new(),
        });
        n.ttl = ttl.unwrap_or(n.ttl);
        n.expires = until(now, n.ttl);
        n
    }

    fn set(&mut self, node: &str, user: &str, devices: u32, now: Instant) -> (u64, u64) {
        let before = self.total(user, now);
        let n = self.keep(node, None, now);
        if devices == 0 {
            n.users.remove(user);
            if let Some(c) = self.users.get_mut(user) {
                c.devices.remove(node);
            }
        } else {
            n.users.insert(user.to_owned());
            self.users.entry(user.to_owned()).or_default().devices.insert(node.to_owned(), devices);
        }
        let after = self.total(user, now);
        self.tidy(user, after);
        (before, after)
    }

    fn announce(&mut self, user: &str, state: Announce, now: Instant) -> bool {
        let total = self.total(user, now);
        let online = self.users.get(user).is_some_and(|c| c.online);
        let want = state == Announce::Online;
        if want != (total > 0) || want == online {
            return false;
        }
        if want {
            self.users.entry(user.to_owned()).or_default().online = true;
        } else {
            // Offline with no device: nothing left to keep.
            self.users.remove(user);
        }
        true
    }

    fn heartbeat(&mut self, node: &str, ttl: Duration, now: Instant) -> Vec<String> {
        self.keep(node, Some(ttl), now);
        let dead: Vec<String> = self.nodes.iter().filter(|(_, n)| n.expires <= now).map(|(id, _)| id.clone()).collect();
        let mut zero = Vec::new();
        for id in dead {
            let Some(n) = self.nodes.remove(&id) else { continue };
            for user in n.users {
                let had = self.users.get_mut(&user).and_then(|c| c.devices.remove(&id)).is_some();
                let total = self.total(&user, now);
                if had && total == 0 {
                    zero.push(user.clone());
                }
                self.tidy(&user, total);
            }
        }
        zero
    }
}

impl MemoryPresence {
    fn directory(&self) -> std::sync::MutexGuard<'_, Directory> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl PresenceDirectory for MemoryPresence {
    fn set<'a>(&'a self, node: &'a str, user: &'a str, devices: u32) -> BoxFuture<'a, Result<(u64, u64), String>> {
        let totals = self.directory().set(node, user, devices, Instant::now());
        Box::pin(std::future::ready(Ok(totals)))
    }

    fn announce<'a>(&'a self, user: &'a str, state: Announce) -> BoxFuture<'a, Result<bool, String>> {
        let yes = self.directory().announce(user, state, Instant::now());
        Box::pin(std::future::ready(Ok(yes)))
    }

    fn heartbeat<'a>(&'a self, node: &'a str, ttl_ms: u64) -> BoxFuture<'a, Result<Vec<String>, String>> {
        let ttl = Duration::from_millis(ttl_ms.min(MAX_TTL_MS));
        let zero = self.directory().heartbeat(node, ttl, Instant::now());
        Box::pin(std::future::ready(Ok(zero)))
    }
}

/// The behaviour every [`PresenceDirectory`] must have:
///
/// - A user's total is the sum of the device counts of the nodes that are alive. A node is
///   alive from its first call (`set` or `heartbeat`) until its TTL runs out.
///   `heartbeat(node, ttl_ms)` makes `ttl_ms` the node's TTL and keeps it alive until now +
///   `ttl_ms`; every `set` of the node keeps it alive until now + its TTL too: the `ttl_ms` of
///   its last heartbeat, or [`DEFAULT_TTL_MS`](super::DEFAULT_TTL_MS) for a node that never
///   heartbeat (or not since it was reaped). A heartbeat with `ttl_ms` 0 ends the node: that
///   same call reaps it (a clean shutdown).
/// - `set(node, user, devices)` replaces, in one atomic step, the node's count for the user (0
///   removes it) and returns the user's totals before and after. "Before" is counted as things
///   were: a dead node that comes back by this call counts from "after" on. So of several
///   concurrent callers exactly one sees a total go from 0 to more, and exactly one back to 0.
/// - `announce(user, state)` returns true, and records `state` as the user's announced state,
///   only if the total agrees (online: above 0; offline: 0) and the last announced state
///   differs. None recorded counts as offline: a user never announced online is never
///   announced offline. Nothing is kept for a user whose total is 0 and who is not announced
///   online.
/// - `heartbeat(node, ttl_ms)` also reaps every node whose time ran out: takes its counts off
///   each user it had devices of, forgets the node, and returns those users whose total is now
///   0 (in no particular order). Each dead node is reaped once, by one caller, so each such
///   user is returned once. (A dead node's counts stopped counting when its time ran out;
///   reaping deletes them and tells someone.) A node that was reaped and calls again is a new
///   node: it has only the counts it sets from then on.
///
/// Users and nodes are unique to each call (`prefix`), so a shared store can run it
/// concurrently, within one process: a heartbeat reaps every dead node, whoever's it is, so the
/// runs note what their heartbeats return in one list and each looks for its users there. Takes
/// about 0.6 s (a node dies).
pub mod contract {
    use std::sync::Mutex;
    use std::task::Poll;
    use std::time::Duration;

    use super::Announce::{Offline, Online};
    use super::PresenceDirectory;
    use crate::journal::contract::sleep;
    use crate::relations::BoxFuture;

    /// What every heartbeat of every run returned.
    static REAPED: Mutex<Vec<String>> = Mutex::new(Vec::new());

    fn node(prefix: &str, name: &str) -> String {
        format!("{prefix}:{name}")
    }

    fn user(prefix: &str, name: &str) -> String {
        format!("{prefix}/{name}")
    }

    async fn set(dir: &dyn PresenceDirectory, node: &str, user: &str, devices: u32) -> (u64, u64) {
        dir.set(node, user, devices).await.expect("set")
    }

    async fn announce(dir: &dyn PresenceDirectory, user: &str, state: super::Announce) -> bool {
        dir.announce(user, state).await.expect("announce")
    }

    /// What a heartbeat returned of this run's users (all of it is noted in [`REAPED`]).
    async fn heartbeat(dir: &dyn PresenceDirectory, prefix: &str, node: &str, ttl_ms: u64) -> Vec<String> {
        let zero = dir.heartbeat(node, ttl_ms).await.expect("heartbeat");
        REAPED.lock().unwrap_or_else(|e| e.into_inner()).extend(zero.iter().cloned());
        let mut mine: Vec<String> = zero.into_iter().filter(|u| u.starts_with(&format!("{prefix}/"))).collect();
        mine.sort();
        mine
    }

    /// How many times any run's heartbeat returned `user`.
    fn reaped(user: &str) -> usize {
        REAPED.lock().unwrap_or_else(|e| e.into_inner()).iter().filter(|u| *u == user).count()
    }

    /// Runs the futures at once; their outputs in order.
    async fn join_all<T>(mut futures: Vec<BoxFuture<'_, T>>) -> Vec<T> {
        let mut out: Vec<Option<T>> = futures.iter().map(|_| None).collect();
        std::future::poll_fn(|cx| {
            let mut pending = false;
            for (f, o) in futures.iter_mut().zip(out.iter_mut()) {
                if o.is_none() {
                    match f.as_mut().poll(cx) {
                        Poll::Ready(v) => *o = Some(v),
                        Poll::Pending => pending = true,
                    }
                }
            }
            if pending { Poll::Pending } else { Poll::Ready(()) }
        })
        .await;
        out.into_iter().flatten().collect()
    }

    pub async fn check(dir: &dyn PresenceDirectory, prefix: &str) {
        totals(dir, prefix).await;
        concurrent_changes(dir, prefix).await;
        announcements(dir, prefix).await;
        large_counts(dir, prefix).await;
        odd_names(dir, prefix).await;
        reaping(dir, prefix).await;
    }

    /// A user's total is the sum of their counts on every node.
    async fn totals(dir: &dyn PresenceDirectory, prefix: &str) {
        let (a, b, u) = (node(prefix, "A"), node(prefix, "B"), user(prefix, "alice"));
        assert_eq!(set(dir, &a, &u, 1).await, (0, 1), "the first device");
        assert_eq!(set(dir, &b, &u, 1).await, (1, 2), "a device on another node");
        assert_eq!(set(dir, &a, &u, 3).await, (2, 4), "a count is replaced, not added to");
        assert_eq!(set(dir, &a, &u, 3).await, (4, 4), "the same count again");
        assert_eq!(set(dir, &a, &u, 1).await, (4, 2));
        assert_eq!(set(dir, &b, &u, 0).await, (2, 1), "B has none");
        assert_eq!(set(dir, &b, &u, 0).await, (1, 1), "B had none already");
        assert_eq!(set(dir, &a, &u, 0).await, (1, 0), "the last device");
        assert_eq!(set(dir, &a, &user(prefix, "nobody"), 0).await, (0, 0), "nobody had none");
        assert_eq!(set(dir, &a, &u, 2).await, (0, 2), "again");
        assert_eq!(set(dir, &a, &u, 0).await, (2, 0));
    }

    /// Of nodes changing one user's count at once, one sees the first device and one the last.
    async fn concurrent_changes(dir: &dyn PresenceDirectory, prefix: &str) {
        let u = user(prefix, "busy");
        let nodes: Vec<String> = (0..8).map(|i| node(prefix, &format!("busy{i}"))).collect();
        for devices in [1, 0] {
            let got = join_all(nodes.iter().map(|n| dir.set(n, &u, devices)).collect()).await;
            let mut got: Vec<(u64, u64)> = got.into_iter().map(|r| r.expect("set")).collect();
            got.sort();
            let want: Vec<(u64, u64)> =
                if devices == 1 { (0..8).map(|k| (k, k + 1)).collect() } else { (1..=8).map(|k| (k, k - 1)).collect() };
            assert_eq!(got, want, "one after the other");
        }
    }

    /// Each change of state is announced once, and only while the total agrees.
    async fn announcements(dir: &dyn PresenceDirectory, prefix: &str) {
        let (a, v, w) = (node(prefix, "A"), user(prefix, "vera"), user(prefix, "walt"));
        assert!(!announce(dir, &v, Online).await, "no device");
        set(dir, &a, &v, 2).await;
        assert!(!announce(dir, &v, Offline).await, "devices, and never announced online");
        assert!(announce(dir, &v, Online).await);
        assert!(!announce(dir, &v, Online).await, "once");
        // Gone and back before the "offline" was due: nothing to announce.
        assert_eq!(set(dir, &a, &v, 0).await, (2, 0));
        assert_eq!(set(dir, &a, &v, 1).await, (0, 1));
        assert!(!announce(dir, &v, Offline).await, "a device is back");
        assert!(!announce(dir, &v, Online).await, "still announced online");
        assert_eq!(set(dir, &a, &v, 0).await, (1, 0));
        assert!(!announce(dir, &v, Online).await, "no device");
        assert!(announce(dir, &v, Offline).await);
        assert!(!announce(dir, &v, Offline).await, "once");
        // Online again after an "offline".
        assert_eq!(set(dir, &a, &v, 1).await, (0, 1));
        assert!(announce(dir, &v, Online).await, "online again");
        assert_eq!(set(dir, &a, &v, 0).await, (1, 0));
        assert!(announce(dir, &v, Offline).await, "offline again");
        // A user who was never announced: nothing to take back.
        assert!(!announce(dir, &w, Offline).await);
        set(dir, &a, &w, 1).await;
        set(dir, &a, &w, 0).await;
        assert!(!announce(dir, &w, Offline).await, "never announced online");
    }

    /// Counts up to `u32::MAX` on several nodes add up.
    async fn large_counts(dir: &dyn PresenceDirectory, prefix: &str) {
        let (a, b, u) = (node(prefix, "A"), node(prefix, "B"), user(prefix, "crowd"));
        let max = u64::from(u32::MAX);
        assert_eq!(set(dir, &a, &u, u32::MAX).await, (0, max));
        assert_eq!(set(dir, &b, &u, u32::MAX).await, (max, 2 * max));
        assert!(announce(dir, &u, Online).await);
        assert_eq!(set(dir, &a, &u, 1).await, (2 * max, max + 1));
        assert_eq!(set(dir, &b, &u, 0).await, (max + 1, 1));
        assert_eq!(set(dir, &a, &u, 0).await, (1, 0));
        assert!(announce(dir, &u, Offline).await);
    }

    /// Users and nodes named with any bytes a topic may hold are kept apart.
    async fn odd_names(dir: &dyn PresenceDirectory, prefix: &str) {
        let names = ["{x} *>.|", "{x}", "x", "acme/im/pres/bob", "ü\u{2028}\n/+#", "}{", ""];
        let users: Vec<String> = names.iter().map(|n| user(prefix, n)).collect();
        let (plain, odd) = (node(prefix, "A"), node(prefix, "{x} *>.|"));
        for u in &users {
            assert_eq!(set(dir, &plain, u, 1).await, (0, 1), "{u:?}");
        }
        for u in &users {
            assert_eq!(set(dir, &odd, u, 2).await, (1, 3), "{u:?}");
            assert!(announce(dir, u, Online).await, "{u:?}");
        }
        for u in &users {
            assert_eq!(set(dir, &plain, u, 0).await, (3, 2), "{u:?}");
            assert_eq!(set(dir, &odd, u, 0).await, (2, 0), "{u:?}");
            assert!(announce(dir, u, Offline).await, "{u:?}");
        }
    }

    /// A node whose time ran out stops counting, and the first heartbeat after it reaps it.
    async fn reaping(dir: &dyn PresenceDirectory, prefix: &str) {
        let (a, c, d, e) = (node(prefix, "A"), node(prefix, "C"), node(prefix, "D"), node(prefix, "E"));
        let (u1, u2, u3, u4) = (user(prefix, "u1"), user(prefix, "u2"), user(prefix, "u3"), user(prefix, "u4"));
        heartbeat(dir, prefix, &d, 60_000).await;
        heartbeat(dir, prefix, &c, 300).await;
        assert_eq!(set(dir, &c, &u1, 1).await, (0, 1));
        assert!(announce(dir, &u1, Online).await);
        assert_eq!(set(dir, &c, &u2, 2).await, (0, 2));
        assert_eq!(set(dir, &d, &u2, 1).await, (2, 3));
        // A node that never heartbeat lives for the default TTL after its last call.
        assert_eq!(set(dir, &a, &u4, 1).await, (0, 1));
        sleep(Duration::from_millis(500)).await;

        // C's time ran out (its sets kept it alive for its TTL, not the default): its devices no
        // longer count, reaped or not.
        assert_eq!(set(dir, &d, &u2, 1).await, (1, 1), "C's devices of u2 do not count");
        let got = heartbeat(dir, prefix, &d, 60_000).await;
        assert!(got.is_empty() || got == std::slice::from_ref(&u1), "{got:?}");
        // Another run's heartbeat may have reaped C: wait for it to note what it got.
        for _ in 0..100 {
            if reaped(&u1) > 0 {
                break;
            }
            sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(reaped(&u1), 1, "u1 (only on C) is returned once");
        assert_eq!(reaped(&u2), 0, "u2 is still on D");
        assert_eq!(heartbeat(dir, prefix, &d, 60_000).await, Vec::<String>::new(), "C was reaped already");
        assert_eq!(set(dir, &d, &u2, 3).await, (1, 3), "C's devices of u2 are gone");
        assert_eq!(set(dir, &d, &u2, 0).await, (3, 0));
        assert_eq!(set(dir, &a, &u4, 0).await, (1, 0), "A still lives");
        assert_eq!(set(dir, &c, &u1, 0).await, (0, 0), "C comes back with nothing");
        assert!(announce(dir, &u1, Offline).await, "u1 was announced online");

        // A heartbeat of 0 ms ends the node at once.
        assert_eq!(set(dir, &e, &u3, 1).await, (0, 1));
        assert_eq!(set(dir, &d, &u2, 1).await, (0, 1));
        assert_eq!(set(dir, &e, &u2, 1).await, (1, 2));
        assert_eq!(heartbeat(dir, prefix, &e, 0).await, [u3], "E reaps itself");
        assert_eq!(set(dir, &d, &u2, 0).await, (1, 0), "E's device of u2 is gone");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Announce::*;

    #[test]
    fn without_grace_every_change_is_announced_at_once() {
        let mut p = Presence::new(0);
        assert_eq!(p.connected(&"alice", 0), Some(Online));
        assert_eq!(p.connected(&"alice", 0), None, "a second device changes nothing");
        assert_eq!(p.left(&"alice", 0), None);
        assert_eq!(p.left(&"alice", 0), Some(Offline));
        assert_eq!(p.left(&"alice", 0), None, "unknown users are ignored");
        assert!(p.tick(u64::MAX).is_empty());
    }

    #[test]
    fn a_device_that_stays_is_announced_after_the_grace() {
        let mut p = Presence::new(3_000);
        assert_eq!(p.connected(&"alice", 1_000), None);
        assert!(p.tick(3_999).is_empty());
        assert_eq!(p.tick(4_000), vec![("alice", Online)]);
        assert_eq!(p.left(&"alice", 10_000), None);
        assert!(p.tick(12_999).is_empty());
        assert_eq!(p.tick(13_000), vec![("alice", Offline)]);
        assert_eq!(p.online_count(), 0);
        assert!(p.users.is_empty(), "nothing kept for users who left");
    }

    #[test]
    fn a_one_shot_connection_announces_nothing() {
        let mut p = Presence::new(3_000);
        p.connected(&"bob", 0);
        assert_eq!(p.left(&"bob", 500), None);
        assert!(p.tick(10_000).is_empty(), "never online, never offline");
    }

    #[test]
    fn a_reconnect_within_the_grace_shows_no_offline() {
        let mut p = Presence::new(3_000);
        p.connected(&"carol", 0);
        assert_eq!(p.tick(3_000), vec![("carol", Online)]);
        p.left(&"carol", 5_000);
        p.connected(&"carol", 6_000);
        assert!(p.tick(20_000).is_empty(), "still online, nothing to say");
        // A one-shot device while another stays changes nothing either.
        p.connected(&"carol", 21_000);
        p.left(&"carol", 21_100);
        assert!(p.tick(30_000).is_empty());
        assert_eq!(p.online_count(), 1);
    }
}

#[cfg(test)]
mod directory_tests {
    #[test]
    fn memory_presence_meets_the_contract() {
        let dir = super::MemoryPresence::default();
        crate::test_support::block_on(super::contract::check(&dir, "t"));
    }
}
