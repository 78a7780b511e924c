"""Interoperability check with paho-mqtt (the Python reference client) against a running edge.

Usage: paho_check.py HOST TCP_PORT WS_PORT TLS_PORT CAFILE
Runs MQTT 3.1.1 and 5.0 over TCP, WebSocket and TLS: subscribe at QoS 2, publish at QoS 0/1/2,
expect each message back at its QoS; v5 user properties pass through; retained delivery on
subscribe. Prints one line per check and exits non-zero on the first failure.
"""
import ssl
import sys
import threading
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

TIMEOUT = 20


def fail(msg):
    print("FAIL", msg, flush=True)
    sys.exit(1)


def client(name, transport, proto):
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, transport=transport, protocol=proto)
    if transport == "websockets":
        c.ws_set_options(path="/mqtt")
    return c


def run(label, host, port, transport, proto, cafile=None):
    name = f"paho-{label}-{uuid.uuid4().hex[:6]}"
    base = f"paho/{name}"
    got = []
    done = threading.Event()
    subscribed = threading.Event()
    c = client(name, transport, proto)
    if cafile:
        c.tls_set(ca_certs=cafile)

    def on_connect(cl, userdata, flags, rc, props=None):
        if rc != 0:
            fail(f"{label}: connect refused {rc}")
        cl.subscribe(f"{base}/#", qos=2)

    def on_subscribe(cl, userdata, mid, rcs, props=None):
        if any(r.is_failure for r in rcs):
            fail(f"{label}: subscribe refused {rcs}")
        subscribed.set()

    def on_message(cl, userdata, msg):
        props = getattr(msg, "properties", None)
        user = dict(props.UserProperty) if props is not None and hasattr(props, "UserProperty") else {}
        got.append((msg.topic, msg.payload, msg.qos, msg.retain, user))
        if len(got) >= 4:
            done.set()

    c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
    c.connect(host, port, keepalive=30)
    c.loop_start()
    if not subscribed.wait(TIMEOUT):
        fail(f"{label}: no SUBACK")
    # A retained message published by another client arrives on a fresh subscription.
    pub = client(name + "-pub", transport, proto)
    if cafile:
        pub.tls_set(ca_certs=cafile)
    pub.connect(host, port, keepalive=30)
    pub.loop_start()
    for qos in (0, 1, 2):
        props = None
        if proto == mqtt.MQTTv5:
            props = Properties(PacketTypes.PUBLISH)
            props.UserProperty = ("k", f"v{qos}")
        pub.publish(f"{base}/q{qos}", f"m{qos}".encode(), qos=qos, properties=props).wait_for_publish(TIMEOUT)
    pub.publish(f"{base}/retained", b"kept", qos=1, retain=True).wait_for_publish(TIMEOUT)
    if not done.wait(TIMEOUT):
        fail(f"{label}: received only {got}")
    by_topic = {t: (p, q, r, u) for t, p, q, r, u in got}
    for qos in (0, 1, 2):
        p, q, r, u = by_topic.get(f"{base}/q{qos}", (None, None, None, None))
        if p != f"m{qos}".encode() or q != qos:
            fail(f"{label}: QoS {qos} message wrong: {by_topic}")
        if proto == mqtt.MQTTv5 and u.get("k") != f"v{qos}":
            fail(f"{label}: user property lost at QoS {qos}: {u}")
    # Now a new subscriber gets the retained one with the retain flag.
    late = client(name + "-late", transport, proto)
    if cafile:
        late.tls_set(ca_certs=cafile)
    retained = threading.Event()
    late_got = []
    late_events = []

    def late_message(cl, ud, msg):
        late_got.append((msg.topic, msg.payload, msg.retain))
        if msg.retain and msg.payload == b"kept":
            retained.set()

    def late_connect(cl, ud, fl, rc, pr=None):
        late_events.append(f"connack {rc}")
        cl.subscribe(f"{base}/retained", qos=1)

    late.on_message = late_message
    late.on_connect = late_connect
    late.on_subscribe = lambda cl, ud, mid, rcs, pr=None: late_events.append(f"suback {[str(r) for r in rcs]}")
    late.connect(host, port, keepalive=30)
    late.loop_start()
    if not retained.wait(TIMEOUT):
        fail(f"{label}: retained message not delivered on subscribe: got {late_got}, events {late_events}")
    for x in (c, pub, late):
        x.disconnect()
        x.loop_stop()
    print("ok", label, flush=True)


def main():
    host, tcp, ws, tls, cafile = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    for proto, pname in ((mqtt.MQTTv311, "v311"), (mqtt.MQTTv5, "v5")):
        run(f"tcp-{pname}", host, tcp, "tcp", proto)
        run(f"ws-{pname}", host, ws, "websockets", proto)
        run(f"tls-{pname}", "localhost", tls, "tcp", proto, cafile=cafile)
    print("paho: all checks passed", flush=True)


if __name__ == "__main__":
    main()
