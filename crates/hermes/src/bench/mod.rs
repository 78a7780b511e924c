//! `hermes bench`: measures an MQTT broker (ours or any other) from outside, over loopback.
//!
//! Scenarios: `connections` (idle clients and the broker's RSS per connection), `fanout` (one
//! publish to N subscribers), `throughput` (P publishers → S subscribers with latency), and
//! `accounts` (logins, token refreshes, contact syncs against the accounts API), and `acl` (the
//! edge's ACL decisions for a token user with many friends, in this process). Clients
//! are spread over several 127.0.0.x source addresses because one source address runs out of
//! ephemeral ports near 28 000. Reports go to stdout (text or `--json`), progress to stderr.

mod accounts;
mod acl;
mod clients;
mod connections;
mod fanout;
mod stats;
mod storm;
mod throughput;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// Broker host (an IPv4 address).
    #[arg(long, default_value = "127.0.0.1", global = true)]
    host: Ipv4Addr,
    /// Broker MQTT port.
    #[arg(long, default_value_t = 1883, global = true)]
    port: u16,
    /// Number of loopback source addresses to spread clients over (127.0.0.2, .3, ...).
    #[arg(long, default_value_t = 8, global = true)]
    sources: u8,
    /// MQTT protocol version of the bench clients: 3 (3.1.1) or 5.
    #[arg(long, default_value_t = 3, global = true)]
    mqtt_version: u8,
    #[arg(long, global = true)]
    username: Option<String>,
    #[arg(long, global = true)]
    password: Option<String>,
    /// New connections per second while setting up clients.
    #[arg(long, default_value_t = 5000, global = true)]
    connect_rate: u32,
    /// The broker's process id: reports its resident memory and CPU time.
    #[arg(long, global = true)]
    pid: Option<u32>,
    /// Print the report as one JSON object.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Clone, clap::Subcommand)]
enum Scenario {
    /// Open N idle connections and report set-up latency and the broker's RSS per connection.
    Connections(connections::Args),
    /// N subscribers on one topic; time from one publish until the last subscriber has it.
    Fanout(fanout::Args),
    /// P publishers → S subscribers at QoS 0 or 1: delivered msgs/s and latency percentiles.
    Throughput(throughput::Args),
    /// Kill (-9) the edge on --port with N persistent clients on it; all reconnect to
    /// --fallback-port: storm duration, reconnect latency, sessions resumed, messages lost.
    Storm(storm::Args),
    /// The accounts API: password logins, token refreshes or contact syncs per second.
    Accounts(accounts::Args),
    /// The edge's ACL decisions for a token user with many mutual friends (in this process).
    Acl(acl::Args),
}

impl Common {
    fn broker(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.host), self.port)
    }

    fn version(&self) -> Result<sdk::mqtt::Version, String> {
        match self.mqtt_version {
            3 => Ok(sdk::mqtt::Version::V311),
            5 => Ok(sdk::mqtt::Version::V5),
            v => Err(format!("--mqtt-version must be 3 or 5, not {v}")),
        }
    }

    /// The source address for the i-th client.
    fn source(&self, i: usize) -> Option<IpAddr> {
        if self.sources == 0 || !self.host.is_loopback() {
            return None;
        }
        let n = (i % usize::from(self.sources)) as u8;
        Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + n)))
    }
}

pub fn run(args: BenchArgs) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start runtime: {e}"))?;
    rt.block_on(async move {
        let report = match args.scenario {
            Scenario::Connections(a) => connections::run(&args.common, a).await?,
            Scenario::Fanout(a) => fanout::run(&args.common, a).await?,
            Scenario::Throughput(a) => throughput::run(&args.common, a).await?,
            Scenario::Storm(a) => storm::run(&args.common, a).await?,
            Scenario::Accounts(a) => accounts::run(&args.common, a).await?,
            Scenario::Acl(a) => acl::run(a)?,
        };
        if args.common.json {
            println!("{}", serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?);
        } else {
            println!("{}", stats::render_text(&report));
        }
        Ok(())
    })
}
