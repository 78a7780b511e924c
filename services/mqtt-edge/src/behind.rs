//! A subscriber slower than what other edges route to it never holds up the others: the edge
//! reads the bus in one loop for every session here, so instead of waiting for a connection
//! with too much waiting (the session queue's mark, `Hub::high_water(Router::Edge)`), its
//! session falls behind (`broker::session::Session::fall_behind`). It skips, from then on, what
//! comes live that the bus keeps (QoS 1/2 messages of other edges), and this edge replays those
//! to it from the bus, in order, once its connection has room again, until the replay has
//! passed the last one it skipped; then it takes what comes live again.
//!
//! - The replay reads from a while before the session fell behind ([`MARGIN_MS`]: what it
//!   skipped may have waited in this edge's bus subscription), and each pass from about where
//!   the last ended; the session takes each message once (its catch-up, `broker::origins`).
//! - What this edge publishes reaches it here as ever, not through the bus.
//! - A session that moves to another edge while behind carries its catch-up there, whose
//!   replay gives it what it skipped (not necessarily in order with what comes live there).
//! - One whose connection stops reading is closed as before (`limits.max_stall_secs`); the
//!   replay goes on into its session if it outlives its connection.
//! - The bus keeps messages `bus.keep_secs`: a replay still behind after that gives up
//!   (`hermes_edge_behind_given_up_total`); what it had not replayed is lost to that session.
//! - Without a bus that keeps messages, or for a shared subscription's messages (the group on
//!   the bus gives them), the loop waits for room as before.

use std::sync::Arc;
use std::time::Duration;

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

/// How long a pass that found nothing new waits before the next (what the session skipped is
/// not on the bus's stream yet).
const PAUSE: Duration = Duration::from_millis(50);

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
        if let Some((session, catch_up)) = hub.fall_behind(room.link_id, &me) {
            metrics::counter!(m::SESSIONS_BEHIND).increment(1);
            tracing::info!(session = %session, backlog = room.backlog(), "a session fell behind: replaying to it from the bus");
            let behind = Behind { hub: hub.clone(), session, catch_up, since_ms: now_ms().saturating_sub(MARGIN_MS) };
            tokio::spawn(behind.replay(room, stall));
        }
    }
    Vec::new()
}

/// A session behind and its replay. Dropped before it caught up (its task ended early), it
/// gives up, so the session never skips for good.
struct Behind {
    hub: Arc<Hub>,
    session: Arc<str>,
    catch_up: u64,
    since_ms: u64,
}

impl Behind {
    /// Replays to the session, in passes, until it is no longer behind.
    async fn replay(mut self, room: Room, stall: Duration) {
        let hub = self.hub.clone();
        let Some(link) = hub.cluster() else { return };
        let began = now_ms();
        let kept_for = u64::try_from(link.kept().1.as_millis()).unwrap_or(u64::MAX);
        // What this edge published reached the session here.
        let skip = Skip { node: Some(link.node().clone()), own_after: None };
        let low = (self.hub.high_water(Router::Edge) / 2).max(1);
        loop {
            // Its connection takes what waits first (a closed one has nothing waiting).
            if !room.wait_below(low, stall).await {
                self.hub.close_stalled(&room);
            }
            let took = match self.pass(link, &skip, stall).await {
                Ok(took) => took,
                Err(e) => {
                    metrics::counter!(m::CLUSTER_ERRORS, "op" => "replay").increment(1);
                    tracing::warn!(session = %self.session, error = %e, "cannot replay to a session behind yet");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    0
                }
            };
            match self.hub.caught_up_behind(&self.session, self.catch_up, false) {
                Some(false) => {}
                // Caught up, gone, or behind anew since (with a replay of its own).
                _ => return,
            }
            if now_ms().saturating_sub(began) > kept_for {
                // Dropped: gives up.
                return;
            }
            if took == 0 {
                tokio::time::sleep(PAUSE).await;
            }
        }
    }

    /// One pass: what the bus kept on the session's subscriptions from `since_ms` to now;
    /// returns how many it took, and moves `since_ms` on.
    async fn pass(&mut self, link: &ClusterLink, skip: &Skip, stall: Duration) -> Result<u64, String> {
        let subjects: Vec<String> = self.hub.plain_filters(&self.session).iter().flat_map(|f| subjects_of(f)).collect();
        let newest = std::sync::atomic::AtomicU64::new(self.since_ms);
        let (hub, session) = (&self.hub, &self.session);
        let took = replay_kept(hub, link, &subjects, self.since_ms, skip, stall, |msg, at_ms| {
            newest.fetch_max(at_ms, std::sync::atomic::Ordering::Relaxed);
            hub.replay_routed(session, msg, at_ms, now_ms())
        })
        .await?;
        self.since_ms = self.since_ms.max(newest.into_inner().saturating_sub(PASS_MARGIN_MS));
        Ok(took)
    }
}

impl Drop for Behind {
    fn drop(&mut self) {
        if self.hub.caught_up_behind(&self.session, self.catch_up, true) == Some(true) {
            metrics::counter!(m::BEHIND_GIVEN_UP).increment(1);
            tracing::warn!(session = %self.session, "gave up replaying to a session behind: it may have missed messages");
        }
    }
}
