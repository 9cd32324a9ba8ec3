#!/usr/bin/env bash
# Revocation, broker persistence and several controller instances against a
# real mosquitto (TLS + ACL, 127.0.0.1, free port) set up by
# packaging/mosquitto/, certificates and CRLs made by `flotilla pki`.
#
#   pki_revoke.sh PKI_CLI        (PKI_CLI: the flotilla binary or fl_pki_cli)
#
# Checks:
#  1. two controller instances (controller.crt, controller-2.crt made after
#     the broker started; reload-broker.sh regenerates the ACL) both connect
#     with their own certificates and share one $share subscription;
#  2. a deploy command queued (QoS 1) for an offline device with a persistent
#     session survives a broker restart and is delivered when it reconnects;
#  3. devA connects; `pki revoke devA`; `pki verify` reports it revoked, devB
#     still verifies; after reload-broker.sh (SIGHUP) devA's handshake is
#     refused while devB connects; an already open devA connection survives
#     the SIGHUP (documented), a restart keeps devA refused;
#  4. a CRL signed by another CA is refused by `pki verify --crl`; bad revoke
#     input exits non-zero and changes neither revoked.txt nor ca.crl.
set -uo pipefail

if [ $# -ne 1 ]; then
  echo "usage: pki_revoke.sh PKI_CLI" >&2
  exit 2
fi
cli=$1
src=$(cd "$(dirname "$0")/../.." && pwd)
pkg=$src/packaging/mosquitto

for tool in mosquitto_pub mosquitto_sub timeout stdbuf openssl sha256sum; do
  command -v "$tool" >/dev/null || { echo "FAIL: $tool not installed (apt-get install mosquitto-clients)"; exit 1; }
done
[ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null ||
  { echo "FAIL: mosquitto not installed (apt-get install mosquitto)"; exit 1; }

base=${FL_TEST_TMPDIR:-/tmp}
mkdir -p "$base"
if [ "$(id -u)" = 0 ] && id mosquitto >/dev/null 2>&1 && command -v runuser >/dev/null &&
   ! runuser -u mosquitto -- test -x "$base" 2>/dev/null; then
  base=/tmp
fi
tmp=$(mktemp -d "$base/pki_revoke.XXXXXX")
chmod 0755 "$tmp"

pids=()
broker_up=0
failures=0
P=$tmp/pki
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  [ "$broker_up" = 1 ] && { "$pkg/stop-broker.sh" "$P" || echo "WARN: stop-broker failed"; }
  wait 2>/dev/null
  if [ "$failures" = 0 ] && [ -z "${FL_KEEP_TMP:-}" ]; then rm -rf "$tmp"; else echo "files kept in $tmp"; fi
}
trap cleanup EXIT
trap 'echo "FAIL: interrupted (signal, or the 100 s watchdog)"; failures=$((failures + 1)); exit 1' INT TERM
main_pid=$$
( trap 'kill "$s" 2>/dev/null; exit 0' TERM
  sleep "${FL_TEST_WATCHDOG_S:-100}" & s=$!
  wait "$s" && kill -TERM "$main_pid" ) >/dev/null 2>&1 &
pids+=($!)

pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

run_cli() { "$cli" pki "$@" >/dev/null || { echo "FAIL: $cli pki $* failed"; exit 1; }; }
run_cli init --dir "$P"
run_cli issue-server --dir "$P" --dns localhost --ip 127.0.0.1
run_cli issue-controller --dir "$P"
run_cli issue-device devA --dir "$P"
run_cli issue-device devB --dir "$P"
run_cli issue-device devC --dir "$P"
run_cli init --dir "$tmp/other"
# The broker starts with an (empty) CRL so that crlfile is configured.
run_cli crl --dir "$P"

for _ in $(seq 1 20); do
  PORT=$(( 20000 + (RANDOM * 32768 + RANDOM) % 40000 ))
  if FL_BROKER_WAIT_S=10 "$pkg/start-broker.sh" "$P" "$PORT" >"$tmp/start.out" 2>&1; then
    broker_up=1; break
  fi
  grep -qE "already in use|exited during start-up" "$tmp/start.out" || break
done
[ "$broker_up" = 1 ] || { cat "$tmp/start.out"; echo "FAIL: could not start the broker"; exit 1; }
log=$P/broker/mosquitto.log
echo "broker on 127.0.0.1:$PORT"
grep -q '^crlfile ' "$P/broker/mosquitto.conf" && pass "broker configured with crlfile" ||
  fail "no crlfile line in $P/broker/mosquitto.conf"

tls() { echo "--cafile $P/ca.crt --cert $1/$2.crt --key $1/$2.key"; }
A=$(tls "$P/devices" devA)
B=$(tls "$P/devices" devB)
Cd=$(tls "$P/devices" devC)
CTL=$(tls "$P" controller)
CTL2=$(tls "$P" controller-2)
pub() { # OPTS TOPIC MSG: QoS 1; status in $rc, output in $out
  # shellcheck disable=SC2086
  out=$(timeout 10 mosquitto_pub -h 127.0.0.1 -p "$PORT" -V 5 -q 1 $1 -t "$2" -m "$3" 2>&1)
  rc=$?
}
sub_bg() { # NAME OPTS TOPIC [extra]: background subscriber -> $tmp/NAME.out
  local name=$1 opts=$2 topic=$3
  shift 3
  # shellcheck disable=SC2086
  timeout 60 stdbuf -oL mosquitto_sub -h 127.0.0.1 -p "$PORT" -V 5 -q 1 -d -v $opts -t "$topic" "$@" \
    >"$tmp/$name.out" 2>&1 &
  pids+=($!)
  eval "pid_$name=$!"
  wait_for "$name" "received SUBACK" || { fail "$name: no SUBACK"; cat "$tmp/$name.out"; return 1; }
}
wait_for() { # NAME TEXT [TRIES]: wait until $tmp/NAME.out contains TEXT (<= 10 s)
  local _
  for _ in $(seq 1 "${3:-200}"); do
    grep -qF -- "$2" "$tmp/$1.out" 2>/dev/null && return 0
    sleep 0.05
  done
  return 1
}
stop_sub() { local v="pid_$1"; kill "${!v}" 2>/dev/null; wait "${!v}" 2>/dev/null; }
count() { grep -c "^$2" "$tmp/$1.out" 2>/dev/null; }

# ---- 1. two controller instances --------------------------------------------
run_cli issue-controller flotilla-controller-2 --out controller-2 --dir "$P"
if "$pkg/reload-broker.sh" "$P" >"$tmp/reload.out" 2>&1 &&
   grep -qx 'user flotilla-controller-2' "$P/broker/acl"; then
  pass "reload-broker.sh added flotilla-controller-2 to the ACL"
else
  fail "ACL not regenerated: $(cat "$tmp/reload.out")"
fi
sleep 0.3 # SIGHUP is asynchronous
sub_bg ctl1 "$CTL" '$share/controllers/flotilla/v1/dev/+/state'
sub_bg ctl2 "$CTL2" '$share/controllers/flotilla/v1/dev/+/state'
for i in $(seq 1 20); do pub "$B" flotilla/v1/dev/devB/state "share-$i"; done
for _ in $(seq 1 100); do
  n1=$(count ctl1 flotilla/v1/dev/devB/state); n2=$(count ctl2 flotilla/v1/dev/devB/state)
  [ $((n1 + n2)) -ge 20 ] && break
  sleep 0.05
done
if [ "$n1" -gt 0 ] && [ "$n2" -gt 0 ] && [ $((n1 + n2)) = 20 ]; then
  pass "both controller instances serve the shared subscription ($n1 + $n2 of 20)"
else
  fail "shared subscription: controller $n1, controller-2 $n2 of 20"
fi
grep -q "as flotilla-controller-2 " "$log" && pass "controller-2 connected under its own CN" ||
  fail "no flotilla-controller-2 connection in the log"
stop_sub ctl1; stop_sub ctl2

# ---- 2. persistence: a queued deploy survives a broker restart ---------------
# devC plays the agent: persistent session (-c, session expiry 1 h), QoS 1.
# shellcheck disable=SC2086
timeout 10 mosquitto_sub -h 127.0.0.1 -p "$PORT" -V 5 -q 1 $Cd -c -i devC -x 3600 \
  -t flotilla/v1/dev/devC/cmd -E >/dev/null 2>&1 || fail "devC could not open its session"
deploy='{"type":"deploy","model":"m1","version":"2.0"}'
pub "$CTL" flotilla/v1/dev/devC/cmd "$deploy"
[ $rc = 0 ] || fail "controller could not queue the deploy: $out"
if "$pkg/reload-broker.sh" "$P" --restart >"$tmp/restart.out" 2>&1; then
  pass "broker restarted (reload-broker.sh --restart)"
else
  fail "restart failed: $(cat "$tmp/restart.out")"; exit 1
fi
[ -s "$P/broker/state/mosquitto.db" ] || fail "no persistence database in $P/broker/state"
# shellcheck disable=SC2086
got=$(timeout 10 mosquitto_sub -h 127.0.0.1 -p "$PORT" -V 5 -q 1 $Cd -c -i devC -x 3600 \
  -t flotilla/v1/dev/devC/cmd -C 1 -W 5 2>&1)
if [ "$got" = "$deploy" ]; then
  pass "deploy queued for offline devC survived the restart and was delivered"
else
  fail "devC after restart got '$got'"
fi

# ---- 3. revocation ----------------------------------------------------------
pub "$A" flotilla/v1/dev/devA/state before
[ $rc = 0 ] && pass "devA connects before revocation" || fail "devA before revocation: $out"
sub_bg held "$A" flotilla/v1/dev/devA/cmd # a connection already open at revocation
before_refused=$(grep -c "certificate verify failed" "$log")
if "$cli" pki revoke devA --dir "$P" >"$tmp/revoke.out" 2>&1 && grep -q "revoked serial" "$tmp/revoke.out"; then
  pass "pki revoke devA: $(tail -1 "$tmp/revoke.out")"
else
  fail "pki revoke devA: $(cat "$tmp/revoke.out")"
fi
serialA=$(openssl x509 -in "$P/devices/devA.crt" -noout -serial | sed 's/^serial=//' | tr A-F a-f)
grep -q "^$serialA [0-9]* devA$" "$P/revoked.txt" && pass "revoked.txt lists devA's serial" ||
  fail "revoked.txt: $(cat "$P/revoked.txt")"
openssl verify -crl_check -CAfile "$P/ca.crt" -CRLfile "$P/ca.crl" "$P/devices/devA.crt" >"$tmp/ov.out" 2>&1
grep -q "certificate revoked" "$tmp/ov.out" && pass "openssl sees devA revoked in ca.crl" ||
  fail "openssl verify: $(cat "$tmp/ov.out")"
nu=$(openssl crl -in "$P/ca.crl" -noout -nextupdate | sed 's/^nextUpdate=//')
days=$(( ($(date -d "$nu" +%s) - $(date +%s)) / 86400 ))
[ "$days" -ge 29 ] && [ "$days" -le 30 ] && pass "CRL nextUpdate in $days days" || fail "CRL nextUpdate '$nu'"
out=$("$cli" pki verify "$P/devices/devA.crt" --dir "$P" 2>&1); rc=$?
if [ $rc = 1 ] && grep -q "REVOKED" <<<"$out"; then pass "pki verify: $out"; else fail "pki verify devA rc=$rc: $out"; fi
out=$("$cli" pki verify "$P/devices/devB.crt" --dir "$P" 2>&1); rc=$?
[ $rc = 0 ] && pass "devB still verifies" || fail "pki verify devB rc=$rc: $out"

"$pkg/reload-broker.sh" "$P" >"$tmp/reload.out" 2>&1 || fail "reload: $(cat "$tmp/reload.out")"
refused=0
for _ in $(seq 1 20); do # SIGHUP is asynchronous: the reload takes a moment
  pub "$A" flotilla/v1/dev/devA/state after
  [ $rc != 0 ] && { refused=1; break; }
  sleep 0.2
done
if [ $refused = 1 ] && [ "$(grep -c "certificate verify failed" "$log")" -gt "$before_refused" ]; then
  pass "revoked devA refused after SIGHUP (rc=$rc, broker: certificate verify failed)"
else
  fail "devA still connects after revoke + reload ($out)"
fi
pub "$B" flotilla/v1/dev/devB/state after
[ $rc = 0 ] && pass "devB still connects" || fail "devB refused after revoking devA: $out"
# An open connection is not re-checked on SIGHUP (docs/broker.md).
pub "$CTL" flotilla/v1/dev/devA/cmd still-open
if wait_for held still-open; then
  pass "devA's connection opened before the reload stays up (cut it with reload-broker.sh --restart)"
else
  fail "devA's open connection: nothing received"
fi
stop_sub held
"$pkg/reload-broker.sh" "$P" --restart >"$tmp/restart.out" 2>&1 || fail "restart: $(cat "$tmp/restart.out")"
pub "$A" flotilla/v1/dev/devA/state after-restart
[ $rc != 0 ] && pass "devA still refused after a restart" || fail "devA connects after restart"
pub "$B" flotilla/v1/dev/devB/state after-restart
[ $rc = 0 ] && pass "devB connects after restart" || fail "devB after restart: $out"

# ---- 4. foreign CRL, bad input ------------------------------------------------
run_cli crl --dir "$tmp/other"
out=$("$cli" pki verify "$P/devices/devB.crt" --dir "$P" --crl "$tmp/other/ca.crl" 2>&1); rc=$?
if [ $rc = 1 ] && grep -q "not signed by the CA" <<<"$out"; then pass "foreign CRL refused: $out"; else fail "foreign CRL rc=$rc: $out"; fi
sums() { sha256sum "$P/revoked.txt" "$P/ca.crl"; }
s0=$(sums)
"$cli" pki revoke nosuch --dir "$P" >/dev/null 2>&1; r1=$?
"$cli" pki revoke --serial 0xZZ --dir "$P" >/dev/null 2>&1; r2=$?
"$cli" pki revoke devB --serial 01 --dir "$P" >/dev/null 2>&1; r3=$?
"$cli" pki crl --days -3 --dir "$P" >/dev/null 2>&1; r4=$?
if [ $r1 != 0 ] && [ $r2 != 0 ] && [ $r3 != 0 ] && [ $r4 != 0 ] && [ "$(sums)" = "$s0" ]; then
  pass "bad revoke/crl input refused ($r1 $r2 $r3 $r4), files unchanged"
else
  fail "bad input: exits $r1 $r2 $r3 $r4, files changed: $([ "$(sums)" = "$s0" ] && echo no || echo yes)"
fi

echo
if [ "$failures" = 0 ]; then echo "pki_revoke: all checks passed"; exit 0; fi
echo "pki_revoke: $failures check(s) failed"
exit 1
