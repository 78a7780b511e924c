//! Account events from the bus, applied to this edge (design §2, flow 4): relation changes
//! re-authorize live sessions, disabled users and revoked tokens close connections (v5 0x98) and
//! refuse those tokens from then on, new signatures are published retained, and an
//! enterprise's new ACL or auto-subscribe tables apply to its connected users at once.

use std::sync::Arc;

use broker::QoS;
use broker::relations::RelationStore;
use bus::{Bus, BusError, Subscription};
use ntex_bytes::{ByteString, Bytes};
use prost::Message as _;
use wire::pb::{AccountEvent, account_event::Event};

use crate::message::{Message, now_ms};
use crate::metrics as m;
use crate::server::EdgeShared;

/// Applies account events to one edge.
#[derive(Debug, Clone)]
pub struct AccountEvents {
    pub(crate) shared: Arc<EdgeShared>,
}

impl AccountEvents {
    /// Subscribes to every enterprise's account events on `bus` and applies them until the bus
    /// goes away. Subscribed when this returns: no event published afterwards is missed, also
    /// while the edge is cut off from NATS (JetStream keeps them; it catches up on reconnect).
    pub async fn follow(self, bus: &dyn Bus) -> Result<tokio::task::JoinHandle<()>, BusError> {
        let durable =
            bus.subscribe_durable(wire::subjects::ACCOUNT_EVENTS_STREAM, wire::subjects::ALL_ACCOUNT_EVENTS).await;
        let mut sub: Subscription = match durable {
            Ok(sub) => sub,
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "no JetStream on the bus: account events published while this edge is cut off from NATS will be missed"
                );
                bus.subscribe(wire::subjects::ALL_ACCOUNT_EVENTS).await?
            }
        };
        Ok(tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                match AccountEvent::decode(msg.payload) {
                    Ok(event) => self.apply(&event),
                    Err(e) => {
                        metrics::counter!(m::ACCOUNT_EVENTS, "kind" => "invalid").increment(1);
                        tracing::warn!(subject = %msg.subject, error = %e, "undecodable account event");
                    }
                }
            }
        }))
    }

    pub fn apply(&self, event: &AccountEvent) {
        let eid = event.enterprise_id.as_str();
        let Some(e) = &event.event else { return };
        let kind = match e {
            Event::UserCreated(_) => "user_created",
            Event::RelationChanged(r) => {
                self.shared.relations.set_follow(eid, &r.follower, &r.followee, r.following);
                self.reauthorize(eid, Some(&[&r.follower, &r.followee]));
                "relation_changed"
            }
            // Disabling refuses every token issued up to that instant.
            Event::UserDisabled(u) => {
                self.revoke(eid, &u.user_id, "", event.timestamp_ms.saturating_add(1));
                "user_disabled"
            }
            Event::TokenRevoked(t) => {
                self.revoke(eid, &t.user_id, &t.session_id, t.issued_before_ms);
                "token_revoked"
            }
            Event::ProfileChanged(p) => {
                if p.signature_changed {
                    self.publish_signature(eid, &p.username, &p.signature);
                }
                "profile_changed"
            }
            Event::GroupMembershipChanged(g) => {
                self.shared.relations.set_member(eid, &g.group, &g.username, g.member);
                self.reauthorize(eid, Some(&[&g.username]));
                "group_membership_changed"
            }
            Event::AclChanged(a) => {
                match self.shared.authz.set_policy(eid, a.version, &a.acl_rules, &a.auto_subscribe) {
                    Ok(true) => self.reauthorize(eid, None),
                    Ok(false) => tracing::debug!(enterprise = %eid, version = a.version, "older ACL tables ignored"),
                    Err(e) => tracing::error!(enterprise = %eid, error = %e, "account event carries invalid tables"),
                }
                "acl_changed"
            }
        };
        metrics::counter!(m::ACCOUNT_EVENTS, "kind" => kind).increment(1);
    }

    fn reauthorize(&self, enterprise: &str, users: Option<&[&str]>) {
        self.shared.hub.reauthorize(&self.shared.authz, enterprise, users, now_ms());
    }

    /// Revokes the user's tokens issued before `before_ms`: all of them, or one `session`'s.
    fn revoke(&self, enterprise: &str, user_id: &str, session: &str, before_ms: i64) {
        self.shared.auth.revoke(enterprise, user_id, session, before_ms);
        let closed = self.shared.hub.close_user(enterprise, user_id, session, before_ms);
        tracing::info!(enterprise, user_id, session, closed, "tokens revoked");
    }

    /// The signature, retained on `{eid}/im/sig/{username}` (empty clears it).
    fn publish_signature(&self, enterprise: &str, username: &str, signature: &str) {
        let safe = broker::acl::safe_value;
        if !(safe(enterprise) && safe(username)) {
            return;
        }
        let topic = ByteString::from(format!("{enterprise}/im/sig/{username}"));
        let msg = Message::new(topic, Bytes::copy_from_slice(signature.as_bytes()), QoS::AtLeastOnce, true);
        self.shared.hub.publish(Arc::new(msg), None, now_ms());
    }
}
