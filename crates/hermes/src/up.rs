//! `hermes up`: every service in one process on embedded defaults. Today that is the MQTT edge
//! and the accounts tier (SQLite in the data directory, or Postgres with `http.database_url`)
//! joined by the in-process bus (or NATS with `bus.nats_url`); the control unit and publish API
//! join them as they land.

use std::path::PathBuf;

use accounts::config::AccountsConfig;
use accounts::node::{ApiParts, DataDir, Database, Keys};
use mqtt_edge::EdgeConfig;
use mqtt_edge::cli::EdgeFlags;
use mqtt_edge::config::{AuthConfig, BusConfig, LimitsConfig, MqttConfig, OpsConfig, StateConfig, StreamsConfig};
use redis_state::StateDirectories;
use serde::{Deserialize, Serialize};
use service_kit::telemetry::TelemetryConfig;

#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    #[command(flatten)]
    edge: EdgeFlags,
    /// Where embedded state lives (`data_dir`); `<data_dir>/users` is the default users file.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Accounts REST API listen address (`http.addr`).
    #[arg(long)]
    http_addr: Option<String>,
    /// Seed enterprise `acme` with users alice, bob (friends) and carol (follows alice).
    #[arg(long)]
    demo: bool,
    /// Password for the demo users; generated and printed when absent.
    #[arg(long, requires = "demo", allow_hyphen_values = true)]
    demo_password: Option<String>,
}

/// The configuration tree of `hermes up`: the edge's sections plus what the all-in-one adds.
/// Key names are the same as in every service's own config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct UpConfig {
    pub data_dir: String,
    /// The accounts REST API.
    pub http: AccountsConfig,
    pub mqtt: MqttConfig,
    pub limits: LimitsConfig,
    pub auth: AuthConfig,
    pub ops: OpsConfig,
    pub bus: BusConfig,
    pub state: StateConfig,
    pub streams: StreamsConfig,
    pub telemetry: TelemetryConfig,
}

impl Default for UpConfig {
    fn default() -> Self {
        let edge = EdgeConfig::default();
        UpConfig {
            data_dir: "hermes-data".into(),
            http: AccountsConfig::default(),
            mqtt: edge.mqtt,
            limits: edge.limits,
            auth: edge.auth,
            ops: edge.ops,
            bus: edge.bus,
            state: edge.state,
            streams: edge.streams,
            telemetry: edge.telemetry,
        }
    }
}

impl UpConfig {
    fn edge(&self) -> EdgeConfig {
        let mut auth = self.auth.clone();
        let default_users = std::path::Path::new(&self.data_dir).join("users");
        if auth.users_file.is_empty() && default_users.exists() {
            auth.users_file = default_users.display().to_string();
        }
        EdgeConfig {
            mqtt: self.mqtt.clone(),
            limits: self.limits.clone(),
            auth,
            ops: self.ops.clone(),
            bus: self.bus.clone(),
            state: self.state.clone(),
            streams: self.streams.clone(),
            telemetry: self.telemetry.clone(),
        }
    }
}

fn load(args: &UpArgs) -> Result<UpConfig, String> {
    let mut overrides = args.edge.overrides();
    if let Some(d) = &args.data_dir {
        overrides.push(("data_dir", toml::Value::String(d.display().to_string())));
    }
    if let Some(a) = &args.http_addr {
        overrides.push(("http.addr", toml::Value::String(a.clone())));
    }
    service_kit::config::load(args.edge.shared.config.as_deref(), std::env::vars(), &overrides)
        .map_err(|e| e.to_string())
}

/// Where `hermes up` keeps persistent sessions when there is no Redis: in its data directory.
const SESSIONS_DB: &str = "sessions.db";

/// Where `hermes up` keeps durable streams and dead letters when there is no Redis.
const STREAMS_DB: &str = "streams.db";

/// Where `hermes up` keeps the node id it made for itself.
const NODE_ID: &str = "node-id";

/// The node id `hermes up` goes by when `bus.node_id` is not set: made on the first run and
/// kept in the data directory, so a run after a crash knows its earlier runs' wills in a
/// shared Redis from other nodes' (`mqtt_edge::wills::send_left_by_earlier_runs`).
fn node_id(data: &DataDir) -> Result<String, String> {
    let path = data.path().join(NODE_ID);
    let made = || Ok(format!("up-{}\n", &accounts::store::new_id()[..16]));
    let id = accounts::owner_only::read_or_create(&path, made)?;
    let id = id.trim();
    if id.is_empty() || id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{}: not a node id: {id:?} (remove the file for a new one)", path.display()));
    }
    Ok(id.to_owned())
}

pub fn print_config(args: UpArgs) -> Result<(), String> {
    print!("{}", service_kit::config::render(&load(&args)?));
    Ok(())
}

pub fn run(args: UpArgs) -> Result<(), String> {
    let cfg = load(&args)?;
    let mut edge_cfg = cfg.edge();
    // Before the data directory is touched: an invalid configuration leaves nothing behind.
    edge_cfg.validate().map_err(|e| format!("invalid configuration: {e}"))?;
    cfg.http.validate().map_err(|e| format!("invalid configuration: {e}"))?;
    cfg.ops.validate().map_err(|e| format!("invalid configuration: {e}"))?;
    let mut data = DataDir::open(std::path::Path::new(&cfg.data_dir))?;
    // One `hermes up` per data directory: a second would take the first one's sessions and
    // wills for an earlier run's.
    data.lock()?;
    // The edge's users file holds password hashes too.
    data.keep_private("users")?;
    if edge_cfg.bus.node_id.is_empty() {
        edge_cfg.bus.node_id = node_id(&data)?;
    }
    // Every key is read (or made) before anything starts: one that cannot be used stops `up`
    // before a port is bound.
    let keys = data.keys()?;
    if edge_cfg.auth.token_public_key.is_empty() {
        edge_cfg.auth.token_public_key = keys.signer.verifier().to_paserk();
    }
    let demo =
        args.demo.then(|| args.demo_password.clone().unwrap_or_else(|| accounts::store::new_id()[..12].to_owned()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start runtime: {e}"))?;
    rt.block_on(serve(cfg, edge_cfg, data, keys, demo))
}

/// Opens the accounts database and seeds the demo; returns it with what the edge starts from
/// ([`edge_start`]).
async fn open_accounts(
    cfg: &UpConfig,
    data: &DataDir,
    demo: Option<&str>,
    dirs: Option<&StateDirectories>,
) -> Result<(Database, EdgeStart), String> {
    let db = Database::open(&cfg.http, data).await?;
    if let Some(password) = demo {
        db.seed_demo(password).await?;
    }
    let start = edge_start(&db, dirs).await?;
    Ok((db, start))
}

/// What the edge applies before it lets a client in: the access directory (tables and
/// revocations) and relations and group memberships, as the account events that made them.
struct EdgeStart {
    access: std::sync::Arc<dyn broker::access::AccessDirectory>,
    events: Vec<wire::pb::AccountEvent>,
}

/// The edge starts from what the database knows: relations and group memberships, applied as
/// the account events that made them, and enterprises' ACL tables and recent revocations,
/// through the access directory (Redis, refilled here, and again whenever Redis loses it: newer
/// entries win; or one in memory). All before its first client: before, `hermes up` applied
/// them after its listeners opened, so for a moment a revoked token was not known as revoked.
async fn edge_start(db: &Database, dirs: Option<&StateDirectories>) -> Result<EdgeStart, String> {
    use broker::access::{AccessDirectory, MemoryAccess};
    use wire::pb::{self, account_event::Event};
    let state = db.edge_state().await?;
    let access: std::sync::Arc<dyn AccessDirectory> = match dirs {
        Some(d) => {
            let mark = accounts::node::fill_directories(&state, d).await?;
            tokio::spawn(accounts::node::keep_filled(db.clone(), d.clone(), mark));
            d.access.clone()
        }
        None => {
            let access = std::sync::Arc::new(MemoryAccess::default());
            state.write_access(access.as_ref()).await?;
            access
        }
    };
    let event = |enterprise_id: String, event: Event| pb::AccountEvent {
        enterprise_id,
        event: Some(event),
        ..Default::default()
    };
    let mut events = Vec::with_capacity(state.follows.len() + state.memberships.len());
    for (e, follower, followee) in state.follows {
        events.push(event(e, Event::RelationChanged(pb::RelationChanged { follower, followee, following: true })));
    }
    // Group memberships the same way: `%g` grants group topics to members only.
    for (e, group, username) in state.memberships {
        events.push(event(
            e,
            Event::GroupMembershipChanged(pb::GroupMembershipChanged { group, username, member: true }),
        ));
    }
    Ok(EdgeStart { access, events })
}

async fn serve(
    cfg: UpConfig,
    edge_cfg: EdgeConfig,
    data: DataDir,
    keys: Keys,
    demo: Option<String>,
) -> Result<(), String> {
    let telemetry = service_kit::telemetry::init("hermes", &edge_cfg.telemetry).map_err(|e| e.to_string())?;
    data.warn_tightened();
    let anonymous = edge_cfg.auth.allow_anonymous;
    let users_file = edge_cfg.auth.users_file.clone();
    let nats_url = edge_cfg.bus.nats_url.clone();
    let dirs = mqtt_edge::state_directories(&edge_cfg.state).await?;
    let bus: std::sync::Arc<dyn bus::Bus> = if nats_url.is_empty() {
        std::sync::Arc::new(bus::memory::MemoryBus::default())
    } else {
        std::sync::Arc::new(bus::nats::NatsBus::connect(&nats_url).await.map_err(|e| format!("bus.nats_url: {e}"))?)
    };
    // Primed from the database below, which also refills the directories.
    let journal: std::sync::Arc<dyn broker::journal::SessionJournal> = match &dirs {
        Some(d) => d.journal.clone(),
        None => std::sync::Arc::new(embedded_state::SqliteJournal::open(&data.path().join(SESSIONS_DB)).await?),
    };
    let retention = edge_cfg.streams.retention();
    let streams: std::sync::Arc<dyn broker::streams::StreamStore> = match &dirs {
        Some(d) => d.streams(retention),
        None => {
            std::sync::Arc::new(embedded_state::SqliteStreams::open(&data.path().join(STREAMS_DB), retention).await?)
        }
    };
    let (db, first) = open_accounts(&cfg, &data, demo.as_deref(), dirs.as_ref()).await?;
    let mut edge = mqtt_edge::Edge::builder(edge_cfg)
        .journal(journal)
        .streams(streams)
        .access(first.access)
        .apply_first(first.events);
    if let Some(d) = &dirs {
        // Users' devices are counted with the other edges on the Redis (on a bus).
        edge = edge.relations(d.relations.clone()).session_owners(d.owners.clone()).presence(d.presence());
    }
    if !nats_url.is_empty() {
        // Other edges on the same NATS route to and from this one.
        edge = edge.cluster(bus.clone());
    }
    let edge = edge.start().await?;
    let _events = edge.account_events().follow(bus.as_ref()).await.map_err(|e| format!("bus: {e}"))?;
    let admin = keys.admin.clone();
    let parts = ApiParts { keys, bus, directories: dirs };
    let http = db.serve(&cfg.http, &data, parts, service_kit::shutdown::signal()).await?;
    let ops = if cfg.ops.addr.is_empty() {
        None
    } else {
        let router = service_kit::http::ops_router_with_readiness(telemetry.prometheus.clone(), edge.readiness());
        Some(service_kit::http::serve_ops(&cfg.ops, router, service_kit::shutdown::signal()).await?)
    };
    let a = edge.addrs();
    // Listening for the signal before saying we serve: a SIGTERM sent as soon as the lines
    // appear stops `up`.
    let stop = service_kit::shutdown::signal();
    println!("hermes {} is up (data in {})", env!("CARGO_PKG_VERSION"), cfg.data_dir);
    if let Some(x) = a.mqtt {
        println!("  MQTT            mqtt://{x}");
    }
    if let Some(x) = a.mqtt_tls {
        println!("  MQTT over TLS   mqtts://{x}");
    }
    if let Some(x) = a.mqtt_ws {
        println!("  MQTT over WS    ws://{x}/mqtt");
    }
    let scheme = if cfg.http.tls_cert.is_empty() { "http" } else { "https" };
    println!("  accounts API    {scheme}://{http}/v1   (admin key: {admin})");
    if let Some(x) = ops {
        println!("  metrics         http://{x}/metrics   (health: /healthz, /readyz)");
    }
    if anonymous {
        println!(
            "  WARNING: anonymous access is on (--allow-anonymous): anyone who reaches these ports can publish and subscribe."
        );
    } else if users_file.is_empty() {
        println!("  MQTT clients connect with an access token from POST /v1/login as their password.");
    } else {
        println!("  users from {users_file}");
    }
    if let Some(password) = &demo {
        println!("  demo: enterprise acme, users alice, bob (friends) and carol (follows alice), password {password}");
        println!("    log in:  curl -s http://{http}/v1/login -H 'content-type: application/json' \\");
        println!("               -d '{{\"enterprise\":\"acme\",\"username\":\"alice\",\"password\":\"{password}\"}}'");
        if let Some(x) = a.mqtt {
            println!(
                "    listen:  mosquitto_sub -p {} -u alice -P <alice's access_token> -t acme/im/msg/alice -v",
                x.port()
            );
            println!(
                "    send:    mosquitto_pub -p {} -u bob -P <bob's access_token> -t acme/im/msg/alice -m hi",
                x.port()
            );
        }
    }
    println!("Stop with Ctrl-C.");
    stop.await;
    println!("stopping: clients are told the server is shutting down");
    edge.stop().await;
    drop(telemetry);
    Ok(())
}
