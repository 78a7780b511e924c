//! Account events from the bus, applied to this edge (design §2, flow 4): relation changes
//! re-authorize live sessions, disabled users and revoked tokens close connections (v5 0x98) and
//! refuse those tokens from then on, new signatures are published retained, and an
//! enterprise's new ACL or auto-subscribe tables apply to its connected users at once.

use std::sync::Arc;

use broker::QoS;
use broker::relations::{RelationStore, UserRelations};
use bus::{Bus, BusError, Subscription};
use ntex_bytes::{ByteString, Bytes};
use ntex_mqtt::v5::codec::PublishProperties;
use prost::Message as _;
use wire::pb::{AccountEvent, account_event::Event};

use crate::message::{Message, now_ms};
use crate::metrics as m;
use crate::server::EdgeShared;

/// Users whose relations are read from the directory at once when an edge catches up.
const RELATION_LOADS: usize = 16;

/// Applies account events to one edge.
#[derive(Debug, Clone)]
pub struct AccountEvents {
    pub(crate) shared: Arc<EdgeShared>,
}

impl AccountEvents {
    /// Subscribes to every enterprise's account events on `bus` and applies them until the bus
    /// goes away. Subscribed when this returns: no event published afterwards is missed, also
    /// while the edge is cut off from NATS (JetStream keeps them; it catches up on reconnect).
    ///
    /// Where events may have been missed (the bus says so; or, on a bus that keeps nothing,
    /// each time the connection comes back), the tables and revocations the access directory
    /// holds are applied again, and its connected users' relations read again from the
    /// relation directory, if the edge has them.
    pub async fn follow(self, bus: &dyn Bus) -> Result<tokio::task::JoinHandle<()>, BusError> {
        let durable =
            bus.subscribe_durable(wire::subjects::ACCOUNT_EVENTS_STREAM, wire::subjects::ALL_ACCOUNT_EVENTS).await;
        let (mut sub, mut link): (Subscription, _) = match durable {
            Ok(sub) => (sub, None),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "no JetStream on the bus: account events published while this edge is cut off from NATS will be missed (tables and revocations are read again from the access directory, if any)"
                );
                (bus.subscribe(wire::subjects::ALL_ACCOUNT_EVENTS).await?, Some(bus.link_changes()))
            }
        };
        Ok(tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    msg = sub.next() => Next::Message(msg),
                    back = link_back(link.as_mut()) => Next::Link(back),
                };
                let msg = match next {
                    Next::Message(Some(msg)) => msg,
                    Next::Message(None) => return,
                    Next::Link(Some(true)) => {
                        self.catch_up().await;
                        continue;
                    }
                    Next::Link(Some(false)) => continue,
                    Next::Link(None) => {
                        link = None;
                        continue;
                    }
                };
                if msg.subject == bus::MAY_HAVE_MISSED {
                    self.catch_up().await;
                    continue;
                }
                match AccountEvent::decode(msg.payload) {
                    Ok(event) => self.receive(&event).await,
                    Err(e) => {
                        metrics::counter!(m::ACCOUNT_EVENTS, "kind" => "invalid").increment(1);
                        tracing::warn!(subject = %msg.subject, error = %e, "undecodable account event");
                    }
                }
            }
        }))
    }

    /// An event from the bus. A relation or group change, on an edge with a relation
    /// directory, is read from it: the users' relations as they are now, whatever order the
    /// events arrive in (several accounts nodes, an event tried again later). Otherwise, and
    /// when the directory cannot be read, it applies as it says.
    async fn receive(&self, event: &AccountEvent) {
        let (kind, users): (&str, Vec<&str>) = match &event.event {
            Some(Event::RelationChanged(r)) => ("relation_changed", vec![&r.follower, &r.followee]),
            Some(Event::GroupMembershipChanged(g)) => ("group_membership_changed", vec![&g.username]),
            _ => return self.apply(event),
        };
        let Some(dir) = self.shared.directory.clone() else { return self.apply(event) };
        let eid = event.enterprise_id.as_str();
        let users: Vec<String> = users.into_iter().map(str::to_owned).collect();
        let loaded = load_relations(dir, eid, users.into_iter()).await;
        let mut read = Vec::with_capacity(loaded.len());
        for (user, relations) in loaded {
            match relations {
                Ok(r) => read.push((user, r)),
                Err(e) => {
                    tracing::warn!(enterprise = %eid, error = %e, "relation directory unavailable: applying the event as it says");
                    return self.apply(event);
                }
            }
        }
        self.replace_relations(eid, &read);
        metrics::counter!(m::ACCOUNT_EVENTS, "kind" => kind).increment(1);
    }

    /// `read` (users and their relations, from the directory) replaces what this edge knew of
    /// them, and their sessions are checked against it.
    fn replace_relations(&self, enterprise: &str, read: &[(String, UserRelations)]) {
        for (user, relations) in read {
            self.shared.relations.replace(enterprise, user, relations);
        }
        let users: Vec<&str> = read.iter().map(|(u, _)| u.as_str()).collect();
        self.reauthorize(enterprise, Some(&users));
    }

    /// Applies the access directory's tables and revocations again, and the relation
    /// directory's relations of the users connected here (account events may have been
    /// missed).
    async fn catch_up(&self) {
        match self.shared.access.clone() {
            Some(dir) => match self.prime(dir.as_ref()).await {
                Ok(()) => tracing::info!("account events may have been missed: tables and revocations read again"),
                Err(e) => {
                    tracing::warn!(error = %e, "account events may have been missed, and the access directory cannot be read")
                }
            },
            None => {
                tracing::warn!("account events may have been missed, and this edge has no access directory to read")
            }
        }
        self.reload_relations().await;
    }

    /// Loads the relations of every token user connected here from the relation directory
    /// (if any), a few at a time, and re-checks their sessions against them.
    async fn reload_relations(&self) {
        let Some(dir) = self.shared.directory.clone() else { return };
        for (enterprise, users) in self.shared.hub.token_users() {
            let mut read = Vec::with_capacity(users.len());
            for (user, relations) in load_relations(dir.clone(), &enterprise, users.into_iter()).await {
                match relations {
                    Ok(r) => read.push((user, r)),
                    Err(e) => tracing::warn!(%enterprise, %user, error = %e, "cannot read relations again"),
                }
            }
            self.replace_relations(&enterprise, &read);
        }
    }

    /// Applies what `dir` holds (enterprises' ACL tables, recent revocations) as the account
    /// events that made it.
    pub async fn prime(&self, dir: &dyn broker::access::AccessDirectory) -> Result<(), String> {
        use wire::pb::{self, account_event::Event};
        let apply = |enterprise: String, event: Event| {
            self.apply(&pb::AccountEvent { enterprise_id: enterprise, event: Some(event), ..Default::default() });
        };
        for (e, t) in dir.tables().await? {
            let tables =
                pb::AclChanged { version: t.version, acl_rules: t.acl_rules, auto_subscribe: t.auto_subscribe };
            apply(e, Event::AclChanged(tables));
        }
        let horizon = now_ms() as i64 - wire::token::REVOCATION_MEMORY_MS;
        for r in dir.revocations(horizon).await? {
            let revoked = pb::TokenRevoked {
                user_id: r.user_id,
                issued_before_ms: r.before_ms,
                session_id: r.session,
                ..Default::default()
            };
            apply(r.enterprise, Event::TokenRevoked(revoked));
        }
        Ok(())
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
                    self.publish_signature(eid, &p.username, &p.signature, event.timestamp_ms);
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

    /// The signature changed at `changed_ms`, retained on `{eid}/im/sig/{username}` (empty
    /// clears it) with that instant as its [`CHANGED_PROPERTY`], unless the retained one there
    /// changed later, or it was cleared later (within [`CLEARED_KEPT_MS`]): a change that
    /// arrives late (tried again, or from the accounts outbox) does not bring an older
    /// signature back.
    fn publish_signature(&self, enterprise: &str, username: &str, signature: &str, changed_ms: i64) {
        let safe = broker::acl::safe_value;
        if !(safe(enterprise) && safe(username)) {
            return;
        }
        let topic = ByteString::from(format!("{enterprise}/im/sig/{username}"));
        let retained = self.shared.hub.retained(&topic).as_deref().and_then(changed_at);
        {
            let mut cleared = self.shared.signatures_cleared.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(latest) = retained.max(cleared.get(&*topic).copied())
                && latest > changed_ms
            {
                tracing::debug!(enterprise, username, changed_ms, latest, "an older signature change is ignored");
                return;
            }
            if signature.is_empty() {
                cleared.retain(|_, at| *at > changed_ms.saturating_sub(CLEARED_KEPT_MS));
                cleared.insert(topic.to_string(), changed_ms);
            } else {
                cleared.remove(&*topic);
            }
        }
        let mut msg = Message::new(topic, Bytes::copy_from_slice(signature.as_bytes()), QoS::AtLeastOnce, true);
        msg.properties = Some(Box::new(PublishProperties {
            user_properties: vec![(
                ByteString::from_static(CHANGED_PROPERTY),
                ByteString::from(changed_ms.to_string()),
            )],
            ..Default::default()
        }));
        self.shared.hub.publish(Arc::new(msg), None, now_ms(), None);
    }
}

/// How long an edge remembers when a signature was cleared: a change published that much
/// earlier and arriving later could set it again.
const CLEARED_KEPT_MS: i64 = 7 * 24 * 3600 * 1000;

/// The user property of a retained signature: when the accounts tier published its change
/// (Unix ms, its clock). Only the edge sets it.
pub const CHANGED_PROPERTY: &str = "hermes-changed-ms";

/// When the signature `msg` carries changed, if it says.
fn changed_at(msg: &Message) -> Option<i64> {
    let props = msg.properties.as_ref()?;
    let (_, at) = props.user_properties.iter().find(|(k, _)| k == CHANGED_PROPERTY)?;
    at.parse().ok()
}

/// `users`' relations in `enterprise`, read from `dir` [`RELATION_LOADS`] at a time.
async fn load_relations(
    dir: Arc<dyn broker::relations::RelationDirectory>,
    enterprise: &str,
    users: impl Iterator<Item = String>,
) -> Vec<(String, Result<UserRelations, String>)> {
    use futures_util::StreamExt;
    let loads = users.map(|user| {
        let (dir, enterprise) = (dir.clone(), enterprise.to_owned());
        async move {
            let relations = dir.load(&enterprise, &user).await;
            (user, relations)
        }
    });
    futures_util::stream::iter(loads).buffer_unordered(RELATION_LOADS).collect().await
}

/// What the follower of account events learned next.
enum Next {
    Message(Option<bus::BusMessage>),
    /// The connection changed: back (`true`) or lost; `None` once the bus is gone.
    Link(Option<bool>),
}

/// The next change of `link`: `Some(true)` when the connection is back; `None` once the bus
/// is gone. Never, without a link to watch.
async fn link_back(link: Option<&mut tokio::sync::watch::Receiver<Option<bus::Link>>>) -> Option<bool> {
    let Some(link) = link else { return std::future::pending().await };
    link.changed().await.ok()?;
    Some(matches!(*link.borrow_and_update(), Some(bus::Link::Back(_))))
}
