//! Retained messages: the last message per topic, handed to new subscribers.

use std::collections::HashMap;

use crate::session::Deliverable;
use crate::topic::matches;

/// The retained message of every topic that has one.
#[derive(Debug)]
pub struct RetainedStore<M> {
    by_topic: HashMap<String, M>,
}

impl<M> Default for RetainedStore<M> {
    fn default() -> Self {
        RetainedStore { by_topic: HashMap::new() }
    }
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
        self.by_topic.get(topic)
    }

    /// Sets the retained message of `topic`, or clears it with `None` (an empty payload).
    pub fn set(&mut self, topic: &str, msg: Option<M>) {
        match msg {
            Some(m) => {
                self.by_topic.insert(topic.to_owned(), m);
            }
            None => {
                self.by_topic.remove(topic);
            }
        }
    }

    /// Live retained messages whose topic matches `filter`; expired ones are dropped on the way.
    pub fn matching(&mut self, filter: &str, now_ms: u64) -> Vec<M> {
        self.by_topic.retain(|_, m| !m.expired(now_ms));
        self.by_topic.iter().filter(|(t, _)| matches(filter, t)).map(|(_, m)| m.clone()).collect()
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
        r.set("a/b", Some(M("1", 0)));
        r.set("a/b", Some(M("2", 0)));
        r.set("a/c", Some(M("3", 50)));
        r.set("$SYS/x", Some(M("4", 0)));
        let mut got = r.matching("a/+", 10);
        got.sort_by_key(|m| m.0);
        assert_eq!(got, vec![M("2", 0), M("3", 50)]);
        assert_eq!(r.matching("a/+", 60), vec![M("2", 0)], "expired message dropped");
        assert_eq!(r.matching("#", 60), vec![M("2", 0)], "$SYS not matched by #");
        r.set("a/b", None);
        assert!(r.matching("a/#", 60).is_empty());
        assert_eq!(r.len(), 1);
    }
}
