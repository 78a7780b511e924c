//! `bench fanout`: N subscribers on one topic; one QoS 0 publish; time until the last has it.
//! With `--part`, the subscribers are held by several processes (one may hold at most 20 000
//! connections here) and the publish comes from another: each publish carries its wall-clock
//! send time, and each subscribers' process reports when the round reached its last one.

use std::time::{Duration, Instant};

use serde_json::Value;

use sdk::mqtt::{Client, Packet, SubscribeTopic};

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
    /// Only this part of a fan-out spread over processes (then `--topic` names the topic).
    #[arg(long, value_enum)]
    part: Option<Part>,
    /// The topic of a fan-out spread over processes.
    #[arg(long, default_value = "bench/fanout/many")]
    topic: String,
    /// `--part subscribers`: created once every subscription is acknowledged.
    #[arg(long)]
    ready_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Part {
    /// Hold `n` subscribers and report when each round reached them.
    Subscribers,
    /// Publish the rounds, two seconds apart.
    Publisher,
}

/// Wall-clock microseconds, which every process on the machine shares.
fn wall_us() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
}

/// A round's payload: its number and its send time.
fn stamped(round: usize, size: usize) -> Vec<u8> {
    let mut payload = vec![b'x'; size.max(16)];
    payload[..8].copy_from_slice(&(round as u64).to_be_bytes());
    payload[8..16].copy_from_slice(&wall_us().to_be_bytes());
    payload
}

/// The round and the time since it was sent, from a payload [`stamped`] wrote.
fn stamp_of(payload: &[u8]) -> Option<(usize, Duration)> {
    let round = u64::from_be_bytes(payload.get(..8)?.try_into().ok()?);
    let sent = u64::from_be_bytes(payload.get(8..16)?.try_into().ok()?);
    Some((usize::try_from(round).ok()?, Duration::from_micros(wall_us().saturating_sub(sent))))
}

/// Subscribes each of `subs` to `topic` and waits for every SUBACK. Each then reads `rounds`
/// publishes and hands what `seen` makes of each (from its round and payload) to the receiver
/// returned; it stays connected until the returned sender says stop (the first to close would
/// slow the last round's stragglers down).
async fn subscribe_all<T: Send + 'static>(
    subs: Vec<Client>,
    topic: &str,
    rounds: usize,
    seen: impl Fn(usize, &[u8]) -> Option<T> + Clone + Send + 'static,
) -> Result<(tokio::sync::watch::Sender<bool>, tokio::sync::mpsc::UnboundedReceiver<T>), String> {
    let n = subs.len();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(n.max(1));
    let (got_tx, got_rx) = tokio::sync::mpsc::unbounded_channel();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    for mut c in subs {
        let (topic, ready, got, seen) = (topic.to_owned(), ready_tx.clone(), got_tx.clone(), seen.clone());
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            let ok = c.subscribe(vec![SubscribeTopic::new(&topic, 0)], Duration::from_secs(60)).await.is_ok();
            let _ = ready.send(ok).await;
            for round in 0..rounds {
                match c.recv(Duration::from_secs(300)).await {
                    Ok(Packet::Publish(p)) => {
                        if let Some(v) = seen(round, &p.payload) {
                            let _ = got.send(v);
                        }
                    }
                    _ => return,
                }
            }
            let _ = stopped.wait_for(|s| *s).await;
        });
    }
    let mut subscribed = 0;
    for _ in 0..n {
        if ready_rx.recv().await == Some(true) {
            subscribed += 1;
        }
    }
    if subscribed != n {
        return Err(format!("only {subscribed} of {n} subscriptions were acknowledged"));
    }
    Ok((stop, got_rx))
}

/// A round's latency percentiles, how many it reached and when the last had it.
fn round_summary(times: &[Duration]) -> Value {
    let last = times.iter().max().copied().unwrap_or_default();
    let mut s = latency_summary(times.to_vec());
    s["delivered"] = times.len().into();
    s["time_to_last_ms"] = ((last.as_secs_f64() * 1e6).round() / 1e3).into();
    s
}

async fn publisher_part(common: &Common, args: Args) -> Result<Value, String> {
    let dial = Dial::from(common)?;
    let mut publisher = dial.open(common.source(0), format!("fan-pub-{}", std::process::id())).await?;
    for round in 0..args.rounds {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let payload = stamped(round, args.payload);
        publisher
            .publish(&args.topic, &payload, 0, false, Duration::from_secs(10))
            .await
            .map_err(|e| format!("{e:?}"))?;
    }
    Ok(serde_json::json!({ "scenario": "fanout-publisher", "rounds": args.rounds, "topic": args.topic }))
}

async fn subscribers_part(common: &Common, args: Args) -> Result<Value, String> {
    let dial = Dial::from(common)?;
    let (subs, _, failed) = open_many(common, &dial, args.n, "fan").await;
    if failed > 0 {
        return Err(format!("{failed} subscribers could not connect"));
    }
    let (stop, mut got_rx) = subscribe_all(subs, &args.topic, args.rounds, |_, payload| stamp_of(payload)).await?;
    if let Some(f) = &args.ready_file {
        std::fs::write(f, b"ready").map_err(|e| format!("{}: {e}", f.display()))?;
    }
    let mut times = vec![Vec::with_capacity(args.n); args.rounds];
    while times.iter().map(Vec::len).sum::<usize>() < args.n * args.rounds {
        match tokio::time::timeout(Duration::from_secs(60), got_rx.recv()).await {
            Ok(Some((round, after))) if round < args.rounds => times[round].push(after),
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    let _ = stop.send(true);
    let rounds: Vec<Value> = times.into_iter().map(|t| round_summary(&t)).collect();
    Ok(serde_json::json!({ "scenario": "fanout-subscribers", "subscribers": args.n, "rounds": rounds }))
}

pub async fn run(common: &Common, args: Args) -> Result<Value, String> {
    match args.part {
        Some(Part::Subscribers) => return subscribers_part(common, args).await,
        Some(Part::Publisher) => return publisher_part(common, args).await,
        None => {}
    }
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
    let (stop, mut got_rx) = subscribe_all(subs, &topic, args.rounds, |round, _| Some((round, Instant::now()))).await?;
    let rounds = args.rounds;
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
        let mut s = round_summary(&times);
        s["us_per_delivery"] = ((last.as_secs_f64() * 1e6 / args.n.max(1) as f64 * 100.0).round() / 100.0).into();
        results.push(s);
    }
    let _ = stop.send(true);
    let mut report = serde_json::Map::new();
    report.insert("scenario".into(), "fanout".into());
    report.insert("subscribers".into(), args.n.into());
    report.insert("on_second_edge".into(), elsewhere.into());
    report.insert("rounds".into(), Value::Array(results));
    cpu_report(&mut report, common.pid, cpu_before, (args.n * rounds) as u64);
    Ok(Value::Object(report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_and_its_send_time_travel_in_the_payload() {
        let payload = stamped(7, 0);
        assert_eq!(payload.len(), 16, "room for both, whatever the size asked");
        let (round, after) = stamp_of(&payload).expect("a stamp");
        assert_eq!(round, 7);
        assert!(after < Duration::from_secs(1));
        assert_eq!(stamp_of(&payload[..15]), None, "too short: not a stamp");
        assert_eq!(stamped(usize::MAX, 64).len(), 64);
    }
}
