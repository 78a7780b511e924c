//! `bench storm`: every client of an edge that is killed (-9) reconnects to another edge of the
//! cluster at once. N clients hold persistent sessions on the first edge, each with one QoS 1
//! message in flight; the edge is killed; all reconnect to the second edge. Reports how long the
//! storm took, each reconnect's latency, how many sessions came back and how many in-flight
//! messages were delivered again (the rest are lost).
//!
//! With `--signal TERM`, the edge stops instead (a drain): it tells its clients to go (0x8B)
//! and hands each session over to the second edge when its client reconnects there.
//!
//! With `--away-secs`, the clients stay away that long after the kill: one message is published
//! to each session at once (through the second edge), and one more once the second edge has
//! taken the dead edge's sessions (a probe publish on the first session's topic is answered 0,
//! not 0x10 "no matching subscribers"). Reports when that was, and what of both arrived.

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
    /// The process id of the edge on --port, sent --signal once every client is set up.
    #[arg(long)]
    kill_pid: u32,
    /// KILL (the edge dies: its sessions are taken from its journal) or TERM (it stops and
    /// hands its sessions over).
    #[arg(long, default_value = "KILL", value_parser = ["KILL", "TERM"])]
    signal: String,
    /// Seconds the clients stay away after the kill (0: they reconnect at once).
    #[arg(long, default_value_t = 0)]
    away_secs: u64,
}

/// The payloads, by when they were published.
const IN_FLIGHT: &[u8] = b"in flight";
const AWAY: &[u8] = b"while away";
const TAKEN: &[u8] = b"once taken";
const PROBE: &[u8] = b"probe";

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
        publisher.publish(topic, IN_FLIGHT, 1, false, Duration::from_secs(30)).await.map_err(|e| format!("{e:?}"))?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let signal = format!("-{}", args.signal);
    let killed = std::process::Command::new("kill").args([signal.as_str(), &args.kill_pid.to_string()]).status();
    if !killed.is_ok_and(|s| s.success()) {
        return Err(format!("could not send {signal} to {}", args.kill_pid));
    }
    let killed_at = Instant::now();
    drop(publisher);
    let (sessions, topics): (Vec<String>, Vec<String>) = ids
        .into_iter()
        .map(|(id, topic, c)| {
            drop(c);
            (id, topic)
        })
        .unzip();

    let mut fallback = dial.clone();
    fallback.broker.set_port(args.fallback_port);
    let away = match args.away_secs {
        0 => None,
        secs => Some(while_away(&fallback, &topics, killed_at, Duration::from_secs(secs)).await?),
    };
    let resumed = Arc::new(AtomicUsize::new(0));
    let redelivered = Arc::new(AtomicUsize::new(0));
    let away_got = Arc::new(AtomicUsize::new(0));
    let taken_got = Arc::new(AtomicUsize::new(0));
    let want = if away.is_some() { 3 } else { 1 };
    let started = Instant::now();
    let period = Duration::from_secs_f64(1.0 / f64::from(common.connect_rate.max(1)));
    let mut ticker = tokio::time::interval(period);
    let mut tasks = Vec::with_capacity(sessions.len());
    for (i, id) in sessions.into_iter().enumerate() {
        ticker.tick().await;
        let (dial, source) = (fallback.clone(), common.source(i));
        let (resumed, redelivered) = (resumed.clone(), redelivered.clone());
        let (away_got, taken_got) = (away_got.clone(), taken_got.clone());
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let (mut c, present) = dial.open_session(source, id).await?;
            let latency = t.elapsed();
            if present {
                resumed.fetch_add(1, Ordering::Relaxed);
            }
            let (mut got, deadline) = (0, Instant::now() + Duration::from_secs(10));
            while got < want {
                let Ok(Packet::Publish(p)) = c.recv(deadline.saturating_duration_since(Instant::now())).await else {
                    break;
                };
                let counter = match &p.payload[..] {
                    IN_FLIGHT => Some(&redelivered),
                    AWAY => Some(&away_got),
                    TAKEN => Some(&taken_got),
                    _ => None,
                };
                if let Some(counter) = counter {
                    counter.fetch_add(1, Ordering::Relaxed);
                    got += 1;
                }
                if let Some(id) = p.packet_id {
                    let _ = c.send(&Packet::PubAck { packet_id: id, code: 0 }).await;
                }
            }
            // End the session with the run.
            let _ = c.send(&Packet::end_session()).await;
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
    let away = away.map(|a| {
        let (away_got, taken_got) = (away_got.load(Ordering::Relaxed), taken_got.load(Ordering::Relaxed));
        serde_json::json!({
            "away_secs": args.away_secs,
            "taken_after_secs": a.taken_after.map(|d| (d.as_secs_f64() * 10.0).round() / 10.0),
            "while_away_published": args.n,
            "while_away_delivered": away_got,
            "while_away_lost": args.n.saturating_sub(away_got),
            "once_taken_published": a.once_taken,
            "once_taken_delivered": taken_got,
            "once_taken_lost": a.once_taken.saturating_sub(taken_got),
        })
    });
    Ok(serde_json::json!({
        "away": away,
        "scenario": "storm",
        "signal": args.signal,
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

/// What happened while the clients stayed away.
struct Away {
    /// How long after the kill the second edge had taken the sessions (`None`: not by the end).
    taken_after: Option<Duration>,
    /// Messages published once it had.
    once_taken: usize,
}

/// Publishes [`AWAY`] to every topic at once through the edge `dial` names, waits until that
/// edge takes the sessions (a probe publish on the first topic is answered 0: it has a
/// subscriber) and publishes [`TAKEN`] to every topic, then waits until `away` after `killed`.
async fn while_away(dial: &Dial, topics: &[String], killed: Instant, away: Duration) -> Result<Away, String> {
    let until = killed + away;
    let mut publisher = dial.open(None, format!("storm-away-{}", std::process::id())).await?;
    let publish = async |c: &mut sdk::mqtt::Client, topic: &str, payload: &[u8]| {
        c.publish(topic, payload, 1, false, Duration::from_secs(30)).await.map_err(|e| format!("{e:?}"))
    };
    for topic in topics {
        publish(&mut publisher, topic, AWAY).await?;
    }
    let mut taken_after = None;
    while Instant::now() < until {
        if publish(&mut publisher, &topics[0], PROBE).await? == Some(0) {
            taken_after = Some(killed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut once_taken = 0;
    if taken_after.is_some() {
        for topic in topics {
            publish(&mut publisher, topic, TAKEN).await?;
            once_taken += 1;
        }
    }
    tokio::time::sleep(until.saturating_duration_since(Instant::now())).await;
    Ok(Away { taken_after, once_taken })
}
