//! The IO shell: binds the TCP, TLS and WebSocket listeners, runs the ntex workers on a thread
//! of their own, and stops them on request.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use ntex::http::{self, HttpService, Request, Response, h1};
use ntex::io::{Filter, Io, Layer};
use ntex::{Pipeline, Service, SharedCfg, ws};
use ntex_mqtt::{MqttError, MqttServer, QoS};

use broker::relations::{MemoryRelations, RelationDirectory};

use crate::auth::Authenticator;
use crate::authz::Authorizer;
use crate::config::EdgeConfig;
use crate::connect::Listener;
use crate::connection::ConnState;
use crate::flow::watched;
use crate::guard::ProtocolGuard;
use crate::hub::{CloseReason, Hub};
use crate::ingress::EdgeError;
use crate::{v3, v5};

/// What every connection handler needs: the hub, authentication, authorization, the relations
/// the ACL reads (and the directory they are loaded from at CONNECT, if any) and the config.
#[derive(Debug)]
pub struct EdgeShared {
    pub hub: Arc<Hub>,
    pub auth: Authenticator,
    pub authz: Arc<Authorizer>,
    pub relations: Arc<MemoryRelations>,
    pub directory: Option<Arc<dyn RelationDirectory>>,
    /// Where enterprises' ACL tables and revocations are kept (if anywhere): applied at start,
    /// and again when account events may have been missed.
    pub access: Option<Arc<dyn broker::access::AccessDirectory>>,
    /// Slows down addresses whose CONNECTs fail authentication.
    pub throttle: crate::throttle::AuthThrottle,
    pub cfg: EdgeConfig,
    /// CONNECTs talking to the session store (owners registry, journal) at once, at most
    /// [`STORE_TURNS`].
    pub store_turns: tokio::sync::Semaphore,
    /// Signatures an account event cleared, by topic (`{eid}/im/sig/{user}`), with when
    /// (Unix ms): a cleared one leaves no retained message to tell a late change by.
    pub signatures_cleared: std::sync::Mutex<std::collections::HashMap<String, i64>>,
}

/// CONNECTs that talk to the session store at once, at most: in a reconnect storm (every client
/// of a dead edge at once) the others wait their turn before it, instead of piling up in the
/// store's queue until their reads time out and their clients are refused.
pub const STORE_TURNS: usize = 64;

/// Addresses the listeners are bound to (port 0 in the config resolved to the real port).
#[derive(Debug, Clone, Default)]
pub struct BoundAddrs {
    pub mqtt: Option<SocketAddr>,
    pub mqtt_tls: Option<SocketAddr>,
    pub mqtt_ws: Option<SocketAddr>,
}

/// A running set of listeners; stop it with [`Listeners::stop`].
#[derive(Debug)]
pub struct Listeners {
    pub addrs: BoundAddrs,
    server: ntex::server::Server,
    thread: Option<std::thread::JoinHandle<io::Result<()>>>,
    hub: Arc<Hub>,
}

impl Listeners {
    /// Stops accepting, tells every client the server is going away (v5 DISCONNECT 0x8B), then
    /// stops the workers.
    pub async fn stop(mut self) {
        // No new connections first: a client told to go must not come back to this node.
        self.server.pause().await;
        self.hub.close_all(CloseReason::ServerShuttingDown);
        // Give the delivery tasks a moment to write their DISCONNECT packets.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        self.server.stop(true).await;
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

fn listener(addr: &str, backlog: i32, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let addr: SocketAddr =
        addr.parse().map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("`{addr}`: {e}")))?;
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    // Several edge processes may share one port (each gets a share of the connections), when
    // the operator asks for it.
    socket.set_reuse_port(reuse_port)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

fn tls_config(cfg: &EdgeConfig) -> io::Result<Arc<rustls::ServerConfig>> {
    service_kit::tls::server_config(&cfg.mqtt.tls_cert, &cfg.mqtt.tls_key, ("mqtt.tls_cert", "mqtt.tls_key"))
}

fn service_config(cfg: &EdgeConfig) -> SharedCfg {
    let l = &cfg.limits;
    SharedCfg::new("MQTT")
        .add(ntex::io::IoConfig::new())
        .add(
            ntex_mqtt::MqttServiceConfig::new()
                .set_max_qos(QoS::ExactlyOnce)
                .set_max_size(l.max_packet_size)
                .set_max_receive(l.max_inbound_inflight)
                .set_max_send(l.max_inflight)
                .set_max_topic_alias(l.max_topic_alias)
                // A PUBLISH that arrived before the client hung up is still routed (mosquitto_pub
                // sends PUBLISH and DISCONNECT back to back).
                .set_handle_qos_after_disconnect(Some(QoS::ExactlyOnce))
                // Whole payloads only: we route complete messages, and ntex-mqtt's streaming path
                // panics when a DISCONNECT arrives while a large payload is still streaming.
                .set_min_chunk_size(l.max_packet_size)
                .protocol_version_timeout(ntex::time::Seconds(l.connect_timeout_secs))
                .set_connect_timeout(ntex::time::Seconds(l.connect_timeout_secs))
                .set_handshake_timeout(ntex::time::Seconds(l.connect_timeout_secs)),
        )
        .into()
}

/// The MQTT service for one accepted (and, for TLS/WS, unwrapped) connection, on the
/// `listener` it came to.
fn mqtt_service(
    edge: Arc<EdgeShared>,
    listener: Listener,
) -> impl Service<(), ntex::io::IoBoxed, Res = (), Error = io::Error> {
    let e3 = edge.clone();
    let e5 = edge;
    MqttServer::new()
        .v3(ntex_mqtt::v3::MqttServer::new(async |ses: &v3::Session, p| {
            watched(&ses.dispatch, v3::publish(ses, p)).await
        })
        .middleware(ProtocolGuard)
        .protocol(async |ses: &v3::Session, m| watched(&ses.dispatch, v3::protocol(ses, m)).await)
        .control(async |ses: &v3::Session, c| {
            observe_stop(ses, &c);
            Ok::<Option<ntex_mqtt::v3::codec::Encoded>, EdgeError>(None)
        })
        .build(move |msg| v3::connect(e3.clone(), msg, listener)))
        .v5(ntex_mqtt::v5::MqttServer::new(async |ses: &v5::Session, p| {
            watched(&ses.dispatch, v5::publish(ses, p)).await
        })
        .middleware(ProtocolGuard)
        .protocol(async |ses: &v5::Session, m| watched(&ses.dispatch, v5::protocol(ses, m)).await)
        .control(async |ses: &v5::Session, c| {
            observe_stop(ses, &c);
            Ok::<Option<ntex_mqtt::v5::codec::Encoded>, EdgeError>(None)
        })
        .build(move |msg| v5::connect(e5.clone(), msg, listener)))
        .map_err(|e: MqttError<EdgeError>| io::Error::other(format!("{e:?}")))
}

/// Counts and logs why a connection stops; ntex-mqtt itself sends the v5 DISCONNECT reason
/// for protocol errors, and [`ConnState`]'s drop does the session clean-up.
fn observe_stop(ses: &ConnState, c: &ntex_mqtt::Control<EdgeError>) {
    use ntex_mqtt::Reason;
    let reason = match c {
        ntex_mqtt::Control::Stop(Reason::Protocol(e)) => {
            tracing::debug!(client_id = %ses.client_id, error = %e.get_ref(), "protocol error");
            "protocol_error"
        }
        ntex_mqtt::Control::Stop(Reason::Error(e)) => {
            tracing::debug!(client_id = %ses.client_id, error = %e.get_ref(), "handler error");
            "handler_error"
        }
        ntex_mqtt::Control::Stop(Reason::PeerGone(_)) => "peer_gone",
        ntex_mqtt::Control::WrBackpressure(_) => return,
    };
    metrics::counter!(crate::metrics::CONNECTION_STOPS, "reason" => reason).increment(1);
}

/// HTTP/1 upgrade → WebSocket → the same MQTT service as raw TCP.
fn ws_service<F: Filter>(
    edge: Arc<EdgeShared>,
) -> impl Service<(), Io<F>, Res = (), Error = http::error::DispatchError> {
    let mqtt = Pipeline::new((), mqtt_service(edge, Listener::WebSocket)).bind();
    HttpService::new(async |_| {
        Ok::<_, io::Error>(Response::BadRequest().body("this endpoint speaks MQTT over WebSocket only"))
    })
    .h1_control(async move |msg: h1::Control<_, _>| {
        let ack = match msg {
            h1::Control::Upgrade(ctl) => {
                let (ack, io, req, codec) = ctl.handle();
                let io = ws_handshake(io, req, codec).await?;
                mqtt.call(io.boxed()).await?;
                ack
            }
            _ => msg.ack(),
        };
        Ok::<_, io::Error>(ack)
    })
}

async fn ws_handshake<F: Filter>(
    io: Io<F>,
    req: Request,
    codec: h1::Codec,
) -> Result<Io<Layer<ws::WsTransport, F>>, io::Error> {
    let mut res = ws::handshake(req.head()).map_err(io::Error::other)?;
    // Browsers require the server to echo the subprotocol they offered ("mqtt").
    if let Some(offered) = req.headers().get("sec-websocket-protocol") {
        let first = offered.to_str().unwrap_or("").split(',').next().unwrap_or("").trim().to_string();
        if !first.is_empty() {
            res.header("sec-websocket-protocol", first);
        }
    }
    io.send(h1::Message::Item((res.build().drop_body(), http::body::BodySize::Empty)), &codec).await?;
    Ok(ws::WsTransport::create(io, ws::Codec::new()))
}

/// Binds every configured listener and starts the workers. Returns once the listeners are bound.
pub fn start(edge: Arc<EdgeShared>) -> io::Result<Listeners> {
    let cfg = edge.cfg.clone();
    let backlog = cfg.mqtt.backlog;
    let reuse = cfg.mqtt.reuse_port;
    let bind = |a: &str| (!a.is_empty()).then(|| listener(a, backlog, reuse)).transpose();
    let tcp = bind(&cfg.mqtt.addr)?;
    let tls = bind(&cfg.mqtt.tls_addr)?;
    let ws = bind(&cfg.mqtt.ws_addr)?;
    let addrs = BoundAddrs {
        mqtt: tcp.as_ref().map(|l| l.local_addr()).transpose()?,
        mqtt_tls: tls.as_ref().map(|l| l.local_addr()).transpose()?,
        mqtt_ws: ws.as_ref().map(|l| l.local_addr()).transpose()?,
    };
    let tls_cfg = tls.as_ref().map(|_| tls_config(&cfg)).transpose()?;
    let workers = if cfg.mqtt.workers == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        cfg.mqtt.workers
    };
    let max_conn = cfg.limits.max_connections;
    let hub = edge.hub.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new().name("mqtt-edge".into()).spawn(move || {
        ntex::rt::System::build().name("mqtt-edge").build(ntex::rt::DefaultRuntime).block_on(async move {
            // Clients are told to go (DISCONNECT 0x8B) before the stop: do not wait long for stragglers.
            let mut b = ntex::server::build()
                .workers(workers)
                .backlog(backlog)
                .maxconn(max_conn)
                .disable_signals()
                .shutdown_timeout(ntex::time::Seconds(5));
            if let Some(l) = tcp {
                let e = edge.clone();
                b = b.listen("mqtt", l, service_config(&cfg), async move |_| {
                    let mqtt = Pipeline::new((), mqtt_service(e.clone(), Listener::Tcp));
                    ntex::service::fn_service(async move |io: Io| mqtt.call(io.boxed()).await)
                })?;
            }
            if let (Some(l), Some(tls_cfg)) = (tls, tls_cfg) {
                let e = edge.clone();
                b = b.listen("mqtt-tls", l, service_config(&cfg), async move |_| {
                    let mqtt = Pipeline::new((), mqtt_service(e.clone(), Listener::Tls));
                    ntex_tls::rustls::TlsAcceptor::new(tls_cfg.clone())
                        .map_err(io::Error::other)
                        .and_then(async move |io: Io<_>| mqtt.call(io.boxed()).await)
                })?;
            }
            if let Some(l) = ws {
                let e = edge.clone();
                b = b.listen("mqtt-ws", l, service_config(&cfg), async move |_| ws_service(e.clone()))?;
            }
            let srv = b.run();
            let _ = tx.send(srv.clone());
            srv.await.map_err(|e| io::Error::other(format!("{e:?}")))?;
            Ok(())
        })
    })?;
    let server = rx.recv().map_err(|_| io::Error::other("the MQTT worker thread failed to start"))?;
    Ok(Listeners { addrs, server, thread: Some(thread), hub })
}
