#!/usr/bin/env bash
# A local Hermes cluster to watch: a throwaway Postgres, redis-server and nats-server (installed
# when missing, as scripts/test.sh does), one `accounts` node and three edges (edge-1..3) on free
# loopback ports, each with its files and log in a temp dir; a demo enterprise `acme` with users
# alice and bob (friends). It prints how to connect, listen through edge 1, send through edge 2,
# kill an edge, and where the logs are, then stays up until Ctrl-C, which stops everything it
# started and removes its temp dirs.
#
# Usage: scripts/cluster.sh [--release] [--smoke]
#   --release  build and run release binaries (default: debug)
#   --smoke    self-check instead of staying up: alice listens through edge 1, bob sends through
#              edge 2, edge 3 is killed (-9) meanwhile, and a second message must still arrive;
#              exits 0 only when all of it works
# CARGO        how to run cargo (default `cargo`), e.g. CARGO="flock /tmp/cargo.lock cargo"
set -euo pipefail
cd "$(dirname "$0")/.."

profile=debug
smoke=false
for arg in "$@"; do
    case $arg in
        --release) profile=release ;;
        --smoke) smoke=true ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "cluster.sh: unknown argument $arg (see --help)" >&2; exit 2 ;;
    esac
done

# shellcheck source=scripts/deps.sh
source scripts/deps.sh

ENTERPRISE=acme
t0=$SECONDS
DIR=                # this run's temp dir (Postgres has its own: PG_DIR)
PIDS=() NAMES=()    # every process this script started, in start order
watching=false      # in the loop that reports processes ending

# Whether PID is a live child of this script: what it started and has not ended. A pid that
# ended may be reused by anyone's new process: only our children are ever signalled.
ours() {
    local stat state ppid
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }   # after the command name: state, ppid, ...
    read -r state ppid _ <<<"$stat"
    [ "$state" != Z ] && [ "$ppid" = "$$" ]
}

cleanup() {
    local status=$? i pid waited
    set +e
    trap '' INT TERM    # a second Ctrl-C does not leave half of it running
    ! $watching || exec 2>&9   # the watch loop's stderr was /dev/null
    if ((${#PIDS[@]})); then
        echo "stopping what cluster.sh started..." >&2
        for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
            ours "${PIDS[i]}" && kill -TERM "${PIDS[i]}" 2>/dev/null
        done
        for ((waited = 0; waited < 100; waited++)); do
            local left=0
            for pid in "${PIDS[@]}"; do ours "$pid" && left=1; done
            ((left)) || break
            sleep 0.1
        done
        for i in "${!PIDS[@]}"; do
            if ours "${PIDS[i]}"; then
                echo "${NAMES[i]} (pid ${PIDS[i]}) did not stop in 10 s: killed" >&2
                kill -KILL "${PIDS[i]}" 2>/dev/null
            fi
        done
        for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
    fi
    stop_postgres
    [ -z "$DIR" ] || rm -rf "$DIR"
    if ((${#PIDS[@]})) || [ -n "$DIR" ]; then echo "stopped; temp dirs removed" >&2; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

die() { # MESSAGE [LOG...]: says what failed, with the end of each log, and exits 1
    echo >&2
    if $smoke; then echo "cluster.sh --smoke FAILED: $1" >&2; else echo "cluster.sh: $1" >&2; fi
    shift
    local log
    for log in "$@"; do
        [ -f "$log" ] || continue
        echo "--- the end of $log:" >&2
        tail -n 15 "$log" >&2
    done
    exit 1
}

# launch NAME LOG CMD...: starts CMD in the background with its output in LOG; pid in LAST_PID.
launch() {
    local name=$1 log=$2
    shift 2
    "$@" >"$log" 2>&1 </dev/null &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
    NAMES+=("$name")
}

# listening NAME PID PORT LOG: waits until 127.0.0.1:PORT accepts (30 s). Fails when PID ends
# first (a port taken since free_port picked it, a bad setting: LOG says which).
listening() {
    local name=$1 pid=$2 port=$3 log=$4 i
    for ((i = 0; i < 300; i++)); do
        ours "$pid" || { wait "$pid" 2>/dev/null || true; return 1; }
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    die "$name (pid $pid) did not listen on 127.0.0.1:$port within 30 s" "$log"
}

# start NAME LOG PORT_VAR START_FN: START_FN launches NAME (reading ports free_port picked) and
# sets PORT_VAR to the port that answers once it is ready; three tries with new ports.
start() {
    local name=$1 log=$2 port_var=$3 fn=$4 try
    for try in 1 2 3; do
        "$fn"
        listening "$name" "$LAST_PID" "${!port_var}" "$log" && return 0
        echo "$name exited at start (try $try of 3)" >&2
    done
    die "$name does not start" "$log"
}

# api METHOD PATH [JSON]: the accounts API with the admin key; prints the answer's body.
api() {
    python3 - "http://127.0.0.1:$HTTP_PORT" "${ADMIN_KEY:-}" "$@" <<'PY'
import sys, urllib.request, urllib.error
base, key, method, path = sys.argv[1:5]
body = sys.argv[5].encode() if len(sys.argv) > 5 else None
headers = {"content-type": "application/json"}
if key:
    headers["x-admin-key"] = key
req = urllib.request.Request(base + path, data=body, method=method, headers=headers)
try:
    with urllib.request.urlopen(req, timeout=10) as r:
        print(r.read().decode())
except urllib.error.HTTPError as e:
    sys.exit(f"{method} {path}: HTTP {e.code}: {e.read().decode()}")
except OSError as e:
    sys.exit(f"{method} {path}: {e}")
PY
}

json_field() { python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

# -- what the cluster runs on ------------------------------------------------------------------

install_deps
read -ra cargo <<<"${CARGO:-cargo}"
say "building accounts, mqtt-edge and hermes ($profile)"
build=("${cargo[@]}" build -p accounts -p mqtt-edge -p hermes)
[ "$profile" = debug ] || build+=(--release)
"${build[@]}" || die "cargo build failed (${build[*]})"
BIN=$(cd "${CARGO_TARGET_DIR:-target}/$profile" && pwd)
HERMES=$BIN/hermes
build_secs=$((SECONDS - t0))
t1=$SECONDS

DIR=$(mktemp -d /tmp/hermes-cluster.XXXXXX)
mkdir -p "$DIR"/{redis,nats,accounts,edge-1,edge-2,edge-3,clients}

say "starting Postgres, Redis, NATS, accounts and three edges on 127.0.0.1 (files in $DIR)"
start_postgres || die "Postgres does not start"

run_redis() {
    REDIS_PORT=$(free_port)
    launch redis "$DIR/redis/redis.log" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 \
        --save '' --appendonly no --dir "$DIR/redis"
}
start redis "$DIR/redis/redis.log" REDIS_PORT run_redis
REDIS_PID=$LAST_PID
REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"

run_nats() {
    NATS_PORT=$(free_port)
    launch nats "$DIR/nats/nats.log" nats-server -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$DIR/nats/jetstream"
}
start nats "$DIR/nats/nats.log" NATS_PORT run_nats
NATS_PID=$LAST_PID
NATS_URL="nats://127.0.0.1:$NATS_PORT"

# The accounts node is ready once its ops endpoint answers: it binds that after the API.
run_accounts() {
    HTTP_PORT=$(free_port)
    ACCOUNTS_OPS_PORT=$(free_port)
    launch accounts "$DIR/accounts/accounts.log" "$BIN/accounts" --data-dir "$DIR/accounts/data" \
        --http-addr "127.0.0.1:$HTTP_PORT" --ops-addr "127.0.0.1:$ACCOUNTS_OPS_PORT" \
        --http-database-url "$PG_URL" --bus-nats-url "$NATS_URL" --state-redis-url "$REDIS_URL"
}
start accounts "$DIR/accounts/accounts.log" ACCOUNTS_OPS_PORT run_accounts
ACCOUNTS_PID=$LAST_PID
ADMIN_KEY=$(tr -d '[:space:]' <"$DIR/accounts/data/admin.key")
PUBLIC_KEY=$(api GET /v1/token/public-key | json_field public_key) || die "no token public key from the accounts API" "$DIR/accounts/accounts.log"

# Three edges, each on its own MQTT (TCP) port, all on one WebSocket port (SO_REUSEPORT: the
# kernel spreads WebSocket clients over the edges alive). An edge is ready once its ops endpoint
# answers: it binds that last, after it joined the bus and follows account events.
EDGE_PID=() EDGE_PORT=() EDGE_OPS=()
run_edge() {
    [ "$n" != 1 ] || WS_PORT=$(free_port)   # the others join the port edge-1 holds
    MQTT_PORT=$(free_port)
    OPS_PORT=$(free_port)
    launch "edge-$n" "$DIR/edge-$n/edge-$n.log" env HERMES_AUTH__TOKEN_PUBLIC_KEY="$PUBLIC_KEY" \
        HERMES_MQTT__REUSE_PORT=true HERMES_MQTT__TLS_ADDR= \
        "$BIN/mqtt-edge" --bus-node-id "edge-$n" --mqtt-addr "127.0.0.1:$MQTT_PORT" \
        --mqtt-ws-addr "127.0.0.1:$WS_PORT" --ops-addr "127.0.0.1:$OPS_PORT" \
        --bus-nats-url "$NATS_URL" --state-redis-url "$REDIS_URL"
}
for n in 1 2 3; do
    start "edge-$n" "$DIR/edge-$n/edge-$n.log" OPS_PORT run_edge
    EDGE_PID[n]=$LAST_PID
    EDGE_PORT[n]=$MQTT_PORT
    EDGE_OPS[n]=$OPS_PORT
done

# -- the demo enterprise -----------------------------------------------------------------------

# Letters and digits only: a password starting with '-' would read as a flag.
PASSWORD=$(python3 -c 'import secrets, string; print("".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(16)))')
api POST /v1/enterprises "{\"name\": \"$ENTERPRISE\"}" >/dev/null || die "cannot create enterprise $ENTERPRISE" "$DIR/accounts/accounts.log"
for user in alice bob; do
    display=${user^}
    api POST "/v1/enterprises/$ENTERPRISE/users" \
        "{\"username\": \"$user\", \"password\": \"$PASSWORD\", \"display_name\": \"$display\"}" >/dev/null \
        || die "cannot create user $user" "$DIR/accounts/accounts.log"
done
# alice's session connects through edge 1, bob's through edge 2; they follow each other (friends:
# each sees the other's presence).
login_cmd() { # USER EDGE
    echo "$HERMES login --http 127.0.0.1:$HTTP_PORT --mqtt 127.0.0.1:${EDGE_PORT[$2]} --enterprise $ENTERPRISE --username $1 --password '$PASSWORD' --session $DIR/clients/$1.json"
}
"$HERMES" login --http "127.0.0.1:$HTTP_PORT" --mqtt "127.0.0.1:${EDGE_PORT[1]}" --enterprise "$ENTERPRISE" \
    --username alice --password "$PASSWORD" --session "$DIR/clients/alice.json" >/dev/null || die "hermes login (alice) failed"
"$HERMES" login --http "127.0.0.1:$HTTP_PORT" --mqtt "127.0.0.1:${EDGE_PORT[2]}" --enterprise "$ENTERPRISE" \
    --username bob --password "$PASSWORD" --session "$DIR/clients/bob.json" >/dev/null || die "hermes login (bob) failed"
"$HERMES" follow bob --session "$DIR/clients/alice.json" >/dev/null || die "hermes follow (alice follows bob) failed"
"$HERMES" follow alice --session "$DIR/clients/bob.json" >/dev/null || die "hermes follow (bob follows alice) failed"
up_secs=$((SECONDS - t1))

# -- the smoke test ----------------------------------------------------------------------------

# seen FILE TEXT SECS: whether a line of FILE holds TEXT within SECS seconds
seen() {
    local i
    for ((i = 0; i < $3 * 10; i++)); do
        grep -qF -- "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# delivered N: bob sends message N through edge 2 until alice's listener (edge 1) prints it
# (three tries, 4 s each: interest reaches the bus shortly after a subscription).
delivered() {
    local text="smoke message $1 from bob through edge-2" try
    for try in 1 2 3; do
        "$HERMES" send --to alice "$text" --session "$DIR/clients/bob.json" >>"$DIR/clients/send.log" 2>&1 \
            || die "hermes send (message $1, through edge-2) failed" "$DIR/clients/send.log" "$DIR/edge-2/edge-2.log"
        [ "$1" != 1 ] || [ "$try" != 1 ] || kill_edge_3
        if seen "$DIR/clients/alice-listen.log" "[bob] $text" 4; then
            echo "  message $1 sent through edge-2 arrived through edge-1 (try $try)"
            return 0
        fi
    done
    die "message $1 sent through edge-2 never reached alice's listener on edge-1" \
        "$DIR/clients/alice-listen.log" "$DIR/edge-1/edge-1.log" "$DIR/edge-2/edge-2.log"
}

# While the first message is on its way, edge 3 (which has a client of its own) dies.
kill_edge_3() {
    # Reaped at once, so bash's job report ("Killed") goes nowhere.
    { kill -KILL "${EDGE_PID[3]}" && wait "${EDGE_PID[3]}"; } 2>/dev/null || true
    echo "  kill -9 edge-3 (pid ${EDGE_PID[3]}) while message 1 is on its way"
}

if $smoke; then
    say "smoke: alice listens through edge-1, bob through edge-3; bob sends through edge-2; edge-3 is killed"
    for n in 1 2 3; do echo "  edge-$n 127.0.0.1:${EDGE_PORT[n]} pid ${EDGE_PID[n]}"; done
    "$HERMES" login --http "127.0.0.1:$HTTP_PORT" --mqtt "127.0.0.1:${EDGE_PORT[3]}" --enterprise "$ENTERPRISE" \
        --username bob --password "$PASSWORD" --session "$DIR/clients/bob-3.json" >/dev/null || die "hermes login (bob, edge-3) failed"
    launch listen-alice "$DIR/clients/alice-listen.log" "$HERMES" listen --session "$DIR/clients/alice.json" --idle-secs 60
    launch listen-bob-3 "$DIR/clients/bob-3-listen.log" "$HERMES" listen --session "$DIR/clients/bob-3.json" --idle-secs 60
    seen "$DIR/clients/alice-listen.log" "listening as alice@$ENTERPRISE" 15 || die "alice's listener did not connect through edge-1" "$DIR/clients/alice-listen.log"
    seen "$DIR/clients/bob-3-listen.log" "listening as bob@$ENTERPRISE" 15 || die "bob's listener did not connect through edge-3" "$DIR/clients/bob-3-listen.log"
    sleep 0.5   # the listeners' interest reaches the bus
    delivered 1
    ! ours "${EDGE_PID[3]}" || die "edge-3 (pid ${EDGE_PID[3]}) still runs after kill -9"
    for n in 1 2; do ours "${EDGE_PID[n]}" || die "edge-$n stopped when edge-3 was killed" "$DIR/edge-$n/edge-$n.log"; done
    delivered 2
    seen "$DIR/clients/bob-3-listen.log" "reconnect" 5 && echo "  bob's listener on edge-3 lost its edge and retries: $(grep -m1 reconnect "$DIR/clients/bob-3-listen.log")"
    for n in 1 2; do ours "${EDGE_PID[n]}" || die "edge-$n stopped" "$DIR/edge-$n/edge-$n.log"; done
    echo "smoke: ok (build ${build_secs} s, cluster up in ${up_secs} s, whole run $((SECONDS - t0)) s)"
    exit 0
fi

# -- stay up for a newcomer to watch -----------------------------------------------------------

H=$HERMES
cat <<EOF

Hermes local cluster is up in ${up_secs} s (files and logs in $DIR; Ctrl-C stops it all and removes them)

  Postgres   127.0.0.1:$PG_PORT      data and log in $PG_DIR
  Redis      $REDIS_URL   pid $REDIS_PID
  NATS       $NATS_URL     pid $NATS_PID
  accounts   http://127.0.0.1:$HTTP_PORT/v1   pid $ACCOUNTS_PID   admin key $ADMIN_KEY
EOF
for n in 1 2 3; do
    echo "  edge-$n     mqtt://127.0.0.1:${EDGE_PORT[n]}   pid ${EDGE_PID[n]}   metrics http://127.0.0.1:${EDGE_OPS[n]}/metrics"
done
cat <<EOF
  all edges  ws://127.0.0.1:$WS_PORT/mqtt   one WebSocket port shared by the three (the kernel picks an edge per client)

Enterprise $ENTERPRISE: users alice and bob (friends), password $PASSWORD
Already logged in (alice through edge-1, bob through edge-2); to log in again:
  $(login_cmd alice 1)
  $(login_cmd bob 2)

Listen through edge-1 (terminal 1), send through edge-2 (terminal 2): the message crosses NATS
  $H listen --session $DIR/clients/alice.json
  $H send --to alice 'hello from edge-2' --session $DIR/clients/bob.json
Or with mosquitto, the access token as the password (hermes send writes protobuf envelopes):
  token() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["access_token"])' "\$1"; }
  mosquitto_sub -p ${EDGE_PORT[1]} -u alice -P "\$(token $DIR/clients/alice.json)" -t $ENTERPRISE/im/msg/alice -v
  mosquitto_pub -p ${EDGE_PORT[2]} -u bob -P "\$(token $DIR/clients/bob.json)" -t $ENTERPRISE/im/msg/alice -m 'hi alice' -q 1

Kill an edge and watch the others carry on:
  kill -9 ${EDGE_PID[3]}     # edge-3: listen (edge-1) and send (edge-2) keep working
  kill -9 ${EDGE_PID[1]}     # edge-1: alice's listen loses its edge and retries; Ctrl-C it and move her to edge-2:
  $(login_cmd alice 2)
  $H listen --session $DIR/clients/alice.json
  WebSocket clients of ws://127.0.0.1:$WS_PORT/mqtt need no move: they reconnect to the same port, to an edge alive.

Logs: tail -f $DIR/edge-*/edge-*.log   (also $DIR/accounts/accounts.log, $DIR/nats/nats.log, $DIR/redis/redis.log)
This script says when one of its processes ends. Ctrl-C stops everything.
EOF

reported=()
exec 9>&2
watching=true
while :; do
    for i in "${!PIDS[@]}"; do
        if [ -z "${reported[i]:-}" ] && ! ours "${PIDS[i]}"; then
            wait "${PIDS[i]}" 2>/dev/null && code=0 || code=$?
            echo "$(date +%T) ${NAMES[i]} (pid ${PIDS[i]}) ended (status $code)"
            reported[i]=1
        fi
    done
    sleep 1
done 2>/dev/null   # bash's own job reports ("Killed"): the line above says it
