"""What a stopping edge tells paho-mqtt v5 clients on each of its listeners.

Usage: paho_told_to_go.py HOST TCP_PORT TLS_PORT WS_PORT CAFILE NAMED_CAFILE
Connects one MQTT 5 client over TCP, one over TLS and one over WebSocket, prints "connected",
then, for each, the reason code of the DISCONNECT the server sends, its Server Reference ("-"
for none) and whether a client of the same kind then connected where it names (TLS checked
against NAMED_CAFILE): `<transport> <code> <reference> <followed|->`. Exits non-zero if a
client gets no DISCONNECT within 20 s.
"""
import sys
import threading
import urllib.parse
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

TIMEOUT = 20


def client(transport, cafile, path="/mqtt"):
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"told-{transport}-{uuid.uuid4().hex[:6]}",
                    transport="websockets" if transport == "ws" else "tcp", protocol=mqtt.MQTTv5)
    if transport == "ws":
        c.ws_set_options(path=path)
    if transport == "tls":
        c.tls_set(ca_certs=cafile)
    return c


def follow(transport, reference, cafile):
    """Connects a client of `transport` to `reference` (host:port, or a ws:// URL): whether it
    was let in."""
    if "://" in reference:
        url = urllib.parse.urlsplit(reference)
        host, port, path = url.hostname, url.port, url.path or "/"
    else:
        (host, port), path = reference.rsplit(":", 1), "/mqtt"
    c = client(transport, cafile, path)
    connected = threading.Event()
    c.on_connect = lambda cl, userdata, flags, rc, props=None: rc == 0 and connected.set()
    try:
        c.connect(host, int(port), keepalive=30)
    except Exception as e:  # refused, or the TLS handshake failed
        print(f"{transport}: cannot follow {reference}: {e}", file=sys.stderr, flush=True)
        return False
    c.loop_start()
    ok = connected.wait(TIMEOUT)
    c.disconnect()
    c.loop_stop()
    return ok


def watch(transport, host, port, cafile, told):
    c = client(transport, cafile)
    c.reconnect_delay_set(60, 60)
    connected = threading.Event()

    def on_connect(cl, userdata, flags, rc, props=None):
        if rc == 0:
            connected.set()

    def on_disconnect(cl, userdata, flags, rc, props=None):
        reference = getattr(props, "ServerReference", None) if props is not None else None
        told[transport] = (rc.value if hasattr(rc, "value") else int(rc), reference or "-")
        cl.disconnect()

    c.on_connect, c.on_disconnect = on_connect, on_disconnect
    c.connect(host, port, keepalive=30)
    c.loop_start()
    if not connected.wait(TIMEOUT):
        print(f"FAIL {transport}: not connected", flush=True)
        sys.exit(1)
    return c


def main():
    host, tcp, tls, ws = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    cafile, named_cafile = sys.argv[5], sys.argv[6]
    told = {}
    clients = [watch(t, host, p, cafile, told) for t, p in (("tcp", tcp), ("tls", tls), ("ws", ws))]
    print("connected", flush=True)
    done = threading.Event()
    for _ in range(TIMEOUT * 10):
        if len(told) == 3:
            done.set()
            break
        done.wait(0.1)
    for transport in ("tcp", "tls", "ws"):
        if transport not in told:
            print(f"FAIL {transport}: no DISCONNECT", flush=True)
            sys.exit(1)
    for c in clients:
        c.loop_stop()
    for transport in ("tcp", "tls", "ws"):
        code, reference = told[transport]
        followed = reference != "-" and follow(transport, reference, named_cafile)
        print(f"{transport} {code} {reference} {'followed' if followed else '-'}", flush=True)


main()
