//! `hermes up`: every service in one process on embedded defaults. Today that is the MQTT edge
//! and the accounts tier (SQLite in the data directory); the control unit and publish API join
//! them as they land.

use std::path::PathBuf;

use mqtt_edge::EdgeConfig;
use mqtt_edge::cli::EdgeFlags;
use mqtt_edge::config::{AuthConfig, LimitsConfig, MqttConfig, OpsConfig};
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
    pub http: HttpConfig,
    pub mqtt: MqttConfig,
    pub limits: LimitsConfig,
    pub auth: AuthConfig,
    pub ops: OpsConfig,
    pub telemetry: TelemetryConfig,
}

/// The accounts REST API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub addr: String,
    /// Lifetime of MQTT access tokens, in seconds.
    pub token_ttl_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { addr: "127.0.0.1:8080".into(), token_ttl_secs: 3600 }
    }
}

impl Default for UpConfig {
    fn default() -> Self {
        let edge = EdgeConfig::default();
        UpConfig {
            data_dir: "hermes-data".into(),
            http: HttpConfig::default(),
            mqtt: edge.mqtt,
            limits: edge.limits,
            auth: edge.auth,
            ops: edge.ops,
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
    std::fs::create_dir_all(&cfg.data_dir).map_err(|e| format!("data_dir {}: {e}", cfg.data_dir))?;
    let data = std::path::Path::new(&cfg.data_dir);
    let signer = accounts::load_or_create_signer(&data.join("token.key"))?;
    let mut edge_cfg = cfg.edge();
    if edge_cfg.auth.token_public_key.is_empty() {
        edge_cfg.auth.token_public_key = signer.verifier().to_paserk();
    }
    edge_cfg.validate().map_err(|e| format!("invalid configuration: {e}"))?;
    let demo =
        args.demo.then(|| args.demo_password.clone().unwrap_or_else(|| accounts::store::new_id()[..12].to_owned()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start runtime: {e}"))?;
    rt.block_on(serve(cfg, edge_cfg, signer, demo))
}

/// Tells the in-process edge about follow changes made through the accounts API.
struct EdgeRelations(mqtt_edge::RelationUpdater);

impl accounts::api::RelationHook for EdgeRelations {
    fn follow_changed(&self, enterprise: &str, follower: &str, followee: &str, following: bool) {
        self.0.follow_changed(enterprise, follower, followee, following);
    }
}

/// The admin key of this data directory, created on first use.
fn admin_key(data: &std::path::Path) -> Result<String, String> {
    let path = data.join("admin.key");
    match std::fs::read_to_string(&path) {
        Ok(k) => Ok(k.trim().to_owned()),
        Err(_) => {
            let key = accounts::store::new_id();
            std::fs::write(&path, &key).map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(key)
        }
    }
}

async fn start_accounts(
    cfg: &UpConfig,
    edge: &mqtt_edge::Edge,
    signer: wire::token::Signer,
    demo: Option<&str>,
) -> Result<(std::net::SocketAddr, String), String> {
    use accounts::store::AccountStore;
    let data = std::path::Path::new(&cfg.data_dir);
    let store = accounts::sqlite::SqliteStore::open(&data.join("accounts.db"))
        .await
        .map_err(|e| format!("accounts database: {e}"))?;
    if let Some(password) = demo {
        seed_demo(&store, password).await?;
    }
    // The edge's relation store starts from what the database knows.
    for (e, a, b) in store.all_follows().await.map_err(|e| e.to_string())? {
        edge.relations().set_follow(&e, &a, &b, true);
    }
    let admin = admin_key(data)?;
    let state = accounts::api::AccountsState {
        store,
        signer,
        token_ttl: std::time::Duration::from_secs(cfg.http.token_ttl_secs),
        admin_key: admin.clone(),
        hook: std::sync::Arc::new(EdgeRelations(edge.relation_updater())),
    };
    let router = accounts::api::router(std::sync::Arc::new(state));
    let addr = service_kit::http::serve(&cfg.http.addr, router, service_kit::shutdown::signal())
        .await
        .map_err(|e| format!("http.addr {}: {e}", cfg.http.addr))?;
    Ok((addr, admin))
}

/// Enterprise `acme`: alice and bob follow each other (friends), carol follows alice.
async fn seed_demo(store: &accounts::sqlite::SqliteStore, password: &str) -> Result<(), String> {
    use accounts::store::{AccountStore, StoreError};
    let e = match store.create_enterprise("acme").await {
        Ok(e) => e,
        Err(StoreError::Conflict) => return Ok(()),
        Err(e) => return Err(e.to_string()),
    };
    let hash = service_kit::password::hash(password)?;
    let mut ids = std::collections::HashMap::new();
    for (name, display) in [("alice", "Alice"), ("bob", "Bob"), ("carol", "Carol")] {
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
    signer: wire::token::Signer,
    demo: Option<String>,
) -> Result<(), String> {
    let telemetry = service_kit::telemetry::init("hermes", &edge_cfg.telemetry).map_err(|e| e.to_string())?;
    let anonymous = edge_cfg.auth.allow_anonymous;
    let users_file = edge_cfg.auth.users_file.clone();
    let edge = mqtt_edge::Edge::start(edge_cfg)?;
    let (http, admin) = start_accounts(&cfg, &edge, signer, demo.as_deref()).await?;
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
    println!("  accounts API    http://{http}/v1   (admin key for /v1/enterprises: {admin})");
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
