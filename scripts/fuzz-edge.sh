#!/usr/bin/env bash
# Feeds arbitrary byte streams (valid MQTT 3.1.1/5.0 packets, mutated, and noise) to a real
# edge and fails if a connection handler panics or the edge stops serving.
# Usage: scripts/fuzz-edge.sh [STREAMS] [SEED]       (defaults: 100000, a seed from the clock)
set -euo pipefail
cd "$(dirname "$0")/.."
export HERMES_FUZZ_STREAMS=${1:-100000}
export HERMES_FUZZ_SEED=${2:-$(date +%s)}
echo "fuzzing the edge with $HERMES_FUZZ_STREAMS streams, seed $HERMES_FUZZ_SEED (replay with: $0 $HERMES_FUZZ_STREAMS $HERMES_FUZZ_SEED)"
cargo test --release -p hermes-tests --test e2e fuzz:: -- --nocapture
