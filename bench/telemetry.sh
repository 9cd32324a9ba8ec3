#!/usr/bin/env bash
# Telemetry figures (Flotilla issue 8):
#  1. controller ingestion rate: bench/ctl_ingest_bench (decode + batched
#     SQLite commits, as for MQTT messages), records/s; target >= 50 000/s.
#  2. agent bytes on the wire per hour at the default reporting interval
#     (60 s, docs/telemetry.md) for one model: bench/tele_wire_bench builds
#     each interval's records (model + device) with the telemetry library,
#     pushes them to an outbox and takes the batch the agent publishes; x 60.
#     On-wire adds MQTT v5 PUBLISH/PUBACK framing and TLS 1.2 record overhead
#     per message (estimate, printed separately).
#  3. agent CPU and RSS for a short idle run of `flotilla-agent run` (no
#     broker, empty state, loopback API), from /proc/PID/stat and status.
#
#   bench/telemetry.sh [BUILD_DIR (build/dev)]
#   BENCH_IDLE_S: length of the idle run (10)
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
awk -v r="$rate" 'BEGIN { printf "controller ingestion: %d records/s (target >= 50000: %s)\n", r, (r >= 50000 ? "met" : "NOT met") }'

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
port=$((20000 + RANDOM % 20000))
printf '[agent]\nstate_dir = %s\ntrust_dir = %s\n[serve]\nlisten = 127.0.0.1:%s\n' \
  "$tmp/state" "$tmp/trust" "$port" >"$tmp/agent.conf"
"$AGENT" --config "$tmp/agent.conf" run 2>"$tmp/agent.log" &
apid=$!
sleep 1
kill -0 "$apid" 2>/dev/null || { echo "agent did not start: $(tail -n 5 "$tmp/agent.log")" >&2; exit 1; }
ticks() { awk '{ print $14 + $15 }' "/proc/$apid/stat"; }
hz=$(getconf CLK_TCK)
t0=$(ticks); s0=$(date +%s.%N)
sleep "$idle"
t1=$(ticks); s1=$(date +%s.%N)
rss=$(awk '/^VmRSS/ { print $2 }' "/proc/$apid/status")
awk -v a="$t0" -v b="$t1" -v hz="$hz" -v s0="$s0" -v s1="$s1" -v rss="$rss" 'BEGIN {
  printf "agent idle (%.1f s, no model, no broker): CPU %.3f%% of one core (%d ticks), VmRSS %.1f MiB\n",
    s1 - s0, 100 * (b - a) / hz / (s1 - s0), b - a, rss / 1024 }'
