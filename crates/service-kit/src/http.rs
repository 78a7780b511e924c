//! The operations endpoint every service serves: `/metrics`, `/healthz`, `/readyz`.

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

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
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        let service = router.into_make_service_with_connect_info::<SocketAddr>();
        let _ = axum::serve(listener, service).with_graceful_shutdown(stop).await;
    });
    Ok(local)
}
