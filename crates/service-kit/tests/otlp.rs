//! Traces leave the process over OTLP/gRPC when `telemetry.otlp_endpoint` is set: a span
//! created through `tracing` reaches an in-process OTLP trace collector.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use service_kit::telemetry::{TelemetryConfig, init};

#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<(String, String)>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut seen = self.0.lock().expect("lock");
        for rs in &req.get_ref().resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .and_then(|a| a.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for ss in &rs.scope_spans {
                for span in &ss.spans {
                    seen.push((service.clone(), span.name.clone()));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_reach_an_otlp_collector() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let collector = Collector::default();
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(collector.clone()))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);

    let cfg = TelemetryConfig { otlp_endpoint: format!("http://{addr}"), ..TelemetryConfig::default() };
    let telemetry = init("otlp-test", &cfg).expect("telemetry");
    tracing::info_span!("mqtt.connect", client_id = "c1").in_scope(|| tracing::info!("inside"));
    // Dropping the handle flushes the batch exporter.
    tokio::task::spawn_blocking(move || drop(telemetry)).await.expect("flush");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let seen = collector.0.lock().expect("lock").clone();
        if let Some((service, _)) = seen.iter().find(|(_, name)| name == "mqtt.connect") {
            assert!(service.contains("otlp-test"), "resource names the service: {service}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no span exported; got {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
