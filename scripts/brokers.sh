# Sourced by the benchmark scripts (after setting OUT, and optionally BENCH_PORT, HERMES_ENV and
# MOSQUITTO_EXTRA): checks Mosquitto is there, builds the release `hermes`, and starts a broker
# on 127.0.0.1:$PORT with its files in $OUT, and stops it. Hermes is `$HERMES up` with `HERMES_ENV` (words of NAME=VALUE) added to its
# environment; Mosquitto gets a listener, anonymous access and `MOSQUITTO_EXTRA` (config lines).

# shellcheck source=scripts/deps.sh
source scripts/deps.sh
mkdir -p "$OUT"
command -v mosquitto >/dev/null || { echo "mosquitto not installed (apt-get install mosquitto)" >&2; exit 1; }
cargo build --release -q -p hermes
HERMES=target/release/hermes
PORT=${BENCH_PORT:-21883}

start_broker() { # $1 = hermes|mosquitto; prints the pid once the port answers
    case $1 in
        hermes)
            rm -rf "$OUT/data"
            # shellcheck disable=SC2086
            env ${HERMES_ENV:-} RUST_LOG=warn "$HERMES" up --allow-anonymous --mqtt-addr "127.0.0.1:$PORT" \
                --mqtt-ws-addr '' --ops-addr '' --http-addr 127.0.0.1:0 --data-dir "$OUT/data" \
                > "$OUT/hermes.log" 2>&1 &
            ;;
        mosquitto)
            printf 'listener %s 127.0.0.1\nallow_anonymous true\n%b' "$PORT" "${MOSQUITTO_EXTRA:-}" > "$OUT/mosquitto.conf"
            mosquitto -c "$OUT/mosquitto.conf" > "$OUT/mosquitto.log" 2>&1 &
            ;;
    esac
    local pid=$!
    wait_for_port "$PORT" || true
    echo $pid
}

stop_broker() { kill -TERM "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; sleep 1; }

run() { # $1 broker, $2 name, rest: bench args; the JSON goes to $OUT/<broker>-<name>.json
    local broker=$1 name=$2; shift 2
    local pid
    pid=$(start_broker "$broker")
    sleep 1
    echo "== $broker $name: hermes bench $*" >&2
    "$HERMES" bench --port "$PORT" --pid "$pid" --json "$@" > "$OUT/$broker-$name.json"
    stop_broker "$pid"
}

report() { # one line per run in $OUT: rate and what was lost, reordered and duplicated
    for f in "$OUT"/*.json; do
        python3 - "$f" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
cpu = (d.get("broker_cpu") or {}).get("cpu_us_per_msg")
print(f'{sys.argv[1]}: {d["delivered_msgs_per_sec"]}/s delivered, lost {d["lost"]}, reordered {d["reordered"]}, '
      f'duplicated {d["duplicated"]}, p50 {d["latency"]["p50_ms"]} ms, p99 {d["latency"]["p99_ms"]} ms, broker {cpu} µs/msg')
PY
    done
}
