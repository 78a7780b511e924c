//! Topic names and filters: validation per MQTT 3.1.1 §4.7 / 5.0 §4.7, matching, shared subscriptions.
//!
//! Strings arrive already decoded as UTF-8 by the codec; what is checked here is everything
//! the codec does not know: wildcard placement, U+0000, lengths and level counts from config.

use std::fmt;

/// Limits a topic name or filter must respect; the edge fills them from its config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicLimits {
    /// Maximum length in bytes (the protocol maximum is 65 535).
    pub max_len: usize,
    /// Maximum number of `/`-separated levels.
    pub max_levels: usize,
}

impl Default for TopicLimits {
    fn default() -> Self {
        TopicLimits { max_len: 65_535, max_levels: 128 }
    }
}

/// Why a topic name or filter was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicError {
    Empty,
    TooLong,
    TooManyLevels,
    NullCharacter,
    /// `+` or `#` in a PUBLISH topic name.
    WildcardInName,
    /// `#` not alone in the last level, or `+` not alone in its level.
    MisplacedWildcard,
    /// `$share/` without a valid group name or filter.
    InvalidShare,
}

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TopicError::Empty => "topic is empty",
            TopicError::TooLong => "topic is longer than the configured limit",
            TopicError::TooManyLevels => "topic has more levels than the configured limit",
            TopicError::NullCharacter => "topic contains U+0000",
            TopicError::WildcardInName => "topic name contains a wildcard",
            TopicError::MisplacedWildcard => "wildcard must occupy a whole level ('#' only last)",
            TopicError::InvalidShare => "shared subscription must be $share/{group}/{filter}",
        })
    }
}

impl std::error::Error for TopicError {}

fn check_common(s: &str, limits: &TopicLimits) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > limits.max_len {
        return Err(TopicError::TooLong);
    }
    if s.contains('\0') {
        return Err(TopicError::NullCharacter);
    }
    if s.split('/').count() > limits.max_levels {
        return Err(TopicError::TooManyLevels);
    }
    Ok(())
}

/// Validates a topic name as used in PUBLISH and in will messages.
pub fn validate_name(name: &str, limits: &TopicLimits) -> Result<(), TopicError> {
    check_common(name, limits)?;
    if name.contains(['+', '#']) {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// Validates a plain (non-shared) topic filter.
pub fn validate_filter(filter: &str, limits: &TopicLimits) -> Result<(), TopicError> {
    check_common(filter, limits)?;
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        match level {
            "#" if last => {}
            "+" => {}
            _ if level.contains(['+', '#']) => return Err(TopicError::MisplacedWildcard),
            _ => {}
        }
        if level == "#" && !last {
            return Err(TopicError::MisplacedWildcard);
        }
    }
    Ok(())
}

/// A SUBSCRIBE filter after parsing: either plain, or shared by a group of sessions.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ParsedFilter<'a> {
    /// `Some(group)` for `$share/{group}/{filter}`.
    pub share_group: Option<&'a str>,
    /// The filter that topics are matched against.
    pub filter: &'a str,
}

/// What a shared subscription's filter starts with: `$share/{group}/{filter}`.
pub const SHARE_PREFIX: &str = "$share/";

/// Whether a SUBSCRIBE filter as the client sent it is a shared subscription's.
pub fn is_shared(raw: &str) -> bool {
    raw.starts_with(SHARE_PREFIX)
}

/// The filter topics are matched against for what a client sent in SUBSCRIBE: after
/// `$share/{group}/` for a shared subscription; `raw` itself if it does not parse.
pub fn match_filter<'a>(raw: &'a str, limits: &TopicLimits) -> &'a str {
    parse_subscription(raw, limits).map_or(raw, |p| p.filter)
}

/// Parses and validates what a client sent in SUBSCRIBE, shared subscriptions included.
pub fn parse_subscription<'a>(raw: &'a str, limits: &TopicLimits) -> Result<ParsedFilter<'a>, TopicError> {
    if let Some(rest) = raw.strip_prefix(SHARE_PREFIX) {
        let (group, filter) = rest.split_once('/').ok_or(TopicError::InvalidShare)?;
        if group.is_empty() || group.contains(['+', '#', '\0']) || filter.is_empty() {
            return Err(TopicError::InvalidShare);
        }
        validate_filter(filter, limits)?;
        return Ok(ParsedFilter { share_group: Some(group), filter });
    }
    validate_filter(raw, limits)?;
    Ok(ParsedFilter { share_group: None, filter: raw })
}

/// Does `filter` match `topic`? The straightforward reference matcher: the trie must agree with it.
///
/// Topics starting with `$` are not matched by filters starting with a wildcard (§4.7.2).
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_name(name: &str, expected: Result<(), TopicError>) {
        assert_eq!(validate_name(name, &TopicLimits::default()), expected, "{name:?}");
    }

    fn check_filter(filter: &str, expected: Result<(), TopicError>) {
        assert_eq!(validate_filter(filter, &TopicLimits::default()), expected, "{filter:?}");
    }

    #[test]
    fn names() {
        check_name("a/b", Ok(()));
        check_name("/", Ok(()));
        check_name("$SYS/x", Ok(()));
        check_name("", Err(TopicError::Empty));
        check_name("a/+", Err(TopicError::WildcardInName));
        check_name("a/#", Err(TopicError::WildcardInName));
        check_name("a\0b", Err(TopicError::NullCharacter));
        let limits = TopicLimits { max_len: 6, max_levels: 2 };
        assert_eq!(validate_name("abcdefg", &limits), Err(TopicError::TooLong));
        assert_eq!(validate_name("a/b/c", &limits), Err(TopicError::TooManyLevels));
    }

    #[test]
    fn filters() {
        for ok in ["#", "+", "a/#", "a/+/b", "+/+", "/+", "a//b", "$SYS/#"] {
            check_filter(ok, Ok(()));
        }
        for bad in ["a#", "a/#/b", "a/b+", "#/a", "++", "a/+b/c"] {
            check_filter(bad, Err(TopicError::MisplacedWildcard));
        }
        check_filter("", Err(TopicError::Empty));
    }

    #[test]
    fn shared_subscriptions() {
        let l = TopicLimits::default();
        let p = parse_subscription("$share/g1/a/+", &l).expect("valid share");
        assert_eq!(p.share_group, Some("g1"));
        assert_eq!(p.filter, "a/+");
        for bad in ["$share/g1", "$share//a", "$share/g+/a", "$share/g/"] {
            assert_eq!(parse_subscription(bad, &l), Err(TopicError::InvalidShare), "{bad}");
        }
        assert_eq!(parse_subscription("$share/g/a#", &l), Err(TopicError::MisplacedWildcard));
        assert_eq!(parse_subscription("a/b", &l).expect("plain").share_group, None);
    }

    #[test]
    fn matching() {
        let cases = [
            ("a/b", "a/b", true),
            ("a/+", "a/b", true),
            ("a/+", "a/b/c", false),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("#", "a/b", true),
            ("+/+", "/a", true),
            ("+", "", true),
            ("a/b", "a", false),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("a/+/c", "a//c", true),
        ];
        for (f, t, want) in cases {
            assert_eq!(matches(f, t), want, "{f} vs {t}");
        }
    }
}
