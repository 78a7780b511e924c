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

/// The retained message of every topic that has one, with its payload's size and when it was
/// set (the store's count of changes then).
#[derive(Debug)]
pub struct RetainedStore<M> {
    by_topic: HashMap<String, (M, usize, u64)>,
    /// By first topic level.
    usage: HashMap<String, Usage>,
    /// Changes made so far (each set or clear is one).
    clock: u64,
    /// While a reconciliation is under way ([`RetainedStore::mark`]): the topics cleared since,
    /// and when.
    cleared: Option<HashMap<String, u64>>,
}

impl<M> Default for RetainedStore<M> {
    fn default() -> Self {
        RetainedStore { by_topic: HashMap::new(), usage: HashMap::new(), clock: 0, cleared: None }
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
        self.by_topic.get(topic).map(|(m, ..)| m)
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
            Some((_, old, _)) => u.bytes = u.bytes.saturating_sub(*old) + bytes,
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
        self.clock += 1;
        let old = match msg {
            Some((m, bytes)) => {
                self.count(topic, bytes);
                self.by_topic.insert(topic.to_owned(), (m, bytes, self.clock))
            }
            None => {
                if let Some(cleared) = &mut self.cleared {
                    cleared.insert(topic.to_owned(), self.clock);
                }
                self.by_topic.remove(topic)
            }
        };
        if let Some((_, bytes, _)) = old {
            self.uncount(topic, bytes);
        }
    }

    /// Where the store stands, for a [`RetainedStore::reconcile`] with what was read after it:
    /// what changes here from now on is newer than that.
    pub fn mark(&mut self) -> u64 {
        self.cleared.get_or_insert_with(HashMap::new);
        self.clock
    }

    /// Makes the store hold `all` (topic, message and payload size: every retained message,
    /// as a store other nodes write to has them, read after `mark`) on the topics `covered`
    /// picks, but for the topics set or cleared here since `mark`, which are newer. Returns
    /// how many topics it wrote.
    pub fn reconcile(
        &mut self,
        all: impl IntoIterator<Item = (String, M, usize)>,
        mark: u64,
        covered: impl Fn(&str) -> bool,
    ) -> usize {
        let cleared = self.cleared.take().unwrap_or_default();
        let newer = |store: &Self, topic: &str| {
            store.by_topic.get(topic).is_some_and(|(.., at)| *at > mark)
                || cleared.get(topic).is_some_and(|at| *at > mark)
        };
        let mut changed = 0;
        let mut seen = std::collections::HashSet::new();
        for (topic, msg, bytes) in all.into_iter().filter(|(t, ..)| covered(t)) {
            if !newer(self, &topic) {
                self.set(&topic, Some((msg, bytes)));
                changed += 1;
            }
            seen.insert(topic);
        }
        let gone: Vec<String> = self
            .by_topic
            .iter()
            .filter(|(t, (.., at))| *at <= mark && covered(t) && !seen.contains(*t))
            .map(|(t, _)| t.clone())
            .collect();
        for topic in gone {
            self.set(&topic, None);
            changed += 1;
        }
        changed
    }

    fn count(&mut self, topic: &str, bytes: usize) {
        let u = self.usage.entry(first_level(topic).to_owned()).or_default();
        u.messages += 1;
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
            self.by_topic.iter().filter(|(_, (m, ..))| m.expired(now_ms)).map(|(t, _)| t.clone()).collect();
        for topic in expired {
            self.set(&topic, None);
        }
        self.by_topic.iter().filter(|(t, _)| matches(filter, t)).map(|(_, (m, ..))| m.clone()).collect()
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

    /// A reconciliation brings the store to what another store holds (read after the mark),
    /// but what was set or cleared here since the mark is newer and stays.
    #[test]
    fn a_reconciliation_takes_what_it_read_but_what_changed_here_since_the_mark() {
        let mut r = RetainedStore::new();
        for (topic, body) in [("stale", "old"), ("gone", "old"), ("kept", "old"), ("cleared", "old"), ("$own", "own")] {
            r.set(topic, Some((M(body, 0), 1)));
        }
        let mark = r.mark();
        r.set("kept", Some((M("live", 0), 1)));
        r.set("cleared", None);
        r.set("new-live", Some((M("live", 0), 1)));
        let read = ["stale", "kept", "cleared", "missed", "$theirs"].map(|t| (t.to_owned(), M("read", 0), 1));
        let covered = |t: &str| !t.starts_with('$');
        assert_eq!(r.reconcile(read, mark, covered), 3, "stale and missed set, gone cleared; $ not covered");
        let mut all: Vec<(String, &str)> =
            ["stale", "gone", "kept", "cleared", "missed", "new-live", "$own", "$theirs"]
                .iter()
                .filter_map(|t| Some((t.to_string(), r.get(t)?.0)))
                .collect();
        all.sort();
        let want = [("$own", "own"), ("kept", "live"), ("missed", "read"), ("new-live", "live"), ("stale", "read")];
        assert_eq!(all, want.map(|(t, b)| (t.to_owned(), b)));
        assert_eq!(r.usage("stale"), Usage { messages: 1, bytes: 1 });
        assert!(r.cleared.is_none(), "no longer watching clears");
    }
}
