//! Hermes MQTT edge: a stateless-by-design MQTT 3.1.1 and 5.0 node over TCP, TLS and WebSocket.
//!
//! ntex-mqtt parses and writes packets; [`hub`] holds sessions, subscriptions and retained
//! messages and decides with the sans-IO `broker` crate; [`connection`] writes deliveries on
//! each connection's own worker. [`Edge::builder`] wires it together.

pub mod adopt;
pub mod arrivals;
pub mod auth;
pub mod authz;
pub mod behind;
pub mod catch_up;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod connect;
pub mod connection;
pub mod events;
pub mod flow;
pub mod groups;
pub mod guard;
pub mod handover;
pub mod hub;
pub mod ingress;
pub mod journal;
pub mod link;
pub mod message;
pub mod metrics;
pub mod peers;
pub mod presence;
pub mod relay;
pub mod sender;
pub mod server;
pub mod stored;
pub mod streams;
pub mod sys;
pub mod throttle;
mod turns;
pub mod v3;
pub mod v5;
pub mod wills;

use std::sync::Arc;

use broker::relations::{MemoryRelations, RelationDirectory};
use std::time::Duration;

pub use config::EdgeConfig;
pub use redis_state::StateDirectories;
pub use server::BoundAddrs;

/// `f`'s answer, or an error once `limit` has passed without one (a backend that does not
/// answer counts as failing).
pub(crate) async fn within<T>(limit: Duration, f: impl Future<Output = Result<T, String>>) -> Result<T, String> {
    tokio::time::timeout(limit, f).await.unwrap_or_else(|_| Err(format!("no answer within {limit:?}")))
}

/// Runs `work` on a thread of its own (named `name`) with a single-threaded Tokio runtime: a
/// writer whose store works on the caller's thread (the embedded one) then blocks nothing else,
/// and hands to and from it cost no more than to a shared runtime's task. The thread ends with
/// `work`.
pub(crate) fn on_own_thread(name: &str, work: impl Future<Output = ()> + Send + 'static) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || runtime.block_on(work))
        .map(drop)
        .map_err(|e| format!("cannot start {name}: {e}"))
}

/// Sessions read from the journal at once while an edge restores them.
const RESTORE_READS: usize = 8;

/// Parks the sessions the journal says this edge routes for until their clients come back
/// (all of them with the embedded journal): a restarted `hermes up` queues what is published
/// for them before they reconnect, as before it stopped.
async fn restore_sessions(hub: &hub::Hub, writer: &journal::JournalWriter, stable_id: bool) -> Result<(), String> {
    use futures_util::StreamExt;
    // Alone on a shared journal (Redis without a bus): the sessions its earlier runs held, by
    // the id that signed their records (set, so the same across runs: `bus.node_id`, or what
    // `hermes up` keeps in its data directory; a generated one is this run's alone). Without
    // them, what is published before a client comes back would reach nobody. A list that
    // cannot be had leaves them to come back with their clients, as before.
    let alone_on_shared = writer.is_shared() && hub.cluster().is_none();
    let sessions = match alone_on_shared {
        true if !stable_id => return Ok(()),
        true => match writer.every_session().await {
            Ok(sessions) => sessions,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the sessions in the journal: they come back with their clients");
                return Ok(());
            }
        },
        false => patiently("session journal", || writer.sessions_to_restore()).await?,
    };
    let mine = |j: &stored::Journaled| !alone_on_shared || j.holder.as_ref().is_some_and(|h| h.id == writer.node_id());
    // Read a few at a time (the embedded journal reads on a pool of connections).
    let mut loads = futures_util::stream::iter(&sessions)
        .map(|(session, expires_at)| async move { (session, *expires_at, writer.load(session).await) })
        .buffer_unordered(RESTORE_READS);
    let mut restored = 0;
    while let Some((session, expires_at, loaded)) = loads.next().await {
        match loaded {
            Ok(Some(journaled)) if mine(&journaled) => {
                restored +=
                    usize::from(hub.restore_parked(session, journaled, expires_at, None, message::now_ms()).is_some());
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(session, error = %e, "cannot restore a session from the journal"),
        }
    }
    if restored > 0 {
        tracing::info!(sessions = restored, "sessions restored from the journal, parked until their clients return");
    }
    Ok(())
}

/// How long a starting edge waits for a backend that is not ready yet (Redis loading its data,
/// a database still starting) before it gives up.
const STARTUP_PATIENCE: Duration = Duration::from_secs(30);

/// `load`'s answer, asked again every second while it fails, for at most [`STARTUP_PATIENCE`]:
/// an edge started with its backends (compose, a cluster restart) waits for them.
async fn patiently<T, F: Future<Output = Result<T, String>>>(what: &str, load: impl Fn() -> F) -> Result<T, String> {
    let deadline = std::time::Instant::now() + STARTUP_PATIENCE;
    loop {
        match load().await {
            Ok(v) => return Ok(v),
            Err(e) if std::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "{what} not ready; trying again in a second");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(format!("{what}: {e}")),
        }
    }
}

/// When the store call under way began (Unix ms; 0 while none is), to tell a hung store from a
/// slow one: a store that works on its caller's thread (the embedded one) cannot be cut short
/// by a timeout, so a hung disk shows only here.
#[derive(Debug, Default)]
pub(crate) struct UnderWay(std::sync::atomic::AtomicU64);

impl UnderWay {
    pub(crate) fn begin(&self, now_ms: u64) {
        self.0.store(now_ms.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn end(&self) {
        self.0.store(0, std::sync::atomic::Ordering::Relaxed);
    }

    /// [`UnderWay::begin`], ended when the answer is dropped (also when the call is cut short).
    pub(crate) fn begun(&self, now_ms: u64) -> Begun<'_> {
        self.begin(now_ms);
        Begun(self)
    }

    /// Whether the call under way (if any) has taken longer than `limit` at `now_ms` (a clock
    /// that went back counts as no time).
    pub(crate) fn longer_than(&self, limit: Duration, now_ms: u64) -> bool {
        let since = self.0.load(std::sync::atomic::Ordering::Relaxed);
        since != 0 && u128::from(now_ms.saturating_sub(since)) > limit.as_millis()
    }
}

/// A call under way ([`UnderWay::begun`]) until dropped.
pub(crate) struct Begun<'a>(&'a UnderWay);

impl Drop for Begun<'_> {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// Takes what waits in `rx`, up to `max` items, once at least one is there; `None` once every
/// sender is gone.
pub(crate) async fn next_batch<T>(rx: &mut tokio::sync::mpsc::UnboundedReceiver<T>, max: usize) -> Option<Vec<T>> {
    let mut batch = vec![rx.recv().await?];
    while batch.len() < max {
        match rx.try_recv() {
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
    }
    Some(batch)
}

/// A running edge.
#[derive(Debug)]
pub struct Edge {
    pub hub: Arc<hub::Hub>,
    shared: Arc<server::EdgeShared>,
    listeners: server::Listeners,
    housekeeping: tokio::task::JoinHandle<()>,
}

/// How an edge is put together before it starts: the config, and optionally where it reads
/// relations (at CONNECT) and access state (tables and revocations, before serving).
#[derive(Debug)]
pub struct EdgeBuilder {
    cfg: EdgeConfig,
    directory: Option<Arc<dyn RelationDirectory>>,
    access: Option<Arc<dyn broker::access::AccessDirectory>>,
    bus: Option<Arc<dyn bus::Bus>>,
    owners: Option<Arc<dyn broker::owners::SessionOwners>>,
    journal: Option<Arc<dyn broker::journal::SessionJournal>>,
    streams: Option<Arc<dyn broker::streams::StreamStore>>,
    presence: Option<Arc<dyn broker::presence::PresenceDirectory>>,
    first: Vec<wire::pb::AccountEvent>,
}

impl EdgeBuilder {
    /// Applies the access state `dir` holds (enterprises' ACL tables, recent revocations) at
    /// start, before the first client is let in (set by [`EdgeBuilder::state`] from Redis).
    pub fn access(mut self, dir: Arc<dyn broker::access::AccessDirectory>) -> Self {
        self.access = Some(dir);
        self
    }

    /// Applies `events` (relations, group memberships: what a database knows, as the events
    /// that made it) at start, after the access state and before the first client is let in.
    pub fn apply_first(mut self, events: Vec<wire::pb::AccountEvent>) -> Self {
        self.first = events;
        self
    }

    /// Token users' relations are loaded from `directory` at CONNECT.
    pub fn relations(mut self, directory: Arc<dyn RelationDirectory>) -> Self {
        self.directory = Some(directory);
        self
    }

    /// Both of `state`'s directories: relations at CONNECT, access state applied at start.
    pub fn state(mut self, state: Option<&StateDirectories>) -> Self {
        if let Some(s) = state {
            self.directory = Some(s.relations.clone());
            self.access = Some(s.access.clone());
            self.owners = Some(s.owners.clone());
            self.journal = Some(s.journal.clone());
            self.streams = Some(s.streams(self.cfg.streams.retention()));
            self.presence = Some(s.presence());
        }
        self
    }

    /// Writes persistent sessions to `journal`, so they outlive this edge: another edge (or
    /// this one, restarted) resumes them from there (set by [`EdgeBuilder::state`] from Redis).
    pub fn journal(mut self, journal: Arc<dyn broker::journal::SessionJournal>) -> Self {
        self.journal = Some(journal);
        self
    }

    /// Keeps durable streams in `store` (`streams.rules`); without one they are kept in this
    /// process's memory.
    pub fn streams(mut self, store: Arc<dyn broker::streams::StreamStore>) -> Self {
        self.streams = Some(store);
        self
    }

    /// Where the edges of a cluster count each user's devices together (set by
    /// [`EdgeBuilder::state`] from Redis); without one, each edge announces presence alone.
    pub fn presence(mut self, directory: Arc<dyn broker::presence::PresenceDirectory>) -> Self {
        self.presence = Some(directory);
        self
    }

    /// Where the edges on the bus record which of them holds each session, so sessions move
    /// with their clients (set by [`EdgeBuilder::state`] from Redis).
    pub fn session_owners(mut self, owners: Arc<dyn broker::owners::SessionOwners>) -> Self {
        self.owners = Some(owners);
        self
    }

    /// Routes messages to and from the other edges on `bus` (see [`cluster`]).
    pub fn cluster(mut self, bus: Arc<dyn bus::Bus>) -> Self {
        self.bus = Some(bus);
        self
    }

    /// Validates the config, joins the other edges (with a bus), applies the access directory
    /// (if any), then binds the listeners and starts serving. Call inside a tokio runtime.
    pub async fn start(self) -> Result<Edge, String> {
        let EdgeBuilder { cfg, directory, access, bus, owners, journal, streams, presence, first } = self;
        cfg.validate()?;
        metrics::describe();
        let auth = auth::Authenticator::from_config(&cfg.auth)?;
        let relations = Arc::new(MemoryRelations::default());
        // What the wills of connections gone with an edge are checked against (`wills`).
        let will_checks = wills::Checks {
            revocations: auth.revocations(),
            directory: directory.clone(),
            relations: relations.clone(),
        };
        let authz = Arc::new(authz::Authorizer::from_config(&cfg.auth, relations.clone())?);
        let hub = Arc::new(hub::Hub::new(hub::HubConfig::from_limits(&cfg.limits), authz.clone()));
        let node = cluster::NodeName::new(&cfg.bus.node_id);
        if let Some(j) = journal {
            let linger = Duration::from_millis(cfg.limits.journal_linger_ms.into());
            hub.attach_journal(journal::JournalWriter::start(j, node.clone())?.lingering(linger));
        }
        if !cfg.streams.rules.is_empty() {
            let store =
                streams.unwrap_or_else(|| Arc::new(broker::streams::MemoryStreams::new(cfg.streams.retention())));
            hub.attach_streams(streams::Streams::start(store, &cfg.streams)?);
        }
        if let Some(bus) = bus {
            // Before the first client: every subscription's interest reaches the bus.
            let stall = Duration::from_secs(u64::from(cfg.limits.max_stall_secs));
            let keep = (cfg.bus.keep_secs > 0).then(|| bus::KeepConfig {
                stream: wire::subjects::ROUTED_STREAM.to_owned(),
                subjects: cluster::KEPT_SUBJECTS.map(str::to_owned).to_vec(),
                max_age: Duration::from_secs(cfg.bus.keep_secs),
                max_bytes: cfg.bus.keep_max_bytes,
                memory: cfg.bus.keep_storage == "memory",
            });
            let link_changes = bus.link_changes();
            let share_wait = (cfg.bus.share_ack_secs > 0).then(|| Duration::from_secs(cfg.bus.share_ack_secs));
            hub.attach_cluster(cluster::start(hub.clone(), bus, owners, node.clone(), stall, keep, share_wait).await?);
            // Only what the bus keeps can be replayed after an outage.
            if hub.cluster().is_some_and(|c| !c.kept().1.is_zero()) {
                tokio::spawn(catch_up::after_outages(Arc::downgrade(&hub), link_changes, node.clone(), stall));
            }
            // With a shared registry and journal, the sessions of edges that die are taken here.
            if let Some(handover) = hub.cluster().and_then(|c| c.handover()).filter(|_| hub.journal().is_some()) {
                tokio::spawn(adopt::run(Arc::downgrade(&hub), handover.clone(), will_checks.clone(), stall));
            }
            if let Some(dir) = presence {
                // A user is online while a device is connected to any edge.
                let grace = Duration::from_secs(u64::from(cfg.limits.presence_grace_secs));
                let me = node.registered();
                hub.attach_presence(presence::SharedPresence::start(Arc::downgrade(&hub), dir, me, grace));
            }
            tracing::info!(node = %node.id, "routing to and from other edges on the bus");
        }
        // A node id that was set, not generated: the same across this node's runs.
        let stable_id = !cfg.bus.node_id.is_empty();
        if hub.cluster().and_then(|c| c.handover()).is_none() && hub.journal().is_some_and(|j| j.is_shared()) {
            // No registry to heartbeat into: the journal's mark is watched on its own (and a
            // node alone there keeps its run recorded, `SessionJournal::runs`).
            let runs = stable_id && hub.cluster().is_none();
            tokio::spawn(adopt::watch_journal(Arc::downgrade(&hub), node.registered(), runs));
        }
        if let Some(writer) = hub.journal() {
            // Retained messages published before this edge started (here or on another edge)
            // are served from its start; newer ones already came over the bus.
            let retained = patiently("session journal", || writer.load_retained()).await?;
            hub.restore_retained(retained);
            // With a bus that keeps what edges send each other, a session comes back with its
            // client instead: it then replays what the bus kept since it began.
            if hub.cluster().is_none_or(|c| c.kept().1.is_zero()) {
                restore_sessions(&hub, writer, stable_id).await?;
            }
        }
        let sys_interval = Duration::from_secs(cfg.mqtt.sys_interval_secs);
        let throttle = throttle::AuthThrottle::default();
        let shared = Arc::new(server::EdgeShared {
            hub: hub.clone(),
            auth,
            authz,
            relations,
            directory,
            access: access.clone(),
            throttle,
            cfg,
            store_turns: tokio::sync::Semaphore::new(server::STORE_TURNS),
            signatures_cleared: Default::default(),
        });
        // Tables, revocations and relations apply before the first client is let in (and
        // before the wills of earlier runs are checked).
        let events = events::AccountEvents { shared: shared.clone() };
        if let Some(dir) = access {
            events.prime(dir.as_ref()).await.map_err(|e| format!("state.redis_url: {e}"))?;
        }
        for event in &first {
            events.apply(event);
        }
        if hub.journal().is_some() && hub.cluster().and_then(|c| c.handover()).is_none() {
            // Alone on its journal: the wills its earlier runs' connections left.
            match wills::send_left_by_earlier_runs(&hub, &will_checks, stable_id).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(wills = n, "sent the wills of connections open when this node last stopped"),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot send the wills of connections open when this node last stopped")
                }
            }
        }
        let listeners = server::start(shared.clone()).map_err(|e| format!("cannot start MQTT listeners: {e}"))?;
        if let Some(c) = hub.cluster() {
            let (m, bound) = (&shared.cfg.mqtt, &listeners.addrs);
            c.peers().set_addresses([
                advertised(&m.advertise, bound.mqtt),
                advertised(&m.advertise_tls, bound.mqtt_tls),
                // Browsers reach a WebSocket listener through a proxy, at a URL this edge cannot
                // see (and a proxy on this machine makes every client look local): only what
                // the operator says.
                m.advertise_ws.clone(),
            ]);
        }
        let housekeeping = sys::spawn_housekeeping(hub.clone(), sys_interval);
        Ok(Edge { hub, shared, listeners, housekeeping })
    }
}

/// Where clients reach one of this edge's listeners, as the other edges tell theirs
/// (`peers`): what is `configured` (`mqtt.advertise`, `_tls`, `_ws`), or else the address the
/// listener is `bound` to unless it listens on every address (empty: unknown).
fn advertised(configured: &str, bound: Option<std::net::SocketAddr>) -> String {
    match bound {
        _ if !configured.is_empty() => configured.to_owned(),
        Some(addr) if !addr.ip().is_unspecified() => addr.to_string(),
        _ => String::new(),
    }
}

impl Edge {
    /// An edge for `cfg`; [`EdgeBuilder::start`] starts it.
    pub fn builder(cfg: EdgeConfig) -> EdgeBuilder {
        EdgeBuilder {
            cfg,
            directory: None,
            access: None,
            bus: None,
            owners: None,
            journal: None,
            streams: None,
            presence: None,
            first: Vec::new(),
        }
    }

    /// Applies account events (relations, revocations, signatures, ACL tables) to this edge;
    /// `AccountEvents::follow` takes them from a bus.
    pub fn account_events(&self) -> events::AccountEvents {
        events::AccountEvents { shared: self.shared.clone() }
    }

    /// Why this edge should not get new clients, if it should not: checked by `/readyz`.
    pub fn readiness(&self) -> impl Fn() -> Result<(), String> + Clone + Send + Sync + 'static {
        let hub = self.hub.clone();
        move || match (hub.journal(), hub.streams()) {
            (Some(j), _) if !j.is_healthy() => Err("the session journal cannot be written".into()),
            (_, Some(s)) if !s.is_healthy() => Err("an append to the durable streams is stuck".into()),
            _ if hub.is_closing() => Err("stopping".into()),
            _ if hub.cluster().and_then(|c| c.handover()).is_some_and(|h| !h.registry_answers()) => {
                Err("the session owners registry (Redis) does not answer".into())
            }
            _ if hub.cluster().is_some_and(|c| c.cut_off()) => {
                Err("cut off from the bus: what is published here waits for it".into())
            }
            _ => Ok(()),
        }
    }

    pub fn addrs(&self) -> &BoundAddrs {
        &self.listeners.addrs
    }

    /// Whether the session of `who` with `client_id` is here, live or parked: how a tool or
    /// test sees sessions move between edges.
    pub fn holds_session(&self, who: &auth::Identity, client_id: &str) -> bool {
        self.hub.holds(&broker::store::session_key(&who.owner(), client_id))
    }

    /// Tells clients the server is shutting down (v5 0x8B) and stops serving them. In a
    /// cluster, it then keeps the sessions they left until each was handed to the edge its
    /// client reconnected to, for at most `mqtt.drain_secs`.
    pub async fn stop(self) {
        self.housekeeping.abort();
        if let Some(cluster) = self.hub.cluster() {
            cluster.withdraw().await;
        }
        self.listeners.stop().await;
        if self.hub.cluster().is_some_and(|c| c.moves_sessions()) {
            let deadline = std::time::Instant::now() + Duration::from_secs(u64::from(self.shared.cfg.mqtt.drain_secs));
            while self.hub.snapshot().sessions > 0 && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let left = self.hub.snapshot().sessions;
            if left > 0 {
                tracing::info!(
                    sessions = left,
                    "stopped with sessions no client came back for: another edge takes them"
                );
            }
        }
        if let Some(journal) = self.hub.journal()
            && !journal.flush().await
        {
            tracing::warn!("stopped without writing every session change to the journal");
        }
        if let Some(cluster) = self.hub.cluster() {
            // Off the bus first: an edge taking what this one leaves checks it is gone.
            cluster.leave();
            if let Some(handover) = cluster.handover() {
                adopt::stop(handover).await;
            }
        }
    }
}

/// The Redis directories and state `state` names (none when `state.redis_url` is empty).
pub async fn state_directories(state: &service_kit::sections::StateConfig) -> Result<Option<StateDirectories>, String> {
    StateDirectories::connect_waiting(&state.redis_url, redis_state::Replicas(state.redis_wait_replicas)).await
}

/// Runs an edge with telemetry and the ops endpoint until Ctrl-C or SIGTERM.
pub async fn run_until_signal(cfg: EdgeConfig) -> Result<(), String> {
    let telemetry = service_kit::telemetry::init("mqtt-edge", &cfg.telemetry).map_err(|e| e.to_string())?;
    let ops = cfg.ops.clone();
    let nats_url = cfg.bus.nats_url.clone();
    let state = state_directories(&cfg.state).await?;
    let bus = if nats_url.is_empty() {
        tracing::warn!(
            "bus.nats_url is empty: this edge routes to no other edge, and account events (revocations, relation changes) do not reach it"
        );
        None
    } else {
        Some(Arc::new(bus::nats::NatsBus::connect(&nats_url).await.map_err(|e| format!("bus.nats_url: {e}"))?))
    };
    let mut builder = Edge::builder(cfg).state(state.as_ref());
    if let Some(bus) = &bus {
        builder = builder.cluster(bus.clone());
    }
    let edge = builder.start().await?;
    let _events = match &bus {
        Some(bus) => Some(edge.account_events().follow(bus.as_ref()).await.map_err(|e| format!("bus: {e}"))?),
        None => None,
    };
    if !ops.addr.is_empty() {
        let router = service_kit::http::ops_router_with_readiness(telemetry.prometheus.clone(), edge.readiness());
        let addr = service_kit::http::serve_ops(&ops, router, service_kit::shutdown::signal()).await?;
        tracing::info!(%addr, "metrics and health on http://{addr}/metrics");
    }
    // Listening for the signal before saying we serve: a SIGTERM sent as soon as the line
    // appears stops the node.
    let stop = service_kit::shutdown::signal();
    let a = edge.addrs();
    tracing::info!(mqtt = ?a.mqtt, mqtt_tls = ?a.mqtt_tls, mqtt_ws = ?a.mqtt_ws, "mqtt-edge serving");
    stop.await;
    tracing::info!("stopping: telling clients to reconnect elsewhere");
    edge.stop().await;
    drop(telemetry);
    Ok(())
}

#[cfg(test)]
mod startup_tests {
    #[tokio::test]
    async fn a_starting_edge_waits_for_a_backend_that_is_not_ready_yet() {
        let tries = std::cell::Cell::new(0);
        let load = || {
            tries.set(tries.get() + 1);
            let n = tries.get();
            async move { if n < 2 { Err("LOADING Redis is loading the dataset in memory".to_string()) } else { Ok(n) } }
        };
        assert_eq!(super::patiently("journal", load).await, Ok(2), "asked again after the first refusal");
    }
}
