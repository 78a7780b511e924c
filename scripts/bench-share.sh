#!/usr/bin/env bash
# A shared subscription across two edges: N QoS 1 messages published (mosquitto_pub -l, one
# connection) on edge A to `$share/w/jobs/#`, with one member (mosquitto_sub, v5) on each of edges
# A and B (release `mqtt-edge`, NATS with JetStream, Redis). Reports when all were received,
# how they were split and how many distinct ones arrived. A check with stock clients, not
# `hermes bench` (which has no shared-subscription scenario yet).
# Usage: scripts/bench-share.sh [N]      Logs and received payloads: target/bench-share
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-50000}
OUT=target/bench-share
mkdir -p "$OUT"
# shellcheck source=scripts/deps.sh
source scripts/deps.sh
command -v mosquitto_pub >/dev/null || install_deps
start_cluster_bench
start_bench_backends "$OUT"
A_PORT=$(free_port)
B_PORT=$(free_port)
pids+=("$(start_bench_edge edge-a "$A_PORT" "$OUT")")
pids+=("$(start_bench_edge edge-b "$B_PORT" "$OUT")")
# shellcheck disable=SC2016 # `$share` is a literal MQTT filter
for member in a:"$A_PORT" b:"$B_PORT"; do
    mosquitto_sub -V 5 -q 1 -h 127.0.0.1 -p "${member#*:}" -i "worker-${member%%:*}" -t '$share/w/jobs/#' \
        > "$OUT/worker-${member%%:*}.out" &
    pids+=($!)
done
sleep 1
received() { cat "$OUT"/worker-*.out | wc -l; }
started=$(date +%s.%N)
seq 1 "$N" | mosquitto_pub -V 5 -q 1 -h 127.0.0.1 -p "$A_PORT" -i publisher -t jobs/build -l
published=$(date +%s.%N)
for _ in $(seq 600); do [ "$(received)" -ge "$N" ] && break; sleep 0.1; done
ended=$(date +%s.%N)
distinct=$(sort -u "$OUT"/worker-*.out | wc -l)
python3 - "$N" "$started" "$published" "$ended" "$(received)" "$distinct" \
    "$(wc -l < "$OUT/worker-a.out")" "$(wc -l < "$OUT/worker-b.out")" <<'PY'
import sys
n, started, published, ended = int(sys.argv[1]), *map(float, sys.argv[2:5])
got, distinct, a, b = map(int, sys.argv[5:9])
print(f"{n} published in {published - started:.2f} s; {got} received ({distinct} distinct, {n - distinct} lost) "
      f"in {ended - started:.2f} s: {distinct / (ended - started):.0f}/s; edge a {a}, edge b {b}")
PY
if grep -q panicked "$OUT"/edge-*.log; then echo "an edge panicked: see $OUT/edge-*.log" >&2; exit 1; fi
