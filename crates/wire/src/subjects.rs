//! NATS subjects: one place that names them, so services agree.

/// Where the accounts tier publishes an enterprise's [`crate::pb::AccountEvent`]s.
pub fn account_events(enterprise_id: &str) -> String {
    // Enterprise ids are `[A-Za-z0-9._-]`: a `.` would split the token, so it is escaped.
    format!("hermes.account.{}", enterprise_id.replace('.', "_2e"))
}

/// Every enterprise's account events.
pub const ALL_ACCOUNT_EVENTS: &str = "hermes.account.>";

/// The JetStream stream that keeps account events for edges cut off from NATS for a while.
pub const ACCOUNT_EVENTS_STREAM: &str = "HERMES_ACCOUNT_EVENTS";

/// Edges route MQTT messages to each other on subjects made from the topic (design §2, flow 3):
/// `hermes.m.` and the topic's levels, one NATS token per level. A level is escaped so every
/// topic has exactly one subject and no level can act as a NATS wildcard or separator: `_` is
/// `_5f`, `.` `_2e`, `*` `_2a`, `>` `_3e`, whitespace and control characters `_u` and six hex
/// digits (escapes have a fixed width, so no two topics share a subject), and an empty level is
/// a lone `_` (which no escaped level can be).
pub const ROUTED_PREFIX: &str = "hermes.m";

/// Retained messages go to every edge (each keeps them for its later subscribers), on
/// `hermes.r.` and the topic's levels, whatever their interest.
pub const RETAINED_PREFIX: &str = "hermes.r";

/// Every retained message.
pub const ALL_RETAINED: &str = "hermes.r.>";

/// Every routed message that is not retained.
pub const ALL_ROUTED: &str = "hermes.m.>";

/// The JetStream stream that keeps the QoS 1/2 messages edges route to each other for a while,
/// for the sessions of an edge that died (`bus.keep_secs`).
pub const ROUTED_STREAM: &str = "HERMES_ROUTED";

/// Topics whose subject would pass [`MAX_SUBJECT_LEN`] travel here, to every edge.
pub const LONG_TOPICS: &str = "hermes.long";

/// The longest routed subject: well inside NATS's default 4 KiB control line.
pub const MAX_SUBJECT_LEN: usize = 3072;

/// The subject a message on `topic` is published to, `None` when it would be too long (publish
/// it on [`LONG_TOPICS`]). `retained` picks the every-edge prefix.
pub fn routed(topic: &str, retained: bool) -> Option<String> {
    let prefix = if retained { RETAINED_PREFIX } else { ROUTED_PREFIX };
    let mut out = String::with_capacity(prefix.len() + topic.len() + 8);
    out.push_str(prefix);
    for level in topic.split('/') {
        out.push('.');
        escape_level(level, &mut out);
        if out.len() > MAX_SUBJECT_LEN {
            return None;
        }
    }
    Some(out)
}

/// The subjects an edge subscribes to for an MQTT filter (without `$share/group/`): `+` is
/// `*`; a final `#` is `>` and, because `#` also matches its parent level, the parent itself.
/// `None` when the filter's subject would be too long (messages for it come on [`LONG_TOPICS`],
/// which every edge subscribes to).
pub fn interest(filter: &str) -> Option<Vec<String>> {
    let mut out = String::with_capacity(ROUTED_PREFIX.len() + filter.len() + 8);
    out.push_str(ROUTED_PREFIX);
    let mut subjects = Vec::with_capacity(2);
    for level in filter.split('/') {
        match level {
            "#" => {
                if out.len() > ROUTED_PREFIX.len() {
                    subjects.push(out.clone());
                }
                out.push_str(".>");
            }
            "+" => out.push_str(".*"),
            level => {
                out.push('.');
                escape_level(level, &mut out);
            }
        }
        if out.len() > MAX_SUBJECT_LEN {
            return None;
        }
    }
    subjects.push(out);
    Some(subjects)
}

/// The bus queue group of the shared subscription `share` (`$share/{group}/{filter}`): the same
/// on every node and in every version, short whatever the filter, and a cryptographic digest
/// (SHA-256, its first 16 bytes): clients choose share names, and one that could make its
/// share's name collide with another enterprise's on purpose would share that share's group on
/// the bus (`bus::Bus::subscribe_group`), taking its messages.
pub fn share_queue(share: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(share);
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("hermes_share_{hex}")
}

/// `name` as one subject token, escaped like a topic level (node ids, enterprise-chosen names).
pub fn token(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    escape_level(name, &mut out);
    out
}

fn escape_level(level: &str, out: &mut String) {
    if level.is_empty() {
        out.push('_');
        return;
    }
    for c in level.chars() {
        match c {
            '_' | '.' | '*' | '>' => {
                let _ = std::fmt::Write::write_fmt(out, format_args!("_{:02x}", c as u32));
            }
            c if c.is_whitespace() || c.is_control() => {
                let _ = std::fmt::Write::write_fmt(out, format_args!("_u{:06x}", c as u32));
            }
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_token_per_enterprise() {
        assert_eq!(super::account_events("acme"), "hermes.account.acme");
        assert_eq!(super::account_events("a.b"), "hermes.account.a_2eb");
    }

    use super::{interest, routed};

    #[test]
    fn every_level_is_one_token_and_none_is_a_wildcard() {
        assert_eq!(routed("acme/im/msg/bob", false).as_deref(), Some("hermes.m.acme.im.msg.bob"));
        assert_eq!(routed("a.b/*/>", false).as_deref(), Some("hermes.m.a_2eb._2a._3e"));
        assert_eq!(routed("/x//", false).as_deref(), Some("hermes.m._.x._._"));
        assert_eq!(routed("a b\tc", false).as_deref(), Some("hermes.m.a_u000020b_u000009c"));
        assert_eq!(routed("t", true).as_deref(), Some("hermes.r.t"));
        assert_eq!(routed("é/ü", false).as_deref(), Some("hermes.m.é.ü"));
    }

    #[test]
    fn a_shares_queue_group_is_a_digest_of_the_share() {
        // SHA-256 of the share, its first 16 bytes.
        assert_eq!(super::share_queue("$share/workers/acme/orders"), "hermes_share_8d57d622cb585ffa02386c904d8e05b0");
        assert_ne!(
            super::share_queue("$share/workers/acme/orders"),
            super::share_queue("$share/workers/globex/orders")
        );
    }

    #[test]
    fn distinct_topics_never_share_a_subject() {
        let topics = [
            "a/b",
            "a.b",
            "a_2eb",
            "a_b",
            "a/_",
            "a/",
            "a//",
            "a/_5f",
            "_",
            "",
            "a b",
            "a_u000020b",
            "a\tb",
            "a\u{2028}",
        ];
        let mut seen = std::collections::HashMap::new();
        for t in topics {
            let s = routed(t, false).expect("short");
            if let Some(other) = seen.insert(s.clone(), t) {
                panic!("{t:?} and {other:?} both map to {s}");
            }
            assert!(bus_valid(&s), "{s}");
        }
    }

    fn bus_valid(s: &str) -> bool {
        s.split('.').all(|t| !t.is_empty() && !t.contains(char::is_whitespace) && !t.contains(['*', '>']))
    }

    #[test]
    fn hash_also_covers_its_parent_level() {
        assert_eq!(interest("a/#"), Some(vec!["hermes.m.a".into(), "hermes.m.a.>".into()]));
        assert_eq!(interest("#"), Some(vec!["hermes.m.>".into()]));
        assert_eq!(interest("+/b/+"), Some(vec!["hermes.m.*.b.*".into()]));
        assert_eq!(interest("a.b/+/#"), Some(vec!["hermes.m.a_2eb.*".into(), "hermes.m.a_2eb.*.>".into()]));
        assert_eq!(interest("/"), Some(vec!["hermes.m._._".into()]));
    }

    #[test]
    fn topics_and_filters_too_long_for_a_subject_are_said() {
        let long = "x".repeat(super::MAX_SUBJECT_LEN);
        assert_eq!(routed(&long, false), None);
        assert_eq!(interest(&format!("{long}/#")), None);
        let fits = "x".repeat(super::MAX_SUBJECT_LEN - super::ROUTED_PREFIX.len() - 1);
        assert_eq!(routed(&fits, false).map(|s| s.len()), Some(super::MAX_SUBJECT_LEN));
    }
}
