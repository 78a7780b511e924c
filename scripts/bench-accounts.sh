#!/usr/bin/env bash
# Accounts and token benchmarks (design §8): password logins/s, token refreshes/s, contact
# syncs/s against `hermes up --demo` (SQLite, release build), and token-authenticated MQTT
# CONNECTs/s against its edge. Login rate limiting is turned off for the run (one client
# address makes every request).
# Usage: scripts/bench-accounts.sh [DURATION_SECS] [CONCURRENCY]   (defaults 10 and 16)
# Results: one JSON file per run in target/bench/, and a summary on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/deps.sh
source scripts/deps.sh

DURATION=${1:-10}
CONCURRENCY=${2:-16}
OUT=target/bench
mkdir -p "$OUT"
cargo build --release -q -p hermes
HERMES=target/release/hermes
MQTT_PORT=${BENCH_PORT:-21883}
HTTP_PORT=${BENCH_HTTP_PORT:-21880}
rm -rf "$OUT/accounts-data"
HERMES_HTTP__LOGIN_ATTEMPTS_PER_IP_PER_MINUTE=0 HERMES_HTTP__LOGIN_ATTEMPTS_PER_ACCOUNT_PER_MINUTE=0 RUST_LOG=warn $HERMES up --demo --demo-password 'demo secret' \
    --data-dir "$OUT/accounts-data" --mqtt-addr 127.0.0.1:$MQTT_PORT --mqtt-ws-addr '' \
    --http-addr 127.0.0.1:$HTTP_PORT --ops-addr '' > "$OUT/accounts-hermes.log" 2>&1 &
PID=$!
trap 'kill -TERM $PID 2>/dev/null || true; wait $PID 2>/dev/null || true' EXIT
wait_for_port "$HTTP_PORT" || true

summary() { python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[2], {k: r.get(k) for k in ("ops_per_sec","connects_per_sec","failed","latency","setup","broker_cpu") if k in r})' "$@"; }

for op in login refresh contacts; do
    # e.g. hermes bench --pid P --password 'demo secret' accounts --op login --enterprise acme --user alice
    $HERMES bench --pid $PID --password 'demo secret' --json accounts --http 127.0.0.1:$HTTP_PORT --op $op \
        --enterprise acme --user alice --concurrency "$CONCURRENCY" --duration-secs "$DURATION" > "$OUT/accounts-$op.json"
    summary "$OUT/accounts-$op.json" "$op"
done

TOKEN=$(python3 - "$HTTP_PORT" <<'PY'
import json, sys, urllib.request
req = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/v1/login", method="POST",
    data=json.dumps({"enterprise": "acme", "username": "alice", "password": "demo secret"}).encode(),
    headers={"content-type": "application/json"})
print(json.load(urllib.request.urlopen(req))["access_token"])
PY
)
for v in 3 5; do
    # hermes bench --password <access token> --connect-rate 100000 connections -n 10000
    $HERMES bench --port $MQTT_PORT --pid $PID --mqtt-version $v --password "$TOKEN" --connect-rate 100000 --json \
        connections -n 10000 --hold-secs 1 > "$OUT/token-connects-v$v.json"
    summary "$OUT/token-connects-v$v.json" "token CONNECT v$v"
    sleep 3
done
