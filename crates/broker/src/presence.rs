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
