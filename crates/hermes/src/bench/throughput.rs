//! `bench throughput`: P publishers → S subscribers (subscriber j listens to publisher j mod P)
//! at QoS 0 or 1, optionally rate-limited; delivered msgs/s, end-to-end latency, and what
//! arrived lost, reordered or twice, by a sequence number each publisher stamps in its payloads.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;

use sdk::mqtt::{Client, Packet, Publish, SubscribeTopic};

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
    /// Payload bytes (at least 16: the send time and a sequence number travel in it).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// QoS 1 messages a publisher keeps unacknowledged.
    #[arg(long, default_value_t = 16)]
    window: usize,
    /// Subscribers connect to this port (another edge of the same cluster) instead of
    /// `--port`: every message crosses between edges.
    #[arg(long)]
    subscriber_port: Option<u16>,
    /// Subscribers hold persistent sessions: the broker stores their in-flight messages (a
    /// session journal) before acknowledging the publishers. With --mqtt-version 5 the sessions
    /// end with the run (DISCONNECT with session expiry 0); v3 ones stay parked until they
    /// expire, and later runs' messages do not reach them (each run has its own topics).
    #[arg(long)]
    persistent_subscribers: bool,
    /// Publish on inbox-shaped topics (`bench<pid>/im/msg/<n>`), which Hermes keeps as durable
    /// streams by default (`streams.rules`): every message is appended to its stream before it
    /// is routed. To other brokers they are plain topics.
    #[arg(long)]
    stream_topics: bool,
    /// Subscribers share their publisher's topic (`$share/bench/<topic>`): each message goes
    /// to one of them. With --subscriber-port, the first half connect to --port and the rest
    /// there (a group with members on two edges). Lost and duplicated count over all members
    /// of a topic; reordered within each member.
    #[arg(long)]
    shared: bool,
}

pub async fn run(common: &Common, args: Args) -> Result<Value, String> {
    if args.qos > 1 {
        return Err("--qos must be 0 or 1".into());
    }
    if args.publishers == 0 || args.subscribers == 0 {
        return Err("--publishers and --subscribers must be at least 1".into());
    }
    if args.shared && args.subscribers < args.publishers {
        return Err("--shared needs at least as many --subscribers as --publishers".into());
    }
    let dial = Dial::from(common)?;
    let mut sub_dial = dial.clone();
    sub_dial.persistent = args.persistent_subscribers;
    if let Some(port) = args.subscriber_port {
        sub_dial.broker.set_port(port);
    }
    let base = Instant::now();
    let prefix = if args.stream_topics {
        format!("bench{}/im/msg", std::process::id())
    } else {
        format!("bench/tp/{}", std::process::id())
    };
    let (mut subs, _, mut f1) = match args.shared && args.subscriber_port.is_some() {
        // Members of each group on both edges: the first half on the publishers' edge.
        true => {
            let mut near = dial.clone();
            near.persistent = args.persistent_subscribers;
            open_many(common, &near, args.subscribers.div_ceil(2), "tp-sub").await
        }
        false => (Vec::new(), Vec::new(), 0),
    };
    let (far, _, f) = open_many(common, &sub_dial, args.subscribers - subs.len(), "tp-sub-far").await;
    subs.extend(far);
    f1 += f;
    let (pubs, _, f2) = open_many(common, &dial, args.publishers, "tp-pub").await;
    if f1 + f2 > 0 {
        return Err(format!("{} clients could not connect", f1 + f2));
    }
    let received = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut sub_tasks = Vec::new();
    let publishers = args.publishers;
    for (j, mut c) in subs.into_iter().enumerate() {
        let topic = format!("{prefix}/{}", j % args.publishers);
        let topic = if args.shared { format!("$share/bench/{topic}") } else { topic };
        c.subscribe(vec![SubscribeTopic::new(&topic, args.qos)], Duration::from_secs(30))
            .await
            .map_err(|e| format!("subscribe: {e:?}"))?;
        let received = received.clone();
        let stop = stop.clone();
        let persistent = args.persistent_subscribers;
        let shared = args.shared;
        sub_tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut order = Order::default();
            let mut seqs = Vec::new();
            loop {
                match c.recv(Duration::from_millis(500)).await {
                    Ok(Packet::Publish(p)) => {
                        if let Some(id) = p.packet_id
                            && c.send(&Packet::PubAck { packet_id: id, code: 0 }).await.is_err()
                        {
                            break;
                        }
                        if let Some((sent, seq)) = stamp(&p.payload) {
                            latencies.push(base.elapsed().saturating_sub(sent));
                            order.saw(seq);
                            if shared {
                                seqs.push(seq);
                            }
                        }
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(sdk::mqtt::RecvError::Timeout) if !stop.load(Ordering::Relaxed) => {}
                    Err(_) => break,
                }
            }
            if persistent {
                let _ = c.send(&Packet::end_session()).await;
            }
            (j % publishers, latencies, order, seqs)
        }));
    }
    if args.subscriber_port.is_some() {
        // The subscribers' edge tells the others of its interest shortly after the SUBACKs.
        tokio::time::sleep(Duration::from_secs(1)).await;
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
        // A client keeps no more unacknowledged than the broker's Receive Maximum allows.
        let window = args.window.min(usize::from(c.send_quota())).max(1);
        let size = args.payload.max(16);
        pub_tasks.push(tokio::spawn(async move {
            let mut ticker = (per_publisher_rate > 0.0)
                .then(|| tokio::time::interval(Duration::from_secs_f64(1.0 / per_publisher_rate)));
            let mut inflight = 0usize;
            let mut seq = 0u64;
            while Instant::now() < deadline {
                if let Some(t) = ticker.as_mut() {
                    t.tick().await;
                }
                let mut payload = vec![0u8; size];
                payload[..8].copy_from_slice(&(base.elapsed().as_nanos() as u64).to_be_bytes());
                payload[8..16].copy_from_slice(&seq.to_be_bytes());
                let packet_id = (qos > 0).then(|| c.next_packet_id());
                let p = Publish {
                    topic: topic.clone(),
                    payload: Bytes::from(payload),
                    qos,
                    packet_id,
                    ..Publish::default()
                };
                if c.send(&Packet::Publish(p)).await.is_err() {
                    return Published { sent: seq, acked: 0, cut_off: true };
                }
                seq += 1;
                sent.fetch_add(1, Ordering::Relaxed);
                if qos > 0 {
                    inflight += 1;
                    while inflight >= window {
                        if !puback(&mut c, i).await {
                            return Published { sent: seq, acked: seq - inflight as u64, cut_off: true };
                        }
                        inflight -= 1;
                    }
                }
            }
            while inflight > 0 && puback(&mut c, i).await {
                inflight -= 1;
            }
            Published { sent: seq, acked: seq - inflight as u64, cut_off: inflight > 0 }
        }));
    }
    let mut published = Vec::new();
    for t in pub_tasks {
        published.push(t.await.unwrap_or(Published { sent: 0, acked: 0, cut_off: true }));
    }
    let publish_time = started.elapsed();
    // Let in-flight deliveries land before counting.
    let expected_fanout = if args.shared { 1.0 } else { args.subscribers as f64 / args.publishers as f64 };
    let target = (sent.load(Ordering::Relaxed) as f64 * expected_fanout) as usize;
    let drain_until = Instant::now() + Duration::from_secs(5);
    while received.load(Ordering::Relaxed) < target && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    progress.abort();
    let mut latencies = Vec::new();
    let (mut lost, mut reordered, mut duplicated) = (0u64, 0u64, 0u64);
    // QoS 1 promises what was acknowledged; QoS 0 only what was sent and not dropped.
    let promised = |p: Published| if args.qos > 0 { p.acked } else { p.sent };
    // Shared: what all members of each publisher's group got.
    let mut groups: Vec<Group> = (0..args.publishers).map(|_| Group::default()).collect();
    for t in sub_tasks {
        if let Ok((publisher, l, order, seqs)) = t.await {
            latencies.extend(l);
            reordered += order.reordered;
            if args.shared {
                groups[publisher].saw(seqs);
            } else {
                lost += order.lost(promised(published[publisher]));
                duplicated += order.duplicated;
            }
        }
    }
    if args.shared {
        for (group, p) in groups.iter().zip(&published) {
            lost += group.lost(promised(*p));
            duplicated += group.duplicated;
        }
    }
    let cut_off = published.iter().filter(|p| p.cut_off).count();
    if cut_off > 0 {
        // Lost counts what was acknowledged, but a rate over a run whose publishers stopped
        // early measures nothing.
        return Err(format!(
            "{cut_off} of {} publishers stopped early (disconnected or no answer for 10 s): {lost} lost",
            args.publishers
        ));
    }
    let delivered = received.load(Ordering::Relaxed);
    let mut report = serde_json::Map::new();
    report.insert("scenario".into(), "throughput".into());
    report.insert("publishers".into(), args.publishers.into());
    report.insert("subscribers".into(), args.subscribers.into());
    report.insert("qos".into(), args.qos.into());
    report.insert("offered_rate".into(), args.rate.into());
    report.insert("cross_edge".into(), args.subscriber_port.is_some().into());
    report.insert("shared".into(), args.shared.into());
    report.insert("published".into(), sent.load(Ordering::Relaxed).into());
    report.insert("expected_deliveries".into(), target.into());
    report.insert("delivered".into(), delivered.into());
    // QoS 1: acknowledged but never delivered (must be 0). QoS 0: sent and never delivered (the
    // protocol allows dropping under overload).
    report.insert("lost".into(), lost.into());
    report.insert("reordered".into(), reordered.into());
    report.insert("duplicated".into(), duplicated.into());
    report.insert(
        "publish_msgs_per_sec".into(),
        ((sent.load(Ordering::Relaxed) as f64 / publish_time.as_secs_f64()).round()).into(),
    );
    report.insert("delivered_msgs_per_sec".into(), ((delivered as f64 / elapsed.as_secs_f64()).round()).into());
    report.insert("latency".into(), latency_summary(latencies));
    cpu_report(&mut report, common.pid, cpu_before, delivered as u64);
    Ok(Value::Object(report))
}

/// Waits for publisher `i`'s next PUBACK: false if the broker disconnects it, closes, or stays
/// silent for 10 s.
async fn puback(c: &mut Client, i: usize) -> bool {
    loop {
        match c.recv(Duration::from_secs(10)).await {
            Ok(Packet::PubAck { .. }) => return true,
            Ok(Packet::Disconnect { code, reason_string, .. }) => {
                eprintln!("publisher {i}: the broker disconnected it: {code:#04x} {reason_string:?}");
                return false;
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("publisher {i}: no PUBACK: {e:?}");
                return false;
            }
        }
    }
}

/// What the members of one publisher's shared group got between them.
#[derive(Debug, Default)]
struct Group {
    seen: std::collections::HashSet<u64>,
    duplicated: u64,
}

impl Group {
    fn saw(&mut self, seqs: Vec<u64>) {
        for seq in seqs {
            if !self.seen.insert(seq) {
                self.duplicated += 1;
            }
        }
    }

    /// Numbers below `promised` no member got.
    fn lost(&self, promised: u64) -> u64 {
        (0..promised).filter(|seq| !self.seen.contains(seq)).count() as u64
    }
}

/// What one publisher sent, and of it what the broker acknowledged (QoS 1).
#[derive(Debug, Clone, Copy)]
struct Published {
    sent: u64,
    acked: u64,
    /// Stopped before the run's end: the broker disconnected it, or did not answer.
    cut_off: bool,
}

/// The send time and sequence number a publisher stamped in a payload.
fn stamp(payload: &[u8]) -> Option<(Duration, u64)> {
    let ts = u64::from_be_bytes(payload.get(..8)?.try_into().ok()?);
    let seq = u64::from_be_bytes(payload.get(8..16)?.try_into().ok()?);
    Some((Duration::from_nanos(ts), seq))
}

/// One subscriber's view of its publisher's sequence: what arrived out of order or twice, and
/// which numbers never came.
#[derive(Debug, Default)]
struct Order {
    /// The next number expected.
    next: u64,
    /// Numbers skipped over that may still arrive late.
    missing: std::collections::BTreeSet<u64>,
    reordered: u64,
    duplicated: u64,
}

impl Order {
    fn saw(&mut self, seq: u64) {
        if seq == self.next {
            self.next += 1;
        } else if seq > self.next {
            self.missing.extend(self.next..seq);
            self.next = seq + 1;
        } else if self.missing.remove(&seq) {
            self.reordered += 1;
        } else {
            self.duplicated += 1;
        }
    }

    /// Numbers below `promised` that never arrived.
    fn lost(&self, promised: u64) -> u64 {
        let skipped = self.missing.range(..promised).count() as u64;
        skipped + promised.saturating_sub(self.next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_counts_gaps_late_arrivals_and_repeats() {
        let mut o = Order::default();
        for s in [0, 1, 3, 2, 2, 5, 6] {
            o.saw(s);
        }
        assert_eq!((o.reordered, o.duplicated), (1, 1));
        assert_eq!(o.lost(7), 1, "4 never came");
        assert_eq!(o.lost(9), 3, "nor 7 and 8, which were promised");
        assert_eq!(Order::default().lost(0), 0);
        assert_eq!(stamp(&[0; 16]), Some((Duration::ZERO, 0)));
        assert_eq!(stamp(&[0; 15]), None);
    }

    #[test]
    fn a_group_counts_what_no_member_got_and_what_two_did() {
        let mut g = Group::default();
        g.saw(vec![0, 2, 4]);
        g.saw(vec![1, 4, 5]);
        assert_eq!(g.duplicated, 1, "4 went to both");
        assert_eq!(g.lost(6), 1, "3 went to none");
        assert_eq!(g.lost(8), 3, "nor 6 and 7, which were promised");
        assert_eq!(Group::default().lost(0), 0);
    }
}
