//! The wills of the connections of an edge that dies are sent by a live edge.
//!
//! While a connection with a will is open, its edge keeps the will in the session journal
//! under its own name (`Write::Will`, keyed by the connection's link; gone when the connection
//! ends, unless the will then waits for its delay: it stays, with when it falls due, until it
//! is sent or cancelled, `Hub::forget_waiting_will`). An edge killed or stopped leaves them
//! there:
//! - in a cluster, the live edge that takes the dead edge's sessions (`adopt`) sends them
//!   ([`send_left`]), then forgets them;
//! - a node alone on its journal, without a bus (`hermes up` on its data directory, or on a
//!   Redis of its own), sends, when it starts, those its earlier runs left
//!   ([`send_left_by_earlier_runs`]; on Redis, those of its id's earlier runs).
//!
//! A will goes out as if its connection had just ended (`Router::lost_will`), or when it fell
//! due if its connection had ended: at once without a delay, after its delay otherwise, unless
//! its client came back meanwhile (to this edge, or to another before the dead edge was found
//! out: [`Owners`]); its delay ends with its session. Its owner is checked as for any will
//! (ACL, with the owner's relations loaded first as at CONNECT; retained quota), and for
//! tokens revoked since ([`Checks`]). One that then waits here is kept in the journal under
//! this edge's name, so a second death does not lose it. The dead edge is forgotten only once
//! its wills are handed to the router and forgotten: an edge that dies before that leaves them
//! to the next one to take the dead edge (at least once).
//!
//! A write of the journal that fails may take a will, or the end of one, with it: once the
//! journal works again the edge writes its wills whole (`Hub::write_wills_again_if_lost`,
//! within a second). Not covered: what a Redis failover loses without `state.redis_wait_replicas`;
//! the wills of a lone edge on Redis without a bus whose id changes across runs (an
//! `mqtt-edge` without `bus.node_id`) are kept but never sent; a waiting will sent just
//! before its edge dies may be sent again (at least once); the
//! registry says where a session is, not since when nor how it was claimed, so a delayed will
//! whose client came back to another edge before the dead one was found out is not sent even
//! if it came back after the will fell due, or with a clean start (which ends the session).

use std::collections::HashSet;
use std::sync::Arc;

use broker::owners::SessionOwners;
use broker::relations::{MemoryRelations, RelationDirectory};

use prost::Message as _;

use crate::auth::{Identity, Revocations};
use crate::hub::Hub;
use crate::message::{SharedMessage, now_ms};
use crate::metrics as m;
use wire::pb;

/// A will as the journal keeps it, with whose connection it was.
pub type LostWill = broker::router::LostWill<SharedMessage, Arc<Identity>>;

/// `lost` as the journal keeps it.
pub fn encode(lost: &LostWill) -> Vec<u8> {
    let o = &*lost.owner;
    pb::ConnectionWill {
        session: lost.session.to_string(),
        client_id: lost.client_id.to_string(),
        message: Some(crate::cluster::encode_message(&lost.will.message)),
        delay_secs: lost.will.delay_secs,
        owner: Some(pb::WillOwner {
            username: o.username.clone(),
            enterprise: o.enterprise.clone(),
            user_id: o.user_id.clone(),
            via_token: o.via_token,
            issued_at_ms: o.issued_at_ms,
            anonymous: o.anonymous,
            session_id: o.session_id.clone(),
        }),
        session_expiry_secs: lost.session_expiry_secs,
        due_ms: lost.due_ms.unwrap_or(0),
    }
    .encode_to_vec()
}

/// The will `bytes` hold; `None` if they hold none this edge can read.
pub fn decode(bytes: &[u8]) -> Option<LostWill> {
    let w = pb::ConnectionWill::decode(bytes).ok()?;
    let message = crate::cluster::decode_message(w.message?)?;
    let o = w.owner?;
    let owner = Identity {
        username: o.username,
        enterprise: o.enterprise,
        user_id: o.user_id,
        via_token: o.via_token,
        issued_at_ms: o.issued_at_ms,
        anonymous: o.anonymous,
        session_id: o.session_id,
    };
    Some(LostWill {
        session: w.session.into(),
        client_id: w.client_id.into(),
        owner: Arc::new(owner),
        will: broker::router::Will { message: Arc::new(message), delay_secs: w.delay_secs },
        session_expiry_secs: w.session_expiry_secs,
        due_ms: (w.due_ms != 0).then_some(w.due_ms),
    })
}

/// Where sessions are now, in a cluster: a delayed will of a session a connection claimed
/// since the edge died is not sent (its client came back, here or to another edge).
pub struct Owners<'a> {
    pub registry: &'a Arc<dyn SessionOwners>,
    /// This edge, as the registry names it.
    pub me: &'a str,
    /// The sessions this edge took from the dead one (it owns them without their clients).
    pub taken: &'a HashSet<Arc<str>>,
}

impl Owners<'_> {
    /// Whether `session`'s client came back since `dead` died: another edge owns it, or this
    /// one does without having taken it from `dead`.
    async fn came_back(&self, session: &str, dead: &str) -> Result<bool, String> {
        Ok(match self.registry.owner(session).await? {
            Some(o) if o == self.me => !self.taken.contains(session),
            Some(o) => o != dead,
            None => false,
        })
    }
}

/// What a will's owner is checked against before the will goes out for an edge that died,
/// besides the ACL and the retained quota the router asks.
#[derive(Clone)]
pub struct Checks {
    /// Tokens revoked since: their owners' wills are not sent.
    pub revocations: Revocations,
    /// Where a token owner's relations are loaded from first, as at CONNECT: the ACL's
    /// relation rules (`%g`, friends) see them on this edge too.
    pub directory: Option<Arc<dyn RelationDirectory>>,
    pub relations: Arc<MemoryRelations>,
}

/// Sends the wills `node` (a dead edge, as the registries name it) left in the journal, then
/// forgets them; returns how many went to the router. Not those of owners whose tokens were
/// revoked since, nor delayed ones whose clients came back since, to any edge (`owners`).
pub async fn send_left(hub: &Hub, checks: &Checks, node: &str, owners: Option<Owners<'_>>) -> Result<usize, String> {
    let Some(journal) = hub.journal() else { return Ok(0) };
    let left = journal.wills(node).await?;
    if left.is_empty() {
        return Ok(0);
    }
    let mut wills = Vec::with_capacity(left.len());
    let mut loaded = HashSet::new();
    for (link, bytes) in left {
        let Some(w) = decode(&bytes) else {
            tracing::warn!(node, link, "the journal holds a will this edge cannot read");
            continue;
        };
        if checks.revocations.has_revoked(&w.owner) {
            metrics::counter!(m::WILLS_REFUSED).increment(1);
            tracing::info!(client_id = %w.client_id, "a dead edge's will not sent: its owner's tokens were revoked");
            continue;
        }
        if let Some(o) = owners.as_ref().filter(|_| w.waits()) {
            match o.came_back(&w.session, node).await {
                Ok(true) => continue,
                Ok(false) => {}
                // Sent: better than lost, if its client is back elsewhere.
                Err(e) => {
                    tracing::warn!(client_id = %w.client_id, error = %e, "cannot tell whether a dead edge's client came back")
                }
            }
        }
        if w.owner.via_token && loaded.insert((w.owner.enterprise.clone(), w.owner.username.clone())) {
            crate::ingress::load_relations_from(checks.directory.as_ref(), &checks.relations, &w.owner).await;
        }
        wills.push(w);
    }
    let sent = wills.len();
    hub.lost_wills(wills, now_ms());
    journal.forget_wills(node).await?;
    if sent > 0 {
        tracing::info!(node, wills = sent, "sending the wills of a dead edge's connections");
    }
    Ok(sent)
}

/// For a node alone on its journal, without a registry of live nodes (no bus): sends the wills
/// its earlier runs left, as [`send_left`] — on a journal only it writes, those of any other
/// name than its own; on a shared one (Redis), those of its id's earlier runs, which it
/// records there (`SessionJournal::runs`: only with an id that was set, `stable_id`, so the
/// same across runs, as `bus.node_id` or `hermes up`'s data directory keeps it; and only
/// without a bus: edges on one take a dead edge's wills by the registry of live ones). One
/// process per node id. Call before clients come.
pub async fn send_left_by_earlier_runs(hub: &Hub, checks: &Checks, stable_id: bool) -> Result<usize, String> {
    let Some(journal) = hub.journal() else { return Ok(0) };
    let mut sent = 0;
    if journal.is_shared() {
        if !stable_id || hub.cluster().is_some() {
            return Ok(0);
        }
        for run in journal.earlier_runs().await? {
            sent += send_left(hub, checks, &run, None).await?;
            journal.forget_run(&run).await?;
        }
        return Ok(sent);
    }
    let me = journal.node();
    for node in journal.will_nodes().await?.into_iter().filter(|n| *n != me) {
        sent += send_left(hub, checks, &node, None).await?;
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;
    use broker::QoS;

    #[test]
    fn a_will_reads_back_as_written() {
        let mut message =
            Message::new("u/1/status".into(), ntex_bytes::Bytes::from_static(b"gone"), QoS::AtLeastOnce, true);
        message.expires_at_ms = Some(u64::MAX);
        let owner = Identity {
            username: "alice".into(),
            enterprise: "e1".into(),
            user_id: "u1".into(),
            via_token: true,
            issued_at_ms: i64::MAX,
            anonymous: false,
            session_id: "s1".into(),
        };
        for (delay_secs, session_expiry_secs, due_ms) in
            [(0, 0, None), (1, 1, Some(1)), (u32::MAX, u32::MAX, Some(u64::MAX))]
        {
            let lost = LostWill {
                session: "t:e1/u1/phone".into(),
                client_id: "phone".into(),
                owner: Arc::new(owner.clone()),
                will: broker::router::Will { message: Arc::new(message.clone()), delay_secs },
                session_expiry_secs,
                due_ms,
            };
            let back = decode(&encode(&lost)).expect("decodes");
            assert_eq!((&*back.session, &*back.client_id, &*back.owner), ("t:e1/u1/phone", "phone", &owner));
            assert_eq!(
                (back.will.delay_secs, back.session_expiry_secs, back.due_ms),
                (delay_secs, session_expiry_secs, due_ms)
            );
            let m = &back.will.message;
            assert_eq!(
                (&*m.topic, &m.payload[..], m.qos, m.retain, m.expires_at_ms),
                ("u/1/status", &b"gone"[..], QoS::AtLeastOnce, true, Some(u64::MAX))
            );
        }
        assert!(decode(b"\xff\xff").is_none(), "garbage is no will");
        assert!(decode(&[]).is_none(), "an empty record holds no message");
    }
}
