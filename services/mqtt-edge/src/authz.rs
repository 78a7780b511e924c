//! What an authenticated connection may do: the ACL checked at SUBSCRIBE and PUBLISH, and the
//! auto-subscriptions made at CONNECT (design §3).
//!
//! Token (enterprise) users always have an ACL: the configured one or the built-in enterprise
//! rules. Other users are checked against the configured ACL if there is one, and are
//! otherwise unrestricted. Relation placeholders (`%f`, `%F`) expand from the relation store
//! at every check, so a relation change applies to the next SUBSCRIBE or PUBLISH at once; the
//! hub's `reauthorize` applies it to subscriptions already made.

use std::sync::Arc;

use broker::QoS;
use broker::acl::{self, AclTable, AutoSubscribe, Subject};
use broker::relations::RelationStore;

use crate::auth::Identity;
use crate::config::AuthConfig;

#[derive(Debug)]
pub struct Authorizer {
    configured: Option<AclTable>,
    enterprise: AclTable,
    auto_subscribe: Vec<AutoSubscribe>,
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
        let enterprise = match &configured {
            Some(t) => t.clone(),
            None => AclTable::parse(acl::DEFAULT_ACL).map_err(|e| format!("built-in ACL: {e}"))?,
        };
        let auto_text = read("auth.auto_subscribe_file", &cfg.auto_subscribe_file)?;
        let auto_subscribe = acl::parse_auto_subscribe(auto_text.as_deref().unwrap_or(acl::DEFAULT_AUTO_SUBSCRIBE))
            .map_err(|e| format!("auth.auto_subscribe_file {}: {e}", cfg.auto_subscribe_file))?;
        Ok(Authorizer { configured, enterprise, auto_subscribe, relations })
    }

    /// Runs `f` with `who` as an ACL subject, relation sets looked up now.
    fn with_subject<R>(&self, who: &Identity, client_id: &str, f: impl FnOnce(&Subject<'_>) -> R) -> R {
        let (follows, friends) = if who.via_token {
            (
                self.relations.follows(&who.enterprise, &who.username),
                self.relations.friends(&who.enterprise, &who.username),
            )
        } else {
            (Vec::new(), Vec::new())
        };
        f(&Subject {
            username: &who.username,
            client_id,
            enterprise: &who.enterprise,
            follows: &follows,
            friends: &friends,
        })
    }

    fn table(&self, who: &Identity) -> Option<&AclTable> {
        if who.via_token { Some(&self.enterprise) } else { self.configured.as_ref() }
    }

    pub fn can_publish(&self, who: &Identity, client_id: &str, topic: &str) -> bool {
        self.table(who).is_none_or(|t| self.with_subject(who, client_id, |s| t.can_publish(s, topic)))
    }

    pub fn can_subscribe(&self, who: &Identity, client_id: &str, filter: &str) -> bool {
        self.table(who).is_none_or(|t| self.with_subject(who, client_id, |s| t.can_subscribe(s, filter)))
    }

    /// The subscriptions a token user gets at CONNECT without asking.
    pub fn auto_subscriptions(&self, who: &Identity, client_id: &str) -> Vec<(String, QoS)> {
        if !who.via_token {
            return Vec::new();
        }
        self.with_subject(who, client_id, |s| acl::auto_subscriptions(&self.auto_subscribe, s))
    }
}
