#!/usr/bin/env bash
# Delivery survives restarts in the middle of a transfer (issue 7, "Broker
# stopped and restarted mid-transfer, agent killed mid-transfer, controller
# restarted mid-transfer"): a real mosquitto (mutual TLS + the Flotilla ACL)
# on a free port, a real flotilla-controller (HTTP + MQTT, SQLite store,
# chunk store) and a real `flotilla-agent run`. The agent's bandwidth cap
# (4 MiB/s) makes each ~24 MiB transfer last a few seconds, so the
# interruptions land mid-transfer on a loaded machine too.
#
#   transport_restart.sh FLOTILLA CONTROLLER AGENT MKMODEL [FAULTPROXY]
#
# A. controller killed (-9) at >= 15 % of the transfer and started again
#    (same data directory): the install completes; the agent fetched at most
#    the bundle's size + one window (AGENT_FETCH_WINDOW_BYTES, 2 MiB), from
#    its completion log line (one agent process for the whole install).
# B. broker stopped and started again mid-transfer: same bound.
# C. agent killed (-9) mid-transfer and started again: it resumes (chunks
#    written before the kill are read back from the .part files, hashed, and
#    not fetched again); the controller's chunk bytes for the install stay
#    within the bundle's size + one window.
# D. two controller instances (own certificates, own stores, both pushed the
#    bundle) share the chunk requests through $share/controllers/...: the
#    install completes, both served part of it, the sum within one window.
# E. (with FAULTPROXY) a poor link without a bandwidth cap: the agent talks to
#    the broker through tests/sim/faultproxy at 150 KB/s each way and 50 ms
#    latency; the window follows the delivery rate, so nothing times out and
#    nothing is fetched twice.
# Every scenario also checks that the interruption happened mid-transfer.
# Bounded by a watchdog (FL_TEST_WATCHDOG_S, 280 s); everything started is
# stopped on any exit.
set -uo pipefail
if [ $# -ne 4 ] && [ $# -ne 5 ]; then
  echo "usage: transport_restart.sh FLOTILLA CONTROLLER AGENT MKMODEL [FAULTPROXY]" >&2
  exit 2
fi
FLOTILLA=$1 CONTROLLER=$2 AGENT=$3 MKMODEL=$4 PROXY=${5:-}
here=$(cd "$(dirname "$0")" && pwd)
pkg=$(cd "$here/../../packaging/mosquitto" && pwd)
. "$here/lib.sh"
for t in mosquitto jq curl; do
  command -v $t >/dev/null || [ -x /usr/sbin/$t ] ||
    { echo "FAIL: $t not installed (apt-get install mosquitto jq curl)"; exit 1; }
done

WINDOW=$((2 << 20))    # AGENT_FETCH_WINDOW_BYTES (agent/src/fetch.h)
CAP=$((4 << 20))       # agent bandwidth cap, bytes/s
MIB=${FL_TRANSPORT_MIB:-24}

base=${FL_TEST_TMPDIR:-/tmp}
mkdir -p "$base"
# Run as root, the broker drops to user mosquitto, which must reach its files.
if [ "$(id -u)" = 0 ] && id mosquitto >/dev/null 2>&1 && command -v runuser >/dev/null &&
   ! runuser -u mosquitto -- test -x "$base" 2>/dev/null; then
  base=/tmp
fi
tmp=$(mktemp -d "$base/transport_restart.XXXXXX")
chmod 0755 "$tmp"
P=$tmp/pki
broker_up= cpid= cpid2= apid= ppid= wd=
cleanup() {
  [ -n "$ppid" ] && kill "$ppid" 2>/dev/null
  [ -n "$apid" ] && kill -9 "$apid" 2>/dev/null
  [ -n "$cpid2" ] && kill -9 "$cpid2" 2>/dev/null
  [ -n "$cpid" ] && kill -9 "$cpid" 2>/dev/null
  [ -n "$wd" ] && kill "$wd" 2>/dev/null
  [ -n "$broker_up" ] && { "$pkg/stop-broker.sh" "$P" >/dev/null 2>&1 || echo "WARN: stop-broker failed"; }
  wait 2>/dev/null
  if [ "$fails" = 0 ] && [ -z "${FL_KEEP_TMP:-}" ]; then rm -rf "$tmp"; else echo "files kept in $tmp"; fi
}
trap cleanup EXIT
trap 'echo "FAIL: interrupted (signal, or the watchdog)"; fails=$((fails + 1)); exit 1' INT TERM
main_pid=$$
( trap 'kill "$s" 2>/dev/null; exit 0' TERM
  sleep "${FL_TEST_WATCHDOG_S:-280}" & s=$!
  wait "$s" && kill -TERM "$main_pid" ) >/dev/null 2>&1 &
wd=$!
cd "$tmp"

# ---------------------------------------------------------------- PKI, broker
run_pki() { "$FLOTILLA" pki "$@" >/dev/null || { echo "FAIL: flotilla pki $* failed"; exit 1; }; }
run_pki init --dir "$P"
run_pki issue-server --dir "$P" --dns localhost --ip 127.0.0.1
run_pki issue-controller --dir "$P"
run_pki issue-controller flotilla-controller-2 --out controller-2 --dir "$P"
run_pki issue-device dev1 --dir "$P"
# The shipped ACL names one controller; a second instance needs its own line.
{ cat "$pkg/acl"; printf '\nuser flotilla-controller-2\ntopic readwrite flotilla/v1/#\n'; } >acl
export FL_BROKER_ACL=$tmp/acl
for _ in $(seq 1 20); do
  PORT=$(( 20000 + (RANDOM * 32768 + RANDOM) % 40000 ))
  if FL_BROKER_WAIT_S=10 "$pkg/start-broker.sh" "$P" "$PORT" >start.out 2>&1; then
    broker_up=1; break
  fi
  grep -qE "already in use|exited during start-up" start.out || break
done
[ -n "$broker_up" ] || { cat start.out; echo "FAIL: could not start the broker"; exit 1; }
echo "broker on 127.0.0.1:$PORT"

# ---------------------------------------------------------------- bundles
# Each version is new random data: every install fetches the whole bundle.
mk_trust "$tmp" m1
for v in 1 2 3 4 5; do
  mkdir -p "v$v"
  mk_model "v$v/model.gguf" "$v"
  n=$((MIB << 20)); [ $v = 5 ] && n=$((3 << 20)) # E: 3 MiB over 150 KB/s
  head -c $n /dev/urandom >"v$v/data.bin"
  mk_bundle "v$v.tar" "$tmp/keys" m1 "$v.0" "$v" "v$v/model.gguf" "v$v/data.bin" ||
    { echo "FAIL: bundle v$v"; exit 1; }
done

# ---------------------------------------------------------------- controller
RT=reader-token-0123456789 OT=operator-token-0123456789
cat >ctl.conf <<CONF
[controller]
data_dir = $tmp/data
listen = 127.0.0.1
port = 0
trust_dir = $tmp/trust
read_tokens = test:$RT
operator_tokens = test:$OT

[mqtt]
uri = ssl://127.0.0.1:$PORT
ca = $P/ca.crt
cert = $P/controller.crt
key = $P/controller.key
CONF
metric() { curl -s -H "Authorization: Bearer $RT" "$URL/metrics" | awk -v k="$1" '$1 == k {print $2}'; }
start_ctl() {
  rm -f port
  "$CONTROLLER" --config ctl.conf --port-file port 2>>controller.log &
  cpid=$!
  local _
  for _ in $(seq 100); do [ -s port ] && break; sleep 0.1; done
  [ -s port ] || { bad "controller did not start: $(tail -n 5 controller.log)"; finish; exit 1; }
  URL=http://127.0.0.1:$(cat port)
  export FLOTILLA_CONTROLLER=$URL
  for _ in $(seq 150); do [ "$(metric flotilla_mqtt_connected)" = 1 ] && return 0; sleep 0.1; done
  bad "controller not connected to the broker: $(tail -n 5 controller.log)"; finish; exit 1
}
start_ctl
for v in 1 2 3 4 5; do
  "$FLOTILLA" push "v$v.tar" --token $OT >/dev/null || { bad "push v$v.tar"; finish; exit 1; }
done

# ---------------------------------------------------------------- agent
mkdir -p dev1/trust
cp trust/* dev1/trust/
cat >dev1/agent.conf <<CONF
[agent]
id = dev1
state_dir = $tmp/dev1/state
trust_dir = $tmp/dev1/trust
bandwidth = $CAP

[mqtt]
uri = ssl://127.0.0.1:$PORT
ca = $P/ca.crt
cert = $P/devices/dev1.crt
key = $P/devices/dev1.key
keepalive = 10
CONF
start_agent() {
  FLOTILLA_LOG_LEVEL=info "$AGENT" -c dev1/agent.conf run >>agent.log 2>&1 &
  apid=$!
}
start_agent
show() { "$FLOTILLA" devices show dev1 --token $RT --json 2>/dev/null; }
# wait_until SECONDS COMMAND...: poll every 0.2 s
wait_until() { local n=$(( $1 * 5 )) _; shift; for _ in $(seq $n); do "$@" && return 0; sleep 0.2; done; "$@"; }
online() { [ "$(show | jq -r .device.online)" = true ]; }
wait_until 30 online || { bad "dev1 did not come online: $(tail -n 5 agent.log)"; finish; exit 1; }

status() { "$AGENT" -c dev1/agent.conf status --json 2>/dev/null; }
installed() { # VERSION: the agent's own journal says committed and current
  status | jq -e --arg v "$1" '.models.m1 as $m | $m.slots[$m.current].version == $v and
    $m.last_install.state == "COMMITTED"' >/dev/null 2>&1
}
need_of() { "$FLOTILLA" bundle diff "$1" "$1" --json | jq .total_bytes; }
# The agent's completion line for VERSION: "... fetched: N bytes over MQTT ...".
fetched_of() { grep -o "m1 $1 fetched: [0-9]* bytes" agent.log | tail -n 1 | awk '{print $4}'; }
sent() { metric flotilla_chunk_bytes_sent_total; }
# progress_at_least BYTES: the controller has sent that many chunk bytes
# since the scenario began (its counter restarts with the process).
progress_at_least() { local s; s=$(sent); [ -n "$s" ] && [ $((s - s0)) -ge "$1" ]; }

# ---------------------------------------------------------------- A
echo "--- A: controller killed (-9) mid-transfer, started again"
size=$(stat -c %s v1.tar) need=$(need_of v1.tar)
s0=$(sent)
"$FLOTILLA" deploy dev1 m1@1.0 --token $OT >/dev/null || bad "deploy m1@1.0"
if wait_until 60 progress_at_least $((need * 15 / 100)); then
  at=$(( $(sent) - s0 ))
  kill -9 "$cpid"; wait "$cpid" 2>/dev/null; cpid=
  check "controller killed mid-transfer ($at of $need bytes sent)" [ "$at" -lt "$need" ]
  sleep 1
  start_ctl
  s0=0 # the new process counts from zero
else
  bad "no progress before the controller kill"
fi
check "A: 1.0 installed after the controller restart" wait_until 90 installed 1.0
got=$(fetched_of 1.0)
echo "A: agent fetched ${got:-?} bytes over MQTT; bundle $size bytes, chunks $need bytes, window $WINDOW"
check "A: bytes fetched (${got:-none}) <= bundle size + one window ($((size + WINDOW)))" \
  [ -n "$got" ] && [ "${got:-0}" -le $((size + WINDOW)) ]
check "A: the restarted controller served the rest" [ "$(sent)" -gt 0 ]

# ---------------------------------------------------------------- B
echo "--- B: broker stopped and started again mid-transfer"
size=$(stat -c %s v2.tar) need=$(need_of v2.tar)
s0=$(sent)
"$FLOTILLA" deploy dev1 m1@2.0 --token $OT >/dev/null || bad "deploy m1@2.0"
if wait_until 60 progress_at_least $((need * 15 / 100)); then
  at=$(( $(sent) - s0 ))
  "$pkg/stop-broker.sh" "$P" >/dev/null 2>&1 || bad "stop-broker"
  check "broker stopped mid-transfer ($at of $need bytes sent)" [ "$at" -lt "$need" ]
  sleep 1
  FL_BROKER_WAIT_S=10 "$pkg/start-broker.sh" "$P" "$PORT" >start.out 2>&1 ||
    { cat start.out; bad "broker restart"; finish; exit 1; }
else
  bad "no progress before the broker restart"
fi
check "B: 2.0 installed after the broker restart" wait_until 90 installed 2.0
got=$(fetched_of 2.0)
echo "B: agent fetched ${got:-?} bytes over MQTT; bundle $size bytes, chunks $need bytes"
check "B: bytes fetched (${got:-none}) <= bundle size + one window ($((size + WINDOW)))" \
  [ -n "$got" ] && [ "${got:-0}" -le $((size + WINDOW)) ]
check "B: the agent reconnected (two connections in its log)" \
  [ "$(grep -c 'mqtt: connected' agent.log)" -ge 2 ]

# ---------------------------------------------------------------- C
echo "--- C: agent killed (-9) mid-transfer, started again"
size=$(stat -c %s v3.tar) need=$(need_of v3.tar)
wait_until 30 online || bad "dev1 online again before C"
s0=$(sent)
"$FLOTILLA" deploy dev1 m1@3.0 --token $OT >/dev/null || bad "deploy m1@3.0"
if wait_until 60 progress_at_least $((need * 40 / 100)); then
  kill -9 "$apid"; wait "$apid" 2>/dev/null; apid=
  at=$(( $(sent) - s0 ))
  check "agent killed mid-transfer ($at of $need bytes sent)" [ "$at" -lt "$need" ]
  check "the journal keeps FETCHING" [ "$(status | jq -r .models.m1.last_install.state)" = FETCHING ]
  start_agent
else
  bad "no progress before the agent kill"
fi
check "C: 3.0 installed after the agent restart" wait_until 90 installed 3.0
sleep 1 # the controller's last acknowledgements
total=$(( $(sent) - s0 ))
echo "C: controller sent $total chunk bytes for the install; bundle $size bytes, chunks $need bytes"
check "C: bytes sent ($total) <= bundle size + one window ($((size + WINDOW)))" [ "$total" -le $((size + WINDOW)) ]
rec=$(grep -o "m1 3.0: [0-9]* bytes resumed ([0-9]* of them read back" agent.log | tail -n 1)
echo "C: agent on restart: ${rec:-no resume line}"
check "C: the restarted agent resumed with the chunks written before the kill" \
  [ "$(awk '{print $3}' <<<"${rec:-x 0 0}")" -gt 0 ]
check "C: slot files equal the bundle's" cmp -s "$tmp/dev1/state/models/m1/current/data.bin" v3/data.bin

# ---------------------------------------------------------------- D
echo "--- D: two controller instances share the chunk requests"
sed -e "s|$tmp/data|$tmp/data2|" -e "s|controller\.crt|controller-2.crt|" \
    -e "s|controller\.key|controller-2.key|" ctl.conf >ctl2.conf
rm -f port2
"$CONTROLLER" --config ctl2.conf --port-file port2 2>>controller2.log &
cpid2=$!
for _ in $(seq 100); do [ -s port2 ] && break; sleep 0.1; done
URL2=http://127.0.0.1:$(cat port2 2>/dev/null)
metric2() { curl -s -H "Authorization: Bearer $RT" "$URL2/metrics" | awk -v k="$1" '$1 == k {print $2}'; }
up2() { [ "$(metric2 flotilla_mqtt_connected)" = 1 ]; }
check "second controller connected as flotilla-controller-2" wait_until 20 up2
FLOTILLA_CONTROLLER=$URL2 "$FLOTILLA" push v4.tar --token $OT >/dev/null || bad "push v4.tar to the second controller"
size=$(stat -c %s v4.tar) need=$(need_of v4.tar)
s0=$(sent) t0=$(metric2 flotilla_chunk_bytes_sent_total)
"$FLOTILLA" deploy dev1 m1@4.0 --token $OT >/dev/null || bad "deploy m1@4.0"
check "D: 4.0 installed" wait_until 90 installed 4.0
sleep 1
one=$(( $(sent) - s0 )) two=$(( $(metric2 flotilla_chunk_bytes_sent_total) - t0 ))
echo "D: controller 1 sent $one, controller 2 sent $two chunk bytes; bundle $size bytes"
check "D: both controllers served part of the install" [ "$one" -gt 0 ] && [ "$two" -gt 0 ]
check "D: together within the bundle's size + one window" [ $((one + two)) -le $((size + WINDOW)) ]
kill "$cpid2"; wait "$cpid2" 2>/dev/null; cpid2=

# ---------------------------------------------------------------- E
if [ -n "$PROXY" ]; then
  echo "--- E: poor link (faultproxy 150 KB/s, 50 ms), no bandwidth cap"
  "$PROXY" --to "127.0.0.1:$PORT" --port-file proxy.port --bw 150000 --latency-ms 50 2>proxy.log &
  ppid=$!
  for _ in $(seq 50); do [ -s proxy.port ] && break; sleep 0.1; done
  kill "$apid"; wait "$apid" 2>/dev/null; apid=
  sed -i -e "s|^uri = .*|uri = ssl://127.0.0.1:$(cat proxy.port)|" -e "s|^bandwidth = .*|bandwidth = 0|" \
    dev1/agent.conf
  start_agent
  wait_until 30 online || bad "dev1 online through the proxy"
  size=$(stat -c %s v5.tar)
  t0=$SECONDS
  "$FLOTILLA" deploy dev1 m1@5.0 --token $OT >/dev/null || bad "deploy m1@5.0"
  check "E: 5.0 installed over the poor link" wait_until 120 installed 5.0
  line=$(grep -o "m1 5.0 fetched: .*" agent.log | tail -n 1)
  echo "E: $((SECONDS - t0)) s; agent: ${line:-no completion line}"
  got=$(fetched_of 5.0)
  check "E: bytes fetched (${got:-none}) <= bundle size + one window ($((size + WINDOW)))" \
    [ -n "$got" ] && [ "${got:-0}" -le $((size + WINDOW)) ]
  check "E: no request timed out" grep -q "m1 5.0 fetched: .* 0 timeouts" agent.log
else
  echo "skip: E (no faultproxy given)"
fi

check "controller: no chunk/req dropped as a flood" [ "$(metric flotilla_chunk_requests_flood_total)" = 0 ]
check "no sanitizer report from the agent or the controller" \
  bash -c "! grep -l 'ERROR: AddressSanitizer\|runtime error:' agent.log controller.log controller2.log"
finish
