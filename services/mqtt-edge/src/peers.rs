//! Where clients reach the other edges, for a stopping edge to tell its clients (MQTT 5 §4.11,
//! Server Reference): each edge with `mqtt.advertise` set announces it on the bus every
//! [`EVERY`], and takes it back when it stops; a stopping edge names, in the DISCONNECT (0x8B)
//! it sends each client, one edge heard from within [`ALIVE`], each in turn, so clients that
//! follow it spread its load over the others. Clients that do not reconnect where they
//! connected before (a load balancer, `hermes login --mqtt A,B,C`) as ever.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

use bus::Bus;

/// The subject of the announcements: `{node id}\n{address}` (an empty address takes it back).
pub const SUBJECT: &str = "hermes.edges";

/// How often an edge announces itself.
pub const EVERY: Duration = Duration::from_secs(5);

/// How long an edge counts as there after its last announcement.
pub const ALIVE: Duration = Duration::from_secs(15);

/// The other edges heard from, by node id, and where clients reach this one.
#[derive(Debug)]
pub struct Peers {
    me: String,
    /// Announced every [`EVERY`] once set (`mqtt.advertise`, or the TCP listener's address).
    address: Mutex<String>,
    /// Wakes [`run`] to announce a new address at once.
    changed: tokio::sync::Notify,
    heard: Mutex<BTreeMap<String, (String, Instant)>>,
    turn: AtomicUsize,
}

impl Peers {
    pub fn new(me: &str) -> Self {
        let (address, heard) = (Mutex::new(String::new()), Mutex::new(BTreeMap::new()));
        let changed = tokio::sync::Notify::new();
        Peers { me: me.to_owned(), address, changed, heard, turn: AtomicUsize::new(0) }
    }

    /// Where clients reach this edge, from now on announced; empty: nowhere (stopping).
    pub fn set_address(&self, address: &str) {
        *self.address.lock().unwrap_or_else(|e| e.into_inner()) = address.to_owned();
        self.changed.notify_one();
    }

    /// This edge's announcement now: where clients reach it (empty: nowhere).
    pub fn announcement(&self) -> Bytes {
        let address = self.address.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Bytes::from(format!("{}\n{address}", self.me))
    }

    /// An announcement came (its payload); ignored if malformed or this edge's own. Returns
    /// whether it came from an edge not heard from before (or at another address): that one
    /// may not have heard this edge yet.
    pub fn heard(&self, payload: &[u8], at: Instant) -> bool {
        let Some((node, address)) = std::str::from_utf8(payload).ok().and_then(|s| s.split_once('\n')) else {
            return false;
        };
        if node == self.me || node.is_empty() {
            return false;
        }
        let mut heard = self.heard.lock().unwrap_or_else(|e| e.into_inner());
        if address.is_empty() {
            heard.remove(node);
            return false;
        }
        let before = heard.insert(node.to_owned(), (address.to_owned(), at));
        before.is_none_or(|(was, _)| was != address)
    }

    /// The next edge in turn heard from within [`ALIVE`] of `now`: where a client may go.
    pub fn next(&self, now: Instant) -> Option<String> {
        let heard = self.heard.lock().unwrap_or_else(|e| e.into_inner());
        let alive: Vec<&String> =
            heard.values().filter(|(_, at)| now.saturating_duration_since(*at) < ALIVE).map(|(a, _)| a).collect();
        if alive.is_empty() {
            return None;
        }
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        Some(alive[turn % alive.len()].clone())
    }
}

/// Hears the other edges' announcements into `peers`, and announces this edge's address
/// (once set) when it is set and every [`EVERY`], until the bus is gone.
pub async fn run(bus: Arc<dyn Bus>, peers: Arc<Peers>) {
    let mut heard = match bus.subscribe(SUBJECT).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot hear where the other edges are");
            return;
        }
    };
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = peers.changed.notified() => {}
            msg = heard.next() => match msg {
                // A new edge hears this one at once, not at the next round.
                Some(m) if peers.heard(&m.payload, Instant::now()) => {}
                Some(_) => continue,
                None => return,
            },
        }
        // Nowhere to announce yet, or any more (a stopping edge says so itself).
        let me = peers.announcement();
        if me.ends_with(b"\n") {
            continue;
        }
        if let Err(e) = bus.publish(SUBJECT, me).await {
            tracing::debug!(error = %e, "cannot announce this edge");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopping_edge_names_the_live_others_in_turn() {
        let peers = Peers::new("a");
        let t = Instant::now();
        assert_eq!(peers.next(t), None, "nobody heard from");
        assert!(!peers.heard(b"a\n127.0.0.1:1", t));
        assert_eq!(peers.next(t), None, "not itself");
        assert!(peers.heard(b"b\n127.0.0.1:2", t), "new");
        assert!(!peers.heard(b"b\n127.0.0.1:2", t), "known");
        assert!(peers.heard(b"c\n127.0.0.1:3", t));
        for bad in [&b"no newline"[..], b"\n127.0.0.1:4", b"\xff\n1"] {
            assert!(!peers.heard(bad, t));
        }
        let named: Vec<Option<String>> = (0..4).map(|_| peers.next(t)).collect();
        let (b, c) = (Some("127.0.0.1:2".to_owned()), Some("127.0.0.1:3".to_owned()));
        assert_eq!(named, [b.clone(), c.clone(), b.clone(), c]);
        peers.heard(b"c\n", t);
        assert_eq!(peers.next(t), b, "c took it back");
        assert_eq!(peers.next(t + ALIVE), None, "b not heard from for too long");
        assert_eq!(&peers.announcement()[..], b"a\n", "nowhere yet");
        peers.set_address("10.0.0.1:1883");
        assert_eq!(&peers.announcement()[..], b"a\n10.0.0.1:1883");
    }
}
