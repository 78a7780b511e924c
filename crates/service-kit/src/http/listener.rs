//! The accept loop behind every HTTP listener: admission per client address, TLS handshakes
//! off the loop, then one task per connection running hyper under the [`HttpLimits`], told to
//! shut down gracefully when the listener stops.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tower::ServiceExt;

use super::activity::{Activity, Expired, Tracked};
use super::limits::{AddressSlot, PerAddress};
use super::{CONNECTIONS_REFUSED, HttpLimits, body_deadline};

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; more connections wait in the listen backlog.
const MAX_HANDSHAKES: usize = 256;

/// Accepts on `tcp` until `stop` resolves, then closes the port and lets every connection
/// finish its request in progress.
pub(super) async fn run(
    tcp: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    router: Router,
    stop: impl Future<Output = ()>,
    limits: HttpLimits,
) {
    let limits = limits.bounded();
    let (stopping, stopped) = watch::channel(false);
    let listener = Listener {
        tcp,
        tls: tls.map(tokio_rustls::TlsAcceptor::from),
        handshakes: Arc::new(Semaphore::new(MAX_HANDSHAKES)),
        per_address: PerAddress::new(limits.max_connections_per_address),
        http: Arc::new(http_builder(&limits)),
        router,
        limits,
        stopped,
    };
    tokio::select! {
        () = stop => {}
        () = listener.accept_forever() => {}
    }
    // The listener is dropped by now, so the port refuses new connections.
    stopping.send_replace(true);
}

/// hyper's HTTP/1 and HTTP/2 server, with the header timer that needs a `Timer` to run at all.
fn http_builder(limits: &HttpLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    builder.http2().timer(TokioTimer::new());
    builder
}

struct Listener {
    tcp: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    handshakes: Arc<Semaphore>,
    per_address: PerAddress,
    http: Arc<auto::Builder<TokioExecutor>>,
    router: Router,
    limits: HttpLimits,
    stopped: watch::Receiver<bool>,
}

impl Listener {
    async fn accept_forever(self) {
        loop {
            let handshake = match self.tls {
                Some(_) => match self.handshakes.clone().acquire_owned().await {
                    Ok(permit) => Some(permit),
                    Err(_) => return,
                },
                None => None,
            };
            let (tcp, peer) = match self.tcp.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(slot) = self.per_address.try_acquire(peer.ip()) else {
                metrics::counter!(CONNECTIONS_REFUSED, "reason" => "per_address_limit").increment(1);
                tracing::debug!(%peer, "connection refused: too many from this address");
                // Dropping `tcp` closes it: a plain client reads EOF, a TLS client's handshake fails.
                continue;
            };
            let conn = Connection {
                peer,
                _slot: slot,
                http: self.http.clone(),
                router: self.router.clone(),
                limits: self.limits,
                stopped: self.stopped.clone(),
            };
            match &self.tls {
                Some(acceptor) => tokio::spawn(conn.handshake(acceptor.clone(), tcp, handshake)),
                None => tokio::spawn(conn.serve(tcp)),
            };
        }
    }
}

/// One accepted connection, holding its place in its address's count until it ends.
struct Connection {
    peer: SocketAddr,
    _slot: AddressSlot,
    http: Arc<auto::Builder<TokioExecutor>>,
    router: Router,
    limits: HttpLimits,
    stopped: watch::Receiver<bool>,
}

impl Connection {
    async fn handshake(
        self,
        acceptor: tokio_rustls::TlsAcceptor,
        tcp: TcpStream,
        permit: Option<OwnedSemaphorePermit>,
    ) {
        let peer = self.peer;
        let mut stopped = self.stopped.clone();
        let tls = tokio::select! {
            tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)) => tls,
            _ = stopped.wait_for(|s| *s) => return,
        };
        drop(permit);
        match tls {
            Ok(Ok(tls)) => self.serve(tls).await,
            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
        }
    }

    async fn serve<IO>(self, io: IO)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Connection { peer, _slot, http, router, limits, mut stopped } = self;
        let activity = Activity::new();
        let service = hyper::service::service_fn({
            let activity = activity.clone();
            move |req| handle(req, router.clone(), peer, activity.clone(), limits.body_timeout)
        });
        // Without upgrades: an upgraded connection would leave this task, and with it its place
        // in the address count and its watchdog. Nothing served here upgrades.
        let conn = http.serve_connection(TokioIo::new(Tracked::new(io, activity.clone())), service);
        let watchdog = activity.watchdog(limits);
        tokio::pin!(conn, watchdog);
        let mut stopping = false;
        loop {
            tokio::select! {
                done = conn.as_mut() => {
                    if let Err(e) = done {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                expired = &mut watchdog => {
                    // Dropping the connection closes the socket.
                    match expired {
                        Expired::Header => tracing::debug!(%peer, "closing connection: no request header in time"),
                        Expired::Idle => tracing::debug!(%peer, "closing connection: idle"),
                    }
                    return;
                }
                // An error means the listener is gone, which is a stop as well.
                _ = stopped.wait_for(|s| *s), if !stopping => {
                    // Idle connections close now; a request in progress gets its response first.
                    stopping = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// One request: the peer address for handlers (`ConnectInfo<SocketAddr>`), the body deadline,
/// and the handler counted as activity while it runs.
async fn handle(
    req: hyper::Request<Incoming>,
    router: Router,
    peer: SocketAddr,
    activity: Arc<Activity>,
    body_timeout: Duration,
) -> Result<axum::response::Response, Infallible> {
    let _handling = activity.handling();
    let (mut req, body) = body_deadline::limit(req, body_timeout);
    req.extensions_mut().insert(ConnectInfo(peer));
    let response = router.oneshot(req).await?;
    Ok(if body.expired() { body_deadline::late_body_response() } else { response })
}
