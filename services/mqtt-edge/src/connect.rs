//! One CONNECT pipeline for both protocol versions: throttle failed authentication per client
//! address, authenticate, load relations, authorize the will, register the session under its
//! owner's key, start delivery, auto-subscribe, re-check revocation. `v3.rs` and `v5.rs` only
//! read their packet into a [`ConnectInput`] and map the answer to their CONNACK.

use std::net::IpAddr;
use std::sync::Arc;

use ntex_bytes::{ByteString, Bytes};
use ntex_mqtt::v5::codec::PublishProperties;

use broker::QoS;
use broker::topic::validate_name;

use crate::auth::{AuthDecision, Identity};
use crate::cluster::NodeName;
use crate::connection::{Came, ConnState, Sink, spawn_delivery_task};
use crate::hub::{ConnectRequest, Will};
use crate::ingress;
use crate::message::{Message, now_ms};
use crate::metrics as m;
use crate::server::EdgeShared;
use crate::throttle::Admission;
use crate::{behind, catch_up};

/// A CONNECT as both versions describe it.
#[derive(Debug)]
pub struct ConnectInput {
    pub username: Option<ByteString>,
    pub password: Option<Bytes>,
    /// As sent: empty asks the server to assign one.
    pub client_id: ByteString,
    pub clean_start: bool,
    /// Already capped by `limits.max_session_expiry_secs`.
    pub session_expiry_secs: u32,
    pub receive_maximum: u16,
    pub will: Option<WillInput>,
    /// The client's address, for throttling failed authentication.
    pub peer: Option<IpAddr>,
    /// The v5 client's Topic Alias Maximum (0 for v3): how many outbound aliases it takes.
    pub topic_alias_max: u16,
    pub protocol: &'static str,
    /// Where it came in.
    pub listener: Listener,
}

/// The listener a client came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Tcp,
    Tls,
    WebSocket,
}

impl ConnectInput {
    /// Where the client came from.
    pub fn came(&self) -> Came {
        Came { on: self.listener, from_loopback: self.peer.is_some_and(|ip| ip.is_loopback()) }
    }
}

impl Listener {
    /// How many kinds there are.
    pub const KINDS: usize = 3;

    /// This kind's place among [`Listener::KINDS`] (where the edges announce its address).
    pub fn index(self) -> usize {
        match self {
            Listener::Tcp => 0,
            Listener::Tls => 1,
            Listener::WebSocket => 2,
        }
    }
}

/// The will of a CONNECT.
#[derive(Debug)]
pub struct WillInput {
    pub topic: ByteString,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// v5 will delay interval; 0 for v3.
    pub delay_secs: u32,
    /// v5 message expiry interval of the will.
    pub expiry_secs: Option<u32>,
    /// v5 properties passed on with the will.
    pub properties: Option<Box<PublishProperties>>,
}

/// Why a CONNECT is refused; each version maps it to its return or reason code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Credentials missing or wrong (v3 4, v5 0x86).
    BadCredentials(&'static str),
    /// Not allowed in now (v3 5, v5 0x87).
    NotAuthorized(&'static str),
    /// Too many failed attempts from this address are waiting (v3 3, v5 0x9F).
    Throttled,
    /// The will topic is not a valid topic name (v3 5, v5 0x90).
    WillTopicInvalid,
    /// The ACL does not let this client publish its will (v3 5, v5 0x87).
    WillNotAuthorized,
    /// The server is stopping (v3 3, v5 0x88 server unavailable): try another node.
    ShuttingDown,
    /// The session store cannot be read (the journal, or the owners registry of a cluster),
    /// so the session can be neither resumed nor claimed (v3 3, v5 0x88).
    JournalUnavailable,
}

impl Refusal {
    /// The reason string sent to v5 clients and logged.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::BadCredentials(why) | Refusal::NotAuthorized(why) => why,
            Refusal::Throttled => "too many failed authentication attempts from this address: retry later",
            Refusal::WillTopicInvalid => "the will topic is not a valid topic name",
            Refusal::WillNotAuthorized => "the ACL does not allow publishing the will to its topic",
            Refusal::ShuttingDown => "the server is shutting down: connect again to another node",
            Refusal::JournalUnavailable => "the session store is unavailable: connect again later",
        }
    }

    /// The metric label: one fixed set for both versions.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::BadCredentials(_) => "bad_credentials",
            Refusal::NotAuthorized(_) => "not_authorized",
            Refusal::Throttled => "throttled",
            Refusal::WillTopicInvalid => "will_topic",
            Refusal::WillNotAuthorized => "will_not_authorized",
            Refusal::ShuttingDown => "shutting_down",
            Refusal::JournalUnavailable => "journal_unavailable",
        }
    }
}

/// The keep-alive a v5 connection lives by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepAlive {
    /// Seconds; never 0.
    pub secs: u16,
    /// Server Keep Alive for the CONNACK when the edge chose another value than the client
    /// [MQTT-3.2.2-21].
    pub announce: Option<u16>,
}

impl KeepAlive {
    /// How long a silent connection is kept: one and a half keep-alives [MQTT-3.1.2-24].
    pub fn idle_timeout_secs(self) -> u16 {
        self.secs.saturating_add(self.secs / 2)
    }
}

/// The keep-alive for a v5 client that asked for `requested` seconds (0: none), under the
/// operator's `max` (`limits.max_keepalive_secs`, at least 1): a larger request, or none at all,
/// gets `max`, and the CONNACK says so, as Mosquitto's `max_keepalive` does.
pub fn keep_alive(requested: u16, max: u16) -> KeepAlive {
    let max = max.max(1);
    if requested == 0 || requested > max {
        KeepAlive { secs: max, announce: Some(max) }
    } else {
        KeepAlive { secs: requested, announce: None }
    }
}

/// An accepted CONNECT: the connection's state and what the CONNACK says.
#[derive(Debug)]
pub struct Accepted {
    pub state: ConnState,
    pub session_present: bool,
    /// The client id the server chose for a client that sent an empty one.
    pub assigned_client_id: Option<String>,
}

/// Runs the pipeline. `sink` is the connection's write side, used once the session exists.
pub async fn accept(edge: &Arc<EdgeShared>, input: ConnectInput, sink: Sink) -> Result<Accepted, Refusal> {
    let result = run(edge, input, sink).await;
    if let Err(r) = &result {
        metrics::counter!(m::CONNECT_REFUSED, "reason" => r.label()).increment(1);
        tracing::info!(reason = r.reason(), "CONNECT refused");
    }
    result
}

async fn run(edge: &Arc<EdgeShared>, input: ConnectInput, sink: Sink) -> Result<Accepted, Refusal> {
    if edge.hub.is_closing() {
        return Err(Refusal::ShuttingDown);
    }
    let came = input.came();
    let identity = authenticate(edge, &input).await?;
    ingress::load_relations(edge, &identity).await;
    let assigned = input.client_id.is_empty().then(ingress::assign_client_id);
    let client_id: Arc<str> = assigned.as_deref().unwrap_or(input.client_id.as_str()).into();
    let will = input.will.map(|w| authorize_will(edge, &identity, &client_id, w)).transpose()?;
    let session: Arc<str> = broker::store::session_key(&identity.owner(), &client_id).into();
    let identity = Arc::new(identity);
    // Only a CONNECT that talks to the store waits for a turn there.
    let needs_store = edge.hub.cluster().is_some_and(|c| c.moves_sessions())
        || (edge.hub.journal().is_some() && !input.clean_start && !edge.hub.holds(&session));
    let store_turn = match needs_store {
        true => Some(edge.store_turns.acquire().await.map_err(|_| Refusal::ShuttingDown)?),
        false => None,
    };
    // Another edge may hold the session: it comes here first (and its connection there goes).
    let mut claim = match edge.hub.cluster() {
        Some(c) => c.claim(&session, !input.clean_start).await,
        None => None,
    };
    // Without the owners registry, another edge may hold the session (even live, the client
    // id connected twice): refused until it is back, clean start or not.
    if claim.as_ref().is_some_and(|c| !c.recorded) {
        return Err(Refusal::JournalUnavailable);
    }
    let mut resumed = claim.as_mut().and_then(|c| c.resumed.take());
    // Cursors of a session resumed from the journal: what its streams got meanwhile follows.
    let mut missed = Vec::new();
    // A session resumed from the journal catches up on what the bus kept for it; one handed
    // over while it caught up goes on with it here.
    let mut catch_up = resumed.as_ref().and_then(|s| {
        let carried = s.catch_up.as_ref()?;
        let skip = carried.skip();
        Some(catch_up::Resumed {
            session: session.clone(),
            holder: (!skip.is_empty()).then(|| NodeName::from_registered(skip)),
            subscriptions: s.subscriptions.clone(),
            since_ms: carried.since_ms(),
        })
    });
    // What the replay of a session resumed from the journal skips: what its holder published.
    let mut journal_catch_up = None;
    // Nobody handed it over and it is not here: the journal may hold it (its edge died, or
    // this node restarted).
    if let Some(journal) = edge.hub.journal()
        && resumed.is_none()
        && !input.clean_start
        && !edge.hub.holds(&session)
    {
        match journal.load(&session).await {
            Ok(Some(loaded)) => {
                missed = loaded.snapshot.cursors.clone();
                journal_catch_up = Some(loaded.holder.as_ref().map(NodeName::registered).unwrap_or_default().into());
                catch_up = Some(catch_up::Resumed {
                    session: session.clone(),
                    holder: loaded.holder,
                    subscriptions: loaded.snapshot.subscriptions.clone(),
                    since_ms: 0,
                });
                resumed = Some(loaded.snapshot);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the session journal");
                return Err(Refusal::JournalUnavailable);
            }
        }
    }
    drop(store_turn);
    let connected = edge.hub.connect(
        ConnectRequest {
            session: session.clone(),
            client_id: client_id.clone(),
            clean_start: input.clean_start,
            session_expiry_secs: input.session_expiry_secs,
            receive_maximum: input.receive_maximum,
            will,
            presence: ingress::presence_topic(&identity),
            owner: identity.clone(),
            resumed,
            catch_up: journal_catch_up,
            // Its replay gives what it missed, then what came live meanwhile, in order.
            hold: catch_up.is_some() && edge.hub.cluster().is_some_and(|l| !l.kept().1.is_zero()),
        },
        now_ms(),
    );
    // The catch-up the session now has here (begun for it, or carried) ends with its replay;
    // without a bus that keeps messages, there is none. Read while the claim keeps it here.
    let catching = catch_up.filter(|_| connected.session_present && input.session_expiry_secs > 0);
    let stall = std::time::Duration::from_secs(u64::from(edge.cfg.limits.max_stall_secs));
    // Spawned before anything else waits: nothing leaves the session's queue until it runs.
    match (catching, connected.behind) {
        (Some(resumed), Some(id)) => {
            let (hub, room) = (edge.hub.clone(), connected.room.clone());
            tokio::spawn(behind::catch_up(hub, resumed, id, connected.numbered, room, stall));
        }
        (Some(_), None) => {
            if let Some(id) = edge.hub.catch_up_id(&session) {
                edge.hub.caught_up(&session, id);
            }
        }
        (None, _) => {
            // Parked here holding what comes behind a replay of its own (taken from a dead
            // edge, `adopt`): its client waits for it no longer than an arrival's first pass.
            if let Some(id) = edge.hub.arrival_id(&session) {
                tokio::spawn(behind::release_after_arrival(edge.hub.clone(), session.clone(), id));
            }
        }
    }
    drop(claim);
    metrics::counter!(m::CONNECTS, "protocol" => input.protocol).increment(1);
    let link_id = connected.link_id;
    let (alias_max, hub) = (input.topic_alias_max, edge.hub.clone());
    spawn_delivery_task(sink, connected.inbox, hub, session.clone(), link_id, alias_max, came);
    let auto = ingress::auto_subscribe(&edge.hub, &edge.authz, &identity, &session, &client_id);
    ingress::start_cursors(&edge.hub, &session, &auto).await;
    ingress::close_if_revoked(edge, &identity);
    if let Some(streams) = edge.hub.streams().filter(|_| !missed.is_empty()).cloned() {
        let (hub, session) = (edge.hub.clone(), session.clone());
        tokio::spawn(async move { streams.replay_missed(&hub, &session, missed, stall).await });
    }
    let state = ConnState::new(session, client_id, connected.link_id, edge, identity);
    Ok(Accepted { state, session_present: connected.session_present, assigned_client_id: assigned })
}

/// Checks the credentials, after the wait failed attempts from the client's address earned.
async fn authenticate(edge: &EdgeShared, input: &ConnectInput) -> Result<Identity, Refusal> {
    if let Some(ip) = input.peer {
        match edge.throttle.admit(ip, now_ms()) {
            Admission::After(0) => {}
            Admission::After(ms) => {
                metrics::counter!(m::CONNECT_DELAYED).increment(1);
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            }
            Admission::Busy => return Err(Refusal::Throttled),
        }
    }
    let refusal = match edge.auth.check(input.username.as_deref(), input.password.as_deref()) {
        AuthDecision::Allow(identity) => return Ok(identity),
        AuthDecision::BadCredentials(why) => Refusal::BadCredentials(why),
        AuthDecision::NotAuthorized(why) => Refusal::NotAuthorized(why),
    };
    if let Some(ip) = input.peer {
        edge.throttle.failed(ip, now_ms());
    }
    Err(refusal)
}

/// A will is published on its owner's behalf: its topic must be one the owner may publish to
/// now (and is checked again when it is sent), and it carries the owner as its sender.
fn authorize_will(edge: &EdgeShared, who: &Identity, client_id: &str, w: WillInput) -> Result<Will, Refusal> {
    validate_name(&w.topic, &edge.hub.config().topic).map_err(|_| Refusal::WillTopicInvalid)?;
    if !edge.authz.can_publish(who, client_id, &w.topic) {
        return Err(Refusal::WillNotAuthorized);
    }
    let mut message = Message::new(w.topic, w.payload, w.qos, w.retain);
    message.expires_at_ms = w.expiry_secs.map(|s| now_ms() + u64::from(s) * 1000);
    message.properties = w.properties;
    crate::sender::Sender::of(who).stamp(&mut message);
    Ok(Will { message: Arc::new(message), delay_secs: w.delay_secs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_boundaries() {
        let ka = |r, m| keep_alive(r, m);
        assert_eq!(ka(0, 1200), KeepAlive { secs: 1200, announce: Some(1200) }, "none asked: the maximum, said");
        assert_eq!(ka(1, 1200), KeepAlive { secs: 1, announce: None });
        assert_eq!(ka(1200, 1200), KeepAlive { secs: 1200, announce: None });
        assert_eq!(ka(1201, 1200), KeepAlive { secs: 1200, announce: Some(1200) });
        assert_eq!(ka(u16::MAX, u16::MAX), KeepAlive { secs: u16::MAX, announce: None });
        assert_eq!(ka(0, 0), KeepAlive { secs: 1, announce: Some(1) }, "a zero maximum is never used");
        assert_eq!(ka(u16::MAX, u16::MAX).idle_timeout_secs(), u16::MAX, "saturates");
        assert_eq!(ka(1, 10).idle_timeout_secs(), 1);
        assert_eq!(ka(60, 1200).idle_timeout_secs(), 90);
    }
}
