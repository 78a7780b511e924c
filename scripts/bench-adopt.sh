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
{ command -v nats-server && command -v redis-server; } >/dev/null || install_deps
start_cluster_bench
NATS_PORT=$(free_port)
rm -rf "$OUT/jetstream"
nats-server -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$OUT/jetstream" > "$OUT/nats.log" 2>&1 &
pids+=($!)
start_bench_redis "$OUT"
pids+=("$REDIS_PID")
start_edge() { # $1 name, $2 port; prints the pid once the port answers
    HERMES_BUS__KEEP_SECS=$KEEP RUST_LOG=warn,mqtt_edge::adopt=info "$EDGE" --mqtt-addr "127.0.0.1:$2" \
        --mqtt-ws-addr '' --ops-addr '' --allow-anonymous --bus-nats-url "nats://127.0.0.1:$NATS_PORT" \
        --bus-node-id "$1" --state-redis-url "redis://127.0.0.1:$REDIS_PORT/0" > "$OUT/$1.log" 2>&1 &
    local pid=$!
    wait_for_port "$2" || true
    echo $pid
}
A_PORT=$(free_port)
B_PORT=$(free_port)
sleep 0.5
A=$(start_edge edge-a "$A_PORT"); pids+=("$A")
B=$(start_edge edge-b "$B_PORT"); pids+=("$B")
echo "== adopt: hermes bench storm -n $N --away-secs $AWAY (edge A killed; bus.keep_secs $KEEP)" >&2
"$HERMES" bench --port "$A_PORT" --mqtt-version 5 --json storm -n "$N" --fallback-port "$B_PORT" --kill-pid "$A" \
    --away-secs "$AWAY" > "$OUT/adopt.json"
if grep -q panicked "$OUT"/edge-*.log; then echo "an edge panicked: see $OUT/edge-*.log" >&2; exit 1; fi
grep -h "dead edge\|died" "$OUT/edge-b.log" || true
cat "$OUT/adopt.json"
