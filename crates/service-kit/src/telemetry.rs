//! Logs (text or JSON), OpenTelemetry traces over OTLP when an endpoint is configured, and the
//! Prometheus recorder behind the `metrics` facade.

use serde::{Deserialize, Serialize};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// `text` or `json`.
    pub log_format: String,
    /// A tracing filter, e.g. `info,mqtt_edge=debug`. `RUST_LOG` wins when set.
    pub log_level: String,
    /// OTLP/gRPC endpoint for traces, e.g. `http://127.0.0.1:4317`; empty disables tracing export.
    pub otlp_endpoint: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig { log_format: "text".into(), log_level: "info".into(), otlp_endpoint: String::new() }
    }
}

/// Keeps the trace pipeline alive; flushes it on drop.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
    pub prometheus: metrics_exporter_prometheus::PrometheusHandle,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.force_flush();
            let _ = p.shutdown();
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("telemetry.log_format must be `text` or `json`, not `{0}`")]
    LogFormat(String),
    #[error("telemetry.otlp_endpoint: {0}")]
    Otlp(String),
    #[error("metrics recorder: {0}")]
    Metrics(String),
}

/// Installs logging, tracing and the metrics recorder for the process. Call once, inside a
/// tokio runtime (the OTLP exporter needs one).
pub fn init(service: &'static str, cfg: &TelemetryConfig) -> Result<Telemetry, TelemetryError> {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig as _;

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.log_level));
    let fmt = match cfg.log_format.as_str() {
        "text" => tracing_subscriber::fmt::layer().boxed(),
        "json" => tracing_subscriber::fmt::layer().json().boxed(),
        other => return Err(TelemetryError::LogFormat(other.into())),
    };
    let provider = if cfg.otlp_endpoint.is_empty() {
        None
    } else {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(&cfg.otlp_endpoint)
            .build()
            .map_err(|e| TelemetryError::Otlp(e.to_string()))?;
        Some(
            opentelemetry_sdk::trace::SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(opentelemetry_sdk::Resource::builder().with_service_name(service).build())
                .build(),
        )
    };
    let otel = provider.as_ref().map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service)));
    // A second init in one process (tests) keeps the first subscriber.
    let _ = tracing_subscriber::registry().with(filter).with(fmt).with(otel).try_init();
    let prometheus = prometheus_handle()?;
    Ok(Telemetry { provider, prometheus })
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn prometheus_handle() -> Result<metrics_exporter_prometheus::PrometheusHandle, TelemetryError> {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> = std::sync::OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let h = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| TelemetryError::Metrics(e.to_string()))?;
    Ok(HANDLE.get_or_init(|| h).clone())
}
