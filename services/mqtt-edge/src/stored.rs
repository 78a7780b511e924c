//! A session as it is stored or sent between edges: the protobuf `SessionState` (to move a
//! session to another edge, and as the journal's record) and `StoredMessage` (one message of a
//! session, in a handover and in the journal).

use std::num::NonZeroU16;
use std::sync::Arc;

use prost::Message as _;

use broker::journal::Stored;
use broker::origins::{CatchUp, CatchUpParts};
use broker::session::{Outgoing, SessionSnapshot};
use broker::{QoS, RetainHandling, SubOptions};
use wire::pb;

use crate::cluster::{NodeName, decode_message, encode_message};
use crate::message::SharedMessage;

/// One message of a session; `released` once its PUBREC came (QoS 2).
pub fn stored_message(o: &Outgoing<SharedMessage>, released: bool) -> pb::StoredMessage {
    pb::StoredMessage {
        message: Some(encode_message(&o.msg)),
        qos: o.qos as u32,
        packet_id: o.packet_id.map_or(0, |p| u32::from(p.get())),
        dup: o.dup,
        retain: o.retain,
        subscription_ids: o.subscription_ids.clone(),
        released,
        entry: o.entry,
        resends: u32::from(o.resends),
    }
}

fn stored_subscriptions(subscriptions: Vec<(String, SubOptions)>) -> Vec<pb::StoredSubscription> {
    subscriptions
        .into_iter()
        .map(|(filter, o)| pb::StoredSubscription {
            filter,
            qos: o.qos as u32,
            no_local: o.no_local,
            retain_as_published: o.retain_as_published,
            retain_handling: match o.retain_handling {
                RetainHandling::AtSubscribe => 0,
                RetainHandling::AtSubscribeIfNew => 1,
                RetainHandling::Never => 2,
            },
            subscription_id: o.subscription_id.unwrap_or(0),
            since_ms: o.since_ms,
            auto: o.auto,
        })
        .collect()
}

/// A session's journal record: its subscriptions and expiry, and the node writing it (its
/// messages are kept apart).
pub fn journal_record(subscriptions: Vec<(String, SubOptions)>, expiry_secs: u32, holder: &NodeName) -> Vec<u8> {
    pb::SessionState {
        subscriptions: stored_subscriptions(subscriptions),
        expiry_secs,
        holder: holder.id.clone(),
        holder_incarnation: holder.incarnation,
        ..Default::default()
    }
    .encode_to_vec()
}

/// A session as the journal holds it.
#[derive(Debug)]
pub struct Journaled {
    pub snapshot: SessionSnapshot<SharedMessage>,
    pub expiry_secs: u32,
    /// The node that held it last (`None` in records written before nodes signed them).
    pub holder: Option<NodeName>,
}

/// The session a journal holds; `None` if any part of it is invalid. Messages with a packet
/// id were in flight (in entry order), the others queued behind them.
pub fn from_journal(stored: Stored) -> Option<Journaled> {
    let mut state = pb::SessionState::decode(&stored.record[..]).ok()?;
    state.incoming_qos2 = stored.inbound.into_iter().map(u32::from).collect();
    state.cursors = stored.cursors.into_iter().map(|(stream, cursor)| pb::StreamCursor { stream, cursor }).collect();
    for (entry, body) in stored.messages {
        let mut m = pb::StoredMessage::decode(&body[..]).ok()?;
        m.entry = entry;
        if m.packet_id == 0 { state.queue.push(m) } else { state.inflight.push(m) }
    }
    let expiry_secs = state.expiry_secs;
    let holder = (!state.holder.is_empty())
        .then(|| NodeName { id: std::mem::take(&mut state.holder), incarnation: state.holder_incarnation });
    Some(Journaled { snapshot: snapshot_from(state)?, expiry_secs, holder })
}

/// A whole session, to move it to another edge.
pub fn state_of(snap: SessionSnapshot<SharedMessage>, expiry_secs: u32) -> pb::SessionState {
    pb::SessionState {
        subscriptions: stored_subscriptions(snap.subscriptions),
        inflight: snap.inflight.iter().map(|(o, released)| stored_message(o, *released)).collect(),
        queue: snap.queue.iter().map(|o| stored_message(o, false)).collect(),
        incoming_qos2: snap.incoming_qos2.into_iter().map(u32::from).collect(),
        last_packet_id: u32::from(snap.last_packet_id),
        expiry_secs,
        holder: String::new(),
        holder_incarnation: 0,
        cursors: snap
            .cursors
            .into_iter()
            .map(|(stream, c)| pb::StreamCursor { stream: stream.to_string(), cursor: c.encode() })
            .collect(),
        catch_up: snap.catch_up.map(|c| catch_up_state(&c)),
    }
}

fn catch_up_state(c: &CatchUp) -> pb::CatchUpState {
    let CatchUpParts { began, taken, skip, owed, since_ms } = c.parts();
    let messages = |m: Vec<(Arc<str>, broker::streams::Stamp)>| -> Vec<pb::TakenMessage> {
        m.into_iter()
            .map(|(node, at)| pb::TakenMessage { node: node.to_string(), incarnation: at.epoch, seq: at.seq })
            .collect()
    };
    pb::CatchUpState {
        began: began
            .into_iter()
            .map(|(node, c)| pb::StreamCursor { stream: node.to_string(), cursor: c.encode() })
            .collect(),
        taken: messages(taken),
        skip: skip.to_string(),
        owed: messages(owed),
        since_ms,
    }
}

/// The catch-up a [`pb::CatchUpState`] describes; `None` if a cursor is invalid.
fn catch_up_from(s: pb::CatchUpState) -> Option<CatchUp> {
    let began = s
        .began
        .into_iter()
        .map(|c| Some((Arc::from(c.stream), broker::streams::Cursor::decode(&c.cursor)?)))
        .collect::<Option<Vec<_>>>()?;
    let messages = |m: Vec<pb::TakenMessage>| {
        m.into_iter()
            .map(|t| (Arc::from(t.node), broker::streams::Stamp { epoch: t.incarnation, seq: t.seq }))
            .collect()
    };
    let (taken, owed) = (messages(s.taken), messages(s.owed));
    Some(CatchUp::from_parts(CatchUpParts { began, taken, skip: s.skip.into(), owed, since_ms: s.since_ms }))
}

/// The snapshot a [`pb::SessionState`] describes; `None` if any part of it is invalid.
pub fn snapshot_from(s: pb::SessionState) -> Option<SessionSnapshot<SharedMessage>> {
    let qos = |q: u32| QoS::from_u8(u8::try_from(q).ok()?);
    let out = |m: pb::StoredMessage| -> Option<(Outgoing<SharedMessage>, bool)> {
        let msg = Arc::new(decode_message(m.message?)?);
        let packet_id = match m.packet_id {
            0 => None,
            p => Some(NonZeroU16::new(u16::try_from(p).ok()?)?),
        };
        let o = Outgoing {
            msg,
            qos: qos(m.qos)?,
            packet_id,
            dup: m.dup,
            retain: m.retain,
            subscription_ids: m.subscription_ids,
            entry: m.entry,
            resends: u16::try_from(m.resends).unwrap_or(u16::MAX),
        };
        Some((o, m.released))
    };
    let subscriptions = s
        .subscriptions
        .into_iter()
        .map(|sub| {
            let retain_handling = match sub.retain_handling {
                0 => RetainHandling::AtSubscribe,
                1 => RetainHandling::AtSubscribeIfNew,
                2 => RetainHandling::Never,
                _ => return None,
            };
            let options = SubOptions {
                qos: qos(sub.qos)?,
                no_local: sub.no_local,
                retain_as_published: sub.retain_as_published,
                retain_handling,
                subscription_id: (sub.subscription_id != 0).then_some(sub.subscription_id),
                since_ms: sub.since_ms,
                auto: sub.auto,
            };
            Some((sub.filter, options))
        })
        .collect::<Option<Vec<_>>>()?;
    Some(SessionSnapshot {
        subscriptions,
        inflight: s.inflight.into_iter().map(out).collect::<Option<Vec<_>>>()?,
        queue: s.queue.into_iter().map(|m| out(m).map(|(o, _)| o)).collect::<Option<Vec<_>>>()?,
        incoming_qos2: s.incoming_qos2.into_iter().map(u16::try_from).collect::<Result<Vec<_>, _>>().ok()?,
        last_packet_id: u16::try_from(s.last_packet_id).ok()?,
        cursors: s
            .cursors
            .into_iter()
            .map(|c| Some((Arc::from(c.stream), broker::streams::Cursor::decode(&c.cursor)?)))
            .collect::<Option<Vec<_>>>()?,
        catch_up: match s.catch_up {
            Some(c) => Some(catch_up_from(c)?),
            None => None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;
    use ntex_bytes::ByteString;

    fn message(body: &'static str) -> SharedMessage {
        Arc::new(Message::new(
            ByteString::from("t/1"),
            ntex_bytes::Bytes::from_static(body.as_bytes()),
            QoS::ExactlyOnce,
            false,
        ))
    }

    #[test]
    fn a_session_state_survives_the_trip_between_edges() {
        let mut first = Outgoing::new(message("one"), QoS::ExactlyOnce, false, vec![3]);
        first.packet_id = NonZeroU16::new(41);
        first.dup = true;
        let snap = SessionSnapshot {
            subscriptions: vec![(
                "t/#".to_owned(),
                SubOptions {
                    qos: QoS::ExactlyOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::Never,
                    subscription_id: Some(3),
                    since_ms: u64::MAX,
                    auto: true,
                },
            )],
            inflight: vec![(first, true)],
            queue: vec![Outgoing::new(message("two"), QoS::AtLeastOnce, true, vec![])],
            incoming_qos2: vec![1, 65_535],
            last_packet_id: 41,
            cursors: vec![("acme/im/msg/bob".into(), broker::streams::Cursor { epoch: 9, low: 3, above: vec![5] })],
            catch_up: Some(CatchUp::from_parts(CatchUpParts {
                began: vec![(
                    broker::origins::cursor_name("x").into(),
                    broker::streams::Cursor { epoch: 7, low: 2, above: vec![] },
                )],
                taken: vec![(
                    broker::origins::cursor_name("x").into(),
                    broker::streams::Stamp { epoch: 7, seq: u64::MAX },
                )],
                skip: "dead:12".into(),
                owed: vec![(broker::origins::cursor_name("x").into(), broker::streams::Stamp { epoch: 7, seq: 1 })],
                since_ms: 1_700_000_000_000,
            })),
        };
        let wire = state_of(snap.clone(), 300).encode_to_vec();
        let state = pb::SessionState::decode(&wire[..]).expect("decodes");
        assert_eq!(state.expiry_secs, 300);
        let back = snapshot_from(state).expect("valid");
        assert_eq!(back.subscriptions, snap.subscriptions);
        assert_eq!(back.incoming_qos2, snap.incoming_qos2);
        assert_eq!(back.cursors, snap.cursors);
        let parts = |c: &Option<CatchUp>| c.as_ref().map(CatchUp::parts);
        assert_eq!(parts(&back.catch_up), parts(&snap.catch_up), "a catch-up under way goes on on the next edge");
        assert_eq!(back.last_packet_id, 41);
        let (o, released) = &back.inflight[0];
        assert!(released);
        assert_eq!(
            (o.packet_id, o.dup, o.qos, &o.subscription_ids[..]),
            (NonZeroU16::new(41), true, QoS::ExactlyOnce, &[3][..])
        );
        assert_eq!(&o.msg.payload[..], b"one");
        assert_eq!((back.queue[0].retain, &back.queue[0].msg.payload[..]), (true, &b"two"[..]));
    }

    #[test]
    fn an_invalid_state_is_refused_whole() {
        let bad_qos = pb::SessionState {
            subscriptions: vec![pb::StoredSubscription { filter: "t".into(), qos: 3, ..Default::default() }],
            ..Default::default()
        };
        assert!(snapshot_from(bad_qos).is_none());
        let bad_id = pb::SessionState { incoming_qos2: vec![70_000], ..Default::default() };
        assert!(snapshot_from(bad_id).is_none());
        let no_message = pb::SessionState { queue: vec![pb::StoredMessage::default()], ..Default::default() };
        assert!(snapshot_from(no_message).is_none());
        assert_eq!(snapshot_from(pb::SessionState::default()).map(|s| s.subscriptions.len()), Some(0));
    }
}
