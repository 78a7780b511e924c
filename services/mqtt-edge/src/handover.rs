//! Sessions moving between edges: a client that connects to edge B with a session edge A holds
//! takes it over (MQTT: the newest connection of a client id wins, here across edges).
//!
//! Before B's router registers the connection, B *claims* the session in the owners registry
//! (`broker::owners`, Redis), which answers with the previous owner. If that is another edge,
//! B asks it on the bus (`hermes.node.<A>.handover`); A's router hands the session over (its
//! connection is closed with v5 0x8E) and A answers with the session's state, which B's router
//! continues. Claims of one session on one edge are taken one at a time; a handover request
//! waits for a claim of the same session in progress here only if that claim came first
//! (claims are numbered by the registry), so concurrent takeovers settle on the last claimer
//! and never wait on each other.
//!
//! An edge that is gone (nobody takes its handover subject: NATS says so at once) or does not
//! answer within [`HANDOVER_TIMEOUT`] hands nothing over; the connecting edge then loads the
//! session from the journal (see `journal`), where a persistent session's every change was
//! written before anything it caused was acknowledged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use tokio::sync::oneshot;

use broker::owners::SessionOwners;
use broker::session::SessionSnapshot;
use bus::Bus;
use wire::pb;

use crate::cluster::NodeName;
use crate::hub::Hub;
use crate::message::{SharedMessage, now_ms};
use crate::metrics as m;
use crate::stored::{snapshot_from, state_of};

/// How long a claim waits for the previous edge to hand the session over.
pub const HANDOVER_TIMEOUT: Duration = Duration::from_secs(2);

/// The subject edge `node` takes handover requests on.
fn handover_subject(node: &str) -> String {
    format!("hermes.node.{}.handover", wire::subjects::token(node))
}

/// The subject edge `node` takes answers to its own requests on.
fn reply_subject(node: &NodeName) -> String {
    format!("hermes.node.{}.{}.reply", wire::subjects::token(&node.id), node.incarnation)
}

/// One edge's side of moving sessions.
#[derive(Debug)]
pub struct Handover {
    node: NodeName,
    /// `node` as the owners registry names it ([`NodeName::registered`]).
    registered: String,
    bus: Arc<dyn Bus>,
    owners: Arc<dyn SessionOwners>,
    next_request: AtomicU64,
    waiting: Mutex<HashMap<u64, oneshot::Sender<pb::HandoverReply>>>,
    /// Sessions being claimed here, one claim at a time each.
    busy: Mutex<HashMap<String, Arc<Slot>>>,
    /// The tasks reading this edge's subjects ([`Handover::leave`] ends them).
    listening: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Whether the owners registry took this edge's last heartbeat (`adopt::run`).
    registry_answers: std::sync::atomic::AtomicBool,
}

/// One session's claims on this edge.
#[derive(Debug)]
struct Slot {
    turn: Arc<tokio::sync::Mutex<()>>,
    /// The number of the claim holding the turn; `u64::MAX` while the turn is free or the
    /// registry has not answered yet (the claim may have been numbered already: a request
    /// waits until this edge knows).
    version: AtomicU64,
}

/// A claimed session, with what the previous edge handed over; dropping it lets a handover
/// request for the session go on (drop it once the router has the connection).
#[derive(Debug)]
pub struct Claim {
    pub resumed: Option<SessionSnapshot<SharedMessage>>,
    /// Whether the registry has this edge as the owner now; not if it could not be reached
    /// (another edge may hold the session, live: nothing may connect it here).
    pub recorded: bool,
    _turn: Option<Turn>,
}

#[derive(Debug)]
struct Turn {
    slot: Arc<Slot>,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.slot.version.store(u64::MAX, Ordering::SeqCst);
    }
}

impl Handover {
    /// Takes handover requests and answers for this edge from `bus`.
    pub async fn start(
        hub: Arc<Hub>,
        bus: Arc<dyn Bus>,
        owners: Arc<dyn SessionOwners>,
        node: NodeName,
    ) -> Result<Arc<Handover>, String> {
        let me = Arc::new(Handover {
            registered: node.registered(),
            node,
            bus,
            owners,
            next_request: AtomicU64::new(1),
            waiting: Mutex::new(HashMap::new()),
            busy: Mutex::new(HashMap::new()),
            listening: Mutex::new(Vec::new()),
            registry_answers: std::sync::atomic::AtomicBool::new(true),
        });
        let mut requests = me.bus.subscribe(&handover_subject(&me.node.id)).await.map_err(|e| format!("bus: {e}"))?;
        let mut replies = me.bus.subscribe(&reply_subject(&me.node)).await.map_err(|e| format!("bus: {e}"))?;
        let answering = me.clone();
        let answer = tokio::spawn(async move {
            while let Some(m) = requests.next().await {
                let Ok(req) = pb::HandoverRequest::decode(m.payload) else {
                    metrics::counter!(m::CLUSTER_ERRORS, "op" => "decode").increment(1);
                    continue;
                };
                let (me, hub) = (answering.clone(), hub.clone());
                tokio::spawn(async move { me.answer(&hub, req).await });
            }
        });
        let collecting = Arc::downgrade(&me);
        let collect = tokio::spawn(async move {
            while let Some(m) = replies.next().await {
                let Some(me) = collecting.upgrade() else { return };
                if let Ok(reply) = pb::HandoverReply::decode(m.payload)
                    && let Some(tx) = me.lock_waiting().remove(&reply.request_id)
                {
                    let _ = tx.send(reply);
                }
            }
        });
        me.listening.lock().unwrap_or_else(|e| e.into_inner()).extend([answer, collect]);
        Ok(me)
    }

    /// Stops reading this edge's subjects: to the other edges it is gone from the bus (an edge
    /// stopped in a process that goes on, as in tests; a process that exits leaves anyway).
    pub fn leave(&self) {
        for task in self.listening.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            task.abort();
        }
    }

    fn lock_waiting(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<pb::HandoverReply>>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn slot(&self, session: &str) -> Arc<Slot> {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        // Forget the slots nobody holds or waits for.
        busy.retain(|_, s| Arc::strong_count(s) > 1);
        busy.entry(session.to_owned())
            .or_insert_with(|| Arc::new(Slot { turn: Arc::default(), version: AtomicU64::new(u64::MAX) }))
            .clone()
    }

    /// Makes this edge the owner of `session` and, if another edge held it, takes it from
    /// there (its state only if `want_state`: a clean start discards it).
    pub async fn claim(&self, session: &str, want_state: bool) -> Claim {
        let slot = self.slot(session);
        let guard = slot.turn.clone().lock_owned().await;
        let turn = Turn { slot: slot.clone(), _guard: guard };
        let claimed = match self.owners.claim(session, &self.registered).await {
            Ok(c) => c,
            Err(e) => {
                metrics::counter!(m::CLUSTER_ERRORS, "op" => "claim").increment(1);
                tracing::warn!(error = %e, "cannot record the session's owner");
                return Claim { resumed: None, recorded: false, _turn: Some(turn) };
            }
        };
        slot.version.store(claimed.version, Ordering::SeqCst);
        let resumed = match claimed.previous.filter(|p| *p != self.registered) {
            Some(from) => self.ask(&from, session, claimed.version, !want_state).await.filter(|_| want_state),
            None => None,
        };
        Claim { resumed, recorded: true, _turn: Some(turn) }
    }

    /// Makes this edge the owner of `session` if `from` (a dead node) still owns it; `None`
    /// if it does not (its client came back elsewhere first, or it ended). Like a claim, the
    /// answer keeps handover requests for the session waiting until it is dropped.
    pub async fn claim_from(&self, session: &str, from: &str) -> Result<Option<Claim>, String> {
        let slot = self.slot(session);
        let guard = slot.turn.clone().lock_owned().await;
        let turn = Turn { slot: slot.clone(), _guard: guard };
        let Some(claimed) = self.owners.claim_from(session, &self.registered, from).await? else {
            return Ok(None);
        };
        slot.version.store(claimed.version, Ordering::SeqCst);
        Ok(Some(Claim { resumed: None, recorded: true, _turn: Some(turn) }))
    }

    /// Whether node `node` (as the owners registry names it) is gone from the bus: nobody
    /// takes the answers to its own requests, which only that incarnation does while it runs.
    pub async fn is_gone(&self, node: &str) -> bool {
        let subject = reply_subject(&NodeName::from_registered(node));
        matches!(self.bus.publish_to_present(&subject, Bytes::new()).await, Err(bus::BusError::NoSubscriber(_)))
    }

    /// Whether the owners registry took this edge's last heartbeat: how an edge with nothing
    /// to write to Redis learns that Redis does not answer.
    pub fn registry_answers(&self) -> bool {
        self.registry_answers.load(Ordering::Relaxed)
    }

    pub(crate) fn heard_from_registry(&self, answered: bool) {
        self.registry_answers.store(answered, Ordering::Relaxed);
    }

    /// The registry of session owners this edge claims in.
    pub fn owners(&self) -> &Arc<dyn SessionOwners> {
        &self.owners
    }

    /// This edge as the owners registry names it.
    pub fn registered(&self) -> &str {
        &self.registered
    }

    /// Asks edge `from` for `session`.
    async fn ask(
        &self,
        from: &str,
        session: &str,
        version: u64,
        starts_afresh: bool,
    ) -> Option<SessionSnapshot<SharedMessage>> {
        let request_id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.lock_waiting().insert(request_id, tx);
        let req = pb::HandoverRequest {
            session: session.to_owned(),
            request_id,
            reply_to: reply_subject(&self.node),
            version,
            starts_afresh,
        };
        let subject = handover_subject(&NodeName::from_registered(from).id);
        let sent = self.bus.publish_to_present(&subject, Bytes::from(req.encode_to_vec()));
        let reply = tokio::time::timeout(HANDOVER_TIMEOUT, async {
            let mut rx = rx;
            tokio::select! {
                r = &mut rx => Some(r),
                sent = sent => match sent {
                    // The edge is gone (killed): what it held is in the journal, if anywhere.
                    Err(bus::BusError::NoSubscriber(_)) => None,
                    other => {
                        if let Err(e) = other {
                            tracing::warn!(error = %e, from, "cannot ask for a session");
                        }
                        Some(rx.await)
                    }
                },
            }
        })
        .await;
        self.lock_waiting().remove(&request_id);
        match reply {
            Ok(Some(Ok(r))) if r.found => {
                metrics::counter!(m::SESSIONS_MOVED, "way" => "in").increment(1);
                r.state.and_then(snapshot_from)
            }
            Ok(None) => {
                metrics::counter!(m::CLUSTER_ERRORS, "op" => "handover_gone").increment(1);
                tracing::info!(from, "the edge that held the session is gone");
                None
            }
            Ok(_) => None,
            Err(_) => {
                metrics::counter!(m::CLUSTER_ERRORS, "op" => "handover_timeout").increment(1);
                tracing::warn!(from, "the edge that held the session did not answer: starting afresh");
                None
            }
        }
    }

    /// Hands `req.session` over: after this edge's own claim of it, if that came first.
    async fn answer(&self, hub: &Hub, req: pb::HandoverRequest) {
        let slot = self.slot(&req.session);
        let turn = loop {
            // No claim here: hand over what is here, keeping claims out meanwhile.
            if let Ok(free) = slot.turn.try_lock() {
                break Some(free);
            }
            match slot.version.load(Ordering::SeqCst) {
                // Claimed here, its number not known yet: it may come before or after this one.
                u64::MAX => tokio::time::sleep(Duration::from_millis(1)).await,
                // This edge's claim came first: it finishes, then this hands over. Not in line
                // for the turn: a later claim here may take it first (numbered after the
                // asker's, it must not be waited for: it may be waiting for the asker's edge).
                mine if mine < req.version => tokio::time::sleep(Duration::from_millis(1)).await,
                // The asker's claim came first: it gets what is here now.
                _ => break None,
            }
        };
        let state =
            hub.hand_over(&req.session, req.starts_afresh, now_ms()).map(|(snap, expiry)| state_of(snap, expiry));
        drop(turn);
        // What this edge wrote of the session lands before the new edge writes it.
        if let Some(journal) = hub.journal() {
            journal.flush().await;
        }
        if state.is_some() {
            metrics::counter!(m::SESSIONS_MOVED, "way" => "out").increment(1);
        }
        let mut reply = pb::HandoverReply { request_id: req.request_id, found: state.is_some(), state }.encode_to_vec();
        if self.bus.max_payload().is_some_and(|max| reply.len() > max) {
            // More than the bus carries: the asker reads the journal at once, where a session
            // that outlives its connection is whole (one that does not starts afresh).
            metrics::counter!(m::CLUSTER_ERRORS, "op" => "handover_too_large").increment(1);
            tracing::info!(bytes = reply.len(), "a session too large for the bus: its next edge reads the journal");
            reply = pb::HandoverReply { request_id: req.request_id, found: false, state: None }.encode_to_vec();
        }
        if let Err(e) = self.bus.publish(&req.reply_to, Bytes::from(reply)).await {
            tracing::warn!(error = %e, "cannot answer a handover request");
        }
    }

    /// The session ended here: nobody needs to ask this edge for it any more.
    pub async fn release(&self, session: &str) {
        if let Err(e) = self.owners.release(session, &self.registered).await {
            tracing::debug!(error = %e, "cannot release a session's owner record");
        }
    }
}
