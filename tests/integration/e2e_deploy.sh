#!/usr/bin/env bash
# End to end over MQTT: a real mosquitto (mutual TLS + the Flotilla ACL) on a
# free port, a PKI made with `flotilla pki`, a real flotilla-controller (HTTP
# + MQTT) and real flotilla-agent `run` processes.
#
#   e2e_deploy.sh FLOTILLA FLOTILLA_CONTROLLER FLOTILLA_AGENT MKMODEL CHUNK_FETCH
#
# Part 1 (controller, devices played by mosquitto_pub/_sub with the device
# certificates): retained state ingestion, device id taken from the topic,
# deploy/revert through the CLI arrive on the device's cmd with the stored
# envelope, bad deploy requests change nothing, chunk/req answered on
# chunk/dat (FLCK frames checked byte for byte), another device's
# certificate sees none of it, metrics count what was refused.
# CHUNK_FETCH (tests/integration/chunk_fetch.c) plays the device's side of
# chunk/req (one connection) and fetches a whole model file with 8 ranges
# outstanding over TLS, every chunk verified, printing the throughput.
# Part 2 (real agents dev1, dev2): deploy a signed bundle, wait (bounded)
# until the controller's view and the device's own status report it
# committed; deploy a fine-tune and check the bytes moved; revert. It runs
# when the agent knows [mqtt] (FL_E2E_AGENT=0 skips it, =1 requires it).
# FL_E2E_BROKER_PKG: another directory with start-broker.sh and its template
# (to compare broker settings, e.g. set_tcp_nodelay).
set -uo pipefail
if [ $# -ne 5 ]; then
  echo "usage: e2e_deploy.sh FLOTILLA CONTROLLER AGENT MKMODEL CHUNK_FETCH" >&2
  exit 2
fi
FLOTILLA=$1 CONTROLLER=$2 AGENT=$3 MKMODEL=$4 FETCH=$5
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
pkg=${FL_E2E_BROKER_PKG:-$src/packaging/mosquitto}
. "$here/lib.sh"
for t in mosquitto mosquitto_pub mosquitto_sub jq curl timeout sha256sum od stdbuf; do
  command -v $t >/dev/null || [ -x /usr/sbin/$t ] ||
    { echo "FAIL: $t not installed (apt-get install mosquitto mosquitto-clients jq curl)"; exit 1; }
done

base=${FL_TEST_TMPDIR:-/tmp}
mkdir -p "$base"
# Run as root, the broker drops to user mosquitto, which must reach its files.
if [ "$(id -u)" = 0 ] && id mosquitto >/dev/null 2>&1 && command -v runuser >/dev/null &&
   ! runuser -u mosquitto -- test -x "$base" 2>/dev/null; then
  base=/tmp
fi
tmp=$(mktemp -d "$base/e2e_deploy.XXXXXX")
chmod 0755 "$tmp"
P=$tmp/pki
broker_up=
pids=()
cpid=
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  if [ -n "$cpid" ]; then kill -9 "$cpid" 2>/dev/null; fi
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
pids+=($!)
cd "$tmp"

# ---------------------------------------------------------------- PKI, broker
run_pki() { "$FLOTILLA" pki "$@" >/dev/null || { echo "FAIL: flotilla pki $* failed"; exit 1; }; }
run_pki init --dir "$P"
run_pki issue-server --dir "$P" --dns localhost --ip 127.0.0.1
run_pki issue-controller --dir "$P"
for d in dev1 dev2 dev3 dev4; do run_pki issue-device $d --dir "$P"; done

start_on_free_port() {
  local _
  for _ in $(seq 1 20); do
    PORT=$(( 20000 + (RANDOM * 32768 + RANDOM) % 40000 ))
    if FL_BROKER_WAIT_S=10 "$pkg/start-broker.sh" "$P" "$PORT" >start.out 2>&1; then
      broker_up=1
      return 0
    fi
    grep -qE "already in use|exited during start-up" start.out || break
  done
  cat start.out
  return 1
}
start_on_free_port || { echo "FAIL: could not start the broker"; exit 1; }
echo "broker on 127.0.0.1:$PORT"
tls() { echo "--cafile $P/ca.crt --cert $P/devices/$1.crt --key $P/devices/$1.key"; }
# mpub DEVICE TOPIC [mosquitto_pub args...]: QoS 1 as that device; sets out, rc
mpub() {
  local dev=$1 topic=$2; shift 2
  # shellcheck disable=SC2046
  out=$(timeout 10 mosquitto_pub -h 127.0.0.1 -p "$PORT" -V 5 -q 1 $(tls "$dev") -t "$topic" "$@" 2>&1)
  rc=$?
}
# msub NAME DEVICE COUNT TOPIC [args]: background subscriber as DEVICE; one
# line per message in NAME.raw, the payload in hex (-F %x), among
# mosquitto_sub's debug lines; returns after SUBACK.
msub() {
  local name=$1 dev=$2 n=$3 topic=$4; shift 4
  local cnt=()
  [ "$n" -gt 0 ] && cnt=(-C "$n")
  : >"$name.raw"
  # shellcheck disable=SC2046
  timeout 60 stdbuf -oL mosquitto_sub -h 127.0.0.1 -p "$PORT" -V 5 -q 1 $(tls "$dev") -t "$topic" \
    -F '%x' -d "${cnt[@]}" "$@" >"$name.raw" 2>&1 &
  pids+=($!)
  eval "pid_$name=$!"
  local _
  for _ in $(seq 200); do grep -q "SUBACK" "$name.raw" 2>/dev/null && return 0; sleep 0.05; done
  echo "FAIL: $name: no SUBACK"; cat "$name.raw"; return 1
}
# The messages NAME received, one hex line each (debug lines dropped).
msgs() { grep -E '^[0-9a-f]+$' "$1.raw"; }
unhex() { tr -d '\n' | sed 's/../\\x&/g' | xargs -0 printf '%b'; }
wait_pid() { local v="pid_$1" _; for _ in $(seq "${2:-100}"); do kill -0 "${!v}" 2>/dev/null || return 0; sleep 0.1; done; return 1; }

# ---------------------------------------------------------------- controller
RT=reader-token-0123456789 OT=operator-token-0123456789
mk_trust "$tmp" tiny ftiny
cat >ctl.conf <<CONF
[controller]
data_dir = $tmp/data
listen = 127.0.0.1
port = 0
trust_dir = $tmp/trust
read_tokens = dash:$RT
operator_tokens = ci:$OT
ingest_flush_ms = 50

[mqtt]
uri = ssl://127.0.0.1:$PORT
ca = $P/ca.crt
cert = $P/controller.crt
key = $P/controller.key
CONF
"$CONTROLLER" --config ctl.conf --port-file port 2>>controller.log &
cpid=$!
for _ in $(seq 100); do [ -s port ] && break; sleep 0.1; done
[ -s port ] || { bad "controller did not start: $(cat controller.log)"; finish; exit 1; }
URL=http://127.0.0.1:$(cat port)
export FLOTILLA_CONTROLLER=$URL
metric() { curl -s -H "Authorization: Bearer $RT" "$URL/metrics" | awk -v k="$1" '$1 == k {print $2}'; }
for _ in $(seq 100); do [ "$(metric flotilla_mqtt_connected)" = 1 ] && break; sleep 0.1; done
check "controller connected to the broker over mutual TLS" [ "$(metric flotilla_mqtt_connected)" = 1 ]
grep -q "connecting to ssl://127.0.0.1:$PORT as flotilla-controller" controller.log ||
  bad "controller client id is not the certificate CN: $(grep mqtt controller.log)"

show() { "$FLOTILLA" devices show "$1" --token $RT --json 2>/dev/null; }
# wait_until SECONDS COMMAND...: poll every 0.2 s
wait_until() { local n=$(( $1 * 5 )) _; shift; for _ in $(seq $n); do "$@" && return 0; sleep 0.2; done; "$@"; }

# ---------------------------------------------------------------- part 1
echo "--- part 1: controller over MQTT (devices played by mosquitto_pub/sub)"
state3() { # VERSION
  printf '{"v":1,"device":"dev3","online":true,"ts":"2026-11-25T10:00:00Z","agent":"test",'
  printf '"hw":{"arch":"x86_64","ram_mb":512,"accelerators":[],"backends":["gguf"]},'
  printf '"labels":{"site":"lab"},"models":{"tiny":{"current":"a","slots":{"a":{"status":"ready",'
  printf '"version":"%s","sequence":1}}}}}' "$1"
}
mpub dev3 flotilla/v1/dev/dev3/state -r -m "$(state3 0.9)"
check "dev3 publishes its retained state ($out)" [ $rc -eq 0 ]
has_version() { [ "$(show "$1" | jq -r --arg m "$2" '.models[] | select(.model == $m) | .version')" = "$3" ]; }
check "controller registered dev3 from its state (tiny 0.9)" wait_until 10 has_version dev3 tiny 0.9
check "dev3 is online with its labels" [ "$(show dev3 | jq -r '[.device.online, .device.labels.site] | join(" ")')" = "true lab" ]
refused0=$(metric 'flotilla_mqtt_refused_total{topic="state"}')
# dev3 claims to be dev1 on its own topic; then junk; then an oversized state.
mpub dev3 flotilla/v1/dev/dev3/state -m "$(state3 0.9 | sed 's/"dev3"/"dev1"/')"
mpub dev3 flotilla/v1/dev/dev3/state -m 'not json'
head -c 70000 /dev/zero | tr '\0' ' ' >big.json
mpub dev3 flotilla/v1/dev/dev3/state -f big.json
refused_ok() { [ "$(metric 'flotilla_mqtt_refused_total{topic="state"}')" -ge $((refused0 + 3)) ]; }
check "spoofed, malformed and oversized states are counted as refused" wait_until 10 refused_ok
check "no device 'dev1' was created by dev3's spoof" bash -c "! FLOTILLA_CONTROLLER=$URL '$FLOTILLA' devices show dev1 --token $RT >/dev/null 2>&1"
check "dev3's record is unchanged by the refused states" has_version dev3 tiny 0.9
mpub dev3 flotilla/v1/dev/dev1/state -m "$(state3 0.9)"
check "the broker refuses dev3 publishing on dev1's state topic ($out)" grep -q "Not authorized" <<<"$out"

# Bundles.
mk_model m1/tiny.gguf 1
mk_bundle b1.tar "$tmp/keys" tiny 1.0 1 m1/tiny.gguf
out=$("$FLOTILLA" push b1.tar --token $OT 2>&1); rc=$?
check "push tiny 1.0 ($out)" [ $rc -eq 0 ]
bundles=$(curl -s -H "Authorization: Bearer $RT" "$URL/api/v1/bundles")
env_sha=$(jq -r '.bundles[] | select(.version == "1.0") | .envelope_sha256' <<<"$bundles")
cidx_sha=$(jq -r '.bundles[] | select(.version == "1.0") | .files[0].chunk_index_sha256' <<<"$bundles")

# Deploy to dev3: the command arrives on dev3's cmd, with the envelope.
msub cmd3 dev3 2 flotilla/v1/dev/dev3/cmd
msub spy dev4 0 flotilla/v1/dev/dev3/cmd -t flotilla/v1/dev/dev3/chunk/dat -t 'flotilla/v1/#'
out=$("$FLOTILLA" deploy dev3 tiny@1.0 --token $OT 2>&1); rc=$?
check "flotilla deploy dev3 tiny@1.0 (exit 0: $out)" [ $rc -eq 0 ]
check "deploy reports the broker acknowledged the command" grep -q "command c-[0-9a-f]\{32\} delivered to the broker" <<<"$out"
out2=$("$FLOTILLA" revert dev3 tiny --token $OT 2>&1); rc=$?
check "flotilla revert dev3 tiny (exit 0: $out2)" [ $rc -eq 0 ]
check "dev3 received both commands" wait_pid cmd3 50
msgs cmd3 | while read -r h; do unhex <<<"$h"; echo; done >cmds.json
check "two JSON commands" [ "$(wc -l <cmds.json)" = 2 ]
c1=$(sed -n 1p cmds.json) c2=$(sed -n 2p cmds.json)
check "deploy cmd: v 1, kind deploy, id as printed" \
  [ "$(jq -r '[.v, .kind, .id] | join(" ")' <<<"$c1")" = "1 deploy $(grep -o 'c-[0-9a-f]*' <<<"$out")" ]
check "deploy cmd carries the pushed envelope (sha256 $env_sha)" \
  [ "$(jq -j .envelope <<<"$c1" | sha256sum | cut -d' ' -f1)" = "$env_sha" ]
check "revert cmd: kind revert, model tiny, its own id" \
  [ "$(jq -r '[.kind, .model, (.id != "'"$(jq -r .id <<<"$c1")"'")] | join(" ")' <<<"$c2")" = "revert tiny true" ]
check "deploy command has only the protocol's members" [ "$(jq -c 'keys' <<<"$c1")" = '["envelope","id","kind","v"]' ]

# Bad deploy requests: 4xx, nothing published.
http() { curl -s -o body.json -w '%{http_code}' -X "$1" -H "Authorization: Bearer $3" "${@:4}" "$URL$2"; }
err=$("$FLOTILLA" deploy dev3 tiny@9.9 --token $OT 2>&1); rc=$?
check "deploy of a version never pushed: exit 1, 404 ($err)" bash -c "[ $rc -eq 1 ] && grep -q 'HTTP 404' <<<'$err'"
err=$("$FLOTILLA" deploy nosuchdev tiny@1.0 --token $OT 2>&1); rc=$?
check "deploy to an unknown device: exit 1, 404 ($err)" bash -c "[ $rc -eq 1 ] && grep -q 'no such device' <<<'$err'"
err=$("$FLOTILLA" deploy dev3 tiny --token $OT 2>&1); rc=$?
check "deploy without @VERSION: usage error ($err)" [ $rc -eq 2 ]
err=$("$FLOTILLA" deploy dev3 tiny@1.0 --token $RT 2>&1); rc=$?
check "deploy with a read token: 403 ($err)" bash -c "[ $rc -eq 1 ] && grep -q 'HTTP 403' <<<'$err'"
check "deploy body not JSON -> 400" [ "$(http POST /api/v1/devices/dev3/deploy $OT --data-binary 'nope')" = 400 ]
check "deploy with an unknown member -> 400" [ "$(http POST /api/v1/devices/dev3/deploy $OT --data-binary '{"model":"tiny","version":"1.0","force":true}')" = 400 ]
check "deploy with a bad model name -> 400" [ "$(http POST /api/v1/devices/dev3/deploy $OT --data-binary '{"model":"../x","version":"1.0"}')" = 400 ]
check "revert without model -> 400" [ "$(http POST /api/v1/devices/dev3/revert $OT --data-binary '{}')" = 400 ]
head -c 5000 /dev/zero | tr '\0' ' ' >big.body
check "deploy body too large -> 413" [ "$(http POST /api/v1/devices/dev3/deploy $OT --data-binary @big.body)" = 413 ]
check "GET on deploy -> 405" [ "$(http GET /api/v1/devices/dev3/deploy $OT)" = 405 ]
check "unknown device action -> 404" [ "$(http POST /api/v1/devices/dev3/reboot $OT --data-binary '{}')" = 404 ]
check "metrics: exactly 2 commands sent" [ "$(metric 'flotilla_commands_total{result="sent"}')" = 2 ]

# chunk/req -> chunk/dat: the envelope object, the chunk index (2 ranges),
# an unknown object, a range past the end.
cidx_size=$(tar -xOf b1.tar "index/tiny.gguf.cidx" 2>/dev/null | wc -c)
tar -xOf b1.tar "index/tiny.gguf.cidx" >cidx.bin 2>/dev/null
check "the bundle's chunk index hashes to the manifest's ($cidx_size bytes)" \
  [ "$(sha256sum <cidx.bin | cut -d' ' -f1)" = "$cidx_sha" ]
half=$((cidx_size / 2))
zero=$(printf '0%.0s' $(seq 64))
# One connection per device id (the broker takes the client id from the
# certificate): chunk_fetch --req publishes and listens on that one.
FL_FETCH_CA=$P/ca.crt FL_FETCH_CERT=$P/devices/dev3.crt FL_FETCH_KEY=$P/devices/dev3.key \
  timeout 30 "$FETCH" --req "ssl://127.0.0.1:$PORT" dev3 \
  "{\"v\":1,\"req\":[{\"id\":\"$env_sha\",\"off\":0,\"len\":262144},{\"id\":\"$cidx_sha\",\"off\":0,\"len\":$half},{\"id\":\"$cidx_sha\",\"off\":$half,\"len\":262144},{\"id\":\"$zero\",\"off\":0,\"len\":10},{\"id\":\"$cidx_sha\",\"off\":$((cidx_size + 1)),\"len\":10}]}" \
  5 >dat3.raw 2>dat3.err
check "exactly five chunk/dat frames answer one chunk/req of five ranges ($(cat dat3.err))" [ $? -eq 0 ]
# frame HEX: "magic version status objid off len" of a chunk/dat frame
lehex() { local h=$1 out= i; for ((i = ${#h} - 2; i >= 0; i -= 2)); do out+=${h:i:2}; done; echo $((16#${out:-0})); }
frame() {
  local h=$1
  printf '%s %d %d %s %d %d\n' "$(unhex <<<"${h:0:8}")" $((16#${h:8:2})) $((16#${h:10:2})) \
    "${h:16:64}" "$(lehex "${h:80:16}")" "$(lehex "${h:96:8}")"
}
hexof() { od -An -v -tx1 | tr -d ' \n'; }
mapfile -t F < <(msgs dat3)
env_len=$(jq -j .envelope <<<"$c1" | wc -c)
check "five frames" [ "${#F[@]}" = 5 ]
f1=$(frame "${F[0]:-00000000000000}")
check "frame 1: FLCK v1 ok, the envelope, offset 0, $env_len bytes ($f1)" [ "$f1" = "FLCK 1 0 $env_sha 0 $env_len" ]
check "frame 1 data is the envelope" [ "${F[0]:104}" = "$(jq -j .envelope <<<"$c1" | hexof)" ]
f2=$(frame "${F[1]:-00000000000000}")
check "frame 2: first half of the chunk index ($f2)" [ "$f2" = "FLCK 1 0 $cidx_sha 0 $half" ]
f3=$(frame "${F[2]:-00000000000000}")
check "frame 3: the rest, short at the end ($f3)" [ "$f3" = "FLCK 1 0 $cidx_sha $half $((cidx_size - half))" ]
check "the two ranges rebuild the chunk index" [ "${F[1]:104}${F[2]:104}" = "$(hexof <cidx.bin)" ]
check "frame 4: unknown object -> status 1, no data" [ "$(frame "${F[3]:-00000000000000}")" = "FLCK 1 1 $zero 0 0" ]
check "frame 5: range past the end -> status 2" [ "$(frame "${F[4]:-00000000000000}")" = "FLCK 1 2 $cidx_sha $((cidx_size + 1)) 0" ]
check "frames 4 and 5 carry no data" [ "${#F[3]}${#F[4]}" = 104104 ]
creq0=$(metric 'flotilla_mqtt_refused_total{topic="chunk_req"}')
mpub dev3 flotilla/v1/dev/dev3/chunk/req -m '{"v":1,"req":[{"id":"zz","off":0,"len":1}]}'
mpub dev3 flotilla/v1/dev/dev3/chunk/req -m "{\"v\":1,\"req\":[{\"id\":\"$env_sha\",\"off\":0,\"len\":999999}]}"
creq_ok() { [ "$(metric 'flotilla_mqtt_refused_total{topic="chunk_req"}')" = $((creq0 + 2)) ]; }
check "malformed chunk requests are counted as refused" wait_until 10 creq_ok
mpub dev4 flotilla/v1/dev/dev3/chunk/req -m "{\"v\":1,\"req\":[{\"id\":\"$env_sha\",\"off\":0,\"len\":100}]}"
check "dev4 cannot ask for chunks on dev3's topic ($out)" grep -q "Not authorized" <<<"$out"
sleep 0.5
kill "$pid_spy" 2>/dev/null
check "dev4 (subscribed to dev3's cmd, chunk/dat and flotilla/v1/#) received nothing" [ -z "$(msgs spy)" ]

if true; then
  # A whole model file through chunk/req over TLS, 8 ranges outstanding.
  mkdir -p big
  "$MKMODEL" --arch llama --vocab tiny --dim 512 --layers 6 --heads 8 --kv-heads 4 \
    --ffn 2048 --ctx 256 --type q8_0 --seed 3 -o big/tiny.gguf >/dev/null
  mk_bundle bbig.tar "$tmp/keys" ftiny 1.0 1 big/tiny.gguf
  "$FLOTILLA" push bbig.tar --token $OT >/dev/null
  tar -xOf bbig.tar index/tiny.gguf.cidx >big.cidx
  out=$(FL_FETCH_CA=$P/ca.crt FL_FETCH_CERT=$P/devices/dev3.crt FL_FETCH_KEY=$P/devices/dev3.key \
        timeout 60 "$FETCH" "ssl://127.0.0.1:$PORT" dev3 big.cidx big.got 2>&1); rc=$?
  echo "$out"
  check "chunk_fetch rebuilt the model file from chunk/dat frames" bash -c "[ $rc -eq 0 ] && cmp -s big.got big/tiny.gguf"
  [ $rc -eq 0 ] || curl -s -H "Authorization: Bearer $RT" "$URL/metrics" | grep -E '^flotilla_(chunk|mqtt)' 
fi

stop_controller() { # SIGTERM: clean exit (HTTP threads, MQTT DISCONNECT) within 10 s
  kill -TERM "$cpid"
  local rc=0
  timeout 10 tail --pid="$cpid" -f /dev/null || rc=1
  wait "$cpid"; local st=$?
  cpid=
  [ $rc -eq 0 ] && [ $st -eq 0 ] && ! grep -q "Sanitizer" controller.log
}

# ---------------------------------------------------------------- part 2
agent_mode=${FL_E2E_AGENT:-auto}
acfg() { # DEVICE
  mkdir -p "$tmp/$1/trust"
  cp "$tmp/trust/"* "$tmp/$1/trust/"
  cat >"$tmp/$1/agent.conf" <<CONF
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
}
acfg dev1
if [ "$agent_mode" = auto ]; then
  if "$AGENT" -c "$tmp/dev1/agent.conf" status >/dev/null 2>agent_probe.err; then agent_mode=1
  else agent_mode=0; fi
fi
if [ "$agent_mode" != 1 ]; then
  echo "PENDING: part 2 (real flotilla-agent over MQTT: deploy, commit, fine-tune bytes, revert)"
  echo "PENDING: the agent does not accept [mqtt] yet: $(head -c 300 agent_probe.err 2>/dev/null)"
  check "SIGTERM stops the controller cleanly" stop_controller
  finish
  exit
fi
echo "--- part 2: real agents"
acfg dev2
for d in dev1 dev2; do
  "$AGENT" -c "$tmp/$d/agent.conf" run >"$d.log" 2>&1 &
  pids+=($!)
  eval "apid_$d=$!"
done
online() { [ "$(show "$1" | jq -r .device.online)" = true ]; }
check "dev1 comes online at the controller" wait_until 30 online dev1
check "dev2 comes online at the controller" wait_until 30 online dev2

bytes0=$(metric flotilla_chunk_bytes_sent_total)
out=$("$FLOTILLA" deploy dev1 tiny@1.0 --token $OT 2>&1); rc=$?
check "deploy tiny@1.0 to dev1 ($out)" [ $rc -eq 0 ]
committed() { # DEVICE MODEL VERSION: the controller's view and the device's own status
  show "$1" | jq -e --arg m "$2" --arg v "$3" \
    '.models[] | select(.model == $m) | .version == $v and ((.install.state // "COMMITTED") == "COMMITTED")' >/dev/null
}
agent_version() { # DEVICE MODEL
  "$AGENT" -c "$tmp/$1/agent.conf" status --json 2>/dev/null |
    jq -r --arg m "$2" '.models[$m] as $x | $x.slots[$x.current].version'
}
check "controller reports dev1 tiny 1.0 committed (<= 90 s)" wait_until 90 committed dev1 tiny 1.0
check "dev1's own status agrees: tiny 1.0" [ "$(agent_version dev1 tiny)" = 1.0 ]
bytes1=$(metric flotilla_chunk_bytes_sent_total)
size1=$(stat -c %s m1/tiny.gguf)
moved1=$((bytes1 - bytes0))
echo "bytes moved for the first install: $moved1 (model $size1 bytes)"
check "the first install moved about the model's size" [ "$moved1" -ge "$size1" ]
check "dev2 was not touched" bash -c "[ -z \"\$('$AGENT' -c '$tmp/dev2/agent.conf' status --json 2>/dev/null | jq -r '.models.tiny // empty')\" ]"

# Fine-tune: same weights, new metadata: only the header chunks change.
mkdir -p m2
"$MKMODEL" --arch llama --vocab tiny --dim 64 --layers 2 --heads 4 --kv-heads 2 \
  --ffn 128 --ctx 256 --type q8_0 --seed 1 --name tiny-ft -o m2/tiny.gguf >/dev/null
mk_bundle b2.tar "$tmp/keys" tiny 1.1 2 m2/tiny.gguf
"$FLOTILLA" push b2.tar --token $OT >/dev/null
out=$("$FLOTILLA" deploy dev1 tiny@1.1 --token $OT 2>&1); rc=$?
check "deploy the fine-tune tiny@1.1 ($out)" [ $rc -eq 0 ]
check "controller reports dev1 tiny 1.1 committed" wait_until 90 committed dev1 tiny 1.1
check "dev1's own status agrees: tiny 1.1" [ "$(agent_version dev1 tiny)" = 1.1 ]
bytes2=$(metric flotilla_chunk_bytes_sent_total)
moved2=$((bytes2 - bytes1))
echo "bytes moved for the fine-tune: $moved2 (model $size1 bytes)"
check "the fine-tune moved under half of the model ($moved2 < $((size1 / 2)))" [ "$moved2" -lt $((size1 / 2)) ]

out=$("$FLOTILLA" revert dev1 tiny --token $OT 2>&1); rc=$?
check "revert dev1 tiny ($out)" [ $rc -eq 0 ]
back() { show dev1 | jq -e '.models[] | select(.model == "tiny") | .version == "1.0"' >/dev/null; }
check "controller reports dev1 back on tiny 1.0" wait_until 60 back
check "dev1's own status agrees: tiny 1.0" wait_until 10 bash -c "[ \"\$('$AGENT' -c '$tmp/dev1/agent.conf' status --json 2>/dev/null | jq -r '.models.tiny as \$x | \$x.slots[\$x.current].version')\" = 1.0 ]"

out=$("$FLOTILLA" deploy dev2 tiny@1.1 --token $OT 2>&1); rc=$?
check "deploy tiny@1.1 to dev2 too ($out)" [ $rc -eq 0 ]
check "controller reports dev2 tiny 1.1 committed" wait_until 90 committed dev2 tiny 1.1
check "dev2's own status agrees: tiny 1.1" [ "$(agent_version dev2 tiny)" = 1.1 ]
check "dev1 stayed on tiny 1.0" has_version dev1 tiny 1.0
curl -s -H "Authorization: Bearer $RT" "$URL/metrics" >metrics.txt
check "metrics: no chunk frame dropped" grep -qx 'flotilla_chunk_frames_total{result="dropped"} 0' metrics.txt
check "metrics: no chunk/req flood" grep -qx 'flotilla_chunk_requests_flood_total 0' metrics.txt
check "metrics: one device on tiny 1.0" grep -qx 'flotilla_model_version_devices{model="tiny",version="1.0"} 1' metrics.txt
check "metrics: one device on tiny 1.1" grep -qx 'flotilla_model_version_devices{model="tiny",version="1.1"} 1' metrics.txt

# The last will: a device that dies is reported offline by the broker.
kill -9 "$apid_dev2" 2>/dev/null
off() { [ "$(show "$1" | jq -r .device.online)" = false ]; }
check "dev2 killed: its last will marks it offline" wait_until 30 off dev2
# A clean stop: the agent should say so itself (docs/protocol.md "Decisions").
kill -TERM "$apid_dev1" 2>/dev/null
if wait_until 10 off dev1; then ok "dev1 stopped cleanly: reported offline"
else echo "PENDING (agent): dev1 stopped cleanly but is still online at the controller"; fi
check "SIGTERM stops the controller cleanly" stop_controller
if [ "$fails" != 0 ]; then
  for d in dev1 dev2; do echo "--- $d log (tail)"; tail -n 20 "$d.log"; done
  echo "--- controller log (tail)"; tail -n 20 controller.log
fi
finish
