#!/usr/bin/env bash
# Runs every test of the project. Installs what the tests need when it is missing (MQTT
# reference clients, paho-mqtt, PostgreSQL, Redis, nats-server), starts a throwaway Postgres on a free
# loopback port (the tests start their own nats-server and redis-server the same way),
# then: format check, clippy, the whole test suite, and a local cluster's self-check
# (scripts/cluster.sh --smoke).
# Usage: scripts/test.sh            (from anywhere in the checkout)
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/deps.sh
source scripts/deps.sh
install_deps

# A throwaway Postgres on a free loopback port for the accounts backend tests, unless the
# caller points POSTGRES_TEST_URL at one.
if [ -z "${POSTGRES_TEST_URL:-}" ]; then
    trap stop_postgres EXIT
    start_postgres
    say "started Postgres ($PG_BIN) on 127.0.0.1:$PG_PORT for the accounts tests"
    export POSTGRES_TEST_URL="$PG_URL"
fi

say "no key material or data directory is tracked"
tracked=$(git ls-files 2>/dev/null | grep -E '(^|/)hermes-data/|\.(key|pem|rdb)$' || true)
if [ -n "$tracked" ]; then
    echo "key material or a data directory is tracked by git; remove it (git rm --cached) and rotate the key:" >&2
    echo "$tracked" >&2
    exit 1
fi

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings

say "cargo test (unit, integration and real-client tests)"
cargo test --workspace

say "scripts/cluster.sh --smoke (accounts and three edges on Postgres, Redis and NATS; one edge killed)"
scripts/cluster.sh --smoke
