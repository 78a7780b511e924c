//! Redis keys: one place that names them, so services agree. Enterprise ids and usernames are
//! `[A-Za-z0-9._-]` (the accounts tier checks), so `:` never occurs inside a part.
//!
//! Redis Cluster: every script and transaction of `redis_state` touches keys of one hash slot
//! only (the `{...}` part of a key, its hash tag, decides the slot), and the contracts run on a
//! Redis in cluster mode to hold them to it. Keys changed together share a tag; keys of
//! different users, sessions or nodes do not, so a cluster spreads them.

/// The set of usernames `user` follows.
pub fn follows(enterprise: &str, user: &str) -> String {
    format!("hermes:rel:{enterprise}:follows:{user}")
}

/// The set of usernames that follow `user`.
pub fn followers(enterprise: &str, user: &str) -> String {
    format!("hermes:rel:{enterprise}:followers:{user}")
}

/// The set of groups `user` is a member of.
pub fn groups(enterprise: &str, user: &str) -> String {
    format!("hermes:rel:{enterprise}:groups:{user}")
}

/// Hash: enterprise id → its own ACL tables (a protobuf `AclChanged`).
pub const TABLES: &str = "hermes:{tables}";
/// Hash: enterprise id → the version of its tables in [`TABLES`]. Same hash tag: one script
/// changes both.
pub const TABLE_VERSIONS: &str = "hermes:{tables}:version";
/// Hash: `<enterprise id>\t<user id>` → tokens issued before this instant (Unix ms) are refused.
pub const REVOCATIONS: &str = "hermes:revocations";

/// String: a value the first accounts node to look set (a new one whenever it is gone); a node
/// that finds another than it saw before knows Redis lost what the directories were filled
/// with.
pub const DIRECTORIES_MARK: &str = "hermes:directories:mark";

/// String: the same for the session journal, which edges look at.
pub const JOURNAL_MARK: &str = "hermes:journal:mark";

/// String `version|node`: the edge holding session `session` (a `broker::store::session_key`)
/// and how many times the session was claimed.
/// The session's part is a hash tag, so every key of one session lands in one Redis Cluster
/// slot.
pub fn session_owner(session: &str) -> String {
    format!("hermes:session:{{{session}}}:owner")
}

/// Set: the sessions node `node` (an edge incarnation) owns in [`session_owner`], so a live
/// edge finds them when `node` dies. The node is the hash tag.
pub fn node_sessions(node: &str) -> String {
    format!("hermes:owners:node:{{{node}}}")
}

/// Hash: the wills of node `node`'s connections (`broker::journal::Write::Will`, written by
/// `redis_state::RedisJournal`), field = the connection's link id as 8 bytes big-endian, value
/// = the will as the edge encodes it. The node is the hash tag, as in [`node_sessions`].
pub fn node_wills(node: &str) -> String {
    format!("hermes:wills:node:{{{node}}}")
}

/// Set: the runs (incarnations, as [`node_wills`] names them) of the node named `id` that
/// write to this Redis alone, without a bus (`broker::journal::SessionJournal::runs`): a
/// restarted one sends the wills its earlier runs left. The id is the hash tag.
pub fn node_runs(id: &str) -> String {
    format!("hermes:wills:runs:{{{id}}}")
}

/// Sorted set: the nodes that own sessions, node → until when it is alive, or leased to the
/// live node taking its sessions (Unix ms, Redis's clock).
pub const OWNER_NODES: &str = "hermes:owners:nodes";

/// Hash: the journal of session `session` (`broker::journal`, written by
/// `redis_state::RedisJournal`). Field `r` is the session's record; each kept message is under
/// its entry as 8 bytes big-endian (so no message field is ever `r`). Same hash tag as
/// [`session_owner`]: a session's keys share one Redis Cluster slot.
pub fn session_journal(session: &str) -> String {
    format!("hermes:session:{{{session}}}:journal")
}

/// Redis Stream: the kept messages of durable stream `stream` (`broker::streams`, written by
/// `redis_state::RedisStreams`), each under the id `<seq>-0` with fields `t` (when it was
/// published, Unix ms) and `b` (its body). The stream's name is the hash tag, so its keys share
/// one Redis Cluster slot (a name holding `}` is cut there, the same way for both keys).
pub fn stream_log(stream: &str) -> String {
    format!("hermes:stream:{{{stream}}}:log")
}

/// Hash: durable stream `stream`'s `epoch` and `seq` (the last given out). Same hash tag as
/// [`stream_log`].
pub fn stream_meta(stream: &str) -> String {
    format!("hermes:stream:{{{stream}}}:meta")
}

/// Redis Stream: the dead letters (`broker::streams::DeadLetter`), each under the id `<id>-0`
/// with fields `reason`, `session`, `topic`, `at` (Unix ms) and `body`.
pub const DEAD_LETTERS: &str = "hermes:{dead-letters}";
/// String: the last dead letter's id. Same hash tag as [`DEAD_LETTERS`].
pub const DEAD_LETTERS_SEQ: &str = "hermes:{dead-letters}:seq";

/// The retained messages of every topic (`redis_state::RedisJournal`): one hash, field = the
/// topic, value = the message as the edge encodes it (`RoutedMessage`).
pub const RETAINED: &str = "hermes:retained";

// Login limits (`redis_state::RedisLoginGuard`). Every login key has the hash tag `{login}`: one
// script reads and changes an address's keys and an account's at once, so on Redis Cluster they
// must share a slot (login traffic is small). The address or account is the key's last part, so
// an IPv6 address's `:` (or any byte of an account) cannot make two keys meet.

/// String: attempts from address `ip` in its current window; the key's TTL is what is left of
/// the window.
pub fn login_address(ip: std::net::IpAddr) -> String {
    format!("hermes:{{login}}:ip:{ip}")
}

/// String: attempts on `account` (`enterprise/username`) in its current window; the key's TTL is
/// what is left of the window.
pub fn login_account(account: &str) -> String {
    format!("hermes:{{login}}:account:{account}")
}

/// String: consecutive failed passwords of `account`, forgotten a while after the last one.
pub fn login_failures(account: &str) -> String {
    format!("hermes:{{login}}:failures:{account}")
}

/// String: present while `account` is locked; its TTL is what is left of the lockout.
pub fn login_lockout(account: &str) -> String {
    format!("hermes:{{login}}:locked:{account}")
}

// Presence (`broker::presence::PresenceDirectory`, `redis_state::RedisPresence`): each user's
// device counts by node, the users each node has devices of, and the registry of live nodes.

/// Hash: the presence of `user` (a user's presence topic): field `n:<node>` = the node's device
/// count (never 0: a node with none has no field), field `announced` = `online` while the world
/// was last told "online" (absent: offline). The user is the hash tag, so the hash has a slot
/// of its own on Redis Cluster. Deleted while the user has no device and is not announced
/// online.
pub fn presence_user(user: &str) -> String {
    format!("hermes:presence:{{{user}}}")
}

/// Set: the users node `node` has devices of (for reaping it when it dies). The node is the
/// hash tag.
pub fn presence_node(node: &str) -> String {
    format!("hermes:presence:node:{{{node}}}")
}

/// Sorted set: the node registry, node → until when it is alive (Unix ms, Redis's clock).
pub const PRESENCE_NODES: &str = "hermes:{presence-nodes}";
/// Hash: node → its TTL in ms (from its last heartbeat); absent for a node that never heartbeat.
/// Same hash tag as [`PRESENCE_NODES`].
pub const PRESENCE_NODE_TTLS: &str = "hermes:{presence-nodes}:ttl";
/// Hash: dead node → `until|node`, the live node reaping it and until when (Unix ms). Same hash
/// tag as [`PRESENCE_NODES`].
pub const PRESENCE_REAPERS: &str = "hermes:{presence-nodes}:reapers";
