//! `bench connections`: N idle clients; set-up latency and the broker's memory per connection.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::Common;
use super::clients::{Dial, open_many};
use super::stats::{latency_summary, rss_kib};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Number of connections.
    #[arg(short, long, default_value_t = 1000)]
    n: usize,
    /// Seconds to keep the connections open after the last one is up.
    #[arg(long, default_value_t = 2)]
    hold_secs: u64,
}

pub async fn run(common: &Common, args: Args) -> Result<Value, String> {
    let dial = Dial::from(common)?;
    let rss_before = common.pid.and_then(rss_kib);
    let started = Instant::now();
    let (clients, setup, failed) = open_many(common, &dial, args.n, "conn").await;
    let elapsed = started.elapsed();
    tokio::time::sleep(Duration::from_secs(args.hold_secs)).await;
    let rss_after = common.pid.and_then(rss_kib);
    let connected = clients.len();
    let mut report = serde_json::json!({
        "scenario": "connections",
        "requested": args.n,
        "connected": connected,
        "failed": failed,
        "connects_per_sec": (connected as f64 / elapsed.as_secs_f64()).round(),
        "setup": latency_summary(setup),
    });
    if let (Some(b), Some(a)) = (rss_before, rss_after) {
        report["broker_rss_kib_before"] = b.into();
        report["broker_rss_kib_after"] = a.into();
        let per = if connected == 0 { 0.0 } else { (a.saturating_sub(b)) as f64 / connected as f64 };
        report["broker_rss_kib_per_connection"] = ((per * 100.0).round() / 100.0).into();
    }
    drop(clients);
    Ok(report)
}
