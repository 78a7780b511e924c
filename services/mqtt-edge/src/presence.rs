//! Presence decided with the other edges (`broker::presence::PresenceDirectory`, Redis): a
//! user is online while a device of theirs is connected to any edge.
//!
//! The router says how many devices of each user this edge has ([`Effect::DevicesHere`]);
//! one task writes each count to the directory, in order, and gets the user's total over the
//! live edges before and after. The edge that sees the total leave 0 announces "online", the
//! one that sees it reach 0 announces "offline", each after `limits.presence_grace_secs` and
//! only if the directory still agrees then (a reconnect within the grace, here or on another
//! edge, announces nothing). The task heartbeats this edge into the directory; the devices of
//! an edge that stopped heartbeating are taken off by whichever edge reaps it, which announces
//! "offline" for the users left with none.
//!
//! [`Effect::DevicesHere`]: broker::router::Effect::DevicesHere

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::mpsc;

use broker::presence::{Announce, PresenceDirectory};

use crate::hub::Hub;
use crate::metrics as m;

/// How often this edge tells the directory it is alive.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// How long the directory counts this edge's devices after its last heartbeat.
const ALIVE_FOR: Duration = Duration::from_secs(15);
/// How long one directory call may take.
const TIMEOUT: Duration = Duration::from_secs(2);

/// This edge's side of shared presence, from any thread.
#[derive(Debug, Clone)]
pub struct SharedPresence {
    tx: mpsc::UnboundedSender<(Arc<str>, u32)>,
}

impl SharedPresence {
    /// Starts the task counting `hub`'s devices in `directory` as `node` (this edge's
    /// incarnation), announcing after `grace`.
    pub fn start(hub: Weak<Hub>, directory: Arc<dyn PresenceDirectory>, node: String, grace: Duration) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(Shared { hub, directory, node, grace }, rx));
        SharedPresence { tx }
    }

    /// This edge now has `devices` devices of the user whose presence topic is `topic`.
    pub fn report(&self, topic: Arc<str>, devices: u32) {
        let _ = self.tx.send((topic, devices));
    }
}

struct Shared {
    hub: Weak<Hub>,
    directory: Arc<dyn PresenceDirectory>,
    node: String,
    grace: Duration,
}

async fn run(shared: Shared, mut rx: mpsc::UnboundedReceiver<(Arc<str>, u32)>) {
    let shared = Arc::new(shared);
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    loop {
        tokio::select! {
            next = rx.recv() => match next {
                Some((topic, devices)) => shared.set(topic, devices).await,
                None => break,
            },
            _ = heartbeat.tick() => shared.heartbeat().await,
        }
        if shared.hub.strong_count() == 0 {
            break;
        }
    }
}

impl Shared {
    /// Writes one count; a change of the total from or to 0 is announced after the grace.
    async fn set(self: &Arc<Self>, topic: Arc<str>, devices: u32) {
        match crate::within(TIMEOUT, self.directory.set(&self.node, &topic, devices)).await {
            Ok((0, after)) if after > 0 => self.announce_later(topic, Announce::Online),
            Ok((before, 0)) if before > 0 => self.announce_later(topic, Announce::Offline),
            Ok(_) => {}
            Err(e) => {
                metrics::counter!(m::PRESENCE_ERRORS).increment(1);
                tracing::warn!(topic = %topic, error = %e, "cannot count a user's devices with the other edges");
            }
        }
    }

    /// Keeps this edge alive in the directory and announces "offline" for the users of edges
    /// that stopped.
    async fn heartbeat(self: &Arc<Self>) {
        match crate::within(TIMEOUT, self.directory.heartbeat(&self.node, ALIVE_FOR.as_millis() as u64)).await {
            Ok(orphaned) => {
                for topic in orphaned {
                    self.announce_later(topic.into(), Announce::Offline);
                }
            }
            Err(e) => {
                metrics::counter!(m::PRESENCE_ERRORS).increment(1);
                tracing::warn!(error = %e, "cannot heartbeat into the presence directory");
            }
        }
    }

    /// After the grace, announces `news` if the directory still agrees and it was not
    /// announced already.
    fn announce_later(self: &Arc<Self>, topic: Arc<str>, news: Announce) {
        let shared = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(shared.grace).await;
            match crate::within(TIMEOUT, shared.directory.announce(&topic, news)).await {
                Ok(true) => {
                    if let Some(hub) = shared.hub.upgrade() {
                        hub.announce_presence(&topic, news);
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    metrics::counter!(m::PRESENCE_ERRORS).increment(1);
                    tracing::warn!(topic = %topic, error = %e, "cannot announce presence");
                }
            }
        });
    }
}
