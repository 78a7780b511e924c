#!/usr/bin/env bash
# Throughput at every broker's default settings, side by side: Hermes (`hermes up`, release
# build, anonymous access on, nothing else changed) and Mosquitto 2 (a listener and
# allow_anonymous, nothing else). Each row counts what was lost, reordered and duplicated by
# the sequence number every publisher stamps (`hermes bench throughput`).
# Usage: scripts/bench-defaults.sh [SECONDS]      Results: target/bench-defaults/*.json
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-20}
OUT=target/bench-defaults

# Nothing changed from either broker's defaults.
HERMES_ENV=""
MOSQUITTO_EXTRA=""
# shellcheck source=scripts/brokers.sh
source scripts/brokers.sh

for b in hermes mosquitto; do
    run $b qos1-100to100 throughput --publishers 100 --subscribers 100 --qos 1 --seconds "$SECS"
    run $b qos0-100to100 throughput --publishers 100 --subscribers 100 --qos 0 --seconds "$SECS"
    run $b qos1-1to1 throughput --publishers 1 --subscribers 1 --qos 1 --seconds "$SECS"
    run $b qos1-half-load throughput --publishers 100 --subscribers 100 --qos 1 --rate 10000 --seconds 10
done
if grep -q panicked "$OUT/hermes.log"; then echo "hermes panicked: see $OUT/hermes.log" >&2; exit 1; fi
report
