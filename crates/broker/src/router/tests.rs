//! Each decision of the router, at the core's speed: events in, effects out, time passed in.

use std::sync::Arc;

use super::*;
use crate::RetainHandling;
use crate::session::DropPolicy;

#[derive(Debug, Clone, PartialEq)]
struct Msg {
    topic: String,
    body: String,
    qos: QoS,
    retain: bool,
    expires_at_ms: Option<u64>,
    seq: Option<u64>,
    origin: Option<crate::origins::Origin>,
}

fn msg(topic: &str, body: &str, qos: u8) -> Msg {
    Msg {
        topic: topic.into(),
        body: body.into(),
        qos: QoS::from_u8(qos).expect("qos"),
        retain: false,
        expires_at_ms: None,
        seq: None,
        origin: None,
    }
}

/// Message `seq` of node `node`'s incarnation 1, as another node routed it here.
fn from_node(node: &str, seq: u64) -> Msg {
    let at = crate::streams::Stamp { epoch: 1, seq };
    Msg {
        origin: Some(crate::origins::Origin { cursor: crate::origins::cursor_name(node).into(), at }),
        ..msg("t/1", &format!("{node}{seq}"), 1)
    }
}

/// A message at `seq` (epoch 1) of the stream named after its topic.
fn streamed(topic: &str, seq: u64) -> Msg {
    Msg { seq: Some(seq), ..msg(topic, &seq.to_string(), 1) }
}

impl Deliverable for Msg {
    fn expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|at| now_ms >= at)
    }
    fn stream_position(&self) -> Option<(&str, crate::streams::Stamp)> {
        self.seq.map(|seq| (self.topic.as_str(), crate::streams::Stamp { seq, epoch: 1 }))
    }
    fn origin(&self) -> Option<&crate::origins::Origin> {
        self.origin.as_ref()
    }
}

impl Routable for Msg {
    fn topic(&self) -> &str {
        &self.topic
    }
    fn qos(&self) -> QoS {
        self.qos
    }
    fn retain(&self) -> bool {
        self.retain
    }
    fn clears_retained(&self) -> bool {
        self.body.is_empty()
    }
    fn payload_len(&self) -> usize {
        self.body.len()
    }
    fn presence(topic: &str, news: Announce) -> Self {
        let body = if news == Announce::Online { "online" } else { "offline" };
        Msg { retain: true, ..msg(topic, body, 1) }
    }
}

/// The owner is a user name; the ACL refuses what starts with `secret/` and auto-subscribes
/// each user to `inbox/{user}`, plus `extra` when it is set.
#[derive(Default)]
struct Acl {
    extra: Option<String>,
    deny: Vec<String>,
}

impl Authorize<&'static str> for Acl {
    fn can_publish(&self, _: &&'static str, _: &str, topic: &str) -> bool {
        !topic.starts_with("secret/") && !self.deny.iter().any(|d| topic.starts_with(d.as_str()))
    }
    fn can_subscribe(&self, who: &&'static str, cid: &str, filter: &str) -> bool {
        self.can_publish(who, cid, filter)
    }
    fn auto_subscriptions(&self, who: &&'static str, _: &str) -> Vec<(String, QoS)> {
        let mut out = vec![(format!("inbox/{who}"), QoS::AtLeastOnce)];
        out.extend(self.extra.clone().map(|f| (f, QoS::AtMostOnce)));
        out
    }
}

type Fx = Vec<Effect<Msg, &'static str>>;

fn router(grace_ms: u64) -> Router<Msg, &'static str> {
    router_with(0, grace_ms)
}

fn router_with(max_deliveries: u16, grace_ms: u64) -> Router<Msg, &'static str> {
    let session = SessionLimits {
        max_inflight: 2,
        max_queued: 3,
        drop_policy: DropPolicy::DropOldest,
        queue_qos0: false,
        max_deliveries,
    };
    Router::new(RouterConfig {
        session,
        topic: TopicLimits::default(),
        max_subscriptions: 4,
        presence_grace_ms: grace_ms,
        retained_quota: crate::retained::Usage::default(),
    })
}

fn request(user: &'static str, client: &str, clean: bool, expiry: u32) -> ConnectRequest<Msg, &'static str> {
    ConnectRequest {
        session: crate::store::session_key(user, client).into(),
        client_id: client.into(),
        clean_start: clean,
        session_expiry_secs: expiry,
        receive_maximum: 10,
        will: None,
        presence: None,
        owner: user,
        resumed: None,
        catch_up: None,
        hold: false,
    }
}

/// Connects and returns the link and whether a session was resumed; effects go to `fx`.
fn connect(r: &mut Router<Msg, &'static str>, req: ConnectRequest<Msg, &'static str>, fx: &mut Fx) -> (LinkId, bool) {
    let c = r.connect(req, &Acl::default(), 0, fx);
    (c.link, c.session_present)
}

fn gone(session: &str, link: LinkId, graceful: bool, expiry_secs: Option<u32>) -> Disconnect<'_> {
    Disconnect { session, link, graceful, expiry_secs }
}

fn key(user: &str, client: &str) -> String {
    crate::store::session_key(user, client)
}

fn sub(r: &mut Router<Msg, &'static str>, user: &str, client: &str, filter: &str, qos: u8) {
    let options = SubOptions { qos: QoS::from_u8(qos).expect("qos"), ..SubOptions::default() };
    r.subscribe(&key(user, client), filter, options, 0, &mut Fx::new()).expect("subscribed");
}

/// The effects other than what goes to the journal.
fn routing(fx: &Fx) -> Vec<&Effect<Msg, &'static str>> {
    fx.iter().filter(|e| !matches!(e, Effect::Persist { .. })).collect()
}

/// What goes to the journal, in order: `record`/`parked` (with the filters), `+entry`
/// (arrived, `+entry#pid` once it has a packet id, `+entry!` past PUBREC), `-entry`, `ended`.
fn journal(fx: &Fx) -> Vec<String> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Persist { persist, .. } => Some(match persist {
                Persist::Record { subscriptions, parked, expiry_secs } => {
                    let filters: Vec<&str> = subscriptions.iter().map(|(f, _)| f.as_str()).collect();
                    format!("{} {expiry_secs} {}", if *parked { "parked" } else { "record" }, filters.join(","))
                }
                Persist::Change(Change::Kept { out, released, .. }) => format!(
                    "+{}{}{}",
                    out.entry,
                    out.packet_id.map_or(String::new(), |p| format!("#{p}")),
                    if *released { "!" } else { "" }
                ),
                Persist::Change(Change::Done(entry)) => format!("-{entry}"),
                Persist::Change(Change::Inbound(id, held)) => format!("{}i{id}", if *held { "+" } else { "-" }),
                Persist::Change(Change::Cursor(stream, c)) => format!("@{stream}:{}{:?}", c.low, c.above),
                Persist::Ended => "ended".to_owned(),
            }),
            _ => None,
        })
        .collect()
}

/// The bodies delivered to `link`, in order.
fn delivered(fx: &Fx, link: LinkId) -> Vec<String> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Deliver(l, d) if *l == link => Some(d.msg.body.clone()),
            _ => None,
        })
        .collect()
}

/// The messages sessions gave up on, in order: `body` (overflow) or `!body` (exhausted).
fn dropped(fx: &Fx) -> Vec<String> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Dropped { messages, exhausted, .. } => Some(
                messages
                    .iter()
                    .map(|o| format!("{}{}", if *exhausted { "!" } else { "" }, o.msg.body))
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        })
        .flatten()
        .collect()
}

#[test]
fn a_takeover_closes_the_old_connection_and_resumes_its_window_on_the_new_one() {
    let mut r = router(0);
    let mut fx = Fx::new();
    let (old, _) = connect(&mut r, request("bob", "phone", false, 60), &mut fx);
    sub(&mut r, "bob", "phone", "t", 1);
    r.publish(msg("t", "m1", 1), None, 0, &mut fx);
    assert_eq!(delivered(&fx, old), ["m1"]);
    fx.clear();
    let (new, present) = connect(&mut r, request("bob", "phone", false, 60), &mut fx);
    assert!(present, "the session continues");
    assert!(matches!(&fx[0], Effect::TakenOver { link, old: "bob", new: "bob", .. } if *link == old));
    let resent: Vec<_> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::Deliver(l, d) if *l == new => Some((d.msg.body.as_str(), d.dup)),
            _ => None,
        })
        .collect();
    assert_eq!(resent, [("m1", true)], "unacknowledged QoS 1 is resent with DUP");
    // The old connection's late disconnect changes nothing.
    fx.clear();
    assert!(!r.disconnect(gone(&key("bob", "phone"), old, false, None), &Acl::default(), 0, &mut fx));
    assert!(fx.is_empty());
    assert_eq!(r.counts().live, 1);
}

#[test]
fn the_same_client_id_of_another_owner_is_another_session() {
    let mut r = router(0);
    let mut fx = Fx::new();
    let (bob, _) = connect(&mut r, request("bob", "phone", false, 60), &mut fx);
    let (_, present) = connect(&mut r, request("mallory", "phone", false, 60), &mut fx);
    assert!(!present);
    assert!(!fx.iter().any(|e| matches!(e, Effect::TakenOver { .. } | Effect::Close(..))), "{fx:?}");
    assert_eq!(r.counts().live, 2);
    assert_eq!(r.client_id_of(bob).as_deref(), Some("phone"));
}

#[test]
fn a_parked_session_queues_in_order_within_its_bound_and_delivers_on_return() {
    let mut r = router(0);
    let mut fx = Fx::new();
    let (link, _) = connect(&mut r, request("bob", "phone", false, 60), &mut fx);
    sub(&mut r, "bob", "phone", "t", 1);
    assert!(r.disconnect(gone(&key("bob", "phone"), link, true, None), &Acl::default(), 1_000, &mut fx));
    assert_eq!(r.counts(), Counts { live: 0, parked: 1, subscriptions: 1, retained: 0 });
    fx.clear();
    for n in 1..=4 {
        assert_eq!(r.publish(msg("t", &format!("m{n}"), 1), None, 2_000, &mut fx), 1);
    }
    assert_eq!(dropped(&fx), ["m1"], "a bound of 3 drops the oldest while away");
    assert!(matches!(routing(&fx)[..], [Effect::Dropped { session, .. }] if **session == *key("bob", "phone")));
    assert_eq!(journal(&fx), ["+1", "+2", "+3", "+4", "-1"], "the journal drops it too");
    fx.clear();
    let (back, present) = connect(&mut r, request("bob", "phone", false, 60), &mut fx);
    assert!(present);
    assert_eq!(delivered(&fx, back), ["m2", "m3"], "the window of 2 first");
    fx.clear();
    r.complete(&key("bob", "phone"), back, std::num::NonZeroU16::MIN, 3_000, &mut fx);
    assert_eq!(delivered(&fx, back), ["m4"], "an acknowledgement opens the window");
    assert!(matches!(routing(&fx).last(), Some(Effect::Backlog(l, 0)) if *l == back), "{fx:?}");
    assert_eq!(journal(&fx), ["-2", "+4#3"], "m2 is done, m4 in flight");
}

#[test]
fn clean_start_discards_the_parked_session_and_its_subscriptions() {
    let mut r = router(0);
    let mut fx = Fx::new();
    let (link, _) = connect(&mut r, request("bob", "phone", false, 60), &mut fx);
    sub(&mut r, "bob", "phone", "t", 1);
    r.disconnect(gone(&key("bob", "phone"), link, true, None), &Acl::default(), 0, &mut fx);
    let (_, present) = connect(&mut r, request("bob", "phone", true, 0), &mut fx);
    assert!(!present);
    assert_eq!(r.counts().subscriptions, 0);
    assert_eq!(r.publish(msg("t", "m", 1), None, 0, &mut fx), 0);
}

#[test]
fn expiry_zero_ends_the_session_with_the_connection_and_a_v5_disconnect_may_extend_it() {
    let mut r = router(0);
    let mut fx = Fx::new();
    let (link, _) = connect(&mut r, request("bob", "a", false, 0), &mut fx);
    sub(&mut r, "bob", "a", "t", 1);
    r.disconnect(gone(&key("bob", "a"), link, true, None), &Acl::default(), 0, &mut fx);
    assert_eq!(r.counts(), Counts::default());
    let (link, _) = connect(&mut r, request("bob", "b", false, 0), &mut fx);
    r.disconnect(gone(&key("bob", "b"), link, true, Some(5)), &Acl::default(), 0, &mut fx);
    assert_eq!(r.counts().parked, 1, "DISCONNECT's session expiry wins");
    fx.clear();
    r.tick(&Acl::default(), 4_999, &mut fx);
    assert!(fx.is_empty());
    r.tick(&Acl::default(), 5_000, &mut fx);
    assert_eq!(routing(&fx), [&Effect::SessionEnded { session: key("bob", "b").into(), expired: true }]);
    assert_eq!(journal(&fx), ["ended"]);
    assert_eq!(r.counts().parked, 0);
}

#[test]
fn a_will_goes_out_on_an_abnormal_end_only_and_is_checked_again_when_sent() {
    let mut r = router(0);
    let mut fx = Fx::new();
    let (watcher, _) = connect(&mut r, request("carol", "w", true, 0), &mut fx);
    sub(&mut r, "carol", "w", "#", 0);
    let with_will = |user, client, topic: &str, delay_secs| ConnectRequest {
        will: Some(Will { message: msg(topic, "gone", 0), delay_secs }),
        ..request(user, client, true, 60)
    };
    // Graceful: no will.
    let (l, _) = connect(&mut r, with_will("bob", "a", "wills/bob", 0), &mut fx);
    r.disconnect(gone(&key("bob", "a"), l, true, None), &Acl::default(), 0, &mut fx);
    assert!(delivered(&fx, watcher).is_empty());
    // Abnormal: the will.
    let (l, _) = connect(&mut r, with_will("bob", "b", "wills/bob", 0), &mut fx);
    r.disconnect(gone(&key("bob", "b"), l, false, None), &Acl::default(), 0, &mut fx);
    assert_eq!(delivered(&fx, watcher), ["gone"]);
    // The ACL changed since the CONNECT: refused, and said so.
    fx.clear();
    let (l, _) = connect(&mut r, with_will("bob", "c", "wills/bob", 0), &mut fx);
    let now_denied = Acl { deny: vec!["wills/".into()], ..Acl::default() };
    r.disconnect(gone(&key("bob", "c"), l, false, None), &now_denied, 0, &mut fx);
    assert!(delivered(&fx, watcher).is_empty());
    assert!(fx.iter().any(|e| matches!(e, Effect::WillRefused { owner: "bob", topic, .. } if topic == "wills/bob")));
}

/// A will due on a durable stream's topic is handed out to be stamped with its place there,
/// not routed; routed once stamped, as a will (the other edges route it too).
#[test]
fn a_will_on_a_stream_topic_is_handed_out_for_its_place_first() {
    let mut r = router(0);
    r.stamp_wills_on(crate::streams::StreamRules::new(["+/im/msg/+"]).expect("rules"));
    let mut fx = Fx::new();
    let (watcher, _) = connect(&mut r, request("carol", "w", true, 0), &mut fx);
    sub(&mut r, "carol", "w", "acme/#", 0);
    let will = |topic: &str| Some(Will { message: msg(topic, "gone", 0), delay_secs: 0 });
    for (client, topic) in [("a", "acme/im/msg/carol"), ("b", "acme/team/x")] {
        let (l, _) = connect(&mut r, ConnectRequest { will: will(topic), ..request("bob", client, true, 0) }, &mut fx);
        r.disconnect(gone(&key("bob", client), l, false, None), &Acl::default(), 0, &mut fx);
    }
    assert_eq!(delivered(&fx, watcher), ["gone"], "only the one on no stream");
    let handed: Vec<Msg> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::WillForStream(m) => Some(m.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(handed.iter().map(|m| m.topic.as_str()).collect::<Vec<_>>(), ["acme/im/msg/carol"]);
    fx.clear();
    r.send_stamped_will(handed[0].clone(), 0, &mut fx);
    assert_eq!(delivered(&fx, watcher), ["gone"]);
    assert!(fx.iter().any(|e| matches!(e, Effect::Originated(m) if m.topic == "acme/im/msg/carol")));
}

/// A retained will is counted against its tenant's retained quota when it is sent, as a
/// retained PUBLISH is: past it, it is not sent (nor kept), and said so.
#[test]
fn a_retained_will_past_its_tenants_quota_is_not_sent() {
    let mut r = router(0);
    r.cfg.retained_quota = crate::retained::Usage { messages: 1, bytes: 0 };
    let mut fx = Fx::new();
    let (watcher, _) = connect(&mut r, request("carol", "w", true, 0), &mut fx);
    sub(&mut r, "carol", "w", "acme/#", 0);
    r.publish(Msg { retain: true, ..msg("acme/kept", "first", 0) }, None, 0, &mut fx);
    assert!(!r.retained_within_quota("acme/other", 1) && r.retained_within_quota("acme/kept", 9), "replacing fits");
    fx.clear();
    let retained_will = Will { message: Msg { retain: true, ..msg("acme/will", "gone", 0) }, delay_secs: 0 };
    let (l, _) =
        connect(&mut r, ConnectRequest { will: Some(retained_will), ..request("bob", "b", true, 60) }, &mut fx);
    r.disconnect(gone(&key("bob", "b"), l, false, None), &Acl::default(), 0, &mut fx);
    assert!(delivered(&fx, watcher).is_empty());
    assert!(fx.iter().any(|e| matches!(e, Effect::WillRefused { owner: "bob", topic, .. } if topic == "acme/will")));
    assert!(r.retained("acme/will").is_none());
}

#[test]
fn a_delayed_will_waits_is_cancelled_by_a_return_and_is_due_when_the_session_ends() {
    let mut r = router(0);
    let mut fx = Fx::new();
    let (watcher, _) = connect(&mut r, request("carol", "w", true, 0), &mut fx);
    sub(&mut r, "carol", "w", "wills/#", 0);
    let req = || ConnectRequest {
        will: Some(Will { message: msg("wills/bob", "gone", 0), delay_secs: 10 }),
        ..request("bob", "a", false, 60)
    };
    // Comes back within the delay: never sent.
    let (l, _) = connect(&mut r, req(), &mut fx);
    r.disconnect(gone(&key("bob", "a"), l, false, None), &Acl::default(), 0, &mut fx);
    let (l, _) = connect(&mut r, req(), &mut fx);
    r.tick(&Acl::default(), 20_000, &mut fx);
    assert!(delivered(&fx, watcher).is_empty());
    // Stays away: sent after the delay, not before.
    r.disconnect(gone(&key("bob", "a"), l, false, None), &Acl::default(), 20_000, &mut fx);
    r.tick(&Acl::default(), 29_999, &mut fx);
    assert!(delivered(&fx, watcher).is_empty());
    r.tick(&Acl::default(), 30_000, &mut fx);
    assert_eq!(delivered(&fx, watcher), ["gone"]);
    // The delay is capped by the session's expiry: the session ending sends it.
    fx.clear();
    let short = ConnectRequest {
        will: Some(Will { message: msg("wills/bob", "bye", 0), delay_secs: 100 }),
        ..request("bob", "b", false, 2)
    };
    let (l, _) = connect(&mut r, short, &mut fx);
    r.disconnect(gone(&key("bob", "b"), l, false, None), &Acl::default(), 0, &mut fx);
    r.tick(&Acl::default(), 2_000, &mut fx);
    assert_eq!(delivered(&fx, watcher), ["bye"]);
}

#[test]
fn a_delayed_will_is_dropped_when_its_session_moves_on_and_due_when_it_starts_afresh_elsewhere() {
    let mut r = router(0);
    let mut fx = Fx::new();
    let (watcher, _) = connect(&mut r, request("carol", "w", true, 0), &mut fx);
    sub(&mut r, "carol", "w", "wills/#", 0);
    for (client, afresh) in [("moves", false), ("afresh", true)] {
        let req = ConnectRequest {
            will: Some(Will { message: msg(&format!("wills/{client}"), client, 0), delay_secs: 10 }),
            ..request("bob", client, false, 60)
        };
        let (l, _) = connect(&mut r, req, &mut fx);
        r.disconnect(gone(&key("bob", client), l, false, None), &Acl::default(), 0, &mut fx);
        if afresh {
            r.started_afresh_elsewhere(&key("bob", client), &Acl::default(), 1_000, &mut fx);
        }
        assert!(r.hand_over(&key("bob", client), &Acl::default(), 1_000, &mut fx).is_some(), "{client}");
    }
    r.tick(&Acl::default(), 20_000, &mut fx);
    assert_eq!(delivered(&fx, watcher), ["afresh"], "the session continues elsewhere, or ended");
}

#[test]
fn a_dead_nodes_will_goes_out_at_once_or_after_its_delay_unless_its_client_is_here() {
    let mut r = router(0);
    let mut fx = Fx::new();
    let (watcher, _) = connect(&mut r, request("carol", "w", true, 0), &mut fx);
    sub(&mut r, "carol", "w", "wills/#", 0);
    let lost = |client: &str, body: &str, delay_secs| LostWill {
        session: key("bob", client).into(),
        client_id: client.into(),
        owner: "bob",
        will: Will { message: msg(&format!("wills/{client}"), body, 0), delay_secs },
        session_expiry_secs: 60,
        due_ms: None,
    };
    // No delay: at once, even though its client is back here (its old connection ended
    // abnormally).
    let (_back, _) = connect(&mut r, request("bob", "v3", false, 60), &mut fx);
    r.lost_will(lost("v3", "v3 gone", 0), &Acl::default(), 1_000, &mut fx);
    assert_eq!(delivered(&fx, watcher), ["v3 gone"]);
    // Delayed: due after its delay; cancelled by its client coming back first, or already here.
    fx.clear();
    r.lost_will(lost("later", "later gone", 5), &Acl::default(), 1_000, &mut fx);
    r.lost_will(lost("returns", "returns gone", 5), &Acl::default(), 1_000, &mut fx);
    let (_here, _) = connect(&mut r, request("bob", "here", false, 60), &mut fx);
    r.lost_will(lost("here", "here gone", 5), &Acl::default(), 1_000, &mut fx);
    r.tick(&Acl::default(), 5_999, &mut fx);
    assert!(delivered(&fx, watcher).is_empty(), "not before its delay");
    let (_returned, _) = connect(&mut r, request("bob", "returns", false, 60), &mut fx);
    r.tick(&Acl::default(), 6_000, &mut fx);
    assert_eq!(delivered(&fx, watcher), ["later gone"]);
    // The delay ends with the session: at once for one that ended with its connection, at
    // its expiry for a shorter one.
    fx.clear();
    r.lost_will(LostWill { session_expiry_secs: 0, ..lost("clean", "clean gone", 5) }, &Acl::default(), 6_000, &mut fx);
    assert_eq!(delivered(&fx, watcher), ["clean gone"]);
    fx.clear();
    r.lost_will(LostWill { session_expiry_secs: 2, ..lost("short", "short gone", 5) }, &Acl::default(), 6_000, &mut fx);
    r.tick(&Acl::default(), 8_000, &mut fx);
    assert_eq!(delivered(&fx, watcher), ["short gone"]);
    // Checked as any will: an owner the ACL no longer lets publish there gets none out.
    fx.clear();
    r.lost_will(lost("v3", "refused", 0), &Acl { deny: vec!["wills/".into()], ..Acl::default() }, 7_000, &mut fx);
    assert!(delivered(&fx, watcher).is_empty());
    assert!(fx.iter().any(|e| matches!(e, Effect::WillRefused { .. })));
}

/// A delayed will waiting for its delay after its connection ended reads back as the journal
/// keeps it, and another node that finds it lost sends it when it falls due (at once if it
/// is past), unless its client came back there.
#[test]
fn a_waiting_will_falls_due_where_it_was_found_lost_when_it_would_have() {
    let mut r = router(0);
    let mut fx = Fx::new();
    let mut will_of = |client: &str| {
        let req = ConnectRequest {
            will: Some(Will { message: msg(&format!("wills/{client}"), &format!("{client} gone"), 0), delay_secs: 5 }),
            ..request("bob", client, false, 60)
        };
        let (link, _) = connect(&mut r, req, &mut fx);
        r.disconnect(gone(&key("bob", client), link, false, None), &Acl::default(), 1_000, &mut fx);
    };
    for client in ["due", "past", "back"] {
        will_of(client);
    }
    assert!(r.waiting_will(&key("bob", "nobody"), 1_000).is_none());
    let waiting: Vec<_> =
        ["due", "past", "back"].iter().map(|c| r.waiting_will(&key("bob", c), 2_500).expect("waiting")).collect();
    assert!(waiting.iter().all(|w| w.due_ms == Some(6_000) && w.waits()), "delay from the end, 1 s + 5 s");
    // What is left of the wait, for a node that reads no due time: 3.5 s, rounded up.
    assert!(waiting.iter().all(|w| (w.will.delay_secs, w.session_expiry_secs) == (4, 4)));
    // Found lost by another node, 2 s later: due at 6 s, not 7 s.
    let mut other = router(0);
    let (watcher, _) = connect(&mut other, request("carol", "w", true, 0), &mut fx);
    sub(&mut other, "carol", "w", "wills/#", 0);
    let (_back, _) = connect(&mut other, request("bob", "back", false, 60), &mut fx);
    fx.clear();
    let [due, past, back] = <[_; 3]>::try_from(waiting).unwrap_or_else(|_| panic!("three"));
    other.lost_will(due, &Acl::default(), 3_000, &mut fx);
    other.lost_will(back, &Acl::default(), 3_000, &mut fx);
    other.tick(&Acl::default(), 5_999, &mut fx);
    assert!(delivered(&fx, watcher).is_empty(), "not before it falls due");
    other.tick(&Acl::default(), 6_000, &mut fx);
    assert_eq!(delivered(&fx, watcher), ["due gone"], "when it falls due; not the one whose client is back");
    fx.clear();
    other.lost_will(past, &Acl::default(), 9_000, &mut fx);
    assert_eq!(delivered(&fx, watcher), ["past gone"], "found after it fell due: at once");
    assert!(other.waiting_will(&key("bob", "back"), 9_000).is_none());
}

#[test]
fn presence_counts_devices_and_a_takeover_never_shows_offline() {
    let mut r = router(0);
    let mut fx = Fx::new();
    let (watcher, _) = connect(&mut r, request("carol", "w", true, 0), &mut fx);
    sub(&mut r, "carol", "w", "pres/bob", 0);
    let with_presence =
        |client| ConnectRequest { presence: Some(Arc::from("pres/bob")), ..request("bob", client, true, 0) };
    let (phone, _) = connect(&mut r, with_presence("phone"), &mut fx);
    let (_laptop, _) = connect(&mut r, with_presence("laptop"), &mut fx);
    let (phone2, _) = connect(&mut r, with_presence("phone"), &mut fx);
    r.disconnect(gone(&key("bob", "phone"), phone, false, None), &Acl::default(), 0, &mut fx);
    assert_eq!(delivered(&fx, watcher), ["online"], "a second device and a takeover change nothing");
    r.disconnect(gone(&key("bob", "phone"), phone2, false, None), &Acl::default(), 0, &mut fx);
    r.disconnect(gone(&key("bob", "laptop"), _laptop, false, None), &Acl::default(), 0, &mut fx);
    assert_eq!(delivered(&fx, watcher), ["online", "offline"]);
}

#[test]
fn shared_presence_reports_device_counts_and_announces_only_when_told() {
    let mut r = router(0);
    r.share_presence();
    let mut fx = Fx::new();
    let (watcher, _) = connect(&mut r, request("carol", "w", true, 0), &mut fx);
    sub(&mut r, "carol", "w", "pres/bob", 0);
    let with_presence =
        |client| ConnectRequest { presence: Some(Arc::from("pres/bob")), ..request("bob", client, true, 0) };
    let counts = |fx: &Fx| -> Vec<u32> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::DevicesHere { topic, devices } if &**topic == "pres/bob" => Some(*devices),
                _ => None,
            })
            .collect()
    };
    let (phone, _) = connect(&mut r, with_presence("phone"), &mut fx);
    let (laptop, _) = connect(&mut r, with_presence("laptop"), &mut fx);
    let (phone2, _) = connect(&mut r, with_presence("phone"), &mut fx);
    r.disconnect(gone(&key("bob", "phone"), phone, false, None), &Acl::default(), 0, &mut fx);
    r.disconnect(gone(&key("bob", "phone"), phone2, false, None), &Acl::default(), 0, &mut fx);
    r.disconnect(gone(&key("bob", "laptop"), laptop, false, None), &Acl::default(), 0, &mut fx);
    // The takeover counts the new device before the old one goes: never 0 in between.
    assert_eq!(counts(&fx), [1, 2, 3, 2, 1, 0]);
    r.tick(&Acl::default(), 60_000, &mut fx);
    assert!(delivered(&fx, watcher).is_empty(), "the nodes together decide: {fx:?}");
    r.announce("pres/bob", Announce::Offline, 0, &mut fx);
    assert_eq!(delivered(&fx, watcher), ["offline"]);
    assert!(fx.iter().any(|e| matches!(e, Effect::Originated(m) if m.body == "offline")), "other nodes route it too");
}

#[test]
fn presence_grace_hides_one_shot_connections() {
    let mut r = router(3_000);
    let mut fx = Fx::new();
    let (watcher, _) = connect(&mut r, request("carol", "w", true, 0), &mut fx);
    sub(&mut r, "carol", "w", "pres/bob", 0);
    let req = ConnectRequest { presence: Some(Arc::from("pres/bob")), ..request("bob", "send", true, 0) };
    let c = r.connect(req, &Acl::default(), 1_000, &mut fx);
    r.disconnect(gone(&key("bob", "send"), c.link, true, None), &Acl::default(), 1_500, &mut fx);
    r.tick(&Acl::default(), 10_000, &mut fx);
    assert!(delivered(&fx, watcher).is_empty(), "{fx:?}");
}

#[test]
fn routing_honours_no_local_shared_groups_qos_and_expiry() {
    let mut r = router(0);
    let mut fx = Fx::new();
    let (a, _) = connect(&mut r, request("u", "a", true, 0), &mut fx);
    let (b, _) = connect(&mut r, request("u", "b", true, 0), &mut fx);
    let no_local = SubOptions { qos: QoS::AtLeastOnce, no_local: true, ..SubOptions::default() };
    r.subscribe(&key("u", "a"), "t", no_local, 0, &mut fx).expect("sub");
    sub(&mut r, "u", "b", "t", 0);
    sub(&mut r, "u", "a", "$share/g/jobs", 1);
    sub(&mut r, "u", "b", "$share/g/jobs", 1);
    fx.clear();
    assert_eq!(r.publish(msg("t", "own", 1), Some(&key("u", "a")), 0, &mut fx), 1, "not back to its publisher");
    let to_b: Vec<_> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::Deliver(l, d) if *l == b => Some(d.qos),
            _ => None,
        })
        .collect();
    assert_eq!(to_b, [QoS::AtMostOnce], "the subscription's QoS caps the message's");
    fx.clear();
    for n in 0..4 {
        assert_eq!(r.publish(msg("jobs", &n.to_string(), 1), None, 0, &mut fx), 1, "one member of the group");
    }
    assert_eq!(delivered(&fx, a).len() + delivered(&fx, b).len(), 4);
    assert_eq!(delivered(&fx, a).len(), 2, "round robin");
    let stale = Msg { expires_at_ms: Some(10), ..msg("t", "late", 0) };
    assert_eq!(r.publish(stale, None, 10, &mut fx), 0, "an expired message goes nowhere");
}

#[test]
fn retained_messages_are_kept_cleared_and_sent_by_retain_handling() {
    let mut r = router(0);
    let mut fx = Fx::new();
    r.publish(Msg { retain: true, ..msg("r/1", "one", 1) }, None, 0, &mut fx);
    r.publish(Msg { retain: true, ..msg("r/2", "two", 1) }, None, 0, &mut fx);
    r.publish(Msg { retain: true, ..msg("r/2", "", 1) }, None, 0, &mut fx);
    assert_eq!(r.counts().retained, 1, "an empty payload clears");
    let (l, _) = connect(&mut r, request("u", "c", true, 0), &mut fx);
    fx.clear();
    let at_subscribe = SubOptions { qos: QoS::AtLeastOnce, ..SubOptions::default() };
    r.subscribe(&key("u", "c"), "r/#", at_subscribe, 0, &mut fx).expect("sub");
    assert_eq!(delivered(&fx, l), ["one"]);
    fx.clear();
    let if_new = SubOptions { retain_handling: RetainHandling::AtSubscribeIfNew, ..SubOptions::default() };
    r.subscribe(&key("u", "c"), "r/#", if_new, 0, &mut fx).expect("sub");
    assert!(delivered(&fx, l).is_empty(), "not again for an existing subscription");
    r.subscribe(&key("u", "c"), "$share/g/r/#", SubOptions::default(), 0, &mut fx).expect("sub");
    assert!(delivered(&fx, l).is_empty(), "never for a shared subscription");
}

#[test]
fn subscribe_refuses_bad_filters_past_the_quota_and_without_a_session() {
    let mut r = router(0);
    let mut fx = Fx::new();
    connect(&mut r, request("u", "c", true, 0), &mut fx);
    let k = key("u", "c");
    assert!(matches!(r.subscribe(&k, "a/#/b", SubOptions::default(), 0, &mut fx), Err(SubscribeError::Topic(_))));
    for n in 0..4 {
        r.subscribe(&k, &format!("f/{n}"), SubOptions::default(), 0, &mut fx).expect("within quota");
    }
    assert_eq!(r.subscribe(&k, "f/4", SubOptions::default(), 0, &mut fx), Err(SubscribeError::QuotaExceeded));
    assert_eq!(r.subscribe(&k, "f/0", SubOptions::default(), 0, &mut fx), Ok(()), "an existing one is replaced");
    assert_eq!(r.subscribe("nobody", "x", SubOptions::default(), 0, &mut fx), Err(SubscribeError::NoSession));
    assert!(r.unsubscribe(&k, "f/0", &mut fx));
    assert!(!r.unsubscribe(&k, "f/0", &mut fx));
    assert_eq!(r.publish(msg("f/0", "m", 0), None, 0, &mut fx), 0);
}

/// The quota bounds what a client asks for: what the auto-subscribe table gives (a friend's
/// presence each, however many friends) is not counted, and leaves the client its whole quota.
#[test]
fn auto_subscriptions_leave_the_client_its_whole_quota() {
    let mut r = router(0);
    let mut fx = Fx::new();
    connect(&mut r, request("u", "c", true, 0), &mut fx);
    let k = key("u", "c");
    let auto = SubOptions { auto: true, ..SubOptions::default() };
    for n in 0..5 {
        r.subscribe(&k, &format!("pres/{n}"), auto.clone(), 0, &mut fx).expect("auto: past the quota of 4");
    }
    for n in 0..4 {
        r.subscribe(&k, &format!("f/{n}"), SubOptions::default(), 0, &mut fx).expect("the client's own four");
    }
    for n in 5..10 {
        r.subscribe(&k, &format!("pres/{n}"), auto.clone(), 0, &mut fx).expect("auto, with the quota used up");
    }
    assert_eq!(r.subscribe(&k, "f/4", SubOptions::default(), 0, &mut fx), Err(SubscribeError::QuotaExceeded));
    assert_eq!(r.publish(msg("pres/9", "online", 0), None, 0, &mut fx), 1, "the tenth auto-subscription holds");
}

#[test]
fn reauthorization_removes_what_the_acl_no_longer_allows_and_adds_new_auto_subscriptions() {
    let mut r = router(0);
    let mut fx = Fx::new();
    connect(&mut r, request("bob", "c", true, 0), &mut fx);
    connect(&mut r, request("alice", "c", true, 0), &mut fx);
    sub(&mut r, "bob", "c", "friends/carol", 0);
    sub(&mut r, "alice", "c", "friends/carol", 0);
    fx.clear();
    let acl = Acl { deny: vec!["friends/carol".into()], extra: Some("groups/g1".into()) };
    r.reauthorize(&acl, |who| *who == "bob", 0, &mut fx);
    assert_eq!(fx.iter().filter(|e| matches!(e, Effect::SubscriptionRevoked)).count(), 1);
    let (mut to_bob, mut to_alice) = (Fx::new(), Fx::new());
    assert_eq!(r.publish(msg("friends/carol", "x", 0), None, 0, &mut to_alice), 1, "alice was not re-checked");
    assert_eq!(r.publish(msg("groups/g1", "hi", 0), None, 0, &mut to_bob), 1, "bob's new auto-subscription");
    assert_eq!(r.publish(msg("inbox/bob", "dm", 0), None, 0, &mut to_bob), 1);
}

/// Bob may no longer read `friends/`: the ACL changed while his session was away.
fn lost_friends() -> Acl {
    Acl { deny: vec!["friends/".into()], extra: None }
}

/// A parked session is re-checked when its owner resumes it, for the ACL may have changed while
/// it was away (here, or on the node it comes from): a subscription no longer allowed goes,
/// with what it queued; what is in flight stays (the client had it), and so does what a
/// subscription it keeps queued.
#[test]
fn a_session_resumed_after_its_owner_lost_a_right_keeps_neither_the_subscription_nor_what_it_queued() {
    let mut r = router(0);
    let mut fx = Fx::new();
    let (link, _) = connect(&mut r, request("bob", "c", false, 60), &mut fx);
    sub(&mut r, "bob", "c", "friends/carol", 1);
    sub(&mut r, "bob", "c", "t/#", 1);
    r.publish(msg("friends/carol", "in flight", 1), None, 0, &mut fx);
    assert!(r.disconnect(gone(&key("bob", "c"), link, true, None), &Acl::default(), 0, &mut fx));
    r.publish(msg("friends/carol", "while away", 1), None, 0, &mut fx);
    r.publish(msg("t/1", "kept", 1), None, 0, &mut fx);
    fx.clear();
    let c = r.connect(request("bob", "c", false, 60), &lost_friends(), 0, &mut fx);
    assert!(c.session_present);
    assert_eq!(delivered(&fx, c.link), ["in flight", "kept"]);
    assert_eq!(fx.iter().filter(|e| matches!(e, Effect::SubscriptionRevoked)).count(), 1);
    assert_eq!(interest(&fx), ["-friends/carol"]);
    assert!(journal(&fx).contains(&"record 60 t/#".to_owned()), "{:?}", journal(&fx));
    fx.clear();
    assert_eq!(r.publish(msg("friends/carol", "after", 1), None, 0, &mut fx), 0);
}

/// The same check for a session that comes from another node with its client, and for one
/// taken from a dead node, still holding what came behind its replay.
#[test]
fn a_session_moved_or_taken_from_another_node_is_re_checked_when_its_owner_resumes_it() {
    let mut a = router(0);
    let mut fx = Fx::new();
    connect(&mut a, request("bob", "phone", false, 60), &mut fx);
    sub(&mut a, "bob", "phone", "friends/carol", 1);
    let (snapshot, _) = a.hand_over(&key("bob", "phone"), &Acl::default(), 0, &mut fx).expect("on a");
    let mut b = router(0);
    let req = ConnectRequest { resumed: Some(snapshot), ..request("bob", "phone", false, 60) };
    let c = b.connect(req, &lost_friends(), 0, &mut fx);
    assert!(c.session_present);
    assert_eq!(b.publish(msg("friends/carol", "x", 1), None, 0, &mut fx), 0, "moved: re-checked");

    let (mut b, bob) = taken_on_b_subscribed(&["t/#", "friends/carol"], DropPolicy::DropOldest, &mut fx);
    let from_carol = |n| Msg { topic: "friends/carol".into(), ..from_node("c", n) };
    b.publish_remote(from_carol(1), 3_000, &mut fx);
    b.publish_remote(from_node("c", 2), 3_000, &mut fx);
    b.publish(msg("friends/carol", "here-carol", 1), None, 3_000, &mut fx);
    b.publish(msg("t/1", "here-t", 1), None, 3_000, &mut fx);
    fx.clear();
    let c = b.connect(request("bob", "phone", false, 60), &lost_friends(), 3_000, &mut fx);
    assert!(c.session_present);
    for n in 1..=2 {
        b.replay_routed_all(from_node("c", n), 3_000, 3_000, &mut fx);
    }
    let id = b.arrival_id(&bob).expect("held");
    b.replay_done(&bob, id, 3_000, &mut fx);
    assert_eq!(delivered(&fx, c.link), ["x1", "c2", "here-t"], "what came for friends/ is not given");
    assert!(dropped(&fx).is_empty(), "not dead letters: its owner may not read them");
}

/// Revoking picks connections by owner and closes them; their wills, and the delayed will of
/// one of the owner's connections that ended before, are never sent.
#[test]
fn revoking_closes_an_owners_connections_and_drops_their_wills() {
    let mut r = router(0);
    let mut fx = Fx::new();
    let (watcher, _) = connect(&mut r, request("carol", "w", true, 0), &mut fx);
    sub(&mut r, "carol", "w", "wills/#", 0);
    let with_will = |user, client, delay_secs| ConnectRequest {
        will: Some(Will { message: msg(&format!("wills/{user}/{client}"), "gone", 0), delay_secs }),
        ..request(user, client, false, 60)
    };
    let (b1, _) = connect(&mut r, with_will("bob", "1", 0), &mut fx);
    let (b2, _) = connect(&mut r, with_will("bob", "2", 0), &mut fx);
    // Ended abnormally before the revocation: its will waits for its delay.
    let (b3, _) = connect(&mut r, with_will("bob", "3", 10), &mut fx);
    r.disconnect(gone(&key("bob", "3"), b3, false, None), &Acl::default(), 0, &mut fx);
    let (a1, _) = connect(&mut r, with_will("alice", "1", 0), &mut fx);
    fx.clear();
    assert_eq!(r.revoke_where(|o| *o == "bob", &mut fx), 2);
    let mut closed: Vec<LinkId> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::Close(l, CloseReason::Revoked) => Some(*l),
            _ => None,
        })
        .collect();
    closed.sort_unstable();
    assert_eq!(closed, [b1, b2]);
    let mut refused: Vec<&str> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::WillRefused { owner: "bob", topic, .. } => Some(topic.as_str()),
            _ => None,
        })
        .collect();
    refused.sort_unstable();
    assert_eq!(refused, ["wills/bob/1", "wills/bob/2", "wills/bob/3"]);
    // The connections go as the edge closes them, abnormally: no will; nor when the delay is up.
    for (client, link) in [("1", b1), ("2", b2)] {
        r.disconnect(gone(&key("bob", client), link, false, None), &Acl::default(), 1_000, &mut fx);
    }
    r.tick(&Acl::default(), 20_000, &mut fx);
    assert!(delivered(&fx, watcher).is_empty(), "{:?}", delivered(&fx, watcher));
    // Another owner's will is theirs still.
    r.disconnect(gone(&key("alice", "1"), a1, false, None), &Acl::default(), 20_000, &mut fx);
    assert_eq!(delivered(&fx, watcher), ["gone"]);
}

#[test]
fn a_connected_reading_session_never_drops_qos1_and_its_backlog_is_reported() {
    let mut r = router(0);
    let mut fx = Fx::new();
    let (l, _) = connect(&mut r, request("u", "c", true, 0), &mut fx);
    sub(&mut r, "u", "c", "t", 1);
    fx.clear();
    for n in 0..10 {
        r.publish(msg("t", &n.to_string(), 1), None, 0, &mut fx);
    }
    assert!(dropped(&fx).is_empty(), "online: the bound slows publishers, it never drops");
    assert_eq!(delivered(&fx, l), ["0", "1"], "the window");
    assert!(matches!(fx.last(), Some(Effect::Backlog(_, 8))), "{:?}", fx.last());
    // Gone away: what exceeds the offline bound of 3 is dropped, and counted.
    fx.clear();
    r.disconnect(gone(&key("u", "c"), l, true, Some(60)), &Acl::default(), 0, &mut fx);
    assert_eq!(dropped(&fx), ["2", "3", "4", "5", "6"], "the oldest waiting ones");
}

#[test]
fn a_message_sent_max_deliveries_times_without_an_ack_is_given_up() {
    let mut r = router_with(3, 0);
    let mut fx = Fx::new();
    let (mut l, _) = connect(&mut r, request("u", "c", false, 60), &mut fx);
    sub(&mut r, "u", "c", "t", 1);
    r.publish(msg("t", "poison", 1), None, 0, &mut fx);
    r.publish(msg("t", "fine", 1), None, 0, &mut fx);
    assert_eq!(delivered(&fx, l), ["poison", "fine"]);
    // "fine" is acknowledged, "poison" never is: the client fails on it and reconnects.
    let fine = fx.iter().find_map(|e| match e {
        Effect::Deliver(_, d) if d.msg.body == "fine" => d.packet_id,
        _ => None,
    });
    r.complete(&key("u", "c"), l, fine.expect("a packet id"), 0, &mut fx);
    for round in 2..=3 {
        fx.clear();
        l = connect(&mut r, request("u", "c", false, 60), &mut fx).0;
        assert_eq!(delivered(&fx, l), ["poison"], "delivery {round}");
        assert!(dropped(&fx).is_empty());
    }
    fx.clear();
    l = connect(&mut r, request("u", "c", false, 60), &mut fx).0;
    assert!(delivered(&fx, l).is_empty(), "sent 3 times: given up");
    assert_eq!(dropped(&fx), ["!poison"]);
    assert!(journal(&fx).iter().all(|j| !j.contains("+1")), "not in the session any more: {:?}", journal(&fx));
}

#[test]
fn inbound_qos2_ids_are_remembered_until_released() {
    let mut r = router(0);
    let mut fx = Fx::new();
    connect(&mut r, request("u", "c", true, 0), &mut fx);
    let k = key("u", "c");
    fx.clear();
    assert!(r.incoming_qos2(&k, 7, &mut fx));
    assert!(!r.incoming_qos2(&k, 7, &mut fx), "a duplicate before PUBREL");
    assert!(r.incoming_released(&k, 7, &mut fx));
    assert!(!r.incoming_released(&k, 7, &mut fx));
    assert!(r.incoming_qos2(&k, 7, &mut fx));
    assert!(journal(&fx).is_empty(), "a session that ends with its connection is not journaled");

    // A persistent session's ids are journaled as they come and go, and written whole with it.
    let k = key("u", "kept");
    connect(&mut r, request("u", "kept", false, 60), &mut fx);
    fx.clear();
    r.incoming_qos2(&k, 9, &mut fx);
    r.incoming_qos2(&k, 9, &mut fx);
    r.incoming_qos2(&k, 10, &mut fx);
    r.incoming_released(&k, 9, &mut fx);
    let ids: Vec<(u16, bool)> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::Persist { persist: Persist::Change(Change::Inbound(id, held)), .. } => Some((*id, *held)),
            _ => None,
        })
        .collect();
    assert_eq!(ids, [(9, true), (10, true), (9, false)]);
    fx.clear();
    connect(&mut r, request("u", "kept", false, 60), &mut fx);
    assert!(
        fx.iter().any(|e| matches!(e, Effect::Persist { persist: Persist::Change(Change::Inbound(10, true)), .. }))
    );
}

/// The filters whose interest changed, in order: `+f` held, `-f` released.
fn interest(fx: &Fx) -> Vec<String> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Interest { filter, held } => Some(format!("{}{filter}", if *held { '+' } else { '-' })),
            _ => None,
        })
        .collect()
}

#[test]
fn interest_is_reported_for_the_first_and_the_last_subscription_of_a_filter() {
    let mut r = router(0);
    let mut fx = Fx::new();
    let (a, _) = connect(&mut r, request("u", "a", false, 60), &mut fx);
    connect(&mut r, request("u", "b", true, 0), &mut fx);
    for (client, filter) in [("a", "x/#"), ("b", "x/#"), ("a", "$share/g/x/#"), ("b", "y")] {
        r.subscribe(&key("u", client), filter, SubOptions::default(), 0, &mut fx).expect("sub");
    }
    assert_eq!(interest(&fx), ["+x/#", "+$share/g/x/#", "+y"], "a shared subscription counts whole");
    fx.clear();
    assert!(r.unsubscribe(&key("u", "b"), "x/#", &mut fx));
    assert!(interest(&fx).is_empty(), "a still holds x/#");
    // Parked sessions keep their interest; ended ones give it up.
    r.disconnect(gone(&key("u", "a"), a, true, None), &Acl::default(), 0, &mut fx);
    assert!(interest(&fx).is_empty());
    r.tick(&Acl::default(), 60_000, &mut fx);
    let mut ended = interest(&fx);
    ended.sort();
    assert_eq!(ended, ["-$share/g/x/#", "-x/#"]);
    fx.clear();
    connect(&mut r, request("u", "b", true, 0), &mut fx);
    assert_eq!(interest(&fx), ["-y"], "a clean start ends the old session");
}

#[test]
fn wills_and_presence_are_said_to_other_edges_client_publishes_are_not() {
    let mut r = router(0);
    let mut fx = Fx::new();
    let req = ConnectRequest {
        will: Some(Will { message: msg("wills/bob", "gone", 0), delay_secs: 0 }),
        presence: Some(Arc::from("pres/bob")),
        ..request("bob", "a", true, 0)
    };
    let (l, _) = connect(&mut r, req, &mut fx);
    r.publish(msg("t", "client", 0), Some(&key("bob", "a")), 0, &mut fx);
    r.disconnect(gone(&key("bob", "a"), l, false, None), &Acl::default(), 0, &mut fx);
    let said: Vec<_> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::Originated(m) => Some(format!("{} {}", m.topic, m.body)),
            _ => None,
        })
        .collect();
    assert_eq!(said, ["pres/bob online", "wills/bob gone", "pres/bob offline"]);
}

#[test]
fn a_session_handed_to_another_node_continues_there_with_its_queue_and_subscriptions() {
    let (mut a, mut b) = (router(0), router(0));
    let mut fx = Fx::new();
    let (on_a, _) = connect(&mut a, request("bob", "phone", false, 60), &mut fx);
    sub(&mut a, "bob", "phone", "t/#", 1);
    for n in 1..=3 {
        a.publish(msg("t/1", &format!("m{n}"), 1), None, 0, &mut fx);
    }
    assert_eq!(delivered(&fx, on_a), ["m1", "m2"], "a window of 2 in flight, one queued");
    fx.clear();
    // Bob connects to node b; node a hands the session over.
    let (snapshot, expiry) = a.hand_over(&key("bob", "phone"), &Acl::default(), 0, &mut fx).expect("held on a");
    assert_eq!(expiry, 60);
    assert!(fx.contains(&Effect::MovedAway { link: on_a, client_id: "phone".into() }), "{fx:?}");
    assert_eq!(interest(&fx), ["-t/#"], "a no longer wants t/#");
    assert_eq!(a.counts(), Counts::default());
    assert!(a.hand_over(&key("bob", "phone"), &Acl::default(), 0, &mut fx).is_none(), "only once");
    fx.clear();
    let req = ConnectRequest { resumed: Some(snapshot), ..request("bob", "phone", false, 60) };
    let (on_b, present) = connect(&mut b, req, &mut fx);
    assert!(present, "the session continues on b");
    assert_eq!(interest(&fx), ["+t/#"]);
    assert_eq!(delivered(&fx, on_b), ["m1", "m2"], "in-flight messages resent first");
    b.complete(&key("bob", "phone"), on_b, std::num::NonZeroU16::MIN, 0, &mut fx);
    assert_eq!(delivered(&fx, on_b), ["m1", "m2", "m3"]);
    fx.clear();
    b.publish(msg("t/2", "later", 0), None, 0, &mut fx);
    assert_eq!(delivered(&fx, on_b), ["later"], "its subscriptions route on b");
}

#[test]
fn a_parked_session_is_handed_over_and_a_clean_start_ignores_what_came() {
    let (mut a, mut b) = (router(0), router(0));
    let mut fx = Fx::new();
    let req = ConnectRequest {
        will: Some(Will { message: msg("wills/bob", "gone", 0), delay_secs: 30 }),
        ..request("bob", "phone", false, 60)
    };
    let (l, _) = connect(&mut a, req, &mut fx);
    sub(&mut a, "bob", "phone", "t", 1);
    a.disconnect(gone(&key("bob", "phone"), l, false, None), &Acl::default(), 0, &mut fx);
    a.publish(msg("t", "while away", 1), None, 0, &mut fx);
    fx.clear();
    let (snapshot, _) = a.hand_over(&key("bob", "phone"), &Acl::default(), 0, &mut fx).expect("parked on a");
    a.tick(&Acl::default(), 60_000, &mut fx);
    assert!(!fx.iter().any(|e| matches!(e, Effect::Originated(_))), "the delayed will went with the session: {fx:?}");
    assert_eq!(snapshot.queue.len(), 1);
    let fresh = ConnectRequest { resumed: Some(snapshot), ..request("bob", "phone", true, 0) };
    let (l, present) = connect(&mut b, fresh, &mut fx);
    assert!(!present);
    assert!(delivered(&fx, l).is_empty());
    assert_eq!(b.counts().subscriptions, 0);
}

#[test]
fn a_session_that_outlives_its_connection_is_journaled_change_by_change() {
    let mut r = router(0);
    let mut fx = Fx::new();
    let k = key("bob", "phone");
    let (link, _) = connect(&mut r, request("bob", "phone", false, 60), &mut fx);
    assert_eq!(journal(&fx), ["ended", "record 60 "], "whatever was under the key goes");
    fx.clear();
    r.subscribe(&k, "t/+", SubOptions { qos: QoS::ExactlyOnce, ..SubOptions::default() }, 0, &mut fx).expect("sub");
    r.publish(msg("t/1", "one", 1), None, 0, &mut fx);
    r.publish(msg("t/1", "two", 2), None, 0, &mut fx);
    r.complete(&k, link, std::num::NonZeroU16::MIN, 0, &mut fx);
    r.received(&k, std::num::NonZeroU16::new(2).expect("2"), &mut fx);
    assert_eq!(journal(&fx), ["record 60 t/+", "+1#1", "+2#2", "-1", "+2#2!"]);
    fx.clear();
    r.disconnect(gone(&k, link, false, None), &Acl::default(), 1_000, &mut fx);
    r.publish(msg("t/1", "three", 1), None, 0, &mut fx);
    assert_eq!(journal(&fx), ["parked 60 t/+", "+3"], "queued while away");
    fx.clear();
    let (_, present) = connect(&mut r, request("bob", "phone", false, 60), &mut fx);
    assert!(present);
    assert_eq!(journal(&fx), ["ended", "record 60 t/+", "+2#2!", "+3#3"], "written whole on return");
    let durable: Vec<(String, u32)> = r.durable_live().into_iter().map(|(s, e)| (s.to_string(), e)).collect();
    assert_eq!(durable, [(k.clone(), 60)], "the live sessions whose records this node keeps alive");

    // A session that ends with its connection is never written, only cleared.
    fx.clear();
    let (l, _) = connect(&mut r, request("carol", "c", true, 0), &mut fx);
    sub(&mut r, "carol", "c", "t/+", 1);
    r.publish(msg("t/1", "x", 1), None, 0, &mut fx);
    r.disconnect(gone(&key("carol", "c"), l, true, None), &Acl::default(), 0, &mut fx);
    let carol: Vec<String> = fx
        .iter()
        .filter(|e| matches!(e, Effect::Persist { session, .. } if **session == *key("carol", "c")))
        .map(|_| "carol")
        .map(str::to_owned)
        .collect();
    assert_eq!(carol, ["carol", "carol"], "an end at connect and one at disconnect, nothing else: {fx:?}");
}

#[test]
fn retained_messages_published_here_are_journaled_those_of_other_nodes_are_not() {
    let mut r = router(0);
    let mut fx = Fx::new();
    let mut retained = msg("r/1", "kept", 1);
    retained.retain = true;
    r.publish(retained.clone(), None, 0, &mut fx);
    let mut cleared = msg("r/2", "", 1);
    cleared.retain = true;
    r.publish(cleared, None, 0, &mut fx);
    let journaled: Vec<(String, Option<String>)> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::Retain { topic, message } => Some((topic.to_string(), message.as_ref().map(|m| m.body.clone()))),
            _ => None,
        })
        .collect();
    assert_eq!(journaled, [("r/1".to_owned(), Some("kept".to_owned())), ("r/2".to_owned(), None)]);
    fx.clear();
    let mut remote = msg("r/3", "theirs", 1);
    remote.retain = true;
    r.publish_remote(remote, 0, &mut fx);
    assert!(!fx.iter().any(|e| matches!(e, Effect::Retain { .. })), "the publishing node keeps it");
    r.publish(Msg { retain: true, ..msg("$SYS/broker/uptime", "1 seconds", 0) }, None, 0, &mut fx);
    assert!(!fx.iter().any(|e| matches!(e, Effect::Retain { .. })), "a node's own statistics");
    assert!(r.retained("$SYS/broker/uptime").is_some(), "kept here all the same");
    r.retained.set("$SYS/broker/uptime", None);
    r.restore_retained([msg("r/4", "from the journal", 1), msg("r/1", "older", 1)]);
    assert_eq!(r.counts().retained, 3, "r/1, r/3, r/4");
    let mut fx = Fx::new();
    let (_, _) = connect(&mut r, request("u", "c", true, 0), &mut fx);
    fx.clear();
    r.subscribe(&key("u", "c"), "r/1", SubOptions::default(), 0, &mut fx).expect("sub");
    let bodies: Vec<&str> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::Deliver(_, d) => Some(d.msg.body.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(bodies, ["kept"], "a newer message is not replaced by the journal's");
}

#[test]
fn shared_subscriptions_served_through_the_bus_count_but_are_not_delivered_here() {
    let mut r = router(0);
    r.share_through_bus();
    let mut fx = Fx::new();
    let (link, _) = connect(&mut r, request("u", "a", true, 0), &mut fx);
    sub(&mut r, "u", "a", "$share/g/jobs/#", 1);
    fx.clear();
    assert_eq!(r.publish(msg("jobs/1", "w", 1), None, 0, &mut fx), 1, "the group takes it");
    assert!(delivered(&fx, link).is_empty(), "the bus picks the member");
    assert_eq!(r.publish_shared(msg("jobs/2", "w", 1), "$share/g/jobs/#", 0, usize::MAX, &mut fx), Some(1));
    assert_eq!(delivered(&fx, link), ["w"]);
    let other = "$share/other/jobs/#";
    assert_eq!(r.publish_shared(msg("jobs/3", "w", 1), other, 0, usize::MAX, &mut fx), Some(0), "not this group");
}

#[test]
fn a_shared_message_goes_to_a_member_with_room_and_back_to_the_bus_if_none_has() {
    let mut r = router(0);
    r.share_through_bus();
    let mut fx = Fx::new();
    let (a, _) = connect(&mut r, request("u", "a", true, 0), &mut fx);
    let (b, _) = connect(&mut r, request("v", "b", true, 0), &mut fx);
    sub(&mut r, "u", "a", "$share/g/jobs/#", 1);
    sub(&mut r, "v", "b", "$share/g/jobs/#", 1);
    fx.clear();
    let shared = |r: &mut Router<Msg, &'static str>, body: &str, full, fx: &mut Fx| {
        r.publish_shared(msg("jobs/1", body, 1), "$share/g/jobs/#", 0, full, fx)
    };
    // Two in flight to each, then one waiting for each.
    for n in 1..=6 {
        assert_eq!(shared(&mut r, &n.to_string(), 1, &mut fx), Some(1), "message {n}");
    }
    assert_eq!(shared(&mut r, "7", 1, &mut fx), None, "each has one waiting");
    r.complete(&key("u", "a"), a, std::num::NonZeroU16::MIN, 0, &mut fx);
    assert_eq!(shared(&mut r, "7", 1, &mut fx), Some(1), "a has room again");
    assert_eq!(shared(&mut r, "8", 1, &mut fx), None, "7 went to a");
    assert_eq!(shared(&mut r, "8", usize::MAX, &mut fx), Some(1), "without a bound it goes as ever");
    let (to_a, to_b) = (delivered(&fx, a), delivered(&fx, b));
    assert_eq!(
        to_a.len() + to_b.len(),
        5,
        "{to_a:?} {to_b:?}: two in flight each, and a's waiting one once it had room"
    );
}

#[test]
fn a_durable_session_journals_how_far_it_got_in_each_stream() {
    let mut r = router(0);
    let mut fx = Fx::new();
    let (link, _) = connect(&mut r, request("bob", "phone", false, 60), &mut fx);
    sub(&mut r, "bob", "phone", "inbox", 1);
    fx.clear();
    for seq in [4, 6, 5] {
        r.publish(streamed("inbox", seq), None, 0, &mut fx);
    }
    r.publish(streamed("inbox", 5), None, 0, &mut fx);
    let cursors: Vec<String> = journal(&fx).into_iter().filter(|j| j.starts_with('@')).collect();
    assert_eq!(cursors, ["@inbox:4[]", "@inbox:4[6]", "@inbox:6[]"], "a copy it had moves nothing");
    // The whole session, as a takeover writes it, has the cursor too; so does its snapshot.
    fx.clear();
    assert!(r.disconnect(gone(&key("bob", "phone"), link, true, None), &Acl::default(), 0, &mut fx));
    connect(&mut r, request("bob", "phone", false, 60), &mut fx);
    assert!(journal(&fx).contains(&"@inbox:6[]".to_string()), "{:?}", journal(&fx));
    let (snap, _) = r.hand_over(&key("bob", "phone"), &Acl::default(), 0, &mut fx).expect("held");
    assert_eq!(snap.cursors.len(), 1);
    assert!(snap.cursors[0].1.has(6) && !snap.cursors[0].1.has(7));
}

#[test]
fn a_durable_session_starts_its_cursor_where_a_stream_stands_when_it_subscribes() {
    let mut r = router(0);
    let mut fx = Fx::new();
    connect(&mut r, request("bob", "phone", false, 60), &mut fx);
    connect(&mut r, request("ann", "phone", true, 0), &mut fx);
    assert!(!r.wants_cursor(&key("ann", "phone"), "inbox"), "a session that ends with its connection");
    assert!(r.wants_cursor(&key("bob", "phone"), "inbox"));
    fx.clear();
    r.start_cursor(&key("bob", "phone"), "inbox", crate::streams::Stamp { seq: 41, epoch: 1 }, &mut fx);
    assert_eq!(journal(&fx), ["@inbox:41[]"]);
    assert!(!r.wants_cursor(&key("bob", "phone"), "inbox"));
    fx.clear();
    r.start_cursor(&key("bob", "phone"), "inbox", crate::streams::Stamp { seq: 50, epoch: 1 }, &mut fx);
    assert!(journal(&fx).is_empty(), "a cursor it has stays");
}

/// A router whose sessions take 100 messages in flight.
fn wide() -> Router<Msg, &'static str> {
    let mut r = router(0);
    r.cfg.session.max_inflight = 100;
    r
}

/// [`wide`], a node of a cluster.
fn clustered() -> Router<Msg, &'static str> {
    let mut r = wide();
    r.share_through_bus();
    r
}

/// Node b, where Bob's session (`snapshot`, handed over by another node) moved with his client.
fn moved_to_b(snapshot: SessionSnapshot<Msg>, fx: &mut Fx) -> (Router<Msg, &'static str>, LinkId) {
    let mut b = clustered();
    fx.clear();
    let req = ConnectRequest { resumed: Some(snapshot), ..request("bob", "phone", false, 60) };
    let (link, _) = connect(&mut b, req, fx);
    (b, link)
}

/// Bob's persistent session on node a got x1 and x2 from node x (subscribed to `t/#` at
/// 1 000 ms), and a died: its journal (here a's snapshot) goes to node b, which catches up.
fn resumed_on_b() -> (Router<Msg, &'static str>, LinkId, Fx) {
    let mut a = wide();
    let mut fx = Fx::new();
    connect(&mut a, request("bob", "phone", false, 60), &mut fx);
    let options = SubOptions { qos: QoS::AtLeastOnce, ..SubOptions::default() };
    a.subscribe(&key("bob", "phone"), "t/#", options, 1_000, &mut fx).expect("sub");
    for n in 1..=2 {
        a.publish_remote(from_node("x", n), 2_000, &mut fx);
    }
    let (snapshot, _) = a.hand_over(&key("bob", "phone"), &Acl::default(), 0, &mut fx).expect("on a");
    let mut b = wide();
    fx.clear();
    let req =
        ConnectRequest { resumed: Some(snapshot), catch_up: Some("dead".into()), ..request("bob", "phone", false, 60) };
    let (link, present) = connect(&mut b, req, &mut fx);
    assert!(present);
    assert_eq!(delivered(&fx, link), ["x1", "x2"], "the journal's own, resent");
    b.complete(&key("bob", "phone"), link, std::num::NonZeroU16::MIN, 0, &mut fx);
    b.complete(&key("bob", "phone"), link, std::num::NonZeroU16::new(2).expect("2"), 0, &mut fx);
    fx.clear();
    (b, link, fx)
}

#[test]
fn a_replay_gives_a_resumed_session_what_its_dead_node_missed_and_nothing_twice() {
    let (mut b, link, mut fx) = resumed_on_b();
    let bob = key("bob", "phone");
    assert!(!b.replay_routed(&bob, from_node("x", 2), 3_000, 3_000, &mut fx), "the journal had x2");
    assert!(b.replay_routed(&bob, from_node("x", 3), 3_000, 3_000, &mut fx));
    b.publish_remote(from_node("x", 6), 3_000, &mut fx);
    assert!(b.replay_routed(&bob, from_node("x", 4), 3_000, 3_000, &mut fx), "a gap the live path left");
    b.publish_remote(from_node("x", 4), 3_000, &mut fx);
    assert!(!b.replay_routed(&bob, from_node("x", 6), 3_000, 3_000, &mut fx), "it came live");
    assert!(b.replay_routed(&bob, from_node("y", 1), 3_000, 3_000, &mut fx), "another node");
    assert!(!b.replay_routed(&bob, from_node("y", 2), 500, 3_000, &mut fx), "taken before the subscription");
    b.publish_remote(from_node("y", 1), 3_000, &mut fx);
    let id = b.catch_up_id(&bob).expect("catching up");
    b.caught_up(&bob, id + 1000);
    assert!(b.replay_routed(&bob, from_node("z", 0), 3_000, 3_000, &mut fx), "another catch-up's end changes nothing");
    b.caught_up(&bob, id);
    assert!(!b.replay_routed(&bob, from_node("z", 1), 3_000, 3_000, &mut fx), "caught up: nothing more");
    b.publish_remote(from_node("x", 7), 3_000, &mut fx);
    assert_eq!(delivered(&fx, link), ["x3", "x6", "x4", "y1", "z0", "x7"], "x4 live was a copy, so was y1");
}

#[test]
fn a_replayed_message_that_then_comes_live_is_delivered_once() {
    let (mut b, link, mut fx) = resumed_on_b();
    let bob = key("bob", "phone");
    for n in 3..=5 {
        assert!(b.replay_routed(&bob, from_node("x", n), 3_000, 3_000, &mut fx));
    }
    for n in 4..=6 {
        b.publish_remote(from_node("x", n), 3_000, &mut fx);
    }
    let id = b.catch_up_id(&bob).expect("catching up");
    b.caught_up(&bob, id);
    assert_eq!(delivered(&fx, link), ["x3", "x4", "x5", "x6"]);
    let cursor = format!("@{}:6[]", crate::origins::cursor_name("x"));
    assert!(journal(&fx).contains(&cursor), "the cursor with x is journaled: {:?}", journal(&fx));
}

#[test]
fn a_session_not_resumed_from_a_journal_takes_no_replay() {
    let mut r = router(0);
    let mut fx = Fx::new();
    connect(&mut r, request("bob", "phone", false, 60), &mut fx);
    sub(&mut r, "bob", "phone", "t/#", 1);
    assert!(!r.replay_routed(&key("bob", "phone"), from_node("x", 1), 0, 0, &mut fx), "nothing to catch up on");
    let clean = ConnectRequest { catch_up: Some("dead".into()), ..request("eve", "phone", true, 0) };
    connect(&mut r, clean, &mut fx);
    sub(&mut r, "eve", "phone", "t/#", 1);
    assert!(!r.replay_routed(&key("eve", "phone"), from_node("x", 1), 0, 0, &mut fx), "a clean session");
    assert!(!r.replay_routed("nobody", from_node("x", 1), 0, 0, &mut fx));
}

#[test]
fn a_node_cut_off_from_the_others_replays_to_its_sessions_what_they_missed() {
    let mut r = router(0);
    r.cfg.session.max_inflight = 100;
    let mut fx = Fx::new();
    let (bob_link, _) = connect(&mut r, request("bob", "phone", false, 60), &mut fx);
    let (eve_link, _) = connect(&mut r, request("eve", "phone", true, 0), &mut fx);
    let (ann_link, _) = connect(&mut r, request("ann", "phone", false, 60), &mut fx);
    let options = SubOptions { qos: QoS::AtLeastOnce, ..SubOptions::default() };
    for user in ["bob", "eve"] {
        r.subscribe(&key(user, "phone"), "t/#", options.clone(), 1_000, &mut fx).expect("sub");
    }
    r.subscribe(&key("ann", "phone"), "$share/g/t/#", options.clone(), 1_000, &mut fx).expect("sub");
    // Ann leaves: her session stays parked here.
    let ann = key("ann", "phone");
    assert!(r.disconnect(gone(&ann, ann_link, true, None), &Acl::default(), 2_000, &mut fx));
    for n in 1..=2 {
        r.publish_remote(from_node("x", n), 2_000, &mut fx);
    }
    let mut catching_up = r.begin_catch_up_all(&"this".into(), |_| false);
    catching_up.sort();
    let bob: Arc<str> = key("bob", "phone").into();
    let names: Vec<Arc<str>> = catching_up.iter().map(|(s, _)| s.clone()).collect();
    let eve: Arc<str> = key("eve", "phone").into();
    assert_eq!(names, [Arc::from(ann.as_str()), bob.clone(), eve.clone()], "every live session, and the parked");
    assert_eq!(r.plain_filters(&bob), ["t/#"]);
    assert!(r.plain_filters(&ann).is_empty(), "her only one is shared");
    let held = catching_up.clone();
    assert!(
        r.begin_catch_up_all(&"this".into(), |s| held.iter().any(|(h, _)| &**h == s)).is_empty(),
        "once per outage"
    );
    fx.clear();
    assert_eq!(r.replay_routed_all(from_node("x", 2), 3_000, 3_000, &mut fx), 0, "bob had x2");
    assert_eq!(r.replay_routed_all(from_node("x", 3), 3_000, 3_000, &mut fx), 2, "bob and eve missed x3");
    r.publish_remote(from_node("x", 5), 3_000, &mut fx);
    assert_eq!(r.replay_routed_all(from_node("x", 5), 3_000, 3_000, &mut fx), 0, "x5 came live");
    assert_eq!(r.replay_routed_all(from_node("x", 4), 500, 3_000, &mut fx), 0, "taken before the subscription");
    for (session, id) in &catching_up {
        r.caught_up(session, *id);
    }
    assert_eq!(r.replay_routed_all(from_node("x", 6), 3_000, 3_000, &mut fx), 0, "caught up");
    assert_eq!(delivered(&fx, bob_link), ["x3", "x5"]);
    assert_eq!(delivered(&fx, eve_link), ["x3", "x5"], "a session that ends with its connection too");
}

#[test]
fn a_session_restored_from_the_journal_is_parked_and_queues_what_comes() {
    let mut a = router(0);
    let mut fx = Fx::new();
    connect(&mut a, request("bob", "phone", false, 60), &mut fx);
    sub(&mut a, "bob", "phone", "t/#", 1);
    let (snapshot, _) = a.hand_over(&key("bob", "phone"), &Acl::default(), 0, &mut fx).expect("on a");
    let mut r = router(0);
    fx.clear();
    let bob: Arc<str> = key("bob", "phone").into();
    assert!(r.restore_parked(&bob, snapshot.clone(), 60, None, 1_000, &mut fx));
    assert_eq!(journal(&fx), ["parked 60 t/#"], "its record lives as a parked one's");
    assert!(!r.restore_parked(&bob, snapshot, 60, None, 1_000, &mut fx), "here already");
    fx.clear();
    assert_eq!(r.publish(msg("t/1", "queued", 1), None, 2_000, &mut fx), 1, "parked, it takes what comes");
    assert_eq!(journal(&fx), ["+1"]);
    let (link, present) = connect(&mut r, request("bob", "phone", false, 60), &mut fx);
    assert!(present);
    assert_eq!(delivered(&fx, link), ["queued"]);
}

#[test]
fn a_session_handed_over_while_it_catches_up_goes_on_catching_up_on_the_next_node() {
    let (mut b, _, mut fx) = resumed_on_b();
    let bob = key("bob", "phone");
    assert!(b.replay_routed(&bob, from_node("x", 3), 3_000, 3_000, &mut fx));
    b.publish_remote(from_node("x", 6), 3_000, &mut fx);
    let (snapshot, _) = b.hand_over(&bob, &Acl::default(), 3_000, &mut fx).expect("on b");
    let carried = snapshot.catch_up.clone().expect("it was catching up");
    assert_eq!(&**carried.skip(), "dead", "the replay still skips what the dead node published");
    let mut c = wide();
    fx.clear();
    let (link, present) =
        connect(&mut c, ConnectRequest { resumed: Some(snapshot), ..request("bob", "phone", false, 60) }, &mut fx);
    assert!(present);
    fx.clear();
    assert!(!c.replay_routed(&bob, from_node("x", 2), 3_000, 3_000, &mut fx), "the journal had x2");
    assert!(!c.replay_routed(&bob, from_node("x", 3), 3_000, 3_000, &mut fx), "b replayed x3");
    assert!(!c.replay_routed(&bob, from_node("x", 6), 3_000, 3_000, &mut fx), "x6 came live on b");
    assert!(c.replay_routed(&bob, from_node("x", 4), 3_000, 3_000, &mut fx), "what b had not replayed yet");
    let id = c.catch_up_id(&bob).expect("it goes on catching up");
    c.caught_up(&bob, id);
    assert!(!c.replay_routed(&bob, from_node("x", 5), 3_000, 3_000, &mut fx), "caught up");
    assert_eq!(delivered(&fx, link), ["x4"]);
    let (snapshot, _) = c.hand_over(&bob, &Acl::default(), 3_000, &mut fx).expect("on c");
    assert!(snapshot.catch_up.is_none(), "caught up: it moves on without one");
}

#[test]
fn a_session_taken_from_a_dead_node_is_parked_catching_up() {
    let mut a = wide();
    let mut fx = Fx::new();
    connect(&mut a, request("bob", "phone", false, 60), &mut fx);
    let options = SubOptions { qos: QoS::AtLeastOnce, ..SubOptions::default() };
    a.subscribe(&key("bob", "phone"), "t/#", options, 1_000, &mut fx).expect("sub");
    a.publish_remote(from_node("x", 1), 2_000, &mut fx);
    let (snapshot, _) = a.hand_over(&key("bob", "phone"), &Acl::default(), 0, &mut fx).expect("on a");
    let mut b = clustered();
    b.cfg.session.max_queued = 10;
    fx.clear();
    let bob: Arc<str> = key("bob", "phone").into();
    assert!(b.restore_parked(&bob, snapshot, 60, Some("dead".into()), 3_000, &mut fx));
    assert_eq!(b.replay_routed_all(from_node("x", 1), 3_000, 3_000, &mut fx), 0, "the journal had x1");
    b.publish_remote(from_node("y", 2), 3_000, &mut fx);
    assert_eq!(b.publish(msg("t/1", "here1", 1), None, 3_000, &mut fx), 1, "queued for it");
    assert_eq!(b.replay_routed_all(from_node("x", 2), 3_000, 3_000, &mut fx), 1, "queued while parked");
    assert_eq!(b.replay_routed_all(from_node("y", 1), 3_000, 3_000, &mut fx), 1);
    let id = b.arrival_id(&bob).expect("what comes waits for its replay");
    b.replay_done(&bob, id, 3_000, &mut fx);
    assert_eq!(b.catch_up_id(&bob), None, "its catch-up ended");
    assert_eq!(b.replay_routed_all(from_node("x", 3), 3_000, 3_000, &mut fx), 0, "caught up");
    fx.clear();
    let (link, present) = connect(&mut b, request("bob", "phone", false, 60), &mut fx);
    assert!(present);
    assert_eq!(
        delivered(&fx, link),
        ["x1", "x2", "y1", "y2", "here1"],
        "x1 was in flight on a; then what the replay gave, before what came meanwhile"
    );
}

/// Bob's persistent session (subscribed to `t/#`, x1 in flight) taken by node b from a dead
/// node, parked there with a queue of at most 3 (`policy`), holding what comes behind its
/// replay.
fn taken_on_b(policy: DropPolicy, fx: &mut Fx) -> (Router<Msg, &'static str>, Arc<str>) {
    taken_on_b_subscribed(&["t/#"], policy, fx)
}

/// [`taken_on_b`], subscribed to `filters`.
fn taken_on_b_subscribed(filters: &[&str], policy: DropPolicy, fx: &mut Fx) -> (Router<Msg, &'static str>, Arc<str>) {
    let mut a = wide();
    connect(&mut a, request("bob", "phone", false, 60), fx);
    let options = SubOptions { qos: QoS::AtLeastOnce, ..SubOptions::default() };
    for filter in filters {
        a.subscribe(&key("bob", "phone"), filter, options.clone(), 1_000, fx).expect("sub");
    }
    a.publish_remote(from_node("x", 1), 2_000, fx);
    let (snapshot, _) = a.hand_over(&key("bob", "phone"), &Acl::default(), 0, fx).expect("on a");
    let mut b = clustered();
    b.cfg.session.drop_policy = policy;
    fx.clear();
    let bob: Arc<str> = key("bob", "phone").into();
    assert!(b.restore_parked(&bob, snapshot, 60, Some("dead".into()), 3_000, fx));
    (b, bob)
}

#[test]
fn a_taken_session_holds_no_more_than_its_queue_takes_whatever_its_drop_policy() {
    for (policy, kept, gone) in [
        (DropPolicy::DropOldest, ["c3", "c4", "here1"], ["c1", "c2"]),
        (DropPolicy::DropNewest, ["c1", "c2", "c3"], ["c4", "here1"]),
    ] {
        let mut fx = Fx::new();
        let (mut b, bob) = taken_on_b(policy, &mut fx);
        for n in 1..=4 {
            b.publish_remote(from_node("c", n), 3_000, &mut fx);
        }
        b.publish(msg("t/1", "here1", 1), None, 3_000, &mut fx);
        // Its replay reads them all: what was dropped it does not give again.
        for n in 1..=4 {
            b.replay_routed_all(from_node("c", n), 3_000, 3_000, &mut fx);
        }
        assert_eq!(dropped(&fx), gone, "{policy:?}: each once");
        let id = b.arrival_id(&bob).expect("held");
        b.replay_done(&bob, id, 3_000, &mut fx);
        assert_eq!(b.catch_up_id(&bob), None, "{policy:?}: its catch-up ended, nothing left waited for");
        fx.clear();
        let (link, _) = connect(&mut b, request("bob", "phone", false, 60), &mut fx);
        let mut want = vec!["x1"];
        want.extend(kept);
        assert_eq!(delivered(&fx, link), want, "{policy:?}");
    }
}

/// A taken session whose client comes and goes while its replay runs holds no bound while the
/// client is there; when it goes, the session is cut to its bound counting what it holds
/// unread, by its drop policy, as a session that arrives offline is kept to it.
#[test]
fn a_taken_session_whose_client_comes_and_goes_while_it_arrives_is_cut_to_its_bound() {
    // What it holds goes in before what reached it here meanwhile (here1): the oldest are the
    // first it holds, the newest here1 and then the last it holds.
    for (policy, kept, cut) in [
        (DropPolicy::DropOldest, ["c5", "c6", "here1"], ["c1", "c2", "c3", "c4"]),
        (DropPolicy::DropNewest, ["c1", "c2", "c3"], ["c4", "c5", "c6", "here1"]),
    ] {
        let mut fx = Fx::new();
        let (mut b, bob) = taken_on_b(policy, &mut fx);
        let (link, _) = connect(&mut b, request("bob", "phone", false, 60), &mut fx);
        for n in 1..=6 {
            b.publish_remote(from_node("c", n), 3_000, &mut fx);
        }
        b.publish(msg("t/1", "here1", 1), None, 3_000, &mut fx);
        assert!(dropped(&fx).is_empty(), "{policy:?}: no bound while its client is there");
        fx.clear();
        assert!(b.disconnect(gone(&bob, link, true, None), &Acl::default(), 3_100, &mut fx));
        assert_eq!(dropped(&fx), cut, "{policy:?}: cut to its bound as its client went");
        // Its replay reads them all: what was dropped it does not give again.
        for n in 1..=6 {
            b.replay_routed_all(from_node("c", n), 3_000, 3_200, &mut fx);
        }
        let id = b.arrival_id(&bob).expect("held");
        b.replay_done(&bob, id, 3_300, &mut fx);
        fx.clear();
        let (link, _) = connect(&mut b, request("bob", "phone", false, 60), &mut fx);
        let mut want = vec!["x1"];
        want.extend(kept);
        assert_eq!(delivered(&fx, link), want, "{policy:?}");
    }
}

#[test]
fn what_a_taken_session_holds_and_its_replay_gave_counts_once_toward_its_bound() {
    let mut fx = Fx::new();
    let (mut b, bob) = taken_on_b(DropPolicy::DropOldest, &mut fx);
    for n in 1..=3 {
        b.publish_remote(from_node("c", n), 3_000, &mut fx);
    }
    for n in 1..=3 {
        assert_eq!(b.replay_routed_all(from_node("c", n), 3_000, 3_000, &mut fx), 1, "c{n} read");
    }
    assert!(dropped(&fx).is_empty(), "three, with a bound of three: {:?}", dropped(&fx));
    let id = b.arrival_id(&bob).expect("held");
    b.replay_done(&bob, id, 3_000, &mut fx);
    fx.clear();
    let (link, _) = connect(&mut b, request("bob", "phone", false, 60), &mut fx);
    assert_eq!(delivered(&fx, link), ["x1", "c1", "c2", "c3"]);
}

#[test]
fn a_taken_session_drops_a_live_copy_of_what_its_replay_gave_until_its_catch_up_ends() {
    let mut fx = Fx::new();
    let (mut b, bob) = taken_on_b(DropPolicy::DropOldest, &mut fx);
    assert_eq!(b.replay_routed_all(from_node("c", 1), 3_000, 3_000, &mut fx), 1);
    let id = b.arrival_id(&bob).expect("held");
    b.arrived(&bob, id, 3_000, &mut fx);
    assert_eq!(b.arrival_id(&bob), None, "what comes goes in again");
    b.publish_remote(from_node("c", 1), 3_000, &mut fx);
    b.publish_remote(from_node("c", 2), 3_000, &mut fx);
    b.replay_done(&bob, id, 3_000, &mut fx);
    assert_eq!(b.catch_up_id(&bob), None, "its catch-up ended");
    fx.clear();
    let (link, _) = connect(&mut b, request("bob", "phone", false, 60), &mut fx);
    assert_eq!(delivered(&fx, link), ["x1", "c1", "c2"], "c1 once: its live copy came while it caught up");
}

#[test]
fn a_taken_session_holds_no_qos_0_message_it_would_not_queue_offline() {
    let mut fx = Fx::new();
    let (mut b, bob) = taken_on_b(DropPolicy::DropOldest, &mut fx);
    for n in 1..=3 {
        b.publish(msg("t/1", &format!("here{n}"), 1), None, 3_000, &mut fx);
    }
    let at_most_once = Msg { qos: QoS::AtMostOnce, ..from_node("c", 9) };
    b.publish_remote(at_most_once.clone(), 3_000, &mut fx);
    assert_eq!(dropped(&fx), ["c9"], "the QoS 0 message, not a queued one");
    assert_eq!(b.replay_routed_all(at_most_once, 3_000, 3_000, &mut fx), 0, "nor again from the replay");
    let id = b.arrival_id(&bob).expect("held");
    b.replay_done(&bob, id, 3_000, &mut fx);
    fx.clear();
    let (link, _) = connect(&mut b, request("bob", "phone", false, 60), &mut fx);
    assert_eq!(delivered(&fx, link), ["x1", "here1", "here2", "here3"]);
}

#[test]
fn a_session_catching_up_after_a_dead_node_when_its_node_loses_the_others_waits_for_both_replays() {
    let (mut b, link, mut fx) = resumed_on_b();
    let bob: Arc<str> = key("bob", "phone").into();
    let id = b.catch_up_id(&bob).expect("catching up");
    assert_eq!(
        b.begin_catch_up_all(&"b".into(), |_| false),
        [(bob.clone(), id)],
        "it waits for the outage's replay too"
    );
    b.caught_up(&bob, id);
    assert!(b.replay_routed(&bob, from_node("x", 3), 3_000, 3_000, &mut fx), "the outage's replay still gives");
    assert!(!b.replay_routed(&bob, from_node("x", 2), 3_000, 3_000, &mut fx), "what the journal had: still not");
    b.caught_up(&bob, id);
    assert!(!b.replay_routed(&bob, from_node("x", 4), 3_000, 3_000, &mut fx), "both done");
    assert_eq!(delivered(&fx, link), ["x3"]);
}

/// Bob (a session that ends with its connection) on a node of a cluster, subscribed to `t/#`.
fn bob_on_a_node() -> (Router<Msg, &'static str>, LinkId, Fx) {
    let mut r = clustered();
    let mut fx = Fx::new();
    let (link, _) = connect(&mut r, request("bob", "phone", true, 0), &mut fx);
    sub(&mut r, "bob", "phone", "t/#", 1);
    (r, link, fx)
}

/// Bob ([`bob_on_a_node`]) got x1 live; then his connection has too much waiting, and he falls behind.
fn behind_after_x1() -> (Router<Msg, &'static str>, LinkId, Fx, Arc<str>, u64) {
    let (mut r, link, mut fx) = bob_on_a_node();
    r.publish_remote(from_node("x", 1), 2_000, &mut fx);
    let (bob, id) = r.fall_behind(link, &"me".into()).expect("bob falls behind");
    assert_eq!(&*bob, key("bob", "phone"));
    assert_eq!(r.fall_behind(link, &"me".into()), None, "behind already");
    (r, link, fx, bob, id)
}

#[test]
fn a_session_behind_takes_what_other_nodes_route_from_its_replay_in_order_and_once() {
    let (mut r, link, mut fx, bob, id) = behind_after_x1();
    let behind = |replayed, left| Some(BehindStep::Behind { replayed, left });
    r.publish_remote(from_node("x", 2), 2_000, &mut fx);
    r.publish_remote(from_node("x", 3), 2_000, &mut fx);
    fx.clear();
    r.publish_remote(msg("t/1", "q", 0), 2_000, &mut fx);
    assert!(!fx.iter().any(|e| matches!(e, Effect::Backlog(..))), "nothing from the bus waits for it");
    r.publish(msg("t/1", "here", 1), None, 2_000, &mut fx);
    assert!(fx.iter().any(|e| matches!(e, Effect::Backlog(..))), "a publisher here waits for room as ever");
    assert_eq!(r.caught_up_behind(&bob, id), behind(0, 2), "x2 and x3 are still to come");
    assert!(!r.replay_routed(&bob, from_node("x", 1), 2_000, 3_000, &mut fx), "it had x1");
    assert!(r.replay_routed(&bob, from_node("x", 2), 2_000, 3_000, &mut fx));
    assert_eq!(r.caught_up_behind(&bob, id), behind(1, 1), "x3 is still to come");
    r.publish_remote(from_node("y", 1), 2_000, &mut fx);
    assert!(r.replay_routed(&bob, from_node("x", 3), 2_000, 3_000, &mut fx));
    assert_eq!(r.caught_up_behind(&bob, id), behind(2, 1), "y1 came while x3 was replayed");
    assert!(r.replay_routed(&bob, from_node("y", 1), 2_000, 3_000, &mut fx));
    assert!(!r.replay_routed(&bob, from_node("y", 1), 2_000, 3_000, &mut fx), "once");
    assert_eq!(r.caught_up_behind(&bob, id), Some(BehindStep::Draining), "the replay read all it skipped");
    r.publish_remote(from_node("x", 4), 2_000, &mut fx);
    assert!(!r.replay_routed(&bob, from_node("x", 4), 2_000, 3_000, &mut fx), "x4 came live");
    r.publish_remote(from_node("x", 3), 2_000, &mut fx);
    assert_eq!(r.caught_up_behind(&bob, id), Some(BehindStep::Done));
    assert_eq!(r.caught_up_behind(&bob, id), None, "no longer behind");
    r.publish_remote(from_node("x", 5), 2_000, &mut fx);
    assert!(!r.replay_routed(&bob, from_node("x", 6), 2_000, 3_000, &mut fx), "its catch-up ended");
    assert_eq!(
        delivered(&fx, link),
        ["q", "here", "x2", "x3", "y1", "x4", "x5"],
        "what the bus keeps, in each node's order, once (a late live copy of x3 too); the rest as it came"
    );
}

#[test]
fn a_session_behind_takes_each_message_it_skipped_whatever_it_had_from_that_node() {
    let (mut r, link, mut fx) = bob_on_a_node();
    r.publish_remote(from_node("x", 1), 2_000, &mut fx);
    // x3 overtook x2 on its way (another subject).
    r.publish_remote(from_node("x", 3), 2_000, &mut fx);
    let (bob, id) = r.fall_behind(link, &"me".into()).expect("bob falls behind");
    r.publish_remote(from_node("x", 2), 2_000, &mut fx);
    let expired = Msg { expires_at_ms: Some(2_500), ..from_node("x", 4) };
    r.publish_remote(expired.clone(), 2_000, &mut fx);
    assert!(r.replay_routed(&bob, from_node("x", 2), 2_000, 3_000, &mut fx), "skipped, though it had x3");
    assert!(!r.replay_routed(&bob, expired, 2_000, 3_000, &mut fx), "expired by the time it was replayed");
    assert_eq!(r.caught_up_behind(&bob, id), Some(BehindStep::Draining), "nothing more to wait for");
    assert_eq!(delivered(&fx, link), ["x1", "x3", "x2"]);
}

#[test]
fn a_session_behind_that_fills_up_again_while_it_drains_skips_again_under_the_same_replay() {
    let (mut r, link, mut fx, bob, id) = behind_after_x1();
    assert_eq!(r.caught_up_behind(&bob, id), Some(BehindStep::Draining), "nothing skipped");
    r.publish_remote(from_node("x", 2), 2_000, &mut fx);
    assert_eq!(r.fall_behind(link, &"me".into()), None, "its replay goes on");
    r.publish_remote(from_node("x", 3), 2_000, &mut fx);
    assert_eq!(r.caught_up_behind(&bob, id), Some(BehindStep::Behind { replayed: 0, left: 1 }));
    assert!(!r.replay_routed(&bob, from_node("x", 2), 2_000, 3_000, &mut fx), "x2 came live");
    assert!(r.replay_routed(&bob, from_node("x", 3), 2_000, 3_000, &mut fx));
    assert_eq!(r.caught_up_behind(&bob, id), Some(BehindStep::Draining));
    assert_eq!(r.caught_up_behind(&bob, id), Some(BehindStep::Done));
    assert_eq!(delivered(&fx, link), ["x1", "x2", "x3"]);
}

#[test]
fn a_session_behind_whose_replay_gives_up_takes_what_comes_live_again() {
    let (mut r, link, mut fx, bob, id) = behind_after_x1();
    r.publish_remote(from_node("x", 2), 2_000, &mut fx);
    assert_eq!(r.give_up_behind(&bob, id), Some(1), "x2 never found");
    r.publish_remote(from_node("x", 3), 2_000, &mut fx);
    assert_eq!(delivered(&fx, link), ["x1", "x3"]);
    let (again, next) = r.fall_behind(link, &"me".into()).expect("it may fall behind again");
    assert_eq!(again, bob);
    assert_eq!(r.give_up_behind(&bob, id), None, "an earlier replay ends nothing");
    assert_eq!(r.caught_up_behind(&bob, id), None, "nor steps it");
    assert_eq!(r.give_up_behind(&bob, next), Some(0));
}

#[test]
fn a_session_behind_that_moves_takes_on_the_next_node_what_it_skipped_below_what_it_had() {
    let (mut a, link, mut fx) = bob_on_a_node();
    // x2 overtook x1 on its way (another subject).
    a.publish_remote(from_node("x", 2), 2_000, &mut fx);
    let (bob, _) = a.fall_behind(link, &"me".into()).expect("bob falls behind");
    a.publish_remote(from_node("x", 1), 2_000, &mut fx);
    let (snapshot, _) = a.hand_over(&bob, &Acl::default(), 0, &mut fx).expect("on a");
    let (mut b, link) = moved_to_b(snapshot, &mut fx);
    assert!(!b.replay_routed(&bob, from_node("x", 2), 2_000, 3_000, &mut fx), "it had x2");
    assert!(b.replay_routed(&bob, from_node("x", 1), 2_000, 3_000, &mut fx), "x1, skipped on a, though it had x2");
    assert!(!b.replay_routed(&bob, from_node("x", 1), 2_000, 3_000, &mut fx), "once");
    assert_eq!(delivered(&fx, link), ["x2", "x1"], "x2 again: in flight, unacknowledged on a");
}

#[test]
fn a_session_that_moves_catches_up_on_what_its_node_numbered_after_it_left() {
    let mut a = clustered();
    let mut fx = Fx::new();
    connect(&mut a, request("bob", "phone", false, 60), &mut fx);
    sub(&mut a, "bob", "phone", "t/#", 1);
    let bob: Arc<str> = key("bob", "phone").into();
    let (mut snapshot, _) = a.hand_over(&bob, &Acl::default(), 0, &mut fx).expect("on a");
    assert!(snapshot.catch_up.is_none(), "not catching up on a");
    snapshot.moved_from(
        crate::origins::cursor_name("a").into(),
        crate::streams::Stamp { epoch: 1, seq: 5 },
        1_000,
        "a:1",
    );
    assert_eq!(
        snapshot.catch_up.as_ref().map(crate::origins::CatchUp::since_ms),
        Some(1_000),
        "it catches up where it goes"
    );
    let (mut b, link) = moved_to_b(snapshot, &mut fx);
    assert!(!b.replay_routed(&bob, from_node("a", 5), 2_000, 3_000, &mut fx), "routed on a while it was there");
    assert!(b.replay_routed(&bob, from_node("a", 6), 2_000, 3_000, &mut fx), "routed on a after it left");
    b.publish_remote(from_node("a", 7), 2_000, &mut fx);
    assert!(!b.replay_routed(&bob, from_node("a", 7), 2_000, 3_000, &mut fx), "it came live");
    assert!(b.replay_routed(&bob, from_node("c", 1), 2_000, 3_000, &mut fx), "a third node's it never had");
    assert_eq!(delivered(&fx, link), ["a6", "a7", "c1"]);
}

#[test]
fn a_session_that_moves_while_catching_up_gets_on_the_next_node_what_its_node_routed() {
    let (mut a, _, mut fx, bob, _) = behind_after_x1();
    let (mut snapshot, _) = a.hand_over(&bob, &Acl::default(), 0, &mut fx).expect("on a");
    let skip = |s: &SessionSnapshot<Msg>| s.catch_up.as_ref().map(|c| c.skip().to_string());
    assert_eq!(skip(&snapshot), Some("me".to_owned()), "behind, it skips what its node routed");
    let at = crate::streams::Stamp { epoch: 1, seq: 5 };
    snapshot.moved_from(crate::origins::cursor_name("me").into(), at, 1_000, "me");
    assert_eq!(skip(&snapshot), Some(String::new()), "no longer, once it left that node");
    let (mut b, link) = moved_to_b(snapshot, &mut fx);
    assert!(b.replay_routed(&bob, from_node("me", 6), 2_000, 3_000, &mut fx), "routed there after it left");
    assert!(b.replay_routed(&bob, from_node("me", 3), 2_000, 3_000, &mut fx), "perhaps owed there: again, not never");
    assert_eq!(delivered(&fx, link), ["x1", "me6", "me3"], "x1 again: in flight, unacknowledged on a");
}

#[test]
fn a_session_behind_that_moves_catches_up_on_the_next_node() {
    let (mut a, _, mut fx, bob, id) = behind_after_x1();
    a.publish_remote(from_node("x", 2), 2_000, &mut fx);
    let (snapshot, _) = a.hand_over(&bob, &Acl::default(), 0, &mut fx).expect("on a");
    assert!(snapshot.catch_up.is_some(), "it carries its catch-up");
    let (mut b, link) = moved_to_b(snapshot, &mut fx);
    assert!(!b.replay_routed(&bob, from_node("x", 1), 2_000, 3_000, &mut fx), "it had x1");
    assert!(b.replay_routed(&bob, from_node("x", 2), 2_000, 3_000, &mut fx), "x2, skipped on a");
    assert_eq!(b.caught_up_behind(&bob, id), None, "not behind here: it catches up");
    b.publish_remote(from_node("x", 3), 2_000, &mut fx);
    assert_eq!(delivered(&fx, link), ["x1", "x2", "x3"], "x1 again: in flight, unacknowledged on a");
}

/// Bob's session (subscribed to `t/#` at `qos`), handed over by node a (which had numbered up
/// to 5) to node b, which holds what comes live until the first pass of its replay is done.
fn arriving_on_b(fx: &mut Fx, qos: u8) -> (Router<Msg, &'static str>, LinkId, Arc<str>, u64) {
    let mut b = clustered();
    let (link, bob, id) = arrive(&mut b, "bob", qos, fx);
    (b, link, bob, id)
}

/// `user`'s persistent session, subscribed to `t/#` at `qos` on node a, moves to `b` (it had
/// a's messages up to a5) and holds what comes live until its replay's first pass.
fn arrive(b: &mut Router<Msg, &'static str>, user: &'static str, qos: u8, fx: &mut Fx) -> (LinkId, Arc<str>, u64) {
    let mut a = clustered();
    connect(&mut a, request(user, "phone", false, 60), fx);
    sub(&mut a, user, "phone", "t/#", qos);
    let session: Arc<str> = key(user, "phone").into();
    let (mut snapshot, _) = a.hand_over(&session, &Acl::default(), 0, fx).expect("on a");
    let at = crate::streams::Stamp { epoch: 1, seq: 5 };
    snapshot.moved_from(crate::origins::cursor_name("a").into(), at, 1_000, "a:1");
    fx.clear();
    let req = ConnectRequest { resumed: Some(snapshot), hold: true, ..request(user, "phone", false, 60) };
    let connected = b.connect(req, &Acl::default(), 0, fx);
    let id = connected.behind.expect("it holds what comes live until its replay");
    (connected.link, session, id)
}

#[test]
fn what_an_arriving_session_held_is_delivered_when_its_client_comes_back_to_end_it_with_its_connection() {
    let mut fx = Fx::new();
    let mut b = clustered();
    let (_, bob, _) = arrive(&mut b, "bob", 1, &mut fx);
    assert!(b.replay_routed(&bob, from_node("c", 2), 2_000, 3_000, &mut fx), "the first pass gave c2");
    b.publish_remote(from_node("c", 2), 2_000, &mut fx);
    b.publish_remote(from_node("c", 3), 2_000, &mut fx);
    fx.clear();
    // The same client again, keeping the session only while it is connected.
    let (link, present) = connect(&mut b, request("bob", "phone", false, 0), &mut fx);
    assert!(present);
    assert_eq!(delivered(&fx, link), ["c2", "c3"], "c2 from its queue, c3 it held: taken, not dropped, and sent");
    assert_eq!(b.catch_up_id(&bob), None, "its catch-up ended");
}

#[test]
fn sessions_arriving_together_share_one_read_of_the_bus_each_taking_what_it_does_not_leave_out() {
    let mut fx = Fx::new();
    let mut b = clustered();
    let (bob_link, bob, bob_id) = arrive(&mut b, "bob", 1, &mut fx);
    let (ann_link, ann, ann_id) = arrive(&mut b, "ann", 1, &mut fx);
    b.publish_remote(from_node("c", 3), 2_000, &mut fx);
    assert_eq!(b.replay_routed_to(from_node("c", 2), 2_000, 3_000, |_| true, &mut fx), 2, "one read, both took it");
    let bob_only = |s: &str| s == &*bob;
    assert_eq!(b.replay_routed_to(from_node("c", 3), 2_000, 3_000, bob_only, &mut fx), 1, "ann leaves it out");
    assert_eq!(b.replay_routed_to(from_node("c", 4), 2_000, 3_000, |_| false, &mut fx), 0, "both leave it out");
    assert!(delivered(&fx, bob_link).is_empty() && delivered(&fx, ann_link).is_empty(), "held until each arrives");
    b.arrived(&bob, bob_id, 3_000, &mut fx);
    b.arrived(&ann, ann_id, 3_000, &mut fx);
    assert_eq!(delivered(&fx, bob_link), ["c2", "c3"], "c3 once: the read gave it, its live copy was dropped");
    assert_eq!(delivered(&fx, ann_link), ["c2", "c3"], "c3 came live: the read left it out, it is not lost");
}

#[test]
fn a_session_that_comes_with_a_catch_up_gets_what_it_missed_before_what_came_meanwhile() {
    let mut fx = Fx::new();
    let (mut b, link, bob, id) = arriving_on_b(&mut fx, 1);
    b.publish_remote(from_node("a", 8), 2_000, &mut fx);
    assert_eq!(b.publish(msg("t/1", "here1", 1), None, 2_000, &mut fx), 1, "queued for it");
    assert!(b.replay_routed(&bob, from_node("a", 6), 2_000, 3_000, &mut fx), "routed on a after it left");
    assert!(b.replay_routed(&bob, from_node("a", 7), 2_000, 3_000, &mut fx));
    assert!(delivered(&fx, link).is_empty(), "nothing goes out before the first pass is done");
    let waiting = fx.iter().any(|e| matches!(e, Effect::Backlog(l, n) if *l == link && *n > 0));
    assert!(!waiting, "nobody waits for a queue that does not go out yet");
    b.arrived(&bob, id, 3_000, &mut fx);
    assert_eq!(
        delivered(&fx, link),
        ["a6", "a7", "a8", "here1"],
        "what it missed, then what came meanwhile (a8 came live after the pass read the bus)"
    );
    b.publish_remote(from_node("a", 8), 3_000, &mut fx);
    b.publish_remote(from_node("a", 9), 3_000, &mut fx);
    assert_eq!(delivered(&fx, link).last().map(String::as_str), Some("a9"), "live again, each once");
    assert_eq!(delivered(&fx, link).len(), 5);
    assert_eq!(b.caught_up_behind(&bob, id), Some(BehindStep::Done), "it drained: done");
    assert_eq!(b.catch_up_id(&bob), None, "its catch-up ended with it");
}

#[test]
fn what_an_arriving_session_is_replayed_is_numbered_before_what_came_meanwhile_as_its_journal_keeps_it() {
    let mut fx = Fx::new();
    let (mut b, _, bob, id) = arriving_on_b(&mut fx, 1);
    assert_eq!(b.publish(msg("t/1", "here1", 1), None, 2_000, &mut fx), 1);
    b.publish_remote(from_node("c", 1), 2_000, &mut fx);
    assert!(b.replay_routed(&bob, from_node("a", 6), 2_000, 3_000, &mut fx));
    assert!(b.replay_routed(&bob, from_node("a", 7), 2_000, 3_000, &mut fx));
    b.arrived(&bob, id, 3_000, &mut fx);
    assert_eq!(b.publish(msg("t/1", "here2", 1), None, 3_000, &mut fx), 1);
    let (snapshot, _) = b.hand_over(&bob, &Acl::default(), 3_000, &mut fx).expect("on b");
    let queue = snapshot.inflight.iter().map(|(o, _)| o).chain(&snapshot.queue);
    let (bodies, entries): (Vec<&str>, Vec<u64>) = queue.map(|o| (o.msg.body.as_str(), o.entry)).unzip();
    assert_eq!(bodies, ["a6", "a7", "c1", "here1", "here2"], "what it missed, what it held, what came here");
    assert!(entries.windows(2).all(|w| w[0] < w[1]), "the journal keeps them by entry: {entries:?}");
}

#[test]
fn a_session_whose_first_pass_failed_gets_what_came_live_at_once_and_what_it_missed_later() {
    let mut fx = Fx::new();
    let (mut b, link, bob, id) = arriving_on_b(&mut fx, 1);
    b.publish_remote(from_node("a", 8), 2_000, &mut fx);
    b.arrived(&bob, id, 3_000, &mut fx);
    assert_eq!(delivered(&fx, link), ["a8"], "held no longer than the first pass");
    assert!(b.replay_routed(&bob, from_node("a", 6), 2_000, 3_000, &mut fx), "a later pass");
    assert!(!b.replay_routed(&bob, from_node("a", 8), 2_000, 3_000, &mut fx), "once");
    assert_eq!(delivered(&fx, link), ["a8", "a6"]);
}

#[test]
fn what_came_live_to_a_qos_0_subscription_while_a_session_arrived_goes_out_with_its_queue() {
    let mut fx = Fx::new();
    let (mut b, link, bob, id) = arriving_on_b(&mut fx, 0);
    b.publish_remote(from_node("a", 8), 2_000, &mut fx);
    assert!(delivered(&fx, link).is_empty());
    b.arrived(&bob, id, 3_000, &mut fx);
    assert_eq!(delivered(&fx, link), ["a8"]);
}

#[test]
fn a_session_that_moves_on_once_its_replay_was_read_is_given_nothing_again_of_what_it_had() {
    let mut fx = Fx::new();
    let (mut b, link, bob, id) = arriving_on_b(&mut fx, 1);
    b.arrived(&bob, id, 3_000, &mut fx);
    b.publish_remote(from_node("c", 1), 3_000, &mut fx);
    assert_eq!(delivered(&fx, link), ["c1"]);
    let (mut snapshot, _) = b.hand_over(&bob, &Acl::default(), 3_000, &mut fx).expect("on b");
    snapshot.moved_from(
        crate::origins::cursor_name("b").into(),
        crate::streams::Stamp { epoch: 1, seq: 4 },
        2_000,
        "b:1",
    );
    let (mut c, link) = moved_to_b(snapshot, &mut fx);
    assert!(!c.replay_routed(&bob, from_node("b", 4), 4_000, 5_000, &mut fx), "b had routed it to the session");
    assert!(!c.replay_routed(&bob, from_node("c", 1), 4_000, 5_000, &mut fx), "it came live on b");
    assert!(c.replay_routed(&bob, from_node("b", 5), 4_000, 5_000, &mut fx), "routed on b after it left");
    assert_eq!(delivered(&fx, link), ["c1", "b5"], "c1 again: in flight, unacknowledged on b");
}
