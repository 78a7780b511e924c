//! Opening many bench clients: paced, spread over source addresses, with set-up latency.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sdk::mqtt::{Client, Connect, Packet, Version};

use super::Common;

/// How one bench client connects.
#[derive(Debug, Clone)]
pub struct Dial {
    pub broker: SocketAddr,
    pub version: Version,
    pub username: Option<String>,
    pub password: Option<String>,
    pub keep_alive: u16,
    /// Persistent sessions (v3 clean session 0, v5 session expiry of an hour): what the broker
    /// keeps for them is what it must store before acknowledging a publisher.
    pub persistent: bool,
}

impl Dial {
    pub fn from(common: &Common) -> Result<Dial, String> {
        Ok(Dial {
            broker: common.broker(),
            version: common.version()?,
            username: common.username.clone(),
            password: common.password.clone(),
            keep_alive: 600,
            persistent: false,
        })
    }

    /// TCP connect from `source` (port chosen by the kernel), CONNECT, wait for CONNACK.
    pub async fn open(&self, source: Option<IpAddr>, client_id: String) -> Result<Client, String> {
        self.open_session(source, client_id).await.map(|(c, _)| c)
    }

    /// Like [`Dial::open`], also saying whether the broker resumed a session.
    pub async fn open_session(&self, source: Option<IpAddr>, client_id: String) -> Result<(Client, bool), String> {
        let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
        if let Some(src) = source {
            socket.bind(SocketAddr::new(src, 0)).map_err(|e| format!("bind {src}: {e}"))?;
        }
        let stream = socket.connect(self.broker).await.map_err(|e| format!("connect: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        // Closing with RST keeps thousands of sockets out of TIME_WAIT between runs.
        stream.set_zero_linger().map_err(|e| e.to_string())?;
        let mut client = Client::from_stream(stream, self.version);
        let connect = Connect {
            client_id,
            clean_start: !self.persistent,
            session_expiry: self.persistent.then_some(3600),
            keep_alive: self.keep_alive,
            username: self.username.clone(),
            password: self.password.clone().map(String::into_bytes),
            ..Connect::default()
        };
        match client.handshake(connect, Duration::from_secs(30)).await {
            Ok(Packet::ConnAck { code: 0, session_present, .. }) => Ok((client, session_present)),
            Ok(other) => Err(format!("refused: {other:?}")),
            Err(e) => Err(format!("handshake: {e:?}")),
        }
    }
}

/// Opens `n` clients at `common.connect_rate` per second. Returns them with their set-up times
/// and the number of failures (the first few failure messages are printed).
pub async fn open_many(common: &Common, dial: &Dial, n: usize, prefix: &str) -> (Vec<Client>, Vec<Duration>, usize) {
    let period = Duration::from_secs_f64(1.0 / f64::from(common.connect_rate.max(1)));
    let mut ticker = tokio::time::interval(period);
    let progress = Arc::new(AtomicUsize::new(0));
    let reporter = spawn_progress(format!("{prefix}: connected"), progress.clone(), n);
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        ticker.tick().await;
        let dial = dial.clone();
        let source = common.source(i);
        let progress = progress.clone();
        // Unique across load-generator processes: a repeated client id would take over a session.
        let id = format!("{prefix}-{}-{i}", std::process::id());
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let r = dial.open(source, id).await.map(|c| (c, started.elapsed()));
            progress.fetch_add(1, Ordering::Relaxed);
            r
        }));
    }
    let mut clients = Vec::with_capacity(n);
    let mut setup = Vec::with_capacity(n);
    let mut failed = 0;
    for t in tasks {
        match t.await {
            Ok(Ok((c, d))) => {
                clients.push(c);
                setup.push(d);
            }
            Ok(Err(e)) => {
                if failed < 5 {
                    eprintln!("connection failed: {e}");
                }
                failed += 1;
            }
            Err(e) => {
                eprintln!("connection task failed: {e}");
                failed += 1;
            }
        }
    }
    reporter.abort();
    (clients, setup, failed)
}

/// Prints `label done/total` to stderr once a second until aborted.
pub fn spawn_progress(label: String, done: Arc<AtomicUsize>, total: usize) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut t = tokio::time::interval(Duration::from_secs(1));
        t.tick().await;
        loop {
            t.tick().await;
            eprintln!("  {label} {}/{total}", done.load(Ordering::Relaxed));
        }
    })
}
