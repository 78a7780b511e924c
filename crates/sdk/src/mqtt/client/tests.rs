//! Client tests against a tiny in-process fake broker that speaks just enough MQTT to
//! exercise the handshake, the QoS flows, queuing, timeouts and close detection.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::mqtt::ConnAckProperties;

const WAIT: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(100);

fn publish(topic: &str, payload: &'static [u8]) -> Packet {
    Packet::Publish(Publish { topic: topic.into(), payload: Bytes::from_static(payload), ..Publish::default() })
}

/// Serves one connection: CONNACK for CONNECT, an unsolicited PUBLISH before each SUBACK and
/// PUBACK (to exercise queuing), PUBREC/PUBCOMP for QoS 2 (refused for topic "refuse"), PINGRESP,
/// garbage for topic "garbage"; closes on DISCONNECT, EOF or anything it cannot decode.
async fn serve(mut s: TcpStream, v: Version) {
    let mut buf = BytesMut::new();
    loop {
        let p = match codec::decode(&mut buf, v, 1 << 20) {
            Ok(Some(p)) => p,
            Ok(None) => match s.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            },
            Err(_) => return,
        };
        let reply = match p {
            Packet::Connect(_) => {
                vec![Packet::ConnAck { session_present: false, code: 0, properties: ConnAckProperties::default() }]
            }
            Packet::Subscribe { packet_id, topics, .. } => vec![
                publish("early", b"before suback"),
                Packet::SubAck {
                    packet_id,
                    codes: topics.iter().map(|t| t.qos).collect(),
                    reason_string: None,
                    user_properties: Vec::new(),
                },
            ],
            Packet::Publish(p) if p.topic == "garbage" => {
                let _ = s.write_all(&[0x00, 0x00]).await;
                continue;
            }
            Packet::Publish(Publish { qos: 1, packet_id: Some(id), .. }) => {
                vec![publish("other", b"before puback"), Packet::PubAck { packet_id: id, code: 0 }]
            }
            Packet::Publish(Publish { qos: 2, packet_id: Some(id), topic, .. }) => {
                let code = if topic == "refuse" { 0x80 } else { 0 };
                vec![Packet::PubRec { packet_id: id, code }]
            }
            Packet::PubRel { packet_id, .. } => vec![Packet::PubComp { packet_id, code: 0 }],
            Packet::PingReq => vec![Packet::PingResp],
            Packet::Disconnect { .. } => return,
            _ => vec![],
        };
        let mut out = BytesMut::new();
        for r in &reply {
            codec::encode(r, v, &mut out);
        }
        if s.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// A connected client whose peer is a fresh fake broker.
async fn connected(v: Version) -> Client {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        if let Ok((s, _)) = listener.accept().await {
            serve(s, v).await;
        }
    });
    let mut c = Client::connect_tcp(addr, v).await.expect("tcp connect");
    let ack = c.handshake(Connect { client_id: "t".into(), ..Connect::default() }, WAIT).await.expect("connack");
    assert!(matches!(ack, Packet::ConnAck { code: 0, .. }), "{ack:?}");
    c
}

#[tokio::test]
async fn handshake_then_recv_times_out() {
    for v in [Version::V311, Version::V5] {
        let mut c = connected(v).await;
        assert_eq!(c.version(), v);
        let started = Instant::now();
        assert!(matches!(c.recv(QUIET).await, Err(RecvError::Timeout)));
        assert!(started.elapsed() >= QUIET);
        // The connection still works after a timeout.
        c.send(&Packet::PingReq).await.expect("send");
        assert_eq!(c.recv(WAIT).await.expect("pingresp"), Packet::PingResp);
    }
}

#[tokio::test]
async fn subscribe_queues_packets_before_the_suback() {
    let mut c = connected(Version::V5).await;
    let codes = c.subscribe(vec![SubscribeTopic::new("a/#", 1), SubscribeTopic::new("b", 2)], WAIT).await;
    assert_eq!(codes.expect("suback"), [1, 2]);
    assert_eq!(c.recv(WAIT).await.expect("queued"), publish("early", b"before suback"));
    assert!(matches!(c.recv(QUIET).await, Err(RecvError::Timeout)));
}

#[tokio::test]
async fn publish_completes_each_qos_flow() {
    for v in [Version::V311, Version::V5] {
        let mut c = connected(v).await;
        assert_eq!(c.publish("t", b"0", 0, false, WAIT).await.expect("qos0"), None);
        assert_eq!(c.publish("t", b"1", 1, false, WAIT).await.expect("qos1"), Some(0));
        assert_eq!(c.publish("t", b"2", 2, true, WAIT).await.expect("qos2"), Some(0));
        assert_eq!(c.recv(WAIT).await.expect("queued"), publish("other", b"before puback"));
        if v == Version::V5 {
            assert_eq!(c.publish("refuse", b"2", 2, false, WAIT).await.expect("refused"), Some(0x80));
        }
        // No stray PUBCOMP (which a PUBREL after a refusal would cause) is waiting.
        c.send(&Packet::PingReq).await.expect("send");
        assert_eq!(c.recv(WAIT).await.expect("pingresp"), Packet::PingResp);
    }
}

#[tokio::test]
async fn close_and_garbage_are_reported() {
    let mut c = connected(Version::V311).await;
    assert!(!c.is_closed(QUIET).await, "an idle connection stays open");
    c.send(&Packet::disconnect(0)).await.expect("send");
    assert!(matches!(c.recv(WAIT).await, Err(RecvError::Closed)));

    let mut c = connected(Version::V5).await;
    c.send_raw(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]).await.expect("send raw");
    assert!(c.is_closed(WAIT).await, "the broker drops a malformed packet");

    let mut c = connected(Version::V5).await;
    c.publish("garbage", b"", 0, false, WAIT).await.expect("qos0");
    assert!(matches!(c.recv(WAIT).await, Err(RecvError::Decode(DecodeError::UnknownPacketType(0)))));
}

#[tokio::test]
async fn packet_ids_wrap_and_skip_zero() {
    let mut c = connected(Version::V311).await;
    assert_eq!(c.next_packet_id(), 1);
    for _ in 2..=u16::MAX {
        assert_ne!(c.next_packet_id(), 0);
    }
    assert_eq!(c.next_packet_id(), 1);
}
