#!/usr/bin/env bash
# One QoS 0 publish fanned out to TOTAL subscribers spread over EDGES `mqtt-edge` processes of
# one cluster (a nats-server on loopback; the publisher on the first edge, so most deliveries
# cross the bus), each edge's share held by a load-generator process of its own (one process
# may hold at most 20 000 open files here). Each publish carries its wall-clock send time; every
# load generator reports when each round reached its last subscriber.
# Usage: scripts/bench-fanout-many.sh [TOTAL] [EDGES] [ROUNDS]   (defaults 100000 6 3)
# Results: target/bench-fanout-many/*.json and a summary line per round.
set -euo pipefail
cd "$(dirname "$0")/.."
TOTAL=${1:-100000}
EDGES=${2:-6}
ROUNDS=${3:-3}
OUT=target/bench-fanout-many
rm -rf "$OUT"; mkdir -p "$OUT"
# shellcheck source=scripts/deps.sh
source scripts/deps.sh
command -v nats-server >/dev/null || install_deps
start_cluster_bench

NATS_PORT=$(free_port)
nats-server -a 127.0.0.1 -p "$NATS_PORT" > "$OUT/nats.log" 2>&1 &
pids+=($!)
sleep 0.5
ports=(); edges=()
for i in $(seq "$EDGES"); do
    port=$(free_port)
    HERMES_MQTT__TLS_ADDR='' RUST_LOG=warn "$EDGE" --mqtt-addr "127.0.0.1:$port" --mqtt-ws-addr '' --ops-addr '' \
        --allow-anonymous --bus-nats-url "nats://127.0.0.1:$NATS_PORT" --bus-node-id "edge-$i" > "$OUT/edge-$i.log" 2>&1 &
    edges+=($!); pids+=($!)
    wait_for_port "$port" || { echo "edge $i did not start: $OUT/edge-$i.log" >&2; exit 1; }
    ports+=("$port")
done
rss() { local t=0; for p in "${edges[@]}"; do t=$((t + $(awk '/VmRSS/{print $2}' "/proc/$p/status"))); done; echo $t; }
before=$(rss)

per=$((TOTAL / EDGES))
gens=()
for i in $(seq "$EDGES"); do
    n=$((per + (i <= TOTAL % EDGES ? 1 : 0)))
    "$HERMES" bench --port "${ports[$((i - 1))]}" --json --connect-rate 2000 fanout --part subscribers -n "$n" \
        --rounds "$ROUNDS" --ready-file "$OUT/ready-$i" > "$OUT/subscribers-$i.json" 2> "$OUT/subscribers-$i.err" &
    gens+=($!); pids+=($!)
done
# Every subscription acknowledged, then a second for the edges' interest to reach the bus.
deadline=$((SECONDS + per / 2000 + 120))
while [ "$(find "$OUT" -name 'ready-*' | wc -l)" -lt "$EDGES" ]; do
    if [ $SECONDS -gt $deadline ]; then echo "subscribers not ready: see $OUT/subscribers-*.err" >&2; exit 1; fi
    sleep 1
done
sleep 1
held=$(rss)
echo "== $TOTAL subscribers on $EDGES edges; edge RSS ${before} KiB before, ${held} KiB held" >&2
"$HERMES" bench --port "${ports[0]}" --json fanout --part publisher --rounds "$ROUNDS" > "$OUT/publisher.json"
for g in "${gens[@]}"; do wait "$g" || echo "a load generator failed: see $OUT/subscribers-*.err" >&2; done
python3 - "$OUT" "$TOTAL" "$EDGES" "$before" "$held" <<'PY'
import glob, json, sys
out, total, edges, before, held = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
parts = [json.load(open(f)) for f in sorted(glob.glob(f"{out}/subscribers-*.json"))]
subs = sum(p["subscribers"] for p in parts)
print(f"{subs} subscribers on {edges} edges; edge RSS {(held - before) * 1024 // max(subs, 1)} bytes per subscriber")
for r in range(len(parts[0]["rounds"])):
    rounds = [p["rounds"][r] for p in parts]
    got = sum(x["delivered"] for x in rounds)
    last = max(x["time_to_last_ms"] for x in rounds)
    p50 = max(x.get("p50_ms", 0) for x in rounds)
    print(f"round {r}: delivered {got} of {subs} (lost {subs - got}), last after {last} ms, worst part's p50 {p50} ms")
PY
