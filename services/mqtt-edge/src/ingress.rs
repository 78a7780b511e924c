//! What both protocol versions do with a CONNECT, PUBLISH and SUBSCRIBE before the reply
//! differs: client-id rules, topic checks, duplicate QoS 2 detection, handing to the hub.

use std::sync::Arc;

use ntex_bytes::{ByteString, Bytes};

use broker::QoS;
use broker::topic::{TopicError, validate_name};

use crate::connection::ConnState;
use crate::hub::{Hub, SubscribeError};
use crate::message::{Message, now_ms};
use crate::metrics as m;

/// Error type of the ntex-mqtt services: the connection is closed when a handler returns it.
#[derive(Debug)]
pub struct EdgeError(pub String);

impl From<()> for EdgeError {
    fn from(_: ()) -> Self {
        EdgeError("connection closed".into())
    }
}

impl std::fmt::Display for EdgeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether a packet whose fixed header declares `remaining` bytes is larger in total than
/// `limit` (`limits.max_packet_size`, which counts the whole packet as MQTT 5's Maximum Packet
/// Size does [MQTT-3.2.2-15]). ntex-mqtt's decoder compares the remaining length alone, so the
/// few header bytes are checked here.
pub fn exceeds_packet_limit(remaining: u32, limit: u32) -> bool {
    let header = match remaining {
        0..=127 => 2,
        128..=16_383 => 3,
        16_384..=2_097_151 => 4,
        _ => 5,
    };
    limit != 0 && u64::from(remaining) + header > u64::from(limit)
}

/// The longest reason string the edge sends: one line a person reads, never a packet of its own.
pub const MAX_REASON_BYTES: usize = 256;

/// Joins per-item refusals into one reason string of at most [`MAX_REASON_BYTES`], naming as
/// many as fit and counting the rest.
pub fn bounded_reason(refusals: &[String]) -> String {
    let mut out = String::new();
    for (i, r) in refusals.iter().enumerate() {
        let sep = if out.is_empty() { "" } else { "; " };
        let more = format!("; and {} more", refusals.len() - i);
        if out.len() + sep.len() + r.len() + more.len() > MAX_REASON_BYTES {
            if out.is_empty() {
                return format!("{} refused", refusals.len());
            }
            out.push_str(&more);
            return out;
        }
        out.push_str(sep);
        out.push_str(r);
    }
    out
}

/// The client's IP address, as the socket (under any TLS or WebSocket layer) reports it.
pub fn peer_ip(io: &ntex::io::IoBoxed) -> Option<std::net::IpAddr> {
    io.query::<ntex::io::types::PeerAddr>().get().map(|p| p.0.ip())
}

/// Server-assigned client ids for clients that sent an empty one: 128 random bits, so that no
/// other client of the same owner, on this edge or another, can guess or be given it (and take
/// its session).
pub fn assign_client_id() -> String {
    format!("hermes-{:032x}", rand::random::<u128>())
}

/// Why an inbound PUBLISH was not routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishRefusal {
    Topic(TopicError),
    /// A resent QoS 2 PUBLISH whose first copy was already routed: ack, don't route again.
    Duplicate,
    /// The ACL does not let this client write to the topic.
    NotAuthorized,
    /// Routed, but what it changed in persistent sessions could not be written to the session
    /// journal: not acknowledged as stored (v5 PUBACK 0x80; v3 closes the connection so the
    /// client publishes it again).
    NotStored,
    /// A resume request (`$hermes/resume/<stream>`) that cannot be answered, and why.
    BadResume(&'static str),
    /// A retained message past its tenant's quota (`limits.max_retained_per_tenant`,
    /// `limits.max_retained_bytes_per_tenant`): v5 PUBACK 0x97; v3: dropped.
    RetainedQuota,
    /// Routed here, but larger than the bus carries to the other edges: not acknowledged (v5
    /// PUBACK 0x83; v3 closes the connection). Clients are told a Maximum Packet Size that
    /// keeps within the bus's; this is for what slips past it (a bus that now takes less).
    TooLargeForBus,
}

/// An inbound PUBLISH, already read, as both versions describe it.
pub struct Inbound {
    pub topic: ByteString,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub packet_id: Option<u16>,
}

/// Routes an inbound PUBLISH in the order it arrived on its connection and returns once it
/// may be acknowledged: after every subscriber it left with too much waiting has room again
/// (see `flow`). `read` is the version's payload read; `build` adds version-specific fields.
pub async fn publish_in_order<E>(
    st: &ConnState,
    read: impl Future<Output = Result<Bytes, E>>,
    inbound: impl FnOnce(Bytes) -> Inbound,
    build: impl FnOnce(&mut Message),
) -> Result<Result<usize, PublishRefusal>, E> {
    // The places in line come first, in arrival order.
    let (place, append_place) = crate::flow::places(&st.line, &st.appends, &st.dispatch).await;
    let payload = read.await?;
    append_place.ready().await;
    let inbound = inbound(payload);
    let acknowledged = inbound.qos != QoS::AtMostOnce;
    if inbound.topic.starts_with(crate::streams::RESUME_TOPIC) {
        drop(append_place);
        place.ready().await;
        drop(place);
        return Ok(resume_request(st, &inbound).await);
    }
    // Checked, and handed to its stream in arrival order; the connection's next PUBLISH may be
    // handed over before this one's place comes back (appends are pipelined, not one by one).
    let staged = prepare(st, inbound, build).map(|p| stage(st, p));
    drop(append_place);
    place.ready().await;
    let routed = match staged {
        Ok(staged) => match placed(st, staged, acknowledged).await {
            // Other edges get the connection's messages in its order too: its place on the
            // way to them is taken in its place in line.
            Ok(p) => {
                let slot = match st.hub.cluster() {
                    Some(cluster) => cluster.slot(p.message.qos).await,
                    None => None,
                };
                Ok(route(st, p, slot))
            }
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    drop(place);
    Ok(match routed {
        Ok(Published { routed: mut r, recorded, qos2_id }) => {
            // Refused once routed: a QoS 2 packet id is let go, as the refusing PUBREC ends its
            // exchange [MQTT-4.3.3] (the client may use it again; v3 sends it again), so what
            // comes with it next is routed, not taken for a copy.
            let refused = |why| {
                if let Some(id) = qos2_id {
                    st.hub.incoming_released(&st.session, id);
                }
                Err(why)
            };
            // Acknowledged once the other edges can get it: the bus has it (however long it
            // is away).
            if let Some(f) = r.forwarded.take().filter(|_| acknowledged)
                && !f.wait().await
            {
                return Ok(refused(PublishRefusal::TooLargeForBus));
            }
            let sessions = r.sessions;
            if !r.pressure.is_empty() {
                let _hold = st.gate.hold();
                crate::flow::wait_for_room(&st.hub, r.pressure, st.max_stall, crate::flow::Router::Publisher).await;
            }
            // The inbound QoS 2 id's write and the routing's: the journal writes in order, but
            // a routing batch whose messages were all acknowledged meanwhile is never written.
            let mut stored = true;
            for d in [recorded, r.durable].into_iter().flatten().filter(|_| acknowledged) {
                stored &= d.wait().await;
            }
            if stored { Ok(sessions) } else { refused(PublishRefusal::NotStored) }
        }
        Err(e) => Err(e),
    })
}

/// A PUBLISH that may be routed: checked, stamped with its sender.
pub struct Prepared {
    message: Message,
    /// The journal's write of an inbound QoS 2 packet id (a persistent session's), if any.
    recorded: Option<crate::journal::Durable>,
    /// The inbound QoS 2 packet id now held, if any.
    qos2_id: Option<u16>,
}

/// A prepared PUBLISH, handed to its durable stream if its topic is one.
pub struct Staged {
    prepared: Prepared,
    place: Option<crate::streams::PendingStamp>,
}

/// Hands a message on a durable topic to its stream.
fn stage(st: &ConnState, p: Prepared) -> Staged {
    let streams = st.hub.streams().filter(|s| s.is_durable(&p.message.topic));
    let place = streams.map(|s| s.append(&p.message, now_ms()));
    Staged { prepared: p, place }
}

/// A message on a durable topic carries its place in its stream from then on. One that cannot
/// be stored is still routed at QoS 0; at QoS 1/2 it is refused (and a QoS 2 packet id is let
/// go, so the publisher's next try is routed).
async fn placed(st: &ConnState, staged: Staged, acknowledged: bool) -> Result<Prepared, PublishRefusal> {
    let Staged { prepared: mut p, place } = staged;
    let Some(place) = place else {
        return Ok(p);
    };
    match place.wait().await {
        Some(at) => crate::streams::stamp(&mut p.message, at),
        None if !acknowledged => {}
        None => {
            if let Some(id) = p.qos2_id {
                st.hub.incoming_released(&st.session, id);
            }
            return Err(PublishRefusal::NotStored);
        }
    }
    Ok(p)
}

/// A PUBLISH routed here.
#[derive(Debug)]
pub struct Published {
    pub routed: crate::hub::Routed,
    /// The journal's write of an inbound QoS 2 packet id (a persistent session's), if any.
    pub recorded: Option<crate::journal::Durable>,
    /// The inbound QoS 2 packet id now held, if any.
    pub qos2_id: Option<u16>,
}

/// Validates an inbound PUBLISH and builds its message; `build` adds version-specific fields.
pub fn prepare(st: &ConnState, inbound: Inbound, build: impl FnOnce(&mut Message)) -> Result<Prepared, PublishRefusal> {
    st.hub.hot.publishes_in.increment(1);
    st.hub.hot.publish_bytes_in.increment(inbound.payload.len() as u64);
    if let Err(e) = validate_name(&inbound.topic, &st.hub.config().topic) {
        metrics::counter!(m::PUBLISH_REFUSED, "reason" => "topic").increment(1);
        return Err(PublishRefusal::Topic(e));
    }
    // Only the edge writes under `$hermes/` (replay reports, ...).
    let edge_only = inbound.topic.starts_with(EDGE_TOPICS);
    if edge_only || !st.authz.can_publish(&st.identity, &st.client_id, &inbound.topic) {
        metrics::counter!(m::PUBLISH_REFUSED, "reason" => "acl").increment(1);
        tracing::info!(client_id = %st.client_id, topic = %inbound.topic, "publish refused by the ACL");
        return Err(PublishRefusal::NotAuthorized);
    }
    if inbound.retain
        && !inbound.payload.is_empty()
        && !st.hub.retained_within_quota(&inbound.topic, inbound.payload.len())
    {
        metrics::counter!(m::PUBLISH_REFUSED, "reason" => "retained_quota").increment(1);
        tracing::info!(client_id = %st.client_id, topic = %inbound.topic, "retained message past its tenant's quota refused");
        return Err(PublishRefusal::RetainedQuota);
    }
    let mut recorded = None;
    let mut qos2_id = None;
    if inbound.qos == QoS::ExactlyOnce
        && let Some(id) = inbound.packet_id
    {
        let (fresh, durable) = st.hub.incoming_qos2(&st.session, id);
        if !fresh {
            return Err(PublishRefusal::Duplicate);
        }
        recorded = durable;
        qos2_id = Some(id);
    }
    let mut msg = Message::new(inbound.topic, inbound.payload, inbound.qos, inbound.retain);
    build(&mut msg);
    st.sender.stamp(&mut msg);
    Ok(Prepared { message: msg, recorded, qos2_id })
}

/// Topics only the edge publishes to.
pub const EDGE_TOPICS: &str = "$hermes/";

/// Routes a prepared PUBLISH; on to the other edges in `slot`, if given.
fn route(st: &ConnState, p: Prepared, slot: Option<crate::cluster::Slot>) -> Published {
    let started = std::time::Instant::now();
    let routed = st.hub.publish(Arc::new(p.message), Some(&st.session), now_ms(), slot);
    st.hub.hot.route_seconds.record(started.elapsed().as_secs_f64());
    Published { routed, recorded: p.recorded, qos2_id: p.qos2_id }
}

/// A client asks to resume the stream named after `$hermes/resume/` with `"<epoch>:<seq>"`: the
/// replay goes to its session, and the report to `$hermes/replay/<stream>` if it subscribed
/// there. Refused if the stream is not durable, the payload is not a position, or the client may
/// not read the stream.
async fn resume_request(st: &ConnState, inbound: &Inbound) -> Result<usize, PublishRefusal> {
    metrics::counter!(m::PACKETS_IN, "type" => "publish").increment(1);
    let stream = &inbound.topic[crate::streams::RESUME_TOPIC.len()..];
    // Whoever may not read the stream learns nothing else about the request (`resume` checks
    // again, for a SUBSCRIBE's resume).
    if !st.authz.can_subscribe(&st.identity, &st.client_id, stream) {
        return Err(PublishRefusal::NotAuthorized);
    }
    let position = std::str::from_utf8(&inbound.payload).ok().and_then(crate::streams::parse_resume);
    let Some((epoch, after)) = position else {
        return Err(PublishRefusal::BadResume("a resume request's payload is \"<epoch>:<seq>\""));
    };
    let report = match resume(st, stream, epoch, after).await {
        Ok(r) => r.line(),
        Err(ResumeRefusal::NotAuthorized) => return Err(PublishRefusal::NotAuthorized),
        Err(ResumeRefusal::NotDurable) => return Err(PublishRefusal::BadResume("not a durable stream")),
        Err(ResumeRefusal::Unavailable) => return Err(PublishRefusal::NotStored),
    };
    let topic = ByteString::from(format!("{}{stream}", crate::streams::REPLAY_TOPIC));
    let msg = Message::new(topic, Bytes::from(report), QoS::AtMostOnce, false);
    Ok(st.hub.replay(&st.session, Arc::new(msg), now_ms()).sessions)
}

/// Why a resume was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeRefusal {
    /// The topic is not a durable stream (or names several: a filter).
    NotDurable,
    NotAuthorized,
    /// The stream store did not answer.
    Unavailable,
}

/// Replays what `stream` holds after `after` to this connection's session (as its subscriptions
/// matching the stream ask): at most what the session queues before the edge would wait for
/// room (the report says "more" if that left some out, and the client asks again from where
/// it got). The requester may read nothing before its answer, so the replay alone never makes
/// it wait.
pub async fn resume(
    st: &ConnState,
    stream: &str,
    epoch: u64,
    after: u64,
) -> Result<crate::streams::ReplayReport, ResumeRefusal> {
    let streams = st.hub.streams().filter(|s| s.is_durable(stream));
    let Some(streams) = streams else {
        return Err(ResumeRefusal::NotDurable);
    };
    if !st.authz.can_subscribe(&st.identity, &st.client_id, stream) {
        return Err(ResumeRefusal::NotAuthorized);
    }
    // Below the mark: even all of it waiting for the connection does not reach it.
    let limit = st.hub.high_water(crate::flow::Router::Edge).saturating_sub(1).max(1);
    let (messages, report) = streams.replay(stream, epoch, after, limit).await.map_err(|e| {
        tracing::warn!(stream, error = %e, "cannot read a durable stream to replay it");
        ResumeRefusal::Unavailable
    })?;
    for msg in messages {
        let routed = st.hub.replay(&st.session, msg, now_ms());
        crate::flow::wait_for_room(&st.hub, routed.pressure, st.max_stall, crate::flow::Router::Edge).await;
    }
    Ok(report)
}

/// A SUBSCRIBE entry: the ACL first (for `$share/{group}/...` the filter after the group), then
/// the hub. A filter that does not parse is left to the hub, which refuses it with its code.
pub fn subscribe(st: &ConnState, raw: &str, options: broker::SubOptions) -> Result<(), SubscribeError> {
    metrics::counter!(m::PACKETS_IN, "type" => "subscribe_entry").increment(1);
    // A filter that is not one (`$share//x`) is refused as such (v5 0x8F), before the ACL.
    let parsed = broker::topic::parse_subscription(raw, &st.hub.config().topic).map_err(SubscribeError::Topic)?;
    if !st.authz.can_subscribe(&st.identity, &st.client_id, parsed.filter) {
        return Err(SubscribeError::NotAuthorized);
    }
    st.hub.subscribe(&st.session, raw, options, now_ms())
}

/// A token user's presence topic, `{eid}/im/pres/{user}` (design §3).
pub fn presence_topic(who: &crate::auth::Identity) -> Option<Arc<str>> {
    let safe = broker::acl::safe_value;
    (who.via_token && safe(&who.enterprise) && safe(&who.username))
        .then(|| format!("{}/im/pres/{}", who.enterprise, who.username).into())
}

/// How long a CONNECT waits for the relation directory.
const DIRECTORY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Closes the connection just registered if its token was revoked while the CONNECT was being
/// handled (the revocation found no live session to close then).
pub fn close_if_revoked(edge: &crate::server::EdgeShared, who: &crate::auth::Identity) {
    if edge.auth.revocations().has_revoked(who) {
        edge.hub.close_user(&who.enterprise, &who.user_id, &who.session_id, who.issued_at_ms.saturating_add(1));
    }
}

/// Refreshes a token user's relations from the directory before CONNECT completes, so the ACL
/// and auto-subscriptions see the current ones. A directory outage keeps what the edge knows.
pub async fn load_relations(edge: &crate::server::EdgeShared, who: &crate::auth::Identity) {
    load_relations_from(edge.directory.as_ref(), &edge.relations, who).await;
}

/// [`load_relations`] from `directory` into `relations`.
pub async fn load_relations_from(
    directory: Option<&Arc<dyn broker::relations::RelationDirectory>>,
    relations: &broker::relations::MemoryRelations,
    who: &crate::auth::Identity,
) {
    let Some(dir) = directory.filter(|_| who.via_token) else { return };
    match crate::within(DIRECTORY_TIMEOUT, dir.load(&who.enterprise, &who.username)).await {
        Ok(r) => relations.replace(&who.enterprise, &who.username, &r),
        Err(e) => {
            metrics::counter!(crate::metrics::RELATION_LOAD_FAILURES).increment(1);
            tracing::warn!(user = %who.username, error = %e, "relation directory unavailable: using known relations");
        }
    }
}

/// Subscribes a token user to what its auto-subscribe table says (at CONNECT); returns the
/// filters subscribed.
pub fn auto_subscribe(
    hub: &Hub,
    authz: &crate::authz::Authorizer,
    who: &crate::auth::Identity,
    session: &str,
    client_id: &str,
) -> Vec<String> {
    let mut subscribed = Vec::new();
    for (filter, qos) in authz.auto_subscriptions(who, client_id) {
        let options = broker::SubOptions { qos, auto: true, ..broker::SubOptions::default() };
        match hub.subscribe(session, &filter, options, now_ms()) {
            Ok(()) => subscribed.push(filter),
            Err(e) => tracing::warn!(client_id = %client_id, topic = %filter, error = ?e, "auto-subscription refused"),
        }
    }
    subscribed
}

/// Starts the session's cursors in the durable streams among `filters` it just subscribed to.
pub async fn start_cursors(hub: &Hub, session: &str, filters: &[impl AsRef<str>]) {
    if let Some(streams) = hub.streams() {
        streams.start_cursors(hub, session, filters.iter().map(AsRef::as_ref)).await;
    }
}

/// Logs a refused SUBSCRIBE entry (the SUBACK carries the code to the client).
pub fn log_refused(st: &ConnState, filter: &str, e: SubscribeError) {
    tracing::debug!(client_id = %st.client_id, topic = %filter, error = ?e, "subscription refused");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_packet_limit_counts_the_fixed_header() {
        // 1 MiB in total: a remaining length of 1 048 572 plus a 4-byte fixed header.
        assert!(!exceeds_packet_limit(1_048_572, 1_048_576));
        assert!(exceeds_packet_limit(1_048_573, 1_048_576));
        assert!(!exceeds_packet_limit(125, 127));
        assert!(exceeds_packet_limit(126, 127));
        assert!(exceeds_packet_limit(0, 1), "even an empty packet has two header bytes");
        assert!(!exceeds_packet_limit(u32::MAX, 0), "0 is no limit");
        assert!(exceeds_packet_limit(268_435_455, u32::MAX - 1) == (268_435_455u64 + 5 > u64::from(u32::MAX - 1)));
    }

    #[test]
    fn reasons_are_bounded_and_count_what_they_leave_out() {
        let many: Vec<String> =
            (0..2000).map(|i| format!("topic/{i}: too many subscriptions for this client")).collect();
        let r = bounded_reason(&many);
        assert!(r.len() <= MAX_REASON_BYTES, "{} bytes", r.len());
        assert!(r.starts_with("topic/0: ") && r.ends_with(" more"), "{r}");
        let n: usize = r.rsplit("and ").next().and_then(|t| t.trim_end_matches(" more").parse().ok()).expect("count");
        assert_eq!(n + r.matches("topic/").count(), 2000, "named plus counted is all of them");
        assert_eq!(bounded_reason(&["a: b".into()]), "a: b");
        assert_eq!(bounded_reason(&["x".repeat(300)]), "1 refused");
        assert_eq!(bounded_reason(&[]), "");
    }
}
