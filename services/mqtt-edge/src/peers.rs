//! Where clients reach the other edges, for a stopping edge to tell its clients (MQTT 5 §4.11,
//! Server Reference): each edge announces it on the bus, one address for each kind of listener
//! (`mqtt.advertise`, `mqtt.advertise_tls`, `mqtt.advertise_ws`, or else that listener's
//! address unless it listens on every address) when it is set and every [`EVERY`], and takes
//! it back when it stops; a stopping edge names, in the DISCONNECT (0x8B) it sends each client,
//! one edge heard from within [`ALIVE`] with a listener of the kind the client came to, each in
//! turn, so clients that follow it spread its load over the others (and one on TLS is never
//! sent to a plain listener, where its token would go in the clear). Clients that do not
//! reconnect where they connected before (a load balancer, `hermes login --mqtt A,B,C`) as
//! ever.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

use bus::Bus;

use crate::connect::Listener;

/// The subject of the announcements: `{node id}\n{TCP}\n{TLS}\n{WebSocket}`, where clients
/// reach the edge on each kind of listener (empty: none; all empty takes the edge back). An
/// announcement of one address only is the TCP one (as edges before the others said).
pub const SUBJECT: &str = "hermes.edges";

/// How often an edge announces itself.
pub const EVERY: Duration = Duration::from_secs(5);

/// How long an edge counts as there after its last announcement.
pub const ALIVE: Duration = Duration::from_secs(15);

/// How long a stopping edge tries to take its announcement back.
const WITHDRAW_WAIT: Duration = Duration::from_secs(1);

/// The longest address taken (a DNS name and a port), and the most edges remembered: what
/// comes on the bus is another edge's, but a bad one must not grow without bound.
const MAX_ADDRESS: usize = 255;
const MAX_PEERS: usize = 1024;

/// Where clients reach an edge on each kind of listener, by [`Listener::index`] (empty: none).
pub type Addresses = [String; Listener::KINDS];

/// The other edges heard from, by node id, and where clients reach this one.
#[derive(Debug)]
pub struct Peers {
    me: String,
    /// Announced every [`EVERY`] once set (see `lib::advertised`).
    addresses: Mutex<Addresses>,
    /// Wakes [`run`] to announce a new address at once.
    changed: tokio::sync::Notify,
    heard: Mutex<BTreeMap<String, (Addresses, Instant)>>,
    turn: AtomicUsize,
    /// Held while this edge's announcement or withdrawal goes out: none goes out after the
    /// withdrawal.
    speaking: tokio::sync::Mutex<()>,
}

impl Peers {
    pub fn new(me: &str) -> Self {
        let (addresses, heard) = (Mutex::new(Addresses::default()), Mutex::new(BTreeMap::new()));
        let changed = tokio::sync::Notify::new();
        let speaking = tokio::sync::Mutex::new(());
        Peers { me: me.to_owned(), addresses, changed, heard, turn: AtomicUsize::new(0), speaking }
    }

    /// Where clients reach this edge, from now on announced; all empty: nowhere (stopping).
    pub fn set_addresses(&self, addresses: Addresses) {
        *self.addresses.lock().unwrap_or_else(|e| e.into_inner()) = addresses;
        self.changed.notify_one();
    }

    /// This edge's announcement now: where clients reach it; `None` while nowhere.
    fn announcement(&self) -> Option<Bytes> {
        let addresses = self.addresses.lock().unwrap_or_else(|e| e.into_inner()).clone();
        addresses.iter().any(|a| !a.is_empty()).then(|| Bytes::from(format!("{}\n{}", self.me, addresses.join("\n"))))
    }

    /// This edge stops: it announces nothing from now on, and this takes back what it did.
    fn withdrawal(&self) -> Bytes {
        self.set_addresses(Addresses::default());
        Bytes::from(format!("{}\n", self.me))
    }

    /// Announces where clients reach this edge, if anywhere.
    async fn announce(&self, bus: &dyn Bus) {
        let _turn = self.speaking.lock().await;
        // Nowhere to announce yet, or any more (a stopping edge says so itself).
        let Some(me) = self.announcement() else { return };
        if let Err(e) = bus.publish(SUBJECT, me).await {
            tracing::debug!(error = %e, "cannot announce this edge");
        }
    }

    /// This edge stops: tells the others (within [`WITHDRAW_WAIT`]) not to name it any more;
    /// it announces nothing after.
    pub async fn withdraw(&self, bus: &dyn Bus) {
        let told = tokio::time::timeout(WITHDRAW_WAIT, async {
            let _turn = self.speaking.lock().await;
            bus.publish(SUBJECT, self.withdrawal()).await
        });
        if !matches!(told.await, Ok(Ok(()))) {
            self.set_addresses(Addresses::default());
            tracing::debug!("cannot tell the other edges this one stops");
        }
    }

    /// An announcement came (its payload); ignored if malformed or this edge's own. Returns
    /// whether it came from an edge not heard from before (or at other addresses): that one
    /// may not have heard this edge yet.
    pub fn heard(&self, payload: &[u8], at: Instant) -> bool {
        let Some((node, addresses)) = std::str::from_utf8(payload).ok().and_then(parse) else {
            return false;
        };
        if node == self.me {
            return false;
        }
        let mut heard = self.heard.lock().unwrap_or_else(|e| e.into_inner());
        heard.retain(|_, (_, last)| at.saturating_duration_since(*last) < ALIVE);
        if addresses.iter().all(String::is_empty) {
            heard.remove(node);
            return false;
        }
        if heard.len() >= MAX_PEERS && !heard.contains_key(node) {
            return false;
        }
        let new = heard.get(node).is_none_or(|(was, _)| *was != addresses);
        heard.insert(node.to_owned(), (addresses, at));
        new
    }

    /// The next edge in turn heard from within [`ALIVE`] of `now` with a listener of the kind
    /// the client came to (`on`): where it may go. A loopback address only for a client on
    /// loopback itself (elsewhere it would name the client's own machine).
    pub fn next(&self, now: Instant, on: Listener, for_loopback: bool) -> Option<String> {
        let heard = self.heard.lock().unwrap_or_else(|e| e.into_inner());
        let reachable = |a: &String| !a.is_empty() && (for_loopback || !is_loopback(a));
        let alive: Vec<&String> = heard
            .values()
            .filter(|(_, at)| now.saturating_duration_since(*at) < ALIVE)
            .map(|(a, _)| &a[on.index()])
            .filter(|a| reachable(a))
            .collect();
        if alive.is_empty() {
            return None;
        }
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        Some(alive[turn % alive.len()].clone())
    }
}

/// An announcement's node id and addresses; `None` if malformed. Lines past the last kind this
/// edge knows are left for edges that know more.
fn parse(announcement: &str) -> Option<(&str, Addresses)> {
    let (node, rest) = announcement.split_once('\n').filter(|(n, _)| !n.is_empty() && n.len() <= MAX_ADDRESS)?;
    let mut lines = rest.split('\n');
    let mut addresses = Addresses::default();
    for address in &mut addresses {
        *address = lines.next().unwrap_or_default().to_owned();
    }
    addresses.iter().all(|a| usable(a)).then_some((node, addresses))
}

/// Whether `address` may be announced and named to clients: at most [`MAX_ADDRESS`] bytes,
/// without spaces or control characters (empty: nowhere).
pub fn usable(address: &str) -> bool {
    address.len() <= MAX_ADDRESS && !address.contains(|c: char| c.is_control() || c == ' ')
}

/// Whether `address` (`host:port`, `[v6]:port`, or a URL such as `ws://host:port/path`) names
/// a loopback address (or `localhost`).
fn is_loopback(address: &str) -> bool {
    let authority = address.split_once("://").map_or(address, |(_, rest)| rest);
    let authority = authority.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
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
        peers.announce(&*bus).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where clients reach an edge on TCP only.
    fn tcp(address: &str) -> Addresses {
        [address.to_owned(), String::new(), String::new()]
    }

    #[test]
    fn a_stopping_edge_names_the_live_others_in_turn() {
        let peers = Peers::new("a");
        let t = Instant::now();
        let next = |at, for_loopback| peers.next(at, Listener::Tcp, for_loopback);
        assert_eq!(next(t, true), None, "nobody heard from");
        assert!(!peers.heard(b"a\n127.0.0.1:1", t));
        assert_eq!(next(t, true), None, "not itself");
        assert!(peers.heard(b"b\n127.0.0.1:2", t), "new");
        assert!(!peers.heard(b"b\n127.0.0.1:2", t), "known");
        assert!(peers.heard(b"c\n127.0.0.1:3", t));
        for bad in [&b"no newline"[..], b"\n127.0.0.1:4", b"\xff\n1"] {
            assert!(!peers.heard(bad, t));
        }
        let named: Vec<Option<String>> = (0..4).map(|_| next(t, true)).collect();
        let (b, c) = (Some("127.0.0.1:2".to_owned()), Some("127.0.0.1:3".to_owned()));
        assert_eq!(named, [b.clone(), c.clone(), b.clone(), c]);
        peers.heard(b"c\n", t);
        assert_eq!(next(t, true), b, "c took it back");
        assert_eq!(next(t + ALIVE, true), None, "b not heard from for too long");
        assert_eq!(peers.announcement(), None, "nowhere yet");
        let later = t + ALIVE;
        assert!(peers.heard(b"d\n10.0.0.4:1883", later), "b and c forgotten meanwhile");
        assert!(peers.heard(b"e\n[::1]:1883", later));
        let named: Vec<Option<String>> = (0..2).map(|_| next(later, false)).collect();
        assert_eq!(
            named,
            [Some("10.0.0.4:1883".to_owned()), Some("10.0.0.4:1883".to_owned())],
            "no loopback for a remote client"
        );
        let long = format!("f\n{}:1", "h".repeat(MAX_ADDRESS));
        assert!(!peers.heard(long.as_bytes(), later), "too long");
        assert!(!peers.heard(b"g\nbad host:1", later), "not an address");
        for n in 0..MAX_PEERS + 10 {
            peers.heard(format!("n{n}\n10.1.0.1:{n}").as_bytes(), later);
        }
        assert_eq!(peers.heard.lock().expect("lock").len(), MAX_PEERS, "bounded");
        peers.set_addresses(tcp("10.0.0.1:1883"));
        assert_eq!(peers.announcement(), Some(Bytes::from_static(b"a\n10.0.0.1:1883\n\n")));
        assert_eq!(&peers.withdrawal()[..], b"a\n");
        assert_eq!(peers.announcement(), None, "nothing once withdrawn");
    }

    /// A client is named an edge it can reach the way it came: over TLS only a TLS listener
    /// (named a plain one, it could send its token in the clear), over WebSocket a WebSocket
    /// one; an edge without such a listener is not named to it.
    #[test]
    fn a_client_is_named_another_edges_listener_of_the_kind_it_came_to() {
        let a = Peers::new("a");
        a.set_addresses(["10.0.0.1:1883".into(), "a.example.com:8883".into(), "wss://a.example.com/mqtt".into()]);
        let said = a.announcement().expect("announced");
        assert_eq!(&said[..], b"a\n10.0.0.1:1883\na.example.com:8883\nwss://a.example.com/mqtt");
        let peers = Peers::new("z");
        let t = Instant::now();
        assert!(peers.heard(&said, t));
        assert!(peers.heard(b"b\n10.0.0.2:1883", t), "TCP only (as edges before TLS and WebSocket were announced)");
        assert!(peers.heard(b"c\n\nc.example.com:8883\n\nsome kind to come", t), "TLS only, and a kind unknown here");
        let named = |on| (0..6).filter_map(|_| peers.next(t, on, false)).collect::<std::collections::BTreeSet<_>>();
        assert_eq!(named(Listener::Tcp), ["10.0.0.1:1883".to_owned(), "10.0.0.2:1883".to_owned()].into());
        assert_eq!(named(Listener::Tls), ["a.example.com:8883".to_owned(), "c.example.com:8883".to_owned()].into());
        assert_eq!(named(Listener::WebSocket), ["wss://a.example.com/mqtt".to_owned()].into());
        assert!(!peers.heard(b"a\n10.0.0.1:1883\na.example.com:8883\nwss://a.example.com/mqtt", t), "known");
        assert!(peers.heard(b"a\n10.0.0.1:1883\n\nwss://a.example.com/mqtt", t), "changed: its TLS listener gone");
        assert_eq!(named(Listener::Tls), ["c.example.com:8883".to_owned()].into());
        assert!(!peers.heard(b"d\n10.0.0.4:1883\nbad host:8883", t), "one unusable address spoils it");
        assert!(!peers.heard(b"c\n\n\n", t), "all empty: c took it back");
        assert_eq!(named(Listener::Tls), Default::default());
    }

    /// Whatever the form of an address, a loopback one is named only to a client on loopback.
    #[test]
    fn a_loopback_address_in_any_form_is_named_only_to_a_client_on_loopback() {
        for address in [
            "127.0.0.1:1883",
            "[::1]:1883",
            "[::1]",
            "localhost:1883",
            "ws://127.0.0.1:8083/mqtt",
            "wss://localhost/mqtt",
        ] {
            assert!(is_loopback(address), "{address}");
            let peers = Peers::new("z");
            let t = Instant::now();
            assert!(peers.heard(format!("b\n\n\n{address}").as_bytes(), t));
            assert_eq!(peers.next(t, Listener::WebSocket, false), None, "{address} to a remote client");
            assert_eq!(peers.next(t, Listener::WebSocket, true).as_deref(), Some(address), "{address} on loopback");
        }
        for address in ["10.0.0.1:1883", "[2001:db8::1]:1883", "edge.example.com", "wss://mqtt.example.com/mqtt"] {
            assert!(!is_loopback(address), "{address}");
        }
    }

    /// A bus whose publishes of announcements (not of edge `a`'s withdrawal) wait for a permit.
    #[derive(Debug)]
    struct Gated {
        inner: bus::memory::MemoryBus,
        open: tokio::sync::Semaphore,
        /// Announcements waiting for a permit.
        waiting: AtomicUsize,
    }

    impl Bus for Gated {
        fn publish<'a>(&'a self, subject: &'a str, payload: Bytes) -> bus::BoxFuture<'a, Result<(), bus::BusError>> {
            Box::pin(async move {
                if &payload[..] != b"a\n" {
                    self.waiting.fetch_add(1, Ordering::Relaxed);
                    self.open.acquire().await.map_err(|e| bus::BusError::Transport(e.to_string()))?.forget();
                }
                self.inner.publish(subject, payload).await
            })
        }
        fn subscribe<'a>(&'a self, subject: &'a str) -> bus::BoxFuture<'a, Result<bus::Subscription, bus::BusError>> {
            self.inner.subscribe(subject)
        }
        fn subscribe_queue<'a>(
            &'a self,
            subject: &'a str,
            queue: &'a str,
        ) -> bus::BoxFuture<'a, Result<bus::Subscription, bus::BusError>> {
            self.inner.subscribe_queue(subject, queue)
        }
        fn publish_to_present<'a>(
            &'a self,
            subject: &'a str,
            payload: Bytes,
        ) -> bus::BoxFuture<'a, Result<(), bus::BusError>> {
            self.inner.publish_to_present(subject, payload)
        }
    }

    /// An announcement on its way to the bus when the edge withdraws goes out before the
    /// withdrawal, never after it (the others would name the edge for another 15 s).
    #[tokio::test]
    async fn an_announcement_on_its_way_when_the_edge_withdraws_goes_out_before_the_withdrawal() {
        let (inner, open) = (bus::memory::MemoryBus::default(), tokio::sync::Semaphore::new(0));
        let gated = Arc::new(Gated { inner, open, waiting: AtomicUsize::new(0) });
        let mut heard = gated.subscribe(SUBJECT).await.expect("subscribe");
        let peers = Arc::new(Peers::new("a"));
        peers.set_addresses(tcp("10.0.0.1:1883"));
        let announcing = tokio::spawn({
            let (peers, gated) = (peers.clone(), gated.clone());
            async move { peers.announce(&*gated).await }
        });
        // The announcement is on its way: read, waiting for the bus.
        while gated.waiting.load(Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let withdrawing = tokio::spawn({
            let (peers, gated) = (peers.clone(), gated.clone());
            async move { peers.withdraw(&*gated).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        gated.open.add_permits(1);
        announcing.await.expect("announced");
        withdrawing.await.expect("withdrew");
        let mut said = Vec::new();
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), heard.next()).await {
            said.push(m.payload);
        }
        assert_eq!(said, [Bytes::from_static(b"a\n10.0.0.1:1883\n\n"), Bytes::from_static(b"a\n")]);
        peers.announce(&*gated).await;
        let after = tokio::time::timeout(Duration::from_millis(200), heard.next()).await;
        assert!(after.is_err(), "nothing after the withdrawal: {after:?}");
    }
}
