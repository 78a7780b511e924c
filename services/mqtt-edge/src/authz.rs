//! What an authenticated connection may do: the ACL checked at SUBSCRIBE and PUBLISH, and the
//! auto-subscriptions made at CONNECT (design §3).
//!
//! Token (enterprise) users always have an ACL: their enterprise's own tables when the accounts
//! tier has sent them (`AclChanged` events), else the configured one, else the built-in
//! enterprise rules. Other users are checked against the configured ACL if there is one, and are
//! otherwise unrestricted. Relation placeholders (`%f`, `%F`) expand from the relation store
//! at every check, so a relation change applies to the next SUBSCRIBE or PUBLISH at once; the
//! hub's `reauthorize` applies it to subscriptions already made.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use broker::QoS;
use broker::acl::{self, AclTable, AutoSubscribe, Set, Sets, Subject};
use broker::relations::RelationStore;

use crate::auth::Identity;
use crate::config::AuthConfig;

/// The rules one enterprise's token users live by.
#[derive(Debug)]
pub struct Policy {
    acl: AclTable,
    auto_subscribe: Vec<AutoSubscribe>,
    /// The accounts tier's version of these tables (0 for the edge's default).
    version: u64,
}

#[derive(Debug)]
pub struct Authorizer {
    configured: Option<AclTable>,
    /// For enterprises without their own tables.
    default_policy: Arc<Policy>,
    /// Enterprises' own tables, by enterprise id.
    enterprises: RwLock<HashMap<String, Arc<Policy>>>,
    relations: Arc<dyn RelationStore>,
}

fn read(key: &str, path: &str) -> Result<Option<String>, String> {
    if path.is_empty() {
        return Ok(None);
    }
    std::fs::read_to_string(path).map(Some).map_err(|e| format!("{key} {path}: {e}"))
}

impl Authorizer {
    pub fn from_config(cfg: &AuthConfig, relations: Arc<dyn RelationStore>) -> Result<Self, String> {
        let configured = read("auth.acl_file", &cfg.acl_file)?
            .map(|t| AclTable::parse(&t).map_err(|e| format!("auth.acl_file {}: {e}", cfg.acl_file)))
            .transpose()?;
        let acl = match &configured {
            Some(t) => t.clone(),
            None => AclTable::parse(acl::DEFAULT_ACL).map_err(|e| format!("built-in ACL: {e}"))?,
        };
        let auto_text = read("auth.auto_subscribe_file", &cfg.auto_subscribe_file)?;
        let auto_subscribe = acl::parse_auto_subscribe(auto_text.as_deref().unwrap_or(acl::DEFAULT_AUTO_SUBSCRIBE))
            .map_err(|e| format!("auth.auto_subscribe_file {}: {e}", cfg.auto_subscribe_file))?;
        Ok(Authorizer {
            configured,
            default_policy: Arc::new(Policy { acl, auto_subscribe, version: 0 }),
            enterprises: RwLock::default(),
            relations,
        })
    }

    /// Gives `enterprise` its own ACL and auto-subscribe tables (replacing what it had); an
    /// empty text keeps the edge's default for that table. Tables older than (or as old as) what
    /// the edge has are ignored: returns whether these were applied.
    pub fn set_policy(&self, enterprise: &str, version: u64, acl_text: &str, auto_text: &str) -> Result<bool, String> {
        if self.policy(enterprise).version >= version {
            return Ok(false);
        }
        let acl = match acl_text.trim() {
            "" => self.default_policy.acl.clone(),
            t => {
                let table = AclTable::parse(t).map_err(|e| format!("ACL: {e}"))?;
                acl::enterprise_scoped(&table, &[]).map_err(|e| format!("ACL: {e}"))?;
                table
            }
        };
        let auto_subscribe = match auto_text.trim() {
            "" => self.default_policy.auto_subscribe.clone(),
            t => {
                let auto = acl::parse_auto_subscribe(t).map_err(|e| format!("auto-subscribe: {e}"))?;
                acl::enterprise_scoped(&AclTable::default(), &auto).map_err(|e| format!("auto-subscribe: {e}"))?;
                auto
            }
        };
        let mut all = self.enterprises.write().unwrap_or_else(|e| e.into_inner());
        if all.get(enterprise).is_some_and(|p| p.version >= version) {
            return Ok(false);
        }
        all.insert(enterprise.to_owned(), Arc::new(Policy { acl, auto_subscribe, version }));
        Ok(true)
    }

    fn policy(&self, enterprise: &str) -> Arc<Policy> {
        let own = self.enterprises.read().unwrap_or_else(|e| e.into_inner()).get(enterprise).cloned();
        own.unwrap_or_else(|| self.default_policy.clone())
    }

    /// Runs `f` with `who` as an ACL subject whose relation sets are looked up in the relation
    /// store as the rules ask (one member at a time), so a check never goes stale.
    fn with_subject<R>(&self, who: &Identity, client_id: &str, f: impl FnOnce(&Subject<'_>) -> R) -> R {
        let none = acl::Lists::default();
        let theirs = UserSets { store: self.relations.as_ref(), enterprise: &who.enterprise, user: &who.username };
        let sets: &dyn Sets = if who.via_token { &theirs } else { &none };
        f(&Subject { username: &who.username, client_id, enterprise: &who.enterprise, sets })
    }

    /// Whether `who` may, by the table that applies to them; no table means unrestricted.
    fn allowed(&self, who: &Identity, client_id: &str, check: impl FnOnce(&AclTable, &Subject<'_>) -> bool) -> bool {
        if who.via_token {
            let policy = self.policy(&who.enterprise);
            self.with_subject(who, client_id, |s| check(&policy.acl, s))
        } else {
            self.configured.as_ref().is_none_or(|t| self.with_subject(who, client_id, |s| check(t, s)))
        }
    }

    pub fn can_publish(&self, who: &Identity, client_id: &str, topic: &str) -> bool {
        self.allowed(who, client_id, |t, s| t.can_publish(s, topic))
    }

    /// Whether `who` may subscribe to `filter`. Anyone may to replay reports
    /// (`$hermes/replay/...`): the edge sends each only to the session that asked for it.
    pub fn can_subscribe(&self, who: &Identity, client_id: &str, filter: &str) -> bool {
        filter.starts_with(crate::streams::REPLAY_TOPIC)
            || self.allowed(who, client_id, |t, s| t.can_subscribe(s, filter))
    }

    /// The subscriptions a token user gets at CONNECT without asking.
    pub fn auto_subscriptions(&self, who: &Identity, client_id: &str) -> Vec<(String, QoS)> {
        if !who.via_token {
            return Vec::new();
        }
        // Only what the ACL lets them read: a table may list more than its rules grant.
        let policy = self.policy(&who.enterprise);
        self.with_subject(who, client_id, |s| {
            let mut subs = acl::auto_subscriptions(&policy.auto_subscribe, s);
            subs.retain(|(filter, _)| policy.acl.can_subscribe(s, filter));
            subs
        })
    }
}

/// One token user's relation sets, answered by the relation store.
struct UserSets<'a> {
    store: &'a dyn RelationStore,
    enterprise: &'a str,
    user: &'a str,
}

impl Sets for UserSets<'_> {
    fn contains(&self, set: Set, value: &str) -> bool {
        let (store, e, u) = (self.store, self.enterprise, self.user);
        match set {
            Set::Follows => store.is_following(e, u, value),
            Set::Friends => store.is_following(e, u, value) && store.is_following(e, value, u),
            Set::Groups => store.is_member(e, u, value),
        }
    }

    fn list(&self, set: Set) -> Vec<String> {
        match set {
            Set::Follows => self.store.follows(self.enterprise, self.user),
            Set::Friends => self.store.friends(self.enterprise, self.user),
            Set::Groups => self.store.groups(self.enterprise, self.user),
        }
    }
}

/// The router asks the ACL about the identities it keeps sessions for.
impl broker::router::Authorize<std::sync::Arc<Identity>> for Authorizer {
    fn can_publish(&self, who: &std::sync::Arc<Identity>, client_id: &str, topic: &str) -> bool {
        Authorizer::can_publish(self, who, client_id, topic)
    }

    fn can_subscribe(&self, who: &std::sync::Arc<Identity>, client_id: &str, filter: &str) -> bool {
        Authorizer::can_subscribe(self, who, client_id, filter)
    }

    fn auto_subscriptions(&self, who: &std::sync::Arc<Identity>, client_id: &str) -> Vec<(String, QoS)> {
        Authorizer::auto_subscriptions(self, who, client_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The edge sends a replay report only to the session that asked for it, so a token user
    /// may listen for theirs whatever the ACL says, and keeps that subscription when their
    /// relations change; nothing else under `$hermes/` opens up.
    #[test]
    fn anyone_may_listen_for_their_own_replay_reports_and_nothing_else_of_the_edge() {
        let relations = Arc::new(broker::relations::MemoryRelations::default());
        let authz = Authorizer::from_config(&AuthConfig::default(), relations).expect("defaults");
        let alice = Identity {
            username: "alice".into(),
            enterprise: "acme".into(),
            user_id: "u1".into(),
            via_token: true,
            ..Identity::default()
        };
        assert!(authz.can_subscribe(&alice, "c", "$hermes/replay/acme/notice/all"));
        assert!(authz.can_subscribe(&alice, "c", "$hermes/replay/#"));
        let router: &dyn broker::router::Authorize<Arc<Identity>> = &authz;
        assert!(router.can_subscribe(&Arc::new(alice.clone()), "c", "$hermes/replay/#"), "what re-checks see");
        for refused in ["$hermes/resume/x", "$hermes/#", "acme/im/msg/bob", "#"] {
            assert!(!authz.can_subscribe(&alice, "c", refused), "{refused}");
        }
    }
}
