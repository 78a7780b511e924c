//! Shared subscriptions' QoS 1/2 messages through the bus's groups (`Bus::subscribe_group`).
//!
//! A queue group gives each message to one edge with members, and forgets it: if that edge
//! dies (or freezes until the bus gives up on it) before the message is in a member's session,
//! nothing else has it. So each edge with members of a shared subscription also joins the
//! subscription's group on the bus, which gives each kept (QoS 1/2) message to one member edge
//! and gives it again, elsewhere, unless that edge acknowledges it within `bus.share_ack_secs`.
//! An edge acknowledges once the message is routed here and durable where its session lives
//! (the journal, for a persistent member), and gives it back if it has no member any more.
//! Once a share's group is joined, its kept messages that come through the queue group are
//! left to the group; QoS 0 ones still come through the queue group only (the bus keeps none).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use bus::Bus;

use crate::cluster::Inbound;
use crate::journal::Durable;
use crate::metrics as m;

/// How long a member edge waits to join its group again after it failed or broke, doubled
/// after each failure in a row up to [`REJOIN_MAX`].
const REJOIN: Duration = Duration::from_secs(1);
const REJOIN_MAX: Duration = Duration::from_secs(30);

/// The shared subscriptions whose kept messages this edge takes through their group.
#[derive(Debug, Default)]
pub struct Grouped(Mutex<HashSet<Arc<str>>>);

impl Grouped {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<Arc<str>>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Kept messages for `share` come through its group.
    pub fn contains(&self, share: &str) -> bool {
        self.lock().contains(share)
    }

    /// This edge no longer has members of `share`.
    pub fn leave(&self, share: &str) {
        self.lock().remove(share);
    }
}

/// Joins `share`'s group (named `group`) for its kept messages on `filters`, and hands what it
/// takes to `inbound`, until aborted; joins again whenever the subscription breaks. Returns at
/// once if the bus keeps nothing (the queue group is all there is).
pub async fn member(
    bus: Arc<dyn Bus>,
    share: Arc<str>,
    group: String,
    filters: Vec<String>,
    wait: Duration,
    grouped: Arc<Grouped>,
    inbound: mpsc::Sender<Inbound>,
) {
    let mut rejoin = REJOIN;
    loop {
        match bus.subscribe_group(&group, &filters, wait).await {
            Ok(None) => return,
            Ok(Some(mut sub)) => {
                // From now on the group has every kept message for `share`: what the queue
                // group also brings is left to it (one that came both ways meanwhile is
                // delivered twice, as QoS 1 allows).
                grouped.lock().insert(share.clone());
                rejoin = REJOIN;
                while let Some(taken) = sub.next().await {
                    if taken.redelivered {
                        metrics::counter!(m::CLUSTER_GROUP_REDELIVERED).increment(1);
                    }
                    let msg = taken.message.clone();
                    let inbound_msg = Inbound { msg, share: Some(share.clone()), taken: Some(taken) };
                    if inbound.send(inbound_msg).await.is_err() {
                        return;
                    }
                }
                // Until it is joined again, kept messages come through the queue group (once
                // each, not made safe: a consumer made anew only has what comes after it).
                grouped.leave(&share);
                tracing::debug!(%group, "the bus group broke: joining again");
            }
            Err(e) => {
                metrics::counter!(m::CLUSTER_ERRORS, "op" => "group").increment(1);
                tracing::warn!(%group, error = %e, "cannot join the shared subscription's group on the bus");
            }
        }
        tokio::time::sleep(rejoin).await;
        rejoin = (rejoin * 2).min(REJOIN_MAX);
    }
}

/// Settles the messages of groups routed here, in the order they were routed: each is
/// acknowledged once what it changed is durable (the journal writes in that order too), or
/// given back if that fails or this edge has no member any more. One task for all, not one per
/// message.
#[derive(Debug, Clone)]
pub struct Acker(mpsc::UnboundedSender<(bus::Taken, Settle)>);

/// How a group's message is settled.
#[derive(Debug)]
enum Settle {
    /// Acknowledged once this (if any) is durable.
    After(Option<Durable>),
    GiveBack,
}

impl Acker {
    /// Starts the task; it ends once every clone is dropped.
    pub fn start() -> Acker {
        let (tx, mut rx) = mpsc::unbounded_channel::<(bus::Taken, Settle)>();
        tokio::spawn(async move {
            while let Some((taken, settle)) = rx.recv().await {
                let done = match settle {
                    Settle::After(Some(d)) => d.wait().await,
                    Settle::After(None) => true,
                    Settle::GiveBack => false,
                };
                let settled = if done { taken.done().await } else { taken.give_back().await };
                if let Err(e) = settled {
                    metrics::counter!(m::CLUSTER_ERRORS, "op" => "group-ack").increment(1);
                    tracing::debug!(error = %e, "cannot settle a shared subscription's message with the bus");
                }
            }
        });
        Acker(tx)
    }

    /// `taken` was routed here: acknowledged once `durable` (if any) is.
    pub fn acknowledge(&self, taken: bus::Taken, durable: Option<Durable>) {
        self.send(taken, Settle::After(durable));
    }

    /// `taken` is not for this edge (it has no member any more, or none with room): back to
    /// its group.
    pub fn give_back(&self, taken: bus::Taken) {
        self.send(taken, Settle::GiveBack);
    }

    /// `taken` was routed here for `share`: acknowledged once `durable` (if any) is, if this edge
    /// still has members of it, else given back.
    pub fn settle(&self, taken: bus::Taken, grouped: &Grouped, share: &str, durable: Option<Durable>) {
        match grouped.contains(share) {
            true => self.acknowledge(taken, durable),
            false => self.give_back(taken),
        }
    }

    fn send(&self, taken: bus::Taken, settle: Settle) {
        // Only fails once the task is gone (the edge left the bus): the bus gives it again.
        let _ = self.0.send((taken, settle));
    }
}
