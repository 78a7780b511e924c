//! HTTP serving for every service: the operations endpoint (`/metrics`, `/healthz`,
//! `/readyz`) and `serve`/`serve_with_tls` for APIs, over TCP or TLS.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use axum::serve::{Listener, ListenerExt};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;

/// Routes for metrics and health; services merge their own routes into it.
pub fn ops_router(prometheus: PrometheusHandle) -> Router {
    Router::new()
        .route("/metrics", get(move || std::future::ready(prometheus.render())))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ready\n" }))
}

/// Binds `addr` and serves `router` until `stop` resolves. Returns the bound address. Handlers
/// can read the peer address (`ConnectInfo<SocketAddr>`).
pub async fn serve(
    addr: &str,
    router: Router,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<SocketAddr> {
    serve_with_tls(addr, None, router, stop).await
}

/// Like [`serve`], over TLS (HTTPS) when `tls` is given.
pub async fn serve_with_tls(
    addr: &str,
    tls: Option<Arc<rustls::ServerConfig>>,
    router: Router,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let service = router.into_make_service_with_connect_info::<SocketAddr>();
    match tls {
        None => {
            tokio::spawn(async move {
                let _ = axum::serve(listener, service).with_graceful_shutdown(stop).await;
            });
        }
        Some(config) => {
            let tls = TlsListener::start(listener, config, local);
            tokio::spawn(async move {
                // `tap_io` gives the listener axum's generic `ConnectInfo` support.
                let _ = axum::serve(tls.tap_io(|_| {}), service).with_graceful_shutdown(stop).await;
            });
        }
    }
    Ok(local)
}

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; more connections wait in the listen backlog.
const MAX_HANDSHAKES: usize = 256;

/// Accepts TCP connections and completes TLS handshakes in tasks of their own (a slow client
/// never holds up the others); `accept` yields finished ones.
struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    fn start(tcp: TcpListener, config: Arc<rustls::ServerConfig>, local: SocketAddr) -> TlsListener {
        let (tx, ready) = tokio::sync::mpsc::channel(64);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let Ok(slot) = slots.clone().acquire_owned().await else { return };
                let (stream, peer) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    return;
                }
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let _slot = slot;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        TlsListener { ready, local }
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The acceptor task is gone: no more connections.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}
