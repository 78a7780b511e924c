//! A topic trie: which subscribers' filters match a topic name, in time proportional to the
//! topic's levels rather than the number of subscriptions.
//!
//! Each filter level is a node; `+` and `#` are ordinary children looked up on every match.
//! Subscribers are kept where their filter ends, keyed by `K` (a session id) with a value `V`
//! (the subscription's options).

use std::collections::HashMap;
use std::hash::Hash;

#[derive(Debug)]
struct Node<K, V> {
    children: HashMap<Box<str>, Node<K, V>>,
    subscribers: HashMap<K, V>,
}

impl<K, V> Default for Node<K, V> {
    fn default() -> Self {
        Node { children: HashMap::new(), subscribers: HashMap::new() }
    }
}

impl<K, V> Node<K, V> {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subscribers.is_empty()
    }
}

/// Subscriptions indexed by filter. Filters must have been validated (see [`crate::topic`]).
#[derive(Debug)]
pub struct SubscriptionTrie<K, V> {
    root: Node<K, V>,
    len: usize,
}

impl<K, V> Default for SubscriptionTrie<K, V> {
    fn default() -> Self {
        SubscriptionTrie { root: Node::default(), len: 0 }
    }
}

impl<K: Hash + Eq + Clone, V> SubscriptionTrie<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of (filter, subscriber) pairs stored.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds or replaces `key`'s subscription to `filter`; returns the replaced value.
    pub fn insert(&mut self, filter: &str, key: K, value: V) -> Option<V> {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        let old = node.subscribers.insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes `key`'s subscription to `filter`, pruning nodes left empty.
    pub fn remove(&mut self, filter: &str, key: &K) -> Option<V> {
        let levels: Vec<&str> = filter.split('/').collect();
        let removed = Self::remove_at(&mut self.root, &levels, key);
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    fn remove_at(node: &mut Node<K, V>, levels: &[&str], key: &K) -> Option<V> {
        let Some((first, rest)) = levels.split_first() else {
            return node.subscribers.remove(key);
        };
        let child = node.children.get_mut(*first)?;
        let removed = Self::remove_at(child, rest, key);
        if child.is_empty() {
            node.children.remove(*first);
        }
        removed
    }

    /// Calls `f` once per (subscriber, value) whose filter matches `topic`.
    ///
    /// A subscriber with several matching filters is reported once per filter; callers that
    /// deliver one copy per subscriber aggregate (see `delivery` in the edge).
    pub fn for_each_match(&self, topic: &str, mut f: impl FnMut(&K, &V)) {
        let levels: Vec<&str> = topic.split('/').collect();
        let dollar = topic.starts_with('$');
        Self::match_at(&self.root, &levels, dollar, &mut f);
    }

    fn match_at(node: &Node<K, V>, levels: &[&str], dollar_root: bool, f: &mut impl FnMut(&K, &V)) {
        // `#` matches the parent level too ("a/#" matches "a"), but not at the root of a `$` topic.
        if !dollar_root && let Some(hash) = node.children.get("#") {
            hash.subscribers.iter().for_each(|(k, v)| f(k, v));
        }
        let Some((first, rest)) = levels.split_first() else {
            node.subscribers.iter().for_each(|(k, v)| f(k, v));
            return;
        };
        if !dollar_root && let Some(plus) = node.children.get("+") {
            Self::match_at(plus, rest, false, f);
        }
        if let Some(exact) = node.children.get(*first) {
            Self::match_at(exact, rest, false, f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::matches;
    use proptest::prelude::*;

    fn matched(trie: &SubscriptionTrie<u32, &'static str>, topic: &str) -> Vec<(u32, &'static str)> {
        let mut out = Vec::new();
        trie.for_each_match(topic, |k, v| out.push((*k, *v)));
        out.sort();
        out
    }

    #[test]
    fn insert_match_remove() {
        let mut t = SubscriptionTrie::new();
        t.insert("a/+", 1, "a/+");
        t.insert("a/#", 2, "a/#");
        t.insert("#", 3, "#");
        t.insert("a/b", 1, "a/b");
        assert_eq!(t.len(), 4);
        assert_eq!(matched(&t, "a/b"), vec![(1, "a/+"), (1, "a/b"), (2, "a/#"), (3, "#")]);
        assert_eq!(matched(&t, "a"), vec![(2, "a/#"), (3, "#")]);
        assert_eq!(matched(&t, "$SYS/a"), vec![]);
        assert_eq!(t.remove("a/+", &1), Some("a/+"));
        assert_eq!(t.remove("a/+", &1), None);
        assert_eq!(t.remove("x/y", &1), None);
        assert_eq!(matched(&t, "a/b"), vec![(1, "a/b"), (2, "a/#"), (3, "#")]);
        for (f, k) in [("a/#", 2), ("#", 3), ("a/b", 1)] {
            t.remove(f, &k);
        }
        assert!(t.is_empty());
        assert!(t.root.is_empty(), "empty nodes are pruned");
    }

    #[test]
    fn replace_keeps_count() {
        let mut t = SubscriptionTrie::new();
        assert_eq!(t.insert("a", 1, "x"), None);
        assert_eq!(t.insert("a", 1, "y"), Some("x"));
        assert_eq!(t.len(), 1);
    }

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![Just("a".to_string()), Just("b".to_string()), Just("".to_string()), Just("$s".to_string())]
    }

    fn topic() -> impl Strategy<Value = String> {
        proptest::collection::vec(level(), 1..5).prop_map(|v| v.join("/"))
    }

    fn filter() -> impl Strategy<Value = String> {
        let lvl = prop_oneof![level(), Just("+".to_string())];
        (proptest::collection::vec(lvl, 1..5), any::<bool>()).prop_map(|(mut v, hash)| {
            if hash {
                v.push("#".into());
            }
            v.join("/")
        })
    }

    proptest! {
        #[test]
        fn trie_agrees_with_naive_matcher(
            filters in proptest::collection::vec(filter(), 1..20),
            topics in proptest::collection::vec(topic(), 1..20),
        ) {
            let mut t = SubscriptionTrie::new();
            for (i, f) in filters.iter().enumerate() {
                t.insert(f, i, ());
            }
            for topic in &topics {
                let mut got = Vec::new();
                t.for_each_match(topic, |k, _| got.push(*k));
                got.sort();
                let want: Vec<usize> = filters.iter().enumerate()
                    .filter(|(_, f)| matches(f, topic)).map(|(i, _)| i).collect();
                prop_assert_eq!(got, want, "topic {}", topic);
            }
        }
    }
}
