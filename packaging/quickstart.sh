#!/usr/bin/env bash
# Flotilla quickstart: install what is missing, build, run the demo fleet.
#
#   bash packaging/quickstart.sh [--keep-running] [--agents N]
#
# The demo (packaging/demo/run.sh, docs/demo.md) starts a local fleet on
# 127.0.0.1: mosquitto with mutual TLS and ACLs, the controller with its
# dashboard and N agents (default 6) of two hardware classes, each with its
# own state directory. It makes keys and a root-signed keyring, a tiny GGUF
# model v1 that it rolls out in waves, a fine-tuned v2 (few bytes move), a
# broken v3 that the failure gate halts, shows a tampered bundle and a
# replay refused, asks a device's local API a question and prints the
# dashboard's address. Everything stops at the end or on Ctrl-C;
# --keep-running keeps the fleet up until Ctrl-C or the `kill PID` it
# prints (tests/integration/demo_keep_running.sh).
#
# Environment: FLOTILLA_BUILD_DIR (default build/dev: the `dev` preset).
set -euo pipefail
cd "$(dirname "$0")/.."
for a in "$@"; do
  case $a in
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
  esac
done

bash packaging/deps.sh
B=${FLOTILLA_BUILD_DIR:-build/dev}
echo "== building (cmake preset dev in $B)"
cmake --preset dev -B "$B" >/dev/null
cmake --build "$B" -j "$(nproc)" --target flotilla flotilla-controller flotilla-agent \
  mkmodel finetune rt-runner | tail -1
exec bash packaging/demo/run.sh "$B" "$@"
