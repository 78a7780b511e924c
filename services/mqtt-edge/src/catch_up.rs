//! A session resumed from the journal of a dead edge catches up on what was routed to that edge
//! after it died (or while it was dying): the QoS 1/2 messages edges route to each other are
//! also kept on the bus for `bus.keep_secs` (`cluster::send_out`), and the edge that resumes the
//! session replays those its subscriptions match, from when each subscription began.
//!
//! - The replay starts once this edge's interest in the session's filters is in place on the
//!   bus ([`ClusterLink::settled`]), and reads what the bus kept up to then: anything later
//!   comes live. It runs as the replay of a session behind (`behind::catch_up`): what comes
//!   live waits until its first pass is done, so what the session missed comes first.
//! - Messages the dead edge published itself are skipped: it acknowledged none before its
//!   sessions had them in the journal, or had acknowledged them themselves. So are this edge's own published after the session
//!   came here (it got them here as they were published; [`Skip`]).
//! - The router gives each message once, whichever path brings it first, and never one the
//!   journal had (`broker::origins`).
//!
//! An edge that lost the bus for a while (and lived) catches up the same way ([`after_outages`]):
//! its sessions (live ones whether or not they outlive their connection, and parked ones) start
//! catching up when the bus is lost, and replay what was kept since the outage began once it is
//! back.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use prost::Message as _;
use tokio::sync::watch;

use broker::SubOptions;
use broker::origins::Origin;
use bus::Link;
use wire::pb;

use crate::cluster::{ClusterLink, KEPT_SUBJECTS, NodeName, Origins, decode_message, subjects_of};
use crate::hub::{Hub, Routed};
use crate::message::SharedMessage;
use crate::message::now_ms;
use crate::metrics as m;

/// What a session resumed from the journal needs to catch up.
#[derive(Debug)]
pub struct Resumed {
    pub session: Arc<str>,
    /// The edge that held it last (what it published itself is in the journal).
    pub holder: Option<NodeName>,
    /// Its subscriptions, as the journal had them.
    pub subscriptions: Vec<(String, SubOptions)>,
    /// Where the replay may start (Unix ms; 0: where its subscriptions began): a session that
    /// moved from a live edge missed only what was routed while it moved.
    pub since_ms: u64,
}

impl Resumed {
    /// Where its replay starts reading (Unix ms): where its plain subscriptions began (a
    /// shared subscription's messages went to another member), or `since_ms` if later.
    pub fn replay_from(&self) -> u64 {
        let plain = self.subscriptions.iter().filter(|(f, _)| !broker::topic::is_shared(f));
        plain.map(|(_, o)| o.since_ms).min().unwrap_or(0).max(self.since_ms)
    }
}

/// How long before a session left a live edge its replay on the next starts reading (what was
/// on its way to it there, and the clocks of the edges and the NATS server).
pub const MOVE_MARGIN_MS: u64 = 60_000;

/// Which kept messages a replay leaves out.
#[derive(Debug, Clone)]
pub struct Skip {
    /// What this node published: a dead edge's (its sessions had them in the journal), or this
    /// edge's after an outage (delivered here without the bus).
    pub node: Option<NodeName>,
    /// This edge, and its number (`Hub::numbered`) once the session replayed to was here:
    /// what it routed after that reached it here as it was published; what it routed before
    /// did not (it was elsewhere) and is replayed.
    pub own_after: Option<(NodeName, u64)>,
}

impl Skip {
    /// Leaves nothing out.
    pub const NONE: Skip = Skip { node: None, own_after: None };

    /// Whether it leaves out a message from `origin`.
    pub fn skips(&self, origin: &Origin) -> bool {
        let sender = broker::origins::node_of(&origin.cursor);
        let from = |n: &NodeName| sender == Some(n.id.as_str()) && n.incarnation == origin.at.epoch;
        self.node.as_ref().is_some_and(from)
            || self.own_after.as_ref().is_some_and(|(me, numbered)| from(me) && origin.at.seq > *numbered)
    }
}

/// Replays to the sessions `route` hands messages to what the bus kept on `subjects` since
/// `since_ms` (no further back than it keeps), but those `skip` names, once this edge's
/// interest is in place on the bus; returns how many messages went to a session.
pub(crate) async fn replay_kept(
    hub: &Hub,
    link: &ClusterLink,
    subjects: &[String],
    since_ms: u64,
    skip: &Skip,
    stall: Duration,
    route: impl Fn(SharedMessage, u64) -> Routed,
) -> Result<u64, String> {
    let (bus, kept_for) = link.kept();
    if kept_for.is_zero() || subjects.is_empty() {
        return Ok(0);
    }
    link.settled().await;
    // What this edge routed before is on the bus before the replay reads it.
    link.flushed().await;
    let mut replay = bus.replay_kept(subjects, since_ms.max(link.oldest_kept_ms())).await.map_err(|e| e.to_string())?;
    let mut origins = Origins::default();
    let mut taken = 0;
    while let Some(kept) = replay.next().await {
        let kept = kept.map_err(|e| e.to_string())?;
        let Ok(routed) = pb::RoutedMessage::decode(kept.payload) else {
            continue;
        };
        let origin = origins.of(&routed);
        if skip.skips(&origin) {
            continue;
        }
        let Some(mut msg) = decode_message(routed) else {
            continue;
        };
        msg.origin = Some(origin);
        let routed = route(Arc::new(msg), kept.at_ms);
        if routed.sessions > 0 {
            taken += 1;
            metrics::counter!(m::CLUSTER_REPLAYED).increment(1);
        }
        crate::flow::wait_for_room(hub, routed.pressure, stall, crate::flow::Router::Edge).await;
    }
    Ok(taken)
}

/// Each time this edge loses the bus (one that keeps what edges send each other: started only
/// then), the sessions here start catching up from where they stand (nothing from other edges
/// reaches them until it is back, so live messages cannot move them past what they missed);
/// once it is back they replay what the bus kept on their subscriptions since the outage began
/// ([`replay_to_all`]): nothing they had, nothing twice (what comes live meanwhile), nothing
/// this edge published itself. A session that ends with its connection is replayed to too
/// while its connection lasts (a client that keeps a clean session connected through the
/// outage misses nothing the others acknowledged); one that ended meanwhile has nothing more.
pub async fn after_outages(hub: Weak<Hub>, mut changes: watch::Receiver<Option<Link>>, me: NodeName, stall: Duration) {
    let mut catching: std::collections::BTreeMap<Arc<str>, u64> = Default::default();
    while changes.changed().await.is_ok() {
        let Some(change) = *changes.borrow_and_update() else { continue };
        let Some(hub) = hub.upgrade() else { return };
        // Sessions that began here while the bus was away (or a loss this task did not see:
        // a watch keeps only the latest change) start now.
        let more = hub.begin_catch_up_all(&me.registered().into(), |s| catching.contains_key(s));
        catching.extend(more);
        let Link::Back(outage) = change else { continue };
        let Some(link) = hub.cluster() else { return };
        let lost_ms = outage.to_ms.saturating_sub(outage.from_ms);
        tracing::info!(
            lost_ms,
            sessions = catching.len(),
            "back on the bus: catching up on what was routed here meanwhile"
        );
        retained_again(&hub).await;
        let sessions: Vec<Arc<str>> = catching.keys().cloned().collect();
        // Nothing this edge published itself: delivered here without the bus.
        let skip = Skip { node: Some(me.clone()), own_after: None };
        match replay_to_all(&hub, link, &sessions, outage.from_ms, &skip, stall).await {
            Ok(n) => tracing::info!(messages = n, "caught up after losing the bus"),
            Err(e) => tracing::warn!(error = %e, "cannot replay what this edge missed while it had lost the bus"),
        }
        for (session, id) in std::mem::take(&mut catching) {
            hub.caught_up(&session, id);
        }
    }
}

/// Reads the retained messages from the journal the edges share again, after this edge lost
/// the bus: what the others set or cleared meanwhile (or while it came back, before it heard
/// them again) did not reach it. What changed here since it began reading is newer and stays.
async fn retained_again(hub: &Hub) {
    // A journal of this edge's own holds only what was published here.
    let Some(journal) = hub.journal().filter(|j| j.is_shared()) else { return };
    let mark = hub.retained_mark();
    match journal.load_retained().await {
        Ok(all) => {
            let written = hub.reconcile_retained(all, mark);
            tracing::info!(written, "retained messages read again after losing the bus");
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the retained messages again after losing the bus"),
    }
}

/// Tries of a replay to every session catching up (each message is taken once however many
/// there are).
const REPLAY_TRIES: u32 = 3;

/// The most subjects a replay for several sessions reads by name ([`subjects_of_sessions`]).
pub(crate) const MAX_REPLAY_SUBJECTS: usize = 64;

/// What a session's replay gives it: what the bus kept from `since_ms` (Unix ms) on, but what
/// `skip` leaves out.
#[derive(Debug, Clone)]
pub struct Missed {
    pub since_ms: u64,
    pub skip: Skip,
}

impl Missed {
    /// Whether the session takes a message from `origin` the bus kept at `at_ms`.
    fn takes(&self, origin: Option<&Origin>, at_ms: u64) -> bool {
        at_ms >= self.since_ms && !origin.is_some_and(|o| self.skip.skips(o))
    }
}

/// One replay for several sessions: what the bus kept on `subjects` from the earliest start
/// among `sessions`, each message to each session that takes it by its own [`Missed`] and
/// missed it (`Router::replay_routed_to`). Nobody waits for room: their connections take
/// nothing until it is done, or they have none. Returns the newest a message read was kept
/// (Unix ms; that earliest start if none) and how many messages a session took.
pub(crate) async fn replay_to_each(
    hub: &Hub,
    link: &ClusterLink,
    subjects: &[String],
    sessions: &HashMap<&str, &Missed>,
    stall: Duration,
) -> Result<(u64, u64), String> {
    let since_ms = sessions.values().map(|m| m.since_ms).min().unwrap_or(0);
    let newest = AtomicU64::new(since_ms);
    let taken = replay_kept(hub, link, subjects, since_ms, &Skip::NONE, stall, |msg, at_ms| {
        newest.fetch_max(at_ms, Ordering::Relaxed);
        let origin = msg.origin.clone();
        let takes = |s: &str| sessions.get(s).is_some_and(|m| m.takes(origin.as_ref(), at_ms));
        let mut routed = hub.replay_routed_to(msg, at_ms, now_ms(), takes);
        routed.pressure.clear();
        routed
    })
    .await?;
    Ok((newest.into_inner(), taken))
}

/// The bus subjects of the subscriptions of `sessions` but their shared ones; past
/// [`MAX_REPLAY_SUBJECTS`], every kept subject (a NATS consumer with thousands of filters
/// costs more than reading everything: the router picks what each session subscribes to).
pub(crate) fn subjects_of_sessions<'a>(hub: &Hub, sessions: impl Iterator<Item = &'a str>) -> Vec<String> {
    within_most(sessions.flat_map(|s| hub.plain_filters(s)).flat_map(|f| subjects_of(&f)).collect())
}

/// `subjects` for a replay to read by name, or past [`MAX_REPLAY_SUBJECTS`] every kept
/// subject: what one replay asks of NATS stays bounded whatever a session subscribes to.
pub(crate) fn within_most(subjects: BTreeSet<String>) -> Vec<String> {
    match subjects.len() > MAX_REPLAY_SUBJECTS {
        true => KEPT_SUBJECTS.map(str::to_owned).to_vec(),
        false => subjects.into_iter().collect(),
    }
}

/// Replays what the bus kept since `since_ms` on the subscriptions of `sessions` (catching up)
/// to every session here catching up, but what `skip` leaves out, tried [`REPLAY_TRIES`] times;
/// returns how many messages a session took. Used after an outage (`sessions`: those here,
/// live or parked; since the outage began).
pub async fn replay_to_all(
    hub: &Hub,
    link: &ClusterLink,
    sessions: &[Arc<str>],
    since_ms: u64,
    skip: &Skip,
    stall: Duration,
) -> Result<u64, String> {
    with_tries(|| replay_to_all_once(hub, link, sessions, since_ms, skip, stall)).await
}

/// `replay` tried up to [`REPLAY_TRIES`] times (each message is taken once however many
/// times it is replayed).
pub(crate) async fn with_tries<T, F: Future<Output = Result<T, String>>>(
    mut replay: impl FnMut() -> F,
) -> Result<T, String> {
    let mut attempt = 1;
    loop {
        match replay().await {
            Err(e) => {
                metrics::counter!(m::CLUSTER_ERRORS, "op" => "replay").increment(1);
                if attempt == REPLAY_TRIES {
                    return Err(e);
                }
                tracing::warn!(error = %e, attempt, "cannot replay to the sessions catching up: trying again");
                tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
                attempt += 1;
            }
            done => return done,
        }
    }
}

async fn replay_to_all_once(
    hub: &Hub,
    link: &ClusterLink,
    sessions: &[Arc<str>],
    since_ms: u64,
    skip: &Skip,
    stall: Duration,
) -> Result<u64, String> {
    let subjects = subjects_of_sessions(hub, sessions.iter().map(|s| &**s));
    replay_kept(hub, link, &subjects, since_ms, skip, stall, |msg, at_ms| hub.replay_routed_all(msg, at_ms, now_ms()))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routed(id: &str, incarnation: u64, seq: u64) -> Origin {
        let routed = pb::RoutedMessage { origin: id.into(), incarnation, seq, ..Default::default() };
        Origins::default().of(&routed)
    }

    #[test]
    fn a_replay_leaves_out_the_dead_nodes_messages_and_this_edges_own_once_the_sessions_were_here() {
        let (dead, me) = (NodeName { id: "a".into(), incarnation: 1 }, NodeName { id: "b".into(), incarnation: 2 });
        let skip = Skip { node: Some(dead.clone()), own_after: Some((me.clone(), 10)) };
        assert!(skip.skips(&routed("a", 1, 0)), "the dead node's: in its journal");
        assert!(!skip.skips(&routed("a", 2, 0)), "another incarnation of it");
        assert!(!skip.skips(&routed("c", 1, u64::MAX)), "a third node's");
        assert!(!skip.skips(&routed("b", 2, 10)), "this edge's, routed before the sessions came: replayed");
        assert!(skip.skips(&routed("b", 2, 11)), "after: delivered here already");
        assert!(!skip.skips(&routed("b", 1, 11)), "an earlier incarnation of this edge");
        let late = Skip { node: None, own_after: Some((me, u64::MAX)) };
        assert!(!late.skips(&routed("b", 2, u64::MAX)), "nothing above the last number");
        assert!(!late.skips(&routed("a", 1, 0)));
    }
}
