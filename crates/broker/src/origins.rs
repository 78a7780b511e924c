//! Where a durable session stands with each node that routed messages to it, so that a node
//! resuming the session after its node died can replay, from what the bus kept, what the
//! session missed, and nothing it already had.
//!
//! Every node numbers the messages it sends to the others per incarnation, in the order it
//! routes them (those routed at once on different threads may reach the bus in either order).
//! What a session got from a node is summed up by the highest number: a [`Cursor`] named
//! [`cursor_name`] beside the session's stream cursors (journaled and handed over the same
//! way), with the incarnation as its epoch and nothing above its low mark. (A node's messages on
//! different subjects may reach a session slightly out of order, so a message below the
//! cursor that had not arrived when the journal was last written would be taken as had: the
//! replay misses it only if its edge died in that instant.)
//!
//! While a resumed session catches up ([`CatchUp`]), messages reach it on two paths: live from
//! the bus, and replayed from what the bus kept. Each is taken once, by whichever path brings it
//! first; a replayed one only if the journal did not have it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::streams::{Cursor, Stamp};

/// What the cursors of sending nodes are named, before the node id. No stream is named so:
/// a `$` topic is never a stream.
pub const PREFIX: &str = "$node/";

/// The most sending nodes a session remembers: past it, the oldest incarnation is forgotten
/// (a replay may then give the session again what that node sent it).
pub const MAX_NODES: usize = 32;

/// The cursor name of messages from node `id`.
pub fn cursor_name(id: &str) -> String {
    format!("{PREFIX}{id}")
}

/// The node whose messages the cursor `name` follows ([`cursor_name`]); `None` for a stream's.
pub fn node_of(name: &str) -> Option<&str> {
    name.strip_prefix(PREFIX)
}

/// Whether a cursor is a sending node's rather than a stream's.
pub fn is_node_cursor(name: &str) -> bool {
    name.starts_with(PREFIX)
}

/// Where a message came from: its node's cursor name ([`cursor_name`]) and its number there
/// (`epoch` the node's incarnation, `seq` its number in that incarnation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub cursor: Arc<str>,
    pub at: Stamp,
}

/// Whether the session already got `at` from the node `cursor` stands for: an older
/// incarnation, or a number not above the cursor's in the same one.
pub fn covers(cursor: &Cursor, at: Stamp) -> bool {
    at.epoch < cursor.epoch || (at.epoch == cursor.epoch && at.seq <= cursor.low)
}

/// Moves `cursor` to `at` if that is newer; returns whether it moved.
pub fn reach(cursor: &mut Cursor, at: Stamp) -> bool {
    if covers(cursor, at) {
        return false;
    }
    *cursor = Cursor { epoch: at.epoch, low: at.seq, above: Vec::new() };
    true
}

/// A [`CatchUp`] as it moves between nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatchUpParts {
    /// Where the session stood with each node when the catch-up began, by node cursor name.
    pub began: Vec<(Arc<str>, Cursor)>,
    /// What it took since, by node cursor name and number.
    pub taken: Vec<(Arc<str>, Stamp)>,
    /// The node whose own messages the replay skips; empty for none.
    pub skip: Arc<str>,
    /// What the session skipped while behind on the node it came from and was not replayed
    /// there yet, by node cursor name and number ([`CatchUp::owe`]).
    pub owed: Vec<(Arc<str>, Stamp)>,
    /// Where its replay may start (Unix ms; 0: where the session's subscriptions began).
    pub since_ms: u64,
}

/// A resumed session catching up on what was routed to its node while that node was dead. It
/// moves with the session (a client may come back elsewhere before the replay is done): the
/// next node replays again from where the catch-up began, minus what the session took since.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CatchUp {
    /// Where the journal said the session stood with each node.
    journaled: HashMap<Arc<str>, Cursor>,
    /// The messages taken since, live or replayed.
    taken: HashSet<(Arc<str>, Stamp)>,
    /// The node whose own messages the replay skips (the session had them without the bus),
    /// as the edge names it; empty for none.
    skip: Arc<str>,
    /// The replays it waits for (after a dead node, after an outage): it ends with the last.
    holds: u32,
    /// Which catch-up it is, in this process: a replay that ends releases only its own (the
    /// session may have moved away and back, catching up anew, while the replay ran).
    id: u64,
    /// Messages the session skipped while behind on another node: the replay takes them even
    /// where the journal's cursor says the session had them ([`CatchUp::owe`]).
    owed: HashSet<(Arc<str>, Stamp)>,
    /// Where its replay may start ([`CatchUp::replaying_from`]).
    since_ms: u64,
    /// Its replays on this node have read everything the session skipped or missed here
    /// ([`CatchUp::read_here`]); not part of what moves.
    read_here: bool,
}

/// The id of the next catch-up in this process.
fn next_catch_up_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl CatchUp {
    /// Starts from the session's cursors as the journal had them; the replay skips what node
    /// `skip` published.
    pub fn new<'a>(cursors: impl IntoIterator<Item = (&'a Arc<str>, &'a Cursor)>, skip: Arc<str>) -> Self {
        let journaled = cursors
            .into_iter()
            .filter(|(name, _)| is_node_cursor(name))
            .map(|(name, c)| (name.clone(), c.clone()))
            .collect();
        let (taken, owed) = (HashSet::new(), HashSet::new());
        CatchUp { journaled, taken, skip, holds: 1, id: next_catch_up_id(), owed, since_ms: 0, read_here: false }
    }

    /// A catch-up as [`CatchUp::parts`] described it (on another node).
    pub fn from_parts(parts: CatchUpParts) -> Self {
        let CatchUpParts { began, taken, skip, owed, since_ms } = parts;
        // One replay on the node it moved to goes on with it.
        let (journaled, taken, owed) =
            (began.into_iter().collect(), taken.into_iter().collect(), owed.into_iter().collect());
        CatchUp { journaled, taken, skip, holds: 1, id: next_catch_up_id(), owed, since_ms, read_here: false }
    }

    /// What another node needs to go on with it.
    pub fn parts(&self) -> CatchUpParts {
        let mut began: Vec<(Arc<str>, Cursor)> = self.journaled.iter().map(|(n, c)| (n.clone(), c.clone())).collect();
        began.sort_by(|a, b| a.0.cmp(&b.0));
        let (taken, owed) = (sorted(&self.taken), sorted(&self.owed));
        CatchUpParts { began, taken, skip: self.skip.clone(), owed, since_ms: self.since_ms }
    }

    /// Its replay needs nothing the bus kept before `since_ms` (Unix ms): a session that moved
    /// missed only what was routed while it moved, not all since its subscriptions began.
    pub fn replaying_from(mut self, since_ms: u64) -> Self {
        self.since_ms = since_ms;
        self
    }

    /// Where its replay may start (Unix ms; 0: where the session's subscriptions began).
    pub fn since_ms(&self) -> u64 {
        self.since_ms
    }

    /// The session skipped `skipped` while behind (and its replay did not read them yet): a
    /// replay takes each, unless it came already, even if the session had a later message from
    /// its node (what a node routes on different subjects may come out of order). Part of what
    /// moves with the session.
    pub fn owe(&mut self, skipped: impl IntoIterator<Item = (Arc<str>, Stamp)>) {
        self.owed.extend(skipped);
    }

    /// The node whose own messages the replay skips; empty for none.
    pub fn skip(&self) -> &Arc<str> {
        &self.skip
    }

    /// Which catch-up it is (see [`CatchUp::release`]).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// One more replay to wait for.
    pub fn hold(&mut self) {
        self.holds = self.holds.saturating_add(1);
    }

    /// One replay is done; returns whether it was the last.
    pub fn release(&mut self) -> bool {
        self.holds = self.holds.saturating_sub(1);
        self.holds == 0
    }

    /// Only the last replay it waits for is left, and that one has read every message the
    /// session skipped or missed on this node: of this node's own, it had each it was routed.
    pub fn read_here(&mut self) {
        self.read_here = self.holds == 1;
    }

    /// The session left `node` (as the skip names it, its cursor named `cursor`), which had
    /// numbered its messages up to `at`: the replay skips its messages no longer (the session
    /// got them there without the bus, but not those routed after it left). Those up to `at`
    /// it had if its replays there had read all ([`CatchUp::read_here`]); otherwise a replay
    /// there may still have owed it some, and the next node gives every one it did not take
    /// since the catch-up began (some again).
    pub fn left(&mut self, node: &str, cursor: Arc<str>, at: Stamp) {
        if *self.skip == *node {
            self.skip = "".into();
        }
        if std::mem::take(&mut self.read_here) {
            reach(self.journaled.entry(cursor).or_default(), at);
        }
    }

    /// A message from `origin` came live: whether it is new (not replayed already).
    pub fn live(&mut self, origin: &Origin) -> bool {
        self.taken.insert((origin.cursor.clone(), origin.at))
    }

    /// Whether a message from `origin` was taken already (live or replayed).
    pub fn took(&self, origin: &Origin) -> bool {
        self.taken.contains(&(origin.cursor.clone(), origin.at))
    }

    /// A message from `origin` was replayed: whether the session missed it (the journal did
    /// not have it, and it did not come live already).
    pub fn wants(&mut self, origin: &Origin) -> bool {
        let message = (origin.cursor.clone(), origin.at);
        let owed = self.owed.remove(&message);
        let journaled = self.journaled.get(&origin.cursor).is_some_and(|c| covers(c, origin.at));
        (owed || !journaled) && self.taken.insert(message)
    }
}

/// Messages by node cursor name and number, in that order.
fn sorted(messages: &HashSet<(Arc<str>, Stamp)>) -> Vec<(Arc<str>, Stamp)> {
    let mut sorted: Vec<(Arc<str>, Stamp)> = messages.iter().cloned().collect();
    sorted.sort_by(|a, b| (&a.0, a.1.epoch, a.1.seq).cmp(&(&b.0, b.1.epoch, b.1.seq)));
    sorted
}

/// Forgets the oldest incarnations past [`MAX_NODES`] sending nodes; returns the names dropped.
pub fn forget_oldest(cursors: &mut HashMap<Arc<str>, Cursor>) -> Vec<Arc<str>> {
    let mut nodes: Vec<(u64, Arc<str>)> =
        cursors.iter().filter(|(n, _)| is_node_cursor(n)).map(|(n, c)| (c.epoch, n.clone())).collect();
    if nodes.len() <= MAX_NODES {
        return Vec::new();
    }
    nodes.sort();
    let excess = nodes.len() - MAX_NODES;
    let gone: Vec<Arc<str>> = nodes.into_iter().take(excess).map(|(_, n)| n).collect();
    for n in &gone {
        cursors.remove(n);
    }
    gone
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(node: &str, epoch: u64, seq: u64) -> Origin {
        Origin { cursor: cursor_name(node).into(), at: Stamp { epoch, seq } }
    }

    #[test]
    fn a_node_cursor_only_moves_forward() {
        let mut c = Cursor::default();
        assert!(reach(&mut c, Stamp { epoch: 5, seq: 1 }));
        assert!(reach(&mut c, Stamp { epoch: 5, seq: 9 }));
        assert!(!reach(&mut c, Stamp { epoch: 5, seq: 9 }), "the same number again");
        assert!(!reach(&mut c, Stamp { epoch: 5, seq: 3 }), "an older number");
        assert!(!reach(&mut c, Stamp { epoch: 4, seq: 100 }), "an older incarnation");
        assert!(reach(&mut c, Stamp { epoch: 6, seq: 1 }), "a newer incarnation starts over");
        assert_eq!(c, Cursor { epoch: 6, low: 1, above: vec![] });
        assert!(reach(&mut c, Stamp { epoch: u64::MAX, seq: u64::MAX }));
        assert!(covers(&c, Stamp { epoch: u64::MAX, seq: u64::MAX }));
        assert!(!covers(&Cursor::default(), Stamp { epoch: 0, seq: 1 }));
    }

    #[test]
    fn a_replay_takes_what_the_journal_lacked_and_each_message_once() {
        let journaled: HashMap<Arc<str>, Cursor> = [
            (Arc::from(cursor_name("a")), Cursor { epoch: 7, low: 10, above: vec![] }),
            (Arc::from("acme/im/msg/bob"), Cursor { epoch: 1, low: 99, above: vec![] }),
        ]
        .into_iter()
        .collect();
        let mut catch_up = CatchUp::new(&journaled, Arc::from(""));
        assert!(!catch_up.wants(&origin("a", 7, 10)), "the journal had it");
        assert!(!catch_up.wants(&origin("a", 6, 500)), "an incarnation before the journal's");
        assert!(catch_up.wants(&origin("a", 7, 11)));
        assert!(!catch_up.wants(&origin("a", 7, 11)), "once");
        assert!(!catch_up.live(&origin("a", 7, 11)), "replayed first, then live: a copy");
        assert!(catch_up.live(&origin("a", 7, 20)));
        assert!(!catch_up.wants(&origin("a", 7, 20)), "live first, then replayed: a copy");
        assert!(catch_up.wants(&origin("a", 7, 15)), "a gap the live path left");
        assert!(catch_up.wants(&origin("b", 1, 1)), "a node the session never heard from");
        assert!(catch_up.wants(&origin("a", 8, 1)), "a newer incarnation");
    }

    #[test]
    fn a_replay_takes_what_the_session_was_owed_though_the_journal_covers_it() {
        let journaled: HashMap<Arc<str>, Cursor> =
            [(Arc::from(cursor_name("a")), Cursor { epoch: 7, low: 10, above: vec![] })].into_iter().collect();
        let mut catch_up = CatchUp::new(&journaled, Arc::from(""));
        catch_up.owe([(Arc::from(cursor_name("a")), Stamp { epoch: 7, seq: 4 })]);
        let moved = CatchUp::from_parts(catch_up.parts());
        assert_eq!(moved.parts(), catch_up.parts(), "all of it moves");
        for mut c in [catch_up, moved] {
            assert!(!c.wants(&origin("a", 7, 3)), "the journal had it");
            assert!(c.wants(&origin("a", 7, 4)), "skipped while behind: owed");
            assert!(!c.wants(&origin("a", 7, 4)), "once");
        }
    }

    #[test]
    fn only_the_newest_nodes_are_remembered() {
        let mut cursors: HashMap<Arc<str>, Cursor> = (0..MAX_NODES as u64 + 3)
            .map(|i| (Arc::from(cursor_name(&format!("n{i}"))), Cursor { epoch: 100 + i, low: 1, above: vec![] }))
            .collect();
        cursors.insert("a/stream".into(), Cursor { epoch: 1, low: 1, above: vec![] });
        let mut gone = forget_oldest(&mut cursors);
        gone.sort();
        assert_eq!(gone, vec![Arc::from("$node/n0"), Arc::from("$node/n1"), Arc::from("$node/n2")]);
        assert_eq!(cursors.len(), MAX_NODES + 1, "the stream cursor stays");
        assert!(forget_oldest(&mut cursors).is_empty());
    }
}
