//! The sessions of an edge that died are taken by a live one, so what is published for them
//! while their clients stay away is queued (and journaled) at once, however long they stay
//! away: the bus keeps what edges route to each other only for `bus.keep_secs`.
//!
//! Every edge heartbeats into the owners registry (`broker::owners`). When an edge's time runs
//! out, the registry hands it to one live edge for a lease ([`LEASE`]); if that edge finds it
//! gone from the bus too ([`Handover::is_gone`]: a slow edge that still runs keeps its
//! sessions), it takes each session the dead edge owned:
//!
//! 1. claims it from the dead edge only ([`Handover::claim_from`]: a client that came back
//!    elsewhere first keeps it), holding the session's turn so a client arriving meanwhile asks
//!    this edge for it once it is here;
//! 2. loads it from the journal and parks it with what was left of its expiry, catching up:
//!    what comes to it from now on waits behind what its replay gives (as for a session
//!    arriving with its client: `behind`);
//! 3. once all are here, replays what the bus kept on their subscriptions since they began,
//!    in one replay for them all (but what the dead edge published itself, and what this edge
//!    routed after each was parked here: `catch_up::replay_to_each`); what each held goes in
//!    after that, and its catch-up drops live copies of what the replay gave for
//!    `behind::DRAIN` more; then what their durable streams got beyond their cursors;
//! 4. sends the wills of the connections the dead edge had open (`wills`: a delayed one waits
//!    for its client as if its connection had just ended; not one whose client came back to
//!    another edge first), then forgets the dead edge, which owns nothing any more.
//!
//! If this edge dies meanwhile, the lease runs out and another live edge takes what is left.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;

use broker::SubOptions;

use crate::catch_up;
use crate::cluster::NodeName;
use crate::handover::Handover;
use crate::hub::Hub;
use crate::message::now_ms;
use crate::metrics as m;
use crate::wills;

/// How often this edge tells the registry it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// How long the registry counts this edge alive after a heartbeat.
pub const ALIVE_FOR: Duration = Duration::from_secs(15);
/// How long a dead edge is this edge's to take before another live edge may take it.
pub const LEASE: Duration = Duration::from_secs(60);
/// Sessions listed at a time.
const BATCH: usize = 256;
/// Sessions taken at once.
const AT_ONCE: usize = 8;
/// Tries to load and park a session this edge claimed.
const PARK_TRIES: u32 = 3;

/// Heartbeats `handover`'s edge into the owners registry and takes the sessions of the edges
/// that died, until the hub is gone.
pub async fn run(hub: Weak<Hub>, handover: Arc<Handover>, checks: wills::Checks, stall: Duration) {
    let mut beat = heartbeats();
    let mut journal_mark: Option<String> = None;
    loop {
        let Some(hub) = next_beat(&mut beat, &hub).await else { return };
        let owners = handover.owners();
        let beat = owners.heartbeat(handover.registered(), millis(ALIVE_FOR), millis(LEASE)).await;
        handover.heard_from_registry(beat.is_ok());
        let dead = match beat {
            Ok(dead) => dead,
            Err(e) => {
                metrics::counter!(m::CLUSTER_ERRORS, "op" => "heartbeat").increment(1);
                tracing::warn!(error = %e, "cannot heartbeat into the session owners registry");
                continue;
            }
        };
        check_journal(&hub, handover.registered(), Some(&handover), &mut journal_mark).await;
        for node in dead {
            if !handover.is_gone(&node).await {
                tracing::info!(node, "an edge stopped heartbeating but is still on the bus: its sessions stay there");
                continue;
            }
            match take_all(&hub, &handover, &checks, &node, stall).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(node, sessions = n, "took the sessions of an edge that died"),
                Err(e) => {
                    metrics::counter!(m::CLUSTER_ERRORS, "op" => "adopt").increment(1);
                    tracing::warn!(node, error = %e, "cannot take the sessions of an edge that died");
                }
            }
        }
    }
}

/// Looks at the shared journal's mark every [`HEARTBEAT`] (as [`run`] does), for an edge on
/// Redis that has no bus and so no registry to heartbeat into: what it holds is written into
/// a journal that lost it, so that it outlives this edge's next restart.
pub async fn watch_journal(hub: Weak<Hub>, me: String, runs: bool) {
    let mut beat = heartbeats();
    let mut journal_mark: Option<String> = None;
    while let Some(hub) = next_beat(&mut beat, &hub).await {
        check_journal(&hub, &me, None, &mut journal_mark).await;
        // A node alone on it keeps this run recorded, so its next run sends the wills this one
        // leaves (also after a failed first record, or Redis losing its data).
        if let Some(journal) = hub.journal().filter(|_| runs)
            && let Err(e) = journal.earlier_runs().await
        {
            tracing::debug!(error = %e, "cannot record this run in the journal");
        }
    }
}

/// Ticks every [`HEARTBEAT`]; a late tick is not made up for.
fn heartbeats() -> tokio::time::Interval {
    let mut beat = tokio::time::interval(HEARTBEAT);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    beat
}

/// Waits for `beat`'s next tick; then the hub, unless it is gone or closing.
async fn next_beat(beat: &mut tokio::time::Interval, hub: &Weak<Hub>) -> Option<Arc<Hub>> {
    beat.tick().await;
    hub.upgrade().filter(|h| !h.is_closing())
}

/// Looks whether the journal the edges share still holds the mark this edge (`me`) found there
/// before (`SessionJournal::mark`, a fresh one set whenever there is none): another means it
/// lost what it held (Redis restarted without its data), and this edge writes its sessions
/// that outlive their connection (claimed again in the registry, if it has one, so they are
/// listed under it) and its retained messages into it again. Without it, a session whose
/// client moved, or whose edge died or restarted afterwards, would start afresh, without what
/// was acknowledged for it.
async fn check_journal(hub: &Hub, me: &str, handover: Option<&Handover>, known: &mut Option<String>) {
    let Some(journal) = hub.journal().filter(|j| j.is_shared()) else { return };
    let fresh = format!("{me}:{:x}", rand::random::<u64>());
    let mark = match journal.mark(&fresh).await {
        Ok(mark) => mark,
        Err(e) => return tracing::debug!(error = %e, "cannot read the journal's mark"),
    };
    if known.as_ref().is_none_or(|k| *k == mark) {
        *known = Some(mark);
        return;
    }
    tracing::warn!(
        "the session journal lost what it held (Redis restarted without its data?): writing this edge's sessions into it again"
    );
    metrics::counter!(m::CLUSTER_ERRORS, "op" => "journal_lost").increment(1);
    let (sessions, written) = hub.journal_all_again();
    if let Some(handover) = handover {
        for session in &sessions {
            if let Err(e) = handover.owners().claim(session, me).await {
                tracing::warn!(session = %session, error = %e, "cannot claim a session again after the journal lost it");
            }
        }
    }
    let stored = match written {
        Some(w) => w.wait().await,
        None => true,
    };
    match stored {
        true => {
            tracing::info!(sessions = sessions.len(), "this edge's sessions written into the journal again");
            *known = Some(mark);
        }
        // The next heartbeat finds the new mark again, and tries again.
        false => tracing::warn!("cannot write this edge's sessions into the journal again yet"),
    }
}

/// Stops this edge in the registry at once (a clean shutdown): a live edge takes what it
/// leaves at its next heartbeat, once this edge is off the bus.
pub async fn stop(handover: &Handover) {
    if let Err(e) = handover.owners().heartbeat(handover.registered(), 0, millis(LEASE)).await {
        tracing::warn!(error = %e, "cannot tell the session owners registry this edge stops");
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A session taken from a dead edge, catching up.
struct Taken {
    session: Arc<str>,
    /// Its arrival here: what comes to it waits behind what its replay gives until it is done.
    arrival: u64,
    /// [`Hub::numbered`] once it was parked here: what this edge routed after that reached it
    /// here, what it routed before did not.
    numbered: u64,
    subscriptions: Vec<(String, SubOptions)>,
    cursors: Vec<(Arc<str>, broker::streams::Cursor)>,
}

/// Takes every session `node` owns, then sends the wills of the connections it had open
/// (`wills`); returns how many sessions were parked here.
async fn take_all(
    hub: &Arc<Hub>,
    handover: &Handover,
    checks: &wills::Checks,
    node: &str,
    stall: Duration,
) -> Result<usize, String> {
    tracing::info!(node, "an edge died: taking the sessions it held");
    let started = std::time::Instant::now();
    let mut taken = Vec::new();
    // What could not be taken stays listed under the dead edge, for the next lease; what was
    // taken catches up in any case (it would otherwise wait for a replay forever). The wills
    // go once the sessions are where they will be (a delayed one waits for its client in its
    // session's place); the dead edge is forgotten once they are gone too.
    let listed = async {
        take_listed(hub, handover, node, &mut taken).await?;
        let taken: HashSet<Arc<str>> = taken.iter().map(|t| t.session.clone()).collect();
        let owners = wills::Owners { registry: handover.owners(), me: handover.registered(), taken: &taken };
        wills::send_left(hub, checks, node, Some(owners)).await?;
        handover.owners().forget_node(node).await.map(drop)
    }
    .await;
    if taken.is_empty() {
        return listed.map(|()| 0);
    }
    metrics::counter!(m::SESSIONS_MOVED, "way" => "adopted").increment(taken.len() as u64);
    tracing::info!(node, sessions = taken.len(), after = ?started.elapsed(), "parked the sessions of a dead edge here; catching up");
    let (dead, me) = (NodeName::from_registered(node), NodeName::from_registered(handover.registered()));
    catch_up_all(hub, &taken, &dead, &me, stall).await;
    listed.map(|()| taken.len())
}

/// Takes the sessions listed under `node` into `taken` until none is left.
async fn take_listed(hub: &Hub, handover: &Handover, node: &str, taken: &mut Vec<Taken>) -> Result<(), String> {
    loop {
        let listed = handover.owners().held_by(node, BATCH).await?;
        if listed.is_empty() {
            break;
        }
        let mut takes =
            futures_util::stream::iter(listed).map(|s| take(hub, handover, node, s)).buffer_unordered(AT_ONCE);
        let mut failed = None;
        while let Some(result) = takes.next().await {
            match result {
                Ok(Some(t)) => taken.push(t),
                Ok(None) => {}
                Err(e) => failed = Some(e),
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
    }
    Ok(())
}

/// Takes `session` from dead `node` and parks it here, catching up; `None` if it is not for
/// this edge to take (another node owns it, or it ended or expired).
async fn take(hub: &Hub, handover: &Handover, node: &str, session: String) -> Result<Option<Taken>, String> {
    let Some(claim) = handover.claim_from(&session, node).await? else { return Ok(None) };
    // It is this edge's now and nowhere else: a journal that fails for a moment is asked again.
    let mut taken = park(hub, &session, node).await;
    for attempt in 1..PARK_TRIES {
        if taken.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
        taken = park(hub, &session, node).await;
    }
    drop(claim);
    if !matches!(taken, Ok(Some(_))) {
        // Not here: a client coming back loads it from the journal, if it is there.
        handover.release(&session).await;
    }
    taken
}

/// Parks `session` from the journal here, catching up on what was routed to `dead` (but what
/// `dead` published), with what is left of its expiry.
async fn park(hub: &Hub, session: &str, dead: &str) -> Result<Option<Taken>, String> {
    let Some(journal) = hub.journal() else { return Ok(None) };
    let (Some(journaled), Some(expires_at)) = (journal.load(session).await?, journal.expires_at(session).await?) else {
        return Ok(None);
    };
    let (subscriptions, cursors) = (journaled.snapshot.subscriptions.clone(), journaled.snapshot.cursors.clone());
    let Some(numbered) = hub.restore_parked(session, journaled, expires_at, Some(dead.into()), now_ms()) else {
        return Ok(None);
    };
    let arrival = hub.arrival_id(session);
    Ok(arrival.map(|arrival| Taken { session: session.into(), arrival, numbered, subscriptions, cursors }))
}

/// Replays to the sessions taken what they missed since their edge died: what the bus kept
/// (but what `dead` published, in their journal, and what `me` routed after each was parked
/// here), in one replay for them all, then what their streams have beyond their cursors.
async fn catch_up_all(hub: &Arc<Hub>, taken: &[Taken], dead: &NodeName, me: &NodeName, stall: Duration) {
    let missed: Vec<catch_up::Missed> = taken
        .iter()
        .map(|t| catch_up::Missed {
            since_ms: t.subscriptions.iter().map(|(_, o)| o.since_ms).min().unwrap_or(0),
            skip: catch_up::Skip { node: Some(dead.clone()), own_after: Some((me.clone(), t.numbered)) },
        })
        .collect();
    let sessions: HashMap<&str, &catch_up::Missed> = taken.iter().map(|t| &*t.session).zip(&missed).collect();
    if let Some(link) = hub.cluster() {
        let subjects = catch_up::subjects_of_sessions(hub, sessions.keys().copied());
        match catch_up::with_tries(|| catch_up::replay_to_each(hub, link, &subjects, &sessions, stall)).await {
            Ok((_, n)) => {
                tracing::info!(messages = n, sessions = sessions.len(), "sessions taken from a dead edge caught up")
            }
            Err(e) => tracing::warn!(error = %e, "cannot replay what the sessions of a dead edge missed"),
        }
    }
    // What they held goes in after what the replay gave. Their catch-up still drops, as had,
    // a live copy of a replayed message for a while (`behind::DRAIN`), then ends.
    for t in taken {
        hub.arrived(&t.session, t.arrival, now_ms());
    }
    let arrived: Vec<(Arc<str>, u64)> = taken.iter().map(|t| (t.session.clone(), t.arrival)).collect();
    let draining = hub.clone();
    tokio::spawn(async move {
        tokio::time::sleep(crate::behind::DRAIN).await;
        for (session, id) in arrived {
            draining.replay_done(&session, id, now_ms());
        }
    });
    if let Some(streams) = hub.streams() {
        for t in taken.iter().filter(|t| !t.cursors.is_empty()) {
            streams.replay_missed(hub, &t.session, t.cursors.clone(), stall).await;
        }
    }
}
