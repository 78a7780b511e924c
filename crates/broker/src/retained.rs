//! Retained messages: the last message per topic, handed to new subscribers.

use std::collections::HashMap;

use crate::session::Deliverable;
use crate::topic::matches;

/// What the retained messages under one first topic level hold (for an enterprise's users,
/// its id: the ACL keeps them under it), for quotas.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub messages: usize,
    /// Their payloads' bytes.
    pub bytes: usize,
}

/// The retained message of every topic that has one, with its payload's size.
#[derive(Debug)]
pub struct RetainedStore<M> {
    by_topic: HashMap<String, (M, usize)>,
    /// By first topic level.
    usage: HashMap<String, Usage>,
}

impl<M> Default for RetainedStore<M> {
    fn default() -> Self {
        RetainedStore { by_topic: HashMap::new(), usage: HashMap::new() }
    }
}

/// The first level of `topic`, which [`Usage`] is kept by.
fn first_level(topic: &str) -> &str {
    topic.split_once('/').map_or(topic, |(first, _)| first)
}

impl<M: Deliverable + Clone> RetainedStore<M> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.by_topic.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_topic.is_empty()
    }

    pub fn contains(&self, topic: &str) -> bool {
        self.by_topic.contains_key(topic)
    }

    /// The retained message of `topic`, if it has one (expired or not).
    pub fn get(&self, topic: &str) -> Option<&M> {
        self.by_topic.get(topic).map(|(m, _)| m)
    }

    /// What the retained messages under `topic`'s first level hold.
    pub fn usage(&self, topic: &str) -> Usage {
        self.usage.get(first_level(topic)).copied().unwrap_or_default()
    }

    /// What `topic`'s first level would hold with `bytes` retained on `topic`, replacing what
    /// it has.
    pub fn usage_with(&self, topic: &str, bytes: usize) -> Usage {
        let mut u = self.usage(topic);
        match self.by_topic.get(topic) {
            Some((_, old)) => u.bytes = u.bytes.saturating_sub(*old) + bytes,
            None => {
                u.messages += 1;
                u.bytes += bytes;
            }
        }
        u
    }

    /// Sets the retained message of `topic` (with its payload's size), or clears it with `None`
    /// (an empty payload).
    pub fn set(&mut self, topic: &str, msg: Option<(M, usize)>) {
        let old = match msg {
            Some((m, bytes)) => {
                self.count(topic, 1, bytes);
                self.by_topic.insert(topic.to_owned(), (m, bytes))
            }
            None => self.by_topic.remove(topic),
        };
        if let Some((_, bytes)) = old {
            self.uncount(topic, bytes);
        }
    }

    fn count(&mut self, topic: &str, messages: usize, bytes: usize) {
        let u = self.usage.entry(first_level(topic).to_owned()).or_default();
        u.messages += messages;
        u.bytes += bytes;
    }

    fn uncount(&mut self, topic: &str, bytes: usize) {
        let level = first_level(topic);
        if let Some(u) = self.usage.get_mut(level) {
            u.messages = u.messages.saturating_sub(1);
            u.bytes = u.bytes.saturating_sub(bytes);
            if u.messages == 0 {
                self.usage.remove(level);
            }
        }
    }

    /// Live retained messages whose topic matches `filter`; expired ones are dropped on the way.
    pub fn matching(&mut self, filter: &str, now_ms: u64) -> Vec<M> {
        let expired: Vec<String> =
            self.by_topic.iter().filter(|(_, (m, _))| m.expired(now_ms)).map(|(t, _)| t.clone()).collect();
        for topic in expired {
            self.set(&topic, None);
        }
        self.by_topic.iter().filter(|(t, _)| matches(filter, t)).map(|(_, (m, _))| m.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    struct M(&'static str, u64);
    impl Deliverable for M {
        fn expired(&self, now_ms: u64) -> bool {
            self.1 != 0 && now_ms >= self.1
        }
    }

    #[test]
    fn set_replace_clear_expire() {
        let mut r = RetainedStore::new();
        r.set("a/b", Some((M("1", 0), 1)));
        r.set("a/b", Some((M("2", 0), 1)));
        r.set("a/c", Some((M("3", 50), 1)));
        r.set("$SYS/x", Some((M("4", 0), 1)));
        let mut got = r.matching("a/+", 10);
        got.sort_by_key(|m| m.0);
        assert_eq!(got, vec![M("2", 0), M("3", 50)]);
        assert_eq!(r.matching("a/+", 60), vec![M("2", 0)], "expired message dropped");
        assert_eq!(r.matching("#", 60), vec![M("2", 0)], "$SYS not matched by #");
        r.set("a/b", None);
        assert!(r.matching("a/#", 60).is_empty());
        assert_eq!(r.len(), 1);
    }

    /// What each first level holds follows every set, replacement, clear and expiry.
    #[test]
    fn usage_is_kept_by_first_level() {
        let mut r = RetainedStore::new();
        r.set("acme/a", Some((M("1", 0), 10)));
        r.set("acme/b/c", Some((M("2", 50), 20)));
        r.set("acme", Some((M("3", 0), 1)));
        r.set("evil/a", Some((M("4", 0), 100)));
        assert_eq!(r.usage("acme/x"), Usage { messages: 3, bytes: 31 });
        assert_eq!(r.usage("evil"), Usage { messages: 1, bytes: 100 });
        assert_eq!(r.usage_with("acme/a", 5), Usage { messages: 3, bytes: 26 }, "would replace");
        assert_eq!(r.usage_with("acme/new", 5), Usage { messages: 4, bytes: 36 }, "would add");
        r.set("acme/a", Some((M("5", 0), 5)));
        assert_eq!(r.usage("acme/x"), Usage { messages: 3, bytes: 26 }, "replaced");
        r.set("acme", None);
        r.set("acme/nothing", None);
        assert_eq!(r.usage("acme/x"), Usage { messages: 2, bytes: 25 }, "cleared");
        r.matching("#", 60);
        assert_eq!(r.usage("acme/x"), Usage { messages: 1, bytes: 5 }, "expired");
        r.set("acme/a", None);
        assert_eq!(r.usage("acme/x"), Usage::default());
        assert_eq!(r.usage("other"), Usage::default());
    }
}
