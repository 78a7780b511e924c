//! A session resumed from the journal of a dead edge catches up on what was routed to that edge
//! after it died (or while it was dying): the QoS 1/2 messages edges route to each other are
//! also kept on the bus for `bus.keep_secs` (`cluster::send_out`), and the edge that resumes the
//! session replays those its subscriptions match, from when each subscription began.
//!
//! - The replay starts once this edge's interest in the session's filters is in place on the
//!   bus ([`ClusterLink::settled`]), and reads what the bus kept up to then: anything later
//!   comes live.
//! - Messages the dead edge published itself are skipped: it acknowledged none before its
//!   sessions had them in the journal.
//! - The router gives each message once, whichever path brings it first, and never one the
//!   journal had (`broker::origins`).

use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;

use broker::SubOptions;
use wire::pb;

use crate::cluster::{ClusterLink, NodeName, Origins, decode_message, subjects_of};
use crate::hub::Hub;
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
}

/// Replays to `resumed.session` what the bus kept that it missed, then ends its catch-up.
pub async fn run(hub: Arc<Hub>, link: &ClusterLink, resumed: Resumed, stall: Duration) {
    let replayed = replay(&hub, link, &resumed, stall).await;
    hub.caught_up(&resumed.session);
    match replayed {
        Ok(0) => {}
        Ok(n) => tracing::info!(session = %resumed.session, messages = n, "a resumed session caught up"),
        Err(e) => {
            metrics::counter!(m::CLUSTER_ERRORS, "op" => "replay").increment(1);
            tracing::warn!(session = %resumed.session, error = %e, "cannot replay what a resumed session missed");
        }
    }
}

/// The replay; returns how many messages the session took.
async fn replay(hub: &Hub, link: &ClusterLink, resumed: &Resumed, stall: Duration) -> Result<u64, String> {
    let (bus, kept_for) = link.kept();
    // Shared subscriptions are left out: their messages went to another member.
    let plain: Vec<&(String, SubOptions)> =
        resumed.subscriptions.iter().filter(|(f, _)| !f.starts_with("$share/")).collect();
    if kept_for.is_zero() || plain.is_empty() {
        return Ok(0);
    }
    let subjects: Vec<String> = plain.iter().flat_map(|(f, _)| subjects_of(f)).collect();
    let oldest_kept = now_ms().saturating_sub(u64::try_from(kept_for.as_millis()).unwrap_or(u64::MAX));
    let since = plain.iter().map(|(_, o)| o.since_ms).min().unwrap_or(0).max(oldest_kept);
    link.settled().await;
    let mut replay = bus.replay_kept(&subjects, since).await.map_err(|e| e.to_string())?;
    let mut origins = Origins::default();
    let mut taken = 0;
    while let Some(kept) = replay.next().await {
        let kept = kept.map_err(|e| e.to_string())?;
        let Ok(routed) = pb::RoutedMessage::decode(kept.payload) else {
            continue;
        };
        if resumed.holder.as_ref().is_some_and(|h| h.id == routed.origin && h.incarnation == routed.incarnation) {
            continue;
        }
        let origin = origins.of(&routed);
        let Some(mut msg) = decode_message(routed) else {
            continue;
        };
        msg.origin = Some(origin);
        let routed = hub.replay_routed(&resumed.session, Arc::new(msg), kept.at_ms, now_ms());
        if routed.sessions > 0 {
            taken += 1;
            metrics::counter!(m::CLUSTER_REPLAYED).increment(1);
        }
        crate::flow::wait_for_room(hub, routed.pressure, stall).await;
    }
    Ok(taken)
}
