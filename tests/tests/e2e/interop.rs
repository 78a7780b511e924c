//! Real third-party clients against the edge: mosquitto_pub/mosquitto_sub (MQTT 3.1.1 and 5,
//! QoS 0/1/2, TLS) and paho-mqtt from Python (TCP, WebSocket and TLS, both versions).

use std::time::Duration;

use hermes_tests::*;
use tokio::process::Command;

#[tokio::test(flavor = "multi_thread")]
async fn mosquitto_clients_publish_and_subscribe() {
    let sub_bin = require_tool("mosquitto_sub");
    let pub_bin = require_tool("mosquitto_pub");
    let edge = TestEdge::start().await;
    let port = edge.tcp.port().to_string();
    let tls_port = edge.tls.port().to_string();
    let ca = edge.ca_file.display().to_string();
    for (version, qos, tls) in [
        ("mqttv311", "0", false),
        ("mqttv311", "1", false),
        ("mqttv5", "2", false),
        ("mqttv311", "2", true),
        ("mqttv5", "1", true),
    ] {
        let topic = format!("mosq/{version}/{qos}/{tls}");
        let (host, port) = if tls { ("localhost", tls_port.as_str()) } else { ("127.0.0.1", port.as_str()) };
        let mut sub = Command::new(&sub_bin);
        sub.args(["-h", host, "-p", port, "-V", version, "-q", qos, "-t", &topic, "-C", "1", "-W", "10"]);
        if tls {
            sub.args(["--cafile", &ca]);
        }
        let sub = tokio::spawn(async move { run_tool(&mut sub, Duration::from_secs(15)).await });
        // mosquitto_sub has no "subscribed" signal: publish retained so ordering cannot lose it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut publish = Command::new(&pub_bin);
        publish.args([
            "-h",
            host,
            "-p",
            port,
            "-V",
            version,
            "-q",
            qos,
            "-t",
            &topic,
            "-r",
            "-m",
            "hello from mosquitto",
        ]);
        if tls {
            publish.args(["--cafile", &ca]);
        }
        let (ok, _, err) = run_tool(&mut publish, Duration::from_secs(10)).await;
        assert!(ok, "mosquitto_pub {version} qos {qos} tls {tls}: {err}");
        let (ok, out, err) = sub.await.expect("join");
        assert!(ok, "mosquitto_sub {version} qos {qos} tls {tls}: {err}");
        assert_eq!(out.trim(), "hello from mosquitto");
    }
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mosquitto_pub_large_payloads_then_disconnect_arrive_intact() {
    // mosquitto_pub writes CONNECT, PUBLISH, DISCONNECT back to back: the PUBLISH must still be
    // routed, whatever its size.
    let sub_bin = require_tool("mosquitto_sub");
    let pub_bin = require_tool("mosquitto_pub");
    let edge = TestEdge::start().await;
    let port = edge.tcp.port().to_string();
    for size in [10usize, 16 * 1024, 100 * 1000, 500 * 1000] {
        let file = edge.dir.join(format!("payload-{size}"));
        let payload: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
        std::fs::write(&file, &payload).expect("write payload");
        let topic = format!("big/{size}");
        let mut sub = Command::new(&sub_bin);
        sub.args(["-p", &port, "-t", &topic, "-C", "1", "-W", "10", "-N"]);
        let sub = tokio::spawn(async move { run_tool(&mut sub, Duration::from_secs(15)).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut publish = Command::new(&pub_bin);
        publish.args(["-p", &port, "-t", &topic, "-f"]).arg(&file);
        let (ok, _, err) = run_tool(&mut publish, Duration::from_secs(10)).await;
        assert!(ok, "mosquitto_pub {size} bytes: {err}");
        let (ok, out, err) = sub.await.expect("join");
        assert!(ok, "mosquitto_sub {size} bytes: {err}");
        assert!(out.as_bytes() == payload.as_slice(), "{size} bytes arrive intact (got {})", out.len());
    }
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn paho_python_over_tcp_websocket_and_tls() {
    let python = require_tool("python3");
    let edge = TestEdge::start().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/paho_check.py");
    let mut cmd = Command::new(python);
    cmd.args([
        script,
        "127.0.0.1",
        &edge.tcp.port().to_string(),
        &edge.ws.port().to_string(),
        &edge.tls.port().to_string(),
        &edge.ca_file.display().to_string(),
    ]);
    let (ok, out, err) = run_tool(&mut cmd, Duration::from_secs(120)).await;
    assert!(ok, "paho check failed:\n{out}\n{err}");
    assert!(out.contains("paho: all checks passed"), "{out}");
    edge.stop().await;
}
