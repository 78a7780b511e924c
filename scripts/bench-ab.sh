#!/usr/bin/env bash
# Compares brokers on one scenario in alternating rounds, a fresh broker per run, so a change is
# measured against what it changes on the same machine in the same minutes (this machine's
# rate drifts by a third between sittings). Each broker is a `hermes` binary (run as
# `hermes up`, with HERMES_ENV, words of NAME=VALUE, added to its environment) or `mosquitto`.
# One line per run: rate, lost / reordered / duplicated, p99, broker CPU per message.
# Usage: scripts/bench-ab.sh ROUNDS SECS BROKER... [-- hermes bench throughput args]
#   (default args: --publishers 1 --subscribers 1 --persistent-subscribers; QoS 1, MQTT 5)
# Example: git stash; cargo build --release -p hermes; cp target/release/hermes /tmp/hermes-a;
#   git stash pop; cargo build --release -p hermes;
#   scripts/bench-ab.sh 3 6 /tmp/hermes-a target/release/hermes mosquitto
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=$1 SECS=$2
shift 2
BROKERS=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do BROKERS+=("$1"); shift; done
[ $# -gt 0 ] && shift
ARGS=("$@")
[ ${#ARGS[@]} -eq 0 ] && ARGS=(--publishers 1 --subscribers 1 --persistent-subscribers)
OUT=target/bench-ab
PORT=${BENCH_PORT:-21883}
# shellcheck source=scripts/deps.sh
source scripts/deps.sh
mkdir -p "$OUT"
[ -x target/release/hermes ] || cargo build --release -q -p hermes
BENCH=${BENCH:-target/release/hermes}

for _ in $(seq "$ROUNDS"); do
    for broker in "${BROKERS[@]}"; do
        rm -rf "$OUT/data"
        if [ "$broker" = mosquitto ]; then
            printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$PORT" > "$OUT/mosquitto.conf"
            mosquitto -c "$OUT/mosquitto.conf" > "$OUT/mosquitto.log" 2>&1 &
        else
            # shellcheck disable=SC2086
            env ${HERMES_ENV:-} RUST_LOG=warn "$broker" up --allow-anonymous --mqtt-addr "127.0.0.1:$PORT" \
                --mqtt-ws-addr '' --ops-addr '' --http-addr 127.0.0.1:0 --data-dir "$OUT/data" > "$OUT/hermes.log" 2>&1 &
        fi
        pid=$!
        wait_for_port "$PORT" || true
        sleep 1
        "$BENCH" bench --port "$PORT" --pid "$pid" --json --mqtt-version 5 throughput --qos 1 --seconds "$SECS" \
            "${ARGS[@]}" > "$OUT/run.json" 2> "$OUT/bench.log"
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        sleep 1
        python3 - "$broker" "$OUT/run.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[2]))
cpu = (d.get("broker_cpu") or {}).get("cpu_us_per_msg")
print(f'{sys.argv[1]}: {d["delivered_msgs_per_sec"]:.0f}/s, lost {d["lost"]}, reordered {d["reordered"]}, '
      f'duplicated {d["duplicated"]}, p99 {d["latency"]["p99_ms"]} ms, broker {cpu} µs/msg')
PY
    done
done
