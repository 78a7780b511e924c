//! Hermes broker core: the MQTT semantics that do not touch a socket.
//!
//! Topic validation and matching, the subscription trie, retained messages, routing a publish
//! to one delivery per session, and the per-session state machine. The edge service owns the
//! sockets and calls into this crate; nothing here depends on an IO crate (checked by a test in
//! the workspace layering suite).

pub mod access;
pub mod acl;
pub mod alias;
pub mod dedupe;
pub mod journal;
pub mod login;
pub mod origins;
pub mod owners;
pub mod presence;
pub mod relations;
pub mod retained;
pub mod route;
pub mod router;
pub mod session;
pub mod store;
pub mod streams;
pub mod topic;
pub mod trie;

#[cfg(test)]
mod test_support;

/// MQTT quality of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum QoS {
    #[default]
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    pub fn from_u8(v: u8) -> Option<QoS> {
        match v {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// v5 retain handling: when retained messages are sent for a new subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RetainHandling {
    #[default]
    AtSubscribe,
    AtSubscribeIfNew,
    Never,
}

/// Options of one subscription (v3 uses only `qos`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
    pub subscription_id: Option<u32>,
    /// When the subscription began, in milliseconds since the Unix epoch (0: unknown, long
    /// ago). A replay after a node died gives it only what was published since.
    pub since_ms: u64,
    /// Given by the enterprise's auto-subscribe table (one per friend's presence and signature,
    /// per group), not asked for by the client: not counted against
    /// `limits.max_subscriptions_per_client`, which bounds what a client asks for.
    pub auto: bool,
}
