//! `hermes up`: every service in one process on embedded defaults. Today that is the MQTT edge;
//! the accounts tier, control unit and publish API join it as they land.

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
}

/// The configuration tree of `hermes up`: the edge's sections plus what the all-in-one adds.
/// Key names are the same as in every service's own config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct UpConfig {
    pub data_dir: String,
    pub mqtt: MqttConfig,
    pub limits: LimitsConfig,
    pub auth: AuthConfig,
    pub ops: OpsConfig,
    pub telemetry: TelemetryConfig,
}

impl Default for UpConfig {
    fn default() -> Self {
        let edge = EdgeConfig::default();
        UpConfig {
            data_dir: "hermes-data".into(),
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
    service_kit::config::load(args.edge.config.as_deref(), std::env::vars(), &overrides).map_err(|e| e.to_string())
}

pub fn print_config(args: UpArgs) -> Result<(), String> {
    print!("{}", service_kit::config::render(&load(&args)?));
    Ok(())
}

pub fn run(args: UpArgs) -> Result<(), String> {
    let cfg = load(&args)?;
    let edge_cfg = cfg.edge();
    edge_cfg.validate().map_err(|e| format!("invalid configuration: {e}"))?;
    std::fs::create_dir_all(&cfg.data_dir).map_err(|e| format!("data_dir {}: {e}", cfg.data_dir))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start runtime: {e}"))?;
    rt.block_on(serve(cfg, edge_cfg))
}

async fn serve(cfg: UpConfig, edge_cfg: EdgeConfig) -> Result<(), String> {
    let telemetry = service_kit::telemetry::init("hermes", &edge_cfg.telemetry).map_err(|e| e.to_string())?;
    let anonymous = edge_cfg.auth.allow_anonymous;
    let users_file = edge_cfg.auth.users_file.clone();
    let edge = mqtt_edge::Edge::start(edge_cfg)?;
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
    if let Some(x) = ops {
        println!("  metrics         http://{x}/metrics   (health: /healthz, /readyz)");
    }
    if anonymous {
        println!(
            "  WARNING: anonymous access is on (--allow-anonymous): anyone who reaches these ports can publish and subscribe."
        );
    } else if users_file.is_empty() {
        println!(
            "  No users yet: add one with `hermes passwd --users-file {}/users NAME` and restart, or use --allow-anonymous for a local demo.",
            cfg.data_dir
        );
    } else {
        println!("  users from {users_file}");
    }
    println!("Stop with Ctrl-C.");
    service_kit::shutdown::signal().await;
    println!("stopping: clients are told the server is shutting down");
    edge.stop().await;
    drop(telemetry);
    Ok(())
}
