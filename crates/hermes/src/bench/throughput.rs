//! `bench throughput`: P publishers → S subscribers (subscriber j listens to publisher j mod P)
//! at QoS 0 or 1, optionally rate-limited; delivered msgs/s and end-to-end latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;

use sdk::mqtt::{Packet, Publish, SubscribeTopic};

use super::Common;
use super::clients::{Dial, open_many, spawn_progress};
use super::stats::{cpu_report, cpu_secs, latency_summary};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[arg(long, default_value_t = 10)]
    publishers: usize,
    #[arg(long, default_value_t = 10)]
    subscribers: usize,
    /// 0 or 1.
    #[arg(long, default_value_t = 0)]
    qos: u8,
    /// Total offered messages per second over all publishers; 0 = as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Payload bytes (at least 8: the send time travels in it).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// QoS 1 messages a publisher keeps unacknowledged.
    #[arg(long, default_value_t = 16)]
    window: usize,
}

pub async fn run(common: &Common, args: Args) -> Result<Value, String> {
    if args.qos > 1 {
        return Err("--qos must be 0 or 1".into());
    }
    if args.publishers == 0 || args.subscribers == 0 {
        return Err("--publishers and --subscribers must be at least 1".into());
    }
    let dial = Dial::from(common)?;
    let base = Instant::now();
    let prefix = format!("bench/tp/{}", std::process::id());
    let (subs, _, f1) = open_many(common, &dial, args.subscribers, "tp-sub").await;
    let (pubs, _, f2) = open_many(common, &dial, args.publishers, "tp-pub").await;
    if f1 + f2 > 0 {
        return Err(format!("{} clients could not connect", f1 + f2));
    }
    let received = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut sub_tasks = Vec::new();
    for (j, mut c) in subs.into_iter().enumerate() {
        let topic = format!("{prefix}/{}", j % args.publishers);
        c.subscribe(vec![SubscribeTopic::new(&topic, args.qos)], Duration::from_secs(30))
            .await
            .map_err(|e| format!("subscribe: {e:?}"))?;
        let received = received.clone();
        let stop = stop.clone();
        sub_tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                match c.recv(Duration::from_millis(500)).await {
                    Ok(Packet::Publish(p)) => {
                        if let Some(id) = p.packet_id
                            && c.send(&Packet::PubAck { packet_id: id, code: 0 }).await.is_err()
                        {
                            break;
                        }
                        if p.payload.len() >= 8 {
                            let mut ts = [0u8; 8];
                            ts.copy_from_slice(&p.payload[..8]);
                            let sent = Duration::from_nanos(u64::from_be_bytes(ts));
                            latencies.push(base.elapsed().saturating_sub(sent));
                        }
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(sdk::mqtt::RecvError::Timeout) if !stop.load(Ordering::Relaxed) => {}
                    Err(_) => break,
                }
            }
            latencies
        }));
    }
    let sent = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let per_publisher_rate = args.rate as f64 / args.publishers as f64;
    let progress = spawn_progress("delivered".into(), received.clone(), 0);
    let cpu_before = (cpu_secs(common.pid), cpu_secs(None));
    let started = Instant::now();
    let mut pub_tasks = Vec::new();
    for (i, mut c) in pubs.into_iter().enumerate() {
        let topic = format!("{prefix}/{i}");
        let sent = sent.clone();
        let qos = args.qos;
        let window = args.window.max(1);
        let size = args.payload.max(8);
        pub_tasks.push(tokio::spawn(async move {
            let mut ticker = (per_publisher_rate > 0.0)
                .then(|| tokio::time::interval(Duration::from_secs_f64(1.0 / per_publisher_rate)));
            let mut inflight = 0usize;
            while Instant::now() < deadline {
                if let Some(t) = ticker.as_mut() {
                    t.tick().await;
                }
                let mut payload = vec![0u8; size];
                payload[..8].copy_from_slice(&(base.elapsed().as_nanos() as u64).to_be_bytes());
                let packet_id = (qos > 0).then(|| c.next_packet_id());
                let p = Publish {
                    topic: topic.clone(),
                    payload: Bytes::from(payload),
                    qos,
                    packet_id,
                    ..Publish::default()
                };
                if c.send(&Packet::Publish(p)).await.is_err() {
                    return;
                }
                sent.fetch_add(1, Ordering::Relaxed);
                if qos > 0 {
                    inflight += 1;
                    while inflight >= window {
                        match c.recv(Duration::from_secs(10)).await {
                            Ok(Packet::PubAck { .. }) => inflight -= 1,
                            Ok(_) => {}
                            Err(_) => return,
                        }
                    }
                }
            }
            while inflight > 0 {
                match c.recv(Duration::from_secs(10)).await {
                    Ok(Packet::PubAck { .. }) => inflight -= 1,
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        }));
    }
    for t in pub_tasks {
        let _ = t.await;
    }
    let publish_time = started.elapsed();
    // Let in-flight deliveries land before counting.
    let expected_fanout = args.subscribers as f64 / args.publishers as f64;
    let target = (sent.load(Ordering::Relaxed) as f64 * expected_fanout) as usize;
    let drain_until = Instant::now() + Duration::from_secs(5);
    while received.load(Ordering::Relaxed) < target && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    progress.abort();
    let mut latencies = Vec::new();
    for t in sub_tasks {
        if let Ok(l) = t.await {
            latencies.extend(l);
        }
    }
    let delivered = received.load(Ordering::Relaxed);
    let mut report = serde_json::Map::new();
    report.insert("scenario".into(), "throughput".into());
    report.insert("publishers".into(), args.publishers.into());
    report.insert("subscribers".into(), args.subscribers.into());
    report.insert("qos".into(), args.qos.into());
    report.insert("offered_rate".into(), args.rate.into());
    report.insert("published".into(), sent.load(Ordering::Relaxed).into());
    report.insert("expected_deliveries".into(), target.into());
    report.insert("delivered".into(), delivered.into());
    report.insert(
        "publish_msgs_per_sec".into(),
        ((sent.load(Ordering::Relaxed) as f64 / publish_time.as_secs_f64()).round()).into(),
    );
    report.insert("delivered_msgs_per_sec".into(), ((delivered as f64 / elapsed.as_secs_f64()).round()).into());
    report.insert("latency".into(), latency_summary(latencies));
    cpu_report(&mut report, common.pid, cpu_before, delivered as u64);
    Ok(Value::Object(report))
}
