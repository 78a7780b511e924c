//! `bench fanout`: N subscribers on one topic; one QoS 0 publish; time until the last has it.

use std::time::{Duration, Instant};

use serde_json::Value;

use sdk::mqtt::{Packet, SubscribeTopic};

use super::Common;
use super::clients::{Dial, open_many};
use super::stats::{cpu_report, cpu_secs, latency_summary};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Number of subscribers.
    #[arg(short, long, default_value_t = 1000)]
    n: usize,
    /// Publishes (rounds), each measured separately.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Payload bytes.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Half the subscribers connect to this port (another edge of the same cluster): the
    /// publish reaches them across the bus.
    #[arg(long)]
    second_port: Option<u16>,
}

pub async fn run(common: &Common, args: Args) -> Result<Value, String> {
    let dial = Dial::from(common)?;
    let topic = format!("bench/fanout/{}", std::process::id());
    let elsewhere = if args.second_port.is_some() { args.n / 2 } else { 0 };
    let (mut subs, _, mut failed) = open_many(common, &dial, args.n - elsewhere, "fan").await;
    if let Some(port) = args.second_port {
        let mut other = dial.clone();
        other.broker.set_port(port);
        let (more, _, f) = open_many(common, &other, elsewhere, "fan-b").await;
        subs.extend(more);
        failed += f;
    }
    if failed > 0 {
        return Err(format!("{failed} subscribers could not connect"));
    }
    eprintln!("  subscribing {} clients", subs.len());
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(subs.len().max(1));
    let (got_tx, mut got_rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    let rounds = args.rounds;
    for mut c in subs {
        let topic = topic.clone();
        let ready = ready_tx.clone();
        let got = got_tx.clone();
        tokio::spawn(async move {
            let ok = c.subscribe(vec![SubscribeTopic::new(&topic, 0)], Duration::from_secs(60)).await.is_ok();
            let _ = ready.send(ok).await;
            for round in 0..rounds {
                match c.recv(Duration::from_secs(120)).await {
                    Ok(Packet::Publish(_)) => {
                        let _ = got.send((round, Instant::now()));
                    }
                    _ => return,
                }
            }
        });
    }
    drop(got_tx);
    let mut subscribed = 0;
    for _ in 0..args.n {
        if ready_rx.recv().await == Some(true) {
            subscribed += 1;
        }
    }
    if subscribed != args.n {
        return Err(format!("only {subscribed} of {} subscriptions were acknowledged", args.n));
    }
    if args.second_port.is_some() {
        // The other edge tells this one of its interest shortly after its SUBACKs.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut publisher = dial.open(common.source(args.n), format!("fan-pub-{}", std::process::id())).await?;
    let payload = vec![b'x'; args.payload];
    let cpu_before = (cpu_secs(common.pid), cpu_secs(None));
    let mut results = Vec::new();
    for round in 0..rounds {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let t0 = Instant::now();
        publisher.publish(&topic, &payload, 0, false, Duration::from_secs(10)).await.map_err(|e| format!("{e:?}"))?;
        let mut times = Vec::with_capacity(args.n);
        while times.len() < args.n {
            match tokio::time::timeout(Duration::from_secs(60), got_rx.recv()).await {
                Ok(Some((r, at))) if r == round => times.push(at.duration_since(t0)),
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        let last = times.iter().max().copied().unwrap_or_default();
        eprintln!("  round {round}: {} deliveries, last after {:.1} ms", times.len(), last.as_secs_f64() * 1e3);
        let mut s = latency_summary(times.clone());
        s["delivered"] = times.len().into();
        s["time_to_last_ms"] = ((last.as_secs_f64() * 1e6).round() / 1e3).into();
        s["us_per_delivery"] = ((last.as_secs_f64() * 1e6 / args.n.max(1) as f64 * 100.0).round() / 100.0).into();
        results.push(s);
    }
    let mut report = serde_json::Map::new();
    report.insert("scenario".into(), "fanout".into());
    report.insert("subscribers".into(), args.n.into());
    report.insert("on_second_edge".into(), elsewhere.into());
    report.insert("rounds".into(), Value::Array(results));
    cpu_report(&mut report, common.pid, cpu_before, (args.n * rounds) as u64);
    Ok(Value::Object(report))
}
