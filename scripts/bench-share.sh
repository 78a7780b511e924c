#!/usr/bin/env bash
# Shared subscriptions across two edges (release `mqtt-edge`, NATS with JetStream, Redis): QoS 1
# publishers on edge A, each publisher's topic shared (`$share/bench/...`) by members half on
# edge A, half on edge B (`hermes bench throughput --shared --subscriber-port`). Each message
# must reach one member: lost and duplicated count over all members of a topic.
# Usage: scripts/bench-share.sh [SECS]      Results: target/bench-share/*.json
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
OUT=target/bench-share
mkdir -p "$OUT"
rm -f "$OUT"/*.json
# shellcheck source=scripts/deps.sh
source scripts/deps.sh
start_cluster_bench
EDGE=${EDGE_BIN:-$EDGE} # another build's edges, to compare
start_bench_backends "$OUT"
A_PORT=$(free_port)
B_PORT=$(free_port)
A=$(start_bench_edge edge-a "$A_PORT" "$OUT"); pids+=("$A")
pids+=("$(start_bench_edge edge-b "$B_PORT" "$OUT")")
# nats-server's CPU time so far (ms) and resident memory (KiB).
nats_cpu_ms() { awk -v hz="$(getconf CLK_TCK)" '{ print int(($14 + $15) * 1000 / hz) }' "/proc/$NATS_PID/stat"; }
nats_rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$NATS_PID/status"; }
run() { # $1 name, rest: bench args
    local name=$1; shift
    echo "== $name: hermes bench throughput --shared --subscriber-port B $*" >&2
    local cpu_before; cpu_before=$(nats_cpu_ms)
    "$HERMES" bench --port "$A_PORT" --pid "$A" --mqtt-version 5 --json throughput --shared --subscriber-port "$B_PORT" \
        --qos 1 --seconds "$SECS" "$@" > "$OUT/$name.json"
    python3 - "$OUT/$name.json" "$(( $(nats_cpu_ms) - cpu_before ))" "$(nats_rss_kib)" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
delivered = max(d["delivered"], 1)
print(f'{sys.argv[1]}: nats-server {int(sys.argv[2]) * 1000 / delivered:.1f} ms CPU per 1000 delivered, '
      f'{int(sys.argv[3]) // 1024} MiB resident after')
PY
}
run shared-1to2 --publishers 1 --subscribers 2
run shared-10to20 --publishers 10 --subscribers 20
run shared-1to2-persistent --publishers 1 --subscribers 2 --persistent-subscribers
# Many groups: each is a JetStream consumer (unless bus.share_ack_secs = 0).
run shared-1000to2000 --publishers 1000 --subscribers 2000
if grep -q panicked "$OUT"/edge-*.log; then echo "an edge panicked: see $OUT/edge-*.log" >&2; exit 1; fi
report_edge_runs "$OUT"
