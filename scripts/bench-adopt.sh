#!/usr/bin/env bash
# A dead edge's sessions taken by a live one: N persistent clients on edge A (release
# `mqtt-edge`, NATS with JetStream, Redis), each with a QoS 1 message in flight; A is killed
# (-9) and its clients stay away AWAY seconds, longer than NATS keeps what edges route to each
# other (`bus.keep_secs` = KEEP). One message is published to each session through edge B at
# once, one more once B has taken the sessions; then every client comes back to B. Reports when
# B had taken them and what of each arrived (`hermes bench storm --away-secs`).
# Usage: scripts/bench-adopt.sh [N] [AWAY] [KEEP]      Results: target/bench-adopt/adopt.json
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-5000}
AWAY=${2:-45}
KEEP=${3:-30}
OUT=target/bench-adopt
mkdir -p "$OUT"
# shellcheck source=scripts/deps.sh
source scripts/deps.sh
start_cluster_bench
start_bench_backends "$OUT"
EDGE_ENV="HERMES_BUS__KEEP_SECS=$KEEP"
EDGE_LOG=warn,mqtt_edge::adopt=info
start_edge() { start_bench_edge "$1" "$2" "$OUT"; }
A_PORT=$(free_port)
B_PORT=$(free_port)
A=$(start_edge edge-a "$A_PORT"); pids+=("$A")
B=$(start_edge edge-b "$B_PORT"); pids+=("$B")
echo "== adopt: hermes bench storm -n $N --away-secs $AWAY (edge A killed; bus.keep_secs $KEEP)" >&2
"$HERMES" bench --port "$A_PORT" --mqtt-version 5 --json storm -n "$N" --fallback-port "$B_PORT" --kill-pid "$A" \
    --away-secs "$AWAY" > "$OUT/adopt.json"
if grep -q panicked "$OUT"/edge-*.log; then echo "an edge panicked: see $OUT/edge-*.log" >&2; exit 1; fi
grep -ah "dead edge\|died" "$OUT/edge-b.log" | sed "s/\x1b\[[0-9;]*m//g" || true
cat "$OUT/adopt.json"
