//! Housekeeping on a timer: session expiry and delayed wills every second, and the
//! `$SYS/broker/...` statistics (seed 004 §3.7; topic names as Mosquitto's) on their interval.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ntex_bytes::{ByteString, Bytes};

use broker::QoS;

use crate::hub::{Hub, Snapshot};
use crate::message::{Message, now_ms};

/// The `$SYS` topics and values for one snapshot.
pub fn sys_topics(s: &Snapshot, uptime: Duration) -> Vec<(&'static str, String)> {
    vec![
        ("$SYS/broker/version", format!("hermes {}", env!("CARGO_PKG_VERSION"))),
        ("$SYS/broker/uptime", format!("{} seconds", uptime.as_secs())),
        ("$SYS/broker/clients/connected", s.clients_connected.to_string()),
        ("$SYS/broker/clients/total", s.sessions.to_string()),
        ("$SYS/broker/messages/received", s.messages_received.to_string()),
        ("$SYS/broker/messages/sent", s.messages_sent.to_string()),
        ("$SYS/broker/messages/dropped", s.messages_dropped.to_string()),
        ("$SYS/broker/subscriptions/count", s.subscriptions.to_string()),
        ("$SYS/broker/retained messages/count", s.retained.to_string()),
    ]
}

/// Runs until the returned handle is aborted.
pub fn spawn_housekeeping(hub: Arc<Hub>, sys_interval: Duration) -> tokio::task::JoinHandle<()> {
    let started = Instant::now();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut last_sys: Option<Instant> = None;
        let mut last_touch = Instant::now();
        loop {
            tick.tick().await;
            let now = now_ms();
            hub.tick(now);
            hub.write_wills_again_if_lost(now);
            if last_touch.elapsed() >= crate::journal::TOUCH_INTERVAL {
                last_touch = Instant::now();
                hub.touch_live();
            }
            if sys_interval.is_zero() || last_sys.is_some_and(|t| t.elapsed() < sys_interval) {
                continue;
            }
            last_sys = Some(Instant::now());
            for (topic, value) in sys_topics(&hub.snapshot(), started.elapsed()) {
                let msg = Message::new(ByteString::from_static(topic), Bytes::from(value), QoS::AtMostOnce, true);
                hub.publish(Arc::new(msg), None, now, None);
            }
        }
    })
}
