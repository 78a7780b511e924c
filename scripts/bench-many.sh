#!/usr/bin/env bash
# Many idle connections across several edge processes sharing one port (SO_REUSEPORT), with
# several load-generator processes: one process may hold at most 20 000 open files here.
# Usage: scripts/bench-many.sh [TOTAL] [EDGES] [LOADGENS]     (defaults 100000 7 6)
set -euo pipefail
cd "$(dirname "$0")/.."
TOTAL=${1:-100000}
EDGES=${2:-7}
GENS=${3:-6}
PORT=${BENCH_PORT:-21885}
OUT=target/bench
mkdir -p "$OUT"
cargo build --release -q -p hermes
HERMES=target/release/hermes
pids=()
for i in $(seq "$EDGES"); do
    HERMES_MQTT__REUSE_PORT=true RUST_LOG=warn $HERMES up --allow-anonymous --mqtt-addr 127.0.0.1:$PORT --mqtt-ws-addr '' --ops-addr '' \
        --data-dir "$OUT/data-$i" > "$OUT/edge-$i.log" 2>&1 &
    pids+=($!)
done
sleep 2
rss() { local t=0; for p in "${pids[@]}"; do t=$((t + $(awk '/VmRSS/{print $2}' /proc/$p/status))); done; echo $t; }
before=$(rss)
per=$((TOTAL / GENS))
start=$(date +%s.%N)
gens=()
for g in $(seq "$GENS"); do
    $HERMES bench --port $PORT --json --connect-rate 2000 connections -n $per --hold-secs 40 > "$OUT/many-$g.json" 2> "$OUT/many-$g.err" &
    gens+=($!)
done
sleep $(( per / 2000 + 20 ))
after=$(rss)
conns=$(ss -Htn state established "( sport = :$PORT )" | wc -l)
fds=(); for p in "${pids[@]}"; do fds+=("$(ls /proc/$p/fd | wc -l)"); done
for g in "${gens[@]}"; do wait "$g"; done
end=$(date +%s.%N)
connected=$(python3 -c "import json,glob; print(sum(json.load(open(f))['connected'] for f in glob.glob('$OUT/many-*.json')))")
failed=$(python3 -c "import json,glob; print(sum(json.load(open(f))['failed'] for f in glob.glob('$OUT/many-*.json')))")
echo "edges: $EDGES, load generators: $GENS, requested: $TOTAL"
echo "connected: $connected, failed: $failed, established at the edge port while held: $conns"
echo "edge RSS total: before ${before} KiB, while held ${after} KiB, per connection $(( (after - before) / (conns > 0 ? conns : 1) )) KiB"
echo "open files per edge process while held: ${fds[*]}"
for p in "${pids[@]}"; do kill -TERM "$p"; done
wait 2>/dev/null || true
