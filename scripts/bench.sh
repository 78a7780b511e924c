#!/usr/bin/env bash
# Side-by-side benchmark: Hermes (`hermes up`, release build) and Mosquitto 2 on this machine,
# same scenarios, same bench tool (`hermes bench`), fresh broker per scenario.
# Usage: scripts/bench.sh [N_CONN] [N_FANOUT]     (defaults 19000 and 19000)
# Results: one JSON file per run in target/bench/, and a summary on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

N_CONN=${1:-19000}
N_FAN=${2:-19000}
OUT=target/bench

# Same queue bound for both, so both drop (or not) alike.
HERMES_ENV="HERMES_LIMITS__MAX_QUEUED_MESSAGES=100000 HERMES_LIMITS__MAX_PENDING_DELIVERIES=100000"
MOSQUITTO_EXTRA='max_connections -1\npersistence false\nmax_queued_messages 100000\n'
# shellcheck source=scripts/brokers.sh
source scripts/brokers.sh

for b in hermes mosquitto; do
    run $b connections connections -n "$N_CONN" --hold-secs 3
    run $b fanout fanout -n "$N_FAN" --rounds 3
    run $b qos1-1to1 throughput --publishers 1 --subscribers 1 --qos 1 --seconds 10
    run $b qos0-100to100 throughput --publishers 100 --subscribers 100 --qos 0 --seconds 10
    run $b qos1-100to100 throughput --publishers 100 --subscribers 100 --qos 1 --seconds 10
    run $b qos1-half-load throughput --publishers 100 --subscribers 100 --qos 1 --rate 10000 --seconds 10
done

python3 - "$OUT" <<'PY'
import json, sys, os
out = sys.argv[1]
def load(b, n):
    with open(os.path.join(out, f"{b}-{n}.json")) as f:
        return json.load(f)
rows = []
for b in ("hermes", "mosquitto"):
    c = load(b, "connections")
    f = load(b, "fanout")
    last = [r["time_to_last_ms"] for r in f["rounds"]]
    line = {"broker": b,
            "conn": f'{c["connected"]} ok, {c.get("broker_rss_kib_per_connection")} KiB/conn, setup p99 {c["setup"]["p99_ms"]} ms, {c["connects_per_sec"]}/s',
            "fanout": f'{f["subscribers"]} subs: last after {min(last)}–{max(last)} ms'}
    for n in ("qos1-1to1", "qos0-100to100", "qos1-100to100", "qos1-half-load"):
        t = load(b, n)
        cpu = (t.get("broker_cpu") or {}).get("cpu_us_per_msg")
        line[n] = f'{t["delivered_msgs_per_sec"]:.0f} msg/s, p50 {t["latency"]["p50_ms"]} p99 {t["latency"]["p99_ms"]} ms, broker {cpu} µs CPU/msg, {t["delivered"]}/{t["expected_deliveries"]}'
    rows.append(line)
for r in rows:
    print(f'## {r["broker"]}')
    for k, v in r.items():
        if k != "broker":
            print(f"- {k}: {v}")
PY
