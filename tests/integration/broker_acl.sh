#!/usr/bin/env bash
# Broker TLS + ACL integration test: a real mosquitto on 127.0.0.1 (free
# port), configured by packaging/mosquitto/, with certificates made by
# `flotilla pki`, driven with mosquitto_pub / mosquitto_sub over MQTT v5.
#
#   broker_acl.sh PKI_CLI        (PKI_CLI: the flotilla binary or fl_pki_cli)
#
# Checks:
#  1. device A publishes its own state; the controller (shared subscription)
#     receives it;
#  2. A cannot publish to B's state or event, nor to its own cmd: QoS 1 gets
#     PUBACK "Not authorized" (0x87) and the controller receives nothing;
#  3. A subscribed to B's cmd and chunk/dat (and to flotilla/v1/#) receives
#     nothing of B's while B does receive them; A gets its own cmd;
#  4. a certificate from an unknown CA (same CN), an expired certificate, the
#     server's certificate (serverAuth only) used as a client certificate, no
#     certificate and plain TCP are all refused (broker log says why);
#  5. the client checks the server's host name: a broker whose certificate
#     does not name 127.0.0.1 is refused (and accepted with --insecure, so the
#     host check is what failed); localhost and 127.0.0.1 both verify on the
#     real broker;
#  6. a device connecting with another device's client id does not take over
#     that device's session (use_username_as_clientid);
#  7. TLS 1.1 is refused, TLS 1.2 accepted (tls_version tlsv1.2 = minimum);
#  8. message_size_limit (2 MiB): a 2 MiB + 1 publish from the controller to
#     devB's chunk/dat is refused (QoS 1: PUBACK with an error, broker log
#     "Dropped too large PUBLISH") and never delivered, while a 2 MiB one, a
#     chunk-sized (256 KiB + 52) one and a small cmd before and after it are.
# Every wait is bounded; the brokers and subscribers are stopped on any exit.
set -uo pipefail

if [ $# -ne 1 ]; then
  echo "usage: broker_acl.sh PKI_CLI" >&2
  exit 2
fi
cli=$1
src=$(cd "$(dirname "$0")/../.." && pwd)
pkg=$src/packaging/mosquitto

for tool in mosquitto_pub mosquitto_sub timeout stdbuf openssl; do
  command -v "$tool" >/dev/null || { echo "FAIL: $tool not installed (apt-get install mosquitto-clients)"; exit 1; }
done
[ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null ||
  { echo "FAIL: mosquitto not installed (apt-get install mosquitto)"; exit 1; }

base=${FL_TEST_TMPDIR:-/tmp}
mkdir -p "$base"
# Run as root, the broker drops to user mosquitto, which must reach its files:
# fall back to /tmp when the test directory's parents are closed to it.
if [ "$(id -u)" = 0 ] && id mosquitto >/dev/null 2>&1 && command -v runuser >/dev/null &&
   ! runuser -u mosquitto -- test -x "$base" 2>/dev/null; then
  echo "note: $base is not reachable by user mosquitto; using /tmp"
  base=/tmp
fi
tmp=$(mktemp -d "$base/broker_acl.XXXXXX")
# The broker drops to user mosquitto: it must be able to reach its files.
chmod 0755 "$tmp"

pids=()
brokers=()
failures=0
cleanup() {
  local p d
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  for d in "${brokers[@]}"; do "$pkg/stop-broker.sh" "$d" || echo "WARN: stop-broker $d failed"; done
  wait 2>/dev/null
  if [ "$failures" = 0 ] && [ -z "${FL_KEEP_TMP:-}" ]; then rm -rf "$tmp"; else echo "files kept in $tmp"; fi
}
trap cleanup EXIT
trap 'echo "FAIL: interrupted (signal, or the 90 s watchdog)"; failures=$((failures + 1)); exit 1' INT TERM
# Watchdog below ctest's TIMEOUT (120 s), so the EXIT trap still stops the
# brokers (they are daemons: a SIGKILL of this script would leave them). It
# holds no output pipe and takes its sleep with it when killed.
main_pid=$$
( trap 'kill "$s" 2>/dev/null; exit 0' TERM
  sleep "${FL_TEST_WATCHDOG_S:-90}" & s=$!
  wait "$s" && kill -TERM "$main_pid" ) >/dev/null 2>&1 &
pids+=($!)

pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

P=$tmp/pki
P2=$tmp/other-ca
# --- certificates, all made by the CLI under test ---
run_cli() { "$cli" pki "$@" >/dev/null || { echo "FAIL: $cli pki $* failed"; exit 1; }; }
run_cli init --dir "$P"
run_cli issue-server --dir "$P" --dns localhost --ip 127.0.0.1
run_cli issue-controller --dir "$P"
run_cli issue-device devA --dir "$P"
run_cli issue-device devB --dir "$P"
run_cli issue-device old --dir "$P" --days -1
run_cli issue-server wrong-host --dir "$P" --out wrong-server --dns broker.invalid
run_cli init --dir "$P2"
run_cli issue-device devA --dir "$P2" # same CN as the real devA, unknown CA

# --- brokers on free ports (start-broker refuses a port in use: retry) ---
start_on_free_port() { # DIR -> sets $port
  local d=$1 _
  for _ in $(seq 1 20); do
    port=$(( 20000 + (RANDOM * 32768 + RANDOM) % 40000 ))
    if FL_BROKER_WAIT_S=10 FL_BROKER_DEBUG=1 "$pkg/start-broker.sh" "$d" "$port" >"$tmp/start.out" 2>&1; then
      brokers+=("$d")
      return 0
    fi
    # Only a port clash (or losing a race for it) is worth another port.
    grep -qE "already in use|exited during start-up" "$tmp/start.out" || break
  done
  cat "$tmp/start.out"
  return 1
}
start_on_free_port "$P" || { echo "FAIL: could not start the broker"; exit 1; }
PORT=$port
log=$P/broker/mosquitto.log
echo "broker on 127.0.0.1:$PORT"

# Host-name check target: same CA, certificate only for broker.invalid.
W=$tmp/wrong
mkdir -p "$W"
cp "$P/ca.crt" "$W/ca.crt"
cp "$P/wrong-server.crt" "$W/server.crt"
cp "$P/wrong-server.key" "$W/server.key"
start_on_free_port "$W" || { echo "FAIL: could not start the second broker"; exit 1; }
WPORT=$port

# --- clients ---
tls() { # CERTDIR NAME -> TLS options for that identity
  echo "--cafile $P/ca.crt --cert $1/$2.crt --key $1/$2.key"
}
# pub IDENTITY-OPTS TOPIC MESSAGE [extra]: MQTT v5, QoS 1; output in $out, status in $rc
pub() {
  local opts=$1 topic=$2 msg=$3
  shift 3
  # shellcheck disable=SC2086
  out=$(timeout 10 mosquitto_pub -h 127.0.0.1 -p "$PORT" -V 5 -q 1 $opts -t "$topic" -m "$msg" "$@" 2>&1)
  rc=$?
}
# sub NAME IDENTITY-OPTS TOPIC...: background subscriber writing "topic payload"
# lines (and -d debug lines) to $tmp/NAME.out; returns once SUBACK arrived.
sub() {
  local name=$1 opts=$2
  shift 2
  local args=() t
  for t in "$@"; do args+=(-t "$t"); done
  # shellcheck disable=SC2086
  # stdbuf: mosquitto_sub flushes only after a message, not after -d lines.
  timeout 30 stdbuf -oL mosquitto_sub -h 127.0.0.1 -p "$PORT" -V 5 -q 1 -d -v $opts "${args[@]}" \
    >"$tmp/$name.out" 2>&1 &
  pids+=($!)
  eval "pid_$name=$!"
  wait_for "$name" "received SUBACK" || { fail "$name: no SUBACK"; cat "$tmp/$name.out"; return 1; }
}
wait_for() { # NAME TEXT: wait (<= 10 s) until $tmp/NAME.out contains TEXT
  local _
  for _ in $(seq 1 200); do
    grep -qF -- "$2" "$tmp/$1.out" 2>/dev/null && return 0
    sleep 0.05
  done
  return 1
}
stop_sub() { local v="pid_$1"; kill "${!v}" 2>/dev/null; wait "${!v}" 2>/dev/null; }
msgs() { grep '^flotilla/' "$tmp/$1.out"; } # delivered messages only

A=$(tls "$P/devices" devA)
B=$(tls "$P/devices" devB)
CTL=$(tls "$P" controller)

# 1 + 2: device publishes; controller listens with shared subscriptions.
sub ctl "$CTL" '$share/controllers/flotilla/v1/dev/+/state' \
  '$share/controllers/flotilla/v1/dev/+/event' 'flotilla/v1/dev/+/cmd'
pub "$A" flotilla/v1/dev/devA/state "A-state-ok"
if [ $rc = 0 ] && ! grep -q "failed" <<<"$out"; then pass "devA publishes its own state"; else fail "devA own state: rc=$rc $out"; fi
for t in flotilla/v1/dev/devB/state flotilla/v1/dev/devB/event flotilla/v1/dev/devA/cmd; do
  pub "$A" "$t" "spoof"
  if grep -q "Not authorized" <<<"$out"; then
    pass "devA -> $t refused by the broker: '$out'"
  else
    fail "devA -> $t not refused (rc=$rc): $out"
  fi
done
pub "$A" flotilla/v1/dev/devB/state "spoof-q0" -q 0 # QoS 0: dropped silently
pub "$B" flotilla/v1/dev/devB/state "B-state-marker"
if wait_for ctl "B-state-marker"; then pass "controller receives devB's state"; else fail "controller did not receive devB's state"; fi
if msgs ctl | grep -qx "flotilla/v1/dev/devA/state A-state-ok"; then
  pass "controller received devA's state via \$share/controllers"
else
  fail "controller did not receive devA's state"
fi
if msgs ctl | grep -q spoof; then fail "controller received a spoofed message: $(msgs ctl | grep spoof)"; else pass "controller received nothing devA published as devB"; fi
denied=$(grep -c "Denied PUBLISH from devA" "$log")
[ "$denied" -ge 4 ] && pass "broker logged $denied denied publishes from devA" || fail "broker logged $denied denied publishes (want >= 4)"
stop_sub ctl

# 3: device A tries to read device B's commands and chunks.
sub a "$A" flotilla/v1/dev/devB/cmd flotilla/v1/dev/devB/chunk/dat 'flotilla/v1/#' \
  'flotilla/v1/dev/+/cmd' flotilla/v1/dev/devA/cmd
sub b "$B" flotilla/v1/dev/devB/cmd flotilla/v1/dev/devB/chunk/dat
pub "$CTL" flotilla/v1/dev/devB/cmd "secret-cmd-for-B"
pub "$CTL" flotilla/v1/dev/devB/chunk/dat "secret-chunk-for-B"
pub "$CTL" flotilla/v1/dev/devA/cmd "cmd-for-A-marker"
if wait_for b "secret-chunk-for-B" && wait_for b "secret-cmd-for-B"; then
  pass "devB receives its cmd and chunk/dat"
else
  fail "devB did not receive its own messages"
fi
if wait_for a "cmd-for-A-marker"; then pass "devA receives its own cmd"; else fail "devA did not receive its own cmd"; fi
if msgs a | grep -q secret; then fail "devA read devB's messages: $(msgs a | grep secret)"; else pass "devA received none of devB's cmd/chunk messages ($(msgs a | wc -l) message(s), all its own)"; fi
stop_sub a
stop_sub b

# 4: refused clients.
refused() { # WHAT OPTS LOGTEXT
  local before after
  before=$(wc -l <"$log")
  pub "$2" flotilla/v1/dev/devA/state "must-not-arrive"
  sleep 0.1
  after=$(tail -n +$((before + 1)) "$log")
  if [ $rc != 0 ] && grep -qF -- "$3" <<<"$after"; then
    pass "$1 refused (client: '$out' rc=$rc; broker: '$(grep -F -- "$3" <<<"$after" | head -1 | cut -d' ' -f2-)')"
  else
    fail "$1 not refused as expected (rc=$rc, client: $out, broker log: $after)"
  fi
}
refused "certificate from an unknown CA" "--cafile $P/ca.crt --cert $P2/devices/devA.crt --key $P2/devices/devA.key" "certificate verify failed"
refused "expired certificate" "$(tls "$P/devices" old)" "certificate verify failed"
refused "server certificate used as a client (no clientAuth)" "$(tls "$P" server)" "certificate verify failed"
refused "client without a certificate" "--cafile $P/ca.crt" "peer did not return a certificate"
refused "plain MQTT without TLS" "" "wrong version number"
if grep -q "must-not-arrive" "$log"; then fail "a refused client got a message through"; fi

# 5: server host name verification.
pub "$A" flotilla/v1/dev/devA/state "via-ip" -h 127.0.0.1
[ $rc = 0 ] && pass "server cert verifies for 127.0.0.1 (IP SAN)" || fail "127.0.0.1: $out"
pub "$A" flotilla/v1/dev/devA/state "via-name" -h localhost
[ $rc = 0 ] && pass "server cert verifies for localhost (DNS SAN)" || fail "localhost: $out"
pub "$A" flotilla/v1/dev/devA/state "wrong-host" -p "$WPORT"
if [ $rc != 0 ]; then pass "server cert for broker.invalid refused when connecting to 127.0.0.1: '$out'"; else fail "host name not checked"; fi
pub "$A" flotilla/v1/dev/devA/state "wrong-host-insecure" -p "$WPORT" --insecure
[ $rc = 0 ] && pass "same broker accepted with --insecure: the host name check is what failed" || fail "--insecure also failed: $out"

# 6: another device's client id does not take over its session.
sub b2 "$B -i devB" flotilla/v1/dev/devB/cmd
before=$(grep -c "already connected" "$P/broker/mosquitto.log")
pub "$A" flotilla/v1/dev/devA/state "takeover-attempt" -i devB
pub "$CTL" flotilla/v1/dev/devB/cmd "after-takeover"
wait_for b2 "after-takeover" && pass "devB still receives after devA used client id devB" || fail "devB lost its message"
after=$(grep -c "already connected" "$P/broker/mosquitto.log")
if [ "$after" = "$before" ]; then pass "no session takeover (client id forced to the CN)"; else fail "devA kicked devB's session"; fi
stop_sub b2

# 7: minimum TLS version.
tls_try() { # VERSION-FLAG -> s_client output
  timeout 10 openssl s_client -connect "127.0.0.1:$PORT" "$1" -cipher 'DEFAULT:@SECLEVEL=0' \
    -CAfile "$P/ca.crt" -cert "$P/devices/devA.crt" -key "$P/devices/devA.key" </dev/null 2>&1
}
out=$(tls_try -tls1_1)
if grep -q "alert protocol version" <<<"$out"; then pass "TLS 1.1 refused (alert protocol version)"; else fail "TLS 1.1 not refused: $(tail -5 <<<"$out")"; fi
out=$(tls_try -tls1_2)
if grep -q "Protocol  *: TLSv1.2" <<<"$out" && grep -q "Verify return code: 0 (ok)" <<<"$out"; then pass "TLS 1.2 accepted"; else fail "TLS 1.2 handshake failed: $(tail -5 <<<"$out")"; fi

# 8: message size limit. Payloads are one letter repeated, so each delivered
# message is one line whose length tells which one it was.
limit=2097152
sub big "$B" flotilla/v1/dev/devB/chunk/dat flotilla/v1/dev/devB/cmd
mk() { head -c "$2" /dev/zero | tr '\0' "$1" >"$tmp/pay-$1"; }
pubf() { # IDENTITY-OPTS TOPIC FILE: QoS 1, payload from FILE; $out, $rc
  # shellcheck disable=SC2086
  out=$(timeout 20 mosquitto_pub -h 127.0.0.1 -p "$PORT" -V 5 -q 1 $1 -t "$2" -f "$3" 2>&1)
  rc=$?
}
mk c $((256 * 1024 + 52)); mk e "$limit"; mk o $((limit + 1))
pub "$CTL" flotilla/v1/dev/devB/cmd "small-before"
pubf "$CTL" flotilla/v1/dev/devB/chunk/dat "$tmp/pay-c"
rc_c=$rc
pubf "$CTL" flotilla/v1/dev/devB/chunk/dat "$tmp/pay-o"
rc_o=$rc out_o=$out
pubf "$CTL" flotilla/v1/dev/devB/chunk/dat "$tmp/pay-e"
rc_e=$rc
pub "$CTL" flotilla/v1/dev/devB/cmd "small-after"
if wait_for big "small-after"; then pass "devB still receives after the oversized publish"; else fail "devB got nothing after the oversized publish"; fi
sleep 0.2
# "topic payload" lines: payload length = line length - topic - 1.
lens=$(awk '/^flotilla\/v1\/dev\/devB\/chunk\/dat / { print length($0) - length($1) - 1 }' "$tmp/big.out" | sort -n | tr '\n' ' ')
if [ $rc_c = 0 ] && [ $rc_e = 0 ] && [ "$lens" = "$((256 * 1024 + 52)) $limit " ]; then
  pass "a 256 KiB chunk and a 2 MiB message (the limit) are delivered (payload bytes: $lens)"
else
  fail "legitimate large messages: rc $rc_c/$rc_e, delivered payload bytes: '$lens'"
fi
if grep -q "flotilla/v1/dev/devB/cmd small-before" "$tmp/big.out"; then pass "small cmd delivered"; else fail "small cmd not delivered"; fi
if grep -q "Dropped too large PUBLISH from flotilla-controller" "$log"; then
  pass "broker refused the $((limit + 1))-byte publish: '$(grep "Dropped too large PUBLISH" "$log" | head -1 | cut -d' ' -f2-)'"
else
  fail "broker log has no 'Dropped too large PUBLISH' (client rc=$rc_o: $out_o)"
fi
if grep -qi "failed" <<<"$out_o"; then pass "the sender is told (PUBACK reason): '$out_o'"; else fail "mosquitto_pub saw no error for the oversized publish (rc=$rc_o: $out_o)"; fi
stop_sub big

if [ "$failures" = 0 ]; then echo "broker_acl: all checks passed"; exit 0; fi
echo "broker_acl: $failures check(s) failed"
exit 1
