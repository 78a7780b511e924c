//! HTTP serving for every service: the operations endpoint (`/metrics`, `/healthz`,
//! `/readyz`) and `serve`/`serve_with_tls`/`serve_with_limits` for APIs, over TCP or TLS, with
//! the header, body and idle timeouts and the per-address connection cap of [`HttpLimits`].

mod activity;
mod body_deadline;
mod limits;
mod listener;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

pub use limits::HttpLimits;

/// Counter of connections a listener closed as soon as it accepted them, labelled `reason`
/// (`per_address_limit`).
pub const CONNECTIONS_REFUSED: &str = "hermes_http_connections_refused_total";

/// Routes for metrics and health; services merge their own routes into it.
pub fn ops_router(prometheus: PrometheusHandle) -> Router {
    ops_router_with_readiness(prometheus, || Ok(()))
}

/// Like [`ops_router`], with `/readyz` answering 503 and the reason while `ready` says why the
/// node should not get traffic (a backend it needs is unreachable).
pub fn ops_router_with_readiness(
    prometheus: PrometheusHandle,
    ready: impl Fn() -> Result<(), String> + Clone + Send + Sync + 'static,
) -> Router {
    let readyz = move || {
        let answer = match ready() {
            Ok(()) => (axum::http::StatusCode::OK, "ready\n".to_owned()),
            Err(why) => (axum::http::StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
        };
        std::future::ready(answer)
    };
    Router::new()
        .route("/metrics", get(move || std::future::ready(prometheus.render())))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
}

/// Serves the operations endpoint `router` on `cfg.addr` with `cfg`'s limits until `stop`
/// resolves. Returns the bound address; an error names the key.
pub async fn serve_ops(
    cfg: &crate::sections::OpsConfig,
    router: Router,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<SocketAddr, String> {
    let limits = cfg.limits()?;
    serve_with_limits(&cfg.addr, None, router, stop, limits).await.map_err(|e| format!("ops.addr {}: {e}", cfg.addr))
}

/// Binds `addr` and serves `router` until `stop` resolves, with the default [`HttpLimits`].
/// Returns the bound address. Handlers can read the peer address (`ConnectInfo<SocketAddr>`).
pub async fn serve(
    addr: &str,
    router: Router,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<SocketAddr> {
    serve_with_tls(addr, None, router, stop).await
}

/// Like [`serve`], over TLS (HTTPS) when `tls` is given.
pub async fn serve_with_tls(
    addr: &str,
    tls: Option<Arc<rustls::ServerConfig>>,
    router: Router,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<SocketAddr> {
    serve_with_limits(addr, tls, router, stop, HttpLimits::default()).await
}

/// Like [`serve_with_tls`], with the given limits. When `stop` resolves the port closes, idle
/// connections close, and requests in progress get their responses before theirs do.
pub async fn serve_with_limits(
    addr: &str,
    tls: Option<Arc<rustls::ServerConfig>>,
    router: Router,
    stop: impl Future<Output = ()> + Send + 'static,
    limits: HttpLimits,
) -> std::io::Result<SocketAddr> {
    let tcp = tokio::net::TcpListener::bind(addr).await?;
    let local = tcp.local_addr()?;
    tokio::spawn(listener::run(tcp, tls, router, stop, limits));
    Ok(local)
}
