#!/usr/bin/env bash
# Throughput across two edges: a nats-server and two `mqtt-edge` processes (release build,
# anonymous access, otherwise defaults) on loopback; publishers connect to edge A, subscribers
# to edge B, so every message crosses the bus. Each row counts what was lost, reordered and
# duplicated (`hermes bench throughput --subscriber-port`), next to the same run on one edge.
# Sessions live in a Redis too, and NATS keeps QoS 1/2 messages between edges in JetStream
# (`bus.keep_secs`; HERMES_BUS__KEEP_SECS=0 to measure without). Then one publish fans out to FANOUT_CLIENTS (16000) subscribers,
# half on each edge; a third edge stops (SIGTERM) under STORM_CLIENTS (5000) persistent clients,
# which reconnect to edge B and take their sessions along (`hermes bench storm --signal TERM`);
# the last run kills edge A with as many on it, which reconnect to edge B (`hermes bench storm`).
# Usage: scripts/bench-cluster.sh [SECONDS]      Results: target/bench-cluster/*.json
# STORMS_ONLY=1 runs the drain and the storm alone.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-20}
OUT=target/bench-cluster
mkdir -p "$OUT"
# shellcheck source=scripts/deps.sh
source scripts/deps.sh
start_cluster_bench
# With JetStream, as in production: QoS 1/2 messages between edges are kept there too
# (bus.keep_secs), for the sessions of an edge that dies; sessions are claimed and persistent
# ones journaled in Redis.
start_bench_backends "$OUT"
start_edge() { start_bench_edge "$1" "$2" "$OUT" "${3:-}"; }

A_PORT=$(free_port)
B_PORT=$(free_port)
# Edge B's metrics: how the sessions arriving there in the drain and the storm were replayed to.
B_OPS=$(free_port)
A=$(start_edge edge-a "$A_PORT"); pids+=("$A")
B=$(start_edge edge-b "$B_PORT" "$B_OPS"); pids+=("$B")
arrivals() { # $1 report: edge B's counters of arriving sessions so far
    curl -s "127.0.0.1:$B_OPS/metrics" | grep -E '^hermes_edge_(cluster_arrival|sessions_moved)' > "$OUT/$1.arrivals" || true
}

run() { # $1 name, rest: bench args
    local name=$1; shift
    echo "== $name: hermes bench $*" >&2
    "$HERMES" bench --port "$A_PORT" --pid "$A" --json "$@" > "$OUT/$name.json"
}

if [ -z "${STORMS_ONLY:-}" ]; then
run cross-qos1-1to1 throughput --subscriber-port "$B_PORT" --publishers 1 --subscribers 1 --qos 1 --seconds "$SECS"
run cross-qos1-100to100 throughput --subscriber-port "$B_PORT" --publishers 100 --subscribers 100 --qos 1 --seconds "$SECS"
run cross-qos0-100to100 throughput --subscriber-port "$B_PORT" --publishers 100 --subscribers 100 --qos 0 --seconds "$SECS"
run local-qos1-1to1 throughput --publishers 1 --subscribers 1 --qos 1 --seconds "$SECS"
# Durable streams across the edges: every message appended to its stream in Redis first.
run cross-stream-qos1-1to1 throughput --subscriber-port "$B_PORT" --publishers 1 --subscribers 1 --qos 1 \
    --seconds "$SECS" --stream-topics
run cross-stream-qos1-100to100 throughput --subscriber-port "$B_PORT" --publishers 100 --subscribers 100 --qos 1 \
    --seconds "$SECS" --stream-topics
# One QoS 0 publish on edge A to FANOUT_CLIENTS (16000: this process holds them all, under a
# common 20000-descriptor limit) subscribers, half of them on edge B.
FAN=${FANOUT_CLIENTS:-16000}
echo "== fanout: hermes bench fanout -n $FAN --second-port $B_PORT" >&2
"$HERMES" bench --port "$A_PORT" --pid "$A" --json fanout -n "$FAN" --second-port "$B_PORT" > "$OUT/fanout.report"
fi
STORM=${STORM_CLIENTS:-5000}
# A drain: edge C stops (SIGTERM) under STORM persistent clients, which reconnect to edge B;
# each session is handed over and replays from the bus what reached nobody while it moved.
C_PORT=$(free_port)
C=$(start_edge edge-c "$C_PORT"); pids+=("$C")
echo "== drain: hermes bench storm -n $STORM --signal TERM (edge C stopped)" >&2
"$HERMES" bench --port "$C_PORT" --mqtt-version 5 --json storm -n "$STORM" --fallback-port "$B_PORT" --kill-pid "$C" \
    --signal TERM > "$OUT/drain.report"
arrivals drain
# Last, as it kills edge A: the reconnect storm of its clients to edge B.
echo "== storm: hermes bench storm -n $STORM (edge A killed)" >&2
"$HERMES" bench --port "$A_PORT" --mqtt-version 5 --json storm -n "$STORM" --fallback-port "$B_PORT" --kill-pid "$A" \
    > "$OUT/storm.report"
arrivals storm
if grep -q panicked "$OUT"/edge-*.log; then echo "an edge panicked: see $OUT/edge-*.log" >&2; exit 1; fi
if [ -z "${STORMS_ONLY:-}" ]; then
    report_edge_runs "$OUT"
    echo "$OUT/fanout.report:"; cat "$OUT/fanout.report"
fi
for r in drain storm; do
    echo "$OUT/$r.report:"; cat "$OUT/$r.report"
    echo "edge B's counters after it (so far):"; cat "$OUT/$r.arrivals"
done
