//! Outbound topic aliases (MQTT 5 §3.3.2.3.4): a v5 client that announces a Topic Alias Maximum
//! lets the server send a short number instead of a topic it has sent before. Long topics such as
//! `{eid}/im/msg/{user}` then cost two bytes per push. One table per connection; when it is full,
//! the least recently used alias is given to the new topic.

use std::collections::HashMap;

/// How to send one PUBLISH's topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alias {
    /// No alias: the client takes none, or the topic is not worth one.
    None,
    /// Send the topic with this alias: the client (re)binds the alias to it [MQTT-3.3.2-12].
    Bind(u16),
    /// Send an empty topic with this alias, bound earlier on this connection.
    Use(u16),
}

/// The aliases of one connection.
#[derive(Debug, Default)]
pub struct TopicAliases {
    max: u16,
    /// Topic → (alias, last use).
    by_topic: HashMap<Box<str>, (u16, u64)>,
    /// Alias → topic, index `alias - 1`.
    by_alias: Vec<Box<str>>,
    clock: u64,
}

/// Topics shorter than this are sent as they are: an alias costs three bytes of property.
const MIN_TOPIC_LEN: usize = 4;

impl TopicAliases {
    /// A table for a client whose Topic Alias Maximum is `max` (0: it takes no aliases).
    pub fn new(max: u16) -> Self {
        TopicAliases { max, ..TopicAliases::default() }
    }

    /// How to send a PUBLISH to `topic`; records the use.
    pub fn alias(&mut self, topic: &str) -> Alias {
        if self.max == 0 || topic.len() < MIN_TOPIC_LEN {
            return Alias::None;
        }
        self.clock += 1;
        if let Some((alias, used)) = self.by_topic.get_mut(topic) {
            *used = self.clock;
            return Alias::Use(*alias);
        }
        let alias = if self.by_alias.len() < usize::from(self.max) {
            self.by_alias.push(topic.into());
            self.by_alias.len() as u16
        } else {
            // Full: the least recently used alias now names this topic.
            let Some((old, &(alias, _))) = self.by_topic.iter().min_by_key(|(_, (_, used))| *used) else {
                return Alias::None;
            };
            let old = old.clone();
            self.by_topic.remove(&old);
            self.by_alias[usize::from(alias) - 1] = topic.into();
            alias
        };
        self.by_topic.insert(topic.into(), (alias, self.clock));
        Alias::Bind(alias)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_aliases_for_clients_that_take_none_or_short_topics() {
        assert_eq!(TopicAliases::new(0).alias("acme/im/msg/alice"), Alias::None);
        assert_eq!(TopicAliases::new(10).alias("a/b"), Alias::None);
    }

    #[test]
    fn a_topic_is_bound_once_then_used() {
        let mut t = TopicAliases::new(2);
        assert_eq!(t.alias("acme/im/msg/alice"), Alias::Bind(1));
        assert_eq!(t.alias("acme/im/msg/alice"), Alias::Use(1));
        assert_eq!(t.alias("acme/notice/all"), Alias::Bind(2));
        assert_eq!(t.alias("acme/notice/all"), Alias::Use(2));
    }

    #[test]
    fn a_full_table_rebinds_the_least_recently_used() {
        let mut t = TopicAliases::new(2);
        t.alias("topic/one");
        t.alias("topic/two");
        t.alias("topic/one"); // two is now the least recently used
        assert_eq!(t.alias("topic/three"), Alias::Bind(2));
        assert_eq!(t.alias("topic/two"), Alias::Bind(1), "one was least recently used then");
        assert_eq!(t.alias("topic/three"), Alias::Use(2));
        // With max 1 every new topic rebinds alias 1.
        let mut one = TopicAliases::new(1);
        assert_eq!(one.alias("topic/a"), Alias::Bind(1));
        assert_eq!(one.alias("topic/b"), Alias::Bind(1));
        assert_eq!(one.alias("topic/b"), Alias::Use(1));
    }

    #[test]
    fn aliases_never_exceed_the_maximum() {
        let mut t = TopicAliases::new(u16::MAX);
        for i in 0..1000 {
            match t.alias(&format!("topic/{i}")) {
                Alias::Bind(a) => assert!(a >= 1),
                other => panic!("{other:?}"),
            }
        }
        let mut small = TopicAliases::new(3);
        for i in 0..50 {
            match small.alias(&format!("topic/{}", i % 7)) {
                Alias::Bind(a) | Alias::Use(a) => assert!((1..=3).contains(&a)),
                Alias::None => panic!("long topics get aliases"),
            }
        }
    }
}
