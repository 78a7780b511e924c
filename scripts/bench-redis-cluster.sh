#!/usr/bin/env bash
# What a Redis Cluster costs against one Redis: `hermes up` with persistent subscribers (every
# message written to the session journal before the publisher's PUBACK), its state on one
# redis-server, then on a Redis Cluster of three primaries on this machine
# (`state.redis_url = redis+cluster://...`), alternating. Usage:
# scripts/bench-redis-cluster.sh [SECS] [ROUNDS] — results in target/bench-redis-cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-8}
ROUNDS=${2:-2}
OUT="$PWD/target/bench-redis-cluster"
HERMES_ENV=""
MOSQUITTO_EXTRA=""
source scripts/brokers.sh
command -v redis-cli >/dev/null || { echo "redis-cli not installed (scripts/deps.sh installs Redis)" >&2; exit 1; }
rm -rf "$OUT"/node-* "$OUT"/*.json
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true' EXIT
SINGLE=$(free_port)
redis-server --port "$SINGLE" --bind 127.0.0.1 --save '' --appendonly no --dir "$OUT" > /dev/null 2>&1 &
PIDS+=($!)
NODES=()
for _ in 1 2 3; do
    port=$(free_port)
    mkdir -p "$OUT/node-$port"
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$OUT/node-$port" \
        --cluster-enabled yes --cluster-config-file "$OUT/node-$port/nodes.conf" > /dev/null 2>&1 &
    PIDS+=($!)
    NODES+=("127.0.0.1:$port")
done
for node in "$SINGLE" "${NODES[@]##*:}"; do wait_for_port "$node"; done
redis-cli --cluster create "${NODES[@]}" --cluster-replicas 0 --cluster-yes > /dev/null
until redis-cli -p "${NODES[0]##*:}" cluster info | grep -q cluster_state:ok; do sleep 0.2; done

for round in $(seq "$ROUNDS"); do
    for kind in single cluster; do
        if [ "$kind" = single ]; then
            redis-cli -p "$SINGLE" flushall > /dev/null
            HERMES_ENV="HERMES_STATE__REDIS_URL=redis://127.0.0.1:$SINGLE/0"
        else
            for node in "${NODES[@]}"; do redis-cli -p "${node##*:}" flushall > /dev/null; done
            HERMES_ENV="HERMES_STATE__REDIS_URL=redis+cluster://${NODES[0]},${NODES[1]}"
        fi
        run hermes "$kind-100to100-$round" throughput --mqtt-version 5 --publishers 100 --subscribers 100 \
            --qos 1 --seconds "$SECS" --persistent-subscribers
        run hermes "$kind-1to1-$round" throughput --mqtt-version 5 --publishers 1 --subscribers 1 \
            --qos 1 --seconds "$SECS" --persistent-subscribers
    done
done
if grep -q panicked "$OUT/hermes.log"; then echo "hermes panicked: see $OUT/hermes.log" >&2; exit 1; fi
report
