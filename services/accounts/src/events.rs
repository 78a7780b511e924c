//! Account events onto the bus (design §2): every change other services must know about is
//! published as a protobuf `AccountEvent` on `hermes.account.<enterprise>`, after it is stored.

use std::sync::Arc;

use bus::Bus;
use prost::Message as _;
use wire::pb::{self, account_event::Event};

use crate::store::{User, new_id, now_ms};

#[derive(Debug, Clone)]
pub struct Events {
    bus: Arc<dyn Bus>,
}

impl Events {
    pub fn new(bus: Arc<dyn Bus>) -> Self {
        Events { bus }
    }

    /// Publishes `event` for `enterprise`, kept for edges that are away (it returns once the bus
    /// has it). The change is already stored: a bus failure is logged and counted, not reported
    /// to the client.
    pub async fn emit(&self, enterprise: &str, event: Event) {
        let kind = kind(&event);
        let e = pb::AccountEvent {
            event_id: new_id(),
            timestamp_ms: now_ms(),
            enterprise_id: enterprise.to_owned(),
            event: Some(event),
        };
        let subject = wire::subjects::account_events(enterprise);
        let (stream, all) = (wire::subjects::ACCOUNT_EVENTS_STREAM, wire::subjects::ALL_ACCOUNT_EVENTS);
        match self.bus.publish_durable(stream, all, &subject, e.encode_to_vec().into()).await {
            Ok(()) => metrics::counter!("hermes_accounts_events_total", "kind" => kind).increment(1),
            Err(err) => {
                metrics::counter!("hermes_accounts_event_failures_total", "kind" => kind).increment(1);
                tracing::error!(%subject, kind, error = %err, "account event not published");
            }
        }
    }

    pub async fn profile_changed(&self, u: &User, signature_changed: bool) {
        let p = pb::ProfileChanged {
            user_id: u.id.clone(),
            username: u.username.clone(),
            display_name: u.display_name.clone(),
            signature: u.signature.clone(),
            avatar_url: u.avatar_url.clone(),
            org_unit: u.org_unit.clone(),
            signature_changed,
        };
        self.emit(&u.enterprise_id, Event::ProfileChanged(p)).await;
    }

    /// Tokens of `u` issued before `before_ms` are revoked: one login `session`'s, or all (empty).
    pub async fn tokens_revoked(&self, u: &User, session: &str, before_ms: i64) {
        let t = pb::TokenRevoked {
            user_id: u.id.clone(),
            username: u.username.clone(),
            issued_before_ms: before_ms,
            session_id: session.to_owned(),
        };
        self.emit(&u.enterprise_id, Event::TokenRevoked(t)).await;
    }
}

fn kind(e: &Event) -> &'static str {
    match e {
        Event::UserCreated(_) => "user_created",
        Event::UserDisabled(_) => "user_disabled",
        Event::RelationChanged(_) => "relation_changed",
        Event::TokenRevoked(_) => "token_revoked",
        Event::ProfileChanged(_) => "profile_changed",
        Event::AclChanged(_) => "acl_changed",
        Event::GroupMembershipChanged(_) => "group_membership_changed",
    }
}
