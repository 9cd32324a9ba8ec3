#!/usr/bin/env bash
# Certificates out of their validity period (issue 7: "expired certificate:
# connection refused, clear log line"), seen from a real `flotilla-agent run`
# against a real mosquitto with mutual TLS + the Flotilla ACL on 127.0.0.1:
#  - the device's own certificate expired: never connected, and the log says
#    "our certificate expired <date>" (the wrapper checks its certificate
#    when a connect fails: Paho only reports a bare connect failure);
#  - the device's certificate not valid yet: "our certificate is not valid
#    before <date>";
#  - a valid device certificate connects (the control);
#  - the broker's certificate expired: never connected, "certificate verify
#    failed" (OpenSSL's reason).
#
#   transport_tls.sh FLOTILLA AGENT
set -uo pipefail
if [ $# -ne 2 ]; then
  echo "usage: transport_tls.sh FLOTILLA AGENT" >&2
  exit 2
fi
FLOTILLA=$1 AGENT=$2
here=$(cd "$(dirname "$0")" && pwd)
pkg=$(cd "$here/../../packaging/mosquitto" && pwd)
. "$here/lib.sh"
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] ||
  { echo "FAIL: mosquitto not installed"; exit 1; }

base=${FL_TEST_TMPDIR:-/tmp}
mkdir -p "$base"
if [ "$(id -u)" = 0 ] && id mosquitto >/dev/null 2>&1 && command -v runuser >/dev/null &&
   ! runuser -u mosquitto -- test -x "$base" 2>/dev/null; then
  base=/tmp
fi
tmp=$(mktemp -d "$base/transport_tls.XXXXXX")
chmod 0755 "$tmp"
P=$tmp/pki
broker_up=
cleanup() {
  [ -n "$broker_up" ] && { "$pkg/stop-broker.sh" "$P" >/dev/null 2>&1 || echo "WARN: stop-broker failed"; }
  if [ "$fails" = 0 ] && [ -z "${FL_KEEP_TMP:-}" ]; then rm -rf "$tmp"; else echo "files kept in $tmp"; fi
}
trap cleanup EXIT
cd "$tmp"

pki() { "$FLOTILLA" pki "$@" --dir "$P" >/dev/null || { echo "FAIL: flotilla pki $*"; exit 1; }; }
pki init
pki issue-server --dns localhost --ip 127.0.0.1
pki issue-device good
pki issue-device old --days -1
pki issue-device future --not-before 2099-01-01T00:00:00Z --not-after 2100-01-01T00:00:00Z
start_broker() {
  local _
  for _ in $(seq 1 20); do
    [ -n "${PORT:-}" ] || PORT=$(( 20000 + (RANDOM * 32768 + RANDOM) % 40000 ))
    if FL_BROKER_WAIT_S=10 "$pkg/start-broker.sh" "$P" "$PORT" >start.out 2>&1; then
      broker_up=1; return 0
    fi
    grep -qE "already in use|exited during start-up" start.out || break
    PORT=
  done
  cat start.out; echo "FAIL: broker"; exit 1
}
start_broker

# run_agent ID SECONDS: run the agent for SECONDS, its log in ID.log
run_agent() {
  mkdir -p "$1/trust"
  cat >"$1/agent.conf" <<CONF
[agent]
id = $1
state_dir = $tmp/$1/state
trust_dir = $tmp/$1/trust

[mqtt]
uri = ssl://127.0.0.1:$PORT
ca = $P/ca.crt
cert = $P/devices/$1.crt
key = $P/devices/$1.key
CONF
  FLOTILLA_LOG_LEVEL=info timeout -s TERM "$2" "$AGENT" -c "$1/agent.conf" run >"$1.log" 2>&1
}

run_agent old 4
check "expired device certificate: never connected" bash -c "! grep -q 'mqtt: connected' old.log"
check "expired device certificate: the log says so ($(grep -m1 -o 'disconnected: our certificate [^;]*' old.log))" \
  grep -q 'disconnected: our certificate expired [0-9-]*T' old.log

run_agent future 4
check "not yet valid device certificate: never connected" bash -c "! grep -q 'mqtt: connected' future.log"
check "not yet valid device certificate: the log says so" \
  grep -q 'disconnected: our certificate is not valid before 2099-01-01' future.log

run_agent good 3
check "valid device certificate: connected" grep -q 'mqtt: connected' good.log
check "valid device certificate: no certificate complaint" bash -c "! grep -q 'our certificate' good.log"

"$pkg/stop-broker.sh" "$P" >/dev/null 2>&1; broker_up=
"$FLOTILLA" pki issue-server --dir "$P" --dns localhost --ip 127.0.0.1 --days -1 --force >/dev/null ||
  { echo "FAIL: expired server certificate"; exit 1; }
start_broker
run_agent good 4
check "expired broker certificate: never connected" bash -c "! grep -q 'mqtt: connected' good.log"
check "expired broker certificate: 'certificate verify failed' in the log" \
  grep -q 'TLS: certificate verify failed' good.log
finish
