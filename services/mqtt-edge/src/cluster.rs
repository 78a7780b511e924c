//! Routing between edges over the bus (design §2, flow 3): several edges behind one address act
//! as one broker for live traffic.
//!
//! - **Interest.** The router reports the first and the last subscription to each filter
//!   ([`broker::router::Effect::Interest`]); this edge subscribes on the bus to the filter's
//!   subjects (`wire::subjects::interest`, reference counted per subject) and unsubscribes when
//!   the last one goes. Every edge also takes every retained message (so its later subscribers
//!   get them) and the rare topics too long for a subject.
//! - **Out.** A client's PUBLISH takes its place on the way to the bus ([`Slot`], in the
//!   connection's order; it waits while the bus is behind), is routed here (local subscribers
//!   get it without a bus round trip) and goes in that place as it is numbered, before its
//!   PUBACK; wills and presence changes ([`broker::router::Effect::Originated`]) are numbered
//!   and handed over as they are routed. Messages are numbered per edge incarnation and leave
//!   in number order.
//! - **In.** Messages from other edges are routed here as the system's (never passed on again);
//!   a message that matched several of this edge's subscriptions arrives once per subscription,
//!   and only the first copy is kept (`broker::dedupe`). An edge ignores its own messages.
//!
//! - **Sessions** move between edges with their clients (`handover`), when the edges share an
//!   owners registry.
//!
//! - **Shared subscriptions** (`$share/{group}/{filter}`) are held as NATS queue groups (one
//!   edge with members gets each message), and their kept (QoS 1/2) messages come through the
//!   subscription's group on the bus instead, which gives again what an edge never
//!   acknowledged (`groups`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use ntex_bytes::ByteString;
use prost::Message as _;
use tokio::sync::{mpsc, oneshot};

use broker::QoS;
use broker::dedupe::Dedupe;
use broker::origins::Origin;
use broker::owners::SessionOwners;
use bus::{Bus, BusMessage};
use wire::pb;
use wire::subjects;

use crate::handover::{Claim, Handover};
use crate::hub::{Hub, Routed};
use crate::message::{Message, SharedMessage, now_ms};
use crate::metrics as m;

/// Messages waiting for the bus before publishers are made to wait.
const OUTBOUND_CAPACITY: usize = 8192;
/// Messages from other edges waiting to be routed here.
const INBOUND_CAPACITY: usize = 8192;
/// Cursor names kept for sending nodes before they are all forgotten (nodes without a set id
/// get a new one at each start).
const MAX_ORIGINS: usize = 4096;
/// An origin not heard from for this long is forgotten by the duplicate filter.
const ORIGIN_IDLE_MS: u64 = 10 * 60 * 1000;

/// This edge's name on the bus: its node id and when it started.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeName {
    pub id: String,
    pub incarnation: u64,
}

impl NodeName {
    /// `id`, or a random one when empty, started now.
    pub fn new(id: &str) -> Self {
        let id = if id.is_empty() { format!("edge-{:016x}", rand::random::<u64>()) } else { id.to_owned() };
        NodeName { id, incarnation: now_ms() }
    }

    /// This incarnation's name in the registries edges share (session owners, presence):
    /// `id:incarnation`. A restarted edge with the same id is another node there.
    pub fn registered(&self) -> String {
        format!("{}:{}", self.id, self.incarnation)
    }

    /// The node [`NodeName::registered`] names (a name without an incarnation has 0).
    pub fn from_registered(name: &str) -> NodeName {
        match name.rsplit_once(':').and_then(|(id, n)| Some((id, n.parse().ok()?))) {
            Some((id, incarnation)) => NodeName { id: id.to_owned(), incarnation },
            None => NodeName { id: name.to_owned(), incarnation: 0 },
        }
    }
}

/// The hub's side of the cluster: synchronous hand-offs to the tasks that talk to the bus.
#[derive(Debug)]
pub struct ClusterLink {
    interest: mpsc::UnboundedSender<InterestChange>,
    outbound: mpsc::Sender<Outbound>,
    /// Sessions moving between edges, with an owners registry.
    handover: Option<Arc<Handover>>,
    bus: Arc<dyn Bus>,
    /// How long the bus keeps what edges route to each other; zero when it keeps nothing.
    kept_for: std::time::Duration,
    node: NodeName,
    /// The tasks between the bus and the hub ([`ClusterLink::leave`] ends them).
    routing: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// This node's connection to the bus, as it changes.
    link: tokio::sync::watch::Receiver<Option<bus::Link>>,
    /// Whether what this edge routes to the others waits for the bus to take it ([`send_out`]).
    retrying: Arc<AtomicBool>,
    /// The runtime the link's tasks run on: what the hub asks of it from a connection's thread
    /// (which may have no runtime while the edge stops) is spawned there.
    runtime: tokio::runtime::Handle,
    /// Where clients reach the other edges, and this one.
    peers: Arc<crate::peers::Peers>,
    /// Sessions arriving with a catch-up, waiting for the first pass of their replay.
    arrivals: crate::arrivals::Arrivals,
}

/// A change to this edge's interest on the bus, or a question about it.
#[derive(Debug)]
enum InterestChange {
    /// The router's interest in a filter began (`true`) or ended.
    Filter(String, bool),
    /// Answered once every change before it is in place on the bus.
    Settled(oneshot::Sender<()>),
}

impl ClusterLink {
    /// The router's interest in `filter` began (`held`) or ended.
    pub fn interest(&self, filter: String, held: bool) {
        let _ = self.interest.send(InterestChange::Filter(filter, held));
    }

    /// Resolves once every interest change so far is in place on the bus (the server has the
    /// subscriptions): what is published from then on reaches this edge.
    pub async fn settled(&self) {
        let (tx, rx) = oneshot::channel();
        if self.interest.send(InterestChange::Settled(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Sessions arriving with a catch-up, waiting for the first pass of their replay.
    pub fn arrivals(&self) -> &crate::arrivals::Arrivals {
        &self.arrivals
    }

    /// The oldest the bus may still keep what edges route to each other (Unix ms).
    pub fn oldest_kept_ms(&self) -> u64 {
        now_ms().saturating_sub(u64::try_from(self.kept_for.as_millis()).unwrap_or(u64::MAX))
    }

    /// The bus, and how long it keeps what edges route to each other (zero: nothing kept).
    pub fn kept(&self) -> (&Arc<dyn Bus>, std::time::Duration) {
        (&self.bus, self.kept_for)
    }

    /// A will or presence change this edge published: other edges route it too. Dropped and
    /// counted if the bus is that far behind (they are never acknowledged to anyone).
    pub fn originated(&self, msg: SharedMessage, number: u64) {
        if self.outbound.try_send(Outbound { msg: Some(msg), number, sent: None }).is_err() {
            metrics::counter!(m::CLUSTER_DROPPED).increment(1);
        }
    }

    /// Before a CONNECT registers `session` here: takes it from the edge that held it (see
    /// `handover`). Without an owners registry, sessions do not move between edges.
    pub async fn claim(&self, session: &str, want_state: bool) -> Option<Claim> {
        Some(self.handover.as_ref()?.claim(session, want_state).await)
    }

    /// This edge on the bus.
    pub fn node(&self) -> &NodeName {
        &self.node
    }

    /// How sessions move between the edges, with an owners registry.
    pub fn handover(&self) -> Option<&Arc<Handover>> {
        self.handover.as_ref()
    }

    /// Leaves the bus: nothing routed to or from this edge any more, its subscriptions (and
    /// groups) and its handover subjects dropped. For an edge stopped in a process that goes on
    /// (tests); a process that exits leaves anyway.
    pub fn leave(&self) {
        for task in self.routing.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            task.abort();
        }
        if let Some(h) = &self.handover {
            h.leave();
        }
    }

    /// Where clients reach the other edges (and this one, as it tells them).
    pub fn peers(&self) -> &crate::peers::Peers {
        &self.peers
    }

    /// This edge stops: the others no longer name it to their clients.
    pub async fn withdraw(&self) {
        self.peers.withdraw(&*self.bus).await;
    }

    /// Whether sessions move between the edges (an owners registry is shared).
    pub fn moves_sessions(&self) -> bool {
        self.handover.is_some()
    }

    /// The session ended here.
    pub fn ended(&self, session: Arc<str>) {
        if let Some(h) = &self.handover {
            let h = h.clone();
            self.runtime.spawn(async move { h.release(&session).await });
        }
    }

    /// A place for a client's PUBLISH of `qos` on its way to the other edges, taken before it
    /// is routed here ([`Slot`]). Waits while the bus is behind, so the publisher's PUBACK waits
    /// too. A QoS 0 one waits for nothing while this edge is cut off from the bus: none (the
    /// message does not go to the other edges, counted) if what waits for the bus fills its
    /// queue. `None` too once this edge left the bus.
    pub async fn slot(&self, qos: QoS) -> Option<Slot> {
        let outbound = self.outbound.clone();
        if qos == QoS::AtMostOnce && self.cut_off() {
            let slot = outbound.try_reserve_owned().ok().map(Slot);
            if slot.is_none() {
                metrics::counter!(m::CLUSTER_DROPPED).increment(1);
            }
            return slot;
        }
        outbound.reserve_owned().await.ok().map(Slot)
    }

    /// Resolves once what this edge handed over for the other edges so far is on the bus
    /// (what it routed before is there for a replay to read).
    pub async fn flushed(&self) {
        let (sent, rx) = oneshot::channel();
        if self.outbound.send(Outbound { msg: None, number: 0, sent: Some(sent) }).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// The largest PUBLISH packet a client stamped with names `sender` bytes long
    /// ([`crate::sender::Sender::names_len`]) may send for the bus to carry it to the other
    /// edges: `limit` (`limits.max_packet_size`) or less; told to v5 clients in the CONNACK
    /// (Maximum Packet Size). What a message gains on its way stays within
    /// [`ROUTED_OVERHEAD`] and the names' unless it has many user properties (a byte or more
    /// each): one that then does not fit is refused when it is routed ([`send_out`]).
    pub fn packet_room(&self, sender: usize, limit: u32) -> u32 {
        let Some(max) = self.bus.max_payload() else { return limit };
        let room = max.saturating_sub(ROUTED_OVERHEAD + self.node.id.len() + 2 * sender).max(1);
        u32::try_from(room).map_or(limit, |room| room.min(limit))
    }

    /// Whether this edge is cut off from the bus: the connection is lost, or what it routes to
    /// the other edges waits for the bus to take it.
    pub fn cut_off(&self) -> bool {
        lost(&self.link) || self.retrying.load(Ordering::Relaxed)
    }
}

/// Whether the connection to the bus is lost, as `link` last heard.
fn lost(link: &tokio::sync::watch::Receiver<Option<bus::Link>>) -> bool {
    matches!(*link.borrow(), Some(bus::Link::Lost { .. }))
}

/// A place taken on the way to the other edges before a client's message is numbered
/// ([`ClusterLink::slot`]): the message goes in as it is numbered, under the hub's lock
/// (`Hub::publish`), so what leaves for the bus is in number order whichever worker routed
/// it. Sent after the lock, two workers' messages could leave out of order, and a session
/// whose edge died having journaled the higher number as had would take the lower one,
/// still on its way when that edge died, as had too.
#[derive(Debug)]
pub struct Slot(mpsc::OwnedPermit<Outbound>);

impl Slot {
    /// Puts `msg`, numbered `number`, in this place; the answer says when the bus has it.
    pub fn fill(self, msg: SharedMessage, number: u64) -> Forwarded {
        let (sent, rx) = oneshot::channel();
        let outbound = self.0.send(Outbound { msg: Some(msg), number, sent: Some(sent) });
        Forwarded { sent: rx, outbound }
    }
}

/// A message on its way to the other edges, with its number (`Hub::numbered`); `sent` hears
/// when the bus has it (`true`), or that it never will (`false`: larger than the bus takes).
/// Without a message: `sent` hears once all before it are on the bus.
struct Outbound {
    msg: Option<SharedMessage>,
    number: u64,
    sent: Option<oneshot::Sender<bool>>,
}

/// What a message gains on its way to the other edges beyond what the PUBLISH packet that
/// brought it held, but for the node's and the sender's names (see
/// [`ClusterLink::packet_room`]): its incarnation and number, the user property naming the
/// sender, and protobuf's tags and lengths, a few bytes a field.
const ROUTED_OVERHEAD: usize = 1024;

/// Resolves once a forwarded message reached the bus (the NATS server has it): however long
/// the bus is away (the publisher's acknowledgement waits; nothing is acknowledged that the
/// other edges could miss), or once this edge left the bus.
#[derive(Debug)]
pub struct Forwarded {
    sent: oneshot::Receiver<bool>,
    /// The queue it went in: a message put in a place taken before this edge left the bus
    /// stays there unsent, so its end is watched too.
    outbound: mpsc::Sender<Outbound>,
}

impl Forwarded {
    /// False if the bus would not take it: larger than it carries (see [`send_out`]).
    pub async fn wait(self) -> bool {
        tokio::select! {
            sent = self.sent => sent.unwrap_or(true),
            () = self.outbound.closed() => true,
        }
    }
}

/// A message from the bus.
#[derive(Debug)]
pub struct Inbound {
    pub msg: BusMessage,
    /// The shared subscription (`$share/{group}/{filter}`) it came for through a queue group or
    /// its group on the bus, if it did.
    pub share: Option<Arc<str>>,
    /// From the shared subscription's group on the bus: to settle once routed (`groups`).
    pub taken: Option<bus::Taken>,
}

/// A shared message the bus gave this edge, routed to a member of `share` here: from the
/// share's group on the bus (`grouped`), only to one with room (`None` if none has); from its
/// queue group, to any.
fn given(hub: &Hub, msg: &SharedMessage, share: &str, grouped: bool, now: u64) -> Option<Routed> {
    match grouped {
        true => hub.publish_shared_with_room(msg.clone(), share, now, hub.high_water(crate::flow::Router::Publisher)),
        false => Some(hub.publish_shared(msg.clone(), share, now)),
    }
}

/// The filter of a shared subscription `$share/{group}/{filter}`; `None` for another filter.
fn shared_filter(raw: &str) -> Option<&str> {
    raw.strip_prefix(broker::topic::SHARE_PREFIX)?.split_once('/').map(|(_, filter)| filter)
}

/// Starts routing between this edge and the others on `bus`; the hub hands its interest and
/// messages to the returned link. QoS 1/2 messages are kept on the bus for `keep` (if set and
/// the bus can).
pub async fn start(
    hub: Arc<Hub>,
    bus: Arc<dyn Bus>,
    owners: Option<Arc<dyn SessionOwners>>,
    node: NodeName,
    stall: std::time::Duration,
    keep: Option<bus::KeepConfig>,
    share_wait: Option<std::time::Duration>,
) -> Result<ClusterLink, String> {
    let kept_for = match &keep {
        Some(k) => match bus.keep(k).await.map_err(|e| format!("bus: {e}"))? {
            true => k.max_age,
            false => std::time::Duration::ZERO,
        },
        None => std::time::Duration::ZERO,
    };
    let handover = match owners {
        Some(o) => Some(Handover::start(hub.clone(), bus.clone(), o, node.clone()).await?),
        None => None,
    };
    let (interest_tx, interest_rx) = mpsc::unbounded_channel();
    let (out_tx, out_rx) = mpsc::channel(OUTBOUND_CAPACITY);
    let retrying = Arc::new(AtomicBool::new(false));
    let (in_tx, in_rx) = mpsc::channel(INBOUND_CAPACITY);
    let grouped = Arc::new(crate::groups::Grouped::default());
    let mut subscriptions = Subscriptions {
        bus: bus.clone(),
        inbound: in_tx,
        held: HashMap::new(),
        groups: HashMap::new(),
        grouped: grouped.clone(),
        share_wait: share_wait.filter(|_| !kept_for.is_zero()),
    };
    for always in [subjects::ALL_RETAINED, subjects::LONG_TOPICS] {
        subscriptions.hold_always(always).await.map_err(|e| format!("bus: {e}"))?;
    }
    let peers = Arc::new(crate::peers::Peers::new(&node.id));
    let (arrivals, first_passes) = crate::arrivals::Arrivals::start(Arc::downgrade(&hub), stall);
    let routing = vec![
        first_passes,
        tokio::spawn(crate::peers::run(bus.clone(), peers.clone())),
        tokio::spawn(subscriptions.run(interest_rx)),
        tokio::spawn(send_out(bus.clone(), node.clone(), out_rx, retrying.clone())),
        tokio::spawn(take_in(hub, node.clone(), in_rx, stall, grouped)),
    ];
    let routing = std::sync::Mutex::new(routing);
    let link = bus.link_changes();
    let runtime = tokio::runtime::Handle::current();
    Ok(ClusterLink {
        interest: interest_tx,
        outbound: out_tx,
        handover,
        bus,
        kept_for,
        node,
        routing,
        link,
        retrying,
        runtime,
        peers,
        arrivals,
    })
}

/// The subjects whose QoS 1/2 messages the bus keeps (`bus.keep_secs`): every routed,
/// retained and over-long one.
pub const KEPT_SUBJECTS: [&str; 3] = [subjects::ALL_ROUTED, subjects::ALL_RETAINED, subjects::LONG_TOPICS];

/// The subjects of what a subscription to `filter` (without `$share/group/`) gets from other
/// edges: its routed subjects, their retained twins, and the over-long topics if it needs them.
pub fn subjects_of(filter: &str) -> Vec<String> {
    let Some(mut subjects) = subjects::interest(filter) else {
        return vec![subjects::LONG_TOPICS.to_owned()];
    };
    let retained: Vec<String> = subjects
        .iter()
        .filter_map(|s| s.strip_prefix(subjects::ROUTED_PREFIX))
        .map(|rest| format!("{}{rest}", subjects::RETAINED_PREFIX))
        .collect();
    subjects.extend(retained);
    subjects
}

/// The bus subscriptions of this edge's interest, by subject (and shared subscription, whose
/// subjects are held as a queue group), with how many filters need each.
struct Subscriptions {
    bus: Arc<dyn Bus>,
    inbound: mpsc::Sender<Inbound>,
    /// How many filters need each subject, and the task forwarding what its bus subscription
    /// takes (`None` until it is subscribed).
    held: HashMap<Held, (usize, Option<tokio::task::JoinHandle<()>>)>,
    /// How many times each shared subscription is held here, and the task taking its kept
    /// messages from its group on the bus (`groups`).
    groups: HashMap<Arc<str>, (usize, tokio::task::JoinHandle<()>)>,
    grouped: Arc<crate::groups::Grouped>,
    /// How long the bus waits for a group's member to acknowledge a message; `None` when the
    /// bus keeps nothing or `bus.share_ack_secs` is 0 (no groups).
    share_wait: Option<std::time::Duration>,
}

/// Dropped with the task that runs it: its subscriptions and groups go too.
impl Drop for Subscriptions {
    fn drop(&mut self) {
        for (_, task) in self.held.values_mut() {
            if let Some(task) = task.take() {
                task.abort();
            }
        }
        for (_, task) in self.groups.values() {
            task.abort();
        }
    }
}

/// A bus subscription: its subject, and the shared subscription it serves (as a queue group).
type Held = (String, Option<Arc<str>>);

/// Interest changes taken from the router at once: their new bus subscriptions go in one flush.
const INTEREST_BATCH: usize = 4096;

impl Subscriptions {
    async fn run(mut self, mut changes: mpsc::UnboundedReceiver<InterestChange>) {
        while let Some(first) = changes.recv().await {
            let mut batch = vec![first];
            while batch.len() < INTEREST_BATCH
                && let Ok(next) = changes.try_recv()
            {
                batch.push(next);
            }
            let mut answers = Vec::new();
            let mut new = Vec::new();
            for change in batch {
                match change {
                    InterestChange::Filter(filter, held) => self.change(&filter, held, &mut new),
                    InterestChange::Settled(answer) => answers.push(answer),
                }
            }
            self.subscribe(new).await;
            // Every change taken so far is in place on the bus.
            for answer in answers {
                let _ = answer.send(());
            }
        }
    }

    /// The router's interest in `filter` began (`held`) or ended: counts its subjects, noting in
    /// `new` those it now holds that need a bus subscription.
    fn change(&mut self, filter: &str, held: bool, new: &mut Vec<Held>) {
        // A shared subscription: the bus picks one node among those with members.
        let share = shared_filter(filter).map(|plain| (Arc::<str>::from(filter), plain));
        let plain = share.as_ref().map_or(filter, |(_, plain)| plain);
        let share = share.as_ref().map(|(whole, _)| whole.clone());
        // Too long for a subject: its messages come on `LONG_TOPICS`, always held.
        let subjects = match share {
            // Retained messages travel apart (to every edge, for their stores), and so do
            // messages on over-long topics: a shared subscription takes its copy of both
            // through its queue group too (the node picked delivers if the topic matches).
            Some(_) => {
                let mut subjects = subjects_of(plain);
                if !subjects.iter().any(|s| s == subjects::LONG_TOPICS) {
                    subjects.push(subjects::LONG_TOPICS.to_owned());
                }
                subjects
            }
            None => subjects::interest(plain).unwrap_or_default(),
        };
        if let Some(share) = &share {
            self.change_group(share, &subjects, held);
        }
        for subject in subjects {
            let key = (subject, share.clone());
            if held {
                let count = self.held.entry(key.clone()).or_insert((0, None));
                count.0 += 1;
                if count.0 == 1 {
                    new.push(key);
                }
            } else {
                self.release(key);
            }
        }
    }

    /// Counts `share` held once more (`held`) or once less: the first joins its group on the
    /// bus, for its kept messages on `subjects`; the last leaves it.
    fn change_group(&mut self, share: &Arc<str>, subjects: &[String], held: bool) {
        let Some(wait) = self.share_wait else { return };
        if held {
            let count = self.groups.entry(share.clone()).or_insert_with(|| {
                let member = crate::groups::member(
                    self.bus.clone(),
                    share.clone(),
                    subjects::share_queue(share),
                    subjects.to_vec(),
                    wait,
                    self.grouped.clone(),
                    self.inbound.clone(),
                );
                (0, tokio::spawn(member))
            });
            count.0 += 1;
        } else if let Some(count) = self.groups.get_mut(share) {
            count.0 -= 1;
            if count.0 == 0
                && let Some((_, task)) = self.groups.remove(share)
            {
                task.abort();
                self.grouped.leave(share);
            }
        }
    }

    /// Subscribes on the bus to the subjects of `new` still held, in one go.
    async fn subscribe(&mut self, new: Vec<Held>) {
        // Once each (a subject released and held again within the batch is noted twice).
        let mut seen = std::collections::HashSet::new();
        let new: Vec<Held> = new
            .into_iter()
            .filter(|k| self.held.get(k).is_some_and(|(_, task)| task.is_none()) && seen.insert(k.clone()))
            .collect();
        if new.is_empty() {
            return;
        }
        let asks: Vec<(String, Option<String>)> =
            new.iter().map(|(subject, share)| (subject.clone(), share.as_deref().map(subjects::share_queue))).collect();
        let subscribed = self.bus.subscribe_many(&asks).await;
        for (key, sub) in new.into_iter().zip(subscribed) {
            match sub {
                Ok(sub) => {
                    let task = self.forward(sub, key.1.clone());
                    if let Some(entry) = self.held.get_mut(&key) {
                        entry.1 = Some(task);
                    }
                }
                Err(e) => {
                    metrics::counter!(m::CLUSTER_ERRORS, "op" => "subscribe").increment(1);
                    tracing::warn!(subject = %key.0, error = %e, "cannot subscribe on the bus");
                }
            }
        }
        metrics::gauge!(m::CLUSTER_SUBJECTS).set(self.held.len() as f64);
    }

    /// A task handing what `sub` takes to the router.
    fn forward(&self, mut sub: bus::Subscription, share: Option<Arc<str>>) -> tokio::task::JoinHandle<()> {
        let inbound = self.inbound.clone();
        tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                if inbound.send(Inbound { msg, share: share.clone(), taken: None }).await.is_err() {
                    return;
                }
            }
        })
    }

    /// Holds `subject` whatever the router's interest (retained messages, over-long topics).
    async fn hold_always(&mut self, subject: &str) -> Result<(), bus::BusError> {
        let sub = self.bus.subscribe(subject).await?;
        let task = self.forward(sub, None);
        self.held.insert((subject.to_owned(), None), (1, Some(task)));
        Ok(())
    }

    fn release(&mut self, key: Held) {
        let Some((n, _)) = self.held.get_mut(&key) else {
            return;
        };
        *n -= 1;
        if *n == 0
            && let Some((_, task)) = self.held.remove(&key)
            && let Some(task) = task
        {
            // Dropping the subscription with its task unsubscribes.
            task.abort();
        }
        metrics::gauge!(m::CLUSTER_SUBJECTS).set(self.held.len() as f64);
    }
}

/// Most messages handed to the bus in one batch (one flush).
const BATCH: usize = 256;

/// The first pause before a batch the bus did not take is tried again; it doubles up to
/// [`RETRY_MOST`].
const RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(100);
const RETRY_MOST: std::time::Duration = std::time::Duration::from_secs(2);

/// Publishes this edge's messages with their numbers, in the order they were handed over (as
/// they were routed, but for those routed at the same moment on different threads): what
/// waits is taken in batches, flushed once each. A batch the bus does not take (NATS is away)
/// is tried again until it does, its QoS 1/2 messages in order (its QoS 0 ones are dropped):
/// nothing after it goes first, and the acknowledgements of its publishers wait
/// (`retrying` says so meanwhile).
async fn send_out(bus: Arc<dyn Bus>, node: NodeName, mut rx: mpsc::Receiver<Outbound>, retrying: Arc<AtomicBool>) {
    let link = bus.link_changes();
    let mut waiting = Vec::with_capacity(BATCH);
    let mut senders = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut waiting, BATCH).await > 0 {
        let max_payload = bus.max_payload();
        // QoS 1/2 messages are kept too: what an edge that dies misses is replayed to its
        // sessions where they resume.
        let batch: Vec<(String, Bytes, bool)> = waiting
            .drain(..)
            .filter_map(|Outbound { msg, number, sent }| {
                let Some(msg) = msg else {
                    senders.extend(sent.map(|s| (s, true)));
                    return None;
                };
                let subject =
                    subjects::routed(&msg.topic, msg.retain).unwrap_or_else(|| subjects::LONG_TOPICS.to_owned());
                let routed = pb::RoutedMessage {
                    origin: node.id.clone(),
                    incarnation: node.incarnation,
                    seq: number,
                    ..encode_message(&msg)
                };
                let payload = Bytes::from(routed.encode_to_vec());
                // The bus refuses it for good, and would hold up all after it: not sent, and
                // its publisher is told (clients are told a Maximum Packet Size that keeps
                // within it; a will, or a bus that now takes less, may not).
                let fits = max_payload.is_none_or(|max| payload.len() <= max);
                senders.extend(sent.map(|s| (s, fits)));
                if !fits {
                    metrics::counter!(m::CLUSTER_ERRORS, "op" => "too_large").increment(1);
                    tracing::error!(topic = %msg.topic, bytes = payload.len(), max = ?max_payload, "larger than the bus carries: not sent to the other edges");
                    return None;
                }
                // Retained ones too, whatever their QoS (a clear is usually QoS 0): tried
                // again while the bus is away, and kept for what reads it back.
                Some((subject, payload, msg.qos != QoS::AtMostOnce || msg.retain))
            })
            .collect();
        publish_until_taken(bus.as_ref(), batch, &link, &retrying).await;
        for (sent, taken) in senders.drain(..) {
            let _ = sent.send(taken);
        }
    }
}

/// How long a batch the bus refuses while this edge is connected to it is tried again before
/// it is given up (the other edges miss it): an error that does not clear (a message larger
/// than NATS takes, a stream NATS lost) must not stop this edge for good. While the
/// connection is lost it is tried for as long as that lasts.
const CONNECTED_TRIES_FOR: std::time::Duration = std::time::Duration::from_secs(30);

/// Publishes `batch` (subject, payload, whether the bus keeps it) once the bus takes it; see
/// [`send_out`].
async fn publish_until_taken(
    bus: &dyn Bus,
    mut batch: Vec<(String, Bytes, bool)>,
    link: &tokio::sync::watch::Receiver<Option<bus::Link>>,
    retrying: &AtomicBool,
) {
    let mut pause = RETRY_FIRST;
    // Since when the bus refuses it while connected.
    let mut refused_since: Option<std::time::Instant> = None;
    loop {
        match bus.publish_batch_kept(&batch).await {
            Ok(()) => {
                metrics::counter!(m::CLUSTER_OUT).increment(batch.len() as u64);
                break;
            }
            Err(e @ bus::BusError::Transport(_)) => {
                metrics::counter!(m::CLUSTER_ERRORS, "op" => "publish").increment(1);
                if !retrying.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, messages = batch.len(), "the bus does not take what this edge routes: trying again until it does");
                }
                let before = batch.len();
                batch.retain(|(_, _, keep)| *keep);
                metrics::counter!(m::CLUSTER_DROPPED).increment((before - batch.len()) as u64);
                if batch.is_empty() {
                    break;
                }
                if lost(link) {
                    refused_since = None;
                } else if refused_since.get_or_insert_with(std::time::Instant::now).elapsed() >= CONNECTED_TRIES_FOR {
                    metrics::counter!(m::CLUSTER_ERRORS, "op" => "publish_given_up").increment(1);
                    tracing::error!(error = %e, messages = batch.len(), "the bus refused these for 30 s while connected: given up, other edges miss them");
                    break;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RETRY_MOST);
            }
            // Never for what this edge builds (its subjects are escaped): not worth trying again.
            Err(e) => {
                metrics::counter!(m::CLUSTER_ERRORS, "op" => "publish").increment(1);
                tracing::error!(error = %e, messages = batch.len(), "cannot route to other edges");
                break;
            }
        }
    }
    if retrying.swap(false, Ordering::Relaxed) {
        tracing::info!("the bus takes what this edge routes again");
    }
}

/// Routes what other edges sent, once per message.
async fn take_in(
    hub: Arc<Hub>,
    node: NodeName,
    mut rx: mpsc::Receiver<Inbound>,
    stall: std::time::Duration,
    grouped: Arc<crate::groups::Grouped>,
) {
    let mut seen: Dedupe<(String, u64)> = Dedupe::default();
    let mut seen_shared: Dedupe<(String, u64, Arc<str>)> = Dedupe::default();
    let mut origins = Origins::default();
    let mut last_sweep = now_ms();
    let acker = crate::groups::Acker::start();
    // Since when every member here of a share has had too much waiting, by share.
    let mut all_full: HashMap<Arc<str>, std::time::Instant> = HashMap::new();
    while let Some(Inbound { msg: bm, share, taken }) = rx.recv().await {
        let Ok(routed) = pb::RoutedMessage::decode(bm.payload) else {
            metrics::counter!(m::CLUSTER_ERRORS, "op" => "decode").increment(1);
            if let Some(taken) = taken {
                // Nobody could read it: never again.
                acker.acknowledge(taken, None);
            }
            continue;
        };
        // A kept message for a shared subscription whose group this edge joined: the group
        // gives it to a member (which may be this edge).
        if taken.is_none()
            && routed.qos != QoS::AtMostOnce as u32
            && share.as_deref().is_some_and(|s| grouped.contains(s))
        {
            continue;
        }
        // This edge's own messages were delivered here already, except to shared
        // subscriptions: the bus picks their node, which may be this one.
        if share.is_none() && routed.origin == node.id && routed.incarnation == node.incarnation {
            continue;
        }
        let now = now_ms();
        let fresh = match (&share, &taken) {
            (None, _) => seen.accept((routed.origin.clone(), routed.incarnation), routed.seq, now),
            // The group gives a message again only if it was not acknowledged: route it again.
            (Some(_), Some(t)) if t.redelivered => true,
            // Its first time from the group: the queue group may have brought it here before
            // this edge joined the group (as far as the window knows: an older one is routed).
            (Some(s), Some(_)) => {
                !seen_shared.seen(&(routed.origin.clone(), routed.incarnation, s.clone()), routed.seq)
            }
            (Some(s), None) => {
                seen_shared.accept((routed.origin.clone(), routed.incarnation, s.clone()), routed.seq, now)
            }
        };
        if !fresh {
            metrics::counter!(m::CLUSTER_DUPLICATES).increment(1);
            if let (Some(taken), Some(s)) = (taken, &share) {
                // Routed here already: settled once that is durable (everything journaled so far,
                // and nothing failed since it may have been routed: else it is given back, and
                // routed again when the group gives it again).
                let durable = hub.journal().map(|j| j.written_since(now.saturating_sub(ORIGIN_IDLE_MS)));
                acker.settle(taken, &grouped, s, durable);
            }
            continue;
        }
        if now.saturating_sub(last_sweep) > ORIGIN_IDLE_MS {
            seen.forget_idle(now, ORIGIN_IDLE_MS);
            seen_shared.forget_idle(now, ORIGIN_IDLE_MS);
            if origins.0.len() > MAX_ORIGINS {
                origins = Origins::default();
            }
            last_sweep = now;
        }
        metrics::counter!(m::CLUSTER_IN).increment(1);
        let origin = origins.of(&routed);
        let Some(mut msg) = decode_message(routed) else {
            metrics::counter!(m::CLUSTER_ERRORS, "op" => "decode").increment(1);
            if let Some(taken) = taken {
                acker.acknowledge(taken, None);
            }
            continue;
        };
        // Only what the bus keeps is ever replayed, so only that needs counting per session.
        msg.origin = (msg.qos != QoS::AtMostOnce).then_some(origin);
        // What the group gives goes to a member here with room; if none has, back to the group
        // (a member elsewhere may have room, or one here soon) rather than hold up every other
        // session here, until every member here has had too much waiting for `stall`: then it
        // is routed and waited for as before, so a member that stopped reading is closed (its
        // session queues what comes next) instead of its messages going round for good. A
        // QoS 0 message is dropped at a full connection anyway: nothing to wait for. A QoS 1/2
        // one that came through the queue group (before this edge joined the share's group)
        // waits, like a local publisher.
        let at_most_once = msg.qos == QoS::AtMostOnce;
        let mut wait_for_members = taken.is_none() && !at_most_once;
        let msg = Arc::new(msg);
        let routed = match &share {
            Some(s) => match given(&hub, &msg, s, taken.is_some(), now) {
                Some(routed) => {
                    all_full.remove(s);
                    routed
                }
                None if all_full.entry(s.clone()).or_insert_with(std::time::Instant::now).elapsed() >= stall => {
                    wait_for_members = true;
                    hub.publish_shared(msg, s, now)
                }
                None => {
                    metrics::counter!(m::CLUSTER_GROUP_GIVEN_BACK).increment(1);
                    if let Some(taken) = taken {
                        acker.give_back(taken);
                    }
                    continue;
                }
            },
            None => hub.publish_remote(msg, now),
        };
        // One no member here took (expired, or on another over-long topic) is acknowledged
        // too: no member anywhere would take it either.
        if let (Some(taken), Some(s)) = (taken, &share) {
            acker.settle(taken, &grouped, s, routed.durable);
        }
        // A subscriber here with too much waiting falls behind and is replayed to (`behind`);
        // members of a shared subscription as above.
        let pressure = match &share {
            None => crate::behind::fall_behind(&hub, routed.pressure, stall),
            Some(_) if wait_for_members => routed.pressure,
            Some(_) => Vec::new(),
        };
        crate::flow::wait_for_room(&hub, pressure, stall, crate::flow::Router::Edge).await;
    }
}

/// The [`Origin`]s of routed messages, with one cursor name per sending node.
#[derive(Debug, Default)]
pub struct Origins(HashMap<String, Arc<str>>);

impl Origins {
    /// Where `routed` came from.
    pub fn of(&mut self, routed: &pb::RoutedMessage) -> Origin {
        let cursor = match self.0.get(&routed.origin) {
            Some(name) => name.clone(),
            None => {
                let name: Arc<str> = broker::origins::cursor_name(&routed.origin).into();
                self.0.insert(routed.origin.clone(), name.clone());
                name
            }
        };
        Origin { cursor, at: broker::streams::Stamp { epoch: routed.incarnation, seq: routed.seq } }
    }
}

/// `msg` as it travels between edges; the sender fills in the origin and number.
pub fn encode_message(msg: &Message) -> pb::RoutedMessage {
    let props = msg.properties.as_deref();
    pb::RoutedMessage {
        origin: String::new(),
        incarnation: 0,
        seq: 0,
        topic: msg.topic.to_string(),
        payload: msg.payload.to_vec(),
        qos: msg.qos as u32,
        retain: msg.retain,
        expires_at_ms: msg.expires_at_ms.unwrap_or(0),
        user_properties: props
            .map(|p| {
                p.user_properties
                    .iter()
                    .map(|(k, v)| pb::UserProperty { key: k.to_string(), value: v.to_string() })
                    .collect()
            })
            .unwrap_or_default(),
        content_type: props.and_then(|p| p.content_type.as_ref()).map(|c| c.to_string()),
        response_topic: props.and_then(|p| p.response_topic.as_ref()).map(|t| t.to_string()).unwrap_or_default(),
        correlation_data: props.and_then(|p| p.correlation_data.as_ref()).map(|c| c.to_vec()),
        payload_is_utf8: props.is_some_and(|p| p.is_utf8_payload),
    }
}

/// The message a [`pb::RoutedMessage`] carries; `None` if it is invalid.
pub fn decode_message(r: pb::RoutedMessage) -> Option<Message> {
    let qos = QoS::from_u8(u8::try_from(r.qos).ok()?)?;
    let mut msg = Message::new(ByteString::from(r.topic), ntex_bytes::Bytes::from(r.payload), qos, r.retain);
    msg.expires_at_ms = (r.expires_at_ms != 0).then_some(r.expires_at_ms);
    let has_props = !r.user_properties.is_empty()
        || r.content_type.is_some()
        || !r.response_topic.is_empty()
        || r.correlation_data.is_some()
        || r.payload_is_utf8;
    if has_props {
        let mut p =
            ntex_mqtt::v5::codec::PublishProperties { is_utf8_payload: r.payload_is_utf8, ..Default::default() };
        p.user_properties =
            r.user_properties.into_iter().map(|u| (ByteString::from(u.key), ByteString::from(u.value))).collect();
        p.content_type = r.content_type.map(ByteString::from);
        p.response_topic = (!r.response_topic.is_empty()).then(|| ByteString::from(r.response_topic));
        p.correlation_data = r.correlation_data.map(ntex_bytes::Bytes::from);
        msg.properties = Some(Box::new(p));
        msg.stream_at = crate::streams::stamped_position(&msg);
    }
    Some(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A publisher whose message goes in a place it took before this edge left the bus is not
    /// left waiting for the bus (the message stays in the queue, unsent); one the bus is still
    /// there for waits until it has it.
    #[tokio::test]
    async fn a_message_put_in_its_place_after_the_edge_left_the_bus_is_not_waited_for() {
        let msg = Arc::new(Message::new(ByteString::from("a/b"), ntex_bytes::Bytes::new(), QoS::AtLeastOnce, false));
        let (outbound, taken) = mpsc::channel::<Outbound>(4);
        let slot = Slot(outbound.clone().reserve_owned().await.expect("room"));
        drop(taken);
        let forwarded = slot.fill(msg.clone(), 1);
        tokio::time::timeout(Duration::from_secs(5), forwarded.wait()).await.expect("not left waiting");
        let (outbound, mut taken) = mpsc::channel::<Outbound>(4);
        let forwarded = Slot(outbound.clone().reserve_owned().await.expect("room")).fill(msg, 2);
        let waiting = tokio::spawn(forwarded.wait());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "the bus does not have it yet");
        let out = taken.recv().await.expect("queued");
        assert_eq!(out.number, 2);
        let sent = out.sent.expect("waited for");
        sent.send(true).expect("the publisher waits");
        assert!(tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("the bus has it").expect("join"));
        drop(outbound);
    }

    #[test]
    fn a_node_is_registered_by_incarnation() {
        let node = NodeName { id: "edge:a.b".into(), incarnation: 17 };
        assert_eq!(node.registered(), "edge:a.b:17");
        assert_eq!(NodeName::from_registered(&node.registered()), node, "an id with ':' in it");
        assert_eq!(NodeName::from_registered("edge-1"), NodeName { id: "edge-1".into(), incarnation: 0 });
        assert_eq!(NodeName::from_registered("edge:x"), NodeName { id: "edge:x".into(), incarnation: 0 });
        let max = NodeName { id: String::new(), incarnation: u64::MAX };
        assert_eq!(NodeName::from_registered(&max.registered()), max);
    }

    #[test]
    fn a_message_and_its_properties_survive_the_trip() {
        let mut msg =
            Message::new(ByteString::from("a/b"), ntex_bytes::Bytes::from_static(b"hi"), QoS::ExactlyOnce, true);
        msg.expires_at_ms = Some(123);
        msg.properties = Some(Box::new(ntex_mqtt::v5::codec::PublishProperties {
            user_properties: vec![(ByteString::from("hermes-sender"), ByteString::from("acme/bob"))],
            content_type: Some(ByteString::from("text/plain")),
            response_topic: Some(ByteString::from("r/t")),
            correlation_data: Some(ntex_bytes::Bytes::from_static(b"c")),
            is_utf8_payload: true,
            ..Default::default()
        }));
        let wire = encode_message(&msg).encode_to_vec();
        let r = pb::RoutedMessage::decode(Bytes::from(wire)).expect("decodes");
        let back = decode_message(r).expect("valid");
        assert_eq!(
            (back.topic.as_str(), &back.payload[..], back.qos, back.retain),
            ("a/b", &b"hi"[..], QoS::ExactlyOnce, true)
        );
        assert_eq!(back.expires_at_ms, Some(123));
        let p = back.properties.expect("properties");
        assert_eq!(p.user_properties, msg.properties.as_ref().expect("p").user_properties);
        assert_eq!(p.content_type.as_deref(), Some("text/plain"));
        assert_eq!(p.response_topic.as_deref(), Some("r/t"));
        assert!(p.is_utf8_payload);
    }

    /// MQTT passes an empty content type or correlation data on unaltered [MQTT-3.3.2-16,
    /// MQTT-3.3.2-20]: sent empty, they arrive empty, not left out.
    #[test]
    fn empty_content_type_and_correlation_data_survive_the_trip() {
        let mut msg = Message::new(ByteString::from("a/b"), ntex_bytes::Bytes::new(), QoS::AtLeastOnce, false);
        msg.properties = Some(Box::new(ntex_mqtt::v5::codec::PublishProperties {
            content_type: Some(ByteString::new()),
            correlation_data: Some(ntex_bytes::Bytes::new()),
            ..Default::default()
        }));
        let wire = encode_message(&msg).encode_to_vec();
        let back = decode_message(pb::RoutedMessage::decode(Bytes::from(wire)).expect("decodes")).expect("valid");
        let p = back.properties.expect("properties");
        assert_eq!(p.content_type.as_deref(), Some(""));
        assert_eq!(p.correlation_data.as_deref(), Some(&b""[..]));
    }

    #[test]
    fn a_plain_message_has_no_properties_and_a_bad_qos_is_refused() {
        let msg = Message::new(ByteString::from("t"), ntex_bytes::Bytes::new(), QoS::AtMostOnce, false);
        let r = encode_message(&msg);
        assert!(decode_message(r.clone()).expect("valid").properties.is_none());
        assert!(decode_message(pb::RoutedMessage { qos: 3, ..r }).is_none());
    }
}
