//! `hermes up`: every service in one process on embedded defaults. Today that is the MQTT edge
//! and the accounts tier (SQLite in the data directory, or Postgres with `http.database_url`)
//! joined by the in-process bus (or NATS with `bus.nats_url`); the control unit and publish API
//! join them as they land.

use std::path::PathBuf;

use accounts::config::AccountsConfig;
use mqtt_edge::EdgeConfig;
use mqtt_edge::cli::EdgeFlags;
use mqtt_edge::config::{AuthConfig, BusConfig, LimitsConfig, MqttConfig, OpsConfig, StateConfig};
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
    #[arg(long, requires = "demo")]
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
    service_kit::config::load(args.edge.config.as_deref(), std::env::vars(), &overrides).map_err(|e| e.to_string())
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
    let data = std::path::Path::new(&cfg.data_dir);
    let tightened = own_data_dir(data)?;
    // Every key is read (or made) before anything starts: one that cannot be used stops `up`
    // before a port is bound.
    let keys = Keys {
        signer: accounts::load_or_create_signer(&data.join("token.key"))?,
        admin: data_secret(data, "admin.key")?,
        links: data_secret(data, "link.key")?,
    };
    if edge_cfg.auth.token_public_key.is_empty() {
        edge_cfg.auth.token_public_key = keys.signer.verifier().to_paserk();
    }
    let demo =
        args.demo.then(|| args.demo_password.clone().unwrap_or_else(|| accounts::store::new_id()[..12].to_owned()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start runtime: {e}"))?;
    rt.block_on(serve(cfg, edge_cfg, keys, demo, tightened))
}

/// What the data directory holds that others must not read: its keys, the SQLite database with
/// its -wal and -shm files (password and token hashes) and the edge's users file (password
/// hashes).
const PRIVATE_FILES: [&str; 7] =
    ["token.key", "admin.key", "link.key", "accounts.db", "accounts.db-wal", "accounts.db-shm", "users"];

/// The data directory is its owner's alone: it is created 0700, and it and the files of
/// [`PRIVATE_FILES`] lose any group or other permission they have (older versions made them
/// 0755 and 0644). Returns each path changed, with the mode it had, to be logged once logging
/// is up.
fn own_data_dir(data: &std::path::Path) -> Result<Vec<(std::path::PathBuf, u32)>, String> {
    use accounts::owner_only;
    owner_only::create_dir_all(data).map_err(|e| format!("data_dir {}: {e}", data.display()))?;
    let mut tightened = Vec::new();
    for path in std::iter::once(data.to_path_buf()).chain(PRIVATE_FILES.map(|f| data.join(f))) {
        if let Some(mode) = owner_only::tighten(&path).map_err(|e| format!("{}: {e}", path.display()))? {
            tightened.push((path, mode));
        }
    }
    Ok(tightened)
}

/// The keys of the data directory.
struct Keys {
    /// Signs access tokens (`token.key`).
    signer: wire::token::Signer,
    /// The operator's `X-Admin-Key` (`admin.key`).
    admin: String,
    /// Signs download links (`link.key`).
    links: String,
}

/// A secret of this data directory (`admin.key`, `link.key`), created on first use. One that
/// exists must be a key: at least 16 printable ASCII characters without spaces (the admin key
/// travels in an HTTP header).
fn data_secret(data: &std::path::Path, name: &str) -> Result<String, String> {
    let path = data.join(name);
    let text = accounts::owner_only::read_or_create(&path, || Ok(accounts::store::new_id()))?;
    let key = text.trim();
    if key.len() < 16 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{}: not a key (16 or more printable ASCII characters without spaces): fix it, or remove it to have a new one made",
            path.display()
        ));
    }
    Ok(key.to_owned())
}

/// Opens the accounts database: Postgres when `http.database_url` is set, else SQLite in the
/// data directory.
async fn start_accounts(
    cfg: &UpConfig,
    edge: &mqtt_edge::Edge,
    bus: std::sync::Arc<dyn bus::Bus>,
    dirs: Option<mqtt_edge::StateDirectories>,
    keys: Keys,
    demo: Option<&str>,
) -> Result<(std::net::SocketAddr, String), String> {
    let data = std::path::Path::new(&cfg.data_dir);
    if cfg.http.database_url.is_empty() {
        let store = accounts::sqlite::SqliteStore::open(&data.join("accounts.db"))
            .await
            .map_err(|e| format!("accounts database: {e}"))?;
        serve_accounts(cfg, edge, bus, dirs, keys, demo, store).await
    } else {
        let store = accounts::postgres::PgStore::connect(&cfg.http.database_url, 16)
            .await
            .map_err(|e| format!("http.database_url: {e}"))?;
        serve_accounts(cfg, edge, bus, dirs, keys, demo, store).await
    }
}

async fn serve_accounts<S: accounts::store::AccountStore>(
    cfg: &UpConfig,
    edge: &mqtt_edge::Edge,
    bus: std::sync::Arc<dyn bus::Bus>,
    dirs: Option<mqtt_edge::StateDirectories>,
    keys: Keys,
    demo: Option<&str>,
    store: S,
) -> Result<(std::net::SocketAddr, String), String> {
    let data = std::path::Path::new(&cfg.data_dir);
    if let Some(password) = demo {
        seed_demo(&store, password).await?;
    }
    prime_edge(&store, edge, dirs.as_ref()).await?;
    let Keys { signer, admin, links } = keys;
    let links = accounts::files::LinkSigner::new(links);
    let files = std::sync::Arc::new(accounts::files::DiskFiles::new(data.join("files")));
    let mut state =
        accounts::api::AccountsState::new(store, signer, cfg.http.clone(), admin.clone(), bus, files, links);
    state.directory = dirs.as_ref().map(|d| d.relations.clone());
    state.access = dirs.map(|d| d.access);
    let router = accounts::api::router(std::sync::Arc::new(state));
    let tls = cfg.http.tls()?;
    let addr = service_kit::http::serve_with_tls(&cfg.http.addr, tls, router, service_kit::shutdown::signal())
        .await
        .map_err(|e| format!("http.addr {}: {e}", cfg.http.addr))?;
    Ok((addr, admin))
}

/// The edge starts from what the database knows: relations and group memberships, applied as
/// the account events that made them, and enterprises' ACL tables and recent revocations,
/// through the access directory (Redis, refilled here: newer entries win; or one in memory).
async fn prime_edge<S: accounts::store::AccountStore>(
    store: &S,
    edge: &mqtt_edge::Edge,
    dirs: Option<&mqtt_edge::StateDirectories>,
) -> Result<(), String> {
    use broker::access::{AccessDirectory, MemoryAccess, Revocation, Tables};
    use wire::pb::{self, account_event::Event};
    let redis = |err: String| format!("state.redis_url: {err}");
    let db = |e: accounts::store::StoreError| format!("accounts database: {e}");
    let events = edge.account_events();
    for (e, follower, followee) in store.all_follows().await.map_err(db)? {
        if let Some(d) = dirs {
            d.relations.set_follow(&e, &follower, &followee, true).await.map_err(redis)?;
        }
        let change = pb::RelationChanged { follower, followee, following: true };
        let event = Event::RelationChanged(change);
        events.apply(&pb::AccountEvent { enterprise_id: e, event: Some(event), ..Default::default() });
    }
    // Group memberships the same way: `%g` grants group topics to members only.
    for (e, group, username) in store.all_memberships().await.map_err(db)? {
        if let Some(d) = dirs {
            d.relations.set_member(&e, &group, &username, true).await.map_err(redis)?;
        }
        let change = pb::GroupMembershipChanged { group, username, member: true };
        let event = Event::GroupMembershipChanged(change);
        events.apply(&pb::AccountEvent { enterprise_id: e, event: Some(event), ..Default::default() });
    }
    let access: std::sync::Arc<dyn AccessDirectory> = match dirs {
        Some(d) => d.access.clone(),
        None => std::sync::Arc::new(MemoryAccess::default()),
    };
    for (e, p) in store.all_policies().await.map_err(db)? {
        let t = Tables { version: p.version as u64, acl_rules: p.acl_rules, auto_subscribe: p.auto_subscribe };
        access.save_tables(&e, &t).await.map_err(redis)?;
    }
    let horizon = accounts::store::now_ms() - mqtt_edge::auth::REVOCATION_MEMORY_MS;
    for (enterprise, user_id, before_ms) in store.revocations_since(horizon).await.map_err(db)? {
        access
            .save_revocation(&Revocation { enterprise, user_id, before_ms, session: String::new() })
            .await
            .map_err(redis)?;
    }
    edge.prime_access(access.as_ref()).await.map_err(redis)
}

/// Enterprise `acme`: alice and bob follow each other (friends), carol follows alice.
async fn seed_demo<S: accounts::store::AccountStore>(store: &S, password: &str) -> Result<(), String> {
    use accounts::store::StoreError;
    let e = match store.create_enterprise("acme").await {
        Ok(e) => e,
        Err(StoreError::Conflict) => return Ok(()),
        Err(e) => return Err(e.to_string()),
    };
    let mut ids = std::collections::HashMap::new();
    for (name, display) in [("alice", "Alice"), ("bob", "Bob"), ("carol", "Carol")] {
        // A hash each, so a salt each: one hash shared by all would show anyone who reads the
        // database that they have the same password, and one cracking effort would serve all.
        let hash = service_kit::password::hash(password)?;
        let u = store.create_user(&e.id, name, display, &hash).await.map_err(|e| e.to_string())?;
        ids.insert(name, u.id);
    }
    for (a, b) in [("alice", "bob"), ("bob", "alice"), ("carol", "alice")] {
        store.set_follow(&e.id, &ids[a], &ids[b], true).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

async fn serve(
    cfg: UpConfig,
    edge_cfg: EdgeConfig,
    keys: Keys,
    demo: Option<String>,
    tightened: Vec<(std::path::PathBuf, u32)>,
) -> Result<(), String> {
    let telemetry = service_kit::telemetry::init("hermes", &edge_cfg.telemetry).map_err(|e| e.to_string())?;
    for (path, mode) in tightened {
        let (path, was) = (path.display().to_string(), format!("{mode:o}"));
        tracing::warn!(path, was, "other local users could read this: made it readable by its owner only");
    }
    let anonymous = edge_cfg.auth.allow_anonymous;
    let users_file = edge_cfg.auth.users_file.clone();
    let nats_url = edge_cfg.bus.nats_url.clone();
    let dirs = mqtt_edge::StateDirectories::connect(&edge_cfg.state.redis_url).await?;
    // Primed from the database below, which also refills the directories.
    let mut edge = mqtt_edge::Edge::builder(edge_cfg);
    if let Some(d) = &dirs {
        edge = edge.relations(d.relations.clone());
    }
    let edge = edge.start().await?;
    let bus: std::sync::Arc<dyn bus::Bus> = if nats_url.is_empty() {
        std::sync::Arc::new(bus::memory::MemoryBus::default())
    } else {
        std::sync::Arc::new(bus::nats::NatsBus::connect(&nats_url).await.map_err(|e| format!("bus.nats_url: {e}"))?)
    };
    let _events = edge.account_events().follow(bus.as_ref()).await.map_err(|e| format!("bus: {e}"))?;
    let (http, admin) = start_accounts(&cfg, &edge, bus, dirs, keys, demo.as_deref()).await?;
    let ops = if cfg.ops.addr.is_empty() {
        None
    } else {
        let router = service_kit::http::ops_router(telemetry.prometheus.clone());
        Some(
            service_kit::http::serve(&cfg.ops.addr, router, service_kit::shutdown::signal())
                .await
                .map_err(|e| format!("ops.addr {}: {e}", cfg.ops.addr))?,
        )
    };
    let a = edge.addrs();
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
    service_kit::shutdown::signal().await;
    println!("stopping: clients are told the server is shutting down");
    edge.stop().await;
    drop(telemetry);
    Ok(())
}
