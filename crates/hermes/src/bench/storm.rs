//! `bench storm`: every client of an edge that is killed (-9) reconnects to another edge of the
//! cluster at once. N clients hold persistent sessions on the first edge, each with one QoS 1
//! message in flight; the edge is killed; all reconnect to the second edge. Reports how long the
//! storm took, each reconnect's latency, how many sessions came back and how many in-flight
//! messages were delivered again (the rest are lost).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::Common;
use super::clients::{Dial, open_many};
use super::stats::latency_summary;
use sdk::mqtt::{Packet, SubscribeTopic};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Number of clients.
    #[arg(short, long, default_value_t = 1000)]
    n: usize,
    /// The other edge's MQTT port: where the clients go once theirs is killed.
    #[arg(long)]
    fallback_port: u16,
    /// The process id of the edge on --port, killed with SIGKILL once every client is set up.
    #[arg(long)]
    kill_pid: u32,
}

pub async fn run(common: &Common, args: Args) -> Result<Value, String> {
    if common.version()? != sdk::mqtt::Version::V5 {
        return Err("bench storm needs --mqtt-version 5 (persistent sessions with an expiry)".into());
    }
    let mut dial = Dial::from(common)?;
    dial.persistent = true;
    let prefix = format!("bench/storm/{}", std::process::id());
    let (clients, _, failed) = open_many(common, &dial, args.n, "storm").await;
    if failed > 0 {
        return Err(format!("{failed} clients could not connect to the first edge"));
    }
    let mut ids = Vec::with_capacity(clients.len());
    for (i, mut c) in clients.into_iter().enumerate() {
        let topic = format!("{prefix}/{i}");
        c.subscribe(vec![SubscribeTopic::new(&topic, 1)], Duration::from_secs(30))
            .await
            .map_err(|e| format!("subscribe: {e:?}"))?;
        ids.push((format!("storm-{}-{i}", std::process::id()), topic, c));
    }
    // One message in flight for each session: delivered, never acknowledged.
    let mut publisher = dial.open(None, format!("storm-pub-{}", std::process::id())).await?;
    for (_, topic, _) in &ids {
        publisher
            .publish(topic, b"in flight", 1, false, Duration::from_secs(30))
            .await
            .map_err(|e| format!("{e:?}"))?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed = std::process::Command::new("kill").args(["-KILL", &args.kill_pid.to_string()]).status();
    if !killed.is_ok_and(|s| s.success()) {
        return Err(format!("could not kill {}", args.kill_pid));
    }
    drop(publisher);
    let sessions: Vec<String> = ids
        .into_iter()
        .map(|(id, _, c)| {
            drop(c);
            id
        })
        .collect();

    let mut fallback = dial.clone();
    fallback.broker.set_port(args.fallback_port);
    let resumed = Arc::new(AtomicUsize::new(0));
    let redelivered = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let period = Duration::from_secs_f64(1.0 / f64::from(common.connect_rate.max(1)));
    let mut ticker = tokio::time::interval(period);
    let mut tasks = Vec::with_capacity(sessions.len());
    for (i, id) in sessions.into_iter().enumerate() {
        ticker.tick().await;
        let (dial, source) = (fallback.clone(), common.source(i));
        let (resumed, redelivered) = (resumed.clone(), redelivered.clone());
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let (mut c, present) = dial.open_session(source, id).await?;
            let latency = t.elapsed();
            if present {
                resumed.fetch_add(1, Ordering::Relaxed);
            }
            if let Ok(Packet::Publish(p)) = c.recv(Duration::from_secs(10)).await {
                redelivered.fetch_add(1, Ordering::Relaxed);
                if let Some(id) = p.packet_id {
                    let _ = c.send(&Packet::PubAck { packet_id: id, code: 0 }).await;
                }
            }
            // End the session with the run.
            let _ = c.send(&Packet::Disconnect { code: 0, session_expiry: Some(0), reason_string: None }).await;
            Ok::<_, String>(latency)
        }));
    }
    let mut latencies = Vec::with_capacity(tasks.len());
    let mut reconnect_failed = 0;
    let mut first_error = None;
    for t in tasks {
        match t.await {
            Ok(Ok(l)) => latencies.push(l),
            Ok(Err(e)) => {
                reconnect_failed += 1;
                first_error.get_or_insert(e);
            }
            Err(e) => {
                reconnect_failed += 1;
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    let storm = started.elapsed();
    let reconnected = latencies.len();
    let redelivered = redelivered.load(Ordering::Relaxed);
    Ok(serde_json::json!({
        "scenario": "storm",
        "clients": args.n,
        "reconnected": reconnected,
        "failed": reconnect_failed,
        "first_error": first_error,
        "storm_secs": (storm.as_secs_f64() * 1000.0).round() / 1000.0,
        "reconnects_per_sec": (reconnected as f64 / storm.as_secs_f64()).round(),
        "sessions_resumed": resumed.load(Ordering::Relaxed),
        "in_flight_redelivered": redelivered,
        "in_flight_lost": args.n.saturating_sub(redelivered),
        "reconnect": latency_summary(latencies),
    }))
}
