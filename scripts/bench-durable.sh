#!/usr/bin/env bash
# The cost of persistent sessions and of durable streams: QoS 1 through `hermes up` (its session journal in SQLite in
# the data directory, then in a local Redis) with clean subscribers and with persistent ones
# (v5, session expiry an hour), next to Mosquitto with the same clients (it keeps sessions in
# memory and saves them only at intervals). Usage: scripts/bench-durable.sh [SECS] — results
# in target/bench-durable.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-15}
OUT=target/bench-durable

HERMES_ENV=""
MOSQUITTO_EXTRA=""
source scripts/brokers.sh

# Two scenarios, with clean and with persistent subscribers, and both on durable-stream topics
# (inbox-shaped: Hermes appends each message to its stream first); `label` names the runs.
scenarios() { # $1 broker, $2 label
    for kind in plain persistent stream stream-persistent; do
        case $kind in
            plain) flag="" ;;
            persistent) flag=--persistent-subscribers ;;
            stream) flag=--stream-topics ;;
            stream-persistent) flag="--stream-topics --persistent-subscribers" ;;
        esac
        run "$1" "$2qos1-100to100-$kind" throughput --mqtt-version 5 --publishers 100 --subscribers 100 --qos 1 \
            --seconds "$SECS" $flag
        run "$1" "$2qos1-1to1-$kind" throughput --mqtt-version 5 --publishers 1 --subscribers 1 --qos 1 \
            --seconds "$SECS" $flag
    done
}
scenarios hermes ""
scenarios mosquitto ""
# hermes up with its journal in Redis instead of the data directory.
start_bench_redis "$OUT"
trap 'kill $REDIS_PID 2>/dev/null || true' EXIT
HERMES_ENV="HERMES_STATE__REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0"
scenarios hermes "redis-"
if grep -q panicked "$OUT/hermes.log"; then echo "hermes panicked: see $OUT/hermes.log" >&2; exit 1; fi
report
