#!/usr/bin/env bash
# Telemetry figures (Flotilla issue 8):
#  1. controller ingestion rate, IN PROCESS: bench/ctl_ingest_bench calls
#     the controller's ingest path (decode + batched SQLite commits) directly
#     with ready-made batches: no broker, no TLS, no MQTT client, no network.
#     It bounds what the controller's ingestion code does, not what a fleet
#     gets through the broker; records/s; target >= 50 000/s.
#  2. agent bytes on the wire per hour at the default reporting interval
#     (60 s, docs/telemetry.md) for one model: bench/tele_wire_bench builds
#     each interval's records (model + device) with the telemetry library,
#     pushes them to an outbox and takes the batch the agent publishes; x 60.
#     On-wire adds MQTT v5 PUBLISH/PUBACK framing and TLS 1.2 record overhead
#     per message (estimate, printed separately).
#  3. agent CPU and RSS for a short idle run of `flotilla-agent run` (no
#     broker, empty state, loopback API), from /proc/PID/stat and status.
#  4. measured end to end: a real agent (default 60 s interval, one model
#     served, a request every 2 s) with a real broker (TLS + ACL) and
#     controller (packaging/demo/fleet-lib.sh): bytes on the agent's TCP
#     connection (TLS records: telemetry, confirmations, state, keep-alive;
#     from `ss -ti`) and the agent's CPU (not the runner's) over
#     BENCH_WIRE_S, scaled to one hour.
#
#  5. controller ingestion THROUGH THE BROKER: BENCH_BROKER_CLIENTS
#     mosquitto_pub clients, each with its own device certificate (mutual
#     TLS, the ACL's own-topic rule), publish pre-built plain-JSON batches
#     (device records, BENCH_BROKER_PER_BATCH per batch, as part 1) QoS 1 to
#     flotilla/v1/dev/<id>/tele of the real broker; the real controller
#     decodes and commits them. records/s = records in the controller's
#     store / time from the first publish until the last one is stored.
#     Printed with the ratio to part 1 measured in the same run.
#
#   bench/telemetry.sh [BUILD_DIR (build/dev)]
#   BENCH_IDLE_S: length of the idle run (10)
#   BENCH_WIRE_S: length of the end-to-end run (125; 0 skips it)
#   BENCH_BROKER_CLIENTS (4; 0 skips part 5), BENCH_BROKER_RECORDS per
#   client (25000), BENCH_BROKER_PER_BATCH (100)
set -euo pipefail
B=${1:-build/dev}
INGEST=$B/bench/ctl_ingest_bench WIRE=$B/bench/tele_wire_bench AGENT=$B/agent/flotilla-agent
for x in "$INGEST" "$WIRE" "$AGENT"; do
  [ -x "$x" ] || { echo "telemetry bench: $x not built" >&2; exit 1; }
done
tmp=$(mktemp -d "${TMPDIR:-/var/tmp}/flotilla-bench-tele.XXXXXX")
apid=
cleanup() { [ -n "$apid" ] && kill "$apid" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
trap 'exit 1' INT TERM
export FLOTILLA_LOG_LEVEL=warn

# 1. ingestion
out=$(timeout 300 "$INGEST" 200000 100 10)
echo "$out" | sed 's/^/ingest: /'
rate=$(echo "$out" | awk '/^first pass/ { for (i = 1; i < NF; i++) if ($(i+1) == "records/s") print $i }')
awk -v r="$rate" 'BEGIN { printf "controller ingestion, in process (decode + SQLite, no broker/MQTT): %d records/s (target >= 50000: %s)\n", r, (r >= 50000 ? "met" : "NOT met") }'

# 2. bytes per hour
w=$(timeout 120 "$WIRE" "$tmp" 60)
get() { awk -v k="$1" '{ for (i = 1; i < NF; i++) if ($i == k) print $(i+1) }' <<<"$w"; }
n=$(get intervals) first=$(get batch_bytes_first) hour=$(get bytes_per_hour) hourly=$(get hourly_batch_bytes)
topic="flotilla/v1/dev/bench-dev/tele"
# PUBLISH QoS 1: fixed header 1 + remaining length 2 + topic 2+len + packet id 2
# + properties length 1; PUBACK 4; each in a TLS 1.2 AES-GCM record (+29 bytes; the broker runs tlsv1.2).
ovh=$(( 1 + 2 + 2 + ${#topic} + 2 + 1 + 29 + 4 + 29 ))
echo "one interval (model + device record): batch payload $first bytes"
echo "agent telemetry per hour at 60 s, one model: $hour bytes payload in $n batches" \
  "($(( (hour + n * ovh) )) bytes with MQTT+TLS framing, ~$ovh B per batch); one hourly batch would be $hourly bytes"

# 3. agent idle CPU / RSS
idle=${BENCH_IDLE_S:-10}
mkdir -p "$tmp/state" "$tmp/trust"
for _ in 1 2 3 4 5; do # a random port may be taken: try another
  port=$((20000 + RANDOM % 20000))
  printf '[agent]\nstate_dir = %s\ntrust_dir = %s\n[serve]\nlisten = 127.0.0.1:%s\n' \
    "$tmp/state" "$tmp/trust" "$port" >"$tmp/agent.conf"
  "$AGENT" --config "$tmp/agent.conf" run 2>"$tmp/agent.log" &
  apid=$!
  sleep 1
  kill -0 "$apid" 2>/dev/null && break
  apid=
done
[ -n "$apid" ] || { echo "agent did not start: $(tail -n 5 "$tmp/agent.log")" >&2; exit 1; }
ticks() { awk '{ print $14 + $15 }' "/proc/$apid/stat"; }
hz=$(getconf CLK_TCK)
t0=$(ticks); s0=$(date +%s.%N)
sleep "$idle"
t1=$(ticks); s1=$(date +%s.%N)
rss=$(awk '/^VmRSS/ { print $2 }' "/proc/$apid/status")
awk -v a="$t0" -v b="$t1" -v hz="$hz" -v s0="$s0" -v s1="$s1" -v rss="$rss" 'BEGIN {
  printf "agent idle (%.1f s, no model, no broker): CPU %.3f%% of one core (%d ticks), VmRSS %.1f MiB\n",
    s1 - s0, 100 * (b - a) / hz / (s1 - s0), b - a, rss / 1024 }'
kill "$apid" 2>/dev/null; wait "$apid" 2>/dev/null; apid=

# 4. end to end, measured
rm -rf "$tmp"
set +e
wire_s=${BENCH_WIRE_S:-125}
nclients=${BENCH_BROKER_CLIENTS:-4}
[ "$wire_s" -gt 0 ] || [ "$nclients" -gt 0 ] || exit 0
for t in ss curl jq mosquitto mosquitto_pub python3 sqlite3; do
  command -v $t >/dev/null || [ -x /usr/sbin/$t ] || { echo "end-to-end run skipped: $t missing"; exit 0; }
done
FLEET_FLOTILLA=$B/controller/cli/flotilla FLEET_CONTROLLER_BIN=$B/controller/flotilla-controller
FLEET_AGENT_BIN=$AGENT
MKMODEL=$B/runtime/tools/mkmodel
# shellcheck source=/dev/null
. "$(dirname "$0")/../packaging/demo/fleet-lib.sh"
trap - EXIT
fleet_init bench-tele
FLEET_EXTRA_PIDS=()
pubs=()
for ((i = 1; i <= nclients; i++)); do pubs+=("pub$i"); done
fleet_pki bdev "${pubs[@]}"
fleet_broker_start
fleet_trust m
fleet_controller_start
DB=$FLEET_DIR/controller-data/controller.db
if [ "$nclients" -gt 0 ]; then
  # 5. ingestion through the broker (before part 4: nothing else publishes)
  per=${BENCH_BROKER_PER_BATCH:-100} nrec=${BENCH_BROKER_RECORDS:-25000}
  for d in "${pubs[@]}"; do # one line = one batch = one MQTT message
    python3 - "$d" "$nrec" "$per" >"$FLEET_DIR/$d.batches" <<'PY'
import sys
dev, n, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rec = ('{"seq":%d,"type":"device","t":1764001440,"cpu_pct":12.5,"n_cpus":4,'
       '"rss_bytes":123456789,"mem_total_bytes":4000000000,"temp_mc":51000,"uptime_s":3600}')
for first in range(1, n + 1, per):
    last = min(first + per - 1, n)
    recs = ",".join(rec % q for q in range(first, last + 1))
    print('{"v":1,"device":"%s","stream":"0123456789abcdef","first":%d,"last":%d,"n":%d,"records":[%s]}'
          % (dev, first, last, last - first + 1, recs))
PY
  done
  total=$((nclients * nrec))
  stored() { sqlite3 -cmd '.timeout 5000' "$DB" "SELECT COUNT(*) FROM telemetry WHERE device LIKE 'pub%'" 2>/dev/null || echo 0; }
  s0=$(date +%s.%N)
  for d in "${pubs[@]}"; do
    timeout 300 mosquitto_pub -V mqttv5 -h 127.0.0.1 -p "$FLEET_MQTT_PORT" -q 1 -i "$d" \
      --cafile "$FLEET_DIR/pki/ca.crt" --cert "$FLEET_DIR/pki/devices/$d.crt" \
      --key "$FLEET_DIR/pki/devices/$d.key" -t "flotilla/v1/dev/$d/tele" -l \
      <"$FLEET_DIR/$d.batches" 2>"$FLEET_DIR/$d.pub.err" &
    FLEET_EXTRA_PIDS+=($!)
  done
  end=$((SECONDS + 300)) n=0
  while [ $SECONDS -lt $end ]; do
    n=$(stored)
    [ "$n" -ge "$total" ] && break
    sleep 0.2
  done
  s1=$(date +%s.%N)
  awk -v n="$n" -v total="$total" -v s0="$s0" -v s1="$s1" -v c="$nclients" -v per="$per" -v inproc="$rate" 'BEGIN {
    r = n / (s1 - s0)
    printf "controller ingestion through the broker (%d mosquitto_pub clients, TLS, QoS 1, %d records per batch): %d of %d records stored in %.1f s = %d records/s (%.2fx the in-process figure; target >= 50000: %s)\n",
      c, per, n, total, s1 - s0, r, r / inproc, (n >= total && r >= 50000 ? "met" : "NOT met") }'
  wait_pubs=$(cat "$FLEET_DIR"/pub*.pub.err 2>/dev/null | head -n 3)
  [ -z "$wait_pubs" ] || echo "  publisher errors: $wait_pubs"
fi
if [ "$wire_s" -le 0 ]; then
  true # fleet_cleanup keeps the files when the last status is a failure
  fleet_cleanup
  exit 0
fi
"$MKMODEL" --arch llama --vocab tiny --dim 64 --layers 2 --heads 4 --kv-heads 2 --ffn 128 \
  --ctx 256 --type q8_0 --seed 1 -o "$FLEET_DIR/model.gguf" >/dev/null
"$FLEET_FLOTILLA" bundle create -o "$FLEET_DIR/m.tar" --key "$FLEET_DIR/keys/release.pem" \
  --name m --version 1.0 --sequence 1 "$FLEET_DIR/model.gguf" >/dev/null
fleet_agent_start bdev site=bench x86_64 4096 serve
AP=${FLEET_AGENT_PID[bdev]} port=${FLEET_AGENT_PORT[bdev]}
mkdir -p "$FLEET_DIR/bdev/state/spool"
cp "$FLEET_DIR/m.tar" "$FLEET_DIR/bdev/state/spool/.m" && mv "$FLEET_DIR/bdev/state/spool/.m" "$FLEET_DIR/bdev/state/spool/m.tar"
served() { [ "$(curl -s -m 5 "http://127.0.0.1:$port/v1/status" | jq -r '.models.m.version // empty')" = 1.0 ]; }
fleet_wait 60 served || { echo "end to end: model not served" >&2; exit 1; }
( while :; do curl -s -m 10 -d '{"model":"m","prompt":"Hello","max_tokens":16}' \
    "http://127.0.0.1:$port/v1/completions" >/dev/null; sleep 2; done ) &
FLEET_EXTRA_PIDS+=($!)
# bytes_sent + bytes_received of the agent's connection to the broker
sock_bytes() {
  ss -tinpH "dport = :$FLEET_MQTT_PORT" 2>/dev/null | awk -v pid="pid=$AP," '
    index($0, pid) { want = 1; next }
    want { for (i = 1; i <= NF; i++) { if ($i ~ /^bytes_sent:/) { split($i, a, ":"); s += a[2] }
                                       if ($i ~ /^bytes_received:/) { split($i, a, ":"); s += a[2] } }
           want = 0 }
    END { print s + 0 }'
}
ticks_of() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
b0=$(sock_bytes) c0=$(ticks_of "$AP") s0=$(date +%s.%N)
sleep "$wire_s"
b1=$(sock_bytes) c1=$(ticks_of "$AP") s1=$(date +%s.%N)
recs=$(sqlite3 "$FLEET_DIR/controller-data/controller.db" \
  "SELECT COUNT(*) FROM telemetry WHERE device='bdev' AND kind IN ('model','device')" 2>/dev/null || echo '?')
awk -v b0="$b0" -v b1="$b1" -v c0="$c0" -v c1="$c1" -v hz="$hz" -v s0="$s0" -v s1="$s1" -v recs="$recs" 'BEGIN {
  t = s1 - s0
  printf "end to end (%.0f s, default 60 s interval, 1 model served, %s metric records at the controller):\n", t, recs
  printf "  agent TCP bytes (TLS, both directions): %d in the run = %.1f KB/hour\n", b1 - b0, (b1 - b0) * 3600 / t / 1000
  printf "  agent CPU (without the runner, serving a request every 2 s): %.3f%% of one core\n", 100 * (c1 - c0) / hz / t }'
fleet_cleanup
