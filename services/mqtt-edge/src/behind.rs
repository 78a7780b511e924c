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
//!   replay gives it what it skipped (not necessarily in order with what comes live there;
//!   from where it stood with each edge, by the newest number it had from there). One whose
//!   session ends there (a new session for its client id) loses what it skipped.
//! - One whose connection stops reading is closed as before (`limits.max_stall_secs`); the
//!   replay goes on into its session if it outlives its connection.
//! - A replay that finds none of what the session skipped for [`GIVE_UP_AFTER`] (the bus no
//!   longer keeps it: `bus.keep_secs`) gives up (`hermes_edge_behind_given_up_total`); what it
//!   had not found is lost to that session (`hermes_edge_behind_lost_total`).
//! - Without a bus that keeps messages, or for a shared subscription's messages (the group on
//!   the bus gives them), the loop waits for room as before.
//! - Cost: each pass is a consumer on the bus's stream, on the session's subjects; the
//!   session's catch-up remembers every message it takes until the replay is done.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use broker::session::BehindStep;

use crate::catch_up::{Skip, replay_kept};
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
            let behind = Behind { hub: hub.clone(), session, id, since_ms, finished: false };
            tokio::spawn(behind.replay(room, stall));
        }
    }
    Vec::new()
}

/// A session behind and its replay. Dropped before it finished (its task ended early), it
/// gives up, so the session never skips for good.
struct Behind {
    hub: Arc<Hub>,
    session: Arc<str>,
    /// Which time it fell behind (`Hub::fall_behind`).
    id: u64,
    since_ms: u64,
    finished: bool,
}

impl Behind {
    /// Replays to the session, in passes, until it is no longer behind.
    async fn replay(mut self, room: Room, stall: Duration) {
        let hub = self.hub.clone();
        let Some(link) = hub.cluster() else { return };
        // What this edge published reached the session here.
        let skip = Skip { node: Some(link.node().clone()), own_after: None };
        let low = (self.hub.high_water(Router::Edge) / 2).max(1);
        let (mut read, mut pause, mut stuck_since) = (0, PAUSE, None);
        loop {
            // Its connection takes what waits first (a closed one has nothing waiting).
            if !room.wait_below(low, stall).await {
                self.hub.close_stalled(&room);
            }
            if let Err(e) = self.pass(link, &skip, stall).await {
                metrics::counter!(m::CLUSTER_ERRORS, "op" => "replay").increment(1);
                tracing::warn!(session = %self.session, error = %e, "cannot replay to a session behind yet");
            }
            let mut step = self.hub.caught_up_behind(&self.session, self.id);
            while step == Some(BehindStep::Draining) {
                tokio::time::sleep(DRAIN).await;
                (read, pause, stuck_since) = (0, PAUSE, None);
                step = self.hub.caught_up_behind(&self.session, self.id);
            }
            // Done, gone, or behind anew since (with a replay of its own).
            let Some(BehindStep::Behind { replayed, .. }) = step else {
                self.finished = true;
                return;
            };
            if replayed > read {
                (read, pause, stuck_since) = (replayed, PAUSE, None);
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

    /// One pass: what the bus kept on the session's subscriptions from `since_ms` to now
    /// (`Hub::replay_routed`: the session takes what it missed), and moves `since_ms` on.
    async fn pass(&mut self, link: &ClusterLink, skip: &Skip, stall: Duration) -> Result<(), String> {
        let subjects: Vec<String> = self.hub.plain_filters(&self.session).iter().flat_map(|f| subjects_of(f)).collect();
        let newest = AtomicU64::new(self.since_ms);
        let (hub, session) = (&self.hub, &self.session);
        replay_kept(hub, link, &subjects, self.since_ms, skip, stall, |msg, at_ms| {
            newest.fetch_max(at_ms, Ordering::Relaxed);
            hub.replay_routed(session, msg, at_ms, now_ms())
        })
        .await?;
        self.since_ms = self.since_ms.max(newest.into_inner().saturating_sub(PASS_MARGIN_MS));
        Ok(())
    }
}

impl Drop for Behind {
    fn drop(&mut self) {
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
