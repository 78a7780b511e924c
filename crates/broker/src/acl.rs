//! Access control and auto-subscribe tables with placeholders (seed 004 §3.4–3.5, design §3).
//!
//! Rule text, one per line, `#` comments; `deny` rules (Mosquitto's syntax) are checked before
//! any grant, so an operator can fence topics inside a wildcard grant:
//! ```text
//! # `pattern` rules apply to everyone; %F gives one filter per mutual friend
//! pattern readwrite %e/im/msg/%u
//! pattern read %e/im/pres/%F
//! pattern deny %e/im/pres/ceo
//! # `topic` lines after `user NAME` apply to that user only
//! user admin
//! topic readwrite #
//! ```
//! Placeholders: `%u` username, `%c` client id, `%e` enterprise, `%f` each user followed,
//! `%F` each mutual friend, `%g` each group the user is a member of. A value that contains `/`, `+`, `#` or U+0000, starts with `$`, or is
//! empty makes the rule (or that set member) not apply: a crafted name can never widen a rule.
//! A `+` in a rule never stands for an empty level (`acme/im/msg/` is nobody's inbox).
//! Deny by default.

use std::fmt;

use crate::QoS;
use crate::topic::{TopicLimits, matches, validate_filter};

/// What a rule grants: `read` = subscribe, `write` = publish; `deny` takes both away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    ReadWrite,
    /// Refuses publishing to the topics the filter matches and subscribing to any filter that
    /// could match one of them, whatever the grants say.
    Deny,
}

impl Access {
    fn allows(self, want: Access) -> bool {
        self == Access::ReadWrite || self == want
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub access: Access,
    /// A topic filter that may hold placeholders.
    pub filter: String,
}

/// The rules of one enterprise: `pattern` rules for everyone, `topic` rules per user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AclTable {
    pub patterns: Vec<Rule>,
    pub users: Vec<(String, Vec<Rule>)>,
}

/// Who is asking, and the relation sets the placeholders stand for.
#[derive(Clone, Copy)]
pub struct Subject<'a> {
    pub username: &'a str,
    pub client_id: &'a str,
    pub enterprise: &'a str,
    /// Users this user follows (`%f`), mutual friends (`%F`), groups (`%g`).
    pub sets: &'a dyn Sets,
}

impl std::fmt::Debug for Subject<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subject").field("username", &self.username).field("enterprise", &self.enterprise).finish()
    }
}

/// A set placeholder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Set {
    /// `%f`: users this user follows.
    Follows,
    /// `%F`: mutual friends.
    Friends,
    /// `%g`: groups this user is a member of.
    Groups,
}

/// The relation sets of one subject. A rule check asks about one member at a time (a user with
/// 500 friends costs one look-up per rule level, not 500 filters); only auto-subscriptions list
/// a set whole.
pub trait Sets {
    fn contains(&self, set: Set, value: &str) -> bool;
    fn list(&self, set: Set) -> Vec<String>;
}

/// Sets given as sorted lists (tests, and subjects without relations).
#[derive(Debug, Clone, Default)]
pub struct Lists {
    pub follows: Vec<String>,
    pub friends: Vec<String>,
    pub groups: Vec<String>,
}

impl Lists {
    fn of(&self, set: Set) -> &[String] {
        match set {
            Set::Follows => &self.follows,
            Set::Friends => &self.friends,
            Set::Groups => &self.groups,
        }
    }
}

impl Sets for Lists {
    fn contains(&self, set: Set, value: &str) -> bool {
        self.of(set).iter().any(|v| v == value)
    }

    fn list(&self, set: Set) -> Vec<String> {
        self.of(set).to_vec()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

fn parse_access(word: &str, line: usize) -> Result<Access, ParseError> {
    match word {
        "read" => Ok(Access::Read),
        "write" => Ok(Access::Write),
        "readwrite" => Ok(Access::ReadWrite),
        "deny" => Ok(Access::Deny),
        other => Err(ParseError { line, message: format!("expected read, write, readwrite or deny, found `{other}`") }),
    }
}

/// A line without its comment: `#` starts a comment only as the first character, since it is
/// also the multi-level wildcard.
fn content(raw: &str) -> &str {
    raw.split_once('#').filter(|(before, _)| before.trim().is_empty()).map_or(raw, |_| "").trim()
}

impl AclTable {
    /// Parses rule text. A `#` starts a comment only at the start of a line, since `#` is also
    /// the multi-level wildcard.
    pub fn parse(text: &str) -> Result<AclTable, ParseError> {
        let mut table = AclTable::default();
        let mut current_user: Option<usize> = None;
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let l = content(raw);
            if l.is_empty() {
                continue;
            }
            let mut words = l.split_whitespace();
            let keyword = words.next().unwrap_or_default();
            let rest: Vec<&str> = words.collect();
            match (keyword, rest.as_slice()) {
                ("user", [name]) => {
                    table.users.push(((*name).to_owned(), Vec::new()));
                    current_user = Some(table.users.len() - 1);
                }
                ("pattern", [access, filter]) => {
                    let rule = Rule { access: parse_access(access, line)?, filter: check_template(filter, line)? };
                    table.patterns.push(rule);
                }
                ("topic", [access, filter]) => {
                    let idx = current_user
                        .ok_or_else(|| ParseError { line, message: "`topic` before any `user` line".into() })?;
                    let rule = Rule { access: parse_access(access, line)?, filter: check_template(filter, line)? };
                    table.users[idx].1.push(rule);
                }
                _ => {
                    return Err(ParseError {
                        line,
                        message: format!(
                            "expected `user NAME`, `topic ACCESS FILTER` or `pattern ACCESS FILTER`, found `{l}`"
                        ),
                    });
                }
            }
        }
        Ok(table)
    }

    fn rules_for<'a>(&'a self, username: &'a str) -> impl Iterator<Item = &'a Rule> {
        self.patterns.iter().chain(self.users.iter().filter(move |(u, _)| u == username).flat_map(|(_, r)| r.iter()))
    }

    /// Whether a deny rule for `who` reaches what `hits` asks about. A deny rule whose
    /// placeholder value is unsafe for this subject (`/`, `+`, `#`...) denies everything: a
    /// crafted name must not lift a fence.
    fn denied(&self, who: &Subject<'_>, hits: impl Fn(&str) -> bool) -> bool {
        self.rules_for(who.username).filter(|r| r.access == Access::Deny).any(|r| {
            let (filters, unsafe_value) = expand_checked(&r.filter, who);
            unsafe_value || filters.iter().any(|f| hits(f))
        })
    }

    /// May `who` publish to `topic`? Deny rules first, then grants, matched level by level.
    pub fn can_publish(&self, who: &Subject<'_>, topic: &str) -> bool {
        !self.denied(who, |denied| matches(denied, topic))
            && self.rules_for(who.username).filter(|r| r.access.allows(Access::Write)).any(|r| {
                template_grants(&r.filter, who, topic)
                    .unwrap_or_else(|| expand(&r.filter, who).iter().any(|f| grants(f, topic)))
            })
    }

    /// May `who` subscribe to `filter`? Only if no topic it can match is denied and every topic
    /// it can match is readable.
    pub fn can_subscribe(&self, who: &Subject<'_>, filter: &str) -> bool {
        !self.denied(who, |denied| overlaps(denied, filter))
            && self.rules_for(who.username).filter(|r| r.access.allows(Access::Read)).any(|r| {
                template_covers(&r.filter, who, filter)
                    .unwrap_or_else(|| expand(&r.filter, who).iter().any(|granted| covers(granted, filter)))
            })
    }
}

fn check_template(filter: &str, line: usize) -> Result<String, ParseError> {
    let mut chars = filter.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '%' && !matches!(chars.next(), Some('u' | 'c' | 'e' | 'f' | 'F' | 'g')) {
            return Err(ParseError {
                line,
                message: format!("unknown placeholder in `{filter}` (use %u %c %e %f %F %g)"),
            });
        }
    }
    Ok(filter.to_owned())
}

/// What one level of a rule template stands for.
enum Slot<'a> {
    Literal(&'a str),
    Plus,
    Hash,
    /// `%u`, `%c` or `%e`: one value.
    Value(&'a str),
    Set(Set),
    /// A placeholder with other text in the same level: matched by expanding the rule.
    Mixed,
}

fn slot<'a>(level: &'a str, who: &Subject<'a>) -> Slot<'a> {
    match level {
        "+" => Slot::Plus,
        "#" => Slot::Hash,
        "%u" => Slot::Value(who.username),
        "%c" => Slot::Value(who.client_id),
        "%e" => Slot::Value(who.enterprise),
        "%f" => Slot::Set(Set::Follows),
        "%F" => Slot::Set(Set::Friends),
        "%g" => Slot::Set(Set::Groups),
        l if l.contains('%') => Slot::Mixed,
        l => Slot::Literal(l),
    }
}

/// Whether `#` is only ever the last level: every level before a match is then looked at, as
/// expanding would. Other templates (which no enterprise table holds) are expanded.
fn well_formed(template: &str) -> bool {
    !template.split('/').rev().skip(1).any(|l| l == "#")
}

/// Does the rule `template` grant publishing to `topic`, matched level by level without
/// expanding it? `None` when a level mixes a placeholder with text (expand instead). Same
/// answer as expanding the template and asking [`grants`] of each filter.
fn template_grants(template: &str, who: &Subject<'_>, topic: &str) -> Option<bool> {
    if !well_formed(template) {
        return None;
    }
    if topic.starts_with('$') && template.starts_with(['+', '#']) {
        return Some(false);
    }
    let (mut t, mut p) = (template.split('/'), topic.split('/'));
    loop {
        let ok = match (t.next(), p.next()) {
            (Some("#"), _) | (None, None) => return Some(true),
            (Some(level), Some(got)) => match slot(level, who) {
                Slot::Plus => !got.is_empty(),
                Slot::Literal(l) => l == got,
                Slot::Value(v) => safe_value(v) && v == got,
                Slot::Set(s) => safe_value(got) && who.sets.contains(s, got),
                Slot::Mixed => return None,
                Slot::Hash => true,
            },
            _ => false,
        };
        if !ok {
            // A later mixed level would have needed expanding, but no filter can match now.
            return Some(false);
        }
    }
}

/// Does the rule `template` cover every topic `requested` can match? Like
/// [`template_grants`], for SUBSCRIBE; the same answer as [`covers`] over the expansion.
fn template_covers(template: &str, who: &Subject<'_>, requested: &str) -> Option<bool> {
    if !well_formed(template) {
        return None;
    }
    if requested.starts_with('$') && template.starts_with(['+', '#']) {
        return Some(false);
    }
    let (mut t, mut r) = (template.split('/'), requested.split('/'));
    loop {
        let ok = match (t.next(), r.next()) {
            (Some("#"), _) | (None, None) => return Some(true),
            (Some(_), Some("#")) => false,
            (Some(level), Some(asked)) => match slot(level, who) {
                Slot::Plus => !asked.is_empty(),
                Slot::Literal(l) => l == asked && asked != "+",
                Slot::Value(v) => safe_value(v) && v == asked && asked != "+",
                Slot::Set(s) => asked != "+" && safe_value(asked) && who.sets.contains(s, asked),
                Slot::Mixed => return None,
                Slot::Hash => true,
            },
            _ => false,
        };
        if !ok {
            return Some(false);
        }
    }
}

/// Can a value be put into one topic level without changing the topic's shape?
pub fn safe_value(v: &str) -> bool {
    !v.is_empty() && !v.starts_with('$') && !v.contains(['/', '+', '#', '\0'])
}

/// Expands placeholders: one filter per combination of set members. Unsafe values drop out.
pub fn expand(template: &str, who: &Subject<'_>) -> Vec<String> {
    expand_checked(template, who).0
}

/// Like [`expand`], and whether an unsafe value dropped out.
fn expand_checked(template: &str, who: &Subject<'_>) -> (Vec<String>, bool) {
    let mut unsafe_value = false;
    let mut out = vec![String::new()];
    let mut chars = template.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.iter_mut().for_each(|s| s.push(c));
            continue;
        }
        let values: Vec<String> = match chars.next() {
            Some('u') => vec![who.username.to_owned()],
            Some('c') => vec![who.client_id.to_owned()],
            Some('e') => vec![who.enterprise.to_owned()],
            Some('f') => who.sets.list(Set::Follows),
            Some('F') => who.sets.list(Set::Friends),
            Some('g') => who.sets.list(Set::Groups),
            _ => return (Vec::new(), unsafe_value),
        };
        let before = values.len();
        let values: Vec<String> = values.into_iter().filter(|v| safe_value(v)).collect();
        unsafe_value |= values.len() != before;
        out = out.iter().flat_map(|prefix| values.iter().map(move |v| format!("{prefix}{v}"))).collect();
        if out.is_empty() {
            return (out, unsafe_value);
        }
    }
    (out, unsafe_value)
}

/// Could two filters match a common topic?
pub fn overlaps(a: &str, b: &str) -> bool {
    // A filter that starts with a wildcard matches no `$` topic (§4.7.2).
    let system = |f: &str| f.starts_with('$');
    let wild = |f: &str| f.starts_with(['+', '#']);
    if (system(a) && wild(b)) || (system(b) && wild(a)) {
        return false;
    }
    let (mut x, mut y) = (a.split('/'), b.split('/'));
    loop {
        match (x.next(), y.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (None, None) => return true,
            (Some("+"), Some(_)) | (Some(_), Some("+")) => {}
            (Some(p), Some(q)) if p == q => {}
            _ => return false,
        }
    }
}

/// Does a granted filter name `topic`? MQTT matching [MQTT-4.7.1], except that a `+` never
/// stands for an empty level.
fn grants(granted: &str, topic: &str) -> bool {
    matches(granted, topic) && granted.split('/').zip(topic.split('/')).all(|(g, t)| g != "+" || !t.is_empty())
}

/// Does the granted filter cover every topic the requested filter can match? A `+` granted
/// covers no empty level, as in [`AclTable::can_publish`].
pub fn covers(granted: &str, requested: &str) -> bool {
    // A filter that starts with a wildcard matches no `$` topic (§4.7.2).
    if requested.starts_with('$') && granted.starts_with(['+', '#']) {
        return false;
    }
    let mut g = granted.split('/');
    let mut r = requested.split('/');
    loop {
        match (g.next(), r.next()) {
            (Some("#"), _) => return true,
            (Some(_), Some("#")) => return false,
            (Some("+"), Some(level)) if !level.is_empty() => {}
            (Some(a), Some(b)) if a == b && b != "+" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether every filter of an enterprise's own tables (ACL rules and auto-subscriptions alike)
/// is a valid topic filter once its placeholders are filled in, and stays inside the enterprise:
/// starts with `%e/`. An enterprise admin writes these tables; they must never reach another
/// enterprise's topics or `$SYS`.
pub fn enterprise_scoped(table: &AclTable, auto: &[AutoSubscribe]) -> Result<(), String> {
    let rules = table.patterns.iter().chain(table.users.iter().flat_map(|(_, r)| r.iter())).map(|r| &r.filter);
    for f in rules.chain(auto.iter().map(|a| &a.filter)) {
        if !f.starts_with("%e/") {
            return Err(format!("`{f}` is outside the enterprise: every filter must start with %e/"));
        }
        let sample = ["%u", "%c", "%e", "%f", "%F", "%g"].iter().fold(f.clone(), |s, p| s.replace(p, "x"));
        validate_filter(&sample, &TopicLimits::default()).map_err(|e| format!("`{f}` is not a valid filter: {e}"))?;
    }
    Ok(())
}

/// One auto-subscription: a filter template and its QoS (`%e/im/msg/%u 1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoSubscribe {
    pub filter: String,
    pub qos: QoS,
}

/// Whether an auto-subscribe line is an entry: `FILTER QOS`, two words, a QoS last. A filter
/// may be `#` itself, so `# 1` is an entry (the wildcard at QoS 1), not a comment.
fn is_auto_entry(line: &str) -> bool {
    let words: Vec<&str> = line.split_whitespace().collect();
    matches!(words.as_slice(), [_, "0" | "1" | "2"])
}

/// Parses an auto-subscribe table: `<filter with placeholders> <qos>` per line. A line that
/// starts with `#` is a comment unless it is an entry ([`is_auto_entry`]).
pub fn parse_auto_subscribe(text: &str) -> Result<Vec<AutoSubscribe>, ParseError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = if is_auto_entry(raw) { raw.trim() } else { content(raw) };
        if l.is_empty() {
            continue;
        }
        let (filter, qos) = match l.split_whitespace().collect::<Vec<_>>().as_slice() {
            [filter, qos] => (*filter, *qos),
            _ => return Err(ParseError { line, message: format!("expected `FILTER QOS`, found `{l}`") }),
        };
        let qos = qos
            .parse::<u8>()
            .ok()
            .and_then(QoS::from_u8)
            .ok_or_else(|| ParseError { line, message: format!("QoS must be 0, 1 or 2, not `{qos}`") })?;
        out.push(AutoSubscribe { filter: check_template(filter, line)?, qos });
    }
    Ok(out)
}

/// The design's defaults (§3): own inbox, friends' presence and signatures, enterprise notices.
pub const DEFAULT_AUTO_SUBSCRIBE: &str = "\
%e/im/msg/%u 1
%e/im/pres/%F 0
%e/im/sig/%F 0
%e/im/group/%g 1
%e/notice/# 1
";

/// The design's default rules (§3): a user reads and writes what is theirs, writes to anyone's
/// inbox in the enterprise, reads friends' presence and signatures and enterprise notices.
/// Group topics are their members': `%g` expands to the groups the user belongs to.
pub const DEFAULT_ACL: &str = "\
pattern read %e/im/msg/%u
pattern write %e/im/msg/+
pattern readwrite %e/im/pres/%u
pattern readwrite %e/im/sig/%u
pattern read %e/im/pres/%F
pattern read %e/im/sig/%F
pattern read %e/im/pres/%f
pattern readwrite %e/im/group/%g
pattern read %e/notice/#
";

/// The concrete filters an auto-subscribe table gives `who`.
pub fn auto_subscriptions(table: &[AutoSubscribe], who: &Subject<'_>) -> Vec<(String, QoS)> {
    table.iter().flat_map(|a| expand(&a.filter, who).into_iter().map(move |f| (f, a.qos))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A subject with these relations (leaked: tests only, small).
    fn with_sets<'a>(user: &'a str, friends: &[String], follows: &[String], groups: &[String]) -> Subject<'a> {
        let lists = Lists { follows: follows.to_vec(), friends: friends.to_vec(), groups: groups.to_vec() };
        Subject { username: user, client_id: "c1", enterprise: "acme", sets: Box::leak(Box::new(lists)) }
    }

    fn subject<'a>(user: &'a str, friends: &[String], follows: &[String]) -> Subject<'a> {
        with_sets(user, friends, follows, &[])
    }

    /// One data-driven table: (who, publish or subscribe, topic, expected).
    fn check(table: &AclTable, cases: &[(&str, &str, &str, bool)]) {
        let friends = vec!["bob".to_string()];
        let follows = vec!["bob".to_string(), "carol".to_string()];
        for (user, op, topic, want) in cases {
            let who = subject(user, &friends, &follows);
            let got = match *op {
                "pub" => table.can_publish(&who, topic),
                "sub" => table.can_subscribe(&who, topic),
                other => panic!("bad op {other}"),
            };
            assert_eq!(got, *want, "{user} {op} {topic}");
        }
    }

    #[test]
    fn default_rules() {
        let table = AclTable::parse(DEFAULT_ACL).expect("valid");
        check(
            &table,
            &[
                ("alice", "sub", "acme/im/msg/alice", true),
                ("alice", "sub", "acme/im/msg/bob", false),
                ("alice", "sub", "acme/im/msg/+", false),
                ("alice", "sub", "acme/im/msg/#", false),
                ("alice", "pub", "acme/im/msg/bob", true),
                ("alice", "pub", "acme/im/msg/bob/x", false),
                ("alice", "pub", "other/im/msg/bob", false),
                ("alice", "sub", "acme/im/pres/bob", true),
                ("alice", "sub", "acme/im/sig/bob", true),
                ("alice", "sub", "acme/im/sig/carol", false),
                ("alice", "sub", "acme/im/pres/carol", true),
                ("alice", "pub", "acme/im/pres/alice", true),
                ("alice", "pub", "acme/im/pres/bob", false),
                ("alice", "sub", "acme/notice/#", true),
                ("alice", "sub", "acme/notice/hr/today", true),
                ("alice", "sub", "acme/#", false),
                ("alice", "sub", "#", false),
                ("alice", "pub", "acme/notice/x", false),
                ("alice", "sub", "acme/im/group/g1", false),
                ("alice", "pub", "acme/im/group/g1", false),
            ],
        );
    }

    #[test]
    fn per_user_rules_and_deny_by_default() {
        let table = AclTable::parse("user admin\ntopic readwrite #\n\npattern read public/%u\n").expect("valid");
        check(
            &table,
            &[
                ("admin", "sub", "anything/at/all", true),
                ("admin", "pub", "x", true),
                ("alice", "sub", "public/alice", true),
                ("alice", "pub", "public/alice", false),
                ("alice", "sub", "anything", false),
            ],
        );
    }

    #[test]
    fn crafted_names_never_widen_a_rule() {
        let table = AclTable::parse("pattern readwrite acme/im/msg/%u\npattern read acme/im/pres/%F\n").expect("valid");
        for evil in ["#", "+", "a/b", "$SYS", "", "x\0y"] {
            let friends = vec![evil.to_string()];
            let who = subject(evil, &friends, &[]);
            for topic in ["acme/im/msg/#", "acme/im/msg/+", "acme/im/msg/a/b", "acme/im/msg/anyone"] {
                assert!(!table.can_subscribe(&who, topic), "user {evil:?} subscribing {topic}");
                assert!(!table.can_publish(&who, topic), "user {evil:?} publishing {topic}");
            }
            assert!(!table.can_subscribe(&who, "acme/im/pres/#"), "friend {evil:?}");
        }
    }

    proptest::proptest! {
        /// Whatever the name, `%u` grants exactly the one topic spelled with it, or nothing.
        #[test]
        fn a_name_grants_only_its_own_topic(name in "[a-z/+#$]{0,4}", topic in "acme/im/msg/[a-z/+#$]{0,4}") {
            let table = AclTable::parse("pattern readwrite acme/im/msg/%u").expect("valid");
            let who = subject(&name, &[], &[]);
            let own = format!("acme/im/msg/{name}");
            if table.can_publish(&who, &topic) {
                proptest::prop_assert_eq!(&topic, &own);
            }
            if table.can_subscribe(&who, &topic) {
                proptest::prop_assert_eq!(&topic, &own);
            }
        }
    }

    #[test]
    fn deny_rules_fence_topics_inside_a_grant() {
        let table = AclTable::parse(
            "pattern readwrite %e/team/#\npattern deny %e/team/secret/#\nuser alice\ntopic deny %e/team/alice-off\n",
        )
        .expect("valid");
        check(
            &table,
            &[
                ("bob", "pub", "acme/team/general", true),
                ("bob", "pub", "acme/team/secret/plans", false),
                ("bob", "pub", "acme/team/secret", false),
                ("bob", "sub", "acme/team/general", true),
                ("bob", "sub", "acme/team/secret/plans", false),
                ("bob", "sub", "acme/team/#", false),
                ("bob", "sub", "acme/team/+/plans", false),
                ("bob", "sub", "acme/team/+", false),
                ("bob", "sub", "acme/team/general/+", true),
                ("alice", "pub", "acme/team/alice-off", false),
                ("alice", "sub", "acme/team/+", false),
                ("bob", "pub", "acme/team/alice-off", true),
            ],
        );
        // A name that cannot be put into a deny rule safely is denied everything the rule guards.
        let fenced = AclTable::parse("pattern readwrite public/#\npattern deny public/%u/#\n").expect("valid");
        let evil = subject("+", &[], &[]);
        assert!(!fenced.can_publish(&evil, "public/x"));
        assert!(fenced.can_publish(&subject("bob", &[], &[]), "public/x"));
        assert!(!fenced.can_publish(&subject("bob", &[], &[]), "public/bob/x"));
        assert!(AclTable::parse("pattern denyall x").is_err());
    }

    #[test]
    fn overlapping_filters() {
        for (a, b, want) in [
            ("a/#", "a/b", true),
            ("a/b", "a/b", true),
            ("a/+", "a/b/c", false),
            ("a/+/c", "a/b/+", true),
            ("a/b", "a/c", false),
            ("#", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("a", "a/#", true),
            ("a/b", "a", false),
        ] {
            assert_eq!(overlaps(a, b), want, "{a} ~ {b}");
            assert_eq!(overlaps(b, a), want, "{b} ~ {a}");
        }
    }

    #[test]
    fn group_topics_belong_to_their_members() {
        let table = AclTable::parse(DEFAULT_ACL).expect("valid");
        let groups = vec!["ops".to_string(), "dev".to_string()];
        let alice = with_sets("alice", &[], &[], &groups);
        for (op, topic, want) in [
            ("sub", "acme/im/group/ops", true),
            ("pub", "acme/im/group/dev", true),
            ("sub", "acme/im/group/sales", false),
            ("pub", "acme/im/group/sales", false),
            ("sub", "acme/im/group/+", false),
            ("sub", "acme/im/group/#", false),
            ("pub", "other/im/group/ops", false),
        ] {
            let got = if op == "pub" { table.can_publish(&alice, topic) } else { table.can_subscribe(&alice, topic) };
            assert_eq!(got, want, "{op} {topic}");
        }
        let auto = parse_auto_subscribe(DEFAULT_AUTO_SUBSCRIBE).expect("valid");
        let subs: Vec<String> = auto_subscriptions(&auto, &alice).into_iter().map(|(f, _)| f).collect();
        assert!(subs.contains(&"acme/im/group/ops".to_string()) && subs.contains(&"acme/im/group/dev".to_string()));
        // A crafted group name never widens the rule.
        let evil = vec!["+".to_string(), "#".to_string(), "a/b".to_string(), String::new()];
        let mallory = with_sets("mallory", &[], &[], &evil);
        for topic in ["acme/im/group/+", "acme/im/group/#", "acme/im/group/a/b", "acme/im/group/x"] {
            assert!(!table.can_subscribe(&mallory, topic), "{topic}");
            assert!(!table.can_publish(&mallory, topic), "{topic}");
        }
    }

    #[test]
    fn a_rule_wildcard_never_stands_for_an_empty_level() {
        let table = AclTable::parse(DEFAULT_ACL).expect("valid");
        check(
            &table,
            &[
                ("alice", "pub", "acme/im/msg/", false),
                ("alice", "pub", "acme/im/msg/bob", true),
                ("alice", "pub", "acme/im/group/", false),
                ("alice", "sub", "acme/im/pres/", false),
            ],
        );
        assert!(!covers("a/+", "a/"));
        assert!(!covers("a/+/c", "a//c"));
        assert!(covers("a/#", "a/"), "`#` still covers everything below");
    }

    #[test]
    fn every_filter_of_an_enterprise_table_follows_one_rule() {
        let refused = |acl: &str, auto: &str| {
            let table = AclTable::parse(acl).expect("parses");
            let auto = parse_auto_subscribe(auto).expect("parses");
            enterprise_scoped(&table, &auto).expect_err("refused")
        };
        // `# 1` is the wildcard at QoS 1, not a comment: refused like any filter outside %e/.
        assert!(refused("", "# 1").contains("`#`"));
        assert!(refused("", "+/im/msg/+ 1").contains("outside"));
        assert!(refused("pattern read #", "").contains("outside"));
        assert!(refused("", "%e/#/x 1").contains("not a valid filter"));
        assert!(refused("pattern read %e/a#", "").contains("not a valid filter"));
        let fine = AclTable::parse("pattern read %e/team/+\n").expect("parses");
        let auto = parse_auto_subscribe("# a comment\n%e/team/%u 1\n#\n").expect("parses");
        assert_eq!(auto.len(), 1, "comments are still comments");
        assert!(enterprise_scoped(&fine, &auto).is_ok());
    }

    #[test]
    fn coverage_of_wildcard_requests() {
        for (granted, requested, want) in [
            ("a/#", "a/b/c", true),
            ("a/#", "a/+/c", true),
            ("a/#", "a/#", true),
            ("a/#", "a", true),
            ("a/+", "a/b", true),
            ("a/+", "a/+", true),
            ("a/+", "a/#", false),
            ("a/b", "a/+", false),
            ("+/b", "a/b", true),
            ("#", "$SYS/x", false),
            ("$SYS/#", "$SYS/broker/x", true),
            ("a/b", "a/b/c", false),
        ] {
            assert_eq!(covers(granted, requested), want, "{granted} covers {requested}");
        }
    }

    #[test]
    fn parse_errors_name_the_line() {
        let err = AclTable::parse("pattern read a\npattern maybe b\n").expect_err("bad access");
        assert_eq!(err.line, 2);
        assert!(AclTable::parse("topic read a\n").expect_err("no user").message.contains("before any `user`"));
        assert!(AclTable::parse("pattern read a/%x\n").expect_err("placeholder").message.contains("placeholder"));
        let err = parse_auto_subscribe("a/b 1\na/c 3\n").expect_err("bad qos");
        assert_eq!((err.line, err.message.contains("QoS")), (2, true));
    }

    #[test]
    fn auto_subscribe_expands_per_friend() {
        let table = parse_auto_subscribe(DEFAULT_AUTO_SUBSCRIBE).expect("valid");
        assert_eq!(enterprise_scoped(&AclTable::parse(DEFAULT_ACL).expect("valid"), &table), Ok(()));
        let escape = AclTable::parse("pattern readwrite #").expect("valid");
        assert!(enterprise_scoped(&escape, &[]).is_err());
        let other = parse_auto_subscribe("globex/im/msg/ceo 1").expect("valid");
        assert!(enterprise_scoped(&AclTable::default(), &other).is_err());
        let friends = vec!["bob".to_string(), "b/ad".to_string(), "dave".to_string()];
        let who = subject("alice", &friends, &[]);
        let subs = auto_subscriptions(&table, &who);
        assert_eq!(
            subs,
            vec![
                ("acme/im/msg/alice".to_string(), QoS::AtLeastOnce),
                ("acme/im/pres/bob".to_string(), QoS::AtMostOnce),
                ("acme/im/pres/dave".to_string(), QoS::AtMostOnce),
                ("acme/im/sig/bob".to_string(), QoS::AtMostOnce),
                ("acme/im/sig/dave".to_string(), QoS::AtMostOnce),
                ("acme/notice/#".to_string(), QoS::AtLeastOnce),
            ]
        );
    }
}

/// The level-by-level matcher answers exactly as expanding the rules would.
#[cfg(test)]
mod matcher {
    use super::*;

    /// The reference: expand the template into filters, as before the matcher existed.
    fn by_expansion(template: &str, who: &Subject<'_>, topic: &str, subscribe: bool) -> bool {
        let filters = expand(template, who);
        if subscribe { filters.iter().any(|f| covers(f, topic)) } else { filters.iter().any(|f| grants(f, topic)) }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        #[test]
        fn the_matcher_agrees_with_expansion(
            template in proptest::collection::vec(
                proptest::sample::select(vec!["acme", "im", "x", "", "+", "#", "%u", "%c", "%e", "%f", "%F", "%g", "a%ub"]),
                1..5,
            ),
            topic in proptest::collection::vec(
                proptest::sample::select(vec!["acme", "im", "x", "", "+", "#", "bob", "alice", "ops", "$SYS", "c1", "a/b"]),
                1..5,
            ),
            friends in proptest::collection::vec(proptest::sample::select(vec!["bob", "carol", "+", ""]), 0..3),
            groups in proptest::collection::vec(proptest::sample::select(vec!["ops", "x", "#"]), 0..2),
            user in proptest::sample::select(vec!["alice", "bob", "+", ""]),
        ) {
            let template = template.join("/");
            let topic = topic.join("/");
            let lists = Lists {
                follows: friends.iter().map(|s| s.to_string()).collect(),
                friends: friends.iter().map(|s| s.to_string()).collect(),
                groups: groups.iter().map(|s| s.to_string()).collect(),
            };
            let who = Subject { username: user, client_id: "c1", enterprise: "acme", sets: &lists };
            if let Some(got) = template_grants(&template, &who, &topic) {
                proptest::prop_assert_eq!(got, by_expansion(&template, &who, &topic, false), "publish {} to {}", template, topic);
            }
            if let Some(got) = template_covers(&template, &who, &topic) {
                proptest::prop_assert_eq!(got, by_expansion(&template, &who, &topic, true), "subscribe {} to {}", template, topic);
            }
        }
    }
}
