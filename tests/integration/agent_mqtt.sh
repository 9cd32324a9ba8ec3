#!/usr/bin/env bash
# flotilla-agent over MQTT (docs/install.md "Installing over MQTT"): a real
# mosquitto with mutual TLS and the Flotilla ACL on 127.0.0.1, a real agent
# (`flotilla-agent run` with [mqtt] configured) and a small fake controller
# (agent_mqtt_ctl) that serves the chunk protocol from signed bundles, relays
# commands and records the device's retained state and events.
#
#   agent_mqtt.sh PKI_CLI FLOTILLA AGENT MKMODEL CTL
#
# Checks: deploy -> fetch -> install, state shows the version; a fine-tune
# fetches only changed chunks (<= 1.2x the bundle diff); broker restart and
# kill -9 of the agent mid-transfer: the install completes and the bytes
# served stay within one window (8 x 256 KiB) of what was needed; the
# bandwidth cap paces the transfer;
# corrupted chunks are fetched again; tampered / unsigned / replayed
# manifests are refused and change nothing; redelivered commands are
# dropped; junk on the device's topics neither crashes it nor grows memory.
# Bounded by a watchdog; broker and processes are stopped on any exit.
# FL_BROKER_PKGDIR: another packaging/mosquitto (broker settings experiments).
set -uo pipefail
if [ $# -ne 5 ]; then
  echo "usage: agent_mqtt.sh PKI_CLI FLOTILLA AGENT MKMODEL CTL" >&2
  exit 2
fi
cli=$1 FLOTILLA=$2 AGENT=$3 MKMODEL=$4 CTL=$5
here=$(cd "$(dirname "$0")" && pwd)
pkg=${FL_BROKER_PKGDIR:-$(cd "$here/../../packaging/mosquitto" && pwd)}
. "$here/lib.sh"
for t in jq mosquitto; do
  command -v $t >/dev/null || [ -x /usr/sbin/$t ] || { echo "FAIL: $t not installed"; exit 1; }
done

base=${FL_TEST_TMPDIR:-/tmp}
mkdir -p "$base"
if [ "$(id -u)" = 0 ] && id mosquitto >/dev/null 2>&1 && command -v runuser >/dev/null &&
   ! runuser -u mosquitto -- test -x "$base" 2>/dev/null; then
  base=/tmp
fi
tmp=$(mktemp -d "$base/agent_mqtt.XXXXXX")
chmod 0755 "$tmp"
P=$tmp/pki
S=$tmp/state
T=$tmp/trust
ST=$tmp/ctl.stats
agent_pid= ctl_pid= broker_up=0 rc=1
cleanup() {
  [ -n "$agent_pid" ] && kill -9 "$agent_pid" 2>/dev/null
  [ -n "$ctl_pid" ] && kill "$ctl_pid" 2>/dev/null
  [ -n "${wd:-}" ] && kill "$wd" 2>/dev/null
  [ "$broker_up" = 1 ] && "$pkg/stop-broker.sh" "$P" >/dev/null 2>&1
  wait 2>/dev/null
  if [ "$rc" = 0 ] && [ -z "${FL_KEEP_TMP:-}" ]; then rm -rf "$tmp"; else echo "files kept in $tmp"; fi
}
trap cleanup EXIT
trap 'echo "FAIL: interrupted (signal, or the watchdog)"; exit 1' INT TERM
main_pid=$$
( trap 'kill "$s" 2>/dev/null; exit 0' TERM
  sleep "${FL_TEST_WATCHDOG_S:-280}" & s=$!
  wait "$s" && kill -TERM "$main_pid" ) >/dev/null 2>&1 &
wd=$!

# --- PKI, broker, trust, bundles -------------------------------------------
"$cli" pki init --dir "$P" >/dev/null &&
"$cli" pki issue-server --dir "$P" --dns localhost --ip 127.0.0.1 >/dev/null &&
"$cli" pki issue-controller --dir "$P" >/dev/null &&
"$cli" pki issue-device dev1 --dir "$P" >/dev/null || { echo "FAIL: pki"; exit 1; }
for _ in $(seq 1 20); do
  PORT=$(( 20000 + (RANDOM * 32768 + RANDOM) % 40000 ))
  if FL_BROKER_WAIT_S=10 "$pkg/start-broker.sh" "$P" "$PORT" >"$tmp/start.out" 2>&1; then
    broker_up=1; break
  fi
  grep -qE "already in use|exited during start-up" "$tmp/start.out" || break
done
[ "$broker_up" = 1 ] || { cat "$tmp/start.out"; echo "FAIL: broker"; exit 1; }
echo "broker on 127.0.0.1:$PORT"

mk_trust "$tmp" m1
MIB=${FL_AGENT_MQTT_MIB:-50}
mkdir -p "$tmp"/v{1,2,3,4,5,6}
mk_model "$tmp/v1/model.gguf" 1
head -c $((MIB << 20)) /dev/urandom >"$tmp/v1/data.bin"
rewrite() { # rewrite IN OUT MIB_AT... : copy with 1 MiB rewritten at each offset
  local in=$1 out=$2; shift 2
  cp "$in" "$out"
  for at in "$@"; do
    head -c $((1 << 20)) /dev/urandom | dd of="$out" bs=1M seek="$at" conv=notrunc status=none
  done
}
for v in 2 3 4 5 6; do cp "$tmp/v1/model.gguf" "$tmp/v$v/model.gguf"; done
rewrite "$tmp/v1/data.bin" "$tmp/v2/data.bin" 3 17 30 44                   # ~8 % changed
rewrite "$tmp/v2/data.bin" "$tmp/v3/data.bin" $(seq 1 3 $((MIB - 2)))      # ~33 % changed
rewrite "$tmp/v3/data.bin" "$tmp/v4/data.bin" 5 25
rewrite "$tmp/v4/data.bin" "$tmp/v5/data.bin" $(seq 2 3 $((MIB - 2)))
rewrite "$tmp/v4/data.bin" "$tmp/v6/data.bin" 11
for v in 1 2 3 4 5 6; do
  mk_bundle "$tmp/v$v.tar" "$tmp/keys" m1 "$v.0" "$v" "$tmp/v$v/model.gguf" "$tmp/v$v/data.bin" ||
    { echo "FAIL: bundle v$v"; exit 1; }
done

export FL_MQTT_PKI=$P FL_MQTT_PORT=$PORT
start_ctl() { # [--corrupt N]
  # Its object store goes under $tmp: it is killed, not stopped, so it
  # cannot remove the store itself (300 MB per run were left behind).
  FL_TEST_TMPDIR=$tmp "$CTL" serve dev1 "$ST" "$@" "$tmp"/v[1-6].tar >>"$tmp/ctl.log" 2>&1 &
  ctl_pid=$!
  for _ in $(seq 1 100); do [ -s "$ST" ] && grep -q serving "$tmp/ctl.log" && return 0; sleep 0.1; done
  echo "FAIL: controller did not start"; cat "$tmp/ctl.log"; exit 1
}
stop_ctl() { kill "$ctl_pid" 2>/dev/null; wait "$ctl_pid" 2>/dev/null; ctl_pid=; }
stat_of() { jq -r ".$1" "$ST"; }
final_bytes() { sleep 0.5; stat_of bytes; } # the controller writes its stats every 200 ms

cat >"$tmp/agent.conf" <<EOF
[agent]
id = dev1
state_dir = $S
trust_dir = $T
labels = site=lab, line=3
bandwidth = 0
[mqtt]
uri = ssl://127.0.0.1:$PORT
ca = $P/ca.crt
cert = $P/devices/dev1.crt
key = $P/devices/dev1.key
keepalive = 10
EOF
start_agent() {
  "$AGENT" -c "$tmp/agent.conf" run >>"$tmp/agent.log" 2>&1 &
  agent_pid=$!
}
stop_agent() { kill "$agent_pid" 2>/dev/null; wait "$agent_pid" 2>/dev/null; agent_pid=; }
status() { "$AGENT" -c "$tmp/agent.conf" status --json; }
cur_version() { status | jq -r '.models.m1 as $m | if $m.current == "" then "" else $m.slots[$m.current].version end' 2>/dev/null; }
state_version() { jq -r '.models.m1 as $m | $m.slots[$m.current].version' "$ST.state" 2>/dev/null; }
wait_for() { # SECONDS COMMAND...: poll until COMMAND succeeds
  local limit=$1; shift
  local t=0
  while ! "$@"; do
    sleep 0.2; t=$((t + 1))
    if [ $t -ge $((limit * 5)) ]; then return 1; fi
  done
  return 0
}
n=0
send_cmd() { # JSON
  n=$((n + 1))
  printf '%s' "$1" >"$ST.cmd/c$n.json.tmp" && mv "$ST.cmd/c$n.json.tmp" "$ST.cmd/c$n.json"
}
envelope() { tar -xOf "$1" manifest.dsse.json; }
deploy() { # ID BUNDLE
  send_cmd "$(jq -cn --arg id "$1" --arg env "$(envelope "$2")" '{v:1,id:$id,kind:"deploy",envelope:$env}')"
}
needed() { # OLD NEW -> bytes of NEW's chunks OLD lacks
  if [ "$1" = - ]; then "$FLOTILLA" bundle diff "$2" "$2" --json | jq .total_bytes
  else "$FLOTILLA" bundle diff "$1" "$2" --json | jq .fetch_bytes; fi
}
installed() { [ "$(cur_version)" = "$1" ] && [ "$(status | jq -r .models.m1.last_install.state)" = COMMITTED ]; }

# --- offline config still works, bad config refused -------------------------
check "config without agent.id but with mqtt.uri is refused" \
  bash -c "printf '[mqtt]\nuri = ssl://127.0.0.1:1\n' >'$tmp/bad.conf'; ! '$AGENT' -c '$tmp/bad.conf' status 2>/dev/null"
check "bad labels are refused" \
  bash -c "printf '[agent]\nlabels = nonsense\n' >'$tmp/bad2.conf'; ! '$AGENT' -c '$tmp/bad2.conf' status 2>/dev/null"

start_ctl
start_agent
check "agent publishes a retained online state" wait_for 20 bash -c "jq -e '.online == true and .device == \"dev1\" and .labels.site == \"lab\" and (.hw.backends | index(\"gguf\"))' '$ST.state' >/dev/null 2>&1"

# --- 1. first deploy: everything over the network ---------------------------
b0=$(stat_of bytes)
t0=$(date +%s%N)
deploy d1 "$tmp/v1.tar"
if wait_for 120 installed 1.0; then
  t1=$(date +%s%N)
  ok "v1 fetched over MQTT and installed ($(( (t1 - t0) / 1000000 )) ms for $MIB MiB over TLS loopback)"
else
  bad "v1 not installed: $(status | jq -c .models.m1.last_install)"
fi
got=$(( $(final_bytes) - b0 )); need=$(needed - "$tmp/v1.tar")
echo "v1: served $got bytes, needed $need"
check "v1: served bytes within 2% + 1 window of the bundle's chunks" [ "$got" -le $(( need + need / 50 + 2097152 )) ]
check "state shows v1 as current" wait_for 10 bash -c "[ \"\$(jq -r '.models.m1 as \$m | \$m.slots[\$m.current].version' '$ST.state' 2>/dev/null)\" = 1.0 ]"
check "events reached the controller (install_started, committed)" \
  wait_for 10 bash -c "grep -q install_started '$ST.events' && grep -q committed '$ST.events'"

# --- 2. fine-tune: only changed chunks --------------------------------------
b0=$(stat_of bytes)
deploy d2 "$tmp/v2.tar"
check "v2 installed" wait_for 60 installed 2.0
got=$(( $(final_bytes) - b0 )); need=$(needed "$tmp/v1.tar" "$tmp/v2.tar")
echo "v2 (fine-tune): served $got bytes, bundle diff $need"
check "fine-tune fetched <= 1.2x the bundle diff ($got vs $need)" [ "$got" -le $(( need * 12 / 10 )) ]

# --- 3. broker restart and kill -9 mid-transfer -----------------------------
sed -i 's/^bandwidth = .*/bandwidth = 2097152/' "$tmp/agent.conf"
stop_agent; start_agent
sleep 1
b0=$(stat_of bytes)
need=$(needed "$tmp/v2.tar" "$tmp/v3.tar")
t3=$(date +%s%N)
deploy d3 "$tmp/v3.tar"
progress() { [ $(( $(stat_of bytes) - b0 )) -ge "$1" ]; }
if wait_for 30 progress $((need / 4)); then
  "$pkg/stop-broker.sh" "$P" >/dev/null 2>&1
  sleep 1
  FL_BROKER_WAIT_S=10 "$pkg/start-broker.sh" "$P" "$PORT" >"$tmp/start.out" 2>&1 || { cat "$tmp/start.out"; echo "FAIL: broker restart"; exit 1; }
  ok "broker restarted mid-transfer"
  check "state reports FETCHING with progress" wait_for 15 bash -c \
    "jq -e '.models.m1.install | .state == \"FETCHING\" and .bytes_done > 0 and .bytes_total >= .bytes_done and .chunks_total > 0' '$ST.state' >/dev/null 2>&1"
else
  bad "no progress before the broker restart"
fi
if wait_for 40 progress $((need * 6 / 10)); then
  kill -9 "$agent_pid"; wait "$agent_pid" 2>/dev/null
  ok "agent killed (-9) mid-transfer at $(( $(stat_of bytes) - b0 )) of $need bytes"
  check "the journal keeps FETCHING for a network install" \
    [ "$(status | jq -r .models.m1.last_install.state)" = FETCHING ]
  start_agent
else
  bad "no progress before the kill"
fi
check "v3 installed after broker restart and kill -9" wait_for 90 installed 3.0
got=$(( $(final_bytes) - b0 ))
ms=$(( ($(date +%s%N) - t3) / 1000000 ))
echo "v3: served $got bytes, needed $need, excess $((got - need)), $ms ms at a 2 MiB/s cap"
check "bandwidth cap paced the transfer (>= 80% of need / 2 MiB/s)" [ "$ms" -ge $(( need * 800 / 2097152 )) ]
check "v3: bytes served within one window (8 x 256 KiB) of the needed ($got vs $need)" \
  [ "$got" -le $(( need + 8 * 262144 )) ]
check "progress file removed after the install" [ ! -e "$S/progress/m1.progress" ]

# --- 4. corrupted chunks are fetched again ----------------------------------
sed -i 's/^bandwidth = .*/bandwidth = 0/' "$tmp/agent.conf"
stop_agent; stop_ctl
start_ctl --corrupt 3
start_agent
deploy d4 "$tmp/v4.tar"
check "v4 installed although 3 chunks arrived corrupted" wait_for 60 installed 4.0
check "the controller did corrupt 3 chunks" [ "$(stat_of corrupted)" = 3 ]
check "v4 slot files match the bundle" cmp "$S/models/m1/current/data.bin" "$tmp/v4/data.bin"
check "agent logged the refetches" grep -q "3 bad chunks" "$tmp/agent.log"

# --- 5. a newer deploy supersedes a running fetch ---------------------------
sed -i 's/^bandwidth = .*/bandwidth = 1048576/' "$tmp/agent.conf"
stop_agent; start_agent
sleep 1
b0=$(stat_of bytes)
deploy d5 "$tmp/v5.tar"
if wait_for 30 progress 1048576; then
  deploy d6 "$tmp/v6.tar"
  check "v6 installed after superseding v5 mid-fetch" wait_for 60 installed 6.0
  check "v5 journaled REJECTED (superseded)" bash -c \
    "sqlite3 '$S/state.db' \"SELECT state || ' ' || error FROM installs WHERE version='5.0'\" | grep -q '^7 superseded'"
  check "no .part file or progress left behind" bash -c "! find '$S/models' '$S/progress' -name '*.part' -o -name '*.progress' | grep -q ."
else
  bad "no progress on v5"
fi
sed -i 's/^bandwidth = .*/bandwidth = 0/' "$tmp/agent.conf"
stop_agent; start_agent

# --- 6. refusals change nothing ---------------------------------------------
snapshot() { { status | jq -S 'del(.models[].last_install)'; find "$S/models" -type f -exec sha256sum {} + | sort; } 2>/dev/null; }
before=$(snapshot)
ev0=$(grep -c install_rejected "$ST.events" 2>/dev/null || true)
env4=$(envelope "$tmp/v4.tar")
tampered=$(jq -c '.payload |= (if .[10:11] == "A" then .[0:10] + "B" + .[11:] else .[0:10] + "A" + .[11:] end)' <<<"$env4")
unsigned=$(jq -c '.signatures = []' <<<"$env4")
send_cmd "$(jq -cn --arg env "$tampered" '{v:1,id:"t1",kind:"deploy",envelope:$env}')"
send_cmd "$(jq -cn --arg env "$unsigned" '{v:1,id:"t2",kind:"deploy",envelope:$env}')"
deploy t3 "$tmp/v2.tar"   # replay: sequence 2 < 4
check "tampered, unsigned and replayed deploys reported as install_rejected" \
  wait_for 20 bash -c "[ \$(grep -o install_rejected '$ST.events' | wc -l) -ge $((ev0 + 3)) ]"
check "reasons: bad_signature/unsigned/replay" bash -c \
  "grep -q bad_signature '$ST.events' && grep -Eq 'unsigned|no signature' '$ST.events' && grep -q replay '$ST.events'"
check "refusals changed nothing" [ "$(snapshot)" = "$before" ]

# Redelivered command ids are dropped: revert r1 twice is one revert.
send_cmd '{"v":1,"id":"r1","kind":"revert","model":"m1"}'
check "revert by command" wait_for 20 bash -c "[ \"\$('$AGENT' -c '$tmp/agent.conf' status --json | jq -r '.models.m1 as \$m | \$m.slots[\$m.current].version')\" = 4.0 ]"
send_cmd '{"v":1,"id":"r1","kind":"revert","model":"m1"}'
send_cmd '{"v":1,"id":"p1","kind":"ping"}'
sleep 3
check "the redelivered revert (same id) was dropped" [ "$(cur_version)" = 4.0 ]

# --- 7. junk on the device's topics -----------------------------------------
stop_ctl
rss() { awk '/VmRSS/ {print $2}' "/proc/$agent_pid/status"; }
rss0=$(rss)
"$CTL" junk dev1 3000 >"$tmp/junk.out" 2>&1
check "3000 junk messages published" grep -q "sent 3000" "$tmp/junk.out"
sleep 2
check "agent survived the junk" kill -0 "$agent_pid"
rss1=$(rss)
echo "agent RSS before junk ${rss0} KiB, after ${rss1} KiB"
if ldd "$AGENT" 2>/dev/null | grep libasan >/dev/null; then # not -q: pipefail + SIGPIPE
  echo "skip: RSS bound under AddressSanitizer (its quarantine holds freed memory)"
else
  check "agent RSS grew < 32 MiB" [ $(( ${rss1:-999999} - ${rss0:-0} )) -lt 32768 ]
fi
start_ctl
rm -f "$ST.state"
send_cmd '{"v":1,"id":"p2","kind":"ping"}'
check "agent still answers (state after ping)" wait_for 20 test -s "$ST.state"
check "state still valid after the junk" bash -c "jq -e '.online and .models.m1.current' '$ST.state' >/dev/null"
# The oversized junk reached the agent (which dropped and acknowledged it):
# a broker dropping it for us would, in mosquitto 2.0.11, keep each one
# counted in the session's in-flight window until nothing more is delivered
# (docs/mqtt.md "Message size").
check "the broker dropped no oversized message meant for the agent" \
  bash -c "! grep -q 'Dropping too large outgoing PUBLISH for dev1' '$P/broker/mosquitto.log'"

stop_agent
check "a clean stop publishes the retained offline state" \
  wait_for 10 bash -c "jq -e '.online == false and .device == \"dev1\"' '$ST.state' >/dev/null 2>&1"
check "agent stopped cleanly, no sanitizer report" bash -c "! grep -q Sanitizer '$tmp/agent.log' '$tmp/ctl.log'"
if ! finish; then
  echo "--- agent log (tail) ---"; tail -n 40 "$tmp/agent.log"
  exit 1
fi
rc=0
exit 0
