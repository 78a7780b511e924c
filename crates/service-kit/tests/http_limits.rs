//! Every HTTP listener's limits hold over real sockets, plain and TLS: late headers, late bodies
//! and idle connections are closed, one address cannot hold more than its share of connections,
//! and stopping still lets a request in progress finish.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::routing::{get, post};
use rustls::pki_types::{CertificateDer, ServerName};
use service_kit::http::{CONNECTIONS_REFUSED, HttpLimits, serve_with_limits};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;

/// Long enough never to fire during a test.
const LONG: Duration = Duration::from_secs(20);
/// The short limit a test is about.
const SHORT: Duration = Duration::from_millis(300);
/// How late a close may come on a busy 2-core machine and still count as "at the timeout";
/// without the limits these connections stay open for good.
const SLACK: Duration = Duration::from_secs(2);

fn limits(header: Duration, body: Duration, idle: Duration, per_address: usize) -> HttpLimits {
    HttpLimits {
        header_timeout: header,
        body_timeout: body,
        idle_timeout: idle,
        max_connections_per_address: per_address,
    }
}

fn router() -> Router {
    Router::new()
        .route("/", get(|| async { "ok" }))
        .route("/peer", get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.ip().to_string() }))
        .route("/echo", post(|body: String| async move { body.len().to_string() }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(SHORT * 3).await;
                "slow"
            }),
        )
        .route("/stream", get(|| async { slow_stream() }))
}

/// Eight chunks 100 ms apart: a response that takes longer than `SHORT` to write.
fn slow_stream() -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(1);
    tokio::spawn(async move {
        for i in 0..8 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if tx.send(Ok(Bytes::from(format!("chunk{i}\n")))).await.is_err() {
                return;
            }
        }
    });
    Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// A running listener; dropping it stops it.
struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl Server {
    async fn start(limits: HttpLimits, tls: Option<Arc<rustls::ServerConfig>>) -> Server {
        let (stop, stopped) = oneshot::channel::<()>();
        let stopped = async move {
            let _ = stopped.await;
        };
        let addr = serve_with_limits("127.0.0.1:0", tls, router(), stopped, limits).await.expect("serve");
        Server { addr, stop: Some(stop) }
    }

    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// A TCP connection from `ip` (any 127.x.y.z address works on loopback).
    async fn connect_from(&self, ip: &str) -> TcpStream {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.bind(SocketAddr::new(ip.parse().expect("ip"), 0)).expect("bind client address");
        socket.connect(self.addr).await.expect("connect")
    }

    async fn connect(&self) -> TcpStream {
        self.connect_from("127.0.0.1").await
    }
}

/// Sends a GET and reads its response: (status, body).
async fn get_on<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, path: &str) -> io::Result<(u16, String)> {
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n").as_bytes()).await?;
    read_response(s).await
}

/// Reads one response with a `content-length` body.
async fn read_response<S: AsyncRead + Unpin>(s: &mut S) -> io::Result<(u16, String)> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(SLACK, s.read(&mut chunk)).await.map_err(|_| io::ErrorKind::TimedOut)??;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let status = head.get(9..12).and_then(|s| s.parse().ok()).ok_or(io::ErrorKind::InvalidData)?;
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or(io::ErrorKind::InvalidData)?;
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let mut chunk = [0u8; 1024];
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Reads until the server closes the connection (EOF or reset) and returns how long that took
/// from `since`, with everything read before. Panics if it is still open after `within`.
async fn wait_closed<S: AsyncRead + Unpin>(s: &mut S, since: Instant, within: Duration) -> (Duration, String) {
    let mut seen = Vec::new();
    loop {
        let mut chunk = [0u8; 1024];
        match tokio::time::timeout_at(since + within, s.read(&mut chunk)).await {
            Err(_) => panic!("connection still open after {within:?}"),
            Ok(Ok(0) | Err(_)) => return (since.elapsed(), String::from_utf8_lossy(&seen).into_owned()),
            Ok(Ok(n)) => seen.extend_from_slice(&chunk[..n]),
        }
    }
}

fn assert_at_timeout(elapsed: Duration, timeout: Duration) {
    // Timers never fire early; the lower bound shows the close came from the timeout.
    assert!(elapsed >= timeout - Duration::from_millis(20), "closed after {elapsed:?}, before the {timeout:?} timeout");
    assert!(elapsed <= timeout + SLACK, "closed after {elapsed:?}, long after the {timeout:?} timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_header_is_closed_at_the_header_timeout_while_others_are_served() {
    let server = Server::start(limits(SHORT, LONG, LONG, 64), None).await;
    let since = Instant::now();
    let mut half = server.connect().await;
    half.write_all(b"GET / HTTP/1.1\r\nhost: te").await.expect("write");

    let mut other = server.connect().await;
    assert_eq!(get_on(&mut other, "/").await.expect("served").0, 200);

    let (elapsed, _) = wait_closed(&mut half, since, SHORT + SLACK).await;
    assert_at_timeout(elapsed, SHORT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_at_the_header_timeout() {
    // hyper-util reads the protocol preface before hyper's own header timer starts; this checks
    // a client that sends nothing at all is not waited for forever.
    let server = Server::start(limits(SHORT, LONG, LONG, 64), None).await;
    let since = Instant::now();
    let mut silent = server.connect().await;
    let (elapsed, _) = wait_closed(&mut silent, since, SHORT + SLACK).await;
    assert_at_timeout(elapsed, SHORT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_sent_a_byte_at_a_time_is_closed_at_the_header_timeout() {
    let server = Server::start(limits(SHORT, LONG, LONG, 64), None).await;
    let since = Instant::now();
    let (mut read, mut write) = server.connect().await.into_split();
    let trickle = tokio::spawn(async move {
        let _ = write.write_all(b"GET / HTTP/1.1\r\nx-slow: ").await;
        // Bytes keep arriving, which must not move the header deadline.
        while write.write_all(b"a").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    });
    let (elapsed, _) = wait_closed(&mut read, since, SHORT + SLACK).await;
    assert_at_timeout(elapsed, SHORT);
    trickle.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_arriving_gets_408_and_the_connection_closes() {
    let server = Server::start(limits(LONG, SHORT, LONG, 64), None).await;

    let mut whole = server.connect().await;
    let body = "x".repeat(100);
    whole
        .write_all(format!("POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 100\r\n\r\n{body}").as_bytes())
        .await
        .expect("write");
    assert_eq!(read_response(&mut whole).await.expect("response"), (200, "100".into()), "a whole body is untouched");

    let mut late = server.connect().await;
    late.write_all(b"POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 100\r\n\r\n0123456789").await.expect("write");
    let since = Instant::now();
    let (elapsed, seen) = wait_closed(&mut late, since, SHORT + SLACK).await;
    assert!(seen.starts_with("HTTP/1.1 408"), "{seen}");
    assert_at_timeout(elapsed, SHORT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_at_the_idle_timeout() {
    let server = Server::start(limits(LONG, LONG, SHORT, 64), None).await;
    let mut conn = server.connect().await;
    assert_eq!(get_on(&mut conn, "/").await.expect("served"), (200, "ok".into()));
    let since = Instant::now();
    let (elapsed, seen) = wait_closed(&mut conn, since, SHORT + SLACK).await;
    assert!(seen.is_empty(), "{seen}");
    assert_at_timeout(elapsed, SHORT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn for_http1_the_header_timeout_also_bounds_the_wait_between_requests() {
    // hyper 1.x starts its header timer when it waits for the next request, not at its first
    // byte; HttpLimits::header_timeout documents this.
    let server = Server::start(limits(SHORT, LONG, LONG, 64), None).await;
    let mut conn = server.connect().await;
    assert_eq!(get_on(&mut conn, "/").await.expect("served").0, 200);
    let since = Instant::now();
    let (elapsed, _) = wait_closed(&mut conn, since, SHORT + SLACK).await;
    assert_at_timeout(elapsed, SHORT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_handler_and_a_long_response_are_not_idle() {
    let server = Server::start(limits(LONG, LONG, SHORT, 64), None).await;
    let mut conn = server.connect().await;
    assert_eq!(get_on(&mut conn, "/slow").await.expect("slow handler answered"), (200, "slow".into()));

    let mut stream = server.connect().await;
    stream.write_all(b"GET /stream HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n").await.expect("write");
    let mut all = String::new();
    tokio::time::timeout(SLACK * 2, stream.read_to_string(&mut all)).await.expect("in time").expect("read");
    assert!(all.starts_with("HTTP/1.1 200"), "{all}");
    assert!((0..8).all(|i| all.contains(&format!("chunk{i}\n"))), "the whole response arrived: {all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holds_at_most_its_share_of_connections() {
    let prometheus = service_kit::telemetry::prometheus_handle().expect("recorder");
    let server = Server::start(limits(LONG, LONG, LONG, 3), None).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut conn = server.connect().await;
        assert_eq!(get_on(&mut conn, "/").await.expect("served").0, 200);
        held.push(conn);
    }

    let mut fourth = server.connect().await;
    let (elapsed, seen) = wait_closed(&mut fourth, Instant::now(), SLACK).await;
    assert!(seen.is_empty(), "closed without an answer: {seen}");
    assert!(elapsed < Duration::from_secs(1), "closed at once, not after {elapsed:?}");
    let metrics = prometheus.render();
    assert!(metrics.contains(&format!("{CONNECTIONS_REFUSED}{{reason=\"per_address_limit\"}}")), "{metrics}");

    let mut elsewhere = server.connect_from("127.0.0.2").await;
    assert_eq!(get_on(&mut elsewhere, "/peer").await.expect("served"), (200, "127.0.0.2".into()));

    // Closing one of the three frees its place once the server has seen the close.
    drop(held.pop());
    let deadline = Instant::now() + SLACK;
    loop {
        let mut again = server.connect().await;
        match get_on(&mut again, "/peer").await {
            Ok(answer) => break assert_eq!(answer, (200, "127.0.0.1".into())),
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => panic!("no place freed: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_closes_the_port_and_idle_connections_and_finishes_requests_in_progress() {
    let mut server = Server::start(limits(LONG, LONG, LONG, 64), None).await;
    let mut idle = server.connect().await;
    assert_eq!(get_on(&mut idle, "/").await.expect("served").0, 200);
    let mut busy = server.connect().await;
    busy.write_all(b"GET /slow HTTP/1.1\r\nhost: t\r\n\r\n").await.expect("write");
    tokio::time::sleep(Duration::from_millis(100)).await;

    server.stop();
    let since = Instant::now();
    assert_eq!(read_response(&mut busy).await.expect("answered"), (200, "slow".into()));
    wait_closed(&mut idle, since, SLACK).await;
    let deadline = Instant::now() + SLACK;
    while TcpStream::connect(server.addr).await.is_ok() {
        assert!(Instant::now() < deadline, "the port still accepts connections");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A self-signed certificate for `localhost`: the server config (loaded from PEM files the way
/// services load theirs) and a client that trusts it.
fn tls_pair() -> (Arc<rustls::ServerConfig>, tokio_rustls::TlsConnector) {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("service-kit-http-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("certificate");
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, cert.cert.pem()).expect("write cert");
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).expect("write key");
    let server = service_kit::tls::server_config(
        &cert_file.display().to_string(),
        &key_file.display().to_string(),
        ("test.cert", "test.key"),
    )
    .expect("server config");
    let _ = std::fs::remove_dir_all(&dir);

    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(cert.cert.der().to_vec())).expect("trust the certificate");
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    (server, tokio_rustls::TlsConnector::from(Arc::new(client)))
}

async fn tls_connect(connector: &tokio_rustls::TlsConnector, tcp: TcpStream) -> io::Result<TlsStream<TcpStream>> {
    let name = ServerName::try_from("localhost").expect("server name");
    tokio::time::timeout(SLACK, connector.connect(name, tcp)).await.map_err(|_| io::ErrorKind::TimedOut)?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_half_a_header_is_closed_at_the_header_timeout() {
    let (config, connector) = tls_pair();
    let server = Server::start(limits(SHORT, LONG, LONG, 64), Some(config)).await;
    let mut half = tls_connect(&connector, server.connect().await).await.expect("handshake");
    let since = Instant::now();
    half.write_all(b"GET / HTTP/1.1\r\nhost: te").await.expect("write");
    half.flush().await.expect("flush");

    let mut other = tls_connect(&connector, server.connect().await).await.expect("handshake");
    assert_eq!(get_on(&mut other, "/").await.expect("served").0, 200);

    let (elapsed, _) = wait_closed(&mut half, since, SHORT + SLACK).await;
    assert_at_timeout(elapsed, SHORT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_connections_still_in_their_handshake_count_towards_the_cap() {
    let (config, connector) = tls_pair();
    let server = Server::start(limits(LONG, LONG, LONG, 2), Some(config)).await;
    // Two clients that never start their handshake: the half-open connections of an attack.
    let mut silent = vec![server.connect().await, server.connect().await];

    let refused = tls_connect(&connector, server.connect().await).await;
    assert!(refused.is_err(), "a third connection from 127.0.0.1 completed its handshake");

    let mut elsewhere = tls_connect(&connector, server.connect_from("127.0.0.2").await).await.expect("handshake");
    assert_eq!(get_on(&mut elsewhere, "/peer").await.expect("served"), (200, "127.0.0.2".into()));

    drop(silent.pop());
    let deadline = Instant::now() + SLACK;
    loop {
        let attempt = match tls_connect(&connector, server.connect().await).await {
            Ok(mut tls) => get_on(&mut tls, "/peer").await,
            Err(e) => Err(e),
        };
        match attempt {
            Ok(answer) => break assert_eq!(answer, (200, "127.0.0.1".into())),
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => panic!("no place freed: {e}"),
        }
    }
}
