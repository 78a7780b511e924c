"""The login → MQTT flow with paho-mqtt: two users connect to a running `hermes up` with the
access tokens the accounts API gave them.

Usage: paho_token.py HOST MQTT_PORT ALICE_TOKEN BOB_TOKEN
Checks, for MQTT 3.1.1 and 5.0: alice (token as password) is auto-subscribed to her inbox and
gets bob's message; the ACL refuses alice bob's inbox (v5 SUBACK 0x87, v3 0x80); a forged token
is refused (v5 CONNACK 0x86, v3 4, which paho reports as 0x86). Prints one line per check, exits non-zero on failure.
"""
import sys
import threading
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

TIMEOUT = 20


def fail(msg):
    print("FAIL", msg, flush=True)
    sys.exit(1)


def connected(host, port, proto, user, token):
    """A started client and the CONNACK reason code (an int)."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{user}-{uuid.uuid4().hex[:6]}", protocol=proto)
    c.username_pw_set(user, token)
    got = {}
    done = threading.Event()

    def on_connect(client, userdata, flags, reason, props):
        got["code"] = reason.value if hasattr(reason, "value") else int(reason)
        done.set()

    c.on_connect = on_connect
    c.connect(host, port)
    c.loop_start()
    if not done.wait(TIMEOUT):
        fail(f"{user}: no CONNACK")
    return c, got["code"]


def run(label, host, port, proto, alice_token, bob_token):
    inbox = []
    arrived = threading.Event()
    alice, code = connected(host, port, proto, "alice", alice_token)
    if code != 0:
        fail(f"{label}: alice refused with {code}")

    def on_message(client, userdata, msg):
        if msg.topic == "acme/im/msg/alice":
            inbox.append(msg.payload)
            arrived.set()

    alice.on_message = on_message
    granted = {}
    subacked = threading.Event()

    def on_subscribe(client, userdata, mid, reasons, props):
        granted["codes"] = [r.value if hasattr(r, "value") else int(r) for r in reasons]
        subacked.set()

    alice.on_subscribe = on_subscribe
    alice.subscribe("acme/im/msg/bob", qos=1)
    if not subacked.wait(TIMEOUT):
        fail(f"{label}: no SUBACK")
    want = 0x87 if proto == mqtt.MQTTv5 else 0x80
    if granted["codes"] != [want]:
        fail(f"{label}: another user's inbox was not refused: {granted['codes']}")
    print(f"{label}: ACL refuses bob's inbox ({want:#x})", flush=True)

    bob, code = connected(host, port, proto, "bob", bob_token)
    if code != 0:
        fail(f"{label}: bob refused with {code}")
    payload = f"hello alice over {label}".encode()
    bob.publish("acme/im/msg/alice", payload, qos=1).wait_for_publish(TIMEOUT)
    if not arrived.wait(TIMEOUT) or inbox[-1] != payload:
        fail(f"{label}: alice's auto-subscribed inbox did not get bob's message: {inbox}")
    print(f"{label}: bob -> alice through the auto-subscribed inbox", flush=True)
    for c in (alice, bob):
        c.disconnect()
        c.loop_stop()

    forged = alice_token[:-4] + ("AAAA" if not alice_token.endswith("AAAA") else "BBBB")
    c, code = connected(host, port, proto, "alice", forged)
    # paho's VERSION2 API reports the v3 return code 4 as its v5 equivalent 0x86.
    want = 0x86
    if code != want:
        fail(f"{label}: a forged token got CONNACK {code}, wanted {want}")
    c.loop_stop()
    print(f"{label}: forged token refused ({want:#x})", flush=True)


def main():
    host, port, alice_token, bob_token = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    run("v3.1.1", host, port, mqtt.MQTTv311, alice_token, bob_token)
    run("v5", host, port, mqtt.MQTTv5, alice_token, bob_token)
    print("paho token flow: all checks passed", flush=True)


if __name__ == "__main__":
    main()
