//! A subscriber slower than what other edges route to it never holds up the others: the edge
//! reads the bus in one loop for every session here, so instead of waiting for a connection
//! with too much waiting (the session queue's mark, `Hub::high_water(Router::Edge)`), its
//! session falls behind (`broker::session::Session::fall_behind`). It skips, from then on, what
//! comes live that the bus keeps (QoS 1/2 messages of other edges), noting each, and this edge
//! replays those to it from the bus, in order, once its connection has room again, until the
//! replay has read every one it skipped; then it takes what comes live again.
//!
//! - The replay reads from a while before the session fell behind ([`MARGIN_MS`]: what it
//!   skipped may have waited in this edge's bus subscription), and each pass from about where
//!   the last ended; a pass that finds none of what the session skipped reads from further
//!   back the next time. The session takes each message once (its catch-up,
//!   `broker::origins`), and each message it skipped whatever else it had from that edge.
//! - Once the replay has read all it skipped, the session still catches up for [`DRAIN`]: a
//!   copy of a message it was replayed may still be on its way live (dropped as had). One
//!   that comes later than that is delivered again (at least once).
//! - What this edge publishes reaches it here as ever, not through the bus.
//! - A session that moves to another edge while behind carries its catch-up there, whose
//!   replay gives it what it skipped (before what comes live there; from where it stood with
//!   each edge, by the newest number it had from there). One whose
//!   session ends there (a new session for its client id) loses what it skipped.
//! - One whose connection stops reading is closed as before (`limits.max_stall_secs`); the
//!   replay goes on into its session if it outlives its connection.
//! - A replay that finds none of what the session skipped for [`GIVE_UP_AFTER`] (the bus no
//!   longer keeps it: `bus.keep_secs`) gives up (`hermes_edge_behind_given_up_total`); what it
//!   had not found is lost to that session (`hermes_edge_behind_lost_total`).
//! - Without a bus that keeps messages, or for a shared subscription's messages (the group on
//!   the bus gives them), the loop waits for room as before.
//! - A session that comes here with a catch-up (resumed from a dead edge's journal, or handed
//!   over by the edge it left) is behind from its arrival ([`catch_up`]): its first pass gives
//!   what it missed before anything that reached it here meanwhile. Sessions arriving together
//!   share their first passes (`arrivals`).
//! - Cost: each pass is a consumer on the bus's stream, on the session's subjects (a first
//!   pass: on those of the sessions arriving with it); the session's catch-up remembers every
//!   message it takes until the replay is done.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use broker::session::BehindStep;

use crate::arrivals::Arrival;
use crate::catch_up::{Missed, Resumed, Skip, replay_kept};
use crate::cluster::{ClusterLink, subjects_of};
use crate::flow::Router;
use crate::hub::Hub;
use crate::link::Room;
use crate::message::now_ms;
use crate::metrics as m;

/// How long before a session fell behind its replay starts reading.
pub const MARGIN_MS: u64 = 10_000;

/// How long before where a pass ended the next starts.
const PASS_MARGIN_MS: u64 = 1_000;

/// How long a pass that found none of what the session skipped waits before the next, at
/// first (what it skipped may not be on the bus's stream yet); it doubles up to [`MAX_PAUSE`].
const PAUSE: Duration = Duration::from_millis(50);
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// How long the replay goes on finding none of what the session skipped before it gives up.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(30);

/// How long a session whose replay has read all it skipped still drops, as had, a copy of a
/// replayed message that comes live.
pub const DRAIN: Duration = Duration::from_secs(5);

/// Of the connections in `pressure` (from a message another edge routed), those whose
/// sessions fall behind here, each with a replay of its own; returns those the caller must
/// wait for room in (the bus keeps nothing to replay).
pub fn fall_behind(hub: &Arc<Hub>, pressure: Vec<Room>, stall: Duration) -> Vec<Room> {
    let Some(link) = hub.cluster().filter(|l| !l.kept().1.is_zero()) else {
        return pressure;
    };
    let high = hub.high_water(Router::Edge);
    let me: Arc<str> = link.node().registered().into();
    for room in pressure.into_iter().filter(|r| r.backlog() >= high) {
        if let Some((session, id)) = hub.fall_behind(room.link_id, &me) {
            metrics::counter!(m::SESSIONS_BEHIND).increment(1);
            tracing::info!(session = %session, backlog = room.backlog(), "a session fell behind: replaying to it from the bus");
            let since_ms = now_ms().saturating_sub(MARGIN_MS);
            // What this edge published reached the session here.
            let skip = Skip { node: Some(link.node().clone()), own_after: None };
            let (finished, arriving, read) = (false, false, true);
            let behind = Behind { hub: hub.clone(), session, id, since_ms, skip, finished, arriving, read };
            tokio::spawn(behind.replay(room, stall, false));
        }
    }
    Vec::new()
}

/// The replay of a session that came here with a catch-up (`Hub::connect` with `hold`: it
/// holds what other edges route to it live, as a session behind does, since it fell behind
/// `id`): what the bus kept that it missed, from where its catch-up may start, then what it
/// skipped meanwhile, in the bus's order; what this edge routed after the session came (its
/// number was `arrived`) it had here, and what `resumed.holder` published it had in the journal.
///
/// Until the first pass is done (for at most [`ARRIVAL`]), nothing leaves the session's queue:
/// what this edge routed to it since it came waits behind what that pass gives.
pub async fn catch_up(hub: Arc<Hub>, resumed: Resumed, id: u64, arrived: u64, room: Room, stall: Duration) {
    let link = hub.cluster();
    let skip = Skip { node: resumed.holder.clone(), own_after: link.map(|l| (l.node().clone(), arrived)) };
    let since_ms = resumed.replay_from();
    let session = resumed.session;
    let mut behind =
        Behind { hub: hub.clone(), session, id, since_ms, skip, finished: false, arriving: true, read: false };
    // Without the bus (it cannot be: the hub held the session for it), dropped: gives up.
    let Some(link) = link else { return };
    // Shared with the sessions arriving with it; counted rather than logged at warning level
    // when slow or failed: a storm of arrivals may have thousands.
    let passed = match tokio::time::timeout(ARRIVAL, behind.first_pass(link)).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            metrics::counter!(m::CLUSTER_ERRORS, "op" => "replay").increment(1);
            metrics::counter!(m::ARRIVALS_UNHELD, "reason" => "failed").increment(1);
            tracing::debug!(session = %behind.session, error = %e, "cannot replay to a session that came here yet");
            false
        }
        Err(_) => {
            metrics::counter!(m::ARRIVALS_UNHELD, "reason" => "slow").increment(1);
            tracing::debug!(session = %behind.session, "the replay to a session that came here is slow: its queue goes out meanwhile");
            false
        }
    };
    behind.read = passed;
    behind.arrive();
    if passed {
        // It takes what comes live again; a copy of what the pass gave may still be on its way.
        tokio::time::sleep(DRAIN).await;
    }
    behind.replay(room, stall, passed).await;
}

/// The longest a session that came here with a catch-up waits for the first pass of its replay
/// before what reached it here meanwhile goes out (what the replay gives later comes after).
const ARRIVAL: Duration = Duration::from_secs(5);

/// A client came back to `session`, parked here holding what comes behind a replay since
/// its arrival `id` (taken from a dead edge: `adopt`, which releases it once the replay of
/// all it took is done): after [`ARRIVAL`], what waits goes out whether that replay is done
/// or not.
pub async fn release_after_arrival(hub: Arc<Hub>, session: Arc<str>, id: u64) {
    tokio::time::sleep(ARRIVAL).await;
    // A stopping edge has handed its sessions on, or left them to the journal as they were.
    if !hub.is_closing() && hub.arrival_id(&session) == Some(id) {
        metrics::counter!(m::ARRIVALS_UNHELD, "reason" => "slow").increment(1);
        tracing::debug!(session = %session, "the replay to a session taken from a dead edge is slow: its queue goes out meanwhile");
        hub.arrived(&session, id, now_ms());
    }
}

/// A session behind and its replay. Dropped before it finished (its task ended early), it
/// gives up, so the session never skips for good.
struct Behind {
    hub: Arc<Hub>,
    session: Arc<str>,
    /// Which time it fell behind (`Hub::fall_behind`).
    id: u64,
    since_ms: u64,
    /// What the replay leaves out: what the session had without the bus.
    skip: Skip,
    finished: bool,
    /// It came here with a catch-up, and its first pass is not done ([`catch_up`]).
    arriving: bool,
    /// A pass has read the bus. One that came with a catch-up missed more than what it
    /// skipped here (what reached nobody while it moved): it is caught up only after that.
    read: bool,
}

impl Behind {
    /// Its first pass is done or given up: its queue goes out.
    fn arrive(&mut self) {
        if std::mem::take(&mut self.arriving) {
            self.hub.arrived(&self.session, self.id, now_ms());
        }
    }

    /// Replays to the session, in passes, until it is no longer behind; the first pass is
    /// done already if `passed`.
    async fn replay(mut self, room: Room, stall: Duration, mut passed: bool) {
        let hub = self.hub.clone();
        let Some(link) = hub.cluster() else { return };
        let low = (self.hub.high_water(Router::Edge) / 2).max(1);
        let (mut replayed_so_far, mut pause, mut stuck_since) = (0, PAUSE, None);
        loop {
            // Its connection takes what waits first (a closed one has nothing waiting).
            if !std::mem::take(&mut passed) {
                if !room.wait_below(low, stall).await {
                    self.hub.close_stalled(&room);
                }
                match self.pass(link, stall).await {
                    Ok(()) => self.read = true,
                    Err(e) => {
                        metrics::counter!(m::CLUSTER_ERRORS, "op" => "replay").increment(1);
                        tracing::warn!(session = %self.session, error = %e, "cannot replay to a session behind yet");
                    }
                }
            }
            // Until a pass has read the bus, a session that came with a catch-up waits for one.
            let mut step = match self.read {
                true => self.hub.caught_up_behind(&self.session, self.id),
                false => Some(BehindStep::Behind { replayed: 0, left: 0 }),
            };
            while step == Some(BehindStep::Draining) {
                tokio::time::sleep(DRAIN).await;
                (replayed_so_far, pause, stuck_since) = (0, PAUSE, None);
                step = self.hub.caught_up_behind(&self.session, self.id);
            }
            // Done, gone, or behind anew since (with a replay of its own).
            let Some(BehindStep::Behind { replayed, .. }) = step else {
                self.finished = true;
                return;
            };
            if replayed > replayed_so_far {
                (replayed_so_far, pause, stuck_since) = (replayed, PAUSE, None);
                continue;
            }
            let stuck = *stuck_since.get_or_insert_with(Instant::now);
            if stuck.elapsed() >= GIVE_UP_AFTER {
                // Dropped: gives up.
                return;
            }
            // What it skipped may be older than where the passes got (it waited on its way).
            self.since_ms = self.since_ms.saturating_sub(MARGIN_MS);
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }

    /// The first pass of a session that came here with a catch-up, read with the sessions
    /// arriving with it (`arrivals`); its connection takes nothing until it is done, so it
    /// waits for no room there.
    async fn first_pass(&mut self, link: &ClusterLink) -> Result<(), String> {
        let missed = Missed { since_ms: self.since_ms, skip: self.skip.clone() };
        let arrival = Arrival { session: self.session.clone(), missed, subjects: self.subjects() };
        let newest = link.arrivals().first_pass(arrival).await?;
        self.read_up_to(newest);
        Ok(())
    }

    /// One pass: what the bus kept on the session's subscriptions from `since_ms` to now
    /// (`Hub::replay_routed`: the session takes what it missed), and moves `since_ms` on,
    /// waiting for room in the session's connection where it has too much waiting.
    async fn pass(&mut self, link: &ClusterLink, stall: Duration) -> Result<(), String> {
        let newest = AtomicU64::new(self.since_ms);
        let (hub, session) = (&self.hub, &self.session);
        replay_kept(hub, link, &self.subjects(), self.since_ms, &self.skip, stall, |msg, at_ms| {
            newest.fetch_max(at_ms, Ordering::Relaxed);
            hub.replay_routed(session, msg, at_ms, now_ms())
        })
        .await?;
        self.read_up_to(newest.into_inner());
        Ok(())
    }

    /// The bus subjects of the session's subscriptions but its shared ones (within
    /// [`crate::catch_up::within_most`]).
    fn subjects(&self) -> Vec<String> {
        crate::catch_up::within_most(
            self.hub.plain_filters(&self.session).iter().flat_map(|f| subjects_of(f)).collect(),
        )
    }

    /// A pass read what the bus kept up to `newest_ms`: the next starts a little before.
    fn read_up_to(&mut self, newest_ms: u64) {
        self.since_ms = self.since_ms.max(newest_ms.saturating_sub(PASS_MARGIN_MS));
    }
}

impl Drop for Behind {
    fn drop(&mut self) {
        self.arrive();
        if self.finished {
            return;
        }
        if let Some(lost) = self.hub.give_up_behind(&self.session, self.id) {
            metrics::counter!(m::BEHIND_GIVEN_UP).increment(1);
            metrics::counter!(m::BEHIND_LOST).increment(u64::try_from(lost).unwrap_or(u64::MAX));
            tracing::warn!(session = %self.session, lost, "gave up replaying to a session behind: the bus no longer had what it skipped");
        }
    }
}
