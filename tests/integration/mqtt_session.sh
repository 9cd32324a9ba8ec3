#!/usr/bin/env bash
# fl_mqtt (common/src/mqtt.c) against a real mosquitto with mutual TLS and the
# Flotilla ACL on 127.0.0.1: makes a PKI with `flotilla pki`, starts the
# broker (packaging/mosquitto/start-broker.sh) on a free port plus a second
# one whose certificate names only broker.invalid, and runs the C test
# program, which also stops and restarts the first broker.
#
#   mqtt_session.sh PKI_CLI TEST_PROGRAM [ARGS...]   (ARGS: see mqtt_session.c;
#                                                    "bench 64 256 8" measures)
# Bounded by a watchdog; the brokers are stopped on any exit.
set -uo pipefail

if [ $# -lt 2 ]; then
  echo "usage: mqtt_session.sh PKI_CLI TEST_PROGRAM [ARGS...]" >&2
  exit 2
fi
cli=$1
prog=$2
shift 2
src=$(cd "$(dirname "$0")/../.." && pwd)
pkg=$src/packaging/mosquitto

[ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null ||
  { echo "FAIL: mosquitto not installed (apt-get install mosquitto)"; exit 1; }

base=${FL_TEST_TMPDIR:-/tmp}
mkdir -p "$base"
# Run as root, the broker drops to user mosquitto, which must reach its files.
if [ "$(id -u)" = 0 ] && id mosquitto >/dev/null 2>&1 && command -v runuser >/dev/null &&
   ! runuser -u mosquitto -- test -x "$base" 2>/dev/null; then
  base=/tmp
fi
tmp=$(mktemp -d "$base/mqtt_session.XXXXXX")
chmod 0755 "$tmp"

P=$tmp/pki
P2=$tmp/other-ca
W=$tmp/wrong
brokers=()
pids=()
rc=1
cleanup() {
  local d p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  for d in "${brokers[@]}"; do "$pkg/stop-broker.sh" "$d" >/dev/null 2>&1 || echo "WARN: stop-broker $d failed"; done
  wait 2>/dev/null
  if [ "$rc" = 0 ] && [ -z "${FL_KEEP_TMP:-}" ]; then rm -rf "$tmp"; else echo "files kept in $tmp"; fi
}
trap cleanup EXIT
trap 'echo "FAIL: interrupted (signal, or the watchdog)"; exit 1' INT TERM
main_pid=$$
( trap 'kill "$s" 2>/dev/null; exit 0' TERM
  sleep "${FL_TEST_WATCHDOG_S:-170}" & s=$!
  wait "$s" && kill -TERM "$main_pid" ) >/dev/null 2>&1 &
pids+=($!)

run_cli() { "$cli" pki "$@" >/dev/null || { echo "FAIL: $cli pki $* failed"; exit 1; }; }
run_cli init --dir "$P"
run_cli issue-server --dir "$P" --dns localhost --ip 127.0.0.1
run_cli issue-controller --dir "$P"
run_cli issue-device devA --dir "$P"
run_cli issue-device devB --dir "$P"
run_cli issue-server wrong-host --dir "$P" --out wrong-server --dns broker.invalid
run_cli init --dir "$P2"
run_cli issue-device devA --dir "$P2"
mkdir -p "$W"
cp "$P/ca.crt" "$W/ca.crt"
cp "$P/wrong-server.crt" "$W/server.crt"
cp "$P/wrong-server.key" "$W/server.key"

start_on_free_port() { # DIR -> sets $port
  local d=$1 _
  for _ in $(seq 1 20); do
    port=$(( 20000 + (RANDOM * 32768 + RANDOM) % 40000 ))
    if FL_BROKER_WAIT_S=10 "$pkg/start-broker.sh" "$d" "$port" >"$tmp/start.out" 2>&1; then
      brokers+=("$d")
      return 0
    fi
    grep -qE "already in use|exited during start-up" "$tmp/start.out" || break
  done
  cat "$tmp/start.out"
  return 1
}
start_on_free_port "$P" || { echo "FAIL: could not start the broker"; exit 1; }
PORT=$port
start_on_free_port "$W" || { echo "FAIL: could not start the second broker"; exit 1; }
WPORT=$port
echo "brokers on 127.0.0.1:$PORT (fleet) and :$WPORT (wrong host name)"

FL_MQTT_PKI=$P FL_MQTT_OTHER=$P2 FL_MQTT_PORT=$PORT FL_MQTT_WPORT=$WPORT FL_MQTT_PKGDIR=$pkg \
  "$prog" "$@"
rc=$?
if [ "$rc" != 0 ]; then
  echo "--- broker log (tail) ---"
  tail -n 30 "$P/broker/mosquitto.log" 2>/dev/null
fi
exit "$rc"
