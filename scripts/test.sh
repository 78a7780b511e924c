#!/usr/bin/env bash
# Runs every test of the project. Installs what the tests need when it is missing
# (MQTT reference clients, paho-mqtt), then: format check, clippy, and the whole test suite.
# Usage: scripts/test.sh            (from anywhere in the checkout)
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n==> %s\n' "$*"; }

need_apt=()
command -v mosquitto_pub >/dev/null || need_apt+=(mosquitto-clients)
command -v mosquitto >/dev/null || need_apt+=(mosquitto)
if ((${#need_apt[@]})); then
    say "installing ${need_apt[*]} (Debian packages) for the interoperability tests"
    if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
if ! python3 -c 'import paho.mqtt' 2>/dev/null; then
    say "installing paho-mqtt (PyPI) for the Python client tests"
    python3 -m pip install -q 'paho-mqtt>=2,<3'
fi

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings

say "cargo test (unit, integration and real-client tests)"
cargo test --workspace
